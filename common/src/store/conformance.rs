//! The conformance suite: what every store backend must do, written once
//! against the [`Store`] contract, races included.
//!
//! A backend's tests provide a [`Backend`] (a new, empty store per test,
//! opened as often as a test needs, as separate processes and hosts would)
//! and expand [`store_conformance!`](crate::store_conformance) in a module
//! named `conformance`, which makes one `#[test]` per check:
//!
//! ```ignore
//! mod conformance {
//!     crm2fa_common::store_conformance!(MyBackend::new());
//! }
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{Attempt, Durability, Found, Imported, Read, SendGrant, SendLimit, Store};
use crate::audit::{AuditCtx, AuditEntry, AuditFilter, Event, Fact, Outcome};
use crate::codes::{self, Code};
use crate::config::LockoutConfig;
use crate::delivery::{self, Channel};
use crate::error::Error;
use crate::model::{
    Candidate, CodeKind, Factor, LockState, NewEnrollment, Origin, SeenFactors, Snapshot,
    TotpMatch, TotpState, UserRecord, UserRow, Verdict,
};

/// A store backend under test.
pub trait Backend: Sync {
    /// A new connection to this test's store.
    fn open(&self) -> Box<dyn Store>;
}

/// One `#[test]` per conformance check, each on a store made by `$backend`
/// (an expression evaluated afresh in every test).
#[macro_export]
macro_rules! store_conformance {
    ($backend:expr) => {
        $crate::store_conformance!(@each $backend;
            enrolment_without_replace_never_overwrites_a_factor,
            code_of_a_replaced_secret_is_refused,
            first_totp_code_activates_a_pending_enrolment_and_hands_over_its_codes,
            confirm_activates_once_and_counts_nothing,
            totp_step_is_consumed_once_and_older_steps_are_refused,
            backup_code_is_accepted_once_and_regeneration_voids_the_old_set,
            pending_enrolment_backup_codes_are_unusable,
            recovery_code_works_once_and_not_after_expiry,
            new_recovery_code_replaces_the_unused_one_and_clears_a_lock,
            attempt_is_counted_before_it_is_checked,
            a_step_typed_twice_is_refused_as_already_used,
            lock_refuses_without_checking_and_unlock_clears_it,
            count_starts_over_after_a_lock_expires,
            locks_escalate_until_a_success_or_unlock,
            enrolment_keeps_who_made_it,
            disable_exempts_any_user_and_enable_takes_it_back,
            reset_removes_every_factor_and_code,
            unknown_user_is_reported_and_nothing_is_written,
            audit_rows_are_kept_in_order_and_filtered,
            failed_transaction_leaves_nothing_behind,
            a_failed_statement_fails_the_whole_transaction,
            users_are_listed_by_name,
            an_import_is_active_with_its_history_all_or_none,
            a_replacement_goes_ahead_only_over_the_factors_seen,
            a_host_is_remembered_on_success_and_forgotten_on_a_lock_reset_or_disable,
            a_new_factor_forgets_the_hosts_and_sent_codes_of_the_old,
            the_code_salt_never_changes_and_a_stale_one_is_refused,
            confirm_never_reactivates_an_active_enrolment,
            a_code_row_is_consumed_once,
            an_attempt_decided_from_a_stale_row_is_not_written,
            parallel_wrong_guesses_never_exceed_max_failures,
            parallel_logins_with_one_totp_step_exactly_one_succeeds,
            an_attempt_from_a_row_seen_before_is_made_as_from_the_row,
            parallel_logins_that_saw_the_row_count_and_consume_once,
            parallel_logins_with_one_backup_code_exactly_one_succeeds,
            parallel_logins_with_one_recovery_code_exactly_one_succeeds,
            parallel_enrolments_keep_one_factor,
            a_sent_code_works_once_and_not_after_expiry,
            last_reads_answer_as_each_read_does,
            a_read_sent_ahead_answers_only_that_read_and_never_hides_a_write,
            one_sent_code_is_outstanding_per_channel,
            the_resend_limit_counts_every_send_in_the_window,
            a_withdrawn_code_neither_works_nor_counts,
            a_withdrawn_code_gives_back_the_one_sent_before,
            a_code_used_before_its_withdrawal_stays_used_and_counted,
            a_withdrawal_takes_back_only_its_own_users_code,
            an_earlier_sent_code_is_void_on_every_clock,
            a_changed_contact_voids_the_codes_sent_to_the_old_one,
            a_changed_contact_does_not_lift_the_resend_limit,
            no_code_is_stored_for_an_address_changed_meanwhile,
            removing_the_contact_of_the_delivery_channel_keeps_a_user_disabled,
            no_code_is_sent_to_a_locked_user,
            contacts_are_kept_and_a_removed_one_ends_its_channel,
            a_delivery_channel_is_a_factor_with_backup_codes,
            a_delivery_channel_over_a_pending_enrolment_leaves_no_stale_codes_to_show,
            an_app_enrolment_replaces_a_delivery_channel_as_the_factor,
            parallel_sends_never_exceed_the_resend_limit,
            parallel_logins_with_one_sent_code_exactly_one_succeeds,
            a_snapshot_holds_every_row_and_loads_only_into_an_empty_store,
            a_load_that_does_not_hold_the_snapshot_writes_nothing,
        );
    };
    (@each $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let backend = $backend;
                $crate::store::conformance::$name(&backend);
            }
        )*
    };
}

const NOW: i64 = 1_800_000_000;
const SEALED: &[u8] = b"sealed secret";

fn ctx() -> AuditCtx {
    AuditCtx {
        host: "host-a".into(),
        service: "conformance".into(),
        rhost: String::new(),
    }
}

fn audit(fact: Fact) -> AuditEntry {
    ctx().entry(NOW, "u", &fact)
}

fn lockout(max: u32) -> LockoutConfig {
    LockoutConfig {
        max_failures: max,
        lock_seconds: 60,
        max_lock_seconds: 240,
    }
}

/// User `u`, enrolled (pending) with `n` backup codes: the salt and the codes.
fn pending_user(s: &mut dyn Store, n: u32) -> (Vec<u8>, Vec<Code>) {
    let salt = codes::new_salt();
    let set = codes::backup_set(n, &salt);
    pending_with(s, &salt, &set);
    (salt, set.into_iter().map(|(c, _)| c).collect())
}

/// Enrol `u` (pending, replacing) with the backup codes `set`, hashed
/// with `salt`.
fn pending_with(s: &mut dyn Store, salt: &[u8], set: &[(Code, [u8; codes::HASH_LEN])]) {
    let hashes: Vec<_> = set.iter().map(|(_, h)| *h).collect();
    let new = NewEnrollment {
        sealed_secret: SEALED,
        code_salt: salt,
        backup_hashes: &hashes,
        sealed_codes: b"sealed codes",
        replace: true,
        seen: None,
        origin: Origin::Admin,
    };
    assert!(s
        .begin_enrollment("u", &new, NOW, &audit(Fact::Enrolled))
        .unwrap());
}

/// The same, activated with step 10.
fn active_user(s: &mut dyn Store, n: u32) -> (Vec<u8>, Vec<Code>) {
    let (salt, set) = pending_user(s, n);
    assert!(s
        .confirm("u", &step(10), NOW, &audit(Fact::Confirmed))
        .unwrap()
        .is_some());
    (salt, set)
}

/// Step `n` of the test user's secret.
fn step(n: i64) -> TotpMatch {
    TotpMatch {
        step: n,
        sealed_secret: SEALED.to_vec(),
    }
}

fn totp(n: i64) -> Candidate {
    Candidate {
        totp: Some(step(n)),
        ..Candidate::default()
    }
}

fn backup(code: &Code, salt: &[u8]) -> Candidate {
    Candidate::code(CodeKind::Backup, code.hash(salt))
}

fn recovery(code: &Code, salt: &[u8]) -> Candidate {
    Candidate::code(CodeKind::Recovery, code.hash(salt))
}

fn redeem(s: &mut dyn Store, c: &Candidate, now: i64, max: u32) -> Verdict {
    s.redeem("u", c, now, &lockout(max), &ctx(), None).unwrap()
}

/// [`redeem`] by a login that read the row as `seen` before its prompt.
fn redeem_as(s: &mut dyn Store, seen: &UserRecord, c: &Candidate, now: i64, max: u32) -> Verdict {
    s.redeem_seen("u", Some(seen), c, now, &lockout(max), &ctx(), None)
        .unwrap()
}

fn accepted(v: &Verdict) -> bool {
    matches!(v, Verdict::Accepted { .. })
}

fn rejected(v: &Verdict) -> bool {
    matches!(v, Verdict::Rejected { .. })
}

