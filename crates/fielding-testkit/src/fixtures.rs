//! Builders for runs, scopes, change records and creation jobs in any
//! state, for every crate's tests (and yours).
//!
//! The lifecycle only lets a run reach, say, version 7 and `paused` by seven
//! commands. A test about 412 handling should not have to replay them, so
//! [`RunBuilder`] makes the run directly; put it in a store with
//! `MemoryStore::seed`, or with [`FieldingStore::insert`] and
//! [`creation`] for any store.
//!
//! Unset dates default relative to the reference instant (the system clock,
//! or [`RunBuilder::with_now`]) so the run's *effective* status is the status you
//! asked for: scheduled runs start in a day, live and paused runs started a
//! day ago, and every run ends in thirty days. Nothing here hard-codes a
//! calendar date, so fixtures do not expire.
//!
//! ```
//! use fielding_core::{FieldingStore, Status, Timestamp, UserId};
//! use fielding_testkit::fixtures;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let store = fielding_memory::MemoryStore::new();
//! // A paused run at version 12 in a fresh scope, with its first record.
//! let run = fixtures::run().with_status(Status::Paused).with_version(12).build();
//! store.insert(&run, &fixtures::creation(&run)).await?;
//!
//! // The next version of it, and the record of that change.
//! let (next, record) = fixtures::change(&run, 1, UserId::random()).expect("below the last version");
//! store.compare_and_swap(run.version, &next, &record).await?;
//! assert_eq!(store.changes(&run.key()).await?.len(), 2);
//!
//! // The same target group under another account is another scope.
//! let elsewhere = fixtures::other_account(run.scope());
//! assert_eq!(store.find_by_target_group(&elsewhere).await?, None);
//!
//! // A creation job waiting to be processed.
//! let job = fixtures::job(fixtures::scope(), "key-1", fixtures::schedule());
//! store.create_job(&job).await?;
//! # Ok(()) }
//! ```

use chrono::TimeDelta;
use fielding_core::{
    AccountId, Action, BulkAction, BulkItem, BulkItemFailure, BulkItemOutcome, BulkJob, BulkJobStatus, ChangeRecord,
    FieldingRun, FieldingRunId, FieldingRunJob, IdempotencyKey, JobId, JobRequest, JobState, NewBulkJob, ProjectId,
    Scope, Status, TargetGroupId, Timestamp, UserId, Version,
};

#[cfg(doc)]
use fielding_core::FieldingStore;

/// 64 random bits (from a v4 UUID, so the kit needs no RNG of its own).
pub(crate) fn random_u64() -> u64 {
    UserId::random().as_uuid().as_u128() as u64
}

/// The instant [`change`] counts its tags from: 2031-02-03T04:05:06.789Z,
/// odd milliseconds so a store that keeps whole seconds is caught. Only
/// stored, never compared with the clock, so it does not expire.
pub(crate) const CHANGE_BASE_MILLIS: i64 = 1_927_857_906_789;

fn now() -> Timestamp {
    Timestamp::from(chrono::Utc::now())
}

/// `now` moved by `days`, or `now` itself at the ends of the range.
fn days_from(now: Timestamp, days: i64) -> Timestamp {
    now.checked_add(TimeDelta::days(days)).unwrap_or(now)
}

/// A builder with defaults: a fresh random scope, `scheduled`, version 1.
///
/// ```
/// use fielding_core::{Status, Timestamp};
/// use fielding_testkit::fixtures;
/// let run = fixtures::run().with_status(Status::Paused).with_version(12).build();
/// assert_eq!(run.version.get(), 12);
/// assert_eq!(run.effective_status(Timestamp::from(chrono::Utc::now())), Status::Paused);
/// ```
pub fn run() -> RunBuilder {
    RunBuilder::default()
}

/// A fresh scope with random ids, distinct from every other call's.
pub fn scope() -> Scope {
    // 1..=i32::MAX - 1, so `other_account` can always add one.
    let account_id = 1 + (random_u64() % (i32::MAX as u64 - 1)) as i64;
    Scope::new(account(account_id), project_id(), target_group_id())
}

