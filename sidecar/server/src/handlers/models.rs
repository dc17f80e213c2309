//! `/admin/models/...`: what is in the repository and in service, and
//! loading, unloading and reloading versions at run time.
//!
//! | method | path | does |
//! |---|---|---|
//! | GET  | `/admin/models` | every version on disk or in service, with its state (JSON; HTML with `?format=html` or `Accept: text/html`) |
//! | POST | `/admin/models/{name}/versions/{version}/load` | loads `models/{name}/{version}/model.onnx`; 200 also when it is already loaded |
//! | POST | `/admin/models/{name}/versions/{version}/unload` | takes the version out of service; requests it has accepted still complete; 404 if not loaded |
//! | POST | `/admin/models/{name}/versions/{version}/reload` | reads the file again and swaps the new sessions in; the old ones finish their queue; if the new file fails to load, the old version keeps serving and the error is returned |
//!
//! Successful calls answer `{"model": ..., "version": ..., "state": "READY" | "UNAVAILABLE", "action": ...}`.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use http::StatusCode;
use serde::Serialize;

use abmesh_eval::report::html::escape_html;
use abmesh_model_host::repository::{parse_version, validate_name, RepositoryError};
use abmesh_model_host::{AdminError, LoadOutcome, ModelHost};

use crate::response::{self, ApiError};
use crate::router::{HandlerResult, Request};
use crate::state::AppState;

fn host(state: &AppState) -> Result<&Arc<ModelHost>, ApiError> {
    state.models().ok_or_else(|| {
        ApiError::not_found("this server hosts no models (start it with --models DIR)")
    })
}

fn target(req: &Request) -> Result<(String, u64), ApiError> {
    let name = req.param("name");
    validate_name(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let version =
        parse_version(req.param("version")).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((name.to_owned(), version))
}

pub(crate) fn admin_error(e: AdminError) -> ApiError {
    let status = match &e {
        AdminError::Repository(RepositoryError::Missing { .. })
        | AdminError::NotLoaded { .. }
        | AdminError::NoVersions { .. } => StatusCode::NOT_FOUND,
        AdminError::Repository(
            RepositoryError::InvalidName(_) | RepositoryError::InvalidVersion(_),
        ) => StatusCode::BAD_REQUEST,
        AdminError::Signature { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.to_string())
}

#[derive(Serialize)]
struct Changed<'a> {
    model: &'a str,
    version: u64,
    state: &'static str,
    action: &'static str,
}

pub async fn load(req: Request, state: AppState) -> HandlerResult {
    let (name, version) = target(&req)?;
    let outcome = host(&state)?
        .load(&name, version)
        .await
        .map_err(admin_error)?;
    tracing::info!(model = %name, version, ?outcome, "admin load");
    Ok(response::json(&Changed {
        model: &name,
        version,
        state: "READY",
        action: match outcome {
            LoadOutcome::AlreadyLoaded => "already_loaded",
            _ => "loaded",
        },
    }))
}

pub async fn reload(req: Request, state: AppState) -> HandlerResult {
    let (name, version) = target(&req)?;
    let outcome = host(&state)?
        .reload(&name, version)
        .await
        .map_err(admin_error)?;
    tracing::info!(model = %name, version, ?outcome, "admin reload");
    Ok(response::json(&Changed {
        model: &name,
        version,
        state: "READY",
        action: match outcome {
            LoadOutcome::Reloaded => "reloaded",
            _ => "loaded",
        },
    }))
}

pub async fn unload(req: Request, state: AppState) -> HandlerResult {
    let (name, version) = target(&req)?;
    host(&state)?
        .unload(&name, version)
        .await
        .map_err(admin_error)?;
    Ok(response::json(&Changed {
        model: &name,
        version,
        state: "UNAVAILABLE",
        action: "unloaded",
    }))
}

#[derive(Serialize)]
struct Listing<'a> {
    repository: String,
    device: String,
    models: Vec<ListedVersion<'a>>,
}

#[derive(Serialize)]
struct ListedVersion<'a> {
    name: &'a str,
    version: u64,
    state: &'static str,
    /// Milliseconds since the Unix epoch, while loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    loaded_at_ms: Option<u64>,
    on_disk: bool,
}

pub async fn list(req: Request, state: AppState) -> HandlerResult {
    let host = host(&state)?;
    let status = host
        .status()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let listing = Listing {
        repository: host.repository().root().display().to_string(),
        device: host.runtime().device().to_string(),
        models: status
            .iter()
            .map(|s| ListedVersion {
                name: &s.name,
                version: s.version,
                state: if s.loaded_at.is_some() {
                    "READY"
                } else {
                    "UNAVAILABLE"
                },
                loaded_at_ms: s
                    .loaded_at
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64),
                on_disk: s.on_disk,
            })
            .collect(),
    };
    if !req.wants_html() {
        return Ok(response::json(&listing));
    }
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><title>abmesh models</title>\
         <style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:left}</style>\
         <h1>Models</h1>",
    );
    html.push_str(&format!(
        "<p>Repository <code>{}</code>, device <code>{}</code></p>\
         <table><tr><th>model</th><th>version</th><th>state</th><th>on disk</th></tr>",
        escape_html(&listing.repository),
        escape_html(&listing.device)
    ));
    for m in &listing.models {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape_html(m.name),
            m.version,
            m.state,
            if m.on_disk {
                "yes"
            } else {
                "no (removed since loading)"
            }
        ));
    }
    html.push_str("</table>");
    Ok(response::with_body(StatusCode::OK, response::HTML, html))
}
