//! The promises of creation-job records: every field round trips, an
//! idempotency key names one job per account (also under concurrency),
//! jobs are invisible from other scopes, and the first recorded outcome
//! wins.

use std::sync::Arc;

use fielding_core::{
    FieldingRunJob, FieldingStore, JobCreated, JobFailure, JobFailureCode, JobId, JobOutcome, JobRequest, JobState,
    JobTraceId, Scope, StoreError, Timestamp,
};
use tokio::sync::Barrier;

use crate::failure::Case;
use crate::sample::{self, at, BASE_MILLIS};
use crate::{Capabilities, CaseFailure};

const JOB_ROUND_TRIP: &str =
    "a recorded job reads back (get_job, create_job's Existing, finish_job's answer) exactly as written: id, scope, idempotency key, request, planned run id, created_at to the millisecond, created_by, trace id and state with its failure";

const KEY_PER_ACCOUNT: &str =
    "an idempotency key names one job per account: create_job with a key the account already used writes nothing and answers Existing(the stored job), whatever the target group or request; the same key in another account is a new job";

const ONE_JOB_PER_KEY: &str =
    "of concurrent create_job calls with one account and idempotency key, exactly one answers Created and every other answers Existing(that job)";

const JOB_SCOPE_ISOLATION: &str =
    "a job is invisible through a scope that differs in account, project or target group: get_job and finish_job answer None and change nothing";

const FIRST_OUTCOME_WINS: &str =
    "finish_job records an outcome only while the job is Processing and answers the job as stored: the first outcome wins, later ones change nothing, and a missing job is None";

/// When these cases' jobs finish: after the window the expiry case works
/// in (see `expiry`), so that on a store shared between cases its
/// `expire_jobs` calls never reach these jobs.
pub(crate) fn finish_time() -> Timestamp {
    at(BASE_MILLIS)
}

/// A processing job in `scope` under `key`, with every field distinct: the
/// public fixture with an odd-millisecond creation time and a trace id.
pub(crate) fn job(scope: Scope, key: &str, request: JobRequest) -> FieldingRunJob {
    FieldingRunJob {
        created_at: at(BASE_MILLIS + (sample::random_u64() % 1_000_000) as i64),
        trace_id: JobTraceId::parse("0af7651916cd43dd8448eb211c80319c"),
        ..crate::fixtures::job(scope, key, request)
    }
}

pub(crate) fn launch(end_millis: i64) -> JobRequest {
    JobRequest::LaunchFromDraft {
        end_fielding_at: at(end_millis),
    }
}

fn schedule(start_millis: i64, end_millis: i64) -> JobRequest {
    JobRequest::ScheduleFromDraft {
        start_fielding_at: at(start_millis),
        end_fielding_at: at(end_millis),
    }
}

/// A key no other case or run uses.
pub(crate) fn fresh_key(prefix: &str) -> String {
    format!("{prefix}-{:016x}", sample::random_u64())
}

pub(crate) fn failed(code: JobFailureCode, description: &str) -> JobOutcome {
    JobOutcome::Failed(JobFailure {
        code,
        description: description.to_owned(),
    })
}

pub(crate) fn finished(job: &FieldingRunJob, outcome: &JobOutcome) -> FieldingRunJob {
    FieldingRunJob {
        state: JobState::Finished(outcome.clone()),
        ..job.clone()
    }
}

pub(crate) async fn create<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    job: &FieldingRunJob,
) -> Result<JobCreated, CaseFailure> {
    case.ok(format!("create_job({})", job.id), store.create_job(job).await)
}

/// `get_job` must answer exactly `expected`.
pub(crate) async fn read<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    scope: &Scope,
    id: &JobId,
    expected: Option<&FieldingRunJob>,
    when: &str,
) -> Result<(), CaseFailure> {
    let seen = case.ok(format!("get_job({id}) {when}"), store.get_job(&scope.job(*id)).await)?;
    case.ensure(seen.as_ref() == expected, promise, || {
        format!("get_job({id}) through {scope} {when}: expected {expected:?}, read {seen:?}")
    })
}

