//! What the store keeps and what a login attempt decides: plain data, and
//! the rules decided from it (the lockout arithmetic), written once here
//! for every store backend.
use crate::codes::HASH_LEN;
use crate::config::LockoutConfig;
use crate::crypto::{HostKey, Secret};
use crate::delivery::Channel;
use crate::error::Result;
use subtle::ConstantTimeEq;

/// Enrolment state of a user's TOTP factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpState {
    /// No TOTP secret.
    None,
    /// A secret was made, no code from it accepted yet.
    Pending,
    /// A code from the secret was accepted: the factor is in use.
    Active,
}

impl TotpState {
    /// The state as the store and `status` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            TotpState::None => "none",
            TotpState::Pending => "pending",
            TotpState::Active => "active",
        }
    }

    /// Read a stored state; anything unknown is `None` (no factor).
    pub fn parse(s: &str) -> TotpState {
        match s {
            "pending" => TotpState::Pending,
            "active" => TotpState::Active,
            _ => TotpState::None,
        }
    }
}

/// The lockout counters of one user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockState {
    /// Wrong codes in a row (attempts counted, not yet cleared by a success).
    pub failures: u32,
    /// When the current or last lock ends.
    pub locked_until: Option<i64>,
    /// Locks since the last success or `unlock`: the next lasts
    /// `lock_seconds × 2^level`, up to `max_lock_seconds`.
    pub level: u32,
}

impl LockState {
    /// Locked at `now`: the time the lock ends.
    pub fn locked_at(&self, now: i64) -> Option<i64> {
        self.locked_until.filter(|&t| t > now)
    }

    /// The state after counting one more attempt as a failure, before the
    /// attempt is checked (a success clears it again). After a lock has
    /// expired the count starts over; reaching `max_failures` locks the
    /// user, for `lock_seconds` the first time and twice as long at each
    /// further lock without a success in between, up to `max_lock_seconds`.
    pub fn after_attempt(&self, cfg: &LockoutConfig, now: i64) -> LockState {
        let failures = if self.locked_until.is_some() {
            1
        } else {
            self.failures.saturating_add(1)
        };
        if failures < cfg.max_failures {
            return LockState {
                failures,
                locked_until: None,
                level: self.level,
            };
        }
        LockState {
            failures,
            locked_until: Some(now.saturating_add(lock_length(cfg, self.level))),
            level: self.level.saturating_add(1),
        }
    }
}

/// How long the lock that follows `level` earlier ones lasts.
pub fn lock_length(cfg: &LockoutConfig, level: u32) -> i64 {
    let doubled = 1i64
        .checked_shl(level.min(62))
        .and_then(|f| cfg.lock_seconds.checked_mul(f))
        .unwrap_or(i64::MAX);
    doubled.min(cfg.max_lock_seconds)
}

/// Who made a TOTP enrolment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An administrator (`crm2fa-admin enroll`): the secret went to them.
    Admin,
    /// The user's own login (`unenrolled = "enroll"`): the secret was shown
    /// to whoever passed the password step.
    Login,
}

impl Origin {
    /// The word the store keeps.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Admin => "admin",
            Origin::Login => "login",
        }
    }

    /// Read a stored word; anything unknown is [`Origin::Admin`], whose
    /// secret a login never shows.
    pub fn parse(s: &str) -> Origin {
        match s {
            "login" => Origin::Login,
            _ => Origin::Admin,
        }
    }
}

/// What the store knows about one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The account name.
    pub name: String,
    /// TOTP enrolment state.
    pub state: TotpState,
    /// 2FA turned off for this user (`disable`); factors are kept.
    pub disabled: bool,
    /// The sealed TOTP secret (see [`HostKey::open`]).
    pub secret: Option<Vec<u8>>,
    /// Who made the TOTP enrolment.
    pub enrolled_by: Origin,
    /// Salt of the user's backup and recovery code hashes: set when the
    /// store first hears of the user, never changed.
    pub code_salt: Vec<u8>,
    /// Newest TOTP step accepted (-1: none).
    pub last_step: i64,
    /// Lockout counters.
    pub lock: LockState,
    /// Time of the last successful code.
    pub last_success: Option<i64>,
    /// Unused backup codes, whatever the enrolment's state (see
    /// [`UserRecord::backup_codes_left`]).
    pub unused_backup_codes: u32,
    /// Where email codes and notices go.
    pub email: Option<String>,
    /// Where SMS codes go.
    pub phone: Option<String>,
    /// The channel the user gets codes by without asking (`enroll
    /// --method email|sms`): a factor of its own.
    pub delivery: Option<Channel>,
}

