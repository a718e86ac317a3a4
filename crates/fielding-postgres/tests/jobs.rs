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
        .finish_job(&launched.key(), &JobOutcome::Completed)
        .await
        .expect("finish")
        .expect("the launch job");
    let failure = JobOutcome::Failed(JobFailure {
        code: JobFailureCode::InvalidFieldingDates,
        description: "ünïcode, \"quotes\" and 'apostrophes' survive".into(),
    });
    let failed = test
        .finish_job(&failed.key(), &failure)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creations_across_instances_create_exactly_one_job() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let schema = common::schema_of(&test).to_string();
    let mut instances = Vec::new();
    for i in 0..3 {
        instances.push(Arc::new(
            common::connect_store(&test.guard.url, &schema, &format!("fielding_jobs_race_{i}"), 4).await,
        ));
    }
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
    let schema = common::schema_of(&test).to_string();
    let mut instances = Vec::new();
    for i in 0..2 {
        instances.push(Arc::new(
            common::connect_store(&test.guard.url, &schema, &format!("fielding_jobs_finish_{i}"), 4).await,
        ));
    }
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
                tokio::spawn(async move { store.finish_job(&scope.job(id), &outcome).await })
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
            "status = 'Failed', failure_code = 'NoSuchCode', failure_description = 'x'",
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
            let err = test.finish_job(&j.key(), &JobOutcome::Completed).await.unwrap_err();
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
