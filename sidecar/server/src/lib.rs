//! abmesh-server: the HTTP side of `abmesh serve`, hyper 1.x over tokio,
//! HTTP/1.1.
//!
//! - [`routes`]: every endpoint of both listeners, data plane and admin,
//!   in one table each; [`router`]: method + path → handler (`matchit`).
//! - [`handlers`]: every handler (KServe v2, model admin, `/metrics`, the
//!   outcome log, reports).
//! - [`auth`]: the [`auth::Gate`] each listener puts before its router:
//!   the admin bearer token, the ingest token, `/admin/*` kept off the data
//!   plane.
//! - [`state`]: [`state::AppState`], what handlers share (model host,
//!   metrics registry, components such as the outcome log).
//! - [`body`], [`response`]: bounded request bodies; JSON responses and
//!   errors.
//! - [`ingest`]: the outcome log component ([`ingest::Ingest`]) and the
//!   glue that puts the evaluation engine under the log.
//! - [`serve`]: one listener's accept loop and graceful shutdown.
//! - [`grpc`]: the KServe v2 / Triton gRPC service (`--grpc-listen`),
//!   generated from `proto/` by `build.rs`, on the same state, served on
//!   hyper's HTTP/2.
//! - [`local`]: an in-process server of the outcome log and reports on
//!   two loopback ports, for tests and tools.
//! - [`webhook`]: notices of halts and alarms, POSTed out.
//!
//! Why a crate of its own: everything that speaks HTTP or holds a socket
//! is here, on top of crates that do not (`abmesh-eval`, `abmesh-store`,
//! `abmesh-model-host`); the `abmesh` binary wires it from flags.

pub mod auth;
pub mod body;
pub mod grpc;
pub mod handlers;
pub mod ingest;
pub mod local;
pub mod response;
pub mod router;
pub mod routes;
pub mod serve;
pub mod state;
pub mod webhook;
