//! The release filter inside a real Envoy 1.40, loaded from `envoy/demo.yaml`,
//! routing users through `cluster_header` to two real upstreams.

use abmesh_e2e::envoy::{plugin_json, read_repo_file, render, with_plugin_json, Envoy};
use abmesh_e2e::{upstream, wasm_path};
use abmesh_testkit::http::AsyncClient as Client;
use abmesh_testkit::{abmesh_bin, free_port};
use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Demo ports as written in envoy/demo.yaml.
const DEMO_PROXY: u16 = 10000;
const DEMO_ADMIN: u16 = 9901;
const DEMO_V1: u16 = 18081;
const DEMO_V2: u16 = 18082;

struct Demo {
    envoy: Envoy,
    proxy: u16,
    yaml: String,
}

async fn start_demo(edit: impl Fn(String) -> String) -> Demo {
    let v1 = upstream::start("v1").await;
    let v2 = upstream::start("v2").await;
    let (proxy, admin) = (free_port(), free_port());
    let yaml = edit(render(
        &read_repo_file("envoy/demo.yaml"),
        &[
            (DEMO_PROXY, proxy),
            (DEMO_ADMIN, admin),
            (DEMO_V1, v1),
            (DEMO_V2, v2),
        ],
        &wasm_path(),
    ));
    let envoy = Envoy::start(&yaml, admin).await;
    Demo { envoy, proxy, yaml }
}

