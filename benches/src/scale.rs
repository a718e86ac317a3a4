//! Scale: update cost, memory and database size as the data grows, for the
//! in-memory store, SQLite and PostgreSQL (when reachable).
//!
//! ## Data
//!
//! For each size N (10^3, 10^5, 10^6; with `--quick` 10^3, 10^4, 10^5, and
//! the figures are named by the sizes used) a store is loaded with N
//! scheduled runs with synthetic ids (`harness::synthetic_run`: random
//! ids, so the runs the workload touches are spread over the whole key
//! space and every index), each with its creation record:
//!
//! * memory: `MemoryStore::seed`, one run at a time;
//! * SQLite: one transaction of prepared `INSERT`s into a fresh file with
//!   the adapter's schema (what `benches/src/sqlite.rs` does);
//! * PostgreSQL: a fresh schema migrated by `PgStore::migrate`, then two
//!   `COPY ... FROM STDIN` streams (runs and change records, on two
//!   connections, fed together), then `ANALYZE`.
//!
//! All three sizes of a store are loaded before any is measured and stay
//! loaded until the store's measurements end.
//!
//! ## Update cost
//!
//! `FieldingService::update_dates` on 1,000 of the N runs (every N/1000-th
//! as generated, so spread over the key space; all N when N = 1,000), each
//! call a real change (the end moves by 1 ms, alternately forwards and
//! back), by 8 concurrent callers on a current-thread tokio runtime, each
//! cycling through its share of the 1,000 runs: ns/op = trial time / calls.
//! SQLite runs with durability `NORMAL`, as in `sqlite.rs`'s scale figure,
//! so that the B-tree's cost is not hidden under `fsync` noise;
//! PostgreSQL with a pool of 8 connections. After a warm-up of every size,
//! rounds measure each size once, the order rotating; each
//! `scale_{store}_update_ns_{size}` is the median over rounds and
//! `scale_{store}_cost_ratio_{big}_vs_1e3` the median of the per-round
//! ratios (largest size / 10^3; the target: within 1.5).
//!
//! The memory store keeps every change record, so each touched run's
//! history grows during the measurement, equally for every size.
//!
//! ## Size
//!
//! * `scale_memory_bytes_per_run_{size}`: growth of the process's resident
//!   memory (`VmRSS`) while seeding, divided by N, measured after giving
//!   freed heap back to the OS (`malloc_trim`) so the delta counts new
//!   pages. Includes the store's maps, the run, its creation record and the
//!   allocator's overhead. At 10^3 the delta is a few hundred KiB and the
//!   page granularity shows: read the largest size.
//! * `scale_sqlite_db_bytes_{size}`: the database file plus its `-wal`
//!   right after loading (runs, change records, indexes, free pages).
//! * `scale_postgres_db_bytes_{size}`: `pg_total_relation_size` of
//!   `fielding_runs` + `change_records` (heap, indexes, TOAST) after
//!   loading and `ANALYZE`.
//! * `..._bytes_per_run_{size}` divide by N.
//!
//! ## The SQLite `-wal` file under a write flood
//!
//! A fresh SQLite store with the default options (what the server opens:
//! durability `FULL`, the log restarting at 10,000 pages) takes, for 5 s
//! (`--quick`) or 20 s, job submissions from 16 concurrent tasks, each
//! followed by four date updates of the run the job created (the server's
//! `POST` flood plus `PUT`s), while a thread samples the size of its `-wal`
//! file every millisecond:
//!
//! * `scale_sqlite_wal_peak_mib`: the largest size seen (target: 64 MiB,
//!   the bound `docs/sqlite.md` states);
//! * `scale_sqlite_wal_writes_per_sec`: store writes during the flood (a
//!   submission is three: the job, its run, its outcome);
//! * `scale_sqlite_wal_restarts`, `scale_sqlite_wal_longest_pause_ms`: the
//!   log restarts and the longest the writer was held for one;
//! * `scale_sqlite_wal_truncated_ms`: time from the flood's end until the
//!   file is empty (the store truncates it after 1 s without commits);
//! * `scale_sqlite_wal_files_after_close`: how many of `-wal` and `-shm`
//!   exist after `SqliteStore::close` (target 0).
//!
//! ## `scale.csv` (with `--csv DIR`)
//!
//! One row per timed trial: `store`, `runs` (N), `round` (0-based),
//! `callers`, `ops` (update_dates calls), `elapsed_s`, `update_ns` (per
//! call), `memory_bytes_per_run` (memory store only, else empty),
//! `db_bytes` (SQLite and PostgreSQL only, else empty), `load_s` (time to
//! load the N runs).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fielding_core::{
    Action, Clock, FieldingRun, FieldingService, FieldingStore, IdempotencyKey, IfMatch, JobRequest, NewJob,
    SystemClock, UserId,
};
use fielding_memory::MemoryStore;
use fielding_postgres::sqlx::postgres::PgConnectOptions;
use fielding_postgres::sqlx::{self, Row};
use fielding_postgres::PgStore;
use fielding_sqlite::{Durability, SqliteOptions, SqliteStore};
use tokio::runtime::Runtime;

