//! Versions, strong ETags and `If-Match` (RFC 9110 §8.8.3, §13.1.1).
//!
//! A run's version is its ETag: version 7 is served as `ETag: "7"`. A writer
//! sends back what it last saw in `If-Match`; the write happens only if that
//! still names the current version. Comparison is *strong* (§8.8.3.2): a weak
//! tag such as `W/"7"` never matches, even though the contract's examples
//! show weak tags, because a weak validator cannot guard a write.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The version of a fielding run: 1 when created, plus one per change.
///
/// Limited to `1..=i64::MAX` so every database can store it as a signed
/// 64-bit integer.
///
/// ```
/// use fielding_core::Version;
/// let v = Version::INITIAL;
/// assert_eq!(v.get(), 1);
/// assert_eq!(v.next().map(Version::get), Some(2));
/// assert_eq!(v.etag().to_string(), "\"1\"");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(u64);

impl Version {
    /// The version of a newly created run.
    pub const INITIAL: Version = Version(1);
    /// The largest version any store must hold.
    pub const MAX: Version = Version(i64::MAX as u64);

    /// `Some` for `1..=i64::MAX`.
    pub fn new(value: u64) -> Option<Self> {
        (1..=Self::MAX.0).contains(&value).then_some(Self(value))
    }

    /// The numeric value.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The version after this one, `None` past [`Version::MAX`].
    pub fn next(self) -> Option<Self> {
        Self::new(self.0 + 1)
    }

    /// The strong ETag for this version.
    pub fn etag(self) -> ETag {
        ETag(self)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u64::deserialize(deserializer)?;
        Self::new(value).ok_or_else(|| serde::de::Error::custom("version must be from 1 to 2^63-1"))
    }
}

/// The strong entity tag of a version: `"<version>"`.
///
/// ```
/// use fielding_core::{IfMatch, Version};
/// let etag = Version::new(7).unwrap().etag();
/// assert_eq!(etag.to_string(), "\"7\"");
/// assert!(IfMatch::parse(&etag.to_string())?.matches(etag.version()));
/// # Ok::<(), fielding_core::InvalidIfMatch>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ETag(Version);

impl ETag {
    /// The version this tag names.
    pub fn version(self) -> Version {
        self.0
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

/// One entity tag from an `If-Match` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTag {
    /// `true` for `W/"..."`; such a tag never matches under strong comparison.
    pub weak: bool,
    /// The text between the quotes.
    pub opaque: String,
}

impl EntityTag {
    /// Strong comparison (RFC 9110 §8.8.3.2) with a version's ETag: both
    /// strong, and the opaque text equal byte for byte (so `"07"` is not `"7"`).
    pub fn strongly_matches(&self, version: Version) -> bool {
        if self.weak {
            return false;
        }
        let canonical = !self.opaque.is_empty()
            && self.opaque.len() <= 20
            && self.opaque.bytes().all(|b| b.is_ascii_digit())
            && (self.opaque == "0" || !self.opaque.starts_with('0'));
        canonical && self.opaque.parse::<u64>().ok() == Some(version.get())
    }
}

impl fmt::Display for EntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weak {
            f.write_str("W/")?;
        }
        write!(f, "\"{}\"", self.opaque)
    }
}

/// A parsed `If-Match` header.
///
/// ```
/// use fielding_core::{IfMatch, Version};
/// let v7 = Version::new(7).unwrap();
/// assert!(IfMatch::parse("\"6\", \"7\"")?.matches(v7));
/// assert!(IfMatch::parse("*")?.matches(v7));
/// assert!(!IfMatch::parse("W/\"7\"")?.matches(v7)); // weak never matches
/// assert!(IfMatch::parse("7").is_err());           // unquoted: malformed
/// # Ok::<(), fielding_core::InvalidIfMatch>(())
/// ```
#[derive(Debug, Clone, Eq)]
#[non_exhaustive]
pub enum IfMatch {
    /// `*`: matches any current version of an existing run.
    Any,
    /// A list of entity tags; matches if any one strongly matches.
    Tags(Vec<EntityTag>),
    /// Exactly the strong ETag of one version, as built by
    /// [`IfMatch::version`] for callers that hold a version rather than a
    /// header. Equal to the parsed `"<version>"`, without allocating.
    Version(Version),
}

impl PartialEq for IfMatch {
    /// Compares what the conditions mean: `IfMatch::version(7)` equals the
    /// parsed `"7"`.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (IfMatch::Any, IfMatch::Any) => true,
            (IfMatch::Tags(a), IfMatch::Tags(b)) => a == b,
            (IfMatch::Version(a), IfMatch::Version(b)) => a == b,
            (IfMatch::Version(v), IfMatch::Tags(tags)) | (IfMatch::Tags(tags), IfMatch::Version(v)) => {
                matches!(tags.as_slice(), [only] if only.strongly_matches(*v))
            }
            _ => false,
        }
    }
}

/// An `If-Match` value that does not follow RFC 9110's grammar. This is a
/// bad request (400), distinct from a well-formed tag that does not match
/// (412).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("If-Match is malformed: {reason}")]
pub struct InvalidIfMatch {
    reason: String,
}

