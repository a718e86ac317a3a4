//! The promises of bulk jobs outside `apply_bulk_items`: every field and
//! item round trips in order, an idempotency key names one bulk job per
//! account (also under concurrency), a job is found only through its own
//! account and project, claims take unheld processing jobs oldest first
//! and hand each to one runner, renewals and finishing need the holding
//! token.
//!
//! A factory may hand every case the same database (see
//! [`crate::StoreFactory`]), so a claim may return a job some other case
//! left processing. [`claim_ours`] finishes such a leftover and claims
//! again, so the cases only ever judge the claims of their own jobs.

use std::sync::Arc;

use fielding_core::{
    BulkAction, BulkClaim, BulkItemFailure, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey, BulkJobStatus,
    ClaimToken, FieldingStore, ItemUpdate, JobCreated, JobId, JobTraceId, Scope, StoreError, TargetGroupId, Timestamp,
};
use tokio::sync::Barrier;

use crate::cases::jobs::{fresh_key, launch};
use crate::failure::Case;
use crate::sample::{self, at, BASE_MILLIS};
use crate::{Capabilities, CaseFailure};

const BULK_ROUND_TRIP: &str =
    "a bulk job reads back (get_bulk_job, claim_bulk_job, create_bulk_job's Existing) exactly as written: id, account, project, action, idempotency key, created_at to the millisecond, created_by, trace id, status, and every item in submission order with its outcome";

const BULK_KEY_PER_ACCOUNT: &str =
    "an idempotency key names one bulk job per account: create_bulk_job with a key the account already used for a bulk job writes nothing and answers Existing(the stored job), whatever the project, action or items; the same key in another account, or used by a creation job, is no obstacle";

const ONE_BULK_JOB_PER_KEY: &str =
    "of concurrent create_bulk_job calls with one account and idempotency key, exactly one answers Created and every other answers Existing(that job)";

const BULK_SCOPE_ISOLATION: &str =
    "a bulk job is found only through its own account and project: through any other, get_bulk_job answers None, and renew_bulk_claim, finish_bulk_job and apply_bulk_items do nothing even with the holding token";

const CLAIM: &str =
    "claim_bulk_job takes a Processing bulk job nobody holds (never claimed, or its lease ended at or before now), oldest first, gives it to the new token and answers it as stored; a job whose lease has not ended, or a finished one, is not taken";

const ONE_CLAIM_PER_JOB: &str =
    "of concurrent claim_bulk_job calls, each job goes to exactly one claimer, whose token then holds it";

const RENEW: &str =
    "renew_bulk_claim moves the lease (later or earlier) only for the token that holds the job and answers true; any other token, a taken-over one, or a finished job answers false and changes nothing";

const FINISH: &str =
    "finish_bulk_job records the status only for the holding token and answers true; it ends the claim: the token can no longer renew, apply or finish, and the job is never claimed again; any other token answers false and changes nothing";

/// The outcome of an item whose target group has no run.
pub(crate) const NOT_FOUND: BulkItemOutcome = BulkItemOutcome::Failed(BulkItemFailure::TargetGroupNotFound);

/// The outcome of an item whose run refuses the action.
pub(crate) const NOT_ALLOWED: BulkItemOutcome = BulkItemOutcome::Failed(BulkItemFailure::StatusTransitionNotAllowed);

/// The `now` of the cases' claims.
pub(crate) fn now() -> Timestamp {
    at(BASE_MILLIS)
}

/// When the cases' leases end: 30 s after [`now`].
pub(crate) fn lease_end() -> Timestamp {
    at(BASE_MILLIS + 30_000)
}

/// A year in milliseconds (of 365 days).
const YEAR: i64 = 365 * 86_400_000;

/// A fresh claim until [`lease_end`].
pub(crate) fn claim() -> BulkClaim {
    BulkClaim {
        token: ClaimToken::generate(),
        lease_until: lease_end(),
    }
}

/// A bulk job of `action` over `target_groups` in the account and project
/// of `scope`, with every field distinct: the public fixture with an
/// odd-millisecond creation time and a trace id.
pub(crate) fn bulk_job(scope: Scope, action: BulkAction, target_groups: &[TargetGroupId]) -> BulkJob {
    BulkJob {
        created_at: at(BASE_MILLIS + (sample::random_u64() % 1_000_000) as i64),
        trace_id: JobTraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736"),
        ..crate::fixtures::bulk_job(scope, &fresh_key("bulk"), action, target_groups)
    }
}

