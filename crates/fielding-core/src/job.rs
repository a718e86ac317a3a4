//! Creation jobs: how a draft target group gets its fielding run.
//!
//! The contract creates runs through asynchronous jobs
//! (`fielding-run-jobs/launch-from-draft` and `.../schedule-from-draft`).
//! A job is recorded in the store *before* the run is created, under the
//! caller's idempotency key, and it carries the id of the run it will
//! create. That planned id is what makes a job safe to resume: if a process
//! dies between creating the run and recording the outcome, whoever picks
//! the job up again finds a run with the planned id and knows the job
//! succeeded, instead of mistaking its own run for someone else's.

use std::fmt;

use crate::{FieldingRunId, InvalidParam, JobId, Scope, Timestamp, UserId};

/// Which creation endpoint a job came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobKind {
    /// `launch-from-draft`: the run goes live now.
    LaunchFromDraft,
    /// `schedule-from-draft`: the run waits for its start.
    ScheduleFromDraft,
}

impl JobKind {
    /// Both kinds.
    pub const ALL: [JobKind; 2] = [JobKind::LaunchFromDraft, JobKind::ScheduleFromDraft];

    /// The path segment and stored name: `launch-from-draft`,
    /// `schedule-from-draft`.
    ///
    /// ```
    /// use fielding_core::JobKind;
    /// assert_eq!(JobKind::parse("schedule-from-draft"), Some(JobKind::ScheduleFromDraft));
    /// assert_eq!(JobKind::LaunchFromDraft.as_str(), "launch-from-draft");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::LaunchFromDraft => "launch-from-draft",
            JobKind::ScheduleFromDraft => "schedule-from-draft",
        }
    }

    /// Parses [`JobKind::as_str`]'s names.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the caller asked a job to do: the validated request body.
///
/// Two submissions under one idempotency key are "the same request" when
/// their `JobRequest`s and scopes are equal; the comparison is on parsed
/// values, so JSON whitespace or key order does not matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobRequest {
    /// Launch now, end at `end_fielding_at`.
    LaunchFromDraft {
        /// When the run ends.
        end_fielding_at: Timestamp,
    },
    /// Schedule from `start_fielding_at` to `end_fielding_at`.
    ScheduleFromDraft {
        /// When the run starts.
        start_fielding_at: Timestamp,
        /// When the run ends.
        end_fielding_at: Timestamp,
    },
}

impl JobRequest {
    /// The endpoint this request belongs to.
    pub fn kind(&self) -> JobKind {
        match self {
            JobRequest::LaunchFromDraft { .. } => JobKind::LaunchFromDraft,
            JobRequest::ScheduleFromDraft { .. } => JobKind::ScheduleFromDraft,
        }
    }

    /// The requested start (schedule jobs only).
    pub fn start_fielding_at(&self) -> Option<Timestamp> {
        match self {
            JobRequest::LaunchFromDraft { .. } => None,
            JobRequest::ScheduleFromDraft { start_fielding_at, .. } => Some(*start_fielding_at),
        }
    }

    /// The requested end.
    pub fn end_fielding_at(&self) -> Timestamp {
        match self {
            JobRequest::LaunchFromDraft { end_fielding_at } => *end_fielding_at,
            JobRequest::ScheduleFromDraft { end_fielding_at, .. } => *end_fielding_at,
        }
    }

    /// Rebuilds a request from its stored columns (kind, optional start,
    /// end); `None` when they do not fit together.
    ///
    /// ```
    /// use fielding_core::{JobKind, JobRequest, Timestamp};
    /// let end = Timestamp::from_unix_millis(1_000).unwrap();
    /// let launch = JobRequest::from_parts(JobKind::LaunchFromDraft, None, end).unwrap();
    /// assert_eq!(launch.end_fielding_at(), end);
    /// assert!(JobRequest::from_parts(JobKind::ScheduleFromDraft, None, end).is_none());
    /// ```
    pub fn from_parts(kind: JobKind, start: Option<Timestamp>, end: Timestamp) -> Option<Self> {
        match (kind, start) {
            (JobKind::LaunchFromDraft, None) => Some(JobRequest::LaunchFromDraft { end_fielding_at: end }),
            (JobKind::ScheduleFromDraft, Some(start)) => Some(JobRequest::ScheduleFromDraft {
                start_fielding_at: start,
                end_fielding_at: end,
            }),
            _ => None,
        }
    }
}

