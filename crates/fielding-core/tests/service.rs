//! Integration tests of `FieldingService` over `fielding_memory::MemoryStore`
//! with a `ManualClock`: the lifecycle as callers see it, the order of checks,
//! versions and change records, storage faults, retries and concurrency.
//!
//! The lifecycle itself is three tables written out from `docs/lifecycle.md`
//! (creation, command × effective status, order of checks), each row run on a
//! fresh store. The expectations are literal on purpose: computing them with
//! the library's own lifecycle functions would make the tables agree with any
//! bug in those functions. Everything that is not a cell of those tables
//! (time, change-record chains, faults, retries, races) has its own test.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use chrono::TimeDelta;
use fielding_core::lifecycle::Command;
use fielding_core::{
    AccountId, Action, Applied, BulkClaim, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey, BulkJobStatus,
    ChangeRecord, ClaimToken, DecideItem, FieldingError, FieldingRun, FieldingRunId, FieldingRunJob, FieldingService,
    FieldingStore, IfMatch, JobCreated, JobKey, JobOutcome, ManualClock, RetryPolicy, RunKey, Scope, Status,
    StoreError, TargetGroupId, Timestamp, UserId, Version, INTERNAL_ERROR_DETAIL,
};
use fielding_memory::MemoryStore;
use fielding_testkit::{fixtures, Fault, Faults, FaultyStore};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// The manual clock's starting instant. The clock never follows the system
/// clock, so this fixed instant cannot go stale.
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
        let faulty = FaultyStore::new(store.clone());
        let faults = faulty.faults().clone();
        let clock = ManualClock::new(t0());
        let service = FieldingService::new(Arc::new(faulty)).with_clock(Arc::new(clock.clone()));
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
        let run = fixtures::run()
            .with_status(status)
            .with_version(version)
            .with_now(self.now())
            .build();
        self.store.seed(run.clone()).expect("seed");
        run
    }

    /// A scheduled run taken to `paused` through the service.
    async fn paused(&self) -> Applied {
        let scheduled = self.schedule().await;
        let key = scheduled.run.key();
        let live = self
            .service
            .launch_now(&key, &tag(&scheduled), self.actor)
            .await
            .expect("launch now");
        self.service.pause(&key, &tag(&live), self.actor).await.expect("pause")
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

/// Names the table row being checked when a check panics, since the
/// `expect_*` helpers below report only their own caller's line.
struct Row(String);

impl Drop for Row {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("failing row: {}", self.0);
        }
    }
}

#[track_caller]
fn expect_invalid_state<T: std::fmt::Debug>(result: Result<T, FieldingError>, action: Action, status: Status) {
    match result {
        Err(err) => {
            assert_eq!(err.code(), "invalid_state_error", "{err}");
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
            assert!(err.is_retryable());
            match err {
                FieldingError::PreconditionFailed { current: c } => assert_eq!(c.get(), current, "current version"),
                other => panic!("expected PreconditionFailed, got {other:?}"),
            }
        }
        Ok(ok) => panic!("expected a failed precondition, got {ok:?}"),
    }
}

#[track_caller]
fn expect_not_found<T: std::fmt::Debug>(result: Result<T, FieldingError>) {
    match result {
        Err(err) => {
            assert_eq!(err.code(), "not_found_error", "{err}");
            assert!(matches!(err, FieldingError::NotFound { .. }));
        }
        Ok(ok) => panic!("expected not found, got {ok:?}"),
    }
}

