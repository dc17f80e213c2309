//! The aggregates: per experiment × variant × metric sufficient
//! statistics, in total and per time bucket (see [`super`] for what they
//! hold and why they merge), kept up to date by the [`super::Engine`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::definitions::{Defined, Definitions};
use super::guard::{GuardState, HaltedRef};
pub use super::ksum::{KSum, UserValue};
use abmesh_stats::guardrail::Health;

/// Width of the finest time bucket.
pub const BUCKET_MS: i64 = 60_000;

/// Widths of the bucket levels (minute, hour, day). Every contribution is
/// kept at each level, so a chart over a month sums ~720 hourly cells
/// instead of ~43 000 minutes, and a report stays within milliseconds
/// whatever the duration.
pub const LEVEL_MS: [i64; 3] = [BUCKET_MS, 3_600_000, 86_400_000];

/// Where a user counts in an experiment: the variant, time and bandit
/// period of their first exposure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub exp: u32,
    pub variant: u16,
    pub t_ms: i64,
    pub period: u32,
}

/// Sufficient statistics of one metric over a set of users.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricSums {
    /// Users with at least one outcome event.
    pub converted: i64,
    pub y: KSum,
    pub y2: KSum,
    pub x: KSum,
    pub x2: KSum,
    pub xy: KSum,
}

impl MetricSums {
    /// Adds (`sign` = 1) or removes (−1) a user's totals.
    pub fn add_user(&mut self, v: &UserValue, sign: f64) {
        if v.count > 0 {
            self.converted += sign as i64;
        }
        if v.y != 0.0 {
            self.y.add(sign * v.y);
            self.y2.add(sign * v.y * v.y);
        }
        if v.x != 0.0 {
            self.x.add(sign * v.x);
            self.x2.add(sign * v.x * v.x);
            self.xy.add(sign * v.x * v.y);
        }
    }

    /// A user's totals changed from `old` to `new`.
    pub fn change_user(&mut self, old: &UserValue, new: &UserValue) {
        self.converted += i64::from(new.count > 0) - i64::from(old.count > 0);
        let dy = new.y - old.y;
        if dy != 0.0 {
            self.y.add(dy);
            self.y2.add(dy * (new.y + old.y));
        }
        let dx = new.x - old.x;
        if dx != 0.0 {
            self.x.add(dx);
            self.x2.add(dx * (new.x + old.x));
        }
        let dxy = new.x * new.y - old.x * old.y;
        if dxy != 0.0 {
            self.xy.add(dxy);
        }
    }

    /// Removes the statistics of a subset of the users (the inverse of
    /// [`MetricSums::merge`]).
    pub fn subtract(&mut self, o: &MetricSums) {
        self.converted -= o.converted;
        for (mine, theirs) in [
            (&mut self.y, &o.y),
            (&mut self.y2, &o.y2),
            (&mut self.x, &o.x),
            (&mut self.x2, &o.x2),
            (&mut self.xy, &o.xy),
        ] {
            mine.subtract(theirs);
        }
    }

    pub fn merge(&mut self, o: &MetricSums) {
        self.converted += o.converted;
        self.y.merge(&o.y);
        self.y2.merge(&o.y2);
        self.x.merge(&o.x);
        self.x2.merge(&o.x2);
        self.xy.merge(&o.xy);
    }
}

/// Users and per-metric sums of one variant (in total, or in one bucket).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub users: i64,
    /// Indexed by the experiment's metric slot; missing slots are zeros.
    pub metrics: Vec<MetricSums>,
}

impl Cell {
    pub fn metric_mut(&mut self, slot: usize) -> &mut MetricSums {
        if self.metrics.len() <= slot {
            self.metrics.resize_with(slot + 1, MetricSums::default);
        }
        &mut self.metrics[slot]
    }

    /// The sums of a slot (zeros if never touched).
    pub fn metric(&self, slot: usize) -> MetricSums {
        self.metrics.get(slot).cloned().unwrap_or_default()
    }

    /// Adds the statistics of a disjoint set of users.
    pub fn add(&mut self, o: &Cell) {
        self.users += o.users;
        for (i, m) in o.metrics.iter().enumerate() {
            self.metric_mut(i).merge(m);
        }
    }

    /// Adds (`sign` 1) or removes (−1) one user: `values` are their totals
    /// per global metric id, `slots` those metrics' slots
    /// ([`ExperimentAgg::slots`]).
    pub fn add_user(&mut self, values: &[(u32, UserValue)], slots: &[usize], sign: f64) {
        self.users += sign as i64;
        for ((_, v), &slot) in values.iter().zip(slots) {
            self.metric_mut(slot).add_user(v, sign);
        }
    }

