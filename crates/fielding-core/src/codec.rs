//! The storage codec: runs, change records and creation jobs as column
//! values, and back.
//!
//! Every SQL adapter binds what an `encode` gives it and hands what it
//! fetched to `decode`, so the mapping between the domain and a row lives
//! here once: a new field, a renamed status or a wider range is a change in
//! this file and in the adapters' SQL text, nowhere else.
//!
//! Column values are what every SQL driver binds natively: text, 64-bit
//! integers, UUIDs. Timestamps are whole milliseconds since the Unix epoch
//! (an adapter that stores `timestamptz` converts at its edge; both are
//! exact for the library's millisecond timestamps). Decoding is strict: a
//! value that is out of range, unknown, or does not fit the other columns
//! is [`StoreError::corrupt`] naming the field and the value, never a
//! guess, so a damaged row is reported instead of served.
//!
//! ```
//! use fielding_core::codec::RunRow;
//! # fn demo(run: &fielding_core::FieldingRun) -> Result<(), fielding_core::StoreError> {
//! let row = RunRow::encode(run);
//! // ... bind row.id, row.account_id, ... in the adapter's statement ...
//! assert_eq!(&row.decode()?, run);
//! # Ok(()) }
//! ```

use uuid::Uuid;

use crate::{
    AccountId, Action, ChangeRecord, FieldingRun, FieldingRunId, FieldingRunJob, IdempotencyKey, JobId, JobKind,
    JobRequest, JobState, JobTraceId, ProjectId, Scope, Status, StoreError, TargetGroupId, Timestamp, UserId, Version,
};

/// A [`FieldingRun`] as the columns of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunRow<'a> {
    /// The run id (26-character ULID text).
    pub id: &'a str,
    /// The account (1 to `i32::MAX`).
    pub account_id: i64,
    /// The project id (ULID text).
    pub project_id: &'a str,
    /// The target group id (ULID text).
    pub target_group_id: &'a str,
    /// `start_fielding_at`, in Unix milliseconds.
    pub start_fielding_at: i64,
    /// `end_fielding_at`, in Unix milliseconds.
    pub end_fielding_at: i64,
    /// The stored status ([`Status::as_str`]).
    pub status: &'a str,
    /// The version (1 to `i64::MAX`).
    pub version: i64,
    /// `last_changed_at`, in Unix milliseconds.
    pub last_changed_at: i64,
    /// `last_changed_by`.
    pub last_changed_by: Uuid,
}

impl<'a> RunRow<'a> {
    /// The columns of `run`.
    pub fn encode(run: &'a FieldingRun) -> Self {
        Self {
            id: run.id.as_str(),
            account_id: i64::from(run.account_id.get()),
            project_id: run.project_id.as_str(),
            target_group_id: run.target_group_id.as_str(),
            start_fielding_at: run.start_fielding_at.unix_millis(),
            end_fielding_at: run.end_fielding_at.unix_millis(),
            status: run.status.as_str(),
            version: version_to_column(run.version),
            last_changed_at: run.last_changed_at.unix_millis(),
            last_changed_by: *run.last_changed_by.as_uuid(),
        }
    }

    /// The run these columns hold, checked strictly.
    pub fn decode(self) -> Result<FieldingRun, StoreError> {
        Ok(FieldingRun {
            id: run_id(self.id)?,
            account_id: account_id(self.account_id)?,
            project_id: ProjectId::parse(self.project_id).map_err(corrupt_id)?,
            target_group_id: TargetGroupId::parse(self.target_group_id).map_err(corrupt_id)?,
            start_fielding_at: timestamp("start_fielding_at", self.start_fielding_at)?,
            end_fielding_at: timestamp("end_fielding_at", self.end_fielding_at)?,
            status: status("status", self.status)?,
            version: version(self.version)?,
            last_changed_at: timestamp("last_changed_at", self.last_changed_at)?,
            last_changed_by: UserId::new(self.last_changed_by),
        })
    }
}

