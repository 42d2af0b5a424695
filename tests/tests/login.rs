//! Logins through real libpam (pam_wrapper + pam_matrix + pamtester):
//! the password step, TOTP codes, skew, replay, policy and activation.

use std::time::Duration;

use crm2fa_tests::*;

const PW: &str = "correct horse";

#[test]
fn right_password_and_right_code_logs_in() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");

    let r = sb.login("alice", &[PW, &totp(&e.secret, 0)]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 1, "exactly one code prompt:\n{r}");
    assert_eq!(r.invalid_code_messages(), 0, "{r}");
}

#[test]
fn right_password_and_wrong_codes_is_denied_after_three_prompts() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let wrong = wrong_codes(&e.secret, 3);

    let r = sb.login("alice", &[PW, &wrong[0], &wrong[1], &wrong[2]]);
    r.assert_denied();
    assert_eq!(r.pam_result(), PamResult::AuthErr, "{r}");
    assert_eq!(r.prompts_seen, 3, "default [policy] prompts = 3:\n{r}");
    assert_eq!(r.invalid_code_messages(), 3, "{r}");
}

#[test]
fn wrong_code_then_right_code_in_the_same_login_succeeds() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");

    let r = sb.login("alice", &[PW, &wrong_code(&e.secret), &totp(&e.secret, 0)]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 2, "{r}");
    assert_eq!(r.invalid_code_messages(), 1, "{r}");
}

#[test]
fn prompts_setting_limits_the_code_attempts_of_one_login() {
    let sb = Sandbox::with_config("[policy]\nenforce = \"opt-in\"\nprompts = 1\n");
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");

    let r = sb.login("alice", &[PW, &wrong_code(&e.secret), &totp(&e.secret, 0)]);
    r.assert_denied();
    assert_eq!(r.prompts_seen, 1, "{r}");
    assert_eq!(r.invalid_code_messages(), 1, "{r}");
}

#[test]
fn eight_digit_codes_when_configured() {
    let sb = Sandbox::with_config("[policy]\nenforce = \"opt-in\"\n[totp]\ndigits = 8\n");
    sb.add_user("alice", PW);
    let v = sb.admin_json(&["enroll", "alice", "--no-qr"]);
    let secret = v["secret"].as_str().expect("secret").to_string();
    let uri = v["otpauth_uri"].as_str().expect("otpauth_uri");
    assert!(uri.contains("digits=8"), "the app must be told: {uri}");
    wait_for_step_margin(Duration::from_secs(3));
    let eight = totp_digits(&secret, 0, 8);
    let six = totp_digits(&secret, 0, 6);
    assert!(eight.ends_with(&six));

    // The 6-digit form of the same code is refused, the 8-digit one works
    // (and activates the pending enrolment).
    let r = sb.login("alice", &[PW, &six, &eight, ""]);
    r.assert_success();
    assert_eq!(r.invalid_code_messages(), 1, "{r}");
}

#[test]
fn audit_records_each_decision_but_never_a_code_or_the_secret() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let before = sb.audit("alice").len();
    let good = totp(&e.secret, 0);
    let bad = wrong_code(&e.secret);
    let backup = e.backup_codes[0].clone();

    let r1 = sb.login("alice", &[PW, &bad, &good]);
    r1.assert_success();
    let r2 = sb.login("alice", &[PW, &backup]);
    r2.assert_success();

    let audit = sb.audit("alice");
    let new: Vec<_> = audit[before..]
        .iter()
        .filter(|rec| rec["service"] == SERVICE)
        .collect();
    assert!(
        new.len() >= 3,
        "expected a record for the wrong code and for both successes: {new:#?}"
    );
    for rec in &audit {
        for key in [
            "time", "host", "user", "service", "rhost", "event", "outcome", "detail",
        ] {
            assert!(rec.get(key).is_some(), "audit record without {key}: {rec}");
        }
        let host = String::from_utf8(std::fs::read("/proc/sys/kernel/hostname").unwrap()).unwrap();
        assert_eq!(rec["host"], host.trim(), "the host that wrote it: {rec}");
    }
    let text = serde_json::to_string(&audit).unwrap();
    let logs = format!(
        "{}\n{}",
        r1.debug_lines().join("\n"),
        r2.debug_lines().join("\n")
    );
    let backup_plain = backup.replace('-', "");
    for secret in [&e.secret, &good, &bad, &backup, &backup_plain] {
        assert!(
            !text.contains(secret.as_str()),
            "audit log contains {secret:?}: {text}"
        );
        assert!(
            !logs.contains(secret.as_str()),
            "syslog contains {secret:?}: {logs}"
        );
    }
}

