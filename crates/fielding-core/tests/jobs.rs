//! The service's creation jobs: idempotent submission under concurrency,
//! and resuming a job whose process died at each step.

use std::sync::Arc;

use chrono::TimeDelta;
use fielding_core::{
    ChangeRecord, FieldingError, FieldingRunJob, FieldingService, FieldingStore, IdempotencyKey, JobFailureCode, JobId,
    JobOutcome, JobRequest, JobState, ManualClock, NewJob, Scope, Timestamp, UserId,
};
use fielding_memory::MemoryStore;
use fielding_testkit::fixtures;

fn t(text: &str) -> Timestamp {
    text.parse().unwrap()
}

struct Harness {
    store: MemoryStore,
    clock: ManualClock,
    service: FieldingService,
}

fn harness() -> Harness {
    let store = MemoryStore::new();
    let clock = ManualClock::new(t("2030-06-01T12:00:00Z"));
    let service = FieldingService::new(Arc::new(store.clone())).with_clock(Arc::new(clock.clone()));
    Harness { store, clock, service }
}

fn scope() -> Scope {
    fixtures::scope()
}

fn launch(scope: Scope, key: &str) -> NewJob {
    NewJob {
        scope,
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        request: JobRequest::LaunchFromDraft {
            end_fielding_at: t("2030-07-01T00:00:00Z"),
        },
        actor: UserId::random(),
        trace_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_of_one_key_create_one_job_and_one_run() {
    for _ in 0..20 {
        let h = harness();
        let scope = scope();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let service = h.service.clone();
            tasks.push(tokio::spawn(
                async move { service.submit_job(launch(scope, "once")).await },
            ));
        }
        let mut jobs = Vec::new();
        for task in tasks {
            jobs.push(task.await.unwrap().unwrap());
        }
        let fresh = jobs.iter().filter(|s| !s.replayed).count();
        assert_eq!(fresh, 1, "exactly one submission is not a replay");
        assert!(jobs.iter().all(|s| s.job.id == jobs[0].job.id));
        assert!(jobs
            .iter()
            .all(|s| s.job.state == JobState::Finished(JobOutcome::Completed)));
        let run = h.store.find_by_target_group(&scope).await.unwrap().unwrap();
        assert_eq!(Some(run.id), jobs[0].job.created_fielding_run_id());
        assert_eq!(h.store.changes(&run.key()).await.unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_jobs_with_different_keys_for_one_target_group_create_one_run() {
    let h = harness();
    let scope = scope();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let service = h.service.clone();
        tasks.push(tokio::spawn(async move {
            service.submit_job(launch(scope, &format!("k{i}"))).await
        }));
    }
    let mut completed = 0;
    for task in tasks {
        let job = task.await.unwrap().unwrap().job;
        match job.state {
            JobState::Finished(JobOutcome::Completed) => completed += 1,
            JobState::Finished(JobOutcome::Failed(failure)) => {
                assert_eq!(failure.code, JobFailureCode::TargetGroupInvalidState)
            }
            JobState::Processing => panic!("a submission returned a processing job"),
        }
    }
    assert_eq!(completed, 1);
}

/// A job recorded by a process that died before creating the run.
async fn abandoned(h: &Harness, scope: Scope) -> FieldingRunJob {
    let job = FieldingRunJob {
        id: JobId::generate(),
        scope,
        idempotency_key: IdempotencyKey::parse("crashed").unwrap(),
        request: JobRequest::ScheduleFromDraft {
            start_fielding_at: t("2030-06-10T00:00:00Z"),
            end_fielding_at: t("2030-07-01T00:00:00Z"),
        },
        fielding_run_id: fielding_core::FieldingRunId::generate(),
        created_at: fielding_core::Clock::now(&h.clock),
        created_by: UserId::random(),
        trace_id: None,
        state: JobState::Processing,
    };
    h.store.create_job(&job).await.unwrap();
    job
}

#[tokio::test]
async fn a_replay_finishes_a_job_abandoned_before_its_run_was_created() {
    let h = harness();
    let scope = scope();
    let job = abandoned(&h, scope).await;
    let replay = NewJob {
        scope,
        idempotency_key: job.idempotency_key.clone(),
        request: job.request,
        actor: UserId::random(),
        trace_id: None,
    };
    let submitted = h.service.submit_job(replay).await.unwrap();
    assert!(submitted.replayed);
    assert_eq!(submitted.job.created_fielding_run_id(), Some(job.fielding_run_id));
    let run = h.store.find_by_target_group(&scope).await.unwrap().unwrap();
    assert_eq!(run.id, job.fielding_run_id);
    assert_eq!(
        run.last_changed_by, job.created_by,
        "the run is the submitter's, not the replayer's"
    );
}

#[tokio::test]
async fn a_job_abandoned_after_its_run_was_created_completes_instead_of_failing() {
    let h = harness();
    let scope = scope();
    let job = abandoned(&h, scope).await;
    // The dead process got as far as creating the run.
    let run = fixtures::run().with_scope(scope).with_id(job.fielding_run_id).build();
    h.store
        .insert(&run, &ChangeRecord::created(&run, fielding_core::Action::Schedule))
        .await
        .unwrap();
    assert_eq!(
        h.service.get_job(&scope, &job.id).await.unwrap().state,
        JobState::Processing,
        "a young job is left to the process that may still run it"
    );
    h.clock.advance(TimeDelta::seconds(10));
    let resumed = h.service.get_job(&scope, &job.id).await.unwrap();
    assert_eq!(resumed.state, JobState::Finished(JobOutcome::Completed));
    assert_eq!(h.store.changes(&run.key()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn someone_elses_run_fails_the_job_and_unknown_jobs_are_not_found() {
    let h = harness();
    let scope = scope();
    let job = abandoned(&h, scope).await;
    h.store.seed(fixtures::run().with_scope(scope).build()).unwrap();
    h.clock.advance(TimeDelta::minutes(1));
    let resumed = h.service.get_job(&scope, &job.id).await.unwrap();
    assert_eq!(resumed.failure().unwrap().code, JobFailureCode::TargetGroupInvalidState);
    let missing = h.service.get_job(&scope, &JobId::generate()).await.unwrap_err();
    assert!(matches!(missing, FieldingError::NotFound { .. }));
    assert_eq!(missing.code(), "not_found_error");
}

#[tokio::test]
async fn a_reused_key_with_another_request_names_the_header() {
    let h = harness();
    let scope = scope();
    h.service.submit_job(launch(scope, "mine")).await.unwrap();
    let mut other = launch(scope, "mine");
    other.request = JobRequest::LaunchFromDraft {
        end_fielding_at: t("2030-08-01T00:00:00Z"),
    };
    let err = h.service.submit_job(other).await.unwrap_err();
    assert_eq!(err.code(), "bad_request_error");
    assert_eq!(err.invalid_params()[0].name, "idempotency-key");
}

/// The service records when a job finished by its own clock (a resumed
/// job: when it was resumed, not when it was created), which is what
/// expiry measures from; an expired job is not found, and its key starts
/// a new job.
#[tokio::test]
async fn jobs_age_from_when_the_service_finished_them_and_expired_ones_are_not_found() {
    let h = harness();
    let scope = scope();
    let prompt = h.service.submit_job(launch(scope, "prompt")).await.unwrap().job;
    let finished_at = fielding_core::Clock::now(&h.clock);
    let slow = abandoned(&h, fixtures::scope()).await;
    h.clock.advance(TimeDelta::hours(1));
    // Resumed an hour after its creation: it finishes now.
    let resumed = h.service.get_job(&slow.scope, &slow.id).await.unwrap();
    assert_ne!(resumed.state, JobState::Processing);

    assert_eq!(
        h.store.expire_jobs(finished_at, 10).await.unwrap(),
        0,
        "the cutoff is exclusive"
    );
    let just_after = finished_at.checked_add(TimeDelta::milliseconds(1)).unwrap();
    assert_eq!(h.store.expire_jobs(just_after, 10).await.unwrap(), 1);
    assert!(
        h.store.get_job(&slow.key()).await.unwrap().is_some(),
        "finished an hour later"
    );

    let gone = h.service.get_job(&scope, &prompt.id).await.unwrap_err();
    assert_eq!(gone.code(), "not_found_error");
    let again = h.service.submit_job(launch(scope, "prompt")).await.unwrap();
    assert!(!again.replayed, "the key is free again");
    assert_ne!(again.job.id, prompt.id);
}
