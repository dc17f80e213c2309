//! Prometheus metrics of the model host, per model and version.
//!
//! The families are registered once; each loaded version resolves its own
//! label set when it is loaded ([`HostMetrics::version`]) and keeps the
//! handles, so that the request path touches only atomics, never the label
//! map.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use std::sync::Arc;

use abmesh_common::metrics::Register;

use crate::stats::InferStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    model: String,
    version: String,
}

/// Which side an error is on: a bad request, a server that cannot take more
/// work right now, or a failure inside the server.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ErrorKind {
    invalid_request,
    unavailable,
    internal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    model: String,
    version: String,
    kind: ErrorKind,
}

type HistogramFamily = Family<VersionLabels, Histogram, fn() -> Histogram>;

/// The metric families, registered under `abmesh_model_*`.
#[derive(Clone, Debug)]
pub struct HostMetrics {
    requests: Family<VersionLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: HistogramFamily,
    queue_time: HistogramFamily,
    compute_time: HistogramFamily,
    batch_size: HistogramFamily,
    loaded: Family<VersionLabels, Gauge>,
}

/// The handles of one loaded version.
#[derive(Clone, Debug)]
pub struct VersionMetrics {
    pub requests: Counter,
    errors: [Counter; 3],
    /// Seconds from the request's arrival to its response being ready.
    pub latency: Histogram,
    /// Seconds a request waited in the queue before its batch started.
    pub queue_time: Histogram,
    /// Seconds of ONNX Runtime `run` per batch.
    pub compute_time: Histogram,
    /// Rows per run (the merged batch size).
    pub batch_size: Histogram,
    pub loaded: Gauge,
    /// Triton-style statistics of this loaded version (`crate::stats`);
    /// unlike the Prometheus handles, new for every load.
    pub stats: Arc<InferStats>,
}

impl VersionMetrics {
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].inc();
    }
}

fn seconds_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn batch_histogram() -> Histogram {
    // 1 .. 512 rows
    Histogram::new(exponential_buckets(1.0, 2.0, 10))
}

impl HostMetrics {
    /// Registers the families in `registry` (the caller picks the prefix;
    /// the server uses `abmesh_model`).
    pub fn register(registry: &mut Registry) -> HostMetrics {
        let m = HostMetrics {
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(seconds_histogram),
            queue_time: Family::new_with_constructor(seconds_histogram),
            compute_time: Family::new_with_constructor(seconds_histogram),
            batch_size: Family::new_with_constructor(batch_histogram),
            loaded: Family::default(),
        };
        Register(registry)
            .metric(
                "requests",
                "Inference requests received for a loaded model version",
                &m.requests,
            )
            .metric(
                "errors",
                "Inference requests that failed, by kind (invalid_request, unavailable, internal)",
                &m.errors,
            )
            .seconds(
                "request_duration",
                "Time from an inference request's arrival to its response",
                &m.latency,
            )
            .seconds(
                "queue_duration",
                "Time an inference request waited for a session and batch",
                &m.queue_time,
            )
            .seconds(
                "compute_duration",
                "Time of one ONNX Runtime run (one batch)",
                &m.compute_time,
            )
            .metric(
                "batch_size",
                "Rows per ONNX Runtime run after dynamic batching",
                &m.batch_size,
            )
            .metric(
                "loaded",
                "1 while a model version is loaded and serving",
                &m.loaded,
            );
        m
    }

    /// Resolves the handles for one version; `max_batch_size` sizes the
    /// lock-free part of its statistics' batch table.
    pub fn version(&self, model: &str, version: u64, max_batch_size: usize) -> VersionMetrics {
        let labels = VersionLabels {
            model: model.to_owned(),
            version: version.to_string(),
        };
        let error = |kind| {
            self.errors
                .get_or_create(&ErrorLabels {
                    model: labels.model.clone(),
                    version: labels.version.clone(),
                    kind,
                })
                .clone()
        };
        VersionMetrics {
            requests: self.requests.get_or_create(&labels).clone(),
            errors: [
                error(ErrorKind::invalid_request),
                error(ErrorKind::unavailable),
                error(ErrorKind::internal),
            ],
            latency: self.latency.get_or_create(&labels).clone(),
            queue_time: self.queue_time.get_or_create(&labels).clone(),
            compute_time: self.compute_time.get_or_create(&labels).clone(),
            batch_size: self.batch_size.get_or_create(&labels).clone(),
            loaded: self.loaded.get_or_create(&labels).clone(),
            stats: Arc::new(InferStats::new(max_batch_size)),
        }
    }
}
