//! The model host end to end: the real `abmesh serve` binary, real ONNX
//! Runtime (the `onnxruntime` wheel's library), real HTTP.
//!
//! Expected outputs of the example scorer are computed here from its
//! weights (regenerated like `examples/models/make_models.py` does), not
//! taken from ONNX Runtime, so a wrong row order in batching or a datatype
//! mix-up shows as a wrong number.
//!
//! Every test returns early with a loud message if libonnxruntime cannot be
//! found, and fails instead when the `CI` variable is set.

mod model_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use abmesh_testkit::http::Client;
use abmesh_testkit::scratch_dir;
use abmesh_testkit::serve::{start_expecting_failure, Server};
use model_support::*;
use serde_json::json;

const TOLERANCE: f64 = 1e-5;

fn assert_scores(version: u64, seeds: &[u64], got: &[f64]) {
    let model = Scorer::version(version);
    assert_eq!(got.len(), seeds.len());
    for (&s, &g) in seeds.iter().zip(got) {
        let want = model.score(&features(s));
        assert!(
            (g - want).abs() < TOLERANCE,
            "version {version}, row seed {s}: got {g}, expected {want}"
        );
    }
}

#[test]
fn infer_returns_each_versions_own_outputs() {
    require_onnxruntime!();
    let server = Server::start(&["--models", example_repo().to_str().unwrap()]);
    let seeds = [1, 2, 3, 4, 5];
    let mut by_version = Vec::new();
    for v in [1, 2] {
        let r = server.post_json(
            &format!("/v2/models/scorer/versions/{v}/infer"),
            &scorer_request(&seeds),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = r.json();
        assert_eq!(body["model_name"], "scorer");
        assert_eq!(body["model_version"], v.to_string());
        let got = scores(&body);
        assert_scores(v, &seeds, &got);
        let labels = &body["outputs"][1];
        assert_eq!(labels["name"], "label");
        assert_eq!(labels["datatype"], "BOOL");
        assert_eq!(labels["shape"], json!([5, 1]));
        for (l, s) in labels["data"].as_array().unwrap().iter().zip(&got) {
            assert_eq!(l.as_bool().unwrap(), *s > 0.5);
        }
        by_version.push(got);
    }
    assert!(
        by_version[0]
            .iter()
            .zip(&by_version[1])
            .any(|(a, b)| (a - b).abs() > 1e-3),
        "versions 1 and 2 should score differently"
    );

    // Asking for one output returns just that one, with the request id.
    let mut req = scorer_request(&[9]);
    req["id"] = json!("req-42");
    req["outputs"] = json!([{"name": "score"}]);
    let body = server
        .post_json("/v2/models/scorer/versions/1/infer", &req)
        .json();
    assert_eq!(body["id"], "req-42");
    assert_eq!(body["outputs"].as_array().unwrap().len(), 1);
    assert_scores(1, &[9], &scores(&body));
}

#[test]
fn binary_tensor_extension_round_trips() {
    require_onnxruntime!();
    let server = Server::start(&["--models", example_repo().to_str().unwrap()]);
    let seeds = [11, 12, 13];
    let data: Vec<f32> = seeds.iter().flat_map(|&s| features(s)).collect();
    let input = f32_bytes(&data);

    // tritonclient's default: binary input, no outputs named, all outputs binary.
    let header = json!({
        "inputs": [{"name": "features", "shape": [3, FEATURES], "datatype": "FP32",
                    "parameters": {"binary_data_size": input.len()}}],
        "parameters": {"binary_data_output": true}
    });
    let (body, len) = binary_request(&header, &[input.as_slice()]);
    let r = server
        .client()
        .send(
            "POST",
            "/v2/models/scorer/versions/2/infer",
            &[
                ("Inference-Header-Content-Length", &len),
                ("Content-Type", "application/octet-stream"),
            ],
            &body,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let (head, blobs) = split_binary_response(&r);
    assert_eq!(head["outputs"][0]["shape"], json!([3, 1]));
    assert_eq!(blobs[0].0, "score");
    let got: Vec<f64> = f32s(&blobs[0].1).into_iter().map(f64::from).collect();
    assert_scores(2, &seeds, &got);
    assert_eq!(blobs[1].0, "label");
    assert_eq!(
        blobs[1].1,
        got.iter().map(|&s| (s > 0.5) as u8).collect::<Vec<_>>()
    );

    // Mixed: score as binary, label as JSON; the JSON-only answer agrees
    // bit for bit.
    let header = json!({
        "inputs": [{"name": "features", "shape": [3, FEATURES], "datatype": "FP32",
                    "parameters": {"binary_data_size": input.len()}}],
        "outputs": [{"name": "score", "parameters": {"binary_data": true}}, {"name": "label"}]
    });
    let (body, len) = binary_request(&header, &[input.as_slice()]);
    let r = server
        .client()
        .send(
            "POST",
            "/v2/models/scorer/versions/2/infer",
            &[("Inference-Header-Content-Length", &len)],
            &body,
        )
        .unwrap();
    let (head, blobs) = split_binary_response(&r);
    assert_eq!(blobs.len(), 1);
    assert_eq!(head["outputs"][1]["data"].as_array().unwrap().len(), 3);
    let json_scores = scores(
        &server
            .post_json(
                "/v2/models/scorer/versions/2/infer",
                &scorer_request(&seeds),
            )
            .json(),
    );
    let bin_scores = f32s(&blobs[0].1);
    for (j, b) in json_scores.iter().zip(&bin_scores) {
        assert_eq!(*j as f32, *b, "JSON and binary outputs agree exactly");
    }
}

#[test]
fn common_datatypes_in_json_and_binary() {
    require_onnxruntime!();
    let server = Server::start(&["--models", example_repo().to_str().unwrap()]);
    let f16 = |v: f32| half::f16::from_f32(v).to_le_bytes();
    let req = json!({"inputs": [
        {"name": "i64", "shape": [2, 2], "datatype": "INT64", "data": [[1, -2], [3, 9007199254740993i64]]},
        {"name": "f64", "shape": [2, 2], "datatype": "FP64", "data": [0.1, 2.5, -3.0, 1e300]},
        {"name": "flag", "shape": [2, 1], "datatype": "BOOL", "data": [true, false]},
        {"name": "i32", "shape": [2, 2], "datatype": "INT32", "data": [1, -2, 2147483647, -2147483647]},
        {"name": "f16", "shape": [2, 2], "datatype": "FP16", "data": [1.0, 3.0, -0.5, 100.0]},
        {"name": "u8", "shape": [2, 2], "datatype": "UINT8", "data": [0, 1, 254, 255]}
    ]});
    let r = server.post_json("/v2/models/dtypes/infer", &req);
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let out = |name: &str| {
        body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        out("i64_plus_1")["data"],
        json!([2, -1, 4, 9007199254740994i64])
    );
    assert_eq!(out("i64_plus_1")["datatype"], "INT64");
    assert_eq!(out("f64_times_2")["data"], json!([0.2, 5.0, -6.0, 2e300]));
    assert_eq!(out("flag_not")["data"], json!([false, true]));
    assert_eq!(
        out("i32_neg")["data"],
        json!([-1, 2, -2147483647, 2147483647])
    );
    assert_eq!(out("f16_half")["data"], json!([0.5, 1.5, -0.25, 50.0]));
    assert_eq!(out("u8_plus_1")["data"], json!([1, 2, 255, 0]));

    // The same through the binary extension, all outputs binary.
    let i64s: Vec<u8> = [5i64, 6, -7, 8]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let f64s: Vec<u8> = [1.5f64, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let flags = [0u8, 1];
    let i32s: Vec<u8> = [7i32, -8, 9, 10]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let f16s: Vec<u8> = [2.0f32, 4.0, 6.0, 8.0]
        .iter()
        .flat_map(|&v| f16(v))
        .collect();
    let u8s = [10u8, 20, 30, 40];
    let tensors: [(&str, &str, &[usize], &[u8]); 6] = [
        ("i64", "INT64", &[2, 2], &i64s),
        ("f64", "FP64", &[2, 2], &f64s),
        ("flag", "BOOL", &[2, 1], &flags),
        ("i32", "INT32", &[2, 2], &i32s),
        ("f16", "FP16", &[2, 2], &f16s),
        ("u8", "UINT8", &[2, 2], &u8s),
    ];
    let header = json!({
        "inputs": tensors.iter().map(|(n, d, s, b)| json!({
            "name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": b.len()}
        })).collect::<Vec<_>>(),
        "parameters": {"binary_data_output": true}
    });
    let blobs_in: Vec<&[u8]> = tensors.iter().map(|t| t.3).collect();
    let (body, len) = binary_request(&header, &blobs_in);
    let r = server
        .client()
        .send(
            "POST",
            "/v2/models/dtypes/versions/1/infer",
            &[("Inference-Header-Content-Length", &len)],
            &body,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, blobs) = split_binary_response(&r);
    let blob = |name: &str| blobs.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(
        blob("i64_plus_1"),
        [6i64, 7, -6, 9]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        blob("f64_times_2"),
        [3.0f64, 4.0, 6.0, 8.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>()
    );
    assert_eq!(blob("flag_not"), vec![1, 0]);
    assert_eq!(
        blob("i32_neg"),
        [-7i32, 8, -9, -10]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        blob("f16_half"),
        [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|&v| f16(v))
            .collect::<Vec<_>>()
    );
    assert_eq!(blob("u8_plus_1"), vec![11, 21, 31, 41]);
}

#[test]
fn health_metadata_and_the_latest_version() {
    require_onnxruntime!();
    let server = Server::start(&["--models", example_repo().to_str().unwrap()]);
    assert_eq!(server.get("/v2/health/live").json(), json!({"live": true}));
    assert_eq!(
        server.get("/v2/health/ready").json(),
        json!({"ready": true})
    );
    let meta = server.get("/v2").json();
    assert_eq!(meta["name"], "abmesh");
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));

    let m = server.get("/v2/models/scorer").json();
    assert_eq!(m["versions"], json!(["1", "2", "3"]));
    assert_eq!(m["platform"], "onnxruntime_onnx");
    assert_eq!(
        m["inputs"],
        json!([{"name": "features", "datatype": "FP32", "shape": [-1, 16]}])
    );
    assert_eq!(
        m["outputs"],
        json!([{"name": "score", "datatype": "FP32", "shape": [-1, 1]},
               {"name": "label", "datatype": "BOOL", "shape": [-1, 1]}])
    );
    assert_eq!(server.get("/v2/models/scorer/versions/1").status, 200);
    assert_eq!(
        server.get("/v2/models/scorer/versions/1/ready").json(),
        json!({"name": "scorer", "ready": true})
    );
    assert_eq!(server.get("/v2/models/scorer/ready").status, 200);
    assert_eq!(server.get("/v2/models/nope/ready").status, 404);
    assert_eq!(server.get("/v2/models/scorer/versions/9/ready").status, 404);

    // No version: the highest loaded one (3, the faulty release, which has
    // version 2's weights and fails only on rows whose first feature > 0.4).
    let r = server
        .post_json("/v2/models/scorer/infer", &scorer_request(&[4]))
        .json();
    assert_eq!(r["model_version"], "3");
    assert_scores(2, &[4], &scores(&r));

    // A run-time failure inside ONNX Runtime is a 500 that says so, and the
    // version keeps serving rows it can run.
    let mut bad = scorer_request(&[4]);
    bad["inputs"][0]["data"][0] = json!(0.9);
    let r = server.post_json("/v2/models/scorer/versions/3/infer", &bad);
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.error().contains("Gather"), "{}", r.error());
    let r = server.post_json("/v2/models/scorer/versions/3/infer", &scorer_request(&[4]));
    assert_eq!(r.status, 200);

    let r = server.get("/v2/models/scorer/infer");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = server.get("/nowhere");
    assert_eq!(
        (r.status, r.error()),
        (404, "no endpoint GET /nowhere".to_string())
    );
}