/// Run `attempt` on `n` threads, each with its own connection, all
/// released together; the verdicts.
fn in_parallel(
    b: &dyn Backend,
    n: usize,
    attempt: impl Fn(&mut dyn Store) -> Verdict + Sync,
) -> Vec<Verdict> {
    let gate = std::sync::Barrier::new(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(|| {
                    let mut s = b.open();
                    gate.wait();
                    attempt(s.as_mut())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A new enrolment without `replace` never overwrites a factor; a user
/// without one is enrolled.
pub fn enrolment_without_replace_never_overwrites_a_factor(b: &dyn Backend) {
    let mut s = b.open();
    let (salt, _) = active_user(s.as_mut(), 1);
    let new = NewEnrollment {
        sealed_secret: b"other",
        code_salt: &salt,
        backup_hashes: &[],
        sealed_codes: b"",
        replace: false,
        seen: None,
        origin: Origin::Login,
    };
    assert!(!s
        .begin_enrollment("u", &new, NOW, &audit(Fact::Enrolled))
        .unwrap());
    let r = s.user("u").unwrap().unwrap();
    assert_eq!(
        (r.state, r.secret.as_deref()),
        (TotpState::Active, Some(SEALED))
    );
    assert!(s
        .begin_enrollment("v", &new, NOW, &audit(Fact::Enrolled))
        .unwrap());
    assert_eq!(s.user("v").unwrap().unwrap().state, TotpState::Pending);
}

/// A code of a secret that was replaced after it was read is refused.
pub fn code_of_a_replaced_secret_is_refused(b: &dyn Backend) {
    let mut s = b.open();
    let (salt, _) = active_user(s.as_mut(), 1);
    let new = NewEnrollment {
        sealed_secret: b"new sealed",
        code_salt: &salt,
        backup_hashes: &[],
        sealed_codes: b"new codes",
        replace: true,
        seen: None,
        origin: Origin::Admin,
    };
    s.begin_enrollment("u", &new, NOW, &audit(Fact::Enrolled))
        .unwrap();
    assert!(rejected(&redeem(s.as_mut(), &totp(20), NOW, 9)));
    assert!(s
        .confirm("u", &step(21), NOW, &audit(Fact::Confirmed))
        .unwrap()
        .is_none());
    let fresh = TotpMatch {
        step: 20,
        sealed_secret: b"new sealed".to_vec(),
    };
    assert_eq!(
        s.confirm("u", &fresh, NOW, &audit(Fact::Confirmed))
            .unwrap(),
        Some(b"new codes".to_vec())
    );
}

/// The first TOTP code of a pending enrolment activates it and hands over
/// the kept codes, once; they are gone afterwards.
pub fn first_totp_code_activates_a_pending_enrolment_and_hands_over_its_codes(b: &dyn Backend) {
    let mut s = b.open();
    pending_user(s.as_mut(), 2);
    assert_eq!(
        redeem(s.as_mut(), &totp(5), NOW, 9),
        Verdict::Accepted {
            factor: Factor::Totp,
            activated_codes: Some(b"sealed codes".to_vec()),
            backup_codes_left: 2,
        }
    );
    let r = s.user("u").unwrap().unwrap();
    assert_eq!((r.state, r.backup_codes_left()), (TotpState::Active, 2));
    assert_eq!(
        redeem(s.as_mut(), &totp(6), NOW, 9),
        Verdict::Accepted {
            factor: Factor::Totp,
            activated_codes: None,
            backup_codes_left: 2,
        }
    );
}

/// `confirm` activates a pending enrolment once; a wrong or used step and
/// an active user give nothing, and no failure is counted.
pub fn confirm_activates_once_and_counts_nothing(b: &dyn Backend) {
    let mut s = b.open();
    pending_user(s.as_mut(), 1);
    let wrong = TotpMatch {
        step: 3,
        sealed_secret: b"not the secret".to_vec(),
    };
    assert!(s
        .confirm("u", &wrong, NOW, &audit(Fact::Confirmed))
        .unwrap()
        .is_none());
    assert!(s
        .confirm("u", &step(3), NOW, &audit(Fact::Confirmed))
        .unwrap()
        .is_some());
    assert!(s
        .confirm("u", &step(4), NOW, &audit(Fact::Confirmed))
        .unwrap()
        .is_none());
    let r = s.user("u").unwrap().unwrap();
    assert_eq!(
        (r.state, r.lock.failures, r.last_step),
        (TotpState::Active, 0, 3)
    );
}

/// A TOTP step is accepted once; an older step never.
pub fn totp_step_is_consumed_once_and_older_steps_are_refused(b: &dyn Backend) {
    let mut s = b.open();
    active_user(s.as_mut(), 0);
    assert!(accepted(&redeem(s.as_mut(), &totp(12), NOW, 9)));
    assert!(rejected(&redeem(s.as_mut(), &totp(12), NOW, 9)));
    assert!(rejected(&redeem(s.as_mut(), &totp(11), NOW, 9)));
    assert!(accepted(&redeem(s.as_mut(), &totp(13), NOW, 9)));
    assert_eq!(s.user("u").unwrap().unwrap().last_step, 13);
}

/// A backup code works once; a new set voids the old one at once.
pub fn backup_code_is_accepted_once_and_regeneration_voids_the_old_set(b: &dyn Backend) {
    let mut s = b.open();
    let (salt, set) = active_user(s.as_mut(), 3);
    assert_eq!(
        redeem(s.as_mut(), &backup(&set[0], &salt), NOW, 9),
        Verdict::Accepted {
            factor: Factor::Backup,
            activated_codes: None,
            backup_codes_left: 2
        }
    );
    assert_eq!(s.user("u").unwrap().unwrap().backup_codes_left(), 2);
    assert!(!s
        .code_usable(CodeKind::Backup, "u", &set[0].hash(&salt), NOW)
        .unwrap());
    assert!(matches!(
        redeem(s.as_mut(), &backup(&set[0], &salt), NOW, 9),
        Verdict::Rejected { failures: 1, .. }
    ));
    let new = codes::backup_set(2, &salt);
    let hashes: Vec<_> = new.iter().map(|(_, h)| *h).collect();
    assert!(s
        .replace_backup_codes(
            "u",
            &salt,
            &hashes,
            NOW,
            &audit(Fact::BackupCodesRegenerated { count: 2 })
        )
        .unwrap());
    assert!(rejected(&redeem(
        s.as_mut(),
        &backup(&set[1], &salt),
        NOW,
        9
    )));
    assert!(s
        .code_usable(CodeKind::Backup, "u", &new[1].1, NOW)
        .unwrap());
    assert!(accepted(&redeem(
        s.as_mut(),
        &backup(&new[1].0, &salt),
        NOW,
        9
    )));
}

/// Backup codes of a pending enrolment cannot be used, nor replaced.
pub fn pending_enrolment_backup_codes_are_unusable(b: &dyn Backend) {
    let mut s = b.open();
    let (salt, set) = pending_user(s.as_mut(), 1);
    assert!(rejected(&redeem(
        s.as_mut(),
        &backup(&set[0], &salt),
        NOW,
        9
    )));
    assert!(!s
        .code_usable(CodeKind::Backup, "u", &set[0].hash(&salt), NOW)
        .unwrap());
    assert!(!s
        .replace_backup_codes(
            "u",
            &salt,
            &[],
            NOW,
            &audit(Fact::BackupCodesRegenerated { count: 0 })
        )
        .unwrap());
}

/// A recovery code works once, and not from its expiry on.
pub fn recovery_code_works_once_and_not_after_expiry(b: &dyn Backend) {
    let mut s = b.open();
    let salt = codes::new_salt();
    let c = Code::generate(codes::RECOVERY_LEN);
    let issued = audit(Fact::RecoveryIssued { until: NOW + 60 });
    s.add_recovery("u", &salt, &c.hash(&salt), NOW + 60, NOW, &issued)
        .unwrap();
    assert!(s.has_valid_recovery("u", NOW).unwrap());
    assert!(!s.has_valid_recovery("u", NOW + 60).unwrap());
    assert!(rejected(&redeem(
        s.as_mut(),
        &recovery(&c, &salt),
        NOW + 60,
        9
    )));
    assert!(matches!(
        redeem(s.as_mut(), &recovery(&c, &salt), NOW + 59, 9),
        Verdict::Accepted {
            factor: Factor::Recovery,
            ..
        }
    ));
    assert!(rejected(&redeem(
        s.as_mut(),
        &recovery(&c, &salt),
        NOW + 59,
        9
    )));
    assert!(!s.has_valid_recovery("u", NOW).unwrap());
}

/// A new recovery code voids the unused earlier one and clears a lock.
pub fn new_recovery_code_replaces_the_unused_one_and_clears_a_lock(b: &dyn Backend) {
    let mut s = b.open();
    let (salt, _) = active_user(s.as_mut(), 0);
    redeem(s.as_mut(), &Candidate::default(), NOW, 1);
    assert!(s.user("u").unwrap().unwrap().locked_at(NOW).is_some());
    let first = Code::generate(codes::RECOVERY_LEN);
    let second = Code::generate(codes::RECOVERY_LEN);
    for c in [&first, &second] {
        let issued = audit(Fact::RecoveryIssued { until: NOW + 600 });
        s.add_recovery("u", &salt, &c.hash(&salt), NOW + 600, NOW, &issued)
            .unwrap();
    }
    let r = s.user("u").unwrap().unwrap();
    assert_eq!((r.lock.failures, r.locked_at(NOW)), (0, None));
    assert!(rejected(&redeem(
        s.as_mut(),
        &recovery(&first, &salt),
        NOW,
        9
    )));
    assert!(accepted(&redeem(
        s.as_mut(),
        &recovery(&second, &salt),
        NOW,
        9
    )));
}

/// The attempt counts before it is checked; a success clears the count.
pub fn attempt_is_counted_before_it_is_checked(b: &dyn Backend) {
    let mut s = b.open();
    active_user(s.as_mut(), 0);
    for i in 1..=2 {
        assert_eq!(
            redeem(s.as_mut(), &Candidate::default(), NOW, 5),
            Verdict::Rejected {
                failures: i,
                reused: false,
                locked_until: None
            }
        );
        assert_eq!(s.user("u").unwrap().unwrap().lock.failures, i);
    }
    assert!(accepted(&redeem(s.as_mut(), &totp(30), NOW + 5, 5)));
    let r = s.user("u").unwrap().unwrap();
    assert_eq!((r.lock.failures, r.last_success), (0, Some(NOW + 5)));
}

/// A TOTP step typed again is refused and counted as any wrong code, and
/// the verdict and the audit say it was already used.
pub fn a_step_typed_twice_is_refused_as_already_used(b: &dyn Backend) {
    let mut s = b.open();
    active_user(s.as_mut(), 0);
    assert!(accepted(&redeem(s.as_mut(), &totp(30), NOW, 5)));
    for earlier in [30, 29, 10] {
        assert!(
            matches!(
                redeem(s.as_mut(), &totp(earlier), NOW + 1, 5),
                Verdict::Rejected { reused: true, .. }
            ),
            "step {earlier}"
        );
    }
    assert!(matches!(
        redeem(s.as_mut(), &Candidate::default(), NOW + 1, 5),
        Verdict::Rejected {
            reused: false,
            failures: 4,
            ..
        }
    ));
    let details: Vec<String> = s
        .audit(&AuditFilter {
            user: Some("u".into()),
            since: Some(NOW + 1),
        })
        .unwrap()
        .into_iter()
        .map(|e| e.detail)
        .collect();
    assert_eq!(
        details,
        [
            "code already used (1 in a row)",
            "code already used (2 in a row)",
            "code already used (3 in a row)",
            "wrong code (4 in a row)"
        ]
    );
}

/// Reaching `max_failures` locks; a right code is then refused without
/// being consumed; `unlock` clears it.
pub fn lock_refuses_without_checking_and_unlock_clears_it(b: &dyn Backend) {
    let mut s = b.open();
    let (salt, set) = active_user(s.as_mut(), 1);
    for _ in 1..=2 {
        redeem(s.as_mut(), &Candidate::default(), NOW, 3);
    }
    assert_eq!(
        redeem(s.as_mut(), &Candidate::default(), NOW, 3),
        Verdict::Rejected {
            failures: 3,
            reused: false,
            locked_until: Some(NOW + 60)
        }
    );
    assert_eq!(
        redeem(s.as_mut(), &backup(&set[0], &salt), NOW + 1, 3),
        Verdict::Locked { until: NOW + 60 },
        "a right code is refused while locked"
    );
    assert!(s
        .code_usable(CodeKind::Backup, "u", &set[0].hash(&salt), NOW)
        .unwrap());
    assert!(s.unlock("u", NOW + 2, &audit(Fact::Unlocked)).unwrap());
    assert!(!s.unlock("nobody", NOW + 2, &audit(Fact::Unlocked)).unwrap());
    assert!(accepted(&redeem(
        s.as_mut(),
        &backup(&set[0], &salt),
        NOW + 2,
        3
    )));
    assert_eq!(s.user("u").unwrap().unwrap().lock.failures, 0);
}

/// Once a lock has expired, the next wrong code counts from one.
pub fn count_starts_over_after_a_lock_expires(b: &dyn Backend) {
    let mut s = b.open();
    active_user(s.as_mut(), 0);
    redeem(s.as_mut(), &Candidate::default(), NOW, 2);
    redeem(s.as_mut(), &Candidate::default(), NOW, 2);
    assert_eq!(
        redeem(s.as_mut(), &Candidate::default(), NOW + 60, 2),
        Verdict::Rejected {
            failures: 1,
            reused: false,
            locked_until: None
        }
    );
}

/// Each lock without a success in between lasts twice as long as the one
/// before, up to the maximum; a success, `unlock` or a recovery code starts
/// over.
pub fn locks_escalate_until_a_success_or_unlock(b: &dyn Backend) {
    let mut s = b.open();
    let (salt, set) = active_user(s.as_mut(), 2);
    let lock_at = |s: &mut dyn Store, now: i64| match redeem(s, &Candidate::default(), now, 1) {
        Verdict::Rejected {
            locked_until: Some(t),
            ..
        } => t - now,
        v => panic!("expected a lock, got {v:?}"),
    };
    let lengths: Vec<i64> = (1..=4)
        .map(|i| lock_at(s.as_mut(), NOW + i * 1000))
        .collect();
    assert_eq!(lengths, vec![60, 120, 240, 240]);
    assert_eq!(s.user("u").unwrap().unwrap().lock.level, 4);
    assert!(accepted(&redeem(
        s.as_mut(),
        &backup(&set[0], &salt),
        NOW + 9000,
        1
    )));
    assert_eq!(s.user("u").unwrap().unwrap().lock.level, 0);
    assert_eq!(
        lock_at(s.as_mut(), NOW + 10_000),
        60,
        "a success starts over"
    );
    lock_at(s.as_mut(), NOW + 11_000);
    s.unlock("u", NOW + 11_001, &audit(Fact::Unlocked)).unwrap();
    assert_eq!(lock_at(s.as_mut(), NOW + 12_000), 60, "unlock starts over");
    let c = Code::generate(codes::RECOVERY_LEN);
    let issued = audit(Fact::RecoveryIssued {
        until: NOW + 20_000,
    });
    s.add_recovery(
        "u",
        &salt,
        &c.hash(&salt),
        NOW + 20_000,
        NOW + 12_001,
        &issued,
    )
    .unwrap();
    assert_eq!(
        s.user("u").unwrap().unwrap().lock.level,
        0,
        "so does a recovery code"
    );
}

/// The store remembers who made an enrolment.
pub fn enrolment_keeps_who_made_it(b: &dyn Backend) {
    let mut s = b.open();
    pending_user(s.as_mut(), 0);
    assert_eq!(s.user("u").unwrap().unwrap().enrolled_by, Origin::Admin);
    let salt = codes::new_salt();
    let new = NewEnrollment {
        sealed_secret: b"by a login",
        code_salt: &salt,
        backup_hashes: &[],
        sealed_codes: b"",
        replace: false,
        seen: None,
        origin: Origin::Login,
    };
    assert!(s
        .begin_enrollment("w", &new, NOW, &audit(Fact::Enrolled))
        .unwrap());
    assert_eq!(s.user("w").unwrap().unwrap().enrolled_by, Origin::Login);
}

/// `disable` works for a user with or without a factor (and one the
/// store never saw); `enable` takes it back with the factor kept.
pub fn disable_exempts_any_user_and_enable_takes_it_back(b: &dyn Backend) {
    let mut s = b.open();
    active_user(s.as_mut(), 1);
    for name in ["u", "nobody"] {
        s.disable(name, &codes::new_salt(), NOW, &audit(Fact::Disabled))
            .unwrap();
        assert!(s.user(name).unwrap().unwrap().disabled, "{name}");
    }
    assert_eq!(s.user("nobody").unwrap().unwrap().state, TotpState::None);
    assert!(s.enable("u", NOW, &audit(Fact::Enabled)).unwrap());
    let r = s.user("u").unwrap().unwrap();
    assert_eq!((r.disabled, r.state), (false, TotpState::Active));
    assert!(!s.enable("stranger", NOW, &audit(Fact::Enabled)).unwrap());
}

/// `reset` removes the secret, every code, the lock and the exemption.
pub fn reset_removes_every_factor_and_code(b: &dyn Backend) {
    let mut s = b.open();
    let (salt, set) = active_user(s.as_mut(), 2);
    let c = Code::generate(codes::RECOVERY_LEN);
    let issued = audit(Fact::RecoveryIssued { until: NOW + 60 });
    s.add_recovery("u", &salt, &c.hash(&salt), NOW + 60, NOW, &issued)
        .unwrap();
    redeem(s.as_mut(), &Candidate::default(), NOW, 1);
    s.disable("u", &codes::new_salt(), NOW, &audit(Fact::Disabled))
        .unwrap();
    assert!(s.reset("u", NOW, &audit(Fact::Reset)).unwrap());
    let r = s.user("u").unwrap().unwrap();
    assert_eq!(
        (
            r.state,
            r.disabled,
            r.secret.clone(),
            r.unused_backup_codes,
            r.lock.locked_until
        ),
        (TotpState::None, false, None, 0, None)
    );
    assert!(!s.has_valid_recovery("u", NOW).unwrap());
    assert!(!s
        .code_usable(CodeKind::Backup, "u", &set[1].hash(&salt), NOW)
        .unwrap());
    assert!(!s.reset("nobody", NOW, &audit(Fact::Reset)).unwrap());
}

/// A login attempt for a user the store does not know is reported as such
/// and writes nothing.
pub fn unknown_user_is_reported_and_nothing_is_written(b: &dyn Backend) {
    let mut s = b.open();
    assert_eq!(redeem(s.as_mut(), &totp(1), NOW, 3), Verdict::UnknownUser);
    assert!(s.user("u").unwrap().is_none());
    assert!(s.audit(&AuditFilter::default()).unwrap().is_empty());
}

/// Audit rows come back oldest first, with the wording of their decision,
/// and filtered by user and time.
pub fn audit_rows_are_kept_in_order_and_filtered(b: &dyn Backend) {
    let mut s = b.open();
    active_user(s.as_mut(), 0);
    redeem(s.as_mut(), &Candidate::default(), NOW + 10, 1);
    s.record(&ctx().entry(NOW + 20, "w", &Fact::NoCode))
        .unwrap();
    let all = s.audit(&AuditFilter::default()).unwrap();
    let events: Vec<_> = all.iter().map(|e| (e.event, e.outcome)).collect();
    assert_eq!(
        events,
        vec![
            (Event::Enroll, Outcome::Pending),
            (Event::Enroll, Outcome::Active),
            (Event::Login, Outcome::Failure),
            (Event::Lock, Outcome::Locked),
            (Event::Login, Outcome::Failure),
        ]
    );
    assert_eq!(all[2].detail, "wrong code (1 in a row)");
    assert_eq!(
        (all[2].service.as_str(), all[2].host.as_str()),
        ("conformance", "host-a")
    );
    let only_u = AuditFilter {
        user: Some("u".into()),
        since: Some(NOW + 1),
    };
    let rows = s.audit(&only_u).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|e| e.user == "u" && e.time == NOW + 10));
}

/// A transaction whose body fails changes nothing.
pub fn failed_transaction_leaves_nothing_behind(b: &dyn Backend) {
    let mut s = b.open();
    active_user(s.as_mut(), 0);
    let result: Result<(), Error> = s.write(Durability::Full, |tx| {
        tx.set_disabled("u", true, NOW)?;
        tx.insert_audit(&audit(Fact::Disabled))?;
        Err(Error::UnknownUser { user: "u".into() })
    });
    assert!(result.is_err());
    assert!(!s.user("u").unwrap().unwrap().disabled);
    assert_eq!(s.audit(&AuditFilter::default()).unwrap().len(), 2);
}

/// A statement that fails inside a transaction fails all of it, even when
/// the body goes on and returns `Ok`: nothing of it is committed, the
/// caller gets an error (never a success), and the next transaction on
/// the same connection works.
pub fn a_failed_statement_fails_the_whole_transaction(b: &dyn Backend) {
    let mut s = b.open();
    active_user(s.as_mut(), 0);
    let result: Result<(), Error> = s.write(Durability::Full, |tx| {
        tx.set_disabled("u", true, NOW)?;
        // Codes of a user the store does not know: refused.
        let refused = tx.insert_backup_codes("nobody", &[[1; codes::HASH_LEN]], NOW);
        assert!(refused.is_err());
        let _ = tx.insert_audit(&audit(Fact::Disabled));
        Ok(())
    });
    assert!(matches!(result, Err(Error::Store { .. })), "{result:?}");
    assert!(!s.user("u").unwrap().unwrap().disabled);
    assert_eq!(s.audit(&AuditFilter::default()).unwrap().len(), 2);
    assert!(s.unlock("u", NOW, &audit(Fact::Unlocked)).unwrap());
    assert_eq!(s.audit(&AuditFilter::default()).unwrap().len(), 3);
}

/// A user's code salt is set once; an operation whose codes were hashed
/// with another salt (read before a concurrent change) writes nothing.
pub fn the_code_salt_never_changes_and_a_stale_one_is_refused(b: &dyn Backend) {
    let mut s = b.open();
    let (salt, _) = active_user(s.as_mut(), 1);
    pending_with(s.as_mut(), &salt, &codes::backup_set(1, &salt));
    assert_eq!(
        s.user("u").unwrap().unwrap().code_salt,
        salt,
        "re-enrolment keeps the salt"
    );
    let stale = codes::new_salt();
    let other = NewEnrollment {
        sealed_secret: b"other",
        code_salt: &stale,
        backup_hashes: &[],
        sealed_codes: b"",
        replace: true,
        seen: None,
        origin: Origin::Admin,
    };
    let err = s
        .begin_enrollment("u", &other, NOW, &audit(Fact::Enrolled))
        .unwrap_err();
    assert!(matches!(err, Error::Changed { .. }), "{err}");
    assert_eq!(
        s.user("u").unwrap().unwrap().secret.as_deref(),
        Some(SEALED)
    );
    let c = Code::generate(codes::RECOVERY_LEN);
    let issued = audit(Fact::RecoveryIssued { until: NOW + 60 });
    let err = s
        .add_recovery("u", &stale, &c.hash(&stale), NOW + 60, NOW, &issued)
        .unwrap_err();
    assert!(matches!(err, Error::Changed { .. }), "{err}");
    assert!(!s.has_valid_recovery("u", NOW).unwrap());
    let regen = audit(Fact::BackupCodesRegenerated { count: 1 });
    assert!(s
        .replace_backup_codes("u", &stale, &[[7; 32]], NOW, &regen)
        .is_err());
}

/// `confirm` activates only a pending enrolment: once active (by a login,
/// say), a newer step confirms nothing and hands out no codes again.
pub fn confirm_never_reactivates_an_active_enrolment(b: &dyn Backend) {
    let mut s = b.open();
    pending_user(s.as_mut(), 1);
    assert!(accepted(&redeem(s.as_mut(), &totp(5), NOW, 9)));
    assert_eq!(
        s.confirm("u", &step(6), NOW, &audit(Fact::Confirmed))
            .unwrap(),
        None
    );
    assert_eq!(
        s.user("u").unwrap().unwrap().last_step,
        5,
        "step 6 is still unused"
    );
}

/// [`Tx::consume_code`] marks a code used once: the second call, on the
/// same connection or another, changes nothing and says so.
pub fn a_code_row_is_consumed_once(b: &dyn Backend) {
    let mut s = b.open();
    active_user(s.as_mut(), 1);
    let id = s
        .read(|tx| tx.unused_codes(CodeKind::Backup, "u", NOW))
        .unwrap()[0]
        .id;
    let consume = |s: &mut dyn Store| {
        s.write(Durability::Full, |tx| {
            tx.consume_code(CodeKind::Backup, id, NOW)
        })
        .unwrap()
    };
    assert!(consume(s.as_mut()));
    assert!(!consume(s.as_mut()));
    assert!(!consume(b.open().as_mut()));
    assert!(s
        .read(|tx| tx.unused_codes(CodeKind::Backup, "u", NOW))
        .unwrap()
        .is_empty());
}

/// [`Tx::write_attempt`] decided from a row that is no longer the stored
/// one writes nothing: the transaction fails as a conflict. Over the
/// stored row it is written.
pub fn an_attempt_decided_from_a_stale_row_is_not_written(b: &dyn Backend) {
    let mut s = b.open();
    active_user(s.as_mut(), 0);
    let before = s.user("u").unwrap().unwrap();
    redeem(s.as_mut(), &Candidate::default(), NOW, 9);
    let stored = s.user("u").unwrap().unwrap();
    assert_eq!(stored.lock.failures, 1);
    let to = Attempt {
        lock: LockState {
            failures: 7,
            ..LockState::default()
        },
        step: None,
        success: false,
    };
    let written = s.write(Durability::Full, |tx| tx.write_attempt(&before, &to, NOW));
    assert!(
        matches!(written, Err(Error::Conflict { .. })),
        "{written:?}"
    );
    assert_eq!(s.user("u").unwrap().unwrap(), stored);
    s.write(Durability::Full, |tx| tx.write_attempt(&stored, &to, NOW))
        .unwrap();
    assert_eq!(s.user("u").unwrap().unwrap().lock.failures, 7);
}

/// An enrolment or import agreed on over the factors seen replaces only
/// those: one made meanwhile (by a login, another administrator or host)
/// is kept, and nothing is written.
pub fn a_replacement_goes_ahead_only_over_the_factors_seen(b: &dyn Backend) {
    let mut s = b.open();
    let salt = codes::new_salt();
    let hashes: Vec<_> = codes::backup_set(2, &salt)
        .iter()
        .map(|(_, h)| *h)
        .collect();
    let saw_nothing = SeenFactors::of(None);
    let new = |seen| NewEnrollment {
        sealed_secret: b"new secret",
        code_salt: &salt,
        backup_hashes: &hashes,
        sealed_codes: b"sealed codes",
        replace: true,
        seen: Some(seen),
        origin: Origin::Admin,
    };
    // Seen with no factor, enrolled meanwhile: kept.
    pending_with(s.as_mut(), &salt, &codes::backup_set(1, &salt));
    let before = s.user("u").unwrap().unwrap();
    let enrolled = audit(Fact::Enrolled);
    assert!(matches!(
        s.begin_enrollment("u", &new(&saw_nothing), NOW, &enrolled),
        Err(Error::Changed { .. })
    ));
    let entry = audit(Fact::Imported {
        from: "oath",
        backup_codes: 2,
    });
    let import = |seen| Imported {
        user: "u",
        new: new(seen),
        last_step: 5,
        audit: &entry,
    };
    assert!(matches!(
        s.import(&[import(&saw_nothing)], NOW),
        Err(Error::Changed { .. })
    ));
    assert_eq!(s.user("u").unwrap().unwrap(), before);
    // Seen as it is: replaced.
    let seen = SeenFactors::of(Some(&before));
    assert!(s
        .begin_enrollment("u", &new(&seen), NOW, &enrolled)
        .unwrap());
    let after = s.user("u").unwrap().unwrap();
    assert_eq!(after.secret.as_deref(), Some(&b"new secret"[..]));
    // The factors changed since `seen` (the new secret): the import is
    // refused; over what is there now, it goes ahead.
    assert!(matches!(
        s.import(&[import(&seen)], NOW),
        Err(Error::Changed { .. })
    ));
    s.import(&[import(&SeenFactors::of(Some(&after)))], NOW)
        .unwrap();
    assert_eq!(s.user("u").unwrap().unwrap().state, TotpState::Active);
}

/// An import makes the secret active at once with every step up to
/// `last_step` used and its codes usable; several users go in together
/// or not at all.
pub fn an_import_is_active_with_its_history_all_or_none(b: &dyn Backend) {
    let mut s = b.open();
    let (salt, _) = active_user(s.as_mut(), 1);
    let set = codes::backup_set(2, &salt);
    let hashes: Vec<_> = set.iter().map(|(_, h)| *h).collect();
    let entry = audit(Fact::Imported {
        from: "oath",
        backup_codes: 2,
    });
    let new = |salt: &'static [u8]| NewEnrollment {
        sealed_secret: SEALED,
        code_salt: salt,
        backup_hashes: &[],
        sealed_codes: b"",
        replace: true,
        seen: None,
        origin: Origin::Admin,
    };
    let stale: &'static [u8] = Box::leak(codes::new_salt().into_boxed_slice());
    let fresh: &'static [u8] = Box::leak(codes::new_salt().into_boxed_slice());
    // "w" is new; "u" exists with another salt than the one given: nothing.
    let both = [
        Imported {
            user: "w",
            new: new(fresh),
            last_step: 5,
            audit: &entry,
        },
        Imported {
            user: "u",
            new: new(stale),
            last_step: 5,
            audit: &entry,
        },
    ];
    assert!(matches!(s.import(&both, NOW), Err(Error::Changed { .. })));
    assert!(s.user("w").unwrap().is_none(), "all or none");
    let good = Imported {
        user: "u",
        new: NewEnrollment {
            code_salt: &salt,
            backup_hashes: &hashes,
            ..new(fresh)
        },
        last_step: 40,
        audit: &entry,
    };
    s.import(&[good], NOW).unwrap();
    let r = s.user("u").unwrap().unwrap();
    assert_eq!(
        (r.state, r.last_step, r.backup_codes_left()),
        (TotpState::Active, 40, 2)
    );
    assert!(
        rejected(&redeem(s.as_mut(), &totp(40), NOW, 9)),
        "a used step"
    );
    assert!(accepted(&redeem(s.as_mut(), &totp(41), NOW, 9)));
    assert!(accepted(&redeem(
        s.as_mut(),
        &backup(&set[0].0, &salt),
        NOW,
        9
    )));
}

/// A success remembers its host until the time given (a later one
/// replaces it); a lock, `reset`, `disable` and `forget` forget; an expired
/// host is not remembered.
pub fn a_host_is_remembered_on_success_and_forgotten_on_a_lock_reset_or_disable(b: &dyn Backend) {
    let mut s = b.open();
    active_user(s.as_mut(), 0);
    let remembered = |s: &mut dyn Store, now| s.remembered("u", now).unwrap();
    let ok = s
        .redeem(
            "u",
            &totp(20),
            NOW,
            &lockout(2),
            &ctx(),
            Some(("laptop", NOW + 100)),
        )
        .unwrap();
    assert!(accepted(&ok));
    s.redeem(
        "u",
        &totp(21),
        NOW,
        &lockout(2),
        &ctx(),
        Some(("desk", NOW + 50)),
    )
    .unwrap();
    assert_eq!(
        remembered(s.as_mut(), NOW),
        vec![
            ("desk".to_string(), NOW + 50),
            ("laptop".to_string(), NOW + 100)
        ]
    );
    assert_eq!(
        remembered(s.as_mut(), NOW + 60),
        vec![("laptop".to_string(), NOW + 100)]
    );
    let view = s.login_view("u", Some("laptop"), &[], NOW).unwrap();
    assert_eq!(view.remembered_until, Some(NOW + 100));
    assert_eq!(
        s.login_view("u", Some("desk"), &[], NOW + 60)
            .unwrap()
            .remembered_until,
        None
    );
    // A failure that does not lock keeps them; one that locks forgets them.
    redeem(s.as_mut(), &Candidate::default(), NOW, 2);
    assert_eq!(remembered(s.as_mut(), NOW).len(), 2);
    redeem(s.as_mut(), &Candidate::default(), NOW, 2);
    assert!(remembered(s.as_mut(), NOW).is_empty(), "a lock forgets");
    s.unlock("u", NOW, &audit(Fact::Unlocked)).unwrap();
    for (host, then) in [("a", 30), ("b", 31)] {
        s.redeem(
            "u",
            &totp(then),
            NOW,
            &lockout(9),
            &ctx(),
            Some((host, NOW + 100)),
        )
        .unwrap();
    }
    let forgot = audit(Fact::Forgotten {
        host: Some("a".into()),
        count: 1,
    });
    assert_eq!(s.forget("u", Some("a"), &forgot).unwrap(), 1);
    assert_eq!(s.forget("u", Some("a"), &forgot).unwrap(), 0);
    assert_eq!(
        remembered(s.as_mut(), NOW),
        vec![("b".to_string(), NOW + 100)]
    );
    s.disable("u", &codes::new_salt(), NOW, &audit(Fact::Disabled))
        .unwrap();
    assert!(remembered(s.as_mut(), NOW).is_empty(), "disable forgets");
    s.enable("u", NOW, &audit(Fact::Enabled)).unwrap();
    s.redeem(
        "u",
        &totp(40),
        NOW,
        &lockout(9),
        &ctx(),
        Some(("c", NOW + 100)),
    )
    .unwrap();
    assert!(s.reset("u", NOW, &audit(Fact::Reset)).unwrap());
    assert!(remembered(s.as_mut(), NOW).is_empty(), "reset forgets");
}

/// Enrolling anew (a lost phone) forgets the hosts remembered with the old
/// factor and voids the codes sent for it.
pub fn a_new_factor_forgets_the_hosts_and_sent_codes_of_the_old(b: &dyn Backend) {
    let mut s = b.open();
    let (salt, _) = active_user(s.as_mut(), 0);
    let ok = s
        .redeem(
            "u",
            &totp(20),
            NOW,
            &lockout(2),
            &ctx(),
            Some(("laptop", NOW + 100)),
        )
        .unwrap();
    assert!(accepted(&ok));
    let set = audit(Fact::ContactSet {
        channel: Channel::Email,
        to: Some("u***@example.com".into()),
    });
    s.set_contact("u", Channel::Email, Some("u@example.com"), &salt, NOW, &set)
        .unwrap();
    let mailed = Code::generate_digits(6);
    send(s.as_mut(), Channel::Email, &salt, &mailed, NOW);
    assert_eq!(s.remembered("u", NOW).unwrap().len(), 1);
    pending_with(s.as_mut(), &salt, &codes::backup_set(1, &salt));
    assert!(s.remembered("u", NOW).unwrap().is_empty());
    let view = s.login_view("u", Some("laptop"), &[], NOW + 1).unwrap();
    assert_eq!(view.remembered_until, None);
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Email,
        &mailed,
        &salt,
        NOW + 1
    )));
}

