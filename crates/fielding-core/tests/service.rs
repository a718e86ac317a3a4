//! Integration tests of `FieldingService` over `fielding_memory::MemoryStore`
//! with a `ManualClock`: the lifecycle as callers see it, the order of checks,
//! versions and change records, storage faults, retries and concurrency.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use chrono::TimeDelta;
use fielding_core::lifecycle::Command;
use fielding_core::{
    AccountId, Action, Applied, ChangeRecord, FieldingError, FieldingRun, FieldingRunId, FieldingRunJob,
    FieldingService, FieldingStore, IfMatch, JobCreated, JobId, JobOutcome, ManualClock, RetryPolicy, RunKey, Scope,
    Status, StoreError, Timestamp, UserId, Version, INTERNAL_ERROR_DETAIL,
};
use fielding_memory::MemoryStore;
use fielding_testkit::{fixtures, Fault, Faults, FaultyStore};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

fn t0() -> Timestamp {
    "2030-03-01T09:00:00Z".parse().unwrap()
}

/// `t0()` shifted by `hours`.
fn at(hours: i64) -> Timestamp {
    t0().checked_add(TimeDelta::hours(hours)).unwrap()
}

fn ms(millis: i64) -> TimeDelta {
    TimeDelta::milliseconds(millis)
}

struct Harness {
    store: MemoryStore,
    /// The faults of the store the service writes through.
    faults: Faults,
    clock: ManualClock,
    service: FieldingService,
    actor: UserId,
}

impl Harness {
    fn new() -> Self {
        let store = MemoryStore::new();
        let clock = ManualClock::new(t0());
        let faulty = FaultyStore::new(store.clone());
        let faults = faulty.faults().clone();
        let service = FieldingService::with_clock(Arc::new(faulty), Arc::new(clock.clone()));
        Self {
            store,
            faults,
            clock,
            service,
            actor: UserId::random(),
        }
    }

    fn now(&self) -> Timestamp {
        fielding_core::Clock::now(&self.clock)
    }

    /// Moves the clock to `at`.
    fn set(&self, at: Timestamp) {
        self.clock.set(at);
    }

    /// A run scheduled from `at(24)` to `at(24 * 31)`.
    async fn schedule(&self) -> Applied {
        self.service
            .schedule(fixtures::scope(), at(24), at(24 * 31), self.actor)
            .await
            .expect("schedule")
    }

    /// A run launched now, ending at `at(24 * 30)`.
    async fn launch(&self) -> Applied {
        self.service
            .launch(fixtures::scope(), at(24 * 30), self.actor)
            .await
            .expect("launch")
    }

    /// A stored run in `status` (effective at `t0()` too), at `version`.
    fn seed(&self, status: Status, version: u64) -> FieldingRun {
        let run = fixtures::run().status(status).version(version).at(self.now()).build();
        self.store.seed(run.clone()).expect("seed");
        run
    }

    /// A run that went through the lifecycle to `status` (version > 1).
    async fn walked(&self, status: Status) -> Applied {
        let scheduled = self.schedule().await;
        let key = scheduled.run.key();
        match status {
            Status::Scheduled => scheduled,
            Status::Live => self
                .service
                .launch_now(&key, &tag(&scheduled), self.actor)
                .await
                .unwrap(),
            Status::Paused => {
                let live = self
                    .service
                    .launch_now(&key, &tag(&scheduled), self.actor)
                    .await
                    .unwrap();
                self.service.pause(&key, &tag(&live), self.actor).await.unwrap()
            }
            Status::Completed => self.service.complete(&key, &tag(&scheduled), self.actor).await.unwrap(),
        }
    }

    async fn changes(&self, key: &RunKey) -> Vec<ChangeRecord> {
        self.service.changes(key).await.expect("changes")
    }
}

/// The `If-Match` naming the version of `applied`.
fn tag(applied: &Applied) -> IfMatch {
    IfMatch::version(applied.run.version)
}

fn v(n: u64) -> Version {
    Version::new(n).unwrap()
}

#[track_caller]
fn expect_invalid_state<T: std::fmt::Debug>(result: Result<T, FieldingError>, action: Action, status: Status) {
    match result {
        Err(err) => {
            assert_eq!(err.code(), "invalid_state_error", "{err}");
            assert_eq!(err.http_status(), 422);
            match err {
                FieldingError::InvalidState {
                    action: a, status: s, ..
                } => {
                    assert_eq!((a, s), (action, status), "action and effective status in the refusal");
                }
                other => panic!("expected InvalidState, got {other:?}"),
            }
        }
        Ok(ok) => panic!("expected invalid state ({action} in {status}), got {ok:?}"),
    }
}

#[track_caller]
fn expect_invalid_fields<T: std::fmt::Debug>(result: Result<T, FieldingError>, fields: &[&str]) {
    match result {
        Err(err) => {
            assert_eq!(err.code(), "bad_request_error", "{err}");
            assert_eq!(err.http_status(), 400);
            assert!(matches!(err, FieldingError::Validation { .. }));
            let names: Vec<&str> = err.invalid_params().iter().map(|p| p.name.as_ref()).collect();
            assert_eq!(names, fields);
            for field in fields {
                assert!(err.public_detail().contains(field), "message names {field}: {err}");
            }
        }
        Ok(ok) => panic!("expected a validation error naming {fields:?}, got {ok:?}"),
    }
}

#[track_caller]
fn expect_precondition_failed<T: std::fmt::Debug>(result: Result<T, FieldingError>, current: u64) {
    match result {
        Err(err) => {
            assert_eq!(err.code(), "precondition_failed_error", "{err}");
            assert_eq!(err.http_status(), 412);
            assert!(err.is_retryable());
            match err {
                FieldingError::PreconditionFailed { current: c } => assert_eq!(c.get(), current, "current version"),
                other => panic!("expected PreconditionFailed, got {other:?}"),
            }
        }
        Ok(ok) => panic!("expected 412, got {ok:?}"),
    }
}

#[track_caller]
fn expect_not_found<T: std::fmt::Debug>(result: Result<T, FieldingError>) {
    match result {
        Err(err) => {
            assert_eq!(err.code(), "not_found_error", "{err}");
            assert_eq!(err.http_status(), 404);
            assert!(matches!(err, FieldingError::NotFound { .. }));
        }
        Ok(ok) => panic!("expected 404, got {ok:?}"),
    }
}

#[track_caller]
fn expect_target_group_has_run<T: std::fmt::Debug>(result: Result<T, FieldingError>, scope: Scope) {
    match result {
        Err(FieldingError::TargetGroupHasRun { scope: s }) => assert_eq!(s, scope),
        Err(other) => panic!("expected TargetGroupHasRun, got {other:?}"),
        Ok(ok) => panic!("expected TargetGroupHasRun, got {ok:?}"),
    }
}

/// Change records are exactly versions `first..=last`, one each, all for `run_id`.
#[track_caller]
fn assert_contiguous(changes: &[ChangeRecord], run_id: FieldingRunId, first: u64, last: u64) {
    let versions: Vec<u64> = changes.iter().map(|c| c.version.get()).collect();
    assert_eq!(versions, (first..=last).collect::<Vec<_>>(), "change record versions");
    assert!(changes.iter().all(|c| c.run_id == run_id), "records belong to the run");
}

/// Asserts the store holds exactly `before` (nothing written).
#[track_caller]
fn assert_untouched(h: &Harness, before: &FieldingRun, changes_before: usize) {
    assert_eq!(
        h.store.run(&before.key()).as_ref(),
        Some(before),
        "stored run unchanged"
    );
    assert_eq!(
        h.store.change_records(&before.key()).len(),
        changes_before,
        "no new change record"
    );
}

// ---------------------------------------------------------------------------
// Effective status and time
// ---------------------------------------------------------------------------

