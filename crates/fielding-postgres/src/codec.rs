//! Conversion between rows and domain values: binding runs and change
//! records, decoding runs, change records and creation jobs, and the column
//! helpers (accounts, versions, timestamps) the statements use.

use chrono::{DateTime, Utc};
use fielding_core::{
    AccountId, Action, ChangeRecord, FieldingRun, FieldingRunId, FieldingRunJob, IdempotencyKey, JobId, JobKind,
    JobRequest, JobState, JobTraceId, ProjectId, Scope, Status, StoreError, TargetGroupId, Timestamp, UserId, Version,
};
use sqlx::postgres::{PgRow, Postgres};
use sqlx::Row;

use crate::error::{backend, corrupt};

pub(crate) type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Binds the ten columns of a run, in table order. `insert` and the
/// compare-and-swap both use this, so their parameter order cannot drift
/// apart.
pub(crate) fn bind_run<'q>(query: PgQuery<'q>, run: &'q FieldingRun) -> PgQuery<'q> {
    query
        .bind(run.id.as_str())
        .bind(account(run.account_id))
        .bind(run.project_id.as_str())
        .bind(run.target_group_id.as_str())
        .bind(ts(run.start_fielding_at))
        .bind(ts(run.end_fielding_at))
        .bind(run.status.as_str())
        .bind(version_to_db(run.version))
        .bind(ts(run.last_changed_at))
        .bind(run.last_changed_by.as_uuid())
}

/// Binds the columns of a change record (all but `run_id`, which the
/// statements take from the run), in table order.
pub(crate) fn bind_change<'q>(query: PgQuery<'q>, change: &'q ChangeRecord) -> PgQuery<'q> {
    query
        .bind(version_to_db(change.version))
        .bind(change.action.as_str())
        .bind(ts(change.changed_at))
        .bind(change.changed_by.as_uuid())
        .bind(change.status_from.map(Status::as_str))
        .bind(change.status_to.as_str())
        .bind(change.start_from.map(ts))
        .bind(ts(change.start_to))
        .bind(change.end_from.map(ts))
        .bind(ts(change.end_to))
}

pub(crate) fn ts(t: Timestamp) -> DateTime<Utc> {
    t.as_datetime()
}

pub(crate) fn account(id: AccountId) -> i32 {
    // AccountId is 1..=i32::MAX by construction.
    i32::try_from(id.get()).unwrap_or(i32::MAX)
}

pub(crate) fn version_to_db(v: Version) -> i64 {
    // Version is 1..=i64::MAX by construction.
    i64::try_from(v.get()).unwrap_or(i64::MAX)
}

pub(crate) fn version_from_db(v: i64) -> Result<Version, StoreError> {
    u64::try_from(v)
        .ok()
        .and_then(Version::new)
        .ok_or_else(|| corrupt(format!("stored version {v} is out of range")))
}

pub(crate) fn timestamp_from_db(column: &str, value: DateTime<Utc>) -> Result<Timestamp, StoreError> {
    Timestamp::from_unix_millis(value.timestamp_millis())
        .ok_or_else(|| corrupt(format!("stored {column} {value} is outside years 0000-9999")))
}

/// The action stored as `text`.
fn action_from_db(text: &str) -> Result<Action, StoreError> {
    Action::parse(text).ok_or_else(|| corrupt(format!("stored action {text:?} is unknown")))
}

fn status_from_db(text: &str) -> Result<Status, StoreError> {
    Status::parse(text).ok_or_else(|| corrupt(format!("stored status {text:?} is unknown")))
}

pub(crate) fn column<'r, T>(row: &'r PgRow, index: usize) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(index).map_err(|e| backend("decode", e))
}

pub(crate) fn invalid(e: fielding_core::InvalidId) -> StoreError {
    corrupt(format!("stored row is invalid: {e}"))
}

pub(crate) fn decode_run(row: &PgRow) -> Result<FieldingRun, StoreError> {
    Ok(FieldingRun {
        id: FieldingRunId::parse(column(row, 0)?).map_err(invalid)?,
        account_id: AccountId::new(i64::from(column::<i32>(row, 1)?)).map_err(invalid)?,
        project_id: ProjectId::parse(column(row, 2)?).map_err(invalid)?,
        target_group_id: TargetGroupId::parse(column(row, 3)?).map_err(invalid)?,
        start_fielding_at: timestamp_from_db("start_fielding_at", column(row, 4)?)?,
        end_fielding_at: timestamp_from_db("end_fielding_at", column(row, 5)?)?,
        status: status_from_db(column(row, 6)?)?,
        version: version_from_db(column(row, 7)?)?,
        last_changed_at: timestamp_from_db("last_changed_at", column(row, 8)?)?,
        last_changed_by: UserId::new(column(row, 9)?),
    })
}

