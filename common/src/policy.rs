//! Who must use a second factor, and why; whose 2FA may never be removed.
use std::net::IpAddr;

use crate::config::{Enforce, GroupRef, PolicyConfig, Unenrolled};
use crate::error::{Error, ProtectedAction, Result};
use crate::model::UserRecord;

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

/// What a login does about the second factor, given the policy's
/// [`Decision`] (a lock or a remembered host aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtLogin {
    /// No code is asked.
    NoCode,
    /// A code is asked.
    Code,
    /// A code is required, and there is no factor to give one with: the
    /// login is refused (`unenrolled = "deny"`).
    Refused,
    /// The same, and the password alone decides (`unenrolled = "allow"`).
    PasswordOnly,
    /// The same, and the login sets up an app (`unenrolled = "enroll"`).
    SetUp,
}

impl Decision {
    /// What the login does for a user who has a factor (`enrolled`) or a
    /// valid recovery code (`has_recovery`), or neither, under `unenrolled`.
    pub fn at_login(&self, enrolled: bool, has_recovery: bool, unenrolled: Unenrolled) -> AtLogin {
        match (self.ask, enrolled || has_recovery, unenrolled) {
            (false, _, _) => AtLogin::NoCode,
            (true, true, _) => AtLogin::Code,
            (true, false, Unenrolled::Deny) => AtLogin::Refused,
            (true, false, Unenrolled::Allow) => AtLogin::PasswordOnly,
            (true, false, Unenrolled::Enroll) => AtLogin::SetUp,
        }
    }
}

/// Does the policy need the user's groups?
pub fn needs_groups(cfg: &PolicyConfig) -> bool {
    !cfg.exempt_groups.is_empty() || cfg.enforce == Enforce::Groups
}

/// Is `user` one of `protected_users`, whose 2FA can be replaced but never
/// removed or turned off?
pub fn is_protected(cfg: &PolicyConfig, user: &str) -> bool {
    cfg.protected_users.iter().any(|p| p == user)
}

/// Refuse `action` on a protected user.
pub fn ensure_unprotected(cfg: &PolicyConfig, user: &str, action: ProtectedAction) -> Result<()> {
    if is_protected(cfg, user) {
        return Err(Error::Protected {
            user: user.into(),
            action,
        });
    }
    Ok(())
}

/// Can a login from `rhost` be remembered? Never an empty or local one:
/// "remember this computer" is about the remote client, and a login with no
/// remote host (a console, su, sudo) or from this very machine (its name,
/// a loopback address, or one of `own_addresses`, those of its interfaces)
/// says nothing about which computer it is: anyone with an account here
/// could log in from it.
pub fn rememberable_host(rhost: &str, this_host: &str, own_addresses: &[IpAddr]) -> bool {
    let h = rhost.trim().trim_start_matches('[').trim_end_matches(']');
    if h.is_empty() || crate::config::loopback(h) || h.eq_ignore_ascii_case(this_host) {
        return false;
    }
    match h.parse::<IpAddr>() {
        Ok(ip) => {
            let ip = ip.to_canonical();
            !ip.is_unspecified() && !own_addresses.contains(&ip)
        }
        Err(_) => !h.to_ascii_lowercase().ends_with(".localhost"),
    }
}

/// The addresses of this machine's interfaces; `None` if they cannot be
/// listed (then no host is remembered).
pub fn own_addresses() -> Option<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    Some(
        addrs
            .filter_map(|a| a.address)
            .filter_map(|sa| {
                sa.as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))
                    .or_else(|| sa.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
            })
            .map(|ip| ip.to_canonical())
            .collect(),
    )
}

