//! What an operator would see, for tests to assert: [`SpanLog`] keeps
//! every `tracing` span's name, fields (as recorded, including those
//! recorded later) and parent; [`MetricsLog`] keeps every `metrics`
//! counter and histogram.
//!
//! Both are installed for the current thread only, so they see what
//! futures polled on that thread record: use a current-thread runtime
//! (`#[tokio::test]`'s default). Tests running in parallel do not see each
//! other's.
//!
//! ```
//! use fielding_testkit::observe::SpanLog;
//! let log = SpanLog::new();
//! {
//!     let _capture = log.capture();
//!     let span = tracing::info_span!("command", action = "pause", outcome = tracing::field::Empty);
//!     span.record("outcome", "ok");
//! }
//! let command = log.only("command");
//! assert_eq!(command.field("action"), Some("pause"));
//! assert_eq!(command.field("outcome"), Some("ok"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One span as it was opened and recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedSpan {
    /// The span's name (`command`, `store_call`, `request`, ...).
    pub name: &'static str,
    /// Its target (the module that opened it).
    pub target: String,
    /// Every field with a value, as text (`Display` for strings and
    /// numbers, `Debug` otherwise).
    pub fields: BTreeMap<String, String>,
    /// The name of its parent span, if it has one.
    pub parent: Option<&'static str>,
    /// Its position in the log: parents come before their children.
    pub index: usize,
    /// The position of its parent in the log.
    pub parent_index: Option<usize>,
}

impl CapturedSpan {
    /// The value of field `name`, if it was recorded.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// One event (a log line) as it was emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedEvent {
    /// Its level (`INFO`, `DEBUG`, ...).
    pub level: tracing::Level,
    /// Its target.
    pub target: String,
    /// Every field, `message` included, as text.
    pub fields: BTreeMap<String, String>,
    /// The position of the span it was emitted in, if any.
    pub span_index: Option<usize>,
}

/// Every span opened, and every event emitted, while a
/// [`SpanLog::capture`] guard was alive, in order. Cheap to clone: clones
/// share the log.
#[derive(Debug, Clone, Default)]
pub struct SpanLog {
    spans: Arc<Mutex<Vec<CapturedSpan>>>,
    events: Arc<Mutex<Vec<CapturedEvent>>>,
}

impl SpanLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs a subscriber that writes to this log as the current
    /// thread's default, until the guard is dropped. Spans of every level
    /// are captured.
    pub fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::registry().with(Capture { log: self.clone() });
        tracing::subscriber::set_default(subscriber)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<CapturedSpan>> {
        // A test that panicked while recording still leaves a usable log.
        self.spans.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every span captured so far.
    pub fn spans(&self) -> Vec<CapturedSpan> {
        self.lock().clone()
    }

    /// Every event captured so far.
    pub fn events(&self) -> Vec<CapturedEvent> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The spans named `name`, in opening order.
    pub fn named(&self, name: &str) -> Vec<CapturedSpan> {
        self.lock().iter().filter(|s| s.name == name).cloned().collect()
    }

    /// The one span named `name`; panics (a test failure) with the spans
    /// seen when there is none or more than one.
    pub fn only(&self, name: &str) -> CapturedSpan {
        let found = self.named(name);
        match found.as_slice() {
            [one] => one.clone(),
            _ => panic!(
                "expected exactly one `{name}` span, found {}: {:#?}",
                found.len(),
                self.spans()
            ),
        }
    }

    /// The spans whose parent is the span at `index`.
    pub fn children_of(&self, index: usize) -> Vec<CapturedSpan> {
        self.lock()
            .iter()
            .filter(|s| s.parent_index == Some(index))
            .cloned()
            .collect()
    }
}

/// The layer behind [`SpanLog::capture`].
struct Capture {
    log: SpanLog,
}

/// Where a span is in the log (kept in the registry's span extensions).
struct Position(usize);

struct FieldText<'a>(&'a mut BTreeMap<String, String>);

