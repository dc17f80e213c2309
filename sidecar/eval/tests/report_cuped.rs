//! CUPED in the decision and one variance for conversions (issue 14, items
//! 2 and 4).
//!
//! * A value metric with covariates: the report's relative lift, its
//!   interval, the always-valid interval and the chart are kind
//!   `cuped_lift` (`abmesh_stats::cuped_lift`) of the same sums, with the
//!   confidence sequence on its se; the unadjusted figures stay visible.
//!   The issue's side-by-side case (covariate at correlation 0.7, 20 000
//!   users per arm, sums and expected values from gbstats 0.8.0 in
//!   `sidecar/stats/tests/data/gbstats-cases.json`) gives gbstats's numbers.
//! * A value metric without covariates is unchanged (delta-method lift).
//! * Conversions: the relative lift's se, the sequential interval and the
//!   absolute Wald interval all use p(1 − p).

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use abmesh_eval::aggregate::{
    Counters, Definitions, Engine, EngineOptions, KSum, MetricInfo, MetricSums,
};
use abmesh_eval::ingest::exposure::{BatchExperiment, ExposureBatch, ExposureRow};
use abmesh_eval::ingest::fields::{Finite, Text};
use abmesh_eval::ingest::Outcome;
use abmesh_eval::report::data::{self, ExperimentData, MetricData};
use abmesh_eval::report::model::{self, Comparison, Interval};
use abmesh_eval::report::{html, text, Settings};
use abmesh_stats::sequential::confidence_sequence;
use abmesh_stats::{
    comoments_from_sums, cuped_lift, relative_lift, CoMoments, CupedLiftResult, Moments,
};
use serde_json::Value;

const GBSTATS_CASES: &str = "../stats/tests/data/gbstats-cases.json";
const ISSUE_CASE: &str = "cuped_lift-420-issue14-rho0.7-rel";

fn ksum(v: f64) -> KSum {
    let mut k = KSum::default();
    k.add(v);
    k
}

/// Sums of one arm: (n, Σy, Σy², Σx, Σx², Σxy) and the users converted.
fn sums(converted: i64, y: f64, y2: f64, x: f64, x2: f64, xy: f64) -> MetricSums {
    MetricSums {
        converted,
        y: ksum(y),
        y2: ksum(y2),
        x: ksum(x),
        x2: ksum(x2),
        xy: ksum(xy),
    }
}

/// An experiment "exp" with control and treatment and one metric "m",
/// straight from sums (no chart points).
fn experiment(users: [i64; 2], info: MetricInfo, arms: [MetricSums; 2]) -> ExperimentData {
    ExperimentData {
        name: "exp".into(),
        variants: vec!["control".into(), "treatment".into()],
        users: users.to_vec(),
        definition: None,
        metrics: vec![MetricData {
            info,
            sums: arms.to_vec(),
        }],
        series: Vec::new(),
        exposure_rows: (users[0] + users[1]) as u64,
        mismatches: 0,
        conflicts: 0,
        counters: Counters::default(),
        applied_lsn: 0,
        learned: false,
        health: vec![Default::default(); 2],
        halts: Vec::new(),
        checks: None,
        overrides: Vec::new(),
        bandit: None,
        segments: Vec::new(),
        derived: Vec::new(),
    }
}

fn comoments_of(n: i64, s: &MetricSums) -> CoMoments {
    CoMoments::from_sums(
        n as u64,
        s.y.value(),
        s.y2.value(),
        s.x.value(),
        s.x2.value(),
        s.xy.value(),
    )
    .unwrap()
}

