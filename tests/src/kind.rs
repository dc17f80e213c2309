//! Which filter the Envoy tests load: the Wasm filter (default) or the
//! native dynamic module, chosen by `ABMESH_FILTER=wasm|dynamic`, so the
//! same tests run against both (`scripts/test.sh` runs them twice).
//!
//! The configs in `envoy/` load the Wasm filter; for the dynamic module,
//! [`to_dynamic`] rewrites the filter's `typed_config` (and ECDS
//! `type_urls`) into the dynamic-module form with the same plugin JSON as
//! `filter_config`, and [`render_for_kind`] points Envoy's module search
//! path (`ENVOY_DYNAMIC_MODULES_SEARCH_PATH`, inherited by the Envoy the
//! tests spawn) at the built `.so`.

use std::path::PathBuf;

pub const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
pub const DYNAMIC_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
/// The module's name: Envoy loads `lib<name>.so` from the search path.
pub const MODULE_NAME: &str = "abmesh_filter_dynamic";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKind {
    Wasm,
    Dynamic,
}

impl FilterKind {
    /// From `ABMESH_FILTER` (unset: Wasm).
    pub fn from_env() -> FilterKind {
        match std::env::var("ABMESH_FILTER").as_deref() {
            Ok("dynamic") | Ok("native") => FilterKind::Dynamic,
            Ok("wasm") | Err(_) => FilterKind::Wasm,
            Ok(other) => panic!("ABMESH_FILTER must be wasm or dynamic, got {other:?}"),
        }
    }
}

/// The built module: `ABMESH_DYNAMIC_MODULE`, or the release build.
pub fn module_path() -> PathBuf {
    let p = std::env::var_os("ABMESH_DYNAMIC_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            abmesh_testkit::target_dir()
                .join("release")
                .join(format!("lib{MODULE_NAME}.so"))
        });
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release -p abmesh-filter-dynamic` first",
        p.display()
    );
    p
}

/// `yaml` for the filter kind the tests run with.
pub fn render_for_kind(yaml: String) -> String {
    match FilterKind::from_env() {
        FilterKind::Wasm => yaml,
        FilterKind::Dynamic => {
            let module = module_path();
            let dir = module.parent().expect("the module has a directory");
            // The Envoy the tests start inherits it.
            std::env::set_var("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", dir);
            to_dynamic(&yaml)
        }
    }
}

/// Rewrites every abmesh Wasm filter config in `yaml` as the dynamic
/// module's: the `typed_config`'s Wasm-only fields become
/// `dynamic_module_config` and `filter_name`, and `configuration` (the
/// plugin JSON as a `StringValue`) becomes `filter_config`, unchanged.
pub fn to_dynamic(yaml: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        if t.starts_with("\"@type\":") && t.contains(WASM_TYPE) {
            let base = indent(line);
            let pad = " ".repeat(base);
            out.push(format!("{pad}\"@type\": {DYNAMIC_TYPE}"));
            out.push(format!(
                "{pad}dynamic_module_config: {{ name: {MODULE_NAME}, do_not_close: true }}"
            ));
            out.push(format!("{pad}filter_name: abmesh"));
            i += 1;
            // The Wasm fields (`config:`, a sibling of `@type`, and below)
            // up to `configuration:`.
            while i < lines.len()
                && (lines[i].trim().is_empty() || indent(lines[i]) >= base)
                && lines[i].trim() != "configuration:"
            {
                i += 1;
            }
            if i < lines.len() && lines[i].trim() == "configuration:" {
                let conf = indent(lines[i]);
                out.push(format!("{pad}filter_config:"));
                i += 1;
                while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > conf) {
                    let l = lines[i];
                    let shift = (conf - base).min(indent(l));
                    out.push(l[shift..].to_string());
                    i += 1;
                }
            }
            // Anything left of the Wasm block (none in our configs).
            while i < lines.len() && !lines[i].trim().is_empty() && indent(lines[i]) >= base {
                i += 1;
            }
            continue;
        }
        out.push(line.replace(WASM_TYPE, DYNAMIC_TYPE));
        i += 1;
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_filter_becomes_a_dynamic_module_with_the_same_json() {
        let demo = crate::envoy::read_repo_file("envoy/demo.yaml");
        let dynamic = to_dynamic(&demo);
        assert!(
            !dynamic.contains("wasm.v3") && !dynamic.contains("vm_config"),
            "{dynamic}"
        );
        assert!(dynamic.contains(DYNAMIC_TYPE));
        assert!(dynamic.contains("filter_name: abmesh"));
        assert_eq!(
            crate::envoy::plugin_json(&dynamic),
            crate::envoy::plugin_json(&demo)
        );
        let ecds = to_dynamic(&crate::envoy::read_repo_file(
            "envoy/closed-loop-filter.yaml",
        ));
        assert_eq!(
            crate::envoy::plugin_json(&ecds),
            crate::envoy::plugin_json(&crate::envoy::read_repo_file(
                "envoy/closed-loop-filter.yaml"
            ))
        );
        let boot = to_dynamic(&crate::envoy::read_repo_file("envoy/closed-loop.yaml"));
        assert!(
            boot.contains(&format!("type_urls: [\"{DYNAMIC_TYPE}\"]")),
            "{boot}"
        );
    }
}
