//! Reading the declared (ratio and quantile) metrics out of the
//! aggregates, for reports and guardrails.

use super::derived::DerivedData;
use super::sums::Aggregates;
use abmesh_filter::config::MetricKind;

/// The declared metrics of experiment `name`, per variant.
pub fn extract(agg: &Aggregates, name: &str) -> Vec<DerivedData> {
    let Some(&exp) = agg.exp_index.get(name) else {
        return Vec::new();
    };
    let variants = agg.experiments[exp as usize].variants.len() as u16;
    let d = &agg.derived;
    d.declared
        .iter()
        .filter_map(|def| match def.kind {
            MetricKind::Ratio => {
                let (n, dn) = (def.numerator.as_deref()?, def.denominator.as_deref()?);
                Some(DerivedData::Ratio {
                    def: def.clone(),
                    sums: (0..variants).map(|v| d.ratio_sums(exp, v, n, dn)).collect(),
                })
            }
            MetricKind::Quantile => {
                let id = agg.metric_index.get(def.metric.as_deref()?).copied();
                Some(DerivedData::Quantile {
                    def: def.clone(),
                    buckets: (0..variants).map(|v| d.histogram(exp, v, id)).collect(),
                })
            }
        })
        .collect()
}

/// A declared metric of one variant as the guardrails read it (`None`: the
/// name is not a declared metric; `Some(None)`: no usable data yet).
pub fn guardrail_data(
    agg: &Aggregates,
    experiment: &str,
    variant: &str,
    metric: &str,
) -> Option<Option<abmesh_stats::guardrail::MetricData>> {
    use abmesh_stats::guardrail::MetricData;
    let def = agg.derived.declared.iter().find(|d| d.name == metric)?;
    let data = (|| {
        let &exp = agg.exp_index.get(experiment)?;
        let v = agg.experiments[exp as usize].variant_index(variant)? as u16;
        match def.kind {
            MetricKind::Ratio => {
                let s = agg.derived.ratio_sums(
                    exp,
                    v,
                    def.numerator.as_deref()?,
                    def.denominator.as_deref()?,
                );
                s.moments("variant").ok().map(MetricData::Ratio)
            }
            MetricKind::Quantile => {
                let id = agg.metric_index.get(def.metric.as_deref()?).copied();
                let h = agg.derived.histogram(exp, v, id).to_histogram().ok()?;
                let e = abmesh_stats::quantile_se(&h, def.quantile?, "variant").ok()?;
                Some(MetricData::Quantile {
                    n: h.total(),
                    quantile: e.quantile,
                    se: e.se,
                })
            }
        }
    })();
    Some(data)
}
