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
//! Events whose id is already known are acknowledged as duplicates and not
//! appended again ([`post_events`]). State merges are idempotent
//! ([`post_merge`]).
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
use crate::aggregate::engine::{id_hash, AdminAction, KnownIds, MergeVerdict};
use crate::aggregate::{config_id, Aggregates, Applied, Definitions, Engine, EngineOptions};
use crate::server::response::{self, clip, ApiError};
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
    /// The engine's remembered event ids (read before appending).
    known: KnownIds,
    metrics: IngestMetrics,
}

/// Which log keeps the records ([`Ingest::open_log`]).
#[derive(Debug, Clone, Default)]
pub enum LogChoice {
    /// The embedded file log in the data directory (one node).
    #[default]
    File,
    /// A NATS JetStream stream shared by every replica; the data directory
    /// keeps only this replica's snapshots.
    #[cfg(feature = "jetstream")]
    JetStream(Box<crate::store::jetstream::JetStreamOptions>),
}

/// What [`Ingest::open_log`] needs besides the log.
pub struct IngestConfig<'a> {
    pub dir: &'a Path,
    pub definitions: Option<Arc<Definitions>>,
    pub store_options: StoreOptions,
    pub engine_options: EngineOptions,
    pub body_limit: usize,
    pub registry: Option<&'a mut Registry>,
    pub webhook: Option<Arc<Webhook>>,
}

impl IngestMetrics {
    /// Registers the ingest and guardrail counters, and the log's metrics.
    fn register(registry: Option<&mut Registry>) -> (IngestMetrics, StoreMetrics) {
        let metrics = IngestMetrics::default();
        let Some(r) = registry else {
            return (metrics, StoreMetrics::new());
        };
        let store = StoreMetrics::register(r.sub_registry_with_prefix("log"));
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
        (metrics, store)
    }
}

/// What restoring the engine hands back besides the engine.
struct Restored {
    aggregates: Arc<Mutex<Aggregates>>,
    slot: Arc<Mutex<Option<crate::aggregate::engine::NoticeSink>>>,
    known: KnownIds,
}

impl Ingest {
    /// Opens (or creates) the data directory, recovers it, and starts the
    /// embedded file log. Metrics go to `registry` as `abmesh_log_*`,
    /// `abmesh_ingest_*` and `abmesh_guardrail_*` when given. Notices of
    /// new halts, lifts and SRM alarms after the recovery go to `webhook`
    /// (never blocking).
    pub fn open(
        dir: &Path,
        definitions: Option<Arc<Definitions>>,
        store_options: StoreOptions,
        engine_options: EngineOptions,
        body_limit: usize,
        registry: Option<&mut Registry>,
        webhook: Option<Arc<Webhook>>,
    ) -> Result<(Ingest, Recovery), StoreError> {
        let (metrics, store_metrics) = IngestMetrics::register(registry);
        let mut restored = None;
        let (store, recovery) = Store::open(dir, store_options, store_metrics, |snapshot| {
            restore(snapshot, definitions, engine_options, &mut restored)
        })?;
        Ok(Ingest::finish(
            store, recovery, restored, metrics, body_limit, webhook,
        ))
    }

    /// [`Ingest::open`] with a choice of log: with a replicated one, returns
    /// once this replica has caught up with the stream.
    pub async fn open_log(
        log: &LogChoice,
        config: IngestConfig<'_>,
    ) -> Result<(Ingest, Recovery), StoreError> {
        let IngestConfig {
            dir,
            definitions,
            store_options,
            engine_options,
            body_limit,
            registry,
            webhook,
        } = config;
        match log {
            LogChoice::File => Ingest::open(
                dir,
                definitions,
                store_options,
                engine_options,
                body_limit,
                registry,
                webhook,
            ),
            #[cfg(feature = "jetstream")]
            LogChoice::JetStream(options) => {
                let (metrics, store_metrics) = IngestMetrics::register(registry);
                let mut restored = None;
                let (store, recovery) = Store::open_jetstream(
                    dir,
                    store_options,
                    (**options).clone(),
                    store_metrics,
                    |snapshot| restore(snapshot, definitions, engine_options, &mut restored),
                )
                .await?;
                Ok(Ingest::finish(
                    store, recovery, restored, metrics, body_limit, webhook,
                ))
            }
        }
    }

