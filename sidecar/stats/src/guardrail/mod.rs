//! Guardrails: always-valid checks of each treatment variant against the
//! control, run by the engine after every exposure batch; a breach halts the
//! variant. Pure statistics, no I/O.
//!
//! # Rules
//!
//! * `error_rate` — 5xx share of the sampled responses, treatment minus
//!   control (absolute), against `max_increase`. See [`error_rate`].
//! * `p95_latency` — is the treatment slower than the control's p95 ×
//!   (1 + pct/100) more often than 5 % of the time? See [`p95_latency`].
//! * `metric:NAME` — relative lift of a business metric (conversion share,
//!   or mean of per-user totals) against `max_decrease_percent` /
//!   `max_increase_percent`. See [`metric`].
//!
//! # Error control
//!
//! Every check uses the asymptotic confidence sequence of
//! [`stats::sequential`](mod@crate::sequential), so looking after
//! every batch, forever, keeps the false-alarm probability of a check at or
//! below its α. The family of an experiment — every rule × every treatment
//! variant — shares the configured `alpha` by Bonferroni: each check gets
//! `alpha / (rules × treatments)`, so the probability that *any* variant of
//! the experiment is halted by mistake over the whole experiment is at most
//! `alpha` (checked by `tests/guardrail_simulation.rs`). Where the textbook
//! estimate is miscalibrated at the counts a guardrail sees, the rule
//! documents what it does instead (Agresti–Caffo counts for shares, the
//! control's sampling error in the p95 test, Fieller's form for lifts).
//!
//! The confidence sequence is two-sided at level α, and a halt only looks
//! at one side (the treatment is *worse*). A one-sided decision taken from
//! a two-sided sequence at the same α has an error of at most α (about α/2
//! by symmetry): conservative, never anti-conservative. The reported
//! `p_value` is the always-valid p-value of the distance to the limit, on
//! the side that halts (1 when the estimate is on the good side);
//! `p_value < α_check` exactly when the check breaches.
//!
//! Checks that cannot be computed (too little data, a zero standard error,
//! a zero control mean) say so with [`CheckStatus::NotEnoughData`] and never
//! halt; [`CheckStatus::Error`] marks input that is inconsistent (a metric
//! that is a conversion in one arm and a value in the other, conversions
//! above users, a rule with both or no limits).

mod health;

pub use health::{latency_bucket, Health, LATENCY_BOUNDS_US, LATENCY_BUCKETS, STATUS_CLASSES};

use std::fmt::Write as _;

use abmesh_filter::config::{ErrorRateRule, GuardrailsConfig, LatencyRule, MetricRule};
use serde::{Deserialize, Serialize};

use crate::{confidence_sequence, GroupStats, Moments, Proportion, RatioMoments, DEFAULT_N_STAR};

/// Tuning sample size n* of the health rules' confidence sequences, in
/// sampled responses of both arms together. The sequence's width is within
/// ~10 % of its minimum from a few hundred to a few hundred thousand
/// responses with this value, so it is tight both at `min_responses` (when
/// a broken variant should be caught) and in a long-running experiment.
pub const HEALTH_N_STAR: f64 = 2000.0;

/// Tuning sample size n* of the metric rules, in users of both arms (the
/// statistics engine's default).
pub const METRIC_N_STAR: f64 = DEFAULT_N_STAR;

/// Users each arm needs before a metric rule is checked: the test needs a
/// sample variance in each arm.
pub const MIN_METRIC_USERS: u64 = 2;

/// The exceedance share of a p95: 5 % of responses are slower than it.
const P95_TAIL: f64 = 0.05;

/// One metric of one variant, as the engine aggregates it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetricData {
    /// Exposed users and those with at least one event of the metric.
    Conversion { n: u64, converted: u64 },
    /// Per-user totals of the metric over the exposed users (0 for users
    /// without events).
    Value(Moments),
    /// A ratio metric: per-user numerator and denominator over the exposed
    /// users; tested on the ratio with its delta-method variance.
    Ratio(RatioMoments),
    /// A quantile of event values: `n` events, the quantile and its
    /// Woodruff standard error (tested as a mean with variance se²·n).
    Quantile { n: u64, quantile: f64, se: f64 },
}

