//! The store: one writer thread, a few reader threads, channels between.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use fielding_core::{
    ChangeRecord, Decide, FieldingRun, FieldingRunJob, FieldingStore, JobCreated, JobId, JobOutcome, RunKey, Scope,
    StoreError, Update, UpdateOutcome, Version,
};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::checkpoint::{self, CheckpointCounters, CheckpointPolicy};
use crate::error::{open_error, stopped, OpenError};
use crate::schema::{self, MigrationReport};
use crate::writer::{self, Counters, Job, Write, WriteKind, WriterJob, Written};
use crate::{jobs, sql};

/// How hard a commit tries to reach the disk. See the crate documentation.
///
/// ```
/// use fielding_sqlite::Durability;
/// assert_eq!(Durability::default(), Durability::Full);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `PRAGMA synchronous = FULL`: every commit is flushed to stable
    /// storage (`fsync` of the write-ahead log) before it is acknowledged.
    /// An acknowledged write survives a process crash **and** a power loss
    /// or operating-system crash. The default.
    #[default]
    Full,
    /// `PRAGMA synchronous = NORMAL`: commits are written to the
    /// write-ahead log but flushed only at checkpoints. An acknowledged
    /// write survives a crash of the process; after a power loss or an
    /// operating-system crash the most recent commits may be gone (the
    /// database stays consistent: a run and its change records are never
    /// torn apart). Much faster when `fsync` is slow.
    Normal,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

/// How to open a [`SqliteStore`]. Start from [`SqliteOptions::default`].
///
/// ```
/// use std::time::Duration;
/// use fielding_sqlite::{Durability, SqliteOptions};
/// let options = SqliteOptions::default()
///     .durability(Durability::Normal)
///     .busy_timeout(Duration::from_secs(1))
///     .readers(4);
/// assert_eq!(options.get_durability(), Durability::Normal);
/// ```
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    durability: Durability,
    busy_timeout: Duration,
    readers: usize,
    read_only: bool,
    migrate: bool,
    max_page_count: Option<u64>,
    group_commit: bool,
    cache_kib: u32,
    mmap_bytes: u64,
    checkpoint_interval: Duration,
    wal_restart_pages: u32,
}

impl Default for SqliteOptions {
    /// Full durability, a 5 s busy timeout, 2 reader threads, migrate on
    /// open, read-write, group commit on, a 2 MiB page cache per
    /// connection and up to 256 MiB of the file memory-mapped.
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            busy_timeout: Duration::from_secs(5),
            readers: 2,
            read_only: false,
            migrate: true,
            max_page_count: None,
            group_commit: true,
            cache_kib: 2 * 1024,
            mmap_bytes: 256 << 20,
            checkpoint_interval: Duration::from_millis(50),
            wal_restart_pages: 10_000,
        }
    }
}

impl SqliteOptions {
    /// The durability of commits (default [`Durability::Full`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long a statement waits for another connection's lock before it
    /// fails with a retryable [`StoreError::Backend`] (default 5 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How many reader threads, each with its own read-only connection
    /// (default 2). With 0, reads run on the writer thread.
    pub fn readers(mut self, readers: usize) -> Self {
        self.readers = readers;
        self
    }

    /// Opens the database read-only (`SQLITE_OPEN_READONLY`, default
    /// `false`): reads work, every write fails with a permanent
    /// [`StoreError::Backend`]. The schema must already be current.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Whether opening migrates the schema first (default `true`). With
    /// `false`, opening fails with [`OpenError::SchemaOutdated`] unless
    /// [`SqliteStore::migrate`] was run.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Caps the database at `pages` pages (`PRAGMA max_page_count`, pages
    /// are 4 KiB): a write that would grow it further fails with
    /// `SQLITE_FULL` and is rolled back, like on a full disk. Default: no
    /// cap beyond SQLite's own.
    pub fn max_page_count(mut self, pages: u64) -> Self {
        self.max_page_count = Some(pages);
        self
    }

