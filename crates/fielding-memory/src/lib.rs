//! # fielding-memory
//!
//! An in-memory [`FieldingStore`]: the store for your test suites, for
//! examples, and for a single process that can afford to lose its data on
//! restart.
//!
//! * **Strict.** Every check-and-write happens under one lock, so the store
//!   keeps the exact promises of the trait: two writers on one version, one
//!   winner; a write and its change record, both or neither.
//! * **Shared.** `Clone` gives another handle to the same data, so a test
//!   can hand one clone to the service and inspect the other.
//! * **Fast.** O(1) hash lookups, no I/O; a million runs fit comfortably.
//! * **Bounded jobs, if asked.** `expire_jobs` removes finished creation
//!   jobs like every store's; [`MemoryStore::with_job_retention`] also
//!   does it by itself on job writes, so a long-running process holds about
//!   one retention period of jobs (see `docs/jobs.md`).
//! * **Made for tests.** [`MemoryStore::seed`] puts a run in place in any
//!   state without walking the lifecycle. The builders to make those runs
//!   (`fielding_testkit::fixtures`) and fault injection around any store
//!   (`fielding_testkit::FaultyStore`, to test your own 412 and 500
//!   handling) live in `fielding-testkit`, as a dev-dependency of your
//!   tests.
//!
//! ```
//! use std::sync::Arc;
//! use fielding_core::{FieldingService, IfMatch, Status, UserId};
//! use fielding_memory::MemoryStore;
//! use fielding_testkit::fixtures;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let run = fixtures::run().with_status(Status::Live).with_version(7).build();
//! store.seed(run.clone())?;
//!
//! let service = FieldingService::new(Arc::new(store.clone()));
//! let me = UserId::random();
//! let stale = service.pause(&run.key(), &IfMatch::parse("\"6\"")?, me).await.unwrap_err();
//! assert_eq!(stale.code(), "precondition_failed_error");
//! let paused = service.pause(&run.key(), &IfMatch::parse("\"7\"")?, me).await?;
//! assert_eq!(paused.etag.to_string(), "\"8\"");
//! assert_eq!(store.change_records(&run.key()).last().map(|c| c.version.get()), Some(8));
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod bulk;
mod log;
mod store;

pub use store::{MemoryStore, SeedError};

#[cfg(doc)]
use fielding_core::FieldingStore;
