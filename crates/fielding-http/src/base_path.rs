//! Where the API is mounted: the path prefix every contract path is
//! served under.
//!
//! The contract's paths (`/demand/accounts/...`) are relative to its
//! server URL, `https://api.cint.com/v1`, so a client generated from it
//! calls `/v1/demand/accounts/...`: [`CONTRACT_BASE_PATH`]. The router
//! itself defaults to [`BasePath::root`] (the paths exactly as the
//! contract writes them), so an app that nests it under a prefix of its
//! own keeps full control; `fielding-server` serves under
//! [`CONTRACT_BASE_PATH`] by default.
//!
//! A base path is checked once, when it is made: it must be a plain
//! absolute path, because it becomes part of every route and of every
//! `Location` header the API builds.

use std::fmt;
use std::str::FromStr;

/// The path of the contract's server URL (`https://api.cint.com/v1`).
pub const CONTRACT_BASE_PATH: &str = "/v1";

/// The longest base path accepted, in bytes: far longer than any real
/// prefix (`/v1`, `/api/fielding/v1`), short enough that no request line
/// grows much because of it.
pub const MAX_BASE_PATH_LEN: usize = 256;

/// A validated base path: `/`, or `/` followed by one or more segments
/// separated by single `/`s, with no trailing `/`.
///
/// Each segment is made of ASCII letters, digits, `-`, `.`, `_` and `~`
/// (RFC 3986's unreserved characters) and is neither `.` nor `..`. That
/// rules out query strings, fragments, percent-encoding, whitespace and
/// the `{…}` and `*` of axum's route syntax, so the prefix means the same
/// to the router, to a client and in a `Location` header.
///
/// ```
/// use fielding_http::BasePath;
/// let v1: BasePath = "/v1".parse().unwrap();
/// assert_eq!(v1.as_str(), "/v1");
/// assert!(BasePath::root().is_root());
/// assert!("/v1/".parse::<BasePath>().is_err());
/// assert!("v1".parse::<BasePath>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BasePath(String);

impl BasePath {
    /// `/`: the contract's paths as they are written.
    pub fn root() -> Self {
        Self("/".to_owned())
    }

    /// [`CONTRACT_BASE_PATH`], `/v1`.
    pub fn contract() -> Self {
        Self(CONTRACT_BASE_PATH.to_owned())
    }

    /// Checks `path` (see [`BasePath`] for the rules).
    pub fn parse(path: &str) -> Result<Self, BasePathError> {
        if path.len() > MAX_BASE_PATH_LEN {
            return Err(BasePathError::TooLong);
        }
        let Some(rest) = path.strip_prefix('/') else {
            return Err(BasePathError::NotAbsolute);
        };
        if rest.is_empty() {
            return Ok(Self::root());
        }
        for segment in rest.split('/') {
            match segment {
                // `/a//b` or `/a/`: an empty segment.
                "" => return Err(BasePathError::EmptySegment),
                "." | ".." => return Err(BasePathError::DotSegment),
                _ => {}
            }
            if let Some(bad) = segment.chars().find(|c| !is_unreserved(*c)) {
                return Err(BasePathError::Character(bad));
            }
        }
        Ok(Self(path.to_owned()))
    }

    /// The path as given: `/` or `/seg/...`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// What goes before a contract path (`/demand/...`): empty for `/`,
    /// the path itself otherwise.
    pub fn prefix(&self) -> &str {
        if self.is_root() {
            ""
        } else {
            &self.0
        }
    }

    /// `path` (a contract path, starting with `/`) under this base path.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.prefix())
    }
}

impl Default for BasePath {
    /// [`BasePath::root`].
    fn default() -> Self {
        Self::root()
    }
}

impl fmt::Display for BasePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BasePath {
    type Err = BasePathError;

    fn from_str(path: &str) -> Result<Self, Self::Err> {
        Self::parse(path)
    }
}

impl AsRef<str> for BasePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// RFC 3986 `unreserved`: the characters a path segment carries as they are.
fn is_unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

/// Why a base path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BasePathError {
    /// It does not start with `/`.
    NotAbsolute,
    /// It has an empty segment: a trailing `/` (other than `/` itself) or
    /// a `//`.
    EmptySegment,
    /// A segment is `.` or `..`.
    DotSegment,
    /// A character outside letters, digits, `-`, `.`, `_` and `~` (such
    /// as `?`, `#`, `%`, whitespace, `{`).
    Character(char),
    /// Longer than [`MAX_BASE_PATH_LEN`] bytes.
    TooLong,
}

impl fmt::Display for BasePathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAbsolute => f.write_str("a base path must start with `/` (e.g. `/v1`, or `/` for none)"),
            Self::EmptySegment => f.write_str("a base path must not end with `/` (except `/` itself) nor contain `//`"),
            Self::DotSegment => f.write_str("a base path must not contain `.` or `..` segments"),
            Self::Character(c) => write!(
                f,
                "a base path may contain only letters, digits, `-`, `.`, `_`, `~` and `/`, not {c:?}"
            ),
            Self::TooLong => write!(f, "a base path must be at most {MAX_BASE_PATH_LEN} bytes"),
        }
    }
}

impl std::error::Error for BasePathError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_absolute_paths_are_accepted() {
        for path in ["/", "/v1", "/api/fielding/v1", "/a-b_c.d~e", "/V1/2"] {
            let parsed = BasePath::parse(path).unwrap();
            assert_eq!(parsed.as_str(), path);
            assert_eq!(parsed.to_string(), path);
        }
        assert_eq!(
            BasePath::parse(&"/a".repeat(MAX_BASE_PATH_LEN / 2))
                .unwrap()
                .as_str()
                .len(),
            256
        );
    }

    #[test]
    fn everything_else_is_refused_with_its_reason() {
        for (path, reason) in [
            ("", BasePathError::NotAbsolute),
            ("v1", BasePathError::NotAbsolute),
            (" /v1", BasePathError::NotAbsolute),
            ("/v1/", BasePathError::EmptySegment),
            ("//", BasePathError::EmptySegment),
            ("/a//b", BasePathError::EmptySegment),
            ("/..", BasePathError::DotSegment),
            ("/v1/../admin", BasePathError::DotSegment),
            ("/./v1", BasePathError::DotSegment),
            ("/v1?x=1", BasePathError::Character('?')),
            ("/v1#top", BasePathError::Character('#')),
            ("/v 1", BasePathError::Character(' ')),
            ("/v1\t", BasePathError::Character('\t')),
            ("/v1\n", BasePathError::Character('\n')),
            ("/v%31", BasePathError::Character('%')),
            ("/{id}", BasePathError::Character('{')),
            ("/*rest", BasePathError::Character('*')),
            ("/v\u{e9}", BasePathError::Character('\u{e9}')),
        ] {
            assert_eq!(BasePath::parse(path), Err(reason), "{path:?}");
            assert!(!reason.to_string().is_empty());
        }
        let long = "/a".repeat(MAX_BASE_PATH_LEN / 2 + 1);
        assert_eq!(BasePath::parse(&long), Err(BasePathError::TooLong));
    }

    #[test]
    fn the_prefix_of_root_is_empty() {
        assert_eq!(BasePath::root().join("/demand/x"), "/demand/x");
        assert_eq!(BasePath::contract().join("/demand/x"), "/v1/demand/x");
        assert_eq!(BasePath::default(), BasePath::root());
        assert!(!BasePath::contract().is_root());
        assert_eq!(BasePath::contract().prefix(), "/v1");
    }
}
