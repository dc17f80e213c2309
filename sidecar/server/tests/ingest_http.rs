//! `POST /v1/events` and `POST /v1/exposures` over real HTTP: validation
//! errors that name the event and field, all-or-nothing batches, body
//! limits, de-duplication of events and batches, NDJSON, and outcomes that
//! arrive before their exposures.

use std::sync::Arc;

use abmesh_eval::aggregate::Definitions;
use abmesh_server::local::{LocalOptions, LocalServer};
use abmesh_testkit::http::Client;
use serde_json::{json, Value};

const CONFIG: &str = r#"{"experiments":[{"name":"ranker","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}]}]}"#;

/// The server, a client of its data plane and one of its admin listener.
fn start(dir: &std::path::Path, body_limit: Option<usize>) -> (LocalServer, Client, Client) {
    let s = LocalServer::start(
        dir,
        LocalOptions {
            definitions: Some(Arc::new(Definitions::from_json(CONFIG.as_bytes()).unwrap())),
            body_limit,
            ..LocalOptions::default()
        },
    )
    .unwrap();
    let c = Client::new(&s.url).unwrap();
    let a = Client::new(&s.admin_url).unwrap();
    (s, c, a)
}

fn post(c: &mut Client, path: &str, body: &str) -> (u16, Value) {
    let r = c.post(path, "application/json", body.as_bytes()).unwrap();
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

/// `GET /admin/experiments` on the admin listener.
fn listing(admin: &mut Client) -> Value {
    let r = admin.get("/admin/experiments", &[]).unwrap();
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).unwrap()
}

fn exposures(seq: u64, rows: Value) -> String {
    json!({"instance": "envoy-1/0/1", "seq": seq, "dropped": 0,
           "experiments": [{"name": "ranker", "variants": ["control", "treatment"]}],
           "exposures": rows})
    .to_string()
}

#[test]
fn invalid_batches_are_refused_whole_with_the_index_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut c, mut a) = start(dir.path(), None);
    let before = listing(&mut a);

    let body = r#"[{"user":"a","metric":"m"},{"user":"b","metric":"m"},{"user":"c","metric":"m","value":2},{"user":"d","metric":"m","value":"NaN"}]"#;
    let (status, v) = post(&mut c, "/v1/events", body);
    assert_eq!(status, 400);
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.starts_with("events[3].value: invalid type: string \"NaN\", expected a finite number"),
        "{msg}"
    );

    let (status, v) = post(&mut c, "/v1/events", "{\"user\":\"a\",\"metric\":\"m\"}\n{\"user\":\"a\",\"metric\":\"m\",\"experiment\":\"Bad Name\"}\n");
    assert_eq!(status, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("events[1].experiment: must be 1 to 64 characters"),
        "{v}"
    );

    let (status, v) = post(
        &mut c,
        "/v1/events",
        r#"[{"user":"a","metric":"m","valeu":1}]"#,
    );
    assert_eq!(status, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `valeu`"),
        "{v}"
    );

    let (status, v) = post(&mut c, "/v1/events", r#"[{"user":"a","metric":"m"}"#);
    assert_eq!(status, 400, "{v}");

    let (status, v) = post(
        &mut c,
        "/v1/exposures",
        &exposures(1, json!([[1, 0, 0, "u1"], [1, 0, 5, "u2"]])),
    );
    assert_eq!(status, 400);
    assert_eq!(
        v["error"],
        "exposures[1][2]: variant index 5 is out of range (experiment \"ranker\" lists 2)"
    );
    let (status, v) = post(
        &mut c,
        "/v1/exposures",
        &exposures(1, json!([[1, 3, 0, "u1"]])),
    );
    assert_eq!(status, 400);
    assert!(
        v["error"].as_str().unwrap().starts_with("exposures[0][1]"),
        "{v}"
    );

    // Nothing of any refused batch was written or counted.
    let after = listing(&mut a);
    assert_eq!(after["ingest"], before["ingest"]);
    assert_eq!(after["applied_lsn"], before["applied_lsn"]);
    assert_eq!(after["ingest"]["events"], 0);
}

#[test]
fn bodies_over_the_limit_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut c, _) = start(dir.path(), Some(8 << 10));
    let events: Vec<Value> = (0..400)
        .map(|i| json!({"user": format!("u{i}"), "metric": "m"}))
        .collect();
    let body = serde_json::to_string(&events).unwrap();
    assert!(body.len() > 8 << 10);
    let r = c
        .post("/v1/events", "application/json", body.as_bytes())
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.text().contains("over the limit of 8192 bytes"),
        "{}",
        r.text()
    );
    // The connection (or a new one) still works, and a batch under the
    // limit goes through.
    let small = serde_json::to_string(&events[..20]).unwrap();
    let (status, v) = post(&mut c, "/v1/events", &small);
    assert_eq!((status, v["accepted"].as_u64()), (200, Some(20)));
}

