//! What the server counts (through the `metrics` facade: install any
//! recorder to see them) and how it keeps refusals out of the logs.
//!
//! Refused requests (any 4xx) are cheap to make, so logging each one
//! would let an anonymous client fill the disk: they are counted instead,
//! logged per request only at `debug`, and summarised at `info` at most
//! once per [`REFUSAL_SUMMARY_EVERY`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Gauge: connections open now.
pub const CONNECTIONS_OPEN: &str = "fielding_server_connections_open";
/// Counter: connections accepted.
pub const CONNECTIONS_ACCEPTED: &str = "fielding_server_connections_accepted_total";
/// Counter: connections the server closed on its own, by `reason`
/// (`header_timeout`, `idle_timeout`, `shutdown`).
pub const CONNECTIONS_CLOSED: &str = "fielding_server_connections_closed_total";
/// Counter: responses, by `status` class (`2xx`, `4xx`, `5xx`, ...).
pub const RESPONSES: &str = "fielding_server_responses_total";
/// Counter: requests refused by the per-address limit.
pub const ADDRESS_LIMITED: &str = "fielding_server_address_limited_total";

/// How often, at most, refusals are summarised in the log.
pub const REFUSAL_SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Counts events and says when to write one summary line for them.
#[derive(Debug)]
pub struct SampledLog {
    every: Duration,
    since_last: AtomicU64,
    last: Mutex<Instant>,
}

impl SampledLog {
    /// At most one summary per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            since_last: AtomicU64::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    /// Counts one event; returns how many happened since the last summary
    /// when it is time for the next one.
    pub fn record(&self) -> Option<u64> {
        self.since_last.fetch_add(1, Ordering::Relaxed);
        // Never wait for the lock: another thread is writing the summary.
        let mut last = self.last.try_lock().ok()?;
        if last.elapsed() < self.every {
            return None;
        }
        *last = Instant::now();
        Some(self.since_last.swap(0, Ordering::Relaxed))
    }
}

/// The class label of a status: `2xx`, `4xx`, ...
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_summary_per_window_counting_everything_in_between() {
        let log = SampledLog::new(Duration::from_millis(50));
        assert_eq!(log.record(), None, "the first window has just begun");
        assert_eq!(log.record(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(log.record(), Some(3));
        assert_eq!(log.record(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(log.record(), Some(2));
    }

    #[test]
    fn statuses_fall_into_their_class() {
        assert_eq!(status_class(202), "2xx");
        assert_eq!(status_class(401), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(101), "1xx");
    }
}
