//! The one list of conformance cases.
//!
//! Every place that needs the cases ([`crate::CASES`], [`crate::run_all`],
//! the re-exports of [`crate::cases`] and the tests
//! [`conformance_tests!`](crate::conformance_tests) generates) is generated
//! from the list in `__with_every_case!`, so a case is added by writing
//! its function and one line here, and cannot be left out of one of them.

/// Hands the list of every case, in the order they run, to
/// `__each_case!` with the arguments given (what to generate). An
/// implementation detail of the kit; not part of the public API.
///
/// Each line is `kind module name;`: `store` cases take a fresh store,
/// `factory` cases the factory (they need a fresh store per schedule);
/// `module` is where the function lives, relative to [`crate::cases`].
#[doc(hidden)]
#[macro_export]
macro_rules! __with_every_case {
    ($($how:tt)*) => {
        $crate::__each_case! { ($($how)*)
            store contract round_trip_preserves_every_field;
            store contract insert_refuses_a_second_run_for_the_same_target_group;
            store contract concurrent_inserts_for_one_target_group_have_exactly_one_winner;
            store contract scope_isolation_hides_the_run_from_every_other_scope;
            store contract scope_isolation_compare_and_swap_through_another_scope_is_not_found;
            store contract compare_and_swap_at_the_current_version_bumps_it_by_exactly_one;
            store contract compare_and_swap_with_a_stale_version_is_refused_and_changes_nothing;
            store contract compare_and_swap_on_a_missing_run_is_not_found;
            store contract compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31;
            store update update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide;
            store update update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing;
            store update update_write_at_the_read_version_bumps_it_by_exactly_one;
            store update update_write_with_a_stale_version_is_refused_and_changes_nothing;
            store update update_now_keeps_every_promise_of_update;
            store contract change_records_one_per_version_in_order_without_gaps;
            store races change_records_are_atomic_with_the_write_they_describe;
            store races race_concurrent_increments_on_one_run_lose_no_update;
            store races race_writers_spread_over_many_runs_do_not_cross_talk;
            store races race_concurrent_updates_on_one_run_lose_no_update;
            store jobs job_round_trip_preserves_every_field;
            store jobs job_idempotency_key_is_unique_per_account;
            store jobs concurrent_job_creations_with_one_key_have_exactly_one_winner;
            store jobs job_scope_isolation_hides_the_job_from_every_other_scope;
            store jobs finish_job_records_the_first_outcome_only;
            store expiry expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches;
            store bulk bulk_job_round_trip_preserves_every_field_and_item_order;
            store bulk bulk_idempotency_key_is_unique_per_account;
            store bulk concurrent_bulk_job_creations_with_one_key_have_exactly_one_winner;
            store bulk bulk_job_scope_isolation_hides_the_job_from_every_other_account_and_project;
            store bulk_claims claim_takes_unheld_processing_bulk_jobs_oldest_first_and_respects_leases;
            store bulk_claims concurrent_claims_hand_each_bulk_job_to_exactly_one_runner;
            store bulk_claims renew_bulk_claim_moves_the_lease_only_for_the_holding_token;
            store bulk_claims finish_bulk_job_needs_the_holding_token_and_ends_the_claim;
            store bulk_apply apply_bulk_items_decides_each_pending_item_once_with_its_run;
            store bulk_apply apply_bulk_items_is_all_or_nothing_when_one_write_conflicts;
            store bulk_apply apply_bulk_items_by_a_token_that_does_not_hold_the_job_is_claim_lost;
            store bulk_apply concurrent_appliers_of_one_job_change_each_run_exactly_once;
            store bulk_expiry expire_bulk_jobs_removes_old_finished_bulk_jobs_with_their_items_and_keys_in_bounded_batches;
            store feed feed_lists_every_write_exactly_once_in_commit_order;
            store feed feed_pages_of_any_size_read_the_same_records;
            store feed feed_never_shows_another_accounts_records;
            store feed feed_refuses_a_cursor_it_never_handed_out;
            store feed_race feed_race_readers_following_concurrent_writers_miss_nothing_and_see_nothing_twice;
            store feed_prune feed_prune_removes_old_records_in_bounded_batches_and_expires_cursors_before_them;
            store feed_checkpoints feed_checkpoints_are_kept_per_account_and_consumer;
            store feed_checkpoints feed_change_notifier_wakes_the_subscribers_of_the_written_account;
            factory linearizability linearizable_interleaved_read_then_write_cycles_match_the_model;
        }
    };
}

/// Generates one thing from the list of cases: `(names)` an array of their
/// names, `(reexport)` the `pub use` of each function in `cases`, `(tests
/// (factory) (capabilities))` one `#[tokio::test]` per case, `(run (factory)
/// (capabilities) (report))` the statements of `run_all`. An
/// implementation detail of the kit.
#[doc(hidden)]
#[macro_export]
macro_rules! __each_case {
    ((names) $($kind:ident $module:ident $name:ident;)*) => {
        [$(stringify!($name)),*]
    };
    ((reexport) $($kind:ident $module:ident $name:ident;)*) => {
        $(pub use self::$module::$name;)*
    };
    ((tests ($factory:expr) ($capabilities:expr)) $($kind:ident $module:ident $name:ident;)*) => {
        $($crate::__case_test! { $kind $name ($factory) ($capabilities) })*
    };
    ((run ($factory:ident) ($capabilities:ident) ($report:ident)) $($kind:ident $module:ident $name:ident;)*) => {
        $($crate::__case_run! { $kind $name ($factory) ($capabilities) ($report) })*
    };
}

/// One generated test; an implementation detail of
/// [`conformance_tests!`](crate::conformance_tests).
#[doc(hidden)]
#[macro_export]
macro_rules! __case_test {
    (store $name:ident ($factory:expr) ($capabilities:expr)) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let factory = $factory;
            let store = $crate::StoreFactory::fresh_store(&factory).await;
            $crate::__private::report($crate::cases::$name(store, $capabilities).await);
        }
    };
    (factory $name:ident ($factory:expr) ($capabilities:expr)) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let factory = $factory;
            $crate::__private::report($crate::cases::$name(&factory, $capabilities).await);
        }
    };
}

/// One case of `run_all`; an implementation detail of [`crate::run_all`].
#[doc(hidden)]
#[macro_export]
macro_rules! __case_run {
    (store $name:ident ($factory:ident) ($capabilities:ident) ($report:ident)) => {
        let store = $crate::StoreFactory::fresh_store($factory).await;
        $report.record(stringify!($name), $crate::cases::$name(store, $capabilities).await);
    };
    (factory $name:ident ($factory:ident) ($capabilities:ident) ($report:ident)) => {
        $report.record(stringify!($name), $crate::cases::$name($factory, $capabilities).await);
    };
}
