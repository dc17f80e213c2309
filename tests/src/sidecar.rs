//! Running the real `abmesh serve`.

use crate::http::Client;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// A running sidecar; killed on drop.
pub struct Sidecar {
    child: Child,
    /// The data plane (`--listen`): KServe v2, /v1/*, /metrics.
    pub port: u16,
    /// The admin listener (`--admin-listen`): /admin/*.
    pub admin_port: u16,
}

impl Sidecar {
    /// Starts `abmesh serve` on `port` (its admin listener on a free port)
    /// with its outcome log in `data_dir` and waits until it is ready.
    pub async fn start(port: u16, data_dir: &Path) -> Sidecar {
        Self::start_with(port, data_dir, &[], None).await
    }

    /// Like [`Sidecar::start`], with more `abmesh serve` arguments (an
    /// `--admin-listen 127.0.0.1:PORT` among them picks the admin port), and
    /// its log (stdout and stderr) appended to `log` when given.
    pub async fn start_with(
        port: u16,
        data_dir: &Path,
        args: &[&str],
        log: Option<&Path>,
    ) -> Sidecar {
        let (out, err) = match log {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
                (
                    Stdio::from(f.try_clone().expect("dup log file")),
                    Stdio::from(f),
                )
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let admin_port = match args.iter().position(|a| *a == "--admin-listen") {
            Some(i) => args
                .get(i + 1)
                .and_then(|a| a.rsplit(':').next()?.parse().ok())
                .expect("--admin-listen 127.0.0.1:PORT"),
            None => crate::free_port(),
        };
        let admin = format!("127.0.0.1:{admin_port}");
        let default_admin: &[&str] = if args.contains(&"--admin-listen") {
            &[]
        } else {
            &["--admin-listen", &admin]
        };
        let child = Command::new(crate::abmesh_bin())
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .args(default_admin)
            .args(args)
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn abmesh serve");
        let mut sidecar = Sidecar {
            child,
            port,
            admin_port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = sidecar.child.try_wait() {
                panic!("abmesh serve exited during start: {status}");
            }
            if Client::new(port).try_get("/v2/health/ready").await == Some(http::StatusCode::OK) {
                return sidecar;
            }
            assert!(
                Instant::now() < deadline,
                "abmesh serve not ready after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client of the data plane.
    pub fn client(&self) -> Client {
        Client::new(self.port)
    }

    /// A client of the admin listener.
    pub fn admin_client(&self) -> Client {
        Client::new(self.admin_port)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill abmesh serve");
    }
}