#[test]
fn code_with_spaces_and_dashes_is_accepted() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let code = totp(&e.secret, 0);
    let spaced = format!(" {}-{} {} ", &code[..2], &code[2..4], &code[4..]);

    sb.login("alice", &[PW, &spaced]).assert_success();
}

#[test]
fn wrong_password_never_reaches_the_module() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let audit_before = sb.audit("alice").len();

    let r = sb.login("alice", &["not the password", &totp(&e.secret, 0)]);
    r.assert_denied();
    assert_eq!(r.prompts_seen, 0, "the module must not be asked:\n{r}");
    assert!(r.debug_lines().is_empty(), "the module ran:\n{r}");
    assert_eq!(
        sb.audit("alice").len(),
        audit_before,
        "the module wrote an audit record for a login it never saw"
    );

    // Control: the same stack with the right password does ask for the code,
    // and the code (not consumed above) is still good.
    let r = sb.login("alice", &[PW, &totp(&e.secret, 0)]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 1, "{r}");
}

#[test]
fn codes_one_step_either_side_are_accepted_two_steps_away_are_not() {
    let sb = Sandbox::new();
    for u in ["prev", "next", "far", "far_active"] {
        sb.add_user(u, PW);
    }
    // Pending enrolments have no used step yet, so the previous step is
    // usable; the first valid code activates them (then Enter).
    let prev = sb.enroll("prev");
    let far = sb.enroll("far");
    // Active, last used step = previous step.
    let next = sb.enroll_active("next");
    let far_active = sb.enroll_active("far_active");

    // No step boundary in the middle of the logins below.
    wait_for_step_margin(Duration::from_secs(10));

    let r = sb.login("prev", &[PW, &totp(&prev, -1), ""]);
    r.assert_success();
    assert_eq!(r.invalid_code_messages(), 0, "{r}");

    let r = sb.login("next", &[PW, &totp(&next.secret, 1)]);
    r.assert_success();
    assert_eq!(r.invalid_code_messages(), 0, "{r}");

    // Two steps back and two steps ahead are refused; the current code then
    // works in the same login (so the refusals were about the codes).
    let r = sb.login(
        "far",
        &[PW, &totp(&far, -2), &totp(&far, 2), &totp(&far, 0), ""],
    );
    r.assert_success();
    assert_eq!(
        r.invalid_code_messages(),
        2,
        "-2 and +2 must be refused:\n{r}"
    );

    let r = sb.login(
        "far_active",
        &[
            PW,
            &totp(&far_active.secret, 2),
            &totp(&far_active.secret, 0),
        ],
    );
    r.assert_success();
    assert_eq!(r.invalid_code_messages(), 1, "+2 must be refused:\n{r}");
}

#[test]
fn same_code_twice_second_login_fails() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let code = totp(&e.secret, 0);

    sb.login("alice", &[PW, &code]).assert_success();
    let r = sb.login("alice", &[PW, &code]);
    r.assert_denied();
    assert_eq!(r.pam_result(), PamResult::AuthErr, "{r}");
    assert_eq!(
        r.invalid_code_messages(),
        1,
        "a replay is a wrong code:\n{r}"
    );
}

#[test]
fn code_of_a_step_older_than_the_last_used_one_is_refused() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    wait_for_step_margin(Duration::from_secs(5));
    let current = totp(&e.secret, 0);
    let next = totp(&e.secret, 1);

    sb.login("alice", &[PW, &next]).assert_success();
    // `current` was never used, but it is older than `next`.
    let r = sb.login("alice", &[PW, &current]);
    r.assert_denied();
    assert_eq!(r.invalid_code_messages(), 1, "{r}");
}

#[test]
fn check_command_consumes_nothing() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let code = totp(&e.secret, 0);

    let out = sb.admin(&["check", "alice", &code]);
    assert_eq!(out.status.code(), Some(0), "{}", show_output(&out));
    let out = sb.admin(&["check", "alice", &code]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "check is repeatable: {}",
        show_output(&out)
    );
    let out = sb.admin(&["check", "alice", &wrong_code(&e.secret)]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));

    sb.login("alice", &[PW, &code]).assert_success();
}

