//! Quantile metrics (p50/p95/p99 of a per-event value such as latency) and
//! the confidence interval of their difference between variants, from
//! mergeable histograms.
//!
//! # Method
//!
//! Each arm's quantile q_ν is read off its histogram's piecewise-linear CDF
//! (values uniform inside a bucket), and its standard error comes from the
//! *Woodruff interval* (Woodruff 1952; Sitter & Wu 2001): the sample
//! quantile's rank is asymptotically normal, P(X ≤ q̂_ν) ≈ N(ν, ν(1 − ν)/n),
//! so the quantiles at the ranks
//!
//! ν± = ν ± z·√(ν(1 − ν)/n),   z = z_{0.975},
//!
//! bracket q_ν, and se(q̂_ν) = (q̂_{ν+} − q̂_{ν−})/(2z). This is the
//! order-statistic (binomial) interval of a quantile turned into a standard
//! error: its width estimates √(ν(1 − ν)/n)/f(q_ν) without estimating the
//! density f by a kernel of our choosing (the rank window is the bandwidth,
//! and it shrinks as n grows). It is GrowthBook's method: its warehouse
//! queries return the quantiles at exactly these ranks and gbstats's
//! `QuantileStatistic` turns their width into the variance the same way, so
//! results can be compared. Arms are independent, so
//!
//! * absolute: estimate = q̂_t − q̂_c, se = √(se_t² + se_c²);
//! * relative: estimate = (q̂_t − q̂_c)/q̂_c, se by the delta method,
//!   √(se_t²/q̂_c² + q̂_t²·se_c²/q̂_c⁴) (q̂_c > 0 required);
//! * interval estimate ∓ t_{1−α/2, df}·se and the two-sided Student t(df)
//!   p-value, with df by Welch–Satterthwaite over the two variance terms,
//!   each with its arm's effective df (below).
//!
//! **Effective df.** The width q̂_{ν+} − q̂_{ν−} spans the k = 2z·√(ν(1 − ν)n)
//! events between the two ranks, so it is (to first order) a sum of k
//! spacings of order statistics, Gamma(k)-distributed on the probability
//! scale: its relative variance is 1/k, that of se² is 4/k, which is what
//! a χ² variance estimate with k/2 degrees of freedom has. Each arm's se
//! therefore carries df = k/2 = z·√(ν(1 − ν)n) (31 for the median of 1 000
//! events, 86 for p95 of 10 000). A normal reference (GrowthBook's t has a
//! Welch df over *events*, i.e. ≈ normal) under-covers the median at
//! 1 000 events (0.941–0.945 in the simulation); with the effective df it
//! is 0.952–0.955, and at large n the two are the same.
//!
//! # Why histograms, and which
//!
//! The sidecar aggregates by addition (several replicas, time buckets), so
//! the sufficient statistic must merge exactly: a [`Histogram`] with fixed
//! bounds does (counts add), sample quantiles and t-digests do not. Its
//! bucket width limits accuracy: inside a bucket the value is interpolated,
//! which is off by a fraction of the bucket's width when the density is not
//! flat there, and that error does not shrink with n while the se does. So
//! the buckets must be narrow relative to the se that is wanted: the
//! [`LogHistogram`] (buckets a fixed 1 % wide on a log scale by default,
//! sparse, any range) keeps the interpolation error near 1e-4 relative,
//! below the se up to millions of events per arm. The filter's 25-bucket
//! health histogram (bounds ×1.5–2 apart) is fine for the p95 guardrail's
//! exceedance test but would bias a quantile's interval at large n.
//!
//! Validated by simulation in `tests/stats_quantile.rs`: the coverage of the
//! 95 % interval of the difference (absolute and relative) lies within
//! [0.94, 0.96] for lognormal and exponential-mixture latencies, for
//! p50/p95/p99 and from [`validated_min_n`] (≥ [`MIN_WINDOW_EVENTS`] events
//! in the rank window: 938 events per arm for p50, 4 933 for p95, 23 666
//! for p99) to 10⁶ events per arm. Below that the interval still exists (it
//! is refused only when ν± leave (0, 1)) but its coverage drifts: mostly
//! above 95 % in the tails, where the window is skewed and overstates the
//! se (0.975 for p99 at 2 958 events), and below for the relative interval
//! of a large effect (0.940 for a +57 % p95 at 616 events, where the delta
//! method's ratio is skewed); see the coverage table in EVALUATION.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{check_alpha, check_open_unit, Result, StatsError};
use super::special::{t_two_sided_p, t_upper_quantile};

