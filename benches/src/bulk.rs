//! The `bulk` section: a bulk job against the loop a user would write.
//!
//! ```sh
//! cargo run --release -p fielding-bench -- --quick --only bulk
//! ```
//!
//! For SQLite (a file, the server's default options) and PostgreSQL (when
//! reachable, the server's default pool), with `N` live runs (1,000; also
//! 10,000 without `--quick`), pairs of trials in alternating order:
//!
//! * **bulk**: a *pause* job over the `N` target groups, then a *resume* job
//!   over them, each submitted with [`FieldingService::submit_bulk_job`] and
//!   worked to the end by [`BulkRunner::run_until_idle`] (the runner's own
//!   path: claim, batches of 100 in one transaction each, finish), checked
//!   to have updated every item;
//! * **loop**: the same pause then resume, one run at a time through the
//!   single-run service path (`FieldingService::pause` / `resume` with
//!   `If-Match: *`), awaited one after the other: the loop a user would
//!   write without bulk jobs.
//!
//! Both leave every run live, so the next trial starts where this one did.
//! Figures (items per second: `2N` items over the trial's wall time):
//!
//! * `bulk_{sqlite,postgres}_vs_loop R`: median over pairs of bulk ÷ loop
//!   at 1,000 runs (target ≥ 1.0); `..._vs_loop_{N}` for every size;
//! * `bulk_{store}_items_per_sec_{N}`, `loop_{store}_items_per_sec_{N}`;
//! * `bulk_{store}_post_us_{10,1000,10000}`: a batch `POST` answered `201`
//!   over loopback by the server's own app in-process (authentication, body
//!   parsing, validation, recording the job with its items), median of a
//!   few, with no runner: the time to `201` excludes the processing by
//!   construction, as it does in the server (the runner works in the
//!   background).

use std::time::{Duration, Instant};

use fielding_core::{
    BulkAction, BulkJobStatus, BulkRunner, BulkRunnerOptions, FieldingRun, FieldingService, IdempotencyKey, IfMatch,
    NewBulkJob, Scope, Status, TargetGroupId, UserId,
};
use fielding_http::CONTRACT_BASE_PATH;
use fielding_server::{Database, JwtSecret, OpenedStore};
use fielding_testkit::fixtures;
use tokio::runtime::Runtime;

use crate::harness::{server_app, Scratch};
use crate::median;
use crate::series::{emit, pg_reachable, pg_url, PgSchema};

/// The API version every request sends.
const API_VERSION: &str = "2025-12-18";

/// The list sizes whose `POST` is timed.
const POST_SIZES: [usize; 3] = [10, 1_000, 10_000];

/// What the section measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkPlan {
    /// Runs per job (the first is the one `bulk_{store}_vs_loop` reports).
    pub sizes: Vec<usize>,
    /// Pairs of trials (one bulk, one loop) per size.
    pub pairs: usize,
    /// Timed `POST`s per list size.
    pub posts: usize,
}

impl BulkPlan {
    /// 1,000 runs, 3 pairs: some 10 s per store.
    pub fn quick() -> Self {
        Self {
            sizes: vec![1_000],
            pairs: 3,
            posts: 5,
        }
    }

    /// 1,000 and 10,000 runs, 3 pairs each.
    pub fn full() -> Self {
        Self {
            sizes: vec![1_000, 10_000],
            pairs: 3,
            posts: 9,
        }
    }

    /// [`BulkPlan::quick`] with `--quick`, else [`BulkPlan::full`].
    pub fn for_plan(plan: &crate::Plan) -> Self {
        if plan.trial <= crate::Plan::quick().trial {
            Self::quick()
        } else {
            Self::full()
        }
    }
}

fn runtime() -> Result<Runtime, String> {
    crate::series::two_worker_runtime("bulk-bench")
}

/// `count` live runs in fresh target groups of one project.
async fn seed(store: &OpenedStore, project: Scope, count: usize) -> Result<Vec<FieldingRun>, String> {
    let runs: Vec<FieldingRun> = (0..count)
        .map(|_| {
            fixtures::run()
                .with_scope(fixtures::other_target_group(project))
                .with_status(Status::Live)
                .build()
        })
        .collect();
    // Concurrently, so SQLite's group commit and PostgreSQL's pool make
    // seeding quick; seeding is not measured.
    for chunk in runs.chunks(64) {
        let inserts = chunk.iter().map(|run| {
            let store = store.store.clone();
            let run = run.clone();
            tokio::spawn(async move { store.insert(&run, &fixtures::creation(&run)).await })
        });
        for insert in inserts.collect::<Vec<_>>() {
            insert
                .await
                .map_err(|e| format!("a seeding task failed: {e}"))?
                .map_err(|e| format!("cannot seed a run: {e}"))?;
        }
    }
    Ok(runs)
}

