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

use crate::datatype::DataType;
use abmesh_common::quote::bound;

/// Why `data` does not fit the declared datatype and shape (shown to the
/// client after the input's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// What serde (or an element check) said, bounded, without serde's
    /// position inside `data`.
    #[error("{0}")]
    Invalid(String),
    #[error("data has {got} elements but the shape needs {expected}")]
    Count { got: usize, expected: usize },
}

/// Why an integer is not an element of an integer datatype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum IntError {
    #[error("outside the {0} range")]
    Range(DataType),
    #[error("expected {0} numbers")]
    NotAnInteger(DataType),
}

/// Decodes `data` into little-endian tensor bytes. `expected` is the element
/// count of the declared shape; the data must have exactly that many.
pub fn decode(raw: &RawValue, datatype: DataType, expected: usize) -> Result<Vec<u8>, DataError> {
    if let Some(out) = decode_floats_fast(raw.get().as_bytes(), datatype, expected) {
        return Ok(out);
    }
    decode_general(raw, datatype, expected)
}

/// The general decoder: every datatype, every shape of `data`, and the
/// error messages. [`decode`] tries [`decode_floats_fast`] first.
fn decode_general(
    raw: &RawValue,
    datatype: DataType,
    expected: usize,
) -> Result<Vec<u8>, DataError> {
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
        // what helps. It may quote the offending value whole (`invalid
        // type: string "..."`).
        let msg = e.to_string();
        DataError::Invalid(bound(match msg.rfind(" at line ") {
            Some(at) => msg[..at].to_owned(),
            None => msg,
        }))
    })?;
    if count != expected {
        return Err(DataError::Count {
            got: count,
            expected,
        });
    }
    Ok(out)
}

/// Powers of ten that are exact in an `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The common case, fast: FP32 or FP64 `data` (flat or nested arrays) of
/// numbers with at most 18 significant digits and a small exponent, exactly
/// `expected` of them. Anything else (another datatype, a malformed or
/// unusual number, a wrong count, a value out of range) returns `None`, and
/// the general decoder, which has the error messages, takes over.
///
/// The values are bit for bit what the general decoder produces: for a
/// significand below 2^53 and a power of ten up to 10^22, `significand` and
/// the power are exact `f64`s and one multiplication or division rounds
/// correctly, which is also what serde_json computes for such numbers.
pub(crate) fn decode_floats_fast(s: &[u8], datatype: DataType, expected: usize) -> Option<Vec<u8>> {
    let (out, end) = decode_floats_at(s, skip_ws(s, 0), datatype, expected)?;
    (skip_ws(s, end) == s.len()).then_some(out)
}

