//! The report for a terminal (`abmesh report NAME`).

use std::fmt::Write as _;

use super::model::SegmentReport;
use super::model::{pct, HaltedBy, MetricReport, Report, Stat};

fn p(x: Option<f64>) -> String {
    match x {
        Some(v) if v < 0.0001 => format!("{v:.1e}"),
        Some(v) => format!("{v:.4}"),
        None => "-".into(),
    }
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.filter(|v| v.is_finite())
        .map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// Plain text, 100 columns wide at most, no colours.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Experiment {}: {}",
        r.experiment,
        r.decision.decision.as_str().to_uppercase()
    );
    for line in wrap(&r.decision.reason, 96) {
        let _ = writeln!(o, "  {line}");
    }
    let _ = writeln!(o);
    let total: u64 = r.variants.iter().map(|v| v.users).sum();
    let _ = writeln!(
        o,
        "{:<24} {:>12} {:>10} {:>10}",
        "variant", "users", "observed", "expected"
    );
    for v in &r.variants {
        let name = if v.control {
            format!("{} (control)", v.name)
        } else {
            v.name.clone()
        };
        let _ = writeln!(
            o,
            "{:<24} {:>12} {:>10} {:>10}",
            name,
            v.users,
            if total > 0 {
                format!("{:.1}%", v.users as f64 * 100.0 / total as f64)
            } else {
                "-".into()
            },
            v.expected_share
                .map_or("-".into(), |s| format!("{:.1}%", s * 100.0))
        );
    }
    match &r.srm {
        Stat::Ok(s) => {
            let _ = writeln!(
                o,
                "sample ratio: chi2 {:.2}, p {}{}{}",
                s.chi2,
                p(Some(s.p_value)),
                if s.by_period {
                    " (each bandit period against its weights)"
                } else {
                    ""
                },
                if s.alarm { "  MISMATCH" } else { "" }
            );
        }
        Stat::Err { error } => {
            let _ = writeln!(o, "sample ratio: {error}");
        }
    }
    if let Some(b) = &r.bandit {
        let weights: Vec<String> = b
            .weights
            .iter()
            .map(|(v, w)| format!("{v} {:.1}%", w * 100.0))
            .collect();
        let _ = writeln!(
            o,
            "bandit on {}: period {} since {}, weights {}",
            b.metric,
            b.period,
            super::utc(b.updated_at_ms),
            weights.join(", ")
        );
        if b.history.len() > 1 {
            for line in wrap(&b.note, 96) {
                let _ = writeln!(o, "  {line}");
            }
        }
    }
    for w in &r.data_quality.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    guardrails(&mut o, r);
    let mut metrics: Vec<&MetricReport> = r.metrics.iter().collect();
    metrics.sort_by_key(|m| !m.primary);
    for m in metrics {
        metric(&mut o, m, r.settings.alpha);
    }
    for d in &r.segments {
        segment_table(&mut o, d);
    }
    super::extra_metrics::text(
        &mut o,
        &r.ratio_metrics,
        &r.quantile_metrics,
        r.settings.alpha,
    );
    o
}

/// A dimension's breakdown: one line per (segment, treatment).
fn segment_table(o: &mut String, d: &SegmentReport) {
    let _ = writeln!(o, "\n{} by {}", d.metric, d.dimension);
    let _ = writeln!(
        o,
        "  {:<20} {:<16} {:>10} {:>28} {:>10} {:>10}",
        "segment", "variant", "users", "relative lift [CI]", "p", "p (Holm)"
    );
    for row in &d.segments {
        for c in &row.comparisons {
            let lift = match &c.relative {
                Stat::Ok(i) => format!(
                    "{} [{}, {}]",
                    pct(i.estimate),
                    pct(i.ci_low),
                    pct(i.ci_high)
                ),
                Stat::Err { .. } => "-".into(),
            };
            let _ = writeln!(
                o,
                "  {:<20} {:<16} {:>10} {:>28} {:>10} {:>10}{}",
                row.value,
                c.variant,
                row.users.get(&c.variant).copied().unwrap_or(0),
                lift,
                p(c.p_value),
                p(c.p_value_holm),
                if row.too_small { "  too small" } else { "" }
            );
        }
    }
    for w in &d.warnings {
        let _ = writeln!(o, "  warning: {w}");
    }
}

