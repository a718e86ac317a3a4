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

mod check;
mod contract;
mod jobs;
mod races;
mod update;

pub use contract::{
    change_records_one_per_version_in_order_without_gaps,
    compare_and_swap_at_the_current_version_bumps_it_by_exactly_one,
    compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31, compare_and_swap_on_a_missing_run_is_not_found,
    compare_and_swap_with_a_stale_version_is_refused_and_changes_nothing,
    concurrent_inserts_for_one_target_group_have_exactly_one_winner,
    insert_refuses_a_second_run_for_the_same_target_group, round_trip_preserves_every_field,
    scope_isolation_compare_and_swap_through_another_scope_is_not_found,
    scope_isolation_hides_the_run_from_every_other_scope,
};
pub use jobs::{
    concurrent_job_creations_with_one_key_have_exactly_one_winner, finish_job_records_the_first_outcome_only,
    job_idempotency_key_is_unique_per_account, job_round_trip_preserves_every_field,
    job_scope_isolation_hides_the_job_from_every_other_scope,
};
pub use races::{
    change_records_are_atomic_with_the_write_they_describe, race_concurrent_increments_on_one_run_lose_no_update,
    race_concurrent_updates_on_one_run_lose_no_update, race_writers_spread_over_many_runs_do_not_cross_talk,
    WRITES_PER_WRITER,
};
pub use update::{
    update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing,
    update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide,
    update_write_at_the_read_version_bumps_it_by_exactly_one,
    update_write_with_a_stale_version_is_refused_and_changes_nothing,
};

pub use crate::linearizability::linearizable_interleaved_read_then_write_cycles_match_the_model;
