//! The closed loop, sidecar side, over real HTTP on a real data directory:
//! definitions learned from a filter's `config` (and replaced live by a new
//! one), `config_needed`, health rows, guardrail halts returned in every
//! batch response, manual halts and lifts, metric overrides, and the 400s
//! of malformed health and config fields.

use abmesh_server::local::{LocalOptions, LocalServer};
use abmesh_testkit::http::{Client, Response};
use serde_json::{json, Value};

/// control is v2, not the first variant: reports must take it from the
/// configuration.
const CONFIG: &str = r#"{"experiments":[{"name":"scorer","control":"v2","variants":[{"name":"v1","weight":1},{"name":"v2","weight":1},{"name":"v3","weight":1}],
  "guardrails":{"alpha":0.01,"min_responses":100,"error_rate":{"max_increase":0.01}}}]}"#;

/// The same experiment with a fourth variant, a metric guardrail, and a
/// second experiment.
const CONFIG2: &str = r#"{"experiments":[{"name":"scorer","control":"v2","variants":[{"name":"v1","weight":1},{"name":"v2","weight":1},{"name":"v3","weight":1},{"name":"v4","weight":1}],
  "guardrails":{"alpha":0.01,"min_responses":100,"error_rate":{"max_increase":0.01},"metrics":[{"metric":"purchase","max_decrease_percent":5}]}},
  {"name":"ranker","variants":[{"name":"a","weight":1},{"name":"b","weight":1}]}]}"#;

fn id(config: &str) -> String {
    abmesh_filter::config_id(config.as_bytes())
}

/// Clients of the two listeners; [`Clients::to`] picks the one that
/// serves a path: `/admin/*` on the admin listener, the rest (ingestion,
/// `/metrics`) on the data plane.
struct Clients {
    data: Client,
    admin: Client,
}

impl Clients {
    fn to(&mut self, path: &str) -> &mut Client {
        if path.starts_with("/admin/") {
            &mut self.admin
        } else {
            &mut self.data
        }
    }

    fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        self.to(path).get(path, headers)
    }
}

fn start(dir: &std::path::Path) -> (LocalServer, Clients) {
    let s = LocalServer::start(dir, LocalOptions::default()).unwrap();
    let c = Clients {
        data: Client::new(&s.url).unwrap(),
        admin: Client::new(&s.admin_url).unwrap(),
    };
    (s, c)
}

