//! Hostile answers at the code prompt, through the whole login
//! (`auth::authenticate` on a real SQLite store, with a scripted
//! conversation): 10 kB answers, NUL bytes, the U+FFFD characters the
//! module makes of invalid UTF-8, only whitespace, a right code with junk
//! around or inside it. Each is refused with "Invalid verification code."
//! and counted toward the lockout, or, when it holds nothing but
//! whitespace and dashes, not counted at all ("an empty answer is not a
//! guess"); nothing panics, nothing is consumed, and the right code still
//! works afterwards.

use super::*;
use crate::audit::AuditFilter;

/// `env`, with few backup codes: each is an argon2 hash at enrolment.
fn env_with(sections: &str) -> Env {
    env(&format!("{sections}[backup_codes]\ncount = 3\n"))
}

/// One login at `now` answering `answers`; a login that fails on an error
/// (rather than deciding) fails the test.
fn login_answering<S: AsRef<str>>(
    e: &mut Env,
    user: &str,
    now: i64,
    answers: &[S],
) -> (Outcome, Script) {
    let mut script = Script::answering(answers);
    let out = authenticate(
        &e.cfg,
        e.store.as_mut(),
        &mut e.sender,
        QrStyle::None,
        &req(user, now),
        &mut script,
        &mut e.log,
    )
    .unwrap_or_else(|f| panic!("login of {user} failed on an error: {f:?}"));
    (out, script)
}

fn failures(e: &mut Env, user: &str) -> u32 {
    e.store.user(user).unwrap().unwrap().lock.failures
}

fn backup_codes_left(e: &mut Env, user: &str) -> u32 {
    e.store.user(user).unwrap().unwrap().unused_backup_codes
}

/// An active user: enrolled, and activated by a login five minutes ago.
/// Their secret and backup codes (as shown: groups of four with dashes).
fn active_user(e: &mut Env, user: &str) -> (Secret, Vec<String>) {
    let secret = enrolled(e, user);
    let then = NOW - 300;
    let first = code(e, &secret, then);
    let (out, sc) = login_answering(e, user, then, &[first.as_str(), ""]);
    assert_eq!(out, Outcome::Success, "{sc:?}");
    assert_eq!(sc.prompts, vec![PROMPT, SAVED_PROMPT]);
    let codes: Vec<String> = sc.infos[0]
        .lines()
        .filter(|l| l.starts_with("    "))
        .map(|l| l.trim().to_string())
        .collect();
    assert!(!codes.is_empty(), "no backup codes shown: {:?}", sc.infos);
    assert_eq!(failures(e, user), 0);
    (secret, codes)
}

/// Answers that are guesses, and wrong: each must be refused and counted.
/// `good` is the user's right TOTP code now, `backup` an unused backup code.
fn hostile_guesses(good: &str, backup: &str) -> Vec<(&'static str, String)> {
    let (head, tail) = good.split_at(3);
    let (b_head, b_tail) = backup.split_at(4);
    let lossy = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let mut invalid_utf8 = b"\xff\xfe".to_vec();
    invalid_utf8.extend_from_slice(good.as_bytes());
    invalid_utf8.extend_from_slice(b"\xc3");
    let fullwidth: String = good
        .chars()
        .map(|c| char::from_u32(0xff10 + c.to_digit(10).unwrap()).unwrap())
        .collect();
    let arabic_indic: String = good
        .chars()
        .map(|c| char::from_u32(0x0660 + c.to_digit(10).unwrap()).unwrap())
        .collect();
    let every_char: String = (0u32..10_240)
        .filter_map(|i| char::from_u32(i.wrapping_mul(2_654_435_761) % 0x11_0000))
        .collect();
    vec![
        ("10 kB of digits", "7".repeat(10_240)),
        (
            "10 kB: the right code over and over",
            good.repeat(10_240 / good.len() + 1),
        ),
        ("10 kB of characters from all over Unicode", every_char),
        ("10 kB of NUL bytes", "\0".repeat(10_240)),
        ("10 kB of U+FFFD", "\u{fffd}".repeat(10_240)),
        ("one NUL byte", "\0".into()),
        ("as many NUL bytes as digits", "\0".repeat(good.len())),
        (
            "the right code with a NUL in the middle",
            format!("{head}\0{tail}"),
        ),
        ("the right code, then a NUL", format!("{good}\0")),
        ("a NUL, then the right code", format!("\0{good}")),
        ("U+FFFD replacement characters", "\u{fffd}".repeat(6)),
        (
            "U+FFFD around the right code (invalid UTF-8)",
            lossy(&invalid_utf8),
        ),
        (
            "the right code with U+FFFD in the middle",
            format!("{head}\u{fffd}{tail}"),
        ),
        ("the right code followed by junk", format!("{good}junk")),
        ("the right code followed by a digit", format!("{good}0")),
        ("the right code twice", format!("{good}{good}")),
        ("the right code and a command", format!("{good}; rm -rf /")),
        ("the right code, a newline and junk", format!("{good}\nx")),
        (
            "the right code with a zero-width space",
            format!("{head}\u{200b}{tail}"),
        ),
        ("the right code in full-width digits", fullwidth),
        ("the right code in Arabic-Indic digits", arabic_indic),
        ("a backup code followed by junk", format!("{backup}!")),
        ("a backup code, then a NUL", format!("{backup}\0")),
        (
            "a backup code with U+FFFD in the middle",
            format!("{b_head}\u{fffd}{b_tail}"),
        ),
        ("a backup code and another character", format!("{backup}a")),
        ("the word email with a NUL", "email\0".into()),
    ]
}

