//! Conversion metrics: counts of users and of converted users.
//!
//! The two-proportion test uses the pooled proportion for the z statistic
//! (the variance under the null hypothesis p_c = p_t, which is what keeps
//! the test's size right) and the unpooled Wald interval for the
//! difference (the variance where the difference is not assumed zero), the
//! convention of statsmodels and most experimentation tools.

use serde::{Deserialize, Serialize};

use super::error::{check_alpha, Result, StatsError};
use super::moments::GroupStats;
use super::special::{normal_two_sided_p, normal_upper_quantile};

/// The variance of a conversion (0/1) outcome with rate `p`: p(1 − p).
///
/// The one definition the statistics engine uses for conversions: in
/// [`two_proportion`]'s Wald interval (p(1 − p)/n per arm), in the
/// [`GroupStats`] view of a [`Proportion`] that Welch, the relative lift,
/// the sequential test and the metric guardrails read, and in the sample
/// size and MDE formulas ([`super::power`]). It is the maximum-likelihood
/// variance of a Bernoulli variable, which is what gbstats's
/// `ProportionStatistic` uses everywhere. The ddof = 1 sample variance of
/// the zeros and ones, p(1 − p)·n/(n − 1), differs from it only by n/(n − 1)
/// (0.1 % at n = 1 000), so the choice matters for agreement, not for
/// decisions; one definition keeps the report's intervals consistent.
pub fn bernoulli_variance(p: f64) -> f64 {
    p * (1.0 - p)
}

/// Users exposed and users converted in one variant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proportion {
    pub n: u64,
    pub conversions: u64,
}

impl Proportion {
    /// A checked proportion (conversions ≤ n).
    pub fn new(n: u64, conversions: u64) -> Result<Self> {
        let p = Proportion { n, conversions };
        p.validate("group")?;
        Ok(p)
    }

    /// conversions / n (NaN when n = 0).
    pub fn rate(&self) -> f64 {
        self.conversions as f64 / self.n as f64
    }

    /// Per-user variance of the conversion outcome, [`bernoulli_variance`]
    /// of the rate (NaN when n = 0).
    pub fn variance(&self) -> f64 {
        bernoulli_variance(self.rate())
    }

    /// Adds the counts of another sidecar or time bucket.
    pub fn merge(&mut self, other: &Proportion) {
        self.n += other.n;
        self.conversions += other.conversions;
    }

    pub(crate) fn validate(&self, group: &'static str) -> Result<()> {
        if self.conversions > self.n {
            return Err(StatsError::ConversionsExceedN {
                group,
                conversions: self.conversions,
                n: self.n,
            });
        }
        if self.n == 0 {
            return Err(StatsError::TooFewObservations {
                group,
                n: 0,
                min: 1,
            });
        }
        Ok(())
    }
}

/// As a 0/1 outcome: mean p and variance [`bernoulli_variance`] p(1 − p)
/// (not the ddof = 1 sample variance; see there), so that conversions can
/// also go through Welch, the lift and the sequential test.
impl GroupStats for Proportion {
    fn n(&self) -> u64 {
        self.n
    }
    fn mean(&self) -> f64 {
        self.rate()
    }
    fn variance(&self) -> f64 {
        if self.n < 2 {
            return f64::NAN;
        }
        Proportion::variance(self)
    }
    fn check(&self, group: &'static str) -> Result<()> {
        self.validate(group)
    }
}

/// Result of [`two_proportion`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TwoProportionResult {
    /// p_t − p_c.
    pub diff: f64,
    /// diff over the pooled standard error.
    pub z: f64,
    /// Two-sided normal p-value of `z`.
    pub p_value: f64,
    /// Unpooled standard error √(p_c(1−p_c)/n_c + p_t(1−p_t)/n_t).
    pub se: f64,
    /// diff − z_{1−α/2}·se.
    pub ci_low: f64,
    /// diff + z_{1−α/2}·se.
    pub ci_high: f64,
}

