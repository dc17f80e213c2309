//! Ingestion: the two formats the sidecar takes and their validation.
//!
//! * [`outcome`]: outcome events from applications, `POST /v1/events`
//!   (DESIGN.md, contract 5), a JSON array or NDJSON.
//! * [`exposure`]: exposure batches from the filter, `POST /v1/exposures`.
//! * [`fields`]: the checks and number readers both share.
//!
//! The handlers that validate a body with these, append it to the outcome
//! log and answer once it is durable and applied are `abmesh-server`'s
//! (`handlers::events`); the engine parses the same bytes again when it
//! applies the record ([`crate::Engine::apply_record`]).
//!
//! A request is all or nothing: a body with one invalid event is refused
//! with a 400 that names the event's index and field, and nothing of it is
//! written.

pub mod error;
pub mod exposure;
pub mod fields;
pub mod outcome;

pub use error::ValidationError;

pub use exposure::{parse_exposures, ExposureBatch};
pub use outcome::{parse_outcomes, Outcome};
