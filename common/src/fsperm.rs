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

/// Open `path` for reading without following a symbolic link, and check
/// the opened file (not the name, which could be swapped after a check):
/// a regular file owned by root with no group/other write bit (and, for
/// [`Secrecy::OwnerOnly`], no group/other bits at all); and every directory
/// above it owned by root and closed to writes by others (see
/// [`check_parent_dirs`]). A file that cannot be opened is the system's
/// error for it (not found, permission denied …).
pub fn open_trusted(path: &Path, secrecy: Secrecy) -> Result<File> {
    check_parent_dirs(path)?;
    open_beside_checked(path, secrecy, Use::Read).map(|(file, _)| file)
}

/// The largest file [`read_trusted`] reads: the config, a key or a
/// password file is a few kilobytes at most.
const MAX_TRUSTED_FILE: u64 = 1 << 20;

/// The whole of the file [`open_trusted`] opens and checks, read into a
/// buffer of the size the check found: a secret's bytes are never copied
/// into a buffer outgrown and freed (nor into `read_to_end`'s small
/// stack buffer), and no further system call asks the size. A file larger
/// than 1 MiB, or one that grew while it was read, is refused.
pub fn read_trusted(path: &Path, secrecy: Secrecy) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    use std::io::Read;
    check_parent_dirs(path)?;
    let (mut file, meta) = open_beside_checked(path, secrecy, Use::Read)?;
    let refuse = |why: String| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, why),
        )
    };
    if meta.len() > MAX_TRUSTED_FILE {
        return Err(refuse(format!(
            "larger than {} kB",
            MAX_TRUSTED_FILE / 1024
        )));
    }
    // One byte more than the file had: filling it means the file grew.
    let mut bytes = zeroize::Zeroizing::new(vec![0u8; meta.len() as usize + 1]);
    let mut filled = 0;
    while filled < bytes.len() {
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    if filled == bytes.len() {
        return Err(refuse("changed while it was read; try again".into()));
    }
    bytes.truncate(filled);
    Ok(bytes)
}

/// What a trusted file is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// To read it.
    Read,
    /// Only to look at it (`O_PATH`). Closing a descriptor opened to read
    /// drops every POSIX lock the process holds on the file, SQLite's
    /// among them: crm2fad checks a store's files while its other threads
    /// hold SQLite's locks on them. Closing an `O_PATH` one drops none.
    Look,
}

/// [`open_trusted`] without the directories above `path`: for a file
/// beside one [`open_trusted`] has just checked, in the same directory.
/// The file opened for `use_`, and what it is.
fn open_beside_checked(
    path: &Path,
    secrecy: Secrecy,
    use_: Use,
) -> Result<(File, std::fs::Metadata)> {
    let look = match use_ {
        Use::Read => 0,
        Use::Look => libc::O_PATH,
    };
    let symlink = || Error::Permissions {
        path: path.into(),
        problem: "is a symbolic link".into(),
        fix: format!("replace {} with the file it points to", path.display()),
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(look | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => symlink(),
            _ => Error::io(path, e),
        })?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    // With O_PATH, O_NOFOLLOW opens the link itself rather than failing.
    if meta.file_type().is_symlink() {
        return Err(symlink());
    }
    check_meta(path, &meta, secrecy)?;
    Ok((file, meta))
}