#[test]
fn malformed_requests_get_a_4xx_that_says_what_is_wrong() {
    require_onnxruntime!();
    let server = Server::start(&[
        "--models",
        example_repo().to_str().unwrap(),
        "--body-limit",
        "64KiB",
    ]);
    let infer = "/v2/models/scorer/versions/2/infer";
    let ok = scorer_request(&[1]);
    let mut conn = server.client();
    let mut check =
        |path: &str, body: Vec<u8>, headers: &[(&str, &str)], status: u16, message: &str| {
            let r = conn.send("POST", path, headers, &body).unwrap();
            assert_eq!(r.status, status, "{}", r.text());
            let e = r.error();
            assert!(
                e.contains(message),
                "error {e:?} should contain {message:?}"
            );
            // The same connection still serves a good request.
            let r = conn
                .send("POST", infer, &[], ok.to_string().as_bytes())
                .unwrap();
            assert_eq!(r.status, 200, "after {message:?}: {}", r.text());
        };
    let features15: Vec<f32> = vec![0.5; 15];
    let cases: Vec<(&str, serde_json::Value, u16, &str)> = vec![
        (infer, json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "INT32", "data": vec![1; 16]}]}), 400,
         "input 'features': datatype INT32 does not match the model's FP32"),
        (infer, json!({"inputs": [{"name": "features", "shape": [1, 15], "datatype": "FP32", "data": features15}]}), 400,
         "input 'features': shape [1,15] does not match the model's [-1,16]: dimension 1 is 15, expected 16"),
        (infer, json!({"inputs": [{"name": "features", "shape": [16], "datatype": "FP32", "data": vec![0.5; 16]}]}), 400,
         "input 'features': shape [16] does not match the model's [-1,16]: rank 1 where the model expects rank 2"),
        (infer, json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": vec![0.5; 15]}]}), 400,
         "input 'features': data has 15 elements but the shape needs 16"),
        (infer, json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP33", "data": vec![0.5; 16]}]}), 400,
         "input 'features': unknown datatype \"FP33\""),
        (infer, json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": ["a"]}]}), 400,
         "input 'features': invalid type: string \"a\""),
        (infer, json!({"inputs": [{"name": "feats", "shape": [1, 16], "datatype": "FP32", "data": vec![0.5; 16]}]}), 400,
         "unknown input 'feats'; the model's inputs are 'features' (FP32 [-1,16])"),
        (infer, json!({"inputs": []}), 400, "missing input 'features' (FP32 [-1,16])"),
        (infer, json!({"input": []}), 400, "missing field `inputs`"),
        (infer, json!({"inputs": scorer_request(&[1])["inputs"], "outputs": [{"name": "nope"}]}), 400,
         "unknown output 'nope'"),
        ("/v2/models/nope/infer", ok.clone(), 404, "unknown model 'nope'"),
        ("/v2/models/scorer/versions/9/infer", ok.clone(), 404, "model 'scorer' has no version '9' loaded"),
        ("/v2/models/scorer/versions/latest/infer", ok.clone(), 404, "has no version 'latest'"),
    ];
    for (path, body, status, message) in cases {
        check(path, body.to_string().into_bytes(), &[], status, message);
    }
    check(
        infer,
        b"{\"inputs\": [".to_vec(),
        &[],
        400,
        "invalid inference request JSON: EOF while parsing",
    );
    check(
        infer,
        b"not json".to_vec(),
        &[],
        400,
        "invalid inference request JSON: expected ident",
    );

    // Binary extension mistakes.
    let header = json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32",
                                    "parameters": {"binary_data_size": 64}}]});
    let (body, len) = binary_request(&header, &[&[0u8; 60][..]]);
    check(
        infer,
        body,
        &[("Inference-Header-Content-Length", &len)],
        400,
        "input 'features': binary_data_size 64 runs past the end of the body",
    );
    let (body, _) = binary_request(&header, &[&[0u8; 64][..]]);
    check(
        infer,
        body.clone(),
        &[],
        400,
        "invalid inference request JSON",
    );
    check(
        infer,
        body,
        &[("Inference-Header-Content-Length", "99999")],
        400,
        "Inference-Header-Content-Length is 99999 but the body has only",
    );

    // Over the body limit: 413, and the connection stays usable.
    let big = vec![b' '; 100 << 10];
    check(
        infer,
        big,
        &[],
        413,
        "request body of 102400 bytes is over the limit of 65536 bytes",
    );

    // Errors are counted per version.
    let metrics = server.get("/metrics").text();
    let invalid = metric(
        &metrics,
        "abmesh_model_errors_total{model=\"scorer\",version=\"2\",kind=\"invalid_request\"}",
    );
    assert_eq!(invalid, 16.0, "invalid requests counted\n{metrics}");
    assert_eq!(server.get("/v2/health/live").status, 200);
}

