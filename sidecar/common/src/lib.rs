//! The few things every abmesh sidecar crate shares, kept in a crate of
//! their own so that the crates above it (store, eval, model host, server)
//! need not depend on one another to use them:
//!
//! - [`quote`]: quoting client-supplied values in error messages, bounded
//!   (the model host, the ingest parsers and the server all quote).
//! - [`id`]: [`SidecarId`], the random id of a data directory. The store
//!   creates and keeps it; exported states (eval) carry it as their
//!   idempotency key.
//! - [`metrics`]: [`metrics::Register`], registering Prometheus metrics
//!   one line each (the log, the model host, ingestion and request bodies
//!   all export metrics).
//!
//! It depends on nothing of the project, and `abmesh-stats` does not
//! depend on it (the statistics stay free of everything but their maths).

pub mod id;
pub mod metrics;
pub mod quote;

pub use id::{IdError, SidecarId};
