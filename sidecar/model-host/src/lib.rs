//! abmesh-model-host: ONNX model versions served side by side, and the
//! KServe v2 codec for them.
//!
//! Why a crate of its own: it is the only one that depends on ONNX Runtime
//! (`ort`, loaded at run time) and the one where the `cuda` feature lives,
//! so ort's toolchain floor and build stay here, away from the statistics,
//! the log and the filter.
//!
//! - [`repository`]: the `models/{name}/{version}/model.onnx` folder.
//! - [`dylib`], [`runtime`], [`device`]: finding `libonnxruntime`, the
//!   process's ONNX Runtime environment, and the execution provider.
//! - [`signature`]: a model's inputs and outputs, and the request checks.
//! - [`batching`], `pool`: the per-version queue, dynamic batching and the
//!   sessions that run the batches.
//! - [`host`]: which versions are in service; load, unload, reload.
//! - [`metrics`]: per model and version Prometheus metrics.
//! - [`stats`]: per version Triton-style inference statistics (counts and
//!   nanoseconds per phase and batch size).
//! - [`kserve`]: the KServe v2 request and response bodies (JSON and the
//!   binary tensor extension), decoded into and encoded from [`Tensor`]s.
//!
//! Nothing here knows about HTTP; `abmesh-server`'s KServe handlers put
//! the protocol's endpoints on top.

pub mod batching;
mod datatype;
pub mod device;
pub mod dylib;
mod error;
pub mod host;
pub mod kserve;
pub mod metrics;
mod pool;
pub mod repository;
pub mod runtime;
pub mod signature;
pub mod stats;
pub mod tensor;

pub use batching::BatchConfig;
pub use datatype::{DataType, DataTypeError};
pub use device::{Device, DeviceRequest};
pub use error::InferError;
pub use host::{AdminError, HostConfig, LoadOutcome, LoadedVersion, LookupError, ModelHost};
pub use runtime::{Runtime, SessionOptions};
pub use tensor::{NamedTensor, OutputTensor, Tensor};
