//! # fielding-postgres
//!
//! A [`FieldingStore`](fielding_core::FieldingStore) on PostgreSQL, for
//! when one server is not enough: run as many instances of your service as
//! you like on one database, each with its own connection pool, and every
//! promise of the store contract still holds across all of them: two
//! writers on one version (in one process or in two), exactly one wins; a
//! change and its change record, both or neither; one run per target group.
//!
//! Built on [`sqlx`] (runtime queries, no build-time database), so you can
//! hand in the [`sqlx::PgPool`] your application already has
//! ([`PgStore::new`]) or let the store connect one ([`PgStore::connect`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use fielding_core::{FieldingService, Scope, Timestamp, UserId};
//! use fielding_postgres::PgStore;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgStore::connect("postgres://postgres@127.0.0.1:5432/postgres", "fielding").await?;
//! store.migrate().await?; // explicit; safe when many instances start at once
//! let service = FieldingService::new(Arc::new(store));
//!
//! let scope = Scope::parse("101", "01BTGNYV6HRNK8K8VKZASZCFP0", "01BTGNYV6HRNK8K8VKZASZCFP1")?;
//! let start: Timestamp = "2031-01-01T09:00:00Z".parse()?;
//! let end: Timestamp = "2031-01-31T23:59:59Z".parse()?;
//! let created = service.schedule(scope, start, end, UserId::random()).await?;
//! println!("{} at ETag {}", created.run.id, created.etag);
//! # Ok(()) }
//! ```
//!
//! ## The scale-out model
//!
//! Instances share nothing but the database. There is no cache, no
//! in-process lock and no leader: every check that matters is made by
//! PostgreSQL, inside one statement, so it holds no matter how many pools
//! or processes are writing.
//!
//! * **Compare-and-swap** is one statement: a conditional
//!   `UPDATE fielding_runs ... WHERE id AND account AND project AND target
//!   group AND version = $expected`, and, in a data-modifying CTE of the
//!   same statement, the `INSERT` of the change record for the row the
//!   update touched. One statement is one (implicit) transaction: the
//!   version and its record commit together or not at all. One round trip.
//! * **Insert** is one statement too (run and first record), and the
//!   unique key on `(account_id, project_id, target_group_id)` makes one of
//!   two racing inserts fail with SQLSTATE 23505, reported as
//!   [`StoreError::AlreadyExists`](fielding_core::StoreError::AlreadyExists).
//! * **Creation jobs**: `create_job` is an `INSERT ... ON CONFLICT
//!   (account_id, idempotency_key) DO NOTHING`, which waits for a racing
//!   inserter of the same key, then (when it inserted nothing) a read of the
//!   job holding the key; `finish_job` a conditional `UPDATE ... WHERE
//!   status = 'Processing'`, so the first outcome wins; `expire_jobs` one
//!   `DELETE` of the oldest finished jobs (`FOR UPDATE SKIP LOCKED`, so
//!   instances sweeping at once share the work).
//! * **Bulk jobs**: a runner claims a job with one `UPDATE ... WHERE id =
//!   (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)`, which sets a fresh
//!   fencing token and a lease; every later write of the runner matches
//!   that token, so once another instance has taken the job over the old
//!   holder writes nothing. A batch of items is one transaction of five
//!   round trips whatever its size (read the outcomes and runs, lock the
//!   job, one `UNNEST` statement writing runs, change records and outcomes
//!   with a compare-and-swap on each run).
//! * **Reads** are single statements against the primary: they see the
//!   latest committed write. Do not point a store at a lagging replica.
//! * **The change feed**: each change record's position is the id of the
//!   transaction that wrote it and a sequence number, `(txid, seq)`. A
//!   read returns only records below its snapshot's `xmin` (every
//!   transaction below it has ended), in one statement, so a record that
//!   commits later never sorts before what a reader has read. Watchers are
//!   woken at once in this process and, through `LISTEN`/`NOTIFY` from
//!   background tasks on connections of their own, in the others
//!   ([`PgStore::with_feed_listener`]). A transaction left open anywhere in
//!   the cluster delays the feed (never loses records) until it ends.
//!
//! ## Why READ COMMITTED is enough
//!
//! The store works at PostgreSQL's default isolation level; it does not
//! need `REPEATABLE READ` or `SERIALIZABLE`, and so never sees
//! serialization failures in normal operation. The reason is how
//! PostgreSQL runs an `UPDATE` under READ COMMITTED: when the row it wants
//! is locked by a concurrent transaction, it waits for that transaction to
//! end, then re-evaluates its `WHERE` clause against the row as that
//! transaction left it ("EvalPlanQual"). Two writers holding version 7:
//! the first updates the row to 8 and holds its lock until commit; the
//! second waits, then re-checks `version = 7` against the committed
//! version 8, finds no match, and updates nothing. Its statement inserts
//! no change record either, because the record is inserted only for rows
//! the update returned. The store then reads the current version (8) and
//! reports `VersionConflict { expected: 7, current: 8 }`. No lost update,
//! no duplicate version (the change records' primary key `(run_id,
//! version)` would refuse one anyway), no record without its version.
//!
//! ## Errors
//!
//! Driver errors are classified by SQLSTATE and error variant, never by
//! message text (see [`is_transient`]). Serialization failures, deadlocks,
//! lost connections (`08xxx`, I/O errors), a terminated backend (`57P01`,
//! what `pg_terminate_backend` sends) and pool time-outs come back as
//! [`StoreError::Backend`](fielding_core::StoreError::Backend) with
//! `retryable: true`; nothing was written (the statement's transaction
//! rolled back) and the pool replaces the broken connection on its own.
//!
//! ## Connections
//!
//! Every operation runs on one pooled connection. sqlx 0.8 pings each
//! connection when it goes back to the pool, and on a small pool the next
//! checkout waits for that round trip; so after a clean operation the store
//! keeps ("parks") its connection for 2 ms, and an operation starting within
//! that time takes it directly. A reaper task returns parked connections to
//! the pool after 2 ms (at most 4 per store), so the pool's other users wait
//! at most that long and `PgPool::close` is not held up. After a backend
//! error the connection goes straight back to the pool, which checks it.
//! This is what keeps the adapter as fast as hand-written SQL on a bare
//! connection (figures in `docs/postgres.md`). [`PgStore::pool_options`]
//! are the pool settings the store recommends.
//!
//! ## Schema and migrations
//!
//! The tables live in a schema you name ([`SchemaName`]), so staging,
//! review apps and tests can share one database. [`PgStore::migrate`]
//! creates it if needed and applies the embedded migrations (recorded in
//! `<schema>.fielding_schema_migrations`) in one transaction holding an
//! advisory lock derived from the schema name; a database migrated by a
//! newer release is refused ([`MigrateError::SchemaTooNew`]).
//!
//! Timestamps are `timestamptz` (microsecond precision), so the library's
//! whole-millisecond timestamps round-trip exactly; versions are `bigint`
//! (up to `i64::MAX`), account ids `integer`.
//!
//! ## Testing
//!
//! [`testing`] gives your own test suites a throwaway, migrated schema on a
//! real PostgreSQL ([`testing::TestSchema`]), dropped when the test ends,
//! with the rule for when a test may skip because no server is running.
#![warn(missing_docs)]

mod bulk;
mod codec;
mod error;
mod feed;
mod jobs;
mod migrations;
mod open;
mod options;
mod parking;
mod runs;
mod schema_name;
mod sql;
mod store;
pub mod testing;
mod wakeups;

pub use error::{is_transient, ConnectError, MigrateError};
pub use fielding_core::MigrationReport;
pub use migrations::SCHEMA_VERSION;
pub use schema_name::{InvalidSchemaName, SchemaName};
pub use sqlx;
pub use store::PgStore;