#[track_caller]
fn expect_target_group_has_run<T: std::fmt::Debug>(result: Result<T, FieldingError>, scope: Scope) {
    match result {
        Err(err) => {
            assert_eq!(err.code(), "invalid_state_error", "{err}");
            match err {
                FieldingError::TargetGroupHasRun { scope: s } => assert_eq!(s, scope),
                other => panic!("expected TargetGroupHasRun, got {other:?}"),
            }
        }
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
    let paused = h.paused().await;
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
// Creation: schedule and launch
// ---------------------------------------------------------------------------

/// A creation command, sent at `t0()`.
#[derive(Debug, Clone, Copy)]
enum Create {
    Schedule { start: Timestamp, end: Timestamp },
    Launch { end: Timestamp },
}

/// What a creation must answer.
#[derive(Debug, Clone, Copy)]
enum Created {
    /// Version 1 in this (effective) status with these dates, one change record.
    Run {
        status: Status,
        start: Timestamp,
        end: Timestamp,
    },
    /// `bad_request_error` naming these fields, in this order.
    Invalid(&'static [&'static str]),
    /// `invalid_state_error`: the target group already has a run.
    TargetGroupHasRun,
}

/// Creation rows from `docs/lifecycle.md`: `schedule` needs `start >= now`
/// and `end > start`, `launch` needs `end > now`, and neither may create a
/// second run in a target group (whatever the existing run's status).
/// `None`: the target group has no run yet.
fn creation_table() -> Vec<(Create, Option<Status>, Created)> {
    use Create::{Launch, Schedule};
    use Status::*;
    let just_before_now = t0().checked_sub(ms(1)).unwrap();
    let just_after_now = t0().checked_add(ms(1)).unwrap();
    let mut rows = vec![
        (
            Schedule {
                start: at(1),
                end: at(5),
            },
            None,
            Created::Run {
                status: Scheduled,
                start: at(1),
                end: at(5),
            },
        ),
        // A start of exactly now is allowed, and the run is already live.
        (
            Schedule {
                start: t0(),
                end: at(1),
            },
            None,
            Created::Run {
                status: Live,
                start: t0(),
                end: at(1),
            },
        ),
        (
            Schedule {
                start: just_before_now,
                end: at(1),
            },
            None,
            Created::Invalid(&["start_fielding_at"]),
        ),
        (
            Schedule {
                start: at(1),
                end: at(1),
            },
            None,
            Created::Invalid(&["end_fielding_at"]),
        ),
        (
            Schedule {
                start: at(2),
                end: at(1),
            },
            None,
            Created::Invalid(&["end_fielding_at"]),
        ),
        (
            Schedule {
                start: at(-2),
                end: at(-3),
            },
            None,
            Created::Invalid(&["start_fielding_at", "end_fielding_at"]),
        ),
        (
            Launch { end: at(10) },
            None,
            Created::Run {
                status: Live,
                start: t0(),
                end: at(10),
            },
        ),
        (
            Launch { end: just_after_now },
            None,
            Created::Run {
                status: Live,
                start: t0(),
                end: just_after_now,
            },
        ),
        (Launch { end: t0() }, None, Created::Invalid(&["end_fielding_at"])),
        (Launch { end: at(-1) }, None, Created::Invalid(&["end_fielding_at"])),
    ];
    for existing in [Scheduled, Live, Paused, Completed] {
        rows.push((
            Schedule {
                start: at(2),
                end: at(3),
            },
            Some(existing),
            Created::TargetGroupHasRun,
        ));
        rows.push((Launch { end: at(10) }, Some(existing), Created::TargetGroupHasRun));
    }
    rows
}

#[tokio::test]
async fn creation_follows_the_creation_table() {
    for (create, existing, expected) in creation_table() {
        let _row = Row(format!("{create:?} with existing run {existing:?}"));
        let h = Harness::new();
        let scope = fixtures::scope();
        let first = existing.map(|status| {
            let run = fixtures::run()
                .with_scope(scope)
                .with_status(status)
                .with_now(h.now())
                .build();
            h.store.seed(run.clone()).expect("seed");
            let records = h.store.change_records(&run.key()).len();
            (run, records)
        });
        let (result, action) = match create {
            Create::Schedule { start, end } => (h.service.schedule(scope, start, end, h.actor).await, Action::Schedule),
            Create::Launch { end } => (h.service.launch(scope, end, h.actor).await, Action::Launch),
        };
        match expected {
            Created::Run { status, start, end } => {
                let created = result.expect("created");
                assert!(created.changed);
                let run = &created.run;
                assert_eq!(run.scope(), scope);
                assert_eq!(run.status, status);
                assert_eq!(run.version, Version::INITIAL);
                assert_eq!(created.etag.to_string(), "\"1\"");
                assert_eq!((run.start_fielding_at, run.end_fielding_at), (start, end));
                assert_eq!((run.last_changed_at, run.last_changed_by), (t0(), h.actor));
                assert_eq!(h.service.get(&run.key()).await.unwrap(), *run, "get agrees");
                assert_eq!(h.store.run(&run.key()).as_ref(), Some(run), "stored as returned");
                assert_eq!(
                    h.changes(&run.key()).await,
                    vec![ChangeRecord {
                        run_id: run.id,
                        version: v(1),
                        action,
                        changed_at: t0(),
                        changed_by: h.actor,
                        status_from: None,
                        status_to: status,
                        start_from: None,
                        start_to: start,
                        end_from: None,
                        end_to: end,
                    }]
                );
            }
            Created::Invalid(fields) => {
                expect_invalid_fields(result, fields);
                assert!(h.store.is_empty(), "nothing created");
            }
            Created::TargetGroupHasRun => {
                expect_target_group_has_run(result, scope);
                let (first, records) = first.expect("only rows with an existing run are refused so");
                assert_eq!(h.store.len(), 1, "nothing created");
                assert_untouched(&h, &first, records);
            }
        }
    }
}

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

/// The refusal of a second run is per target group, not per project.
#[tokio::test]
async fn schedule_for_another_target_group_of_the_same_project_is_allowed() {
    let h = Harness::new();
    let first = h.schedule().await;
    let sibling = Scope::new(first.run.account_id, first.run.project_id, fixtures::target_group_id());
    h.service.schedule(sibling, at(2), at(3), h.actor).await.unwrap();
    assert_eq!(h.store.len(), 2);
}

/// The table seeds the existing run; this one is created through the
/// service, so its history is the service's own single record.
#[tokio::test]
async fn a_refused_second_schedule_keeps_the_first_runs_single_record() {
    let h = Harness::new();
    let first = h.schedule().await;
    let scope = first.run.scope();
    expect_target_group_has_run(h.service.schedule(scope, at(2), at(3), h.actor).await, scope);
    assert_eq!(h.store.len(), 1);
    assert_eq!(h.changes(&first.run.key()).await.len(), 1);
}

// ---------------------------------------------------------------------------
// Command × effective status
// ---------------------------------------------------------------------------

/// How a matrix row's run is made: through the service at `t0()`, then the
/// clock moves to the row's "now". Scheduled runs run from `at(24)` to
/// `at(744)`, launched ones from `t0()` (`at(0)`) to `at(720)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Given {
    /// Scheduled; now `at(2)`.
    Scheduled,
    /// Scheduled; now exactly its start `at(24)`: effectively live.
    ScheduledStarted,
    /// Launched; now `at(2)`.
    Live,
    /// Launched, paused at `t0()`; now `at(2)`.
    Paused,
    /// Launched, completed at `t0()`; now `at(2)`.
    Completed,
    /// Scheduled, completed at `t0()` before it started; now `at(2)`.
    CompletedBeforeStart,
    /// Scheduled; now exactly its end `at(744)`: effectively completed.
    ScheduledAtEnd,
    /// Launched; now exactly its end `at(720)`: effectively completed.
    LiveAtEnd,
    /// Launched and paused; now exactly its end `at(720)`: effectively completed.
    PausedAtEnd,
    /// Launched and completed; now exactly its end `at(720)`.
    CompletedAtEnd,
}

