//! Conversion between rows and domain values: reading runs, change
//! records and creation jobs from rows, and the column helpers (user text,
//! timestamps, versions) the statements bind with.

use fielding_core::{
    AccountId, Action, ChangeRecord, FieldingRun, FieldingRunId, FieldingRunJob, IdempotencyKey, InvalidJobColumns,
    JobId, JobKind, JobRequest, JobState, JobTraceId, ProjectId, Scope, Status, TargetGroupId, Timestamp, UserId,
    Version,
};
use rusqlite::types::{Type, ValueRef};
use rusqlite::Row;

/// A user id as hyphenated lower-case text, without allocating.
pub(crate) struct UserText([u8; 36]);

impl UserText {
    pub(crate) fn new(user: &UserId) -> Self {
        let mut buf = [0u8; 36];
        user.as_uuid().hyphenated().encode_lower(&mut buf);
        Self(buf)
    }

    pub(crate) fn as_str(&self) -> &str {
        // encode_lower writes ASCII only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Versions are at most `i64::MAX` by construction, so this is lossless.
pub(crate) fn v(version: Version) -> i64 {
    version.get() as i64
}

pub(crate) fn bad(idx: usize, ty: Type, err: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, ty, Box::new(err))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Invalid(pub(crate) String);

pub(crate) fn text<T, E: std::error::Error + Send + Sync + 'static>(
    row: &Row<'_>,
    idx: usize,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> rusqlite::Result<T> {
    let value = row.get_ref(idx)?.as_str()?;
    parse(value).map_err(|e| bad(idx, Type::Text, e))
}

pub(crate) fn timestamp(row: &Row<'_>, idx: usize) -> rusqlite::Result<Timestamp> {
    let ms: i64 = row.get(idx)?;
    Timestamp::from_unix_millis(ms)
        .ok_or_else(|| bad(idx, Type::Integer, Invalid(format!("timestamp {ms} ms out of range"))))
}

pub(crate) fn opt_timestamp(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<Timestamp>> {
    match row.get::<_, Option<i64>>(idx)? {
        None => Ok(None),
        Some(_) => timestamp(row, idx).map(Some),
    }
}

pub(crate) fn version(row: &Row<'_>, idx: usize) -> rusqlite::Result<Version> {
    let n: i64 = row.get(idx)?;
    u64::try_from(n)
        .ok()
        .and_then(Version::new)
        .ok_or_else(|| bad(idx, Type::Integer, Invalid(format!("version {n} out of range"))))
}

fn status(row: &Row<'_>, idx: usize) -> rusqlite::Result<Status> {
    text(row, idx, |s| {
        Status::parse(s).ok_or_else(|| Invalid(format!("unknown status {s:?}")))
    })
}

fn opt_status(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<Status>> {
    match row.get_ref(idx)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => status(row, idx).map(Some),
    }
}

pub(crate) fn read_run(row: &Row<'_>) -> rusqlite::Result<FieldingRun> {
    let account: i64 = row.get(1)?;
    Ok(FieldingRun {
        id: text(row, 0, FieldingRunId::parse)?,
        account_id: AccountId::new(account).map_err(|e| bad(1, Type::Integer, e))?,
        project_id: text(row, 2, ProjectId::parse)?,
        target_group_id: text(row, 3, TargetGroupId::parse)?,
        start_fielding_at: timestamp(row, 4)?,
        end_fielding_at: timestamp(row, 5)?,
        status: status(row, 6)?,
        version: version(row, 7)?,
        last_changed_at: timestamp(row, 8)?,
        last_changed_by: text(row, 9, |s| s.parse::<UserId>())?,
    })
}

pub(crate) fn read_change(row: &Row<'_>) -> rusqlite::Result<ChangeRecord> {
    Ok(ChangeRecord {
        run_id: text(row, 0, FieldingRunId::parse)?,
        version: version(row, 1)?,
        action: text(row, 2, |s| {
            Action::parse(s).ok_or_else(|| Invalid(format!("unknown action {s:?}")))
        })?,
        changed_at: timestamp(row, 3)?,
        changed_by: text(row, 4, |s| s.parse::<UserId>())?,
        status_from: opt_status(row, 5)?,
        status_to: status(row, 6)?,
        start_from: opt_timestamp(row, 7)?,
        start_to: timestamp(row, 8)?,
        end_from: opt_timestamp(row, 9)?,
        end_to: timestamp(row, 10)?,
    })
}

pub(crate) fn account(scope: &Scope) -> i64 {
    i64::from(scope.account_id.get())
}

fn opt_text<'r>(row: &'r Row<'_>, idx: usize) -> rusqlite::Result<Option<&'r str>> {
    match row.get_ref(idx)? {
        ValueRef::Null => Ok(None),
        value => value.as_str().map(Some).map_err(Into::into),
    }
}

/// A stored job, decoded strictly: a value that does not parse (an unknown
/// kind, status or failure code, a bad id, columns that do not fit
/// together) is a conversion error, never a guess.
pub(crate) fn read_job(row: &Row<'_>) -> rusqlite::Result<FieldingRunJob> {
    let account_id: i64 = row.get(1)?;
    let scope = Scope::new(
        AccountId::new(account_id).map_err(|e| bad(1, Type::Integer, e))?,
        text(row, 2, ProjectId::parse)?,
        text(row, 3, TargetGroupId::parse)?,
    );
    let kind = text(row, 4, |s| {
        JobKind::parse(s).ok_or_else(|| Invalid(format!("unknown job kind {s:?}")))
    })?;
    let idempotency_key = text(row, 5, |s| {
        IdempotencyKey::parse(s).map_err(|e| Invalid(format!("stored idempotency key is invalid: {e}")))
    })?;
    let start = opt_timestamp(row, 6)?;
    let end = timestamp(row, 7)?;
    let request = JobRequest::from_parts(kind, start, end).ok_or_else(|| {
        let has = if start.is_some() { "has" } else { "has no" };
        bad(6, Type::Integer, Invalid(format!("a {kind} job that {has} start")))
    })?;
    let trace_id = match opt_text(row, 11)? {
        None => None,
        Some(s) => {
            Some(JobTraceId::parse(s).ok_or_else(|| bad(11, Type::Text, Invalid(format!("bad trace id {s:?}"))))?)
        }
    };
    let status = row.get_ref(12)?.as_str()?;
    let code = opt_text(row, 13)?;
    let description = opt_text(row, 14)?;
    let state = JobState::from_columns(status, code, description).map_err(|e| {
        // The column at fault: the failure code when only it is unknown.
        let idx = if matches!(e, InvalidJobColumns::UnknownFailureCode(_)) {
            13
        } else {
            12
        };
        bad(idx, Type::Text, e)
    })?;
    Ok(FieldingRunJob {
        id: text(row, 0, JobId::parse)?,
        scope,
        idempotency_key,
        request,
        fielding_run_id: text(row, 8, FieldingRunId::parse)?,
        created_at: timestamp(row, 9)?,
        created_by: text(row, 10, |s| s.parse::<UserId>())?,
        trace_id,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_matches_display() {
        let user = UserId::random();
        assert_eq!(UserText::new(&user).as_str(), user.to_string());
    }
}