/// Stack that tells the module's three outcomes apart: success ends the
/// stack (`done`), an error ends it with failure (`die`), and PAM_IGNORE
/// falls through to pam_echo (prints the marker) and pam_permit.
fn ignore_detecting_stack(sb: &Sandbox) -> Vec<String> {
    vec![
        sb.matrix_line(),
        sb.module_line("[success=done ignore=ignore default=die]", ""),
        format!("auth optional pam_echo.so {IGNORED_MARK}"),
        "auth required pam_permit.so".to_string(),
        "account required pam_permit.so".to_string(),
    ]
}
const IGNORED_MARK: &str = "crm2fa-returned-PAM_IGNORE";

#[test]
fn opt_in_user_not_enrolled_is_ignored_without_a_prompt() {
    let sb = Sandbox::new();
    sb.set_stack(&ignore_detecting_stack(&sb));
    sb.add_user("bob", PW);
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");

    let r = sb.login("bob", &[PW]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 0, "{r}");
    assert_eq!(
        r.count(IGNORED_MARK),
        1,
        "module must return PAM_IGNORE:\n{r}"
    );

    // Controls on the same stack: an enrolled user gets PAM_SUCCESS (not
    // IGNORE) with the right code, and is denied with a wrong one.
    let r = sb.login("alice", &[PW, &totp(&e.secret, 0)]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 1, "{r}");
    assert_eq!(
        r.count(IGNORED_MARK),
        0,
        "expected PAM_SUCCESS, not IGNORE:\n{r}"
    );
    let wrong = wrong_codes(&e.secret, 3);
    let r = sb.login("alice", &[PW, &wrong[0], &wrong[1], &wrong[2]]);
    r.assert_denied();
    assert_eq!(r.count(IGNORED_MARK), 0, "{r}");
}

#[test]
fn enforce_all_denies_unenrolled_user_when_unenrolled_is_deny() {
    let sb = Sandbox::with_config("[policy]\nenforce = \"all\"\nunenrolled = \"deny\"\n");
    sb.add_user("bob", PW);

    let r = sb.login("bob", &[PW, "123456", "123456", "123456"]);
    r.assert_denied();
    assert_eq!(r.prompts_seen, 0, "nothing to check a code against:\n{r}");
}

#[test]
fn enforce_all_lets_unenrolled_user_in_when_unenrolled_is_allow() {
    let sb = Sandbox::with_config("[policy]\nenforce = \"all\"\nunenrolled = \"allow\"\n");
    sb.add_user("bob", PW);
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");

    let r = sb.login("bob", &[PW]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 0, "{r}");

    // An enrolled user must still give a code.
    let r = sb.login("alice", &[PW]);
    r.assert_denied();
    assert!(r.prompts_seen >= 1, "{r}");
    let r = sb.login("alice", &[PW, &totp(&e.secret, 0)]);
    r.assert_success();
}

#[test]
fn enforce_groups_and_exempt_groups_decide_who_is_asked() {
    let sb = Sandbox::with_config_and_groups(
        "[policy]\nenforce = \"groups\"\nenforce_groups = [\"twofa\"]\n\
         exempt_groups = [\"svc\"]\nunenrolled = \"deny\"\n",
        &["twofa", "svc"],
    );
    sb.add_user_in_groups("member", PW, &["twofa"]);
    sb.add_user("outsider", PW);
    sb.add_user_in_groups("service", PW, &["twofa", "svc"]);
    sb.add_user_in_groups("enrolled", PW, &["twofa"]);
    let e = sb.enroll_active("enrolled");

    // In an enforced group, not enrolled: denied.
    let r = sb.login("member", &[PW, "123456"]);
    r.assert_denied();
    assert_eq!(r.prompts_seen, 0, "{r}");
    // Not in an enforced group: not asked.
    let r = sb.login("outsider", &[PW]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 0, "{r}");
    // Exempt wins over enforced: never asked.
    let r = sb.login("service", &[PW]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 0, "{r}");
    // Enforced and enrolled: asked.
    let r = sb.login("enrolled", &[PW, &totp(&e.secret, 0)]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 1, "{r}");
}