    /// Whether writes queued at the same moment are committed together, in
    /// one transaction with a savepoint each (default `true`). Each write
    /// stays all-or-nothing and is answered only after the commit; with
    /// [`Durability::Full`] a group costs one `fsync` instead of one per
    /// write. See `docs/sqlite.md`.
    pub fn group_commit(mut self, enabled: bool) -> Self {
        self.group_commit = enabled;
        self
    }

    /// The page cache of each connection, in KiB (`PRAGMA cache_size`,
    /// default 2 MiB, about SQLite's own). Reads of pages not in the cache
    /// come from the memory map ([`SqliteOptions::mmap_bytes`]); 16 and
    /// 64 MiB made no measurable difference in the scale benchmark (1,000
    /// runs updated in a database of 100,000).
    pub fn cache_kib(mut self, kib: u32) -> Self {
        self.cache_kib = kib;
        self
    }

    /// How much of the database file each connection may read through a
    /// memory map (`PRAGMA mmap_size`, default 256 MiB; 0 turns it off).
    pub fn mmap_bytes(mut self, bytes: u64) -> Self {
        self.mmap_bytes = bytes;
        self
    }

    /// How often, at most, the checkpoint thread copies the write-ahead log
    /// back into the database file while commits keep coming (default
    /// 50 ms). Checkpoints run on a thread of their own, never inside a
    /// commit (see the crate docs).
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = interval;
        self
    }

    /// The log length, in pages, past which the checkpoint thread makes the
    /// log start over (a `RESTART` checkpoint: it waits for a moment with
    /// no writer, so the writer may pause briefly). Default 10,000 pages
    /// (about 40 MiB with 4 KiB pages).
    pub fn wal_restart_pages(mut self, pages: u32) -> Self {
        self.wal_restart_pages = pages;
        self
    }

    /// The configured durability.
    pub fn get_durability(&self) -> Durability {
        self.durability
    }
}

/// A [`FieldingStore`] in a SQLite database.
///
/// One dedicated **writer thread** owns the only read-write connection and
/// runs every write as a `BEGIN IMMEDIATE` transaction; a few **reader
/// threads** (see [`SqliteOptions::readers`]) each own a read-only
/// connection and, thanks to WAL, never wait for the writer. The async
/// methods send a job to a thread and await its answer, so no SQLite call
/// ever runs on the caller's (tokio) threads.
///
/// Dropping the store closes its channels: the threads finish the jobs
/// already queued, close their connections and exit, without blocking the
/// dropping thread. [`SqliteStore::close`] does the same and waits for it.
///
/// A write whose caller stops waiting (its future dropped) still completes
/// or fails as a whole on the writer thread; the caller just does not
/// hear which, as with any database across a network.
///
/// ```
/// use std::sync::Arc;
/// use fielding_core::{FieldingService, Scope, Timestamp, UserId};
/// use fielding_sqlite::SqliteStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = SqliteStore::open(dir.path().join("fielding.db")).await?;
/// let service = FieldingService::new(Arc::new(store));
/// let scope = Scope::parse("101", "01BTGNYV6HRNK8K8VKZASZCFP0", "01BTGNYV6HRNK8K8VKZASZCFP1")?;
/// let created = service
///     .schedule(scope, "2031-01-01T09:00:00Z".parse()?, "2031-01-31T23:59:59Z".parse()?, UserId::random())
///     .await?;
/// assert_eq!(created.etag.to_string(), "\"1\"");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SqliteStore {
    writer: mpsc::Sender<WriterJob>,
    readers: Option<mpsc::Sender<Job>>,
    /// Every worker thread holds a clone of the sender; `recv` returns
    /// `None` once all of them have exited.
    exited: tokio::sync::mpsc::Receiver<()>,
    path: PathBuf,
    durability: Durability,
    counters: Arc<Counters>,
    checkpoints: Arc<CheckpointCounters>,
}

