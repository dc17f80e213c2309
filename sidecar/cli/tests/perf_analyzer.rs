//! Triton's `perf_analyzer`, the load client Triton users measure servers
//! with, runs against `abmesh serve` over HTTP and gRPC (`--grpc-listen`;
//! issue 12): it reads the model's metadata and configuration, drives the
//! scorer for a few seconds and reads the server-side statistics before
//! and after. The test installs
//! it itself (`benches/setup_perf_analyzer.sh`: pinned, hash-checked
//! wheels and Debian's libb64, into `.tools/`), since CI starts on a fresh
//! machine.
//!
//! It checks that perf_analyzer exits 0 with a nonzero rate and no errors,
//! that its server-side section comes from abmesh's statistics, and that
//! the server counted every request as a success.

mod model_support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use abmesh_testkit::serve::Server;

/// The wrapper script `benches/setup_perf_analyzer.sh` installs, or why
/// it could not.
fn install() -> Result<String, String> {
    let root = abmesh_testkit::repo_root();
    let out = Command::new("bash")
        .arg(root.join("benches/setup_perf_analyzer.sh"))
        .current_dir(&root)
        .output()
        .map_err(|e| format!("running benches/setup_perf_analyzer.sh: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(stderr);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(str::to_owned)
        .ok_or(stderr)
}

/// The number after `label` on a line of `text` (`Throughput: 123.4 infer/sec`).
fn figure(text: &str, label: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(label)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Runs perf_analyzer for a few seconds against `url` over `protocol`
/// and checks what it and the server report.
fn drive(perf_analyzer: &str, server: &Server, protocol: &str, url: &str) {
    let dir = abmesh_testkit::scratch_dir("perf-analyzer");
    let csv = dir.path().join("perf.csv");
    let before = server.get("/v2/models/scorer/versions/1/stats").json();
    let count = |stats: &serde_json::Value, what: &str| {
        stats["model_stats"][0]["inference_stats"][what]["count"]
            .as_u64()
            .unwrap()
    };
    // Version 1: the repository's version 3 is the faulty release of the
    // closed-loop demo, which fails on purpose.
    let mut child = Command::new(perf_analyzer)
        .args(["-m", "scorer", "-x", "1", "-u", url, "-i", protocol])
        .args(["--concurrency-range", "4", "--measurement-interval", "1000"])
        .args(["--max-trials", "5", "--stability-percentage", "100"])
        .arg("-f")
        .arg(&csv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start perf_analyzer");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = stdout.read_to_string(&mut o);
        let _ = stderr.read_to_string(&mut e);
        (o, e)
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for perf_analyzer") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("perf_analyzer -i {protocol} ran past 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = reader.join().expect("reader");
    let report = format!("{out}\n{err}");
    assert!(
        status.success(),
        "perf_analyzer -i {protocol} failed ({status}):\n{report}"
    );
    for bad in ["error", "Error", "Failed", "failed"] {
        assert!(
            !report.contains(bad),
            "perf_analyzer -i {protocol} reported {bad:?}:\n{report}"
        );
    }
    let rate = figure(&out, "Throughput:").expect("a throughput line");
    assert!(rate > 0.0, "{report}");
    // Its server-side section comes from the statistics endpoint.
    let served = figure(&out, "Successful request count:").expect("a server section");
    assert!(served > 0.0, "{report}");
    let rows = std::fs::read_to_string(&csv).expect("perf_analyzer's CSV");
    let mut lines = rows.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let values: Vec<&str> = lines.next().expect("a row").split(',').collect();
    let i = header
        .iter()
        .position(|h| *h == "Inferences/Second")
        .unwrap_or_else(|| panic!("no Inferences/Second in {header:?}"));
    assert!(values[i].parse::<f64>().unwrap() > 0.0, "{rows}");
    // The server's own counters: every request a success.
    let after = server.get("/v2/models/scorer/versions/1/stats").json();
    assert_eq!(count(&after, "fail"), count(&before, "fail"), "{after}");
    let successes = count(&after, "success") - count(&before, "success");
    assert!(
        successes as f64 >= served,
        "{successes} < {served}: {after}"
    );
    eprintln!("perf_analyzer over {protocol}: {rate} infer/s, {successes} requests served");
}

#[test]
fn perf_analyzer_drives_the_scorer_over_http_and_grpc() {
    require_onnxruntime!();
    let perf_analyzer = match install() {
        Ok(p) => p,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "\n==================== SKIPPED: perf_analyzer could not be installed ====================\n\
                 {why}\n\
                 =========================================================================================\n"
            );
            return;
        }
        Err(why) => {
            panic!("benches/setup_perf_analyzer.sh failed (required when CI is set):\n{why}")
        }
    };
    let grpc_port = free_port();
    let grpc = format!("127.0.0.1:{grpc_port}");
    let repo = model_support::example_repo();
    let server = Server::start(&[
        "--models",
        repo.to_str().unwrap(),
        "--device",
        "cpu",
        "--grpc-listen",
        &grpc,
    ]);
    drive(
        &perf_analyzer,
        &server,
        "http",
        &format!("127.0.0.1:{}", server.port),
    );
    drive(&perf_analyzer, &server, "grpc", &grpc);
}

/// A port free right now (bound, then released), for `--grpc-listen`:
/// the test kit reads only the HTTP listeners' ports from the log.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