/// Answers with nothing in them but whitespace and dashes: not guesses.
fn blank_answers() -> Vec<(&'static str, String)> {
    vec![
        ("nothing", String::new()),
        ("a space", " ".into()),
        ("tabs and newlines", "\t\n\r\n\t".into()),
        (
            "Unicode spaces",
            "\u{a0}\u{2003}\u{3000}\u{85}\u{2028}".into(),
        ),
        ("10 kB of spaces", " ".repeat(10_240)),
        ("dashes and spaces", " - -- ".into()),
    ]
}

#[test]
fn hostile_answers_are_refused_counted_and_leave_the_right_code_working() {
    let mut e =
        env_with("[policy]\nenforce = \"all\"\nprompts = 1\n[lockout]\nmax_failures = 100\n");
    let (secret, backups) = active_user(&mut e, "alice");
    let good = code(&e, &secret, NOW);
    let left = backup_codes_left(&mut e, "alice");
    let mut counted = 0;
    for (what, answer) in hostile_guesses(&good, &backups[0]) {
        let (out, sc) = login_answering(&mut e, "alice", NOW, &[&answer]);
        assert_eq!(out, Outcome::AuthErr, "{what}");
        assert_eq!(sc.prompts, vec![PROMPT], "{what}");
        assert_eq!(sc.errors, vec![INVALID], "{what}");
        assert!(sc.infos.is_empty(), "{what}: {:?}", sc.infos);
        counted += 1;
        assert_eq!(
            failures(&mut e, "alice"),
            counted,
            "{what}: counted toward the lockout"
        );
    }
    // Nothing was consumed: neither the TOTP step nor the backup code.
    assert_eq!(backup_codes_left(&mut e, "alice"), left);
    let (out, sc) = login_answering(&mut e, "alice", NOW, &[&good]);
    assert_eq!(out, Outcome::Success, "{sc:?}");
    assert_eq!(failures(&mut e, "alice"), 0, "a success clears the count");
    let (out, sc) = login_answering(&mut e, "alice", NOW, &[&backups[0]]);
    assert_eq!(out, Outcome::Success, "{sc:?}");
    assert_eq!(backup_codes_left(&mut e, "alice"), left - 1);
}

#[test]
fn answers_of_only_whitespace_are_not_guesses() {
    let mut e = env_with("[policy]\nenforce = \"all\"\nprompts = 1\n[lockout]\nmax_failures = 2\n");
    let (secret, _) = active_user(&mut e, "bob");
    for (what, answer) in blank_answers() {
        let (out, sc) = login_answering(&mut e, "bob", NOW, &[&answer]);
        assert_eq!(out, Outcome::AuthErr, "{what}");
        assert_eq!(sc.prompts, vec![PROMPT], "{what}");
        assert!(sc.errors.is_empty(), "{what}: {:?}", sc.errors);
        assert_eq!(failures(&mut e, "bob"), 0, "{what}: not counted");
    }
    let audit = e
        .store
        .audit(&AuditFilter {
            user: Some("bob".into()),
            since: Some(NOW),
        })
        .unwrap();
    let no_code = audit
        .iter()
        .filter(|a| a.detail == "no code entered")
        .count();
    assert_eq!(no_code, blank_answers().len(), "{audit:#?}");
    let good = code(&e, &secret, NOW);
    let (out, sc) = login_answering(&mut e, "bob", NOW, &[good]);
    assert_eq!(out, Outcome::Success, "{sc:?}");
}

#[test]
fn hostile_and_blank_answers_in_one_login_then_the_right_code() {
    let mut e = env_with("[policy]\nenforce = \"all\"\nprompts = 4\n");
    let (secret, _) = active_user(&mut e, "carol");
    let good = code(&e, &secret, NOW);
    let answers = [
        "\0".repeat(10_240),
        " \t ".to_string(),
        format!("{}\u{fffd}{}", &good[..2], &good[2..]),
        format!(" {good} "),
    ];
    let (out, sc) = login_answering(&mut e, "carol", NOW, &answers);
    assert_eq!(out, Outcome::Success, "{sc:?}");
    assert_eq!(sc.prompts, vec![PROMPT; 4]);
    assert_eq!(sc.errors, vec![INVALID; 2], "the blank answer is no guess");
    assert_eq!(failures(&mut e, "carol"), 0);
}

