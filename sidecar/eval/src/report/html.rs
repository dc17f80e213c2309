//! The report as an HTML page for people, with the cumulative-lift charts
//! drawn by the sidecar as inline SVG (plotters): no JavaScript, no
//! external assets, so the page works offline and from a saved file.

use std::fmt::Write as _;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::model::SegmentReport;
use super::model::{
    pct, BanditOut, Comparison, HaltedBy, Interval, LiftPoint, MetricReport, Report, SequentialOut,
    Stat,
};
pub use super::values::escape_html;
use super::ListEntry;
use abmesh_stats::guardrail::CheckStatus;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1150px}\
table{border-collapse:collapse;margin:8px 0 16px}td,th{padding:3px 10px;text-align:right;border-bottom:1px solid #ddd}\
td:first-child,th:first-child{text-align:left}h2{margin-top:32px}.muted{color:#777}\
.decision{padding:12px 16px;border-radius:6px;margin:12px 0;font-size:1.05em}\
.ship{background:#e3f6e5;border-left:6px solid #2e7d32}.stop-harm{background:#fde7e7;border-left:6px solid #c62828}\
.keep-running{background:#eef3fb;border-left:6px solid #1565c0}.inconclusive{background:#f4f1e6;border-left:6px solid #8d6e00}\
.warn{color:#8d3b00}figure{margin:8px 0}code{background:#f4f4f4;padding:1px 4px}";

/// Line colours of the treatments, in order.
const PALETTE: [RGBColor; 6] = [
    RGBColor(21, 101, 192),
    RGBColor(198, 40, 40),
    RGBColor(46, 125, 50),
    RGBColor(142, 36, 170),
    RGBColor(239, 108, 0),
    RGBColor(0, 131, 143),
];

fn num(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".into(),
    }
}

fn p(x: Option<f64>) -> String {
    match x {
        Some(v) if v < 0.0001 => format!("{v:.1e}"),
        Some(v) => format!("{v:.4}"),
        None => "–".into(),
    }
}

fn stat_cell<T>(s: &Stat<T>, f: impl Fn(&T) -> String) -> String {
    match s {
        Stat::Ok(v) => f(v),
        Stat::Err { error } => format!(
            "<span class=muted title=\"{}\">n/a</span>",
            escape_html(error)
        ),
    }
}

/// The page of one experiment.
pub fn report_page(r: &Report) -> String {
    let mut h = String::with_capacity(64 << 10);
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=utf-8><title>abmesh · {name}</title><style>{STYLE}</style></head><body>\
         <p class=muted><a href=\"/admin/experiments?format=html\">all experiments</a></p>\
         <h1>Experiment <code>{name}</code></h1>",
        name = escape_html(&r.experiment)
    );
    let d = &r.decision;
    let _ = write!(
        h,
        "<div class=\"decision {kind}\" id=decision><strong>{upper}</strong> — {reason}</div>",
        kind = d.decision.as_str(),
        upper = d.decision.as_str().to_uppercase(),
        reason = escape_html(&d.reason)
    );
    // Variants and SRM.
    h.push_str("<h2>Variants</h2><table><tr><th>variant</th><th>users</th><th>expected share</th><th>observed share</th></tr>");
    let total: u64 = r.variants.iter().map(|v| v.users).sum();
    for v in &r.variants {
        let _ = write!(
            h,
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape_html(&v.name),
            if v.control {
                " <span class=muted>(control)</span>"
            } else {
                ""
            },
            v.users,
            v.expected_share
                .map_or("–".into(), |s| format!("{:.1}%", s * 100.0)),
            if total > 0 {
                format!("{:.1}%", v.users as f64 * 100.0 / total as f64)
            } else {
                "–".into()
            }
        );
    }
    h.push_str("</table>");
    match &r.srm {
        Stat::Ok(s) => {
            let _ = write!(
                h,
                "<p>Sample ratio check: χ² = {:.2}, df = {}, p = {}{}{}</p>",
                s.chi2,
                s.df,
                p(Some(s.p_value)),
                if s.alarm {
                    " — <strong class=warn>MISMATCH</strong>"
                } else {
                    " (no mismatch)"
                },
                if !s.weights_configured {
                    " <span class=muted>(equal split assumed: no definitions)</span>"
                } else if s.by_period {
                    " <span class=muted>(each bandit period against its own weights)</span>"
                } else {
                    ""
                }
            );
        }
        Stat::Err { error } => {
            let _ = write!(
                h,
                "<p class=muted>Sample ratio check: {}</p>",
                escape_html(error)
            );
        }
    }
    for w in &r.data_quality.warnings {
        let _ = write!(h, "<p class=warn>⚠ {}</p>", escape_html(w));
    }
    if let Some(b) = &r.bandit {
        bandit_section(&mut h, b);
    }
    guardrail_sections(&mut h, r);
    // Metrics, primary first.
    let mut metrics: Vec<&MetricReport> = r.metrics.iter().collect();
    metrics.sort_by_key(|m| !m.primary);
    if metrics.is_empty() {
        h.push_str("<p class=muted>No outcome events from exposed users yet.</p>");
    }
    let level = format!("{:.0}%", (1.0 - r.settings.alpha) * 100.0);
    for m in metrics {
        metric_section(&mut h, m, &level, r.settings.target_lift);
    }
    for d in &r.segments {
        segment_section(&mut h, d);
    }
    super::extra_metrics::html(
        &mut h,
        &r.ratio_metrics,
        &r.quantile_metrics,
        r.settings.alpha,
    );
    let _ = write!(
        h,
        "<p class=muted>α = {}, power {}, target ±{:.1}%, n* = {}, min users {} · log record {} · generated at {} · \
         <a href=\"?format=json\">JSON</a></p></body></html>",
        r.settings.alpha,
        r.settings.power,
        r.settings.target_lift * 100.0,
        r.settings.n_star,
        r.settings.min_users,
        r.applied_lsn,
        super::utc(r.generated_at_ms)
    );
    h
}

/// A dimension's breakdown of the primary metric.
fn segment_section(h: &mut String, d: &SegmentReport) {
    let _ = write!(
        h,
        "<h2 id=\"segments-{dim}\">{metric} by {dim}</h2><p class=muted>Each segment analysed like the whole experiment; p-values adjusted over the dimension's segments (Holm: family-wise; BH: false discovery rate).</p>\
         <table><tr><th>segment</th><th>variant</th><th>users</th><th>relative lift</th><th>CI</th><th>p</th><th>p (Holm)</th><th>p (BH)</th></tr>",
        dim = escape_html(&d.dimension),
        metric = escape_html(&d.metric)
    );
    for row in &d.segments {
        for c in &row.comparisons {
            let (lift, ci) = match &c.relative {
                Stat::Ok(i) => (
                    pct(i.estimate),
                    format!("[{}, {}]", pct(i.ci_low), pct(i.ci_high)),
                ),
                Stat::Err { error } => ("–".into(), escape_html(error)),
            };
            let _ = write!(
                h,
                "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{lift}</td><td>{ci}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape_html(&row.value),
                if row.too_small { " <span class=warn>(too small)</span>" } else { "" },
                escape_html(&c.variant),
                row.users.get(&c.variant).copied().unwrap_or(0),
                p(c.p_value),
                p(c.p_value_holm),
                p(c.p_value_bh)
            );
        }
    }
    h.push_str("</table>");
    for w in &d.warnings {
        let _ = write!(h, "<p class=warn>⚠ {}</p>", escape_html(w));
    }
}

/// A bandit's allocation: the weights over time (chart), and per period
/// the weights, P(best), users and sample-ratio check.
fn bandit_section(h: &mut String, b: &BanditOut) {
    let _ = write!(
        h,
        "<h2 id=bandit>Bandit allocation</h2><p>Thompson sampling on <code>{}</code>: period {} since {}.{}</p>",
        escape_html(&b.metric),
        b.period,
        super::utc(b.updated_at_ms),
        if b.history.len() > 1 {
            format!(" <span class=muted>{}.</span>", escape_html(&b.note))
        } else {
            " <span class=muted>Still the configured weights: no update yet.</span>".to_owned()
        }
    );
    if let Some(svg) = weights_chart(b) {
        let _ = write!(
            h,
            "<figure class=weights-chart>{svg}<figcaption class=muted>Each variant's share of new users per allocation period.</figcaption></figure>"
        );
    }
    let variants: Vec<&String> = b.weights.keys().collect();
    h.push_str("<table><tr><th>period</th><th>since</th>");
    for v in &variants {
        let _ = write!(h, "<th>{}</th>", escape_html(v));
    }
    h.push_str("<th>SRM p</th></tr>");
    for period in &b.history {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td>",
            period.period,
            super::utc(period.started_ms)
        );
        for v in &variants {
            let w = period.weights.get(*v).copied().unwrap_or(0.0);
            let _ = write!(
                h,
                "<td>{:.1}% · {} users{}</td>",
                w * 100.0,
                period.users.get(*v).copied().unwrap_or(0),
                period.prob_best.get(*v).map_or(String::new(), |x| format!(
                    " <span class=muted>(P best {x:.2})</span>"
                ))
            );
        }
        let _ = write!(h, "<td>{}</td></tr>", p(period.srm_p_value));
    }
    h.push_str("</table>");
}

/// Draws a chart's series labels, top right.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
) -> Option<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()
        .ok()
}

