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
//! * the **sidecar protocol** ([`protocol`]): the batch the filter ships
//!   exposures and health in, the sidecar's answer (halts and bandit
//!   weights, kept in [`Halts`] and [`Allocation`]), and the
//!   retry rules; with [`telemetry`], what is recorded per request for it;
//! * the **proxy-wasm glue** (`wasm` module, built only for
//!   `wasm32-wasip1`): a thin layer over the proxy-wasm ABI that feeds
//!   request headers to the core and writes its decisions back. The
//!   native Envoy dynamic module (`filter/dynamic`, crate
//!   `abmesh-filter-dynamic`) is another such layer over the same core.
//!
//! The hashing scheme is documented in [`hash`].

mod allocation;
pub mod config;
mod decide;
pub mod exposures;
mod halts;
pub mod hash;
pub mod header_map;
pub mod health;
pub mod identity;
mod plan;
pub mod protocol;
pub mod streams;
pub mod telemetry;

pub use allocation::{Allocation, AllocationError};
pub use config::{BanditConfig, Config, GuardrailsConfig, MissingIdentity};
pub use decide::{Assignment, Decisions, HeaderSink, RequestHeaders, Source, Verdict};
pub use halts::Halts;
pub use plan::{ConfigError, Experiment, Plan, Slot, Variant};
pub use protocol::config_id;

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod wasm;
