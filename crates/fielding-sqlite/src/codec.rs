//! Rows to and from the core codec's column values
//! ([`fielding_core::codec`]): the parameters a statement binds for a run,
//! a change record or a job, and reading fetched rows back. What the values
//! mean (ranges, names, what fits together) is decided in the core; this
//! module only knows SQLite's types: integers for accounts, versions and
//! millisecond times, text for ids and user ids.

use fielding_core::codec::{self, ChangeRow, JobRow, RunRow};
use fielding_core::{ChangeRecord, FieldingRun, FieldingRunJob, Scope, StoreError, Version};
use rusqlite::types::ValueRef;
use rusqlite::{Row, ToSql};
use uuid::Uuid;

/// A user id as hyphenated lower-case text, without allocating.
pub(crate) struct UserText([u8; 36]);

impl UserText {
    pub(crate) fn new(user: &Uuid) -> Self {
        let mut buf = [0u8; 36];
        user.hyphenated().encode_lower(&mut buf);
        Self(buf)
    }
}

/// The ten parameters of a run, in table order (`?1` to `?10`).
pub(crate) fn run_params<'a>(row: &'a RunRow<'a>, by: &'a UserText) -> [&'a dyn ToSql; 10] {
    [
        &row.id,
        &row.account_id,
        &row.project_id,
        &row.target_group_id,
        &row.start_fielding_at,
        &row.end_fielding_at,
        &row.status,
        &row.version,
        &row.last_changed_at,
        by,
    ]
}

/// The eleven parameters of a change record, in table order.
pub(crate) fn change_params<'a>(row: &'a ChangeRow<'a>, by: &'a UserText) -> [&'a dyn ToSql; 11] {
    [
        &row.run_id,
        &row.version,
        &row.action,
        &row.changed_at,
        by,
        &row.status_from,
        &row.status_to,
        &row.start_from,
        &row.start_to,
        &row.end_from,
        &row.end_to,
    ]
}

/// The fifteen parameters of a creation job, in table order.
pub(crate) fn job_params<'a>(row: &'a JobRow<'a>, by: &'a UserText) -> [&'a dyn ToSql; 15] {
    [
        &row.id,
        &row.account_id,
        &row.project_id,
        &row.target_group_id,
        &row.kind,
        &row.idempotency_key,
        &row.start_fielding_at,
        &row.end_fielding_at,
        &row.fielding_run_id,
        &row.created_at,
        by,
        &row.trace_id,
        &row.status,
        &row.failure_code,
        &row.failure_description,
    ]
}

impl ToSql for UserText {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(ValueRef::Text(&self.0)))
    }
}

/// The account column of a scope.
pub(crate) fn account(scope: &Scope) -> i64 {
    i64::from(scope.account_id.get())
}

pub(crate) fn text<'r>(row: &'r Row<'_>, idx: usize) -> rusqlite::Result<&'r str> {
    Ok(row.get_ref(idx)?.as_str()?)
}

pub(crate) fn opt_text<'r>(row: &'r Row<'_>, idx: usize) -> rusqlite::Result<Option<&'r str>> {
    Ok(row.get_ref(idx)?.as_str_or_null()?)
}

/// A row the core refused, as a rusqlite error so it travels like any
/// other failure of the query and is reported as one (permanent).
pub(crate) fn refused(err: StoreError) -> rusqlite::Error {
    // With no column index rusqlite displays the inner error alone.
    rusqlite::Error::FromSqlConversionFailure(usize::MAX, rusqlite::types::Type::Null, Box::new(err))
}

fn user(field: &str, text: &str) -> rusqlite::Result<Uuid> {
    codec::uuid_text(field, text).map_err(refused)
}

/// A run from a row of `RUN_COLUMNS`.
pub(crate) fn read_run(row: &Row<'_>) -> rusqlite::Result<FieldingRun> {
    RunRow {
        id: text(row, 0)?,
        account_id: row.get(1)?,
        project_id: text(row, 2)?,
        target_group_id: text(row, 3)?,
        start_fielding_at: row.get(4)?,
        end_fielding_at: row.get(5)?,
        status: text(row, 6)?,
        version: row.get(7)?,
        last_changed_at: row.get(8)?,
        last_changed_by: user("last_changed_by", text(row, 9)?)?,
    }
    .decode()
    .map_err(refused)
}

/// A change record from a row of `CHANGE_COLUMNS`.
pub(crate) fn read_change(row: &Row<'_>) -> rusqlite::Result<ChangeRecord> {
    ChangeRow {
        run_id: text(row, 0)?,
        version: row.get(1)?,
        action: text(row, 2)?,
        changed_at: row.get(3)?,
        changed_by: user("changed_by", text(row, 4)?)?,
        status_from: opt_text(row, 5)?,
        status_to: text(row, 6)?,
        start_from: row.get(7)?,
        start_to: row.get(8)?,
        end_from: row.get(9)?,
        end_to: row.get(10)?,
    }
    .decode()
    .map_err(refused)
}

/// A creation job from a row of `JOB_COLUMNS`.
pub(crate) fn read_job(row: &Row<'_>) -> rusqlite::Result<FieldingRunJob> {
    JobRow {
        id: text(row, 0)?,
        account_id: row.get(1)?,
        project_id: text(row, 2)?,
        target_group_id: text(row, 3)?,
        kind: text(row, 4)?,
        idempotency_key: text(row, 5)?,
        start_fielding_at: row.get(6)?,
        end_fielding_at: row.get(7)?,
        fielding_run_id: text(row, 8)?,
        created_at: row.get(9)?,
        created_by: user("created_by", text(row, 10)?)?,
        trace_id: opt_text(row, 11)?,
        status: text(row, 12)?,
        failure_code: opt_text(row, 13)?,
        failure_description: opt_text(row, 14)?,
    }
    .decode()
    .map_err(refused)
}

/// A version read alone (to report a conflict).
pub(crate) fn read_version(row: &Row<'_>) -> rusqlite::Result<Version> {
    codec::version(row.get(0)?).map_err(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fielding_core::UserId;

    #[test]
    fn user_text_matches_display() {
        let user = UserId::random();
        assert_eq!(
            std::str::from_utf8(&UserText::new(user.as_uuid()).0),
            Ok(user.to_string().as_str())
        );
    }
}
