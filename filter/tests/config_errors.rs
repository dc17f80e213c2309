//! Invalid configurations are refused with the offending field named.

use abmesh_filter::{ConfigError, Plan};

fn err(json: &str) -> ConfigError {
    match Plan::from_json(json.as_bytes()) {
        Ok(_) => panic!("config was accepted: {json}"),
        Err(e) => e,
    }
}

/// Asserts the error names `field` and its message contains `words`.
fn assert_refused(json: &str, field: &str, words: &str) {
    let e = err(json);
    assert_eq!(e.field(), field, "wrong field in: {e}");
    let msg = e.to_string();
    assert!(
        msg.contains(field),
        "message does not name the field: {msg}"
    );
    assert!(msg.contains(words), "message {msg:?} lacks {words:?}");
}

const TWO: &str = r#"[{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]"#;

fn exp(extra: &str) -> String {
    format!(r#"{{"experiments": [{{"name": "e", {extra} "variants": {TWO}}}]}}"#)
}

#[test]
fn accepts_minimal_config() {
    let plan = Plan::from_json(exp("").as_bytes()).unwrap();
    assert_eq!(plan.experiments().len(), 1);
    assert_eq!(plan.cluster_header(), "x-abmesh-cluster");
}

#[test]
fn unknown_fields() {
    assert_refused(
        r#"{"experiments": [], "expriments": []}"#,
        "expriments",
        "unknown field",
    );
    assert_refused(
        r#"{"experiments": [{"name": "e", "variants": [{"name": "a", "weight": 1, "clustr": "x"}]}]}"#,
        "experiments[0].variants[0].clustr",
        "unknown field",
    );
}

#[test]
fn wrong_types_and_syntax() {
    assert_refused(
        r#"{"experiments": [{"name": "e", "traffic_percent": "ten", "variants": []}]}"#,
        "experiments[0].traffic_percent",
        "invalid type",
    );
    let e = err("{not json");
    assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
    let e = err("");
    assert!(e.to_string().contains("EOF"), "{e}");
}

#[test]
fn weights_must_be_positive() {
    for w in ["0", "-1", "1e309"] {
        let json = format!(
            r#"{{"experiments": [{{"name": "e", "variants": [{{"name": "a", "weight": 1}}, {{"name": "b", "weight": {w}}}]}}]}}"#
        );
        // 1e309 overflows to a JSON parse error on that same field.
        let e = err(&json);
        assert_eq!(e.field(), "experiments[0].variants[1].weight", "{e}");
    }
    assert_refused(
        r#"{"experiments": [{"name": "e", "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 0.00001}]}]}"#,
        "experiments[0].variants[1].weight",
        "too small",
    );
}

#[test]
fn duplicate_names() {
    assert_refused(
        &format!(
            r#"{{"experiments": [{{"name": "e", "variants": {TWO}}}, {{"name": "e", "variants": {TWO}}}]}}"#
        ),
        "experiments[1].name",
        "duplicates experiment",
    );
    assert_refused(
        r#"{"experiments": [{"name": "e", "variants": [{"name": "a", "weight": 1}, {"name": "a", "weight": 1}]}]}"#,
        "experiments[0].variants[1].name",
        "duplicates variant",
    );
}

#[test]
fn overlapping_layer_ranges() {
    let json = format!(
        r#"{{"experiments": [
            {{"name": "x", "layer": {{"name": "l", "range_percent": [0, 60]}}, "variants": {TWO}}},
            {{"name": "y", "layer": {{"name": "l", "range_percent": [50, 100]}}, "variants": {TWO}}}]}}"#
    );
    assert_refused(
        &json,
        "experiments[1].layer.range_percent",
        "overlaps experiment \"x\"",
    );
    // Omitting the range means the whole layer, which overlaps too.
    let json = format!(
        r#"{{"experiments": [
            {{"name": "x", "layer": {{"name": "l"}}, "variants": {TWO}}},
            {{"name": "y", "layer": {{"name": "l"}}, "variants": {TWO}}}]}}"#
    );
    assert_refused(&json, "experiments[1].layer.range_percent", "overlaps");
    // Adjacent ranges and other layers are fine.
    let json = format!(
        r#"{{"experiments": [
            {{"name": "x", "layer": {{"name": "l", "range_percent": [0, 50]}}, "variants": {TWO}}},
            {{"name": "y", "layer": {{"name": "l", "range_percent": [50, 100]}}, "variants": {TWO}}},
            {{"name": "z", "layer": {{"name": "m"}}, "variants": {TWO}}}]}}"#
    );
    Plan::from_json(json.as_bytes()).unwrap();
    assert_refused(
        &exp(r#""layer": {"name": "l", "range_percent": [50, 50]},"#),
        "experiments[0].layer.range_percent",
        "start < end",
    );
}

