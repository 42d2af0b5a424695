//! Backup codes, recovery codes and the lockout, through real libpam.

use std::thread;
use std::time::{Duration, Instant};

use crm2fa_tests::*;

const PW: &str = "correct horse";

fn left(sb: &Sandbox, user: &str) -> u64 {
    let st = sb.status(user);
    st["backup_codes_left"]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no backup_codes_left: {st}"))
}

fn locked(sb: &Sandbox, user: &str) -> bool {
    let st = sb.status(user);
    st["locked"]
        .as_bool()
        .unwrap_or_else(|| panic!("status has no boolean locked: {st}"))
}

#[test]
fn backup_code_logs_in_once_then_fails() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    assert_eq!(left(&sb, "alice"), e.backup_codes.len() as u64);
    let code = &e.backup_codes[0];

    let r = sb.login("alice", &[PW, code]);
    r.assert_success();
    assert_eq!(left(&sb, "alice"), e.backup_codes.len() as u64 - 1);

    let r = sb.login("alice", &[PW, code]);
    r.assert_denied();
    assert_eq!(r.invalid_code_messages(), 1, "{r}");
    assert_eq!(left(&sb, "alice"), e.backup_codes.len() as u64 - 1);
}

#[test]
fn regenerating_backup_codes_voids_the_old_set() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");

    let v = sb.admin_json(&["backup-codes", "alice", "--regenerate", "--yes"]);
    let fresh = json_strings(&v["backup_codes"]);
    assert_eq!(fresh.len(), e.backup_codes.len(), "{v}");
    assert!(
        fresh.iter().all(|c| !e.backup_codes.contains(c)),
        "new set shares codes with the old one: {v}"
    );

    let r = sb.login("alice", &[PW, &e.backup_codes[1]]);
    r.assert_denied();
    assert_eq!(r.invalid_code_messages(), 1, "{r}");
    sb.login("alice", &[PW, &fresh[0]]).assert_success();
}

#[test]
fn backup_codes_regenerate_without_yes_and_without_terminal_is_refused() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");

    let out = sb.admin(&["--json", "backup-codes", "alice", "--regenerate"]);
    assert!(!out.status.success(), "{}", show_output(&out));
    // The old set is untouched.
    sb.login("alice", &[PW, &e.backup_codes[0]])
        .assert_success();
}

#[test]
fn recovery_code_logs_in_once() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");

    let v = sb.admin_json(&["recovery", "alice", "--valid", "1h"]);
    let code = v["code"].as_str().expect("recovery JSON code").to_string();
    assert!(
        v["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') || t.ends_with("+00:00")),
        "expires_at is RFC 3339 UTC: {v}"
    );

    sb.login("alice", &[PW, &code]).assert_success();
    let r = sb.login("alice", &[PW, &code]);
    r.assert_denied();
    assert_eq!(r.invalid_code_messages(), 1, "{r}");
    // Her authenticator still works.
    sb.login("alice", &[PW, &totp(&e.secret, 0)])
        .assert_success();
}

#[test]
fn recovery_code_lets_in_a_user_with_no_other_factor() {
    let sb = Sandbox::with_config("[policy]\nenforce = \"all\"\nunenrolled = \"deny\"\n");
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    sb.admin_ok(&["reset", "alice", "--yes"]);
    assert_eq!(sb.status("alice")["state"], "none");
    // Lost every factor: denied.
    sb.login("alice", &[PW, &totp(&e.secret, 0)])
        .assert_denied();

    let v = sb.admin_json(&["recovery", "alice", "--valid", "1h"]);
    let code = v["code"].as_str().expect("recovery JSON code").to_string();
    let r = sb.login("alice", &[PW, &code]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 1, "{r}");
    // Once.
    sb.login("alice", &[PW, &code]).assert_denied();
}