fn moments_of(n: i64, s: &MetricSums) -> Moments {
    Moments::from_sums(n as u64, s.y.value(), s.y2.value()).unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

/// The report's relative lift is `want` (estimate, se, interval) to 1e-9.
fn assert_interval_is(got: &Interval, want: &CupedLiftResult) {
    for (k, g, w) in [
        ("estimate", got.estimate, want.estimate),
        ("se", got.se, want.se),
        ("ci_low", got.ci_low, want.ci_low),
        ("ci_high", got.ci_high, want.ci_high),
    ] {
        assert!(close(g, w, 1e-9), "{k}: report {g} vs cuped_lift {w}");
    }
}

/// The report's sequential interval is the confidence sequence on the
/// relative lift's estimate and se with N users in all.
fn assert_sequence_on(c: &Comparison, rel: &Interval, n_total: f64, s: &Settings) {
    let (half, p) = confidence_sequence(rel.estimate, rel.se, n_total, s.alpha, s.n_star).unwrap();
    let q = c.sequential.ok().expect("sequential");
    assert!(close(q.ci_low, rel.estimate - half, 1e-12), "{q:?}");
    assert!(close(q.ci_high, rel.estimate + half, 1e-12), "{q:?}");
    assert!(close(q.p_value, p, 1e-12), "{q:?} vs p {p}");
}

fn the_issue_case() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(GBSTATS_CASES);
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == ISSUE_CASE)
        .expect("the issue's case in gbstats-cases.json")
        .clone()
}

#[test]
fn the_issue_case_decides_on_the_gbstats_cuped_lift() {
    let case = the_issue_case();
    let arm = |a: &Value| {
        let f = |k: &str| a[k].as_f64().unwrap();
        (
            a["n"].as_i64().unwrap(),
            sums(
                a["n"].as_i64().unwrap(),
                f("y_sum"),
                f("y_sum_sq"),
                f("x_sum"),
                f("x_sum_sq"),
                f("xy_sum"),
            ),
        )
    };
    let ((nc, sc), (nt, st)) = (
        arm(&case["input"]["control"]),
        arm(&case["input"]["treatment"]),
    );
    let info = MetricInfo {
        name: "m".into(),
        value_events: (nc + nt) as u64,
        conversion_events: 0,
        covariate_events: (nc + nt) as u64,
    };
    let s = Settings::default();
    let r = model::build(&experiment([nc, nt], info, [sc.clone(), st.clone()]), &s, 0);
    let c = &r.metrics[0].comparisons[0];
    assert!(c.cuped_adjusted);
    let rel = *c.relative.ok().expect("relative lift");

    // abmesh_stats::cuped_lift on the same sums, as `abmesh stats` reads
    // them...
    let input = |a: &Value, g: &'static str| {
        let f = |k: &str| a[k].as_f64().unwrap();
        comoments_from_sums(
            g,
            a["n"].as_u64().unwrap(),
            f("y_sum"),
            f("y_sum_sq"),
            f("x_sum"),
            f("x_sum_sq"),
            f("xy_sum"),
        )
        .unwrap()
    };
    let want = cuped_lift(
        &input(&case["input"]["control"], "control"),
        &input(&case["input"]["treatment"], "treatment"),
        0.05,
        true,
    )
    .unwrap();
    assert_interval_is(&rel, &want);
    // ... and gbstats 0.8.0's RegressionAdjustedStatistic (README rule:
    // relative error ≤ 1e-6).
    let gb = &case["expected"];
    for (k, g) in [
        ("estimate", rel.estimate),
        ("se", rel.se),
        ("ci_low", rel.ci_low),
        ("ci_high", rel.ci_high),
    ] {
        let w = gb[k].as_f64().unwrap();
        assert!(
            close(g, w, 1e-6 * w.abs()),
            "{k}: report {g} vs gbstats {w}"
        );
    }
    assert_sequence_on(c, &rel, (nc + nt) as f64, &s);

    // The unadjusted figures stay visible, and they are the delta-method
    // lift of the same users: different, and wider.
    let u = c.unadjusted.as_ref().expect("unadjusted figures");
    let plain = *u.relative.ok().unwrap();
    let delta = relative_lift(&moments_of(nc, &sc), &moments_of(nt, &st), 0.05).unwrap();
    assert!(
        close(plain.estimate, delta.lift, 1e-12),
        "{plain:?} {delta:?}"
    );
    assert!(close(plain.ci_low, delta.ci_low, 1e-12));
    assert!(
        (plain.estimate - rel.estimate).abs() > 1e-4,
        "adjusted {} vs unadjusted {}",
        rel.estimate,
        plain.estimate
    );
    let ratio = (rel.ci_high - rel.ci_low) / (plain.ci_high - plain.ci_low);
    assert!(ratio < 0.8, "CUPED interval / unadjusted: {ratio}");
    let (q, uq) = (c.sequential.ok().unwrap(), u.sequential.ok().unwrap());
    assert!(
        q.ci_high - q.ci_low < 0.8 * (uq.ci_high - uq.ci_low),
        "{q:?} {uq:?}"
    );
    // Variance reduction ≈ ρ² = 0.49.
    let cu = c.cuped.as_ref().unwrap().ok().unwrap();
    assert!(
        close(cu.variance_reduction, want.variance_reduction, 1e-12)
            && (0.44..0.54).contains(&cu.variance_reduction),
        "{cu:?}"
    );
    eprintln!(
        "report (CUPED) {:.6} [{:.6}, {:.6}]; gbstats {:.6} [{:.6}, {:.6}]; unadjusted {:.6} [{:.6}, {:.6}]; variance cut {:.3}",
        rel.estimate,
        rel.ci_low,
        rel.ci_high,
        gb["estimate"].as_f64().unwrap(),
        gb["ci_low"].as_f64().unwrap(),
        gb["ci_high"].as_f64().unwrap(),
        plain.estimate,
        plain.ci_low,
        plain.ci_high,
        cu.variance_reduction
    );

    // The decision reads the adjusted look and says so; JSON, text and
    // HTML say the lift is adjusted and keep the unadjusted one.
    assert!(
        r.decision.reason.contains("CUPED-adjusted"),
        "{}",
        r.decision.reason
    );
    assert!(
        r.decision.reason.contains(&model::pct(rel.estimate)),
        "{}",
        r.decision.reason
    );
    let json = serde_json::to_value(&r).unwrap();
    let jc = &json["metrics"][0]["comparisons"][0];
    assert_eq!(jc["cuped_adjusted"], true);
    assert_eq!(jc["relative"]["estimate"].as_f64(), Some(rel.estimate));
    assert_eq!(
        jc["unadjusted"]["relative"]["estimate"].as_f64(),
        Some(plain.estimate)
    );
    assert!(jc["unadjusted"]["sequential"]["ci_low"].is_f64());
    let txt = text::render(&r);
    assert!(
        txt.contains(&format!("lift {} CUPED-adjusted", model::pct(rel.estimate)))
            && txt.contains(&format!("unadjusted lift {}", model::pct(plain.estimate)))
            && txt.contains("variance cut 4"),
        "{txt}"
    );
    let page = html::report_page(&r);
    assert!(page.contains("CUPED-adjusted; unadjusted"), "{page}");
}

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

