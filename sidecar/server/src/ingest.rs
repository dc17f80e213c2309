//! The outcome log component: the [`Ingest`] that `abmesh serve
//! --data-dir` (and [`crate::local::LocalServer`]) opens and installs in
//! the `AppState`, and [`EngineMachine`], which puts the evaluation engine
//! (`abmesh-eval`) under the log (`abmesh-store`).
//!
//! The two crates do not know each other: the log keeps records of opaque
//! kinds and calls a [`StateMachine`]; the engine applies a record given
//! its kind byte. This is the one place that joins them.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use abmesh_eval::aggregate::engine::{EncodeError, KnownIds, NoticeSink, SnapshotError};
use abmesh_eval::aggregate::{Aggregates, Applied, Definitions, Engine, EngineOptions};
use abmesh_eval::RecordKind;
use abmesh_store::{
    RecordRef, Recovery, StateMachine, Store, StoreError, StoreMetrics, StoreOptions,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use abmesh_common::metrics::Register;

use crate::response::ApiError;
use crate::state::AppState;
use crate::webhook::Webhook;

/// The engine as the log's state machine: records are applied with
/// [`Engine::apply_record`], snapshots are the engine's encoding.
#[derive(Debug)]
pub struct EngineMachine(pub Engine);

impl StateMachine for EngineMachine {
    type Output = Applied;

    fn knows_kind(kind: u8) -> bool {
        RecordKind::try_from(kind).is_ok()
    }

    fn apply(&mut self, record: &RecordRef<'_>) -> Applied {
        self.0.set_local(record.local);
        self.0
            .apply_record(record.kind, record.lsn, record.received_ms, record.payload)
    }

    type SnapshotError = EncodeError;

    fn write_snapshot(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.0.encode_state(out)
    }
}

/// Default largest ingest body (a batch of ~100 000 events).
pub const DEFAULT_INGEST_BODY_LIMIT: usize = 16 << 20;

/// Counters of `POST /v1/events` and `/v1/exposures` (`abmesh_ingest_*`).
#[derive(Clone, Default, Debug)]
pub(crate) struct IngestMetrics {
    pub(crate) events: Counter,
    pub(crate) duplicate_events: Counter,
    pub(crate) exposures: Counter,
    pub(crate) rejected: Counter,
    pub(crate) halts: Counter,
    pub(crate) lifts: Counter,
}

/// The outcome log and the aggregates it feeds, as installed in the
/// `AppState` (`state.get::<Ingest>()`).
#[derive(Clone, Debug)]
pub struct Ingest {
    pub store: Store<EngineMachine>,
    pub aggregates: Arc<Mutex<Aggregates>>,
    pub body_limit: usize,
    /// The engine's remembered event ids (read before appending).
    pub(crate) known: KnownIds,
    pub(crate) metrics: IngestMetrics,
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
    JetStream(Box<abmesh_store::jetstream::JetStreamOptions>),
}

/// What [`Ingest::open_log`] needs besides the choice of log.
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
    /// Registers the ingest and guardrail counters, and the log's metrics,
    /// as `abmesh_ingest_*`, `abmesh_guardrail_*` and `abmesh_log_*`.
    fn register(registry: Option<&mut Registry>) -> (IngestMetrics, StoreMetrics) {
        let metrics = IngestMetrics::default();
        let Some(r) = registry else {
            return (metrics, StoreMetrics::new());
        };
        let store = StoreMetrics::register(r.sub_registry_with_prefix("log"));
        Register(r.sub_registry_with_prefix("ingest"))
            .metric("events", "Outcome events accepted", &metrics.events)
            .metric(
                "duplicate_events",
                "Outcome events ignored as duplicates (same id)",
                &metrics.duplicate_events,
            )
            .metric("exposures", "Exposure rows accepted", &metrics.exposures)
            .metric(
                "rejected_requests",
                "Ingest requests refused (400)",
                &metrics.rejected,
            );
        Register(r.sub_registry_with_prefix("guardrail"))
            .metric(
                "halts",
                "Variants halted (by a guardrail or an operator)",
                &metrics.halts,
            )
            .metric("lifts", "Halts lifted by an operator", &metrics.lifts);
        (metrics, store)
    }
}

/// The handles on the engine that the component keeps, taken when the log
/// restores it.
struct Restored {
    aggregates: Arc<Mutex<Aggregates>>,
    slot: Arc<Mutex<Option<NoticeSink>>>,
    known: KnownIds,
}