/// Jobs of both kinds with and without trace ids, odd keys and extreme
/// timestamps read back exactly, before and after they finish.
pub async fn job_round_trip_preserves_every_field<S>(store: Arc<S>, _caps: Capabilities) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("job_round_trip_preserves_every_field");
    let scope = sample::scope();
    let long_key = format!("{}~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{{|}}", fresh_key("k"));
    let long_key: String = long_key.chars().chain(std::iter::repeat('z')).take(255).collect();
    let mut untraced = job(
        sample::scope(),
        &fresh_key("untraced"),
        launch(BASE_MILLIS + 86_400_001),
    );
    untraced.trace_id = None;
    let mut extreme = job(
        sample::scope(),
        &fresh_key("extreme"),
        JobRequest::ScheduleFromDraft {
            start_fielding_at: Timestamp::MIN,
            end_fielding_at: Timestamp::MAX,
        },
    );
    extreme.created_at = at(1);
    let jobs = [
        job(
            scope,
            &long_key,
            schedule(BASE_MILLIS + 1, BASE_MILLIS + 31 * 86_400_000 + 999),
        ),
        untraced,
        extreme,
    ];
    let outcomes = [
        failed(
            JobFailureCode::InvalidFieldingDates,
            "The fielding dates are not valid: end_fielding_at ‘must be after’ \"start\"; ünïcödé ✓",
        ),
        JobOutcome::Completed,
        failed(JobFailureCode::TargetGroupInvalidState, ""),
    ];
    for (job, outcome) in jobs.iter().zip(&outcomes) {
        let created = create(case, &*store, job).await?;
        case.ensure(created == JobCreated::Created, JOB_ROUND_TRIP, || {
            format!("create_job of a new job with a new key answered {created:?}, expected Created")
        })?;
        read(
            case,
            &*store,
            JOB_ROUND_TRIP,
            &job.scope,
            &job.id,
            Some(job),
            "after create_job",
        )
        .await?;
        let done = finished(job, outcome);
        let answered = case.ok(
            format!("finish_job({})", job.id),
            store.finish_job(&job.key(), outcome, finish_time()).await,
        )?;
        case.ensure(answered.as_ref() == Some(&done), JOB_ROUND_TRIP, || {
            format!("finish_job answered {answered:?}, expected {done:?}")
        })?;
        read(
            case,
            &*store,
            JOB_ROUND_TRIP,
            &job.scope,
            &job.id,
            Some(&done),
            "after finish_job",
        )
        .await?;
        let replay = FieldingRunJob {
            id: JobId::generate(),
            ..job.clone()
        };
        let again = create(case, &*store, &replay).await?;
        case.ensure(again == JobCreated::Existing(done.clone()), JOB_ROUND_TRIP, || {
            format!("create_job with a used key answered {again:?}, expected Existing({done:?})")
        })?;
    }
    Ok(())
}