/// `users` lists every user once, by name.
pub fn users_are_listed_by_name(b: &dyn Backend) {
    let mut s = b.open();
    for name in ["carol", "alice", "bob"] {
        s.disable(name, &codes::new_salt(), NOW, &audit(Fact::Disabled))
            .unwrap();
    }
    let names: Vec<_> = s.users().unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(names, vec!["alice", "bob", "carol"]);
}

/// Parallel wrong guesses on separate connections: exactly `max_failures`
/// are checked, the rest find the user locked.
pub fn parallel_wrong_guesses_never_exceed_max_failures(b: &dyn Backend) {
    active_user(b.open().as_mut(), 0);
    let verdicts = in_parallel(b, 16, |s| redeem(s, &Candidate::default(), NOW, 5));
    assert_eq!(verdicts.iter().filter(|v| rejected(v)).count(), 5);
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Locked { .. }))
            .count(),
        11
    );
}

/// One TOTP step offered by many parallel logins: exactly one succeeds.
pub fn parallel_logins_with_one_totp_step_exactly_one_succeeds(b: &dyn Backend) {
    active_user(b.open().as_mut(), 0);
    let verdicts = in_parallel(b, 12, |s| redeem(s, &totp(50), NOW, 100));
    assert_eq!(verdicts.iter().filter(|v| accepted(v)).count(), 1);
}

