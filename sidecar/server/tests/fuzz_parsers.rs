//! Fuzzing every request-body parser: no body may make one panic, and
//! where a simple oracle says whether a body can be accepted, the parser
//! agrees with it.
//!
//! | target | parser | oracle |
//! |---|---|---|
//! | events | `events::parse_outcomes` (array and NDJSON) | accepted ⇒ the array, or every non-blank line, is JSON (serde_json); the events follow the field rules; valid + JSON whitespace is accepted alike |
//! | exposures | `events::parse_exposures` | accepted ⇒ the body is JSON; every row's indexes point into the batch |
//! | KServe JSON | `kserve::codec::decode_request(body, None)` (one-pass fast path, then the general decoder) | accepted ⇒ the body is JSON; each input has the bytes its shape needs; the fast path and the general decoder agree (a `"parameters":{}` member sends the same request past the fast path) |
//! | KServe binary | `decode_request(body, Some(header length))` | accepted ⇒ the JSON header is JSON and the binary inputs use up the rest exactly |
//! | gRPC ModelInfer | prost's decoding of a `ModelInferRequest`, then `grpc::tensors::decode_request` | accepted ⇒ each input has the bytes its shape and datatype need; the outputs asked for are the request's |
//! | state merge | `Engine::validate_state`, then `Engine::merge_state` when it passes | none but "does not panic" (the format is the store's; the target takes any `fn(&[u8])`) |
//!
//! Bodies are arbitrary bytes, bytes over a JSON-ish alphabet, and valid
//! bodies mutated by byte flips, truncations, insertions, deletions,
//! duplicated ranges and splices of JSON fragments.
//!
//! Each property runs [`DEFAULT_CASES`] cases (well under a minute in
//! all, in a debug build); `PROPTEST_CASES=100000 cargo test -p
//! abmesh-server --release --test fuzz_parsers` runs longer.

use std::panic::{catch_unwind, AssertUnwindSafe};

use abmesh_eval::aggregate::{Engine, EngineOptions};
use abmesh_eval::ingest::fields::{check_id, check_metric_name, MAX_ID_BYTES};
use abmesh_eval::ingest::{parse_exposures, parse_outcomes};
use abmesh_model_host::kserve::codec::decode_request;
use abmesh_model_host::kserve::request::DecodedRequest;
use abmesh_model_host::Tensor;
use abmesh_server::grpc::pb;
use abmesh_server::grpc::tensors;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use prost::Message;
use serde::de::IgnoredAny;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 2048;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        // Shrinking a failure can take long; the failing input is printed
        // either way.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- bodies

const EVENT_SEEDS: &[&str] = &[
    r#"[{"user":"u1","metric":"buy","value":2.5,"experiment":"ranker","id":"e1"},{"user":"u2","metric":"click","timestamp":"2026-05-01T12:00:00Z"}]"#,
    "{\"user\":\"u1\",\"metric\":\"buy\",\"value\":-1e-7,\"covariate\":3}\n\n{\"user\":\"u\\\"2\",\"metric\":\"m:x.y-z\",\"timestamp\":1777636800250}\r\n",
    r#"{"user":"é😀","metric":"m","timestamp":"2026-05-01T14:00:00.25+02:00","id":"x"}"#,
    r#"[]"#,
    "  \n",
    r#"[{"user":"u","metric":"m"}]"#,
];

const EXPOSURE_SEEDS: &[&str] = &[
    r#"{"instance":"envoy-1/0/1","seq":7,"dropped":3,"experiments":[{"name":"ranker","variants":["control","treatment"]}],"exposures":[[1000,0,1,"u1"],[1001,0,0,"u\"2"]],"future":[{"x":true}]}"#,
    r#"{"instance":"i","seq":1,"config_id":"00000000000000ff","config":{"experiments":[{"name":"r","variants":[{"name":"a","weight":1},{"name":"b","weight":1}]}]},"experiments":[{"name":"r","variants":["a","b"]}],"exposures":[],"health":[[0,1,7,[0,2,0,0,1],[1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,2]]]}"#,
    r#"{"instance":"i","seq":0,"experiments":[],"exposures":[]}"#,
];

