//! Opening a store: the connections (writer, readers, checkpointer), the
//! schema check or migration at open, and the start of the worker threads.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use fielding_core::ChangeNotifier;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::checkpoint::{self, CheckpointCounters, CheckpointPolicy};
use crate::error::{open_error, OpenError};
use crate::migrations::{self, SchemaGate};
use crate::options::SqliteOptions;
use crate::store::SqliteStore;
use crate::writer::{self, Counters, Task, WriterTask};

/// Whether `path` names a private in-memory database.
pub(crate) fn is_memory(path: &Path) -> bool {
    path.as_os_str() == ":memory:"
}

/// The writer's connection, and the size in bytes of a log of
/// `wal_restart_pages` pages (with this database's page size) when a
/// checkpoint thread bounds the log.
struct OpenedWriter {
    conn: Connection,
    restart_bytes: Option<u64>,
}

/// Opens and configures the writer connection, migrating or checking the
/// schema, and records the schema version found or reached in `schema`.
fn open_writer(path: &Path, options: &SqliteOptions, schema: &SchemaGate) -> Result<OpenedWriter, OpenError> {
    let mut conn = if is_memory(path) {
        Connection::open_in_memory()
    } else {
        let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX;
        flags |= if options.read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
        };
        Connection::open_with_flags(path, flags)
    }
    .map_err(|e| open_error(path, "open the database", e))?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(|e| open_error(path, "set the busy timeout", e))?;
    // The first statement that reads the file: a file that is not a
    // database fails here with SQLITE_NOTADB.
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .map_err(|e| open_error(path, "read the journal mode", e))?;
    if !options.read_only && !is_memory(path) && !mode.eq_ignore_ascii_case("wal") {
        let mode = migrations::switch_to_wal(&conn, path, options.busy_timeout)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OpenError::Sqlite {
                path: path.to_path_buf(),
                what: "switch to WAL mode",
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                    Some(format!("the journal mode stayed {mode:?}: WAL is not available here")),
                ),
            });
        }
    }
    conn.pragma_update(None, "synchronous", options.durability.pragma())
        .map_err(|e| open_error(path, "set the durability (synchronous)", e))?;
    cache_pragmas(&conn, path, options)?;
    let mut restart_bytes = None;
    if has_checkpointer(path, options) {
        // The checkpoint thread does this work, off the commit path.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| open_error(path, "turn off the automatic checkpoint", e))?;
        // When the log starts over, a file that outgrew the restart length
        // is cut back to it: short of a TRUNCATE checkpoint, SQLite shrinks
        // the file only with this setting.
        let page: u64 = conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(|e| open_error(path, "read the page size", e))?;
        let bytes = wal_bytes(options.wal_restart_pages, page);
        conn.pragma_update(None, "journal_size_limit", i64::try_from(bytes).unwrap_or(i64::MAX))
            .map_err(|e| open_error(path, "set journal_size_limit", e))?;
        restart_bytes = Some(bytes);
    }
    if let Some(pages) = options.max_page_count {
        let pages = i64::try_from(pages).unwrap_or(i64::MAX);
        conn.pragma_update_and_check(None, "max_page_count", pages, |row| row.get::<_, i64>(0))
            .map_err(|e| open_error(path, "set max_page_count", e))?;
    }
    conn.set_prepared_statement_cache_capacity(32);
    match migrations::check(&conn, path) {
        // Current: nothing to write, no write lock taken.
        Ok(()) => {}
        // A private in-memory database starts empty and has no deployment
        // step, so it is always migrated.
        Err(OpenError::SchemaOutdated { .. }) if (options.migrate || is_memory(path)) && !options.read_only => {
            migrations::migrate(&mut conn, path, migrations::now_ms())?;
        }
        // Migrating is an explicit step: the store opens, and refuses every
        // operation until `SqliteStore::migrate` has run.
        Err(OpenError::SchemaOutdated { found, .. }) if !options.read_only => {
            schema.set(found);
            return Ok(OpenedWriter { conn, restart_bytes });
        }
        Err(err) => return Err(err),
    }
    schema.set(migrations::SCHEMA_VERSION);
    Ok(OpenedWriter { conn, restart_bytes })
}

