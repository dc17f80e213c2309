//! Distribution functions with the accuracy the reference cases need.
//!
//! `statrs` supplies the building blocks (log-gamma, erfc and its inverse,
//! the regularized upper incomplete gamma function). Two of its pieces are
//! not accurate enough for experiment sizes, so they are redone here:
//!
//! * `StudentsT::inverse_cdf` loses digits at large degrees of freedom
//!   (relative error 3e-6 at df ≈ 1e5 and 3e-4 at df = 1e6, measured against
//!   scipy), and Welch df are routinely that large. [`t_upper_quantile`]
//!   polishes a starting value with Newton steps on the accurate tail.
//! * `beta_reg` stops its continued fraction after 140 terms, which is not
//!   enough once both shape parameters are large (it needs O(√max(a, b))
//!   terms), and it forms its prefactor as a difference of log-gammas of
//!   size ~a·ln a, which costs ~1e-8 relative at a ≈ 5e6. `inc_beta` uses
//!   Stirling-series differences for the log-beta and lets the continued
//!   fraction run to convergence.

use statrs::function::erf::erfc_inv;
use statrs::function::gamma::{gamma_ur, ln_gamma};

const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

/// Stirling correction: ln Γ(z) = (z − ½) ln z − z + ½ ln 2π + ζ(z).
/// Five terms give an absolute error below 2e-14 for z ≥ 10.
fn stirling_correction(z: f64) -> f64 {
    let r = 1.0 / z;
    let r2 = r * r;
    r * (1.0 / 12.0 - r2 * (1.0 / 360.0 - r2 * (1.0 / 1260.0 - r2 * (1.0 / 1680.0 - r2 / 1188.0))))
}

/// ln Γ(a + b) − ln Γ(a) for a > 0, b ≥ 0, without cancelling two huge
/// log-gammas when a is large.
pub(crate) fn ln_gamma_ratio(a: f64, b: f64) -> f64 {
    if a >= 10.0 && b >= 0.0 {
        let s = a + b;
        (a - 0.5) * (b / a).ln_1p() + b * s.ln() - b
            + (stirling_correction(s) - stirling_correction(a))
    } else {
        ln_gamma(a + b) - ln_gamma(a)
    }
}

/// ln B(a, b) = ln Γ(a) + ln Γ(b) − ln Γ(a + b), accurate for large a and b.
pub(crate) fn ln_beta(a: f64, b: f64) -> f64 {
    let (small, large) = if a <= b { (a, b) } else { (b, a) };
    if small >= 10.0 {
        let s = a + b;
        -(a - 0.5) * (b / a).ln_1p() - (b - 0.5) * (a / b).ln_1p() - 0.5 * s.ln()
            + HALF_LN_2PI
            + stirling_correction(a)
            + stirling_correction(b)
            - stirling_correction(s)
    } else if large >= 10.0 {
        ln_gamma(small) - ln_gamma_ratio(large, small)
    } else {
        ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
    }
}

/// Continued fraction of the incomplete beta function (modified Lentz), as
/// in Numerical Recipes' `betacf`, run until it converges.
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const MAX_TERMS: u32 = 1_000_000;
    let qab = a + b;
    let qap = a + 1.0;
    let qam = a - 1.0;
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=MAX_TERMS {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() <= f64::EPSILON {
            break;
        }
    }
    h
}

/// Regularized incomplete beta function, returned as the pair
/// (I_x(a, b), 1 − I_x(a, b)), each accurate in relative terms (the one
/// that is computed directly is the smaller tail, so neither is formed by
/// cancellation). `y` must be 1 − x, passed separately so that callers can
/// compute it without rounding (e.g. t²/(ν + t²)).
pub(crate) fn inc_beta(a: f64, b: f64, x: f64, y: f64) -> (f64, f64) {
    debug_assert!(a > 0.0 && b > 0.0 && (0.0..=1.0).contains(&x));
    if x <= 0.0 {
        return (0.0, 1.0);
    }
    if y <= 0.0 {
        return (1.0, 0.0);
    }
    // ln x from whichever of x, y is small, so that a·ln x keeps its
    // digits when x is close to 1 and a is large (t-tests at df ~ 1e7).
    let ln_x = if x > 0.5 { (-y).ln_1p() } else { x.ln() };
    let ln_y = if y > 0.5 { (-x).ln_1p() } else { y.ln() };
    let ln_front = a * ln_x + b * ln_y - ln_beta(a, b);
    if x < (a + 1.0) / (a + b + 2.0) {
        let lower = (ln_front + beta_cf(a, b, x).ln() - a.ln()).exp();
        (lower, 1.0 - lower)
    } else {
        let upper = (ln_front + beta_cf(b, a, y).ln() - b.ln()).exp();
        (1.0 - upper, upper)
    }
}

