//! Ownership and permission rules for the files that hold trust: the config,
//! the host key and the store must belong to root and be closed to others.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Who may read a trusted file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrecy {
    /// Others may read it, nobody but root may change it (the config).
    NotWritableByOthers,
    /// Only root may read or change it (the key file, the store).
    OwnerOnly,
}

/// Refuse `path` unless it is a regular file owned by root with no
/// group/other write bit (and, for [`Secrecy::OwnerOnly`], no group/other bits at all).
pub fn check_private_file(path: &Path, secrecy: Secrecy) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let refuse = |problem: String, fix: String| Error::Permissions {
        path: path.into(),
        problem,
        fix,
    };
    if !meta.is_file() {
        return Err(refuse(
            "is not a regular file".into(),
            format!("replace {} with a regular file", path.display()),
        ));
    }
    if meta.uid() != 0 {
        return Err(refuse(
            format!("is owned by uid {}, not root", meta.uid()),
            format!("chown root:root {}", path.display()),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    let forbidden = match secrecy {
        Secrecy::NotWritableByOthers => 0o022,
        Secrecy::OwnerOnly => 0o077,
    };
    if mode & forbidden != 0 {
        let want = match secrecy {
            Secrecy::NotWritableByOthers => mode & !0o022,
            Secrecy::OwnerOnly => mode & 0o700,
        };
        return Err(refuse(
            format!(
                "has mode {mode:04o}, which lets other users {}",
                if mode & 0o022 != 0 {
                    "change it"
                } else {
                    "read it"
                }
            ),
            format!("chmod {want:04o} {}", path.display()),
        ));
    }
    Ok(())
}

/// Create `path` with mode 0600 (failing if it exists) and write `contents`.
pub fn create_private_file(path: &Path, contents: &[u8]) -> Result<()> {
    let mut f = open_private_new(path)?;
    f.write_all(contents).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Open a new file with mode 0600; an existing file is an error.
pub fn open_private_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Create a directory (and parents) with mode `mode` if missing.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with_mode(dir: &Path, name: &str, mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn group_writable_config_is_refused_and_says_how_to_fix() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return; // ownership rules are about root-owned files
        }
        let d = tempfile::tempdir().unwrap();
        let p = file_with_mode(d.path(), "c", 0o664);
        let err = check_private_file(&p, Secrecy::NotWritableByOthers)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 0644"), "{err}");
        let ok = file_with_mode(d.path(), "ok", 0o644);
        check_private_file(&ok, Secrecy::NotWritableByOthers).unwrap();
    }

    #[test]
    fn readable_key_file_is_refused() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = file_with_mode(d.path(), "k", 0o640);
        assert!(check_private_file(&p, Secrecy::OwnerOnly).is_err());
        let ok = file_with_mode(d.path(), "k2", 0o600);
        check_private_file(&ok, Secrecy::OwnerOnly).unwrap();
    }

    #[test]
    fn private_file_is_created_0600() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        create_private_file(&p, b"data").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(create_private_file(&p, b"again").is_err());
    }
}