const EVERY_GIVEN: [Given; 10] = [
    Given::Scheduled,
    Given::ScheduledStarted,
    Given::Live,
    Given::Paused,
    Given::Completed,
    Given::CompletedBeforeStart,
    Given::ScheduledAtEnd,
    Given::LiveAtEnd,
    Given::PausedAtEnd,
    Given::CompletedAtEnd,
];

impl Given {
    /// The effective status the docs give this run at its "now".
    fn effective(self) -> Status {
        match self {
            Given::Scheduled => Status::Scheduled,
            Given::ScheduledStarted | Given::Live => Status::Live,
            Given::Paused => Status::Paused,
            Given::Completed
            | Given::CompletedBeforeStart
            | Given::ScheduledAtEnd
            | Given::LiveAtEnd
            | Given::PausedAtEnd
            | Given::CompletedAtEnd => Status::Completed,
        }
    }

    /// Makes the run and moves the clock; returns its key.
    async fn make(self, h: &Harness) -> RunKey {
        use Given::*;
        let scheduled = matches!(
            self,
            Scheduled | ScheduledStarted | CompletedBeforeStart | ScheduledAtEnd
        );
        let created = if scheduled {
            h.service.schedule(fixtures::scope(), at(24), at(744), h.actor).await
        } else {
            h.service.launch(fixtures::scope(), at(720), h.actor).await
        }
        .expect("create");
        let key = created.run.key();
        match self {
            Paused | PausedAtEnd => {
                h.service.pause(&key, &tag(&created), h.actor).await.expect("pause");
            }
            Completed | CompletedBeforeStart | CompletedAtEnd => {
                h.service
                    .complete(&key, &tag(&created), h.actor)
                    .await
                    .expect("complete");
            }
            Scheduled | ScheduledStarted | Live | ScheduledAtEnd | LiveAtEnd => {}
        }
        h.set(match self {
            ScheduledStarted => at(24),
            ScheduledAtEnd => at(744),
            LiveAtEnd | PausedAtEnd | CompletedAtEnd => at(720),
            Scheduled | Live | Paused | Completed | CompletedBeforeStart => at(2),
        });
        key
    }
}

/// A command on an existing run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    UpdateDates(Timestamp, Timestamp),
    LaunchNow,
    Pause,
    Resume,
    Complete,
    Relaunch,
}

