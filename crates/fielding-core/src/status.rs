//! The four statuses of a fielding run.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The status of a fielding run, serialized in lower case as in the contract.
///
/// ```
/// use fielding_core::Status;
/// assert_eq!(serde_json::to_string(&Status::Live)?, "\"live\"");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for its start time.
    Scheduled,
    /// Collecting answers.
    Live,
    /// Stopped for now; can be resumed before the end.
    Paused,
    /// Closed: by a command, or because the end time passed.
    Completed,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 4] = [Status::Scheduled, Status::Live, Status::Paused, Status::Completed];

    /// The contract's name for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Live => "live",
            Status::Paused => "paused",
            Status::Completed => "completed",
        }
    }

    /// Parses the contract's name (`"live"`, ...).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
