//! Bandit experiments: their allocation periods, the records that start a
//! new period, and the numbers the adaptive analysis stratifies by.
//!
//! An experiment with `bandit` in its definition starts in period 0, the
//! configured weights, when its first exposures arrive. Every
//! `update_every_s` the sidecar's bandit task ([`due_updates`]) computes the
//! next period's weights from the aggregates and appends them as a
//! [`crate::RecordKind::Bandit`] record; applying the record ([`apply`])
//! starts the period. So a period is state like a halt: decided at a point
//! of the log, replayed identically after a restart, and the same on every
//! replica of a replicated log. Replicas that race to append the same
//! period are harmless: a record for any period but the next is a no-op.
//!
//! The weights reach the filters in the answer to their exposure batches
//! ([`allocations`]); the filters tag each exposure with the period that
//! assigned it, and each user counts in the period of their first exposure
//! (`VariantAgg::periods`).
//!
//! How the weights are computed (abmesh-stats' `bandit` module):
//! * the control keeps its configured share;
//! * the other variants share the rest in proportion to the posterior
//!   probability that each is the best (Beta posterior for a conversion
//!   metric, normal for a value metric), each keeping at least the explore
//!   floor;
//! * a halted variant gets no traffic (a halt wins over the bandit), and
//!   its share goes to the other non-control variants;
//! * no update happens until the control and every variant still running
//!   have `min_users_per_variant` users.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::definitions::Defined;
use super::sums::Aggregates;
pub use super::sums::{BanditHistory, BanditPeriod};
use abmesh_stats::{bandit_weights, prob_best, PeriodCounts, Posterior};

/// A [`crate::RecordKind::Bandit`] record: the weights of the next period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanditRecord {
    pub experiment: String,
    pub period: u32,
    /// Share per variant; every variant of the definition is named.
    pub weights: BTreeMap<String, f64>,
    /// P(best) of the variants the bandit chose between.
    #[serde(default)]
    pub prob_best: BTreeMap<String, f64>,
    pub updated_at_ms: i64,
}

/// The allocation of one bandit experiment, as the answer to an exposure
/// batch carries it (`"allocations": [...]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AllocationOut {
    pub experiment: String,
    pub period: u32,
    pub weights: BTreeMap<String, f64>,
}

/// The configured weights of a definition, as shares.
fn configured_shares(def: &Defined) -> Vec<f64> {
    let total: f64 = def.weights.iter().sum();
    def.weights.iter().map(|w| w / total).collect()
}

/// Starts period 0 of every defined bandit experiment that has users and
/// no history yet.
pub(super) fn start_periods(agg: &mut Aggregates, time_ms: i64, lsn: u64) {
    let Some(defs) = agg.definitions.clone() else {
        return;
    };
    for def in defs.experiments().iter().filter(|d| d.bandit.is_some()) {
        if agg.bandits.contains_key(&def.name) {
            continue;
        }
        let has_users = agg
            .experiment(&def.name)
            .is_some_and(|e| e.cells.iter().any(|c| c.total.users > 0));
        if has_users {
            agg.bandits.insert(
                def.name.clone(),
                BanditHistory {
                    periods: vec![BanditPeriod {
                        period: 0,
                        variants: def.variants.clone(),
                        weights: configured_shares(def),
                        started_ms: time_ms,
                        prob_best: Vec::new(),
                        lsn,
                    }],
                },
            );
        }
    }
}

/// Why a bandit record was not applied (it is then a no-op).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BanditRefusal {
    #[error("{0:?} is not a bandit experiment of the current definitions")]
    NotABandit(String),
    #[error("{experiment:?} has not started (no exposures yet)")]
    NotStarted { experiment: String },
    #[error(
        "{experiment:?} is in period {current}; a record for period {got} is not the next one"
    )]
    NotNext {
        experiment: String,
        current: u32,
        got: u32,
    },
    #[error("the weights of {experiment:?} must name exactly its variants, each with a finite share ≥ 0, summing to more than 0")]
    BadWeights { experiment: String },
}

