//! Where "now" comes from.
//!
//! The lifecycle depends on the clock (a scheduled run turns live at its
//! start), so the service asks a [`Clock`] instead of the system directly.
//! Tests use [`ManualClock`] to stand at any instant and step over a start or
//! an end without sleeping.

use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::TimeDelta;

use crate::Timestamp;

/// A source of the current time, in whole milliseconds.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        // Straight to whole milliseconds, no calendar: this is on every
        // write path.
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        match since_epoch.ok().and_then(|d| i64::try_from(d.as_millis()).ok()) {
            Some(millis) => Timestamp::from_unix_millis(millis).unwrap_or(Timestamp::UNIX_EPOCH),
            // A system clock set before 1970: rare enough to take the slow path.
            None => Timestamp::from_datetime(chrono::Utc::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_agrees_with_chrono_to_the_millisecond() {
        let before = Timestamp::from_datetime(chrono::Utc::now());
        let now = SystemClock.now();
        let after = Timestamp::from_datetime(chrono::Utc::now());
        assert!(before <= now && now <= after, "{before} <= {now} <= {after}");
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use chrono::TimeDelta;
/// use fielding_core::{Clock, ManualClock, Timestamp};
/// let clock = ManualClock::new("2030-01-01T00:00:00Z".parse()?);
/// let shared = clock.clone();
/// clock.advance(TimeDelta::minutes(5));
/// assert_eq!(shared.now().to_string(), "2030-01-01T00:05:00.000Z");
/// # Ok::<(), fielding_core::InvalidTimestamp>(())
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Timestamp>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock to `instant` (backwards too, if a test wants that).
    pub fn set(&self, instant: Timestamp) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) = instant;
    }

    /// Moves the clock by `delta`. Saturates at chrono's representable range.
    pub fn advance(&self, delta: TimeDelta) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(next) = now.checked_add(delta) {
            *now = next;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}