const INFER_SEEDS: &[&str] = &[
    r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2.5]}]}"#,
    r#"{"id":"r1","inputs":[{"data":[[0.1],[-2e3]],"datatype":"FP64","shape":[2,1],"name":"é"},{"name":"y","shape":[],"datatype":"FP32","data":[7]}]}"#,
    r#"{"inputs":[{"name":"x","shape":[3],"datatype":"INT32","data":[1,-2,3]},{"name":"b","shape":[2],"datatype":"BOOL","data":[true,false]}],"outputs":[{"name":"y","parameters":{"binary_data":true}},{"name":"z"}]}"#,
    r#"{"inputs":[{"name":"h","shape":[2],"datatype":"FP16","data":[0.5,65504]},{"name":"u","shape":[1,1],"datatype":"UINT64","data":[[18446744073709551615]]}],"parameters":{"binary_data_output":true}}"#,
    r#"{"inputs":[{"name":"x","shape":[0,3],"datatype":"FP32","data":[]}]}"#,
];

/// JSON headers of binary-extension requests and the binary part each
/// needs (the bytes are made up: every bit pattern is a valid element).
const BINARY_SEEDS: &[(&str, usize)] = &[
    (
        r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"b","shape":[1],"datatype":"INT64","parameters":{"binary_data_size":8}}],"parameters":{"binary_data_output":true}}"#,
        16,
    ),
    (
        r#"{"inputs":[{"name":"a","shape":[1,3],"datatype":"UINT8","parameters":{"binary_data_size":3}},{"name":"j","shape":[1],"datatype":"FP64","data":[1.5]}],"outputs":[{"name":"o","parameters":{"binary_data":true}}]}"#,
        3,
    ),
];

/// Pieces spliced into bodies: structure, the values parsers refuse, and
/// the ones that used to break them (a value after a complete one).
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    " x",
    "\n",
    "\r\n",
    "\t",
    "null",
    "true",
    "false",
    "0",
    "-0",
    "01",
    "1.",
    ".5",
    "1e",
    "1e999",
    "-1e-999",
    "1.7976931348623157e309",
    "18446744073709551616",
    "-9223372036854775809",
    "4294967296",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\uDFFF\\uD800\"",
    "\"\u{7f}\"",
    "\u{feff}",
    "\u{0c}",
    "\"x\"",
    "{}",
    "[]",
    "{\"user\":\"u\",\"metric\":\"m\"}",
    "\"value\":\"x\"",
    "\"value\":1e308",
    "\"shape\":[-1]",
    "\"shape\":[4294967296,4294967296]",
    "\"datatype\":\"BYTES\"",
    "\"datatype\":\"FP33\"",
    "\"binary_data_size\":18446744073709551615",
    "\"parameters\":{}",
    "\"outputs\":[]",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":",
];

/// JSON values that replace one in a body, keeping it JSON: what the
/// validators behind the parsers see.
const VALUES: &[&str] = &[
    "\"\"",
    "\"x\"",
    "\"é\"",
    "\"a b\"",
    "\"\\u0000\"",
    "\"\\\"\"",
    "\"2026-05-01T12:00:00Z\"",
    "\"2023-02-29T00:00:00Z\"",
    "\"9999-12-31T23:59:60.999+23:59\"",
    "\"FP32\"",
    "\"FP64\"",
    "\"INT8\"",
    "\"BOOL\"",
    "\"BYTES\"",
    "\"00000000000000ff\"",
    "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"",
    "0",
    "-0",
    "1",
    "-1",
    "2",
    "7",
    "255",
    "256",
    "65536",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "253402300799999",
    "253402300800000",
    "1.5",
    "-2.5e-3",
    "1e308",
    "1e400",
    "5e-324",
    "0.1",
    "true",
    "false",
    "null",
    "[]",
    "{}",
    "[1,2]",
    "[[1],[2]]",
    "[true]",
    "[\"x\"]",
    "{\"a\":1}",
];

