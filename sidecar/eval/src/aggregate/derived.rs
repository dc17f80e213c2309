//! Derived metrics: **ratio** metrics (Σ numerator / Σ denominator over
//! users, e.g. clicks per impression) and **quantile** metrics (p50/p95/p99
//! of a per-event value such as latency), declared in the plugin
//! configuration's `metrics` ([`MetricDefinition`]) and kept per experiment
//! × variant beside the outcome metrics' sums.
//!
//! # Ratios: the delta method's sufficient statistics
//!
//! Per experiment × variant and per (numerator, denominator) pair
//! ([`RatioSums`]): exposed users n, Σm, Σm², Σd, Σd² and the cross term
//! Σm·d over users, m and d being each user's totals of the two outcome
//! metrics (0 without events). They change like the outcome sums: a user
//! exposed (or moved to an earlier exposure's variant) adds (removes) their
//! (m, d); an event moving a user's m from a to a′ changes Σm·d by
//! (a′ − a)·d, an O(1) update from the per-user totals the engine keeps.
//! They are a function of those totals alone, so a snapshot does not store
//! them: restoring rebuilds them from the users as it does every other sum,
//! a merge folds users in and updates them as it goes, and a new
//! configuration with other pairs rebuilds them from the users once
//! ([`DerivedAgg::declare`] marks them stale). Reports turn them into
//! `abmesh_stats::RatioMoments` (the `ratio` kind, delta method).
//!
//! # Quantiles: mergeable log-bucketed histograms
//!
//! A quantile is of *event* values, so the aggregate is a histogram per
//! experiment × variant × input metric ([`Buckets`]): the buckets of
//! `abmesh_stats::LogHistogram` (bucket k holds (γ^k, γ^(k+1)], γ = 1.01,
//! values ≤ 0 a point mass at 0), sparse, counts that add and subtract
//! exactly. Every user also keeps their own buckets per (scope, metric)
//! ([`UserEvents`]), so events that arrive before the user's exposure are
//! counted once it arrives, and a user moved to an earlier exposure's
//! variant takes their events along; the per-user buckets are what the
//! snapshot stores (a section at its end) and what a merge adds.
//!
//! The bucketing error: a value is known to within its bucket, a factor
//! 1.01, and the quantile is interpolated linearly inside the bucket, so a
//! reported quantile is off by at most 1 % and in practice by ~1e-4
//! relative (the density is close to flat over 1 % of the value). Both
//! arms are bucketed the same way, so the error of the difference is
//! smaller still. The Woodruff standard error reads the quantiles at ranks
//! ν ± z·√(ν(1 − ν)/n), whose distance is much larger than a bucket until
//! n reaches millions, so the bias stays far below the se and the
//! interval's coverage holds: `tests/derived_metrics.rs` checks 95 %
//! coverage through these histograms (see `sidecar/EVALUATION.md`).
//! Events are histogrammed only for input metrics the current definitions
//! name: declare a quantile metric before its events arrive.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::ksum::{KSum, UserValue};
use abmesh_filter::config::{MetricDefinition, MetricKind};
use abmesh_stats::quantile::DEFAULT_GROWTH;
use abmesh_stats::{Histogram, RatioMoments, StatsError};

/// Scope of an event without an experiment (the engine's `ANY`).
pub const ANY: u32 = u32::MAX;

/// Growth factor of the quantile buckets: [`DEFAULT_GROWTH`] (1 %).
pub const GROWTH: f64 = DEFAULT_GROWTH;

/// The bucket of a positive value (k with γ^k < v ≤ γ^(k+1), as
/// `LogHistogram` places it); `None` for values ≤ 0 (the point mass at 0).
pub fn bucket_of(v: f64) -> Option<i32> {
    if v.is_nan() || v <= 0.0 {
        return None;
    }
    let k = (v.min(f64::MAX).ln() / GROWTH.ln()).ceil() - 1.0;
    Some(k.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32)
}

/// Sparse counts over the log buckets of [`bucket_of`] (and the point mass
/// at 0): a histogram that adds and subtracts exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buckets {
    pub zeros: u64,
    pub counts: BTreeMap<i32, u64>,
}

impl Buckets {
    /// Counts one value.
    pub fn push(&mut self, v: f64) {
        match bucket_of(v) {
            None => self.zeros += 1,
            Some(k) => *self.counts.entry(k).or_insert(0) += 1,
        }
    }

