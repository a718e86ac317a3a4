//! The contract's JSON shapes of a run and of a bulk job, and the change
//! feed's (`docs/feed-openapi.yml`).

use fielding_core::{
    AccountId, Action, BulkItemOutcome, BulkJob, BulkJobStatus, ChangeRecord, FeedPosition, FeedRecord, FieldingRun,
    FieldingRunId, JobId, ProjectId, Scope, Status, TargetGroupId, Timestamp, UserId, Version,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Exactly the contract's `FieldingRunItem` / `GetFieldingRunResponse`:
/// the run without its scope (the path carries it).
///
/// ```
/// use fielding_http::json::FieldingRunItem;
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

impl From<&FieldingRun> for FieldingRunItem {
    fn from(run: &FieldingRun) -> Self {
        FieldingRunItem {
            id: run.id,
            last_changed_at: run.last_changed_at,
            last_changed_by: run.last_changed_by,
            start_fielding_at: run.start_fielding_at,
            end_fielding_at: run.end_fielding_at,
            status: run.status,
            version: run.version,
        }
    }
}

/// The batch contract's `GetBulk…TargetGroupJobResponse`: one shape for
/// the five actions. Every item is in one list once it has an outcome (in
/// submission order), in neither while it is pending; both lists are
/// always complete (`has_more` is always `false`).
///
/// ```
/// use fielding_http::json::BulkJobResponse;
/// let json = r#"{"job_id":"01BTGNYV6HRNK8K8VKZASZCFP1","created_at":"2023-01-01T23:00:00.000Z",
///   "created_by":"b551326b-ac9d-4d32-8823-4f025787dab9","status":"Completed",
///   "updated_target_groups":{"data":[{"target_group_id":"01BTGNYV6HRNK8K8VKZASZCFP2"}],"has_more":false},
///   "failed_target_groups":{"data":[{"target_group_id":"01BTGNYV6HRNK8K8VKZASZCFP3",
///     "failure_reason":{"code":"StatusTransitionNotAllowed","description":"Status transition is not allowed."}}],
///   "has_more":false}}"#;
/// let job: BulkJobResponse = serde_json::from_str(json)?;
/// assert_eq!(job.failed_target_groups.data[0].failure_reason.code, "StatusTransitionNotAllowed");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkJobResponse {
    /// The job's id.
    pub job_id: JobId,
    /// When the job was submitted.
    pub created_at: Timestamp,
    /// Who submitted it.
    pub created_by: UserId,
    /// `Processing`, `Completed` or `Failed`.
    #[serde(serialize_with = "status_name", deserialize_with = "status_parsed")]
    pub status: BulkJobStatus,
    /// The target groups now in the action's status.
    pub updated_target_groups: TargetGroupList<UpdatedTargetGroup>,
    /// The target groups the action could not be applied to, and why.
    pub failed_target_groups: TargetGroupList<FailedTargetGroup>,
}

/// A list of a bulk job's target groups; never paginated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetGroupList<T> {
    /// Every entry, in submission order.
    pub data: Vec<T>,
    /// Always `false`: the list is complete.
    pub has_more: bool,
}

/// A target group a bulk job updated (or found already in the action's
/// status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatedTargetGroup {
    /// The target group.
    pub target_group_id: TargetGroupId,
}

/// A target group a bulk job could not update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedTargetGroup {
    /// The target group.
    pub target_group_id: TargetGroupId,
    /// Why.
    pub failure_reason: FailureReason,
}

/// The contract's `BulkJobFailureReason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReason {
    /// A machine-readable code (`TargetGroupNotFound`,
    /// `StatusTransitionNotAllowed`).
    pub code: String,
    /// The code in words.
    pub description: String,
}

