//! Throwaway schemas on a real PostgreSQL, for test suites: this crate's,
//! the HTTP layer's, the server's, and yours.
//!
//! A test gets a schema of its own, named `fielding_test_<unix seconds>_<random>`,
//! so parallel tests and parallel runs never meet; the [`TestSchema`] guard
//! drops it (with everything in it) when the test ends, also when it ends in
//! a failed assertion. A run killed before its guards ran leaves schemas
//! behind; the first test of a later run that reaches the server drops every
//! such schema older than [`STALE_AFTER`].
//!
//! The server is [`url()`]: `FIELDING_PG_URL`, default [`DEFAULT_URL`]. When
//! it cannot be reached, [`server`] (and [`TestSchema::new`]) panic with a
//! hint how to start it, except on a developer's machine (neither
//! `FIELDING_PG_URL` nor `CI` set, see [`may_skip`]): there the test binary
//! prints one `SKIPPED` line to stderr and the calls return `None`, so a
//! test returns early. In CI the tests never skip.
//!
//! ```no_run
//! use fielding_postgres::testing::TestSchema;
//!
//! #[tokio::test]
//! async fn my_service_on_postgresql() {
//!     // `None` only on a developer's machine without PostgreSQL.
//!     let Some(schema) = TestSchema::new().await else { return };
//!     let store = schema.store().await; // connected and migrated
//!     // ... use `store`; the schema is dropped when `schema` goes.
//! }
//! # fn main() {}
//! ```
//!
//! Nothing here is needed by the store itself; it uses only sqlx and the
//! standard library (plus a current-thread tokio runtime, on a thread of its
//! own, when a guard has to drop its schema outside of an `async` context).

