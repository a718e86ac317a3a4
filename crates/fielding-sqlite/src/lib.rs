//! # fielding-sqlite
//!
//! A [`FieldingStore`](fielding_core::FieldingStore) in a SQLite database:
//! the embedded default for a team that runs one server, or that wants a
//! real database in its tests without running a server. SQLite is compiled
//! in (`rusqlite` with `bundled`), so no system library is needed.
//!
//! ```
//! use std::sync::Arc;
//! use fielding_core::{FieldingService, IfMatch, Scope, UserId};
//! use fielding_sqlite::SqliteStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("fielding.db")).await?; // creates and migrates
//! let service = FieldingService::new(Arc::new(store));
//! let me = UserId::random();
//! let scope = Scope::parse("101", "01BTGNYV6HRNK8K8VKZASZCFP0", "01BTGNYV6HRNK8K8VKZASZCFP1")?;
//! let created = service
//!     .schedule(scope, "2031-01-01T09:00:00Z".parse()?, "2031-01-31T23:59:59Z".parse()?, me)
//!     .await?;
//! let live = service
//!     .launch_now(&created.run.key(), &IfMatch::parse(&created.etag.to_string())?, me)
//!     .await?;
//! assert_eq!(live.etag.to_string(), "\"2\"");
//! # Ok(()) }
//! ```
//!
//! ## Durability
//!
//! The database runs in WAL (write-ahead log) mode; every write is one
//! `BEGIN IMMEDIATE` transaction holding the run and its change record, so
//! after any crash either both are there or neither is. What a
//! *acknowledged* write survives is chosen with [`Durability`]:
//!
//! | mode | SQLite | survives a process crash (kill -9, panic, OOM) | survives power loss / OS crash |
//! |---|---|---|---|
//! | [`Durability::Full`] (default) | `synchronous = FULL`: the WAL is `fsync`ed at every commit | yes | yes |
//! | [`Durability::Normal`] | `synchronous = NORMAL`: `fsync` only at checkpoints | yes | the last commits may be lost; the database stays consistent |
//!
//! (Both assume a disk that honours `fsync`.) `Normal` is the right choice
//! when the data can be recreated or a few seconds of lost writes after a
//! power cut are acceptable; `Full` otherwise.
//!
//! ## Threads
//!
//! SQLite calls block, so none of them runs on the caller's runtime: one
//! writer thread owns the read-write connection and runs every write; two
//! reader threads (configurable) own read-only connections and, thanks to
//! WAL, read while the writer writes. The async methods send a task over a
//! channel and await the answer on a `tokio::sync::oneshot`. Writes from
//! several processes on one file serialize on SQLite's lock, waiting up to
//! the busy timeout; past it they fail with a *retryable*
//! [`StoreError::Backend`](fielding_core::StoreError).
//!
//! A fourth thread runs the checkpoints (copying the write-ahead log back
//! into the database file), so no commit waits for one; see
//! [`SqliteOptions::with_checkpoint_interval`] and [`SqliteStore::checkpoint_stats`].
//!
//! Writes queued at the same moment are committed together (**group
//! commit**): one transaction, one commit (one `fsync` with
//! [`Durability::Full`]), each write still all-or-nothing and answered only
//! after the commit. See [`SqliteOptions::with_group_commit`].
//!
//! `update` (the service's read-modify-write) keeps the trait's default
//! steps: a read (on the writer thread's connection, before the writes of
//! its group), the decision on the caller's task, then a compare-and-swap.
//! Running the caller's borrowed `decide` closure on the writer thread
//! would need an unsafe lifetime extension that a dropped (cancelled)
//! future makes unsound, and holding the write transaction open across a
//! round trip to the caller would serialize every writer behind the
//! slowest caller. See `docs/sqlite.md`.
//!
//! ## Schema and migrations
//!
//! Tables `fielding_runs` (unique on account, project and target group),
//! `change_records` (keyed by run id and version; by account and feed
//! position since version 5) and, since schema
//! version 2, `fielding_run_jobs` (creation jobs, unique on account and
//! idempotency key; since version 3 with their finish time and an index on
//! it, for `expire_jobs`), since version 4, `fielding_bulk_jobs` and
//! `fielding_bulk_job_items` (bulk jobs, their claims and their items'
//! outcomes) and, since version 5, the change feed's columns and tables
//! (see below), created by
//! embedded, numbered migrations recorded in `fielding_schema_migrations`.
//! [`SqliteStore::open`] migrates; with [`SqliteOptions::with_migrate`]`(false)`
//! the store opens without migrating, refuses every operation while its
//! schema is outdated, and [`SqliteStore::migrate`] does it as an explicit
//! step. Both are idempotent and safe when two processes start at once. A database whose schema is newer than [`SCHEMA_VERSION`] is refused
//! with [`OpenError::SchemaTooNew`]. Timestamps are stored as integer
//! milliseconds since the Unix epoch (exact, and ordered as integers),
//! versions as 64-bit integers.
//!
//! ## Change feed
//!
//! Since schema version 5, `change_records` is keyed by account and feed
//! position (`(n, 0)`, `n` from a one-row counter taken inside each write
//! transaction: SQLite's single writer makes numbering order commit order),
//! with `(run_id, version)` unique through an index. `feed` reads one range
//! of that key and the counter in one read transaction; `prune_changes`
//! deletes oldest first and raises the account's horizon in the same
//! transaction; the writer thread wakes the store's
//! [`ChangeNotifier`](fielding_core::ChangeNotifier) after each commit
//! that appended records (another process's writes are found by polling).
//! See `docs/sqlite.md`.
//!
//! ## Errors
//!
//! Opening fails with an [`OpenError`] naming the file. Store operations
//! classify SQLite's result codes, never its messages: a unique violation on
//! the scope (`SQLITE_CONSTRAINT_UNIQUE`) is `AlreadyExists`; a conflict is
//! told by the rows the conditional `UPDATE` touched; `SQLITE_BUSY` and
//! `SQLITE_LOCKED` are retryable backend errors; everything else (disk
//! full, I/O error, read-only database, corruption) is a permanent backend
//! error, and the transaction was rolled back.
#![warn(missing_docs)]

mod bulk;
mod checkpoint;
mod codec;
mod error;
mod feed;
mod jobs;
mod migrations;
mod open;
mod options;
mod runs;
mod savepoint;
mod snapshot;
mod sql;
mod stats;
mod store;
mod writer;

pub use error::OpenError;
pub use fielding_core::MigrationReport;
pub use migrations::SCHEMA_VERSION;
pub use options::{Durability, SqliteOptions};
pub use rusqlite;
pub use stats::{CheckpointStats, WriteStats};
pub use store::SqliteStore;
