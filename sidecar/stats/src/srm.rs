//! Sample-ratio mismatch: do the observed variant counts fit the
//! configured split?
//!
//! A mismatch means assignment or logging is broken (a variant that crashes
//! before logging its exposure, a redirect that drops users), which
//! invalidates every metric of the experiment, so it is checked before any
//! effect is reported. Pearson's chi-square goodness-of-fit test is the
//! standard check; it is exact enough at experiment sizes (every expected
//! count is in the hundreds at least).

use serde::Serialize;

use super::error::{Result, StatsError};
use super::special::chi2_sf;

/// The p-value below which a report flags SRM. Stricter than the usual 0.05
/// because the check is repeated at every look and a false alarm stops a
/// healthy experiment; a real mismatch at experiment sizes gives p-values
/// far below this (51/49 at 100 000 users: p ≈ 2.5e-10).
pub const SRM_ALERT_P: f64 = 0.001;

/// Result of [`srm`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SrmResult {
    /// Σ (observed − expected)² / expected.
    pub chi2: f64,
    /// k − 1.
    pub df: u64,
    /// P(χ²_df ≥ chi2).
    pub p_value: f64,
}

/// Chi-square test of `observed` counts against expected shares
/// proportional to `weights` (any positive scale: `[1, 1]`, `[50, 50]` and
/// `[0.5, 0.5]` are the same split).
pub fn srm(observed: &[u64], weights: &[f64]) -> Result<SrmResult> {
    if observed.len() != weights.len() {
        return Err(StatsError::LengthMismatch {
            what: "observed and weights",
            left: observed.len(),
            right: weights.len(),
        });
    }
    if observed.len() < 2 {
        return Err(StatsError::TooFew {
            what: "variants",
            min: 2,
            got: observed.len(),
        });
    }
    for (index, &w) in weights.iter().enumerate() {
        if !(w > 0.0 && w.is_finite()) {
            return Err(StatsError::NonPositiveWeight { index, value: w });
        }
    }
    let total: u64 = observed.iter().sum();
    if total == 0 {
        return Err(StatsError::NoSolution(
            "no observations: every observed count is zero",
        ));
    }
    let total = total as f64;
    let weight_sum: f64 = weights.iter().sum();
    let chi2 = observed
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let expected = total * w / weight_sum;
            let d = o as f64 - expected;
            d * d / expected
        })
        .sum::<f64>();
    let df = observed.len() as u64 - 1;
    Ok(SrmResult {
        chi2,
        df,
        p_value: chi2_sf(chi2, df as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_fit_has_p_one() {
        let r = srm(&[500, 500], &[1.0, 1.0]).unwrap();
        assert_eq!(r.chi2, 0.0);
        assert_eq!(r.p_value, 1.0);
        assert_eq!(r.df, 1);
    }

    #[test]
    fn weights_scale_does_not_matter() {
        let a = srm(&[5100, 4900], &[1.0, 1.0]).unwrap();
        let b = srm(&[5100, 4900], &[50.0, 50.0]).unwrap();
        assert!((a.chi2 - 4.0).abs() < 1e-12);
        assert!((a.chi2 - b.chi2).abs() < 1e-12);
    }

    #[test]
    fn invalid_inputs_are_named() {
        assert_eq!(
            srm(&[1, 2], &[1.0, 0.0]).unwrap_err().to_string(),
            "weights must be positive (weight 1 is 0)"
        );
        assert!(srm(&[1, 2], &[1.0]).is_err());
        assert!(srm(&[1], &[1.0]).is_err());
        assert!(srm(&[0, 0], &[1.0, 1.0]).is_err());
        assert!(srm(&[1, 2], &[1.0, f64::NAN]).is_err());
    }
}
