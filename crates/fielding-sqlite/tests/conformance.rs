//! The fielding-testkit conformance suite, each case on a fresh database
//! file (WAL, default durability, two reader threads), plus the same suite
//! on an in-memory database.

mod common;

use std::sync::Arc;

fielding_testkit::conformance_tests!(|| async { Arc::new(common::temp_store().await) });

/// The kit again, on private in-memory databases (single connection).
mod in_memory {
    use std::sync::Arc;

    use fielding_sqlite::SqliteStore;

    fielding_testkit::conformance_tests!(|| async {
        Arc::new(SqliteStore::open_in_memory().await.expect("open an in-memory database"))
    });
}
