//! Ratio and quantile metrics through the whole pipeline (issue 14, item
//! 3): declared in the plugin configuration's `metrics`, aggregated by the
//! engine from outcome events and exposures (events before the exposure
//! included, users moved by an earlier exposure included), shown in the
//! report with the numbers `abmesh_stats` computes directly from the same
//! raw data, kept by snapshots, merges and a configuration learned later,
//! and used by metric guardrails. The last test checks the coverage of the
//! quantile interval computed from the stored (bucketed, merged) form.

use std::sync::Arc;

use abmesh_common::SidecarId;
use abmesh_eval::aggregate::derived::Buckets;
use abmesh_eval::aggregate::{Definitions, Engine, EngineOptions};
use abmesh_eval::ingest::{parse_exposures, parse_outcomes};
use abmesh_eval::report::{self, text, Report, Settings, Stat};
use abmesh_stats::{quantile_test, ratio, LogHistogram, RatioMoments};

const CONFIG: &str = r#"{"experiments":[{"name":"exp","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}],
  "guardrails":{"metrics":[{"metric":"ctr","max_decrease_percent":10},{"metric":"latency_p95","max_increase_percent":50}]}}],
  "metrics":[{"name":"ctr","type":"ratio","numerator":"click","denominator":"impression"},
             {"name":"latency_p95","type":"quantile","metric":"latency_ms","quantile":0.95}]}"#;

struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-300), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// One simulated user: final variant, clicks, impressions, latencies.
struct User {
    name: String,
    variant: usize,
    /// The later, first-sent exposure's variant (differs when an earlier
    /// exposure moves the user).
    first_sent: usize,
    clicks: f64,
    impressions: f64,
    latencies: Vec<f64>,
}

struct Sim {
    users: Vec<User>,
    /// Event bodies (JSON arrays) in sending order, and the index of the
    /// first one sent after the exposures.
    events: Vec<String>,
    after: usize,
}

