//! A bandit experiment through the engine: period 0 starts with the first
//! exposures, a due update computes weights from the aggregates, its
//! record starts period 1 (once: a second record for the same period is a
//! no-op), the batch answer carries the allocation, rows tagged with the
//! period land in per-period cells, and the report's adaptive analysis
//! equals abmesh-stats' stratified estimate on the same raw numbers. The
//! periods survive a snapshot.

use std::borrow::Cow;
use std::sync::Arc;

use abmesh_eval::aggregate::bandit::{due_updates, BanditRecord};
use abmesh_eval::aggregate::{Applied, Definitions, Engine, EngineOptions};
use abmesh_eval::ingest::exposure::{BatchExperiment, ExposureBatch, ExposureRow};
use abmesh_eval::ingest::fields::Text;
use abmesh_eval::ingest::Outcome;
use abmesh_eval::report::{self, Settings, Stat};
use abmesh_eval::RecordKind;
use abmesh_stats::{relative_lift, stratified, PeriodArm, PeriodPair};

const CONFIG: &str = r#"{"experiments":[{"name":"exp","variants":[{"name":"control","weight":1},{"name":"a","weight":1},{"name":"b","weight":1}],
  "bandit":{"metric":"buy","update_every_s":60,"min_users_per_variant":50,"explore_floor_percent":5}}]}"#;
const T0: i64 = 1_777_636_800_000;

fn t(s: &str) -> Text<'_> {
    Text(Cow::Borrowed(s))
}

/// Exposes `users[i]` in variant `variants[i]` with `period`, and gives
/// each one a `buy` conversion when `converts(i)`.
fn feed(
    e: &mut Engine,
    seq: u64,
    t_ms: i64,
    users: &[String],
    variants: &[u32],
    period: u32,
    converts: impl Fn(usize) -> bool,
) -> Applied {
    let rows = users
        .iter()
        .zip(variants)
        .map(|(u, &v)| ExposureRow(t_ms, 0, v, t(u), period))
        .collect();
    let answer = e.apply_batch(
        &ExposureBatch {
            instance: t("filter-1"),
            seq,
            dropped: 0,
            experiments: vec![BatchExperiment {
                name: t("exp"),
                variants: vec![t("control"), t("a"), t("b")],
            }],
            exposures: rows,
            config_id: None,
            config: None,
            health: Vec::new(),
        },
        t_ms,
        seq,
    );
    let events: Vec<Outcome> = users
        .iter()
        .enumerate()
        .filter(|(i, _)| converts(*i))
        .map(|(_, u)| Outcome {
            experiment: None,
            user: t(u),
            metric: t("buy"),
            value: None,
            covariate: None,
            timestamp: None,
            id: None,
            segments: None,
        })
        .collect();
    e.apply_outcomes(&events);
    answer
}

fn apply_record(e: &mut Engine, rec: &BanditRecord, lsn: u64) -> Applied {
    let payload = serde_json::to_vec(rec).unwrap();
    e.apply_record(RecordKind::Bandit.into(), lsn, rec.updated_at_ms, &payload)
}