    /// Removes the statistics of a subset of the users.
    pub fn subtract(&mut self, o: &Cell) {
        self.users -= o.users;
        for (i, m) in o.metrics.iter().enumerate() {
            self.metric_mut(i).subtract(m);
        }
    }
}

/// A variant's totals and its per-bucket contributions.
#[derive(Clone, Debug, Default)]
pub struct VariantAgg {
    pub total: Cell,
    /// Per level of [`LEVEL_MS`], keyed by bucket index (first exposure
    /// time / the level's width).
    pub levels: [BTreeMap<i64, Cell>; 3],
    /// Requests, status classes and latency histogram the filters reported
    /// (exposure batches' `health`), since the experiment's last lift.
    pub health: Health,
    /// Per bandit allocation period ≥ 1 of the users' first exposure (see
    /// `super::bandit`). Period 0's users are the rest of the total
    /// ([`VariantAgg::by_period`]), so an experiment without a bandit keeps
    /// this empty and pays nothing for it.
    pub periods: BTreeMap<u32, Cell>,
}

impl VariantAgg {
    /// The variant's users and sums per allocation period, period 0 (the
    /// configured weights) first, derived as the total minus the others.
    pub fn by_period(&self) -> Vec<(u32, Cell)> {
        let mut zero = self.total.clone();
        for c in self.periods.values() {
            zero.subtract(c);
        }
        std::iter::once((0, zero))
            .chain(self.periods.iter().map(|(&p, c)| (p, c.clone())))
            .collect()
    }
}

/// Everything known about one experiment.
#[derive(Clone, Debug, Default)]
pub struct ExperimentAgg {
    pub name: String,
    /// Variant names, in the order first seen (definitions first).
    pub variants: Vec<String>,
    /// Per variant, same order.
    pub cells: Vec<VariantAgg>,
    /// Global metric ids by slot.
    pub metric_slots: Vec<u32>,
    /// Exposure rows received (repeats included).
    pub exposure_rows: u64,
    /// Exposure rows whose variant differs from the one the assignment core
    /// computes from the definitions (stale config on one side, or a bug).
    pub mismatches: u64,
    /// Users seen in more than one variant (the first exposure counts).
    pub conflicts: u64,
    /// Per (dimension id, value id) of [`Aggregates::segments`]: a cell per
    /// variant (same order as `cells`; missing ones are empty).
    pub segments: BTreeMap<(u32, u32), Vec<Cell>>,
}

impl ExperimentAgg {
    pub fn slot_of(&self, metric: u32) -> Option<usize> {
        self.metric_slots.iter().position(|&m| m == metric)
    }

    /// The slots of a user's metrics (registered if new).
    pub(super) fn slots(&mut self, values: &[(u32, UserValue)]) -> smallvec::SmallVec<[usize; 4]> {
        values.iter().map(|(m, _)| self.slot(*m)).collect()
    }

    /// The cell of `variant` in a segment (created, with any missing
    /// variants before it, on first use).
    pub(super) fn segment_cell(&mut self, segment: (u32, u32), variant: u16) -> &mut Cell {
        let cells = self.segments.entry(segment).or_default();
        if cells.len() <= variant as usize {
            cells.resize_with(variant as usize + 1, Cell::default);
        }
        &mut cells[variant as usize]
    }

    pub(super) fn slot(&mut self, metric: u32) -> usize {
        match self.slot_of(metric) {
            Some(s) => s,
            None => {
                self.metric_slots.push(metric);
                self.metric_slots.len() - 1
            }
        }
    }

    pub fn variant_index(&self, name: &str) -> Option<usize> {
        self.variants.iter().position(|v| v == name)
    }

    pub(super) fn variant(&mut self, name: &str) -> u16 {
        match self.variant_index(name) {
            Some(i) => i as u16,
            None => {
                self.variants.push(name.to_owned());
                self.cells.push(VariantAgg::default());
                (self.variants.len() - 1) as u16
            }
        }
    }
}

/// A metric, across experiments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricInfo {
    pub name: String,
    /// Events with a `value`.
    pub value_events: u64,
    /// Events without one (conversions).
    pub conversion_events: u64,
    /// Events with a `covariate`.
    pub covariate_events: u64,
}

impl MetricInfo {
    /// A metric is a conversion metric if none of its events had a value.
    pub fn is_conversion(&self) -> bool {
        self.value_events == 0
    }
}

