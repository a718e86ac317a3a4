//! What the library tells an operator: `tracing` spans and `metrics`
//! counters and histograms. The library only records; the application
//! picks the subscriber and the recorder (or none: then every call here
//! costs a check of a flag or a cached "not interested").
//!
//! **Spans** (target `fielding_core::observe`):
//!
//! | span | level | fields |
//! |---|---|---|
//! | `command` | `INFO` | `action`, `account`, `project`, `target_group`, `run_id`, `expected_version`, `resulting_version`, `attempt`, `outcome` |
//! | `job` | `INFO` | `kind`, `action`, `account`, `job_id`, `trace_id`, `outcome` |
//! | `store_call` | `DEBUG` | `operation`, `outcome` |
//!
//! `outcome` is [`OUTCOME_OK`], [`OUTCOME_UNCHANGED`], [`OUTCOME_REQUEST_REFUSED`]
//! or the error's [`crate::FieldingError::code`]; a store call's is `ok` or
//! the [`crate::StoreError`]'s kind. No field holds a token, a secret or
//! a request body. A `command` span opened inside a request's span (the
//! HTTP layer's carries the W3C trace id) is its child, so every line a
//! command logs joins the caller's trace.
//!
//! **Metrics** (names below; label values are fixed lists, so the number
//! of series is bounded whatever the traffic):
//!
//! | name | kind | labels |
//! |---|---|---|
//! | [`COMMANDS`] | counter | `action`, `outcome` |
//! | [`PRECONDITION_FAILURES`] | counter | `action`, `cause` (`stale`: the caller's ETag was old when read; `lost_race`: another writer won between read and write) |
//! | [`RACES_REDECIDED`] | counter | `action` |
//! | [`STORE_CALL_SECONDS`] | histogram | `operation` |
//! | [`STORE_CALL_ERRORS`] | counter | `operation`, `kind` |
//! | [`JOBS`] | counter | `kind` (`creation`, `bulk`), `state` |
//! | [`BULK_ITEMS`] | counter | `action`, `outcome` |
//!
//! Refusals before a request reaches the service (rate limits, bad
//! tokens, oversized bodies) are counted by the HTTP layer
//! (`fielding_http::refusal::COUNTER`).

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use metrics::{Key, KeyName, Label, Metadata};

use crate::{Action, StoreError};

/// Counter: service commands, by `action` and `outcome`.
pub const COMMANDS: &str = "fielding_commands_total";
/// Counter: commands answered `412`, by `action` and `cause`.
pub const PRECONDITION_FAILURES: &str = "fielding_precondition_failures_total";
/// Counter: lost races the command was decided again after (the
/// precondition admitted the newer version: `If-Match: *`, a list that
/// names it, or a job's retry), by `action`.
pub const RACES_REDECIDED: &str = "fielding_races_redecided_total";
/// Histogram: how long each store call took, in seconds, by `operation`.
pub const STORE_CALL_SECONDS: &str = "fielding_store_call_duration_seconds";
/// Counter: store calls that failed, by `operation` and `kind`.
pub const STORE_CALL_ERRORS: &str = "fielding_store_call_errors_total";
/// Counter: jobs entering a state, by `kind` (`creation`, `bulk`) and
/// `state` (`submitted`, `completed`, `failed`, and `claimed` and
/// `released` for bulk jobs).
pub const JOBS: &str = "fielding_jobs_total";
/// Counter: bulk-job items given an outcome, by `action` and `outcome`
/// (`updated` or the failure's code).
pub const BULK_ITEMS: &str = "fielding_bulk_items_total";

/// The `outcome` of a command that wrote a new version.
pub const OUTCOME_OK: &str = "ok";
/// The `outcome` of a command that changed nothing (no new version).
pub const OUTCOME_UNCHANGED: &str = "unchanged";
/// The `outcome` of a command whose request the caller's own check refused
/// (in the HTTP layer: a bad body, answered `400`).
pub const OUTCOME_REQUEST_REFUSED: &str = "request_refused";
/// The `action` label before a command is known (a run not found by a
/// caller that decides the command on the run it reads).
pub const ACTION_UNKNOWN: &str = "unknown";

/// Every `outcome` a command can have, in label-table order.
const COMMAND_OUTCOMES: [&str; 9] = [
    OUTCOME_OK,
    OUTCOME_UNCHANGED,
    OUTCOME_REQUEST_REFUSED,
    "bad_request_error",
    "not_found_error",
    "precondition_failed_error",
    "invalid_state_error",
    "cursor_expired_error",
    "unexpected_internal_error",
];