/// `count` fresh target group ids.
pub(crate) fn target_groups(count: usize) -> Vec<TargetGroupId> {
    (0..count).map(|_| crate::fixtures::target_group_id()).collect()
}

/// The key of `job` with the account or project replaced by `scope`'s.
pub(crate) fn key_in(job: &BulkJob, scope: &Scope) -> BulkJobKey {
    BulkJobKey {
        account_id: scope.account_id,
        project_id: scope.project_id,
        id: job.id,
    }
}

/// The two addresses of `job` that differ from its own in exactly one
/// part, named.
pub(crate) fn wrong_keys(job: &BulkJob) -> [(&'static str, BulkJobKey); 2] {
    let scope = Scope::new(job.account_id, job.project_id, crate::fixtures::target_group_id());
    [
        ("another account", key_in(job, &sample::other_account(scope))),
        ("another project", key_in(job, &sample::other_project(scope))),
    ]
}

/// `job` as stored once `outcomes` are recorded (`status` set).
pub(crate) fn with_outcomes(
    job: &BulkJob,
    outcomes: &[(TargetGroupId, BulkItemOutcome)],
    status: BulkJobStatus,
) -> BulkJob {
    let mut out = job.clone();
    for item in &mut out.items {
        if let Some((_, outcome)) = outcomes.iter().find(|(id, _)| *id == item.target_group_id) {
            item.outcome = Some(*outcome);
        }
    }
    out.status = status;
    out
}

pub(crate) async fn create<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    job: &BulkJob,
) -> Result<(), CaseFailure> {
    let created = case.ok(format!("create_bulk_job({})", job.id), store.create_bulk_job(job).await)?;
    case.ensure(created == BulkJobCreated::Created, promise, || {
        format!(
            "create_bulk_job of a new bulk job {} with a new key answered {created:?}, expected Created",
            job.id
        )
    })
}

/// `get_bulk_job(key)` must answer exactly `expected`.
pub(crate) async fn read<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    key: &BulkJobKey,
    expected: Option<&BulkJob>,
    when: &str,
) -> Result<(), CaseFailure> {
    let seen = case.ok(format!("get_bulk_job({key}) {when}"), store.get_bulk_job(key).await)?;
    case.ensure(seen.as_ref() == expected, promise, || {
        format!("get_bulk_job({key}) {when}: {}", job_diff(expected, seen.as_ref()))
    })
}

/// How `seen` differs from `expected`, for messages (a job may have
/// thousands of items: name the first that differs, not all of them).
pub(crate) fn job_diff(expected: Option<&BulkJob>, seen: Option<&BulkJob>) -> String {
    let (e, s) = match (expected, seen) {
        (Some(e), Some(s)) => (e, s),
        (e, s) => {
            let brief =
                |job: Option<&BulkJob>| job.map_or("nothing".to_owned(), |j| format!("{} ({:?})", j.key(), j.status));
            return format!("expected {}, read {}", brief(e), brief(s));
        }
    };
    let mut out = Vec::new();
    macro_rules! field {
        ($name:ident) => {
            if e.$name != s.$name {
                out.push(format!(
                    concat!(stringify!($name), ": wrote {:?}, read back {:?}"),
                    e.$name, s.$name
                ));
            }
        };
    }
    field!(id);
    field!(account_id);
    field!(project_id);
    field!(action);
    field!(idempotency_key);
    field!(created_at);
    field!(created_by);
    field!(trace_id);
    field!(status);
    if e.items.len() != s.items.len() {
        out.push(format!("{} items expected, {} read back", e.items.len(), s.items.len()));
    }
    if let Some(i) = (0..e.items.len().min(s.items.len())).find(|&i| e.items[i] != s.items[i]) {
        out.push(format!(
            "item #{i} differs: expected {:?}, read back {:?}",
            e.items[i], s.items[i]
        ));
    }
    if out.is_empty() {
        "no field differs".into()
    } else {
        out.join("; ")
    }
}

/// How many leftovers of other cases [`claim_ours`] finishes before it
/// calls the store's claims endless.
const MAX_LEFTOVERS: usize = 1_000;