/// Ingestion counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub events: u64,
    pub duplicate_events: u64,
    pub exposure_batches: u64,
    pub duplicate_batches: u64,
    pub exposure_rows: u64,
    /// Exposures the filters reported dropping (sidecar slow or down).
    pub dropped_exposures: u64,
    /// Log records that failed to parse on replay (should stay 0).
    pub unreadable_records: u64,
}

impl Counters {
    pub(super) fn merge(&mut self, o: &Counters) {
        self.events += o.events;
        self.duplicate_events += o.duplicate_events;
        self.exposure_batches += o.exposure_batches;
        self.duplicate_batches += o.duplicate_batches;
        self.exposure_rows += o.exposure_rows;
        self.dropped_exposures += o.dropped_exposures;
        self.unreadable_records += o.unreadable_records;
    }
}

/// The aggregates reports read: shared between the applier (writes) and
/// request handlers (read, briefly, under the lock).
#[derive(Clone, Debug, Default)]
pub struct Aggregates {
    pub experiments: Vec<ExperimentAgg>,
    pub(super) exp_index: HashMap<String, u32>,
    pub metrics: Vec<MetricInfo>,
    pub(super) metric_index: HashMap<String, u32>,
    pub counters: Counters,
    /// The last log record applied.
    pub applied_lsn: u64,
    pub definitions: Option<Arc<Definitions>>,
    /// Whether `definitions` were learned from a filter's configuration
    /// (else they are `--experiments`).
    pub learned: bool,
    /// Ids of every configuration this sidecar has stored (a batch with one
    /// of these ids needs not send its configuration).
    pub known_configs: BTreeSet<u64>,
    /// Halts, overrides and notified alarms.
    pub guard: GuardState,
    /// The allocation periods of bandit experiments, by experiment name.
    pub bandits: BTreeMap<String, BanditHistory>,
    /// Segment dimensions and values seen on events.
    pub segments: super::segments::SegmentRegistry,
    /// Ratio sums and quantile histograms of the declared metrics.
    pub derived: super::derived::DerivedAgg,
}

impl Aggregates {
    pub fn new(definitions: Option<Arc<Definitions>>) -> Aggregates {
        let mut a = Aggregates::default();
        if let Some(d) = definitions {
            a.set_definitions(d, false);
        }
        a
    }

    /// Installs definitions: registers their experiments and variants
    /// (first, so they keep configuration order) and remembers their id.
    pub(crate) fn set_definitions(&mut self, d: Arc<Definitions>, learned: bool) {
        for e in d.experiments() {
            let id = self.experiment_id(&e.name);
            for v in &e.variants {
                self.experiments[id as usize].variant(v);
            }
        }
        self.known_configs.insert(d.id());
        self.derived.declare(d.metrics());
        self.definitions = Some(d);
        self.learned = learned;
    }

    /// Every currently halted variant.
    pub fn halted(&self) -> Vec<HaltedRef> {
        self.guard.halted()
    }

    pub fn experiment(&self, name: &str) -> Option<&ExperimentAgg> {
        self.exp_index
            .get(name)
            .map(|&i| &self.experiments[i as usize])
    }

    /// The definition of an experiment, if the definitions name it.
    pub fn defined(&self, name: &str) -> Option<&Defined> {
        self.definitions.as_ref()?.get(name).map(|(_, d)| d)
    }

