//! The batch's `health` rows and the histogram they count latencies in.
//!
//! One row per (experiment, variant) with any count since the last batch:
//! `[e, v, requests, [s1xx, s2xx, s3xx, s4xx, s5xx], [h0, …, h24]]`.
//! `requests` counts every request assigned by hash; the status classes and
//! the histogram count the sampled responses (the same responses, so both
//! arrays sum alike). The sidecar reads percentiles off the same buckets,
//! so the bounds are part of the contract.

use crate::health::HealthTable;
use std::io::Write;

/// Upper bounds (inclusive, µs) of the latency histogram's buckets: bucket
/// `i` holds latencies `<= LATENCY_BOUNDS_US[i]` and `> LATENCY_BOUNDS_US[i -
/// 1]`; bucket 24 holds everything above 10 s.
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

/// Appends the batch's `health` array for `table` to `out`. Counters are
/// not reset (see [`HealthTable::reset`]).
pub fn write_rows(table: &HealthTable, out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, row) in table.rows().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing to a Vec cannot fail.
        let _ = write!(out, "[{},{},{},", row.experiment, row.variant, row.requests);
        write_counts(out, row.status);
        out.push(b',');
        write_counts(out, row.latency);
        out.push(b']');
    }
    out.push(b']');
}

fn write_counts(out: &mut Vec<u8>, counts: &[u64]) {
    out.push(b'[');
    for (i, &c) in counts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        super::batch::push_u64(out, c);
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Plan;

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
        write_rows(h, &mut out);
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
