//! Halts and what decides them: the guardrail checks of an experiment
//! computed from the aggregates, the halt records, the metric guardrails an
//! operator overrode, and the sample-ratio alarms already notified.
//!
//! All of it is engine state (in the snapshot): a halt is decided while the
//! exposure batch that caused it is applied, in log order, so it is durable
//! with that batch and a replay decides it again at the same record.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::json;

use abmesh_stats::guardrail::Check;

/// Who halted a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaltSource {
    /// A guardrail check breached after an exposure batch.
    Guardrail,
    /// An operator (`POST /admin/experiments/{name}/variants/{variant}/halt`).
    Manual,
}

impl HaltSource {
    pub fn as_str(self) -> &'static str {
        match self {
            HaltSource::Guardrail => "guardrail",
            HaltSource::Manual => "manual",
        }
    }
}

/// One halt, current or lifted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Halt {
    pub experiment: String,
    pub variant: String,
    /// When the record that caused it was received (Unix ms).
    pub time_ms: i64,
    /// The log record that caused it.
    pub lsn: u64,
    pub source: HaltSource,
    /// The guardrail rule (`error_rate`, `p95_latency`, `metric:NAME`);
    /// None for a manual halt.
    pub rule: Option<String>,
    /// The check's message, or the operator's reason.
    pub message: String,
    /// The check's evidence (None for a manual halt).
    pub estimate: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub limit: Option<f64>,
    pub p_value: Option<f64>,
    /// When it was lifted (None: still halted).
    pub lifted_ms: Option<i64>,
    pub lift_reason: Option<String>,
}

impl Halt {
    pub fn active(&self) -> bool {
        self.lifted_ms.is_none()
    }

    /// The webhook payload of a new halt.
    pub fn notice(&self) -> serde_json::Value {
        json!({
            "event": "halt",
            "experiment": self.experiment,
            "variant": self.variant,
            "source": self.source.as_str(),
            "rule": self.rule,
            "message": self.message,
            "time_ms": self.time_ms,
            "estimate": self.estimate,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "limit": self.limit,
            "p_value": self.p_value,
        })
    }

    /// One sentence for reports.
    pub fn reason(&self) -> String {
        match (&self.source, &self.rule) {
            (HaltSource::Guardrail, Some(rule)) => format!(
                "{} was halted by the {rule} guardrail: {}",
                self.variant, self.message
            ),
            _ => format!(
                "{} was halted by an operator: {}",
                self.variant, self.message
            ),
        }
    }
}

/// A halted variant, as exposure-batch responses list them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltedRef {
    pub experiment: String,
    pub variant: String,
}

/// Halts, overrides and alarms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    /// Every halt, in the order they happened (lifted ones included).
    pub halts: Vec<Halt>,
    /// (experiment, variant, rule): metric guardrails an operator overrode
    /// by lifting a halt; they are still checked and shown, but do not halt
    /// that variant again.
    pub overrides: BTreeSet<(String, String, String)>,
    /// Experiments whose sample-ratio alarm was notified and has not
    /// cleared since.
    pub srm_alarms: BTreeSet<String>,
}

impl GuardState {
    /// The current halt of a variant.
    pub fn active(&self, experiment: &str, variant: &str) -> Option<&Halt> {
        self.halts
            .iter()
            .find(|h| h.active() && h.experiment == experiment && h.variant == variant)
    }

    pub fn active_mut(&mut self, experiment: &str, variant: &str) -> Option<&mut Halt> {
        self.halts
            .iter_mut()
            .find(|h| h.active() && h.experiment == experiment && h.variant == variant)
    }

    /// Every currently halted variant.
    pub fn halted(&self) -> Vec<HaltedRef> {
        self.halts
            .iter()
            .filter(|h| h.active())
            .map(|h| HaltedRef {
                experiment: h.experiment.clone(),
                variant: h.variant.clone(),
            })
            .collect()
    }

    pub fn overridden(&self, experiment: &str, variant: &str, rule: &str) -> bool {
        self.overrides
            .contains(&(experiment.to_owned(), variant.to_owned(), rule.to_owned()))
    }

    /// Adds another sidecar's halts: a variant halted on either is halted
    /// (the earlier halt is kept), and overrides are united.
    pub fn merge(&mut self, other: &GuardState) {
        for h in other.halts.iter().filter(|h| h.active()) {
            match self.active_mut(&h.experiment, &h.variant) {
                Some(mine) if (h.time_ms, h.lsn) < (mine.time_ms, mine.lsn) => *mine = h.clone(),
                Some(_) => {}
                None => self.halts.push(h.clone()),
            }
        }
        self.overrides.extend(other.overrides.iter().cloned());
    }
}

/// An experiment's guardrail checks, with the variants they index.
#[derive(Clone, Debug)]
pub struct Checks {
    /// Variant names in definition order (what `Check::variant` indexes).
    pub variants: Vec<String>,
    pub control: usize,
    pub checks: Vec<Check>,
}
