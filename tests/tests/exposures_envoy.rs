//! The filter ships exposures to the real sidecar on its tick, and a dead
//! sidecar never affects requests (issue 5's first half); with an ingest
//! token, the filter authenticates its batches and the sidecar keeps no
//! copy of the token (issue 9).

use abmesh_e2e::envoy::{plugin_json, read_repo_file, render, with_plugin_json, Envoy};
use abmesh_e2e::sidecar::Sidecar;
use abmesh_e2e::{upstream, wasm_path};
use abmesh_testkit::free_port;
use abmesh_testkit::http::AsyncClient as Client;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Users per variant in the sidecar's report of `ranker` (empty if none
/// yet), from its admin listener.
async fn users_per_variant(admin_port: u16) -> BTreeMap<String, u64> {
    let mut client = Client::new(admin_port);
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

async fn wait_for_users(admin_port: u16, total: u64, within: Duration) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + within;
    loop {
        let seen = users_per_variant(admin_port).await;
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

/// Starts Envoy with envoy/demo.yaml (two upstreams) and a `sidecar`
/// section pointing at `sidecar_port`; `extra` adds to that section (e.g.
/// `, "token": "..."`). Returns the proxy port and Envoy.
async fn start_envoy(sidecar_port: u16, extra: &str) -> (u16, Envoy) {
    let (v1, v2) = (upstream::start("v1").await, upstream::start("v2").await);
    let (proxy, admin) = (free_port(), free_port());
    let yaml = render(
        &read_repo_file("envoy/demo.yaml"),
        &[(10000, proxy), (9901, admin), (18081, v1), (18082, v2)],
        &wasm_path(),
    );
    let json = plugin_json(&yaml).replacen(
        '{',
        &format!(
            r#"{{"sidecar": {{"cluster": "abmesh_sidecar", "flush_interval_ms": 200, "timeout_ms": 500{extra}}},"#
        ),
        1,
    );
    let mut yaml = with_plugin_json(&yaml, &json);
    let cluster = format!(
        "  clusters:\n  - name: abmesh_sidecar\n    type: STATIC\n    load_assignment:\n      cluster_name: abmesh_sidecar\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {sidecar_port} }} }} }}\n"
    );
    assert!(yaml.contains("  clusters:\n"));
    yaml = yaml.replacen("  clusters:\n", &cluster, 1);
    (proxy, Envoy::start(&yaml, admin).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposures_reach_the_sidecar_and_a_dead_sidecar_breaks_nothing() {
    let data = std::env::temp_dir().join(format!("abmesh-e2e-exposures-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let sidecar_port = free_port();
    let sidecar = Sidecar::start(sidecar_port, &data).await;

    let (proxy, envoy) = start_envoy(sidecar_port, "").await;

    // 300 users: the sidecar learns each one's variant from the filter.
    let sent = send_users(proxy, 0..300).await;
    let seen = wait_for_users(sidecar.admin_port, 300, Duration::from_secs(15)).await;
    assert_eq!(seen, sent, "sidecar report vs what the upstreams saw");

    // Sidecar gone: every request is still served.
    sidecar.kill().await;
    let during = send_users(proxy, 300..500).await;
    assert_eq!(during.values().sum::<u64>(), 200);
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Back: the exposures held while it was down arrive.
    let sidecar = Sidecar::start(sidecar_port, &data).await;
    let seen = wait_for_users(sidecar.admin_port, 500, Duration::from_secs(15)).await;
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

/// Every file under `dir`, read whole.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_authenticates_its_batches_and_the_sidecar_keeps_no_token() {
    const TOKEN: &str = "e2e-ingest-token-6f1c0d2b9a";
    let scratch = std::env::temp_dir().join(format!("abmesh-e2e-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let token_file = scratch.join("ingest.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let data = scratch.join("data");
    let sidecar_port = free_port();
    let sidecar = Sidecar::start_with(
        sidecar_port,
        &data,
        &["--ingest-token-file", token_file.to_str().unwrap()],
        None,
    )
    .await;

    // A filter without the token: its batches are refused (401), so the
    // sidecar learns nothing from it, and requests are still served.
    let (proxy, stranger) = start_envoy(sidecar_port, "").await;
    let sent = send_users(proxy, 0..50).await;
    assert_eq!(sent.values().sum::<u64>(), 50);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stranger.log().contains("not taken (status 401)") {
        assert!(Instant::now() < deadline, "Envoy log:\n{}", stranger.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(users_per_variant(sidecar.admin_port).await.is_empty());
    drop(stranger);

    // With `sidecar.token`: every batch is taken, the configuration too.
    let (proxy, envoy) = start_envoy(sidecar_port, &format!(r#", "token": "{TOKEN}""#)).await;
    let sent = send_users(proxy, 100..400).await;
    let seen = wait_for_users(sidecar.admin_port, 300, Duration::from_secs(15)).await;
    assert_eq!(seen, sent, "sidecar report vs what the upstreams saw");
    let report = Client::new(sidecar.admin_port)
        .get("/admin/experiments/ranker", &[])
        .await
        .json();
    assert_eq!(report["definitions"], "filter config", "{report}");

    // The token is nowhere but in the file it came from: not in Envoy's
    // log, the exported state, or the data directory (log, snapshots).
    let log = envoy.log();
    assert!(!log.contains(TOKEN), "Envoy logged the token:\n{log}");
    let state = Client::new(sidecar.admin_port)
        .get("/admin/state", &[])
        .await;
    assert_eq!(state.status, 200);
    assert!(
        contains(&state.body, "flush_interval_ms"),
        "the learned config is in the state"
    );
    assert!(
        !contains(&state.body, TOKEN),
        "the exported state holds the token"
    );
    sidecar.kill().await;
    let files = files_under(&data);
    assert!(!files.is_empty());
    for (path, bytes) in files {
        assert!(
            !contains(&bytes, TOKEN),
            "{} holds the token",
            path.display()
        );
    }
    drop(envoy);
    let _ = std::fs::remove_dir_all(&scratch);
}
