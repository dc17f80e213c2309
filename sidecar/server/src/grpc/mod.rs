//! The KServe v2 / Triton gRPC service (`abmesh serve --grpc-listen`,
//! issue 12): `GRPCInferenceService` of `proto/grpc_service.proto`, as
//! `tritonclient.grpc` and `perf_analyzer -i grpc` call it.
//!
//! It shares the model host, the dynamic batching, the Prometheus metrics
//! and the Triton statistics with the HTTP listeners: a request here takes
//! the same path into the model host as `POST .../infer` does, and the
//! model configuration, repository index and statistics are built by the
//! same code (`abmesh_model_host::kserve::triton`).
//!
//! Auth, as on the HTTP listeners (issue 9): everything but model control
//! is data plane. `RepositoryModelLoad`/`RepositoryModelUnload` change what
//! is served, so they need the admin token (`--admin-token-file`) in the
//! `authorization: Bearer TOKEN` metadata; without an admin token
//! configured they are refused here (use the admin listener).
//!
//! Errors are gRPC statuses: `INVALID_ARGUMENT` for a request that does
//! not fit the model (the message names the input and the mismatch, as the
//! HTTP 400 does), `NOT_FOUND` for a model or version not in service,
//! `UNAVAILABLE` when a queue is full, `UNAUTHENTICATED`/`PERMISSION_DENIED`
//! for model control without the token, `INTERNAL` when ONNX Runtime fails
//! (or a handler panics: the panic is logged and the server keeps serving).

pub mod listener;
pub mod tensors;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use tonic::{Request, Response, Status};

use abmesh_common::quote::clip;
use abmesh_model_host::kserve::triton as json;
use abmesh_model_host::metrics::ErrorKind;
use abmesh_model_host::signature::TensorSpec;
use abmesh_model_host::{AdminError, InferError, LoadedVersion, LookupError, ModelHost};

use crate::auth::Token;
use crate::handlers::kserve::{not_ready, EXTENSIONS};
use crate::state::AppState;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// The service: the state both HTTP listeners share, and the admin token
/// model control needs.
#[derive(Clone)]
pub struct Inference {
    state: AppState,
    admin_token: Option<Token>,
}

impl Inference {
    pub fn new(state: AppState, admin_token: Option<Token>) -> Inference {
        Inference { state, admin_token }
    }

    /// The tonic service, taking messages of up to the HTTP body limit
    /// (`--body-limit`) both ways (tonic's default is 4 MiB).
    pub fn into_server(self) -> GrpcInferenceServiceServer<Inference> {
        let limit = self.state.body_limit();
        GrpcInferenceServiceServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    fn host(&self) -> Result<&Arc<ModelHost>, Status> {
        self.state.models().ok_or_else(|| {
            Status::not_found("this server hosts no models (start it with --models DIR)")
        })
    }

    /// A version in service; `version` empty is the highest loaded one.
    fn lookup(&self, name: &str, version: &str) -> Result<Arc<LoadedVersion>, Status> {
        let version = (!version.is_empty()).then_some(version);
        self.host()?
            .get(name, version)
            .map_err(|e: LookupError| Status::not_found(e.to_string()))
    }

    /// Model control needs the admin token.
    fn authorize_admin<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        let Some(token) = &self.admin_token else {
            return Err(Status::permission_denied(format!(
                "{what} over gRPC needs the admin token: start abmesh serve with --admin-token-file and send `authorization: Bearer TOKEN` metadata, or call the admin listener (--admin-listen)"
            )));
        };
        let mut values = req.metadata().get_all("authorization").iter();
        match (values.next(), values.next()) {
            (Some(v), None) if token.authorizes(v.as_bytes()) => Ok(()),
            (None, _) => Err(Status::unauthenticated(format!(
                "{what} needs `authorization: Bearer TOKEN` metadata (the token of `abmesh serve --admin-token-file`)"
            ))),
            _ => Err(Status::unauthenticated(format!(
                "{what}: the bearer token is not valid (send one `authorization: Bearer TOKEN` with the token of `abmesh serve --admin-token-file`)"
            ))),
        }
    }

    async fn infer(&self, req: pb::ModelInferRequest) -> Result<pb::ModelInferResponse, Status> {
        let started = Instant::now();
        let model = self.lookup(&req.model_name, &req.model_version)?;
        let metrics = model.metrics();
        metrics.requests.inc();
        let result = run_infer(&model, req).await;
        let elapsed = started.elapsed();
        metrics.latency.observe(elapsed.as_secs_f64());
        metrics.stats.request(result.is_ok(), elapsed);
        if let Err(e) = &result {
            metrics.error(match e.code() {
                tonic::Code::Unavailable => ErrorKind::unavailable,
                tonic::Code::Internal => ErrorKind::internal,
                _ => ErrorKind::invalid_request,
            });
            tracing::debug!(model = model.name(), version = model.version(), error = %e.message(), "gRPC inference request failed");
        }
        result
    }
}