impl From<&BulkJob> for BulkJobResponse {
    fn from(job: &BulkJob) -> Self {
        let mut updated = Vec::new();
        let mut failed = Vec::new();
        for item in &job.items {
            match item.outcome {
                Some(BulkItemOutcome::Updated) => updated.push(UpdatedTargetGroup {
                    target_group_id: item.target_group_id,
                }),
                Some(BulkItemOutcome::Failed(failure)) => failed.push(FailedTargetGroup {
                    target_group_id: item.target_group_id,
                    failure_reason: FailureReason {
                        code: failure.code().to_owned(),
                        description: failure.description().to_owned(),
                    },
                }),
                None => {}
            }
        }
        BulkJobResponse {
            job_id: job.id,
            created_at: job.created_at,
            created_by: job.created_by,
            status: job.status,
            updated_target_groups: TargetGroupList {
                data: updated,
                has_more: false,
            },
            failed_target_groups: TargetGroupList {
                data: failed,
                has_more: false,
            },
        }
    }
}

/// One change of one run, as the change-feed endpoints write it
/// (`docs/feed-openapi.yml`, `FieldingRunChange`): a change record with
/// the run's full address, its fields named as the rest of the API names
/// them (`start_fielding_at_from`, not `start_from`).
///
/// `cursor` is the record's place in its account's feed: present in the
/// account feed (`GET .../fielding-run-changes`), where a consumer may
/// continue after any record, and absent from a run's history
/// (`GET .../fielding-runs/{id}/changes`), whose records are read from
/// the run and addressed by `version`.
///
/// ```
/// use fielding_http::json::FieldingRunChange;
/// let json = r#"{"cursor":"42.0","account_id":101,"project_id":"01BTGNYV6HRNK8K8VKZASZCFP0",
///   "target_group_id":"01BTGNYV6HRNK8K8VKZASZCFP1","fielding_run_id":"01BTGNYV6HRNK8K8VKZASZCFP2",
///   "version":2,"action":"pause","changed_at":"2023-01-05T10:00:00.000Z",
///   "changed_by":"b551326b-ac9d-4d32-8823-4f025787dab9","status_from":"live","status_to":"paused",
///   "start_fielding_at_from":"2023-01-02T09:00:00.000Z","start_fielding_at_to":"2023-01-02T09:00:00.000Z",
///   "end_fielding_at_from":"2023-01-31T23:59:59.000Z","end_fielding_at_to":"2023-01-31T23:59:59.000Z"}"#;
/// let change: FieldingRunChange = serde_json::from_str(json)?;
/// assert_eq!(change.cursor.map(|c| c.to_string()).as_deref(), Some("42.0"));
/// assert_eq!(change.version.get(), 2);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldingRunChange {
    /// Where the record sits in its account's feed (account feed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<FeedPosition>,
    /// The run's account.
    pub account_id: AccountId,
    /// The run's project.
    pub project_id: ProjectId,
    /// The run's target group.
    pub target_group_id: TargetGroupId,
    /// The run.
    pub fielding_run_id: FieldingRunId,
    /// The version this change produced.
    pub version: Version,
    /// The command that produced it.
    pub action: Action,
    /// When.
    pub changed_at: Timestamp,
    /// Who.
    pub changed_by: UserId,
    /// The effective status before the change; `null` for the record that
    /// created the run.
    pub status_from: Option<Status>,
    /// The status after the change.
    pub status_to: Status,
    /// The start before the change; `null` for the creation.
    pub start_fielding_at_from: Option<Timestamp>,
    /// The start after the change.
    pub start_fielding_at_to: Timestamp,
    /// The end before the change; `null` for the creation.
    pub end_fielding_at_from: Option<Timestamp>,
    /// The end after the change.
    pub end_fielding_at_to: Timestamp,
}

