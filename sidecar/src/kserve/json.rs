//! Tensor data written out as JSON: decoding an input's `data` into tensor
//! bytes, and encoding output bytes as a JSON array.
//!
//! The protocol allows `data` to be flat (`[1,2,3,4]`) or nested like the
//! shape (`[[1,2],[3,4]]`); both are read the same way, as the row-major
//! sequence of their numbers. Every element is checked against the datatype
//! (an `INT32` input refuses `1.5` and `3000000000`, a `BOOL` input refuses
//! `1`), so the error names the element rather than letting a value wrap or
//! round silently.

use std::fmt;

use half::{bf16, f16};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::value::RawValue;

use crate::model::DataType;

/// Decodes `data` into little-endian tensor bytes. `expected` is the element
/// count of the declared shape; the data must have exactly that many.
pub fn decode(raw: &RawValue, datatype: DataType, expected: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(expected.saturating_mul(datatype.size()).min(1 << 26));
    let mut count = 0usize;
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let seed = Flatten {
        datatype,
        out: &mut out,
        count: &mut count,
        limit: expected,
    };
    seed.deserialize(&mut de).map_err(|e| {
        // serde_json appends a position inside `data`; the message alone is
        // what helps.
        let msg = e.to_string();
        match msg.rfind(" at line ") {
            Some(at) => msg[..at].to_owned(),
            None => msg,
        }
    })?;
    if count != expected {
        return Err(format!(
            "data has {count} elements but the shape needs {expected}"
        ));
    }
    Ok(out)
}

struct Flatten<'o> {
    datatype: DataType,
    out: &'o mut Vec<u8>,
    count: &'o mut usize,
    limit: usize,
}

