//! CUPED from sufficient statistics, absolute or relative (kind
//! `cuped_lift` of `sidecar/stats/README.md`, GrowthBook's
//! `RegressionAdjustedStatistic` with `compute_theta`).
//!
//! [`cuped()`](super::cuped()) answers the absolute question on adjusted
//! outcomes; this is the estimate a decision needs: the same adjustment,
//! optionally as a relative effect, from per-arm [`CoMoments`] only.
//!
//! * θ = cov(x, y)/var(x) with both arms pooled as one sample (about the
//!   grand means, ddof 1), so one linear adjustment applies to everyone
//!   and the estimator stays unbiased; θ = 0 (no adjustment) when x or y
//!   does not vary over the pooled sample, as gbstats reverts to the
//!   unadjusted statistic there. "Does not vary" means a centred sum of
//!   squares of at most [`CONSTANT_RESOLUTION`] times the raw Σx² (or Σy²):
//!   from raw sums (the reference cases, the sidecar's aggregates) a
//!   constant covariate leaves Σx² − (Σx)²/n at rounding noise, ±5e-15·Σx²
//!   in gbstats's own cases, and θ = noise/noise is then any number (gbstats
//!   0.8.0 tests `== 0` and reports θ from −32 to 16 on such data, and a
//!   θ of 1e17 times a last-bit difference of the arms' x̄ moves the
//!   estimate by O(1)). The price: a real covariate whose coefficient of
//!   variation is below 1e-6 is not used (from sums it could not be
//!   resolved to better than three digits anyway).
//! * Per arm: adjusted mean a = ȳ − θ·x̄ and per-user variance
//!   V = v_y + θ²·v_x − 2θ·cov(x, y), the variance of y − θx within the arm
//!   (computed from the centred sums, so it does not cancel).
//! * The relative effect is (a_t − a_c)/ȳ_c: scaled by the control's
//!   *unadjusted* mean, and its delta-method se uses the unadjusted means
//!   (README and gbstats; the adjustment moves the numerator's variance,
//!   not the baseline).
//!
//! The test is [`effect`](super::effect): Welch–Satterthwaite df on V,
//! Student t p-value and interval.

use serde::Serialize;

use super::effect::{check_cross, check_sums, effect, Arm};
use super::error::{Result, StatsError};
use super::moments::CoMoments;

/// A pooled centred sum of squares at most this share of the raw sum of
/// squares counts as zero variance (see the module docs).
pub const CONSTANT_RESOLUTION: f64 = 1e-12;

/// Whether a pooled variable with centred sum of squares `m2`, mean `mean`
/// and `n` values is constant up to the rounding of raw sums (NaN counts
/// as constant: there is no variance to adjust with).
fn is_constant(m2: f64, mean: f64, n: f64) -> bool {
    let varies = m2 > CONSTANT_RESOLUTION * (m2 + n * mean * mean);
    !varies
}

/// Result of [`cuped_lift`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CupedLiftResult {
    /// cov(x, y)/var(x) over both arms pooled (0: no adjustment).
    pub theta: f64,
    /// a_t − a_c, or (a_t − a_c)/ȳ_c when relative.
    pub estimate: f64,
    /// Standard error of `estimate`.
    pub se: f64,
    /// Welch–Satterthwaite df on the adjusted per-user variances.
    pub df: f64,
    /// Two-sided Student t(df) p-value.
    pub p_value: f64,
    /// estimate − t_{1−α/2, df}·se.
    pub ci_low: f64,
    /// estimate + t_{1−α/2, df}·se.
    pub ci_high: f64,
    /// ρ² of x and y over the pooled sample: the share of the variance
    /// that the adjustment removes (0 when θ = 0).
    pub variance_reduction: f64,
}