impl Visit for FieldText<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span.parent();
        let parent_index = parent
            .as_ref()
            .and_then(|p| p.extensions().get::<Position>().map(|at| at.0));
        let mut fields = BTreeMap::new();
        attrs.record(&mut FieldText(&mut fields));
        let mut spans = self.log.lock();
        let index = spans.len();
        spans.push(CapturedSpan {
            name: span.name(),
            target: span.metadata().target().to_owned(),
            fields,
            parent: parent.map(|p| p.name()),
            index,
            parent_index,
        });
        drop(spans);
        span.extensions_mut().insert(Position(index));
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let span_index = ctx
            .event_span(event)
            .and_then(|span| span.extensions().get::<Position>().map(|at| at.0));
        let mut fields = BTreeMap::new();
        event.record(&mut FieldText(&mut fields));
        self.log
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(CapturedEvent {
                level: *event.metadata().level(),
                target: event.metadata().target().to_owned(),
                fields,
                span_index,
            });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(index) = span.extensions().get::<Position>().map(|at| at.0) else {
            return;
        };
        let mut spans = self.log.lock();
        if let Some(captured) = spans.get_mut(index) {
            values.record(&mut FieldText(&mut captured.fields));
        }
    }
}

/// Every `metrics` counter and histogram recorded while a
/// [`MetricsLog::capture`] guard was alive.
///
/// ```
/// use fielding_testkit::observe::MetricsLog;
/// let log = MetricsLog::new();
/// {
///     let _capture = log.capture();
///     metrics::counter!("fielding_commands_total", "action" => "pause", "outcome" => "ok").increment(2);
/// }
/// assert_eq!(log.counter("fielding_commands_total", &[("action", "pause")]), 2);
/// assert_eq!(log.counter("fielding_commands_total", &[("outcome", "unchanged")]), 0);
/// ```
#[derive(Default)]
pub struct MetricsLog {
    recorder: metrics_util::debugging::DebuggingRecorder,
    /// Everything drained from the recorder so far: its snapshots hand
    /// each counter's increments and histogram's samples out once.
    seen: Mutex<BTreeMap<SeriesKey, Series>>,
}

impl fmt::Debug for MetricsLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsLog").finish_non_exhaustive()
    }
}

/// A series' name and labels.
type SeriesKey = (String, BTreeMap<String, String>);

/// One metric's series: its labels and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The metric's name.
    pub name: String,
    /// Its labels, sorted by key.
    pub labels: BTreeMap<String, String>,
    /// A counter's value (0 for other kinds).
    pub counter: u64,
    /// A histogram's samples (empty for other kinds).
    pub samples: Vec<f64>,
}

impl MetricsLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes this log the current thread's `metrics` recorder until the
    /// guard is dropped.
    pub fn capture(&self) -> metrics::LocalRecorderGuard<'_> {
        metrics::set_default_local_recorder(&self.recorder)
    }

    /// Every series recorded so far.
    pub fn series(&self) -> Vec<Series> {
        use metrics_util::debugging::DebugValue;
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, _, _, value) in self.recorder.snapshotter().snapshot().into_vec() {
            let key = key.key();
            let labels: BTreeMap<String, String> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let series = seen
                .entry((key.name().to_owned(), labels.clone()))
                .or_insert_with(|| Series {
                    name: key.name().to_owned(),
                    labels,
                    counter: 0,
                    samples: Vec::new(),
                });
            match value {
                DebugValue::Counter(count) => series.counter += count,
                DebugValue::Histogram(samples) => series.samples.extend(samples.into_iter().map(|s| s.into_inner())),
                DebugValue::Gauge(_) => {}
            }
        }
        seen.values().cloned().collect()
    }

    /// The series of `name` that carry every one of `labels`.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<Series> {
        self.series()
            .into_iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The sum of the counters of `name` that carry every one of `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.matching(name, labels).iter().map(|s| s.counter).sum()
    }

    /// How many samples the histograms of `name` that carry every one of
    /// `labels` hold, together.
    pub fn samples(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.matching(name, labels).iter().map(|s| s.samples.len()).sum()
    }
}