/// An attempt decided from the row a login read before its prompt is the
/// attempt made from the row as it is: the same when the row is as seen,
/// made again from the row when it changed meanwhile (never counted twice,
/// never a step accepted twice).
pub fn an_attempt_from_a_row_seen_before_is_made_as_from_the_row(b: &dyn Backend) {
    let mut s = b.open();
    let (salt, set) = active_user(s.as_mut(), 2);
    let seen = s.user("u").unwrap().unwrap();
    assert!(accepted(&redeem_as(s.as_mut(), &seen, &totp(20), NOW, 3)));
    // `seen` is out of date now: its last step is 10.
    assert_eq!(
        redeem_as(s.as_mut(), &seen, &totp(20), NOW, 3),
        Verdict::Rejected {
            failures: 1,
            reused: true,
            locked_until: None
        }
    );
    assert!(accepted(&redeem_as(s.as_mut(), &seen, &totp(21), NOW, 3)));
    let mut row = s.user("u").unwrap().unwrap();
    assert_eq!((row.last_step, row.lock.failures), (21, 0));
    for n in 1..=3 {
        assert!(rejected(&redeem_as(
            s.as_mut(),
            &row,
            &Candidate::default(),
            NOW,
            3
        )));
        row = s.user("u").unwrap().unwrap();
        assert_eq!(row.lock.failures, n, "counted once");
    }
    let locked = Verdict::Locked { until: NOW + 60 };
    for from in [&row, &seen] {
        let right = backup(&set[0], &salt);
        assert_eq!(redeem_as(s.as_mut(), from, &right, NOW + 1, 3), locked);
    }
    assert_eq!(s.user("u").unwrap().unwrap(), row, "nothing but audit rows");
    let other = UserRecord {
        name: "v".into(),
        ..row.clone()
    };
    assert_eq!(
        s.redeem_seen(
            "u",
            Some(&other),
            &totp(22),
            NOW + 61,
            &lockout(3),
            &ctx(),
            None
        )
        .unwrap(),
        Verdict::Accepted {
            factor: Factor::Totp,
            activated_codes: None,
            backup_codes_left: 2
        },
        "another user's row is not taken for this one's"
    );
}

