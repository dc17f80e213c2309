//! Inference requests and responses, in JSON and in the binary tensor
//! extension.
//!
//! With the extension (what `tritonclient` sends by default) the body is a
//! JSON header of `Inference-Header-Content-Length` bytes followed by the raw
//! bytes of the inputs that carry a `binary_data_size` parameter, in the
//! order of the `inputs` array. Responses mirror it: outputs asked for as
//! binary (`"binary_data": true` on the output, or `binary_data_output` on
//! the request when it names no outputs) follow the JSON header, and the
//! response says where the header ends with the same HTTP header.

use super::json::{self, JsonData};
use super::request::{BinaryOutputs, DecodedRequest};
use super::types::InferRequest;
use crate::datatype::DataType;
use crate::tensor::format_shape;
use crate::tensor::{NamedTensor, OutputTensor, Tensor};
use abmesh_common::quote::{bound, clip};

/// The HTTP header that splits a body into JSON and binary parts.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Why a request body could not be decoded. The messages are meant for the
/// client, who gets them in a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid Inference-Header-Content-Length {:?}: expected a byte count", clip(.0))]
    BadHeaderLength(String),
    #[error("Inference-Header-Content-Length is {header} but the body has only {body} bytes")]
    HeaderPastBody { header: usize, body: usize },
    #[error("invalid inference request JSON: {0}")]
    Json(String),
    #[error("input '{}': {problem}", clip(.name))]
    Input { name: String, problem: String },
    #[error("output '{}': the classification extension is not supported", clip(.name))]
    Classification { name: String },
    #[error("{0} bytes of binary data follow the last binary input")]
    TrailingBinary(usize),
}

