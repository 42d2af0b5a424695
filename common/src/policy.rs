//! Who must use a second factor, and why.
use crate::config::{Enforce, PolicyConfig};
use crate::error::{Error, Result};
use crate::store::{TotpState, UserRecord};

/// The policy's answer for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The policy demands 2FA of this user.
    pub required: bool,
    /// The login asks this user for a code (required, or opted in with a factor).
    pub ask: bool,
    /// Why, in words.
    pub reason: String,
}

/// Does the policy need the user's groups?
pub fn needs_groups(cfg: &PolicyConfig) -> bool {
    !cfg.exempt_groups.is_empty() || cfg.enforce == Enforce::Groups
}

/// Decide for `user`, who is in `groups`, with what the store holds for them.
/// `has_recovery`: the user holds a valid, unused recovery code.
pub fn decide(
    cfg: &PolicyConfig,
    user: &str,
    groups: &[String],
    record: Option<&UserRecord>,
    has_recovery: bool,
) -> Decision {
    let has_factor = has_recovery
        || record.is_some_and(|r| matches!(r.state, TotpState::Pending | TotpState::Active));
    let not = |reason: String| Decision {
        required: false,
        ask: false,
        reason,
    };
    if let Some(g) = cfg.exempt_groups.iter().find(|g| groups.contains(g)) {
        return not(format!("member of exempt group {g}"));
    }
    if record.is_some_and(|r| r.disabled) {
        return not(format!("2FA is disabled for {user}"));
    }
    let (required, reason) = match cfg.enforce {
        Enforce::All => (true, "enforce = \"all\"".to_string()),
        Enforce::Groups => match cfg.enforce_groups.iter().find(|g| groups.contains(g)) {
            Some(g) => (true, format!("member of enforced group {g}")),
            None => (false, "not in any enforce_groups".to_string()),
        },
        Enforce::OptIn => (false, "enforce = \"opt-in\"".to_string()),
    };
    if required {
        return Decision {
            required,
            ask: true,
            reason,
        };
    }
    if has_factor {
        Decision {
            required: false,
            ask: true,
            reason: format!("{reason}, and {user} has enrolled"),
        }
    } else {
        not(format!("{reason}, and {user} has not enrolled"))
    }
}

/// Names of the Unix groups `user` belongs to (primary and supplementary).
pub fn unix_groups(user: &str) -> Result<Vec<String>> {
    use nix::unistd::{getgrouplist, Group, User};
    let lookup = |e: nix::Error| Error::Refused(format!("cannot look up groups of {user}: {e}"));
    let u = User::from_name(user)
        .map_err(lookup)?
        .ok_or_else(|| Error::Refused(format!("no such user: {user}")))?;
    let name = std::ffi::CString::new(user)
        .map_err(|_| Error::Refused(format!("invalid user name {user:?}")))?;
    let gids = getgrouplist(&name, u.gid).map_err(lookup)?;
    let mut names = Vec::with_capacity(gids.len());
    for gid in gids {
        if let Some(g) = Group::from_gid(gid).map_err(lookup)? {
            names.push(g.name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FailMode, Unenrolled};

    fn cfg(enforce: Enforce) -> PolicyConfig {
        PolicyConfig {
            enforce,
            enforce_groups: vec!["admins".into()],
            exempt_groups: vec!["robots".into()],
            unenrolled: Unenrolled::Deny,
            protected_users: vec!["root".into()],
            failmode: FailMode::Secure,
            prompts: 3,
        }
    }

    fn rec(state: TotpState, disabled: bool) -> UserRecord {
        UserRecord {
            name: "u".into(),
            state,
            disabled,
            secret: None,
            code_salt: vec![],
            last_step: -1,
            failures: 0,
            locked_until: None,
            last_success: None,
            backup_codes_left: 0,
            email: None,
            phone: None,
        }
    }

    #[test]
    fn opt_in_asks_only_enrolled_users() {
        let c = cfg(Enforce::OptIn);
        assert!(!decide(&c, "u", &[], None, false).ask);
        assert!(decide(&c, "u", &[], Some(&rec(TotpState::Pending, false)), false).ask);
        assert!(decide(&c, "u", &[], Some(&rec(TotpState::Active, false)), false).ask);
        assert!(!decide(&c, "u", &[], Some(&rec(TotpState::None, false)), false).ask);
        assert!(
            decide(&c, "u", &[], None, true).ask,
            "a recovery code is a factor"
        );
    }

    #[test]
    fn all_requires_everyone_but_exempt_and_disabled() {
        let c = cfg(Enforce::All);
        let d = decide(&c, "u", &[], None, false);
        assert!(d.required && d.ask);
        let d = decide(&c, "u", &["robots".into()], None, false);
        assert!(!d.required && !d.ask, "{}", d.reason);
        assert!(!decide(&c, "u", &[], Some(&rec(TotpState::Active, true)), false).ask);
    }

    #[test]
    fn groups_requires_members_only() {
        let c = cfg(Enforce::Groups);
        assert!(decide(&c, "u", &["admins".into()], None, false).required);
        assert!(!decide(&c, "u", &["staff".into()], None, false).required);
    }
}
