//! The report's ratio and quantile metrics (declared in the configuration's
//! `metrics`; see [`crate::aggregate::derived`]), and their text and HTML.
//!
//! * **Ratio** (kind `ratio` of `sidecar/stats/README.md`): per variant
//!   Σm/Σd over the exposed users; per treatment the absolute and relative
//!   difference with the delta-method standard error, Welch df and Student
//!   t interval ([`abmesh_stats::ratio()`], agreeing with gbstats'
//!   `RatioStatistic`), and the always-valid interval of the relative
//!   difference (the confidence sequence on that estimate and se).
//! * **Quantile** (kind `quantile`): per variant the ν-quantile of the
//!   event values, from the log-bucketed histogram; per treatment the
//!   absolute and relative difference with Woodruff standard errors
//!   ([`abmesh_stats::quantile_test`]), and the events per arm from which
//!   that interval's coverage is validated
//!   ([`abmesh_stats::quantile::validated_min_n`]).
//!
//! They are reported beside the outcome metrics and can be guardrails; the
//! decision is still made on the primary outcome metric.

use std::fmt::Write as _;

use serde::Serialize;

use super::data::ExperimentData;
use super::settings::Settings;
use super::values::escape_html;
use super::values::{pct, SequentialOut, Stat};
use crate::aggregate::derived::DerivedData;
use abmesh_stats::quantile::validated_min_n;
use abmesh_stats::sequential::confidence_sequence;
use abmesh_stats::{quantile_se, quantile_test, ratio, EffectResult, QuantileResult};

