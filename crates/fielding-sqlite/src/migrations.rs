//! Embedded, versioned migrations: [`SCHEMA_VERSION`], the
//! [`MigrationReport`](fielding_core::MigrationReport) of `migrate`,
//! and how a schema is migrated or checked.
//!
//! Each migration has a number; the numbers applied to a database are
//! recorded in `fielding_schema_migrations`, and the schema version is the
//! highest of them. Migrating runs inside one `BEGIN IMMEDIATE` transaction,
//! so two processes migrating the same file at once serialize on SQLite's
//! write lock: the second waits (busy timeout), then sees the first's work
//! and has nothing left to do.

use fielding_core::MigrationReport;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use fielding_core::StoreError;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use crate::error::{open_error, OpenError};
use crate::options::SqliteOptions;

/// The schema version this library writes and reads.
pub const SCHEMA_VERSION: u32 = 5;

struct Migration {
    version: u32,
    description: &'static str,
    sql: &'static str,
}

/// Every migration, in order. Append only: a released migration is never
/// edited, a change is a new one.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "fielding_runs and change_records",
        sql: include_str!("../migrations/0001_runs_and_change_records.sql"),
    },
    Migration {
        version: 2,
        description: "fielding_run_jobs",
        // Requests: a launch has no start, a schedule has one. Outcomes: a
        // failure code and its description exactly when the job failed.
        sql: include_str!("../migrations/0002_creation_jobs.sql"),
    },
    Migration {
        version: 3,
        description: "fielding_run_jobs.finished_at_ms",
        // The finish time job expiry goes by, with its index.
        sql: include_str!("../migrations/0003_job_finish_time.sql"),
    },
    Migration {
        version: 4,
        description: "fielding_bulk_jobs and fielding_bulk_job_items",
        // Bulk jobs, their claims and their items' outcomes.
        sql: include_str!("../migrations/0004_bulk_jobs.sql"),
    },
    Migration {
        version: 5,
        description: "change feed: change_records positions, feed_counter, feed_horizons, feed_checkpoints",
        // Change records rebuilt with their account, project, target group
        // and feed position (existing ones numbered in run and version
        // order), the position counter, prune horizons and checkpoints.
        sql: include_str!("../migrations/0005_change_feed.sql"),
    },
];

const CREATE_MIGRATIONS_TABLE: &str = "
CREATE TABLE IF NOT EXISTS fielding_schema_migrations (
    version       INTEGER NOT NULL PRIMARY KEY,
    description   TEXT    NOT NULL,
    applied_at_ms INTEGER NOT NULL
) STRICT;";

fn recorded_version(conn: &Connection) -> rusqlite::Result<u32> {
    let has_table: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'fielding_schema_migrations'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if has_table.is_none() {
        return Ok(0);
    }
    let version: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM fielding_schema_migrations",
        [],
        |row| row.get(0),
    )?;
    Ok(u32::try_from(version).unwrap_or(u32::MAX))
}

/// Brings the schema to [`SCHEMA_VERSION`], in one immediate transaction.
pub(crate) fn migrate(conn: &mut Connection, path: &Path, now_ms: i64) -> Result<MigrationReport, OpenError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| open_error(path, "start the migration transaction", e))?;
    let from = recorded_version(&tx).map_err(|e| open_error(path, "read the schema version", e))?;
    if from > SCHEMA_VERSION {
        return Err(OpenError::SchemaTooNew {
            path: path.to_path_buf(),
            found: from,
            known: SCHEMA_VERSION,
        });
    }
    if from < SCHEMA_VERSION {
        tx.execute_batch(CREATE_MIGRATIONS_TABLE)
            .map_err(|e| open_error(path, "create the migrations table", e))?;
        for migration in MIGRATIONS.iter().filter(|m| m.version > from) {
            tx.execute_batch(migration.sql)
                .map_err(|e| open_error(path, "apply a schema migration", e))?;
            tx.execute(
                "INSERT INTO fielding_schema_migrations (version, description, applied_at_ms) VALUES (?1, ?2, ?3)",
                rusqlite::params![migration.version, migration.description, now_ms],
            )
            .map_err(|e| open_error(path, "record a schema migration", e))?;
        }
    }
    tx.commit().map_err(|e| open_error(path, "commit the migration", e))?;
    Ok(MigrationReport {
        from,
        to: SCHEMA_VERSION,
    })
}