async fn run_infer(
    model: &LoadedVersion,
    mut req: pb::ModelInferRequest,
) -> Result<pb::ModelInferResponse, Status> {
    // Moved out, not cloned: `decode_request` does not read it.
    let id = std::mem::take(&mut req.id);
    let (inputs, outputs) =
        tensors::decode_request(req).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let outputs = model
        .infer(inputs, outputs.as_deref())
        .await
        .map_err(|e| match e {
            InferError::Request(_) => Status::invalid_argument(e.to_string()),
            InferError::QueueFull { .. } | InferError::Stopped { .. } => {
                Status::unavailable(e.to_string())
            }
            InferError::Runtime(_) => Status::internal(e.to_string()),
        })?;
    let (outputs, raw) = tensors::encode_outputs(outputs);
    Ok(pb::ModelInferResponse {
        model_name: model.name().to_owned(),
        model_version: model.version().to_string(),
        id,
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    })
}

/// Runs a handler; a panic becomes `INTERNAL` (and a log line) instead of
/// the end of the connection's task, as on the HTTP listeners.
async fn guarded<T>(
    method: &'static str,
    f: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    match AssertUnwindSafe(f).catch_unwind().await {
        Ok(r) => r.map(Response::new),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            tracing::error!(method, panic = %abmesh_common::quote::bound(msg), "gRPC handler panicked; answered INTERNAL and serving on");
            Err(Status::internal(format!(
                "internal error while handling {method}; the server logged it and keeps serving"
            )))
        }
    }
}

fn admin_status(e: AdminError) -> Status {
    use abmesh_model_host::repository::RepositoryError;
    match &e {
        AdminError::Repository(RepositoryError::Missing { .. })
        | AdminError::NotLoaded { .. }
        | AdminError::NoVersions { .. } => Status::not_found(e.to_string()),
        AdminError::Repository(
            RepositoryError::InvalidName(_) | RepositoryError::InvalidVersion(_),
        ) => Status::invalid_argument(e.to_string()),
        AdminError::Signature { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<pb::model_metadata_response::TensorMetadata> {
    specs
        .iter()
        .map(|s| pb::model_metadata_response::TensorMetadata {
            name: s.name.to_string(),
            datatype: s.datatype.name().to_owned(),
            shape: s.shape.clone(),
        })
        .collect()
}

fn data_type(name: &str) -> i32 {
    pb::DataType::from_str_name(name).unwrap_or(pb::DataType::TypeInvalid) as i32
}

fn i32_of(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Triton's configuration message, from the same document the HTTP
/// endpoint serves.
fn model_config(c: json::ModelConfig<'_>) -> pb::ModelConfig {
    pb::ModelConfig {
        name: c.name.to_owned(),
        platform: c.platform.to_owned(),
        backend: c.backend.to_owned(),
        runtime: String::new(),
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(pb::model_version_policy::PolicyChoice::All(
                pb::model_version_policy::All {},
            )),
        }),
        max_batch_size: i32_of(c.max_batch_size),
        input: c
            .input
            .iter()
            .map(|i| pb::ModelInput {
                name: i.name.to_owned(),
                data_type: data_type(i.data_type),
                format: pb::model_input::Format::None as i32,
                dims: i.dims.to_vec(),
                is_shape_tensor: i.is_shape_tensor,
                allow_ragged_batch: i.allow_ragged_batch,
                optional: i.optional,
            })
            .collect(),
        output: c
            .output
            .iter()
            .map(|o| pb::ModelOutput {
                name: o.name.to_owned(),
                data_type: data_type(o.data_type),
                dims: o.dims.to_vec(),
                label_filename: String::new(),
                is_shape_tensor: o.is_shape_tensor,
            })
            .collect(),
        scheduling_choice: c.dynamic_batching.map(|d| {
            pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
                preferred_batch_size: vec![],
                max_queue_delay_microseconds: d.max_queue_delay_microseconds,
                preserve_ordering: d.preserve_ordering,
                priority_levels: u64::from(d.priority_levels),
                default_priority_level: u64::from(d.default_priority_level),
                default_queue_policy: Some(pb::ModelQueuePolicy {
                    timeout_action: pb::model_queue_policy::TimeoutAction::Reject as i32,
                    default_timeout_microseconds: d
                        .default_queue_policy
                        .default_timeout_microseconds,
                    allow_timeout_override: d.default_queue_policy.allow_timeout_override,
                    max_queue_size: u32::try_from(d.default_queue_policy.max_queue_size)
                        .unwrap_or(u32::MAX),
                }),
                priority_queue_policy: Default::default(),
            })
        }),
        instance_group: c
            .instance_group
            .into_iter()
            .map(|g| pb::ModelInstanceGroup {
                name: g.name,
                kind: pb::model_instance_group::Kind::from_str_name(g.kind)
                    .unwrap_or(pb::model_instance_group::Kind::Auto) as i32,
                count: i32_of(g.count),
                gpus: g.gpus,
            })
            .collect(),
        default_model_filename: c.default_model_filename.to_owned(),
        parameters: Default::default(),
        model_transaction_policy: None,
        response_cache: None,
    }
}

