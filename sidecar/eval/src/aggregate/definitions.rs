//! Experiment definitions: the filter's plugin configuration, read with the
//! filter's own code so the sidecar and every Envoy agree on names,
//! variants, control, split and guardrails.
//!
//! They come from `abmesh serve --experiments FILE` at first, and are
//! replaced by the configuration a filter sends in an exposure batch
//! (`config`, logged as a [`crate::RecordKind::Config`] record): the
//! sidecar then follows what the proxies really run, without a restart.

use std::sync::Arc;

use abmesh_filter::config::{BanditConfig, GuardrailsConfig, MetricDefinition};
use abmesh_filter::{Allocation, Config, ConfigError, Decisions, Plan};

/// The id of a plugin configuration: SipHash-1-3 of its raw bytes, as
/// the filter computes it (`abmesh_filter::protocol::config_id`, which it
/// sends as 16 hex digits).
pub fn config_id(bytes: &[u8]) -> u64 {
    abmesh_filter::protocol::config_id_u64(bytes)
}

/// One experiment as the configuration defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct Defined {
    pub name: String,
    /// Variant names in configuration order.
    pub variants: Vec<String>,
    /// Configured relative weights (the SRM check's expected shares).
    pub weights: Vec<f64>,
    /// Index of the control variant in `variants`.
    pub control: usize,
    /// Share of eligible users enrolled, percent.
    pub traffic_percent: f64,
    /// The experiment's guardrails, if it has any.
    pub guardrails: Option<GuardrailsConfig>,
    /// Adaptive allocation (`super::bandit`), if the experiment has it.
    pub bandit: Option<BanditConfig>,
}

/// A compiled plugin configuration plus what reports need from it.
#[derive(Debug, Clone)]
pub struct Definitions {
    plan: Arc<Plan>,
    experiments: Vec<Defined>,
    /// The configuration as read, and its id.
    raw: Arc<[u8]>,
    id: u64,
    /// The configuration's `metrics` (ratio and quantile definitions).
    metrics: Vec<MetricDefinition>,
}

impl Definitions {
    /// Reads the plugin JSON (the same document the filter takes); its id
    /// is the hash of `bytes`.
    pub fn from_json(bytes: &[u8]) -> Result<Definitions, ConfigError> {
        Definitions::from_json_with_id(bytes, config_id(bytes))
    }

    /// [`Definitions::from_json`] with the id a filter gave (it hashed the
    /// bytes it was configured with, which may differ from the embedded
    /// copy in surrounding whitespace).
    pub fn from_json_with_id(bytes: &[u8], id: u64) -> Result<Definitions, ConfigError> {
        let plan = Plan::from_json(bytes)?;
        // The plan validated the document; the raw config adds the weights,
        // which the plan keeps only as bucket ranges.
        let config: Config = serde_json::from_slice(bytes).map_err(|e| ConfigError::Parse {
            field: String::new(),
            reason: e.to_string(),
        })?;
        let experiments = plan
            .experiments()
            .iter()
            .zip(&config.experiments)
            .map(|(e, c)| Defined {
                name: e.name().to_owned(),
                variants: e.variants().iter().map(|v| v.name().to_owned()).collect(),
                weights: c.variants.iter().map(|v| v.weight).collect(),
                control: e.control(),
                traffic_percent: c.traffic_percent,
                guardrails: e.guardrails().cloned(),
                bandit: c.bandit.clone(),
            })
            .collect();
        Ok(Definitions {
            plan: Arc::new(plan),
            experiments,
            raw: bytes.into(),
            id,
            metrics: config.metrics,
        })
    }

    /// The configuration's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The configuration, as read.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The ratio and quantile metrics the configuration declares.
    pub fn metrics(&self) -> &[MetricDefinition] {
        &self.metrics
    }

    pub fn experiments(&self) -> &[Defined] {
        &self.experiments
    }

    pub fn get(&self, name: &str) -> Option<(usize, &Defined)> {
        self.experiments
            .iter()
            .enumerate()
            .find(|(_, e)| e.name == name)
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// A reusable buffer for [`Definitions::assign`].
    pub fn decisions(&self) -> Decisions {
        self.plan.decisions()
    }

    /// The variant the assignment core gives `user` in experiment `index`
    /// (None: not enrolled), exactly as the filter computes it.
    /// [`Definitions::assign`] under a bandit period's allocation.
    pub fn assign_with<'a>(
        &'a self,
        user: &str,
        index: usize,
        allocation: &Allocation,
        buf: &mut Decisions,
    ) -> Option<&'a str> {
        self.plan.assign_user_with(user.as_bytes(), allocation, buf);
        let v = buf.assignments()[index].variant()?;
        Some(self.experiments[index].variants[v].as_str())
    }

    /// The filter's allocation for experiment `index` in bandit `period`
    /// with shares `weights` by variant name (None: they do not fit the
    /// definition).
    pub fn allocation(
        &self,
        index: usize,
        period: u32,
        weights: &[(String, f64)],
    ) -> Option<Allocation> {
        let order: Vec<f64> = self.experiments[index]
            .variants
            .iter()
            .map(|v| {
                weights
                    .iter()
                    .find(|(n, _)| n == v)
                    .map_or(0.0, |(_, w)| *w)
            })
            .collect();
        let mut a = Allocation::new(&self.plan);
        a.set(index, period, &order).ok()?;
        Some(a)
    }

    pub fn assign<'a>(&'a self, user: &str, index: usize, buf: &mut Decisions) -> Option<&'a str> {
        self.plan.assign_user(user.as_bytes(), buf);
        let v = buf.assignments()[index].variant()?;
        Some(self.experiments[index].variants[v].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_weights_and_control() {
        let d = Definitions::from_json(
            br#"{"experiments":[{"name":"r","control":"b","variants":[{"name":"a","weight":1},{"name":"b","weight":3}]}]}"#,
        )
        .unwrap();
        let e = &d.experiments()[0];
        assert_eq!(
            (e.variants.clone(), e.weights.clone(), e.control),
            (vec!["a".to_owned(), "b".to_owned()], vec![1.0, 3.0], 1)
        );
        let mut buf = d.decisions();
        assert!(d.assign("user-1", 0, &mut buf).is_some());
        assert!(
            Definitions::from_json(br#"{"experiments":[{"name":"r","variants":[]}]}"#).is_err()
        );
        assert_eq!(e.guardrails, None);
    }

    #[test]
    fn keeps_guardrails_and_the_id() {
        let json = br#"{"experiments":[{"name":"r","variants":[{"name":"a","weight":1},{"name":"b","weight":1}],
            "guardrails":{"error_rate":{"max_increase":0.01}}}]}"#;
        let d = Definitions::from_json(json).unwrap();
        let g = d.experiments()[0].guardrails.as_ref().unwrap();
        assert_eq!(g.error_rate.as_ref().unwrap().max_increase, 0.01);
        assert_eq!(format!("{:016x}", d.id()), abmesh_filter::config_id(json));
        assert_eq!(d.raw(), &json[..]);
    }
}
