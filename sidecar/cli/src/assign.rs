//! `abmesh assign --config FILE`: assignments outside Envoy (DESIGN.md,
//! contract 2).
//!
//! Reads user ids from stdin, one per line (the line ending, `\n` or `\r\n`,
//! is not part of the id; other bytes are taken as they are, UTF-8 or not),
//! and writes one JSON object per line per (user, experiment):
//! `{"user": "...", "experiment": "...", "variant": "..." | null}`.
//!
//! The config file is the same JSON the filter takes. Match conditions and
//! the force header do not apply: they depend on the request, not on the
//! user.
//!
//! By default variants are assigned by the configured weights, which is
//! what the filter does until the sidecar sends bandit weights. To
//! reproduce what the filter did in a later allocation period of a bandit
//! experiment (for an offline join against exposures of that period), give
//! that period's weights: `--weights ranker:control=0.5,a=0.15,b=0.35`
//! (once per bandit experiment, every variant named) and `--period N`
//! (default 1). The filter lays the same weights out in the same buckets
//! ([`abmesh_filter::Allocation::set`]), so the output agrees with it bit
//! for bit.
//!
//! JSON strings are Unicode, so an id that is not UTF-8 cannot be printed
//! as it is: `user` then shows it with U+FFFD in place of the bad bytes
//! (for people), and an extra field `user_b64` carries the exact bytes in
//! standard base64 (for programs; two different ids always differ there).
//! UTF-8 ids have no `user_b64`.

use abmesh_filter::{Allocation, AllocationError, Plan};
use anyhow::{Context, Result};
use base64::Engine as _;
use serde::Serialize;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Plugin configuration (JSON).
    #[arg(long, short)]
    config: PathBuf,
    /// A bandit experiment's weights in the allocation period to reproduce,
    /// as EXPERIMENT:VARIANT=W,VARIANT=W,... naming every variant of the
    /// experiment (weights are relative, ≥ 0). Repeat for each experiment;
    /// the others keep their configured weights.
    #[arg(long, value_name = "EXPERIMENT:VARIANT=W,...")]
    weights: Vec<String>,
    /// The allocation period the --weights are of (≥ 1). Default: 1.
    #[arg(long, value_name = "N", requires = "weights")]
    period: Option<u32>,
}

/// Why `--weights` or `--period` cannot be used with the configuration.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("--weights {0:?}: expected EXPERIMENT:VARIANT=W,VARIANT=W,...")]
    Syntax(String),
    #[error("--weights: the configuration has no experiment {0:?}")]
    UnknownExperiment(String),
    #[error("--weights: experiment {0:?} has no bandit, so the filter only ever uses its configured weights")]
    NotABandit(String),
    #[error("--weights: experiment {0:?} is given twice")]
    Repeated(String),
    #[error("--weights: experiment {experiment:?} has no variant {variant:?}")]
    UnknownVariant { experiment: String, variant: String },
    #[error("--weights: experiment {experiment:?} variant {variant:?} is given twice")]
    RepeatedVariant { experiment: String, variant: String },
    #[error("--weights: experiment {experiment:?} variant {variant:?} has no weight (every variant must be named)")]
    MissingVariant { experiment: String, variant: String },
    #[error(
        "--weights: experiment {experiment:?} variant {variant:?}: {weight:?} is not a number >= 0"
    )]
    BadWeight {
        experiment: String,
        variant: String,
        weight: String,
    },
    #[error("--period must be at least 1 (period 0 is the configured weights)")]
    PeriodZero,
    #[error(transparent)]
    Allocation(#[from] AllocationError),
}

