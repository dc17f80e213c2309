//! `abmesh report NAME`: an experiment's report in the terminal.
//!
//! By default it asks a running sidecar's admin listener (`--url`,
//! default `http://127.0.0.1:8001`, `abmesh serve --admin-listen`; with
//! `--token-file` when the sidecar has `--admin-token-file`): the report is
//! then exactly what `/admin/experiments/NAME` serves, computed from the
//! live aggregates in milliseconds, and the CLI needs no access to the data
//! directory.
//!
//! Offline, `--data-dir DIR` rebuilds the state from a data directory
//! (read-only: snapshot plus log tail, a torn tail is skipped, nothing is
//! written, so it is safe beside a running sidecar, if slower), and
//! `--state FILE` reads states exported with `GET /admin/state`. Several
//! of either are merged first: the report of a fleet of sidecars.
//!
//! Sources merge like `POST /admin/state/merge` merges: a state file's
//! checksum must hold, a source given twice (the same export, or a data
//! directory and its own export) counts once (said on stderr), and sources
//! that would double count records (two exports of one sidecar at
//! different LSNs, say) are an error. A data directory is keyed by its
//! `sidecar-id` and the last LSN of its log; one that has none yet (never
//! opened by this version of `abmesh serve`) gets a random key for the run.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::evaluation::{load_definitions, load_settings};
use super::http::Client;
use crate::aggregate::engine::Applied;
use crate::aggregate::{Engine, EngineOptions};
use crate::report::{html, report, text};
use crate::store::{identity, SidecarId};
use crate::server::Token;

/// Where `abmesh serve --admin-listen` listens by default.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:8001";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Html,
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Html => "html",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The experiment.
    pub name: String,

    /// The admin listener of a running sidecar to ask (`abmesh serve
    /// --admin-listen`) [default: http://127.0.0.1:8001 unless --data-dir
    /// or --state is given].
    #[arg(long, value_name = "URL", conflicts_with_all = ["data_dir", "state"])]
    pub url: Option<String>,

    /// A file holding the sidecar's admin bearer token (the file given to
    /// `abmesh serve --admin-token-file`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["data_dir", "state"])]
    pub token_file: Option<PathBuf>,

    /// Read this data directory directly (read-only). Repeat to merge.
    #[arg(long = "data-dir", value_name = "DIR")]
    pub data_dir: Vec<PathBuf>,

    /// Read a state exported with `GET /admin/state`. Repeat to merge.
    #[arg(long, value_name = "FILE")]
    pub state: Vec<PathBuf>,

    /// Experiment definitions (the plugin JSON), offline only.
    #[arg(long, value_name = "FILE")]
    pub experiments: Option<PathBuf>,

    /// Evaluation settings (JSON), offline only.
    #[arg(long, value_name = "FILE")]
    pub evaluation: Option<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

pub fn run(args: Args) -> Result<()> {
    let out = if args.data_dir.is_empty() && args.state.is_empty() {
        from_server(&args)?
    } else {
        offline(&args)?
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    if !out.ends_with(b"\n") {
        stdout.write_all(b"\n")?;
    }
    Ok(())
}

fn from_server(args: &Args) -> Result<Vec<u8>> {
    if args.experiments.is_some() || args.evaluation.is_some() {
        bail!("--experiments and --evaluation apply offline (--data-dir, --state); a running sidecar uses its own");
    }
    let url = args.url.as_deref().unwrap_or(DEFAULT_ADMIN_URL);
    let bearer = args
        .token_file
        .as_deref()
        .map(|p| Token::from_file("--token-file", p).map(|t| t.bearer()))
        .transpose()?;
    let mut client = Client::new(url)?;
    let path = format!(
        "/admin/experiments/{}?format={}",
        args.name,
        args.format.as_str()
    );
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| ("authorization", b))
        .into_iter()
        .collect();
    let resp = client.get(&path, &headers).with_context(|| {
        format!("asking the sidecar's admin listener at {url} (is `abmesh serve --data-dir ...` running, with this --admin-listen?)")
    })?;
    if resp.status == 401 {
        bail!(
            "{url}{path}: 401: the sidecar wants its admin token: {}",
            if bearer.is_some() {
                "the one in --token-file is not it"
            } else {
                "give it with --token-file FILE"
            }
        );
    }
    if resp.status != 200 {
        let msg = serde_json::from_slice::<serde_json::Value>(&resp.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| resp.text());
        bail!("{url}{path}: {} {msg}", resp.status);
    }
    Ok(resp.body)
}

fn offline(args: &Args) -> Result<Vec<u8>> {
    let definitions = load_definitions(args.experiments.as_deref())?;
    let settings = load_settings(args.evaluation.as_deref())?;
    let opts = EngineOptions::default();
    let mut states: Vec<(String, Vec<u8>)> = Vec::new();
    for dir in &args.data_dir {
        let (engine, recovery) = crate::store::load(dir, |s| Engine::restore(s, None, opts))
            .with_context(|| format!("reading {}", dir.display()))?;
        let id = match identity::read(dir)? {
            Some(id) => id,
            None => SidecarId::random().map_err(anyhow::Error::msg)?,
        };
        let mut bytes = Vec::new();
        engine
            .export_state(id, recovery.last_lsn, &mut bytes)
            .map_err(anyhow::Error::msg)?;
        states.push((format!("--data-dir {}", dir.display()), bytes));
    }
    for f in &args.state {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        states.push((format!("--state {}", f.display()), bytes));
    }
    let mut engine = Engine::new(definitions, opts);
    for (source, s) in &states {
        let applied = engine
            .merge_state(s)
            .with_context(|| format!("merging {source}"))?;
        match applied {
            Applied::Merge {
                duplicate: true,
                message,
                ..
            } => eprintln!("note: {source}: {message}; counted once"),
            Applied::Merge { sidecar: None, .. } => eprintln!(
                "note: {source}: a state exported by an older abmesh, without checksum or key (export it again to have both)"
            ),
            Applied::MergeRefused { error } => bail!("merging {source}: {error}"),
            _ => {}
        }
    }
    let agg = engine.aggregates();
    let Some(r) = report(&agg, &args.name, &settings) else {
        let known: Vec<String> = agg
            .lock()
            .expect("lock")
            .experiments
            .iter()
            .map(|e| e.name.clone())
            .collect();
        bail!(
            "no experiment {:?} in these sources (known: {})",
            args.name,
            known.join(", ")
        );
    };
    Ok(match args.format {
        Format::Text => text::render(&r).into_bytes(),
        Format::Json => serde_json::to_vec_pretty(&r)?,
        Format::Html => html::report_page(&r).into_bytes(),
    })
}
