//! Bulk jobs on a SQLite file: the service and the runner end to end, the
//! store's claim, batch and expiry rules, a half-done job that survives
//! closing the store, the migration from version 3, and two OS processes
//! working the same jobs on one file.
//!
//! The two-process test re-runs this test binary as a child
//! (`current_exe() --exact bulk_child_process`) with `FIELDING_BULK_CHILD`
//! set; `bulk_child_process` does nothing without it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use fielding_core::{
    Action, BulkAction, BulkClaim, BulkItemFailure, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey,
    BulkJobStatus, BulkRunner, BulkRunnerOptions, ChangeRecord, ClaimToken, FieldingRun, FieldingService,
    FieldingStore, ItemUpdate, Scope, Status, StoreError, TargetGroupId, Timestamp, UserId,
};
use fielding_sqlite::{rusqlite, SqliteOptions, SqliteStore, SCHEMA_VERSION};
use fielding_testkit::fixtures;

const CHILD: &str = "FIELDING_BULK_CHILD";

fn now() -> Timestamp {
    Timestamp::from(chrono::Utc::now())
}

fn later(by: i64) -> Timestamp {
    now().checked_add(TimeDelta::seconds(by)).unwrap()
}

fn claim(lease_until: Timestamp) -> BulkClaim {
    BulkClaim {
        token: ClaimToken::generate(),
        lease_until,
    }
}

/// Stores one run per status, each under its own target group of
/// `scope`'s project.
async fn seed(store: &dyn FieldingStore, scope: Scope, statuses: &[Status]) -> Vec<FieldingRun> {
    let mut runs = Vec::new();
    for status in statuses {
        let run = fixtures::run()
            .with_scope(fixtures::other_target_group(scope))
            .with_status(*status)
            .build();
        store
            .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
            .await
            .unwrap();
        runs.push(run);
    }
    runs
}

#[tokio::test]
async fn every_action_runs_end_to_end_on_a_file() {
    fielding_testkit::scenarios::bulk_jobs_follow_the_rules(Arc::new(common::temp_store().await)).await;
}