/// The weights over time as a step chart (one line per variant).
pub fn weights_chart(b: &BanditOut) -> Option<String> {
    let first = b.history.first()?;
    let t0 = first.started_ms;
    let t1 = b.updated_at_ms.max(t0 + 1);
    let span_h = (t1 - t0) as f64 / 3_600_000.0;
    let (unit, scale) = if span_h < 2.0 {
        ("minutes", 60_000.0)
    } else {
        ("hours", 3_600_000.0)
    };
    let x = |t: i64| (t - t0) as f64 / scale;
    // The last period is drawn one period-length past its start.
    let last_len = if b.history.len() > 1 {
        (t1 - b.history[b.history.len() - 2].started_ms).max(1)
    } else {
        60_000
    };
    let x_max = x(t1 + last_len).max(1e-3);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 300)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption("bandit weights per period", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, 0f64..1f64)
            .ok()?;
        chart
            .configure_mesh()
            .x_desc(format!("{unit} since the first exposure"))
            .y_desc("share of new users")
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .light_line_style(TRANSPARENT)
            .draw()
            .ok()?;
        for (i, v) in b.weights.keys().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let mut pts = Vec::new();
            for (k, p) in b.history.iter().enumerate() {
                let w = p.weights.get(v).copied().unwrap_or(0.0);
                let end = b.history.get(k + 1).map_or(x_max, |n| x(n.started_ms));
                pts.push((x(p.started_ms), w));
                pts.push((end, w));
            }
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .ok()?
                .label(v.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        legend(&mut chart)?;
        root.present().ok()?;
    }
    Some(svg)
}

