//! Triton's REST extensions that its clients call on top of KServe v2
//! (issue 12): `tritonclient`'s `get_model_config`,
//! `get_model_repository_index`, `load_model`/`unload_model` and
//! `get_inference_statistics`, and what `perf_analyzer` reads before and
//! after it measures (the configuration and the statistics).
//!
//! | method | path | listener |
//! |---|---|---|
//! | GET  | `/v2/models/{name}[/versions/{version}]/config` | data plane |
//! | GET  | `/v2/models/stats`, `/v2/models/{name}[/versions/{version}]/stats` | data plane |
//! | POST | `/v2/repository/index` (body empty, or `{"ready": true}`) | data plane |
//! | POST | `/v2/repository/models/{name}/load`, `.../unload` | **admin** |
//!
//! Load and unload change what is served, so they follow the admin rules
//! (issue 9): they are served on the admin listener only, behind its token;
//! the data plane answers them 404, naming the admin listener
//! ([`crate::auth::Gate`]). A Triton client that loads and unloads is
//! pointed at the admin listener with `Authorization: Bearer TOKEN`.
//!
//! Without `/versions/{version}`, `config` describes the highest loaded
//! version and `stats` reports every loaded version of the model. Errors
//! are `{"error": "..."}` as in the other KServe handlers: 404 for a model
//! or version not in service, 400 for a body that is not what the endpoint
//! takes.
//!
//! `/v2/models/stats` is the statistics of every model, as in Triton: a
//! model named `stats` has its metadata hidden behind it (its other routes,
//! `/v2/models/stats/ready` and so on, still reach it).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use abmesh_common::quote::clip;
use abmesh_model_host::kserve::triton::{
    HostSettings, IndexEntry, ModelConfig, ModelStatistics, Statistics,
};
use abmesh_model_host::{LoadedVersion, ModelHost};

use crate::handlers::kserve::{host, lookup};
use crate::handlers::models::admin_error;
use crate::response::{self, ApiError};
use crate::router::{HandlerResult, Request};
use crate::state::AppState;

/// The largest body these endpoints read: they take at most a few
/// parameters.
const SMALL_BODY: usize = 64 << 10;

/// The body as JSON, or `T::default()` when it is empty (what
/// `tritonclient` sends for the repository index).
async fn optional_json<T: for<'de> Deserialize<'de> + Default>(
    req: &mut Request,
) -> Result<T, ApiError> {
    let body = req.body(SMALL_BODY).await?;
    if body.trim_ascii().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(abmesh_common::quote::bound(format!(
            "invalid JSON body: {e}"
        )))
    })
}

pub(crate) fn settings(host: &ModelHost) -> HostSettings {
    let c = host.config();
    HostSettings {
        batching: c.batching,
        instances: c.instances,
        queue_capacity: c.queue_capacity,
        device: host.runtime().device(),
    }
}

fn config(req: &Request, state: &AppState, versioned: bool) -> HandlerResult {
    let model = lookup(req, state, versioned)?;
    let host = host(state)?;
    Ok(response::json(&ModelConfig::new(&model, settings(host))))
}

pub async fn config_latest(req: Request, state: AppState) -> HandlerResult {
    config(&req, &state, false)
}

pub async fn config_version(req: Request, state: AppState) -> HandlerResult {
    config(&req, &state, true)
}

fn statistics(versions: &[Arc<LoadedVersion>]) -> HandlerResult {
    Ok(response::json(&Statistics {
        model_stats: versions
            .iter()
            .map(|v| ModelStatistics::new(v.name(), v.version(), v.metrics().stats.snapshot()))
            .collect(),
    }))
}

/// `GET /v2/models/stats`: every loaded version.
pub async fn stats_all(_: Request, state: AppState) -> HandlerResult {
    statistics(&host(&state)?.loaded_all())
}

