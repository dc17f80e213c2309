//! Running the real `abmesh serve`.

use crate::http::Client;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// A running sidecar; killed on drop.
pub struct Sidecar {
    child: Child,
    pub port: u16,
}

impl Sidecar {
    /// Starts `abmesh serve` on `port` with its outcome log in `data_dir`
    /// and waits until it is ready.
    pub async fn start(port: u16, data_dir: &Path) -> Sidecar {
        Self::start_with(port, data_dir, &[], None).await
    }

    /// Like [`Sidecar::start`], with more `abmesh serve` arguments, and its
    /// log (stdout and stderr) appended to `log` when given.
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
        let child = Command::new(crate::abmesh_bin())
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .args(args)
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn abmesh serve");
        let mut sidecar = Sidecar { child, port };
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

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill abmesh serve");
    }
}
