//! Helpers for the model host tests: scratch model repositories, the
//! example scorer's expected outputs, binary tensor bodies, and the gate
//! that decides whether ONNX Runtime is there at all. Starting `abmesh
//! serve` and the HTTP client are `abmesh_testkit`'s.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use abmesh_testkit::http::Response;

/// Returns from the test (after a loud message) when ONNX Runtime cannot be
/// found; fails instead when `CI` is set, where it must be installed.
#[macro_export]
macro_rules! require_onnxruntime {
    () => {
        if !$crate::model_support::onnxruntime_available() {
            return;
        }
    };
}

pub fn onnxruntime_available() -> bool {
    let explicit = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    match abmesh_model_host::dylib::locate(explicit.as_deref()) {
        Ok(_) => true,
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("ONNX Runtime is required when CI is set: {e}");
            }
            eprintln!(
                "\n==================== SKIPPED: ONNX Runtime not found ====================\n\
                 {e}\n\
                 =========================================================================\n"
            );
            false
        }
    }
}

/// The example repository committed under `examples/models/repo`.
pub fn example_repo() -> PathBuf {
    abmesh_testkit::repo_root().join("examples/models/repo")
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A scratch copy of the example repository (tests that change it).
pub fn scratch_repo() -> tempfile::TempDir {
    let t = abmesh_testkit::scratch_dir("repo");
    copy_dir(&example_repo(), t.path());
    t
}

/// Builds a binary-extension request body: JSON header then raw tensors.
/// Returns the body and the header length for `Inference-Header-Content-Length`.
pub fn binary_request(json: &serde_json::Value, tensors: &[&[u8]]) -> (Vec<u8>, String) {
    let mut body = json.to_string().into_bytes();
    let n = body.len();
    for t in tensors {
        body.extend_from_slice(t);
    }
    (body, n.to_string())
}

/// Splits a binary-extension response into its JSON header and the binary
/// data of each output that has some.
pub fn split_binary_response(r: &Response) -> (serde_json::Value, Vec<(String, Vec<u8>)>) {
    let n: usize = r
        .header("inference-header-content-length")
        .expect("binary response")
        .parse()
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&r.body[..n]).unwrap();
    let mut at = n;
    let mut out = Vec::new();
    for o in header["outputs"].as_array().unwrap() {
        if let Some(size) = o["parameters"]["binary_data_size"].as_u64() {
            let size = size as usize;
            out.push((
                o["name"].as_str().unwrap().to_owned(),
                r.body[at..at + size].to_vec(),
            ));
            at += size;
        }
    }
    assert_eq!(at, r.body.len(), "binary data adds up to the body");
    (header, out)
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The example scorer's weights, regenerated exactly as
/// `examples/models/make_models.py` makes them, and its forward pass in
/// f64: an expectation that does not come from ONNX Runtime.
pub struct Scorer {
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: f32,
}

pub const FEATURES: usize = 16;
const HIDDEN: usize = 32;

fn lcg_weights(seed: u64, n: usize, scale: f64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            ((u * 2.0 - 1.0) * scale) as f32
        })
        .collect()
}

impl Scorer {
    pub fn version(v: u64) -> Scorer {
        let seed = 1000 * v;
        Scorer {
            w1: lcg_weights(seed + 1, FEATURES * HIDDEN, 0.5),
            b1: lcg_weights(seed + 2, HIDDEN, 0.1),
            w2: lcg_weights(seed + 3, HIDDEN, 0.5),
            b2: lcg_weights(seed + 4, 1, 0.1)[0],
        }
    }

    pub fn score(&self, x: &[f32]) -> f64 {
        assert_eq!(x.len(), FEATURES);
        let mut logit = self.b2 as f64;
        for j in 0..HIDDEN {
            let mut h = self.b1[j] as f64;
            for (i, xi) in x.iter().enumerate() {
                h += *xi as f64 * self.w1[i * HIDDEN + j] as f64;
            }
            logit += h.max(0.0) * self.w2[j] as f64;
        }
        1.0 / (1.0 + (-logit).exp())
    }
}

/// A deterministic feature row.
pub fn features(seed: u64) -> Vec<f32> {
    (0..FEATURES)
        .map(|i| (((seed * 31 + i as u64 * 7) % 23) as f32 - 11.0) / 7.0)
        .collect()
}

/// A KServe JSON infer request for the scorer, one row per seed.
pub fn scorer_request(seeds: &[u64]) -> serde_json::Value {
    let data: Vec<f32> = seeds.iter().flat_map(|&s| features(s)).collect();
    serde_json::json!({
        "inputs": [{"name": "features", "shape": [seeds.len(), FEATURES], "datatype": "FP32", "data": data}]
    })
}

/// The `score` output of a JSON response.
pub fn scores(resp: &serde_json::Value) -> Vec<f64> {
    let out = resp["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "score")
        .unwrap_or_else(|| panic!("no score output in {resp}"));
    out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// The folder of the installed `onnx` Python package (which ships the
/// `light` test models), if python3 can find it.
pub fn onnx_package_dir() -> Option<PathBuf> {
    let out = Command::new(abmesh_testkit::python())
        .args([
            "-c",
            "import importlib.util as u, os; s = u.find_spec('onnx'); print(os.path.dirname(s.origin) if s else '')",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// Reads the `dims` and `raw_data` of a serialized ONNX `TensorProto` (the
/// reference outputs of the `light` models): just enough protobuf.
pub fn read_tensor_proto(bytes: &[u8]) -> (Vec<i64>, Vec<u8>) {
    fn varint(b: &[u8], at: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = b[*at];
            *at += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }
    let (mut dims, mut raw) = (Vec::new(), Vec::new());
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at);
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = varint(bytes, &mut at);
                if field == 1 {
                    dims.push(v as i64);
                }
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = varint(bytes, &mut at) as usize;
                let payload = &bytes[at..at + len];
                at += len;
                match field {
                    1 => {
                        let mut p = 0;
                        while p < payload.len() {
                            dims.push(varint(payload, &mut p) as i64);
                        }
                    }
                    9 => raw = payload.to_vec(),
                    _ => {}
                }
            }
            w => panic!("unexpected protobuf wire type {w}"),
        }
    }
    (dims, raw)
}
