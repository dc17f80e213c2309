//! The report: every number a person needs to decide, computed from the
//! aggregates with the statistics engine (`abmesh_stats`).
//!
//! Per metric and treatment: the fixed-horizon test (Welch t for value
//! metrics, two-proportion z for conversions) with absolute and relative
//! (delta-method) intervals; Holm-adjusted p-values over all the
//! experiment's comparisons; the always-valid sequential interval and
//! p-value of the relative lift (safe to look at every refresh); CUPED when
//! users carry covariates; chance to beat control; MDE and power at the
//! current sample; and the cumulative lift over time.
//!
//! # CUPED in the lift
//!
//! When a value metric has covariates, the relative lift, its interval, the
//! always-valid interval, the chart and so the decision are CUPED-adjusted:
//! kind `cuped_lift` of `sidecar/stats/README.md` ([`cuped_lift`], θ pooled
//! over both arms, the adjusted difference over the control's unadjusted
//! mean), with the confidence sequence on its standard error. The
//! adjustment removes the share of the variance the covariate explains, so
//! the same users give a narrower interval and an earlier decision, and the
//! estimator stays unbiased. The unadjusted lift stays in
//! [`Comparison::unadjusted`]; conversions are not adjusted (they keep the
//! proportion tests), and neither are the fixed-horizon absolute test, the
//! chance to beat control and the MDE (the `cuped` block gives the adjusted
//! absolute difference).
//!
//! # One variance for conversions
//!
//! Conversions use p(1 − p) ([`abmesh_stats::bernoulli_variance`], the
//! Bernoulli population variance, as gbstats does) in every interval: the
//! relative lift and the sequential interval (a [`Proportion`] read as a
//! group) and the absolute Wald interval of [`two_proportion`].
//!
//! # The decision
//!
//! Made on the primary metric with the *sequential* results, because
//! reports are looked at continuously and a fixed-horizon p-value checked
//! every day would stop experiments on noise. In order:
//!
//! 0. halted variants (by a guardrail or an operator) are set aside and
//!    named first in the reason; the rest decide as below, and with no
//!    treatment left the decision is `stop-harm`;
//! 1. `keep-running` while a variant has fewer than `min_users` users, or
//!    there are no outcomes yet;
//! 2. `inconclusive` on a sample ratio mismatch (p < 0.001): assignment or
//!    logging is broken and no number can be trusted;
//! 3. `stop-harm` if a treatment is significantly worse (Holm over the
//!    treatments' sequential p-values, at α);
//! 4. `ship` if one is significantly better (the best of them);
//! 5. `inconclusive` if every treatment's always-valid interval lies inside
//!    ±`target_lift`: any effect is too small to matter;
//! 6. `keep-running` otherwise, with the MDE reached so far and the users
//!    still needed.

use serde::Serialize;

use super::data::{ExperimentData, MetricData};
use super::settings::Settings;
pub use super::values::{pct, Interval, SequentialOut, Stat};
use crate::aggregate::{Halt, HaltSource, MetricSums};
use abmesh_stats::guardrail::Check;
use abmesh_stats::sequential::confidence_sequence;
use abmesh_stats::{
    chance_to_beat, cuped, cuped_lift, holm, mde_at, mde_proportions, power_at, relative_lift,
    sample_size_means, sample_size_proportions, sequential, srm, srm_by_period, stratified,
    two_proportion, welch_t, BetaPrior, CoMoments, Moments, PeriodArm, PeriodCounts, PeriodPair,
    Proportion, SequentialParams, Stratified, SRM_ALERT_P,
};
use std::collections::BTreeMap;

/// The four outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionKind {
    Ship,
    StopHarm,
    KeepRunning,
    Inconclusive,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Ship => "ship",
            DecisionKind::StopHarm => "stop-harm",
            DecisionKind::KeepRunning => "keep-running",
            DecisionKind::Inconclusive => "inconclusive",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub decision: DecisionKind,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub experiment: String,
    pub generated_at_ms: i64,
    /// The last log record included.
    pub applied_lsn: u64,
    pub control: String,
    /// `experiments file` (from `--experiments`), `filter config` (learned
    /// from a filter's exposure batch) or `exposures` (variant names as the
    /// filter sent them; control = the first seen).
    pub definitions: &'static str,
    pub settings: Settings,
    pub variants: Vec<VariantSummary>,
    pub srm: Stat<SrmOut>,
    pub data_quality: DataQuality,
    /// The experiment's halts, current and lifted, oldest first.
    pub halts: Vec<HaltOut>,
    /// Per variant: the filters' health counters since the last lift.
    pub health: Vec<HealthOut>,
    /// The guardrail checks now (None: the experiment has no guardrails).
    pub guardrails: Option<GuardrailsOut>,
    pub primary_metric: Option<String>,
    pub metrics: Vec<MetricReport>,
    pub decision: Decision,
    /// A bandit experiment's allocation (None: not a bandit, or no
    /// exposures yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandit: Option<BanditOut>,
    /// The primary metric by segment, per dimension (absent when events
    /// carry no `segments`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SegmentReport>,
    /// Declared ratio metrics (the configuration's `metrics`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ratio_metrics: Vec<super::extra_metrics::RatioMetricReport>,
    /// Declared quantile metrics (the configuration's `metrics`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quantile_metrics: Vec<super::extra_metrics::QuantileMetricReport>,
}

/// One dimension's breakdown of the primary metric by segment
/// (`super::segments`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentReport {
    pub dimension: String,
    /// The metric compared (the report's primary metric).
    pub metric: String,
    pub segments: Vec<SegmentRow>,
    pub warnings: Vec<String>,
}

/// One value of a dimension.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentRow {
    pub value: String,
    /// Users per variant.
    pub users: BTreeMap<String, u64>,
    /// Some arm has fewer than the settings' `min_users`: the lifts are
    /// shown, but are too uncertain to act on.
    pub too_small: bool,
    pub comparisons: Vec<SegmentComparison>,
}

/// A treatment against the control within one segment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentComparison {
    pub variant: String,
    /// `welch_t`, `two_proportion` or `stratified_welch`, as for the whole
    /// experiment.
    pub test: &'static str,
    pub absolute: Stat<Interval>,
    pub relative: Stat<Interval>,
    pub p_value: Option<f64>,
    /// Adjusted over every comparison of the dimension.
    pub p_value_holm: Option<f64>,
    pub p_value_bh: Option<f64>,
}

/// A bandit experiment in a report: the weights now and over time, and how
/// the analysis allowed for them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BanditOut {
    /// Always true: the allocation changed with the data, so the
    /// comparisons are per-period (stratified) estimates and the
    /// sample-ratio check tests each period against its own weights.
    pub adaptive: bool,
    /// The metric the bandit maximises.
    pub metric: String,
    /// The current period's share per variant.
    pub weights: BTreeMap<String, f64>,
    /// When the current period started.
    pub updated_at_ms: i64,
    /// The current period (0: still the configured weights).
    pub period: u32,
    /// Every period, oldest first.
    pub history: Vec<BanditPeriodOut>,
    /// What the adaptive analysis does, in words.
    pub note: String,
}