/// The size of a log of `pages` pages of `page_size` bytes: the WAL header
/// and, per page, a frame header and the page.
fn wal_bytes(pages: u32, page_size: u64) -> u64 {
    const WAL_HEADER: u64 = 32;
    const FRAME_HEADER: u64 = 24;
    WAL_HEADER.saturating_add(u64::from(pages).saturating_mul(page_size.saturating_add(FRAME_HEADER)))
}

/// The `-wal` file next to the database at `path`.
fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Whether a checkpoint thread runs: not for a private in-memory database
/// (no log) nor a read-only store (nothing to copy).
fn has_checkpointer(path: &Path, options: &SqliteOptions) -> bool {
    !is_memory(path) && !options.read_only
}

fn open_checkpointer(path: &Path, options: &SqliteOptions) -> Result<Connection, OpenError> {
    let flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_READ_WRITE;
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| open_error(path, "open the checkpoint connection", e))?;
    // Only restarts and truncations wait (passive checkpoints never do),
    // and this process's writer is paused while they do.
    conn.busy_timeout(options.busy_timeout.min(checkpoint::PAUSED_WAIT))
        .map_err(|e| open_error(path, "set the busy timeout", e))?;
    Ok(conn)
}

fn open_reader(path: &Path, options: &SqliteOptions) -> Result<Connection, OpenError> {
    let flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, "open a reader connection", e))?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(|e| open_error(path, "set the busy timeout", e))?;
    cache_pragmas(&conn, path, options)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

fn cache_pragmas(conn: &Connection, path: &Path, options: &SqliteOptions) -> Result<(), OpenError> {
    conn.pragma_update(None, "cache_size", -i64::from(options.cache_kib))
        .map_err(|e| open_error(path, "set the page cache size", e))?;
    let mmap = i64::try_from(options.mmap_bytes).unwrap_or(i64::MAX);
    conn.pragma_update(None, "mmap_size", mmap)
        .map_err(|e| open_error(path, "set the memory map size", e))?;
    Ok(())
}

