//! The `abmesh serve` flags of the outcome log and the reports, and how
//! they install the [`Ingest`] component into the `AppState`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use abmesh_eval::aggregate::{Definitions, EngineOptions};
use abmesh_eval::report::Settings;
use abmesh_server::handlers::reports::ReportSettings;
use abmesh_server::ingest::{Ingest, IngestConfig, LogChoice, DEFAULT_INGEST_BODY_LIMIT};
use abmesh_server::state::AppStateBuilder;
use abmesh_server::webhook::Webhook;
use abmesh_store::StoreOptions;

use crate::size::parse_size;

/// Outcome log and evaluation (flattened into `abmesh serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct EvaluationArgs {
    /// Keep the outcome log here and serve /v1/events, /v1/exposures and
    /// /admin/experiments. Created if missing; one process per directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Experiment definitions: the filter's plugin configuration (JSON).
    /// Gives variant order, control and weights (for the SRM check), and
    /// lets exposures be checked against the assignment core.
    #[arg(long, value_name = "FILE")]
    pub experiments: Option<PathBuf>,

    /// Evaluation settings (JSON): alpha, power, target_lift, n_star,
    /// min_users, and per experiment primary_metric and metric directions.
    #[arg(long, value_name = "FILE")]
    pub evaluation: Option<PathBuf>,

    /// Largest /v1/events or /v1/exposures body (bytes, or with
    /// KiB/MiB/GiB); larger gets a 413.
    #[arg(long, default_value_t = DEFAULT_INGEST_BODY_LIMIT, value_parser = parse_size, value_name = "SIZE")]
    pub ingest_body_limit: usize,

    /// Write a snapshot after this much log (restart replays at most about
    /// this much).
    #[arg(long, default_value = "256MiB", value_parser = parse_size, value_name = "SIZE")]
    pub snapshot_every: usize,

    /// POST a JSON notice here on every new halt (guardrail or manual),
    /// lift and sample-ratio alarm (http:// only; retried with backoff,
    /// never blocks ingestion, silent during the startup replay). Needs
    /// --data-dir.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<http::Uri>,

    // --log nats://... and its credentials.
    #[command(flatten)]
    pub log: crate::log::LogArgs,
}

/// What [`install`] started.
#[derive(Debug)]
pub struct Installed {
    pub ingest: Ingest,
    pub webhook: Option<Arc<Webhook>>,
    /// Appends bandit experiments' allocation periods when due.
    pub bandit: tokio::task::JoinHandle<()>,
}

/// Reads `--experiments`.
pub fn load_definitions(path: Option<&Path>) -> Result<Option<Arc<Definitions>>> {
    let Some(path) = path else { return Ok(None) };
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let d = Definitions::from_json(&bytes).with_context(|| format!("in {}", path.display()))?;
    Ok(Some(Arc::new(d)))
}

/// Reads `--evaluation` (defaults without it).
pub fn load_settings(path: Option<&Path>) -> Result<Settings> {
    match path {
        Some(p) => Ok(Settings::from_file(p)?),
        None => Ok(Settings::default()),
    }
}

/// Opens the log (recovering it, or catching up with a replicated one)
/// and installs [`Ingest`] and the report settings; None without
/// `--data-dir`. Must run inside the tokio runtime (the webhook's task
/// starts on it).
pub async fn install(
    args: &EvaluationArgs,
    state: &mut AppStateBuilder,
) -> Result<Option<Installed>> {
    let log = args.log.choice()?;
    let Some(dir) = &args.data_dir else {
        if args.log.log.is_some() {
            anyhow::bail!("--log needs --data-dir (where this replica keeps its snapshots)");
        }
        if args.webhook.is_some() {
            anyhow::bail!("--webhook needs --data-dir: halts and alarms come from the outcome log");
        }
        tracing::info!("no --data-dir: this server keeps no outcome log");
        return Ok(None);
    };
    let webhook = match &args.webhook {
        Some(url) => {
            let w = Webhook::spawn(url.clone()).context("--webhook")?;
            tracing::info!(
                receiver = %format!("{}://{}", url.scheme_str().unwrap_or("http"), url.authority().map_or("", |a| a.as_str())),
                "halts and sample-ratio alarms are posted to the webhook"
            );
            Some(Arc::new(w))
        }
        None => None,
    };
    let definitions = load_definitions(args.experiments.as_deref())?;
    let settings = load_settings(args.evaluation.as_deref())?;
    let t = std::time::Instant::now();
    let what = match &log {
        LogChoice::File => format!("opening the outcome log in {}", dir.display()),
        #[cfg(feature = "jetstream")]
        LogChoice::JetStream(o) => format!("opening the replicated log {}", o.url),
    };
    let (ingest, recovery) = Ingest::open_log(
        &log,
        IngestConfig {
            dir,
            definitions: definitions.clone(),
            store_options: StoreOptions {
                snapshot_every_bytes: args.snapshot_every as u64,
                ..StoreOptions::default()
            },
            engine_options: EngineOptions::default(),
            body_limit: args.ingest_body_limit,
            registry: Some(state.registry_mut()),
            webhook: webhook.clone(),
        },
    )
    .await
    .context(what)?;
    tracing::info!(
        dir = %dir.display(),
        snapshot_lsn = recovery.snapshot_lsn,
        replayed = recovery.replayed,
        truncated_bytes = recovery.truncated_bytes,
        last_lsn = recovery.last_lsn,
        experiments = definitions.as_ref().map_or(0, |d| d.experiments().len()),
        ms = t.elapsed().as_millis() as u64,
        "outcome log recovered"
    );
    state.insert(ingest.clone());
    state.insert(ReportSettings(Arc::new(settings)));
    let bandit = ingest.spawn_bandit_task();
    Ok(Some(Installed {
        ingest,
        webhook,
        bandit,
    }))
}

/// Stops the log cleanly (final snapshot) after the server stopped, then
/// gives the webhook a few seconds to deliver what is queued.
pub async fn shutdown(installed: Option<Installed>) {
    let Some(Installed {
        ingest,
        webhook,
        bandit,
    }) = installed
    else {
        return;
    };
    bandit.abort();
    let _ = tokio::task::spawn_blocking(move || ingest.store.shutdown()).await;
    if let Some(w) = webhook.and_then(|w| Arc::try_unwrap(w).ok()) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), w.close()).await;
    }
}