/// The allocation `--weights` and `--period` describe: the configured
/// weights, with each named experiment's replaced in `period`.
pub fn allocation(
    plan: &Plan,
    weights: &[String],
    period: Option<u32>,
) -> Result<Allocation, WeightsError> {
    let mut alloc = Allocation::new(plan);
    let period = period.unwrap_or(1);
    if period == 0 {
        return Err(WeightsError::PeriodZero);
    }
    for spec in weights {
        let (name, list) = spec
            .split_once(':')
            .ok_or_else(|| WeightsError::Syntax(spec.clone()))?;
        let e = plan
            .experiments()
            .iter()
            .position(|x| x.name() == name)
            .ok_or_else(|| WeightsError::UnknownExperiment(name.into()))?;
        let exp = &plan.experiments()[e];
        if exp.bandit().is_none() {
            return Err(WeightsError::NotABandit(name.into()));
        }
        if alloc.period(e) != 0 {
            return Err(WeightsError::Repeated(name.into()));
        }
        let mut w: Vec<Option<f64>> = vec![None; exp.variants().len()];
        for pair in list.split(',') {
            let (variant, value) = pair
                .split_once('=')
                .ok_or_else(|| WeightsError::Syntax(spec.clone()))?;
            let (variant, value) = (variant.trim(), value.trim());
            let v = exp
                .variant_index(variant)
                .ok_or_else(|| WeightsError::UnknownVariant {
                    experiment: name.into(),
                    variant: variant.into(),
                })?;
            let x = value
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| WeightsError::BadWeight {
                    experiment: name.into(),
                    variant: variant.into(),
                    weight: value.into(),
                })?;
            if w[v].replace(x).is_some() {
                return Err(WeightsError::RepeatedVariant {
                    experiment: name.into(),
                    variant: variant.into(),
                });
            }
        }
        let w = w
            .iter()
            .zip(exp.variants())
            .map(|(x, v)| {
                x.ok_or_else(|| WeightsError::MissingVariant {
                    experiment: name.into(),
                    variant: v.name().into(),
                })
            })
            .collect::<Result<Vec<f64>, _>>()?;
        alloc.set(e, period, &w)?;
    }
    Ok(alloc)
}

#[derive(Serialize)]
struct Line<'a> {
    user: &'a str,
    /// The id's bytes in base64, when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_b64: Option<&'a str>,
    experiment: &'a str,
    variant: Option<&'a str>,
}

