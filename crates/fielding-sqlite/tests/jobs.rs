//! Creation jobs beyond the conformance kit: persistence across reopening,
//! migrating a version-1 database, strict decoding of stored rows, and
//! racing creations under group commit.

mod common;

use std::sync::Arc;

use fielding_core::{
    Action, ChangeRecord, FieldingRunJob, FieldingStore, IdempotencyKey, JobCreated, JobFailure, JobFailureCode,
    JobOutcome, JobState, JobTraceId, StoreError, Timestamp,
};
use fielding_sqlite::{rusqlite, OpenError, SqliteOptions, SqliteStore, SCHEMA_VERSION};
use fielding_testkit::fixtures::{self, job, launch, schedule};

fn assert_permanent(err: &StoreError) {
    match err {
        StoreError::Backend { retryable, .. } => assert!(!retryable, "{err}"),
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn jobs_survive_closing_and_reopening_with_every_field_equal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.db");
    let store = SqliteStore::open(&path).await.unwrap();

    let mut scheduled = job(fixtures::scope(), "key-1", schedule());
    scheduled.trace_id = JobTraceId::parse("0af7651916cd43dd8448eb211c80319c");
    scheduled.created_at = Timestamp::MAX;
    let launched = job(fixtures::scope(), "key-2", launch());
    let failed = job(fixtures::scope(), "key-3", schedule());
    let mut extreme = job(fixtures::scope(), &"~".repeat(IdempotencyKey::MAX_LEN), launch());
    extreme.created_at = Timestamp::MIN;
    for j in [&scheduled, &launched, &failed, &extreme] {
        assert_eq!(store.create_job(j).await.unwrap(), JobCreated::Created);
    }
    let completed = store
        .finish_job(&launched.key(), &JobOutcome::Completed, launched.created_at)
        .await
        .unwrap()
        .expect("the launch job");
    let failure = JobOutcome::Failed(JobFailure {
        code: JobFailureCode::TargetGroupInvalidState,
        description: "The target group already has a fielding run; ünïcode and \"quotes\" survive.".into(),
    });
    let failed = store
        .finish_job(&failed.key(), &failure, failed.created_at)
        .await
        .unwrap()
        .expect("the failed job");
    assert_eq!(failed.state, JobState::Finished(failure));
    store.close().await;

    let store = SqliteStore::open(&path).await.unwrap();
    for expected in [&scheduled, &completed, &failed, &extreme] {
        assert_eq!(store.get_job(&expected.key()).await.unwrap().as_ref(), Some(expected));
    }
    assert_eq!(completed.created_fielding_run_id(), Some(launched.fielding_run_id));
    // The key is still taken after reopening.
    let replay = job(scheduled.scope, "key-1", launch());
    assert_eq!(
        store.create_job(&replay).await.unwrap(),
        JobCreated::Existing(scheduled.clone())
    );
    store.close().await;
}

/// A version-1 file: what a release before jobs left behind (migration 1
/// applied and recorded, no `fielding_run_jobs`), with a run in it.
async fn version_1_database(path: &std::path::Path) -> (fielding_core::FieldingRun, ChangeRecord) {
    let store = SqliteStore::open(path).await.unwrap();
    let run = fixtures::run().with_version(7).build();
    let record = ChangeRecord::created(&run, Action::Schedule);
    store.insert(&run, &record).await.unwrap();
    store.close().await;
    let conn = rusqlite::Connection::open(path).unwrap();
    common::back_to_version_4(&conn);
    conn.execute_batch(
        "BEGIN; DROP TABLE fielding_run_jobs; DROP TABLE fielding_bulk_job_items; DROP TABLE fielding_bulk_jobs; \
         DELETE FROM fielding_schema_migrations WHERE version >= 2; COMMIT;",
    )
    .unwrap();
    (run, record)
}

#[tokio::test]
async fn a_version_1_database_migrates_to_the_current_version_with_its_runs_intact() {
    assert_eq!(SCHEMA_VERSION, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.db");
    let (run, record) = version_1_database(&path).await;

    // Read-only, it cannot be migrated: opening is refused.
    let err = SqliteStore::open_with(&path, SqliteOptions::default().with_read_only(true))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::SchemaOutdated {
                found: 1,
                needed: SCHEMA_VERSION,
                ..
            }
        ),
        "{err}"
    );
    // Without migrating on open, the store refuses to work on version 1.
    let store = SqliteStore::open_with(&path, SqliteOptions::default().with_migrate(false))
        .await
        .unwrap();
    let err = store.get(&run.key()).await.unwrap_err();
    assert!(err.to_string().contains("version 1"), "{err}");
    let report = store.migrate().await.unwrap();
    assert_eq!((report.from, report.to, report.applied()), (1, 5, 4));
    assert_eq!(report.applied_versions().collect::<Vec<_>>(), [2, 3, 4, 5]);
    assert_eq!(store.migrate().await.unwrap().applied(), 0);

    assert_eq!(store.get(&run.key()).await.unwrap(), Some(run.clone()));
    assert_eq!(store.changes(&run.key()).await.unwrap(), vec![record]);
    let j = job(run.scope(), "after-migration", launch());
    assert_eq!(store.create_job(&j).await.unwrap(), JobCreated::Created);
    assert_eq!(store.get_job(&j.key()).await.unwrap(), Some(j));
    store.close().await;

    let conn = rusqlite::Connection::open(&path).unwrap();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM fielding_schema_migrations ORDER BY version")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn opening_a_version_1_database_migrates_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.db");
    let (run, _) = version_1_database(&path).await;
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get(&run.key()).await.unwrap(), Some(run.clone()));
    let j = job(run.scope(), "k", schedule());
    assert_eq!(store.create_job(&j).await.unwrap(), JobCreated::Created);
    store.close().await;
}

