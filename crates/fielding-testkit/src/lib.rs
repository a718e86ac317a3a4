//! # fielding-testkit
//!
//! One conformance suite for every [`FieldingStore`]: ours and yours; and
//! the test support every crate shares: [`fixtures`], [`FaultyStore`], and
//! [`observe`] (captures of the spans and metrics a test's code records).
//!
//! The storage trait is only as good as the promise every adapter keeps.
//! Its contract (in the docs of [`FieldingStore`]) is short: scope is part
//! of the address, one run per target group, compare-and-swap is atomic, a
//! write and its change record are one, round trips are exact, `update` is
//! a read-modify-write with compare-and-swap semantics, errors are
//! classified. Each promise is easy to break quietly: an in-memory store
//! that checks the version and writes under two separate locks loses
//! concurrent updates; a conflict check that compares versions as text
//! breaks at version 10; a 32-bit column breaks at 2^31. This crate turns
//! every promise into test cases, including races with real tasks and
//! generated interleavings checked against a model, so a store is correct
//! when it passes, and a broken one says which promise it broke.
//!
//! # Running it against your adapter
//!
//! Add the kit as a dev-dependency (it brings the tokio and proptest it
//! needs; you need nothing else):
//!
//! ```toml
//! [dev-dependencies]
//! fielding-testkit = { path = "../fielding-testkit" }
//! ```
//!
//! and one file, `tests/conformance.rs`, that says how to make a fresh,
//! empty store:
//!
//! ```
//! use std::sync::Arc;
//! use fielding_memory::MemoryStore; // your store
//!
//! fielding_testkit::conformance_tests!(|| async { Arc::new(MemoryStore::new()) });
//! # fn main() {}
//! ```
//!
//! That expands to a module `conformance` with one `#[tokio::test]` per
//! case (multi-threaded runtime, 4 workers), each named after the promise
//! it checks, so
//!
//! ```text
//! cargo test -p <your-adapter> conformance
//! ```
//!
//! runs exactly the kit, and a failure reads like
//!
//! ```text
//! ---- conformance::compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31 stdout ----
//! conformance case `compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31` failed
//!   promise broken: versions past 9, 99, 2^31 and beyond behave the same: ...
//!   seen: compare_and_swap(expected 9) on a run stored at version 10: expected
//!         Err(VersionConflict { expected: 9, current: 10 }), got Ok(())
//! ```
//!
//! The factory is any closure returning a future of `Arc<S>` for any
//! `S: FieldingStore` (`dyn FieldingStore` included); see [`StoreFactory`]
//! for one that holds a connection pool. Every adapter runs the whole kit:
//! `fielding-memory` does, in its `tests/conformance.rs`.
//!
//! If your backend genuinely cannot do something the contract asks for
//! (hold versions up to `i64::MAX`, run eight writers at once, get through
//! contention without a retryable error), say so with [`Capabilities`]
//! instead of deleting assertions:
//!
//! ```
//! # use std::sync::Arc;
//! # use fielding_memory::MemoryStore;
//! fielding_testkit::conformance_tests!(
//!     || async { Arc::new(MemoryStore::new()) },
//!     capabilities = fielding_testkit::Capabilities::full().with_concurrent_writers(4),
//! );
//! # fn main() {}
//! ```
//!
//! # What each group of cases proves
//!
//! | group | cases | proves |
//! |---|---|---|
//! | round trip | `round_trip_preserves_every_field` | every field of a run and its change records comes back identical: ids, account ids up to 2^31-1, each status, versions, timestamps to the millisecond, last change |
//! | one run per target group | `insert_refuses_a_second_run_for_the_same_target_group`, `concurrent_inserts_for_one_target_group_have_exactly_one_winner` | a second insert is `AlreadyExists` naming the scope and leaves no trace; of concurrent inserts exactly one wins |
//! | scope isolation | `scope_isolation_hides_the_run_from_every_other_scope`, `scope_isolation_compare_and_swap_through_another_scope_is_not_found` | through a scope differing in account, project *or* target group the run cannot be read, found, listed or updated, and does not block a run of that scope; a wrong scope is `NotFound`, never a `VersionConflict` that would leak the version |
//! | compare-and-swap | `compare_and_swap_at_the_current_version_bumps_it_by_exactly_one`, `compare_and_swap_with_a_stale_version_is_refused_and_changes_nothing`, `compare_and_swap_on_a_missing_run_is_not_found`, `compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31` | the matching version wins and bumps by one; any other is `VersionConflict` with the version tried and the actual current one, and changes neither run nor records; a missing run is `NotFound`; all of it the same across 9→10, 99→100, 2^31, 2^32, 2^53 and up to `i64::MAX`, against the stale versions that text comparison, truncation and rounding would accept |
//! | change records | `change_records_one_per_version_in_order_without_gaps`, `change_records_are_atomic_with_the_write_they_describe` | one record per version, oldest first, no gaps, none for refused writes; concurrent readers never see a version without its record or a record before its version |
//! | update | `update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide`, `update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing`, `update_write_at_the_read_version_bumps_it_by_exactly_one`, `update_write_with_a_stale_version_is_refused_and_changes_nothing`, `update_now_keeps_every_promise_of_update` | `update` on a missing run, or through a scope differing in account, project or target group, is `NotFound` and never calls `decide`; `decide` is called exactly once, with the run exactly as stored; `Skip` is `Skipped` and changes nothing; a `Write` at the version read is `Written`, bumps by one and reads back as written with exactly one new record; a `Write` at any other version is `VersionConflict` with the version tried and the actual one (also past 2^32), and changes nothing; a store that answers at once (`updates_now`) keeps all of it there too |
//! | races | `race_concurrent_increments_on_one_run_lose_no_update`, `race_writers_spread_over_many_runs_do_not_cross_talk`, `race_concurrent_updates_on_one_run_lose_no_update` | with real tasks on a multi-threaded runtime (pairs of writers interleaving at every await, pairs running in parallel): N writers × M increments end at exactly N·M+1, every success has its own record, every refusal names a newer version, reads see one's own writes; writers spread over runs with overlapping ids never touch each other's runs; the same N·M+1 when every increment is one `update` (so an override that decides and then writes without checking the version in the same atomic step is caught) |
//! | bulk jobs | `bulk_job_round_trip_preserves_every_field_and_item_order`, `bulk_idempotency_key_is_unique_per_account`, `concurrent_bulk_job_creations_with_one_key_have_exactly_one_winner`, `bulk_job_scope_isolation_hides_the_job_from_every_other_account_and_project` | every field and up to 10,000 items round trip in order, with every outcome and status; a key names one bulk job per account (not per project; creation jobs' keys are another namespace), also under concurrency; a job is found and written only through its own account and project |
//! | claims and fencing | `claim_takes_unheld_processing_bulk_jobs_oldest_first_and_respects_leases`, `concurrent_claims_hand_each_bulk_job_to_exactly_one_runner`, `renew_bulk_claim_moves_the_lease_only_for_the_holding_token`, `finish_bulk_job_needs_the_holding_token_and_ends_the_claim` | claims take unheld processing jobs oldest first, leases end at `lease_until <= now`, a claim replaces the token, concurrent claimers get each job once; renew and finish only for the holder; finishing ends the claim for good |
//! | apply | `apply_bulk_items_decides_each_pending_item_once_with_its_run`, `apply_bulk_items_is_all_or_nothing_when_one_write_conflicts`, `apply_bulk_items_by_a_token_that_does_not_hold_the_job_is_claim_lost`, `concurrent_appliers_of_one_job_change_each_run_exactly_once` | `decide` once per pending item with the run of the job's account and project, one change record per write, recorded items answered without a decision, in the order asked; a conflict anywhere writes nothing; a token that does not hold the job is `ClaimLost` and writes nothing; concurrent appliers change each run exactly once |
//! | bulk expiry | `expire_bulk_jobs_removes_old_finished_bulk_jobs_with_their_items_and_keys_in_bounded_batches` | finished strictly before the cutoff, by finish time, never processing, at most `limit`; the job's items and key go with it |
//! | change feed | `feed_lists_every_write_exactly_once_in_commit_order`, `feed_pages_of_any_size_read_the_same_records`, `feed_never_shows_another_accounts_records` | every write (insert, compare-and-swap, `update`, `apply_bulk_items`) appears once, in order, with its scope and record, and refused writes never; pages of any size read the same records, positions strictly increasing, `has_more` exact, `next` never back nor before the last record, the cursor exclusive, `None` and `Some(0.0)` alike; no account sees another's records |
//! | feed race | `feed_race_readers_following_concurrent_writers_miss_nothing_and_see_nothing_twice` | readers following the feed while N writers commit on several runs of one account read, compared with the whole log at the end, 0 skipped, 0 seen twice, each run in version order: the case a store that numbers records when written and shows them when committed (the outbox bug) fails |
//! | retention | `feed_prune_removes_old_records_in_bounded_batches_and_expires_cursors_before_them` | records made strictly before the cutoff go, at most `limit` per call, `changes` keeps the rest; a cursor before a pruned record is `FeedExpired` (account, cursor, horizon), never a silent skip; at or after the horizon it reads on; `None` reads from the horizon; horizons are per account |
//! | checkpoints, wake-ups | `feed_checkpoints_are_kept_per_account_and_consumer`, `feed_change_notifier_wakes_the_subscribers_of_the_written_account` | checkpoints round trip per account and exact consumer name, a save replaces the one before; a store with a notifier wakes the account's subscribers after every kind of write |
//! | linearizability | `linearizable_interleaved_read_then_write_cycles_match_the_model` | proptest schedules of read-then-write cycles, sequential and concurrent steps, checked step by step against a model; a failure shrinks to a minimal schedule (see [`linearizability`]) |
//!
//! Cases use scopes with random ids, so they never see each other's runs
//! (nor each other's feeds: a feed is per account).
//!
//! A store may hold a committed record back before its feed shows it
//! (PostgreSQL does, until older transactions end), so the feed cases read
//! on until a record comes, for up to [`Capabilities::max_feed_lag`] (30 s
//! unless lowered), before calling it missing.
//!
//! What the races can and cannot catch: a lost update whose window contains
//! an `.await` (any adapter that talks to a database between reading and
//! writing) shows up reliably, because writers are paired on one task and
//! interleave at every await. A window of a few instructions inside one
//! synchronous critical section is caught only sometimes, by the pairs that
//! run in parallel; such a store must be right by construction. The same
//! holds for an override of `update`: one that reads, awaits and then writes
//! without `WHERE version = expected` (or a lock held across the three) is
//! caught by `race_concurrent_updates_on_one_run_lose_no_update` even with
//! two writers.
//!
//! # Fixtures and fault injection for your own tests
//!
//! The kit is also the test support of every crate in this workspace, and
//! of yours: [`fixtures`] builds runs in any status and at any version
//! (without walking the lifecycle), scopes and their neighbours, change
//! records and creation jobs; [`FaultyStore`] wraps *any* store and makes
//! its next operations fail on purpose ([`Fault::Storage`],
//! [`Fault::TransientStorage`], [`Fault::Conflict`]), so you can test your
//! own 412 and 500 handling against the memory store, SQLite, PostgreSQL
//! or your adapter alike:
//!
//! ```
//! use std::sync::Arc;
//! use fielding_core::{FieldingService, IfMatch, Status, UserId};
//! use fielding_memory::MemoryStore;
//! use fielding_testkit::{fixtures, Fault, FaultyStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A live run at version 7, put in place directly.
//! let memory = MemoryStore::new();
//! let run = fixtures::run().with_status(Status::Live).with_version(7).build();
//! memory.seed(run.clone())?;
//!
//! // The service writes through the faulty wrapper; keep its faults handle.
//! let store = FaultyStore::new(memory.clone());
//! let faults = store.faults().clone();
//! let service = FieldingService::new(Arc::new(store));
//! let if_match = IfMatch::parse("\"7\"")?;
//!
//! faults.inject(Fault::Conflict, 1); // another writer wins the next write
//! let lost = service.pause(&run.key(), &if_match, UserId::random()).await.unwrap_err();
//! assert_eq!(lost.code(), "precondition_failed_error");
//!
//! faults.inject(Fault::Storage, 1); // the database fails once
//! let failed = service.pause(&run.key(), &if_match, UserId::random()).await.unwrap_err();
//! assert_eq!(failed.code(), "unexpected_internal_error");
//!
//! assert_eq!(memory.run(&run.key()), Some(run.clone()), "nothing was written");
//! let paused = service.pause(&run.key(), &if_match, UserId::random()).await?;
//! assert_eq!(paused.etag.to_string(), "\"8\"");
//! # Ok(()) }
//! ```
//!
//! # Running cases yourself
//!
//! Every case is a public function in [`cases`], returning `Ok(())` or a
//! [`CaseFailure`] (case, promise, values seen). [`run_all`] runs them all
//! and collects a [`SuiteReport`]: that is how the kit's own tests assert
//! that deliberately broken stores fail the cases they should.
//!
//! # Configuration
//!
//! The linearizability case runs [`linearizability::DEFAULT_CASES`]
//! schedules; `PROPTEST_CASES` overrides that, `PROPTEST_RNG_SEED` fixes the
//! seed (a failure prints the one it used) and `PROPTEST_MAX_SHRINK_ITERS`
//! bounds shrinking. Nothing is written to disk.
#![warn(missing_docs)]

