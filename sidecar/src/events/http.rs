//! `POST /v1/events` and `POST /v1/exposures`, and the [`Ingest`] component
//! that `abmesh serve --data-dir` installs in the `AppState`.
//!
//! | status | when |
//! |---|---|
//! | 200 | durable (fsynced) and applied: `{"accepted": n, "duplicates": d}` for events, `{"accepted": n, "duplicate_batch": false, "halted": [{"experiment": e, "variant": v}], "config_needed": false}` for exposures |
//! | 400 | invalid body; `{"error": "events[3].value: ..."}`; nothing of it was written |
//! | 404 | the server runs without `--data-dir` |
//! | 413 | body over the ingest limit |
//! | 503 | the log stopped taking writes after an I/O error, or is shutting down |
//!
//! A batch that brings a `config` whose id is not the current definitions'
//! is preceded in the log by a [`Kind::Config`] record (the definitions
//! follow it); the admin halt and lift endpoints append [`Kind::Admin`]
//! records. Both are durable before the 200.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use super::exposure::format_config_id;
use super::{parse_exposures, parse_outcomes, ValidationError};
use crate::aggregate::engine::AdminAction;
use crate::aggregate::{config_id, Aggregates, Applied, Definitions, Engine, EngineOptions};
use crate::server::response::{self, ApiError};
use crate::server::router::{HandlerResult, Request, Router};
use crate::server::state::AppState;
use crate::store::{Kind, Recovery, Store, StoreError, StoreMetrics, StoreOptions};
use crate::webhook::Webhook;

/// Default largest ingest body (a batch of ~100 000 events).
pub const DEFAULT_INGEST_BODY_LIMIT: usize = 16 << 20;

/// Bodies above this are parsed on the blocking pool, not on an I/O thread.
const INLINE_PARSE_BYTES: usize = 1 << 20;

/// Largest body of an admin halt or lift (`{"reason": ...}`).
const ADMIN_BODY_LIMIT: usize = 64 << 10;
/// Longest halt or lift reason, in characters.
const MAX_REASON_CHARS: usize = 1000;

/// Counters of `POST /v1/events` and `/v1/exposures` (`abmesh_ingest_*`).
#[derive(Clone, Default, Debug)]
struct IngestMetrics {
    events: Counter,
    duplicate_events: Counter,
    exposures: Counter,
    rejected: Counter,
    halts: Counter,
    lifts: Counter,
}

/// The outcome log and the aggregates it feeds, as installed in the
/// `AppState` (`state.get::<Ingest>()`).
#[derive(Clone, Debug)]
pub struct Ingest {
    pub store: Store<Engine>,
    pub aggregates: Arc<Mutex<Aggregates>>,
    pub body_limit: usize,
    metrics: IngestMetrics,
}

