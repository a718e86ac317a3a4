//! Job expiry: `expire_jobs` removes the jobs finished before a cutoff,
//! each with its idempotency key, at most `limit` per call, and never a
//! job still processing.
//!
//! One case, not several: `expire_jobs` reaches every job of the store,
//! so two expiry cases sharing a store (a factory may hand out one
//! database to every case) would remove each other's jobs. The case works
//! in a window of finish times in the year 2000, before any finish time
//! the other cases use (`jobs::finish_time`), so it never reaches their
//! jobs either.

use std::sync::Arc;

use fielding_core::{FieldingRunJob, FieldingStore, JobCreated, JobFailureCode, JobId, JobOutcome, Timestamp};

use crate::cases::jobs::{create, failed, finish_time, finished, fresh_key, job, launch, read};
use crate::failure::Case;
use crate::sample::{self, at, BASE_MILLIS};
use crate::{Capabilities, CaseFailure};

const EXPIRY: &str =
    "expire_jobs(finished_before, limit) removes exactly the jobs whose outcome was recorded strictly before finished_before (never a processing job, however old; by finish time, not creation time; the first outcome's time, not a later finish_job's), at most limit per call, and answers how many it removed";

const KEY_FREED: &str =
    "a job removed by expire_jobs reads as missing and its idempotency key is free: create_job with it records a new job, while the key of a job kept still answers Existing";

/// 2000-01-01T00:00:00.000Z: the start of the case's window.
const WINDOW_START: i64 = 946_684_800_000;

/// The cutoff of the case's main sweep, a day into the window.
const CUTOFF: i64 = WINDOW_START + 86_400_000;

/// How many jobs the case makes eligible for the main sweep.
const ELIGIBLE: usize = 6;

/// The `limit` of the main sweep: the eligible jobs need several calls.
const LIMIT: usize = 2;

/// A job of the case, created at `created_millis` and, when `finish` is
/// given, finished then with that outcome: the job as stored.
async fn plant<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    created_millis: i64,
    finish: Option<(i64, JobOutcome)>,
) -> Result<FieldingRunJob, CaseFailure> {
    let mut fresh = job(sample::scope(), &fresh_key("expiry"), launch(BASE_MILLIS + 86_400_001));
    fresh.created_at = at(created_millis);
    create(case, store, &fresh).await?;
    let Some((finished_millis, outcome)) = finish else {
        return Ok(fresh);
    };
    let done = finished(&fresh, &outcome);
    let answer = case.ok(
        format!("finish_job({})", fresh.id),
        store.finish_job(&fresh.key(), &outcome, at(finished_millis)).await,
    )?;
    case.ensure(answer.as_ref() == Some(&done), EXPIRY, || {
        format!("finish_job of a processing job answered {answer:?}, expected {done:?}")
    })?;
    Ok(done)
}

/// `expire_jobs(before, limit)`, repeated until it answers less than
/// `limit`: every answer, in order.
async fn sweep<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    before: Timestamp,
    limit: usize,
) -> Result<Vec<usize>, CaseFailure> {
    let call = format!("expire_jobs({before}, {limit})");
    crate::cases::check::sweep(case, EXPIRY, &call, limit, || store.expire_jobs(before, limit)).await
}

/// Which of `jobs` still read back exactly as stored; fails if one reads
/// back as anything else than itself or nothing.
async fn present<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    jobs: &[&FieldingRunJob],
    when: &str,
) -> Result<Vec<bool>, CaseFailure> {
    let mut out = Vec::with_capacity(jobs.len());
    for stored in jobs {
        let seen = case.ok(
            format!("get_job({}) {when}", stored.id),
            store.get_job(&stored.key()).await,
        )?;
        case.ensure(seen.is_none() || seen.as_ref() == Some(*stored), EXPIRY, || {
            format!(
                "get_job({}) {when}: expected {stored:?} or nothing, read {seen:?}",
                stored.id
            )
        })?;
        out.push(seen.is_some());
    }
    Ok(out)
}

