//! Mergeable sufficient statistics: what the sidecar keeps per
//! experiment × variant × metric, and what every test reads.
//!
//! # Representation: (n, mean, M2) rather than (n, Σy, Σy²)
//!
//! Both merge exactly in exact arithmetic, and both are O(1) per event. They
//! differ in floating point. The textbook variance from sums,
//! (Σy² − (Σy)²/n)/(n − 1), subtracts two numbers of size n·mean² to get one
//! of size n·sd²: it loses about log10(mean²/sd²) significant digits, and
//! the rounding error of Σy² itself (≈ n·ε·Σy² when accumulated naively) is
//! multiplied by the same factor. For a latency metric with mean 200 ms and
//! sd 0.5 ms that is ~5 digits gone before any test runs, and with large
//! offsets (timestamps, prices in cents) the result can even be negative.
//! Welford's update and Chan et al.'s pairwise merge keep the centred sum of
//! squares M2 = Σ(y − ȳ)² directly, so the error stays ≈ ε relative to the
//! variance itself, whatever the offset; merging two partial states (two
//! sidecars, two time buckets) with Chan's formula is exact algebra, not an
//! approximation, so merged and single-pass results agree to rounding.
//! The same goes for the CUPED co-moment C = Σ(x − x̄)(y − ȳ) in
//! [`CoMoments`].
//!
//! Stores that already hold raw sums can still be read: [`Moments::from_sums`]
//! and [`CoMoments::from_sums`] convert, with the cancellation risk above
//! (documented there).

use serde::{Deserialize, Serialize};

use super::error::{Result, StatsError};

/// What a two-sample test needs from one group: its size, mean and sample
/// variance (ddof = 1). Implemented by [`Summary`] (the reference-case
/// format), [`Moments`] (the sidecar's aggregates) and
/// [`Proportion`](super::Proportion) (conversions as 0/1 outcomes).
pub trait GroupStats {
    /// Number of observations.
    fn n(&self) -> u64;
    /// Sample mean.
    fn mean(&self) -> f64;
    /// Sample variance with ddof = 1; NaN when n < 2.
    fn variance(&self) -> f64;
    /// Checks representation-specific invariants (e.g. sd ≥ 0).
    fn check(&self, _group: &'static str) -> Result<()> {
        Ok(())
    }
}

impl<T: GroupStats + ?Sized> GroupStats for &T {
    fn n(&self) -> u64 {
        (**self).n()
    }
    fn mean(&self) -> f64 {
        (**self).mean()
    }
    fn variance(&self) -> f64 {
        (**self).variance()
    }
    fn check(&self, group: &'static str) -> Result<()> {
        (**self).check(group)
    }
}

/// A validated group: n (as f64), mean, and variance (ddof = 1).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checked {
    pub n: f64,
    pub mean: f64,
    pub var: f64,
}

/// Validates a group for a two-sample test: n ≥ 2, finite mean, finite
/// non-negative variance.
pub(crate) fn checked(group: &'static str, g: &impl GroupStats) -> Result<Checked> {
    g.check(group)?;
    let n = g.n();
    if n < 2 {
        return Err(StatsError::TooFewObservations { group, n, min: 2 });
    }
    let mean = g.mean();
    if !mean.is_finite() {
        return Err(StatsError::NonFinite {
            what: "mean",
            value: mean,
        });
    }
    let var = g.variance();
    if !(var.is_finite() && var >= 0.0) {
        return Err(StatsError::InvalidParameter {
            name: "variance",
            value: var,
            expected: "finite and ≥ 0",
        });
    }
    Ok(Checked {
        n: n as f64,
        mean,
        var,
    })
}

/// A group given by its summary: `{n, mean, sd}` with sd the sample
/// standard deviation (ddof = 1), as in the reference cases.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub n: u64,
    pub mean: f64,
    pub sd: f64,
}

impl GroupStats for Summary {
    fn n(&self) -> u64 {
        self.n
    }
    fn mean(&self) -> f64 {
        self.mean
    }
    fn variance(&self) -> f64 {
        self.sd * self.sd
    }
    fn check(&self, _group: &'static str) -> Result<()> {
        if self.sd.is_finite() && self.sd >= 0.0 {
            Ok(())
        } else {
            Err(StatsError::InvalidParameter {
                name: "sd",
                value: self.sd,
                expected: "finite and ≥ 0",
            })
        }
    }
}

