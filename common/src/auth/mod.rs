//! The login (`pam_sm_authenticate`), behind one [`Conversation`] trait so
//! it can be driven by libpam or by a scripted conversation in tests.
//!
//! The steps, in order: decide whether this user is asked
//! ([`Ops::decide`]); refuse a locked user without checking anything;
//! handle a required user without a factor (`unenrolled`); then prompt and
//! redeem what the user types ([`crate::store`]'s `redeem`), showing new
//! backup codes when the first code activated an enrolment.
use crate::account::Account;
use crate::audit::{AuditCtx, Fact, Logger};
use crate::codes::Code;
use crate::config::{Config, FailMode, Unenrolled};
use crate::crypto::{HostKey, Secret};
use crate::error::Error;
use crate::model::{
    Candidate, CodeKind, Factor, Origin, TotpMatch, TotpState, UserRecord, Verdict,
};
use crate::ops::{self, Drift, Ops};
use crate::policy;
use crate::qr::{self, QrStyle};
use crate::store::{self, Store};
use crate::totp;

mod args;
mod conversation;

pub use args::{ModuleArgs, NonRoot};
pub use conversation::{ConvError, Conversation, INVALID, PROMPT, SAVED_PROMPT};

/// What the login decided, mapped to a PAM code by the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// PAM_SUCCESS
    Success,
    /// PAM_IGNORE: 2FA not needed here.
    Ignore,
    /// PAM_AUTH_ERR: wrong code(s) or refused.
    AuthErr,
    /// PAM_MAXTRIES: locked.
    MaxTries,
    /// PAM_AUTHINFO_UNAVAIL: config or store error.
    Unavailable,
    /// PAM_USER_UNKNOWN: no such account.
    UserUnknown,
}

/// The time source of a login: read again after every answer, since a code
/// is typed well after the prompt was sent.
pub type Clock = std::sync::Arc<dyn Fn() -> i64 + Send + Sync>;

/// Who is logging in, from where, and the clock.
#[derive(Clone)]
pub struct Request {
    /// The user name: as typed in [`run`]; the account's canonical name in
    /// [`authenticate`].
    pub user: String,
    /// The PAM service.
    pub service: String,
    /// The remote host (PAM_RHOST), empty when local or unknown.
    pub rhost: String,
    /// The clock.
    pub clock: Clock,
    /// The effective uid of the program calling PAM.
    pub caller_uid: u32,
}

impl Request {
    /// The time now, in seconds since the epoch.
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    fn audit_ctx(&self) -> AuditCtx {
        AuditCtx::here(&self.service, &self.rhost)
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("user", &self.user)
            .field("service", &self.service)
            .field("rhost", &self.rhost)
            .finish()
    }
}

/// A login that failed on an error, and whether it had asked for a code.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: Error,
    /// The user had been prompted for a code already.
    pub prompted: bool,
}

