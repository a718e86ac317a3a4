//! The contract's JSON shapes of a run.

use fielding_core::{FieldingRun, FieldingRunId, Status, Timestamp, UserId, Version};
use serde::{Deserialize, Serialize};

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
