//! The promises of `apply_bulk_items`: each pending item's run (in the
//! job's account and project) is shown to `decide` once and what it
//! answers is done, with one change record per write; an item with an
//! outcome is never decided again; a call is all or nothing; only the
//! holder of the claim may apply; and concurrent appliers change each run
//! at most once.
//!
//! The `decide` callbacks are built here by hand (`ItemUpdate::Write`
//! with [`crate::fixtures::change`]), so the cases test the store, not the
//! service's decisions.

use std::sync::Arc;

use fielding_core::{
    BulkAction, BulkItemOutcome, BulkJob, BulkJobStatus, ChangeRecord, ClaimToken, FieldingRun, FieldingStore,
    ItemUpdate, Scope, Status, StoreError, TargetGroupId, UserId, Version,
};
use tokio::sync::Barrier;

use crate::cases::bulk::{
    bulk_job, claim_job, claim_ours, create, finish, job_diff, lease_end, read, refused_apply, with_outcomes,
    NOT_ALLOWED, NOT_FOUND,
};
use crate::cases::check;
use crate::failure::Case;
use crate::sample::{self, at, BASE_MILLIS};
use crate::{Capabilities, CaseFailure};

const APPLY: &str =
    "apply_bulk_items calls decide once for each item without an outcome, with the item's run in the job's account and project (None when there is none there, whatever other accounts and projects hold), and does what it answers: a Write stores the run with exactly one change record and records Updated, a Record records its outcome; an item with an outcome keeps it and is not decided again; the answer lists each item's outcome in the order asked";

const ALL_OR_NOTHING: &str =
    "apply_bulk_items is all or nothing: when one Write's expected version is not the run's, the call fails with VersionConflict (the version tried, the run's version) and writes nothing: no run, no change record, no item outcome, however many items came before it";

const FENCED: &str =
    "apply_bulk_items with a token that does not hold the job (never claimed, taken over after its lease, finished) fails with ClaimLost naming the job and the token, never calls decide, and writes nothing";

const AT_MOST_ONCE: &str =
    "concurrent apply_bulk_items calls over the same items of one job change each item's run exactly once: one change record, one new version, every item Updated";

/// A run in the account and project of `scope`, under a fresh target
/// group, stored with its creation record.
async fn seed<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    scope: Scope,
    version: u64,
    status: Status,
) -> Result<(FieldingRun, ChangeRecord), CaseFailure> {
    seed_at(case, store, sample::other_target_group(scope), version, status).await
}

/// A run at exactly `scope`, stored with its creation record.
async fn seed_at<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    scope: Scope,
    version: u64,
    status: Status,
) -> Result<(FieldingRun, ChangeRecord), CaseFailure> {
    let run = sample::run(scope, sample::version(version), status);
    let record = sample::creation(&run);
    case.ok(format!("insert({})", run.key()), store.insert(&run, &record).await)?;
    Ok((run, record))
}

/// The write a case's `decide` asks for: the next version of `run` by
/// `by`, tagged `tag`.
fn next(case: Case, run: &FieldingRun, tag: u64, by: UserId) -> Result<(FieldingRun, ChangeRecord), CaseFailure> {
    sample::change(run, tag, by)
        .ok_or_else(|| case.fail(APPLY, format!("the case's run {} is at the last version", run.key())))
}

/// The `ItemUpdate::Write` of [`next`], with `expected` as the version the
/// decision claims to be made on; a `Record` of `NOT_FOUND` without a run.
fn write(run: Option<&FieldingRun>, expected: impl Fn(Version) -> Version, tag: u64, by: UserId) -> ItemUpdate {
    match run.and_then(|run| Some((run, sample::change(run, tag, by)?))) {
        Some((run, (next, change))) => ItemUpdate::Write {
            expected: expected(run.version),
            run: next,
            change,
        },
        None => ItemUpdate::Record(NOT_FOUND),
    }
}

/// Every run of `expected` reads back with exactly its records.
async fn runs_are<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    expected: &[(FieldingRun, Vec<ChangeRecord>)],
    when: &str,
) -> Result<(), CaseFailure> {
    for (run, records) in expected {
        check::stored(case, store, promise, run, records, when).await?;
    }
    Ok(())
}

/// The calls of `decide`, sorted, so they compare whatever order the store
/// decides in (the contract fixes the order of the answer only).
fn sorted(mut calls: Vec<(TargetGroupId, Option<FieldingRun>)>) -> Vec<(TargetGroupId, Option<FieldingRun>)> {
    calls.sort_by_key(|(id, _)| *id);
    calls
}