/// The z of the Woodruff rank window: z_{0.975}, whatever the α of the
/// interval (it sets the window in which the density is measured, not the
/// interval's level; GrowthBook uses the same).
pub const WOODRUFF_Z: f64 = 1.959_963_984_540_054;

/// Events per arm in the Woodruff rank window (2z·√(ν(1 − ν)·n), twice
/// the effective df) from which the interval's coverage was validated: n ≥
/// 938 for p50, 4 933 for p95, 23 666 for p99 (see the module docs).
pub const MIN_WINDOW_EVENTS: f64 = 60.0;

/// The smallest n per arm with at least [`MIN_WINDOW_EVENTS`] events in
/// the rank window of the ν-quantile.
pub fn validated_min_n(q: f64) -> u64 {
    let k = MIN_WINDOW_EVENTS / (2.0 * WOODRUFF_Z);
    (k * k / (q * (1.0 - q))).ceil() as u64
}

/// Counts over buckets with fixed bounds b_0 ≤ b_1 ≤ … ≤ b_K: bucket i holds
/// values in (b_i, b_{i+1}] (a bucket of width 0 is a point mass). Merges
/// by adding counts when the bounds are the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
}

impl Histogram {
    /// Checks that `bounds` are finite and non-decreasing and that there is
    /// one count per bucket (`counts.len() + 1 == bounds.len()`).
    pub fn new(bounds: Vec<f64>, counts: Vec<u64>) -> Result<Self> {
        Self::checked("histogram", bounds, counts)
    }

    pub(crate) fn checked(group: &'static str, bounds: Vec<f64>, counts: Vec<u64>) -> Result<Self> {
        let bad = |reason: String| Err(StatsError::InvalidHistogram { group, reason });
        if counts.is_empty() {
            return bad("it has no buckets".into());
        }
        if bounds.len() != counts.len() + 1 {
            return bad(format!(
                "{} counts need {} bounds, got {}",
                counts.len(),
                counts.len() + 1,
                bounds.len()
            ));
        }
        if let Some(i) = bounds.iter().position(|b| !b.is_finite()) {
            return bad(format!("bound {i} is {}", bounds[i]));
        }
        if let Some(i) = bounds.windows(2).position(|w| w[1] < w[0]) {
            return bad(format!(
                "bounds must not decrease (bound {} is {} after {})",
                i + 1,
                bounds[i + 1],
                bounds[i]
            ));
        }
        if counts
            .iter()
            .try_fold(0u64, |a, &c| a.checked_add(c))
            .is_none()
        {
            return bad("the counts overflow u64".into());
        }
        Ok(Histogram { bounds, counts })
    }

    /// The bucket bounds.
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Counts per bucket.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Number of values.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds another histogram with the same bounds.
    pub fn merge(&mut self, other: &Histogram) -> Result<()> {
        if self.bounds != other.bounds {
            return Err(StatsError::InvalidHistogram {
                group: "merge",
                reason: "the two histograms have different bounds".into(),
            });
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        Ok(())
    }

    /// The p-quantile (p in [0, 1]) of the piecewise-linear CDF: the value
    /// at rank p·n, interpolated linearly inside its bucket. `None` when
    /// the histogram is empty or p is outside [0, 1].
    pub fn quantile(&self, p: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 || !(0.0..=1.0).contains(&p) {
            return None;
        }
        let rank = p * total as f64;
        let mut cum = 0.0;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let c = c as f64;
            if cum + c >= rank {
                let (lo, hi) = (self.bounds[i], self.bounds[i + 1]);
                let frac = ((rank - cum) / c).clamp(0.0, 1.0);
                return Some(lo + frac * (hi - lo));
            }
            cum += c;
        }
        // Rounding left the rank above the last count: the top of the last
        // non-empty bucket.
        let last = self.counts.iter().rposition(|&c| c > 0)?;
        Some(self.bounds[last + 1])
    }
}

/// A sparse histogram with log-scale buckets of a fixed growth factor γ:
/// bucket k holds values in (γ^k, γ^(k+1)], for any integer k, so any
/// positive range is covered with the same relative resolution (a value is
/// placed within a factor γ, and interpolation inside the bucket does much
/// better). Values ≤ 0 are counted as a point mass at 0. Merges exactly by
/// adding counts (same γ).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogHistogram {
    growth: f64,
    zeros: u64,
    counts: BTreeMap<i32, u64>,
}

/// Default growth factor of [`LogHistogram`]: buckets 1 % wide.
pub const DEFAULT_GROWTH: f64 = 1.01;