impl FieldingRunChange {
    /// The change `change` of a run under `scope`, at `cursor` if known.
    pub fn new(scope: &Scope, change: &ChangeRecord, cursor: Option<FeedPosition>) -> Self {
        FieldingRunChange {
            cursor,
            account_id: scope.account_id,
            project_id: scope.project_id,
            target_group_id: scope.target_group_id,
            fielding_run_id: change.run_id,
            version: change.version,
            action: change.action,
            changed_at: change.changed_at,
            changed_by: change.changed_by,
            status_from: change.status_from,
            status_to: change.status_to,
            start_fielding_at_from: change.start_from,
            start_fielding_at_to: change.start_to,
            end_fielding_at_from: change.end_from,
            end_fielding_at_to: change.end_to,
        }
    }
}

impl From<&FeedRecord> for FieldingRunChange {
    fn from(record: &FeedRecord) -> Self {
        FieldingRunChange::new(&record.scope, &record.change, Some(record.position))
    }
}

/// A page of changes (`docs/feed-openapi.yml`, `FieldingRunChangePage`):
/// the records, where to continue, and whether more are readable now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldingRunChangePage {
    /// The changes, oldest first (in feed order for the account feed).
    pub data: Vec<FieldingRunChange>,
    /// What to pass as `after` for the next page: a feed cursor for the
    /// account feed, a version (in decimal) for a run's history.
    pub next_cursor: String,
    /// `true` when more changes can be read right now.
    pub has_more: bool,
}

fn status_name<S: Serializer>(status: &BulkJobStatus, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(status.as_str())
}

fn status_parsed<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BulkJobStatus, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    BulkJobStatus::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("unknown bulk job status {text:?}")))
}

#[cfg(test)]
mod tests {
    use fielding_core::{AccountId, BulkAction, BulkItem, BulkItemFailure, IdempotencyKey};

    use super::*;

    fn tg(n: u8) -> TargetGroupId {
        format!("01BTGNYV6HRNK8K8VKZASZCF{n:02}").parse().unwrap()
    }

    #[test]
    fn items_go_to_their_list_in_order_and_pending_ones_to_none() {
        let outcomes = [
            Some(BulkItemOutcome::Failed(BulkItemFailure::TargetGroupNotFound)),
            Some(BulkItemOutcome::Updated),
            None,
            Some(BulkItemOutcome::Failed(BulkItemFailure::StatusTransitionNotAllowed)),
            Some(BulkItemOutcome::Updated),
        ];
        let job = BulkJob {
            id: JobId::generate(),
            account_id: AccountId::new(101).unwrap(),
            project_id: "01BTGNYV6HRNK8K8VKZASZCFP0".parse().unwrap(),
            action: BulkAction::Pause,
            idempotency_key: IdempotencyKey::parse("k").unwrap(),
            created_at: Timestamp::from_unix_millis(1_700_000_000_123).unwrap(),
            created_by: UserId::random(),
            trace_id: None,
            status: BulkJobStatus::Processing,
            items: outcomes
                .iter()
                .zip(1..)
                .map(|(&outcome, n)| BulkItem {
                    target_group_id: tg(n),
                    outcome,
                })
                .collect(),
        };
        let body = BulkJobResponse::from(&job);
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["status"], "Processing");
        assert_eq!(json["created_at"], "2023-11-14T22:13:20.123Z");
        let updated: Vec<&str> = json["updated_target_groups"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["target_group_id"].as_str().unwrap())
            .collect();
        assert_eq!(updated, [tg(2).as_str(), tg(5).as_str()]);
        let failed = &json["failed_target_groups"]["data"];
        assert_eq!(failed[0]["target_group_id"], tg(1).as_str());
        assert_eq!(failed[0]["failure_reason"]["code"], "TargetGroupNotFound");
        assert_eq!(failed[0]["failure_reason"]["description"], "Target group not found.");
        assert_eq!(failed[1]["failure_reason"]["code"], "StatusTransitionNotAllowed");
        assert_eq!(failed.as_array().unwrap().len(), 2);
        assert_eq!(json["updated_target_groups"]["has_more"], false);
        assert_eq!(json["failed_target_groups"]["has_more"], false);
        let back: BulkJobResponse = serde_json::from_value(json).unwrap();
        assert_eq!(back, body);
    }
}
