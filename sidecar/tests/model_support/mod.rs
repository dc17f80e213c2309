//! Helpers for the model host tests: the real `abmesh serve` binary on a
//! free port, a small blocking HTTP/1.1 client, scratch model repositories,
//! and the gate that decides whether ONNX Runtime is there at all.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Returns from the test (after a loud message) when ONNX Runtime cannot be
/// found; fails instead when `CI` is set, where it must be installed.
#[macro_export]
macro_rules! require_onnxruntime {
    () => {
        if !$crate::model_support::onnxruntime_available() {
            return;
        }
    };
}

pub fn onnxruntime_available() -> bool {
    let explicit = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    match abmesh_sidecar::model::dylib::locate(explicit.as_deref()) {
        Ok(_) => true,
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("ONNX Runtime is required when CI is set: {e}");
            }
            eprintln!(
                "\n==================== SKIPPED: ONNX Runtime not found ====================\n\
                 {e}\n\
                 =========================================================================\n"
            );
            false
        }
    }
}

/// The example repository committed under `examples/models/repo`.
pub fn example_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/repo")
}

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "abmesh-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A scratch copy of the example repository (tests that change it).
pub fn scratch_repo() -> TempDir {
    let t = TempDir::new("repo");
    copy_dir(&example_repo(), t.path());
    t
}

/// A running `abmesh serve`, killed on drop.
pub struct Server {
    child: Child,
    /// The data plane (KServe v2, /v1/*, /metrics).
    pub port: u16,
    /// The admin listener (/admin/*).
    pub admin_port: u16,
    logs: Arc<Mutex<String>>,
}

/// `--listen 127.0.0.1:0` and `--admin-listen 127.0.0.1:0`, for each the
/// caller does not give: free ports, so tests run side by side.
fn listen_args(args: &[&str]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for flag in ["--listen", "--admin-listen"] {
        if !args.contains(&flag) {
            out.extend([flag, "127.0.0.1:0"]);
        }
    }
    out
}