/// One bulk trial: pause then resume every run through jobs.
async fn bulk_trial(service: &FieldingService, project: Scope, ids: &[TargetGroupId]) -> Result<Duration, String> {
    let runner = BulkRunner::new(service.clone(), BulkRunnerOptions::default());
    let started = Instant::now();
    for action in [BulkAction::Pause, BulkAction::Resume] {
        let key = IdempotencyKey::parse(&format!("bench-{}", uuid::Uuid::new_v4()))
            .map_err(|e| format!("idempotency key: {e}"))?;
        let job = service
            .submit_bulk_job(NewBulkJob {
                account_id: project.account_id,
                project_id: project.project_id,
                action,
                idempotency_key: key,
                target_group_ids: ids.to_vec(),
                actor: UserId::random(),
                trace_id: None,
            })
            .await
            .map_err(|e| format!("submit: {e}"))?
            .job;
        runner.run_until_idle().await.map_err(|e| format!("runner: {e}"))?;
        let done = service
            .get_bulk_job(&job.key())
            .await
            .map_err(|e| format!("read the job: {e}"))?;
        let updated = done
            .items
            .iter()
            .filter(|item| item.outcome == Some(fielding_core::BulkItemOutcome::Updated))
            .count();
        if done.status != BulkJobStatus::Completed || updated != ids.len() {
            return Err(format!(
                "the {action} job ended {:?} with {updated} of {} updated",
                done.status,
                ids.len()
            ));
        }
    }
    Ok(started.elapsed())
}

/// One loop trial: pause then resume every run, one call at a time.
async fn loop_trial(service: &FieldingService, runs: &[FieldingRun]) -> Result<Duration, String> {
    let actor = UserId::random();
    let started = Instant::now();
    for run in runs {
        service
            .pause(&run.key(), &IfMatch::Any, actor)
            .await
            .map_err(|e| format!("pause: {e}"))?;
    }
    for run in runs {
        service
            .resume(&run.key(), &IfMatch::Any, actor)
            .await
            .map_err(|e| format!("resume: {e}"))?;
    }
    Ok(started.elapsed())
}

/// The median time to `201` of batch `POST`s of `size` ids, through the
/// server's app on a loopback socket.
async fn post_times(store: &OpenedStore, project: Scope, plan: &BulkPlan) -> Result<Vec<(usize, f64)>, String> {
    let secret = JwtSecret::generate().map_err(|e| format!("cannot generate a JWT secret: {e}"))?;
    let app = server_app(store, &secret, false)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("listener address: {e}"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        axum::serve(listener, app.router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let token = fielding_server::mint_token(
        &secret,
        uuid::Uuid::new_v4(),
        &[project.account_id],
        Duration::from_secs(3600),
    )
    .map_err(|e| format!("cannot mint a token: {e}"))?;
    let url = format!(
        "http://{addr}{CONTRACT_BASE_PATH}/demand/accounts/{}/projects/{}/batch-jobs/pause-fielding-runs-by-target-group-id",
        project.account_id, project.project_id
    );
    let client = reqwest::Client::new();
    let mut figures = Vec::new();
    for size in POST_SIZES {
        let ids: Vec<String> = (0..size)
            .map(|_| fixtures::other_target_group(project).target_group_id.to_string())
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "target_group_ids": ids }))
            .map_err(|e| format!("cannot encode a body: {e}"))?;
        let mut times = Vec::new();
        // One untimed request first: connection set-up.
        for attempt in 0..=plan.posts {
            let started = Instant::now();
            let response = client
                .post(&url)
                .bearer_auth(&token)
                .header("Cint-API-Version", API_VERSION)
                .header("Content-Type", "application/json")
                .header("idempotency-key", format!("post-{size}-{}", uuid::Uuid::new_v4()))
                .body(body.clone())
                .send()
                .await
                .map_err(|e| format!("POST: {e}"))?;
            let elapsed = started.elapsed();
            if response.status() != reqwest::StatusCode::CREATED {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                return Err(format!("a batch POST of {size} ids answered {status}: {text}"));
            }
            if attempt > 0 {
                times.push(elapsed.as_secs_f64() * 1e6);
            }
        }
        figures.push((size, median(times)));
    }
    let _ = stop.send(());
    let _ = serving.await;
    Ok(figures)
}

