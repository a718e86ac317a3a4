//! Contention over HTTP: many clients updating one run, or each its own,
//! through the real server code path, with a lost-update check at the end
//! of every trial.
//!
//! ## What a client does
//!
//! Each client is an independent HTTP client (its own `reqwest::Client`,
//! one keep-alive connection, its own JWT and so its own user and its own
//! rate-limit bucket) and loops until the trial's deadline:
//!
//! 1. `GET .../fielding-runs/{id}`: 200, the `ETag` and the run's dates;
//! 2. `PUT .../fielding-runs/{id}` (update-dates) with `If-Match: <etag>`,
//!    the start as read and the end as read + 1 ms (so every update is a
//!    real change, and the end counts the updates);
//! 3. on 202 the update succeeded: its latency is the time from the first
//!    `GET` of this update to the 202, retries included; on 412 another
//!    client won the race: the client counts a refusal and starts again at
//!    1 (unless the deadline has passed: it then stops, having changed
//!    nothing). Any other status fails the benchmark.
//!
//! In mode `one` all clients share one run; in mode `distinct` each client
//! has a run of its own (no 412 is expected). Every trial seeds fresh runs
//! (version 1, with their creation record).
//!
//! ## No lost update
//!
//! After every trial, for every run of the trial, the benchmark reads the
//! run and its change records **through the store** (`FieldingStore::get`,
//! `FieldingStore::changes`) and checks with [`lost_updates`]: final version
//! = 1 + the 202s the clients saw, change records exactly versions
//! `1..=final`, and the end moved by exactly 1 ms per 202.
//! `contention_lost_updates` is the sum over every trial of every store,
//! warm-up trials included; it must be 0, and the section fails otherwise
//! (after printing its figures).
//!
//! ## The server: in-process
//!
//! The server is `fielding_server::app::app` (the binary's own router:
//! `/health`, the contract's routes, the access-log layer) with the
//! binary's [`fielding_server::JwtAuthenticator`] (built by
//! [`crate::harness::server_app`]), served by `axum::serve` on
//! `127.0.0.1:0` on a 2-worker tokio runtime of its own (the binary's runtime on this
//! 2-core machine), the store opened with [`fielding_server::open_store`]
//! as the binary opens it (SQLite file with its default options, PostgreSQL
//! with its default pool, migrated). The clients run on a second 2-worker
//! runtime. In-process rather than spawning the release binary because:
//!
//! * the check needs the store the server writes to: the memory store can
//!   only be read from inside the process (no endpoint lists change
//!   records), and going through the same `Arc<dyn FieldingStore>` reads
//!   what the server wrote without a second connection or file handle;
//! * there is no child process to leak on an error path, and no build step
//!   or binary path to get wrong;
//! * the request path is identical: what the binary adds around the app is
//!   its command line, its log subscriber and the signal handling.
//!
//! One deliberate difference: the per-principal rate limit is raised to
//! 1,000,000 requests/s (bursts of 1,000,000); the default (100/s) would
//! measure the limiter, not the store. The limiter is still consulted on
//! every request.
//!
//! ## Figures
//!
//! Trials of every configuration (mode × clients) are interleaved in
//! rounds, the order rotating each round. Per configuration:
//!
//! * `_updates_per_sec`: median over rounds of 202s / trial wall time;
//! * `_refusals_per_success`: all 412s / all 202s;
//! * `_p99_us`: p99 (nearest rank) of all successful updates' latencies;
//! * `contention_{store}_one_vs_distinct_{n}`: median over rounds of the
//!   per-round ratio one / distinct (the price of sharing one run).
//!
//! ## `contention.csv` (with `--csv DIR`)
//!
//! One row per trial: `store` (memory, sqlite, postgres), `mode` (one,
//! distinct, or warmup), `clients`, `round` (0-based; warm-up trials have
//! round -1), `elapsed_s` (trial wall time), `successes` (202s), `refusals`
//! (412s), `abandoned` (updates stopped by the deadline after a 412),
//! `updates_per_sec`, `refusals_per_success`, `p50_us`, `p99_us`,
//! `p999_us`, `max_us` (latency of successful updates, first GET to 202),
//! `lost_updates` (for this trial; 0 expected).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use fielding_core::{Action, ChangeRecord, Clock, FieldingRun, RunKey, Status, SystemClock, Timestamp};
use fielding_http::CONTRACT_BASE_PATH;
use fielding_server::{Database, JwtSecret, OpenedStore};
use fielding_testkit::fixtures;
use tokio::runtime::Runtime;

