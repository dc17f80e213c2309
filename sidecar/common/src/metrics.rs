//! Registering Prometheus metrics: [`Register`], one line per metric
//! (name, help, handle), used by every component that exports metrics
//! (the log, the model host, ingestion, request bodies).
//!
//! A handle is registered as a clone: prometheus-client's metrics are
//! `Arc`s inside, so the component keeps its own handle and updates what
//! `/metrics` encodes.

use prometheus_client::registry::{Metric, Registry, Unit};

/// Registers metrics under one registry (usually a component's
/// `sub_registry_with_prefix`), in order:
///
/// ```
/// # use prometheus_client::metrics::counter::Counter;
/// # use prometheus_client::registry::Registry;
/// # use abmesh_common::metrics::Register;
/// let (events, bytes) = (Counter::<u64>::default(), Counter::<u64>::default());
/// let mut registry = Registry::with_prefix("abmesh");
/// Register(registry.sub_registry_with_prefix("log"))
///     .metric("records", "Records appended to the outcome log", &events)
///     .metric("bytes", "Bytes appended to the outcome log", &bytes);
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains("# HELP abmesh_log_records Records appended to the outcome log"));
/// ```
pub struct Register<'r>(pub &'r mut Registry);

impl Register<'_> {
    /// Registers `metric` (a clone of the handle) as `name` with `help`.
    pub fn metric(self, name: &str, help: &str, metric: &(impl Metric + Clone)) -> Self {
        self.0.register(name, help, metric.clone());
        self
    }

    /// Registers a metric measured in seconds (`name_seconds`).
    pub fn seconds(self, name: &str, help: &str, metric: &(impl Metric + Clone)) -> Self {
        self.0
            .register_with_unit(name, help, Unit::Seconds, metric.clone());
        self
    }
}
