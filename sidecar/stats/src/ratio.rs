//! Ratio metrics: Σm/Σd over users, e.g. clicks per impression or revenue
//! per session, where numerator m and denominator d are both per user
//! (kind `ratio` of `sidecar/stats/README.md`, GrowthBook's
//! `RatioStatistic`).
//!
//! The unit of randomization is the user, not the impression, so the
//! impressions of one user are not independent and the ratio's variance is
//! *not* r(1 − r)/Σd or v_m/Σd. The delta method linearizes r = m̄/d̄ around
//! the arm's means: r̂ − r ≈ (m̄ − r·d̄)/d̄, whose per-user variance is
//!
//! V = v_m/d̄² − 2·cov(m, d)·m̄/d̄³ + m̄²·v_d/d̄⁴ = var(m − r·d)/d̄²,
//!
//! and Var(r̂) ≈ V/n. The second form is how it is computed here: from the
//! centred sums of [`CoMoments`] it is (M2_m − 2r·C + r²·M2_d)/((n − 1)·d̄²),
//! which cannot go negative from cancellation the way the three-term form
//! can. The test itself is [`effect`](super::effect).

use serde::{Deserialize, Serialize};

use super::effect::{check_cross, check_sums, effect, Arm, EffectResult};
use super::error::{Result, StatsError};
use super::moments::{CoMoments, Moments};

/// Mergeable sufficient statistics of a ratio metric in one arm: users,
/// and the means, centred sums of squares and centred cross-product of the
/// per-user numerator m and denominator d (a [`CoMoments`] with x = d and
/// y = m, so it merges with Chan's formulas like every other aggregate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RatioMoments(CoMoments);

impl RatioMoments {
    /// No users.
    pub const fn new() -> Self {
        RatioMoments(CoMoments::new())
    }

    /// Adds one user's numerator and denominator.
    pub fn push(&mut self, numerator: f64, denominator: f64) {
        self.0.push(denominator, numerator);
    }

    /// Adds the users summarized by `other`.
    pub fn merge(&mut self, other: &RatioMoments) {
        self.0.merge(&other.0);
    }

    /// From raw sums as the reference cases (and a warehouse query) give
    /// them: n, Σm, Σm², Σd, Σd², Σm·d. Rejects sums that no data can
    /// produce; otherwise converts with the cancellation risk documented at
    /// [`Moments::from_sums`].
    pub fn from_sums(
        group: &'static str,
        n: u64,
        num_sum: f64,
        num_sum_sq: f64,
        den_sum: f64,
        den_sum_sq: f64,
        sum_products: f64,
    ) -> Result<Self> {
        check_sums(group, "the numerator", n, num_sum, num_sum_sq)?;
        check_sums(group, "the denominator", n, den_sum, den_sum_sq)?;
        let m = CoMoments::from_sums(n, num_sum, num_sum_sq, den_sum, den_sum_sq, sum_products)?;
        check_cross(
            group,
            "numerator × denominator",
            m.c_xy(),
            m.x().m2(),
            m.y().m2(),
            (num_sum_sq * den_sum_sq).sqrt(),
        )?;
        Ok(RatioMoments(m))
    }

    /// Users.
    pub fn n(&self) -> u64 {
        self.0.n()
    }

    /// Moments of the per-user numerator.
    pub fn numerator(&self) -> Moments {
        self.0.y()
    }

    /// Moments of the per-user denominator.
    pub fn denominator(&self) -> Moments {
        self.0.x()
    }

    /// Σm/Σd (NaN when Σd = 0).
    pub fn ratio(&self) -> f64 {
        self.0.y().mean() / self.0.x().mean()
    }

    /// Sample covariance of numerator and denominator (ddof = 1).
    pub fn covariance(&self) -> f64 {
        self.0.covariance()
    }

    /// Delta-method per-user variance V of the ratio (see the module docs);
    /// Var(ratio) ≈ V/n.
    pub fn ratio_variance(&self) -> f64 {
        let (m, d) = (self.0.y(), self.0.x());
        let r = self.ratio();
        let m2 = (m.m2() - 2.0 * r * self.0.c_xy() + r * r * d.m2()).max(0.0);
        m2 / ((self.n() as f64 - 1.0) * d.mean() * d.mean())
    }

    /// Checks n ≥ 2 and Σd ≠ 0; returns the arm for the test.
    fn arm(&self, group: &'static str) -> Result<(f64, Arm)> {
        let n = self.n();
        if n < 2 {
            return Err(StatsError::TooFewObservations { group, n, min: 2 });
        }
        let d = self.0.x().mean();
        if d == 0.0 {
            return Err(StatsError::ZeroDenominator { group });
        }
        let r = self.ratio();
        if !r.is_finite() {
            return Err(StatsError::NonFinite {
                what: "ratio",
                value: r,
            });
        }
        Ok((
            r,
            Arm {
                n: n as f64,
                unadjusted: r,
                var: self.ratio_variance(),
            },
        ))
    }
}

