//! The dynamic-module glue against a fake Envoy (tests/fake): the hooks
//! Envoy calls, the callbacks they make, and that they agree with the core.

mod fake;

use abmesh_filter::Plan;
use abmesh_filter_dynamic as dm;
use abmesh_filter_dynamic::abi::EnvoyBuffer;
use std::ffi::c_void;

fn buf(b: &[u8]) -> EnvoyBuffer {
    EnvoyBuffer {
        ptr: b.as_ptr(),
        length: b.len(),
    }
}

/// A non-null stand-in for Envoy's objects (the fake ignores them).
fn envoy_ptr(n: usize) -> *mut c_void {
    (n * 64) as *mut c_void
}

fn config_new(json: &str) -> *const c_void {
    unsafe {
        dm::envoy_dynamic_module_on_http_filter_config_new(
            envoy_ptr(1),
            buf(b"abmesh"),
            buf(json.as_bytes()),
        )
    }
}

/// One request through the hooks, as Envoy drives them; returns the
/// request-headers status.
fn request(cfg: *const c_void, stream: usize, headers: &[(&str, &[u8])]) -> u32 {
    fake::set_request(headers);
    let fenv = envoy_ptr(1000 + stream);
    let f = unsafe { dm::envoy_dynamic_module_on_http_filter_new(cfg, fenv) };
    assert!(!f.is_null());
    let status = unsafe { dm::envoy_dynamic_module_on_http_filter_request_headers(fenv, f, true) };
    unsafe { dm::envoy_dynamic_module_on_http_filter_response_headers(fenv, f, true) };
    unsafe { dm::envoy_dynamic_module_on_http_filter_stream_complete(fenv, f) };
    unsafe { dm::envoy_dynamic_module_on_http_filter_destroy(f) };
    status
}

const CONFIG: &str = r#"{
  "identity": [{"header": "x-user-id"}, {"cookie": "uid"}],
  "echo_header": "x-abmesh-assignment",
  "experiments": [{
    "name": "ranker",
    "match": {"path_prefix": "/v2/models/ranker/"},
    "variants": [
      {"name": "control", "weight": 1, "cluster": "ranker_v1", "path_prefix": "/v2/models/ranker/versions/1/"},
      {"name": "treatment", "weight": 1, "cluster": "ranker_v2", "path_prefix": "/v2/models/ranker/versions/2/", "authority": "v2.internal"}
    ]}, {
    "name": "banner", "traffic_percent": 50,
    "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]
  }]}"#;

/// The variant `abmesh assign` (the core) gives `user` in each experiment.
fn expected(user: &[u8]) -> Vec<Option<String>> {
    let plan = Plan::from_json(CONFIG.as_bytes()).unwrap();
    let mut d = plan.decisions();
    plan.assign_user(user, &mut d);
    d.assignments()
        .iter()
        .zip(plan.experiments())
        .map(|(a, e)| a.variant().map(|v| e.variants()[v].name().to_string()))
        .collect()
}

fn text(v: Option<Vec<u8>>) -> Option<String> {
    v.map(|v| String::from_utf8(v).unwrap())
}

#[test]
fn program_init_returns_the_pinned_abi_version() {
    let p = dm::envoy_dynamic_module_on_program_init();
    let s = unsafe { std::ffi::CStr::from_ptr(p.cast()) };
    assert_eq!(s.to_str().unwrap(), "v0.2.0");
}