use crate::harness::{server_app, Scratch};
use crate::median;
use crate::series::{emit, lost_updates, percentile, Csv, PgSchema, RunHistory};

/// The API version every request sends.
const API_VERSION: &str = "2025-12-18";

/// How many clients and how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentionPlan {
    /// Client counts, each measured on one run and on distinct runs.
    pub clients: Vec<usize>,
    /// Wall time per trial.
    pub trial: Duration,
    /// Rounds (one trial of every configuration each).
    pub rounds: usize,
    /// One distinct-runs trial with 4 clients per store before the rounds.
    pub warmup: Duration,
}

impl ContentionPlan {
    /// About 10 s per store.
    pub fn quick() -> Self {
        Self {
            clients: vec![1, 4, 16, 64],
            trial: Duration::from_millis(400),
            rounds: 3,
            warmup: Duration::from_millis(300),
        }
    }

    /// About 80 s per store.
    pub fn full() -> Self {
        Self {
            clients: vec![1, 4, 16, 64],
            trial: Duration::from_secs(2),
            rounds: 5,
            warmup: Duration::from_secs(1),
        }
    }

    /// [`ContentionPlan::quick`] when the runner's trials are short
    /// (`--quick`), [`ContentionPlan::full`] otherwise.
    pub fn for_plan(plan: &crate::Plan) -> Self {
        if plan.trial < Duration::from_secs(1) {
            Self::quick()
        } else {
            Self::full()
        }
    }
}

/// All clients on one run, or each on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every client updates the same run.
    One,
    /// Each client updates a run of its own.
    Distinct,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::One => "one",
            Mode::Distinct => "distinct",
        }
    }
}

/// The store behind the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `MemoryStore`.
    Memory,
    /// `SqliteStore` on a scratch file.
    Sqlite,
    /// `PgStore` in a scratch schema.
    Postgres,
}

impl StoreKind {
    /// `memory`, `sqlite` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// What one client did in one trial.
#[derive(Debug, Default)]
struct ClientOutcome {
    successes: u64,
    refusals: u64,
    abandoned: u64,
    latencies_us: Vec<u64>,
}

/// One trial of one configuration.
#[derive(Debug, Clone)]
pub struct Trial {
    /// Which configuration.
    pub mode: Mode,
    /// How many clients.
    pub clients: usize,
    /// Wall time from the start signal to the last client's end.
    pub elapsed: Duration,
    /// 202s.
    pub successes: u64,
    /// 412s.
    pub refusals: u64,
    /// Updates given up at the deadline after a 412.
    pub abandoned: u64,
    /// Latencies of the successful updates, in µs, sorted.
    pub latencies_us: Vec<u64>,
    /// What the lost-update check found.
    pub lost: u64,
}

impl Trial {
    fn updates_per_sec(&self) -> f64 {
        self.successes as f64 / self.elapsed.as_secs_f64()
    }
}

/// The server on its runtime, the store it serves, and the clients'
/// runtime. Stopped and closed by [`Harness::finish`]; dropping it without
/// that still stops the server and the runtimes.
struct Harness {
    kind: StoreKind,
    server_rt: Option<Runtime>,
    client_rt: Option<Runtime>,
    store: Option<OpenedStore>,
    addr: SocketAddr,
    secret: JwtSecret,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

fn runtime(name: &str) -> Result<Runtime, String> {
    crate::series::two_worker_runtime(name)
}

impl Harness {
    fn start(kind: StoreKind, database: Database, pg_schema: &str) -> Result<Self, String> {
        let server_rt = runtime("contention-server")?;
        let client_rt = runtime("contention-clients")?;
        let secret = JwtSecret::generate().map_err(|e| format!("cannot generate a JWT secret: {e}"))?;
        let store = server_rt
            .block_on(fielding_server::open_store(
                &database,
                pg_schema,
                fielding_postgres::PgStore::DEFAULT_MAX_CONNECTIONS,
            ))
            .map_err(|e| format!("{}: {e}", kind.name()))?;
        let app = server_app(&store, &secret, true)?;
        let listener = server_rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| format!("cannot listen on 127.0.0.1:0: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the listener's address: {e}"))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = server_rt.spawn(async move {
            axum::serve(listener, app.router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            kind,
            server_rt: Some(server_rt),
            client_rt: Some(client_rt),
            store: Some(store),
            addr,
            secret,
            stop: Some(stop),
            serving: Some(serving),
        })
    }