impl UserRecord {
    /// A record for a user the store has just been told about.
    pub fn new(name: &str, code_salt: Vec<u8>) -> UserRecord {
        UserRecord {
            name: name.into(),
            state: TotpState::None,
            disabled: false,
            secret: None,
            enrolled_by: Origin::Admin,
            code_salt,
            last_step: -1,
            lock: LockState::default(),
            last_success: None,
            unused_backup_codes: 0,
            email: None,
            phone: None,
            delivery: None,
        }
    }

    /// Locked at `now`: the time the lock ends.
    pub fn locked_at(&self, now: i64) -> Option<i64> {
        self.lock.locked_at(now)
    }

    /// Has a TOTP secret, pending or active.
    pub fn has_totp(&self) -> bool {
        matches!(self.state, TotpState::Pending | TotpState::Active) && self.secret.is_some()
    }

    /// Has any factor, pending or active: a TOTP enrolment or a delivery
    /// channel.
    pub fn has_factor(&self) -> bool {
        matches!(self.state, TotpState::Pending | TotpState::Active) || self.delivery.is_some()
    }

    /// Backup codes can be redeemed: the TOTP enrolment is active, or
    /// codes are sent by a delivery channel (a pending TOTP enrolment's
    /// codes wait for its first TOTP code).
    pub fn backup_codes_usable(&self) -> bool {
        self.state == TotpState::Active || self.delivery.is_some()
    }

    /// Whether `totp` may be used for `use_`: its secret is still the
    /// user's, the enrolment in a state `use_` allows, and its step newer
    /// than every step used before.
    pub fn step_usable(&self, totp: &TotpMatch, use_: StepUse) -> bool {
        let state = match use_ {
            StepUse::Login => matches!(self.state, TotpState::Pending | TotpState::Active),
            StepUse::Activation => self.state == TotpState::Pending,
        };
        state
            && totp.step > self.last_step
            && self
                .secret
                .as_deref()
                .is_some_and(|s| bool::from(s.ct_eq(&totp.sealed_secret)))
    }

    /// Where codes sent by `channel` go, if the user has that contact.
    pub fn contact(&self, channel: Channel) -> Option<&str> {
        match channel {
            Channel::Email => self.email.as_deref(),
            Channel::Sms => self.phone.as_deref(),
        }
    }

    /// The record as a login's success at `now` with `factor` leaves it: a
    /// TOTP code activates a pending enrolment, a backup code is used up,
    /// the lock counters are cleared.
    pub fn after_success(&self, factor: Factor, now: i64) -> UserRecord {
        let mut r = self.clone();
        match factor {
            Factor::Totp => r.state = TotpState::Active,
            Factor::Backup => r.unused_backup_codes = r.unused_backup_codes.saturating_sub(1),
            Factor::Recovery | Factor::Email | Factor::Sms => {}
        }
        r.lock = LockState::default();
        r.last_success = Some(now);
        r
    }

    /// Backup codes a login would accept.
    pub fn backup_codes_left(&self) -> u32 {
        if self.backup_codes_usable() {
            self.unused_backup_codes
        } else {
            0
        }
    }

    /// The factors a login would accept from this user now; `has_recovery`:
    /// they hold an unused, unexpired recovery code. Whether the user is
    /// asked at all is the policy's decision.
    pub fn methods(&self, has_recovery: bool) -> Vec<Factor> {
        let mut out = vec![];
        if self.has_totp() {
            out.push(Factor::Totp);
        }
        if self.backup_codes_left() > 0 {
            out.push(Factor::Backup);
        }
        if has_recovery {
            out.push(Factor::Recovery);
        }
        if let Some(c) = self.delivery {
            out.push(Factor::sent(c));
        }
        out
    }