use crate::harness::{generate, Scratch, Synthetic, UpdateCallers};
use crate::median;
use crate::series::{emit, pg_reachable, pg_url, resident_bytes, trim_heap, Csv, PgSchema};
use crate::sqlite::create_db;

/// The runs the update workload touches in every store.
pub const TOUCHED: usize = crate::harness::TOUCHED;

/// Sizes and durations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePlan {
    /// The sizes, smallest first, each with its name in the figures.
    pub sizes: Vec<(usize, &'static str)>,
    /// Concurrent callers of `update_dates`.
    pub callers: usize,
    /// Warm-up per size.
    pub warmup: Duration,
    /// Timed work per trial.
    pub trial: Duration,
    /// Rounds (one trial per size each).
    pub rounds: usize,
    /// How long the SQLite `-wal` flood lasts (the flood at the end of the scale section).
    pub wal_flood: Duration,
}

impl ScalePlan {
    /// 10^3, 10^4, 10^5: well under 90 s.
    pub fn quick() -> Self {
        Self {
            sizes: vec![(1_000, "1e3"), (10_000, "1e4"), (100_000, "1e5")],
            callers: 8,
            warmup: Duration::from_millis(150),
            trial: Duration::from_millis(300),
            rounds: 5,
            wal_flood: Duration::from_secs(5),
        }
    }

    /// 10^3, 10^5, 10^6: a few minutes, most of it loading.
    pub fn full() -> Self {
        Self {
            sizes: vec![(1_000, "1e3"), (100_000, "1e5"), (1_000_000, "1e6")],
            callers: 8,
            warmup: Duration::from_millis(500),
            trial: Duration::from_secs(1),
            rounds: 7,
            wal_flood: Duration::from_secs(20),
        }
    }

    /// [`ScalePlan::quick`] when the runner's trials are short (`--quick`),
    /// [`ScalePlan::full`] otherwise.
    pub fn for_plan(plan: &crate::Plan) -> Self {
        if plan.trial < Duration::from_secs(1) {
            Self::quick()
        } else {
            Self::full()
        }
    }
}

/// The columns of `scale.csv` (see the module docs).
pub const CSV_COLUMNS: [&str; 10] = [
    "store",
    "runs",
    "round",
    "callers",
    "ops",
    "elapsed_s",
    "update_ns",
    "memory_bytes_per_run",
    "db_bytes",
    "load_s",
];

/// Which part of a store the size figure describes.
#[derive(Debug, Clone, Copy)]
enum Size {
    MemoryPerRun(f64),
    DbBytes(u64),
}

/// One store loaded with `runs` runs, and its workload.
struct Loaded {
    runs: usize,
    name: &'static str,
    callers: UpdateCallers,
    size: Size,
    load: Duration,
    /// Nanoseconds per call, per round.
    ns: Vec<f64>,
}

