//! Health aggregates of one (experiment, variant): exact request count,
//! sampled status classes and a fixed-bucket latency histogram, as the
//! filter reports them in `health` rows of exposure batches.

use serde::{Deserialize, Serialize};

/// The wire format's constants come from the filter's `protocol` module,
/// which writes the rows: status classes 1xx..5xx, and the latency
/// histogram's bounds (inclusive upper bounds in µs: bucket `i` holds
/// latencies `> LATENCY_BOUNDS_US[i - 1]` and `<= LATENCY_BOUNDS_US[i]`; the
/// last bucket everything above 10 s).
pub use abmesh_filter::protocol::health::{
    latency_bucket, LATENCY_BOUNDS_US, LATENCY_BUCKETS, STATUS_CLASSES,
};

/// Index of the 5xx class in [`Health::status`].
const SERVER_ERROR: usize = 4;

/// Lower edge of bucket `i` (µs).
fn lower(i: usize) -> f64 {
    if i == 0 {
        0.0
    } else {
        LATENCY_BOUNDS_US[i - 1] as f64
    }
}

/// Upper edge of bounded bucket `i` (µs); `i < LATENCY_BUCKETS - 1`.
fn upper(i: usize) -> f64 {
    LATENCY_BOUNDS_US[i] as f64
}

/// Health counters of one (experiment, variant), merged over batches.
///
/// `requests` counts every request assigned to the variant by hash;
/// `status` and `latency` count the sampled requests whose response headers
/// were seen (the sums of both arrays are equal in well-formed input).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub requests: u64,
    /// Sampled responses per status class, 1xx..5xx.
    pub status: [u64; STATUS_CLASSES],
    /// Sampled responses per latency bucket ([`LATENCY_BOUNDS_US`]).
    pub latency: [u64; LATENCY_BUCKETS],
}

