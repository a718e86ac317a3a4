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
use crate::observe::{self, PreconditionCause, StoreOperation};
use crate::precondition::check_if_match;
use crate::{
    Action, ChangeRecord, Clock, ETag, FieldingError, FieldingRun, FieldingRunId, FieldingStore, IfMatch, Precondition,
    RunKey, Scope, StoreError, SystemClock, Timestamp, UserId, Version,
};
use crate::{Update, UpdateOutcome};

mod bulk;
mod feed;
mod jobs;

pub use bulk::{NewBulkJob, SubmittedBulkJob};
pub(crate) use feed::{next_retry, woken_within};
pub use feed::{
    HistoryPage, DEFAULT_FEED_PAGE, DEFAULT_FEED_POLL_INTERVAL, MAX_FEED_PAGE, MAX_FEED_WAIT, SAFETY_NET_POLL_INTERVAL,
};
pub use jobs::{NewJob, SubmittedJob, JOB_RESUME_AFTER};

/// How many times [`FieldingService::execute`] decides when other writers
/// keep winning the race for a version its `If-Match` also accepts; past
/// it, the caller gets the 412 of the last lost race.
const MAX_DECISIONS: u32 = 32;

/// How the decision loop waits before deciding again after a lost race.
#[derive(Clone, Copy)]
enum Backoff<'a> {
    /// Give other tasks some turns, doubling each time (0, 2, 4, ... up to
    /// 256 turns), at most [`MAX_DECISIONS`] decisions. Yielding, not
    /// sleeping: the HTTP path must not need the runtime's timer, which an
    /// embedding runtime may not enable; it works on any executor.
    Yield,
    /// Sleep as the caller's policy says (full jitter), at most
    /// `max_attempts` decisions.
    Sleep(&'a RetryPolicy),
}

impl Backoff<'_> {
    /// Whether a `decisions + 1`-th decision is allowed.
    #[inline]
    fn again(self, decisions: u32) -> bool {
        match self {
            Backoff::Yield => decisions < MAX_DECISIONS,
            Backoff::Sleep(policy) => decisions < policy.max_attempts,
        }
    }

    /// `inner`, started after the pause that follows the `lost`-th lost race.
    #[inline]
    fn before<F>(self, lost: u32, inner: F) -> AfterPause<F> {
        let (yields, sleep) = match self {
            Backoff::Yield if lost > 0 => (1u32 << lost.min(8), None),
            Backoff::Sleep(policy) if lost > 0 => {
                let pause = policy.backoff(lost);
                (0, (!pause.is_zero()).then(|| Box::pin(tokio::time::sleep(pause))))
            }
            _ => (0, None),
        };
        AfterPause { yields, sleep, inner }
    }
}

/// `inner`, polled after a pause. One future around the store call, so a
/// command has a single await point whether or not it ever pauses: a
/// second await in the loop makes every command's future larger and
/// slower, on the path every request takes.
struct AfterPause<F> {
    yields: u32,
    /// Boxed because it is rare: only the retry helper sleeps, and only
    /// after a lost race.
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    inner: F,
}

impl<F: std::future::Future + Unpin> std::future::Future for AfterPause<F> {
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        if self.yields > 0 {
            self.yields -= 1;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return std::task::Poll::Pending;
            }
            self.sleep = None;
        }
        std::pin::Pin::new(&mut self.inner).poll(cx)
    }
}

