//! Simulations of the Thompson-sampling bandit as the sidecar runs it
//! (`abmesh_eval::aggregate::bandit`): the control keeps its configured
//! share, the other arms share the rest by P(best) with an explore floor,
//! weights change once per period from the pooled Beta posteriors; and of
//! the analysis the report does on it (per-period stratified estimates,
//! per-period sample-ratio checks). Fixed seeds; the run counts are sized
//! for the bounds (a rate's standard error is printed with it).
//!
//! Run with `--nocapture` to see the figures.

use abmesh_stats::{
    bandit_weights, prob_best, relative_lift, sequential, srm_by_period, stratified, welch_t,
    PeriodArm, PeriodCounts, PeriodPair, Posterior, SequentialParams, Summary,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Binomial, Distribution};

/// Users per period, periods per experiment.
const USERS: u64 = 3000;
const PERIODS: usize = 8;
/// The control's configured share and the explore floor (5 %).
const CONTROL_SHARE: f64 = 1.0 / 3.0;
const FLOOR: f64 = 0.05;

/// One simulated bandit experiment.
struct Run {
    /// Per period: users and conversions per arm (control first).
    periods: Vec<(Vec<u64>, Vec<u64>)>,
    /// Weights of every period.
    weights: Vec<Vec<f64>>,
    /// Expected conversions lost against serving the best arm to everyone.
    regret: f64,
}

/// Splits `n` users by `weights` (a multinomial draw, as hashing does).
fn split(n: u64, weights: &[f64], rng: &mut StdRng) -> Vec<u64> {
    let mut left = n;
    let mut mass = 1.0;
    let mut out = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let k = if i + 1 == weights.len() || mass <= 0.0 {
            left
        } else {
            let p = (w / mass).clamp(0.0, 1.0);
            Binomial::new(left, p).unwrap().sample(rng)
        };
        out.push(k);
        left -= k;
        mass -= w;
    }
    out
}

/// `rates[p][arm]`: each arm's conversion rate in period p; `adaptive`
/// false keeps the configured equal split (the baseline).
fn simulate(rates: &[Vec<f64>], adaptive: bool, rng: &mut StdRng) -> Run {
    let arms = rates[0].len();
    let mut weights = vec![CONTROL_SHARE];
    weights.extend(std::iter::repeat_n(
        (1.0 - CONTROL_SHARE) / (arms - 1) as f64,
        arms - 1,
    ));
    let (mut users, mut conv) = (vec![0u64; arms], vec![0u64; arms]);
    let mut run = Run {
        periods: Vec::new(),
        weights: Vec::new(),
        regret: 0.0,
    };
    for r in rates {
        let n = split(USERS, &weights, rng);
        let c: Vec<u64> = n
            .iter()
            .zip(r)
            .map(|(&k, &p)| Binomial::new(k, p).unwrap().sample(rng))
            .collect();
        let best = r.iter().cloned().fold(f64::MIN, f64::max);
        run.regret += n
            .iter()
            .zip(r)
            .map(|(&k, &p)| k as f64 * (best - p))
            .sum::<f64>();
        for a in 0..arms {
            users[a] += n[a];
            conv[a] += c[a];
        }
        run.weights.push(weights.clone());
        run.periods.push((n, c));
        if adaptive {
            let posts: Vec<Posterior> = (1..arms)
                .map(|a| Posterior::conversion(users[a], conv[a]))
                .collect();
            let probs = prob_best(&posts, true).unwrap();
            let shares = bandit_weights(1.0 - CONTROL_SHARE, FLOOR, &probs).unwrap();
            weights = std::iter::once(CONTROL_SHARE).chain(shares).collect();
        }
    }
    run
}

fn arm(n: u64, c: u64) -> PeriodArm {
    let p = c as f64 / n.max(1) as f64;
    PeriodArm {
        n,
        mean: p,
        variance: p * (1.0 - p),
    }
}

/// The report's comparison of arm `t` with the control: stratified groups.
fn stratified_groups(run: &Run, t: usize) -> (Summary, Summary) {
    let pairs: Vec<PeriodPair> = run
        .periods
        .iter()
        .map(|(n, c)| PeriodPair {
            control: arm(n[0], c[0]),
            treatment: arm(n[t], c[t]),
            period_users: n.iter().sum(),
        })
        .collect();
    let s = stratified(&pairs).unwrap();
    (s.control, s.treatment)
}

/// What a report that ignored the periods would compare: pooled rates.
fn pooled_groups(run: &Run, t: usize) -> (Summary, Summary) {
    let group = |a: usize| {
        let n: u64 = run.periods.iter().map(|(n, _)| n[a]).sum();
        let c: u64 = run.periods.iter().map(|(_, c)| c[a]).sum();
        let p = c as f64 / n as f64;
        Summary {
            n,
            mean: p,
            sd: (p * (1.0 - p)).sqrt(),
        }
    };
    (group(0), group(t))
}