fn post(c: &mut Clients, path: &str, body: &str) -> (u16, Value) {
    let r = c
        .to(path)
        .post(path, "application/json", body.as_bytes())
        .unwrap();
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

fn get(c: &mut Clients, path: &str) -> Value {
    let r = c.get(path, &[]).unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// A batch as the filter writes it: `config` embedded verbatim when given.
fn batch(
    seq: u64,
    config_id: &str,
    config: Option<&str>,
    experiments: Value,
    exposures: Value,
    health: Value,
) -> String {
    let config = config.map_or(String::new(), |c| format!(r#""config":{c},"#));
    format!(
        r#"{{"instance":"envoy-1/0/1","seq":{seq},"dropped":0,"config_id":"{config_id}",{config}"experiments":{experiments},"exposures":{exposures},"health":{health}}}"#
    )
}

fn scorer3() -> Value {
    json!([{"name": "scorer", "variants": ["v1", "v2", "v3"]}])
}

/// `[e, v, requests, [classes], [buckets]]`: `responses` sampled, `errors`
/// of them 5xx, all in latency bucket `bucket`.
fn health(e: usize, v: usize, requests: u64, responses: u64, errors: u64, bucket: usize) -> Value {
    let mut lat = vec![0u64; 25];
    lat[bucket] = responses;
    json!([e, v, requests, [0, responses - errors, 0, 0, errors], lat])
}

fn report(c: &mut Clients, name: &str) -> Value {
    get(c, &format!("/admin/experiments/{name}"))
}

fn metric(c: &mut Clients, name: &str) -> f64 {
    let text = c.get("/metrics", &[]).unwrap().text();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[test]
fn a_learned_config_gives_variants_and_control_and_config_needed_says_when_to_send_it() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut c) = start(dir.path());
    let cid = id(CONFIG);

    // An unknown id without the config: the sidecar asks for it, and still
    // takes the exposures.
    let (status, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(
            1,
            &cid,
            None,
            scorer3(),
            json!([[1000, 0, 2, "u0"]]),
            json!([]),
        ),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"accepted": 1, "duplicate_batch": false, "halted": [], "config_needed": true})
    );
    let r = report(&mut c, "scorer");
    assert_eq!(r["definitions"], "exposures");
    assert_eq!(
        r["control"], "v1",
        "without definitions: the batch's first variant"
    );

    // The filter sends it: stored, and the reports follow it.
    let rows: Vec<Value> = (1..=300)
        .map(|u| json!([2000 + u, 0, u % 3, format!("u{u}")]))
        .collect();
    let (status, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(2, &cid, Some(CONFIG), scorer3(), json!(rows), json!([])),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["config_needed"], false);
    let r = report(&mut c, "scorer");
    assert_eq!(r["definitions"], "filter config");
    assert_eq!(r["control"], "v2");
    let variants: Vec<&str> = r["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variants, ["v1", "v2", "v3"]);
    assert!(r["variants"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| (v["expected_share"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9));
    // Exposures after the config are checked against its assignment core.
    let mismatches_after = r["data_quality"]["assignment_mismatches"].as_u64().unwrap();
    assert!(
        mismatches_after > 0,
        "rows were assigned u % 3, not by hash"
    );
    assert!(
        r["guardrails"]["checks"].as_array().unwrap().len() == 2,
        "{r}"
    );

    // Known now: no need to send it again.
    let (_, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(3, &cid, None, scorer3(), json!([]), json!([])),
    );
    assert_eq!(v["config_needed"], false);
    // Sending it again with the same id writes no Config record.
    let lsn = get(&mut c, "/admin/experiments")["applied_lsn"]
        .as_u64()
        .unwrap();
    post(
        &mut c,
        "/v1/exposures",
        &batch(4, &cid, Some(CONFIG), scorer3(), json!([]), json!([])),
    );
    assert_eq!(
        get(&mut c, "/admin/experiments")["applied_lsn"]
            .as_u64()
            .unwrap(),
        lsn + 1
    );
    // An id never seen: asked for.
    let (_, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(5, "0123456789abcdef", None, scorer3(), json!([]), json!([])),
    );
    assert_eq!(v["config_needed"], true);
    drop(c);
    s.stop();

    // After a restart (from the final snapshot) the learned definitions
    // and the known ids are still there.
    let (s, mut c) = start(dir.path());
    assert_eq!(s.recovery.replayed, 0, "restarted from the snapshot");
    let r = report(&mut c, "scorer");
    assert_eq!(
        (r["definitions"].clone(), r["control"].clone()),
        (json!("filter config"), json!("v2"))
    );
    let (_, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(6, &cid, None, scorer3(), json!([]), json!([])),
    );
    assert_eq!(v["config_needed"], false);
    drop(c);
    s.stop();

    // And replaying the log without any snapshot gives the same.
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("snapshot-")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    let (s, mut c) = start(dir.path());
    assert!(s.recovery.replayed >= 6);
    let r2 = report(&mut c, "scorer");
    assert_eq!(r2["control"], "v2");
    assert_eq!(r2["variants"], r["variants"]);
}

#[test]
fn a_new_config_with_a_new_variant_is_picked_up_live() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut c) = start(dir.path());
    let (id1, id2) = (id(CONFIG), id(CONFIG2));
    assert_ne!(id1, id2);
    post(
        &mut c,
        "/v1/exposures",
        &batch(1, &id1, Some(CONFIG), scorer3(), json!([]), json!([])),
    );
    let r = report(&mut c, "scorer");
    assert_eq!(r["variants"].as_array().unwrap().len(), 3);
    assert!(c.get("/admin/experiments/ranker", &[]).unwrap().status == 404);

    // A filter reconfigured: its first batch brings the new config.
    let defs = abmesh_eval::aggregate::Definitions::from_json(CONFIG2.as_bytes()).unwrap();
    let mut buf = defs.decisions();
    let names = ["v1", "v2", "v3", "v4"];
    let rows: Vec<Value> = (0..400)
        .map(|u| {
            let user = format!("user-{u}");
            let v = defs.assign(&user, 0, &mut buf).unwrap();
            json!([
                5000 + u,
                0,
                names.iter().position(|n| *n == v).unwrap(),
                user
            ])
        })
        .collect();
    let exps = json!([{"name": "scorer", "variants": names}]);
    let (status, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(2, &id2, Some(CONFIG2), exps, json!(rows), json!([])),
    );
    assert_eq!(
        (status, v["config_needed"].clone()),
        (200, json!(false)),
        "{v}"
    );
    let r = report(&mut c, "scorer");
    let users: Vec<(String, u64)> = r["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_owned(),
                v["users"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(users.len(), 4, "{users:?}");
    assert_eq!(users[3].0, "v4");
    assert!(users[3].1 > 50, "{users:?}");
    assert_eq!(users.iter().map(|u| u.1).sum::<u64>(), 400);
    assert_eq!(
        r["data_quality"]["assignment_mismatches"], 0,
        "exposures are checked with the new configuration"
    );
    assert_eq!(
        r["guardrails"]["checks"].as_array().unwrap().len(),
        6,
        "2 rules × 3 treatments"
    );
    // The new experiment is defined (and reported) before any exposure.
    let r = report(&mut c, "ranker");
    assert_eq!(r["definitions"], "filter config");
    // Both ids are known: a filter still on the old config needs not send it.
    let (_, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(3, &id1, None, scorer3(), json!([]), json!([])),
    );
    assert_eq!(v["config_needed"], false);
}

#[test]
fn health_rows_add_up_per_variant() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut c) = start(dir.path());
    let cid = id(CONFIG);
    // Batch indexes are the batch's own: v3 listed first here.
    let exps = json!([{"name": "scorer", "variants": ["v3", "v2"]}]);
    post(
        &mut c,
        "/v1/exposures",
        &batch(
            1,
            &cid,
            Some(CONFIG),
            exps.clone(),
            json!([]),
            json!([health(0, 0, 80, 10, 1, 4), health(0, 1, 40, 5, 0, 2)]),
        ),
    );
    post(
        &mut c,
        "/v1/exposures",
        &batch(
            2,
            &cid,
            None,
            exps,
            json!([]),
            json!([
                health(0, 0, 20, 10, 1, 4),
                health(0, 1, 60, 5, 0, 2),
                health(0, 1, 0, 0, 0, 0)
            ]),
        ),
    );
    let r = report(&mut c, "scorer");
    let h: std::collections::HashMap<&str, &Value> = r["health"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["variant"].as_str().unwrap(), h))
        .collect();
    assert_eq!(h["v3"]["requests"], 100);
    assert_eq!(h["v3"]["responses"], 20);
    assert_eq!(h["v3"]["status"], json!([0, 18, 0, 0, 2]));
    assert!((h["v3"]["error_rate"].as_f64().unwrap() - 0.1).abs() < 1e-12);
    // Bucket 4 is (3 ms, 5 ms]: both percentiles inside it.
    let (p50, p95) = (
        h["v3"]["p50_ms"].as_f64().unwrap(),
        h["v3"]["p95_ms"].as_f64().unwrap(),
    );
    assert!(3.0 < p50 && p50 <= p95 && p95 <= 5.0, "{p50} {p95}");
    assert_eq!(h["v2"]["requests"], 100);
    assert_eq!(h["v2"]["error_rate"], 0.0);
    assert!(h["v2"]["p95_ms"].as_f64().unwrap() <= 2.0);
    assert_eq!(h["v1"]["requests"], 0);
    assert_eq!(h["v1"]["error_rate"], Value::Null);
    // Too few responses for the error-rate rule yet.
    let checks = r["guardrails"]["checks"].as_array().unwrap();
    assert!(
        checks.iter().all(|c| c["status"] == "not_enough_data"),
        "{checks:?}"
    );
    let text = c
        .get("/admin/experiments/scorer?format=text", &[])
        .unwrap()
        .text();
    assert!(text.contains("health (since the last lift)"), "{text}");
    let html = c
        .get("/admin/experiments/scorer?format=html", &[])
        .unwrap()
        .text();
    assert!(
        html.contains("id=health") && html.contains("id=guardrails"),
        "{html}"
    );
}

#[test]
fn a_faulty_variant_is_halted_and_an_operator_can_lift_and_halt() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut c) = start(dir.path());
    let cid = id(CONFIG);
    // v3 fails 40% of its requests; v1 is healthy like the control v2.
    let bad = json!([
        health(0, 0, 1000, 500, 0, 3),
        health(0, 1, 1000, 500, 0, 3),
        health(0, 2, 1000, 500, 200, 3)
    ]);
    let faulty = batch(1, &cid, Some(CONFIG), scorer3(), json!([]), bad);
    let (status, v) = post(&mut c, "/v1/exposures", &faulty);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["halted"],
        json!([{"experiment": "scorer", "variant": "v3"}])
    );
    // Every later response says so, duplicates included.
    let (_, v) = post(&mut c, "/v1/exposures", &faulty);
    assert_eq!(v["duplicate_batch"], true);
    assert_eq!(
        v["halted"],
        json!([{"experiment": "scorer", "variant": "v3"}])
    );
    let (_, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(2, &cid, None, scorer3(), json!([]), json!([])),
    );
    assert_eq!(
        v["halted"],
        json!([{"experiment": "scorer", "variant": "v3"}])
    );

    let halts = get(&mut c, "/admin/halts");
    assert_eq!(halts.as_array().unwrap().len(), 1, "{halts}");
    let h = &halts[0];
    assert_eq!(
        (h["experiment"].as_str(), h["variant"].as_str()),
        (Some("scorer"), Some("v3"))
    );
    assert_eq!(h["source"], "guardrail");
    assert_eq!(h["rule"], "error_rate");
    assert_eq!(h["active"], true);
    assert!(
        h["time_ms"].as_i64().unwrap() > 1_700_000_000_000,
        "receive time"
    );
    assert!(h["message"].as_str().unwrap().contains("5xx share"), "{h}");
    assert!(h["estimate"].as_f64().unwrap() > 0.3);
    // The halted variant is set aside and named first; the others go on
    // (here too early to call).
    let r = report(&mut c, "scorer");
    assert_eq!(r["decision"]["decision"], "keep-running");
    let reason = r["decision"]["reason"].as_str().unwrap();
    assert!(reason.contains("Among the others: Too early"), "{reason}");
    assert!(
        reason.contains("v3 was halted by the error_rate guardrail"),
        "{reason}"
    );
    assert!(reason.contains("routed like the control (v2)"), "{reason}");
    assert_eq!(r["halts"][0]["active"], true);
    let breach: Vec<&Value> = r["guardrails"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "breach")
        .collect();
    assert_eq!(breach.len(), 1);
    assert_eq!(breach[0]["variant"], "v3");
    let listing = get(&mut c, "/admin/experiments");
    assert_eq!(listing["experiments"][0]["halted"], json!(["v3"]));
    assert_eq!(metric(&mut c, "abmesh_guardrail_halts_total"), 1.0);

    // Admin errors.
    let (s, v) = post(&mut c, "/admin/experiments/nope/variants/v3/lift", "");
    assert_eq!(s, 404, "{v}");
    let (s, v) = post(&mut c, "/admin/experiments/scorer/variants/v9/halt", "");
    assert_eq!(s, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("v1, v2, v3"), "{v}");
    let (s, v) = post(&mut c, "/admin/experiments/scorer/variants/v2/halt", "");
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("is the control"),
        "{v}"
    );
    let (s, _) = post(&mut c, "/admin/experiments/scorer/variants/v1/lift", "");
    assert_eq!(s, 409, "v1 is not halted");
    let (s, v) = post(
        &mut c,
        "/admin/experiments/scorer/variants/v3/halt",
        r#"{"reasn": "x"}"#,
    );
    assert_eq!(s, 400, "{v}");

    // Lift: the halt ends, the health window starts again.
    let (s, v) = post(
        &mut c,
        "/admin/experiments/scorer/variants/v3/lift",
        r#"{"reason": "fixed in build 42"}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["changed"], true);
    assert_eq!(v["halted"], json!([]));
    let r = report(&mut c, "scorer");
    assert!(r["health"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["requests"] == 0));
    assert_eq!(r["halts"][0]["active"], false);
    assert_eq!(r["halts"][0]["lift_reason"], "fixed in build 42");
    assert_ne!(r["decision"]["decision"], "stop-harm");
    // Healthy traffic does not halt it again.
    let good = json!([health(0, 1, 1000, 500, 0, 3), health(0, 2, 1000, 500, 0, 3)]);
    let (_, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(3, &cid, None, scorer3(), json!([]), good),
    );
    assert_eq!(v["halted"], json!([]));

    // A manual halt, with its reason.
    let (s, v) = post(
        &mut c,
        "/admin/experiments/scorer/variants/v1/halt",
        r#"{"reason": "pager: scorer v1 OOMs"}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["halted"],
        json!([{"experiment": "scorer", "variant": "v1"}])
    );
    let (s, v) = post(&mut c, "/admin/experiments/scorer/variants/v1/halt", "");
    assert_eq!(
        (s, v["changed"].clone()),
        (200, json!(false)),
        "already halted"
    );
    let halts = get(&mut c, "/admin/halts");
    let manual = &halts[1];
    assert_eq!(
        (
            manual["source"].as_str(),
            manual["rule"].clone(),
            manual["message"].as_str()
        ),
        (Some("manual"), Value::Null, Some("pager: scorer v1 OOMs"))
    );
    let (_, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(4, &cid, None, scorer3(), json!([]), json!([])),
    );
    assert_eq!(
        v["halted"],
        json!([{"experiment": "scorer", "variant": "v1"}])
    );
    assert_eq!(metric(&mut c, "abmesh_guardrail_halts_total"), 2.0);
    assert_eq!(metric(&mut c, "abmesh_guardrail_lifts_total"), 1.0);
    let text = c
        .get("/admin/experiments/scorer?format=text", &[])
        .unwrap()
        .text();
    assert!(text.contains("HALTED, by operator"), "{text}");
}