impl InvalidIfMatch {
    fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into() }
    }

    /// What is wrong with the value.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl IfMatch {
    /// The `If-Match` that names exactly one version.
    pub fn version(version: Version) -> Self {
        IfMatch::Version(version)
    }

    /// Parses one header value.
    pub fn parse(value: &str) -> Result<Self, InvalidIfMatch> {
        Self::parse_bytes(value.as_bytes())
    }

    /// Parses one header value given as bytes (header values may carry
    /// `obs-text`, bytes 0x80-0xFF, inside an entity tag).
    pub fn parse_bytes(value: &[u8]) -> Result<Self, InvalidIfMatch> {
        Self::parse_lines([value])
    }

    /// Parses a header that arrived on several field lines. Per RFC 9110
    /// §5.3 the lines are one comma-separated list, so `"6"` and `"7"` on two
    /// lines mean the same as `"6", "7"`. `*` must stand alone.
    pub fn parse_lines<'a, I>(lines: I) -> Result<Self, InvalidIfMatch>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let mut tags = Vec::new();
        let mut any = false;
        let mut lines_seen = 0usize;
        for line in lines {
            lines_seen += 1;
            if trim_ows(line) == b"*" {
                any = true;
            } else {
                parse_tag_list(line, &mut tags)?;
            }
        }
        match (any, tags.is_empty()) {
            (true, true) if lines_seen == 1 => Ok(IfMatch::Any),
            (true, _) => Err(InvalidIfMatch::new("`*` must be the only value")),
            (false, true) => Err(InvalidIfMatch::new(
                "no entity tag given; send the ETag of a GET, e.g. \"7\", or *",
            )),
            (false, false) => Ok(IfMatch::Tags(tags)),
        }
    }

    /// Whether this condition holds for a run currently at `version`.
    #[inline]
    pub fn matches(&self, version: Version) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::Tags(tags) => tags.iter().any(|t| t.strongly_matches(version)),
            IfMatch::Version(v) => *v == version,
        }
    }
}

impl fmt::Display for IfMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IfMatch::Any => f.write_str("*"),
            IfMatch::Tags(tags) => {
                for (i, tag) in tags.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    fmt::Display::fmt(tag, f)?;
                }
                Ok(())
            }
            IfMatch::Version(v) => fmt::Display::fmt(&v.etag(), f),
        }
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// `etagc = %x21 / %x23-7E / obs-text`: visible characters except `"`.
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7E).contains(&b) || b >= 0x80
}