/// Run the whole login: check the caller, load the config, find the
/// account, open the store, then [`authenticate`].
pub fn run(
    args: &ModuleArgs,
    req: &Request,
    conv: &mut dyn Conversation,
    log: &mut Logger,
) -> Outcome {
    for a in &args.unknown {
        log.warn(&format!("ignoring unknown module argument {a:?}"));
    }
    if req.caller_uid != 0 {
        // A screen locker runs PAM as the user, who cannot read the
        // configuration: say so rather than blame the files.
        let why = format!(
            "the calling program runs as uid {}, not root (a screen locker?), and cannot \
             read the configuration",
            req.caller_uid
        );
        return match args.nonroot {
            NonRoot::Ignore => {
                log.info(&format!(
                    "second factor of {} not checked: {why}; nonroot=ignore lets the password decide",
                    req.user
                ));
                Outcome::Ignore
            }
            NonRoot::Deny => {
                log.warn(&format!(
                    "login of {} denied (nonroot=deny): {why}",
                    req.user
                ));
                Outcome::AuthErr
            }
        };
    }
    if !args.config.is_absolute() {
        // Relative to what? Under su or sudo the caller picks the directory.
        log.error(&format!(
            "login of {} denied: config={} must be an absolute path",
            req.user,
            args.config.display()
        ));
        return Outcome::Unavailable;
    }
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            // An unreadable or invalid config always denies.
            log.error(&format!(
                "login of {} denied: configuration error: {e}",
                req.user
            ));
            return Outcome::Unavailable;
        }
    };
    // The account, not the spelling: the store, groups, protected users and
    // the audit all use the canonical name.
    let account = match Account::lookup(&req.user) {
        Ok(Some(a)) => a,
        Ok(None) => {
            log.warn(&format!(
                "login of {:?} denied: no such account (NSS does not know the name)",
                req.user
            ));
            return Outcome::UserUnknown;
        }
        Err(e) => {
            log.error(&format!("login of {} denied: {e}", req.user));
            return Outcome::Unavailable;
        }
    };
    let req = Request {
        user: account.name,
        ..req.clone()
    };
    let mut store = match store::open(&cfg.store) {
        Ok(s) => s,
        Err(error) => {
            let f = Failure {
                error,
                prompted: false,
            };
            return failed(&cfg, &req, log, &f);
        }
    };
    match authenticate(&cfg, store.as_mut(), args.qr, &req, conv, log) {
        Ok(o) => o,
        Err(f) => failed(&cfg, &req, log, &f),
    }
}

/// The store or the key cannot be used: what `failmode = "safe"` may skip.
fn store_or_key(e: &Error) -> bool {
    matches!(
        e,
        Error::Store { .. }
            | Error::StoreMissing { .. }
            | Error::StoreSchema { .. }
            | Error::Conflict { .. }
            | Error::Key { .. }
            | Error::Decrypt { .. }
            | Error::Permissions { .. }
            | Error::Io { .. }
    )
}

/// A login that failed on an error: deny, saying why in syslog. Only a
/// store or key that cannot be used before the first prompt, under
/// `failmode = "safe"`, lets the password decide instead.
fn failed(cfg: &Config, req: &Request, log: &mut Logger, f: &Failure) -> Outcome {
    let e = &f.error;
    match cfg.policy.failmode {
        FailMode::Safe if !f.prompted && store_or_key(e) => {
            log.error(&format!(
                "second factor of {} skipped (failmode = safe): {e}",
                req.user
            ));
            Outcome::Ignore
        }
        FailMode::Safe => {
            let when = if f.prompted {
                "a code was already asked for"
            } else {
                "not a store or key that cannot be used"
            };
            log.error(&format!(
                "login of {} denied (failmode = safe does not apply: {when}): {e}",
                req.user
            ));
            Outcome::Unavailable
        }
        FailMode::Secure => {
            log.error(&format!(
                "login of {} denied (failmode = secure): {e}",
                req.user
            ));
            Outcome::Unavailable
        }
    }
}

/// One login in progress.
struct Login<'a> {
    ops: Ops<'a>,
    req: &'a Request,
    conv: &'a mut dyn Conversation,
    qr: QrStyle,
    /// A code was asked for: from here on every error denies.
    prompted: bool,
}

impl Login<'_> {
    fn user(&self) -> &str {
        &self.req.user
    }

    /// Write a decision to the audit table and syslog.
    fn record(&mut self, fact: Fact) -> Result<(), Error> {
        let now = self.req.now();
        self.ops.record(now, &self.req.user, &fact)
    }

    /// The login's remote host, if `[remember]` is on and it is one that
    /// can be remembered.
    fn remembered_host(&self) -> Option<String> {
        let rhost = self.req.rhost.as_str();
        (self.ops.cfg.remember_days > 0 && policy::rememberable_host(rhost, &self.ops.ctx.host))
            .then(|| rhost.to_string())
    }

    /// Record a login that needs no code and let it through: if the audit
    /// row cannot be written (a long administrative transaction holds the
    /// store), syslog has the line and the login is not refused for it.
    fn let_through(&mut self, fact: Fact) -> Outcome {
        if let Err(e) = self.record(fact) {
            let msg = format!(
                "the audit row of {}'s login could not be written ({e}); no code is needed, \
                 the login goes on",
                self.req.user
            );
            self.ops.log.warn(&msg);
        }
        Outcome::Ignore
    }

    fn locked_message(&mut self, until: i64) {
        let minutes = ((until - self.req.now()).max(1) + 59) / 60;
        self.conv.error(&format!(
            "Too many wrong codes: this account is locked until {} (in about {minutes} min). \
             Try again then, or ask an administrator to unlock it.",
            crate::rfc3339(until)
        ));
    }
}