#[tokio::test]
async fn keys_claims_leases_and_tokens() {
    let store = common::temp_store().await;
    let scope = fixtures::scope();
    let tg = |n: usize| -> Vec<TargetGroupId> {
        (0..n)
            .map(|_| fixtures::other_target_group(scope).target_group_id)
            .collect()
    };
    let mut older = fixtures::bulk_job(scope, "a", BulkAction::Pause, &tg(3));
    older.created_at = now().checked_add(TimeDelta::seconds(-10)).unwrap();
    let newer = fixtures::bulk_job(scope, "b", BulkAction::Resume, &tg(2));
    // Newer first: the claim goes by creation time, not insertion order.
    assert_eq!(store.create_bulk_job(&newer).await.unwrap(), BulkJobCreated::Created);
    assert_eq!(store.create_bulk_job(&older).await.unwrap(), BulkJobCreated::Created);
    let same_key = fixtures::bulk_job(scope, "a", BulkAction::Complete, &tg(1));
    assert_eq!(
        store.create_bulk_job(&same_key).await.unwrap(),
        BulkJobCreated::Existing(older.clone())
    );
    let other_account = fixtures::bulk_job(fixtures::other_account(scope), "a", BulkAction::Pause, &tg(1));
    assert_eq!(
        store.create_bulk_job(&other_account).await.unwrap(),
        BulkJobCreated::Created,
        "keys are per account"
    );
    assert_eq!(store.get_bulk_job(&same_key.key()).await.unwrap(), None);

    let first = claim(later(60));
    let taken = store.claim_bulk_job(now(), &first).await.unwrap().unwrap();
    assert_eq!(taken, older, "oldest first, with its items");
    let second = claim(later(60));
    let taken = store.claim_bulk_job(now(), &second).await.unwrap().unwrap();
    assert_eq!(taken.id, newer.id);
    let third = store.claim_bulk_job(now(), &claim(later(60))).await.unwrap().unwrap();
    assert_eq!(third.id, other_account.id);
    assert_eq!(
        store.claim_bulk_job(now(), &claim(later(60))).await.unwrap(),
        None,
        "every job is held under a live lease"
    );

    // The lease ends: another runner takes the job, and the first token is
    // refused everywhere.
    assert!(store
        .renew_bulk_claim(
            &older.key(),
            &BulkClaim {
                lease_until: now(),
                ..first
            }
        )
        .await
        .unwrap());
    let thief = claim(later(60));
    let retaken = store.claim_bulk_job(later(1), &thief).await.unwrap().unwrap();
    assert_eq!(retaken.id, older.id);
    assert!(!store.renew_bulk_claim(&older.key(), &first).await.unwrap());
    let mut never = |_: TargetGroupId, _: Option<&FieldingRun>| -> ItemUpdate { panic!("decide must not be called") };
    let err = store
        .apply_bulk_items(
            &older.key(),
            first.token,
            &older.items[..1].iter().map(|i| i.target_group_id).collect::<Vec<_>>(),
            &mut never,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ClaimLost { token, .. } if token == first.token),
        "{err}"
    );
    assert!(!store
        .finish_bulk_job(&older.key(), first.token, BulkJobStatus::Completed, now())
        .await
        .unwrap());
    // A token is checked against its own job only.
    assert!(!store.renew_bulk_claim(&newer.key(), &thief).await.unwrap());
    let wrong_project = BulkJobKey {
        project_id: fixtures::other_project(scope).project_id,
        ..older.key()
    };
    assert!(!store.renew_bulk_claim(&wrong_project, &thief).await.unwrap());

    // Finished: the claim ends and the job is no longer claimable.
    let ids: Vec<_> = older.items.iter().map(|i| i.target_group_id).collect();
    let mut missing = |_: TargetGroupId, run: Option<&FieldingRun>| {
        assert!(run.is_none());
        ItemUpdate::Record(BulkItemOutcome::Failed(BulkItemFailure::TargetGroupNotFound))
    };
    store
        .apply_bulk_items(&older.key(), thief.token, &ids, &mut missing)
        .await
        .unwrap();
    assert!(store
        .finish_bulk_job(&older.key(), thief.token, BulkJobStatus::Failed, now())
        .await
        .unwrap());
    assert!(!store.renew_bulk_claim(&older.key(), &thief).await.unwrap());
    assert_eq!(
        store
            .claim_bulk_job(later(3600), &claim(later(7200)))
            .await
            .unwrap()
            .map(|j| j.id)
            .filter(|id| *id == older.id),
        None
    );
    let finished = store.get_bulk_job(&older.key()).await.unwrap().unwrap();
    assert_eq!(finished.status, BulkJobStatus::Failed);
    assert!(finished.pending().next().is_none());
}

/// A pause of `run` (live) by `actor`, as the service would write it.
fn pause(run: &FieldingRun, actor: UserId) -> ItemUpdate {
    let mut next = run.clone();
    next.status = Status::Paused;
    next.version = run.version.next().unwrap();
    next.last_changed_at = now();
    next.last_changed_by = actor;
    let change = ChangeRecord {
        run_id: run.id,
        version: next.version,
        action: Action::Pause,
        changed_at: next.last_changed_at,
        changed_by: actor,
        status_from: Some(run.status),
        status_to: next.status,
        start_from: Some(run.start_fielding_at),
        start_to: next.start_fielding_at,
        end_from: Some(run.end_fielding_at),
        end_to: next.end_fielding_at,
    };
    ItemUpdate::Write {
        expected: run.version,
        run: next,
        change,
    }
}

