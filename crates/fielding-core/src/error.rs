//! The one error type callers of the service match on.
//!
//! Each kind has a stable machine code equal to the contract's error
//! `object` (`bad_request_error`, ...), so an HTTP layer maps errors without
//! string matching, and other callers can branch on [`FieldingError::code`].

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Action, InvalidId, InvalidIfMatch, InvalidTimestamp, Status, StoreError, Version};

/// One bad field: the contract's `InvalidParam`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidParam {
    /// The field (`end_fielding_at`), path parameter or header (`If-Match`).
    pub name: Cow<'static, str>,
    /// Why it was refused.
    pub reason: String,
}

impl InvalidParam {
    /// A bad field and the reason.
    pub fn new(name: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InvalidParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

/// Why a use case failed.
///
/// ```
/// use fielding_core::{FieldingError, InvalidParam};
/// let err = FieldingError::invalid([InvalidParam::new("end_fielding_at", "must be after start_fielding_at")]);
/// assert_eq!(err.code(), "bad_request_error");
/// assert_eq!(err.invalid_params()[0].name, "end_fielding_at");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FieldingError {
    /// Input failed validation; every bad field is listed.
    #[error("invalid input: {}", join(.params))]
    Validation {
        /// The bad fields, each with a reason.
        params: Vec<InvalidParam>,
    },

    /// Nothing exists at that address (or it exists under another scope,
    /// which callers must not be able to tell apart).
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `fielding run 01J... (account 1 / ...)`.
        what: String,
    },

    /// The caller's `If-Match` does not name the current version.
    #[error("precondition failed: the fielding run has changed since you read it; it is now at version {current}")]
    PreconditionFailed {
        /// The version the run is at now; its ETag is what to re-read with.
        current: Version,
    },

    /// The lifecycle does not allow this command in the current status.
    #[error("cannot {action} a {status} fielding run: {detail}", action = action_phrase(*.action))]
    InvalidState {
        /// The refused command.
        action: Action,
        /// The effective status that forbids it.
        status: Status,
        /// Why, in words a client can act on.
        detail: String,
    },

    /// The target group already has a fielding run (at most one per target
    /// group), so a new one cannot be created.
    #[error("{scope} already has a fielding run; a target group has at most one")]
    TargetGroupHasRun {
        /// The target group's scope.
        scope: crate::Scope,
    },

    /// A change-feed cursor points before records that have been pruned:
    /// reading on from it would skip them. The reader starts over: it reads
    /// the current state, then follows the feed from a fresh cursor
    /// (HTTP `410 Gone`, as Kubernetes answers a compacted
    /// `resourceVersion`).
    #[error("cursor {after} has expired: changes after it have been pruned; read the current state again and follow the feed from a new cursor")]
    CursorExpired {
        /// The refused cursor.
        after: crate::FeedPosition,
    },

    /// The store failed. The source is for logs only: never show it to a
    /// client (see [`FieldingError::public_detail`]).
    #[error("storage failure")]
    Storage {
        /// What the store reported.
        #[source]
        source: StoreError,
    },
}

fn join(params: &[InvalidParam]) -> String {
    params.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

fn action_phrase(action: Action) -> &'static str {
    match action {
        Action::Schedule => "schedule",
        Action::Launch => "launch",
        Action::UpdateDates => "update the dates of",
        Action::LaunchNow => "launch now",
        Action::Pause => "pause",
        Action::Resume => "resume",
        Action::Complete => "complete",
        Action::Relaunch => "relaunch",
    }
}

/// Text shown to clients instead of a storage error's details.
pub const INTERNAL_ERROR_DETAIL: &str = "an internal error has led to the failure of this operation";

impl FieldingError {
    /// A validation error from one or more bad fields.
    pub fn invalid(params: impl IntoIterator<Item = InvalidParam>) -> Self {
        FieldingError::Validation {
            params: params.into_iter().collect(),
        }
    }

    /// A validation error for one field.
    pub fn invalid_field(name: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Self::invalid([InvalidParam::new(name, reason)])
    }