/// Decisions on pending items only, with the right run; writes with their
/// record; recorded items answered without a decision, in any order asked.
pub async fn apply_bulk_items_decides_each_pending_item_once_with_its_run<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("apply_bulk_items_decides_each_pending_item_once_with_its_run");
    let store = &*store;
    let scope = sample::scope();
    let (live, live_created) = seed(case, store, scope, 5, Status::Live).await?;
    let (paused, paused_created) = seed(case, store, scope, 12, Status::Paused).await?;
    let (refused, refused_created) = seed(case, store, scope, 3, Status::Completed).await?;
    let missing = crate::fixtures::target_group_id();
    // The same target group exists in another account and in another
    // project, never in the job's.
    let elsewhere = crate::fixtures::target_group_id();
    let here = Scope::new(scope.account_id, scope.project_id, elsewhere);
    let (other_account, other_account_created) =
        seed_at(case, store, sample::other_account(here), 7, Status::Live).await?;
    let (other_project, other_project_created) =
        seed_at(case, store, sample::other_project(here), 7, Status::Live).await?;
    let items = [
        live.target_group_id,
        missing,
        paused.target_group_id,
        elsewhere,
        refused.target_group_id,
    ];
    let job = bulk_job(scope, BulkAction::Pause, &items);
    create(case, store, APPLY, &job).await?;
    let claim = claim_job(case, store, &job).await?;
    let by = job.created_by;

    // Two items, in another order than the job's.
    let first = [paused.target_group_id, live.target_group_id];
    let mut calls = Vec::new();
    let answer = case.ok(
        "apply_bulk_items of two pending items",
        store
            .apply_bulk_items(&job.key(), claim.token, &first, &mut |id, run| {
                calls.push((id, run.cloned()));
                write(run, |v| v, 1, by)
            })
            .await,
    )?;
    let expected_calls = sorted(vec![
        (paused.target_group_id, Some(paused.clone())),
        (live.target_group_id, Some(live.clone())),
    ]);
    let calls = sorted(calls);
    case.ensure(calls == expected_calls, APPLY, || {
        format!("decide was called with {calls:?}, expected once per item with its run: {expected_calls:?}")
    })?;
    let updated: Vec<(TargetGroupId, BulkItemOutcome)> =
        first.iter().map(|id| (*id, BulkItemOutcome::Updated)).collect();
    case.ensure(answer == updated, APPLY, || {
        format!("apply_bulk_items answered {answer:?}, expected {updated:?}")
    })?;
    let (live_next, live_change) = next(case, &live, 1, by)?;
    let (paused_next, paused_change) = next(case, &paused, 1, by)?;
    let after_first = [
        (live_next.clone(), vec![live_created.clone(), live_change.clone()]),
        (paused_next.clone(), vec![paused_created.clone(), paused_change.clone()]),
        (refused.clone(), vec![refused_created.clone()]),
        (other_account.clone(), vec![other_account_created.clone()]),
        (other_project.clone(), vec![other_project_created.clone()]),
    ];
    runs_are(case, store, APPLY, &after_first, "after the first apply_bulk_items").await?;
    read(
        case,
        store,
        APPLY,
        &job.key(),
        Some(&with_outcomes(&job, &updated, BulkJobStatus::Processing)),
        "after the first apply_bulk_items",
    )
    .await?;

    // Every item, in reverse: only the three pending ones are decided.
    let reversed: Vec<TargetGroupId> = items.iter().rev().copied().collect();
    let mut calls = Vec::new();
    let answer = case.ok(
        "apply_bulk_items of every item",
        store
            .apply_bulk_items(&job.key(), claim.token, &reversed, &mut |id, run| {
                calls.push((id, run.cloned()));
                if id == refused.target_group_id {
                    ItemUpdate::Record(NOT_ALLOWED)
                } else {
                    write(run, |v| v, 2, by)
                }
            })
            .await,
    )?;
    let expected_calls = sorted(vec![
        (missing, None),
        (elsewhere, None),
        (refused.target_group_id, Some(refused.clone())),
    ]);
    let calls = sorted(calls);
    case.ensure(calls == expected_calls, APPLY, || {
        format!(
            "decide was called with {calls:?}; expected once per pending item, never for an item already \
             updated, with None where the job's account and project have no run: {expected_calls:?}"
        )
    })?;
    let outcome_of = |id: &TargetGroupId| {
        if *id == missing || *id == elsewhere {
            NOT_FOUND
        } else if *id == refused.target_group_id {
            NOT_ALLOWED
        } else {
            BulkItemOutcome::Updated
        }
    };
    let all: Vec<(TargetGroupId, BulkItemOutcome)> = reversed.iter().map(|id| (*id, outcome_of(id))).collect();
    case.ensure(answer == all, APPLY, || {
        format!("apply_bulk_items answered {answer:?}, expected every item's outcome in the order asked: {all:?}")
    })?;
    runs_are(case, store, APPLY, &after_first, "after the second apply_bulk_items").await?;
    let settled = with_outcomes(&job, &all, BulkJobStatus::Processing);
    read(
        case,
        store,
        APPLY,
        &job.key(),
        Some(&settled),
        "after the second apply_bulk_items",
    )
    .await?;

    // Again: nothing is decided, the recorded outcomes come back.
    let mut calls = 0;
    let answer = case.ok(
        "apply_bulk_items of items that all have outcomes",
        store
            .apply_bulk_items(&job.key(), claim.token, &items, &mut |_, run| {
                calls += 1;
                write(run, |v| v, 3, by)
            })
            .await,
    )?;
    let in_order: Vec<(TargetGroupId, BulkItemOutcome)> = items.iter().map(|id| (*id, outcome_of(id))).collect();
    case.ensure(calls == 0 && answer == in_order, APPLY, || {
        format!(
            "with every outcome recorded, apply_bulk_items called decide {calls} times and answered {answer:?}; \
             expected no call and {in_order:?}"
        )
    })?;
    runs_are(case, store, APPLY, &after_first, "after the third apply_bulk_items").await?;
    read(
        case,
        store,
        APPLY,
        &job.key(),
        Some(&settled),
        "after the third apply_bulk_items",
    )
    .await?;
    finish(
        case,
        store,
        APPLY,
        &job.key(),
        claim.token,
        BulkJobStatus::Completed,
        true,
    )
    .await
}

