//! The KServe v2 REST endpoints (DESIGN.md, contract 4).
//!
//! | method | path |
//! |---|---|
//! | GET  | `/v2/health/live`, `/v2/health/ready` |
//! | GET  | `/v2` (server metadata) |
//! | GET  | `/v2/models/{name}[/versions/{version}]` (model metadata) |
//! | GET  | `/v2/models/{name}[/versions/{version}]/ready` |
//! | POST | `/v2/models/{name}[/versions/{version}]/infer` |
//!
//! Without `/versions/{version}` a request goes to the highest loaded
//! version. Errors are `{"error": "..."}`: 400 for a request that does not fit
//! the model (naming the input and the mismatch), 404 for a model or version
//! not in service, 413 for a body over the limit, 503 when a version's queue
//! is full, 500 when ONNX Runtime fails.

use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use http::StatusCode;

use abmesh_common::quote::clip;
use abmesh_model_host::kserve::codec::{self, HEADER_LENGTH};
use abmesh_model_host::kserve::types::{ModelMetadata, Readiness, ServerMetadata, TensorMetadata};
use abmesh_model_host::metrics::ErrorKind;
use abmesh_model_host::signature::TensorSpec;
use abmesh_model_host::{InferError, LoadedVersion, LookupError, ModelHost};

use crate::ingest::Ingest;
use crate::response::{self, ApiError};
use crate::router::{HandlerResult, Request};
use crate::state::AppState;

/// Extensions of the protocol this server implements, as `GET /v2` lists
/// them: the binary tensor extension, and Triton's model configuration,
/// model repository (index on the data plane; load and unload on the admin
/// listener) and statistics (`handlers::triton`).
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
];

pub(crate) fn host(state: &AppState) -> Result<&Arc<ModelHost>, ApiError> {
    state.models().ok_or_else(|| {
        ApiError::not_found("this server hosts no models (start it with --models DIR)")
    })
}

pub(crate) fn lookup(
    req: &Request,
    state: &AppState,
    versioned: bool,
) -> Result<Arc<LoadedVersion>, ApiError> {
    let version = versioned.then(|| req.param("version"));
    host(state)?
        .get(req.param("name"), version)
        .map_err(|e: LookupError| ApiError::not_found(e.to_string()))
}

pub async fn live(_: Request, _: AppState) -> HandlerResult {
    Ok(response::json(&serde_json::json!({ "live": true })))
}

/// `GET /v2/health/ready`: 200 `{"ready": true}` when every part of the
/// service can do its work; otherwise 503 `{"ready": false, "reason":
/// "..."}`, so orchestrators stop sending traffic: while the model host
/// drains for shutdown, or once the outcome log has stopped taking writes
/// (a failed write or fsync, such as a full disk: every ingest request
/// would get a 503 until a restart). `/v2/health/live` stays 200 in both
/// cases: the process is alive and still serves reports and models.
pub async fn ready(_: Request, state: AppState) -> HandlerResult {
    Ok(match not_ready(&state) {
        None => response::json(&Readiness {
            name: None,
            ready: true,
        }),
        Some(reason) => response::json_status(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "ready": false, "reason": reason }),
        ),
    })
}

/// Why the service is not ready (see [`ready`]); `None` when it is. The
/// gRPC `ServerReady` answers the same.
pub(crate) fn not_ready(state: &AppState) -> Option<String> {
    if state.models().is_some_and(|h| !h.is_ready()) {
        Some("the model host is shutting down".to_owned())
    } else {
        state
            .get::<Ingest>()
            .and_then(|i| i.store.failure().map(str::to_owned))
            .map(|e| format!("the outcome log refuses writes until a restart: {e}"))
    }
}

pub async fn server_metadata(_: Request, _: AppState) -> HandlerResult {
    Ok(response::json(&ServerMetadata {
        name: "abmesh",
        version: env!("CARGO_PKG_VERSION"),
        extensions: EXTENSIONS,
    }))
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<TensorMetadata<'_>> {
    specs
        .iter()
        .map(|s| TensorMetadata {
            name: &s.name,
            datatype: s.datatype.name(),
            shape: &s.shape,
        })
        .collect()
}