impl Op {
    fn command(self) -> Command {
        match self {
            Op::UpdateDates(start, end) => Command::UpdateDates {
                start_fielding_at: start,
                end_fielding_at: end,
            },
            Op::LaunchNow => Command::LaunchNow,
            Op::Pause => Command::Pause,
            Op::Resume => Command::Resume,
            Op::Complete => Command::Complete,
            Op::Relaunch => Command::Relaunch,
        }
    }

    fn action(self) -> Action {
        match self {
            Op::UpdateDates(..) => Action::UpdateDates,
            Op::LaunchNow => Action::LaunchNow,
            Op::Pause => Action::Pause,
            Op::Resume => Action::Resume,
            Op::Complete => Action::Complete,
            Op::Relaunch => Action::Relaunch,
        }
    }
}

/// The three public ways to run a command; each row goes through all of them.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// `update_dates`, `pause`, …
    Method,
    /// `execute` with the command.
    Execute,
    /// `execute_with_retry`, whose closure answers the command (no `If-Match`).
    ExecuteWithRetry,
}

impl Path {
    async fn run(
        self,
        h: &Harness,
        key: &RunKey,
        op: Op,
        if_match: &IfMatch,
        actor: UserId,
    ) -> Result<Applied, FieldingError> {
        let s = &h.service;
        match self {
            Path::Method => match op {
                Op::UpdateDates(start, end) => s.update_dates(key, if_match, start, end, actor).await,
                Op::LaunchNow => s.launch_now(key, if_match, actor).await,
                Op::Pause => s.pause(key, if_match, actor).await,
                Op::Resume => s.resume(key, if_match, actor).await,
                Op::Complete => s.complete(key, if_match, actor).await,
                Op::Relaunch => s.relaunch(key, if_match, actor).await,
            },
            Path::Execute => s.execute(key, if_match, &op.command(), actor).await,
            Path::ExecuteWithRetry => {
                s.execute_with_retry(key, actor, &RetryPolicy::immediate(1), |_| op.command())
                    .await
            }
        }
    }
}

/// What a command on an existing run must answer.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// A new version in status `to` with these dates, and one change record
    /// from the effective status before.
    Changed {
        to: Status,
        start: Timestamp,
        end: Timestamp,
    },
    /// Success without a new version or record ("nothing changed").
    Unchanged,
    /// `invalid_state_error` for the command in this effective status.
    Refused(Status),
    /// `bad_request_error` naming these fields, in this order.
    Invalid(&'static [&'static str]),
}

