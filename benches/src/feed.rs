//! The `feed` section: reading the change feed against a hand-written
//! query, and delivery to a watcher while 16 writers commit.
//!
//! ```sh
//! cargo run --release -p fielding-bench -- --quick --only feed
//! ```
//!
//! * **Reading** (SQLite, and PostgreSQL when reachable): one account's
//!   feed of `records` records (10,000; 50,000 without `--quick`), read to
//!   the end in pages of 500, in pairs of trials in alternating order:
//!   through the store (`FieldingStore::feed`: the horizon check, the
//!   visibility bound, the bookmark, decoding into `FeedRecord`s), and
//!   through a hand-written `SELECT … WHERE account_id = ? AND position > ?
//!   ORDER BY position LIMIT 500` on the same table and the same driver,
//!   decoding every column into owned values.
//!   `feed_read_{sqlite,postgres}_vs_raw R` is the median over pairs of
//!   store ÷ raw records per second (target ≥ 0.8).
//! * **Delivery** (PostgreSQL): 16 writer tasks update their own runs as
//!   fast as they can through one store instance for `seconds` (2; 5
//!   without `--quick`), while a `FeedWatch` on a *second* instance (its
//!   own pool: the path between instances, `LISTEN`/`NOTIFY`) follows the
//!   account. Latency is from the moment a writer's call returned (the
//!   commit acknowledged) to the moment the watcher got the record (0
//!   when the watcher was first). `feed_delivery_p{50,99}_ms_postgres`.
//!   Afterwards the watcher's records are compared with the whole feed
//!   read again from the start: `feed_skipped` (records it never got,
//!   must be 0), `feed_duplicates` and `feed_out_of_order` (a run's
//!   versions not rising), both must be 0 too.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use fielding_core::{
    AccountId, FeedPosition, FieldingRun, FieldingRunId, FieldingService, FieldingStore, IfMatch, Scope, UserId,
    Version,
};
use fielding_server::{Database, OpenedStore};
use fielding_testkit::fixtures;
use tokio::runtime::Runtime;

use crate::harness::Scratch;
use crate::median;
use crate::series::{emit, percentile, pg_reachable, pg_url, PgSchema};

/// Records per page, as the issue asks.
const PAGE: usize = 500;

/// Writers in the delivery run.
const WRITERS: usize = 16;

/// What the section measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPlan {
    /// Records in the account read.
    pub records: usize,
    /// Pairs of read trials.
    pub pairs: usize,
    /// How long the writers write in the delivery run.
    pub delivery: Duration,
}

impl FeedPlan {
    /// 10,000 records, 5 pairs, 2 s of writing.
    pub fn quick() -> Self {
        Self {
            records: 10_000,
            pairs: 5,
            delivery: Duration::from_secs(2),
        }
    }

    /// 50,000 records, 7 pairs, 5 s of writing.
    pub fn full() -> Self {
        Self {
            records: 50_000,
            pairs: 7,
            delivery: Duration::from_secs(5),
        }
    }

    /// [`FeedPlan::quick`] with `--quick`, else [`FeedPlan::full`].
    pub fn for_plan(plan: &crate::Plan) -> Self {
        if plan.trial <= crate::Plan::quick().trial {
            Self::quick()
        } else {
            Self::full()
        }
    }
}

fn runtime() -> Result<Runtime, String> {
    crate::series::two_worker_runtime("feed-bench")
}