#[tokio::test]
async fn get_shows_scheduled_run_as_live_once_start_has_passed() {
    let h = Harness::new();
    let created = h.schedule().await;
    let key = created.run.key();
    h.set(created.run.start_fielding_at.checked_sub(ms(1)).unwrap());
    assert_eq!(h.service.get(&key).await.unwrap().status, Status::Scheduled);
    h.set(created.run.start_fielding_at);
    assert_eq!(h.service.get(&key).await.unwrap().status, Status::Live);
}

#[tokio::test]
async fn get_shows_any_run_as_completed_once_end_is_reached() {
    for status in [Status::Scheduled, Status::Live, Status::Paused] {
        let h = Harness::new();
        let run = h.seed(status, 1);
        h.set(run.end_fielding_at.checked_sub(ms(1)).unwrap());
        assert_ne!(h.service.get(&run.key()).await.unwrap().status, Status::Completed);
        h.set(run.end_fielding_at);
        assert_eq!(
            h.service.get(&run.key()).await.unwrap().status,
            Status::Completed,
            "{status} at its end"
        );
    }
}

#[tokio::test]
async fn get_shows_paused_run_as_paused_before_end() {
    let h = Harness::new();
    let paused = h.walked(Status::Paused).await;
    h.set(paused.run.end_fielding_at.checked_sub(ms(1)).unwrap());
    assert_eq!(h.service.get(&paused.run.key()).await.unwrap().status, Status::Paused);
}

#[tokio::test]
async fn time_alone_never_changes_the_version_or_writes_anything() {
    let h = Harness::new();
    let created = h.schedule().await;
    let key = created.run.key();
    let stored_before = h.store.run(&key).unwrap();
    for at in [created.run.start_fielding_at, created.run.end_fielding_at, at(24 * 400)] {
        h.set(at);
        let seen = h.service.get(&key).await.unwrap();
        assert_eq!(seen.version, v(1), "version at {at}");
        assert_eq!(seen.etag(), created.etag);
    }
    assert_eq!(h.store.run(&key), Some(stored_before), "stored status untouched");
    assert_eq!(h.changes(&key).await.len(), 1);
}

#[tokio::test]
async fn find_returns_the_run_of_a_target_group_with_effective_status() {
    let h = Harness::new();
    let created = h.schedule().await;
    h.set(created.run.start_fielding_at);
    let found = h.service.find(&created.run.scope()).await.unwrap().unwrap();
    assert_eq!(found.id, created.run.id);
    assert_eq!(found.status, Status::Live);
    assert_eq!(h.service.find(&fixtures::scope()).await.unwrap(), None);
}

// ---------------------------------------------------------------------------
// Schedule
// ---------------------------------------------------------------------------

#[tokio::test]
async fn schedule_creates_scheduled_run_at_version_1_with_one_schedule_record() {
    let h = Harness::new();
    let scope = fixtures::scope();
    let created = h.service.schedule(scope, at(1), at(5), h.actor).await.unwrap();
    assert!(created.changed);
    let run = &created.run;
    assert_eq!(run.scope(), scope);
    assert_eq!(run.status, Status::Scheduled);
    assert_eq!(run.version, Version::INITIAL);
    assert_eq!(created.etag.to_string(), "\"1\"");
    assert_eq!((run.start_fielding_at, run.end_fielding_at), (at(1), at(5)));
    assert_eq!((run.last_changed_at, run.last_changed_by), (t0(), h.actor));
    assert_eq!(h.service.get(&run.key()).await.unwrap(), *run);

    let changes = h.changes(&run.key()).await;
    assert_eq!(
        changes,
        vec![ChangeRecord {
            run_id: run.id,
            version: v(1),
            action: Action::Schedule,
            changed_at: t0(),
            changed_by: h.actor,
            status_from: None,
            status_to: Status::Scheduled,
            start_from: None,
            start_to: at(1),
            end_from: None,
            end_to: at(5),
        }]
    );
}

#[tokio::test]
async fn schedule_accepts_start_equal_to_now() {
    let h = Harness::new();
    let created = h
        .service
        .schedule(fixtures::scope(), t0(), at(1), h.actor)
        .await
        .unwrap();
    assert_eq!(created.run.start_fielding_at, t0());
    assert_eq!(created.run.version, v(1));
    // Its start is now, so it is already live.
    assert_eq!(h.service.get(&created.run.key()).await.unwrap().status, Status::Live);
}

#[tokio::test]
async fn schedule_refuses_start_in_the_past_naming_start_fielding_at() {
    let h = Harness::new();
    let past = t0().checked_sub(ms(1)).unwrap();
    expect_invalid_fields(
        h.service.schedule(fixtures::scope(), past, at(1), h.actor).await,
        &["start_fielding_at"],
    );
    assert!(h.store.is_empty());
}

#[tokio::test]
async fn schedule_refuses_end_equal_to_start_naming_end_fielding_at() {
    let h = Harness::new();
    expect_invalid_fields(
        h.service.schedule(fixtures::scope(), at(1), at(1), h.actor).await,
        &["end_fielding_at"],
    );
    assert!(h.store.is_empty());
}

#[tokio::test]
async fn schedule_refuses_end_before_start_naming_end_fielding_at() {
    let h = Harness::new();
    expect_invalid_fields(
        h.service.schedule(fixtures::scope(), at(2), at(1), h.actor).await,
        &["end_fielding_at"],
    );
}

#[tokio::test]
async fn schedule_with_both_dates_bad_reports_two_invalid_params() {
    let h = Harness::new();
    expect_invalid_fields(
        h.service.schedule(fixtures::scope(), at(-2), at(-3), h.actor).await,
        &["start_fielding_at", "end_fielding_at"],
    );
}

#[tokio::test]
async fn schedule_a_second_run_for_the_same_target_group_is_refused_422() {
    let h = Harness::new();
    let first = h.schedule().await;
    let scope = first.run.scope();
    let err = h.service.schedule(scope, at(2), at(3), h.actor).await.unwrap_err();
    assert_eq!((err.code(), err.http_status()), ("invalid_state_error", 422));
    expect_target_group_has_run(Err::<(), _>(err), scope);
    assert_eq!(h.store.len(), 1);
    assert_eq!(h.changes(&first.run.key()).await.len(), 1);
}

#[tokio::test]
async fn schedule_for_another_target_group_of_the_same_project_is_allowed() {
    let h = Harness::new();
    let first = h.schedule().await;
    let sibling = Scope::new(first.run.account_id, first.run.project_id, fixtures::target_group_id());
    h.service.schedule(sibling, at(2), at(3), h.actor).await.unwrap();
    assert_eq!(h.store.len(), 2);
}

#[tokio::test]
async fn applied_run_carries_the_effective_status_like_get() {
    let h = Harness::new();
    // Scheduled to start right now: already live.
    let created = h
        .service
        .schedule(fixtures::scope(), t0(), at(1), h.actor)
        .await
        .unwrap();
    assert_eq!(created.run.status, Status::Live);
    assert_eq!(h.service.get(&created.run.key()).await.unwrap(), created.run);

    // A scheduled run whose start is moved to now: already live.
    let other = h.schedule().await;
    let moved = h
        .service
        .update_dates(&other.run.key(), &tag(&other), t0(), at(5), h.actor)
        .await
        .unwrap();
    assert_eq!(moved.run.status, Status::Live);
    assert_eq!(h.service.get(&other.run.key()).await.unwrap(), moved.run);
}