/// The caller's `idempotency-key`: 1 to 255 visible ASCII characters.
///
/// Keys are unique per account: one key names one job in an account, and
/// reusing it for a different request is refused.
///
/// ```
/// use fielding_core::IdempotencyKey;
/// assert!(IdempotencyKey::parse("01BTGNYV6HRNK8K8VKZASZCFP0").is_ok());
/// assert!(IdempotencyKey::parse("").is_err());
/// assert!(IdempotencyKey::parse("has space").is_err());
/// assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The header's name, used in validation errors.
    pub const FIELD: &'static str = "idempotency-key";
    /// The contract's `maxLength`.
    pub const MAX_LEN: usize = 255;

    /// Validates a key.
    pub fn parse(text: &str) -> Result<Self, InvalidParam> {
        if text.is_empty() {
            return Err(InvalidParam::new(Self::FIELD, "must not be empty"));
        }
        if text.len() > Self::MAX_LEN {
            return Err(InvalidParam::new(
                Self::FIELD,
                format!("must be at most {} characters, got {}", Self::MAX_LEN, text.len()),
            ));
        }
        if let Some(pos) = text.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(InvalidParam::new(
                Self::FIELD,
                format!(
                    "must contain only visible ASCII characters; character {} is not allowed",
                    pos + 1
                ),
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({:?})", self.0)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The W3C trace id of the request that created a job (32 lower-case hex
/// digits, not all zero); the contract reports it for failed jobs.
///
/// ```
/// use fielding_core::JobTraceId;
/// assert!(JobTraceId::parse("0af7651916cd43dd8448eb211c80319c").is_some());
/// assert!(JobTraceId::parse("0AF7651916CD43DD8448EB211C80319C").is_none());
/// assert!(JobTraceId::parse(&"0".repeat(32)).is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobTraceId([u8; 32]);

impl JobTraceId {
    /// Validates a trace id.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let valid = bytes.len() == 32
            && bytes.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            && bytes.iter().any(|b| *b != b'0');
        if !valid {
            return None;
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(bytes);
        Some(Self(out))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are admitted.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for JobTraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed: the contract's `failure_reason.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobFailureCode {
    /// The dates are not acceptable (start in the past, end not after
    /// start, end in the past).
    InvalidFieldingDates,
    /// The target group is not a draft: it already has a fielding run.
    TargetGroupInvalidState,
}

impl JobFailureCode {
    /// Every code.
    pub const ALL: [JobFailureCode; 2] = [
        JobFailureCode::InvalidFieldingDates,
        JobFailureCode::TargetGroupInvalidState,
    ];

    /// The contract's spelling, also how stores keep it.
    ///
    /// ```
    /// use fielding_core::JobFailureCode;
    /// assert_eq!(JobFailureCode::InvalidFieldingDates.as_str(), "InvalidFieldingDates");
    /// assert_eq!(JobFailureCode::parse("TargetGroupInvalidState"), Some(JobFailureCode::TargetGroupInvalidState));
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            JobFailureCode::InvalidFieldingDates => "InvalidFieldingDates",
            JobFailureCode::TargetGroupInvalidState => "TargetGroupInvalidState",
        }
    }

    /// Parses [`JobFailureCode::as_str`]'s names.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

/// A failed job's reason: a code and words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    /// The machine code.
    pub code: JobFailureCode,
    /// The explanation.
    pub description: String,
}

/// How a finished job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// The run was created (its id is the job's planned run id).
    Completed,
    /// No run was created.
    Failed(JobFailure),
}

impl JobOutcome {
    /// The stored columns of this outcome: status name, failure code,
    /// failure description; what a store writes when it records the outcome.
    /// The same as [`JobState::to_columns`] of the finished state.
    ///
    /// ```
    /// use fielding_core::{JobFailure, JobFailureCode, JobOutcome};
    /// assert_eq!(JobOutcome::Completed.to_columns(), ("Completed", None, None));
    /// let failed = JobOutcome::Failed(JobFailure {
    ///     code: JobFailureCode::InvalidFieldingDates,
    ///     description: "The end is before the start.".into(),
    /// });
    /// assert_eq!(
    ///     failed.to_columns(),
    ///     ("Failed", Some("InvalidFieldingDates"), Some("The end is before the start."))
    /// );
    /// ```
    pub fn to_columns(&self) -> (&'static str, Option<&'static str>, Option<&str>) {
        match self {
            JobOutcome::Completed => (JobState::COMPLETED, None, None),
            JobOutcome::Failed(failure) => (
                JobState::FAILED,
                Some(failure.code.as_str()),
                Some(failure.description.as_str()),
            ),
        }
    }
}

/// Where a job is: the contract's `Processing`, `Completed` or `Failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Recorded, outcome not yet recorded.
    Processing,
    /// Finished.
    Finished(JobOutcome),
}

