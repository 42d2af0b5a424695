//! The login (`pam_sm_authenticate`), behind one [`Conversation`] trait so it
//! can be driven by libpam or by a scripted conversation in tests.
use std::path::PathBuf;

use crate::audit::Logger;
use crate::codes::{self, Code};
use crate::config::{self, Config, FailMode, Unenrolled};
use crate::crypto::{HostKey, Secret};
use crate::enroll;
use crate::error::Error;
use crate::policy;
use crate::qr::{self, QrStyle};
use crate::store::{
    AuditCtx, AuditEntry, Candidate, Lockout, Store, TotpMatch, TotpState, UserRecord, Verdict,
};
use crate::totp;

/// The prompt for a code.
pub const PROMPT: &str = "Verification code: ";
/// Said after every wrong code.
pub const INVALID: &str = "Invalid verification code.";
/// The last prompt after new backup codes, so they are seen before the login ends.
pub const SAVED_PROMPT: &str = "Press Enter when you have saved them: ";

/// The conversation broke down (the client went away or refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvError;

impl std::fmt::Display for ConvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the PAM conversation failed")
    }
}

/// The conversation with the person logging in.
pub trait Conversation {
    /// Ask with echo off. `Ok(None)`: no answer (end of input).
    fn prompt_hidden(&mut self, msg: &str) -> Result<Option<String>, ConvError>;
    /// Ask with echo on.
    fn prompt_visible(&mut self, msg: &str) -> Result<Option<String>, ConvError>;
    /// Show information.
    fn info(&mut self, msg: &str);
    /// Show an error.
    fn error(&mut self, msg: &str);
}

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
}

/// Module arguments: `config=PATH`, `qr=unicode|ascii|none`, `debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleArgs {
    pub config: PathBuf,
    pub qr: QrStyle,
    pub debug: bool,
    /// Arguments not understood: logged and ignored.
    pub unknown: Vec<String>,
}

impl ModuleArgs {
    /// Parse the module's arguments. The environment is never read: under
    /// su or sudo it belongs to the calling user.
    pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> ModuleArgs {
        let mut out = ModuleArgs {
            config: PathBuf::from(config::DEFAULT_PATH),
            qr: QrStyle::Unicode,
            debug: false,
            unknown: vec![],
        };
        for a in args {
            match a.split_once('=') {
                Some(("config", p)) if !p.is_empty() => out.config = PathBuf::from(p),
                Some(("qr", s)) if QrStyle::parse(s).is_some() => {
                    out.qr = QrStyle::parse(s).unwrap_or(QrStyle::Unicode)
                }
                None if a == "debug" => out.debug = true,
                _ => out.unknown.push(a.to_string()),
            }
        }
        out
    }
}

/// The time source of a login: read again after every answer, since a code
/// is typed well after the prompt was sent.
pub type Clock = std::sync::Arc<dyn Fn() -> i64 + Send + Sync>;

/// Who is logging in, from where, and the clock.
#[derive(Clone)]
pub struct Request {
    pub user: String,
    pub service: String,
    pub rhost: String,
    pub clock: Clock,
}