/// The account `value`.
///
/// # Panics
/// If `value` is not in `1..=i32::MAX`: a fixture bug, not a test outcome.
pub fn account(value: i64) -> AccountId {
    AccountId::new(value).unwrap_or_else(|_| panic!("fixture account ids must be in 1..=i32::MAX, got {value}"))
}

/// A fresh random project id.
pub fn project_id() -> ProjectId {
    ProjectId::parse(FieldingRunId::generate().as_str()).unwrap_or_else(|_| unreachable!("a ULID is a valid id"))
}

/// A fresh random target group id.
pub fn target_group_id() -> TargetGroupId {
    TargetGroupId::parse(FieldingRunId::generate().as_str()).unwrap_or_else(|_| unreachable!("a ULID is a valid id"))
}

/// `scope` with only the account changed.
pub fn other_account(scope: Scope) -> Scope {
    let next = i64::from(scope.account_id.get()) % i64::from(i32::MAX) + 1;
    Scope::new(account(next), scope.project_id, scope.target_group_id)
}

/// `scope` with only the project changed.
pub fn other_project(scope: Scope) -> Scope {
    Scope::new(scope.account_id, project_id(), scope.target_group_id)
}

/// `scope` with only the target group changed.
pub fn other_target_group(scope: Scope) -> Scope {
    Scope::new(scope.account_id, scope.project_id, target_group_id())
}

/// The three scopes that differ from `scope` in exactly one part, named
/// (for messages): what a scope-isolation test walks through.
pub fn neighbours(scope: Scope) -> [(&'static str, Scope); 3] {
    [
        ("another account", other_account(scope)),
        ("another project", other_project(scope)),
        ("another target group", other_target_group(scope)),
    ]
}

/// The version `value`.
///
/// # Panics
/// If `value` is 0 or above `i64::MAX`: a fixture bug, not a test outcome.
pub fn version(value: u64) -> Version {
    Version::new(value).unwrap_or_else(|| panic!("fixture version must be from 1 to i64::MAX, got {value}"))
}

/// See [`run`].
#[derive(Debug, Clone, Default)]
pub struct RunBuilder {
    scope: Option<Scope>,
    id: Option<FieldingRunId>,
    status: Option<Status>,
    version: Option<Version>,
    start: Option<Timestamp>,
    end: Option<Timestamp>,
    at: Option<Timestamp>,
    changed_at: Option<Timestamp>,
    changed_by: Option<UserId>,
}

impl RunBuilder {
    /// The run's scope (default: a fresh random one).
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = Some(scope);
        self
    }

    /// The run's id (default: generated).
    pub fn with_id(mut self, id: FieldingRunId) -> Self {
        self.id = Some(id);
        self
    }

    /// The stored status (default `scheduled`).
    pub fn with_status(mut self, status: Status) -> Self {
        self.status = Some(status);
        self
    }

    /// The version (default 1).
    ///
    /// # Panics
    /// If `version` is 0 or above `i64::MAX`: a fixture bug, not a test outcome.
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = Some(self::version(version));
        self
    }

    /// Both dates.
    pub fn with_dates(self, start: Timestamp, end: Timestamp) -> Self {
        self.with_start(start).with_end(end)
    }

    /// The start date.
    pub fn with_start(mut self, start: Timestamp) -> Self {
        self.start = Some(start);
        self
    }

    /// The end date.
    pub fn with_end(mut self, end: Timestamp) -> Self {
        self.end = Some(end);
        self
    }

    /// The instant defaults are relative to (default: the system clock).
    /// Pass your `ManualClock`'s time here.
    pub fn with_now(mut self, now: Timestamp) -> Self {
        self.at = Some(now);
        self
    }

    /// `last_changed_at` (default: the reference instant).
    pub fn with_changed_at(mut self, at: Timestamp) -> Self {
        self.changed_at = Some(at);
        self
    }

    /// `last_changed_by` (default: a random user).
    pub fn with_changed_by(mut self, user: UserId) -> Self {
        self.changed_by = Some(user);
        self
    }

    /// The run.
    pub fn build(self) -> FieldingRun {
        let now = self.at.unwrap_or_else(now);
        let status = self.status.unwrap_or(Status::Scheduled);
        let default_start = match status {
            Status::Scheduled => days_from(now, 1),
            Status::Live | Status::Paused | Status::Completed => days_from(now, -1),
        };
        let start = self.start.unwrap_or(default_start);
        let end = self.end.unwrap_or_else(|| {
            let planned = days_from(now, 30);
            if planned > start {
                planned
            } else {
                days_from(start, 30)
            }
        });
        let scope = self.scope.unwrap_or_else(scope);
        FieldingRun {
            id: self.id.unwrap_or_else(FieldingRunId::generate),
            account_id: scope.account_id,
            project_id: scope.project_id,
            target_group_id: scope.target_group_id,
            start_fielding_at: start,
            end_fielding_at: end,
            status,
            version: self.version.unwrap_or(Version::INITIAL),
            last_changed_at: self.changed_at.unwrap_or(now),
            last_changed_by: self.changed_by.unwrap_or_else(UserId::random),
        }
    }
}

