//! Variants halted by the sidecar (a guardrail fired, or an operator halted
//! them): users the hash puts in a halted variant are routed like the
//! experiment's control instead.
//!
//! The set is a bitset over every (experiment, variant) of a plan, sized
//! when the plugin is configured; per request the check is one branch when
//! nothing is halted and a bit test per hash assignment otherwise. The
//! filter replaces the whole set from each answer of the sidecar
//! ([`crate::exposures::parse_reply`]).

use crate::decide::{Assignment, Decisions, Source};
use crate::plan::Plan;

/// Halted variants of one plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Halts {
    /// Bit index of each experiment's variant 0.
    offsets: Box<[u32]>,
    /// Control variant of each experiment (never halted).
    controls: Box<[u16]>,
    /// Variants per experiment.
    widths: Box<[u16]>,
    bits: Box<[u64]>,
    count: usize,
}

impl Halts {
    /// An empty set sized for `plan`.
    pub fn new(plan: &Plan) -> Halts {
        let mut offsets = Vec::with_capacity(plan.experiments.len());
        let mut total = 0u32;
        for e in plan.experiments.iter() {
            offsets.push(total);
            total += e.variants.len() as u32;
        }
        Halts {
            offsets: offsets.into_boxed_slice(),
            controls: plan.experiments.iter().map(|e| e.control).collect(),
            widths: plan
                .experiments
                .iter()
                .map(|e| e.variants.len() as u16)
                .collect(),
            bits: vec![0; (total as usize).div_ceil(64)].into_boxed_slice(),
            count: 0,
        }
    }

    /// Whether no variant is halted.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Number of halted variants.
    pub fn len(&self) -> usize {
        self.count
    }

    fn bit(&self, experiment: usize, variant: usize) -> Option<usize> {
        let width = usize::from(*self.widths.get(experiment)?);
        (variant < width).then(|| self.offsets[experiment] as usize + variant)
    }

    /// Whether `variant` of experiment index `experiment` is halted.
    /// Out-of-range indexes read as not halted.
    #[inline]
    pub fn is_halted(&self, experiment: usize, variant: usize) -> bool {
        match self.bit(experiment, variant) {
            Some(b) => self.bits[b / 64] & (1 << (b % 64)) != 0,
            None => false,
        }
    }

    /// Halts a variant. Returns false (and changes nothing) for an index
    /// out of range and for the experiment's control: control is where a
    /// halted variant's users go, so halting it would leave them nowhere.
    /// The sidecar refuses to halt a control; a control in its halted list
    /// is ignored here, and control users keep being assigned (and counted)
    /// normally.
    pub fn halt(&mut self, experiment: usize, variant: usize) -> bool {
        if self.controls.get(experiment).map(|&c| usize::from(c)) == Some(variant) {
            return false;
        }
        let Some(b) = self.bit(experiment, variant) else {
            return false;
        };
        let mask = 1 << (b % 64);
        if self.bits[b / 64] & mask == 0 {
            self.bits[b / 64] |= mask;
            self.count += 1;
        }
        true
    }

    /// Lifts a halt (no-op if not halted).
    pub fn lift(&mut self, experiment: usize, variant: usize) {
        if let Some(b) = self.bit(experiment, variant) {
            let mask = 1 << (b % 64);
            if self.bits[b / 64] & mask != 0 {
                self.bits[b / 64] &= !mask;
                self.count -= 1;
            }
        }
    }

    /// Halted (experiment, variant) pairs in index order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.widths.iter().enumerate().flat_map(move |(e, &w)| {
            (0..usize::from(w))
                .filter(move |&v| self.is_halted(e, v))
                .map(move |v| (e, v))
        })
    }

    /// What changes from `self` to `new` (same plan): `(experiment,
    /// variant, halted)` with `halted` true for a new halt and false for a
    /// lift, in index order.
    pub fn changes<'a>(
        &'a self,
        new: &'a Halts,
    ) -> impl Iterator<Item = (usize, usize, bool)> + 'a {
        self.widths.iter().enumerate().flat_map(move |(e, &w)| {
            (0..usize::from(w)).filter_map(move |v| {
                let (was, is) = (self.is_halted(e, v), new.is_halted(e, v));
                (was != is).then_some((e, v, is))
            })
        })
    }
}

impl Plan {
    /// Routes users the hash put into a halted variant like the
    /// experiment's control: the assignment becomes the control variant
    /// with [`Source::Halted`] (not an exposure). Allowlisted and forced
    /// assignments are left alone (they are deliberate, e.g. QA looking at
    /// the halted variant), and so is the control itself (see
    /// [`Halts::halt`]). No allocation; one branch when nothing is halted.
    #[inline]
    pub fn apply_halts(&self, halts: &Halts, out: &mut Decisions) {
        if halts.is_empty() {
            return;
        }
        for (i, slot) in out.slots.iter_mut().enumerate() {
            let Some(index) = slot.exposure() else {
                continue;
            };
            // Never true for the control: `Halts::halt` refuses it.
            if halts.is_halted(i, index) {
                *slot = Assignment::Variant {
                    index: self.experiments[i].control,
                    source: Source::Halted,
                };
            }
        }
    }

    /// [`Plan::decide`], then [`Plan::apply_halts`].
    pub fn decide_with_halts(
        &self,
        req: &impl crate::RequestHeaders,
        halts: &Halts,
        out: &mut Decisions,
    ) -> crate::Verdict {
        let verdict = self.decide(req, out);
        self.apply_halts(halts, out);
        verdict
    }
}