/// The table of `docs/lifecycle.md` ("Command × effective status"), with the
/// date rules of `update dates` spelled out per status.
fn lifecycle_table() -> Vec<(Given, Op, Outcome)> {
    use Given::*;
    use Op::*;
    use Outcome::*;
    let changed = |to, start, end| Changed { to, start, end };
    let mut rows = vec![
        // scheduled: both dates may move; start not in the past, end after start.
        (
            Scheduled,
            UpdateDates(at(10), at(100)),
            changed(Status::Scheduled, at(10), at(100)),
        ),
        // A start moved to exactly now makes the run live at once, and that is what is written.
        (
            Scheduled,
            UpdateDates(at(2), at(100)),
            changed(Status::Live, at(2), at(100)),
        ),
        (Scheduled, UpdateDates(at(1), at(100)), Invalid(&["start_fielding_at"])),
        (Scheduled, UpdateDates(at(10), at(10)), Invalid(&["end_fielding_at"])),
        (Scheduled, UpdateDates(at(10), at(9)), Invalid(&["end_fielding_at"])),
        (
            Scheduled,
            UpdateDates(at(1), at(0)),
            Invalid(&["start_fielding_at", "end_fielding_at"]),
        ),
        (Scheduled, UpdateDates(at(24), at(744)), Unchanged),
        // launch now keeps the planned duration (30 days) from now.
        (Scheduled, LaunchNow, changed(Status::Live, at(2), at(722))),
        (Scheduled, Pause, Refused(Status::Scheduled)),
        (Scheduled, Resume, Refused(Status::Scheduled)),
        (Scheduled, Complete, changed(Status::Completed, at(24), at(744))),
        (Scheduled, Relaunch, Refused(Status::Scheduled)),
        // A scheduled run whose start has come is live: it is judged, and recorded, as live.
        (
            ScheduledStarted,
            UpdateDates(at(24), at(800)),
            changed(Status::Live, at(24), at(800)),
        ),
        (ScheduledStarted, UpdateDates(at(30), at(800)), Refused(Status::Live)),
        (
            ScheduledStarted,
            UpdateDates(at(24), at(24)),
            Invalid(&["end_fielding_at"]),
        ),
        (ScheduledStarted, UpdateDates(at(24), at(744)), Unchanged),
        (ScheduledStarted, LaunchNow, Refused(Status::Live)),
        (ScheduledStarted, Pause, changed(Status::Paused, at(24), at(744))),
        (ScheduledStarted, Resume, Refused(Status::Live)),
        (ScheduledStarted, Complete, changed(Status::Completed, at(24), at(744))),
        (ScheduledStarted, Relaunch, Refused(Status::Live)),
        // live: the end only; a different start is 422; end after now and after start.
        (Live, UpdateDates(at(0), at(50)), changed(Status::Live, at(0), at(50))),
        (Live, UpdateDates(at(1), at(50)), Refused(Status::Live)),
        (Live, UpdateDates(at(0), at(1)), Invalid(&["end_fielding_at"])),
        (Live, UpdateDates(at(0), at(2)), Invalid(&["end_fielding_at"])),
        (Live, UpdateDates(at(0), at(-1)), Invalid(&["end_fielding_at"])),
        (Live, UpdateDates(at(0), at(720)), Unchanged),
        (Live, LaunchNow, Refused(Status::Live)),
        (Live, Pause, changed(Status::Paused, at(0), at(720))),
        (Live, Resume, Refused(Status::Live)),
        (Live, Complete, changed(Status::Completed, at(0), at(720))),
        (Live, Relaunch, Refused(Status::Live)),
        // paused: same date rules as live, and it stays paused.
        (
            Paused,
            UpdateDates(at(0), at(50)),
            changed(Status::Paused, at(0), at(50)),
        ),
        (Paused, UpdateDates(at(1), at(50)), Refused(Status::Paused)),
        (Paused, UpdateDates(at(0), at(1)), Invalid(&["end_fielding_at"])),
        (Paused, UpdateDates(at(0), at(-1)), Invalid(&["end_fielding_at"])),
        (Paused, UpdateDates(at(0), at(720)), Unchanged),
        (Paused, LaunchNow, Refused(Status::Paused)),
        (Paused, Pause, Refused(Status::Paused)),
        (Paused, Resume, changed(Status::Live, at(0), at(720))),
        (Paused, Complete, changed(Status::Completed, at(0), at(720))),
        (Paused, Relaunch, Refused(Status::Paused)),
        // completed: no edits, even to the same dates; a bad body is still a 400 first.
        (Completed, UpdateDates(at(30), at(40)), Refused(Status::Completed)),
        (Completed, UpdateDates(at(0), at(720)), Refused(Status::Completed)),
        (Completed, UpdateDates(at(40), at(30)), Invalid(&["end_fielding_at"])),
        (Completed, LaunchNow, Refused(Status::Completed)),
        (Completed, Pause, Refused(Status::Completed)),
        (Completed, Resume, Refused(Status::Completed)),
        (Completed, Complete, Refused(Status::Completed)),
        // Relaunch before the end goes live, keeping the start.
        (Completed, Relaunch, changed(Status::Live, at(0), at(720))),
        // A run completed before it started is relaunched with start = now.
        (CompletedBeforeStart, Relaunch, changed(Status::Live, at(2), at(744))),
        (
            CompletedBeforeStart,
            UpdateDates(at(30), at(40)),
            Refused(Status::Completed),
        ),
        (CompletedBeforeStart, LaunchNow, Refused(Status::Completed)),
        (CompletedBeforeStart, Pause, Refused(Status::Completed)),
        (CompletedBeforeStart, Resume, Refused(Status::Completed)),
        (CompletedBeforeStart, Complete, Refused(Status::Completed)),
        // A run whose end has come is completed whatever is stored.
        (
            ScheduledAtEnd,
            UpdateDates(at(800), at(900)),
            Refused(Status::Completed),
        ),
        (
            ScheduledAtEnd,
            UpdateDates(at(900), at(800)),
            Invalid(&["end_fielding_at"]),
        ),
        (LiveAtEnd, UpdateDates(at(0), at(1440)), Refused(Status::Completed)),
        (PausedAtEnd, UpdateDates(at(0), at(1440)), Refused(Status::Completed)),
        (CompletedAtEnd, UpdateDates(at(0), at(1440)), Refused(Status::Completed)),
    ];
    // Every other command on a run whose end has come is refused as completed;
    // relaunch too, since it is allowed only before the end.
    for given in [ScheduledAtEnd, LiveAtEnd, PausedAtEnd, CompletedAtEnd] {
        for op in [LaunchNow, Pause, Resume, Complete, Relaunch] {
            rows.push((given, op, Refused(Status::Completed)));
        }
    }
    rows
}

