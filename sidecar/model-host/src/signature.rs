//! A model's inputs and outputs, read from the ONNX graph, and the checks a
//! request must pass before it reaches ONNX Runtime.
//!
//! Every check here runs on the request's own thread, before the request is
//! queued, so that a malformed request costs the sender a 400 that names the
//! input and the mismatch, and never costs a batch it would have joined.

use std::fmt;
use std::sync::Arc;

use ort::session::Session;
use ort::value::ValueType;

use super::datatype::DataType;
use super::tensor::{format_shape, NamedTensor, Tensor};
use abmesh_common::quote::clip;

/// One input or output as the graph declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: Arc<str>,
    pub datatype: DataType,
    /// Dimensions; `-1` where the graph leaves one dynamic (symbolic or
    /// unknown).
    pub shape: Vec<i64>,
}

/// The served interface of one model version.
#[derive(Debug, Clone)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    /// The tensor outputs. Outputs that are not tensors (an ONNX-ML `ZipMap`'s
    /// sequence of maps, say) have no KServe v2 representation and are left
    /// out; see [`Signature::skipped_outputs`].
    pub outputs: Vec<TensorSpec>,
    /// Outputs the graph has that are not served, with their ONNX type.
    pub skipped_outputs: Vec<(String, String)>,
    /// Every input and output has a dynamic first dimension, so concurrent
    /// requests can be stacked along it into one run (dynamic batching).
    pub batchable: bool,
}

/// Why a graph cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("input '{name}' has type {ty}, which the KServe v2 protocol cannot carry (only numeric and BOOL tensors are served)")]
    UnsupportedInput { name: String, ty: String },
    #[error("the model has no tensor outputs that can be served")]
    NoOutputs,
}

/// A request that does not fit the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("input '{name}': datatype {got} does not match the model's {expected}")]
    DataType {
        name: String,
        got: DataType,
        expected: DataType,
    },
    #[error("input '{name}': shape {} does not match the model's {expected}: {detail}", clip(.got))]
    Shape {
        name: String,
        got: String,
        expected: String,
        detail: String,
    },
    #[error("input '{}' is given more than once", clip(.name))]
    DuplicateInput { name: String },
    #[error("unknown input '{}'; the model's inputs are {expected}", clip(.name))]
    UnknownInput { name: String, expected: String },
    #[error("missing input '{name}' ({datatype} {shape})")]
    MissingInput {
        name: String,
        datatype: DataType,
        shape: String,
    },
    #[error("unknown output '{}'; the model's outputs are {expected}", clip(.name))]
    UnknownOutput { name: String, expected: String },
}

/// A request checked against the signature, with its inputs in the graph's
/// order: what the batcher queues.
#[derive(Debug)]
pub struct Prepared {
    pub(crate) inputs: Vec<Tensor>,
    /// Indices into [`Signature::outputs`] of the outputs to return.
    pub(crate) outputs: Vec<usize>,
    /// Rows along the batch dimension when the model is batchable and all
    /// inputs agree on it; `None` means the request runs on its own.
    pub(crate) rows: Option<usize>,
}

impl Prepared {
    /// Two requests can share a run when every input matches beyond the first
    /// dimension.
    pub(crate) fn stacks_with(&self, other: &Prepared) -> bool {
        self.rows.is_some()
            && other.rows.is_some()
            && self
                .inputs
                .iter()
                .zip(&other.inputs)
                .all(|(a, b)| a.shape.get(1..) == b.shape.get(1..))
    }
}

impl Signature {
    /// Reads the signature of a loaded session.
    pub fn from_session(session: &Session) -> Result<Signature, SignatureError> {
        let mut inputs = Vec::with_capacity(session.inputs().len());
        for outlet in session.inputs() {
            match tensor_spec(outlet.name(), outlet.dtype()) {
                Some(spec) => inputs.push(spec),
                None => {
                    return Err(SignatureError::UnsupportedInput {
                        name: outlet.name().to_owned(),
                        ty: outlet.dtype().to_string(),
                    })
                }
            }
        }
        let mut outputs = Vec::new();
        let mut skipped_outputs = Vec::new();
        for outlet in session.outputs() {
            match tensor_spec(outlet.name(), outlet.dtype()) {
                Some(spec) => outputs.push(spec),
                None => {
                    skipped_outputs.push((outlet.name().to_owned(), outlet.dtype().to_string()))
                }
            }
        }
        if outputs.is_empty() {
            return Err(SignatureError::NoOutputs);
        }
        let dynamic_first = |s: &TensorSpec| s.shape.first() == Some(&-1);
        let batchable = !inputs.is_empty()
            && inputs.iter().all(dynamic_first)
            && outputs.iter().all(dynamic_first);
        Ok(Signature {
            inputs,
            outputs,
            skipped_outputs,
            batchable,
        })
    }

