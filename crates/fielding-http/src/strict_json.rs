//! JSON bodies parsed in one pass that also notices repeated keys.
//!
//! `serde_json::Value` keeps the last of two members with the same name, so
//! `{"end_fielding_at": A, "end_fielding_at": B}` would silently mean `B`,
//! while another reader of the same bytes may take `A`. RFC 8259 leaves
//! the meaning of such an object open; the server refuses it instead of
//! guessing. The parser here builds the same `Value` serde_json would (a
//! [`DeserializeSeed`] over serde_json's own deserializer, so its recursion
//! limit and number handling apply unchanged) and records the path of every
//! repeated key, at any depth, on the way.

use std::collections::HashSet;
use std::fmt::{self, Write as _};

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::problem::{clip, MAX_ECHOED_CHARS};

/// The body as a value, and the path of each key that appears more than
/// once in its object (`end_fielding_at`, `a.b`, `a[2].b`), in the order
/// the repeats were met; each path once, however often it repeats.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) value: Value,
    pub(crate) repeated: Vec<String>,
}

/// Parses `bytes` as one JSON value (trailing whitespace only).
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed, serde_json::Error> {
    let mut repeated = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Seed {
        path: None,
        repeated: &mut repeated,
    }
    .deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(Parsed { value, repeated })
}

/// The members `names`, when `bytes` is exactly one JSON object holding
/// each of them once, as a string without escapes, and nothing else: the
/// body a well-behaved client sends, read in place without building a
/// [`Value`]. `None` for anything else (an unknown, repeated, missing or
/// non-string member, an escaped string, malformed JSON); the caller then
/// reads the body with [`parse`], which names every problem, so the answer
/// to a bad body is the same whichever path it took.
pub(crate) fn exact_strings<'a, const N: usize>(bytes: &'a [u8], names: [&str; N]) -> Option<[&'a str; N]> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let found = deserializer.deserialize_map(Exact { names }).ok()?;
    deserializer.end().ok()?;
    Some(found)
}

/// The visitor of [`exact_strings`]: any departure from the exact shape is
/// an error, whose message nobody reads.
struct Exact<'n, const N: usize> {
    names: [&'n str; N],
}

impl<'de, const N: usize> Visitor<'de> for Exact<'_, N> {
    type Value = [&'de str; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of exactly the known string members")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let mut found: [Option<&'de str>; N] = [None; N];
        // `&str` borrows from the input, so an escaped key or value (which
        // would need unescaping into a new string) is an error here too.
        while let Some(key) = map.next_key::<&'de str>()? {
            let slot = self
                .names
                .iter()
                .position(|name| *name == key)
                .and_then(|at| found.get_mut(at))
                .filter(|slot| slot.is_none())
                .ok_or_else(|| A::Error::custom("not exactly the known members"))?;
            *slot = Some(map.next_value::<&'de str>()?);
        }
        let mut out = [""; N];
        for (out, found) in out.iter_mut().zip(found) {
            *out = found.ok_or_else(|| A::Error::missing_field("a known member"))?;
        }
        Ok(out)
    }
}

/// One step from the root to a value.
#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The steps to a value, innermost last; borrowed from the frames of the
/// parse, so nothing is allocated unless a repeat is found.
#[derive(Clone, Copy)]
struct Path<'a> {
    step: Step<'a>,
    parent: Option<&'a Path<'a>>,
}

impl Path<'_> {
    /// `a[2].b`, cut at [`MAX_ECHOED_CHARS`]: a path is echoed in the error
    /// body, and a body of long nested keys must not make a long answer.
    fn render(&self) -> String {
        let mut steps = Vec::new();
        let mut at = Some(self);
        while let Some(path) = at {
            steps.push(path.step);
            at = path.parent;
        }
        let mut out = String::new();
        for (i, step) in steps.iter().rev().enumerate() {
            // Writing to a String cannot fail.
            let _ = match step {
                Step::Key(key) if i == 0 => write!(out, "{key}"),
                Step::Key(key) => write!(out, ".{key}"),
                Step::Index(index) => write!(out, "[{index}]"),
            };
            if out.len() > MAX_ECHOED_CHARS {
                break;
            }
        }
        clip(&out).into_owned()
    }
}