/// A used key answers the stored job, whatever the new request; another
/// account's identical key is independent.
pub async fn job_idempotency_key_is_unique_per_account<S>(store: Arc<S>, _caps: Capabilities) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("job_idempotency_key_is_unique_per_account");
    let scope = sample::scope();
    let key = fresh_key("per-account");
    let first = job(scope, &key, launch(BASE_MILLIS + 5_000));
    create(case, &*store, &first).await?;
    let [(_, other_account), (_, other_project), (_, other_target_group)] = sample::neighbours(scope);
    let same_account = [
        job(scope, &key, schedule(BASE_MILLIS + 1_000, BASE_MILLIS + 9_000)),
        job(other_project, &key, launch(BASE_MILLIS + 5_000)),
        job(other_target_group, &key, launch(BASE_MILLIS + 7_000)),
    ];
    for attempt in &same_account {
        let answer = create(case, &*store, attempt).await?;
        case.ensure(answer == JobCreated::Existing(first.clone()), KEY_PER_ACCOUNT, || {
            format!(
                "create_job({}) in {} with the key of job {} answered {answer:?}",
                attempt.id, attempt.scope, first.id
            )
        })?;
        read(
            case,
            &*store,
            KEY_PER_ACCOUNT,
            &attempt.scope,
            &attempt.id,
            None,
            "after a refused create_job",
        )
        .await?;
    }
    let elsewhere = job(other_account, &key, launch(BASE_MILLIS + 5_000));
    let answer = create(case, &*store, &elsewhere).await?;
    case.ensure(answer == JobCreated::Created, KEY_PER_ACCOUNT, || {
        format!("the same key in another account answered {answer:?}, expected Created")
    })?;
    read(
        case,
        &*store,
        KEY_PER_ACCOUNT,
        &other_account,
        &elsewhere.id,
        Some(&elsewhere),
        "after create_job",
    )
    .await?;
    read(
        case,
        &*store,
        KEY_PER_ACCOUNT,
        &scope,
        &first.id,
        Some(&first),
        "after the other account's job",
    )
    .await
}

