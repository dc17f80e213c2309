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
use std::io::Write;

/// Upper bounds (inclusive, µs) of the latency histogram's buckets: bucket
/// `i` holds latencies `<= LATENCY_BOUNDS_US[i]` and `> LATENCY_BOUNDS_US[i -
/// 1]`; bucket 24 holds everything above 10 s. Shared with the sidecar,
/// which reads percentiles off the same buckets.
pub const LATENCY_BOUNDS_US: [u64; 24] = [
    500, 1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 50_000, 75_000,
    100_000, 150_000, 200_000, 300_000, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000,
    3_000_000, 5_000_000, 10_000_000,
];

/// Buckets of the latency histogram: the bounds plus one overflow bucket.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// Status classes counted: 1xx, 2xx, 3xx, 4xx, 5xx.
pub const STATUS_CLASSES: usize = 5;

/// The histogram bucket of a latency in µs.
#[inline]
pub fn latency_bucket(us: u64) -> usize {
    LATENCY_BOUNDS_US.partition_point(|&bound| bound < us)
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

    /// Appends the batch's `health` array to `out`: one row per (experiment,
    /// variant) with any count,
    /// `[e, v, requests, [s1xx, s2xx, s3xx, s4xx, s5xx], [h0, …, h24]]`.
    /// Counters are not reset (see [`HealthTable::reset`]).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        let mut first = true;
        for r in 0..self.rows.len() {
            if !self.row_used(r) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            let (e, v) = self.rows[r];
            // Writing to a Vec cannot fail.
            let _ = write!(out, "[{e},{v},{},", self.requests[r]);
            write_counts(out, &self.status[r]);
            out.push(b',');
            write_counts(out, &self.latency[r]);
            out.push(b']');
        }
        out.push(b']');
    }

    /// Zeroes every counter.
    pub fn reset(&mut self) {
        self.requests.fill(0);
        self.status.fill([0; STATUS_CLASSES]);
        self.latency.fill([0; LATENCY_BUCKETS]);
    }
}

fn write_counts(out: &mut Vec<u8>, counts: &[u64]) {
    out.push(b'[');
    for (i, c) in counts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, "{c}");
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_bounds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(500), 0);
        assert_eq!(latency_bucket(501), 1);
        assert_eq!(latency_bucket(1_000), 1);
        assert_eq!(latency_bucket(7_500), 5);
        assert_eq!(latency_bucket(7_501), 6);
        assert_eq!(latency_bucket(10_000_000), 23);
        assert_eq!(latency_bucket(10_000_001), 24);
        assert_eq!(latency_bucket(u64::MAX), 24);
        assert_eq!(LATENCY_BUCKETS, 25);
        for (i, &b) in LATENCY_BOUNDS_US.iter().enumerate() {
            assert_eq!(latency_bucket(b), i);
            assert_eq!(latency_bucket(b + 1), i + 1);
        }
        assert!(LATENCY_BOUNDS_US.windows(2).all(|w| w[0] < w[1]));
    }

    fn plan() -> Plan {
        Plan::from_json(
            br#"{"experiments": [
                {"name": "a", "variants": [{"name": "c", "weight": 1}, {"name": "t", "weight": 1}]},
                {"name": "b", "variants": [{"name": "x", "weight": 1}, {"name": "y", "weight": 1}, {"name": "z", "weight": 1}]}]}"#,
        )
        .unwrap()
    }

    fn json(h: &HealthTable) -> serde_json::Value {
        let mut out = Vec::new();
        h.write_json(&mut out);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn writes_only_rows_with_counts() {
        let mut h = HealthTable::new(&plan());
        assert!(h.is_empty());
        assert_eq!(json(&h), serde_json::json!([]));
        for _ in 0..3 {
            h.record_request(1, 2);
        }
        h.record_request(0, 0);
        h.record_response(1, 2, 503, 12_000);
        h.record_response(1, 2, 200, 100);
        h.record_response(1, 2, 200, 20_000_000);
        h.record_response(1, 2, 99, 100); // not a status: not counted
        h.record_response(1, 2, 600, 100);
        h.record_response(0, 1, 404, 600); // a response without a counted request
        h.record_request(5, 0); // out of range: ignored
        h.record_request(0, 2);
        h.record_response(1, 3, 200, 1);
        assert!(!h.is_empty());
        let z5 = [0u64; 5];
        let z25 = [0u64; 25];
        let mut hist_b_z = [0u64; 25];
        hist_b_z[0] = 1;
        hist_b_z[7] = 1;
        hist_b_z[24] = 1;
        let mut hist_a_t = [0u64; 25];
        hist_a_t[1] = 1;
        assert_eq!(
            json(&h),
            serde_json::json!([
                [0, 0, 1, z5, z25],
                [0, 1, 0, [0, 0, 0, 1, 0], hist_a_t],
                [1, 2, 3, [0, 2, 0, 0, 1], hist_b_z],
            ])
        );
        h.reset();
        assert!(h.is_empty());
        assert_eq!(json(&h), serde_json::json!([]));
    }
}