/// Fills one account with `records` change records: 100 runs, each
/// changed until the total is reached, written concurrently (seeding is
/// not measured).
async fn fill(store: &Arc<dyn FieldingStore>, account: Scope, records: usize) -> Result<(), String> {
    let runs = 100.min(records).max(1);
    let per_run = records / runs;
    let mut tasks = Vec::new();
    for _ in 0..runs {
        let store = store.clone();
        let run = fixtures::run()
            .with_scope(fixtures::other_target_group(account))
            .build();
        tasks.push(tokio::spawn(async move {
            store
                .insert(&run, &fixtures::creation(&run))
                .await
                .map_err(|e| format!("seed insert: {e}"))?;
            let mut run = run;
            for tag in 1..per_run {
                let (next, change) =
                    fixtures::change(&run, tag as u64, run.last_changed_by).ok_or("the fixture ran out of versions")?;
                store
                    .compare_and_swap(run.version, &next, &change)
                    .await
                    .map_err(|e| format!("seed write: {e}"))?;
                run = next;
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| format!("a seeding task failed: {e}"))??;
    }
    Ok(())
}

/// Reads the whole feed of `account` through the store; answers the
/// records read.
async fn read_through_store(store: &Arc<dyn FieldingStore>, account: AccountId) -> Result<usize, String> {
    let mut cursor = None;
    let mut count = 0;
    loop {
        let page = store
            .feed(account, cursor, PAGE)
            .await
            .map_err(|e| format!("feed: {e}"))?;
        count += page.records.len();
        cursor = Some(page.next);
        if !page.has_more {
            return Ok(count);
        }
    }
}

/// Who made a change, as each driver hands it over (SQLite keeps text,
/// PostgreSQL a `uuid`).
#[allow(dead_code)] // read only to be decoded: the baseline's work
#[derive(Debug)]
enum ChangedBy {
    Text(String),
    Uuid(uuid::Uuid),
}

/// One row of the raw baseline, decoded into owned values as code that
/// reads the table by hand would.
#[allow(dead_code)] // read only to be decoded: the baseline's work
#[derive(Debug)]
struct RawRow {
    position: (i64, i64),
    run_id: String,
    project_id: String,
    target_group_id: String,
    version: i64,
    action: String,
    changed_at: i64,
    changed_by: ChangedBy,
    status_from: Option<String>,
    status_to: String,
    start_from: Option<i64>,
    start_to: i64,
    end_from: Option<i64>,
    end_to: i64,
}

mod sqlite_raw {
    use super::*;
    use fielding_sqlite::rusqlite::{params, Connection, OpenFlags};

    const SELECT: &str = "SELECT position, run_id, project_id, target_group_id, version, action, changed_at_ms, \
        changed_by, status_from, status_to, start_from_ms, start_to_ms, end_from_ms, end_to_ms \
        FROM change_records WHERE account_id = ?1 AND position > ?2 ORDER BY position LIMIT 500";

    pub(super) fn open(path: &std::path::Path) -> Result<Connection, String> {
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| format!("raw open: {e}"))
    }

    /// The whole feed by hand; answers the records read.
    pub(super) fn read(conn: &Connection, account: AccountId) -> Result<usize, String> {
        let db = |e: fielding_sqlite::rusqlite::Error| format!("raw read: {e}");
        let mut statement = conn.prepare_cached(SELECT).map_err(db)?;
        let mut after = 0i64;
        let mut count = 0;
        loop {
            let rows = statement
                .query_map(params![account.get(), after], |row| {
                    Ok(RawRow {
                        position: (row.get(0)?, 0),
                        run_id: row.get(1)?,
                        project_id: row.get(2)?,
                        target_group_id: row.get(3)?,
                        version: row.get(4)?,
                        action: row.get(5)?,
                        changed_at: row.get(6)?,
                        changed_by: ChangedBy::Text(row.get(7)?),
                        status_from: row.get(8)?,
                        status_to: row.get(9)?,
                        start_from: row.get(10)?,
                        start_to: row.get(11)?,
                        end_from: row.get(12)?,
                        end_to: row.get(13)?,
                    })
                })
                .map_err(db)?
                .collect::<Result<Vec<RawRow>, _>>()
                .map_err(db)?;
            count += rows.len();
            match rows.last() {
                Some(last) if rows.len() == PAGE => after = last.position.0,
                _ => return Ok(count),
            }
        }
    }
}

mod postgres_raw {
    use super::*;
    use fielding_postgres::sqlx::postgres::{PgArgumentBuffer, PgConnection, PgTypeInfo, PgValueRef, Postgres};
    use fielding_postgres::sqlx::{self, Connection as _, Row};

    /// `xid8` in binary (8 bytes, big-endian), as hand-written code on sqlx
    /// has to read and bind it (sqlx has no type for it).
    #[derive(Debug, Clone, Copy)]
    struct Xid8(u64);

    impl sqlx::Type<Postgres> for Xid8 {
        fn type_info() -> PgTypeInfo {
            PgTypeInfo::with_oid(sqlx::postgres::types::Oid(5069))
        }
    }

    impl sqlx::Encode<'_, Postgres> for Xid8 {
        fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
            buf.extend_from_slice(&self.0.to_be_bytes());
            Ok(sqlx::encode::IsNull::No)
        }
    }

    impl sqlx::Decode<'_, Postgres> for Xid8 {
        fn decode(value: PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
            let bytes: [u8; 8] = value.as_bytes()?.try_into()?;
            Ok(Xid8(u64::from_be_bytes(bytes)))
        }
    }

    pub(super) async fn open(url: &str) -> Result<PgConnection, String> {
        PgConnection::connect(url)
            .await
            .map_err(|e| format!("raw connect: {e}"))
    }

    pub(super) async fn analyze(conn: &mut PgConnection, schema: &str) -> Result<(), String> {
        sqlx::query(&format!("ANALYZE \"{schema}\".change_records"))
            .execute(conn)
            .await
            .map(|_| ())
            .map_err(|e| format!("analyze: {e}"))
    }

    fn select(schema: &str) -> String {
        format!(
            "SELECT txid, seq, run_id, project_id, target_group_id, version, action, changed_at, changed_by, \
             status_from, status_to, start_from, start_to, end_from, end_to \
             FROM \"{schema}\".change_records WHERE account_id = $1 AND (txid, seq) > ($2, $3) \
             ORDER BY txid, seq LIMIT 500"
        )
    }

    fn millis(at: chrono::DateTime<chrono::Utc>) -> i64 {
        at.timestamp_millis()
    }

    /// The whole feed by hand; answers the records read.
    pub(super) async fn read(conn: &mut PgConnection, schema: &str, account: AccountId) -> Result<usize, String> {
        let db = |e: sqlx::Error| format!("raw read: {e}");
        let sql = select(schema);
        let (mut txid, mut seq) = (0u64, 0i64);
        let mut count = 0;
        loop {
            let rows = sqlx::query(&sql)
                .bind(account.get() as i32)
                .bind(Xid8(txid))
                .bind(seq)
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?;
            let mut decoded = Vec::with_capacity(rows.len());
            for row in &rows {
                decoded.push(RawRow {
                    position: (
                        row.try_get::<Xid8, _>(0).map_err(db)?.0 as i64,
                        row.try_get(1).map_err(db)?,
                    ),
                    run_id: row.try_get(2).map_err(db)?,
                    project_id: row.try_get(3).map_err(db)?,
                    target_group_id: row.try_get(4).map_err(db)?,
                    version: row.try_get(5).map_err(db)?,
                    action: row.try_get(6).map_err(db)?,
                    changed_at: millis(row.try_get(7).map_err(db)?),
                    changed_by: ChangedBy::Uuid(row.try_get(8).map_err(db)?),
                    status_from: row.try_get(9).map_err(db)?,
                    status_to: row.try_get(10).map_err(db)?,
                    start_from: row
                        .try_get::<Option<chrono::DateTime<chrono::Utc>>, _>(11)
                        .map_err(db)?
                        .map(millis),
                    start_to: millis(row.try_get(12).map_err(db)?),
                    end_from: row
                        .try_get::<Option<chrono::DateTime<chrono::Utc>>, _>(13)
                        .map_err(db)?
                        .map(millis),
                    end_to: millis(row.try_get(14).map_err(db)?),
                });
            }
            count += decoded.len();
            match decoded.last() {
                Some(last) if decoded.len() == PAGE => (txid, seq) = (last.position.0 as u64, last.position.1),
                _ => return Ok(count),
            }
        }
    }
}