    fn server_rt(&self) -> Result<&Runtime, String> {
        self.server_rt
            .as_ref()
            .ok_or_else(|| "the server runtime is gone".into())
    }

    fn store(&self) -> Result<&OpenedStore, String> {
        self.store.as_ref().ok_or_else(|| "the store is closed".into())
    }

    /// Inserts fresh scheduled runs (version 1, with their creation record).
    fn seed(&self, count: usize) -> Result<Vec<FieldingRun>, String> {
        let store = self.store()?.store.clone();
        let now = SystemClock.now();
        let runs: Vec<FieldingRun> = (0..count)
            .map(|_| fixtures::run().with_status(Status::Scheduled).with_now(now).build())
            .collect();
        self.server_rt()?.block_on(async {
            for run in &runs {
                store
                    .insert(run, &ChangeRecord::created(run, Action::Schedule))
                    .await
                    .map_err(|e| format!("{}: cannot seed run {}: {e}", self.kind.name(), run.id))?;
            }
            Ok::<_, String>(())
        })?;
        Ok(runs)
    }

    /// One trial: seeds the runs, runs the clients for `duration`, checks
    /// every run's history.
    fn trial(&self, mode: Mode, clients: usize, duration: Duration) -> Result<Trial, String> {
        let runs = self.seed(match mode {
            Mode::One => 1,
            Mode::Distinct => clients,
        })?;
        let client_rt = self.client_rt.as_ref().ok_or("the client runtime is gone")?;
        let mut targets = Vec::with_capacity(clients);
        for i in 0..clients {
            let run = &runs[i % runs.len()];
            let token = fielding_server::mint_token(
                &self.secret,
                uuid::Uuid::new_v4(),
                &[run.account_id],
                Duration::from_secs(3600),
            )
            .map_err(|e| format!("cannot mint a token: {e}"))?;
            let url = format!(
                "http://{}{CONTRACT_BASE_PATH}/demand/accounts/{}/projects/{}/target-groups/{}/fielding-runs/{}",
                self.addr, run.account_id, run.project_id, run.target_group_id, run.id
            );
            targets.push((url, token, i % runs.len()));
        }
        let (outcomes, elapsed) = client_rt.block_on(drive(targets, duration))?;
        let mut per_run = vec![0u64; runs.len()];
        let mut trial = Trial {
            mode,
            clients,
            elapsed,
            successes: 0,
            refusals: 0,
            abandoned: 0,
            latencies_us: Vec::new(),
            lost: 0,
        };
        for (run_index, outcome) in outcomes {
            per_run[run_index] += outcome.successes;
            trial.successes += outcome.successes;
            trial.refusals += outcome.refusals;
            trial.abandoned += outcome.abandoned;
            trial.latencies_us.extend(outcome.latencies_us);
        }
        trial.latencies_us.sort_unstable();
        for (run, successes) in runs.iter().zip(per_run) {
            let found = self.check(run, successes)?;
            if found.lost > 0 {
                eprintln!(
                    "  LOST UPDATES on {} run {} ({} clients, mode {}): {}",
                    self.kind.name(),
                    run.id,
                    clients,
                    mode.name(),
                    found.problems.join("; ")
                );
            }
            trial.lost += found.lost;
        }
        Ok(trial)
    }