/// The precondition a decision checks first.
#[derive(Clone, Copy)]
enum Condition<'a> {
    /// As the request stated it (missing and malformed included).
    Stated(&'a Precondition),
    /// A parsed `If-Match` (no allocation for the per-command methods).
    IfMatch(&'a IfMatch),
    /// None: decide on whatever version is read (the retry helper).
    Any,
}

impl Condition<'_> {
    #[inline]
    fn check(self, current: Version) -> Result<(), FieldingError> {
        match self {
            Condition::Stated(precondition) => precondition.check(current),
            Condition::IfMatch(if_match) => check_if_match(if_match, current),
            Condition::Any => Ok(()),
        }
    }

    /// Whether the command may be decided again on a run another writer
    /// has just moved to `current`.
    fn admits(self, current: Version) -> bool {
        match self {
            Condition::Stated(precondition) => precondition.admits(current),
            Condition::IfMatch(if_match) => if_match.matches(current),
            Condition::Any => true,
        }
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
/// Cheap to clone: it holds three `Arc`s.
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
    /// Wakes the bulk runners of this service when a job is submitted.
    bulk_wakeup: Arc<tokio::sync::Notify>,
    /// How often a waiting feed reader reads again without a wake-up, if
    /// the user said (else it depends on the store's wake-ups).
    feed_poll_interval: Option<Duration>,
}

impl FieldingService {
    /// A service over `store`, using the system clock.
    pub fn new(store: Arc<dyn FieldingStore>) -> Self {
        Self {
            store,
            clock: Arc::new(SystemClock),
            bulk_wakeup: Arc::new(tokio::sync::Notify::new()),
            feed_poll_interval: None,
        }
    }

    /// This service, reading the time from `clock` instead of the system
    /// clock (default [`SystemClock`]); a test passes a [`ManualClock`](crate::ManualClock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// This service, with waiting feed readers (long polls, watches,
    /// consumers) reading again every `interval` when no wake-up comes: the
    /// longest a missed wake-up delays a record. At least 1 ms. Without
    /// it, [`DEFAULT_FEED_POLL_INTERVAL`] (1 s), or
    /// [`SAFETY_NET_POLL_INTERVAL`] (10 s) when the store's wake-ups cover
    /// every writer (see [`crate::ChangeNotifier::sees_every_writer`]): many
    /// idle consumers then cost almost no reads.
    pub fn with_feed_poll_interval(mut self, interval: Duration) -> Self {
        self.feed_poll_interval = Some(interval.max(Duration::from_millis(1)));
        self
    }

    /// How often waiting feed readers read again without a wake-up, now.
    pub fn feed_poll_interval(&self) -> Duration {
        self.feed_poll_interval.unwrap_or_else(|| {
            let covered = self.store.change_notifier().is_some_and(|n| n.sees_every_writer());
            if covered {
                SAFETY_NET_POLL_INTERVAL
            } else {
                DEFAULT_FEED_POLL_INTERVAL
            }
        })
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
        let target = lifecycle::new_scheduled(start_fielding_at, end_fielding_at, now);
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
        let target = lifecycle::new_launched(end_fielding_at, now);
        self.create(scope, FieldingRunId::generate(), Action::Launch, target, now, actor)
            .await
    }

    /// Creates the run `target` describes (or refuses, when the dates
    /// were refused), in a `command` span, counted once.
    async fn create(
        &self,
        scope: Scope,
        id: FieldingRunId,
        action: Action,
        target: Result<Target, FieldingError>,
        now: Timestamp,
        actor: UserId,
    ) -> Result<Applied, FieldingError> {
        let span = observe::command_span(Some(action), &scope.run(id));
        let created = match target {
            Ok(target) => observe::in_span(span.clone(), self.insert_new(scope, id, action, target, now, actor)).await,
            Err(refused) => Err(refused),
        };
        let outcome = match &created {
            Ok(_) => observe::OUTCOME_OK,
            Err(err) => err.code(),
        };
        if let Some(span) = span.as_ref().filter(|span| !span.is_disabled()) {
            if created.is_ok() {
                span.record("resulting_version", Version::INITIAL.get());
            }
            span.record("attempt", 1);
            span.record("outcome", outcome);
        }
        observe::count_command(Some(action), outcome);
        created
    }

    async fn insert_new(
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
        let found = observe::store_call(
            StoreOperation::FindByTargetGroup,
            self.store.find_by_target_group(&scope),
        );
        if found.await?.is_some() {
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
        match observe::store_call(StoreOperation::Insert, self.store.insert(&run, &change)).await {
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
        let run = observe::store_call(
            StoreOperation::FindByTargetGroup,
            self.store.find_by_target_group(scope),
        )
        .await?;
        Ok(run.map(|run| run.as_of(self.clock.now())))
    }

    /// The change records of the run at `key`, oldest first; not found if
    /// there is no such run.
    pub async fn changes(&self, key: &RunKey) -> Result<Vec<ChangeRecord>, FieldingError> {
        self.load(key).await?;
        Ok(observe::store_call(StoreOperation::Changes, self.store.changes(key)).await?)
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
    // Not `async fn`: the loop's own future is returned as it is, so the
    // per-command methods do not nest one more state machine around it.
    // Inline, so that the caller builds that future where it keeps it
    // rather than receiving it and moving it into its own state.
    #[inline]
    pub fn execute<'a>(
        &'a self,
        key: &'a RunKey,
        if_match: &'a IfMatch,
        command: &'a Command,
        actor: UserId,
    ) -> impl std::future::Future<Output = Result<Applied, FieldingError>> + Send + 'a {
        let traced = Traced::new(Some(command.action()), key);
        observe::in_span(
            traced.span.clone(),
            self.decide_loop(
                traced,
                key,
                Condition::IfMatch(if_match),
                actor,
                Backoff::Yield,
                |_: &FieldingRun| Ok::<_, FieldingError>(command.clone()),
            ),
        )
    }

    /// Runs the command a request asks for (`action`: which one, for traces
    /// and metrics), judging the request on the run as read, in the
    /// contract's order: not found (404), then the
    /// `precondition` (400 when missing or malformed, 412 when stale), then
    /// `request`, which sees the stored run and turns the rest of the
    /// request (its body) into the command or refuses it, then the
    /// lifecycle (422). One store read per command; that is how an HTTP
    /// handler keeps the order without reading the run once for the
    /// precondition and again for the command.
    ///
    /// `request` is called again, on the newer run, when another writer
    /// wins the race between the read and the write and the precondition
    /// admits the newer version (`*`, or a list naming it); with a specific
    /// ETag the loser gets the 412 instead.
    ///
    /// ```
    /// # use fielding_core::*;
    /// # async fn demo(service: FieldingService, key: RunKey, me: UserId) -> Result<(), FieldingError> {
    /// let stated = Precondition::from_header_lines([&b"\"3\""[..]]);
    /// let body_ok = true;
    /// let applied = service
    ///     .execute_request(&key, Action::Pause, &stated, me, |_run: &FieldingRun| {
    ///         if !body_ok {
    ///             return Err(FieldingError::invalid_field("body", "must be empty"));
    ///         }
    ///         Ok(lifecycle::Command::Pause)
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_request<E, F>(
        &self,
        key: &RunKey,
        action: Action,
        precondition: &Precondition,
        actor: UserId,
        request: F,
    ) -> Result<Applied, E>
    where
        E: From<FieldingError> + Send,
        F: FnMut(&FieldingRun) -> Result<Command, E> + Send,
    {
        let traced = Traced::new(Some(action), key);
        let span = traced.span.clone();
        let decided = self.decide_loop(
            traced,
            key,
            Condition::Stated(precondition),
            actor,
            Backoff::Yield,
            request,
        );
        observe::in_span(span, decided).await
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

    /// For callers that are not HTTP clients (jobs, scripts): reads the
    /// run, asks `command` what to do with it (shown with its effective
    /// status), and writes against the version just read. If another
    /// writer wins in between, waits (exponential backoff with full jitter,
    /// like Kubernetes' `RetryOnConflict`) and decides again on the newer
    /// run, at most `policy.max_attempts` decisions in all; past them the
    /// answer is [`FieldingError::PreconditionFailed`] carrying the version
    /// the run is at now. Other errors return at once.
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
        let now = || self.clock.now();
        let traced = Traced::new(None, key);
        let span = traced.span.clone();
        let decided = self.decide_loop(
            traced,
            key,
            Condition::Any,
            actor,
            Backoff::Sleep(policy),
            |run: &FieldingRun| Ok::<_, FieldingError>(command(&run.clone().as_of(now()))),
        );
        observe::in_span(span, decided).await
    }

    /// The one read → decide → write loop every command goes through:
    /// the store reads the run and shows it to the decision (precondition,
    /// then `request`, then the lifecycle); after a lost race the command
    /// is decided again on the newer run if the precondition admits it,
    /// up to the backoff's limit; else the lost race is the answer (412).
    ///
    /// Its callers run it inside `span`, the command's `command` span (see
    /// [`crate::observe`]), where it records the answer, and count it once,
    /// by action and outcome.
    async fn decide_loop<E, F>(
        &self,
        traced: Traced,
        key: &RunKey,
        condition: Condition<'_>,
        actor: UserId,
        backoff: Backoff<'_>,
        mut request: F,
    ) -> Result<Applied, E>
    where
        E: From<FieldingError> + Send,
        F: FnMut(&FieldingRun) -> Result<Command, E> + Send,
    {
        let mut noted = Noted::new(traced.action);
        if let Some(store) = self.store.updates_now() {
            // A store that answers at once takes the first decision (no
            // pause comes before it) without a future or an await.
            let mut outcome: Option<Result<Applied, E>> = None;
            let mut decide =
                |run: &FieldingRun| self.decide_update(run, condition, &mut request, actor, &mut outcome, &mut noted);
            let (found, latency) =
                observe::store_call_now(StoreOperation::Update, || store.update_now(key, &mut decide));
            noted.latency = latency;
            if !noted.decide_again(&found, condition, backoff) {
                let answer = finish(key, found, &mut outcome, &mut noted);
                noted.close(traced.span.as_ref(), traced.action, &answer);
                return answer;
            }
            // The command goes on past awaits that may never return: the
            // call that did happen is recorded now, not at the close.
            if let Some(latency) = noted.latency.take() {
                observe::record_latency(latency);
            }
        }
        // Boxed, so that the loop's state (the answer being built, the
        // store call in flight) is not part of every command's future: on
        // a store that answers at once it is only reached after a lost
        // race, and a store that awaits pays one allocation beside its
        // own boxed future per call.
        Box::pin(self.awaited_loop(traced, noted, key, condition, actor, backoff, request)).await
    }

    /// The decision loop through the store's async `update`, from the
    /// decision after the `noted.lost` races lost so far.
    #[allow(clippy::too_many_arguments)] // the loop's own inputs, handed over once
    async fn awaited_loop<E, F>(
        &self,
        traced: Traced,
        mut noted: Noted,
        key: &RunKey,
        condition: Condition<'_>,
        actor: UserId,
        backoff: Backoff<'_>,
        mut request: F,
    ) -> Result<Applied, E>
    where
        E: From<FieldingError> + Send,
        F: FnMut(&FieldingRun) -> Result<Command, E> + Send,
    {
        loop {
            let lost = noted.lost;
            let mut outcome: Option<Result<Applied, E>> = None;
            let mut decide =
                |run: &FieldingRun| self.decide_update(run, condition, &mut request, actor, &mut outcome, &mut noted);
            let update = observe::store_call(StoreOperation::Update, self.store.update(key, &mut decide));
            let found = backoff.before(lost, update).await;
            if !noted.decide_again(&found, condition, backoff) {
                let answer = finish(key, found, &mut outcome, &mut noted);
                noted.close(traced.span.as_ref(), traced.action, &answer);
                return answer;
            }
        }
    }

    /// The `decide` callback of every command: checks the precondition,
    /// asks `request` for the command and plans it on `run`, leaving the
    /// caller's answer in `outcome` and telling the store what to write.
    fn decide_update<E, F>(
        &self,
        run: &FieldingRun,
        condition: Condition<'_>,
        request: &mut F,
        actor: UserId,
        outcome: &mut Option<Result<Applied, E>>,
        noted: &mut Noted,
    ) -> Update
    where
        E: From<FieldingError>,
        F: FnMut(&FieldingRun) -> Result<Command, E>,
    {
        // Only plain values here: a store may call `decide` under its lock,
        // and what a subscriber or recorder does with them waits until the
        // store call is over (`Noted::close`).
        noted.expected = Some(run.version);
        noted.resulting = None;
        if let Err(refused) = condition.check(run.version) {
            noted.refuse(&refused);
            if matches!(refused, FieldingError::PreconditionFailed { .. }) {
                // A condition that held on an earlier read and not on this
                // one lost a race; on the first read, the caller's tag was
                // already old.
                noted.precondition_failed = Some(if noted.lost > 0 {
                    PreconditionCause::LostRace
                } else {
                    PreconditionCause::Stale
                });
            }
            *outcome = Some(Err(E::from(refused)));
            return Update::Skip;
        }
        let command = match request(run) {
            Ok(command) => command,
            Err(refused) => {
                noted.refusal = Some(observe::OUTCOME_REQUEST_REFUSED);
                *outcome = Some(Err(refused));
                return Update::Skip;
            }
        };
        noted.action = Some(command.action());
        // Matched where it is made: a `map_err` here would copy the whole
        // planned run and record on every command.
        match self.plan(run, &command, actor) {
            Err(err) => {
                noted.refuse(&err);
                *outcome = Some(Err(E::from(err)));
                Update::Skip
            }
            Ok(Plan::Unchanged(applied)) => {
                noted.resulting = Some(applied.run.version);
                *outcome = Some(Ok(applied));
                Update::Skip
            }
            Ok(Plan::Write { expected, next, change }) => {
                noted.resulting = Some(next.version);
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
        observe::store_call(StoreOperation::Get, self.store.get(key))
            .await?
            .ok_or_else(|| not_found(key))
    }

    /// Decides what `command` does to `run` as loaded, without I/O.
    // Inlined into the decision so the planned run and record are built in
    // place instead of being returned through memory.
    #[inline(always)]
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

/// A command's `command` span and the action it was opened with (`None`
/// when the command is decided on the run as read).
struct Traced {
    span: Option<tracing::Span>,
    action: Option<Action>,
}

impl Traced {
    fn new(action: Option<Action>, key: &RunKey) -> Self {
        Self {
            span: observe::command_span(action, key),
            action,
        }
    }
}

/// What a command's traces and metrics need to know about it, noted as
/// plain values while it runs and handed to the span and the recorder once
/// it is answered. The caller's answer may be any `E`, whose code the
/// service cannot read, so every refusal notes its own.
struct Noted {
    /// The command's action, once known.
    action: Option<Action>,
    /// The `outcome` label of the refusal, when the answer is one.
    refusal: Option<&'static str>,
    /// Races lost so far (and decided again).
    lost: u32,
    /// The version the last decision was made on.
    expected: Option<Version>,
    /// The version the last decision would leave the run at.
    resulting: Option<Version>,
    /// Why the answer is a 412, when it is one.
    precondition_failed: Option<PreconditionCause>,
    /// A store call's latency, recorded with the command's counter.
    latency: Option<observe::StoreLatency>,
}

impl Noted {
    fn new(action: Option<Action>) -> Self {
        Noted {
            action,
            refusal: None,
            lost: 0,
            expected: None,
            resulting: None,
            precondition_failed: None,
            latency: None,
        }
    }

    /// Whether the command is decided again after the store answered
    /// `found`: a lost race to a version the precondition admits, within
    /// the backoff's limit (then counted here).
    fn decide_again(
        &mut self,
        found: &Result<UpdateOutcome, StoreError>,
        condition: Condition<'_>,
        backoff: Backoff<'_>,
    ) -> bool {
        match found {
            Err(StoreError::VersionConflict { current, .. })
                if condition.admits(*current) && backoff.again(self.lost + 1) =>
            {
                self.lost += 1;
                observe::count_redecided(self.action);
                true
            }
            _ => false,
        }
    }

    fn refuse(&mut self, error: &FieldingError) {
        self.refusal = Some(error.code());
    }

    /// Records the answer on `span` and counts it. `declared` is the
    /// action the span was opened with: recorded again only when the
    /// command turned out to be another one.
    fn close<E>(&mut self, span: Option<&tracing::Span>, declared: Option<Action>, answer: &Result<Applied, E>) {
        let outcome = match answer {
            Ok(applied) if applied.changed => observe::OUTCOME_OK,
            Ok(_) => observe::OUTCOME_UNCHANGED,
            Err(_) => self.refusal.unwrap_or("unexpected_internal_error"),
        };
        if let Some(span) = span.filter(|span| !span.is_disabled()) {
            let action = self.action.filter(|_| self.action != declared).map(Action::as_str);
            // A refused command wrote nothing: no resulting version.
            let resulting = self.resulting.filter(|_| answer.is_ok()).map(Version::get);
            observe::close_command_span(
                span,
                action,
                self.expected.map(Version::get),
                resulting,
                self.lost + 1,
                outcome,
            );
        }
        if let Some(cause) = self.precondition_failed {
            observe::count_precondition_failure(self.action, cause);
        }
        observe::count_command_after(self.action, outcome, self.latency.take());
    }
}

/// The caller's answer, from what the store did and what `decide` said.
/// Store errors win: a planned write that did not happen is not a success.
// `outcome` is taken from where `decide` left it: passed by value, the
// whole answer would be copied once more on the way in.
fn finish<E: From<FieldingError>>(
    key: &RunKey,
    found: Result<UpdateOutcome, StoreError>,
    outcome: &mut Option<Result<Applied, E>>,
    noted: &mut Noted,
) -> Result<Applied, E> {
    let refused = match found {
        Ok(UpdateOutcome::NotFound) | Err(StoreError::NotFound) => not_found(key),
        Ok(UpdateOutcome::Skipped | UpdateOutcome::Written) => match outcome.take() {
            Some(answer) => return answer,
            None => FieldingError::from(StoreError::internal(
                "the store reported a run but never showed it to decide",
            )),
        },
        Err(StoreError::VersionConflict { current, .. }) => {
            noted.precondition_failed = Some(PreconditionCause::LostRace);
            FieldingError::PreconditionFailed { current }
        }
        Err(other) => FieldingError::from(other),
    };
    noted.refuse(&refused);
    Err(refused.into())
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