fn t(s: &str) -> Text<'_> {
    Text(Cow::Borrowed(s))
}

/// Through the engine: `users` users split 50/50, metric "m" with a
/// covariate at correlation 0.7 (y = 10(1 + lift) + 3z, x = 10 + 3(0.7z +
/// 0.71w)) and metric "plain", the same values without a covariate.
fn engine_report(users: usize, lift: f64, seed: u64) -> (ExperimentData, model::Report) {
    const CONFIG: &str = r#"{"experiments":[{"name":"exp","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}]}]}"#;
    let defs = Arc::new(Definitions::from_json(CONFIG.as_bytes()).unwrap());
    let mut e = Engine::new(Some(defs), EngineOptions::default());
    let mut rng = Rng(seed);
    let names: Vec<String> = (0..users).map(|u| format!("u{u}")).collect();
    let variant: Vec<u32> = (0..users).map(|_| u32::from(rng.unit() < 0.5)).collect();
    e.apply_exposures(&ExposureBatch {
        instance: t("sim"),
        seq: 1,
        dropped: 0,
        experiments: vec![BatchExperiment {
            name: t("exp"),
            variants: vec![t("control"), t("treatment")],
        }],
        exposures: names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                ExposureRow(
                    1_777_636_800_000 + (i as i64) * 1000,
                    0,
                    variant[i],
                    t(n),
                    0,
                )
            })
            .collect(),
        config_id: None,
        config: None,
        health: Vec::new(),
    });
    let rho: f64 = 0.7;
    let mut events = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let (z, w) = (rng.normal(), rng.normal());
        let y = 10.0 * (1.0 + lift * f64::from(variant[i])) + 3.0 * z;
        let x = 10.0 + 3.0 * (rho * z + (1.0 - rho * rho).sqrt() * w);
        for (metric, covariate) in [("m", Some(Finite(x))), ("plain", None)] {
            events.push(Outcome {
                experiment: None,
                user: t(n),
                metric: t(metric),
                value: Some(Finite(y)),
                covariate,
                timestamp: None,
                id: None,
                segments: None,
            });
        }
    }
    e.apply_outcomes(&events);
    let agg = e.aggregates();
    let d = data::extract(&agg.lock(), "exp", true).unwrap();
    let r = model::build(&d, &Settings::default(), 0);
    (d, r)
}

