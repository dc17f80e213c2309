//! `abmesh stats` (its evaluator, in process) against GrowthBook's stats
//! engine (gbstats 0.8.0) on the kinds `ratio` and `cuped_lift` of
//! `sidecar/stats/README.md`.
//!
//! `tests/data/gbstats-cases.json` was written by
//! `tests/data/gen_gbstats_cases.py` (its docstring says how to run it, in a
//! venv of its own, and how its inputs map onto gbstats's
//! `RatioStatistic`, `RegressionAdjustedStatistic` and `TwoSidedTTest`).
//! Every output must agree with gbstats's within the README's rule, with
//! exactly the expected keys; the largest errors are printed
//! (`--nocapture`) for the record.

mod stats_support;

use abmesh_stats::{relative_lift, Summary};
use serde_json::Value;
use std::path::Path;

const CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gbstats-cases.json");

#[test]
fn ratio_and_cuped_lift_agree_with_gbstats() {
    let c = stats_support::check_file(Path::new(CASES));
    c.print("gbstats 0.8.0");
    assert!(
        c.problems.is_empty(),
        "{} disagreements:\n{}",
        c.problems.len(),
        c.problems.join("\n")
    );
    // A few hundred of each kind, relative and absolute, small and large n.
    let doc: Value = serde_json::from_slice(&std::fs::read(CASES).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    for kind in ["ratio", "cuped_lift"] {
        let of: Vec<&Value> = cases.iter().filter(|x| x["kind"] == kind).collect();
        assert!(of.len() >= 200, "{kind}: {} cases", of.len());
        for relative in [true, false] {
            assert!(
                of.iter().any(|x| x["input"]["relative"] == relative),
                "{kind}: no relative={relative} case"
            );
        }
        let n = |x: &&Value| x["input"]["control"]["n"].as_u64().unwrap();
        assert!(of.iter().map(n).min().unwrap() <= 3, "{kind}: no small n");
        assert!(
            of.iter().map(n).max().unwrap() >= 1_000_000,
            "{kind}: no large n"
        );
        eprintln!(
            "{kind}: max relative error vs gbstats {:.2e}",
            c.max_rel(kind)
        );
    }
    // CUPED cases where the covariate moves the estimate (θ far from 0).
    assert!(
        cases
            .iter()
            .filter(|x| x["kind"] == "cuped_lift")
            .filter(|x| x["expected"]["theta"].as_f64().unwrap().abs() > 0.5)
            .count()
            >= 20
    );
}

/// The issue's side-by-side table: a covariate at correlation 0.7, 20 000
/// users per arm. The CUPED relative lift and interval must be gbstats's,
/// and narrower than the unadjusted delta-method lift that the decision
/// uses today (by about √(1 − 0.7²) ≈ 0.71).
#[test]
fn the_issue_cuped_case_gives_gbstats_numbers() {
    let c = stats_support::check_file(Path::new(CASES));
    let id = "cuped_lift-420-issue14-rho0.7-rel";
    let doc: Value = serde_json::from_slice(&std::fs::read(CASES).unwrap()).unwrap();
    let case = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id)
        .expect("the issue case");
    let (got, want) = (&c.outputs[id], &case["expected"]);
    for k in ["estimate", "ci_low", "ci_high", "theta", "p_value"] {
        let (g, w) = (got[k].as_f64().unwrap(), want[k].as_f64().unwrap());
        assert!(stats_support::agrees(g, w), "{k}: {g} vs gbstats {w}");
    }
    // The unadjusted relative lift of the same users.
    let arm = |a: &Value| {
        let n = a["n"].as_u64().unwrap();
        let (s, ss) = (
            a["y_sum"].as_f64().unwrap(),
            a["y_sum_sq"].as_f64().unwrap(),
        );
        let mean = s / n as f64;
        Summary {
            n,
            mean,
            sd: ((ss - s * mean) / (n - 1) as f64).sqrt(),
        }
    };
    let input = &case["input"];
    let plain = relative_lift(&arm(&input["control"]), &arm(&input["treatment"]), 0.05).unwrap();
    eprintln!("                     relative lift   95% CI");
    eprintln!(
        "gbstats, CUPED       {:.6}        [{:.6}, {:.6}]",
        want["estimate"].as_f64().unwrap(),
        want["ci_low"].as_f64().unwrap(),
        want["ci_high"].as_f64().unwrap()
    );
    eprintln!(
        "abmesh cuped_lift    {:.6}        [{:.6}, {:.6}]",
        got["estimate"].as_f64().unwrap(),
        got["ci_low"].as_f64().unwrap(),
        got["ci_high"].as_f64().unwrap()
    );
    eprintln!(
        "abmesh unadjusted    {:.6}        [{:.6}, {:.6}]",
        plain.lift, plain.ci_low, plain.ci_high
    );
    let width = got["ci_high"].as_f64().unwrap() - got["ci_low"].as_f64().unwrap();
    let ratio = width / (plain.ci_high - plain.ci_low);
    assert!((0.66..0.76).contains(&ratio), "width ratio {ratio}");
}
