//! The account behind a name: users are looked up through NSS
//! (`getpwnam`), and everything is keyed by the canonical `pw_name`, so
//! `ALICE` under a case-insensitive directory, or an alias, is `alice`.
use nix::unistd::{getgrouplist, Gid, User};

use crate::error::{Error, Result};

/// A user account as NSS knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The canonical name (`pw_name`).
    pub name: String,
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
}

impl Account {
    /// The account named `name` (as typed, in any spelling NSS accepts);
    /// `None` if NSS knows no such user; an error if the lookup failed.
    pub fn lookup(name: &str) -> Result<Option<Account>> {
        if name.is_empty() || name.contains('\0') {
            return Ok(None);
        }
        let user = not_found_is_none(User::from_name(name)).map_err(|source| Error::Groups {
            user: name.into(),
            source,
        })?;
        Ok(user.map(|u| Account {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }))
    }

    /// The ids of every group the account is in, its primary group first;
    /// whether or not the group database has an entry for them.
    pub fn group_ids(&self) -> Result<Vec<u32>> {
        let name =
            std::ffi::CString::new(self.name.as_str()).map_err(|_| Error::NoSuchAccount {
                user: self.name.clone(),
            })?;
        let gids =
            getgrouplist(&name, Gid::from_raw(self.gid)).map_err(|source| Error::Groups {
                user: self.name.clone(),
                source,
            })?;
        Ok(gids.into_iter().map(Gid::as_raw).collect())
    }
}

/// getpwnam_r(3) and getgrnam_r(3) may report a name that does not exist
/// as ENOENT, ESRCH, EBADF or EPERM rather than as no entry: all mean "no
/// such name" here.
pub(crate) fn not_found_is_none<T>(r: nix::Result<Option<T>>) -> nix::Result<Option<T>> {
    use nix::errno::Errno;
    match r {
        Err(Errno::ENOENT | Errno::ESRCH | Errno::EBADF | Errno::EPERM) => Ok(None),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_with_its_groups_and_nonsense_is_not() {
        let root = Account::lookup("root").unwrap().unwrap();
        assert_eq!((root.name.as_str(), root.uid, root.gid), ("root", 0, 0));
        assert_eq!(root.group_ids().unwrap().first(), Some(&0));
        assert_eq!(Account::lookup("no-such-user-crm2fa").unwrap(), None);
        assert_eq!(Account::lookup("").unwrap(), None);
        assert_eq!(Account::lookup("a\0b").unwrap(), None);
    }
}