#[test]
fn engine_aggregates_with_covariates_decide_on_cuped_lift_and_without_are_unchanged() {
    let (d, r) = engine_report(8000, 0.01, 14);
    let s = Settings::default();
    let (nc, nt) = (d.users[0], d.users[1]);
    let m = r.metrics.iter().find(|m| m.name == "m").unwrap();
    let md = d.metrics.iter().find(|m| m.info.name == "m").unwrap();
    let c = &m.comparisons[0];
    assert!(m.has_covariate && c.cuped_adjusted);
    let (a, b) = (comoments_of(nc, &md.sums[0]), comoments_of(nt, &md.sums[1]));
    let want = cuped_lift(&a, &b, s.alpha, true).unwrap();
    let rel = *c.relative.ok().unwrap();
    assert_interval_is(&rel, &want);
    assert_sequence_on(c, &rel, (nc + nt) as f64, &s);
    // gbstats 0.8.0 (TwoSidedTTest, relative, of RegressionAdjustedStatistic)
    // on these sums (3 986 / 4 014 users), computed once with
    // /tmp/gbstats-venv: estimate, se, ci_low, ci_high.
    let gbstats = [
        0.005_546_038_187_590_745_6,
        0.004_769_884_377_253_006,
        -0.003_804_178_443_388_304_4,
        0.014_896_254_818_569_796,
    ];
    assert_eq!(
        (nc, nt),
        (3986, 4014),
        "the seed's split, as gbstats saw it"
    );
    for (g, w) in [rel.estimate, rel.se, rel.ci_low, rel.ci_high]
        .into_iter()
        .zip(gbstats)
    {
        assert!(close(g, w, 1e-6 * w.abs()), "report {g} vs gbstats {w}");
    }
    let plain = *c.unadjusted.as_ref().unwrap().relative.ok().unwrap();
    assert!(
        (plain.estimate - rel.estimate).abs() > 1e-5,
        "{plain:?} vs {rel:?}"
    );
    assert!(rel.ci_high - rel.ci_low < 0.8 * (plain.ci_high - plain.ci_low));
    // The chart is adjusted too, and ends at the current result.
    let last = c.series.last().expect("chart points");
    let q = c.sequential.ok().unwrap();
    assert!(close(last.lift, rel.estimate, 1e-12), "{last:?} vs {rel:?}");
    assert!(close(last.seq_low, q.ci_low, 1e-12) && close(last.seq_high, q.ci_high, 1e-12));
    eprintln!(
        "engine: n {nc}/{nt}, CUPED {:.6} [{:.6}, {:.6}], unadjusted {:.6} [{:.6}, {:.6}], theta {:.4}",
        rel.estimate, rel.ci_low, rel.ci_high, plain.estimate, plain.ci_low, plain.ci_high, want.theta
    );

    // Without covariates: the delta-method lift on the same values, as
    // before, and nothing says it is adjusted.
    let m = r.metrics.iter().find(|m| m.name == "plain").unwrap();
    let md = d.metrics.iter().find(|m| m.info.name == "plain").unwrap();
    let c = &m.comparisons[0];
    assert!(!m.has_covariate && !c.cuped_adjusted && c.unadjusted.is_none());
    let delta = relative_lift(
        &moments_of(nc, &md.sums[0]),
        &moments_of(nt, &md.sums[1]),
        s.alpha,
    )
    .unwrap();
    let rel2 = *c.relative.ok().unwrap();
    assert_eq!(
        (rel2.estimate, rel2.se, rel2.ci_low, rel2.ci_high),
        (delta.lift, delta.se, delta.ci_low, delta.ci_high)
    );
    assert!(close(rel2.estimate, plain.estimate, 1e-12));
    assert_sequence_on(c, &rel2, (nc + nt) as f64, &s);
}

