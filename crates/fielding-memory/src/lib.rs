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
//! * **Made for tests.** [`fixtures`] builds runs in any state without
//!   walking the lifecycle, [`MemoryStore::seed`] puts them in place, and
//!   [`Faults`] makes the next operations fail so you can test your own
//!   412 and 500 handling.
//!
//! ```
//! use std::sync::Arc;
//! use fielding_core::{FieldingService, IfMatch, Status, UserId};
//! use fielding_memory::{fixtures, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let run = fixtures::run().status(Status::Live).version(7).build();
//! store.seed(run.clone())?;
//!
//! let service = FieldingService::new(Arc::new(store.clone()));
//! let me = UserId::random();
//! let stale = service.pause(&run.key(), &IfMatch::parse("\"6\"")?, me).await.unwrap_err();
//! assert_eq!(stale.http_status(), 412);
//! let paused = service.pause(&run.key(), &IfMatch::parse("\"7\"")?, me).await?;
//! assert_eq!(paused.etag.to_string(), "\"8\"");
//! assert_eq!(store.change_records(&run.key()).last().map(|c| c.version.get()), Some(8));
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod faults;
pub mod fixtures;
mod log;
mod store;

pub use faults::{Fault, Faults};
pub use store::{MemoryStore, SeedError};
