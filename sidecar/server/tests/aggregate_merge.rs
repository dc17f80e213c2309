//! The aggregates against a brute-force computation of the joining rule,
//! and their exactness under reordering, restart and merging: two sidecars
//! that each saw part of the events (users overlapping) give, once merged,
//! the report one sidecar with every event gives — in process and through
//! `GET /admin/state` + `POST /admin/state/merge`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use abmesh_eval::aggregate::{Definitions, Engine, EngineOptions};
use abmesh_eval::ingest::{parse_exposures, parse_outcomes};
use abmesh_eval::report::{self, Settings};
use abmesh_server::local::{LocalOptions, LocalServer};
use abmesh_testkit::http::Client;
use serde_json::{json, Value};

const CONFIG: &str = r#"{"experiments":[
  {"name":"ranker","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}]},
  {"name":"banner","traffic_percent":60,"variants":[{"name":"blue","weight":1},{"name":"green","weight":1},{"name":"red","weight":2}]}
]}"#;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Debug)]
enum Record {
    Events(String),
    Exposures(String),
}

/// One simulated experiment period: request bodies in arrival order, each
/// with a "group" (a record and its re-sent copy share one, so a split
/// keeps them together).
fn scenario(seed: u64) -> Vec<(usize, Record)> {
    let defs = Definitions::from_json(CONFIG.as_bytes()).unwrap();
    let mut buf = defs.decisions();
    let mut rng = Rng(seed);
    let t0: i64 = 1_777_636_800_000;
    let mut exposures: Vec<Value> = Vec::new();
    let mut events: Vec<Value> = Vec::new();
    for u in 0..1500 {
        let user = format!("user-{u}");
        let t = t0 + rng.below(6 * 3_600_000) as i64;
        for (ei, name) in ["ranker", "banner"].iter().enumerate() {
            let Some(v) = defs.assign(&user, ei, &mut buf) else {
                continue;
            };
            if rng.below(10) == 0 {
                continue; // enrolled but never reached the experiment
            }
            let vi = defs.experiments()[ei]
                .variants
                .iter()
                .position(|x| x == v)
                .unwrap();
            exposures.push(json!([t, ei, vi, user]));
            if rng.below(4) == 0 {
                exposures.push(json!([t + 5000, ei, vi, user])); // repeat exposure
            }
            if rng.below(100) == 0 {
                // A conflicting later exposure (e.g. a config change).
                let other = (vi + 1) % defs.experiments()[ei].variants.len();
                exposures.push(json!([t + 9000, ei, other, user]));
            }
            let _ = name;
        }
        let lift = if defs.assign(&user, 0, &mut buf) == Some("treatment") {
            1.2
        } else {
            1.0
        };
        let cov = rng.unit() * 20.0;
        if rng.below(3) > 0 {
            events.push(json!({"user": user, "metric": "revenue", "covariate": cov}));
        }
        for k in 0..rng.below(4) {
            let mut e = json!({"user": user, "metric": "revenue", "value": (cov * 0.5 + rng.unit() * 30.0) * lift, "id": format!("rev-{u}-{k}")});
            if rng.below(3) == 0 {
                e["experiment"] = json!("ranker");
            }
            events.push(e);
        }
        if rng.unit() < 0.15 * lift {
            for k in 0..1 + rng.below(2) {
                events.push(json!({"user": user, "metric": "signup", "id": format!("su-{u}-{k}")}));
            }
        }
    }
    // Shuffle both streams (outcomes often arrive before exposures).
    for v in [&mut exposures, &mut events] {
        for i in (1..v.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
    let mut records = Vec::new();
    let mut group = 0;
    let mut seq = 0;
    let (mut ie, mut iv) = (0, 0);
    while ie < exposures.len() || iv < events.len() {
        if iv < events.len() && (ie >= exposures.len() || rng.below(2) == 0) {
            let n = (1 + rng.below(150) as usize).min(events.len() - iv);
            let mut chunk: Vec<Value> = events[iv..iv + n].to_vec();
            iv += n;
            // A duplicate inside the batch (same id) now and then.
            if rng.below(5) == 0 {
                if let Some(e) = chunk.iter().find(|e| e.get("id").is_some()).cloned() {
                    chunk.push(e);
                }
            }
            let body = serde_json::to_string(&chunk).unwrap();
            records.push((group, Record::Events(body.clone())));
            if rng.below(10) == 0 {
                records.push((group, Record::Events(body))); // a client retry
            }
        } else {
            let n = (1 + rng.below(200) as usize).min(exposures.len() - ie);
            let rows = &exposures[ie..ie + n];
            ie += n;
            seq += 1;
            let body = json!({
                "instance": "envoy-a/0/1", "seq": seq, "dropped": rng.below(2),
                "experiments": [{"name": "ranker", "variants": ["control", "treatment"]},
                                {"name": "banner", "variants": ["blue", "green", "red"]}],
                "exposures": rows,
            })
            .to_string();
            records.push((group, Record::Exposures(body.clone())));
            if rng.below(10) == 0 {
                records.push((group, Record::Exposures(body))); // a filter retry
            }
        }
        group += 1;
    }
    records
}

fn definitions() -> Arc<Definitions> {
    Arc::new(Definitions::from_json(CONFIG.as_bytes()).unwrap())
}

fn engine() -> Engine {
    Engine::new(Some(definitions()), EngineOptions::default())
}

fn feed(engine: &mut Engine, records: &[&Record]) {
    for r in records {
        match r {
            Record::Events(b) => {
                engine.apply_outcomes(&parse_outcomes(b.as_bytes()).unwrap());
            }
            Record::Exposures(b) => {
                engine.apply_exposures(&parse_exposures(b.as_bytes()).unwrap());
            }
        }
    }
}

fn report_json(engine: &Engine, name: &str) -> Value {
    let r = report::report(&engine.aggregates(), name, &Settings::default()).unwrap();
    let mut v = serde_json::to_value(&r).unwrap();
    strip(&mut v);
    v
}

/// Removes what differs between equal states (time of the report, log
/// position).
fn strip(v: &mut Value) {
    let o = v.as_object_mut().unwrap();
    o.remove("generated_at_ms");
    o.remove("applied_lsn");
}

/// Equal up to floating-point rounding.
fn assert_close(a: &Value, b: &Value, path: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let tol = 1e-12_f64.max(1e-7 * x.abs().max(y.abs()));
            assert!((x - y).abs() <= tol, "{path}: {x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}: lengths");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert_close(p, q, &format!("{path}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            let kx: Vec<_> = x.keys().collect();
            let ky: Vec<_> = y.keys().collect();
            assert_eq!(kx, ky, "{path}: keys");
            for (k, p) in x {
                assert_close(p, &y[k], &format!("{path}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

/// (user, experiment scope, metric).
type TotalKey = (String, Option<String>, String);

/// The joining rule computed the slow, obvious way from the same records.
#[derive(Default, Debug)]
struct Brute {
    /// (experiment, user) → (t, variant) of the first exposure.
    first: HashMap<(String, String), (i64, String)>,
    /// (user, scope, metric) → (events, Σ value, Σ covariate).
    totals: HashMap<TotalKey, (u64, f64, f64)>,
}

fn brute(records: &[&Record]) -> Brute {
    let mut b = Brute::default();
    let mut ids = std::collections::HashSet::new();
    let mut batches = std::collections::HashSet::new();
    for r in records {
        match r {
            Record::Events(body) => {
                for e in serde_json::from_str::<Vec<Value>>(body).unwrap() {
                    if let Some(id) = e.get("id") {
                        if !ids.insert(id.as_str().unwrap().to_owned()) {
                            continue;
                        }
                    }
                    let key = (
                        e["user"].as_str().unwrap().to_owned(),
                        e.get("experiment").map(|x| x.as_str().unwrap().to_owned()),
                        e["metric"].as_str().unwrap().to_owned(),
                    );
                    let t = b.totals.entry(key).or_default();
                    let (value, cov) = (
                        e.get("value").and_then(Value::as_f64),
                        e.get("covariate").and_then(Value::as_f64),
                    );
                    if value.is_some() || cov.is_none() {
                        t.0 += 1;
                    }
                    t.1 += value.unwrap_or(if cov.is_some() { 0.0 } else { 1.0 });
                    t.2 += cov.unwrap_or(0.0);
                }
            }
            Record::Exposures(body) => {
                let v: Value = serde_json::from_str(body).unwrap();
                if !batches.insert(v["seq"].as_u64().unwrap()) {
                    continue;
                }
                let exps = v["experiments"].as_array().unwrap();
                for row in v["exposures"].as_array().unwrap() {
                    let e = &exps[row[1].as_u64().unwrap() as usize];
                    let name = e["name"].as_str().unwrap().to_owned();
                    let variant = e["variants"][row[2].as_u64().unwrap() as usize]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    let vi = row[2].as_u64().unwrap();
                    let t = row[0].as_i64().unwrap();
                    let user = row[3].as_str().unwrap().to_owned();
                    let cur = b.first.entry((name, user)).or_insert((t, variant.clone()));
                    let cur_vi = e["variants"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .position(|x| x == &json!(cur.1))
                        .unwrap() as u64;
                    if (t, vi) < (cur.0, cur_vi) {
                        *cur = (t, variant);
                    }
                }
            }
        }
    }
    b
}

/// Per variant: (users, converted, Σy, Σy²) of a metric, brute force.
fn brute_stats(b: &Brute, exp: &str, metric: &str) -> BTreeMap<String, (u64, u64, f64, f64)> {
    let mut out: BTreeMap<String, (u64, u64, f64, f64)> = BTreeMap::new();
    for ((e, user), (_, variant)) in &b.first {
        if e != exp {
            continue;
        }
        let mut count = 0;
        let mut y = 0.0;
        for scope in [None, Some(exp.to_owned())] {
            if let Some(t) = b.totals.get(&(user.clone(), scope, metric.to_owned())) {
                count += t.0;
                y += t.1;
            }
        }
        let s = out.entry(variant.clone()).or_default();
        s.0 += 1;
        s.1 += u64::from(count > 0);
        s.2 += y;
        s.3 += y * y;
    }
    out
}

#[test]
fn aggregates_match_a_brute_force_join() {
    let records = scenario(7);
    let all: Vec<&Record> = records.iter().map(|r| &r.1).collect();
    let mut e = engine();
    feed(&mut e, &all);
    let b = brute(&all);
    let rep = report::report(&e.aggregates(), "ranker", &Settings::default()).unwrap();
    let rep_banner = report::report(&e.aggregates(), "banner", &Settings::default()).unwrap();
    for (exp, r) in [("ranker", &rep), ("banner", &rep_banner)] {
        for metric in ["revenue", "signup"] {
            let expected = brute_stats(&b, exp, metric);
            let m = r.metrics.iter().find(|m| m.name == metric).unwrap();
            assert_eq!(
                m.kind,
                if metric == "signup" {
                    "conversion"
                } else {
                    "value"
                }
            );
            for v in &m.variants {
                let (n, conv, sy, sy2) = expected[&v.variant];
                assert_eq!(
                    (v.users, v.converted),
                    (n, conv),
                    "{exp}/{metric}/{}",
                    v.variant
                );
                let mean = sy / n as f64;
                let sd = ((sy2 - sy * sy / n as f64) / (n - 1) as f64).sqrt();
                assert!(
                    (v.mean.unwrap() - mean).abs() < 1e-9 * mean.abs().max(1.0),
                    "{exp}/{metric} mean"
                );
                assert!(
                    (v.sd.unwrap() - sd).abs() < 1e-9 * sd.max(1.0),
                    "{exp}/{metric} sd"
                );
            }
        }
        let users: u64 = r.variants.iter().map(|v| v.users).sum();
        assert_eq!(
            users as usize,
            b.first.keys().filter(|(x, _)| x == exp).count()
        );
    }
    // Covariates were sent, so CUPED is reported, and the conflicts the
    // scenario injected are counted.
    let revenue = rep.metrics.iter().find(|m| m.name == "revenue").unwrap();
    assert!(revenue.has_covariate);
    assert!(matches!(
        revenue.comparisons[0].cuped,
        Some(report::Stat::Ok(_))
    ));
    assert!(rep.data_quality.variant_conflicts > 0);
    // Exposures are the filter's truth: they agree with the assignment core.
    assert_eq!(
        rep.data_quality.assignment_mismatches,
        rep.data_quality.variant_conflicts
    );
}

#[test]
fn order_restart_and_merge_give_the_same_report() {
    let records = scenario(11);
    let all: Vec<&Record> = records.iter().map(|r| &r.1).collect();
    let mut one = engine();
    feed(&mut one, &all);
    let want = [report_json(&one, "ranker"), report_json(&one, "banner")];
    assert!(want[0]["metrics"].as_array().unwrap().len() == 2);

    // Reversed arrival order.
    let mut rev = engine();
    feed(&mut rev, &all.iter().rev().copied().collect::<Vec<_>>());
    assert_close(&report_json(&rev, "ranker"), &want[0], "reversed");

    // Snapshot and restore (what a restart does).
    let mut state = Vec::new();
    one.encode_state(&mut state).unwrap();
    let restored =
        Engine::restore(Some(&state), Some(definitions()), EngineOptions::default()).unwrap();
    assert_close(&report_json(&restored, "ranker"), &want[0], "restored");
    assert_close(&report_json(&restored, "banner"), &want[1], "restored");

    // Two sidecars, each with a random part of the records; users overlap.
    let mut rng = Rng(99);
    let mut side: HashMap<usize, bool> = HashMap::new();
    let (mut a, mut b) = (engine(), engine());
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    for (g, r) in &records {
        if *side.entry(*g).or_insert_with(|| rng.below(2) == 0) {
            ra.push(r);
        } else {
            rb.push(r);
        }
    }
    assert!(ra.len() > 10 && rb.len() > 10);
    feed(&mut a, &ra);
    feed(&mut b, &rb);
    let mut state_a = Vec::new();
    a.encode_state(&mut state_a).unwrap();
    b.merge_state(&state_a).unwrap();
    assert_close(&report_json(&b, "ranker"), &want[0], "merged");
    assert_close(&report_json(&b, "banner"), &want[1], "merged");
}

fn post(c: &mut Client, path: &str, body: &[u8]) -> Value {
    let r = c.post(path, "application/json", body).unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

fn get_report(c: &mut Client) -> Value {
    let r = c.get("/admin/experiments/ranker", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let mut v: Value = serde_json::from_slice(&r.body).unwrap();
    strip(&mut v);
    v
}

fn send(c: &mut Client, records: &[&Record]) {
    for r in records {
        match r {
            Record::Events(b) => post(c, "/v1/events", b.as_bytes()),
            Record::Exposures(b) => post(c, "/v1/exposures", b.as_bytes()),
        };
    }
}

#[test]
fn sidecars_merge_over_http_durably() {
    let records = scenario(23);
    let opts = || LocalOptions {
        definitions: Some(definitions()),
        ..LocalOptions::default()
    };
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (sa, sb, sc) = (
        LocalServer::start(da.path(), opts()).unwrap(),
        LocalServer::start(db.path(), opts()).unwrap(),
        LocalServer::start(dc.path(), opts()).unwrap(),
    );
    // Data-plane clients for ingestion, admin clients for reports and state.
    let (mut ca, mut cb, mut cc) = (
        Client::new(&sa.url).unwrap(),
        Client::new(&sb.url).unwrap(),
        Client::new(&sc.url).unwrap(),
    );
    let (mut aa, mut ab, mut ac) = (
        Client::new(&sa.admin_url).unwrap(),
        Client::new(&sb.admin_url).unwrap(),
        Client::new(&sc.admin_url).unwrap(),
    );
    let all: Vec<&Record> = records.iter().map(|r| &r.1).collect();
    send(&mut cc, &all);
    let half: Vec<&Record> = records
        .iter()
        .filter(|(g, _)| g % 2 == 0)
        .map(|r| &r.1)
        .collect();
    let other: Vec<&Record> = records
        .iter()
        .filter(|(g, _)| g % 2 == 1)
        .map(|r| &r.1)
        .collect();
    send(&mut ca, &half);
    send(&mut cb, &other);
    let want = get_report(&mut ac);
    assert_ne!(get_report(&mut ab)["variants"], want["variants"]);

    let state = aa.get("/admin/state", &[]).unwrap();
    assert_eq!(state.status, 200);
    assert_eq!(
        state.header("content-type"),
        Some("application/octet-stream")
    );
    let merged = post(&mut ab, "/admin/state/merge", &state.body);
    assert!(merged["users"].as_u64().unwrap() > 100, "{merged}");
    assert_close(&get_report(&mut ab), &want, "merged over HTTP");

    // Garbage is refused and changes nothing.
    let bad = ab
        .post(
            "/admin/state/merge",
            "application/octet-stream",
            b"not a state",
        )
        .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.text());

    // The merge is in B's log: it survives a restart.
    drop((cb, ab));
    sb.stop();
    let sb = LocalServer::start(db.path(), opts()).unwrap();
    let mut ab = Client::new(&sb.admin_url).unwrap();
    assert_close(&get_report(&mut ab), &want, "merged, after a restart");
}
