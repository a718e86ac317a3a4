//! SQLite figures: the adapter against hand-written rusqlite doing the same
//! transaction, reads while a writer is busy, and update cost at scale.
//!
//! ## Adapter against raw (`sqlite_adapter_vs_raw[_normal]`)
//!
//! Both sides start from the same fixture (`runs` scheduled runs, each with
//! its creation record) bulk-loaded into a fresh database file of their
//! own, with the same schema (the adapter's migration), WAL and the same
//! `synchronous` pragma. Every operation moves one run's end by one
//! millisecond (alternately forwards and back), so each is a real change.
//!
//! * **adapter**: `FieldingService::update_dates` over `SqliteStore`, the
//!   full path: a read on a reader thread, If-Match and lifecycle checks on
//!   the caller's task, then the conditional `UPDATE` and the change-record
//!   `INSERT` in one `BEGIN IMMEDIATE` transaction on the writer thread.
//!   Driven by [`SqlitePlan::callers`] concurrent tasks on distinct runs
//!   (one current-thread tokio runtime), so the writer thread never waits
//!   for a caller to come back with the next job.
//! * **raw**: one dedicated thread with one rusqlite connection, prepared
//!   statements cached, doing per operation what the adapter's write path
//!   does: read the clock, `BEGIN IMMEDIATE`, `SELECT` the run by id and
//!   scope, check its version, `UPDATE ... WHERE ... AND version = ?`
//!   (checking one row was touched), `INSERT` the change record, `COMMIT`.
//!   Sequential: one thread is all a single SQLite writer can use.
//!
//! Trials alternate (adapter first in even pairs, raw first in odd ones);
//! the ratio is the median of the per-pair throughput ratios.
//!
//! ## Reads while a writer is busy
//!
//! `find_by_target_group` throughput of [`SqlitePlan::callers`] reader tasks
//! on one store, first with no writer, then while two tasks keep updating
//! other runs as fast as they can. WAL lets the reads proceed; the figure
//! shows what sharing two cores with the writer costs them.
//!
//! ## Scale
//!
//! Update cost (ns per `update_dates`, durability `NORMAL` so that the
//! B-tree's cost is not hidden under `fsync` noise) touching 1,000 runs of a
//! database holding 1,000 runs, and of one holding `scale_big` runs (the
//! others bulk-loaded in one transaction), measured alternately, as
//! throughput cost with [`SqlitePlan::callers`] callers
//! (`sqlite_update_cost_ratio_*`). The raw baseline does the same on its
//! own copies of the same data (`sqlite_raw_update_cost_ratio_*`): how much
//! of the ratio is SQLite's (1,000 runs fit in a few dozen pages, 1,000
//! runs spread over a large table each dirty their own leaf pages: more
//! WAL frames per commit, more pages per checkpoint, more page-cache
//! misses) and how much the adapter's.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fielding_core::{Action, Clock, FieldingRun, FieldingService, FieldingStore, Scope, SystemClock, UserId, Version};
use fielding_sqlite::rusqlite::{self, params, Connection, TransactionBehavior};
use fielding_sqlite::{Durability, SqliteOptions, SqliteStore};

use crate::harness::{generate, Scratch, Slot, UpdateCallers};
use crate::{median, BenchError, Fixture};

/// How long and how big the SQLite measurements are.
#[derive(Debug, Clone)]
pub struct SqlitePlan {
    /// Runs in the adapter-vs-raw fixture.
    pub runs: usize,
    /// Warm-up per side before the pairs.
    pub warmup: Duration,
    /// Timed work per trial.
    pub trial: Duration,
    /// Pairs of trials per durability mode.
    pub pairs: usize,
    /// Concurrent callers driving the adapter.
    pub callers: usize,
    /// Runs in the large database of the scale figure.
    pub scale_big: usize,
    /// Its name in the figure (`1e5`, `1e6`).
    pub scale_big_name: &'static str,
    /// Timed work per scale trial.
    pub scale_trial: Duration,
    /// Pairs of scale trials.
    pub scale_pairs: usize,
}

