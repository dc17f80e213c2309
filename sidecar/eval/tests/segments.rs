//! Segmented reports: users' `segments` from outcome events break the
//! primary metric down by dimension, with Holm and BH across segments; a
//! segment with an effect is found and one without is not; small segments
//! are flagged; a user's value is the same whatever order conflicting
//! events arrive in; segments survive snapshots and merges; malformed
//! segments are refused naming the field.

use std::borrow::Cow;
use std::sync::Arc;

use abmesh_eval::aggregate::{Definitions, Engine, EngineOptions};
use abmesh_eval::ingest::exposure::{BatchExperiment, ExposureBatch, ExposureRow};
use abmesh_eval::ingest::fields::Text;
use abmesh_eval::ingest::outcome::SegmentValues;
use abmesh_eval::ingest::{parse_outcomes, Outcome};
use abmesh_eval::report::{self, Report, Settings, Stat};

const CONFIG: &str = r#"{"experiments":[{"name":"exp","variants":[{"name":"control","weight":1},{"name":"treatment","weight":1}]}]}"#;

fn t(s: &str) -> Text<'_> {
    Text(Cow::Borrowed(s))
}

fn engine() -> Engine {
    let defs = Arc::new(Definitions::from_json(CONFIG.as_bytes()).unwrap());
    Engine::new(Some(defs), EngineOptions::default())
}