fn metric(o: &mut String, m: &MetricReport, alpha: f64) {
    let _ = writeln!(
        o,
        "\n{}{} ({} metric, {} is better{})",
        m.name,
        if m.primary { " [primary]" } else { "" },
        m.kind,
        if m.higher_is_better {
            "higher"
        } else {
            "lower"
        },
        if m.has_covariate {
            ", CUPED covariate"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "  {:<22} {:>10} {:>10} {:>9} {:>12} {:>12}",
        "variant", "users", "converted", "rate", "mean", "sd"
    );
    for v in &m.variants {
        let _ = writeln!(
            o,
            "  {:<22} {:>10} {:>10} {:>9} {:>12} {:>12}",
            v.variant,
            v.users,
            v.converted,
            v.conversion_rate
                .map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
            opt(v.mean, 4),
            opt(v.sd, 4)
        );
    }
    let level = format!("{:.0}%", (1.0 - alpha) * 100.0);
    for c in &m.comparisons {
        let _ = writeln!(o, "  {} vs control:", c.variant);
        let adjusted = if c.cuped_adjusted {
            " CUPED-adjusted"
        } else {
            ""
        };
        match &c.relative {
            Stat::Ok(r) => {
                let _ = writeln!(
                    o,
                    "    lift {}{adjusted} ({level} CI {} to {}), {}p {} (Holm {})",
                    pct(r.estimate),
                    pct(r.ci_low),
                    pct(r.ci_high),
                    // The fixed-horizon test (Welch) is not adjusted.
                    if c.cuped_adjusted { "unadjusted " } else { "" },
                    p(c.p_value),
                    p(c.p_value_holm)
                );
            }
            Stat::Err { error } => {
                let _ = writeln!(o, "    lift{adjusted}: {error}");
            }
        }
        if let Some(u) = &c.unadjusted {
            let mut line = match &u.relative {
                Stat::Ok(r) => format!(
                    "    unadjusted lift {} ({level} CI {} to {})",
                    pct(r.estimate),
                    pct(r.ci_low),
                    pct(r.ci_high)
                ),
                Stat::Err { error } => format!("    unadjusted lift: {error}"),
            };
            if let Stat::Ok(q) = &u.sequential {
                line.push_str(&format!(
                    ", always-valid {} to {}",
                    pct(q.ci_low),
                    pct(q.ci_high)
                ));
            }
            let _ = writeln!(o, "{line}");
        }
        if let Stat::Ok(a) = &c.absolute {
            let _ = writeln!(
                o,
                "    difference {:+.5} ({level} CI {:+.5} to {:+.5})",
                a.estimate, a.ci_low, a.ci_high
            );
        }
        if let Stat::Ok(q) = &c.sequential {
            let _ = writeln!(
                o,
                "    always-valid interval{adjusted} {} to {}, sequential p {}",
                pct(q.ci_low),
                pct(q.ci_high),
                p(Some(q.p_value))
            );
        }
        if let Some(Stat::Ok(x)) = &c.cuped {
            let _ = writeln!(
                o,
                "    CUPED difference {:+.5} ({level} CI {:+.5} to {:+.5}), p {}, variance cut {:.1}%",
                x.diff,
                x.ci_low,
                x.ci_high,
                p(Some(x.p_value)),
                x.variance_reduction * 100.0
            );
        }
        if let Stat::Ok(x) = &c.chance_to_beat_control {
            let _ = writeln!(o, "    chance to beat control {:.1}%", x * 100.0);
        }
        if let Stat::Ok(x) = &c.mde {
            let _ = writeln!(
                o,
                "    MDE {:.2}% now, power {:.0}% at the target",
                x.relative.abs() * 100.0,
                x.power_at_target * 100.0
            );
        }
        if !c.series.is_empty() {
            let _ = writeln!(
                o,
                "    trend {}",
                spark(&c.series.iter().map(|p| p.lift).collect::<Vec<_>>())
            );
        }
    }
}

/// Halts, health and guardrail checks.
fn guardrails(o: &mut String, r: &Report) {
    if !r.halts.is_empty() {
        let _ = writeln!(o, "\nhalts");
        for h in &r.halts {
            let x = &h.halt;
            let who = match h.by() {
                HaltedBy::Guardrail(rule) => format!("guardrail {rule}"),
                HaltedBy::Operator => "operator".to_owned(),
            };
            let state = match x.lifted_ms {
                None => "HALTED".to_owned(),
                Some(t) => format!("lifted at {}", super::utc(t)),
            };
            let _ = writeln!(
                o,
                "  {:<22} {state}, by {who} at {}",
                x.variant,
                super::utc(x.time_ms)
            );
            for line in wrap(&x.message, 92) {
                let _ = writeln!(o, "    {line}");
            }
        }
    }
    if r.health.iter().any(|h| h.requests > 0 || h.responses > 0) {
        let _ = writeln!(o, "\nhealth (since the last lift)");
        let _ = writeln!(
            o,
            "  {:<22} {:>10} {:>10} {:>9} {:>10} {:>10}",
            "variant", "requests", "responses", "5xx", "p50 ms", "p95 ms"
        );
        for h in &r.health {
            let _ = writeln!(
                o,
                "  {:<22} {:>10} {:>10} {:>9} {:>10} {:>10}",
                h.variant,
                h.requests,
                h.responses,
                h.error_rate
                    .map_or("-".into(), |e| format!("{:.2}%", e * 100.0)),
                opt(h.p50_ms, 1),
                opt(h.p95_ms, 1)
            );
        }
    }
    if let Some(g) = &r.guardrails {
        let _ = writeln!(o, "\nguardrails (family alpha {})", g.alpha);
        for c in &g.checks {
            let _ = writeln!(
                o,
                "  {:<22} {:<20} {}{}",
                c.variant,
                c.check.rule,
                c.check.status.as_str().to_uppercase(),
                if c.overridden { " (overridden)" } else { "" }
            );
            for line in wrap(&c.check.message, 92) {
                let _ = writeln!(o, "    {line}");
            }
        }
    }
}

/// A sparkline of the cumulative lift.
fn spark(v: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = (hi - lo).max(1e-12);
    let bars: String = v
        .iter()
        .map(|x| BARS[(((x - lo) / span) * 7.0).round().clamp(0.0, 7.0) as usize])
        .collect();
    format!("{bars}  ({} → {})", pct(v[0]), pct(v[v.len() - 1]))
}

fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in s.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}
