//! Finding `libonnxruntime` at run time.
//!
//! `abmesh` is built with `ort`'s `load-dynamic`: nothing is downloaded or
//! linked at build time, and the library is opened when `serve` starts. The
//! library we support is the one inside the `onnxruntime` (or
//! `onnxruntime-gpu`) wheel, `site-packages/onnxruntime/capi/
//! libonnxruntime.so.1.31.1`. The wheel ships no unversioned symlink, so the
//! usual `dlopen("libonnxruntime.so")` search would never find it; hence this
//! module.
//!
//! Order: an explicit path (`--ort-library`, or `ORT_DYLIB_PATH`, the variable
//! `ort` itself documents), then the `onnxruntime` package that `python3`
//! imports, then a scan of the usual site-packages folders (for machines
//! where the wheel is installed but `python3` is not on `PATH`).

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The wheel `abmesh` is built and tested against.
pub const SUPPORTED_WHEEL: &str = "onnxruntime==1.31.1";

/// Where the library was found, for the startup log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--ort-library` or `ORT_DYLIB_PATH`.
    Explicit,
    /// The `onnxruntime` package that this Python interpreter imports.
    Python(String),
    /// A site-packages folder found by scanning.
    SitePackages,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Explicit => f.write_str("--ort-library / ORT_DYLIB_PATH"),
            Source::Python(py) => write!(f, "the onnxruntime package of {py}"),
            Source::SitePackages => f.write_str("a site-packages scan"),
        }
    }
}

/// A `libonnxruntime` file to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrtLibrary {
    pub path: PathBuf,
    pub source: Source,
}

/// No usable library was found.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error(
        "ONNX Runtime library {path} (from --ort-library / ORT_DYLIB_PATH) does not exist, \
         or is a folder with no libonnxruntime in it"
    )]
    ExplicitMissing { path: PathBuf },
    #[error(
        "ONNX Runtime library not found. abmesh loads libonnxruntime at run time; either\n  \
         - install the wheel: `pip install {SUPPORTED_WHEEL}` (CPU), or \
         `pip install onnxruntime-gpu==1.31.1` (CUDA 13), or\n  \
         - set ORT_DYLIB_PATH (or --ort-library) to the library file, e.g. \
         .../site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1\n\
         Looked for the onnxruntime package with python3/python and in: {}",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { searched: Vec<PathBuf> },
}

/// Finds the library, honouring an explicit path first.
pub fn locate(explicit: Option<&Path>) -> Result<OrtLibrary, LocateError> {
    if let Some(path) = explicit {
        let file = if path.is_dir() {
            library_in(path).or_else(|| library_in(&path.join("capi")))
        } else if path.is_file() {
            Some(path.to_path_buf())
        } else {
            None
        };
        return file
            .map(|path| OrtLibrary {
                path,
                source: Source::Explicit,
            })
            .ok_or_else(|| LocateError::ExplicitMissing {
                path: path.to_path_buf(),
            });
    }
    for python in ["python3", "python"] {
        if let Some(pkg) = python_package_dir(python) {
            if let Some(path) = library_in(&pkg.join("capi")) {
                return Ok(OrtLibrary {
                    path,
                    source: Source::Python(python.to_owned()),
                });
            }
        }
    }
    let searched = site_packages_candidates();
    for dir in &searched {
        if let Some(path) = library_in(&dir.join("onnxruntime").join("capi")) {
            return Ok(OrtLibrary {
                path,
                source: Source::SitePackages,
            });
        }
    }
    Err(LocateError::NotFound { searched })
}

/// Asks an interpreter where its `onnxruntime` package is, without importing
/// it (importing loads the library and takes a noticeable fraction of a
/// second).
fn python_package_dir(python: &str) -> Option<PathBuf> {
    const PROBE: &str = "import importlib.util as u, os\n\
                         s = u.find_spec('onnxruntime')\n\
                         print(os.path.dirname(s.origin) if s and s.origin else '')";
    let out = Command::new(python)
        .args(["-c", PROBE])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// Folders where pip puts packages, most specific first.
fn site_packages_candidates() -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(p) = std::env::var_os(var) {
            prefixes.push(PathBuf::from(p).join("lib"));
        }
    }
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        prefixes.push(home.join(".local/lib"));
        if let Ok(versions) = std::fs::read_dir(home.join(".pyenv/versions")) {
            let mut v: Vec<PathBuf> = versions.flatten().map(|e| e.path().join("lib")).collect();
            v.sort();
            v.reverse();
            prefixes.extend(v);
        }
    }
    for p in ["/usr/local/lib", "/usr/lib", "/opt/conda/lib"] {
        prefixes.push(PathBuf::from(p));
    }

    let mut out = Vec::new();
    for prefix in prefixes {
        let Ok(entries) = std::fs::read_dir(&prefix) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path())
            .collect();
        pythons.sort();
        pythons.reverse();
        for py in pythons {
            for sub in ["site-packages", "dist-packages"] {
                let dir = py.join(sub);
                if dir.is_dir() {
                    out.push(dir);
                }
            }
        }
    }
    out
}

/// The ONNX Runtime library in a folder, preferring the highest versioned
/// file (`libonnxruntime.so.1.31.1` over `libonnxruntime.so`).
fn library_in(dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let version = library_version(&name)?;
            Some((version, e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// `Some(version)` when `name` is the main ONNX Runtime library (not one of
/// its `_providers_` plug-ins); the version is empty for an unversioned name.
fn library_version(name: &OsStr) -> Option<Vec<u32>> {
    let name = name.to_str()?;
    let rest = if let Some(rest) = name.strip_prefix("libonnxruntime.so") {
        rest.strip_prefix('.').unwrap_or(rest)
    } else if let Some(rest) = name.strip_prefix("libonnxruntime.") {
        rest.strip_suffix(".dylib")?
    } else if name.eq_ignore_ascii_case("onnxruntime.dll") {
        ""
    } else {
        return None;
    };
    if rest.is_empty() {
        return Some(Vec::new());
    }
    rest.split('.').map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_versioned_and_plain_library_names_only() {
        let v = |s: &str| library_version(OsStr::new(s));
        assert_eq!(v("libonnxruntime.so.1.31.1"), Some(vec![1, 31, 1]));
        assert_eq!(v("libonnxruntime.so"), Some(vec![]));
        assert_eq!(v("libonnxruntime.1.31.1.dylib"), Some(vec![1, 31, 1]));
        assert_eq!(v("libonnxruntime_providers_shared.so"), None);
        assert_eq!(v("libonnxruntime.so.1.31.1.bak"), None);
    }

    #[test]
    fn prefers_the_highest_version_in_a_folder() {
        let dir = std::env::temp_dir().join(format!("abmesh-dylib-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "libonnxruntime.so",
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_cuda.so",
        ] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        assert_eq!(library_in(&dir), Some(dir.join("libonnxruntime.so.1.31.1")));
        let explicit = locate(Some(&dir)).unwrap();
        assert_eq!(explicit.path, dir.join("libonnxruntime.so.1.31.1"));
        assert_eq!(explicit.source, Source::Explicit);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_explicit_path_is_an_error_not_a_fallback() {
        let e = locate(Some(Path::new("/nonexistent/libonnxruntime.so.1"))).unwrap_err();
        assert!(matches!(e, LocateError::ExplicitMissing { .. }));
    }
}