#[test]
fn a_lifted_metric_guardrail_is_overridden_and_does_not_halt_again() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut c) = start(dir.path());
    let cid = id(CONFIG2);
    let exps = json!([{"name": "scorer", "variants": ["v1", "v2", "v3", "v4"]}]);
    // 3000 users per variant; v4 converts at 20%, the others at 50%.
    let mut rows = Vec::new();
    let mut events = Vec::new();
    for v in 0..4 {
        for u in 0..3000 {
            let user = format!("{v}-{u}");
            rows.push(json!([1000, 0, v, user]));
            let rate = if v == 3 { 5 } else { 2 };
            if u % rate == 0 {
                events.push(json!({"user": user, "metric": "purchase"}));
            }
        }
    }
    let (st, v) = post(
        &mut c,
        "/v1/events",
        &serde_json::to_string(&events).unwrap(),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(1, &cid, Some(CONFIG2), exps.clone(), json!(rows), json!([])),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["halted"],
        json!([{"experiment": "scorer", "variant": "v4"}])
    );
    let halts = get(&mut c, "/admin/halts");
    assert_eq!(halts[0]["rule"], "metric:purchase");

    let (st, _) = post(&mut c, "/admin/experiments/scorer/variants/v4/lift", "");
    assert_eq!(st, 200);
    let (_, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(2, &cid, None, exps.clone(), json!([]), json!([])),
    );
    assert_eq!(
        v["halted"],
        json!([]),
        "the overridden rule does not halt v4 again"
    );
    let r = report(&mut c, "scorer");
    let check = r["guardrails"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["variant"] == "v4" && c["rule"] == "metric:purchase")
        .unwrap()
        .clone();
    assert_eq!(
        (check["status"].as_str(), check["overridden"].as_bool()),
        (Some("breach"), Some(true))
    );
    // A health breach still halts it.
    let bad = json!([
        health(0, 1, 1000, 500, 0, 3),
        health(0, 3, 1000, 500, 250, 3)
    ]);
    let (_, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(3, &cid, None, exps.clone(), json!([]), bad),
    );
    assert_eq!(
        v["halted"],
        json!([{"experiment": "scorer", "variant": "v4"}])
    );
    drop(c);
    s.stop();
    // Overrides and halts survive a restart.
    let (_s, mut c) = start(dir.path());
    let (_, v) = post(
        &mut c,
        "/v1/exposures",
        &batch(4, &cid, None, exps, json!([]), json!([])),
    );
    assert_eq!(
        v["halted"],
        json!([{"experiment": "scorer", "variant": "v4"}])
    );
    let r = report(&mut c, "scorer");
    assert!(r["guardrails"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["variant"] == "v4" && c["overridden"] == true));
}