/// Records per second of `pairs` alternating trials: (store, raw) each.
fn read_ratio(
    name: &str,
    plan: &FeedPlan,
    mut store_trial: impl FnMut() -> Result<usize, String>,
    mut raw_trial: impl FnMut() -> Result<usize, String>,
) -> Result<Vec<(String, String)>, String> {
    let timed = |trial: &mut dyn FnMut() -> Result<usize, String>| -> Result<f64, String> {
        let started = Instant::now();
        let count = trial()?;
        if count < plan.records {
            return Err(format!("{name}: read {count} records of {}", plan.records));
        }
        Ok(count as f64 / started.elapsed().as_secs_f64())
    };
    // One untimed read each first: caches and prepared statements.
    store_trial()?;
    raw_trial()?;
    let (mut ratios, mut store_rates, mut raw_rates) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..plan.pairs {
        let (store, raw) = if pair % 2 == 0 {
            let store = timed(&mut store_trial)?;
            (store, timed(&mut raw_trial)?)
        } else {
            let raw = timed(&mut raw_trial)?;
            (timed(&mut store_trial)?, raw)
        };
        eprintln!("  {name}: store {store:.0} records/s, raw {raw:.0} records/s");
        ratios.push(store / raw);
        store_rates.push(store);
        raw_rates.push(raw);
    }
    Ok(vec![
        (format!("feed_read_{name}_vs_raw"), format!("{:.3}", median(ratios))),
        (
            format!("feed_read_{name}_records_per_sec"),
            format!("{:.0}", median(store_rates)),
        ),
        (
            format!("raw_read_{name}_records_per_sec"),
            format!("{:.0}", median(raw_rates)),
        ),
    ])
}