/// Many concurrent submissions of one key: one job.
pub async fn concurrent_job_creations_with_one_key_have_exactly_one_winner<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("concurrent_job_creations_with_one_key_have_exactly_one_winner");
    let writers = caps.concurrent_writers();
    for round in 0..8 {
        let scope = sample::scope();
        let key = fresh_key("race");
        let candidates: Vec<FieldingRunJob> = (0..writers)
            .map(|i| job(scope, &key, launch(BASE_MILLIS + 1_000 * i as i64)))
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
                    match store.create_job(&candidate).await {
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
        let mut outcomes: Vec<Result<JobCreated, StoreError>> = Vec::new();
        for task in tasks {
            outcomes.push(
                task.await
                    .map_err(|e| case.fail(ONE_JOB_PER_KEY, format!("a creating task panicked: {e}")))?,
            );
        }
        let summary = || {
            outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| format!("create_job #{i}: {o:?}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let winners: Vec<usize> = (0..writers)
            .filter(|&i| matches!(outcomes[i], Ok(JobCreated::Created)))
            .collect();
        let [winner] = winners[..] else {
            return Err(case.fail(
                ONE_JOB_PER_KEY,
                format!(
                    "round {round}: {} of {writers} answered Created: {}",
                    winners.len(),
                    summary()
                ),
            ));
        };
        let stored = &candidates[winner];
        for (i, outcome) in outcomes.iter().enumerate() {
            let right = i == winner || matches!(outcome, Ok(JobCreated::Existing(job)) if job == stored);
            case.ensure(right, ONE_JOB_PER_KEY, || {
                format!("round {round}: job #{winner} won, but {}", summary())
            })?;
            if i != winner {
                let loser = &candidates[i];
                read(
                    case,
                    &*store,
                    ONE_JOB_PER_KEY,
                    &scope,
                    &loser.id,
                    None,
                    "after losing the race",
                )
                .await?;
            }
        }
        read(
            case,
            &*store,
            ONE_JOB_PER_KEY,
            &scope,
            &stored.id,
            Some(stored),
            "after the race",
        )
        .await?;
    }
    Ok(())
}

/// Other scopes neither see nor finish a job.
pub async fn job_scope_isolation_hides_the_job_from_every_other_scope<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("job_scope_isolation_hides_the_job_from_every_other_scope");
    let scope = sample::scope();
    let stored = job(scope, &fresh_key("isolated"), launch(BASE_MILLIS + 5_000));
    create(case, &*store, &stored).await?;
    for (name, other) in sample::neighbours(scope) {
        read(
            case,
            &*store,
            JOB_SCOPE_ISOLATION,
            &other,
            &stored.id,
            None,
            &format!("through {name}"),
        )
        .await?;
        let answer = case.ok(
            format!("finish_job({}) through {name}", stored.id),
            store
                .finish_job(&other.job(stored.id), &JobOutcome::Completed, finish_time())
                .await,
        )?;
        case.ensure(answer.is_none(), JOB_SCOPE_ISOLATION, || {
            format!("finish_job through {name} ({other}) answered {answer:?}, expected None")
        })?;
        read(
            case,
            &*store,
            JOB_SCOPE_ISOLATION,
            &scope,
            &stored.id,
            Some(&stored),
            &format!("after finish_job through {name}"),
        )
        .await?;
    }
    let missing = JobId::generate();
    read(
        case,
        &*store,
        JOB_SCOPE_ISOLATION,
        &scope,
        &missing,
        None,
        "of an id never stored",
    )
    .await
}

/// The first outcome sticks, sequentially and when outcomes race.
pub async fn finish_job_records_the_first_outcome_only<S>(store: Arc<S>, caps: Capabilities) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("finish_job_records_the_first_outcome_only");
    let scope = sample::scope();
    let missing = case.ok(
        "finish_job of a missing job",
        store
            .finish_job(&scope.job(JobId::generate()), &JobOutcome::Completed, finish_time())
            .await,
    )?;
    case.ensure(missing.is_none(), FIRST_OUTCOME_WINS, || {
        format!("finish_job of a job never stored answered {missing:?}")
    })?;

    let stored = job(scope, &fresh_key("finish"), launch(BASE_MILLIS + 5_000));
    create(case, &*store, &stored).await?;
    let first = JobOutcome::Completed;
    let done = finished(&stored, &first);
    for (i, outcome) in [first.clone(), failed(JobFailureCode::TargetGroupInvalidState, "late")]
        .iter()
        .enumerate()
    {
        let answer = case.ok(
            format!("finish_job #{i}"),
            store.finish_job(&scope.job(stored.id), outcome, finish_time()).await,
        )?;
        case.ensure(answer.as_ref() == Some(&done), FIRST_OUTCOME_WINS, || {
            format!("finish_job #{i} with {outcome:?} answered {answer:?}, expected {done:?}")
        })?;
    }
    read(
        case,
        &*store,
        FIRST_OUTCOME_WINS,
        &scope,
        &stored.id,
        Some(&done),
        "after two finish_job calls",
    )
    .await?;

    // Racing outcomes: every caller must be told the one that stuck.
    let writers = caps.concurrent_writers();
    for round in 0..4 {
        let racing = job(scope, &fresh_key("finish-race"), launch(BASE_MILLIS + 5_000));
        create(case, &*store, &racing).await?;
        let barrier = Arc::new(Barrier::new(writers));
        let mut tasks = Vec::new();
        for i in 0..writers {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            let id = racing.id;
            let outcome = if i % 2 == 0 {
                JobOutcome::Completed
            } else {
                failed(JobFailureCode::InvalidFieldingDates, &format!("writer {i}"))
            };
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut retries = 0;
                loop {
                    match store.finish_job(&scope.job(id), &outcome, finish_time()).await {
                        Err(err)
                            if err.is_retryable() && caps.retryable_errors_under_contention() && retries < 1000 =>
                        {
                            retries += 1;
                            tokio::task::yield_now().await;
                        }
                        answer => return answer,
                    }
                }
            }));
        }
        let mut answers = Vec::new();
        for task in tasks {
            let answer = task
                .await
                .map_err(|e| case.fail(FIRST_OUTCOME_WINS, format!("a finishing task panicked: {e}")))?;
            answers.push(case.ok("a racing finish_job", answer)?);
        }
        let stuck = case.ok("get_job after the race", store.get_job(&scope.job(racing.id)).await)?;
        let consistent = stuck.as_ref().is_some_and(|job| job.state != JobState::Processing)
            && answers.iter().all(|answer| answer == &stuck);
        case.ensure(consistent, FIRST_OUTCOME_WINS, || {
            format!(
                "round {round}: {writers} racing finish_job calls answered {answers:?}; the job now reads {stuck:?}"
            )
        })?;
    }
    Ok(())
}
