//! Strict query strings, for the endpoints that take parameters (the
//! change feed): each parameter the route knows at most once, and no
//! other (400 naming each), as a body may repeat no key and carry no
//! unknown field.
//!
//! A misspelt parameter is refused rather than ignored: `?afer=41.0`
//! read as "no cursor" would restart a consumer from the oldest record,
//! and `?limit=5&limit=500` has no one meaning.

use std::borrow::Cow;
use std::collections::HashSet;

/// Unknown parameter names listed in one refusal at most (error bodies
/// show fewer still).
const MAX_UNKNOWN_LISTED: usize = 20;

use fielding_core::InvalidParam;

/// The parameters of one query string the route knows, decoded.
#[derive(Debug, Default)]
pub(crate) struct Query {
    values: Vec<(&'static str, String)>,
}

impl Query {
    /// The value of `name`, if it was sent (once).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Splits `raw` (the query string without `?`, as sent) into the
/// parameters in `known`, and a refusal for each parameter sent more than
/// once, then for each not in `known` (each named once, in order of
/// appearance). Callers list their own findings (a malformed value) before
/// these, as for bodies: what the client must fix comes first when the
/// list is cut. Names and values are percent-decoded (`+` is a space), as
/// HTML forms and URL libraries encode them.
pub(crate) fn parse(raw: Option<&str>, known: &[&'static str]) -> (Query, Vec<InvalidParam>) {
    let mut query = Query::default();
    let mut repeated: Vec<InvalidParam> = Vec::new();
    let mut unknown: Vec<InvalidParam> = Vec::new();
    // A set, and only the first few names: a head full of distinct names
    // (thousands within the head limit) costs linear time, not quadratic.
    let mut unknown_names: HashSet<String> = HashSet::new();
    for (name, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match known.iter().find(|k| **k == name) {
            Some(&name) if query.get(name).is_some() => {
                if !repeated.iter().any(|p| p.name == name) {
                    repeated.push(InvalidParam::new(
                        name,
                        "is sent more than once; send each parameter once",
                    ));
                }
            }
            Some(&name) => query.values.push((name, value.into_owned())),
            None => {
                if unknown_names.len() < MAX_UNKNOWN_LISTED && unknown_names.insert(name.clone().into_owned()) {
                    let reason = format!("is not a known parameter (known: {})", known.join(", "));
                    unknown.push(InvalidParam::new(clipped(name), reason));
                }
            }
        }
    }
    repeated.extend(unknown);
    (query, repeated)
}

/// The name as an error body may echo it.
fn clipped(name: Cow<'_, str>) -> String {
    crate::problem::clip(&name).into_owned()
}

/// The whole number in `text` if it is canonical decimal (digits only, no
/// sign, no leading zero) and within `range`.
pub(crate) fn whole_number(text: &str, range: std::ops::RangeInclusive<u64>) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.len() <= 20
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    let value = canonical.then(|| text.parse::<u64>().ok()).flatten()?;
    range.contains(&value).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: [&str; 3] = ["after", "limit", "wait"];

    fn names(problems: &[InvalidParam]) -> Vec<&str> {
        problems.iter().map(|p| p.name.as_ref()).collect()
    }

    #[test]
    fn known_parameters_are_decoded() {
        let (query, problems) = parse(Some("after=41.0&limit=5&wait=%32%30"), &KNOWN);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(query.get("after"), Some("41.0"));
        assert_eq!(query.get("limit"), Some("5"));
        assert_eq!(query.get("wait"), Some("20"));
        let (query, problems) = parse(None, &KNOWN);
        assert!(problems.is_empty() && query.get("after").is_none());
        let (query, problems) = parse(Some(""), &KNOWN);
        assert!(problems.is_empty() && query.get("limit").is_none());
        let (query, _) = parse(Some("after"), &KNOWN);
        assert_eq!(
            query.get("after"),
            Some(""),
            "a name without a value has an empty value"
        );
    }

    #[test]
    fn a_query_of_many_distinct_unknown_names_is_refused_quickly() {
        let raw: String = (0..200_000).map(|i| format!("p{i}=1&")).collect();
        let started = std::time::Instant::now();
        let (_, problems) = parse(Some(&raw), &KNOWN);
        assert_eq!(problems.len(), MAX_UNKNOWN_LISTED);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn repeats_and_unknown_names_are_each_named_once_in_order() {
        let (query, problems) = parse(Some("limit=5&afer=1.0&limit=6&x=1&limit=7&afer=2.0&l%69mit=8"), &KNOWN);
        assert_eq!(names(&problems), ["limit", "afer", "x"], "repeats, then unknown names");
        assert!(problems[0].reason.contains("more than once"), "{}", problems[0].reason);
        assert!(
            problems[1].reason.contains("not a known parameter"),
            "{}",
            problems[1].reason
        );
        assert!(
            problems[1].reason.contains("after, limit, wait"),
            "{}",
            problems[1].reason
        );
        assert_eq!(
            query.get("limit"),
            Some("5"),
            "the first value is kept (and refused anyway)"
        );
    }

    #[test]
    fn long_unknown_names_are_cut() {
        let long = "n".repeat(10_000);
        let (_, problems) = parse(Some(&format!("{long}=1")), &KNOWN);
        assert_eq!(problems[0].name.chars().count(), crate::problem::MAX_ECHOED_CHARS + 1);
    }

    #[test]
    fn whole_numbers_are_canonical_and_in_range() {
        assert_eq!(whole_number("0", 0..=30), Some(0));
        assert_eq!(whole_number("30", 0..=30), Some(30));
        assert_eq!(whole_number("1000", 1..=1000), Some(1000));
        for bad in [
            "",
            "31",
            "-1",
            "+1",
            "01",
            "1.5",
            "1e2",
            " 1",
            "18446744073709551616",
            "x",
        ] {
            assert_eq!(whole_number(bad, 0..=30), None, "{bad:?}");
        }
        assert_eq!(whole_number("0", 1..=1000), None);
    }
}
