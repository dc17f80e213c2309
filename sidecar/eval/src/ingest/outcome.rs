//! Outcome events: what applications post to `POST /v1/events`.
//!
//! ```json
//! {"experiment": "ranker", "user": "u-17", "metric": "purchase", "value": 12.5,
//!  "timestamp": 1777636800250, "id": "order-8812"}
//! ```
//!
//! | field | required | meaning |
//! |---|---|---|
//! | `user` | yes | the user id, as the filter reads it (1 to 256 bytes) |
//! | `metric` | yes | metric name, 1 to 64 of `[A-Za-z0-9_.:-]` |
//! | `experiment` | no | attribute only to this experiment; without it the event counts for every experiment the user is exposed in |
//! | `value` | no | a finite number added to the user's total for the metric; without it the event is a conversion (counts 1) |
//! | `covariate` | no | a pre-experiment value of the same metric for CUPED, added to the user's covariate; an event with `covariate` and no `value` carries only the covariate |
//! | `timestamp` | no | Unix milliseconds or an RFC 3339 string; default: when the sidecar received it |
//! | `id` | no | de-duplication key (1 to 256 bytes): a second event with the same id is acknowledged and ignored |
//! | `segments` | no | the user's attributes for segmented reports, e.g. `{"country": "de", "platform": "ios"}`: up to 8 dimensions (`[a-z0-9_.-]`, 1 to 64 characters) with values of 1 to 64 bytes; they describe the user (for every experiment), so send attributes fixed before the experiment, not ones it could change |
//!
//! The body is a JSON array of events, or NDJSON (one event per line;
//! blank lines are skipped). Unknown fields are refused, so a typo
//! (`"vaule"`) is an error rather than a silently missing value.

use serde::Deserialize;

use super::error::ValidationError;
use super::fields::{self, parse_json, Finite, Millis, Text};

/// Most events in one request.
pub const MAX_EVENTS_PER_BATCH: usize = 100_000;

/// One outcome event, borrowing its strings from the request body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome<'a> {
    #[serde(default, borrow)]
    pub experiment: Option<Text<'a>>,
    #[serde(borrow)]
    pub user: Text<'a>,
    #[serde(borrow)]
    pub metric: Text<'a>,
    #[serde(default)]
    pub value: Option<Finite>,
    #[serde(default)]
    pub covariate: Option<Finite>,
    #[serde(default)]
    pub timestamp: Option<Millis>,
    #[serde(default, borrow)]
    pub id: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub segments: Option<SegmentValues<'a>>,
}

/// Most segment dimensions on one event.
pub const MAX_EVENT_SEGMENTS: usize = 8;
/// Longest segment value, in bytes.
pub const MAX_SEGMENT_VALUE_BYTES: usize = 64;

/// An event's `segments` object, `{"dimension": "value", ...}`, in
/// document order, borrowed from the body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentValues<'a>(pub Vec<(Text<'a>, Text<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for SegmentValues<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = SegmentValues<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of dimension names to string values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = m.next_entry::<Text<'a>, Text<'a>>()? {
                    out.push(entry);
                }
                Ok(SegmentValues(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl SegmentValues<'_> {
    fn check(&self) -> Result<(), fields::FieldError> {
        if self.0.len() > MAX_EVENT_SEGMENTS {
            return Err(fields::FieldError::Segment(format!(
                "{} dimensions; at most {MAX_EVENT_SEGMENTS}",
                self.0.len()
            )));
        }
        for (i, (dim, value)) in self.0.iter().enumerate() {
            fields::check_experiment_name(dim.as_str()).map_err(|e| {
                fields::FieldError::Segment(format!(
                    "dimension {:?}: {e}",
                    abmesh_common::quote::clip(dim.as_str())
                ))
            })?;
            if self.0[..i].iter().any(|(d, _)| d == dim) {
                return Err(fields::FieldError::Segment(format!(
                    "dimension {:?} is given twice",
                    dim.as_str()
                )));
            }
            let v = value.as_str();
            if v.is_empty() || v.len() > MAX_SEGMENT_VALUE_BYTES || v.chars().any(char::is_control)
            {
                return Err(fields::FieldError::Segment(format!(
                    "the value of {:?} must be 1 to {MAX_SEGMENT_VALUE_BYTES} bytes without control characters",
                    dim.as_str()
                )));
            }
        }
        Ok(())
    }
}

impl Outcome<'_> {
    /// Whether the event is an outcome (it has a value, or it is a
    /// conversion), rather than a covariate alone.
    pub fn is_outcome(&self) -> bool {
        self.value.is_some() || self.covariate.is_none()
    }

    /// What the event adds to the user's total: its value, 1 for a
    /// conversion, 0 for a covariate alone.
    pub fn amount(&self) -> f64 {
        match (self.value, self.covariate) {
            (Some(v), _) => v.0,
            (None, None) => 1.0,
            (None, Some(_)) => 0.0,
        }
    }

    fn check(&self) -> Result<(), (&'static str, fields::FieldError)> {
        fields::check_id(self.user.as_str()).map_err(|m| ("user", m))?;
        fields::check_metric_name(self.metric.as_str()).map_err(|m| ("metric", m))?;
        if let Some(e) = &self.experiment {
            fields::check_experiment_name(e.as_str()).map_err(|m| ("experiment", m))?;
        }
        if let Some(id) = &self.id {
            fields::check_id(id.as_str()).map_err(|m| ("id", m))?;
        }
        if let Some(s) = &self.segments {
            s.check().map_err(|m| ("segments", m))?;
        }
        Ok(())
    }
}

