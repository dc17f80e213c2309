//! The HTML report as a person sees it: served by the sidecar, loaded in
//! headless Chromium (Debian's `chromium`), which must produce a real
//! screenshot, and whose DOM must hold the cumulative-lift chart (an inline
//! `<svg>` with the lift series).
//!
//! Without Chromium the test is skipped with a loud message, unless `CI` is
//! set: then it fails (install it with `apt-get install -y chromium`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abmesh_eval::aggregate::Definitions;
use abmesh_server::local::{LocalOptions, LocalServer};
use abmesh_testkit::http::Client;
use serde_json::{json, Value};

const CONFIG: &str = r#"{"experiments":[{"name":"ranker","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}]}]}"#;

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Runs chromium headless on `url` with `extra` flags; returns stdout.
fn run_chromium(bin: &Path, profile: &Path, extra: &[String], url: &str) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}

/// A server with three hours of a two-variant experiment.
fn populated(dir: &Path) -> LocalServer {
    let s = LocalServer::start(
        dir,
        LocalOptions {
            definitions: Some(Arc::new(Definitions::from_json(CONFIG.as_bytes()).unwrap())),
            ..LocalOptions::default()
        },
    )
    .unwrap();
    let mut c = Client::new(&s.url).unwrap();
    let t0 = 1_777_636_800_000i64;
    let mut rows = Vec::new();
    let mut events = Vec::new();
    let mut x = 12345u64;
    for u in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = (x % 2) as usize;
        rows.push(json!([t0 + u * 3600, 0, v, format!("u{u}")]));
        let p = if v == 1 { 0.14 } else { 0.10 };
        if (x >> 20) % 1000 < (p * 1000.0) as u64 {
            events.push(json!({"user": format!("u{u}"), "metric": "purchase", "value": 10 + (x >> 40) % 40}));
        }
        events.push(json!({"user": format!("u{u}"), "metric": "page_view"}));
    }
    let body = json!({"instance": "t/0/1", "seq": 1, "experiments": [{"name": "ranker", "variants": ["control", "treatment"]}], "exposures": rows});
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
    let body = Value::Array(events).to_string();
    assert_eq!(
        c.post("/v1/events", "application/json", body.as_bytes())
            .unwrap()
            .status,
        200
    );
    s
}

#[test]
fn html_report_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let server = populated(&dir.path().join("data"));
    let mut c = Client::new(&server.admin_url).unwrap();

    // Content negotiation: Accept: text/html or ?format=html.
    let r = c
        .get(
            "/admin/experiments/ranker",
            &[("accept", "text/html,application/xhtml+xml")],
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let page = r.text();
    assert!(
        page.contains("<svg") && page.contains("class=lift-chart"),
        "the chart is inline SVG"
    );
    let r = c.get("/admin/experiments?format=html", &[]).unwrap();
    assert!(r.text().contains("/admin/experiments/ranker?format=html"));
    let r = c.get("/admin/experiments/ranker", &[]).unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"));

    let Some(bin) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is not installed but CI is set: install it with `apt-get install -y chromium`");
        }
        eprintln!("\n\n!!!!!!!! SKIPPED html_report_renders_in_headless_chromium: chromium not found on PATH (apt-get install -y chromium) !!!!!!!!\n\n");
        return;
    };
    let url = format!("{}/admin/experiments/ranker?format=html", server.admin_url);

    let shot = dir.path().join("report.png");
    run_chromium(
        &bin,
        &dir.path().join("profile-1"),
        &[format!("--screenshot={}", shot.display())],
        &url,
    );
    let png = std::fs::read(&shot).expect("chromium wrote a screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1200, 1600));
    // A blank 1200×1600 page compresses to a few KiB; tables and a chart
    // do not.
    assert!(
        png.len() > 40_000,
        "screenshot of {} bytes looks empty",
        png.len()
    );

    let dom = run_chromium(
        &bin,
        &dir.path().join("profile-2"),
        &["--dump-dom".to_owned()],
        &url,
    );
    let fig = dom
        .find("class=\"lift-chart\"")
        .expect("the chart's figure is in the DOM");
    let chart = &dom[fig..];
    assert!(chart.contains("<svg"), "an svg element");
    assert!(
        chart.contains("cumulative relative lift"),
        "with its caption"
    );
    assert!(
        chart.contains("<polyline") || chart.contains("<path"),
        "and the lift series drawn"
    );
    assert!(dom.contains("id=\"decision\""), "the decision is shown");
}