impl JobState {
    /// The status name of [`JobState::Processing`].
    pub const PROCESSING: &'static str = "Processing";
    /// The status name of a [`JobOutcome::Completed`] job.
    pub const COMPLETED: &'static str = "Completed";
    /// The status name of a [`JobOutcome::Failed`] job.
    pub const FAILED: &'static str = "Failed";

    /// The contract's status name, also how stores keep it.
    ///
    /// ```
    /// use fielding_core::{JobOutcome, JobState};
    /// assert_eq!(JobState::Processing.status_name(), "Processing");
    /// assert_eq!(JobState::Finished(JobOutcome::Completed).status_name(), JobState::COMPLETED);
    /// ```
    pub fn status_name(&self) -> &'static str {
        self.to_columns().0
    }

    /// The state as a store keeps it, in three columns: status name
    /// ([`JobState::status_name`]), failure code ([`JobFailureCode::as_str`])
    /// and failure description, the last two present exactly when the job
    /// failed. [`JobState::from_columns`] reads them back.
    ///
    /// ```
    /// use fielding_core::{JobFailure, JobFailureCode, JobOutcome, JobState};
    /// assert_eq!(JobState::Processing.to_columns(), ("Processing", None, None));
    /// let failed = JobState::Finished(JobOutcome::Failed(JobFailure {
    ///     code: JobFailureCode::TargetGroupInvalidState,
    ///     description: "The target group already has a fielding run.".into(),
    /// }));
    /// let (status, code, description) = failed.to_columns();
    /// assert_eq!((status, code), ("Failed", Some("TargetGroupInvalidState")));
    /// assert_eq!(JobState::from_columns(status, code, description), Ok(failed.clone()));
    /// ```
    pub fn to_columns(&self) -> (&'static str, Option<&'static str>, Option<&str>) {
        match self {
            JobState::Processing => (Self::PROCESSING, None, None),
            JobState::Finished(outcome) => outcome.to_columns(),
        }
    }

    /// Rebuilds a state from its stored columns ([`JobState::to_columns`]),
    /// strictly: an unknown status name or failure code, or columns that do
    /// not fit together (a failure code without `Failed`, `Failed` without
    /// a code and a description), is an error, never a guess.
    ///
    /// ```
    /// use fielding_core::{InvalidJobColumns, JobOutcome, JobState};
    /// assert_eq!(
    ///     JobState::from_columns("Completed", None, None),
    ///     Ok(JobState::Finished(JobOutcome::Completed))
    /// );
    /// assert!(matches!(
    ///     JobState::from_columns("Done", None, None),
    ///     Err(InvalidJobColumns::UnknownStatus(_))
    /// ));
    /// let err = JobState::from_columns("Failed", None, None).unwrap_err();
    /// assert_eq!(err.to_string(), "job status \"Failed\" does not fit failure code None with no description");
    /// ```
    pub fn from_columns(
        status: &str,
        code: Option<&str>,
        description: Option<&str>,
    ) -> Result<JobState, InvalidJobColumns> {
        match (status, code, description) {
            (Self::PROCESSING, None, None) => Ok(JobState::Processing),
            (Self::COMPLETED, None, None) => Ok(JobState::Finished(JobOutcome::Completed)),
            (Self::FAILED, Some(code), Some(description)) => Ok(JobState::Finished(JobOutcome::Failed(JobFailure {
                code: JobFailureCode::parse(code)
                    .ok_or_else(|| InvalidJobColumns::UnknownFailureCode(code.to_owned()))?,
                description: description.to_owned(),
            }))),
            (Self::PROCESSING | Self::COMPLETED | Self::FAILED, _, _) => Err(InvalidJobColumns::Misfit {
                status: status.to_owned(),
                code: code.map(str::to_owned),
                has_description: description.is_some(),
            }),
            _ => Err(InvalidJobColumns::UnknownStatus(status.to_owned())),
        }
    }
}

