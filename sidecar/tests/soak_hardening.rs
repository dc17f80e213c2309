//! The "done means" of issue 9 against the real `abmesh serve` binary: 1000
//! generated malformed requests across every endpoint (bad JSON, wrong
//! types, bad binary tensor headers, bad paths and methods, huge headers,
//! wrong Content-Length, broken chunking), while 2000 idle connections, 50
//! slowloris clients (headers trickled) and 100 slow bodies hold on. The
//! sidecar must never die, must answer each malformed request with a 4xx
//! JSON error (408, 413 where documented), must keep serving good requests
//! throughout, and must stay within 50 MB of RSS growth.
//!
//! Requests that hyper itself refuses while parsing the request head (a
//! malformed request line or header, a header section over hyper's
//! buffer, an invalid Content-Length) never reach a handler: hyper answers
//! them with a bodiless 400/414/431 and closes, and a header read timeout
//! closes the connection without an answer. Those cases accept that (and
//! only a 4xx), and are counted separately in the summary.

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

mod hardening_support;
mod model_support;
mod serve_support;

use hardening_support::{addr_of, raise_fd_limit, rss_bytes, Conn, Read1};

const MIB: u64 = 1 << 20;
const CONFIG: &str = r#"{"experiments":[{"name":"ranker","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}]}]}"#;

/// xorshift64*: the generator is seeded, so a failure names a case that
/// the next run generates again.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// What a case may get back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A 4xx with a JSON `{"error": "..."}` body.
    Json4xx,
    /// Refused by hyper before any handler: a 4xx (bodiless allowed), or
    /// the connection closed without an answer.
    Hyper,
}

struct Case {
    name: String,
    raw: Vec<u8>,
    /// Close the sending half after the request (a body shorter than its
    /// Content-Length).
    half_close: bool,
    expect: Expect,
}

