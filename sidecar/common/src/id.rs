//! [`SidecarId`]: the random 128-bit id of a data directory.
//!
//! The store creates it once per directory and keeps it in the directory's
//! `sidecar-id` file (`abmesh_store::identity`); an exported state carries
//! it, with the LSN the export covers, as its idempotency key
//! (`abmesh_eval::aggregate::engine`). The type lives here because both
//! sides use it and neither depends on the other.

/// A data directory's id: 32 hex digits when written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SidecarId(pub u128);

/// Why a [`SidecarId`] could not be read or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{0:?} is not 32 hex digits")]
    NotHex(String),
    #[error("no random numbers from the OS: {0}")]
    NoRandom(String),
}

impl std::fmt::Display for SidecarId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for SidecarId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let s = s.trim();
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdError::NotHex(s.to_owned()));
        }
        u128::from_str_radix(s, 16)
            .map(SidecarId)
            .map_err(|_| IdError::NotHex(s.to_owned()))
    }
}

impl SidecarId {
    /// A fresh random id.
    pub fn random() -> Result<SidecarId, IdError> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| IdError::NoRandom(e.to_string()))?;
        Ok(SidecarId(u128::from_le_bytes(b)))
    }
}
