//! What a decoded inference request is: the types both decoders produce,
//! the general one ([`super::codec`]) and the one-pass fast path for the
//! common JSON request (`super::fast`). They live in a module of their own
//! so that neither decoder imports the other's types (the general decoder
//! calls the fast path first; the fast path returns these).

use crate::tensor::NamedTensor;

/// A decoded inference request.
#[derive(Debug)]
pub struct DecodedRequest {
    pub id: Option<String>,
    pub inputs: Vec<NamedTensor>,
    /// The outputs asked for, by name; `None` asks for all.
    pub outputs: Option<Vec<String>>,
    /// Which outputs to return as binary data.
    pub binary: BinaryOutputs,
}

/// Which outputs go in the binary part of the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryOutputs {
    All,
    None,
    /// The outputs (by name) that asked for it.
    Named(Vec<String>),
}

impl BinaryOutputs {
    pub fn contains(&self, output: &str) -> bool {
        match self {
            BinaryOutputs::All => true,
            BinaryOutputs::None => false,
            BinaryOutputs::Named(n) => n.iter().any(|o| o == output),
        }
    }
}