#[test]
fn a_bandit_moves_weights_to_the_better_arm_and_reports_per_period() {
    let defs = Arc::new(Definitions::from_json(CONFIG.as_bytes()).unwrap());
    let mut e = Engine::new(Some(defs), EngineOptions::default());
    // Period 0: 300 users per variant; b converts at 30 %, a and the
    // control at 10 % (every 10th / every 3rd+ user).
    let users: Vec<String> = (0..900).map(|i| format!("u{i}")).collect();
    let variants: Vec<u32> = (0..900).map(|i| (i % 3) as u32).collect();
    let conv0 = |i: usize| {
        if i % 3 == 2 {
            i % 10 < 3
        } else {
            i.is_multiple_of(10)
        }
    };
    let answer = feed(&mut e, 1, T0, &users, &variants, 0, conv0);
    let Applied::Exposures { allocations, .. } = answer else {
        panic!("{answer:?}")
    };
    assert!(allocations.is_empty(), "period 0 sends no allocation");

    // Not due before update_every_s.
    assert!(due_updates(&e.aggregates().lock(), T0 + 59_000).is_empty());
    let due = due_updates(&e.aggregates().lock(), T0 + 61_000);
    assert_eq!(due.len(), 1, "{due:?}");
    let rec = &due[0];
    assert_eq!((rec.experiment.as_str(), rec.period), ("exp", 1));
    let w = |v: &str| rec.weights[v];
    assert!(
        (w("control") - 1.0 / 3.0).abs() < 1e-12,
        "the control keeps its share"
    );
    assert!(w("b") > 0.6 && w("a") >= 0.05 - 1e-12, "{:?}", rec.weights);
    assert!((rec.weights.values().sum::<f64>() - 1.0).abs() < 1e-9);

    // The record starts period 1, once.
    let a = apply_record(&mut e, rec, 10);
    assert!(
        matches!(
            a,
            Applied::Bandit {
                changed: true,
                period: 1,
                ..
            }
        ),
        "{a:?}"
    );
    let again = apply_record(&mut e, rec, 11);
    assert!(
        matches!(again, Applied::Bandit { changed: false, .. }),
        "{again:?}"
    );
    assert!(due_updates(&e.aggregates().lock(), T0 + 62_000).is_empty());

    // Period 1: 900 new users split by the new weights; every arm now
    // converts at 20 % (a time effect the pooled numbers would confuse
    // with b's lead).
    let users1: Vec<String> = (0..900).map(|i| format!("v{i}")).collect();
    // Assigned as the filter would under period 1's allocation, so the
    // engine's check of every row against the assignment core passes.
    let defs = Definitions::from_json(CONFIG.as_bytes()).unwrap();
    let w1: Vec<(String, f64)> = rec.weights.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let alloc = defs.allocation(0, 1, &w1).unwrap();
    let mut buf = defs.decisions();
    let variants1: Vec<u32> = users1
        .iter()
        .map(
            |u| match defs.assign_with(u, 0, &alloc, &mut buf).unwrap() {
                "control" => 0,
                "a" => 1,
                _ => 2,
            },
        )
        .collect();
    let conv1 = |i: usize| i.is_multiple_of(5);
    let mismatches = |e: &Engine| e.aggregates().lock().experiment("exp").unwrap().mismatches;
    // (Period 0's rows above were split by index, not by the core.)
    let before = mismatches(&e);
    let answer = feed(&mut e, 2, T0 + 62_000, &users1, &variants1, 1, conv1);
    let Applied::Exposures { allocations, .. } = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(allocations.len(), 1);
    assert_eq!(allocations[0].period, 1);
    for (v, w) in &rec.weights {
        assert!((allocations[0].weights[v] - w).abs() < 1e-12, "{v}");
    }

    assert_eq!(
        mismatches(&e) - before,
        0,
        "rows tagged with period 1 are checked against period 1's allocation"
    );
    let settings = Settings::default();
    let r = report::report(&e.aggregates(), "exp", &settings).unwrap();
    let b = r.bandit.as_ref().expect("a bandit section");
    assert!(b.adaptive);
    assert_eq!(
        (b.period, b.history.len(), b.metric.as_str()),
        (1, 2, "buy")
    );
    assert_eq!(b.history[0].users["b"], 300);
    assert_eq!(
        b.history[1].users.values().sum::<i64>(),
        900,
        "{:?}",
        b.history[1].users
    );
    let srm = r.srm.ok().expect("an SRM check");
    assert!(srm.by_period && srm.df == 4, "{srm:?}");
    assert_eq!(r.primary_metric.as_deref(), Some("buy"));

    // The report's lift of b equals the stratified estimate computed here
    // from the raw numbers.
    let arm = |n: usize, c: usize| {
        let p = c as f64 / n as f64;
        PeriodArm {
            n: n as u64,
            mean: p,
            variance: p * (1.0 - p),
        }
    };
    let count = |vs: &[u32], conv: &dyn Fn(usize) -> bool, v: u32| {
        let n = vs.iter().filter(|&&x| x == v).count();
        let c = (0..vs.len()).filter(|&i| vs[i] == v && conv(i)).count();
        (n, c)
    };
    let pair = |vs: &[u32], conv: &dyn Fn(usize) -> bool| {
        let ((nc, cc), (nb, cb)) = (count(vs, conv, 0), count(vs, conv, 2));
        PeriodPair {
            control: arm(nc, cc),
            treatment: arm(nb, cb),
            period_users: vs.len() as u64,
        }
    };
    let s = stratified(&[pair(&variants, &conv0), pair(&variants1, &conv1)]).unwrap();
    let want = relative_lift(&s.control, &s.treatment, settings.alpha).unwrap();
    let m = r.metrics.iter().find(|m| m.name == "buy").unwrap();
    let cmp = m.comparisons.iter().find(|c| c.variant == "b").unwrap();
    assert_eq!(cmp.test, "stratified_welch");
    let Stat::Ok(got) = &cmp.relative else {
        panic!("{:?}", cmp.relative)
    };
    assert!(
        (got.estimate - want.lift).abs() < 1e-12,
        "{} vs {}",
        got.estimate,
        want.lift
    );
    assert!((got.ci_low - want.ci_low).abs() < 1e-12);
    // Pooled, b would look better than it is per period: (90 + 20 % of
    // its period-1 users) / all its users vs the control's.
    assert!(got.estimate > 0.0);

    // People see it too.
    let text = report::text::render(&r);
    assert!(text.contains("bandit on buy: period 1"), "{text}");
    assert!(
        text.contains("each bandit period against its weights"),
        "{text}"
    );
    let html = report::html::report_page(&r);
    assert!(
        html.contains("id=bandit") && html.contains("weights-chart"),
        "no bandit section"
    );

    // A snapshot keeps the periods and the per-period cells.
    let mut bytes = Vec::new();
    e.encode_state(&mut bytes).unwrap();
    let defs = Arc::new(Definitions::from_json(CONFIG.as_bytes()).unwrap());
    let restored = Engine::restore(Some(&bytes), Some(defs), EngineOptions::default()).unwrap();
    let r2 = report::report(&restored.aggregates(), "exp", &settings).unwrap();
    assert_eq!(r2.bandit, r.bandit);
    assert_eq!(r2.metrics, r.metrics);

    // A period this state never started counts in period 0 and as a
    // mismatch: made-up periods cannot grow the per-period cells.
    let before = mismatches(&e);
    let ghosts: Vec<String> = (0..3).map(|i| format!("ghost-{i}")).collect();
    for (k, p) in [99u32, 7, u32::MAX].into_iter().enumerate() {
        feed(
            &mut e,
            10 + k as u64,
            T0 + 63_000,
            &ghosts[k..k + 1],
            &[2],
            p,
            |_| false,
        );
    }
    assert_eq!(mismatches(&e) - before, 3);
    let r3 = report::report(&e.aggregates(), "exp", &settings).unwrap();
    let b3 = r3.bandit.unwrap();
    assert_eq!(b3.history.len(), 2);
    assert_eq!(b3.history[0].users["b"], 303, "ghosts land in period 0");
    let agg = e.aggregates();
    let agg = agg.lock();
    let cells = &agg.experiment("exp").unwrap().cells;
    assert!(cells.iter().all(|c| c.periods.keys().all(|&p| p == 1)));
}