impl Default for LogHistogram {
    fn default() -> Self {
        LogHistogram {
            growth: DEFAULT_GROWTH,
            zeros: 0,
            counts: BTreeMap::new(),
        }
    }
}

impl LogHistogram {
    /// An empty histogram with growth factor γ in (1, 2].
    pub fn new(growth: f64) -> Result<Self> {
        if !(growth > 1.0 && growth <= 2.0) {
            return Err(StatsError::InvalidParameter {
                name: "growth",
                value: growth,
                expected: "in (1, 2]",
            });
        }
        Ok(LogHistogram {
            growth,
            ..LogHistogram::default()
        })
    }

    /// The growth factor γ.
    pub fn growth(&self) -> f64 {
        self.growth
    }

    /// The bucket of a positive value: k with γ^k < v ≤ γ^(k+1) (up to the
    /// rounding of the logarithm at the bounds themselves).
    fn index(&self, v: f64) -> i32 {
        let k = (v.ln() / self.growth.ln()).ceil() - 1.0;
        k.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
    }

    /// Adds one value (NaN is ignored; +∞ goes to the top bucket).
    pub fn push(&mut self, v: f64) {
        self.push_n(v, 1);
    }

    /// Adds `count` copies of a value.
    pub fn push_n(&mut self, v: f64, count: u64) {
        if v.is_nan() || count == 0 {
            return;
        }
        if v <= 0.0 {
            self.zeros = self.zeros.saturating_add(count);
            return;
        }
        let k = self.index(v.min(f64::MAX));
        let c = self.counts.entry(k).or_insert(0);
        *c = c.saturating_add(count);
    }

    /// Adds another histogram with the same growth factor.
    pub fn merge(&mut self, other: &LogHistogram) -> Result<()> {
        if self.growth != other.growth {
            return Err(StatsError::InvalidHistogram {
                group: "merge",
                reason: format!(
                    "growth factors differ ({} vs {})",
                    self.growth, other.growth
                ),
            });
        }
        self.zeros = self.zeros.saturating_add(other.zeros);
        for (&k, &c) in &other.counts {
            let e = self.counts.entry(k).or_insert(0);
            *e = e.saturating_add(c);
        }
        Ok(())
    }

    /// Number of values.
    pub fn total(&self) -> u64 {
        self.counts
            .values()
            .fold(self.zeros, |a, &c| a.saturating_add(c))
    }

    /// The dense [`Histogram`] over the occupied range (with a point-mass
    /// bucket [0, 0] first when there are values ≤ 0).
    pub fn to_histogram(&self) -> Histogram {
        let (Some((&lo, _)), Some((&hi, _))) =
            (self.counts.first_key_value(), self.counts.last_key_value())
        else {
            return Histogram {
                bounds: vec![0.0, 0.0],
                counts: vec![self.zeros],
            };
        };
        let mut bounds = Vec::with_capacity((hi - lo) as usize + 3);
        let mut counts = Vec::with_capacity((hi - lo) as usize + 2);
        let ln_g = self.growth.ln();
        let edge = |k: i32| (f64::from(k) * ln_g).exp().min(f64::MAX);
        if self.zeros > 0 {
            // The point mass [0, 0], then the empty gap (0, γ^lo].
            bounds.extend([0.0, 0.0]);
            counts.extend([self.zeros, 0]);
        }
        bounds.push(edge(lo));
        for k in lo..=hi {
            bounds.push(edge(k + 1));
            counts.push(self.counts.get(&k).copied().unwrap_or(0));
        }
        Histogram { bounds, counts }
    }
}

/// Result of [`quantile_test`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct QuantileResult {
    /// The control's ν-quantile.
    pub control_quantile: f64,
    /// The treatment's ν-quantile.
    pub treatment_quantile: f64,
    /// Woodruff standard error of the control's quantile.
    pub control_se: f64,
    /// Woodruff standard error of the treatment's quantile.
    pub treatment_se: f64,
    /// q_t − q_c, or (q_t − q_c)/q_c when relative.
    pub estimate: f64,
    /// Standard error of `estimate`.
    pub se: f64,
    /// Welch–Satterthwaite df over the arms' effective df.
    pub df: f64,
    /// Two-sided Student t(df) p-value of estimate/se.
    pub p_value: f64,
    /// estimate − t_{1−α/2, df}·se.
    pub ci_low: f64,
    /// estimate + t_{1−α/2, df}·se.
    pub ci_high: f64,
}

