//! The promises of claims: `claim_bulk_job` takes unheld processing bulk
//! jobs oldest first, respects leases to the millisecond, replaces the
//! token and hands each job to one runner; renewals and finishing need the
//! holding token, and finishing ends the claim for good.

use std::sync::Arc;

use fielding_core::{
    BulkAction, BulkClaim, BulkItemOutcome, BulkJob, BulkJobStatus, ClaimToken, FieldingStore, ItemUpdate,
    TargetGroupId, Timestamp,
};
use tokio::sync::Barrier;

use crate::cases::bulk::{
    bulk_job, claim, claim_job, claim_ours, create, discard, finish, job_diff, lease_end, now, read, refused_apply,
    renew, target_groups, with_outcomes, CLAIM, NOT_FOUND, YEAR,
};
use crate::failure::Case;
use crate::sample::{self, at, BASE_MILLIS};
use crate::{Capabilities, CaseFailure};

const ONE_CLAIM_PER_JOB: &str =
    "of concurrent claim_bulk_job calls, each job goes to exactly one claimer, whose token then holds it";

const RENEW: &str =
    "renew_bulk_claim moves the lease (later or earlier) only for the token that holds the job and answers true; any other token, a taken-over one, or a finished job answers false and changes nothing";

const FINISH: &str =
    "finish_bulk_job records the status only for the holding token and answers true; it ends the claim: the token can no longer renew, apply or finish, and the job is never claimed again; any other token answers false and changes nothing";

/// Claims take the oldest unheld processing job, respect leases to the
/// millisecond, replace the token, and never take a finished job.
pub async fn claim_takes_unheld_processing_bulk_jobs_oldest_first_and_respects_leases<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("claim_takes_unheld_processing_bulk_jobs_oldest_first_and_respects_leases");
    let store = &*store;
    let scope = sample::scope();
    // Created newest first, so a store that takes jobs in insertion order
    // instead of by age is caught.
    let base = BASE_MILLIS - 86_400_000;
    let mut newer = bulk_job(scope, BulkAction::Resume, &target_groups(2));
    newer.created_at = at(base + 2);
    let mut older = bulk_job(sample::other_project(scope), BulkAction::Pause, &target_groups(3));
    older.created_at = at(base + 1);
    create(case, store, CLAIM, &newer).await?;
    create(case, store, CLAIM, &older).await?;
    let ours = [older.id, newer.id];

    let first = claim();
    let taken = claim_ours(case, store, now(), &first, &ours).await?;
    case.ensure(taken.as_ref() == Some(&older), CLAIM, || {
        format!(
            "the first claim must take the older of two unheld jobs ({}): {}",
            older.id,
            job_diff(Some(&older), taken.as_ref())
        )
    })?;
    let second = claim();
    let taken = claim_ours(case, store, now(), &second, &ours).await?;
    case.ensure(taken.as_ref() == Some(&newer), CLAIM, || {
        format!(
            "the second claim must take the other unheld job ({}): {}",
            newer.id,
            job_diff(Some(&newer), taken.as_ref())
        )
    })?;
    // Both held until `lease_end()`: nothing to take a millisecond before.
    let early = claim();
    let just_before = at(BASE_MILLIS + 29_999);
    let taken = claim_ours(case, store, just_before, &early, &ours).await?;
    case.ensure(taken.is_none(), CLAIM, || {
        format!(
            "both jobs are held until {}: claim_bulk_job at {just_before} took {}",
            lease_end(),
            job_diff(None, taken.as_ref())
        )
    })?;
    // The lease ends at `lease_end()` itself: the older job goes to the new
    // token, and the old token has lost it.
    let later = BulkClaim {
        token: ClaimToken::generate(),
        lease_until: at(BASE_MILLIS + 90_000),
    };
    let taken = claim_ours(case, store, lease_end(), &later, &ours).await?;
    case.ensure(taken.as_ref() == Some(&older), CLAIM, || {
        format!(
            "at the end of both leases the older job must be taken again: {}",
            job_diff(Some(&older), taken.as_ref())
        )
    })?;
    let items: Vec<TargetGroupId> = older.pending().collect();
    refused_apply(
        case,
        store,
        CLAIM,
        &older.key(),
        first.token,
        &items,
        "after its lease ended and another claim took the job",
    )
    .await?;
    renew(case, store, CLAIM, &older.key(), &later, true, "by the new holder").await?;
    // A finished job is never taken, however late the claim.
    finish(
        case,
        store,
        CLAIM,
        &newer.key(),
        second.token,
        BulkJobStatus::Failed,
        true,
    )
    .await?;
    let late = BulkClaim {
        token: ClaimToken::generate(),
        lease_until: at(BASE_MILLIS + 10 * YEAR),
    };
    let taken = claim_ours(case, store, at(BASE_MILLIS + 86_400_000), &late, &ours).await?;
    case.ensure(taken.as_ref() == Some(&older), CLAIM, || {
        format!(
            "a day later only the unfinished job may be taken: {}",
            job_diff(Some(&older), taken.as_ref())
        )
    })?;
    let after = claim_ours(case, store, at(BASE_MILLIS + YEAR), &claim(), &ours).await?;
    case.ensure(after.is_none(), CLAIM, || {
        format!(
            "one job finished, the other held for ten years: claim_bulk_job a year on took {}",
            job_diff(None, after.as_ref())
        )
    })?;
    finish(
        case,
        store,
        CLAIM,
        &older.key(),
        late.token,
        BulkJobStatus::Completed,
        true,
    )
    .await
}

