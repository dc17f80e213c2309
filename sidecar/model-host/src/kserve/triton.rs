//! The JSON documents of Triton's protocol extensions that Triton's own
//! clients (`tritonclient`, `perf_analyzer`) call on top of KServe v2:
//! model configuration, model repository and statistics.
//!
//! They are built from what the model host really does, so a client that
//! sizes its requests or reads the server-side timings from them is told
//! the truth:
//! - [`ModelConfig`]: the served signature in Triton's model-configuration
//!   form, `max_batch_size` and `dynamic_batching` from the batcher's
//!   settings (`--max-batch-size`, `--max-queue-delay-us`), the instance
//!   group from `--instances` and the device;
//! - [`IndexEntry`]: one version of the repository and whether it serves;
//! - [`ModelStatistics`]: the counters of [`crate::stats`].
//!
//! Field names and enum spellings are Triton's (`model_config.proto` and
//! `grpc_service.proto`, printed as Triton prints them: int64 fields as
//! JSON numbers, except `version`, a string).

use serde::Serialize;

use crate::batching::BatchConfig;
use crate::datatype::DataType;
use crate::device::Device;
use crate::host::LoadedVersion;
use crate::signature::{Signature, TensorSpec};
use crate::stats::{StatsSnapshot, TallySnapshot};

/// Triton's `DataType` enum name (`TYPE_FP32`, ...) for a datatype.
pub const fn config_data_type(d: DataType) -> &'static str {
    match d {
        DataType::Bool => "TYPE_BOOL",
        DataType::Uint8 => "TYPE_UINT8",
        DataType::Uint16 => "TYPE_UINT16",
        DataType::Uint32 => "TYPE_UINT32",
        DataType::Uint64 => "TYPE_UINT64",
        DataType::Int8 => "TYPE_INT8",
        DataType::Int16 => "TYPE_INT16",
        DataType::Int32 => "TYPE_INT32",
        DataType::Int64 => "TYPE_INT64",
        DataType::Fp16 => "TYPE_FP16",
        DataType::Bf16 => "TYPE_BF16",
        DataType::Fp32 => "TYPE_FP32",
        DataType::Fp64 => "TYPE_FP64",
    }
}

/// `GET /v2/models/{name}[/versions/{version}]/config`.
#[derive(Debug, Serialize)]
pub struct ModelConfig<'a> {
    pub name: &'a str,
    pub platform: &'static str,
    pub backend: &'static str,
    pub version_policy: VersionPolicy,
    /// 0 when requests are not batched (the model has no dynamic first
    /// dimension, or `--max-batch-size 1`): `dims` are then whole shapes.
    pub max_batch_size: usize,
    pub input: Vec<ConfigInput<'a>>,
    pub output: Vec<ConfigOutput<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_batching: Option<DynamicBatching>,
    pub instance_group: Vec<InstanceGroup>,
    pub default_model_filename: &'static str,
    pub parameters: Empty,
}

/// `{}` in JSON.
#[derive(Debug, Default, Serialize)]
pub struct Empty {}

/// abmesh serves every version found in the repository, as Triton's
/// `version_policy: {all: {}}` does.
#[derive(Debug, Serialize)]
pub struct VersionPolicy {
    pub all: Empty,
}

#[derive(Debug, Serialize)]
pub struct ConfigInput<'a> {
    pub name: &'a str,
    pub data_type: &'static str,
    pub format: &'static str,
    pub dims: &'a [i64],
    pub is_shape_tensor: bool,
    pub allow_ragged_batch: bool,
    pub optional: bool,
}

#[derive(Debug, Serialize)]
pub struct ConfigOutput<'a> {
    pub name: &'a str,
    pub data_type: &'static str,
    pub dims: &'a [i64],
    pub label_filename: &'static str,
    pub is_shape_tensor: bool,
}

#[derive(Debug, Serialize)]
pub struct DynamicBatching {
    /// abmesh prefers no size: it runs what is queued, up to the maximum.
    pub preferred_batch_size: [usize; 0],
    pub max_queue_delay_microseconds: u64,
    /// Responses are not held back to keep request order: the sessions of
    /// a version run batches side by side.
    pub preserve_ordering: bool,
    pub priority_levels: u32,
    pub default_priority_level: u32,
    pub default_queue_policy: QueuePolicy,
}