/// Errors quote the request's values clipped to 200 bytes: a 10 MB input
/// name, output name or datatype, a long model name or version in the path,
/// a long header value; each error body stays under 1 KB.
#[test]
fn error_bodies_quote_long_values_clipped() {
    require_onnxruntime!();
    let server = Server::start(&["--models", example_repo().to_str().unwrap()]);
    let mut conn = server.client();
    let long = "n".repeat(10 << 20);
    let ok = scorer_request(&[1]);
    let mut long_output = ok.clone();
    long_output["outputs"] = json!([{"name": long}]);
    let cases = [
        (
            "/v2/models/scorer/infer".to_owned(),
            json!({"inputs": [{"name": long, "shape": [1, 16], "datatype": "FP32", "data": vec![0.5; 16]}]}),
            400,
            format!(
                "unknown input '{}… ({} bytes)'",
                "n".repeat(200),
                long.len()
            ),
        ),
        (
            "/v2/models/scorer/infer".to_owned(),
            json!({"inputs": [{"name": "features", "shape": [1, 16], "datatype": long, "data": vec![0.5; 16]}]}),
            400,
            format!(
                "unknown datatype \"{}\"… ({} bytes)",
                "n".repeat(200),
                long.len()
            ),
        ),
        (
            "/v2/models/scorer/infer".to_owned(),
            long_output,
            400,
            format!(
                "unknown output '{}… ({} bytes)'",
                "n".repeat(200),
                long.len()
            ),
        ),
        (
            format!("/v2/models/{}/infer", "m".repeat(60_000)),
            ok.clone(),
            404,
            format!("unknown model '{}… (60000 bytes)'", "m".repeat(200)),
        ),
        (
            format!("/v2/models/scorer/versions/{}/infer", "9".repeat(60_000)),
            ok.clone(),
            404,
            format!(
                "model 'scorer' has no version '{}… (60000 bytes)' loaded",
                "9".repeat(200)
            ),
        ),
    ];
    for (path, body, status, message) in cases {
        let r = conn
            .send("POST", &path, &[], body.to_string().as_bytes())
            .unwrap();
        assert_eq!(r.status, status, "{}", &r.text()[..r.text().len().min(300)]);
        assert!(r.body.len() < 1024, "{} bytes of error body", r.body.len());
        let e = r.error();
        assert!(
            e.contains(&message),
            "error {e:?} should contain {message:?}"
        );
    }
    let r = conn
        .send(
            "POST",
            "/v2/models/scorer/infer",
            &[("Content-Encoding", &"z".repeat(30_000))],
            ok.to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 415);
    assert!(r.body.len() < 1024, "{} bytes of error body", r.body.len());
    let r = conn
        .send(
            "POST",
            "/v2/models/scorer/infer",
            &[("Inference-Header-Content-Length", &"7".repeat(30_000))],
            ok.to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.len() < 1024, "{} bytes of error body", r.body.len());
    assert_eq!(
        conn.send(
            "POST",
            "/v2/models/scorer/infer",
            &[],
            ok.to_string().as_bytes()
        )
        .unwrap()
        .status,
        200
    );
}

