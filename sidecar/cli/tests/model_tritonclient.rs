//! Runs the Python `tritonclient[http]` tests (`tests/python/`) against the
//! `abmesh` binary this `cargo test` just built, so that `cargo test` alone
//! covers the client the KServe ecosystem actually uses.
//!
//! The same tests run directly with `python3 -m pytest -q tests/python`
//! (they then use `target/{debug,release}/abmesh`, or `ABMESH_BIN`).

use std::process::Command;

const NEEDS: &str = "pip install onnxruntime==1.31.1 onnx numpy 'tritonclient[http,grpc]' pytest";

#[test]
fn tritonclient_with_its_defaults_matches_onnxruntime_in_python() {
    let root = abmesh_testkit::repo_root();
    let python = abmesh_testkit::python();
    let probe = Command::new(&python)
        .args([
            "-c",
            "import pytest, numpy, onnx, onnxruntime, tritonclient.http, tritonclient.grpc",
        ])
        .output();
    let missing = match &probe {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Some(format!("python3: {e}")),
    };
    if let Some(why) = missing {
        if std::env::var_os("CI").is_some() {
            panic!("the Python test dependencies are required when CI is set ({NEEDS}): {why}");
        }
        eprintln!(
            "\n==================== SKIPPED: Python test dependencies missing ====================\n\
             {why}\ninstall: {NEEDS}\n\
             ===================================================================================\n"
        );
        return;
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/python",
        ])
        .current_dir(&root)
        .env("ABMESH_BIN", env!("CARGO_BIN_EXE_abmesh"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .status()
        .expect("running pytest");
    assert!(status.success(), "tests/python failed (output above)");
}