/// A [`ChangeRecord`] as the columns of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeRow<'a> {
    /// The run the record belongs to.
    pub run_id: &'a str,
    /// The version the change produced.
    pub version: i64,
    /// The command ([`Action::as_str`]).
    pub action: &'a str,
    /// When, in Unix milliseconds.
    pub changed_at: i64,
    /// Who.
    pub changed_by: Uuid,
    /// The status before (`None` for a creation).
    pub status_from: Option<&'a str>,
    /// The status after.
    pub status_to: &'a str,
    /// The start before, in Unix milliseconds.
    pub start_from: Option<i64>,
    /// The start after, in Unix milliseconds.
    pub start_to: i64,
    /// The end before, in Unix milliseconds.
    pub end_from: Option<i64>,
    /// The end after, in Unix milliseconds.
    pub end_to: i64,
}

impl<'a> ChangeRow<'a> {
    /// The columns of `change`.
    pub fn encode(change: &'a ChangeRecord) -> Self {
        Self {
            run_id: change.run_id.as_str(),
            version: version_to_column(change.version),
            action: change.action.as_str(),
            changed_at: change.changed_at.unix_millis(),
            changed_by: *change.changed_by.as_uuid(),
            status_from: change.status_from.map(Status::as_str),
            status_to: change.status_to.as_str(),
            start_from: change.start_from.map(|t| t.unix_millis()),
            start_to: change.start_to.unix_millis(),
            end_from: change.end_from.map(|t| t.unix_millis()),
            end_to: change.end_to.unix_millis(),
        }
    }

    /// The change record these columns hold, checked strictly.
    pub fn decode(self) -> Result<ChangeRecord, StoreError> {
        Ok(ChangeRecord {
            run_id: run_id(self.run_id)?,
            version: version(self.version)?,
            action: Action::parse(self.action)
                .ok_or_else(|| StoreError::corrupt(format!("stored action {:?} is unknown", self.action)))?,
            changed_at: timestamp("changed_at", self.changed_at)?,
            changed_by: UserId::new(self.changed_by),
            status_from: self.status_from.map(|s| status("status_from", s)).transpose()?,
            status_to: status("status_to", self.status_to)?,
            start_from: self.start_from.map(|t| timestamp("start_from", t)).transpose()?,
            start_to: timestamp("start_to", self.start_to)?,
            end_from: self.end_from.map(|t| timestamp("end_from", t)).transpose()?,
            end_to: timestamp("end_to", self.end_to)?,
        })
    }
}

/// A [`FieldingRunJob`] (creation job) as the columns of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRow<'a> {
    /// The job id (ULID text).
    pub id: &'a str,
    /// The account (1 to `i32::MAX`).
    pub account_id: i64,
    /// The project id (ULID text).
    pub project_id: &'a str,
    /// The target group id (ULID text).
    pub target_group_id: &'a str,
    /// The endpoint the job came from ([`JobKind::as_str`]).
    pub kind: &'a str,
    /// The caller's idempotency key.
    pub idempotency_key: &'a str,
    /// The requested start, in Unix milliseconds (schedule jobs only).
    pub start_fielding_at: Option<i64>,
    /// The requested end, in Unix milliseconds.
    pub end_fielding_at: i64,
    /// The id the created run gets.
    pub fielding_run_id: &'a str,
    /// When the job was recorded, in Unix milliseconds.
    pub created_at: i64,
    /// Who submitted it.
    pub created_by: Uuid,
    /// The submitting request's trace id, if any.
    pub trace_id: Option<&'a str>,
    /// The state's status column ([`JobState::to_columns`]).
    pub status: &'a str,
    /// The failure code, for a failed job.
    pub failure_code: Option<&'a str>,
    /// The failure description, for a failed job.
    pub failure_description: Option<&'a str>,
}

impl<'a> JobRow<'a> {
    /// The columns of `job`.
    pub fn encode(job: &'a FieldingRunJob) -> Self {
        let (status, failure_code, failure_description) = job.state.to_columns();
        Self {
            id: job.id.as_str(),
            account_id: i64::from(job.scope.account_id.get()),
            project_id: job.scope.project_id.as_str(),
            target_group_id: job.scope.target_group_id.as_str(),
            kind: job.kind().as_str(),
            idempotency_key: job.idempotency_key.as_str(),
            start_fielding_at: job.request.start_fielding_at().map(|t| t.unix_millis()),
            end_fielding_at: job.request.end_fielding_at().unix_millis(),
            fielding_run_id: job.fielding_run_id.as_str(),
            created_at: job.created_at.unix_millis(),
            created_by: *job.created_by.as_uuid(),
            trace_id: job.trace_id.as_ref().map(JobTraceId::as_str),
            status,
            failure_code,
            failure_description,
        }
    }

