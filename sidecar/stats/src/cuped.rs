//! CUPED: variance reduction with a pre-experiment covariate (Deng, Xu,
//! Kohavi & Walker, 2013).
//!
//! Each user's outcome y is replaced by y_adj = y − θ(x − x̄), where x is the
//! same user's metric before the experiment (so it cannot be affected by
//! the variant) and θ = cov(x, y)/var(x). The difference of y_adj means is
//! unbiased for the same effect, and its variance shrinks by the factor
//! 1 − ρ²(x, y).
//!
//! θ and x̄ are pooled over both groups: one linear adjustment applied to
//! everyone keeps the estimator unbiased and is what Deng et al. and the
//! reference cases use (per-group θ would let the adjustment differ by arm).
//!
//! Everything is computed from per-group [`CoMoments`] (n, means, M2 of x
//! and y, co-moment), i.e. from sufficient statistics that merge: the
//! adjusted group mean is ȳ_g − θ(x̄_g − x̄) and its centred sum of squares
//! is M2_y − 2θ·C_xy + θ²·M2_x, so raw per-user data are never needed.

use serde::Serialize;

use super::error::{check_alpha, Result, StatsError};
use super::moments::{CoMoments, GroupStats};
use super::welch::welch_t;

/// Result of [`cuped`]: the Welch test on adjusted outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CupedResult {
    /// cov(x, y)/var(x) over both groups pooled.
    pub theta: f64,
    /// 1 − var(y_adj)/var(y), both pooled over the two groups (= ρ²).
    pub variance_reduction: f64,
    /// Difference of adjusted means, treatment − control.
    pub diff: f64,
    /// Welch standard error of `diff`.
    pub se: f64,
    /// diff / se.
    pub t: f64,
    /// Welch–Satterthwaite df of the adjusted outcomes.
    pub df: f64,
    /// Two-sided Welch p-value.
    pub p_value: f64,
    /// Lower end of the 1 − α interval of `diff`.
    pub ci_low: f64,
    /// Upper end of the 1 − α interval of `diff`.
    pub ci_high: f64,
}

/// A group of adjusted outcomes: n, mean and sample variance.
struct Adjusted {
    n: u64,
    mean: f64,
    var: f64,
}

impl GroupStats for Adjusted {
    fn n(&self) -> u64 {
        self.n
    }
    fn mean(&self) -> f64 {
        self.mean
    }
    fn variance(&self) -> f64 {
        self.var
    }
}

/// CUPED-adjusted Welch test of treatment vs control at two-sided `alpha`.
/// Errors when a group has n < 2 or the covariate is constant over both
/// groups.
pub fn cuped(control: &CoMoments, treatment: &CoMoments, alpha: f64) -> Result<CupedResult> {
    check_alpha(alpha)?;
    for (group, g) in [("control", control), ("treatment", treatment)] {
        if g.n() < 2 {
            return Err(StatsError::TooFewObservations {
                group,
                n: g.n(),
                min: 2,
            });
        }
    }
    let pooled = control.merged(treatment);
    let (m2x, m2y, cxy) = (pooled.x().m2(), pooled.y().m2(), pooled.c_xy());
    if m2x.is_nan() || m2x <= 0.0 {
        return Err(StatsError::ZeroCovariateVariance);
    }
    let theta = cxy / m2x;
    let x_mean = pooled.x().mean();
    let adjust = |g: &CoMoments| {
        let m2 = (g.y().m2() - 2.0 * theta * g.c_xy() + theta * theta * g.x().m2()).max(0.0);
        Adjusted {
            n: g.n(),
            mean: g.y().mean() - theta * (g.x().mean() - x_mean),
            var: m2 / (g.n() - 1) as f64,
        }
    };
    let w = welch_t(&adjust(control), &adjust(treatment), alpha)?;
    // var(y_adj)/var(y) = (M2_y − C²/M2_x)/M2_y over the pooled data.
    let variance_reduction = if m2y > 0.0 {
        (cxy * cxy / (m2x * m2y)).min(1.0)
    } else {
        0.0
    };
    Ok(CupedResult {
        theta,
        variance_reduction,
        diff: w.diff,
        se: w.se,
        t: w.t,
        df: w.df,
        p_value: w.p_value,
        ci_low: w.ci_low,
        ci_high: w.ci_high,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::welch_t;

    #[test]
    fn uncorrelated_covariate_changes_little() {
        // x orthogonal to y (pooled covariance exactly 0) → θ = 0 and the
        // test is the plain Welch test.
        let c = CoMoments::from_xy(&[1.0, -1.0, 1.0, -1.0], &[1.0, 1.0, 2.0, 2.0]).unwrap();
        let t = CoMoments::from_xy(&[1.0, -1.0, 1.0, -1.0], &[2.0, 2.0, 3.0, 3.0]).unwrap();
        let r = cuped(&c, &t, 0.05).unwrap();
        assert_eq!(r.theta, 0.0);
        assert_eq!(r.variance_reduction, 0.0);
        let w = welch_t(&c.y(), &t.y(), 0.05).unwrap();
        assert!((r.p_value - w.p_value).abs() < 1e-15);
    }

    #[test]
    fn perfectly_predicted_outcomes_remove_all_variance() {
        // y = 2x + 1 in both groups, same x: no residual variance at all.
        let x = [1.0, 2.0, 3.0, 4.0];
        let y: Vec<f64> = x.iter().map(|v| 2.0 * v + 1.0).collect();
        let g = CoMoments::from_xy(&x, &y).unwrap();
        let e = cuped(&g, &g, 0.05).unwrap_err();
        assert!(matches!(e, StatsError::ZeroStandardError { .. }), "{e}");
    }

    #[test]
    fn constant_covariate_is_an_error() {
        let c = CoMoments::from_xy(&[1.0, 1.0], &[1.0, 2.0]).unwrap();
        assert_eq!(
            cuped(&c, &c, 0.05).unwrap_err(),
            StatsError::ZeroCovariateVariance
        );
        let one = CoMoments::from_xy(&[1.0], &[1.0]).unwrap();
        assert!(matches!(
            cuped(&one, &c, 0.05),
            Err(StatsError::TooFewObservations { n: 1, .. })
        ));
    }
}