async fn check_lifecycle_row(given: Given, op: Op, expected: Outcome, path: Path) {
    let _row = Row(format!("{given:?} × {op:?} via {path:?} → {expected:?}"));
    let h = Harness::new();
    let key = given.make(&h).await;
    let before = h.service.get(&key).await.expect("get");
    assert_eq!(before.status, given.effective(), "effective status before the command");
    let stored = h.store.run(&key).expect("stored");
    let records = h.store.change_records(&key);
    // Another user than the one who made the run, so last_changed_by shows who wrote.
    let actor = UserId::random();
    let result = path.run(&h, &key, op, &IfMatch::version(before.version), actor).await;
    match expected {
        Outcome::Changed { to, start, end } => {
            let applied = result.expect("applied");
            assert!(applied.changed);
            let version = before.version.next().expect("a next version");
            let expected_run = FieldingRun {
                status: to,
                start_fielding_at: start,
                end_fielding_at: end,
                version,
                last_changed_at: h.now(),
                last_changed_by: actor,
                ..before.clone()
            };
            assert_eq!(applied.run, expected_run);
            assert_eq!(applied.etag, version.etag());
            assert_eq!(h.service.get(&key).await.unwrap(), applied.run, "get agrees");
            assert_eq!(
                h.store.run(&key).as_ref(),
                Some(&applied.run),
                "the effective status after the command is what is stored"
            );
            let changes = h.changes(&key).await;
            assert_eq!(changes[..records.len()], records[..], "history kept");
            assert_eq!(
                changes[records.len()..],
                [ChangeRecord {
                    run_id: key.id,
                    version,
                    action: op.action(),
                    changed_at: h.now(),
                    changed_by: actor,
                    status_from: Some(given.effective()),
                    status_to: to,
                    start_from: Some(before.start_fielding_at),
                    start_to: start,
                    end_from: Some(before.end_fielding_at),
                    end_to: end,
                }],
                "one change record"
            );
        }
        Outcome::Unchanged => {
            let applied = result.expect("applied");
            assert!(!applied.changed, "nothing changed");
            assert_eq!(applied.etag, before.etag(), "same ETag");
            assert_eq!(applied.run, before, "the run as it was, in its effective status");
            assert_untouched(&h, &stored, records.len());
        }
        Outcome::Refused(status) => {
            expect_invalid_state(result, op.action(), status);
            assert_untouched(&h, &stored, records.len());
        }
        Outcome::Invalid(fields) => {
            expect_invalid_fields(result, fields);
            assert_untouched(&h, &stored, records.len());
        }
    }
}

/// Runs the rows of `given` through every path.
async fn check_lifecycle_rows(givens: &[Given]) {
    let rows: Vec<_> = lifecycle_table()
        .into_iter()
        .filter(|(given, ..)| givens.contains(given))
        .collect();
    assert!(!rows.is_empty());
    for (given, op, expected) in rows {
        for path in [Path::Method, Path::Execute, Path::ExecuteWithRetry] {
            check_lifecycle_row(given, op, expected, path).await;
        }
    }
}

#[tokio::test]
async fn lifecycle_table_covers_every_command_in_every_given_state() {
    let rows = lifecycle_table();
    for given in EVERY_GIVEN {
        for kind in [
            Action::UpdateDates,
            Action::LaunchNow,
            Action::Pause,
            Action::Resume,
            Action::Complete,
            Action::Relaunch,
        ] {
            assert!(
                rows.iter().any(|(g, op, _)| *g == given && op.action() == kind),
                "no row for {kind} on {given:?}"
            );
        }
    }
}

#[tokio::test]
async fn lifecycle_of_a_scheduled_run() {
    check_lifecycle_rows(&[Given::Scheduled]).await;
}

#[tokio::test]
async fn lifecycle_of_a_scheduled_run_whose_start_has_come() {
    check_lifecycle_rows(&[Given::ScheduledStarted]).await;
}

#[tokio::test]
async fn lifecycle_of_a_live_run() {
    check_lifecycle_rows(&[Given::Live]).await;
}

#[tokio::test]
async fn lifecycle_of_a_paused_run() {
    check_lifecycle_rows(&[Given::Paused]).await;
}

#[tokio::test]
async fn lifecycle_of_a_completed_run() {
    check_lifecycle_rows(&[Given::Completed, Given::CompletedBeforeStart]).await;
}

