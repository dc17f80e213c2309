//! [`ValidationError`]: why an ingest body was refused, with the path of
//! the offending value (shared by both body formats and their fields).

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
