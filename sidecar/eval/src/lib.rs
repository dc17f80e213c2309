//! abmesh-eval: experiment evaluation, deterministic and without I/O.
//!
//! - [`aggregate`]: the [`Engine`], the state machine behind the outcome
//!   log: per-user totals, de-duplication, guardrail halts, snapshots,
//!   exported states and their merges; and the mergeable [`Aggregates`] it
//!   keeps up to date for reports.
//! - [`ingest`]: the bodies the sidecar takes (outcome events, the
//!   filter's exposure batches), parsed and validated all or nothing.
//! - [`kind`]: [`RecordKind`], what each record of the log holds.
//! - [`report`]: an experiment's report from the aggregates: decision,
//!   tests and intervals, as JSON, text and an HTML page with charts.
//!
//! Why a crate of its own: this is what decides, and it is a pure function
//! of the records it is given, in order. It opens no socket, starts no
//! thread and knows no runtime, so it is tested, replayed and merged
//! offline exactly as the server runs it (`abmesh report --data-dir`
//! reads a directory with it, without a server). The log that feeds it is
//! `abmesh-store`; the HTTP handlers that append to the log and ask for
//! reports are `abmesh-server`, which also joins the two
//! (`abmesh_server::ingest::EngineMachine`).

pub mod aggregate;
pub mod ingest;
pub mod kind;
pub mod report;

pub use aggregate::{Aggregates, Applied, Engine, EngineOptions};
pub use ingest::ValidationError;
pub use kind::RecordKind;
