//! What a report needs from the aggregates, copied out under the lock.
//!
//! The copy is O(variants × metrics × chart points) plus one pass over the
//! experiment's time buckets to form the cumulative points; it never
//! depends on the number of events or users, which is what keeps a report
//! within milliseconds at any volume.

use crate::aggregate::bandit::BanditHistory;
use crate::aggregate::checks;
use crate::aggregate::guard::Checks;
use crate::aggregate::{
    Aggregates, Cell, Counters, Defined, Halt, MetricInfo, MetricSums, LEVEL_MS,
};
use abmesh_stats::guardrail::Health;

/// Most points on a cumulative chart.
pub const MAX_POINTS: usize = 48;

/// Most buckets scanned per variant: the finest level of
/// [`LEVEL_MS`] whose buckets over the experiment's span stay under this is
/// used (minutes up to ~1 day, hours up to ~2 months, then days).
pub const MAX_SCANNED: i64 = 1500;

/// One experiment's statistics, detached from the lock.
#[derive(Debug, Clone)]
pub struct ExperimentData {
    pub name: String,
    pub variants: Vec<String>,
    /// Users per variant.
    pub users: Vec<i64>,
    pub definition: Option<Defined>,
    /// Metrics seen in this experiment, sorted by name.
    pub metrics: Vec<MetricData>,
    /// Cumulative points, oldest first (empty without exposures).
    pub series: Vec<SeriesPoint>,
    pub exposure_rows: u64,
    pub mismatches: u64,
    pub conflicts: u64,
    pub counters: Counters,
    pub applied_lsn: u64,
    /// Whether the definitions were learned from a filter's configuration.
    pub learned: bool,
    /// Per variant (same order as `variants`), since the last lift.
    pub health: Vec<Health>,
    /// The experiment's halts, current and lifted, oldest first.
    pub halts: Vec<Halt>,
    /// The guardrail checks now (None: no guardrails defined).
    pub checks: Option<Checks>,
    /// (variant, rule) pairs an operator overrode.
    pub overrides: Vec<(String, String)>,
    /// A bandit experiment's periods and per-period statistics (None: not
    /// a bandit, or not started).
    pub bandit: Option<BanditData>,
    /// The experiment's users by segment (dimension, value), sorted.
    pub segments: Vec<SegmentData>,
    /// The declared ratio and quantile metrics, per variant.
    pub derived: Vec<crate::aggregate::derived::DerivedData>,
}

/// The users of one segment value.
#[derive(Debug, Clone)]
pub struct SegmentData {
    pub dimension: String,
    pub value: String,
    /// Per variant, in `ExperimentData::variants` order.
    pub users: Vec<i64>,
    /// `[metric][variant]`, metrics in `ExperimentData::metrics` order.
    pub sums: Vec<Vec<MetricSums>>,
}

/// A bandit experiment's allocation periods and what each period's users
/// did, for the adaptive analysis.
#[derive(Debug, Clone)]
pub struct BanditData {
    pub history: BanditHistory,
    /// Per period of `history` (same order).
    pub periods: Vec<PeriodData>,
}

/// The users whose first exposure was in one period.
#[derive(Debug, Clone)]
pub struct PeriodData {
    pub period: u32,
    /// Per variant, in `ExperimentData::variants` order.
    pub users: Vec<i64>,
    /// `[metric][variant]`, metrics in `ExperimentData::metrics` order.
    pub sums: Vec<Vec<MetricSums>>,
}

/// One metric: totals per variant.
#[derive(Debug, Clone)]
pub struct MetricData {
    pub info: MetricInfo,
    /// Per variant, in `ExperimentData::variants` order.
    pub sums: Vec<MetricSums>,
}

/// The cumulative state at the end of a time bucket: users exposed by
/// `t_ms`, with all their outcomes so far.
#[derive(Debug, Clone)]
pub struct SeriesPoint {
    /// End of the last bucket included (Unix ms, exclusive).
    pub t_ms: i64,
    pub users: Vec<i64>,
    /// `[metric][variant]`, metrics in `ExperimentData::metrics` order.
    pub sums: Vec<Vec<MetricSums>>,
}

/// Names of the experiments known, in registration order.
pub fn experiment_names(agg: &Aggregates) -> Vec<String> {
    agg.experiments.iter().map(|e| e.name.clone()).collect()
}