    /// The TOTP secret, decrypted with the host key, if the user has one.
    pub fn open_totp_secret(&self, key: &HostKey) -> Result<Option<Secret>> {
        match (&self.secret, self.has_totp()) {
            (Some(sealed), true) => key.open(&self.name, sealed).map(Some),
            _ => Ok(None),
        }
    }

    /// State as `status` reports it: none, pending, active or disabled. A
    /// delivery channel is an active factor too (codes sent without asking).
    pub fn display_state(&self) -> &'static str {
        if self.disabled {
            "disabled"
        } else if self.state == TotpState::None && self.delivery.is_some() {
            TotpState::Active.as_str()
        } else {
            self.state.as_str()
        }
    }
}

/// A kind of second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    /// A code from the authenticator app.
    Totp,
    /// A single-use backup code.
    Backup,
    /// A temporary single-use recovery code.
    Recovery,
    /// A code sent by email.
    Email,
    /// A code sent by SMS.
    Sms,
}

impl Factor {
    /// The factor's name in the audit log and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Factor::Totp => "totp",
            Factor::Backup => "backup",
            Factor::Recovery => "recovery",
            Factor::Email => "email",
            Factor::Sms => "sms",
        }
    }

    /// The factor of a code sent by `channel`.
    pub fn sent(channel: Channel) -> Factor {
        match channel {
            Channel::Email => Factor::Email,
            Channel::Sms => Factor::Sms,
        }
    }
}

/// The kinds of single-use code kept as hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    /// Backup codes: a set per enrolment, usable once it is active.
    Backup,
    /// Recovery codes: one at a time, until it expires.
    Recovery,
    /// A code sent by email: one outstanding at a time, until it expires.
    Email,
    /// A code sent by SMS: one outstanding at a time, until it expires.
    Sms,
}

impl CodeKind {
    /// Every kind, in the order a login tries them.
    pub const ALL: [CodeKind; 4] = [
        CodeKind::Backup,
        CodeKind::Recovery,
        CodeKind::Email,
        CodeKind::Sms,
    ];

    /// Is `code` shaped like a code of this kind? Sent codes are `digits`
    /// digits, as TOTP codes are.
    pub fn shapes(self, code: &crate::codes::Code, digits: u32) -> bool {
        match self {
            CodeKind::Backup => code.is_code_of_len(crate::codes::BACKUP_LEN),
            CodeKind::Recovery => code.is_code_of_len(crate::codes::RECOVERY_LEN),
            CodeKind::Email | CodeKind::Sms => code.is_digits(digits as usize),
        }
    }

    /// The factor a code of this kind is.
    pub fn factor(self) -> Factor {
        match self {
            CodeKind::Backup => Factor::Backup,
            CodeKind::Recovery => Factor::Recovery,
            CodeKind::Email => Factor::Email,
            CodeKind::Sms => Factor::Sms,
        }
    }

    /// The kind of code sent by `channel`.
    pub fn sent(channel: Channel) -> CodeKind {
        match channel {
            Channel::Email => CodeKind::Email,
            Channel::Sms => CodeKind::Sms,
        }
    }

    /// Codes of this kind expire (recovery and sent codes).
    pub fn expires(self) -> bool {
        self != CodeKind::Backup
    }

    /// Only the user's newest code of this kind can be valid (sent codes):
    /// a new one voids those before it without rewriting them, on every
    /// host whatever its clock, and taking it back gives the one before
    /// it back.
    pub fn newest_only(self) -> bool {
        matches!(self, CodeKind::Email | CodeKind::Sms)
    }
}

/// An unused code as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCode {
    /// The row that holds it.
    pub id: i64,
    /// argon2id of the code under the user's salt.
    pub hash: Vec<u8>,
}

/// A TOTP code matched time step `step` of the secret that was stored
/// sealed as `sealed_secret` when it was read. The consuming write checks
/// both, so a code of a secret replaced meanwhile (re-enrolment during an
/// open login) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpMatch {
    /// The time step the code belongs to.
    pub step: i64,
    /// The sealed secret it was computed from.
    pub sealed_secret: Vec<u8>,
}

