//! The record kinds of the outcome log: what each record's payload is.
//!
//! The log (`abmesh-store`) keeps a kind as one opaque byte; this is the
//! vocabulary, and the engine is what gives each kind its meaning
//! ([`crate::Engine::apply_record`]). The byte values are on disk: never
//! renumber one, only add.

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A `POST /v1/events` body, as received (validated).
    Outcomes = 1,
    /// A `POST /v1/exposures` body, as received (validated).
    Exposures = 2,
    /// Another sidecar's exported state, merged in (`POST /admin/state/merge`).
    Merge = 3,
    /// A plugin configuration learned from a filter's exposure batch:
    /// `{"config_id": "<16 hex>", "config": {...verbatim...}}`. Written
    /// before the batch that brought it; the engine's definitions follow it.
    Config = 4,
    /// An operator's action on a variant (`POST /admin/experiments/{name}/
    /// variants/{variant}/halt` or `.../lift`): `{"action": "halt"|"lift",
    /// "experiment": ..., "variant": ..., "reason": ...}`.
    Admin = 5,
    /// The next allocation period of a bandit experiment, computed by the
    /// sidecar's bandit task: `{"experiment": ..., "period": k, "weights":
    /// {"variant": share, ...}, "prob_best": {...}, "updated_at_ms": ...}`
    /// (`crate::aggregate::bandit::BanditRecord`).
    Bandit = 6,
}

/// A byte that is no [`RecordKind`] (a record written by a newer version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown record kind {0}")]
pub struct UnknownKind(pub u8);

impl TryFrom<u8> for RecordKind {
    type Error = UnknownKind;

    fn try_from(b: u8) -> Result<RecordKind, UnknownKind> {
        match b {
            1 => Ok(RecordKind::Outcomes),
            2 => Ok(RecordKind::Exposures),
            3 => Ok(RecordKind::Merge),
            4 => Ok(RecordKind::Config),
            5 => Ok(RecordKind::Admin),
            6 => Ok(RecordKind::Bandit),
            other => Err(UnknownKind(other)),
        }
    }
}

impl From<RecordKind> for u8 {
    fn from(k: RecordKind) -> u8 {
        k as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_unknown_bytes_are_refused() {
        for k in [
            RecordKind::Outcomes,
            RecordKind::Exposures,
            RecordKind::Merge,
            RecordKind::Config,
            RecordKind::Admin,
            RecordKind::Bandit,
        ] {
            assert_eq!(RecordKind::try_from(u8::from(k)), Ok(k));
        }
        assert_eq!(RecordKind::try_from(0), Err(UnknownKind(0)));
        assert_eq!(RecordKind::try_from(7), Err(UnknownKind(7)));
    }
}