/// What the checkpoint thread has done, from [`SqliteStore::checkpoint_stats`].
///
/// ```
/// use fielding_sqlite::CheckpointStats;
/// let stats = CheckpointStats::default();
/// assert_eq!(stats.passive + stats.restarts + stats.failures, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Passive checkpoints run (they copy what they can without waiting).
    pub passive: u64,
    /// Restart checkpoints run because the log passed
    /// [`SqliteOptions::wal_restart_pages`].
    pub restarts: u64,
    /// Checkpoints that failed (another process was checkpointing, an I/O
    /// error); the pages stay in the log and the next one tries again.
    pub failures: u64,
    /// Pages in the log after the latest checkpoint.
    pub log_pages: u64,
}

/// How the writer thread has committed, from [`SqliteStore::write_stats`].
///
/// ```
/// use fielding_sqlite::WriteStats;
/// let stats = WriteStats { writes: 12, transactions: 4 };
/// assert_eq!(stats.writes_per_transaction(), 3.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    /// Writes (`insert`, `compare_and_swap`, `create_job`, `finish_job`)
    /// the writer thread has run, whatever their outcome.
    pub writes: u64,
    /// Write transactions it has run for them (fewer than `writes` when
    /// group commit put several writes in one).
    pub transactions: u64,
}