pub fn run(args: Args) -> Result<()> {
    let bytes = std::fs::read(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let plan = Plan::from_json(&bytes).with_context(|| format!("in {}", args.config.display()))?;
    let alloc = allocation(&plan, &args.weights, args.period)
        .with_context(|| format!("with {}", args.config.display()))?;
    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    assign_stream(&plan, &alloc, stdin, &mut out)?;
    out.flush()?;
    Ok(())
}

/// Assigns every line of `input` by `alloc`'s weights
/// ([`Allocation::new`]: the configured ones), writing NDJSON to `out`.
pub fn assign_stream(
    plan: &Plan,
    alloc: &Allocation,
    mut input: impl BufRead,
    out: &mut impl Write,
) -> Result<()> {
    let mut decisions = plan.decisions();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let mut id = &line[..];
        if let Some(rest) = id.strip_suffix(b"\n") {
            id = rest;
        }
        if let Some(rest) = id.strip_suffix(b"\r") {
            id = rest;
        }
        plan.assign_user_with(id, alloc, &mut decisions);
        // JSON strings are Unicode: bytes that are not UTF-8 print as
        // U+FFFD, and exactly in `user_b64`.
        let user = String::from_utf8_lossy(id);
        let b64 = std::str::from_utf8(id)
            .is_err()
            .then(|| base64::engine::general_purpose::STANDARD.encode(id));
        for (e, a) in plan.experiments().iter().zip(decisions.assignments()) {
            let line = Line {
                user: &user,
                user_b64: b64.as_deref(),
                experiment: e.name(),
                variant: a.variant().map(|v| e.variants()[v].name()),
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BANDIT: &str = r#"{"experiments": [
        {"name": "ranker", "bandit": {"metric": "purchase"},
         "variants": [{"name": "control", "weight": 2}, {"name": "a", "weight": 1}, {"name": "b", "weight": 1}]},
        {"name": "banner", "variants": [{"name": "x", "weight": 1}, {"name": "y", "weight": 1}]}]}"#;

    fn weights(specs: &[&str], period: Option<u32>) -> Result<Allocation, WeightsError> {
        let plan = Plan::from_json(BANDIT.as_bytes()).unwrap();
        let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        allocation(&plan, &specs, period)
    }

    #[test]
    fn weights_reproduce_the_filters_period() {
        let plan = Plan::from_json(BANDIT.as_bytes()).unwrap();
        let alloc = weights(&["ranker:b=0.35, control=0.5,a=0.15"], Some(3)).unwrap();
        let mut expected = Allocation::new(&plan);
        expected.set(0, 3, &[0.5, 0.15, 0.35]).unwrap();
        assert_eq!(alloc, expected);
        assert_eq!(
            weights(&["ranker:control=2,a=1,b=1"], None)
                .unwrap()
                .period(0),
            1
        );
        assert!(weights(&[], None).unwrap().is_configured());
        // The output follows the weights: with all of the non-control share
        // on `b`, nobody is in `a`.
        let input: String = (0..2000)
            .map(|i| {
                format!(
                    "user-{i}
"
                )
            })
            .collect();
        let mut out = Vec::new();
        let alloc = weights(&["ranker:control=1,a=0,b=1"], Some(2)).unwrap();
        assign_stream(&plan, &alloc, input.as_bytes(), &mut out).unwrap();
        let lines: Vec<serde_json::Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let count = |exp: &str, v: &str| {
            lines
                .iter()
                .filter(|l| l["experiment"] == exp && l["variant"] == v)
                .count()
        };
        assert_eq!(count("ranker", "a"), 0);
        assert!(count("ranker", "b") > 800 && count("ranker", "control") > 800);
        assert!(
            count("banner", "x") > 800,
            "banner keeps its configured weights"
        );
    }

    #[test]
    fn bad_weights_name_the_experiment_and_variant() {
        for (specs, period, msg) in [
            (&["ranker"][..], None, "expected EXPERIMENT:VARIANT=W"),
            (
                &["ranker:control=1;a=1"],
                None,
                "variant \"control\": \"1;a=1\" is not a number",
            ),
            (&["gone:control=1"], None, "no experiment \"gone\""),
            (
                &["banner:x=1,y=1"],
                None,
                "experiment \"banner\" has no bandit",
            ),
            (
                &["ranker:control=1,a=1,z=1"],
                None,
                "experiment \"ranker\" has no variant \"z\"",
            ),
            (
                &["ranker:control=1,a=1"],
                None,
                "variant \"b\" has no weight",
            ),
            (
                &["ranker:control=1,a=1,a=2,b=1"],
                None,
                "variant \"a\" is given twice",
            ),
            (
                &["ranker:control=1,a=-1,b=1"],
                None,
                "variant \"a\": \"-1\" is not a number",
            ),
            (&["ranker:control=1,a=x,b=1"], None, "variant \"a\": \"x\""),
            (
                &["ranker:control=1,a=inf,b=1"],
                None,
                "\"inf\" is not a number",
            ),
            (&["ranker:control=0,a=0,b=0"], None, "add up to 0"),
            (
                &["ranker:control=1,a=1,b=1", "ranker:control=1,a=1,b=1"],
                None,
                "\"ranker\" is given twice",
            ),
            (
                &["ranker:control=1,a=1,b=1"],
                Some(0),
                "--period must be at least 1",
            ),
        ] {
            let e = weights(specs, period).unwrap_err().to_string();
            assert!(e.contains(msg), "{specs:?}: {e}");
        }
    }

    fn run_on(input: &[u8]) -> Vec<serde_json::Value> {
        let plan = Plan::from_json(
            br#"{"experiments": [{"name": "e", "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}]}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        assign_stream(&plan, &Allocation::new(&plan), input, &mut out).unwrap();
        out.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn ids_that_are_not_utf8_print_losslessly_in_user_b64() {
        // Two ids that differ only in bytes that are not UTF-8 print the
        // same `user`, and differ in `user_b64`, which decodes to the id.
        let lines = run_on(b"u-\xff\n u-\xfe\nplain\n");
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0]["user"],
            lines[1]["user"].as_str().unwrap().trim_start()
        );
        let decode = |v: &serde_json::Value| {
            base64::engine::general_purpose::STANDARD
                .decode(v["user_b64"].as_str().expect("user_b64"))
                .unwrap()
        };
        assert_eq!(decode(&lines[0]), b"u-\xff");
        assert_eq!(decode(&lines[1]), b" u-\xfe");
        assert_eq!(lines[2]["user"], "plain");
        assert!(
            lines[2].get("user_b64").is_none(),
            "UTF-8 ids have no user_b64"
        );
    }
}
