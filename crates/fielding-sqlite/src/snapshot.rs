//! Several statements read from one committed state: what lets a bulk job
//! come back with its items, and a feed page with the counter value it is
//! bookmarked by.

use fielding_core::StoreError;
use rusqlite::Connection;

use crate::error::store_error;

/// Runs `read` in one read transaction when the connection is not in one
/// already (on the writer thread, reads may run inside the group's write
/// transaction, before any write of the group), so every statement of
/// `read` sees one committed state.
pub(crate) fn snapshot<R>(conn: &Connection, read: impl FnOnce() -> Result<R, StoreError>) -> Result<R, StoreError> {
    if !conn.is_autocommit() {
        return read();
    }
    conn.execute_batch("BEGIN")
        .map_err(|e| store_error("begin a read", e))?;
    let answer = read();
    // A read-only transaction: ending it cannot lose anything, but a
    // connection left inside it would pin the log and fail its next BEGIN.
    if conn.execute_batch("COMMIT").is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    answer
}