    /// The stable machine code, equal to the contract's error `object`.
    pub fn code(&self) -> &'static str {
        match self {
            FieldingError::Validation { .. } => "bad_request_error",
            FieldingError::NotFound { .. } => "not_found_error",
            FieldingError::PreconditionFailed { .. } => "precondition_failed_error",
            FieldingError::InvalidState { .. } | FieldingError::TargetGroupHasRun { .. } => "invalid_state_error",
            FieldingError::CursorExpired { .. } => "cursor_expired_error",
            FieldingError::Storage { .. } => "unexpected_internal_error",
        }
    }

    /// The message safe to show a client: the error's own text, except for
    /// storage failures, whose details stay in the logs.
    pub fn public_detail(&self) -> String {
        match self {
            FieldingError::Storage { .. } => INTERNAL_ERROR_DETAIL.to_owned(),
            other => other.to_string(),
        }
    }

    /// The bad fields of a validation error; empty for other kinds.
    pub fn invalid_params(&self) -> &[InvalidParam] {
        match self {
            FieldingError::Validation { params } => params,
            _ => &[],
        }
    }

    /// Whether repeating the same call later may succeed: a lost race (after
    /// re-reading the run) or a transient storage fault.
    pub fn is_retryable(&self) -> bool {
        match self {
            FieldingError::PreconditionFailed { .. } => true,
            FieldingError::Storage { source } => source.is_retryable(),
            _ => false,
        }
    }
}

impl From<StoreError> for FieldingError {
    fn from(source: StoreError) -> Self {
        match source {
            StoreError::FeedExpired { after, .. } => FieldingError::CursorExpired { after },
            source => FieldingError::Storage { source },
        }
    }
}

impl From<InvalidId> for FieldingError {
    fn from(err: InvalidId) -> Self {
        FieldingError::invalid_field(err.field(), err.reason())
    }
}

impl From<Vec<InvalidId>> for FieldingError {
    fn from(errs: Vec<InvalidId>) -> Self {
        FieldingError::invalid(errs.iter().map(|e| InvalidParam::new(e.field(), e.reason())))
    }
}

impl From<InvalidIfMatch> for FieldingError {
    fn from(err: InvalidIfMatch) -> Self {
        FieldingError::invalid_field("If-Match", err.reason())
    }
}

impl InvalidTimestamp {
    /// This error as a validation error naming `field`.
    pub fn for_field(&self, field: impl Into<Cow<'static, str>>) -> FieldingError {
        FieldingError::invalid_field(field, self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_contract() {
        let cases: Vec<(FieldingError, &str)> = vec![
            (FieldingError::invalid_field("x", "y"), "bad_request_error"),
            (
                FieldingError::NotFound {
                    what: "fielding run".into(),
                },
                "not_found_error",
            ),
            (
                FieldingError::PreconditionFailed {
                    current: Version::INITIAL,
                },
                "precondition_failed_error",
            ),
            (
                FieldingError::InvalidState {
                    action: Action::Pause,
                    status: Status::Completed,
                    detail: "closed".into(),
                },
                "invalid_state_error",
            ),
            (
                FieldingError::from(StoreError::FeedExpired {
                    account: crate::AccountId::new(1).unwrap(),
                    after: crate::FeedPosition::new(1, 0),
                    pruned_through: crate::FeedPosition::new(9, 0),
                }),
                "cursor_expired_error",
            ),
            (
                FieldingError::from(StoreError::backend("disk on fire")),
                "unexpected_internal_error",
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code);
        }
    }

    #[test]
    fn storage_details_never_reach_the_public_detail() {
        let err = FieldingError::from(StoreError::backend("password=hunter2 at 10.0.0.1"));
        assert_eq!(err.public_detail(), INTERNAL_ERROR_DETAIL);
        assert!(!err.to_string().contains("hunter2"));
        let source = std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(source.contains("hunter2"), "the source is kept for logs");
    }

    #[test]
    fn messages_name_fields_and_states() {
        let err = FieldingError::invalid([
            InvalidParam::new("start_fielding_at", "must not be in the past"),
            InvalidParam::new("end_fielding_at", "must be after start_fielding_at"),
        ]);
        assert_eq!(
            err.to_string(),
            "invalid input: start_fielding_at: must not be in the past; end_fielding_at: must be after start_fielding_at"
        );
        let state = FieldingError::InvalidState {
            action: Action::UpdateDates,
            status: Status::Completed,
            detail: "no edits after fielding closes".into(),
        };
        assert_eq!(
            state.to_string(),
            "cannot update the dates of a completed fielding run: no edits after fielding closes"
        );
    }

    #[test]
    fn if_match_errors_name_the_header() {
        let err = FieldingError::from(crate::IfMatch::parse("7").unwrap_err());
        assert_eq!(err.invalid_params()[0].name, "If-Match");
    }
}