impl SqlitePlan {
    /// About 20 s in all.
    pub fn quick() -> Self {
        Self {
            runs: 256,
            warmup: Duration::from_millis(200),
            trial: Duration::from_millis(500),
            pairs: 5,
            callers: 8,
            scale_big: 100_000,
            scale_big_name: "1e5",
            scale_trial: Duration::from_millis(300),
            scale_pairs: 3,
        }
    }

    /// About two minutes, with the full million-run database.
    pub fn full() -> Self {
        Self {
            runs: 1024,
            warmup: Duration::from_secs(1),
            trial: Duration::from_secs(2),
            pairs: 7,
            callers: 8,
            scale_big: 1_000_000,
            scale_big_name: "1e6",
            scale_trial: Duration::from_secs(2),
            scale_pairs: 5,
        }
    }
}

fn setup(what: &str) -> impl FnOnce(String) -> BenchError + '_ {
    move |e| BenchError::Setup(format!("{what}: {e}"))
}

fn pragmas(conn: &Connection, durability: Durability) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
    let sync = match durability {
        Durability::Normal => "NORMAL",
        _ => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // The adapter's defaults (SqliteOptions::default()).
    conn.pragma_update(None, "cache_size", -2_048i64)?;
    conn.pragma_update(None, "mmap_size", 256i64 << 20)
}

/// A fresh database with the adapter's schema holding `runs`, each with its
/// creation record, loaded in one transaction.
pub(crate) fn create_db(path: &Path, runs: impl Iterator<Item = FieldingRun>) -> Result<(), BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| setup("runtime")(e.to_string()))?;
    rt.block_on(async {
        let store = SqliteStore::open_with(path, SqliteOptions::default().with_migrate(false)).await?;
        let report = store.migrate().await;
        store.close().await;
        report
    })
    .map_err(|e| setup("migrate")(e.to_string()))?;
    let mut conn = Connection::open(path).map_err(|e| setup("open")(e.to_string()))?;
    pragmas(&conn, Durability::Normal).map_err(|e| setup("pragmas")(e.to_string()))?;
    let load = || -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        {
            let mut run_stmt = tx.prepare(
                "INSERT INTO fielding_runs (id, account_id, project_id, target_group_id, start_ms, end_ms, status, \
                 version, last_changed_at_ms, last_changed_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            let mut change_stmt = tx.prepare(
                "INSERT INTO change_records (run_id, version, action, changed_at_ms, changed_by, status_from, \
                 status_to, start_from_ms, start_to_ms, end_from_ms, end_to_ms, account_id, project_id, \
                 target_group_id, position) \
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, NULL, ?7, NULL, ?8, ?9, ?10, ?11, ?12)",
            )?;
            let mut position = 0i64;
            for run in runs {
                position += 1;
                let by = run.last_changed_by.to_string();
                run_stmt.execute(params![
                    run.id.as_str(),
                    i64::from(run.account_id.get()),
                    run.project_id.as_str(),
                    run.target_group_id.as_str(),
                    run.start_fielding_at.unix_millis(),
                    run.end_fielding_at.unix_millis(),
                    run.status.as_str(),
                    run.version.get() as i64,
                    run.last_changed_at.unix_millis(),
                    by,
                ])?;
                change_stmt.execute(params![
                    run.id.as_str(),
                    run.version.get() as i64,
                    Action::Schedule.as_str(),
                    run.last_changed_at.unix_millis(),
                    by,
                    run.status.as_str(),
                    run.start_fielding_at.unix_millis(),
                    run.end_fielding_at.unix_millis(),
                    i64::from(run.account_id.get()),
                    run.project_id.as_str(),
                    run.target_group_id.as_str(),
                    position,
                ])?;
            }
            // The feed's counter: the next record goes after the loaded ones.
            tx.execute("UPDATE feed_counter SET last_position = ?1", [position])?;
        }
        tx.commit()
    };
    load().map_err(|e| setup("bulk load")(e.to_string()))
}

