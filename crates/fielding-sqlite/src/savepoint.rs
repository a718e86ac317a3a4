//! One write inside a savepoint of the writer's open transaction: what
//! lets a group commit undo one write (the whole of a bulk batch) without
//! undoing the others.

use fielding_core::StoreError;
use rusqlite::Connection;

use crate::error::store_error;

/// Runs `write` inside the savepoint `name`, undone if it fails. If the
/// savepoint cannot be undone or released, the whole transaction is rolled
/// back rather than committing a partial write, and the answer is an error.
/// Nested uses need distinct names.
pub(crate) fn in_savepoint<R>(
    conn: &Connection,
    name: &str,
    op: &'static str,
    write: impl FnOnce() -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let run = |sql: String| conn.prepare_cached(&sql).and_then(|mut s| s.execute([])).map(|_| ());
    run(format!("SAVEPOINT {name}")).map_err(|e| store_error(op, e))?;
    let outcome = write();
    if !conn.is_autocommit() {
        let undo = if outcome.is_err() {
            run(format!("ROLLBACK TO {name}"))
        } else {
            Ok(())
        };
        if let Err(e) = undo.and_then(|()| run(format!("RELEASE {name}"))) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(store_error(op, e));
        }
    }
    // Autocommit here means SQLite rolled the whole transaction back itself
    // (an I/O error, say): the outcome says what failed.
    outcome
}
