//! Sample size, minimum detectable effect and power of two-sample tests.
//!
//! All use the normal approximation of a two-sided test at level α:
//! an effect δ with standard error se is detected with power
//! Φ(|δ|/se − z_{1−α/2}) (+ the negligible opposite tail), so
//! (z_{1−α/2} + z_power)·se is the smallest effect detected with the given
//! power. For proportions, se uses the variances at both the baseline and
//! the shifted rate (p1(1−p1) + p2(1−p2)), the textbook (Fleiss) unpooled
//! form that the reference cases use.

use super::error::{check_alpha, check_open_unit, Result, StatsError};
use super::moments::{checked, GroupStats};
use super::proportions::bernoulli_variance;
use super::special::{normal_cdf, normal_upper_quantile};

/// z_{1−α/2} + z_power.
fn z_sum(alpha: f64, power: f64) -> Result<f64> {
    check_alpha(alpha)?;
    check_open_unit("power", power)?;
    Ok(normal_upper_quantile(alpha / 2.0) + normal_upper_quantile(1.0 - power))
}

/// Users per variant for a two-proportion test to detect an absolute change
/// `mde_abs` from `baseline_rate` with the given power:
/// (z_{1−α/2} + z_power)²·(p1(1−p1) + p2(1−p2))/δ², p2 = p1 + δ. Not
/// rounded (round up to plan).
pub fn sample_size_proportions(
    baseline_rate: f64,
    mde_abs: f64,
    alpha: f64,
    power: f64,
) -> Result<f64> {
    let k = z_sum(alpha, power)?;
    check_open_unit("baseline_rate", baseline_rate)?;
    let p2 = baseline_rate + mde_abs;
    if mde_abs == 0.0 || !(p2 > 0.0 && p2 < 1.0) {
        return Err(StatsError::InvalidParameter {
            name: "mde_abs",
            value: mde_abs,
            expected: "non-zero with baseline_rate + mde_abs in (0, 1)",
        });
    }
    let var = bernoulli_variance(baseline_rate) + bernoulli_variance(p2);
    Ok(k * k * var / (mde_abs * mde_abs))
}

/// Users per variant for a two-sample test of means to detect `mde` with
/// the given power, when the per-user variances are `variance_c` and
/// `variance_t` (equal arms): (z_{1−α/2} + z_power)²·(σ_c² + σ_t²)/δ².
pub fn sample_size_means(
    variance_c: f64,
    variance_t: f64,
    mde: f64,
    alpha: f64,
    power: f64,
) -> Result<f64> {
    let k = z_sum(alpha, power)?;
    check_variance("variance_c", variance_c)?;
    check_variance("variance_t", variance_t)?;
    if !(mde != 0.0 && mde.is_finite()) {
        return Err(StatsError::InvalidParameter {
            name: "mde",
            value: mde,
            expected: "finite and non-zero",
        });
    }
    Ok(k * k * (variance_c + variance_t) / (mde * mde))
}

fn check_variance(name: &'static str, v: f64) -> Result<()> {
    if v >= 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(StatsError::InvalidParameter {
            name,
            value: v,
            expected: "finite and ≥ 0",
        })
    }
}

/// Minimum detectable (absolute) difference of means with `n_c` and `n_t`
/// users and per-user variances `variance_c`, `variance_t`:
/// (z_{1−α/2} + z_power)·√(σ_c²/n_c + σ_t²/n_t).
pub fn mde_means(
    variance_c: f64,
    n_c: f64,
    variance_t: f64,
    n_t: f64,
    alpha: f64,
    power: f64,
) -> Result<f64> {
    let k = z_sum(alpha, power)?;
    check_variance("variance_c", variance_c)?;
    check_variance("variance_t", variance_t)?;
    for (name, n) in [("n_c", n_c), ("n_t", n_t)] {
        if !(n > 0.0 && n.is_finite()) {
            return Err(StatsError::InvalidParameter {
                name,
                value: n,
                expected: "finite and > 0",
            });
        }
    }
    Ok(k * (variance_c / n_c + variance_t / n_t).sqrt())
}

/// Minimum detectable difference at the current sample of an experiment:
/// [`mde_means`] with the groups' own sizes and sample variances (works for
/// [`Moments`](super::Moments), [`Summary`](super::Summary) and
/// [`Proportion`](super::Proportion)).
pub fn mde_at(
    control: &impl GroupStats,
    treatment: &impl GroupStats,
    alpha: f64,
    power: f64,
) -> Result<f64> {
    let c = checked("control", control)?;
    let t = checked("treatment", treatment)?;
    mde_means(c.var, c.n, t.var, t.n, alpha, power)
}