impl Health {
    /// Adds another batch's (or sidecar's) counts. Saturates rather than
    /// wrapping on absurd input.
    pub fn merge(&mut self, o: &Health) {
        self.requests = self.requests.saturating_add(o.requests);
        for (a, b) in self.status.iter_mut().zip(&o.status) {
            *a = a.saturating_add(*b);
        }
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            *a = a.saturating_add(*b);
        }
    }

    /// Records one sampled response (used by tests and simulations; the
    /// filter does the same bucketing).
    pub fn record(&mut self, status: u16, latency_us: u64) {
        if !(100..600).contains(&status) {
            return;
        }
        self.status[usize::from(status / 100) - 1] += 1;
        self.latency[latency_bucket(latency_us)] += 1;
    }

    /// Sampled responses (sum of the status classes).
    pub fn responses(&self) -> u64 {
        self.status.iter().fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// Sampled responses with a latency (sum of the histogram).
    pub fn timed(&self) -> u64 {
        self.latency.iter().fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// Sampled 5xx responses.
    pub fn server_errors(&self) -> u64 {
        self.status[SERVER_ERROR]
    }

    /// Share of 5xx among the sampled responses; `None` without responses.
    pub fn error_rate(&self) -> Option<f64> {
        let n = self.responses();
        (n > 0).then(|| self.server_errors() as f64 / n as f64)
    }

    /// The `q`-quantile of latency (µs) from the histogram, interpolating
    /// linearly inside the bucket that holds it (latencies are taken as
    /// uniform within a bucket). The overflow bucket has no upper edge: a
    /// quantile that falls there is reported as its lower edge (10 s), an
    /// underestimate. `None` without latencies or for `q` outside [0, 1].
    ///
    /// This is the generalized inverse of the piecewise-linear CDF that
    /// [`Health::share_above`] integrates, so the two agree:
    /// `share_above(x) < 1 − q` exactly when `x ≥ quantile_us(q)` (up to
    /// rounding, outside the overflow bucket).
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let total = self.timed();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut cum = 0.0;
        for (i, &c) in self.latency.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let c = c as f64;
            if cum + c >= rank || i == LATENCY_BUCKETS - 1 {
                if i == LATENCY_BUCKETS - 1 {
                    return Some(lower(i));
                }
                let frac = ((rank - cum) / c).clamp(0.0, 1.0);
                return Some(lower(i) + frac * (upper(i) - lower(i)));
            }
            cum += c;
        }
        // Rounding left the rank above the last non-empty bucket.
        let last = self.latency.iter().rposition(|&c| c > 0)?;
        Some(if last == LATENCY_BUCKETS - 1 {
            lower(last)
        } else {
            upper(last)
        })
    }

    /// Share of the timed responses slower than `threshold_us`, with
    /// latencies uniform inside each bounded bucket and the overflow bucket
    /// a point mass at 10 s (so a threshold ≥ 10 s is never exceeded: no
    /// evidence, no alarm). `None` without latencies.
    pub fn share_above(&self, threshold_us: f64) -> Option<f64> {
        let total = self.timed();
        if total == 0 || threshold_us.is_nan() {
            return None;
        }
        let mut above = 0.0;
        for (i, &c) in self.latency.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let c = c as f64;
            let lo = lower(i);
            if i == LATENCY_BUCKETS - 1 {
                if threshold_us < lo {
                    above += c;
                }
                continue;
            }
            let hi = upper(i);
            if threshold_us <= lo {
                above += c;
            } else if threshold_us < hi {
                above += c * (hi - threshold_us) / (hi - lo);
            }
        }
        Some((above / total as f64).clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_the_spec_values() {
        assert_eq!(
            LATENCY_BOUNDS_US,
            [
                500, 1000, 2000, 3000, 5000, 7500, 10000, 15000, 20000, 30000, 50000, 75000,
                100000, 150000, 200000, 300000, 500000, 750000, 1000000, 1500000, 2000000, 3000000,
                5000000, 10000000
            ]
        );
        assert!(LATENCY_BOUNDS_US.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn bucketing_is_upper_inclusive() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(500), 0);
        assert_eq!(latency_bucket(501), 1);
        assert_eq!(latency_bucket(10_000_000), 23);
        assert_eq!(latency_bucket(10_000_001), 24);
        assert_eq!(latency_bucket(u64::MAX), 24);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let mut h = Health::default();
        assert_eq!(h.quantile_us(0.5), None);
        // 100 responses in (1000, 2000], 100 in (2000, 3000].
        h.latency[2] = 100;
        h.latency[3] = 100;
        assert_eq!(h.quantile_us(0.25), Some(1500.0));
        assert_eq!(h.quantile_us(0.5), Some(2000.0));
        assert_eq!(h.quantile_us(0.95), Some(2900.0));
        assert_eq!(h.quantile_us(1.0), Some(3000.0));
        assert_eq!(h.quantile_us(0.0), Some(1000.0));
        assert_eq!(h.quantile_us(1.5), None);
        assert_eq!(h.quantile_us(f64::NAN), None);
        // Empty buckets between: the quantile jumps to the next non-empty one.
        let mut g = Health::default();
        g.latency[0] = 50;
        g.latency[10] = 50;
        assert_eq!(g.quantile_us(0.5), Some(500.0));
        assert!((g.quantile_us(0.6).unwrap() - (30_000.0 + 0.2 * 20_000.0)).abs() < 1e-9);
    }

    #[test]
    fn overflow_quantile_is_its_lower_edge() {
        let mut h = Health::default();
        h.latency[24] = 10;
        h.latency[0] = 90;
        assert_eq!(h.quantile_us(0.95), Some(10_000_000.0));
        assert_eq!(h.quantile_us(1.0), Some(10_000_000.0));
        assert_eq!(h.share_above(9_000_000.0), Some(0.1));
        assert_eq!(h.share_above(10_000_000.0), Some(0.0));
    }

    #[test]
    fn share_above_inverts_the_quantile() {
        let mut h = Health::default();
        for (i, c) in [3u64, 10, 40, 25, 0, 12, 6, 3, 1].iter().enumerate() {
            h.latency[i + 2] = *c;
        }
        for &q in &[0.1, 0.5, 0.9, 0.95, 0.99] {
            let x = h.quantile_us(q).unwrap();
            let s = h.share_above(x).unwrap();
            assert!((s - (1.0 - q)).abs() < 1e-12, "q {q}: x {x}, share {s}");
        }
        assert_eq!(h.share_above(0.0), Some(1.0));
        assert_eq!(h.share_above(1e12), Some(0.0));
    }

    #[test]
    fn merge_adds_and_rates_read_the_sample() {
        let mut a = Health {
            requests: 10,
            ..Health::default()
        };
        a.record(200, 700);
        a.record(503, 20_000);
        a.record(42, 1); // not a status: ignored
        let mut b = Health {
            requests: 5,
            ..Health::default()
        };
        b.record(404, 100);
        a.merge(&b);
        assert_eq!(a.requests, 15);
        assert_eq!(a.status, [0, 1, 0, 1, 1]);
        assert_eq!((a.responses(), a.timed()), (3, 3));
        assert_eq!(a.latency[0] + a.latency[1] + a.latency[8], 3);
        assert!((a.error_rate().unwrap() - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(Health::default().error_rate(), None);
    }
}