impl Loaded {
    fn new(
        (runs, name): (usize, &'static str),
        store: Arc<dyn FieldingStore>,
        touched: &[FieldingRun],
        callers: usize,
        size: Size,
        load: Duration,
    ) -> Result<Self, String> {
        Ok(Self {
            runs,
            name,
            callers: UpdateCallers::new(FieldingService::new(store), touched, callers, UserId::random())?,
            size,
            load,
            ns: Vec::new(),
        })
    }

    /// Updates for `duration` with every caller busy; returns (calls, time).
    fn trial(&mut self, rt: &Runtime, duration: Duration) -> Result<(u64, Duration), String> {
        self.callers.trial(rt, duration)
    }
}

fn runtime() -> Result<Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a tokio runtime: {e}"))
}

fn load_memory(plan: &ScalePlan) -> Result<Vec<Loaded>, String> {
    let mut loaded = Vec::new();
    for &(runs, name) in &plan.sizes {
        trim_heap();
        let before = resident_bytes()?;
        let started = Instant::now();
        let store = MemoryStore::new();
        let touched = generate(runs, |run| {
            let id = run.id;
            store.seed(run).map_err(|e| format!("cannot seed {id}: {e}"))
        })?;
        let load = started.elapsed();
        let after = resident_bytes()?;
        let per_run = after.saturating_sub(before) as f64 / runs as f64;
        loaded.push(Loaded::new(
            (runs, name),
            Arc::new(store),
            &touched,
            plan.callers,
            Size::MemoryPerRun(per_run),
            load,
        )?);
    }
    Ok(loaded)
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Loads every size into a file of its own under `scratch`.
fn load_sqlite(plan: &ScalePlan, rt: &Runtime, scratch: &Scratch) -> Result<Vec<Loaded>, String> {
    let mut loaded = Vec::new();
    for &(runs, name) in &plan.sizes {
        let started = Instant::now();
        let path = scratch.db().with_file_name(format!("scale-{name}.db"));
        let mut runs_left = Synthetic::new(runs);
        let mut failure = None;
        let created = create_db(
            &path,
            std::iter::from_fn(|| match runs_left.next_run()? {
                Ok(run) => Some(run),
                Err(e) => {
                    failure = Some(e);
                    None
                }
            }),
        );
        if let Some(e) = failure {
            return Err(format!("sqlite, {runs} runs: {e}"));
        }
        created.map_err(|e| format!("sqlite, {runs} runs: {e}"))?;
        let touched = runs_left.into_touched();
        let load = started.elapsed();
        let wal = path.with_file_name(format!("scale-{name}.db-wal"));
        let bytes = file_size(&path) + file_size(&wal);
        let options = SqliteOptions::default()
            .with_durability(Durability::Normal)
            .with_migrate(false);
        let store = rt
            .block_on(SqliteStore::open_with(&path, options))
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        loaded.push(Loaded::new(
            (runs, name),
            Arc::new(store),
            &touched,
            plan.callers,
            Size::DbBytes(bytes),
            load,
        )?);
    }
    Ok(loaded)
}

/// One text-format `COPY` line of a run, and one of its creation record.
fn copy_lines(run: &FieldingRun, runs: &mut Vec<u8>, changes: &mut Vec<u8>) {
    use std::io::Write as _;
    let by = run.last_changed_by.as_uuid();
    // Ids are [0-9A-Z], timestamps RFC 3339, statuses and actions plain
    // words: nothing needs escaping.
    let _ = writeln!(
        runs,
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{by}",
        run.id,
        run.account_id,
        run.project_id,
        run.target_group_id,
        run.start_fielding_at,
        run.end_fielding_at,
        run.status.as_str(),
        run.version,
        run.last_changed_at,
    );
    let _ = writeln!(
        changes,
        "{}\t{}\t{}\t{}\t{by}\t\\N\t{}\t\\N\t{}\t\\N\t{}\t{}\t{}\t{}",
        run.id,
        run.version,
        Action::Schedule.as_str(),
        run.last_changed_at,
        run.status.as_str(),
        run.start_fielding_at,
        run.end_fielding_at,
        run.account_id,
        run.project_id,
        run.target_group_id,
    );
}

/// Loads `runs` runs into the (migrated) schema of `store` with two
/// concurrent `COPY`s; returns the touched runs.
async fn copy_runs(store: &PgStore, runs: usize) -> Result<Vec<FieldingRun>, String> {
    const CHUNK: usize = 1 << 20;
    let db = |what: &'static str| move |e: sqlx::Error| format!("{what}: {e}");
    let schema = store.schema().as_str();
    let mut a = store.pool().acquire().await.map_err(db("connect"))?;
    let mut b = store.pool().acquire().await.map_err(db("connect"))?;
    let mut run_copy = a
        .copy_in_raw(&format!(
            "COPY \"{schema}\".fielding_runs (id, account_id, project_id, target_group_id, start_fielding_at, \
             end_fielding_at, status, version, last_changed_at, last_changed_by) FROM STDIN"
        ))
        .await
        .map_err(db("COPY fielding_runs"))?;
    let mut change_copy = b
        .copy_in_raw(&format!(
            "COPY \"{schema}\".change_records (run_id, version, action, changed_at, changed_by, status_from, \
             status_to, start_from, start_to, end_from, end_to, account_id, project_id, target_group_id) FROM STDIN"
        ))
        .await
        .map_err(db("COPY change_records"))?;
    let mut synthetic = Synthetic::new(runs);
    let (mut run_buf, mut change_buf) = (Vec::with_capacity(CHUNK + 512), Vec::with_capacity(CHUNK + 512));
    loop {
        let run = synthetic.next_run().transpose()?;
        if let Some(run) = &run {
            copy_lines(run, &mut run_buf, &mut change_buf);
        }
        if run_buf.len() >= CHUNK || (run.is_none() && !run_buf.is_empty()) {
            run_copy
                .send(std::mem::take(&mut run_buf))
                .await
                .map_err(db("COPY fielding_runs"))?;
            change_copy
                .send(std::mem::take(&mut change_buf))
                .await
                .map_err(db("COPY change_records"))?;
        }
        if run.is_none() {
            break;
        }
    }
    let touched = synthetic.into_touched();
    run_copy.finish().await.map_err(db("COPY fielding_runs"))?;
    change_copy.finish().await.map_err(db("COPY change_records"))?;
    for table in ["fielding_runs", "change_records"] {
        sqlx::query(&format!("ANALYZE \"{schema}\".{table}"))
            .execute(&mut *a)
            .await
            .map_err(db("ANALYZE"))?;
    }
    Ok(touched)
}

async fn pg_store(url: &str, schema: &str, connections: u32) -> Result<PgStore, String> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| format!("bad FIELDING_PG_URL: {e}"))?
        .application_name("fielding_bench_scale");
    let pool = PgStore::pool_options()
        .max_connections(connections)
        .connect_with(options)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    PgStore::new(pool, schema).map_err(|e| e.to_string())
}