/// Decide for `user`, who is in the groups with ids `gids`, with what the
/// store holds for them.
/// `has_recovery`: the user holds a valid, unused recovery code. A
/// protected user's `disabled` flag (which `disable` never sets) is ignored.
pub fn decide(
    cfg: &PolicyConfig,
    user: &str,
    gids: &[u32],
    record: Option<&UserRecord>,
    has_recovery: bool,
) -> Decision {
    let has_factor = has_recovery || record.is_some_and(UserRecord::has_factor);
    let not = |reason: String| Decision {
        required: false,
        ask: false,
        reason,
    };
    let member = |groups: &'_ [GroupRef]| groups.iter().find(|g| gids.contains(&g.gid)).cloned();
    if let Some(g) = member(&cfg.exempt_groups) {
        return not(format!("member of exempt group {}", g.name));
    }
    if record.is_some_and(|r| r.disabled) && !is_protected(cfg, user) {
        return not(format!("2FA is disabled for {user}"));
    }
    let (required, reason) = match cfg.enforce {
        Enforce::All => (true, "enforce = \"all\"".to_string()),
        Enforce::Groups => match member(&cfg.enforce_groups) {
            Some(g) => (true, format!("member of enforced group {}", g.name)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FailMode, Unenrolled};
    use crate::model::TotpState;

    fn cfg(enforce: Enforce) -> PolicyConfig {
        PolicyConfig {
            enforce,
            enforce_groups: vec![GroupRef {
                name: "admins".into(),
                gid: 100,
            }],
            exempt_groups: vec![GroupRef {
                name: "robots".into(),
                gid: 200,
            }],
            unenrolled: Unenrolled::Deny,
            protected_users: vec!["root".into()],
            failmode: FailMode::Secure,
            prompts: 3,
        }
    }

    fn rec(state: TotpState, disabled: bool) -> UserRecord {
        UserRecord {
            state,
            disabled,
            ..UserRecord::new("u", vec![])
        }
    }

    #[test]
    fn a_required_code_without_a_factor_is_what_unenrolled_says() {
        let required = decide(&cfg(Enforce::All), "u", &[], None, false);
        let at = |enrolled, recovery, unenrolled| required.at_login(enrolled, recovery, unenrolled);
        assert_eq!(at(false, false, Unenrolled::Deny), AtLogin::Refused);
        assert_eq!(at(false, false, Unenrolled::Allow), AtLogin::PasswordOnly);
        assert_eq!(at(false, false, Unenrolled::Enroll), AtLogin::SetUp);
        // A factor, or a recovery code, is asked for whatever `unenrolled` says.
        assert_eq!(at(true, false, Unenrolled::Deny), AtLogin::Code);
        assert_eq!(at(false, true, Unenrolled::Deny), AtLogin::Code);
        let not_asked = decide(&cfg(Enforce::OptIn), "u", &[], None, false);
        assert_eq!(
            not_asked.at_login(false, false, Unenrolled::Deny),
            AtLogin::NoCode
        );
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
        let d = decide(&c, "u", &[200], None, false);
        assert!(!d.required && !d.ask, "{}", d.reason);
        assert!(!decide(&c, "u", &[], Some(&rec(TotpState::Active, true)), false).ask);
        assert!(
            !decide(&c, "u", &[], Some(&rec(TotpState::None, true)), false).ask,
            "a disabled user without a factor is exempt"
        );
    }

    #[test]
    fn groups_requires_members_only() {
        let c = cfg(Enforce::Groups);
        assert!(decide(&c, "u", &[100], None, false).required);
        assert!(!decide(&c, "u", &[300], None, false).required);
    }

    #[test]
    fn only_remote_hosts_are_remembered() {
        for h in [
            "",
            " ",
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "0.0.0.0",
            "me",
            "x.localhost",
        ] {
            assert!(!rememberable_host(h, "me", &[]), "{h:?}");
        }
        for h in [
            "10.0.0.5",
            "203.0.113.9",
            "2001:db8::1",
            "laptop.example.org",
            "laptop",
        ] {
            assert!(rememberable_host(h, "me", &[]), "{h:?}");
        }
        // This machine's own addresses (as an IPv4-mapped IPv6 one too).
        let own: Vec<IpAddr> = ["10.0.0.5", "2001:db8::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        for h in ["10.0.0.5", "::ffff:10.0.0.5", "[2001:db8::1]"] {
            assert!(!rememberable_host(h, "me", &own), "{h:?}");
        }
        assert!(rememberable_host("203.0.113.9", "me", &own));
        // And those of the machine the test runs on, loopback among them.
        let here = own_addresses().expect("this machine's interfaces");
        assert!(here.iter().any(IpAddr::is_loopback), "{here:?}");
        for ip in &here {
            assert!(!rememberable_host(&ip.to_string(), "me", &here), "{ip}");
        }
    }

    #[test]
    fn protected_users_are_refused_and_never_disabled() {
        let c = cfg(Enforce::All);
        assert!(is_protected(&c, "root") && !is_protected(&c, "u"));
        let err = ensure_unprotected(&c, "root", ProtectedAction::Disable).unwrap_err();
        assert!(matches!(err, Error::Protected { .. }), "{err}");
        ensure_unprotected(&c, "u", ProtectedAction::Reset).unwrap();
        let mut r = rec(TotpState::Active, true);
        r.name = "root".into();
        assert!(
            decide(&c, "root", &[], Some(&r), false).ask,
            "a disabled flag on a protected user is ignored"
        );
    }
}
