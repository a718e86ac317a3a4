//! The contract's timestamp form, `YYYY-MM-DDTHH:MM:SS.mmmZ`, read and
//! written without the calendar library: a run's `PUT` reads two of them
//! and its `GET` writes three.
//!
//! Both directions are checked against [`Timestamp`]'s own (chrono's)
//! parse and print by the tests below. [`parse`] takes only the exact
//! canonical form, with real calendar dates and times (no leap second),
//! which chrono accepts too with the same value; anything else, offsets
//! and other fraction lengths included, goes to [`Timestamp`]'s parse,
//! which decides as before and names the problem.

use fielding_core::{InvalidTimestamp, Timestamp};

/// The length of the canonical form.
pub(crate) const LEN: usize = 24;

const MILLIS_PER_DAY: i64 = 86_400_000;

/// `text` as a [`Timestamp`]: the canonical form read here, anything else
/// by [`Timestamp`]'s parse (the same value or the same error as
/// `text.parse()`).
pub(crate) fn parse(text: &str) -> Result<Timestamp, InvalidTimestamp> {
    match canonical(text.as_bytes()) {
        Some(t) => Ok(t),
        None => text.parse(),
    }
}

/// Where the canonical form has its separators, and which.
const SEPARATORS: [(usize, u8); 7] = [
    (4, b'-'),
    (7, b'-'),
    (10, b'T'),
    (13, b':'),
    (16, b':'),
    (19, b'.'),
    (23, b'Z'),
];

/// The value of `text` when it is exactly `YYYY-MM-DDTHH:MM:SS.mmmZ` with
/// a real date and time; `None` for anything else.
fn canonical(text: &[u8]) -> Option<Timestamp> {
    let text: &[u8; LEN] = text.try_into().ok()?;
    for (i, sep) in SEPARATORS {
        if text[i] != sep {
            return None;
        }
    }
    let number = |from: usize, to: usize| -> Option<i64> {
        text[from..to]
            .iter()
            .try_fold(0i64, |n, &b| b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0')))
    };
    let year = number(0, 4)?;
    let month = number(5, 7)?;
    let day = number(8, 10)?;
    let hour = number(11, 13)?;
    let minute = number(14, 16)?;
    let second = number(17, 19)?;
    let milli = number(20, 23)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let millis =
        days_from_civil(year, month, day) * MILLIS_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1000 + milli;
    Timestamp::from_unix_millis(millis)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the proleptic Gregorian date (Howard
/// Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `t` in the canonical form, as `Timestamp`'s `Display` writes it.
pub(crate) fn write(t: Timestamp, out: &mut [u8; LEN]) {
    let millis = t.unix_millis();
    let (year, month, day) = civil_from_days(millis.div_euclid(MILLIS_PER_DAY));
    let in_day = millis.rem_euclid(MILLIS_PER_DAY);
    let (second_of_day, milli) = (in_day / 1000, in_day % 1000);
    let mut put = |at: usize, width: usize, mut value: i64| {
        for slot in out[at..at + width].iter_mut().rev() {
            // `value % 10` is a digit: every field is non-negative (a
            // timestamp's year is 0000 to 9999).
            *slot = b'0' + u8::try_from(value % 10).unwrap_or(0);
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, second_of_day / 3600);
    put(14, 2, second_of_day / 60 % 60);
    put(17, 2, second_of_day % 60);
    put(20, 3, milli);
    for (i, sep) in SEPARATORS {
        out[i] = sep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn text(t: Timestamp) -> String {
        let mut buf = [0u8; LEN];
        write(t, &mut buf);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    fn samples() -> Vec<Timestamp> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let mut out = vec![Timestamp::MIN, Timestamp::MAX, Timestamp::UNIX_EPOCH];
        for edge in [
            "1969-12-31T23:59:59.999Z",
            "2000-02-29T12:00:00.000Z",
            "1900-03-01T00:00:00.000Z",
            "0000-02-29T23:59:59.999Z",
            "2031-01-31T09:00:00.000Z",
            "9999-12-31T00:00:00.000Z",
        ] {
            out.push(edge.parse().unwrap());
        }
        for _ in 0..200_000 {
            let millis = rng.random_range(Timestamp::MIN.unix_millis()..=Timestamp::MAX.unix_millis());
            out.push(Timestamp::from_unix_millis(millis).unwrap());
        }
        out
    }

    #[test]
    fn writes_what_display_writes() {
        for t in samples() {
            assert_eq!(text(t), t.to_string(), "{}", t.unix_millis());
        }
    }

    #[test]
    fn reads_the_canonical_form_as_timestamp_parse_does() {
        for t in samples() {
            let written = t.to_string();
            assert_eq!(canonical(written.as_bytes()), Some(t), "{written}");
            assert_eq!(parse(&written), written.parse::<Timestamp>());
        }
    }

    /// Every text the fast path reads, `Timestamp`'s parse reads to the
    /// same value; every other text gets exactly that parse's answer.
    fn agrees(text: &str) {
        let thorough = text.parse::<Timestamp>();
        if let Some(fast) = canonical(text.as_bytes()) {
            assert_eq!(Ok(fast), thorough, "{text:?}");
        }
        assert_eq!(parse(text), thorough, "{text:?}");
    }

    #[test]
    fn anything_else_gets_the_thorough_parse_and_its_answer() {
        for bad in [
            "",
            "2024-10-01",
            "2024-10-01T09:00:00",
            "2024-10-01T09:00:00Z",
            "2024-10-01T09:00:00.00Z",
            "2024-10-01T09:00:00.0000Z",
            "2024-10-01t09:00:00.000z",
            "2024-10-01 09:00:00.000Z",
            "2024-10-01T09:00:00.000+00:00",
            "2024-10-01T09:00:00.000-01:30",
            "2024-13-01T00:00:00.000Z",
            "2024-00-01T00:00:00.000Z",
            "2024-01-00T00:00:00.000Z",
            "2023-02-29T00:00:00.000Z",
            "2024-02-29T00:00:00.000Z",
            "1900-02-29T00:00:00.000Z",
            "2000-02-29T00:00:00.000Z",
            "2024-04-31T00:00:00.000Z",
            "2024-10-01T24:00:00.000Z",
            "2024-10-01T23:60:00.000Z",
            "2016-12-31T23:59:60.000Z",
            "2024-10-01T09:00:00.000Z ",
            " 2024-10-01T09:00:00.000Z",
            "+2024-10-01T09:00:00.000Z",
            "2024-1-01T09:00:00.000Z0",
            "２024-10-01T09:00:00.000Z",
            "2024-10-01T09:00:00,000Z",
        ] {
            agrees(bad);
        }
    }

    #[test]
    fn every_single_character_change_gets_the_same_answer() {
        let base = "2031-02-28T23:59:59.999Z";
        for i in 0..base.len() {
            for c in "0123456789-:.TtZz +x\u{e9}".chars() {
                let mut changed = String::new();
                changed.push_str(&base[..i]);
                changed.push(c);
                changed.push_str(&base[i + 1..]);
                agrees(&changed);
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(3339);
        for _ in 0..50_000 {
            let mut bytes = base.as_bytes().to_vec();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = b"0123456789"[rng.random_range(0..10)];
            }
            agrees(std::str::from_utf8(&bytes).unwrap());
        }
    }
}
