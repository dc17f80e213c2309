//! Running the real `abmesh serve` beside Envoy: on a given data-plane port
//! (Envoy's cluster points at it), started with `abmesh_testkit::serve`.

use std::path::{Path, PathBuf};

use abmesh_testkit::http::AsyncClient;
use abmesh_testkit::serve::Server;

/// A running sidecar; killed on drop.
pub struct Sidecar {
    server: Server,
    /// The data plane (`--listen`): KServe v2, /v1/*, /metrics.
    pub port: u16,
    /// The admin listener (`--admin-listen`): /admin/*.
    pub admin_port: u16,
}

impl Sidecar {
    /// Starts `abmesh serve` on `port` (its admin listener on a free port)
    /// with its outcome log in `data_dir` and waits until both listeners
    /// are up.
    pub async fn start(port: u16, data_dir: &Path) -> Sidecar {
        Self::start_with(port, data_dir, &[], None).await
    }

    /// Like [`Sidecar::start`], with more `abmesh serve` arguments (an
    /// `--admin-listen 127.0.0.1:PORT` among them picks the admin port), and
    /// its log appended to `log` when given.
    pub async fn start_with(
        port: u16,
        data_dir: &Path,
        args: &[&str],
        log: Option<&Path>,
    ) -> Sidecar {
        let mut all: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            data_dir.to_str().expect("UTF-8 data dir").into(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let log: Option<PathBuf> = log.map(Path::to_owned);
        // The start waits on the server's log lines: off the async threads.
        let server = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            match &log {
                Some(p) => Server::start_logging_to(&args, p),
                None => Server::start(&args),
            }
        })
        .await
        .expect("starting abmesh serve");
        Sidecar {
            port: server.port,
            admin_port: server.admin_port,
            server,
        }
    }

    /// A client of the data plane.
    pub fn client(&self) -> AsyncClient {
        AsyncClient::new(self.port)
    }

    /// A client of the admin listener.
    pub fn admin_client(&self) -> AsyncClient {
        AsyncClient::new(self.admin_port)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(self) {
        let server = self.server;
        let _ = tokio::task::spawn_blocking(move || server.kill()).await;
    }
}