#[test]
fn malformed_health_and_config_are_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut c) = start(dir.path());
    let cid = id(CONFIG);
    let cases: Vec<(String, &str)> = vec![
        (
            batch(
                1,
                &cid,
                None,
                scorer3(),
                json!([]),
                json!([[0, 0, 5, [0, 1, 0, 0], [1]]]),
            ),
            "health[0][3]: expected 5 status classes, got 4",
        ),
        (
            batch(
                1,
                &cid,
                None,
                scorer3(),
                json!([]),
                json!([[0, 0, 5, [0, 1, 0, 0, 0], [1, 0]]]),
            ),
            "health[0][4]: expected 25 latency buckets, got 2",
        ),
        (
            batch(
                1,
                &cid,
                None,
                scorer3(),
                json!([]),
                json!([health(0, 1, 5, 3, 0, 0), health(0, 3, 5, 3, 0, 0)]),
            ),
            "health[1][1]: variant index 3 is out of range (experiment \"scorer\" lists 3)",
        ),
        (
            batch(
                1,
                &cid,
                None,
                scorer3(),
                json!([]),
                json!([[
                    0,
                    0,
                    5,
                    [0, 2, 0, 0, 0],
                    health(0, 0, 1, 1, 0, 0)[4].clone()
                ]]),
            ),
            "health[0]: the status classes count 2 responses but the latency buckets 1",
        ),
        (
            batch(
                1,
                &cid,
                None,
                scorer3(),
                json!([]),
                json!([[0, 0, -5, [0, 0, 0, 0, 0], []]]),
            ),
            "health[0][2]: invalid value: integer `-5`, expected u64",
        ),
        (
            batch(1, "ABC", None, scorer3(), json!([]), json!([])),
            "config_id: must be 16 lowercase hex digits",
        ),
        (
            batch(
                1,
                &cid.to_uppercase(),
                None,
                scorer3(),
                json!([]),
                json!([]),
            ),
            "config_id: must be 16 lowercase hex digits",
        ),
        (
            batch(
                1,
                &cid,
                Some(r#"{"experiments":[{"name":"scorer","variants":[]}]}"#),
                scorer3(),
                json!([]),
                json!([]),
            ),
            "config: invalid configuration",
        ),
        (
            batch(
                1,
                &cid,
                Some(r#"{"experiments":[],"nonsense":1}"#),
                scorer3(),
                json!([]),
                json!([]),
            ),
            "config: invalid configuration",
        ),
        (
            batch(1, &cid, Some("[1, 2]"), scorer3(), json!([]), json!([])),
            "config: invalid configuration",
        ),
    ];
    for (body, want) in cases {
        let (status, v) = post(&mut c, "/v1/exposures", &body);
        assert_eq!(status, 400, "{body}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.starts_with(want), "{body}\n got: {msg}\nwant: {want}");
    }
    // Nothing was written; an old batch without the new fields still works.
    let l = get(&mut c, "/admin/experiments");
    assert_eq!(l["applied_lsn"], 0);
    let old = json!({"instance": "old/0/1", "seq": 1, "experiments": [{"name": "scorer", "variants": ["a", "b"]}],
        "exposures": [[1, 0, 1, "u"]]})
    .to_string();
    let (status, v) = post(&mut c, "/v1/exposures", &old);
    assert_eq!(
        (status, v),
        (
            200,
            json!({"accepted": 1, "duplicate_batch": false, "halted": [], "config_needed": false})
        )
    );
}