// ---------------------------------------------------------------------------
// Launch (creation)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn launch_creates_live_run_starting_now_at_version_1() {
    let h = Harness::new();
    let created = h.service.launch(fixtures::scope(), at(10), h.actor).await.unwrap();
    let run = &created.run;
    assert_eq!(run.status, Status::Live);
    assert_eq!(run.version, v(1));
    assert_eq!((run.start_fielding_at, run.end_fielding_at), (t0(), at(10)));
    let changes = h.changes(&run.key()).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].action, Action::Launch);
    assert_eq!(changes[0].status_to, Status::Live);
    assert_eq!(changes[0].status_from, None);
    assert_eq!((changes[0].start_to, changes[0].end_to), (t0(), at(10)));
}

#[tokio::test]
async fn launch_refuses_end_equal_to_now_naming_end_fielding_at() {
    let h = Harness::new();
    expect_invalid_fields(
        h.service.launch(fixtures::scope(), t0(), h.actor).await,
        &["end_fielding_at"],
    );
    assert!(h.store.is_empty());
}

#[tokio::test]
async fn launch_refuses_end_in_the_past_naming_end_fielding_at() {
    let h = Harness::new();
    expect_invalid_fields(
        h.service.launch(fixtures::scope(), at(-1), h.actor).await,
        &["end_fielding_at"],
    );
}

#[tokio::test]
async fn launch_for_a_target_group_with_a_run_is_refused_422() {
    let h = Harness::new();
    let first = h.schedule().await;
    expect_target_group_has_run(
        h.service.launch(first.run.scope(), at(10), h.actor).await,
        first.run.scope(),
    );
    assert_eq!(h.store.len(), 1);
}

// ---------------------------------------------------------------------------
// Update dates
// ---------------------------------------------------------------------------

#[tokio::test]
async fn update_dates_scheduled_moves_both_dates() {
    let h = Harness::new();
    let created = h.schedule().await;
    let key = created.run.key();
    let updated = h
        .service
        .update_dates(&key, &tag(&created), at(2), at(3), h.actor)
        .await
        .unwrap();
    assert!(updated.changed);
    assert_eq!(updated.run.version, v(2));
    assert_eq!(updated.run.status, Status::Scheduled);
    assert_eq!(
        (updated.run.start_fielding_at, updated.run.end_fielding_at),
        (at(2), at(3))
    );
    let last = h.changes(&key).await.pop().unwrap();
    assert_eq!(last.action, Action::UpdateDates);
    assert_eq!(
        (last.status_from, last.status_to),
        (Some(Status::Scheduled), Status::Scheduled)
    );
    assert_eq!((last.start_from, last.start_to), (Some(at(24)), at(2)));
    assert_eq!((last.end_from, last.end_to), (Some(at(24 * 31)), at(3)));
}

#[tokio::test]
async fn update_dates_scheduled_refuses_start_in_the_past_naming_start_fielding_at() {
    let h = Harness::new();
    let created = h.schedule().await;
    expect_invalid_fields(
        h.service
            .update_dates(&created.run.key(), &tag(&created), at(-1), at(3), h.actor)
            .await,
        &["start_fielding_at"],
    );
}

#[tokio::test]
async fn update_dates_scheduled_refuses_end_equal_to_start_naming_end_fielding_at() {
    let h = Harness::new();
    let created = h.schedule().await;
    expect_invalid_fields(
        h.service
            .update_dates(&created.run.key(), &tag(&created), at(3), at(3), h.actor)
            .await,
        &["end_fielding_at"],
    );
}

#[tokio::test]
async fn update_dates_live_moves_the_end() {
    let h = Harness::new();
    let live = h.launch().await;
    h.set(at(1));
    let updated = h
        .service
        .update_dates(&live.run.key(), &tag(&live), t0(), at(50), h.actor)
        .await
        .unwrap();
    assert_eq!(updated.run.status, Status::Live);
    assert_eq!(
        (updated.run.start_fielding_at, updated.run.end_fielding_at),
        (t0(), at(50))
    );
    assert_eq!(updated.run.version, v(2));
}

#[tokio::test]
async fn update_dates_paused_moves_the_end_and_stays_paused() {
    let h = Harness::new();
    let paused = h.walked(Status::Paused).await;
    let updated = h
        .service
        .update_dates(
            &paused.run.key(),
            &tag(&paused),
            paused.run.start_fielding_at,
            at(50),
            h.actor,
        )
        .await
        .unwrap();
    assert_eq!(updated.run.status, Status::Paused);
    assert_eq!(updated.run.end_fielding_at, at(50));
}

#[tokio::test]
async fn update_dates_live_refuses_a_different_start_422() {
    let h = Harness::new();
    let live = h.launch().await;
    expect_invalid_state(
        h.service
            .update_dates(&live.run.key(), &tag(&live), at(1), at(50), h.actor)
            .await,
        Action::UpdateDates,
        Status::Live,
    );
}

#[tokio::test]
async fn update_dates_paused_refuses_a_different_start_422() {
    let h = Harness::new();
    let paused = h.walked(Status::Paused).await;
    expect_invalid_state(
        h.service
            .update_dates(&paused.run.key(), &tag(&paused), at(1), at(50), h.actor)
            .await,
        Action::UpdateDates,
        Status::Paused,
    );
}

#[tokio::test]
async fn update_dates_live_refuses_end_not_after_now_naming_end_fielding_at() {
    let h = Harness::new();
    let live = h.launch().await;
    h.set(at(5));
    let key = live.run.key();
    // After the start but not after now: 400.
    for end in [at(2), at(5)] {
        expect_invalid_fields(
            h.service.update_dates(&key, &tag(&live), t0(), end, h.actor).await,
            &["end_fielding_at"],
        );
    }
}

#[tokio::test]
async fn update_dates_live_refuses_end_not_after_start_naming_end_fielding_at() {
    let h = Harness::new();
    let live = h.launch().await;
    expect_invalid_fields(
        h.service
            .update_dates(&live.run.key(), &tag(&live), t0(), at(-1), h.actor)
            .await,
        &["end_fielding_at"],
    );
}

#[tokio::test]
async fn update_dates_completed_run_is_refused_422() {
    let h = Harness::new();
    let done = h.walked(Status::Completed).await;
    let before = h.store.run(&done.run.key()).unwrap();
    expect_invalid_state(
        h.service
            .update_dates(&done.run.key(), &tag(&done), at(30), at(40), h.actor)
            .await,
        Action::UpdateDates,
        Status::Completed,
    );
    assert_untouched(&h, &before, 2);
}

#[tokio::test]
async fn update_dates_run_completed_because_its_end_passed_is_refused_422() {
    let h = Harness::new();
    let live = h.launch().await;
    h.set(live.run.end_fielding_at);
    expect_invalid_state(
        h.service
            .update_dates(&live.run.key(), &tag(&live), t0(), at(24 * 60), h.actor)
            .await,
        Action::UpdateDates,
        Status::Completed,
    );
}

#[tokio::test]
async fn update_dates_completed_run_with_end_before_start_is_400_validation_before_state() {
    let h = Harness::new();
    let done = h.walked(Status::Completed).await;
    expect_invalid_fields(
        h.service
            .update_dates(&done.run.key(), &tag(&done), at(40), at(30), h.actor)
            .await,
        &["end_fielding_at"],
    );
}

#[tokio::test]
async fn update_dates_to_the_same_dates_succeeds_without_new_version_or_record() {
    for status in [Status::Scheduled, Status::Live, Status::Paused] {
        let h = Harness::new();
        let applied = h.walked(status).await;
        let key = applied.run.key();
        let before = h.store.run(&key).unwrap();
        let records = h.store.change_records(&key).len();
        h.clock.advance(ms(1));
        let same = h
            .service
            .update_dates(
                &key,
                &tag(&applied),
                applied.run.start_fielding_at,
                applied.run.end_fielding_at,
                UserId::random(),
            )
            .await
            .unwrap();
        assert!(!same.changed, "{status}: nothing changed");
        assert_eq!(same.etag, applied.etag, "{status}: same ETag");
        assert_eq!(same.run.status, status);
        assert_untouched(&h, &before, records);
    }
}

