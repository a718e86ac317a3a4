//! The use cases: one method per command, each a load → check → decide →
//! compare-and-swap pipeline.
//!
//! The order of checks is part of the contract and is the same for every
//! command: **not found**, then **precondition** (`If-Match`), then **input
//! validation**, then **lifecycle state**. So a stale ETag is reported as a
//! precondition failure even when the body is also bad: the caller's view is
//! out of date, and judging its input against a state it has not seen would
//! mislead it.

use std::sync::Arc;
use std::time::Duration;

use crate::lifecycle::{self, Command, Decision, Target};
use crate::{
    Action, ChangeRecord, Clock, ETag, FieldingError, FieldingRun, FieldingRunId, FieldingStore, IfMatch, RunKey,
    Scope, StoreError, SystemClock, Timestamp, UserId, Version,
};
use crate::{Update, UpdateOutcome};

mod jobs;

pub use jobs::{NewJob, SubmittedJob, JOB_RESUME_AFTER};

/// How many times [`FieldingService::execute`] decides when other writers
/// keep winning the race for a version its `If-Match` also accepts; past
/// it, the caller gets the 412 of the last lost race.
const MAX_DECISIONS: u32 = 32;

/// `inner`, polled after giving other tasks some turns: the back-off
/// before deciding again after a lost race, doubling each time,
/// so writers that keep colliding spread out. Yielding, not sleeping: this
/// path must not need the runtime's timer, which an embedding runtime may
/// not enable; it works on any executor.
struct AfterBackOff<F> {
    yields: u32,
    inner: F,
}

impl<F> AfterBackOff<F> {
    /// After the `lost`-th lost race: 0, 2, 4, 8, ... up to 256 turns.
    fn new(lost: u32, inner: F) -> Self {
        let yields = if lost == 0 { 0 } else { 1u32 << lost.min(8) };
        Self { yields, inner }
    }
}

impl<F: std::future::Future + Unpin> std::future::Future for AfterBackOff<F> {
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        if self.yields > 0 {
            self.yields -= 1;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll(cx)
    }
}

/// The result of a successful command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The run after the command, with its effective status.
    pub run: FieldingRun,
    /// The run's ETag, for the caller's next `If-Match`.
    pub etag: ETag,
    /// `false` when the command changed nothing (same dates): no new version.
    pub changed: bool,
}

/// The fielding-run use cases over any store.
///
/// Cheap to clone: it holds two `Arc`s.
///
/// ```
/// # use std::sync::Arc;
/// # use fielding_core::*;
/// # async fn demo(store: Arc<dyn FieldingStore>) -> Result<(), FieldingError> {
/// let service = FieldingService::new(store);
/// let scope = Scope::parse("101", "01BTGNYV6HRNK8K8VKZASZCFP0", "01BTGNYV6HRNK8K8VKZASZCFP1")?;
/// let me = UserId::random();
/// let start = "2031-01-01T09:00:00Z".parse::<Timestamp>().map_err(|e| e.for_field("start_fielding_at"))?;
/// let end = "2031-01-31T09:00:00Z".parse::<Timestamp>().map_err(|e| e.for_field("end_fielding_at"))?;
/// let created = service.schedule(scope, start, end, me).await?;
/// let key = created.run.key();
/// // Pause is not allowed while scheduled: 422.
/// let err = service.pause(&key, &IfMatch::version(created.run.version), me).await.unwrap_err();
/// assert_eq!(err.code(), "invalid_state_error");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FieldingService {
    store: Arc<dyn FieldingStore>,
    clock: Arc<dyn Clock>,
}

impl FieldingService {
    /// A service over `store`, using the system clock.
    pub fn new(store: Arc<dyn FieldingStore>) -> Self {
        Self::with_clock(store, Arc::new(SystemClock))
    }