#[test]
fn expired_recovery_code_is_refused() {
    let sb = Sandbox::new();
    for u in ["fresh", "stale"] {
        sb.add_user(u, PW);
        sb.enroll_active(u);
    }

    let issued = Instant::now();
    let mut codes = Vec::new();
    for u in ["fresh", "stale"] {
        let v = sb.admin_json(&["recovery", u, "--valid", "2s"]);
        codes.push(v["code"].as_str().expect("recovery JSON code").to_string());
    }
    // Control: a 2-second code works within its 2 seconds.
    let r = sb.login("fresh", &[PW, &codes[0]]);
    assert!(
        issued.elapsed() < Duration::from_secs(2),
        "too slow to test a 2 s code"
    );
    r.assert_success();

    thread::sleep(Duration::from_millis(3100).saturating_sub(issued.elapsed()));
    let r = sb.login("stale", &[PW, &codes[1]]);
    r.assert_denied();
    assert_eq!(r.invalid_code_messages(), 1, "{r}");
}

const LOCKOUT3: &str = "[policy]\nenforce = \"opt-in\"\n[lockout]\nmax_failures = 3\n";

#[test]
fn max_failures_wrong_codes_lock_until_unlock() {
    let sb = Sandbox::with_config(LOCKOUT3);
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let wrong = wrong_codes(&e.secret, 3);

    // Failures count across logins: 2 + 1.
    let r = sb.login("alice", &[PW, &wrong[0], &wrong[1]]);
    r.assert_denied();
    assert_eq!(r.invalid_code_messages(), 2, "{r}");
    assert!(!locked(&sb, "alice"), "locked after 2 of 3 failures");
    sb.login("alice", &[PW, &wrong[2]]).assert_denied();
    assert!(locked(&sb, "alice"), "not locked after 3 failures");

    // Locked: the right code is refused without being checked.
    let code = totp(&e.secret, 0);
    let r = sb.login("alice", &[PW, &code]);
    r.assert_denied();
    assert_eq!(r.pam_result(), PamResult::MaxTries, "{r}");
    assert_eq!(r.invalid_code_messages(), 0, "{r}");
    // A backup code does not get around it either.
    let r = sb.login("alice", &[PW, &e.backup_codes[0]]);
    assert_eq!(r.pam_result(), PamResult::MaxTries, "{r}");

    sb.admin_ok(&["unlock", "alice"]);
    assert!(!locked(&sb, "alice"));
    // The code was not consumed while locked.
    sb.login("alice", &[PW, &code]).assert_success();
}

#[test]
fn successful_login_resets_the_failure_count() {
    let sb = Sandbox::with_config(LOCKOUT3);
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let wrong = wrong_codes(&e.secret, 4);

    sb.login("alice", &[PW, &wrong[0], &wrong[1], &totp(&e.secret, 0)])
        .assert_success();
    sb.login("alice", &[PW, &wrong[2], &wrong[3]])
        .assert_denied();
    assert!(!locked(&sb, "alice"), "consecutive failures only");
}

#[test]
fn empty_answers_are_not_counted_toward_the_lockout() {
    let sb = Sandbox::with_config(LOCKOUT3);
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");

    for _ in 0..2 {
        let r = sb.login("alice", &[PW, "", "", ""]);
        r.assert_denied();
        assert_eq!(r.invalid_code_messages(), 0, "{r}");
    }
    assert!(!locked(&sb, "alice"), "6 empty answers locked the user");
    sb.login("alice", &[PW, &totp(&e.secret, 0)])
        .assert_success();
}

#[test]
fn recovery_clears_a_lock_but_a_recovery_code_never_bypasses_one() {
    let sb = Sandbox::with_config(LOCKOUT3);
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let wrong = wrong_codes(&e.secret, 6);

    sb.login("alice", &[PW, &wrong[0], &wrong[1], &wrong[2]])
        .assert_denied();
    assert!(locked(&sb, "alice"));
    // Issuing a recovery code clears the lock.
    let v = sb.admin_json(&["recovery", "alice", "--valid", "1h"]);
    let code = v["code"].as_str().expect("recovery JSON code").to_string();
    assert!(!locked(&sb, "alice"), "recovery must clear the lock");

    // Locked again: the (valid, unused) recovery code is refused.
    sb.login("alice", &[PW, &wrong[3], &wrong[4], &wrong[5]])
        .assert_denied();
    assert!(locked(&sb, "alice"));
    let r = sb.login("alice", &[PW, &code]);
    r.assert_denied();
    assert_eq!(r.pam_result(), PamResult::MaxTries, "{r}");

    sb.admin_ok(&["unlock", "alice"]);
    sb.login("alice", &[PW, &code]).assert_success();
}