impl MetricData {
    fn users(&self) -> u64 {
        match self {
            MetricData::Conversion { n, .. } => *n,
            MetricData::Value(m) => m.n(),
            MetricData::Ratio(m) => m.n(),
            MetricData::Quantile { n, .. } => *n,
        }
    }
}

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Enough data and no evidence of a breach.
    Ok,
    /// The treatment is worse than the limit allows: halt it.
    Breach,
    /// Not checked yet (too little data, or a statistic is undefined).
    NotEnoughData,
    /// Inconsistent input or rule; see the message.
    Error,
}

impl CheckStatus {
    /// The status as reports print it (the serialized name).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Breach => "breach",
            CheckStatus::NotEnoughData => "not_enough_data",
            CheckStatus::Error => "error",
        }
    }
}

/// Result of one rule for one treatment variant.
///
/// Units: `error_rate` — absolute share difference (0.01 = 1 pp);
/// `p95_latency` — relative p95 increase (0.2 = +20 %), the interval being
/// the range of treatment/control p95 ratios − 1 consistent with the
/// exceedance test; `metric:*` — relative lift (−0.05 = −5 %). `ci_*` is the
/// always-valid interval at the check's level `1 − alpha_check`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Index of the treatment variant. Not serialized: an index means
    /// nothing outside the engine; reports name the variant beside the
    /// check (`abmesh_eval::report::model::CheckOut`).
    #[serde(skip)]
    pub variant: usize,
    /// `"error_rate"`, `"p95_latency"` or `"metric:NAME"`.
    pub rule: String,
    pub status: CheckStatus,
    pub estimate: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// The limit in the estimate's units (signed for metric decreases).
    pub limit: f64,
    /// Always-valid p-value of the distance to the limit (see module docs).
    pub p_value: Option<f64>,
    /// One human-readable line.
    pub message: String,
}

impl Check {
    fn new(variant: usize, rule: String, limit: f64) -> Self {
        Check {
            variant,
            rule,
            status: CheckStatus::NotEnoughData,
            estimate: None,
            ci_low: None,
            ci_high: None,
            limit,
            p_value: None,
            message: String::new(),
        }
    }

    fn with(mut self, status: CheckStatus, message: impl Into<String>) -> Self {
        self.status = status;
        self.message = message.into();
        self
    }
}

/// Runs every configured rule for every variant except `control` (index into
/// `health`, which has one entry per variant of the experiment). `metric`
/// returns a metric's data for a variant index, `None` when the metric is
/// unknown or has no data. Checks come per variant, in rule order
/// (`error_rate`, `p95_latency`, then `metrics` as configured).
pub fn evaluate(
    cfg: &GuardrailsConfig,
    control: usize,
    health: &[Health],
    metric: &dyn Fn(&str, usize) -> Option<MetricData>,
) -> Vec<Check> {
    let rules = usize::from(cfg.error_rate.is_some())
        + usize::from(cfg.p95_latency.is_some())
        + cfg.metrics.len();
    if rules == 0 || control >= health.len() || health.len() < 2 {
        return Vec::new();
    }
    let treatments = health.len() - 1;
    let alpha = cfg.alpha / (rules * treatments) as f64;
    let alpha_ok = cfg.alpha > 0.0 && cfg.alpha < 1.0;
    let mut out = Vec::with_capacity(rules * treatments);
    for v in (0..health.len()).filter(|&v| v != control) {
        let mut push = |c: Check| {
            if alpha_ok {
                out.push(c)
            } else {
                let msg = format!("alpha must be in (0, 1), got {}", cfg.alpha);
                out.push(c.with(CheckStatus::Error, msg))
            }
        };
        if let Some(rule) = &cfg.error_rate {
            push(error_rate(
                rule,
                cfg.min_responses,
                alpha,
                v,
                &health[control],
                &health[v],
            ));
        }
        if let Some(rule) = &cfg.p95_latency {
            push(p95_latency(
                rule,
                cfg.min_responses,
                alpha,
                v,
                &health[control],
                &health[v],
            ));
        }
        for rule in &cfg.metrics {
            let c = metric(&rule.metric, control);
            let t = metric(&rule.metric, v);
            push(self::metric(rule, alpha, v, c, t));
        }
    }
    out
}

