//! Per-variant health counters the filter ships with each exposure batch
//! (`health` in `POST /v1/exposures`), from which the sidecar's guardrails
//! compare each treatment's error rate and latency with its control's.
//!
//! Per (experiment, variant): requests assigned by hash (exact), and for the
//! sampled requests whose response headers were seen, the response's status
//! class (1xx … 5xx) and the time from request headers to response headers
//! in a fixed latency histogram ([`LATENCY_BOUNDS_US`]). Counters are
//! preallocated when the plugin is configured; recording is an index and an
//! increment, no allocation. They are deltas: [`HealthTable::reset`] after a
//! batch took them.

use crate::plan::Plan;

/// The histogram and status classes are the wire format's
/// ([`crate::protocol::health`]); re-exported here, where the sidecar reads
/// them from.
pub use crate::protocol::health::{
    latency_bucket, LATENCY_BOUNDS_US, LATENCY_BUCKETS, STATUS_CLASSES,
};

/// One used row of a [`HealthTable`] (see [`crate::protocol::health`]).
#[derive(Clone, Copy, Debug)]
pub struct HealthRow<'a> {
    pub experiment: u16,
    pub variant: u16,
    pub requests: u64,
    pub status: &'a [u64; STATUS_CLASSES],
    pub latency: &'a [u64; LATENCY_BUCKETS],
}

/// Health counters of every (experiment, variant) of a plan.
#[derive(Clone, Debug)]
pub struct HealthTable {
    /// Row of each experiment's variant 0.
    offsets: Box<[u32]>,
    /// (experiment, variant) of each row.
    rows: Box<[(u16, u16)]>,
    requests: Box<[u64]>,
    status: Box<[[u64; STATUS_CLASSES]]>,
    latency: Box<[[u64; LATENCY_BUCKETS]]>,
}

impl HealthTable {
    /// Zeroed counters for every variant of `plan`.
    pub fn new(plan: &Plan) -> HealthTable {
        let mut offsets = Vec::with_capacity(plan.experiments().len());
        let mut rows = Vec::new();
        for (e, exp) in plan.experiments().iter().enumerate() {
            offsets.push(rows.len() as u32);
            rows.extend((0..exp.variants().len()).map(|v| (e as u16, v as u16)));
        }
        let n = rows.len();
        HealthTable {
            offsets: offsets.into_boxed_slice(),
            rows: rows.into_boxed_slice(),
            requests: vec![0; n].into_boxed_slice(),
            status: vec![[0; STATUS_CLASSES]; n].into_boxed_slice(),
            latency: vec![[0; LATENCY_BUCKETS]; n].into_boxed_slice(),
        }
    }

    #[inline]
    fn row(&self, experiment: usize, variant: usize) -> Option<usize> {
        let start = *self.offsets.get(experiment)? as usize;
        let end = self
            .offsets
            .get(experiment + 1)
            .map_or(self.rows.len(), |&o| o as usize);
        (variant < end - start).then_some(start + variant)
    }

    /// Counts a request assigned to `variant` of experiment `experiment` by
    /// hash. Indexes out of range are ignored.
    #[inline]
    pub fn record_request(&mut self, experiment: usize, variant: usize) {
        if let Some(r) = self.row(experiment, variant) {
            self.requests[r] += 1;
        }
    }

    /// Counts a sampled response: its status class and its latency (request
    /// headers to response headers, µs). A status outside 100..=599 is not
    /// counted (neither class nor latency).
    #[inline]
    pub fn record_response(
        &mut self,
        experiment: usize,
        variant: usize,
        status: u32,
        latency_us: u64,
    ) {
        if !(100..=599).contains(&status) {
            return;
        }
        if let Some(r) = self.row(experiment, variant) {
            self.status[r][(status / 100 - 1) as usize] += 1;
            self.latency[r][latency_bucket(latency_us)] += 1;
        }
    }

    /// Whether every counter is zero.
    pub fn is_empty(&self) -> bool {
        (0..self.rows.len()).all(|r| !self.row_used(r))
    }

    fn row_used(&self, r: usize) -> bool {
        // The classes and the histogram count the same responses.
        self.requests[r] != 0 || self.status[r].iter().any(|&c| c != 0)
    }

    /// The rows with any count, in (experiment, variant) order.
    pub fn rows(&self) -> impl Iterator<Item = HealthRow<'_>> + '_ {
        (0..self.rows.len())
            .filter(|&r| self.row_used(r))
            .map(|r| HealthRow {
                experiment: self.rows[r].0,
                variant: self.rows[r].1,
                requests: self.requests[r],
                status: &self.status[r],
                latency: &self.latency[r],
            })
    }

    /// Adds `other`'s counters (a table of the same plan) to these, and
    /// zeroes `other`. No allocation.
    pub fn absorb(&mut self, other: &mut HealthTable) {
        debug_assert_eq!(self.rows.len(), other.rows.len());
        for (a, b) in self.requests.iter_mut().zip(other.requests.iter()) {
            *a += b;
        }
        for (a, b) in self.status.iter_mut().zip(other.status.iter()) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        for (a, b) in self.latency.iter_mut().zip(other.latency.iter()) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        other.reset();
    }

    /// Zeroes every counter.
    pub fn reset(&mut self) {
        self.requests.fill(0);
        self.status.fill([0; STATUS_CLASSES]);
        self.latency.fill([0; LATENCY_BUCKETS]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absorbing_adds_and_empties() {
        let plan = Plan::from_json(
            br#"{"experiments": [{"name": "a", "variants": [{"name": "c", "weight": 1}, {"name": "t", "weight": 1}]}]}"#,
        )
        .unwrap();
        let mut main = HealthTable::new(&plan);
        let mut worker = HealthTable::new(&plan);
        main.record_request(0, 1);
        worker.record_request(0, 1);
        worker.record_request(0, 0);
        worker.record_response(0, 1, 503, 1_200);
        main.absorb(&mut worker);
        assert!(worker.is_empty());
        let rows: Vec<_> = main
            .rows()
            .map(|r| {
                (
                    r.experiment,
                    r.variant,
                    r.requests,
                    r.status[4],
                    r.latency[2],
                )
            })
            .collect();
        assert_eq!(rows, [(0, 0, 1, 0, 0), (0, 1, 2, 1, 1)]);
    }
}
