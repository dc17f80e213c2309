//! Segmented results: the primary metric's comparisons within each value
//! of each segment dimension (from the `segments` of outcome events, see
//! `crate::aggregate::segments`), with the p-values adjusted across the
//! dimension's segments (Holm for the family-wise error rate, and
//! Benjamini–Hochberg for the false discovery rate), and a warning for
//! segments too small to say anything.
//!
//! Each segment is analysed exactly like the whole experiment (same tests,
//! CUPED, per-period estimates for a bandit), on its users only: the
//! segment's data goes through [`super::model::metric_report`].

use std::collections::BTreeMap;

use super::data::ExperimentData;
use super::model::{metric_report, SegmentComparison, SegmentReport, SegmentRow};
use super::settings::Settings;
use abmesh_stats::{benjamini_hochberg, holm};

/// Every dimension's breakdown of the primary metric.
pub fn segment_reports(
    data: &ExperimentData,
    control: usize,
    primary: Option<&str>,
    settings: &Settings,
) -> Vec<SegmentReport> {
    let Some(primary) = primary else {
        return Vec::new();
    };
    let Some(mi) = data.metrics.iter().position(|m| m.info.name == primary) else {
        return Vec::new();
    };
    let mut dims: Vec<&str> = data.segments.iter().map(|s| s.dimension.as_str()).collect();
    dims.dedup();
    dims.into_iter()
        .map(|dim| dimension_report(data, control, mi, dim, settings))
        .collect()
}

fn dimension_report(
    data: &ExperimentData,
    control: usize,
    mi: usize,
    dim: &str,
    s: &Settings,
) -> SegmentReport {
    let mut rows: Vec<SegmentRow> = data
        .segments
        .iter()
        .filter(|seg| seg.dimension == dim)
        .map(|seg| {
            // The experiment as if it had only this segment's users.
            let mut sub = data.clone();
            sub.users = seg.users.clone();
            for (m, sums) in sub.metrics.iter_mut().zip(&seg.sums) {
                m.sums = sums.clone();
            }
            sub.series = Vec::new();
            sub.segments = Vec::new();
            // Per-period cells are not kept per segment: a bandit's
            // segments are compared pooled, which the warning says.
            sub.bandit = None;
            let report = metric_report(&sub, mi, &sub.metrics[mi], control, true, s);
            let users: BTreeMap<String, u64> = data
                .variants
                .iter()
                .cloned()
                .zip(seg.users.iter().map(|&u| u.max(0) as u64))
                .collect();
            SegmentRow {
                value: seg.value.clone(),
                too_small: seg.users.iter().any(|&u| u < s.min_users as i64),
                users,
                comparisons: report
                    .comparisons
                    .into_iter()
                    .map(|c| SegmentComparison {
                        variant: c.variant,
                        test: c.test,
                        absolute: c.absolute,
                        relative: c.relative,
                        p_value: c.p_value,
                        p_value_holm: None,
                        p_value_bh: None,
                    })
                    .collect(),
            }
        })
        .collect();
    // Adjust over every comparison of the dimension that has a p-value.
    let found: Vec<(usize, usize, f64)> = rows
        .iter()
        .enumerate()
        .flat_map(|(r, row)| {
            row.comparisons
                .iter()
                .enumerate()
                .filter_map(move |(c, x)| Some((r, c, x.p_value?)))
        })
        .collect();
    let ps: Vec<f64> = found.iter().map(|x| x.2).collect();
    if let (Ok(h), Ok(b)) = (holm(&ps), benjamini_hochberg(&ps)) {
        for (k, &(r, c, _)) in found.iter().enumerate() {
            rows[r].comparisons[c].p_value_holm = Some(h[k]);
            rows[r].comparisons[c].p_value_bh = Some(b[k]);
        }
    }
    let small = rows.iter().filter(|r| r.too_small).count();
    let mut warnings = Vec::new();
    if small > 0 {
        warnings.push(format!(
            "{small} of {} segments of {dim:?} have fewer than {} users in some variant: too small to say anything, whatever their lifts",
            rows.len(),
            s.min_users
        ));
    }
    if data
        .bandit
        .as_ref()
        .is_some_and(|b| b.history.periods.len() > 1)
    {
        warnings.push(format!(
            "the experiment is adaptive: segments of {dim:?} are compared pooled over its allocation periods, which is biased if the outcome drifted while the weights changed"
        ));
    }
    SegmentReport {
        dimension: dim.to_owned(),
        metric: data.metrics[mi].info.name.clone(),
        segments: rows,
        warnings,
    }
}
