//! What an adapter may legitimately not support, stated instead of
//! commenting assertions out.

use std::time::Duration;

use fielding_core::Version;

/// What the store under test can do, where the contract leaves room.
///
/// Start from [`Capabilities::full`] (the default: everything the
/// [`FieldingStore`](fielding_core::FieldingStore) contract asks for) and
/// lower only what your backend genuinely cannot do. Each flag says what the
/// kit does differently, and none of them switches a promise off: a store
/// that declares a limit is still held to every promise within that limit.
///
/// ```
/// use fielding_testkit::Capabilities;
/// // A store on a backend whose numbers are IEEE doubles (exact to 2^53),
/// // which answers contention with retryable "busy" errors.
/// const CAPS: Capabilities = Capabilities::full()
///     .with_max_version(1 << 53)
///     .with_retryable_errors_under_contention(true);
/// assert_eq!(CAPS.max_version().get(), 1 << 53);
/// assert_eq!(CAPS.concurrent_writers(), Capabilities::DEFAULT_CONCURRENT_WRITERS);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    max_version: u64,
    concurrent_writers: usize,
    retryable_errors_under_contention: bool,
    max_feed_lag: Duration,
}

impl Capabilities {
    /// The smallest [`max_version`](Self::with_max_version) the kit accepts:
    /// 2^32. Versions must get past the 32-bit boundaries (2^31 and 2^32),
    /// where `i32`/`u32` columns and casts break; a store that cannot is
    /// not a store for this library.
    pub const MIN_MAX_VERSION: u64 = 1 << 32;

    /// How many parallel writers the race cases use unless lowered: 8.
    pub const DEFAULT_CONCURRENT_WRITERS: usize = 8;

    /// The most parallel writers the kit accepts: 64.
    pub const MAX_CONCURRENT_WRITERS: usize = 64;

    /// How long the feed cases wait for a written record to become
    /// readable unless lowered: 30 s.
    pub const DEFAULT_MAX_FEED_LAG: Duration = Duration::from_secs(30);

    /// Everything the contract asks for: versions up to [`Version::MAX`]
    /// (`i64::MAX`), [`DEFAULT_CONCURRENT_WRITERS`](Self::DEFAULT_CONCURRENT_WRITERS)
    /// parallel writers, and no errors under contention.
    pub const fn full() -> Self {
        Self {
            max_version: i64::MAX as u64,
            concurrent_writers: Self::DEFAULT_CONCURRENT_WRITERS,
            retryable_errors_under_contention: false,
            max_feed_lag: Self::DEFAULT_MAX_FEED_LAG,
        }
    }

    /// **The highest version the store can hold**, for a backend that cannot
    /// store every version up to `i64::MAX` exactly (say, one whose numbers
    /// are IEEE doubles, exact only to 2^53, such as Lua scripts in Redis or
    /// a JSON document store).
    ///
    /// The version cases then test every boundary up to `max` (always 9, 99,
    /// 999, 2^31 and 2^32) and also the step to `max` itself; nothing above.
    /// The service refuses a change past [`Version::MAX`] only, so a store
    /// that declares a lower limit must answer a write past it with a
    /// [`StoreError::Backend`](fielding_core::StoreError::Backend), never by
    /// wrapping or rounding: say so in your adapter's documentation.
    ///
    /// # Panics
    ///
    /// If `max` is below [`MIN_MAX_VERSION`](Self::MIN_MAX_VERSION) or above
    /// `i64::MAX`.
    pub const fn with_max_version(mut self, max: u64) -> Self {
        assert!(
            max >= Self::MIN_MAX_VERSION,
            "Capabilities::with_max_version: a store must hold versions up to at least 2^32 (past the 32-bit boundaries)"
        );
        assert!(
            max <= i64::MAX as u64,
            "Capabilities::with_max_version: versions never exceed i64::MAX"
        );
        self.max_version = max;
        self
    }