/// Halts, health per variant and the guardrail checks.
fn guardrail_sections(h: &mut String, r: &Report) {
    if !r.halts.is_empty() {
        h.push_str("<h2 id=halts>Halts</h2><table><tr><th>variant</th><th>state</th><th>since</th><th>by</th><th>reason</th></tr>");
        for x in &r.halts {
            let halt = &x.halt;
            let by = match x.by() {
                HaltedBy::Guardrail(rule) => {
                    format!("guardrail <code>{}</code>", escape_html(rule))
                }
                HaltedBy::Operator => "operator".to_owned(),
            };
            let state = match halt.lifted_ms {
                None => "<strong class=warn>halted</strong>".to_owned(),
                Some(t) => format!("lifted at {}", super::utc(t)),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{state}</td><td>{}</td><td>{by}</td><td style=\"text-align:left\">{}</td></tr>",
                escape_html(&halt.variant),
                super::utc(halt.time_ms),
                escape_html(&halt.message)
            );
        }
        h.push_str("</table>");
    }
    if r.health.iter().any(|x| x.requests > 0 || x.responses > 0) {
        h.push_str("<h2 id=health>Health</h2><p class=muted>Since the experiment's last lift; responses are the filters' sample.</p>\
            <table><tr><th>variant</th><th>requests</th><th>responses</th><th>5xx share</th><th>p50 ms</th><th>p95 ms</th></tr>");
        for x in &r.health {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape_html(&x.variant),
                x.requests,
                x.responses,
                x.error_rate
                    .map_or("–".into(), |e| format!("{:.2}%", e * 100.0)),
                num(x.p50_ms, 1),
                num(x.p95_ms, 1)
            );
        }
        h.push_str("</table>");
    }
    if let Some(g) = &r.guardrails {
        let _ = write!(
            h,
            "<h2 id=guardrails>Guardrails</h2><p class=muted>Always-valid checks against the control; family-wise α = {}, at least {} responses per arm for the health rules.</p>\
             <table><tr><th>variant</th><th>rule</th><th>status</th><th>estimate</th><th>interval</th><th>limit</th><th>p</th><th>detail</th></tr>",
            g.alpha, g.min_responses
        );
        for c in &g.checks {
            let _ = write!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}{}</td><td>{}</td><td>[{}, {}]</td><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
                escape_html(&c.variant),
                escape_html(&c.check.rule),
                if c.check.status == CheckStatus::Breach {
                    "<strong class=warn>breach</strong>".to_owned()
                } else {
                    c.check.status.as_str().replace('_', " ")
                },
                if c.overridden { " <span class=muted>(overridden)</span>" } else { "" },
                num(c.check.estimate, 4),
                num(c.check.ci_low, 4),
                num(c.check.ci_high, 4),
                num(Some(c.check.limit), 4),
                p(c.check.p_value),
                escape_html(&c.check.message)
            );
        }
        if g.checks.is_empty() {
            h.push_str("<tr><td colspan=8 class=muted>No checks yet.</td></tr>");
        }
        h.push_str("</table>");
    }
}