#[tokio::test]
async fn a_batch_is_all_or_nothing_and_settled_items_are_not_decided_again() {
    let store = common::temp_store().await;
    let scope = fixtures::scope();
    let runs = seed(&store, scope, &[Status::Live, Status::Live, Status::Live]).await;
    let ids: Vec<_> = runs.iter().map(|run| run.target_group_id).collect();
    let job = fixtures::bulk_job(scope, "atomic", BulkAction::Pause, &ids);
    store.create_bulk_job(&job).await.unwrap();
    let held = claim(later(60));
    store.claim_bulk_job(now(), &held).await.unwrap().unwrap();
    let actor = job.created_by;

    // The last item's decision was made on a stale version: the whole
    // batch fails and nothing of it is written.
    let mut calls = 0;
    let mut stale = |tg: TargetGroupId, run: Option<&FieldingRun>| {
        calls += 1;
        let run = run.expect("every target group has a run");
        let update = pause(run, actor);
        match update {
            ItemUpdate::Write { run, change, .. } if tg == ids[2] => ItemUpdate::Write {
                expected: fixtures::version(9),
                run,
                change,
            },
            other => other,
        }
    };
    let err = store
        .apply_bulk_items(&job.key(), held.token, &ids, &mut stale)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict { .. }), "{err}");
    assert_eq!(calls, 3);
    for run in &runs {
        assert_eq!(store.get(&run.key()).await.unwrap().unwrap().version, run.version);
        assert_eq!(store.changes(&run.key()).await.unwrap().len(), 1);
    }
    assert_eq!(
        store.get_bulk_job(&job.key()).await.unwrap().unwrap().pending().count(),
        3
    );

    // Writing a run other than the one shown is refused.
    let mut swapped = |_: TargetGroupId, _: Option<&FieldingRun>| pause(&runs[0], actor);
    let err = store
        .apply_bulk_items(&job.key(), held.token, &ids[1..2], &mut swapped)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("internal error"), "{err}");

    // A good batch of the first two; then all three: the first two are
    // answered from the store without deciding again.
    let mut good = |_: TargetGroupId, run: Option<&FieldingRun>| pause(run.unwrap(), actor);
    let first = store
        .apply_bulk_items(&job.key(), held.token, &ids[..2], &mut good)
        .await
        .unwrap();
    assert_eq!(
        first,
        vec![(ids[0], BulkItemOutcome::Updated), (ids[1], BulkItemOutcome::Updated)]
    );
    let mut seen = Vec::new();
    let mut once = |tg: TargetGroupId, run: Option<&FieldingRun>| {
        seen.push(tg);
        pause(run.unwrap(), actor)
    };
    let all = store
        .apply_bulk_items(&job.key(), held.token, &ids, &mut once)
        .await
        .unwrap();
    assert_eq!(seen, [ids[2]]);
    assert_eq!(
        all.iter().map(|(tg, _)| *tg).collect::<Vec<_>>(),
        ids,
        "in the order asked"
    );
    for run in &runs {
        let history = store.changes(&run.key()).await.unwrap();
        assert_eq!(history.len(), 2, "each run changed once");
        assert_eq!(history[1].action, Action::Pause);
    }
    // Not an item of the job: an internal error, nothing decided.
    let stranger = fixtures::other_target_group(scope).target_group_id;
    let mut never = |_: TargetGroupId, _: Option<&FieldingRun>| -> ItemUpdate { panic!("not an item") };
    let err = store
        .apply_bulk_items(&job.key(), held.token, &[stranger], &mut never)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not an item"), "{err}");
}

#[tokio::test]
async fn expiry_is_strict_bounded_and_frees_the_key() {
    let store = common::temp_store().await;
    let scope = fixtures::scope();
    let base = now();
    let at = |s: i64| base.checked_add(TimeDelta::seconds(s)).unwrap();
    let mut keys = Vec::new();
    for (n, finished_at) in [(0, at(1)), (1, at(2)), (2, at(3))] {
        let mut job = fixtures::bulk_job(
            scope,
            &format!("k{n}"),
            BulkAction::Pause,
            &[fixtures::other_target_group(scope).target_group_id],
        );
        job.created_at = at(-100 + n);
        store.create_bulk_job(&job).await.unwrap();
        let held = claim(at(60));
        assert_eq!(store.claim_bulk_job(base, &held).await.unwrap().unwrap().id, job.id);
        assert!(store
            .finish_bulk_job(&job.key(), held.token, BulkJobStatus::Failed, finished_at)
            .await
            .unwrap());
        keys.push(job);
    }
    let processing = fixtures::bulk_job(
        scope,
        "busy",
        BulkAction::Pause,
        &[fixtures::other_target_group(scope).target_group_id],
    );
    store.create_bulk_job(&processing).await.unwrap();

    assert_eq!(store.expire_bulk_jobs(at(3), 0).await.unwrap(), 0);
    // Strictly before: the job finished at 3 stays.
    assert_eq!(store.expire_bulk_jobs(at(3), 1).await.unwrap(), 1, "bounded");
    assert_eq!(store.get_bulk_job(&keys[0].key()).await.unwrap(), None, "oldest first");
    assert!(store.get_bulk_job(&keys[1].key()).await.unwrap().is_some());
    assert_eq!(store.expire_bulk_jobs(at(3), 10).await.unwrap(), 1);
    assert!(store.get_bulk_job(&keys[2].key()).await.unwrap().is_some());
    assert_eq!(
        store.expire_bulk_jobs(at(10_000), 10).await.unwrap(),
        1,
        "never a processing job"
    );
    assert!(store.get_bulk_job(&processing.key()).await.unwrap().is_some());

    // The key is free again, and the items went with their jobs.
    let again = fixtures::bulk_job(
        scope,
        "k0",
        BulkAction::Resume,
        &[fixtures::other_target_group(scope).target_group_id],
    );
    assert_eq!(store.create_bulk_job(&again).await.unwrap(), BulkJobCreated::Created);
    let conn = rusqlite::Connection::open(store.guard.path().join("fielding.db")).unwrap();
    let items: i64 = conn
        .query_row("SELECT COUNT(*) FROM fielding_bulk_job_items", [], |row| row.get(0))
        .unwrap();
    assert_eq!(items, 2, "the processing job's item and the new job's");
}

