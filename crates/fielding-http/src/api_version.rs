//! The `Cint-API-Version` header: required on every request, a
//! `YYYY-MM-DD` date.

use chrono::NaiveDate;
use fielding_core::InvalidParam;

/// The header's name as the contract spells it.
pub const HEADER: &str = "Cint-API-Version";

/// The API version this crate implements (the contract's `info.version`).
pub const IMPLEMENTED: &str = "2025-12-18";

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
    let mut lines = lines.into_iter();
    let value = match (lines.next(), lines.next()) {
        (Some(only), None) => only,
        (None, _) => return Err(InvalidParam::new(HEADER, "is required (a date such as 2025-12-18)")),
        (Some(_), Some(_)) => return Err(InvalidParam::new(HEADER, "must be sent once")),
    };
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
        .ok_or_else(|| InvalidParam::new(HEADER, "must be a date in YYYY-MM-DD form, such as 2025-12-18"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