/// Every `action` label, in label-table order: the actions, then unknown.
fn action_index(action: Option<Action>) -> usize {
    action.map_or(Action::ALL.len(), |a| a as usize)
}

fn action_label(action: Option<Action>) -> &'static str {
    action.map_or(ACTION_UNKNOWN, Action::as_str)
}

/// Describes every metric above to the installed recorder (help text and
/// units in an exposition). Optional; call it once after installing one.
pub fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(COMMANDS, Unit::Count, "Fielding-run commands, by action and outcome");
    describe_counter!(
        PRECONDITION_FAILURES,
        Unit::Count,
        "Commands refused with 412, by action and cause (stale ETag, or a race lost between read and write)"
    );
    describe_counter!(
        RACES_REDECIDED,
        Unit::Count,
        "Races lost between read and write after which the command was decided again on the newer run"
    );
    describe_histogram!(STORE_CALL_SECONDS, Unit::Seconds, "Store call latency, by operation");
    describe_counter!(
        STORE_CALL_ERRORS,
        Unit::Count,
        "Failed store calls, by operation and error kind"
    );
    describe_counter!(JOBS, Unit::Count, "Jobs entering a state, by kind and state");
    describe_counter!(
        BULK_ITEMS,
        Unit::Count,
        "Bulk-job items given an outcome, by action and outcome"
    );
}

/// Where the library's metrics come from, for the recorder's metadata.
static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Keys with two labels, one per pair of values, built once: a key made
/// per call would hash its name and labels and allocate its label list
/// on every command, recorder or not. Each key borrows its labels from
/// the table rather than owning them: a recorder that keeps keys (the
/// Prometheus exporter) copies owned labels into a new allocation on
/// every call, and borrowed `'static` ones not at all.
struct KeyTable {
    keys: OnceLock<Vec<Key>>,
    pairs: OnceLock<Vec<[Label; 2]>>,
    name: &'static str,
    labels: (&'static str, &'static str),
}

impl KeyTable {
    const fn new(name: &'static str, labels: (&'static str, &'static str)) -> Self {
        Self {
            keys: OnceLock::new(),
            pairs: OnceLock::new(),
            name,
            labels,
        }
    }

    /// The key for the `row`-th first value and `column`-th second one, of
    /// `columns` second values.
    fn key(
        &'static self,
        firsts: &[&'static str],
        seconds: &[&'static str],
        row: usize,
        column: usize,
    ) -> &'static Key {
        let keys = self.keys.get_or_init(|| {
            let pairs = self.pairs.get_or_init(|| {
                let mut pairs = Vec::with_capacity(firsts.len() * seconds.len());
                for first in firsts {
                    for second in seconds {
                        pairs.push([
                            Label::from_static_parts(self.labels.0, first),
                            Label::from_static_parts(self.labels.1, second),
                        ]);
                    }
                }
                pairs
            });
            pairs
                .iter()
                .map(|pair| Key::from_static_labels(KeyName::from_const_str(self.name), pair))
                .collect()
        });
        &keys[row * seconds.len() + column]
    }
}

/// Every action label, in [`action_index`] order.
fn action_labels() -> &'static [&'static str] {
    static LABELS: OnceLock<Vec<&'static str>> = OnceLock::new();
    LABELS.get_or_init(|| {
        let mut labels: Vec<&'static str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        labels.push(ACTION_UNKNOWN);
        labels
    })
}

/// Counts one command by action and outcome.
pub(crate) fn count_command(action: Option<Action>, outcome: &'static str) {
    let key = command_key(action, outcome);
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA)).increment(1);
}

/// The [`COMMANDS`] key of `action` and `outcome`.
fn command_key(action: Option<Action>, outcome: &'static str) -> &'static Key {
    static TABLE: KeyTable = KeyTable::new(COMMANDS, ("action", "outcome"));
    // The same constant is usually the same address: compared first, the
    // text only when it is not.
    let column = COMMAND_OUTCOMES
        .iter()
        .position(|o| std::ptr::eq(*o, outcome) || *o == outcome)
        .unwrap_or(COMMAND_OUTCOMES.len() - 1);
    TABLE.key(action_labels(), &COMMAND_OUTCOMES, action_index(action), column)
}

/// Why a command was answered `412`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreconditionCause {
    /// The caller's `If-Match` did not name the version read.
    Stale,
    /// Another writer won between this command's read and its write.
    LostRace,
}