#[tokio::test]
async fn corrupt_stored_values_are_errors_not_panics() {
    let store = common::temp_store().await;
    let scope = fixtures::scope();
    let conn = rusqlite::Connection::open(store.guard.path().join("fielding.db")).unwrap();
    for (n, damage) in [
        "UPDATE fielding_bulk_jobs SET action = 'explode'",
        "UPDATE fielding_bulk_jobs SET created_by = 'nobody'",
        "UPDATE fielding_bulk_jobs SET idempotency_key = 'has space'",
        "UPDATE fielding_bulk_jobs SET trace_id = ''",
        "UPDATE fielding_bulk_jobs SET created_at_ms = 9999999999999999",
        "UPDATE fielding_bulk_job_items SET outcome = 'Exploded'",
        "UPDATE fielding_bulk_job_items SET target_group_id = 'not-a-ulid'",
    ]
    .into_iter()
    .enumerate()
    {
        let job = fixtures::bulk_job(
            scope,
            &format!("k{n}"),
            BulkAction::Pause,
            &[fixtures::other_target_group(scope).target_group_id],
        );
        store.create_bulk_job(&job).await.unwrap();
        let sql = format!(
            "{damage} WHERE {} = ?1",
            if damage.contains("items") { "job_id" } else { "id" }
        );
        assert_eq!(conn.execute(&sql, [job.id.as_str()]).unwrap(), 1, "{damage}");
        let err = store.get_bulk_job(&job.key()).await.unwrap_err();
        assert!(!err.is_retryable(), "{damage}: {err}");
        assert!(err.to_string().contains("corrupt data"), "{damage}: {err}");
        conn.execute("DELETE FROM fielding_bulk_job_items", []).unwrap();
        conn.execute("DELETE FROM fielding_bulk_jobs", []).unwrap();
    }
}

/// A job that cannot be read back is taken anyway (and its claim
/// answered with the error), so it sits out its lease instead of being the
/// oldest claimable job for every claim of every process, forever, with
/// the jobs behind it waiting.
#[tokio::test]
async fn a_corrupt_job_does_not_block_the_jobs_behind_it() {
    let store = Arc::new(common::temp_store().await);
    let scope = fixtures::scope();
    let conn = rusqlite::Connection::open(store.guard.path().join("fielding.db")).unwrap();
    let older = fielding_core::BulkJob {
        created_at: Timestamp::from_unix_millis(1_000).unwrap(),
        ..fixtures::bulk_job(
            scope,
            "older",
            BulkAction::Pause,
            &[fixtures::other_target_group(scope).target_group_id],
        )
    };
    let newer = fixtures::bulk_job(
        scope,
        "newer",
        BulkAction::Pause,
        &[fixtures::other_target_group(scope).target_group_id],
    );
    store.create_bulk_job(&older).await.unwrap();
    store.create_bulk_job(&newer).await.unwrap();
    conn.execute(
        "UPDATE fielding_bulk_job_items SET outcome = 'Exploded' WHERE job_id = ?1",
        [older.id.as_str()],
    )
    .unwrap();
    let service = FieldingService::new(store.clone());
    let runner = BulkRunner::new(service.clone(), BulkRunnerOptions::default());
    let err = runner.run_until_idle().await.unwrap_err();
    assert!(err.to_string().contains("storage"), "{err}");
    // The corrupt job is held for its lease now: the next claim takes the newer one.
    assert_eq!(runner.run_until_idle().await.unwrap(), 1);
    assert_eq!(
        service.get_bulk_job(&newer.key()).await.unwrap().status,
        fielding_core::BulkJobStatus::Failed,
        "worked to the end (its one target group has no run)"
    );
}