/// [`CoMoments`] from raw sums (n, Σy, Σy², Σx, Σx², Σxy) as the
/// reference cases give them, rejecting sums that no data can produce.
pub fn comoments_from_sums(
    group: &'static str,
    n: u64,
    y_sum: f64,
    y_sum_sq: f64,
    x_sum: f64,
    x_sum_sq: f64,
    xy_sum: f64,
) -> Result<CoMoments> {
    check_sums(group, "y", n, y_sum, y_sum_sq)?;
    check_sums(group, "x", n, x_sum, x_sum_sq)?;
    let m = CoMoments::from_sums(n, y_sum, y_sum_sq, x_sum, x_sum_sq, xy_sum)?;
    check_cross(
        group,
        "x × y",
        m.c_xy(),
        m.x().m2(),
        m.y().m2(),
        (y_sum_sq * x_sum_sq).sqrt(),
    )?;
    Ok(m)
}

/// CUPED-adjusted effect of treatment vs control at two-sided `alpha`.
///
/// Errors when an arm has fewer than 2 users, when both adjusted
/// variances are 0, or (relative) when the control's mean ȳ_c is 0.
pub fn cuped_lift(
    control: &CoMoments,
    treatment: &CoMoments,
    alpha: f64,
    relative: bool,
) -> Result<CupedLiftResult> {
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
    let n = pooled.n() as f64;
    let constant = is_constant(m2x, pooled.x().mean(), n) || is_constant(m2y, pooled.y().mean(), n);
    let (theta, variance_reduction) = if !constant {
        (cxy / m2x, (cxy * cxy / (m2x * m2y)).min(1.0))
    } else {
        (0.0, 0.0)
    };
    if !theta.is_finite() {
        return Err(StatsError::NonFinite {
            what: "theta",
            value: theta,
        });
    }
    let arm = |g: &CoMoments| {
        let m2 = (g.y().m2() - 2.0 * theta * g.c_xy() + theta * theta * g.x().m2()).max(0.0);
        Arm {
            n: g.n() as f64,
            unadjusted: g.y().mean(),
            var: m2 / (g.n() - 1) as f64,
        }
    };
    // a_t − a_c as the difference of means minus θ times the difference of
    // covariate means: no large adjusted means cancel.
    let diff = (treatment.y().mean() - control.y().mean())
        - theta * (treatment.x().mean() - control.x().mean());
    let r = effect(
        diff,
        arm(control),
        arm(treatment),
        alpha,
        relative,
        "mean of y",
    )?;
    Ok(CupedLiftResult {
        theta,
        estimate: r.estimate,
        se: r.se,
        df: r.df,
        p_value: r.p_value,
        ci_low: r.ci_low,
        ci_high: r.ci_high,
        variance_reduction,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cuped, relative_lift, welch_t};

    fn xy(x: &[f64], y: &[f64]) -> CoMoments {
        CoMoments::from_xy(x, y).unwrap()
    }

    #[test]
    fn absolute_agrees_with_the_cuped_kind() {
        let c = xy(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 3.5, 3.0, 6.0, 6.5]);
        let t = xy(&[1.5, 2.5, 2.0, 4.5, 6.0], &[3.0, 4.0, 4.5, 7.0, 8.5]);
        let a = cuped_lift(&c, &t, 0.05, false).unwrap();
        let b = cuped(&c, &t, 0.05).unwrap();
        assert!((a.theta - b.theta).abs() < 1e-15);
        assert!((a.estimate - b.diff).abs() < 1e-14);
        assert!((a.se - b.se).abs() < 1e-14);
        assert!((a.p_value - b.p_value).abs() < 1e-13);
        assert!((a.variance_reduction - b.variance_reduction).abs() < 1e-14);
    }

    #[test]
    fn constant_covariate_means_no_adjustment() {
        // x constant over both arms: θ = 0 and the result is the plain
        // Welch test (absolute) and delta-method lift (relative).
        let c = xy(&[1.0; 4], &[2.0, 3.0, 5.0, 4.0]);
        let t = xy(&[1.0; 4], &[3.0, 5.0, 6.0, 4.5]);
        let a = cuped_lift(&c, &t, 0.05, false).unwrap();
        assert_eq!(a.theta, 0.0);
        let w = welch_t(&c.y(), &t.y(), 0.05).unwrap();
        assert!((a.p_value - w.p_value).abs() < 1e-14);
        let r = cuped_lift(&c, &t, 0.05, true).unwrap();
        let l = relative_lift(&c.y(), &t.y(), 0.05).unwrap();
        assert!((r.estimate - l.lift).abs() < 1e-15);
        assert!((r.se - l.se).abs() < 1e-15);
        assert!((r.ci_high - l.ci_high).abs() < 1e-14);
    }

    #[test]
    fn a_constant_covariate_from_rounded_sums_is_not_used() {
        // 1 000 users with x = 0.1 in each arm: Σx² − (Σx)²/n is rounding
        // noise, not 0, but θ must be 0 (the README's "no adjustment").
        let n = 1000u64;
        let x = 0.1f64;
        let sum_x = (0..n).map(|_| x).sum::<f64>();
        let sum_x2 = (0..n).map(|_| x * x).sum::<f64>();
        let arm = |y: &[f64]| {
            let (s, ss) = (y.iter().sum::<f64>(), y.iter().map(|v| v * v).sum::<f64>());
            comoments_from_sums("arm", n, s, ss, sum_x, sum_x2, s * x).unwrap()
        };
        let yc: Vec<f64> = (0..n).map(|i| f64::from(i as u32 % 7)).collect();
        let yt: Vec<f64> = (0..n).map(|i| f64::from(i as u32 % 9)).collect();
        let (c, t) = (arm(&yc), arm(&yt));
        let pooled = c.merged(&t);
        assert_ne!(pooled.x().m2(), 0.0, "the sums leave rounding noise");
        let r = cuped_lift(&c, &t, 0.05, false).unwrap();
        assert_eq!(r.theta, 0.0);
        let w = welch_t(&c.y(), &t.y(), 0.05).unwrap();
        assert!(
            (r.estimate - w.diff).abs() < 1e-12,
            "{} vs {}",
            r.estimate,
            w.diff
        );
        assert!((r.se - w.se).abs() < 1e-12);
    }

    #[test]
    fn relative_scales_by_the_unadjusted_control_mean() {
        let c = xy(&[1.0, 2.0, 3.0, 4.0], &[10.0, 12.0, 13.0, 15.0]);
        let t = xy(&[2.0, 3.0, 4.0, 5.0], &[12.0, 13.0, 15.0, 17.0]);
        let a = cuped_lift(&c, &t, 0.05, false).unwrap();
        let r = cuped_lift(&c, &t, 0.05, true).unwrap();
        assert!((r.estimate - a.estimate / 12.5).abs() < 1e-15);
        assert_eq!(r.df, a.df);
    }

    #[test]
    fn degenerate_inputs_are_typed_errors() {
        let c = xy(&[1.0, 2.0], &[0.0, 0.0]);
        let t = xy(&[1.0, 3.0], &[1.0, 2.0]);
        assert_eq!(
            cuped_lift(&c, &t, 0.05, true),
            Err(StatsError::ZeroRelativeBaseline { what: "mean of y" })
        );
        let one = xy(&[1.0], &[1.0]);
        assert!(matches!(
            cuped_lift(&one, &t, 0.05, false),
            Err(StatsError::TooFewObservations { n: 1, .. })
        ));
        // y = 2x + 1 everywhere: nothing left after the adjustment.
        let p = xy(&[1.0, 2.0, 3.0], &[3.0, 5.0, 7.0]);
        assert!(matches!(
            cuped_lift(&p, &p, 0.05, false),
            Err(StatsError::ZeroStandardError { .. })
        ));
        assert!(matches!(
            comoments_from_sums("control", 3, 6.0, 20.0, 3.0, 5.0, 50.0),
            Err(StatsError::InconsistentSums { .. })
        ));
    }
}
