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
use crate::delivery::{self, Channel, Message, SendError, Sender};
use crate::error::Error;
use crate::model::{
    Candidate, CodeKind, Factor, Origin, TotpMatch, TotpState, UserRecord, Verdict,
};
use crate::ops::{self, Drift, Ops};
use crate::policy::{self, AtLogin};
use crate::qr::{self, QrStyle};
use crate::store::{SendGrant, SendLimit, Store, Stores};
use crate::totp;

mod args;
mod conversation;
pub mod relay;

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

/// A login that failed on an error, and how far it had come.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: Error,
    /// The store had answered for the user (their factors, lock and sent
    /// codes were known): a store that fails after that is not one that
    /// "cannot be used", and `failmode = "safe"` does not skip it (a lock,
    /// say, would otherwise give way whenever a write is held up). An
    /// unusable key, read after that, still is.
    pub answered: bool,
    /// The user had been prompted for a code already.
    pub prompted: bool,
}

/// Run the whole login: check the caller, load the config, find the
/// account, get the store from `stores` (opened afresh in the module, kept
/// open by crm2fad), then [`authenticate`].
pub fn run(
    args: &ModuleArgs,
    req: &Request,
    conv: &mut dyn Conversation,
    log: &mut Logger,
    stores: &dyn Stores,
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
    let cfg = match stores.config(&args.config) {
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
    // A store kept open is lent first, and the login's first read sent (to
    // a server, which answers while the account is looked up), by the name
    // as given: the spelling is nearly always the account's. Nothing of the
    // answer is used unless the login reads for that very name.
    let site = LoginSite::of(&cfg, req);
    let early = stores.keeps_open().then(|| {
        let mut store = stores.open(&cfg.store);
        if let Ok(store) = &mut store {
            store.login_view_ahead(
                &req.user,
                site.remembered_host.as_deref(),
                &configured_channels(&cfg),
                req.now(),
            );
        }
        store
    });
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
    let mut store = match early.unwrap_or_else(|| stores.open(&cfg.store)) {
        Ok(s) => s,
        Err(error) => {
            let f = Failure {
                error,
                answered: false,
                prompted: false,
            };
            return failed(&cfg, &req, log, &f);
        }
    };
    let mut sender = delivery::Program::from_config(&cfg);
    match authenticate_from(
        &cfg,
        store.as_mut(),
        &mut sender,
        args.qr,
        &req,
        site,
        conv,
        log,
    ) {
        Ok(o) => o,
        Err(f) => failed(&cfg, &req, log, &f),
    }
}

/// The store failed (not the key): once it has answered for the user,
/// such a failure is no longer one `failmode = "safe"` may skip.
fn store_failed(e: &Error) -> bool {
    matches!(
        e,
        Error::Store { .. }
            | Error::StoreMissing { .. }
            | Error::StoreSchema { .. }
            | Error::Conflict { .. }
    )
}

/// The store or the key cannot be used: what `failmode = "safe"` may skip.
/// Not this process running out of file descriptors or memory, nor the
/// PostgreSQL server running out of memory or connections
/// ([`Error::out_of_resources`]): whoever could make crm2fad or the
/// server run out (many logins held at the prompt, on one host or across
/// a fleet) would otherwise turn the second factor off.
fn store_or_key(e: &Error) -> bool {
    !e.out_of_resources()
        && (store_failed(e)
            || matches!(
                e,
                Error::Key { .. }
                    | Error::Decrypt { .. }
                    | Error::Permissions { .. }
                    | Error::Io { .. }
            ))
}

/// A login that failed on an error: deny, saying why in syslog. Only a
/// store or key that cannot be used (before the store answered for the
/// user), under `failmode = "safe"`, lets the password decide instead.
fn failed(cfg: &Config, req: &Request, log: &mut Logger, f: &Failure) -> Outcome {
    let e = &f.error;
    match cfg.policy.failmode {
        FailMode::Safe if !f.prompted && store_or_key(e) && !(f.answered && store_failed(e)) => {
            log.error(&format!(
                "second factor of {} skipped (failmode = safe): {e}",
                req.user
            ));
            Outcome::Ignore
        }
        FailMode::Safe => {
            let when = if f.prompted {
                "a code was already asked for"
            } else if f.answered {
                "the store had answered for the user"
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
    sender: &'a mut dyn Sender,
    qr: QrStyle,
    /// The store answered for the user: from here on every error denies.
    answered: bool,
    /// A code was asked for.
    prompted: bool,
    /// The channels by which the user holds an unused sent code.
    sent: Vec<Channel>,
    /// The login's remote host, if `[remember]` is on and it is one that
    /// can be remembered: worked out once (it lists the machine's
    /// addresses), used at the read and at each attempt.
    remembered_host: Option<String>,
}

impl Login<'_> {
    fn user(&self) -> &str {
        &self.req.user
    }

    /// Before the login waits on the user or on a sender: the syslog lines
    /// held back so far go out (see [`Logger::holding`]), and a server
    /// session lent by crm2fad goes back meanwhile ([`Store::set_aside`]).
    fn before_waiting(&mut self) {
        self.ops.log.release();
        self.ops.store.set_aside();
    }

    /// Write a decision to the audit table and syslog.
    fn record(&mut self, fact: Fact) -> Result<(), Error> {
        let now = self.req.now();
        self.ops.record(now, &self.req.user, &fact)
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
    sender: &mut dyn Sender,
    qr: QrStyle,
    req: &Request,
    conv: &mut dyn Conversation,
    log: &mut Logger,
) -> Result<Outcome, Failure> {
    let site = LoginSite::of(cfg, req);
    authenticate_from(cfg, store, sender, qr, req, site, conv, log)
}

/// [`authenticate`] of a login made at `site`.
#[allow(clippy::too_many_arguments)]
fn authenticate_from(
    cfg: &Config,
    store: &mut dyn Store,
    sender: &mut dyn Sender,
    qr: QrStyle,
    req: &Request,
    site: LoginSite,
    conv: &mut dyn Conversation,
    log: &mut Logger,
) -> Result<Outcome, Failure> {
    let mut l = Login {
        ops: Ops {
            cfg,
            store,
            log,
            ctx: site.ctx,
        },
        req,
        conv,
        sender,
        qr,
        answered: false,
        prompted: false,
        sent: vec![],
        remembered_host: site.remembered_host,
    };
    steps(&mut l).map_err(|error| Failure {
        error,
        answered: l.answered,
        prompted: l.prompted,
    })
}

/// Where a login is made and where it comes from: its audit context (with
/// this machine's name) and the remote host it may be remembered from.
/// Worked out once per login: the name and the machine's addresses are
/// asked of the system.
struct LoginSite {
    ctx: AuditCtx,
    /// `req`'s remote host, if the config remembers hosts and it is
    /// another machine's than this one.
    remembered_host: Option<String>,
}

impl LoginSite {
    fn of(cfg: &Config, req: &Request) -> LoginSite {
        let ctx = req.audit_ctx();
        let rhost = req.rhost.as_str();
        let remembered_host = (cfg.remember_days > 0
            && !rhost.is_empty()
            && policy::own_addresses()
                .is_some_and(|own| policy::rememberable_host(rhost, &ctx.host, &own)))
        .then(|| rhost.to_string());
        LoginSite {
            ctx,
            remembered_host,
        }
    }
}

/// The channels codes may be sent by, as configured.
fn configured_channels(cfg: &Config) -> Vec<Channel> {
    Channel::ALL
        .into_iter()
        .filter(|c| c.configured(cfg))
        .collect()
}

/// The steps of the login, in order.
fn steps(l: &mut Login<'_>) -> Result<Outcome, Error> {
    let (cfg, req) = (l.ops.cfg, l.req);
    let user = req.user.as_str();
    let host = l.remembered_host.clone();
    let configured = configured_channels(cfg);
    // Read while a server answers the read crm2fad sent ahead; used, and
    // a failure to read it reported, only for a user with a TOTP secret.
    let key = l.ops.key();
    l.ops.store.login_read_next();
    let view = l
        .ops
        .store
        .login_view(user, host.as_deref(), &configured, req.now())?;
    l.answered = true;
    let (record, has_recovery) = (view.user, view.has_recovery);
    l.sent = view.sent;
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
    let enrolled = record.as_ref().is_some_and(UserRecord::has_factor);
    match decision.at_login(enrolled, has_recovery, cfg.policy.unenrolled) {
        AtLogin::Refused => {
            l.conv.error(
                "Two-factor authentication is required for this account, but it has no \
                 second factor set up. Ask an administrator to enrol you.",
            );
            l.record(Fact::UnenrolledDenied)?;
            return Ok(Outcome::AuthErr);
        }
        AtLogin::PasswordOnly => return Ok(l.let_through(Fact::UnenrolledAllowed)),
        AtLogin::SetUp => return enroll_during_login(l),
        // A code is asked (the policy's `ask` was checked above).
        AtLogin::Code | AtLogin::NoCode => {}
    }
    // Only a recovery code makes a row too, when it is issued.
    let record = record.ok_or_else(|| Error::NotEnrolled { user: user.into() })?;
    // Read once: the key that opens the secret also opens the backup codes
    // an activation shows, after the write that activated it.
    let key = if record.has_totp() {
        Some(key?)
    } else {
        drop(key);
        None
    };
    let secret = match &key {
        Some(k) => record.open_totp_secret(k)?,
        None => None,
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
    ask_for_codes(l, &record, secret.as_ref(), key.as_ref(), has_recovery)
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
    // At most one argon2 evaluation, offered as every kind of code the
    // user holds that the answer is shaped like (they share the salt).
    let code = Code::normalize(answer);
    let methods = record.methods(has_recovery);
    let digits = l.ops.cfg.totp.digits;
    // Every channel the user can get a code by, not only those this login
    // saw a code for: another login (another host) may have sent one since.
    let reachable = channels(l.ops.cfg, record);
    let kinds: Vec<CodeKind> = CodeKind::ALL
        .into_iter()
        .filter(|&k| match k {
            CodeKind::Email => reachable.contains(&Channel::Email),
            CodeKind::Sms => reachable.contains(&Channel::Sms),
            k => methods.contains(&k.factor()),
        })
        .filter(|k| k.shapes(&code, digits))
        .collect();
    Candidate {
        totp: None,
        hash: (!kinds.is_empty()).then(|| code.hash(&record.code_salt)),
        kinds,
    }
}

/// The channels `record` can get a code by: configured, with a contact.
fn channels(cfg: &Config, record: &UserRecord) -> Vec<Channel> {
    Channel::ALL
        .into_iter()
        .filter(|&c| c.configured(cfg) && record.contact(c).is_some())
        .collect()
}

/// What a send at the prompt came to.
enum Sent {
    /// The code is on its way.
    Yes,
    /// It was not sent; the user was told why.
    No,
    /// The user is locked (told so).
    Locked,
}

/// Send a fresh code by `channel`: stored hashed first (the resend limit
/// and the one-outstanding rule hold across every login), then handed to
/// the sending program; withdrawn again if that fails, counting nothing.
fn send_code(l: &mut Login<'_>, record: &UserRecord, channel: Channel) -> Result<Sent, Error> {
    l.before_waiting();
    let cfg = l.ops.cfg;
    let user = l.user().to_string();
    let (Some(to), Some(ttl)) = (record.contact(channel), channel.code_ttl(cfg)) else {
        return Ok(Sent::No);
    };
    let masked = delivery::mask(channel, to);
    let now = l.req.now();
    let code = Code::generate_digits(cfg.totp.digits as usize);
    let hash = code.hash(&record.code_salt);
    let audit = l.ops.entry(
        now,
        &user,
        &Fact::CodeSent {
            channel,
            to: masked.clone(),
        },
    );
    let limit = SendLimit {
        max: cfg.delivery.max_sends,
        window: cfg.delivery.send_window,
    };
    let grant = l.ops.store.grant_send(
        &user,
        channel,
        to,
        &record.code_salt,
        &hash,
        now + ttl,
        now,
        limit,
        &audit,
    )?;
    let id = match grant {
        SendGrant::Granted { id } => id,
        SendGrant::Limited { until } => {
            let minutes = ((until - now).max(1) + 59) / 60;
            l.conv.error(&format!(
                "Too many codes were sent by {} lately; the next can be sent in about {minutes} \
                 min. Use the last code sent, or another method.",
                channel.label()
            ));
            l.record(Fact::SendLimited { channel, until })?;
            return Ok(Sent::No);
        }
        // Locked since the login read the user (failures on another host,
        // or another login): refused, and recorded, as any locked login is.
        SendGrant::Locked { until } => {
            l.locked_message(until);
            l.record(Fact::Locked { until })?;
            return Ok(Sent::Locked);
        }
        SendGrant::ContactChanged => {
            l.conv.error(&format!(
                "Where codes by {} go was changed meanwhile; log in again to have one sent \
                 there, or use another method.",
                channel.label()
            ));
            l.record(Fact::SendFailed {
                channel,
                reason: "the address or number was changed meanwhile; nothing was sent".into(),
            })?;
            return Ok(Sent::No);
        }
    };
    let minutes = ((ttl + 59) / 60).to_string();
    let account = ops::account_name(&user);
    let vars = [
        ("account", account.as_str()),
        ("code", code.as_str()),
        ("minutes", minutes.as_str()),
    ];
    let msg = match channel {
        Channel::Email => {
            let e = cfg.email.as_ref();
            Message {
                channel,
                to: to.into(),
                subject: e
                    .map(|e| delivery::fill(&e.subject, &vars))
                    .unwrap_or_default(),
                text: e
                    .map(|e| delivery::fill(&e.body, &vars))
                    .unwrap_or_default(),
                code: code.as_str().into(),
            }
        }
        Channel::Sms => Message {
            channel,
            to: to.into(),
            subject: String::new(),
            text: delivery::fill(SMS_TEXT, &vars),
            code: code.as_str().into(),
        },
    };
    let unconfirmed = match l.sender.send(&msg) {
        Ok(()) => None,
        Err(SendError::Unconfirmed(reason)) => Some(reason),
        Err(SendError::NotSent(reason)) => {
            let failed = l
                .ops
                .entry(l.req.now(), &user, &Fact::SendFailed { channel, reason });
            l.ops.log.entry(&failed);
            l.ops.store.withdraw_send(&user, channel, id, &failed)?;
            let others = other_methods(l, record, channel);
            l.conv.error(&format!(
                "The code could not be sent by {}. {others}",
                channel.label()
            ));
            return Ok(Sent::No);
        }
    };
    // It went out, or may have (it may still arrive): the code is kept, and
    // counts toward the resend limit.
    l.ops.log.entry(&audit);
    if !l.sent.contains(&channel) {
        l.sent.push(channel);
    }
    let valid = format!(
        "valid for {minutes} minute{}",
        if minutes == "1" { "" } else { "s" }
    );
    match unconfirmed {
        None => l.conv.info(&format!(
            "A code was sent by {} to {masked}. It is {valid}.",
            channel.label()
        )),
        Some(reason) => {
            l.record(Fact::SendUnconfirmed { channel, reason })?;
            let others = other_methods(l, record, channel);
            l.conv.error(&format!(
                "A code was sent by {} to {masked}, but its delivery was not confirmed. If it \
                 arrives, type it ({valid}). {others}",
                channel.label()
            ));
        }
    }
    Ok(Sent::Yes)
}

/// The text of a code by SMS.
const SMS_TEXT: &str =
    "Your verification code for {account} is {code}. It is valid for {minutes} minutes.";

/// What else the user can type, after a send by `failed` failed.
fn other_methods(l: &Login<'_>, record: &UserRecord, failed: Channel) -> String {
    let mut ways = vec![];
    if record.state == TotpState::Active {
        ways.push("a code from your authenticator app".to_string());
    }
    if record.backup_codes_left() > 0 {
        ways.push("a backup code".to_string());
    }
    for c in channels(l.ops.cfg, record) {
        if c != failed {
            ways.push(format!(
                "type \"{}\" to get a code by {}",
                c.as_str(),
                c.label()
            ));
        }
    }
    match ways.len() {
        0 => "Try again later, or ask an administrator for a recovery code.".into(),
        _ => format!("Enter {}.", ways.join(", or ")),
    }
}

/// Prompt up to `prompts` times and redeem what the user types.
fn ask_for_codes(
    l: &mut Login<'_>,
    record: &UserRecord,
    secret: Option<&Secret>,
    key: Option<&HostKey>,
    has_recovery: bool,
) -> Result<Outcome, Error> {
    let user = l.user().to_string();
    let mut attempted = false;
    // The row as read before the prompt, for the first code's write: see
    // `Store::redeem_seen` (not after a code was sent: sending writes).
    let mut seen = Some(record);
    let channels = channels(l.ops.cfg, record);
    match record.delivery {
        // Codes by this channel are the user's way in (no app in use): send
        // one at once, unless one sent lately is still unused.
        Some(c) if record.state != TotpState::Active && !l.sent.contains(&c) => {
            if channels.contains(&c) {
                seen = None;
                if let Sent::Locked = send_code(l, record, c)? {
                    return Ok(Outcome::MaxTries);
                }
            } else {
                let msg = format!(
                    "{user} gets codes by {} but {}",
                    c.label(),
                    if c.configured(l.ops.cfg) {
                        "has no contact for it (crm2fa-admin set-contact)"
                    } else {
                        "that channel is not configured"
                    }
                );
                l.ops.log.warn(&msg);
            }
        }
        _ if !channels.is_empty() => {
            let offers: Vec<String> = channels
                .iter()
                .map(|&c| {
                    let to = record.contact(c).unwrap_or_default();
                    format!("\"{}\" for a code at {}", c.as_str(), delivery::mask(c, to))
                })
                .collect();
            l.conv.info(&format!("Or type {}.", offers.join(", or ")));
        }
        _ => {}
    }
    let mut prompts = l.ops.cfg.policy.prompts;
    while prompts > 0 {
        prompts -= 1;
        l.prompted = true;
        l.before_waiting();
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
        if let Some(channel) = Channel::parse(answer.trim()) {
            // A request, not a guess: never counted toward the lockout. A
            // code sent gives the prompt back; the resend limit ends this.
            if !channels.contains(&channel) {
                l.conv.error(&format!(
                    "Codes by {} are not available for this account.",
                    channel.label()
                ));
                continue;
            }
            seen = None;
            match send_code(l, record, channel)? {
                Sent::Yes => prompts += 1,
                Sent::No => {}
                Sent::Locked => return Ok(Outcome::MaxTries),
            }
            continue;
        }
        attempted = true;
        let now = l.req.now();
        let offer = candidate(l, record, secret, has_recovery, &answer, now);
        let remember = l
            .remembered_host
            .as_deref()
            .map(|h| (h, now + i64::from(l.ops.cfg.remember_days) * 86_400));
        // For the first code only: a refused one changed the row.
        let verdict = l.ops.store.redeem_seen(
            &user,
            seen.take(),
            &offer,
            now,
            &l.ops.cfg.lockout,
            &l.ops.ctx,
            remember,
        )?;
        let entries = l.ops.ctx.entries(now, &user, &Fact::of_verdict(&verdict));
        l.ops.log.entries(&entries);
        match verdict {
            Verdict::Accepted {
                factor,
                activated_codes,
                backup_codes_left,
            } => {
                // None kept to show: the set in force was shown when it
                // was made (codes by email or SMS set up meanwhile).
                match activated_codes.filter(|sealed| !sealed.is_empty()) {
                    Some(sealed) => {
                        let codes = match key {
                            Some(k) => ops::open_codes(k, &user, &sealed)?,
                            None => ops::open_codes(&l.ops.key()?, &user, &sealed)?,
                        };
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
        Factor::Totp | Factor::Email | Factor::Sms => {}
    }
}

/// Show new backup codes before a final prompt, so `ssh host command` shows them too.
fn show_backup_codes(l: &mut Login<'_>, codes: &[Code]) {
    let shown: Vec<_> = codes.iter().map(|c| c.display()).collect();
    let mut parts = vec![
        "Two-factor authentication is now active.\n\
         Your backup codes: each works once if you lose your phone. Keep them somewhere safe;\n\
         they will not be shown again.\n",
    ];
    for code in &shown {
        parts.extend(["    ", code.as_str(), "\n"]);
    }
    let text = crate::crypto::joined(&parts);
    l.conv.essential(&text);
    l.before_waiting();
    let _ = l.conv.prompt_visible(SAVED_PROMPT);
}

/// `unenrolled = "enroll"`: set up TOTP inside the login. The user scans the
/// QR code, types the first code, and the enrolment is active.
fn enroll_during_login(l: &mut Login<'_>) -> Result<Outcome, Error> {
    let key: HostKey = l.ops.key()?;
    let user = l.user().to_string();
    let e = match l
        .ops
        .begin_enrollment(&key, &user, l.req.now(), Origin::Login, None)
    {
        Ok(e) => e,
        // Enrolled by someone else since this login read the store.
        Err(Error::AlreadyEnrolled { .. }) => return enrolment_changed(l),
        Err(e) => return Err(e),
    };
    show_setup(l, &e.secret);
    let record = l
        .ops
        .store
        .user(&user)?
        .ok_or_else(|| Error::NotEnrolled { user: user.clone() })?;
    // An administrator's `enroll` may have replaced it meanwhile: the code
    // from this login's secret must never activate theirs (and show its
    // backup codes to whoever got past the password).
    if record.secret.as_deref() != Some(e.sealed_secret.as_slice()) {
        return enrolment_changed(l);
    }
    ask_for_codes(l, &record, Some(&e.secret), Some(&key), false)
}

/// Someone else enrolled the user while this login was enrolling them.
fn enrolment_changed(l: &mut Login<'_>) -> Result<Outcome, Error> {
    l.conv
        .error("Your second factor changed during this login. Please log in again.");
    l.record(Fact::EnrolmentChanged)?;
    Ok(Outcome::AuthErr)
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
    l.conv.essential(&text);
}

#[cfg(test)]
mod tests;
