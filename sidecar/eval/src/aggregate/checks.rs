//! The guardrail checks of an experiment, computed from the aggregates:
//! the health of its variants and its metric data, put to the rules of
//! `abmesh_stats::guardrail`. The engine runs them after every fresh
//! exposure batch (a breach halts the variant, [`super::guard`]); reports
//! show them.

use super::definitions::Defined;
use super::guard::Checks;
use super::sums::Aggregates;
use abmesh_stats::guardrail::{self, Check, CheckStatus, Health, MetricData};
use abmesh_stats::Moments;

/// The health of every defined variant, in definition order.
pub fn defined_health(agg: &Aggregates, def: &Defined) -> Vec<Health> {
    let e = agg.experiment(&def.name);
    def.variants
        .iter()
        .map(|v| {
            e.and_then(|e| e.variant_index(v).map(|i| e.cells[i].health.clone()))
                .unwrap_or_default()
        })
        .collect()
}

/// A metric of one variant as the guardrails read it: conversions for a
/// conversion metric, moments of the per-user totals for a value metric,
/// the delta method's moments for a declared ratio, the quantile and its
/// standard error for a declared quantile (a declared name wins over an
/// outcome metric of the same name).
fn metric_data(
    agg: &Aggregates,
    experiment: &str,
    variant: &str,
    metric: &str,
) -> Option<MetricData> {
    if let Some(d) = super::declared::guardrail_data(agg, experiment, variant, metric) {
        return d;
    }
    let e = agg.experiment(experiment)?;
    let id = *agg.metric_index.get(metric)?;
    let slot = e.slot_of(id)?;
    let cell = &e.cells[e.variant_index(variant)?].total;
    let n = cell.users.max(0) as u64;
    let sums = cell.metric(slot);
    if agg.metrics[id as usize].is_conversion() {
        Some(MetricData::Conversion {
            n,
            converted: (sums.converted.max(0) as u64).min(n),
        })
    } else {
        Moments::from_sums(n, sums.y.value(), sums.y2.value())
            .ok()
            .map(MetricData::Value)
    }
}

/// The guardrail checks of an experiment now (None: it is not defined or
/// has no guardrails).
pub fn checks(agg: &Aggregates, experiment: &str) -> Option<Checks> {
    let def = agg.defined(experiment)?;
    let cfg = def.guardrails.as_ref()?;
    let health = defined_health(agg, def);
    let metric =
        |name: &str, v: usize| metric_data(agg, experiment, def.variants.get(v)?.as_str(), name);
    let checks = guardrail::evaluate(cfg, def.control, &health, &metric);
    Some(Checks {
        variants: def.variants.clone(),
        control: def.control,
        checks,
    })
}

/// Whether a check halts its variant.
pub fn breaches(c: &Check) -> bool {
    c.status == CheckStatus::Breach
}