/// A ratio metric in a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatioMetricReport {
    pub name: String,
    pub numerator: String,
    pub denominator: String,
    pub higher_is_better: bool,
    pub variants: Vec<RatioVariant>,
    pub comparisons: Vec<RatioComparison>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatioVariant {
    pub variant: String,
    /// Exposed users (the unit of the delta method).
    pub users: u64,
    pub numerator_sum: f64,
    pub denominator_sum: f64,
    /// Σ numerator / Σ denominator (None when Σ denominator is 0).
    pub ratio: Option<f64>,
    /// Its delta-method standard error √(V/n).
    pub se: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatioComparison {
    pub variant: String,
    /// r_t − r_c (kind `ratio`, `relative: false`).
    pub absolute: Stat<EffectResult>,
    /// (r_t − r_c)/r_c (kind `ratio`, `relative: true`).
    pub relative: Stat<EffectResult>,
    /// Always-valid interval and p-value of the relative difference.
    pub sequential: Stat<SequentialOut>,
}

/// A quantile metric in a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantileMetricReport {
    pub name: String,
    /// The outcome metric whose event values are measured.
    pub metric: String,
    /// The level ν (0.95 for p95).
    pub quantile: f64,
    pub higher_is_better: bool,
    /// Events per arm from which the interval's coverage is validated.
    pub validated_min_events: u64,
    pub variants: Vec<QuantileVariant>,
    pub comparisons: Vec<QuantileComparison>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantileVariant {
    pub variant: String,
    /// Event values of exposed users.
    pub events: u64,
    /// The ν-quantile (None: no events).
    pub value: Option<f64>,
    /// Its Woodruff standard error (None: too few events to bracket it).
    pub se: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantileComparison {
    pub variant: String,
    /// q_t − q_c.
    pub absolute: Stat<QuantileResult>,
    /// (q_t − q_c)/q_c.
    pub relative: Stat<QuantileResult>,
    /// Both arms have at least `validated_min_events` events.
    pub validated: bool,
}

fn stat<T>(r: Result<T, impl ToString>) -> Stat<T> {
    match r {
        Ok(v) => Stat::Ok(v),
        Err(e) => Stat::Err {
            error: e.to_string(),
        },
    }
}

fn higher_is_better(settings: &Settings, experiment: &str, metric: &str) -> bool {
    settings
        .experiments
        .get(experiment)
        .and_then(|e| e.metrics.get(metric))
        .is_none_or(|m| m.higher_is_better)
}

/// The ratio and quantile metrics of an experiment, in declaration order.
pub fn build(
    data: &ExperimentData,
    control: usize,
    settings: &Settings,
) -> (Vec<RatioMetricReport>, Vec<QuantileMetricReport>) {
    let (mut ratios, mut quantiles) = (Vec::new(), Vec::new());
    for d in &data.derived {
        match d {
            DerivedData::Ratio { def, sums } => {
                let moments: Vec<_> = sums
                    .iter()
                    .enumerate()
                    .map(|(i, s)| s.moments(if i == control { "control" } else { "treatment" }))
                    .collect();
                let variants = data
                    .variants
                    .iter()
                    .zip(sums)
                    .zip(&moments)
                    .map(|((v, s), m)| {
                        let ratio = m.as_ref().ok().map(|m| m.ratio()).filter(|r| r.is_finite());
                        let se = m
                            .as_ref()
                            .ok()
                            .filter(|m| m.n() >= 2)
                            .map(|m| (m.ratio_variance() / m.n() as f64).sqrt())
                            .filter(|s| s.is_finite());
                        RatioVariant {
                            variant: v.clone(),
                            users: s.n.max(0) as u64,
                            numerator_sum: s.m.value(),
                            denominator_sum: s.d.value(),
                            ratio,
                            se,
                        }
                    })
                    .collect();
                let comparisons = (0..sums.len())
                    .filter(|&i| i != control && control < sums.len())
                    .map(|i| {
                        let test = |relative: bool| match (&moments[control], &moments[i]) {
                            (Ok(c), Ok(t)) => stat(ratio(c, t, settings.alpha, relative)),
                            (Err(e), _) | (_, Err(e)) => Stat::Err {
                                error: e.to_string(),
                            },
                        };
                        let relative = test(true);
                        let n = (sums[control].n + sums[i].n).max(0) as f64;
                        let sequential = match &relative {
                            Stat::Ok(r) => stat(
                                confidence_sequence(
                                    r.estimate,
                                    r.se,
                                    n,
                                    settings.alpha,
                                    settings.n_star,
                                )
                                .map(|(hw, p)| SequentialOut {
                                    ci_low: r.estimate - hw,
                                    ci_high: r.estimate + hw,
                                    p_value: p,
                                }),
                            ),
                            Stat::Err { error } => Stat::Err {
                                error: error.clone(),
                            },
                        };
                        RatioComparison {
                            variant: data.variants[i].clone(),
                            absolute: test(false),
                            relative,
                            sequential,
                        }
                    })
                    .collect();
                ratios.push(RatioMetricReport {
                    name: def.name.clone(),
                    numerator: def.numerator.clone().unwrap_or_default(),
                    denominator: def.denominator.clone().unwrap_or_default(),
                    higher_is_better: higher_is_better(settings, &data.name, &def.name),
                    variants,
                    comparisons,
                });
            }
            DerivedData::Quantile { def, buckets } => {
                let q = def.quantile.unwrap_or(0.5);
                let hists: Vec<_> = buckets.iter().map(|b| b.to_histogram()).collect();
                let variants = data
                    .variants
                    .iter()
                    .zip(&hists)
                    .map(|(v, h)| {
                        let h = h.as_ref().ok();
                        QuantileVariant {
                            variant: v.clone(),
                            events: h.map_or(0, |h| h.total()),
                            value: h.and_then(|h| h.quantile(q)),
                            se: h
                                .and_then(|h| quantile_se(h, q, "variant").ok())
                                .map(|e| e.se),
                        }
                    })
                    .collect();
                let min = validated_min_n(q);
                let comparisons = (0..hists.len())
                    .filter(|&i| i != control && control < hists.len())
                    .map(|i| {
                        let test = |relative: bool| match (&hists[control], &hists[i]) {
                            (Ok(c), Ok(t)) => {
                                stat(quantile_test(c, t, q, settings.alpha, relative))
                            }
                            (Err(e), _) | (_, Err(e)) => Stat::Err {
                                error: e.to_string(),
                            },
                        };
                        QuantileComparison {
                            variant: data.variants[i].clone(),
                            absolute: test(false),
                            relative: test(true),
                            validated: [control, i].iter().all(|&v| buckets[v].total() >= min),
                        }
                    })
                    .collect();
                quantiles.push(QuantileMetricReport {
                    name: def.name.clone(),
                    metric: def.metric.clone().unwrap_or_default(),
                    quantile: q,
                    higher_is_better: higher_is_better(settings, &data.name, &def.name),
                    validated_min_events: min,
                    variants,
                    comparisons,
                });
            }
        }
    }
    (ratios, quantiles)
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.filter(|v| v.is_finite())
        .map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn p(x: f64) -> String {
    if x < 0.0001 {
        format!("{x:.1e}")
    } else {
        format!("{x:.4}")
    }
}

fn better(higher: bool) -> &'static str {
    if higher {
        "higher"
    } else {
        "lower"
    }
}

/// The text report's sections.
pub fn text(
    o: &mut String,
    ratios: &[RatioMetricReport],
    quantiles: &[QuantileMetricReport],
    alpha: f64,
) {
    let level = format!("{:.0}%", (1.0 - alpha) * 100.0);
    for m in ratios {
        let _ = writeln!(
            o,
            "\n{} (ratio metric {} / {} per user, {} is better)",
            m.name,
            m.numerator,
            m.denominator,
            better(m.higher_is_better)
        );
        let _ = writeln!(
            o,
            "  {:<22} {:>10} {:>12} {:>12} {:>12} {:>10}",
            "variant", "users", "numerator", "denominator", "ratio", "se"
        );
        for v in &m.variants {
            let _ = writeln!(
                o,
                "  {:<22} {:>10} {:>12} {:>12} {:>12} {:>10}",
                v.variant,
                v.users,
                num(Some(v.numerator_sum), 2),
                num(Some(v.denominator_sum), 2),
                num(v.ratio, 5),
                num(v.se, 5)
            );
        }
        for c in &m.comparisons {
            let _ = writeln!(o, "  {} vs control:", c.variant);
            match &c.relative {
                Stat::Ok(r) => {
                    let _ = writeln!(
                        o,
                        "    lift {} ({level} CI {} .. {}), p {} (delta method)",
                        pct(r.estimate),
                        pct(r.ci_low),
                        pct(r.ci_high),
                        p(r.p_value)
                    );
                }
                Stat::Err { error } => {
                    let _ = writeln!(o, "    lift: {error}");
                }
            }
            if let Stat::Ok(a) = &c.absolute {
                let _ = writeln!(
                    o,
                    "    difference {:+.5} ({level} CI {:+.5} .. {:+.5})",
                    a.estimate, a.ci_low, a.ci_high
                );
            }
            if let Stat::Ok(s) = &c.sequential {
                let _ = writeln!(
                    o,
                    "    always-valid {level} CI {} .. {}, p {}",
                    pct(s.ci_low),
                    pct(s.ci_high),
                    p(s.p_value)
                );
            }
        }
    }
    for m in quantiles {
        let _ = writeln!(
            o,
            "\n{} (p{} of {} per event, {} is better)",
            m.name,
            m.quantile * 100.0,
            m.metric,
            better(m.higher_is_better)
        );
        let _ = writeln!(
            o,
            "  {:<22} {:>10} {:>12} {:>10}",
            "variant", "events", "quantile", "se"
        );
        for v in &m.variants {
            let _ = writeln!(
                o,
                "  {:<22} {:>10} {:>12} {:>10}",
                v.variant,
                v.events,
                num(v.value, 4),
                num(v.se, 4)
            );
        }
        for c in &m.comparisons {
            let _ = writeln!(o, "  {} vs control:", c.variant);
            match (&c.relative, &c.absolute) {
                (Stat::Ok(r), a) => {
                    let _ = writeln!(
                        o,
                        "    change {} ({level} CI {} .. {}), p {} (Woodruff){}",
                        pct(r.estimate),
                        pct(r.ci_low),
                        pct(r.ci_high),
                        p(r.p_value),
                        if c.validated {
                            String::new()
                        } else {
                            format!(
                                "; fewer than {} events per arm: coverage not validated",
                                m.validated_min_events
                            )
                        }
                    );
                    if let Stat::Ok(a) = a {
                        let _ = writeln!(
                            o,
                            "    difference {:+.4} ({level} CI {:+.4} .. {:+.4})",
                            a.estimate, a.ci_low, a.ci_high
                        );
                    }
                }
                (Stat::Err { error }, _) => {
                    let _ = writeln!(o, "    change: {error}");
                }
            }
        }
    }
}

/// The HTML page's sections.
pub fn html(
    h: &mut String,
    ratios: &[RatioMetricReport],
    quantiles: &[QuantileMetricReport],
    alpha: f64,
) {
    let level = format!("{:.0}%", (1.0 - alpha) * 100.0);
    let cell = |s: &Stat<(f64, f64, f64, f64)>, pctg: bool| match s {
        Stat::Ok((e, lo, hi, pv)) => {
            let f = |x: f64| {
                if pctg {
                    pct(x)
                } else {
                    format!("{x:+.5}")
                }
            };
            format!(
                "{} <span class=muted>[{} .. {}]</span> p = {}",
                f(*e),
                f(*lo),
                f(*hi),
                p(*pv)
            )
        }
        Stat::Err { error } => format!("<span class=muted>{}</span>", escape_html(error)),
    };
    let four = |s: &Stat<EffectResult>| match s {
        Stat::Ok(r) => Stat::Ok((r.estimate, r.ci_low, r.ci_high, r.p_value)),
        Stat::Err { error } => Stat::Err {
            error: error.clone(),
        },
    };
    let qfour = |s: &Stat<QuantileResult>| match s {
        Stat::Ok(r) => Stat::Ok((r.estimate, r.ci_low, r.ci_high, r.p_value)),
        Stat::Err { error } => Stat::Err {
            error: error.clone(),
        },
    };
    for m in ratios {
        let _ = write!(
            h,
            "<h2 id=\"ratio-{id}\">{name} <span class=muted>ratio metric: {n} / {d} per user, {b} is better</span></h2>\
             <table><tr><th>variant</th><th>users</th><th>Σ {n}</th><th>Σ {d}</th><th>ratio</th><th>se</th></tr>",
            id = escape_html(&m.name),
            name = escape_html(&m.name),
            n = escape_html(&m.numerator),
            d = escape_html(&m.denominator),
            b = better(m.higher_is_better)
        );
        for v in &m.variants {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape_html(&v.variant),
                v.users,
                num(Some(v.numerator_sum), 2),
                num(Some(v.denominator_sum), 2),
                num(v.ratio, 5),
                num(v.se, 5)
            );
        }
        let _ = write!(
            h,
            "</table><table><tr><th>vs control</th><th>lift ({level} CI, delta method)</th><th>difference ({level} CI)</th><th>always-valid lift</th></tr>"
        );
        for c in &m.comparisons {
            let seq = match &c.sequential {
                Stat::Ok(s) => {
                    Stat::Ok(((s.ci_low + s.ci_high) / 2.0, s.ci_low, s.ci_high, s.p_value))
                }
                Stat::Err { error } => Stat::Err {
                    error: error.clone(),
                },
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape_html(&c.variant),
                cell(&four(&c.relative), true),
                cell(&four(&c.absolute), false),
                cell(&seq, true)
            );
        }
        h.push_str("</table>");
    }
    for m in quantiles {
        let _ = write!(
            h,
            "<h2 id=\"quantile-{id}\">{name} <span class=muted>p{q} of {metric} per event, {b} is better</span></h2>\
             <table><tr><th>variant</th><th>events</th><th>p{q}</th><th>se</th></tr>",
            id = escape_html(&m.name),
            name = escape_html(&m.name),
            q = m.quantile * 100.0,
            metric = escape_html(&m.metric),
            b = better(m.higher_is_better)
        );
        for v in &m.variants {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape_html(&v.variant),
                v.events,
                num(v.value, 4),
                num(v.se, 4)
            );
        }
        let _ = write!(
            h,
            "</table><table><tr><th>vs control</th><th>change ({level} CI, Woodruff)</th><th>difference ({level} CI)</th><th></th></tr>"
        );
        for c in &m.comparisons {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape_html(&c.variant),
                cell(&qfour(&c.relative), true),
                cell(&qfour(&c.absolute), false),
                if c.validated {
                    String::new()
                } else {
                    format!(
                        "<span class=muted>fewer than {} events per arm: coverage not validated</span>",
                        m.validated_min_events
                    )
                }
            );
        }
        h.push_str("</table>");
    }
}