/// Parallel logins that all read the row before their prompt: one TOTP
/// step is accepted once, and wrong guesses are counted once each, up to
/// the lock.
pub fn parallel_logins_that_saw_the_row_count_and_consume_once(b: &dyn Backend) {
    active_user(b.open().as_mut(), 0);
    let seen = b.open().user("u").unwrap().unwrap();
    let verdicts = in_parallel(b, 12, |s| redeem_as(s, &seen, &totp(50), NOW, 100));
    assert_eq!(verdicts.iter().filter(|v| accepted(v)).count(), 1);
    let mut s = b.open();
    assert!(s.unlock("u", NOW, &audit(Fact::Unlocked)).unwrap());
    let seen = s.user("u").unwrap().unwrap();
    let verdicts = in_parallel(b, 16, |s| {
        redeem_as(s, &seen, &Candidate::default(), NOW, 5)
    });
    assert_eq!(verdicts.iter().filter(|v| rejected(v)).count(), 5);
    assert_eq!(s.user("u").unwrap().unwrap().lock.failures, 5);
}

/// One backup code offered by many parallel logins: exactly one succeeds.
pub fn parallel_logins_with_one_backup_code_exactly_one_succeeds(b: &dyn Backend) {
    let (salt, set) = active_user(b.open().as_mut(), 2);
    let offer = backup(&set[0], &salt);
    let verdicts = in_parallel(b, 12, |s| redeem(s, &offer, NOW, 100));
    assert_eq!(verdicts.iter().filter(|v| accepted(v)).count(), 1);
    assert_eq!(b.open().user("u").unwrap().unwrap().backup_codes_left(), 1);
}

/// One recovery code offered by many parallel logins: exactly one succeeds.
pub fn parallel_logins_with_one_recovery_code_exactly_one_succeeds(b: &dyn Backend) {
    let salt = codes::new_salt();
    let c = Code::generate(codes::RECOVERY_LEN);
    let issued = audit(Fact::RecoveryIssued { until: NOW + 60 });
    b.open()
        .add_recovery("u", &salt, &c.hash(&salt), NOW + 60, NOW, &issued)
        .unwrap();
    let offer = recovery(&c, &salt);
    let verdicts = in_parallel(b, 12, |s| redeem(s, &offer, NOW, 100));
    assert_eq!(verdicts.iter().filter(|v| accepted(v)).count(), 1);
}

/// Parallel enrolments that may not replace a factor: exactly one wins,
/// and its secret is the one kept.
pub fn parallel_enrolments_keep_one_factor(b: &dyn Backend) {
    let winner = std::sync::Mutex::new(vec![]);
    let gate = std::sync::Barrier::new(8);
    std::thread::scope(|scope| {
        for i in 0..8u8 {
            let (winner, gate) = (&winner, &gate);
            scope.spawn(move || {
                let mut s = b.open();
                let secret = [i; 8];
                let salt = codes::new_salt();
                let new = NewEnrollment {
                    sealed_secret: &secret,
                    code_salt: &salt,
                    backup_hashes: &[],
                    sealed_codes: b"",
                    replace: false,
                    seen: None,
                    origin: Origin::Login,
                };
                gate.wait();
                // A loser is told the factor was kept, or that the user
                // appeared meanwhile with another salt.
                if let Ok(true) = s.begin_enrollment("u", &new, NOW, &audit(Fact::Enrolled)) {
                    winner.lock().unwrap().push(secret.to_vec());
                }
            });
        }
    });
    let winner = winner.into_inner().unwrap();
    assert_eq!(winner.len(), 1, "{winner:?}");
    let r = b.open().user("u").unwrap().unwrap();
    assert_eq!(
        (r.state, r.secret),
        (TotpState::Pending, Some(winner[0].clone()))
    );
}

const LIMIT: SendLimit = SendLimit {
    max: 3,
    window: 900,
};

/// User `u`, known to the store with no factor, an email address and a
/// phone number: the salt.
fn known_user(s: &mut dyn Store) -> Vec<u8> {
    let salt = codes::new_salt();
    for (channel, to) in [
        (Channel::Email, "u@example.com"),
        (Channel::Sms, "+4420794600"),
    ] {
        let set = audit(Fact::ContactSet {
            channel,
            to: Some(delivery::mask(channel, to)),
        });
        s.set_contact("u", channel, Some(to), &salt, NOW, &set)
            .unwrap();
    }
    salt
}

/// Store a code for `u` by `channel` at `now`, valid 600 s.
fn send(s: &mut dyn Store, channel: Channel, salt: &[u8], code: &Code, now: i64) -> SendGrant {
    send_until(s, channel, salt, code, now, now + 600)
}

