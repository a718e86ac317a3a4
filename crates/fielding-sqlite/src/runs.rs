//! The operations on runs and change records (`insert`,
//! `compare_and_swap`, `get`, `find_by_target_group`, `changes`). Every
//! function runs on a worker thread that owns the connection; the writes
//! run on the writer thread, alone or inside its group's transaction.

use fielding_core::codec::{ChangeRow, RunRow};
use fielding_core::{ChangeRecord, FieldingRun, RunKey, Scope, StoreError, Version};
use rusqlite::{ffi, params, Connection, OptionalExtension};

use crate::codec::{change_params, read_change, read_run, read_version, run_params, UserText};
use crate::error::{extended_code, store_error};
use crate::feed::Positions;
use crate::sql::{
    CHANGES_AT_KEY, INSERT_CHANGE, INSERT_RUN, RUN_BY_KEY, RUN_BY_SCOPE, SCOPE_TAKEN, UPDATE_RUN, VERSION_AT_KEY,
};

/// Appends `run`'s change record at feed position `position`.
fn insert_change(
    conn: &Connection,
    run: &FieldingRun,
    change: &ChangeRecord,
    position: i64,
) -> rusqlite::Result<usize> {
    let row = ChangeRow::encode(change);
    let by = UserText::new(&row.changed_by);
    let [p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11] = change_params(&row, &by);
    let account = i64::from(run.account_id.get());
    conn.prepare_cached(INSERT_CHANGE)?.execute([
        p1,
        p2,
        p3,
        p4,
        p5,
        p6,
        p7,
        p8,
        p9,
        p10,
        p11,
        &account,
        &run.project_id.as_str(),
        &run.target_group_id.as_str(),
        &position,
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

/// `insert`, inside the caller's immediate transaction: the run, then its
/// first change record at the next of `positions`. A unique violation on
/// the scope is `AlreadyExists`, told by SQLite's extended result code.
pub(crate) fn insert_rows(
    tx: &Connection,
    run: &FieldingRun,
    change: &ChangeRecord,
    positions: &mut Positions,
) -> Result<(), StoreError> {
    let op = "insert";
    let row = RunRow::encode(run);
    let by = UserText::new(&row.last_changed_by);
    let inserted = tx
        .prepare_cached(INSERT_RUN)
        .and_then(|mut stmt| stmt.execute(run_params(&row, &by)));
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
    insert_change(tx, run, change, positions.next(op)?).map_err(|e| store_error(op, e))?;
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

/// `compare_and_swap`, inside the caller's immediate transaction: the
/// conditional update, then the change record at the next of `positions`.
/// The conflict is told by the rows the update touched; then the current
/// version is read in the same transaction.
pub(crate) fn compare_and_swap_rows(
    tx: &Connection,
    expected: Version,
    run: &FieldingRun,
    change: &ChangeRecord,
    positions: &mut Positions,
) -> Result<(), StoreError> {
    let op = "compare_and_swap";
    swap_run(tx, expected, run, op)?;
    insert_change(tx, run, change, positions.next(op)?).map_err(|e| store_error(op, e))?;
    Ok(())
}

/// The conditional update of a compare-and-swap: `VersionConflict` or
/// `NotFound`, having changed nothing, unless the run was at `expected`.
fn swap_run(tx: &Connection, expected: Version, run: &FieldingRun, op: &'static str) -> Result<(), StoreError> {
    let key = run.key();
    let (id, account, project, group) = key_params(&key);
    let row = RunRow::encode(run);
    let by = UserText::new(&row.last_changed_by);
    let expected_column = fielding_core::codec::version_to_column(expected);
    let touched = tx
        .prepare_cached(UPDATE_RUN)
        .and_then(|mut stmt| {
            let [p1, p2, p3, p4, p5, p6, p7, p8, p9, p10] = run_params(&row, &by);
            stmt.execute([p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, &expected_column])
        })
        .map_err(|e| store_error(op, e))?;
    if touched == 0 {
        let current = tx
            .prepare_cached(VERSION_AT_KEY)
            .and_then(|mut stmt| {
                stmt.query_row(params![id, account, project, group], read_version)
                    .optional()
            })
            .map_err(|e| store_error(op, e))?;
        return Err(match current {
            None => StoreError::NotFound,
            Some(current) => StoreError::VersionConflict { expected, current },
        });
    }
    Ok(())
}

/// `get`: one statement, one snapshot.
pub(crate) fn get(conn: &Connection, key: &RunKey) -> Result<Option<FieldingRun>, StoreError> {
    let (id, account, project, group) = key_params(key);
    conn.prepare_cached(RUN_BY_KEY)
        .and_then(|mut stmt| {
            stmt.query_row(params![id, account, project, group], read_run)
                .optional()
        })
        .map_err(|e| store_error("get", e))
}

/// `find_by_target_group`: by the full scope (the unique index).
pub(crate) fn find_by_scope(conn: &Connection, scope: &Scope) -> Result<Option<FieldingRun>, StoreError> {
    conn.prepare_cached(RUN_BY_SCOPE)
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
    conn.prepare_cached(CHANGES_AT_KEY)
        .and_then(|mut stmt| {
            stmt.query_map(params![id, account, project, group], read_change)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| store_error("changes", e))
}
