//! Errors of opening and migrating, and how SQLite errors become
//! [`StoreError`]s.

use std::path::PathBuf;

use fielding_core::StoreError;
use rusqlite::ErrorCode;

/// Why a database could not be opened or migrated. Every variant names the
/// database's path (`:memory:` for an in-memory one).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use fielding_sqlite::{OpenError, SqliteStore};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("notes.txt");
/// std::fs::write(&path, "these are not the pages you are looking for, padded to be long enough to be a header").unwrap();
/// let err = SqliteStore::open(&path).await.unwrap_err();
/// assert!(matches!(err, OpenError::NotADatabase { .. }));
/// assert!(err.to_string().contains("notes.txt"));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file exists but is not a SQLite database (or is encrypted, or
    /// its header is damaged). Nothing was written to it.
    #[error("{}: not a SQLite database (or encrypted, or its header is damaged); nothing was written to it", .path.display())]
    NotADatabase {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },

    /// The database's schema was written by a newer version of this
    /// library. Opening it would be a guess, so it is refused: upgrade
    /// `fielding-sqlite`.
    #[error("{}: the database schema is at version {found}, newer than version {known}, the newest this fielding-sqlite knows; upgrade fielding-sqlite", .path.display())]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The schema version recorded in the database.
        found: u32,
        /// [`crate::SCHEMA_VERSION`].
        known: u32,
    },

    /// The schema is older than this library needs and the store was
    /// opened without migrating (read-only, or
    /// [`crate::SqliteOptions::with_migrate`] off). Run
    /// [`crate::SqliteStore::migrate`].
    #[error("{}: the database schema is at version {found}, this fielding-sqlite needs version {needed}; run SqliteStore::migrate on it first", .path.display())]
    SchemaOutdated {
        /// The database file.
        path: PathBuf,
        /// The schema version recorded in the database (0: none).
        found: u32,
        /// [`crate::SCHEMA_VERSION`].
        needed: u32,
    },

    /// The database cannot be written (opened read-only, or the file or
    /// its directory does not allow writing) but writing was needed, e.g.
    /// to migrate or to switch to WAL mode.
    #[error("{}: the database is read-only, but {what} needs to write to it", .path.display())]
    ReadOnly {
        /// The database file.
        path: PathBuf,
        /// What needed to write.
        what: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },

    /// Another connection held the database locked for longer than the
    /// busy timeout. Retrying later may succeed.
    #[error("{}: the database stayed locked by another connection past the busy timeout while trying to {what}", .path.display())]
    Busy {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },

    /// Any other SQLite failure while opening, configuring or migrating.
    #[error("{}: cannot {what}: {source}", .path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },

    /// A worker thread could not be started.
    #[error("{}: cannot start a SQLite worker thread: {source}", .path.display())]
    Thread {
        /// The database file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A worker thread stopped before it reported whether the database
    /// opened (it panicked).
    #[error("{}: the SQLite worker thread stopped while opening the database", .path.display())]
    WorkerStopped {
        /// The database file.
        path: PathBuf,
    },
}

/// The primary result code of a SQLite failure, if `err` is one.
pub(crate) fn code(err: &rusqlite::Error) -> Option<ErrorCode> {
    match err {
        rusqlite::Error::SqliteFailure(e, _) => Some(e.code),
        _ => None,
    }
}

/// The extended result code of a SQLite failure, if `err` is one.
pub(crate) fn extended_code(err: &rusqlite::Error) -> Option<i32> {
    match err {
        rusqlite::Error::SqliteFailure(e, _) => Some(e.extended_code),
        _ => None,
    }
}

/// Classifies an error met while opening: by result code, never by message.
pub(crate) fn open_error(path: &std::path::Path, what: &'static str, source: rusqlite::Error) -> OpenError {
    let path = path.to_path_buf();
    match code(&source) {
        Some(ErrorCode::NotADatabase) => OpenError::NotADatabase { path, source },
        Some(ErrorCode::ReadOnly) => OpenError::ReadOnly { path, what, source },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => OpenError::Busy { path, what, source },
        _ => OpenError::Sqlite { path, what, source },
    }
}

/// A SQLite failure during `op` as a [`StoreError::Backend`]: retryable for
/// `SQLITE_BUSY` / `SQLITE_LOCKED` (another connection holds the lock past
/// the busy timeout), permanent otherwise (including `SQLITE_FULL`,
/// `SQLITE_IOERR`, `SQLITE_READONLY`, `SQLITE_CORRUPT`).
pub(crate) fn store_error(op: &'static str, err: rusqlite::Error) -> StoreError {
    let retryable = matches!(code(&err), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked));
    StoreError::Backend {
        message: format!("sqlite {op}: {err}"),
        retryable,
        source: Some(Box::new(err)),
    }
}

/// A store whose worker threads are gone (closed, or a thread panicked).
pub(crate) fn stopped(op: &'static str) -> StoreError {
    StoreError::Backend {
        message: format!("sqlite {op}: the store's worker thread has stopped (store closed)"),
        retryable: false,
        source: None,
    }
}