fn metric_section(h: &mut String, m: &MetricReport, level: &str, target: f64) {
    let _ = write!(
        h,
        "<h2>{}{}</h2><p class=muted>{} metric, {} is better{}</p>",
        escape_html(&m.name),
        if m.primary {
            " <small>(primary)</small>"
        } else {
            ""
        },
        m.kind,
        if m.higher_is_better {
            "higher"
        } else {
            "lower"
        },
        if m.has_covariate {
            ", with a pre-period covariate (CUPED)"
        } else {
            ""
        }
    );
    h.push_str("<table><tr><th>variant</th><th>users</th><th>converted</th><th>rate</th><th>mean per user</th><th>sd</th>");
    if m.has_covariate {
        h.push_str("<th>covariate mean</th>");
    }
    h.push_str("</tr>");
    for v in &m.variants {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            escape_html(&v.variant),
            v.users,
            v.converted,
            v.conversion_rate
                .map_or("–".into(), |r| format!("{:.2}%", r * 100.0)),
            num(v.mean, 4),
            num(v.sd, 4)
        );
        if m.has_covariate {
            let _ = write!(h, "<td>{}</td>", num(v.covariate_mean, 4));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    let _ = write!(
        h,
        "<table><tr><th>vs control</th><th>difference ({level} CI)</th><th>relative lift ({level} CI)</th><th>p</th><th>p (Holm)</th>\
         <th>always-valid interval</th><th>sequential p</th>{}<th>chance to beat</th><th>MDE</th><th>power at ±{:.1}%</th></tr>",
        if m.has_covariate { "<th>CUPED difference</th><th>variance cut</th>" } else { "" },
        target * 100.0
    );
    for c in &m.comparisons {
        comparison_row(h, m, c);
    }
    h.push_str("</table>");
    if let Some(svg) = lift_chart(m, level) {
        let _ = write!(
            h,
            "<figure class=lift-chart data-metric=\"{}\">{svg}<figcaption class=muted>Cumulative relative lift of {} among the users exposed by each time, \
             with its always-valid {level} interval (valid at every point at once, so it is safe to watch continuously). \
             The tables give the fixed-horizon intervals of the current result.{}</figcaption></figure>",
            escape_html(&m.name),
            escape_html(&m.name),
            if m.comparisons.iter().any(|c| c.cuped_adjusted) {
                " The lift is CUPED-adjusted by the users' covariate."
            } else {
                ""
            }
        );
    }
}

fn comparison_row(h: &mut String, m: &MetricReport, c: &Comparison) {
    let abs = stat_cell(&c.absolute, |i| {
        format!("{:+.4} [{:+.4}, {:+.4}]", i.estimate, i.ci_low, i.ci_high)
    });
    let interval = |i: &Interval| {
        format!(
            "{} [{}, {}]",
            pct(i.estimate),
            pct(i.ci_low),
            pct(i.ci_high)
        )
    };
    let band = |q: &SequentialOut| format!("[{}, {}]", pct(q.ci_low), pct(q.ci_high));
    let mut rel = stat_cell(&c.relative, interval);
    let mut seq = stat_cell(&c.sequential, band);
    if let Some(u) = &c.unadjusted {
        // The decision's (adjusted) figures first, the unadjusted below.
        let _ = write!(
            rel,
            " <span class=muted>CUPED-adjusted; unadjusted {}</span>",
            stat_cell(&u.relative, interval)
        );
        let _ = write!(
            seq,
            " <span class=muted>CUPED-adjusted; unadjusted {}</span>",
            stat_cell(&u.sequential, band)
        );
    }
    let seq_p = stat_cell(&c.sequential, |q| p(Some(q.p_value)));
    let _ = write!(
        h,
        "<tr><td>{}</td><td>{abs}</td><td>{rel}</td><td>{}</td><td>{}</td><td>{seq}</td><td>{seq_p}</td>",
        escape_html(&c.variant),
        p(c.p_value),
        p(c.p_value_holm)
    );
    if m.has_covariate {
        match &c.cuped {
            Some(s) => {
                let _ = write!(
                    h,
                    "<td>{}</td><td>{}</td>",
                    stat_cell(s, |x| format!(
                        "{:+.4} [{:+.4}, {:+.4}] p {}",
                        x.diff,
                        x.ci_low,
                        x.ci_high,
                        p(Some(x.p_value))
                    )),
                    stat_cell(s, |x| format!("{:.1}%", x.variance_reduction * 100.0))
                );
            }
            None => h.push_str("<td>–</td><td>–</td>"),
        }
    }
    let _ = write!(
        h,
        "<td>{}</td><td>{}</td><td>{}</td></tr>",
        stat_cell(&c.chance_to_beat_control, |x| format!("{:.1}%", x * 100.0)),
        stat_cell(&c.mde, |x| format!("{:.2}%", x.relative.abs() * 100.0)),
        stat_cell(&c.mde, |x| format!("{:.0}%", x.power_at_target * 100.0))
    );
}

/// The cumulative-lift chart of a metric (one line and two bands per
/// treatment), as an SVG document; None without points.
pub fn lift_chart(m: &MetricReport, level: &str) -> Option<String> {
    let series: Vec<(&str, &[LiftPoint])> = m
        .comparisons
        .iter()
        .filter(|c| !c.series.is_empty())
        .map(|c| (c.variant.as_str(), c.series.as_slice()))
        .collect();
    if series.is_empty() {
        return None;
    }
    let t0 = series.iter().map(|s| s.1[0].t_ms).min()?;
    let t1 = series.iter().map(|s| s.1[s.1.len() - 1].t_ms).max()?;
    let span_h = (t1 - t0) as f64 / 3_600_000.0;
    let (unit, scale) = if span_h < 2.0 {
        ("minutes", 60_000.0)
    } else {
        ("hours", 3_600_000.0)
    };
    let x = |t: i64| (t - t0) as f64 / scale;
    let x_max = x(t1).max(1.0);
    // The y range follows the later points: the first ones, on few users,
    // have intervals wide enough to flatten everything else.
    let mut lo: f64 = 0.0;
    let mut hi: f64 = 0.0;
    for (_, pts) in &series {
        let skip = pts.len() / 3;
        for pt in &pts[skip..] {
            lo = lo.min(pt.seq_low).min(pt.lift);
            hi = hi.max(pt.seq_high).max(pt.lift);
        }
        for pt in pts.iter() {
            lo = lo.min(pt.lift);
            hi = hi.max(pt.lift);
        }
    }
    let pad = ((hi - lo) * 0.08).max(0.005);
    let (lo, hi) = ((lo - pad).max(-5.0), (hi + pad).min(5.0));
    let clamp = |v: f64| v.clamp(lo, hi);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 380)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: cumulative relative lift vs control", m.name),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, lo..hi)
            .ok()?;
        chart
            .configure_mesh()
            .x_desc(format!("{unit} since the first exposure"))
            .y_desc("relative lift")
            .y_label_formatter(&|v| {
                if v.abs() < 1e-9 {
                    "0%".to_owned()
                } else {
                    format!("{:+.1}%", v * 100.0)
                }
            })
            .light_line_style(TRANSPARENT)
            .draw()
            .ok()?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (x_max, 0.0)],
                BLACK.stroke_width(1),
            ))
            .ok()?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let band =
                |low: fn(&LiftPoint) -> f64, high: fn(&LiftPoint) -> f64| -> Vec<(f64, f64)> {
                    let mut v: Vec<(f64, f64)> =
                        pts.iter().map(|p| (x(p.t_ms), clamp(high(p)))).collect();
                    v.extend(pts.iter().rev().map(|p| (x(p.t_ms), clamp(low(p)))));
                    v
                };
            chart
                .draw_series(std::iter::once(Polygon::new(
                    band(|p| p.seq_low, |p| p.seq_high),
                    color.mix(0.18).filled(),
                )))
                .ok()?;
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|p| (x(p.t_ms), clamp(p.lift))),
                    color.stroke_width(2),
                ))
                .ok()?
                .label(format!("{name} (band: always-valid {level} interval)"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        legend(&mut chart)?;
        root.present().ok()?;
    }
    Some(svg)
}