/// One allocation period in a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BanditPeriodOut {
    pub period: u32,
    pub started_ms: i64,
    pub weights: BTreeMap<String, f64>,
    /// P(best) per variant the bandit chose between (empty for period 0).
    pub prob_best: BTreeMap<String, f64>,
    /// Users first exposed in this period, per variant.
    pub users: BTreeMap<String, i64>,
    /// This period's sample-ratio check against its weights (None: too
    /// few users to test).
    pub srm_p_value: Option<f64>,
}

/// A halt in a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HaltOut {
    /// Still halted (not lifted).
    pub active: bool,
    #[serde(flatten)]
    pub halt: Halt,
}

/// Who halted a variant, as the text and HTML reports say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltedBy<'a> {
    /// A guardrail, by its rule.
    Guardrail(&'a str),
    /// An operator (or a halt without a rule).
    Operator,
}

impl HaltOut {
    /// Who halted the variant.
    pub fn by(&self) -> HaltedBy<'_> {
        match (self.halt.source, &self.halt.rule) {
            (HaltSource::Guardrail, Some(rule)) => HaltedBy::Guardrail(rule),
            _ => HaltedBy::Operator,
        }
    }
}

/// One variant's health.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthOut {
    pub variant: String,
    /// Requests assigned by hash (exact).
    pub requests: u64,
    /// Sampled responses (status seen).
    pub responses: u64,
    /// Sampled responses per status class, 1xx..5xx.
    pub status: [u64; 5],
    /// 5xx share of the sampled responses.
    pub error_rate: Option<f64>,
    /// Latency percentiles from the histogram, ms.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

/// The guardrails of an experiment and their current results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardrailsOut {
    /// Family-wise α of all checks (Bonferroni over rules × treatments).
    pub alpha: f64,
    pub min_responses: u64,
    pub checks: Vec<CheckOut>,
}

