//! What the server counts (through the `metrics` facade: install any
//! recorder to see them) and how it keeps refusals out of the logs.
//!
//! Refused requests (any 4xx) are cheap to make, so logging each one
//! would let an anonymous client fill the disk: they are counted instead,
//! logged per request only at `debug`, and summarised at `info`: the first
//! at once, then at most once per [`REFUSAL_SUMMARY_EVERY`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Key, Label, Metadata, Recorder};

/// Gauge: connections open now.
pub const CONNECTIONS_OPEN: &str = "fielding_server_connections_open";
/// Counter: connections accepted.
pub const CONNECTIONS_ACCEPTED: &str = "fielding_server_connections_accepted_total";
/// Counter: connections the server closed on its own, by `reason`
/// (`header_timeout`, `idle_timeout`, `shutdown`).
pub const CONNECTIONS_CLOSED: &str = "fielding_server_connections_closed_total";
/// Counter: connections closed as soon as they were accepted, by `reason`
/// (`per_address`: the address had its maximum open).
pub const CONNECTIONS_REFUSED: &str = "fielding_server_connections_refused_total";
/// Counter: responses, by `status` class (`2xx`, `4xx`, `5xx`, ...).
pub const RESPONSES: &str = "fielding_server_responses_total";
/// Counter: requests refused by the per-address limit.
pub const ADDRESS_LIMITED: &str = "fielding_server_address_limited_total";

/// How often, at most, refusals are summarised in the log.
pub const REFUSAL_SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Counts events and says when to write one summary line for them: at the
/// first event, then at the first event at least `every` after the
/// previous summary.
#[derive(Debug)]
pub struct SampledLog {
    every: Duration,
    since_last: AtomicU64,
    /// When the previous summary was written; `None` before the first.
    last: Mutex<Option<Instant>>,
}

/// What a summary line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Events since the previous summary, this one included.
    pub count: u64,
    /// Time since the previous summary (zero for the first).
    pub over: Duration,
}

impl SampledLog {
    /// At most one summary per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            since_last: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// Counts one event; returns what to report when a summary is due.
    pub fn record(&self) -> Option<Summary> {
        self.since_last.fetch_add(1, Ordering::Relaxed);
        // Never wait for the lock: another thread is writing the summary.
        let mut last = self.last.try_lock().ok()?;
        let over = match *last {
            Some(at) if at.elapsed() < self.every => return None,
            Some(at) => at.elapsed(),
            None => Duration::ZERO,
        };
        *last = Some(Instant::now());
        Some(Summary {
            count: self.since_last.swap(0, Ordering::Relaxed),
            over,
        })
    }
}

/// The class label of a status: `2xx`, `4xx`, ...
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class_index(status: u16) -> usize {
    match status / 100 {
        1 => 0,
        2 => 1,
        3 => 2,
        4 => 3,
        _ => 4,
    }
}

static STATUS_LABELS: [[Label; 1]; 5] = [
    [Label::from_static_parts("status", STATUS_CLASSES[0])],
    [Label::from_static_parts("status", STATUS_CLASSES[1])],
    [Label::from_static_parts("status", STATUS_CLASSES[2])],
    [Label::from_static_parts("status", STATUS_CLASSES[3])],
    [Label::from_static_parts("status", STATUS_CLASSES[4])],
];

/// The [`RESPONSES`] key of each status class, made at compile time: the
/// `counter!` macro, given a label value it cannot see at compile time,
/// builds the key on every call (a label list allocated, the key hashed),
/// and the Prometheus exporter copies such owned labels once more to look
/// the key up; a key with `'static` labels is looked up as it is.
static RESPONSE_KEYS: [Key; 5] = [
    Key::from_static_parts(RESPONSES, &STATUS_LABELS[0]),
    Key::from_static_parts(RESPONSES, &STATUS_LABELS[1]),
    Key::from_static_parts(RESPONSES, &STATUS_LABELS[2]),
    Key::from_static_parts(RESPONSES, &STATUS_LABELS[3]),
    Key::from_static_parts(RESPONSES, &STATUS_LABELS[4]),
];

static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// The [`RESPONSES`] counters of the process's global recorder, registered
/// once ([`remember_global_recorder`]), with the recorder's address.
struct GlobalResponses {
    /// Only compared, never dereferenced.
    recorder: usize,
    counters: [Counter; 5],
}

static GLOBAL_RESPONSES: OnceLock<GlobalResponses> = OnceLock::new();

/// The address of a recorder, for comparison only.
fn address(recorder: &dyn Recorder) -> usize {
    std::ptr::from_ref(recorder).cast::<()>().addr()
}