/// `Ok(None)` for a file that is not there.
fn if_present<T>(opened: Result<T>) -> Result<Option<T>> {
    match opened {
        Ok(f) => Ok(Some(f)),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Check `path` as [`open_trusted`] does, if it exists, without opening
/// it to read (see [`Use::Look`]); `Ok(false)` if not.
pub fn check_if_present(path: &Path, secrecy: Secrecy) -> Result<bool> {
    // A directory above it missing: it is not there either.
    if_present(look_trusted(path, secrecy)).map(|m| m.is_some())
}

/// [`open_trusted`]'s checks, without opening the file to read (see
/// [`Use::Look`]): what the file is.
fn look_trusted(path: &Path, secrecy: Secrecy) -> Result<std::fs::Metadata> {
    check_parent_dirs(path)?;
    open_beside_checked(path, secrecy, Use::Look).map(|(_, meta)| meta)
}

/// Check, as [`open_trusted`] does but without opening any to read (see
/// [`Use::Look`]), the file at `path` (which must exist) and the files
/// named by it with each of `suffixes` that exist, beside it: their
/// directories once. What the file is, and which of the others exist.
pub fn check_with_siblings(
    path: &Path,
    suffixes: &[&str],
    secrecy: Secrecy,
) -> Result<(std::fs::Metadata, Vec<bool>)> {
    let meta = look_trusted(path, secrecy)?;
    if !suffixes.is_empty() {
        check_no_one_else_adds_beside(path)?;
    }
    let present = suffixes
        .iter()
        .map(|suffix| {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            if_present(open_beside_checked(Path::new(&side), secrecy, Use::Look))
                .map(|f| f.is_some())
        })
        .collect::<Result<_>>()?;
    Ok((meta, present))
}

fn check_meta(path: &Path, meta: &std::fs::Metadata, secrecy: Secrecy) -> Result<()> {
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

/// Every directory above `path` must belong to root and be closed to
/// writes by group and others (or be sticky, like /tmp): whoever may write
/// a directory may replace the files in it.
pub fn check_parent_dirs(path: &Path) -> Result<()> {
    check_dirs_above(path, None)
}

/// [`check_parent_dirs`], where the directories may also belong to the
/// account `also`, if given.
fn check_dirs_above(path: &Path, also: Option<u32>) -> Result<()> {
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
        let meta = std::fs::metadata(d).map_err(|e| Error::io(d, e))?;
        let refuse = |problem: String, fix: String| Error::Permissions {
            path: d.into(),
            problem,
            fix,
        };
        if meta.uid() != 0 && Some(meta.uid()) != also {
            return Err(refuse(
                format!(
                    "is owned by uid {}, not root{}, so it can replace {}",
                    meta.uid(),
                    also.map_or(String::new(), |a| format!(" nor uid {a}")),
                    path.display()
                ),
                format!("chown root:root {}", d.display()),
            ));
        }
        if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
            return Err(refuse(
                format!(
                    "has mode {:04o}: other users can replace {} in it",
                    meta.mode() & 0o7777,
                    path.display()
                ),
                format!("chmod go-w {}", d.display()),
            ));
        }
        dir = d.parent();
    }
    Ok(())
}

/// The directory holding `path` lets no one but its owner (root, see
/// [`check_parent_dirs`]) add files: not even a sticky one, such as /tmp,
/// where another user may create a name beside `path` that a program
/// later opens as its own (SQLite's `-wal` and `-shm` files).
pub fn check_no_one_else_adds_beside(path: &Path) -> Result<()> {
    let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let meta = std::fs::metadata(d).map_err(|e| Error::io(d, e))?;
    if meta.mode() & 0o022 != 0 {
        return Err(Error::Permissions {
            path: d.into(),
            problem: format!(
                "has mode {:04o}: other users can create files beside {} (its -wal and -shm \
                 files)",
                meta.mode() & 0o7777,
                path.display()
            ),
            fix: format!(
                "keep {} in a directory of its own that only root writes, such as \
                 /var/lib/crm2fa",
                path.file_name().unwrap_or_default().to_string_lossy()
            ),
        });
    }
    Ok(())
}

/// The first uid of ordinary users' accounts (Debian's and Fedora's
/// `FIRST_UID`); below it, root and the system's own accounts, such as the
/// one a PostgreSQL server runs as.
const FIRST_USER_UID: u32 = 1000;

/// `dir`, holding a PostgreSQL server's Unix-domain socket: whoever can
/// create a file in it, or put another directory in its place, can stand
/// in for the server while it is down and answer the logins. So it must be
/// a directory itself (not a symbolic link), owned by root or a system
/// account (as the server's own user is), closed to other users' writes
/// (Debian's /run/postgresql, its owner's and group `postgres`'s to write,
/// passes; a directory in /tmp that a user made does not); and each
/// directory above it owned by root or by the same account, closed to
/// writes by group and others unless sticky (like /tmp).
pub fn check_socket_dir(dir: &Path) -> Result<()> {
    let refuse = |problem: String, fix: String| Error::Permissions {
        path: dir.into(),
        problem,
        fix,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::io(dir, e))?;
    if meta.file_type().is_symlink() {
        return Err(refuse(
            "is a symbolic link: [store] url must name the socket's directory itself".into(),
            format!(
                "write the directory it points to in place of {}",
                dir.display()
            ),
        ));
    }
    if !meta.is_dir() {
        return Err(refuse(
            "is not a directory: [store] url names the directory of the server's socket".into(),
            "write the directory the server's unix_socket_directories names, \
             such as %2Frun%2Fpostgresql"
                .into(),
        ));
    }
    let owner = meta.uid();
    if owner >= FIRST_USER_UID {
        return Err(refuse(
            format!(
                "is owned by uid {owner}, an ordinary user, who can put a socket in it that \
                 stands in for the server"
            ),
            format!(
                "keep the server's socket in a directory of root's or the server's own user \
                 (chown postgres {})",
                dir.display()
            ),
        ));
    }
    if meta.mode() & 0o002 != 0 {
        return Err(refuse(
            format!(
                "has mode {:04o}: any user can create a socket in it that stands in for the \
                 server",
                meta.mode() & 0o7777
            ),
            format!(
                "chmod o-w {} (or point unix_socket_directories at a directory of the \
                 server's own)",
                dir.display()
            ),
        ));
    }
    check_dirs_above(dir, Some(owner))
}

/// Create `path` with mode 0600 (failing if it exists) and write `contents`.
pub fn create_private_file(path: &Path, contents: &[u8]) -> Result<()> {
    let mut f = open_private_new(path)?;
    f.write_all(contents).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))?;
    // The new name must survive a power cut too.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
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
        let err = open_trusted(&p, Secrecy::NotWritableByOthers)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 0644"), "{err}");
        let ok = file_with_mode(d.path(), "ok", 0o644);
        open_trusted(&ok, Secrecy::NotWritableByOthers).unwrap();
    }

    #[test]
    fn a_trusted_file_is_read_whole_into_a_buffer_of_its_size() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        // Larger than any first read `read_to_end` would guess.
        let text: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&p, &text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let got = read_trusted(&p, Secrecy::OwnerOnly).unwrap();
        assert_eq!(*got, text);
        // Never outgrown: no copy of a secret left in a freed buffer.
        assert_eq!(got.capacity(), text.len() + 1);
        std::fs::write(&p, b"").unwrap();
        assert!(read_trusted(&p, Secrecy::OwnerOnly).unwrap().is_empty());
        // Nothing near a config's, a key's or a password's size: refused.
        std::fs::write(&p, vec![b'a'; MAX_TRUSTED_FILE as usize + 1]).unwrap();
        let e = read_trusted(&p, Secrecy::OwnerOnly)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than 1024 kB"), "{e}");
        std::fs::write(&p, vec![b'a'; MAX_TRUSTED_FILE as usize]).unwrap();
        assert_eq!(read_trusted(&p, Secrecy::OwnerOnly).unwrap().len(), 1 << 20);
        // A short one (a password) is read straight into its buffer.
        std::fs::write(&p, b"pw\n").unwrap();
        let got = read_trusted(&p, Secrecy::OwnerOnly).unwrap();
        assert_eq!((got.as_slice(), got.capacity()), (&b"pw\n"[..], 4));
        // The checks are open_trusted's.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_trusted(&p, Secrecy::OwnerOnly).is_err());
        assert!(read_trusted(&d.path().join("none"), Secrecy::OwnerOnly).is_err());
    }

    #[test]
    fn readable_key_file_is_refused() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = file_with_mode(d.path(), "k", 0o640);
        assert!(open_trusted(&p, Secrecy::OwnerOnly).is_err());
        let ok = file_with_mode(d.path(), "k2", 0o600);
        open_trusted(&ok, Secrecy::OwnerOnly).unwrap();
    }

    #[test]
    fn siblings_are_checked_as_the_file_is_and_may_be_absent() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let db = file_with_mode(d.path(), "s.db", 0o600);
        let suffixes = ["-wal", "-shm"];
        let (_, present) = check_with_siblings(&db, &suffixes, Secrecy::OwnerOnly).unwrap();
        assert_eq!(present, [false, false]);
        file_with_mode(d.path(), "s.db-shm", 0o600);
        let (_, present) = check_with_siblings(&db, &suffixes, Secrecy::OwnerOnly).unwrap();
        assert_eq!(present, [false, true]);
        let wal = file_with_mode(d.path(), "s.db-wal", 0o644);
        let err = check_with_siblings(&db, &suffixes, Secrecy::OwnerOnly)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s.db-wal") && err.contains("chmod 0600"),
            "{err}"
        );
        std::fs::remove_file(&wal).unwrap();
        std::os::unix::fs::symlink(d.path().join("s.db-shm"), &wal).unwrap();
        let err = check_with_siblings(&db, &suffixes, Secrecy::OwnerOnly)
            .unwrap_err()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let missing = d.path().join("none.db");
        let err = check_with_siblings(&missing, &suffixes, Secrecy::OwnerOnly).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }

    #[test]
    fn a_file_in_a_directory_not_made_yet_is_not_present() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("not").join("yet").join("crm2fa.db");
        assert!(!check_if_present(&p, Secrecy::OwnerOnly).unwrap());
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