/// Counts one `412`.
pub(crate) fn count_precondition_failure(action: Option<Action>, cause: PreconditionCause) {
    static TABLE: KeyTable = KeyTable::new(PRECONDITION_FAILURES, ("action", "cause"));
    const CAUSES: [&str; 2] = ["stale", "lost_race"];
    let column = match cause {
        PreconditionCause::Stale => 0,
        PreconditionCause::LostRace => 1,
    };
    let key = TABLE.key(action_labels(), &CAUSES, action_index(action), column);
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA)).increment(1);
}

/// Counts one lost race the command was decided again after.
pub(crate) fn count_redecided(action: Option<Action>) {
    metrics::counter!(RACES_REDECIDED, "action" => action_label(action)).increment(1);
}

/// Counts one job entering `state`.
pub(crate) fn count_job(kind: &'static str, state: &'static str) {
    metrics::counter!(JOBS, "kind" => kind, "state" => state).increment(1);
}

/// Counts `count` bulk items given `outcome`.
pub(crate) fn count_bulk_items(action: &'static str, outcome: &'static str, count: u64) {
    if count > 0 {
        metrics::counter!(BULK_ITEMS, "action" => action, "outcome" => outcome).increment(count);
    }
}

/// Whether any subscriber may take spans at `level`: a check of one
/// atomic. Below it the hot-path spans are `Span::none()` rather than a
/// disabled span, which (with `tracing`'s `log` feature on, as some
/// dependencies turn it on) would still hand its fields to the `log`
/// crate's check when made, recorded and dropped.
fn level_enabled(level: tracing::Level) -> bool {
    tracing::level_filters::LevelFilter::current() >= level
}

/// The `command` span of one command on the run at `key`; fields not
/// known yet are recorded as the command goes.
///
/// `None` below the level subscribers take: not even `Span::none()`, whose
/// every clone and drop still costs a trip through `tracing`'s checks.
pub(crate) fn command_span(action: Option<Action>, key: &crate::RunKey) -> Option<tracing::Span> {
    if !level_enabled(tracing::Level::INFO) {
        return None;
    }
    Some(tracing::info_span!(
        "command",
        action = action_label(action),
        account = %key.scope.account_id,
        project = %key.scope.project_id,
        target_group = %key.scope.target_group_id,
        run_id = %key.id,
        expected_version = tracing::field::Empty,
        resulting_version = tracing::field::Empty,
        attempt = tracing::field::Empty,
        outcome = tracing::field::Empty,
    ))
}

/// Records what a command learned on its `command` span, in one call:
/// each `record` is a trip through the subscriber (the span looked up, its
/// data locked, the fields formatted), so one for all of them rather than
/// one per field. `None` leaves a field as it is: `action` when the span
/// already names it, the versions when there is none.
pub(crate) fn close_command_span(
    span: &tracing::Span,
    action: Option<&'static str>,
    expected_version: Option<u64>,
    resulting_version: Option<u64>,
    attempt: u32,
    outcome: &'static str,
) {
    use tracing::field::Value;
    let Some(metadata) = span.metadata() else {
        return;
    };
    let fields = metadata.fields();
    // Every span `command_span` makes has them all; a span without them
    // (disabled, or not a command's) takes none.
    let (Some(action_field), Some(expected_field), Some(resulting_field), Some(attempt_field), Some(outcome_field)) = (
        fields.field("action"),
        fields.field("expected_version"),
        fields.field("resulting_version"),
        fields.field("attempt"),
        fields.field("outcome"),
    ) else {
        return;
    };
    span.record_all(&fields.value_set(&[
        (&action_field, action.as_ref().map(|v| v as &dyn Value)),
        (&expected_field, expected_version.as_ref().map(|v| v as &dyn Value)),
        (&resulting_field, resulting_version.as_ref().map(|v| v as &dyn Value)),
        (&attempt_field, Some(&attempt as &dyn Value)),
        (&outcome_field, Some(&outcome as &dyn Value)),
    ]));
}

/// The `kind` label of creation jobs.
pub const JOB_KIND_CREATION: &str = "creation";
/// The `kind` label of bulk jobs.
pub const JOB_KIND_BULK: &str = "bulk";