/// The login sequence of the design, on an open store, for the account
/// named `req.user` (its canonical name).
pub fn authenticate(
    cfg: &Config,
    store: &mut dyn Store,
    qr: QrStyle,
    req: &Request,
    conv: &mut dyn Conversation,
    log: &mut Logger,
) -> Result<Outcome, Failure> {
    let mut l = Login {
        ops: Ops {
            cfg,
            store,
            log,
            ctx: req.audit_ctx(),
        },
        req,
        conv,
        qr,
        prompted: false,
    };
    steps(&mut l).map_err(|error| Failure {
        error,
        prompted: l.prompted,
    })
}

/// The steps of the login, in order.
fn steps(l: &mut Login<'_>) -> Result<Outcome, Error> {
    let (cfg, req) = (l.ops.cfg, l.req);
    let user = req.user.as_str();
    let host = l.remembered_host();
    let view = l.ops.store.login_view(user, host.as_deref(), req.now())?;
    let (record, has_recovery) = (view.user, view.has_recovery);
    let decision = l.ops.decide_with(user, record.as_ref(), has_recovery)?;
    if !decision.ask {
        return Ok(l.let_through(Fact::NotRequired {
            reason: decision.reason,
        }));
    }
    // A lock holds whatever else the user has or lacks.
    if let Some(until) = record.as_ref().and_then(|r| r.locked_at(req.now())) {
        l.locked_message(until);
        l.record(Fact::Locked { until })?;
        return Ok(Outcome::MaxTries);
    }
    if let Some(until) = view.remembered_until {
        return Ok(l.let_through(Fact::RememberedHost {
            host: req.rhost.clone(),
            until,
        }));
    }
    let enrolled = record
        .as_ref()
        .is_some_and(|r| matches!(r.state, TotpState::Pending | TotpState::Active));
    if !enrolled && !has_recovery {
        return match cfg.policy.unenrolled {
            Unenrolled::Deny => {
                l.conv.error(
                    "Two-factor authentication is required for this account, but it has no \
                     second factor set up. Ask an administrator to enrol you.",
                );
                l.record(Fact::UnenrolledDenied)?;
                Ok(Outcome::AuthErr)
            }
            Unenrolled::Allow => Ok(l.let_through(Fact::UnenrolledAllowed)),
            Unenrolled::Enroll => enroll_during_login(l),
        };
    }
    // Only a recovery code makes a row too, when it is issued.
    let record = record.ok_or_else(|| Error::NotEnrolled { user: user.into() })?;
    let secret = if record.has_totp() {
        record.open_totp_secret(&l.ops.key()?)?
    } else {
        None
    };
    // Under self-enrolment a pending secret made by a login is shown again:
    // that login may have ended before the app was set up. One an
    // administrator made went to the administrator, never to whoever got
    // past the password.
    if let (TotpState::Pending, Unenrolled::Enroll, Origin::Login, Some(s)) = (
        record.state,
        cfg.policy.unenrolled,
        record.enrolled_by,
        &secret,
    ) {
        show_setup(l, s);
    }
    ask_for_codes(l, &record, secret.as_ref(), has_recovery)
}