/// Copies one experiment out of the aggregates; `series` says whether to
/// build the cumulative points.
pub fn extract(agg: &Aggregates, name: &str, series: bool) -> Option<ExperimentData> {
    let e = agg.experiment(name)?;
    // Metrics in name order, as (slot, info).
    let mut metrics: Vec<(usize, &MetricInfo)> = e
        .metric_slots
        .iter()
        .enumerate()
        .map(|(slot, &id)| (slot, &agg.metrics[id as usize]))
        .collect();
    metrics.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    let metric_data = metrics
        .iter()
        .map(|(slot, info)| MetricData {
            info: (*info).clone(),
            sums: e.cells.iter().map(|c| c.total.metric(*slot)).collect(),
        })
        .collect();
    let bandit = agg.bandits.get(name).map(|h| {
        let per_variant: Vec<Vec<(u32, Cell)>> = e.cells.iter().map(|c| c.by_period()).collect();
        let periods = h
            .periods
            .iter()
            .map(|p| {
                let cell = |v: usize| {
                    per_variant[v]
                        .iter()
                        .find(|(q, _)| *q == p.period)
                        .map(|(_, c)| c)
                };
                PeriodData {
                    period: p.period,
                    users: (0..e.cells.len())
                        .map(|v| cell(v).map_or(0, |c| c.users))
                        .collect(),
                    sums: metrics
                        .iter()
                        .map(|(slot, _)| {
                            (0..e.cells.len())
                                .map(|v| cell(v).map(|c| c.metric(*slot)).unwrap_or_default())
                                .collect()
                        })
                        .collect(),
                }
            })
            .collect();
        BanditData {
            history: h.clone(),
            periods,
        }
    });
    let mut segments: Vec<SegmentData> = e
        .segments
        .iter()
        .map(|(&(d, v), cells)| {
            let cell = |i: usize| cells.get(i).cloned().unwrap_or_default();
            SegmentData {
                dimension: agg.segments.dimensions[d as usize].name.clone(),
                value: agg.segments.value(d, v).to_owned(),
                users: (0..e.cells.len()).map(|i| cell(i).users).collect(),
                sums: metrics
                    .iter()
                    .map(|(slot, _)| (0..e.cells.len()).map(|i| cell(i).metric(*slot)).collect())
                    .collect(),
            }
        })
        .filter(|s| s.users.iter().any(|&u| u > 0))
        .collect();
    segments.sort_by(|a, b| (&a.dimension, &a.value).cmp(&(&b.dimension, &b.value)));
    let points = if series {
        cumulative(e.cells.iter().map(|c| &c.levels).collect(), &metrics)
    } else {
        Vec::new()
    };
    Some(ExperimentData {
        name: e.name.clone(),
        variants: e.variants.clone(),
        users: e.cells.iter().map(|c| c.total.users).collect(),
        definition: agg.defined(name).cloned(),
        metrics: metric_data,
        series: points,
        exposure_rows: e.exposure_rows,
        mismatches: e.mismatches,
        conflicts: e.conflicts,
        counters: agg.counters.clone(),
        applied_lsn: agg.applied_lsn,
        learned: agg.learned,
        health: e.cells.iter().map(|c| c.health.clone()).collect(),
        halts: agg
            .guard
            .halts
            .iter()
            .filter(|h| h.experiment == name)
            .cloned()
            .collect(),
        checks: checks::checks(agg, name),
        overrides: agg
            .guard
            .overrides
            .iter()
            .filter(|(x, _, _)| x == name)
            .map(|(_, v, r)| (v.clone(), r.clone()))
            .collect(),
        bandit,
        segments,
        derived: crate::aggregate::declared::extract(agg, name),
    })
}

type Levels = [std::collections::BTreeMap<i64, Cell>; 3];

/// Prefix sums of every variant's buckets at up to [`MAX_POINTS`] evenly
/// spaced bucket boundaries, on the finest level that keeps the scan under
/// [`MAX_SCANNED`] buckets.
fn cumulative(per_variant: Vec<&Levels>, metrics: &[(usize, &MetricInfo)]) -> Vec<SeriesPoint> {
    let first = per_variant
        .iter()
        .filter_map(|l| l[0].keys().next())
        .min()
        .copied();
    let last = per_variant
        .iter()
        .filter_map(|l| l[0].keys().next_back())
        .max()
        .copied();
    let (Some(first), Some(last)) = (first, last) else {
        return Vec::new();
    };
    let (t_first, t_last) = (first * LEVEL_MS[0], (last + 1) * LEVEL_MS[0] - 1);
    let level = (0..LEVEL_MS.len())
        .find(|&l| t_last.div_euclid(LEVEL_MS[l]) - t_first.div_euclid(LEVEL_MS[l]) < MAX_SCANNED)
        .unwrap_or(LEVEL_MS.len() - 1);
    let width = LEVEL_MS[level];
    let (first, last) = (t_first.div_euclid(width), t_last.div_euclid(width));
    let span = (last - first + 1) as usize;
    let k = span.min(MAX_POINTS);
    // Cut i closes at bucket first + ceil((i + 1)·span/k) − 1.
    let cuts: Vec<i64> = (0..k)
        .map(|i| first + (((i + 1) * span).div_ceil(k)) as i64 - 1)
        .collect();
    let mut points: Vec<SeriesPoint> = cuts
        .iter()
        .map(|&b| SeriesPoint {
            t_ms: (b + 1) * width,
            users: vec![0; per_variant.len()],
            sums: vec![vec![MetricSums::default(); per_variant.len()]; metrics.len()],
        })
        .collect();
    for (v, levels) in per_variant.iter().enumerate() {
        let mut running = Cell::default();
        let mut it = levels[level].iter().peekable();
        for (p, &cut) in cuts.iter().enumerate() {
            while let Some((_, cell)) = it.next_if(|(b, _)| **b <= cut) {
                running.add(cell);
            }
            points[p].users[v] = running.users;
            for (m, (slot, _)) in metrics.iter().enumerate() {
                points[p].sums[m][v] = running.metric(*slot);
            }
        }
    }
    points
}
