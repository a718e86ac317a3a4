//! Bulk jobs: one action (complete, launch, pause, relaunch, resume) over
//! a list of target groups, processed in the background.
//!
//! A bulk job is recorded with every item *pending*; a runner
//! ([`crate::BulkRunner`]) claims the job, applies the action to the items
//! in batches and records each item's outcome **in the same atomic step as
//! the run's write** ([`crate::FieldingStore::apply_bulk_items`]). That is
//! what makes an item applied at most once: there is no moment at which a
//! run has been changed by the job but the job does not know it, so a
//! runner that resumes after a crash never applies an item again on top of
//! a change someone else made in between.

use std::fmt;

use crate::lifecycle::Command;
use crate::{
    AccountId, ChangeRecord, FieldingRun, IdempotencyKey, InvalidParam, JobId, JobTraceId, ProjectId, Status,
    TargetGroupId, Timestamp, UserId, Version,
};

/// The five bulk operations of the batch contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum BulkAction {
    /// `complete-fielding-runs-by-target-group-id`.
    Complete,
    /// `launch-fielding-runs-by-target-group-id`.
    Launch,
    /// `pause-fielding-runs-by-target-group-id`.
    Pause,
    /// `relaunch-fielding-runs-by-target-group-id`.
    Relaunch,
    /// `resume-fielding-runs-by-target-group-id`.
    Resume,
}

impl BulkAction {
    /// All five.
    pub const ALL: [BulkAction; 5] = [
        BulkAction::Complete,
        BulkAction::Launch,
        BulkAction::Pause,
        BulkAction::Relaunch,
        BulkAction::Resume,
    ];

    /// The stored name: `complete`, `launch`, `pause`, `relaunch`, `resume`.
    ///
    /// ```
    /// use fielding_core::BulkAction;
    /// assert_eq!(BulkAction::parse("pause"), Some(BulkAction::Pause));
    /// assert_eq!(BulkAction::Relaunch.as_str(), "relaunch");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            BulkAction::Complete => "complete",
            BulkAction::Launch => "launch",
            BulkAction::Pause => "pause",
            BulkAction::Relaunch => "relaunch",
            BulkAction::Resume => "resume",
        }
    }

    /// Parses [`BulkAction::as_str`]'s names.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// The contract's path segment after `batch-jobs/`, e.g.
    /// `pause-fielding-runs-by-target-group-id`.
    ///
    /// ```
    /// use fielding_core::BulkAction;
    /// let segment = BulkAction::Pause.path_segment();
    /// assert_eq!(segment, "pause-fielding-runs-by-target-group-id");
    /// assert_eq!(BulkAction::from_path_segment(segment), Some(BulkAction::Pause));
    /// ```
    pub fn path_segment(self) -> &'static str {
        match self {
            BulkAction::Complete => "complete-fielding-runs-by-target-group-id",
            BulkAction::Launch => "launch-fielding-runs-by-target-group-id",
            BulkAction::Pause => "pause-fielding-runs-by-target-group-id",
            BulkAction::Relaunch => "relaunch-fielding-runs-by-target-group-id",
            BulkAction::Resume => "resume-fielding-runs-by-target-group-id",
        }
    }

    /// Parses [`BulkAction::path_segment`].
    pub fn from_path_segment(segment: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.path_segment() == segment)
    }

    /// The single-run command each item gets.
    pub fn command(self) -> Command {
        match self {
            BulkAction::Complete => Command::Complete,
            BulkAction::Launch => Command::LaunchNow,
            BulkAction::Pause => Command::Pause,
            BulkAction::Relaunch => Command::Relaunch,
            BulkAction::Resume => Command::Resume,
        }
    }

    /// The status the action leads to. A run already there (by its
    /// effective status) counts as updated without a new version.
    pub fn desired_status(self) -> Status {
        match self {
            BulkAction::Complete => Status::Completed,
            BulkAction::Pause => Status::Paused,
            BulkAction::Launch | BulkAction::Relaunch | BulkAction::Resume => Status::Live,
        }
    }
}

impl fmt::Display for BulkAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The address of one bulk job: the account and project it was submitted
/// under, and its id. A job is found only through its own account and
/// project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BulkJobKey {
    /// The account.
    pub account_id: AccountId,
    /// The project.
    pub project_id: ProjectId,
    /// The job's own id.
    pub id: JobId,
}

impl fmt::Display for BulkJobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bulk job {} (account {} / project {})",
            self.id, self.account_id, self.project_id
        )
    }
}