/// Restores the engine from a snapshot and keeps its handles in `out`.
fn restore(
    snapshot: Option<&[u8]>,
    definitions: Option<Arc<Definitions>>,
    options: EngineOptions,
    out: &mut Option<Restored>,
) -> Result<EngineMachine, SnapshotError> {
    let engine = Engine::restore(snapshot, definitions, options)?;
    *out = Some(Restored {
        aggregates: engine.aggregates(),
        slot: engine.notice_slot(),
        known: engine.known_ids(),
    });
    Ok(EngineMachine(engine))
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
        Ingest::finish(store, recovery, restored, metrics, body_limit, webhook)
    }

    /// [`Ingest::open`] with a choice of log: with a replicated one, it
    /// returns once this replica has caught up with the stream.
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
                Ingest::finish(store, recovery, restored, metrics, body_limit, webhook)
            }
        }
    }

    /// After recovery: installs the notice sink (from now on, halts and
    /// alarms are news) and assembles the component.
    fn finish(
        store: Store<EngineMachine>,
        recovery: Recovery,
        restored: Option<Restored>,
        metrics: IngestMetrics,
        body_limit: usize,
        webhook: Option<Arc<Webhook>>,
    ) -> Result<(Ingest, Recovery), StoreError> {
        // Both opens call `restore` exactly once before they return Ok.
        let Some(Restored {
            aggregates,
            slot,
            known,
        }) = restored
        else {
            return Err(StoreError::Setup(
                "the log opened without restoring the engine".into(),
            ));
        };
        let (halts, lifts) = (metrics.halts.clone(), metrics.lifts.clone());
        *slot.lock() = Some(Box::new(move |notice: serde_json::Value| {
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
                known,
                metrics,
            },
            recovery,
        ))
    }
}

impl Ingest {
    /// The installed component, or the 404 of a server without
    /// `--data-dir`.
    pub fn from_state(state: &AppState) -> Result<Ingest, ApiError> {
        state.get::<Ingest>().cloned().ok_or_else(|| {
            ApiError::not_found("this server keeps no outcome log (start it with --data-dir DIR)")
        })
    }

    /// Appends a record of `kind` received now; resolves once it is durable
    /// and applied.
    pub async fn append(
        &self,
        kind: RecordKind,
        payload: bytes::Bytes,
    ) -> Result<Applied, ApiError> {
        self.store
            .append(kind.into(), payload)
            .await
            .map_err(store_error)
    }
}

/// How often the bandit task looks for experiments whose next allocation
/// period is due (a period lasts at least a second).
pub const BANDIT_TICK: std::time::Duration = std::time::Duration::from_secs(1);

impl Ingest {
    /// Starts the task that appends the next allocation period of every
    /// bandit experiment that is due
    /// ([`abmesh_eval::aggregate::bandit::due_updates`]). Each replica of a
    /// replicated log runs one: the log orders their records and only the
    /// first for a period starts it, the others are no-ops. A record that
    /// cannot be appended (the log unavailable) is tried again at the next
    /// tick. Must be called within a tokio runtime; abort the handle
    /// before closing the log.
    pub fn spawn_bandit_task(&self) -> tokio::task::JoinHandle<()> {
        let ingest = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BANDIT_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                // Under the lock only the posteriors are read; the
                // quadrature runs after it is released.
                let due = {
                    let agg = ingest.aggregates.lock();
                    abmesh_eval::aggregate::bandit::due(&agg, now)
                };
                for rec in due.into_iter().filter_map(|p| p.compute()) {
                    let payload = match serde_json::to_vec(&rec) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot encode a bandit record");
                            continue;
                        }
                    };
                    match ingest
                        .append(RecordKind::Bandit, bytes::Bytes::from(payload))
                        .await
                    {
                        Ok(Applied::Bandit { changed: true, .. }) => {}
                        Ok(other) => {
                            tracing::debug!(
                                ?other,
                                "bandit record not applied (another replica's came first)"
                            )
                        }
                        Err(e) => tracing::warn!(
                            experiment = %rec.experiment,
                            error = %e,
                            "could not append the next bandit period; retrying at the next tick"
                        ),
                    }
                }
            }
        })
    }
}

/// Maps log failures to statuses: the client may retry a 503.
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(_) | StoreError::NotYetApplied(_) => {
            ApiError::unavailable(e.to_string()).retry_after(1)
        }
        StoreError::Failed(_) | StoreError::Closed => ApiError::unavailable(e.to_string()),
        StoreError::TooLarge { .. } => {
            ApiError::new(http::StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        other => ApiError::internal(other.to_string()),
    }
}