/// [`decode_floats_fast`] on the array that starts at `s[start]`; also
/// returns where the array ends (past its `]`). What follows is not looked
/// at.
pub(crate) fn decode_floats_at(
    s: &[u8],
    start: usize,
    datatype: DataType,
    expected: usize,
) -> Option<(Vec<u8>, usize)> {
    let fp32 = match datatype {
        DataType::Fp32 => true,
        DataType::Fp64 => false,
        _ => return None,
    };
    // Each element takes at least two bytes of text (a digit and a comma,
    // or a bracket), so this also bounds the buffer by the body's size.
    if expected > s.len().saturating_sub(start) / 2 {
        return None;
    }
    let size = datatype.size();
    let mut out = vec![0u8; expected * size];
    let mut count = 0usize;
    let mut depth = 0usize;
    let mut i = start;
    if s.get(i) != Some(&b'[') {
        return None;
    }
    loop {
        // A value is expected: an array or a number.
        match *s.get(i)? {
            b'[' => {
                depth += 1;
                i = skip_ws(s, i + 1);
                if s.get(i) != Some(&b']') {
                    continue;
                }
                // An empty array: a complete value.
                depth -= 1;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let (v, next) = parse_number(s, i)?;
                if count == expected {
                    return None;
                }
                // `count < expected` (checked just above) and `out` holds
                // `expected` elements, so the slices below are in it.
                let at = count * size;
                if fp32 {
                    let v = v as f32;
                    if !v.is_finite() {
                        return None;
                    }
                    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
                } else {
                    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
                }
                count += 1;
                i = next;
            }
            _ => return None,
        }
        // After a value: `,` and another value, or `]` closing an array.
        loop {
            if depth == 0 {
                return (count == expected).then_some((out, i));
            }
            i = skip_ws(s, i);
            match *s.get(i)? {
                b',' => {
                    i = skip_ws(s, i + 1);
                    break;
                }
                b']' => {
                    depth -= 1;
                    i += 1;
                }
                _ => return None,
            }
        }
    }
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while matches!(s.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// A JSON number starting at `i`, and where it ends; `None` if it is
/// malformed or outside the fast path (see [`decode_floats_fast`]).
fn parse_number(s: &[u8], mut i: usize) -> Option<(f64, usize)> {
    let negative = s.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    let mut significand: u64 = 0;
    let mut digits = 0u32;
    match *s.get(i)? {
        b'0' => {
            i += 1;
            if s.get(i).is_some_and(u8::is_ascii_digit) {
                return None; // a leading zero
            }
        }
        b'1'..=b'9' => {
            while let Some(&c @ b'0'..=b'9') = s.get(i) {
                significand = significand * 10 + u64::from(c - b'0');
                digits += 1;
                i += 1;
                if digits > 18 {
                    return None;
                }
            }
        }
        _ => return None,
    }
    let mut exponent: i32 = 0;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(&c @ b'0'..=b'9') = s.get(i) {
            significand = significand * 10 + u64::from(c - b'0');
            digits += 1;
            exponent -= 1;
            i += 1;
            if digits > 18 {
                return None;
            }
        }
        if i == start {
            return None;
        }
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        let negative_exp = match s.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        let mut e: i32 = 0;
        while let Some(&c @ b'0'..=b'9') = s.get(i) {
            e = e * 10 + i32::from(c - b'0');
            i += 1;
            if i - start > 4 {
                return None;
            }
        }
        if i == start {
            return None;
        }
        exponent += if negative_exp { -e } else { e };
    }
    if significand >= 1 << 53 {
        return None;
    }
    let mut v = significand as f64;
    match exponent {
        0 => {}
        1..=22 => v *= POW10[exponent as usize],
        -22..=-1 => v /= POW10[(-exponent) as usize],
        _ => return None,
    }
    Some((if negative { -v } else { v }, i))
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
            (dt, Number::U64(v)) => {
                push_int(dt, v.into(), out).map_err(|why| bad(&why.to_string()))?
            }
            (dt, Number::I64(v)) => {
                push_int(dt, v.into(), out).map_err(|why| bad(&why.to_string()))?
            }
        }
        *self.count += 1;
        Ok(())
    }
}