#[tokio::test]
async fn update_dates_of_scheduled_run_whose_start_passed_records_it_as_live() {
    let h = Harness::new();
    let created = h.schedule().await;
    h.set(created.run.start_fielding_at.checked_add(ms(1)).unwrap());
    let updated = h
        .service
        .update_dates(
            &created.run.key(),
            &tag(&created),
            created.run.start_fielding_at,
            at(24 * 40),
            h.actor,
        )
        .await
        .unwrap();
    assert_eq!(updated.run.status, Status::Live);
    let last = h.changes(&created.run.key()).await.pop().unwrap();
    assert_eq!((last.status_from, last.status_to), (Some(Status::Live), Status::Live));
}

// ---------------------------------------------------------------------------
// Launch now
// ---------------------------------------------------------------------------

#[tokio::test]
async fn launch_now_scheduled_goes_live_now_keeping_the_duration() {
    let h = Harness::new();
    let created = h
        .service
        .schedule(fixtures::scope(), at(24), at(24 + 7), h.actor)
        .await
        .unwrap();
    h.set(at(2));
    let launched = h
        .service
        .launch_now(&created.run.key(), &tag(&created), h.actor)
        .await
        .unwrap();
    assert_eq!(launched.run.status, Status::Live);
    assert_eq!(
        (launched.run.start_fielding_at, launched.run.end_fielding_at),
        (at(2), at(9))
    );
    assert_eq!(launched.run.version, v(2));
    let last = h.changes(&created.run.key()).await.pop().unwrap();
    assert_eq!(last.action, Action::LaunchNow);
    assert_eq!(
        (last.status_from, last.status_to),
        (Some(Status::Scheduled), Status::Live)
    );
    assert_eq!((last.start_from, last.start_to), (Some(at(24)), at(2)));
    assert_eq!((last.end_from, last.end_to), (Some(at(31)), at(9)));
}

#[tokio::test]
async fn launch_now_refused_when_live() {
    let h = Harness::new();
    let live = h.walked(Status::Live).await;
    expect_invalid_state(
        h.service.launch_now(&live.run.key(), &tag(&live), h.actor).await,
        Action::LaunchNow,
        Status::Live,
    );
}

#[tokio::test]
async fn launch_now_refused_when_paused() {
    let h = Harness::new();
    let paused = h.walked(Status::Paused).await;
    expect_invalid_state(
        h.service.launch_now(&paused.run.key(), &tag(&paused), h.actor).await,
        Action::LaunchNow,
        Status::Paused,
    );
}

#[tokio::test]
async fn launch_now_refused_when_completed() {
    let h = Harness::new();
    let done = h.walked(Status::Completed).await;
    expect_invalid_state(
        h.service.launch_now(&done.run.key(), &tag(&done), h.actor).await,
        Action::LaunchNow,
        Status::Completed,
    );
}

// ---------------------------------------------------------------------------
// Pause / resume
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pause_live_run_goes_paused() {
    let h = Harness::new();
    let live = h.launch().await;
    let paused = h.service.pause(&live.run.key(), &tag(&live), h.actor).await.unwrap();
    assert_eq!(paused.run.status, Status::Paused);
    assert_eq!(paused.run.version, v(2));
    let last = h.changes(&live.run.key()).await.pop().unwrap();
    assert_eq!(last.action, Action::Pause);
    assert_eq!((last.status_from, last.status_to), (Some(Status::Live), Status::Paused));
}

#[tokio::test]
async fn pause_refused_when_scheduled() {
    let h = Harness::new();
    let created = h.schedule().await;
    expect_invalid_state(
        h.service.pause(&created.run.key(), &tag(&created), h.actor).await,
        Action::Pause,
        Status::Scheduled,
    );
}

#[tokio::test]
async fn pause_refused_when_paused() {
    let h = Harness::new();
    let paused = h.walked(Status::Paused).await;
    expect_invalid_state(
        h.service.pause(&paused.run.key(), &tag(&paused), h.actor).await,
        Action::Pause,
        Status::Paused,
    );
}

#[tokio::test]
async fn pause_refused_when_completed() {
    let h = Harness::new();
    let done = h.walked(Status::Completed).await;
    expect_invalid_state(
        h.service.pause(&done.run.key(), &tag(&done), h.actor).await,
        Action::Pause,
        Status::Completed,
    );
}

#[tokio::test]
async fn resume_paused_run_goes_live() {
    let h = Harness::new();
    let paused = h.walked(Status::Paused).await;
    let resumed = h
        .service
        .resume(&paused.run.key(), &tag(&paused), h.actor)
        .await
        .unwrap();
    assert_eq!(resumed.run.status, Status::Live);
    assert_eq!(resumed.run.version.get(), paused.run.version.get() + 1);
    let last = h.changes(&paused.run.key()).await.pop().unwrap();
    assert_eq!(last.action, Action::Resume);
    assert_eq!((last.status_from, last.status_to), (Some(Status::Paused), Status::Live));
}

#[tokio::test]
async fn resume_paused_run_after_its_end_is_refused_422() {
    let h = Harness::new();
    let paused = h.walked(Status::Paused).await;
    h.set(paused.run.end_fielding_at);
    expect_invalid_state(
        h.service.resume(&paused.run.key(), &tag(&paused), h.actor).await,
        Action::Resume,
        Status::Completed,
    );
}

#[tokio::test]
async fn resume_refused_when_scheduled() {
    let h = Harness::new();
    let created = h.schedule().await;
    expect_invalid_state(
        h.service.resume(&created.run.key(), &tag(&created), h.actor).await,
        Action::Resume,
        Status::Scheduled,
    );
}

#[tokio::test]
async fn resume_refused_when_live() {
    let h = Harness::new();
    let live = h.launch().await;
    expect_invalid_state(
        h.service.resume(&live.run.key(), &tag(&live), h.actor).await,
        Action::Resume,
        Status::Live,
    );
}

#[tokio::test]
async fn resume_refused_when_completed() {
    let h = Harness::new();
    let done = h.walked(Status::Completed).await;
    expect_invalid_state(
        h.service.resume(&done.run.key(), &tag(&done), h.actor).await,
        Action::Resume,
        Status::Completed,
    );
}

// ---------------------------------------------------------------------------
// Complete
// ---------------------------------------------------------------------------

async fn complete_from(status: Status) {
    let h = Harness::new();
    let applied = h.walked(status).await;
    let done = h
        .service
        .complete(&applied.run.key(), &tag(&applied), h.actor)
        .await
        .unwrap();
    assert_eq!(done.run.status, Status::Completed);
    assert_eq!(
        (done.run.start_fielding_at, done.run.end_fielding_at),
        (applied.run.start_fielding_at, applied.run.end_fielding_at)
    );
    let last = h.changes(&applied.run.key()).await.pop().unwrap();
    assert_eq!(last.action, Action::Complete);
    assert_eq!((last.status_from, last.status_to), (Some(status), Status::Completed));
}

#[tokio::test]
async fn complete_scheduled_run_goes_completed() {
    complete_from(Status::Scheduled).await;
}

#[tokio::test]
async fn complete_live_run_goes_completed() {
    complete_from(Status::Live).await;
}

#[tokio::test]
async fn complete_paused_run_goes_completed() {
    complete_from(Status::Paused).await;
}

#[tokio::test]
async fn complete_refused_when_completed() {
    let h = Harness::new();
    let done = h.walked(Status::Completed).await;
    expect_invalid_state(
        h.service.complete(&done.run.key(), &tag(&done), h.actor).await,
        Action::Complete,
        Status::Completed,
    );
}

#[tokio::test]
async fn complete_refused_when_end_has_passed() {
    let h = Harness::new();
    let live = h.launch().await;
    h.set(live.run.end_fielding_at);
    expect_invalid_state(
        h.service.complete(&live.run.key(), &tag(&live), h.actor).await,
        Action::Complete,
        Status::Completed,
    );
}

