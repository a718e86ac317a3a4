//! Bulk jobs through real server processes: a job survives the SIGKILL of
//! the process working it (SQLite: the restarted server resumes it; two
//! PostgreSQL instances: the survivor takes it over when the lease ends),
//! and every item is applied exactly once, also when someone else changed
//! an already-processed run between the crash and the resumption.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fielding_core::{Action, FieldingRun, FieldingService, FieldingStore, IfMatch, RunKey, Scope, Status, UserId};
use fielding_testkit::fixtures;
use reqwest::StatusCode;
use serde_json::Value;

const ACCOUNT: u32 = 101;

/// Flags for a server that works bulk jobs one item per transaction (so a
/// kill lands mid-job), gives up a dead holder's job after a 1–2 s lease and
/// looks for such jobs often.
fn bulk_flags(lease_seconds: &str) -> Vec<&str> {
    vec![
        "--jwt-secret",
        SECRET,
        "--rate-limit-per-second",
        "0",
        "--address-rate-limit-per-second",
        "0",
        "--bulk-batch-size",
        "1",
        "--bulk-lease",
        lease_seconds,
        "--bulk-poll-interval-ms",
        "50",
    ]
}

/// `count` live runs in fresh target groups of the test project.
async fn seed_live_runs(store: &dyn FieldingStore, count: usize) -> Vec<FieldingRun> {
    let project = Scope::parse(&ACCOUNT.to_string(), PROJECT, "01BTGNYV6HRNK8K8VKZASZCFP1").expect("a scope");
    let mut runs = Vec::with_capacity(count);
    for _ in 0..count {
        let run = fixtures::run()
            .with_scope(fixtures::other_target_group(project))
            .with_status(Status::Live)
            .build();
        store.insert(&run, &fixtures::creation(&run)).await.expect("seed a run");
        runs.push(run);
    }
    runs
}

fn batch_path(action: &str) -> String {
    format!("{API}/demand/accounts/{ACCOUNT}/projects/{PROJECT}/batch-jobs/{action}-fielding-runs-by-target-group-id")
}

/// POSTs a bulk job; answers its `Location`.
async fn submit(server: &Server, bearer: &str, action: &str, runs: &[FieldingRun]) -> String {
    let ids: Vec<String> = runs.iter().map(|run| run.target_group_id.to_string()).collect();
    let response = client()
        .post(server.url(&batch_path(action)))
        .bearer_auth(bearer)
        .header("Cint-API-Version", API_VERSION)
        .header("idempotency-key", format!("bulk-{action}-{}", runs.len()))
        .json(&serde_json::json!({ "target_group_ids": ids }))
        .send()
        .await
        .expect("POST the job");
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    assert_eq!(status, StatusCode::CREATED, "{:?}", response.text().await);
    location.expect("a Location")
}

