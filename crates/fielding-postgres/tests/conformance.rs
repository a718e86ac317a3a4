//! `PgStore` against the fielding-testkit conformance suite, on a real
//! PostgreSQL: every case gets a fresh schema (dropped afterwards), so the
//! cases run in parallel and leave nothing behind.
//!
//! `cargo test -p fielding-postgres conformance` runs exactly these tests.

mod common;

use std::sync::Arc;

async fn fresh() -> Arc<common::TestStore> {
    match common::fresh_store().await {
        Some(store) => Arc::new(store),
        None => common::skip_binary(),
    }
}

fielding_testkit::conformance_tests!(fresh);
