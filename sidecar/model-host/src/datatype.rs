//! Tensor element types, named as the KServe v2 protocol names them.
//!
//! The protocol, the binary tensor extension and ONNX Runtime each have their
//! own spelling of the same element types; this enum is the one place that
//! maps between them, so that a datatype check anywhere else is a plain `==`.

use std::fmt;

use ort::value::TensorElementType;

use abmesh_common::quote::clip;

#[cfg(target_endian = "big")]
compile_error!(
    "abmesh keeps tensor data in the little-endian byte order of the KServe binary \
     tensor extension and hands it to ONNX Runtime as is; big-endian hosts are not supported"
);

/// A tensor element type that the model host can carry between the wire and
/// ONNX Runtime.
///
/// `BYTES` (ONNX string tensors) is not among them: see [`DataType::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
}

/// Why a datatype name from a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataTypeError {
    #[error("datatype BYTES (string tensors) is not supported by this server")]
    Bytes,
    #[error("unknown datatype {:?}; expected one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, BF16, FP32, FP64", clip(.0))]
    Unknown(String),
}

impl DataType {
    /// Every supported type, in the order the protocol documents them.
    pub const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
    ];

    /// The protocol's name, e.g. `"FP32"`.
    pub const fn name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
        }
    }

    /// Bytes per element, in memory and in the binary tensor extension (a
    /// `BOOL` is one byte, 0 or 1, in both).
    pub const fn size(self) -> usize {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
        }
    }

    /// Parses a protocol name. Names are upper case in the protocol; this
    /// accepts them as written there and nothing else, so a typo is reported
    /// rather than guessed at.
    pub fn parse(name: &str) -> Result<DataType, DataTypeError> {
        if name == "BYTES" {
            return Err(DataTypeError::Bytes);
        }
        DataType::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| DataTypeError::Unknown(name.to_owned()))
    }

    /// The type ONNX Runtime reports for a graph input or output, if it is one
    /// this server carries.
    pub fn from_ort(ty: TensorElementType) -> Option<DataType> {
        Some(match ty {
            TensorElementType::Bool => DataType::Bool,
            TensorElementType::Uint8 => DataType::Uint8,
            TensorElementType::Uint16 => DataType::Uint16,
            TensorElementType::Uint32 => DataType::Uint32,
            TensorElementType::Uint64 => DataType::Uint64,
            TensorElementType::Int8 => DataType::Int8,
            TensorElementType::Int16 => DataType::Int16,
            TensorElementType::Int32 => DataType::Int32,
            TensorElementType::Int64 => DataType::Int64,
            TensorElementType::Float16 => DataType::Fp16,
            TensorElementType::Bfloat16 => DataType::Bf16,
            TensorElementType::Float32 => DataType::Fp32,
            TensorElementType::Float64 => DataType::Fp64,
            _ => return None,
        })
    }

    /// The ONNX Runtime element type for this datatype.
    pub fn to_ort(self) -> TensorElementType {
        match self {
            DataType::Bool => TensorElementType::Bool,
            DataType::Uint8 => TensorElementType::Uint8,
            DataType::Uint16 => TensorElementType::Uint16,
            DataType::Uint32 => TensorElementType::Uint32,
            DataType::Uint64 => TensorElementType::Uint64,
            DataType::Int8 => TensorElementType::Int8,
            DataType::Int16 => TensorElementType::Int16,
            DataType::Int32 => TensorElementType::Int32,
            DataType::Int64 => TensorElementType::Int64,
            DataType::Fp16 => TensorElementType::Float16,
            DataType::Bf16 => TensorElementType::Bfloat16,
            DataType::Fp32 => TensorElementType::Float32,
            DataType::Fp64 => TensorElementType::Float64,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_parse_and_ort() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.name()), Ok(d));
            assert_eq!(DataType::from_ort(d.to_ort()), Some(d));
        }
    }

    #[test]
    fn parse_rejects_lower_case_and_bytes_with_a_reason() {
        assert_eq!(
            DataType::parse("fp32"),
            Err(DataTypeError::Unknown("fp32".into()))
        );
        assert_eq!(DataType::parse("BYTES"), Err(DataTypeError::Bytes));
    }
}
