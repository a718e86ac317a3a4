//! The fielding run record.

use serde::{Deserialize, Serialize};

use crate::{
    AccountId, ETag, FieldingRunId, ProjectId, RunKey, Scope, Status, TargetGroupId, Timestamp, UserId, Version,
};

/// A fielding run as stored: the period during which a target group is live.
///
/// `status` is the *stored* status. What a caller should see is the
/// [effective status](FieldingRun::effective_status), which also accounts for
/// the clock (a scheduled run whose start has passed is live). The service
/// returns runs with the effective status already filled in.
///
/// Serialized field names are the contract's (`start_fielding_at`, ...), with
/// the scope fields added (the HTTP layer serves the contract's exact
/// `FieldingRunItem` shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldingRun {
    /// The run's id (a ULID the library generates).
    pub id: FieldingRunId,
    /// The owning account.
    pub account_id: AccountId,
    /// The owning project.
    pub project_id: ProjectId,
    /// The target group; it has at most one run.
    pub target_group_id: TargetGroupId,
    /// When fielding starts (or started).
    pub start_fielding_at: Timestamp,
    /// When fielding ends; always after the start.
    pub end_fielding_at: Timestamp,
    /// The stored status.
    pub status: Status,
    /// 1 at creation, plus one per change.
    pub version: Version,
    /// When the last change was made.
    pub last_changed_at: Timestamp,
    /// Who made the last change.
    pub last_changed_by: UserId,
}

impl FieldingRun {
    /// The run's scope (account, project, target group).
    pub fn scope(&self) -> Scope {
        Scope::new(self.account_id, self.project_id, self.target_group_id)
    }

    /// The run's full address.
    pub fn key(&self) -> RunKey {
        self.scope().run(self.id)
    }

    /// The strong ETag of the current version.
    pub fn etag(&self) -> ETag {
        self.version.etag()
    }

    /// The status as of `now`; see [`crate::lifecycle::effective_status`].
    pub fn effective_status(&self, now: Timestamp) -> Status {
        crate::lifecycle::effective_status(self.status, self.start_fielding_at, self.end_fielding_at, now)
    }

    /// This run with `status` replaced by the effective status at `now`.
    /// Version and everything else stay as they are: time alone never
    /// changes a run's version.
    pub fn as_of(mut self, now: Timestamp) -> Self {
        self.status = self.effective_status(now);
        self
    }
}
