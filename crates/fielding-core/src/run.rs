//! The fielding run record and its contract-shaped view.

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
/// the scope fields added; [`FieldingRunItem`] is the exact contract shape.
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

    /// The contract's `FieldingRunItem` view of this run.
    pub fn to_item(&self) -> FieldingRunItem {
        FieldingRunItem {
            id: self.id,
            last_changed_at: self.last_changed_at,
            last_changed_by: self.last_changed_by,
            start_fielding_at: self.start_fielding_at,
            end_fielding_at: self.end_fielding_at,
            status: self.status,
            version: self.version,
        }
    }
}

/// Exactly the contract's `FieldingRunItem` / `GetFieldingRunResponse`.
///
/// ```
/// use fielding_core::FieldingRunItem;
/// let json = r#"{"id":"01BTGNYV6HRNK8K8VKZASZCFP1","last_changed_at":"2023-01-01T23:00:00.000Z",
///   "last_changed_by":"b551326b-ac9d-4d32-8823-4f025787dab9","start_fielding_at":"2023-01-02T09:00:00.000Z",
///   "end_fielding_at":"2023-01-31T23:59:59.000Z","status":"scheduled","version":5}"#;
/// let item: FieldingRunItem = serde_json::from_str(json)?;
/// assert_eq!(item.version.get(), 5);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldingRunItem {
    /// The run's id.
    pub id: FieldingRunId,
    /// When the last change was made.
    pub last_changed_at: Timestamp,
    /// Who made the last change.
    pub last_changed_by: UserId,
    /// When fielding starts.
    pub start_fielding_at: Timestamp,
    /// When fielding ends.
    pub end_fielding_at: Timestamp,
    /// The status (effective, when produced by the service).
    pub status: Status,
    /// The version; its ETag is `"<version>"`.
    pub version: Version,
}