// ---------------------------------------------------------------------------
// Relaunch
// ---------------------------------------------------------------------------

#[tokio::test]
async fn relaunch_completed_run_before_its_end_goes_live_keeping_start() {
    let h = Harness::new();
    let live = h.launch().await;
    h.set(at(1));
    let done = h.service.complete(&live.run.key(), &tag(&live), h.actor).await.unwrap();
    h.set(at(2));
    let relaunched = h.service.relaunch(&live.run.key(), &tag(&done), h.actor).await.unwrap();
    assert_eq!(relaunched.run.status, Status::Live);
    assert_eq!(relaunched.run.start_fielding_at, t0());
    assert_eq!(relaunched.run.end_fielding_at, live.run.end_fielding_at);
    assert_eq!(relaunched.run.version, v(3));
    let last = h.changes(&live.run.key()).await.pop().unwrap();
    assert_eq!(last.action, Action::Relaunch);
    assert_eq!(
        (last.status_from, last.status_to),
        (Some(Status::Completed), Status::Live)
    );
}

#[tokio::test]
async fn relaunch_run_completed_before_it_started_starts_now() {
    let h = Harness::new();
    let done = h.walked(Status::Completed).await; // scheduled for at(24), completed at t0
    assert!(done.run.start_fielding_at > at(1));
    h.set(at(1));
    let relaunched = h.service.relaunch(&done.run.key(), &tag(&done), h.actor).await.unwrap();
    assert_eq!(relaunched.run.start_fielding_at, at(1));
    assert_eq!(relaunched.run.end_fielding_at, done.run.end_fielding_at);
    let last = h.changes(&done.run.key()).await.pop().unwrap();
    assert_eq!(
        (last.start_from, last.start_to),
        (Some(done.run.start_fielding_at), at(1))
    );
}

#[tokio::test]
async fn relaunch_completed_run_after_its_end_is_refused_422() {
    let h = Harness::new();
    let done = h.walked(Status::Completed).await;
    h.set(done.run.end_fielding_at);
    expect_invalid_state(
        h.service.relaunch(&done.run.key(), &tag(&done), h.actor).await,
        Action::Relaunch,
        Status::Completed,
    );
}

#[tokio::test]
async fn relaunch_refused_when_scheduled() {
    let h = Harness::new();
    let created = h.schedule().await;
    expect_invalid_state(
        h.service.relaunch(&created.run.key(), &tag(&created), h.actor).await,
        Action::Relaunch,
        Status::Scheduled,
    );
}

#[tokio::test]
async fn relaunch_refused_when_live() {
    let h = Harness::new();
    let live = h.launch().await;
    expect_invalid_state(
        h.service.relaunch(&live.run.key(), &tag(&live), h.actor).await,
        Action::Relaunch,
        Status::Live,
    );
}

#[tokio::test]
async fn relaunch_refused_when_paused() {
    let h = Harness::new();
    let paused = h.walked(Status::Paused).await;
    expect_invalid_state(
        h.service.relaunch(&paused.run.key(), &tag(&paused), h.actor).await,
        Action::Relaunch,
        Status::Paused,
    );
}

// ---------------------------------------------------------------------------
// Order of checks: not found, precondition, validation, state
// ---------------------------------------------------------------------------

/// Runs every command on `key` with `if_match` and returns each error (bad
/// dates for the update); panics if any succeeds.
async fn every_command(h: &Harness, key: &RunKey, if_match: &IfMatch) -> Vec<(&'static str, FieldingError)> {
    let s = &h.service;
    let a = h.actor;
    let mut out = Vec::new();
    let mut push = |name, r: Result<Applied, FieldingError>| match r {
        Err(e) => out.push((name, e)),
        Ok(ok) => panic!("{name} unexpectedly succeeded: {ok:?}"),
    };
    push("update_dates", s.update_dates(key, if_match, at(-5), at(-6), a).await);
    push("launch_now", s.launch_now(key, if_match, a).await);
    push("pause", s.pause(key, if_match, a).await);
    push("resume", s.resume(key, if_match, a).await);
    push("complete", s.complete(key, if_match, a).await);
    push("relaunch", s.relaunch(key, if_match, a).await);
    out
}

#[tokio::test]
async fn not_found_for_an_unknown_run_id() {
    let h = Harness::new();
    let created = h.schedule().await;
    let key = created.run.scope().run(FieldingRunId::generate());
    expect_not_found(h.service.get(&key).await);
    expect_not_found(h.service.changes(&key).await);
    for (name, err) in every_command(&h, &key, &IfMatch::Any).await {
        assert_eq!(err.http_status(), 404, "{name}: {err}");
    }
}

#[tokio::test]
async fn not_found_when_only_the_account_differs() {
    let h = Harness::new();
    let created = h.schedule().await;
    let mut key = created.run.key();
    key.scope.account_id = AccountId::new(if key.scope.account_id.get() == 1 { 2 } else { 1 }).unwrap();
    assert_ne!(key, created.run.key());
    expect_not_found(h.service.get(&key).await);
    expect_not_found(h.service.changes(&key).await);
    expect_not_found(h.service.pause(&key, &IfMatch::Any, h.actor).await);
    expect_not_found(h.service.complete(&key, &tag(&created), h.actor).await);
    assert_eq!(h.store.run(&created.run.key()).unwrap().version, v(1));
}

#[tokio::test]
async fn not_found_when_only_the_project_differs() {
    let h = Harness::new();
    let created = h.schedule().await;
    let mut key = created.run.key();
    key.scope.project_id = fixtures::project_id();
    expect_not_found(h.service.get(&key).await);
    expect_not_found(h.service.changes(&key).await);
    expect_not_found(h.service.complete(&key, &tag(&created), h.actor).await);
    assert_eq!(h.store.run(&created.run.key()).unwrap().version, v(1));
}

#[tokio::test]
async fn not_found_when_only_the_target_group_differs() {
    let h = Harness::new();
    let created = h.schedule().await;
    let mut key = created.run.key();
    key.scope.target_group_id = fixtures::target_group_id();
    expect_not_found(h.service.get(&key).await);
    expect_not_found(h.service.changes(&key).await);
    expect_not_found(h.service.complete(&key, &tag(&created), h.actor).await);
    assert_eq!(h.store.run(&created.run.key()).unwrap().version, v(1));
}

#[tokio::test]
async fn not_found_comes_before_the_precondition() {
    let h = Harness::new();
    let key = fixtures::scope().run(FieldingRunId::generate());
    let stale = IfMatch::parse("\"999\"").unwrap();
    for (name, err) in every_command(&h, &key, &stale).await {
        assert_eq!(err.code(), "not_found_error", "{name}: {err}");
    }
}

#[tokio::test]
async fn stale_if_match_with_bad_dates_is_412_not_400() {
    let h = Harness::new();
    let created = h.schedule().await;
    let key = created.run.key();
    let current = h.service.launch_now(&key, &tag(&created), h.actor).await.unwrap();
    // Stale tag and end before start and a start in the past.
    expect_precondition_failed(
        h.service
            .update_dates(&key, &tag(&created), at(-5), at(-6), h.actor)
            .await,
        current.run.version.get(),
    );
}

#[tokio::test]
async fn stale_if_match_on_a_completed_run_is_412_not_422() {
    let h = Harness::new();
    let done = h.walked(Status::Completed).await;
    let stale = IfMatch::version(v(1));
    for (name, err) in every_command(&h, &done.run.key(), &stale).await {
        assert_eq!(err.http_status(), 412, "{name}: {err}");
        assert!(
            matches!(err, FieldingError::PreconditionFailed { current } if current == v(2)),
            "{name}: carries the current version"
        );
    }
}