/// What happens to a request when the queue is full: it is refused at once
/// (503) once `max_queue_size` requests wait; there is no queue timeout.
#[derive(Debug, Serialize)]
pub struct QueuePolicy {
    pub timeout_action: &'static str,
    pub default_timeout_microseconds: u64,
    pub allow_timeout_override: bool,
    pub max_queue_size: usize,
}

#[derive(Debug, Serialize)]
pub struct InstanceGroup {
    pub name: String,
    pub kind: &'static str,
    pub count: usize,
    pub gpus: Vec<i32>,
}

/// What [`ModelConfig::new`] needs from the host's settings.
#[derive(Debug, Clone, Copy)]
pub struct HostSettings {
    pub batching: BatchConfig,
    pub instances: usize,
    pub queue_capacity: usize,
    pub device: Device,
}

impl<'a> ModelConfig<'a> {
    /// The configuration of a loaded version.
    pub fn new(model: &'a LoadedVersion, host: HostSettings) -> ModelConfig<'a> {
        ModelConfig::of(model.name(), model.signature(), host)
    }

    /// The configuration of a model named `name` serving `sig`.
    pub fn of(name: &'a str, sig: &'a Signature, host: HostSettings) -> ModelConfig<'a> {
        // The batcher merges requests only for models whose every input
        // and output has a dynamic first dimension, and only with a maximum
        // above one row (see `crate::batching`).
        let batching = sig.batchable && host.batching.max_batch_size > 1;
        let dims = |s: &'a TensorSpec| -> &'a [i64] {
            if batching {
                s.shape.get(1..).unwrap_or_default()
            } else {
                &s.shape
            }
        };
        let (kind, gpus) = match host.device {
            Device::Cpu => ("KIND_CPU", vec![]),
            Device::Cuda { device_id } => ("KIND_GPU", vec![device_id]),
        };
        ModelConfig {
            name,
            platform: "onnxruntime_onnx",
            backend: "onnxruntime",
            version_policy: VersionPolicy { all: Empty {} },
            max_batch_size: if batching {
                host.batching.max_batch_size
            } else {
                0
            },
            input: sig
                .inputs
                .iter()
                .map(|s| ConfigInput {
                    name: &s.name,
                    data_type: config_data_type(s.datatype),
                    format: "FORMAT_NONE",
                    dims: dims(s),
                    is_shape_tensor: false,
                    allow_ragged_batch: false,
                    optional: false,
                })
                .collect(),
            output: sig
                .outputs
                .iter()
                .map(|s| ConfigOutput {
                    name: &s.name,
                    data_type: config_data_type(s.datatype),
                    dims: dims(s),
                    label_filename: "",
                    is_shape_tensor: false,
                })
                .collect(),
            dynamic_batching: batching.then(|| DynamicBatching {
                preferred_batch_size: [],
                max_queue_delay_microseconds: u64::try_from(
                    host.batching.max_queue_delay.as_micros(),
                )
                .unwrap_or(u64::MAX),
                preserve_ordering: false,
                priority_levels: 0,
                default_priority_level: 0,
                default_queue_policy: QueuePolicy {
                    timeout_action: "REJECT",
                    default_timeout_microseconds: 0,
                    allow_timeout_override: false,
                    max_queue_size: host.queue_capacity,
                },
            }),
            instance_group: vec![InstanceGroup {
                name: format!("{name}_0"),
                kind,
                count: host.instances.max(1),
                gpus,
            }],
            default_model_filename: crate::repository::MODEL_FILE,
            parameters: Empty {},
        }
    }
}

/// One entry of `POST /v2/repository/index`.
#[derive(Debug, Serialize)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    /// `READY` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why a version is not ready; empty when it is.
    pub reason: &'static str,
}

/// `GET /v2/models[/{name}[/versions/{version}]]/stats`.
#[derive(Debug, Serialize)]
pub struct Statistics {
    pub model_stats: Vec<ModelStatistics>,
}

#[derive(Debug, Serialize)]
pub struct ModelStatistics {
    pub name: String,
    pub version: String,
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub inference_stats: InferenceStatistics,
    pub batch_stats: Vec<BatchStatistics>,
    pub memory_usage: [u8; 0],
}