/// Where the scalar values (strings, numbers, literals) of a JSON text are.
fn scalar_spans(body: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let start = i;
        match body[i] {
            b'"' => {
                i += 1;
                while i < body.len() && body[i] != b'"' {
                    i += if body[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(body.len());
                // A key is not a value.
                let next = body[i..].iter().find(|b| !b" \t\r\n".contains(b));
                if next != Some(&b':') {
                    spans.push((start, i));
                }
            }
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                while i < body.len() && !b",]} \t\r\n".contains(&body[i]) {
                    i += 1;
                }
                spans.push((start, i));
            }
            _ => i += 1,
        }
    }
    spans
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace a scalar value with another JSON value.
    Value(Index, &'static str),
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Cut the body at a position.
    Truncate(Index),
    /// Insert arbitrary bytes.
    Insert(Index, Vec<u8>),
    /// Delete up to n bytes.
    Delete(Index, usize),
    /// Insert a fragment.
    Splice(Index, &'static str),
    /// Copy a range of the body to another position.
    Duplicate(Index, Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        8 => (any::<Index>(), select(VALUES)).prop_map(|(i, v)| Mutation::Value(i, v)),
        3 => (any::<Index>(), 1..=255u8).prop_map(|(i, m)| Mutation::Flip(i, m)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), 1..16usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        4 => (any::<Index>(), select(FRAGMENTS)).prop_map(|(i, f)| Mutation::Splice(i, f)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(a, b, c)| Mutation::Duplicate(a, b, c)),
    ]
}

/// A position in `0..=len`.
fn at(i: &Index, len: usize) -> usize {
    i.index(len + 1)
}

fn apply(body: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Value(i, v) => {
            let spans = scalar_spans(body);
            if !spans.is_empty() {
                let (a, b) = *i.get(&spans);
                body.splice(a..b, v.bytes());
            }
        }
        Mutation::Flip(i, mask) => {
            if !body.is_empty() {
                let i = i.index(body.len());
                body[i] ^= mask;
            }
        }
        Mutation::Truncate(i) => body.truncate(at(i, body.len())),
        Mutation::Insert(i, bytes) => {
            let i = at(i, body.len());
            body.splice(i..i, bytes.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let i = at(i, body.len());
            let end = (i + n).min(body.len());
            body.drain(i..end);
        }
        Mutation::Splice(i, f) => {
            let i = at(i, body.len());
            body.splice(i..i, f.bytes());
        }
        Mutation::Duplicate(a, b, to) => {
            let (a, b) = (at(a, body.len()), at(b, body.len()));
            let range = body[a.min(b)..a.max(b)].to_vec();
            let to = at(to, body.len());
            body.splice(to..to, range);
        }
    }
}

/// How many mutations: mostly one or two, so that many mutated bodies are
/// still accepted and reach the oracles; sometimes many.
fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![
        6 => vec(mutation(), 1..=2),
        3 => vec(mutation(), 3..=4),
        1 => vec(mutation(), 5..=10),
    ]
}

/// Valid bodies mutated (see [`mutations`]).
fn mutated(seeds: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    (select(seeds), mutations()).prop_map(|(seed, ms)| {
        let mut body = seed.as_bytes().to_vec();
        for m in &ms {
            apply(&mut body, m);
        }
        body
    })
}

/// Bytes over the characters JSON is made of (and a few it is not), which
/// reach deeper into the parsers than uniform bytes do.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let alphabet: Vec<u8> = b"{}[]\":,.-+eE0123456789 \n\ttrufalsn\\xu\x00\xff\xc3\xa9".to_vec();
    vec(select(alphabet), 0..200)
}

/// Arbitrary bytes, JSON-ish bytes, or a mutated valid body.
fn bodies(seeds: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..300),
        1 => jsonish(),
        4 => mutated(seeds),
    ]
}

/// JSON's whitespace (not `is_ascii_whitespace`, which has form feed too).
fn json_whitespace() -> impl Strategy<Value = Vec<u8>> {
    vec(select(b" \t\r\n".to_vec()), 0..6)
}

// ---------------------------------------------------------------- oracles

fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(bytes).is_ok()
}

/// Whether an events body is JSON in the form `parse_outcomes` reads it:
/// a JSON array, or lines that are each JSON or blank.
fn events_syntax_ok(body: &[u8]) -> bool {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => true,
        Some(b'[') => is_json(body),
        Some(_) => body
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .all(is_json),
    }
}

fn check_events(body: &[u8]) -> Result<(), TestCaseError> {
    let Ok(events) = parse_outcomes(body) else {
        return Ok(());
    };
    prop_assert!(
        events_syntax_ok(body),
        "accepted a body that is not JSON: {:?}",
        String::from_utf8_lossy(body)
    );
    for e in &events {
        prop_assert!(check_id(e.user.as_str()).is_ok());
        prop_assert!(e.user.as_str().len() <= MAX_ID_BYTES);
        prop_assert!(check_metric_name(e.metric.as_str()).is_ok());
        prop_assert!(e.amount().is_finite());
    }
    Ok(())
}