/// What the typed `answer` could be, worked out before the write lock:
/// the TOTP step it matches, else at most one argon2 hash, for the kind of
/// code it is shaped like.
fn candidate(
    l: &Login<'_>,
    record: &UserRecord,
    secret: Option<&Secret>,
    has_recovery: bool,
    answer: &str,
    now: i64,
) -> Candidate {
    let totp = secret
        .zip(record.secret.as_deref())
        .and_then(|(s, sealed)| {
            totp::matching_step(&l.ops.cfg.totp, s, answer, now).map(|step| TotpMatch {
                step,
                sealed_secret: sealed.to_vec(),
            })
        });
    if totp.is_some() {
        return Candidate {
            totp,
            ..Candidate::default()
        };
    }
    // At most one argon2 evaluation: for the first kind of code the user
    // holds that the answer is shaped like.
    let code = Code::normalize(answer);
    let methods = record.methods(has_recovery);
    let mut c = Candidate::default();
    for kind in [CodeKind::Backup, CodeKind::Recovery] {
        if methods.contains(&kind.factor()) && code.is_code_of_len(kind.code_len()) {
            let hash = Some(code.hash(&record.code_salt));
            match kind {
                CodeKind::Backup => c.backup_hash = hash,
                CodeKind::Recovery => c.recovery_hash = hash,
            }
            break;
        }
    }
    c
}

/// Prompt up to `prompts` times and redeem what the user types.
fn ask_for_codes(
    l: &mut Login<'_>,
    record: &UserRecord,
    secret: Option<&Secret>,
    has_recovery: bool,
) -> Result<Outcome, Error> {
    let user = l.user().to_string();
    let mut attempted = false;
    for _ in 0..l.ops.cfg.policy.prompts {
        l.prompted = true;
        let answer = match l.conv.prompt_hidden(PROMPT) {
            Ok(a) => zeroize::Zeroizing::new(a.unwrap_or_default()),
            Err(ConvError) => {
                l.record(Fact::ConversationFailed)?;
                return Ok(Outcome::AuthErr);
            }
        };
        if Code::normalize(&answer).as_str().is_empty() {
            // Not a guess: uses up a prompt, not counted toward the lockout.
            continue;
        }
        let word = zeroize::Zeroizing::new(answer.trim().to_ascii_lowercase());
        if word.as_str() == "email" || word.as_str() == "sms" {
            l.conv
                .error("Codes by email or SMS are not available for this account.");
            continue;
        }
        attempted = true;
        let now = l.req.now();
        let offer = candidate(l, record, secret, has_recovery, &answer, now);
        let host = l.remembered_host();
        let remember = host
            .as_deref()
            .map(|h| (h, now + i64::from(l.ops.cfg.remember_days) * 86_400));
        let verdict =
            l.ops
                .store
                .redeem(&user, &offer, now, &l.ops.cfg.lockout, &l.ops.ctx, remember)?;
        let entries = l.ops.ctx.entries(now, &user, &Fact::of_verdict(&verdict));
        l.ops.log.entries(&entries);
        match verdict {
            Verdict::Accepted {
                factor,
                activated_codes,
                backup_codes_left,
            } => {
                match activated_codes {
                    Some(sealed) => {
                        let codes = ops::open_codes(&l.ops.key()?, &user, &sealed)?;
                        show_backup_codes(l, &codes);
                    }
                    None => after_success(l, factor, backup_codes_left),
                }
                return Ok(Outcome::Success);
            }
            Verdict::Rejected { locked_until, .. } => {
                l.conv.error(INVALID);
                log_drift(l, record, secret, &answer, now);
                if let Some(until) = locked_until {
                    l.locked_message(until);
                    return Ok(Outcome::MaxTries);
                }
            }
            Verdict::Locked { until } => {
                l.locked_message(until);
                return Ok(Outcome::MaxTries);
            }
            Verdict::UnknownUser => return Err(Error::NotEnrolled { user }),
        }
    }
    if !attempted {
        l.record(Fact::NoCode)?;
    }
    Ok(Outcome::AuthErr)
}

