//! A report is computed from the aggregates, never from events: its time
//! does not grow with the number of events. Checked here on an unoptimized
//! build with a month of minute buckets (the real figure, on a release
//! build after 10 million events over HTTP, is in benches/ingest).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use abmesh_sidecar::aggregate::{Definitions, Engine, EngineOptions};
use abmesh_sidecar::events::exposure::{BatchExperiment, ExposureBatch, ExposureRow};
use abmesh_sidecar::events::fields::{Finite, Text};
use abmesh_sidecar::events::Outcome;
use abmesh_sidecar::report::{self, Settings};

const CONFIG: &str = r#"{"experiments":[{"name":"exp","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}]}]}"#;

fn t(s: &str) -> Text<'_> {
    Text(Cow::Borrowed(s))
}

/// The fastest of a few runs (the machine is shared).
fn time_report(e: &Engine) -> Duration {
    let agg = e.aggregates();
    (0..7)
        .map(|_| {
            let t0 = Instant::now();
            let r = report::report(&agg, "exp", &Settings::default()).unwrap();
            assert_eq!(r.metrics.len(), 3);
            t0.elapsed()
        })
        .min()
        .unwrap()
}

/// `n` events of three metrics on random users.
fn feed(e: &mut Engine, names: &[String], n: usize, seed: u64) {
    const METRICS: [&str; 3] = ["click", "purchase", "revenue"];
    let mut x = seed;
    let events: Vec<Outcome> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let m = METRICS[(x % 3) as usize];
            Outcome {
                experiment: None,
                user: t(&names[(x >> 8) as usize % names.len()]),
                metric: t(m),
                value: (m != "click").then_some(Finite(((x >> 20) % 1000) as f64 / 10.0)),
                covariate: None,
                timestamp: None,
                id: None,
            }
        })
        .collect();
    e.apply_outcomes(&events);
}

#[test]
fn report_time_does_not_grow_with_events() {
    let defs = Arc::new(Definitions::from_json(CONFIG.as_bytes()).unwrap());
    let mut e = Engine::new(Some(defs), EngineOptions::default());
    let users = 50_000usize;
    let names: Vec<String> = (0..users).map(|u| format!("user-{u}")).collect();
    // Exposures spread over 30 days: ~43 000 minute buckets in all.
    let rows: Vec<ExposureRow> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            ExposureRow(
                1_777_636_800_000 + (i as i64 * 51_840),
                0,
                (i % 2) as u32,
                t(n),
            )
        })
        .collect();
    e.apply_exposures(&ExposureBatch {
        instance: t("x"),
        seq: 1,
        dropped: 0,
        experiments: vec![BatchExperiment {
            name: t("exp"),
            variants: vec![t("control"), t("treatment")],
        }],
        exposures: rows,
    });
    feed(&mut e, &names, 10_000, 1);
    let small = time_report(&e);
    for round in 0..10 {
        feed(&mut e, &names, 100_000, 100 + round);
    }
    let large = time_report(&e);
    eprintln!("report after 10k events: {small:?}; after 1.01M events: {large:?}");
    assert!(
        large < small * 3 + Duration::from_millis(20),
        "report time grew with events: {small:?} → {large:?}"
    );
    assert!(
        large < Duration::from_millis(200),
        "{large:?} (unoptimized build)"
    );
}