/// A conflict anywhere in the call leaves every item, run and record as it
/// was; the caller can then decide again and succeed.
pub async fn apply_bulk_items_is_all_or_nothing_when_one_write_conflicts<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("apply_bulk_items_is_all_or_nothing_when_one_write_conflicts");
    let store = &*store;
    let scope = sample::scope();
    let (a, a_created) = seed(case, store, scope, 4, Status::Live).await?;
    let (b, b_created) = seed(case, store, scope, 9, Status::Paused).await?;
    let (c, c_created) = seed(case, store, scope, 20, Status::Live).await?;
    let missing = crate::fixtures::target_group_id();
    let items = [a.target_group_id, missing, b.target_group_id, c.target_group_id];
    let job = bulk_job(scope, BulkAction::Pause, &items);
    create(case, store, ALL_OR_NOTHING, &job).await?;
    let claim = claim_job(case, store, &job).await?;
    let by = job.created_by;
    let untouched = [
        (a.clone(), vec![a_created.clone()]),
        (b.clone(), vec![b_created.clone()]),
        (c.clone(), vec![c_created.clone()]),
    ];
    // The stale write last, after writes and a record that fit; then an
    // expected version ahead of the run's, in the middle.
    let attempts: [(&str, Vec<TargetGroupId>, Version); 2] = [
        ("stale, last", items.to_vec(), sample::version(19)),
        (
            "ahead, in the middle",
            vec![a.target_group_id, c.target_group_id, b.target_group_id, missing],
            sample::version(21),
        ),
    ];
    for (name, order, wrong) in attempts {
        let answer = store
            .apply_bulk_items(&job.key(), claim.token, &order, &mut |id, run| {
                let conflicting = id == c.target_group_id;
                write(run, |v| if conflicting { wrong } else { v }, 1, by)
            })
            .await;
        let right = matches!(answer, Err(StoreError::VersionConflict { expected, current })
            if expected == wrong && current == c.version);
        case.ensure(right, ALL_OR_NOTHING, || {
            format!(
                "apply_bulk_items with a write expecting version {wrong} of a run at {} ({name}) answered \
                 {answer:?}, expected VersionConflict {{ expected: {wrong}, current: {} }}",
                c.version, c.version
            )
        })?;
        let when = format!("after the refused apply_bulk_items ({name})");
        runs_are(case, store, ALL_OR_NOTHING, &untouched, &when).await?;
        read(case, store, ALL_OR_NOTHING, &job.key(), Some(&job), &when).await?;
    }

    // Decided again on the same runs, everything fits and is written.
    let mut calls = Vec::new();
    let answer = case.ok(
        "apply_bulk_items after a conflict",
        store
            .apply_bulk_items(&job.key(), claim.token, &items, &mut |id, run| {
                calls.push(id);
                write(run, |v| v, 2, by)
            })
            .await,
    )?;
    calls.sort();
    let mut all = items.to_vec();
    all.sort();
    case.ensure(calls == all, ALL_OR_NOTHING, || {
        format!(
            "after a refused call every item is still pending: decide must be called once for each of {all:?}, \
             was called for {calls:?}"
        )
    })?;
    let outcomes: Vec<(TargetGroupId, BulkItemOutcome)> = items
        .iter()
        .map(|id| {
            (
                *id,
                if *id == missing {
                    NOT_FOUND
                } else {
                    BulkItemOutcome::Updated
                },
            )
        })
        .collect();
    case.ensure(answer == outcomes, ALL_OR_NOTHING, || {
        format!("apply_bulk_items answered {answer:?}, expected {outcomes:?}")
    })?;
    let mut written = Vec::new();
    for (run, created) in [(&a, &a_created), (&b, &b_created), (&c, &c_created)] {
        let (next_run, change) = next(case, run, 2, by)?;
        written.push((next_run, vec![created.clone(), change]));
    }
    runs_are(case, store, ALL_OR_NOTHING, &written, "after apply_bulk_items").await?;
    let done = with_outcomes(&job, &outcomes, BulkJobStatus::Processing);
    read(
        case,
        store,
        ALL_OR_NOTHING,
        &job.key(),
        Some(&done),
        "after apply_bulk_items",
    )
    .await?;
    finish(
        case,
        store,
        ALL_OR_NOTHING,
        &job.key(),
        claim.token,
        BulkJobStatus::Completed,
        true,
    )
    .await
}