/// Store a code for `u` by `channel` at `now`, valid until `expires_at`.
fn send_until(
    s: &mut dyn Store,
    channel: Channel,
    salt: &[u8],
    code: &Code,
    now: i64,
    expires_at: i64,
) -> SendGrant {
    let sent = audit(Fact::CodeSent {
        channel,
        to: "x".into(),
    });
    let record = s.user("u").unwrap().expect("user u");
    let to = record.contact(channel).expect("a contact for the channel");
    s.grant_send(
        "u",
        channel,
        to,
        salt,
        &code.hash(salt),
        expires_at,
        now,
        LIMIT,
        &sent,
    )
    .unwrap()
}

/// Take back the code in row `id`, sent by `channel`, as after a failed send.
fn withdraw(s: &mut dyn Store, channel: Channel, id: i64) {
    let failed = audit(Fact::SendFailed {
        channel,
        reason: "down".into(),
    });
    s.withdraw_send("u", channel, id, &failed).unwrap();
}

fn sent_offer(channel: Channel, code: &Code, salt: &[u8]) -> Candidate {
    Candidate::code(CodeKind::sent(channel), code.hash(salt))
}

/// [`Tx::last_reads`](super::Tx::last_reads) answers each read, in order,
/// as the read's own method does, however many are asked at once.
pub fn last_reads_answer_as_each_read_does(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let sms = Code::generate_digits(6);
    send(s.as_mut(), Channel::Sms, &salt, &sms, NOW);
    let ok = s
        .redeem(
            "u",
            &sent_offer(Channel::Sms, &sms, &salt),
            NOW,
            &lockout(9),
            &ctx(),
            Some(("laptop", NOW + 100)),
        )
        .unwrap();
    assert!(accepted(&ok));
    send(
        s.as_mut(),
        Channel::Email,
        &salt,
        &Code::generate_digits(6),
        NOW,
    );
    let c = Code::generate(codes::RECOVERY_LEN);
    let issued = audit(Fact::RecoveryIssued { until: NOW + 60 });
    s.add_recovery("u", &salt, &c.hash(&salt), NOW + 60, NOW, &issued)
        .unwrap();
    let reads = [
        Read::User("u"),
        Read::User("nobody"),
        Read::UnusedCodes(CodeKind::Recovery, "u", NOW),
        Read::UnusedCodes(CodeKind::Recovery, "u", NOW + 60),
        Read::UnusedCodes(CodeKind::sent(Channel::Email), "u", NOW),
        Read::UnusedCodes(CodeKind::sent(Channel::Sms), "u", NOW),
        Read::UnusedCodes(CodeKind::Backup, "u", NOW),
        Read::Remembered("u", NOW),
        Read::Remembered("u", NOW + 100),
    ];
    let found = s.read(|tx| tx.last_reads(&reads)).unwrap();
    let user = format!("{:?}", s.user("u").unwrap().expect("user u"));
    let counts: Vec<String> = found
        .iter()
        .map(|f| match f {
            Found::User(Some(u)) => {
                assert_eq!(format!("{u:?}"), user, "as Tx::user reads it");
                "user".to_string()
            }
            Found::User(None) => "none".to_string(),
            Found::Codes(c) => format!("{} codes", c.len()),
            Found::Remembered(hosts) => format!("{hosts:?}"),
        })
        .collect();
    assert_eq!(
        counts,
        [
            "user",
            "none",
            "1 codes",
            "0 codes",
            "1 codes",
            "0 codes",
            "0 codes",
            &format!("{:?}", [("laptop", NOW + 100)]),
            "[]",
        ]
    );
}

/// A login's first read sent ahead ([`Store::read_ahead`]) answers the
/// login's read of the same user; a read of another user, or a write
/// after it, is served as if nothing had been sent (a backend with a server
/// prepares its statements after a few runs, hence the rounds).
pub fn a_read_sent_ahead_answers_only_that_read_and_never_hides_a_write(b: &dyn Backend) {
    let mut s = b.open();
    active_user(s.as_mut(), 2);
    let channels = [Channel::Email];
    let failures = |s: &mut dyn Store, name: &str| {
        s.login_view(name, Some("laptop"), &channels, NOW)
            .unwrap()
            .user
            .map(|u| u.lock.failures)
    };
    for round in 0..4 {
        assert_eq!(failures(s.as_mut(), "u"), Some(round), "round {round}");
        // Ahead for u; the read that comes is another user's.
        s.login_view_ahead("u", Some("laptop"), &channels, NOW);
        assert_eq!(failures(s.as_mut(), "nobody"), None, "round {round}");
        // Ahead for u, at another time: not the read that comes.
        s.login_view_ahead("u", Some("laptop"), &channels, NOW + 1);
        assert_eq!(failures(s.as_mut(), "u"), Some(round), "round {round}");
        // Ahead, then a write: the read after it sees the write.
        s.login_view_ahead("u", Some("laptop"), &channels, NOW);
        assert!(rejected(&redeem(s.as_mut(), &totp(1), NOW, 99)));
        s.login_view_ahead("u", Some("laptop"), &channels, NOW);
    }
    assert_eq!(failures(s.as_mut(), "u"), Some(4));
}

/// `u` types `code`, sent by `channel`, at `now` (lockout after 9).
fn redeem_sent(s: &mut dyn Store, channel: Channel, code: &Code, salt: &[u8], now: i64) -> Verdict {
    redeem(s, &sent_offer(channel, code, salt), now, 9)
}

/// A code sent by email is accepted once, as the factor `email`, and not
/// once it has expired; an SMS code is not an email code.
pub fn a_sent_code_works_once_and_not_after_expiry(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let c = Code::generate_digits(6);
    assert!(matches!(
        send(s.as_mut(), Channel::Email, &salt, &c, NOW),
        SendGrant::Granted { .. }
    ));
    assert_eq!(
        s.login_view("u", None, &Channel::ALL, NOW).unwrap().sent,
        vec![Channel::Email]
    );
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Sms,
        &c,
        &salt,
        NOW
    )));
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Email,
        &c,
        &salt,
        NOW + 600
    )));
    assert!(matches!(
        redeem_sent(s.as_mut(), Channel::Email, &c, &salt, NOW + 599),
        Verdict::Accepted {
            factor: Factor::Email,
            ..
        }
    ));
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Email,
        &c,
        &salt,
        NOW + 1
    )));
    assert!(s
        .login_view("u", None, &Channel::ALL, NOW)
        .unwrap()
        .sent
        .is_empty());
}

/// A new code by a channel voids the unused one sent before by that
/// channel, and only that channel.
pub fn one_sent_code_is_outstanding_per_channel(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let (first, second, sms) = (
        Code::generate_digits(6),
        Code::generate_digits(6),
        Code::generate_digits(6),
    );
    send(s.as_mut(), Channel::Email, &salt, &first, NOW);
    send(s.as_mut(), Channel::Sms, &salt, &sms, NOW);
    send(s.as_mut(), Channel::Email, &salt, &second, NOW + 1);
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Email,
        &first,
        &salt,
        NOW + 2
    )));
    assert!(accepted(&redeem_sent(
        s.as_mut(),
        Channel::Sms,
        &sms,
        &salt,
        NOW + 2
    )));
    assert!(accepted(&redeem_sent(
        s.as_mut(),
        Channel::Email,
        &second,
        &salt,
        NOW + 2
    )));
}

/// At most `max` codes per channel within the window, used or not; the
/// next may go when the oldest leaves the window.
pub fn the_resend_limit_counts_every_send_in_the_window(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    for i in 0..3 {
        let c = Code::generate_digits(6);
        assert!(matches!(
            send(s.as_mut(), Channel::Sms, &salt, &c, NOW + i * 10),
            SendGrant::Granted { .. }
        ));
    }
    let c = Code::generate_digits(6);
    assert_eq!(
        send(s.as_mut(), Channel::Sms, &salt, &c, NOW + 100),
        SendGrant::Limited { until: NOW + 900 }
    );
    assert!(matches!(
        send(s.as_mut(), Channel::Email, &salt, &c, NOW + 100),
        SendGrant::Granted { .. }
    ));
    assert!(matches!(
        send(s.as_mut(), Channel::Sms, &salt, &c, NOW + 900),
        SendGrant::Granted { .. }
    ));
    assert!(accepted(&redeem_sent(
        s.as_mut(),
        Channel::Sms,
        &c,
        &salt,
        NOW + 901
    )));
}

/// A code that could not be sent is withdrawn: it does not work and does
/// not count toward the resend limit.
pub fn a_withdrawn_code_neither_works_nor_counts(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let c = Code::generate_digits(6);
    for _ in 0..5 {
        let SendGrant::Granted { id } = send(s.as_mut(), Channel::Email, &salt, &c, NOW) else {
            panic!("a withdrawn code counted toward the limit");
        };
        let failed = audit(Fact::SendFailed {
            channel: Channel::Email,
            reason: "down".into(),
        });
        s.withdraw_send("u", Channel::Email, id, &failed).unwrap();
    }
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Email,
        &c,
        &salt,
        NOW
    )));
}

/// A withdrawal names its user: a row id another user's code holds now
/// (SQLite gives a deleted id again, after a reset) is left alone.
pub fn a_withdrawal_takes_back_only_its_own_users_code(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let c = Code::generate_digits(6);
    let SendGrant::Granted { id } = send(s.as_mut(), Channel::Sms, &salt, &c, NOW) else {
        panic!("the code was not granted");
    };
    let failed = audit(Fact::SendFailed {
        channel: Channel::Sms,
        reason: "down".into(),
    });
    s.withdraw_send("someone-else", Channel::Sms, id, &failed)
        .unwrap();
    assert!(accepted(&redeem_sent(
        s.as_mut(),
        Channel::Sms,
        &c,
        &salt,
        NOW + 1
    )));
}

/// A sender that reports a failure after the message went out: the user
/// logged in with the code meanwhile. Withdrawing it then leaves it as it
/// is, used: the code sent before it does not work again, and the used
/// one still counts toward the resend limit.
pub fn a_code_used_before_its_withdrawal_stays_used_and_counted(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let (first, second) = (Code::generate_digits(6), Code::generate_digits(6));
    assert!(matches!(
        send(s.as_mut(), Channel::Email, &salt, &first, NOW),
        SendGrant::Granted { .. }
    ));
    let SendGrant::Granted { id } = send(s.as_mut(), Channel::Email, &salt, &second, NOW + 1)
    else {
        panic!("the second code was not granted");
    };
    assert!(accepted(&redeem_sent(
        s.as_mut(),
        Channel::Email,
        &second,
        &salt,
        NOW + 2
    )));
    withdraw(s.as_mut(), Channel::Email, id);
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Email,
        &first,
        &salt,
        NOW + 3
    )));
    assert!(matches!(
        send(s.as_mut(), Channel::Email, &salt, &second, NOW + 4),
        SendGrant::Granted { .. }
    ));
    assert_eq!(
        send(s.as_mut(), Channel::Email, &salt, &second, NOW + 5),
        SendGrant::Limited { until: NOW + 900 }
    );
}

