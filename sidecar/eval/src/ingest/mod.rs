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

pub mod exposure;
pub mod fields;
pub mod outcome;

pub use exposure::{parse_exposures, ExposureBatch};
pub use outcome::{parse_outcomes, Outcome};

/// Why a request body was refused: where (`events[3].value`) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ValidationError {
    /// JSON path of the offending value, from the top of the body.
    pub path: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(path: impl Into<String>, message: impl std::fmt::Display) -> Self {
        ValidationError {
            path: path.into(),
            message: message.to_string(),
        }
    }
}
