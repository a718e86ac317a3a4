//! Bulk jobs through the service and the runner, on the in-memory store:
//! the per-item rules, idempotency, list validation, the runner's
//! concurrency and graceful stop, and at-most-once application when a
//! runner loses its job half-way.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use fielding_core::{
    Action, BulkAction, BulkClaim, BulkItemFailure, BulkItemOutcome, BulkJob, BulkJobStatus, BulkRunner,
    BulkRunnerOptions, ClaimToken, Clock, FieldingRun, FieldingService, FieldingStore, IfMatch, ManualClock, Scope,
    Status, TargetGroupId, Timestamp, UserId,
};
use fielding_memory::MemoryStore;
use fielding_testkit::fixtures;

fn now() -> Timestamp {
    Timestamp::from(chrono::Utc::now())
}

/// A project with one run per given status.
struct Project {
    scope: Scope,
    runs: Vec<FieldingRun>,
}

fn project(store: &MemoryStore, statuses: &[Status]) -> Project {
    let scope = fixtures::scope();
    let runs = statuses
        .iter()
        .map(|status| {
            let run = fixtures::run()
                .with_scope(fixtures::other_target_group(scope))
                .with_status(*status)
                .build();
            store.seed(run.clone()).unwrap();
            run
        })
        .collect();
    Project { scope, runs }
}

