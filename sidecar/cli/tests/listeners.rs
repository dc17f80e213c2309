//! Two listeners and their credentials (issue 9, DESIGN.md contract 6),
//! through the real `abmesh serve`:
//!
//! * the data plane answers every `/admin/*` route with a 404 that says
//!   where it went; the admin listener serves them;
//! * with `--admin-token-file`, every admin request needs the bearer token
//!   (401 with `WWW-Authenticate: Bearer` otherwise), from loopback too;
//! * `serve` refuses to start with an admin listener beyond loopback and no
//!   token, or a data plane beyond loopback with `--data-dir` and no ingest
//!   token (unless `--allow-unauthenticated-ingest`);
//! * with `--ingest-token-file`, ingestion needs the token, and a batch
//!   without it that carries a `config` changes no definitions; a `config`
//!   that holds a `sidecar.token` is never stored.

mod model_support;

use std::path::Path;
use std::time::Duration;

use abmesh_server::routes::admin_router;
use abmesh_testkit::http::{Client, Response};
use abmesh_testkit::scratch_dir;
use abmesh_testkit::serve::{start_expecting_failure, Server};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "admin-token-4d2f9c1e0b7a";
const INGEST_TOKEN: &str = "ingest-token-8e3a1f5c2d90";

/// The plugin configuration a filter would ship.
const CONFIG: &str = r#"{"experiments":[{"name":"ranker","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}]}]}"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

/// `method path` with optional bearer token and body, on a fresh
/// connection to `port`.
fn call(port: u16, method: &str, path: &str, bearer: Option<&str>, body: &[u8]) -> Response {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    Client::connect(port)
        .send(method, path, &headers, body)
        .unwrap()
}

/// Every admin route with its parameters filled in.
fn admin_routes() -> Vec<(String, String)> {
    admin_router()
        .routes()
        .map(|(m, pattern)| {
            let path = pattern
                .replace("{name}", "ranker")
                .replace("{variant}", "treatment")
                .replace("{version}", "1");
            (m.to_string(), path)
        })
        .collect()
}

