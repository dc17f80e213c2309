//! Tensors in and out of `ModelInfer` messages.
//!
//! An input's data comes either in `raw_input_contents` (what
//! `tritonclient.grpc` and `perf_analyzer` send: one little-endian byte
//! string per input, in the order of `inputs`, the same bytes as the HTTP
//! binary tensor extension) or in the input's typed `contents`
//! (`fp32_contents`, ...). As in Triton, a request uses one or the other for
//! all its inputs. Outputs always go back in `raw_output_contents`, which is
//! what `tritonclient.grpc`'s `as_numpy` reads.

use abmesh_common::quote::clip;
use abmesh_model_host::tensor::format_shape;
use abmesh_model_host::{DataType, NamedTensor, OutputTensor, Tensor};

use super::pb;
use super::pb::model_infer_request::InferInputTensor;

/// Why a `ModelInferRequest` cannot be decoded; said to the client as
/// `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("input '{}': {problem}", clip(.name))]
    Input { name: String, problem: String },
    #[error("raw_input_contents has {raw} entries for {inputs} inputs: give raw contents for every input or for none")]
    RawCount { raw: usize, inputs: usize },
    #[error("output '{}': the classification extension is not supported", clip(.name))]
    Classification { name: String },
}

/// The inputs and the names of the outputs asked for (`None`: all).
pub fn decode_request(
    req: pb::ModelInferRequest,
) -> Result<(Vec<NamedTensor>, Option<Vec<String>>), DecodeError> {
    let raw = req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(DecodeError::RawCount {
            raw: raw.len(),
            inputs: req.inputs.len(),
        });
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let bytes = raw.next();
        inputs.push(decode_input(input, bytes)?);
    }
    let outputs = if req.outputs.is_empty() {
        None
    } else {
        let mut names = Vec::with_capacity(req.outputs.len());
        for o in req.outputs {
            if o.parameters.contains_key("classification") {
                return Err(DecodeError::Classification { name: o.name });
            }
            names.push(o.name);
        }
        Some(names)
    };
    Ok((inputs, outputs))
}