/// A refused code that is the user's TOTP code at another time: say so in
/// syslog, so an administrator sees a clock problem (or a used code) for
/// what it is.
fn log_drift(
    l: &mut Login<'_>,
    record: &UserRecord,
    secret: Option<&Secret>,
    answer: &str,
    now: i64,
) {
    let Some(secret) = secret else { return };
    let cfg = &l.ops.cfg.totp;
    let Some(d) = Drift::find(cfg, secret, answer, now, record.last_step) else {
        return;
    };
    let why = if !d.within_window {
        format!(
            "it is the code of {:+} step(s) ({:+} s) from now: check the clocks of the \
             phone and of this host",
            d.steps,
            d.seconds(cfg)
        )
    } else {
        "its time step was already used".to_string()
    };
    let msg = format!("code refused for {}: {why}", l.req.user);
    l.ops.log.warn(&msg);
}

fn after_success(l: &mut Login<'_>, factor: Factor, left: u32) {
    match factor {
        Factor::Backup if left <= 2 => l.conv.info(&format!(
            "Backup code accepted. Only {left} backup code{} left: ask an administrator for a \
             new set (crm2fa-admin backup-codes {} --regenerate).",
            if left == 1 { "" } else { "s" },
            l.req.user
        )),
        Factor::Backup => l.conv.info(&format!(
            "Backup code accepted; it cannot be used again. {left} left."
        )),
        Factor::Recovery => l.conv.info(
            "Recovery code accepted; it cannot be used again. Set up your authenticator app \
             again now (ask an administrator to re-enrol you), or get new backup codes.",
        ),
        Factor::Totp => {}
    }
}

/// Show new backup codes before a final prompt, so `ssh host command` shows them too.
fn show_backup_codes(l: &mut Login<'_>, codes: &[Code]) {
    let mut text = zeroize::Zeroizing::new(String::from(
        "Two-factor authentication is now active.\n\
         Your backup codes: each works once if you lose your phone. Keep them somewhere safe;\n\
         they will not be shown again.\n",
    ));
    for c in codes {
        text.push_str("    ");
        text.push_str(&c.display());
        text.push('\n');
    }
    l.conv.info(&text);
    let _ = l.conv.prompt_visible(SAVED_PROMPT);
}

/// `unenrolled = "enroll"`: set up TOTP inside the login. The user scans the
/// QR code, types the first code, and the enrolment is active.
fn enroll_during_login(l: &mut Login<'_>) -> Result<Outcome, Error> {
    let key: HostKey = l.ops.key()?;
    let user = l.user().to_string();
    let e = match l
        .ops
        .begin_enrollment(&key, &user, l.req.now(), Origin::Login)
    {
        Ok(e) => e,
        Err(Error::AlreadyEnrolled { .. }) => {
            // Enrolled by someone else since this login read the store.
            l.conv
                .error("Your second factor changed during this login. Please log in again.");
            l.record(Fact::EnrolmentChanged)?;
            return Ok(Outcome::AuthErr);
        }
        Err(e) => return Err(e),
    };
    show_setup(l, &e.secret);
    let record = l
        .ops
        .store
        .user(&user)?
        .ok_or_else(|| Error::NotEnrolled { user: user.clone() })?;
    ask_for_codes(l, &record, Some(&e.secret), false)
}

/// Show what the user needs to set up their app: QR code, manual key, URI.
fn show_setup(l: &mut Login<'_>, secret: &Secret) {
    let uri = totp::otpauth_uri(&l.ops.cfg.totp, secret, &ops::account_name(&l.req.user));
    let mut text = zeroize::Zeroizing::new(String::from(
        "Two-factor authentication is required for this account. Set it up now:\n\
         scan this QR code with your authenticator app, then enter the code it shows.\n",
    ));
    text.push_str(&qr::setup_block(
        &uri,
        &totp::secret_base32(secret),
        l.qr,
        "URI: ",
    ));
    l.conv.info(&text);
}

#[cfg(test)]
mod tests;
