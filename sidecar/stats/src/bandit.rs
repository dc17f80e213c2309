//! Adaptive allocation (a Thompson-sampling bandit) and the analysis an
//! adaptive experiment needs.
//!
//! # Weights
//! Thompson sampling serves each user the arm that wins one draw from the
//! posteriors. Served in batches, one weight per arm per period, that is
//! *probability matching*: each arm gets the share of traffic equal to the
//! posterior probability that it is the best arm. [`prob_best`] computes
//! that probability by quadrature rather than by Monte Carlo draws, so the
//! weights are a deterministic function of the data: a replayed log, and
//! every replica, compute the same ones, and a test can pin them.
//!
//! [`bandit_weights`] turns the probabilities into shares: the control
//! keeps its configured share (the baseline the experiment is judged
//! against does not move), the rest goes to the other arms in proportion
//! to their probabilities, and each keeps at least the explore floor.
//!
//! # Analysis
//! Weights change between periods, so a pooled comparison is biased
//! whenever the outcome drifts over time (Simpson's paradox: the arm that
//! got more traffic late looks better or worse for reasons that are the
//! period's, not the arm's). Within a period the split is fixed and
//! randomised, so each period is a small fixed-split experiment.
//! [`stratified`] estimates each arm's mean per period and combines the
//! periods with weights proportional to their total users (over every arm,
//! which the allocation does not change), as GrowthBook's bandits do. The
//! result is a [`Summary`] whose `sd²/n` is the stratified estimate's
//! variance, so the usual tests (Welch, delta-method lift, confidence
//! sequences) apply to it unchanged. [`srm_by_period`] checks each period's
//! counts against that period's weights and combines the chi-squares.

use crate::error::{Result, StatsError};
use crate::moments::Summary;
use crate::special::chi2_sf;
use crate::srm::{srm, SrmResult};

/// An arm's posterior for the bandit metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Posterior {
    /// Conversion rate: Beta(1 + conversions, 1 + users − conversions)
    /// (uniform prior).
    Beta { alpha: f64, beta: f64 },
    /// Mean of a value metric: Normal(mean, se) (flat prior, normal
    /// likelihood).
    Normal { mean: f64, se: f64 },
}

impl Posterior {
    /// The posterior of a conversion rate after `converted` of `users`.
    pub fn conversion(users: u64, converted: u64) -> Posterior {
        let converted = converted.min(users);
        Posterior::Beta {
            alpha: 1.0 + converted as f64,
            beta: 1.0 + (users - converted) as f64,
        }
    }

    /// Mean and standard deviation.
    fn location(&self) -> (f64, f64) {
        match *self {
            Posterior::Beta { alpha, beta } => {
                let s = alpha + beta;
                (alpha / s, (alpha * beta / (s * s * (s + 1.0))).sqrt())
            }
            Posterior::Normal { mean, se } => (mean, se),
        }
    }

    fn check(&self, index: usize) -> Result<()> {
        let ok = match *self {
            Posterior::Beta { alpha, beta } => {
                alpha > 0.0 && beta > 0.0 && alpha.is_finite() && beta.is_finite()
            }
            Posterior::Normal { mean, se } => mean.is_finite() && se > 0.0 && se.is_finite(),
        };
        if ok {
            Ok(())
        } else {
            Err(StatsError::InvalidParameter {
                name: "posterior",
                value: index as f64,
                expected: "Beta with positive parameters, or Normal with finite mean and se > 0",
            })
        }
    }
}

/// One posterior's log-density, with its constant computed once.
enum Dist {
    /// (α − 1, β − 1, ln B(α, β)).
    Beta(f64, f64, f64),
    /// (mean, se, ln(se·√(2π))).
    Normal(f64, f64, f64),
}

impl Dist {
    fn of(p: &Posterior) -> Dist {
        use statrs::function::gamma::ln_gamma;
        match *p {
            Posterior::Beta { alpha, beta } => Dist::Beta(
                alpha - 1.0,
                beta - 1.0,
                ln_gamma(alpha) + ln_gamma(beta) - ln_gamma(alpha + beta),
            ),
            Posterior::Normal { mean, se } => {
                Dist::Normal(mean, se, (se * (2.0 * std::f64::consts::PI).sqrt()).ln())
            }
        }
    }

    fn pdf(&self, x: f64) -> f64 {
        match *self {
            Dist::Beta(a1, b1, ln_b) => {
                if !(0.0..=1.0).contains(&x) {
                    return 0.0;
                }
                // x^0 is 1 at the ends too (a uniform prior with no data).
                let term = |k: f64, y: f64| if k == 0.0 { 0.0 } else { k * y.ln() };
                (term(a1, x) + term(b1, 1.0 - x) - ln_b).exp()
            }
            Dist::Normal(m, se, ln_c) => {
                let z = (x - m) / se;
                (-0.5 * z * z - ln_c).exp()
            }
        }
    }
}

