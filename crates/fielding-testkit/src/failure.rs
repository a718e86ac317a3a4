//! What a case reports when a store breaks a promise.

use std::fmt;

use fielding_core::StoreError;

/// A broken promise: which case caught it, which promise of the
/// [`FieldingStore`](fielding_core::FieldingStore) contract the store broke,
/// and the values the case saw.
///
/// Cases return this instead of panicking so a caller can run a store
/// through the whole suite and collect every failure ([`crate::run_all`]),
/// and so the kit's own tests can assert *which* case rejects a broken
/// store. The generated `#[tokio::test]`s panic with its `Display` text.
///
/// ```
/// use fielding_testkit::CaseFailure;
/// let failure = CaseFailure::new(
///     "compare_and_swap_with_a_stale_version_is_refused_and_changes_nothing",
///     "a stale compare-and-swap is refused with the current version",
///     "expected VersionConflict { expected: 3, current: 4 }, got Ok(())",
/// );
/// assert!(failure.to_string().contains("promise broken: a stale compare-and-swap"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseFailure {
    case: &'static str,
    promise: &'static str,
    detail: String,
}

impl CaseFailure {
    /// A failure of `case`: `promise` was broken, `detail` says how.
    pub fn new(case: &'static str, promise: &'static str, detail: impl Into<String>) -> Self {
        Self {
            case,
            promise,
            detail: detail.into(),
        }
    }

    /// The case that caught it (the name of its generated test).
    pub fn case(&self) -> &'static str {
        self.case
    }

    /// The promise of the contract that was broken, in one sentence.
    pub fn promise(&self) -> &'static str {
        self.promise
    }

    /// What the case saw: the values that break the promise.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for CaseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conformance case `{}` failed\n  promise broken: {}\n  seen: {}",
            self.case, self.promise, self.detail
        )
    }
}

impl std::error::Error for CaseFailure {}

/// The promise broken when a valid call fails outright.
pub(crate) const ANSWERS_VALID_CALLS: &str = "the store answers valid calls without an error";

/// A small helper every case uses to build failures with its own name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Case {
    pub(crate) name: &'static str,
}

impl Case {
    pub(crate) const fn new(name: &'static str) -> Self {
        Self { name }
    }

    pub(crate) fn fail(&self, promise: &'static str, detail: impl Into<String>) -> CaseFailure {
        CaseFailure::new(self.name, promise, detail)
    }

    /// `Err(fail(..))` unless `holds`; the detail is only built on failure.
    pub(crate) fn ensure(
        &self,
        holds: bool,
        promise: &'static str,
        detail: impl FnOnce() -> String,
    ) -> Result<(), CaseFailure> {
        if holds {
            Ok(())
        } else {
            Err(self.fail(promise, detail()))
        }
    }

    /// The value of a call that must succeed.
    pub(crate) fn ok<T>(&self, call: impl fmt::Display, result: Result<T, StoreError>) -> Result<T, CaseFailure> {
        result.map_err(|err| self.error(call, &err))
    }

    /// The failure for a valid call that failed with `err`.
    pub(crate) fn error(&self, call: impl fmt::Display, err: &StoreError) -> CaseFailure {
        self.fail(ANSWERS_VALID_CALLS, format!("{call} failed: {err} ({err:?})"))
    }
}