fn duration(t: abmesh_model_host::stats::TallySnapshot) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: t.count,
        ns: t.ns,
    })
}

fn model_statistics(v: &LoadedVersion) -> pb::ModelStatistics {
    let s = json::ModelStatistics::new(v.name(), v.version(), v.metrics().stats.snapshot());
    let i = s.inference_stats;
    pb::ModelStatistics {
        name: s.name,
        version: s.version,
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(i.success),
            fail: duration(i.fail),
            queue: duration(i.queue),
            compute_input: duration(i.compute_input),
            compute_infer: duration(i.compute_infer),
            compute_output: duration(i.compute_output),
            cache_hit: duration(i.cache_hit),
            cache_miss: duration(i.cache_miss),
        }),
        batch_stats: s
            .batch_stats
            .into_iter()
            .map(|b| pb::InferBatchStatistics {
                batch_size: b.batch_size,
                compute_input: duration(b.compute_input),
                compute_infer: duration(b.compute_infer),
                compute_output: duration(b.compute_output),
            })
            .collect(),
        memory_usage: vec![],
        response_stats: Default::default(),
    }
}

/// Load parameters abmesh cannot honour: a configuration or files sent
/// with the request (models come from the repository folder only).
fn refuse_load_parameters(
    parameters: &std::collections::HashMap<String, pb::ModelRepositoryParameter>,
) -> Result<(), Status> {
    match parameters
        .keys()
        .find(|k| *k == "config" || k.starts_with("file:"))
    {
        Some(key) => Err(Status::invalid_argument(format!(
            "load parameter '{}' is not supported: abmesh loads models from its repository folder only (--models DIR)",
            clip(key)
        ))),
        None => Ok(()),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: not_ready(&self.state).is_none(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = req.into_inner();
        // Not in service is "not ready", as Triton answers (not an error).
        let ready = self.lookup(&r.name, &r.version).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "abmesh".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let model = self.lookup(&r.name, &r.version)?;
        let sig = model.signature();
        Ok(Response::new(pb::ModelMetadataResponse {
            name: model.name().to_owned(),
            versions: self
                .host()?
                .loaded_versions(model.name())
                .iter()
                .map(u64::to_string)
                .collect(),
            platform: "onnxruntime_onnx".to_owned(),
            inputs: tensor_metadata(&sig.inputs),
            outputs: tensor_metadata(&sig.outputs),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        guarded("ModelInfer", self.infer(req.into_inner())).await
    }

    async fn model_config(
        &self,
        req: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = req.into_inner();
        let model = self.lookup(&r.name, &r.version)?;
        let host = self.host()?;
        let config = json::ModelConfig::new(&model, crate::handlers::triton::settings(host));
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(model_config(config)),
        }))
    }

    async fn model_statistics(
        &self,
        req: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = req.into_inner();
        let host = self.host()?;
        let versions = if r.name.is_empty() {
            host.loaded_all()
        } else if !r.version.is_empty() {
            vec![self.lookup(&r.name, &r.version)?]
        } else {
            let latest = self.lookup(&r.name, "")?;
            host.loaded_versions(latest.name())
                .into_iter()
                .filter_map(|v| host.get(latest.name(), Some(&v.to_string())).ok())
                .collect()
        };
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: versions.iter().map(|v| model_statistics(v)).collect(),
        }))
    }

    async fn repository_index(
        &self,
        req: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let r = req.into_inner();
        let status = self
            .host()?
            .status()
            .map_err(|e| Status::internal(e.to_string()))?;
        let models = status
            .into_iter()
            .filter(|s| !r.ready || s.loaded_at.is_some())
            .map(|s| {
                let ready = s.loaded_at.is_some();
                pb::repository_index_response::ModelIndex {
                    name: s.name,
                    version: s.version.to_string(),
                    state: if ready { "READY" } else { "UNAVAILABLE" }.to_owned(),
                    reason: if ready { "" } else { "unloaded" }.to_owned(),
                }
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        self.authorize_admin(&req, "model load")?;
        let r = req.into_inner();
        refuse_load_parameters(&r.parameters)?;
        let loaded = self
            .host()?
            .load_model(&r.model_name)
            .await
            .map_err(admin_status)?;
        tracing::info!(model = %r.model_name, versions = ?loaded, "gRPC repository load");
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        self.authorize_admin(&req, "model unload")?;
        let r = req.into_inner();
        let host = self.host()?;
        let unloaded = host
            .unload_model(&r.model_name)
            .await
            .map_err(admin_status)?;
        if unloaded.is_empty()
            && !host
                .status()
                .map_err(|e| Status::internal(e.to_string()))?
                .iter()
                .any(|s| s.name == r.model_name)
        {
            return Err(Status::not_found(format!(
                "unknown model '{}': it is neither in service nor in the repository",
                clip(&r.model_name)
            )));
        }
        tracing::info!(model = %r.model_name, versions = ?unloaded, "gRPC repository unload");
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}