/// The adapter side: a service over a `SqliteStore`, its callers, and the
/// runs they cycle through.
struct Adapter {
    runtime: tokio::runtime::Runtime,
    store: Arc<SqliteStore>,
    callers: UpdateCallers,
    _scratch: Scratch,
}

impl Adapter {
    fn new(runs: &[FieldingRun], actor: UserId, durability: Durability, callers: usize) -> Result<Self, BenchError> {
        Self::over("adapter", runs, runs, actor, durability, callers)
    }

    /// The adapter over a database holding `all`, updating `touched`.
    fn over(
        name: &str,
        all: &[FieldingRun],
        touched: &[FieldingRun],
        actor: UserId,
        durability: Durability,
        callers: usize,
    ) -> Result<Self, BenchError> {
        let scratch = Scratch::new(name)?;
        create_db(&scratch.db(), all.iter().cloned())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| setup("runtime")(e.to_string()))?;
        let options = SqliteOptions::default().with_durability(durability).with_migrate(false);
        let store = Arc::new(
            runtime
                .block_on(SqliteStore::open_with(scratch.db(), options))
                .map_err(|e| setup("open the store")(e.to_string()))?,
        );
        let service = FieldingService::new(store.clone() as Arc<dyn FieldingStore>);
        let callers = UpdateCallers::new(service, touched, callers, actor).map_err(BenchError::Setup)?;
        Ok(Self {
            runtime,
            store,
            callers,
            _scratch: scratch,
        })
    }

    /// Updates for `duration` with every caller busy; returns ops/s.
    fn trial(&mut self, duration: Duration) -> Result<f64, BenchError> {
        let (ops, elapsed) = self
            .callers
            .trial(&self.runtime, duration)
            .map_err(BenchError::Workload)?;
        Ok(ops as f64 / elapsed.as_secs_f64())
    }
}

/// The raw side: a dedicated thread with one connection.
struct Raw {
    jobs: std::sync::mpsc::Sender<(Duration, std::sync::mpsc::Sender<Result<f64, String>>)>,
    _scratch: Scratch,
}

impl Raw {
    fn new(runs: &[FieldingRun], actor: UserId, durability: Durability) -> Result<Self, BenchError> {
        Self::over(runs, runs, actor, durability)
    }

    /// A database holding `all`, updating `touched` round-robin.
    fn over(
        all: &[FieldingRun],
        touched: &[FieldingRun],
        actor: UserId,
        durability: Durability,
    ) -> Result<Self, BenchError> {
        let scratch = Scratch::new("raw")?;
        create_db(&scratch.db(), all.iter().cloned())?;
        let conn = Connection::open(scratch.db()).map_err(|e| setup("open raw")(e.to_string()))?;
        pragmas(&conn, durability).map_err(|e| setup("raw pragmas")(e.to_string()))?;
        let mut slots = touched
            .iter()
            .map(Slot::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(BenchError::Setup)?;
        let (jobs, rx) = std::sync::mpsc::channel::<(Duration, std::sync::mpsc::Sender<Result<f64, String>>)>();
        std::thread::Builder::new()
            .name("raw-sqlite".into())
            .spawn(move || {
                let mut conn = conn;
                let mut next = 0usize;
                while let Ok((duration, answer)) = rx.recv() {
                    let started = Instant::now();
                    let mut ops = 0u64;
                    let mut result = Ok(());
                    while started.elapsed() < duration {
                        let len = slots.len();
                        let slot = &mut slots[next];
                        next = (next + 1) % len;
                        if let Err(e) = raw_update(&mut conn, slot, actor) {
                            result = Err(e);
                            break;
                        }
                        ops += 1;
                    }
                    let rate = ops as f64 / started.elapsed().as_secs_f64();
                    let _ = answer.send(result.map(|()| rate));
                }
            })
            .map_err(|e| setup("raw thread")(e.to_string()))?;
        Ok(Self {
            jobs,
            _scratch: scratch,
        })
    }

    fn trial(&mut self, duration: Duration) -> Result<f64, BenchError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs
            .send((duration, tx))
            .map_err(|_| BenchError::Workload("the raw thread stopped".into()))?;
        rx.recv()
            .map_err(|_| BenchError::Workload("the raw thread stopped".into()))?
            .map_err(BenchError::Workload)
    }
}