#[tokio::test]
async fn a_half_done_job_survives_closing_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.db");
    let scope = fixtures::scope();
    let store = SqliteStore::open(&path).await.unwrap();
    let runs = seed(&store, scope, &[Status::Live; 6]).await;
    let ids: Vec<_> = runs.iter().map(|run| run.target_group_id).collect();
    let job = fixtures::bulk_job(scope, "resume-me", BulkAction::Pause, &ids);
    store.create_bulk_job(&job).await.unwrap();
    // A runner that dies after two batches: its lease ended already.
    let dying = claim(now());
    store.claim_bulk_job(now(), &dying).await.unwrap().unwrap();
    let mut good = |_: TargetGroupId, run: Option<&FieldingRun>| pause(run.unwrap(), job.created_by);
    store
        .apply_bulk_items(&job.key(), dying.token, &ids[..2], &mut good)
        .await
        .unwrap();
    store
        .apply_bulk_items(&job.key(), dying.token, &ids[2..3], &mut good)
        .await
        .unwrap();
    drop(store);

    // The threads of the dropped store close the file in the background;
    // opening again waits for its write lock like any second writer.
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let half = store.get_bulk_job(&job.key()).await.unwrap().unwrap();
    assert_eq!(
        half.pending().collect::<Vec<_>>(),
        ids[3..].to_vec(),
        "progress persisted"
    );
    let service = FieldingService::new(store.clone());
    let runner = BulkRunner::new(service.clone(), BulkRunnerOptions::default().with_batch_size(2));
    assert_eq!(runner.run_until_idle().await.unwrap(), 1);
    let done = service.get_bulk_job(&job.key()).await.unwrap();
    assert_eq!(done.status, BulkJobStatus::Completed);
    for run in &runs {
        let history = store.changes(&run.key()).await.unwrap();
        assert_eq!(history.len(), 2, "each run changed exactly once");
        assert_eq!(history[1].action, Action::Pause);
        assert_eq!(store.get(&run.key()).await.unwrap().unwrap().status, Status::Paused);
    }
}

#[tokio::test]
async fn a_version_3_database_migrates_to_bulk_jobs_with_its_data_intact() {
    assert_eq!(SCHEMA_VERSION, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.db");
    let scope = fixtures::scope();
    let store = SqliteStore::open(&path).await.unwrap();
    let runs = seed(&store, scope, &[Status::Live]).await;
    store.close().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    common::back_to_version_4(&conn);
    conn.execute_batch(
        "BEGIN; DROP TABLE fielding_bulk_job_items; DROP TABLE fielding_bulk_jobs; \
         DELETE FROM fielding_schema_migrations WHERE version >= 4; COMMIT;",
    )
    .unwrap();
    drop(conn);

    let store = SqliteStore::open_with(&path, SqliteOptions::default().with_migrate(false))
        .await
        .unwrap();
    let job = fixtures::bulk_job(scope, "after", BulkAction::Pause, &[runs[0].target_group_id]);
    let err = store.create_bulk_job(&job).await.unwrap_err();
    assert!(err.to_string().contains("version 3"), "{err}");
    let report = store.migrate().await.unwrap();
    assert_eq!((report.from, report.to), (3, SCHEMA_VERSION));
    assert_eq!(store.get(&runs[0].key()).await.unwrap(), Some(runs[0].clone()));
    assert_eq!(store.changes(&runs[0].key()).await.unwrap().len(), 1);
    assert_eq!(store.create_bulk_job(&job).await.unwrap(), BulkJobCreated::Created);
    assert_eq!(store.get_bulk_job(&job.key()).await.unwrap(), Some(job));
    store.close().await;
}

// ---- Two processes on one file ----

/// How many jobs and how many runs each; every run is in exactly one job.
const JOBS: usize = 30;
const RUNS_PER_JOB: usize = 10;

fn say(what: &str, n: u64) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "FIELDING {what} {n}").unwrap();
    out.flush().unwrap();
}