/// The value of one sample line of the Prometheus text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

#[test]
fn concurrent_requests_are_batched_and_each_gets_its_own_rows() {
    require_onnxruntime!();
    // One session and a generous queue delay: concurrent requests must merge.
    let server = Server::start(&[
        "--models",
        example_repo().to_str().unwrap(),
        "--instances",
        "1",
        "--max-batch-size",
        "16",
        "--max-queue-delay-us",
        "200000",
    ]);
    let rounds = 3;
    for round in 0..rounds {
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let port = server.port;
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    // Requests of 1, 2 and 3 rows, each with its own seeds.
                    let rows = 1 + (i % 3) as u64;
                    let seeds: Vec<u64> =
                        (0..rows).map(|r| 100 * round + 10 * i as u64 + r).collect();
                    let body = scorer_request(&seeds).to_string();
                    let mut c = Client::connect(port);
                    barrier.wait();
                    let r = c
                        .send(
                            "POST",
                            "/v2/models/scorer/versions/1/infer",
                            &[],
                            body.as_bytes(),
                        )
                        .unwrap();
                    assert_eq!(r.status, 200, "{}", r.text());
                    assert_scores(1, &seeds, &scores(&r.json()));
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
    let m = server.get("/metrics").text();
    let runs = metric(
        &m,
        "abmesh_model_batch_size_count{model=\"scorer\",version=\"1\"}",
    );
    let rows = metric(
        &m,
        "abmesh_model_batch_size_sum{model=\"scorer\",version=\"1\"}",
    );
    let rows_sent: usize = (0..8).map(|i| 1 + i % 3).sum::<usize>() * rounds as usize;
    assert_eq!(rows, rows_sent as f64, "every row ran once");
    assert!(
        runs < 3.0 * 8.0,
        "requests were merged: {runs} runs for 24 requests"
    );
    let queued = metric(
        &m,
        "abmesh_model_queue_duration_seconds_count{model=\"scorer\",version=\"1\"}",
    );
    assert_eq!(queued, 24.0);
    assert_eq!(
        metric(
            &m,
            "abmesh_model_requests_total{model=\"scorer\",version=\"1\"}"
        ),
        24.0
    );
    assert_eq!(
        metric(
            &m,
            "abmesh_model_request_duration_seconds_count{model=\"scorer\",version=\"1\"}"
        ),
        24.0
    );
    assert_eq!(
        metric(&m, "abmesh_model_loaded{model=\"scorer\",version=\"1\"}"),
        1.0
    );
}

#[test]
fn load_unload_and_reload_under_concurrent_traffic() {
    require_onnxruntime!();
    // The worker-thread path (inline is the default for small models).
    reload_under_traffic(&["--inline-max-us", "0"]);
}

/// The same with the inline fast path on: most requests run on the HTTP
/// threads, holding the version while they run.
#[test]
fn load_unload_and_reload_under_concurrent_traffic_inline() {
    require_onnxruntime!();
    reload_under_traffic(&["--inline-max-us", "1000"]);
}

fn reload_under_traffic(extra: &[&str]) {
    let repo = scratch_repo();
    let mut args = vec![
        "--models",
        repo.path().to_str().unwrap(),
        "--instances",
        "2",
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let port = server.port;
    let stop = Arc::new(AtomicBool::new(false));
    let v1_ok = Arc::new(AtomicUsize::new(0));
    let v2_ok = Arc::new(AtomicUsize::new(0));
    let v2_gone = Arc::new(AtomicUsize::new(0));

    // Four clients on version 1, which stays loaded (and is reloaded):
    // every one of their requests must succeed with version 1's outputs.
    let mut traffic = Vec::new();
    for t in 0..4u64 {
        let (stop, ok) = (stop.clone(), v1_ok.clone());
        traffic.push(std::thread::spawn(move || {
            let mut c = Client::connect(port);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let seeds = [t * 1000 + i % 50];
                let r = c
                    .send(
                        "POST",
                        "/v2/models/scorer/versions/1/infer",
                        &[],
                        scorer_request(&seeds).to_string().as_bytes(),
                    )
                    .unwrap_or_else(|e| panic!("version 1 request failed: {e}"));
                assert_eq!(r.status, 200, "version 1 request failed: {}", r.text());
                assert_scores(1, &seeds, &scores(&r.json()));
                ok.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    // One client on version 2, which is unloaded and loaded again: a 404
    // while it is out, and otherwise version 2's outputs.
    {
        let (stop, ok, gone) = (stop.clone(), v2_ok.clone(), v2_gone.clone());
        traffic.push(std::thread::spawn(move || {
            let mut c = Client::connect(port);
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .send(
                        "POST",
                        "/v2/models/scorer/versions/2/infer",
                        &[],
                        scorer_request(&[7]).to_string().as_bytes(),
                    )
                    .unwrap();
                match r.status {
                    200 => {
                        assert_scores(2, &[7], &scores(&r.json()));
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    404 => {
                        assert!(r.error().contains("no version '2' loaded"), "{}", r.text());
                        gone.fetch_add(1, Ordering::Relaxed);
                    }
                    s => panic!("version 2: unexpected {s}: {}", r.text()),
                }
            }
        }));
    }

    let admin = |action: &str, version: u64| {
        server.admin_send(
            "POST",
            &format!("/admin/models/scorer/versions/{version}/{action}"),
            b"",
        )
    };
    std::thread::sleep(Duration::from_millis(300));

    // A new version dropped into the repository, then loaded.
    copy_dir(&repo.path().join("scorer/1"), &repo.path().join("scorer/4"));
    let r = admin("load", 4);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["action"], "loaded");
    assert_eq!(admin("load", 4).json()["action"], "already_loaded");
    let r = server
        .post_json("/v2/models/scorer/infer", &scorer_request(&[5]))
        .json();
    assert_eq!(r["model_version"], "4", "the new version is the latest");
    assert_scores(1, &[5], &scores(&r)); // a copy of version 1's file

    // Version 1 reloaded repeatedly while its clients keep going.
    for _ in 0..5 {
        let r = admin("reload", 1);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["action"], "reloaded");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Version 2 out and back in.
    let r = admin("unload", 2);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "UNAVAILABLE");
    std::thread::sleep(Duration::from_millis(300));
    let r = admin("unload", 2);
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "model 'scorer' version 2 is not loaded");
    let listed = server.admin_get("/admin/models").json();
    let state_of = |v: u64| {
        listed["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "scorer" && m["version"] == v)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state_of(1), "READY");
    assert_eq!(state_of(2), "UNAVAILABLE");
    assert_eq!(state_of(4), "READY");
    assert_eq!(admin("load", 2).status, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(admin("unload", 4).status, 200);
    assert_eq!(admin("reload", 1).status, 200);
    std::thread::sleep(Duration::from_millis(300));

    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.join().expect("a client saw a failure");
    }
    assert!(
        v1_ok.load(Ordering::Relaxed) > 50,
        "version 1 served traffic"
    );
    assert!(
        v2_gone.load(Ordering::Relaxed) > 0,
        "version 2 was out for a while"
    );
    assert!(v2_ok.load(Ordering::Relaxed) > 0);

    // A broken file: the reload fails, the old version keeps serving.
    std::fs::write(
        repo.path().join("scorer/2/model.onnx"),
        b"not an onnx model",
    )
    .unwrap();
    let r = admin("reload", 2);
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.error().contains("scorer/2/model.onnx"), "{}", r.text());
    let r = server.post_json("/v2/models/scorer/versions/2/infer", &scorer_request(&[8]));
    assert_eq!(r.status, 200);
    assert_scores(2, &[8], &scores(&r.json()));
    // Unknown and malformed admin targets.
    assert_eq!(admin("load", 9).status, 404);
    assert_eq!(
        server
            .admin_send("POST", "/admin/models/..%2Fx/versions/1/load", b"")
            .status,
        400
    );
    let html = server
        .admin_client()
        .send("GET", "/admin/models", &[("Accept", "text/html")], b"")
        .unwrap();
    assert!(html
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(html.text().contains("<td>scorer</td>"));
}

#[test]
fn device_cuda_fails_fast_when_cuda_is_unavailable() {
    require_onnxruntime!();
    let started = Instant::now();
    let repo = example_repo();
    let outcome = start_expecting_failure(
        &["--models", repo.to_str().unwrap(), "--device", "cuda"],
        &[],
        Duration::from_secs(60),
    );
    let Some((code, log)) = outcome else {
        eprintln!("CUDA is usable on this machine: nothing to fail on");
        return;
    };
    assert_ne!(code, 0);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(log.contains("abmesh: --device cuda:0: "), "{log}");
    assert!(
        log.contains("built without CUDA support")
            || log.contains("has no CUDA execution provider"),
        "{log}"
    );
    assert!(
        !log.contains("loaded model"),
        "no model is loaded first: {log}"
    );
}

#[test]
fn device_auto_falls_back_to_cpu_and_says_so() {
    require_onnxruntime!();
    let server = Server::start(&[
        "--models",
        example_repo().to_str().unwrap(),
        "--device",
        "auto",
    ]);
    let logs = server.logs();
    if logs.contains("device auto: using CUDA") {
        eprintln!("CUDA is usable on this machine: no fallback to see");
        return;
    }
    assert!(
        logs.contains("device auto: CUDA is not available, falling back to CPU"),
        "{logs}"
    );
    assert!(logs.contains("models run on cpu"), "{logs}");
    let r = server.post_json("/v2/models/scorer/versions/1/infer", &scorer_request(&[1]));
    assert_eq!(r.status, 200);
    assert_eq!(server.admin_get("/admin/models").json()["device"], "cpu");
}

#[test]
fn a_missing_or_wrong_onnxruntime_library_is_a_clear_startup_error() {
    let repo = example_repo();
    let args = ["--models", repo.to_str().unwrap()];
    let (code, log) = start_expecting_failure(
        &args,
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1")],
        Duration::from_secs(30),
    )
    .expect("cannot start without the library");
    assert_ne!(code, 0);
    assert!(
        log.contains("ONNX Runtime library /nonexistent/libonnxruntime.so.1.31.1 (from --ort-library / ORT_DYLIB_PATH) does not exist"),
        "{log}"
    );
    // A file that is not a shared library.
    let not_a_lib = repo.join("scorer/1/model.onnx");
    let (code, log) = start_expecting_failure(
        &[
            "--models",
            repo.to_str().unwrap(),
            "--ort-library",
            not_a_lib.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(30),
    )
    .expect("cannot start with a bad library");
    assert_ne!(code, 0);
    assert!(log.contains("loading ONNX Runtime from"), "{log}");
}

/// The real `light` squeezenet and resnet50 from the `onnx` wheel, checked
/// against the reference outputs shipped beside them (computed by ONNX's
/// reference evaluator on the input `arange(n) / n`).
#[test]
fn squeezenet_and_resnet50_from_the_onnx_wheel() {
    require_onnxruntime!();
    let Some(onnx_dir) = onnx_package_dir() else {
        if std::env::var_os("CI").is_some() {
            panic!("the onnx Python package is required when CI is set (pip install onnx)");
        }
        eprintln!("\n========== SKIPPED: the onnx Python package is not installed (pip install onnx) ==========\n");
        return;
    };
    let light = onnx_dir.join("backend/test/data/light");
    let repo = scratch_dir("light");
    for name in ["squeezenet", "resnet50"] {
        let dir = repo.path().join(name).join("1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            light.join(format!("light_{name}.onnx")),
            dir.join("model.onnx"),
        )
        .unwrap();
    }
    let server = Server::start(&[
        "--models",
        repo.path().to_str().unwrap(),
        "--intra-op-threads",
        "2",
    ]);
    for (name, input, output) in [
        ("squeezenet", "data_0", "softmaxout_1"),
        ("resnet50", "gpu_0/data_0", "gpu_0/softmax_1"),
    ] {
        let meta = server.get(&format!("/v2/models/{name}")).json();
        assert_eq!(meta["inputs"][0]["name"], input, "{meta}");
        assert_eq!(meta["inputs"][0]["shape"], json!([1, 3, 224, 224]));
        assert_eq!(meta["outputs"][0]["name"], output);

        let n = 3 * 224 * 224;
        let x: Vec<f32> = (0..n).map(|i| (i as f64 / n as f64) as f32).collect();
        let (ref_dims, ref_raw) = read_tensor_proto(
            &std::fs::read(light.join(format!("light_{name}_output_0.pb"))).unwrap(),
        );
        let reference = f32s(&ref_raw);

        let bytes = f32_bytes(&x);
        let header = json!({
            "inputs": [{"name": input, "shape": [1, 3, 224, 224], "datatype": "FP32",
                        "parameters": {"binary_data_size": bytes.len()}}],
            "outputs": [{"name": output, "parameters": {"binary_data": true}}]
        });
        let (body, len) = binary_request(&header, &[bytes.as_slice()]);
        let r = server
            .client()
            .send(
                "POST",
                &format!("/v2/models/{name}/versions/1/infer"),
                &[("Inference-Header-Content-Length", &len)],
                &body,
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let (head, blobs) = split_binary_response(&r);
        assert_eq!(head["outputs"][0]["shape"], json!(ref_dims));
        let got = f32s(&blobs[0].1);
        assert_eq!(got.len(), reference.len());
        for (g, w) in got.iter().zip(&reference) {
            assert!(
                (g - w).abs() <= 1e-6 + 1e-4 * w.abs(),
                "{name}: {g} vs reference {w}"
            );
        }
        if name == "squeezenet" {
            // 150 528 numbers as JSON give the same answer.
            let req = json!({"inputs": [{"name": input, "shape": [1, 3, 224, 224], "datatype": "FP32", "data": x}]});
            let r = server.post_json("/v2/models/squeezenet/infer", &req);
            assert_eq!(r.status, 200);
            let data: Vec<f32> = r.json()["outputs"][0]["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(data, got);
        }
    }
}