/// What the adapter's write path does, by hand: read, check, conditional
/// update, change record, one immediate transaction.
fn raw_update(conn: &mut Connection, slot: &mut Slot, actor: UserId) -> Result<(), String> {
    let now = SystemClock.now();
    let next_end = slot.next_end();
    let key = slot.key;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    let (version, status, start, end): (i64, String, i64, i64) = tx
        .prepare_cached(
            "SELECT version, status, start_ms, end_ms FROM fielding_runs \
             WHERE id = ?1 AND account_id = ?2 AND project_id = ?3 AND target_group_id = ?4",
        )
        .and_then(|mut stmt| {
            stmt.query_row(
                params![
                    key.id.as_str(),
                    i64::from(key.scope.account_id.get()),
                    key.scope.project_id.as_str(),
                    key.scope.target_group_id.as_str()
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
        })
        .map_err(|e| e.to_string())?;
    if version != slot.version.get() as i64 {
        return Err(format!(
            "raw: {} at version {version}, expected {}",
            key.id, slot.version
        ));
    }
    let new_version = version + 1;
    let by = actor.to_string();
    let touched = tx
        .prepare_cached(
            "UPDATE fielding_runs SET start_ms = ?1, end_ms = ?2, status = ?3, version = ?4, \
             last_changed_at_ms = ?5, last_changed_by = ?6 \
             WHERE id = ?7 AND account_id = ?8 AND project_id = ?9 AND target_group_id = ?10 AND version = ?11",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                slot.start.unix_millis(),
                next_end.unix_millis(),
                status,
                new_version,
                now.unix_millis(),
                by,
                key.id.as_str(),
                i64::from(key.scope.account_id.get()),
                key.scope.project_id.as_str(),
                key.scope.target_group_id.as_str(),
                version
            ])
        })
        .map_err(|e| e.to_string())?;
    if touched != 1 {
        return Err(format!("raw: conditional update touched {touched} rows"));
    }
    // The record's feed position, from the counter in this transaction
    // (what the adapter does: the store's single writer numbers records
    // in commit order).
    let position: i64 = tx
        .prepare_cached("UPDATE feed_counter SET last_position = last_position + 1 RETURNING last_position")
        .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)))
        .map_err(|e| e.to_string())?;
    tx.prepare_cached(
        "INSERT INTO change_records (run_id, version, action, changed_at_ms, changed_by, status_from, status_to, \
         start_from_ms, start_to_ms, end_from_ms, end_to_ms, account_id, project_id, target_group_id, position) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            key.id.as_str(),
            new_version,
            Action::UpdateDates.as_str(),
            now.unix_millis(),
            by,
            status,
            status,
            start,
            slot.start.unix_millis(),
            end,
            next_end.unix_millis(),
            i64::from(key.scope.account_id.get()),
            key.scope.project_id.as_str(),
            key.scope.target_group_id.as_str(),
            position
        ])
    })
    .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    let version = Version::new(new_version as u64).ok_or("version out of range")?;
    slot.advance(version)
}

/// The adapter/raw comparison in one durability mode.
struct Pairs {
    writes_per_commit: f64,
    adapter: Vec<f64>,
    raw: Vec<f64>,
    ratios: Vec<f64>,
}