/// Tokens that never held the job, lost it, or held it until it finished
/// are refused, and nothing is written.
pub async fn apply_bulk_items_by_a_token_that_does_not_hold_the_job_is_claim_lost<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("apply_bulk_items_by_a_token_that_does_not_hold_the_job_is_claim_lost");
    let store = &*store;
    let scope = sample::scope();
    let (run, created) = seed(case, store, scope, 2, Status::Live).await?;
    let missing = crate::fixtures::target_group_id();
    let items = [run.target_group_id, missing];
    let job = bulk_job(scope, BulkAction::Pause, &items);
    create(case, store, FENCED, &job).await?;
    let untouched = &[(run.clone(), vec![created.clone()])];
    let stored = &job;
    let nothing_written = |when: &'static str| async move {
        runs_are(case, store, FENCED, untouched, when).await?;
        read(case, store, FENCED, &stored.key(), Some(stored), when).await
    };

    let stranger = ClaimToken::generate();
    refused_apply(
        case,
        store,
        FENCED,
        &job.key(),
        stranger,
        &items,
        "on a job never claimed",
    )
    .await?;
    nothing_written("after apply_bulk_items on a job never claimed").await?;
    let first = claim_job(case, store, &job).await?;
    refused_apply(
        case,
        store,
        FENCED,
        &job.key(),
        stranger,
        &items,
        "that never held the job",
    )
    .await?;
    nothing_written("after apply_bulk_items with a token that never held the job").await?;

    // The lease ends and another runner takes the job over.
    let second = fielding_core::BulkClaim {
        token: ClaimToken::generate(),
        lease_until: at(BASE_MILLIS + 90_000),
    };
    let taken = claim_ours(case, store, lease_end(), &second, &[job.id]).await?;
    case.ensure(taken.as_ref() == Some(&job), FENCED, || {
        format!(
            "the lease ended: claim_bulk_job must take the job over: {}",
            job_diff(Some(&job), taken.as_ref())
        )
    })?;
    refused_apply(
        case,
        store,
        FENCED,
        &job.key(),
        first.token,
        &items,
        "after the job was taken over",
    )
    .await?;
    nothing_written("after apply_bulk_items by the holder the job was taken from").await?;

    // The new holder may apply.
    let by = job.created_by;
    let answer = case.ok(
        "apply_bulk_items by the holder",
        store
            .apply_bulk_items(&job.key(), second.token, &items[..1], &mut |_, run| {
                write(run, |v| v, 1, by)
            })
            .await,
    )?;
    let updated = vec![(run.target_group_id, BulkItemOutcome::Updated)];
    case.ensure(answer == updated, FENCED, || {
        format!("apply_bulk_items by the holder answered {answer:?}, expected {updated:?}")
    })?;
    let (written, change) = next(case, &run, 1, by)?;
    let after = [(written, vec![created.clone(), change])];
    let applied = with_outcomes(&job, &updated, BulkJobStatus::Processing);
    runs_are(case, store, FENCED, &after, "after apply_bulk_items by the holder").await?;
    finish(
        case,
        store,
        FENCED,
        &job.key(),
        second.token,
        BulkJobStatus::Completed,
        true,
    )
    .await?;
    let done = BulkJob {
        status: BulkJobStatus::Completed,
        ..applied
    };
    read(case, store, FENCED, &job.key(), Some(&done), "after finish_bulk_job").await?;
    refused_apply(
        case,
        store,
        FENCED,
        &job.key(),
        second.token,
        &items[1..],
        "after the job finished",
    )
    .await?;
    runs_are(case, store, FENCED, &after, "after apply_bulk_items on a finished job").await?;
    read(
        case,
        store,
        FENCED,
        &job.key(),
        Some(&done),
        "after apply_bulk_items on a finished job",
    )
    .await
}