fn decode_input(input: InferInputTensor, raw: Option<Vec<u8>>) -> Result<NamedTensor, DecodeError> {
    let name = input.name;
    let problem = |problem: String| DecodeError::Input {
        name: name.clone(),
        problem,
    };
    let datatype = DataType::parse(&input.datatype).map_err(|e| problem(e.to_string()))?;
    let mut shape = Vec::with_capacity(input.shape.len());
    for &d in &input.shape {
        shape.push(usize::try_from(d).map_err(|_| {
            problem(format!(
                "shape {} has a negative dimension",
                clip(&format_shape(&input.shape))
            ))
        })?);
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
    let data = match (raw, input.contents) {
        (Some(_), Some(c)) if !is_empty(&c) => {
            return Err(problem(
                "has both typed contents and raw_input_contents".into(),
            ))
        }
        (Some(data), _) => {
            if data.len() != bytes {
                return Err(problem(format!(
                    "raw_input_contents has {} bytes, but shape {} of {datatype} needs {bytes}",
                    data.len(),
                    clip(&format_shape(&shape))
                )));
            }
            data
        }
        (None, Some(c)) => typed(&c, datatype, count).map_err(problem)?,
        (None, None) => {
            return Err(problem(
                "has no data: give raw_input_contents or the input's contents".into(),
            ))
        }
    };
    Ok(NamedTensor {
        name,
        tensor: Tensor {
            datatype,
            shape,
            data,
        },
    })
}

fn is_empty(c: &pb::InferTensorContents) -> bool {
    c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty()
}

/// The little-endian bytes of typed contents, checked against the datatype
/// and element count.
fn typed(c: &pb::InferTensorContents, datatype: DataType, count: usize) -> Result<Vec<u8>, String> {
    fn take<T: Copy, const N: usize>(
        values: &[T],
        count: usize,
        field: &str,
        datatype: DataType,
        to_le: impl Fn(T) -> Option<[u8; N]>,
    ) -> Result<Vec<u8>, String> {
        if values.len() != count {
            return Err(format!(
                "{field} has {} elements, but the shape holds {count}",
                values.len()
            ));
        }
        let mut out = Vec::with_capacity(count * N);
        for (i, &v) in values.iter().enumerate() {
            let b =
                to_le(v).ok_or_else(|| format!("{field}[{i}] is out of range for {datatype}"))?;
            out.extend_from_slice(&b);
        }
        Ok(out)
    }
    let d = datatype;
    match datatype {
        DataType::Bool => take(&c.bool_contents, count, "bool_contents", d, |v| {
            Some([u8::from(v)])
        }),
        DataType::Int8 => take(&c.int_contents, count, "int_contents", d, |v| {
            i8::try_from(v).ok().map(i8::to_le_bytes)
        }),
        DataType::Int16 => take(&c.int_contents, count, "int_contents", d, |v| {
            i16::try_from(v).ok().map(i16::to_le_bytes)
        }),
        DataType::Int32 => take(&c.int_contents, count, "int_contents", d, |v| {
            Some(v.to_le_bytes())
        }),
        DataType::Int64 => take(&c.int64_contents, count, "int64_contents", d, |v| {
            Some(v.to_le_bytes())
        }),
        DataType::Uint8 => take(&c.uint_contents, count, "uint_contents", d, |v| {
            u8::try_from(v).ok().map(u8::to_le_bytes)
        }),
        DataType::Uint16 => take(&c.uint_contents, count, "uint_contents", d, |v| {
            u16::try_from(v).ok().map(u16::to_le_bytes)
        }),
        DataType::Uint32 => take(&c.uint_contents, count, "uint_contents", d, |v| {
            Some(v.to_le_bytes())
        }),
        DataType::Uint64 => take(&c.uint64_contents, count, "uint64_contents", d, |v| {
            Some(v.to_le_bytes())
        }),
        DataType::Fp32 => take(&c.fp32_contents, count, "fp32_contents", d, |v| {
            Some(v.to_le_bytes())
        }),
        DataType::Fp64 => take(&c.fp64_contents, count, "fp64_contents", d, |v| {
            Some(v.to_le_bytes())
        }),
        DataType::Fp16 | DataType::Bf16 => Err(format!(
            "{datatype} has no typed contents field: send it in raw_input_contents"
        )),
    }
}

/// The outputs' metadata and their bytes, in the same order.
pub fn encode_outputs(
    outputs: Vec<OutputTensor>,
) -> (
    Vec<pb::model_infer_response::InferOutputTensor>,
    Vec<Vec<u8>>,
) {
    let mut meta = Vec::with_capacity(outputs.len());
    let mut raw = Vec::with_capacity(outputs.len());
    for o in outputs {
        meta.push(pb::model_infer_response::InferOutputTensor {
            name: o.name.to_string(),
            datatype: o.tensor.datatype.name().to_owned(),
            shape: o.tensor.shape.iter().map(|&d| d as i64).collect(),
            parameters: Default::default(),
            contents: None,
        });
        raw.push(o.tensor.data);
    }
    (meta, raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(
        name: &str,
        datatype: &str,
        shape: &[i64],
        contents: Option<pb::InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            parameters: Default::default(),
            contents,
        }
    }

    fn request(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> pb::ModelInferRequest {
        pb::ModelInferRequest {
            model_name: "m".into(),
            inputs,
            raw_input_contents: raw,
            ..Default::default()
        }
    }

    #[test]
    fn raw_and_typed_contents_give_the_same_bytes() {
        let x = [1.5f32, -2.0, 3.25, 0.0];
        let raw: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (a, _) = decode_request(request(
            vec![input("x", "FP32", &[2, 2], None)],
            vec![raw.clone()],
        ))
        .unwrap();
        let typed = pb::InferTensorContents {
            fp32_contents: x.to_vec(),
            ..Default::default()
        };
        let (b, out) = decode_request(request(
            vec![input("x", "FP32", &[2, 2], Some(typed))],
            vec![],
        ))
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0].tensor.data, raw);
        assert_eq!(a[0].tensor.shape, vec![2, 2]);
        assert_eq!(out, None);
    }

    #[test]
    fn mismatches_name_the_input() {
        let e = decode_request(request(
            vec![input("x", "FP32", &[2, 2], None)],
            vec![vec![0; 15]],
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "input 'x': raw_input_contents has 15 bytes, but shape [2,2] of FP32 needs 16"
        );
        let e = decode_request(request(
            vec![input("x", "FP32", &[-1, 2], None)],
            vec![vec![]],
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("input 'x': shape [-1,2] has a negative dimension"),
            "{e}"
        );
        let e = decode_request(request(
            vec![input("y", "FP99", &[1], None)],
            vec![vec![0; 4]],
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("input 'y': unknown datatype"), "{e}");
        let e = decode_request(request(
            vec![input(
                "z",
                "INT8",
                &[1],
                Some(pb::InferTensorContents {
                    int_contents: vec![300],
                    ..Default::default()
                }),
            )],
            vec![],
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(e, "input 'z': int_contents[0] is out of range for INT8");
        let e = decode_request(request(
            vec![
                input("a", "FP32", &[1], None),
                input("b", "FP32", &[1], None),
            ],
            vec![vec![0; 4]],
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("raw_input_contents has 1 entries for 2 inputs"),
            "{e}"
        );
        let e = decode_request(request(vec![input("n", "FP32", &[1], None)], vec![]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("input 'n': has no data"), "{e}");
    }
}