impl Flatten<'_> {
    fn push<E: de::Error>(self, n: Number) -> Result<(), E> {
        let i = *self.count;
        if i >= self.limit {
            return Err(E::custom(format_args!(
                "data has more elements than the shape's {}",
                self.limit
            )));
        }
        let bad = |why: &str| E::custom(format_args!("element {i} is {n}, {why}"));
        let dt = self.datatype;
        let out = &mut *self.out;
        match (dt, n) {
            (DataType::Bool, Number::Bool(b)) => out.push(b as u8),
            (DataType::Bool, _) => return Err(bad("expected true or false")),
            (_, Number::Bool(_)) => return Err(bad(&format!("expected {dt} numbers"))),
            (DataType::Fp32, n) => {
                let v = n.as_f64() as f32;
                if !v.is_finite() {
                    return Err(bad("outside the FP32 range"));
                }
                out.extend_from_slice(&v.to_le_bytes());
            }
            (DataType::Fp64, n) => out.extend_from_slice(&n.as_f64().to_le_bytes()),
            (DataType::Fp16, n) => {
                let v = f16::from_f64(n.as_f64());
                if !v.is_finite() {
                    return Err(bad("outside the FP16 range"));
                }
                out.extend_from_slice(&v.to_le_bytes());
            }
            (DataType::Bf16, n) => {
                let v = bf16::from_f64(n.as_f64());
                if !v.is_finite() {
                    return Err(bad("outside the BF16 range"));
                }
                out.extend_from_slice(&v.to_le_bytes());
            }
            (_, Number::F64(_)) => return Err(bad(&format!("not an integer, as {dt} needs"))),
            (dt, n) => {
                let wide: i128 = match n {
                    Number::U64(v) => v.into(),
                    Number::I64(v) => v.into(),
                    _ => unreachable!("floats and bools handled above"),
                };
                macro_rules! int {
                    ($t:ty) => {{
                        let v = <$t>::try_from(wide)
                            .map_err(|_| bad(&format!("outside the {dt} range")))?;
                        out.extend_from_slice(&v.to_le_bytes());
                    }};
                }
                match dt {
                    DataType::Uint8 => int!(u8),
                    DataType::Uint16 => int!(u16),
                    DataType::Uint32 => int!(u32),
                    DataType::Uint64 => int!(u64),
                    DataType::Int8 => int!(i8),
                    DataType::Int16 => int!(i16),
                    DataType::Int32 => int!(i32),
                    DataType::Int64 => int!(i64),
                    _ => unreachable!("float and bool types handled above"),
                }
            }
        }
        *self.count += 1;
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Number {
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Number::Bool(b) => b as u8 as f64,
            Number::U64(v) => v as f64,
            Number::I64(v) => v as f64,
            Number::F64(v) => v,
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Bool(b) => write!(f, "{b}"),
            Number::U64(v) => write!(f, "{v}"),
            Number::I64(v) => write!(f, "{v}"),
            Number::F64(v) => write!(f, "{v:?}"),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {} values", self.datatype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Flatten {
                datatype: self.datatype,
                out: &mut *self.out,
                count: &mut *self.count,
                limit: self.limit,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Number::Bool(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Number::U64(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Number::I64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Number::F64(v))
    }
}

/// Output bytes written as a flat JSON array of their elements.
pub struct JsonData<'a> {
    pub datatype: DataType,
    pub bytes: &'a [u8],
}

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let size = self.datatype.size();
        let mut seq = s.serialize_seq(Some(self.bytes.len() / size))?;
        macro_rules! each {
            ($t:ty, $conv:expr) => {
                for c in self.bytes.chunks_exact(size) {
                    let v = <$t>::from_le_bytes(c.try_into().expect("chunk of the element size"));
                    seq.serialize_element(&$conv(v))?;
                }
            };
        }
        match self.datatype {
            DataType::Bool => {
                for &b in self.bytes {
                    seq.serialize_element(&(b != 0))?;
                }
            }
            DataType::Uint8 => each!(u8, |v| v),
            DataType::Uint16 => each!(u16, |v| v),
            DataType::Uint32 => each!(u32, |v| v),
            DataType::Uint64 => each!(u64, |v| v),
            DataType::Int8 => each!(i8, |v| v),
            DataType::Int16 => each!(i16, |v| v),
            DataType::Int32 => each!(i32, |v| v),
            DataType::Int64 => each!(i64, |v| v),
            DataType::Fp16 => each!(f16, f16::to_f32),
            DataType::Bf16 => each!(bf16, bf16::to_f32),
            DataType::Fp32 => each!(f32, |v| v),
            DataType::Fp64 => each!(f64, |v| v),
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn f32s(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn flat_and_nested_data_decode_alike() {
        let flat = decode(&raw("[1, 2.5, -3, 4]"), DataType::Fp32, 4).unwrap();
        let nested = decode(&raw("[[1, 2.5], [-3, 4]]"), DataType::Fp32, 4).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(f32s(&flat), vec![1.0, 2.5, -3.0, 4.0]);
    }

    #[test]
    fn integers_and_bools_are_checked_per_element() {
        assert_eq!(
            decode(&raw("[1, -2]"), DataType::Int64, 2).unwrap(),
            [1i64.to_le_bytes(), (-2i64).to_le_bytes()].concat()
        );
        assert_eq!(
            decode(&raw("[1, 1.5]"), DataType::Int32, 2).unwrap_err(),
            "element 1 is 1.5, not an integer, as INT32 needs"
        );
        assert_eq!(
            decode(&raw("[3000000000]"), DataType::Int32, 1).unwrap_err(),
            "element 0 is 3000000000, outside the INT32 range"
        );
        assert_eq!(
            decode(&raw("[-1]"), DataType::Uint8, 1).unwrap_err(),
            "element 0 is -1, outside the UINT8 range"
        );
        assert_eq!(
            decode(&raw("[true, false]"), DataType::Bool, 2).unwrap(),
            vec![1, 0]
        );
        assert_eq!(
            decode(&raw("[1]"), DataType::Bool, 1).unwrap_err(),
            "element 0 is 1, expected true or false"
        );
        assert_eq!(
            decode(&raw("[true]"), DataType::Fp32, 1).unwrap_err(),
            "element 0 is true, expected FP32 numbers"
        );
    }

    #[test]
    fn counts_must_match_the_shape() {
        assert_eq!(
            decode(&raw("[1, 2, 3]"), DataType::Fp32, 4).unwrap_err(),
            "data has 3 elements but the shape needs 4"
        );
        assert_eq!(
            decode(&raw("[1, 2, 3]"), DataType::Fp32, 2).unwrap_err(),
            "data has more elements than the shape's 2"
        );
        assert!(decode(&raw("\"abc\""), DataType::Fp32, 1)
            .unwrap_err()
            .starts_with("invalid type: string"));
    }

    #[test]
    fn encodes_each_type_as_json_numbers() {
        let enc =
            |datatype, bytes: &[u8]| serde_json::to_string(&JsonData { datatype, bytes }).unwrap();
        let f: Vec<u8> = [0.5f32, -1.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(enc(DataType::Fp32, &f), "[0.5,-1.25]");
        assert_eq!(enc(DataType::Bool, &[1, 0]), "[true,false]");
        let i: Vec<u8> = [-7i64, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(enc(DataType::Int64, &i), "[-7,9]");
        let h = f16::from_f32(1.5).to_le_bytes();
        assert_eq!(enc(DataType::Fp16, &h), "[1.5]");
        // Round trip through decode.
        let back = decode(&raw(&enc(DataType::Fp32, &f)), DataType::Fp32, 2).unwrap();
        assert_eq!(back, f);
    }
}
