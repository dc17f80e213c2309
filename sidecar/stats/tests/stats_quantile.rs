//! Coverage of the quantile test's interval (`stats::quantile_test`, the
//! Woodruff method on mergeable histograms) by simulation, with fixed seeds.
//!
//! Each simulated experiment draws a control and a treatment arm of latency
//! events, bins them in the 1 %-wide log-scale buckets of
//! [`LogHistogram`], and checks whether the 95 % interval of the difference
//! of the ν-quantiles (absolute and relative) covers the true difference of
//! the two distributions' quantiles (known in closed form or by bisection
//! of the CDF). The truth is the continuous distribution's quantile, so the
//! binning error is part of what is measured.
//!
//! # How the counts are drawn
//!
//! The estimator reads only the counts per bucket, and the counts of n iid
//! events over fixed buckets are multinomial with the buckets' true
//! probabilities. [`Window`] draws them exactly that way, bucket by
//! bucket as conditional binomials, but only inside a window of ranks
//! ν ± 10·√(ν(1 − ν)/n) around the quantile; the events below and above the
//! window are drawn as two binomial totals and kept as one bucket each.
//! Every quantile the estimator reads (at ν and at the Woodruff ranks
//! ν ± 1.96·√(ν(1 − ν)/n)) then lies inside the window, where the buckets
//! are exactly the [`LogHistogram`] ones, so its output is the same as on
//! the full histogram; each experiment asserts this (the estimates must lie
//! strictly inside the window). The sample's ranks stray from the true
//! ones by about one √(ν(1 − ν)/n), so the margin is 8 of those (a window
//! of ±7 failed that assertion once in ~10⁶ simulated arms). The cost is then independent of n, which
//! lets the grid reach a million events per arm in a debug build.
//! [`raw_events_through_log_histogram`] checks the same thing end to end,
//! drawing every event and pushing it into a [`LogHistogram`].
//!
//! The default test (a debug build runs it in seconds) holds the pooled
//! coverage of 12 configurations × 4 000 experiments to [0.94, 0.96] and
//! each configuration to ±6 binomial s.e. of 95 %; the longer grid
//! (`--ignored`, 10 000 experiments per configuration, so [0.94, 0.96] is
//! ±4.6 s.e.) holds every configuration to [0.94, 0.96], and is the one
//! EVALUATION.md reports.

mod stats_support;

use abmesh_stats::quantile::validated_min_n;
use abmesh_stats::special::{normal_cdf, normal_upper_quantile};
use abmesh_stats::{quantile_se, quantile_test, Histogram, LogHistogram};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Binomial, Distribution, Exp, LogNormal};

/// Latency distributions with a CDF and a quantile function.
#[derive(Clone, Copy, Debug)]
enum Dist {
    /// exp(N(ln median, σ²)).
    LogNormal { median: f64, sigma: f64 },
    /// w·Exp(mean a) + (1 − w)·Exp(mean b): a fast path and a slow one.
    ExpMix { w: f64, a: f64, b: f64 },
}

impl Dist {
    fn cdf(&self, x: f64) -> f64 {
        if x <= 0.0 {
            return 0.0;
        }
        match *self {
            Dist::LogNormal { median, sigma } => normal_cdf((x / median).ln() / sigma),
            Dist::ExpMix { w, a, b } => 1.0 - w * (-x / a).exp() - (1.0 - w) * (-x / b).exp(),
        }
    }