/// A bulk job's status, spelled as the contract spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BulkJobStatus {
    /// Items are still pending.
    Processing,
    /// Every item has an outcome and at least one was updated.
    Completed,
    /// Every item has an outcome and none was updated.
    Failed,
}

impl BulkJobStatus {
    /// `Processing`, `Completed` or `Failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            BulkJobStatus::Processing => "Processing",
            BulkJobStatus::Completed => "Completed",
            BulkJobStatus::Failed => "Failed",
        }
    }

    /// Parses [`BulkJobStatus::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        [
            BulkJobStatus::Processing,
            BulkJobStatus::Completed,
            BulkJobStatus::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Why an item failed: the contract's `failure_reason.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BulkItemFailure {
    /// The target group has no fielding run (in this account and project).
    TargetGroupNotFound,
    /// The lifecycle does not allow the action in the run's status.
    StatusTransitionNotAllowed,
}

impl BulkItemFailure {
    /// Both codes.
    pub const ALL: [BulkItemFailure; 2] = [
        BulkItemFailure::TargetGroupNotFound,
        BulkItemFailure::StatusTransitionNotAllowed,
    ];

    /// The contract's code, also how stores keep it.
    pub fn code(self) -> &'static str {
        match self {
            BulkItemFailure::TargetGroupNotFound => "TargetGroupNotFound",
            BulkItemFailure::StatusTransitionNotAllowed => "StatusTransitionNotAllowed",
        }
    }

    /// The contract's `description`.
    pub fn description(self) -> &'static str {
        match self {
            BulkItemFailure::TargetGroupNotFound => "Target group not found.",
            BulkItemFailure::StatusTransitionNotAllowed => "Status transition is not allowed.",
        }
    }

    /// Parses [`BulkItemFailure::code`].
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.code() == code)
    }
}

/// How one item ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BulkItemOutcome {
    /// The run is in the action's status (changed now, or already there).
    Updated,
    /// The action could not be applied.
    Failed(BulkItemFailure),
}

impl BulkItemOutcome {
    /// The stored form: `Updated`, or the failure code.
    ///
    /// ```
    /// use fielding_core::{BulkItemFailure, BulkItemOutcome};
    /// for outcome in [BulkItemOutcome::Updated, BulkItemOutcome::Failed(BulkItemFailure::TargetGroupNotFound)] {
    ///     assert_eq!(BulkItemOutcome::parse(outcome.as_str()), Some(outcome));
    /// }
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            BulkItemOutcome::Updated => "Updated",
            BulkItemOutcome::Failed(failure) => failure.code(),
        }
    }

    /// Parses [`BulkItemOutcome::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        if text == "Updated" {
            return Some(BulkItemOutcome::Updated);
        }
        BulkItemFailure::parse(text).map(BulkItemOutcome::Failed)
    }
}

/// One target group of a bulk job and, once processed, its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BulkItem {
    /// The target group.
    pub target_group_id: TargetGroupId,
    /// `None` while pending.
    pub outcome: Option<BulkItemOutcome>,
}

/// A bulk job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkJob {
    /// The job's id.
    pub id: JobId,
    /// The account it was submitted under.
    pub account_id: AccountId,
    /// The project whose target groups it acts on.
    pub project_id: ProjectId,
    /// What it does to each target group.
    pub action: BulkAction,
    /// The caller's key; unique per account among bulk jobs.
    pub idempotency_key: IdempotencyKey,
    /// When it was recorded.
    pub created_at: Timestamp,
    /// Who submitted it; also the `last_changed_by` of every run it changes.
    pub created_by: UserId,
    /// The trace id of the request that created it.
    pub trace_id: Option<JobTraceId>,
    /// `Processing` until every item has an outcome.
    pub status: BulkJobStatus,
    /// The target groups in the order submitted, each at most once.
    pub items: Vec<BulkItem>,
}

impl BulkJob {
    /// Most target groups one job may name. A job's `GET` lists every item
    /// (the contract does not paginate), so this also bounds that answer.
    pub const MAX_TARGET_GROUPS: usize = 10_000;

    /// The job's address.
    pub fn key(&self) -> BulkJobKey {
        BulkJobKey {
            account_id: self.account_id,
            project_id: self.project_id,
            id: self.id,
        }
    }

    /// The outcome of `target_group_id`: `None` while it is pending, or
    /// when it is not an item of this job.
    pub fn outcome_of(&self, target_group_id: TargetGroupId) -> Option<BulkItemOutcome> {
        self.items
            .iter()
            .find(|item| item.target_group_id == target_group_id)
            .and_then(|item| item.outcome)
    }