fn metadata(req: &Request, state: &AppState, versioned: bool) -> HandlerResult {
    let model = lookup(req, state, versioned)?;
    let versions = host(state)?
        .loaded_versions(model.name())
        .into_iter()
        .map(|v| v.to_string())
        .collect();
    let sig = model.signature();
    Ok(response::json(&ModelMetadata {
        name: model.name(),
        versions,
        platform: "onnxruntime_onnx",
        inputs: tensor_metadata(&sig.inputs),
        outputs: tensor_metadata(&sig.outputs),
    }))
}

pub async fn model_metadata(req: Request, state: AppState) -> HandlerResult {
    metadata(&req, &state, false)
}

pub async fn version_metadata(req: Request, state: AppState) -> HandlerResult {
    metadata(&req, &state, true)
}

fn model_ready(req: &Request, state: &AppState, versioned: bool) -> HandlerResult {
    let model = lookup(req, state, versioned)?;
    Ok(response::json(&Readiness {
        name: Some(model.name()),
        ready: true,
    }))
}

pub async fn model_ready_latest(req: Request, state: AppState) -> HandlerResult {
    model_ready(&req, &state, false)
}

pub async fn model_ready_version(req: Request, state: AppState) -> HandlerResult {
    model_ready(&req, &state, true)
}

pub async fn infer_latest(req: Request, state: AppState) -> HandlerResult {
    infer(req, state, false).await
}

pub async fn infer_version(req: Request, state: AppState) -> HandlerResult {
    infer(req, state, true).await
}

async fn infer(mut req: Request, state: AppState, versioned: bool) -> HandlerResult {
    let started = Instant::now();
    let model = lookup(&req, &state, versioned)?;
    let metrics = model.metrics();
    metrics.requests.inc();
    let result = run_infer(&mut req, &state, &model).await;
    let elapsed = started.elapsed();
    metrics.latency.observe(elapsed.as_secs_f64());
    metrics.stats.request(result.is_ok(), elapsed);
    if let Err(e) = &result {
        metrics.error(match e.status() {
            s if s.is_server_error() && s != StatusCode::SERVICE_UNAVAILABLE => ErrorKind::internal,
            StatusCode::SERVICE_UNAVAILABLE => ErrorKind::unavailable,
            _ => ErrorKind::invalid_request,
        });
        tracing::debug!(model = model.name(), version = model.version(), error = %e, "inference request failed");
    }
    result
}

/// A header as text, by a constant name (no parsing and hashing of a
/// `&str` name, as `Request::header` does).
fn header<'a>(req: &'a Request, name: &HeaderName) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn run_infer(req: &mut Request, state: &AppState, model: &LoadedVersion) -> HandlerResult {
    let header_length_name = HeaderName::from_static(HEADER_LENGTH);
    if let Some(enc) =
        header(req, &CONTENT_ENCODING).filter(|e| !e.eq_ignore_ascii_case("identity"))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Encoding {} is not supported; send the body uncompressed",
                clip(enc)
            ),
        ));
    }
    let header_length = header(req, &header_length_name).map(str::to_owned);
    let body = req.body(state.body_limit()).await?;
    let request = codec::decode_request(&body, header_length.as_deref())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    drop(body);
    let outputs = model
        .infer(request.inputs, request.outputs.as_deref())
        .await
        .map_err(|e| match e {
            InferError::Request(_) => ApiError::bad_request(e.to_string()),
            InferError::QueueFull { .. } | InferError::Stopped { .. } => {
                ApiError::unavailable(e.to_string())
            }
            InferError::Runtime(_) => ApiError::internal(e.to_string()),
        })?;
    let encoded = codec::encode_response(
        model.name(),
        model.version(),
        request.id.as_deref(),
        &outputs,
        &request.binary,
    );
    let mut resp = response::with_body(
        StatusCode::OK,
        if encoded.header_length.is_some() {
            "application/octet-stream"
        } else {
            response::JSON
        },
        encoded.body,
    );
    if let Some(n) = encoded.header_length {
        resp.headers_mut()
            .insert(header_length_name, HeaderValue::from(n));
    }
    debug_assert!(resp.headers().contains_key(CONTENT_TYPE));
    Ok(resp)
}