/// An exposure batch from one filter instance.
fn batch(seq: u64, config: Option<&str>) -> String {
    let id = abmesh_filter::config_id(config.unwrap_or(CONFIG).as_bytes());
    let config = config.map_or(String::new(), |c| format!(r#""config":{c},"#));
    format!(
        r#"{{"instance":"envoy-1/0/1","seq":{seq},"dropped":0,"config_id":"{id}",{config}"experiments":[{{"name":"ranker","variants":["control","treatment"]}}],"exposures":[[1000,0,0,"u{seq}"],[1000,0,1,"v{seq}"]]}}"#
    )
}

#[test]
fn the_data_plane_answers_404_for_every_admin_route() {
    let dir = scratch_dir("listeners-404");
    let data = dir.path().join("data");
    let server = Server::start(&["--data-dir", data.to_str().unwrap()]);
    let routes = admin_routes();
    assert!(routes.len() >= 11, "{routes:?}");
    for (method, path) in &routes {
        let r = call(server.port, method, path, None, b"");
        assert_eq!(r.status, 404, "data plane {method} {path}: {}", r.text());
        let e = r.error();
        assert!(
            e.contains("served on the admin listener"),
            "{method} {path}: {e}"
        );
        assert!(e.contains("--admin-listen"), "{e}");
        // The admin listener knows the route (whatever it answers, it is
        // not the router's "no endpoint").
        let r = call(server.admin_port, method, path, None, b"");
        assert!(
            !(r.status == 404 && r.text().contains("no endpoint")),
            "admin {method} {path}: {} {}",
            r.status,
            r.text()
        );
    }
    // The data plane still serves its own routes, and the admin listener
    // does not serve them.
    assert_eq!(call(server.port, "GET", "/metrics", None, b"").status, 200);
    assert_eq!(
        call(server.port, "GET", "/v2/health/live", None, b"").status,
        200
    );
    let r = call(server.admin_port, "GET", "/metrics", None, b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = call(server.admin_port, "POST", "/v1/events", None, b"[]");
    assert_eq!(r.status, 404, "{}", r.text());
    // Halting from the data plane does not halt.
    let r = call(
        server.port,
        "POST",
        "/admin/experiments/ranker/variants/treatment/halt",
        None,
        b"",
    );
    assert_eq!(r.status, 404);
    let halts = call(server.admin_port, "GET", "/admin/halts", None, b"");
    assert_eq!(halts.json(), json!([]));
}

#[test]
fn with_an_admin_token_every_admin_request_needs_it() {
    let dir = scratch_dir("listeners-admin-token");
    let token = write(dir.path(), "admin.token", &format!("{ADMIN_TOKEN}\n"));
    let data = dir.path().join("data");
    let cfg = write(dir.path(), "experiments.json", CONFIG);
    let server = Server::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--experiments",
        &cfg,
        "--admin-token-file",
        &token,
    ]);
    assert!(server
        .logs()
        .contains("every request needs the --admin-token-file bearer token"));
    assert!(!server.logs().contains(ADMIN_TOKEN), "the token is logged");
    for (method, path) in admin_routes() {
        for bad in [None, Some("admin-token-4d2f9c1e0b7b"), Some("x")] {
            let r = call(server.admin_port, &method, &path, bad, b"");
            assert_eq!(r.status, 401, "{method} {path} with {bad:?}: {}", r.text());
            let challenge = r.header("www-authenticate").unwrap_or_default().to_owned();
            assert!(
                challenge.starts_with("Bearer realm=\"abmesh-admin\""),
                "{challenge}"
            );
            assert!(r.error().contains("Authorization: Bearer"), "{}", r.text());
            assert!(!r.text().contains(ADMIN_TOKEN));
        }
    }
    // With it: served.
    let r = call(
        server.admin_port,
        "GET",
        "/admin/experiments",
        Some(ADMIN_TOKEN),
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(
        server.admin_port,
        "GET",
        "/admin/experiments/ranker",
        Some(ADMIN_TOKEN),
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A state-changing call without the token changed nothing.
    let halt = "/admin/experiments/ranker/variants/treatment/halt";
    assert_eq!(call(server.admin_port, "POST", halt, None, b"").status, 401);
    let halts = call(
        server.admin_port,
        "GET",
        "/admin/halts",
        Some(ADMIN_TOKEN),
        b"",
    );
    assert_eq!(halts.json(), json!([]));
    let r = call(server.admin_port, "POST", halt, Some(ADMIN_TOKEN), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let halts = call(
        server.admin_port,
        "GET",
        "/admin/halts",
        Some(ADMIN_TOKEN),
        b"",
    );
    assert_eq!(halts.json().as_array().map(Vec::len), Some(1));
    // The admin token is no ingest token: ingestion stays open on loopback.
    let r = call(
        server.port,
        "POST",
        "/v1/events",
        None,
        br#"[{"user":"u","metric":"m"}]"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn serve_refuses_an_open_admin_listener_beyond_loopback() {
    let dir = scratch_dir("listeners-refuse-admin");
    let (code, log) = start_expecting_failure(
        &["--admin-listen", "0.0.0.0:0"],
        &[],
        Duration::from_secs(30),
    )
    .expect("abmesh serve started with an open admin listener on 0.0.0.0");
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("--admin-listen 0.0.0.0:0 is not a loopback address"),
        "{log}"
    );
    assert!(log.contains("--admin-token-file FILE"), "{log}");
    // With a token it starts (and says the token is needed).
    let token = write(dir.path(), "admin.token", ADMIN_TOKEN);
    let server = Server::start(&["--admin-listen", "0.0.0.0:0", "--admin-token-file", &token]);
    let r = call(server.admin_port, "GET", "/admin/models", None, b"");
    assert_eq!(r.status, 401);
    // A token file that holds no usable token is refused, naming the flag.
    for (text, words) in [("", "holds no token"), ("short", "at least 16")] {
        let bad = write(dir.path(), "bad.token", text);
        let (code, log) =
            start_expecting_failure(&["--admin-token-file", &bad], &[], Duration::from_secs(30))
                .expect("started with a bad token file");
        assert_eq!(code, 1, "{log}");
        assert!(
            log.contains("--admin-token-file") && log.contains(words),
            "{log}"
        );
    }
}

#[test]
fn serve_refuses_unauthenticated_ingestion_beyond_loopback() {
    let dir = scratch_dir("listeners-refuse-ingest");
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (code, log) = start_expecting_failure(
        &["--listen", "0.0.0.0:0", "--data-dir", data],
        &[],
        Duration::from_secs(30),
    )
    .expect("abmesh serve started with open ingestion on 0.0.0.0");
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("--listen 0.0.0.0:0 is not a loopback address and --data-dir is given"),
        "{log}"
    );
    assert!(log.contains("--ingest-token-file FILE"), "{log}");
    assert!(log.contains("--allow-unauthenticated-ingest"), "{log}");
    assert!(
        !data_dir_written(dir.path()),
        "refused before opening the log"
    );

    // Without --data-dir there is nothing to ingest: a model host may
    // listen anywhere.
    let server = Server::start(&["--listen", "0.0.0.0:0"]);
    assert_eq!(
        call(server.port, "GET", "/v2/health/live", None, b"").status,
        200
    );
    drop(server);
    // The operator says the mesh authenticates callers.
    let server = Server::start(&[
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        data,
        "--allow-unauthenticated-ingest",
    ]);
    assert!(server
        .logs()
        .contains("ingestion is unauthenticated (--allow-unauthenticated-ingest)"));
    let r = call(
        server.port,
        "POST",
        "/v1/exposures",
        None,
        batch(1, Some(CONFIG)).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    drop(server);
    // With an ingest token.
    let token = write(dir.path(), "ingest.token", INGEST_TOKEN);
    let server = Server::start(&[
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        data,
        "--ingest-token-file",
        &token,
    ]);
    let r = call(server.port, "POST", "/v1/events", None, b"[]");
    assert_eq!(r.status, 401, "{}", r.text());
    drop(server);
    // The two say opposite things.
    let (code, log) = start_expecting_failure(
        &[
            "--ingest-token-file",
            &token,
            "--allow-unauthenticated-ingest",
        ],
        &[],
        Duration::from_secs(30),
    )
    .expect("started with contradicting flags");
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("cannot be used with"), "{log}");
}

fn data_dir_written(dir: &Path) -> bool {
    dir.join("data").exists()
}

/// Where the definitions of `ranker` come from, as its report says (null
/// while there is no such experiment).
fn definitions(admin_port: u16) -> Value {
    let r = call(admin_port, "GET", "/admin/experiments/ranker", None, b"");
    if r.status != 200 {
        return Value::Null;
    }
    r.json()["definitions"].clone()
}

#[test]
fn ingestion_needs_the_token_and_only_an_authenticated_filter_changes_definitions() {
    let dir = scratch_dir("listeners-ingest-token");
    let token = write(dir.path(), "ingest.token", &format!("  {INGEST_TOKEN}\n"));
    let data = dir.path().join("data");
    let server = Server::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--ingest-token-file",
        &token,
    ]);
    assert!(server
        .logs()
        .contains("ingestion needs the --ingest-token-file bearer token"));
    let lsn = || {
        call(server.admin_port, "GET", "/admin/experiments", None, b"").json()["applied_lsn"]
            .clone()
    };
    let before = lsn();
    assert_eq!(
        definitions(server.admin_port),
        Value::Null,
        "nothing defined yet"
    );

    // Without the token (or with another): 401, nothing written, and the
    // configuration the batch carries is not learned.
    for bad in [None, Some("ingest-token-8e3a1f5c2d91"), Some(ADMIN_TOKEN)] {
        let r = call(
            server.port,
            "POST",
            "/v1/exposures",
            bad,
            batch(1, Some(CONFIG)).as_bytes(),
        );
        assert_eq!(r.status, 401, "{bad:?}: {}", r.text());
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer realm=\"abmesh-ingest\""));
        assert_eq!(
            r.header("connection"),
            Some("close"),
            "the unread body ends the connection"
        );
        let r = call(
            server.port,
            "POST",
            "/v1/events",
            bad,
            br#"[{"user":"u1","metric":"m"}]"#,
        );
        assert_eq!(r.status, 401, "{}", r.text());
    }
    // A doubled slash is routed like a single one, and gated like one.
    for path in ["//v1/events", "/v1//events", "/v1/events/"] {
        let r = call(
            server.port,
            "POST",
            path,
            None,
            br#"[{"user":"u1","metric":"m"}]"#,
        );
        assert_eq!(r.status, 401, "{path}: {}", r.text());
    }
    assert_eq!(lsn(), before, "a refused request wrote nothing");
    assert_eq!(
        definitions(server.admin_port),
        Value::Null,
        "and defined nothing"
    );

    // With it: the batch and its configuration are taken.
    let r = call(
        server.port,
        "POST",
        "/v1/exposures",
        Some(INGEST_TOKEN),
        batch(1, Some(CONFIG)).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(definitions(server.admin_port), "filter config");
    let r = call(
        server.port,
        "POST",
        "/v1/events",
        Some(INGEST_TOKEN),
        br#"[{"user":"u1","metric":"m"}]"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // A configuration that carries a `sidecar.token` is refused whole
    // (authenticated or not): the sidecar stores no credentials.
    let leaky = format!(
        r#"{{"sidecar":{{"cluster":"abmesh_sidecar","token":"{INGEST_TOKEN}"}},"experiments":[{{"name":"ranker","variants":[{{"name":"control","weight":1}},{{"name":"treatment","weight":3}}]}}]}}"#
    );
    let at = lsn();
    let r = call(
        server.port,
        "POST",
        "/v1/exposures",
        Some(INGEST_TOKEN),
        batch(2, Some(&leaky)).as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.error().starts_with("config.sidecar.token: "),
        "{}",
        r.text()
    );
    assert!(!r.text().contains(INGEST_TOKEN));
    assert_eq!(lsn(), at, "nothing of it was written");
    drop(server);
    for entry in std::fs::read_dir(&data).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap();
        assert!(
            !bytes
                .windows(INGEST_TOKEN.len())
                .any(|w| w == INGEST_TOKEN.as_bytes()),
            "{} holds the token",
            entry.path().display()
        );
    }
}

