//! The wire format between the filter and the abmesh sidecar, in one place:
//! both sides of the contract (`POST /v1/exposures`, documented in
//! sidecar/EVALUATION.md) are written against this module.
//!
//! * [`batch`]: the batch the filter POSTs on every tick (exposures, health
//!   counters, the configuration id and, when asked, the configuration);
//! * [`reply`]: the sidecar's answer (halted variants, bandit weights,
//!   `config_needed`);
//! * [`health`]: the health rows and the latency histogram both sides
//!   bucket by;
//! * [`Sender`]: the filter's side of the exchange: one batch in flight, a
//!   failed batch re-sent with the same `seq` (the sidecar de-duplicates by
//!   `(instance, seq)`), the configuration sent until the sidecar has it;
//! * the request's headers and the limits below.
//!
//! Nothing here talks to a proxy: the proxy-wasm glue and the native
//! dynamic-module glue each dispatch the request and hand the answer back.

pub mod batch;
pub mod health;
pub mod reply;
mod sender;

pub use batch::{experiments_json, write_batch, BatchMeta};
pub use reply::{parse_reply, AllocationUpdate, Reply};
pub use sender::{Note, NoteLevel, Sender};

use crate::config::SidecarConfig;

/// Longest user id shipped; the sidecar accepts ids of 1 to 256 bytes.
/// Longer ids are counted as dropped: longer in bytes when recorded, or,
/// for ids that are not UTF-8, longer once sent as UTF-8
/// ([`batch::write_batch`]).
pub const MAX_USER_BYTES: usize = 256;

/// Longest sidecar answer the filter reads.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// `content-type` of a batch.
pub const CONTENT_TYPE: &str = "application/json";

/// The headers of every batch request: `:method`, `:path`, `:authority`,
/// `content-type`, and with `sidecar.token` `authorization: Bearer TOKEN`.
/// Each glue serializes them once, at configure time, in its proxy's form;
/// they are only handed to the proxy's HTTP call, never logged.
pub fn request_headers(cfg: &SidecarConfig) -> Vec<(&'static str, String)> {
    let authority = cfg.authority.as_deref().unwrap_or(&cfg.cluster);
    let mut headers = vec![
        (":method", "POST".to_string()),
        (":path", cfg.path.clone()),
        (":authority", authority.to_string()),
        ("content-type", CONTENT_TYPE.to_string()),
    ];
    if let Some(t) = &cfg.token {
        headers.push(("authorization", format!("Bearer {}", t.expose())));
    }
    headers
}

/// Whether the sidecar took a batch: a `2xx` `:status`. No status means the
/// call failed (no answer, reset, timeout).
pub fn accepted(status: Option<&[u8]>) -> bool {
    status.is_some_and(|s| s.len() == 3 && s.starts_with(b"2") && s.iter().all(u8::is_ascii_digit))
}

/// The `instance` of a filter's batches: unique per filter instance (a
/// proxy-wasm VM's root context, a dynamic module's filter configuration),
/// since `seq` restarts at 0 in a new one. `kind` names the glue, `id`
/// tells instances of one process apart and `started_ms` processes.
pub fn instance_id(kind: &str, id: u64, started_ms: u64) -> String {
    format!("{kind}/{id}/{started_ms}")
}

/// Identifies one version of the plugin configuration: 16 lowercase hex
/// digits of SipHash-1-3 (64-bit, all-zero key) over the configuration
/// bytes the filter ships ([`crate::config::shipped_config`]): exactly as
/// the proxy handed them to the filter, or, when they set `sidecar.token`,
/// the same document without the token.
///
/// The filter sends it with every exposure batch (`config_id`), and the
/// configuration itself only when the sidecar asks for it, so the sidecar
/// learns which experiment definitions (names, variants, control,
/// guardrails) the batch's indexes refer to without receiving the whole
/// configuration every second. Filter and sidecar compute it with this one
/// function, so they agree on the id. It is not a security measure: the
/// key is public, and it only tells versions apart. Any byte change,
/// whitespace included, is a new version.
pub fn config_id(bytes: &[u8]) -> String {
    format_config_id(config_id_u64(bytes))
}

/// [`config_id`] as the number it writes in hex: what the sidecar keys
/// learned configurations by.
pub fn config_id_u64(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    h.write(bytes);
    h.finish()
}

/// Hex digits of a configuration id on the wire.
pub const CONFIG_ID_DIGITS: usize = 16;

/// A configuration id as batches carry it: [`CONFIG_ID_DIGITS`] lowercase
/// hex digits.
pub fn format_config_id(id: u64) -> String {
    format!("{id:016x}")
}

/// Reads a batch's `config_id`: exactly [`CONFIG_ID_DIGITS`] lowercase hex
/// digits (what [`format_config_id`] writes), anything else is `None`.
pub fn parse_config_id(s: &str) -> Option<u64> {
    if s.len() != CONFIG_ID_DIGITS
        || !s
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(json: &str) -> SidecarConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn request_headers_carry_the_token_only_when_set() {
        let h = request_headers(&sidecar(r#"{"cluster": "abmesh_sidecar"}"#));
        assert_eq!(
            h,
            [
                (":method", "POST".to_string()),
                (":path", "/v1/exposures".to_string()),
                (":authority", "abmesh_sidecar".to_string()),
                ("content-type", "application/json".to_string()),
            ]
        );
        let h = request_headers(&sidecar(
            r#"{"cluster": "c", "authority": "side.car", "path": "/x", "token": "0123456789abcdef"}"#,
        ));
        assert_eq!(h[1].1, "/x");
        assert_eq!(h[2].1, "side.car");
        assert_eq!(
            h[4],
            ("authorization", "Bearer 0123456789abcdef".to_string())
        );
    }

    #[test]
    fn only_2xx_is_accepted() {
        for (s, ok) in [
            (Some(&b"200"[..]), true),
            (Some(b"204"), true),
            (Some(b"299"), true),
            (Some(b"401"), false),
            (Some(b"503"), false),
            (Some(b"2"), false),
            (Some(b"2xx"), false),
            (Some(b""), false),
            (None, false),
        ] {
            assert_eq!(accepted(s), ok, "{s:?}");
        }
    }

    #[test]
    fn config_id_is_siphash13_hex() {
        let id = config_id(b"");
        assert_eq!(id.len(), 16);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(config_id(b"{}"), config_id(b"{} "));
        // Independent reference: the pure-Python SipHash-1-3 of
        // benches/envoy/render.py, `siphash13(0, 0, data)`.
        assert_eq!(config_id(b""), "d1fba762150c532c");
        assert_eq!(config_id(br#"{"experiments": []}"#), "f8ad1df3030097e5");
        assert_eq!(config_id_u64(b""), 0xd1fb_a762_150c_532c);
    }

    #[test]
    fn config_ids_read_back_only_as_written() {
        for id in [0, 255, 0xd1fb_a762_150c_532c, u64::MAX] {
            assert_eq!(parse_config_id(&format_config_id(id)), Some(id));
        }
        assert_eq!(format_config_id(255), "00000000000000ff");
        for bad in [
            "",
            "ff",
            "00000000000000FF",
            "0x000000000000ff",
            "000000000000000ff",
            "+00000000000000f",
            "00000000000000g0",
        ] {
            assert_eq!(parse_config_id(bad), None, "{bad:?}");
        }
    }
}
