//! Running the real `abmesh serve` in a test: started on free loopback
//! ports (unless the arguments name them), its addresses read from the
//! "listening on" lines it prints (both listeners are bound before either
//! line), its log kept in memory or appended to a file.
//!
//! - [`spawn_serve`]: the child process and its URLs, for tests that kill
//!   and restart it themselves.
//! - [`Server`]: the same, killed on drop, with requests on the side.
//! - [`start_expecting_failure`]: a start that must fail, with its exit
//!   code and log.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http::{Client, Response};

/// The base URLs of a running `abmesh serve`.
#[derive(Debug, Clone)]
pub struct Urls {
    /// The data plane (`--listen`): KServe v2, /v1/*, /metrics.
    pub data: String,
    /// The admin listener (`--admin-listen`): /admin/*.
    pub admin: String,
}

/// The port of a `http://HOST:PORT` URL.
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url:?}"))
}

/// `--listen 127.0.0.1:0` and `--admin-listen 127.0.0.1:0`, for each the
/// arguments do not give: free ports, so tests run side by side.
fn listen_args(args: &[OsString]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for flag in ["--listen", "--admin-listen"] {
        if !args.iter().any(|a| a == flag) {
            out.extend([flag, "127.0.0.1:0"]);
        }
    }
    out
}

/// The URL at the end of a line containing `marker` (`... listening on
/// http://...`).
fn url_after(line: &str, marker: &str) -> Option<String> {
    let i = line.find(marker)?;
    Some(line[i + marker.len() - "http://".len()..].trim().to_owned())
}

/// Where the server's log goes.
enum Sink {
    /// Appended to a file.
    File(PathBuf),
    /// Kept in memory.
    Memory(Arc<Mutex<String>>),
}

/// How a start ended.
enum Started {
    Listening(Child, Urls),
    Exited(i32, String),
}

/// Starts `abmesh serve ARGS` with its stderr going to `sink` (stdout
/// dropped), and waits for both listeners, the process to exit, or
/// `timeout`. The log keeps being drained afterwards, so the server never
/// blocks on a full pipe.
fn start(
    args: &[OsString],
    env: &[(&str, &str)],
    rust_log: &str,
    sink: Sink,
    timeout: Duration,
) -> Started {
    let mut cmd = Command::new(crate::abmesh_bin());
    cmd.arg("serve")
        .args(listen_args(args))
        .args(args)
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start abmesh serve");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let (memory, file) = match &sink {
        Sink::Memory(m) => (Some(m.clone()), None),
        Sink::File(p) => (None, Some(p.clone())),
    };
    let reader = std::thread::spawn(move || {
        let mut file = match &sink {
            Sink::File(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .expect("open the serve log"),
            ),
            Sink::Memory(_) => None,
        };
        let (mut data, mut admin) = (None, None);
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            match (&mut file, &sink) {
                (Some(f), _) => {
                    let _ = writeln!(f, "{line}");
                }
                (None, Sink::Memory(m)) => {
                    let mut l = m.lock().unwrap_or_else(|p| p.into_inner());
                    l.push_str(&line);
                    l.push('\n');
                }
                (None, Sink::File(_)) => {}
            }
            if sent {
                continue;
            }
            if let Some(u) = url_after(&line, "admin listening on http://") {
                admin = Some(u);
            } else if let Some(u) = url_after(&line, "listening on http://") {
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
    let log = |reader: std::thread::JoinHandle<()>| {
        let _ = reader.join();
        match (&memory, &file) {
            (Some(m), _) => m.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            (None, Some(p)) => std::fs::read_to_string(p).unwrap_or_default(),
            (None, None) => String::new(),
        }
    };
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(urls) = rx.recv_timeout(Duration::from_millis(20)) {
            return Started::Listening(child, urls);
        }
        if let Some(status) = child.try_wait().expect("wait for abmesh serve") {
            return Started::Exited(status.code().unwrap_or(-1), log(reader));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = log(reader);
            panic!("abmesh serve neither failed nor listened within {timeout:?}:\n{log}");
        }
    }
}

fn os_args<I, S>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    args.into_iter().map(|a| a.as_ref().to_owned()).collect()
}

