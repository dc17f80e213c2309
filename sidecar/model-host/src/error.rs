//! Errors of the inference path, each with the side it is on.

use super::signature::RequestError;

/// An inference request that did not produce outputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// The request does not fit the model (400).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// More requests are waiting than the queue holds (503): the version is
    /// overloaded, and the client should back off rather than pile on.
    #[error(
        "model '{model}' version {version}: {capacity} requests are already waiting; retry later"
    )]
    QueueFull {
        model: String,
        version: u64,
        capacity: usize,
    },
    /// The version's sessions stopped before running the request (503).
    #[error("model '{model}' version {version} stopped before running the request")]
    Stopped { model: String, version: u64 },
    /// ONNX Runtime failed (500).
    #[error("inference failed: {0}")]
    Runtime(String),
}
