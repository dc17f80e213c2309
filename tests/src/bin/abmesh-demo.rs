//! The closed-loop demo: Envoy with the abmesh filter (envoy/closed-loop.yaml,
//! filter config from envoy/closed-loop-filter.yaml through ECDS) in front
//! of `abmesh serve`, which hosts three versions of the example scorer
//! model. Simulated users call `/v2/models/scorer/infer` through Envoy; the
//! filter sends each to the model version of their variant, ships exposures
//! and health to the sidecar, and routes the users of a halted variant to
//! control.
//!
//! * `v1` (control) and `v2` are real, different models. The simulated
//!   users' true preferences follow v2 (the demo's ground truth, asked of the
//!   sidecar directly), and a user buys with probability 12 % when the served
//!   label matches their preference, 6 % when it does not, 2 % after an
//!   error. So v2 has a real effect on purchases, produced by the models'
//!   actual outputs.
//! * `v3` is a faulty release (examples/models/make_models.py): it fails on
//!   30 % of rows. Its error-rate guardrail should halt it by itself.
//!
//! `cargo run -p abmesh-e2e --bin abmesh-demo -- [--users N] [--rate R]
//! [--data-dir DIR] [--replicas N] [--keep-running]` (scripts/demo.sh
//! builds everything first). Exit status 0 only when the loop did what it
//! should: v3 halted by its guardrail, its users then served by control
//! without errors, and the report deciding to ship v2.
//!
//! `--replicas 3` runs three sidecars sharing one log on a three-node NATS
//! JetStream cluster, Envoy balancing over them, and SIGKILLs the last
//! replica a third of the way through the users: the survivors still halt
//! v3, agree on every number, and ship v2.

use abmesh_e2e::closed_loop::{infer, ClosedLoop, Options, Ports};
use abmesh_testkit::http::AsyncClient as Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// splitmix64: a small deterministic generator, so a run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    let v = args
        .get(i + 1)
        .unwrap_or_else(|| panic!("{name} needs a value"));
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}: cannot read {v:?}")),
    )
}

/// One request as the demo saw it.
struct Seen {
    variant: String,
    status: u16,
    version: String,
    /// Sent after the demo had seen the sidecar halt v3.
    after_halt: bool,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let users: u64 = arg(&args, "--users").unwrap_or(8000);
    let rate: f64 = arg(&args, "--rate").unwrap_or(400.0);
    let data_dir: Option<std::path::PathBuf> = arg(&args, "--data-dir");
    let keep_running = args.iter().any(|a| a == "--keep-running");
    let replicas: usize = arg(&args, "--replicas").unwrap_or(1).max(1);

    let mut lp = ClosedLoop::start(Options {
        data_dir,
        replicas,
        ..Options::new(Ports::DEMO)
    })
    .await;
    let side = lp.ports.sidecar;
    let side_admin = lp.ports.sidecar_admin;
    println!("abmesh closed-loop demo");
    println!(
        "  Envoy 1.40 + abmesh filter  http://127.0.0.1:{}  (admin :{})",
        lp.ports.proxy, lp.ports.admin
    );
    println!("  abmesh sidecar              http://127.0.0.1:{side}  (models: scorer v1, v2, v3; outcome log {})", lp.data_dir.display());
    println!("  abmesh sidecar admin        http://127.0.0.1:{side_admin}  (reports, halts)");
    for (i, r) in lp.replicas.iter().enumerate().skip(1) {
        println!(
            "  abmesh sidecar replica {i}    http://127.0.0.1:{}  (admin :{}), same models, same log",
            r.ports.0, r.ports.1
        );
    }
    if let Some(nats) = &lp.nats {
        println!(
            "  NATS JetStream, 3 nodes     the sidecars' shared log (stream ABMESH, R3; {})",
            nats.dir().display()
        );
    }
    println!("  experiment \"scorer\": v1 (control) 40 %, v2 40 %, v3 20 %, guardrails on 5xx share, p95 latency, purchases");
    println!("\n{users} simulated users at ~{rate:.0}/s; each calls /v2/models/scorer/infer through Envoy once.\n");