/// Checks, without writing, that the schema is exactly [`SCHEMA_VERSION`].
pub(crate) fn check(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    let found = recorded_version(conn).map_err(|e| open_error(path, "read the schema version", e))?;
    if found > SCHEMA_VERSION {
        return Err(OpenError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    if found < SCHEMA_VERSION {
        return Err(OpenError::SchemaOutdated {
            path: path.to_path_buf(),
            found,
            needed: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// The milliseconds since the Unix epoch, for `applied_at_ms`.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Migrates the database file at `path` on a thread of its own, with a
/// connection of its own: its `BEGIN IMMEDIATE` waits for the store's
/// writer (or another process) like any other writer, so it needs no pause
/// of the store's threads. A read-only store only checks.
pub(crate) async fn migrate_file(path: &Path, options: &SqliteOptions) -> Result<MigrationReport, OpenError> {
    let path = path.to_path_buf();
    let (tx, rx) = oneshot::channel();
    let (thread_path, options) = (path.clone(), options.clone());
    std::thread::Builder::new()
        .name("fielding-sqlite-migrate".into())
        .spawn(move || {
            let _ = tx.send(migrate_on_new_connection(&thread_path, &options));
        })
        .map_err(|source| OpenError::Thread {
            path: path.clone(),
            source,
        })?;
    rx.await.map_err(|_| OpenError::WorkerStopped { path })?
}

fn migrate_on_new_connection(path: &Path, options: &SqliteOptions) -> Result<MigrationReport, OpenError> {
    let access = if options.read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    };
    let mut conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_NO_MUTEX | access)
        .map_err(|e| open_error(path, "open the database", e))?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(|e| open_error(path, "set the busy timeout", e))?;
    if options.read_only {
        check(&conn, path)?;
        return Ok(MigrationReport {
            from: SCHEMA_VERSION,
            to: SCHEMA_VERSION,
        });
    }
    switch_to_wal(&conn, path, options.busy_timeout)?;
    conn.pragma_update(None, "synchronous", options.durability.pragma())
        .map_err(|e| open_error(path, "set the durability (synchronous)", e))?;
    migrate(&mut conn, path, now_ms())
}

/// Switches `conn`'s database to WAL and answers the mode it is in then.
///
/// The switch needs the file to itself. When two connections try it at
/// the same moment (two processes opening a new file together), SQLite
/// answers one of them `SQLITE_BUSY` at once, without its busy handler,
/// which would otherwise wait for the other: seen as a failed open in a
/// CI run of `tests/processes.rs`. So a busy answer is tried again,
/// briefly apart, until `busy_timeout` has passed, as the busy handler
/// would have waited.
pub(crate) fn switch_to_wal(
    conn: &Connection,
    path: &Path,
    busy_timeout: std::time::Duration,
) -> Result<String, OpenError> {
    let deadline = std::time::Instant::now() + busy_timeout;
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0)) {
            Ok(mode) => return Ok(mode),
            Err(rusqlite::Error::SqliteFailure(err, _))
                if err.code == rusqlite::ErrorCode::DatabaseBusy && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(err) => return Err(open_error(path, "switch to WAL mode", err)),
        }
    }
}

/// The schema version a store has seen, shared by its handle and its
/// writer thread: every operation is refused while it is below
/// [`SCHEMA_VERSION`] (a store opened with `SqliteOptions::with_migrate(false)`
/// on an outdated schema), until `SqliteStore::migrate` brings it up.
#[derive(Debug, Default)]
pub(crate) struct SchemaGate {
    found: AtomicU32,
}

impl SchemaGate {
    /// Records the schema version found or reached.
    pub(crate) fn set(&self, version: u32) {
        self.found.store(version, Ordering::Release);
    }

    /// `Ok` when the schema is current; else the error for `op`.
    pub(crate) fn ready(&self, op: &'static str, path: &Path) -> Result<(), StoreError> {
        let found = self.found.load(Ordering::Acquire);
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        Err(StoreError::Backend {
            message: format!(
                "sqlite {op}: the schema of {} is at version {found}, this library needs {SCHEMA_VERSION}: \
                 run SqliteStore::migrate first",
                path.display()
            ),
            retryable: false,
            source: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_one_by_one_up_to_the_schema_version() {
        assert!(MIGRATIONS.iter().map(|m| m.version).eq(1..=SCHEMA_VERSION));
    }

    #[test]
    fn migrate_is_idempotent_and_check_agrees() {
        let mut conn = Connection::open_in_memory().unwrap();
        let path = Path::new(":memory:");
        assert!(matches!(
            check(&conn, path),
            Err(OpenError::SchemaOutdated { found: 0, .. })
        ));
        assert_eq!(migrate(&mut conn, path, 0).unwrap().applied(), SCHEMA_VERSION);
        assert_eq!(migrate(&mut conn, path, 0).unwrap().applied(), 0);
        check(&conn, path).unwrap();
        conn.execute(
            "INSERT INTO fielding_schema_migrations VALUES (?1, 'from the future', 0)",
            [SCHEMA_VERSION + 1],
        )
        .unwrap();
        assert!(
            matches!(check(&conn, path), Err(OpenError::SchemaTooNew { found, .. }) if found == SCHEMA_VERSION + 1)
        );
        assert!(matches!(
            migrate(&mut conn, path, 0),
            Err(OpenError::SchemaTooNew { .. })
        ));
    }

    /// A database as the release before job expiry left it: migrations 1
    /// and 2, recorded.
    fn at_version_2() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(CREATE_MIGRATIONS_TABLE).unwrap();
        for migration in &MIGRATIONS[..2] {
            conn.execute_batch(migration.sql).unwrap();
            conn.execute(
                "INSERT INTO fielding_schema_migrations VALUES (?1, ?2, 5)",
                rusqlite::params![migration.version, migration.description],
            )
            .unwrap();
        }
        conn
    }

    #[test]
    fn migration_3_dates_jobs_finished_before_it_by_their_creation_and_indexes_the_expiry() {
        let mut conn = at_version_2();
        let insert = "INSERT INTO fielding_run_jobs (id, account_id, project_id, target_group_id, kind, \
                      idempotency_key, end_ms, fielding_run_id, created_at_ms, created_by, status, failure_code, \
                      failure_description) VALUES (?1, 101, 'p', 't', 'launch-from-draft', ?1, 9, 'r', ?2, 'u', ?3, ?4, ?5)";
        for (id, created, status, code, description) in [
            ("done", 1_000, "Completed", None, None),
            ("failed", 2_000, "Failed", Some("InvalidFieldingDates"), Some("bad")),
            ("busy", 3_000, "Processing", None, None),
        ] {
            conn.execute(insert, rusqlite::params![id, created, status, code, description])
                .unwrap();
        }
        let report = migrate(&mut conn, Path::new(":memory:"), 9).unwrap();
        assert_eq!((report.from, report.to), (2, SCHEMA_VERSION));
        let finished: Vec<(String, Option<i64>)> = conn
            .prepare("SELECT id, finished_at_ms FROM fielding_run_jobs ORDER BY id")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            finished,
            [
                ("busy".to_string(), None),
                ("done".to_string(), Some(1_000)),
                ("failed".to_string(), Some(2_000))
            ]
        );
        // The expiry's search walks the partial index, not the table.
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", crate::sql::expire_jobs_sql()))
            .unwrap()
            .query_map(rusqlite::params![10_000, 10], |row| row.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("USING INDEX fielding_run_jobs_finished_at")),
            "{plan:?}"
        );
    }

    /// A database as the release before the change feed left it:
    /// migrations 1 to 4, recorded.
    fn at_version_4() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(CREATE_MIGRATIONS_TABLE).unwrap();
        for migration in &MIGRATIONS[..4] {
            conn.execute_batch(migration.sql).unwrap();
            conn.execute(
                "INSERT INTO fielding_schema_migrations VALUES (?1, ?2, 5)",
                rusqlite::params![migration.version, migration.description],
            )
            .unwrap();
        }
        conn
    }

    const RUN: &str = "INSERT INTO fielding_runs VALUES (?1, ?2, ?3, ?4, 1, 2, 'scheduled', ?5, 0, 'u')";
    const RECORD: &str = "INSERT INTO change_records (run_id, version, action, changed_at_ms, changed_by, \
                          status_to, start_to_ms, end_to_ms) VALUES (?1, ?2, 'update-dates', ?3, 'u', 'scheduled', 1, 2)";

    #[test]
    fn migration_5_numbers_existing_records_by_age_keeping_each_runs_order_and_starts_the_counter_after_them() {
        let mut conn = at_version_4();
        // Run ids sort b < c < d; accounts 101 (b, d) and 102 (c); records
        // inserted out of order, with times that do not follow the versions.
        for (run, account, versions) in [("d", 101, 1), ("b", 101, 3), ("c", 102, 2)] {
            conn.execute(
                RUN,
                rusqlite::params![run, account, format!("p-{run}"), format!("t-{run}"), versions],
            )
            .unwrap();
        }
        for (run, version, at) in [
            ("c", 2, 10),
            ("b", 3, 20),
            ("d", 1, 30),
            ("b", 1, 40),
            ("c", 1, 50),
            ("b", 2, 60),
        ] {
            conn.execute(RECORD, rusqlite::params![run, version, at]).unwrap();
        }
        let report = migrate(&mut conn, Path::new(":memory:"), 9).unwrap();
        assert_eq!((report.from, report.to), (4, SCHEMA_VERSION));
        let rows: Vec<(i64, i64, String, i64, String, String, i64)> = conn
            .prepare(
                "SELECT position, account_id, run_id, version, project_id, target_group_id, changed_at_ms \
                 FROM change_records ORDER BY position",
            )
            .unwrap()
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // By age: the run's latest changed_at up to each version (b: 40,
        // 60, 60; c: 50, 50; d: 30), then run and version.
        let expected = [
            (1, 101, "d", 1, 30),
            (2, 101, "b", 1, 40),
            (3, 102, "c", 1, 50),
            (4, 102, "c", 2, 10),
            (5, 101, "b", 2, 60),
            (6, 101, "b", 3, 20),
        ];
        assert_eq!(rows.len(), expected.len());
        for (row, (position, account, run, version, at)) in rows.iter().zip(expected) {
            let want = (
                position,
                account,
                run.to_string(),
                version,
                format!("p-{run}"),
                format!("t-{run}"),
                at,
            );
            assert_eq!(*row, want);
        }
        let counter: i64 = conn
            .query_row("SELECT last_position FROM feed_counter", [], |row| row.get(0))
            .unwrap();
        assert_eq!(counter, 6);
        let mut next = crate::feed::take_positions(&conn, 1, "test").unwrap();
        assert_eq!(next.next("test").unwrap(), 7, "new records go after the old ones");
        let horizons: i64 = conn
            .query_row("SELECT COUNT(*) FROM feed_horizons", [], |row| row.get(0))
            .unwrap();
        assert_eq!(horizons, 0, "nothing pruned yet");
        // The old key is still unique.
        let err = conn.execute(
            "INSERT INTO change_records (account_id, position, run_id, version, project_id, target_group_id, action, \
             changed_at_ms, changed_by, status_to, start_to_ms, end_to_ms) \
             VALUES (101, 99, 'b', 2, 'p-b', 't-b', 'update-dates', 0, 'u', 'scheduled', 1, 2)",
            [],
        );
        assert!(err.is_err(), "(run_id, version) stays unique");
    }

    #[test]
    fn migration_5_refuses_a_record_without_its_run_rather_than_dropping_it() {
        let mut conn = at_version_4();
        conn.execute(RECORD, rusqlite::params!["orphan", 1, 0]).unwrap();
        assert!(migrate(&mut conn, Path::new(":memory:"), 9).is_err());
        assert_eq!(recorded_version(&conn).unwrap(), 4, "rolled back as a whole");
        let kept: i64 = conn
            .query_row("SELECT COUNT(*) FROM change_records", [], |row| row.get(0))
            .unwrap();
        assert_eq!(kept, 1);
    }

    fn tables(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_database_with_only_migration_1_gets_the_later_ones_only() {
        let mut conn = Connection::open_in_memory().unwrap();
        let path = Path::new(":memory:");
        // What the release before jobs did: migration 1, recorded.
        conn.execute_batch(CREATE_MIGRATIONS_TABLE).unwrap();
        conn.execute_batch(MIGRATIONS[0].sql).unwrap();
        conn.execute(
            "INSERT INTO fielding_schema_migrations VALUES (1, ?1, 5)",
            [MIGRATIONS[0].description],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO fielding_runs VALUES ('01BTGNYV6HRNK8K8VKZASZCFP2', 101, '01BTGNYV6HRNK8K8VKZASZCFP0',              '01BTGNYV6HRNK8K8VKZASZCFP1', 1, 2, 'scheduled', 1, 0, '67e55044-10b1-426f-9247-bb680e5fe0c8')",
            [],
        )
        .unwrap();
        assert!(matches!(
            check(&conn, path),
            Err(OpenError::SchemaOutdated {
                found: 1,
                needed: SCHEMA_VERSION,
                ..
            })
        ));
        let report = migrate(&mut conn, path, 9).unwrap();
        assert_eq!(
            (report.from, report.to, report.applied()),
            (1, SCHEMA_VERSION, SCHEMA_VERSION - 1)
        );
        check(&conn, path).unwrap();
        assert_eq!(
            tables(&conn),
            [
                "change_records",
                "feed_checkpoints",
                "feed_counter",
                "feed_horizons",
                "fielding_bulk_job_items",
                "fielding_bulk_jobs",
                "fielding_run_jobs",
                "fielding_runs",
                "fielding_schema_migrations"
            ]
        );
        let runs: i64 = conn
            .query_row("SELECT COUNT(*) FROM fielding_runs", [], |row| row.get(0))
            .unwrap();
        assert_eq!(runs, 1);
        let applied: Vec<(i64, i64)> = conn
            .prepare("SELECT version, applied_at_ms FROM fielding_schema_migrations ORDER BY version")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(applied, [(1, 5), (2, 9), (3, 9), (4, 9), (5, 9)]);
    }
}
