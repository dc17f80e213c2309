//! Relative lift (treatment − control)/|control| with a delta-method
//! standard error.
//!
//! Reports speak in relative terms ("+2.1 % conversions"), and the ratio of
//! two independent means is not normal in small samples; the first-order
//! delta method gives Var(m_t/m_c) ≈ s_t²/(n_t m_c²) + m_t² s_c²/(n_c m_c⁴),
//! which is what GrowthBook and statsmodels-style analyses report, and it is
//! accurate at the sample sizes experiments run at. The Welch–Satterthwaite
//! df of the absolute difference is kept for the t quantile, so small
//! samples widen the interval the same way [`welch_t`](super::welch_t) does.

use serde::Serialize;

use super::error::{check_alpha, Result, StatsError};
use super::moments::GroupStats;
use super::special::{t_two_sided_p, t_upper_quantile};
use super::welch::welch_parts;

/// Result of [`relative_lift`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LiftResult {
    /// (mean_t − mean_c)/|mean_c|.
    pub lift: f64,
    /// Delta-method standard error of `lift`.
    pub se: f64,
    /// Welch–Satterthwaite df (as in [`welch_t`](super::welch_t)).
    pub df: f64,
    /// Two-sided p-value of lift/se under Student t(df).
    pub p_value: f64,
    /// lift − t_{1−α/2, df}·se.
    pub ci_low: f64,
    /// lift + t_{1−α/2, df}·se.
    pub ci_high: f64,
}

/// Relative lift and its delta-method standard error, without the test:
/// `(lift, se, df)`. Shared with the sequential test.
pub(crate) fn lift_parts(
    control: &impl GroupStats,
    treatment: &impl GroupStats,
) -> Result<(f64, f64, f64)> {
    let parts = welch_parts(control, treatment)?;
    let (c, t) = (parts.c, parts.t);
    if c.mean == 0.0 {
        return Err(StatsError::ZeroBaseline);
    }
    let mc2 = c.mean * c.mean;
    let lift = (t.mean - c.mean) / c.mean.abs();
    let var = t.var / (t.n * mc2) + t.mean * t.mean * c.var / (c.n * mc2 * mc2);
    if !(var > 0.0 && var.is_finite()) {
        return Err(StatsError::ZeroStandardError {
            reason: "the delta-method variance of the lift is zero",
        });
    }
    Ok((lift, var.sqrt(), parts.df))
}

/// Relative lift of treatment over control at two-sided level `alpha`.
/// Errors when the control mean is 0, a group has n < 2, or the standard
/// error is 0.
pub fn relative_lift(
    control: &impl GroupStats,
    treatment: &impl GroupStats,
    alpha: f64,
) -> Result<LiftResult> {
    check_alpha(alpha)?;
    let (lift, se, df) = lift_parts(control, treatment)?;
    let q = t_upper_quantile(alpha / 2.0, df);
    Ok(LiftResult {
        lift,
        se,
        df,
        p_value: t_two_sided_p(lift / se, df),
        ci_low: lift - q * se,
        ci_high: lift + q * se,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Summary;

    #[test]
    fn zero_control_mean_is_an_error() {
        let c = Summary {
            n: 10,
            mean: 0.0,
            sd: 1.0,
        };
        let t = Summary {
            n: 10,
            mean: 1.0,
            sd: 1.0,
        };
        assert_eq!(
            relative_lift(&c, &t, 0.05).unwrap_err(),
            StatsError::ZeroBaseline
        );
    }

    #[test]
    fn negative_baseline_uses_its_magnitude() {
        // From −10 to −9 is an improvement of +10 %.
        let c = Summary {
            n: 100,
            mean: -10.0,
            sd: 1.0,
        };
        let t = Summary {
            n: 100,
            mean: -9.0,
            sd: 1.0,
        };
        let r = relative_lift(&c, &t, 0.05).unwrap();
        assert!((r.lift - 0.1).abs() < 1e-15);
        // se² = 1/(100·100) + 81·1/(100·10⁴)
        assert!((r.se - (1e-4 + 81e-6f64).sqrt()).abs() < 1e-15);
        assert!(r.ci_low < r.lift && r.lift < r.ci_high);
    }
}