pub(crate) fn decode_change(row: &PgRow) -> Result<ChangeRecord, StoreError> {
    let optional_ts = |name, value: Option<DateTime<Utc>>| value.map(|v| timestamp_from_db(name, v)).transpose();
    Ok(ChangeRecord {
        run_id: FieldingRunId::parse(column(row, 0)?).map_err(invalid)?,
        version: version_from_db(column(row, 1)?)?,
        action: action_from_db(column(row, 2)?)?,
        changed_at: timestamp_from_db("changed_at", column(row, 3)?)?,
        changed_by: UserId::new(column(row, 4)?),
        status_from: column::<Option<&str>>(row, 5)?.map(status_from_db).transpose()?,
        status_to: status_from_db(column(row, 6)?)?,
        start_from: optional_ts("start_from", column(row, 7)?)?,
        start_to: timestamp_from_db("start_to", column(row, 8)?)?,
        end_from: optional_ts("end_from", column(row, 9)?)?,
        end_to: timestamp_from_db("end_to", column(row, 10)?)?,
    })
}

/// The state from the status columns ([`JobState::from_columns`]):
/// unknown names and columns that do not fit together are corrupt data.
fn state_from_db(status: &str, code: Option<&str>, description: Option<&str>) -> Result<JobState, StoreError> {
    JobState::from_columns(status, code, description).map_err(|e| corrupt(format!("stored job state is invalid: {e}")))
}

/// A stored job, decoded strictly: a value that does not parse is a
/// permanent backend error, never a guess.
pub(crate) fn decode_job(row: &PgRow) -> Result<FieldingRunJob, StoreError> {
    let scope = Scope::new(
        AccountId::new(i64::from(column::<i32>(row, 1)?)).map_err(invalid)?,
        ProjectId::parse(column(row, 2)?).map_err(invalid)?,
        TargetGroupId::parse(column(row, 3)?).map_err(invalid)?,
    );
    let kind_text: &str = column(row, 4)?;
    let kind = JobKind::parse(kind_text).ok_or_else(|| corrupt(format!("stored job kind {kind_text:?} is unknown")))?;
    let idempotency_key = IdempotencyKey::parse(column(row, 5)?)
        .map_err(|e| corrupt(format!("stored idempotency key is invalid: {e}")))?;
    let start = column::<Option<DateTime<Utc>>>(row, 6)?
        .map(|v| timestamp_from_db("start_fielding_at", v))
        .transpose()?;
    let end = timestamp_from_db("end_fielding_at", column(row, 7)?)?;
    let request = JobRequest::from_parts(kind, start, end).ok_or_else(|| {
        let has = if start.is_some() { "has" } else { "has no" };
        corrupt(format!("stored {kind} job {has} start_fielding_at"))
    })?;
    let trace_id = match column::<Option<&str>>(row, 11)? {
        None => None,
        Some(text) => {
            Some(JobTraceId::parse(text).ok_or_else(|| corrupt(format!("stored trace id {text:?} is invalid")))?)
        }
    };
    Ok(FieldingRunJob {
        id: JobId::parse(column(row, 0)?).map_err(invalid)?,
        scope,
        idempotency_key,
        request,
        fielding_run_id: FieldingRunId::parse(column(row, 8)?).map_err(invalid)?,
        created_at: timestamp_from_db("created_at", column(row, 9)?)?,
        created_by: UserId::new(column(row, 10)?),
        trace_id,
        state: state_from_db(column(row, 12)?, column(row, 13)?, column(row, 14)?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_stored_actions_are_corrupt_data() {
        assert_eq!(action_from_db("launch_now").ok(), Some(Action::LaunchNow));
        assert!(action_from_db("explode").is_err());
    }

    #[test]
    fn versions_and_timestamps_convert_at_the_extremes() {
        assert_eq!(version_to_db(Version::MAX), i64::MAX);
        assert_eq!(version_from_db(i64::MAX).ok(), Some(Version::MAX));
        assert!(version_from_db(0).is_err());
        assert!(version_from_db(-1).is_err());
        for t in [Timestamp::MIN, Timestamp::MAX, Timestamp::UNIX_EPOCH] {
            assert_eq!(timestamp_from_db("t", ts(t)).ok(), Some(t));
        }
    }

    #[test]
    fn states_round_trip_and_misfits_are_corrupt() {
        use fielding_core::{JobFailure, JobFailureCode, JobOutcome};
        let failure = JobFailure {
            code: JobFailureCode::InvalidFieldingDates,
            description: "The end is before the start.".into(),
        };
        for state in [
            JobState::Processing,
            JobState::Finished(JobOutcome::Completed),
            JobState::Finished(JobOutcome::Failed(failure)),
        ] {
            let (status, code, description) = state.to_columns();
            assert_eq!(status, state.status_name());
            assert_eq!(state_from_db(status, code, description).ok(), Some(state.clone()));
        }
        for (status, code, description) in [
            ("Done", None, None),
            ("processing", None, None),
            ("Processing", Some("InvalidFieldingDates"), Some("x")),
            ("Completed", None, Some("x")),
            ("Failed", None, None),
            ("Failed", Some("InvalidFieldingDates"), None),
            ("Failed", Some("Nope"), Some("x")),
        ] {
            let err = state_from_db(status, code, description).unwrap_err();
            assert!(!err.is_retryable(), "{err}");
            assert!(err.to_string().contains("stored job state is invalid: "), "{err}");
        }
    }
}