/// The `job` span of one job: its submission, or a runner's work on it.
/// `trace_id` is the submitting request's: background work joins the
/// trace of the request that asked for it.
/// `job_id` is recorded once known (a submission's answer may be an
/// existing job: the id is the one the caller gets back).
pub(crate) fn job_span(
    kind: &'static str,
    action: &'static str,
    account: &crate::AccountId,
    trace_id: Option<&crate::JobTraceId>,
) -> tracing::Span {
    tracing::info_span!(
        "job",
        kind,
        action,
        account = %account,
        job_id = tracing::field::Empty,
        trace_id = trace_id.map(tracing::field::display),
        outcome = tracing::field::Empty,
    )
}

/// The `state` label of a bulk job in `status`.
pub(crate) fn bulk_job_state(status: crate::BulkJobStatus) -> &'static str {
    match status {
        crate::BulkJobStatus::Processing => "processing",
        crate::BulkJobStatus::Completed => "completed",
        crate::BulkJobStatus::Failed => "failed",
    }
}

/// Records a job span's id (when there is one) and outcome.
pub(crate) fn close_job_span(span: &tracing::Span, job: Option<&crate::JobId>, outcome: &str) {
    if span.is_disabled() {
        return;
    }
    if let Some(job) = job {
        span.record("job_id", tracing::field::display(job));
    }
    span.record("outcome", outcome);
}

pin_project_lite::pin_project! {
    /// `inner`, polled inside `span` ([`in_span`]).
    #[derive(Debug)]
    pub(crate) struct InSpan<F> {
        span: Option<tracing::Span>,
        #[pin]
        inner: F,
    }
}

/// `inner`, polled inside `span` like `tracing::Instrument` does, except
/// that a disabled span (nobody listening) is not entered at all: entering
/// one still costs its checks on every poll of every command.
pub(crate) fn in_span<F: Future>(span: Option<tracing::Span>, inner: F) -> InSpan<F> {
    InSpan { span, inner }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match this.span {
            Some(span) if !span.is_disabled() => {
                let _entered = span.enter();
                this.inner.poll(cx)
            }
            _ => this.inner.poll(cx),
        }
    }
}

/// Every store operation the service and the runners call, with its
/// `operation` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreOperation {
    /// [`crate::FieldingStore::insert`].
    Insert,
    /// [`crate::FieldingStore::get`].
    Get,
    /// [`crate::FieldingStore::find_by_target_group`].
    FindByTargetGroup,
    /// [`crate::FieldingStore::update`] (read, decide, compare-and-swap).
    Update,
    /// [`crate::FieldingStore::changes`].
    Changes,
    /// [`crate::FieldingStore::create_job`].
    CreateJob,
    /// [`crate::FieldingStore::get_job`].
    GetJob,
    /// [`crate::FieldingStore::finish_job`].
    FinishJob,
    /// [`crate::FieldingStore::create_bulk_job`].
    CreateBulkJob,
    /// [`crate::FieldingStore::get_bulk_job`].
    GetBulkJob,
    /// [`crate::FieldingStore::claim_bulk_job`].
    ClaimBulkJob,
    /// [`crate::FieldingStore::renew_bulk_claim`].
    RenewBulkClaim,
    /// [`crate::FieldingStore::apply_bulk_items`].
    ApplyBulkItems,
    /// [`crate::FieldingStore::finish_bulk_job`].
    FinishBulkJob,
    /// [`crate::FieldingStore::feed`].
    Feed,
    /// [`crate::FieldingStore::load_feed_checkpoint`].
    LoadFeedCheckpoint,
    /// [`crate::FieldingStore::save_feed_checkpoint`].
    SaveFeedCheckpoint,
    /// [`crate::FieldingStore::prune_changes`].
    PruneChanges,
    /// [`crate::FieldingStore::expire_jobs`].
    ExpireJobs,
    /// [`crate::FieldingStore::expire_bulk_jobs`].
    ExpireBulkJobs,
}

impl StoreOperation {
    /// Every operation, in declaration order.
    pub const ALL: [StoreOperation; 20] = [
        StoreOperation::Insert,
        StoreOperation::Get,
        StoreOperation::FindByTargetGroup,
        StoreOperation::Update,
        StoreOperation::Changes,
        StoreOperation::CreateJob,
        StoreOperation::GetJob,
        StoreOperation::FinishJob,
        StoreOperation::CreateBulkJob,
        StoreOperation::GetBulkJob,
        StoreOperation::ClaimBulkJob,
        StoreOperation::RenewBulkClaim,
        StoreOperation::ApplyBulkItems,
        StoreOperation::FinishBulkJob,
        StoreOperation::Feed,
        StoreOperation::LoadFeedCheckpoint,
        StoreOperation::SaveFeedCheckpoint,
        StoreOperation::PruneChanges,
        StoreOperation::ExpireJobs,
        StoreOperation::ExpireBulkJobs,
    ];

