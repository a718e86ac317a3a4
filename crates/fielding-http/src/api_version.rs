//! The `Cint-API-Version` header: required on every request, a
//! `YYYY-MM-DD` date, and one of the versions this crate implements
//! ([`SUPPORTED`]). The contract describes versions as dates that select
//! behaviour, so a date the server does not implement is refused (400
//! naming the supported versions) rather than served as some other
//! version's behaviour.

use axum::http::HeaderName;
use chrono::NaiveDate;
use fielding_core::InvalidParam;

/// The header's name as the contract spells it.
pub const HEADER: &str = "Cint-API-Version";

/// [`HEADER`] as a parsed name (lower case, as HTTP/1 names are
/// compared), so that a lookup does not parse the text again.
pub(crate) const HEADER_NAME: HeaderName = HeaderName::from_static("cint-api-version");

/// The API version this crate implements (the contract's `info.version`).
pub const IMPLEMENTED: &str = "2025-12-18";

/// Every version a request may ask for, oldest first. Only
/// [`IMPLEMENTED`] today: the contract (`fielding-openapi.yml` and
/// `fielding-batch-openapi.yml`) defines no other.
pub const SUPPORTED: &[&str] = &[IMPLEMENTED];

/// Reads the header's values as [`parse`] does, then requires one of
/// [`SUPPORTED`]; returns it.
///
/// ```
/// use fielding_http::api_version::{negotiate, IMPLEMENTED};
/// assert_eq!(negotiate([IMPLEMENTED.as_bytes()]), Ok(IMPLEMENTED));
/// let refused = negotiate([&b"2099-01-01"[..]]).unwrap_err();
/// assert!(refused.reason.contains(IMPLEMENTED), "{}", refused.reason);
/// ```
pub fn negotiate<'a, I>(lines: I) -> Result<&'static str, InvalidParam>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let value = one_line(lines)?;
    // A supported version is a real date by construction (a test checks
    // it), so the exact match, what nearly every request sends, skips the
    // calendar parse; anything else is parsed to say which rule it breaks.
    if let Some(version) = SUPPORTED.iter().find(|version| version.as_bytes() == value) {
        return Ok(version);
    }
    date(value)?;
    SUPPORTED
        .iter()
        .find(|version| version.as_bytes() == value)
        .copied()
        .ok_or_else(|| {
            // `date` accepted it: ten ASCII characters, safe to echo.
            let asked = String::from_utf8_lossy(value);
            InvalidParam::new(
                HEADER,
                format!("version {asked} is not supported; supported versions: {}", supported()),
            )
        })
}

/// The supported versions as a list for a reason text.
fn supported() -> String {
    SUPPORTED.join(", ")
}

/// Reads the header's values (all its lines): exactly one line holding a
/// real calendar date in `YYYY-MM-DD` form.
///
/// ```
/// use fielding_http::api_version::parse;
/// assert!(parse([&b"2025-12-18"[..]]).is_ok());
/// assert!(parse([&b"2025-13-01"[..]]).is_err());
/// assert!(parse(std::iter::empty::<&[u8]>()).is_err());
/// ```
pub fn parse<'a, I>(lines: I) -> Result<NaiveDate, InvalidParam>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    date(one_line(lines)?)
}

/// Exactly one header line.
fn one_line<'a, I>(lines: I) -> Result<&'a [u8], InvalidParam>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut lines = lines.into_iter();
    match (lines.next(), lines.next()) {
        (Some(only), None) => Ok(only),
        (None, _) => Err(InvalidParam::new(
            HEADER,
            format!("is required (supported versions: {})", supported()),
        )),
        (Some(_), Some(_)) => Err(InvalidParam::new(HEADER, "must be sent once")),
    }
}

/// A real calendar date in `YYYY-MM-DD` form.
fn date(value: &[u8]) -> Result<NaiveDate, InvalidParam> {
    let shaped = value.len() == 10
        && value.iter().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    let text = std::str::from_utf8(value).ok().filter(|_| shaped);
    text.and_then(|t| NaiveDate::parse_from_str(t, "%Y-%m-%d").ok())
        .ok_or_else(|| {
            InvalidParam::new(
                HEADER,
                format!(
                    "must be a date in YYYY-MM-DD form (supported versions: {})",
                    supported()
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parsed_name_is_the_contracts() {
        assert_eq!(HEADER_NAME, HeaderName::from_bytes(HEADER.as_bytes()).unwrap());
    }

    #[test]
    fn every_supported_version_is_a_real_date() {
        for version in SUPPORTED {
            assert!(date(version.as_bytes()).is_ok(), "{version}");
        }
    }

    #[test]
    fn accepts_real_dates_only() {
        for good in ["2025-12-18", "2024-02-29", "1999-01-01"] {
            assert!(parse([good.as_bytes()]).is_ok(), "{good}");
        }
        for bad in [
            "",
            "2025-12-1",
            "2025-1-18",
            "25-12-18",
            "2025/12/18",
            "2025-12-18 ",
            " 2025-12-18",
            "2023-02-29",
            "2025-00-10",
            "2025-12-32",
            "+2025-12-1",
            "２０２５-12-18",
            "2025-12-18T00:00:00Z",
        ] {
            let err = parse([bad.as_bytes()]).unwrap_err();
            assert_eq!(err.name, HEADER, "{bad:?}");
        }
    }

    #[test]
    fn only_supported_versions_pass_negotiation() {
        assert_eq!(SUPPORTED, [IMPLEMENTED]);
        for version in SUPPORTED {
            assert_eq!(negotiate([version.as_bytes()]), Ok(*version));
        }
        for unsupported in ["2099-01-01", "2025-12-17", "2025-12-19", "1999-01-01"] {
            let err = negotiate([unsupported.as_bytes()]).unwrap_err();
            assert_eq!(err.name, HEADER);
            assert!(err.reason.contains(unsupported), "{}", err.reason);
            assert!(err.reason.contains("supported versions: 2025-12-18"), "{}", err.reason);
        }
        // Malformed, missing and repeated values are refused as `parse` does,
        // and name the supported versions too where the client has to pick.
        assert!(negotiate([&b"2025-02-30"[..]])
            .unwrap_err()
            .reason
            .contains("YYYY-MM-DD"));
        assert!(negotiate(std::iter::empty::<&[u8]>())
            .unwrap_err()
            .reason
            .contains(IMPLEMENTED));
        assert!(negotiate([IMPLEMENTED.as_bytes(), IMPLEMENTED.as_bytes()]).is_err());
    }

    #[test]
    fn missing_or_repeated_is_refused() {
        assert!(parse(std::iter::empty::<&[u8]>())
            .unwrap_err()
            .reason
            .contains("required"));
        assert!(parse([&b"2025-12-18"[..], &b"2025-12-18"[..]])
            .unwrap_err()
            .reason
            .contains("once"));
    }
}
