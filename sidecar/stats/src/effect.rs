//! The two-sample t-test shared by the kinds defined on per-arm estimates
//! with a per-user variance ([`ratio`](super::ratio()) and
//! [`cuped_lift`](super::cuped_lift())), as `sidecar/stats/README.md`
//! ("Kinds added in round 2") and GrowthBook's `TwoSidedTTest` define it.
//!
//! Each arm contributes its size n, a point value (the ratio r, or the
//! CUPED-adjusted mean a), the unadjusted value the relative effect is
//! scaled by (r again, or the plain mean ȳ) and the per-user variance V of
//! its estimate (the delta-method variance of the ratio, or the variance of
//! the adjusted outcome). Then:
//!
//! * absolute: estimate = value_t − value_c, se = √(V_t/n_t + V_c/n_c);
//! * relative: estimate = (value_t − value_c)/u_c with u the unadjusted
//!   value, se = √(V_t/(u_c²·n_t) + V_c·u_t²/(u_c⁴·n_c)) (delta method);
//! * df: Welch–Satterthwaite on V and n, the same in both cases (the
//!   README's rule, and gbstats's `TTest.dof`);
//! * p-value: two-sided Student t(df) of estimate/se, computed from the
//!   accurate tail ([`t_two_sided_p`]) rather than as 1 − CDF, so it keeps
//!   its digits below 1e-16 where gbstats rounds to 0;
//! * interval: estimate ∓ t_{1−α/2, df}·se.
//!
//! The relative effect divides by the *signed* control value, as the README
//! and gbstats do: with a negative baseline its sign is the opposite of the
//! improvement's (unlike [`relative_lift`](super::relative_lift), which
//! divides by |mean_c|). Reports should only ask for it on positive metrics.

use serde::Serialize;

use super::error::{check_alpha, Result, StatsError};
use super::special::{t_two_sided_p, t_upper_quantile};

/// One arm of an [`effect`]: size, unadjusted value and per-user variance.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arm {
    /// Users (n ≥ 2, checked by the callers).
    pub n: f64,
    /// The value the relative effect is scaled by (control) or enters the
    /// delta method with (treatment): the ratio, or the unadjusted mean.
    pub unadjusted: f64,
    /// Per-user variance of the arm's estimate (its variance is V/n).
    pub var: f64,
}

/// Estimate, standard error, df, two-sided p-value and interval of a
/// two-sample effect (treatment vs control).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EffectResult {
    /// Absolute difference, or relative effect when `relative`.
    pub estimate: f64,
    /// Its standard error (delta method when `relative`).
    pub se: f64,
    /// Welch–Satterthwaite degrees of freedom on the per-arm variances.
    pub df: f64,
    /// Two-sided p-value of estimate/se under Student t(df).
    pub p_value: f64,
    /// estimate − t_{1−α/2, df}·se.
    pub ci_low: f64,
    /// estimate + t_{1−α/2, df}·se.
    pub ci_high: f64,
}

/// The test of `diff` (= value_t − value_c, computed by the caller in the
/// way that keeps the most digits) for arms `c` and `t`; `baseline` names
/// the control value in the error when a relative effect has none.
pub(crate) fn effect(
    diff: f64,
    c: Arm,
    t: Arm,
    alpha: f64,
    relative: bool,
    baseline: &'static str,
) -> Result<EffectResult> {
    check_alpha(alpha)?;
    for (what, v) in [
        ("difference", diff),
        ("control variance", c.var),
        ("treatment variance", t.var),
        ("control value", c.unadjusted),
        ("treatment value", t.unadjusted),
    ] {
        if !v.is_finite() {
            return Err(StatsError::NonFinite { what, value: v });
        }
    }
    let (vc, vt) = (c.var.max(0.0) / c.n, t.var.max(0.0) / t.n);
    let var_abs = vc + vt;
    if var_abs <= 0.0 {
        return Err(StatsError::ZeroStandardError {
            reason: "both arms have zero variance",
        });
    }
    let df = var_abs * var_abs / (vc * vc / (c.n - 1.0) + vt * vt / (t.n - 1.0));
    let (estimate, var) = if relative {
        let u = c.unadjusted;
        if u == 0.0 {
            return Err(StatsError::ZeroRelativeBaseline { what: baseline });
        }
        let u2 = u * u;
        (
            diff / u,
            vt / u2 + vc * t.unadjusted * t.unadjusted / (u2 * u2),
        )
    } else {
        (diff, var_abs)
    };
    let se = var.sqrt();
    if !(se > 0.0 && se.is_finite()) {
        return Err(StatsError::ZeroStandardError {
            reason: "the delta-method variance of the relative effect is not positive",
        });
    }
    let q = t_upper_quantile(alpha / 2.0, df);
    Ok(EffectResult {
        estimate,
        se,
        df,
        p_value: t_two_sided_p(estimate / se, df),
        ci_low: estimate - q * se,
        ci_high: estimate + q * se,
    })
}