    /// Adds (`sign` > 0) or removes the counts of `o` (removing only what
    /// was added before, so nothing goes below 0).
    pub fn add(&mut self, o: &Buckets, sign: f64) {
        if sign > 0.0 {
            self.zeros += o.zeros;
            for (&k, &c) in &o.counts {
                *self.counts.entry(k).or_insert(0) += c;
            }
        } else {
            self.zeros = self.zeros.saturating_sub(o.zeros);
            for (&k, &c) in &o.counts {
                if let Some(e) = self.counts.get_mut(&k) {
                    *e = e.saturating_sub(c);
                    if *e == 0 {
                        self.counts.remove(&k);
                    }
                }
            }
        }
    }

    /// Number of values.
    pub fn total(&self) -> u64 {
        self.counts.values().fold(self.zeros, |a, &c| a + c)
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// The dense [`Histogram`] the quantile test reads: bucket k's bounds
    /// are γ^k and γ^(k+1) (a point-mass bucket [0, 0] first when there
    /// are values ≤ 0), as `LogHistogram::to_histogram`.
    pub fn to_histogram(&self) -> Result<Histogram, StatsError> {
        let (Some((&lo, _)), Some((&hi, _))) =
            (self.counts.first_key_value(), self.counts.last_key_value())
        else {
            return Histogram::new(vec![0.0, 0.0], vec![self.zeros]);
        };
        let ln_g = GROWTH.ln();
        let edge = |k: i64| ((k as f64) * ln_g).exp().min(f64::MAX);
        let span = (i64::from(hi) - i64::from(lo)) as usize + 1;
        let mut bounds = Vec::with_capacity(span + 3);
        let mut counts = Vec::with_capacity(span + 2);
        if self.zeros > 0 {
            bounds.extend([0.0, 0.0]);
            counts.extend([self.zeros, 0]);
        }
        bounds.push(edge(i64::from(lo)));
        for k in i64::from(lo)..=i64::from(hi) {
            bounds.push(edge(k + 1));
            counts.push(self.counts.get(&(k as i32)).copied().unwrap_or(0));
        }
        Histogram::new(bounds, counts)
    }
}

/// One user's event values of one metric, in one scope (an experiment id,
/// or [`ANY`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopedBuckets {
    pub scope: u32,
    pub metric: u32,
    pub buckets: Buckets,
}

/// A user's event values of the quantile metrics' inputs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvents(pub Vec<ScopedBuckets>);

impl UserEvents {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The buckets of (scope, metric), created empty.
    pub fn entry(&mut self, scope: u32, metric: u32) -> &mut Buckets {
        let i = match self
            .0
            .iter()
            .position(|s| s.scope == scope && s.metric == metric)
        {
            Some(i) => i,
            None => {
                self.0.push(ScopedBuckets {
                    scope,
                    metric,
                    buckets: Buckets::default(),
                });
                self.0.len() - 1
            }
        };
        &mut self.0[i].buckets
    }

    /// The entries that count in experiment `exp`.
    pub fn in_experiment(&self, exp: u32) -> impl Iterator<Item = &ScopedBuckets> {
        self.0
            .iter()
            .filter(move |s| s.scope == ANY || s.scope == exp)
    }
}

/// The delta method's sums of one ratio over a variant's users.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RatioSums {
    pub n: i64,
    pub m: KSum,
    pub m2: KSum,
    pub d: KSum,
    pub d2: KSum,
    /// Σ m·d, the cross term.
    pub md: KSum,
}

impl RatioSums {
    /// Adds (`sign` 1) or removes (−1) a user with totals (m, d).
    pub fn add_user(&mut self, m: f64, d: f64, sign: f64) {
        self.n += sign as i64;
        if m != 0.0 {
            self.m.add(sign * m);
            self.m2.add(sign * m * m);
        }
        if d != 0.0 {
            self.d.add(sign * d);
            self.d2.add(sign * d * d);
        }
        if m != 0.0 && d != 0.0 {
            self.md.add(sign * m * d);
        }
    }

    /// A user's totals changed from `old` to `new` (m, d).
    pub fn change_user(&mut self, old: (f64, f64), new: (f64, f64)) {
        let (dm, dd) = (new.0 - old.0, new.1 - old.1);
        if dm != 0.0 {
            self.m.add(dm);
            self.m2.add(dm * (new.0 + old.0));
        }
        if dd != 0.0 {
            self.d.add(dd);
            self.d2.add(dd * (new.1 + old.1));
        }
        let dmd = new.0 * new.1 - old.0 * old.1;
        if dmd != 0.0 {
            self.md.add(dmd);
        }
    }

    /// The sums as `abmesh_stats`' mergeable moments (kind `ratio`).
    pub fn moments(&self, group: &'static str) -> Result<RatioMoments, StatsError> {
        RatioMoments::from_sums(
            group,
            self.n.max(0) as u64,
            self.m.value(),
            self.m2.value(),
            self.d.value(),
            self.d2.value(),
            self.md.value(),
        )
    }
}