mod capabilities;
mod case_list;
pub mod cases;
mod factory;
mod failure;
mod faults;
pub mod fixtures;
mod guarded;
pub mod linearizability;
pub mod observe;
mod sample;
pub mod scenarios;
mod suite;

pub use capabilities::Capabilities;
pub use factory::StoreFactory;
pub use failure::CaseFailure;
pub use faults::{Fault, Faults, FaultyStore};
pub use guarded::Guarded;
pub use suite::{run_all, SuiteReport, CASES};

#[cfg(doc)]
use fielding_core::FieldingStore;

/// Generates the conformance suite for a store: a module `conformance` with
/// one `#[tokio::test]` per case, named like the case (see [`CASES`]).
///
/// The first argument is a [`StoreFactory`], usually a closure returning a
/// future of a fresh, empty `Arc<YourStore>`; it is evaluated once per
/// test, and may refer to anything in scope where the macro is invoked. The
/// optional `capabilities = ...` takes a [`Capabilities`] (default
/// [`Capabilities::full`]).
///
/// ```
/// use std::sync::Arc;
/// use fielding_core::FieldingStore;
/// use fielding_memory::MemoryStore;
///
/// async fn connect() -> Arc<dyn FieldingStore> {
///     Arc::new(MemoryStore::new()) // open your database here
/// }
///
/// fielding_testkit::conformance_tests!(connect);
/// # fn main() {}
/// ```
///
/// Each generated test builds a multi-threaded runtime with 4 workers (the
/// race cases need real parallelism), makes a fresh store and panics with
/// the [`CaseFailure`] if the case fails. The kit re-exports the tokio it
/// uses, so the adapter needs no tokio dev-dependency of its own.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr $(,)?) => {
        $crate::conformance_tests!($factory, capabilities = $crate::Capabilities::full());
    };
    ($factory:expr, capabilities = $capabilities:expr $(,)?) => {
        /// The fielding-testkit conformance suite: one test per case.
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::__private::tokio;

            $crate::__with_every_case! { tests ($factory) ($capabilities) }
        }
    };
}

/// What the generated tests use; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use proptest;
    pub use tokio;

    /// Panics with the failure, so the test output names the promise.
    #[track_caller]
    pub fn report(outcome: Result<(), crate::CaseFailure>) {
        if let Err(failure) = outcome {
            panic!("{failure}");
        }
    }
}