    /// The `operation` label: the store method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOperation::Insert => "insert",
            StoreOperation::Get => "get",
            StoreOperation::FindByTargetGroup => "find_by_target_group",
            StoreOperation::Update => "update",
            StoreOperation::Changes => "changes",
            StoreOperation::CreateJob => "create_job",
            StoreOperation::GetJob => "get_job",
            StoreOperation::FinishJob => "finish_job",
            StoreOperation::CreateBulkJob => "create_bulk_job",
            StoreOperation::GetBulkJob => "get_bulk_job",
            StoreOperation::ClaimBulkJob => "claim_bulk_job",
            StoreOperation::RenewBulkClaim => "renew_bulk_claim",
            StoreOperation::ApplyBulkItems => "apply_bulk_items",
            StoreOperation::FinishBulkJob => "finish_bulk_job",
            StoreOperation::Feed => "feed",
            StoreOperation::LoadFeedCheckpoint => "load_feed_checkpoint",
            StoreOperation::SaveFeedCheckpoint => "save_feed_checkpoint",
            StoreOperation::PruneChanges => "prune_changes",
            StoreOperation::ExpireJobs => "expire_jobs",
            StoreOperation::ExpireBulkJobs => "expire_bulk_jobs",
        }
    }

    /// Built once, with labels borrowed from a table (see [`KeyTable`]).
    #[inline]
    fn latency_key(self) -> &'static Key {
        static LABELS: OnceLock<Vec<[Label; 1]>> = OnceLock::new();
        static KEYS: OnceLock<Vec<Key>> = OnceLock::new();
        let keys = KEYS.get_or_init(|| {
            let labels = LABELS.get_or_init(|| {
                StoreOperation::ALL
                    .iter()
                    .map(|op| [Label::from_static_parts("operation", op.as_str())])
                    .collect()
            });
            labels
                .iter()
                .map(|label| Key::from_static_labels(KeyName::from_const_str(STORE_CALL_SECONDS), label))
                .collect()
        });
        &keys[self as usize]
    }
}

/// `call`, timed into [`STORE_CALL_SECONDS`] and run inside a `store_call`
/// span; a failure is counted in [`STORE_CALL_ERRORS`]. The service and
/// the runners wrap every store call in it; wrap your own direct calls
/// (a clean-up task's, say) the same way to see them beside the rest.
///
/// ```
/// # async fn demo(store: std::sync::Arc<dyn fielding_core::FieldingStore>) -> Result<(), fielding_core::StoreError> {
/// use fielding_core::observe::{store_call, StoreOperation};
/// use fielding_core::{Clock, SystemClock};
/// let now = SystemClock.now();
/// let week_ago = now.checked_sub(chrono::TimeDelta::days(7)).unwrap_or(now);
/// let pruned = store_call(StoreOperation::PruneChanges, store.prune_changes(week_ago, 1000)).await?;
/// # let _ = pruned; Ok(()) }
/// ```
pub fn store_call<F, T>(operation: StoreOperation, call: F) -> StoreCall<F>
where
    F: Future<Output = Result<T, StoreError>> + Unpin,
{
    StoreCall {
        operation,
        span: store_call_span(operation),
        started: None,
        call,
    }
}

/// A store call that answers before returning ([`crate::UpdateNow`]),
/// observed exactly as [`store_call`] observes an async one: run inside a
/// `store_call` span, timed into [`STORE_CALL_SECONDS`], a failure counted
/// in [`STORE_CALL_ERRORS`].
///
/// Without a `DEBUG` subscriber (no span to record the outcome on), the
/// latency is read off the clock here but handed back rather than
/// recorded: the caller records it with the command's counter
/// ([`count_command_after`]), in the same trip to the recorder. The caller
/// must record it: a latency dropped unrecorded is a store call missing
/// from the histogram.
pub(crate) fn store_call_now<T>(
    operation: StoreOperation,
    call: impl FnOnce() -> Result<T, StoreError>,
) -> (Result<T, StoreError>, Option<StoreLatency>) {
    let clock = store_clock();
    if !level_enabled(tracing::Level::DEBUG) {
        // No span to make, enter or drop.
        let started = clock.raw();
        let result = call();
        let ended = clock.raw();
        if let Err(err) = &result {
            count_store_error(operation, err.kind());
        }
        let latency = StoreLatency {
            operation,
            elapsed: Elapsed { clock, started, ended },
        };
        return (result, Some(latency));
    }
    let span = store_call_span(operation);
    let started = clock.raw();
    let result = if span.is_disabled() {
        call()
    } else {
        let _entered = span.enter();
        call()
    };
    store_call_done(operation, &span, clock, started, &result);
    (result, None)
}

