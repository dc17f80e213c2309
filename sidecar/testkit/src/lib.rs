//! The test harness of abmesh, shared by every test and benchmark of the
//! workspace (a dev-dependency only; never part of the binary):
//!
//! - [`http`]: the one HTTP client ([`http::Client`] blocking,
//!   [`http::AsyncClient`] in tokio), with raw header values, whole
//!   bodies, JSON helpers and a readiness probe.
//! - [`serve`]: the real `abmesh serve` started on free loopback ports,
//!   its addresses read from the "listening on" lines it prints, killed on
//!   drop.
//! - [`raw`]: requests written byte by byte (slow, torn, oversized), for
//!   the hardening tests, and the server's memory and sockets from /proc.
//! - here: where things are (the repository, the `abmesh` binary, the
//!   project's `.venv` python), free ports and scratch directories.
//!
//! Why a crate: the tests of several crates (server, cli, the Envoy tests
//! in `tests/`) and the ingest benchmark's load generator start the same
//! servers and speak the same HTTP; one copy of that code, tested once,
//! instead of one per test folder.

pub mod http;
pub mod raw;
pub mod serve;

use std::path::{Path, PathBuf};

/// The repository root (the workspace's folder).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("sidecar/testkit has two parents")
        .to_path_buf()
}

/// The target directory (`CARGO_TARGET_DIR`, else `target/` at the root).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The `abmesh` binary to test: `ABMESH_BIN` when set; else the one beside
/// the running test executable, which for the tests of the `abmesh`
/// package is exactly the binary cargo just built for them
/// (`CARGO_BIN_EXE_abmesh`); else a debug, then a release build in the
/// target directory.
pub fn abmesh_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ABMESH_BIN").filter(|p| !p.is_empty()) {
        return p.into();
    }
    // target/<profile>/deps/<test> -> target/<profile>/abmesh
    let beside = std::env::current_exe().ok().and_then(|exe| {
        let profile_dir = exe.parent()?.parent()?;
        Some(profile_dir.join("abmesh"))
    });
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return p;
    }
    for profile in ["debug", "release"] {
        let p = target_dir().join(profile).join("abmesh");
        if p.is_file() {
            return p;
        }
    }
    panic!("the abmesh binary is missing: run `cargo build -p abmesh --bin abmesh` first (or set ABMESH_BIN)");
}

/// The project's python: `.venv/bin/python3` at the root when there is
/// one (scripts/setup.sh makes it), else `python3` from `PATH`.
pub fn python() -> PathBuf {
    let venv = repo_root().join(".venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A scratch directory `abmesh-TAG-...` under the system temp dir, removed
/// on drop.
pub fn scratch_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("abmesh-{tag}-"))
        .tempdir()
        .expect("create a scratch directory")
}
