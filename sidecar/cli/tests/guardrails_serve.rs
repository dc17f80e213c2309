//! The real `abmesh serve --webhook URL` binary: a guardrail halt and a
//! sample-ratio alarm are posted to a webhook receiver (a small hyper
//! server here), a halt survives SIGKILL (replayed from the log, without
//! notifying again) and SIGTERM (from the final snapshot), and manual halts
//! are notified too.

use std::convert::Infallible;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abmesh_testkit::http::Client;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const CONFIG: &str = r#"{"experiments":[
  {"name":"scorer","control":"v1","variants":[{"name":"v1","weight":1},{"name":"v2","weight":1},{"name":"v3","weight":1}],
   "guardrails":{"min_responses":100,"error_rate":{"max_increase":0.01}}},
  {"name":"ranker","variants":[{"name":"a","weight":1},{"name":"b","weight":1}]}]}"#;

type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A webhook receiver on a free port: records (path, JSON body), answers
/// 200.
fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/hooks/abmesh", listener.local_addr().unwrap());
    let sink = got.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let sink = sink.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            sink.lock().unwrap().push((path, v));
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    (url, got)
}

/// Starts `abmesh serve` and waits for its "listening on" line.
fn spawn(dir: &Path, webhook: &str, log: &Path) -> (Child, abmesh_testkit::serve::Urls) {
    let args: [&std::ffi::OsStr; 4] = [
        "--webhook".as_ref(),
        webhook.as_ref(),
        "--data-dir".as_ref(),
        dir.as_os_str(),
    ];
    abmesh_testkit::serve::spawn_serve(args, log)
}

fn post(c: &mut Client, path: &str, body: &str) -> (u16, Value) {
    let r = c.post(path, "application/json", body.as_bytes()).unwrap();
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

fn health(v: usize, responses: u64, errors: u64) -> Value {
    let mut lat = vec![0u64; 25];
    lat[3] = responses;
    json!([0, v, responses, [0, responses - errors, 0, 0, errors], lat])
}

fn batch(seq: u64, config: bool, exposures: Value, health: Value) -> String {
    let config = if config {
        format!(r#""config":{CONFIG},"#)
    } else {
        String::new()
    };
    format!(
        r#"{{"instance":"envoy-1/0/1","seq":{seq},"config_id":"{}",{config}"experiments":[{{"name":"scorer","variants":["v1","v2","v3"]}},{{"name":"ranker","variants":["a","b"]}}],"exposures":{exposures},"health":{health}}}"#,
        abmesh_filter::config_id(CONFIG.as_bytes())
    )
}

/// Waits until `pred` holds for the received notices.
fn wait_for(got: &Received, what: &str, pred: impl Fn(&[(String, Value)]) -> bool) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if pred(&got.lock().unwrap()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: not received; got {:?}", got.lock().unwrap());
}

fn events(got: &Received, event: &str) -> Vec<Value> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["event"] == event)
        .map(|(_, v)| v.clone())
        .collect()
}