#[tokio::test]
async fn precondition_failure_carries_the_current_version_and_writes_nothing() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 7);
    expect_precondition_failed(h.service.pause(&run.key(), &IfMatch::version(v(6)), h.actor).await, 7);
    expect_precondition_failed(h.service.pause(&run.key(), &IfMatch::version(v(8)), h.actor).await, 7);
    assert_untouched(&h, &run, 1);
}

#[tokio::test]
async fn weak_etag_of_the_current_version_never_matches_412() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 3);
    let weak = IfMatch::parse("W/\"3\"").unwrap();
    expect_precondition_failed(h.service.pause(&run.key(), &weak, h.actor).await, 3);
    assert_untouched(&h, &run, 1);
}

#[tokio::test]
async fn if_match_any_matches_whatever_the_current_version() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 41);
    let paused = h.service.pause(&run.key(), &IfMatch::Any, h.actor).await.unwrap();
    assert_eq!(paused.run.version, v(42));
    let resumed = h.service.resume(&run.key(), &IfMatch::Any, h.actor).await.unwrap();
    assert_eq!(resumed.run.version, v(43));
}

#[tokio::test]
async fn if_match_list_containing_the_current_version_matches() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 5);
    let list = IfMatch::parse("\"1\", W/\"5\", \"5\"").unwrap();
    assert_eq!(
        h.service.pause(&run.key(), &list, h.actor).await.unwrap().run.version,
        v(6)
    );
}

// ---------------------------------------------------------------------------
// Versions, last_changed_* and change records
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_successful_change_bumps_version_by_one_and_records_who_when_what() {
    let h = Harness::new();
    let created = h.schedule().await;
    let key = created.run.key();
    type Step = (fn(&FieldingRun) -> Command, Action, Status);
    let steps: Vec<Step> = vec![
        (
            |_| Command::UpdateDates {
                start_fielding_at: at(10),
                end_fielding_at: at(100),
            },
            Action::UpdateDates,
            Status::Scheduled,
        ),
        (|_| Command::LaunchNow, Action::LaunchNow, Status::Live),
        (|_| Command::Pause, Action::Pause, Status::Paused),
        (
            |r| Command::UpdateDates {
                start_fielding_at: r.start_fielding_at,
                end_fielding_at: at(200),
            },
            Action::UpdateDates,
            Status::Paused,
        ),
        (|_| Command::Resume, Action::Resume, Status::Live),
        (|_| Command::Complete, Action::Complete, Status::Completed),
        (|_| Command::Relaunch, Action::Relaunch, Status::Live),
    ];
    let mut previous = created;
    for (i, (command, action, status)) in steps.into_iter().enumerate() {
        h.clock.advance(TimeDelta::hours(1));
        let actor = UserId::random();
        let before = h.service.get(&key).await.unwrap();
        let command = command(&before);
        let applied = h
            .service
            .execute(&key, &tag(&previous), &command, actor)
            .await
            .unwrap_or_else(|e| panic!("step {i} {action}: {e}"));
        let version = previous.run.version.get() + 1;
        assert!(applied.changed);
        assert_eq!(applied.run.version.get(), version, "step {i} {action}");
        assert_eq!(applied.etag, applied.run.version.etag());
        assert_eq!(applied.run.status, status, "step {i} {action}");
        assert_eq!(applied.run.last_changed_at, h.now(), "step {i} {action}");
        assert_eq!(applied.run.last_changed_by, actor, "step {i} {action}");
        assert_eq!(h.service.get(&key).await.unwrap(), applied.run);

        let changes = h.changes(&key).await;
        assert_contiguous(&changes, key.id, 1, version);
        let last = changes.last().unwrap();
        assert_eq!(
            *last,
            ChangeRecord {
                run_id: key.id,
                version: v(version),
                action,
                changed_at: h.now(),
                changed_by: actor,
                status_from: Some(before.status),
                status_to: status,
                start_from: Some(before.start_fielding_at),
                start_to: applied.run.start_fielding_at,
                end_from: Some(before.end_fielding_at),
                end_to: applied.run.end_fielding_at,
            },
            "step {i} {action}"
        );
        previous = applied;
    }
}

#[tokio::test]
async fn refused_commands_write_nothing() {
    let h = Harness::new();
    let done = h.walked(Status::Completed).await;
    // After the end, even relaunch is refused.
    h.set(done.run.end_fielding_at);
    let before = h.store.run(&done.run.key()).unwrap();
    let errors = every_command(&h, &done.run.key(), &tag(&done)).await;
    assert_eq!(errors.len(), 6);
    assert_untouched(&h, &before, 2);
}

#[tokio::test]
async fn change_at_the_highest_storable_version_is_refused_and_writes_nothing() {
    let h = Harness::new();
    let run = h.seed(Status::Live, Version::MAX.get());
    expect_invalid_state(
        h.service
            .pause(&run.key(), &IfMatch::version(Version::MAX), h.actor)
            .await,
        Action::Pause,
        Status::Live,
    );
    assert_untouched(&h, &run, 1);
}

// ---------------------------------------------------------------------------
// Storage faults
// ---------------------------------------------------------------------------

#[tokio::test]
async fn storage_fault_is_an_internal_error_without_its_details() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 1);
    h.faults.inject(Fault::Storage, 1);
    let err = h.service.pause(&run.key(), &IfMatch::Any, h.actor).await.unwrap_err();
    assert_eq!(err.code(), "unexpected_internal_error");
    assert_eq!(err.http_status(), 500);
    assert!(matches!(err, FieldingError::Storage { .. }));
    assert!(!err.is_retryable());
    assert_eq!(err.public_detail(), INTERNAL_ERROR_DETAIL);
    assert!(!err.public_detail().contains("injected"));
    assert!(!err.to_string().contains("injected"));
    assert_untouched(&h, &run, 1);
    // The fault is used up: the same call now works.
    assert_eq!(h.faults.pending(Fault::Storage), 0);
    h.service.pause(&run.key(), &IfMatch::Any, h.actor).await.unwrap();
}

#[tokio::test]
async fn storage_fault_on_create_is_an_internal_error_and_creates_nothing() {
    let h = Harness::new();
    h.faults.inject(Fault::Storage, 1);
    let err = h
        .service
        .schedule(fixtures::scope(), at(1), at(2), h.actor)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unexpected_internal_error");
    assert!(!err.public_detail().contains("injected"));
    assert!(h.store.is_empty());
}

#[tokio::test]
async fn storage_fault_on_get_and_changes_is_an_internal_error() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 1);
    h.faults.inject(Fault::Storage, 2);
    assert_eq!(
        h.service.get(&run.key()).await.unwrap_err().code(),
        "unexpected_internal_error"
    );
    assert_eq!(
        h.service.changes(&run.key()).await.unwrap_err().code(),
        "unexpected_internal_error"
    );
    assert!(h.service.get(&run.key()).await.is_ok());
}

#[tokio::test]
async fn transient_storage_fault_is_retryable() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 1);
    h.faults.inject(Fault::TransientStorage, 1);
    let err = h.service.pause(&run.key(), &IfMatch::Any, h.actor).await.unwrap_err();
    assert_eq!(err.code(), "unexpected_internal_error");
    assert!(err.is_retryable());
    assert!(!err.public_detail().contains("injected"));
    h.service.pause(&run.key(), &IfMatch::Any, h.actor).await.unwrap();
}

#[tokio::test]
async fn conflict_fault_is_412_and_writes_nothing() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 4);
    h.faults.inject(Fault::Conflict, 1);
    let err = h
        .service
        .pause(&run.key(), &IfMatch::version(v(4)), h.actor)
        .await
        .unwrap_err();
    assert!(matches!(err, FieldingError::PreconditionFailed { .. }), "{err:?}");
    assert_eq!((err.code(), err.http_status()), ("precondition_failed_error", 412));
    assert_untouched(&h, &run, 1);
    assert_eq!(h.faults.pending(Fault::Conflict), 0);
}