/// Why stored job columns are not a [`JobState`]: what
/// [`JobState::from_columns`] refuses. The message names the value or the
/// combination that does not fit (never the description's text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidJobColumns {
    /// The status is none of [`JobState::PROCESSING`],
    /// [`JobState::COMPLETED`] and [`JobState::FAILED`].
    #[error("unknown job status {0:?}")]
    UnknownStatus(String),
    /// The status is `Failed` but the failure code is not a
    /// [`JobFailureCode`].
    #[error("unknown job failure code {0:?}")]
    UnknownFailureCode(String),
    /// The status is known, but the failure code and description do not
    /// go with it.
    #[error(
        "job status {status:?} does not fit failure code {code:?} with {} description",
        if *has_description { "a" } else { "no" }
    )]
    Misfit {
        /// The stored status.
        status: String,
        /// The stored failure code.
        code: Option<String>,
        /// Whether a failure description is stored.
        has_description: bool,
    },
}

/// A creation job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldingRunJob {
    /// The job's id.
    pub id: JobId,
    /// The target group the run is for.
    pub scope: Scope,
    /// The caller's key; unique per account.
    pub idempotency_key: IdempotencyKey,
    /// What was asked.
    pub request: JobRequest,
    /// The id the created run gets (chosen when the job is recorded).
    pub fielding_run_id: FieldingRunId,
    /// When the job was recorded.
    pub created_at: Timestamp,
    /// Who submitted it.
    pub created_by: UserId,
    /// The trace id of the submitting request, when it had one.
    pub trace_id: Option<JobTraceId>,
    /// Processing, or how it ended.
    pub state: JobState,
}

impl FieldingRunJob {
    /// The job's address: its scope and id.
    pub fn key(&self) -> crate::JobKey {
        self.scope.job(self.id)
    }

    /// The endpoint the job came from.
    pub fn kind(&self) -> JobKind {
        self.request.kind()
    }

    /// The created run's id, once the job has completed.
    pub fn created_fielding_run_id(&self) -> Option<FieldingRunId> {
        match self.state {
            JobState::Finished(JobOutcome::Completed) => Some(self.fielding_run_id),
            _ => None,
        }
    }

    /// The failure, once the job has failed.
    pub fn failure(&self) -> Option<&JobFailure> {
        match &self.state {
            JobState::Finished(JobOutcome::Failed(failure)) => Some(failure),
            _ => None,
        }
    }

    /// Whether `other` asks for the same thing (scope and request), which
    /// is what an idempotent replay must do.
    pub fn same_request(&self, other: &FieldingRunJob) -> bool {
        self.scope == other.scope && self.request == other.request
    }
}