/// How long a child may take, and how long the parent waits for a line.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);

/// The child side: opens the file, waits for the `go` file, then runs
/// `run_until_idle` (leases of `FIELDING_BULK_LEASE_MS`) until no job is
/// processing, and reports how many jobs it finished.
#[test]
fn bulk_child_process() {
    if std::env::var(CHILD).is_err() {
        return;
    }
    let path = std::env::var("FIELDING_BULK_PATH").expect("FIELDING_BULK_PATH");
    let lease_ms: u64 = std::env::var("FIELDING_BULK_LEASE_MS")
        .expect("FIELDING_BULK_LEASE_MS")
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(SqliteStore::open(&path).await.expect("open"));
        say("OPEN", 0);
        // Bounded waits: a child whose parent died (or whose work never
        // ends) exits with a failure instead of spinning forever.
        let deadline = tokio::time::Instant::now() + CHILD_DEADLINE;
        let go = Path::new(&path).with_extension("go");
        while !go.exists() {
            assert!(tokio::time::Instant::now() < deadline, "child: no go file in time");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let service = FieldingService::new(store.clone());
        let options = BulkRunnerOptions::default()
            .with_batch_size(4)
            .with_lease(Duration::from_millis(lease_ms));
        let runner = BulkRunner::new(service, options);
        let mut finished = 0;
        loop {
            match runner.run_until_idle().await {
                Ok(n) => finished += n,
                // A busy file past the timeout: the job is resumed once its
                // lease ends, by either process.
                Err(err) => eprintln!("child: run_until_idle: {err}"),
            }
            if processing(Path::new(&path)) == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "child: jobs still processing at the deadline"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        say("FINISHED", finished as u64);
        drop(runner);
        Arc::try_unwrap(store).expect("the only handle").close().await;
    });
}

fn processing(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM fielding_bulk_jobs WHERE status = 'Processing'",
        [],
        |row| row.get(0),
    )
    .unwrap()
}