    /// The items still without an outcome, in order.
    pub fn pending(&self) -> impl Iterator<Item = TargetGroupId> + '_ {
        self.items
            .iter()
            .filter(|item| item.outcome.is_none())
            .map(|item| item.target_group_id)
    }

    /// The status the job has once every item has an outcome: `Completed`
    /// if at least one item was updated, `Failed` if none was (a job of one
    /// target group then reads like a creation job of one: failed when its
    /// only item failed); `Processing` while any item is pending.
    pub fn settled_status(&self) -> BulkJobStatus {
        if self.items.iter().any(|item| item.outcome.is_none()) {
            BulkJobStatus::Processing
        } else if self
            .items
            .iter()
            .any(|item| item.outcome == Some(BulkItemOutcome::Updated))
        {
            BulkJobStatus::Completed
        } else {
            BulkJobStatus::Failed
        }
    }

    /// Whether `other` asks for the same thing: same account, project and
    /// action, and the same target groups in any order.
    pub fn same_request(&self, other: &BulkJob) -> bool {
        if (self.account_id, self.project_id, self.action) != (other.account_id, other.project_id, other.action)
            || self.items.len() != other.items.len()
        {
            return false;
        }
        let sorted = |job: &BulkJob| {
            let mut ids: Vec<TargetGroupId> = job.items.iter().map(|item| item.target_group_id).collect();
            ids.sort_unstable();
            ids
        };
        sorted(self) == sorted(other)
    }

    /// The refusal of a list longer than [`BulkJob::MAX_TARGET_GROUPS`],
    /// naming `target_group_ids`: the one wording for every layer that
    /// enforces the limit (the HTTP layer refuses such a list before it
    /// parses its entries).
    pub fn too_many_target_groups() -> InvalidParam {
        InvalidParam::new(
            "target_group_ids",
            format!("must name at most {} target groups", Self::MAX_TARGET_GROUPS),
        )
    }

    /// Checks a submitted list: 1 to [`BulkJob::MAX_TARGET_GROUPS`] ids,
    /// none twice. Every repeat is named (`target_group_ids[4]`); the HTTP
    /// layer lists the first few in its answer.
    ///
    /// ```
    /// use fielding_core::{BulkJob, TargetGroupId};
    /// let a: TargetGroupId = "01BTGNYV6HRNK8K8VKZASZCFP1".parse()?;
    /// assert!(BulkJob::check_target_groups(&[a]).is_ok());
    /// let err = BulkJob::check_target_groups(&[a, a]).unwrap_err();
    /// assert_eq!(err[0].name, "target_group_ids[1]");
    /// assert!(BulkJob::check_target_groups(&[]).is_err());
    /// # Ok::<(), fielding_core::InvalidId>(())
    /// ```
    pub fn check_target_groups(ids: &[TargetGroupId]) -> Result<(), Vec<InvalidParam>> {
        const FIELD: &str = "target_group_ids";
        if ids.is_empty() {
            return Err(vec![InvalidParam::new(FIELD, "must name at least one target group")]);
        }
        if ids.len() > Self::MAX_TARGET_GROUPS {
            return Err(vec![Self::too_many_target_groups()]);
        }
        let mut first_at = std::collections::HashMap::with_capacity(ids.len());
        let mut params = Vec::new();
        for (index, id) in ids.iter().enumerate() {
            if let Some(first) = first_at.insert(*id, index) {
                // Keep the first position for later repeats too.
                first_at.insert(*id, first);
                params.push(InvalidParam::new(
                    format!("{FIELD}[{index}]"),
                    format!("repeats target_group_ids[{first}] ({id}); each target group may appear once"),
                ));
            }
        }
        if params.is_empty() {
            Ok(())
        } else {
            Err(params)
        }
    }
}

/// What [`crate::FieldingStore::create_bulk_job`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkJobCreated {
    /// The job was recorded.
    Created,
    /// The account already has a bulk job under that idempotency key;
    /// nothing was written. This is the stored job.
    Existing(BulkJob),
}

/// A runner's hold on a bulk job: a token that is new with every claim,
/// so that once another runner has taken the job over, the old holder's
/// writes are refused ([`crate::StoreError::ClaimLost`]) however late
/// they arrive (a fencing token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimToken(uuid::Uuid);

impl ClaimToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// Wraps a stored token.
    pub fn from_uuid(uuid: uuid::Uuid) -> Self {
        Self(uuid)
    }

    /// The token as a UUID, for storing.
    pub fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }
}

impl fmt::Display for ClaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A claim to take or renew: the token and until when it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkClaim {
    /// The holder's token.
    pub token: ClaimToken,
    /// The lease: after this instant another runner may take the job.
    pub lease_until: Timestamp,
}