fn terminate(child: &mut Child) {
    // SIGTERM: a clean shutdown with a final snapshot.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn halts_reach_the_webhook_and_survive_sigkill_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("serve.log");
    let (hook, got) = receiver();
    let (mut child, urls) = spawn(&data, &hook, &log);
    let mut c = Client::new(&urls.data).unwrap();

    // scorer v3 fails 30% of requests; ranker's split is 900/100 against
    // configured 50/50.
    let rows: Vec<Value> = (0..1000)
        .map(|u| json!([1000 + u, 1, usize::from(u % 10 == 0), format!("r{u}")]))
        .collect();
    let faulty = json!([health(0, 600, 0), health(1, 600, 0), health(2, 600, 180)]);
    let (status, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(1, true, json!(rows), faulty),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["halted"],
        json!([{"experiment": "scorer", "variant": "v3"}])
    );
    assert_eq!(v["config_needed"], false);

    wait_for(&got, "halt notice", |g| {
        g.iter().any(|(_, v)| v["event"] == "halt")
    });
    wait_for(&got, "srm notice", |g| {
        g.iter().any(|(_, v)| v["event"] == "srm")
    });
    let (path, _) = got.lock().unwrap()[0].clone();
    assert_eq!(path, "/hooks/abmesh");
    let halt = &events(&got, "halt")[0];
    assert_eq!(
        (
            halt["experiment"].as_str(),
            halt["variant"].as_str(),
            halt["source"].as_str(),
            halt["rule"].as_str()
        ),
        (
            Some("scorer"),
            Some("v3"),
            Some("guardrail"),
            Some("error_rate")
        )
    );
    assert!(
        halt["message"].as_str().unwrap().contains("5xx share"),
        "{halt}"
    );
    assert!(halt["time_ms"].as_i64().unwrap() > 1_700_000_000_000);
    let srm = &events(&got, "srm")[0];
    assert_eq!(srm["experiment"], "ranker");
    assert!(srm["p_value"].as_f64().unwrap() < 0.001, "{srm}");
    assert_eq!(srm["counts"], json!([900, 100]));
    assert_eq!(srm["expected_shares"], json!([0.5, 0.5]));

    // Still mismatched: notified once, not on every batch.
    let more: Vec<Value> = (1000..1100)
        .map(|u| json!([5000 + u, 1, 0, format!("r{u}")]))
        .collect();
    let (status, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(2, false, json!(more), json!([])),
    );
    assert_eq!(
        (status, v["halted"].clone()),
        (200, json!([{"experiment": "scorer", "variant": "v3"}]))
    );
    let m = c.get("/metrics", &[]).unwrap().text();
    assert!(m.contains("abmesh_guardrail_halts_total 1"), "{m}");
    assert!(m.contains("abmesh_guardrail_lifts_total 0"), "{m}");

    // SIGKILL: no snapshot; the restart replays the log and decides the
    // same halt again, silently.
    child.kill().unwrap();
    let _ = child.wait();
    let (c2, urls) = spawn(&data, &hook, &log);
    child = c2;
    let mut c = Client::new(&urls.data).unwrap();
    let mut admin = Client::new(&urls.admin).unwrap();
    let (status, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(3, false, json!([]), json!([])),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["halted"],
        json!([{"experiment": "scorer", "variant": "v3"}])
    );
    let halts: Value =
        serde_json::from_slice(&admin.get("/admin/halts", &[]).unwrap().body).unwrap();
    assert_eq!(halts.as_array().unwrap().len(), 1, "{halts}");
    assert_eq!(halts[0]["rule"], "error_rate");
    assert_eq!(
        halts[0]["time_ms"], halt["time_ms"],
        "the replayed halt keeps its time"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(events(&got, "halt").len(), 1, "replay notified nobody");
    assert_eq!(
        events(&got, "srm").len(),
        1,
        "the alarm is still the same one"
    );

    // A manual halt is notified too.
    let (status, v) = post(
        &mut admin,
        "/admin/experiments/scorer/variants/v2/halt",
        r#"{"reason": "canary looks wrong"}"#,
    );
    assert_eq!(status, 200, "{v}");
    wait_for(&got, "manual halt notice", |g| {
        g.iter()
            .any(|(_, v)| v["event"] == "halt" && v["source"] == "manual")
    });
    let manual = events(&got, "halt")
        .into_iter()
        .find(|v| v["source"] == "manual")
        .unwrap();
    assert_eq!(
        (manual["variant"].as_str(), manual["message"].as_str()),
        (Some("v2"), Some("canary looks wrong"))
    );

    // SIGTERM and a restart from the final snapshot: both halts are there.
    terminate(&mut child);
    let (c3, urls) = spawn(&data, &hook, &log);
    child = c3;
    let mut c = Client::new(&urls.data).unwrap();
    let mut admin = Client::new(&urls.admin).unwrap();
    let (_, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(4, false, json!([]), json!([])),
    );
    assert_eq!(
        v["halted"],
        json!([{"experiment": "scorer", "variant": "v3"}, {"experiment": "scorer", "variant": "v2"}])
    );
    let r: Value =
        serde_json::from_slice(&admin.get("/admin/experiments/scorer", &[]).unwrap().body).unwrap();
    assert_eq!(r["decision"]["decision"], "stop-harm");
    assert_eq!(r["definitions"], "filter config");
    terminate(&mut child);
    assert_eq!(events(&got, "halt").len(), 2);

    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("learned from a filter's configuration"),
        "{log}"
    );
    let starts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("outcome log recovered"))
        .collect();
    assert_eq!(starts.len(), 3, "{log}");
    assert!(
        !starts[1].contains("replayed=0"),
        "after SIGKILL the log is replayed: {}",
        starts[1]
    );
    assert!(
        starts[2].contains("replayed=0") && !starts[2].contains("snapshot_lsn=0"),
        "after SIGTERM the final snapshot is read: {}",
        starts[2]
    );
}
