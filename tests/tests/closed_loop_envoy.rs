//! The closed loop with a real Envoy 1.40 and the real `abmesh serve`
//! (envoy/closed-loop.yaml, the filter delivered through ECDS from a file):
//! guardrail halts, halts reaching the filter within two ticks, and plugin
//! configuration changes applied live.
//!
//! Needs the release filter, `abmesh`, Envoy and the onnxruntime wheel (see
//! tests/src/lib.rs).

use abmesh_e2e::closed_loop::{demo_plugin, infer, ClosedLoop, Options, Ports};
use abmesh_filter::Plan;
use abmesh_testkit::http::AsyncClient as Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The flush (and halt poll) interval the tests run the filter with.
const TICK_MS: u64 = 500;

fn plugin(edit: impl FnOnce(&mut Value)) -> Value {
    let mut p = demo_plugin();
    p["sidecar"]["flush_interval_ms"] = json!(TICK_MS);
    edit(&mut p);
    p
}

async fn start(plugin: Value) -> ClosedLoop {
    ClosedLoop::start(Options {
        plugin: Some(plugin),
        ..Options::new(Ports::free())
    })
    .await
}

/// Users whose hash puts them in `variant` of the first experiment.
fn users_in(plugin: &Value, variant: &str, n: usize) -> Vec<String> {
    let plan = Plan::from_json(plugin.to_string().as_bytes()).expect("valid plugin");
    let mut d = plan.decisions();
    let exp = &plan.experiments()[0];
    (0..)
        .map(|i| format!("user-{i}"))
        .filter(|u| {
            plan.assign_user(u.as_bytes(), &mut d);
            d.assignments()[0]
                .variant()
                .is_some_and(|v| exp.variants()[v].name() == variant)
        })
        .take(n)
        .collect()
}

/// Features whose first value is uniform in [-1, 1], so the faulty v3
/// fails on about 30 % of rows.
fn features(seed: u64) -> [f32; 16] {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = [0f32; 16];
    for f in &mut out {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *f = ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32;
    }
    out
}