impl Request {
    /// The time now, in seconds since the epoch.
    pub fn now(&self) -> i64 {
        (self.clock)()
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

/// Run the whole login: load the config and store, then [`authenticate`].
pub fn run(
    args: &ModuleArgs,
    req: &Request,
    conv: &mut dyn Conversation,
    log: &mut Logger,
) -> Outcome {
    for a in &args.unknown {
        log.warn(&format!("ignoring unknown module argument {a:?}"));
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
    let mut store = match Store::open(&cfg.store.path) {
        Ok(s) => s,
        Err(e) => return store_failure(&cfg, req, log, &e),
    };
    match authenticate(&cfg, &mut store, args.qr, req, conv, log) {
        Ok(o) => o,
        Err(e) => store_failure(&cfg, req, log, &e),
    }
}

/// A store or key error: deny (`failmode = "secure"`) or let the password
/// step decide (`"safe"`), saying why in syslog.
fn store_failure(cfg: &Config, req: &Request, log: &mut Logger, e: &Error) -> Outcome {
    match cfg.policy.failmode {
        FailMode::Secure => {
            log.error(&format!(
                "login of {} denied (failmode = secure): {e}",
                req.user
            ));
            Outcome::Unavailable
        }
        FailMode::Safe => {
            log.error(&format!(
                "second factor of {} skipped (failmode = safe): {e}",
                req.user
            ));
            Outcome::Ignore
        }
    }
}

struct Login<'a> {
    cfg: &'a Config,
    store: &'a mut Store,
    req: &'a Request,
    conv: &'a mut dyn Conversation,
    log: &'a mut Logger,
}

impl Login<'_> {
    fn entry(&self, event: &str, outcome: &str, detail: impl Into<String>) -> AuditEntry {
        enroll::audit_entry(
            self.req.now(),
            &self.req.user,
            &self.req.service,
            &self.req.rhost,
            event,
            outcome,
            detail,
        )
    }

    /// Write a decision to the audit table and syslog.
    fn record(
        &mut self,
        event: &str,
        outcome: &str,
        detail: impl Into<String>,
    ) -> Result<(), Error> {
        let e = self.entry(event, outcome, detail);
        self.log.entry(&e);
        self.store.record(&e)
    }

    fn key(&self) -> Result<HostKey, Error> {
        HostKey::load(&self.cfg.store.key_file)
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

/// The login sequence of the design, on an open store.
pub fn authenticate(
    cfg: &Config,
    store: &mut Store,
    qr_style: QrStyle,
    req: &Request,
    conv: &mut dyn Conversation,
    log: &mut Logger,
) -> Result<Outcome, Error> {
    let mut l = Login {
        cfg,
        store,
        req,
        conv,
        log,
    };
    let user = req.user.as_str();
    let record = l.store.user(user)?;
    let has_recovery = l.store.has_valid_recovery(user, req.now())?;
    let groups = if policy::needs_groups(&cfg.policy) {
        policy::unix_groups(user)?
    } else {
        vec![]
    };
    let decision = policy::decide(&cfg.policy, user, &groups, record.as_ref(), has_recovery);
    if !decision.ask {
        l.record(
            "login",
            "skipped",
            format!("2FA not required: {}", decision.reason),
        )?;
        return Ok(Outcome::Ignore);
    }
    // A lock holds whatever else the user has or lacks.
    if let Some(until) = record.as_ref().and_then(|r| r.locked_at(req.now())) {
        l.locked_message(until);
        l.record(
            "login",
            "locked",
            format!("locked until {}; no code checked", crate::rfc3339(until)),
        )?;
        return Ok(Outcome::MaxTries);
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
                l.record(
                    "login",
                    "denied",
                    "required but not enrolled (unenrolled = deny)",
                )?;
                Ok(Outcome::AuthErr)
            }
            Unenrolled::Allow => {
                l.record(
                    "login",
                    "allowed",
                    "required but not enrolled (unenrolled = allow)",
                )?;
                Ok(Outcome::Ignore)
            }
            Unenrolled::Enroll => enroll_during_login(&mut l, qr_style),
        };
    }
    // Only a recovery code makes a row too, when it is issued.
    let record = record.ok_or_else(|| Error::NotEnrolled(user.into()))?;
    let secret = if record.has_totp() {
        record.open_totp_secret(&l.key()?)?
    } else {
        None
    };
    // Under self-enrolment a pending secret is shown again: the login that
    // first showed it may have ended before the app was set up.
    if let (TotpState::Pending, Unenrolled::Enroll, Some(s)) =
        (record.state, cfg.policy.unenrolled, &secret)
    {
        show_setup(&mut l, qr_style, s);
    }
    ask_for_codes(&mut l, &record, secret.as_ref(), has_recovery)
}

/// Prompt up to `prompts` times and redeem what the user types.
fn ask_for_codes(
    l: &mut Login<'_>,
    record: &UserRecord,
    secret: Option<&Secret>,
    has_recovery: bool,
) -> Result<Outcome, Error> {
    let user = l.req.user.clone();
    let lockout = Lockout {
        max_failures: l.cfg.lockout.max_failures,
        lock_seconds: l.cfg.lockout.lock_seconds,
    };
    let ctx = AuditCtx {
        service: l.req.service.clone(),
        rhost: l.req.rhost.clone(),
    };
    let backup_usable = record.state == TotpState::Active && record.backup_codes_left > 0;
    let mut attempted = false;
    for _ in 0..l.cfg.policy.prompts {
        let answer = match l.conv.prompt_hidden(PROMPT) {
            Ok(a) => zeroize::Zeroizing::new(a.unwrap_or_default()),
            Err(ConvError) => {
                l.record(
                    "login",
                    "failure",
                    "the conversation with the client failed",
                )?;
                return Ok(Outcome::AuthErr);
            }
        };
        let code = Code::normalize(&answer);
        if code.as_str().is_empty() {
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
        let mut candidate = Candidate {
            totp: secret
                .zip(record.secret.as_deref())
                .and_then(|(s, sealed)| {
                    totp::matching_step(&l.cfg.totp, s, &answer, now).map(|step| TotpMatch {
                        step,
                        sealed_secret: sealed.to_vec(),
                    })
                }),
            ..Candidate::default()
        };
        if candidate.totp.is_none() {
            // At most one argon2 evaluation per attempt.
            if backup_usable && code.is_code_of_len(codes::BACKUP_LEN) {
                candidate.backup_hash = Some(code.hash(&record.code_salt));
            } else if has_recovery && code.is_code_of_len(codes::RECOVERY_LEN) {
                candidate.recovery_hash = Some(code.hash(&record.code_salt));
            }
        }
        let verdict = l.store.redeem(&user, &candidate, now, lockout, &ctx)?;
        match verdict {
            Verdict::Accepted {
                factor,
                activated_codes,
                backup_codes_left,
            } => {
                l.log.info(&format!(
                    "login success user={user} service={} factor={}",
                    l.req.service,
                    factor.as_str()
                ));
                if let Some(sealed) = activated_codes {
                    let key = l.key()?;
                    let codes = enroll::open_codes(&key, &user, &sealed)?;
                    show_backup_codes(l, &codes);
                } else {
                    after_success(l, factor, backup_codes_left);
                }
                return Ok(Outcome::Success);
            }
            Verdict::Rejected { locked_until, .. } => {
                l.conv.error(INVALID);
                l.log.warn(&format!(
                    "login failure user={user} service={}: invalid code",
                    l.req.service
                ));
                if let Some(until) = locked_until {
                    l.log.warn(&format!(
                        "user {user} locked until {}",
                        crate::rfc3339(until)
                    ));
                    l.locked_message(until);
                    return Ok(Outcome::MaxTries);
                }
            }
            Verdict::Locked { until } => {
                l.log.warn(&format!(
                    "login locked user={user} service={}: locked until {}; no code checked",
                    l.req.service,
                    crate::rfc3339(until)
                ));
                l.locked_message(until);
                return Ok(Outcome::MaxTries);
            }
            Verdict::UnknownUser => return Err(Error::NotEnrolled(user)),
        }
    }
    if !attempted {
        l.record("login", "failure", "no code entered")?;
    }
    Ok(Outcome::AuthErr)
}

fn after_success(l: &mut Login<'_>, factor: crate::store::Factor, left: u32) {
    use crate::store::Factor;
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
    let mut text = String::from(
        "Two-factor authentication is now active.\n\
         Your backup codes: each works once if you lose your phone. Keep them somewhere safe;\n\
         they will not be shown again.\n",
    );
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
fn enroll_during_login(l: &mut Login<'_>, qr_style: QrStyle) -> Result<Outcome, Error> {
    let key = l.key()?;
    let user = l.req.user.clone();
    let req = enroll::EnrollRequest {
        user: &user,
        now: l.req.now(),
        service: &l.req.service,
        replace: false,
    };
    let e = match enroll::begin(l.cfg, &key, l.store, &req, l.log) {
        Ok(e) => e,
        Err(Error::Refused(why)) => {
            // Enrolled by someone else since this login read the store.
            l.conv
                .error("Your second factor changed during this login. Please log in again.");
            l.record("login", "failure", why)?;
            return Ok(Outcome::AuthErr);
        }
        Err(e) => return Err(e),
    };
    show_setup(l, qr_style, &e.secret);
    let record = l
        .store
        .user(&user)?
        .ok_or_else(|| Error::NotEnrolled(user.clone()))?;
    ask_for_codes(l, &record, Some(&e.secret), false)
}

/// Show what the user needs to set up their app: QR code, manual key, URI.
fn show_setup(l: &mut Login<'_>, qr_style: QrStyle, secret: &Secret) {
    let uri = zeroize::Zeroizing::new(totp::otpauth_uri(
        &l.cfg.totp,
        secret,
        &enroll::account_name(&l.req.user),
    ));
    let mut text = zeroize::Zeroizing::new(String::from(
        "Two-factor authentication is required for this account. Set it up now:\n\
         scan this QR code with your authenticator app, then enter the code it shows.\n",
    ));
    if let Some(q) = qr::render(&uri, qr_style) {
        text.push_str(&q);
        text.push('\n');
    }
    text.push_str(&format!(
        "Manual key: {}\nURI: {}\n",
        totp::grouped(&totp::secret_base32(secret)),
        uri.as_str()
    ));
    l.conv.info(&text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A scripted conversation: answers in order, records everything shown.
    struct Script {
        answers: VecDeque<Option<String>>,
        prompts: Vec<String>,
        infos: Vec<String>,
        errors: Vec<String>,
    }

    impl Script {
        fn new(answers: &[Option<&str>]) -> Script {
            Script {
                answers: answers.iter().map(|a| a.map(String::from)).collect(),
                prompts: vec![],
                infos: vec![],
                errors: vec![],
            }
        }
        fn next(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
            self.prompts.push(msg.to_string());
            self.answers.pop_front().ok_or(ConvError)
        }
        fn all_used(&self) -> bool {
            self.answers.is_empty()
        }
    }

    impl Conversation for Script {
        fn prompt_hidden(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
            self.next(msg)
        }
        fn prompt_visible(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
            self.next(msg)
        }
        fn info(&mut self, msg: &str) {
            self.infos.push(msg.to_string());
        }
        fn error(&mut self, msg: &str) {
            self.errors.push(msg.to_string());
        }
    }

    struct Env {
        _dir: tempfile::TempDir,
        cfg: Config,
        store: Store,
        key: HostKey,
        log: Logger,
    }

    fn env(extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm2fa.toml");
        let text = format!("[store]\npath = \"db\"\nkey_file = \"key\"\n{extra}");
        let cfg = Config::parse(&text, &path).unwrap();
        let key = HostKey::create(&cfg.store.key_file).unwrap();
        let store = Store::create(&cfg.store.path).unwrap();
        Env {
            _dir: dir,
            cfg,
            store,
            key,
            log: Logger::new("crm2fa-test", false),
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn req(user: &str, now: i64) -> Request {
        Request {
            user: user.into(),
            service: "test".into(),
            rhost: "".into(),
            clock: std::sync::Arc::new(move || now),
        }
    }

    fn login(e: &mut Env, user: &str, now: i64, script: &mut Script) -> Outcome {
        authenticate(
            &e.cfg,
            &mut e.store,
            QrStyle::None,
            &req(user, now),
            script,
            &mut e.log,
        )
        .unwrap()
    }

    fn state(e: &Env, user: &str) -> TotpState {
        e.store.user(user).unwrap().unwrap().state
    }

    fn enrolled(e: &mut Env, user: &str) -> Secret {
        enrolment(e, user).secret
    }

    fn enrolment(e: &mut Env, user: &str) -> enroll::Enrollment {
        let req = enroll::EnrollRequest {
            user,
            now: NOW - 600,
            service: "t",
            replace: true,
        };
        enroll::begin(&e.cfg, &e.key, &mut e.store, &req, &mut e.log).unwrap()
    }

    fn code(e: &Env, s: &Secret, now: i64) -> String {
        totp::code_at_step(&e.cfg.totp, s, totp::step_at(&e.cfg.totp, now))
    }

    #[test]
    fn first_valid_code_activates_and_shows_backup_codes_before_a_final_prompt() {
        let mut e = env("[policy]\nenforce = \"opt-in\"\n[backup_codes]\ncount = 3\n");
        let s = enrolled(&mut e, "alice");
        let c = code(&e, &s, NOW);
        let mut sc = Script::new(&[Some(&c), Some("")]);
        assert_eq!(login(&mut e, "alice", NOW, &mut sc), Outcome::Success);
        assert_eq!(sc.prompts, vec![PROMPT, SAVED_PROMPT]);
        assert!(sc.all_used());
        let shown = &sc.infos[0];
        assert_eq!(
            shown.lines().filter(|l| l.starts_with("    ")).count(),
            3,
            "{shown}"
        );
        assert_eq!(state(&e, "alice"), TotpState::Active);
    }

    #[test]
    fn wrong_codes_reprompt_then_fail_and_count() {
        let mut e = env("[policy]\nenforce = \"all\"\nprompts = 3\n");
        let s = enrolled(&mut e, "bob");
        let good = code(&e, &s, NOW);
        let bad = if good == "000000" { "111111" } else { "000000" };
        let mut sc = Script::new(&[Some(bad), Some(""), Some(bad)]);
        assert_eq!(login(&mut e, "bob", NOW, &mut sc), Outcome::AuthErr);
        assert_eq!(sc.prompts, vec![PROMPT; 3]);
        assert_eq!(sc.errors, vec![INVALID; 2]);
        assert_eq!(
            e.store.user("bob").unwrap().unwrap().failures,
            2,
            "empty answer not counted"
        );
    }

    #[test]
    fn totp_step_is_accepted_once() {
        let mut e = env("[policy]\nenforce = \"all\"\nprompts = 1\n");
        let s = enrolled(&mut e, "carol");
        let c = code(&e, &s, NOW);
        let mut sc = Script::new(&[Some(&c), Some("")]);
        assert_eq!(login(&mut e, "carol", NOW, &mut sc), Outcome::Success);
        let mut sc = Script::new(&[Some(&c)]);
        assert_eq!(login(&mut e, "carol", NOW + 5, &mut sc), Outcome::AuthErr);
        assert_eq!(sc.errors, vec![INVALID]);
    }

    #[test]
    fn opt_in_unenrolled_is_ignored_without_a_prompt() {
        let mut e = env("[policy]\nenforce = \"opt-in\"\n");
        let mut sc = Script::new(&[]);
        assert_eq!(login(&mut e, "dave", NOW, &mut sc), Outcome::Ignore);
        assert!(sc.prompts.is_empty());
    }

    #[test]
    fn required_unenrolled_follows_unenrolled_setting() {
        let mut e = env("[policy]\nenforce = \"all\"\nunenrolled = \"deny\"\n");
        let mut sc = Script::new(&[]);
        assert_eq!(login(&mut e, "erin", NOW, &mut sc), Outcome::AuthErr);
        assert!(sc.prompts.is_empty());
        let mut e = env("[policy]\nenforce = \"all\"\nunenrolled = \"allow\"\n");
        let mut sc = Script::new(&[]);
        assert_eq!(login(&mut e, "erin", NOW, &mut sc), Outcome::Ignore);
    }

    #[test]
    fn lockout_after_max_failures_checks_no_more_codes() {
        let mut e = env("[policy]\nenforce = \"all\"\nprompts = 3\n[lockout]\nmax_failures = 3\nlock_seconds = 60\n");
        let s = enrolled(&mut e, "frank");
        let good = code(&e, &s, NOW);
        let bad = if good == "000000" { "111111" } else { "000000" };
        let mut sc = Script::new(&[Some(bad), Some(bad), Some(bad)]);
        assert_eq!(login(&mut e, "frank", NOW, &mut sc), Outcome::MaxTries);
        assert_eq!(
            sc.errors.len(),
            4,
            "three invalid, then the lock message: {:?}",
            sc.errors
        );
        let mut sc = Script::new(&[]);
        assert_eq!(login(&mut e, "frank", NOW + 1, &mut sc), Outcome::MaxTries);
        assert!(
            sc.prompts.is_empty(),
            "locked: no code is asked for or checked"
        );
        // After the lock expires the right code works and resets the counter.
        let later = NOW + 61;
        let mut sc = Script::new(&[Some(&code(&e, &s, later)), Some("")]);
        assert_eq!(login(&mut e, "frank", later, &mut sc), Outcome::Success);
        assert_eq!(e.store.user("frank").unwrap().unwrap().failures, 0);
    }

    /// A user who reads the manual key off the screen and types the app's code.
    struct NewUser {
        cfg: crate::config::TotpConfig,
        now: i64,
        key: Option<String>,
        prompts: Vec<String>,
        infos: Vec<String>,
    }

    impl NewUser {
        fn new(e: &Env, now: i64) -> NewUser {
            NewUser {
                cfg: e.cfg.totp.clone(),
                now,
                key: None,
                prompts: vec![],
                infos: vec![],
            }
        }
    }

    impl Conversation for NewUser {
        fn prompt_hidden(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
            self.prompts.push(msg.into());
            let b32 = self.key.clone().ok_or(ConvError)?;
            let raw = totp_rs::Secret::Encoded(b32)
                .to_bytes()
                .map_err(|_| ConvError)?;
            let s = Secret::new(raw);
            Ok(Some(totp::code_at_step(
                &self.cfg,
                &s,
                totp::step_at(&self.cfg, self.now),
            )))
        }
        fn prompt_visible(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
            self.prompts.push(msg.into());
            Ok(Some(String::new()))
        }
        fn info(&mut self, msg: &str) {
            if let Some(line) = msg.lines().find(|l| l.starts_with("Manual key: ")) {
                self.key = Some(line["Manual key: ".len()..].replace(' ', ""));
            }
            self.infos.push(msg.into());
        }
        fn error(&mut self, _msg: &str) {}
    }

    #[test]
    fn unenrolled_enroll_sets_up_totp_inside_the_login() {
        let mut e = env("[policy]\nenforce = \"all\"\nunenrolled = \"enroll\"\n");
        let mut user = NewUser::new(&e, NOW);
        let out = authenticate(
            &e.cfg,
            &mut e.store,
            QrStyle::Ascii,
            &req("gina", NOW),
            &mut user,
            &mut e.log,
        )
        .unwrap();
        assert_eq!(out, Outcome::Success);
        assert!(
            user.infos[0].contains("otpauth://totp/"),
            "{}",
            user.infos[0]
        );
        assert!(user.infos[0].contains("##"), "the ASCII QR code is shown");
        assert_eq!(user.prompts, vec![PROMPT, SAVED_PROMPT]);
        assert!(user.infos[1].contains("backup codes"));
        assert_eq!(state(&e, "gina"), TotpState::Active);
    }

    #[test]
    fn store_files_are_0600_and_hold_no_plain_secret() {
        use std::os::unix::fs::PermissionsExt;
        let mut e = env("[policy]\nenforce = \"all\"\n");
        let en = enrolment(&mut e, "hank");
        let mut sc = Script::new(&[Some(&code(&e, &en.secret, NOW)), Some("")]);
        assert_eq!(login(&mut e, "hank", NOW, &mut sc), Outcome::Success);
        let codes_shown = sc.infos[0].clone();
        let mut bytes = vec![];
        for suffix in ["", "-wal", "-shm"] {
            let mut p = e.cfg.store.path.clone().into_os_string();
            p.push(suffix);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{p:?}");
            bytes.extend(std::fs::read(&p).unwrap());
        }
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(
            !contains(en.secret.expose()),
            "raw TOTP secret in the store"
        );
        assert!(
            !contains(en.base32.as_bytes()),
            "base32 TOTP secret in the store"
        );
        let first_code = codes_shown
            .lines()
            .find(|l| l.starts_with("    "))
            .unwrap()
            .trim();
        assert!(
            !contains(first_code.as_bytes()),
            "plain backup code in the store"
        );
        assert!(
            !contains(first_code.replace('-', "").as_bytes()),
            "plain backup code in the store"
        );
    }

    /// Answers after a delay: the clock moves on while the user types.
    struct SlowTyper {
        time: std::sync::Arc<std::sync::atomic::AtomicI64>,
        delay: i64,
        code_at: Box<dyn Fn(i64) -> String>,
    }

    impl Conversation for SlowTyper {
        fn prompt_hidden(&mut self, _msg: &str) -> Result<Option<String>, ConvError> {
            use std::sync::atomic::Ordering;
            let t = self.time.fetch_add(self.delay, Ordering::SeqCst) + self.delay;
            Ok(Some((self.code_at)(t)))
        }
        fn prompt_visible(&mut self, _msg: &str) -> Result<Option<String>, ConvError> {
            Ok(Some(String::new()))
        }
        fn info(&mut self, _msg: &str) {}
        fn error(&mut self, _msg: &str) {}
    }

    #[test]
    fn code_is_checked_at_the_time_it_is_typed_not_when_prompted() {
        use std::sync::atomic::{AtomicI64, Ordering};
        let mut e = env("[policy]\nenforce = \"all\"\nprompts = 1\n");
        let s = enrolled(&mut e, "ivan");
        let time = std::sync::Arc::new(AtomicI64::new(NOW));
        let clock_time = time.clone();
        let r = Request {
            clock: std::sync::Arc::new(move || clock_time.load(Ordering::SeqCst)),
            ..req("ivan", NOW)
        };
        let (cfg, secret) = (e.cfg.totp.clone(), s.clone());
        let mut typer = SlowTyper {
            time,
            delay: 75,
            code_at: Box::new(move |t| totp::code_at_step(&cfg, &secret, totp::step_at(&cfg, t))),
        };
        // Typed 75 s (two steps) after the prompt: outside the window of the
        // prompt's time, inside the window of the time it arrives.
        let out = authenticate(
            &e.cfg,
            &mut e.store,
            QrStyle::None,
            &r,
            &mut typer,
            &mut e.log,
        )
        .unwrap();
        assert_eq!(out, Outcome::Success);
    }

    #[test]
    fn abandoned_self_enrolment_is_shown_again_at_the_next_login() {
        let mut e = env("[policy]\nenforce = \"all\"\nunenrolled = \"enroll\"\n");
        let mut gone = Script::new(&[None, None, None]);
        assert_eq!(login(&mut e, "jill", NOW, &mut gone), Outcome::AuthErr);
        assert_eq!(state(&e, "jill"), TotpState::Pending);
        let audit = e.store.audit(Some("jill"), None).unwrap();
        assert!(
            audit.iter().any(|a| a.detail == "no code entered"),
            "{audit:?}"
        );
        let mut user = NewUser::new(&e, NOW + 60);
        let out = authenticate(
            &e.cfg,
            &mut e.store,
            QrStyle::None,
            &req("jill", NOW + 60),
            &mut user,
            &mut e.log,
        )
        .unwrap();
        assert_eq!(out, Outcome::Success, "{:?}", user.infos);
        assert_eq!(state(&e, "jill"), TotpState::Active);
    }

    #[test]
    fn relative_config_path_is_refused() {
        let args = ModuleArgs::parse(["config=crm2fa.toml"]);
        let mut sc = Script::new(&[]);
        let mut log = Logger::new("crm2fa-test", false);
        assert_eq!(
            run(&args, &req("kim", NOW), &mut sc, &mut log),
            Outcome::Unavailable
        );
        assert!(sc.prompts.is_empty());
    }

    #[test]
    fn module_args_parse_and_keep_unknown_ones() {
        let a = ModuleArgs::parse(["config=/x/y.toml", "qr=ascii", "debug", "frobnicate"]);
        assert_eq!(a.config, PathBuf::from("/x/y.toml"));
        assert_eq!(a.qr, QrStyle::Ascii);
        assert!(a.debug);
        assert_eq!(a.unknown, vec!["frobnicate".to_string()]);
        let d = ModuleArgs::parse([]);
        assert_eq!(d.config, PathBuf::from(config::DEFAULT_PATH));
        assert_eq!(d.qr, QrStyle::Unicode);
    }
}