/// When the send of a new code fails, the code sent before it by that
/// channel works again: the user who types it is let in, even when it
/// was made before the resend window.
pub fn a_withdrawn_code_gives_back_the_one_sent_before(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let (first, second) = (Code::generate_digits(6), Code::generate_digits(6));
    // Valid longer than the resend window: still good when the next is asked.
    assert!(matches!(
        send_until(s.as_mut(), Channel::Email, &salt, &first, NOW, NOW + 2000),
        SendGrant::Granted { .. }
    ));
    let later = NOW + LIMIT.window + 100;
    let SendGrant::Granted { id } = send(s.as_mut(), Channel::Email, &salt, &second, later) else {
        panic!("the second code was not granted");
    };
    withdraw(s.as_mut(), Channel::Email, id);
    assert_eq!(
        s.login_view("u", None, &Channel::ALL, later + 1)
            .unwrap()
            .sent,
        vec![Channel::Email]
    );
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Email,
        &second,
        &salt,
        later + 1
    )));
    assert!(matches!(
        redeem_sent(s.as_mut(), Channel::Email, &first, &salt, later + 1),
        Verdict::Accepted {
            factor: Factor::Email,
            ..
        }
    ));
}

/// A new code by a channel voids the one sent before by it on every host,
/// whatever its clock: a host whose clock is behind the one that sent the
/// new code refuses the earlier one all the same.
pub fn an_earlier_sent_code_is_void_on_every_clock(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let (first, second) = (Code::generate_digits(6), Code::generate_digits(6));
    send(s.as_mut(), Channel::Sms, &salt, &first, NOW + 10);
    send(s.as_mut(), Channel::Sms, &salt, &second, NOW + 20);
    // Checked by a host whose clock says NOW: before either was sent.
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Sms,
        &first,
        &salt,
        NOW
    )));
    assert!(accepted(&redeem_sent(
        s.as_mut(),
        Channel::Sms,
        &second,
        &salt,
        NOW
    )));
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Sms,
        &first,
        &salt,
        NOW
    )));
}

/// A login read the address, then an administrator changed it: the code
/// is not stored (it would go to the old address), and nothing counts.
pub fn no_code_is_stored_for_an_address_changed_meanwhile(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let code = Code::generate_digits(6);
    let sent = audit(Fact::CodeSent {
        channel: Channel::Email,
        to: "o***@example.com".into(),
    });
    for stale in ["old@example.com", "U@example.com", ""] {
        let grant = s
            .grant_send(
                "u",
                Channel::Email,
                stale,
                &salt,
                &code.hash(&salt),
                NOW + 600,
                NOW,
                LIMIT,
                &sent,
            )
            .unwrap();
        assert!(
            matches!(grant, SendGrant::ContactChanged),
            "{stale}: {grant:?}"
        );
    }
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Email,
        &code,
        &salt,
        NOW + 1
    )));
    // Nothing counted toward the resend limit: all of it is still there.
    for i in 0..LIMIT.max {
        let c = Code::generate_digits(6);
        let grant = send(
            s.as_mut(),
            Channel::Email,
            &salt,
            &c,
            NOW + 2 + i64::from(i),
        );
        assert!(matches!(grant, SendGrant::Granted { .. }), "{grant:?}");
    }
}

/// The codes a contact change voids still count toward the resend limit:
/// setting the address anew does not buy more sends.
pub fn a_changed_contact_does_not_lift_the_resend_limit(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let c = Code::generate_digits(6);
    for i in 0..3 {
        assert!(matches!(
            send(s.as_mut(), Channel::Sms, &salt, &c, NOW + i),
            SendGrant::Granted { .. }
        ));
    }
    let set = audit(Fact::ContactSet {
        channel: Channel::Sms,
        to: Some("+4420794601".into()),
    });
    s.set_contact(
        "u",
        Channel::Sms,
        Some("+4420794601"),
        &salt,
        NOW + 10,
        &set,
    )
    .unwrap();
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Sms,
        &c,
        &salt,
        NOW + 11
    )));
    assert_eq!(
        send(s.as_mut(), Channel::Sms, &salt, &c, NOW + 12),
        SendGrant::Limited { until: NOW + 900 }
    );
}

/// A new address or number for a channel voids the codes sent to the old
/// one (a removed one too); the other channel's code, and a code sent to
/// an address set again unchanged, still work.
pub fn a_changed_contact_voids_the_codes_sent_to_the_old_one(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let contact = |s: &mut dyn Store, channel, to: Option<&str>| {
        let set = audit(Fact::ContactSet {
            channel,
            to: to.map(String::from),
        });
        s.set_contact("u", channel, to, &salt, NOW, &set).unwrap();
    };
    contact(s.as_mut(), Channel::Sms, Some("+4420794600"));
    let (old, sms) = (Code::generate_digits(6), Code::generate_digits(6));
    send(s.as_mut(), Channel::Email, &salt, &old, NOW);
    send(s.as_mut(), Channel::Sms, &salt, &sms, NOW);
    contact(s.as_mut(), Channel::Email, Some("new@example.com"));
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Email,
        &old,
        &salt,
        NOW + 1
    )));
    assert!(accepted(&redeem_sent(
        s.as_mut(),
        Channel::Sms,
        &sms,
        &salt,
        NOW + 1
    )));
    let kept = Code::generate_digits(6);
    send(s.as_mut(), Channel::Email, &salt, &kept, NOW + 2);
    contact(s.as_mut(), Channel::Email, Some("new@example.com"));
    assert!(accepted(&redeem_sent(
        s.as_mut(),
        Channel::Email,
        &kept,
        &salt,
        NOW + 3
    )));
    let removed = Code::generate_digits(6);
    send(s.as_mut(), Channel::Email, &salt, &removed, NOW + 4);
    contact(s.as_mut(), Channel::Email, None);
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Email,
        &removed,
        &salt,
        NOW + 5
    )));
}

/// Removing the contact of a disabled user's delivery channel ends that
/// factor and leaves 2FA off: it does not turn it back on for a user with
/// no factor left. Making a channel a factor does turn it on, as an
/// enrolment does.
pub fn removing_the_contact_of_the_delivery_channel_keeps_a_user_disabled(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let hashes: Vec<_> = codes::backup_set(2, &salt)
        .iter()
        .map(|(_, h)| *h)
        .collect();
    let enrolled = audit(Fact::DeliveryEnrolled {
        channel: Channel::Email,
    });
    s.set_delivery("u", Channel::Email, &salt, &hashes, NOW, &enrolled)
        .unwrap();
    s.disable("u", &salt, NOW, &audit(Fact::Disabled)).unwrap();
    let removed = audit(Fact::ContactSet {
        channel: Channel::Email,
        to: None,
    });
    s.set_contact("u", Channel::Email, None, &salt, NOW, &removed)
        .unwrap();
    let r = s.user("u").unwrap().unwrap();
    assert_eq!((r.delivery, r.disabled), (None, true));
    let set = audit(Fact::ContactSet {
        channel: Channel::Email,
        to: Some("u***@example.com".into()),
    });
    s.set_contact("u", Channel::Email, Some("u@example.com"), &salt, NOW, &set)
        .unwrap();
    s.set_delivery("u", Channel::Email, &salt, &hashes, NOW, &enrolled)
        .unwrap();
    let r = s.user("u").unwrap().unwrap();
    assert_eq!((r.delivery, r.disabled), (Some(Channel::Email), false));
}

/// A locked user gets no code, and nothing is stored.
pub fn no_code_is_sent_to_a_locked_user(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    redeem(s.as_mut(), &Candidate::default(), NOW, 1);
    let c = Code::generate_digits(6);
    assert_eq!(
        send(s.as_mut(), Channel::Email, &salt, &c, NOW),
        SendGrant::Locked { until: NOW + 60 }
    );
    assert!(s
        .login_view("u", None, &Channel::ALL, NOW + 61)
        .unwrap()
        .sent
        .is_empty());
}

/// Contacts are kept per channel; removing the contact of the user's
/// delivery channel ends that factor.
pub fn contacts_are_kept_and_a_removed_one_ends_its_channel(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let set = |channel, to| {
        audit(Fact::ContactSet {
            channel,
            to: Some(String::from(to)),
        })
    };
    s.set_contact(
        "u",
        Channel::Email,
        Some("u@example.com"),
        &salt,
        NOW,
        &set(Channel::Email, "u"),
    )
    .unwrap();
    s.set_contact(
        "u",
        Channel::Sms,
        Some("+4420794600"),
        &salt,
        NOW,
        &set(Channel::Sms, "p"),
    )
    .unwrap();
    let other = codes::new_salt();
    s.set_contact(
        "new",
        Channel::Sms,
        Some("+4420794600"),
        &other,
        NOW,
        &set(Channel::Sms, "p"),
    )
    .unwrap();
    let n = s.user("new").unwrap().unwrap();
    assert_eq!(
        (&n.code_salt, n.phone.as_deref(), n.has_factor()),
        (&other, Some("+4420794600"), false)
    );
    let hashes: Vec<_> = codes::backup_set(2, &salt)
        .iter()
        .map(|(_, h)| *h)
        .collect();
    let enrolled = audit(Fact::DeliveryEnrolled {
        channel: Channel::Sms,
    });
    s.set_delivery("u", Channel::Sms, &salt, &hashes, NOW, &enrolled)
        .unwrap();
    let removed = audit(Fact::ContactSet {
        channel: Channel::Email,
        to: None,
    });
    s.set_contact("u", Channel::Email, None, &salt, NOW, &removed)
        .unwrap();
    let r = s.user("u").unwrap().unwrap();
    assert_eq!(
        (r.email.as_deref(), r.phone.as_deref(), r.delivery),
        (None, Some("+4420794600"), Some(Channel::Sms))
    );
    s.set_contact("u", Channel::Sms, None, &salt, NOW, &removed)
        .unwrap();
    let r = s.user("u").unwrap().unwrap();
    assert_eq!((r.phone, r.delivery), (None, None));
}

