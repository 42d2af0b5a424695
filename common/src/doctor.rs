//! `crm2fa-admin doctor`: check what a login depends on — config, host key,
//! store, their owners and modes — and say how to fix each problem.
use std::path::Path;

use crate::auth::relay::{self, Unserved};
use crate::config::Config;
use crate::crypto::HostKey;
use crate::delivery::{self, Channel};
use crate::fsperm::{self, Secrecy};
use crate::store;
use crate::store::pg::PgConnect;

/// One check and its result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// What was checked: `config`, `key file`, `store` …
    pub check: String,
    /// It is fine.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do about it, when not ok.
    pub fix: Option<String>,
}

fn ok(check: &str, detail: impl Into<String>) -> Check {
    Check {
        check: check.into(),
        ok: true,
        detail: detail.into(),
        fix: None,
    }
}

fn problem(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        check: check.into(),
        ok: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// A failed check from an error: the error's own fix if it has one, else
/// `fallback`.
fn failed(check: &str, e: &crate::Error, fallback: &str) -> Check {
    problem(check, e.problem(), e.fix().unwrap_or(fallback))
}

/// crm2fad: not needed (logins then open the store themselves), but a
/// socket the module will not use is a problem.
fn login_service_check(socket: &Path) -> Check {
    const NAME: &str = "login service";
    match relay::probe(socket) {
        Ok(()) => ok(
            NAME,
            format!(
                "crm2fad listens on {}: logins run there, on a store kept open",
                socket.display()
            ),
        ),
        Err(Unserved::Absent | Unserved::NotRunning(_)) => ok(
            NAME,
            "crm2fad is not running: each login opens the store itself (slower; \
             `systemctl enable --now crm2fad` starts it)",
        ),
        Err(Unserved::Untrusted(why)) => problem(
            NAME,
            why,
            format!(
                "stop whatever made {}, then `systemctl restart crm2fad`",
                socket.display()
            ),
        ),
        Err(Unserved::Stalled(why)) => problem(
            NAME,
            why,
            "see `systemctl status crm2fad` and its log, then `systemctl restart crm2fad`",
        ),
    }
}

/// The directories above a trusted file: whoever may write one may
/// replace or remove the file.
fn check_dirs(name: &str, file: &Path) -> Check {
    match fsperm::check_parent_dirs(file) {
        Ok(()) => ok(
            name,
            format!(
                "the directories above {} belong to root, closed to others",
                file.display()
            ),
        ),
        Err(e) => failed(name, &e, "run `crm2fa-admin init`"),
    }
}

/// The sending program, when a channel is configured: it must be there and
/// trusted, or every code by email or SMS fails.
fn delivery_check(cfg: &Config) -> Option<Check> {
    let channels: Vec<&str> = Channel::ALL
        .into_iter()
        .filter(|c| c.configured(cfg))
        .map(Channel::as_str)
        .collect();
    if channels.is_empty() {
        return None;
    }
    let program = &cfg.delivery.program;
    Some(match delivery::check_program(program) {
        Ok(()) => ok(
            "sending program",
            format!(
                "{} sends codes by {}",
                program.display(),
                channels.join(" and ")
            ),
        ),
        Err(e) => problem(
            "sending program",
            format!("cannot use {}: {}", program.display(), e.problem()),
            e.fix().unwrap_or(
                "install crm2fa-send there (the packages do), or set [delivery] program to where \
                 it is",
            ),
        ),
    })
}

/// `[sms] command` gets the message, code included, as an argument, and
/// every local user can read a process's arguments in /proc unless /proc is
/// mounted with `hidepid` (`mounts` is the text of /proc/mounts).
fn sms_command_check(mounts: &str) -> Check {
    let hidden = mounts
        .lines()
        .rev()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && f[1] == "/proc" && f[2] == "proc")
        .is_some_and(|f| {
            f[3].split(',').any(|o| {
                o.strip_prefix("hidepid=")
                    .is_some_and(|v| !matches!(v, "0" | "off"))
            })
        });
    if hidden {
        ok(
            "sms command",
            "/proc hides other users' processes (hidepid): the code in the command's \
             arguments is not readable by them",
        )
    } else {
        problem(
            "sms command",
            "[sms] command gets the code in its arguments, and /proc shows every process's \
             arguments to every local user (no hidepid)",
            "mount /proc with hidepid=invisible (fstab: `proc /proc proc \
             defaults,hidepid=invisible 0 0`, now: `mount -o remount,hidepid=invisible /proc`), \
             or send by an HTTP gateway ([sms] url)",
        )
    }
}