/// `claim_bulk_job(now, claim)`, restricted to `ours`: a job of another
/// case (on a store shared between cases) is finished and the claim
/// repeated. `None` when none of `ours` can be taken.
pub(crate) async fn claim_ours<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    now: Timestamp,
    claim: &BulkClaim,
    ours: &[JobId],
) -> Result<Option<BulkJob>, CaseFailure> {
    for _ in 0..MAX_LEFTOVERS {
        let taken = case.ok(
            format!("claim_bulk_job({now}, {})", claim.token),
            store.claim_bulk_job(now, claim).await,
        )?;
        let Some(job) = taken else { return Ok(None) };
        if ours.contains(&job.id) {
            return Ok(Some(job));
        }
        discard(case, store, &job, claim.token).await?;
    }
    Err(case.fail(
        CLAIM,
        format!("claim_bulk_job answered {MAX_LEFTOVERS} jobs in a row that it had just been told were finished"),
    ))
}

/// Finishes `job`, left processing by another case and just claimed with
/// `token`, so later claims do not take it again. Finished now, far from
/// the year-2000 window of the expiry case.
async fn discard<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    job: &BulkJob,
    token: ClaimToken,
) -> Result<(), CaseFailure> {
    let done = case.ok(
        format!("finish_bulk_job({}) of a leftover job", job.id),
        store
            .finish_bulk_job(&job.key(), token, BulkJobStatus::Failed, now())
            .await,
    )?;
    case.ensure(done, CLAIM, || {
        format!(
            "finish_bulk_job with the token that just claimed {} answered false",
            job.key()
        )
    })
}

/// Claims `job` (the only processing job of ours) with a fresh token; the
/// claim must succeed and answer the job as stored.
pub(crate) async fn claim_job<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    job: &BulkJob,
) -> Result<BulkClaim, CaseFailure> {
    let claim = claim();
    let taken = claim_ours(case, store, now(), &claim, &[job.id]).await?;
    case.ensure(taken.as_ref() == Some(job), CLAIM, || {
        format!(
            "claim_bulk_job with only {} of ours processing and unheld: {}",
            job.key(),
            job_diff(Some(job), taken.as_ref())
        )
    })?;
    Ok(claim)
}

/// `finish_bulk_job(key, token, status, at)` must answer `expected`.
pub(crate) async fn finish<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    key: &BulkJobKey,
    token: ClaimToken,
    status: BulkJobStatus,
    finished_at: Timestamp,
    expected: bool,
) -> Result<(), CaseFailure> {
    let done = case.ok(
        format!("finish_bulk_job({key}, {token})"),
        store.finish_bulk_job(key, token, status, finished_at).await,
    )?;
    case.ensure(done == expected, promise, || {
        format!("finish_bulk_job({key}, {token}, {status:?}) answered {done}, expected {expected}")
    })
}

/// `renew_bulk_claim(key, claim)` must answer `expected`.
async fn renew<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    key: &BulkJobKey,
    claim: &BulkClaim,
    expected: bool,
    when: &str,
) -> Result<(), CaseFailure> {
    let renewed = case.ok(
        format!("renew_bulk_claim({key}, {}) {when}", claim.token),
        store.renew_bulk_claim(key, claim).await,
    )?;
    case.ensure(renewed == expected, promise, || {
        format!(
            "renew_bulk_claim({key}) with token {} {when} answered {renewed}, expected {expected}",
            claim.token
        )
    })
}

/// `apply_bulk_items` with `token` must be refused with `ClaimLost` naming
/// `key` and `token`, without calling `decide`.
pub(crate) async fn refused_apply<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    key: &BulkJobKey,
    token: ClaimToken,
    items: &[TargetGroupId],
    when: &str,
) -> Result<(), CaseFailure> {
    let mut calls = 0;
    let answer = store
        .apply_bulk_items(key, token, items, &mut |_, _| {
            calls += 1;
            ItemUpdate::Record(BulkItemOutcome::Updated)
        })
        .await;
    let right = matches!(&answer, Err(StoreError::ClaimLost { key: k, token: t }) if k == key && *t == token);
    case.ensure(right && calls == 0, promise, || {
        format!(
            "apply_bulk_items({key}) with token {token} {when} answered {answer:?} after {calls} calls of decide; \
             expected ClaimLost {{ key: {key}, token: {token} }} without calling decide"
        )
    })
}