/// Loads every size into a schema of its own (dropped by the guards).
fn load_postgres(
    plan: &ScalePlan,
    rt: &Runtime,
    url: &str,
    schemas: &mut Vec<PgSchema>,
) -> Result<Vec<Loaded>, String> {
    let mut loaded = Vec::new();
    for &(runs, name) in &plan.sizes {
        let schema = PgSchema::new(url, "scale");
        let schema_name = schema.name().to_string();
        schemas.push(schema);
        let started = Instant::now();
        let (store, touched, bytes) = rt.block_on(async {
            let store = pg_store(url, &schema_name, plan.callers.max(2) as u32).await?;
            store.migrate().await.map_err(|e| format!("migrate: {e}"))?;
            let touched = copy_runs(&store, runs).await?;
            let bytes: i64 = sqlx::query(&format!(
                "SELECT (pg_total_relation_size('\"{schema_name}\".fielding_runs') \
                 + pg_total_relation_size('\"{schema_name}\".change_records'))::bigint"
            ))
            .fetch_one(store.pool())
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| format!("pg_total_relation_size: {e}"))?;
            Ok::<_, String>((store, touched, bytes))
        })?;
        let load = started.elapsed();
        loaded.push(Loaded::new(
            (runs, name),
            Arc::new(store),
            &touched,
            plan.callers,
            Size::DbBytes(u64::try_from(bytes).unwrap_or(0)),
            load,
        )?);
    }
    Ok(loaded)
}