fn compare_with_raw(
    plan: &SqlitePlan,
    durability: Durability,
    log: &mut dyn FnMut(String),
) -> Result<Pairs, BenchError> {
    let fixture = Fixture::new(plan.runs)?;
    let mut adapter = Adapter::new(fixture.runs(), fixture.actor(), durability, plan.callers)?;
    let mut raw = Raw::new(fixture.runs(), fixture.actor(), durability)?;
    adapter.trial(plan.warmup)?;
    raw.trial(plan.warmup)?;
    let mut pairs = Pairs {
        writes_per_commit: 0.0,
        adapter: Vec::new(),
        raw: Vec::new(),
        ratios: Vec::new(),
    };
    for i in 0..plan.pairs {
        let (a, r) = if i % 2 == 0 {
            let a = adapter.trial(plan.trial)?;
            (a, raw.trial(plan.trial)?)
        } else {
            let r = raw.trial(plan.trial)?;
            (adapter.trial(plan.trial)?, r)
        };
        log(format!(
            "sqlite {durability:?} pair {i}: adapter {a:.0} ops/s, raw {r:.0} ops/s, ratio {:.3}",
            a / r
        ));
        pairs.adapter.push(a);
        pairs.raw.push(r);
        pairs.ratios.push(a / r);
    }
    pairs.writes_per_commit = adapter.store.write_stats().writes_per_transaction();
    Ok(pairs)
}

/// Reads per second by `callers` tasks, optionally while two tasks write.
fn reads(plan: &SqlitePlan, log: &mut dyn FnMut(String)) -> Result<(f64, f64, f64), BenchError> {
    let fixture = Fixture::new(plan.runs)?;
    let adapter = Adapter::new(fixture.runs(), fixture.actor(), Durability::Full, 2)?;
    let scopes: Vec<Scope> = fixture.runs().iter().map(FieldingRun::scope).collect();
    let store = adapter.store.clone();
    let read_for = |runtime: &tokio::runtime::Runtime, duration: Duration, callers: usize| {
        let deadline = Instant::now() + duration;
        let started = Instant::now();
        let total = runtime.block_on(async {
            let tasks: Vec<_> = (0..callers)
                .map(|c| {
                    let (store, scopes) = (store.clone(), scopes.clone());
                    tokio::spawn(async move {
                        let mut n = 0u64;
                        let mut i = c;
                        while Instant::now() < deadline {
                            let scope = &scopes[i % scopes.len()];
                            match store.find_by_target_group(scope).await {
                                Ok(Some(_)) => n += 1,
                                Ok(None) => return Err(BenchError::Workload("a run vanished".into())),
                                Err(e) => return Err(BenchError::Workload(e.to_string())),
                            }
                            i += callers;
                        }
                        Ok(n)
                    })
                })
                .collect();
            let mut total = 0u64;
            for t in tasks {
                total += t.await.map_err(|e| BenchError::Workload(e.to_string()))??;
            }
            Ok::<_, BenchError>(total)
        })?;
        Ok::<_, BenchError>(total as f64 / started.elapsed().as_secs_f64())
    };
    let idle = read_for(&adapter.runtime, plan.trial, plan.callers)?;
    // A writer thread of its own keeps updating while the readers read.
    let writer_runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| setup("runtime")(e.to_string()))?;
    let mut writers = adapter.callers;
    let deadline = Instant::now() + plan.trial + Duration::from_millis(100);
    let writer = std::thread::spawn(move || {
        let started = Instant::now();
        let ops = writers.until(&writer_runtime, deadline).map_err(BenchError::Workload)?;
        Ok::<_, BenchError>(ops as f64 / started.elapsed().as_secs_f64())
    });
    std::thread::sleep(Duration::from_millis(50));
    let busy = read_for(&adapter.runtime, plan.trial, plan.callers)?;
    let writes = writer
        .join()
        .map_err(|_| BenchError::Workload("the writer panicked".into()))??;
    log(format!(
        "sqlite reads: {idle:.0}/s with the writer idle, {busy:.0}/s while it commits {writes:.0} updates/s"
    ));
    Ok((idle, busy, writes))
}

/// `total` synthetic runs, and the 1,000 of them (spread over the key
/// space) that the scale workloads update.
fn scale_data(total: usize) -> Result<(Vec<FieldingRun>, Vec<FieldingRun>, UserId), BenchError> {
    let mut runs = Vec::with_capacity(total);
    let touched = generate(total, |run| {
        runs.push(run);
        Ok(())
    })
    .map_err(BenchError::Setup)?;
    Ok((runs, touched, UserId::random()))
}

