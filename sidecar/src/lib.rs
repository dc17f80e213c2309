//! abmesh sidecar: hosts the model versions under test (ONNX Runtime,
//! KServe v2 REST), ingests exposures and outcomes durably, and evaluates
//! experiments. The `abmesh` binary wraps this library.

pub mod aggregate;
pub mod cli;
pub mod events;
pub mod guardrail;
pub mod kserve;
pub mod model;
pub mod quote;
pub mod report;
pub mod server;
pub mod stats;
pub mod store;
pub mod webhook;