#[tokio::test]
async fn lifecycle_of_runs_whose_end_has_come() {
    check_lifecycle_rows(&[
        Given::ScheduledAtEnd,
        Given::LiveAtEnd,
        Given::PausedAtEnd,
        Given::CompletedAtEnd,
    ])
    .await;
}

// ---------------------------------------------------------------------------
// Order of checks: not found, precondition, validation, state
// ---------------------------------------------------------------------------

/// Where a command is sent, relative to the one run that exists.
#[derive(Debug, Clone, Copy)]
enum Address {
    /// The run's own key.
    Run,
    /// The run's scope with an id nothing has.
    UnknownId,
    /// The run's id under another account.
    OtherAccount,
    /// The run's id under another project.
    OtherProject,
    /// The run's id under another target group.
    OtherTargetGroup,
}

/// The `If-Match` sent, relative to the run's current version 7.
#[derive(Debug, Clone, Copy)]
enum Tag {
    Current,
    Any,
    /// `"6"`.
    Older,
    /// `"8"`.
    Newer,
    /// `W/"7"`: weak, so it never matches.
    WeakCurrent,
    /// `"999"`.
    Unrelated,
}

impl Tag {
    fn if_match(self) -> IfMatch {
        let text = match self {
            Tag::Current => r#""7""#,
            Tag::Any => "*",
            Tag::Older => r#""6""#,
            Tag::Newer => r#""8""#,
            Tag::WeakCurrent => r#"W/"7""#,
            Tag::Unrelated => r#""999""#,
        };
        IfMatch::parse(text).unwrap()
    }
}

/// What every command must answer.
#[derive(Debug, Clone, Copy)]
enum Check {
    NotFound,
    /// `precondition_failed_error` carrying the current version, 7.
    PreconditionFailed,
}

/// Rows of "Order of checks" in `docs/lifecycle.md`, each tried with every
/// command on a run seeded at version 7. The date update always carries a
/// bad body (a start in the past and an end before it), and the states are
/// chosen so most commands would also be refused by the lifecycle: the
/// earlier check must win over both.
fn order_of_checks_table() -> Vec<(Status, Address, Tag, Check)> {
    use Address::*;
    use Check::*;
    use Tag::*;
    vec![
        // Not found comes first, whatever the If-Match, even on another scope
        // holding the same run id.
        (Status::Live, UnknownId, Any, NotFound),
        (Status::Live, UnknownId, Current, NotFound),
        (Status::Live, UnknownId, Unrelated, NotFound),
        (Status::Completed, UnknownId, Older, NotFound),
        (Status::Live, OtherAccount, Current, NotFound),
        (Status::Live, OtherAccount, Any, NotFound),
        (Status::Live, OtherProject, Current, NotFound),
        (Status::Live, OtherTargetGroup, Current, NotFound),
        // A stale or weak tag is a failed precondition before the body and
        // the lifecycle are looked at.
        (Status::Live, Run, Older, PreconditionFailed),
        (Status::Live, Run, Newer, PreconditionFailed),
        (Status::Live, Run, WeakCurrent, PreconditionFailed),
        (Status::Live, Run, Unrelated, PreconditionFailed),
        (Status::Scheduled, Run, Older, PreconditionFailed),
        (Status::Paused, Run, Older, PreconditionFailed),
        (Status::Completed, Run, Older, PreconditionFailed),
        (Status::Completed, Run, WeakCurrent, PreconditionFailed),
    ]
}

/// Every command, the date update with a bad body.
fn every_op() -> [Op; 6] {
    [
        Op::UpdateDates(at(-5), at(-6)),
        Op::LaunchNow,
        Op::Pause,
        Op::Resume,
        Op::Complete,
        Op::Relaunch,
    ]
}

#[tokio::test]
async fn checks_come_in_the_documented_order() {
    for (status, address, tag, check) in order_of_checks_table() {
        for op in every_op() {
            for path in [Path::Method, Path::Execute] {
                let _row = Row(format!(
                    "{status} run, {address:?}, {tag:?}, {op:?} via {path:?} → {check:?}"
                ));
                let h = Harness::new();
                let run = h.seed(status, 7);
                let records = h.store.change_records(&run.key()).len();
                let mut key = run.key();
                match address {
                    Address::Run => {}
                    Address::UnknownId => key.id = FieldingRunId::generate(),
                    Address::OtherAccount => {
                        key.scope.account_id =
                            AccountId::new(if key.scope.account_id.get() == 1 { 2 } else { 1 }).unwrap();
                    }
                    Address::OtherProject => key.scope.project_id = fixtures::project_id(),
                    Address::OtherTargetGroup => key.scope.target_group_id = fixtures::target_group_id(),
                }
                let result = path.run(&h, &key, op, &tag.if_match(), h.actor).await;
                match check {
                    Check::NotFound => {
                        assert_ne!(key, run.key());
                        expect_not_found(result);
                        expect_not_found(h.service.get(&key).await);
                        expect_not_found(h.service.changes(&key).await);
                    }
                    Check::PreconditionFailed => expect_precondition_failed(result, 7),
                }
                assert_untouched(&h, &run, records);
            }
        }
    }
}

