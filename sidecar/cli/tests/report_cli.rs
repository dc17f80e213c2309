//! `abmesh report NAME` (the real binary): from a running sidecar, from a
//! data directory, and from exported states merged offline.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use abmesh_eval::aggregate::Definitions;
use abmesh_server::auth::Token;
use abmesh_server::local::{LocalOptions, LocalServer};
use abmesh_testkit::http::Client;
use serde_json::{json, Value};

const CONFIG: &str = r#"{"experiments":[{"name":"ranker","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}]}]}"#;

fn start(dir: &Path) -> LocalServer {
    LocalServer::start(
        dir,
        LocalOptions {
            definitions: Some(Arc::new(Definitions::from_json(CONFIG.as_bytes()).unwrap())),
            ..LocalOptions::default()
        },
    )
    .unwrap()
}

/// Users `from..to`, half in each variant, with purchases.
fn feed(url: &str, from: usize, to: usize, seq: u64) {
    let mut c = Client::new(url).unwrap();
    let rows: Vec<Value> = (from..to)
        .map(|u| json!([1_000_000 + u as i64 * 1000, 0, u % 2, format!("u{u}")]))
        .collect();
    let body = json!({"instance": "i", "seq": seq, "experiments": [{"name": "ranker", "variants": ["control", "treatment"]}], "exposures": rows});
    assert_eq!(
        c.post(
            "/v1/exposures",
            "application/json",
            body.to_string().as_bytes()
        )
        .unwrap()
        .status,
        200
    );
    let events: Vec<Value> = (from..to)
        .filter(|u| u % 3 == 0)
        .map(|u| json!({"user": format!("u{u}"), "metric": "purchase", "value": (u % 17) as f64 + if u % 2 == 1 { 3.0 } else { 0.0 }}))
        .collect();
    let r = c
        .post(
            "/v1/events",
            "application/json",
            Value::Array(events).to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200);
}

fn abmesh(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_abmesh"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn report_from_a_server_a_directory_and_merged_states() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("experiments.json");
    std::fs::write(&cfg, CONFIG).unwrap();
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = start(&da);
    feed(&a.url, 0, 800, 1);

    // From the running sidecar's admin listener.
    let (ok, text, err) = abmesh(&["report", "ranker", "--url", &a.admin_url]);
    assert!(ok, "{err}");
    assert!(text.starts_with("Experiment ranker: "), "{text}");
    assert!(
        text.contains("purchase [primary] (value metric, higher is better)"),
        "{text}"
    );
    assert!(
        text.contains("treatment vs control:") && text.contains("always-valid interval"),
        "{text}"
    );
    let (ok, json_out, err) = abmesh(&[
        "report",
        "ranker",
        "--url",
        &a.admin_url,
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let live: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(live["variants"][0]["users"], 400);
    let (ok, _, err) = abmesh(&["report", "nope", "--url", &a.admin_url]);
    assert!(!ok && err.contains("no experiment"), "{err}");
    let (ok, _, err) = abmesh(&["report", "ranker", "--url", "http://127.0.0.1:9"]);
    assert!(
        !ok && err.contains("is `abmesh serve --data-dir ...` running"),
        "{err}"
    );
    // The data-plane port does not serve reports, and says where they are.
    let (ok, _, err) = abmesh(&["report", "ranker", "--url", &a.url]);
    assert!(
        !ok && err.contains("404") && err.contains("served on the admin listener"),
        "{err}"
    );

    // Two sidecars' exported states, merged offline = one with everything.
    let b = start(&db);
    feed(&b.url, 800, 1500, 1);
    let (sa, sb) = (tmp.path().join("a.state"), tmp.path().join("b.state"));
    for (srv, f) in [(&a, &sa), (&b, &sb)] {
        let r = Client::new(&srv.admin_url)
            .unwrap()
            .get("/admin/state", &[])
            .unwrap();
        assert_eq!(r.status, 200);
        std::fs::write(f, &r.body).unwrap();
    }
    let all = start(&tmp.path().join("all"));
    feed(&all.url, 0, 800, 1);
    feed(&all.url, 800, 1500, 2);
    let want: Value = serde_json::from_slice(
        &Client::new(&all.admin_url)
            .unwrap()
            .get("/admin/experiments/ranker", &[])
            .unwrap()
            .body,
    )
    .unwrap();
    let (ok, out, err) = abmesh(&[
        "report",
        "ranker",
        "--format",
        "json",
        "--experiments",
        cfg.to_str().unwrap(),
        "--state",
        sa.to_str().unwrap(),
        "--state",
        sb.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let merged: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(merged["variants"], want["variants"]);
    assert_eq!(merged["decision"], want["decision"]);
    assert_eq!(
        merged["metrics"][0]["variants"],
        want["metrics"][0]["variants"]
    );

    // Offline from the data directories themselves (the servers stopped).
    a.stop();
    b.stop();
    let (ok, out, err) = abmesh(&[
        "report",
        "ranker",
        "--experiments",
        cfg.to_str().unwrap(),
        "--data-dir",
        da.to_str().unwrap(),
        "--data-dir",
        db.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let offline: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(offline["variants"], want["variants"]);
    let (ok, out, err) = abmesh(&["report", "ranker", "--data-dir", da.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("control (control)") && out.contains("400"),
        "{out}"
    );
}

#[test]
fn report_from_a_sidecar_whose_admin_needs_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let (good, bad) = (
        tmp.path().join("admin.token"),
        tmp.path().join("other.token"),
    );
    std::fs::write(&good, "admin-token-0123456789abcdef\n").unwrap();
    std::fs::write(&bad, "not-the-admin-token-0123456789").unwrap();
    let server = LocalServer::start(
        &tmp.path().join("data"),
        LocalOptions {
            definitions: Some(Arc::new(Definitions::from_json(CONFIG.as_bytes()).unwrap())),
            admin_token: Some(Token::from_file("--admin-token-file", &good).unwrap()),
            ..LocalOptions::default()
        },
    )
    .unwrap();
    feed(&server.url, 0, 100, 1);
    let url = server.admin_url.as_str();

    let (ok, _, err) = abmesh(&["report", "ranker", "--url", url]);
    assert!(
        !ok && err.contains("401") && err.contains("--token-file FILE"),
        "{err}"
    );
    let (ok, _, err) = abmesh(&[
        "report",
        "ranker",
        "--url",
        url,
        "--token-file",
        bad.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("401") && err.contains("is not it"),
        "{err}"
    );
    let (ok, text, err) = abmesh(&[
        "report",
        "ranker",
        "--url",
        url,
        "--token-file",
        good.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(text.starts_with("Experiment ranker: "), "{text}");
    // A token file that cannot be a token is refused before any request.
    let short = tmp.path().join("short.token");
    std::fs::write(&short, "abc").unwrap();
    let (ok, _, err) = abmesh(&[
        "report",
        "ranker",
        "--url",
        url,
        "--token-file",
        short.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("--token-file") && err.contains("at least 16"),
        "{err}"
    );
}