    /// The job these columns hold, checked strictly: an unknown kind,
    /// status or failure code, a bad id, or columns that do not fit
    /// together (a launch job with a start, a failed job without a code)
    /// are corrupt data.
    pub fn decode(self) -> Result<FieldingRunJob, StoreError> {
        let scope = Scope::new(
            account_id(self.account_id)?,
            ProjectId::parse(self.project_id).map_err(corrupt_id)?,
            TargetGroupId::parse(self.target_group_id).map_err(corrupt_id)?,
        );
        let kind = JobKind::parse(self.kind)
            .ok_or_else(|| StoreError::corrupt(format!("stored job kind {:?} is unknown", self.kind)))?;
        let idempotency_key = IdempotencyKey::parse(self.idempotency_key)
            .map_err(|e| StoreError::corrupt(format!("stored idempotency key is invalid: {e}")))?;
        let start = self
            .start_fielding_at
            .map(|t| timestamp("start_fielding_at", t))
            .transpose()?;
        let end = timestamp("end_fielding_at", self.end_fielding_at)?;
        let request = JobRequest::from_parts(kind, start, end).ok_or_else(|| {
            let has = if start.is_some() { "has" } else { "has no" };
            StoreError::corrupt(format!("stored {kind} job {has} start_fielding_at"))
        })?;
        let trace_id = self
            .trace_id
            .map(|text| {
                JobTraceId::parse(text)
                    .ok_or_else(|| StoreError::corrupt(format!("stored trace id {text:?} is invalid")))
            })
            .transpose()?;
        let state = JobState::from_columns(self.status, self.failure_code, self.failure_description)
            .map_err(|e| StoreError::corrupt(format!("stored job state is invalid: {e}")))?;
        Ok(FieldingRunJob {
            id: JobId::parse(self.id).map_err(corrupt_id)?,
            scope,
            idempotency_key,
            request,
            fielding_run_id: run_id(self.fielding_run_id)?,
            created_at: timestamp("created_at", self.created_at)?,
            created_by: UserId::new(self.created_by),
            trace_id,
            state,
        })
    }
}

/// A version as a column: lossless, since versions are at most `i64::MAX`
/// by construction.
pub fn version_to_column(version: Version) -> i64 {
    i64::try_from(version.get()).unwrap_or(i64::MAX)
}

/// A stored version, which must be 1 to `i64::MAX`.
pub fn version(value: i64) -> Result<Version, StoreError> {
    u64::try_from(value)
        .ok()
        .and_then(Version::new)
        .ok_or_else(|| StoreError::corrupt(format!("stored version {value} is out of range")))
}

/// A stored timestamp in Unix milliseconds, which must lie in years
/// 0000-9999 like every [`Timestamp`]; `field` names it in the error.
pub fn timestamp(field: &str, millis: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_unix_millis(millis)
        .ok_or_else(|| StoreError::corrupt(format!("stored {field} {millis} ms is outside years 0000-9999")))
}

/// A stored UUID written as text (for backends without a UUID type);
/// `field` names it in the error.
pub fn uuid_text(field: &str, text: &str) -> Result<Uuid, StoreError> {
    Uuid::try_parse(text).map_err(|e| StoreError::corrupt(format!("stored {field} {text:?} is not a UUID: {e}")))
}

fn status(field: &str, text: &str) -> Result<Status, StoreError> {
    Status::parse(text).ok_or_else(|| StoreError::corrupt(format!("stored {field} {text:?} is unknown")))
}

fn account_id(value: i64) -> Result<AccountId, StoreError> {
    AccountId::new(value).map_err(corrupt_id)
}

fn run_id(text: &str) -> Result<FieldingRunId, StoreError> {
    FieldingRunId::parse(text).map_err(corrupt_id)
}