fn check_exposures(body: &[u8]) -> Result<(), TestCaseError> {
    let Ok(batch) = parse_exposures(body) else {
        return Ok(());
    };
    prop_assert!(
        is_json(body),
        "accepted: {:?}",
        String::from_utf8_lossy(body)
    );
    for row in &batch.exposures {
        let exp = batch.experiments.get(row.experiment());
        prop_assert!(exp.is_some_and(|e| row.variant() < e.variants.len()));
    }
    for row in &batch.health {
        let exp = batch.experiments.get(row.experiment());
        prop_assert!(exp.is_some_and(|e| row.variant() < e.variants.len()));
    }
    Ok(())
}

/// Every input has the bytes its shape and datatype need.
fn check_decoded(r: &DecodedRequest) -> Result<(), TestCaseError> {
    for i in &r.inputs {
        let t = &i.tensor;
        let n = Tensor::element_count(&t.shape);
        prop_assert_eq!(n.map(|n| n * t.datatype.size()), Some(t.data.len()));
    }
    Ok(())
}

/// The same request with a `"parameters":{}` member first: the fast path
/// takes no `parameters`, so the general decoder reads it, and must read
/// what the fast path read. `None` if the body is not an object that takes
/// the extra member as it is.
fn past_the_fast_path(body: &[u8]) -> Option<Vec<u8>> {
    let start = body.iter().position(|b| !b" \t\r\n".contains(b))?;
    if body[start] != b'{' || body.windows(12).any(|w| w == b"\"parameters\"") {
        return None;
    }
    let rest = &body[start + 1..];
    let next = rest.iter().find(|b| !b" \t\r\n".contains(b))?;
    if *next == b'}' {
        return None;
    }
    let mut out = b"{\"parameters\":{},".to_vec();
    out.extend_from_slice(rest);
    Some(out)
}

fn check_infer_json(body: &[u8]) -> Result<(), TestCaseError> {
    let got = decode_request(body, None);
    if let Ok(r) = &got {
        prop_assert!(
            is_json(body),
            "accepted: {:?}",
            String::from_utf8_lossy(body)
        );
        check_decoded(r)?;
    }
    if let Some(general) = past_the_fast_path(body) {
        let other = decode_request(&general, None);
        match (&got, &other) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(&a.id, &b.id);
                prop_assert_eq!(&a.inputs, &b.inputs);
                prop_assert_eq!(&a.outputs, &b.outputs);
                prop_assert_eq!(&a.binary, &b.binary);
            }
            (Err(_), Err(_)) => {}
            _ => prop_assert!(
                false,
                "{:?} and {:?} disagree: {:?} vs {:?}",
                String::from_utf8_lossy(body),
                String::from_utf8_lossy(&general),
                got.as_ref().map(|_| "accepted"),
                other.as_ref().map(|_| "accepted")
            ),
        }
    }
    Ok(())
}

fn check_infer_binary(body: &[u8], header_length: &str) -> Result<(), TestCaseError> {
    let Ok(r) = decode_request(body, Some(header_length)) else {
        return Ok(());
    };
    check_decoded(&r)?;
    let n: usize = header_length.trim().parse().expect("accepted, so a number");
    prop_assert!(n <= body.len());
    prop_assert!(is_json(&body[..n]));
    // Inputs taken from the binary part use it up exactly: their bytes
    // plus the JSON header are the body.
    let header: serde_json::Value = serde_json::from_slice(&body[..n]).expect("JSON");
    let binary: usize = r
        .inputs
        .iter()
        .zip(header["inputs"].as_array().into_iter().flatten())
        .filter(|(_, h)| h["parameters"]["binary_data_size"].is_u64())
        .map(|(i, _)| i.tensor.data.len())
        .sum();
    prop_assert_eq!(n + binary, body.len());
    Ok(())
}

/// Encoded `ModelInferRequest`s that decode: raw contents, typed contents
/// of several types, requested outputs.
fn grpc_seeds() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
        let input = |name: &str, datatype: &str, shape: &[i64], contents| InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            parameters: Default::default(),
            contents,
        };
        let raw = pb::ModelInferRequest {
            model_name: "scorer".into(),
            model_version: "1".into(),
            id: "r1".into(),
            inputs: vec![
                input("features", "FP32", &[2, 4], None),
                input("mask", "BOOL", &[2], None),
            ],
            outputs: vec![InferRequestedOutputTensor {
                name: "score".into(),
                parameters: Default::default(),
            }],
            raw_input_contents: vec![vec![0x3f; 32], vec![1, 0]],
            ..Default::default()
        };
        let typed = pb::ModelInferRequest {
            model_name: "dtypes".into(),
            inputs: vec![
                input(
                    "i8",
                    "INT8",
                    &[3],
                    Some(pb::InferTensorContents {
                        int_contents: vec![-128, 0, 127],
                        ..Default::default()
                    }),
                ),
                input(
                    "u16",
                    "UINT16",
                    &[1, 2],
                    Some(pb::InferTensorContents {
                        uint_contents: vec![0, 65535],
                        ..Default::default()
                    }),
                ),
                input(
                    "f64",
                    "FP64",
                    &[2],
                    Some(pb::InferTensorContents {
                        fp64_contents: vec![1.5, -0.0],
                        ..Default::default()
                    }),
                ),
                input(
                    "i64",
                    "INT64",
                    &[0, 5],
                    Some(pb::InferTensorContents::default()),
                ),
            ],
            ..Default::default()
        };
        vec![raw.encode_to_vec(), typed.encode_to_vec()]
    })
}