    /// Checks a request and puts its inputs in the graph's order.
    ///
    /// `outputs` lists the outputs asked for; `None` asks for all of them.
    pub fn prepare(
        &self,
        inputs: Vec<NamedTensor>,
        outputs: Option<&[String]>,
    ) -> Result<Prepared, RequestError> {
        // The common request names every input once, in the graph's order:
        // checked in place, without the reordering slots (one allocation
        // fewer per request; anything else takes the general path below,
        // which also writes the errors). Alone, no measurable effect
        // (callgrind: within the run-to-run spread, ~1 %).
        let in_order = inputs.len() == self.inputs.len()
            && inputs
                .iter()
                .zip(&self.inputs)
                .all(|(i, s)| *i.name == *s.name);
        if in_order {
            let mut ordered = Vec::with_capacity(inputs.len());
            for (input, spec) in inputs.into_iter().zip(&self.inputs) {
                check_input(spec, &input.tensor)?;
                ordered.push(input.tensor);
            }
            return self.finish(ordered, outputs);
        }
        let mut slots: Vec<Option<Tensor>> = vec![None; self.inputs.len()];
        for input in inputs {
            let Some((spec, slot)) = self
                .inputs
                .iter()
                .zip(slots.iter_mut())
                .find(|(s, _)| *s.name == *input.name)
            else {
                return Err(RequestError::UnknownInput {
                    name: input.name,
                    expected: names(&self.inputs),
                });
            };
            if slot.is_some() {
                return Err(RequestError::DuplicateInput { name: input.name });
            }
            check_input(spec, &input.tensor)?;
            *slot = Some(input.tensor);
        }
        let mut ordered = Vec::with_capacity(slots.len());
        for (slot, spec) in slots.into_iter().zip(&self.inputs) {
            match slot {
                Some(t) => ordered.push(t),
                None => {
                    return Err(RequestError::MissingInput {
                        name: spec.name.to_string(),
                        datatype: spec.datatype,
                        shape: format_shape(&spec.shape),
                    })
                }
            }
        }
        self.finish(ordered, outputs)
    }

    /// The outputs asked for and the batch rows of a request whose inputs
    /// are checked and in the graph's order.
    fn finish(
        &self,
        ordered: Vec<Tensor>,
        outputs: Option<&[String]>,
    ) -> Result<Prepared, RequestError> {
        let outputs = match outputs {
            None => (0..self.outputs.len()).collect(),
            Some(wanted) => {
                let mut idx = Vec::with_capacity(wanted.len());
                for name in wanted {
                    match self.outputs.iter().position(|s| *s.name == **name) {
                        Some(i) => idx.push(i),
                        None => {
                            return Err(RequestError::UnknownOutput {
                                name: name.clone(),
                                expected: names(&self.outputs),
                            })
                        }
                    }
                }
                idx
            }
        };

        // Empty requests, and requests whose inputs disagree on the first
        // dimension, are valid but run on their own.
        // (A batchable signature has inputs, all of rank 1 or more, and
        // `check_input` made every input's rank the spec's; `first()`
        // rather than indexing all the same.)
        let first_dim = |t: &Tensor| t.shape.first().copied();
        let rows = match ordered.first().and_then(first_dim) {
            Some(first) if self.batchable && first > 0 => ordered
                .iter()
                .all(|t| first_dim(t) == Some(first))
                .then_some(first),
            _ => None,
        };
        Ok(Prepared {
            inputs: ordered,
            outputs,
            rows,
        })
    }
}

fn check_input(spec: &TensorSpec, tensor: &Tensor) -> Result<(), RequestError> {
    if tensor.datatype != spec.datatype {
        return Err(RequestError::DataType {
            name: spec.name.to_string(),
            got: tensor.datatype,
            expected: spec.datatype,
        });
    }
    let mismatch = |detail: String| RequestError::Shape {
        name: spec.name.to_string(),
        got: format_shape(&tensor.shape),
        expected: format_shape(&spec.shape),
        detail,
    };
    if tensor.shape.len() != spec.shape.len() {
        return Err(mismatch(format!(
            "rank {} where the model expects rank {}",
            tensor.shape.len(),
            spec.shape.len()
        )));
    }
    for (i, (&got, &want)) in tensor.shape.iter().zip(&spec.shape).enumerate() {
        if want >= 0 && got as u64 != want as u64 {
            return Err(mismatch(format!("dimension {i} is {got}, expected {want}")));
        }
    }
    Ok(())
}

fn tensor_spec(name: &str, ty: &ValueType) -> Option<TensorSpec> {
    let ValueType::Tensor { ty, shape, .. } = ty else {
        return None;
    };
    Some(TensorSpec {
        name: name.into(),
        datatype: DataType::from_ort(*ty)?,
        shape: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
    })
}

