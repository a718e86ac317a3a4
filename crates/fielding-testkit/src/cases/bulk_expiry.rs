//! Bulk job expiry: `expire_bulk_jobs` removes the bulk jobs finished
//! before a cutoff, each with its items and idempotency key, at most
//! `limit` per call, and never a processing one.
//!
//! Like the expiry of creation jobs (see `expiry`), one case working in a
//! window of finish times in the year 2000, which no other case uses (they
//! finish bulk jobs at [`bulk::now`]), so on a store shared between cases
//! it removes only its own jobs.

use std::sync::Arc;

use fielding_core::{BulkAction, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobStatus, FieldingStore, Timestamp};

use crate::cases::bulk::{self, bulk_job, claim_job, create, read, target_groups, with_outcomes};
use crate::failure::Case;
use crate::sample::{self, at};
use crate::{Capabilities, CaseFailure};

const EXPIRY: &str =
    "expire_bulk_jobs(finished_before, limit) removes exactly the bulk jobs finished strictly before finished_before (never a processing one, however old; by finish time, not creation time), at most limit per call, and answers how many it removed";

const KEY_FREED: &str =
    "a bulk job removed by expire_bulk_jobs reads as missing, its items are gone and its idempotency key is free: create_bulk_job with the same key (even the same id) records a new job with its own items, while the key of a bulk job kept still answers Existing";

/// 2000-01-01T00:00:00.000Z: the start of the case's window.
const WINDOW_START: i64 = 946_684_800_000;

/// The cutoff of the case's main sweep, a day into the window.
const CUTOFF: i64 = WINDOW_START + 86_400_000;

/// How many bulk jobs the case makes eligible for the main sweep.
const ELIGIBLE: usize = 6;

/// The `limit` of the main sweep: the eligible jobs need several calls.
const LIMIT: usize = 2;

/// A bulk job of the case, created at `created_millis`, claimed, given an
/// outcome for its first item and finished at `finished_millis`: the job
/// as stored.
async fn plant<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    created_millis: i64,
    finished_millis: i64,
) -> Result<BulkJob, CaseFailure> {
    let mut fresh = bulk_job(sample::scope(), BulkAction::Complete, &target_groups(3));
    fresh.created_at = at(created_millis);
    create(case, store, EXPIRY, &fresh).await?;
    let claim = claim_job(case, store, &fresh).await?;
    let first = [fresh.items[0].target_group_id];
    let answer = case.ok(
        format!("apply_bulk_items({})", fresh.id),
        store
            .apply_bulk_items(&fresh.key(), claim.token, &first, &mut |_, _| {
                fielding_core::ItemUpdate::Record(BulkItemOutcome::Updated)
            })
            .await,
    )?;
    let outcomes = [(first[0], BulkItemOutcome::Updated)];
    case.ensure(answer == outcomes, EXPIRY, || {
        format!("apply_bulk_items recording an outcome answered {answer:?}, expected {outcomes:?}")
    })?;
    let finished = case.ok(
        format!("finish_bulk_job({})", fresh.id),
        store
            .finish_bulk_job(&fresh.key(), claim.token, BulkJobStatus::Completed, at(finished_millis))
            .await,
    )?;
    case.ensure(finished, EXPIRY, || {
        format!("finish_bulk_job by the holder of {} answered false", fresh.key())
    })?;
    Ok(with_outcomes(&fresh, &outcomes, BulkJobStatus::Completed))
}

/// `expire_bulk_jobs(before, limit)`, repeated until it answers less than
/// `limit`: every answer, in order.
async fn sweep<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    before: Timestamp,
    limit: usize,
) -> Result<Vec<usize>, CaseFailure> {
    let call = format!("expire_bulk_jobs({before}, {limit})");
    crate::cases::check::sweep(case, EXPIRY, &call, limit, || store.expire_bulk_jobs(before, limit)).await
}

/// Which of `jobs` still read back exactly as stored; fails if one reads
/// back as anything else than itself or nothing.
async fn present<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    jobs: &[&BulkJob],
    when: &str,
) -> Result<Vec<bool>, CaseFailure> {
    let mut out = Vec::with_capacity(jobs.len());
    for stored in jobs {
        let seen = case.ok(
            format!("get_bulk_job({}) {when}", stored.id),
            store.get_bulk_job(&stored.key()).await,
        )?;
        case.ensure(seen.is_none() || seen.as_ref() == Some(*stored), EXPIRY, || {
            format!(
                "get_bulk_job({}) {when}: expected the job or nothing: {}",
                stored.id,
                bulk::job_diff(Some(stored), seen.as_ref())
            )
        })?;
        out.push(seen.is_some());
    }
    Ok(out)
}

