//! `MemoryStore::with_job_retention`: finished jobs older than the
//! retention are swept away by later job writes, so a long-running process
//! holds about one retention period's worth of jobs, never more.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use fielding_core::{
    Clock, FieldingRunJob, FieldingService, FieldingStore, IdempotencyKey, JobOutcome, JobRequest, JobState,
    ManualClock, NewJob, Timestamp, UserId,
};
use fielding_memory::MemoryStore;
use fielding_testkit::fixtures;

const HOUR: Duration = Duration::from_secs(3600);

fn t0() -> Timestamp {
    "2030-01-01T00:00:00Z".parse().expect("a timestamp")
}

fn submission(clock: &ManualClock, key: &str) -> NewJob {
    NewJob {
        scope: fixtures::scope(),
        idempotency_key: IdempotencyKey::parse(key).expect("a valid key"),
        request: JobRequest::LaunchFromDraft {
            end_fielding_at: clock.now().checked_add(TimeDelta::days(30)).expect("in range"),
        },
        actor: UserId::random(),
        trace_id: None,
    }
}

#[tokio::test]
async fn a_busy_service_keeps_about_one_retention_period_of_jobs() {
    let store = MemoryStore::new().with_job_retention(HOUR);
    let clock = ManualClock::new(t0());
    let service = FieldingService::new(Arc::new(store.clone())).with_clock(Arc::new(clock.clone()));
    // A job abandoned while processing, long before everything else.
    let abandoned = fixtures::job(fixtures::scope(), "abandoned", fixtures::launch());
    let abandoned = FieldingRunJob {
        created_at: t0(),
        ..abandoned
    };
    store.create_job(&abandoned).await.unwrap();

    // Six hours of one job every ten seconds: 2,160 jobs, 360 per hour.
    let first = service.submit_job(submission(&clock, "job-0")).await.unwrap().job;
    let mut peak = 0;
    for i in 1..2_160 {
        clock.advance(TimeDelta::seconds(10));
        service
            .submit_job(submission(&clock, &format!("job-{i}")))
            .await
            .unwrap();
        peak = peak.max(store.job_count());
    }
    // The last hour's 360 jobs (the boundary one may still be there), plus
    // the abandoned one.
    assert!(
        (361..=363).contains(&store.job_count()),
        "{} jobs kept",
        store.job_count()
    );
    assert!(peak <= 363, "at most {peak} jobs at once");
    assert_eq!(
        store.get_job(&abandoned.key()).await.unwrap(),
        Some(abandoned),
        "a processing job is never swept"
    );

    // The first job is gone: its GET is a 404 and its key is free again.
    let err = service.get_job(&first.scope, &first.id).await.unwrap_err();
    assert_eq!(err.code(), "not_found_error");
    let again = service.submit_job(submission(&clock, "job-0")).await.unwrap();
    assert!(!again.replayed);
    assert_ne!(again.job.id, first.id);
}

#[tokio::test]
async fn a_burst_is_worked_off_by_later_writes_a_few_at_a_time() {
    let store = MemoryStore::new().with_job_retention(HOUR);
    let mut burst = Vec::new();
    for i in 0..100 {
        let job = fixtures::job(fixtures::scope(), &format!("burst-{i}"), fixtures::launch());
        let job = FieldingRunJob {
            created_at: t0(),
            ..job
        };
        store.create_job(&job).await.unwrap();
        store
            .finish_job(&job.key(), &JobOutcome::Completed, t0())
            .await
            .unwrap();
        burst.push(job);
    }
    assert_eq!(store.job_count(), 100, "nothing is old yet");
    let later = t0().checked_add(TimeDelta::hours(2)).unwrap();
    let mut writes = 0;
    while store.job_count() > 0 {
        // Each write is one job that itself stays processing.
        let job = fixtures::job(fixtures::scope(), &format!("later-{writes}"), fixtures::launch());
        store
            .create_job(&FieldingRunJob {
                created_at: later,
                ..job
            })
            .await
            .unwrap();
        writes += 1;
        let expected_left = 100usize.saturating_sub(4 * writes);
        let burst_left = burst.len() - {
            let mut gone = 0;
            for job in &burst {
                gone += usize::from(store.get_job(&job.key()).await.unwrap().is_none());
            }
            gone
        };
        assert_eq!(burst_left, expected_left, "after {writes} writes");
        if burst_left == 0 {
            break;
        }
    }
    assert_eq!(writes, 25, "four expired jobs per write");
    assert_eq!(store.job_count(), 25, "the later, processing jobs stay");
}

#[tokio::test]
async fn without_retention_or_with_an_unrepresentable_one_nothing_is_swept() {
    for store in [MemoryStore::new(), MemoryStore::new().with_job_retention(Duration::MAX)] {
        let old = fixtures::job(fixtures::scope(), "old", fixtures::launch());
        let old = FieldingRunJob {
            created_at: Timestamp::MIN,
            ..old
        };
        store.create_job(&old).await.unwrap();
        store
            .finish_job(&old.key(), &JobOutcome::Completed, Timestamp::MIN)
            .await
            .unwrap();
        let new = fixtures::job(fixtures::scope(), "new", fixtures::launch());
        let new = FieldingRunJob {
            created_at: Timestamp::MAX,
            ..new
        };
        store.create_job(&new).await.unwrap();
        let kept = store.get_job(&old.key()).await.unwrap().expect("kept");
        assert_eq!(kept.state, JobState::Finished(JobOutcome::Completed));
        // The explicit operation still works on either.
        assert_eq!(store.expire_jobs(Timestamp::MAX, 10).await.unwrap(), 1);
        assert_eq!(store.job_count(), 1);
    }
}