impl Ingest {
    /// Opens (or creates) the data directory, recovers it, and starts the
    /// log. Metrics go to `registry` as `abmesh_log_*`, `abmesh_ingest_*`
    /// and `abmesh_guardrail_*` when given. Notices of new halts, lifts and
    /// SRM alarms after the recovery go to `webhook` (never blocking).
    pub fn open(
        dir: &Path,
        definitions: Option<Arc<Definitions>>,
        store_options: StoreOptions,
        engine_options: EngineOptions,
        body_limit: usize,
        registry: Option<&mut Registry>,
        webhook: Option<Arc<Webhook>>,
    ) -> Result<(Ingest, Recovery), StoreError> {
        let metrics = IngestMetrics::default();
        let store_metrics = match registry {
            Some(r) => {
                let m = StoreMetrics::register(r.sub_registry_with_prefix("log"));
                let ing = r.sub_registry_with_prefix("ingest");
                ing.register("events", "Outcome events accepted", metrics.events.clone());
                ing.register(
                    "duplicate_events",
                    "Outcome events ignored as duplicates (same id)",
                    metrics.duplicate_events.clone(),
                );
                ing.register(
                    "exposures",
                    "Exposure rows accepted",
                    metrics.exposures.clone(),
                );
                ing.register(
                    "rejected_requests",
                    "Ingest requests refused (400)",
                    metrics.rejected.clone(),
                );
                let g = r.sub_registry_with_prefix("guardrail");
                g.register(
                    "halts",
                    "Variants halted (by a guardrail or an operator)",
                    metrics.halts.clone(),
                );
                g.register(
                    "lifts",
                    "Halts lifted by an operator",
                    metrics.lifts.clone(),
                );
                m
            }
            None => StoreMetrics::new(),
        };
        let mut aggregates = None;
        let mut slot = None;
        let (store, recovery) = Store::open(dir, store_options, store_metrics, |snapshot| {
            let engine = Engine::restore(snapshot, definitions, engine_options)?;
            aggregates = Some(engine.aggregates());
            slot = Some(engine.notice_slot());
            Ok(engine)
        })?;
        let aggregates = aggregates.expect("restore ran");
        // Recovery is over: from now on, halts and alarms are news.
        let (halts, lifts) = (metrics.halts.clone(), metrics.lifts.clone());
        *slot.expect("restore ran").lock().expect("notices lock") =
            Some(Box::new(move |notice: serde_json::Value| {
                match notice["event"].as_str() {
                    Some("halt") => {
                        halts.inc();
                    }
                    Some("lift") => {
                        lifts.inc();
                    }
                    _ => {}
                }
                tracing::warn!(notice = %notice, "guardrail notice");
                if let Some(w) = &webhook {
                    w.notify(notice);
                }
            }));
        Ok((
            Ingest {
                store,
                aggregates,
                body_limit,
                metrics,
            },
            recovery,
        ))
    }
}

/// The data-plane routes of the outcome log, for `server::routes`:
/// ingestion (`/v1/events`, `/v1/exposures`).
pub fn data_routes() -> Router {
    Router::new()
        .route(Method::POST, "/v1/events", post_events)
        .route(Method::POST, "/v1/exposures", post_exposures)
}

/// The admin routes of the outcome log and the reports, for
/// `server::routes` (the admin listener only): state export/merge, halts
/// and lifts, and the experiment reports.
pub fn admin_routes() -> Router {
    Router::new()
        .route(Method::GET, "/admin/state", get_state)
        .route(Method::POST, "/admin/state/merge", post_merge)
        .route(
            Method::POST,
            "/admin/experiments/{name}/variants/{variant}/halt",
            post_halt,
        )
        .route(
            Method::POST,
            "/admin/experiments/{name}/variants/{variant}/lift",
            post_lift,
        )
        .route(Method::GET, "/admin/halts", get_halts)
        .merge(crate::report::http::routes())
}

fn ingest(state: &AppState) -> Result<Ingest, ApiError> {
    state.get::<Ingest>().cloned().ok_or_else(|| {
        ApiError::not_found("this server keeps no outcome log (start it with --data-dir DIR)")
    })
}

