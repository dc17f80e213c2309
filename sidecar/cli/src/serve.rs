//! `abmesh serve`: the sidecar service.
//!
//! It hosts ONNX models behind the KServe v2 protocol
//! (`abmesh-model-host`), keeps the outcome log (`crate::evaluation`), and
//! serves them on two listeners (`abmesh_server::routes`,
//! `abmesh_server::auth`): the data plane (`--listen`) and admin
//! (`--admin-listen`), each with its optional bearer token.
//!
//! Flags are parsed by clap into [`Args`], then validated once into a
//! [`ServeConfig`] (which also refuses listeners beyond loopback without a
//! token); nothing past that point re-checks them. [`ServeConfig::build`]
//! (`crate::service`) then wires the service from it, and the
//! [`Service`](crate::service::Service) runs until the shutdown signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use abmesh_model_host::{BatchConfig, DeviceRequest, HostConfig, SessionOptions};
use abmesh_server::auth::{listens_on_loopback, Token};
use abmesh_server::body::BodyLimits;
use abmesh_server::serve::ConnectionOptions;
use abmesh_server::state::ServerLimits;
use anyhow::{Context, Result};

use crate::error::ConfigError;
use crate::evaluation::EvaluationArgs;
use crate::limits::LimitArgs;
use crate::size::parse_size;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The data-plane listener: KServe v2 inference, /v1/events,
    /// /v1/exposures and /metrics (never /admin/*). Port 0 picks a free
    /// port; the log line "listening on http://..." says which. Beyond
    /// loopback with --data-dir it needs --ingest-token-file (or
    /// --allow-unauthenticated-ingest).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,

    /// The admin listener: all of /admin/* (reports, state export and
    /// merge, halts and lifts, model load/unload). Port 0 picks a free
    /// port; the log line "admin listening on http://..." says which.
    /// Beyond loopback it needs --admin-token-file.
    #[arg(long, default_value = "127.0.0.1:8001", value_name = "ADDR")]
    admin_listen: SocketAddr,

    /// Also serve the KServe v2 / Triton gRPC service (tritonclient.grpc,
    /// perf_analyzer -i grpc) on this address, with the same models,
    /// batching, metrics and statistics. Model load/unload over gRPC need
    /// the --admin-token-file token. Port 0 picks a free port; the log
    /// line "grpc listening on grpc://..." says which.
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<SocketAddr>,

    /// A file holding the admin bearer token (its contents, trimmed; 16 to
    /// 4096 visible ASCII characters). When given, every admin request
    /// needs `Authorization: Bearer TOKEN`, from loopback too.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,

    /// A file holding the ingest token (as --admin-token-file). When given,
    /// POST /v1/events and /v1/exposures need `Authorization: Bearer
    /// TOKEN`; the filter sends it when its config has `sidecar.token`.
    #[arg(long, value_name = "FILE")]
    ingest_token_file: Option<PathBuf>,

    /// Serve /v1/events and /v1/exposures without a token on a
    /// non-loopback --listen: only when the network already decides who
    /// may call them (e.g. Istio mTLS with an AuthorizationPolicy). Every
    /// peer that reaches the port is then trusted, the configuration its
    /// batches carry included.
    #[arg(long, conflicts_with = "ingest_token_file")]
    allow_unauthenticated_ingest: bool,

    /// Model repository: DIR/{name}/{version}/model.onnx, versions being
    /// integers. Every version found is loaded at startup. Without it the
    /// server hosts no models.
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,

    /// Execution provider: auto (CUDA when available, else CPU, saying so),
    /// cpu, cuda or cuda:N (fail at startup if CUDA cannot be used).
    #[arg(long, default_value = "auto", value_name = "auto|cpu|cuda[:N]")]
    device: DeviceRequest,

    /// The libonnxruntime to load [env: ORT_DYLIB_PATH]. By default the one
    /// of the installed `onnxruntime` Python wheel is found by itself.
    #[arg(long, value_name = "PATH")]
    ort_library: Option<PathBuf>,

    /// ONNX Runtime sessions (one worker thread each) per model version
    /// [default: the number of CPUs, at most 4].
    #[arg(long, value_name = "N")]
    instances: Option<usize>,

    /// Threads ONNX Runtime may use inside one run of one session.
    #[arg(long, default_value_t = 1, value_name = "N")]
    intra_op_threads: usize,

    /// Most rows merged into one run by dynamic batching, for models whose
    /// inputs and outputs have a dynamic first dimension; 1 turns batching
    /// off.
    #[arg(long, default_value_t = 64, value_name = "ROWS")]
    max_batch_size: usize,

    /// How long the first request of a batch may wait for others, in
    /// microseconds. 0 merges only requests that are already queued.
    #[arg(long, default_value_t = 0, value_name = "MICROSECONDS")]
    max_queue_delay_us: u64,

    /// Requests of models whose runs take at most this many microseconds
    /// per request run on the HTTP threads (batched with the other such
    /// requests waiting) instead of the session worker threads, skipping
    /// two thread hand-offs per request. 0 always uses the worker threads.
    /// Ignored with --max-queue-delay-us.
    #[arg(long, default_value_t = 100, value_name = "MICROSECONDS")]
    inline_max_us: u64,

    /// Requests that may wait per model version; more get a 503.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    queue_capacity: usize,

    /// Largest request body accepted (bytes, or with KiB/MiB/GiB); larger
    /// gets a 413.
    #[arg(long, default_value = "64MiB", value_parser = parse_size, value_name = "SIZE")]
    body_limit: usize,

    /// Threads serving HTTP [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    http_threads: Option<usize>,

    /// On SIGTERM/SIGINT, how long requests in flight get to finish, in
    /// seconds.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    shutdown_grace: u64,

    // Slow and idle clients: --body-read-timeout, --body-bytes-in-flight,
    // --header-read-timeout.
    #[command(flatten)]
    limits: LimitArgs,

    // Outcome log and reports: --data-dir, --experiments, --evaluation, ...
    #[command(flatten)]
    evaluation: EvaluationArgs,
}