/// One arm's quantile estimate: [`quantile_se`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct QuantileEstimate {
    /// The ν-quantile of the histogram.
    pub quantile: f64,
    /// Its Woodruff standard error, (q̂_{ν+} − q̂_{ν−})/(2z).
    pub se: f64,
    /// Effective degrees of freedom of `se`: z·√(ν(1 − ν)·n), half the
    /// number of events between the ranks ν− and ν+ (see the module docs).
    pub df: f64,
}

/// The ν-quantile of one arm, its Woodruff standard error and the
/// effective df of that standard error.
///
/// Errors when the rank window ν ± z·√(ν(1 − ν)/n) leaves (0, 1), i.e. when
/// n ≤ z²·max(ν/(1 − ν), (1 − ν)/ν) (≈ 381 events for p99): the data cannot
/// bracket the quantile.
pub fn quantile_se(h: &Histogram, q: f64, group: &'static str) -> Result<QuantileEstimate> {
    check_open_unit("q", q)?;
    let n = h.total();
    let half = WOODRUFF_Z * (q * (1.0 - q) / n as f64).sqrt();
    let (lo, hi) = (q - half, q + half);
    if n == 0 || lo <= 0.0 || hi >= 1.0 {
        let need = WOODRUFF_Z * WOODRUFF_Z * (q / (1.0 - q)).max((1.0 - q) / q);
        return Err(StatsError::TooFewObservations {
            group,
            n,
            min: need.floor() as u64 + 1,
        });
    }
    let at = |p: f64| {
        h.quantile(p).ok_or(StatsError::InvalidHistogram {
            group,
            reason: "no quantile".into(),
        })
    };
    let (est, l, u) = (at(q)?, at(lo)?, at(hi)?);
    Ok(QuantileEstimate {
        quantile: est,
        se: (u - l) / (2.0 * WOODRUFF_Z),
        df: half * n as f64,
    })
}

