//! The report's decision on experiments whose truth is known: a real
//! improvement ships, a real harm stops, no effect on a large sample is
//! inconclusive, a small sample keeps running, and a 51/49 split at 100 000
//! users is flagged as a sample ratio mismatch before anything else. The
//! report's other parts (sequential, CUPED, chance to beat, MDE, SRM,
//! series) are checked to be there.

use std::borrow::Cow;
use std::sync::Arc;

use abmesh_eval::aggregate::{Definitions, Engine, EngineOptions};
use abmesh_eval::ingest::exposure::{BatchExperiment, ExposureBatch, ExposureRow};
use abmesh_eval::ingest::fields::{Finite, Text};
use abmesh_eval::ingest::Outcome;
use abmesh_eval::report::settings::{ExperimentSettings, MetricSettings};
use abmesh_eval::report::{self, DecisionKind, Report, Settings, Stat};

const CONFIG: &str = r#"{"experiments":[{"name":"exp","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}]}]}"#;

struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-300), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn t(s: &str) -> Text<'_> {
    Text(Cow::Borrowed(s))
}

/// `users` users per variant (`share_t` of them in treatment); each user
/// gets `value(variant, rng)` for metric "m" (None: no event) and a
/// covariate correlated with it: a pre-experiment value, so it is drawn
/// from the same random numbers as the user's value *under the control*
/// (`value(0, ·)` on a copy of the generator), plus noise. (A covariate
/// made from the treated value would carry the treatment effect, and CUPED,
/// which the decision uses, would remove most of the effect with it.)
fn run(
    users: usize,
    share_t: f64,
    seed: u64,
    value: impl Fn(usize, &mut Rng) -> Option<f64>,
    settings: &Settings,
) -> Report {
    run_with(users, share_t, seed, value, settings, true)
}

/// [`run`], with or without the covariate (the values are the same).
fn run_with(
    users: usize,
    share_t: f64,
    seed: u64,
    value: impl Fn(usize, &mut Rng) -> Option<f64>,
    settings: &Settings,
    with_covariate: bool,
) -> Report {
    let defs = Arc::new(Definitions::from_json(CONFIG.as_bytes()).unwrap());
    let mut e = Engine::new(Some(defs), EngineOptions::default());
    let mut rng = Rng(seed);
    let names: Vec<String> = (0..users).map(|u| format!("u{u}")).collect();
    let variant: Vec<usize> = (0..users)
        .map(|_| usize::from(rng.unit() < share_t))
        .collect();
    let rows: Vec<ExposureRow> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            ExposureRow(
                1_777_636_800_000 + (i as i64) * 1000,
                0,
                variant[i] as u32,
                t(n),
                0,
            )
        })
        .collect();
    e.apply_exposures(&ExposureBatch {
        instance: t("sim"),
        seq: 1,
        dropped: 0,
        experiments: vec![BatchExperiment {
            name: t("exp"),
            variants: vec![t("control"), t("treatment")],
        }],
        exposures: rows,
        config_id: None,
        config: None,
        health: Vec::new(),
    });
    let mut events = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let before = value(0, &mut Rng(rng.0));
        if let Some(v) = value(variant[i], &mut rng) {
            let noise = rng.normal();
            let pre = before.unwrap_or(0.0);
            events.push(Outcome {
                experiment: None,
                user: t(n),
                metric: t("m"),
                value: Some(Finite(v)),
                covariate: with_covariate.then_some(Finite(pre * 0.8 + noise)),
                timestamp: None,
                id: None,
                segments: None,
            });
        }
    }
    e.apply_outcomes(&events);
    report::report(&e.aggregates(), "exp", settings).unwrap()
}

fn normal_value(mean_c: f64, lift: f64, sd: f64) -> impl Fn(usize, &mut Rng) -> Option<f64> {
    move |v, rng| Some(mean_c * (1.0 + lift * v as f64) + sd * rng.normal())
}

#[test]
fn a_real_improvement_ships() {
    let r = run(
        4000,
        0.5,
        1,
        normal_value(10.0, 0.10, 3.0),
        &Settings::default(),
    );
    assert_eq!(
        r.decision.decision,
        DecisionKind::Ship,
        "{}",
        r.decision.reason
    );
    assert_eq!(r.decision.variant.as_deref(), Some("treatment"));
    assert!(
        r.decision
            .reason
            .contains("treatment improves m per user by +"),
        "{}",
        r.decision.reason
    );
    let c = &r.metrics[0].comparisons[0];
    let rel = c.relative.ok().unwrap();
    assert!((rel.estimate - 0.10).abs() < 0.03, "{rel:?}");
    assert!(c.p_value.unwrap() < 1e-6);
    let seq = c.sequential.ok().unwrap();
    assert!(
        seq.ci_low > 0.0 && seq.ci_low < rel.ci_low && seq.ci_high > rel.ci_high,
        "the always-valid interval is wider: {seq:?} {rel:?}"
    );
    assert!(*c.chance_to_beat_control.ok().unwrap() > 0.999);
    // The covariate explains most of the variance: CUPED narrows the test.
    let cuped = c.cuped.as_ref().unwrap().ok().unwrap();
    let abs = c.absolute.ok().unwrap();
    assert!(cuped.variance_reduction > 0.5, "{cuped:?}");
    assert!(cuped.se < abs.se * 0.8, "{cuped:?} vs {abs:?}");
    let mde = c.mde.ok().unwrap();
    assert!(mde.relative > 0.0 && mde.power_at_target > 0.5, "{mde:?}");
    assert!(r.srm.ok().is_some_and(|s| !s.alarm));
    assert!(!c.series.is_empty());
    let last = c.series.last().unwrap();
    assert!(
        (last.lift - rel.estimate).abs() < 1e-12,
        "the chart ends at the current result"
    );
}