/// erfc with full double precision.
///
/// `statrs::function::erf::erfc` is off by ~1e-10 relative for x ≥ 0.5
/// (its rational approximations are offset by constants that were exact
/// single-precision floats in Boost and are used as decimal doubles). There
/// erfc(x) = Q(½, x²), the regularized upper incomplete gamma function,
/// which `statrs` computes to ~1e-15.
pub(crate) fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else if x.abs() < 0.5 {
        statrs::function::erf::erfc(x)
    } else if x > 0.0 {
        if x > 27.3 {
            0.0 // below the smallest subnormal
        } else {
            gamma_ur(0.5, x * x)
        }
    } else {
        2.0 - erfc(-x)
    }
}

/// P(|Z| ≥ |z|) for a standard normal Z.
pub fn normal_two_sided_p(z: f64) -> f64 {
    erfc(z.abs() / std::f64::consts::SQRT_2)
}

/// Φ(z), the standard normal CDF (computed from the tail that avoids
/// cancellation).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// z with P(Z > z) = u, i.e. Φ⁻¹(1 − u), for u in (0, 1). Taking the upper
/// tail probability keeps full precision for small u (z_{1−α/2} =
/// `normal_upper_quantile(alpha / 2)`).
pub fn normal_upper_quantile(u: f64) -> f64 {
    std::f64::consts::SQRT_2 * erfc_inv(2.0 * u)
}

/// Two-sided p-value of a Student t statistic: P(|T_df| ≥ |t|) =
/// I_{df/(df+t²)}(df/2, 1/2).
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if df.is_infinite() {
        return normal_two_sided_p(t);
    }
    let t2 = t * t;
    if t2 == 0.0 {
        return 1.0;
    }
    if t2.is_infinite() {
        return 0.0;
    }
    // x = df/(df+t²) and y = t²/(df+t²), each without cancellation.
    let x = 1.0 / (1.0 + t2 / df);
    let y = 1.0 / (1.0 + df / t2);
    inc_beta(0.5 * df, 0.5, x, y).0
}

/// Density of Student's t with `df` degrees of freedom.
fn t_pdf(t: f64, df: f64) -> f64 {
    let ln_norm = ln_gamma_ratio(0.5 * df, 0.5) - 0.5 * (df * std::f64::consts::PI).ln();
    (ln_norm - 0.5 * (df + 1.0) * (t * t / df).ln_1p()).exp()
}

/// t with P(T_df > t) = u, for u in (0, 1): the t_{1−u, df} quantile.
///
/// A starting value (Cornish–Fisher expansion around the normal quantile for
/// large df, `statrs` below that, where it is accurate) is refined by Newton
/// steps on the upper tail computed by [`t_two_sided_p`].
pub fn t_upper_quantile(u: f64, df: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    if df.is_infinite() {
        return normal_upper_quantile(u);
    }
    if u > 0.5 {
        return -t_upper_quantile(1.0 - u, df);
    }
    if u == 0.5 {
        return 0.0;
    }
    let mut t = if df >= 100.0 {
        let z = normal_upper_quantile(u);
        let (z3, z5, z7) = (z.powi(3), z.powi(5), z.powi(7));
        z + (z3 + z) / (4.0 * df)
            + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * df * df)
            + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * df * df * df)
    } else {
        match StudentsT::new(0.0, 1.0, df) {
            Ok(d) => d.inverse_cdf(1.0 - u),
            Err(_) => return f64::NAN,
        }
    };
    if !(t.is_finite() && t > 0.0) {
        t = normal_upper_quantile(u).max(f64::MIN_POSITIVE);
    }
    for _ in 0..100 {
        let tail = 0.5 * t_two_sided_p(t, df);
        let step = (tail - u) / t_pdf(t, df);
        let mut next = t + step;
        if next <= 0.0 {
            next = 0.5 * t;
        }
        let done = (next - t).abs() <= 4.0 * f64::EPSILON * t;
        t = next;
        if done {
            break;
        }
    }
    t
}

/// P(χ²_df ≥ x), the upper tail of the chi-square distribution.
pub fn chi2_sf(x: f64, df: f64) -> f64 {
    if x <= 0.0 {
        1.0
    } else if x.is_infinite() {
        0.0
    } else {
        gamma_ur(0.5 * df, 0.5 * x)
    }
}