/// An SMS gateway's url, headers and body template live in the config, and
/// gateways take their API key in one of them: the config must then be
/// readable by root only, the rule the key file keeps ([`Secrecy::OwnerOnly`]).
/// A login refuses only a config others can write; the packages install it
/// 0600.
fn sms_gateway_check(config_path: &Path) -> Check {
    match fsperm::check_if_present(config_path, Secrecy::OwnerOnly) {
        Ok(_) => ok(
            "sms gateway",
            format!(
                "{} (with the gateway's url, headers and body) is readable by root only",
                config_path.display()
            ),
        ),
        Err(e) => problem(
            "sms gateway",
            format!(
                "the SMS gateway's url, headers and body (where an API key goes) are in {}",
                e.problem()
            ),
            e.fix()
                .unwrap_or("chmod 0600 the configuration (as the packages install it)"),
        ),
    }
}

/// Run every check for the configuration at `config_path` (a PostgreSQL
/// store through `pg`).
pub fn run(config_path: &Path, pg: Option<&dyn PgConnect>) -> Vec<Check> {
    let mut out = vec![];
    let cfg = match Config::load(config_path) {
        Ok(c) => {
            out.push(ok("config", format!("{} is valid", config_path.display())));
            c
        }
        Err(e) => {
            let fallback = match &e {
                crate::Error::ConfigMissing { .. } => {
                    "run `crm2fa-admin init` to write the default configuration"
                }
                crate::Error::Io { .. } => {
                    "make it a readable file again (restore it from backup; or move it away and \
                     run `crm2fa-admin init` for the default)"
                }
                _ => "correct the file at the line named",
            };
            out.push(failed("config", &e, fallback));
            return out;
        }
    };
    let key = match HostKey::load(&cfg.store.key_file) {
        Ok(k) => {
            out.push(ok(
                "key file",
                format!("{} is readable by root only", cfg.store.key_file.display()),
            ));
            Some(k)
        }
        Err(e) => {
            let fallback = if cfg.store.key_file.exists() {
                "restore the key file from backup"
            } else {
                "run `crm2fa-admin init` (a new key cannot read secrets sealed with a lost one: \
                 restore it from backup if users are enrolled)"
            };
            out.push(failed("key file", &e, fallback));
            None
        }
    };
    out.push(check_dirs("key directory", &cfg.store.key_file));
    if cfg.store.postgres.is_none() {
        out.push(check_dirs("store directory", &cfg.store.path));
    }
    if let Some(c) = delivery_check(&cfg) {
        out.push(c);
    }
    out.push(login_service_check(Path::new(relay::DEFAULT_SOCKET)));
    if cfg.sms.as_ref().is_some_and(|s| !s.command.is_empty()) {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        out.push(sms_command_check(&mounts));
    }
    if cfg.sms.as_ref().is_some_and(|s| !s.url.is_empty()) {
        out.push(sms_gateway_check(config_path));
    }
    if let (Some(p), Some(connector)) = (&cfg.store.postgres, pg) {
        match connector.prepare(&p.client_library) {
            Ok(Some(found)) => out.push(ok("client library", found)),
            Ok(None) => {}
            Err(e) => {
                // Every login would fail the same way before connecting.
                out.push(problem(
                    "client library",
                    e.message,
                    "install libcrm2fa_pg.so from the same crm2fa release as the module \
                     (root's, not writable by others; the package or `make install` puts it \
                     at /usr/lib/crm2fa), or set [store] client_library to where it is",
                ));
                return out;
            }
        }
    }
    let store = match store::open(&cfg.store, pg) {
        Ok(s) => Some(s),
        Err(e) => {
            let fallback = match (&e, &cfg.store.postgres) {
                (crate::Error::StoreMissing { .. }, _) => "run `crm2fa-admin init`",
                (_, Some(_)) if permission_denied(&e) => {
                    "as the database's owner, give this role the row rights a login needs \
                     (README, A PostgreSQL store for a fleet: the GRANTs)"
                }
                (_, Some(_)) => {
                    "check that the server is up and reachable from this host, the role, \
                     password_file and sslmode; the schema is made by `crm2fa-admin init` as the \
                     database's owner"
                }
                (_, None) => "restore the store from backup",
            };
            out.push(failed("store", &e, fallback));
            None
        }
    };
    let Some(mut store) = store else {
        return out;
    };
    match store.check_integrity() {
        Ok(errors) if errors.is_empty() => out.push(ok(
            "store",
            match &cfg.store.postgres {
                Some(_) => format!(
                    "{} answers, schema is current, this role has the row rights a login \
                     needs, no damaged row",
                    store.location()
                ),
                None => format!(
                    "{} opens, schema is current, integrity check passed",
                    cfg.store.path.display()
                ),
            },
        )),
        Ok(errors) => out.push(problem(
            "store",
            format!("integrity check: {}", errors.join("; ")),
            match cfg.store.postgres {
                Some(_) => {
                    "as the database's owner, run the GRANTs named (README: PostgreSQL store); \
                     restore damaged rows from a backup"
                }
                None => "restore the store from backup",
            },
        )),
        Err(e) => out.push(problem(
            "store",
            e.to_string(),
            "restore the store from backup",
        )),
    }
    if let (Some(key), Ok(users)) = (key, store.users()) {
        let sealed: Vec<_> = users
            .iter()
            .filter_map(|u| u.secret.as_ref().map(|s| (u.name.as_str(), s)))
            .collect();
        let unreadable: Vec<&str> = sealed
            .iter()
            .filter(|(name, s)| key.open(name, s).is_err())
            .map(|(name, _)| *name)
            .collect();
        if unreadable.is_empty() {
            out.push(ok(
                "secrets",
                format!("the host key opens all {} enrolled secret(s)", sealed.len()),
            ));
        } else {
            out.push(problem(
                "secrets",
                format!(
                    "the host key {} cannot open the secret of: {}",
                    cfg.store.key_file.display(),
                    unreadable.join(", ")
                ),
                format!(
                    "restore {} from the backup made when they enrolled, or re-enrol these users \
                     (crm2fa-admin enroll USER)",
                    cfg.store.key_file.display()
                ),
            ));
        }
    }
    out
}

