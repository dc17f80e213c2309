//! Variant weights set by the sidecar's bandit ([`crate::config::BanditConfig`]),
//! per allocation *period*.
//!
//! The variant hash puts every user in a bucket of `[0, BUCKETS)`; each
//! variant owns a contiguous range of buckets, laid out in configuration
//! order, and a user's variant is the range their bucket falls in. A new
//! period only moves range boundaries, so a user changes variant only if a
//! boundary crossed their bucket: moving share between two adjacent
//! variants moves exactly that share of the users and nobody else, and the
//! first variant (the control, by default) keeps every one of its users as
//! long as its share is unchanged. Within a period every user keeps their
//! variant (the hash does not change), which is what makes the period's
//! exposures a randomized experiment of their own.
//!
//! Periods only go forward: weights for a period at or before the current
//! one are ignored, so an answer from a sidecar replica that lags behind
//! never rolls the weights back. Period 0 is the configured weights.
//!
//! An [`Allocation`] is sized once per plan, like [`crate::Halts`]; the
//! glue keeps one next to its halts and replaces it as a whole from each
//! answer of the sidecar that carries weights ([`crate::protocol::Reply`]).
//! Per request it is read only: one bound lookup per assignment, no
//! allocation.

use crate::decide::Decisions;
use crate::hash::BUCKETS;
use crate::plan::Plan;

/// Why a period's weights were refused by [`Allocation::set`]. The
/// allocation is then unchanged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AllocationError {
    /// No experiment has this index in the plan.
    #[error("no experiment has index {0}")]
    UnknownExperiment(usize),
    /// Only experiments with a `bandit` change weights; the others keep
    /// their configured ones for good.
    #[error("experiment {0:?} has no bandit")]
    NotABandit(Box<str>),
    /// One weight per variant, in configuration order.
    #[error("experiment {experiment:?} has {expected} variants, got {got} weights")]
    WrongLength {
        experiment: Box<str>,
        expected: usize,
        got: usize,
    },
    /// Weights are non-negative finite numbers.
    #[error("experiment {experiment:?} variant {variant:?}: weight must be a finite number >= 0, got {weight}")]
    InvalidWeight {
        experiment: Box<str>,
        variant: Box<str>,
        weight: f64,
    },
    /// At least one weight must be positive.
    #[error("experiment {0:?}: the weights add up to 0")]
    ZeroTotal(Box<str>),
}

/// Current period and variant bounds of every experiment of one plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Whether every period is 0, kept so that the per-request check is
    /// one load whatever the number of experiments.
    configured: bool,
    /// Period of each experiment's bounds (0: the configured weights).
    periods: Box<[u32]>,
    /// Index in `uppers` of each experiment's variant 0; one more entry at
    /// the end (the total), so experiment `e` is `offsets[e]..offsets[e+1]`.
    offsets: Box<[u32]>,
    /// Exclusive upper bound of each variant's buckets, cumulative in
    /// configuration order; each experiment's last one is `BUCKETS`.
    uppers: Box<[u32]>,
    /// Whether each experiment has a bandit (only those change).
    bandit: Box<[bool]>,
    /// Experiment names, for errors.
    names: Box<[Box<str>]>,
    /// Variant names in experiment order (flat like `uppers`), for errors.
    variant_names: Box<[Box<str>]>,
}

impl Allocation {
    /// The configured weights of `plan` (every experiment in period 0).
    pub fn new(plan: &Plan) -> Allocation {
        let mut offsets = Vec::with_capacity(plan.experiments.len() + 1);
        let mut uppers = Vec::new();
        let mut variant_names = Vec::new();
        for e in plan.experiments.iter() {
            offsets.push(uppers.len() as u32);
            uppers.extend(e.variants.iter().map(|v| v.upper));
            variant_names.extend(e.variants.iter().map(|v| v.name.clone()));
        }
        offsets.push(uppers.len() as u32);
        Allocation {
            configured: true,
            periods: vec![0; plan.experiments.len()].into_boxed_slice(),
            offsets: offsets.into_boxed_slice(),
            uppers: uppers.into_boxed_slice(),
            bandit: plan
                .experiments
                .iter()
                .map(|e| e.bandit.is_some())
                .collect(),
            names: plan.experiments.iter().map(|e| e.name.clone()).collect(),
            variant_names: variant_names.into_boxed_slice(),
        }
    }