    /// Reads `run` and its change records through the store and checks them
    /// against `successes`.
    fn check(&self, run: &FieldingRun, successes: u64) -> Result<crate::series::LostUpdates, String> {
        let store = self.store()?.store.clone();
        let key: RunKey = run.key();
        let (now, records) = self.server_rt()?.block_on(async {
            let now = store.get(&key).await.map_err(|e| format!("read {}: {e}", key.id))?;
            let records = store
                .changes(&key)
                .await
                .map_err(|e| format!("changes of {}: {e}", key.id))?;
            Ok::<_, String>((now, records))
        })?;
        let now = now.ok_or_else(|| format!("run {} vanished", key.id))?;
        Ok(lost_updates(&RunHistory {
            seeded_version: run.version.get(),
            final_version: now.version.get(),
            successes,
            record_versions: records.iter().map(|c| c.version.get()).collect(),
            end_moved_ms: now.end_fielding_at.since(run.end_fielding_at).num_milliseconds(),
        }))
    }

    /// Stops the server (finishing requests in flight), closes the store
    /// (a SQLite store's threads finish their writes), stops the runtimes.
    fn finish(mut self) -> Result<(), String> {
        // The clients are gone with their trials; dropping the runtime
        // closes any connection still open.
        if let Some(rt) = self.client_rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let server_rt = self.server_rt.take().ok_or("the server runtime is gone")?;
        let mut outcome = Ok(());
        if let Some(serving) = self.serving.take() {
            outcome = match server_rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), serving).await }) {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(e))) => Err(format!("the server failed: {e}")),
                Ok(Err(e)) => Err(format!("the server task failed: {e}")),
                Err(_) => Err("the server did not stop within 10 s".to_string()),
            };
        }
        if let Some(store) = self.store.take() {
            server_rt.block_on(store.close());
        }
        server_rt.shutdown_timeout(Duration::from_secs(5));
        outcome
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.client_rt.take() {
            rt.shutdown_background();
        }
        if let (Some(rt), Some(store)) = (self.server_rt.as_ref(), self.store.take()) {
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(10), store.close()).await;
            });
        }
        if let Some(rt) = self.server_rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs one client per target, all starting together, for `duration`.
/// Returns each client's run index and outcome, and the wall time.
async fn drive(
    targets: Vec<(String, String, usize)>,
    duration: Duration,
) -> Result<(Vec<(usize, ClientOutcome)>, Duration), String> {
    let start = Arc::new(tokio::sync::Barrier::new(targets.len() + 1));
    let mut tasks = Vec::with_capacity(targets.len());
    for (url, token, run_index) in targets {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            // Open the connection and warm the path before the clock starts.
            let warm = read(&http, &url, &token).await;
            start.wait().await;
            warm?;
            let outcome = client(&http, &url, &token, Instant::now() + duration).await?;
            Ok::<_, String>((run_index, outcome))
        }));
    }
    start.wait().await;
    let started = Instant::now();
    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(outcome)) => outcomes.push(outcome),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("a client task failed: {e}"));
            }
        }
    }
    let elapsed = started.elapsed();
    match first_error {
        Some(e) => Err(e),
        None => Ok((outcomes, elapsed)),
    }
}

/// A run as a `GET` shows it: its `ETag` and dates.
struct Read {
    etag: reqwest::header::HeaderValue,
    start: Timestamp,
    end: Timestamp,
}

async fn read(http: &reqwest::Client, url: &str, token: &str) -> Result<Read, String> {
    let response = http
        .get(url)
        .bearer_auth(token)
        .header("Cint-API-Version", API_VERSION)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    let etag = response.headers().get(reqwest::header::ETAG).cloned();
    let body = response.bytes().await.map_err(|e| format!("GET {url}: body: {e}"))?;
    if status != reqwest::StatusCode::OK {
        return Err(format!("GET {url}: {status}: {}", String::from_utf8_lossy(&body)));
    }
    let etag = etag.ok_or_else(|| format!("GET {url}: no ETag"))?;
    let (start, end) = dates_of(&body).map_err(|e| format!("GET {url}: {e}"))?;
    Ok(Read { etag, start, end })
}

/// The `start_fielding_at` and `end_fielding_at` of a run's JSON.
fn dates_of(body: &[u8]) -> Result<(Timestamp, Timestamp), String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let field = |name: &str| -> Result<Timestamp, String> {
        value
            .get(name)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("no {name}"))?
            .parse()
            .map_err(|e| format!("{name}: {e}"))
    };
    Ok((field("start_fielding_at")?, field("end_fielding_at")?))
}