#[tokio::test]
async fn conflict_fault_is_not_used_up_by_a_refused_command() {
    let h = Harness::new();
    let run = h.seed(Status::Scheduled, 1);
    h.faults.inject(Fault::Conflict, 1);
    expect_invalid_state(
        h.service.pause(&run.key(), &IfMatch::Any, h.actor).await,
        Action::Pause,
        Status::Scheduled,
    );
    assert_eq!(h.faults.pending(Fault::Conflict), 1, "no compare-and-swap happened");
}

// ---------------------------------------------------------------------------
// execute_with_retry
// ---------------------------------------------------------------------------

fn extend_end_by_an_hour(run: &FieldingRun) -> Command {
    Command::UpdateDates {
        start_fielding_at: run.start_fielding_at,
        end_fielding_at: run.end_fielding_at.checked_add(TimeDelta::hours(1)).unwrap(),
    }
}

#[tokio::test]
async fn execute_with_retry_succeeds_after_fewer_conflicts_than_attempts() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 1);
    h.faults.inject(Fault::Conflict, 3);
    let calls = AtomicU32::new(0);
    let applied = h
        .service
        .execute_with_retry(&run.key(), h.actor, &RetryPolicy::immediate(4), |r| {
            calls.fetch_add(1, Ordering::SeqCst);
            extend_end_by_an_hour(r)
        })
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4, "three lost races, then a win");
    assert_eq!(applied.run.version, v(2), "exactly one write");
    assert_eq!(
        applied.run.end_fielding_at,
        run.end_fielding_at.checked_add(TimeDelta::hours(1)).unwrap()
    );
    assert_eq!(h.store.change_records(&run.key()).len(), 2);
    assert_eq!(h.faults.pending(Fault::Conflict), 0);
}

#[tokio::test]
async fn execute_with_retry_gives_up_with_412_after_max_attempts() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 1);
    h.faults.inject(Fault::Conflict, 5);
    let calls = AtomicU32::new(0);
    let result = h
        .service
        .execute_with_retry(&run.key(), h.actor, &RetryPolicy::immediate(3), |r| {
            calls.fetch_add(1, Ordering::SeqCst);
            extend_end_by_an_hour(r)
        })
        .await;
    assert!(
        matches!(result, Err(FieldingError::PreconditionFailed { .. })),
        "{result:?}"
    );
    assert_eq!(result.unwrap_err().http_status(), 412);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(h.faults.pending(Fault::Conflict), 2, "exactly 3 attempts used");
    assert_untouched(&h, &run, 1);
}

#[tokio::test]
async fn execute_with_retry_gives_up_when_conflicts_equal_attempts() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 1);
    h.faults.inject(Fault::Conflict, 2);
    let result = h
        .service
        .execute_with_retry(&run.key(), h.actor, &RetryPolicy::immediate(2), extend_end_by_an_hour)
        .await;
    assert_eq!(result.unwrap_err().http_status(), 412);
    assert_untouched(&h, &run, 1);
}

#[tokio::test]
async fn execute_with_retry_does_not_retry_invalid_state() {
    let h = Harness::new();
    let run = h.seed(Status::Scheduled, 1);
    let calls = AtomicU32::new(0);
    let result = h
        .service
        .execute_with_retry(&run.key(), h.actor, &RetryPolicy::immediate(5), |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            Command::Pause
        })
        .await;
    expect_invalid_state(result, Action::Pause, Status::Scheduled);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a 422 is returned at once");
}

#[tokio::test]
async fn execute_with_retry_does_not_retry_validation_errors() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 1);
    let calls = AtomicU32::new(0);
    let result = h
        .service
        .execute_with_retry(&run.key(), h.actor, &RetryPolicy::immediate(5), |r| {
            calls.fetch_add(1, Ordering::SeqCst);
            Command::UpdateDates {
                start_fielding_at: r.start_fielding_at,
                end_fielding_at: r.start_fielding_at,
            }
        })
        .await;
    expect_invalid_fields(result, &["end_fielding_at"]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn execute_with_retry_does_not_retry_storage_faults() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 1);
    h.faults.inject(Fault::TransientStorage, 1);
    let calls = AtomicU32::new(0);
    let result = h
        .service
        .execute_with_retry(&run.key(), h.actor, &RetryPolicy::immediate(5), |r| {
            calls.fetch_add(1, Ordering::SeqCst);
            extend_end_by_an_hour(r)
        })
        .await;
    assert_eq!(result.unwrap_err().code(), "unexpected_internal_error");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the load failed before the closure ran"
    );
    assert_untouched(&h, &run, 1);
}

#[tokio::test]
async fn execute_with_retry_on_a_missing_run_is_404() {
    let h = Harness::new();
    let key = fixtures::scope().run(FieldingRunId::generate());
    expect_not_found(
        h.service
            .execute_with_retry(&key, h.actor, &RetryPolicy::immediate(3), extend_end_by_an_hour)
            .await,
    );
}

#[tokio::test]
async fn execute_with_retry_shows_the_closure_the_effective_status() {
    let h = Harness::new();
    let created = h.schedule().await;
    h.set(created.run.start_fielding_at);
    let seen = std::sync::Mutex::new(None);
    h.service
        .execute_with_retry(&created.run.key(), h.actor, &RetryPolicy::immediate(1), |r| {
            *seen.lock().unwrap() = Some(r.status);
            Command::Pause
        })
        .await
        .unwrap();
    assert_eq!(seen.into_inner().unwrap(), Some(Status::Live));
}

#[tokio::test]
async fn execute_with_retry_with_real_backoff_recovers_from_conflicts() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 1);
    h.faults.inject(Fault::Conflict, 3);
    let applied = h
        .service
        .execute_with_retry(&run.key(), h.actor, &RetryPolicy::default(), extend_end_by_an_hour)
        .await
        .unwrap();
    assert_eq!(applied.run.version, v(2));
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

/// A `MemoryStore` that yields to the scheduler before every operation, so
/// concurrent tasks interleave between the service's read and its
/// compare-and-swap (the in-memory store alone never suspends).
#[derive(Debug, Clone)]
struct YieldingStore(MemoryStore);

#[async_trait::async_trait]
impl FieldingStore for YieldingStore {
    async fn insert(&self, run: &FieldingRun, change: &ChangeRecord) -> Result<(), StoreError> {
        tokio::task::yield_now().await;
        self.0.insert(run, change).await
    }

    async fn get(&self, key: &RunKey) -> Result<Option<FieldingRun>, StoreError> {
        tokio::task::yield_now().await;
        self.0.get(key).await
    }

    async fn find_by_target_group(&self, scope: &Scope) -> Result<Option<FieldingRun>, StoreError> {
        tokio::task::yield_now().await;
        self.0.find_by_target_group(scope).await
    }

    async fn compare_and_swap(
        &self,
        expected: Version,
        run: &FieldingRun,
        change: &ChangeRecord,
    ) -> Result<(), StoreError> {
        tokio::task::yield_now().await;
        self.0.compare_and_swap(expected, run, change).await
    }

    async fn changes(&self, key: &RunKey) -> Result<Vec<ChangeRecord>, StoreError> {
        tokio::task::yield_now().await;
        self.0.changes(key).await
    }

    async fn create_job(&self, job: &FieldingRunJob) -> Result<JobCreated, StoreError> {
        tokio::task::yield_now().await;
        self.0.create_job(job).await
    }

    async fn get_job(&self, scope: &Scope, id: &JobId) -> Result<Option<FieldingRunJob>, StoreError> {
        tokio::task::yield_now().await;
        self.0.get_job(scope, id).await
    }