fn srm_p(run: &Run) -> f64 {
    let periods: Vec<PeriodCounts> = run
        .periods
        .iter()
        .zip(&run.weights)
        .map(|((n, _), w)| PeriodCounts {
            observed: n.clone(),
            weights: w.clone(),
        })
        .collect();
    srm_by_period(&periods, 5.0).unwrap().p_value
}

fn se(rate: f64, runs: usize) -> f64 {
    (rate * (1.0 - rate) / runs as f64).sqrt()
}

#[test]
fn the_bandit_finds_the_better_arm_and_regrets_less_than_a_fixed_split() {
    const RUNS: usize = 200;
    // Control 10 %, treatment a 10 %, treatment b 12 %.
    let rates = vec![vec![0.10, 0.10, 0.12]; PERIODS];
    let mut rng = StdRng::seed_from_u64(0xBA4D17);
    let (mut found, mut regret_bandit, mut regret_fixed) = (0, 0.0, 0.0);
    let mut final_b = 0.0;
    for _ in 0..RUNS {
        let run = simulate(&rates, true, &mut rng);
        let last = run.weights.last().unwrap();
        if last[2] > last[1] {
            found += 1;
        }
        final_b += last[2];
        regret_bandit += run.regret;
        regret_fixed += simulate(&rates, false, &mut rng).regret;
    }
    let found_rate = found as f64 / RUNS as f64;
    let ratio = regret_bandit / regret_fixed;
    println!(
        "right arm found in {found_rate:.3} of {RUNS} runs; b's final share {:.3} (of {:.3}); \
         regret bandit/fixed = {ratio:.3} ({:.0} vs {:.0} conversions per run)",
        final_b / RUNS as f64,
        1.0 - CONTROL_SHARE,
        regret_bandit / RUNS as f64,
        regret_fixed / RUNS as f64
    );
    assert!(found_rate >= 0.95, "found the better arm in {found_rate}");
    // The control's third is never adapted, so at most the treatments'
    // regret can go: ≈ half of the fixed split's here.
    assert!(ratio < 0.8, "regret ratio {ratio}");
}

#[test]
fn in_an_a_a_bandit_srm_alarms_and_false_positives_stay_within_alpha() {
    const RUNS: usize = 1000;
    const ALPHA: f64 = 0.05;
    // Every arm converts alike, but the rate drifts up over the periods:
    // the case where a pooled comparison of an adaptive split is biased.
    let rates: Vec<Vec<f64>> = (0..PERIODS)
        .map(|p| vec![0.05 + 0.02 * p as f64; 3])
        .collect();
    let mut rng = StdRng::seed_from_u64(0xAA_BA4D);
    let (mut srm_alarms, mut fp_strat, mut fp_seq, mut fp_pooled) = (0, 0, 0, 0);
    let (mut lift_strat, mut lift_pooled, mut comparisons) = (0.0, 0.0, 0);
    for _ in 0..RUNS {
        let run = simulate(&rates, true, &mut rng);
        if srm_p(&run) < ALPHA {
            srm_alarms += 1;
        }
        // One comparison per run (treatment a), so the rates are of
        // independent runs.
        let (c, t) = stratified_groups(&run, 1);
        let w = welch_t(&c, &t, ALPHA).unwrap();
        if w.p_value < ALPHA {
            fp_strat += 1;
        }
        let params = SequentialParams {
            alpha: ALPHA,
            relative: true,
            ..SequentialParams::default()
        };
        if sequential(&c, &t, params).unwrap().p_value < ALPHA {
            fp_seq += 1;
        }
        lift_strat += relative_lift(&c, &t, ALPHA).unwrap().lift;
        let (pc, pt) = pooled_groups(&run, 1);
        if welch_t(&pc, &pt, ALPHA).unwrap().p_value < ALPHA {
            fp_pooled += 1;
        }
        lift_pooled += relative_lift(&pc, &pt, ALPHA).unwrap().lift;
        comparisons += 1;
    }
    let rate = |k: usize| k as f64 / RUNS as f64;
    let (srm, strat, seq, pooled) = (
        rate(srm_alarms),
        rate(fp_strat),
        rate(fp_seq),
        rate(fp_pooled),
    );
    let bound = ALPHA + 2.5 * se(ALPHA, RUNS);
    println!(
        "A/A bandit, {RUNS} runs, α = {ALPHA} (bound {bound:.4}): SRM alarms {srm:.4}; \
         false positives stratified {strat:.4}, sequential {seq:.4}, pooled {pooled:.4}; \
         mean relative lift stratified {:+.5}, pooled {:+.5}",
        lift_strat / comparisons as f64,
        lift_pooled / comparisons as f64
    );
    assert!(srm <= bound, "SRM false alarms {srm}");
    assert!(strat <= bound, "stratified false positives {strat}");
    assert!(seq <= bound, "sequential false positives {seq}");
    // The estimate is unbiased: its mean lift is within 3 standard errors
    // of 0 (the lift's sd over runs is ~0.06 here).
    let mean = lift_strat / comparisons as f64;
    assert!(
        mean.abs() < 3.0 * 0.06 / (RUNS as f64).sqrt(),
        "bias {mean}"
    );
}