/// Count, mean and centred sum of squares M2 = Σ(y − ȳ)² of one metric in
/// one variant; see the module docs for why not raw sums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Moments {
    /// No observations.
    pub const fn new() -> Self {
        Moments {
            n: 0,
            mean: 0.0,
            m2: 0.0,
        }
    }

    /// Rebuilds a stored state. `m2` must be ≥ 0 and both finite.
    pub fn from_parts(n: u64, mean: f64, m2: f64) -> Result<Self> {
        if !mean.is_finite() {
            return Err(StatsError::NonFinite {
                what: "mean",
                value: mean,
            });
        }
        if !(m2.is_finite() && m2 >= 0.0) {
            return Err(StatsError::InvalidParameter {
                name: "m2",
                value: m2,
                expected: "finite and ≥ 0",
            });
        }
        if n == 0 && (mean != 0.0 || m2 != 0.0) {
            return Err(StatsError::InvalidParameter {
                name: "m2",
                value: m2,
                expected: "0 (with mean 0) when n = 0",
            });
        }
        Ok(Moments { n, mean, m2 })
    }

    /// Converts raw sums (n, Σy, Σy²) as other stores keep them.
    ///
    /// Risk: M2 = Σy² − (Σy)²/n cancels catastrophically when |mean| ≫ sd
    /// (see the module docs); a slightly negative result from rounding is
    /// clamped to 0. Prefer accumulating [`Moments`] directly.
    pub fn from_sums(n: u64, sum: f64, sum_sq: f64) -> Result<Self> {
        if !sum.is_finite() {
            return Err(StatsError::NonFinite {
                what: "sum",
                value: sum,
            });
        }
        if !(sum_sq.is_finite() && sum_sq >= 0.0) {
            return Err(StatsError::InvalidParameter {
                name: "sum of squares",
                value: sum_sq,
                expected: "finite and ≥ 0",
            });
        }
        if n == 0 {
            return Moments::from_parts(0, sum, sum_sq);
        }
        let mean = sum / n as f64;
        let m2 = (sum_sq - sum * mean).max(0.0);
        Ok(Moments { n, mean, m2 })
    }

    /// Moments of a slice of observations.
    pub fn from_values(values: &[f64]) -> Self {
        values.iter().copied().collect()
    }

    /// Adds one observation (Welford's update).
    pub fn push(&mut self, y: f64) {
        self.n += 1;
        let d = y - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (y - self.mean);
    }

    /// Adds the observations summarized by `other` (Chan et al.'s pairwise
    /// update): with δ = ȳ_b − ȳ_a, n = n_a + n_b,
    /// ȳ = ȳ_a + δ·n_b/n and M2 = M2_a + M2_b + δ²·n_a·n_b/n.
    pub fn merge(&mut self, other: &Moments) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let d = other.mean - self.mean;
        self.mean += d * (nb / n);
        self.m2 += other.m2 + d * d * (na * nb / n);
        self.n += other.n;
    }

    /// `self` merged with `other`, by value.
    pub fn merged(mut self, other: &Moments) -> Self {
        self.merge(other);
        self
    }

    /// Number of observations.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Sample mean (0 when empty).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Σ(y − ȳ)².
    pub fn m2(&self) -> f64 {
        self.m2
    }

    /// Σy.
    pub fn sum(&self) -> f64 {
        self.mean * self.n as f64
    }

    /// Sample variance, ddof = 1 (NaN when n < 2).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            f64::NAN
        } else {
            self.m2 / (self.n - 1) as f64
        }
    }

    /// Sample standard deviation, ddof = 1 (NaN when n < 2).
    pub fn sd(&self) -> f64 {
        self.variance().sqrt()
    }

    /// `{n, mean, sd}` as in the reference-case format.
    pub fn summary(&self) -> Summary {
        Summary {
            n: self.n,
            mean: self.mean,
            sd: self.sd(),
        }
    }
}

impl GroupStats for Moments {
    fn n(&self) -> u64 {
        self.n
    }
    fn mean(&self) -> f64 {
        self.mean
    }
    fn variance(&self) -> f64 {
        Moments::variance(self)
    }
}

impl Extend<f64> for Moments {
    fn extend<I: IntoIterator<Item = f64>>(&mut self, iter: I) {
        for y in iter {
            self.push(y);
        }
    }
}

