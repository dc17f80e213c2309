//! Size flags: `1048576`, `512KiB`, `64MiB`, `1GiB`. Shared by the flags of
//! `serve` (`--body-limit`), its limits (`--body-bytes-in-flight`) and the
//! evaluation options (`--ingest-body-limit`, `--snapshot-every`), so it
//! is a module of its own that they all import and that imports none of
//! them.

/// Why a size flag's value is not a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("invalid size {0:?}: expected bytes, or a number with KiB, MiB or GiB")]
    NotANumber(String),
    #[error("invalid size unit {0:?}: use KiB, MiB or GiB")]
    Unit(String),
    #[error("size {0:?} is too large")]
    TooLarge(String),
}

/// Parses `1048576`, `512KiB`, `64MiB` or `1GiB` (a clap `value_parser`).
pub fn parse_size(s: &str) -> Result<usize, SizeError> {
    let s = s.trim();
    let (digits, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: usize = digits
        .parse()
        .map_err(|_| SizeError::NotANumber(s.to_owned()))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(SizeError::Unit(other.to_owned())),
    };
    n.checked_mul(mult)
        .ok_or_else(|| SizeError::TooLarge(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2 KiB"), Ok(2048));
        assert!(parse_size("10MB").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