#[test]
fn header_names() {
    assert_refused(
        &format!(
            r#"{{"identity": [{{"header": ""}}], "experiments": [{{"name": "e", "variants": {TWO}}}]}}"#
        ),
        "identity[0].header",
        "empty header name",
    );
    assert_refused(
        &format!(
            r#"{{"cluster_header": "bad header", "experiments": [{{"name": "e", "variants": {TWO}}}]}}"#
        ),
        "cluster_header",
        "not a valid header name",
    );
    assert_refused(
        &exp(r#""variant_header": ":path","#),
        "experiments[0].variant_header",
        "pseudo-header",
    );
    assert_refused(
        &format!(r#"{{"identity": [], "experiments": [{{"name": "e", "variants": {TWO}}}]}}"#),
        "identity",
        "at least one",
    );
    assert_refused(
        &format!(
            r#"{{"identity": [{{"cookie": "a b"}}], "experiments": [{{"name": "e", "variants": {TWO}}}]}}"#
        ),
        "identity[0].cookie",
        "cookie name",
    );
}

#[test]
fn percentages() {
    assert_refused(
        &exp(r#""traffic_percent": 101,"#),
        "experiments[0].traffic_percent",
        "between 0 and 100",
    );
    assert_refused(
        &exp(r#""traffic_percent": 12.345,"#),
        "experiments[0].traffic_percent",
        "multiple of 0.01",
    );
    Plan::from_json(exp(r#""traffic_percent": 12.34,"#).as_bytes()).unwrap();
}

#[test]
fn variants_and_references() {
    assert_refused(
        r#"{"experiments": [{"name": "e", "variants": [{"name": "a", "weight": 1}]}]}"#,
        "experiments[0].variants",
        "at least 2",
    );
    assert_refused(
        &exp(r#""control": "z","#),
        "experiments[0].control",
        "unknown variant",
    );
    assert_refused(
        &exp(r#""allowlist": {"qa-1": "nope"},"#),
        "experiments[0].allowlist.qa-1",
        "unknown variant",
    );
    assert_refused(
        r#"{"experiments": [{"name": "e", "variants": [{"name": "a", "weight": 1, "path_prefix": "/v2/"}, {"name": "b", "weight": 1}]}]}"#,
        "experiments[0].variants[0].path_prefix",
        "match.path_prefix",
    );
    assert_refused(
        r#"{"experiments": [{"name": "Bad Name", "variants": []}]}"#,
        "experiments[0].name",
        "a-z0-9_.-",
    );
    assert_refused(r#"{"experiments": []}"#, "experiments", "at least one");
    assert_refused(
        &exp(r#""match": {"methods": ["GET POST"]},"#),
        "experiments[0].match.methods[0]",
        "not an HTTP method",
    );
    assert_refused(
        &exp(r#""match": {"path_prefix": "v2"},"#),
        "experiments[0].match.path_prefix",
        "start with '/'",
    );
}

#[test]
fn variant_headers_must_be_distinct() {
    let json = format!(
        r#"{{"experiments": [
            {{"name": "x", "variant_header": "x-v", "variants": {TWO}}},
            {{"name": "y", "variant_header": "X-V", "variants": {TWO}}}]}}"#
    );
    assert_refused(
        &json,
        "experiments[1].variant_header",
        "also experiment \"x\"",
    );
}

#[test]
fn sidecar_section() {
    let with = |s: &str| {
        format!(r#"{{"sidecar": {s}, "experiments": [{{"name": "e", "variants": {TWO}}}]}}"#)
    };
    let p = Plan::from_json(with(r#"{"cluster": "abmesh_sidecar"}"#).as_bytes()).unwrap();
    let s = p.sidecar().unwrap();
    assert_eq!(
        (
            s.path.as_str(),
            s.flush_interval_ms,
            s.max_pending_exposures
        ),
        ("/v1/exposures", 1000, 10_000)
    );
    assert!(Plan::from_json(exp("").as_bytes())
        .unwrap()
        .sidecar()
        .is_none());
    assert_refused(&with(r#"{"cluster": ""}"#), "sidecar.cluster", "non-empty");
    assert_refused(&with(r#"{}"#), "sidecar", "missing field `cluster`");
    assert_refused(
        &with(r#"{"cluster": "c", "flush_interval_ms": 1}"#),
        "sidecar.flush_interval_ms",
        "between 10 and 3600000",
    );
    assert_refused(
        &with(r#"{"cluster": "c", "path": "v1"}"#),
        "sidecar.path",
        "start with '/'",
    );
    assert_refused(
        &with(r#"{"cluster": "c", "max_pending_exposures": 0}"#),
        "sidecar.max_pending_exposures",
        "between 1 and 1000000",
    );
    assert_refused(
        &with(r#"{"cluster": "c", "flush": 1}"#),
        "sidecar.flush",
        "unknown field",
    );
}

#[test]
fn trailing_bytes_after_the_object() {
    // The raw bytes are embedded verbatim in batches to the sidecar, so
    // they must be exactly one JSON object.
    let e = err(&format!("{} x", exp("")));
    assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
    assert!(e.to_string().contains("trailing"), "{e}");
    assert!(Plan::from_json(format!("{}\n  \n", exp("")).as_bytes()).is_ok());
}

fn guarded(guardrails: &str) -> String {
    exp(&format!(r#""guardrails": {guardrails},"#))
}

#[test]
fn guardrails_are_validated_and_exposed() {
    let p = Plan::from_json(
        guarded(
            r#"{"alpha": 0.05, "min_responses": 50, "error_rate": {"max_increase": 0.01},
                "p95_latency": {"max_increase_percent": 20},
                "metrics": [{"metric": "purchase", "max_decrease_percent": 5},
                            {"metric": "latency_ms:p.9-x", "max_increase_percent": 0}]}"#,
        )
        .as_bytes(),
    )
    .unwrap();
    let g = p.experiments()[0].guardrails().unwrap();
    assert_eq!((g.alpha, g.min_responses), (0.05, 50));
    assert_eq!(g.error_rate.as_ref().unwrap().max_increase, 0.01);
    assert_eq!(g.p95_latency.as_ref().unwrap().max_increase_percent, 20.0);
    assert_eq!(g.metrics.len(), 2);
    assert_eq!(g.metrics[0].max_decrease_percent, Some(5.0));
    assert_eq!(g.metrics[1].max_increase_percent, Some(0.0));

    // Defaults, and no guardrails at all.
    let p = Plan::from_json(guarded("{}").as_bytes()).unwrap();
    let g = p.experiments()[0].guardrails().unwrap();
    assert_eq!((g.alpha, g.min_responses), (0.01, 100));
    assert!(g.error_rate.is_none() && g.p95_latency.is_none() && g.metrics.is_empty());
    let p = Plan::from_json(exp("").as_bytes()).unwrap();
    assert!(p.experiments()[0].guardrails().is_none());
}

#[test]
fn guardrail_errors_name_the_field() {
    let at = "experiments[0].guardrails";
    for alpha in ["0", "-0.1", "0.51", "1"] {
        assert_refused(
            &guarded(&format!(r#"{{"alpha": {alpha}}}"#)),
            &format!("{at}.alpha"),
            "(0, 0.5]",
        );
    }
    assert!(Plan::from_json(guarded(r#"{"alpha": 0.5}"#).as_bytes()).is_ok());
    for inc in ["-0.01", "1", "1.5"] {
        assert_refused(
            &guarded(&format!(r#"{{"error_rate": {{"max_increase": {inc}}}}}"#)),
            &format!("{at}.error_rate.max_increase"),
            "[0, 1)",
        );
    }
    assert!(Plan::from_json(guarded(r#"{"error_rate": {"max_increase": 0}}"#).as_bytes()).is_ok());
    assert_refused(
        &guarded(r#"{"p95_latency": {"max_increase_percent": -1}}"#),
        &format!("{at}.p95_latency.max_increase_percent"),
        ">= 0",
    );
    assert_refused(
        &guarded(r#"{"p95_latency": {}}"#),
        &format!("{at}.p95_latency"),
        "missing field `max_increase_percent`",
    );
    assert_refused(
        &guarded(r#"{"alpah": 0.1}"#),
        &format!("{at}.alpah"),
        "unknown field",
    );
    for bad in [
        r#""""#,
        r#""has space""#,
        r#""a/b""#,
        &format!("{:?}", "m".repeat(65)),
    ] {
        assert_refused(
            &guarded(&format!(
                r#"{{"metrics": [{{"metric": "ok", "max_decrease_percent": 1}}, {{"metric": {bad}, "max_decrease_percent": 1}}]}}"#
            )),
            &format!("{at}.metrics[1].metric"),
            "A-Za-z0-9_.:-",
        );
    }
    assert_refused(
        &guarded(r#"{"metrics": [{"metric": "m"}]}"#),
        &format!("{at}.metrics[0]"),
        "exactly one of max_decrease_percent",
    );
    assert_refused(
        &guarded(
            r#"{"metrics": [{"metric": "m", "max_decrease_percent": 1, "max_increase_percent": 1}]}"#,
        ),
        &format!("{at}.metrics[0]"),
        "got both",
    );
    assert_refused(
        &guarded(r#"{"metrics": [{"metric": "m", "max_decrease_percent": -5}]}"#),
        &format!("{at}.metrics[0].max_decrease_percent"),
        ">= 0",
    );
    assert_refused(
        &guarded(r#"{"metrics": [{"metric": "m", "max_increase_percent": -0.5}]}"#),
        &format!("{at}.metrics[0].max_increase_percent"),
        ">= 0",
    );
    assert_refused(
        &guarded(
            r#"{"metrics": [{"metric": "m", "max_increase_percent": 1}, {"metric": "n", "max_increase_percent": 1}, {"metric": "m", "max_decrease_percent": 1}]}"#,
        ),
        &format!("{at}.metrics[2].metric"),
        "duplicates the rule for metric \"m\"",
    );
    // Errors in a later experiment name that experiment.
    let json = format!(
        r#"{{"experiments": [{{"name": "a", "variants": {TWO}}},
            {{"name": "b", "guardrails": {{"alpha": 0.9}}, "variants": {TWO}}}]}}"#
    );
    assert_refused(&json, "experiments[1].guardrails.alpha", "(0, 0.5]");
}

#[test]
fn non_finite_guardrail_limits_are_refused() {
    // JSON cannot spell NaN or infinity; a Config built in code can.
    use abmesh_filter::config::{LatencyRule, MetricRule};
    let mut config: abmesh_filter::Config = serde_json::from_str(&guarded(
        r#"{"metrics": [{"metric": "m", "max_decrease_percent": 1}]}"#,
    ))
    .unwrap();
    let g = config.experiments[0].guardrails.as_mut().unwrap();
    g.metrics[0] = MetricRule {
        metric: "m".into(),
        max_decrease_percent: Some(f64::INFINITY),
        max_increase_percent: None,
    };
    let e = Plan::compile(&config).unwrap_err();
    assert_eq!(
        e.field(),
        "experiments[0].guardrails.metrics[0].max_decrease_percent"
    );
    let g = config.experiments[0].guardrails.as_mut().unwrap();
    g.metrics.clear();
    g.p95_latency = Some(LatencyRule {
        max_increase_percent: f64::NAN,
    });
    let e = Plan::compile(&config).unwrap_err();
    assert_eq!(
        e.field(),
        "experiments[0].guardrails.p95_latency.max_increase_percent"
    );
    let g = config.experiments[0].guardrails.as_mut().unwrap();
    g.p95_latency = None;
    g.alpha = f64::NAN;
    let e = Plan::compile(&config).unwrap_err();
    assert_eq!(e.field(), "experiments[0].guardrails.alpha");
    let g = config.experiments[0].guardrails.as_mut().unwrap();
    g.alpha = 0.01;
    g.error_rate = Some(abmesh_filter::config::ErrorRateRule {
        max_increase: f64::NAN,
    });
    let e = Plan::compile(&config).unwrap_err();
    assert_eq!(
        e.field(),
        "experiments[0].guardrails.error_rate.max_increase"
    );
}

#[test]
fn health_sample_every() {
    let with = |s: &str| {
        format!(r#"{{"sidecar": {s}, "experiments": [{{"name": "e", "variants": {TWO}}}]}}"#)
    };
    let p = Plan::from_json(with(r#"{"cluster": "c"}"#).as_bytes()).unwrap();
    assert_eq!(p.sidecar().unwrap().health_sample_every, 8);
    let p =
        Plan::from_json(with(r#"{"cluster": "c", "health_sample_every": 1}"#).as_bytes()).unwrap();
    assert_eq!(p.sidecar().unwrap().health_sample_every, 1);
    assert_refused(
        &with(r#"{"cluster": "c", "health_sample_every": 0}"#),
        "sidecar.health_sample_every",
        "at least 1",
    );
    assert_refused(
        &with(r#"{"cluster": "c", "health_sample_every": -1}"#),
        "sidecar.health_sample_every",
        "invalid value",
    );
}

#[test]
fn recent_exposures() {
    let with = |s: &str| {
        format!(r#"{{"sidecar": {s}, "experiments": [{{"name": "e", "variants": {TWO}}}]}}"#)
    };
    let p = Plan::from_json(with(r#"{"cluster": "c"}"#).as_bytes()).unwrap();
    assert_eq!(p.sidecar().unwrap().recent_exposures, 8192);
    for ok in [0, 1, 65536] {
        let cfg = with(&format!(r#"{{"cluster": "c", "recent_exposures": {ok}}}"#));
        assert!(Plan::from_json(cfg.as_bytes()).is_ok(), "{ok}");
    }
    for bad in [3, 1000, 2 << 20] {
        assert_refused(
            &with(&format!(r#"{{"cluster": "c", "recent_exposures": {bad}}}"#)),
            "sidecar.recent_exposures",
            "power of two",
        );
    }
}

fn with_sidecar(s: &str) -> String {
    format!(r#"{{"sidecar": {s}, "experiments": [{{"name": "e", "variants": {TWO}}}]}}"#)
}

#[test]
fn sidecar_token_is_validated_without_being_quoted() {
    let good = "Zq3-_.~+/=AbCdEf0123";
    let p = Plan::from_json(
        with_sidecar(&format!(r#"{{"cluster": "c", "token": "{good}"}}"#)).as_bytes(),
    )
    .unwrap();
    let s = p.sidecar().unwrap();
    assert_eq!(s.token.as_ref().map(|t| t.expose()), Some(good));
    // A config printed for debugging does not show it.
    let dumped = format!("{s:?}");
    assert!(!dumped.contains(good), "{dumped}");
    assert!(dumped.contains("<redacted>"), "{dumped}");
    // Absent or null: no token.
    for t in ["", r#", "token": null"#] {
        let p =
            Plan::from_json(with_sidecar(&format!(r#"{{"cluster": "c"{t}}}"#)).as_bytes()).unwrap();
        assert!(p.sidecar().unwrap().token.is_none());
    }
    // Exactly 16 and 4096 bytes are fine.
    for n in [16, 4096] {
        let t = "k".repeat(n);
        Plan::from_json(with_sidecar(&format!(r#"{{"cluster": "c", "token": "{t}"}}"#)).as_bytes())
            .unwrap();
    }
    let refused = [
        (
            "\"0123456789abcde\"".to_owned(),
            "16 to 4096 bytes long, got 15",
        ),
        (
            format!("\"{}\"", "k".repeat(4097)),
            "16 to 4096 bytes long, got 4097",
        ),
        ("\"\"".to_owned(), "got 0"),
        ("\"secret with spaces 01\"".to_owned(), "visible ASCII"),
        ("\"secret\\twith-a-tab-01\"".to_owned(), "byte 6 is not"),
        (
            "\"s\u{e9}cr\u{e9}t-non-ascii-0123\"".to_owned(),
            "visible ASCII",
        ),
    ];
    for (token, words) in refused {
        let json = with_sidecar(&format!(r#"{{"cluster": "c", "token": {token}}}"#));
        assert_refused(&json, "sidecar.token", words);
        let msg = err(&json).to_string();
        let secret = token.trim_matches('"');
        if secret.len() >= 4 {
            assert!(!msg.contains(secret), "the error quotes the token: {msg}");
        }
    }
    assert_refused(
        &with_sidecar(r#"{"cluster": "c", "token": 1234567890123456}"#),
        "sidecar.token",
        "invalid type",
    );
}

#[test]
fn the_shipped_configuration_leaves_the_token_out() {
    use abmesh_filter::config::{carries_token, shipped_config};
    use std::borrow::Cow;

    // Without a token: the very bytes, so the config id is unchanged.
    let plain = with_sidecar(r#"{"cluster": "c"}"#);
    let shipped = shipped_config(plain.as_bytes()).unwrap();
    assert!(matches!(shipped, Cow::Borrowed(b) if b == plain.as_bytes()));
    assert!(!carries_token(plain.as_bytes()));
    let null = with_sidecar(r#"{"cluster": "c", "token": null}"#);
    assert!(!carries_token(null.as_bytes()));
    assert!(matches!(
        shipped_config(null.as_bytes()).unwrap(),
        Cow::Borrowed(_)
    ));

    // With one, even spelled with an escape: the same document without it,
    // every other member in order, values byte for byte.
    let token = "tok-0123456789abcdef";
    for key in ["token", "t\\u006fken"] {
        let raw = format!(
            r#"{{
              "identity": [{{"header": "x-user-id"}}],
              "sidecar": {{"cluster": "abmesh_sidecar", "{key}": "{token}", "flush_interval_ms": 200}},
              "experiments": [{{"name": "e", "variants": [{{"name": "a", "weight": 1.50}}, {{"name": "b", "weight": 1e0}}]}}]
            }}"#
        );
        assert!(carries_token(raw.as_bytes()));
        Plan::from_json(raw.as_bytes()).unwrap();
        let shipped = shipped_config(raw.as_bytes()).unwrap();
        let text = std::str::from_utf8(&shipped).unwrap();
        assert!(matches!(shipped, Cow::Owned(_)));
        assert!(!text.contains(token), "{text}");
        assert!(!carries_token(&shipped), "{text}");
        assert_eq!(
            text,
            r#"{"identity":[{"header": "x-user-id"}],"sidecar":{"cluster":"abmesh_sidecar","flush_interval_ms":200},"experiments":[{"name": "e", "variants": [{"name": "a", "weight": 1.50}, {"name": "b", "weight": 1e0}]}]}"#
        );
        // It is still a valid configuration, the same one less the token.
        let p = Plan::from_json(&shipped).unwrap();
        assert!(p.sidecar().unwrap().token.is_none());
        assert_eq!(p.sidecar().unwrap().flush_interval_ms, 200);
        assert_ne!(
            abmesh_filter::config_id(&shipped),
            abmesh_filter::config_id(raw.as_bytes())
        );
    }
    // What cannot be read as a configuration is not vouched for.
    assert!(carries_token(b"{not json"));
    assert!(carries_token(br#"{"sidecar": "c"}"#));
    assert!(carries_token(br#"["sidecar"]"#));
    assert!(!carries_token(br#"{"sidecar": null}"#));
    assert!(shipped_config(b"{not json").is_err());
}

/// An experiment with a bandit: control `c` (weight 2 of 4: 50 %) and
/// three treatments.
fn bandit(bandit: &str) -> String {
    format!(
        r#"{{"experiments": [{{"name": "e", "bandit": {bandit}, "variants": [
            {{"name": "c", "weight": 2}}, {{"name": "t1", "weight": 1}},
            {{"name": "t2", "weight": 0.5}}, {{"name": "t3", "weight": 0.5}}]}}]}}"#
    )
}

#[test]
fn bandits_are_validated_and_exposed() {
    let p = Plan::from_json(
        bandit(
            r#"{"metric": "purchase", "update_every_s": 60, "min_users_per_variant": 500,
                "explore_floor_percent": 2.5}"#,
        )
        .as_bytes(),
    )
    .unwrap();
    let b = p.experiments()[0].bandit().unwrap();
    assert_eq!(b.metric, "purchase");
    assert_eq!(
        (
            b.update_every_s,
            b.min_users_per_variant,
            b.explore_floor_percent
        ),
        (60, 500, 2.5)
    );
    // Defaults, and no bandit at all.
    let p = Plan::from_json(bandit(r#"{"metric": "m"}"#).as_bytes()).unwrap();
    let b = p.experiments()[0].bandit().unwrap();
    assert_eq!(
        (
            b.update_every_s,
            b.min_users_per_variant,
            b.explore_floor_percent
        ),
        (3600, 100, 5.0)
    );
    assert!(
        Plan::from_json(exp("").as_bytes()).unwrap().experiments()[0]
            .bandit()
            .is_none()
    );
    // The floors may take (nearly) all of the non-control share:
    // 3 × 16.66 % ≤ 50 %.
    let full = bandit(r#"{"metric": "m", "explore_floor_percent": 16.66}"#);
    assert!(Plan::from_json(full.as_bytes()).is_ok());
    let zero = bandit(r#"{"metric": "m", "explore_floor_percent": 0}"#);
    assert!(Plan::from_json(zero.as_bytes()).is_ok());
    let long = format!(r#"{{"metric": {:?}}}"#, "m".repeat(64));
    assert!(Plan::from_json(bandit(&long).as_bytes()).is_ok());
    let month = bandit(r#"{"metric": "m", "update_every_s": 2592000}"#);
    assert!(Plan::from_json(month.as_bytes()).is_ok());
}

#[test]
fn bandit_errors_name_the_field() {
    let at = "experiments[0].bandit";
    assert_refused(&bandit("{}"), at, "missing field `metric`");
    assert_refused(
        &bandit(r#"{"metric": "m", "update_evry_s": 1}"#),
        &format!("{at}.update_evry_s"),
        "unknown field",
    );
    for bad in [
        r#""""#.to_string(),
        format!("{:?}", "m".repeat(65)),
        r#""buy now""#.to_string(),
    ] {
        assert_refused(
            &bandit(&format!(r#"{{"metric": {bad}}}"#)),
            &format!("{at}.metric"),
            "1 to 64 characters of [A-Za-z0-9_.:-]",
        );
    }
    for s in ["0", "2592001"] {
        assert_refused(
            &bandit(&format!(r#"{{"metric": "m", "update_every_s": {s}}}"#)),
            &format!("{at}.update_every_s"),
            "between 1 and 2592000 seconds",
        );
    }
    assert_refused(
        &bandit(r#"{"metric": "m", "update_every_s": -1}"#),
        &format!("{at}.update_every_s"),
        "invalid value",
    );
    assert_refused(
        &bandit(r#"{"metric": "m", "explore_floor_percent": -0.5}"#),
        &format!("{at}.explore_floor_percent"),
        ">= 0",
    );
    // 3 treatments × 17 % > their 50 %.
    assert_refused(
        &bandit(r#"{"metric": "m", "explore_floor_percent": 17}"#),
        &format!("{at}.explore_floor_percent"),
        "3 non-control variants × 17% exceeds their share of 50%",
    );
    // One treatment: nothing to choose between, whichever is control.
    for control in ["", r#""control": "b","#] {
        let json = format!(
            r#"{{"experiments": [{{"name": "e", {control} "bandit": {{"metric": "m"}}, "variants": {TWO}}}]}}"#
        );
        assert_refused(&json, at, "at least two non-control variants");
    }
    // The non-control share is what the control leaves, wherever it is.
    let json = r#"{"experiments": [{"name": "e", "control": "b",
        "bandit": {"metric": "m", "explore_floor_percent": 10.01},
        "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 8}, {"name": "c", "weight": 1}]}]}"#;
    assert_refused(json, &format!("{at}.explore_floor_percent"), "share of 20%");
    assert!(Plan::from_json(json.replace("10.01", "10").as_bytes()).is_ok());
    // A non-finite floor (only a Config built in code can have one).
    let mut config: abmesh_filter::Config =
        serde_json::from_str(&bandit(r#"{"metric": "m"}"#)).unwrap();
    config.experiments[0]
        .bandit
        .as_mut()
        .unwrap()
        .explore_floor_percent = f64::NAN;
    let e = Plan::compile(&config).unwrap_err();
    assert_eq!(e.field(), format!("{at}.explore_floor_percent"));
}