#[test]
fn hostile_answers_lock_the_account_like_wrong_codes() {
    let mut e = env_with(
        "[policy]\nenforce = \"all\"\nprompts = 3\n\
         [lockout]\nmax_failures = 3\nlock_seconds = 60\n",
    );
    let (secret, _) = active_user(&mut e, "dave");
    let good = code(&e, &secret, NOW);
    let answers = [
        "9".repeat(10_240),
        format!("{}\0{}", &good[..3], &good[3..]),
        format!("{good}junk"),
    ];
    let (out, sc) = login_answering(&mut e, "dave", NOW, &answers);
    assert_eq!(out, Outcome::MaxTries, "{sc:?}");
    assert_eq!(&sc.errors[..3], &[INVALID; 3]);
    assert!(sc.errors[3].contains("locked"), "{:?}", sc.errors);
    // Locked: the right code is not even asked for.
    let (out, sc) = login_answering(&mut e, "dave", NOW + 1, &[&good]);
    assert_eq!(out, Outcome::MaxTries);
    assert!(sc.prompts.is_empty(), "{sc:?}");
    // Once the lock is over, the right code of that time works.
    let later = NOW + 61;
    let good_later = code(&e, &secret, later);
    let (out, sc) = login_answering(&mut e, "dave", later, &[good_later]);
    assert_eq!(out, Outcome::Success, "{sc:?}");
    assert_eq!(failures(&mut e, "dave"), 0);
}

#[test]
fn hostile_answers_to_a_pending_enrolment_leave_it_pending_until_the_right_code() {
    let mut e = env_with("[policy]\nenforce = \"all\"\nprompts = 3\n");
    let secret = enrolled(&mut e, "erin");
    let good = code(&e, &secret, NOW);
    let answers = [format!("\0{good}"), format!("{good}\u{fffd}"), good.clone()];
    let (out, sc) = login_answering(&mut e, "erin", NOW, &answers[..2]);
    assert_eq!(out, Outcome::AuthErr, "{sc:?}");
    assert_eq!(sc.errors, vec![INVALID; 2]);
    let record = e.store.user("erin").unwrap().unwrap();
    assert_eq!(record.state, TotpState::Pending);
    assert_eq!(record.lock.failures, 2);
    let (out, sc) = login_answering(&mut e, "erin", NOW, &[answers[2].as_str(), ""]);
    assert_eq!(out, Outcome::Success, "{sc:?}");
    assert_eq!(sc.prompts, vec![PROMPT, SAVED_PROMPT]);
    assert_eq!(
        e.store.user("erin").unwrap().unwrap().state,
        TotpState::Active
    );
}

#[test]
fn a_recovery_code_with_junk_is_refused_and_stays_usable() {
    let mut e = env_with("[policy]\nenforce = \"all\"\nprompts = 1\n");
    let (_, _) = active_user(&mut e, "fred");
    let (recovery, _) = Ops {
        cfg: &e.cfg,
        store: e.store.as_mut(),
        log: &mut e.log,
        ctx: AuditCtx::default(),
    }
    .issue_recovery("fred", 3600, NOW - 10)
    .expect("recovery code");
    let shown = recovery.display().to_string();
    for junk in [
        format!("{shown}\0"),
        format!("{}\u{fffd}{}", &shown[..5], &shown[5..]),
        format!("{shown}x"),
    ] {
        let (out, sc) = login_answering(&mut e, "fred", NOW, &[&junk]);
        assert_eq!(out, Outcome::AuthErr, "{junk:?}");
        assert_eq!(sc.errors, vec![INVALID], "{junk:?}");
    }
    let (out, sc) = login_answering(&mut e, "fred", NOW, &[&shown]);
    assert_eq!(out, Outcome::Success, "{sc:?}");
}

#[test]
fn no_hostile_answer_reaches_the_audit_log() {
    let mut e =
        env_with("[policy]\nenforce = \"all\"\nprompts = 1\n[lockout]\nmax_failures = 100\n");
    let (secret, backups) = active_user(&mut e, "gina");
    let good = code(&e, &secret, NOW);
    let guesses = hostile_guesses(&good, &backups[1]);
    for (_, answer) in &guesses {
        login_answering(&mut e, "gina", NOW, &[answer]);
    }
    let audit = e
        .store
        .audit(&AuditFilter {
            user: Some("gina".into()),
            since: Some(NOW),
        })
        .unwrap();
    assert_eq!(audit.len(), guesses.len(), "one row per refused login");
    for a in &audit {
        assert!(!a.detail.contains(&good), "{a:?}");
        assert!(!a.detail.contains('\0'), "{a:?}");
        assert!(a.detail.len() < 200, "{a:?}");
    }
}