/// Ratio metric test of treatment vs control at two-sided `alpha`:
/// r_t − r_c, or (r_t − r_c)/r_c when `relative`, with the delta-method
/// standard error, Welch–Satterthwaite df and Student t p-value and
/// interval of `sidecar/stats/README.md`.
///
/// Errors when an arm has fewer than 2 users or a zero denominator sum,
/// when both arms' ratio variances are 0, or (relative) when r_c = 0.
pub fn ratio(
    control: &RatioMoments,
    treatment: &RatioMoments,
    alpha: f64,
    relative: bool,
) -> Result<EffectResult> {
    let (rc, c) = control.arm("control")?;
    let (rt, t) = treatment.arm("treatment")?;
    effect(rt - rc, c, t, alpha, relative, "ratio")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(pairs: &[(f64, f64)]) -> RatioMoments {
        let mut m = RatioMoments::new();
        for &(num, den) in pairs {
            m.push(num, den);
        }
        m
    }

    /// The three-term delta formula on two-pass moments.
    fn delta_v(pairs: &[(f64, f64)]) -> f64 {
        let n = pairs.len() as f64;
        let mm = pairs.iter().map(|p| p.0).sum::<f64>() / n;
        let dm = pairs.iter().map(|p| p.1).sum::<f64>() / n;
        let vm = pairs.iter().map(|p| (p.0 - mm).powi(2)).sum::<f64>() / (n - 1.0);
        let vd = pairs.iter().map(|p| (p.1 - dm).powi(2)).sum::<f64>() / (n - 1.0);
        let c = pairs.iter().map(|p| (p.0 - mm) * (p.1 - dm)).sum::<f64>() / (n - 1.0);
        vm / dm.powi(2) - 2.0 * c * mm / dm.powi(3) + mm * mm * vd / dm.powi(4)
    }

    #[test]
    fn variance_is_the_delta_method_formula() {
        let pairs = [(3.0, 10.0), (0.0, 2.0), (5.0, 12.0), (1.0, 7.0), (2.0, 3.0)];
        let m = arm(&pairs);
        assert!((m.ratio() - 11.0 / 34.0).abs() < 1e-15);
        assert!((m.ratio_variance() - delta_v(&pairs)).abs() < 1e-14);
        let s = RatioMoments::from_sums(
            "control",
            5,
            11.0,
            39.0,
            34.0,
            306.0,
            30.0 + 60.0 + 7.0 + 6.0,
        )
        .unwrap();
        assert!((s.ratio_variance() - m.ratio_variance()).abs() < 1e-12);
    }

    #[test]
    fn merged_arms_equal_one_pass() {
        let pairs: Vec<(f64, f64)> = (0..40)
            .map(|i| (f64::from(i % 7), f64::from(3 + i % 5)))
            .collect();
        let mut a = arm(&pairs[..13]);
        a.merge(&arm(&pairs[13..]));
        let b = arm(&pairs);
        assert!((a.ratio_variance() - b.ratio_variance()).abs() < 1e-14);
        assert!((a.ratio() - b.ratio()).abs() < 1e-15);
    }

    #[test]
    fn constant_ratio_per_user_has_no_variance() {
        // m = 0.5·d for every user: the ratio is known exactly in each arm.
        let c = arm(&[(1.0, 2.0), (2.0, 4.0), (3.0, 6.0)]);
        assert!(c.ratio_variance().abs() < 1e-15);
        let t = arm(&[(2.0, 2.0), (4.0, 4.0), (6.0, 6.0)]);
        assert!(matches!(
            ratio(&c, &t, 0.05, false),
            Err(StatsError::ZeroStandardError { .. })
        ));
    }

    #[test]
    fn degenerate_arms_are_typed_errors() {
        let ok = arm(&[(1.0, 2.0), (2.0, 3.0), (0.0, 1.0)]);
        let zero_den = arm(&[(1.0, 0.0), (2.0, 0.0)]);
        assert_eq!(
            ratio(&ok, &zero_den, 0.05, false),
            Err(StatsError::ZeroDenominator { group: "treatment" })
        );
        let one = arm(&[(1.0, 2.0)]);
        assert!(matches!(
            ratio(&one, &ok, 0.05, false),
            Err(StatsError::TooFewObservations { n: 1, .. })
        ));
        let zero_num = arm(&[(0.0, 2.0), (0.0, 3.0)]);
        assert_eq!(
            ratio(&zero_num, &ok, 0.05, true),
            Err(StatsError::ZeroRelativeBaseline { what: "ratio" })
        );
        // Absolute is still defined with a zero control ratio.
        assert!(ratio(&zero_num, &ok, 0.05, false).is_ok());
        // Σm·d beyond Cauchy–Schwarz.
        assert!(matches!(
            RatioMoments::from_sums("control", 3, 3.0, 5.0, 6.0, 14.0, 100.0),
            Err(StatsError::InconsistentSums { .. })
        ));
    }
}