fn request(method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n");
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

fn json_post(path: &str, body: &[u8]) -> Vec<u8> {
    request(
        "POST",
        path,
        &[("Content-Type", "application/json".into())],
        body,
    )
}

const EVENTS: &str = r#"[{"user":"u1","metric":"m","value":1.5,"id":"x1","experiment":"ranker"},{"user":"u2","metric":"m","covariate":2,"timestamp":"2026-05-01T12:00:00Z"}]"#;
const EVENTS_NDJSON: &str =
    "{\"user\":\"u1\",\"metric\":\"m\",\"value\":1.5}\n{\"user\":\"u2\",\"metric\":\"m\"}\n";
const EXPOSURES: &str = r#"{"instance":"soak/0/1","seq":7,"dropped":0,"experiments":[{"name":"ranker","variants":["control","treatment"]}],"exposures":[[1000000,0,0,"u1"],[1000001,0,1,"u2"]]}"#;

fn infer_body() -> String {
    let data: Vec<f32> = model_support::features(3);
    serde_json::json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": data}]})
        .to_string()
}

// A complete JSON value followed by other characters used to crash the
// re-parse that names the failing field (issue 9, item 1): the three known
// bodies are always sent.

fn trailing_garbage_cases() -> Vec<Case> {
    [
        ("/v1/events", r#"{"user":"u","metric":"m"} x"#.to_owned()),
        ("/v1/events", r#"[{"user":"u","metric":"m"}] x"#.to_owned()),
        ("/v1/exposures", format!("{EXPOSURES} x")),
    ]
    .into_iter()
    .map(|(path, body)| Case {
        name: format!("POST {path}: {body}"),
        raw: json_post(path, body.as_bytes()),
        half_close: false,
        expect: Expect::Json4xx,
    })
    .collect()
}

/// A certainly invalid variant of a valid JSON object or array body.
fn mutate(rng: &mut Rng, body: &[u8]) -> (String, Vec<u8>) {
    let mut b = body.to_vec();
    match rng.below(3) {
        0 => {
            // A strict prefix of an object or array is never complete.
            let cut = 1 + rng.below(b.len() - 1);
            b.truncate(cut);
            (format!("truncated at {cut}"), b)
        }
        1 => {
            // A byte that is never valid JSON, nor UTF-8, before the end.
            let at = rng.below(b.len() - 1);
            b.insert(at, 0xff);
            (format!("0xff at {at}"), b)
        }
        _ => {
            // A structural character replaced.
            let idx: Vec<usize> = b
                .iter()
                .enumerate()
                .filter(|(_, c)| matches!(c, b'{' | b'}' | b'[' | b']' | b':' | b'"'))
                .map(|(i, _)| i)
                .collect();
            let at = *rng.pick(&idx);
            let old = b[at];
            b[at] = *rng.pick(b"#\\\x00@");
            (format!("{:?} at {at} replaced", old as char), b)
        }
    }
}

fn generate(n: usize, models: bool) -> Vec<Case> {
    let mut rng = Rng(0x5eed_abe5_0000_0009);
    let infer = infer_body();
    let infer_paths: &[&str] = if models {
        &[
            "/v2/models/scorer/infer",
            "/v2/models/scorer/versions/2/infer",
            "/v2/models/dtypes/infer",
        ]
    } else {
        &["/v2/models/scorer/infer"]
    };
    let wrong_events: &[&str] = &[
        r#"[{"user":"u","metric":"m","value":"x"}]"#,
        r#"[{"user":5,"metric":"m"}]"#,
        r#"[{"user":"u","metric":"bad name!"}]"#,
        r#"[{"user":"","metric":"m"}]"#,
        r#"[{"user":"u","metric":"m","vaule":1}]"#,
        r#"[{"user":"u","metric":"m","value":1e999}]"#,
        r#"[{"user":"u","metric":"m","timestamp":"yesterday"}]"#,
        r#"[{"user":"u","metric":"m","timestamp":-1e30}]"#,
        r#"[{"user":"u"}]"#,
        r#"{"user":"u","metric":"m","value":NaN}"#,
        r#"[1,2,3]"#,
        r#""just a string""#,
        r#"[{"user":"u","metric":"m","id":""}]"#,
    ];
    let wrong_exposures: &[&str] = &[
        r#"{"instance":"i","seq":"one","experiments":[],"exposures":[]}"#,
        r#"{"instance":"i","seq":1,"experiments":[{"name":"ranker","variants":["a"]}],"exposures":[[1,0,5,"u"]]}"#,
        r#"{"instance":"i","seq":1,"experiments":[{"name":"ranker","variants":["a","b"]}],"exposures":[[1,3,0,"u"]]}"#,
        r#"{"instance":"i","seq":1,"experiments":[],"exposures":[[1,0,0]]}"#,
        r#"{"instance":"i","seq":1,"experiments":[],"exposures":[],"config":{"experiments":"no"}}"#,
        r#"{"seq":1}"#,
        r#"[]"#,
        r#"{"instance":"i","seq":1,"experiments":[],"exposures":[],"health":[[9,9,1,[0,0,0,0,0],[]]]}"#,
    ];
    let wrong_infer: &[&str] = &[
        r#"{"inputs":[{"name":"features","shape":[1,15],"datatype":"FP32","data":[1,2]}]}"#,
        r#"{"inputs":[{"name":"features","shape":[1,16],"datatype":"INT8","data":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}]}"#,
        r#"{"inputs":[{"name":"nope","shape":[1,16],"datatype":"FP32","data":[]}]}"#,
        r#"{"inputs":[]}"#,
        r#"{"inputs":[{"name":"features","shape":[-1,16],"datatype":"FP32","data":[]}]}"#,
        r#"{"inputs":[{"name":"features","shape":[99999999999,16],"datatype":"FP32","data":[]}]}"#,
        r#"{"inputs":[{"name":"features","shape":[1,16],"datatype":"FP32","data":"abc"}]}"#,
        r#"{"inputs":[{"name":"features","shape":[1,16],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}],"outputs":[{"name":"nope"}]}"#,
        r#"{"inputs":[{"name":"features","shape":[1,16],"datatype":"FP32","parameters":{"binary_data_size":64}}]}"#,
        r#"{"inputs":{"name":"features"}}"#,
        r#"[]"#,
    ];
    let get_paths = [
        "/v2/models/nope",
        "/v2/models/%zz",
        "/v2/models/scorer/versions/x",
        "/v2/models/scorer/versions/99/ready",
        "/v1/events/extra",
        "/nope",
        "/admin/experiments/nope",
        "/admin/experiments/%FF%FE",
        "/admin/models/nope/versions/1",
    ];
    let mut cases = Vec::with_capacity(n);
    cases.extend(trailing_garbage_cases());
    while cases.len() < n {
        let kind = rng.below(12);
        let case = match kind {
            0 | 1 => {
                let (body, path) = match rng.below(3) {
                    0 => (EVENTS.as_bytes(), "/v1/events"),
                    1 => (EXPOSURES.as_bytes(), "/v1/exposures"),
                    _ => (infer.as_bytes(), *rng.pick(infer_paths)),
                };
                let (what, b) = mutate(&mut rng, body);
                Case {
                    name: format!("POST {path}: {what}"),
                    raw: json_post(path, &b),
                    half_close: false,
                    expect: Expect::Json4xx,
                }
            }
            2 => {
                // NDJSON: a line mutated.
                let (what, mut b) = mutate(
                    &mut rng,
                    EVENTS_NDJSON.split('\n').next().unwrap().as_bytes(),
                );
                b.extend_from_slice(b"\n{\"user\":\"u3\",\"metric\":\"m\"}\n");
                Case {
                    name: format!("POST /v1/events NDJSON: {what}"),
                    raw: json_post("/v1/events", &b),
                    half_close: false,
                    expect: Expect::Json4xx,
                }
            }
            3 => {
                let (path, body) = match rng.below(3) {
                    0 => ("/v1/events", *rng.pick(wrong_events)),
                    1 => ("/v1/exposures", *rng.pick(wrong_exposures)),
                    _ => (*rng.pick(infer_paths), *rng.pick(wrong_infer)),
                };
                Case {
                    name: format!("POST {path}: {body}"),
                    raw: json_post(path, body.as_bytes()),
                    half_close: false,
                    expect: Expect::Json4xx,
                }
            }
            4 => {
                // Binary tensor extension with bad header lengths.
                let head = r#"{"inputs":[{"name":"features","shape":[1,16],"datatype":"FP32","parameters":{"binary_data_size":64}}]}"#;
                let mut body = head.as_bytes().to_vec();
                let extra = rng.below(3);
                body.extend(std::iter::repeat_n(0u8, [0, 10, 64][extra]));
                let hl = rng
                    .pick(&[
                        "abc".to_owned(),
                        "-1".to_owned(),
                        "18446744073709551616".to_owned(),
                        "99999999".to_owned(),
                        "0".to_owned(),
                        (head.len() / 2).to_string(),
                        (head.len() + 1).to_string(),
                    ])
                    .clone();
                let path = *rng.pick(infer_paths);
                // Header length that is exactly right with 64 bytes of data
                // is a valid request: skip that one combination.
                if hl == head.len().to_string() && extra == 2 {
                    continue;
                }
                Case {
                    name: format!(
                        "binary {path}: header length {hl}, {} bytes of data",
                        [0, 10, 64][extra]
                    ),
                    raw: request(
                        "POST",
                        path,
                        &[
                            ("Content-Type", "application/octet-stream".into()),
                            ("Inference-Header-Content-Length", hl),
                        ],
                        &body,
                    ),
                    half_close: false,
                    expect: Expect::Json4xx,
                }
            }
            5 => {
                // Wrong methods on every kind of endpoint.
                let method = *rng.pick(&["DELETE", "PUT", "PATCH", "OPTIONS", "TRACE", "FOO"]);
                let path = *rng.pick(&[
                    "/v1/events",
                    "/v1/exposures",
                    "/v2/health/live",
                    "/v2/health/ready",
                    "/v2",
                    "/metrics",
                    "/v2/models/scorer/infer",
                    "/admin/state",
                    "/admin/state/merge",
                    "/admin/halts",
                    "/admin/models",
                    "/admin/models/scorer/versions/1/unload",
                    "/admin/experiments/ranker/variants/treatment/halt",
                ]);
                Case {
                    name: format!("{method} {path}"),
                    raw: request(method, path, &[], b""),
                    half_close: false,
                    expect: Expect::Json4xx,
                }
            }
            6 => {
                let path = if rng.below(4) == 0 {
                    format!("/v2/models/{}", "a".repeat(8000 + rng.below(4000)))
                } else {
                    (*rng.pick(&get_paths)).to_owned()
                };
                Case {
                    name: format!("GET {}", &path[..path.len().min(60)]),
                    raw: request("GET", &path, &[], b""),
                    half_close: false,
                    expect: Expect::Json4xx,
                }
            }
            7 => {
                // Admin bodies that are not what they should be.
                let (path, body): (&str, Vec<u8>) = match rng.below(4) {
                    0 => {
                        let mut b = b"ABMSTATE".to_vec();
                        b.extend((0..rng.below(200)).map(|_| rng.next() as u8));
                        ("/admin/state/merge", b)
                    }
                    1 => (
                        "/admin/state/merge",
                        (0..1 + rng.below(300))
                            .map(|_| rng.next() as u8 | 0x80)
                            .collect(),
                    ),
                    2 => (
                        "/admin/experiments/ranker/variants/treatment/halt",
                        rng.pick::<&[u8]>(&[
                            br#"{"reason": 5}"#,
                            br#"{"why":"x"}"#,
                            b"[1]",
                            b"\xff",
                        ])
                        .to_vec(),
                    ),
                    _ => (
                        "/admin/experiments/nope/variants/treatment/lift",
                        br#"{"reason":"x"}"#.to_vec(),
                    ),
                };
                Case {
                    name: format!("POST {path}: {} bytes", body.len()),
                    raw: request("POST", path, &[], &body),
                    half_close: false,
                    expect: Expect::Json4xx,
                }
            }
            8 => {
                // Bodies past the limits (413), declared or sent.
                let path = *rng.pick(&["/v1/events", "/v1/exposures", "/admin/state/merge"]);
                if rng.below(2) == 0 {
                    Case {
                        name: format!("POST {path}: declares 5 GiB"),
                        raw: format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 5368709120\r\n\r\n[").into_bytes(),
                        half_close: false,
                        expect: Expect::Json4xx,
                    }
                } else {
                    let mut b = vec![b'['; 1];
                    b.resize((1 << 20) + 100, b' ');
                    Case {
                        name: format!("POST {path}: 1 MiB + 100 bytes"),
                        raw: json_post(path, &b),
                        half_close: false,
                        expect: Expect::Json4xx,
                    }
                }
            }
            9 => {
                // Huge or malformed headers: hyper's.
                let (what, raw) = match rng.below(5) {
                    0 => (
                        "a 600 KB header",
                        request(
                            "GET",
                            "/v2/health/live",
                            &[("X-Big", "b".repeat(600 << 10))],
                            b"",
                        ),
                    ),
                    1 => {
                        let hs: Vec<(&str, String)> =
                            (0..150).map(|_| ("X-Many", "1".to_owned())).collect();
                        ("150 headers", request("GET", "/v2/health/live", &hs, b""))
                    }
                    2 => (
                        "a header name with a space",
                        b"GET /v2 HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n".to_vec(),
                    ),
                    3 => ("a bad request line", b"GET/v2 HTTP/1.1\r\n\r\n".to_vec()),
                    _ => (
                        "a control byte in a header value",
                        b"GET /v2 HTTP/1.1\r\nHost: t\r\nX: a\x01b\r\n\r\n".to_vec(),
                    ),
                };
                Case {
                    name: what.to_owned(),
                    raw,
                    half_close: false,
                    expect: Expect::Hyper,
                }
            }
            10 => {
                // Content-Length that does not fit the body.
                let path = *rng.pick(&[
                    "/v1/events",
                    "/v1/exposures",
                    "/admin/state/merge",
                    "/v2/models/scorer/infer",
                ]);
                match rng.below(4) {
                    0 => Case {
                        name: format!("POST {path}: Content-Length abc"),
                        raw: format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n[]").into_bytes(),
                        half_close: false,
                        expect: Expect::Hyper,
                    },
                    1 => Case {
                        name: format!("POST {path}: two Content-Lengths"),
                        raw: format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n[]").into_bytes(),
                        half_close: false,
                        expect: Expect::Hyper,
                    },
                    2 => Case {
                        // The body ends (the client half-closes) before its
                        // declared length: the handler sees a broken body.
                        name: format!("POST {path}: 10 of 100 declared bytes"),
                        raw: format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n[{{\"user\":").into_bytes(),
                        half_close: true,
                        expect: Expect::Json4xx,
                    },
                    _ => Case {
                        // Shorter than the body: the declared part is a
                        // truncated body; the rest is garbage for hyper.
                        name: format!("POST {path}: declares 5 of {} bytes", EXPOSURES.len()),
                        raw: format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n{EXPOSURES}").into_bytes(),
                        half_close: false,
                        expect: Expect::Json4xx,
                    },
                }
            }
            _ => {
                // Broken chunked encoding.
                let path = *rng.pick(&[
                    "/v1/events",
                    "/v2/models/scorer/infer",
                    "/admin/state/merge",
                ]);
                let chunks = *rng.pick(&[
                    "zz\r\nab\r\n0\r\n\r\n",
                    "5\r\nab\r\n0\r\n\r\n",
                    "ffffffffffffffffff\r\n",
                ]);
                Case {
                    name: format!("POST {path}: chunks {chunks:?}"),
                    raw: format!("POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}").into_bytes(),
                    half_close: true,
                    expect: Expect::Hyper,
                }
            }
        };
        cases.push(case);
    }
    cases
}

#[derive(Default, Debug)]
struct Tally {
    json_4xx: u64,
    hyper_4xx: u64,
    hyper_closed: u64,
    by_status: std::collections::BTreeMap<u16, u64>,
}

/// Sends one case and checks what came back; the failure message, if any.
fn run_case(addr: SocketAddr, case: &Case, tally: &Mutex<Tally>) -> Option<String> {
    let mut c = match Conn::open(addr) {
        Ok(c) => c,
        Err(e) => return Some(format!("{}: connect: {e}", case.name)),
    };
    // The server may answer and close before all of it is written.
    let _ = c.stream.write_all(&case.raw);
    if case.half_close {
        let _ = c.stream.shutdown(Shutdown::Write);
    }
    let got = c.read_response(Duration::from_secs(15));
    let mut t = tally.lock().unwrap();
    match (&got, case.expect) {
        (Read1::Response(r), _) if (400..500).contains(&r.status) => {
            *t.by_status.entry(r.status).or_default() += 1;
            match r.error() {
                Some(msg) if !msg.is_empty() => {
                    t.json_4xx += 1;
                    let ct = r.header("content-type").unwrap_or_default();
                    (ct != "application/json")
                        .then(|| format!("{}: content-type {ct:?}", case.name))
                }
                _ if case.expect == Expect::Hyper && r.body.is_empty() => {
                    t.hyper_4xx += 1;
                    None
                }
                _ => Some(format!(
                    "{}: {} without a JSON error: {:?}",
                    case.name,
                    r.status,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
                )),
            }
        }
        (Read1::Closed(b), Expect::Hyper) if b.is_empty() => {
            t.hyper_closed += 1;
            None
        }
        (other, _) => Some(
            format!("{}: {other:?}", case.name)
                .chars()
                .take(400)
                .collect(),
        ),
    }
}

struct Server {
    child: Child,
    url: String,
    admin: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Good requests, each on a fresh connection: they must all succeed.
fn good_round(addr: SocketAddr, n: u64, models: bool) -> Result<(), String> {
    let mut reqs = vec![
        ("live", hardening_support::get("/v2/health/live")),
        (
            "events",
            json_post(
                "/v1/events",
                format!(r#"[{{"user":"g{n}","metric":"m","value":1,"id":"good-{n}"}}]"#).as_bytes(),
            ),
        ),
        ("metrics", hardening_support::get("/metrics")),
    ];
    if models {
        reqs.push((
            "infer",
            json_post("/v2/models/scorer/infer", infer_body().as_bytes()),
        ));
    }
    for (what, raw) in reqs {
        match hardening_support::request(addr, &raw, Duration::from_secs(10)) {
            Read1::Response(r) if r.status == 200 => {}
            other => return Err(format!("good request {what} #{n}: {other:?}")),
        }
    }
    Ok(())
}

fn start(dir: &Path, models: bool) -> Server {
    let data = dir.join("data");
    let cfg = dir.join("experiments.json");
    std::fs::write(&cfg, CONFIG).unwrap();
    let mut args: Vec<std::ffi::OsString> = [
        "--data-dir",
        data.to_str().unwrap(),
        "--experiments",
        cfg.to_str().unwrap(),
        "--body-limit",
        "1MiB",
        "--ingest-body-limit",
        "1MiB",
        "--body-read-timeout",
        "6",
        "--header-read-timeout",
        "10",
    ]
    .iter()
    .map(Into::into)
    .collect();
    if models {
        args.extend([
            "--models".into(),
            model_support::example_repo().into_os_string(),
        ]);
        args.extend([
            "--device".into(),
            "cpu".into(),
            "--instances".into(),
            "1".into(),
        ]);
    }
    let (child, urls) = serve_support::spawn_serve(args, &dir.join("serve.log"));
    Server {
        child,
        url: urls.data,
        admin: urls.admin,
    }
}

#[test]
fn malformed_slow_and_idle_clients_do_not_hurt_the_sidecar() {
    let fds = raise_fd_limit();
    assert!(
        fds > 5000,
        "the test needs 5000 open files, the limit is {fds}"
    );
    let models = model_support::onnxruntime_available();
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), models);
    let addr = addr_of(&srv.url);
    let admin = addr_of(&srv.admin);
    let pid = srv.child.id();
    let started = Instant::now();
    // Warm up (models loaded, first requests served), then the baseline.
    for n in 0..5 {
        good_round(addr, n, models).unwrap();
    }
    sleep(Duration::from_millis(300));
    let baseline = rss_bytes(pid);
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if s.contains("VmRSS") {
                        peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                    }
                }
                sleep(Duration::from_millis(100));
            }
        })
    };

    // 2000 idle connections, 100 slow bodies (2 bytes of a declared
    // 512 KiB), 50 slowloris clients trickling their headers.
    let mut idle = hardening_support::open_idle(addr, pid, 2000);
    sleep(Duration::from_millis(300));
    let with_idle = rss_bytes(pid);
    let mut slow: Vec<Conn> = (0..100)
        .map(|_| {
            let mut c = Conn::open(addr).unwrap();
            assert!(
                c.send(b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Length: 524288\r\n\r\n[")
            );
            c
        })
        .collect();
    sleep(Duration::from_millis(100));
    for c in &mut slow {
        assert!(c.send(b" "));
    }
    let slow_started = Instant::now();
    sleep(Duration::from_millis(300));
    let with_slow = rss_bytes(pid);
    let loris_done = Arc::new(AtomicU64::new(0));
    let loris = {
        let loris_done = loris_done.clone();
        std::thread::spawn(move || {
            let head = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
            let mut conns: Vec<(Conn, usize, Option<Duration>)> = (0..50)
                .map(|_| (Conn::open(addr).unwrap(), 0, None))
                .collect();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(25) && conns.iter().any(|c| c.2.is_none()) {
                for (c, sent, closed) in conns.iter_mut().filter(|c| c.2.is_none()) {
                    // One byte every 300 ms: the head would take 40 s.
                    if *sent < head.len() && !c.send(&head[*sent..*sent + 1]) {
                        *closed = Some(t.elapsed());
                    } else {
                        *sent += 1;
                        let _ = c.stream.set_nonblocking(true);
                        let mut b = [0u8; 64];
                        if let Ok(0) = std::io::Read::read(&mut c.stream, &mut b) {
                            *closed = Some(t.elapsed());
                        }
                        let _ = c.stream.set_nonblocking(false);
                    }
                }
                sleep(Duration::from_millis(300));
            }
            let closed: Vec<Duration> = conns.iter().filter_map(|c| c.2).collect();
            loris_done.store(closed.len() as u64, Ordering::Relaxed);
            closed.into_iter().max()
        })
    };

    // The malformed requests, 4 clients at a time, with good requests in
    // between.
    let cases = generate(1000, models);
    let cases = Arc::new(cases);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (cases, tally, failures, next) =
                (cases.clone(), tally.clone(), failures.clone(), next.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= cases.len() {
                    return;
                }
                // Requests for /admin/* go to the admin listener, and every
                // other one of them to the data plane too (which must
                // answer them with a JSON 404).
                let is_admin = cases[i].name.contains(" /admin");
                let target = if is_admin { admin } else { addr };
                if let Some(f) = run_case(target, &cases[i], &tally) {
                    failures.lock().unwrap().push(format!("case {i}: {f}"));
                }
                if is_admin && i.is_multiple_of(2) {
                    if let Some(f) = run_case(addr, &cases[i], &tally) {
                        failures.lock().unwrap().push(format!("case {i} (data plane): {f}"));
                    }
                }
                if i.is_multiple_of(50) {
                    if let Err(e) = good_round(addr, 100 + i as u64, models) {
                        failures.lock().unwrap().push(e);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let malformed_done = started.elapsed();
    assert!(
        srv.child.id() == pid && std::fs::metadata(format!("/proc/{pid}")).is_ok(),
        "the sidecar died"
    );

    // Slow bodies: a 408 JSON each, at the body deadline.
    for (i, c) in slow.iter_mut().enumerate() {
        let left = Duration::from_secs(20).saturating_sub(slow_started.elapsed());
        match c.read_response(left) {
            Read1::Response(r) if r.status == 408 && r.error().is_some() => {}
            other => failures
                .lock()
                .unwrap()
                .push(format!("slow body {i}: {other:?}")),
        }
    }
    let slow_took = slow_started.elapsed();
    // Slowloris: closed at the header read timeout.
    let loris_last = loris.join().unwrap();
    let loris_closed = loris_done.load(Ordering::Relaxed);
    // Idle connections: closed at the header read timeout too; new
    // requests are served meanwhile.
    good_round(addr, 10_000, models).unwrap();
    let mut idle_closed = 0;
    for c in idle.iter_mut() {
        let left = Duration::from_secs(30).saturating_sub(slow_started.elapsed());
        if c.closed_within(left.max(Duration::from_millis(10))) {
            idle_closed += 1;
        }
    }
    drop(idle);
    drop(slow);
    good_round(addr, 20_000, models).unwrap();
    sleep(Duration::from_millis(300));
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let after = rss_bytes(pid);
    let peak = peak.load(Ordering::Relaxed).max(after);
    let t = tally.lock().unwrap();
    eprintln!(
        "soak: {} malformed requests in {malformed_done:?}: {} JSON 4xx, {} bodiless 4xx and {} closes from hyper; statuses {:?}",
        cases.len(),
        t.json_4xx,
        t.hyper_4xx,
        t.hyper_closed,
        t.by_status
    );
    eprintln!(
        "soak: 100 slow bodies answered 408 by {slow_took:?}; {loris_closed}/50 slowloris closed (last at {loris_last:?}); {idle_closed}/2000 idle connections closed; models: {models}"
    );
    eprintln!(
        "soak: RSS baseline {} MB, with 2000 idle connections {} MB, and 100 slow bodies {} MB, peak {} MB, after {} MB; total {:?}",
        baseline / MIB,
        with_idle / MIB,
        with_slow / MIB,
        peak / MIB,
        after / MIB,
        started.elapsed()
    );
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures, first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(loris_closed, 50, "slowloris clients still connected");
    assert_eq!(idle_closed, 2000, "idle connections still open");
    assert!(
        peak < baseline + 50 * MIB,
        "RSS grew from {} MB to a peak of {} MB",
        baseline / MIB,
        peak / MIB
    );
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}