    async fn finish_job(
        &self,
        scope: &Scope,
        id: &JobId,
        outcome: &JobOutcome,
    ) -> Result<Option<FieldingRunJob>, StoreError> {
        tokio::task::yield_now().await;
        self.0.finish_job(scope, id, outcome).await
    }
}

impl Harness {
    /// A harness whose service writes through a [`YieldingStore`].
    fn interleaving() -> Self {
        let h = Self::new();
        let service = FieldingService::with_clock(Arc::new(YieldingStore(h.store.clone())), Arc::new(h.clock.clone()));
        Self { service, ..h }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cas_writers_lose_no_update() {
    const TASKS: u64 = 8;
    const WINS_EACH: u64 = 25;
    let h = Harness::interleaving();
    let live = h.launch().await;
    let key = live.run.key();
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let service = h.service.clone();
        let actor = UserId::random();
        handles.push(tokio::spawn(async move {
            let (mut wins, mut losses) = (0u64, 0u64);
            while wins < WINS_EACH {
                let run = service.get(&key).await.unwrap();
                let end = run.end_fielding_at.checked_add(TimeDelta::minutes(1)).unwrap();
                match service
                    .update_dates(&key, &IfMatch::version(run.version), run.start_fielding_at, end, actor)
                    .await
                {
                    Ok(applied) => {
                        assert!(applied.changed);
                        wins += 1;
                    }
                    Err(FieldingError::PreconditionFailed { current }) => {
                        assert!(current > run.version, "lost to a newer version");
                        losses += 1;
                    }
                    Err(other) => panic!("unexpected error: {other}"),
                }
                tokio::task::yield_now().await;
            }
            (wins, losses)
        }));
    }
    let (mut total, mut lost_races) = (0, 0);
    for handle in handles {
        let (wins, losses) = handle.await.unwrap();
        total += wins;
        lost_races += losses;
    }
    assert_eq!(total, TASKS * WINS_EACH);
    assert!(lost_races > 0, "the writers really raced");
    let last = h.service.get(&key).await.unwrap();
    assert_eq!(last.version.get(), 1 + total, "version == 1 + successes");
    assert_eq!(
        last.end_fielding_at,
        live.run
            .end_fielding_at
            .checked_add(TimeDelta::minutes(total as i64))
            .unwrap(),
        "every success built on the previous one"
    );
    let changes = h.changes(&key).await;
    assert_contiguous(&changes, key.id, 1, 1 + total);
    for pair in changes.windows(2) {
        assert_eq!(pair[0].end_to, pair[1].end_from.unwrap(), "records chain");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_execute_with_retry_applies_every_command_once() {
    const TASKS: u64 = 8;
    const EACH: u64 = 10;
    let h = Harness::interleaving();
    let live = h.launch().await;
    let key = live.run.key();
    let policy = RetryPolicy {
        max_attempts: 10_000,
        ..RetryPolicy::default()
    };
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let service = h.service.clone();
        let policy = policy.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..EACH {
                service
                    .execute_with_retry(&key, UserId::random(), &policy, extend_end_by_an_hour)
                    .await
                    .unwrap();
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let last = h.service.get(&key).await.unwrap();
    assert_eq!(last.version.get(), 1 + TASKS * EACH);
    assert_eq!(
        last.end_fielding_at,
        live.run
            .end_fielding_at
            .checked_add(TimeDelta::hours((TASKS * EACH) as i64))
            .unwrap()
    );
    assert_contiguous(&h.changes(&key).await, key.id, 1, 1 + TASKS * EACH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_schedules_for_one_target_group_create_exactly_one_run() {
    let h = Harness::interleaving();
    let scope = fixtures::scope();
    let mut handles = Vec::new();
    for _ in 0..16 {
        let service = h.service.clone();
        handles.push(tokio::spawn(async move {
            service.schedule(scope, at(1), at(2), UserId::random()).await
        }));
    }
    let mut created = 0;
    for handle in handles {
        match handle.await.unwrap() {
            Ok(_) => created += 1,
            Err(FieldingError::TargetGroupHasRun { scope: s }) => assert_eq!(s, scope),
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(h.store.len(), 1);
}

#[tokio::test]
async fn a_start_moved_to_exactly_now_is_stored_and_recorded_as_live() {
    let clock = fielding_core::ManualClock::new("2030-01-01T00:00:00Z".parse().unwrap());
    let store = fielding_memory::MemoryStore::new();
    let service = fielding_core::FieldingService::with_clock(
        std::sync::Arc::new(store.clone()),
        std::sync::Arc::new(clock.clone()),
    );
    let now = fielding_core::Clock::now(&clock);
    let later = |days| now.checked_add(chrono::TimeDelta::days(days)).unwrap();
    let me = fielding_core::UserId::random();
    let scope = fielding_testkit::fixtures::scope();
    let created = service.schedule(scope, later(1), later(2), me).await.unwrap();
    let key = created.run.key();
    let moved = service
        .update_dates(
            &key,
            &fielding_core::IfMatch::version(created.run.version),
            now,
            later(2),
            me,
        )
        .await
        .unwrap();
    assert_eq!(moved.run.status, fielding_core::Status::Live);
    assert_eq!(
        store.run(&key).unwrap().status,
        fielding_core::Status::Live,
        "stored status"
    );
    assert_eq!(
        store.change_records(&key).last().unwrap().status_to,
        fielding_core::Status::Live
    );
}

/// `If-Match: *` holds for any current version, so a writer that loses
/// the race between its read and its write decides again instead of
/// answering 412; a specific ETag still loses (tested above).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_with_if_match_any_all_succeed() {
    const TASKS: u64 = 8;
    const WRITES_EACH: u64 = 25;
    let h = Harness::interleaving();
    let live = h.launch().await;
    let key = live.run.key();
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let service = h.service.clone();
        let actor = UserId::random();
        let start = live.run.start_fielding_at;
        handles.push(tokio::spawn(async move {
            for i in 0..WRITES_EACH {
                // Distinct ends, so every write is a real change.
                let end = at(24 * 60 + (task * WRITES_EACH + i) as i64);
                let applied = service
                    .update_dates(&key, &IfMatch::Any, start, end, actor)
                    .await
                    .expect("If-Match: * never loses a race");
                assert!(applied.changed);
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let run = h.store.run(&key).unwrap();
    assert_eq!(run.version.get(), 1 + TASKS * WRITES_EACH);
    assert_eq!(
        h.store.changes(&key).await.unwrap().len() as u64,
        1 + TASKS * WRITES_EACH
    );
}

/// A list of ETags that names the version another writer produced still
/// holds after the lost race; the write goes through on the new state.
#[tokio::test]
async fn a_lost_race_against_a_version_the_list_names_is_decided_again() {
    let h = Harness::new();
    let run = h.seed(Status::Live, 7);
    let key = run.key();
    // The run moves to 8 between this call's read and its write: a
    // store-level conflict injected once, as a racing writer would cause.
    h.faults.inject(Fault::Conflict, 1);
    let list = IfMatch::parse(r#""7", "8""#).unwrap();
    let end = run.end_fielding_at.checked_add(TimeDelta::hours(1)).unwrap();
    let applied = h
        .service
        .update_dates(&key, &list, run.start_fielding_at, end, h.actor)
        .await
        .expect("decided again");
    assert!(applied.changed);
    // A single stale tag does not get a second decision.
    h.faults.inject(Fault::Conflict, 1);
    let single = IfMatch::version(applied.run.version);
    let later = end.checked_add(TimeDelta::hours(1)).unwrap();
    let err = h
        .service
        .update_dates(&key, &single, run.start_fielding_at, later, h.actor)
        .await
        .unwrap_err();
    assert!(matches!(err, FieldingError::PreconditionFailed { .. }), "{err:?}");
}
