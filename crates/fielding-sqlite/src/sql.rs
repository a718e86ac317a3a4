//! The statements, and conversion between rows and domain values. Every
//! function here runs on a worker thread that owns the connection.

use fielding_core::{
    AccountId, Action, ChangeRecord, FieldingRun, FieldingRunId, ProjectId, RunKey, Scope, Status, StoreError,
    TargetGroupId, Timestamp, UserId, Version,
};
use rusqlite::types::Type;
use rusqlite::{ffi, params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::error::{extended_code, store_error};

const RUN_COLUMNS: &str = "id, account_id, project_id, target_group_id, start_ms, end_ms, status, version, \
                           last_changed_at_ms, last_changed_by";

const INSERT_RUN: &str = "INSERT INTO fielding_runs (id, account_id, project_id, target_group_id, start_ms, end_ms, \
                          status, version, last_changed_at_ms, last_changed_by) \
                          VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const INSERT_CHANGE: &str = "INSERT INTO change_records (run_id, version, action, changed_at_ms, changed_by, \
                             status_from, status_to, start_from_ms, start_to_ms, end_from_ms, end_to_ms) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

const UPDATE_RUN: &str = "UPDATE fielding_runs SET start_ms = ?1, end_ms = ?2, status = ?3, version = ?4, \
                          last_changed_at_ms = ?5, last_changed_by = ?6 \
                          WHERE id = ?7 AND account_id = ?8 AND project_id = ?9 AND target_group_id = ?10 \
                          AND version = ?11";

const VERSION_AT_KEY: &str = "SELECT version FROM fielding_runs \
                              WHERE id = ?1 AND account_id = ?2 AND project_id = ?3 AND target_group_id = ?4";

const SCOPE_TAKEN: &str =
    "SELECT 1 FROM fielding_runs WHERE account_id = ?1 AND project_id = ?2 AND target_group_id = ?3";

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
fn v(version: Version) -> i64 {
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

fn version(row: &Row<'_>, idx: usize) -> rusqlite::Result<Version> {
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

fn read_run(row: &Row<'_>) -> rusqlite::Result<FieldingRun> {
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

fn read_change(row: &Row<'_>) -> rusqlite::Result<ChangeRecord> {
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

fn insert_change(conn: &Connection, change: &ChangeRecord) -> rusqlite::Result<usize> {
    let by = UserText::new(&change.changed_by);
    conn.prepare_cached(INSERT_CHANGE)?.execute(params![
        change.run_id.as_str(),
        v(change.version),
        change.action.as_str(),
        change.changed_at.unix_millis(),
        by.as_str(),
        change.status_from.map(Status::as_str),
        change.status_to.as_str(),
        change.start_from.map(|t| t.unix_millis()),
        change.start_to.unix_millis(),
        change.end_from.map(|t| t.unix_millis()),
        change.end_to.unix_millis(),
    ])
}

fn scope_taken(conn: &Connection, scope: &Scope) -> rusqlite::Result<bool> {
    Ok(conn
        .prepare_cached(SCOPE_TAKEN)?
        .query_row(
            params![
                i64::from(scope.account_id.get()),
                scope.project_id.as_str(),
                scope.target_group_id.as_str()
            ],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// `insert`: the run and its first change record in one immediate
/// transaction. A unique violation on the scope is `AlreadyExists`, told by
/// SQLite's extended result code.
pub(crate) fn insert(conn: &mut Connection, run: &FieldingRun, change: &ChangeRecord) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| store_error("insert", e))?;
    insert_rows(&tx, run, change)?;
    tx.commit().map_err(|e| store_error("insert", e))
}

/// The statements of `insert`, inside the caller's transaction.
pub(crate) fn insert_rows(tx: &Connection, run: &FieldingRun, change: &ChangeRecord) -> Result<(), StoreError> {
    let op = "insert";
    let by = UserText::new(&run.last_changed_by);
    let inserted = tx.prepare_cached(INSERT_RUN).and_then(|mut stmt| {
        stmt.execute(params![
            run.id.as_str(),
            i64::from(run.account_id.get()),
            run.project_id.as_str(),
            run.target_group_id.as_str(),
            run.start_fielding_at.unix_millis(),
            run.end_fielding_at.unix_millis(),
            run.status.as_str(),
            v(run.version),
            run.last_changed_at.unix_millis(),
            by.as_str(),
        ])
    });
    if let Err(err) = inserted {
        return Err(match extended_code(&err) {
            Some(ffi::SQLITE_CONSTRAINT_UNIQUE) => StoreError::AlreadyExists { scope: run.scope() },
            // The id is taken. If the scope is taken too, that is what the
            // caller needs to hear (as the in-memory store reports it).
            Some(ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => match scope_taken(tx, &run.scope()) {
                Ok(true) => StoreError::AlreadyExists { scope: run.scope() },
                Ok(false) => StoreError::Backend {
                    message: format!("sqlite insert: fielding run id {} is already taken", run.id),
                    retryable: false,
                    source: Some(Box::new(err)),
                },
                Err(e) => store_error(op, e),
            },
            _ => store_error(op, err),
        });
    }
    insert_change(tx, change).map_err(|e| store_error(op, e))?;
    Ok(())
}

fn key_params(key: &RunKey) -> (&str, i64, &str, &str) {
    (
        key.id.as_str(),
        i64::from(key.scope.account_id.get()),
        key.scope.project_id.as_str(),
        key.scope.target_group_id.as_str(),
    )
}

/// `compare_and_swap`: conditional update, then the change record, in one
/// immediate transaction. The conflict is told by the rows the update
/// touched; then the current version is read in the same transaction.
pub(crate) fn compare_and_swap(
    conn: &mut Connection,
    expected: Version,
    run: &FieldingRun,
    change: &ChangeRecord,
) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| store_error("compare_and_swap", e))?;
    compare_and_swap_rows(&tx, expected, run, change)?;
    tx.commit().map_err(|e| store_error("compare_and_swap", e))
}

/// The statements of `compare_and_swap`, inside the caller's transaction.
pub(crate) fn compare_and_swap_rows(
    tx: &Connection,
    expected: Version,
    run: &FieldingRun,
    change: &ChangeRecord,
) -> Result<(), StoreError> {
    let op = "compare_and_swap";
    let by = UserText::new(&run.last_changed_by);
    let key = run.key();
    let (id, account, project, group) = key_params(&key);
    let touched = tx
        .prepare_cached(UPDATE_RUN)
        .and_then(|mut stmt| {
            stmt.execute(params![
                run.start_fielding_at.unix_millis(),
                run.end_fielding_at.unix_millis(),
                run.status.as_str(),
                v(run.version),
                run.last_changed_at.unix_millis(),
                by.as_str(),
                id,
                account,
                project,
                group,
                v(expected),
            ])
        })
        .map_err(|e| store_error(op, e))?;
    if touched == 0 {
        let current = tx
            .prepare_cached(VERSION_AT_KEY)
            .and_then(|mut stmt| {
                stmt.query_row(params![id, account, project, group], |row| version(row, 0))
                    .optional()
            })
            .map_err(|e| store_error(op, e))?;
        return Err(match current {
            None => StoreError::NotFound,
            Some(current) => StoreError::VersionConflict { expected, current },
        });
    }
    insert_change(tx, change).map_err(|e| store_error(op, e))?;
    Ok(())
}

/// `get`: one statement, one snapshot.
pub(crate) fn get(conn: &Connection, key: &RunKey) -> Result<Option<FieldingRun>, StoreError> {
    let (id, account, project, group) = key_params(key);
    conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM fielding_runs \
         WHERE id = ?1 AND account_id = ?2 AND project_id = ?3 AND target_group_id = ?4"
    ))
    .and_then(|mut stmt| {
        stmt.query_row(params![id, account, project, group], read_run)
            .optional()
    })
    .map_err(|e| store_error("get", e))
}

/// `find_by_target_group`: by the full scope (the unique index).
pub(crate) fn find_by_scope(conn: &Connection, scope: &Scope) -> Result<Option<FieldingRun>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM fielding_runs \
         WHERE account_id = ?1 AND project_id = ?2 AND target_group_id = ?3"
    ))
    .and_then(|mut stmt| {
        stmt.query_row(
            params![
                i64::from(scope.account_id.get()),
                scope.project_id.as_str(),
                scope.target_group_id.as_str()
            ],
            read_run,
        )
        .optional()
    })
    .map_err(|e| store_error("find_by_target_group", e))
}

/// `changes`: the records of the run at `key` (scope included), in version
/// order, read in one statement so they match one committed state.
pub(crate) fn changes(conn: &Connection, key: &RunKey) -> Result<Vec<ChangeRecord>, StoreError> {
    let (id, account, project, group) = key_params(key);
    conn.prepare_cached(
        "SELECT c.run_id, c.version, c.action, c.changed_at_ms, c.changed_by, c.status_from, c.status_to, \
                c.start_from_ms, c.start_to_ms, c.end_from_ms, c.end_to_ms \
           FROM fielding_runs r JOIN change_records c ON c.run_id = r.id \
          WHERE r.id = ?1 AND r.account_id = ?2 AND r.project_id = ?3 AND r.target_group_id = ?4 \
          ORDER BY c.version",
    )
    .and_then(|mut stmt| {
        stmt.query_map(params![id, account, project, group], read_change)?
            .collect::<rusqlite::Result<Vec<_>>>()
    })
    .map_err(|e| store_error("changes", e))
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
