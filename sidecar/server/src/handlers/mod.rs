//! Every handler of both listeners, one module per area; which path and
//! listener each serves is said in one place, [`crate::routes`].
//!
//! - [`kserve`]: the KServe v2 protocol (health, metadata, inference) on
//!   top of the model host;
//! - [`triton`]: Triton's extensions (model configuration, repository
//!   index, load and unload, statistics);
//! - [`models`]: `/admin/models/...`, loading and unloading versions;
//! - [`metrics`]: the `/metrics` endpoint;
//! - [`events`]: the outcome log: ingestion, state export and merge,
//!   halts and lifts;
//! - [`reports`]: the experiment reports.
//!
//! A handler is an `async fn(Request, AppState) -> HandlerResult`
//! ([`crate::router`]).

pub mod events;
pub mod kserve;
pub mod metrics;
pub mod models;
pub mod reports;
pub mod triton;