/// One client's loop: read, write with `If-Match`, retry on 412.
async fn client(http: &reqwest::Client, url: &str, token: &str, deadline: Instant) -> Result<ClientOutcome, String> {
    let mut out = ClientOutcome::default();
    'updates: while Instant::now() < deadline {
        let started = Instant::now();
        loop {
            let run = read(http, url, token).await?;
            let end = run
                .end
                .checked_add(TimeDelta::milliseconds(1))
                .ok_or("the end cannot move by 1 ms")?;
            let body = format!(
                "{{\"start_fielding_at\":\"{}\",\"end_fielding_at\":\"{end}\"}}",
                run.start
            );
            let response = http
                .put(url)
                .bearer_auth(token)
                .header("Cint-API-Version", API_VERSION)
                .header(reqwest::header::IF_MATCH, run.etag)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| format!("PUT {url}: {e}"))?;
            let status = response.status();
            let text = response.bytes().await.map_err(|e| format!("PUT {url}: body: {e}"))?;
            match status.as_u16() {
                202 => {
                    out.successes += 1;
                    out.latencies_us.push(started.elapsed().as_micros() as u64);
                    continue 'updates;
                }
                412 => {
                    out.refusals += 1;
                    if Instant::now() >= deadline {
                        out.abandoned += 1;
                        break 'updates;
                    }
                }
                _ => return Err(format!("PUT {url}: {status}: {}", String::from_utf8_lossy(&text))),
            }
        }
    }
    Ok(out)
}

/// Every trial of one store.
struct StoreResults {
    /// Per configuration (mode, clients), its trials in round order.
    configs: Vec<(Mode, usize, Vec<Trial>)>,
    /// Updates the warm-up trial lost.
    warmup_lost: u64,
}

impl StoreResults {
    fn lost(&self) -> u64 {
        self.warmup_lost + self.configs.iter().flat_map(|(_, _, t)| t).map(|t| t.lost).sum::<u64>()
    }
}

/// The store's server, measured; `None` when PostgreSQL is unreachable.
fn measure_store(
    kind: StoreKind,
    plan: &ContentionPlan,
    csv: &mut Csv,
    log: &mut dyn FnMut(String),
) -> Result<Option<StoreResults>, String> {
    // Scratch space first, so it outlives the harness (dropped in reverse).
    let mut _scratch = None;
    let mut pg_schema = None;
    let (database, schema) = match kind {
        StoreKind::Memory => (Database::Memory, "fielding".to_string()),
        StoreKind::Sqlite => {
            let scratch = Scratch::new("contention").map_err(|e| e.to_string())?;
            let db = scratch.db();
            _scratch = Some(scratch);
            (Database::Sqlite(db), "fielding".to_string())
        }
        StoreKind::Postgres => {
            let url = crate::series::pg_url();
            if let Err(e) = crate::series::pg_reachable(&url) {
                eprintln!("contention: PostgreSQL skipped: not reachable at {url} ({e})");
                return Ok(None);
            }
            let schema = PgSchema::new(&url, "contention");
            let name = schema.name().to_string();
            pg_schema = Some(schema);
            (Database::Postgres(url), name)
        }
    };
    let harness = Harness::start(kind, database, &schema)?;
    let outcome = run_rounds(&harness, plan, csv, log);
    let finished = harness.finish();
    if let Some(schema) = pg_schema {
        schema.drop_now()?;
    }
    let results = outcome?;
    finished?;
    Ok(Some(results))
}

