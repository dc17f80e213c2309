//! `GET /admin/state` + `POST /admin/state/merge` must be safe to use
//! (issue 9, item 4): a damaged state is refused, whatever bit was hit; a
//! state merged twice counts once, said as such; a state that holds the
//! receiving sidecar's own records, or records it already holds, is
//! refused. `abmesh report --state` follows the same rules offline.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use abmesh_eval::aggregate::Definitions;
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

fn post(c: &mut Client, path: &str, body: &[u8]) -> (u16, Value) {
    let r = c.post(path, "application/octet-stream", body).unwrap();
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

/// Users `from..to` of filter instance `instance`, half in each variant,
/// with purchases.
fn feed(url: &str, instance: &str, from: usize, to: usize, seq: u64) {
    let mut c = Client::new(url).unwrap();
    let rows: Vec<Value> = (from..to)
        .map(|u| json!([1_000_000 + u as i64 * 1000, 0, u % 2, format!("u{u}")]))
        .collect();
    let body = json!({"instance": instance, "seq": seq, "experiments": [{"name": "ranker", "variants": ["control", "treatment"]}], "exposures": rows});
    assert_eq!(
        post(&mut c, "/v1/exposures", body.to_string().as_bytes()).0,
        200
    );
    let events: Vec<Value> = (from..to)
        .filter(|u| u % 3 == 0)
        .map(|u| json!({"user": format!("u{u}"), "metric": "purchase", "value": (u % 17) as f64 + 0.5, "id": format!("{instance}-{u}-{seq}")}))
        .collect();
    let (s, v) = post(
        &mut c,
        "/v1/events",
        Value::Array(events).to_string().as_bytes(),
    );
    assert_eq!(s, 200, "{v}");
}

fn export(url: &str) -> Vec<u8> {
    let r = Client::new(url).unwrap().get("/admin/state", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.body.to_vec()
}

/// The report, without what changes from one request to the next.
fn report(url: &str) -> Value {
    let r = Client::new(url)
        .unwrap()
        .get("/admin/experiments/ranker", &[])
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let mut v: Value = serde_json::from_slice(&r.body).unwrap();
    if let Some(o) = v.as_object_mut() {
        o.remove("generated_at_ms");
        o.remove("applied_lsn");
    }
    v
}

fn users(report: &Value) -> Vec<u64> {
    report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["users"].as_u64().unwrap())
        .collect()
}

fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("log-"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn every_single_bit_flip_of_an_exported_state_is_refused() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (start(da.path()), start(db.path()));
    feed(&a.url, "a", 0, 4, 1);
    feed(&b.url, "b", 4, 10, 1);
    let state = export(&a.admin_url);
    let want = report(&b.admin_url);
    let log_before = log_bytes(db.path());
    let mut c = Client::new(&b.admin_url).unwrap();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    let mut not_refused = Vec::new();
    for bit in 0..state.len() * 8 {
        let mut bad = state.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let (status, v) = post(&mut c, "/admin/state/merge", &bad);
        if status != 400 {
            not_refused.push((bit, status));
            continue;
        }
        let msg = v["error"].as_str().unwrap().to_owned();
        let kind = ["checksum", "ABMSTATE", "truncated"]
            .into_iter()
            .find(|k| msg.contains(k))
            .unwrap_or("other");
        *kinds.entry(kind.to_owned()).or_default() += 1;
    }
    assert!(
        not_refused.is_empty(),
        "{} of {} single-bit flips were not refused with 400 (bit, status): {:?}",
        not_refused.len(),
        state.len() * 8,
        &not_refused[..not_refused.len().min(20)]
    );
    assert_eq!(kinds.get("other"), None, "{kinds:?}");
    eprintln!(
        "{} single-bit flips of a {}-byte state, all refused: {kinds:?}",
        state.len() * 8,
        state.len()
    );
    // Nothing was merged or logged.
    assert_eq!(report(&b.admin_url), want);
    assert_eq!(log_bytes(db.path()), log_before);
    // Truncated and padded states too.
    for bad in [
        &state[..state.len() - 1],
        &state[..20],
        &[state.clone(), vec![0]].concat()[..],
    ] {
        let (status, v) = post(&mut c, "/admin/state/merge", bad);
        assert_eq!(status, 400, "{v}");
    }
    // The state itself merges.
    let (status, v) = post(&mut c, "/admin/state/merge", &state);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["merged"], true);
    assert_eq!(users(&report(&b.admin_url)), [5, 5]);
}

