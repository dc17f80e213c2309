//! Evaluation settings: levels, the effect worth detecting, and per
//! experiment the primary metric and which direction is good.
//!
//! Read from `abmesh serve --evaluation FILE` (all keys optional):
//!
//! ```json
//! {
//!   "alpha": 0.05, "power": 0.8, "target_lift": 0.05, "n_star": 5000, "min_users": 100,
//!   "experiments": {
//!     "ranker": {"primary_metric": "purchase",
//!                "metrics": {"latency_ms": {"higher_is_better": false}}}
//!   }
//! }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use abmesh_stats::DEFAULT_N_STAR;

/// How reports test and decide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Two-sided level of every test and interval.
    pub alpha: f64,
    /// Power for the MDE and the sample size still needed.
    pub power: f64,
    /// The smallest relative effect worth detecting (0.05: ±5 %): the MDE
    /// target, and the bound under which a result is "inconclusive".
    pub target_lift: f64,
    /// Tuning sample size of the sequential confidence sequences.
    pub n_star: f64,
    /// No decision before every variant has this many users.
    pub min_users: u64,
    pub experiments: BTreeMap<String, ExperimentSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            alpha: 0.05,
            power: 0.8,
            target_lift: 0.05,
            n_star: DEFAULT_N_STAR,
            min_users: 100,
            experiments: BTreeMap::new(),
        }
    }
}

/// Settings of one experiment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentSettings {
    /// The metric the decision is about; default: the first metric by name.
    pub primary_metric: Option<String>,
    pub metrics: BTreeMap<String, MetricSettings>,
}

/// Settings of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricSettings {
    /// Whether an increase is an improvement (default true).
    pub higher_is_better: bool,
}

impl Default for MetricSettings {
    fn default() -> Self {
        MetricSettings {
            higher_is_better: true,
        }
    }
}

/// A settings file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: {source}")]
    Range { path: String, source: RangeError },
}

/// A setting outside its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RangeError {
    #[error("{name} must be in (0, 1), got {got}")]
    Open { name: &'static str, got: f64 },
    #[error("{name} must be > 0, got {got}")]
    Positive { name: &'static str, got: f64 },
}

impl Settings {
    /// Reads and checks a settings file.
    pub fn from_file(path: &Path) -> Result<Settings, SettingsError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| SettingsError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let s: Settings =
            serde_path_to_error::deserialize(&mut de).map_err(|e| SettingsError::Invalid {
                path: shown.clone(),
                message: format!("{}: {}", e.path(), e.inner()),
            })?;
        s.check().map_err(|source| SettingsError::Range {
            path: shown,
            source,
        })?;
        Ok(s)
    }

    /// Checks ranges.
    pub fn check(&self) -> Result<(), RangeError> {
        let open = |name: &'static str, got: f64| {
            if got > 0.0 && got < 1.0 {
                Ok(())
            } else {
                Err(RangeError::Open { name, got })
            }
        };
        let positive = |name: &'static str, got: f64| {
            if got > 0.0 && got.is_finite() {
                Ok(())
            } else {
                Err(RangeError::Positive { name, got })
            }
        };
        open("alpha", self.alpha)?;
        open("power", self.power)?;
        positive("target_lift", self.target_lift)?;
        positive("n_star", self.n_star)?;
        Ok(())
    }

    pub fn experiment(&self, name: &str) -> Option<&ExperimentSettings> {
        self.experiments.get(name)
    }

    /// Whether higher is better for `metric` in `experiment`.
    pub fn higher_is_better(&self, experiment: &str, metric: &str) -> bool {
        self.experiment(experiment)
            .and_then(|e| e.metrics.get(metric))
            .is_none_or(|m| m.higher_is_better)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let s: Settings = serde_json::from_str(
            r#"{"alpha":0.01,"experiments":{"r":{"primary_metric":"buy","metrics":{"lat":{"higher_is_better":false}}}}}"#,
        )
        .unwrap();
        assert_eq!(s.alpha, 0.01);
        assert_eq!(s.power, 0.8);
        assert!(!s.higher_is_better("r", "lat"));
        assert!(s.higher_is_better("r", "buy"));
        assert!(s.check().is_ok());
        assert!(Settings {
            alpha: 1.0,
            ..Settings::default()
        }
        .check()
        .is_err());
        assert!(serde_json::from_str::<Settings>(r#"{"alpah":0.1}"#).is_err());
    }
}