/// The job's GET body.
async fn job(server: &Server, bearer: &str, location: &str) -> Value {
    let (status, _, body) = get(server, location, Some(bearer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn updated(job: &Value) -> usize {
    job["updated_target_groups"]["data"].as_array().map_or(0, Vec::len)
}

/// Polls the job (every 20 ms) until `done` says so; panics when the job
/// makes no progress (no new outcome) for a minute, however long it runs
/// in all: a loaded machine is slow, a stuck job is stuck.
async fn wait_for(server: &Server, bearer: &str, location: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut progress = (usize::MAX, Instant::now());
    loop {
        let body = job(server, bearer, location).await;
        if done(&body) {
            return body;
        }
        let outcomes = updated(&body) + body["failed_target_groups"]["data"].as_array().map_or(0, Vec::len);
        if outcomes != progress.0 {
            progress = (outcomes, Instant::now());
        }
        assert!(
            progress.1.elapsed() < Duration::from_secs(60),
            "the job made no progress for a minute: {body}\n{}",
            server.printed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many change records of the run at `key` have `action`.
async fn count(store: &dyn FieldingStore, key: &RunKey, action: Action) -> usize {
    let records = store.changes(key).await.expect("read change records");
    records.iter().filter(|record| record.action == action).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_resumes_its_bulk_job_and_never_applies_an_item_twice() {
    const RUNS: usize = 3000;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("bulk.sqlite3");
    let runs = {
        let store = fielding_sqlite::SqliteStore::open(&path).await.expect("open the file");
        let runs = seed_live_runs(&store, RUNS).await;
        store.close().await;
        runs
    };
    let path_text = path.to_str().expect("a UTF-8 path");
    let mut args = vec!["--database", path_text];
    args.extend(bulk_flags("1"));
    let bearer = token(SECRET, &[ACCOUNT]);

    let mut first = Server::start_quiet(&args);
    let location = submit(&first, &bearer, "complete", &runs).await;
    wait_for(&first, &bearer, &location, |job| updated(job) >= 1).await;
    first.stop_with(libc::SIGKILL);

    // Between the crash and the restart, someone relaunches a run the job
    // had already completed, and pauses one it had not reached.
    let (relaunched, paused) = {
        let store = Arc::new(fielding_sqlite::SqliteStore::open(&path).await.expect("reopen"));
        let service = FieldingService::new(store.clone());
        let key = fielding_core::BulkJobKey {
            account_id: runs[0].account_id,
            project_id: runs[0].project_id,
            id: location.rsplit('/').next().unwrap().parse().expect("a job id"),
        };
        let stored = service.get_bulk_job(&key).await.expect("the job survived");
        let done: HashSet<_> = stored
            .items
            .iter()
            .filter(|item| item.outcome.is_some())
            .map(|item| item.target_group_id)
            .collect();
        assert!(
            !done.is_empty() && done.len() < RUNS,
            "killed mid-job: {} of {RUNS} items had an outcome",
            done.len()
        );
        let relaunched = runs
            .iter()
            .find(|run| done.contains(&run.target_group_id))
            .unwrap()
            .key();
        let paused = runs
            .iter()
            .find(|run| !done.contains(&run.target_group_id))
            .unwrap()
            .key();
        let me = UserId::random();
        let completed = service.get(&relaunched).await.unwrap();
        assert_eq!(
            completed.status,
            Status::Completed,
            "the job completed it before the kill"
        );
        service
            .relaunch(&relaunched, &IfMatch::version(completed.version), me)
            .await
            .unwrap();
        let live = service.get(&paused).await.unwrap();
        service
            .pause(&paused, &IfMatch::version(live.version), me)
            .await
            .unwrap();
        drop(service);
        Arc::try_unwrap(store).expect("the only handle").close().await;
        (relaunched, paused)
    };

    let second = Server::start_quiet(&args);
    let finished = wait_for(&second, &bearer, &location, |job| job["status"] != "Processing").await;
    assert_eq!(finished["status"], "Completed", "{}", second.printed());
    assert_eq!(updated(&finished), RUNS);
    assert_eq!(finished["failed_target_groups"]["data"], serde_json::json!([]));
    drop(second);

    let store = fielding_sqlite::SqliteStore::open(&path).await.expect("reopen");
    for run in &runs {
        assert_eq!(
            count(&store, &run.key(), Action::Complete).await,
            1,
            "{} completed exactly once",
            run.target_group_id
        );
    }
    let now = in_days(0);
    let relaunched_now = store.get(&relaunched).await.unwrap().unwrap();
    assert_eq!(
        relaunched_now.effective_status(now),
        Status::Live,
        "the relaunch after the job's complete stands"
    );
    let paused_now = store.get(&paused).await.unwrap().unwrap();
    assert_eq!(
        paused_now.status,
        Status::Completed,
        "a run paused before the job reached it is completed"
    );
    store.close().await;
}

/// Runs wherever `FIELDING_PG_URL` or `CI` is set (and fails without a
/// server); see [`fielding_postgres::testing`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_takes_over_the_bulk_job_of_a_killed_one() {
    const RUNS: usize = 2000;
    let Some(schema) = fielding_postgres::testing::TestSchema::new().await else {
        return;
    };
    let store = schema.store().await;
    let runs = seed_live_runs(&store, RUNS).await;
    let mut args = vec!["--database", schema.url(), "--pg-schema", schema.name()];
    args.extend(bulk_flags("2"));
    let bearer = token(SECRET, &[ACCOUNT]);

    let mut holder = Server::start_quiet(&args);
    let location = submit(&holder, &bearer, "pause", &runs).await;
    // The submission wakes the first instance, which claims the job at
    // once; the second starts while the first holds it (and renews its
    // lease), so it can only get the job by taking it over. Started before
    // waiting for progress, so that as much of the job as possible is left
    // to take over.
    let survivor = Server::start_quiet(&args);
    wait_for(&holder, &bearer, &location, |job| updated(job) >= 1).await;
    let before_kill = updated(&job(&survivor, &bearer, &location).await);
    holder.stop_with(libc::SIGKILL);
    assert!(
        before_kill < RUNS,
        "the job finished before the kill; nothing was taken over"
    );

    let finished = wait_for(&survivor, &bearer, &location, |job| job["status"] != "Processing").await;
    assert_eq!(finished["status"], "Completed", "{}", survivor.printed());
    assert_eq!(updated(&finished), RUNS);
    for run in &runs {
        let stored = store.get(&run.key()).await.unwrap().unwrap();
        assert_eq!(stored.status, Status::Paused);
        assert_eq!(stored.version.get(), 2, "{} paused exactly once", run.target_group_id);
        assert_eq!(count(&store, &run.key(), Action::Pause).await, 1);
    }
}
