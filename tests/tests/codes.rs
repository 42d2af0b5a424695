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

#[test]
fn regenerate_with_output_writes_a_printable_0600_page() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    sb.enroll_active("alice");
    let file = sb.root().join("alice-codes.txt");
    let file_arg = file.to_str().unwrap();
    let v = sb.admin_json(&[
        "backup-codes",
        "alice",
        "--regenerate",
        "--yes",
        "--output",
        file_arg,
    ]);
    let codes = json_strings(&v["backup_codes"]);
    let page = std::fs::read_to_string(&file).expect("the page was written");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "backup code page mode");
    assert!(
        page.contains("alice@"),
        "names the account and host:\n{page}"
    );
    assert!(page.contains("Generated:"), "has a date:\n{page}");
    assert!(
        page.contains("Verification code"),
        "says how to use them:\n{page}"
    );
    for c in &codes {
        assert!(page.contains(c.as_str()), "code {c} missing from:\n{page}");
    }
    // An existing file is never overwritten, and nothing changes.
    let out = sb.admin(&[
        "backup-codes",
        "alice",
        "--regenerate",
        "--yes",
        "--output",
        file_arg,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    sb.login("alice", &[PW, &codes[0]]).assert_success();
}

#[test]
fn login_warns_when_two_or_fewer_backup_codes_remain() {
    let sb = Sandbox::with_config("[policy]\nenforce = \"opt-in\"\n[backup_codes]\ncount = 4\n");
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let r = sb.login("alice", &[PW, &e.backup_codes[0]]);
    r.assert_success();
    assert!(r.output.contains("3 left"), "{r}");
    assert_eq!(
        r.count("backup codes left"),
        0,
        "no warning with 3 left: {r}"
    );
    let r = sb.login("alice", &[PW, &e.backup_codes[1]]);
    r.assert_success();
    assert!(r.output.contains("Only 2 backup codes left"), "{r}");
    assert!(
        r.output.contains("--regenerate"),
        "says how to get more: {r}"
    );
}

#[test]
fn recovery_login_tells_the_user_to_re_enrol() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    sb.enroll_active("alice");
    let v = sb.admin_json(&["recovery", "alice"]);
    let code = v["code"].as_str().expect("recovery JSON code").to_string();
    let r = sb.login("alice", &[PW, &code.to_uppercase()]);
    r.assert_success();
    assert!(r.output.contains("Recovery code accepted"), "{r}");
    assert!(r.output.contains("re-enrol"), "{r}");
}

#[test]
fn lock_message_says_until_when() {
    let sb = Sandbox::with_config(LOCKOUT3);
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let wrong = wrong_codes(&e.secret, 3);
    let r = sb.login("alice", &[PW, &wrong[0], &wrong[1], &wrong[2]]);
    assert_eq!(r.pam_result(), PamResult::MaxTries, "{r}");
    let st = sb.status("alice");
    let until = st["locked_until"].as_str().expect("locked_until in status");
    assert!(
        r.output.contains(&format!("locked until {until}")),
        "{r}\n{st}"
    );
    let r = sb.login("alice", &[PW]);
    assert!(r.output.contains(&format!("locked until {until}")), "{r}");
    assert_eq!(r.count(CODE_PROMPT), 0, "no prompt while locked: {r}");
}

