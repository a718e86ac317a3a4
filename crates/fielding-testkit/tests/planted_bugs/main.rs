//! The kit tests itself: stores with planted bugs must be rejected by the
//! cases aimed at those bugs, while the same store without a bug, and
//! `MemoryStore`, pass everything.
//!
//! Each bug is one a real adapter could ship: the lost update of a check and
//! a write under two locks, versions ordered as text, a 32-bit version
//! column, dropped change records, a racy uniqueness check, lookups that
//! ignore the scope, a change record written before its run, seconds
//! instead of milliseconds, a conflict that guesses the current version, a
//! compare-and-swap that creates a missing run or keeps the version, a
//! batch of writes applied to each other's rows;
//! and overrides of `update` that read and write under two locks, ignore
//! the scope, ignore the expected version, or retry (and decide) again,
//! and an `update_now` (the answer-at-once path) that ignores the expected
//! version;
//! and job expiry that removes processing jobs, ignores its limit, ages
//! jobs from their creation, includes the cutoff, leaves keys behind, or
//! lets a second `finish_job` refresh the finish time;
//! and bulk jobs whose keys race, are per project or share the creation
//! jobs' table, whose items come back sorted, which leak across projects,
//! whose claims ignore leases, keep the old token, take the newest job or
//! race, whose renewals and finishes ignore the token or keep the claim,
//! whose `apply_bulk_items` is not fenced, decides recorded items again,
//! writes item by item, ignores the expected version, records without
//! writing, drops change records, finds runs in other accounts, or decides
//! and writes under two locks, and whose expiry removes processing jobs,
//! ignores its limit, leaves items behind or ages jobs from their creation;
//! and change feeds that number records when written but show them when
//! committed (the outbox bug), leave the bulk path's records out, read
//! from an inclusive cursor, leak other accounts' records, skip pruned
//! records silently or read below the pruned horizon, move `next` past
//! unread records, guess `has_more` from a full page, prune past the
//! limit, save checkpoints for the wrong account, or never send wake-ups.
//! One more behaviour is legitimate only when declared: answering
//! contention with retryable "busy" errors.
//!
//! The bugs and the cases each must fail are one table (`planted_bugs!`),
//! and every case of the kit must be required to fail by at least one bug.
//! The store is in `store.rs`, its feed in `feed.rs`.
//!
//! Run with `-- --nocapture` to see what each case reported.

mod feed;
mod store;

use std::sync::Arc;
use std::time::Duration;

use fielding_memory::MemoryStore;
use fielding_testkit::{run_all, Capabilities, SuiteReport, CASES};

use store::{Bug, PlantedStore};

/// The capabilities the planted store runs the suite with: everything,
/// and records readable as soon as their write returns, so a missing
/// record fails its case within a second.
fn planted() -> Capabilities {
    Capabilities::full().with_max_feed_lag(Duration::from_secs(1))
}

async fn suite(bug: Bug) -> SuiteReport {
    suite_with(bug, planted()).await
}

async fn suite_with(bug: Bug, capabilities: Capabilities) -> SuiteReport {
    let report = run_all(&|| async move { Arc::new(PlantedStore::new(bug)) }, capabilities).await;
    println!("==== {bug:?}, {capabilities:?}\n{report}");
    report
}

/// Asserts that the suite rejects `bug` through (at least) the cases in
/// `caught_by`, and that the cases in `unaffected` still pass, so the
/// failures come from the bug and not from noise.
async fn assert_rejected(bug: Bug, caught_by: &[&str], unaffected: &[&str]) {
    let report = suite(bug).await;
    let failed = report.failed_cases();
    for case in caught_by {
        assert!(CASES.contains(case), "{case} is not a case");
        assert!(failed.contains(case), "{bug:?}: `{case}` should have failed\n{report}");
    }
    for case in unaffected {
        assert!(CASES.contains(case), "{case} is not a case");
        assert!(!failed.contains(case), "{bug:?}: `{case}` should have passed\n{report}");
    }
}

