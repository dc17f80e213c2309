//! The value types and formatting every part of a report shares: a
//! statistic or why it is missing, an interval, percentages, HTML
//! escaping. A leaf module, so the report's parts (the model, the derived
//! metrics, the renderers) depend on it and not on each other.

use serde::Serialize;

/// A statistic, or why it cannot be computed yet (shown as it is).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Stat<T> {
    Ok(T),
    Err { error: String },
}

impl<T> Stat<T> {
    pub(super) fn from(r: Result<T, impl ToString>) -> Stat<T> {
        match r {
            Ok(v) => Stat::Ok(v),
            Err(e) => Stat::Err {
                error: e.to_string(),
            },
        }
    }

    pub fn ok(&self) -> Option<&T> {
        match self {
            Stat::Ok(v) => Some(v),
            Stat::Err { .. } => None,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Stat::Ok(_) => None,
            Stat::Err { error } => Some(error),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub estimate: f64,
    pub se: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SequentialOut {
    pub ci_low: f64,
    pub ci_high: f64,
    pub p_value: f64,
}

/// `+3.2%`.
pub fn pct(x: f64) -> String {
    if x.abs() < 0.0995 {
        format!("{:+.2}%", x * 100.0)
    } else {
        format!("{:+.1}%", x * 100.0)
    }
}

/// Escapes text for HTML pages (admin reports for people).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
