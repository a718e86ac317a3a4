//! Change records: one per version, written atomically with the change.

use serde::{Deserialize, Serialize};

use crate::{FieldingRun, FieldingRunId, Status, Timestamp, UserId, Version};

/// The command that produced a version. Also names the action in
/// invalid-state errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// Created as `scheduled`.
    Schedule,
    /// Created as `live`, starting now.
    Launch,
    /// Start and/or end moved.
    UpdateDates,
    /// A scheduled run went live early.
    LaunchNow,
    /// `live` to `paused`.
    Pause,
    /// `paused` to `live`.
    Resume,
    /// Closed by command.
    Complete,
    /// `completed` back to `live`.
    Relaunch,
}

impl Action {
    /// Every action, in lifecycle order.
    pub const ALL: [Action; 8] = [
        Action::Schedule,
        Action::Launch,
        Action::UpdateDates,
        Action::LaunchNow,
        Action::Pause,
        Action::Resume,
        Action::Complete,
        Action::Relaunch,
    ];

    /// Parses the name [`Action::as_str`] gives (how stores keep it).
    ///
    /// ```
    /// use fielding_core::Action;
    /// assert_eq!(Action::parse("launch_now"), Some(Action::LaunchNow));
    /// assert_eq!(Action::parse("explode"), None);
    /// ```
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// The stored name of the action: `schedule`, `update_dates`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Schedule => "schedule",
            Action::Launch => "launch",
            Action::UpdateDates => "update_dates",
            Action::LaunchNow => "launch_now",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Complete => "complete",
            Action::Relaunch => "relaunch",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one successful change did. Stores keep exactly one per version, in
/// version order, with no gaps, written in the same atomic step as the run.
///
/// The `*_from` fields are `None` for the record of version 1 (creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// The run that changed.
    pub run_id: FieldingRunId,
    /// The version this change produced.
    pub version: Version,
    /// The command.
    pub action: Action,
    /// When.
    pub changed_at: Timestamp,
    /// Who.
    pub changed_by: UserId,
    /// Effective status before the change.
    pub status_from: Option<Status>,
    /// Status after the change.
    pub status_to: Status,
    /// Start before the change.
    pub start_from: Option<Timestamp>,
    /// Start after the change.
    pub start_to: Timestamp,
    /// End before the change.
    pub end_from: Option<Timestamp>,
    /// End after the change.
    pub end_to: Timestamp,
}

impl ChangeRecord {
    /// The record of `run` coming into being as it is now: the first record
    /// of a history (the `*_from` fields are `None`). The service writes one
    /// for every new run; stores and test fixtures use it to start a history
    /// at any version.
    ///
    /// ```
    /// use fielding_core::{Action, ChangeRecord};
    /// # fn demo(run: &fielding_core::FieldingRun) {
    /// let record = ChangeRecord::created(run, Action::Schedule);
    /// assert_eq!(record.version, run.version);
    /// assert_eq!(record.status_from, None);
    /// # }
    /// ```
    pub fn created(run: &FieldingRun, action: Action) -> Self {
        ChangeRecord {
            run_id: run.id,
            version: run.version,
            action,
            changed_at: run.last_changed_at,
            changed_by: run.last_changed_by,
            status_from: None,
            status_to: run.status,
            start_from: None,
            start_to: run.start_fielding_at,
            end_from: None,
            end_to: run.end_fielding_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_round_trips_through_its_name_and_serde() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
            let json = serde_json::to_string(&action).unwrap();
            assert_eq!(json, format!("\"{}\"", action.as_str()), "serde and as_str agree");
        }
        assert_eq!(Action::parse(""), None);
    }
}
