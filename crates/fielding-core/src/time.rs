//! Timestamps with exactly millisecond precision.
//!
//! The contract speaks RFC 3339 with three fractional digits. Databases keep
//! different precisions (SQLite text, PostgreSQL microseconds), so every value
//! is truncated to whole milliseconds the moment it enters the library; after
//! that a value round-trips identically through every store and compares the
//! same everywhere.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, TimeDelta, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant truncated to whole milliseconds.
///
/// Input accepts any RFC 3339 timestamp (offsets are converted to UTC);
/// output is always `YYYY-MM-DDTHH:MM:SS.mmmZ`. Held as milliseconds since
/// the Unix epoch, so comparing, copying and storing are integer operations;
/// the calendar is only consulted to parse and print.
///
/// The range is years 0000 to 9999: exactly what RFC 3339's four-digit
/// years can express, so every value prints as text that parses back to it.
///
/// ```
/// use fielding_core::Timestamp;
/// let t: Timestamp = "2024-10-01T11:00:00.123456+02:00".parse()?;
/// assert_eq!(t.to_string(), "2024-10-01T09:00:00.123Z");
/// # Ok::<(), fielding_core::InvalidTimestamp>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Text that is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 timestamp (expected e.g. 2024-10-01T09:00:00.000Z): {reason}")]
pub struct InvalidTimestamp {
    reason: String,
}

impl Timestamp {
    /// The Unix epoch, a convenient fixed point for tests.
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);
    /// `0000-01-01T00:00:00.000Z`, the earliest RFC 3339 instant.
    pub const MIN: Timestamp = Timestamp(-62_167_219_200_000);
    /// `9999-12-31T23:59:59.999Z`, the latest RFC 3339 instant.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// Converts any chrono time to UTC, dropping everything below a
    /// millisecond. Times outside years 0000-9999 are clamped to
    /// [`Timestamp::MIN`] / [`Timestamp::MAX`]; use
    /// [`Timestamp::from_unix_millis`] to detect them instead.
    pub fn from_datetime<Tz: TimeZone>(value: DateTime<Tz>) -> Self {
        Self(value.timestamp_millis().clamp(Self::MIN.0, Self::MAX.0))
    }

    /// The instant `millis` milliseconds after the Unix epoch, if it lies in
    /// years 0000-9999.
    pub fn from_unix_millis(millis: i64) -> Option<Self> {
        (Self::MIN.0..=Self::MAX.0).contains(&millis).then_some(Self(millis))
    }

    /// Milliseconds since the Unix epoch: the representation stores use.
    pub fn unix_millis(&self) -> i64 {
        self.0
    }

    /// Parses RFC 3339 text, converting to UTC and truncating to milliseconds.
    pub fn parse_rfc3339(text: &str) -> Result<Self, InvalidTimestamp> {
        DateTime::parse_from_rfc3339(text)
            .map(Self::from_datetime)
            .map_err(|e| InvalidTimestamp { reason: e.to_string() })
    }

    /// The value as a chrono UTC time.
    pub fn as_datetime(&self) -> DateTime<Utc> {
        // Every constructor keeps the value within years 0000-9999, well
        // inside chrono's range.
        DateTime::from_timestamp_millis(self.0).unwrap_or_default()
    }

    /// `self + delta`, truncated to milliseconds; `None` when out of range.
    pub fn checked_add(&self, delta: TimeDelta) -> Option<Self> {
        self.0
            .checked_add(delta.num_milliseconds())
            .and_then(Self::from_unix_millis)
    }

    /// `self - delta`, truncated to milliseconds; `None` when out of range.
    pub fn checked_sub(&self, delta: TimeDelta) -> Option<Self> {
        self.0
            .checked_sub(delta.num_milliseconds())
            .and_then(Self::from_unix_millis)
    }

    /// The signed time from `earlier` to `self`.
    pub fn since(&self, earlier: Timestamp) -> TimeDelta {
        // Both lie within years 0000-9999, so the difference fits a TimeDelta.
        TimeDelta::milliseconds(self.0 - earlier.0)
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(value: DateTime<Utc>) -> Self {
        Self::from_datetime(value)
    }
}

impl From<Timestamp> for DateTime<Utc> {
    fn from(value: Timestamp) -> Self {
        value.as_datetime()
    }
}

impl FromStr for Timestamp {
    type Err = InvalidTimestamp;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_rfc3339(s)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_datetime().to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_utc_with_three_fraction_digits() {
        let t = Timestamp::parse_rfc3339("2024-10-01T09:00:00Z").unwrap();
        assert_eq!(t.to_string(), "2024-10-01T09:00:00.000Z");
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"2024-10-01T09:00:00.000Z\"");
    }

    #[test]
    fn offsets_convert_and_sub_millis_truncate() {
        let t = Timestamp::parse_rfc3339("2024-10-01T00:30:00.999999-01:00").unwrap();
        assert_eq!(t.to_string(), "2024-10-01T01:30:00.999Z");
    }

    #[test]
    fn truncation_before_the_epoch_rounds_down() {
        let t = Timestamp::parse_rfc3339("1969-12-31T23:59:59.9995Z").unwrap();
        assert_eq!(t.to_string(), "1969-12-31T23:59:59.999Z");
        assert_eq!(t.unix_millis(), -1);
    }

    #[test]
    fn round_trips_through_text_and_millis() {
        let t = Timestamp::parse_rfc3339("2031-02-03T04:05:06.789Z").unwrap();
        assert_eq!(t.to_string().parse::<Timestamp>().unwrap(), t);
        assert_eq!(Timestamp::from_unix_millis(t.unix_millis()), Some(t));
    }

    #[test]
    fn arithmetic_stays_in_whole_milliseconds_and_in_range() {
        let t = Timestamp::parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
        let later = t.checked_add(TimeDelta::microseconds(1_999)).unwrap();
        assert_eq!(later.to_string(), "2030-01-01T00:00:00.001Z");
        assert_eq!(later.since(t), TimeDelta::milliseconds(1));
        assert_eq!(
            t.checked_sub(TimeDelta::days(1)).unwrap().to_string(),
            "2029-12-31T00:00:00.000Z"
        );
        assert!(t.checked_add(TimeDelta::MAX).is_none());
        assert!(Timestamp::from_unix_millis(i64::MAX).is_none());
        assert_eq!(t.as_datetime().timestamp_millis(), t.unix_millis());
    }

    #[test]
    fn the_range_is_what_rfc3339_can_print_and_parse_back() {
        assert_eq!(Timestamp::MIN.to_string(), "0000-01-01T00:00:00.000Z");
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999Z");
        for t in [Timestamp::MIN, Timestamp::MAX] {
            assert_eq!(t.to_string().parse::<Timestamp>().unwrap(), t);
        }
        assert!(Timestamp::from_unix_millis(Timestamp::MAX.unix_millis() + 1).is_none());
        assert!(Timestamp::from_unix_millis(Timestamp::MIN.unix_millis() - 1).is_none());
        assert!(Timestamp::MAX.checked_add(TimeDelta::milliseconds(1)).is_none());
        let far = chrono::DateTime::<Utc>::from_timestamp(400_000_000_000, 0).unwrap();
        assert_eq!(Timestamp::from_datetime(far), Timestamp::MAX);
    }

    #[test]
    fn rejects_non_rfc3339() {
        for bad in [
            "",
            "2024-10-01",
            "2024-10-01T09:00:00",
            "yesterday",
            "2024-13-01T00:00:00Z",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad:?}");
        }
    }
}