/// Warms every size up, then measures rounds of one trial per size.
fn measure(
    store: &str,
    plan: &ScalePlan,
    rt: &Runtime,
    loaded: &mut [Loaded],
    csv: &mut Csv,
    log: &mut dyn FnMut(String),
) -> Result<(), String> {
    for l in loaded.iter_mut() {
        l.trial(rt, plan.warmup)?;
    }
    for round in 0..plan.rounds {
        let mut line = format!("{store} round {round}:");
        for turn in 0..loaded.len() {
            let index = (round + turn) % loaded.len();
            let l = &mut loaded[index];
            let (ops, elapsed) = l.trial(rt, plan.trial)?;
            if ops == 0 {
                return Err(format!("{store}, {} runs: no update finished in {elapsed:?}", l.runs));
            }
            let ns = elapsed.as_nanos() as f64 / ops as f64;
            l.ns.push(ns);
            line.push_str(&format!(" {}: {ns:.0} ns", l.name));
            let (memory, db) = match l.size {
                Size::MemoryPerRun(b) => (format!("{b:.1}"), String::new()),
                Size::DbBytes(b) => (String::new(), b.to_string()),
            };
            csv.push(vec![
                store.to_string(),
                l.runs.to_string(),
                round.to_string(),
                plan.callers.to_string(),
                ops.to_string(),
                format!("{:.4}", elapsed.as_secs_f64()),
                format!("{ns:.1}"),
                memory,
                db,
                format!("{:.3}", l.load.as_secs_f64()),
            ])?;
        }
        log(line);
    }
    Ok(())
}

/// The figures of one store: update cost per size, the ratio of the
/// largest to the smallest, sizes.
fn figures(store: &str, loaded: &[Loaded], out: &mut Vec<(String, String)>) {
    for l in loaded {
        out.push((
            format!("scale_{store}_update_ns_{}", l.name),
            format!("{:.0}", median(l.ns.iter().copied())),
        ));
    }
    if let (Some(small), Some(big)) = (loaded.first(), loaded.last()) {
        let ratio = cost_ratio(&small.ns, &big.ns);
        out.push((
            format!("scale_{store}_cost_ratio_{}_vs_{}", big.name, small.name),
            format!("{ratio:.3}"),
        ));
        eprintln!(
            "scale: {store} update cost at {} runs is {ratio:.2}x that at {} (target: within 1.5x): {}",
            big.runs,
            small.runs,
            if ratio <= 1.5 { "met" } else { "NOT met" }
        );
    }
    for l in loaded {
        match l.size {
            Size::MemoryPerRun(b) => out.push((format!("scale_{store}_bytes_per_run_{}", l.name), format!("{b:.0}"))),
            Size::DbBytes(b) => {
                out.push((format!("scale_{store}_db_bytes_{}", l.name), b.to_string()));
                out.push((
                    format!("scale_{store}_db_bytes_per_run_{}", l.name),
                    format!("{:.0}", b as f64 / l.runs as f64),
                ));
            }
        }
    }
}

/// The median of the per-round ratios big / small (rounds paired by index).
pub fn cost_ratio(small_ns: &[f64], big_ns: &[f64]) -> f64 {
    median(small_ns.iter().zip(big_ns).map(|(s, b)| b / s))
}

