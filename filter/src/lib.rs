//! abmesh-filter: sticky, per-user variant assignment for A/B tests, as a
//! proxy-wasm HTTP filter for Envoy and Istio.
//!
//! The crate has two layers:
//!
//! * the **assignment core** ([`Config`], [`Plan`], [`Decisions`]): plain
//!   Rust with no proxy-wasm types. It parses and validates the plugin
//!   configuration once, then decides requests without allocating. The
//!   sidecar's `abmesh assign` links this same code, so assignments computed
//!   outside Envoy agree bit for bit with the filter.
//! * the **proxy-wasm glue** (`wasm` module, built only for
//!   `wasm32-wasip1`): a thin layer over the proxy-wasm ABI that feeds
//!   request headers to the core and writes its decisions back.
//!
//! The hashing scheme is documented in [`hash`].

pub mod config;
mod decide;
pub mod exposures;
mod halts;
pub mod hash;
pub mod header_map;
pub mod health;
pub mod identity;
mod plan;

pub use config::{Config, GuardrailsConfig, MissingIdentity};
pub use decide::{Assignment, Decisions, HeaderSink, RequestHeaders, Source, Verdict};
pub use halts::Halts;
pub use plan::{ConfigError, Experiment, Plan, Slot, Variant};

/// Identifies one version of the plugin configuration: 16 lowercase hex
/// digits of SipHash-1-3 (64-bit, all-zero key) over the configuration
/// bytes the filter ships ([`config::shipped_config`]): exactly as the
/// proxy handed them to the filter, or, when they set `sidecar.token`,
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
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    h.write(bytes);
    format!("{:016x}", h.finish())
}

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod wasm;