/// Grid points per arm: each arm's ±[`WINDOW_SD`] window gets this many,
/// so the spacing is 0.025 sd of that arm however peaked it is.
const POINTS_PER_ARM: usize = 801;
/// Half-width of an arm's window in posterior sds (the tails beyond hold
/// < 1e-20 of its mass).
const WINDOW_SD: f64 = 10.0;

/// P(arm i is the best) for every arm: `∫ f_i(x) Π_{j≠i} F_j(x) dx` when
/// higher is better (`1 − F_j` when lower is), by the trapezoid rule on
/// the union of per-arm grids (see [`POINTS_PER_ARM`]), normalised to sum
/// to 1. Deterministic; agrees with Monte Carlo Thompson draws to ~1e-4
/// (tests/bandit.rs).
pub fn prob_best(arms: &[Posterior], higher_is_better: bool) -> Result<Vec<f64>> {
    if arms.is_empty() {
        return Err(StatsError::TooFew {
            what: "arms",
            min: 1,
            got: 0,
        });
    }
    for (i, a) in arms.iter().enumerate() {
        a.check(i)?;
    }
    if arms.len() == 1 {
        return Ok(vec![1.0]);
    }
    let dists: Vec<Dist> = arms.iter().map(Dist::of).collect();
    let mut grid = Vec::with_capacity(arms.len() * POINTS_PER_ARM);
    for a in arms {
        let (m, s) = a.location();
        let (mut lo, mut hi) = (m - WINDOW_SD * s, m + WINDOW_SD * s);
        if matches!(a, Posterior::Beta { .. }) {
            (lo, hi) = (lo.max(0.0), hi.min(1.0));
        }
        let step = (hi - lo) / (POINTS_PER_ARM - 1) as f64;
        grid.extend((0..POINTS_PER_ARM).map(|k| lo + step * k as f64));
    }
    grid.sort_by(f64::total_cmp);
    grid.dedup();
    // Densities on the grid, and each arm's CDF as the running trapezoid
    // integral of its density (normalised, so the mass of the tails beyond
    // the grid, < 1e-20, cannot bias it). Only densities are evaluated: an
    // incomplete beta function per point was 40× slower.
    let trapezoid = |y: &[f64]| -> Vec<f64> {
        let mut acc = vec![0.0; y.len()];
        for k in 1..y.len() {
            acc[k] = acc[k - 1] + 0.5 * (grid[k] - grid[k - 1]) * (y[k] + y[k - 1]);
        }
        acc
    };
    let density: Vec<Vec<f64>> = dists
        .iter()
        .map(|d| {
            grid.iter()
                .map(|&x| {
                    let f = d.pdf(x);
                    if f.is_finite() {
                        f
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    // Per grid point, each arm's "beats me" factor: F_j (higher is better)
    // or 1 − F_j.
    let beaten: Vec<Vec<f64>> = density
        .iter()
        .map(|f| {
            let cdf = trapezoid(f);
            let total = *cdf.last().unwrap_or(&0.0);
            cdf.iter()
                .map(|&c| {
                    let c = if total > 0.0 { c / total } else { 0.0 };
                    if higher_is_better {
                        c
                    } else {
                        1.0 - c
                    }
                })
                .collect()
        })
        .collect();
    // Π_{j≠i} at each point from prefix and suffix products: O(arms × grid)
    // rather than O(arms² × grid), so many variants stay cheap.
    let n = grid.len();
    let mut prefix = vec![vec![1.0; n]; arms.len() + 1];
    for j in 0..arms.len() {
        for k in 0..n {
            prefix[j + 1][k] = prefix[j][k] * beaten[j][k];
        }
    }
    let mut suffix = vec![1.0; n];
    let mut probs = vec![0.0; arms.len()];
    for i in (0..arms.len()).rev() {
        let integrand: Vec<f64> = (0..n)
            .map(|k| density[i][k] * prefix[i][k] * suffix[k])
            .collect();
        probs[i] = *trapezoid(&integrand).last().unwrap_or(&0.0);
        for k in 0..n {
            suffix[k] *= beaten[i][k];
        }
    }
    let total: f64 = probs.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return Err(StatsError::NoSolution(
            "the posteriors' probabilities of being best do not integrate",
        ));
    }
    Ok(probs.into_iter().map(|p| p / total).collect())
}

/// Shares of the non-control arms: `share` (the traffic not configured for
/// the control, in (0, 1]) split in proportion to `probs` (each arm's
/// P(best), summing to 1), each arm keeping at least `floor` (a share of
/// all traffic). Errors when `floor × arms > share`.
pub fn bandit_weights(share: f64, floor: f64, probs: &[f64]) -> Result<Vec<f64>> {
    if !(share > 0.0 && share <= 1.0) {
        return Err(StatsError::InvalidParameter {
            name: "share",
            value: share,
            expected: "in (0, 1]",
        });
    }
    let k = probs.len() as f64;
    if !(floor >= 0.0 && floor * k <= share * (1.0 + 1e-12)) {
        return Err(StatsError::InvalidParameter {
            name: "explore floor",
            value: floor,
            expected: "≥ 0 and at most the non-control share over the number of arms",
        });
    }
    let free = (share - floor * k).max(0.0);
    let total: f64 = probs.iter().sum();
    Ok(probs
        .iter()
        .map(|p| floor + free * if total > 0.0 { p / total } else { 1.0 / k })
        .collect())
}

/// One arm's users in one period: their count, mean and sample variance
/// (ddof 1; for a conversion metric pass p(1 − p), the variance this crate
/// uses for rates).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeriodArm {
    pub n: u64,
    pub mean: f64,
    pub variance: f64,
}

/// One period of a comparison: control, treatment, and every user of the
/// period over all arms (the stratum's weight, which the allocation does
/// not change).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeriodPair {
    pub control: PeriodArm,
    pub treatment: PeriodArm,
    pub period_users: u64,
}

/// What [`stratified`] estimated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stratified {
    /// Control and treatment as groups whose `sd² / n` is the variance of
    /// the stratified mean (n is the arm's users in the periods used).
    pub control: Summary,
    pub treatment: Summary,
    /// Periods used, and periods left out because an arm had fewer than
    /// two users in them.
    pub periods_used: usize,
    pub periods_skipped: usize,
    /// Users of the left-out periods (both arms).
    pub users_skipped: u64,
}

/// The per-period (stratified) estimate of both arms' means: each period's
/// mean weighted by the period's share of the users of the periods used,
/// `Var = Σ w_p² s²_p / n_p`. Periods where an arm has fewer than two users
/// cannot estimate its variance and are left out (and counted).
pub fn stratified(periods: &[PeriodPair]) -> Result<Stratified> {
    let usable = |a: &PeriodArm| a.n >= 2 && a.mean.is_finite() && a.variance.is_finite();
    let used: Vec<&PeriodPair> = periods
        .iter()
        .filter(|p| usable(&p.control) && usable(&p.treatment) && p.period_users > 0)
        .collect();
    let skipped = periods.len() - used.len();
    let users_skipped = periods
        .iter()
        .filter(|p| !used.iter().any(|u| std::ptr::eq(*u, *p)))
        .map(|p| p.control.n + p.treatment.n)
        .sum();
    if used.is_empty() {
        return Err(StatsError::TooFew {
            what: "periods with two users in each arm",
            min: 1,
            got: 0,
        });
    }
    let total: f64 = used.iter().map(|p| p.period_users as f64).sum();
    let arm = |get: fn(&PeriodPair) -> PeriodArm| -> Summary {
        let (mut mean, mut var, mut n) = (0.0, 0.0, 0u64);
        for p in &used {
            let a = get(p);
            let w = p.period_users as f64 / total;
            mean += w * a.mean;
            var += w * w * a.variance.max(0.0) / a.n as f64;
            n += a.n;
        }
        Summary {
            n,
            mean,
            sd: (var * n as f64).sqrt(),
        }
    };
    Ok(Stratified {
        control: arm(|p| p.control),
        treatment: arm(|p| p.treatment),
        periods_used: used.len(),
        periods_skipped: skipped,
        users_skipped,
    })
}

/// Each period's observed users per arm and the weights that period used.
#[derive(Clone, Debug, PartialEq)]
pub struct PeriodCounts {
    pub observed: Vec<u64>,
    pub weights: Vec<f64>,
}

/// Result of [`srm_by_period`].
#[derive(Clone, Debug, PartialEq)]
pub struct PeriodSrm {
    /// Σ of the tested periods' chi-squares.
    pub chi2: f64,
    /// Σ of their degrees of freedom.
    pub df: u64,
    /// P(χ²_df ≥ chi2): periods are independent samples, so under a
    /// correct split the sum is χ² with the summed degrees of freedom.
    pub p_value: f64,
    /// Per period (same order); `None` where it was not tested.
    pub periods: Vec<Option<SrmResult>>,
}

/// The sample-ratio check of an adaptive experiment: each period's counts
/// against its own weights (arms with weight 0 left out), tested where
/// every expected count is at least `min_expected`; the periods'
/// chi-squares add up. Errors when no period could be tested.
pub fn srm_by_period(periods: &[PeriodCounts], min_expected: f64) -> Result<PeriodSrm> {
    let mut out = Vec::with_capacity(periods.len());
    let (mut chi2, mut df) = (0.0, 0u64);
    for p in periods {
        let (obs, w): (Vec<u64>, Vec<f64>) = p
            .observed
            .iter()
            .zip(&p.weights)
            .filter(|(_, &w)| w > 0.0)
            .map(|(&o, &w)| (o, w))
            .unzip();
        let n: u64 = obs.iter().sum();
        let wsum: f64 = w.iter().sum();
        let enough = obs.len() >= 2 && w.iter().all(|x| n as f64 * x / wsum >= min_expected);
        let r = if enough { srm(&obs, &w).ok() } else { None };
        if let Some(r) = &r {
            chi2 += r.chi2;
            df += r.df;
        }
        out.push(r);
    }
    if df == 0 {
        return Err(StatsError::TooFew {
            what: "periods with enough users for the sample-ratio check",
            min: 1,
            got: 0,
        });
    }
    Ok(PeriodSrm {
        chi2,
        df,
        p_value: chi2_sf(chi2, df as f64),
        periods: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_arms_split_evenly_and_a_clear_winner_takes_all() {
        let p = prob_best(&[Posterior::conversion(1000, 100); 3], true).unwrap();
        for x in &p {
            assert!((x - 1.0 / 3.0).abs() < 1e-6, "{p:?}");
        }
        let p = prob_best(
            &[
                Posterior::conversion(10_000, 1000),
                Posterior::conversion(10_000, 1300),
            ],
            true,
        )
        .unwrap();
        assert!(p[1] > 0.999_999, "{p:?}");
        let q = prob_best(
            &[
                Posterior::conversion(10_000, 1000),
                Posterior::conversion(10_000, 1300),
            ],
            false,
        )
        .unwrap();
        assert!(q[0] > 0.999_999, "{q:?}");
    }

    #[test]
    fn two_normal_arms_match_the_closed_form() {
        // P(B > A) = Φ((μB − μA)/√(σA² + σB²)).
        let (a, b) = (
            Posterior::Normal { mean: 1.0, se: 0.1 },
            Posterior::Normal {
                mean: 1.05,
                se: 0.2,
            },
        );
        let p = prob_best(&[a, b], true).unwrap();
        let want = crate::special::normal_cdf(0.05 / (0.01f64 + 0.04).sqrt());
        assert!((p[1] - want).abs() < 1e-6, "{} vs {want}", p[1]);
    }

    #[test]
    fn weights_keep_the_floor_and_the_share() {
        let w = bandit_weights(0.5, 0.05, &[0.0, 1.0]).unwrap();
        assert_eq!(w.len(), 2);
        assert!((w[0] - 0.05).abs() < 1e-12 && (w[1] - 0.45).abs() < 1e-12);
        assert!((w.iter().sum::<f64>() - 0.5).abs() < 1e-12);
        assert!(bandit_weights(0.5, 0.3, &[0.5, 0.5]).is_err());
    }

    #[test]
    fn stratification_removes_a_time_trend_confound() {
        // Period 1: both arms convert at 10 %, the treatment gets 10 % of
        // traffic; period 2: both at 30 %, the treatment gets 90 %. Pooled,
        // the treatment looks far better; per period they are equal.
        let arm = |n: u64, p: f64| PeriodArm {
            n,
            mean: p,
            variance: p * (1.0 - p),
        };
        let periods = [
            PeriodPair {
                control: arm(9000, 0.1),
                treatment: arm(1000, 0.1),
                period_users: 10_000,
            },
            PeriodPair {
                control: arm(1000, 0.3),
                treatment: arm(9000, 0.3),
                period_users: 10_000,
            },
        ];
        let s = stratified(&periods).unwrap();
        assert!((s.control.mean - 0.2).abs() < 1e-12);
        assert!((s.treatment.mean - 0.2).abs() < 1e-12);
        assert_eq!((s.periods_used, s.periods_skipped), (2, 0));
    }

    #[test]
    fn period_srm_adds_chi_squares() {
        let periods = [
            PeriodCounts {
                observed: vec![500, 500],
                weights: vec![0.5, 0.5],
            },
            PeriodCounts {
                observed: vec![100, 900, 0],
                weights: vec![0.1, 0.9, 0.0],
            },
            PeriodCounts {
                observed: vec![1, 1],
                weights: vec![0.5, 0.5],
            },
        ];
        let r = srm_by_period(&periods, 5.0).unwrap();
        assert_eq!(r.df, 2);
        assert!(r.chi2.abs() < 1e-9 && r.p_value > 0.999);
        assert!(r.periods[2].is_none());
    }
}
