//! Operating characteristics of the guardrails, simulated with fixed seeds:
//! the engine checks after every exposure batch, forever, so the false-halt
//! rate must hold over all those looks (always-valid tests with Bonferroni
//! over rules × treatments), while a broken variant must still be caught
//! within a few batches.
//!
//! Each simulated experiment streams batches of 50 sampled responses per
//! arm (2 % errors, log-normal latencies with a 20 ms median, bucketed like
//! the filter) plus 20 users per arm converting at 5 % (the buyers spend an
//! exponential amount with mean 50: a zero-inflated revenue metric), and runs
//! `guardrail::evaluate` on the cumulative aggregates after every batch.
//! Random numbers come from SplitMix64 (tiny, deterministic, fast in a
//! debug build).

use abmesh_filter::config::GuardrailsConfig;
use abmesh_stats::guardrail::{
    evaluate, CheckStatus, Health, MetricData, LATENCY_BOUNDS_US, LATENCY_BUCKETS,
};
use abmesh_stats::special::normal_cdf;
use abmesh_stats::Moments;

const EXPERIMENTS: usize = 500;
const BATCHES: usize = 200;
const PER_BATCH: u64 = 50;
const USERS_PER_BATCH: u64 = 20;
const ALPHA: f64 = 0.05;

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// One arm's users so far.
#[derive(Clone, Default)]
struct Users {
    n: u64,
    converted: u64,
    revenue: Moments,
}

/// One arm's behaviour.
#[derive(Clone)]
struct Arm {
    error_rate: f64,
    /// Cumulative probability of each latency bucket.
    latency_cdf: [f64; LATENCY_BUCKETS],
    conversion: f64,
}

impl Arm {
    /// Log-normal latency with this median (µs) and σ = 0.5.
    fn new(error_rate: f64, median_us: f64, conversion: f64) -> Self {
        let mut latency_cdf = [1.0; LATENCY_BUCKETS];
        for (c, &b) in latency_cdf.iter_mut().zip(&LATENCY_BOUNDS_US) {
            *c = normal_cdf(((b as f64).ln() - median_us.ln()) / 0.5);
        }
        Arm {
            error_rate,
            latency_cdf,
            conversion,
        }
    }

    fn batch(&self, rng: &mut SplitMix64, health: &mut Health, users: &mut Users) {
        health.requests += PER_BATCH;
        for _ in 0..PER_BATCH {
            let class = if rng.unit() < self.error_rate { 4 } else { 1 };
            health.status[class] += 1;
            let u = rng.unit();
            let bucket = self.latency_cdf.partition_point(|&c| c <= u);
            health.latency[bucket.min(LATENCY_BUCKETS - 1)] += 1;
        }
        users.n += USERS_PER_BATCH;
        for _ in 0..USERS_PER_BATCH {
            if rng.unit() < self.conversion {
                users.converted += 1;
                // Spend: exponential with mean 50, as a zero-inflated
                // per-user revenue.
                users.revenue.push(-50.0 * (1.0 - rng.unit()).ln());
            } else {
                users.revenue.push(0.0);
            }
        }
    }
}

fn config(rules: &str) -> GuardrailsConfig {
    serde_json::from_str(&format!(
        r#"{{"alpha": {ALPHA}, "min_responses": 100, {rules}}}"#
    ))
    .unwrap()
}

/// Runs one experiment (arm 0 is control) and returns the batch (1-based)
/// after which the first breach happened, and its rule.
fn run(
    cfg: &GuardrailsConfig,
    arms: &[Arm],
    rng: &mut SplitMix64,
    batches: usize,
) -> Option<(usize, String)> {
    let mut health = vec![Health::default(); arms.len()];
    let mut users = vec![Users::default(); arms.len()];
    for b in 1..=batches {
        for (i, arm) in arms.iter().enumerate() {
            arm.batch(rng, &mut health[i], &mut users[i]);
        }
        let metric = |name: &str, v: usize| match name {
            "purchase" => Some(MetricData::Conversion {
                n: users[v].n,
                converted: users[v].converted,
            }),
            "revenue" => Some(MetricData::Value(users[v].revenue)),
            _ => None,
        };
        let checks = evaluate(cfg, 0, &health, &metric);
        if let Some(c) = checks.iter().find(|c| c.status == CheckStatus::Breach) {
            return Some((b, c.rule.clone()));
        }
        assert!(checks.iter().all(|c| c.status != CheckStatus::Error));
    }
    None
}

const ALL_RULES: &str = r#""error_rate": {"max_increase": 0},
    "p95_latency": {"max_increase_percent": 0},
    "metrics": [{"metric": "purchase", "max_decrease_percent": 0},
                {"metric": "revenue", "max_decrease_percent": 0}]"#;

/// A/A with every rule at its tightest (no tolerance): looking after each
/// of 200 batches, the probability that any rule ever halts the (healthy)
/// treatment stays at or below α.
#[test]
fn aa_false_halt_rate_stays_below_alpha() {
    let cfg = config(ALL_RULES);
    let arm = Arm::new(0.02, 20_000.0, 0.05);
    let arms = [arm.clone(), arm];
    let mut rng = SplitMix64(0xA11CE);
    let mut halts = Vec::new();
    for _ in 0..EXPERIMENTS {
        if let Some(h) = run(&cfg, &arms, &mut rng, BATCHES) {
            halts.push(h);
        }
    }
    let rate = halts.len() as f64 / EXPERIMENTS as f64;
    eprintln!("A/A false-halt rate over {BATCHES} looks: {rate:.4} ({halts:?})");
    assert!(rate <= ALPHA, "family-wise false-halt rate {rate}");
}

