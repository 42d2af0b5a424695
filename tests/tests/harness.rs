//! Self-tests of the harness with stock modules only (no crm2fa artifacts):
//! pam_wrapper service files, pam_matrix passwords, answers on stdin,
//! nss_wrapper users and groups, parallel release, oathtool codes.

use std::time::Duration;

use crm2fa_tests::*;

fn stack(sb: &Sandbox, second: &str) {
    sb.set_stack(&[
        sb.matrix_line(),
        second.to_string(),
        "account required pam_permit.so".to_string(),
    ]);
}

#[test]
fn pam_matrix_password_decides_and_second_module_result_is_reported() {
    let sb = Sandbox::bare();
    sb.add_user("alice", "pw");
    stack(&sb, "auth required pam_permit.so");
    let r = sb.login("alice", &["pw"]);
    r.assert_success();
    assert_eq!(r.count(PASSWORD_PROMPT), 1, "{r}");
    assert_eq!(r.prompts_seen, 0);

    sb.login("alice", &["nope"]).assert_denied();
    assert_eq!(
        sb.login("alice", &["nope"]).pam_result(),
        PamResult::AuthErr
    );

    stack(&sb, "auth required pam_debug.so auth=authinfo_unavail");
    let r = sb.login("alice", &["pw"]);
    r.assert_denied();
    assert_eq!(r.pam_result(), PamResult::AuthinfoUnavail, "{r}");

    stack(&sb, "auth required pam_debug.so auth=maxtries");
    assert_eq!(sb.login("alice", &["pw"]).pam_result(), PamResult::MaxTries);
}

#[test]
fn nss_wrapper_users_and_groups_are_visible_to_modules() {
    let sb = Sandbox::bare();
    sb.add_user_in_groups("member", "pw", &["twofa"]);
    sb.add_user("outsider", "pw");
    stack(&sb, "auth required pam_succeed_if.so user ingroup twofa");
    sb.login("member", &["pw"]).assert_success();
    sb.login("outsider", &["pw"]).assert_denied();
}

#[test]
fn parallel_logins_are_released_together() {
    let sb = Sandbox::bare();
    for i in 0..10 {
        sb.add_user(&format!("u{i}"), "pw");
    }
    stack(&sb, "auth required pam_permit.so");
    let logins: Vec<(String, Vec<String>)> = (0..10)
        .map(|i| {
            let pw = if i % 2 == 0 { "pw" } else { "wrong" };
            (format!("u{i}"), vec![pw.to_string()])
        })
        .collect();
    let logins: Vec<(&str, Vec<String>)> = logins
        .iter()
        .map(|(u, a)| (u.as_str(), a.clone()))
        .collect();
    let results = sb.login_all_at_once(&logins);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.user, format!("u{i}"));
        assert_eq!(r.success, i % 2 == 0, "{r}");
    }
}

#[test]
fn oathtool_codes_follow_steps_and_wrong_codes_are_wrong() {
    // RFC 6238 secret "12345678901234567890" in base32.
    let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    // RFC 6238 test vector: T = 59 s -> step 1 -> 287082 (6 digits).
    assert_eq!(totp_at_step(secret, 1), "287082");
    let step = wait_for_step_margin(Duration::from_secs(2));
    assert_eq!(totp(secret, 0), totp_at_step(secret, step));
    assert_eq!(totp(secret, -1), totp_at_step(secret, step - 1));
    let wrong = wrong_codes(secret, 5);
    assert_eq!(wrong.len(), 5);
    for off in -10..=10 {
        assert!(!wrong.contains(&totp(secret, off)));
    }
}
