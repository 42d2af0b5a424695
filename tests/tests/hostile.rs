//! Hostile answers at the code prompt, through real libpam: a 10 kB line,
//! invalid UTF-8, only whitespace. pamtester answers with libpam_misc's
//! `misc_conv`, which reads a line from a pipe byte by byte, a bounded
//! number of bytes per answer (4095 with libpam 1.5: a longer line becomes
//! several answers), and cannot carry a NUL byte; the module reads each
//! answer as lossy UTF-8.
//! Everything is refused cleanly (no crash, `Invalid verification code.`,
//! counted toward the lockout unless blank) and the right code still works.

use std::ffi::OsString;
use std::time::Duration;

use crm2fa_tests::*;

const PW: &str = "correct horse";

fn locked(sb: &Sandbox, user: &str) -> bool {
    let st = sb.status(user);
    st["locked"]
        .as_bool()
        .unwrap_or_else(|| panic!("status has no boolean locked: {st}"))
}

/// `bytes` as a line for [`raw_bytes`]: ASCII as is, every other byte (and
/// the backslash) as a `\0NNN` octal escape.
fn escaped(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii() && b != b'\\' && b != 0 && b != b'\n' {
                (b as char).to_string()
            } else {
                format!("\\0{b:03o}")
            }
        })
        .collect()
}

/// Every byte of `bytes` as a `\0NNN` octal escape, for [`raw_bytes`].
fn octal(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\0{b:03o}")).collect()
}

/// Runs pamtester behind a shell loop that turns each line's octal escapes
/// back into raw bytes (the harness writes answers as text).
fn raw_bytes() -> LoginOptions {
    LoginOptions {
        wrapper: [
            "sh",
            "-c",
            "while IFS= read -r l; do printf '%b\\n' \"$l\"; done | \"$@\"",
            "sh",
        ]
        .iter()
        .map(OsString::from)
        .collect(),
        ..LoginOptions::default()
    }
}

#[test]
fn a_10_kb_answer_is_refused_counted_and_locks_like_wrong_codes() {
    let sections =
        format!("{OPT_IN}prompts = 3\n[lockout]\nmax_failures = 3\nlock_seconds = 600\n");
    let (sb, e) = Sandbox::with_active_user(&sections, "alice", PW);
    let long = "9".repeat(10_240);
    let r = sb.login("alice", &[PW, &long]);
    r.assert_denied();
    // misc_conv hands the line over in pieces: each is a guess.
    assert_eq!(r.prompts_seen, 3, "{r}");
    assert_eq!(r.invalid_code_messages(), 3, "{r}");
    assert_eq!(r.pam_result(), PamResult::MaxTries, "{r}");
    assert!(locked(&sb, "alice"), "three refused guesses lock");
    sb.admin_ok(&["unlock", "alice"]);
    wait_for_step_margin(Duration::from_secs(5));
    sb.login("alice", &[PW, &totp(&e.secret, 0)])
        .assert_success();
}

#[test]
fn invalid_utf8_answers_are_refused_and_the_right_code_still_works() {
    let sections = format!("{OPT_IN}prompts = 3\n[lockout]\nmax_failures = 10\n");
    let (sb, e) = Sandbox::with_active_user(&sections, "bob", PW);
    wait_for_step_margin(Duration::from_secs(10));
    let good = totp(&e.secret, 0);
    let (head, tail) = good.split_at(3);
    let mut around = b"\xff\xfe".to_vec();
    around.extend_from_slice(good.as_bytes());
    around.push(0xc3);
    let mut inside = head.as_bytes().to_vec();
    inside.push(0x80);
    inside.extend_from_slice(tail.as_bytes());
    let answers = [
        escaped(PW.as_bytes()),
        escaped(&around),
        escaped(&inside),
        escaped(&[0xff; 6]),
    ];
    let answers: Vec<&str> = answers.iter().map(String::as_str).collect();
    let r = sb.login_opts("bob", &answers, &raw_bytes());
    r.assert_denied();
    assert_eq!(r.pam_result(), PamResult::AuthErr, "{r}");
    assert_eq!(r.prompts_seen, 3, "{r}");
    assert_eq!(r.invalid_code_messages(), 3, "{r}");
    assert!(!locked(&sb, "bob"));
    // Nothing was consumed: the same code logs in, through the same
    // escapes (which shows they reach the module as bytes).
    sb.login_opts("bob", &[PW, &octal(good.as_bytes())], &raw_bytes())
        .assert_success();
}

#[test]
fn a_long_line_of_invalid_utf8_is_refused() {
    let (sb, e) = Sandbox::with_active_user(OPT_IN, "carol", PW);
    // 10 kB of bytes that are no UTF-8: U+FFFD, three pieces, three guesses.
    let long = escaped(&[0xfe; 10_240]);
    let r = sb.login_opts("carol", &[PW, &long], &raw_bytes());
    r.assert_denied();
    assert_eq!(r.pam_result(), PamResult::AuthErr, "{r}");
    assert_eq!(r.prompts_seen, 3, "{r}");
    assert_eq!(r.invalid_code_messages(), 3, "{r}");
    wait_for_step_margin(Duration::from_secs(5));
    sb.login("carol", &[PW, &totp(&e.secret, 0)])
        .assert_success();
}

#[test]
fn answers_of_only_whitespace_are_not_guesses() {
    let sections = format!("{OPT_IN}prompts = 3\n[lockout]\nmax_failures = 1\n");
    let (sb, e) = Sandbox::with_active_user(&sections, "dave", PW);
    let r = sb.login("dave", &[PW, "   ", "\t \t", " "]);
    r.assert_denied();
    assert_eq!(r.prompts_seen, 3, "{r}");
    assert_eq!(r.invalid_code_messages(), 0, "{r}");
    assert!(!locked(&sb, "dave"), "blank answers are not counted");
    wait_for_step_margin(Duration::from_secs(5));
    sb.login("dave", &[PW, &totp(&e.secret, 0)])
        .assert_success();
}