/// The port at the end of a "listening on http://HOST:PORT" line.
fn port_of(line: &str, marker: &str) -> Option<u16> {
    let i = line.find(marker)?;
    line[i + marker.len()..]
        .trim()
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

impl Server {
    /// Starts `abmesh serve <args>` (on free loopback ports unless `args`
    /// say `--listen` / `--admin-listen`) and waits for both listeners.
    /// Panics with the server's log if it exits or takes too long.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_abmesh"))
            .arg("serve")
            .args(listen_args(args))
            .args(args)
            .env("RUST_LOG", "info,ort=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning abmesh");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            // Keeps draining after startup so the server never blocks on a
            // full pipe.
            let (mut data, mut admin) = (None, None);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(p) = port_of(&line, "admin listening on http://") {
                    admin = Some(p);
                } else if let Some(p) = port_of(&line, "listening on http://") {
                    data = Some(p);
                }
                if let (Some(d), Some(a)) = (data, admin) {
                    let _ = tx.send((d, a));
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((port, admin_port)) = rx.recv_timeout(Duration::from_millis(50)) {
                return Server {
                    child,
                    port,
                    admin_port,
                    logs,
                };
            }
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "abmesh serve exited ({status}) before listening:\n{}",
                    logs.lock().unwrap()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "abmesh serve did not listen within 60 s:\n{}",
                    logs.lock().unwrap()
                );
            }
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    /// One request on a fresh connection.
    pub fn send(&self, method: &str, path: &str, body: &[u8]) -> Resp {
        self.client().send(method, path, &[], body).unwrap()
    }

    pub fn get(&self, path: &str) -> Resp {
        self.send("GET", path, b"")
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Resp {
        self.send("POST", path, body.to_string().as_bytes())
    }

    /// A connection to the admin listener.
    pub fn admin_client(&self) -> Client {
        Client::connect(self.admin_port)
    }

    /// One admin request on a fresh connection.
    pub fn admin_send(&self, method: &str, path: &str, body: &[u8]) -> Resp {
        self.admin_client().send(method, path, &[], body).unwrap()
    }

    pub fn admin_get(&self, path: &str) -> Resp {
        self.admin_send("GET", path, b"")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `abmesh serve` expecting it to fail at startup (on free loopback
/// ports unless `args` say otherwise); returns its exit code and log, or
/// `None` if it started listening after all.
pub fn start_expecting_failure(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Option<(i32, String)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_abmesh"));
    cmd.arg("serve")
        .args(listen_args(args))
        .args(args)
        .env("RUST_LOG", "info,ort=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("listening on http://") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + timeout;
    loop {
        if rx.try_recv().is_ok() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let log = reader.join().unwrap();
            return Some((status.code().unwrap_or(-1), log));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("abmesh serve neither failed nor listened within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` message of a JSON error response.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {}", self.text()))
            .to_owned()
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to abmesh");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.writer.write_all(&req)?;

        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').expect("header line");
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .expect("responses carry Content-Length");
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    pub fn post(&mut self, path: &str, body: &[u8]) -> std::io::Result<Resp> {
        self.send("POST", path, &[], body)
    }
}

/// Builds a binary-extension request body: JSON header then raw tensors.
/// Returns the body and the header length for `Inference-Header-Content-Length`.
pub fn binary_request(json: &serde_json::Value, tensors: &[&[u8]]) -> (Vec<u8>, String) {
    let mut body = json.to_string().into_bytes();
    let n = body.len();
    for t in tensors {
        body.extend_from_slice(t);
    }
    (body, n.to_string())
}

/// Splits a binary-extension response into its JSON header and the binary
/// data of each output that has some.
pub fn split_binary_response(r: &Resp) -> (serde_json::Value, Vec<(String, Vec<u8>)>) {
    let n: usize = r
        .header("inference-header-content-length")
        .expect("binary response")
        .parse()
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&r.body[..n]).unwrap();
    let mut at = n;
    let mut out = Vec::new();
    for o in header["outputs"].as_array().unwrap() {
        if let Some(size) = o["parameters"]["binary_data_size"].as_u64() {
            let size = size as usize;
            out.push((
                o["name"].as_str().unwrap().to_owned(),
                r.body[at..at + size].to_vec(),
            ));
            at += size;
        }
    }
    assert_eq!(at, r.body.len(), "binary data adds up to the body");
    (header, out)
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The example scorer's weights, regenerated exactly as
/// `examples/models/make_models.py` makes them, and its forward pass in
/// f64: an expectation that does not come from ONNX Runtime.
pub struct Scorer {
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: f32,
}

pub const FEATURES: usize = 16;
const HIDDEN: usize = 32;

fn lcg_weights(seed: u64, n: usize, scale: f64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            ((u * 2.0 - 1.0) * scale) as f32
        })
        .collect()
}

impl Scorer {
    pub fn version(v: u64) -> Scorer {
        let seed = 1000 * v;
        Scorer {
            w1: lcg_weights(seed + 1, FEATURES * HIDDEN, 0.5),
            b1: lcg_weights(seed + 2, HIDDEN, 0.1),
            w2: lcg_weights(seed + 3, HIDDEN, 0.5),
            b2: lcg_weights(seed + 4, 1, 0.1)[0],
        }
    }

    pub fn score(&self, x: &[f32]) -> f64 {
        assert_eq!(x.len(), FEATURES);
        let mut logit = self.b2 as f64;
        for j in 0..HIDDEN {
            let mut h = self.b1[j] as f64;
            for (i, xi) in x.iter().enumerate() {
                h += *xi as f64 * self.w1[i * HIDDEN + j] as f64;
            }
            logit += h.max(0.0) * self.w2[j] as f64;
        }
        1.0 / (1.0 + (-logit).exp())
    }
}

/// A deterministic feature row.
pub fn features(seed: u64) -> Vec<f32> {
    (0..FEATURES)
        .map(|i| (((seed * 31 + i as u64 * 7) % 23) as f32 - 11.0) / 7.0)
        .collect()
}

/// A KServe JSON infer request for the scorer, one row per seed.
pub fn scorer_request(seeds: &[u64]) -> serde_json::Value {
    let data: Vec<f32> = seeds.iter().flat_map(|&s| features(s)).collect();
    serde_json::json!({
        "inputs": [{"name": "features", "shape": [seeds.len(), FEATURES], "datatype": "FP32", "data": data}]
    })
}

/// The `score` output of a JSON response.
pub fn scores(resp: &serde_json::Value) -> Vec<f64> {
    let out = resp["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "score")
        .unwrap_or_else(|| panic!("no score output in {resp}"));
    out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// The folder of the installed `onnx` Python package (which ships the
/// `light` test models), if python3 can find it.
pub fn onnx_package_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u, os; s = u.find_spec('onnx'); print(os.path.dirname(s.origin) if s else '')",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// Reads the `dims` and `raw_data` of a serialized ONNX `TensorProto` (the
/// reference outputs of the `light` models): just enough protobuf.
pub fn read_tensor_proto(bytes: &[u8]) -> (Vec<i64>, Vec<u8>) {
    fn varint(b: &[u8], at: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = b[*at];
            *at += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }
    let (mut dims, mut raw) = (Vec::new(), Vec::new());
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at);
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = varint(bytes, &mut at);
                if field == 1 {
                    dims.push(v as i64);
                }
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = varint(bytes, &mut at) as usize;
                let payload = &bytes[at..at + len];
                at += len;
                match field {
                    1 => {
                        let mut p = 0;
                        while p < payload.len() {
                            dims.push(varint(payload, &mut p) as i64);
                        }
                    }
                    9 => raw = payload.to_vec(),
                    _ => {}
                }
            }
            w => panic!("unexpected protobuf wire type {w}"),
        }
    }
    (dims, raw)
}