    fn quantile(&self, p: f64) -> f64 {
        match *self {
            Dist::LogNormal { median, sigma } => median * (sigma * -normal_upper_quantile(p)).exp(),
            Dist::ExpMix { .. } => {
                // Bisection on the CDF (monotone) to full precision.
                let (mut lo, mut hi) = (0.0f64, 1.0f64);
                while self.cdf(hi) < p {
                    hi *= 2.0;
                }
                for _ in 0..200 {
                    let mid = 0.5 * (lo + hi);
                    if self.cdf(mid) < p {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                0.5 * (lo + hi)
            }
        }
    }

    fn sample(&self, rng: &mut StdRng) -> f64 {
        match *self {
            Dist::LogNormal { median, sigma } => {
                LogNormal::new(median.ln(), sigma).unwrap().sample(rng)
            }
            Dist::ExpMix { w, a, b } => {
                let mean = if rng.random::<f64>() < w { a } else { b };
                Exp::new(1.0 / mean).unwrap().sample(rng)
            }
        }
    }
}

/// The LogHistogram layout: bucket k is (γ^k, γ^(k+1)].
struct Layout {
    ln_g: f64,
}

impl Layout {
    fn new() -> Self {
        Layout {
            ln_g: LogHistogram::default().growth().ln(),
        }
    }
    fn edge(&self, k: i32) -> f64 {
        (f64::from(k) * self.ln_g).exp()
    }
    fn index(&self, v: f64) -> i32 {
        ((v.ln() / self.ln_g).ceil() - 1.0) as i32
    }
}

/// The exact buckets of the window around `q` for `n` events of `dist`
/// (see the module docs): their bounds, and the probabilities of the
/// buckets below, inside and above the window. Computed once per
/// configuration; [`Window::draw`] then only draws counts.
struct Window {
    /// 0, the window's bucket edges, and a far upper bound.
    bounds: Vec<f64>,
    /// Probability of each bucket of `bounds` (the two outer ones too).
    probs: Vec<f64>,
    /// The range in which the buckets are the LogHistogram's.
    lo: f64,
    hi: f64,
}

impl Window {
    fn new(layout: &Layout, dist: &Dist, n: u64, q: f64) -> Self {
        let s = (q * (1.0 - q) / n as f64).sqrt();
        let p_lo = (q - 10.0 * s).max(1e-9);
        let p_hi = (q + 10.0 * s).min(1.0 - 1e-9);
        let (k_lo, k_hi) = (
            layout.index(dist.quantile(p_lo)),
            layout.index(dist.quantile(p_hi)),
        );
        let mut bounds = vec![0.0, layout.edge(k_lo)];
        let mut probs = vec![dist.cdf(layout.edge(k_lo))];
        let mut f_prev = probs[0];
        for k in k_lo..=k_hi {
            let f = dist.cdf(layout.edge(k + 1));
            probs.push(f - f_prev);
            bounds.push(layout.edge(k + 1));
            f_prev = f;
        }
        probs.push(1.0 - f_prev);
        bounds.push(layout.edge(k_hi + 1) * 1e3);
        Window {
            bounds,
            probs,
            lo: layout.edge(k_lo),
            hi: layout.edge(k_hi + 1),
        }
    }

    /// Multinomial counts of `n` events over the window's buckets, drawn as
    /// conditional binomials.
    fn draw(&self, rng: &mut StdRng, n: u64) -> Histogram {
        let mut remaining = n;
        let mut mass_left = 1.0;
        let last = self.probs.len() - 1;
        let mut counts = Vec::with_capacity(self.probs.len());
        for &p in &self.probs[..last] {
            let c = if remaining == 0 || p <= 0.0 {
                0
            } else {
                let cond = (p / mass_left).clamp(0.0, 1.0);
                Binomial::new(remaining, cond).unwrap().sample(rng)
            };
            remaining -= c;
            mass_left -= p;
            counts.push(c);
        }
        counts.push(remaining);
        Histogram::new(self.bounds.clone(), counts).unwrap()
    }
}

/// One row of the coverage table.
#[derive(Clone, Copy, Debug)]
struct Config {
    name: &'static str,
    control: Dist,
    treatment: Dist,
    q: f64,
    n: u64,
}

struct Coverage {
    absolute: f64,
    relative: f64,
}

/// Coverage of the 95 % intervals (absolute, relative) over `experiments`.
fn coverage(cfg: &Config, experiments: usize, seed: u64) -> Coverage {
    let layout = Layout::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let (qc, qt) = (cfg.control.quantile(cfg.q), cfg.treatment.quantile(cfg.q));
    let (true_abs, true_rel) = (qt - qc, qt / qc - 1.0);
    let nt = cfg.n * 4 / 5; // unequal arms
    let (mut abs_in, mut rel_in) = (0usize, 0usize);
    let wc = Window::new(&layout, &cfg.control, cfg.n, cfg.q);
    let wt = Window::new(&layout, &cfg.treatment, nt, cfg.q);
    for _ in 0..experiments {
        let c = wc.draw(&mut rng, cfg.n);
        let t = wt.draw(&mut rng, nt);
        for (hist, w, what) in [(&c, &wc, "control"), (&t, &wt, "treatment")] {
            let half = 1.959_963_984_540_054 * (cfg.q * (1.0 - cfg.q) / hist.total() as f64).sqrt();
            for p in [cfg.q - half, cfg.q, cfg.q + half] {
                let v = hist.quantile(p).unwrap();
                assert!(
                    v > w.lo && v < w.hi,
                    "{}: {what} quantile {p} = {v} outside the exact window [{}, {}]",
                    cfg.name,
                    w.lo,
                    w.hi
                );
            }
        }
        let a = quantile_test(&c, &t, cfg.q, 0.05, false).unwrap();
        let r = quantile_test(&c, &t, cfg.q, 0.05, true).unwrap();
        abs_in += usize::from(a.ci_low <= true_abs && true_abs <= a.ci_high);
        rel_in += usize::from(r.ci_low <= true_rel && true_rel <= r.ci_high);
    }
    Coverage {
        absolute: abs_in as f64 / experiments as f64,
        relative: rel_in as f64 / experiments as f64,
    }
}

const LN_SHORT: Dist = Dist::LogNormal {
    median: 100.0,
    sigma: 0.5,
};
const LN_SHORT_SLOWER: Dist = Dist::LogNormal {
    median: 105.0,
    sigma: 0.5,
};
const LN_WIDE: Dist = Dist::LogNormal {
    median: 50.0,
    sigma: 1.0,
};
const MIX: Dist = Dist::ExpMix {
    w: 0.9,
    a: 40.0,
    b: 400.0,
};
const MIX_HEAVIER: Dist = Dist::ExpMix {
    w: 0.85,
    a: 40.0,
    b: 400.0,
};

fn pairs() -> [(&'static str, Dist, Dist); 3] {
    [
        ("lognormal σ0.5, +5%", LN_SHORT, LN_SHORT_SLOWER),
        ("lognormal σ1 A/A", LN_WIDE, LN_WIDE),
        ("exp mix 90/10→85/15", MIX, MIX_HEAVIER),
    ]
}

/// Runs every configuration and prints the table; returns the
/// (absolute, relative) coverage of each.
fn run_grid(configs: &[Config], experiments: usize) -> Vec<(Config, Coverage)> {
    eprintln!(
        "{:<22} {:>5} {:>9} {:>9} {:>9}   ({experiments} experiments each)",
        "distribution", "q", "n", "abs cov", "rel cov"
    );
    configs
        .iter()
        .enumerate()
        .map(|(i, cfg)| {
            let cov = coverage(cfg, experiments, 0x5eed_0000 + i as u64);
            eprintln!(
                "{:<22} {:>5} {:>9} {:>9.4} {:>9.4}",
                cfg.name, cfg.q, cfg.n, cov.absolute, cov.relative
            );
            (*cfg, cov)
        })
        .collect()
}

/// The configurations whose coverage lies outside `band`.
fn outside(rows: &[(Config, Coverage)], band: std::ops::RangeInclusive<f64>) -> Vec<String> {
    let mut out = Vec::new();
    for (cfg, cov) in rows {
        for (what, c) in [("absolute", cov.absolute), ("relative", cov.relative)] {
            if !band.contains(&c) {
                out.push(format!(
                    "{} q {} n {}: {what} coverage {c}",
                    cfg.name, cfg.q, cfg.n
                ));
            }
        }
    }
    out
}

/// The default grid: every distribution pair at each of p50/p95/p99 at the
/// smallest validated size ([`validated_min_n`]), and each quantile once at
/// 200 000 events, 4 000 experiments each (n is the control's; the
/// treatment has 80 % of it, so it is just below the validated size: the
/// rule has some margin). About 15 s in a debug build.
#[test]
fn quantile_interval_covers_at_95_percent() {
    let mut configs = Vec::new();
    for (i, (name, control, treatment)) in pairs().into_iter().enumerate() {
        for (j, q) in [0.5, 0.95, 0.99].into_iter().enumerate() {
            let mut sizes = vec![validated_min_n(q)];
            if i == j {
                sizes.push(200_000);
            }
            for n in sizes {
                configs.push(Config {
                    name,
                    control,
                    treatment,
                    q,
                    n,
                });
            }
        }
    }
    let rows = run_grid(&configs, 4_000);
    // Pooled over the 12 configurations (48 000 experiments per kind of
    // interval, binomial s.e. 0.1 %): calibrated overall.
    for (what, pick) in [
        (
            "absolute",
            (|c: &Coverage| c.absolute) as fn(&Coverage) -> f64,
        ),
        ("relative", |c: &Coverage| c.relative),
    ] {
        let pooled = rows.iter().map(|(_, c)| pick(c)).sum::<f64>() / rows.len() as f64;
        eprintln!("pooled {what} coverage {pooled:.4}");
        assert!(
            (0.945..=0.955).contains(&pooled),
            "pooled {what} coverage {pooled}"
        );
    }
    // Each configuration within ±6 s.e. of 95 % at 4 000 experiments: no
    // configuration is off. The per-configuration [0.94, 0.96] claim is
    // the long grid's (10 000 experiments each, ±4.6 s.e.).
    let failures = outside(&rows, 0.93..=0.97);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The longer grid reported in EVALUATION.md: more sizes, 10 000
/// experiments per configuration (`cargo test --release --test
/// stats_quantile -- --ignored --nocapture`).
#[test]
#[ignore]
fn quantile_interval_covers_at_95_percent_long() {
    let mut configs = Vec::new();
    for (name, control, treatment) in pairs() {
        for q in [0.5, 0.95, 0.99] {
            let min = validated_min_n(q);
            let mut sizes = vec![min];
            sizes.extend(
                [10_000, 100_000, 1_000_000]
                    .into_iter()
                    .filter(|&n| n > min),
            );
            for n in sizes {
                configs.push(Config {
                    name,
                    control,
                    treatment,
                    q,
                    n,
                });
            }
        }
    }
    let failures = outside(&run_grid(&configs, 10_000), 0.94..=0.96);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Below the validated size the interval exists but its coverage is not
/// promised; printed for the record (`--ignored --nocapture`), not
/// asserted.
#[test]
#[ignore]
fn quantile_interval_coverage_below_the_validated_size() {
    let mut configs = Vec::new();
    for (name, control, treatment) in pairs() {
        for q in [0.5, 0.95, 0.99] {
            for div in [8, 4, 2] {
                configs.push(Config {
                    name,
                    control,
                    treatment,
                    q,
                    n: validated_min_n(q) / div,
                });
            }
        }
    }
    run_grid(&configs, 10_000);
}

/// End to end: every event drawn and pushed into a [`LogHistogram`] (the
/// two arms merged from two halves each, as two sidecars would), then the
/// test on its dense histogram: the binning and merging code itself, not
/// only the estimator. `experiments` of median tests at 1 000 events per
/// arm (the exp mixture).
fn raw_events_coverage(experiments: usize, seed: u64) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let (q, n) = (0.5, 1_000usize);
    let (control, treatment) = (MIX, MIX_HEAVIER);
    let truth = treatment.quantile(q) - control.quantile(q);
    let mut covered = 0;
    let arm = |rng: &mut StdRng, dist: &Dist| {
        let mut a = LogHistogram::default();
        let mut b = LogHistogram::default();
        for i in 0..n {
            let h = if i % 2 == 0 { &mut a } else { &mut b };
            h.push(dist.sample(rng));
        }
        a.merge(&b).unwrap();
        assert_eq!(a.total(), n as u64);
        a.to_histogram()
    };
    for _ in 0..experiments {
        let c = arm(&mut rng, &control);
        let t = arm(&mut rng, &treatment);
        let r = quantile_test(&c, &t, q, 0.05, false).unwrap();
        covered += usize::from(r.ci_low <= truth && truth <= r.ci_high);
    }
    let cov = covered as f64 / experiments as f64;
    eprintln!("raw events, exp mix p50, n {n}, {experiments} experiments: coverage {cov:.4}");
    cov
}

/// The end-to-end check at a size a debug build runs in seconds: 600
/// experiments, so the band is the binomial ±2.3 s.e. around 95 %
/// (the ≥ 2 000-experiment claims are the grids' and the ignored variant's).
#[test]
fn raw_events_through_log_histogram() {
    let cov = raw_events_coverage(600, 0x10_6157);
    assert!((0.93..=0.97).contains(&cov), "coverage {cov}");
}

/// The same with 4 000 experiments, held to [0.94, 0.96] (`--ignored`).
#[test]
#[ignore]
fn raw_events_through_log_histogram_long() {
    let cov = raw_events_coverage(4_000, 0x10_6158);
    assert!((0.94..=0.96).contains(&cov), "coverage {cov}");
}

/// The Woodruff se against the asymptotic √(ν(1 − ν)/n)/f(q) on a large
/// exact histogram: the method estimates the right thing.
#[test]
fn woodruff_se_approaches_the_asymptotic_se() {
    let layout = Layout::new();
    let mut rng = StdRng::seed_from_u64(7);
    let dist = LN_WIDE;
    let n = 10_000_000u64;
    for q in [0.5, 0.95, 0.99] {
        let hist = Window::new(&layout, &dist, n, q).draw(&mut rng, n);
        let se = quantile_se(&hist, q, "control").unwrap().se;
        let x = dist.quantile(q);
        // Lognormal density at x: φ(z)/(x σ).
        let z = (x / 50.0).ln();
        let f = (-0.5 * z * z).exp() / (x * (2.0 * std::f64::consts::PI).sqrt());
        let want = (q * (1.0 - q) / n as f64).sqrt() / f;
        assert!((se / want - 1.0).abs() < 0.05, "q {q}: se {se} vs {want}");
    }
}

/// `abmesh stats` on `quantile` cases whose expected values a second
/// implementation of the definitions computed (tests/data/gen_quantile_cases.py:
/// numpy and scipy), over LogHistogram layouts, the filter's 25-bucket
/// histogram and point masses at 0: every output within the README's rule.
#[test]
fn quantile_cases_agree_with_the_python_definitions() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/quantile-cases.json"
    );
    let c = stats_support::check_file(std::path::Path::new(file));
    c.print("quantile cases");
    assert!(c.cases >= 30);
    assert!(
        c.problems.is_empty(),
        "{} disagreements:\n{}",
        c.problems.len(),
        c.problems.join("\n")
    );
}