/// What a TOTP step is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepUse {
    /// A login: the enrolment may be pending (then activated) or active.
    Login,
    /// `confirm`: only a pending enrolment.
    Activation,
}

/// What a login attempt offers, worked out before the write lock is taken:
/// the TOTP step the code matched, and the argon2 hash of the code under the
/// user's salt with the kinds of code it is shaped like (one hash serves
/// every kind: they share the salt).
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    /// The TOTP step the code matched.
    pub totp: Option<TotpMatch>,
    /// The hash of the code, if it is shaped like a code the user holds.
    pub hash: Option<[u8; HASH_LEN]>,
    /// The kinds of code `hash` is offered as.
    pub kinds: Vec<CodeKind>,
}

impl Candidate {
    /// A code offered as a code of `kind` only.
    pub fn code(kind: CodeKind, hash: [u8; HASH_LEN]) -> Candidate {
        Candidate {
            totp: None,
            hash: Some(hash),
            kinds: vec![kind],
        }
    }

    /// The hash offered for codes of `kind`.
    pub fn hash(&self, kind: CodeKind) -> Option<&[u8; HASH_LEN]> {
        self.hash.as_ref().filter(|_| self.kinds.contains(&kind))
    }
}

/// A new enrolment as the store keeps it: all secrets already sealed or hashed.
#[derive(Debug, Clone, Copy)]
pub struct NewEnrollment<'a> {
    /// The sealed TOTP secret.
    pub sealed_secret: &'a [u8],
    /// The salt the backup codes were hashed with: the user's (see
    /// [`UserRecord::code_salt`]), or a new one for a user the store does
    /// not know yet.
    pub code_salt: &'a [u8],
    /// The new backup codes, hashed.
    pub backup_hashes: &'a [[u8; HASH_LEN]],
    /// The new backup codes, sealed, to show once at activation.
    pub sealed_codes: &'a [u8],
    /// Replace a pending or active enrolment; otherwise only a user with no
    /// factor is enrolled.
    pub replace: bool,
    /// The user's factors as whoever agreed to replace them saw them: the
    /// enrolment is written only while they are still these (else
    /// [`crate::Error::Changed`], and nothing is written). `None`: not
    /// checked.
    pub seen: Option<&'a SeenFactors>,
    /// Who makes it.
    pub origin: Origin,
}

/// A user's factors as an administrator saw them before agreeing to
/// replace them (or seeing none, to replace nothing): the TOTP state and
/// sealed secret, and the delivery channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenFactors {
    state: TotpState,
    secret: Option<Vec<u8>>,
    delivery: Option<Channel>,
}

impl SeenFactors {
    /// The factors of `record`; none for a user the store does not know.
    pub fn of(record: Option<&UserRecord>) -> SeenFactors {
        SeenFactors {
            state: record.map_or(TotpState::None, |r| r.state),
            secret: record.and_then(|r| r.secret.clone()),
            delivery: record.and_then(|r| r.delivery),
        }
    }
}

/// The outcome of one login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A factor matched and was consumed.
    Accepted {
        /// Which one.
        factor: Factor,
        /// Sealed backup codes to show once: set when this login activated a pending enrolment.
        activated_codes: Option<Vec<u8>>,
        /// Unused backup codes after this attempt.
        backup_codes_left: u32,
    },
    /// Nothing matched; the attempt counted as a failure.
    Rejected {
        /// Wrong codes in a row, this one included.
        failures: u32,
        /// It was the user's TOTP code of a step already used (typed twice,
        /// or replayed): refused and counted as any wrong code, and said
        /// so in the audit.
        reused: bool,
        /// Set when this failure locked the user.
        locked_until: Option<i64>,
    },
    /// The user was locked: nothing was checked.
    Locked {
        /// When the lock ends.
        until: i64,
    },
    /// The store has no record of the user.
    UnknownUser,
}