/// The derived metrics' aggregates, part of the aggregates.
#[derive(Clone, Debug, Default)]
pub struct DerivedAgg {
    /// The current definitions' `metrics`.
    pub declared: Vec<MetricDefinition>,
    /// Distinct (numerator, denominator) names of the declared ratios; the
    /// sums are indexed like it.
    pairs: Vec<(String, String)>,
    /// Input metric names of the declared quantiles.
    sources: Vec<String>,
    /// Per (experiment, variant), per pair.
    ratios: HashMap<(u32, u16), Vec<RatioSums>>,
    /// Per (experiment, variant, input metric id).
    hists: HashMap<(u32, u16, u32), Buckets>,
    /// The pairs changed since the ratio sums were built: the engine
    /// rebuilds them from its users.
    pub stale: bool,
}

/// A ratio's inputs as metric ids (None: no event of it yet).
type PairIds = (usize, Option<u32>, Option<u32>);

/// The users' (m, d) of the ratios an event touches, before it is applied
/// ([`DerivedAgg::touch`]).
#[derive(Debug, Default)]
pub struct RatioTouch(Vec<(u32, u16, PairIds, f64, f64)>);

impl DerivedAgg {
    /// Installs the definitions' `metrics`. When the ratio pairs change,
    /// their sums are dropped and marked stale (the engine rebuilds them).
    pub fn declare(&mut self, defs: &[MetricDefinition]) {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut sources: Vec<String> = Vec::new();
        for d in defs {
            match (d.kind, &d.numerator, &d.denominator, &d.metric) {
                (MetricKind::Ratio, Some(n), Some(dn), _) => {
                    let p = (n.clone(), dn.clone());
                    if !pairs.contains(&p) {
                        pairs.push(p);
                    }
                }
                (MetricKind::Quantile, _, _, Some(m)) if !sources.contains(m) => {
                    sources.push(m.clone());
                }
                _ => {}
            }
        }
        if pairs != self.pairs {
            self.pairs = pairs;
            self.ratios.clear();
            self.stale = true;
        }
        self.sources = sources;
        self.declared = defs.to_vec();
    }

    /// Whether events of `metric` are histogrammed (a declared quantile's
    /// input).
    pub fn is_source(&self, metric: &str) -> bool {
        self.sources.iter().any(|s| s == metric)
    }