#[tokio::test]
async fn every_action_on_every_status_follows_the_rules() {
    fielding_testkit::scenarios::bulk_jobs_follow_the_rules(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn runs_of_another_account_or_project_are_not_found() {
    let store = MemoryStore::new();
    let service = FieldingService::new(Arc::new(store.clone()));
    let p = project(&store, &[Status::Live]);
    let run = &p.runs[0];
    for elsewhere in [
        fixtures::other_account(run.scope()),
        fixtures::other_project(run.scope()),
    ] {
        let job = service
            .submit_bulk_job(fixtures::new_bulk_job(
                elsewhere,
                "foreign",
                BulkAction::Pause,
                vec![run.target_group_id],
            ))
            .await
            .unwrap()
            .job;
        BulkRunner::new(service.clone(), BulkRunnerOptions::default())
            .run_until_idle()
            .await
            .unwrap();
        let done = service.get_bulk_job(&job.key()).await.unwrap();
        assert_eq!(
            done.outcome_of(run.target_group_id),
            Some(BulkItemOutcome::Failed(BulkItemFailure::TargetGroupNotFound))
        );
        // And the job is not readable from the run's own project.
        let mut wrong = job.key();
        wrong.project_id = run.project_id;
        wrong.account_id = run.account_id;
        assert_eq!(
            service.get_bulk_job(&wrong).await.unwrap_err().code(),
            "not_found_error"
        );
    }
    assert_eq!(store.run(&run.key()).unwrap().status, Status::Live, "untouched");
}

#[tokio::test]
async fn the_same_key_gives_the_same_job_and_a_different_request_is_refused() {
    let store = MemoryStore::new();
    let service = FieldingService::new(Arc::new(store.clone()));
    let p = project(&store, &[Status::Live, Status::Live]);
    let (a, b) = (p.runs[0].target_group_id, p.runs[1].target_group_id);
    let first = service
        .submit_bulk_job(fixtures::new_bulk_job(p.scope, "k1", BulkAction::Pause, vec![a, b]))
        .await
        .unwrap();
    assert!(!first.replayed);
    let again = service
        .submit_bulk_job(fixtures::new_bulk_job(p.scope, "k1", BulkAction::Pause, vec![b, a]))
        .await
        .unwrap();
    assert!(
        again.replayed,
        "the same target groups in another order are the same request"
    );
    assert_eq!(again.job.id, first.job.id);

    for different in [
        fixtures::new_bulk_job(p.scope, "k1", BulkAction::Resume, vec![a, b]),
        fixtures::new_bulk_job(p.scope, "k1", BulkAction::Pause, vec![a]),
        fixtures::new_bulk_job(fixtures::other_project(p.scope), "k1", BulkAction::Pause, vec![a, b]),
    ] {
        let err = service.submit_bulk_job(different).await.unwrap_err();
        assert_eq!(err.invalid_params()[0].name, "idempotency-key");
        assert!(err.invalid_params()[0].reason.contains(first.job.id.as_str()));
    }
    assert_eq!(store.bulk_job_count(), 1);

    // Another account has its own keys.
    let other = service
        .submit_bulk_job(fixtures::new_bulk_job(
            fixtures::other_account(p.scope),
            "k1",
            BulkAction::Resume,
            vec![a],
        ))
        .await
        .unwrap();
    assert!(!other.replayed);
}

#[tokio::test]
async fn bad_lists_are_refused_and_nothing_is_recorded() {
    let store = MemoryStore::new();
    let service = FieldingService::new(Arc::new(store.clone()));
    let scope = fixtures::scope();
    let a = scope.target_group_id;
    let cases: Vec<(Vec<TargetGroupId>, &str)> = vec![
        (vec![], "target_group_ids"),
        (vec![a, a], "target_group_ids[1]"),
        (vec![a; BulkJob::MAX_TARGET_GROUPS + 1], "target_group_ids"),
    ];
    for (ids, field) in cases {
        let err = service
            .submit_bulk_job(fixtures::new_bulk_job(scope, "bad", BulkAction::Complete, ids))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "bad_request_error");
        assert_eq!(err.invalid_params()[0].name, field);
    }
    assert_eq!(store.bulk_job_count(), 0);
}

#[tokio::test]
async fn a_job_of_the_maximum_size_is_worked_in_batches() {
    let store = MemoryStore::new();
    let service = FieldingService::new(Arc::new(store.clone()));
    let scope = fixtures::scope();
    let mut ids = Vec::new();
    for _ in 0..BulkJob::MAX_TARGET_GROUPS {
        let run = fixtures::run()
            .with_scope(fixtures::other_target_group(scope))
            .with_status(Status::Live)
            .build();
        ids.push(run.target_group_id);
        store.seed(run).unwrap();
    }
    let job = service
        .submit_bulk_job(fixtures::new_bulk_job(scope, "big", BulkAction::Pause, ids))
        .await
        .unwrap()
        .job;
    BulkRunner::new(service.clone(), BulkRunnerOptions::default().with_batch_size(333))
        .run_until_idle()
        .await
        .unwrap();
    let done = service.get_bulk_job(&job.key()).await.unwrap();
    assert_eq!(done.status, BulkJobStatus::Completed);
    assert!(done
        .items
        .iter()
        .all(|item| item.outcome == Some(BulkItemOutcome::Updated)));
    assert!(store.runs().iter().all(|run| run.status == Status::Paused));
}

/// A runner loses its job half-way (its lease ran out and another runner
/// claimed it); meanwhile a user relaunches a run the first runner had
/// already completed. The second runner finishes the job without touching
/// that run again, and the first runner's late writes are refused.
#[tokio::test]
async fn a_job_taken_over_half_way_applies_each_item_at_most_once() {
    let store = MemoryStore::new();
    let clock = Arc::new(ManualClock::new(now()));
    let service = FieldingService::new(Arc::new(store.clone())).with_clock(clock.clone());
    let scope = fixtures::scope();
    let runs: Vec<FieldingRun> = (0..6)
        .map(|_| {
            let run = fixtures::run()
                .with_scope(fixtures::other_target_group(scope))
                .with_status(Status::Live)
                .with_now(clock.now())
                .build();
            store.seed(run.clone()).unwrap();
            run
        })
        .collect();
    let ids: Vec<_> = runs.iter().map(|run| run.target_group_id).collect();
    let job = service
        .submit_bulk_job(fixtures::new_bulk_job(
            scope,
            "takeover",
            BulkAction::Complete,
            ids.clone(),
        ))
        .await
        .unwrap()
        .job;

    // The first holder applies the first three items, then stalls.
    let first = BulkClaim {
        token: ClaimToken::generate(),
        lease_until: clock.now().checked_add(TimeDelta::seconds(30)).unwrap(),
    };
    let claimed = store.claim_bulk_job(clock.now(), &first).await.unwrap().unwrap();
    assert_eq!(claimed.id, job.id);
    let mut decide = |_: TargetGroupId, run: Option<&FieldingRun>| {
        let run = run.unwrap();
        let (next, change) = fixtures::change(run, 1, job.created_by).unwrap();
        let next = FieldingRun {
            status: Status::Completed,
            ..next
        };
        let change = fielding_core::ChangeRecord {
            action: Action::Complete,
            status_to: Status::Completed,
            ..change
        };
        fielding_core::ItemUpdate::Write {
            expected: run.version,
            run: next,
            change,
        }
    };
    store
        .apply_bulk_items(&job.key(), first.token, &ids[..3], &mut decide)
        .await
        .unwrap();

    // A user relaunches the first run after the job completed it.
    let completed = store.run(&runs[0].key()).unwrap();
    service
        .relaunch(&runs[0].key(), &IfMatch::version(completed.version), UserId::random())
        .await
        .unwrap();

    // The lease runs out; a runner takes the job over and finishes it.
    clock.advance(TimeDelta::seconds(31));
    let runner = BulkRunner::new(service.clone(), BulkRunnerOptions::default());
    assert_eq!(runner.run_until_idle().await.unwrap(), 1);
    let done = service.get_bulk_job(&job.key()).await.unwrap();
    assert_eq!(done.status, BulkJobStatus::Completed);
    assert!(done
        .items
        .iter()
        .all(|item| item.outcome == Some(BulkItemOutcome::Updated)));
    assert_eq!(
        store.run(&runs[0].key()).unwrap().status,
        Status::Live,
        "the relaunch after the job's complete stands"
    );
    for run in &runs {
        let completes = store
            .change_records(&run.key())
            .iter()
            .filter(|c| c.action == Action::Complete)
            .count();
        assert_eq!(completes, 1, "{} completed exactly once", run.target_group_id);
    }

    // The first holder wakes up: its writes are refused.
    let late = store
        .apply_bulk_items(&job.key(), first.token, &ids[3..], &mut decide)
        .await;
    assert!(
        matches!(late, Err(fielding_core::StoreError::ClaimLost { .. })),
        "{late:?}"
    );
    assert!(!store.renew_bulk_claim(&job.key(), &first).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runners_share_jobs_and_apply_each_item_once() {
    let store = MemoryStore::new();
    let service = FieldingService::new(Arc::new(store.clone()));
    let mut jobs = Vec::new();
    for n in 0..8 {
        let scope = fixtures::scope();
        let ids: Vec<_> = (0..50)
            .map(|_| {
                let run = fixtures::run()
                    .with_scope(fixtures::other_target_group(scope))
                    .with_status(Status::Live)
                    .build();
                store.seed(run.clone()).unwrap();
                run.target_group_id
            })
            .collect();
        let job = service
            .submit_bulk_job(fixtures::new_bulk_job(
                scope,
                &format!("job-{n}"),
                BulkAction::Pause,
                ids,
            ))
            .await
            .unwrap()
            .job;
        jobs.push(job);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    for _ in 0..3 {
        let runner = BulkRunner::new(
            service.clone(),
            BulkRunnerOptions::default()
                .with_batch_size(7)
                .with_concurrency(2)
                .with_poll_interval(Duration::from_millis(5)),
        );
        let mut stopped = stopped.clone();
        handles.push(tokio::spawn(async move {
            runner
                .run(async move { stopped.wait_for(|s| *s).await.map(|_| ()).unwrap_or(()) })
                .await
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for job in &jobs {
        loop {
            let current = service.get_bulk_job(&job.key()).await.unwrap();
            if current.status != BulkJobStatus::Processing {
                assert_eq!(current.status, BulkJobStatus::Completed);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "jobs did not finish");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.send_replace(true);
    for handle in handles {
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("runners stop")
            .unwrap();
    }
    for run in store.runs() {
        assert_eq!(run.status, Status::Paused);
        assert_eq!(run.version.get(), 2, "paused exactly once");
    }
}

#[tokio::test]
async fn a_submission_wakes_a_sleeping_runner() {
    let store = MemoryStore::new();
    let service = FieldingService::new(Arc::new(store.clone()));
    let p = project(&store, &[Status::Live]);
    // Polls once an hour: only the wake-up can start the job in time.
    let runner = BulkRunner::new(
        service.clone(),
        BulkRunnerOptions::default().with_poll_interval(Duration::from_secs(3600)),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        runner
            .run(async {
                stopped.await.ok();
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let job = service
        .submit_bulk_job(fixtures::new_bulk_job(
            p.scope,
            "wake",
            BulkAction::Pause,
            vec![p.runs[0].target_group_id],
        ))
        .await
        .unwrap()
        .job;
    let finished = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if service.get_bulk_job(&job.key()).await.unwrap().status != BulkJobStatus::Processing {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(finished.is_ok(), "the runner was not woken");
    stop.send(()).unwrap();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_stopping_runner_releases_its_job_for_another() {
    let store = MemoryStore::new();
    let service = FieldingService::new(Arc::new(store.clone()));
    let scope = fixtures::scope();
    let ids: Vec<_> = (0..200)
        .map(|_| {
            let run = fixtures::run()
                .with_scope(fixtures::other_target_group(scope))
                .with_status(Status::Live)
                .build();
            store.seed(run.clone()).unwrap();
            run.target_group_id
        })
        .collect();
    let job = service
        .submit_bulk_job(fixtures::new_bulk_job(scope, "stop", BulkAction::Pause, ids))
        .await
        .unwrap()
        .job;
    // Stop once the runner is under way: it finishes at most its current
    // batch and gives the job back.
    let runner = BulkRunner::new(service.clone(), BulkRunnerOptions::default().with_batch_size(1));
    let watcher = service.clone();
    let key = job.key();
    runner
        .run(async move {
            while watcher.get_bulk_job(&key).await.unwrap().pending().count() == 200 {
                tokio::task::yield_now().await;
            }
        })
        .await;
    let after = service.get_bulk_job(&job.key()).await.unwrap();
    assert_eq!(after.status, BulkJobStatus::Processing);
    let done = 200 - after.pending().count();
    assert!((1..200).contains(&done), "stopped half-way, after {done} items");
    // Released, not left to its 30 s lease: another runner takes it now.
    let next = BulkRunner::new(service.clone(), BulkRunnerOptions::default());
    assert_eq!(next.run_until_idle().await.unwrap(), 1);
    assert_eq!(
        service.get_bulk_job(&job.key()).await.unwrap().status,
        BulkJobStatus::Completed
    );
}

#[tokio::test]
async fn transient_store_failures_do_not_stop_a_job() {
    let inner = MemoryStore::new();
    let store = fielding_testkit::FaultyStore::new(inner.clone());
    let faults = store.faults().clone();
    let service = FieldingService::new(Arc::new(store));
    let p = project(&inner, &[Status::Live, Status::Live, Status::Live]);
    let ids = p.runs.iter().map(|run| run.target_group_id).collect();
    let job = service
        .submit_bulk_job(fixtures::new_bulk_job(p.scope, "blip", BulkAction::Pause, ids))
        .await
        .unwrap()
        .job;
    let runner = BulkRunner::new(service.clone(), BulkRunnerOptions::default().with_batch_size(1));
    // Whichever calls they hit (claim, batches, finish), each is retried.
    faults.inject(fielding_testkit::Fault::TransientStorage, 4);
    assert_eq!(runner.run_until_idle().await.unwrap(), 1);
    assert_eq!(faults.pending(fielding_testkit::Fault::TransientStorage), 0);
    assert_eq!(
        service.get_bulk_job(&job.key()).await.unwrap().status,
        BulkJobStatus::Completed
    );
    assert!(inner
        .runs()
        .iter()
        .all(|run| run.status == Status::Paused && run.version.get() == 2));

    // A permanent failure is reported, and the job is left for later.
    let again = service
        .submit_bulk_job(fixtures::new_bulk_job(
            p.scope,
            "hard",
            BulkAction::Resume,
            vec![p.runs[0].target_group_id],
        ))
        .await
        .unwrap()
        .job;
    faults.inject(fielding_testkit::Fault::Storage, 1);
    assert!(runner.run_until_idle().await.is_err());
    assert_eq!(
        service.get_bulk_job(&again.key()).await.unwrap().status,
        BulkJobStatus::Processing
    );
    assert_eq!(runner.run_until_idle().await.unwrap(), 1);
}

/// A job whose batches keep failing (a permanent store error) is not
/// claimed again every time its lease ends: each failure holds it back
/// longer (one lease, then doubling, up to an hour), and it stays
/// `Processing` with nothing applied. Each attempt uses up one injected
/// fault, which is how the test counts them.
#[tokio::test]
async fn a_job_whose_batches_keep_failing_is_held_back_longer_each_time() {
    const FAULTS: u64 = 1_000_000;
    let inner = MemoryStore::new();
    let store = fielding_testkit::FaultyStore::new(inner.clone());
    let faults = store.faults().clone();
    faults.only_in(Some("apply_bulk_items"));
    faults.inject(fielding_testkit::Fault::Storage, FAULTS);
    let attempts = || FAULTS - faults.pending(fielding_testkit::Fault::Storage);
    let clock = Arc::new(ManualClock::new(now()));
    let service = FieldingService::new(Arc::new(store)).with_clock(clock.clone());
    let p = project(&inner, &[Status::Live]);
    let job = service
        .submit_bulk_job(fixtures::new_bulk_job(
            p.scope,
            "poison",
            BulkAction::Pause,
            vec![p.runs[0].target_group_id],
        ))
        .await
        .unwrap()
        .job;
    let runner = BulkRunner::new(
        service.clone(),
        BulkRunnerOptions::default()
            .with_lease(Duration::from_secs(30))
            .with_poll_interval(Duration::from_millis(1)),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        runner
            .run(async {
                stopped.await.ok();
            })
            .await
    });
    let reach = |count: u64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while attempts() < count {
            assert!(tokio::time::Instant::now() < deadline, "attempt {count} did not come");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Polled every millisecond: a job not held back would be tried
        // again many times over in this pause.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(attempts(), count, "tried again while held back");
    };
    reach(1).await; // held for 30 s
    clock.advance(TimeDelta::seconds(31));
    reach(2).await; // held for 60 s
    clock.advance(TimeDelta::seconds(31));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(attempts(), 2, "still held back after 31 of 60 s");
    clock.advance(TimeDelta::seconds(30));
    reach(3).await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(
        service.get_bulk_job(&job.key()).await.unwrap().status,
        BulkJobStatus::Processing
    );
    assert_eq!(inner.run(&p.runs[0].key()).unwrap(), p.runs[0], "nothing applied");
}