/// Many runners claim at once: each job goes to exactly one of them.
pub async fn concurrent_claims_hand_each_bulk_job_to_exactly_one_runner<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("concurrent_claims_hand_each_bulk_job_to_exactly_one_runner");
    let claimers = caps.concurrent_writers();
    for round in 0..8 {
        // Fewer jobs than claimers: some claimers must come away empty.
        let count = (round % 3) + 1;
        let jobs: Vec<BulkJob> = (0..count)
            .map(|_| bulk_job(sample::scope(), BulkAction::Launch, &target_groups(1)))
            .collect();
        for job in &jobs {
            create(case, &*store, ONE_CLAIM_PER_JOB, job).await?;
        }
        let barrier = Arc::new(Barrier::new(claimers));
        let mut tasks = Vec::new();
        for _ in 0..claimers {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            let claim = claim();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut retries = 0;
                loop {
                    match store.claim_bulk_job(now(), &claim).await {
                        Err(err)
                            if err.is_retryable() && caps.retryable_errors_under_contention() && retries < 1000 =>
                        {
                            retries += 1;
                            tokio::task::yield_now().await;
                        }
                        outcome => return (claim, outcome),
                    }
                }
            }));
        }
        let mut won: Vec<(BulkClaim, BulkJob)> = Vec::new();
        for task in tasks {
            let (claim, outcome) = task
                .await
                .map_err(|e| case.fail(ONE_CLAIM_PER_JOB, format!("a claiming task panicked: {e}")))?;
            match case.ok("a racing claim_bulk_job", outcome)? {
                Some(job) if jobs.iter().any(|j| j.id == job.id) => won.push((claim, job)),
                Some(leftover) => discard(case, &*store, &leftover, claim.token).await?,
                None => {}
            }
        }
        for job in &jobs {
            let winners: Vec<&(BulkClaim, BulkJob)> = won.iter().filter(|(_, j)| j.id == job.id).collect();
            case.ensure(winners.len() == 1, ONE_CLAIM_PER_JOB, || {
                format!(
                    "round {round}: {claimers} claimers, {count} unheld jobs: {} claims answered {}",
                    winners.len(),
                    job.key()
                )
            })?;
            let (claim, _) = winners[0];
            renew(
                case,
                &*store,
                ONE_CLAIM_PER_JOB,
                &job.key(),
                claim,
                true,
                "by the winner of the race",
            )
            .await?;
            finish(
                case,
                &*store,
                ONE_CLAIM_PER_JOB,
                &job.key(),
                claim.token,
                BulkJobStatus::Completed,
                true,
            )
            .await?;
        }
    }
    Ok(())
}

/// Only the holder renews; a renewal moves the lease both ways.
pub async fn renew_bulk_claim_moves_the_lease_only_for_the_holding_token<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("renew_bulk_claim_moves_the_lease_only_for_the_holding_token");
    let store = &*store;
    let job = bulk_job(sample::scope(), BulkAction::Relaunch, &target_groups(2));
    create(case, store, RENEW, &job).await?;
    let stranger = claim();
    renew(
        case,
        store,
        RENEW,
        &job.key(),
        &stranger,
        false,
        "of a job never claimed",
    )
    .await?;
    let first = claim_job(case, store, &job).await?;
    renew(
        case,
        store,
        RENEW,
        &job.key(),
        &stranger,
        false,
        "with a token that never held the job",
    )
    .await?;
    // Moved later: at the old end of the lease the job is still held.
    let moved = BulkClaim {
        lease_until: at(BASE_MILLIS + 120_000),
        ..first
    };
    renew(case, store, RENEW, &job.key(), &moved, true, "by the holder").await?;
    let taken = claim_ours(case, store, lease_end(), &claim(), &[job.id]).await?;
    case.ensure(taken.is_none(), RENEW, || {
        format!(
            "the lease was renewed until {}: claim_bulk_job at the old end {} took the job",
            moved.lease_until,
            lease_end()
        )
    })?;
    // Moved earlier (the early release of a runner that stops).
    let released = BulkClaim {
        lease_until: now(),
        ..first
    };
    renew(case, store, RENEW, &job.key(), &released, true, "to release the job").await?;
    let second = claim();
    let taken = claim_ours(case, store, now(), &second, &[job.id]).await?;
    case.ensure(taken.as_ref() == Some(&job), RENEW, || {
        format!(
            "the holder released the job by renewing to {}: claim_bulk_job then must take it: {}",
            released.lease_until,
            job_diff(Some(&job), taken.as_ref())
        )
    })?;
    renew(
        case,
        store,
        RENEW,
        &job.key(),
        &moved,
        false,
        "by the holder the job was taken from",
    )
    .await?;
    renew(case, store, RENEW, &job.key(), &second, true, "by the new holder").await?;
    finish(
        case,
        store,
        RENEW,
        &job.key(),
        second.token,
        BulkJobStatus::Completed,
        true,
    )
    .await?;
    renew(case, store, RENEW, &job.key(), &second, false, "after the job finished").await
}

