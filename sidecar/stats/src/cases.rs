//! The statistical case format (documented in `sidecar/stats/README.md`) and its
//! evaluation, behind `abmesh stats FILE`.
//!
//! A file is `{"cases": [{"id", "kind", "input", "expected"?}, ...]}`. Each
//! case is evaluated on its own: a case that cannot be evaluated (unknown
//! kind, missing or mistyped input field, invalid values) becomes an error
//! entry and the others still run. `expected` is ignored here; outputs carry
//! exactly the keys the README lists as `expected` for the kind.
//!
//! Input objects reject unknown fields, so a misspelt parameter is an error
//! rather than a silently used default. Defaults beyond the README: a
//! `sequential` case may omit `n_star` ([`DEFAULT_N_STAR`]) and `relative`
//! (false); a `cuped` case may give `alpha` (default 0.05, only the interval,
//! which is not part of the output, depends on it); a `beta_binomial` case
//! may omit `prior` (uniform Beta(1, 1)); `ratio`, `cuped_lift` and
//! `quantile` cases may omit `relative` (false).
//!
//! One kind beyond the reference cases, defined by abmesh (the README's
//! "Kind `quantile`"; EVALUATION.md, "Statistics"):
//!
//! * `quantile`: input `control`, `treatment`: `{bounds, counts}` (a
//!   histogram: bucket i holds values in (bounds[i], bounds[i+1]], so
//!   `bounds` has one more element than `counts`), `q` (the quantile level
//!   ν, e.g. 0.95), `alpha`, `relative`; expected `control_quantile`,
//!   `treatment_quantile` (the ν-quantiles of the piecewise-linear CDFs),
//!   `estimate` (q_t − q_c, or (q_t − q_c)/q_c), `se` (Woodruff,
//!   [`quantile_test`]), `df` (Welch–Satterthwaite over the arms' effective
//!   df z·√(ν(1 − ν)n)), `p_value` (two-sided Student t(df)), `ci_low`,
//!   `ci_high` (estimate ∓ t_{1−α/2, df}·se).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::bayes::{chance_to_beat, BetaPrior};
use super::cuped::cuped;
use super::cuped_lift::{comoments_from_sums, cuped_lift};
use super::effect::EffectResult;
use super::lift::relative_lift;
use super::moments::{CoMoments, Summary};
use super::multiple::{adjust, Adjustment};
use super::power::sample_size_proportions;
use super::proportions::{two_proportion, Proportion};
use super::quantile::{quantile_test, Histogram};
use super::ratio::{ratio, RatioMoments};
use super::sequential::{sequential, SequentialParams, DEFAULT_N_STAR};
use super::srm::srm;
use super::welch::welch_t;

/// The kinds of case this evaluator knows.
pub const KINDS: [&str; 12] = [
    "welch_t",
    "relative_lift",
    "sequential",
    "two_proportion",
    "srm",
    "sample_size",
    "beta_binomial",
    "cuped",
    "multiple_testing",
    "ratio",
    "cuped_lift",
    "quantile",
];

/// The evaluation of one case: `{"id", "output"}` or `{"id", "error"}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaseResult {
    /// The case's `id` as given (null when it had none).
    pub id: Value,
    /// The output object, when the case could be evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Why it could not be, otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CaseResult {
    /// Whether this case failed to evaluate.
    pub fn is_error(&self) -> bool {
        self.error.is_some()
    }
}

/// The whole answer: `{"results": [...]}`, in the order of the cases.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub results: Vec<CaseResult>,
}

impl Report {
    /// How many cases failed to evaluate.
    pub fn error_count(&self) -> usize {
        self.results.iter().filter(|r| r.is_error()).count()
    }
}

#[derive(Deserialize)]
struct CaseFile {
    cases: Vec<Value>,
}

/// Why a case file as a whole could not be read.
#[derive(Debug, thiserror::Error)]
#[error("not a case file: {0}")]
pub struct FileError(#[from] serde_path_to_error::Error<serde_json::Error>);

/// Evaluates every case of a case file (JSON bytes). Errors only when the
/// bytes are not JSON of the shape `{"cases": [...]}`.
pub fn evaluate_file(bytes: &[u8]) -> Result<Report, FileError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let file: CaseFile = serde_path_to_error::deserialize(de)?;
    Ok(Report {
        results: file.cases.iter().map(evaluate_case).collect(),
    })
}

