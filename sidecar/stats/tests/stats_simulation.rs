//! Simulations of the statistics engine's operating characteristics, with
//! fixed seeds (deterministic; each assertion is about a rate that a broken
//! implementation would get visibly wrong).
//!
//! Sizes are chosen to keep the suite at a few seconds even in an
//! unoptimized test build, while staying in the range where the asymptotic
//! tests are meant to be valid: 2 000 simulated experiments (the binomial
//! standard error of an estimated 5 % rate is then 0.5 %, so [0.04, 0.06]
//! is a ±2 s.e. band), 1 000–2 000 users per experiment, and for peeking 20
//! looks of 50 users per arm (N = 100 at the first look, 2 000 at the last).

use abmesh_stats::{
    cuped, sequential, srm, welch_t, CoMoments, Moments, SequentialParams, SRM_ALERT_P,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Binomial, Distribution, Normal};

const EXPERIMENTS: usize = 2000;

fn draw(rng: &mut StdRng, dist: &Normal<f64>, n: usize) -> Moments {
    (0..n).map(|_| dist.sample(rng)).collect()
}

/// A/A with unequal arms and unequal variances (800 users with sd 3 vs
/// 1 200 with sd 1, same mean): exactly where Student's pooled t would be
/// miscalibrated, and Welch must hold α.
#[test]
fn welch_holds_alpha_in_aa_tests() {
    let mut rng = StdRng::seed_from_u64(0xAA);
    let control = Normal::new(10.0, 3.0).unwrap();
    let treatment = Normal::new(10.0, 1.0).unwrap();
    let mut rejections = 0;
    for _ in 0..EXPERIMENTS {
        let c = draw(&mut rng, &control, 800);
        let t = draw(&mut rng, &treatment, 1200);
        if welch_t(&c, &t, 0.05).unwrap().p_value < 0.05 {
            rejections += 1;
        }
    }
    let rate = rejections as f64 / EXPERIMENTS as f64;
    eprintln!("A/A fixed-horizon Welch false-positive rate: {rate:.4}");
    assert!((0.04..=0.06).contains(&rate), "Welch FPR {rate}");
}

/// Twenty looks at an A/A test: stopping at the first fixed-horizon
/// p < 0.05 inflates the false-positive rate several-fold; the confidence
/// sequence keeps it at or below α at every look. The same sequential test
/// must still detect a real effect, so "never rejects" cannot pass.
#[test]
fn peeking_inflates_naive_tests_but_not_the_sequential_one() {
    const LOOKS: usize = 20;
    const PER_LOOK: usize = 50;
    let params = SequentialParams {
        alpha: 0.05,
        // Tuned for the final total sample size (2 × 20 × 50 users).
        n_star: (2 * LOOKS * PER_LOOK) as f64,
        relative: false,
    };
    let run = |seed: u64, effect: f64, experiments: usize| {
        let mut rng = StdRng::seed_from_u64(seed);
        let control = Normal::new(0.0, 1.0).unwrap();
        let treatment = Normal::new(effect, 1.0).unwrap();
        let (mut naive, mut seq) = (0usize, 0usize);
        for _ in 0..experiments {
            let (mut c, mut t) = (Moments::new(), Moments::new());
            let (mut naive_hit, mut seq_hit) = (false, false);
            for _ in 0..LOOKS {
                // Each look adds a batch, merged into the running statistics
                // as the sidecar merges its aggregates.
                c.merge(&draw(&mut rng, &control, PER_LOOK));
                t.merge(&draw(&mut rng, &treatment, PER_LOOK));
                naive_hit |= welch_t(&c, &t, 0.05).unwrap().p_value < 0.05;
                let s = sequential(&c, &t, params).unwrap();
                seq_hit |= s.p_value < 0.05;
                // The interval and the p-value tell the same story.
                assert_eq!(s.p_value < 0.05, s.ci_low > 0.0 || s.ci_high < 0.0);
            }
            naive += naive_hit as usize;
            seq += seq_hit as usize;
        }
        (
            naive as f64 / experiments as f64,
            seq as f64 / experiments as f64,
        )
    };

    let (naive, seq) = run(0x5EEC, 0.0, EXPERIMENTS);
    eprintln!(
        "A/A with {LOOKS} looks: naive repeated Welch FPR {naive:.4}, sequential FPR {seq:.4}"
    );
    assert!(seq <= 0.05, "sequential FPR {seq}");
    assert!(naive > 0.10, "naive peeking FPR {naive}");

    // A real effect of 0.25 sd (z ≈ 5.6 at the last look) is found.
    let (_, power) = run(0xEFFEC7, 0.25, 300);
    eprintln!("sequential power at 0.25 sd: {power:.4}");
    assert!(power > 0.9, "sequential power {power}");
}