/// Builds the value at `path`, noting repeated keys in `repeated`.
struct Seed<'a> {
    path: Option<&'a Path<'a>>,
    repeated: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // serde_json refuses non-finite numbers before they get here.
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let here = Path {
                step: Step::Index(items.len()),
                parent: self.path,
            };
            let seed = Seed {
                path: Some(&here),
                repeated: &mut *self.repeated,
            };
            match seq.next_element_seed(seed)? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        // Keys already reported in this object: a key sent three times is
        // one problem. Allocated only once a repeat is seen.
        let mut reported: Option<HashSet<String>> = None;
        while let Some(key) = map.next_key::<String>()? {
            let here = Path {
                step: Step::Key(&key),
                parent: self.path,
            };
            let value = map.next_value_seed(Seed {
                path: Some(&here),
                repeated: &mut *self.repeated,
            })?;
            if members.contains_key(&key) && reported.get_or_insert_with(HashSet::new).insert(key.clone()) {
                self.repeated.push(here.render());
            }
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_value_serde_json_builds() {
        let bodies: [&[u8]; 6] = [
            br#"{"a":1,"b":[true,null,-2,3.5,18446744073709551615],"c":{"d":"\u00e9x"}}"#,
            b"[]",
            b"  \"text\"  ",
            b"-0.0",
            b"{}",
            br#"[{"a":{}},[[]]]"#,
        ];
        for body in bodies {
            let ours = parse(body).unwrap();
            let theirs: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(ours.value, theirs, "{}", String::from_utf8_lossy(body));
            assert!(ours.repeated.is_empty());
        }
    }

    #[test]
    fn a_top_level_repeat_is_named_once_and_the_value_is_still_built() {
        let parsed = parse(br#"{"end_fielding_at":"x","a":1,"end_fielding_at":"y","end_fielding_at":"z"}"#).unwrap();
        assert_eq!(parsed.repeated, ["end_fielding_at"]);
        assert_eq!(parsed.value["a"], 1);
    }

    #[test]
    fn nested_repeats_are_named_by_their_path() {
        let parsed = parse(br#"{"a":{"b":1,"b":2},"l":[0,{"k":1,"k":1}],"x":1,"x":2}"#).unwrap();
        assert_eq!(parsed.repeated, ["a.b", "l[1].k", "x"]);
        // The same key in sibling objects is no repeat.
        assert!(parse(br#"[{"a":1},{"a":1}]"#).unwrap().repeated.is_empty());
        assert!(parse(br#"{"a":{"a":{"a":1}}}"#).unwrap().repeated.is_empty());
    }

    #[test]
    fn escaped_spellings_of_one_key_are_a_repeat() {
        // `\u0061` is `a`: the same member name after unescaping.
        let parsed = parse(br#"{"a":1,"\u0061":2}"#).unwrap();
        assert_eq!(parsed.repeated, ["a"]);
    }

    #[test]
    fn long_paths_are_cut() {
        let key = "k".repeat(40);
        let body = format!(r#"{{"{key}":{{"{key}":{{"{key}":1,"{key}":2}}}}}}"#);
        let parsed = parse(body.as_bytes()).unwrap();
        let path = &parsed.repeated[0];
        assert!(path.starts_with(&format!("{key}.")), "{path}");
        assert!(path.chars().count() <= MAX_ECHOED_CHARS + 1, "{path}");
    }

    const DATES: [&str; 2] = ["start_fielding_at", "end_fielding_at"];

    #[test]
    fn the_exact_shape_is_read_in_place_in_any_member_order() {
        let body =
            br#" {"start_fielding_at":"2031-01-01T09:00:00.000Z", "end_fielding_at":"2031-01-31T09:00:00.000Z"} "#;
        assert_eq!(
            exact_strings(body, DATES),
            Some(["2031-01-01T09:00:00.000Z", "2031-01-31T09:00:00.000Z"])
        );
        let swapped = br#"{"end_fielding_at":"b","start_fielding_at":"a"}"#;
        assert_eq!(exact_strings(swapped, DATES), Some(["a", "b"]));
        assert_eq!(exact_strings(b"{}", []), Some([]));
        assert_eq!(exact_strings(b" { } ", []), Some([]));
    }

    #[test]
    fn anything_but_the_exact_shape_is_left_to_the_thorough_parse() {
        for body in [
            &br#"{"start_fielding_at":"a"}"#[..],
            br#"{"start_fielding_at":"a","end_fielding_at":"b","extra":1}"#,
            br#"{"start_fielding_at":"a","end_fielding_at":"b","start_fielding_at":"a"}"#,
            br#"{"start_fielding_at":"a","end_fielding_at":"b","end_fielding_at":"c"}"#,
            br#"{"start_fielding_at":1,"end_fielding_at":"b"}"#,
            br#"{"start_fielding_at":null,"end_fielding_at":"b"}"#,
            br#"{"start_fielding_at":{"a":1},"end_fielding_at":"b"}"#,
            br#"{"\u0073tart_fielding_at":"a","end_fielding_at":"b"}"#,
            br#"{"start_fielding_at":"\u0061","end_fielding_at":"b"}"#,
            br#"{"start_fielding_at":"a","end_fielding_at":"b"} x"#,
            br#"{"start_fielding_at":"a","end_fielding_at":"b"}{}"#,
            br#"{"start_fielding_at":"a","end_fielding_at":"b",}"#,
            br#"["start_fielding_at","end_fielding_at"]"#,
            b"\"a\"",
            b"",
            b"null",
        ] {
            assert_eq!(exact_strings(body, DATES), None, "{}", String::from_utf8_lossy(body));
        }
        assert_eq!(exact_strings(br#"{"a":1}"#, []), None);
        assert_eq!(exact_strings(b"[]", []), None);
    }

    /// Whatever the fast path accepts, the thorough parse reads the same
    /// way: an object of exactly those string members, none repeated.
    #[test]
    fn the_fast_path_agrees_with_the_thorough_parse() {
        let bodies: [&[u8]; 4] = [
            br#"{"start_fielding_at":"a","end_fielding_at":"b"}"#,
            br#"{"end_fielding_at":"2031-01-31T09:00:00Z","start_fielding_at":"x y"}"#,
            b"\n{\"start_fielding_at\" : \"\" ,\t\"end_fielding_at\":\"\xc3\xa9\"}\n",
            br#"{"start_fielding_at":"a","end_fielding_at":"b"}"#,
        ];
        for body in bodies {
            let [start, end] = exact_strings(body, DATES).expect("the exact shape");
            let parsed = parse(body).unwrap();
            assert!(parsed.repeated.is_empty());
            let Value::Object(fields) = parsed.value else {
                panic!("an object")
            };
            assert_eq!(fields.len(), 2);
            assert_eq!(fields["start_fielding_at"], start);
            assert_eq!(fields["end_fielding_at"], end);
        }
    }

    #[test]
    fn malformed_and_too_deep_bodies_are_errors_not_panics() {
        for body in [&b"{\"a\":1,}"[..], b"{\"a\" 1}", b"[1] [2]", b"", b"{\"a\":1e400}"] {
            assert!(parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert!(parse(deep.as_bytes()).is_err(), "serde_json's recursion limit holds");
        let deep = format!("{}1{}", r#"{"a":"#.repeat(300), "}".repeat(300));
        assert!(parse(deep.as_bytes()).is_err());
    }
}
