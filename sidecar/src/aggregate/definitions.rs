//! Experiment definitions: the filter's plugin configuration, read with the
//! filter's own code so the sidecar and every Envoy agree on names,
//! variants, control and split.

use std::sync::Arc;

use abmesh_filter::{Config, ConfigError, Decisions, Plan};

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
}

/// A compiled plugin configuration plus what reports need from it.
#[derive(Debug, Clone)]
pub struct Definitions {
    plan: Arc<Plan>,
    experiments: Vec<Defined>,
}

impl Definitions {
    /// Reads the plugin JSON (the same document the filter takes).
    pub fn from_json(bytes: &[u8]) -> Result<Definitions, ConfigError> {
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
            })
            .collect();
        Ok(Definitions {
            plan: Arc::new(plan),
            experiments,
        })
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
    }
}