#[test]
fn a_real_harm_stops_and_direction_is_respected() {
    let r = run(
        4000,
        0.5,
        2,
        normal_value(10.0, -0.10, 3.0),
        &Settings::default(),
    );
    assert_eq!(
        r.decision.decision,
        DecisionKind::StopHarm,
        "{}",
        r.decision.reason
    );
    assert!(
        r.decision
            .reason
            .contains("treatment makes m per user worse"),
        "{}",
        r.decision.reason
    );
    // Where lower is better, the same data is an improvement.
    let mut s = Settings::default();
    s.experiments.insert(
        "exp".into(),
        ExperimentSettings {
            primary_metric: Some("m".into()),
            metrics: [(
                "m".to_owned(),
                MetricSettings {
                    higher_is_better: false,
                },
            )]
            .into(),
        },
    );
    let r = run(4000, 0.5, 2, normal_value(10.0, -0.10, 3.0), &s);
    assert_eq!(
        r.decision.decision,
        DecisionKind::Ship,
        "{}",
        r.decision.reason
    );
    assert!(
        *r.metrics[0].comparisons[0]
            .chance_to_beat_control
            .ok()
            .unwrap()
            > 0.999
    );
}

#[test]
fn no_effect_on_a_large_sample_is_inconclusive() {
    let r = run(
        20_000,
        0.5,
        3,
        normal_value(10.0, 0.0, 2.0),
        &Settings::default(),
    );
    assert_eq!(
        r.decision.decision,
        DecisionKind::Inconclusive,
        "{}",
        r.decision.reason
    );
    assert!(
        r.decision.reason.contains("No effect as large as ±5.0%"),
        "{}",
        r.decision.reason
    );
}

#[test]
fn small_samples_keep_running_and_say_how_far_to_go() {
    let r = run(
        150,
        0.5,
        4,
        normal_value(10.0, 0.0, 5.0),
        &Settings::default(),
    );
    assert_eq!(r.decision.decision, DecisionKind::KeepRunning);
    assert!(
        r.decision.reason.starts_with("Too early"),
        "{}",
        r.decision.reason
    );

    // Without a covariate, a +2% effect at 1 000 users is not resolved yet.
    let r = run_with(
        1000,
        0.5,
        5,
        normal_value(10.0, 0.02, 8.0),
        &Settings::default(),
        false,
    );
    assert_eq!(
        r.decision.decision,
        DecisionKind::KeepRunning,
        "{}",
        r.decision.reason
    );
    assert!(
        r.decision
            .reason
            .contains("The MDE at the current sample is")
            && r.decision
                .reason
                .contains("users per variant give 80% power"),
        "{}",
        r.decision.reason
    );
    // The same users with a covariate at correlation ≈ 0.99: CUPED removes
    // ~97% of the variance, the adjusted always-valid interval excludes 0
    // and the (true) improvement ships.
    let r = run(
        1000,
        0.5,
        5,
        normal_value(10.0, 0.02, 8.0),
        &Settings::default(),
    );
    assert_eq!(
        r.decision.decision,
        DecisionKind::Ship,
        "{}",
        r.decision.reason
    );
    assert!(
        r.decision.reason.contains("CUPED-adjusted"),
        "{}",
        r.decision.reason
    );
}

#[test]
fn conversions_use_proportions_and_the_beta_binomial() {
    let conv =
        |v: usize, rng: &mut Rng| (rng.unit() < if v == 1 { 0.15 } else { 0.10 }).then_some(1.0);
    let r = run(6000, 0.5, 6, conv, &Settings::default());
    let m = &r.metrics[0];
    // Every event had a value of 1 here: still a value metric, but the
    // conversion counts are there.
    assert!(m
        .variants
        .iter()
        .all(|v| v.converted > 0 && v.conversion_rate.is_some()));
    assert_eq!(
        r.decision.decision,
        DecisionKind::Ship,
        "{}",
        r.decision.reason
    );
}

#[test]
fn a_51_49_split_at_100k_users_is_a_sample_ratio_mismatch() {
    let r = run(100_000, 0.49, 7, |_, _| Some(1.0), &Settings::default());
    let srm = r.srm.ok().unwrap();
    assert!(srm.alarm && srm.p_value < 1e-6, "{srm:?}");
    assert!(srm.weights_configured);
    assert_eq!(r.decision.decision, DecisionKind::Inconclusive);
    assert!(
        r.decision.reason.starts_with("Sample ratio mismatch"),
        "{}",
        r.decision.reason
    );
    // A fair split at the same size is not flagged.
    let r = run(100_000, 0.5, 8, |_, _| Some(1.0), &Settings::default());
    assert!(!r.srm.ok().unwrap().alarm);
}

#[test]
fn undefined_statistics_say_why() {
    // One user per variant: nothing can be tested, and the report says so
    // instead of printing NaN.
    let settings = Settings {
        min_users: 1,
        ..Settings::default()
    };
    let r = (9..100)
        .map(|seed| run(2, 0.5, seed, normal_value(10.0, 0.0, 1.0), &settings))
        .find(|r| r.variants.iter().all(|v| v.users == 1))
        .expect("some seed splits two users one and one");
    let c = &r.metrics[0].comparisons[0];
    assert!(
        matches!(&c.absolute, Stat::Err { error } if error.contains("n must be ≥ 2")),
        "{:?}",
        c.absolute
    );
    assert!(matches!(&c.sequential, Stat::Err { .. }));
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains("NaN"), "{json}");
    assert_eq!(r.decision.decision, DecisionKind::KeepRunning);
    assert!(
        r.decision.reason.contains("cannot be tested"),
        "{}",
        r.decision.reason
    );
}
