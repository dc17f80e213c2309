//! The common inference request, decoded in one pass.
//!
//! Most JSON clients send `{"id": "...", "inputs": [{"name": "...",
//! "shape": [...], "datatype": "FP32", "data": [...]}]}` and nothing else.
//! The general decoder (`codec::decode_request`: serde_json, the `data` kept
//! as raw JSON text, then decoded by `json::decode`) reads the numbers of
//! `data` twice, which is most of the work for a model with a few hundred
//! features. This reads such a request in one pass. It handles only that
//! shape: FP32 or FP64 data, strings without escapes, no `parameters`, no
//! `outputs`, no repeated keys, numbers the fast path of `json` takes; on
//! anything else, including every malformed request, it returns `None` and
//! the general decoder decides (and writes the error message). What it does
//! return is exactly what the general decoder returns for the same body
//! (tested below).

use super::json::decode_floats_at;
use super::request::{BinaryOutputs, DecodedRequest};
use crate::datatype::DataType;
use crate::tensor::{NamedTensor, Tensor};

/// Decodes a request body without the binary extension, if it has the
/// common shape described in the module docs.
pub(crate) fn decode_json_request(body: &[u8]) -> Option<DecodedRequest> {
    let mut p = Parser { s: body, i: 0 };
    p.expect(b'{')?;
    let mut id: Option<&str> = None;
    let mut inputs: Option<Vec<NamedTensor>> = None;
    loop {
        let key = p.string()?;
        p.expect(b':')?;
        match key {
            "id" if id.is_none() => id = Some(p.string()?),
            "inputs" if inputs.is_none() => inputs = Some(p.inputs()?),
            _ => return None,
        }
        if !p.next_member(b'}')? {
            break;
        }
    }
    p.skip_ws();
    if p.i != body.len() {
        return None;
    }
    Some(DecodedRequest {
        id: id.map(str::to_owned),
        inputs: inputs?,
        outputs: None,
        binary: BinaryOutputs::None,
    })
}

/// An input's `data`: decoded, or where it is in the body.
enum Data {
    Decoded(Vec<u8>),
    At(usize, usize),
}

/// Elements of a shape, if its bytes are countable.
fn element_count(datatype: DataType, shape: &[usize]) -> Option<usize> {
    let count = Tensor::element_count(shape)?;
    count.checked_mul(datatype.size())?;
    Some(count)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn skip_ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// After a member of an object or array: `true` at `,` (another one
    /// follows), `false` at the closing bracket.
    fn next_member(&mut self, close: u8) -> Option<bool> {
        let c = self.peek()?;
        self.i += 1;
        match c {
            b',' => Some(true),
            c if c == close => Some(false),
            _ => None,
        }
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.i;
        loop {
            match *self.s.get(self.i)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        // `start..self.i` lies in `s`: `self.i` only moved over bytes read.
        let text = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        self.i += 1;
        Some(text)
    }

    /// A non-negative integer of at most 18 digits.
    fn dimension(&mut self) -> Option<usize> {
        self.skip_ws();
        let start = self.i;
        let mut n: u64 = 0;
        while let Some(&c @ b'0'..=b'9') = self.s.get(self.i) {
            if self.i - start == 18 {
                return None;
            }
            n = n * 10 + u64::from(c - b'0');
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || (digits > 1 && self.s.get(start) == Some(&b'0')) {
            return None;
        }
        if matches!(self.s.get(self.i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        usize::try_from(n).ok()
    }

    fn inputs(&mut self) -> Option<Vec<NamedTensor>> {
        self.expect(b'[')?;
        let mut inputs = Vec::with_capacity(1);
        if self.peek()? == b']' {
            self.i += 1;
            return Some(inputs);
        }
        loop {
            inputs.push(self.input()?);
            if !self.next_member(b']')? {
                return Some(inputs);
            }
        }
    }

    fn input(&mut self) -> Option<NamedTensor> {
        self.expect(b'{')?;
        let mut name: Option<&str> = None;
        let mut shape: Option<Vec<usize>> = None;
        let mut datatype: Option<DataType> = None;
        let mut data: Option<Data> = None;
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            match key {
                "name" if name.is_none() => name = Some(self.string()?),
                "shape" if shape.is_none() => shape = Some(self.shape()?),
                "datatype" if datatype.is_none() => {
                    datatype = Some(DataType::parse(self.string()?).ok()?)
                }
                "data" if data.is_none() => {
                    data = Some(match (datatype, &shape) {
                        // Decoded in this pass, as clients usually order
                        // the keys.
                        (Some(datatype), Some(shape)) => {
                            let count = element_count(datatype, shape)?;
                            self.skip_ws();
                            let (bytes, end) = decode_floats_at(self.s, self.i, datatype, count)?;
                            self.i = end;
                            Data::Decoded(bytes)
                        }
                        // Decoded once the datatype and shape are known.
                        _ => {
                            let (start, end) = self.skip_array()?;
                            Data::At(start, end)
                        }
                    })
                }
                _ => return None,
            }
            if !self.next_member(b'}')? {
                break;
            }
        }
        let (datatype, shape) = (datatype?, shape?);
        let data = match data? {
            Data::Decoded(bytes) => bytes,
            Data::At(start, end) => {
                let count = element_count(datatype, &shape)?;
                let (bytes, stop) = decode_floats_at(self.s, start, datatype, count)?;
                if stop != end {
                    return None;
                }
                bytes
            }
        };
        Some(NamedTensor {
            name: name?.to_owned(),
            tensor: Tensor {
                datatype,
                shape,
                data,
            },
        })
    }

    fn shape(&mut self) -> Option<Vec<usize>> {
        self.expect(b'[')?;
        let mut shape = Vec::with_capacity(4);
        if self.peek()? == b']' {
            self.i += 1;
            return Some(shape);
        }
        loop {
            shape.push(self.dimension()?);
            if !self.next_member(b']')? {
                return Some(shape);
            }
        }
    }

    /// Skips an array made only of the characters of numbers, brackets,
    /// commas and spaces, returning where it starts and ends
    /// (`decode_floats_at` checks the rest).
    fn skip_array(&mut self) -> Option<(usize, usize)> {
        if self.peek()? != b'[' {
            return None;
        }
        let start = self.i;
        let mut depth = 0usize;
        loop {
            match *self.s.get(self.i)? {
                b'[' => depth += 1,
                b']' => {
                    // `depth` ≥ 1 here: the first byte was `[`, and the
                    // loop returns when it falls back to 0.
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Some((start, self.i));
                    }
                }
                b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' | b',' => {}
                b' ' | b'\n' | b'\r' | b'\t' => {}
                _ => return None,
            }
            self.i += 1;
        }
    }
}
