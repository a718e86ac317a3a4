//! The lifecycle rules, as pure functions of a run, a command and the clock.
//!
//! Nothing here does I/O, so every rule is tested directly and the service
//! only has to load, ask [`decide`], and save. See `docs/lifecycle.md` for the
//! state diagram and the full command × status table.
//!
//! Rules are judged on the *effective* status, which folds in the clock:
//! a `scheduled` run whose start has passed is `live`, and any run whose end
//! has passed is `completed`. Time alone never writes anything or changes a
//! version; the effective status is written down only when a command changes
//! the run anyway.

use crate::{Action, FieldingError, FieldingRun, InvalidParam, Status, Timestamp};

/// The status a run has at `now`, given what is stored.
///
/// ```
/// use fielding_core::{lifecycle::effective_status, Status, Timestamp};
/// let t = |s: &str| s.parse::<Timestamp>().unwrap();
/// let (start, end) = (t("2030-01-01T00:00:00Z"), t("2030-02-01T00:00:00Z"));
/// assert_eq!(effective_status(Status::Scheduled, start, end, t("2029-12-31T00:00:00Z")), Status::Scheduled);
/// assert_eq!(effective_status(Status::Scheduled, start, end, t("2030-01-15T00:00:00Z")), Status::Live);
/// assert_eq!(effective_status(Status::Paused, start, end, t("2030-02-01T00:00:00Z")), Status::Completed);
/// ```
pub fn effective_status(stored: Status, start: Timestamp, end: Timestamp, now: Timestamp) -> Status {
    if now >= end {
        Status::Completed
    } else if stored == Status::Scheduled && now >= start {
        Status::Live
    } else {
        stored
    }
}

/// A command on an existing run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Move the dates (the contract's `PUT`).
    UpdateDates {
        /// The new start; must equal the current one once the run has started.
        start_fielding_at: Timestamp,
        /// The new end.
        end_fielding_at: Timestamp,
    },
    /// `scheduled` → `live` now, keeping the planned duration.
    LaunchNow,
    /// `live` → `paused`.
    Pause,
    /// `paused` → `live`, before the end.
    Resume,
    /// `scheduled`, `live` or `paused` → `completed`.
    Complete,
    /// `completed` → `live`, before the end.
    Relaunch,
}

impl Command {
    /// The action recorded for this command.
    pub fn action(&self) -> Action {
        match self {
            Command::UpdateDates { .. } => Action::UpdateDates,
            Command::LaunchNow => Action::LaunchNow,
            Command::Pause => Action::Pause,
            Command::Resume => Action::Resume,
            Command::Complete => Action::Complete,
            Command::Relaunch => Action::Relaunch,
        }
    }
}

/// The state a command leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Status after the command.
    pub status: Status,
    /// Start after the command.
    pub start_fielding_at: Timestamp,
    /// End after the command.
    pub end_fielding_at: Timestamp,
}

/// What a command does to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing would change (an update to the same dates): succeed without a
    /// new version.
    Unchanged,
    /// Write this state as the next version.
    Change(Target),
}

fn refuse(action: Action, status: Status, detail: impl Into<String>) -> FieldingError {
    FieldingError::InvalidState {
        action,
        status,
        detail: detail.into(),
    }
}

fn end_after_start(start: Timestamp, end: Timestamp) -> Option<InvalidParam> {
    (end <= start).then(|| {
        InvalidParam::new(
            "end_fielding_at",
            format!("must be after start_fielding_at ({start}), got {end}"),
        )
    })
}

/// Checks the dates for a new `scheduled` run: start not in the past, end
/// after start. Every bad field is reported at once.
///
/// ```
/// use fielding_core::{lifecycle::new_scheduled, Timestamp};
/// let t = |s: &str| s.parse::<Timestamp>().unwrap();
/// let now = t("2030-01-01T00:00:00Z");
/// let err = new_scheduled(t("2029-01-01T00:00:00Z"), t("2028-01-01T00:00:00Z"), now).unwrap_err();
/// assert_eq!(err.invalid_params().len(), 2);
/// ```
pub fn new_scheduled(start: Timestamp, end: Timestamp, now: Timestamp) -> Result<Target, FieldingError> {
    let mut params = Vec::new();
    if start < now {
        params.push(InvalidParam::new(
            "start_fielding_at",
            format!("must not be in the past (now is {now}), got {start}"),
        ));
    }
    params.extend(end_after_start(start, end));
    if !params.is_empty() {
        return Err(FieldingError::invalid(params));
    }
    Ok(Target {
        status: Status::Scheduled,
        start_fielding_at: start,
        end_fielding_at: end,
    })
}

