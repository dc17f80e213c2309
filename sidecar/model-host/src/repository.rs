//! The model repository on disk, laid out as Triton and KServe lay it out:
//!
//! ```text
//! models/
//!   scorer/
//!     1/model.onnx
//!     2/model.onnx
//!   squeezenet/
//!     1/model.onnx
//! ```
//!
//! Versions are non-negative integers (the folder name), so "the latest
//! version" has one meaning: the highest number. Names and versions arrive
//! from URLs, so they are validated here before they ever become a path.

use std::path::{Path, PathBuf};

use abmesh_common::quote::clip;

/// The file each version folder holds.
pub const MODEL_FILE: &str = "model.onnx";

/// A version folder with a model in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub name: String,
    pub version: u64,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("model repository {0} is not a folder")]
    NotAFolder(PathBuf),
    #[error("reading model repository {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "invalid model name {:?}: use letters, digits, '_', '-' and '.', not starting with '.'",
        clip(.0)
    )]
    InvalidName(String),
    #[error(
        "invalid model version {:?}: versions are non-negative integers (the folder name)",
        clip(.0)
    )]
    InvalidVersion(String),
    #[error("model '{name}' version {version} is not in the repository: no file {path}")]
    Missing {
        name: String,
        version: u64,
        path: PathBuf,
    },
}

/// A model repository folder.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
}

impl Repository {
    pub fn open(root: impl Into<PathBuf>) -> Result<Repository, RepositoryError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(RepositoryError::NotAFolder(root));
        }
        Ok(Repository { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every `{name}/{version}/model.onnx`, sorted by name then version.
    /// Folders that do not fit the layout are skipped with a debug log line.
    pub fn scan(&self) -> Result<Vec<Entry>, RepositoryError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RepositoryError::Io { path, source }
        };
        let mut out = Vec::new();
        for model in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let model = model.map_err(io(&self.root))?;
            let Some(name) = model.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if validate_name(&name).is_err() || !model.path().is_dir() {
                tracing::debug!(entry = %model.path().display(), "not a model folder, skipped");
                continue;
            }
            for version in std::fs::read_dir(model.path()).map_err(io(&model.path()))? {
                let version = version.map_err(io(&model.path()))?;
                let Some(v) = version
                    .file_name()
                    .to_str()
                    .and_then(|s| parse_version(s).ok())
                else {
                    tracing::debug!(entry = %version.path().display(), "not a version folder, skipped");
                    continue;
                };
                let path = version.path().join(MODEL_FILE);
                if path.is_file() {
                    out.push(Entry {
                        name: name.clone(),
                        version: v,
                        path,
                    });
                } else {
                    tracing::debug!(folder = %version.path().display(), "version folder without {MODEL_FILE}, skipped");
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The model file of one version, which must exist.
    pub fn entry(&self, name: &str, version: u64) -> Result<Entry, RepositoryError> {
        validate_name(name)?;
        let path = self
            .root
            .join(name)
            .join(version.to_string())
            .join(MODEL_FILE);
        if !path.is_file() {
            return Err(RepositoryError::Missing {
                name: name.to_owned(),
                version,
                path,
            });
        }
        Ok(Entry {
            name: name.to_owned(),
            version,
            path,
        })
    }
}

/// Names become one path component: no separators, no `..`, nothing hidden.
pub fn validate_name(name: &str) -> Result<(), RepositoryError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(RepositoryError::InvalidName(name.to_owned()))
    }
}

/// Parses a version as written in a URL or a folder name: decimal digits
/// only (no sign, no spaces).
pub fn parse_version(s: &str) -> Result<u64, RepositoryError> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RepositoryError::InvalidVersion(s.to_owned()));
    }
    s.parse()
        .map_err(|_| RepositoryError::InvalidVersion(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_repository() {
        for bad in ["", "..", ".hidden", "a/b", "a\\b", "m%2F", "x y"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["scorer", "resnet-50", "my_model.v2"] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn versions_are_plain_integers() {
        assert_eq!(parse_version("12").unwrap(), 12);
        for bad in ["", "-1", "+1", "1.0", "v1", " 1", "99999999999999999999"] {
            assert!(parse_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scan_finds_versions_and_skips_the_rest() {
        let root = std::env::temp_dir().join(format!("abmesh-repo-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (dir, file) in [
            ("m/1", Some(MODEL_FILE)),
            ("m/10", Some(MODEL_FILE)),
            ("m/2", Some(MODEL_FILE)),
            ("m/3", None),
            ("m/latest", Some(MODEL_FILE)),
            (".git/1", Some(MODEL_FILE)),
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            if let Some(f) = file {
                std::fs::write(root.join(dir).join(f), b"").unwrap();
            }
        }
        let repo = Repository::open(&root).unwrap();
        let found: Vec<_> = repo
            .scan()
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.version))
            .collect();
        assert_eq!(
            found,
            vec![("m".into(), 1), ("m".into(), 2), ("m".into(), 10)]
        );
        assert!(repo.entry("m", 3).is_err());
        assert!(repo.entry("..", 1).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
