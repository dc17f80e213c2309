//! The one error type of the statistics engine.
//!
//! Every function validates its inputs and says which one is wrong, so that
//! a report (or `abmesh stats`) can show the message as it is.

use thiserror::Error;

/// Why a statistic could not be computed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum StatsError {
    /// Sample variances (ddof = 1) need two observations per group.
    #[error("n must be ≥ {min} in each group ({group} has n = {n})")]
    TooFewObservations {
        group: &'static str,
        n: u64,
        min: u64,
    },
    /// A scalar parameter outside its domain (alpha, power, a rate, ...).
    #[error("{name} must be {expected}, got {value}")]
    InvalidParameter {
        name: &'static str,
        value: f64,
        expected: &'static str,
    },
    /// SRM expected shares must be positive.
    #[error("weights must be positive (weight {index} is {value})")]
    NonPositiveWeight { index: usize, value: f64 },
    /// Two inputs that must pair up element by element do not.
    #[error("{what} must have the same length ({left} vs {right})")]
    LengthMismatch {
        what: &'static str,
        left: usize,
        right: usize,
    },
    /// Not enough elements in a list input.
    #[error("{what}: need at least {min}, got {got}")]
    TooFew {
        what: &'static str,
        min: usize,
        got: usize,
    },
    /// More conversions than exposures.
    #[error("{group}: conversions ({conversions}) exceed n ({n})")]
    ConversionsExceedN {
        group: &'static str,
        conversions: u64,
        n: u64,
    },
    /// Both groups are constant, so the test statistic is 0/0 or x/0.
    #[error("standard error is zero ({reason}); the test statistic is undefined")]
    ZeroStandardError { reason: &'static str },
    /// The relative lift divides by the control mean.
    #[error("control mean is zero: the relative lift is undefined")]
    ZeroBaseline,
    /// CUPED divides by the pooled covariate variance.
    #[error("the covariate x has zero variance over both groups: CUPED θ is undefined")]
    ZeroCovariateVariance,
    /// A relative effect divides by the control's value (its ratio, or its
    /// unadjusted mean), which is zero.
    #[error("the control's {what} is zero: the relative effect is undefined")]
    ZeroRelativeBaseline { what: &'static str },
    /// A ratio metric's denominator sums to zero in an arm.
    #[error("{group}: the denominator sums to 0, so the ratio is undefined")]
    ZeroDenominator { group: &'static str },
    /// Raw sums that no data can produce (e.g. Σy² < (Σy)²/n).
    #[error("{group}: inconsistent sums for {what}: {detail}")]
    InconsistentSums {
        group: &'static str,
        what: &'static str,
        detail: &'static str,
    },
    /// A histogram that cannot be read (bounds not increasing, counts not
    /// matching the buckets, ...).
    #[error("{group}: invalid histogram: {reason}")]
    InvalidHistogram { group: &'static str, reason: String },
    /// A statistic or input that must be a finite number is not.
    #[error("{what} must be finite, got {value}")]
    NonFinite { what: &'static str, value: f64 },
    /// A p-value given for adjustment is outside [0, 1].
    #[error("p-value {index} is {value}: p-values must lie in [0, 1]")]
    PValueOutOfRange { index: usize, value: f64 },
    /// The requested computation has no solution for these inputs.
    #[error("{0}")]
    NoSolution(&'static str),
}

/// Result alias of the statistics engine.
pub type Result<T> = std::result::Result<T, StatsError>;

/// `alpha` (two-sided) must lie strictly between 0 and 1.
pub(crate) fn check_alpha(alpha: f64) -> Result<()> {
    check_open_unit("alpha", alpha)
}

/// `value` must lie in the open interval (0, 1).
pub(crate) fn check_open_unit(name: &'static str, value: f64) -> Result<()> {
    if value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(StatsError::InvalidParameter {
            name,
            value,
            expected: "in (0, 1)",
        })
    }
}