/// Every field, and thousands of items in order, read back exactly, also
/// once outcomes and a final status are recorded.
pub async fn bulk_job_round_trip_preserves_every_field_and_item_order<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("bulk_job_round_trip_preserves_every_field_and_item_order");
    let store = &*store;
    let long_key = format!("{}~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{{|}}", fresh_key("k"));
    let long_key: String = long_key.chars().chain(std::iter::repeat('z')).take(255).collect();
    // The largest job allowed, ids in random (not sorted) order, so a store
    // that reads items back by id instead of by position is caught.
    let mut largest = bulk_job(
        sample::scope(),
        BulkAction::Complete,
        &target_groups(BulkJob::MAX_TARGET_GROUPS),
    );
    largest.idempotency_key = fielding_core::IdempotencyKey::parse(&long_key)
        .map_err(|err| case.fail(BULK_ROUND_TRIP, format!("the case's own key is invalid: {err}")))?;
    let mut jobs = vec![largest];
    for (i, action) in BulkAction::ALL.into_iter().enumerate() {
        let mut job = bulk_job(sample::scope(), action, &target_groups(1 + i * 3));
        if i % 2 == 1 {
            job.trace_id = None;
        }
        jobs.push(job);
    }
    jobs[1].created_at = at(1);
    for (n, job) in jobs.iter().enumerate() {
        create(case, store, BULK_ROUND_TRIP, job).await?;
        read(
            case,
            store,
            BULK_ROUND_TRIP,
            &job.key(),
            Some(job),
            "after create_bulk_job",
        )
        .await?;
        let claim = claim_job(case, store, job).await?;
        // Every kind of outcome, on a spread of items (every item of the
        // small jobs, every 37th of the largest).
        let step = if job.items.len() > 100 { 37 } else { 1 };
        let chosen: Vec<TargetGroupId> = job.items.iter().step_by(step).map(|i| i.target_group_id).collect();
        let kinds = [BulkItemOutcome::Updated, NOT_FOUND, NOT_ALLOWED];
        let planned: Vec<(TargetGroupId, BulkItemOutcome)> = chosen
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, kinds[(i + n) % kinds.len()]))
            .collect();
        let mut next = planned.iter();
        let answer = case.ok(
            format!("apply_bulk_items({}) recording outcomes", job.id),
            store
                .apply_bulk_items(&job.key(), claim.token, &chosen, &mut |_, _| {
                    ItemUpdate::Record(next.next().map_or(NOT_FOUND, |(_, outcome)| *outcome))
                })
                .await,
        )?;
        case.ensure(answer == planned, BULK_ROUND_TRIP, || {
            format!("apply_bulk_items recording outcomes answered {answer:?}, expected {planned:?}")
        })?;
        let applied = with_outcomes(job, &planned, BulkJobStatus::Processing);
        read(
            case,
            store,
            BULK_ROUND_TRIP,
            &job.key(),
            Some(&applied),
            "after apply_bulk_items",
        )
        .await?;
        let status = if n % 2 == 0 {
            BulkJobStatus::Completed
        } else {
            BulkJobStatus::Failed
        };
        finish(
            case,
            store,
            BULK_ROUND_TRIP,
            &job.key(),
            claim.token,
            status,
            now(),
            true,
        )
        .await?;
        let done = with_outcomes(job, &planned, status);
        read(
            case,
            store,
            BULK_ROUND_TRIP,
            &job.key(),
            Some(&done),
            "after finish_bulk_job",
        )
        .await?;
        let replay = BulkJob {
            id: JobId::generate(),
            ..job.clone()
        };
        let again = case.ok("create_bulk_job with a used key", store.create_bulk_job(&replay).await)?;
        case.ensure(again == BulkJobCreated::Existing(done.clone()), BULK_ROUND_TRIP, || {
            let seen = match &again {
                BulkJobCreated::Existing(job) => job_diff(Some(&done), Some(job)),
                BulkJobCreated::Created => "Created".to_owned(),
            };
            format!("create_bulk_job with a used key must answer Existing(the stored job): {seen}")
        })?;
    }
    Ok(())
}