/// Checks raw per-arm sums (n, Σa, Σa²) before they are converted: finite,
/// Σa² ≥ 0 and Σa² ≥ (Σa)²/n up to rounding. A larger shortfall cannot come
/// from any data and would otherwise be silently clamped to a zero
/// variance by [`Moments::from_sums`](super::Moments::from_sums).
pub(crate) fn check_sums(
    group: &'static str,
    what: &'static str,
    n: u64,
    sum: f64,
    sum_sq: f64,
) -> Result<()> {
    if !sum.is_finite() {
        return Err(StatsError::NonFinite { what, value: sum });
    }
    if !(sum_sq.is_finite() && sum_sq >= 0.0) {
        return Err(StatsError::InvalidParameter {
            name: "sum of squares",
            value: sum_sq,
            expected: "finite and ≥ 0",
        });
    }
    if n > 0 {
        let m2 = sum_sq - sum * sum / n as f64;
        if m2 < -1e-9 * sum_sq {
            return Err(StatsError::InconsistentSums {
                group,
                what,
                detail: "the sum of squares is less than sum²/n",
            });
        }
    }
    Ok(())
}

/// Checks a cross-product against Cauchy–Schwarz: |Σ(a − ā)(b − b̄)| ≤
/// √(Σ(a − ā)²·Σ(b − b̄)²), up to the rounding of sums of this size.
pub(crate) fn check_cross(
    group: &'static str,
    what: &'static str,
    c: f64,
    m2a: f64,
    m2b: f64,
    scale: f64,
) -> Result<()> {
    if !c.is_finite() {
        return Err(StatsError::NonFinite { what, value: c });
    }
    if c.abs() > (m2a * m2b).sqrt() + 1e-9 * scale {
        return Err(StatsError::InconsistentSums {
            group,
            what,
            detail: "the cross-product exceeds what the two sums of squares allow (|cov| > sd·sd)",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(n: f64, u: f64, var: f64) -> Arm {
        Arm {
            n,
            unadjusted: u,
            var,
        }
    }

    #[test]
    fn absolute_is_welch_on_the_given_variances() {
        // Same numbers through welch_t: n 50/60, sd² 4/9, means 1/1.5.
        let r = effect(
            0.5,
            arm(50.0, 1.0, 4.0),
            arm(60.0, 1.5, 9.0),
            0.05,
            false,
            "x",
        )
        .unwrap();
        let w = crate::welch_t(
            &crate::Summary {
                n: 50,
                mean: 1.0,
                sd: 2.0,
            },
            &crate::Summary {
                n: 60,
                mean: 1.5,
                sd: 3.0,
            },
            0.05,
        )
        .unwrap();
        assert!((r.se - w.se).abs() < 1e-15);
        assert!((r.df - w.df).abs() < 1e-9);
        assert!((r.p_value - w.p_value).abs() < 1e-14);
        assert!((r.ci_low - w.ci_low).abs() < 1e-14);
    }

    #[test]
    fn relative_uses_the_delta_method_and_the_absolute_df() {
        let (c, t) = (arm(100.0, 2.0, 1.0), arm(100.0, 2.5, 1.0));
        let abs = effect(0.5, c, t, 0.05, false, "x").unwrap();
        let rel = effect(0.5, c, t, 0.05, true, "x").unwrap();
        assert_eq!(rel.estimate, 0.25);
        let var: f64 = 1.0 / (4.0 * 100.0) + 1.0 * 6.25 / (16.0 * 100.0);
        assert!((rel.se - var.sqrt()).abs() < 1e-15);
        assert_eq!(rel.df, abs.df);
    }

    #[test]
    fn degenerate_inputs_are_typed_errors() {
        let e = effect(
            0.0,
            arm(10.0, 1.0, 0.0),
            arm(10.0, 1.0, 0.0),
            0.05,
            false,
            "x",
        );
        assert!(matches!(e, Err(StatsError::ZeroStandardError { .. })));
        let e = effect(
            1.0,
            arm(10.0, 0.0, 1.0),
            arm(10.0, 1.0, 1.0),
            0.05,
            true,
            "ratio",
        );
        assert_eq!(e, Err(StatsError::ZeroRelativeBaseline { what: "ratio" }));
        let e = effect(
            f64::NAN,
            arm(10.0, 1.0, 1.0),
            arm(10.0, 1.0, 1.0),
            0.05,
            false,
            "x",
        );
        assert!(matches!(e, Err(StatsError::NonFinite { .. })));
        assert!(effect(
            1.0,
            arm(10.0, 1.0, 1.0),
            arm(10.0, 1.0, 1.0),
            0.0,
            false,
            "x"
        )
        .is_err());
        // One constant arm is fine: df is the other arm's n − 1.
        let r = effect(
            1.0,
            arm(10.0, 1.0, 0.0),
            arm(20.0, 2.0, 1.0),
            0.05,
            false,
            "x",
        )
        .unwrap();
        assert!((r.df - 19.0).abs() < 1e-12);
    }

    #[test]
    fn impossible_sums_are_rejected() {
        // Σa² < (Σa)²/n: 10 values summing to 10 need Σa² ≥ 10.
        assert!(matches!(
            check_sums("control", "numerator", 10, 10.0, 9.0),
            Err(StatsError::InconsistentSums { .. })
        ));
        assert!(check_sums("control", "numerator", 10, 10.0, 10.0).is_ok());
        assert!(check_sums("control", "numerator", 10, f64::INFINITY, 10.0).is_err());
        assert!(check_sums("control", "numerator", 10, 1.0, -1.0).is_err());
        assert!(check_cross("control", "x", 3.0, 1.0, 4.0, 1.0).is_err());
        assert!(check_cross("control", "x", -2.0, 1.0, 4.0, 1.0).is_ok());
    }
}
