//! Reports: what the aggregates say about an experiment, as JSON
//! (`GET /admin/experiments/{name}`), an HTML page with charts (the same,
//! `?format=html` or `Accept: text/html`) and text (`abmesh report NAME`).
//!
//! A report is computed from the aggregates only ([`data::extract`] copies
//! O(variants × metrics × chart points) under the lock, then
//! [`model::build`] runs the tests), never from events, so it takes the
//! same few milliseconds after ten events or ten million.

pub mod data;
pub mod html;
pub mod http;
pub mod model;
pub mod settings;
pub mod text;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use model::{Decision, DecisionKind, Report, Stat};
pub use settings::Settings;

use crate::aggregate::{Aggregates, Counters};

/// The evaluation settings, as installed in the `AppState`
/// (`state.get::<ReportSettings>()`; defaults when absent).
#[derive(Debug, Clone, Default)]
pub struct ReportSettings(pub Arc<Settings>);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The full report of one experiment (None: no such experiment).
pub fn report(aggregates: &Mutex<Aggregates>, name: &str, settings: &Settings) -> Option<Report> {
    let data = {
        let agg = aggregates.lock().expect("aggregates lock");
        data::extract(&agg, name, true)?
    };
    Some(model::build(&data, settings, now_ms()))
}

/// One line of the experiment list.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    pub name: String,
    pub control: String,
    pub variants: Vec<ListVariant>,
    pub metrics: Vec<String>,
    pub primary_metric: Option<String>,
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
        let agg = aggregates.lock().expect("aggregates lock");
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
