//! The operations on runs and change records, one statement each (one
//! round trip), on the connection the store hands in.

use fielding_core::{ChangeRecord, FieldingRun, RunKey, Scope, StoreError, Version};
use sqlx::postgres::PgConnection;

use crate::codec::{account, bind_change, bind_run, decode_change, decode_run, version};
use crate::error::{backend, constraint, sqlstate, UNIQUE_VIOLATION};
use crate::sql::Statements;

/// The unique key on the scope (one run per target group).
const SCOPE_KEY: &str = "fielding_runs_scope_key";

/// How often `compare_and_swap` re-reads when its update found no row but
/// the row then turned out to be at the expected version (a run inserted
/// after the update's snapshot was taken, see `PgStore::compare_and_swap`).
const CAS_ATTEMPTS: usize = 3;

pub(crate) async fn insert(
    conn: &mut PgConnection,
    sql: &Statements,
    run: &FieldingRun,
    change: &ChangeRecord,
) -> Result<(), StoreError> {
    let outcome = bind_change(bind_run(sqlx::query(&sql.insert), run), change)
        .execute(&mut *conn)
        .await;
    match outcome {
        Ok(done) if done.rows_affected() == 1 => Ok(()),
        Ok(done) => Err(StoreError::internal(format!(
            "insert of {} wrote {} change records instead of 1",
            run.id,
            done.rows_affected()
        ))),
        Err(err) if sqlstate(&err).as_deref() == Some(UNIQUE_VIOLATION) => {
            // The scope key: another run holds the target group (a
            // racing insert has committed; uniqueness checks wait for
            // it). Any other key (the run id): report the scope first
            // when it is taken too, as the contract asks.
            if constraint(&err) == Some(SCOPE_KEY) || scope_taken(conn, sql, &run.scope()).await? {
                Err(StoreError::AlreadyExists { scope: run.scope() })
            } else {
                Err(backend("insert", err))
            }
        }
        Err(err) => Err(backend("insert", err)),
    }
}

pub(crate) async fn find_by_target_group(
    conn: &mut PgConnection,
    sql: &Statements,
    scope: &Scope,
) -> Result<Option<FieldingRun>, StoreError> {
    let row = sqlx::query(&sql.find)
        .bind(account(scope.account_id))
        .bind(scope.project_id.as_str())
        .bind(scope.target_group_id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend("find_by_target_group", e))?;
    row.as_ref().map(decode_run).transpose()
}

pub(crate) async fn changes(
    conn: &mut PgConnection,
    sql: &Statements,
    key: &RunKey,
) -> Result<Vec<ChangeRecord>, StoreError> {
    let rows = sqlx::query(&sql.changes)
        .bind(key.id.as_str())
        .bind(account(key.scope.account_id))
        .bind(key.scope.project_id.as_str())
        .bind(key.scope.target_group_id.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| backend("changes", e))?;
    rows.iter().map(decode_change).collect()
}

async fn current_version(
    conn: &mut PgConnection,
    sql: &Statements,
    key: &RunKey,
) -> Result<Option<Version>, StoreError> {
    let row: Option<i64> = sqlx::query_scalar(&sql.version)
        .bind(key.id.as_str())
        .bind(account(key.scope.account_id))
        .bind(key.scope.project_id.as_str())
        .bind(key.scope.target_group_id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend("compare_and_swap", e))?;
    row.map(version).transpose()
}

/// `get` (and `update`'s read): the run at `key`, scope included.
pub(crate) async fn get(
    conn: &mut PgConnection,
    sql: &Statements,
    op: &'static str,
    key: &RunKey,
) -> Result<Option<FieldingRun>, StoreError> {
    let row = sqlx::query(&sql.get)
        .bind(key.id.as_str())
        .bind(account(key.scope.account_id))
        .bind(key.scope.project_id.as_str())
        .bind(key.scope.target_group_id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend(op, e))?;
    row.as_ref().map(decode_run).transpose()
}

/// The compare-and-swap on one connection; see
/// `PgStore::compare_and_swap` for why it is correct under READ COMMITTED.
pub(crate) async fn compare_and_swap(
    conn: &mut PgConnection,
    sql: &Statements,
    op: &'static str,
    expected: Version,
    run: &FieldingRun,
    change: &ChangeRecord,
) -> Result<(), StoreError> {
    let key = run.key();
    for _ in 0..CAS_ATTEMPTS {
        let query = bind_run(sqlx::query(&sql.cas), run).bind(fielding_core::codec::version_to_column(expected));
        let done = bind_change(query, change)
            .execute(&mut *conn)
            .await
            .map_err(|e| backend(op, e))?;
        match done.rows_affected() {
            1 => return Ok(()),
            0 => {}
            n => {
                return Err(StoreError::internal(format!(
                    "{op} of {} wrote {n} change records instead of 1",
                    run.id
                )))
            }
        }
        match current_version(conn, sql, &key).await? {
            None => return Err(StoreError::NotFound),
            Some(current) if current != expected => return Err(StoreError::VersionConflict { expected, current }),
            Some(_) => continue,
        }
    }
    Err(StoreError::Backend {
        message: format!(
            "{op} of {} at version {expected}: the run kept appearing at the expected version \
             without the update matching it",
            run.id
        ),
        retryable: true,
        source: None,
    })
}

async fn scope_taken(conn: &mut PgConnection, sql: &Statements, scope: &Scope) -> Result<bool, StoreError> {
    sqlx::query_scalar(&sql.scope_taken)
        .bind(account(scope.account_id))
        .bind(scope.project_id.as_str())
        .bind(scope.target_group_id.as_str())
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| backend("insert", e))
}
