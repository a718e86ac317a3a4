//! PostgreSQL for the live-server tests: one fresh, migrated schema per
//! server, dropped again when the server goes.
//!
//! The server, the skip rule and the schemas are those of
//! [`fielding_postgres::testing`]: when the server cannot be reached the
//! tests fail with a message saying how to start it, except on a
//! developer's machine (neither `FIELDING_PG_URL` nor `CI` set), where the
//! test binary prints one `SKIPPED` line and its PostgreSQL cases return
//! early.

#![allow(dead_code)]

use fielding_postgres::sqlx;
use fielding_postgres::testing::{self, TestSchema};
use fielding_postgres::PgStore;

/// Whether the PostgreSQL cases run: see [`testing::server`].
pub async fn available() -> bool {
    testing::server().await.is_some()
}

/// A migrated store in a fresh schema, and the guard that drops the schema.
/// Call only after [`available`] said yes.
pub async fn fresh_store() -> (PgStore, TestSchema) {
    let schema = TestSchema::fresh(&testing::url());
    let store = schema.store().await;
    (store, schema)
}

/// Runs `sql` on the store's pool (e.g. to break or repair its tables).
pub async fn execute(store: &PgStore, sql: &str) {
    sqlx::query(sql)
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}