#[tokio::test]
async fn rows_that_break_the_jobs_invariants_are_refused_by_the_schema() {
    let store = common::temp_store().await;
    let j = job(fixtures::scope(), "k", schedule());
    store.create_job(&j).await.unwrap();
    let conn = rusqlite::Connection::open(store.guard.path().join("fielding.db")).unwrap();
    for change in [
        "UPDATE fielding_run_jobs SET status = 'Done'",
        "UPDATE fielding_run_jobs SET status = 'Failed'",
        "UPDATE fielding_run_jobs SET failure_code = 'InvalidFieldingDates'",
        "UPDATE fielding_run_jobs SET status = 'Failed', failure_code = 'InvalidFieldingDates'",
        "UPDATE fielding_run_jobs SET status = 'Completed', failure_code = 'InvalidFieldingDates', \
         failure_description = 'x'",
        "UPDATE fielding_run_jobs SET start_ms = NULL",
        "UPDATE fielding_run_jobs SET kind = 'launch-from-draft'",
        "UPDATE fielding_run_jobs SET start_ms = 'soon'",
    ] {
        let err = conn.execute(change, []).unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation),
            "{change}: {err}"
        );
    }
    assert_eq!(store.get_job(&j.key()).await.unwrap(), Some(j));
}

#[tokio::test]
async fn stored_values_that_do_not_parse_are_permanent_backend_errors() {
    let store = common::temp_store().await;
    let conn = rusqlite::Connection::open(store.guard.path().join("fielding.db")).unwrap();
    // (the damage, whether the row is still at its id and scope)
    for (damage, at_its_id) in [
        ("kind = 'relaunch-from-draft'", true),
        ("idempotency_key = 'has space'", true),
        ("fielding_run_id = 'x'", true),
        ("created_by = 'nobody'", true),
        ("created_at_ms = 9999999999999999", true),
        ("end_ms = -99999999999999", true),
        ("trace_id = '0AF7651916CD43DD8448EB211C80319C'", true),
        ("trace_id = ''", true),
        (
            "status = 'Failed', failure_code = 'NoSuchCode', failure_description = 'x'",
            true,
        ),
        ("id = 'not-a-ulid'", false),
        ("project_id = 'not-a-ulid'", false),
    ] {
        let j = job(fixtures::scope(), "k", launch());
        store.create_job(&j).await.unwrap();
        let sql = format!("UPDATE fielding_run_jobs SET {damage} WHERE id = ?1");
        assert_eq!(conn.execute(&sql, [j.id.as_str()]).unwrap(), 1, "{damage}");
        if at_its_id {
            let err = store.get_job(&j.key()).await.unwrap_err();
            assert_permanent(&err);
            assert!(err.to_string().contains("get_job"), "{damage}: {err}");
            // finish_job reads the row back: the same error, not a panic.
            let err = store
                .finish_job(&j.key(), &JobOutcome::Completed, j.created_at)
                .await
                .unwrap_err();
            assert_permanent(&err);
        }
        // A replay under the key reads the stored job: an error too.
        if damage.starts_with("idempotency_key") {
            // The damage moved the job off the key.
            conn.execute("DELETE FROM fielding_run_jobs", []).unwrap();
            continue;
        }
        let err = store.create_job(&job(j.scope, "k", launch())).await.unwrap_err();
        assert_permanent(&err);
        assert!(err.to_string().contains("create_job"), "{damage}: {err}");
        conn.execute("DELETE FROM fielding_run_jobs", []).unwrap();
    }
}