/// Decodes a request body; `header_length` is the value of the
/// `Inference-Header-Content-Length` header, if any.
pub fn decode_request(
    body: &[u8],
    header_length: Option<&str>,
) -> Result<DecodedRequest, DecodeError> {
    if header_length.is_none() {
        if let Some(request) = super::fast::decode_json_request(body) {
            return Ok(request);
        }
    }
    let (json, mut binary) = match header_length {
        None => (body, &[][..]),
        Some(h) => {
            let n: usize = h
                .trim()
                .parse()
                .map_err(|_| DecodeError::BadHeaderLength(h.to_owned()))?;
            if n > body.len() {
                return Err(DecodeError::HeaderPastBody {
                    header: n,
                    body: body.len(),
                });
            }
            body.split_at(n)
        }
    };
    // serde's messages quote the offending value whole.
    let request: InferRequest<'_> =
        serde_json::from_slice(json).map_err(|e| DecodeError::Json(bound(e.to_string())))?;

    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let problem = |problem: String| DecodeError::Input {
            name: input.name.clone(),
            problem,
        };
        let datatype = DataType::parse(&input.datatype).map_err(|e| problem(e.to_string()))?;
        let mut shape = Vec::with_capacity(input.shape.len());
        for &d in &input.shape {
            let d = usize::try_from(d).map_err(|_| {
                problem(format!(
                    "shape {} has a negative dimension",
                    clip(&format_shape(&input.shape))
                ))
            })?;
            shape.push(d);
        }
        let count = Tensor::element_count(&shape)
            .filter(|n| n.checked_mul(datatype.size()).is_some())
            .ok_or_else(|| {
                problem(format!(
                    "shape {} is too large",
                    clip(&format_shape(&shape))
                ))
            })?;
        let bytes = count * datatype.size();
        let data = match (input.parameters.binary_data_size, input.data) {
            (Some(_), Some(_)) => {
                return Err(problem(
                    "has both `data` and a binary_data_size parameter".into(),
                ))
            }
            (None, None) => {
                return Err(problem(
                    "has no data: give `data`, or a binary_data_size parameter and the bytes after the JSON header"
                        .into(),
                ))
            }
            (None, Some(raw)) => json::decode(raw, datatype, count).map_err(|e| problem(e.to_string()))?,
            (Some(size), None) => {
                if header_length.is_none() {
                    return Err(problem(
                        "has a binary_data_size parameter but the request has no Inference-Header-Content-Length header"
                            .into(),
                    ));
                }
                if size != bytes as u64 {
                    return Err(problem(format!(
                        "binary_data_size is {size} bytes, but shape {} of {datatype} needs {bytes}",
                        clip(&format_shape(&shape))
                    )));
                }
                if bytes > binary.len() {
                    return Err(problem(format!(
                        "binary_data_size {bytes} runs past the end of the body ({} bytes of binary data left)",
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(bytes);
                binary = rest;
                mine.to_vec()
            }
        };
        inputs.push(NamedTensor {
            name: input.name,
            tensor: Tensor {
                datatype,
                shape,
                data,
            },
        });
    }
    if !binary.is_empty() {
        return Err(DecodeError::TrailingBinary(binary.len()));
    }

    let default_binary = request.parameters.binary_data_output.unwrap_or(false);
    let (outputs, binary) = match request.outputs {
        None => (
            None,
            if default_binary {
                BinaryOutputs::All
            } else {
                BinaryOutputs::None
            },
        ),
        Some(outs) => {
            let mut names = Vec::with_capacity(outs.len());
            let mut bin = Vec::new();
            for o in outs {
                if o.parameters.classification.is_some() {
                    return Err(DecodeError::Classification { name: o.name });
                }
                if o.parameters.binary_data.unwrap_or(default_binary) {
                    bin.push(o.name.clone());
                }
                names.push(o.name);
            }
            (Some(names), BinaryOutputs::Named(bin))
        }
    };
    Ok(DecodedRequest {
        id: request.id.map(|c| c.into_owned()),
        inputs,
        outputs,
        binary,
    })
}

/// An encoded response body.
#[derive(Debug)]
pub struct EncodedResponse {
    pub body: Vec<u8>,
    /// Set when binary data follows the JSON header: its length, for the
    /// `Inference-Header-Content-Length` response header.
    pub header_length: Option<usize>,
}

/// Encodes the outputs of an inference.
///
/// The JSON is written directly (this runs once per request): keys and
/// datatypes are constants, names and the id are escaped by serde_json
/// unless they need no escaping, and output data is written by
/// [`JsonData`].
pub fn encode_response(
    model: &str,
    version: u64,
    id: Option<&str>,
    outputs: &[OutputTensor],
    binary: &BinaryOutputs,
) -> EncodedResponse {
    let is_binary: Vec<bool> = outputs.iter().map(|o| binary.contains(&o.name)).collect();
    let binary_len: usize = outputs
        .iter()
        .zip(&is_binary)
        .filter(|(_, &b)| b)
        .map(|(o, _)| o.tensor.data.len())
        .sum();
    let json_len: usize = outputs
        .iter()
        .zip(&is_binary)
        .filter(|(_, &b)| !b)
        .map(|(o, _)| o.tensor.data.len() * 4)
        .sum();
    let mut body = Vec::with_capacity(256 + binary_len + json_len.min(1 << 24));
    body.extend_from_slice(b"{\"model_name\":");
    push_json_str(&mut body, model);
    body.extend_from_slice(b",\"model_version\":\"");
    push_u64(&mut body, version);
    body.push(b'"');
    if let Some(id) = id {
        body.extend_from_slice(b",\"id\":");
        push_json_str(&mut body, id);
    }
    body.extend_from_slice(b",\"outputs\":[");
    for (i, (o, &bin)) in outputs.iter().zip(&is_binary).enumerate() {
        let t = &o.tensor;
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"name\":");
        push_json_str(&mut body, &o.name);
        body.extend_from_slice(b",\"datatype\":\"");
        body.extend_from_slice(t.datatype.name().as_bytes());
        body.extend_from_slice(b"\",\"shape\":[");
        for (d, &n) in t.shape.iter().enumerate() {
            if d > 0 {
                body.push(b',');
            }
            push_u64(&mut body, n as u64);
        }
        body.push(b']');
        if bin {
            body.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            push_u64(&mut body, t.data.len() as u64);
            body.extend_from_slice(b"}}");
        } else {
            body.extend_from_slice(b",\"data\":");
            serde_json::to_writer(
                &mut body,
                &JsonData {
                    datatype: t.datatype,
                    bytes: &t.data,
                },
            )
            // An invariant: writing to a Vec cannot fail, and JsonData's
            // Serialize has no error of its own (NaN becomes null).
            .expect("serialising to memory cannot fail");
            body.push(b'}');
        }
    }
    body.extend_from_slice(b"]}");
    if !is_binary.contains(&true) {
        return EncodedResponse {
            body,
            header_length: None,
        };
    }
    let header_length = body.len();
    for (o, &bin) in outputs.iter().zip(&is_binary) {
        if bin {
            body.extend_from_slice(&o.tensor.data);
        }
    }
    EncodedResponse {
        body,
        header_length: Some(header_length),
    }
}

/// A JSON string: copied as is when nothing in it needs escaping.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // An invariant: a str serialises to a Vec without error.
        serde_json::to_writer(&mut *out, s).expect("serialising to memory cannot fail");
    }
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn binary_body(json: &str, tail: &[u8]) -> (Vec<u8>, String) {
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(tail);
        (body, json.len().to_string())
    }

    #[test]
    fn decodes_json_data_and_output_choices() {
        let body =
            br#"{"id":"r1","inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[[1,2]]}],
                        "outputs":[{"name":"y","parameters":{"binary_data":true}},{"name":"z"}]}"#;
        let r = decode_request(body, None).unwrap();
        assert_eq!(r.id.as_deref(), Some("r1"));
        assert_eq!(r.inputs[0].tensor.shape, vec![1, 2]);
        assert_eq!(r.inputs[0].tensor.data.len(), 8);
        assert_eq!(r.outputs, Some(vec!["y".to_string(), "z".to_string()]));
        assert_eq!(r.binary, BinaryOutputs::Named(vec!["y".into()]));
    }

    #[test]
    fn decodes_binary_inputs_in_order() {
        let a: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b: Vec<u8> = [7i64].iter().flat_map(|v| v.to_le_bytes()).collect();
        let json = r#"{"inputs":[
            {"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},
            {"name":"b","shape":[1],"datatype":"INT64","parameters":{"binary_data_size":8}}],
            "parameters":{"binary_data_output":true}}"#;
        let (body, len) = binary_body(json, &[a.clone(), b.clone()].concat());
        let r = decode_request(&body, Some(&len)).unwrap();
        assert_eq!(r.inputs[0].tensor.data, a);
        assert_eq!(r.inputs[1].tensor.data, b);
        assert_eq!(r.binary, BinaryOutputs::All);
        assert_eq!(r.outputs, None);
    }

    #[test]
    fn binary_sizes_are_checked_against_shape_and_body() {
        let json = r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let (body, len) = binary_body(json, &[0; 4]);
        assert!(decode_request(&body, Some(&len))
            .unwrap_err()
            .to_string()
            .contains("runs past the end of the body"));
        let (body, len) = binary_body(json, &[0; 12]);
        assert_eq!(
            decode_request(&body, Some(&len)).unwrap_err(),
            DecodeError::TrailingBinary(4)
        );
        let json = r#"{"inputs":[{"name":"a","shape":[3],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let (body, len) = binary_body(json, &[0; 8]);
        assert_eq!(
            decode_request(&body, Some(&len)).unwrap_err().to_string(),
            "input 'a': binary_data_size is 8 bytes, but shape [3] of FP32 needs 12"
        );
        assert!(decode_request(&body, None)
            .unwrap_err()
            .to_string()
            .starts_with("invalid inference request JSON"));
        assert_eq!(
            decode_request(b"{}", Some("99")).unwrap_err(),
            DecodeError::HeaderPastBody {
                header: 99,
                body: 2
            }
        );
    }

    #[test]
    fn input_errors_name_the_input() {
        let e = decode_request(
            br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP33","data":[1,2]}]}"#,
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("input 'x': unknown datatype \"FP33\""),
            "{e}"
        );
        let e = decode_request(
            br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "input 'x': shape [-1] has a negative dimension"
        );
        let e = decode_request(
            br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","data":[1,"a"]}]}"#,
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("input 'x': invalid type: string \"a\""),
            "{e}"
        );
    }

    /// Client-supplied values are quoted at most 200 bytes long, however
    /// long they are.
    #[test]
    fn errors_quote_long_values_clipped() {
        let long = "n".repeat(10 << 20);
        let cases = [
            format!(
                r#"{{"inputs":[{{"name":"{long}","shape":[1],"datatype":"FP33","data":[1]}}]}}"#
            ),
            format!(r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"{long}","data":[1]}}]}}"#),
            format!(
                r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":["{long}"]}}]}}"#
            ),
            format!(
                r#"{{"inputs":[{{"name":"x","shape":"{long}","datatype":"FP32","data":[1]}}]}}"#
            ),
            format!(
                r#"{{"inputs":[{{"name":"x","shape":[-1{}],"datatype":"FP32","data":[1]}}]}}"#,
                ",1".repeat(1 << 20)
            ),
            format!(
                r#"{{"inputs":[],"outputs":[{{"name":"{long}","parameters":{{"classification":1}}}}]}}"#
            ),
            format!(r#"{{"{long}":1}}"#),
        ];
        for body in &cases {
            let e = decode_request(body.as_bytes(), None)
                .unwrap_err()
                .to_string();
            assert!(e.len() < 1100, "{} bytes: {}…", e.len(), &e[..100]);
        }
        let e = decode_request(b"{}", Some(&long)).unwrap_err().to_string();
        assert!(e.len() < 400, "{}", e.len());
        assert!(e.contains(&format!("… ({} bytes)", long.len())), "{e}");
        let e = decode_request(cases[0].as_bytes(), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("input 'nnn"), "{e}");
        assert!(
            e.contains(&format!(
                "… ({} bytes)': unknown datatype \"FP33\"",
                long.len()
            )),
            "{e}"
        );
    }

    #[test]
    fn encodes_json_and_binary_outputs() {
        let out = |name: &str, v: &[f32]| OutputTensor {
            name: Arc::from(name),
            tensor: Tensor {
                datatype: DataType::Fp32,
                shape: vec![v.len()],
                data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            },
        };
        let outputs = [out("a", &[0.5]), out("b", &[1.0, 2.0])];
        let r = encode_response("m", 2, Some("id7"), &outputs, &BinaryOutputs::None);
        assert_eq!(r.header_length, None);
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"model_name":"m","model_version":"2","id":"id7","outputs":[{"name":"a","datatype":"FP32","shape":[1],"data":[0.5]},{"name":"b","datatype":"FP32","shape":[2],"data":[1.0,2.0]}]}"#
        );
        let r = encode_response(
            "m",
            2,
            None,
            &outputs,
            &BinaryOutputs::Named(vec!["b".into()]),
        );
        let n = r.header_length.unwrap();
        assert_eq!(
            std::str::from_utf8(&r.body[..n]).unwrap(),
            r#"{"model_name":"m","model_version":"2","outputs":[{"name":"a","datatype":"FP32","shape":[1],"data":[0.5]},{"name":"b","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}]}"#
        );
        let header: serde_json::Value = serde_json::from_slice(&r.body[..n]).unwrap();
        assert_eq!(header["outputs"][1]["parameters"]["binary_data_size"], 8);
        assert_eq!(header["outputs"][0]["data"][0], 0.5);
        assert_eq!(&r.body[n..], &outputs[1].tensor.data[..]);
        // Names and ids that need escaping are escaped; numbers of any size.
        let odd = [OutputTensor {
            name: Arc::from("q\"\\\n\u{1}é"),
            tensor: Tensor {
                datatype: DataType::Int64,
                shape: vec![0, 10, 18_446_744_073_709_551_615],
                data: vec![],
            },
        }];
        let r = encode_response("m\"", u64::MAX, Some("\t"), &odd, &BinaryOutputs::None);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["model_name"], "m\"");
        assert_eq!(v["model_version"], u64::MAX.to_string());
        assert_eq!(v["id"], "\t");
        assert_eq!(v["outputs"][0]["name"], "q\"\\\n\u{1}é");
        assert_eq!(
            v["outputs"][0]["shape"],
            serde_json::json!([0, 10, 18_446_744_073_709_551_615u64])
        );
        assert_eq!(v["outputs"][0]["data"], serde_json::json!([]));
    }
}

