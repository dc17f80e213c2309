//! The layering of the sidecar crates, checked (issue 10):
//!
//! - no import cycle between the modules of any sidecar crate: a module
//!   that imports another (`use crate::…`, `use super::…`, a `crate::…`
//!   path in code, a `pub use` re-export) is never imported back by it,
//!   directly or through others (test modules, `#[cfg(test)] mod …`, are
//!   left out: a test may look at everything);
//! - the crates depend on each other one way only (`cargo metadata`), in
//!   the order of the README's layout;
//! - `abmesh-stats` stays pure: none of ort, hyper, tokio, plotters,
//!   mimalloc or ndarray is in its dependency tree (`cargo tree`);
//! - `ort` is a dependency of exactly one crate, `abmesh-model-host`;
//! - one source file, `sidecar/server/src/routes.rs`, adds routes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The sidecar's crates (folder under `sidecar/`).
const CRATES: &[&str] = &[
    "common",
    "stats",
    "store",
    "eval",
    "model-host",
    "server",
    "cli",
    "testkit",
];

fn sidecar_dir() -> PathBuf {
    abmesh_testkit::repo_root().join("sidecar")
}

/// A module path inside a crate (`["aggregate", "engine"]`; `[]` is the
/// crate root).
type ModPath = Vec<String>;

/// Every `.rs` file of a crate's `src/` with its module path.
fn modules(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            let last = parts.last().cloned().unwrap_or_default();
            if matches!(last.as_str(), "mod" | "lib" | "main") {
                parts.pop();
            }
            out.insert(parts, path);
        }
    }
    out
}