    /// After recovery: installs the notice sink (from now on, halts and
    /// alarms are news) and assembles the component.
    fn finish(
        store: Store<Engine>,
        recovery: Recovery,
        restored: Option<Restored>,
        metrics: IngestMetrics,
        body_limit: usize,
        webhook: Option<Arc<Webhook>>,
    ) -> (Ingest, Recovery) {
        // Store::open and open_jetstream call restore exactly once before
        // they return Ok.
        let Restored {
            aggregates,
            slot,
            known,
        } = restored.expect("the store restored the engine");
        let (halts, lifts) = (metrics.halts.clone(), metrics.lifts.clone());
        *slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
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
        (
            Ingest {
                store,
                aggregates,
                body_limit,
                known,
                metrics,
            },
            recovery,
        )
    }
}

/// Restores the engine from a snapshot and keeps the handles the component
/// needs.
fn restore(
    snapshot: Option<&[u8]>,
    definitions: Option<Arc<Definitions>>,
    options: EngineOptions,
    out: &mut Option<Restored>,
) -> Result<Engine, String> {
    let engine = Engine::restore(snapshot, definitions, options)?;
    *out = Some(Restored {
        aggregates: engine.aggregates(),
        slot: engine.notice_slot(),
        known: engine.known_ids(),
    });
    Ok(engine)
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
        StoreError::Unavailable(_) | StoreError::NotYetApplied(_) => {
            ApiError::unavailable(e.to_string()).retry_after(1)
        }
        StoreError::Failed(_) | StoreError::Closed => ApiError::unavailable(e.to_string()),
        StoreError::TooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
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

/// The [`id_hash`] of each event's id (`None`: no id), in body order.
fn event_ids(body: &[u8]) -> Result<Vec<Option<u128>>, ValidationError> {
    Ok(parse_outcomes(body)?
        .iter()
        .map(|e| e.id.as_ref().map(|id| id_hash(id.as_str())))
        .collect())
}

/// The events of a validated body whose `keep` flag is set, as a JSON
/// array of their original bytes (so they parse exactly as they did).
/// `keep` is in body order: array elements, or the non-blank NDJSON lines.
fn keep_events(body: &[u8], keep: &[bool]) -> Result<Vec<u8>, ApiError> {
    let first = body.iter().position(|b| !b.is_ascii_whitespace());
    let elements: Vec<&[u8]> = if first.map(|i| body[i]) == Some(b'[') {
        serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(body)
            .map_err(|e| ApiError::internal(format!("re-reading a validated body: {e}")))?
            .into_iter()
            .map(|r| r.get().as_bytes())
            .collect()
    } else {
        body.split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .collect()
    };
    if elements.len() != keep.len() {
        return Err(ApiError::internal(format!(
            "re-reading a validated body found {} events, not {}",
            elements.len(),
            keep.len()
        )));
    }
    let mut out = Vec::with_capacity(body.len());
    out.push(b'[');
    for (e, _) in elements.iter().zip(keep).filter(|(_, k)| **k) {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.push(b']');
    Ok(out)
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
///
/// Events whose id the engine already knows are acknowledged as
/// duplicates without being appended again (a client re-sending a batch
/// after a 503, say, does not grow the log); when none is new, nothing is
/// appended at all. Otherwise the new ones are appended: the body as it
/// came when nothing was dropped, else a JSON array of the kept events'
/// original bytes. Known ids are read from the engine's set directly
/// ([`KnownIds`]), so the check costs no round trip through the applier.
pub async fn post_events(mut req: Request, state: AppState) -> HandlerResult {
    let ingest = ingest(&state)?;
    let body = req.body(ingest.body_limit.min(state.body_limit())).await?;
    let (body, ids) = match validate(body, event_ids).await {
        Ok(v) => v,
        Err(e) => {
            ingest.metrics.rejected.inc();
            return Err(e);
        }
    };
    let known = ingest.known.known(&ids);
    let dropped = known.iter().filter(|k| **k).count() as u64;
    let (accepted, duplicates) = if dropped == ids.len() as u64 {
        // Nothing new (or an empty body): nothing to append.
        (0, dropped)
    } else {
        let payload = if dropped == 0 {
            body
        } else {
            let keep: Vec<bool> = known.iter().map(|k| !k).collect();
            Bytes::from(keep_events(&body, &keep)?)
        };
        match ingest
            .store
            .append(Kind::Outcomes, payload)
            .await
            .map_err(store_error)?
        {
            Applied::Events {
                accepted,
                duplicates,
            } => (accepted, duplicates + dropped),
            Applied::Unreadable { error } => return Err(ApiError::internal(error)),
            other => {
                return Err(ApiError::internal(format!(
                    "applying events answered {other:?}"
                )))
            }
        }
    };
    ingest.metrics.events.inc_by(accepted);
    ingest.metrics.duplicate_events.inc_by(duplicates);
    Ok(response::json(&Applied::Events {
        accepted,
        duplicates,
    }))
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

/// `GET /admin/state`: the whole state in its export envelope (checksum,
/// this sidecar's id and the LSN the export covers; see
/// `crate::aggregate::engine`), binary, for merging into another sidecar
/// or `abmesh report --state`.
pub async fn get_state(_req: Request, state: AppState) -> HandlerResult {
    let ingest = ingest(&state)?;
    let id = ingest.store.sidecar_id();
    let bytes = ingest
        .store
        .with_state(move |engine, lsn| {
            let mut out = Vec::new();
            engine.export_state(id, lsn, &mut out).map(|()| out)
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
///
/// | status | when |
/// |---|---|
/// | 200 | merged: `{"merged": true, "duplicate": false, "users": n, "sidecar": id, "lsn": n, "message": ...}` |
/// | 200 | merged before: `{"merged": false, "duplicate": true, ...}`; nothing is appended or changed |
/// | 400 | not a sound exported state (damaged: the checksum; truncated; an older export without key), or one holding this sidecar's own records ("would double count") |
/// | 409 | this sidecar already holds records the state holds too (a later export of a sidecar merged before, say) |
pub async fn post_merge(mut req: Request, state: AppState) -> HandlerResult {
    let ingest = ingest(&state)?;
    let body = req.body(state.body_limit()).await?;
    let (body, info) =
        tokio::task::spawn_blocking(move || Engine::inspect_state(&body).map(|i| (body, i)))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    if let Some(r) = info.holds_own(ingest.store.sidecar_id()) {
        return Err(ApiError::bad_request(r.to_string()));
    }
    let key = info.key;
    let verdict = ingest
        .store
        .with_state(move |engine, _| engine.merge_verdict(&info))
        .await
        .map_err(store_error)?;
    match verdict {
        MergeVerdict::Merge => {}
        MergeVerdict::Duplicate => {
            return Ok(response::json(&Applied::Merge {
                merged: false,
                duplicate: true,
                users: 0,
                sidecar: Some(key.sidecar.to_string()),
                lsn: Some(key.lsn),
                message: format!("this state ({key}) was merged before: nothing changed"),
            }))
        }
        MergeVerdict::Refused(r) => return Err(ApiError::new(StatusCode::CONFLICT, r.to_string())),
    }
    // Checked again when applied: a merge of the same state racing this
    // one may have been appended meanwhile.
    match ingest
        .store
        .append(Kind::Merge, body)
        .await
        .map_err(store_error)?
    {
        applied @ Applied::Merge { .. } => Ok(response::json(&applied)),
        Applied::MergeRefused { error } => Err(ApiError::new(StatusCode::CONFLICT, error)),
        Applied::Unreadable { error } => Err(ApiError::internal(error)),
        other => Err(ApiError::internal(format!(
            "applying a merge answered {other:?}"
        ))),
    }
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
                "no experiment {:?} (known: {})",
                clip(&experiment),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        };
        if e.variant_index(&variant).is_none() {
            return Err(ApiError::not_found(format!(
                "experiment {experiment:?} has no variant {:?} (variants: {})",
                clip(&variant),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ids_of(body: &[u8]) -> Vec<Option<String>> {
        parse_outcomes(body)
            .unwrap()
            .iter()
            .map(|e| e.id.as_ref().map(|i| i.as_str().to_owned()))
            .collect()
    }

    #[test]
    fn kept_events_parse_exactly_as_they_came() {
        let array = b" [ {\"user\":\"a\",\"metric\":\"m\",\"id\":\"1\"},\n  {\"user\":\"b\",\n \"metric\":\"m\",\"value\":0.30000000000000004,\"id\":\"2\"} ,{\"user\":\"c\",\"metric\":\"m\"}]\n";
        let ndjson = b"{\"user\":\"a\",\"metric\":\"m\",\"id\":\"1\"}\r\n\n  \n{\"user\":\"b\",\"metric\":\"m\",\"value\":0.30000000000000004,\"id\":\"2\"}\n{\"user\":\"c\",\"metric\":\"m\"}";
        for body in [&array[..], &ndjson[..]] {
            let kept = keep_events(body, &[false, true, true]).unwrap();
            assert_eq!(ids_of(&kept), [Some("2".to_owned()), None]);
            let all = parse_outcomes(body).unwrap();
            let got = parse_outcomes(&kept).unwrap();
            assert_eq!(got[0].value.map(|v| v.0), all[1].value.map(|v| v.0));
            assert_eq!(got[1].user.as_str(), "c");
            assert_eq!(
                ids_of(&keep_events(body, &[true, false, false]).unwrap()),
                [Some("1".to_owned())]
            );
            assert!(
                keep_events(body, &[true, true]).is_err(),
                "a count that does not match"
            );
        }
    }
}
