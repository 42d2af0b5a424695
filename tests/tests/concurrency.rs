//! Concurrent logins: one pamtester process per login, as under sshd, all
//! started first and released together once each one waits at the password
//! prompt.

use std::thread;

use crm2fa_tests::*;

const PW: &str = "correct horse";
/// No lockout in the way of the exactly-once tests.
const NO_LOCKOUT: &str = "[policy]\nenforce = \"opt-in\"\n[lockout]\nmax_failures = 1000\n";

fn answers(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Every failed login failed because its code was refused, not because of a
/// store error (busy database, …) or a crash.
#[track_caller]
fn assert_failures_are_refused_codes(results: &[LoginResult]) {
    for r in results.iter().filter(|r| !r.success) {
        r.assert_denied();
        assert!(
            r.invalid_code_messages() >= 1,
            "a concurrent login failed for another reason than a refused code:\n{r}"
        );
    }
}

#[test]
fn twenty_parallel_logins_with_the_same_code_exactly_one_succeeds() {
    let sb = Sandbox::with_config(NO_LOCKOUT);
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let code = totp(&e.secret, 0);

    let logins: Vec<(&str, Vec<String>)> =
        (0..20).map(|_| ("alice", answers(&[PW, &code]))).collect();
    let results = sb.login_all_at_once(&logins);

    assert_eq!(successes(&results), 1, "{}", transcripts(&results));
    assert_failures_are_refused_codes(&results);
}

#[test]
fn ten_users_logging_in_in_parallel_all_succeed() {
    let sb = Sandbox::new();
    let users: Vec<String> = (0..10).map(|i| format!("user{i}")).collect();
    for u in &users {
        sb.add_user(u, PW);
    }
    let enrolled: Vec<Enrolled> = thread::scope(|s| {
        let handles: Vec<_> = users
            .iter()
            .map(|u| {
                let sb = &sb;
                s.spawn(move || sb.enroll_active(u))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let logins: Vec<(&str, Vec<String>)> = enrolled
        .iter()
        .map(|e| (e.user.as_str(), answers(&[PW, &totp(&e.secret, 0)])))
        .collect();
    let results = sb.login_all_at_once(&logins);

    assert_eq!(successes(&results), 10, "{}", transcripts(&results));
}

#[test]
fn twenty_parallel_logins_with_one_backup_code_exactly_one_succeeds() {
    let sb = Sandbox::with_config(NO_LOCKOUT);
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let code = e.backup_codes[0].clone();
    let before = sb.status("alice")["backup_codes_left"].as_u64().unwrap();

    let logins: Vec<(&str, Vec<String>)> =
        (0..20).map(|_| ("alice", answers(&[PW, &code]))).collect();
    let results = sb.login_all_at_once(&logins);

    assert_eq!(successes(&results), 1, "{}", transcripts(&results));
    assert_failures_are_refused_codes(&results);
    assert_eq!(
        sb.status("alice")["backup_codes_left"].as_u64().unwrap(),
        before - 1
    );
}

#[test]
fn ten_parallel_logins_with_one_recovery_code_exactly_one_succeeds() {
    let sb = Sandbox::with_config(NO_LOCKOUT);
    sb.add_user("alice", PW);
    sb.enroll_active("alice");
    let v = sb.admin_json(&["recovery", "alice", "--valid", "1h"]);
    let code = v["code"].as_str().expect("recovery JSON code").to_string();

    let logins: Vec<(&str, Vec<String>)> =
        (0..10).map(|_| ("alice", answers(&[PW, &code]))).collect();
    let results = sb.login_all_at_once(&logins);

    assert_eq!(successes(&results), 1, "{}", transcripts(&results));
    assert_failures_are_refused_codes(&results);
}

#[test]
fn parallel_wrong_guesses_never_check_more_than_max_failures_codes() {
    let sb = Sandbox::with_config("[policy]\nenforce = \"opt-in\"\n[lockout]\nmax_failures = 5\n");
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    let wrong = wrong_codes(&e.secret, 30);

    // 10 logins x 3 guesses = 30 wrong codes offered at once.
    let logins: Vec<(&str, Vec<String>)> = wrong
        .chunks(3)
        .map(|c| ("alice", answers(&[PW, &c[0], &c[1], &c[2]])))
        .collect();
    let results = sb.login_all_at_once(&logins);

    for r in &results {
        r.assert_denied();
    }
    let checked: usize = results.iter().map(LoginResult::invalid_code_messages).sum();
    assert!(
        checked <= 5,
        "{checked} wrong codes were checked, max_failures is 5:\n{}",
        transcripts(&results)
    );
    assert!(
        results
            .iter()
            .any(|r| r.pam_result() == PamResult::MaxTries),
        "no login was told the account is locked:\n{}",
        transcripts(&results)
    );
    let st = sb.status("alice");
    assert_eq!(st["locked"], true, "{st}");
    // Locked: even the right code is refused now.
    let r = sb.login("alice", &[PW, &totp(&e.secret, 0)]);
    assert_eq!(r.pam_result(), PamResult::MaxTries, "{r}");
}