    let started = Instant::now();
    let halted_at: Arc<Mutex<Option<(Duration, String)>>> = Arc::default();
    let watcher = tokio::spawn(watch_halts(side_admin, started, halted_at.clone()));

    let next_user = Arc::new(AtomicU64::new(0));
    let workers = 8;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let next_user = next_user.clone();
        let halted_at = halted_at.clone();
        let proxy = lp.ports.proxy;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(proxy);
            let mut oracle = Client::new(side);
            let mut events = Vec::new();
            let mut seen = Vec::new();
            let per_worker = Duration::from_secs_f64(workers as f64 / rate);
            let mut next = Instant::now();
            loop {
                let u = next_user.fetch_add(1, Ordering::Relaxed);
                if u >= users {
                    break;
                }
                tokio::time::sleep_until(next.into()).await;
                next += per_worker;
                let user = format!("user-{u}");
                let mut rng = Rng(u.wrapping_mul(0xA24B_AED4_963E_E407));
                let mut features = [0f32; 16];
                for f in &mut features {
                    *f = (rng.unit() * 2.0 - 1.0) as f32;
                }
                let after_halt = halted_at.lock().unwrap().is_some();
                let served = infer(&mut client, &user, &features).await;
                // The simulation's ground truth: v2's label for these
                // features, asked of the sidecar directly (not through Envoy).
                let truth = oracle
                    .post_json(
                        "/v2/models/scorer/versions/2/infer",
                        &[],
                        &abmesh_e2e::closed_loop::scorer_request(&features),
                    )
                    .await;
                let truth = abmesh_e2e::closed_loop::Served::from_reply(&truth, "scorer").label;
                let p = match (served.status, served.label, truth) {
                    (200, Some(l), Some(t)) if l == t => 0.12,
                    (200, _, _) => 0.06,
                    _ => 0.02,
                };
                if rng.unit() < p {
                    events
                        .push(json!({"experiment": "scorer", "user": user, "metric": "purchase"}));
                }
                if events.len() >= 50 {
                    post_events(&mut oracle, &mut events).await;
                }
                seen.push(Seen {
                    variant: served.variant.unwrap_or_else(|| "-".into()),
                    status: served.status,
                    version: served.model_version.unwrap_or_else(|| "-".into()),
                    after_halt,
                });
            }
            post_events(&mut oracle, &mut events).await;
            seen
        }));
    }
    // With replicas, one of them dies a third of the way through.
    let mut killed = None;
    if replicas > 1 {
        while next_user.load(Ordering::Relaxed) < users / 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let victim = replicas - 1;
        lp.kill_replica(victim).await;
        killed = Some(victim);
        println!(
            "[{:5.1} s] SIGKILLed sidecar replica {victim}; Envoy sends its share to the others",
            started.elapsed().as_secs_f64()
        );
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.expect("user task"));
    }
    let elapsed = started.elapsed();
    // Let the filter's last batches (every second) reach the sidecar.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    watcher.abort();

    println!(
        "\n{} requests in {:.1} s",
        seen.len(),
        elapsed.as_secs_f64()
    );
    let mut table: BTreeMap<(bool, String, String, u16), u64> = BTreeMap::new();
    for s in &seen {
        *table
            .entry((s.after_halt, s.variant.clone(), s.version.clone(), s.status))
            .or_default() += 1;
    }
    println!(
        "\n  {:<12} {:<8} {:<14} {:>7} {:>8}",
        "when", "variant", "model version", "status", "requests"
    );
    for ((after, variant, version, status), n) in &table {
        let when = if *after { "after halt" } else { "before halt" };
        println!("  {when:<12} {variant:<8} {version:<14} {status:>7} {n:>8}");
    }

    let mut sidecar = Client::new(side_admin);
    let report = sidecar
        .get("/admin/experiments/scorer?format=text", &[])
        .await;
    println!(
        "\n--- abmesh report scorer ---\n{}",
        String::from_utf8_lossy(&report.body)
    );
    let report = sidecar.get("/admin/experiments/scorer", &[]).await.json();

    // What the loop should have done.
    let halt = halted_at.lock().unwrap().clone();
    let after: Vec<&Seen> = seen.iter().filter(|s| s.after_halt).collect();
    let after_v3 = after.iter().filter(|s| s.version == "3").count();
    let after_errors = after.iter().filter(|s| s.status != 200).count();
    let decision = &report["decision"];
    let decision = format!(
        "{} {}",
        decision["decision"].as_str().unwrap_or("none"),
        decision["variant"].as_str().unwrap_or("")
    );
    let mut ok = true;
    let mut check = |pass: bool, what: String| {
        ok &= pass;
        println!("  [{}] {what}", if pass { "ok" } else { "FAILED" });
    };
    println!("\nchecks");
    check(
        halt.is_some(),
        match &halt {
            Some((t, why)) => format!(
                "v3 halted by its guardrail {:.1} s into the run: {why}",
                t.as_secs_f64()
            ),
            None => "v3 halted by its guardrail (it was not)".into(),
        },
    );
    check(
        !after.is_empty() && after_v3 == 0 && after_errors == 0,
        format!(
            "after the halt: {} requests, {after_v3} served by v3, {after_errors} errors",
            after.len()
        ),
    );
    check(
        decision.trim() == "ship v2",
        format!("report decision: {}", decision.trim()),
    );
    if let Some(victim) = killed {
        // Every surviving replica answers the same report (once each has
        // applied the last records).
        let deadline = Instant::now() + Duration::from_secs(10);
        let (same, reports) = loop {
            let mut reports = Vec::new();
            for i in (0..replicas).filter(|&i| i != victim) {
                let mut r = lp
                    .replica_admin(i)
                    .get("/admin/experiments/scorer", &[])
                    .await
                    .json();
                if let Some(o) = r.as_object_mut() {
                    o.remove("generated_at_ms");
                }
                reports.push(r);
            }
            let same = reports.windows(2).all(|w| w[0] == w[1]);
            if same || Instant::now() > deadline {
                break (same, reports);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        check(
            same,
            format!(
                "replica {victim} killed partway; the {} others report the same numbers (log position {})",
                reports.len(),
                reports[0]["applied_lsn"]
            ),
        );
    }
    println!("\nHTML report: http://127.0.0.1:{side_admin}/admin/experiments/scorer?format=html");
    if keep_running {
        println!("Envoy and the sidecar keep running; Ctrl-C to stop.");
        println!(
            "  curl -si localhost:{}/v2/models/scorer/infer -H 'x-user-id: alice' -d @request.json",
            lp.ports.proxy
        );
        tokio::signal::ctrl_c().await.ok();
    }
    drop(lp);
    if !ok {
        std::process::exit(1);
    }
}

async fn post_events(client: &mut Client, events: &mut Vec<Value>) {
    if events.is_empty() {
        return;
    }
    let r = client
        .post_json("/v1/events", &[], &Value::Array(std::mem::take(events)))
        .await;
    assert_eq!(
        r.status,
        200,
        "POST /v1/events: {}",
        String::from_utf8_lossy(&r.body)
    );
}

/// Polls the sidecar's halts (on its admin listener, `port`) and prints
/// the first one.
async fn watch_halts(port: u16, started: Instant, out: Arc<Mutex<Option<(Duration, String)>>>) {
    let mut client = Client::new(port);
    loop {
        let r = client.get("/admin/halts", &[]).await;
        if r.status == 200 {
            let v = r.json();
            let list = v.as_array().cloned().unwrap_or_default();
            if let Some(h) = list
                .iter()
                .find(|h| h["variant"] == "v3" && h["active"] == true)
            {
                let why = h["message"].as_str().unwrap_or("").to_string();
                let t = started.elapsed();
                println!(
                    "[{:5.1} s] the sidecar halted scorer/v3 ({}): {why}",
                    t.as_secs_f64(),
                    h["rule"].as_str().unwrap_or("?")
                );
                *out.lock().unwrap() = Some((t, why));
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