fn names(specs: &[TensorSpec]) -> String {
    struct List<'a>(&'a [TensorSpec]);
    impl fmt::Display for List<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            for (i, s) in self.0.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(
                    f,
                    "'{}' ({} {})",
                    s.name,
                    s.datatype,
                    format_shape(&s.shape)
                )?;
            }
            Ok(())
        }
    }
    List(specs).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    fn signature() -> Signature {
        Signature {
            inputs: vec![spec("x", DataType::Fp32, &[-1, 4])],
            outputs: vec![
                spec("score", DataType::Fp32, &[-1, 1]),
                spec("label", DataType::Int64, &[-1]),
            ],
            skipped_outputs: vec![],
            batchable: true,
        }
    }

    fn input(name: &str, datatype: DataType, shape: &[usize]) -> NamedTensor {
        let n = Tensor::element_count(shape).unwrap();
        NamedTensor {
            name: name.into(),
            tensor: Tensor {
                datatype,
                shape: shape.to_vec(),
                data: vec![0; n * datatype.size()],
            },
        }
    }

    #[test]
    fn a_matching_request_is_prepared_with_its_rows() {
        let p = signature()
            .prepare(vec![input("x", DataType::Fp32, &[3, 4])], None)
            .unwrap();
        assert_eq!(p.rows, Some(3));
        assert_eq!(p.outputs, vec![0, 1]);
        let only_label = ["label".to_string()];
        let p = signature()
            .prepare(vec![input("x", DataType::Fp32, &[1, 4])], Some(&only_label))
            .unwrap();
        assert_eq!(p.outputs, vec![1]);
    }

    #[test]
    fn mismatches_name_the_input_and_what_differs() {
        let sig = signature();
        let e = sig
            .prepare(vec![input("x", DataType::Fp64, &[1, 4])], None)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "input 'x': datatype FP64 does not match the model's FP32"
        );
        let e = sig
            .prepare(vec![input("x", DataType::Fp32, &[1, 3])], None)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "input 'x': shape [1,3] does not match the model's [-1,4]: dimension 1 is 3, expected 4"
        );
        let e = sig
            .prepare(vec![input("x", DataType::Fp32, &[4])], None)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("rank 1 where the model expects rank 2"),
            "{e}"
        );
        let e = sig
            .prepare(vec![input("y", DataType::Fp32, &[1, 4])], None)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown input 'y'; the model's inputs are 'x' (FP32 [-1,4])"
        );
        let e = sig.prepare(vec![], None).unwrap_err();
        assert_eq!(e.to_string(), "missing input 'x' (FP32 [-1,4])");
        let e = sig
            .prepare(
                vec![input("x", DataType::Fp32, &[1, 4])],
                Some(&["nope".to_string()]),
            )
            .unwrap_err();
        assert!(e.to_string().starts_with("unknown output 'nope'"), "{e}");
    }

    /// A request's own names and shapes are quoted at most 200 bytes long.
    #[test]
    fn errors_quote_long_names_and_shapes_clipped() {
        let sig = signature();
        let long = "i".repeat(10 << 20);
        let e = sig
            .prepare(vec![input(&long, DataType::Fp32, &[1, 4])], None)
            .unwrap_err()
            .to_string();
        assert!(e.len() < 400, "{}", e.len());
        assert!(
            e.starts_with(&format!(
                "unknown input '{}… ({} bytes)'; the model's inputs are 'x'",
                "i".repeat(200),
                long.len()
            )),
            "{e}"
        );
        let e = sig
            .prepare(
                vec![input("x", DataType::Fp32, &[1, 4])],
                Some(std::slice::from_ref(&long)),
            )
            .unwrap_err()
            .to_string();
        assert!(e.len() < 400, "{}", e.len());
        let e = sig
            .prepare(vec![input("x", DataType::Fp32, &vec![1; 1 << 20])], None)
            .unwrap_err()
            .to_string();
        assert!(e.len() < 400, "{}", e.len());
        assert!(
            e.contains("rank 1048576 where the model expects rank 2"),
            "{e}"
        );
    }

    #[test]
    fn requests_stack_only_when_trailing_dimensions_agree() {
        let mut sig = signature();
        sig.inputs[0].shape = vec![-1, -1];
        let a = sig
            .prepare(vec![input("x", DataType::Fp32, &[1, 4])], None)
            .unwrap();
        let b = sig
            .prepare(vec![input("x", DataType::Fp32, &[2, 4])], None)
            .unwrap();
        let c = sig
            .prepare(vec![input("x", DataType::Fp32, &[1, 5])], None)
            .unwrap();
        assert!(a.stacks_with(&b));
        assert!(!a.stacks_with(&c));
    }
}