/// Maps log failures to statuses: the client may retry a 503.
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Failed(_) | StoreError::Closed => ApiError::unavailable(e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

/// Validates on an I/O thread, or on the blocking pool for large bodies.
async fn validate<T: Send + 'static>(
    body: Bytes,
    check: fn(&[u8]) -> Result<T, ValidationError>,
) -> Result<(Bytes, T), ApiError> {
    if body.len() <= INLINE_PARSE_BYTES {
        let r = check(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
        return Ok((body, r));
    }
    tokio::task::spawn_blocking(move || {
        let r = check(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok((body, r))
    })
    .await
    .map_err(|e| ApiError::internal(format!("validating the body: {e}")))?
}

fn count_events(body: &[u8]) -> Result<usize, ValidationError> {
    parse_outcomes(body).map(|v| v.len())
}

/// What `POST /v1/exposures` needs from a validated batch.
struct BatchInfo {
    config_id: Option<u64>,
    /// Byte range of `config` in the body.
    config: Option<std::ops::Range<usize>>,
}

fn check_exposures(body: &[u8]) -> Result<BatchInfo, ValidationError> {
    let b = parse_exposures(body)?;
    // A learned configuration is logged, snapshotted and exported with the
    // state: it must not hold the filter's credential (filters leave it
    // out, `abmesh_filter::config::shipped_config`).
    if b.config
        .is_some_and(|c| abmesh_filter::config::carries_token(c.get().as_bytes()))
    {
        return Err(ValidationError::new(
            "config.sidecar.token",
            "a configuration with a token is not stored: the sidecar keeps no credentials (filters of this version leave the token out of the configuration they send)",
        ));
    }
    let config = b.config.map(|raw| {
        let s = raw.get();
        // Borrowed from the body (a RawValue always is).
        let start = s.as_ptr() as usize - body.as_ptr() as usize;
        start..start + s.len()
    });
    Ok(BatchInfo {
        config_id: b.config_id(),
        config,
    })
}

/// `POST /v1/events`: outcome events, a JSON array or NDJSON.
pub async fn post_events(mut req: Request, state: AppState) -> HandlerResult {
    let ingest = ingest(&state)?;
    let body = req.body(ingest.body_limit.min(state.body_limit())).await?;
    let (body, n) = match validate(body, count_events).await {
        Ok(v) => v,
        Err(e) => {
            ingest.metrics.rejected.inc();
            return Err(e);
        }
    };
    if n == 0 {
        return Ok(response::json(&Applied::Events {
            accepted: 0,
            duplicates: 0,
        }));
    }
    let applied = ingest
        .store
        .append(Kind::Outcomes, body)
        .await
        .map_err(store_error)?;
    if let Applied::Events {
        accepted,
        duplicates,
    } = &applied
    {
        ingest.metrics.events.inc_by(*accepted);
        ingest.metrics.duplicate_events.inc_by(*duplicates);
    }
    Ok(response::json(&applied))
}

/// `POST /v1/exposures`: one batch from a filter instance.
pub async fn post_exposures(mut req: Request, state: AppState) -> HandlerResult {
    let ingest = ingest(&state)?;
    let body = req.body(ingest.body_limit.min(state.body_limit())).await?;
    let (body, info) = match validate(body, check_exposures).await {
        Ok(v) => v,
        Err(e) => {
            ingest.metrics.rejected.inc();
            return Err(e);
        }
    };
    if let Some(range) = info.config {
        // A configuration the definitions do not follow yet: log it first,
        // so the batch (and every later one) is read with it.
        let config = &body[range];
        let id = info.config_id.unwrap_or_else(|| config_id(config));
        let current = {
            let agg = ingest.aggregates.lock().expect("aggregates lock");
            agg.definitions.as_ref().map(|d| d.id())
        };
        if current != Some(id) {
            let mut payload = Vec::with_capacity(config.len() + 48);
            payload.extend_from_slice(b"{\"config_id\":\"");
            payload.extend_from_slice(format_config_id(id).as_bytes());
            payload.extend_from_slice(b"\",\"config\":");
            payload.extend_from_slice(config);
            payload.push(b'}');
            let applied = ingest
                .store
                .append(Kind::Config, Bytes::from(payload))
                .await
                .map_err(store_error)?;
            if let Applied::Unreadable { error } = applied {
                return Err(ApiError::bad_request(error));
            }
        }
    }
    let applied = ingest
        .store
        .append(Kind::Exposures, body)
        .await
        .map_err(store_error)?;
    if let Applied::Exposures { accepted, .. } = &applied {
        ingest.metrics.exposures.inc_by(*accepted);
    }
    Ok(response::json(&applied))
}

/// `GET /admin/state`: the whole state (the snapshot format, binary), for
/// merging into another sidecar or `abmesh report --state`.
pub async fn get_state(_req: Request, state: AppState) -> HandlerResult {
    let ingest = ingest(&state)?;
    let bytes = ingest
        .store
        .with_state(|engine, _| {
            let mut out = Vec::new();
            engine.encode_state(&mut out).map(|()| out)
        })
        .await
        .map_err(store_error)?
        .map_err(ApiError::internal)?;
    Ok(response::with_body(
        StatusCode::OK,
        "application/octet-stream",
        bytes,
    ))
}

/// `POST /admin/state/merge`: merges another sidecar's `GET /admin/state`
/// into this one, durably (the state is appended to the log like events).
pub async fn post_merge(mut req: Request, state: AppState) -> HandlerResult {
    let ingest = ingest(&state)?;
    let body = req.body(state.body_limit()).await?;
    let body = tokio::task::spawn_blocking(move || Engine::validate_state(&body).map(|()| body))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let applied = ingest
        .store
        .append(Kind::Merge, body)
        .await
        .map_err(store_error)?;
    Ok(response::json(&applied))
}

/// The optional body of a halt or lift.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AdminBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /admin/experiments/{name}/variants/{variant}/halt`: routes the
/// variant's users like the control from the filters' next poll on.
pub async fn post_halt(req: Request, state: AppState) -> HandlerResult {
    admin(req, state, "halt").await
}

/// `POST /admin/experiments/{name}/variants/{variant}/lift`: ends a halt,
/// restarts the experiment's health window and overrides the metric
/// guardrails that breach for the variant.
pub async fn post_lift(req: Request, state: AppState) -> HandlerResult {
    admin(req, state, "lift").await
}

async fn admin(mut req: Request, state: AppState, action: &str) -> HandlerResult {
    let ingest = ingest(&state)?;
    let experiment = req.param("name").to_owned();
    let variant = req.param("variant").to_owned();
    let body = req.body(ADMIN_BODY_LIMIT).await?;
    let parsed: AdminBody = if body.iter().all(u8::is_ascii_whitespace) {
        AdminBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?
    };
    if let Some(r) = &parsed.reason {
        if r.chars().count() > MAX_REASON_CHARS {
            return Err(ApiError::bad_request(format!(
                "body.reason: at most {MAX_REASON_CHARS} characters"
            )));
        }
    }
    {
        let agg = ingest.aggregates.lock().expect("aggregates lock");
        let Some(e) = agg.experiment(&experiment) else {
            let known: Vec<&str> = agg.experiments.iter().map(|e| e.name.as_str()).collect();
            return Err(ApiError::not_found(format!(
                "no experiment {experiment:?} (known: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        };
        if e.variant_index(&variant).is_none() {
            return Err(ApiError::not_found(format!(
                "experiment {experiment:?} has no variant {variant:?} (variants: {})",
                e.variants.join(", ")
            )));
        }
        let control = match agg.defined(&experiment) {
            Some(d) => d.variants[d.control].clone(),
            None => e.variants[0].clone(),
        };
        if variant == control {
            return Err(ApiError::bad_request(format!(
                "{variant:?} is the control of {experiment:?}: halted users go to the control, so it cannot be {}",
                if action == "halt" { "halted" } else { "lifted" }
            )));
        }
        let active = agg.guard.active(&experiment, &variant).is_some();
        if action == "lift" && !active {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("variant {variant:?} of {experiment:?} is not halted"),
            ));
        }
        if action == "halt" && active {
            return Ok(response::json(&Applied::Admin {
                action: action.to_owned(),
                experiment,
                variant,
                changed: false,
                halted: agg.halted(),
            }));
        }
    }
    let record = AdminAction {
        action: action.to_owned(),
        experiment,
        variant,
        reason: parsed.reason,
    };
    let payload = serde_json::to_vec(&record).map_err(|e| ApiError::internal(e.to_string()))?;
    let applied = ingest
        .store
        .append(Kind::Admin, Bytes::from(payload))
        .await
        .map_err(store_error)?;
    if let Applied::Unreadable { error } = &applied {
        return Err(ApiError::internal(error.clone()));
    }
    Ok(response::json(&applied))
}

/// `GET /admin/halts`: every halt, current and lifted, oldest first, with
/// its time, source, rule, message and evidence.
pub async fn get_halts(_req: Request, state: AppState) -> HandlerResult {
    let ingest = ingest(&state)?;
    let halts: Vec<serde_json::Value> = {
        let agg = ingest.aggregates.lock().expect("aggregates lock");
        agg.guard
            .halts
            .iter()
            .map(|h| {
                let mut v = serde_json::to_value(h).unwrap_or_default();
                v["active"] = h.active().into();
                v
            })
            .collect()
    };
    Ok(response::json(&halts))
}