    /// Whether every experiment is still in period 0 (configured weights).
    /// The per-request path then takes the plan's own bounds.
    #[inline]
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    /// The period of experiment `experiment`'s weights (0: configured, and
    /// for an index out of range).
    #[inline]
    pub fn period(&self, experiment: usize) -> u32 {
        self.periods.get(experiment).copied().unwrap_or(0)
    }

    /// The exclusive upper bounds of experiment `experiment`'s variants in
    /// the variant hash's `[0, BUCKETS)`, cumulative in configuration order
    /// (empty for an index out of range).
    pub fn uppers(&self, experiment: usize) -> &[u32] {
        match (
            self.offsets.get(experiment),
            self.offsets.get(experiment + 1),
        ) {
            (Some(&a), Some(&b)) => &self.uppers[a as usize..b as usize],
            _ => &[],
        }
    }

    /// Each variant's number of buckets (its share × `BUCKETS`), in
    /// configuration order.
    pub fn buckets(&self, experiment: usize) -> impl Iterator<Item = u32> + '_ {
        let uppers = self.uppers(experiment);
        uppers
            .iter()
            .scan(0, |lower, &u| Some(u - std::mem::replace(lower, u)))
    }

    /// The variant bucket `bucket` of the variant hash falls in. `experiment`
    /// must be in range.
    #[inline]
    pub(crate) fn variant_at(&self, experiment: usize, bucket: u32) -> usize {
        let uppers = self.uppers(experiment);
        // An empty range (weight 0) has upper == lower: never chosen.
        uppers
            .iter()
            .position(|&u| bucket < u)
            .unwrap_or(uppers.len() - 1)
    }

    /// Sets experiment `experiment`'s weights for `period`: `weights` are
    /// shares in variant order (non-negative, finite, any positive total;
    /// they are normalized). Returns `Ok(true)` when the period advanced
    /// (the weights were taken, even if they round to the same buckets),
    /// `Ok(false)` for a period at or before the current one, which is
    /// ignored so that a lagging sidecar replica cannot roll weights back.
    ///
    /// Shares become whole buckets summing to `BUCKETS` by largest
    /// remainder (the buckets left after rounding every share down go to
    /// the largest fractions, the lower index first on a tie), so each
    /// variant is within one bucket (0.01 %) of its share and the same
    /// weights always give the same bounds. Ranges stay contiguous in
    /// configuration order: see the module documentation for who moves.
    pub fn set(
        &mut self,
        experiment: usize,
        period: u32,
        weights: &[f64],
    ) -> Result<bool, AllocationError> {
        let Some(&is_bandit) = self.bandit.get(experiment) else {
            return Err(AllocationError::UnknownExperiment(experiment));
        };
        let name = || self.names[experiment].clone();
        if !is_bandit {
            return Err(AllocationError::NotABandit(name()));
        }
        let (start, end) = (
            self.offsets[experiment] as usize,
            self.offsets[experiment + 1] as usize,
        );
        if weights.len() != end - start {
            return Err(AllocationError::WrongLength {
                experiment: name(),
                expected: end - start,
                got: weights.len(),
            });
        }
        if let Some((v, &w)) = weights
            .iter()
            .enumerate()
            .find(|(_, w)| !(w.is_finite() && **w >= 0.0))
        {
            return Err(AllocationError::InvalidWeight {
                experiment: name(),
                variant: self.variant_names[start + v].clone(),
                weight: w,
            });
        }
        // Scaled by the largest first, so the sum cannot overflow.
        let max = weights.iter().copied().fold(0.0, f64::max);
        if max <= 0.0 {
            return Err(AllocationError::ZeroTotal(name()));
        }
        if period <= self.periods[experiment] {
            return Ok(false);
        }
        let buckets = largest_remainder(weights, max);
        let mut upper = 0;
        for (u, b) in self.uppers[start..end].iter_mut().zip(buckets) {
            upper += b;
            *u = upper;
        }
        debug_assert_eq!(upper, BUCKETS);
        self.periods[experiment] = period;
        self.configured = false;
        Ok(true)
    }

    /// The number of buckets of experiment `experiment` whose variant
    /// differs between `self` and `other` (allocations of the same plan):
    /// moving from one to the other moves exactly this share
    /// (`moved / BUCKETS`) of the experiment's users, since each bucket
    /// holds the same share of users.
    ///
    /// With `U_i` the cumulative upper bound of variant `i`, a bucket only
    /// changes variant if some boundary `U_i` crossed it, so the count is at
    /// most `Σ_i |U_i − U'_i|`, and it is exactly `|ΔU|` (the share moved)
    /// when only the boundary between two adjacent variants moved. It is
    /// smaller when moved boundaries overlap (a bucket crossed by two of
    /// them counts once).
    pub fn moved_buckets(&self, other: &Allocation, experiment: usize) -> u32 {
        let (a, b) = (self.uppers(experiment), other.uppers(experiment));
        if a.is_empty() || a.len() != b.len() {
            return 0;
        }
        // Walk the segments between consecutive boundaries of either
        // allocation; within one, each side's variant is constant.
        let (mut i, mut j, mut lo, mut moved) = (0, 0, 0u32, 0u32);
        while lo < BUCKETS {
            while a[i] <= lo {
                i += 1;
            }
            while b[j] <= lo {
                j += 1;
            }
            let hi = a[i].min(b[j]);
            if i != j {
                moved += hi - lo;
            }
            lo = hi;
        }
        moved
    }

    /// Experiments whose period differs from `self` to `new` (same plan),
    /// in index order.
    pub fn changed<'a>(&'a self, new: &'a Allocation) -> impl Iterator<Item = usize> + 'a {
        (0..self.periods.len()).filter(move |&e| self.period(e) != new.period(e))
    }
}

