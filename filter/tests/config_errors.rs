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