fn run_rounds(
    harness: &Harness,
    plan: &ContentionPlan,
    csv: &mut Csv,
    log: &mut dyn FnMut(String),
) -> Result<StoreResults, String> {
    let store = harness.kind.name();
    let warm = harness.trial(Mode::Distinct, 4, plan.warmup)?;
    log(format!(
        "{store} warm-up: {:.0} updates/s, lost {}",
        warm.updates_per_sec(),
        warm.lost
    ));
    csv_row(csv, store, "warmup", -1, &warm)?;
    let mut results: Vec<(Mode, usize, Vec<Trial>)> = [Mode::One, Mode::Distinct]
        .into_iter()
        .flat_map(|mode| plan.clients.iter().map(move |&n| (mode, n, Vec::new())))
        .collect();
    let configs = results.len();
    for round in 0..plan.rounds {
        for turn in 0..configs {
            let (mode, clients, trials) = &mut results[(round + turn) % configs];
            let trial = harness.trial(*mode, *clients, plan.trial)?;
            log(format!(
                "{store} round {round} {} {clients:>2} clients: {:>6.0} updates/s, {:.2} refusals/success, p99 {} µs{}",
                mode.name(),
                trial.updates_per_sec(),
                trial.refusals as f64 / trial.successes.max(1) as f64,
                percentile(&trial.latencies_us, 99.0).unwrap_or(0),
                if trial.lost > 0 { ", LOST UPDATES" } else { "" }
            ));
            csv_row(csv, store, mode.name(), round as i64, &trial)?;
            trials.push(trial);
        }
    }
    Ok(StoreResults {
        configs: results,
        warmup_lost: warm.lost,
    })
}

fn csv_row(csv: &mut Csv, store: &str, mode: &str, round: i64, t: &Trial) -> Result<(), String> {
    let p = |q: f64| percentile(&t.latencies_us, q).map_or_else(String::new, |v| v.to_string());
    csv.push(vec![
        store.to_string(),
        mode.to_string(),
        t.clients.to_string(),
        round.to_string(),
        format!("{:.4}", t.elapsed.as_secs_f64()),
        t.successes.to_string(),
        t.refusals.to_string(),
        t.abandoned.to_string(),
        format!("{:.1}", t.updates_per_sec()),
        format!("{:.3}", t.refusals as f64 / t.successes.max(1) as f64),
        p(50.0),
        p(99.0),
        p(99.9),
        t.latencies_us.last().map_or_else(String::new, |v| v.to_string()),
        t.lost.to_string(),
    ])
}

/// The columns of `contention.csv` (see the module docs).
pub const CSV_COLUMNS: [&str; 15] = [
    "store",
    "mode",
    "clients",
    "round",
    "elapsed_s",
    "successes",
    "refusals",
    "abandoned",
    "updates_per_sec",
    "refusals_per_success",
    "p50_us",
    "p99_us",
    "p999_us",
    "max_us",
    "lost_updates",
];

/// The figures of one store's results.
fn figures(store: &str, results: &[(Mode, usize, Vec<Trial>)], out: &mut Vec<(String, String)>) {
    for (mode, clients, trials) in results {
        let prefix = format!("contention_{store}_{}_{clients}", mode.name());
        let rate = median(trials.iter().map(|t| t.updates_per_sec()));
        let (successes, refusals) = trials
            .iter()
            .fold((0u64, 0u64), |(s, r), t| (s + t.successes, r + t.refusals));
        let mut latencies: Vec<u64> = trials.iter().flat_map(|t| t.latencies_us.iter().copied()).collect();
        latencies.sort_unstable();
        out.push((format!("{prefix}_updates_per_sec"), format!("{rate:.0}")));
        out.push((
            format!("{prefix}_refusals_per_success"),
            format!("{:.3}", refusals as f64 / successes.max(1) as f64),
        ));
        out.push((
            format!("{prefix}_p99_us"),
            percentile(&latencies, 99.0).map_or_else(|| "NaN".to_string(), |v| v.to_string()),
        ));
    }
    // One run against distinct runs, round by round.
    let find = |mode: Mode, n: usize| results.iter().find(|(m, c, _)| *m == mode && *c == n);
    for (_, clients, _) in results.iter().filter(|(m, _, _)| *m == Mode::One) {
        if let (Some((_, _, one)), Some((_, _, distinct))) = (find(Mode::One, *clients), find(Mode::Distinct, *clients))
        {
            let ratio = median(
                one.iter()
                    .zip(distinct.iter())
                    .map(|(o, d)| o.updates_per_sec() / d.updates_per_sec()),
            );
            out.push((
                format!("contention_{store}_one_vs_distinct_{clients}"),
                format!("{ratio:.3}"),
            ));
        }
    }
}