async fn halts(sidecar: &mut Client) -> Vec<Value> {
    let r = sidecar.get("/admin/halts", &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Every halt, lifted ones too; the active ones are in force.
    let all = r.json().as_array().cloned().unwrap_or_default();
    all.into_iter().filter(|h| h["active"] == true).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_variant_is_halted_by_its_guardrail_and_its_users_go_to_control() {
    let p = plugin(|_| {});
    let lp = start(p.clone()).await;
    let mut proxy = lp.proxy();
    let mut sidecar = lp.sidecar_admin();

    // Traffic from many users until the sidecar halts something.
    let started = Instant::now();
    let mut requests = 0u64;
    let mut v3_errors = 0u64;
    let halted = 'traffic: loop {
        for _ in 0..50 {
            let u = requests % 2000;
            let s = infer(&mut proxy, &format!("user-{u}"), &features(requests)).await;
            if s.variant.as_deref() == Some("v3") && s.status != 200 {
                v3_errors += 1;
            }
            requests += 1;
        }
        let h = halts(&mut sidecar).await;
        if !h.is_empty() {
            break 'traffic h;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no halt after {requests} requests ({v3_errors} v3 errors); sidecar log:\n{}",
            lp.sidecar_log()
        );
    };
    assert_eq!(halted.len(), 1, "only the faulty variant: {halted:?}");
    assert_eq!(halted[0]["experiment"], "scorer");
    assert_eq!(halted[0]["variant"], "v3");
    assert_eq!(halted[0]["source"], "guardrail");
    assert_eq!(halted[0]["rule"], "error_rate", "{:?}", halted[0]);
    assert!(v3_errors > 0);

    // Within two ticks the filter sends v3's users to the control, v1.
    tokio::time::sleep(Duration::from_millis(2 * TICK_MS)).await;
    for (i, user) in users_in(&p, "v3", 100).iter().enumerate() {
        let s = infer(&mut proxy, user, &features(i as u64)).await;
        assert_eq!(
            (s.status, s.model_version.as_deref(), s.variant.as_deref()),
            (200, Some("1"), Some("v1")),
            "halted user {user}"
        );
    }
    // The others keep their variants.
    for user in users_in(&p, "v2", 20) {
        let s = infer(&mut proxy, &user, &features(1)).await;
        assert_eq!(s.model_version.as_deref(), Some("2"), "{user}");
    }
    let log = lp.envoy.log();
    assert!(
        log.contains("\"v3\" halted by the sidecar"),
        "Envoy log does not say the filter applied the halt:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_halt_and_lift_reach_the_filter_within_two_ticks() {
    let p = plugin(|p| {
        p["experiments"][0]
            .as_object_mut()
            .unwrap()
            .remove("guardrails");
    });
    let lp = start(p.clone()).await;
    let mut proxy = lp.proxy();
    let mut sidecar = lp.sidecar_admin();
    let user = users_in(&p, "v2", 1).remove(0);
    let x = features(7);
    let served = |s: &abmesh_e2e::closed_loop::Served| s.model_version.clone();
    assert_eq!(
        served(&infer(&mut proxy, &user, &x).await).as_deref(),
        Some("2")
    );
    // Let the filter's first batch in, so the sidecar knows the config.
    tokio::time::sleep(Duration::from_millis(2 * TICK_MS)).await;

    for (action, version) in [("halt", "1"), ("lift", "2")] {
        let r = sidecar
            .post_json(
                &format!("/admin/experiments/scorer/variants/v2/{action}"),
                &[],
                &json!({"reason": "test"}),
            )
            .await;
        assert_eq!(
            r.status,
            200,
            "{action}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let acknowledged = Instant::now();
        loop {
            let s = infer(&mut proxy, &user, &x).await;
            assert_eq!(s.status, 200);
            if served(&s).as_deref() == Some(version) {
                break;
            }
            let waited = acknowledged.elapsed();
            assert!(
                waited <= Duration::from_millis(2 * TICK_MS),
                "{action}: still served by the old version {waited:?} after the sidecar acknowledged it (2 ticks = {} ms)",
                2 * TICK_MS
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = acknowledged.elapsed();
        println!("{action} applied by the filter {took:?} after the sidecar's 200");
    }
    assert!(halts(&mut sidecar).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_config_change_applies_live_and_the_sidecar_learns_it() {
    let before = plugin(|_| {});
    let mut lp = start(before.clone()).await;
    let mut proxy = lp.proxy();
    let v3_users = users_in(&before, "v3", 50);
    let s = infer(&mut proxy, &v3_users[0], &features(3)).await;
    assert_eq!(s.variant.as_deref(), Some("v3"));

    // An invalid version is refused by Envoy (the filter names the field)
    // and the running one keeps serving.
    let invalid = plugin(|p| p["experiments"][0]["variants"][1]["weight"] = json!(-5));
    lp.write_plugin(&invalid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lp.envoy.log().contains("experiments[0].variants[1].weight") {
        assert!(Instant::now() < deadline, "Envoy log:\n{}", lp.envoy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = infer(&mut proxy, &v3_users[0], &features(3)).await;
    assert_eq!(s.variant.as_deref(), Some("v3"));

    // v3 retired, v1/v2 split 50/50: applied without restarting Envoy.
    let after = plugin(|p| {
        let variants = p["experiments"][0]["variants"].as_array_mut().unwrap();
        variants.retain(|v| v["name"] != "v3");
        for v in variants.iter_mut() {
            v["weight"] = json!(50);
        }
    });
    lp.write_plugin(&after);
    let plan = Plan::from_json(after.to_string().as_bytes()).unwrap();
    let mut d = plan.decisions();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = infer(&mut proxy, &v3_users[0], &features(3)).await;
        if matches!(s.variant.as_deref(), Some("v1" | "v2")) {
            break;
        }
        assert!(Instant::now() < deadline, "the new config never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, user) in v3_users.iter().enumerate() {
        let s = infer(&mut proxy, user, &features(i as u64)).await;
        plan.assign_user(user.as_bytes(), &mut d);
        let want = d.assignments()[0]
            .variant()
            .map(|v| plan.experiments()[0].variants()[v].name().to_string());
        assert_eq!(
            (s.variant.as_deref(), s.status),
            (want.as_deref(), 200),
            "{user}"
        );
    }

    // The sidecar learns the new version from the filter's next batches.
    let mut sidecar = lp.sidecar_admin();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = sidecar.get("/admin/experiments/scorer", &[]).await.json();
        let names: Vec<&str> = r["variants"]
            .as_array()
            .map(|v| v.iter().filter_map(|v| v["name"].as_str()).collect())
            .unwrap_or_default();
        let weights = &r["definitions"];
        if names == ["v1", "v2"] {
            println!("sidecar definitions: {weights}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar still reports variants {names:?}: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 11: three sidecar replicas share one log on a three-node NATS
/// JetStream cluster, and Envoy balances the model traffic and the
/// filter's batches over them round-robin. A guardrail halt decided from
/// traffic spread over every replica is in every replica's batch answer
/// within two ticks, and the filter's halt set never flips back (with
/// independent sidecars, a replica that had not decided the halt would
/// answer "no halts" and the filter would route v3 again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_three_replicas_a_guardrail_halt_reaches_every_replica_and_never_flips_back() {
    let p = plugin(|_| {});
    let lp = ClosedLoop::start(Options {
        plugin: Some(p.clone()),
        replicas: 3,
        ..Options::new(Ports::free())
    })
    .await;
    let mut proxy = lp.proxy();
    let started = Instant::now();
    let mut requests = 0u64;
    let halted_at = 'traffic: loop {
        for _ in 0..50 {
            let u = requests % 2000;
            infer(&mut proxy, &format!("user-{u}"), &features(requests)).await;
            requests += 1;
        }
        for i in 0..3 {
            if !halts(&mut lp.replica_admin(i)).await.is_empty() {
                break 'traffic Instant::now();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no halt after {requests} requests; replica 0 log:\n{}",
            lp.sidecar_log()
        );
    };
    // Every replica answers the halt in its batch replies within two ticks.
    for i in 0..3 {
        let mut seq = 0;
        loop {
            seq += 1;
            let batch = json!({"instance": format!("probe-{i}"), "seq": seq,
                "experiments": [{"name": "scorer", "variants": ["v1", "v2", "v3"]}], "exposures": []});
            let r = lp
                .replica_client(i)
                .post_json("/v1/exposures", &[], &batch)
                .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            if r.json()["halted"] == json!([{"experiment": "scorer", "variant": "v3"}]) {
                break;
            }
            assert!(
                halted_at.elapsed() < Duration::from_millis(2 * TICK_MS),
                "replica {i} does not answer the halt {:?} after it was decided: {}",
                halted_at.elapsed(),
                String::from_utf8_lossy(&r.body)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The traffic was spread: every replica served requests through Envoy.
    let clusters = Client::new(lp.envoy.admin_port())
        .get("/clusters", &[])
        .await;
    let clusters = String::from_utf8_lossy(&clusters.body).into_owned();
    for r in &lp.replicas {
        let line = format!("abmesh_sidecar::127.0.0.1:{}::rq_success::", r.ports.0);
        let served: u64 = clusters
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(
            served > 0,
            "replica on port {} served nothing:\n{clusters}",
            r.ports.0
        );
    }
    // For ten ticks after the filter learned it, every v3 user goes to v1:
    // the halt set never flips back, whichever replica answers a batch.
    tokio::time::sleep(Duration::from_millis(2 * TICK_MS)).await;
    let v3_users = users_in(&p, "v3", 40);
    let until = Instant::now() + Duration::from_millis(10 * TICK_MS);
    let mut checked = 0;
    while Instant::now() < until {
        for (i, user) in v3_users.iter().enumerate() {
            let s = infer(&mut proxy, user, &features(i as u64)).await;
            assert_eq!(
                (s.status, s.model_version.as_deref(), s.variant.as_deref()),
                (200, Some("1"), Some("v1")),
                "halted user {user}, {checked} requests after the halt"
            );
            checked += 1;
        }
    }
    // The three replicas hold the same halts.
    let mut all = Vec::new();
    for i in 0..3 {
        all.push(halts(&mut lp.replica_admin(i)).await);
    }
    assert!(all.windows(2).all(|w| w[0] == w[1]), "{all:?}");
}