    fn pair_ids<'a>(
        &'a self,
        index: &'a HashMap<String, u32>,
    ) -> impl Iterator<Item = PairIds> + 'a {
        self.pairs
            .iter()
            .enumerate()
            .map(|(i, (n, d))| (i, index.get(n).copied(), index.get(d).copied()))
    }

    fn sums_mut(&mut self, exp: u32, variant: u16) -> &mut Vec<RatioSums> {
        let n = self.pairs.len();
        let v = self.ratios.entry((exp, variant)).or_default();
        if v.len() < n {
            v.resize_with(n, RatioSums::default);
        }
        v
    }

    /// Adds (`sign` 1) or removes (−1) a whole user from a variant;
    /// `values` are the user's totals per metric id (as
    /// the aggregates' `add_user` gets them).
    pub fn add_user(
        &mut self,
        index: &HashMap<String, u32>,
        exp: u32,
        variant: u16,
        values: &[(u32, UserValue)],
        sign: f64,
    ) {
        if self.pairs.is_empty() {
            return;
        }
        let y = |id: Option<u32>| {
            id.and_then(|id| values.iter().find(|(m, _)| *m == id))
                .map_or(0.0, |(_, v)| v.y)
        };
        let ids: Vec<PairIds> = self.pair_ids(index).collect();
        let sums = self.sums_mut(exp, variant);
        for (i, n, d) in ids {
            sums[i].add_user(y(n), y(d), sign);
        }
    }

    /// Before a user's total of `metric` changes: their (m, d) for every
    /// ratio with `metric` as an input, in every (experiment, variant) of
    /// `exposures`; `value(exp, metric)` is the user's total.
    pub fn touch(
        &self,
        index: &HashMap<String, u32>,
        metric: u32,
        exposures: impl Iterator<Item = (u32, u16)> + Clone,
        value: impl Fn(u32, u32) -> f64,
    ) -> RatioTouch {
        let mut out = Vec::new();
        for p in self.pair_ids(index) {
            if p.1 != Some(metric) && p.2 != Some(metric) {
                continue;
            }
            for (exp, variant) in exposures.clone() {
                let m = p.1.map_or(0.0, |id| value(exp, id));
                let d = p.2.map_or(0.0, |id| value(exp, id));
                out.push((exp, variant, p, m, d));
            }
        }
        RatioTouch(out)
    }

    /// After the change announced by [`DerivedAgg::touch`].
    pub fn touched(&mut self, t: RatioTouch, value: impl Fn(u32, u32) -> f64) {
        for (exp, variant, (i, n, d), m0, d0) in t.0 {
            let m = n.map_or(0.0, |id| value(exp, id));
            let dv = d.map_or(0.0, |id| value(exp, id));
            self.sums_mut(exp, variant)[i].change_user((m0, d0), (m, dv));
        }
    }

    /// Adds (`sign` > 0) or removes buckets of `metric` to a variant's
    /// histogram.
    pub fn add_buckets(&mut self, exp: u32, variant: u16, metric: u32, b: &Buckets, sign: f64) {
        let h = self.hists.entry((exp, variant, metric)).or_default();
        h.add(b, sign);
        if h.is_empty() {
            self.hists.remove(&(exp, variant, metric));
        }
    }

    /// Adds (`sign` > 0) or removes a user's events that count in `exp`.
    pub fn add_user_events(&mut self, exp: u32, variant: u16, events: &UserEvents, sign: f64) {
        for s in events.in_experiment(exp) {
            self.add_buckets(exp, variant, s.metric, &s.buckets, sign);
        }
    }

    /// Drops every ratio sum (before a rebuild from the users).
    pub fn clear_ratios(&mut self) {
        self.ratios.clear();
        self.stale = false;
    }

    /// The sums of pair (numerator, denominator) in a variant (zeros when
    /// nothing was added).
    pub fn ratio_sums(
        &self,
        exp: u32,
        variant: u16,
        numerator: &str,
        denominator: &str,
    ) -> RatioSums {
        let Some(i) = self
            .pairs
            .iter()
            .position(|(n, d)| n == numerator && d == denominator)
        else {
            return RatioSums::default();
        };
        self.ratios
            .get(&(exp, variant))
            .and_then(|v| v.get(i))
            .cloned()
            .unwrap_or_default()
    }

    /// A variant's histogram of `metric` (empty when there is none).
    pub fn histogram(&self, exp: u32, variant: u16, metric: Option<u32>) -> Buckets {
        metric
            .and_then(|m| self.hists.get(&(exp, variant, m)))
            .cloned()
            .unwrap_or_default()
    }
}

/// One declared metric's per-variant aggregates, copied out for a report
/// or a guardrail.
#[derive(Debug, Clone, PartialEq)]
pub enum DerivedData {
    Ratio {
        def: MetricDefinition,
        /// Per variant, in the experiment's variant order.
        sums: Vec<RatioSums>,
    },
    Quantile {
        def: MetricDefinition,
        /// Per variant, in the experiment's variant order.
        buckets: Vec<Buckets>,
    },
}

impl DerivedData {
    pub fn def(&self) -> &MetricDefinition {
        match self {
            DerivedData::Ratio { def, .. } | DerivedData::Quantile { def, .. } => def,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abmesh_stats::LogHistogram;

    #[test]
    fn buckets_match_log_histogram_and_subtract() {
        let values = [0.0, -1.0, 0.37, 1.0, 1.005, 12.5, 12.6, 250.0, 1e6];
        let mut b = Buckets::default();
        let mut l = LogHistogram::default();
        for v in values {
            b.push(v);
            l.push(v);
        }
        assert_eq!(b.to_histogram().unwrap(), l.to_histogram());
        let mut c = b.clone();
        c.add(&b, 1.0);
        c.add(&b, -1.0);
        assert_eq!(c, b);
        c.add(&b, -1.0);
        assert!(c.is_empty() && c.counts.is_empty());
        assert_eq!(Buckets::default().to_histogram().unwrap().total(), 0);
    }

    #[test]
    fn ratio_change_equals_remove_and_add() {
        let mut a = RatioSums::default();
        a.add_user(3.0, 10.0, 1.0);
        a.add_user(1.0, 4.0, 1.0);
        a.change_user((1.0, 4.0), (2.0, 7.0));
        let mut b = RatioSums::default();
        b.add_user(3.0, 10.0, 1.0);
        b.add_user(2.0, 7.0, 1.0);
        for (p, q) in [
            (a.m, b.m),
            (a.m2, b.m2),
            (a.d, b.d),
            (a.d2, b.d2),
            (a.md, b.md),
        ] {
            assert!((p.value() - q.value()).abs() < 1e-12);
        }
        assert_eq!(a.n, 2);
        let r = a.moments("control").unwrap();
        assert!((r.ratio() - 5.0 / 17.0).abs() < 1e-15);
    }
}