/// Checks the end for a run launched now: it starts at `now` and must end
/// after it.
pub fn new_launched(end: Timestamp, now: Timestamp) -> Result<Target, FieldingError> {
    if end <= now {
        return Err(FieldingError::invalid_field(
            "end_fielding_at",
            format!("must be in the future (now is {now}), got {end}"),
        ));
    }
    Ok(Target {
        status: Status::Live,
        start_fielding_at: now,
        end_fielding_at: end,
    })
}

/// Decides what `command` does to `run` at `now`.
///
/// Input validation comes before the state check (a bad body on a completed
/// run is a 400), except where validity depends on the state: a scheduled
/// run's start must not be in the past; a started run's start cannot change
/// at all (invalid state) and its end must be in the future.
pub fn decide(run: &FieldingRun, command: &Command, now: Timestamp) -> Result<Decision, FieldingError> {
    let status = run.effective_status(now);
    let action = command.action();
    let change = |status, start_fielding_at, end_fielding_at| {
        Ok(Decision::Change(Target {
            status,
            start_fielding_at,
            end_fielding_at,
        }))
    };
    match command {
        Command::UpdateDates {
            start_fielding_at: start,
            end_fielding_at: end,
        } => {
            let (start, end) = (*start, *end);
            // The common case first: valid dates the run's state accepts.
            // It answers exactly what the checks below would, without
            // gathering an (empty) list of bad fields on every command;
            // anything else takes the full path, which words the refusal.
            let accepted = end > start
                && match status {
                    Status::Scheduled => start >= now,
                    Status::Live | Status::Paused => start == run.start_fielding_at && end > now,
                    Status::Completed => false,
                };
            if accepted {
                if start == run.start_fielding_at && end == run.end_fielding_at {
                    return Ok(Decision::Unchanged);
                }
                return change(status, start, end);
            }
            // Input checks that need no state come first; every bad field
            // is reported at once.
            let mut params: Vec<InvalidParam> = end_after_start(start, end).into_iter().collect();
            match status {
                Status::Completed if params.is_empty() => {
                    return Err(refuse(action, status, "no edits after fielding closes"));
                }
                Status::Completed => {}
                Status::Scheduled => {
                    if start < now {
                        params.insert(
                            0,
                            InvalidParam::new(
                                "start_fielding_at",
                                format!("must not be in the past (now is {now}), got {start}"),
                            ),
                        );
                    }
                }
                Status::Live | Status::Paused => {
                    if start != run.start_fielding_at && params.is_empty() {
                        return Err(refuse(
                            action,
                            status,
                            format!(
                                "fielding started at {}; the start of a started run cannot change",
                                run.start_fielding_at
                            ),
                        ));
                    }
                    if end <= now && params.is_empty() {
                        params.push(InvalidParam::new(
                            "end_fielding_at",
                            format!("must be in the future (now is {now}), got {end}"),
                        ));
                    }
                }
            }
            if !params.is_empty() {
                return Err(FieldingError::invalid(params));
            }
            if start == run.start_fielding_at && end == run.end_fielding_at {
                return Ok(Decision::Unchanged);
            }
            change(status, start, end)
        }
        Command::LaunchNow => match status {
            Status::Scheduled => {
                let duration = run.end_fielding_at.since(run.start_fielding_at);
                let end = now
                    .checked_add(duration)
                    .ok_or_else(|| refuse(action, status, "the planned duration does not fit after now"))?;
                change(Status::Live, now, end)
            }
            _ => Err(refuse(action, status, "only a scheduled run can be launched now")),
        },
        Command::Pause => match status {
            Status::Live => change(Status::Paused, run.start_fielding_at, run.end_fielding_at),
            _ => Err(refuse(action, status, "only a live run can be paused")),
        },
        Command::Resume => match status {
            Status::Paused => change(Status::Live, run.start_fielding_at, run.end_fielding_at),
            Status::Completed => Err(refuse(
                action,
                status,
                "only a paused run can be resumed, and only before its end",
            )),
            _ => Err(refuse(action, status, "only a paused run can be resumed")),
        },
        Command::Complete => match status {
            Status::Scheduled | Status::Live | Status::Paused => {
                change(Status::Completed, run.start_fielding_at, run.end_fielding_at)
            }
            Status::Completed => Err(refuse(action, status, "the run is already completed")),
        },
        Command::Relaunch => match status {
            Status::Completed if now < run.end_fielding_at => {
                // A run completed before it ever started goes live now.
                let start = run.start_fielding_at.min(now);
                change(Status::Live, start, run.end_fielding_at)
            }
            Status::Completed => Err(refuse(
                action,
                status,
                format!(
                    "fielding ended at {}; a run can be relaunched only before its end",
                    run.end_fielding_at
                ),
            )),
            _ => Err(refuse(action, status, "only a completed run can be relaunched")),
        },
    }
}

#[cfg(test)]
mod tests;