/// Measures every store (PostgreSQL when reachable), prints
/// `contention_lost_updates` then the per-configuration figures, writes
/// `contention.csv` to `csv_dir` if given, and fails if any update was lost.
pub fn run_and_print(plan: &crate::Plan, csv_dir: Option<&Path>) -> Result<(), String> {
    let plan = ContentionPlan::for_plan(plan);
    eprintln!(
        "fielding-bench contention: {:?} clients on one run and on distinct runs, {} rounds of {:?} trials, \
         over HTTP through the server's app in-process",
        plan.clients, plan.rounds, plan.trial
    );
    let started = Instant::now();
    let mut csv = Csv::new(&CSV_COLUMNS);
    let mut lost = 0u64;
    let mut out = Vec::new();
    let mut failure = None;
    for kind in [StoreKind::Memory, StoreKind::Sqlite, StoreKind::Postgres] {
        match measure_store(kind, &plan, &mut csv, &mut |line| eprintln!("  {line}")) {
            Ok(Some(results)) => {
                lost += results.lost();
                figures(kind.name(), &results.configs, &mut out);
            }
            Ok(None) => {}
            Err(e) => {
                failure = Some(format!("contention, {}: {e}", kind.name()));
                break;
            }
        }
    }
    if let Some(dir) = csv_dir {
        csv.write(dir, "contention.csv")?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    out.insert(0, ("contention_lost_updates".to_string(), lost.to_string()));
    emit(&out)?;
    eprintln!("contention: measured in {:.1} s", started.elapsed().as_secs_f64());
    if lost > 0 {
        return Err(format!(
            "contention: {lost} LOST UPDATES (final versions, change records or ends disagree with the 202s; see above)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_read_from_a_run_body() {
        let body = br#"{"id":"x","start_fielding_at":"2031-01-01T09:00:00.000Z","end_fielding_at":"2031-01-31T09:00:00.000Z","version":3}"#;
        let (start, end) = dates_of(body).expect("dates");
        assert_eq!(start.to_string(), "2031-01-01T09:00:00.000Z");
        assert_eq!(end.to_string(), "2031-01-31T09:00:00.000Z");
        assert!(dates_of(b"{}").is_err());
        assert!(dates_of(b"not json").is_err());
        assert!(dates_of(br#"{"start_fielding_at":"x","end_fielding_at":"y"}"#).is_err());
    }

    fn trial(mode: Mode, clients: usize, successes: u64, refusals: u64, latencies_us: Vec<u64>) -> Trial {
        Trial {
            mode,
            clients,
            elapsed: Duration::from_secs(1),
            successes,
            refusals,
            abandoned: 0,
            latencies_us,
            lost: 0,
        }
    }

    #[test]
    fn figures_name_every_configuration() {
        let results = vec![
            (Mode::One, 4, vec![trial(Mode::One, 4, 100, 300, (1..=100).collect())]),
            (
                Mode::Distinct,
                4,
                vec![trial(Mode::Distinct, 4, 400, 0, (1..=400).collect())],
            ),
        ];
        let mut out = Vec::new();
        figures("memory", &results, &mut out);
        let get = |name: &str| out.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("contention_memory_one_4_updates_per_sec"), Some("100"));
        assert_eq!(get("contention_memory_one_4_refusals_per_success"), Some("3.000"));
        assert_eq!(get("contention_memory_one_4_p99_us"), Some("99"));
        assert_eq!(get("contention_memory_distinct_4_p99_us"), Some("396"));
        assert_eq!(get("contention_memory_one_vs_distinct_4"), Some("0.250"));
    }

    /// A whole trial against the in-memory store, through the server: one
    /// run, several clients, no update lost.
    #[test]
    fn a_short_trial_on_the_memory_store_loses_nothing() {
        let harness = Harness::start(StoreKind::Memory, Database::Memory, "fielding").expect("server");
        let one = harness.trial(Mode::One, 4, Duration::from_millis(150)).expect("trial");
        assert!(one.successes > 0, "{one:?}");
        assert_eq!(one.lost, 0, "{one:?}");
        assert_eq!(one.latencies_us.len() as u64, one.successes);
        let distinct = harness
            .trial(Mode::Distinct, 2, Duration::from_millis(100))
            .expect("trial");
        assert_eq!(distinct.refusals, 0, "{distinct:?}");
        assert_eq!(distinct.lost, 0, "{distinct:?}");
        harness.finish().expect("stops cleanly");
    }
}
