//! `abmesh stats FILE` against the statistical reference cases (the format
//! of `sidecar/stats/README.md`): every output must agree with `expected`
//! within its tolerance (relative ≤ 1e-6, or absolute ≤ 1e-9 for
//! values near zero), with exactly the expected keys.
//!
//! The reference file is read from `shared/` beside the repository when it
//! is there (the CI clone has it), and a committed copy in `tests/data/` is
//! always checked too, so the test runs without `shared/`.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SHARED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/stats/reference-cases.json"
);
const COMMITTED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/reference-cases.json"
);
// The case files of abmesh-stats' own tests (its stats_gbstats.rs and
// stats_quantile.rs check them, with the evaluator in process).
const GBSTATS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../stats/tests/data/gbstats-cases.json"
);
const QUANTILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../stats/tests/data/quantile-cases.json"
);

fn abmesh_stats(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_abmesh"))
        .arg("stats")
        .arg(path)
        .output()
        .expect("run abmesh")
}

fn abmesh_stats_stdin(input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_abmesh"))
        .args(["stats", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run abmesh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn agrees(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-9 || (got - want).abs() <= 1e-6 * want.abs()
}

/// Compares `got` with `want`, pushing "path: why" for each disagreement.
fn compare(path: &str, got: &Value, want: &Value, problems: &mut Vec<String>) {
    match (got, want) {
        (Value::Number(g), Value::Number(w)) => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            if !agrees(g, w) {
                problems.push(format!(
                    "{path}: got {g:e}, expected {w:e} (rel {:.2e})",
                    (g - w).abs() / w.abs()
                ));
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            if g.len() != w.len() {
                problems.push(format!(
                    "{path}: {} elements, expected {}",
                    g.len(),
                    w.len()
                ));
            }
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                compare(&format!("{path}[{i}]"), g, w, problems);
            }
        }
        (Value::Object(g), Value::Object(w)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => compare(&format!("{path}.{k}"), gv, wv, problems),
                    None => problems.push(format!("{path}.{k}: missing")),
                }
            }
            for k in g.keys().filter(|k| !w.contains_key(*k)) {
                problems.push(format!("{path}.{k}: not an expected key"));
            }
        }
        (g, w) if g == w => {}
        (g, w) => problems.push(format!("{path}: got {g}, expected {w}")),
    }
}

/// Runs the binary on `file` and checks every case; returns how many agreed.
fn check_reference_file(file: &Path) -> usize {
    let cases: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let cases = cases["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    let out = abmesh_stats(file);
    assert!(
        out.status.success(),
        "abmesh stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    let results = doc["results"].as_array().expect("results");
    assert_eq!(results.len(), cases.len(), "one result per case");
    let mut problems = Vec::new();
    let mut agreed = 0;
    for (case, result) in cases.iter().zip(results) {
        let id = case["id"].as_str().unwrap();
        assert_eq!(result["id"], case["id"], "results are in case order");
        let before = problems.len();
        match (result.get("output"), result.get("error")) {
            (Some(output), None) => compare(id, output, &case["expected"], &mut problems),
            (_, Some(err)) => problems.push(format!("{id}: error {err}")),
            (None, None) => problems.push(format!("{id}: neither output nor error")),
        }
        if problems.len() == before {
            agreed += 1;
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} cases disagree with {}:\n{}",
        cases.len() - agreed,
        cases.len(),
        file.display(),
        problems.join("\n")
    );
    eprintln!("{}: all {agreed} cases agree", file.display());
    agreed
}

#[test]
fn reference_cases_agree() {
    let file = if Path::new(SHARED).exists() {
        PathBuf::from(SHARED)
    } else {
        eprintln!("{SHARED} not found; using the committed copy");
        PathBuf::from(COMMITTED)
    };
    check_reference_file(&file);
}

#[test]
fn committed_copy_agrees() {
    let n = check_reference_file(Path::new(COMMITTED));
    // Every kind `abmesh stats` knows has cases in a committed file: this
    // one, or those of sidecar/stats/tests/stats_gbstats.rs (ratio,
    // cuped_lift) and sidecar/stats/tests/stats_quantile.rs (quantile),
    // which check them.
    assert!(n >= 9);
    let mut kinds = Vec::new();
    for file in [COMMITTED, GBSTATS, QUANTILE] {
        let doc: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        for c in doc["cases"].as_array().unwrap() {
            kinds.push(c["kind"].as_str().unwrap().to_string());
        }
    }
    for kind in abmesh_stats::cases::KINDS {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} case");
    }
}

#[test]
fn the_comparison_itself_catches_disagreements() {
    // Guards the checker: a 1e-5 relative error, a missing key, an extra
    // key and a wrong array length must all be reported.
    let mut p = Vec::new();
    compare(
        "x",
        &serde_json::json!({"a": 1.00001, "c": 0}),
        &serde_json::json!({"a": 1.0, "b": 2}),
        &mut p,
    );
    compare(
        "y",
        &serde_json::json!([1.0]),
        &serde_json::json!([1.0, 2.0]),
        &mut p,
    );
    assert_eq!(p.len(), 4, "{p:?}");
    let mut ok = Vec::new();
    compare(
        "z",
        &serde_json::json!({"a": 1.0000001, "p": 1e-12}),
        &serde_json::json!({"a": 1.0, "p": 0.0}),
        &mut ok,
    );
    assert!(ok.is_empty(), "{ok:?}");
}

#[test]
fn bad_cases_get_error_entries_and_the_rest_still_run() {
    let input = r#"{"cases": [
        {"id": "good", "kind": "srm", "input": {"observed": [5100, 4900], "weights": [1, 1]},
         "expected": {"ignored": true}},
        {"id": "unknown", "kind": "t_test_of_the_future", "input": {}},
        {"id": "malformed", "kind": "welch_t", "input": {"control": {"n": "ten", "mean": 1, "sd": 1},
         "treatment": {"n": 10, "mean": 1, "sd": 1}, "alpha": 0.05}},
        {"id": "invalid", "kind": "welch_t", "input": {"control": {"n": 1, "mean": 1, "sd": 1},
         "treatment": {"n": 10, "mean": 1, "sd": 1}, "alpha": 0.05}},
        {"id": "no-input", "kind": "srm"}
    ]}"#;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join("stats_bad_cases.json");
    std::fs::write(&file, input).unwrap();
    for out in [abmesh_stats(&file), abmesh_stats_stdin(input)] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("4 of 5 cases could not be evaluated"),
            "{stderr}"
        );
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let r = doc["results"].as_array().unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(r[0]["id"], "good");
        assert!(r[0].get("error").is_none());
        assert!((r[0]["output"]["chi2"].as_f64().unwrap() - 4.0).abs() < 1e-12);
        assert_eq!(r[0]["output"]["df"], 1);
        let err = |i: usize| {
            assert!(r[i].get("output").is_none());
            r[i]["error"].as_str().unwrap().to_string()
        };
        assert!(
            err(1).contains("unknown kind \"t_test_of_the_future\""),
            "{}",
            err(1)
        );
        assert!(err(2).contains("control.n"), "{}", err(2));
        assert_eq!(err(3), "n must be ≥ 2 in each group (control has n = 1)");
        assert!(err(4).contains("no \"input\""), "{}", err(4));
    }
}

#[test]
fn unreadable_or_unparsable_files_fail_the_command() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let missing = abmesh_stats(&dir.join("no-such-file.json"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-file.json"));
    for bad in ["{\"cases\": ", "[1, 2]", "{\"cases\": {}}"] {
        let out = abmesh_stats_stdin(bad);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(out.stdout.is_empty());
    }
}
