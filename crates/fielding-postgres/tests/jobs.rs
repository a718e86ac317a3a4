//! Creation jobs on a real server, beyond the conformance kit: exact round
//! trips through a second pool, racing creations and outcomes across
//! pools (instances), the table's constraints, and strict decoding.

mod common;

use std::sync::Arc;

use fielding_core::{
    FieldingRunJob, FieldingStore, IdempotencyKey, JobCreated, JobFailure, JobFailureCode, JobOutcome, JobState,
    JobTraceId, StoreError, Timestamp,
};
use fielding_postgres::sqlx::postgres::PgConnection;
use fielding_postgres::sqlx::{self, Connection};
use fielding_testkit::fixtures::{self, job, launch, schedule};

fn assert_permanent(err: &StoreError) {
    match err {
        StoreError::Backend { retryable, .. } => assert!(!retryable, "{err}"),
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_round_trip_exactly_through_another_pool() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let mut scheduled = job(fixtures::scope(), "key-1", schedule());
    scheduled.trace_id = JobTraceId::parse("0af7651916cd43dd8448eb211c80319c");
    scheduled.created_at = Timestamp::MAX;
    let launched = job(fixtures::scope(), "key-2", launch());
    let failed = job(fixtures::scope(), "key-3", schedule());
    let mut extreme = job(fixtures::scope(), &"~".repeat(IdempotencyKey::MAX_LEN), launch());
    extreme.created_at = Timestamp::MIN;
    for j in [&scheduled, &launched, &failed, &extreme] {
        assert_eq!(test.create_job(j).await.expect("create"), JobCreated::Created);
    }
    let completed = test
        .finish_job(&launched.key(), &JobOutcome::Completed, launched.created_at)
        .await
        .expect("finish")
        .expect("the launch job");
    let failure = JobOutcome::Failed(JobFailure {
        code: JobFailureCode::InvalidFieldingDates,
        description: "ünïcode, \"quotes\" and 'apostrophes' survive".into(),
    });
    let failed = test
        .finish_job(&failed.key(), &failure, failed.created_at)
        .await
        .expect("finish")
        .expect("the failed job");
    assert_eq!(failed.state, JobState::Finished(failure));

    let other = common::connect_store(&test.guard.url, common::schema_of(&test), "fielding_jobs_other", 2).await;
    for expected in [&scheduled, &completed, &failed, &extreme] {
        assert_eq!(
            other.get_job(&expected.key()).await.expect("get").as_ref(),
            Some(expected)
        );
    }
    let replay = job(scheduled.scope, "key-1", launch());
    assert_eq!(
        other.create_job(&replay).await.expect("replay"),
        JobCreated::Existing(scheduled.clone())
    );
    // Another scope, or another account with the same key.
    assert_eq!(
        other.get_job(&fixtures::scope().job(scheduled.id)).await.expect("get"),
        None
    );
    let elsewhere = job(fixtures::scope(), "key-1", launch());
    assert_eq!(other.create_job(&elsewhere).await.expect("create"), JobCreated::Created);
}

/// `count` more stores on the test's schema, each with a pool of its own
/// (as separate server instances have), named `{name}_{i}`.
async fn instances(test: &common::TestStore, count: usize, name: &str) -> Vec<Arc<fielding_postgres::PgStore>> {
    let schema = common::schema_of(test).to_string();
    let mut out = Vec::new();
    for i in 0..count {
        out.push(Arc::new(
            common::connect_store(&test.guard.url, &schema, &format!("{name}_{i}"), 4).await,
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creations_across_instances_create_exactly_one_job() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let instances = instances(&test, 3, "fielding_jobs_race").await;
    for round in 0..5 {
        let account = fixtures::scope().account_id;
        let key = format!("race-{round}");
        let candidates: Vec<FieldingRunJob> = (0..12)
            .map(|i| {
                let mut scope = fixtures::scope();
                scope.account_id = account;
                job(scope, &key, if i % 2 == 0 { launch() } else { schedule() })
            })
            .collect();
        let tasks: Vec<_> = candidates
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, j)| {
                let store = instances[i % instances.len()].clone();
                tokio::spawn(async move { (store.create_job(&j).await, j) })
            })
            .collect();
        let (mut winners, mut existing) = (Vec::new(), Vec::new());
        for task in tasks {
            let (outcome, j) = task.await.expect("task");
            match outcome.expect("create_job") {
                JobCreated::Created => winners.push(j),
                JobCreated::Existing(found) => existing.push(found),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one creation wins");
        assert_eq!(existing.len(), candidates.len() - 1);
        assert!(existing.iter().all(|found| *found == winners[0]));
        for candidate in &candidates {
            let stored = test.get_job(&candidate.key()).await.expect("get");
            assert_eq!(stored.is_some(), candidate.id == winners[0].id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_outcomes_across_instances_keep_the_first() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let instances = instances(&test, 2, "fielding_jobs_finish").await;
    for _ in 0..5 {
        let j = job(fixtures::scope(), "k", schedule());
        test.create_job(&j).await.expect("create");
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = instances[i % instances.len()].clone();
                let outcome = if i % 2 == 0 {
                    JobOutcome::Completed
                } else {
                    JobOutcome::Failed(JobFailure {
                        code: JobFailureCode::TargetGroupInvalidState,
                        description: format!("attempt {i}"),
                    })
                };
                let (scope, id) = (j.scope, j.id);
                tokio::spawn(async move { store.finish_job(&scope.job(id), &outcome, Timestamp::UNIX_EPOCH).await })
            })
            .collect();
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(task.await.expect("task").expect("finish_job").expect("the job"));
        }
        let stored = test.get_job(&j.key()).await.expect("get").expect("the job");
        assert_ne!(stored.state, JobState::Processing);
        assert!(seen.iter().all(|s| *s == stored), "every caller sees the first outcome");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_id_taken_under_another_key_is_a_permanent_backend_error() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let first = job(fixtures::scope(), "first", launch());
    test.create_job(&first).await.expect("create");
    let twin = FieldingRunJob {
        id: first.id,
        ..job(fixtures::scope(), "second", schedule())
    };
    let err = test.create_job(&twin).await.unwrap_err();
    assert_permanent(&err);
    assert!(err.to_string().contains("already taken"), "{err}");
    assert_eq!(
        test.create_job(&first).await.expect("replay"),
        JobCreated::Existing(first.clone())
    );
    assert_eq!(test.get_job(&twin.key()).await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_refuses_rows_that_break_the_invariants() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let j = job(fixtures::scope(), "k", schedule());
    test.create_job(&j).await.expect("create");
    let mut conn = PgConnection::connect(&test.guard.url).await.expect("connect");
    let table = format!("\"{}\".fielding_run_jobs", common::schema_of(&test));
    for change in [
        "status = 'Done'",
        "status = 'Failed'",
        "failure_code = 'InvalidFieldingDates'",
        "status = 'Failed', failure_code = 'InvalidFieldingDates'",
        "status = 'Completed', failure_code = 'InvalidFieldingDates', failure_description = 'x'",
        "start_fielding_at = NULL",
        "kind = 'launch-from-draft'",
        "account_id = 0",
    ] {
        let err = sqlx::query(&format!("UPDATE {table} SET {change}"))
            .execute(&mut conn)
            .await
            .expect_err(change);
        let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("23514"), "{change}: {err}");
    }
    assert_eq!(test.get_job(&j.key()).await.expect("get"), Some(j));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_values_that_do_not_parse_are_permanent_backend_errors() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let mut conn = PgConnection::connect(&test.guard.url).await.expect("connect");
    let table = format!("\"{}\".fielding_run_jobs", common::schema_of(&test));
    // (the damage, whether the row is still at its id and scope, and under its key)
    for (damage, at_its_id, at_its_key) in [
        ("kind = 'relaunch-from-draft'", true, true),
        ("idempotency_key = 'has space'", true, false),
        ("fielding_run_id = 'x'", true, true),
        ("created_at = '10000-01-01T00:00:00Z'", true, true),
        ("end_fielding_at = '0200-01-01T00:00:00 BC'", true, true),
        ("trace_id = '0AF7651916CD43DD8448EB211C80319C'", true, true),
        ("trace_id = ''", true, true),
        (
            "status = 'Failed', failure_code = 'NoSuchCode', failure_description = 'x', finished_at = created_at",
            true,
            true,
        ),
        ("id = 'not-a-ulid'", false, true),
        ("project_id = 'not-a-ulid'", false, true),
    ] {
        let j = job(fixtures::scope(), "k", launch());
        test.create_job(&j).await.expect("create");
        let done = sqlx::query(&format!("UPDATE {table} SET {damage} WHERE id = $1"))
            .bind(j.id.as_str())
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{damage}: {e}"));
        assert_eq!(done.rows_affected(), 1, "{damage}");
        if at_its_id {
            assert_permanent(&test.get_job(&j.key()).await.unwrap_err());
            let err = test
                .finish_job(&j.key(), &JobOutcome::Completed, j.created_at)
                .await
                .unwrap_err();
            assert_permanent(&err);
        }
        if at_its_key {
            let err = test.create_job(&job(j.scope, "k", launch())).await.unwrap_err();
            assert_permanent(&err);
        }
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&mut conn)
            .await
            .expect("clean up");
    }
}

/// `at` plus `millis`.
fn plus(at: Timestamp, millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(at.unix_millis() + millis).expect("in range")
}

/// Sweepers in several instances at once (`FOR UPDATE SKIP LOCKED`) share
/// the work: every old job is removed exactly once, the answers add up,
/// nobody waits out another's batch or fails, and creations reusing the
/// freed keys meanwhile each get a new job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sweepers_across_instances_remove_each_job_once() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let instances = instances(&test, 3, "fielding_jobs_expiry").await;
    let base = Timestamp::from_unix_millis(1_000_000).expect("in range");
    let mut old = Vec::new();
    for i in 0..90 {
        let mut j = job(fixtures::scope(), &format!("old-{i}"), launch());
        j.created_at = base;
        test.create_job(&j).await.expect("create");
        test.finish_job(&j.key(), &JobOutcome::Completed, plus(base, i))
            .await
            .expect("finish");
        old.push(j);
    }
    let sweepers: Vec<_> = instances
        .iter()
        .cloned()
        .map(|store| {
            tokio::spawn(async move {
                let mut removed = 0;
                loop {
                    let batch = store.expire_jobs(plus(base, 1_000), 7).await.expect("expire_jobs");
                    assert!(batch <= 7, "{batch}");
                    removed += batch;
                    if batch < 7 {
                        return removed;
                    }
                }
            })
        })
        .collect();
    let reusers: Vec<_> = old
        .iter()
        .step_by(10)
        .map(|gone| {
            let store = instances[0].clone();
            let scope = gone.scope;
            let key = gone.idempotency_key.as_str().to_owned();
            tokio::spawn(async move {
                // Until its old job is gone, the key answers that job.
                loop {
                    let fresh = job(scope, &key, schedule());
                    match store.create_job(&fresh).await.expect("create_job") {
                        JobCreated::Created => return fresh,
                        JobCreated::Existing(_) => tokio::task::yield_now().await,
                    }
                }
            })
        })
        .collect();
    let mut removed = 0;
    for sweeper in sweepers {
        removed += sweeper.await.expect("sweeper");
    }
    assert_eq!(removed, old.len(), "each old job removed exactly once");
    for j in &old {
        assert_eq!(test.get_job(&j.key()).await.expect("get"), None);
    }
    for reuser in reusers {
        let fresh = reuser.await.expect("reuser");
        assert_eq!(test.get_job(&fresh.key()).await.expect("get"), Some(fresh));
    }
}

/// A schema at version 2 (jobs without a finish time) gets migration 3:
/// jobs finished before it count as finished when created, processing
/// jobs have no finish time, and the CHECK holds the two together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_3_dates_jobs_finished_before_it_by_their_creation() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let schema = common::schema_of(&test).to_string();
    let done = job(fixtures::scope(), "done", launch());
    let busy = job(fixtures::scope(), "busy", launch());
    for j in [&done, &busy] {
        test.create_job(j).await.expect("create");
    }
    test.finish_job(&done.key(), &JobOutcome::Completed, plus(done.created_at, 5_000))
        .await
        .expect("finish");
    let mut conn = PgConnection::connect(&test.guard.url).await.expect("connect");
    let table = format!("\"{schema}\".fielding_run_jobs");
    sqlx::query(&format!("ALTER TABLE {table} DROP COLUMN finished_at"))
        .execute(&mut conn)
        .await
        .expect("back to version 2's table");
    sqlx::query(&format!(
        "DROP TABLE \"{schema}\".fielding_bulk_job_items, \"{schema}\".fielding_bulk_jobs"
    ))
    .execute(&mut conn)
    .await
    .expect("without migration 4's tables");
    common::undo_migration_5(&mut conn, &schema).await;
    sqlx::query(&format!(
        "DELETE FROM \"{schema}\".fielding_schema_migrations WHERE version >= 3"
    ))
    .execute(&mut conn)
    .await
    .expect("forget migrations 3 to 5");

    let store = common::connect_store(&test.guard.url, &schema, "fielding_migrate_v2", 2).await;
    let report = store.migrate().await.expect("migrate");
    assert_eq!(report.applied_versions().collect::<Vec<_>>(), [3, 4, 5]);
    let finished: Vec<(String, Option<i64>)> = sqlx::query_as(&format!(
        "SELECT idempotency_key, (extract(epoch FROM finished_at) * 1000)::bigint FROM {table} ORDER BY idempotency_key"
    ))
    .fetch_all(&mut conn)
    .await
    .expect("finish times");
    assert_eq!(
        finished,
        [
            ("busy".to_owned(), None),
            ("done".to_owned(), Some(done.created_at.unix_millis()))
        ]
    );
    let err = sqlx::query(&format!(
        "UPDATE {table} SET finished_at = NULL WHERE idempotency_key = 'done'"
    ))
    .execute(&mut conn)
    .await
    .expect_err("a finished job without a finish time");
    assert!(err.to_string().contains("fielding_run_jobs_finished"), "{err}");
    // Expiry goes by the filled-in time.
    assert_eq!(store.expire_jobs(done.created_at, 10).await.expect("expire"), 0);
    assert_eq!(
        store.expire_jobs(plus(done.created_at, 1), 10).await.expect("expire"),
        1
    );
    assert!(store.get_job(&busy.key()).await.expect("get").is_some());
}