/// Triton's model control (`/v2/repository/models/{name}/load|unload`,
/// issue 12) follows the admin rules: the data plane answers 404 naming
/// the admin listener, the admin listener needs its token, and a refused
/// call changes nothing.
#[test]
fn triton_load_and_unload_follow_the_admin_rules() {
    require_onnxruntime!();
    let dir = scratch_dir("listeners-triton-control");
    let token = write(dir.path(), "admin.token", ADMIN_TOKEN);
    let repo = model_support::example_repo();
    let server = Server::start(&[
        "--models",
        repo.to_str().unwrap(),
        "--device",
        "cpu",
        "--admin-token-file",
        &token,
    ]);
    let ready = || call(server.port, "GET", "/v2/models/scorer/ready", None, b"").status;
    assert_eq!(ready(), 200);
    let unload = "/v2/repository/models/scorer/unload";
    let load = "/v2/repository/models/scorer/load";
    for path in [unload, load, "//v2/repository/models/scorer/unload/"] {
        let r = call(server.port, "POST", path, Some(ADMIN_TOKEN), b"{}");
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(
            r.error().contains("served on the admin listener"),
            "{}",
            r.text()
        );
    }
    for bad in [None, Some("admin-token-4d2f9c1e0b7b")] {
        let r = call(server.admin_port, "POST", unload, bad, b"{}");
        assert_eq!(r.status, 401, "{bad:?}: {}", r.text());
    }
    assert_eq!(ready(), 200, "a refused unload unloaded");
    // The read-only repository index stays on the data plane.
    let r = call(server.port, "POST", "/v2/repository/index", None, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(server.admin_port, "POST", unload, Some(ADMIN_TOKEN), b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["unloaded_versions"], json!([1, 2, 3]));
    assert_eq!(ready(), 404);
    let r = call(server.admin_port, "POST", load, Some(ADMIN_TOKEN), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["loaded_versions"], json!([1, 2, 3]));
    assert_eq!(ready(), 200);
}