/// The validated configuration of `abmesh serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The gRPC listener, when asked for.
    pub grpc_listen: Option<SocketAddr>,
    /// Needed on every admin request when set.
    pub admin_token: Option<Token>,
    /// Needed on every /v1/* request when set.
    pub ingest_token: Option<Token>,
    pub models: Option<PathBuf>,
    pub device: DeviceRequest,
    pub ort_library: Option<PathBuf>,
    pub host: HostConfig,
    pub limits: ServerLimits,
    /// Body read deadline and the cap on body bytes in flight.
    pub body_limits: BodyLimits,
    pub connections: ConnectionOptions,
    pub http_threads: usize,
    /// Outcome log and reports (`crate::evaluation`).
    pub evaluation: EvaluationArgs,
}

impl TryFrom<Args> for ServeConfig {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let at_least = |flag, min, got| {
            if got < min {
                Err(ConfigError::TooSmall { flag, min, got })
            } else {
                Ok(got)
            }
        };
        let instances = at_least("instances", 1, a.instances.unwrap_or(cpus.min(4)))?;
        let intra_op_threads = at_least("intra-op-threads", 1, a.intra_op_threads)?;
        let max_batch_size = at_least("max-batch-size", 1, a.max_batch_size)?;
        let queue_capacity = at_least("queue-capacity", 1, a.queue_capacity)?;
        let body_limit = at_least("body-limit", 1024, a.body_limit)?;
        let http_threads = at_least("http-threads", 1, a.http_threads.unwrap_or(cpus))?;
        if let Some(dir) = &a.models {
            if !dir.is_dir() {
                return Err(ConfigError::NotAFolder(dir.clone()));
            }
        }
        if a.listen == a.admin_listen && a.listen.port() != 0 {
            return Err(ConfigError::SameAddress(a.listen));
        }
        if let Some(g) = a.grpc_listen {
            if g.port() != 0 && (g == a.listen || g == a.admin_listen) {
                return Err(ConfigError::GrpcSameAddress(g));
            }
        }
        let admin_token = a
            .admin_token_file
            .as_deref()
            .map(|p| Token::from_file("--admin-token-file", p))
            .transpose()?;
        let ingest_token = a
            .ingest_token_file
            .as_deref()
            .map(|p| Token::from_file("--ingest-token-file", p))
            .transpose()?;
        if admin_token.is_none() && !listens_on_loopback(a.admin_listen) {
            return Err(ConfigError::AdminNeedsToken(a.admin_listen));
        }
        if ingest_token.is_none()
            && !a.allow_unauthenticated_ingest
            && a.evaluation.data_dir.is_some()
            && !listens_on_loopback(a.listen)
        {
            return Err(ConfigError::IngestNeedsToken(a.listen));
        }
        Ok(ServeConfig {
            listen: a.listen,
            admin_listen: a.admin_listen,
            grpc_listen: a.grpc_listen,
            admin_token,
            ingest_token,
            models: a.models,
            device: a.device,
            ort_library: a
                .ort_library
                .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
                .filter(|p| !p.as_os_str().is_empty()),
            host: HostConfig {
                instances,
                session: SessionOptions { intra_op_threads },
                batching: BatchConfig {
                    max_batch_size,
                    max_queue_delay: Duration::from_micros(a.max_queue_delay_us),
                },
                queue_capacity,
                inline_budget: Duration::from_micros(a.inline_max_us),
            },
            limits: ServerLimits { body_limit },
            body_limits: a.limits.body_limits(body_limit)?,
            connections: ConnectionOptions {
                header_read_timeout: a.limits.header_read_timeout()?,
                shutdown_grace: Duration::from_secs(a.shutdown_grace),
            },
            http_threads,
            evaluation: a.evaluation,
        })
    }
}