    /// **How many writers the race cases run in parallel** (default
    /// [`DEFAULT_CONCURRENT_WRITERS`](Self::DEFAULT_CONCURRENT_WRITERS)),
    /// for a backend that serialises everything through one connection or
    /// has a small pool, where many writers only make the suite slower.
    ///
    /// The races need at least two writers, so a lower value is refused
    /// loudly rather than silently turning the races into sequential
    /// tests. Even on a single connection, two *tasks* can race: each reads,
    /// then writes, and the other may write in between.
    ///
    /// # Panics
    ///
    /// If `writers` is below 2 or above
    /// [`MAX_CONCURRENT_WRITERS`](Self::MAX_CONCURRENT_WRITERS).
    pub const fn with_concurrent_writers(mut self, writers: usize) -> Self {
        assert!(
            writers >= 2,
            "Capabilities::with_concurrent_writers: a race needs at least 2 writers; 1 would silently test nothing"
        );
        assert!(
            writers <= Self::MAX_CONCURRENT_WRITERS,
            "Capabilities::with_concurrent_writers: at most 64 writers"
        );
        self.concurrent_writers = writers;
        self
    }

    /// **Whether the store may answer contention with a retryable
    /// [`StoreError::Backend`](fielding_core::StoreError::Backend)** (default
    /// `false`), as databases do: PostgreSQL's serialization failures under
    /// `SERIALIZABLE`, SQLite's `SQLITE_BUSY`.
    ///
    /// When `true`, wherever operations run concurrently (the race cases,
    /// concurrent inserts, concurrent steps of the linearizability schedules)
    /// a retryable backend error counts as "nothing happened": the kit
    /// checks that indeed nothing was written, and retries. A permanent
    /// backend error is a failure either way, and sequential calls must
    /// never fail.
    pub const fn with_retryable_errors_under_contention(mut self, allowed: bool) -> Self {
        self.retryable_errors_under_contention = allowed;
        self
    }

    /// **How long a written record may take to become readable in the
    /// feed** (default [`DEFAULT_MAX_FEED_LAG`](Self::DEFAULT_MAX_FEED_LAG)).
    ///
    /// A store may hold a committed record back for a while (PostgreSQL
    /// does, until every transaction older than the record's has ended),
    /// so the feed cases read on until a record comes, and call it missing
    /// only after this long. Nothing else depends on it: a store passes or
    /// fails the same cases whatever it is, but a store that drops records
    /// fails sooner with a lower value. Lower it for a store whose records
    /// are readable as soon as the write returns (memory, SQLite), where a
    /// record not there by then is not coming.
    pub const fn with_max_feed_lag(mut self, lag: Duration) -> Self {
        self.max_feed_lag = lag;
        self
    }

    /// How long the feed cases wait for a written record.
    pub const fn max_feed_lag(&self) -> Duration {
        self.max_feed_lag
    }

    /// The highest version the kit will write.
    pub fn max_version(&self) -> Version {
        Version::new(self.max_version).unwrap_or(Version::MAX)
    }

    /// How many parallel writers the race cases use.
    pub const fn concurrent_writers(&self) -> usize {
        self.concurrent_writers
    }

    /// Whether retryable backend errors are tolerated under contention.
    pub const fn retryable_errors_under_contention(&self) -> bool {
        self.retryable_errors_under_contention
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_is_the_contract() {
        let caps = Capabilities::default();
        assert_eq!(caps.max_version(), Version::MAX);
        assert_eq!(caps.concurrent_writers(), 8);
        assert!(!caps.retryable_errors_under_contention());
        assert_eq!(caps.max_feed_lag(), Duration::from_secs(30));
    }

    #[test]
    #[should_panic(expected = "at least 2 writers")]
    fn one_writer_is_refused_loudly() {
        let _ = Capabilities::full().with_concurrent_writers(1);
    }

    #[test]
    #[should_panic(expected = "at least 2^32")]
    fn a_32_bit_version_limit_is_refused() {
        let _ = Capabilities::full().with_max_version(i32::MAX as u64);
    }
}
