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