#[test]
fn audit_records_codes_used_regenerated_recovery_lock_and_unlock() {
    let sb = Sandbox::with_config(LOCKOUT3);
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    sb.login("alice", &[PW, &e.backup_codes[0]])
        .assert_success();
    sb.admin_ok(&["backup-codes", "alice", "--regenerate", "--yes"]);
    let wrong = wrong_codes(&e.secret, 3);
    sb.login("alice", &[PW, &wrong[0], &wrong[1], &wrong[2]]);
    sb.admin_ok(&["unlock", "alice"]);
    let v = sb.admin_json(&["recovery", "alice"]);
    let code = v["code"].as_str().unwrap().to_string();
    sb.login("alice", &[PW, &code]).assert_success();

    let rows = sb.audit("alice");
    let has = |event: &str, outcome: &str, detail: &str| {
        rows.iter().any(|r| {
            r["event"] == event
                && r["outcome"] == outcome
                && r["detail"].as_str().is_some_and(|d| d.contains(detail))
        })
    };
    assert!(has("login", "success", "backup"), "{rows:#?}");
    assert!(has("backup-codes", "regenerated", ""), "{rows:#?}");
    assert!(has("login", "failure", "wrong code"), "{rows:#?}");
    assert!(has("lock", "locked", "locked until"), "{rows:#?}");
    assert!(has("unlock", "done", ""), "{rows:#?}");
    assert!(has("recovery", "issued", "valid until"), "{rows:#?}");
    assert!(has("login", "success", "recovery"), "{rows:#?}");
    for r in &rows {
        for keys in [
            "time", "user", "service", "rhost", "event", "outcome", "detail",
        ] {
            assert!(r.get(keys).is_some(), "audit row lacks {keys}: {r}");
        }
        let text = r.to_string();
        assert!(!text.contains(&code), "audit holds a recovery code: {r}");
        assert!(
            !text.contains(&e.backup_codes[0]),
            "audit holds a backup code: {r}"
        );
    }
}

#[test]
fn regenerate_to_an_unwritable_page_changes_nothing() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let bad = sb.root().join("no-such-dir/page.txt");
    let out = sb.admin(&[
        "backup-codes",
        "alice",
        "--regenerate",
        "--yes",
        "--output",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    assert_eq!(left(&sb, "alice"), e.backup_codes.len() as u64);
    sb.login("alice", &[PW, &e.backup_codes[0]])
        .assert_success();
}

#[test]
fn protected_user_cannot_be_reset_only_re_enrolled() {
    let sb =
        Sandbox::with_config("[policy]\nenforce = \"opt-in\"\nprotected_users = [\"alice\"]\n");
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let out = sb.admin(&["reset", "alice", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    assert_eq!(sb.status("alice")["state"], "active");
    sb.login("alice", &[PW, &e.backup_codes[0]])
        .assert_success();
}

#[test]
fn each_further_lock_lasts_twice_as_long_until_an_unlock() {
    let sb = Sandbox::with_config(
        "[policy]\nenforce = \"opt-in\"\n\
         [lockout]\nmax_failures = 1\nlock_seconds = 1\nmax_lock_seconds = 3\n",
    );
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let wrong = wrong_codes(&e.secret, 3);
    let lock_seconds = |sb: &Sandbox| {
        let st = sb.status("alice");
        let until = st["locked_until"].as_str().expect("locked").to_string();
        (st["lock_level"].as_u64().expect("lock_level"), until)
    };
    let mut levels = vec![];
    for code in &wrong {
        let before = unix_now();
        let r = sb.login("alice", &[PW, code]);
        assert_eq!(r.pam_result(), PamResult::MaxTries, "{r}");
        let (level, until) = lock_seconds(&sb);
        let length = rfc3339_to_unix(&until) - before;
        levels.push((level, length));
        // Wait the lock out (it ends at `until`).
        while sb.status("alice")["locked"] == true {
            thread::sleep(Duration::from_millis(200));
        }
    }
    let lengths: Vec<u64> = levels.iter().map(|(_, l)| *l).collect();
    assert_eq!(
        levels.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        (1..=2).contains(&lengths[0])
            && (2..=3).contains(&lengths[1])
            && (3..=4).contains(&lengths[2]),
        "locks of 1, 2, then at most 3 s: {lengths:?}"
    );
    sb.admin_ok(&["unlock", "alice"]);
    assert_eq!(sb.status("alice")["lock_level"], 0);
    sb.login("alice", &[PW, &totp(&e.secret, 0)])
        .assert_success();
}

/// Seconds since the epoch of an RFC 3339 UTC time as crm2fa prints it.
fn rfc3339_to_unix(t: &str) -> u64 {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", t, "+%s"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("date cannot read {t:?}"))
}