/// Test of the ν-quantile (`q`, e.g. 0.95) of treatment vs control at
/// two-sided `alpha` (see the module docs for the method).
///
/// Errors when an arm has too few values to bracket the quantile, when
/// both standard errors are 0 (every value in one point mass), or
/// (relative) when the control's quantile is not positive.
pub fn quantile_test(
    control: &Histogram,
    treatment: &Histogram,
    q: f64,
    alpha: f64,
    relative: bool,
) -> Result<QuantileResult> {
    check_alpha(alpha)?;
    let c = quantile_se(control, q, "control")?;
    let t = quantile_se(treatment, q, "treatment")?;
    let (qc, qt) = (c.quantile, t.quantile);
    let diff = qt - qc;
    // The two variance terms of the estimate (treatment's, control's).
    let (estimate, vt, vc) = if relative {
        if qc <= 0.0 {
            return Err(StatsError::ZeroRelativeBaseline { what: "quantile" });
        }
        let q2 = qc * qc;
        (
            diff / qc,
            t.se * t.se / q2,
            qt * qt * c.se * c.se / (q2 * q2),
        )
    } else {
        (diff, t.se * t.se, c.se * c.se)
    };
    let var = vt + vc;
    let se = var.sqrt();
    if !(se > 0.0 && se.is_finite()) {
        return Err(StatsError::ZeroStandardError {
            reason: "both arms' quantiles have zero width (all values in one point)",
        });
    }
    // Welch–Satterthwaite over the two terms, each with its arm's df.
    let df = var * var / (vt * vt / t.df + vc * vc / c.df);
    let z = t_upper_quantile(alpha / 2.0, df);
    Ok(QuantileResult {
        control_quantile: qc,
        treatment_quantile: qt,
        control_se: c.se,
        treatment_se: t.se,
        estimate,
        se,
        df,
        p_value: t_two_sided_p(estimate / se, df),
        ci_low: estimate - z * se,
        ci_high: estimate + z * se,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_interpolate_and_merge() {
        let h = Histogram::new(vec![0.0, 10.0, 20.0, 40.0], vec![10, 0, 30]).unwrap();
        assert_eq!(h.total(), 40);
        assert_eq!(h.quantile(0.0), Some(0.0));
        assert_eq!(h.quantile(0.125), Some(5.0));
        assert_eq!(h.quantile(0.25), Some(10.0));
        assert_eq!(h.quantile(0.625), Some(30.0));
        assert_eq!(h.quantile(1.0), Some(40.0));
        assert_eq!(h.quantile(1.5), None);
        let mut m = h.clone();
        m.merge(&h).unwrap();
        assert_eq!(m.counts(), &[20, 0, 60]);
        assert_eq!(m.quantile(0.625), Some(30.0));
        let other = Histogram::new(vec![0.0, 1.0], vec![1]).unwrap();
        assert!(m.merge(&other).is_err());
    }

    #[test]
    fn invalid_histograms_are_refused() {
        assert!(Histogram::new(vec![0.0, 1.0], vec![]).is_err());
        assert!(Histogram::new(vec![0.0, 1.0], vec![1, 2]).is_err());
        assert!(Histogram::new(vec![0.0, 2.0, 1.0], vec![1, 2]).is_err());
        assert!(Histogram::new(vec![0.0, f64::NAN], vec![1]).is_err());
        assert!(Histogram::new(vec![0.0, 1.0, 2.0], vec![u64::MAX, 1]).is_err());
        // A point mass (zero-width bucket) is allowed.
        let p = Histogram::new(vec![5.0, 5.0, 6.0], vec![3, 1]).unwrap();
        assert_eq!(p.quantile(0.5), Some(5.0));
    }

    #[test]
    fn log_histogram_buckets_are_growth_wide_and_merge() {
        let mut h = LogHistogram::default();
        for v in [1.0, 1.005, 100.0, 100.5, 0.0, -3.0] {
            h.push(v);
        }
        h.push(f64::NAN);
        assert_eq!(h.total(), 6);
        let d = h.to_histogram();
        assert_eq!(d.total(), 6);
        // Every value lies in a bucket whose bounds are a factor 1.01 apart.
        for v in [1.005f64, 100.0, 100.5] {
            let i = d
                .bounds()
                .windows(2)
                .position(|w| w[0] < v && v <= w[1] * (1.0 + 1e-12))
                .unwrap();
            assert!((d.bounds()[i + 1] / d.bounds()[i] - 1.01).abs() < 1e-9);
            assert!(d.counts()[i] >= 1);
        }
        assert_eq!(d.quantile(0.2), Some(0.0));
        let mut a = LogHistogram::default();
        a.push(3.0);
        a.merge(&h).unwrap();
        assert_eq!(a.total(), 7);
        assert!(a.merge(&LogHistogram::new(1.02).unwrap()).is_err());
        assert!(LogHistogram::new(1.0).is_err());
        assert_eq!(LogHistogram::default().to_histogram().total(), 0);
    }

    #[test]
    fn woodruff_se_matches_the_asymptotic_formula() {
        // Uniform(0, 1) in 1 000 equal buckets, 10⁶ values: f = 1, so
        // se(q̂_ν) = √(ν(1 − ν)/n).
        let n = 1_000_000u64;
        let bounds: Vec<f64> = (0..=1000).map(|i| f64::from(i) / 1000.0).collect();
        let h = Histogram::new(bounds, vec![n / 1000; 1000]).unwrap();
        for q in [0.5, 0.95, 0.99] {
            let e = quantile_se(&h, q, "control").unwrap();
            let (est, se) = (e.quantile, e.se);
            assert!((est - q).abs() < 1e-12);
            let want = (q * (1.0 - q) / n as f64).sqrt();
            assert!((se - want).abs() / want < 1e-9, "{q}: {se} vs {want}");
        }
    }

    #[test]
    fn too_few_values_for_the_tail_is_an_error() {
        let bounds: Vec<f64> = (0..=100).map(f64::from).collect();
        let h = Histogram::new(bounds.clone(), vec![3; 100]).unwrap();
        let e = quantile_se(&h, 0.99, "control").unwrap_err();
        assert_eq!(
            e,
            StatsError::TooFewObservations {
                group: "control",
                n: 300,
                min: 381
            }
        );
        assert!(quantile_se(&h, 0.5, "control").is_ok());
        assert!(quantile_se(&h, 1.0, "control").is_err());
        let r = quantile_test(&h, &h, 0.5, 0.05, true).unwrap();
        assert_eq!((r.estimate, r.p_value), (0.0, 1.0));
        let point = Histogram::new(vec![1.0, 1.0], vec![1000]).unwrap();
        assert!(matches!(
            quantile_test(&point, &point, 0.5, 0.05, false),
            Err(StatsError::ZeroStandardError { .. })
        ));
        let zero = Histogram::new(vec![0.0, 0.0, 1.0], vec![900, 100]).unwrap();
        assert_eq!(
            quantile_test(&zero, &h, 0.5, 0.05, true),
            Err(StatsError::ZeroRelativeBaseline { what: "quantile" })
        );
    }
}