/// A used key answers the stored bulk job; another account's identical
/// key, and a creation job's, are independent.
pub async fn bulk_idempotency_key_is_unique_per_account<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("bulk_idempotency_key_is_unique_per_account");
    let store = &*store;
    let scope = sample::scope();
    // A creation job holds the key first: another namespace.
    let key = fresh_key("bulk-key");
    let creation = crate::fixtures::job(scope, &key, launch(BASE_MILLIS + 5_000));
    let created = case.ok("create_job", store.create_job(&creation).await)?;
    case.ensure(created == JobCreated::Created, BULK_KEY_PER_ACCOUNT, || {
        format!("create_job with a new key answered {created:?}")
    })?;
    let first = BulkJob {
        idempotency_key: creation.idempotency_key.clone(),
        ..bulk_job(scope, BulkAction::Pause, &target_groups(3))
    };
    create(case, store, BULK_KEY_PER_ACCOUNT, &first).await?;
    read(
        case,
        store,
        BULK_KEY_PER_ACCOUNT,
        &first.key(),
        Some(&first),
        "after create_bulk_job",
    )
    .await?;
    let in_scope = |scope: Scope, action: BulkAction, count: usize| BulkJob {
        idempotency_key: first.idempotency_key.clone(),
        ..bulk_job(scope, action, &target_groups(count))
    };
    let same_account = [
        in_scope(scope, BulkAction::Resume, 2),
        in_scope(sample::other_project(scope), BulkAction::Pause, 3),
        BulkJob {
            id: JobId::generate(),
            ..first.clone()
        },
    ];
    for attempt in &same_account {
        let answer = case.ok(
            format!("create_bulk_job({})", attempt.id),
            store.create_bulk_job(attempt).await,
        )?;
        case.ensure(
            answer == BulkJobCreated::Existing(first.clone()),
            BULK_KEY_PER_ACCOUNT,
            || {
                format!(
                    "create_bulk_job({}) in account {} / project {} with the key of bulk job {} answered {}",
                    attempt.id,
                    attempt.account_id,
                    attempt.project_id,
                    first.id,
                    match &answer {
                        BulkJobCreated::Created => "Created".to_owned(),
                        BulkJobCreated::Existing(job) => format!("Existing({})", job.key()),
                    }
                )
            },
        )?;
        read(
            case,
            store,
            BULK_KEY_PER_ACCOUNT,
            &attempt.key(),
            None,
            "after a refused create_bulk_job",
        )
        .await?;
    }
    let elsewhere = in_scope(sample::other_account(scope), BulkAction::Pause, 3);
    create(case, store, BULK_KEY_PER_ACCOUNT, &elsewhere).await?;
    read(
        case,
        store,
        BULK_KEY_PER_ACCOUNT,
        &elsewhere.key(),
        Some(&elsewhere),
        "after create_bulk_job",
    )
    .await?;
    read(
        case,
        store,
        BULK_KEY_PER_ACCOUNT,
        &first.key(),
        Some(&first),
        "after the other account's job",
    )
    .await?;
    let job = case.ok("get_job of the creation job", store.get_job(&creation.key()).await)?;
    case.ensure(job.as_ref() == Some(&creation), BULK_KEY_PER_ACCOUNT, || {
        format!("the creation job under the same key reads {job:?}, expected {creation:?}")
    })
}

/// Many concurrent submissions of one key: one bulk job.
pub async fn concurrent_bulk_job_creations_with_one_key_have_exactly_one_winner<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("concurrent_bulk_job_creations_with_one_key_have_exactly_one_winner");
    let writers = caps.concurrent_writers();
    for round in 0..8 {
        let scope = sample::scope();
        let key = fielding_core::IdempotencyKey::parse(&fresh_key("bulk-race"))
            .map_err(|err| case.fail(ONE_BULK_JOB_PER_KEY, format!("the case's own key is invalid: {err}")))?;
        let candidates: Vec<BulkJob> = (0..writers)
            .map(|i| BulkJob {
                idempotency_key: key.clone(),
                ..bulk_job(
                    scope,
                    BulkAction::ALL[i % BulkAction::ALL.len()],
                    &target_groups(1 + i % 4),
                )
            })
            .collect();
        let barrier = Arc::new(Barrier::new(writers));
        let mut tasks = Vec::new();
        for candidate in candidates.clone() {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut retries = 0;
                loop {
                    match store.create_bulk_job(&candidate).await {
                        Err(err)
                            if err.is_retryable() && caps.retryable_errors_under_contention() && retries < 1000 =>
                        {
                            retries += 1;
                            tokio::task::yield_now().await;
                        }
                        outcome => return outcome,
                    }
                }
            }));
        }
        let mut outcomes: Vec<Result<BulkJobCreated, StoreError>> = Vec::new();
        for task in tasks {
            outcomes.push(
                task.await
                    .map_err(|e| case.fail(ONE_BULK_JOB_PER_KEY, format!("a creating task panicked: {e}")))?,
            );
        }
        let summary = || {
            outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| match o {
                    Ok(BulkJobCreated::Created) => format!("#{i}: Created"),
                    Ok(BulkJobCreated::Existing(job)) => format!("#{i}: Existing({})", job.id),
                    Err(err) => format!("#{i}: {err}"),
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let winners: Vec<usize> = (0..writers)
            .filter(|&i| matches!(outcomes[i], Ok(BulkJobCreated::Created)))
            .collect();
        let [winner] = winners[..] else {
            return Err(case.fail(
                ONE_BULK_JOB_PER_KEY,
                format!(
                    "round {round}: {} of {writers} answered Created: {}",
                    winners.len(),
                    summary()
                ),
            ));
        };
        let stored = &candidates[winner];
        for (i, outcome) in outcomes.iter().enumerate() {
            let right = i == winner || matches!(outcome, Ok(BulkJobCreated::Existing(job)) if job == stored);
            case.ensure(right, ONE_BULK_JOB_PER_KEY, || {
                format!("round {round}: bulk job #{winner} won, but {}", summary())
            })?;
            if i != winner {
                let loser = &candidates[i];
                read(
                    case,
                    &*store,
                    ONE_BULK_JOB_PER_KEY,
                    &loser.key(),
                    None,
                    "after losing the race",
                )
                .await?;
            }
        }
        read(
            case,
            &*store,
            ONE_BULK_JOB_PER_KEY,
            &stored.key(),
            Some(stored),
            "after the race",
        )
        .await?;
    }
    Ok(())
}

