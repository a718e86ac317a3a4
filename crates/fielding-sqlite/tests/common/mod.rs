//! A store on a fresh temporary file, removed with the store.

#![allow(dead_code)]

use fielding_sqlite::{SqliteOptions, SqliteStore};
use fielding_testkit::Guarded;

/// A [`SqliteStore`] on a file in its own temporary directory; the
/// directory goes when this does.
pub type TempStore = Guarded<SqliteStore, tempfile::TempDir>;

pub async fn temp_store() -> TempStore {
    temp_store_with(SqliteOptions::default()).await
}

pub async fn temp_store_with(options: SqliteOptions) -> TempStore {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open_with(dir.path().join("fielding.db"), options)
        .await
        .expect("open a fresh database");
    Guarded::new(store, dir)
}

/// Turns a database at schema version 5 back into what version 4 left:
/// change records without their account, project, target group and feed
/// position (keyed by run and version), no feed tables, migration 5 not
/// recorded. The rows stay.
pub fn back_to_version_4(conn: &fielding_sqlite::rusqlite::Connection) {
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE change_records_v4 (
             run_id        TEXT    NOT NULL,
             version       INTEGER NOT NULL CHECK (version >= 1),
             action        TEXT    NOT NULL,
             changed_at_ms INTEGER NOT NULL,
             changed_by    TEXT    NOT NULL,
             status_from   TEXT,
             status_to     TEXT    NOT NULL,
             start_from_ms INTEGER,
             start_to_ms   INTEGER NOT NULL,
             end_from_ms   INTEGER,
             end_to_ms     INTEGER NOT NULL,
             PRIMARY KEY (run_id, version)
         ) STRICT, WITHOUT ROWID;
         INSERT INTO change_records_v4 SELECT run_id, version, action, changed_at_ms, changed_by, status_from,
             status_to, start_from_ms, start_to_ms, end_from_ms, end_to_ms FROM change_records;
         DROP TABLE change_records;
         ALTER TABLE change_records_v4 RENAME TO change_records;
         DROP TABLE feed_counter;
         DROP TABLE feed_horizons;
         DROP TABLE feed_checkpoints;
         DELETE FROM fielding_schema_migrations WHERE version >= 5;
         COMMIT;",
    )
    .expect("back to schema version 4");
}
