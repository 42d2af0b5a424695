//! Remembered hosts ("remember this computer"): after a successful code
//! from a remote host, the user is not asked again from it for
//! `[remember] days`; never for an empty or local host; `reset`, `disable`,
//! a lock and `forget` forget. Through libpam, with pamtester setting
//! PAM_RHOST.

use crm2fa_tests::*;

const PW: &str = "correct horse";
const LAPTOP: &str = "203.0.113.7";
const OTHER: &str = "198.51.100.2";

fn sandbox() -> (Sandbox, Enrolled) {
    Sandbox::with_active_user(
        "[policy]\nenforce = \"all\"\n[lockout]\nmax_failures = 2\n[remember]\ndays = 30\n",
        "alice",
        PW,
    )
}

/// A login from `rhost` that needs a code: asked once, and `code` works.
#[track_caller]
fn asked_and_in(sb: &Sandbox, rhost: &str, code: &str) {
    let r = sb.login_from("alice", rhost, &[PW, code]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 1, "{r}");
}

/// A login from `rhost` with the password alone: in, no code asked.
#[track_caller]
fn remembered(sb: &Sandbox, rhost: &str) {
    let r = sb.login_from("alice", rhost, &[PW]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 0, "{rhost} should be remembered: {r}");
}

/// A login from `rhost` with the password alone: a code is asked (and,
/// with no answer, the login fails).
#[track_caller]
fn not_remembered(sb: &Sandbox, rhost: &str) {
    let r = sb.login_from("alice", rhost, &[PW]);
    r.assert_denied();
    assert!(r.prompts_seen >= 1, "{rhost} should not be remembered: {r}");
}

#[test]
fn a_host_is_remembered_after_a_code_and_only_that_host() {
    let (sb, e) = sandbox();
    asked_and_in(&sb, LAPTOP, &e.backup_codes[0]);
    remembered(&sb, LAPTOP);
    not_remembered(&sb, OTHER);
    let st = sb.status("alice");
    let hosts = st["remembered"].as_array().expect("remembered in status");
    assert_eq!(hosts.len(), 1, "{st}");
    assert_eq!(hosts[0]["host"], LAPTOP, "{st}");
    assert!(hosts[0]["until"].as_str().is_some(), "{st}");
    assert!(
        sb.audit("alice").iter().any(|r| r["event"] == "login"
            && r["rhost"] == LAPTOP
            && r["detail"]
                .as_str()
                .unwrap_or("")
                .contains("remembered until")),
        "the audit says why no code was asked"
    );
}

#[test]
fn an_empty_or_local_host_is_never_remembered() {
    let (sb, e) = sandbox();
    for (i, rhost) in ["", "localhost", "127.0.0.1", "::1"]
        .into_iter()
        .enumerate()
    {
        let r = if rhost.is_empty() {
            sb.login("alice", &[PW, &e.backup_codes[i]])
        } else {
            sb.login_from("alice", rhost, &[PW, &e.backup_codes[i]])
        };
        r.assert_success();
        let again = if rhost.is_empty() {
            sb.login("alice", &[PW])
        } else {
            sb.login_from("alice", rhost, &[PW])
        };
        assert!(again.prompts_seen >= 1, "{rhost:?} remembered: {again}");
        again.assert_denied();
    }
    assert_eq!(sb.status("alice")["remembered"], serde_json::json!([]));
}

#[test]
fn reset_disable_and_forget_forget_remembered_hosts() {
    let (sb, e) = sandbox();
    asked_and_in(&sb, LAPTOP, &e.backup_codes[0]);
    asked_and_in(&sb, OTHER, &e.backup_codes[1]);

    // forget HOST, then forget all.
    sb.admin_ok(&["forget", "alice", OTHER]);
    remembered(&sb, LAPTOP);
    not_remembered(&sb, OTHER);
    let v = sb.admin_json(&["forget", "alice"]);
    assert_eq!(v["forgotten"], 1, "{v}");
    not_remembered(&sb, LAPTOP);

    // disable forgets (enable does not bring them back).
    asked_and_in(&sb, LAPTOP, &e.backup_codes[2]);
    sb.admin_ok(&["disable", "alice", "--override-policy", "--yes"]);
    sb.admin_ok(&["enable", "alice"]);
    not_remembered(&sb, LAPTOP);

    // reset forgets: enrolled again, the laptop is asked for a code.
    asked_and_in(&sb, LAPTOP, &e.backup_codes[3]);
    sb.admin_ok(&["reset", "alice", "--yes"]);
    let again = sb.enroll_active("alice");
    not_remembered(&sb, LAPTOP);
    asked_and_in(&sb, LAPTOP, &again.backup_codes[0]);
    remembered(&sb, LAPTOP);
}

#[test]
fn a_lock_forgets_remembered_hosts() {
    let (sb, e) = sandbox();
    asked_and_in(&sb, LAPTOP, &e.backup_codes[0]);
    // Someone elsewhere guesses twice: locked.
    let wrong = wrong_codes(&e.secret, 2);
    let r = sb.login_from("alice", OTHER, &[PW, &wrong[0], &wrong[1]]);
    assert_eq!(r.pam_result(), PamResult::MaxTries, "{r}");
    // Locked: refused from the laptop too, without a code asked.
    let r = sb.login_from("alice", LAPTOP, &[PW]);
    assert_eq!(r.pam_result(), PamResult::MaxTries, "{r}");
    sb.admin_ok(&["unlock", "alice"]);
    not_remembered(&sb, LAPTOP);
}