#[test]
fn srm_flags_a_51_49_split_and_not_a_fair_one() {
    const USERS: u64 = 100_000;
    // The exact 51/49 split.
    let exact = srm(&[51_000, 49_000], &[1.0, 1.0]).unwrap();
    assert!(exact.p_value < SRM_ALERT_P, "{exact:?}");
    assert!(exact.p_value < 1e-9);

    let mut rng = StdRng::seed_from_u64(0x5AA1);
    let flag_rate = |rng: &mut StdRng, share: f64, runs: usize, level: f64| {
        let bin = Binomial::new(USERS, share).unwrap();
        (0..runs)
            .filter(|_| {
                let c = bin.sample(rng);
                srm(&[c, USERS - c], &[1.0, 1.0]).unwrap().p_value < level
            })
            .count() as f64
            / runs as f64
    };
    // Random assignment with a true 51 % share: flagged essentially always
    // (a miss needs the observed imbalance below 0.52 %, ~3 sd away).
    let flagged = flag_rate(&mut rng, 0.51, 500, SRM_ALERT_P);
    eprintln!("SRM alerts on a true 51/49 split: {flagged:.4}");
    assert!(flagged >= 0.99, "{flagged}");
    // A fair split: almost never alerted, and the p-value is calibrated.
    let false_alarm = flag_rate(&mut rng, 0.5, EXPERIMENTS, SRM_ALERT_P);
    let at_05 = flag_rate(&mut rng, 0.5, EXPERIMENTS, 0.05);
    eprintln!("SRM on fair splits: alerts {false_alarm:.4}, p < 0.05 in {at_05:.4}");
    assert!(false_alarm <= 0.005, "{false_alarm}");
    assert!((0.035..=0.065).contains(&at_05), "{at_05}");

    // Three arms with weights 1:2:2, fair multinomial draws.
    let mut hits = 0;
    for _ in 0..EXPERIMENTS {
        let a = Binomial::new(USERS, 0.2).unwrap().sample(&mut rng);
        let b = Binomial::new(USERS - a, 0.5).unwrap().sample(&mut rng);
        let r = srm(&[a, b, USERS - a - b], &[1.0, 2.0, 2.0]).unwrap();
        assert_eq!(r.df, 2);
        hits += (r.p_value < 0.05) as usize;
    }
    let rate = hits as f64 / EXPERIMENTS as f64;
    eprintln!("SRM three arms, fair: p < 0.05 in {rate:.4}");
    assert!((0.035..=0.065).contains(&rate), "{rate}");
}

/// |a − b| ≤ 1e-12 relative to `scale`.
fn close_to(what: &str, a: f64, b: f64, scale: f64) {
    assert!(
        (a - b).abs() <= 1e-12 * scale,
        "{what}: {a} vs {b} (scale {scale})"
    );
}

/// |a − b| ≤ 1e-12 relative.
fn close(what: &str, a: f64, b: f64) {
    close_to(what, a, b, a.abs().max(b.abs()).max(1e-300));
}

