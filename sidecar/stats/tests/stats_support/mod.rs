//! Runs a case file through the evaluator of `abmesh stats`
//! ([`abmesh_stats::cases::evaluate_file`], in process: this crate has no
//! binary; `sidecar/cli/tests/stats_reference.rs` runs the command itself)
//! and checks every output against `expected` with the agreement rule of
//! `sidecar/stats/README.md` (relative error ≤ 1e-6, or absolute ≤ 1e-9
//! near zero), reporting the largest errors per kind and key.

#![allow(dead_code)]

use abmesh_stats::cases::evaluate_file;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The agreement rule.
pub fn agrees(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-9 || (got - want).abs() <= 1e-6 * want.abs()
}

/// Largest errors seen for one (kind, key).
#[derive(Clone, Debug, Default)]
pub struct Worst {
    /// Largest relative error among values with |expected| > 1e-9 (where
    /// the relative rule is the one that applies).
    pub rel: f64,
    /// The case it came from.
    pub rel_case: String,
    /// Largest absolute error among values with |expected| ≤ 1e-9.
    pub abs_near_zero: f64,
    /// Values compared.
    pub count: usize,
}

/// What [`check_file`] found.
pub struct Checked {
    /// Cases in the file.
    pub cases: usize,
    /// Disagreements ("id.key: why").
    pub problems: Vec<String>,
    /// Per kind, per key.
    pub worst: BTreeMap<String, BTreeMap<String, Worst>>,
    /// Each case's output by id.
    pub outputs: BTreeMap<String, Value>,
}

impl Checked {
    /// Largest relative error over every key of `kind`.
    pub fn max_rel(&self, kind: &str) -> f64 {
        self.worst
            .get(kind)
            .map_or(0.0, |m| m.values().map(|w| w.rel).fold(0.0, f64::max))
    }

    /// Prints the per-kind, per-key table to stderr.
    pub fn print(&self, title: &str) {
        eprintln!("{title}: {} cases", self.cases);
        for (kind, keys) in &self.worst {
            for (key, w) in keys {
                eprintln!(
                    "  {kind:<11} {key:<18} n={:<4} max rel err {:.2e} ({}) max abs err near 0 {:.1e}",
                    w.count, w.rel, w.rel_case, w.abs_near_zero
                );
            }
        }
    }
}

/// Evaluates FILE as `abmesh stats FILE` does (the same function, its
/// report serialized to JSON as the command prints it) and compares each
/// output with `expected`.
pub fn check_file(file: &Path) -> Checked {
    let bytes = std::fs::read(file).unwrap();
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    let cases = doc["cases"].as_array().expect("cases");
    let report = evaluate_file(&bytes);
    assert!(report.is_ok(), "abmesh stats failed: {:?}", report.err());
    let res: Value = serde_json::to_value(report.unwrap()).expect("one JSON document");
    let results = res["results"].as_array().expect("results");
    assert_eq!(results.len(), cases.len(), "one result per case");
    let mut c = Checked {
        cases: cases.len(),
        problems: Vec::new(),
        worst: BTreeMap::new(),
        outputs: BTreeMap::new(),
    };
    for (case, result) in cases.iter().zip(results) {
        let id = case["id"].as_str().unwrap().to_string();
        let kind = case["kind"].as_str().unwrap().to_string();
        assert_eq!(result["id"], case["id"], "results are in case order");
        let Some(output) = result.get("output") else {
            c.problems.push(format!("{id}: error {}", result["error"]));
            continue;
        };
        let (got, want) = (
            output.as_object().unwrap(),
            case["expected"].as_object().unwrap(),
        );
        for k in got.keys().filter(|k| !want.contains_key(*k)) {
            c.problems.push(format!("{id}.{k}: not an expected key"));
        }
        for (k, w) in want {
            let (Some(g), Some(w)) = (got.get(k).and_then(Value::as_f64), w.as_f64()) else {
                c.problems
                    .push(format!("{id}.{k}: missing or not a number"));
                continue;
            };
            let e = c
                .worst
                .entry(kind.clone())
                .or_default()
                .entry(k.clone())
                .or_default();
            e.count += 1;
            let err = (g - w).abs();
            if w.abs() > 1e-9 {
                let rel = err / w.abs();
                if rel > e.rel {
                    e.rel = rel;
                    e.rel_case = id.clone();
                }
            } else {
                e.abs_near_zero = e.abs_near_zero.max(err);
            }
            if !agrees(g, w) {
                c.problems.push(format!(
                    "{id}.{k}: got {g:e}, expected {w:e} (rel {:.2e})",
                    err / w.abs()
                ));
            }
        }
        c.outputs.insert(id, output.clone());
    }
    c
}