pub fn run(args: Args) -> Result<()> {
    init_logging();
    args.limits.apply_memory_settings();
    let config = ServeConfig::try_from(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.http_threads)
        .thread_name("abmesh-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move { config.build().await?.run(shutdown_signal()).await })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_are_validated_into_a_config() {
        let cli = Cli::parse_from([
            "x",
            "--max-batch-size",
            "8",
            "--max-queue-delay-us",
            "250",
            "--device",
            "cpu",
        ]);
        let c = ServeConfig::try_from(cli.args).unwrap();
        assert_eq!(c.host.batching.max_batch_size, 8);
        assert_eq!(c.host.batching.max_queue_delay, Duration::from_micros(250));
        assert_eq!(c.device, DeviceRequest::Cpu);
        assert_eq!(c.limits.body_limit, 64 << 20);

        let cli = Cli::parse_from(["x", "--instances", "0"]);
        let e = ServeConfig::try_from(cli.args).unwrap_err();
        assert_eq!(e.to_string(), "--instances must be at least 1 (got 0)");
        assert!(Cli::try_parse_from(["x", "--device", "gpu"]).is_err());
    }

    fn config(args: &[&str]) -> Result<ServeConfig, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap();
        ServeConfig::try_from(cli.args)
    }

    #[test]
    fn listeners_and_their_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("t");
        std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
        let token = token.to_str().unwrap();
        let data = dir.path().join("data");
        let data = data.to_str().unwrap();

        // Defaults: both on loopback, no tokens.
        let c = config(&[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:8001".parse().unwrap());
        assert!(c.admin_token.is_none() && c.ingest_token.is_none());

        let e = config(&["--admin-listen", "0.0.0.0:8001"]).unwrap_err();
        assert!(matches!(e, ConfigError::AdminNeedsToken(_)), "{e}");
        let e = config(&["--admin-listen", "[::]:8001"]).unwrap_err();
        assert!(matches!(e, ConfigError::AdminNeedsToken(_)), "{e}");
        let c = config(&[
            "--admin-listen",
            "0.0.0.0:8001",
            "--admin-token-file",
            token,
        ])
        .unwrap();
        assert_eq!(
            c.admin_token.unwrap().bearer(),
            "Bearer 0123456789abcdef0123"
        );

        let e = config(&["--listen", "0.0.0.0:8000", "--data-dir", data]).unwrap_err();
        assert!(matches!(e, ConfigError::IngestNeedsToken(_)), "{e}");
        config(&["--listen", "0.0.0.0:8000"]).unwrap();
        config(&[
            "--listen",
            "0.0.0.0:8000",
            "--data-dir",
            data,
            "--allow-unauthenticated-ingest",
        ])
        .unwrap();
        let c = config(&[
            "--listen",
            "0.0.0.0:8000",
            "--data-dir",
            data,
            "--ingest-token-file",
            token,
        ])
        .unwrap();
        assert!(c.ingest_token.is_some());
        // A token on loopback is fine too, and then required.
        assert!(config(&["--ingest-token-file", token])
            .unwrap()
            .ingest_token
            .is_some());

        let e = config(&[
            "--listen",
            "127.0.0.1:9000",
            "--admin-listen",
            "127.0.0.1:9000",
        ])
        .unwrap_err();
        assert!(matches!(e, ConfigError::SameAddress(_)), "{e}");
        config(&["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]).unwrap();
        for taken in ["127.0.0.1:9000", "127.0.0.1:9001"] {
            let e = config(&[
                "--listen",
                "127.0.0.1:9000",
                "--admin-listen",
                "127.0.0.1:9001",
                "--grpc-listen",
                taken,
            ])
            .unwrap_err();
            assert!(matches!(e, ConfigError::GrpcSameAddress(_)), "{e}");
        }
        let c = config(&["--grpc-listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(c.grpc_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(config(&[]).unwrap().grpc_listen, None);
        let e = config(&["--admin-token-file", "/nonexistent/abmesh.token"]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--admin-token-file /nonexistent/abmesh.token: cannot read it"),
            "{e}"
        );
        assert!(Cli::try_parse_from([
            "x",
            "--ingest-token-file",
            token,
            "--allow-unauthenticated-ingest"
        ])
        .is_err());
    }
}