/// The list of experiments.
pub fn list_page(entries: &[ListEntry]) -> String {
    let mut h = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>abmesh experiments</title><style>{STYLE}</style></head><body>\
         <h1>Experiments</h1><table><tr><th>experiment</th><th>users per variant</th><th>metrics</th><th>decision</th><th>reason</th></tr>"
    );
    for e in entries {
        let users: Vec<String> = e
            .variants
            .iter()
            .map(|v| {
                if e.halted.contains(&v.name) {
                    format!(
                        "{} {} <strong class=warn>(halted)</strong>",
                        escape_html(&v.name),
                        v.users
                    )
                } else {
                    format!("{} {}", escape_html(&v.name), v.users)
                }
            })
            .collect();
        let _ = write!(
            h,
            "<tr><td><a href=\"/admin/experiments/{name_url}?format=html\">{name}</a></td><td>{}</td><td>{}</td>\
             <td class=\"{kind}\"><strong>{kind}</strong></td><td style=\"text-align:left\">{}</td></tr>",
            users.join(" · "),
            escape_html(&e.metrics.join(", ")),
            escape_html(&e.reason),
            name = escape_html(&e.name),
            name_url = escape_html(&e.name),
            kind = e.decision.as_str(),
        );
    }
    if entries.is_empty() {
        h.push_str("<tr><td colspan=5 class=muted>No experiments yet: none defined, and no exposures received.</td></tr>");
    }
    h.push_str("</table></body></html>");
    h
}
