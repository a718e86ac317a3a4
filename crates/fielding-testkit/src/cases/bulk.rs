//! The promises of recording bulk jobs: every field and item round trips
//! in order, an idempotency key names one bulk job per account (also under
//! concurrency), a job is found only through its own account and project;
//! and the helpers every bulk case shares.
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

pub(crate) const CLAIM: &str =
    "claim_bulk_job takes a Processing bulk job nobody holds (never claimed, or its lease ended at or before now), oldest first, gives it to the new token and answers it as stored; a job whose lease has not ended, or a finished one, is not taken";

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
pub(crate) const YEAR: i64 = 365 * 86_400_000;

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
pub(crate) async fn discard<S: FieldingStore + ?Sized>(
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

/// `finish_bulk_job(key, token, status, now())` must answer `expected`.
pub(crate) async fn finish<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    key: &BulkJobKey,
    token: ClaimToken,
    status: BulkJobStatus,
    expected: bool,
) -> Result<(), CaseFailure> {
    let done = case.ok(
        format!("finish_bulk_job({key}, {token})"),
        store.finish_bulk_job(key, token, status, now()).await,
    )?;
    case.ensure(done == expected, promise, || {
        format!("finish_bulk_job({key}, {token}, {status:?}) answered {done}, expected {expected}")
    })
}

/// `renew_bulk_claim(key, claim)` must answer `expected`.
pub(crate) async fn renew<S: FieldingStore + ?Sized>(
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
        finish(case, store, BULK_ROUND_TRIP, &job.key(), claim.token, status, true).await?;
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
