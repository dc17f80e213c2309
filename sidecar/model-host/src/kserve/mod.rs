//! The KServe Open Inference Protocol v2 over REST (DESIGN.md, contract 4).
//!
//! - [`types`]: the JSON documents.
//! - [`json`]: tensor data as JSON arrays, checked element by element.
//! - [`codec`]: whole requests and responses, JSON and the binary tensor
//!   extension (`Inference-Header-Content-Length`) that `tritonclient` uses;
//!   `fast`: the common JSON request in one pass.
//! - [`request`]: what both decoders produce.
//! - [`triton`]: Triton's extensions its clients call: model configuration,
//!   repository index, statistics.
//!
//! The HTTP endpoints on top of this and the model host are
//! `abmesh-server`'s (`handlers::kserve`).

pub mod codec;
mod fast;
pub mod json;
pub mod request;
pub mod triton;
pub mod types;