/// `Some(x)` when finite.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// "99.5" for α = 0.005.
fn level(alpha: f64) -> String {
    let s = format!("{:.2}", 100.0 * (1.0 - alpha));
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One-sided always-valid p-value of `excess` (> 0 means worse than the
/// limit) with standard error `se` after `n` observations.
fn one_sided_p(excess: f64, se: f64, n: f64, alpha: f64, n_star: f64) -> Option<f64> {
    if excess <= 0.0 {
        return Some(1.0);
    }
    confidence_sequence(excess, se, n, alpha, n_star)
        .ok()
        .map(|(_, p)| p)
}

fn not_enough_responses(c: Check, min: u64, control: &Health, treatment: &Health) -> Check {
    let msg = format!(
        "{} sampled responses in the treatment and {} in control; {} needed in each",
        treatment.responses(),
        control.responses(),
        min.max(1)
    );
    c.with(CheckStatus::NotEnoughData, msg)
}

/// The `error_rate` rule.
///
/// d = p_t − p_c over the sampled responses (5xx / responses). The test
/// uses the Agresti–Caffo adjustment — one error and one success added to
/// each arm, p̃ = (x + 1)/(n + 2), se² = Σ p̃(1 − p̃)/(n + 2) — for both the
/// centre and the standard error of the confidence sequence: the plain Wald
/// se is 0 for an arm without errors and badly anti-conservative at the
/// small counts a healthy service has (control 0 of 100, treatment 3 of
/// 100 would otherwise look like strong evidence). The adjusted se is never
/// 0, so an arm without errors is handled without a special case.
/// Breach iff d̃ − half-width > `max_increase`. `estimate` is the raw d;
/// the interval is d̃ ± half-width.
pub fn error_rate(
    rule: &ErrorRateRule,
    min_responses: u64,
    alpha: f64,
    variant: usize,
    control: &Health,
    treatment: &Health,
) -> Check {
    let limit = rule.max_increase;
    let c = Check::new(variant, "error_rate".into(), limit);
    if !(limit.is_finite() && (0.0..1.0).contains(&limit)) {
        return c.with(
            CheckStatus::Error,
            format!("max_increase must be in [0, 1), got {limit}"),
        );
    }
    let (nc, nt) = (control.responses(), treatment.responses());
    let (xc, xt) = (control.server_errors(), treatment.server_errors());
    if nc < min_responses.max(1) || nt < min_responses.max(1) {
        return not_enough_responses(c, min_responses, control, treatment);
    }
    let (pc, pt) = (xc as f64 / nc as f64, xt as f64 / nt as f64);
    let d = pt - pc;
    let adj = |x: u64, n: u64| ((x as f64 + 1.0) / (n as f64 + 2.0), n as f64 + 2.0);
    let ((ac, mc), (at, mt)) = (adj(xc, nc), adj(xt, nt));
    let centre = at - ac;
    let se = (ac * (1.0 - ac) / mc + at * (1.0 - at) / mt).sqrt();
    let n = (nc + nt) as f64;
    let hw = match confidence_sequence(centre - limit, se, n, alpha, HEALTH_N_STAR) {
        Ok((hw, _)) => hw,
        Err(e) => return c.with(CheckStatus::NotEnoughData, e.to_string()),
    };
    let breach = centre - hw > limit;
    let mut c = c;
    c.estimate = finite(d);
    c.ci_low = finite(centre - hw);
    c.ci_high = finite(centre + hw);
    c.p_value = one_sided_p(centre - limit, se, n, alpha, HEALTH_N_STAR);
    let mut msg = format!(
        "5xx share {} vs control {} ({} pp, always-valid {}% CI {}..{} pp) ",
        pct(pt),
        pct(pc),
        signed(100.0 * d, 1),
        level(alpha),
        signed(100.0 * (centre - hw), 1),
        signed(100.0 * (centre + hw), 1),
    );
    let _ = write!(
        msg,
        "{} the {} pp limit",
        if breach { "exceeds" } else { "is within" },
        signed(100.0 * limit, 1)
    );
    c.with(
        if breach {
            CheckStatus::Breach
        } else {
            CheckStatus::Ok
        },
        msg,
    )
}

/// The `p95_latency` rule.
///
/// τ = control p95 × (1 + pct/100), both from the histograms; e_t = share
/// of the treatment's timed responses slower than τ. If the treatment's p95
/// is at most τ then e_t ≤ 5 %, so the rule tests H0: e_t ≤ 0.05 and
/// breaches iff (e_t − 0.05) − half-width > 0.
///
/// The standard error counts the control's sampling error too:
/// se² = e_t(1 − e_t)/n_t + 0.05·0.95/n_c. τ is itself an estimate (the
/// control's p95 has variance 0.05·0.95/(n_c f_c²)), and at the boundary of
/// H0 — the treatment's latencies are the control's scaled by
/// (1 + pct/100) — that variance moves e_t by exactly 0.05·0.95/n_c, for any
/// latency distribution. Leaving it out would understate the variance by
/// half in an A/A test with equal arms. The control term also keeps se > 0
/// when no treatment response exceeds τ.
///
/// `estimate` is treatment p95 / control p95 − 1; the interval is the range
/// of treatment quantiles 0.95 ∓ half-width over the control p95, minus 1,
/// so the check breaches exactly when `ci_low > limit`.
pub fn p95_latency(
    rule: &LatencyRule,
    min_responses: u64,
    alpha: f64,
    variant: usize,
    control: &Health,
    treatment: &Health,
) -> Check {
    let pct_limit = rule.max_increase_percent;
    let limit = pct_limit / 100.0;
    let c = Check::new(variant, "p95_latency".into(), limit);
    if !(pct_limit.is_finite() && pct_limit >= 0.0) {
        return c.with(
            CheckStatus::Error,
            format!("max_increase_percent must be ≥ 0, got {pct_limit}"),
        );
    }
    if control.responses() < min_responses.max(1) || treatment.responses() < min_responses.max(1) {
        return not_enough_responses(c, min_responses, control, treatment);
    }
    let (nc, nt) = (control.timed(), treatment.timed());
    let (Some(qc), Some(qt)) = (control.quantile_us(0.95), treatment.quantile_us(0.95)) else {
        return c.with(CheckStatus::NotEnoughData, "no timed responses");
    };
    if qc <= 0.0 {
        return c.with(CheckStatus::NotEnoughData, "control p95 is 0");
    }
    let tau = qc * (1.0 + limit);
    let Some(et) = treatment.share_above(tau) else {
        return c.with(CheckStatus::NotEnoughData, "no timed responses");
    };
    let (nc, nt) = (nc as f64, nt as f64);
    let se = (et * (1.0 - et) / nt + P95_TAIL * (1.0 - P95_TAIL) / nc).sqrt();
    let n = nc + nt;
    let excess = et - P95_TAIL;
    let hw = match confidence_sequence(excess, se, n, alpha, HEALTH_N_STAR) {
        Ok((hw, _)) => hw,
        Err(e) => return c.with(CheckStatus::NotEnoughData, e.to_string()),
    };
    let breach = excess - hw > 0.0;
    let ratio = |p: f64| {
        treatment
            .quantile_us(p.clamp(0.0, 1.0))
            .map(|q| q / qc - 1.0)
    };
    let mut c = c;
    c.estimate = finite(qt / qc - 1.0);
    c.ci_low = ratio(1.0 - P95_TAIL - hw).and_then(finite);
    c.ci_high = ratio(1.0 - P95_TAIL + hw).and_then(finite);
    c.p_value = one_sided_p(excess, se, n, alpha, HEALTH_N_STAR);
    let msg = format!(
        "p95 latency {} vs control {} ({}%): {} of responses slower than {} = control p95 \
         {}% (always-valid {}% CI {}..{}), {} the 5% the limit allows",
        ms(qt),
        ms(qc),
        signed(100.0 * (qt / qc - 1.0), 1),
        pct(et),
        ms(tau),
        format_args!("{pct_limit:+}"),
        level(alpha),
        pct((et - hw).max(0.0)),
        pct((et + hw).min(1.0)),
        if breach {
            "more than"
        } else {
            "not clearly more than"
        },
    );
    c.with(
        if breach {
            CheckStatus::Breach
        } else {
            CheckStatus::Ok
        },
        msg,
    )
}

/// A metric rule: the relative lift (m_t − m_c)/|m_c| of the conversion
/// share or of the mean per-user total, against `max_decrease_percent`
/// (breach iff the lift is clearly below −pct/100, i.e. `ci_high` below the
/// limit) or `max_increase_percent` (breach iff `ci_low > pct/100`).
/// `control`/`treatment` are the metric's data in each arm (`None`: unknown
/// metric or no data yet).
///
/// The test is not the delta-method z of the lift
/// ([`crate::sequential()`] with `relative`): its standard error
/// shrinks with the treatment mean, so a treatment that happens to start
/// with few conversions (or buyers) looks *certain* to be worse. Simulated
/// (`tests/guardrail_simulation.rs`, A/A, 5 % conversion, 20 users per arm
/// per look), it halted 1.8 % (conversions) and 3 % (zero-inflated revenue)
/// of healthy variants at a per-check α of 1.25 %. Instead the limit is
/// tested in Fieller's linear form: D = m_t − g·m_c with
/// g = 1 + limit·sign(m_c), whose standard error keeps the control's full
/// contribution, in the same confidence sequence; that simulation then
/// gives 0.2 % and 0 %. Conversions additionally get one conversion and one
/// non-conversion added to each arm (Agresti–Caffo, as in [`error_rate`]),
/// which keeps the variance of an arm without conversions positive.
/// `estimate` is the raw lift; the interval is the Fieller interval of the
/// test. A control whose mean is not clearly non-zero (for a conversion
/// metric: fewer than about k² conversions, 20 to 40 with k the sequence's
/// multiplier) leaves the lift undefined: not enough data.
pub fn metric(
    rule: &MetricRule,
    alpha: f64,
    variant: usize,
    control: Option<MetricData>,
    treatment: Option<MetricData>,
) -> Check {
    let name = &rule.metric;
    let rule_name = format!("metric:{name}");
    // (signed limit, halts when lower)
    let (limit, decrease) = match (rule.max_decrease_percent, rule.max_increase_percent) {
        (Some(p), None) => (-p / 100.0, true),
        (None, Some(p)) => (p / 100.0, false),
        (d, i) => {
            let msg = format!(
                "exactly one of max_decrease_percent and max_increase_percent must be given \
                 (got {d:?} and {i:?})"
            );
            return Check::new(variant, rule_name, 0.0).with(CheckStatus::Error, msg);
        }
    };
    let c = Check::new(variant, rule_name, limit);
    let valid = if decrease {
        limit > -1.0 && limit <= 0.0
    } else {
        limit.is_finite() && limit >= 0.0
    };
    if !valid {
        let which = if decrease {
            "max_decrease_percent must be in [0, 100)"
        } else {
            "max_increase_percent must be ≥ 0"
        };
        let got = limit.abs() * 100.0;
        return c.with(CheckStatus::Error, format!("{which}, got {got}"));
    }
    let (Some(dc), Some(dt)) = (control, treatment) else {
        let msg = format!("no data for metric \"{name}\" yet");
        return c.with(CheckStatus::NotEnoughData, msg);
    };
    if dc.users() < MIN_METRIC_USERS || dt.users() < MIN_METRIC_USERS {
        let msg = format!(
            "{} users in the treatment and {} in control; {MIN_METRIC_USERS} needed in each",
            dt.users(),
            dc.users()
        );
        return c.with(CheckStatus::NotEnoughData, msg);
    }
    // (n, mean, variance) of each arm as the test reads them.
    let (arms, estimate, means, what) = match (dc, dt) {
        (
            MetricData::Conversion {
                n: nc,
                converted: xc,
            },
            MetricData::Conversion {
                n: nt,
                converted: xt,
            },
        ) => {
            let (pc, pt) = match (Proportion::new(nc, xc), Proportion::new(nt, xt)) {
                (Ok(pc), Ok(pt)) => (pc, pt),
                (Err(e), _) | (_, Err(e)) => return c.with(CheckStatus::Error, e.to_string()),
            };
            // One conversion and one non-conversion added to each arm (see
            // the function docs).
            let adjusted = |p: Proportion| {
                let p = Proportion {
                    n: p.n + 2,
                    conversions: p.conversions + 1,
                };
                Arm::of(&p)
            };
            (
                (adjusted(pc), adjusted(pt)),
                pt.rate() / pc.rate() - 1.0,
                (pct(pt.rate()), pct(pc.rate())),
                format!("conversion to \"{name}\""),
            )
        }
        (MetricData::Value(mc), MetricData::Value(mt)) => (
            (Arm::of(&mc), Arm::of(&mt)),
            (mt.mean() - mc.mean()) / mc.mean().abs(),
            (num(mt.mean()), num(mc.mean())),
            format!("\"{name}\" per user"),
        ),
        (MetricData::Ratio(mc), MetricData::Ratio(mt)) => {
            let arm = |m: &RatioMoments| Arm {
                n: m.n() as f64,
                mean: m.ratio(),
                var: m.ratio_variance(),
            };
            let (c, t) = (arm(&mc), arm(&mt));
            (
                (c, t),
                (t.mean - c.mean) / c.mean.abs(),
                (num(t.mean), num(c.mean)),
                format!("ratio \"{name}\""),
            )
        }
        (
            MetricData::Quantile {
                n: nc,
                quantile: qc,
                se: sc,
            },
            MetricData::Quantile {
                n: nt,
                quantile: qt,
                se: st,
            },
        ) => {
            // A quantile estimator is asymptotically a mean (Bahadur), so
            // it enters the test as one with variance se²·n.
            let arm = |n: u64, q: f64, se: f64| Arm {
                n: n as f64,
                mean: q,
                var: se * se * n as f64,
            };
            (
                (arm(nc, qc, sc), arm(nt, qt, st)),
                (qt - qc) / qc.abs(),
                (num(qt), num(qc)),
                format!("quantile \"{name}\""),
            )
        }
        _ => {
            let msg = format!(
                "metric \"{name}\" is of one kind in one arm and another in the other \
                 (conversion, value, ratio or quantile)"
            );
            return c.with(CheckStatus::Error, msg);
        }
    };
    let test = match lift_test(arms.0, arms.1, limit, alpha) {
        Ok(t) => t,
        Err(LiftError::ControlNearZero) => {
            let msg = match dc {
                MetricData::Conversion { converted, .. } => format!(
                    "{converted} conversions to \"{name}\" in control: too few to measure a \
                     relative change yet"
                ),
                MetricData::Value(m) => format!(
                    "the control mean of \"{name}\" ({}) is not yet clearly different from 0: \
                     too little data to measure a relative change",
                    num(m.mean())
                ),
                MetricData::Ratio(m) => format!(
                    "the control ratio of \"{name}\" ({}) is not yet clearly different from 0: \
                     too little data to measure a relative change",
                    num(m.ratio())
                ),
                MetricData::Quantile { quantile, .. } => format!(
                    "the control quantile of \"{name}\" ({}) is not yet clearly different \
                     from 0: too little data to measure a relative change",
                    num(quantile)
                ),
            };
            return c.with(CheckStatus::NotEnoughData, msg);
        }
        Err(LiftError::Other(reason)) => return c.with(CheckStatus::NotEnoughData, reason),
    };
    // D < 0: the treatment is below the limit.
    let breach = if decrease {
        test.d + test.half_width < 0.0
    } else {
        test.d - test.half_width > 0.0
    };
    let worse = if decrease { -test.d } else { test.d };
    let mut c = c;
    c.estimate = finite(estimate);
    c.ci_low = finite(test.ci.0);
    c.ci_high = finite(test.ci.1);
    c.p_value = one_sided_p(worse, test.se, test.n, alpha, METRIC_N_STAR);
    let verdict = match (breach, decrease) {
        (true, true) => "is below",
        (true, false) => "exceeds",
        (false, true) => "is not clearly below",
        (false, false) => "does not clearly exceed",
    };
    let msg = format!(
        "{what} {} vs control {} ({}%, always-valid {}% CI {}%..{}%) {verdict} the {}% limit",
        means.0,
        means.1,
        signed(100.0 * estimate, 1),
        level(alpha),
        signed(100.0 * test.ci.0, 1),
        signed(100.0 * test.ci.1, 1),
        signed(100.0 * limit, 1),
    );
    c.with(
        if breach {
            CheckStatus::Breach
        } else {
            CheckStatus::Ok
        },
        msg,
    )
}

/// One arm of a metric test: n, mean, sample variance.
#[derive(Clone, Copy, Debug)]
struct Arm {
    n: f64,
    mean: f64,
    var: f64,
}

impl Arm {
    fn of(g: &impl GroupStats) -> Arm {
        Arm {
            n: g.n() as f64,
            mean: g.mean(),
            var: g.variance(),
        }
    }
}

/// Why [`lift_test`] could not decide.
#[derive(Clone, Debug)]
enum LiftError {
    /// The control mean is 0 or not clearly different from it.
    ControlNearZero,
    Other(String),
}

/// What [`lift_test`] found.
#[derive(Clone, Copy, Debug)]
struct LiftTest {
    /// m_t − g·m_c at the limit (see [`lift_test`]).
    d: f64,
    se: f64,
    half_width: f64,
    /// Users of both arms.
    n: f64,
    /// Always-valid (Fieller) interval of the relative lift.
    ci: (f64, f64),
}

/// Tests the relative lift (m_t − m_c)/|m_c| against `limit` in the
/// Fieller form: with g = 1 + limit·sign(m_c), D = m_t − g·m_c is linear
/// in the means, se² = v_t/n_t + g²·v_c/n_c, and the lift is beyond the
/// limit (below it for D < 0, above for D > 0) when |D| exceeds the
/// confidence sequence's half-width. The interval is the set of lifts the
/// same test does not reject (Fieller's interval, with the sequence's
/// multiplier k = half-width/se in place of a normal quantile); it is
/// bounded only when the control mean is itself clearly non-zero,
/// m_c² > k²·v_c/n_c, which is required (not enough data otherwise).
fn lift_test(c: Arm, t: Arm, limit: f64, alpha: f64) -> Result<LiftTest, LiftError> {
    for (arm, name) in [(c, "control"), (t, "treatment")] {
        if !(arm.mean.is_finite() && arm.var.is_finite() && arm.var >= 0.0 && arm.n >= 2.0) {
            return Err(LiftError::Other(format!(
                "{name} has no usable mean and variance (n = {}, mean = {}, variance = {})",
                arm.n, arm.mean, arm.var
            )));
        }
    }
    if c.mean == 0.0 {
        return Err(LiftError::ControlNearZero);
    }
    let s = c.mean.signum();
    let g = 1.0 + limit * s;
    let (vc, vt) = (c.var / c.n, t.var / t.n);
    let d = t.mean - g * c.mean;
    let se = (vt + g * g * vc).sqrt();
    let n = c.n + t.n;
    let (half_width, _) = confidence_sequence(d, se, n, alpha, METRIC_N_STAR)
        .map_err(|e| LiftError::Other(e.to_string()))?;
    let k2 = (half_width / se).powi(2);
    // Fieller: a·R² − 2b·R + c0 ≤ 0 for the ratio R = m_t/m_c.
    let a = c.mean * c.mean - k2 * vc;
    if a <= 0.0 {
        return Err(LiftError::ControlNearZero);
    }
    let b = t.mean * c.mean;
    let c0 = t.mean * t.mean - k2 * vt;
    let root = (b * b - a * c0).max(0.0).sqrt();
    let (r_lo, r_hi) = ((b - root) / a, (b + root) / a);
    // lift = sign(m_c)·(R − 1)
    let (l1, l2) = (s * (r_lo - 1.0), s * (r_hi - 1.0));
    Ok(LiftTest {
        d,
        se,
        half_width,
        n,
        ci: (l1.min(l2), l1.max(l2)),
    })
}

/// "+1.5" / "-0.3" with `digits` decimals.
fn signed(x: f64, digits: usize) -> String {
    format!("{x:+.digits$}")
}

/// A share as "21.4%".
fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// Microseconds as "12.3 ms".
fn ms(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else {
        format!("{:.1} ms", us / 1e3)
    }
}

/// A mean with four significant digits.
fn num(x: f64) -> String {
    let mag = if x == 0.0 {
        0
    } else {
        x.abs().log10().floor() as i32
    };
    let digits = (3 - mag).clamp(0, 6) as usize;
    format!("{x:.digits$}")
}

#[cfg(test)]
mod tests;