#[tokio::test]
async fn a_job_id_taken_under_another_key_is_a_permanent_backend_error() {
    let store = common::temp_store().await;
    let first = job(fixtures::scope(), "first", launch());
    store.create_job(&first).await.unwrap();
    let twin = FieldingRunJob {
        idempotency_key: IdempotencyKey::parse("second").unwrap(),
        ..job(fixtures::scope(), "x", schedule())
    };
    let twin = FieldingRunJob { id: first.id, ..twin };
    let err = store.create_job(&twin).await.unwrap_err();
    assert_permanent(&err);
    assert!(err.to_string().contains("already taken"), "{err}");
    // The same job again (same id, same key): the existing one.
    assert_eq!(
        store.create_job(&first).await.unwrap(),
        JobCreated::Existing(first.clone())
    );
    assert_eq!(store.get_job(&twin.key()).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_creations_with_one_key_create_exactly_one_job_under_group_commit() {
    for options in [
        SqliteOptions::default(),
        SqliteOptions::default().with_group_commit(false),
    ] {
        let store = Arc::new(common::temp_store_with(options).await);
        let account = fixtures::scope().account_id;
        let candidates: Vec<FieldingRunJob> = (0..24)
            .map(|i| {
                let mut scope = fixtures::scope();
                scope.account_id = account;
                job(scope, "same-key", if i % 2 == 0 { launch() } else { schedule() })
            })
            .collect();
        // The same key in another account is another job.
        let elsewhere = job(fixtures::scope(), "same-key", launch());
        assert_ne!(elsewhere.scope.account_id, account);
        let tasks: Vec<_> = candidates
            .iter()
            .cloned()
            .chain([elsewhere.clone()])
            .map(|j| {
                let store = store.clone();
                tokio::spawn(async move { (store.create_job(&j).await, j) })
            })
            .collect();
        let mut winners = Vec::new();
        let mut existing = Vec::new();
        for task in tasks {
            let (outcome, j) = task.await.unwrap();
            match outcome.unwrap() {
                JobCreated::Created if j.id == elsewhere.id => {}
                JobCreated::Created => winners.push(j),
                JobCreated::Existing(found) => existing.push(found),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one creation wins");
        assert_eq!(existing.len(), candidates.len() - 1);
        assert!(existing.iter().all(|found| *found == winners[0]));
        let winner = &winners[0];
        assert_eq!(store.get_job(&winner.key()).await.unwrap().as_ref(), Some(winner));
        assert_eq!(store.get_job(&elsewhere.key()).await.unwrap(), Some(elsewhere));
        for loser in candidates.iter().filter(|c| c.id != winner.id) {
            assert_eq!(store.get_job(&loser.key()).await.unwrap(), None);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_outcomes_keep_the_first_and_everyone_sees_it() {
    let store = Arc::new(common::temp_store().await);
    let j = job(fixtures::scope(), "k", schedule());
    store.create_job(&j).await.unwrap();
    let outcomes: Vec<JobOutcome> = (0..16)
        .map(|i| {
            if i % 2 == 0 {
                JobOutcome::Completed
            } else {
                JobOutcome::Failed(JobFailure {
                    code: JobFailureCode::InvalidFieldingDates,
                    description: format!("attempt {i}"),
                })
            }
        })
        .collect();
    let tasks: Vec<_> = outcomes
        .into_iter()
        .map(|outcome| {
            let store = store.clone();
            let (scope, id) = (j.scope, j.id);
            tokio::spawn(async move { store.finish_job(&scope.job(id), &outcome, Timestamp::UNIX_EPOCH).await })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap().unwrap().expect("the job"));
    }
    let stored = store.get_job(&j.key()).await.unwrap().expect("the job");
    assert_ne!(stored.state, JobState::Processing);
    assert!(seen.iter().all(|s| *s == stored), "every caller sees the first outcome");
    // Another scope does not find it, and cannot finish it.
    let other = fixtures::scope();
    assert_eq!(
        store
            .finish_job(&other.job(j.id), &JobOutcome::Completed, j.created_at)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.get_job(&other.job(j.id)).await.unwrap(), None);
}

#[tokio::test]
async fn a_read_only_database_reads_jobs_and_refuses_to_write_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let j = job(fixtures::scope(), "k", schedule());
    store.create_job(&j).await.unwrap();
    store.close().await;

    let store = SqliteStore::open_with(&path, SqliteOptions::default().with_read_only(true))
        .await
        .unwrap();
    assert_eq!(store.get_job(&j.key()).await.unwrap(), Some(j.clone()));
    assert_permanent(
        &store
            .create_job(&job(fixtures::scope(), "k2", launch()))
            .await
            .unwrap_err(),
    );
    assert_permanent(
        &store
            .finish_job(&j.key(), &JobOutcome::Completed, j.created_at)
            .await
            .unwrap_err(),
    );
    assert_permanent(&store.expire_jobs(Timestamp::MAX, 10).await.unwrap_err());
    assert_eq!(store.get_job(&j.key()).await.unwrap(), Some(j));
    store.close().await;
}

/// `at` plus `millis`.
fn plus(at: Timestamp, millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(at.unix_millis() + millis).expect("in range")
}

#[tokio::test]
async fn expiry_is_durable_and_frees_keys_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let old = job(fixtures::scope(), "old", launch());
    let new = job(fixtures::scope(), "new", launch());
    for j in [&old, &new] {
        store.create_job(j).await.unwrap();
    }
    store
        .finish_job(&old.key(), &JobOutcome::Completed, old.created_at)
        .await
        .unwrap();
    store
        .finish_job(&new.key(), &JobOutcome::Completed, plus(old.created_at, 60_000))
        .await
        .unwrap();
    assert_eq!(store.expire_jobs(plus(old.created_at, 1), 100).await.unwrap(), 1);
    store.close().await;

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get_job(&old.key()).await.unwrap(), None);
    assert!(store.get_job(&new.key()).await.unwrap().is_some());
    let reuse = job(old.scope, "old", schedule());
    assert_eq!(store.create_job(&reuse).await.unwrap(), JobCreated::Created);
    store.close().await;
}

/// Expiry as a write among others in one group commit: job creations,
/// finishes and expiries queued together each get their own answer, and
/// the removals add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_shares_group_commits_with_other_job_writes() {
    let store = Arc::new(common::temp_store().await);
    let base = Timestamp::from_unix_millis(1_000_000).unwrap();
    let mut old = Vec::new();
    for i in 0..60 {
        let mut j = job(fixtures::scope(), &format!("old-{i}"), launch());
        j.created_at = base;
        store.create_job(&j).await.unwrap();
        store
            .finish_job(&j.key(), &JobOutcome::Completed, plus(base, i))
            .await
            .unwrap();
        old.push(j);
    }
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let fresh = job(fixtures::scope(), &format!("fresh-{i}"), launch());
            store.create_job(&fresh).await.unwrap();
            store
                .finish_job(&fresh.key(), &JobOutcome::Completed, fresh.created_at)
                .await
                .unwrap();
            store.expire_jobs(plus(base, 60), 5).await.unwrap()
        }));
    }
    let mut removed = 0;
    for task in tasks {
        let answer = task.await.unwrap();
        assert!(answer <= 5, "{answer}");
        removed += answer;
    }
    // The fresh jobs finished at the fixtures' "now", far after the cutoff.
    removed += store.expire_jobs(plus(base, 60), 1_000).await.unwrap();
    assert_eq!(removed, 60);
    for j in &old {
        assert_eq!(store.get_job(&j.key()).await.unwrap(), None);
    }
}