/// Nodes and weights of Gauss–Legendre quadrature of `n` points on [−1, 1]
/// (Newton iteration on the Legendre polynomial from the Chebyshev guess).
pub(crate) fn gauss_legendre(n: usize) -> Vec<(f64, f64)> {
    let nf = n as f64;
    (0..n)
        .map(|i| {
            let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (nf + 0.5)).cos();
            let mut dp = 1.0;
            for _ in 0..100 {
                let (mut p0, mut p1) = (1.0, x);
                for k in 2..=n {
                    let kf = k as f64;
                    let p2 = ((2.0 * kf - 1.0) * x * p1 - (kf - 1.0) * p0) / kf;
                    p0 = p1;
                    p1 = p2;
                }
                dp = nf * (x * p1 - p0) / (x * x - 1.0);
                let dx = p1 / dp;
                x -= dx;
                if dx.abs() < 1e-16 {
                    break;
                }
            }
            (x, 2.0 / ((1.0 - x * x) * dp * dp))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs()
    }

    #[test]
    fn ln_gamma_ratio_and_ln_beta_agree_with_direct_formulas_where_those_are_exact() {
        // Small arguments: the direct log-gamma difference is accurate there.
        for &(a, b) in &[(10.0, 0.5), (12.5, 3.0), (30.0, 40.0), (10.0, 10.0)] {
            let direct = ln_gamma(a + b) - ln_gamma(a);
            assert!((ln_gamma_ratio(a, b) - direct).abs() < 1e-12, "{a} {b}");
            let direct = ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b);
            assert!((ln_beta(a, b) - direct).abs() < 1e-11, "{a} {b}");
        }
        // Γ(n + 1)/Γ(n) = n exactly.
        assert!((ln_gamma_ratio(1e6, 1.0) - 1e6f64.ln()).abs() < 1e-14);
        // B(a, 1) = 1/a.
        assert!((ln_beta(3e6, 1.0) + 3e6f64.ln()).abs() < 1e-13);
    }

    #[test]
    fn t_p_values_match_scipy() {
        // scipy.stats.t.sf(t, df) * 2
        let cases = [
            (2.0, 10.0, 0.073_388_034_770_740_37),
            (
                2.263_389_874_374_001,
                108_524.472_019_508_35,
                0.023_613_632_667_220_708,
            ),
            (8.0, 1e7, 1.244_323_480_280_683e-15),
            (1.7, 1e7, 0.089_130_956_614_413_45),
        ];
        for (t, df, p) in cases {
            assert!(rel(t_two_sided_p(t, df), p) < 1e-9, "{t} {df}");
            assert!(rel(t_two_sided_p(-t, df), p) < 1e-9, "{t} {df}");
        }
        assert_eq!(t_two_sided_p(0.0, 5.0), 1.0);
        assert_eq!(t_two_sided_p(f64::INFINITY, 5.0), 0.0);
    }

    #[test]
    fn t_quantiles_match_scipy_where_statrs_does_not() {
        // scipy.stats.t.ppf(q, df)
        let cases = [
            (0.95, 108_524.47, 1.644_867_667_860_717_3),
            (0.9, 1e6, 1.281_552_412_129_939),
            (0.975, 1e7, 1.959_964_221_767_205),
            (0.975, 3.0, 3.182_446_305_283_707_8),
            (0.995, 30.0, 2.749_995_653_567_225_4),
        ];
        for (q, df, t) in cases {
            assert!(rel(t_upper_quantile(1.0 - q, df), t) < 1e-10, "{q} {df}");
            assert!(rel(t_upper_quantile(q, df), -t) < 1e-10, "{q} {df}");
        }
    }

    #[test]
    fn erfc_is_accurate_where_statrs_is_not() {
        // mpmath.erfc
        let cases = [
            (0.1, 0.887537083981715),
            (0.5, 0.4795001221869535),
            (1.0, 0.15729920705028513),
            (2.0, 0.004677734981047266),
            (5.0, 1.5374597944280347e-12),
            (20.0, 5.3958656116079e-176),
        ];
        for (x, v) in cases {
            assert!(rel(erfc(x), v) < 1e-13, "{x}: {}", erfc(x));
            assert!(rel(erfc(-x), 2.0 - v) < 1e-15, "{x}");
        }
        assert_eq!(erfc(30.0), 0.0);
    }

    #[test]
    fn normal_and_chi2_tails() {
        assert!(rel(normal_two_sided_p(1.959_963_984_540_054), 0.05) < 1e-12);
        assert!(rel(normal_upper_quantile(0.025), 1.959_963_984_540_054) < 1e-13);
        // chi2.sf(40, 1) (a 51/49 split of 100 000 users)
        assert!(rel(chi2_sf(40.0, 1.0), 2.539_628_589_470_863_4e-10) < 1e-9);
        assert_eq!(chi2_sf(0.0, 3.0), 1.0);
    }

    #[test]
    fn gauss_legendre_integrates_polynomials_exactly() {
        let rule = gauss_legendre(10);
        let w: f64 = rule.iter().map(|&(_, w)| w).sum();
        assert!((w - 2.0).abs() < 1e-14);
        // ∫ x^18 over [-1, 1] = 2/19 (degree 2n − 2 is within reach).
        let i: f64 = rule.iter().map(|&(x, w)| w * x.powi(18)).sum();
        assert!((i - 2.0 / 19.0).abs() < 1e-14);
    }
}