/// Starts `abmesh serve ARGS` (on free loopback ports unless ARGS say
/// `--listen` / `--admin-listen`), appends its stderr to `log`, and returns
/// the child and its base URLs (`http://127.0.0.1:PORT`) once both
/// listeners are up. Panics with the log if it exits or takes over 60 s.
pub fn spawn_serve<I, S>(args: I, log: &Path) -> (Child, Urls)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args = os_args(args);
    match start(
        &args,
        &[],
        "info",
        Sink::File(log.to_owned()),
        Duration::from_secs(60),
    ) {
        Started::Listening(child, urls) => (child, urls),
        Started::Exited(code, log) => {
            panic!("abmesh serve exited ({code}) before listening:\n{log}")
        }
    }
}

/// Runs `abmesh serve ARGS` expecting it to fail at startup (on free
/// loopback ports unless ARGS say otherwise); returns its exit code and
/// log, or `None` if it started listening after all (it is then stopped).
pub fn start_expecting_failure(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Option<(i32, String)> {
    let logs = Arc::new(Mutex::new(String::new()));
    match start(
        &os_args(args),
        env,
        "info,ort=warn",
        Sink::Memory(logs),
        timeout,
    ) {
        Started::Listening(mut child, _) => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
        Started::Exited(code, log) => Some((code, log)),
    }
}

/// A running `abmesh serve`, killed on drop.
pub struct Server {
    pub child: Child,
    /// The data plane (KServe v2, /v1/*, /metrics).
    pub port: u16,
    /// The admin listener (/admin/*).
    pub admin_port: u16,
    pub urls: Urls,
    logs: Logs,
}

/// Where a [`Server`]'s log is read back from.
enum Logs {
    Memory(Arc<Mutex<String>>),
    File(PathBuf),
}

impl Server {
    /// Starts `abmesh serve ARGS` (on free loopback ports unless ARGS say
    /// `--listen` / `--admin-listen`) and waits for both listeners. Panics
    /// with the server's log if it exits or takes over 60 s.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(args, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
        let logs = Arc::new(Mutex::new(String::new()));
        Server::started(args, env, Sink::Memory(logs.clone()), Logs::Memory(logs))
    }

    /// [`Server::start`] with the log appended to the file `log` (which
    /// [`Server::logs`] then reads).
    pub fn start_logging_to(args: &[&str], log: &Path) -> Server {
        Server::started(
            args,
            &[],
            Sink::File(log.to_owned()),
            Logs::File(log.to_owned()),
        )
    }

    fn started(args: &[&str], env: &[(&str, &str)], sink: Sink, logs: Logs) -> Server {
        match start(
            &os_args(args),
            env,
            "info,ort=warn",
            sink,
            Duration::from_secs(60),
        ) {
            Started::Listening(child, urls) => Server {
                child,
                port: port_of(&urls.data),
                admin_port: port_of(&urls.admin),
                urls,
                logs,
            },
            Started::Exited(code, log) => {
                panic!("abmesh serve exited ({code}) before listening:\n{log}")
            }
        }
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        match &self.logs {
            Logs::Memory(m) => m.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            Logs::File(p) => std::fs::read_to_string(p).unwrap_or_default(),
        }
    }

    /// A connection to the data plane.
    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    /// One request on a fresh connection.
    pub fn send(&self, method: &str, path: &str, body: &[u8]) -> Response {
        self.client()
            .send(method, path, &[], body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> Response {
        self.send("GET", path, b"")
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Response {
        self.send("POST", path, body.to_string().as_bytes())
    }

    /// A connection to the admin listener.
    pub fn admin_client(&self) -> Client {
        Client::connect(self.admin_port)
    }

    /// One admin request on a fresh connection.
    pub fn admin_send(&self, method: &str, path: &str, body: &[u8]) -> Response {
        self.admin_client()
            .send(method, path, &[], body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn admin_get(&self, path: &str) -> Response {
        self.admin_send("GET", path, b"")
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