/// One guardrail check of one treatment: the check as the guardrail
/// computed it, with the variant's name and whether an operator
/// overrode the rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckOut {
    pub variant: String,
    /// `rule` (`error_rate`, `p95_latency` or `metric:NAME`), `status`
    /// (`ok`, `breach`, `not_enough_data` or `error`), the estimate, its
    /// interval, the limit, the p-value and the message.
    #[serde(flatten)]
    pub check: Check,
    /// An operator lifted a halt of this variant: this rule no longer halts
    /// it.
    pub overridden: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantSummary {
    pub name: String,
    pub users: u64,
    pub control: bool,
    /// Share of users the configured weights expect (None: unknown).
    pub expected_share: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SrmOut {
    pub chi2: f64,
    pub df: u64,
    pub p_value: f64,
    /// p below [`SRM_ALERT_P`].
    pub alarm: bool,
    /// Whether the expected shares came from the configured weights (else
    /// an equal split is assumed).
    pub weights_configured: bool,
    /// Whether each allocation period was tested against its own weights
    /// and the chi-squares added (a bandit past its first period).
    pub by_period: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataQuality {
    pub exposure_rows: u64,
    pub assignment_mismatches: u64,
    pub variant_conflicts: u64,
    /// Across all experiments: exposures the filters dropped.
    pub dropped_exposures: u64,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricReport {
    pub name: String,
    /// `conversion` (share of users with an event) or `value` (mean per
    /// user of the summed values).
    pub kind: &'static str,
    pub higher_is_better: bool,
    pub primary: bool,
    pub has_covariate: bool,
    pub variants: Vec<MetricVariant>,
    pub comparisons: Vec<Comparison>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricVariant {
    pub variant: String,
    pub users: u64,
    /// Users with at least one outcome event.
    pub converted: u64,
    pub conversion_rate: Option<f64>,
    /// Mean per user of the summed values (conversion events count 1).
    pub mean: Option<f64>,
    pub sd: Option<f64>,
    pub covariate_mean: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CupedOut {
    pub theta: f64,
    pub variance_reduction: f64,
    pub diff: f64,
    pub se: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub p_value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MdeOut {
    /// Smallest absolute difference detected with `power`.
    pub absolute: f64,
    /// The same relative to the control.
    pub relative: f64,
    /// Power to detect ±`target_lift` at the current sample.
    pub power_at_target: f64,
}

/// One point of the cumulative chart: the relative lift among users
/// exposed by `t_ms`, with its always-valid interval. (Only the
/// always-valid interval is drawn over time: a fixed-horizon interval at
/// every point would invite exactly the peeking it does not allow for.)
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LiftPoint {
    pub t_ms: i64,
    pub users_control: i64,
    pub users_treatment: i64,
    pub lift: f64,
    pub seq_low: f64,
    pub seq_high: f64,
}

/// The relative lift and its always-valid interval without CUPED, shown
/// next to the adjusted ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unadjusted {
    pub relative: Stat<Interval>,
    pub sequential: Stat<SequentialOut>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub variant: String,
    /// `welch_t`, `two_proportion`, or `stratified_welch` for an adaptive
    /// (bandit) experiment.
    pub test: &'static str,
    pub absolute: Stat<Interval>,
    pub relative: Stat<Interval>,
    /// Fixed-horizon p-value of `test`.
    pub p_value: Option<f64>,
    /// Holm-adjusted over every comparison of the experiment.
    pub p_value_holm: Option<f64>,
    /// Always-valid interval and p-value of the relative lift.
    pub sequential: Stat<SequentialOut>,
    /// Whether `relative`, `sequential`, `series` (and so the decision) are
    /// CUPED-adjusted: a value metric with covariates. The variance the
    /// adjustment removed is `cuped.variance_reduction`.
    pub cuped_adjusted: bool,
    /// When `cuped_adjusted`: the same relative lift and always-valid
    /// interval without the adjustment, for comparison (None otherwise).
    pub unadjusted: Option<Unadjusted>,
    /// The CUPED absolute difference (None: the metric has no covariates).
    pub cuped: Option<Stat<CupedOut>>,
    /// P(treatment better than control): exact Beta-binomial (uniform
    /// prior) for conversions, normal approximation for values.
    pub chance_to_beat_control: Stat<f64>,
    pub mde: Stat<MdeOut>,
    /// Cumulative relative lift by first-exposure time.
    pub series: Vec<LiftPoint>,
}

/// Sums → groups for the tests.
fn moments(n: i64, s: &MetricSums) -> Result<Moments, abmesh_stats::StatsError> {
    Moments::from_sums(n.max(0) as u64, s.y.value(), s.y2.value())
}

fn proportion(n: i64, s: &MetricSums) -> Proportion {
    Proportion {
        n: n.max(0) as u64,
        conversions: s.converted.max(0) as u64,
    }
}

fn comoments(n: i64, s: &MetricSums) -> Result<CoMoments, abmesh_stats::StatsError> {
    CoMoments::from_sums(
        n.max(0) as u64,
        s.y.value(),
        s.y2.value(),
        s.x.value(),
        s.x2.value(),
        s.xy.value(),
    )
}

/// How a comparison's relative lift is estimated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LiftKind {
    /// Delta-method lift of the conversion rates (variance p(1 − p)).
    Conversion,
    /// Delta-method lift of the means per user.
    Value,
    /// `cuped_lift` of a value metric with covariates.
    Cuped,
}

impl LiftKind {
    fn of(conversion: bool, has_covariate: bool) -> LiftKind {
        match (conversion, has_covariate) {
            (true, _) => LiftKind::Conversion,
            (false, true) => LiftKind::Cuped,
            (false, false) => LiftKind::Value,
        }
    }

    /// The same without CUPED.
    fn unadjusted(self) -> LiftKind {
        match self {
            LiftKind::Cuped => LiftKind::Value,
            k => k,
        }
    }
}

/// The CUPED relative lift (kind `cuped_lift`) with its fixed-horizon
/// interval, on the report's sign convention: `cuped_lift` divides by the
/// signed control mean, the report's lifts by its magnitude (a move from
/// −10 to −9 is +10 %), so a negative baseline flips the estimate and
/// swaps the interval's ends; the se is the same.
fn cuped_relative(
    nc: i64,
    c: &MetricSums,
    nt: i64,
    t: &MetricSums,
    alpha: f64,
) -> Result<Interval, abmesh_stats::StatsError> {
    let (a, b) = (comoments(nc, c)?, comoments(nt, t)?);
    let r = cuped_lift(&a, &b, alpha, true)?;
    let i = Interval {
        estimate: r.estimate,
        se: r.se,
        ci_low: r.ci_low,
        ci_high: r.ci_high,
    };
    Ok(if a.y().mean() < 0.0 {
        Interval {
            estimate: -i.estimate,
            se: i.se,
            ci_low: -i.ci_high,
            ci_high: -i.ci_low,
        }
    } else {
        i
    })
}

/// The relative lift's sequential look (estimate and always-valid
/// interval) from one pair of groups, so it can be computed at every chart
/// point; CUPED-adjusted for [`LiftKind::Cuped`] (the confidence sequence
/// on the adjusted estimate and se, N = both arms' users).
fn seq_point(
    kind: LiftKind,
    nc: i64,
    c: &MetricSums,
    nt: i64,
    t: &MetricSums,
    s: &Settings,
) -> Result<(f64, SequentialOut), abmesh_stats::StatsError> {
    let conversion = match kind {
        LiftKind::Conversion => true,
        LiftKind::Value => false,
        LiftKind::Cuped => {
            let r = cuped_relative(nc, c, nt, t, s.alpha)?;
            let n_total = (nc.max(0) + nt.max(0)) as f64;
            let (half, p_value) =
                confidence_sequence(r.estimate, r.se, n_total, s.alpha, s.n_star)?;
            return Ok((
                r.estimate,
                SequentialOut {
                    ci_low: r.estimate - half,
                    ci_high: r.estimate + half,
                    p_value,
                },
            ));
        }
    };
    let params = SequentialParams {
        alpha: s.alpha,
        n_star: s.n_star,
        relative: true,
    };
    let r = if conversion {
        let (pc, pt) = (proportion(nc, c), proportion(nt, t));
        sequential(&pc, &pt, params)
    } else {
        moments(nc, c).and_then(|a| moments(nt, t).and_then(|b| sequential(&a, &b, params)))
    }?;
    Ok((
        r.estimate,
        SequentialOut {
            ci_low: r.ci_low,
            ci_high: r.ci_high,
            p_value: r.p_value,
        },
    ))
}

/// The relative lift with its fixed-horizon interval (CUPED-adjusted for
/// [`LiftKind::Cuped`]).
fn relative(
    kind: LiftKind,
    nc: i64,
    c: &MetricSums,
    nt: i64,
    t: &MetricSums,
    s: &Settings,
) -> Result<Interval, abmesh_stats::StatsError> {
    let r = match kind {
        LiftKind::Cuped => return cuped_relative(nc, c, nt, t, s.alpha),
        LiftKind::Conversion => relative_lift(&proportion(nc, c), &proportion(nt, t), s.alpha),
        LiftKind::Value => {
            moments(nc, c).and_then(|a| moments(nt, t).and_then(|b| relative_lift(&a, &b, s.alpha)))
        }
    }?;
    Ok(Interval {
        estimate: r.lift,
        se: r.se,
        ci_low: r.ci_low,
        ci_high: r.ci_high,
    })
}

/// Builds the report of one experiment, step by step: who is the control
/// and what each variant should have, what looks wrong in the data, which
/// metric decides, the tests per metric (Holm over all of them), the
/// halts, health and guardrails, and from those the decision.
pub fn build(data: &ExperimentData, settings: &Settings, now_ms: i64) -> Report {
    let control = control_index(data);
    let control_name = data.variants.get(control).cloned().unwrap_or_default();
    let variants = variant_summaries(data, control);
    let srm_out = if adaptive(data) {
        srm_adaptive(data)
    } else {
        srm_check(data)
    };
    let mut warnings = data_warnings(data);
    let primary = primary_metric(data, settings, &mut warnings);
    let metrics = metric_reports(data, control, primary.as_deref(), settings);
    let (ratio_metrics, quantile_metrics) = super::extra_metrics::build(data, control, settings);
    let halts: Vec<HaltOut> = data
        .halts
        .iter()
        .map(|h| HaltOut {
            active: h.active(),
            halt: h.clone(),
        })
        .collect();
    let active: Vec<&Halt> = data.halts.iter().filter(|h| h.active()).collect();
    let decision = decide_with_halts(
        &control_name,
        &variants,
        &srm_out,
        &metrics,
        primary.as_deref(),
        settings,
        &active,
    );
    Report {
        experiment: data.name.clone(),
        generated_at_ms: now_ms,
        applied_lsn: data.applied_lsn,
        control: control_name,
        definitions: match (&data.definition, data.learned) {
            (Some(_), true) => "filter config",
            (Some(_), false) => "experiments file",
            (None, _) => "exposures",
        },
        settings: Settings {
            experiments: Default::default(),
            ..settings.clone()
        },
        variants,
        srm: srm_out,
        data_quality: DataQuality {
            exposure_rows: data.exposure_rows,
            assignment_mismatches: data.mismatches,
            variant_conflicts: data.conflicts,
            dropped_exposures: data.counters.dropped_exposures,
            warnings,
        },
        halts,
        health: health_of(data),
        guardrails: guardrails_of(data),
        primary_metric: primary,
        metrics,
        decision,
        bandit: bandit_of(data),
        // Filled by `super::report` (`super::segments`), which analyses
        // each segment with this module's comparisons.
        segments: Vec::new(),
        ratio_metrics,
        quantile_metrics,
    }
}

/// The control's index among the data's variants: the definitions' control,
/// else the first variant seen.
fn control_index(data: &ExperimentData) -> usize {
    match &data.definition {
        Some(d) => data
            .variants
            .iter()
            .position(|v| *v == d.variants[d.control])
            .unwrap_or(0),
        None => 0,
    }
}

/// Each variant's users, and the share its configured weight expects.
fn variant_summaries(data: &ExperimentData, control: usize) -> Vec<VariantSummary> {
    let users = |v: usize| data.users.get(v).copied().unwrap_or(0).max(0) as u64;
    let total_weight: Option<f64> = data.definition.as_ref().map(|d| d.weights.iter().sum());
    data.variants
        .iter()
        .enumerate()
        .map(|(i, name)| VariantSummary {
            name: name.clone(),
            users: users(i),
            control: i == control,
            expected_share: adaptive_share(data, name).or_else(|| {
                data.definition.as_ref().and_then(|d| {
                    let j = d.variants.iter().position(|v| v == name)?;
                    Some(d.weights[j] / total_weight.unwrap_or(1.0))
                })
            }),
        })
        .collect()
}

/// An adaptive experiment's expected share of a variant: each period's
/// weight for it, weighted by the period's users.
fn adaptive_share(data: &ExperimentData, name: &str) -> Option<f64> {
    if !adaptive(data) {
        return None;
    }
    let b = data.bandit.as_ref()?;
    let (mut users, mut expected) = (0.0, 0.0);
    for (h, d) in b.history.periods.iter().zip(&b.periods) {
        let n: f64 = d.users.iter().map(|&u| u.max(0) as f64).sum();
        users += n;
        expected += n * b.history.weight(h.period, name).unwrap_or(0.0);
    }
    (users > 0.0).then(|| expected / users)
}

/// What looks wrong in the data: dropped exposures, assignment mismatches,
/// users in several variants, variants the definitions do not know.
fn data_warnings(data: &ExperimentData) -> Vec<String> {
    let mut warnings = Vec::new();
    if data.counters.dropped_exposures > 0 {
        warnings.push(format!(
            "the filters dropped {} exposures (sidecar slow or down): user counts are low by that much",
            data.counters.dropped_exposures
        ));
    }
    if data.mismatches > 0 {
        warnings.push(format!(
            "{} exposures disagree with the assignment the experiment definitions give (a stale config on the filter or the sidecar)",
            data.mismatches
        ));
    }
    if data.conflicts > 0 {
        warnings.push(format!(
            "{} users were exposed to more than one variant; each counts in the variant of their first exposure",
            data.conflicts
        ));
    }
    if let Some(d) = &data.definition {
        for v in &data.variants {
            if !d.variants.contains(v) {
                warnings.push(format!(
                    "variant {v:?} has exposures but is not in the experiment definitions"
                ));
            }
        }
    }
    warnings
}

/// The metric that decides: the configured primary metric when it has
/// data (a warning when it has none yet), else the first metric.
fn primary_metric(
    data: &ExperimentData,
    settings: &Settings,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let exp_settings = settings.experiment(&data.name);
    let has = |m: &str| data.metrics.iter().any(|d| d.info.name == m);
    if let Some(p) = exp_settings.and_then(|e| e.primary_metric.as_ref()) {
        if !has(p) {
            warnings.push(format!(
                "the primary metric {p:?} has no events from exposed users yet"
            ));
        }
    }
    // A bandit's metric is what the experiment optimises: the primary one
    // unless the settings name another.
    let bandit_metric = data
        .definition
        .as_ref()
        .and_then(|d| d.bandit.as_ref())
        .map(|b| b.metric.clone());
    exp_settings
        .and_then(|e| e.primary_metric.clone())
        .filter(|m| has(m))
        .or_else(|| bandit_metric.filter(|m| has(m)))
        .or_else(|| data.metrics.first().map(|m| m.info.name.clone()))
}

/// Every metric's report, with Holm-adjusted p-values over every
/// fixed-horizon comparison of the experiment.
fn metric_reports(
    data: &ExperimentData,
    control: usize,
    primary: Option<&str>,
    settings: &Settings,
) -> Vec<MetricReport> {
    let mut metrics: Vec<MetricReport> = data
        .metrics
        .iter()
        .enumerate()
        .map(|(mi, m)| {
            metric_report(
                data,
                mi,
                m,
                control,
                primary == Some(&m.info.name),
                settings,
            )
        })
        .collect();
    let ps: Vec<(usize, usize, f64)> = metrics
        .iter()
        .enumerate()
        .flat_map(|(i, m)| {
            m.comparisons
                .iter()
                .enumerate()
                .filter_map(move |(j, c)| c.p_value.map(|p| (i, j, p)))
        })
        .collect();
    if let Ok(adj) = holm(&ps.iter().map(|x| x.2).collect::<Vec<_>>()) {
        for ((i, j, _), a) in ps.iter().zip(adj) {
            metrics[*i].comparisons[*j].p_value_holm = Some(a);
        }
    }
    metrics
}

/// Per variant, the filters' health counters since the last lift.
fn health_of(data: &ExperimentData) -> Vec<HealthOut> {
    data.variants
        .iter()
        .zip(&data.health)
        .map(|(name, h)| HealthOut {
            variant: name.clone(),
            requests: h.requests,
            responses: h.responses(),
            status: h.status,
            error_rate: h.error_rate(),
            p50_ms: h.quantile_us(0.5).map(|us| us / 1000.0),
            p95_ms: h.quantile_us(0.95).map(|us| us / 1000.0),
        })
        .collect()
}

/// The experiment's guardrails and their checks now (None: it has none).
fn guardrails_of(data: &ExperimentData) -> Option<GuardrailsOut> {
    let cfg = data.definition.as_ref()?.guardrails.as_ref()?;
    let checks = data.checks.as_ref().map_or_else(Vec::new, |c| {
        c.checks
            .iter()
            .map(|k| {
                let variant = c.variants[k.variant].clone();
                CheckOut {
                    overridden: data
                        .overrides
                        .iter()
                        .any(|(v, r)| *v == variant && *r == k.rule),
                    variant,
                    check: k.clone(),
                }
            })
            .collect()
    });
    Some(GuardrailsOut {
        alpha: cfg.alpha,
        min_responses: cfg.min_responses,
        checks,
    })
}

/// `text`, ending with a full stop.
fn end_sentence(text: &str) -> String {
    let t = text.trim_end();
    if t.ends_with(['.', '!', '?']) {
        t.to_owned()
    } else {
        format!("{t}.")
    }
}

/// The sample-ratio check; halted variants are left out (their users are
/// routed like the control, so their count stops growing).
fn srm_check(data: &ExperimentData) -> Stat<SrmOut> {
    let halted = |v: &str| data.halts.iter().any(|h| h.active() && h.variant == v);
    let (observed, weights, configured): (Vec<u64>, Vec<f64>, bool) = match &data.definition {
        Some(d) => (
            d.variants
                .iter()
                .filter(|v| !halted(v))
                .map(|v| {
                    data.variants
                        .iter()
                        .position(|x| x == v)
                        .map_or(0, |i| data.users[i].max(0) as u64)
                })
                .collect(),
            d.variants
                .iter()
                .zip(&d.weights)
                .filter(|(v, _)| !halted(v))
                .map(|(_, w)| *w)
                .collect(),
            true,
        ),
        None => {
            let observed: Vec<u64> = data
                .variants
                .iter()
                .zip(&data.users)
                .filter(|(v, _)| !halted(v))
                .map(|(_, &u)| u.max(0) as u64)
                .collect();
            let n = observed.len();
            (observed, vec![1.0; n], false)
        }
    };
    Stat::from(srm(&observed, &weights).map(|r| SrmOut {
        chi2: r.chi2,
        df: r.df,
        p_value: r.p_value,
        alarm: r.p_value < SRM_ALERT_P,
        weights_configured: configured,
        by_period: false,
    }))
}

/// Whether the experiment's allocation has changed (a bandit past its
/// first period): then its comparisons and SRM check are per period.
fn adaptive(data: &ExperimentData) -> bool {
    data.bandit
        .as_ref()
        .is_some_and(|b| b.history.periods.len() > 1)
}

/// The variants to check in period `p` (not halted), with the period's
/// users and weights.
fn period_counts(data: &ExperimentData, p: usize) -> Option<PeriodCounts> {
    let b = data.bandit.as_ref()?;
    let (hist, period) = (&b.history.periods[p], &b.periods[p]);
    let halted = |v: &str| data.halts.iter().any(|h| h.active() && h.variant == v);
    let mut out = PeriodCounts {
        observed: Vec::new(),
        weights: Vec::new(),
    };
    for (i, v) in data.variants.iter().enumerate() {
        if halted(v) {
            continue;
        }
        out.observed.push(period.users[i].max(0) as u64);
        out.weights.push(
            hist.variants
                .iter()
                .position(|x| x == v)
                .map_or(0.0, |k| hist.weights[k]),
        );
    }
    Some(out)
}

/// The sample-ratio check of an adaptive experiment ([`srm_by_period`]).
fn srm_adaptive(data: &ExperimentData) -> Stat<SrmOut> {
    let n = data.bandit.as_ref().map_or(0, |b| b.periods.len());
    let periods: Vec<PeriodCounts> = (0..n).filter_map(|p| period_counts(data, p)).collect();
    Stat::from(srm_by_period(&periods, 5.0).map(|r| SrmOut {
        chi2: r.chi2,
        df: r.df,
        p_value: r.p_value,
        alarm: r.p_value < SRM_ALERT_P,
        weights_configured: true,
        by_period: true,
    }))
}

/// The bandit section of a report.
fn bandit_of(data: &ExperimentData) -> Option<BanditOut> {
    let b = data.bandit.as_ref()?;
    let current = b.history.current()?;
    let shares = |p: &crate::aggregate::bandit::BanditPeriod| -> BTreeMap<String, f64> {
        p.variants
            .iter()
            .cloned()
            .zip(p.weights.iter().copied())
            .collect()
    };
    let history = b
        .history
        .periods
        .iter()
        .zip(&b.periods)
        .enumerate()
        .map(|(i, (h, d))| BanditPeriodOut {
            period: h.period,
            started_ms: h.started_ms,
            weights: shares(h),
            prob_best: h
                .variants
                .iter()
                .zip(&h.prob_best)
                .filter_map(|(v, p)| Some((v.clone(), (*p)?)))
                .collect(),
            users: data
                .variants
                .iter()
                .cloned()
                .zip(d.users.iter().copied())
                .collect(),
            srm_p_value: period_counts(data, i)
                .and_then(|c| srm_by_period(&[c], 5.0).ok())
                .map(|r| r.p_value),
        })
        .collect();
    Some(BanditOut {
        adaptive: true,
        metric: data
            .definition
            .as_ref()
            .and_then(|d| d.bandit.as_ref())
            .map(|c| c.metric.clone())
            .unwrap_or_default(),
        weights: shares(current),
        updated_at_ms: current.started_ms,
        period: current.period,
        history,
        note: "adaptive experiment: the weights changed with the data, so each comparison \
               estimates every variant per allocation period and combines the periods by \
               their share of users (stratified), and the sample-ratio check tests each \
               period against its own weights; users are analysed in the variant and \
               period of their first exposure"
            .to_owned(),
    })
}

/// The per-period (stratified) groups of control `c` and treatment `t`
/// for metric `mi`, when the experiment is adaptive.
fn stratified_groups(
    data: &ExperimentData,
    mi: usize,
    c: usize,
    t: usize,
    conversion: bool,
) -> Option<Result<Stratified, abmesh_stats::StatsError>> {
    if !adaptive(data) {
        return None;
    }
    let b = data.bandit.as_ref()?;
    let arm = |d: &super::data::PeriodData, v: usize| {
        let n = d.users[v].max(0) as u64;
        let sums = &d.sums[mi][v];
        let nf = n as f64;
        if conversion {
            let p = if n > 0 {
                sums.converted as f64 / nf
            } else {
                0.0
            };
            PeriodArm {
                n,
                mean: p,
                variance: p * (1.0 - p),
            }
        } else {
            let mean = if n > 0 { sums.y.value() / nf } else { 0.0 };
            PeriodArm {
                n,
                mean,
                variance: if n > 1 {
                    ((sums.y2.value() - nf * mean * mean) / (nf - 1.0)).max(0.0)
                } else {
                    f64::NAN
                },
            }
        }
    };
    let pairs: Vec<PeriodPair> = b
        .periods
        .iter()
        .map(|d| PeriodPair {
            control: arm(d, c),
            treatment: arm(d, t),
            period_users: d.users.iter().map(|&u| u.max(0) as u64).sum(),
        })
        .collect();
    Some(stratified(&pairs))
}

/// The cumulative relative lift of treatment `t` over control `c` on
/// metric `mi`, one point per chart point.
fn lift_series(
    data: &ExperimentData,
    mi: usize,
    c: usize,
    t: usize,
    kind: LiftKind,
    s: &Settings,
) -> Vec<LiftPoint> {
    data.series
        .iter()
        .filter_map(|p| {
            let (nc, nt) = (p.users[c], p.users[t]);
            let (lift, q) = seq_point(kind, nc, &p.sums[mi][c], nt, &p.sums[mi][t], s).ok()?;
            Some(LiftPoint {
                t_ms: p.t_ms,
                users_control: nc,
                users_treatment: nt,
                lift,
                seq_low: q.ci_low,
                seq_high: q.ci_high,
            })
        })
        .collect()
}

/// A comparison of an adaptive experiment: every test on the stratified
/// groups ([`stratified_groups`]), which Welch, the delta-method lift and
/// the confidence sequence take as they are. No CUPED (it would have to
/// be fitted per period too); the chart stays the pooled one.
#[allow(clippy::too_many_arguments)]
fn adaptive_comparison(
    data: &ExperimentData,
    mi: usize,
    c: usize,
    t: usize,
    groups: Result<Stratified, abmesh_stats::StatsError>,
    higher: bool,
    conversion: bool,
    s: &Settings,
) -> Comparison {
    let better = |p: f64| if higher { p } else { 1.0 - p };
    let pair = groups.map(|g| (g.control, g.treatment));
    let w = pair.clone().and_then(|(a, b)| welch_t(&a, &b, s.alpha));
    let absolute = Stat::from(w.clone().map(|r| Interval {
        estimate: r.diff,
        se: r.se,
        ci_low: r.ci_low,
        ci_high: r.ci_high,
    }));
    let relative = Stat::from(
        pair.clone()
            .and_then(|(a, b)| relative_lift(&a, &b, s.alpha))
            .map(|r| Interval {
                estimate: r.lift,
                se: r.se,
                ci_low: r.ci_low,
                ci_high: r.ci_high,
            }),
    );
    let params = SequentialParams {
        alpha: s.alpha,
        n_star: s.n_star,
        relative: true,
    };
    let seq = Stat::from(
        pair.clone()
            .and_then(|(a, b)| sequential(&a, &b, params))
            .map(|r| SequentialOut {
                ci_low: r.ci_low,
                ci_high: r.ci_high,
                p_value: r.p_value,
            }),
    );
    let chance = Stat::from(
        w.clone()
            .map(|r| better(abmesh_stats::special::normal_cdf(r.diff / r.se))),
    );
    let mde = Stat::from(pair.and_then(|(a, b)| {
        let abs = mde_at(&a, &b, s.alpha, s.power)?;
        let base = a.mean.abs();
        let se = w.clone().map(|r| r.se)?;
        Ok(MdeOut {
            absolute: abs,
            relative: abs / base,
            power_at_target: power_at(s.target_lift * base, se, s.alpha)?,
        })
    }));
    let kind = LiftKind::of(conversion, false);
    let series = lift_series(data, mi, c, t, kind, s);
    Comparison {
        variant: data.variants[t].clone(),
        test: "stratified_welch",
        absolute,
        relative,
        p_value: w.ok().map(|r| r.p_value),
        p_value_holm: None,
        sequential: seq,
        cuped_adjusted: false,
        unadjusted: None,
        cuped: None,
        chance_to_beat_control: chance,
        mde,
        series,
    }
}

pub(super) fn metric_report(
    data: &ExperimentData,
    mi: usize,
    m: &MetricData,
    control: usize,
    primary: bool,
    s: &Settings,
) -> MetricReport {
    let conversion = m.info.is_conversion();
    let higher = s.higher_is_better(&data.name, &m.info.name);
    let n = |v: usize| data.users[v];
    let variants = data
        .variants
        .iter()
        .enumerate()
        .map(|(v, name)| {
            let sums = &m.sums[v];
            let users = n(v).max(0) as u64;
            let mo = moments(n(v), sums).ok();
            MetricVariant {
                variant: name.clone(),
                users,
                converted: sums.converted.max(0) as u64,
                conversion_rate: (users > 0).then(|| sums.converted as f64 / users as f64),
                mean: mo.filter(|m| m.n() > 0).map(|m| m.mean()),
                sd: mo.filter(|m| m.n() > 1).map(|m| m.sd()),
                covariate_mean: (m.info.covariate_events > 0 && users > 0)
                    .then(|| sums.x.value() / users as f64),
            }
        })
        .collect();
    let has_covariate = m.info.covariate_events > 0;
    let comparisons = (0..data.variants.len())
        .filter(|&v| v != control)
        .map(|v| {
            comparison(
                data,
                mi,
                m,
                control,
                v,
                conversion,
                higher,
                has_covariate,
                s,
            )
        })
        .collect();
    MetricReport {
        name: m.info.name.clone(),
        kind: if conversion { "conversion" } else { "value" },
        higher_is_better: higher,
        primary,
        has_covariate,
        variants,
        comparisons,
    }
}

#[allow(clippy::too_many_arguments)]
fn comparison(
    data: &ExperimentData,
    mi: usize,
    m: &MetricData,
    c: usize,
    t: usize,
    conversion: bool,
    higher: bool,
    has_covariate: bool,
    s: &Settings,
) -> Comparison {
    if let Some(groups) = stratified_groups(data, mi, c, t, conversion) {
        return adaptive_comparison(data, mi, c, t, groups, higher, conversion, s);
    }
    let (nc, nt) = (data.users[c], data.users[t]);
    let (sc, st) = (&m.sums[c], &m.sums[t]);
    let better = |p: f64| if higher { p } else { 1.0 - p };
    let (test, absolute, p_value, chance, mde) = if conversion {
        let (pc, pt) = (proportion(nc, sc), proportion(nt, st));
        let z = two_proportion(&pc, &pt, s.alpha);
        let absolute = Stat::from(z.clone().map(|r| Interval {
            estimate: r.diff,
            se: r.se,
            ci_low: r.ci_low,
            ci_high: r.ci_high,
        }));
        let chance = Stat::from(chance_to_beat(&pc, &pt, BetaPrior::default()).map(better));
        let mde = Stat::from(
            mde_proportions(pc.rate(), nc.min(nt).max(1) as f64, s.alpha, s.power).and_then(
                |abs| {
                    let se = z.as_ref().map_or(f64::NAN, |r| r.se);
                    Ok(MdeOut {
                        absolute: abs,
                        relative: abs / pc.rate(),
                        power_at_target: power_at(s.target_lift * pc.rate(), se, s.alpha)?,
                    })
                },
            ),
        );
        (
            "two_proportion",
            absolute,
            z.ok().map(|r| r.p_value),
            chance,
            mde,
        )
    } else {
        let groups = moments(nc, sc).and_then(|a| moments(nt, st).map(|b| (a, b)));
        let w = groups.clone().and_then(|(a, b)| welch_t(&a, &b, s.alpha));
        let absolute = Stat::from(w.clone().map(|r| Interval {
            estimate: r.diff,
            se: r.se,
            ci_low: r.ci_low,
            ci_high: r.ci_high,
        }));
        // Flat prior and normal likelihood: P(Δ > 0) = Φ(diff/se).
        let chance = Stat::from(
            w.clone()
                .map(|r| better(abmesh_stats::special::normal_cdf(r.diff / r.se))),
        );
        let mde = Stat::from(groups.and_then(|(a, b)| {
            let abs = mde_at(&a, &b, s.alpha, s.power)?;
            let base = a.mean().abs();
            let se = w.clone().map(|r| r.se)?;
            Ok(MdeOut {
                absolute: abs,
                relative: abs / base,
                power_at_target: power_at(s.target_lift * base, se, s.alpha)?,
            })
        }));
        ("welch_t", absolute, w.ok().map(|r| r.p_value), chance, mde)
    };
    let kind = LiftKind::of(conversion, has_covariate);
    let cuped_adjusted = kind == LiftKind::Cuped;
    let unadjusted = cuped_adjusted.then(|| {
        let plain = kind.unadjusted();
        Unadjusted {
            relative: Stat::from(relative(plain, nc, sc, nt, st, s)),
            sequential: Stat::from(seq_point(plain, nc, sc, nt, st, s).map(|x| x.1)),
        }
    });
    let relative = Stat::from(relative(kind, nc, sc, nt, st, s));
    let seq = Stat::from(seq_point(kind, nc, sc, nt, st, s).map(|x| x.1));
    let cuped_out = has_covariate.then(|| {
        Stat::from(
            comoments(nc, sc)
                .and_then(|a| comoments(nt, st).map(|b| (a, b)))
                .and_then(|(a, b)| cuped(&a, &b, s.alpha))
                .map(|r| CupedOut {
                    theta: r.theta,
                    variance_reduction: r.variance_reduction,
                    diff: r.diff,
                    se: r.se,
                    ci_low: r.ci_low,
                    ci_high: r.ci_high,
                    p_value: r.p_value,
                }),
        )
    });
    let series = lift_series(data, mi, c, t, kind, s);
    Comparison {
        variant: data.variants[t].clone(),
        test,
        absolute,
        relative,
        p_value,
        p_value_holm: None,
        sequential: seq,
        cuped_adjusted,
        unadjusted,
        cuped: cuped_out,
        chance_to_beat_control: chance,
        mde,
        series,
    }
}

fn describe(m: &MetricReport) -> String {
    if m.kind == "conversion" {
        format!("{} conversion", m.name)
    } else {
        format!("{} per user", m.name)
    }
}

/// The decision with halted variants set aside: they are out of the
/// comparison (their new users go to the control and are not exposures), so
/// the experiment goes on, and is decided, between the others; the halts
/// lead the reason. With no treatment left it is `stop-harm`.
fn decide_with_halts(
    control: &str,
    variants: &[VariantSummary],
    srm_out: &Stat<SrmOut>,
    metrics: &[MetricReport],
    primary: Option<&str>,
    s: &Settings,
    active: &[&Halt],
) -> Decision {
    if active.is_empty() {
        return decide(control, variants, srm_out, metrics, primary, s);
    }
    let halted = |v: &str| active.iter().any(|h| h.variant == v);
    let halts = format!(
        "{} Its users are routed like the control ({control}) until an operator lifts the halt.",
        active
            .iter()
            .map(|h| end_sentence(&h.reason()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let remaining: Vec<VariantSummary> = variants
        .iter()
        .filter(|v| !halted(&v.name))
        .cloned()
        .collect();
    if remaining.iter().all(|v| v.control) {
        return Decision {
            decision: DecisionKind::StopHarm,
            reason: halts,
            metric: None,
            variant: Some(active[0].variant.clone()),
        };
    }
    let metrics: Vec<MetricReport> = metrics
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.comparisons.retain(|c| !halted(&c.variant));
            m
        })
        .collect();
    let mut d = decide(control, &remaining, srm_out, &metrics, primary, s);
    d.reason = format!("{halts} Among the others: {}", d.reason);
    d
}

/// The decision without halts, in the order of the module docs: too
/// early, a sample ratio mismatch, no outcomes, then on the primary
/// metric's sequential results: harm, improvement, no effect that matters,
/// or keep running.
fn decide(
    control: &str,
    variants: &[VariantSummary],
    srm_out: &Stat<SrmOut>,
    metrics: &[MetricReport],
    primary: Option<&str>,
    s: &Settings,
) -> Decision {
    if let Some(d) = too_early(variants, primary, s) {
        return d;
    }
    if let Some(d) = sample_ratio_mismatch(variants, srm_out) {
        return d;
    }
    let Some(primary) = primary else {
        return keep_running("No outcome events from exposed users yet.".into(), None);
    };
    // An invariant: `build` picks `primary` among the metrics it reports
    // (one `MetricReport` per metric of the data).
    let m = metrics
        .iter()
        .find(|m| m.name == primary)
        .expect("primary metric is reported");
    let looks = match Looks::of(m, s) {
        Ok(looks) => looks,
        Err(reason) => return keep_running(reason, Some(primary)),
    };
    looks
        .harm(control)
        .or_else(|| looks.improvement())
        .or_else(|| looks.no_effect())
        .unwrap_or_else(|| looks.keep_running(variants, control))
}

fn keep_running(reason: String, metric: Option<&str>) -> Decision {
    Decision {
        decision: DecisionKind::KeepRunning,
        reason,
        metric: metric.map(str::to_owned),
        variant: None,
    }
}

/// `keep-running` while there is no treatment yet, or a variant has fewer
/// than `min_users` users.
fn too_early(variants: &[VariantSummary], primary: Option<&str>, s: &Settings) -> Option<Decision> {
    if variants.len() < 2 {
        return Some(keep_running(
            format!(
                "Only {} variant has exposures so far; a comparison needs the control and at least one treatment.",
                variants.len()
            ),
            None,
        ));
    }
    let v = variants
        .iter()
        .filter(|v| v.users < s.min_users)
        .min_by_key(|v| v.users)?;
    Some(keep_running(
        format!(
            "Too early: variant {} has {} exposed users; decisions wait for at least {} per variant.",
            v.name, v.users, s.min_users
        ),
        primary,
    ))
}

/// `inconclusive` on a sample ratio mismatch: no number can be trusted.
fn sample_ratio_mismatch(variants: &[VariantSummary], srm_out: &Stat<SrmOut>) -> Option<Decision> {
    let r = srm_out.ok().filter(|r| r.alarm)?;
    let split: Vec<String> = variants
        .iter()
        .map(|v| format!("{} {}", v.name, v.users))
        .collect();
    Some(Decision {
        decision: DecisionKind::Inconclusive,
        reason: format!(
            "Sample ratio mismatch: users split {} against the configured shares (SRM p = {:.1e} < {}). Assignment or exposure logging is broken, so no metric can be trusted until it is fixed.",
            split.join(" / "),
            r.p_value,
            SRM_ALERT_P
        ),
        metric: None,
        variant: None,
    })
}

/// The primary metric's sequential look at each treatment, and which of
/// them are significant (Holm over the treatments).
struct Looks<'m> {
    m: &'m MetricReport,
    s: &'m Settings,
    /// What the reasons call the metric (`buy conversion`).
    what: String,
    /// The confidence level, `95%`.
    level: String,
    /// Per treatment: its comparison, sequential and relative results.
    seqs: Vec<(&'m Comparison, SequentialOut, Interval)>,
    /// Indexes into `seqs` of the significant ones.
    significant: Vec<usize>,
    /// +1 when higher is better, −1 otherwise.
    sign: f64,
}

impl<'m> Looks<'m> {
    /// The looks, or why the metric cannot be tested yet (a reason to keep
    /// running).
    fn of(m: &'m MetricReport, s: &'m Settings) -> Result<Looks<'m>, String> {
        let what = describe(m);
        let mut seqs = Vec::new();
        for c in &m.comparisons {
            match (&c.sequential, &c.relative) {
                (Stat::Ok(q), Stat::Ok(r)) => seqs.push((c, *q, *r)),
                (Stat::Err { error }, _) | (_, Stat::Err { error }) => {
                    return Err(format!(
                        "{what} cannot be tested for {} yet: {error}.",
                        c.variant
                    ));
                }
            }
        }
        let adjusted =
            holm(&seqs.iter().map(|x| x.1.p_value).collect::<Vec<_>>()).unwrap_or_default();
        let significant = adjusted
            .iter()
            .enumerate()
            .filter(|(_, &a)| a < s.alpha)
            .map(|(i, _)| i)
            .collect();
        Ok(Looks {
            m,
            s,
            what,
            level: format!("{:.0}%", (1.0 - s.alpha) * 100.0),
            seqs,
            significant,
            sign: if m.higher_is_better { 1.0 } else { -1.0 },
        })
    }

    /// `always-valid 95% interval +1.00% to +3.00%`, saying when the lift
    /// is CUPED-adjusted.
    fn interval(&self, c: &Comparison, q: &SequentialOut) -> String {
        format!(
            "{}always-valid {} interval {} to {}",
            if c.cuped_adjusted {
                "CUPED-adjusted, "
            } else {
                ""
            },
            self.level,
            pct(q.ci_low),
            pct(q.ci_high)
        )
    }

    fn significant(&self) -> impl Iterator<Item = &(&'m Comparison, SequentialOut, Interval)> {
        self.significant.iter().map(|&i| &self.seqs[i])
    }

    /// `stop-harm` if a treatment is significantly worse (the worst).
    fn harm(&self, control: &str) -> Option<Decision> {
        let sign = self.sign;
        let (c, q, r) = self
            .significant()
            .filter(|(_, _, r)| sign * r.estimate < 0.0)
            .min_by(|a, b| (sign * a.2.estimate).total_cmp(&(sign * b.2.estimate)))?;
        Some(Decision {
            decision: DecisionKind::StopHarm,
            reason: format!(
                "{} makes {} worse: {} against {} ({}). Stop it.",
                c.variant,
                self.what,
                pct(r.estimate),
                control,
                self.interval(c, q)
            ),
            metric: Some(self.m.name.clone()),
            variant: Some(c.variant.clone()),
        })
    }

    /// `ship` if a treatment is significantly better (the best).
    fn improvement(&self) -> Option<Decision> {
        let sign = self.sign;
        let (c, q, r) = self
            .significant()
            .filter(|(_, _, r)| sign * r.estimate > 0.0)
            .max_by(|a, b| (sign * a.2.estimate).total_cmp(&(sign * b.2.estimate)))?;
        let chance = c
            .chance_to_beat_control
            .ok()
            .map(|p| format!("; chance to beat control {:.1}%", p * 100.0))
            .unwrap_or_default();
        Some(Decision {
            decision: DecisionKind::Ship,
            reason: format!(
                "{} improves {} by {} ({}{chance}). Ship it.",
                c.variant,
                self.what,
                pct(r.estimate),
                self.interval(c, q)
            ),
            metric: Some(self.m.name.clone()),
            variant: Some(c.variant.clone()),
        })
    }

    /// `inconclusive` if every treatment's always-valid interval lies inside
    /// ±`target_lift`.
    fn no_effect(&self) -> Option<Decision> {
        let t = self.s.target_lift;
        if !self
            .seqs
            .iter()
            .all(|(_, q, _)| q.ci_low > -t && q.ci_high < t)
        {
            return None;
        }
        let parts: Vec<String> = self
            .seqs
            .iter()
            .map(|(c, q, _)| {
                format!(
                    "{} {} to {}{}",
                    c.variant,
                    pct(q.ci_low),
                    pct(q.ci_high),
                    if c.cuped_adjusted {
                        " CUPED-adjusted"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        Some(Decision {
            decision: DecisionKind::Inconclusive,
            reason: format!(
                "No effect as large as ±{:.1}% on {}: every always-valid {} interval lies inside it ({}). More data will not change the call.",
                t * 100.0,
                self.what,
                self.level,
                parts.join("; ")
            ),
            metric: Some(self.m.name.clone()),
            variant: None,
        })
    }

    /// `keep-running`: where the first treatment is and how far to go.
    fn keep_running(&self, variants: &[VariantSummary], control: &str) -> Decision {
        let (s, t) = (self.s, self.s.target_lift);
        let (c, q, r) = &self.seqs[0];
        let mut reason = format!(
            "No significant difference on {} yet ({}: {}, {}).",
            self.what,
            c.variant,
            pct(r.estimate),
            self.interval(c, q)
        );
        if let Some(mde) = c.mde.ok() {
            reason.push_str(&format!(
                " The MDE at the current sample is {:.1}% (target ±{:.1}%).",
                mde.relative.abs() * 100.0,
                t * 100.0
            ));
        }
        if let Some(n) = users_needed(self.m, control, c, s) {
            let have = variants.iter().map(|v| v.users).min().unwrap_or(0);
            if n > have as f64 {
                reason.push_str(&format!(
                    " About {} users per variant give {:.0}% power at ±{:.1}% ({} so far).",
                    n.ceil() as u64,
                    s.power * 100.0,
                    t * 100.0,
                    have
                ));
            }
        }
        keep_running(reason, Some(&self.m.name))
    }
}

/// Users per variant for `power` at ±target_lift, from the control's
/// current rate or variance.
fn users_needed(m: &MetricReport, control: &str, c: &Comparison, s: &Settings) -> Option<f64> {
    let cv = m.variants.iter().find(|v| v.variant == control)?;
    let tv = m.variants.iter().find(|v| v.variant == c.variant)?;
    if m.kind == "conversion" {
        let p = cv.conversion_rate?;
        sample_size_proportions(p, s.target_lift * p, s.alpha, s.power).ok()
    } else {
        let (mc, sdc, sdt) = (cv.mean?, cv.sd?, tv.sd?);
        sample_size_means(
            sdc * sdc,
            sdt * sdt,
            s.target_lift * mc.abs(),
            s.alpha,
            s.power,
        )
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abmesh_stats::guardrail::CheckStatus;

    /// A check in a report is the guardrail's check with the variant's name
    /// and the override flag: the same keys, in the same order, as when the
    /// report spelled each of them out.
    #[test]
    fn a_check_serializes_as_the_report_always_showed_it() {
        let c = CheckOut {
            variant: "treatment".into(),
            check: Check {
                variant: 1,
                rule: "error_rate".into(),
                status: CheckStatus::Breach,
                estimate: Some(0.02),
                ci_low: Some(0.01),
                ci_high: None,
                limit: 0.005,
                p_value: Some(0.001),
                message: "m".into(),
            },
            overridden: false,
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"variant":"treatment","rule":"error_rate","status":"breach","estimate":0.02,"ci_low":0.01,"ci_high":null,"limit":0.005,"p_value":0.001,"message":"m","overridden":false}"#
        );
    }
}