/// Minimum detectable absolute increase of a conversion rate from
/// `baseline_rate` with `n_per_variant` users per variant: the δ > 0 that
/// solves δ = (z_{1−α/2} + z_power)·√((p1(1−p1) + p2(1−p2))/n), p2 = p1 + δ,
/// i.e. the inverse of [`sample_size_proportions`]. The right-hand side is
/// concave in δ, so the root is unique; it is found by bisection. Errors
/// when even p2 = 1 is not detectable.
pub fn mde_proportions(
    baseline_rate: f64,
    n_per_variant: f64,
    alpha: f64,
    power: f64,
) -> Result<f64> {
    let k = z_sum(alpha, power)?;
    check_open_unit("baseline_rate", baseline_rate)?;
    if !(n_per_variant > 0.0 && n_per_variant.is_finite()) {
        return Err(StatsError::InvalidParameter {
            name: "n_per_variant",
            value: n_per_variant,
            expected: "finite and > 0",
        });
    }
    let p1 = baseline_rate;
    let f = |d: f64| {
        let p2 = p1 + d;
        d - k * ((bernoulli_variance(p1) + bernoulli_variance(p2)) / n_per_variant).sqrt()
    };
    let (mut lo, mut hi) = (0.0, 1.0 - p1);
    if f(hi) <= 0.0 {
        return Err(StatsError::NoSolution(
            "n_per_variant is too small to detect any increase from this baseline",
        ));
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if f(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(0.5 * (lo + hi))
}

/// Power of a two-sided level-`alpha` test to detect a true effect
/// `effect` measured with standard error `se`.
pub fn power_at(effect: f64, se: f64, alpha: f64) -> Result<f64> {
    check_alpha(alpha)?;
    if !(se > 0.0 && se.is_finite()) {
        return Err(StatsError::ZeroStandardError {
            reason: "power needs a positive standard error",
        });
    }
    let z = normal_upper_quantile(alpha / 2.0);
    let m = effect.abs() / se;
    Ok(normal_cdf(m - z) + normal_cdf(-m - z))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_sample_size() {
        // 10 % → 12 %, α = 0.05, power 0.8: (1.959964 + 0.841621)²·(0.09 + 0.1056)/0.02²
        let n = sample_size_proportions(0.10, 0.02, 0.05, 0.8).unwrap();
        let k = 1.959_963_984_540_054 + 0.841_621_233_572_914_3;
        assert!((n - k * k * 0.1956 / 0.0004).abs() < 1e-8, "{n}");
        assert!(sample_size_proportions(0.10, 0.0, 0.05, 0.8).is_err());
        assert!(sample_size_proportions(0.99, 0.02, 0.05, 0.8).is_err());
        assert!(sample_size_proportions(0.10, 0.02, 0.05, 1.0).is_err());
    }

    #[test]
    fn mde_inverts_sample_size() {
        for &(p1, n) in &[(0.1, 3841.0), (0.5, 1000.0), (0.02, 250_000.0)] {
            let d = mde_proportions(p1, n, 0.05, 0.8).unwrap();
            let back = sample_size_proportions(p1, d, 0.05, 0.8).unwrap();
            assert!((back - n).abs() / n < 1e-9, "{p1} {n}: {back}");
        }
        assert!(mde_proportions(0.5, 1.0, 0.05, 0.99).is_err());
    }

    #[test]
    fn mde_of_means_has_the_requested_power() {
        let mde = mde_means(4.0, 1000.0, 9.0, 500.0, 0.05, 0.8).unwrap();
        let se = (4.0 / 1000.0 + 9.0f64 / 500.0).sqrt();
        assert!((power_at(mde, se, 0.05).unwrap() - 0.8).abs() < 1e-4);
        // ... and sample_size_means agrees with it at equal arms.
        let n = sample_size_means(
            4.0,
            9.0,
            mde_means(4.0, 700.0, 9.0, 700.0, 0.05, 0.9).unwrap(),
            0.05,
            0.9,
        )
        .unwrap();
        assert!((n - 700.0).abs() < 1e-9);
    }

    #[test]
    fn power_at_zero_effect_is_alpha() {
        assert!((power_at(0.0, 1.0, 0.05).unwrap() - 0.05).abs() < 1e-15);
    }
}