/// What the callback of [`crate::FieldingStore::apply_bulk_items`] wants
/// done for one item.
#[derive(Debug)]
// Lives on the stack for one item; boxing would allocate per item.
#[allow(clippy::large_enum_variant)]
pub enum ItemUpdate {
    /// Write nothing to the run; record this outcome for the item.
    Record(BulkItemOutcome),
    /// Write `run` with its `change` if the stored run is still at
    /// `expected`, and record the item as updated.
    Write {
        /// The version the decision was made on.
        expected: Version,
        /// The next state of the run.
        run: FieldingRun,
        /// The record of this change.
        change: ChangeRecord,
    },
}

/// The callback of [`crate::FieldingStore::apply_bulk_items`]: shown each
/// pending item's target group and its run (`None`: the target group has
/// no run in the job's account and project). It may be called while the
/// store holds a lock or a transaction open, so it must be quick, must not
/// block and must not call back into the store.
pub type DecideItem<'a> = &'a mut (dyn FnMut(TargetGroupId, Option<&FieldingRun>) -> ItemUpdate + Send);

#[cfg(test)]
mod tests {
    use super::*;

    fn tg(n: u8) -> TargetGroupId {
        format!("01BTGNYV6HRNK8K8VKZASZCF{:02}", n).parse().unwrap()
    }

    fn job(items: &[(u8, Option<BulkItemOutcome>)]) -> BulkJob {
        BulkJob {
            id: JobId::generate(),
            account_id: AccountId::new(101).unwrap(),
            project_id: "01BTGNYV6HRNK8K8VKZASZCFP0".parse().unwrap(),
            action: BulkAction::Pause,
            idempotency_key: IdempotencyKey::parse("k").unwrap(),
            created_at: Timestamp::from_unix_millis(0).unwrap(),
            created_by: UserId::random(),
            trace_id: None,
            status: BulkJobStatus::Processing,
            items: items
                .iter()
                .map(|&(n, outcome)| BulkItem {
                    target_group_id: tg(n),
                    outcome,
                })
                .collect(),
        }
    }

    #[test]
    fn names_round_trip() {
        for action in BulkAction::ALL {
            assert_eq!(BulkAction::parse(action.as_str()), Some(action));
            assert_eq!(BulkAction::from_path_segment(action.path_segment()), Some(action));
        }
        for failure in BulkItemFailure::ALL {
            assert_eq!(
                BulkItemOutcome::parse(failure.code()),
                Some(BulkItemOutcome::Failed(failure))
            );
        }
        for status in [
            BulkJobStatus::Processing,
            BulkJobStatus::Completed,
            BulkJobStatus::Failed,
        ] {
            assert_eq!(BulkJobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(BulkItemOutcome::parse("updated"), None);
    }

    #[test]
    fn settled_status_follows_the_items() {
        let failed = Some(BulkItemOutcome::Failed(BulkItemFailure::TargetGroupNotFound));
        let updated = Some(BulkItemOutcome::Updated);
        assert_eq!(
            job(&[(1, updated), (2, None)]).settled_status(),
            BulkJobStatus::Processing
        );
        assert_eq!(
            job(&[(1, updated), (2, failed)]).settled_status(),
            BulkJobStatus::Completed
        );
        assert_eq!(job(&[(1, failed), (2, failed)]).settled_status(), BulkJobStatus::Failed);
    }

    #[test]
    fn same_request_ignores_order_but_not_content() {
        let a = job(&[(1, None), (2, None)]);
        let mut b = job(&[(2, None), (1, None)]);
        assert!(a.same_request(&b));
        b.items[0].target_group_id = tg(3);
        assert!(!a.same_request(&b));
        let mut c = job(&[(1, None), (2, None)]);
        c.action = BulkAction::Resume;
        assert!(!a.same_request(&c));
    }

    #[test]
    fn lists_are_checked() {
        let ids: Vec<TargetGroupId> = vec![tg(1), tg(2), tg(1), tg(1)];
        let err = BulkJob::check_target_groups(&ids).unwrap_err();
        assert_eq!(err.len(), 2);
        assert_eq!(err[0].name, "target_group_ids[2]");
        assert!(err[1].reason.contains("target_group_ids[0]"), "{}", err[1].reason);
        let too_many = vec![tg(1); BulkJob::MAX_TARGET_GROUPS + 1];
        let err = BulkJob::check_target_groups(&too_many).unwrap_err();
        assert_eq!(err.len(), 1, "one error for the length, not one per repeat");
        assert!(err[0].reason.contains("at most 10000"));
    }
}