#[derive(Debug, Serialize)]
pub struct InferenceStatistics {
    pub success: TallySnapshot,
    pub fail: TallySnapshot,
    pub queue: TallySnapshot,
    pub compute_input: TallySnapshot,
    pub compute_infer: TallySnapshot,
    pub compute_output: TallySnapshot,
    /// abmesh has no response cache: always zero (read by perf_analyzer).
    pub cache_hit: TallySnapshot,
    pub cache_miss: TallySnapshot,
}

#[derive(Debug, Serialize)]
pub struct BatchStatistics {
    pub batch_size: u64,
    pub compute_input: TallySnapshot,
    pub compute_infer: TallySnapshot,
    pub compute_output: TallySnapshot,
}

impl ModelStatistics {
    pub fn new(name: &str, version: u64, s: StatsSnapshot) -> ModelStatistics {
        ModelStatistics {
            name: name.to_owned(),
            version: version.to_string(),
            last_inference: s.last_inference_ms,
            inference_count: s.inference_count,
            execution_count: s.execution_count,
            inference_stats: InferenceStatistics {
                success: s.success,
                fail: s.fail,
                queue: s.queue,
                compute_input: s.compute_input,
                compute_infer: s.compute_infer,
                compute_output: s.compute_output,
                cache_hit: TallySnapshot::default(),
                cache_miss: TallySnapshot::default(),
            },
            batch_stats: s
                .batches
                .into_iter()
                .map(|(batch_size, [i, c, o])| BatchStatistics {
                    batch_size,
                    compute_input: i,
                    compute_infer: c,
                    compute_output: o,
                })
                .collect(),
            memory_usage: [],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    fn settings(max_batch_size: usize) -> HostSettings {
        HostSettings {
            batching: BatchConfig {
                max_batch_size,
                max_queue_delay: Duration::from_micros(150),
            },
            instances: 3,
            queue_capacity: 99,
            device: Device::Cuda { device_id: 1 },
        }
    }

    fn signature(batchable: bool) -> Signature {
        Signature {
            inputs: vec![spec("x", DataType::Fp32, &[-1, 4])],
            outputs: vec![spec("y", DataType::Int64, &[-1, 2, 3])],
            skipped_outputs: vec![],
            batchable,
        }
    }

    /// Batched: dims without the batch dimension and the batcher's real
    /// settings; not batched (no dynamic first dimension, or a maximum of
    /// one row): max_batch_size 0, whole shapes, no dynamic_batching.
    #[test]
    fn the_configuration_says_how_the_batcher_runs() {
        let sig = signature(true);
        let c = ModelConfig::of("m", &sig, settings(32));
        assert_eq!(c.max_batch_size, 32);
        assert_eq!(c.input[0].dims, &[4]);
        assert_eq!(c.output[0].dims, &[2, 3]);
        assert_eq!(c.output[0].data_type, "TYPE_INT64");
        let d = c.dynamic_batching.as_ref().expect("batched");
        assert_eq!(d.max_queue_delay_microseconds, 150);
        assert_eq!(d.default_queue_policy.max_queue_size, 99);
        assert_eq!(c.instance_group[0].count, 3);
        assert_eq!(c.instance_group[0].kind, "KIND_GPU");
        assert_eq!(c.instance_group[0].gpus, vec![1]);
        for (sig, max) in [(signature(true), 1), (signature(false), 32)] {
            let c = ModelConfig::of("m", &sig, settings(max));
            assert_eq!(c.max_batch_size, 0);
            assert_eq!(c.input[0].dims, &[-1, 4]);
            assert_eq!(c.output[0].dims, &[-1, 2, 3]);
            assert!(c.dynamic_batching.is_none());
        }
        let json = serde_json::to_value(ModelConfig::of("m", &sig, settings(8))).unwrap();
        assert_eq!(json["version_policy"], serde_json::json!({"all": {}}));
        assert_eq!(
            json["dynamic_batching"]["preferred_batch_size"],
            serde_json::json!([])
        );
    }

    #[test]
    fn every_datatype_has_its_triton_config_name() {
        for d in DataType::ALL {
            assert_eq!(config_data_type(d), format!("TYPE_{}", d.name()));
        }
    }
}
