//! Fault injection: make the next operations fail on purpose.

use std::sync::atomic::{AtomicU64, Ordering};

use fielding_core::{StoreError, Version};

/// A kind of failure to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Any operation fails with [`StoreError::Backend`] (permanent).
    Storage,
    /// Any operation fails with a retryable [`StoreError::Backend`].
    TransientStorage,
    /// `compare_and_swap` refuses with [`StoreError::VersionConflict`], as
    /// if another writer had just won: the reported current version is one
    /// past the expected one. Nothing is written. Other operations are not
    /// affected and do not use up the count.
    Conflict,
}

/// Counters of pending faults, shared by every clone of a store.
///
/// ```
/// use fielding_memory::{Fault, MemoryStore};
/// let store = MemoryStore::new();
/// store.faults().inject(Fault::Storage, 2); // the next two operations fail
/// assert_eq!(store.faults().pending(Fault::Storage), 2);
/// store.faults().clear();
/// ```
#[derive(Debug, Default)]
pub struct Faults {
    storage: AtomicU64,
    transient: AtomicU64,
    conflict: AtomicU64,
}

impl Faults {
    fn counter(&self, fault: Fault) -> &AtomicU64 {
        match fault {
            Fault::Storage => &self.storage,
            Fault::TransientStorage => &self.transient,
            Fault::Conflict => &self.conflict,
        }
    }

    /// Makes the next `count` affected operations fail with `fault`
    /// (adding to any already pending).
    pub fn inject(&self, fault: Fault, count: u64) {
        self.counter(fault).fetch_add(count, Ordering::SeqCst);
    }

    /// How many injected failures of this kind are still to come.
    pub fn pending(&self, fault: Fault) -> u64 {
        self.counter(fault).load(Ordering::SeqCst)
    }

    /// Drops every pending fault.
    pub fn clear(&self) {
        for fault in [Fault::Storage, Fault::TransientStorage, Fault::Conflict] {
            self.counter(fault).store(0, Ordering::SeqCst);
        }
    }

    /// Uses up one pending fault of this kind, if any.
    fn take(&self, fault: Fault) -> bool {
        self.counter(fault)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The storage fault to report for the operation `op`, if one is due.
    pub(crate) fn storage_fault(&self, op: &'static str) -> Option<StoreError> {
        if self.take(Fault::Storage) {
            return Some(StoreError::Backend {
                message: format!("injected storage fault in {op}"),
                retryable: false,
                source: None,
            });
        }
        if self.take(Fault::TransientStorage) {
            return Some(StoreError::Backend {
                message: format!("injected transient storage fault in {op}"),
                retryable: true,
                source: None,
            });
        }
        None
    }

    /// The conflict to report for a compare-and-swap at `expected`, if due.
    pub(crate) fn conflict(&self, expected: Version) -> Option<StoreError> {
        if self.take(Fault::Conflict) {
            return Some(StoreError::VersionConflict {
                expected,
                current: expected.next().unwrap_or(expected),
            });
        }
        None
    }
}
