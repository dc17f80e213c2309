//! The model host: ONNX model versions served side by side.
//!
//! - [`repository`]: the `models/{name}/{version}/model.onnx` folder.
//! - [`dylib`], [`runtime`], [`device`]: finding `libonnxruntime`, the
//!   process's ONNX Runtime environment, and the execution provider.
//! - [`signature`]: a model's inputs and outputs, and the request checks.
//! - [`batching`], `pool`: the per-version queue, dynamic batching and the
//!   sessions that run the batches.
//! - [`host`]: which versions are in service; load, unload, reload.
//! - [`metrics`]: per model and version Prometheus metrics.
//!
//! Nothing here knows about HTTP; `crate::kserve` and `crate::server` put
//! the protocol on top.

pub mod batching;
mod datatype;
pub mod device;
pub mod dylib;
mod error;
pub mod host;
pub mod metrics;
mod pool;
pub mod repository;
pub mod runtime;
pub mod signature;
pub mod tensor;

pub use batching::BatchConfig;
pub use datatype::{DataType, DataTypeError};
pub use device::{Device, DeviceRequest};
pub use error::InferError;
pub use host::{AdminError, HostConfig, LoadOutcome, LoadedVersion, LookupError, ModelHost};
pub use runtime::{Runtime, SessionOptions};
pub use tensor::{NamedTensor, OutputTensor, Tensor};
