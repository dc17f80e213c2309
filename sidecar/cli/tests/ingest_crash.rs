//! Durability under SIGKILL, for real: the `abmesh` binary on a real disk,
//! concurrent HTTP clients streaming event batches, the process killed with
//! SIGKILL in the middle, restarted on the same directory. Every batch that
//! was acknowledged (200) must be there after the restart: posting it again
//! must find every one of its events already present (de-duplicated by
//! id). Three kill/restart rounds, with snapshots taken during the run, so
//! recovery goes through snapshot + log tail and any torn tail.

use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abmesh_testkit::http::Client;

use serde_json::{json, Value};

const CONFIG: &str = r#"{"experiments":[{"name":"ranker","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}]}]}"#;
const USERS: usize = 2000;
const CLIENTS: usize = 8;

/// Starts `abmesh serve` and waits for its "listening on" line.
fn spawn(dir: &Path, config: &Path, log: &Path) -> (Child, abmesh_testkit::serve::Urls) {
    let args: [&std::ffi::OsStr; 5] = [
        "--snapshot-every".as_ref(),
        "1MiB".as_ref(),
        "--data-dir".as_ref(),
        dir.as_os_str(),
        "--experiments".as_ref(),
    ];
    abmesh_testkit::serve::spawn_serve(args.into_iter().chain([config.as_os_str()]), log)
}

fn batch(client: usize, n: u64, rng: &mut u64) -> (String, Vec<String>) {
    let mut ids = Vec::new();
    let events: Vec<Value> = (0..250)
        .map(|i| {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            let id = format!("c{client}-b{n}-e{i}");
            ids.push(id.clone());
            json!({"user": format!("u{}", *rng as usize % USERS), "metric": "purchase",
                   "value": (*rng % 1000) as f64 / 10.0, "id": id})
        })
        .collect();
    (serde_json::to_string(&events).unwrap(), ids)
}

#[test]
fn every_acknowledged_event_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("experiments.json");
    std::fs::write(&config, CONFIG).unwrap();
    let log = dir.path().join("serve.log");

    let (mut child, mut urls) = spawn(&data, &config, &log);
    {
        let mut c = Client::new(&urls.data).unwrap();
        let rows: Vec<Value> = (0..USERS)
            .map(|u| json!([1_000_000 + u as i64, 0, u % 2, format!("u{u}")]))
            .collect();
        let body = json!({"instance": "test/0/1", "seq": 1, "dropped": 0,
            "experiments": [{"name": "ranker", "variants": ["control", "treatment"]}], "exposures": rows});
        let r = c
            .post(
                "/v1/exposures",
                "application/json",
                body.to_string().as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // Acknowledged batches: (body, number of events).
    let acked: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    for round in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..CLIENTS)
            .map(|k| {
                let (url, stop, acked) = (urls.data.clone(), stop.clone(), acked.clone());
                let mut rng = 0x9E37_79B9_7F4A_7C15 ^ ((round as u64 + 1) << 8) ^ k as u64;
                std::thread::spawn(move || {
                    let mut c = Client::new(&url).unwrap().timeout(Duration::from_secs(20));
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let (body, ids) = batch(k, (round as u64) << 32 | n, &mut rng);
                        match c.post("/v1/events", "application/json", body.as_bytes()) {
                            Ok(r) if r.status == 200 => {
                                acked.lock().unwrap().push((body, ids.len()))
                            }
                            // The server died mid-request: not acknowledged.
                            Ok(_) | Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        // Let the stream run, then kill in the middle of it.
        let start = Instant::now();
        let before = acked.lock().unwrap().len();
        while acked.lock().unwrap().len() < before + 300
            && start.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(37 * (round + 1) as u64));
        child.kill().expect("SIGKILL");
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed, not exited: {status:?}");
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        let (c2, urls2) = spawn(&data, &config, &log);
        child = c2;
        let n_acked = acked.lock().unwrap().len();
        assert!(
            n_acked > before,
            "round {round}: no batch was acknowledged before the kill"
        );

        // Every acknowledged event is present: resending finds them all.
        let mut c = Client::new(&urls2.data).unwrap();
        let mut admin = Client::new(&urls2.admin).unwrap();
        let mut events = 0u64;
        for (body, n) in acked.lock().unwrap().iter() {
            let r = c
                .post("/v1/events", "application/json", body.as_bytes())
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(
                v,
                json!({"accepted": 0, "duplicates": n}),
                "round {round}: an acknowledged batch was lost"
            );
            events += *n as u64;
        }
        let listing: Value =
            serde_json::from_slice(&admin.get("/admin/experiments", &[]).unwrap().body).unwrap();
        assert!(
            listing["ingest"]["events"].as_u64().unwrap() >= events,
            "{listing}"
        );
        let users: u64 = listing["experiments"][0]["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["users"].as_u64().unwrap())
            .sum();
        assert_eq!(users, USERS as u64, "exposures survive too");
        // The log's metrics are exported.
        let m = c.get("/metrics", &[]).unwrap().text();
        assert!(
            m.contains("abmesh_ingest_events_total") && m.contains("abmesh_log_syncs_total"),
            "{m}"
        );
        urls = urls2;
    }
    child.kill().unwrap();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).unwrap();
    for line in log
        .lines()
        .filter(|l| l.contains("recovered") || l.contains("torn"))
    {
        eprintln!("{line}");
    }
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("snapshot written"),
        "snapshots were taken during the run"
    );
    assert_eq!(log.matches("outcome log recovered").count(), 4);
}
