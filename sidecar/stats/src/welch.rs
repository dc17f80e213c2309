//! Welch's two-sample t-test on means (unequal variances).
//!
//! Welch rather than Student's pooled t because the two arms of an
//! experiment routinely differ in size (ramped traffic, uneven splits) and
//! in variance (a model change often changes the spread of its outcome);
//! the pooled test's false-positive rate is wrong exactly when both happen.

use serde::Serialize;

use super::error::{check_alpha, Result, StatsError};
use super::moments::{checked, Checked, GroupStats};
use super::special::{t_two_sided_p, t_upper_quantile};

/// Result of [`welch_t`]: treatment − control.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct WelchResult {
    /// mean_t − mean_c.
    pub diff: f64,
    /// √(s_c²/n_c + s_t²/n_t).
    pub se: f64,
    /// diff / se.
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value from Student's t with `df` degrees of freedom.
    pub p_value: f64,
    /// diff − t_{1−α/2, df}·se.
    pub ci_low: f64,
    /// diff + t_{1−α/2, df}·se.
    pub ci_high: f64,
}

/// Per-arm variance of the mean (s²/n) and the Welch–Satterthwaite df.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WelchParts {
    pub c: Checked,
    pub t: Checked,
    /// s_c²/n_c + s_t²/n_t.
    pub var_diff: f64,
    pub df: f64,
}

pub(crate) fn welch_parts(
    control: &impl GroupStats,
    treatment: &impl GroupStats,
) -> Result<WelchParts> {
    let c = checked("control", control)?;
    let t = checked("treatment", treatment)?;
    let vc = c.var / c.n;
    let vt = t.var / t.n;
    let var_diff = vc + vt;
    if var_diff <= 0.0 {
        return Err(StatsError::ZeroStandardError {
            reason: "both groups have zero variance",
        });
    }
    let df = var_diff * var_diff / (vc * vc / (c.n - 1.0) + vt * vt / (t.n - 1.0));
    Ok(WelchParts { c, t, var_diff, df })
}

/// Welch's t-test of treatment − control at two-sided level `alpha`.
///
/// Takes any [`GroupStats`]: reference-case summaries `{n, mean, sd}`
/// ([`Summary`](super::Summary)) or the sidecar's [`Moments`](super::Moments).
/// Errors when a group has n < 2 or when both variances are zero.
pub fn welch_t(
    control: &impl GroupStats,
    treatment: &impl GroupStats,
    alpha: f64,
) -> Result<WelchResult> {
    check_alpha(alpha)?;
    let parts = welch_parts(control, treatment)?;
    Ok(welch_from(
        parts.t.mean - parts.c.mean,
        parts.var_diff.sqrt(),
        parts.df,
        alpha,
    ))
}

/// The t-test and interval for an estimate with standard error `se` and
/// `df` degrees of freedom.
pub(crate) fn welch_from(diff: f64, se: f64, df: f64, alpha: f64) -> WelchResult {
    let t = diff / se;
    let q = t_upper_quantile(alpha / 2.0, df);
    WelchResult {
        diff,
        se,
        t,
        df,
        p_value: t_two_sided_p(t, df),
        ci_low: diff - q * se,
        ci_high: diff + q * se,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Moments, Summary};

    fn s(n: u64, mean: f64, sd: f64) -> Summary {
        Summary { n, mean, sd }
    }

    #[test]
    fn matches_scipy_on_a_small_case() {
        // scipy.stats.ttest_ind([1,2,3,4,5], [2,4,6,8,10,12], equal_var=False)
        let c = Moments::from_values(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        let t = Moments::from_values(&[2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
        let r = welch_t(&c, &t, 0.05).unwrap();
        assert!((r.t - 2.376_354_103_144_018_3).abs() < 1e-12, "{}", r.t);
        assert!((r.df - 6.972_255_729_794_934).abs() < 1e-9, "{}", r.df);
        assert!(
            (r.p_value - 0.049_284_338_206_730_53).abs() < 1e-10,
            "{}",
            r.p_value
        );
        // The same through summaries.
        let r2 = welch_t(&c.summary(), &t.summary(), 0.05).unwrap();
        assert!((r.p_value - r2.p_value).abs() < 1e-14);
    }

    #[test]
    fn one_constant_group_gives_the_other_groups_df() {
        let r = welch_t(&s(10, 1.0, 0.0), &s(20, 2.0, 1.0), 0.05).unwrap();
        assert!((r.df - 19.0).abs() < 1e-12);
    }

    #[test]
    fn both_constant_is_an_error_not_a_nan() {
        let e = welch_t(&s(10, 1.0, 0.0), &s(20, 2.0, 0.0), 0.05).unwrap_err();
        assert!(matches!(e, StatsError::ZeroStandardError { .. }));
    }

    #[test]
    fn n_below_two_and_bad_alpha_are_rejected() {
        let e = welch_t(&s(1, 1.0, 0.0), &s(20, 2.0, 1.0), 0.05).unwrap_err();
        assert_eq!(
            e.to_string(),
            "n must be ≥ 2 in each group (control has n = 1)"
        );
        assert!(welch_t(&s(5, 1.0, 1.0), &s(5, 2.0, 1.0), 1.0).is_err());
        assert!(welch_t(&s(5, 1.0, -1.0), &s(5, 2.0, 1.0), 0.05).is_err());
        assert!(welch_t(&s(5, f64::NAN, 1.0), &s(5, 2.0, 1.0), 0.05).is_err());
    }

    #[test]
    fn p_values_at_the_extremes() {
        let same = welch_t(&s(100, 3.0, 1.0), &s(100, 3.0, 1.0), 0.05).unwrap();
        assert_eq!(same.p_value, 1.0);
        assert!(same.ci_low < 0.0 && same.ci_high > 0.0);
        let far = welch_t(&s(1000, 0.0, 1.0), &s(1000, 10.0, 1.0), 0.05).unwrap();
        assert!(far.p_value >= 0.0 && far.p_value < 1e-300);
    }
}