impl FromIterator<f64> for Moments {
    fn from_iter<I: IntoIterator<Item = f64>>(iter: I) -> Self {
        let mut m = Moments::new();
        m.extend(iter);
        m
    }
}

/// Joint moments of a metric y and its pre-experiment covariate x, for
/// CUPED: n, both means, both centred sums of squares and the centred
/// cross-product C = Σ(x − x̄)(y − ȳ).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CoMoments {
    n: u64,
    mean_x: f64,
    mean_y: f64,
    m2_x: f64,
    m2_y: f64,
    c_xy: f64,
}

impl CoMoments {
    /// No observations.
    pub const fn new() -> Self {
        CoMoments {
            n: 0,
            mean_x: 0.0,
            mean_y: 0.0,
            m2_x: 0.0,
            m2_y: 0.0,
            c_xy: 0.0,
        }
    }

    /// Co-moments of paired slices (`x[i]` is the covariate of `y[i]`).
    pub fn from_xy(x: &[f64], y: &[f64]) -> Result<Self> {
        if x.len() != y.len() {
            return Err(StatsError::LengthMismatch {
                what: "x and y",
                left: x.len(),
                right: y.len(),
            });
        }
        let mut m = CoMoments::new();
        for (&xi, &yi) in x.iter().zip(y) {
            m.push(xi, yi);
        }
        Ok(m)
    }

    /// Converts raw sums (n, Σy, Σy², Σx, Σx², Σxy), with the same
    /// cancellation risk as [`Moments::from_sums`] (the cross-product too).
    pub fn from_sums(
        n: u64,
        sum_y: f64,
        sum_y2: f64,
        sum_x: f64,
        sum_x2: f64,
        sum_xy: f64,
    ) -> Result<Self> {
        let y = Moments::from_sums(n, sum_y, sum_y2)?;
        let x = Moments::from_sums(n, sum_x, sum_x2)?;
        if !sum_xy.is_finite() {
            return Err(StatsError::NonFinite {
                what: "sum of x·y",
                value: sum_xy,
            });
        }
        let c_xy = if n == 0 { 0.0 } else { sum_xy - sum_x * y.mean };
        Ok(CoMoments {
            n,
            mean_x: x.mean,
            mean_y: y.mean,
            m2_x: x.m2,
            m2_y: y.m2,
            c_xy,
        })
    }

    /// Adds one (x, y) pair (Welford's update, extended to the
    /// cross-product).
    pub fn push(&mut self, x: f64, y: f64) {
        self.n += 1;
        let n = self.n as f64;
        let dx = x - self.mean_x;
        self.mean_x += dx / n;
        let dy = y - self.mean_y;
        self.mean_y += dy / n;
        self.m2_x += dx * (x - self.mean_x);
        self.m2_y += dy * (y - self.mean_y);
        self.c_xy += dx * (y - self.mean_y);
    }