/// `GET /v2/models/{name}/stats`: every loaded version of the model.
pub async fn stats_model(req: Request, state: AppState) -> HandlerResult {
    let host = host(&state)?;
    // 404 with the lookup's message when the model is not in service.
    let latest = lookup(&req, &state, false)?;
    let versions: Vec<_> = host
        .loaded_versions(latest.name())
        .into_iter()
        .filter_map(|v| host.get(latest.name(), Some(&v.to_string())).ok())
        .collect();
    statistics(&versions)
}

/// `GET /v2/models/{name}/versions/{version}/stats`.
pub async fn stats_version(req: Request, state: AppState) -> HandlerResult {
    statistics(&[lookup(&req, &state, true)?])
}

/// The body of `POST /v2/repository/index`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexRequest {
    /// Only versions that are ready.
    #[serde(default)]
    ready: bool,
}

/// `POST /v2/repository/index`: every version on disk or in service.
pub async fn repository_index(mut req: Request, state: AppState) -> HandlerResult {
    let filter: IndexRequest = optional_json(&mut req).await?;
    let status = host(&state)?
        .status()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let entries: Vec<IndexEntry> = status
        .into_iter()
        .map(|s| {
            let ready = s.loaded_at.is_some();
            IndexEntry {
                name: s.name,
                version: s.version.to_string(),
                state: if ready { "READY" } else { "UNAVAILABLE" },
                reason: if ready { "" } else { "unloaded" },
            }
        })
        .filter(|e| !filter.ready || e.state == "READY")
        .collect();
    Ok(response::json(&entries))
}

/// The body of a repository load or unload, as `tritonclient` sends it
/// (`{}`, or `{"parameters": {...}}`).
#[derive(Debug, Default, Deserialize)]
struct ControlRequest {
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

/// `POST /v2/repository/models/{name}/load` (admin listener): loads every
/// version of the model in the repository that is not in service; those in
/// service stay as they are (`/admin/models/.../reload` re-reads a file).
pub async fn repository_load(mut req: Request, state: AppState) -> HandlerResult {
    let body: ControlRequest = optional_json(&mut req).await?;
    // Triton can load a model from a configuration and files sent in the
    // request; abmesh serves only what its repository folder holds.
    if let Some(key) = body
        .parameters
        .keys()
        .find(|k| *k == "config" || k.starts_with("file:"))
    {
        return Err(ApiError::bad_request(format!(
            "load parameter '{}' is not supported: abmesh loads models from its repository folder only (--models DIR)",
            clip(key)
        )));
    }
    let name = req.param("name").to_owned();
    let loaded = host(&state)?.load_model(&name).await.map_err(admin_error)?;
    tracing::info!(model = %name, versions = ?loaded, "repository load");
    Ok(response::json(&serde_json::json!({
        "name": name,
        "state": "READY",
        "loaded_versions": loaded,
    })))
}

/// `POST /v2/repository/models/{name}/unload` (admin listener): takes every
/// version of the model out of service; requests they already accepted
/// still complete. A model in the repository that is not loaded is a no-op;
/// one that is nowhere is a 404.
pub async fn repository_unload(mut req: Request, state: AppState) -> HandlerResult {
    let _: ControlRequest = optional_json(&mut req).await?;
    let name = req.param("name").to_owned();
    let host = host(&state)?;
    let unloaded = host.unload_model(&name).await.map_err(admin_error)?;
    if unloaded.is_empty() {
        let known = host
            .status()
            .map_err(|e| ApiError::internal(e.to_string()))?
            .iter()
            .any(|s| s.name == name);
        if !known {
            return Err(ApiError::not_found(format!(
                "unknown model '{}': it is neither in service nor in the repository",
                clip(&name)
            )));
        }
    }
    tracing::info!(model = %name, versions = ?unloaded, "repository unload");
    Ok(response::json(&serde_json::json!({
        "name": name,
        "state": "UNAVAILABLE",
        "unloaded_versions": unloaded,
    })))
}