/// The code of a file without comments, string and char literals, and
/// `#[cfg(test)]` items (a test module, or a test-only `use`).
fn code_of(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if matches!(b.get(i + 1), Some(b'"') | Some(b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                // r"..." or r#"..."#
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = j + close.len();
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}'), or a lifetime.
                let end = b[i + 1..].iter().take(12).position(|&c| c == b'\'');
                match end {
                    Some(n) if n > 0 && (n == 1 || b[i + 1] == b'\\') => i += n + 2,
                    _ => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    strip_test_items(&out)
}

/// Removes each `#[cfg(test)]` item: a block (`mod tests { … }`) or a
/// statement up to its `;`.
fn strip_test_items(code: &str) -> String {
    let mut out = code.to_owned();
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at..];
        let brace = rest.find('{');
        let semi = rest.find(';');
        let end = match (brace, semi) {
            (Some(b), Some(s)) if s < b => at + s + 1,
            (Some(b), _) => {
                let mut depth = 0;
                let mut end = out.len();
                for (k, c) in out[at + b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = at + b + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, Some(s)) => at + s + 1,
            (None, None) => out.len(),
        };
        out.replace_range(at..end, "");
    }
    out
}

/// Expands a use tree (`crate::a::{b, c::{d, e}}`) into paths.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.split_whitespace().collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            expand(p)
                .into_iter()
                .map(|x| format!("{prefix}{x}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The paths a module's code names: its use trees, expanded, and the
/// `crate::`/`super::`/`self::` paths in expressions and types.
fn paths_in(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = find_word(rest, "use") {
        let after = &rest[at + 3..];
        match after.find(';') {
            Some(end) => {
                out.extend(expand(&after[..end]));
                rest = &after[end..];
            }
            None => break,
        }
    }
    let b = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(k) = code[from..].find(start) {
            let at = from + k;
            from = at + start.len();
            if at > 0
                && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] == b':')
            {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            out.push(code[at..end].trim_end_matches(':').to_owned());
        }
    }
    out
}

fn find_word(s: &str, word: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(k) = s[from..].find(word) {
        let at = from + k;
        let before_ok = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_');
        let after_ok = b
            .get(at + word.len())
            .is_some_and(|c| c.is_ascii_whitespace());
        if before_ok && after_ok {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// The module a path leads to (its longest prefix that is a module), seen
/// from module `here`; None for paths outside the crate.
fn target(path: &str, here: &ModPath, known: &BTreeMap<ModPath, PathBuf>) -> Option<ModPath> {
    let mut segs = path.split("::").filter(|s| !s.is_empty());
    let mut base: ModPath = match segs.next()? {
        "crate" => Vec::new(),
        "super" => {
            let mut p = here.clone();
            p.pop();
            p
        }
        "self" => here.clone(),
        // A path relative to this module: one of its child modules.
        child => {
            let mut p = here.clone();
            p.push(child.to_owned());
            if !known.contains_key(&p) {
                return None;
            }
            p
        }
    };
    for s in segs {
        match s {
            "super" => {
                base.pop();
            }
            "self" | "*" => {}
            name => {
                let mut next = base.clone();
                next.push(name.to_owned());
                if known.contains_key(&next) {
                    base = next;
                } else {
                    break;
                }
            }
        }
    }
    Some(base)
}

/// The import edges between the modules of one crate.
fn edges(src: &Path) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let known = modules(src);
    let mut graph: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (module, file) in &known {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let deps = graph.entry(module.clone()).or_default();
        for p in paths_in(&code) {
            if let Some(t) = target(&p, module, &known) {
                if &t != module {
                    deps.insert(t);
                }
            }
        }
    }
    graph
}

/// Every cycle's modules (strongly connected components of more than one
/// module), by Tarjan's algorithm.
fn cycles(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct State<'g> {
        graph: &'g BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'g ModPath, usize>,
        low: BTreeMap<&'g ModPath, usize>,
        stack: Vec<&'g ModPath>,
        on: BTreeSet<&'g ModPath>,
        out: Vec<Vec<ModPath>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g ModPath) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let Some((w, _)) = s.graph.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                scc.push(w.clone());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        m.join("::")
    }
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let mut problems = Vec::new();
    for krate in CRATES {
        let graph = edges(&sidecar_dir().join(krate).join("src"));
        assert!(
            graph.len() > 1 || *krate == "common",
            "{krate}: no modules found"
        );
        for scc in cycles(&graph) {
            let names: Vec<String> = scc.iter().map(show).collect();
            let detail: Vec<String> = scc
                .iter()
                .map(|m| {
                    let into: Vec<String> = graph[m]
                        .iter()
                        .filter(|t| scc.contains(t))
                        .map(show)
                        .collect();
                    format!("{} -> {}", show(m), into.join(", "))
                })
                .collect();
            problems.push(format!(
                "{krate}: cycle among {}: {}",
                names.join(", "),
                detail.join("; ")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "import cycles:\n{}",
        problems.join("\n")
    );
}

/// The checker itself finds a cycle, through `use`, `super::` and a path
/// in code, and ignores comments, strings and test modules.
#[test]
fn the_cycle_check_sees_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod c;\n").unwrap();
    std::fs::write(
        src.join("a/mod.rs"),
        "pub mod x;\npub use x::X;\npub struct Y;\n",
    )
    .unwrap();
    std::fs::write(src.join("a/x.rs"), "use super::Y;\npub struct X;\n").unwrap();
    std::fs::write(
        src.join("b.rs"),
        "// use crate::c;\nfn f() { let _ = \"crate::c\"; crate::c::g(); }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("c.rs"),
        "pub fn g() {}\n#[cfg(test)]\nmod tests { use crate::b; }\n",
    )
    .unwrap();
    let graph = edges(src);
    let found: Vec<Vec<String>> = cycles(&graph)
        .iter()
        .map(|c| {
            let mut v: Vec<String> = c.iter().map(show).collect();
            v.sort();
            v
        })
        .collect();
    assert_eq!(found, [vec!["a".to_owned(), "a::x".to_owned()]]);
    assert!(graph[&vec!["b".to_owned()]].contains(&vec!["c".to_owned()]));
    assert!(graph[&vec!["c".to_owned()]].is_empty(), "{graph:?}");
}

/// The target tuple of this machine (`rustc --print host-tuple`).
fn host_tuple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let out = Command::new(rustc)
        .args(["--print", "host-tuple"])
        .output()
        .expect("rustc --print host-tuple");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `cargo metadata` of the workspace: for each package, its normal
/// dependencies.
fn workspace_deps() -> BTreeMap<String, BTreeSet<String>> {
    // Only this platform's dependencies: resolving every platform's
    // (macOS frameworks under the NATS client's TLS) would need sources
    // that an offline build never downloaded.
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host_tuple()])
        .current_dir(abmesh_testkit::repo_root())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: BTreeSet<&str> = v["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let mut deps = BTreeMap::new();
    for p in v["packages"].as_array().unwrap() {
        if !members.contains(p["id"].as_str().unwrap()) {
            continue;
        }
        let normal: BTreeSet<String> = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect();
        deps.insert(p["name"].as_str().unwrap().to_owned(), normal);
    }
    deps
}

#[test]
fn crates_depend_on_each_other_one_way() {
    let deps = workspace_deps();
    // Each crate may depend only on crates before it.
    let order = [
        "abmesh-filter",
        "abmesh-common",
        "abmesh-stats",
        "abmesh-store",
        "abmesh-eval",
        "abmesh-model-host",
        "abmesh-server",
        "abmesh",
    ];
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("abmesh-common", &[][..]),
        ("abmesh-stats", &["abmesh-filter"][..]),
        ("abmesh-store", &["abmesh-common"][..]),
        (
            "abmesh-eval",
            &["abmesh-common", "abmesh-filter", "abmesh-stats"][..],
        ),
        ("abmesh-model-host", &["abmesh-common"][..]),
    ]);
    for (i, name) in order.iter().enumerate() {
        let ours: Vec<&String> = deps[*name]
            .iter()
            .filter(|d| d.starts_with("abmesh"))
            .collect();
        for d in &ours {
            let j = order.iter().position(|o| o == d);
            assert!(
                j.is_some_and(|j| j < i),
                "{name} depends on {d}, which does not come before it"
            );
            if let Some(ok) = allowed.get(name) {
                assert!(ok.contains(&d.as_str()), "{name} may not depend on {d}");
            }
        }
    }
    // The test harness is for tests only.
    for (name, d) in &deps {
        if name != "abmesh-e2e" {
            assert!(
                !d.contains("abmesh-testkit"),
                "{name} depends on abmesh-testkit"
            );
        }
    }
}