fn corrupt_id(err: crate::InvalidId) -> StoreError {
    StoreError::corrupt(format!("stored {} is invalid: {}", err.field(), err.reason()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobFailure, JobFailureCode, JobOutcome};

    fn run() -> FieldingRun {
        FieldingRun {
            id: FieldingRunId::parse("01BTGNYV6HRNK8K8VKZASZCFP2").unwrap(),
            account_id: AccountId::new(i64::from(i32::MAX)).unwrap(),
            project_id: ProjectId::parse("01BTGNYV6HRNK8K8VKZASZCFP0").unwrap(),
            target_group_id: TargetGroupId::parse("01BTGNYV6HRNK8K8VKZASZCFP1").unwrap(),
            start_fielding_at: Timestamp::MIN,
            end_fielding_at: Timestamp::MAX,
            status: Status::Paused,
            version: Version::MAX,
            last_changed_at: Timestamp::UNIX_EPOCH,
            last_changed_by: UserId::random(),
        }
    }

    #[test]
    fn runs_and_change_records_round_trip_at_the_extremes() {
        let run = run();
        assert_eq!(RunRow::encode(&run).decode().unwrap(), run);
        let created = ChangeRecord::created(&run, Action::Relaunch);
        assert_eq!(ChangeRow::encode(&created).decode().unwrap(), created);
        let changed = ChangeRecord {
            status_from: Some(Status::Live),
            start_from: Some(Timestamp::MAX),
            end_from: Some(Timestamp::MIN),
            ..created
        };
        assert_eq!(ChangeRow::encode(&changed).decode().unwrap(), changed);
    }

    #[test]
    fn jobs_round_trip_in_every_state() {
        let failed = JobState::Finished(JobOutcome::Failed(JobFailure {
            code: JobFailureCode::InvalidFieldingDates,
            description: "end before start".into(),
        }));
        for (state, request, trace) in [
            (
                JobState::Processing,
                JobRequest::from_parts(JobKind::LaunchFromDraft, None, Timestamp::MAX),
                None,
            ),
            (
                failed,
                JobRequest::from_parts(JobKind::ScheduleFromDraft, Some(Timestamp::MIN), Timestamp::MAX),
                JobTraceId::parse("0af7651916cd43dd8448eb211c80319c"),
            ),
        ] {
            let run = run();
            let job = FieldingRunJob {
                id: JobId::generate(),
                scope: run.scope(),
                idempotency_key: IdempotencyKey::parse("key-1").unwrap(),
                request: request.unwrap(),
                fielding_run_id: run.id,
                created_at: Timestamp::UNIX_EPOCH,
                created_by: UserId::random(),
                trace_id: trace,
                state,
            };
            assert_eq!(JobRow::encode(&job).decode().unwrap(), job);
        }
    }

    /// Every kind of damage is refused with a message naming the field and
    /// the value, and is permanent (repeating the read will not help).
    #[test]
    fn damaged_columns_are_corrupt_data_naming_the_field() {
        let run = run();
        let good = RunRow::encode(&run);
        let damaged: [(RunRow<'_>, &str); 6] = [
            (RunRow { version: 0, ..good }, "stored version 0"),
            (RunRow { version: -1, ..good }, "stored version -1"),
            (
                RunRow {
                    status: "running",
                    ..good
                },
                "stored status \"running\"",
            ),
            (RunRow { account_id: 0, ..good }, "account_id"),
            (
                RunRow {
                    id: "not-a-ulid",
                    ..good
                },
                "fielding_run_id",
            ),
            (
                RunRow {
                    end_fielding_at: i64::MAX,
                    ..good
                },
                "stored end_fielding_at",
            ),
        ];
        for (row, names) in damaged {
            let err = row.decode().unwrap_err();
            assert!(!err.is_retryable());
            assert!(err.to_string().contains(names), "{err} should name {names}");
            assert!(err.to_string().contains("corrupt"), "{err}");
        }
        let change = ChangeRecord::created(&run, Action::Pause);
        let bad_action = ChangeRow {
            action: "explode",
            ..ChangeRow::encode(&change)
        };
        assert!(bad_action.decode().unwrap_err().to_string().contains("\"explode\""));
        assert!(uuid_text("changed_by", "nope")
            .unwrap_err()
            .to_string()
            .contains("changed_by"));
    }
}
