//! `MemoryStore` against the fielding-testkit conformance suite: every
//! promise of the `FieldingStore` contract, with full capabilities.
//!
//! `cargo test -p fielding-memory conformance` runs exactly these tests.

use std::sync::Arc;

use fielding_memory::MemoryStore;

fielding_testkit::conformance_tests!(|| async { Arc::new(MemoryStore::new()) });