/// Measures every store (PostgreSQL when reachable), prints the figures,
/// and writes `scale.csv` to `csv_dir` if given.
pub fn run_and_print(plan: &crate::Plan, csv_dir: Option<&Path>) -> Result<(), String> {
    let plan = ScalePlan::for_plan(plan);
    let sizes: Vec<&str> = plan.sizes.iter().map(|(_, n)| *n).collect();
    eprintln!(
        "fielding-bench scale: {sizes:?} runs, update_dates on {TOUCHED} of them by {} callers, {} rounds of {:?}",
        plan.callers, plan.rounds, plan.trial
    );
    let started = Instant::now();
    let mut csv = Csv::new(&CSV_COLUMNS);
    let mut out = Vec::new();
    let outcome = measure_all(&plan, &mut csv, &mut out);
    if let Some(dir) = csv_dir {
        csv.write(dir, "scale.csv")?;
    }
    outcome?;
    emit(&out)?;
    eprintln!("scale: measured in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn measure_all(plan: &ScalePlan, csv: &mut Csv, out: &mut Vec<(String, String)>) -> Result<(), String> {
    let log = &mut |line: String| eprintln!("  {line}");
    let rt = runtime()?;

    let loading = Instant::now();
    let mut memory = load_memory(plan).map_err(|e| format!("scale, memory: {e}"))?;
    log(format!("memory: loaded in {:.1} s", loading.elapsed().as_secs_f64()));
    measure("memory", plan, &rt, &mut memory, csv, log)?;
    figures("memory", &memory, out);
    drop(memory);

    {
        let scratch = Scratch::new("scale").map_err(|e| e.to_string())?;
        let loading = Instant::now();
        let mut sqlite = load_sqlite(plan, &rt, &scratch)?;
        log(format!("sqlite: loaded in {:.1} s", loading.elapsed().as_secs_f64()));
        let measured = measure("sqlite", plan, &rt, &mut sqlite, csv, log);
        figures("sqlite", &sqlite, out);
        // Close the stores (their threads finish) before the files go.
        for l in sqlite {
            drop(l);
        }
        measured?;
        let flooded = rt.block_on(wal_flood(plan.wal_flood, &scratch))?;
        log(format!(
            "sqlite -wal flood: {} jobs and {} updates in {:.1} s, peak {:.1} MiB",
            flooded.jobs,
            flooded.updates,
            plan.wal_flood.as_secs_f64(),
            mib(flooded.peak_bytes)
        ));
        flooded.figures(plan.wal_flood, out);
    }

    let url = pg_url();
    if let Err(e) = pg_reachable(&url) {
        eprintln!("scale: PostgreSQL skipped: not reachable at {url} ({e})");
        return Ok(());
    }
    let mut schemas = Vec::new();
    let outcome = (|| {
        let loading = Instant::now();
        let mut postgres = load_postgres(plan, &rt, &url, &mut schemas).map_err(|e| format!("scale, postgres: {e}"))?;
        log(format!("postgres: loaded in {:.1} s", loading.elapsed().as_secs_f64()));
        let measured = measure("postgres", plan, &rt, &mut postgres, csv, log);
        figures("postgres", &postgres, out);
        // Close the pools on their runtime before the schemas go.
        rt.block_on(async {
            for l in postgres {
                drop(l);
            }
        });
        measured
    })();
    let mut dropped = Ok(());
    for schema in schemas {
        if let Err(e) = schema.drop_now() {
            dropped = Err(e);
        }
    }
    outcome?;
    dropped
}

/// Tasks submitting jobs in the `-wal` flood.
const FLOOD_TASKS: usize = 16;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// What the `-wal` flood measured.
#[derive(Debug, Default)]
struct WalFlood {
    jobs: u64,
    updates: u64,
    peak_bytes: u64,
    restarts: u64,
    longest_pause: Duration,
    /// From the flood's end until the file was empty; `None` if it was not
    /// within the wait.
    truncated_after: Option<Duration>,
    files_after_close: usize,
}

impl WalFlood {
    fn figures(&self, flood: Duration, out: &mut Vec<(String, String)>) {
        let peak = mib(self.peak_bytes);
        eprintln!(
            "scale: sqlite -wal peak {peak:.1} MiB under a {:.0} s write flood (target: at most 64 MiB): {}",
            flood.as_secs_f64(),
            if peak <= 64.0 { "met" } else { "NOT met" }
        );
        // A submission writes the job, its run and its outcome.
        let writes = 3 * self.jobs + self.updates;
        let truncated = self
            .truncated_after
            .map_or_else(|| "never".to_string(), |d| d.as_millis().to_string());
        let figures = [
            ("scale_sqlite_wal_peak_mib", format!("{peak:.1}")),
            (
                "scale_sqlite_wal_writes_per_sec",
                format!("{:.0}", writes as f64 / flood.as_secs_f64()),
            ),
            ("scale_sqlite_wal_restarts", self.restarts.to_string()),
            (
                "scale_sqlite_wal_longest_pause_ms",
                format!("{:.1}", self.longest_pause.as_secs_f64() * 1e3),
            ),
            ("scale_sqlite_wal_truncated_ms", truncated),
            ("scale_sqlite_wal_files_after_close", self.files_after_close.to_string()),
        ];
        out.extend(figures.map(|(name, value)| (name.to_string(), value)));
    }
}

/// A job submission, then four date updates of the run it created, over
/// and over until `deadline`; (submissions, updates).
async fn submit_and_update(service: FieldingService, deadline: Instant) -> Result<(u64, u64), String> {
    let actor = UserId::random();
    let (mut jobs, mut updates) = (0u64, 0u64);
    while Instant::now() < deadline {
        let scope = fielding_testkit::fixtures::scope();
        let end = SystemClock
            .now()
            .checked_add(chrono::TimeDelta::days(30))
            .ok_or("the end of the flood's runs is out of range")?;
        let key = IdempotencyKey::parse(&format!("wal-flood-{jobs}")).map_err(|e| e.to_string())?;
        let submitted = service
            .submit_job(NewJob {
                scope,
                idempotency_key: key,
                request: JobRequest::LaunchFromDraft { end_fielding_at: end },
                actor,
                trace_id: None,
            })
            .await
            .map_err(|e| format!("submit_job: {e}"))?;
        jobs += 1;
        let run_id = submitted
            .job
            .created_fielding_run_id()
            .ok_or_else(|| format!("job {} did not create its run", submitted.job.id))?;
        let mut run = service
            .get(&scope.run(run_id))
            .await
            .map_err(|e| format!("get {run_id}: {e}"))?;
        for step in 1..=4 {
            let moved = end
                .checked_add(chrono::TimeDelta::milliseconds(step))
                .ok_or("a moved end is out of range")?;
            let if_match = IfMatch::version(run.version);
            run = service
                .update_dates(&run.key(), &if_match, run.start_fielding_at, moved, actor)
                .await
                .map_err(|e| format!("update_dates of {run_id}: {e}"))?
                .run;
            updates += 1;
        }
    }
    Ok((jobs, updates))
}

/// Samples the size of the file at `path` every millisecond on a thread of
/// its own until `stop` is sent (or dropped); the largest seen.
fn sample_peak(path: std::path::PathBuf, stop: std::sync::mpsc::Receiver<()>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        loop {
            peak = peak.max(file_size(&path));
            if stop.recv_timeout(Duration::from_millis(1)) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                return peak;
            }
        }
    })
}

