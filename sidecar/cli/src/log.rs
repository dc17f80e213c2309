//! The `abmesh serve` flags that choose the log: the embedded file log in
//! `--data-dir` (the default), or a NATS JetStream stream shared by every
//! replica (`--log nats://...`), with its credentials.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use abmesh_server::ingest::LogChoice;
#[cfg(feature = "jetstream")]
use abmesh_store::jetstream::{JetStreamOptions, LogUrl, NatsAuth};

/// Log backend flags (flattened into `abmesh serve`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// Keep the log in a NATS JetStream stream shared by every replica of
    /// the sidecar instead of the data directory:
    /// nats://HOST:PORT[,HOST:PORT...]/STREAM[?replicas=N&max_age=30d&max_bytes=64GiB]
    /// (tls:// for TLS). The stream is created if missing (replicas=3 by
    /// default). Needs --data-dir, which then holds only this replica's
    /// snapshots.
    #[arg(long, value_name = "URL")]
    pub log: Option<String>,

    /// NATS credentials file (JWT and nkey seed, as `nsc` writes them).
    #[arg(long, value_name = "FILE", requires = "log")]
    pub nats_creds: Option<PathBuf>,

    /// NATS user name (with --nats-password-file).
    #[arg(long, value_name = "USER", requires_all = ["log", "nats_password_file"])]
    pub nats_user: Option<String>,

    /// File holding the NATS user's password.
    #[arg(long, value_name = "FILE", requires = "nats_user")]
    pub nats_password_file: Option<PathBuf>,

    /// File holding a NATS authentication token.
    #[arg(long, value_name = "FILE", requires = "log")]
    pub nats_token_file: Option<PathBuf>,

    /// File holding a NATS nkey seed (SU...).
    #[arg(long, value_name = "FILE", requires = "log")]
    pub nats_nkey_file: Option<PathBuf>,

    /// Root certificates (PEM) that sign the NATS servers' certificates;
    /// implies TLS.
    #[arg(long, value_name = "FILE", requires = "log")]
    pub nats_tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for NATS servers that verify clients (with
    /// --nats-tls-key).
    #[arg(long, value_name = "FILE", requires_all = ["log", "nats_tls_key"])]
    pub nats_tls_cert: Option<PathBuf>,

    /// The client certificate's key (PEM).
    #[arg(long, value_name = "FILE", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,

    /// How long a write may wait for the stream's acknowledgment, retries
    /// included, before its request gets a 503 (e.g. while the stream has
    /// lost its quorum), in milliseconds.
    #[arg(long, default_value_t = 10_000, value_name = "MS", requires = "log")]
    pub log_write_timeout_ms: u64,
}

fn secret(path: &Path, flag: &str) -> Result<String> {
    let s =
        std::fs::read_to_string(path).with_context(|| format!("--{flag} {}", path.display()))?;
    let s = s.trim();
    if s.is_empty() {
        bail!("--{flag} {}: the file is empty", path.display());
    }
    Ok(s.to_owned())
}

impl LogArgs {
    /// The validated choice of log.
    pub fn choice(&self) -> Result<LogChoice> {
        let Some(url) = &self.log else {
            return Ok(LogChoice::File);
        };
        #[cfg(feature = "jetstream")]
        {
            let url: LogUrl = url.parse().with_context(|| format!("--log {url:?}"))?;
            let mut options = JetStreamOptions::new(url);
            options.write_timeout = Duration::from_millis(self.log_write_timeout_ms.max(100));
            options.auth = NatsAuth {
                creds_file: self.nats_creds.clone(),
                user: self.nats_user.clone(),
                password: self
                    .nats_password_file
                    .as_deref()
                    .map(|p| secret(p, "nats-password-file"))
                    .transpose()?,
                token: self
                    .nats_token_file
                    .as_deref()
                    .map(|p| secret(p, "nats-token-file"))
                    .transpose()?,
                nkey_seed: self
                    .nats_nkey_file
                    .as_deref()
                    .map(|p| secret(p, "nats-nkey-file"))
                    .transpose()?,
                tls_ca: self.nats_tls_ca.clone(),
                tls_cert: self.nats_tls_cert.clone().zip(self.nats_tls_key.clone()),
            };
            Ok(LogChoice::JetStream(Box::new(options)))
        }
        #[cfg(not(feature = "jetstream"))]
        {
            let _ = (url, Duration::ZERO, secret);
            bail!("--log needs abmesh built with the `jetstream` feature")
        }
    }
}