fn spawn_child(path: &Path, lease_ms: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "bulk_child_process", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("FIELDING_BULK_PATH", path)
        .env("FIELDING_BULK_LEASE_MS", lease_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the test binary as a child")
}

/// The children of a test, killed if the test ends early (a failed
/// assertion, a timeout), each with its stdout read on a thread of its own.
struct Children {
    children: Vec<Child>,
    lines: Vec<std::sync::mpsc::Receiver<String>>,
}

impl Children {
    fn spawn(path: &Path, lease_ms: u64, count: usize) -> Self {
        let mut children = Vec::new();
        let mut lines = Vec::new();
        for _ in 0..count {
            let mut child = spawn_child(path, lease_ms);
            let stdout = child.stdout.take().expect("a piped stdout");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            children.push(child);
            lines.push(rx);
        }
        Self { children, lines }
    }

    /// Waits (at most [`CHILD_DEADLINE`]) for child `n`'s `FIELDING <what> <k>`
    /// line and answers `k`.
    fn wait_for(&self, n: usize, what: &str) -> u64 {
        let deadline = std::time::Instant::now() + CHILD_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = match self.lines[n].recv_timeout(left) {
                Ok(line) => line,
                Err(err) => panic!("child {n} did not report {what}: {err}"),
            };
            // The test harness may print `test bulk_child_process ... ` first.
            let Some((_, report)) = line.split_once("FIELDING ") else {
                continue;
            };
            let mut parts = report.split_whitespace();
            if parts.next() == Some(what) {
                return parts.next().and_then(|k| k.parse().ok()).expect("a count");
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Two processes work the same jobs on one file; every run must be
/// changed exactly once and every job finished exactly once.
async fn two_processes_work_the_jobs(lease_ms: u64) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let scope = fixtures::scope();
    let store = SqliteStore::open(&path).await.unwrap();
    let runs = seed(&store, scope, &[Status::Live; JOBS * RUNS_PER_JOB]).await;
    let mut jobs = Vec::new();
    for (n, chunk) in runs.chunks(RUNS_PER_JOB).enumerate() {
        let ids: Vec<_> = chunk.iter().map(|run| run.target_group_id).collect();
        let job = fixtures::bulk_job(scope, &format!("job-{n}"), BulkAction::Pause, &ids);
        store.create_bulk_job(&job).await.unwrap();
        jobs.push(job);
    }
    store.close().await;

    let mut children = Children::spawn(&path, lease_ms, 2);
    for n in 0..2 {
        children.wait_for(n, "OPEN");
    }
    std::fs::write(path.with_extension("go"), b"").unwrap();
    // Jobs each child finished, as far as it knows: a call that ends in an
    // error (a busy file past its timeout) does not report the jobs it
    // finished before, so the store, not this count, is what is checked.
    let finished: Vec<u64> = (0..2).map(|n| children.wait_for(n, "FINISHED")).collect();
    for child in &mut children.children {
        let status = child.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
    }
    eprintln!("jobs finished per process: {finished:?}");
    assert!(
        finished.iter().sum::<u64>() <= JOBS as u64,
        "a job finished twice: {finished:?}"
    );

    let store = SqliteStore::open(&path).await.unwrap();
    for job in &jobs {
        let done = store.get_bulk_job(&job.key()).await.unwrap().unwrap();
        assert_eq!(done.status, BulkJobStatus::Completed);
        assert!(done
            .items
            .iter()
            .all(|item| item.outcome == Some(BulkItemOutcome::Updated)));
    }
    for run in &runs {
        let history = store.changes(&run.key()).await.unwrap();
        assert_eq!(history.len(), 2, "run {} changed exactly once", run.id);
        assert_eq!(history[1].action, Action::Pause);
    }
    store.close().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let pauses: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM change_records WHERE action = ?1",
            [Action::Pause.as_str()],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(pauses, (JOBS * RUNS_PER_JOB) as i64);
    finished
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_never_work_one_job_together() {
    two_processes_work_the_jobs(30_000).await;
}

/// Leases of a few milliseconds, a stress test: jobs may change hands
/// mid-way between the processes (how often depends on the scheduler; a
/// run where one process does most of the work proves little about
/// takeovers, which `keys_claims_leases_and_tokens` and the conformance
/// kit's fencing cases test directly), and whatever the interleaving, each
/// item is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_taking_jobs_over_from_each_other_apply_each_item_once() {
    two_processes_work_the_jobs(3).await;
}

#[tokio::test]
async fn a_batch_of_100_is_one_write_transaction_and_a_job_of_10_000_is_one_too() {
    let store = common::temp_store().await;
    let scope = fixtures::scope();
    let runs = seed(&store, scope, &[Status::Live; 100]).await;
    let mut ids: Vec<_> = runs.iter().map(|run| run.target_group_id).collect();
    // The rest of a job of the most target groups allowed, without runs.
    while ids.len() < BulkJob::MAX_TARGET_GROUPS {
        ids.push(fixtures::other_target_group(scope).target_group_id);
    }
    let job = fixtures::bulk_job(scope, "big", BulkAction::Pause, &ids);
    let before = store.store.write_stats();
    assert_eq!(store.create_bulk_job(&job).await.unwrap(), BulkJobCreated::Created);
    let after = store.store.write_stats();
    assert_eq!(
        (after.writes - before.writes, after.transactions - before.transactions),
        (1, 1)
    );
    let held = claim(later(60));
    let claimed = store.claim_bulk_job(now(), &held).await.unwrap().unwrap();
    assert_eq!(claimed.items.len(), BulkJob::MAX_TARGET_GROUPS);

    let before = store.store.write_stats();
    let mut good = |_: TargetGroupId, run: Option<&FieldingRun>| pause(run.unwrap(), job.created_by);
    let outcomes = store
        .apply_bulk_items(&job.key(), held.token, &ids[..100], &mut good)
        .await
        .unwrap();
    let after = store.store.write_stats();
    assert_eq!(outcomes.len(), 100);
    assert_eq!(
        (after.writes - before.writes, after.transactions - before.transactions),
        (1, 1),
        "one write, one transaction, for the whole batch"
    );
    for run in &runs {
        assert_eq!(store.changes(&run.key()).await.unwrap().len(), 2);
    }
}
