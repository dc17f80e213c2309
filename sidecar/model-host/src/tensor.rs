//! Dense tensors as the model host moves them: a datatype, a shape and the
//! element bytes.
//!
//! Data is kept as raw little-endian bytes, the layout of both the KServe
//! binary tensor extension and ONNX Runtime's CPU tensors. That makes the
//! paths that matter for throughput type-agnostic: merging requests into a
//! batch and splitting the outputs are `memcpy`s of rows, and handing a tensor
//! to ONNX Runtime is one copy into memory it owns. Only JSON, which spells
//! out every element, needs to know the element type (see `kserve::json`).

use std::sync::Arc;

use super::datatype::DataType;

/// A dense, row-major tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    pub datatype: DataType,
    pub shape: Vec<usize>,
    /// `element_count(&shape) * datatype.size()` bytes, little-endian.
    pub data: Vec<u8>,
}

impl Tensor {
    /// The number of elements the shape holds; `None` if it overflows `usize`.
    pub fn element_count(shape: &[usize]) -> Option<usize> {
        shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }
}

/// An input tensor of an inference request, named as the model names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
}

/// One output of an inference, shared name and owned data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputTensor {
    pub name: Arc<str>,
    pub tensor: Tensor,
}

/// Formats a shape the way the protocol writes it: `[1,3,224,224]`, with
/// dynamic dimensions (negative in ONNX metadata) as `-1`.
pub fn format_shape<T: std::fmt::Display>(shape: &[T]) -> String {
    let mut s = String::from("[");
    for (i, d) in shape.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&d.to_string());
    }
    s.push(']');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_count_detects_overflow() {
        assert_eq!(Tensor::element_count(&[2, 3, 4]), Some(24));
        assert_eq!(Tensor::element_count(&[]), Some(1));
        assert_eq!(Tensor::element_count(&[usize::MAX, 2]), None);
    }

    #[test]
    fn shapes_format_like_the_protocol() {
        assert_eq!(format_shape(&[-1i64, 4]), "[-1,4]");
        assert_eq!(format_shape::<usize>(&[]), "[]");
    }
}
