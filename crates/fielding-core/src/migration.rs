//! What a store's `migrate` reports, the same for every SQL adapter.

/// What a store's `migrate` did: the schema version it found and the one
/// it left (the adapter's `SCHEMA_VERSION`). Versions are numbered from 1
/// with no gaps, so the migrations applied are exactly those in between.
///
/// ```
/// use fielding_core::MigrationReport;
/// let report = MigrationReport { from: 1, to: 3 };
/// assert_eq!(report.applied(), 2);
/// assert_eq!(report.applied_versions().collect::<Vec<_>>(), [2, 3]);
/// assert_eq!(MigrationReport { from: 3, to: 3 }.applied(), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationReport {
    /// The schema version before (0: a new, empty database or schema).
    pub from: u32,
    /// The schema version now.
    pub to: u32,
}

impl MigrationReport {
    /// How many migrations were applied (0 when already current).
    pub fn applied(&self) -> u32 {
        self.to.saturating_sub(self.from)
    }

    /// The versions of the migrations applied, oldest first (empty when
    /// already current).
    pub fn applied_versions(&self) -> std::ops::RangeInclusive<u32> {
        self.from + 1..=self.to
    }
}
