//! How to open a store: [`SqliteOptions`] and [`Durability`].

use std::time::Duration;

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
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

/// How to open a [`SqliteStore`](crate::SqliteStore). Start from [`SqliteOptions::default`].
///
/// ```
/// use std::time::Duration;
/// use fielding_sqlite::{Durability, SqliteOptions};
/// let options = SqliteOptions::default()
///     .with_durability(Durability::Normal)
///     .with_busy_timeout(Duration::from_secs(1))
///     .with_readers(4);
/// assert_eq!(options.durability(), Durability::Normal);
/// ```
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub(crate) durability: Durability,
    pub(crate) busy_timeout: Duration,
    pub(crate) readers: usize,
    pub(crate) read_only: bool,
    pub(crate) migrate: bool,
    pub(crate) max_page_count: Option<u64>,
    pub(crate) group_commit: bool,
    pub(crate) cache_kib: u32,
    pub(crate) mmap_bytes: u64,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) wal_restart_pages: u32,
    pub(crate) wal_truncate_after: Duration,
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
            wal_truncate_after: Duration::from_secs(1),
        }
    }
}

impl SqliteOptions {
    /// The durability of commits (default [`Durability::Full`]).
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long a statement waits for another connection's lock before it
    /// fails with a retryable [`StoreError::Backend`](fielding_core::StoreError::Backend) (default 5 s).
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How many reader threads, each with its own read-only connection
    /// (default 2). With 0, reads run on the writer thread.
    pub fn with_readers(mut self, readers: usize) -> Self {
        self.readers = readers;
        self
    }

    /// Opens the database read-only (`SQLITE_OPEN_READONLY`, default
    /// `false`): reads work, every write fails with a permanent
    /// [`StoreError::Backend`](fielding_core::StoreError::Backend). The schema must already be current.
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Whether opening migrates the schema first (default `true`). With
    /// `false`, migrating is an explicit step: the store opens, but while
    /// its schema is older than [`SCHEMA_VERSION`](crate::SCHEMA_VERSION)
    /// every operation is refused with a permanent
    /// [`StoreError::Backend`](fielding_core::StoreError::Backend) until
    /// [`SqliteStore::migrate`](crate::SqliteStore::migrate) has run. A
    /// read-only store cannot migrate, so opening one on an outdated schema
    /// fails with [`OpenError::SchemaOutdated`](crate::OpenError::SchemaOutdated).
    /// A schema newer than this library is refused either way; a private
    /// in-memory database, which starts empty, is always migrated.
    pub fn with_migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Caps the database at `pages` pages (`PRAGMA max_page_count`, pages
    /// are 4 KiB): a write that would grow it further fails with
    /// `SQLITE_FULL` and is rolled back, like on a full disk. Default: no
    /// cap beyond SQLite's own.
    pub fn with_max_page_count(mut self, pages: u64) -> Self {
        self.max_page_count = Some(pages);
        self
    }

    /// Whether writes queued at the same moment are committed together, in
    /// one transaction with a savepoint each (default `true`). Each write
    /// stays all-or-nothing and is answered only after the commit; with
    /// [`Durability::Full`] a group costs one `fsync` instead of one per
    /// write. See `docs/sqlite.md`.
    pub fn with_group_commit(mut self, enabled: bool) -> Self {
        self.group_commit = enabled;
        self
    }

    /// The page cache of each connection, in KiB (`PRAGMA cache_size`,
    /// default 2 MiB, about SQLite's own). Reads of pages not in the cache
    /// come from the memory map ([`SqliteOptions::with_mmap_bytes`]), so a larger
    /// cache mostly duplicates pages the map already serves (see
    /// `docs/sqlite.md` for what was measured).
    pub fn with_cache_kib(mut self, kib: u32) -> Self {
        self.cache_kib = kib;
        self
    }

    /// How much of the database file each connection may read through a
    /// memory map (`PRAGMA mmap_size`, default 256 MiB; 0 turns it off).
    pub fn with_mmap_bytes(mut self, bytes: u64) -> Self {
        self.mmap_bytes = bytes;
        self
    }

    /// How often, at most, the checkpoint thread copies the write-ahead log
    /// back into the database file while commits keep coming (default
    /// 50 ms). Checkpoints run on a thread of their own, never inside a
    /// commit (see the crate docs).
    pub fn with_checkpoint_interval(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = interval;
        self
    }

    /// The log length, in pages, past which the checkpoint thread makes the
    /// log start over: it pauses the writer between two transactions and
    /// runs a `RESTART` checkpoint (copying what the last passive
    /// checkpoint left, a few milliseconds under load). A `-wal` file that
    /// outgrew this length is cut back to it when the log starts over
    /// (`PRAGMA journal_size_limit`). Default 10,000 pages (39 MiB with
    /// 4 KiB pages): with it the `-wal` file stays under 64 MiB, see
    /// `docs/sqlite.md`.
    pub fn with_wal_restart_pages(mut self, pages: u32) -> Self {
        self.wal_restart_pages = pages;
        self
    }

    /// How long without a commit before the checkpoint thread truncates the
    /// `-wal` file to zero bytes (a `TRUNCATE` checkpoint; default 1 s).
    /// Under steady traffic the file keeps its size and is reused from the
    /// start each time the log restarts.
    pub fn with_wal_truncate_after(mut self, quiet: Duration) -> Self {
        self.wal_truncate_after = quiet;
        self
    }

    /// The configured durability.
    pub fn durability(&self) -> Durability {
        self.durability
    }
}