/// Floods a fresh store under `scratch` with writes for `flood`, then
/// waits for the log's truncation and closes the store (see the module
/// docs).
async fn wal_flood(flood: Duration, scratch: &Scratch) -> Result<WalFlood, String> {
    let db = scratch.db().with_file_name("wal-flood.db");
    let sidecar = |suffix: &str| db.with_file_name(format!("wal-flood.db{suffix}"));
    let store = SqliteStore::open(&db)
        .await
        .map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    let store = Arc::new(store);
    let service = FieldingService::new(Arc::clone(&store) as Arc<dyn FieldingStore>);
    let (stop, stopped) = std::sync::mpsc::channel();
    let sampler = sample_peak(sidecar("-wal"), stopped);
    let deadline = Instant::now() + flood;
    let tasks: Vec<_> = (0..FLOOD_TASKS)
        .map(|_| tokio::spawn(submit_and_update(service.clone(), deadline)))
        .collect();
    let mut figures = WalFlood::default();
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok((jobs, updates))) => {
                figures.jobs += jobs;
                figures.updates += updates;
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(format!("a flooding task failed: {e}"));
            }
        }
    }
    let ended = Instant::now();
    let _ = stop.send(());
    figures.peak_bytes = sampler.join().map_err(|_| "the -wal sampler panicked")?;
    if let Some(e) = failure {
        return Err(format!("sqlite -wal flood: {e}"));
    }
    let wait = ended + Duration::from_secs(10);
    while file_size(&sidecar("-wal")) > 0 && Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if file_size(&sidecar("-wal")) == 0 {
        figures.truncated_after = Some(ended.elapsed());
    }
    let stats = store.checkpoint_stats();
    (figures.restarts, figures.longest_pause) = (stats.restarts, stats.longest_pause);
    drop(service);
    let store = Arc::into_inner(store).ok_or("the flood's store is still shared")?;
    store.close().await;
    figures.files_after_close = ["-wal", "-shm"].iter().filter(|s| sidecar(s).exists()).count();
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_lines_have_every_column() {
        let mut runs = Vec::new();
        generate(1, |run| {
            runs.push(run);
            Ok(())
        })
        .expect("a run");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        copy_lines(&runs[0], &mut a, &mut b);
        let a = String::from_utf8(a).expect("utf-8");
        let b = String::from_utf8(b).expect("utf-8");
        assert_eq!(a.trim_end().split('\t').count(), 10, "{a}");
        assert_eq!(b.trim_end().split('\t').count(), 14, "{b}");
        assert!(a.ends_with('\n') && b.ends_with('\n'));
        assert!(b.contains("\tschedule\t"), "{b}");
    }

    #[test]
    fn cost_ratio_pairs_rounds() {
        assert_eq!(cost_ratio(&[100.0, 200.0, 100.0], &[120.0, 200.0, 150.0]), 1.2);
    }

    #[test]
    fn a_tiny_memory_scale_run_measures_every_size() {
        let plan = ScalePlan {
            sizes: vec![(10, "1e1"), (2_000, "2e3")],
            callers: 2,
            warmup: Duration::from_millis(5),
            trial: Duration::from_millis(10),
            rounds: 2,
            wal_flood: Duration::ZERO,
        };
        let rt = runtime().expect("runtime");
        let mut loaded = load_memory(&plan).expect("loaded");
        let mut csv = Csv::new(&CSV_COLUMNS);
        measure("memory", &plan, &rt, &mut loaded, &mut csv, &mut |_| {}).expect("measured");
        let mut out = Vec::new();
        figures("memory", &loaded, &mut out);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "scale_memory_update_ns_1e1",
                "scale_memory_update_ns_2e3",
                "scale_memory_cost_ratio_2e3_vs_1e1",
                "scale_memory_bytes_per_run_1e1",
                "scale_memory_bytes_per_run_2e3",
            ]
        );
        assert_eq!(csv.render().lines().count(), 1 + 2 * 2);
    }

    #[test]
    fn a_short_wal_flood_reports_every_figure() {
        let scratch = Scratch::new("scale-test").expect("scratch");
        let flood = Duration::from_millis(300);
        let flooded = runtime()
            .expect("runtime")
            .block_on(wal_flood(flood, &scratch))
            .expect("flooded");
        assert!(flooded.jobs > 0, "{flooded:?}");
        assert_eq!(
            flooded.updates,
            4 * flooded.jobs,
            "each submission is followed by four updates"
        );
        assert!(flooded.peak_bytes > 0, "{flooded:?}");
        assert!(flooded.truncated_after.is_some(), "{flooded:?}");
        assert_eq!(flooded.files_after_close, 0);
        let mut out = Vec::new();
        flooded.figures(flood, &mut out);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "scale_sqlite_wal_peak_mib",
                "scale_sqlite_wal_writes_per_sec",
                "scale_sqlite_wal_restarts",
                "scale_sqlite_wal_longest_pause_ms",
                "scale_sqlite_wal_truncated_ms",
                "scale_sqlite_wal_files_after_close",
            ]
        );
    }
}
