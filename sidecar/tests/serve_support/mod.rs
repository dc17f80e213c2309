//! Running the real `abmesh serve` binary in a test: started on free
//! ports, its log appended to a file, and its addresses read from the
//! "listening on" lines it prints.

#![allow(dead_code)] // each test binary uses part of it

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The base URLs of a running `abmesh serve`.
#[derive(Debug, Clone)]
pub struct Urls {
    /// The data plane (`--listen`): KServe v2, /v1/*, /metrics.
    pub data: String,
    /// The admin listener (`--admin-listen`): /admin/*.
    pub admin: String,
}

/// Starts `abmesh serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
/// ARGS…`, copies its stderr to `log`, and returns the child and its base
/// URLs (`http://127.0.0.1:PORT`) once both listeners are up.
pub fn spawn_serve<I, S>(args: I, log: &Path) -> (Child, Urls)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(env!("CARGO_BIN_EXE_abmesh"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start abmesh serve");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let log = log.to_owned();
    std::thread::spawn(move || {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the serve log");
        let (mut data, mut admin) = (None, None);
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(out, "{line}");
            if sent {
                continue;
            }
            let url = |marker: &str| {
                line.find(marker)
                    .map(|i| line[i + marker.len() - "http://".len()..].trim().to_owned())
            };
            if let Some(u) = url("admin listening on http://") {
                admin = Some(u);
            } else if let Some(u) = url("listening on http://") {
                data = Some(u);
            }
            if let (Some(d), Some(a)) = (&data, &admin) {
                let _ = tx.send(Urls {
                    data: d.clone(),
                    admin: a.clone(),
                });
                sent = true;
            }
        }
    });
    let urls = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("abmesh serve did not start listening");
    (child, urls)
}