/// The change record of a run's first stored version (the `*_from` fields
/// are `None`): what to pass to `insert` with the run. A `scheduled` run
/// was scheduled; any other was launched.
pub fn creation(run: &FieldingRun) -> ChangeRecord {
    let action = if run.status == Status::Scheduled {
        Action::Schedule
    } else {
        Action::Launch
    };
    ChangeRecord::created(run, action)
}

/// The run after one change to `run`, and its change record: version plus
/// one, status moved on (live ↔ paused, scheduled → live, completed →
/// live), end one minute later, changed by `by` at an instant derived from
/// `tag` alone (`tag` milliseconds after a fixed base instant). Distinct
/// `tag`s make distinct writes, so a test can tell which write a stored
/// record came from, whichever version it was made on.
///
/// `None` when `run` is already at [`Version::MAX`].
pub fn change(run: &FieldingRun, tag: u64, by: UserId) -> Option<(FieldingRun, ChangeRecord)> {
    let version = run.version.next()?;
    let (status, action) = match run.status {
        Status::Live => (Status::Paused, Action::Pause),
        Status::Paused => (Status::Live, Action::Resume),
        Status::Scheduled => (Status::Live, Action::LaunchNow),
        Status::Completed => (Status::Live, Action::Relaunch),
    };
    let end = run
        .end_fielding_at
        .checked_add(TimeDelta::minutes(1))
        .unwrap_or(run.end_fielding_at);
    let changed_at = Timestamp::from_unix_millis(CHANGE_BASE_MILLIS.saturating_add((tag % (1 << 40)) as i64))
        .unwrap_or(run.last_changed_at);
    let next = FieldingRun {
        status,
        version,
        end_fielding_at: end,
        last_changed_at: changed_at,
        last_changed_by: by,
        ..run.clone()
    };
    let record = ChangeRecord {
        run_id: next.id,
        version,
        action,
        changed_at,
        changed_by: by,
        status_from: Some(run.status),
        status_to: status,
        start_from: Some(run.start_fielding_at),
        start_to: next.start_fielding_at,
        end_from: Some(run.end_fielding_at),
        end_to: end,
    };
    Some((next, record))
}

/// A processing creation job in `scope` under the idempotency key `key`:
/// fresh job and planned-run ids, created now (to the millisecond) by a
/// random user, no trace id. Change any field with struct update syntax.
///
/// # Panics
/// If `key` is not a valid idempotency key: a fixture bug.
pub fn job(scope: Scope, key: &str, request: JobRequest) -> FieldingRunJob {
    FieldingRunJob {
        id: JobId::generate(),
        scope,
        idempotency_key: IdempotencyKey::parse(key)
            .unwrap_or_else(|err| panic!("fixture idempotency key {key:?} is invalid: {err}")),
        request,
        fielding_run_id: FieldingRunId::generate(),
        created_at: now(),
        created_by: UserId::random(),
        trace_id: None,
        state: JobState::Processing,
    }
}