/// Splitting the data, summarizing each part and merging gives the same
/// statistics, and the same test results, as summarizing everything at
/// once, to 1e-12, whatever the split.
///
/// Merging is exact algebra, so what differs is floating-point rounding,
/// which is relative to the data: a mean of ~90 carries ~1e-14 absolute
/// error either way. n, means, variances, the covariance, standard errors,
/// θ and the variance reduction are compared at 1e-12 relative. The
/// difference of two means (≈ 0.2 here) inherits the means' absolute error,
/// so it is compared at 1e-12 relative to the means' size, and t and the
/// p-value (|dp/dt| < 1) at 1e-12 relative to mean/se.
#[test]
fn merged_sufficient_statistics_equal_single_pass_ones() {
    let mut rng = StdRng::seed_from_u64(0x3E26E);
    // Revenue-like values: mean ≈ 50–90, sd ≈ 10, y correlated with x.
    let noise = Normal::new(0.0, 10.0).unwrap();
    let gen = |rng: &mut StdRng, n: usize, lift: f64| -> (Vec<f64>, Vec<f64>) {
        let x: Vec<f64> = (0..n).map(|_| 50.0 + noise.sample(rng)).collect();
        let y: Vec<f64> = x
            .iter()
            .map(|&xi| 50.0 + 0.8 * xi + lift + noise.sample(rng))
            .collect();
        (x, y)
    };
    let (xc, yc) = gen(&mut rng, 10_001, 0.0);
    let (xt, yt) = gen(&mut rng, 9_999, 0.5);

    let whole_c = CoMoments::from_xy(&xc, &yc).unwrap();
    let whole_t = CoMoments::from_xy(&xt, &yt).unwrap();
    for split in [1, 2, 4_321, 5_000, 9_998] {
        let halves = |x: &[f64], y: &[f64]| {
            let a = CoMoments::from_xy(&x[..split], &y[..split]).unwrap();
            let b = CoMoments::from_xy(&x[split..], &y[split..]).unwrap();
            (a.merged(&b), b.merged(&a))
        };
        let (mc, mc_rev) = halves(&xc, &yc);
        let (mt, _) = halves(&xt, &yt);
        assert_eq!(mc.n(), whole_c.n());
        for (label, m) in [("a+b", mc), ("b+a", mc_rev)] {
            close(&format!("{label} mean y"), m.y().mean(), whole_c.y().mean());
            close(&format!("{label} mean x"), m.x().mean(), whole_c.x().mean());
            close(
                &format!("{label} var y"),
                m.y().variance(),
                whole_c.y().variance(),
            );
            close(
                &format!("{label} var x"),
                m.x().variance(),
                whole_c.x().variance(),
            );
            close(
                &format!("{label} cov"),
                m.covariance(),
                whole_c.covariance(),
            );
        }
        // One-metric moments merge the same way.
        let ym = Moments::from_values(&yc[..split]).merged(&Moments::from_values(&yc[split..]));
        close("moments var", ym.variance(), whole_c.y().variance());
        close("moments mean", ym.mean(), whole_c.y().mean());

        // ... and so do the results computed from them.
        let data_scale = whole_c.y().mean().abs().max(whole_t.y().mean().abs());
        let (w1, w2) = (
            welch_t(&mc.y(), &mt.y(), 0.05).unwrap(),
            welch_t(&whole_c.y(), &whole_t.y(), 0.05).unwrap(),
        );
        close("welch se", w1.se, w2.se);
        close("welch df", w1.df, w2.df);
        close_to("welch diff", w1.diff, w2.diff, data_scale);
        close_to("welch t", w1.t, w2.t, data_scale / w2.se);
        close_to("welch p", w1.p_value, w2.p_value, data_scale / w2.se);
        let (c1, c2) = (
            cuped(&mc, &mt, 0.05).unwrap(),
            cuped(&whole_c, &whole_t, 0.05).unwrap(),
        );
        close("cuped theta", c1.theta, c2.theta);
        close("cuped se", c1.se, c2.se);
        close("cuped vr", c1.variance_reduction, c2.variance_reduction);
        close_to("cuped diff", c1.diff, c2.diff, data_scale);
        close_to("cuped p", c1.p_value, c2.p_value, data_scale / c2.se);
    }

    // Many parts merged in a tree, in a different order.
    let parts: Vec<CoMoments> = xc
        .chunks(997)
        .zip(yc.chunks(997))
        .map(|(x, y)| CoMoments::from_xy(x, y).unwrap())
        .collect();
    let mut left = CoMoments::new();
    for p in parts.iter().rev().step_by(2) {
        left.merge(p);
    }
    let mut right = CoMoments::new();
    for p in parts.iter().rev().skip(1).step_by(2) {
        right.merge(p);
    }
    let tree = right.merged(&left);
    assert_eq!(tree.n(), whole_c.n());
    close("tree var y", tree.y().variance(), whole_c.y().variance());
    close("tree cov", tree.covariance(), whole_c.covariance());

    // CUPED with this covariate removes a good part of the variance
    // (ρ² = 0.64/1.64 ≈ 0.39).
    let r = cuped(&whole_c, &whole_t, 0.05).unwrap();
    assert!((0.3..0.5).contains(&r.variance_reduction), "{r:?}");
    assert!((r.theta - 0.8).abs() < 0.05, "{r:?}");
}

/// Values with a huge offset relative to their spread (mean/sd = 1e6, like
/// timestamps or large counters): the (n, mean, M2) representation keeps
/// the variance to ~1e-10 through pushes and merges, where the
/// (n, Σy, Σy²) route loses it entirely.
#[test]
fn the_moment_representation_survives_large_offsets() {
    let mut rng = StdRng::seed_from_u64(0x0FF5E7);
    let noise = Normal::new(0.0, 1.0).unwrap();
    let y: Vec<f64> = (0..20_000).map(|_| 1e6 + noise.sample(&mut rng)).collect();
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    let two_pass = y.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (y.len() - 1) as f64;
    let whole = Moments::from_values(&y);
    let merged = Moments::from_values(&y[..7_777]).merged(&Moments::from_values(&y[7_777..]));
    for (label, m) in [("single pass", whole), ("merged", merged)] {
        let rel = (m.variance() - two_pass).abs() / two_pass;
        assert!(rel < 1e-9, "{label}: relative error {rel:e}");
    }
    let sums = Moments::from_sums(
        y.len() as u64,
        y.iter().sum(),
        y.iter().map(|v| v * v).sum(),
    )
    .unwrap();
    let rel = (sums.variance() - two_pass).abs() / two_pass;
    eprintln!("variance relative error at mean/sd = 1e6: raw sums {rel:.1e}");
    assert!(rel > 1e-6, "raw sums unexpectedly accurate: {rel:e}");
}