/// A store call's latency, measured and not yet recorded (see
/// [`store_call_now`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreLatency {
    operation: StoreOperation,
    elapsed: Elapsed,
}

/// Records `latency` on its own, now: for a command that goes on after
/// the store call (a lost race decided again), whose closing may never
/// come (its future dropped while it waits, a caller's panic).
pub(crate) fn record_latency(latency: StoreLatency) {
    metrics::with_recorder(|recorder| {
        recorder
            .register_histogram(latency.operation.latency_key(), &METADATA)
            .record(latency.elapsed)
    });
}

/// Counts one command by action and outcome, as [`count_command`], and
/// records `latency` (a store call of the command's, not recorded yet) in
/// the same trip to the recorder.
pub(crate) fn count_command_after(action: Option<Action>, outcome: &'static str, latency: Option<StoreLatency>) {
    let key = command_key(action, outcome);
    metrics::with_recorder(|recorder| {
        if let Some(latency) = latency {
            recorder
                .register_histogram(latency.operation.latency_key(), &METADATA)
                .record(latency.elapsed);
        }
        recorder.register_counter(key, &METADATA).increment(1);
    });
}

/// The `store_call` span of one call, or none when no subscriber takes
/// `DEBUG` spans.
fn store_call_span(operation: StoreOperation) -> tracing::Span {
    if level_enabled(tracing::Level::DEBUG) {
        tracing::debug_span!(
            "store_call",
            operation = operation.as_str(),
            outcome = tracing::field::Empty
        )
    } else {
        tracing::Span::none()
    }
}

/// Records a finished store call, started at `started` on `clock`: its
/// latency, its failure if it failed, and its outcome on `span`.
fn store_call_done<T>(
    operation: StoreOperation,
    span: &tracing::Span,
    clock: &'static quanta::Clock,
    started: u64,
    result: &Result<T, StoreError>,
) {
    let outcome = store_call_measured(operation, clock, started, result);
    if !span.is_disabled() {
        span.record("outcome", outcome);
    }
}

/// The metrics of a finished store call: its latency, and its failure if
/// it failed. Answers its `outcome`.
fn store_call_measured<T>(
    operation: StoreOperation,
    clock: &'static quanta::Clock,
    started: u64,
    result: &Result<T, StoreError>,
) -> &'static str {
    let elapsed = Elapsed {
        clock,
        started,
        ended: clock.raw(),
    };
    metrics::with_recorder(|recorder| recorder.register_histogram(operation.latency_key(), &METADATA)).record(elapsed);
    match result {
        Ok(_) => OUTCOME_OK,
        Err(err) => {
            count_store_error(operation, err.kind());
            err.kind()
        }
    }
}

/// Counts one failed store call.
fn count_store_error(operation: StoreOperation, kind: &'static str) {
    metrics::counter!(STORE_CALL_ERRORS, "operation" => operation.as_str(), "kind" => kind).increment(1);
}

/// A store call's latency, read off the clock at both ends and turned into
/// seconds only when a histogram takes it: a no-op histogram (no recorder
/// installed) never asks, so the scaling and the division are skipped.
#[derive(Debug, Clone, Copy)]
struct Elapsed {
    clock: &'static quanta::Clock,
    started: u64,
    ended: u64,
}

impl metrics::IntoF64 for Elapsed {
    fn into_f64(self) -> f64 {
        self.clock.delta(self.started, self.ended).as_secs_f64()
    }
}

/// The clock store calls are timed with: the CPU's counter where it has a
/// stable one (read without a system call), scaled to nanoseconds only
/// once a call is over. One shared instance rather than `quanta::Instant`,
/// whose every reading first looks for a thread's mocked clock.
fn store_clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// The future [`store_call`] returns.
#[derive(Debug)]
pub struct StoreCall<F> {
    operation: StoreOperation,
    span: tracing::Span,
    /// When the call was first polled: a future made before a pause (the
    /// backoff after a lost race) must not count the pause as store time.
    /// `None` again once the call is over.
    started: Option<u64>,
    call: F,
}

