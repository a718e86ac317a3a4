//! Bulk jobs on a real server, beyond the conformance kit: the service and
//! the runner end to end, several instances (pools) working one schema's
//! jobs at once, fencing of a runner whose lease ran out, batches that are
//! all or nothing, and expiry taking the items along.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use fielding_core::{
    BulkAction, BulkClaim, BulkItemFailure, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobStatus, BulkRunner,
    BulkRunnerOptions, ClaimToken, FieldingRun, FieldingService, FieldingStore, IdempotencyKey, ItemUpdate, Scope,
    Status, StoreError, TargetGroupId, Timestamp, UserId,
};
use fielding_postgres::sqlx::postgres::PgConnection;
use fielding_postgres::sqlx::{self, Connection};
use fielding_postgres::PgStore;
use fielding_testkit::fixtures;

fn now() -> Timestamp {
    Timestamp::from(chrono::Utc::now())
}

fn later(t: Timestamp, seconds: i64) -> Timestamp {
    t.checked_add(TimeDelta::seconds(seconds)).expect("in range")
}

/// Runs in `scope`'s account and project, one per status, inserted.
async fn seed(store: &PgStore, scope: Scope, statuses: &[Status]) -> Vec<FieldingRun> {
    let mut runs = Vec::with_capacity(statuses.len());
    for status in statuses {
        let run = fixtures::run()
            .with_scope(fixtures::other_target_group(scope))
            .with_status(*status)
            .build();
        store.insert(&run, &fixtures::creation(&run)).await.expect("insert");
        runs.push(run);
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_on_every_status_through_the_service_and_the_runner() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    fielding_testkit::scenarios::bulk_jobs_follow_the_rules(Arc::new(test.store.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_scoped_keyed_per_account_and_read_back_through_another_pool() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let scope = fixtures::scope();
    let runs = seed(&test.store, scope, &[Status::Live]).await;
    let mut job = fixtures::bulk_job(
        scope,
        &"~".repeat(IdempotencyKey::MAX_LEN),
        BulkAction::Pause,
        &[runs[0].target_group_id, fixtures::target_group_id()],
    );
    job.trace_id = fielding_core::JobTraceId::parse("0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        test.create_bulk_job(&job).await.expect("create"),
        BulkJobCreated::Created
    );

    let other = common::connect_store(&test.guard.url, common::schema_of(&test), "fielding_bulk_other", 2).await;
    assert_eq!(other.get_bulk_job(&job.key()).await.expect("get"), Some(job.clone()));
    for (what, elsewhere) in [
        ("account", fixtures::other_account(scope)),
        ("project", fixtures::other_project(scope)),
    ] {
        let mut key = job.key();
        key.account_id = elsewhere.account_id;
        key.project_id = elsewhere.project_id;
        assert_eq!(other.get_bulk_job(&key).await.expect("get"), None, "another {what}");
    }

    // The same key in the same account: the stored job, nothing written.
    let mut again = fixtures::bulk_job(
        scope,
        job.idempotency_key.as_str(),
        BulkAction::Resume,
        &[scope.target_group_id],
    );
    again.project_id = fixtures::project_id();
    assert_eq!(
        other.create_bulk_job(&again).await.expect("create again"),
        BulkJobCreated::Existing(job.clone())
    );
    assert_eq!(other.get_bulk_job(&again.key()).await.expect("get"), None);
    // Another account has keys of its own.
    let foreign = fixtures::bulk_job(
        fixtures::other_account(scope),
        job.idempotency_key.as_str(),
        BulkAction::Pause,
        &[scope.target_group_id],
    );
    assert_eq!(
        other.create_bulk_job(&foreign).await.expect("create"),
        BulkJobCreated::Created
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creations_with_one_key_across_pools_record_one_job() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let scope = fixtures::scope();
    let mut stores = Vec::new();
    for i in 0..4 {
        stores.push(
            common::connect_store(
                &test.guard.url,
                common::schema_of(&test),
                &format!("fielding_bulk_race_{i}"),
                2,
            )
            .await,
        );
    }
    let tasks: Vec<_> = stores
        .iter()
        .map(|store| {
            let store = store.clone();
            let ids: Vec<_> = (0..50).map(|_| fixtures::target_group_id()).collect();
            let job = fixtures::bulk_job(scope, "one-key", BulkAction::Pause, &ids);
            tokio::spawn(async move { (store.create_bulk_job(&job).await, job) })
        })
        .collect();
    let mut created = Vec::new();
    let mut existing = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            (Ok(BulkJobCreated::Created), job) => created.push(job),
            (Ok(BulkJobCreated::Existing(found)), _) => existing.push(found),
            (Err(err), _) => panic!("create: {err}"),
        }
    }
    assert_eq!(created.len(), 1, "exactly one creation wins");
    assert!(
        existing.iter().all(|found| *found == created[0]),
        "the others see the winner, items and all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_the_maximum_size_round_trips_and_is_worked_in_batches() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let service = FieldingService::new(Arc::new(test.store.clone()));
    let scope = fixtures::scope();
    let runs = seed(&test.store, scope, &[Status::Live; 50]).await;
    let mut ids: Vec<_> = (0..BulkJob::MAX_TARGET_GROUPS - runs.len())
        .map(|_| fixtures::target_group_id())
        .collect();
    // The runs spread through the list.
    for (n, run) in runs.iter().enumerate() {
        ids.insert(n * 150, run.target_group_id);
    }
    let job = service
        .submit_bulk_job(fixtures::new_bulk_job(scope, "big", BulkAction::Pause, ids.clone()))
        .await
        .expect("submit")
        .job;
    let stored = test.get_bulk_job(&job.key()).await.expect("get").expect("the job");
    assert_eq!(stored.items.len(), BulkJob::MAX_TARGET_GROUPS);
    assert_eq!(stored, job);
    BulkRunner::new(service.clone(), BulkRunnerOptions::default().with_batch_size(500))
        .run_until_idle()
        .await
        .expect("run");
    let done = test.get_bulk_job(&job.key()).await.expect("get").expect("the job");
    assert_eq!(done.status, BulkJobStatus::Completed);
    let updated = done
        .items
        .iter()
        .filter(|item| item.outcome == Some(BulkItemOutcome::Updated))
        .count();
    assert_eq!(updated, runs.len());
    assert!(done.items.iter().all(|item| item.outcome.is_some()));
    for run in &runs {
        assert_eq!(
            test.get(&run.key()).await.expect("get").expect("run").status,
            Status::Paused
        );
    }
}

/// Two instances (separate pools, separate services and runners) on one
/// schema, each runner working two jobs at a time in small batches, over
/// jobs whose target groups overlap: every job finishes and every run is
/// changed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_jobs_and_change_each_run_exactly_once() {
    const RUNS: usize = 240;
    const JOBS: usize = 8;
    const SPAN: usize = 60;
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let (url, schema) = (test.guard.url.clone(), common::schema_of(&test).to_string());
    let scope = fixtures::scope();
    let runs = seed(&test.store, scope, &[Status::Live; RUNS]).await;

    let options = BulkRunnerOptions::default()
        .with_concurrency(2)
        .with_batch_size(7)
        .with_poll_interval(Duration::from_millis(20));
    let mut services = Vec::new();
    let mut stops = Vec::new();
    let mut handles = Vec::new();
    for i in 0..2 {
        let store = common::connect_store(&url, &schema, &format!("fielding_bulk_instance_{i}"), 4).await;
        let service = FieldingService::new(Arc::new(store));
        let runner = BulkRunner::new(service.clone(), options.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        handles.push(tokio::spawn(async move {
            runner
                .run(async {
                    stopped.await.ok();
                })
                .await
        }));
        services.push(service);
        stops.push(stop);
    }

    // Job j covers SPAN runs starting at j * RUNS / JOBS, wrapping around:
    // every run is in two jobs, submitted through alternating instances.
    let mut jobs = Vec::new();
    for j in 0..JOBS {
        let ids = (0..SPAN)
            .map(|n| runs[(j * RUNS / JOBS + n) % RUNS].target_group_id)
            .collect();
        let service = &services[j % 2];
        let job = service
            .submit_bulk_job(fixtures::new_bulk_job(
                scope,
                &format!("job-{j}"),
                BulkAction::Pause,
                ids,
            ))
            .await
            .expect("submit")
            .job;
        jobs.push(job);
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for job in &jobs {
        loop {
            let stored = services[0].get_bulk_job(&job.key()).await.expect("get");
            if stored.status != BulkJobStatus::Processing {
                assert_eq!(stored.status, BulkJobStatus::Completed);
                assert!(
                    stored
                        .items
                        .iter()
                        .all(|item| item.outcome == Some(BulkItemOutcome::Updated)),
                    "every item of {} updated",
                    job.id
                );
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} did not finish", job.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for stop in stops {
        stop.send(()).ok();
    }
    for handle in handles {
        handle.await.expect("runner");
    }

    let pause = BulkAction::Pause.command().action();
    for run in &runs {
        let history = test.changes(&run.key()).await.expect("changes");
        assert_eq!(
            history.iter().filter(|change| change.action == pause).count(),
            1,
            "{} changed exactly once: {history:?}",
            run.id
        );
        let stored = test.get(&run.key()).await.expect("get").expect("run");
        assert_eq!(
            (stored.status, stored.version),
            (Status::Paused, run.version.next().expect("next"))
        );
    }
}

/// Runner A claims a job, its lease runs out, runner B claims it: from then
/// on A's writes are refused, whatever they are, and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_whose_claim_was_taken_over_is_fenced_out() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let other = common::connect_store(&test.guard.url, common::schema_of(&test), "fielding_bulk_fencing", 2).await;
    let scope = fixtures::scope();
    let runs = seed(&test.store, scope, &[Status::Live, Status::Live]).await;
    let ids: Vec<_> = runs.iter().map(|run| run.target_group_id).collect();
    let job = fixtures::bulk_job(scope, "fenced", BulkAction::Pause, &ids);
    test.create_bulk_job(&job).await.expect("create");

    let t0 = now();
    let a = BulkClaim {
        token: ClaimToken::generate(),
        lease_until: later(t0, 30),
    };
    assert_eq!(test.claim_bulk_job(t0, &a).await.expect("claim A"), Some(job.clone()));
    let b = BulkClaim {
        token: ClaimToken::generate(),
        lease_until: later(t0, 90),
    };
    assert_eq!(
        other.claim_bulk_job(later(t0, 29), &b).await.expect("claim"),
        None,
        "A's lease still holds"
    );
    assert_eq!(
        other.claim_bulk_job(later(t0, 30), &b).await.expect("claim B"),
        Some(job.clone()),
        "a lease ending at `now` is over"
    );

    let calls = AtomicUsize::new(0);
    let mut decide = |_: TargetGroupId, run: Option<&FieldingRun>| {
        calls.fetch_add(1, Ordering::Relaxed);
        let run = run.expect("a run");
        let (next, change) = fixtures::change(run, 1, UserId::random()).expect("a change");
        ItemUpdate::Write {
            expected: run.version,
            run: next,
            change,
        }
    };
    match test.apply_bulk_items(&job.key(), a.token, &ids, &mut decide).await {
        Err(StoreError::ClaimLost { key, token }) => assert_eq!((key, token), (job.key(), a.token)),
        other => panic!("expected ClaimLost, got {other:?}"),
    }
    assert_eq!(calls.load(Ordering::Relaxed), 0, "a fenced-out runner decides nothing");
    let renew_a = BulkClaim {
        lease_until: later(t0, 600),
        ..a
    };
    assert!(!test.renew_bulk_claim(&job.key(), &renew_a).await.expect("renew"));
    assert!(!test
        .finish_bulk_job(&job.key(), a.token, BulkJobStatus::Completed, later(t0, 31))
        .await
        .expect("finish"));
    assert_eq!(
        test.get_bulk_job(&job.key()).await.expect("get"),
        Some(job.clone()),
        "nothing written"
    );
    for run in &runs {
        assert_eq!(test.get(&run.key()).await.expect("get").as_ref(), Some(run));
        assert_eq!(test.changes(&run.key()).await.expect("changes").len(), 1);
    }
    // B was not disturbed: it renews, applies and finishes.
    assert!(other.renew_bulk_claim(&job.key(), &b).await.expect("renew B"));
    let outcomes = other
        .apply_bulk_items(&job.key(), b.token, &ids, &mut decide)
        .await
        .expect("apply B");
    assert_eq!(
        outcomes,
        ids.iter().map(|id| (*id, BulkItemOutcome::Updated)).collect::<Vec<_>>()
    );
    assert!(other
        .finish_bulk_job(&job.key(), b.token, BulkJobStatus::Completed, later(t0, 32))
        .await
        .expect("finish B"));
    // Finished: B is done with it too, and nobody can claim it.
    assert!(!other.renew_bulk_claim(&job.key(), &b).await.expect("renew"));
    assert_eq!(test.claim_bulk_job(later(t0, 999), &a).await.expect("claim"), None);
    let done = test.get_bulk_job(&job.key()).await.expect("get").expect("job");
    assert_eq!(done.status, BulkJobStatus::Completed);
}

/// A batch is all or nothing: a write at a stale version fails it with
/// `VersionConflict` and none of its items' outcomes or runs is written;
/// items already recorded keep their outcome and are not decided again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_all_or_nothing_and_recorded_items_are_not_decided_again() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let scope = fixtures::scope();
    let runs = seed(&test.store, scope, &[Status::Live, Status::Live]).await;
    let missing = fixtures::target_group_id();
    let ids = vec![missing, runs[0].target_group_id, runs[1].target_group_id];
    let job = fixtures::bulk_job(scope, "atomic", BulkAction::Pause, &ids);
    test.create_bulk_job(&job).await.expect("create");
    let claim = BulkClaim {
        token: ClaimToken::generate(),
        lease_until: later(now(), 60),
    };
    test.claim_bulk_job(now(), &claim)
        .await
        .expect("claim")
        .expect("the job");

    // The second run's write names a version it is not at.
    let stale = runs[1].target_group_id;
    let mut decide = |tg: TargetGroupId, run: Option<&FieldingRun>| match run {
        None => ItemUpdate::Record(BulkItemOutcome::Failed(BulkItemFailure::TargetGroupNotFound)),
        Some(run) => {
            let (next, change) = fixtures::change(run, 1, UserId::random()).expect("a change");
            let expected = if tg == stale { next.version } else { run.version };
            ItemUpdate::Write {
                expected,
                run: next,
                change,
            }
        }
    };
    match test.apply_bulk_items(&job.key(), claim.token, &ids, &mut decide).await {
        Err(StoreError::VersionConflict { expected, current }) => {
            assert_eq!(
                (expected, current),
                (runs[1].version.next().expect("next"), runs[1].version)
            );
        }
        other => panic!("expected VersionConflict, got {other:?}"),
    }
    assert_eq!(
        test.get_bulk_job(&job.key()).await.expect("get"),
        Some(job.clone()),
        "no outcome recorded"
    );
    for run in &runs {
        assert_eq!(
            test.get(&run.key()).await.expect("get").as_ref(),
            Some(run),
            "no run written"
        );
        assert_eq!(
            test.changes(&run.key()).await.expect("changes").len(),
            1,
            "no change record"
        );
    }

    // A write in place of another run is refused as a bug, also atomically.
    let mut misdirected = |_: TargetGroupId, run: Option<&FieldingRun>| match run {
        None => ItemUpdate::Record(BulkItemOutcome::Failed(BulkItemFailure::TargetGroupNotFound)),
        Some(_) => {
            let (next, change) = fixtures::change(&runs[0], 1, UserId::random()).expect("a change");
            ItemUpdate::Write {
                expected: runs[0].version,
                run: next,
                change,
            }
        }
    };
    let err = test
        .apply_bulk_items(&job.key(), claim.token, &ids, &mut misdirected)
        .await
        .expect_err("a write for another run");
    assert!(matches!(err, StoreError::Backend { retryable: false, .. }), "{err:?}");
    assert_eq!(test.get_bulk_job(&job.key()).await.expect("get"), Some(job.clone()));
    assert_eq!(test.get(&runs[0].key()).await.expect("get").as_ref(), Some(&runs[0]));

    // The first two items, then all three: the first two keep their
    // outcomes and only the third is decided.
    let mut fine = |_: TargetGroupId, run: Option<&FieldingRun>| match run {
        None => ItemUpdate::Record(BulkItemOutcome::Failed(BulkItemFailure::TargetGroupNotFound)),
        Some(run) => {
            let (next, change) = fixtures::change(run, 1, UserId::random()).expect("a change");
            ItemUpdate::Write {
                expected: run.version,
                run: next,
                change,
            }
        }
    };
    // Asked against their sort order (and one of them twice): decided
    // once each, in the order asked, and answered for every entry.
    let mut two = ids[..2].to_vec();
    two.sort_unstable();
    two.reverse();
    let asked = [two[0], two[1], two[0]];
    let mut order = Vec::new();
    let first = test
        .apply_bulk_items(&job.key(), claim.token, &asked, &mut |tg, run| {
            order.push(tg);
            fine(tg, run)
        })
        .await
        .expect("apply");
    assert_eq!(order, two, "decided once each, in the order asked");
    let outcome = |tg: TargetGroupId| {
        if tg == missing {
            BulkItemOutcome::Failed(BulkItemFailure::TargetGroupNotFound)
        } else {
            BulkItemOutcome::Updated
        }
    };
    assert_eq!(first, asked.iter().map(|tg| (*tg, outcome(*tg))).collect::<Vec<_>>());
    let mut seen = Vec::new();
    let mut counting = |tg: TargetGroupId, run: Option<&FieldingRun>| {
        seen.push(tg);
        fine(tg, run)
    };
    // Asked in another order: answered in that order.
    let reversed: Vec<_> = ids.iter().rev().copied().collect();
    let all = test
        .apply_bulk_items(&job.key(), claim.token, &reversed, &mut counting)
        .await
        .expect("apply");
    assert_eq!(seen, [runs[1].target_group_id], "recorded items are not decided again");
    assert_eq!(
        all,
        [
            (runs[1].target_group_id, BulkItemOutcome::Updated),
            (runs[0].target_group_id, BulkItemOutcome::Updated),
            (missing, BulkItemOutcome::Failed(BulkItemFailure::TargetGroupNotFound)),
        ]
    );
    for run in &runs {
        assert_eq!(
            test.changes(&run.key()).await.expect("changes").len(),
            2,
            "changed once"
        );
    }
    // A target group that is not an item of the job is a caller's bug.
    let err = test
        .apply_bulk_items(&job.key(), claim.token, &[fixtures::target_group_id()], &mut fine)
        .await
        .expect_err("not an item");
    assert!(matches!(err, StoreError::Backend { retryable: false, .. }), "{err:?}");
}

/// Expiry removes finished jobs strictly before the cutoff, oldest first and
/// at most `limit`, never a processing one, and their items and keys with
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_removes_finished_jobs_with_their_items() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let scope = fixtures::scope();
    let t0 = now();
    let mut finished = Vec::new();
    for n in 0..3 {
        let job = fixtures::bulk_job(
            scope,
            &format!("done-{n}"),
            BulkAction::Pause,
            &[fixtures::target_group_id()],
        );
        test.create_bulk_job(&job).await.expect("create");
        let claim = BulkClaim {
            token: ClaimToken::generate(),
            lease_until: later(t0, 60),
        };
        let claimed = test.claim_bulk_job(t0, &claim).await.expect("claim").expect("a job");
        assert_eq!(claimed.id, job.id, "the only processing job");
        assert!(test
            .finish_bulk_job(&job.key(), claim.token, BulkJobStatus::Failed, later(t0, n))
            .await
            .expect("finish"));
        finished.push(job);
    }
    let processing = fixtures::bulk_job(scope, "processing", BulkAction::Pause, &[fixtures::target_group_id()]);
    test.create_bulk_job(&processing).await.expect("create");

    assert_eq!(test.expire_bulk_jobs(later(t0, 1000), 0).await.expect("expire"), 0);
    // Strictly before: the job finished at t0 + 1 stays at cutoff t0 + 1.
    assert_eq!(test.expire_bulk_jobs(later(t0, 1), 10).await.expect("expire"), 1);
    assert_eq!(test.get_bulk_job(&finished[0].key()).await.expect("get"), None);
    assert!(test.get_bulk_job(&finished[1].key()).await.expect("get").is_some());
    assert_eq!(test.expire_bulk_jobs(later(t0, 1000), 1).await.expect("expire"), 1);
    assert_eq!(
        test.get_bulk_job(&finished[1].key()).await.expect("get"),
        None,
        "oldest first"
    );
    assert_eq!(test.expire_bulk_jobs(later(t0, 1000), 10).await.expect("expire"), 1);
    assert!(
        test.get_bulk_job(&processing.key()).await.expect("get").is_some(),
        "never processing"
    );

    let mut conn = PgConnection::connect(&test.guard.url).await.expect("connect");
    let items: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".fielding_bulk_job_items",
        common::schema_of(&test)
    ))
    .fetch_one(&mut conn)
    .await
    .expect("count items");
    assert_eq!(items, 1, "only the processing job's item is left");
    // The key is free again.
    let reused = fixtures::bulk_job(scope, "done-0", BulkAction::Resume, &[fixtures::target_group_id()]);
    assert_eq!(
        test.create_bulk_job(&reused).await.expect("create"),
        BulkJobCreated::Created
    );
}