/// Two-proportion z-test of treatment vs control at two-sided `alpha`.
/// Errors when a group is empty, has more conversions than users, or when
/// no group varies (all converted or none did).
pub fn two_proportion(
    control: &Proportion,
    treatment: &Proportion,
    alpha: f64,
) -> Result<TwoProportionResult> {
    check_alpha(alpha)?;
    control.validate("control")?;
    treatment.validate("treatment")?;
    let (nc, nt) = (control.n as f64, treatment.n as f64);
    let (pc, pt) = (control.rate(), treatment.rate());
    let diff = pt - pc;
    let pooled = (control.conversions + treatment.conversions) as f64 / (nc + nt);
    let se_pooled = (bernoulli_variance(pooled) * (1.0 / nc + 1.0 / nt)).sqrt();
    if se_pooled == 0.0 {
        return Err(StatsError::ZeroStandardError {
            reason: "no user converted, or every user did, in both groups",
        });
    }
    let z = diff / se_pooled;
    let se = (control.variance() / nc + treatment.variance() / nt).sqrt();
    let q = normal_upper_quantile(alpha / 2.0);
    Ok(TwoProportionResult {
        diff,
        z,
        p_value: normal_two_sided_p(z),
        se,
        ci_low: diff - q * se,
        ci_high: diff + q * se,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_statsmodels_on_a_small_case() {
        // statsmodels proportions_ztest([60, 45], [500, 500]) → z, p
        let r = two_proportion(
            &Proportion::new(500, 45).unwrap(),
            &Proportion::new(500, 60).unwrap(),
            0.05,
        )
        .unwrap();
        assert!((r.diff - 0.03).abs() < 1e-15);
        assert!((r.z - 1.547_337_646_055_907).abs() < 1e-12, "{}", r.z);
        assert!(
            (r.p_value - 0.121_781_848_425_856_72).abs() < 1e-12,
            "{}",
            r.p_value
        );
    }

    #[test]
    fn degenerate_groups_are_errors() {
        let zero = Proportion {
            n: 100,
            conversions: 0,
        };
        assert!(matches!(
            two_proportion(&zero, &zero, 0.05),
            Err(StatsError::ZeroStandardError { .. })
        ));
        let bad = Proportion {
            n: 10,
            conversions: 11,
        };
        assert_eq!(
            two_proportion(&bad, &zero, 0.05).unwrap_err().to_string(),
            "control: conversions (11) exceed n (10)"
        );
        let empty = Proportion {
            n: 0,
            conversions: 0,
        };
        assert!(two_proportion(&zero, &empty, 0.05).is_err());
    }

    #[test]
    fn p_values_at_the_extremes() {
        let same = Proportion {
            n: 1000,
            conversions: 100,
        };
        let r = two_proportion(&same, &same, 0.05).unwrap();
        assert_eq!((r.z, r.p_value), (0.0, 1.0));
        // z ≈ 99: the p-value underflows gracefully to (nearly) 0, no NaN.
        let lo = Proportion {
            n: 1_000_000,
            conversions: 100_000,
        };
        let hi = Proportion {
            n: 1_000_000,
            conversions: 200_000,
        };
        let r = two_proportion(&lo, &hi, 0.05).unwrap();
        assert!(
            r.z > 90.0 && r.p_value >= 0.0 && r.p_value < 1e-300,
            "{r:?}"
        );
        // Only one group varies: still defined.
        let none = Proportion {
            n: 1000,
            conversions: 0,
        };
        let r = two_proportion(&none, &same, 0.05).unwrap();
        assert!(r.p_value < 1e-20 && r.ci_low > 0.0, "{r:?}");
    }

    #[test]
    fn conversions_have_one_variance_p_times_one_minus_p() {
        // 3 of 10: p(1 − p) = 0.21, the population variance of the zeros
        // and ones (their ddof = 1 sample variance is 0.21·10/9).
        let p = Proportion {
            n: 10,
            conversions: 3,
        };
        let m = crate::Moments::from_values(&[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert!((GroupStats::variance(&p) - 0.21).abs() < 1e-15);
        assert!((p.variance() - 0.21).abs() < 1e-15);
        assert!((GroupStats::variance(&p) - m.variance() * 9.0 / 10.0).abs() < 1e-15);
        // The Welch view and the Wald interval agree on the same se.
        let q = Proportion {
            n: 20,
            conversions: 12,
        };
        let w = crate::welch_t(&p, &q, 0.05).unwrap();
        let z = two_proportion(&p, &q, 0.05).unwrap();
        assert!((w.se - z.se).abs() < 1e-15, "{} vs {}", w.se, z.se);
    }
}