/// What [`crate::FieldingStore::create_job`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
// Returned once per submission; boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum JobCreated {
    /// The job was recorded.
    Created,
    /// The account already has a job under this idempotency key; here it
    /// is, unchanged.
    Existing(FieldingRunJob),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_bounds() {
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        let err = IdempotencyKey::parse(&"k".repeat(256)).unwrap_err();
        assert_eq!(err.name, "idempotency-key");
        assert!(err.reason.contains("255"));
        assert!(IdempotencyKey::parse("tab\there").is_err());
        assert!(IdempotencyKey::parse("é").is_err());
        assert!(IdempotencyKey::parse("~!@#$%^&*()").is_ok());
    }

    #[test]
    fn names_round_trip() {
        for kind in JobKind::ALL {
            assert_eq!(JobKind::parse(kind.as_str()), Some(kind));
        }
        for code in JobFailureCode::ALL {
            assert_eq!(JobFailureCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(JobKind::parse("Launch-From-Draft"), None);
    }

    #[test]
    fn trace_id_rules() {
        assert!(JobTraceId::parse("0af7651916cd43dd8448eb211c80319").is_none());
        assert!(JobTraceId::parse("0af7651916cd43dd8448eb211c80319cc").is_none());
        assert!(JobTraceId::parse("0af7651916cd43dd8448eb211c80319g").is_none());
        let id = JobTraceId::parse("0af7651916cd43dd8448eb211c80319c").unwrap();
        assert_eq!(id.to_string(), "0af7651916cd43dd8448eb211c80319c");
    }

    #[test]
    fn every_state_round_trips_through_its_columns() {
        let mut states = vec![JobState::Processing, JobState::Finished(JobOutcome::Completed)];
        for code in JobFailureCode::ALL {
            for description in ["The end is before the start.", ""] {
                states.push(JobState::Finished(JobOutcome::Failed(JobFailure {
                    code,
                    description: description.into(),
                })));
            }
        }
        for state in states {
            let (status, code, description) = state.to_columns();
            assert_eq!(status, state.status_name());
            if let JobState::Finished(outcome) = &state {
                assert_eq!(outcome.to_columns(), (status, code, description));
            }
            assert_eq!(JobState::from_columns(status, code, description), Ok(state.clone()));
        }
        assert_eq!(JobState::Processing.to_columns(), ("Processing", None, None));
        assert_eq!(JobOutcome::Completed.to_columns(), ("Completed", None, None));
    }

    #[test]
    fn columns_that_do_not_fit_are_refused() {
        use InvalidJobColumns::*;
        let code = Some("InvalidFieldingDates");
        let text = Some("x");
        let misfit = |status: &str, code: Option<&str>, has_description| Misfit {
            status: status.into(),
            code: code.map(Into::into),
            has_description,
        };
        for (status, code, description, expected) in [
            ("Done", None, None, UnknownStatus("Done".into())),
            ("processing", None, None, UnknownStatus("processing".into())),
            ("", None, None, UnknownStatus("".into())),
            ("Done", code, text, UnknownStatus("Done".into())),
            ("Processing", code, text, misfit("Processing", code, true)),
            ("Processing", code, None, misfit("Processing", code, false)),
            ("Processing", None, text, misfit("Processing", None, true)),
            ("Completed", code, text, misfit("Completed", code, true)),
            ("Completed", code, None, misfit("Completed", code, false)),
            ("Completed", None, text, misfit("Completed", None, true)),
            ("Failed", None, None, misfit("Failed", None, false)),
            ("Failed", code, None, misfit("Failed", code, false)),
            ("Failed", None, text, misfit("Failed", None, true)),
            ("Failed", Some("Nope"), text, UnknownFailureCode("Nope".into())),
            (
                "Failed",
                Some("invalidFieldingDates"),
                text,
                UnknownFailureCode("invalidFieldingDates".into()),
            ),
        ] {
            let err = JobState::from_columns(status, code, description).unwrap_err();
            assert_eq!(err, expected, "{status:?} {code:?} {description:?}");
        }
        let messages = [
            (UnknownStatus("Done".into()), r#"unknown job status "Done""#),
            (UnknownFailureCode("Nope".into()), r#"unknown job failure code "Nope""#),
            (
                misfit("Completed", code, false),
                r#"job status "Completed" does not fit failure code Some("InvalidFieldingDates") with no description"#,
            ),
            (
                misfit("Processing", None, true),
                r#"job status "Processing" does not fit failure code None with a description"#,
            ),
        ];
        for (err, message) in messages {
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn request_parts_round_trip() {
        let start = Timestamp::from_unix_millis(1_000).unwrap();
        let end = Timestamp::from_unix_millis(2_000).unwrap();
        let schedule = JobRequest::ScheduleFromDraft {
            start_fielding_at: start,
            end_fielding_at: end,
        };
        assert_eq!(
            JobRequest::from_parts(
                schedule.kind(),
                schedule.start_fielding_at(),
                schedule.end_fielding_at()
            ),
            Some(schedule)
        );
        assert!(JobRequest::from_parts(JobKind::LaunchFromDraft, Some(start), end).is_none());
    }
}
