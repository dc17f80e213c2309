//! Reports: what the aggregates say about an experiment, as JSON
//! (`GET /admin/experiments/{name}`), an HTML page with charts (the same,
//! `?format=html` or `Accept: text/html`) and text (`abmesh report NAME`).
//!
//! A report is computed from the aggregates only ([`data::extract`] copies
//! O(variants × metrics × chart points) under the lock, then
//! [`model::build`] runs the tests), never from events, so it takes the
//! same few milliseconds after ten events or ten million.

pub mod data;
pub mod extra_metrics;
pub mod html;
pub mod model;
pub mod segments;
pub mod settings;
pub mod text;
pub mod values;

use parking_lot::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use model::{Decision, DecisionKind, Report, Stat};
pub use settings::Settings;

use crate::aggregate::{Aggregates, Counters};

/// `2026-11-21 07:38:12.345 UTC` for Unix milliseconds, for people reading
/// reports (JSON keeps the number). Civil-from-days after Howard Hinnant's
/// `chrono`-compatible algorithm, to avoid a date crate for one format.
pub(crate) fn utc(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let s = ms_of_day / 1000;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms_of_day % 1000
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The full report of one experiment (None: no such experiment).
pub fn report(aggregates: &Mutex<Aggregates>, name: &str, settings: &Settings) -> Option<Report> {
    let data = {
        let agg = aggregates.lock();
        data::extract(&agg, name, true)?
    };
    let mut report = model::build(&data, settings, now_ms());
    let control = data
        .variants
        .iter()
        .position(|v| *v == report.control)
        .unwrap_or(0);
    report.segments =
        segments::segment_reports(&data, control, report.primary_metric.as_deref(), settings);
    Some(report)
}

/// One line of the experiment list.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    pub name: String,
    pub control: String,
    pub variants: Vec<ListVariant>,
    pub metrics: Vec<String>,
    pub primary_metric: Option<String>,
    /// Variants halted now.
    pub halted: Vec<String>,
    pub decision: DecisionKind,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListVariant {
    pub name: String,
    pub users: u64,
}

/// `GET /admin/experiments`.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub experiments: Vec<ListEntry>,
    pub ingest: Counters,
    pub applied_lsn: u64,
}

/// Every experiment with its decision (reports without chart series).
pub fn list(aggregates: &Mutex<Aggregates>, settings: &Settings) -> Listing {
    let (all, counters, lsn) = {
        let agg = aggregates.lock();
        let all: Vec<_> = data::experiment_names(&agg)
            .iter()
            .filter_map(|n| data::extract(&agg, n, false))
            .collect();
        (all, agg.counters.clone(), agg.applied_lsn)
    };
    let now = now_ms();
    let experiments = all
        .iter()
        .map(|d| {
            let r = model::build(d, settings, now);
            ListEntry {
                name: r.experiment,
                control: r.control,
                variants: r
                    .variants
                    .iter()
                    .map(|v| ListVariant {
                        name: v.name.clone(),
                        users: v.users,
                    })
                    .collect(),
                metrics: r.metrics.iter().map(|m| m.name.clone()).collect(),
                primary_metric: r.primary_metric,
                halted: r
                    .halts
                    .iter()
                    .filter(|h| h.active)
                    .map(|h| h.halt.variant.clone())
                    .collect(),
                decision: r.decision.decision,
                reason: r.decision.reason,
            }
        })
        .collect();
    Listing {
        experiments,
        ingest: counters,
        applied_lsn: lsn,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_unix_milliseconds() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(super::utc(1_795_247_907_329), "2026-11-21 07:58:27.329 UTC");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
    }
}