/// Parses `#entity-tag` (a list that tolerates empty elements, §5.6.1.2).
/// A scanner, not a split on commas: commas are legal inside a tag.
fn parse_tag_list(line: &[u8], out: &mut Vec<EntityTag>) -> Result<(), InvalidIfMatch> {
    let mut i = 0;
    let n = line.len();
    loop {
        // Skip OWS and empty list elements.
        while i < n && (is_ows(line[i]) || line[i] == b',') {
            i += 1;
        }
        if i == n {
            return Ok(());
        }
        let weak = line[i..].starts_with(b"W/");
        if weak {
            i += 2;
        }
        if i >= n || line[i] != b'"' {
            return Err(InvalidIfMatch::new(format!(
                "expected a quoted entity tag such as \"7\" at byte {}",
                i + 1
            )));
        }
        i += 1;
        let start = i;
        while i < n && is_etagc(line[i]) {
            i += 1;
        }
        if i >= n || line[i] != b'"' {
            return Err(InvalidIfMatch::new(format!(
                "entity tag starting at byte {start} is not closed by a quote"
            )));
        }
        let opaque = String::from_utf8_lossy(&line[start..i]).into_owned();
        i += 1;
        out.push(EntityTag { weak, opaque });
        while i < n && is_ows(line[i]) {
            i += 1;
        }
        if i < n && line[i] != b',' {
            return Err(InvalidIfMatch::new(format!(
                "expected a comma after an entity tag at byte {}",
                i + 1
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u64) -> Version {
        Version::new(n).unwrap()
    }

    #[test]
    fn version_bounds() {
        assert!(Version::new(0).is_none());
        assert!(Version::new(i64::MAX as u64).is_some());
        assert!(Version::new(i64::MAX as u64 + 1).is_none());
        assert_eq!(Version::MAX.next(), None);
        assert_eq!(v(9).next(), Some(v(10)));
    }

    #[test]
    fn etag_is_strong_quoted_version() {
        assert_eq!(v(42).etag().to_string(), "\"42\"");
    }

    #[test]
    fn single_tag() {
        assert!(IfMatch::parse("\"7\"").unwrap().matches(v(7)));
        assert!(!IfMatch::parse("\"6\"").unwrap().matches(v(7)));
    }

    #[test]
    fn lists_match_any_member() {
        let m = IfMatch::parse("\"6\", \"7\"").unwrap();
        assert!(m.matches(v(6)) && m.matches(v(7)) && !m.matches(v(8)));
        let tight = IfMatch::parse("\"6\",\"7\"").unwrap();
        assert_eq!(tight, m);
    }

    #[test]
    fn empty_list_elements_are_tolerated() {
        for value in ["\"7\", ,", ", \"7\"", "\"7\",,,", " ,\t\"7\" , "] {
            assert!(IfMatch::parse(value).unwrap().matches(v(7)), "{value:?}");
        }
    }

    #[test]
    fn star_matches_any_version() {
        let m = IfMatch::parse("  *  ").unwrap();
        assert_eq!(m, IfMatch::Any);
        assert!(m.matches(v(1)) && m.matches(v(123_456)));
    }

    #[test]
    fn star_must_stand_alone() {
        assert!(IfMatch::parse("*, \"7\"").is_err());
        assert!(IfMatch::parse_lines([&b"*"[..], &b"\"7\""[..]]).is_err());
        assert!(IfMatch::parse_lines([&b"*"[..], &b"*"[..]]).is_err());
    }

    #[test]
    fn weak_tags_never_match() {
        let m = IfMatch::parse("W/\"7\"").unwrap();
        assert!(!m.matches(v(7)));
        let mixed = IfMatch::parse("W/\"7\", \"8\"").unwrap();
        assert!(!mixed.matches(v(7)) && mixed.matches(v(8)));
    }

    #[test]
    fn strong_comparison_is_byte_exact() {
        let m = IfMatch::parse("\"07\"").unwrap();
        assert!(!m.matches(v(7)));
        assert!(!IfMatch::parse("\" 7\"").is_ok_and(|m| m.matches(v(7))));
    }

    #[test]
    fn versions_of_many_digits() {
        for n in [9u64, 10, 99, 100, 1 << 31, (1 << 31) + 1, i64::MAX as u64] {
            let m = IfMatch::parse(&v(n).etag().to_string()).unwrap();
            assert!(m.matches(v(n)));
            assert!(!m.matches(v(n - 1)));
        }
        // A tag longer than any u64 is well-formed but matches nothing.
        assert!(!IfMatch::parse("\"184467440737095516150\"").unwrap().matches(v(1)));
    }

    #[test]
    fn opaque_tags_may_hold_commas_and_obs_text() {
        let m = IfMatch::parse_bytes(b"\"a,b\", \"\xff\"").unwrap();
        match m {
            IfMatch::Tags(tags) => {
                assert_eq!(tags.len(), 2);
                assert_eq!(tags[0].opaque, "a,b");
            }
            other => panic!("expected tags, got {other:?}"),
        }
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [
            "",
            "   ",
            ",",
            ", ,",
            "7",
            "\"7",
            "7\"",
            "\"7\" \"8\"",
            "w/\"7\"",
            "W/7",
            "W/",
            "\"7\"x",
            "\"a\"b\"",
            "**",
            "* *",
            "\"7\";",
        ] {
            assert!(IfMatch::parse(bad).is_err(), "{bad:?} should be malformed");
        }
        assert!(IfMatch::parse_bytes(b"\"\x01\"").is_err());
        assert!(IfMatch::parse_bytes(b"\"\x7f\"").is_err());
    }

    #[test]
    fn several_field_lines_form_one_list() {
        let m = IfMatch::parse_lines([&b"\"6\""[..], &b"\"7\""[..]]).unwrap();
        assert!(m.matches(v(6)) && m.matches(v(7)));
        assert!(IfMatch::parse_lines([&b"\"6\""[..], &b"7"[..]]).is_err());
        assert!(IfMatch::parse_lines(std::iter::empty::<&[u8]>()).is_err());
    }

    #[test]
    fn version_condition_equals_the_parsed_tag() {
        assert_eq!(IfMatch::version(v(7)), IfMatch::parse("\"7\"").unwrap());
        assert_eq!(IfMatch::parse(" \"7\" ").unwrap(), IfMatch::version(v(7)));
        assert_ne!(IfMatch::version(v(7)), IfMatch::parse("\"07\"").unwrap());
        assert_ne!(IfMatch::version(v(7)), IfMatch::parse("W/\"7\"").unwrap());
        assert_ne!(IfMatch::version(v(7)), IfMatch::parse("\"7\", \"8\"").unwrap());
        assert_ne!(IfMatch::version(v(7)), IfMatch::Any);
        assert!(IfMatch::version(v(7)).matches(v(7)) && !IfMatch::version(v(7)).matches(v(8)));
    }

    #[test]
    fn display_round_trips() {
        let m = IfMatch::parse("W/\"1\",  \"2\"").unwrap();
        assert_eq!(IfMatch::parse(&m.to_string()).unwrap(), m);
        assert_eq!(IfMatch::version(v(3)).to_string(), "\"3\"");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                let _ = IfMatch::parse_bytes(&bytes);
            }

            #[test]
            fn a_version_etag_always_matches_itself_only(n in 1u64..=i64::MAX as u64, other in 1u64..=i64::MAX as u64) {
                let m = IfMatch::parse(&v(n).etag().to_string()).unwrap();
                prop_assert!(m.matches(v(n)));
                prop_assert_eq!(m.matches(v(other)), n == other);
            }
        }
    }
}
