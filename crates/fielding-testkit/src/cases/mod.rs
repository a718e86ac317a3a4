//! Every case of the suite as a public function, so you can also call one
//! on its own.
//!
//! Each case but the last takes a fresh store and the [`Capabilities`];
//! the linearizability case takes the factory, since it needs a fresh store
//! per generated schedule. Each returns `Ok(())` or the [`CaseFailure`]
//! naming the broken promise and the values it saw. Each function's name is
//! also the name of the test [`conformance_tests!`](crate::conformance_tests)
//! generates for it.
//!
//! ```
//! use std::sync::Arc;
//! use fielding_memory::MemoryStore;
//! use fielding_testkit::{cases, Capabilities};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), fielding_testkit::CaseFailure> {
//! let store = Arc::new(MemoryStore::new());
//! cases::compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31(store, Capabilities::full()).await?;
//! # Ok(()) }
//! ```
//!
//! [`Capabilities`]: crate::Capabilities
//! [`CaseFailure`]: crate::CaseFailure

mod bulk;
mod bulk_apply;
mod bulk_claims;
mod bulk_expiry;
mod check;
mod contract;
mod expiry;
mod feed;
mod feed_checkpoints;
mod feed_prune;
mod feed_race;
mod jobs;
mod races;
mod update;

// The functions of the one list of cases (see `case_list.rs`).
use crate::linearizability;
crate::__with_every_case! { reexport }
pub use feed_race::FEED_RACE_WRITES;
pub use races::{EXTRA_ATOMICITY_WRITES, WRITES_PER_WRITER};
