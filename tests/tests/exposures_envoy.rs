//! The filter ships exposures to the real sidecar on its tick, and a dead
//! sidecar never affects requests (issue 5's first half).

use abmesh_e2e::envoy::{plugin_json, read_repo_file, render, with_plugin_json, Envoy};
use abmesh_e2e::http::Client;
use abmesh_e2e::sidecar::Sidecar;
use abmesh_e2e::{free_port, upstream, wasm_path};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Users per variant in the sidecar's report of `ranker` (empty if none yet).
async fn users_per_variant(sidecar_port: u16) -> BTreeMap<String, u64> {
    let mut client = Client::new(sidecar_port);
    if client.try_get("/admin/experiments/ranker").await != Some(http::StatusCode::OK) {
        return BTreeMap::new();
    }
    let r = client.get("/admin/experiments/ranker", &[]).await;
    r.json()["variants"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            (
                v["name"].as_str().unwrap_or("?").to_string(),
                v["users"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

async fn wait_for_users(sidecar_port: u16, total: u64, within: Duration) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + within;
    loop {
        let seen = users_per_variant(sidecar_port).await;
        if seen.values().sum::<u64>() >= total || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn send_users(proxy: u16, range: std::ops::Range<usize>) -> BTreeMap<String, u64> {
    let mut client = Client::new(proxy);
    let mut per_variant = BTreeMap::new();
    for i in range {
        let id = format!("exp-user-{i}");
        let r = client
            .get("/predict", &[("x-user-id", id.as_bytes())])
            .await;
        assert_eq!(r.status, 200, "request {i} failed");
        let v = r.json()["headers"]["x-abmesh-ranker"]
            .as_str()
            .unwrap()
            .to_string();
        *per_variant.entry(v).or_insert(0u64) += 1;
    }
    per_variant
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposures_reach_the_sidecar_and_a_dead_sidecar_breaks_nothing() {
    let data = std::env::temp_dir().join(format!("abmesh-e2e-exposures-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let sidecar_port = free_port();
    let sidecar = Sidecar::start(sidecar_port, &data).await;

    let (v1, v2) = (upstream::start("v1").await, upstream::start("v2").await);
    let (proxy, admin) = (free_port(), free_port());
    let yaml = render(
        &read_repo_file("envoy/demo.yaml"),
        &[(10000, proxy), (9901, admin), (18081, v1), (18082, v2)],
        &wasm_path(),
    );
    let json = plugin_json(&yaml).replacen(
        '{',
        r#"{"sidecar": {"cluster": "abmesh_sidecar", "flush_interval_ms": 200, "timeout_ms": 500},"#,
        1,
    );
    let mut yaml = with_plugin_json(&yaml, &json);
    let cluster = format!(
        "  clusters:\n  - name: abmesh_sidecar\n    type: STATIC\n    load_assignment:\n      cluster_name: abmesh_sidecar\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {sidecar_port} }} }} }}\n"
    );
    assert!(yaml.contains("  clusters:\n"));
    yaml = yaml.replacen("  clusters:\n", &cluster, 1);
    let envoy = Envoy::start(&yaml, admin).await;

    // 300 users: the sidecar learns each one's variant from the filter.
    let sent = send_users(proxy, 0..300).await;
    let seen = wait_for_users(sidecar_port, 300, Duration::from_secs(15)).await;
    assert_eq!(seen, sent, "sidecar report vs what the upstreams saw");

    // Sidecar gone: every request is still served.
    sidecar.kill().await;
    let during = send_users(proxy, 300..500).await;
    assert_eq!(during.values().sum::<u64>(), 200);
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Back: the exposures held while it was down arrive.
    let sidecar = Sidecar::start(sidecar_port, &data).await;
    let seen = wait_for_users(sidecar_port, 500, Duration::from_secs(15)).await;
    let mut expected = sent.clone();
    for (v, n) in during {
        *expected.entry(v).or_insert(0) += n;
    }
    assert_eq!(seen, expected, "after the sidecar came back");
    let log = envoy.log();
    assert!(log.contains("sidecar reachable again"), "{log}");
    drop(sidecar);
    let _ = std::fs::remove_dir_all(&data);
}