fn expose(e: &mut Engine, users: &[(String, u32)]) {
    let rows = users
        .iter()
        .map(|(u, v)| ExposureRow(1_777_636_800_000, 0, *v, t(u), 0))
        .collect();
    e.apply_exposures(&ExposureBatch {
        instance: t("f"),
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
}

fn event<'a>(user: &'a str, metric: &'a str, segments: &[(&'a str, &'a str)]) -> Outcome<'a> {
    Outcome {
        experiment: None,
        user: t(user),
        metric: t(metric),
        value: None,
        covariate: None,
        timestamp: None,
        id: None,
        segments: (!segments.is_empty())
            .then(|| SegmentValues(segments.iter().map(|&(d, v)| (t(d), t(v))).collect())),
    }
}

/// 4000 users per platform plus 20 on the web, alternating variants; on
/// ios the treatment converts at 15 % against 10 %, elsewhere both at 10 %
/// (deterministic: user i converts when (i / 2) % 100 < rate).
fn populated() -> Engine {
    let mut e = engine();
    let mut users = Vec::new();
    let mut events_owned: Vec<(String, &str, bool)> = Vec::new();
    for (platform, n) in [("ios", 4000), ("android", 4000), ("web", 20)] {
        for i in 0..n {
            let name = format!("{platform}-{i}");
            let variant = (i % 2) as u32;
            let rate = if platform == "ios" && variant == 1 {
                15
            } else {
                10
            };
            let converts = (i / 2) % 100 < rate;
            users.push((name.clone(), variant));
            events_owned.push((name, platform, converts));
        }
    }
    expose(&mut e, &users);
    let mut events = Vec::new();
    for (name, platform, converts) in &events_owned {
        events.push(event(name, "visit", &[("platform", platform)]));
        if *converts {
            events.push(event(name, "buy", &[]));
        }
    }
    e.apply_outcomes(&events);
    e
}

fn report_of(e: &Engine) -> Report {
    report::report(&e.aggregates(), "exp", &Settings::default()).unwrap()
}

#[test]
fn segments_find_the_effect_where_it_is_with_adjusted_p_values() {
    let r = report_of(&populated());
    assert_eq!(r.primary_metric.as_deref(), Some("buy"));
    assert_eq!(r.segments.len(), 1);
    let d = &r.segments[0];
    assert_eq!(
        (d.dimension.as_str(), d.metric.as_str()),
        ("platform", "buy")
    );
    let row = |v: &str| d.segments.iter().find(|s| s.value == v).unwrap();
    let (ios, android, web) = (row("ios"), row("android"), row("web"));
    assert_eq!(ios.users["control"] + ios.users["treatment"], 4000);
    assert_eq!(web.users["treatment"], 10);
    let c = &ios.comparisons[0];
    let Stat::Ok(lift) = &c.relative else {
        panic!("{:?}", c.relative)
    };
    assert!(
        (lift.estimate - 0.5).abs() < 1e-9,
        "ios lift {}",
        lift.estimate
    );
    assert!(c.p_value_holm.unwrap() < 0.01, "{c:?}");
    let a = &android.comparisons[0];
    assert!(a.p_value.unwrap() > 0.5, "{a:?}");
    // Holm ≥ BH ≥ raw, over the dimension's comparisons.
    for s in &d.segments {
        for c in &s.comparisons {
            if let (Some(p), Some(h), Some(b)) = (c.p_value, c.p_value_holm, c.p_value_bh) {
                assert!(h >= b - 1e-15 && b >= p - 1e-15, "{c:?}");
            }
        }
    }
    assert!(web.too_small && !ios.too_small);
    assert!(
        d.warnings[0].contains("1 of 3 segments"),
        "{:?}",
        d.warnings
    );
    let text = report::text::render(&r);
    assert!(text.contains("buy by platform"), "{text}");
    assert!(report::html::report_page(&r).contains("id=\"segments-platform\""));
}

#[test]
fn conflicting_values_resolve_the_same_in_any_order() {
    let users = [("u1".to_owned(), 0), ("u2".to_owned(), 1)];
    let run = |first: &str, second: &str| {
        let mut e = engine();
        e.apply_outcomes(&[event("u1", "buy", &[("platform", first)])]);
        expose(&mut e, &users);
        e.apply_outcomes(&[event("u1", "visit", &[("platform", second)])]);
        e.apply_outcomes(&[event("u2", "visit", &[("platform", "ios")])]);
        let agg = e.aggregates();
        let agg = agg.lock();
        let conflicts = agg.segments.conflicts;
        drop(agg);
        (report_of(&e).segments, conflicts)
    };
    let (a, ca) = run("ios", "android");
    let (b, cb) = run("android", "ios");
    assert_eq!(a, b);
    assert_eq!((ca, cb), (1, 1));
    let values: Vec<(&str, u64)> = a[0]
        .segments
        .iter()
        .map(|s| (s.value.as_str(), s.users.values().sum()))
        .collect();
    // u1 is "android" (first in byte order), u2 "ios"; u1's conversion,
    // which came before its exposure, counts in its segment.
    assert_eq!(values, [("android", 1), ("ios", 1)]);
}

#[test]
fn segments_survive_snapshots_and_merges() {
    let e = populated();
    let want = report_of(&e).segments;
    let mut bytes = Vec::new();
    e.encode_state(&mut bytes).unwrap();
    let defs = Arc::new(Definitions::from_json(CONFIG.as_bytes()).unwrap());
    let restored = Engine::restore(Some(&bytes), Some(defs), EngineOptions::default()).unwrap();
    assert_eq!(report_of(&restored).segments, want);

    // A merge into an engine that has seen other dimensions first (so the
    // ids differ) gives the same segments.
    let mut other = engine();
    other.apply_outcomes(&[event(
        "z",
        "visit",
        &[("country", "de"), ("platform", "web")],
    )]);
    let mut exported = Vec::new();
    e.export_state(abmesh_common::SidecarId(7), 9, &mut exported)
        .unwrap();
    other.merge_state(&exported).unwrap();
    assert_eq!(report_of(&other).segments, want);
}

#[test]
fn malformed_segments_are_refused_naming_the_field() {
    for (body, needle) in [
        (
            r#"[{"user":"u","metric":"m","segments":{"Bad Name":"x"}}]"#,
            "dimension",
        ),
        (
            r#"[{"user":"u","metric":"m","segments":{"p":""}}]"#,
            "1 to 64 bytes",
        ),
        (
            r#"[{"user":"u","metric":"m","segments":{"p":"a","p":"b"}}]"#,
            "twice",
        ),
        (
            r#"[{"user":"u","metric":"m","segments":{"p":3}}]"#,
            "string",
        ),
        (r#"[{"user":"u","metric":"m","segments":["p"]}]"#, "object"),
    ] {
        let e = parse_outcomes(body.as_bytes()).unwrap_err();
        assert!(e.path.starts_with("events[0].segments"), "{body}: {e}");
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }
    let ok = parse_outcomes(
        br#"[{"user":"u","metric":"m","segments":{"country":"de","platform":"iOS 17"}}]"#,
    )
    .unwrap();
    assert_eq!(ok[0].segments.as_ref().unwrap().0.len(), 2);
}