/// A negative baseline: the report's lift divides by |ȳ_c| (−10 → −9 is
/// +10 %), `cuped_lift` by the signed ȳ_c; the report flips it, so the
/// adjusted and unadjusted lifts agree in sign.
#[test]
fn a_negative_baseline_keeps_the_report_sign_convention() {
    let (d, _) = engine_report(4000, 0.05, 3);
    let md = &d.metrics.iter().find(|m| m.info.name == "m").unwrap();
    // y → −y (and x with it, so θ's sign stays): sums of −y, (−y)², ...
    let neg = |s: &MetricSums| {
        sums(
            s.converted,
            -s.y.value(),
            s.y2.value(),
            -s.x.value(),
            s.x2.value(),
            s.xy.value(),
        )
    };
    let info = md.info.clone();
    let (nc, nt) = (d.users[0], d.users[1]);
    let r = model::build(
        &experiment([nc, nt], info, [neg(&md.sums[0]), neg(&md.sums[1])]),
        &Settings::default(),
        0,
    );
    let c = &r.metrics[0].comparisons[0];
    let rel = *c.relative.ok().unwrap();
    let plain = *c.unadjusted.as_ref().unwrap().relative.ok().unwrap();
    // Both lifts are negative: −10 → −10.5 is worse.
    assert!(
        rel.estimate < 0.0 && plain.estimate < 0.0,
        "{rel:?} {plain:?}"
    );
    assert!(rel.ci_low < rel.estimate && rel.estimate < rel.ci_high);
    let (a, b) = (
        comoments_of(nc, &neg(&md.sums[0])),
        comoments_of(nt, &neg(&md.sums[1])),
    );
    let signed = cuped_lift(&a, &b, 0.05, true).unwrap();
    assert!(close(rel.estimate, -signed.estimate, 1e-12));
    assert!(close(rel.ci_low, -signed.ci_high, 1e-12));
    assert!(close(rel.se, signed.se, 1e-15));
}

/// Conversions: the relative lift's se is the delta method on p(1 − p), the
/// sequential interval is built on that se, and the absolute Wald interval
/// uses the same p(1 − p) (not p(1 − p)·n/(n − 1)).
#[test]
fn conversions_use_p_times_one_minus_p_everywhere() {
    let (nc, xc, nt, xt) = (200i64, 30i64, 180i64, 45i64);
    let conv = |n: i64| sums(n, n as f64, n as f64, 0.0, 0.0, 0.0);
    let info = MetricInfo {
        name: "m".into(),
        value_events: 0,
        conversion_events: (xc + xt) as u64,
        covariate_events: 0,
    };
    let s = Settings::default();
    let r = model::build(&experiment([nc, nt], info, [conv(xc), conv(xt)]), &s, 0);
    let m = &r.metrics[0];
    assert_eq!(m.kind, "conversion");
    let c = &m.comparisons[0];
    assert!(!c.cuped_adjusted);
    let (pc, pt) = (xc as f64 / nc as f64, xt as f64 / nt as f64);
    let (vc, vt) = (pc * (1.0 - pc), pt * (1.0 - pt));
    let (ncf, ntf) = (nc as f64, nt as f64);
    // Delta method: se² = V_t/(n_t p_c²) + p_t² V_c/(n_c p_c⁴).
    let se_rel = (vt / (ntf * pc * pc) + pt * pt * vc / (ncf * pc.powi(4))).sqrt();
    let rel = *c.relative.ok().unwrap();
    assert!(close(rel.estimate, (pt - pc) / pc, 1e-15));
    assert!(close(rel.se, se_rel, 1e-15), "{} vs {se_rel}", rel.se);
    // The ddof-1 variance would give an se larger by about √(n/(n − 1)):
    // far outside the tolerance above.
    let se_ddof1 = (vt * ntf / (ntf - 1.0) / (ntf * pc * pc)
        + pt * pt * vc * ncf / (ncf - 1.0) / (ncf * pc.powi(4)))
    .sqrt();
    assert!((se_ddof1 - se_rel) / se_rel > 1e-3);
    assert_sequence_on(c, &rel, (nc + nt) as f64, &s);
    let abs = c.absolute.ok().unwrap();
    assert!(
        close(abs.se, (vc / ncf + vt / ntf).sqrt(), 1e-15),
        "{abs:?}"
    );
}