/// Applies a bandit record: starts its period if it is the next one.
pub(super) fn apply(
    agg: &mut Aggregates,
    rec: &BanditRecord,
    lsn: u64,
) -> Result<BanditPeriod, BanditRefusal> {
    let def = agg
        .defined(&rec.experiment)
        .filter(|d| d.bandit.is_some())
        .cloned()
        .ok_or_else(|| BanditRefusal::NotABandit(rec.experiment.clone()))?;
    let history =
        agg.bandits
            .get_mut(&rec.experiment)
            .ok_or_else(|| BanditRefusal::NotStarted {
                experiment: rec.experiment.clone(),
            })?;
    let current = history.current().map_or(0, |p| p.period);
    if rec.period != current + 1 {
        return Err(BanditRefusal::NotNext {
            experiment: rec.experiment.clone(),
            current,
            got: rec.period,
        });
    }
    let bad = || BanditRefusal::BadWeights {
        experiment: rec.experiment.clone(),
    };
    if rec.weights.len() != def.variants.len() {
        return Err(bad());
    }
    let weights = def
        .variants
        .iter()
        .map(|v| {
            rec.weights
                .get(v)
                .copied()
                .filter(|w| w.is_finite() && *w >= 0.0)
        })
        .collect::<Option<Vec<f64>>>()
        .ok_or_else(bad)?;
    let total: f64 = weights.iter().sum();
    if total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return Err(bad());
    }
    let period = BanditPeriod {
        period: rec.period,
        variants: def.variants.clone(),
        weights: weights.iter().map(|w| w / total).collect(),
        started_ms: rec.updated_at_ms,
        prob_best: def
            .variants
            .iter()
            .map(|v| rec.prob_best.get(v).copied())
            .collect(),
        lsn,
    };
    history.periods.push(period.clone());
    Ok(period)
}

/// The current allocation of every bandit experiment past period 0, for
/// the answer to an exposure batch.
pub fn allocations(agg: &Aggregates) -> Vec<AllocationOut> {
    agg.bandits
        .iter()
        .filter_map(|(name, h)| {
            let p = h.current().filter(|p| p.period > 0)?;
            Some(AllocationOut {
                experiment: name.clone(),
                period: p.period,
                weights: p.variants.iter().cloned().zip(p.weights.clone()).collect(),
            })
        })
        .collect()
}

/// The next period of every bandit experiment that is due at `now_ms`:
/// its period has lasted `update_every_s`, and the control and every
/// variant still running have `min_users_per_variant` users. What the
/// sidecar's bandit task appends.
pub fn due_updates(agg: &Aggregates, now_ms: i64) -> Vec<BanditRecord> {
    due(agg, now_ms)
        .into_iter()
        .filter_map(PendingUpdate::compute)
        .collect()
}

/// What the next period of a due experiment is computed from, taken under
/// the aggregates' lock ([`due`]); [`PendingUpdate::compute`] does the
/// quadrature after the lock is released, so ingestion never waits on it.
#[derive(Debug, Clone)]
pub struct PendingUpdate {
    experiment: String,
    period: u32,
    variants: Vec<String>,
    control: usize,
    control_share: f64,
    floor: f64,
    /// The running non-control variants (indexes into `variants`) and
    /// their posteriors.
    running: Vec<usize>,
    posteriors: Vec<Posterior>,
    now_ms: i64,
}

/// The experiments whose next period is due at `now_ms` (cheap: no
/// quadrature).
pub fn due(agg: &Aggregates, now_ms: i64) -> Vec<PendingUpdate> {
    let Some(defs) = agg.definitions.as_ref() else {
        return Vec::new();
    };
    defs.experiments()
        .iter()
        .filter_map(|def| next_period(agg, def, now_ms))
        .collect()
}

impl PendingUpdate {
    /// The next period's record: P(best) by quadrature, then the shares.
    pub fn compute(self) -> Option<BanditRecord> {
        let probs = prob_best(&self.posteriors, true).ok()?;
        let shares = bandit_weights(1.0 - self.control_share, self.floor, &probs).ok()?;
        let mut weights: BTreeMap<String, f64> =
            self.variants.iter().map(|v| (v.clone(), 0.0)).collect();
        weights.insert(self.variants[self.control].clone(), self.control_share);
        let mut prob = BTreeMap::new();
        for ((&i, w), p) in self.running.iter().zip(shares).zip(probs) {
            weights.insert(self.variants[i].clone(), w);
            prob.insert(self.variants[i].clone(), p);
        }
        Some(BanditRecord {
            experiment: self.experiment,
            period: self.period,
            weights,
            prob_best: prob,
            updated_at_ms: self.now_ms,
        })
    }
}