/// Appends an integer as an element of the integer type `dt`; why not
/// when it is outside the type's range. (`Flatten::push` calls it for
/// integer types only; the others are refused here rather than trusted
/// never to come.)
fn push_int(dt: DataType, wide: i128, out: &mut Vec<u8>) -> Result<(), IntError> {
    macro_rules! int {
        ($t:ty) => {{
            let v = <$t>::try_from(wide).map_err(|_| IntError::Range(dt))?;
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
        DataType::Bool | DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => {
            return Err(IntError::NotAnInteger(dt))
        }
    }
    Ok(())
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
                    // An invariant, not input: `chunks_exact(size)` yields
                    // slices of exactly `size` bytes, the width of `$t`.
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
            decode(&raw("[1, 1.5]"), DataType::Int32, 2)
                .unwrap_err()
                .to_string(),
            "element 1 is 1.5, not an integer, as INT32 needs"
        );
        assert_eq!(
            decode(&raw("[3000000000]"), DataType::Int32, 1)
                .unwrap_err()
                .to_string(),
            "element 0 is 3000000000, outside the INT32 range"
        );
        assert_eq!(
            decode(&raw("[-1]"), DataType::Uint8, 1)
                .unwrap_err()
                .to_string(),
            "element 0 is -1, outside the UINT8 range"
        );
        assert_eq!(
            decode(&raw("[true, false]"), DataType::Bool, 2).unwrap(),
            vec![1, 0]
        );
        assert_eq!(
            decode(&raw("[1]"), DataType::Bool, 1)
                .unwrap_err()
                .to_string(),
            "element 0 is 1, expected true or false"
        );
        assert_eq!(
            decode(&raw("[true]"), DataType::Fp32, 1)
                .unwrap_err()
                .to_string(),
            "element 0 is true, expected FP32 numbers"
        );
    }

    #[test]
    fn counts_must_match_the_shape() {
        assert_eq!(
            decode(&raw("[1, 2, 3]"), DataType::Fp32, 4)
                .unwrap_err()
                .to_string(),
            "data has 3 elements but the shape needs 4"
        );
        assert_eq!(
            decode(&raw("[1, 2, 3]"), DataType::Fp32, 2)
                .unwrap_err()
                .to_string(),
            "data has more elements than the shape's 2"
        );
        assert!(decode(&raw("\"abc\""), DataType::Fp32, 1)
            .unwrap_err()
            .to_string()
            .starts_with("invalid type: string"));
    }

    #[test]
    fn the_fast_path_agrees_with_the_general_decoder() {
        let cases = [
            "[1, 2.5, -3, 4]",
            "[[1, 2.5], [-3, 4]]",
            " [ [ ] , [0.1,-0.0,0,-0 ] , 1e3 , 2E-2, 3e+1 ] ",
            "[0.30000000000000004, 123456789012345678, 9007199254740991, 9007199254740993]",
            "[1.7976931348623157e308, 3.4028235e38, 3.5e38, 1e-320, 5e-324, 1e22, 1e23]",
            "[0.1234567890123456789, 1e400, -1e-400]",
            "[\"1\"]",
            "[true]",
            "[null]",
            "7",
            "[]",
            "[1e99999]",
        ];
        // Not JSON (serde_json refuses these before `decode` sees them).
        for bad in [
            "[01]", "[1.]", "[.5]", "[1e]", "[1,]", "[1 2]", "[[1, 2]", "[1, 2]]", "[-]", "[1]x",
        ] {
            for expected in 0..3 {
                assert_eq!(
                    decode_floats_fast(bad.as_bytes(), DataType::Fp32, expected),
                    None
                );
            }
        }
        for case in cases {
            let raw = raw(case);
            for datatype in [DataType::Fp32, DataType::Fp64] {
                for expected in 0..12 {
                    let general = decode_general(&raw, datatype, expected);
                    if let Some(fast) = decode_floats_fast(raw.get().as_bytes(), datatype, expected)
                    {
                        assert_eq!(Ok(&fast), general.as_ref(), "{case} {datatype} {expected}");
                    }
                    assert_eq!(decode(&raw, datatype, expected), general);
                }
            }
        }
        // Many decimals, as clients write them, take the fast path and
        // agree with serde_json bit for bit.
        let mut text = String::from("[");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = (x % 15) as u32 + 1;
            let mantissa = x % 10u64.pow(digits);
            let point = (x >> 20) % u64::from(digits + 1);
            let m = format!("{mantissa:0width$}", width = digits as usize);
            let (a, b) = m.split_at((digits as u64 - point) as usize);
            let a = a.trim_start_matches('0');
            let a = if a.is_empty() { "0" } else { a };
            let sign = if x & 1 == 1 { "-" } else { "" };
            let exp = match (x >> 40) % 4 {
                0 => format!("e{}", (x >> 44) % 8),
                1 => format!("E-{}", (x >> 44) % 8),
                _ => String::new(),
            };
            if i > 0 {
                text.push(',');
            }
            if b.is_empty() {
                text.push_str(&format!("{sign}{a}{exp}"));
            } else {
                text.push_str(&format!("{sign}{a}.{b}{exp}"));
            }
        }
        text.push(']');
        let raw = raw(&text);
        for datatype in [DataType::Fp32, DataType::Fp64] {
            let fast = decode_floats_fast(raw.get().as_bytes(), datatype, 20_000);
            assert!(fast.is_some(), "the fast path refused plain decimals");
            assert_eq!(
                fast.unwrap(),
                decode_general(&raw, datatype, 20_000).unwrap()
            );
        }
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
