//! A write's precondition as the caller stated it, judged by the service
//! once it has found the run.
//!
//! Every write must say which version it was based on. Whether it said so
//! properly is checked only after the run was found, because the contract
//! orders the checks: not found (404), then a missing or malformed
//! `If-Match` (400), then a stale one (412), then the body (400), then the
//! lifecycle (422). So a caller hands over what it received, parsed or
//! not, and [`crate::FieldingService::execute_request`] judges it in
//! that order.

use crate::{FieldingError, IfMatch, InvalidIfMatch, Version};

/// What the caller sent as its `If-Match`.
///
/// ```
/// use fielding_core::{Precondition, Version};
/// let stated = Precondition::from_header_lines([&b"\"7\""[..]]);
/// assert!(stated.check(Version::new(7).unwrap()).is_ok());
/// let stale = stated.check(Version::new(8).unwrap()).unwrap_err();
/// assert_eq!(stale.code(), "precondition_failed_error");
///
/// let missing = Precondition::from_header_lines(std::iter::empty());
/// let err = missing.check(Version::INITIAL).unwrap_err();
/// assert_eq!(err.invalid_params()[0].name, "If-Match");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// A well-formed `If-Match`.
    IfMatch(IfMatch),
    /// No `If-Match` at all: refused, naming the header.
    Missing,
    /// An `If-Match` that does not follow RFC 9110's grammar: refused,
    /// naming the header.
    Malformed(InvalidIfMatch),
}

impl Precondition {
    /// The precondition of a request whose `If-Match` arrived on `lines`
    /// (none: [`Precondition::Missing`]). Several lines are one list, as
    /// [`IfMatch::parse_lines`] reads them.
    pub fn from_header_lines<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut lines = lines.into_iter().peekable();
        if lines.peek().is_none() {
            return Precondition::Missing;
        }
        match IfMatch::parse_lines(lines) {
            Ok(if_match) => Precondition::IfMatch(if_match),
            Err(invalid) => Precondition::Malformed(invalid),
        }
    }

    /// Whether a write may go ahead on a run at `current`: a validation
    /// error naming `If-Match` when it is missing or malformed, a
    /// precondition failure (carrying `current`) when it names another
    /// version.
    pub fn check(&self, current: Version) -> Result<(), FieldingError> {
        match self {
            Precondition::IfMatch(if_match) => check_if_match(if_match, current),
            Precondition::Missing => Err(FieldingError::invalid_field(
                "If-Match",
                "is required: send the ETag of a GET of this fielding run",
            )),
            Precondition::Malformed(invalid) => Err(FieldingError::from(invalid.clone())),
        }
    }

    /// Whether a run that another writer has just moved to `current` still
    /// satisfies this precondition, so the command may be decided again
    /// on it instead of failing (`If-Match: *`, or a list naming it).
    pub fn admits(&self, current: Version) -> bool {
        matches!(self, Precondition::IfMatch(if_match) if if_match.matches(current))
    }
}

impl From<IfMatch> for Precondition {
    fn from(if_match: IfMatch) -> Self {
        Precondition::IfMatch(if_match)
    }
}

/// `if_match` against the run's `current` version.
#[inline]
pub(crate) fn check_if_match(if_match: &IfMatch, current: Version) -> Result<(), FieldingError> {
    if if_match.matches(current) {
        Ok(())
    } else {
        Err(stale(current))
    }
}

#[cold]
fn stale(current: Version) -> FieldingError {
    FieldingError::PreconditionFailed { current }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u64) -> Version {
        Version::new(n).unwrap()
    }

    #[test]
    fn lines_become_one_list_and_star_admits_every_version() {
        let two = Precondition::from_header_lines([&b"\"6\""[..], &b"\"7\""[..]]);
        assert!(two.check(v(6)).is_ok() && two.check(v(7)).is_ok());
        assert!(two.admits(v(7)) && !two.admits(v(8)));
        let any = Precondition::from_header_lines([&b"*"[..]]);
        assert!(any.admits(v(99)));
    }

    #[test]
    fn missing_and_malformed_are_bad_requests_naming_the_header_and_never_admit() {
        for stated in [
            Precondition::Missing,
            Precondition::from_header_lines([&b"7"[..]]),
            Precondition::from_header_lines([&b"*"[..], &b"\"1\""[..]]),
        ] {
            let err = stated.check(v(1)).unwrap_err();
            assert_eq!(err.code(), "bad_request_error", "{stated:?}");
            assert_eq!(err.invalid_params()[0].name, "If-Match");
            assert!(!stated.admits(v(1)));
        }
    }

    #[test]
    fn a_stale_tag_carries_the_current_version() {
        let stated = Precondition::from(IfMatch::version(v(3)));
        match stated.check(v(5)) {
            Err(FieldingError::PreconditionFailed { current }) => assert_eq!(current, v(5)),
            other => panic!("{other:?}"),
        }
    }
}