#[test]
fn a_state_merged_twice_counts_once() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (start(da.path()), start(db.path()));
    feed(&a.url, "a", 0, 300, 1);
    feed(&b.url, "b", 300, 500, 1);
    let state = export(&a.admin_url);
    let mut c = Client::new(&b.admin_url).unwrap();
    let (status, first) = post(&mut c, "/admin/state/merge", &state);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["users"], 300);
    let merged = report(&b.admin_url);
    assert_eq!(users(&merged), [250, 250]);
    let log_after_first = log_bytes(db.path());

    let (status, again) = post(&mut c, "/admin/state/merge", &state);
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        report(&b.admin_url),
        merged,
        "a re-merge changed the report"
    );
    assert_eq!(first["merged"], true);
    assert_eq!(first["duplicate"], false);
    assert_eq!(again["merged"], false, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["sidecar"], first["sidecar"]);
    assert_eq!(again["lsn"], first["lsn"]);
    assert!(
        again["message"]
            .as_str()
            .unwrap()
            .contains("merged before: nothing changed"),
        "{again}"
    );
    assert_eq!(
        log_bytes(db.path()),
        log_after_first,
        "a re-merge was logged"
    );

    // Racing merges of one new state merge it once (checked again when
    // applied).
    let (dc, dd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (cc, d) = (start(dc.path()), start(dd.path()));
    feed(&cc.url, "c", 1000, 1100, 1);
    let state_c = export(&cc.admin_url);
    let results: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let mut c = Client::new(&d.admin_url).unwrap();
                    let (status, v) = post(&mut c, "/admin/state/merge", &state_c);
                    assert_eq!(status, 200, "{v}");
                    v
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let merged_n = results.iter().filter(|v| v["merged"] == true).count();
    assert_eq!(merged_n, 1, "{results:?}");
    assert!(results
        .iter()
        .all(|v| v["merged"] == true || v["duplicate"] == true));
    assert_eq!(users(&report(&d.admin_url)), [50, 50]);

    // The merge and its key are durable: after a restart a re-merge is
    // still a no-op and the report is the same.
    drop(c);
    b.stop();
    let b = start(db.path());
    assert_eq!(report(&b.admin_url), merged, "after a restart");
    let mut c = Client::new(&b.admin_url).unwrap();
    let (status, v) = post(&mut c, "/admin/state/merge", &state);
    assert_eq!((status, &v["duplicate"]), (200, &json!(true)), "{v}");
    assert_eq!(report(&b.admin_url), merged);
}

#[test]
fn states_that_would_double_count_are_refused() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, c3) = (
        start(dirs[0].path()),
        start(dirs[1].path()),
        start(dirs[2].path()),
    );
    feed(&a.url, "a", 0, 100, 1);
    feed(&b.url, "b", 100, 200, 1);
    feed(&c3.url, "c", 200, 300, 1);
    let mut ca = Client::new(&a.admin_url).unwrap();
    let mut cb = Client::new(&b.admin_url).unwrap();
    let mut cc = Client::new(&c3.admin_url).unwrap();

    // Into itself.
    let own = export(&a.admin_url);
    let before = report(&a.admin_url);
    let (status, v) = post(&mut ca, "/admin/state/merge", &own);
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("would double count"),
        "{v}"
    );
    assert_eq!(report(&a.admin_url), before);

    // A into B; then B (which holds A's records) back into A.
    let (status, v) = post(&mut cb, "/admin/state/merge", &own);
    assert_eq!(status, 200, "{v}");
    let b_with_a = export(&b.admin_url);
    let (status, v) = post(&mut ca, "/admin/state/merge", &b_with_a);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("own records"), "{v}");
    assert_eq!(report(&a.admin_url), before);

    // A into C as well; then C (holding A) into B (holding A): A's
    // records would count twice.
    let (status, v) = post(&mut cc, "/admin/state/merge", &own);
    assert_eq!(status, 200, "{v}");
    let b_before = report(&b.admin_url);
    let (status, v) = post(&mut cb, "/admin/state/merge", &export(&c3.admin_url));
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("would double count"),
        "{v}"
    );
    assert_eq!(report(&b.admin_url), b_before);

    // A later export of A, into B which merged an earlier one.
    feed(&a.url, "a", 1000, 1010, 2);
    let (status, v) = post(&mut cb, "/admin/state/merge", &export(&a.admin_url));
    assert_eq!(status, 409, "{v}");
    assert_eq!(report(&b.admin_url), b_before);

    // Offline, `abmesh report --state` follows the same rules.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("cfg.json");
    std::fs::write(&cfg, CONFIG).unwrap();
    let fa = tmp.path().join("a.state");
    let fb = tmp.path().join("b.state");
    std::fs::write(&fa, &own).unwrap();
    std::fs::write(&fb, export(&b.admin_url)).unwrap();
    let run = |args: &[&Path]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_abmesh"));
        cmd.args(["report", "ranker", "--format", "json", "--experiments"])
            .arg(&cfg);
        for a in args {
            cmd.arg("--state").arg(a);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, once, err) = run(&[&fa]);
    assert!(ok, "{err}");
    let (ok, twice, err) = run(&[&fa, &fa]);
    assert!(ok, "{err}");
    assert!(
        err.contains("merged before") && err.contains("counted once"),
        "{err}"
    );
    let once: Value = serde_json::from_str(&once).unwrap();
    let twice: Value = serde_json::from_str(&twice).unwrap();
    assert_eq!(once["variants"], twice["variants"]);
    let (ok, _, err) = run(&[&fa, &fb]);
    assert!(!ok && err.contains("would double count"), "{err}");
    let mut bad = own.clone();
    bad[100] ^= 4;
    let fbad = tmp.path().join("bad.state");
    std::fs::write(&fbad, &bad).unwrap();
    let (ok, _, err) = run(&[&fbad]);
    assert!(!ok && err.contains("checksum"), "{err}");
}