/// Through another account or project a job is invisible and untouchable,
/// even to the holder of its claim.
pub async fn bulk_job_scope_isolation_hides_the_job_from_every_other_account_and_project<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("bulk_job_scope_isolation_hides_the_job_from_every_other_account_and_project");
    let store = &*store;
    let job = bulk_job(sample::scope(), BulkAction::Pause, &target_groups(2));
    create(case, store, BULK_SCOPE_ISOLATION, &job).await?;
    let items: Vec<TargetGroupId> = job.pending().collect();
    for (name, wrong) in wrong_keys(&job) {
        read(
            case,
            store,
            BULK_SCOPE_ISOLATION,
            &wrong,
            None,
            &format!("through {name}"),
        )
        .await?;
    }
    let claim = claim_job(case, store, &job).await?;
    for (name, wrong) in wrong_keys(&job) {
        let when = format!("through {name}");
        read(case, store, BULK_SCOPE_ISOLATION, &wrong, None, &when).await?;
        let moved = BulkClaim {
            lease_until: at(BASE_MILLIS + 86_400_000),
            ..claim
        };
        renew(case, store, BULK_SCOPE_ISOLATION, &wrong, &moved, false, &when).await?;
        refused_apply(case, store, BULK_SCOPE_ISOLATION, &wrong, claim.token, &items, &when).await?;
        finish(
            case,
            store,
            BULK_SCOPE_ISOLATION,
            &wrong,
            claim.token,
            BulkJobStatus::Completed,
            now(),
            false,
        )
        .await?;
        read(
            case,
            store,
            BULK_SCOPE_ISOLATION,
            &job.key(),
            Some(&job),
            &format!("after writes {when}"),
        )
        .await?;
    }
    // The lease was not moved through another address: it still ends when
    // it did, so the job can be taken over then.
    let takeover = BulkClaim {
        token: ClaimToken::generate(),
        lease_until: at(BASE_MILLIS + 60_000),
    };
    let taken = claim_ours(case, store, lease_end(), &takeover, &[job.id]).await?;
    case.ensure(taken.as_ref() == Some(&job), BULK_SCOPE_ISOLATION, || {
        format!(
            "a renewal through another address must not move the lease: claim_bulk_job at the lease's end \
             answered {}",
            job_diff(Some(&job), taken.as_ref())
        )
    })?;
    read(
        case,
        store,
        BULK_SCOPE_ISOLATION,
        &job.key(),
        Some(&job),
        "through its own account and project",
    )
    .await?;
    finish(
        case,
        store,
        BULK_SCOPE_ISOLATION,
        &job.key(),
        takeover.token,
        BulkJobStatus::Completed,
        now(),
        true,
    )
    .await?;
    let missing = BulkJobKey {
        id: JobId::generate(),
        ..job.key()
    };
    read(
        case,
        store,
        BULK_SCOPE_ISOLATION,
        &missing,
        None,
        "of an id never stored",
    )
    .await
}

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
        now(),
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
        now(),
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
                now(),
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
        now(),
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
        now(),
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
        now(),
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
        now(),
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
        now(),
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
        now(),
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