/// Whole buckets for `weights` (largest weight `max` > 0), summing to
/// `BUCKETS`: every share rounded down, then one more bucket each to the
/// largest fractional parts, the lower index first among equal ones.
fn largest_remainder(weights: &[f64], max: f64) -> Vec<u32> {
    let total: f64 = weights.iter().map(|w| w / max).sum();
    let quotas: Vec<f64> = weights
        .iter()
        .map(|w| (w / max) / total * f64::from(BUCKETS))
        .collect();
    let mut buckets: Vec<u32> = quotas
        .iter()
        .map(|q| (q.floor() as u32).min(BUCKETS))
        .collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Largest remainder first; a stable sort keeps lower indexes first.
    order.sort_by(|&x, &y| {
        let (rx, ry) = (quotas[x] - quotas[x].floor(), quotas[y] - quotas[y].floor());
        ry.total_cmp(&rx)
    });
    let sum: u32 = buckets.iter().sum();
    if sum <= BUCKETS {
        for &v in order.iter().cycle().take((BUCKETS - sum) as usize) {
            buckets[v] += 1;
        }
    } else {
        // Only reachable through rounding of the quotas: take the excess
        // back from the smallest remainders.
        let mut excess = sum - BUCKETS;
        for &v in order.iter().rev().cycle() {
            if excess == 0 {
                break;
            }
            if buckets[v] > 0 {
                buckets[v] -= 1;
                excess -= 1;
            }
        }
    }
    buckets
}

impl Plan {
    /// [`Plan::assign_user`] with the weights of `allocation` (what the
    /// filter did for this user in the allocation's periods); each
    /// exposure's period is in [`Decisions::period`].
    pub fn assign_user_with(&self, user: &[u8], allocation: &Allocation, out: &mut Decisions) {
        self.assign_user_in(user, Some(allocation), out);
    }

    /// Decides a request with the sidecar's state: the variant hash is read
    /// against `allocation`'s bounds, then halted variants' users are routed
    /// like control ([`Plan::apply_halts`]). Each exposure's period is in
    /// [`Decisions::period`]. No allocation; with every experiment in
    /// period 0 it is [`Plan::decide_with_halts`].
    pub fn decide_with(
        &self,
        req: &impl crate::RequestHeaders,
        halts: &crate::Halts,
        allocation: &Allocation,
        out: &mut Decisions,
    ) -> crate::Verdict {
        let allocation = (!allocation.is_configured()).then_some(allocation);
        let verdict = self.decide_in(req, allocation, out);
        self.apply_halts(halts, out);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_remainder_is_exact_and_deterministic() {
        assert_eq!(largest_remainder(&[1.0, 1.0, 1.0], 1.0), [3334, 3333, 3333]);
        assert_eq!(
            largest_remainder(&[0.5, 0.15, 0.35], 0.5),
            [5000, 1500, 3500]
        );
        assert_eq!(largest_remainder(&[0.0, 2.0], 2.0), [0, 10_000]);
        assert_eq!(largest_remainder(&[1e-9, 1.0], 1.0), [0, 10_000]);
        let w = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let b = largest_remainder(&w, 1.0);
        assert_eq!(b.iter().sum::<u32>(), BUCKETS);
        assert_eq!(b, [1429, 1429, 1429, 1429, 1428, 1428, 1428]);
    }
}
