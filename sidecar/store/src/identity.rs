//! The sidecar id: a random 128-bit number generated once per data
//! directory and kept in its `sidecar-id` file (32 hex digits and a
//! newline).
//!
//! It names the origin of an exported state (`GET /admin/state`): together
//! with the LSN the export covers it is the state's idempotency key, so
//! merging the same export twice is recognised, and a state that already
//! holds this directory's records (exported from here, or from a sidecar
//! that merged it) is refused instead of counting them twice. Because it
//! belongs to the directory, not to the process or the host, a restart,
//! a move to another machine or a restore from backup keeps it, and a copy
//! of a directory shares it with the original (which is right: both hold
//! the same records up to the copy).
//!
//! It is created atomically: written to a temporary file, fsynced, then
//! hard-linked to `sidecar-id` (which fails if the name exists, so two
//! racing creators end up reading the same id), and the directory is
//! fsynced. A crash part way leaves at most a `sidecar-id.*.tmp`, which the
//! next start removes.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use abmesh_common::SidecarId;

use super::{io_err, sync_dir, StoreError};

/// Name of the file, in the data directory.
pub const FILE: &str = "sidecar-id";

/// The id of `dir`, if it has one (read only).
pub fn read(dir: &Path) -> Result<Option<SidecarId>, StoreError> {
    let path = dir.join(FILE);
    match fs::read_to_string(&path) {
        Ok(s) => s.parse().map(Some).map_err(|e| StoreError::Io {
            path,
            message: format!("not a sidecar id: {e} (restore the file, or delete it to give this directory a new id)"),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path, e)),
    }
}

/// The id of `dir`, created if it has none.
pub fn load_or_create(dir: &Path) -> Result<SidecarId, StoreError> {
    if let Some(id) = read(dir)? {
        return Ok(id);
    }
    let id = SidecarId::random().map_err(|e| StoreError::Io {
        path: dir.join(FILE),
        message: e.to_string(),
    })?;
    let tmp = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
    let written = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(format!("{id}\n").as_bytes())?;
            f.sync_all()
        })
        .map_err(|e| io_err(&tmp, e));
    let linked = written.and_then(|()| match fs::hard_link(&tmp, dir.join(FILE)) {
        Ok(()) => Ok(()),
        // Another process created it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(&dir.join(FILE), e)),
    });
    let _ = fs::remove_file(&tmp);
    linked?;
    sync_dir(dir)?;
    read(dir)?.ok_or_else(|| StoreError::Io {
        path: dir.join(FILE),
        message: "vanished right after it was created".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()).unwrap(), None);
        let a = load_or_create(d.path()).unwrap();
        let b = load_or_create(d.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(read(d.path()).unwrap(), Some(a));
        let text = fs::read_to_string(d.path().join(FILE)).unwrap();
        assert_eq!(text, format!("{a}\n"));
        assert_eq!(text.len(), 33);
        // Nothing else is left behind.
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE]);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).unwrap(), a);
    }

    #[test]
    fn a_damaged_id_is_an_error_not_a_new_id() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(FILE), "xyz\n").unwrap();
        let e = load_or_create(d.path()).unwrap_err();
        assert!(e.to_string().contains("not a sidecar id"), "{e}");
    }
}
