//! Builders for runs in any state, for tests.
//!
//! The lifecycle only lets a run reach, say, version 7 and `paused` by seven
//! commands. A test about 412 handling should not have to replay them, so
//! [`RunBuilder`] makes the run directly and [`crate::MemoryStore::seed`]
//! stores it.
//!
//! Unset dates default relative to the reference instant (the system clock,
//! or [`RunBuilder::at`]) so the run's *effective* status is the status you
//! asked for: scheduled runs start in a day, live and paused runs started a
//! day ago, and every run ends in thirty days.

use chrono::TimeDelta;
use fielding_core::{
    AccountId, FieldingRun, FieldingRunId, ProjectId, Scope, Status, TargetGroupId, Timestamp, UserId, Version,
};

/// A builder with defaults: a fresh random scope, `scheduled`, version 1.
///
/// ```
/// use fielding_core::Status;
/// use fielding_memory::fixtures;
/// let run = fixtures::run().status(Status::Paused).version(12).build();
/// assert_eq!(run.version.get(), 12);
/// assert_eq!(run.effective_status(fielding_core::Timestamp::from(chrono::Utc::now())), Status::Paused);
/// ```
pub fn run() -> RunBuilder {
    RunBuilder::default()
}

/// A fresh scope with random ids, distinct from every other call's.
pub fn scope() -> Scope {
    let random = uuid::Uuid::new_v4().as_u128();
    // 1..=i32::MAX, always valid.
    let account = AccountId::new(1 + (random % i32::MAX as u128) as i64).unwrap_or_else(|_| unreachable!());
    Scope::new(account, project_id(), target_group_id())
}

/// A fresh random project id.
pub fn project_id() -> ProjectId {
    ProjectId::parse(FieldingRunId::generate().as_str()).unwrap_or_else(|_| unreachable!())
}

/// A fresh random target group id.
pub fn target_group_id() -> TargetGroupId {
    TargetGroupId::parse(FieldingRunId::generate().as_str()).unwrap_or_else(|_| unreachable!())
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
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = Some(scope);
        self
    }

    /// The run's id (default: generated).
    pub fn id(mut self, id: FieldingRunId) -> Self {
        self.id = Some(id);
        self
    }

    /// The stored status (default `scheduled`).
    pub fn status(mut self, status: Status) -> Self {
        self.status = Some(status);
        self
    }

    /// The version (default 1).
    ///
    /// # Panics
    /// If `version` is 0 or above `i64::MAX`: a fixture bug, not a test outcome.
    pub fn version(mut self, version: u64) -> Self {
        match Version::new(version) {
            Some(v) => self.version = Some(v),
            None => panic!("fixture version must be from 1 to i64::MAX, got {version}"),
        }
        self
    }

    /// Both dates.
    pub fn dates(self, start: Timestamp, end: Timestamp) -> Self {
        self.start(start).end(end)
    }

    /// The start date.
    pub fn start(mut self, start: Timestamp) -> Self {
        self.start = Some(start);
        self
    }

    /// The end date.
    pub fn end(mut self, end: Timestamp) -> Self {
        self.end = Some(end);
        self
    }

    /// The instant defaults are relative to (default: the system clock).
    /// Pass your `ManualClock`'s time here.
    pub fn at(mut self, now: Timestamp) -> Self {
        self.at = Some(now);
        self
    }

    /// `last_changed_at` (default: the reference instant).
    pub fn changed_at(mut self, at: Timestamp) -> Self {
        self.changed_at = Some(at);
        self
    }

    /// `last_changed_by` (default: a random user).
    pub fn changed_by(mut self, user: UserId) -> Self {
        self.changed_by = Some(user);
        self
    }

    /// The run.
    pub fn build(self) -> FieldingRun {
        let now = self.at.unwrap_or_else(|| Timestamp::from(chrono::Utc::now()));
        let status = self.status.unwrap_or(Status::Scheduled);
        let shift = |days| now.checked_add(TimeDelta::days(days)).unwrap_or(now);
        let default_start = match status {
            Status::Scheduled => shift(1),
            Status::Live | Status::Paused | Status::Completed => shift(-1),
        };
        let start = self.start.unwrap_or(default_start);
        let end = self.end.unwrap_or_else(|| {
            let planned = shift(30);
            if planned > start {
                planned
            } else {
                start.checked_add(TimeDelta::days(30)).unwrap_or(start)
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