fn sqlite_figures(plan: &FeedPlan) -> Result<Vec<(String, String)>, String> {
    let rt = runtime()?;
    let scratch = Scratch::new("feed").map_err(|e| e.to_string())?;
    let opened = rt
        .block_on(fielding_server::open_store(
            &Database::Sqlite(scratch.db()),
            "fielding",
            fielding_postgres::PgStore::DEFAULT_MAX_CONNECTIONS,
        ))
        .map_err(|e| format!("sqlite: {e}"))?;
    let account = fixtures::scope();
    rt.block_on(fill(&opened.store, account, plan.records))?;
    let conn = sqlite_raw::open(&scratch.db())?;
    let store = opened.store.clone();
    let figures = read_ratio(
        "sqlite",
        plan,
        || rt.block_on(read_through_store(&store, account.account_id)),
        || sqlite_raw::read(&conn, account.account_id),
    )?;
    drop(conn);
    drop(store);
    rt.block_on(opened.close());
    Ok(figures)
}

/// What the watcher got: each record's position, run, version and when.
type Delivered = Vec<(FeedPosition, FieldingRunId, Version, Instant)>;

/// The delivery run: 16 writers on `writers`, a watch on `watcher`.
async fn delivery(
    writers: &OpenedStore,
    watcher: &OpenedStore,
    plan: &FeedPlan,
) -> Result<Vec<(String, String)>, String> {
    let account = fixtures::scope();
    let write_service = FieldingService::new(writers.store.clone());
    let watch_service = FieldingService::new(watcher.store.clone());
    let start = watch_service
        .read_feed(account.account_id, None, 1)
        .await
        .map_err(|e| format!("head: {e}"))?
        .next;

    let mut runs: Vec<Vec<FieldingRun>> = Vec::new();
    for _ in 0..WRITERS {
        let mut own = Vec::new();
        for _ in 0..4 {
            let run = fixtures::run()
                .with_scope(fixtures::other_target_group(account))
                .build();
            writers
                .store
                .insert(&run, &fixtures::creation(&run))
                .await
                .map_err(|e| format!("insert: {e}"))?;
            own.push(run);
        }
        runs.push(own);
    }

    let delivered: Arc<Mutex<Delivered>> = Arc::default();
    let watching = {
        let delivered = delivered.clone();
        let mut watch = watch_service
            .watch(account.account_id, Some(start))
            .with_page_size(PAGE);
        tokio::spawn(async move {
            loop {
                match watch.next_page().await {
                    Ok(page) => {
                        let now = Instant::now();
                        let mut seen = delivered.lock().unwrap_or_else(|p| p.into_inner());
                        seen.extend(
                            page.records
                                .iter()
                                .map(|r| (r.position, r.run_id(), r.change.version, now)),
                        );
                    }
                    Err(e) => eprintln!("  feed delivery: the watch failed once: {e}"),
                }
            }
        })
    };

    let committed: Arc<Mutex<HashMap<(FieldingRunId, Version), Instant>>> = Arc::default();
    let deadline = Instant::now() + plan.delivery;
    let mut tasks = Vec::new();
    for own in runs {
        let service = write_service.clone();
        let committed = committed.clone();
        tasks.push(tokio::spawn(async move {
            let mut own = own;
            let actor = UserId::random();
            let mut turn = 0usize;
            while Instant::now() < deadline {
                let run = &mut own[turn % 4];
                turn += 1;
                let end = run
                    .end_fielding_at
                    .checked_add(TimeDelta::milliseconds(1))
                    .ok_or("end out of range")?;
                let applied = service
                    .update_dates(
                        &run.key(),
                        &IfMatch::version(run.version),
                        run.start_fielding_at,
                        end,
                        actor,
                    )
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                let now = Instant::now();
                committed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((run.id, applied.run.version), now);
                *run = applied.run;
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| format!("a writer failed: {e}"))??;
    }
    let writes = committed.lock().unwrap_or_else(|p| p.into_inner()).len();

    // The whole feed since `start`, read again once the writers are done;
    // then wait (at most 10 s) until the watcher has every record of it.
    let mut log = Vec::new();
    let mut cursor = Some(start);
    loop {
        let page = watch_service
            .read_feed(account.account_id, cursor, 1000)
            .await
            .map_err(|e| format!("the final read: {e}"))?;
        log.extend(page.records.iter().map(|r| r.position));
        cursor = Some(page.next);
        if !page.has_more {
            break;
        }
    }
    let waited = Instant::now();
    loop {
        let has_all = {
            let delivered = delivered.lock().unwrap_or_else(|p| p.into_inner());
            let seen: HashSet<FeedPosition> = delivered.iter().map(|d| d.0).collect();
            log.iter().all(|p| seen.contains(p))
        };
        if has_all || waited.elapsed() >= Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watching.abort();
    let delivered = std::mem::take(&mut *delivered.lock().unwrap_or_else(|p| p.into_inner()));

    let seen: HashSet<FeedPosition> = delivered.iter().map(|d| d.0).collect();
    let skipped = log.iter().filter(|p| !seen.contains(p)).count();
    let duplicates = delivered.len() - seen.len();
    let mut last_version: HashMap<FieldingRunId, Version> = HashMap::new();
    let mut out_of_order = 0;
    for (_, run, version, _) in &delivered {
        if let Some(before) = last_version.insert(*run, *version) {
            if *version <= before {
                out_of_order += 1;
            }
        }
    }
    let committed = committed.lock().unwrap_or_else(|p| p.into_inner());
    let mut latencies: Vec<u64> = delivered
        .iter()
        .filter_map(|(_, run, version, got)| {
            let at = committed.get(&(*run, *version))?;
            Some(got.saturating_duration_since(*at).as_micros() as u64)
        })
        .collect();
    latencies.sort_unstable();
    let ms = |p: f64| percentile(&latencies, p).map_or("n/a".to_string(), |us| format!("{:.2}", us as f64 / 1e3));
    eprintln!(
        "  feed delivery: {writes} writes by {WRITERS} writers in {:.1} s, {} delivered, {} in the feed",
        plan.delivery.as_secs_f64(),
        delivered.len(),
        log.len()
    );
    Ok(vec![
        ("feed_delivery_writes".to_string(), writes.to_string()),
        ("feed_delivery_p50_ms_postgres".to_string(), ms(50.0)),
        ("feed_delivery_p99_ms_postgres".to_string(), ms(99.0)),
        ("feed_skipped".to_string(), skipped.to_string()),
        ("feed_duplicates".to_string(), duplicates.to_string()),
        ("feed_out_of_order".to_string(), out_of_order.to_string()),
    ])
}

fn postgres_figures(plan: &FeedPlan, url: &str) -> Result<Vec<(String, String)>, String> {
    let rt = runtime()?;
    let schema = PgSchema::new(url, "feed");
    let database = Database::Postgres(url.to_string());
    let opened = rt
        .block_on(fielding_server::open_store(
            &database,
            schema.name(),
            fielding_postgres::PgStore::DEFAULT_MAX_CONNECTIONS,
        ))
        .map_err(|e| format!("postgres: {e}"))?;
    let account = fixtures::scope();
    rt.block_on(fill(&opened.store, account, plan.records))?;
    let mut conn = rt.block_on(postgres_raw::open(url))?;
    // Fresh statistics, as autovacuum would soon have them: with the
    // table's statistics from when it was empty, the hand-written query's
    // generic plan reads every record after the cursor and sorts them
    // (a bitmap scan), and the comparison would flatter the store.
    rt.block_on(postgres_raw::analyze(&mut conn, schema.name()))?;
    let store = opened.store.clone();
    let name = schema.name().to_string();
    let mut figures = read_ratio(
        "postgres",
        plan,
        || rt.block_on(read_through_store(&store, account.account_id)),
        || rt.block_on(postgres_raw::read(&mut conn, &name, account.account_id)),
    )?;
    let second = rt
        .block_on(fielding_server::open_store(
            &database,
            schema.name(),
            fielding_postgres::PgStore::DEFAULT_MAX_CONNECTIONS,
        ))
        .map_err(|e| format!("postgres, second instance: {e}"))?;
    figures.extend(rt.block_on(delivery(&opened, &second, plan))?);
    drop(store);
    rt.block_on(second.close());
    rt.block_on(opened.close());
    drop(conn);
    schema.drop_now()?;
    Ok(figures)
}

/// Runs the section and prints its figures.
pub fn run_and_print(plan: &crate::Plan) -> Result<(), String> {
    let plan = FeedPlan::for_plan(plan);
    let started = Instant::now();
    eprintln!(
        "fielding-bench feed: {} records, {} pairs, {:.0} s of delivery",
        plan.records,
        plan.pairs,
        plan.delivery.as_secs_f64()
    );
    let mut figures = sqlite_figures(&plan)?;
    let url = pg_url();
    match pg_reachable(&url) {
        Ok(()) => figures.extend(postgres_figures(&plan, &url)?),
        Err(why) => eprintln!("feed: PostgreSQL at {url} is unreachable ({why}); its figures are skipped"),
    }
    emit(&figures).map_err(|e| format!("cannot write the figures: {e}"))?;
    for (name, value) in &figures {
        let verdict = |met: bool| if met { "met" } else { "NOT met" };
        if name.ends_with("_vs_raw") {
            let met = value.parse::<f64>().is_ok_and(|r| r >= 0.8);
            eprintln!("{name} = {value} (target >= 0.8): {}", verdict(met));
        } else if name == "feed_skipped" || name == "feed_duplicates" || name == "feed_out_of_order" {
            eprintln!("{name} = {value} (must be 0): {}", verdict(value == "0"));
        }
    }
    eprintln!("feed: measured in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