    pub(super) fn experiment_id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.exp_index.get(name) {
            return i;
        }
        let i = self.experiments.len() as u32;
        self.experiments.push(ExperimentAgg {
            name: name.to_owned(),
            ..ExperimentAgg::default()
        });
        self.exp_index.insert(name.to_owned(), i);
        i
    }

    pub(super) fn metric_id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.metric_index.get(name) {
            return i;
        }
        let i = self.metrics.len() as u32;
        self.metrics.push(MetricInfo {
            name: name.to_owned(),
            ..MetricInfo::default()
        });
        self.metric_index.insert(name.to_owned(), i);
        i
    }

    /// Adds (`sign` 1) or removes (−1) a whole user from a variant of an
    /// experiment; `segments` are the user's segment values and `values`
    /// the user's totals per global metric id.
    pub(super) fn add_user(
        &mut self,
        at: Place,
        segments: &[(u32, u32)],
        values: &[(u32, UserValue)],
        sign: f64,
    ) {
        let Place {
            exp,
            variant,
            t_ms,
            period,
        } = at;
        self.derived
            .add_user(&self.metric_index, exp, variant, values, sign);
        let e = &mut self.experiments[exp as usize];
        let slots = e.slots(values);
        for seg in segments {
            e.segment_cell(*seg, variant).add_user(values, &slots, sign);
        }
        let va = &mut e.cells[variant as usize];
        let add = |cell: &mut Cell| cell.add_user(values, &slots, sign);
        add(&mut va.total);
        if period > 0 {
            let cell = va.periods.entry(period).or_default();
            add(cell);
            if cell.users == 0 && sign < 0.0 {
                va.periods.remove(&period);
            }
        }
        for (level, width) in va.levels.iter_mut().zip(LEVEL_MS) {
            let b = t_ms.div_euclid(width);
            let cell = level.entry(b).or_default();
            add(cell);
            if cell.users == 0 && sign < 0.0 {
                // A user moved out and the bucket is empty of users: its
                // sums are zeros up to rounding; drop it to stay sparse.
                level.remove(&b);
            }
        }
    }

    /// Adds (`sign` 1) or removes (−1) a user's totals to one segment's
    /// cell of a variant (the user's segment value became known or moved).
    pub(super) fn add_user_to_segment(
        &mut self,
        exp: u32,
        variant: u16,
        segment: (u32, u32),
        values: &[(u32, UserValue)],
        sign: f64,
    ) {
        let e = &mut self.experiments[exp as usize];
        let slots = e.slots(values);
        e.segment_cell(segment, variant)
            .add_user(values, &slots, sign);
    }

    /// A user's totals for one metric changed.
    pub(super) fn change_user(
        &mut self,
        at: Place,
        segments: &[(u32, u32)],
        metric: u32,
        old: &UserValue,
        new: &UserValue,
    ) {
        let Place {
            exp,
            variant,
            t_ms,
            period,
        } = at;
        let e = &mut self.experiments[exp as usize];
        let slot = e.slot(metric);
        for seg in segments {
            e.segment_cell(*seg, variant)
                .metric_mut(slot)
                .change_user(old, new);
        }
        let va = &mut e.cells[variant as usize];
        va.total.metric_mut(slot).change_user(old, new);
        if period > 0 {
            va.periods
                .entry(period)
                .or_default()
                .metric_mut(slot)
                .change_user(old, new);
        }
        for (level, width) in va.levels.iter_mut().zip(LEVEL_MS) {
            level
                .entry(t_ms.div_euclid(width))
                .or_default()
                .metric_mut(slot)
                .change_user(old, new);
        }
    }
}

/// One allocation period of a bandit experiment (see `super::bandit`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BanditPeriod {
    /// 0 for the configured weights, then 1, 2, ...
    pub period: u32,
    /// The definitions' variant names and each one's share (summing to 1).
    pub variants: Vec<String>,
    pub weights: Vec<f64>,
    /// When the period started (the record's time; period 0: when the
    /// experiment's first exposures arrived).
    pub started_ms: i64,
    /// P(best) of each non-control variant that produced the weights
    /// (same order as `variants`, `None` for the control and for halted
    /// variants; empty for period 0).
    pub prob_best: Vec<Option<f64>>,
    /// The log record that started it.
    pub lsn: u64,
}

/// Every period of one bandit experiment, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BanditHistory {
    pub periods: Vec<BanditPeriod>,
}

impl BanditHistory {
    /// The period in force.
    pub fn current(&self) -> Option<&BanditPeriod> {
        self.periods.last()
    }

    /// The weights of `period` for `variant` (0 when it was not allocated).
    pub fn weight(&self, period: u32, variant: &str) -> Option<f64> {
        let p = self.periods.iter().find(|p| p.period == period)?;
        Some(
            p.variants
                .iter()
                .position(|v| v == variant)
                .map_or(0.0, |i| p.weights[i]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compensated_sum_keeps_small_terms() {
        let mut k = KSum::default();
        k.add(1e16);
        for _ in 0..1000 {
            k.add(1.0);
        }
        k.add(-1e16);
        assert_eq!(k.value(), 1000.0);
    }

    #[test]
    fn changing_a_user_equals_removing_and_adding() {
        let a = UserValue {
            count: 1,
            y: 3.0,
            x: 2.0,
        };
        let b = UserValue {
            count: 2,
            y: 7.5,
            x: 2.5,
        };
        let mut m1 = MetricSums::default();
        m1.add_user(&a, 1.0);
        m1.change_user(&a, &b);
        let mut m2 = MetricSums::default();
        m2.add_user(&b, 1.0);
        assert_eq!(m1.converted, m2.converted);
        for (p, q) in [
            (m1.y, m2.y),
            (m1.y2, m2.y2),
            (m1.x, m2.x),
            (m1.x2, m2.x2),
            (m1.xy, m2.xy),
        ] {
            assert!((p.value() - q.value()).abs() < 1e-12);
        }
    }
}
