//! `POST /v1/events` and `POST /v1/exposures`, and the [`Ingest`] component
//! that `abmesh serve --data-dir` installs in the `AppState`.
//!
//! | status | when |
//! |---|---|
//! | 200 | durable (fsynced) and applied: `{"accepted": n, "duplicates": d}` for events, `{"accepted": n, "duplicate_batch": false}` for exposures |
//! | 400 | invalid body; `{"error": "events[3].value: ..."}`; nothing of it was written |
//! | 404 | the server runs without `--data-dir` |
//! | 413 | body over the ingest limit |
//! | 503 | the log stopped taking writes after an I/O error, or is shutting down |

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::{parse_exposures, parse_outcomes, ValidationError};
use crate::aggregate::{Aggregates, Applied, Definitions, Engine, EngineOptions};
use crate::server::response::{self, ApiError};
use crate::server::router::{HandlerResult, Request, Router};
use crate::server::state::AppState;
use crate::store::{Kind, Recovery, Store, StoreError, StoreMetrics, StoreOptions};

/// Default largest ingest body (a batch of ~100 000 events).
pub const DEFAULT_INGEST_BODY_LIMIT: usize = 16 << 20;

/// Bodies above this are parsed on the blocking pool, not on an I/O thread.
const INLINE_PARSE_BYTES: usize = 1 << 20;

/// Counters of `POST /v1/events` and `/v1/exposures` (`abmesh_ingest_*`).
#[derive(Clone, Default, Debug)]
struct IngestMetrics {
    events: Counter,
    duplicate_events: Counter,
    exposures: Counter,
    rejected: Counter,
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
    /// log. Metrics go to `registry` as `abmesh_log_*` and
    /// `abmesh_ingest_*` when given.
    pub fn open(
        dir: &Path,
        definitions: Option<Arc<Definitions>>,
        store_options: StoreOptions,
        engine_options: EngineOptions,
        body_limit: usize,
        registry: Option<&mut Registry>,
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
                m
            }
            None => StoreMetrics::new(),
        };
        let mut aggregates = None;
        let (store, recovery) = Store::open(dir, store_options, store_metrics, |snapshot| {
            let engine = Engine::restore(snapshot, definitions, engine_options)?;
            aggregates = Some(engine.aggregates());
            Ok(engine)
        })?;
        let aggregates = aggregates.expect("restore ran");
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

/// Every route of the outcome log and the reports, for `server::routes`:
/// ingestion, state export/merge, and the experiment reports.
pub fn routes() -> Router {
    Router::new()
        .route(Method::POST, "/v1/events", post_events)
        .route(Method::POST, "/v1/exposures", post_exposures)
        .route(Method::GET, "/admin/state", get_state)
        .route(Method::POST, "/admin/state/merge", post_merge)
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

fn count_exposures(body: &[u8]) -> Result<usize, ValidationError> {
    parse_exposures(body).map(|b| b.exposures.len())
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
    let (body, _) = match validate(body, count_exposures).await {
        Ok(v) => v,
        Err(e) => {
            ingest.metrics.rejected.inc();
            return Err(e);
        }
    };
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
