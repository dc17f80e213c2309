//! The real `abmesh serve` binary against bodies that used to take it down,
//! and error bodies that used to grow with the request.
//!
//! * A complete JSON value followed by other characters reached an
//!   `unreachable!` in the parsers of `/v1/events` and `/v1/exposures`,
//!   and the release build aborted on it: one request stopped model
//!   serving, ingestion and admin together. Each must now get a 400 that
//!   says where the extra characters start, and the process must serve the
//!   next request.
//! * Errors quoted client-supplied values whole: a 10 MB metric name came
//!   back as a 10 MB error body.
//!
//! (That a panic in a handler answers 500 instead of ending the process is
//! tested in `server::router`, with a handler that panics: no request can
//! make the real binary panic any more, by design.)

use std::path::Path;
use std::process::Child;

use abmesh_testkit::http::{Client, Response};

fn spawn(dir: &Path, log: &Path) -> (Child, String) {
    let (child, urls) =
        abmesh_testkit::serve::spawn_serve(["--data-dir".as_ref(), dir.as_os_str()], log);
    (child, urls.data)
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", r.text()))
}

const BATCH: &str = r#"{"instance":"envoy-1/0/1","seq":1,"experiments":[{"name":"ranker","variants":["control","treatment"]}],"exposures":[[1000,0,1,"u"]]}"#;

#[test]
fn trailing_characters_get_a_400_and_the_server_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let (mut child, url) = spawn(&dir.path().join("data"), &log);
    let mut c = Client::new(&url).unwrap();

    // The column is the extra character's, counted from 1.
    let crashers: [(&str, &str, String, String); 3] = [
        (
            "/v1/events",
            "application/x-ndjson",
            r#"{"user":"u","metric":"m"} x"#.to_owned(),
            "events[0]: trailing characters (line 1, column 27)".to_owned(),
        ),
        (
            "/v1/events",
            "application/json",
            r#"[{"user":"u","metric":"m"}] x"#.to_owned(),
            "events: trailing characters (line 1, column 29)".to_owned(),
        ),
        (
            "/v1/exposures",
            "application/json",
            format!("{BATCH} x"),
            format!(
                "batch: trailing characters (line 1, column {})",
                BATCH.len() + 2
            ),
        ),
    ];
    for (path, content_type, body, message) in &crashers {
        let r = c.post(path, content_type, body.as_bytes()).unwrap();
        assert_eq!(r.status, 400, "{path} {body:?}: {}", r.text());
        assert_eq!(json(&r)["error"], *message, "{path} {body:?}");
        assert!(
            child.try_wait().unwrap().is_none(),
            "abmesh serve exited after {path} {body:?}; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    // Nothing of the refused bodies was written; good requests still work,
    // on the same connection and on a new one.
    let r = c
        .post(
            "/v1/events",
            "application/json",
            br#"{"user":"u","metric":"m"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["accepted"], 1);
    let r = c
        .post("/v1/exposures", "application/json", BATCH.as_bytes())
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["accepted"], 1);
    let mut fresh = Client::new(&url).unwrap();
    assert_eq!(fresh.get("/v2/health/live", &[]).unwrap().status, 200);
    assert!(child.try_wait().unwrap().is_none());

    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn error_bodies_quote_long_values_clipped() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let (mut child, url) = spawn(&dir.path().join("data"), &log);
    let mut c = Client::new(&url).unwrap();
    let long = "m".repeat(10 << 20);

    let bodies = [
        // A name that breaks the name rules.
        format!(r#"[{{"user":"u","metric":"{long}"}}]"#),
        // A value of the wrong type, quoted by serde.
        format!(r#"{{"user":"u","metric":"m","value":"{long}"}}"#),
        // An unknown field, named by serde.
        format!(r#"{{"user":"u","metric":"m","{long}":1}}"#),
    ];
    for body in &bodies {
        let r = c
            .post("/v1/events", "application/json", body.as_bytes())
            .unwrap();
        assert_eq!(r.status, 400, "{}", &r.text()[..200.min(r.body.len())]);
        assert!(r.body.len() < 1024, "{} bytes of error", r.body.len());
        let error = json(&r)["error"].as_str().unwrap().to_owned();
        assert!(error.starts_with("events[0]"), "{error}");
    }
    let r = c
        .post(
            "/v1/exposures",
            "application/json",
            BATCH.replace("ranker", &long).as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.body.len() < 1024,
        "{} bytes of error: {}",
        r.body.len(),
        r.text()
    );
    assert!(
        json(&r)["error"]
            .as_str()
            .unwrap()
            .contains(&format!("… ({} bytes)", long.len())),
        "{}",
        r.text()
    );

    // A long path: 404 with the path clipped (http takes up to 64 KiB).
    let path = format!("/v2/{}", "p".repeat(60_000));
    let r = c.get(&path, &[]).unwrap();
    assert_eq!(r.status, 404);
    assert!(r.body.len() < 1024, "{} bytes of error", r.body.len());

    assert!(child.try_wait().unwrap().is_none());
    child.kill().unwrap();
    let _ = child.wait();
}

/// The release build, which the demo and the benchmarks run, must unwind
/// on panic so that the router can answer a panicking handler with a 500
/// (a release profile with `panic = "abort"` ends the process instead).
#[test]
fn the_release_profile_unwinds() {
    let manifest = std::fs::read_to_string(abmesh_testkit::repo_root().join("Cargo.toml")).unwrap();
    let mut section = "";
    let mut panic = None;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            section = line;
        } else if section == "[profile.release]" {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == "panic" {
                    panic = Some(v.trim().trim_matches('"').to_owned());
                }
            }
        }
    }
    assert_ne!(
        panic.as_deref(),
        Some("abort"),
        "the workspace release profile aborts on panic; the sidecar must unwind"
    );
}
