//! PostgreSQL for the live-server tests: one fresh, migrated schema per
//! server, dropped again when the server goes.
//!
//! The server is `FIELDING_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`. The rule is the one of the
//! PostgreSQL crate's tests: when the server cannot be reached the tests
//! fail with a message saying how to start it, except on a developer's
//! machine (neither `FIELDING_PG_URL` nor `CI` set), where the test binary
//! prints one `SKIPPED` line and its PostgreSQL cases return early.

#![allow(dead_code)]

use std::io::Write;
use std::sync::{Once, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fielding_postgres::sqlx::postgres::PgConnection;
use fielding_postgres::sqlx::{self, Connection};
use fielding_postgres::PgStore;

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const START_HINT: &str = "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
     (or point FIELDING_PG_URL at a server)";
/// Test schemas are named `fielding_test_<unix seconds>_<random>` (the
/// PostgreSQL crate's convention); ones older than this are left over from
/// a run that was killed, and the next test binary drops them.
const STALE_AFTER_SECS: u64 = 3600;

/// The server URL the tests use.
pub fn url() -> String {
    std::env::var("FIELDING_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

fn may_skip() -> bool {
    std::env::var_os("FIELDING_PG_URL").is_none() && std::env::var_os("CI").is_none()
}

/// Whether the PostgreSQL cases run. `false` only on a developer's machine
/// without a reachable server (after one `SKIPPED` line for the binary);
/// panics with instructions where the tests must not skip.
pub async fn available() -> bool {
    static SKIP_LINE: Once = Once::new();
    let url = url();
    let outcome = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&url)).await;
    let error = match outcome {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            sweep_stale_schemas(&url).await;
            return true;
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
                "SKIPPED {binary} (PostgreSQL cases): PostgreSQL is not reachable at {url} ({error}); \
                 {START_HINT}. (Skipping only because FIELDING_PG_URL and CI are unset.)"
            );
        });
        return false;
    }
    panic!("PostgreSQL is not reachable at {url}: {error}. {START_HINT}");
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unique_schema() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("fielding_test_{}_{}", unix_seconds(), &random[..12])
}

async fn sweep_stale_schemas(url: &str) {
    static STARTED: OnceLock<()> = OnceLock::new();
    if STARTED.set(()).is_err() {
        return;
    }
    let Ok(mut conn) = PgConnection::connect(url).await else {
        return;
    };
    let now = unix_seconds();
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

/// Drops the schema when dropped, on a thread of its own so it works from
/// inside a runtime and after a panic. A lock wait is bounded: a schema
/// that cannot be dropped now is swept by a later run.
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
                    let _ = sqlx::query("SET lock_timeout = '10s'").execute(&mut conn).await;
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

/// A migrated store in a fresh schema, and the guard that drops the schema.
/// Call only after [`available`] said yes.
pub async fn fresh_store() -> (PgStore, SchemaGuard) {
    let url = url();
    let name = unique_schema();
    let guard = SchemaGuard {
        url: url.clone(),
        name: name.clone(),
    };
    let store = PgStore::connect(&url, &name)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}. {START_HINT}"));
    store.migrate().await.unwrap_or_else(|e| panic!("migrate {name}: {e}"));
    (store, guard)
}

/// Runs `sql` on the store's pool (e.g. to break or repair its tables).
pub async fn execute(store: &PgStore, sql: &str) {
    sqlx::query(sql)
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}