/// The stale tag of a run that went through the service (not seeded): the
/// current version in the refusal is the one the service wrote.
#[tokio::test]
async fn stale_if_match_with_bad_dates_is_a_failed_precondition_not_a_bad_request() {
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
    assert_eq!(err.code(), "precondition_failed_error");
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
    assert_eq!(result.unwrap_err().code(), "precondition_failed_error");
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
    assert_eq!(result.unwrap_err().code(), "precondition_failed_error");
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

    async fn get_job(&self, key: &JobKey) -> Result<Option<FieldingRunJob>, StoreError> {
        tokio::task::yield_now().await;
        self.0.get_job(key).await
    }

    async fn finish_job(
        &self,
        key: &JobKey,
        outcome: &JobOutcome,
        finished_at: Timestamp,
    ) -> Result<Option<FieldingRunJob>, StoreError> {
        tokio::task::yield_now().await;
        self.0.finish_job(key, outcome, finished_at).await
    }

    async fn expire_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        tokio::task::yield_now().await;
        self.0.expire_jobs(finished_before, limit).await
    }

    async fn create_bulk_job(&self, job: &BulkJob) -> Result<BulkJobCreated, StoreError> {
        tokio::task::yield_now().await;
        self.0.create_bulk_job(job).await
    }

    async fn get_bulk_job(&self, key: &BulkJobKey) -> Result<Option<BulkJob>, StoreError> {
        tokio::task::yield_now().await;
        self.0.get_bulk_job(key).await
    }

    async fn claim_bulk_job(&self, now: Timestamp, claim: &BulkClaim) -> Result<Option<BulkJob>, StoreError> {
        tokio::task::yield_now().await;
        self.0.claim_bulk_job(now, claim).await
    }

    async fn renew_bulk_claim(&self, key: &BulkJobKey, claim: &BulkClaim) -> Result<bool, StoreError> {
        tokio::task::yield_now().await;
        self.0.renew_bulk_claim(key, claim).await
    }

    async fn apply_bulk_items(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        items: &[TargetGroupId],
        decide: DecideItem<'_>,
    ) -> Result<Vec<(TargetGroupId, BulkItemOutcome)>, StoreError> {
        tokio::task::yield_now().await;
        self.0.apply_bulk_items(key, token, items, decide).await
    }

    async fn finish_bulk_job(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        status: BulkJobStatus,
        finished_at: Timestamp,
    ) -> Result<bool, StoreError> {
        tokio::task::yield_now().await;
        self.0.finish_bulk_job(key, token, status, finished_at).await
    }

    async fn feed(
        &self,
        account: fielding_core::AccountId,
        after: Option<fielding_core::FeedPosition>,
        limit: usize,
    ) -> Result<fielding_core::FeedPage, StoreError> {
        tokio::task::yield_now().await;
        self.0.feed(account, after, limit).await
    }

    async fn prune_changes(&self, changed_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        tokio::task::yield_now().await;
        self.0.prune_changes(changed_before, limit).await
    }

    async fn load_feed_checkpoint(
        &self,
        account: fielding_core::AccountId,
        consumer: &fielding_core::ConsumerName,
    ) -> Result<Option<fielding_core::FeedPosition>, StoreError> {
        tokio::task::yield_now().await;
        self.0.load_feed_checkpoint(account, consumer).await
    }

    async fn save_feed_checkpoint(
        &self,
        account: fielding_core::AccountId,
        consumer: &fielding_core::ConsumerName,
        position: fielding_core::FeedPosition,
    ) -> Result<(), StoreError> {
        tokio::task::yield_now().await;
        self.0.save_feed_checkpoint(account, consumer, position).await
    }

    fn change_notifier(&self) -> Option<fielding_core::ChangeNotifier> {
        self.0.change_notifier()
    }

    async fn expire_bulk_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        tokio::task::yield_now().await;
        self.0.expire_bulk_jobs(finished_before, limit).await
    }
}

impl Harness {
    /// A harness whose service writes through a [`YieldingStore`].
    fn interleaving() -> Self {
        let h = Self::new();
        let service =
            FieldingService::new(Arc::new(YieldingStore(h.store.clone()))).with_clock(Arc::new(h.clock.clone()));
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