fn next_period(agg: &Aggregates, def: &Defined, now_ms: i64) -> Option<PendingUpdate> {
    let cfg = def.bandit.as_ref()?;
    let current = agg.bandits.get(&def.name)?.current()?;
    let every_ms = i64::try_from(cfg.update_every_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    if now_ms < current.started_ms.saturating_add(every_ms) {
        return None;
    }
    let e = agg.experiment(&def.name)?;
    let halted = |v: &str| agg.guard.active(&def.name, v).is_some();
    let users = |v: &str| {
        e.variant_index(v)
            .map_or(0, |i| e.cells[i].total.users.max(0) as u64)
    };
    let running: Vec<usize> = (0..def.variants.len())
        .filter(|&i| i != def.control && !halted(&def.variants[i]))
        .collect();
    if running.is_empty()
        || std::iter::once(def.control)
            .chain(running.iter().copied())
            .any(|i| users(&def.variants[i]) < cfg.min_users_per_variant)
    {
        return None;
    }
    let metric = agg.metric_index.get(&cfg.metric).copied();
    let conversion = metric.is_none_or(|m| agg.metrics[m as usize].is_conversion());
    let posteriors: Vec<Posterior> = running
        .iter()
        .map(|&i| {
            let v = &def.variants[i];
            let n = users(v);
            let sums = metric
                .and_then(|m| e.slot_of(m))
                .zip(e.variant_index(v))
                .map(|(slot, vi)| e.cells[vi].total.metric(slot))
                .unwrap_or_default();
            if conversion {
                Posterior::conversion(n, sums.converted.max(0) as u64)
            } else {
                let nf = n as f64;
                let mean = sums.y.value() / nf;
                let var = ((sums.y2.value() - nf * mean * mean) / (nf - 1.0)).max(0.0);
                // A variance of exactly 0 (every user the same value)
                // would make the posterior a point; keep it a narrow one.
                let se = (var / nf).sqrt().max(1e-9 * mean.abs()).max(1e-12);
                Posterior::Normal { mean, se }
            }
        })
        .collect();
    Some(PendingUpdate {
        experiment: def.name.clone(),
        period: current.period + 1,
        variants: def.variants.clone(),
        control: def.control,
        control_share: configured_shares(def)[def.control],
        floor: cfg.explore_floor_percent / 100.0,
        running,
        posteriors,
        now_ms,
    })
}

/// Users per variant (the definition's order) in each period of a bandit
/// experiment, with that period's weights: the sample-ratio check of an
/// adaptive experiment. Halted variants are left out (their users go to
/// the control), as in the fixed-split check.
pub fn period_counts(agg: &Aggregates, def: &Defined) -> Vec<PeriodCounts> {
    let (Some(h), Some(e)) = (agg.bandits.get(&def.name), agg.experiment(&def.name)) else {
        return Vec::new();
    };
    let per_variant: Vec<Option<Vec<(u32, i64)>>> = def
        .variants
        .iter()
        .map(|v| {
            e.variant_index(v).map(|i| {
                e.cells[i]
                    .by_period()
                    .into_iter()
                    .map(|(p, c)| (p, c.users))
                    .collect()
            })
        })
        .collect();
    h.periods
        .iter()
        .map(|p| {
            let mut observed = Vec::new();
            let mut weights = Vec::new();
            for (v, cells) in def.variants.iter().zip(&per_variant) {
                if agg.guard.active(&def.name, v).is_some() {
                    continue;
                }
                let n = cells
                    .as_ref()
                    .and_then(|c| c.iter().find(|(q, _)| *q == p.period))
                    .map_or(0, |(_, n)| (*n).max(0) as u64);
                observed.push(n);
                weights.push(h.weight(p.period, v).unwrap_or(0.0));
            }
            PeriodCounts { observed, weights }
        })
        .collect()
}

/// `period` of experiment id `exp` if this state started it (0 always is);
/// `None` for a period the log never started.
pub(super) fn known_period(agg: &Aggregates, exp: u32, period: u32) -> Option<u32> {
    if period == 0 {
        return Some(0);
    }
    let name = &agg.experiments.get(exp as usize)?.name;
    agg.bandits
        .get(name)?
        .periods
        .iter()
        .any(|p| p.period == period)
        .then_some(period)
}

/// The filter's allocation for definition `index` in a started `period`
/// (None if the period's weights no longer fit the definition).
pub(super) fn allocation(
    agg: &Aggregates,
    defs: &super::definitions::Definitions,
    index: usize,
    period: u32,
) -> Option<abmesh_filter::Allocation> {
    let h = agg.bandits.get(&defs.experiments()[index].name)?;
    let p = h.periods.iter().find(|x| x.period == period)?;
    let w: Vec<(String, f64)> = p
        .variants
        .iter()
        .cloned()
        .zip(p.weights.iter().copied())
        .collect();
    defs.allocation(index, period, &w)
}