/// Alternating pairs of trials of `small` and `big` (ops per second);
/// returns (ns per op small, ns per op big, median ratio big / small).
fn alternate(
    plan: &SqlitePlan,
    what: &str,
    small: &mut dyn FnMut(Duration) -> Result<f64, BenchError>,
    big: &mut dyn FnMut(Duration) -> Result<f64, BenchError>,
    log: &mut dyn FnMut(String),
) -> Result<(f64, f64, f64), BenchError> {
    small(plan.warmup)?;
    big(plan.warmup)?;
    let (mut s, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..plan.scale_pairs {
        let (small_rate, big_rate) = if i % 2 == 0 {
            let x = small(plan.scale_trial)?;
            (x, big(plan.scale_trial)?)
        } else {
            let y = big(plan.scale_trial)?;
            (small(plan.scale_trial)?, y)
        };
        let (small_ns, big_ns) = (1e9 / small_rate, 1e9 / big_rate);
        log(format!(
            "sqlite scale, {what}, pair {i}: {small_ns:.0} ns/update at 1e3 runs, {big_ns:.0} ns/update at {} runs",
            plan.scale_big_name
        ));
        s.push(small_ns);
        b.push(big_ns);
        ratios.push(big_ns / small_ns);
    }
    Ok((median(s), median(b), median(ratios)))
}

/// Update cost at 1e3 and at `scale_big` runs, for the adapter and for the
/// raw baseline on the same data: (adapter, raw), each (ns small, ns big,
/// ratio).
type ScaleFigures = ((f64, f64, f64), (f64, f64, f64));

fn scale(plan: &SqlitePlan, log: &mut dyn FnMut(String)) -> Result<ScaleFigures, BenchError> {
    let loading = Instant::now();
    let (small_all, small_touched, small_actor) = scale_data(1000)?;
    let (big_all, big_touched, big_actor) = scale_data(plan.scale_big)?;
    let mut small = Adapter::over(
        "scale",
        &small_all,
        &small_touched,
        small_actor,
        Durability::Normal,
        plan.callers,
    )?;
    let mut big = Adapter::over(
        "scale",
        &big_all,
        &big_touched,
        big_actor,
        Durability::Normal,
        plan.callers,
    )?;
    let mut raw_small = Raw::over(&small_all, &small_touched, small_actor, Durability::Normal)?;
    let mut raw_big = Raw::over(&big_all, &big_touched, big_actor, Durability::Normal)?;
    drop((small_all, big_all));
    log(format!(
        "sqlite scale: loaded 1,000 and {} runs, twice each, in {:.1} s",
        plan.scale_big,
        loading.elapsed().as_secs_f64()
    ));
    let adapter = alternate(
        plan,
        &format!("adapter, {} callers", plan.callers),
        &mut |d| small.trial(d),
        &mut |d| big.trial(d),
        log,
    )?;
    drop((small, big));
    let raw = alternate(plan, "raw", &mut |d| raw_small.trial(d), &mut |d| raw_big.trial(d), log)?;
    Ok((adapter, raw))
}

/// Runs every SQLite measurement; returns `name value` figures, the two
/// headline ratios first.
pub fn run(plan: &SqlitePlan, log: &mut dyn FnMut(String)) -> Result<Vec<(String, String)>, BenchError> {
    let full = compare_with_raw(plan, Durability::Full, log)?;
    let normal = compare_with_raw(plan, Durability::Normal, log)?;
    let (idle, busy, writes) = reads(plan, log)?;
    let ((small_ns, big_ns, scale_ratio), (raw_small, raw_big, raw_ratio)) = scale(plan, log)?;
    let big = plan.scale_big_name;
    let mut out: Vec<(String, String)> = vec![
        (
            "sqlite_adapter_vs_raw".into(),
            format!("{:.3}", median(full.ratios.clone())),
        ),
        (
            "sqlite_adapter_vs_raw_normal".into(),
            format!("{:.3}", median(normal.ratios.clone())),
        ),
    ];
    for (mode, pairs) in [("full", &full), ("normal", &normal)] {
        out.push((
            format!("sqlite_adapter_ops_per_sec_{mode}"),
            format!("{:.0}", median(pairs.adapter.clone())),
        ));
        out.push((
            format!("sqlite_raw_ops_per_sec_{mode}"),
            format!("{:.0}", median(pairs.raw.clone())),
        ));
        out.push((
            format!("sqlite_adapter_vs_raw_{mode}_min"),
            format!("{:.3}", pairs.ratios.iter().copied().fold(f64::INFINITY, f64::min)),
        ));
        out.push((
            format!("sqlite_adapter_writes_per_commit_{mode}"),
            format!("{:.2}", pairs.writes_per_commit),
        ));
        out.push((
            format!("sqlite_adapter_vs_raw_{mode}_max"),
            format!("{:.3}", pairs.ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
        ));
    }
    out.push(("sqlite_reads_per_sec_writer_idle".into(), format!("{idle:.0}")));
    out.push(("sqlite_reads_per_sec_writer_busy".into(), format!("{busy:.0}")));
    out.push(("sqlite_reads_busy_vs_idle".into(), format!("{:.3}", busy / idle)));
    out.push(("sqlite_writes_per_sec_during_reads".into(), format!("{writes:.0}")));
    out.push(("sqlite_update_ns_per_op_1e3".into(), format!("{small_ns:.0}")));
    out.push((format!("sqlite_update_ns_per_op_{big}"), format!("{big_ns:.0}")));
    out.push((
        format!("sqlite_update_cost_ratio_{big}_vs_1e3"),
        format!("{scale_ratio:.3}"),
    ));
    out.push(("sqlite_raw_update_ns_per_op_1e3".into(), format!("{raw_small:.0}")));
    out.push((format!("sqlite_raw_update_ns_per_op_{big}"), format!("{raw_big:.0}")));
    out.push((
        format!("sqlite_raw_update_cost_ratio_{big}_vs_1e3"),
        format!("{raw_ratio:.3}"),
    ));
    Ok(out)
}

impl SqlitePlan {
    /// The SQLite plan matching the runner's plan: [`SqlitePlan::quick`]
    /// when the runner's trials are short (`--quick`: under a second),
    /// [`SqlitePlan::full`] otherwise.
    pub fn for_plan(plan: &crate::Plan) -> Self {
        if plan.trial < Duration::from_secs(1) {
            Self::quick()
        } else {
            Self::full()
        }
    }
}

/// What the `fielding-bench` runner calls: measures, prints the `name value`
/// lines on stdout (commentary on stderr), and says whether the adapter met
/// its 0.85× target.
pub fn run_and_print(plan: &crate::Plan) -> Result<(), String> {
    use std::io::Write;
    let plan = SqlitePlan::for_plan(plan);
    eprintln!(
        "fielding-bench sqlite: {} runs, {} callers on the adapter, {} pairs of {:?} trials per durability, scale 1e3 vs {}",
        plan.runs, plan.callers, plan.pairs, plan.trial, plan.scale_big_name
    );
    let figures = run(&plan, &mut |line| eprintln!("  {line}")).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    for (name, value) in &figures {
        writeln!(out, "{name} {value}").map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    out.flush().map_err(|e| format!("cannot write to stdout: {e}"))?;
    for (name, value) in figures.iter().take(2) {
        let met = value.parse::<f64>().is_ok_and(|r| r >= SQLITE_TARGET_RATIO);
        eprintln!(
            "{name} = {value} (target {SQLITE_TARGET_RATIO}): {}",
            if met { "met" } else { "NOT met" }
        );
    }
    Ok(())
}

/// The target for `sqlite_adapter_vs_raw[_normal]`.
pub const SQLITE_TARGET_RATIO: f64 = 0.85;