/// Enrolling an app for a user whose factor is a channel replaces that
/// factor: the channel's codes are no longer sent unasked, the old backup
/// codes are void, and the new ones wait for the activation, as with any
/// enrolment (nobody has seen them yet).
pub fn an_app_enrolment_replaces_a_delivery_channel_as_the_factor(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let old = codes::backup_set(2, &salt);
    let hashes: Vec<_> = old.iter().map(|(_, h)| *h).collect();
    let enrolled = audit(Fact::DeliveryEnrolled {
        channel: Channel::Email,
    });
    assert!(s
        .set_delivery("u", Channel::Email, &salt, &hashes, NOW, &enrolled)
        .unwrap());
    let new = codes::backup_set(2, &salt);
    pending_with(s.as_mut(), &salt, &new);
    let r = s.user("u").unwrap().unwrap();
    assert_eq!(
        (r.state, r.delivery, r.backup_codes_left()),
        (TotpState::Pending, None, 0)
    );
    for code in [&old[0].0, &new[0].0] {
        assert!(rejected(&redeem(s.as_mut(), &backup(code, &salt), NOW, 9)));
    }
    // Codes by email still work when asked for at the prompt.
    let mailed = Code::generate_digits(6);
    assert!(matches!(
        send(s.as_mut(), Channel::Email, &salt, &mailed, NOW + 1),
        SendGrant::Granted { .. }
    ));
    assert!(accepted(&redeem_sent(
        s.as_mut(),
        Channel::Email,
        &mailed,
        &salt,
        NOW + 2
    )));
    // The first code of the app activates it, with the new codes.
    assert!(s
        .confirm("u", &step(10), NOW + 3, &audit(Fact::Confirmed))
        .unwrap()
        .is_some());
    assert!(accepted(&redeem(
        s.as_mut(),
        &backup(&new[0].0, &salt),
        NOW + 4,
        9
    )));
}

/// A delivery channel set up while an app's enrolment is pending gives the
/// user a set of backup codes that works now. The app's activation later
/// shows no other set: the one made with the enrolment is void.
pub fn a_delivery_channel_over_a_pending_enrolment_leaves_no_stale_codes_to_show(b: &dyn Backend) {
    let mut s = b.open();
    let (salt, old) = pending_user(s.as_mut(), 2);
    let to = audit(Fact::ContactSet {
        channel: Channel::Email,
        to: Some("x".into()),
    });
    s.set_contact("u", Channel::Email, Some("u@example.com"), &salt, NOW, &to)
        .unwrap();
    let set = codes::backup_set(2, &salt);
    let hashes: Vec<_> = set.iter().map(|(_, h)| *h).collect();
    let enrolled = audit(Fact::DeliveryEnrolled {
        channel: Channel::Email,
    });
    assert!(s
        .set_delivery("u", Channel::Email, &salt, &hashes, NOW, &enrolled)
        .unwrap());
    match redeem(s.as_mut(), &totp(11), NOW, 9) {
        Verdict::Accepted {
            factor: Factor::Totp,
            activated_codes,
            ..
        } => assert!(
            activated_codes.unwrap_or_default().is_empty(),
            "codes that no longer work"
        ),
        v => panic!("the app's code: {v:?}"),
    }
    assert!(rejected(&redeem(
        s.as_mut(),
        &backup(&old[0], &salt),
        NOW,
        9
    )));
    assert!(accepted(&redeem(
        s.as_mut(),
        &backup(&set[0].0, &salt),
        NOW,
        9
    )));
}

/// A delivery channel is a factor: the user is enrolled, gets backup codes
/// that work at once if they held none, and `reset` removes it all but
/// keeps the contacts.
pub fn a_delivery_channel_is_a_factor_with_backup_codes(b: &dyn Backend) {
    let mut s = b.open();
    let salt = known_user(s.as_mut());
    let set = codes::backup_set(2, &salt);
    let hashes: Vec<_> = set.iter().map(|(_, h)| *h).collect();
    let enrolled = audit(Fact::DeliveryEnrolled {
        channel: Channel::Email,
    });
    let to = audit(Fact::ContactSet {
        channel: Channel::Email,
        to: Some("x".into()),
    });
    s.set_contact("u", Channel::Email, Some("u@example.com"), &salt, NOW, &to)
        .unwrap();
    assert!(s
        .set_delivery("u", Channel::Email, &salt, &hashes, NOW, &enrolled)
        .unwrap());
    let r = s.user("u").unwrap().unwrap();
    assert!(r.has_factor() && r.state == TotpState::None);
    assert_eq!(r.methods(false), vec![Factor::Backup, Factor::Email]);
    // A second channel keeps the codes the user holds.
    let other: Vec<_> = codes::backup_set(2, &salt)
        .iter()
        .map(|(_, h)| *h)
        .collect();
    assert!(!s
        .set_delivery("u", Channel::Sms, &salt, &other, NOW, &enrolled)
        .unwrap());
    assert!(accepted(&redeem(
        s.as_mut(),
        &backup(&set[0].0, &salt),
        NOW,
        9
    )));
    let c = Code::generate_digits(6);
    send(s.as_mut(), Channel::Sms, &salt, &c, NOW);
    assert!(s.reset("u", NOW, &audit(Fact::Reset)).unwrap());
    let r = s.user("u").unwrap().unwrap();
    assert_eq!(
        (r.has_factor(), r.backup_codes_left(), r.email.as_deref()),
        (false, 0, Some("u@example.com"))
    );
    assert!(rejected(&redeem_sent(
        s.as_mut(),
        Channel::Sms,
        &c,
        &salt,
        NOW
    )));
    assert!(matches!(
        s.set_delivery(
            "u",
            Channel::Sms,
            &codes::new_salt(),
            &other,
            NOW,
            &enrolled
        ),
        Err(Error::Changed { .. })
    ));
}

/// Many logins asking for a code at once never send more than the limit.
pub fn parallel_sends_never_exceed_the_resend_limit(b: &dyn Backend) {
    let salt = known_user(b.open().as_mut());
    let gate = std::sync::Barrier::new(8);
    let granted = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let mut s = b.open();
                    let c = Code::generate_digits(6);
                    gate.wait();
                    send(s.as_mut(), Channel::Email, &salt, &c, NOW)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|g| matches!(g, SendGrant::Granted { .. }))
            .count()
    });
    assert_eq!(granted, LIMIT.max as usize);
}

/// One sent code offered by many parallel logins: exactly one succeeds.
pub fn parallel_logins_with_one_sent_code_exactly_one_succeeds(b: &dyn Backend) {
    let salt = known_user(b.open().as_mut());
    let c = Code::generate_digits(6);
    send(b.open().as_mut(), Channel::Sms, &salt, &c, NOW);
    let offer = sent_offer(Channel::Sms, &c, &salt);
    let verdicts = in_parallel(b, 12, |s| redeem(s, &offer, NOW, 100));
    assert_eq!(verdicts.iter().filter(|v| accepted(v)).count(), 1);
}

/// A snapshot holds every row, used state and audit included; it is never
/// loaded into a store that has users (nothing is written then).
pub fn a_snapshot_holds_every_row_and_loads_only_into_an_empty_store(b: &dyn Backend) {
    let mut s = b.open();
    let (salt, set) = active_user(s.as_mut(), 3);
    assert!(accepted(&redeem(
        s.as_mut(),
        &backup(&set[0], &salt),
        NOW,
        9
    )));
    let c = Code::generate(codes::RECOVERY_LEN);
    let issued = audit(Fact::RecoveryIssued { until: NOW + 60 });
    s.add_recovery("u", &salt, &c.hash(&salt), NOW + 60, NOW, &issued)
        .unwrap();
    let sent = Code::generate_digits(6);
    let phone = audit(Fact::ContactSet {
        channel: Channel::Sms,
        to: Some("+44********00".into()),
    });
    s.set_contact("u", Channel::Sms, Some("+4420794600"), &salt, NOW, &phone)
        .unwrap();
    send(s.as_mut(), Channel::Sms, &salt, &sent, NOW);
    s.redeem(
        "u",
        &totp(11),
        NOW,
        &lockout(9),
        &ctx(),
        Some(("laptop", NOW + 99)),
    )
    .unwrap();
    let snap = s.snapshot().unwrap();
    let counts: std::collections::BTreeMap<_, _> = snap.counts().into_iter().collect();
    assert_eq!(counts["users"], 1);
    assert_eq!(counts["backup codes"], 3);
    assert_eq!(counts["recovery codes"], 1);
    assert_eq!(counts["SMS codes"], 1);
    assert_eq!(counts["remembered hosts"], 1);
    assert!(counts["audit rows"] >= 4, "{counts:?}");
    let u = &snap.users[0];
    assert_eq!(
        (u.state.as_str(), u.last_step, u.code_salt.clone()),
        ("active", 11, salt)
    );
    assert_eq!(
        snap.codes
            .iter()
            .filter(|c| c.kind == CodeKind::Backup && c.used_at == Some(NOW))
            .count(),
        1
    );
    assert!(matches!(s.load_snapshot(&snap), Err(Error::Store { .. })));
    assert_eq!(s.snapshot().unwrap(), snap, "a refused load wrote nothing");
}

/// A load that does not leave the store holding what the snapshot holds
/// (here a remembered host listed twice, which the store keeps once) fails
/// before it commits: the store stays empty, so a good copy can go in
/// afterwards.
pub fn a_load_that_does_not_hold_the_snapshot_writes_nothing(b: &dyn Backend) {
    let mut s = b.open();
    let user = UserRow {
        name: "u".into(),
        state: "none".into(),
        disabled: false,
        secret: None,
        pending_codes: None,
        code_salt: codes::new_salt(),
        last_step: -1,
        failures: 0,
        locked_until: None,
        lock_level: 0,
        last_success: None,
        enrolled_by: "admin".into(),
        email: None,
        phone: None,
        delivery: None,
        created_at: NOW,
        updated_at: NOW,
    };
    let host = ("u".to_string(), "laptop".to_string(), NOW + 99);
    let good = Snapshot {
        users: vec![user],
        remembered: vec![host.clone()],
        audit: vec![audit(Fact::Unlocked)],
        ..Snapshot::default()
    };
    let mut bad = good.clone();
    bad.remembered.push(host);
    assert!(matches!(s.load_snapshot(&bad), Err(Error::Store { .. })));
    assert_eq!(s.snapshot().unwrap(), Snapshot::default());
    assert_eq!(s.load_snapshot(&good).unwrap(), good.counts());
    assert_eq!(s.snapshot().unwrap(), good);
}