    /// A service over `store` that reads the time from `clock`.
    pub fn with_clock(store: Arc<dyn FieldingStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// The store this service writes to.
    pub fn store(&self) -> &Arc<dyn FieldingStore> {
        &self.store
    }

    /// The clock this service reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Creates a `scheduled` run for a target group that has none.
    ///
    /// Refused with a validation error if the start is in the past or the
    /// end is not after the start, and with
    /// [`FieldingError::TargetGroupHasRun`] if the target group has a run.
    pub async fn schedule(
        &self,
        scope: Scope,
        start_fielding_at: Timestamp,
        end_fielding_at: Timestamp,
        actor: UserId,
    ) -> Result<Applied, FieldingError> {
        let now = self.clock.now();
        let target = lifecycle::new_scheduled(start_fielding_at, end_fielding_at, now)?;
        self.create(scope, FieldingRunId::generate(), Action::Schedule, target, now, actor)
            .await
    }

    /// Creates a `live` run that starts now and ends at `end_fielding_at`.
    pub async fn launch(
        &self,
        scope: Scope,
        end_fielding_at: Timestamp,
        actor: UserId,
    ) -> Result<Applied, FieldingError> {
        let now = self.clock.now();
        let target = lifecycle::new_launched(end_fielding_at, now)?;
        self.create(scope, FieldingRunId::generate(), Action::Launch, target, now, actor)
            .await
    }

    async fn create(
        &self,
        scope: Scope,
        id: FieldingRunId,
        action: Action,
        target: Target,
        now: Timestamp,
        actor: UserId,
    ) -> Result<Applied, FieldingError> {
        // A cheap early answer; the store's uniqueness check is what counts
        // when two creations race.
        if self.store.find_by_target_group(&scope).await?.is_some() {
            return Err(FieldingError::TargetGroupHasRun { scope });
        }
        let run = FieldingRun {
            id,
            account_id: scope.account_id,
            project_id: scope.project_id,
            target_group_id: scope.target_group_id,
            start_fielding_at: target.start_fielding_at,
            end_fielding_at: target.end_fielding_at,
            status: lifecycle::effective_status(target.status, target.start_fielding_at, target.end_fielding_at, now),
            version: Version::INITIAL,
            last_changed_at: now,
            last_changed_by: actor,
        };
        let change = ChangeRecord::created(&run, action);
        match self.store.insert(&run, &change).await {
            Ok(()) => Ok(Applied {
                etag: run.etag(),
                run,
                changed: true,
            }),
            Err(StoreError::AlreadyExists { scope }) => Err(FieldingError::TargetGroupHasRun { scope }),
            Err(other) => Err(other.into()),
        }
    }

    /// The run at `key` with its effective status, or not found.
    pub async fn get(&self, key: &RunKey) -> Result<FieldingRun, FieldingError> {
        let run = self.load(key).await?;
        Ok(run.as_of(self.clock.now()))
    }

    /// The run of a target group, if it has one, with its effective status.
    pub async fn find(&self, scope: &Scope) -> Result<Option<FieldingRun>, FieldingError> {
        let run = self.store.find_by_target_group(scope).await?;
        Ok(run.map(|run| run.as_of(self.clock.now())))
    }

    /// The change records of the run at `key`, oldest first; not found if
    /// there is no such run.
    pub async fn changes(&self, key: &RunKey) -> Result<Vec<ChangeRecord>, FieldingError> {
        self.load(key).await?;
        Ok(self.store.changes(key).await?)
    }

    /// Runs `command` on the run at `key` if `if_match` names its current
    /// version. The per-command methods below are shorthands for this.
    ///
    /// If another writer changes the run between this call's read and its
    /// write, the answer is a 412 when `if_match` does not accept the new
    /// version (a specific ETag: exactly one of two racing writers wins),
    /// and a new decision on the new state when it does (`*`, or a list
    /// that names it): RFC 9110's `If-Match: *` holds for any current
    /// version, so it never loses a race.
    pub async fn execute(
        &self,
        key: &RunKey,
        if_match: &IfMatch,
        command: &Command,
        actor: UserId,
    ) -> Result<Applied, FieldingError> {
        // The precondition and the decision are made on the run as the
        // store reads it inside `update`: one round trip, and for stores
        // that override `update`, one atomic step. If another writer got in
        // between the read and the write, decide again when the caller's
        // precondition holds for what it wrote too (`If-Match: *`, or a
        // list naming the new version), since the caller did not lose
        // anything it asked to keep; else 412.
        //
        // One await point only (the back-off is folded into the awaited
        // future): a second await in this function made every command's
        // future and code larger, about 10% of the in-memory throughput
        // (memory benchmark, callgrind).
        let mut attempt = 0;
        loop {
            let mut outcome = None;
            let mut decide = |run: &FieldingRun| self.decide_update(run, Some(if_match), command, actor, &mut outcome);
            let found = AfterBackOff::new(attempt, self.store.update(key, &mut decide)).await;
            match found {
                Err(StoreError::VersionConflict { current, .. })
                    if if_match.matches(current) && attempt + 1 < MAX_DECISIONS =>
                {
                    attempt += 1;
                }
                found => return finish(key, found, outcome),
            }
        }
    }

    /// Like [`FieldingService::execute`], but the request is judged on the
    /// run as read, in one step: `request` sees the stored run and answers
    /// the command to run, or why the request is refused (its precondition,
    /// then its body, checked in the caller's order). That is how an HTTP
    /// handler keeps the contract's order of checks (not found, then
    /// `If-Match`, then the body, then the lifecycle) with a single read
    /// of the store instead of a read for the precondition and another for
    /// the command.
    ///
    /// `request` may be called again, on the newer run, when another writer
    /// wins the race between the read and the write; it must check the
    /// precondition every time (a specific ETag then fails: exactly one of
    /// two racing writers wins).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use fielding_core::*;
    /// # async fn demo(service: FieldingService, key: RunKey, me: UserId) -> Result<(), FieldingError> {
    /// let if_match = IfMatch::parse(r#""3""#)?;
    /// let applied = service
    ///     .execute_when(&key, me, |run: &FieldingRun| {
    ///         if !if_match.matches(run.version) {
    ///             return Err(FieldingError::PreconditionFailed { current: run.version });
    ///         }
    ///         Ok(lifecycle::Command::Pause)
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_when<E, F>(&self, key: &RunKey, actor: UserId, request: F) -> Result<Applied, E>
    where
        E: From<FieldingError> + Send,
        F: FnMut(&FieldingRun) -> Result<Command, E> + Send,
    {
        self.decide_and_write(key, actor, request).await
    }

    /// The read–decide–write loop of `execute_when`: after a lost race,
    /// `request` decides again on the newer run (and refuses with 412 if
    /// its precondition no longer holds).
    async fn decide_and_write<E, F>(&self, key: &RunKey, actor: UserId, mut request: F) -> Result<Applied, E>
    where
        E: From<FieldingError> + Send,
        F: FnMut(&FieldingRun) -> Result<Command, E> + Send,
    {
        let mut attempt = 1;
        loop {
            let mut outcome: Option<Result<Applied, E>> = None;
            let mut decide = |run: &FieldingRun| match request(run) {
                Err(refused) => {
                    outcome = Some(Err(refused));
                    Update::Skip
                }
                Ok(command) => {
                    let mut decided = None;
                    let update = self.decide_update(run, None, &command, actor, &mut decided);
                    outcome = decided.map(|result| result.map_err(E::from));
                    update
                }
            };
            match AfterBackOff::new(attempt - 1, self.store.update(key, &mut decide)).await {
                Err(StoreError::VersionConflict { .. }) if attempt < MAX_DECISIONS => {
                    attempt += 1;
                }
                found => return finish(key, found, outcome),
            }
        }
    }

    /// Moves the dates (the contract's `PUT`). Same dates: success, no new
    /// version.
    pub async fn update_dates(
        &self,
        key: &RunKey,
        if_match: &IfMatch,
        start_fielding_at: Timestamp,
        end_fielding_at: Timestamp,
        actor: UserId,
    ) -> Result<Applied, FieldingError> {
        let command = Command::UpdateDates {
            start_fielding_at,
            end_fielding_at,
        };
        self.execute(key, if_match, &command, actor).await
    }

    /// `scheduled` → `live` now; the end moves to keep the planned duration.
    pub async fn launch_now(&self, key: &RunKey, if_match: &IfMatch, actor: UserId) -> Result<Applied, FieldingError> {
        self.execute(key, if_match, &Command::LaunchNow, actor).await
    }

    /// `live` → `paused`.
    pub async fn pause(&self, key: &RunKey, if_match: &IfMatch, actor: UserId) -> Result<Applied, FieldingError> {
        self.execute(key, if_match, &Command::Pause, actor).await
    }

    /// `paused` → `live`, before the end.
    pub async fn resume(&self, key: &RunKey, if_match: &IfMatch, actor: UserId) -> Result<Applied, FieldingError> {
        self.execute(key, if_match, &Command::Resume, actor).await
    }

    /// `scheduled`, `live` or `paused` → `completed`.
    pub async fn complete(&self, key: &RunKey, if_match: &IfMatch, actor: UserId) -> Result<Applied, FieldingError> {
        self.execute(key, if_match, &Command::Complete, actor).await
    }

    /// `completed` → `live`, before the end.
    pub async fn relaunch(&self, key: &RunKey, if_match: &IfMatch, actor: UserId) -> Result<Applied, FieldingError> {
        self.execute(key, if_match, &Command::Relaunch, actor).await
    }

    /// For callers that are not HTTP clients: reads the run, asks `command`
    /// what to do with it, and writes against the version just read. If
    /// another writer wins in between, waits (exponential backoff with full
    /// jitter) and starts over, at most `policy.max_attempts` times. Other
    /// errors return at once.
    ///
    /// Needs a tokio runtime with the time driver when backoff is non-zero.
    ///
    /// ```
    /// # use fielding_core::*;
    /// # async fn demo(service: FieldingService, key: RunKey, me: UserId) -> Result<(), FieldingError> {
    /// // Push the end out by a day, whatever version the run is at now.
    /// let applied = service
    ///     .execute_with_retry(&key, me, &RetryPolicy::default(), |run| lifecycle::Command::UpdateDates {
    ///         start_fielding_at: run.start_fielding_at,
    ///         end_fielding_at: run.end_fielding_at.checked_add(chrono::TimeDelta::days(1)).unwrap_or(run.end_fielding_at),
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_with_retry<F>(
        &self,
        key: &RunKey,
        actor: UserId,
        policy: &RetryPolicy,
        mut command: F,
    ) -> Result<Applied, FieldingError>
    where
        F: FnMut(&FieldingRun) -> Command + Send,
    {
        let mut attempt = 1;
        loop {
            let mut outcome = None;
            let mut decide = |run: &FieldingRun| {
                let next = command(&run.clone().as_of(self.clock.now()));
                self.decide_update(run, None, &next, actor, &mut outcome)
            };
            let found = self.store.update(key, &mut decide).await;
            match finish(key, found, outcome) {
                Err(FieldingError::PreconditionFailed { .. }) if attempt < policy.max_attempts => {
                    let pause = policy.backoff(attempt);
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// The `decide` callback of every command: checks `if_match` (when
    /// given) and plans the command on `run`, leaving the caller's answer
    /// in `outcome` and telling the store what to write.
    fn decide_update(
        &self,
        run: &FieldingRun,
        if_match: Option<&IfMatch>,
        command: &Command,
        actor: UserId,
        outcome: &mut Option<Result<Applied, FieldingError>>,
    ) -> Update {
        if let Some(if_match) = if_match {
            if !if_match.matches(run.version) {
                *outcome = Some(Err(FieldingError::PreconditionFailed { current: run.version }));
                return Update::Skip;
            }
        }
        match self.plan(run, command, actor) {
            Err(err) => {
                *outcome = Some(Err(err));
                Update::Skip
            }
            Ok(Plan::Unchanged(applied)) => {
                *outcome = Some(Ok(applied));
                Update::Skip
            }
            Ok(Plan::Write { expected, next, change }) => {
                *outcome = Some(Ok(Applied {
                    etag: next.etag(),
                    run: next.clone(),
                    changed: true,
                }));
                Update::Write {
                    expected,
                    run: next,
                    change,
                }
            }
        }
    }

    async fn load(&self, key: &RunKey) -> Result<FieldingRun, FieldingError> {
        self.store.get(key).await?.ok_or_else(|| not_found(key))
    }

    /// Decides what `command` does to `run` as loaded, without I/O.
    fn plan(&self, run: &FieldingRun, command: &Command, actor: UserId) -> Result<Plan, FieldingError> {
        let now = self.clock.now();
        let status_from = run.effective_status(now);
        let target = match lifecycle::decide(run, command, now)? {
            Decision::Unchanged => {
                return Ok(Plan::Unchanged(Applied {
                    etag: run.etag(),
                    run: run.clone().as_of(now),
                    changed: false,
                }))
            }
            Decision::Change(target) => target,
        };
        let expected = run.version;
        let version = expected.next().ok_or_else(|| FieldingError::InvalidState {
            action: command.action(),
            status: status_from,
            detail: "the run has reached the highest version a store can hold".into(),
        })?;
        let previous = (status_from, run.start_fielding_at, run.end_fielding_at);
        let next = FieldingRun {
            start_fielding_at: target.start_fielding_at,
            end_fielding_at: target.end_fielding_at,
            // Write down the effective status after the command (a start
            // moved to exactly now makes the run live).
            status: lifecycle::effective_status(target.status, target.start_fielding_at, target.end_fielding_at, now),
            version,
            last_changed_at: now,
            last_changed_by: actor,
            // Every other field is `Copy`: no clone of the whole run.
            ..*run
        };
        let change = change_record(previous, &next, command.action());
        Ok(Plan::Write { expected, next, change })
    }
}

/// A decided command: nothing to write, or one compare-and-swap.
enum Plan {
    Unchanged(Applied),
    Write {
        expected: Version,
        next: FieldingRun,
        change: ChangeRecord,
    },
}

/// The caller's answer, from what the store did and what `decide` said.
/// Store errors win: a planned write that did not happen is not a success.
fn finish<E: From<FieldingError>>(
    key: &RunKey,
    found: Result<UpdateOutcome, StoreError>,
    outcome: Option<Result<Applied, E>>,
) -> Result<Applied, E> {
    match found {
        Ok(UpdateOutcome::NotFound) | Err(StoreError::NotFound) => Err(not_found(key).into()),
        Ok(UpdateOutcome::Skipped | UpdateOutcome::Written) => outcome.unwrap_or_else(|| {
            Err(FieldingError::Storage {
                source: StoreError::Backend {
                    message: "the store reported a run but never showed it to decide".into(),
                    retryable: false,
                    source: None,
                },
            }
            .into())
        }),
        Err(StoreError::VersionConflict { current, .. }) => Err(FieldingError::PreconditionFailed { current }.into()),
        Err(other) => Err(FieldingError::from(other).into()),
    }
}

fn not_found(key: &RunKey) -> FieldingError {
    FieldingError::NotFound { what: key.to_string() }
}

fn change_record(previous: (crate::Status, Timestamp, Timestamp), run: &FieldingRun, action: Action) -> ChangeRecord {
    let (status_from, start_from, end_from) = previous;
    ChangeRecord {
        status_from: Some(status_from),
        start_from: Some(start_from),
        end_from: Some(end_from),
        ..ChangeRecord::created(run, action)
    }
}

/// How [`FieldingService::execute_with_retry`] retries lost races.
///
/// ```
/// use std::time::Duration;
/// use fielding_core::RetryPolicy;
/// let policy = RetryPolicy { max_attempts: 10, ..RetryPolicy::default() };
/// assert!(policy.backoff(3) <= policy.max_backoff);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first. At least 1.
    pub max_attempts: u32,
    /// The backoff ceiling after the first lost race; doubles each time.
    pub initial_backoff: Duration,
    /// The highest backoff ceiling.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 8 attempts, backoff ceilings 1 ms, 2 ms, 4 ms, ... up to 50 ms.
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(50),
        }
    }
}

impl RetryPolicy {
    /// Retries at once, without waiting. Useful in tests.
    pub fn immediate(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        }
    }

    /// The wait after the `attempt`-th lost race: a random duration up to
    /// `min(max_backoff, initial_backoff * 2^(attempt-1))` ("full jitter"),
    /// so racing writers spread out instead of colliding again in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        let ceiling = self.initial_backoff.saturating_mul(factor).min(self.max_backoff);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        let random = uuid::Uuid::new_v4().as_u128() as u64;
        Duration::from_nanos(random % (nanos + 1))
    }
}
