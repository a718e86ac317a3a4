//! Shared by the test binaries: a real PostgreSQL, one fresh schema per
//! store, dropped again when the store is dropped.
//!
//! The server is `FIELDING_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`. When it cannot be reached
//! the tests fail with a message saying how to start it, except on a
//! developer's machine (neither `FIELDING_PG_URL` nor `CI` set), where each
//! test binary prints one line and skips.
#![allow(dead_code)]

use std::io::Write;
use std::str::FromStr;
use std::sync::{Once, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fielding_postgres::sqlx::postgres::{PgConnectOptions, PgConnection};
use fielding_postgres::sqlx::{self, Connection};
use fielding_postgres::PgStore;
use fielding_testkit::Guarded;

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const START_HINT: &str =
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
     (or point FIELDING_PG_URL at a server)";
/// Test schemas are named `fielding_test_<unix seconds>_<random>`; ones
/// older than this are swept away by the next test binary that runs.
const STALE_AFTER_SECS: u64 = 3600;

static SKIP_LINE: Once = Once::new();

/// The server URL the tests use.
pub fn url() -> String {
    std::env::var("FIELDING_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

fn may_skip() -> bool {
    std::env::var_os("FIELDING_PG_URL").is_none() && std::env::var_os("CI").is_none()
}

/// Checks that the server answers. `None`: skip this test (a developer's
/// machine without PostgreSQL; the binary has printed its one line).
/// Panics with instructions when the tests must not skip.
pub async fn server() -> Option<String> {
    let url = url();
    let outcome = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&url)).await;
    let error = match outcome {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            sweep_stale_schemas(&url).await;
            return Some(url);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 5 s".to_string(),
    };
    if may_skip() {
        SKIP_LINE.call_once(|| {
            let binary = std::env::current_exe()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            // Straight to the process's stderr, past the test harness's capture.
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED {binary}: PostgreSQL is not reachable at {url} ({error}); {START_HINT}. \
                 (Skipping only because FIELDING_PG_URL and CI are unset.)"
            );
        });
        return None;
    }
    panic!("PostgreSQL is not reachable at {url}: {error}. {START_HINT}");
}

/// For the conformance factory, which cannot return "skip": ends the test
/// binary successfully after the skip line.
pub fn skip_binary() -> ! {
    std::process::exit(0)
}

fn unique_schema() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("fielding_test_{secs}_{}", &random[..12])
}

async fn sweep_stale_schemas(url: &str) {
    static STARTED: OnceLock<()> = OnceLock::new();
    if STARTED.set(()).is_err() {
        return;
    }
    let Ok(mut conn) = PgConnection::connect(url).await else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'fielding\\_test\\_%'")
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
    for name in names {
        let secs = name
            .strip_prefix("fielding_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|s| s.parse::<u64>().ok());
        if secs.is_some_and(|s| s + STALE_AFTER_SECS < now) {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .execute(&mut conn)
                .await;
        }
    }
    let _ = conn.close().await;
}

/// Drops the schema when dropped (on a thread of its own, so it works from
/// inside or outside a runtime, and after a panic).
#[derive(Debug)]
pub struct SchemaGuard {
    pub url: String,
    pub name: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let url = self.url.clone();
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = dropper.join();
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
    let url = server().await?;
    let name = unique_schema();
    let guard = SchemaGuard {
        url: url.clone(),
        name: name.clone(),
    };
    let store = connect_store(&url, &name, application_name, max_connections).await;
    store.migrate().await.unwrap_or_else(|e| panic!("migrate {name}: {e}"));
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