#[test]
fn invalid_configs_are_refused_with_the_field_named() {
    let _g = fake::lock();
    let bad = CONFIG.replace(r#""traffic_percent": 50"#, r#""traffic_percent": 150"#);
    assert!(config_new(&bad).is_null());
    assert!(
        fake::logs().iter().any(|l| l.contains(
            "`experiments[1].traffic_percent` must be a percentage between 0 and 100, got 150"
        )),
        "{:?}",
        fake::logs()
    );
    assert!(config_new("{\"echo_headr\": 1, \"experiments\": []}").is_null());
    assert!(fake::logs()
        .iter()
        .any(|l| l.contains("at `echo_headr`: unknown field")));
    let short = r#"{"sidecar": {"cluster": "s", "token": "sh0rt-s3cret"}, "experiments": [{"name": "e", "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}]}"#;
    assert!(config_new(short).is_null());
    let logs = fake::logs().join("\n");
    assert!(
        logs.contains("`sidecar.token` must be 16 to 4096 bytes long, got 12"),
        "{logs}"
    );
    assert!(!logs.contains("sh0rt-s3cret"));
    // Another filter name is not ours.
    let other = unsafe {
        dm::envoy_dynamic_module_on_http_filter_config_new(
            envoy_ptr(1),
            buf(b"other"),
            buf(CONFIG.as_bytes()),
        )
    };
    assert!(other.is_null());
    assert!(fake::logs()
        .iter()
        .any(|l| l.contains("`filter_name` must be \"abmesh\"")));
    assert_eq!(
        fake::with(|f| f.schedulers),
        0,
        "nothing started for refused configs"
    );
}

#[test]
fn requests_are_assigned_rewritten_and_rerouted_like_the_core_says() {
    let _g = fake::lock();
    let cfg = config_new(CONFIG);
    assert!(!cfg.is_null());
    assert!(fake::logs()[0].starts_with("abmesh: configured 2 experiment(s): ranker, banner"));
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..300 {
        let user = format!("user-{i}");
        let want = expected(user.as_bytes());
        let cleared = fake::with(|f| f.route_cache_cleared);
        let status = request(
            cfg,
            i,
            &[
                (":path", b"/v2/models/ranker/infer?x=1"),
                (":method", b"POST"),
                (":authority", b"front"),
                ("x-user-id", user.as_bytes()),
                // Spoofed: the filter decides these.
                ("x-abmesh-cluster", b"evil"),
                ("x-abmesh-banner", b"b"),
            ],
        );
        assert_eq!(status, 0, "continue");
        let ranker = want[0].clone().expect("ranker is at 100 %");
        assert_eq!(
            text(fake::request_header("x-abmesh-ranker")),
            Some(ranker.clone())
        );
        assert_eq!(
            text(fake::request_header("x-abmesh-banner")),
            want[1],
            "{user}"
        );
        let (cluster, path, authority) = if ranker == "control" {
            (
                "ranker_v1",
                "/v2/models/ranker/versions/1/infer?x=1",
                "front",
            )
        } else {
            (
                "ranker_v2",
                "/v2/models/ranker/versions/2/infer?x=1",
                "v2.internal",
            )
        };
        assert_eq!(
            text(fake::request_header("x-abmesh-cluster")).as_deref(),
            Some(cluster)
        );
        // Written from a copy: the fake poisons its buffers on every set.
        assert_eq!(text(fake::request_header(":path")).as_deref(), Some(path));
        assert_eq!(
            text(fake::request_header(":authority")).as_deref(),
            Some(authority)
        );
        assert_eq!(
            fake::with(|f| f.route_cache_cleared),
            cleared + 1,
            "route re-selected once"
        );
        let echo = match &want[1] {
            Some(b) => format!("ranker={ranker},banner={b}"),
            None => format!("ranker={ranker}"),
        };
        assert_eq!(
            text(fake::response_header("x-abmesh-assignment")),
            Some(echo)
        );
        seen.insert((ranker, want[1].clone()));
    }
    assert_eq!(seen.len(), 6, "every combination: {seen:?}");
    unsafe { dm::envoy_dynamic_module_on_http_filter_config_destroy(cfg) };
}

#[test]
fn identity_from_any_cookie_header_and_untouched_requests_stay_untouched() {
    let _g = fake::lock();
    let cfg = config_new(CONFIG);
    let want = expected(b"cookie-user");
    request(
        cfg,
        1,
        &[
            (":path", b"/v2/models/ranker/infer"),
            ("cookie", b"theme=dark"),
            ("cookie", b"lang=en; uid=cookie-user"),
        ],
    );
    assert_eq!(text(fake::request_header("x-abmesh-ranker")), want[0]);
    // No identity, nothing sent by the client: no change, no route work.
    let before = fake::with(|f| (f.route_cache_cleared, f.setter_calls));
    request(cfg, 2, &[(":path", b"/other"), (":method", b"GET")]);
    assert_eq!(
        fake::with(|f| (f.route_cache_cleared, f.setter_calls)),
        before
    );
    assert_eq!(fake::response_header("x-abmesh-assignment"), None);
    unsafe { dm::envoy_dynamic_module_on_http_filter_config_destroy(cfg) };
}

#[test]
fn missing_identity_reject_answers_400_locally() {
    let _g = fake::lock();
    let cfg = config_new(&CONFIG.replacen('{', r#"{"missing_identity": "reject","#, 1));
    let status = request(cfg, 1, &[(":path", b"/v2/models/ranker/infer")]);
    assert_eq!(status, 1, "stop iteration");
    let (code, body, details) = fake::with(|f| f.local_reply.clone()).expect("a local reply");
    assert_eq!(
        (code, details.as_slice()),
        (400, &b"abmesh_missing_identity"[..])
    );
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("needs a user identity"));
    unsafe { dm::envoy_dynamic_module_on_http_filter_config_destroy(cfg) };
}

const SHIPPING: &str = r#"{
  "sidecar": {"cluster": "abmesh_sidecar", "authority": "side.car", "flush_interval_ms": 10,
              "timeout_ms": 250, "health_sample_every": 1, "token": "0123456789abcdef-token"},
  "experiments": [{"name": "ranker",
    "variants": [{"name": "control", "weight": 1}, {"name": "treatment", "weight": 1}]}]}"#;

fn tick(cfg: *const c_void) {
    unsafe { dm::envoy_dynamic_module_on_http_filter_config_scheduled(envoy_ptr(1), cfg, 0) };
}

fn answer(cfg: *const c_void, id: u64, status: &[u8], body: &[u8]) {
    let k = b":status";
    let headers = [dm::abi::HttpHeader {
        key_ptr: k.as_ptr(),
        key_length: k.len(),
        value_ptr: status.as_ptr(),
        value_length: status.len(),
    }];
    // The body in two chunks, as Envoy may hand it.
    let (a, b) = body.split_at(body.len() / 2);
    let chunks = [buf(a), buf(b)];
    unsafe {
        dm::envoy_dynamic_module_on_http_filter_config_http_callout_done(
            envoy_ptr(1),
            cfg,
            id,
            0,
            headers.as_ptr(),
            1,
            chunks.as_ptr(),
            2,
        )
    };
}

fn users_in(variant: &str, n: usize) -> Vec<String> {
    let plan = Plan::from_json(SHIPPING.as_bytes()).unwrap();
    let mut d = plan.decisions();
    (0..)
        .map(|i| format!("u{i}"))
        .filter(|u| {
            plan.assign_user(u.as_bytes(), &mut d);
            d.assignments()[0]
                .variant()
                .map(|v| plan.experiments()[0].variants()[v].name())
                == Some(variant)
        })
        .take(n)
        .collect()
}

#[test]
fn exposures_and_health_go_out_on_the_tick_and_halts_come_back() {
    let _g = fake::lock();
    let cfg = config_new(SHIPPING);
    assert!(!cfg.is_null());
    assert_eq!(fake::with(|f| f.schedulers), 1);
    let treated = users_in("treatment", 3);
    for (i, u) in treated.iter().enumerate() {
        request(cfg, i, &[(":path", b"/"), ("x-user-id", u.as_bytes())]);
    }
    tick(cfg);
    let (id, body) = fake::with(|f| {
        let c = f.callouts.last().expect("a batch");
        assert_eq!(c.cluster, "abmesh_sidecar");
        assert_eq!(c.timeout_ms, 250);
        let h: std::collections::BTreeMap<_, _> = c.headers.iter().cloned().collect();
        assert_eq!(h[":method"], "POST");
        assert_eq!(h[":path"], "/v1/exposures");
        assert_eq!(h[":authority"], "side.car");
        assert_eq!(h["authorization"], "Bearer 0123456789abcdef-token");
        (c.id, c.body.clone())
    });
    let batch: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(batch["seq"], 0);
    assert!(batch["instance"]
        .as_str()
        .unwrap()
        .starts_with("abmesh-native/"));
    let exposed: Vec<&str> = batch["exposures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[3].as_str().unwrap())
        .collect();
    assert_eq!(
        exposed,
        treated.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(
        batch["health"][0][2], 3,
        "3 requests of ranker/treatment: {}",
        batch["health"]
    );
    assert_eq!(batch["health"][0][3][1], 3, "3 sampled 2xx");
    // The configuration, without the token, until the sidecar has it.
    assert!(batch["config"]["sidecar"].get("token").is_none());
    assert!(!String::from_utf8_lossy(&body).contains("0123456789abcdef-token"));
    // In flight: no second batch on the next tick.
    tick(cfg);
    assert_eq!(fake::with(|f| f.callouts.len()), 1);
    // The sidecar halts treatment: its users go to control from now on.
    answer(
        cfg,
        id,
        b"200",
        br#"{"accepted": 3, "halted": [{"experiment": "ranker", "variant": "treatment"}]}"#,
    );
    assert!(fake::logs()
        .iter()
        .any(|l| l.contains("\"treatment\" halted by the sidecar")));
    request(
        cfg,
        10,
        &[(":path", b"/"), ("x-user-id", treated[0].as_bytes())],
    );
    assert_eq!(
        text(fake::request_header("x-abmesh-ranker")).as_deref(),
        Some("control")
    );
    // Routed like control is not an exposure: the next batch has none.
    tick(cfg);
    let (id, body) = fake::with(|f| {
        (
            f.callouts.len() as u64,
            f.callouts.last().unwrap().body.clone(),
        )
    });
    let batch: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(batch["seq"], 1);
    assert!(batch.get("config").is_none());
    assert_eq!(batch["exposures"], serde_json::json!([]));
    // A failed batch is re-sent as it was, logged once.
    answer(cfg, id, b"503", b"");
    tick(cfg);
    let again = fake::with(|f| f.callouts.last().unwrap().body.clone());
    assert_eq!(again, body);
    assert!(fake::logs()
        .iter()
        .any(|l| l.contains("sidecar batch 1 not taken (status 503)")));
    // The clock thread commits ticks to the scheduler by itself.
    std::thread::sleep(std::time::Duration::from_millis(60));
    assert!(fake::with(|f| f.commits) >= 2);
    unsafe { dm::envoy_dynamic_module_on_http_filter_config_destroy(cfg) };
    assert_eq!(fake::with(|f| f.scheduler_deleted), 1);
    let commits = fake::with(|f| f.commits);
    std::thread::sleep(std::time::Duration::from_millis(40));
    assert_eq!(
        fake::with(|f| f.commits),
        commits,
        "the clock stopped with its configuration"
    );
}

#[test]
fn an_unknown_cluster_is_logged_once_and_requests_go_on() {
    let _g = fake::lock();
    let cfg = config_new(SHIPPING);
    fake::with(|f| f.callout_result = 2);
    tick(cfg);
    tick(cfg);
    let logs = fake::logs();
    let n = logs
        .iter()
        .filter(|l| l.contains("cannot call cluster \"abmesh_sidecar\" (cluster not found)"))
        .count();
    assert_eq!(n, 1, "{logs:?}");
    assert_eq!(request(cfg, 1, &[(":path", b"/"), ("x-user-id", b"u1")]), 0);
    unsafe { dm::envoy_dynamic_module_on_http_filter_config_destroy(cfg) };
}

const BANDIT: &str = r#"{
  "sidecar": {"cluster": "abmesh_sidecar", "flush_interval_ms": 3600000, "health_sample_every": 1},
  "experiments": [{"name": "ranker", "bandit": {"metric": "purchase"},
    "variants": [{"name": "control", "weight": 2}, {"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}]}"#;

#[test]
fn bandit_weights_come_back_to_every_worker_and_exposures_carry_the_period() {
    let _g = fake::lock();
    let cfg = config_new(BANDIT);
    assert!(!cfg.is_null());
    // A user in `a` by the configured weights (a: [50 %, 75 %)) and in `b`
    // by the sidecar's (a: [50 %, 60 %)), and one in control by both.
    let plan = Plan::from_json(BANDIT.as_bytes()).unwrap();
    let mut next = abmesh_filter::Allocation::new(&plan);
    next.set(0, 4, &[0.5, 0.1, 0.4]).unwrap();
    let mut d = plan.decisions();
    let variant = |alloc: &abmesh_filter::Allocation, d: &mut abmesh_filter::Decisions, u: &str| {
        plan.assign_user_with(u.as_bytes(), alloc, d);
        d.assignments()[0].variant().unwrap()
    };
    let configured = abmesh_filter::Allocation::new(&plan);
    let find = |old: usize, new: usize, d: &mut abmesh_filter::Decisions| {
        (0..)
            .map(|i| format!("u{i}"))
            .find(|u| variant(&configured, d, u) == old && variant(&next, d, u) == new)
            .unwrap()
    };
    let (mover, stayer) = (find(1, 2, &mut d), find(0, 0, &mut d));
    let ranker = |cfg, stream, user: &str| {
        request(
            cfg,
            stream,
            &[(":path", b"/"), ("x-user-id", user.as_bytes())],
        );
        text(fake::request_header("x-abmesh-ranker")).unwrap()
    };
    assert_eq!(ranker(cfg, 1, &mover), "a");
    tick(cfg);
    let id = fake::with(|f| f.callouts.last().unwrap().id);
    answer(
        cfg,
        id,
        b"200",
        br#"{"allocations": [{"experiment": "ranker", "period": 4, "weights": {"control": 0.5, "a": 0.1, "b": 0.4}}]}"#,
    );
    let logs = fake::logs();
    let line = logs
        .iter()
        .find(|l| l.contains("bandit period 4"))
        .expect("the period change is logged");
    assert!(
        line.contains("control 50.00%, a 10.00%, b 40.00%; 15.00% of its users change variant"),
        "{line}"
    );
    assert_eq!(ranker(cfg, 2, &mover), "b");
    assert_eq!(ranker(cfg, 3, &stayer), "control");
    // The mover's new exposure is in period 4, and goes out although the
    // same user was shipped in period 0 (the recent-exposures table keys
    // on the period); rows by the configured weights have no 5th element.
    tick(cfg);
    let body = fake::with(|f| f.callouts.last().unwrap().body.clone());
    let batch: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let rows = batch["exposures"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0][3], mover.as_str());
    assert_eq!(
        (rows[0][2].as_u64(), rows[0][4].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!(rows[1][3], stayer.as_str());
    assert_eq!(rows[1][4], 4, "control users too are assigned in period 4");
    // An older period from a lagging replica changes nothing.
    let id = fake::with(|f| f.callouts.last().unwrap().id);
    answer(
        cfg,
        id,
        b"200",
        br#"{"allocations": [{"experiment": "ranker", "period": 3, "weights": {"control": 0.5, "a": 0.4, "b": 0.1}}]}"#,
    );
    assert_eq!(ranker(cfg, 4, &mover), "b");
    unsafe { dm::envoy_dynamic_module_on_http_filter_config_destroy(cfg) };
}