/// A schedule-from-draft request starting in a day and ending in thirty.
pub fn schedule() -> JobRequest {
    let now = now();
    JobRequest::ScheduleFromDraft {
        start_fielding_at: days_from(now, 1),
        end_fielding_at: days_from(now, 30),
    }
}

/// A launch-from-draft request ending in thirty days.
pub fn launch() -> JobRequest {
    JobRequest::LaunchFromDraft {
        end_fielding_at: days_from(now(), 30),
    }
}

/// A processing bulk job: `action` over `target_groups` (each pending) in
/// the account and project of `scope`, under the idempotency key `key`,
/// with a fresh id, created now (to the millisecond) by a random user.
/// Change any field with struct update syntax.
///
/// ```
/// use fielding_core::{BulkAction, BulkJobStatus};
/// use fielding_testkit::fixtures;
/// let scope = fixtures::scope();
/// let job = fixtures::bulk_job(scope, "pause-1", BulkAction::Pause, &[scope.target_group_id]);
/// assert_eq!(job.status, BulkJobStatus::Processing);
/// assert_eq!(job.pending().count(), 1);
/// ```
///
/// # Panics
/// If `key` is not a valid idempotency key: a fixture bug.
pub fn bulk_job(scope: Scope, key: &str, action: BulkAction, target_groups: &[TargetGroupId]) -> BulkJob {
    BulkJob {
        id: JobId::generate(),
        account_id: scope.account_id,
        project_id: scope.project_id,
        action,
        idempotency_key: IdempotencyKey::parse(key)
            .unwrap_or_else(|err| panic!("fixture idempotency key {key:?} is invalid: {err}")),
        created_at: now(),
        created_by: UserId::random(),
        trace_id: None,
        status: BulkJobStatus::Processing,
        items: target_groups
            .iter()
            .map(|target_group_id| BulkItem {
                target_group_id: *target_group_id,
                outcome: None,
            })
            .collect(),
    }
}

/// A bulk-job submission: `action` over `target_groups` in the account and
/// project of `scope`, under the idempotency key `key`, by a random user.
///
/// # Panics
/// If `key` is not a valid idempotency key: a fixture bug.
pub fn new_bulk_job(scope: Scope, key: &str, action: BulkAction, target_groups: Vec<TargetGroupId>) -> NewBulkJob {
    NewBulkJob {
        account_id: scope.account_id,
        project_id: scope.project_id,
        action,
        idempotency_key: IdempotencyKey::parse(key)
            .unwrap_or_else(|err| panic!("fixture idempotency key {key:?} is invalid: {err}")),
        target_group_ids: target_groups,
        actor: UserId::random(),
        trace_id: None,
    }
}

/// What a bulk job's `action` does to a run in `status` (its effective
/// status), written out from the contract and `docs/lifecycle.md` as an
/// independent oracle for tests: updated when the single-run command is
/// allowed or the run is already in the action's status, else
/// `StatusTransitionNotAllowed`.
///
/// ```
/// use fielding_core::{BulkAction, BulkItemOutcome, Status};
/// use fielding_testkit::fixtures;
/// assert_eq!(fixtures::bulk_outcome(BulkAction::Pause, Status::Paused), BulkItemOutcome::Updated);
/// ```
pub fn bulk_outcome(action: BulkAction, status: Status) -> BulkItemOutcome {
    use Status::{Completed, Live, Paused, Scheduled};
    let allowed = match action {
        BulkAction::Complete => true,
        BulkAction::Launch => matches!(status, Scheduled | Live),
        BulkAction::Pause => matches!(status, Live | Paused),
        BulkAction::Resume => matches!(status, Paused | Live),
        BulkAction::Relaunch => matches!(status, Completed | Live),
        // A new action needs its row here before tests can use it.
        _ => false,
    };
    if allowed {
        BulkItemOutcome::Updated
    } else {
        BulkItemOutcome::Failed(BulkItemFailure::StatusTransitionNotAllowed)
    }
}
