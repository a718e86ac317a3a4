//! The contract's JSON shapes of a run and of a bulk job.

use fielding_core::{
    BulkItemOutcome, BulkJob, BulkJobStatus, FieldingRun, FieldingRunId, JobId, Status, TargetGroupId, Timestamp,
    UserId, Version,
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