/// Every figure of one store.
fn measure(name: &str, database: Database, pg_schema: &str, plan: &BulkPlan) -> Result<Vec<(String, String)>, String> {
    let rt = runtime()?;
    let store = rt
        .block_on(fielding_server::open_store(
            &database,
            pg_schema,
            fielding_postgres::PgStore::DEFAULT_MAX_CONNECTIONS,
        ))
        .map_err(|e| format!("{name}: {e}"))?;
    let service = FieldingService::new(store.store.clone());
    let mut out = Vec::new();
    for (index, &size) in plan.sizes.iter().enumerate() {
        let project = fixtures::scope();
        let runs = rt.block_on(seed(&store, project, size))?;
        let ids: Vec<TargetGroupId> = runs.iter().map(|run| run.target_group_id).collect();
        let (mut ratios, mut bulk_rates, mut loop_rates) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..plan.pairs {
            let (bulk, looped) = if pair % 2 == 0 {
                let bulk = rt.block_on(bulk_trial(&service, project, &ids))?;
                (bulk, rt.block_on(loop_trial(&service, &runs))?)
            } else {
                let looped = rt.block_on(loop_trial(&service, &runs))?;
                (rt.block_on(bulk_trial(&service, project, &ids))?, looped)
            };
            let items = (2 * size) as f64;
            bulk_rates.push(items / bulk.as_secs_f64());
            loop_rates.push(items / looped.as_secs_f64());
            ratios.push(looped.as_secs_f64() / bulk.as_secs_f64());
            eprintln!(
                "  {name} {size}: bulk {:.0} ms, loop {:.0} ms",
                bulk.as_secs_f64() * 1e3,
                looped.as_secs_f64() * 1e3
            );
        }
        let ratio = median(ratios);
        if index == 0 {
            out.push((format!("bulk_{name}_vs_loop"), format!("{ratio:.3}")));
        }
        out.push((format!("bulk_{name}_vs_loop_{size}"), format!("{ratio:.3}")));
        out.push((
            format!("bulk_{name}_items_per_sec_{size}"),
            format!("{:.0}", median(bulk_rates)),
        ));
        out.push((
            format!("loop_{name}_items_per_sec_{size}"),
            format!("{:.0}", median(loop_rates)),
        ));
    }
    let project = fixtures::scope();
    for (size, micros) in rt.block_on(post_times(&store, project, plan))? {
        out.push((format!("bulk_{name}_post_us_{size}"), format!("{micros:.0}")));
    }
    drop(service);
    rt.block_on(store.close());
    Ok(out)
}

/// Runs the section and prints its figures.
pub fn run_and_print(plan: &crate::Plan) -> Result<(), String> {
    let plan = BulkPlan::for_plan(plan);
    let started = Instant::now();
    eprintln!("fielding-bench bulk: sizes {:?}, {} pairs each", plan.sizes, plan.pairs);
    let scratch = Scratch::new("bulk").map_err(|e| e.to_string())?;
    let mut figures = measure("sqlite", Database::Sqlite(scratch.db()), "fielding", &plan)?;
    let url = pg_url();
    match pg_reachable(&url) {
        Ok(()) => {
            let schema = PgSchema::new(&url, "bulk");
            let database = Database::Postgres(url.clone());
            figures.extend(measure("postgres", database, schema.name(), &plan)?);
            schema.drop_now()?;
        }
        Err(why) => eprintln!("bulk: PostgreSQL at {url} is unreachable ({why}); its figures are skipped"),
    }
    emit(&figures).map_err(|e| format!("cannot write the figures: {e}"))?;
    for (name, value) in &figures {
        if name.ends_with("_vs_loop") {
            let verdict = if value.parse::<f64>().is_ok_and(|r| r >= 1.0) {
                "met"
            } else {
                "NOT met"
            };
            eprintln!("{name} = {value} (target >= 1.0): {verdict}");
        }
    }
    eprintln!("bulk: measured in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