fn check_grpc_infer(body: &[u8]) -> Result<(), TestCaseError> {
    let Ok(req) = pb::ModelInferRequest::decode(body) else {
        return Ok(());
    };
    let wanted: Vec<String> = req.outputs.iter().map(|o| o.name.clone()).collect();
    let decoded = catch_unwind(AssertUnwindSafe(|| tensors::decode_request(req)))
        .map_err(|_| TestCaseError::fail(format!("panicked on {body:?}")))?;
    let Ok((inputs, outputs)) = decoded else {
        return Ok(());
    };
    for i in &inputs {
        let t = &i.tensor;
        let n = Tensor::element_count(&t.shape);
        prop_assert_eq!(n.map(|n| n * t.datatype.size()), Some(t.data.len()));
    }
    prop_assert_eq!(outputs.unwrap_or_default(), wanted);
    Ok(())
}

/// A parser with no oracle: it must return, whatever it returns.
fn must_not_panic(parse: impl Fn(&[u8]), body: &[u8]) -> Result<(), TestCaseError> {
    match catch_unwind(AssertUnwindSafe(|| parse(body))) {
        Ok(()) => Ok(()),
        Err(_) => Err(TestCaseError::fail(format!(
            "panicked on {:?}",
            String::from_utf8_lossy(body)
        ))),
    }
}

// ---------------------------------------------------------------- state

// Options added later keep their defaults.
#[allow(clippy::needless_update)]
fn small_engine() -> Engine {
    Engine::new(
        None,
        EngineOptions {
            dedup_capacity: 1024,
            batch_window: 64,
            ..EngineOptions::default()
        },
    )
}

/// Exported states to mutate: an empty one and one with exposures and
/// events (made once).
fn state_seeds() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(make_state_seeds)
}

fn make_state_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // Exported states, in the envelope `GET /admin/state` serves.
    let exporter = abmesh_common::SidecarId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
    let mut empty = Vec::new();
    small_engine()
        .export_state(exporter, 0, &mut empty)
        .unwrap();
    out.push(empty);
    let mut engine = small_engine();
    engine.apply_exposures(&parse_exposures(EXPOSURE_SEEDS[0].as_bytes()).unwrap());
    engine.apply_outcomes(
        &parse_outcomes(br#"[{"user":"u1","metric":"buy","value":2.5},{"user":"u\"2","metric":"buy","id":"e1"}]"#)
            .unwrap(),
    );
    let mut full = Vec::new();
    engine.export_state(exporter, 7, &mut full).unwrap();
    out.push(full);
    out
}

/// The state-merge body parser: validation, and the merge it guards.
fn merge_state(body: &[u8]) {
    if Engine::validate_state(body).is_ok() {
        let _ = small_engine().merge_state(body);
    }
}

// ---------------------------------------------------------------- targets