use std::io::Write;
use std::sync::{Once, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgConnection;
use sqlx::Connection;

use crate::PgStore;

/// The server used when `FIELDING_PG_URL` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// What a failure or a `SKIPPED` line tells the reader to do.
pub const START_HINT: &str =
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
     (or point FIELDING_PG_URL at a server)";

/// Every test schema's name starts with this, followed by the unix seconds
/// of its creation; the stale-schema sweep relies on both.
pub const SCHEMA_PREFIX: &str = "fielding_test_";

/// Test schemas older than this are left over from a run that was killed
/// (no test runs that long), and [`sweep_stale_schemas`] drops them.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

/// How long [`server`] waits for the server to answer.
const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// The server URL the tests use: `FIELDING_PG_URL`, default [`DEFAULT_URL`].
pub fn url() -> String {
    std::env::var("FIELDING_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

/// Whether a test may skip for want of a server: only where neither
/// `FIELDING_PG_URL` nor `CI` is set. Whoever set either expects the
/// PostgreSQL tests to run, so a missing server must fail them.
pub fn may_skip() -> bool {
    std::env::var_os("FIELDING_PG_URL").is_none() && std::env::var_os("CI").is_none()
}

/// Checks that the server at [`url()`] answers and returns that URL; the
/// first successful call in a process also runs [`sweep_stale_schemas`].
///
/// `None`: skip the test. That happens only when [`may_skip`] allows it; the
/// process has then printed one `SKIPPED` line (once, however many tests ask).
///
/// # Panics
///
/// When the server cannot be reached and the tests must not skip, with a
/// message saying how to start it.
pub async fn server() -> Option<String> {
    let url = url();
    let error = match tokio::time::timeout(REACH_TIMEOUT, PgConnection::connect(&url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            static SWEPT: OnceLock<()> = OnceLock::new();
            if SWEPT.set(()).is_ok() {
                sweep_stale_schemas(&url).await;
            }
            return Some(url);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {} s", REACH_TIMEOUT.as_secs()),
    };
    if may_skip() {
        static SKIP_LINE: Once = Once::new();
        SKIP_LINE.call_once(|| {
            let binary = std::env::current_exe()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            // Straight to the process's stderr, past the test harness's capture.
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED {binary}: PostgreSQL is not reachable at {url} ({error}); {START_HINT}. \
                 (Skipping its PostgreSQL tests only because FIELDING_PG_URL and CI are unset.)"
            );
        });
        return None;
    }
    panic!("PostgreSQL is not reachable at {url}: {error}. {START_HINT}");
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh test schema name, `fielding_test_<unix seconds>_<12 hex digits>`.
pub fn unique_schema_name() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{SCHEMA_PREFIX}{}_{}", unix_seconds(), &random[..12])
}

/// The creation time (unix seconds) a test schema's name records; `None`
/// for any other name.
fn created_at(name: &str) -> Option<u64> {
    name.strip_prefix(SCHEMA_PREFIX)?.split('_').next()?.parse().ok()
}

/// Drops every test schema at `url` older than [`STALE_AFTER`]. Best
/// effort: a failure leaves the schemas for the next sweep.
pub async fn sweep_stale_schemas(url: &str) {
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
        if created_at(&name).is_some_and(|secs| secs + STALE_AFTER.as_secs() < now) {
            let _ = drop_on(&mut conn, &name).await;
        }
    }
    let _ = conn.close().await;
}

/// `DROP SCHEMA ... CASCADE` on `conn`, waiting at most 10 s for locks: a
/// schema that cannot be dropped now is left to a later sweep rather than
/// holding up the test.
async fn drop_on(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SET lock_timeout = '10s'").execute(&mut *conn).await?;
    let quoted = name.replace('"', "\"\"");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{quoted}\" CASCADE"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Drops the schema `name` at `url` (and everything in it), if it exists.
pub async fn drop_schema(url: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect(url).await?;
    let dropped = drop_on(&mut conn, name).await;
    let _ = conn.close().await;
    dropped
}

/// A test schema at a server: owns its name and drops the schema when
/// dropped (or earlier, with [`TestSchema::drop_now`]).
///
/// Creating the guard creates nothing in the database: the schema appears
/// when a store on it migrates ([`TestSchema::store`], or a server process
/// given [`TestSchema::name`]).
#[derive(Debug)]
pub struct TestSchema {
    url: String,
    name: String,
    dropped: bool,
}

impl TestSchema {
    /// A fresh schema on the server at [`url()`], once [`server`] has checked
    /// it answers. `None`: skip the test (see [`server`]).
    ///
    /// # Panics
    ///
    /// As [`server`]: when the server cannot be reached and the tests must
    /// not skip.
    pub async fn new() -> Option<Self> {
        let url = server().await?;
        Some(Self::fresh(&url))
    }

    /// A fresh schema name on the server at `url`, without checking that
    /// the server answers.
    pub fn fresh(url: &str) -> Self {
        Self {
            url: url.to_string(),
            name: unique_schema_name(),
            dropped: false,
        }
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A store on this schema with the library's recommended pool
    /// ([`PgStore::connect`]), migrated.
    ///
    /// # Panics
    ///
    /// When it cannot connect or migrate; the message names the schema.
    pub async fn store(&self) -> PgStore {
        let (url, name) = (&self.url, &self.name);
        let store = PgStore::connect(url, name)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}. {START_HINT}"));
        store.migrate().await.unwrap_or_else(|e| panic!("migrate {name}: {e}"));
        store
    }

    /// Drops the schema now, reporting a failure (the guard's drop cannot).
    pub async fn drop_now(mut self) -> Result<(), sqlx::Error> {
        self.dropped = true;
        drop_schema(&self.url, &self.name).await
    }
}

impl Drop for TestSchema {
    /// Drops the schema on a thread of its own with a current-thread
    /// runtime of its own, waiting for it: a guard may be dropped inside a
    /// runtime (where blocking on it would panic), outside any runtime, or
    /// while a failed assertion unwinds, and the schema must go in each case.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (url, name) = (self.url.clone(), self.name.clone());
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            // Best effort: a schema left behind is swept by a later run.
            let _ = runtime.block_on(drop_schema(&url, &name));
        });
        let _ = dropper.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_record_their_creation_time_for_the_sweep() {
        let before = unix_seconds();
        let name = unique_schema_name();
        let after = unix_seconds();
        let created = created_at(&name).expect("a test schema name");
        assert!((before..=after).contains(&created), "{name}");
        assert_ne!(unique_schema_name(), unique_schema_name());
        // Valid as a schema name for the store.
        crate::SchemaName::new(&name).expect("a valid schema name");
    }

    #[test]
    fn the_sweep_leaves_other_schemas_alone() {
        assert_eq!(created_at("fielding_test_12_abc"), Some(12));
        assert_eq!(created_at("fielding_test_x_abc"), None);
        assert_eq!(created_at("fielding"), None);
        assert_eq!(created_at("public"), None);
    }
}