/// Only the holder finishes; finishing ends the claim for good.
pub async fn finish_bulk_job_needs_the_holding_token_and_ends_the_claim<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("finish_bulk_job_needs_the_holding_token_and_ends_the_claim");
    let store = &*store;
    let job = bulk_job(sample::scope(), BulkAction::Complete, &target_groups(3));
    let items: Vec<TargetGroupId> = job.pending().collect();
    create(case, store, FINISH, &job).await?;
    let stranger = ClaimToken::generate();
    finish(
        case,
        store,
        FINISH,
        &job.key(),
        stranger,
        BulkJobStatus::Completed,
        false,
    )
    .await?;
    read(
        case,
        store,
        FINISH,
        &job.key(),
        Some(&job),
        "after finish_bulk_job of an unclaimed job",
    )
    .await?;
    let first = claim_job(case, store, &job).await?;
    finish(
        case,
        store,
        FINISH,
        &job.key(),
        stranger,
        BulkJobStatus::Completed,
        false,
    )
    .await?;
    read(
        case,
        store,
        FINISH,
        &job.key(),
        Some(&job),
        "after finish_bulk_job with another token",
    )
    .await?;
    // Taken over after the lease: the first holder cannot finish it.
    let second = BulkClaim {
        token: ClaimToken::generate(),
        lease_until: at(BASE_MILLIS + 90_000),
    };
    let taken = claim_ours(case, store, lease_end(), &second, &[job.id]).await?;
    case.ensure(taken.as_ref() == Some(&job), CLAIM, || {
        format!(
            "the lease ended: claim_bulk_job must take the job over: {}",
            job_diff(Some(&job), taken.as_ref())
        )
    })?;
    finish(
        case,
        store,
        FINISH,
        &job.key(),
        first.token,
        BulkJobStatus::Completed,
        false,
    )
    .await?;
    read(
        case,
        store,
        FINISH,
        &job.key(),
        Some(&job),
        "after finish_bulk_job by the old holder",
    )
    .await?;
    let outcomes: Vec<(TargetGroupId, BulkItemOutcome)> = items.iter().map(|id| (*id, NOT_FOUND)).collect();
    let answer = case.ok(
        "apply_bulk_items by the holder",
        store
            .apply_bulk_items(&job.key(), second.token, &items, &mut |_, _| {
                ItemUpdate::Record(NOT_FOUND)
            })
            .await,
    )?;
    case.ensure(answer == outcomes, FINISH, || {
        format!("apply_bulk_items recording outcomes answered {answer:?}, expected {outcomes:?}")
    })?;
    finish(
        case,
        store,
        FINISH,
        &job.key(),
        second.token,
        BulkJobStatus::Failed,
        true,
    )
    .await?;
    let done = with_outcomes(&job, &outcomes, BulkJobStatus::Failed);
    read(
        case,
        store,
        FINISH,
        &job.key(),
        Some(&done),
        "after finish_bulk_job by the holder",
    )
    .await?;
    // The claim ended with the job.
    finish(
        case,
        store,
        FINISH,
        &job.key(),
        second.token,
        BulkJobStatus::Completed,
        false,
    )
    .await?;
    renew(
        case,
        store,
        FINISH,
        &job.key(),
        &second,
        false,
        "after the job finished",
    )
    .await?;
    refused_apply(
        case,
        store,
        FINISH,
        &job.key(),
        second.token,
        &items,
        "after the job finished",
    )
    .await?;
    let taken = claim_ours(case, store, Timestamp::MAX, &claim(), &[job.id]).await?;
    case.ensure(taken.is_none(), FINISH, || {
        format!("a finished job was claimed again: {}", job_diff(None, taken.as_ref()))
    })?;
    read(
        case,
        store,
        FINISH,
        &job.key(),
        Some(&done),
        "after the finished job was left alone",
    )
    .await
}