/// Registers the [`RESPONSES`] counters with the global recorder once it is
/// installed, so that [`count_response`] increments a handle instead of
/// looking the key up in the recorder on every response.
///
/// The recorder is looked up from a new thread: a thread starts without a
/// local recorder (`metrics::set_default_local_recorder`), so what it sees
/// is the global one. A global recorder is never dropped or replaced, so
/// its address names it for the life of the process: a local recorder
/// (a test's) can never be mistaken for it, and sees its own counts. A
/// recorder of no size has no address of its own (two may share one), so
/// none is remembered then; nor when no global recorder is installed yet
/// (what the thread sees then is the facade's no-op recorder, of no
/// size). Call it after installing the global recorder.
pub(crate) fn remember_global_recorder() {
    let global = std::thread::scope(|scope| {
        let looked_up = std::thread::Builder::new().spawn_scoped(scope, || {
            metrics::with_recorder(|recorder| {
                (std::mem::size_of_val(recorder) > 0).then(|| GlobalResponses {
                    recorder: address(recorder),
                    counters: std::array::from_fn(|class| recorder.register_counter(&RESPONSE_KEYS[class], &METADATA)),
                })
            })
        });
        // No thread (the system refused one): responses are looked up as
        // they were, one by one.
        looked_up.ok().and_then(|thread| thread.join().ok()).flatten()
    });
    if let Some(global) = global {
        // A second call finds the same recorder: the first one's stays.
        let _ = GLOBAL_RESPONSES.set(global);
    }
}

/// Counts one response with `status` in [`RESPONSES`]: through the handle
/// `remember_global_recorder` made (at the exporter's install) when the recorder in use is that
/// global one, otherwise looked up in the recorder in use.
pub fn count_response(status: u16) {
    let class = status_class_index(status);
    metrics::with_recorder(|recorder| match GLOBAL_RESPONSES.get() {
        Some(global) if global.recorder == address(recorder) => global.counters[class].increment(1),
        _ => recorder.register_counter(&RESPONSE_KEYS[class], &METADATA).increment(1),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_is_reported_then_one_summary_per_window() {
        let log = SampledLog::new(Duration::from_millis(50));
        assert_eq!(
            log.record(),
            Some(Summary {
                count: 1,
                over: Duration::ZERO
            }),
            "the first is reported at once"
        );
        assert_eq!(log.record(), None);
        assert_eq!(log.record(), None);
        std::thread::sleep(Duration::from_millis(60));
        let summary = log.record().unwrap();
        assert_eq!(summary.count, 3, "everything since the previous summary");
        assert!(summary.over >= Duration::from_millis(50), "{summary:?}");
        assert_eq!(log.record(), None);
        std::thread::sleep(Duration::from_millis(120));
        let summary = log.record().unwrap();
        assert_eq!(summary.count, 2);
        assert!(
            summary.over >= Duration::from_millis(120),
            "the real time since the previous summary: {summary:?}"
        );
    }

    /// The only test of this binary that installs a global recorder (a
    /// process has one for good). Other tests may count responses into it
    /// meanwhile, so its counts are bounded from below only.
    #[test]
    fn the_global_recorder_counts_through_its_handles_and_a_local_one_still_sees_its_own() {
        let global = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = global.snapshotter();
        remember_global_recorder();
        assert!(
            GLOBAL_RESPONSES.get().is_none(),
            "before a global recorder is installed, nothing is remembered"
        );
        metrics::set_global_recorder(global).unwrap();
        remember_global_recorder();
        remember_global_recorder();
        assert_eq!(
            GLOBAL_RESPONSES.get().map(|g| g.recorder),
            Some(metrics::with_recorder(address)),
            "the handles remembered are the global recorder's: the fast path is taken"
        );
        for status in [200, 201, 404] {
            count_response(status);
        }
        let local = fielding_testkit::observe::MetricsLog::new();
        {
            let _capture = local.capture();
            count_response(202);
            count_response(503);
        }
        assert_eq!(
            local.counter(RESPONSES, &[("status", "2xx")]),
            1,
            "a local recorder sees its own"
        );
        assert_eq!(local.counter(RESPONSES, &[]), 2);
        // One snapshot: taking one resets the debugging recorder's counters.
        let snapshot = snapshotter.snapshot().into_vec();
        let counted = |class: &str| {
            snapshot
                .iter()
                .filter(|(key, ..)| {
                    key.key().name() == RESPONSES
                        && key.key().labels().any(|l| l.key() == "status" && l.value() == class)
                })
                .map(|(.., value)| match value {
                    metrics_util::debugging::DebugValue::Counter(n) => *n,
                    _ => 0,
                })
                .sum::<u64>()
        };
        assert!(counted("2xx") >= 2, "{snapshot:?}");
        assert!(counted("4xx") >= 1, "{snapshot:?}");
    }

    #[test]
    fn statuses_fall_into_their_class() {
        assert_eq!(status_class(202), "2xx");
        assert_eq!(status_class(401), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(101), "1xx");
        assert_eq!(status_class(302), "3xx");
        assert_eq!(status_class(600), "5xx");
    }

    #[test]
    fn responses_are_counted_by_class() {
        let metrics = fielding_testkit::observe::MetricsLog::new();
        {
            let _capture = metrics.capture();
            for status in [200, 202, 404, 500, 101] {
                count_response(status);
            }
        }
        assert_eq!(metrics.counter(RESPONSES, &[("status", "2xx")]), 2);
        assert_eq!(metrics.counter(RESPONSES, &[("status", "4xx")]), 1);
        assert_eq!(metrics.counter(RESPONSES, &[("status", "5xx")]), 1);
        assert_eq!(metrics.counter(RESPONSES, &[("status", "1xx")]), 1);
        assert_eq!(metrics.counter(RESPONSES, &[]), 5);
    }
}