    /// Adds the pairs summarized by `other` (Chan et al.'s update:
    /// C = C_a + C_b + δx·δy·n_a·n_b/n, and likewise for M2).
    pub fn merge(&mut self, other: &CoMoments) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let f = na * nb / n;
        let dx = other.mean_x - self.mean_x;
        let dy = other.mean_y - self.mean_y;
        self.mean_x += dx * (nb / n);
        self.mean_y += dy * (nb / n);
        self.m2_x += other.m2_x + dx * dx * f;
        self.m2_y += other.m2_y + dy * dy * f;
        self.c_xy += other.c_xy + dx * dy * f;
        self.n += other.n;
    }

    /// `self` merged with `other`, by value.
    pub fn merged(mut self, other: &CoMoments) -> Self {
        self.merge(other);
        self
    }

    /// Number of pairs.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Moments of the metric y alone.
    pub fn y(&self) -> Moments {
        Moments {
            n: self.n,
            mean: self.mean_y,
            m2: self.m2_y,
        }
    }

    /// Moments of the covariate x alone.
    pub fn x(&self) -> Moments {
        Moments {
            n: self.n,
            mean: self.mean_x,
            m2: self.m2_x,
        }
    }

    /// Σ(x − x̄)(y − ȳ).
    pub fn c_xy(&self) -> f64 {
        self.c_xy
    }

    /// Sample covariance of x and y, ddof = 1 (NaN when n < 2).
    pub fn covariance(&self) -> f64 {
        if self.n < 2 {
            f64::NAN
        } else {
            self.c_xy / (self.n - 1) as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_var(v: &[f64]) -> f64 {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        v.iter().map(|y| (y - m) * (y - m)).sum::<f64>() / (v.len() - 1) as f64
    }

    #[test]
    fn mean_and_sample_variance() {
        let m = Moments::from_values(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(m.n(), 8);
        assert_eq!(m.mean(), 5.0);
        assert!((m.variance() - 32.0 / 7.0).abs() < 1e-14);
        assert!((m.sum() - 40.0).abs() < 1e-12);
    }

    #[test]
    fn fewer_than_two_observations_have_no_variance() {
        assert!(Moments::new().variance().is_nan());
        assert!(Moments::from_values(&[3.0]).variance().is_nan());
        let err = checked("control", &Moments::from_values(&[3.0])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "n must be ≥ 2 in each group (control has n = 1)"
        );
    }

    #[test]
    fn zero_variance_is_exactly_zero() {
        let m = Moments::from_values(&[0.1; 1000]);
        assert_eq!(m.m2(), 0.0);
        assert_eq!(m.variance(), 0.0);
    }

    #[test]
    fn merging_with_empty_is_identity() {
        let a = Moments::from_values(&[1.0, 2.0, 6.0]);
        assert_eq!(a.merged(&Moments::new()), a);
        assert_eq!(Moments::new().merged(&a), a);
    }

    #[test]
    fn large_offset_keeps_the_variance_where_raw_sums_lose_it() {
        // Values 1e9 + {0, 1, 2, ...}: the true variance of 0..1000 is
        // 1000·1001/12 ≈ 83416.67.
        let v: Vec<f64> = (0..1001).map(|i| 1e9 + f64::from(i)).collect();
        let truth = 1001.0 * 1002.0 / 12.0;
        let m = Moments::from_values(&v);
        assert!((m.variance() - truth).abs() / truth < 1e-9);
        assert!((naive_var(&v) - truth).abs() / truth < 1e-9);
        let sum: f64 = v.iter().sum();
        let sum_sq: f64 = v.iter().map(|y| y * y).sum();
        let from_sums = Moments::from_sums(1001, sum, sum_sq).unwrap();
        // The raw-sum route is visibly off (that is the documented risk).
        assert!((from_sums.variance() - truth).abs() / truth > 1e-6);
    }

    #[test]
    fn from_sums_agrees_on_well_conditioned_data() {
        let v = [1.5, -2.0, 3.25, 0.0, 7.0];
        let m = Moments::from_values(&v);
        let s = Moments::from_sums(5, v.iter().sum(), v.iter().map(|y| y * y).sum()).unwrap();
        assert!((m.mean() - s.mean()).abs() < 1e-15);
        assert!((m.variance() - s.variance()).abs() < 1e-13);
        assert!(Moments::from_sums(0, 1.0, 1.0).is_err());
        assert!(Moments::from_sums(3, f64::NAN, 1.0).is_err());
    }

    #[test]
    fn co_moments_match_two_pass_formulas_and_merge() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.5, 7.0];
        let y = [2.1, 3.9, 6.2, 8.1, 11.0, 13.5];
        let c = CoMoments::from_xy(&x, &y).unwrap();
        let mx = x.iter().sum::<f64>() / 6.0;
        let my = y.iter().sum::<f64>() / 6.0;
        let cov = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - mx) * (b - my))
            .sum::<f64>()
            / 5.0;
        assert!((c.covariance() - cov).abs() < 1e-13);
        assert!((c.x().variance() - naive_var(&x)).abs() < 1e-13);
        assert!((c.y().variance() - naive_var(&y)).abs() < 1e-13);
        let merged = CoMoments::from_xy(&x[..2], &y[..2])
            .unwrap()
            .merged(&CoMoments::from_xy(&x[2..], &y[2..]).unwrap());
        assert!((merged.covariance() - cov).abs() < 1e-13);
        let sums = CoMoments::from_sums(
            6,
            y.iter().sum(),
            y.iter().map(|v| v * v).sum(),
            x.iter().sum(),
            x.iter().map(|v| v * v).sum(),
            x.iter().zip(&y).map(|(a, b)| a * b).sum(),
        )
        .unwrap();
        assert!((sums.covariance() - cov).abs() < 1e-12);
        assert!(CoMoments::from_xy(&x, &y[..3]).is_err());
    }
}
