//! Shared by the test binaries: a real PostgreSQL, one fresh schema per
//! store, dropped again when the store is dropped. The server, the skip
//! rule and the schemas come from [`fielding_postgres::testing`]; this
//! module adds the stores with pools of their own that these tests need.
#![allow(dead_code)]

use std::str::FromStr;
use std::time::Duration;

use fielding_postgres::sqlx::postgres::PgConnectOptions;
use fielding_postgres::testing::{TestSchema, START_HINT};
use fielding_postgres::PgStore;
use fielding_testkit::Guarded;

/// For the conformance factory, which cannot return "skip": ends the test
/// binary successfully after the skip line.
pub fn skip_binary() -> ! {
    std::process::exit(0)
}

/// The schema guard of a test store. `url` and `name` stay fields because
/// tests read them directly.
#[derive(Debug)]
pub struct SchemaGuard {
    pub url: String,
    pub name: String,
    _schema: TestSchema,
}

impl SchemaGuard {
    fn new(schema: TestSchema) -> Self {
        Self {
            url: schema.url().to_string(),
            name: schema.name().to_string(),
            _schema: schema,
        }
    }
}

/// A migrated store in a fresh schema, plus the guard that drops it.
pub type TestStore = Guarded<PgStore, SchemaGuard>;

/// The schema a test store lives in.
pub fn schema_of(test: &TestStore) -> &str {
    &test.guard.name
}

/// A fresh, migrated store with its own pool of `max_connections`,
/// whose connections carry `application_name` (so a test can find and
/// terminate them). `None`: skip.
pub async fn fresh_store_with(application_name: &str, max_connections: u32) -> Option<TestStore> {
    let guard = SchemaGuard::new(TestSchema::new().await?);
    let store = connect_store(&guard.url, &guard.name, application_name, max_connections).await;
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("migrate {}: {e}", guard.name));
    Some(Guarded::new(store, guard))
}

/// A fresh, migrated store (pool of 10). `None`: skip.
pub async fn fresh_store() -> Option<TestStore> {
    fresh_store_with("fielding_postgres_tests", 10).await
}

/// A store on an existing schema with a pool of its own (not migrated).
pub async fn connect_store(url: &str, schema: &str, application_name: &str, max_connections: u32) -> PgStore {
    let options = PgConnectOptions::from_str(url)
        .unwrap_or_else(|e| panic!("bad FIELDING_PG_URL {url:?}: {e}"))
        .application_name(application_name);
    // The settings the library recommends (and `PgStore::connect` uses).
    let pool = PgStore::pool_options()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}. {START_HINT}"));
    PgStore::new(pool, schema).unwrap_or_else(|e| panic!("{e}"))
}

/// Takes a schema back to the layout before migration 5 (the change feed):
/// change records without their scope and feed position, no horizons or
/// checkpoints. Migration 5's record is left for the caller to delete with
/// the others it forgets.
pub async fn undo_migration_5(conn: &mut fielding_postgres::sqlx::PgConnection, schema: &str) {
    use fielding_postgres::sqlx::Executor;
    conn.execute(
        format!(
            "DROP TABLE \"{schema}\".feed_horizons, \"{schema}\".feed_checkpoints; \
             DROP INDEX \"{schema}\".change_records_changed_at; \
             ALTER TABLE \"{schema}\".change_records DROP COLUMN account_id, DROP COLUMN project_id, \
             DROP COLUMN target_group_id, DROP COLUMN txid, DROP COLUMN seq"
        )
        .as_str(),
    )
    .await
    .unwrap_or_else(|e| panic!("undo migration 5 in {schema}: {e}"));
}