/// The fast path (`super::fast`) against the general decoder: kept here,
/// beside the general decoder it is compared with, so that `fast` does
/// not import this module back.
#[cfg(test)]
mod fast_path_tests {
    use super::super::fast::decode_json_request;
    use super::decode_request;

    /// Whatever the fast path returns, the general decoder returns too.
    fn agrees(body: &str) -> bool {
        let general = decode_request(body.as_bytes(), None);
        match decode_json_request(body.as_bytes()) {
            Some(fast) => {
                let general = general.expect("the general decoder accepts it too");
                assert_eq!(fast.id, general.id, "{body}");
                assert_eq!(fast.inputs, general.inputs, "{body}");
                assert_eq!(fast.outputs, general.outputs, "{body}");
                assert_eq!(fast.binary, general.binary, "{body}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn takes_the_common_request_and_agrees_with_the_general_decoder() {
        let taken = [
            r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2.5]}]}"#,
            " {\n \"id\" : \"r1\" , \"inputs\" : [ { \"data\" : [[0.1],[-2e3]], \"datatype\" : \"FP64\", \"shape\" : [ 2 , 1 ], \"name\" : \"é\" } , {\"name\":\"y\",\"shape\":[],\"datatype\":\"FP32\",\"data\":[7]} ] }\t",
            r#"{"inputs":[]}"#,
            r#"{"inputs":[{"name":"x","shape":[0,3],"datatype":"FP32","data":[]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[[],[1,2],[[3]]]}]}"#,
        ];
        for body in taken {
            assert!(agrees(body), "not taken: {body}");
        }
        // Left to the general decoder (valid or not).
        let left = [
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","data":[1,2]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2]}],"outputs":[{"name":"y"}]}"#,
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2],"parameters":{}}]}"#,
            r#"{"inputs":[{"name":"x\n","shape":[2],"datatype":"FP32","data":[1,2]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2]}],"id":null}"#,
            r#"{"inputs":[{"name":"x","name":"y","shape":[2],"datatype":"FP32","data":[1,2]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2,3]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[-2],"datatype":"FP32","data":[1,2]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[2.0],"datatype":"FP32","data":[1,2]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[02],"datatype":"FP32","data":[1,2]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP33","data":[1,2]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,"2"]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32"}]}"#,
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2]}]} x"#,
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2]},]}"#,
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2]}"#,
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2]]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2}]}"#,
            r#"{"inputs":[{"name":"x","shape":[99999999999999999999],"datatype":"FP32","data":[]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[4294967296,4294967296],"datatype":"FP32","data":[]}]}"#,
            r#"{}"#,
            r#"[]"#,
            r#""#,
        ];
        for body in left {
            assert!(!agrees(body), "taken: {body}");
        }
    }
}