impl WriteStats {
    /// The average group size (0 before the first write).
    pub fn writes_per_transaction(&self) -> f64 {
        if self.transactions == 0 {
            0.0
        } else {
            self.writes as f64 / self.transactions as f64
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn is_memory(path: &Path) -> bool {
    path.as_os_str() == ":memory:"
}

/// Opens and configures the writer connection, migrating or checking the
/// schema.
fn open_writer(path: &Path, options: &SqliteOptions) -> Result<Connection, OpenError> {
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
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| open_error(path, "switch to WAL mode", e))?;
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
    if has_checkpointer(path, options) {
        // The checkpoint thread does this work, off the commit path.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| open_error(path, "turn off the automatic checkpoint", e))?;
    }
    if let Some(pages) = options.max_page_count {
        let pages = i64::try_from(pages).unwrap_or(i64::MAX);
        conn.pragma_update_and_check(None, "max_page_count", pages, |row| row.get::<_, i64>(0))
            .map_err(|e| open_error(path, "set max_page_count", e))?;
    }
    conn.set_prepared_statement_cache_capacity(32);
    match schema::check(&conn, path) {
        // Current: nothing to write, no write lock taken.
        Ok(()) => {}
        Err(OpenError::SchemaOutdated { .. }) if options.migrate && !options.read_only => {
            schema::migrate(&mut conn, path, now_ms())?;
        }
        Err(err) => return Err(err),
    }
    Ok(conn)
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
    conn.busy_timeout(options.busy_timeout)
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
async fn start_worker(
    name: String,
    path: &Path,
    open: impl FnOnce() -> Result<Connection, OpenError> + Send + 'static,
    serve: impl FnOnce(Connection) + Send + 'static,
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
    /// options: migrates the schema, WAL mode, [`Durability::Full`].
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
    /// SqliteStore::migrate(&path).await?;
    /// let options = SqliteOptions::default().migrate(false).durability(Durability::Normal);
    /// let store = SqliteStore::open_with(&path, options).await?;
    /// assert_eq!(store.durability(), Durability::Normal);
    /// # Ok(()) }
    /// ```
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        let memory = is_memory(&path);
        let (alive, exited) = tokio::sync::mpsc::channel(1);

        let (writer, writer_rx) = mpsc::channel::<WriterJob>();
        let (open_path, open_options) = (path.clone(), options.clone());
        let group_commit = options.group_commit;
        let counters = Arc::new(Counters::default());
        let writer_counters = Arc::clone(&counters);
        let checkpoints = Arc::new(CheckpointCounters::default());
        let (nudge, nudges) = if has_checkpointer(&path, &options) {
            let (nudge, nudges) = checkpoint::channel();
            (Some(nudge), Some(nudges))
        } else {
            (None, None)
        };
        start_worker(
            "fielding-sqlite-writer".into(),
            &path,
            move || open_writer(&open_path, &open_options),
            move |conn| writer::serve(conn, writer_rx, group_commit, &writer_counters, nudge.as_ref()),
            alive.clone(),
        )
        .await?;
        // After the writer, which creates the file and switches it to WAL.
        if let Some(nudges) = nudges {
            let (open_path, open_options) = (path.clone(), options.clone());
            let policy = CheckpointPolicy {
                interval: options.checkpoint_interval,
                restart_pages: options.wal_restart_pages,
            };
            let thread_counters = Arc::clone(&checkpoints);
            start_worker(
                "fielding-sqlite-checkpoint".into(),
                &path,
                move || open_checkpointer(&open_path, &open_options),
                move |conn| checkpoint::serve(conn, nudges, policy, &thread_counters),
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
            let (readers, reader_rx) = mpsc::channel::<Job>();
            let reader_rx = Arc::new(Mutex::new(reader_rx));
            for i in 0..reader_count {
                let (open_path, open_options) = (path.clone(), options.clone());
                let rx = Arc::clone(&reader_rx);
                start_worker(
                    format!("fielding-sqlite-reader-{i}"),
                    &path,
                    move || open_reader(&open_path, &open_options),
                    move |mut conn| {
                        // The lock is released as soon as a job is taken.
                        while let Ok(job) = rx.lock().unwrap_or_else(PoisonError::into_inner).recv() {
                            writer::guarded(&mut conn, job);
                        }
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
            durability: options.durability,
            counters,
            checkpoints,
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

    /// Creates or upgrades the schema of the database at `path` to
    /// [`crate::SCHEMA_VERSION`], creating the file if needed. Idempotent,
    /// and safe when several processes do it at once (one immediate
    /// transaction; the others wait for it, then find nothing to do).
    /// Refuses a schema newer than this library knows
    /// ([`OpenError::SchemaTooNew`]). Runs on a thread of its own.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fielding_sqlite::OpenError> {
    /// use fielding_sqlite::{SqliteStore, SCHEMA_VERSION};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("fielding.db");
    /// assert_eq!(SqliteStore::migrate(&path).await?.applied(), SCHEMA_VERSION);
    /// assert_eq!(SqliteStore::migrate(&path).await?.applied(), 0);
    /// # Ok(()) }
    /// ```
    pub async fn migrate(path: impl AsRef<Path>) -> Result<MigrationReport, OpenError> {
        let path = path.as_ref().to_path_buf();
        let (tx, rx) = oneshot::channel();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("fielding-sqlite-migrate".into())
            .spawn(move || {
                let options = SqliteOptions::default().migrate(false);
                let outcome = (|| {
                    let flags = OpenFlags::SQLITE_OPEN_NO_MUTEX
                        | OpenFlags::SQLITE_OPEN_READ_WRITE
                        | OpenFlags::SQLITE_OPEN_CREATE;
                    let mut conn = Connection::open_with_flags(&thread_path, flags)
                        .map_err(|e| open_error(&thread_path, "open the database", e))?;
                    conn.busy_timeout(options.busy_timeout)
                        .map_err(|e| open_error(&thread_path, "set the busy timeout", e))?;
                    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
                        .map_err(|e| open_error(&thread_path, "switch to WAL mode", e))?;
                    conn.pragma_update(None, "synchronous", options.durability.pragma())
                        .map_err(|e| open_error(&thread_path, "set the durability (synchronous)", e))?;
                    schema::migrate(&mut conn, &thread_path, now_ms())
                })();
                let _ = tx.send(outcome);
            })
            .map_err(|source| OpenError::Thread {
                path: path.clone(),
                source,
            })?;
        rx.await.map_err(|_| OpenError::WorkerStopped { path })?
    }

    /// The database's path (`:memory:` for an in-memory one).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability commits are made with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// How many writes the writer thread has run, in how many
    /// transactions (see [`SqliteOptions::group_commit`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fielding_sqlite::OpenError> {
    /// let store = fielding_sqlite::SqliteStore::open_in_memory().await?;
    /// assert_eq!(store.write_stats().writes, 0);
    /// # Ok(()) }
    /// ```
    pub fn write_stats(&self) -> WriteStats {
        use std::sync::atomic::Ordering;
        WriteStats {
            writes: self.counters.writes.load(Ordering::Relaxed),
            transactions: self.counters.transactions.load(Ordering::Relaxed),
        }
    }

    /// What the checkpoint thread has done so far (all zero for an
    /// in-memory or read-only store, which have none).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fielding_sqlite::OpenError> {
    /// let store = fielding_sqlite::SqliteStore::open_in_memory().await?;
    /// assert_eq!(store.checkpoint_stats().passive, 0);
    /// # Ok(()) }
    /// ```
    pub fn checkpoint_stats(&self) -> CheckpointStats {
        use std::sync::atomic::Ordering;
        let c = &self.checkpoints;
        CheckpointStats {
            passive: c.passive.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            log_pages: c.log_pages.load(Ordering::Relaxed),
        }
    }

    /// Closes the store and waits until every worker thread has finished
    /// its queued jobs and closed its connection (so the file can be
    /// reopened, copied or removed). Dropping the store does the same
    /// without waiting.
    pub async fn close(self) {
        let SqliteStore {
            writer,
            readers,
            mut exited,
            ..
        } = self;
        drop(writer);
        drop(readers);
        // `None` once every thread's `alive` sender is gone.
        while exited.recv().await.is_some() {}
    }

    /// Sends a write to the writer thread and awaits its answer.
    async fn write(&self, kind: WriteKind) -> Result<Written, StoreError> {
        let op = kind.op();
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriterJob::Write(Write { kind, reply }))
            .map_err(|_| stopped(op))?;
        answer.await.map_err(|_| stopped(op))?
    }

    /// Runs `work` on the writer thread's connection, between write
    /// transactions, and awaits its answer.
    async fn read_on_writer<R: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn: &mut Connection| {
            let _ = tx.send(work(conn));
        });
        self.writer.send(WriterJob::Run(job)).map_err(|_| stopped(op))?;
        rx.await.map_err(|_| stopped(op))?
    }

    /// Runs `work` on a reader thread (on the writer thread when there are
    /// none) and awaits its answer.
    async fn read<R: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn: &mut Connection| {
            let _ = tx.send(work(conn));
        });
        let sent = match &self.readers {
            Some(readers) => readers.send(job).is_ok(),
            None => self.writer.send(WriterJob::Run(job)).is_ok(),
        };
        if !sent {
            return Err(stopped(op));
        }
        rx.await.map_err(|_| stopped(op))?
    }
}

#[async_trait]
impl FieldingStore for SqliteStore {
    async fn insert(&self, run: &FieldingRun, change: &ChangeRecord) -> Result<(), StoreError> {
        self.write(WriteKind::Insert {
            run: run.clone(),
            change: change.clone(),
        })
        .await
        .and_then(|written| expect_done("insert", written))
    }

    async fn get(&self, key: &RunKey) -> Result<Option<FieldingRun>, StoreError> {
        let key = *key;
        self.read("get", move |conn| sql::get(conn, &key)).await
    }

    async fn find_by_target_group(&self, scope: &Scope) -> Result<Option<FieldingRun>, StoreError> {
        let scope = *scope;
        self.read("find_by_target_group", move |conn| sql::find_by_scope(conn, &scope))
            .await
    }

    async fn compare_and_swap(
        &self,
        expected: Version,
        run: &FieldingRun,
        change: &ChangeRecord,
    ) -> Result<(), StoreError> {
        self.write(WriteKind::CompareAndSwap {
            expected,
            run: run.clone(),
            change: change.clone(),
        })
        .await
        .and_then(|written| expect_done("compare_and_swap", written))
    }

    /// The default's steps (read, `decide` on the caller's task, then a
    /// compare-and-swap), with the read made on the writer thread: the
    /// write goes there next anyway, and a busy writer picks both up
    /// without waking another thread. `decide` never leaves the caller's
    /// task, so nothing borrowed crosses a thread. A concurrent writer can
    /// still win between the read and the write (a `VersionConflict`), as
    /// with the default.
    async fn update(&self, key: &RunKey, decide: Decide<'_>) -> Result<UpdateOutcome, StoreError> {
        let read_key = *key;
        let Some(current) = self
            .read_on_writer("update", move |conn| sql::get(conn, &read_key))
            .await?
        else {
            return Ok(UpdateOutcome::NotFound);
        };
        match decide(&current) {
            Update::Skip => Ok(UpdateOutcome::Skipped),
            Update::Write { expected, run, change } => {
                if run.key() != *key {
                    return Err(StoreError::Backend {
                        message: format!("sqlite update: decide asked to write {} in place of {key}", run.key()),
                        retryable: false,
                        source: None,
                    });
                }
                let written = self.write(WriteKind::CompareAndSwap { expected, run, change }).await?;
                expect_done("update", written)?;
                Ok(UpdateOutcome::Written)
            }
        }
    }

    async fn changes(&self, key: &RunKey) -> Result<Vec<ChangeRecord>, StoreError> {
        let key = *key;
        self.read("changes", move |conn| sql::changes(conn, &key)).await
    }

    /// One write on the writer thread: an `INSERT ... ON CONFLICT
    /// (account_id, idempotency_key) DO NOTHING` and, when it inserted
    /// nothing, the job holding the key, read in the same transaction.
    /// Writes are serialized (one writer thread, `BEGIN IMMEDIATE` across
    /// processes), so of concurrent calls with one key exactly one inserts.
    async fn create_job(&self, job: &FieldingRunJob) -> Result<JobCreated, StoreError> {
        match self.write(WriteKind::CreateJob { job: job.clone() }).await? {
            Written::Job(created) => Ok(created),
            other => Err(mismatched("create_job", &other)),
        }
    }

    async fn get_job(&self, scope: &Scope, id: &JobId) -> Result<Option<FieldingRunJob>, StoreError> {
        let (scope, id) = (*scope, *id);
        self.read("get_job", move |conn| jobs::get_job(conn, &scope, &id)).await
    }

    /// One write on the writer thread: `UPDATE ... WHERE id AND scope AND
    /// status = 'Processing'`, then the job as it stands, in the same
    /// transaction.
    async fn finish_job(
        &self,
        scope: &Scope,
        id: &JobId,
        outcome: &JobOutcome,
    ) -> Result<Option<FieldingRunJob>, StoreError> {
        let kind = WriteKind::FinishJob {
            scope: *scope,
            id: *id,
            outcome: outcome.clone(),
        };
        match self.write(kind).await? {
            Written::Finished(job) => Ok(job),
            other => Err(mismatched("finish_job", &other)),
        }
    }
}

/// The answer of `insert` and `compare_and_swap`.
fn expect_done(op: &'static str, written: Written) -> Result<(), StoreError> {
    match written {
        Written::Done => Ok(()),
        other => Err(mismatched(op, &other)),
    }
}

/// The writer answered a write with another write's kind of answer (a bug,
/// reported rather than panicking).
fn mismatched(op: &'static str, written: &Written) -> StoreError {
    StoreError::Backend {
        message: format!("sqlite {op}: the writer thread gave an unexpected answer {written:?}"),
        retryable: false,
        source: None,
    }
}