#[test]
fn first_login_activates_a_pending_enrolment_and_shows_backup_codes() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let secret = sb.enroll("alice");
    assert_eq!(sb.status("alice")["state"], "pending");

    let r = sb.login("alice", &[PW, &totp(&secret, 0), ""]);
    r.assert_success();
    assert_eq!(r.count(SAVED_PROMPT), 1, "{r}");

    let st = sb.status("alice");
    assert_eq!(st["state"], "active", "status after first login: {st}");
    let left = st["backup_codes_left"].as_u64().expect("backup_codes_left");
    assert_eq!(left, 10, "default [backup_codes] count: {st}");

    // The codes are shown before the final prompt (sshd drops TEXT_INFO
    // sent after the last prompt), and one of them logs in.
    let before_prompt = &r.output[..r.output.find(SAVED_PROMPT).unwrap()];
    let shown = backup_code_candidates(before_prompt);
    assert!(
        shown.len() >= left as usize,
        "expected {left} backup codes before {SAVED_PROMPT:?}, found {shown:?} in:\n{r}"
    );
    let r2 = sb.login("alice", &[PW, &shown[0]]);
    r2.assert_success();
    assert_eq!(sb.status("alice")["backup_codes_left"], left - 1);
}

/// Lines of the transcript that look like a backup code: one token of at
/// least 6 letters, digits and dashes, with a digit or a dash (the module
/// prints one code a line).
fn backup_code_candidates(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let tok = line.trim();
        if tok.len() >= 6
            && tok.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && tok.chars().any(|c| c.is_ascii_digit() || c == '-')
            && !out.iter().any(|o| o == tok)
        {
            out.push(tok.to_string());
        }
    }
    out
}

#[test]
fn unknown_module_argument_is_ignored() {
    let sb = Sandbox::new();
    sb.set_stack(&[
        sb.matrix_line(),
        sb.module_line("required", "no_such_option=1 frobnicate"),
    ]);
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");

    let r = sb.login("alice", &[PW, &totp(&e.secret, 0)]);
    r.assert_success();
    assert!(
        !r.debug_lines_with(&["no_such_option"]).is_empty(),
        "unknown arguments are logged:\n{r}"
    );
}

#[test]
fn enroll_with_a_wrong_code_still_prints_the_pending_enrolment() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let out = sb.admin(&["--json", "enroll", "alice", "--no-qr", "--code", "000000"]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["state"], "pending", "{v}");
    let secret = v["secret"].as_str().expect("secret").to_string();
    // The printed secret is the one in force: its code activates it.
    sb.admin_ok(&["confirm", "alice", &totp(&secret, 0)]);
    assert_eq!(sb.status("alice")["state"], "active");
}

#[test]
fn enroll_with_the_apps_code_activates_the_pending_enrolment_it_printed() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    // Printed (no terminal): pending.
    let first = sb.admin_json(&["enroll", "alice", "--no-qr"]);
    assert_eq!(first["state"], "pending", "{first}");
    let secret = first["secret"].as_str().expect("secret").to_string();
    // The user scanned it; the code their app shows activates that secret,
    // not a new one.
    let out = sb.admin(&["--json", "enroll", "alice", "--code", &totp(&secret, 0)]);
    assert_eq!(out.status.code(), Some(0), "{}", show_output(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["state"], "active", "{v}");
    assert_eq!(v["secret"], first["secret"], "{v}");
    assert_eq!(v["otpauth_uri"], first["otpauth_uri"], "{v}");
    assert_eq!(v["backup_codes"].as_array().map(Vec::len), Some(10), "{v}");
    assert_eq!(sb.status("alice")["state"], "active");
    sb.login("alice", &[PW, &totp(&secret, 1)]).assert_success();
    // An active factor is not confirmed again: a code replaces it only
    // as a new enrolment, which asks first.
    let out = sb.admin(&["enroll", "alice", "--code", &totp(&secret, 1)]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    assert_eq!(sb.status("alice")["state"], "active");
}

#[test]
fn disable_keeps_the_factor_and_enable_restores_it() {
    let sb = Sandbox::with_config("[policy]\nenforce = \"all\"\n");
    sb.add_user("alice", PW);
    sb.add_user("root", PW);
    let e = sb.enroll_active("alice");
    // Required by the policy: refused without --override-policy.
    let out = sb.admin(&["disable", "alice", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    // Protected users never.
    sb.enroll_active("root");
    let out = sb.admin(&["disable", "root", "--override-policy", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));

    sb.admin_ok(&["disable", "alice", "--override-policy", "--yes"]);
    assert_eq!(sb.status("alice")["state"], "disabled");
    let r = sb.login("alice", &[PW]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 0, "disabled: no code asked: {r}");

    sb.admin_ok(&["enable", "alice"]);
    assert_eq!(sb.status("alice")["state"], "active");
    let r = sb.login("alice", &[PW, &totp(&e.secret, 0)]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 1, "{r}");
}