fn simulate(n: usize, seed: u64, ctr: [f64; 2], latency_scale: [f64; 2]) -> Sim {
    let mut rng = Rng(seed);
    let mut users = Vec::new();
    let mut events: Vec<String> = Vec::new();
    for u in 0..n {
        let variant = usize::from(rng.unit() < 0.5);
        // 5 % of the users are first sent in the other variant, then an
        // earlier exposure puts them in `variant`.
        let first_sent = if rng.unit() < 0.05 {
            1 - variant
        } else {
            variant
        };
        let name = format!("u{u}");
        let impressions = (rng.unit() * 8.0).floor();
        let mut clicks = 0.0;
        for _ in 0..impressions as usize {
            events.push(format!(r#"{{"user":"{name}","metric":"impression"}}"#));
            if rng.unit() < ctr[variant] {
                clicks += 1.0;
            }
        }
        if clicks > 0.0 {
            // Clicks as one valued event.
            events.push(format!(
                r#"{{"user":"{name}","metric":"click","value":{clicks}}}"#
            ));
        }
        let k = (rng.unit() * 4.0) as usize;
        let mut latencies = Vec::new();
        for _ in 0..k {
            let v = latency_scale[variant] * (3.0 + 0.6 * rng.normal()).exp();
            latencies.push(v);
            events.push(format!(
                r#"{{"user":"{name}","metric":"latency_ms","value":{v}}}"#
            ));
        }
        // Scoped to another experiment: counts nowhere here.
        events.push(format!(
            r#"{{"user":"{name}","metric":"latency_ms","value":1e6,"experiment":"other"}}"#
        ));
        users.push(User {
            name,
            variant,
            first_sent,
            clicks,
            impressions,
            latencies,
        });
    }
    // Shuffle the events (Fisher–Yates) and send them in bodies of 500.
    for i in (1..events.len()).rev() {
        let j = (rng.unit() * (i + 1) as f64) as usize;
        events.swap(i, j);
    }
    let bodies: Vec<String> = events
        .chunks(500)
        .map(|c| format!("[{}]", c.join(",")))
        .collect();
    let after = bodies.len() / 2;
    Sim {
        users,
        events: bodies,
        after,
    }
}

fn exposures(users: &[User], seq: u64, t: i64, pick: impl Fn(&User) -> Option<usize>) -> String {
    let rows: Vec<String> = users
        .iter()
        .filter_map(|u| pick(u).map(|v| format!(r#"[{t},0,{v},"{}"]"#, u.name)))
        .collect();
    format!(
        r#"{{"instance":"sim","seq":{seq},"experiments":[{{"name":"exp","variants":["control","treatment"]}}],"exposures":[{}]}}"#,
        rows.join(",")
    )
}

fn defs() -> Arc<Definitions> {
    Arc::new(Definitions::from_json(CONFIG.as_bytes()).unwrap())
}

fn outcomes(e: &mut Engine, body: &str) {
    let ev = parse_outcomes(body.as_bytes()).unwrap();
    e.apply_outcomes(&ev);
}

fn batch(e: &mut Engine, body: &str, lsn: u64) {
    let b = parse_exposures(body.as_bytes()).unwrap();
    e.apply_batch(&b, 1_777_000_000_000, lsn);
}

/// Events before and after the exposures; the earlier exposures that move
/// 5 % of the users come last.
fn run(e: &mut Engine, sim: &Sim, events: impl Fn(usize) -> bool) {
    for (i, b) in sim.events[..sim.after].iter().enumerate() {
        if events(i) {
            outcomes(e, b);
        }
    }
    batch(
        e,
        &exposures(&sim.users, 1, 2_000, |u| Some(u.first_sent)),
        1,
    );
    for (i, b) in sim.events[sim.after..].iter().enumerate() {
        if events(sim.after + i) {
            outcomes(e, b);
        }
    }
    batch(
        e,
        &exposures(&sim.users, 2, 1_000, |u| {
            (u.first_sent != u.variant).then_some(u.variant)
        }),
        2,
    );
}

fn report_of(e: &Engine) -> Report {
    report::report(&e.aggregates(), "exp", &Settings::default()).unwrap()
}

fn close(a: f64, b: f64, what: &str) {
    let tol = 1e-9 * a.abs().max(b.abs()).max(1e-12);
    assert!((a - b).abs() <= tol, "{what}: {a} vs {b}");
}

/// What abmesh-stats computes from the raw per-user data.
struct Expected {
    ratio_rel: abmesh_stats::EffectResult,
    ratio_abs: abmesh_stats::EffectResult,
    ratios: [f64; 2],
    q_rel: abmesh_stats::QuantileResult,
    q_abs: abmesh_stats::QuantileResult,
    events: [u64; 2],
}

fn expected(sim: &Sim) -> Expected {
    let mut rm = [RatioMoments::new(), RatioMoments::new()];
    let mut lh = [LogHistogram::default(), LogHistogram::default()];
    for u in &sim.users {
        rm[u.variant].push(u.clicks, u.impressions);
        for &v in &u.latencies {
            lh[u.variant].push(v);
        }
    }
    let (hc, ht) = (lh[0].to_histogram(), lh[1].to_histogram());
    Expected {
        ratio_rel: ratio(&rm[0], &rm[1], 0.05, true).unwrap(),
        ratio_abs: ratio(&rm[0], &rm[1], 0.05, false).unwrap(),
        ratios: [rm[0].ratio(), rm[1].ratio()],
        q_rel: quantile_test(&hc, &ht, 0.95, 0.05, true).unwrap(),
        q_abs: quantile_test(&hc, &ht, 0.95, 0.05, false).unwrap(),
        events: [lh[0].total(), lh[1].total()],
    }
}

fn check_report(r: &Report, x: &Expected, with_quantiles: bool) {
    let m = &r.ratio_metrics[0];
    assert_eq!((m.name.as_str(), m.numerator.as_str()), ("ctr", "click"));
    for v in 0..2 {
        close(m.variants[v].ratio.unwrap(), x.ratios[v], "ratio");
    }
    let c = &m.comparisons[0];
    let (Stat::Ok(rel), Stat::Ok(abs)) = (&c.relative, &c.absolute) else {
        panic!("{c:?}")
    };
    for (a, b) in [(rel, &x.ratio_rel), (abs, &x.ratio_abs)] {
        close(a.estimate, b.estimate, "ratio estimate");
        close(a.se, b.se, "ratio se");
        close(a.df, b.df, "ratio df");
        close(a.ci_low, b.ci_low, "ratio ci_low");
        close(a.ci_high, b.ci_high, "ratio ci_high");
        close(a.p_value, b.p_value, "ratio p");
    }
    assert!(matches!(c.sequential, Stat::Ok(_)));
    let q = &r.quantile_metrics[0];
    assert_eq!((q.metric.as_str(), q.quantile), ("latency_ms", 0.95));
    if !with_quantiles {
        assert!(q.variants.iter().all(|v| v.events == 0), "{q:?}");
        return;
    }
    assert_eq!(
        [q.variants[0].events, q.variants[1].events],
        x.events,
        "events of exposed users, the other experiment's left out"
    );
    let c = &q.comparisons[0];
    // The same buckets: the same numbers.
    assert_eq!(c.relative, Stat::Ok(x.q_rel));
    assert_eq!(c.absolute, Stat::Ok(x.q_abs));
}

#[test]
fn engine_reports_ratio_and_quantile_metrics_as_abmesh_stats_computes_them() {
    let sim = simulate(3000, 7, [0.2, 0.22], [1.0, 1.1]);
    let mut e = Engine::new(Some(defs()), EngineOptions::default());
    run(&mut e, &sim, |_| true);
    let r = report_of(&e);
    let x = expected(&sim);
    check_report(&r, &x, true);
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["ratio_metrics"][0]["comparisons"][0]["relative"]["ci_low"].is_number());
    assert!(json["quantile_metrics"][0]["comparisons"][0]["absolute"]["p_value"].is_number());
    let t = text::render(&r);
    assert!(
        t.contains("ctr (ratio metric click / impression per user"),
        "{t}"
    );
    assert!(
        t.contains("latency_p95 (p95 of latency_ms per event"),
        "{t}"
    );
    let h = report::html::report_page(&r);
    assert!(h.contains("id=\"ratio-ctr\"") && h.contains("id=\"quantile-latency_p95\""));
    // Guardrail checks name the declared metrics and have data.
    let g = r.guardrails.as_ref().unwrap();
    let rules: Vec<&str> = g.checks.iter().map(|c| c.check.rule.as_str()).collect();
    assert_eq!(rules, ["metric:ctr", "metric:latency_p95"]);
    for c in &g.checks {
        assert!(c.check.estimate.is_some(), "{:?}", c.check);
    }
}

#[test]
fn snapshots_merges_and_a_later_configuration_keep_them() {
    let sim = simulate(1500, 11, [0.2, 0.2], [1.0, 1.0]);
    let x = expected(&sim);
    let mut e = Engine::new(Some(defs()), EngineOptions::default());
    run(&mut e, &sim, |_| true);
    let before = report_of(&e);
    // Snapshot round trip.
    let mut bytes = Vec::new();
    e.encode_state(&mut bytes).unwrap();
    let r = Engine::restore(Some(&bytes), Some(defs()), EngineOptions::default()).unwrap();
    let after = report_of(&r);
    check_report(&after, &x, true);
    assert_eq!(after.quantile_metrics, before.quantile_metrics);
    // A snapshot without definitions reads the buckets too (another id
    // order: users are folded in through the id maps).
    let mut other_order = Engine::new(None, EngineOptions::default());
    outcomes(
        &mut other_order,
        r#"[{"user":"z","metric":"zz","value":1}]"#,
    );
    // Two sidecars that each saw part of the events (users in both) merge
    // into one report equal to the whole.
    let mut a = Engine::new(Some(defs()), EngineOptions::default());
    let mut b = Engine::new(Some(defs()), EngineOptions::default());
    run(&mut a, &sim, |i| i % 2 == 0);
    run(&mut b, &sim, |i| i % 2 == 1);
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    a.export_state(SidecarId(1), 10, &mut sa).unwrap();
    b.export_state(SidecarId(2), 10, &mut sb).unwrap();
    let mut m = Engine::new(Some(defs()), EngineOptions::default());
    m.merge_state(&sa).unwrap();
    m.merge_state(&sb).unwrap();
    check_report(&report_of(&m), &x, true);
    other_order.merge_state(&sa).unwrap();
    other_order.merge_state(&sb).unwrap();
    let mut snap = Vec::new();
    other_order.encode_state(&mut snap).unwrap();
    let folded = Engine::restore(Some(&snap), Some(defs()), EngineOptions::default()).unwrap();
    check_report(&report_of(&folded), &x, true);
    // Definitions learned after the data: ratio sums are rebuilt from the
    // users' totals; quantile events that came before are not histogrammed.
    let mut late = Engine::new(None, EngineOptions::default());
    run(&mut late, &sim, |_| true);
    let payload = format!(
        r#"{{"config_id":"{}","config":{CONFIG}}}"#,
        abmesh_filter::config_id(CONFIG.as_bytes())
    );
    late.apply_config(payload.as_bytes()).unwrap();
    check_report(&report_of(&late), &x, false);
}

#[test]
fn a_ratio_guardrail_halts_a_treatment_with_fewer_clicks_per_impression() {
    let sim = simulate(4000, 3, [0.3, 0.2], [1.0, 1.0]);
    let mut e = Engine::new(Some(defs()), EngineOptions::default());
    run(&mut e, &sim, |_| true);
    // Guardrails run after an exposure batch.
    batch(&mut e, &exposures(&sim.users, 3, 3_000, |_| None), 3);
    let r = report_of(&e);
    let halt = r.halts.iter().find(|h| h.active).expect("halted");
    assert_eq!(halt.halt.variant, "treatment");
    assert_eq!(halt.halt.rule.as_deref(), Some("metric:ctr"));
    assert!(
        halt.halt.message.contains("ratio \"ctr\""),
        "{}",
        halt.halt.message
    );
}

#[test]
fn a_quantile_guardrail_halts_a_slower_treatment() {
    let sim = simulate(6000, 5, [0.2, 0.2], [1.0, 2.0]);
    let mut e = Engine::new(Some(defs()), EngineOptions::default());
    run(&mut e, &sim, |_| true);
    batch(&mut e, &exposures(&sim.users, 3, 3_000, |_| None), 3);
    let r = report_of(&e);
    let halt = r.halts.iter().find(|h| h.active).expect("halted");
    assert_eq!(halt.halt.rule.as_deref(), Some("metric:latency_p95"));
}

/// The 95 % interval of the quantile difference, computed from the form
/// the engine stores: per-user buckets added into a variant's buckets
/// (some users added to the other variant first and moved, as an earlier
/// exposure does), read through `Buckets::to_histogram`. Events are
/// independent lognormal latencies; the truth is the continuous
/// distributions' quantiles, so the bucketing error is included.
#[test]
fn quantile_interval_covers_95_percent_through_the_stored_buckets() {
    let rows: [(f64, usize, f64, f64, u64); 2] = [
        // (ν, events per arm, σ, treatment scale, seed)
        (0.5, 1_000, 0.5, 1.05, 101),
        (0.95, 5_000, 1.0, 1.0, 202),
    ];
    let experiments = 2_000;
    // Φ⁻¹(ν) for the two levels.
    let z = |q: f64| {
        if q == 0.5 {
            0.0
        } else {
            1.644_853_626_951_472_2
        }
    };
    let mut lines = Vec::new();
    for (q, n, sigma, scale, seed) in rows {
        let mu = 3.0;
        let truth_c = (mu + sigma * z(q)).exp();
        let truth_t = scale * truth_c;
        let mut rng = Rng(seed);
        let (mut abs_in, mut rel_in) = (0u32, 0u32);
        for _ in 0..experiments {
            let mut arms = [Buckets::default(), Buckets::default()];
            for (arm, s) in [(0usize, 1.0), (1, scale)] {
                let mut left = n;
                while left > 0 {
                    // A user with 1 to 3 independent events.
                    let k = (1 + (rng.unit() * 3.0) as usize).min(left);
                    left -= k;
                    let mut user = Buckets::default();
                    for _ in 0..k {
                        user.push(s * (mu + sigma * rng.normal()).exp());
                    }
                    if rng.unit() < 0.05 {
                        // First counted in the other variant, then moved.
                        arms[1 - arm].add(&user, 1.0);
                        arms[1 - arm].add(&user, -1.0);
                    }
                    arms[arm].add(&user, 1.0);
                }
            }
            let (hc, ht) = (
                arms[0].to_histogram().unwrap(),
                arms[1].to_histogram().unwrap(),
            );
            let a = quantile_test(&hc, &ht, q, 0.05, false).unwrap();
            let r = quantile_test(&hc, &ht, q, 0.05, true).unwrap();
            let d = truth_t - truth_c;
            abs_in += u32::from(a.ci_low <= d && d <= a.ci_high);
            let l = truth_t / truth_c - 1.0;
            rel_in += u32::from(r.ci_low <= l && l <= r.ci_high);
        }
        let (ca, cr) = (
            f64::from(abs_in) / experiments as f64,
            f64::from(rel_in) / experiments as f64,
        );
        lines.push(format!(
            "p{} n={n} σ={sigma} scale={scale}: absolute {ca:.4}, relative {cr:.4}",
            q * 100.0
        ));
        for c in [ca, cr] {
            assert!((0.94..=0.96).contains(&c), "{lines:?}");
        }
    }
    println!("{}", lines.join("\n"));
}

/// Prints the `ratio_metrics` and `quantile_metrics` of a report (the
/// example in `sidecar/EVALUATION.md`): `cargo test -p abmesh-eval --test
/// derived_metrics -- --ignored --nocapture print_example`.
#[test]
#[ignore]
fn print_example_report() {
    let sim = simulate(3000, 7, [0.2, 0.22], [1.0, 1.1]);
    let mut e = Engine::new(Some(defs()), EngineOptions::default());
    run(&mut e, &sim, |_| true);
    let r = serde_json::to_value(report_of(&e)).unwrap();
    println!(
        "{}",
        serde_json::to_string_pretty(&r["ratio_metrics"]).unwrap()
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&r["quantile_metrics"]).unwrap()
    );
    println!("{}", text::render(&report_of(&e)));
}