/// Old finished bulk jobs go in batches of `limit` with their items and
/// keys; one finished at the cutoff, one created long ago but finished
/// late, and an ancient processing one stay.
pub async fn expire_bulk_jobs_removes_old_finished_bulk_jobs_with_their_items_and_keys_in_bounded_batches<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case =
        Case::new("expire_bulk_jobs_removes_old_finished_bulk_jobs_with_their_items_and_keys_in_bounded_batches");
    let store = &*store;
    // What an earlier, interrupted run on a shared store may have left in
    // the window.
    sweep(case, store, at(CUTOFF + 86_400_000), 1_000).await?;

    let mut eligible = Vec::new();
    for i in 0..ELIGIBLE {
        let created = WINDOW_START + i as i64;
        eligible.push(plant(case, store, created, WINDOW_START + 1_000 + i as i64).await?);
    }
    // Created as early as the others, finished exactly at the cutoff.
    let at_cutoff = plant(case, store, WINDOW_START + 20, CUTOFF).await?;
    // Created long before the window, finished after the cutoff.
    let late = plant(case, store, WINDOW_START - 86_400_000, CUTOFF + 3_600_000).await?;
    // Older than everything, and still processing (created last, so the
    // claims above never took it).
    let mut processing = bulk_job(sample::scope(), BulkAction::Pause, &target_groups(2));
    processing.created_at = at(WINDOW_START - 2 * 86_400_000);
    create(case, store, EXPIRY, &processing).await?;

    let none = case.ok(
        "expire_bulk_jobs(cutoff, 0)",
        store.expire_bulk_jobs(at(CUTOFF), 0).await,
    )?;
    let everything: Vec<&BulkJob> = eligible.iter().chain([&at_cutoff, &late, &processing]).collect();
    let left = present(case, store, &everything, "after expire_bulk_jobs with limit 0").await?;
    case.ensure(none == 0 && left.iter().all(|p| *p), EXPIRY, || {
        format!("expire_bulk_jobs with limit 0 answered {none} and left {left:?}")
    })?;

    // Batch by batch: each answer is at most the limit, and exactly as many
    // eligible jobs are gone as the answers add up to.
    let eligible_refs: Vec<&BulkJob> = eligible.iter().collect();
    let mut answers = Vec::new();
    let mut removed = 0;
    while answers.len() < crate::cases::check::MAX_SWEEP_CALLS {
        let answer = case.ok(
            format!("expire_bulk_jobs(cutoff, {LIMIT}) #{}", answers.len()),
            store.expire_bulk_jobs(at(CUTOFF), LIMIT).await,
        )?;
        answers.push(answer);
        removed += answer;
        let gone = present(case, store, &eligible_refs, "during the sweep")
            .await?
            .iter()
            .filter(|p| !**p)
            .count();
        case.ensure(gone == removed.min(ELIGIBLE), EXPIRY, || {
            format!(
                "expire_bulk_jobs answered {answers:?} so far, but {gone} of the {ELIGIBLE} old finished jobs are gone"
            )
        })?;
        if answer < LIMIT {
            break;
        }
    }
    case.ensure(answers == [2, 2, 2, 0], EXPIRY, || {
        format!(
            "{ELIGIBLE} bulk jobs finished before the cutoff, one at it, one after, one old job processing: \
             expire_bulk_jobs(cutoff, {LIMIT}) answered {answers:?}, expected [2, 2, 2, 0]"
        )
    })?;
    let kept = present(case, store, &[&at_cutoff, &late, &processing], "after the sweep").await?;
    case.ensure(kept == [true, true, true], EXPIRY, || {
        format!(
            "after the sweep, the jobs finished at and after the cutoff and the processing job read as present: \
             {kept:?}, expected all three"
        )
    })?;

    // The key and the id of a removed job are free, and none of its items
    // is left to come back with the new job.
    let reuse = BulkJob {
        status: BulkJobStatus::Processing,
        items: eligible[0]
            .items
            .iter()
            .map(|item| fielding_core::BulkItem { outcome: None, ..*item })
            .collect(),
        ..eligible[0].clone()
    };
    create(case, store, KEY_FREED, &reuse).await?;
    read(
        case,
        store,
        KEY_FREED,
        &reuse.key(),
        Some(&reuse),
        "after reusing an expired job's key and id",
    )
    .await?;
    let replay = BulkJob {
        id: fielding_core::JobId::generate(),
        ..at_cutoff.clone()
    };
    let answer = case.ok("create_bulk_job with a kept key", store.create_bulk_job(&replay).await)?;
    case.ensure(answer == BulkJobCreated::Existing(at_cutoff.clone()), KEY_FREED, || {
        format!(
            "create_bulk_job with the key of kept bulk job {} answered {answer:?}",
            at_cutoff.id
        )
    })?;

    // One millisecond later the job finished at the old cutoff goes too;
    // the processing jobs (the ancient one, the new one under a reused
    // key) and the late one stay.
    let last = sweep(case, store, at(CUTOFF + 1), LIMIT).await?;
    let left = present(
        case,
        store,
        &[&at_cutoff, &late, &processing, &reuse],
        "after the last sweep",
    )
    .await?;
    case.ensure(last == [1] && left == [false, true, true, true], EXPIRY, || {
        format!(
            "expire_bulk_jobs one millisecond past the finish of the last old job answered {last:?} (expected \
             [1]); the job, the late one, the processing one and the new one read as present: {left:?}, expected \
             [false, true, true, true]"
        )
    })?;
    Ok(())
}