proptest! {
    #![proptest_config(config())]

    #[test]
    fn events(body in bodies(EVENT_SEEDS)) {
        check_events(&body)?;
    }

    /// A valid body followed by anything that is not JSON whitespace is
    /// refused (it used to reach an `unreachable!`); followed by JSON
    /// whitespace, accepted with the same events.
    #[test]
    fn events_with_a_tail(
        seed in select(EVENT_SEEDS),
        tail in prop_oneof![vec(any::<u8>(), 1..8), vec(select(FRAGMENTS), 1..3).prop_map(|f| f.concat().into_bytes())],
        ws in json_whitespace(),
    ) {
        let n = parse_outcomes(seed.as_bytes()).unwrap().len();
        let mut body = seed.as_bytes().to_vec();
        body.extend_from_slice(&ws);
        prop_assert_eq!(parse_outcomes(&body).map(|e| e.len()), Ok(n));
        body.extend_from_slice(&tail);
        check_events(&body)?;
        if !events_syntax_ok(&body) {
            prop_assert!(parse_outcomes(&body).is_err());
        }
    }

    #[test]
    fn exposures(body in bodies(EXPOSURE_SEEDS)) {
        check_exposures(&body)?;
    }

    #[test]
    fn exposures_with_a_tail(seed in select(EXPOSURE_SEEDS), tail in vec(any::<u8>(), 1..8), ws in json_whitespace()) {
        let mut body = seed.as_bytes().to_vec();
        body.extend_from_slice(&ws);
        prop_assert!(parse_exposures(&body).is_ok());
        body.extend_from_slice(&tail);
        prop_assert_eq!(parse_exposures(&body).is_ok(), is_json(&body));
    }

    #[test]
    fn infer_json(body in bodies(INFER_SEEDS)) {
        check_infer_json(&body)?;
    }

    #[test]
    fn infer_binary(
        seed in select(BINARY_SEEDS),
        json_mutations in prop_oneof![Just(Vec::new()), mutations()],
        binary in vec(any::<u8>(), 0..48),
        binary_extra in -4i64..4,
        length in prop_oneof![
            4 => Just(None),
            1 => (-3i64..3).prop_map(Some),
        ],
        odd_length in prop_oneof![
            8 => Just(None),
            1 => select(&["", " ", "-1", "1e3", "0x10", "99999999999999999999", "+5", " 12 "][..]).prop_map(Some),
        ],
    ) {
        let (json, need) = seed;
        let mut header = json.as_bytes().to_vec();
        for m in &json_mutations {
            apply(&mut header, m);
        }
        let size = (need as i64 + binary_extra).max(0) as usize;
        let mut body = header.clone();
        body.extend(binary.iter().copied().cycle().take(if binary.is_empty() { 0 } else { size }));
        let declared = match (odd_length, length) {
            (Some(s), _) => s.to_owned(),
            (None, None) => header.len().to_string(),
            (None, Some(d)) => (header.len() as i64 + d).max(0).to_string(),
        };
        check_infer_binary(&body, &declared)?;
    }

    #[test]
    fn infer_binary_arbitrary(body in vec(any::<u8>(), 0..300), length in 0usize..320) {
        check_infer_binary(&body, &length.to_string())?;
    }

    #[test]
    fn grpc_infer(
        seed in any::<Index>(),
        mutations in prop_oneof![Just(Vec::new()), mutations()],
        random in vec(any::<u8>(), 0..200),
        use_random in prop::bool::weighted(0.2),
    ) {
        let body = if use_random {
            random
        } else {
            let mut body = seed.get(grpc_seeds()).clone();
            for m in &mutations {
                apply(&mut body, m);
            }
            body
        };
        check_grpc_infer(&body)?;
    }

    #[test]
    fn state_merge(
        seed in any::<Index>(),
        mutations in prop_oneof![Just(Vec::new()), mutations()],
        random in vec(any::<u8>(), 0..200),
        use_random in prop::bool::weighted(0.2),
    ) {
        let body = if use_random {
            random
        } else {
            let mut body = seed.get(state_seeds()).clone();
            for m in &mutations {
                apply(&mut body, m);
            }
            body
        };
        must_not_panic(merge_state, &body)?;
    }
}

/// The seeds are what the oracles say they are, so the mutated bodies
/// start from accepted ones.
#[test]
fn seeds_are_accepted() {
    for s in EVENT_SEEDS {
        parse_outcomes(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    for s in EXPOSURE_SEEDS {
        parse_exposures(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    for s in INFER_SEEDS {
        decode_request(s.as_bytes(), None).unwrap_or_else(|e| panic!("{s}: {e}"));
        if let Some(general) = past_the_fast_path(s.as_bytes()) {
            decode_request(&general, None).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }
    for (json, need) in BINARY_SEEDS {
        let mut body = json.as_bytes().to_vec();
        body.resize(json.len() + need, 7);
        decode_request(&body, Some(&json.len().to_string()))
            .unwrap_or_else(|e| panic!("{json}: {e}"));
    }
    for s in grpc_seeds() {
        let req = pb::ModelInferRequest::decode(s.as_slice()).unwrap();
        tensors::decode_request(req).unwrap();
    }
    for s in state_seeds() {
        Engine::validate_state(s).unwrap();
        small_engine().merge_state(s).unwrap();
    }
}