/// The crates in `cargo tree -p PACKAGE -e normal` (names only).
fn tree(package: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            package,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(abmesh_testkit::repo_root())
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn the_statistics_need_no_runtime_http_onnx_plotting_or_allocator() {
    let stats = tree("abmesh-stats");
    assert!(stats.contains("statrs"), "{stats:?}");
    for banned in ["ort", "hyper", "tokio", "plotters", "mimalloc", "ndarray"] {
        assert!(
            !stats.contains(banned),
            "abmesh-stats depends on {banned}: {stats:?}"
        );
    }
}

#[test]
fn ort_is_a_dependency_of_the_model_host_only() {
    let with_ort: Vec<String> = workspace_deps()
        .into_iter()
        .filter(|(_, d)| d.contains("ort"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(with_ort, ["abmesh-model-host"]);
}

#[test]
fn one_file_adds_routes() {
    let routes = Path::new("server/src/routes.rs");
    let mut adding = Vec::new();
    for krate in CRATES {
        for (_, file) in modules(&sidecar_dir().join(krate).join("src")) {
            let code = code_of(&std::fs::read_to_string(&file).unwrap());
            if code.contains(".route(") {
                adding.push(file.strip_prefix(sidecar_dir()).unwrap().to_path_buf());
            }
        }
    }
    assert_eq!(adding, [routes]);
}