/// One test per planted bug, from one table: `test: Bug, caught_by [cases
/// that must fail], unaffected [cases that must pass];`. The same table is
/// `PLANTED`, which `every_case_is_required_to_fail_by_a_planted_bug`
/// checks against the list of cases.
macro_rules! planted_bugs {
    ($($test:ident: $bug:ident, caught_by [$($caught:expr),* $(,)?], unaffected [$($unaffected:expr),* $(,)?];)*) => {
        /// Every planted bug with the cases that must fail on it.
        const PLANTED: &[(Bug, &[&str])] = &[$((Bug::$bug, &[$($caught),*])),*];

        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                assert_rejected(Bug::$bug, &[$($caught),*], &[$($unaffected),*]).await;
            }
        )*
    };
}

planted_bugs! {
    a_check_and_a_write_under_two_locks_loses_updates: SplitLock,
        caught_by [
            "race_concurrent_increments_on_one_run_lose_no_update",
            "linearizable_interleaved_read_then_write_cycles_match_the_model",
            "race_concurrent_updates_on_one_run_lose_no_update",
        ],
        unaffected [
            "round_trip_preserves_every_field",
            "compare_and_swap_with_a_stale_version_is_refused_and_changes_nothing",
            "compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31",
        ];
    versions_ordered_as_text_break_at_two_digits: TextOrderedVersions,
        caught_by [
            "compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31",
            "change_records_one_per_version_in_order_without_gaps",
            "race_concurrent_updates_on_one_run_lose_no_update",
        ],
        unaffected [
            "compare_and_swap_at_the_current_version_bumps_it_by_exactly_one",
            "compare_and_swap_with_a_stale_version_is_refused_and_changes_nothing",
        ];
    an_i32_version_column_breaks_at_2_pow_31: I32VersionColumn,
        caught_by [
            "compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31",
            "update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
            "update_write_with_a_stale_version_is_refused_and_changes_nothing",
        ],
        unaffected [
            "round_trip_preserves_every_field",
            "race_concurrent_increments_on_one_run_lose_no_update",
        ];
    comparing_the_low_32_bits_accepts_stale_versions: LowBitsCompare,
        caught_by [
            "compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31",
            "update_write_with_a_stale_version_is_refused_and_changes_nothing",
        ],
        unaffected ["compare_and_swap_with_a_stale_version_is_refused_and_changes_nothing"];
    dropped_change_records_are_caught: DropsChangeRecords,
        caught_by [
            "change_records_one_per_version_in_order_without_gaps",
            "change_records_are_atomic_with_the_write_they_describe",
            "race_concurrent_increments_on_one_run_lose_no_update",
            "linearizable_interleaved_read_then_write_cycles_match_the_model",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
            "race_concurrent_updates_on_one_run_lose_no_update",
        ],
        unaffected ["round_trip_preserves_every_field"];
    a_missing_target_group_check_is_caught: NoTargetGroupCheck,
        caught_by [
            "insert_refuses_a_second_run_for_the_same_target_group",
            "concurrent_inserts_for_one_target_group_have_exactly_one_winner",
        ],
        unaffected ["scope_isolation_hides_the_run_from_every_other_scope"];
    a_racy_target_group_check_is_caught_only_by_the_race: RacyInsert,
        caught_by ["concurrent_inserts_for_one_target_group_have_exactly_one_winner"],
        unaffected ["insert_refuses_a_second_run_for_the_same_target_group"];
    lookups_that_ignore_the_scope_are_caught: IgnoresScope,
        caught_by [
            "scope_isolation_hides_the_run_from_every_other_scope",
            "scope_isolation_compare_and_swap_through_another_scope_is_not_found",
            "update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide",
        ],
        unaffected ["round_trip_preserves_every_field"];
    a_change_record_written_before_its_run_is_caught: RecordBeforeRun,
        caught_by [
            "change_records_are_atomic_with_the_write_they_describe",
            "race_concurrent_increments_on_one_run_lose_no_update",
        ],
        unaffected ["change_records_one_per_version_in_order_without_gaps"];
    whole_seconds_fail_the_round_trip: SecondPrecision,
        caught_by [
            "round_trip_preserves_every_field",
            "linearizable_interleaved_read_then_write_cycles_match_the_model",
        ],
        unaffected [];
    a_compare_and_swap_that_creates_a_missing_run_is_caught: CasUpsertsMissingRun,
        caught_by ["compare_and_swap_on_a_missing_run_is_not_found"],
        unaffected [
            "compare_and_swap_at_the_current_version_bumps_it_by_exactly_one",
            "scope_isolation_compare_and_swap_through_another_scope_is_not_found",
            "update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide",
            "race_writers_spread_over_many_runs_do_not_cross_talk",
        ];
    a_compare_and_swap_that_keeps_the_version_is_caught: CasKeepsVersion,
        caught_by [
            "compare_and_swap_at_the_current_version_bumps_it_by_exactly_one",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
        ],
        unaffected [
            "insert_refuses_a_second_run_for_the_same_target_group",
            "compare_and_swap_on_a_missing_run_is_not_found",
            "scope_isolation_compare_and_swap_through_another_scope_is_not_found",
        ];
    a_write_batch_applied_to_the_wrong_rows_mixes_runs_up: ReversedWriteBatch,
        caught_by ["race_writers_spread_over_many_runs_do_not_cross_talk"],
        unaffected [
            "compare_and_swap_at_the_current_version_bumps_it_by_exactly_one",
            "race_concurrent_increments_on_one_run_lose_no_update",
            "race_concurrent_updates_on_one_run_lose_no_update",
            "change_records_are_atomic_with_the_write_they_describe",
            "linearizable_interleaved_read_then_write_cycles_match_the_model",
        ];
    a_guessed_conflict_version_is_caught: GuessedConflictVersion,
        caught_by [
            "compare_and_swap_with_a_stale_version_is_refused_and_changes_nothing",
            "linearizable_interleaved_read_then_write_cycles_match_the_model",
            "update_write_with_a_stale_version_is_refused_and_changes_nothing",
        ],
        unaffected ["compare_and_swap_at_the_current_version_bumps_it_by_exactly_one"];
    busy_answers_under_contention_fail_when_not_declared: BusyUnderContention,
        caught_by [
            "concurrent_inserts_for_one_target_group_have_exactly_one_winner",
            "race_concurrent_increments_on_one_run_lose_no_update",
            "linearizable_interleaved_read_then_write_cycles_match_the_model",
            "race_concurrent_updates_on_one_run_lose_no_update",
        ],
        unaffected [
            "round_trip_preserves_every_field",
            "compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31",
        ];
    // The sequential `update` cases pass: a store right one call at a
    // time passes them, whatever its concurrency bugs.
    an_update_that_reads_and_writes_under_two_locks_loses_updates: SplitLockUpdate,
        caught_by ["race_concurrent_updates_on_one_run_lose_no_update"],
        unaffected [
            "update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide",
            "update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
            "update_write_with_a_stale_version_is_refused_and_changes_nothing",
            "race_concurrent_increments_on_one_run_lose_no_update",
            "round_trip_preserves_every_field",
        ];
    an_update_that_ignores_the_scope_is_caught: UpdateIgnoresScope,
        caught_by ["update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide"],
        unaffected [
            "scope_isolation_hides_the_run_from_every_other_scope",
            "scope_isolation_compare_and_swap_through_another_scope_is_not_found",
            "update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
            "update_write_with_a_stale_version_is_refused_and_changes_nothing",
            "race_concurrent_updates_on_one_run_lose_no_update",
        ];
    an_update_that_ignores_the_expected_version_is_caught: UpdateIgnoresExpected,
        caught_by ["update_write_with_a_stale_version_is_refused_and_changes_nothing"],
        unaffected [
            "update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
            "race_concurrent_updates_on_one_run_lose_no_update",
        ];
    an_update_now_that_ignores_the_expected_version_is_caught: UpdateNowIgnoresExpected,
        caught_by ["update_now_keeps_every_promise_of_update"],
        unaffected [
            "update_write_with_a_stale_version_is_refused_and_changes_nothing",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
            "race_concurrent_updates_on_one_run_lose_no_update",
        ];
    an_update_that_retries_and_decides_again_is_caught: UpdateRetriesOnConflict,
        caught_by ["update_write_with_a_stale_version_is_refused_and_changes_nothing"],
        unaffected [
            "update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
        ];
    a_racy_idempotency_key_check_creates_duplicate_jobs: RacyJobKey,
        caught_by ["concurrent_job_creations_with_one_key_have_exactly_one_winner"],
        unaffected [
            "job_round_trip_preserves_every_field",
            "job_idempotency_key_is_unique_per_account",
        ];
    idempotency_keys_per_target_group_are_caught: JobKeyPerTargetGroup,
        caught_by ["job_idempotency_key_is_unique_per_account"],
        unaffected [
            "job_round_trip_preserves_every_field",
            "finish_job_records_the_first_outcome_only",
        ];
    jobs_found_by_id_alone_leak_across_scopes: JobIgnoresScope,
        caught_by ["job_scope_isolation_hides_the_job_from_every_other_scope"],
        unaffected [
            "job_round_trip_preserves_every_field",
            "job_idempotency_key_is_unique_per_account",
        ];
    an_outcome_overwritten_by_a_later_one_is_caught: FinishOverwrites,
        caught_by ["finish_job_records_the_first_outcome_only"],
        unaffected ["job_scope_isolation_hides_the_job_from_every_other_scope"];
    a_dropped_trace_id_is_caught: DropsJobTraceId,
        caught_by ["job_round_trip_preserves_every_field"],
        unaffected ["round_trip_preserves_every_field"];
    an_expiry_that_removes_processing_jobs_is_caught: ExpiresProcessingJobs,
        caught_by ["expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches"],
        unaffected ["job_round_trip_preserves_every_field", "finish_job_records_the_first_outcome_only"];
    an_expiry_that_ignores_the_limit_is_caught: ExpiryIgnoresLimit,
        caught_by ["expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches"],
        unaffected ["job_round_trip_preserves_every_field"];
    an_expiry_by_creation_time_is_caught: ExpiresByCreationTime,
        caught_by ["expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches"],
        unaffected ["job_round_trip_preserves_every_field"];
    an_inclusive_expiry_cutoff_is_caught: InclusiveExpiryCutoff,
        caught_by ["expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches"],
        unaffected ["job_round_trip_preserves_every_field"];
    an_expiry_that_leaves_the_key_behind_is_caught: ExpiryKeepsKeys,
        caught_by ["expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches"],
        unaffected ["job_idempotency_key_is_unique_per_account"];
    a_finish_time_refreshed_by_a_later_finish_job_is_caught: FinishRefreshesTime,
        caught_by ["expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches"],
        unaffected ["finish_job_records_the_first_outcome_only"];
    a_racy_bulk_idempotency_key_check_creates_duplicate_bulk_jobs: RacyBulkKey,
        caught_by ["concurrent_bulk_job_creations_with_one_key_have_exactly_one_winner"],
        unaffected [
            "bulk_job_round_trip_preserves_every_field_and_item_order",
            "bulk_idempotency_key_is_unique_per_account",
        ];
    bulk_idempotency_keys_per_project_are_caught: BulkKeyPerProject,
        caught_by ["bulk_idempotency_key_is_unique_per_account"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    bulk_and_creation_jobs_sharing_one_key_table_are_caught: BulkKeySharedWithJobs,
        caught_by ["bulk_idempotency_key_is_unique_per_account"],
        unaffected [
            "bulk_job_round_trip_preserves_every_field_and_item_order",
            "job_idempotency_key_is_unique_per_account",
        ];
    items_read_back_out_of_submission_order_are_caught: BulkItemsSorted,
        caught_by ["bulk_job_round_trip_preserves_every_field_and_item_order"],
        unaffected ["concurrent_claims_hand_each_bulk_job_to_exactly_one_runner"];
    bulk_jobs_found_without_their_project_leak_across_projects: BulkJobIgnoresProject,
        caught_by ["bulk_job_scope_isolation_hides_the_job_from_every_other_account_and_project"],
        unaffected [
            "bulk_job_round_trip_preserves_every_field_and_item_order",
            "bulk_idempotency_key_is_unique_per_account",
        ];
    a_claim_that_ignores_the_lease_is_caught: ClaimIgnoresLease,
        caught_by ["claim_takes_unheld_processing_bulk_jobs_oldest_first_and_respects_leases"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    a_claim_that_keeps_the_old_token_is_caught: ClaimKeepsToken,
        caught_by ["claim_takes_unheld_processing_bulk_jobs_oldest_first_and_respects_leases"],
        unaffected [
            "bulk_job_round_trip_preserves_every_field_and_item_order",
            "concurrent_claims_hand_each_bulk_job_to_exactly_one_runner",
        ];
    a_claim_of_the_newest_job_first_is_caught: ClaimNewestFirst,
        caught_by ["claim_takes_unheld_processing_bulk_jobs_oldest_first_and_respects_leases"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    a_racy_claim_hands_one_job_to_several_runners: RacyClaim,
        caught_by ["concurrent_claims_hand_each_bulk_job_to_exactly_one_runner"],
        unaffected [
            "claim_takes_unheld_processing_bulk_jobs_oldest_first_and_respects_leases",
            "renew_bulk_claim_moves_the_lease_only_for_the_holding_token",
        ];
    a_renewal_by_any_token_is_caught: RenewIgnoresToken,
        caught_by ["renew_bulk_claim_moves_the_lease_only_for_the_holding_token"],
        unaffected ["claim_takes_unheld_processing_bulk_jobs_oldest_first_and_respects_leases"];
    a_finish_by_any_token_is_caught: FinishIgnoresToken,
        caught_by ["finish_bulk_job_needs_the_holding_token_and_ends_the_claim"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    a_finish_that_keeps_the_claim_is_caught: FinishKeepsClaim,
        caught_by [
            "finish_bulk_job_needs_the_holding_token_and_ends_the_claim",
            "renew_bulk_claim_moves_the_lease_only_for_the_holding_token",
        ],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    an_apply_without_fencing_is_caught: ApplyNotFenced,
        caught_by ["apply_bulk_items_by_a_token_that_does_not_hold_the_job_is_claim_lost"],
        unaffected [
            "apply_bulk_items_decides_each_pending_item_once_with_its_run",
            "apply_bulk_items_is_all_or_nothing_when_one_write_conflicts",
        ];
    an_apply_that_decides_recorded_items_again_is_caught: ApplyRedecides,
        caught_by [
            "apply_bulk_items_decides_each_pending_item_once_with_its_run",
            "concurrent_appliers_of_one_job_change_each_run_exactly_once",
        ],
        unaffected ["apply_bulk_items_is_all_or_nothing_when_one_write_conflicts"];
    an_apply_that_writes_item_by_item_is_caught: ApplyNotAtomic,
        caught_by ["apply_bulk_items_is_all_or_nothing_when_one_write_conflicts"],
        unaffected [
            "apply_bulk_items_decides_each_pending_item_once_with_its_run",
            "apply_bulk_items_by_a_token_that_does_not_hold_the_job_is_claim_lost",
        ];
    an_apply_that_ignores_the_expected_version_is_caught: ApplyIgnoresExpected,
        caught_by ["apply_bulk_items_is_all_or_nothing_when_one_write_conflicts"],
        unaffected ["apply_bulk_items_decides_each_pending_item_once_with_its_run"];
    an_apply_that_records_updated_without_writing_is_caught: ApplyRecordsWithoutWrite,
        caught_by [
            "apply_bulk_items_decides_each_pending_item_once_with_its_run",
            "apply_bulk_items_is_all_or_nothing_when_one_write_conflicts",
        ],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    an_apply_that_drops_the_change_record_is_caught: ApplyDropsChangeRecord,
        caught_by ["apply_bulk_items_decides_each_pending_item_once_with_its_run"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    an_apply_that_finds_runs_in_other_accounts_and_projects_is_caught: ApplyIgnoresScope,
        caught_by ["apply_bulk_items_decides_each_pending_item_once_with_its_run"],
        unaffected ["apply_bulk_items_is_all_or_nothing_when_one_write_conflicts"];
    // Right one call at a time: only the race sees it.
    an_apply_that_decides_and_writes_under_two_locks_applies_items_twice: ApplySplitLock,
        caught_by ["concurrent_appliers_of_one_job_change_each_run_exactly_once"],
        unaffected [
            "apply_bulk_items_decides_each_pending_item_once_with_its_run",
            "apply_bulk_items_is_all_or_nothing_when_one_write_conflicts",
            "apply_bulk_items_by_a_token_that_does_not_hold_the_job_is_claim_lost",
        ];
    a_bulk_expiry_that_removes_processing_jobs_is_caught: BulkExpiresProcessing,
        caught_by ["expire_bulk_jobs_removes_old_finished_bulk_jobs_with_their_items_and_keys_in_bounded_batches"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    a_bulk_expiry_that_ignores_the_limit_is_caught: BulkExpiryIgnoresLimit,
        caught_by ["expire_bulk_jobs_removes_old_finished_bulk_jobs_with_their_items_and_keys_in_bounded_batches"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    a_bulk_expiry_that_leaves_the_items_behind_is_caught: BulkExpiryKeepsItems,
        caught_by ["expire_bulk_jobs_removes_old_finished_bulk_jobs_with_their_items_and_keys_in_bounded_batches"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    a_bulk_expiry_by_creation_time_is_caught: BulkExpiresByCreationTime,
        caught_by ["expire_bulk_jobs_removes_old_finished_bulk_jobs_with_their_items_and_keys_in_bounded_batches"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    // Right while one writer writes at a time: only readers racing
    // concurrent writers see it.
    the_outbox_bug_numbering_at_write_and_showing_at_commit_skips_records: OutboxVisibility,
        caught_by [FEED_RACE],
        unaffected [
            "feed_lists_every_write_exactly_once_in_commit_order",
            "feed_pages_of_any_size_read_the_same_records",
            "feed_never_shows_another_accounts_records",
            "feed_prune_removes_old_records_in_bounded_batches_and_expires_cursors_before_them",
            "race_concurrent_increments_on_one_run_lose_no_update",
            "race_concurrent_updates_on_one_run_lose_no_update",
        ];
    bulk_writes_missing_from_the_feed_are_caught: BulkWritesMissFeed,
        caught_by ["feed_lists_every_write_exactly_once_in_commit_order"],
        unaffected [
            "feed_pages_of_any_size_read_the_same_records",
            FEED_RACE,
            "apply_bulk_items_decides_each_pending_item_once_with_its_run",
        ];
    an_inclusive_cursor_reads_records_twice: InclusiveCursor,
        caught_by [
            "feed_lists_every_write_exactly_once_in_commit_order",
            "feed_pages_of_any_size_read_the_same_records",
            FEED_RACE,
        ],
        unaffected ["feed_change_notifier_wakes_the_subscribers_of_the_written_account"];
    a_feed_that_ignores_the_account_leaks_records: FeedIgnoresAccount,
        caught_by [
            "feed_never_shows_another_accounts_records",
            "feed_lists_every_write_exactly_once_in_commit_order",
            FEED_RACE,
        ],
        unaffected ["feed_checkpoints_are_kept_per_account_and_consumer"];
    a_feed_that_skips_pruned_records_silently_is_caught: FeedIgnoresHorizon,
        caught_by ["feed_prune_removes_old_records_in_bounded_batches_and_expires_cursors_before_them"],
        unaffected ["feed_pages_of_any_size_read_the_same_records", FEED_RACE];
    a_feed_that_reads_on_from_a_foreign_cursor_is_caught: FeedAcceptsForeignCursor,
        caught_by ["feed_refuses_a_cursor_it_never_handed_out"],
        unaffected ["feed_pages_of_any_size_read_the_same_records", FEED_RACE];
    a_first_read_below_the_pruned_horizon_is_caught: NoneReadsBelowHorizon,
        caught_by ["feed_prune_removes_old_records_in_bounded_batches_and_expires_cursors_before_them"],
        unaffected ["feed_pages_of_any_size_read_the_same_records", FEED_RACE];
    a_next_that_jumps_past_unread_records_is_caught: NextJumpsAhead,
        caught_by ["feed_pages_of_any_size_read_the_same_records", FEED_RACE],
        unaffected ["feed_lists_every_write_exactly_once_in_commit_order"];
    has_more_guessed_from_a_full_page_is_caught: HasMoreByFullPage,
        caught_by ["feed_pages_of_any_size_read_the_same_records"],
        unaffected ["feed_lists_every_write_exactly_once_in_commit_order"];
    a_prune_that_ignores_the_limit_is_caught: PruneIgnoresLimit,
        caught_by ["feed_prune_removes_old_records_in_bounded_batches_and_expires_cursors_before_them"],
        unaffected ["feed_lists_every_write_exactly_once_in_commit_order"];
    a_checkpoint_saved_for_the_wrong_account_is_caught: CheckpointWrongAccount,
        caught_by ["feed_checkpoints_are_kept_per_account_and_consumer"],
        unaffected ["feed_lists_every_write_exactly_once_in_commit_order"];
    a_notifier_that_never_wakes_anyone_is_caught: SilentNotifier,
        caught_by ["feed_change_notifier_wakes_the_subscribers_of_the_written_account"],
        unaffected ["feed_lists_every_write_exactly_once_in_commit_order", FEED_RACE];
}

/// The feed's race case.
const FEED_RACE: &str = "feed_race_readers_following_concurrent_writers_miss_nothing_and_see_nothing_twice";

/// Every case must be shown to bite: at least one planted bug requires it
/// to fail. A case no bug requires could be weakened (or emptied) and the
/// kit would not notice. Also every bug is planted once, so no entry of the
/// table shadows another.
#[test]
fn every_case_is_required_to_fail_by_a_planted_bug() {
    let unrequired: Vec<&str> = CASES
        .iter()
        .copied()
        .filter(|case| !PLANTED.iter().any(|(_, caught_by)| caught_by.contains(case)))
        .collect();
    assert!(
        unrequired.is_empty(),
        "no planted bug requires these cases to fail: {unrequired:?}"
    );
    for (i, (bug, caught_by)) in PLANTED.iter().enumerate() {
        assert!(!caught_by.is_empty(), "{bug:?} is required to fail no case");
        assert!(
            PLANTED[..i].iter().all(|(other, _)| other != bug),
            "{bug:?} is planted twice"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reference_store_without_a_bug_passes_every_case() {
    suite(Bug::None).await.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_passes_every_case() {
    let report = run_all(&|| async { Arc::new(MemoryStore::new()) }, Capabilities::full()).await;
    report.assert_passed();
    let names: Vec<&str> = report.outcomes().iter().map(|(name, _)| *name).collect();
    assert_eq!(names, CASES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn busy_answers_under_contention_pass_when_declared() {
    let declared = Capabilities::full().with_retryable_errors_under_contention(true);
    suite_with(Bug::BusyUnderContention, declared).await.assert_passed();
}

/// With the fewest writers a store may declare, one pair on one task still
/// interleaves at the await between the read and the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_that_reads_and_writes_under_two_locks_loses_updates_even_with_two_writers() {
    let fewest = suite_with(Bug::SplitLockUpdate, Capabilities::full().with_concurrent_writers(2)).await;
    let failed = fewest.failed_cases();
    assert!(
        failed.contains(&"race_concurrent_updates_on_one_run_lose_no_update"),
        "with 2 writers the update race should still fail\n{fewest}"
    );
}

/// The race catches the outbox bug on every run, also with the fewest
/// writers a store may declare: the bug holds a record back only until a
/// reader has read past it, and the readers follow the feed throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_outbox_bug_is_caught_on_every_run_even_with_two_writers() {
    for writers in [2, 2, 8, 8, 8] {
        let caps = planted().with_concurrent_writers(writers);
        let store = Arc::new(PlantedStore::new(Bug::OutboxVisibility));
        let outcome =
            fielding_testkit::cases::feed_race_readers_following_concurrent_writers_miss_nothing_and_see_nothing_twice(
                store, caps,
            )
            .await;
        let failure = outcome.expect_err("the outbox bug must fail the feed race");
        assert_eq!(failure.case(), FEED_RACE);
        assert!(failure.detail().contains("skipped"), "{failure}");
    }
}