#[test]
fn events_and_batches_are_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, mut c, mut a) = start(dir.path(), None);
    let body = r#"[{"user":"a","metric":"buy","value":3,"id":"o-1"},{"user":"a","metric":"buy","value":3,"id":"o-1"},{"user":"b","metric":"buy","value":4,"id":"o-2"},{"user":"b","metric":"click"}]"#;
    let (status, v) = post(&mut c, "/v1/events", body);
    assert_eq!(
        (status, v.clone()),
        (200, json!({"accepted": 3, "duplicates": 1}))
    );
    let (_, v) = post(&mut c, "/v1/events", body);
    assert_eq!(
        v,
        json!({"accepted": 1, "duplicates": 3}),
        "events without an id are never duplicates"
    );

    let batch = exposures(7, json!([[1000, 0, 0, "a"], [1000, 0, 1, "b"]]));
    let (_, v) = post(&mut c, "/v1/exposures", &batch);
    assert_eq!(
        v,
        json!({"accepted": 2, "duplicate_batch": false, "halted": [], "config_needed": false})
    );
    let (_, v) = post(&mut c, "/v1/exposures", &batch);
    assert_eq!(
        v,
        json!({"accepted": 0, "duplicate_batch": true, "halted": [], "config_needed": false})
    );
    let l = listing(&mut a);
    assert_eq!(l["ingest"]["duplicate_batches"], 1);
    assert_eq!(l["ingest"]["exposure_rows"], 2);
}

#[test]
fn ndjson_and_outcomes_before_their_exposures() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut c, mut a) = start(dir.path(), None);
    // Outcomes first: users are not exposed yet, so nothing counts.
    let nd = "{\"user\":\"u1\",\"metric\":\"buy\",\"value\":10}\n\n{\"user\":\"u2\",\"metric\":\"buy\",\"value\":20,\"experiment\":\"ranker\"}\r\n{\"user\":\"u3\",\"metric\":\"buy\",\"value\":30,\"timestamp\":\"2026-05-01T12:00:00Z\"}\n";
    let (status, v) = post(&mut c, "/v1/events", nd);
    assert_eq!((status, v["accepted"].as_u64()), (200, Some(3)));
    let r: Value =
        serde_json::from_slice(&a.get("/admin/experiments/ranker", &[]).unwrap().body).unwrap();
    assert!(r["metrics"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(r["decision"]["decision"], "keep-running");

    // The exposures arrive a tick later; u4 is exposed without outcomes.
    let (status, _) = post(
        &mut c,
        "/v1/exposures",
        &exposures(
            1,
            json!([
                [5000, 0, 0, "u1"],
                [5000, 0, 0, "u2"],
                [5000, 0, 1, "u3"],
                [5000, 0, 1, "u4"]
            ]),
        ),
    );
    assert_eq!(status, 200);
    let r: Value =
        serde_json::from_slice(&a.get("/admin/experiments/ranker", &[]).unwrap().body).unwrap();
    let buy = &r["metrics"][0];
    assert_eq!(buy["name"], "buy");
    assert_eq!(buy["kind"], "value");
    let by: std::collections::HashMap<&str, &Value> = buy["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["variant"].as_str().unwrap(), v))
        .collect();
    assert_eq!(by["control"]["users"], 2);
    assert_eq!(by["control"]["mean"], 15.0);
    // u4 counts in the denominator with 0.
    assert_eq!(by["treatment"]["users"], 2);
    assert_eq!(by["treatment"]["mean"], 15.0);
    assert_eq!(by["treatment"]["converted"], 1);

    // Unknown experiments are a 404 that names what is known.
    let r = a.get("/admin/experiments/nope", &[]).unwrap();
    assert_eq!(r.status, 404);
    assert!(r.text().contains("known: ranker"), "{}", r.text());
    // An empty body is fine and writes nothing.
    let lsn = listing(&mut a)["applied_lsn"].clone();
    let (status, v) = post(&mut c, "/v1/events", "\n");
    assert_eq!((status, v["accepted"].as_u64()), (200, Some(0)));
    assert_eq!(listing(&mut a)["applied_lsn"], lsn);
    drop((c, a));
    s.stop();

    // Everything is still there after a restart.
    let (_s, _, mut a) = start(dir.path(), None);
    let r: Value =
        serde_json::from_slice(&a.get("/admin/experiments/ranker", &[]).unwrap().body).unwrap();
    assert_eq!(r["metrics"][0]["variants"][0]["users"], 2);
    assert_eq!(r["metrics"][0]["variants"][1]["mean"], 15.0);
}
