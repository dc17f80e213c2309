//! Load generator of the ingestion benchmark (benches/ingest/README.md):
//! durable ingestion over HTTP with N clients posting batches of outcome
//! events, then the report latency at that volume.
//!
//! ```text
//! cargo run --release -p abmesh --example ingest_load -- \
//!     --url http://127.0.0.1:8091 --clients 16 --batch 1000 --events 10000000 --users 1000000
//! ```
//!
//! Every event has a unique id (so de-duplication does real work), a user
//! drawn from `--users` exposed users, one of three metrics, a value and a
//! timestamp. Bodies are generated on the fly (each id is new); a batch
//! counts only when the sidecar answered 200 with all its events accepted,
//! i.e. after they were fsynced and applied. Prints one JSON object.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abmesh_testkit::http::Client;

struct Args {
    /// The data plane: /v1/exposures, /v1/events.
    url: String,
    /// The admin listener: the reports.
    admin_url: String,
    clients: usize,
    batch: usize,
    events: u64,
    users: u64,
    experiment: String,
    report_samples: usize,
    skip_exposures: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        url: "http://127.0.0.1:8091".into(),
        admin_url: "http://127.0.0.1:8092".into(),
        clients: 16,
        batch: 1000,
        events: 10_000_000,
        users: 1_000_000,
        experiment: "ranker".into(),
        report_samples: 50,
        skip_exposures: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = val(),
            "--admin-url" => a.admin_url = val(),
            "--clients" => a.clients = val().parse().expect("--clients N"),
            "--batch" => a.batch = val().parse().expect("--batch N"),
            "--events" => a.events = val().parse().expect("--events N"),
            "--users" => a.users = val().parse().expect("--users N"),
            "--experiment" => a.experiment = val(),
            "--report-samples" => a.report_samples = val().parse().expect("--report-samples N"),
            "--skip-exposures" => a.skip_exposures = true,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

const T0: u64 = 1_777_636_800_000;

/// Exposes every user once (variant by parity), 10 000 rows per batch,
/// over 30 days of first-exposure times.
fn expose(a: &Args) -> (f64, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let per = 10_000u64;
    let t = Instant::now();
    let threads: Vec<_> = (0..a.clients.min(8))
        .map(|k| {
            let (url, next, users, exp) = (a.url.clone(), next.clone(), a.users, a.experiment.clone());
            std::thread::spawn(move || {
                let mut c = Client::new(&url).unwrap();
                let mut body = String::with_capacity(64 * per as usize);
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    let from = b * per;
                    if from >= users {
                        break;
                    }
                    body.clear();
                    let _ = write!(
                        body,
                        "{{\"instance\":\"bench/{k}\",\"seq\":{b},\"dropped\":0,\"experiments\":[{{\"name\":\"{exp}\",\"variants\":[\"control\",\"treatment\"]}}],\"exposures\":["
                    );
                    for u in from..(from + per).min(users) {
                        if u > from {
                            body.push(',');
                        }
                        let t_ms = T0 + u * 2_592_000_000 / users;
                        let _ = write!(body, "[{t_ms},0,{},\"user-{u}\"]", u % 2);
                    }
                    body.push_str("]}");
                    let r = c.post("/v1/exposures", "application/json", body.as_bytes()).expect("POST /v1/exposures");
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    (t.elapsed().as_secs_f64(), a.users)
}

fn main() {
    let a = parse_args();
    let (expose_s, exposed) = if a.skip_exposures {
        (0.0, 0)
    } else {
        expose(&a)
    };

    let batches = a.events / a.batch as u64;
    let next = Arc::new(AtomicU64::new(0));
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let accepted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..a.clients)
        .map(|k| {
            let (url, next, lat, accepted) = (a.url.clone(), next.clone(), latencies.clone(), accepted.clone());
            let (batch, users, exp) = (a.batch, a.users, a.experiment.clone());
            std::thread::spawn(move || {
                let mut c = Client::new(&url).unwrap().timeout(Duration::from_secs(300));
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (k as u64 + 1);
                let mut body = String::with_capacity(128 * batch);
                let mut mine = Vec::new();
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches {
                        break;
                    }
                    body.clear();
                    body.push('[');
                    for i in 0..batch {
                        let x = xorshift(&mut rng);
                        let user = x % users;
                        if i > 0 {
                            body.push(',');
                        }
                        match x >> 60 {
                            0..=7 => {
                                let _ = write!(
                                    body,
                                    "{{\"experiment\":\"{exp}\",\"user\":\"user-{user}\",\"metric\":\"click\",\"timestamp\":{},\"id\":\"b{b}-{i}\"}}",
                                    T0 + (x >> 30) % 2_592_000_000
                                );
                            }
                            8..=13 => {
                                let _ = write!(
                                    body,
                                    "{{\"user\":\"user-{user}\",\"metric\":\"revenue\",\"value\":{}.{:02},\"timestamp\":{},\"id\":\"b{b}-{i}\"}}",
                                    (x >> 20) % 200,
                                    (x >> 12) % 100,
                                    T0 + (x >> 30) % 2_592_000_000
                                );
                            }
                            _ => {
                                let _ = write!(
                                    body,
                                    "{{\"user\":\"user-{user}\",\"metric\":\"latency_ms\",\"value\":{},\"covariate\":{},\"timestamp\":{},\"id\":\"b{b}-{i}\"}}",
                                    50 + (x >> 20) % 300,
                                    40 + (x >> 40) % 300,
                                    T0 + (x >> 30) % 2_592_000_000
                                );
                            }
                        }
                    }
                    body.push(']');
                    let t = Instant::now();
                    let r = c.post("/v1/events", "application/json", body.as_bytes()).expect("POST /v1/events");
                    mine.push(t.elapsed().as_secs_f64() * 1e3);
                    assert_eq!(r.status, 200, "{}", r.text());
                    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    assert_eq!(v["accepted"].as_u64(), Some(batch as u64), "{v}");
                    accepted.fetch_add(batch as u64, Ordering::Relaxed);
                }
                lat.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total = accepted.load(Ordering::Relaxed);
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(f64::total_cmp);

    // Report latency at this volume, JSON and HTML, over keep-alive HTTP
    // to the admin listener.
    let mut c = Client::new(&a.admin_url).unwrap();
    let mut report_ms = |q: &str| {
        let mut v: Vec<f64> = (0..a.report_samples)
            .map(|_| {
                let t = Instant::now();
                let r = c
                    .get(&format!("/admin/experiments/{}{q}", a.experiment), &[])
                    .unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let json_ms = report_ms("");
    let html_ms = report_ms("?format=html");
    let report: serde_json::Value = serde_json::from_slice(
        &c.get(&format!("/admin/experiments/{}", a.experiment), &[])
            .unwrap()
            .body,
    )
    .unwrap();
    let listing: serde_json::Value =
        serde_json::from_slice(&c.get("/admin/experiments", &[]).unwrap().body).unwrap();

    let out = serde_json::json!({
        "clients": a.clients,
        "batch": a.batch,
        "events": total,
        "seconds": elapsed,
        "events_per_second": total as f64 / elapsed,
        "batch_latency_ms": {"p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99), "max": percentile(&lat, 1.0)},
        "exposures": {"users": exposed, "seconds": expose_s, "rows_per_second": if expose_s > 0.0 { exposed as f64 / expose_s } else { 0.0 }},
        "report_json_ms": {"min": percentile(&json_ms, 0.0), "p50": percentile(&json_ms, 0.5), "p99": percentile(&json_ms, 0.99), "max": percentile(&json_ms, 1.0)},
        "report_html_ms": {"min": percentile(&html_ms, 0.0), "p50": percentile(&html_ms, 0.5), "p99": percentile(&html_ms, 0.99), "max": percentile(&html_ms, 1.0)},
        "report_decision": report["decision"],
        "ingest_counters": listing["ingest"],
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