/// Runs `abmesh assign` on raw ids; returns the variant per id (None: not
/// enrolled) for experiment `experiment`.
fn cli_assign(config_json: &str, ids: &[Vec<u8>], experiment: &str) -> Vec<Option<String>> {
    let dir = std::env::temp_dir().join(format!("abmesh-assign-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join(format!("{experiment}.json"));
    std::fs::write(&cfg, config_json).unwrap();
    let mut child = Command::new(abmesh_bin())
        .args(["assign", "--config"])
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run abmesh assign");
    let mut input = Vec::new();
    for id in ids {
        input.extend_from_slice(id);
        input.push(b'\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "abmesh assign failed");
    let lines: Vec<serde_json::Value> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .filter(|v: &serde_json::Value| v["experiment"] == experiment)
        .collect();
    assert_eq!(lines.len(), ids.len(), "one line per id for {experiment}");
    lines
        .iter()
        .map(|v| v["variant"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_land_on_their_variants_upstream_and_agree_with_the_cli() {
    let demo = start_demo(|y| y).await;
    let mut client = Client::new(demo.proxy);

    const USERS: usize = 1500;
    let ids: Vec<Vec<u8>> = (0..USERS)
        .map(|i| format!("user-{i:05}").into_bytes())
        .collect();
    let expected = cli_assign(&plugin_json(&demo.yaml), &ids, "ranker");

    let mut per_variant: HashMap<String, usize> = HashMap::new();
    for (i, (id, want)) in ids.iter().zip(&expected).enumerate() {
        // A third of the users identify by header, a third by the cookie
        // fallback, and a third by the cookie in the second of two
        // `cookie` headers (HTTP/1.1 clients may send several; Envoy keeps
        // them apart over HTTP/1.1).
        let cookie = [&b"theme=dark; abmesh_uid="[..], id].concat();
        let second = [&b"abmesh_uid="[..], id].concat();
        let headers: Vec<(&str, &[u8])> = match i % 3 {
            0 => vec![("x-user-id", id)],
            1 => vec![("cookie", &cookie)],
            _ => vec![("cookie", b"theme=dark; lang=en"), ("cookie", &second)],
        };
        let reply = client.get("/predict", &headers).await;
        assert_eq!(
            reply.status,
            200,
            "user {i}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        let want = want
            .as_deref()
            .expect("traffic is 100%: everyone is enrolled");
        let want_upstream = match want {
            "control" => "v1",
            "treatment" => "v2",
            other => panic!("unexpected variant {other}"),
        };
        assert_eq!(
            body["upstream"], want_upstream,
            "user {i} ({want}) on the wrong upstream"
        );
        assert_eq!(body["headers"]["x-abmesh-ranker"], want, "user {i}");
        assert_eq!(
            reply
                .headers
                .get("x-abmesh-assignment")
                .map(|v| v.as_bytes()),
            Some(format!("ranker={want}").as_bytes()),
            "echo header for user {i}"
        );
        // Sticky: a second request lands the same way.
        if i % 10 == 0 {
            let again = client.get("/predict", &headers).await.json();
            assert_eq!(again["upstream"], want_upstream);
        }
        *per_variant.entry(want.to_string()).or_default() += 1;
    }
    // 50/50 split: within 5 sd of USERS/2.
    let sd = (USERS as f64 * 0.25).sqrt();
    for (v, n) in &per_variant {
        assert!(
            (*n as f64 - USERS as f64 / 2.0).abs() < 5.0 * sd,
            "{v}: {n} of {USERS}"
        );
    }
    assert_eq!(per_variant.len(), 2);
    assert!(demo
        .envoy
        .log()
        .contains("abmesh: configured 1 experiment(s): ranker"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_identities_are_served() {
    let demo = start_demo(|y| y).await;
    let mut client = Client::new(demo.proxy);
    let non_utf8: Vec<u8> = vec![b'u', 0xff, 0xfe, 0x80, b'z'];
    let long: Vec<u8> = (0..8192).map(|i| b'a' + (i % 26) as u8).collect();
    let ids = vec![non_utf8.clone(), long.clone()];
    let expected = cli_assign(&plugin_json(&demo.yaml), &ids, "ranker");
    for (id, want) in ids.iter().zip(&expected) {
        let reply = client.get("/predict", &[("x-user-id", id)]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.json()["headers"]["x-abmesh-ranker"].as_str(),
            want.as_deref(),
            "id of {} bytes",
            id.len()
        );
    }
    // No identity: not enrolled, passes untouched to the default route, and
    // a client cannot pick a cluster or claim a variant itself.
    let reply = client
        .get(
            "/predict",
            &[
                ("x-abmesh-cluster", b"ranker_v2"),
                ("x-abmesh-ranker", b"treatment"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["upstream"], "v1");
    assert!(body["headers"].get("x-abmesh-ranker").is_none(), "{body}");
    assert!(body["headers"].get("x-abmesh-cluster").is_none(), "{body}");
    assert!(reply.headers.get("x-abmesh-assignment").is_none());
    // Empty identity header and a cookie header without our cookie.
    for headers in [
        vec![("x-user-id", &b""[..])],
        vec![("cookie", &b"a=1; b=2"[..])],
    ] {
        let reply = client.get("/predict", &headers).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["upstream"], "v1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_makes_envoy_refuse_the_plugin() {
    let good = render(
        &read_repo_file("envoy/demo.yaml"),
        &[
            (DEMO_PROXY, free_port()),
            (DEMO_ADMIN, free_port()),
            (DEMO_V1, free_port()),
            (DEMO_V2, free_port()),
        ],
        &wasm_path(),
    );
    let cases = [
        (
            r#"{"name": "treatment", "weight": 50,"#,
            r#"{"name": "treatment", "weight": -5,"#,
            "`experiments[0].variants[1].weight` must be a positive number, got -5",
        ),
        (
            r#""echo_header": "x-abmesh-assignment","#,
            r#""echo_headr": "x-abmesh-assignment","#,
            "`echo_headr`: unknown field",
        ),
        (
            r#"{"name": "treatment", "weight": 50,"#,
            r#"{"name": "control", "weight": 50,"#,
            "`experiments[0].variants[1].name` duplicates variant name",
        ),
        // The error names the field and never quotes the token.
        (
            r#""echo_header": "x-abmesh-assignment","#,
            r#""sidecar": {"cluster": "abmesh_sidecar", "token": "sh0rt-s3cret"}, "echo_header": "x-abmesh-assignment","#,
            "`sidecar.token` must be 16 to 4096 bytes long, got 12",
        ),
    ];
    for (from, to, message) in cases {
        assert!(good.contains(from), "demo config changed: {from}");
        let bad = good.replace(from, to);
        let (status, log) = Envoy::run_to_exit(&bad, Duration::from_secs(30)).await;
        let status =
            status.unwrap_or_else(|| panic!("envoy kept running with a bad config:\n{log}"));
        assert!(!status.success(), "envoy exited 0 with a bad config");
        assert!(
            log.contains(message),
            "log does not name the problem {message:?}:\n{log}"
        );
        assert!(
            !log.contains("sh0rt-s3cret"),
            "the token is in the log:\n{log}"
        );
    }
}

/// Path prefix and authority rewrites, with matches on path and method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_path_and_authority_for_matching_requests() {
    let plugin = r#"{
      "experiments": [{
        "name": "ranker",
        "match": {"path_prefix": "/v2/models/ranker/", "methods": ["POST"]},
        "variants": [
          {"name": "control", "weight": 1, "cluster": "ranker_v1", "path_prefix": "/v2/models/ranker/versions/1/"},
          {"name": "treatment", "weight": 1, "cluster": "ranker_v2", "path_prefix": "/v2/models/ranker/versions/2/", "authority": "ranker-v2.internal"}
        ]}]}"#;
    let demo = start_demo(|yaml| with_plugin_json(&yaml, plugin)).await;
    assert_eq!(
        plugin_json(&demo.yaml)
            .split_whitespace()
            .collect::<String>(),
        plugin.split_whitespace().collect::<String>()
    );
    let mut client = Client::new(demo.proxy);
    let mut seen = HashMap::new();
    for i in 0..200 {
        let id = format!("rw-{i}");
        let r = client
            .send(
                "POST",
                "/v2/models/ranker/infer?trace=1",
                &[("x-user-id", id.as_bytes())],
            )
            .await
            .json();
        let variant = r["headers"]["x-abmesh-ranker"]
            .as_str()
            .unwrap()
            .to_string();
        let (upstream, path, authority) = match variant.as_str() {
            "control" => (
                "v1",
                "/v2/models/ranker/versions/1/infer?trace=1",
                "abmesh.test",
            ),
            _ => (
                "v2",
                "/v2/models/ranker/versions/2/infer?trace=1",
                "ranker-v2.internal",
            ),
        };
        assert_eq!(r["upstream"], upstream, "{r}");
        assert_eq!(r["path"], path, "{r}");
        assert_eq!(r["authority"], authority, "{r}");
        *seen.entry(variant).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both variants seen: {seen:?}");
    // A GET does not match: untouched, default route.
    let r = client
        .get("/v2/models/ranker/infer", &[("x-user-id", b"rw-1")])
        .await
        .json();
    assert_eq!(r["path"], "/v2/models/ranker/infer");
    assert_eq!(r["upstream"], "v1");
    assert!(r["headers"].get("x-abmesh-ranker").is_none());
}

/// With `clear_route_cache: true` the filter also calls Envoy's foreign
/// function; routing is the same and Envoy knows the function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_route_cache_clearing_routes_the_same() {
    let demo = start_demo(|yaml| {
        let json = plugin_json(&yaml).replacen('{', "{\"clear_route_cache\": true,", 1);
        with_plugin_json(&yaml, &json)
    })
    .await;
    assert!(plugin_json(&demo.yaml).contains("\"clear_route_cache\": true"));
    let ids: Vec<Vec<u8>> = (0..200).map(|i| format!("crc-{i}").into_bytes()).collect();
    let expected = cli_assign(&plugin_json(&demo.yaml), &ids, "ranker");
    let mut client = Client::new(demo.proxy);
    for (id, want) in ids.iter().zip(&expected) {
        let body = client.get("/predict", &[("x-user-id", id)]).await.json();
        let upstream = if want.as_deref() == Some("control") {
            "v1"
        } else {
            "v2"
        };
        assert_eq!(body["upstream"], upstream);
    }
    let body = client
        .get("/predict", &[("x-abmesh-cluster", b"ranker_v2")])
        .await
        .json();
    assert_eq!(
        body["upstream"], "v1",
        "client-chosen cluster must be ignored"
    );
    assert!(
        !demo
            .envoy
            .log()
            .contains("no clear_route_cache foreign function"),
        "{}",
        demo.envoy.log()
    );
}