/// Whether the PostgreSQL server refused `e` for want of a right
/// (SQLSTATE 42501): the role is known but lacks its GRANTs.
fn permission_denied(e: &crate::Error) -> bool {
    matches!(e, crate::Error::Store { source, .. }
        if source
            .downcast_ref::<store::pg::PgError>()
            .is_some_and(|p| p.sqlstate.as_deref() == Some("42501")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_login_service_is_optional_but_an_untrusted_socket_is_a_problem() {
        if !nix::unistd::geteuid().is_root() {
            return; // the socket must be root's
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("crm2fad.sock");
        let absent = login_service_check(&socket);
        assert!(
            absent.ok && absent.detail.contains("not running"),
            "{absent:?}"
        );
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let running = login_service_check(&socket);
        assert!(
            running.ok && running.detail.contains("listens"),
            "{running:?}"
        );
        std::os::unix::fs::chown(&socket, Some(4242), None).unwrap();
        let untrusted = login_service_check(&socket);
        assert!(!untrusted.ok && untrusted.fix.is_some(), "{untrusted:?}");
    }

    #[test]
    fn an_sms_command_needs_a_proc_that_hides_other_users_processes() {
        let open =
            "sysfs /sys sysfs rw,nosuid 0 0\nproc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n";
        let c = sms_command_check(open);
        assert!(
            !c.ok && c.fix.as_deref().unwrap().contains("hidepid=invisible"),
            "{c:?}"
        );
        for hidden in [
            "hidepid=invisible",
            "hidepid=2",
            "hidepid=1",
            "hidepid=noaccess",
            "hidepid=ptraceable",
        ] {
            let mounts = format!("proc /proc proc rw,relatime,{hidden} 0 0\n");
            assert!(sms_command_check(&mounts).ok, "{hidden}");
        }
        for shown in ["hidepid=0", "hidepid=off"] {
            let mounts = format!("proc /proc proc rw,{shown} 0 0\n");
            assert!(!sms_command_check(&mounts).ok, "{shown}");
        }
        // Another proc mounted elsewhere (a container's) does not count,
        // and the last mount on /proc is the one in force.
        let elsewhere = "proc /proc proc rw 0 0\nproc /srv/c/proc proc rw,hidepid=2 0 0\n";
        assert!(!sms_command_check(elsewhere).ok);
        let over = "proc /proc proc rw 0 0\nproc /proc proc rw,hidepid=2 0 0\n";
        assert!(sms_command_check(over).ok);
    }

    #[test]
    fn an_sms_gateway_config_must_be_readable_by_root_only() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return; // the rules are about root-owned files
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = d.path().join("crm2fa.toml");
        fsperm::create_private_file(&p, b"").unwrap();
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(sms_gateway_check(&p).ok, "{mode:o}");
        }
        for mode in [0o644, 0o604, 0o640] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let c = sms_gateway_check(&p);
            assert!(!c.ok, "{mode:o}");
            assert!(
                c.fix
                    .as_deref()
                    .unwrap()
                    .contains(&format!("chmod 0600 {}", p.display())),
                "{c:?}"
            );
        }
    }

    #[test]
    fn healthy_setup_passes_and_problems_say_how_to_fix() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return; // the rules are about root-owned files
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg_path = d.path().join("crm2fa.toml");
        fsperm::create_private_file(&cfg_path, b"[store]\npath = \"db\"\nkey_file = \"key\"\n")
            .unwrap();
        let missing = run(&cfg_path, None);
        assert!(
            missing.iter().any(|c| !c.ok && c.check == "key file"),
            "{missing:?}"
        );
        let cfg = Config::load(&cfg_path).unwrap();
        HostKey::create(&cfg.store.key_file).unwrap();
        store::create(&cfg.store, None).unwrap();
        let checks = run(&cfg_path, None);
        assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
        std::fs::set_permissions(&cfg.store.key_file, std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let checks = run(&cfg_path, None);
        let key = checks.iter().find(|c| c.check == "key file").unwrap();
        assert!(!key.ok);
        assert!(
            key.fix.as_deref().unwrap().contains("chmod 0600"),
            "{key:?}"
        );
        // An SMS gateway in a config others can read.
        std::fs::set_permissions(&cfg.store.key_file, std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(
            &cfg_path,
            "[store]\npath = \"db\"\nkey_file = \"key\"\n[sms]\nurl = \"https://sms.example/send\"\n",
        )
        .unwrap();
        let gateway = |checks: Vec<Check>| checks.into_iter().find(|c| c.check == "sms gateway");
        assert!(gateway(run(&cfg_path, None)).unwrap().ok);
        std::fs::set_permissions(&cfg_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = gateway(run(&cfg_path, None)).unwrap();
        assert!(!c.ok && c.detail.contains("mode 0644"), "{c:?}");
    }
}
