//! Sequential testing with asymptotic confidence sequences.
//!
//! An experiment dashboard is looked at every day; re-running a fixed-
//! horizon test at each look and stopping at the first p < α inflates the
//! false-positive rate several-fold (see `tests/stats_simulation.rs`). A
//! confidence sequence is a sequence of intervals that covers the true
//! effect at *all* sample sizes simultaneously with probability ≥ 1 − α,
//! so it may be checked after every batch of events.
//!
//! # Why this construction
//!
//! This is the asymptotic confidence sequence of Waudby-Smith, Howard et al.
//! ("Time-uniform central limit theory and asymptotic confidence sequences",
//! 2021), with the normal-mixture boundary, exactly as GrowthBook and Eppo
//! implement it:
//!
//! * it needs only the current estimate, its standard error and N, so it is
//!   computed straight from the merged sufficient statistics, with no
//!   per-look history to store (unlike group-sequential α-spending, which
//!   needs the look schedule fixed in advance);
//! * it is asymptotic, so it applies to the same Welch / delta-method
//!   estimates as the fixed-horizon tests, not only to normal data with
//!   known variance (as mSPRT would require);
//! * matching two widely used tools means a team can compare our numbers
//!   with theirs.
//!
//! With ρ² = (−2 ln α + ln(1 − 2 ln α))/n* and N = n_c + n_t, the half-width
//! is se·√N·√(2(Nρ² + 1)/(N²ρ²) · ln(√(Nρ² + 1)/α)). `n_star` (n*) is the
//! total sample size at which the sequence is tightest; it costs little to
//! be off by a factor of a few. [`DEFAULT_N_STAR`] is GrowthBook's default.
//! The p-value is the always-valid p-value of this look, 1/e with e the
//! mixture e-value, capped at 1; p < α exactly when 0 is outside the
//! sequence.

use serde::Serialize;

use super::error::{check_alpha, Result, StatsError};
use super::lift::lift_parts;
use super::moments::GroupStats;
use super::welch::welch_parts;

/// Default tuning sample size n* (GrowthBook's default
/// `sequentialTuningParameter`): a mid-sized experiment's total users.
pub const DEFAULT_N_STAR: f64 = 5000.0;

/// Parameters of a sequential look.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SequentialParams {
    /// Two-sided level of the whole sequence.
    pub alpha: f64,
    /// Tuning total sample size n* (> 0).
    pub n_star: f64,
    /// Test the relative lift instead of the absolute difference.
    pub relative: bool,
}

impl Default for SequentialParams {
    fn default() -> Self {
        SequentialParams {
            alpha: 0.05,
            n_star: DEFAULT_N_STAR,
            relative: false,
        }
    }
}

/// Result of one sequential look.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SequentialResult {
    /// Welch difference, or relative lift when `relative`.
    pub estimate: f64,
    /// Its (fixed-horizon) standard error.
    pub se: f64,
    /// estimate − half-width.
    pub ci_low: f64,
    /// estimate + half-width.
    pub ci_high: f64,
    /// Always-valid p-value of this look (capped at 1).
    pub p_value: f64,
    /// Half-width of the confidence sequence at this N.
    pub half_width: f64,
}

/// The confidence sequence around `estimate` with standard error `se` after
/// `n_total` observations (both arms): returns (half-width, p-value).
pub fn confidence_sequence(
    estimate: f64,
    se: f64,
    n_total: f64,
    alpha: f64,
    n_star: f64,
) -> Result<(f64, f64)> {
    check_alpha(alpha)?;
    if !(n_star > 0.0 && n_star.is_finite()) {
        return Err(StatsError::InvalidParameter {
            name: "n_star",
            value: n_star,
            expected: "finite and > 0",
        });
    }
    if !(n_total > 0.0 && n_total.is_finite()) {
        return Err(StatsError::InvalidParameter {
            name: "N",
            value: n_total,
            expected: "finite and > 0",
        });
    }
    if !(se > 0.0 && se.is_finite()) {
        return Err(StatsError::ZeroStandardError {
            reason: "the estimate's standard error is not positive",
        });
    }
    let ln_alpha = alpha.ln();
    let rho2 = (-2.0 * ln_alpha + (1.0 - 2.0 * ln_alpha).ln()) / n_star;
    let nr = n_total * rho2 + 1.0;
    // se·√N·√(2·nr/(N²ρ²)·ln(√nr/α)) = se·√(2·nr/(Nρ²)·(½ ln nr − ln α))
    let half_width = se * (2.0 * nr / (n_total * rho2) * (0.5 * nr.ln() - ln_alpha)).sqrt();
    let s = n_total * (estimate / se).powi(2);
    let ln_e = rho2 * s / (2.0 * nr) - 0.5 * nr.ln();
    let p_value = (-ln_e).exp().min(1.0);
    Ok((half_width, p_value))
}

/// One look of the sequential test of treatment vs control.
pub fn sequential(
    control: &impl GroupStats,
    treatment: &impl GroupStats,
    params: SequentialParams,
) -> Result<SequentialResult> {
    check_alpha(params.alpha)?;
    let (estimate, se) = if params.relative {
        let (lift, se, _) = lift_parts(control, treatment)?;
        (lift, se)
    } else {
        let p = welch_parts(control, treatment)?;
        (p.t.mean - p.c.mean, p.var_diff.sqrt())
    };
    let n_total = (control.n() + treatment.n()) as f64;
    let (half_width, p_value) =
        confidence_sequence(estimate, se, n_total, params.alpha, params.n_star)?;
    Ok(SequentialResult {
        estimate,
        se,
        ci_low: estimate - half_width,
        ci_high: estimate + half_width,
        p_value,
        half_width,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::special::normal_upper_quantile;

    #[test]
    fn p_below_alpha_exactly_when_zero_is_outside_the_sequence() {
        for &est in &[0.0, 0.01, 0.05, 0.1, 0.2, 0.5, -0.3] {
            for &n in &[100.0, 1000.0, 1e5] {
                let (hw, p) = confidence_sequence(est, 0.08, n, 0.05, 1000.0).unwrap();
                assert_eq!(p < 0.05, est.abs() > hw, "est {est} n {n}");
                assert!((0.0..=1.0).contains(&p));
            }
        }
    }

    #[test]
    fn wider_than_the_fixed_horizon_interval() {
        for &n in &[10.0, 1e3, 1e5, 1e7] {
            let (hw, _) = confidence_sequence(0.0, 1.0, n, 0.05, 5000.0).unwrap();
            assert!(hw > normal_upper_quantile(0.025), "n {n}: {hw}");
        }
    }

    #[test]
    fn rejects_bad_tuning() {
        assert!(confidence_sequence(0.1, 1.0, 100.0, 0.05, 0.0).is_err());
        assert!(confidence_sequence(0.1, 0.0, 100.0, 0.05, 10.0).is_err());
        assert!(confidence_sequence(0.1, 1.0, 100.0, 0.0, 10.0).is_err());
    }
}
