//! Adjusted p-values for many metrics or many variants at once.
//!
//! An experiment with ten metrics checked at α = 0.05 flags at least one of
//! them by chance 40 % of the time. Two standard adjustments, both
//! returning adjusted p-values in input order (compare each with α):
//!
//! * Holm's step-down method controls the family-wise error rate (the
//!   chance of *any* false positive) and is uniformly more powerful than
//!   Bonferroni, with no assumption on dependence: the default for
//!   guardrail metrics, where one false alarm stops a rollout.
//! * Benjamini–Hochberg controls the false discovery rate (the expected
//!   share of false positives among the flagged): for exploratory metric
//!   lists, where some false leads are acceptable.
//!
//! The values match statsmodels' `multipletests` (`holm`, `fdr_bh`):
//! monotone in the order of the raw p-values and capped at 1.

use std::str::FromStr;

use super::error::{Result, StatsError};

/// A p-value adjustment method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adjustment {
    /// Holm step-down (family-wise error rate).
    Holm,
    /// Benjamini–Hochberg step-up (false discovery rate).
    BenjaminiHochberg,
}

/// A method name that is no [`Adjustment`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown adjustment method {0:?} (expected \"holm\" or \"bh\")")]
pub struct UnknownAdjustment(pub String);

impl FromStr for Adjustment {
    type Err = UnknownAdjustment;
    /// `holm`, or `bh` / `fdr_bh` / `benjamini-hochberg`.
    fn from_str(s: &str) -> std::result::Result<Self, UnknownAdjustment> {
        match s.to_ascii_lowercase().as_str() {
            "holm" => Ok(Adjustment::Holm),
            "bh" | "fdr_bh" | "benjamini-hochberg" | "benjamini_hochberg" => {
                Ok(Adjustment::BenjaminiHochberg)
            }
            other => Err(UnknownAdjustment(other.to_owned())),
        }
    }
}

/// Adjusted p-values by `method`, in input order.
pub fn adjust(p_values: &[f64], method: Adjustment) -> Result<Vec<f64>> {
    match method {
        Adjustment::Holm => holm(p_values),
        Adjustment::BenjaminiHochberg => benjamini_hochberg(p_values),
    }
}

/// Indices of `p` sorted by ascending p-value, after checking p ∈ [0, 1].
fn ascending(p: &[f64]) -> Result<Vec<usize>> {
    for (index, &value) in p.iter().enumerate() {
        if !(0.0..=1.0).contains(&value) {
            return Err(StatsError::PValueOutOfRange { index, value });
        }
    }
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    Ok(order)
}

/// Holm step-down: the i-th smallest (0-based) becomes
/// max over j ≤ i of min(1, (m − j)·p_(j)).
pub fn holm(p_values: &[f64]) -> Result<Vec<f64>> {
    let order = ascending(p_values)?;
    let m = p_values.len() as f64;
    let mut out = vec![0.0; p_values.len()];
    let mut running = 0.0f64;
    for (rank, &i) in order.iter().enumerate() {
        let adjusted = ((m - rank as f64) * p_values[i]).min(1.0);
        running = running.max(adjusted);
        out[i] = running;
    }
    Ok(out)
}

/// Benjamini–Hochberg: the i-th smallest (1-based) becomes
/// min over j ≥ i of min(1, m/j·p_(j)).
pub fn benjamini_hochberg(p_values: &[f64]) -> Result<Vec<f64>> {
    let order = ascending(p_values)?;
    let m = p_values.len() as f64;
    let mut out = vec![0.0; p_values.len()];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        let adjusted = (m / (rank as f64 + 1.0) * p_values[i]).min(1.0);
        running = running.min(adjusted);
        out[i] = running;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn holm_known_values() {
        // statsmodels multipletests([0.01, 0.04, 0.03, 0.005], method="holm")
        close(
            &holm(&[0.01, 0.04, 0.03, 0.005]).unwrap(),
            &[0.03, 0.06, 0.06, 0.02],
        );
        // capped at 1 and monotone
        close(&holm(&[0.5, 0.4, 0.9]).unwrap(), &[1.0, 1.0, 1.0]);
    }

    #[test]
    fn bh_known_values() {
        // statsmodels multipletests([0.01, 0.04, 0.03, 0.005], method="fdr_bh")
        close(
            &benjamini_hochberg(&[0.01, 0.04, 0.03, 0.005]).unwrap(),
            &[0.02, 0.04, 0.04, 0.02],
        );
        close(&benjamini_hochberg(&[1.0, 0.0]).unwrap(), &[1.0, 0.0]);
    }

    #[test]
    fn edge_cases() {
        assert!(holm(&[]).unwrap().is_empty());
        close(&holm(&[0.3]).unwrap(), &[0.3]);
        close(&benjamini_hochberg(&[0.3]).unwrap(), &[0.3]);
        // ties keep equal adjusted values
        close(&holm(&[0.02, 0.02]).unwrap(), &[0.04, 0.04]);
        assert_eq!(
            holm(&[0.1, 1.5]).unwrap_err().to_string(),
            "p-value 1 is 1.5: p-values must lie in [0, 1]"
        );
        assert!(benjamini_hochberg(&[f64::NAN]).is_err());
        assert!("bonferroni".parse::<Adjustment>().is_err());
        assert_eq!(
            "BH".parse::<Adjustment>(),
            Ok(Adjustment::BenjaminiHochberg)
        );
    }
}