/// Evaluates one case object.
pub fn evaluate_case(case: &Value) -> CaseResult {
    let id = case.get("id").cloned().unwrap_or(Value::Null);
    let outcome = (|| {
        let obj = case
            .as_object()
            .ok_or(CaseError::Shape("a case must be a JSON object"))?;
        if !obj.contains_key("id") {
            return Err(CaseError::Shape("the case has no \"id\""));
        }
        let kind = match obj.get("kind") {
            Some(Value::String(k)) => k.as_str(),
            Some(_) => return Err(CaseError::Shape("\"kind\" must be a string")),
            None => return Err(CaseError::Shape("the case has no \"kind\"")),
        };
        let input = obj
            .get("input")
            .ok_or(CaseError::Shape("the case has no \"input\""))?;
        evaluate(kind, input)
    })();
    match outcome {
        Ok(output) => CaseResult {
            id,
            output: Some(output),
            error: None,
        },
        Err(error) => CaseResult {
            id,
            output: None,
            error: Some(error.to_string()),
        },
    }
}

/// Why a case could not be evaluated (its `error` entry).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CaseError {
    /// The case object itself is malformed.
    #[error("{0}")]
    Shape(&'static str),
    #[error("unknown kind {kind:?} (known kinds: {})", KINDS.join(", "))]
    UnknownKind { kind: String },
    /// The input does not have the kind's shape; `path` names the field
    /// (`.` for the input itself).
    #[error("invalid input{}: {message}", if path == "." { String::new() } else { format!(" at {path}") })]
    Input { path: String, message: String },
    #[error(transparent)]
    Stats(#[from] super::StatsError),
    #[error(transparent)]
    Method(#[from] super::multiple::UnknownAdjustment),
}

/// Parses `input` as `T`, naming the offending field on failure.
fn parse<T: DeserializeOwned>(input: &Value) -> Result<T, CaseError> {
    serde_path_to_error::deserialize(input).map_err(|e| CaseError::Input {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TwoSummaries {
    control: Summary,
    treatment: Summary,
    alpha: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SequentialInput {
    control: Summary,
    treatment: Summary,
    alpha: f64,
    #[serde(default = "default_n_star")]
    n_star: f64,
    #[serde(default)]
    relative: bool,
}

fn default_n_star() -> f64 {
    DEFAULT_N_STAR
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TwoProportions {
    control: Proportion,
    treatment: Proportion,
    alpha: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SrmInput {
    observed: Vec<u64>,
    weights: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleSizeInput {
    baseline_rate: f64,
    mde_abs: f64,
    alpha: f64,
    power: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BetaBinomialInput {
    control: Proportion,
    treatment: Proportion,
    #[serde(default)]
    prior: BetaPrior,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pairs {
    y: Vec<f64>,
    x: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CupedInput {
    control: Pairs,
    treatment: Pairs,
    #[serde(default = "default_alpha")]
    alpha: f64,
}

fn default_alpha() -> f64 {
    0.05
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MultipleInput {
    p_values: Vec<f64>,
    method: String,
}

/// One arm of a `ratio` case: per-user numerator m and denominator d.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RatioArm {
    n: u64,
    num_sum: f64,
    num_sum_sq: f64,
    den_sum: f64,
    den_sum_sq: f64,
    sum_products: f64,
}

impl RatioArm {
    fn moments(&self, group: &'static str) -> super::Result<RatioMoments> {
        RatioMoments::from_sums(
            group,
            self.n,
            self.num_sum,
            self.num_sum_sq,
            self.den_sum,
            self.den_sum_sq,
            self.sum_products,
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RatioInput {
    control: RatioArm,
    treatment: RatioArm,
    alpha: f64,
    #[serde(default)]
    relative: bool,
}

/// One arm of a `cuped_lift` case: outcome y, pre-experiment covariate x.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CupedArm {
    n: u64,
    y_sum: f64,
    y_sum_sq: f64,
    x_sum: f64,
    x_sum_sq: f64,
    xy_sum: f64,
}

impl CupedArm {
    fn comoments(&self, group: &'static str) -> super::Result<CoMoments> {
        comoments_from_sums(
            group,
            self.n,
            self.y_sum,
            self.y_sum_sq,
            self.x_sum,
            self.x_sum_sq,
            self.xy_sum,
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CupedLiftInput {
    control: CupedArm,
    treatment: CupedArm,
    alpha: f64,
    #[serde(default)]
    relative: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistogramInput {
    bounds: Vec<f64>,
    counts: Vec<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantileInput {
    control: HistogramInput,
    treatment: HistogramInput,
    q: f64,
    alpha: f64,
    #[serde(default)]
    relative: bool,
}

fn effect_json(r: &EffectResult) -> Value {
    json!({"estimate": r.estimate, "se": r.se, "df": r.df, "p_value": r.p_value,
           "ci_low": r.ci_low, "ci_high": r.ci_high})
}

/// Evaluates one case of `kind` on `input`; the output has the README's
/// `expected` keys for that kind.
pub fn evaluate(kind: &str, input: &Value) -> Result<Value, CaseError> {
    let e = CaseError::Stats;
    Ok(match kind {
        "welch_t" => {
            let i: TwoSummaries = parse(input)?;
            let r = welch_t(&i.control, &i.treatment, i.alpha).map_err(e)?;
            json!({"diff": r.diff, "se": r.se, "t": r.t, "df": r.df, "p_value": r.p_value,
                   "ci_low": r.ci_low, "ci_high": r.ci_high})
        }
        "relative_lift" => {
            let i: TwoSummaries = parse(input)?;
            let r = relative_lift(&i.control, &i.treatment, i.alpha).map_err(e)?;
            json!({"lift": r.lift, "se": r.se, "df": r.df, "p_value": r.p_value,
                   "ci_low": r.ci_low, "ci_high": r.ci_high})
        }
        "sequential" => {
            let i: SequentialInput = parse(input)?;
            let params = SequentialParams {
                alpha: i.alpha,
                n_star: i.n_star,
                relative: i.relative,
            };
            let r = sequential(&i.control, &i.treatment, params).map_err(e)?;
            json!({"estimate": r.estimate, "se": r.se, "ci_low": r.ci_low, "ci_high": r.ci_high,
                   "p_value": r.p_value})
        }
        "two_proportion" => {
            let i: TwoProportions = parse(input)?;
            let r = two_proportion(&i.control, &i.treatment, i.alpha).map_err(e)?;
            json!({"diff": r.diff, "z": r.z, "p_value": r.p_value, "ci_low": r.ci_low,
                   "ci_high": r.ci_high})
        }
        "srm" => {
            let i: SrmInput = parse(input)?;
            let r = srm(&i.observed, &i.weights).map_err(e)?;
            json!({"chi2": r.chi2, "df": r.df, "p_value": r.p_value})
        }
        "sample_size" => {
            let i: SampleSizeInput = parse(input)?;
            let n =
                sample_size_proportions(i.baseline_rate, i.mde_abs, i.alpha, i.power).map_err(e)?;
            json!({ "n_per_variant": n })
        }
        "beta_binomial" => {
            let i: BetaBinomialInput = parse(input)?;
            let p = chance_to_beat(&i.control, &i.treatment, i.prior).map_err(e)?;
            json!({ "chance_to_beat": p })
        }
        "cuped" => {
            let i: CupedInput = parse(input)?;
            let c = CoMoments::from_xy(&i.control.x, &i.control.y).map_err(e)?;
            let t = CoMoments::from_xy(&i.treatment.x, &i.treatment.y).map_err(e)?;
            let r = cuped(&c, &t, i.alpha).map_err(e)?;
            json!({"theta": r.theta, "diff": r.diff, "se": r.se, "p_value": r.p_value,
                   "variance_reduction": r.variance_reduction})
        }
        "multiple_testing" => {
            let i: MultipleInput = parse(input)?;
            let method: Adjustment = i.method.parse()?;
            json!({ "adjusted": adjust(&i.p_values, method).map_err(e)? })
        }
        "ratio" => {
            let i: RatioInput = parse(input)?;
            let c = i.control.moments("control").map_err(e)?;
            let t = i.treatment.moments("treatment").map_err(e)?;
            effect_json(&ratio(&c, &t, i.alpha, i.relative).map_err(e)?)
        }
        "cuped_lift" => {
            let i: CupedLiftInput = parse(input)?;
            let c = i.control.comoments("control").map_err(e)?;
            let t = i.treatment.comoments("treatment").map_err(e)?;
            let r = cuped_lift(&c, &t, i.alpha, i.relative).map_err(e)?;
            json!({"theta": r.theta, "estimate": r.estimate, "se": r.se, "df": r.df,
                   "p_value": r.p_value, "ci_low": r.ci_low, "ci_high": r.ci_high})
        }
        "quantile" => {
            let i: QuantileInput = parse(input)?;
            let c = Histogram::checked("control", i.control.bounds, i.control.counts).map_err(e)?;
            let t = Histogram::checked("treatment", i.treatment.bounds, i.treatment.counts)
                .map_err(e)?;
            let r = quantile_test(&c, &t, i.q, i.alpha, i.relative).map_err(e)?;
            json!({"control_quantile": r.control_quantile,
                   "treatment_quantile": r.treatment_quantile, "estimate": r.estimate,
                   "se": r.se, "df": r.df, "p_value": r.p_value, "ci_low": r.ci_low,
                   "ci_high": r.ci_high})
        }
        other => {
            return Err(CaseError::UnknownKind {
                kind: other.to_owned(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_kind_and_bad_inputs_are_per_case_errors() {
        let file = br#"{"cases": [
            {"id": "a", "kind": "nope", "input": {}},
            {"id": "b", "kind": "welch_t", "input": {"control": {"n": 10, "mean": 1, "sd": 1}}},
            {"id": "c", "kind": "srm", "input": {"observed": [10, 12], "weights": [1, 1]}},
            {"id": "d", "kind": "srm", "input": {"observed": [10, 12], "weights": [1, -1]}},
            {"id": "e", "kind": "srm", "input": {"observed": [10, 12], "weights": [1, 1], "wieghts": 2}},
            {"kind": "srm", "input": {}},
            7
        ]}"#;
        let r = evaluate_file(file).unwrap();
        assert_eq!(r.results.len(), 7);
        assert_eq!(r.error_count(), 6);
        let err = |i: usize| r.results[i].error.clone().unwrap();
        assert!(err(0).starts_with("unknown kind \"nope\""), "{}", err(0));
        assert!(err(1).contains("missing field `treatment`"), "{}", err(1));
        assert!(r.results[2].output.is_some());
        assert_eq!(err(3), "weights must be positive (weight 1 is -1)");
        assert!(err(4).contains("wieghts"), "{}", err(4));
        assert_eq!(r.results[5].id, Value::Null);
        assert_eq!(err(6), "a case must be a JSON object");
    }

    #[test]
    fn typed_errors_name_the_field() {
        let input = json!({"control": {"n": 1.5, "mean": 1, "sd": 1},
                           "treatment": {"n": 10, "mean": 1, "sd": 1}, "alpha": 0.05});
        let e = evaluate("welch_t", &input).unwrap_err().to_string();
        assert!(e.starts_with("invalid input at control.n:"), "{e}");
    }

    #[test]
    fn new_kinds_give_typed_per_case_errors() {
        let arm = |n: u64, den_sum: f64| {
            json!({"n": n, "num_sum": 3, "num_sum_sq": 5, "den_sum": den_sum,
                   "den_sum_sq": den_sum * den_sum, "sum_products": 3.0 * den_sum})
        };
        let ok = json!({"n": 4, "num_sum": 3, "num_sum_sq": 5, "den_sum": 8,
                        "den_sum_sq": 20, "sum_products": 7});
        let e = evaluate(
            "ratio",
            &json!({"control": arm(4, 0.0), "treatment": ok, "alpha": 0.05}),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "control: the denominator sums to 0, so the ratio is undefined"
        );
        let r = evaluate(
            "ratio",
            &json!({"control": ok, "treatment": ok, "alpha": 0.05, "relative": true}),
        )
        .unwrap();
        assert_eq!(r["estimate"], 0.0);
        let cuped = json!({"n": 3, "y_sum": 6, "y_sum_sq": 14, "x_sum": 3, "x_sum_sq": 5,
                           "xy_sum": 50});
        let e = evaluate(
            "cuped_lift",
            &json!({"control": cuped, "treatment": cuped, "alpha": 0.05}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("control: inconsistent sums for x × y"), "{e}");
        let e = evaluate(
            "quantile",
            &json!({"control": {"bounds": [0, 1], "counts": [10]},
                    "treatment": {"bounds": [0, 1, 2], "counts": [10]}, "q": 0.5, "alpha": 0.05}),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "treatment: invalid histogram: 1 counts need 2 bounds, got 3"
        );
        let e = evaluate(
            "quantile",
            &json!({"control": {"bounds": [0, 1], "counts": [10]},
                    "treatment": {"bounds": [0, 1], "counts": [10]}, "q": 0.99, "alpha": 0.05}),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "n must be ≥ 381 in each group (control has n = 10)");
        assert!(evaluate("quantile", &json!({"q": 0.5})).is_err());
    }

    #[test]
    fn not_a_case_file() {
        assert!(evaluate_file(b"[]").is_err());
        assert!(evaluate_file(b"{\"cases\": 3}").is_err());
        assert!(evaluate_file(b"{").is_err());
        assert_eq!(evaluate_file(b"{\"cases\": []}").unwrap().results.len(), 0);
    }
}