/// Old finished jobs go in batches of `limit` with their keys; a job
/// finished at the cutoff, one created long ago but finished late, and an
/// ancient processing job stay.
pub async fn expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches");
    let store = &*store;
    // What an earlier, interrupted run on a shared store may have left in
    // the window.
    sweep(case, store, at(CUTOFF + 86_400_000), 1_000).await?;

    let mut eligible = Vec::new();
    for i in 0..ELIGIBLE - 1 {
        let outcome = if i % 2 == 0 {
            JobOutcome::Completed
        } else {
            failed(JobFailureCode::InvalidFieldingDates, "expired")
        };
        let finish = (WINDOW_START + 1_000 + i as i64, outcome);
        eligible.push(plant(case, store, WINDOW_START + i as i64, Some(finish)).await?);
    }
    // Finished early, then told again much later: the first outcome and
    // its time stay, so it is as old as the others.
    let refinished = plant(
        case,
        store,
        WINDOW_START + 10,
        Some((WINDOW_START + 2_000, JobOutcome::Completed)),
    )
    .await?;
    let late = failed(JobFailureCode::TargetGroupInvalidState, "late");
    let again = case.ok(
        "finish_job of a finished job",
        store.finish_job(&refinished.key(), &late, finish_time()).await,
    )?;
    case.ensure(again.as_ref() == Some(&refinished), EXPIRY, || {
        format!("finish_job of a finished job answered {again:?}, expected {refinished:?}")
    })?;
    eligible.push(refinished);
    // Created as early as the others, finished exactly at the cutoff.
    let at_cutoff = plant(case, store, WINDOW_START + 20, Some((CUTOFF, JobOutcome::Completed))).await?;
    // Older than everything, and still processing.
    let processing = plant(case, store, WINDOW_START - 86_400_000, None).await?;

    let none = case.ok("expire_jobs(cutoff, 0)", store.expire_jobs(at(CUTOFF), 0).await)?;
    let everything: Vec<&FieldingRunJob> = eligible.iter().chain([&at_cutoff, &processing]).collect();
    let left = present(case, store, &everything, "after expire_jobs with limit 0").await?;
    case.ensure(none == 0 && left.iter().all(|p| *p), EXPIRY, || {
        format!("expire_jobs with limit 0 answered {none} and left {left:?} of {everything:?}")
    })?;

    // Batch by batch: each answer is at most the limit, and exactly as many
    // eligible jobs are gone as the answers add up to.
    let mut answers = Vec::new();
    let mut removed = 0;
    while answers.len() < crate::cases::check::MAX_SWEEP_CALLS {
        let answer = case.ok(
            format!("expire_jobs(cutoff, {LIMIT}) #{}", answers.len()),
            store.expire_jobs(at(CUTOFF), LIMIT).await,
        )?;
        answers.push(answer);
        removed += answer;
        let eligible_refs: Vec<&FieldingRunJob> = eligible.iter().collect();
        let gone = present(case, store, &eligible_refs, "during the sweep")
            .await?
            .iter()
            .filter(|p| !**p)
            .count();
        case.ensure(gone == removed.min(ELIGIBLE), EXPIRY, || {
            format!("expire_jobs answered {answers:?} so far, but {gone} of the {ELIGIBLE} old finished jobs are gone")
        })?;
        if answer < LIMIT {
            break;
        }
    }
    case.ensure(answers == [2, 2, 2, 0], EXPIRY, || {
        format!(
            "{ELIGIBLE} jobs finished before the cutoff, one finished at it, one old job processing: \
             expire_jobs(cutoff, {LIMIT}) answered {answers:?}, expected [2, 2, 2, 0]"
        )
    })?;
    let kept = present(case, store, &[&at_cutoff, &processing], "after the sweep").await?;
    case.ensure(kept == [true, true], EXPIRY, || {
        format!(
            "after the sweep, the job finished at the cutoff and the processing job read as present: {kept:?}, \
             expected both"
        )
    })?;

    // The keys of removed jobs are free; the key of a kept job is not.
    for gone in &eligible {
        read(case, store, KEY_FREED, &gone.scope, &gone.id, None, "after it expired").await?;
    }
    let reuse = FieldingRunJob {
        id: JobId::generate(),
        state: fielding_core::JobState::Processing,
        created_at: at(BASE_MILLIS),
        ..eligible[0].clone()
    };
    let answer = create(case, store, &reuse).await?;
    case.ensure(answer == JobCreated::Created, KEY_FREED, || {
        format!(
            "create_job with the key of expired job {} answered {answer:?}, expected Created",
            eligible[0].id
        )
    })?;
    read(
        case,
        store,
        KEY_FREED,
        &reuse.scope,
        &reuse.id,
        Some(&reuse),
        "after reusing the key",
    )
    .await?;
    let replay = FieldingRunJob {
        id: JobId::generate(),
        ..at_cutoff.clone()
    };
    let answer = create(case, store, &replay).await?;
    case.ensure(answer == JobCreated::Existing(at_cutoff.clone()), KEY_FREED, || {
        format!(
            "create_job with the key of kept job {} answered {answer:?}",
            at_cutoff.id
        )
    })?;

    // One millisecond later the job finished at the old cutoff goes too;
    // the processing jobs (the ancient one, the new one under a reused key)
    // stay.
    let last = sweep(case, store, at(CUTOFF + 1), LIMIT).await?;
    let left = present(case, store, &[&at_cutoff, &processing, &reuse], "after the last sweep").await?;
    case.ensure(last == [1] && left == [false, true, true], EXPIRY, || {
        format!(
            "expire_jobs one millisecond past the finish of the last old finished job answered {last:?} \
             (expected [1]); the job, the processing job and the new job read as present: {left:?}, \
             expected [false, true, true]"
        )
    })
}