/// Starts a worker thread that opens its connection with `open` and then
/// hands it to `serve`; resolves once the connection is open.
async fn start_worker<C: Send + 'static>(
    name: String,
    path: &Path,
    open: impl FnOnce() -> Result<C, OpenError> + Send + 'static,
    serve: impl FnOnce(C) + Send + 'static,
    alive: tokio::sync::mpsc::Sender<()>,
) -> Result<(), OpenError> {
    let (ready_tx, ready_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let _alive = alive;
            match open() {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(conn);
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                }
            }
        })
        .map_err(|source| OpenError::Thread {
            path: path.to_path_buf(),
            source,
        })?;
    ready_rx.await.map_err(|_| OpenError::WorkerStopped {
        path: path.to_path_buf(),
    })?
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with the default
    /// options: migrates the schema, WAL mode, [`Durability::Full`](crate::Durability::Full).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fielding_sqlite::OpenError> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = fielding_sqlite::SqliteStore::open(dir.path().join("fielding.db")).await?;
    /// store.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Opens the database at `path` with `options`.
    ///
    /// ```
    /// use fielding_sqlite::{Durability, SqliteOptions, SqliteStore};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fielding_sqlite::OpenError> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("fielding.db");
    /// let options = SqliteOptions::default().with_migrate(false).with_durability(Durability::Normal);
    /// let store = SqliteStore::open_with(&path, options).await?;
    /// store.migrate().await?; // explicit: operations are refused until then
    /// assert_eq!(store.durability(), Durability::Normal);
    /// # Ok(()) }
    /// ```
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        let memory = is_memory(&path);
        let (alive, exited) = tokio::sync::mpsc::channel(1);

        let (writer, writer_rx) = mpsc::channel::<WriterTask>();
        let (open_path, open_options) = (path.clone(), options.clone());
        let group_commit = options.group_commit;
        let counters = Arc::new(Counters::default());
        let writer_counters = Arc::clone(&counters);
        let checkpoints = Arc::new(CheckpointCounters::default());
        let schema = Arc::new(SchemaGate::default());
        let writer_schema = Arc::clone(&schema);
        let (links, closing) = if has_checkpointer(&path, &options) {
            // The writer closes its connection last (see `close_last`):
            // every other thread holds a clone of `closed` until it has
            // closed its own.
            let (closed, all_closed) = mpsc::channel::<()>();
            (Some(checkpoint::link(wal_path(&path))), Some((closed, all_closed)))
        } else {
            (None, None)
        };
        let (writer_link, checkpointer_link) = links.unzip();
        let (closed, all_closed) = closing.unzip();
        let writer_checkpoints = Arc::clone(&checkpoints);
        let notifier = ChangeNotifier::default();
        let writer_notifier = notifier.clone();
        start_worker(
            "fielding-sqlite-writer".into(),
            &path,
            move || open_writer(&open_path, &open_options, &writer_schema),
            move |OpenedWriter {
                      mut conn,
                      restart_bytes,
                  }| {
                let writer_link = writer_link.map(|link| link.restarting_at(restart_bytes));
                writer::serve(
                    &mut conn,
                    writer_rx,
                    group_commit,
                    &writer_counters,
                    writer_link.as_ref(),
                    &writer_notifier,
                );
                // Stops the checkpoint thread.
                drop(writer_link);
                if let Some(all_closed) = all_closed {
                    // `Err` once every other thread has closed its connection.
                    let _ = all_closed.recv();
                    checkpoint::close_last(conn, &writer_checkpoints);
                }
            },
            alive.clone(),
        )
        .await?;
        // After the writer, which creates the file and switches it to WAL.
        if let Some(link) = checkpointer_link {
            let (open_path, open_options) = (path.clone(), options.clone());
            let policy = CheckpointPolicy {
                interval: options.checkpoint_interval,
                restart_pages: options.wal_restart_pages,
                truncate_after: options.wal_truncate_after,
            };
            let thread_counters = Arc::clone(&checkpoints);
            let closed = closed.clone();
            start_worker(
                "fielding-sqlite-checkpoint".into(),
                &path,
                move || open_checkpointer(&open_path, &open_options),
                move |conn| {
                    checkpoint::serve(conn, link, policy, &thread_counters);
                    drop(closed);
                },
                alive.clone(),
            )
            .await?;
        }

        // An in-memory database is private to its connection: reads go to
        // the writer.
        let reader_count = if memory { 0 } else { options.readers };
        let readers = if reader_count == 0 {
            None
        } else {
            let (readers, reader_rx) = mpsc::channel::<Task>();
            let reader_rx = Arc::new(Mutex::new(reader_rx));
            for i in 0..reader_count {
                let (open_path, open_options) = (path.clone(), options.clone());
                let rx = Arc::clone(&reader_rx);
                let closed = closed.clone();
                start_worker(
                    format!("fielding-sqlite-reader-{i}"),
                    &path,
                    move || open_reader(&open_path, &open_options),
                    move |mut conn| {
                        // The lock is released as soon as a task is taken.
                        while let Ok(task) = rx.lock().unwrap_or_else(PoisonError::into_inner).recv() {
                            writer::guarded(&mut conn, task);
                        }
                        drop(conn);
                        drop(closed);
                    },
                    alive.clone(),
                )
                .await?;
            }
            Some(readers)
        };
        Ok(Self {
            writer,
            readers,
            exited,
            path,
            memory,
            options,
            schema,
            counters,
            checkpoints,
            notifier,
        })
    }

    /// A fresh private in-memory database (one connection, on the writer
    /// thread), for tests. Its data is gone when the store is.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fielding_sqlite::OpenError> {
    /// let store = fielding_sqlite::SqliteStore::open_in_memory().await?;
    /// assert_eq!(store.path().to_str(), Some(":memory:"));
    /// # Ok(()) }
    /// ```
    pub async fn open_in_memory() -> Result<Self, OpenError> {
        Self::open_with(":memory:", SqliteOptions::default()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_log_counts_its_header_and_a_frame_header_per_page() {
        assert_eq!(wal_bytes(0, 4096), 32);
        assert_eq!(wal_bytes(2, 4096), 32 + 2 * (24 + 4096));
        assert_eq!(wal_bytes(u32::MAX, u64::MAX), u64::MAX);
    }

    /// `docs/sqlite.md` states that with the default options the `-wal`
    /// file stays under 64 MiB: the hard limit for 4 KiB pages plus the
    /// batch that crosses it (the flood tests allow 2 MiB; 4 here) must fit.
    #[test]
    fn the_default_limits_keep_the_log_under_64_mib() {
        let restart = wal_bytes(SqliteOptions::default().wal_restart_pages, 4096);
        assert!(restart > 39 * MIB, "{restart}");
        let hard = checkpoint::hard_limit(restart);
        assert!(hard + 4 * MIB <= 64 * MIB, "{hard}");
    }
}