/// A/A/A: two healthy treatments share the family's α (Bonferroni over
/// treatments as well as rules).
#[test]
fn aaa_false_halt_rate_stays_below_alpha() {
    let cfg =
        config(r#""error_rate": {"max_increase": 0}, "p95_latency": {"max_increase_percent": 0}"#);
    let arm = Arm::new(0.02, 20_000.0, 0.05);
    let arms = [arm.clone(), arm.clone(), arm];
    let mut rng = SplitMix64(0xB0B);
    let halts = (0..EXPERIMENTS / 2)
        .filter(|_| run(&cfg, &arms, &mut rng, BATCHES / 2).is_some())
        .count();
    let rate = halts as f64 / (EXPERIMENTS / 2) as f64;
    eprintln!("A/A/A false-halt rate: {rate:.4}");
    assert!(rate <= ALPHA, "family-wise false-halt rate {rate}");
}

/// Returns how many of `EXPERIMENTS` runs were halted by `rule` within
/// `within` batches.
fn caught(cfg: &GuardrailsConfig, arms: &[Arm], seed: u64, within: usize, rule: &str) -> usize {
    let mut rng = SplitMix64(seed);
    let mut batches = Vec::new();
    let mut n = 0;
    for _ in 0..EXPERIMENTS {
        if let Some((b, r)) = run(cfg, arms, &mut rng, within) {
            assert_eq!(r, rule, "halted by the wrong rule");
            batches.push(b);
            n += 1;
        }
    }
    batches.sort_unstable();
    let median = batches.get(batches.len() / 2).copied().unwrap_or(0);
    eprintln!("{rule}: caught {n}/{EXPERIMENTS} within {within} batches (median batch {median})");
    n
}

/// A variant failing 20 % of requests (vs 2 %) is halted within 6 batches
/// (300 sampled responses per arm) in at least 99 % of runs.
#[test]
fn faulty_variant_is_halted_quickly() {
    let cfg = config(ALL_RULES);
    let arms = [
        Arm::new(0.02, 20_000.0, 0.05),
        Arm::new(0.20, 20_000.0, 0.05),
    ];
    let n = caught(&cfg, &arms, 0xFA17, 6, "error_rate");
    assert!(n * 100 >= EXPERIMENTS * 99, "caught {n}/{EXPERIMENTS}");
}

/// A variant twice as slow is halted by the p95 rule (20 % tolerance)
/// within 5 batches in at least 99 % of runs.
#[test]
fn slow_variant_is_halted_quickly() {
    let cfg = config(
        r#""error_rate": {"max_increase": 0.01}, "p95_latency": {"max_increase_percent": 20}"#,
    );
    let arms = [
        Arm::new(0.02, 20_000.0, 0.05),
        Arm::new(0.02, 40_000.0, 0.05),
    ];
    let n = caught(&cfg, &arms, 0x510E, 5, "p95_latency");
    assert!(n * 100 >= EXPERIMENTS * 99, "caught {n}/{EXPERIMENTS}");
}

/// A variant exactly at the latency tolerance (20 % slower everywhere,
/// limit 20 %) is at the boundary of the null hypothesis: it must not be
/// halted more often than α.
#[test]
fn variant_at_the_latency_limit_is_not_halted() {
    let cfg = config(r#""p95_latency": {"max_increase_percent": 20}"#);
    let arms = [
        Arm::new(0.02, 20_000.0, 0.05),
        Arm::new(0.02, 24_000.0, 0.05),
    ];
    let mut rng = SplitMix64(0x1_1A1);
    let halts = (0..EXPERIMENTS / 2)
        .filter(|_| run(&cfg, &arms, &mut rng, BATCHES / 2).is_some())
        .count();
    let rate = halts as f64 / (EXPERIMENTS / 2) as f64;
    eprintln!("latency at the limit: false-halt rate {rate:.4}");
    assert!(rate <= ALPHA, "false-halt rate {rate}");
}

/// A variant that loses half its purchases (5 % → 2.5 % of users) is halted
/// by a 5 % decrease rule within 200 batches (4 000 users per arm) in at
/// least 95 % of runs (a rare false halt by a health rule counts as missed).
#[test]
fn variant_losing_conversions_is_halted() {
    let cfg = config(ALL_RULES);
    let arms = [
        Arm::new(0.02, 20_000.0, 0.05),
        Arm::new(0.02, 20_000.0, 0.025),
    ];
    let mut rng = SplitMix64(0xC0DE);
    let mut caught = 0;
    for _ in 0..EXPERIMENTS {
        if let Some((_, rule)) = run(&cfg, &arms, &mut rng, BATCHES) {
            caught += usize::from(rule.starts_with("metric:"));
        }
    }
    eprintln!("conversions halved: caught {caught}/{EXPERIMENTS} within {BATCHES} batches");
    assert!(
        caught * 100 >= EXPERIMENTS * 95,
        "caught {caught}/{EXPERIMENTS}"
    );
}