impl<F> Drop for StoreCall<F> {
    /// A call dropped while in flight (the caller gave up: a client that
    /// went away, a timeout) has no latency to record; it is counted as a
    /// `cancelled` error so that the histogram's fast calls are not all
    /// there is to see.
    fn drop(&mut self) {
        if self.started.is_some() {
            metrics::counter!(STORE_CALL_ERRORS, "operation" => self.operation.as_str(), "kind" => "cancelled")
                .increment(1);
            if !self.span.is_disabled() {
                self.span.record("outcome", "cancelled");
            }
        }
    }
}

impl<F, T> Future for StoreCall<F>
where
    F: Future<Output = Result<T, StoreError>> + Unpin,
{
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let clock = store_clock();
        let started = *this.started.get_or_insert_with(|| clock.raw());
        let polled = if this.span.is_disabled() {
            Pin::new(&mut this.call).poll(cx)
        } else {
            let _entered = this.span.enter();
            Pin::new(&mut this.call).poll(cx)
        };
        if let Poll::Ready(result) = &polled {
            this.started = None;
            store_call_done(this.operation, &this.span, clock, started, result);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FieldingError;
    use fielding_testkit::observe::MetricsLog;

    #[test]
    fn command_keys_cover_every_action_and_outcome() {
        let metrics = MetricsLog::new();
        {
            let _capture = metrics.capture();
            for action in Action::ALL.map(Some).into_iter().chain([None]) {
                for outcome in COMMAND_OUTCOMES {
                    count_command(action, outcome);
                }
            }
            count_command(Some(Action::Pause), OUTCOME_OK);
        }
        assert_eq!(metrics.counter(COMMANDS, &[("action", "pause"), ("outcome", "ok")]), 2);
        assert_eq!(
            metrics.counter(COMMANDS, &[("action", "unknown"), ("outcome", "not_found_error")]),
            1
        );
        assert_eq!(metrics.counter(COMMANDS, &[]), (Action::ALL.len() as u64 + 1) * 9 + 1);
    }

    #[test]
    fn every_error_code_has_an_outcome_label() {
        for error in [
            FieldingError::invalid_field("x", "y"),
            FieldingError::NotFound { what: "x".into() },
            FieldingError::PreconditionFailed {
                current: crate::Version::INITIAL,
            },
            FieldingError::CursorExpired {
                after: crate::FeedPosition::default(),
            },
            FieldingError::from(StoreError::internal("x")),
        ] {
            assert!(COMMAND_OUTCOMES.contains(&error.code()), "{error}");
        }
    }

    #[test]
    fn store_operation_labels_are_distinct_and_indexed() {
        let labels: std::collections::HashSet<_> = StoreOperation::ALL.iter().map(|op| op.as_str()).collect();
        assert_eq!(labels.len(), StoreOperation::ALL.len());
        for (at, op) in StoreOperation::ALL.iter().enumerate() {
            assert_eq!(*op as usize, at);
            assert_eq!(op.latency_key().labels().next().map(|l| l.value()), Some(op.as_str()));
        }
    }

    #[test]
    fn a_store_call_is_timed_and_its_failure_counted() {
        let metrics = MetricsLog::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        {
            let _capture = metrics.capture();
            let ok = runtime.block_on(store_call(
                StoreOperation::Get,
                Box::pin(async { Ok::<_, StoreError>(1) }),
            ));
            assert_eq!(ok.ok(), Some(1));
            let failed = runtime.block_on(store_call(
                StoreOperation::Update,
                Box::pin(async { Err::<u8, _>(StoreError::transient("down")) }),
            ));
            assert!(failed.is_err());
        }
        assert_eq!(metrics.samples(STORE_CALL_SECONDS, &[("operation", "get")]), 1);
        assert_eq!(metrics.samples(STORE_CALL_SECONDS, &[("operation", "update")]), 1);
        assert_eq!(
            metrics.counter(STORE_CALL_ERRORS, &[("operation", "update"), ("kind", "transient")]),
            1
        );
        assert_eq!(metrics.counter(STORE_CALL_ERRORS, &[("operation", "get")]), 0);
    }
}