/// Parses and validates a whole body (JSON array or NDJSON). A batch is
/// all or nothing: the first invalid event rejects it, and the error names
/// the event's index and field (`events[3].value: ...`).
pub fn parse_outcomes(body: &[u8]) -> Result<Vec<Outcome<'_>>, ValidationError> {
    let events = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Vec::new(),
        Some(b'[') => parse_array(body)?,
        Some(_) => parse_ndjson(body)?,
    };
    if events.len() > MAX_EVENTS_PER_BATCH {
        return Err(ValidationError::new(
            "events",
            format!(
                "{} events in one request; at most {MAX_EVENTS_PER_BATCH}",
                events.len()
            ),
        ));
    }
    for (i, e) in events.iter().enumerate() {
        e.check().map_err(|(field, message)| {
            ValidationError::new(format!("events[{i}].{field}"), message)
        })?;
    }
    Ok(events)
}

fn parse_array(body: &[u8]) -> Result<Vec<Outcome<'_>>, ValidationError> {
    parse_json::<Vec<Outcome>>(body).map_err(|f| {
        f.into_error(
            |path| path.map_or_else(|| "events".to_owned(), |p| format!("events{p}")),
            None,
        )
    })
}

fn parse_ndjson(body: &[u8]) -> Result<Vec<Outcome<'_>>, ValidationError> {
    let mut out = Vec::with_capacity(body.len() / 96 + 1);
    for (line_no, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let index = out.len();
        match parse_json::<Outcome>(line) {
            Ok(e) => out.push(e),
            Err(f) => {
                return Err(f.into_error(
                    |path| match path {
                        None => format!("events[{index}]"),
                        Some(p) => format!("events[{index}].{p}"),
                    },
                    Some(line_no + 1),
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_and_ndjson_parse_the_same_events() {
        let a = br#"[{"user":"u1","metric":"buy","value":2.5,"experiment":"ranker","id":"e1"},
                     {"user":"u2","metric":"click","timestamp":"2026-05-01T12:00:00Z"}]"#;
        let n = b"{\"user\":\"u1\",\"metric\":\"buy\",\"value\":2.5,\"experiment\":\"ranker\",\"id\":\"e1\"}\n\n{\"user\":\"u2\",\"metric\":\"click\",\"timestamp\":\"2026-05-01T12:00:00Z\"}\n";
        for body in [&a[..], &n[..]] {
            let ev = parse_outcomes(body).unwrap();
            assert_eq!(ev.len(), 2);
            assert_eq!(ev[0].amount(), 2.5);
            assert_eq!(ev[0].experiment.as_ref().unwrap().as_str(), "ranker");
            assert_eq!(ev[1].amount(), 1.0);
            assert!(ev[1].is_outcome());
            assert_eq!(ev[1].timestamp.unwrap().0, 1_777_636_800_000);
        }
        assert!(parse_outcomes(b"  \n").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_event_and_field() {
        let body = br#"[{"user":"a","metric":"m"},{"user":"a","metric":"m"},{"user":"a","metric":"m"},{"user":"a","metric":"m","value":"x"}]"#;
        let e = parse_outcomes(body).unwrap_err();
        assert_eq!(e.path, "events[3].value");
        assert!(
            e.message
                .starts_with("invalid type: string \"x\", expected a finite number"),
            "{e}"
        );

        let body =
            b"{\"user\":\"a\",\"metric\":\"m\"}\n{\"user\":\"a\",\"metric\":\"m\",\"vaule\":1}\n";
        let e = parse_outcomes(body).unwrap_err();
        assert_eq!(e.path, "events[1].vaule");
        assert!(
            e.message.contains("unknown field `vaule`") && e.message.contains("line 2"),
            "{e}"
        );

        let e = parse_outcomes(br#"[{"user":"a","metric":"bad metric"}]"#).unwrap_err();
        assert_eq!(e.to_string(), "events[0].metric: must be 1 to 64 characters of A-Z a-z 0-9 _ . : - (got \"bad metric\")");

        let e = parse_outcomes(br#"[{"user":"","metric":"m"}]"#).unwrap_err();
        assert_eq!(e.path, "events[0].user");
        let e = parse_outcomes(br#"[{"metric":"m"}]"#).unwrap_err();
        assert_eq!(e.path, "events[0]");
        assert!(e.message.contains("missing field `user`"));
        let e = parse_outcomes(br#"[{"user":"a","metric":"m"}"#).unwrap_err();
        assert!(e.path.starts_with("events"), "{e}");
    }

    /// A complete value followed by other characters is refused with the
    /// position of the first of them; it used to reach an `unreachable!`
    /// (the path-tracking re-parse stops at the end of the value, and
    /// succeeded).
    #[test]
    fn trailing_characters_are_refused_with_their_position() {
        let e = parse_outcomes(br#"{"user":"u","metric":"m"} x"#).unwrap_err();
        assert_eq!(e.path, "events[0]");
        assert_eq!(e.message, "trailing characters (line 1, column 27)");
        let e = parse_outcomes(
            b"{\"user\":\"u\",\"metric\":\"m\"}\n{\"user\":\"u\",\"metric\":\"m\"}}\n",
        )
        .unwrap_err();
        assert_eq!(e.path, "events[1]");
        assert_eq!(e.message, "trailing characters (line 2, column 26)");
        let e = parse_outcomes(br#"[{"user":"u","metric":"m"}] x"#).unwrap_err();
        assert_eq!(e.path, "events");
        assert_eq!(e.message, "trailing characters (line 1, column 29)");
        let e = parse_outcomes(b"[{\"user\":\"u\",\"metric\":\"m\"}]\n[]").unwrap_err();
        assert_eq!(
            e.to_string(),
            "events: trailing characters (line 2, column 1)"
        );
        // Whitespace after the value is not trailing characters.
        assert_eq!(
            parse_outcomes(b"[{\"user\":\"u\",\"metric\":\"m\"}] \r\n\t")
                .unwrap()
                .len(),
            1
        );
    }

    /// Messages quote a value at most 200 bytes long, whatever the client
    /// sent.
    #[test]
    fn errors_quote_long_values_clipped() {
        let long = "x".repeat(1 << 20);
        let body = format!(r#"[{{"user":"u","metric":"{long}"}}]"#);
        let e = parse_outcomes(body.as_bytes()).unwrap_err();
        assert_eq!(e.path, "events[0].metric");
        assert!(e.message.len() < 400, "{}", e.message.len());
        assert!(
            e.message.ends_with(&format!("… ({} bytes))", 1 << 20)),
            "{e}"
        );
        let body = format!(r#"{{"user":"u","metric":"m","value":"{long}"}}"#);
        let e = parse_outcomes(body.as_bytes()).unwrap_err();
        assert_eq!(e.path, "events[0].value");
        assert!(e.message.len() < 1100, "{}", e.message.len());
        assert!(e.message.starts_with("invalid type: string \"xxx"), "{e}");
        assert!(
            e.message
                .ends_with("expected a finite number (line 1, column 1048611)"),
            "{e}"
        );
    }

    /// 17 significant digits identify a double; the event parser must read
    /// them as the nearest double, as Rust's own parser does (serde_json
    /// without `float_roundtrip` is off by one ULP for some of them).
    #[test]
    fn values_round_trip_bit_for_bit() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut wrong = Vec::new();
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if !v.is_finite() {
                continue;
            }
            for text in [format!("{v:.16e}"), format!("{v:?}")] {
                let body = format!(r#"{{"user":"u","metric":"m","value":{text}}}"#);
                let got = parse_outcomes(body.as_bytes()).unwrap()[0].amount();
                let want: f64 = text.parse().unwrap();
                if got.to_bits() != want.to_bits() {
                    wrong.push(text);
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{} misread, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
    }

    #[test]
    fn covariate_only_events_are_not_outcomes() {
        let ev = parse_outcomes(br#"{"user":"a","metric":"m","covariate":4}"#).unwrap();
        assert!(!ev[0].is_outcome());
        assert_eq!(ev[0].amount(), 0.0);
        let ev = parse_outcomes(br#"{"user":"a","metric":"m","covariate":4,"value":0}"#).unwrap();
        assert!(ev[0].is_outcome());
    }
}