/// How many target groups the concurrent appliers share.
const SHARED_ITEMS: usize = 24;

/// Appliers that share one token (a runner whose batches overlap, or two
/// runners that both believe they hold the job) race over the same items.
pub async fn concurrent_appliers_of_one_job_change_each_run_exactly_once<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("concurrent_appliers_of_one_job_change_each_run_exactly_once");
    let appliers = caps.concurrent_writers();
    for round in 0..4 {
        let scope = sample::scope();
        let mut runs = Vec::new();
        for i in 0..SHARED_ITEMS {
            let status = if i % 2 == 0 { Status::Live } else { Status::Paused };
            runs.push(seed(case, &*store, scope, 1 + i as u64, status).await?);
        }
        let items: Vec<TargetGroupId> = runs.iter().map(|(run, _)| run.target_group_id).collect();
        let job = bulk_job(scope, BulkAction::Pause, &items);
        create(case, &*store, AT_MOST_ONCE, &job).await?;
        let claim = claim_job(case, &*store, &job).await?;
        let barrier = Arc::new(Barrier::new(appliers));
        let mut tasks = Vec::new();
        for applier in 0..appliers {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            let key = job.key();
            let by = job.created_by;
            // Each applier starts elsewhere in the list, so they meet on
            // every item in every order.
            let mut order = items.clone();
            order.rotate_left(applier * SHARED_ITEMS / appliers);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut retries = 0;
                loop {
                    let answer = store
                        .apply_bulk_items(&key, claim.token, &order, &mut |_, run| {
                            write(run, |v| v, applier as u64 + 1, by)
                        })
                        .await;
                    match answer {
                        // The batch was refused whole: decide again.
                        Err(StoreError::VersionConflict { .. }) if retries < 1000 => retries += 1,
                        Err(err)
                            if err.is_retryable() && caps.retryable_errors_under_contention() && retries < 1000 =>
                        {
                            retries += 1;
                        }
                        outcome => return (order, outcome),
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        for task in tasks {
            let (order, answer) = task
                .await
                .map_err(|e| case.fail(AT_MOST_ONCE, format!("an applying task panicked: {e}")))?;
            let answer = case.ok("a racing apply_bulk_items", answer)?;
            let updated: Vec<(TargetGroupId, BulkItemOutcome)> =
                order.iter().map(|id| (*id, BulkItemOutcome::Updated)).collect();
            case.ensure(answer == updated, AT_MOST_ONCE, || {
                format!("round {round}: a racing apply_bulk_items answered {answer:?}, expected every item Updated")
            })?;
        }
        for (run, created) in &runs {
            let records = case.ok("changes after the race", store.changes(&run.key()).await)?;
            let current = case.ok("get after the race", store.get(&run.key()).await)?;
            let once = records.len() == 2
                && records[0] == *created
                && current.as_ref().map(|r| r.version) == run.version.next()
                && current.as_ref().map(|r| r.version) == Some(records[1].version);
            case.ensure(once, AT_MOST_ONCE, || {
                format!(
                    "round {round}: {appliers} appliers over one job: run {} was at version {} and now reads \
                     {:?} with {} change records (versions {}), expected exactly one change",
                    run.key(),
                    run.version,
                    current.as_ref().map(|r| r.version),
                    records.len(),
                    sample::versions(&records)
                )
            })?;
        }
        let updated: Vec<(TargetGroupId, BulkItemOutcome)> =
            items.iter().map(|id| (*id, BulkItemOutcome::Updated)).collect();
        let settled = with_outcomes(&job, &updated, BulkJobStatus::Processing);
        read(
            case,
            &*store,
            AT_MOST_ONCE,
            &job.key(),
            Some(&settled),
            "after the race",
        )
        .await?;
        finish(
            case,
            &*store,
            AT_MOST_ONCE,
            &job.key(),
            claim.token,
            BulkJobStatus::Completed,
            true,
        )
        .await?;
    }
    Ok(())
}