/// One user's row exactly as a store keeps it, for copying a whole store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// The account name.
    pub name: String,
    /// `none`, `pending` or `active`.
    pub state: String,
    /// 2FA turned off.
    pub disabled: bool,
    /// The sealed TOTP secret.
    pub secret: Option<Vec<u8>>,
    /// Sealed backup codes kept for display at activation.
    pub pending_codes: Option<Vec<u8>>,
    /// Salt of the user's code hashes.
    pub code_salt: Vec<u8>,
    /// Newest TOTP step accepted.
    pub last_step: i64,
    /// Wrong codes in a row.
    pub failures: i64,
    /// When the lock ends.
    pub locked_until: Option<i64>,
    /// Locks since the last success.
    pub lock_level: i64,
    /// The last successful code.
    pub last_success: Option<i64>,
    /// `admin` or `login`.
    pub enrolled_by: String,
    /// Email contact.
    pub email: Option<String>,
    /// Phone contact.
    pub phone: Option<String>,
    /// `email`, `sms` or none.
    pub delivery: Option<String>,
    /// When the store first heard of the user.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
}

/// One code's row exactly as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRow {
    /// Which kind.
    pub kind: CodeKind,
    /// Whose.
    pub user: String,
    /// argon2id of the code.
    pub hash: Vec<u8>,
    /// When made.
    pub created_at: i64,
    /// When it expires (codes that expire).
    pub expires_at: Option<i64>,
    /// When used.
    pub used_at: Option<i64>,
}

/// Everything a store holds, for `store copy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every user.
    pub users: Vec<UserRow>,
    /// Every code, used or not, of every kind.
    pub codes: Vec<CodeRow>,
    /// Remembered hosts: user, host, until.
    pub remembered: Vec<(String, String, i64)>,
    /// The audit log, oldest first.
    pub audit: Vec<crate::audit::AuditEntry>,
}

impl Snapshot {
    /// Rows per table, for comparing two stores: users, backup, recovery,
    /// email and SMS codes, remembered hosts, audit rows.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let codes = |k: CodeKind| self.codes.iter().filter(|c| c.kind == k).count();
        vec![
            ("users", self.users.len()),
            ("backup codes", codes(CodeKind::Backup)),
            ("recovery codes", codes(CodeKind::Recovery)),
            ("email codes", codes(CodeKind::Email)),
            ("SMS codes", codes(CodeKind::Sms)),
            ("remembered hosts", self.remembered.len()),
            ("audit rows", self.audit.len()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: u32) -> LockoutConfig {
        LockoutConfig {
            max_failures: max,
            lock_seconds: 60,
            max_lock_seconds: 300,
        }
    }

    #[test]
    fn failures_count_up_and_lock_at_the_limit() {
        let c = cfg(3);
        let one = LockState::default().after_attempt(&c, 100);
        assert_eq!((one.failures, one.locked_until, one.level), (1, None, 0));
        let three = one.after_attempt(&c, 101).after_attempt(&c, 102);
        assert_eq!(
            (three.failures, three.locked_until, three.level),
            (3, Some(162), 1)
        );
        assert_eq!(three.locked_at(161), Some(162));
        assert_eq!(three.locked_at(162), None, "the lock ends at its time");
    }

    #[test]
    fn count_starts_over_after_an_expired_lock_but_the_level_stays() {
        let c = cfg(3);
        let expired = LockState {
            failures: 3,
            locked_until: Some(50),
            level: 1,
        };
        let next = expired.after_attempt(&c, 100);
        assert_eq!((next.failures, next.locked_until, next.level), (1, None, 1));
    }

    #[test]
    fn each_further_lock_doubles_up_to_the_maximum() {
        let c = cfg(1);
        let mut s = LockState::default();
        let mut lengths = vec![];
        for i in 0..6 {
            let now = 1000 * (i + 1);
            s = s.after_attempt(&c, now);
            lengths.push(s.locked_until.unwrap() - now);
        }
        assert_eq!(lengths, vec![60, 120, 240, 300, 300, 300]);
        assert_eq!(s.level, 6);
        assert_eq!(lock_length(&c, u32::MAX), 300, "no overflow");
    }

    #[test]
    fn one_allowed_failure_locks_at_once() {
        let s = LockState::default().after_attempt(&cfg(1), 10);
        assert_eq!(s.locked_until, Some(70));
    }
}
