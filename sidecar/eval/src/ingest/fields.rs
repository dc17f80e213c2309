//! Field types shared by the two ingestion formats: borrowed strings,
//! finite numbers and timestamps, each with an error message that says what
//! was expected, plus the name rules.
//!
//! Bodies are parsed in place (`&[u8]` borrowed by the parsed events), so a
//! batch of a thousand events costs no per-field allocation unless a string
//! holds JSON escapes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use abmesh_common::quote::{bound, clip};

use super::error::ValidationError;

/// Longest user id, event id or filter instance id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest experiment, variant or metric name, in characters (all ASCII).
pub const MAX_NAME_CHARS: usize = 64;
/// The largest timestamp accepted: 9999-12-31T23:59:59.999Z.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// A JSON string, borrowed from the body when it holds no escapes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A finite number (JSON integers are taken as they are).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finite(pub f64);

impl<'de> Deserialize<'de> for Finite {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Finite;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a finite number")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Finite, E> {
                if v.is_finite() {
                    Ok(Finite(v))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Finite, E> {
                Ok(Finite(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Finite, E> {
                Ok(Finite(v as f64))
            }
        }
        d.deserialize_f64(V)
    }
}

/// Milliseconds since the Unix epoch: a JSON integer, or an RFC 3339
/// string (`2026-05-01T12:00:00Z`, `2026-05-01T14:00:00.250+02:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub i64);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str =
            "milliseconds since the Unix epoch (an integer from 0) or an RFC 3339 time";
        impl Visitor<'_> for V {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
                if v <= MAX_TIMESTAMP_MS as u64 {
                    Ok(Millis(v as i64))
                } else {
                    Err(E::invalid_value(de::Unexpected::Unsigned(v), &self))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
                if (0..=MAX_TIMESTAMP_MS).contains(&v) {
                    Ok(Millis(v))
                } else {
                    Err(E::invalid_value(de::Unexpected::Signed(v), &self))
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Millis, E> {
                Err(E::invalid_type(de::Unexpected::Float(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
                parse_rfc3339(v)
                    .filter(|ms| (0..=MAX_TIMESTAMP_MS).contains(ms))
                    .map(Millis)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (RFC 3339; `t`, `z`
/// and a space separator are accepted too) into Unix milliseconds. Digits
/// of the fraction past milliseconds are truncated.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    // Every index below is in bounds: fixed positions up to 19 after this
    // check, the fraction loop tests `i < b.len()`, and the offset's
    // `b[i + 3]` is read only once `i + 6 == b.len()` (`&&` short-circuits).
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in b.get(r)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..3 {
            millis *= 10;
        }
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    // A leap second (":60") is folded into the next second.
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(secs * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Why a name or id is refused (the message follows the field's path in a
/// [`super::ValidationError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// `got` is the value quoted with [`clip`].
    #[error("must be 1 to {MAX_NAME_CHARS} characters of {allowed} (got {got})")]
    Name { allowed: &'static str, got: String },
    #[error("must be 1 to {MAX_ID_BYTES} bytes (got {0})")]
    IdLength(usize),
    /// An event's `segments` object (the message says what is wrong).
    #[error("{0}")]
    Segment(String),
}

/// Checks an experiment name the way the filter does: 1 to 64 of
/// `[a-z0-9_.-]`.
pub fn check_experiment_name(s: &str) -> Result<(), FieldError> {
    check_name(
        s,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-'),
        "a-z 0-9 _ . -",
    )
}

/// Variant names, as the filter accepts them: 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn check_variant_name(s: &str) -> Result<(), FieldError> {
    check_name(
        s,
        |c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'),
        "A-Z a-z 0-9 _ . -",
    )
}

/// Metric names: 1 to 64 of `[A-Za-z0-9_.:-]`.
pub fn check_metric_name(s: &str) -> Result<(), FieldError> {
    check_name(
        s,
        |c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-'),
        "A-Z a-z 0-9 _ . : -",
    )
}

fn check_name(s: &str, ok: impl Fn(u8) -> bool, allowed: &'static str) -> Result<(), FieldError> {
    if s.is_empty() || s.len() > MAX_NAME_CHARS || !s.bytes().all(ok) {
        return Err(FieldError::Name {
            allowed,
            got: format!("{:?}", clip(s)),
        });
    }
    Ok(())
}

/// User ids, event ids and instance ids: 1 to 256 bytes of UTF-8.
pub fn check_id(s: &str) -> Result<(), FieldError> {
    if s.is_empty() || s.len() > MAX_ID_BYTES {
        return Err(FieldError::IdLength(s.len()));
    }
    Ok(())
}

/// serde_json's message without its " at line L column C" suffix (the
/// caller says where, in terms of the batch), bounded: serde quotes the
/// offending value whole (`invalid type: string "..."`).
pub(crate) fn bare_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    bound(match s.strip_suffix(&suffix) {
        Some(m) => m.to_owned(),
        None => s,
    })
}

/// Why a JSON document did not parse: the path of the offending value
/// (serde_path_to_error's, `.` for the document itself; clipped, as it
/// quotes keys) and serde_json's error, which says what and where (line,
/// column).
#[derive(Debug)]
pub(crate) struct JsonFailure {
    pub path: String,
    pub error: serde_json::Error,
}

impl JsonFailure {
    /// The failure as the 400 of the body it is part of: `name` gives the
    /// error's path from the failing value's path within the document
    /// (`None`: the document itself), and the message says where, at
    /// `line` (a line of an NDJSON body) or serde's line, and column.
    pub(crate) fn into_error(
        self,
        name: impl FnOnce(Option<String>) -> String,
        line: Option<usize>,
    ) -> ValidationError {
        let path = name((self.path != ".").then_some(self.path));
        ValidationError::new(
            path,
            format!(
                "{} (line {}, column {})",
                bare_message(&self.error),
                line.unwrap_or_else(|| self.error.line()),
                self.error.column()
            ),
        )
    }
}

/// Parses one JSON document: a single value of type `T`, with nothing but
/// whitespace after it.
///
/// The first attempt does not track paths (it is the common case, and
/// tracking costs); only when it fails is the document read again with
/// serde_path_to_error, to name the failing field. That second reading
/// stops at the end of the value, so a document whose value is complete
/// but is followed by other characters (`{...} x`) passes it: the failure
/// is then the first reading's (`trailing characters`, at the position of
/// the first one), at the path of the document itself.
pub(crate) fn parse_json<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, JsonFailure> {
    let first = match serde_json::from_slice::<T>(bytes) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Err(match serde_path_to_error::deserialize::<_, T>(&mut de) {
        // The path names the client's keys (`.vaule`, or a 10 MB one).
        Err(e) => JsonFailure {
            path: clip(&e.path().to_string()).to_string(),
            error: e.into_inner(),
        },
        Ok(_) => JsonFailure {
            path: ".".to_owned(),
            error: first,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-05-01T12:00:00.250Z"),
            Some(1_777_636_800_250)
        );
        assert_eq!(
            parse_rfc3339("2026-05-01T14:00:00.25+02:00"),
            parse_rfc3339("2026-05-01T12:00:00.250Z")
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00.123456Z"),
            Some(1_709_164_800_123)
        );
        assert_eq!(parse_rfc3339("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-05-01T12:00:00"), None);
        assert_eq!(parse_rfc3339("2026-05-01T12:00:00.Z"), None);
        assert_eq!(parse_rfc3339("2026-13-01T12:00:00Z"), None);
    }

    #[test]
    fn finite_and_millis() {
        let f: Finite = serde_json::from_str("3").unwrap();
        assert_eq!(f.0, 3.0);
        let e = serde_json::from_str::<Finite>("\"x\"").unwrap_err();
        assert!(e.to_string().contains("expected a finite number"), "{e}");
        let m: Millis = serde_json::from_str("\"1970-01-01T00:00:01Z\"").unwrap();
        assert_eq!(m.0, 1000);
        assert!(serde_json::from_str::<Millis>("-1").is_err());
        assert!(serde_json::from_str::<Millis>("1.5").is_err());
    }

    #[test]
    fn names() {
        assert!(check_experiment_name("ranker_v2.b-1").is_ok());
        assert!(check_experiment_name("Ranker").is_err());
        assert!(check_metric_name("latency:p95").is_ok());
        assert!(check_metric_name("").is_err());
        assert!(check_id(&"x".repeat(257)).is_err());
    }
}
