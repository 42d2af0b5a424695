//! The login's unit tests: scripted conversations on a real store.
use super::*;
use crate::store;
use std::collections::VecDeque;

/// A scripted conversation: answers in order, records everything shown.
/// The answer [`SENT`] is the code of the last message sent through
/// `outbox`.
#[derive(Debug)]
struct Script {
    answers: VecDeque<Option<String>>,
    prompts: Vec<String>,
    infos: Vec<String>,
    errors: Vec<String>,
    outbox: Outbox,
}

/// Stands for the code last sent, in a [`Script`]'s answers.
const SENT: &str = "<the code sent>";

impl Script {
    fn new(answers: &[Option<&str>]) -> Script {
        Script {
            answers: answers.iter().map(|a| a.map(String::from)).collect(),
            prompts: vec![],
            infos: vec![],
            errors: vec![],
            outbox: Outbox::default(),
        }
    }
    /// Reading codes from `outbox`.
    fn reading(mut self, outbox: &Outbox) -> Script {
        self.outbox = outbox.clone();
        self
    }
    fn next(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
        self.prompts.push(msg.to_string());
        let a = self.answers.pop_front().ok_or(ConvError)?;
        Ok(match a.as_deref() {
            Some(SENT) => Some(
                self.outbox
                    .last()
                    .map(|m| m.code.clone())
                    .unwrap_or_default(),
            ),
            _ => a,
        })
    }
    /// Answers `answers`, every one given.
    fn answering<S: AsRef<str>>(answers: &[S]) -> Script {
        let given: Vec<Option<&str>> = answers.iter().map(|a| Some(a.as_ref())).collect();
        Script::new(&given)
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
    store: Box<dyn Store>,
    key: HostKey,
    log: Logger,
    sender: Outbox,
}

/// A sender that keeps what it is given, or fails with `fail`; clones
/// share the messages.
#[derive(Debug, Default, Clone)]
struct Outbox {
    sent: std::rc::Rc<std::cell::RefCell<Vec<Message>>>,
    fail: Option<SendError>,
}

impl Outbox {
    fn last(&self) -> Option<Message> {
        self.sent.borrow().last().cloned()
    }
    fn count(&self) -> usize {
        self.sent.borrow().len()
    }
}

impl Sender for Outbox {
    fn send(&mut self, msg: &Message) -> Result<(), SendError> {
        match &self.fail {
            // Unconfirmed: it may arrive all the same.
            Some(e @ SendError::Unconfirmed(_)) => {
                self.sent.borrow_mut().push(msg.clone());
                Err(e.clone())
            }
            Some(why) => Err(why.clone()),
            None => {
                self.sent.borrow_mut().push(msg.clone());
                Ok(())
            }
        }
    }
}

fn env(extra: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm2fa.toml");
    let text = format!("[store]\npath = \"db\"\nkey_file = \"key\"\n{extra}");
    let cfg = Config::parse(&text, &path).unwrap();
    let key = HostKey::create(&cfg.store.key_file).unwrap();
    let store = store::create(&cfg.store, None).unwrap();
    Env {
        _dir: dir,
        cfg,
        store,
        key,
        log: Logger::new("crm2fa-test", false),
        sender: Outbox::default(),
    }
}

const NOW: i64 = 1_800_000_000;

fn req(user: &str, now: i64) -> Request {
    Request {
        user: user.into(),
        service: "test".into(),
        rhost: "".into(),
        clock: std::sync::Arc::new(move || now),
        caller_uid: 0,
    }
}

fn login(e: &mut Env, user: &str, now: i64, script: &mut Script) -> Outcome {
    authenticate(
        &e.cfg,
        e.store.as_mut(),
        &mut e.sender,
        QrStyle::None,
        &req(user, now),
        script,
        &mut e.log,
    )
    .unwrap()
}

fn state(e: &mut Env, user: &str) -> TotpState {
    e.store.user(user).unwrap().unwrap().state
}

fn enrolled(e: &mut Env, user: &str) -> Secret {
    enrolment(e, user).secret
}

fn enrolment(e: &mut Env, user: &str) -> ops::Enrollment {
    let mut ops = Ops {
        cfg: &e.cfg,
        store: e.store.as_mut(),
        log: &mut e.log,
        ctx: AuditCtx::default(),
    };
    ops.begin_enrollment(&e.key, user, NOW - 600, Origin::Admin, None)
        .unwrap()
}

fn code(e: &Env, s: &Secret, now: i64) -> String {
    totp::code_at_step(&e.cfg.totp, s, totp::step_at(&e.cfg.totp, now)).to_string()
}

/// A six-digit code that is not `good`.
fn wrong_code(good: &str) -> &'static str {
    if good == "000000" {
        "111111"
    } else {
        "000000"
    }
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
    assert_eq!(state(&mut e, "alice"), TotpState::Active);
}

/// Answers the code prompt with `code` after replacing the key file with
/// one that holds no key (as a broken restore mid-login would), then
/// answers the rest with nothing.
struct KeyGoesAtPrompt {
    key_file: std::path::PathBuf,
    code: String,
    infos: Vec<String>,
}

impl Conversation for KeyGoesAtPrompt {
    fn prompt_hidden(&mut self, _msg: &str) -> Result<Option<String>, ConvError> {
        std::fs::write(&self.key_file, b"not a key").unwrap();
        Ok(Some(std::mem::take(&mut self.code)))
    }
    fn prompt_visible(&mut self, _msg: &str) -> Result<Option<String>, ConvError> {
        Ok(Some(String::new()))
    }
    fn info(&mut self, msg: &str) {
        self.infos.push(msg.into());
    }
    fn error(&mut self, _msg: &str) {}
}

#[test]
fn the_codes_an_activation_shows_are_opened_with_the_key_read_before_it() {
    let mut e = env("[policy]\nenforce = \"opt-in\"\n[backup_codes]\ncount = 3\n");
    let s = enrolled(&mut e, "amy");
    let mut conv = KeyGoesAtPrompt {
        key_file: e.cfg.store.key_file.clone(),
        code: code(&e, &s, NOW),
        infos: vec![],
    };
    let out = authenticate(
        &e.cfg,
        e.store.as_mut(),
        &mut e.sender,
        QrStyle::None,
        &req("amy", NOW),
        &mut conv,
        &mut e.log,
    );
    // The activation committed: its codes are shown, not lost.
    assert_eq!(out.unwrap(), Outcome::Success);
    let shown = conv.infos.concat();
    assert_eq!(
        shown.lines().filter(|l| l.starts_with("    ")).count(),
        3,
        "{shown}"
    );
}

#[test]
fn wrong_codes_reprompt_then_fail_and_count() {
    let mut e = env("[policy]\nenforce = \"all\"\nprompts = 3\n");
    let s = enrolled(&mut e, "bob");
    let good = code(&e, &s, NOW);
    let bad = wrong_code(&good);
    let mut sc = Script::new(&[Some(bad), Some(""), Some(bad)]);
    assert_eq!(login(&mut e, "bob", NOW, &mut sc), Outcome::AuthErr);
    assert_eq!(sc.prompts, vec![PROMPT; 3]);
    assert_eq!(sc.errors, vec![INVALID; 2]);
    assert_eq!(
        e.store.user("bob").unwrap().unwrap().lock.failures,
        2,
        "empty answer not counted"
    );
}

/// Answers in order; at each prompt notes the lines its syslogd has.
struct SyslogAtPrompt {
    answers: VecDeque<String>,
    syslogd: std::os::unix::net::UnixDatagram,
    /// Per prompt, the syslog lines received by then.
    seen: Vec<Vec<String>>,
}

impl SyslogAtPrompt {
    fn lines_now(&self) -> Vec<String> {
        crate::audit::lines_now(&self.syslogd)
    }
}

impl Conversation for SyslogAtPrompt {
    fn prompt_hidden(&mut self, _msg: &str) -> Result<Option<String>, ConvError> {
        let lines = self.lines_now();
        self.seen.push(lines);
        Ok(self.answers.pop_front())
    }
    fn prompt_visible(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
        self.prompt_hidden(msg)
    }
    fn info(&mut self, _msg: &str) {}
    fn error(&mut self, _msg: &str) {}
}

#[test]
fn lines_held_back_reach_syslog_before_the_login_waits_on_the_user() {
    let mut e = env("[policy]\nenforce = \"all\"\nprompts = 2\n");
    let s = enrolled(&mut e, "hal");
    let good = code(&e, &s, NOW);
    let bad = wrong_code(&good);
    let (ours, syslogd) = std::os::unix::net::UnixDatagram::pair().unwrap();
    e.log = Logger::new("crm2fa-test", false)
        .through(crate::audit::SyslogConnection::to_socket(ours))
        .holding();
    let mut conv = SyslogAtPrompt {
        answers: [bad, good.as_str(), ""].map(String::from).into(),
        syslogd,
        seen: vec![],
    };
    let log_in = |conv: &mut SyslogAtPrompt, e: &mut Env, now: i64| {
        authenticate(
            &e.cfg,
            e.store.as_mut(),
            &mut e.sender,
            QrStyle::None,
            &req("hal", now),
            conv,
            &mut e.log,
        )
        .unwrap()
    };
    // A wrong code, the right one (activating), "saved" for the codes shown.
    assert_eq!(log_in(&mut conv, &mut e, NOW), Outcome::Success);
    assert_eq!(conv.seen.len(), 3);
    assert!(conv.seen[0].is_empty(), "{:?}", conv.seen);
    // Each line went out before the next wait on the user.
    assert!(
        conv.seen[1].len() == 1 && conv.seen[1][0].contains("wrong code"),
        "{:?}",
        conv.seen
    );
    assert!(
        conv.seen[2].iter().any(|l| l.contains("login success")),
        "{:?}",
        conv.seen
    );
    // A login with nothing to wait for after its code: its success line is
    // held until the logger lets go (crm2fad: after the outcome is sent).
    let next = code(&e, &s, NOW + 30);
    conv.answers = [next].into();
    assert_eq!(log_in(&mut conv, &mut e, NOW + 30), Outcome::Success);
    assert!(conv.seen[3].is_empty(), "{:?}", conv.seen);
    assert!(conv.lines_now().is_empty(), "held back");
    e.log.release();
    let after = conv.lines_now();
    assert!(
        after.len() == 1 && after[0].contains("login success"),
        "{after:?}"
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
    let bad = wrong_code(&good);
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
    assert_eq!(e.store.user("frank").unwrap().unwrap().lock.failures, 0);
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
        let code = totp::code_at_step(&self.cfg, &s, totp::step_at(&self.cfg, self.now));
        Ok(Some(code.to_string()))
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
        e.store.as_mut(),
        &mut e.sender,
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
    assert_eq!(state(&mut e, "gina"), TotpState::Active);
}

/// A new user setting up their app, while an administrator runs `enroll`
/// for them the moment the login shows its QR code.
struct Raced {
    user: NewUser,
    cfg: Config,
    admin_enrolled: bool,
}

impl Conversation for Raced {
    fn prompt_hidden(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
        self.user.prompt_hidden(msg)
    }
    fn prompt_visible(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
        self.user.prompt_visible(msg)
    }
    fn info(&mut self, msg: &str) {
        self.user.info(msg);
        if !self.admin_enrolled {
            self.admin_enrolled = true;
            let mut store = store::open(&self.cfg.store, None).unwrap();
            let key = HostKey::load(&self.cfg.store.key_file).unwrap();
            let mut log = Logger::new("crm2fa-test", false);
            let mut ops = Ops {
                cfg: &self.cfg,
                store: store.as_mut(),
                log: &mut log,
                ctx: AuditCtx::default(),
            };
            ops.begin_enrollment(&key, "gina", NOW, Origin::Admin, None)
                .unwrap();
        }
    }
    fn error(&mut self, msg: &str) {
        self.user.infos.push(msg.into());
    }
}

#[test]
fn a_login_enrolling_itself_never_activates_an_enrolment_an_admin_made_meanwhile() {
    let mut e = env("[policy]\nenforce = \"all\"\nunenrolled = \"enroll\"\n");
    let mut raced = Raced {
        user: NewUser::new(&e, NOW),
        cfg: e.cfg.clone(),
        admin_enrolled: false,
    };
    let out = authenticate(
        &e.cfg,
        e.store.as_mut(),
        &mut e.sender,
        QrStyle::None,
        &req("gina", NOW),
        &mut raced,
        &mut e.log,
    )
    .unwrap();
    assert_eq!(out, Outcome::AuthErr);
    let shown = raced.user.infos.join("\n");
    assert!(shown.contains("changed during this login"), "{shown}");
    assert!(!shown.contains("backup codes"), "{shown}");
    // The administrator's enrolment is untouched, still pending.
    assert_eq!(state(&mut e, "gina"), TotpState::Pending);
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
        code_at: Box::new(move |t| {
            totp::code_at_step(&cfg, &secret, totp::step_at(&cfg, t)).to_string()
        }),
    };
    // Typed 75 s (two steps) after the prompt: outside the window of the
    // prompt's time, inside the window of the time it arrives.
    let out = authenticate(
        &e.cfg,
        e.store.as_mut(),
        &mut e.sender,
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
    assert_eq!(state(&mut e, "jill"), TotpState::Pending);
    let audit = e
        .store
        .audit(&crate::audit::AuditFilter {
            user: Some("jill".into()),
            since: None,
        })
        .unwrap();
    assert!(
        audit.iter().any(|a| a.detail == "no code entered"),
        "{audit:?}"
    );
    let mut user = NewUser::new(&e, NOW + 60);
    let out = authenticate(
        &e.cfg,
        e.store.as_mut(),
        &mut e.sender,
        QrStyle::None,
        &req("jill", NOW + 60),
        &mut user,
        &mut e.log,
    )
    .unwrap();
    assert_eq!(out, Outcome::Success, "{:?}", user.infos);
    assert_eq!(state(&mut e, "jill"), TotpState::Active);
}

#[test]
fn a_pending_secret_an_administrator_made_is_never_shown_by_a_login() {
    let mut e = env("[policy]\nenforce = \"all\"\nunenrolled = \"enroll\"\n");
    let en = enrolment(&mut e, "kate");
    let mut sc = Script::new(&[Some("")]);
    assert_eq!(login(&mut e, "kate", NOW, &mut sc), Outcome::AuthErr);
    let shown = sc.infos.join("\n");
    assert!(!shown.contains("Manual key"), "{shown}");
    assert!(
        !shown.contains(en.base32.as_str()),
        "the secret was shown: {shown}"
    );
    assert_eq!(sc.prompts[0], PROMPT, "asked for the code the app shows");
    let mut sc = Script::new(&[Some(&code(&e, &en.secret, NOW)), Some("")]);
    assert_eq!(login(&mut e, "kate", NOW, &mut sc), Outcome::Success);
}

#[test]
fn relative_config_path_is_refused() {
    let args = ModuleArgs::parse(["config=crm2fa.toml"]);
    let mut sc = Script::new(&[]);
    let mut log = Logger::new("crm2fa-test", false);
    assert_eq!(
        run(
            &args,
            &req("kim", NOW),
            &mut sc,
            &mut log,
            &store::Fresh(None)
        ),
        Outcome::Unavailable
    );
    assert!(sc.prompts.is_empty());
}

/// A store whose transactions fail when `fails` says so (given the kind
/// of each): a disk that fills up, a database that goes away in the middle
/// of a login, a write held up by another transaction.
struct Failing {
    inner: Box<dyn Store>,
    fails: Box<dyn FnMut(store::TxKind) -> bool + Send>,
}

impl Store for Failing {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn still_current(&mut self) -> crate::Result<bool> {
        self.inner.still_current()
    }
    fn transaction(
        &mut self,
        kind: store::TxKind,
        body: &mut store::TxBody<'_>,
    ) -> crate::Result<()> {
        if (self.fails)(kind) {
            return Err(Error::store("failing", "disk I/O error"));
        }
        self.inner.transaction(kind, body)
    }
    fn check_integrity(&mut self) -> crate::Result<Vec<String>> {
        self.inner.check_integrity()
    }
}

/// `e`'s store, taken out of it (a fresh one is left in its place), in a
/// [`Failing`] that fails as `fails` says.
fn failing(e: &mut Env, fails: impl FnMut(store::TxKind) -> bool + Send + 'static) -> Failing {
    let inner = std::mem::replace(&mut e.store, store::create(&e.cfg.store, None).unwrap());
    Failing {
        inner,
        fails: Box::new(fails),
    }
}

/// Breaks the store when the code prompt comes, then answers `answer`.
struct BreaksAtPrompt {
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answer: String,
}

impl Conversation for BreaksAtPrompt {
    fn prompt_hidden(&mut self, _msg: &str) -> Result<Option<String>, ConvError> {
        self.broken.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(Some(self.answer.clone()))
    }
    fn prompt_visible(&mut self, _msg: &str) -> Result<Option<String>, ConvError> {
        Ok(Some(String::new()))
    }
    fn info(&mut self, _msg: &str) {}
    fn error(&mut self, _msg: &str) {}
}

#[test]
fn failmode_safe_never_skips_a_store_error_after_the_prompt() {
    let mut e = env("[policy]\nenforce = \"all\"\nfailmode = \"safe\"\n");
    let s = enrolled(&mut e, "lena");
    let good = code(&e, &s, NOW);
    let wrong = wrong_code(&good);
    let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = broken.clone();
    let mut flaky = failing(&mut e, move |_| {
        seen.load(std::sync::atomic::Ordering::SeqCst)
    });
    let mut conv = BreaksAtPrompt {
        broken,
        answer: wrong.into(),
    };
    let f = authenticate(
        &e.cfg,
        &mut flaky,
        &mut e.sender,
        QrStyle::None,
        &req("lena", NOW),
        &mut conv,
        &mut e.log,
    )
    .unwrap_err();
    assert!(f.prompted, "{f:?}");
    assert_eq!(
        failed(&e.cfg, &req("lena", NOW), &mut e.log, &f),
        Outcome::Unavailable
    );
}

/// `authenticate` on `e`'s store wrapped so that it fails after its first
/// transaction (the login's read of the user), then what `failed` makes of
/// that error.
fn fails_after_the_read(e: &mut Env, user: &str, now: i64, script: &mut Script) -> Outcome {
    let mut first = true;
    let mut held = failing(e, move |_| !std::mem::replace(&mut first, false));
    let f = authenticate(
        &e.cfg,
        &mut held,
        &mut e.sender,
        QrStyle::None,
        &req(user, now),
        script,
        &mut e.log,
    )
    .unwrap_err();
    e.store = held.inner;
    assert!(f.answered && !f.prompted, "{f:?}");
    failed(&e.cfg, &req(user, now), &mut e.log, &f)
}

#[test]
fn failmode_safe_does_not_lift_a_lock_when_its_audit_row_cannot_be_written() {
    let mut e = env(
        "[policy]\nenforce = \"all\"\nfailmode = \"safe\"\nprompts = 1\n\
         [lockout]\nmax_failures = 1\n",
    );
    let s = enrolled(&mut e, "lisa");
    let wrong = if code(&e, &s, NOW) == "000000" {
        "111111"
    } else {
        "000000"
    };
    let mut sc = Script::new(&[Some(wrong)]);
    assert_eq!(login(&mut e, "lisa", NOW, &mut sc), Outcome::MaxTries);
    let mut sc = Script::new(&[]);
    assert_eq!(
        fails_after_the_read(&mut e, "lisa", NOW + 1, &mut sc),
        Outcome::Unavailable
    );
    assert!(sc.prompts.is_empty());
}

#[test]
fn failmode_safe_lets_the_password_decide_only_for_an_unusable_store_or_key() {
    let cfg = env("[policy]\nfailmode = \"safe\"\n").cfg;
    let mut log = Logger::new("crm2fa-test", false);
    let r = req("mia", NOW);
    let f = |error: Error, prompted: bool| Failure {
        error,
        answered: prompted,
        prompted,
    };
    let store_down = || Error::store("db", "disk I/O error");
    assert_eq!(
        failed(&cfg, &r, &mut log, &f(store_down(), false)),
        Outcome::Ignore
    );
    assert_eq!(
        failed(&cfg, &r, &mut log, &f(store_down(), true)),
        Outcome::Unavailable,
        "after a prompt"
    );
    // The key is read after the store answered: unusable, it still may be
    // skipped; a store failing after it answered may not.
    let key_bad = || Error::Key {
        path: "/etc/crm2fa/secret.key".into(),
        message: "not a key".into(),
    };
    let answered = |error: Error| Failure {
        error,
        answered: true,
        prompted: false,
    };
    assert_eq!(
        failed(&cfg, &r, &mut log, &answered(key_bad())),
        Outcome::Ignore,
        "a key that cannot be used"
    );
    assert_eq!(
        failed(&cfg, &r, &mut log, &answered(store_down())),
        Outcome::Unavailable,
        "a store that had answered"
    );
    let lookup = Error::NoSuchAccount { user: "mia".into() };
    assert_eq!(
        failed(&cfg, &r, &mut log, &f(lookup, false)),
        Outcome::Unavailable,
        "a lookup failure"
    );
    // A file that cannot be read may be skipped; one this process ran out
    // of descriptors or memory to open, never (crm2fad, made to run out).
    let io = |errno| {
        Error::io(
            "/var/lib/crm2fa/crm2fa.db",
            std::io::Error::from_raw_os_error(errno),
        )
    };
    assert_eq!(
        failed(&cfg, &r, &mut log, &f(io(libc::EIO), false)),
        Outcome::Ignore
    );
    for errno in [libc::EMFILE, libc::ENFILE, libc::ENOMEM] {
        assert_eq!(
            failed(&cfg, &r, &mut log, &f(io(errno), false)),
            Outcome::Unavailable,
            "errno {errno}"
        );
    }
    // The same said by a store: SQLite's failure to open its journal or
    // allocate, the PostgreSQL server's or client's (SQLSTATE class 53:
    // out of memory, connections or descriptors), the system's under the
    // client's error; not a store's other failures.
    let sqlite = |code| {
        Error::store(
            "crm2fa.db",
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        )
    };
    let pg = |sqlstate: Option<&str>| {
        Error::store(
            "postgres://crm2fa@db",
            store::pg::PgError {
                sqlstate: sqlstate.map(Into::into),
                message: "failed".into(),
            },
        )
    };
    let store_io = |errno| {
        Error::store(
            "postgres://crm2fa@db",
            std::io::Error::from_raw_os_error(errno),
        )
    };
    let (denied, skipped) = (Outcome::Unavailable, Outcome::Ignore);
    for (what, e, want) in [
        (
            "SQLite out of memory",
            sqlite(rusqlite::ffi::SQLITE_NOMEM),
            denied,
        ),
        ("too many connections", pg(Some("53300")), denied),
        ("server out of memory", pg(Some("53200")), denied),
        ("client out of descriptors", pg(Some("53000")), denied),
        ("EMFILE under a store", store_io(libc::EMFILE), denied),
        (
            "SQLite I/O error",
            sqlite(rusqlite::ffi::SQLITE_IOERR),
            skipped,
        ),
        // With descriptors to spare (common/tests/resources.rs: without).
        (
            "SQLite cannot open",
            sqlite(rusqlite::ffi::SQLITE_CANTOPEN),
            skipped,
        ),
        (
            "SQLite corrupt",
            sqlite(rusqlite::ffi::SQLITE_CORRUPT),
            skipped,
        ),
        ("server unreachable", pg(None), skipped),
        ("server refuses the role", pg(Some("28P01")), skipped),
        ("EIO under a store", store_io(libc::EIO), skipped),
    ] {
        assert_eq!(failed(&cfg, &r, &mut log, &f(e, false)), want, "{what}");
    }
    let secure = env("").cfg;
    assert_eq!(
        failed(&secure, &r, &mut log, &f(store_down(), false)),
        Outcome::Unavailable
    );
}

#[test]
fn a_caller_that_is_not_root_gets_what_nonroot_says_without_reading_anything() {
    let mut sc = Script::new(&[]);
    let mut log = Logger::new("crm2fa-test", false);
    let locker = Request {
        caller_uid: 1000,
        ..req("nina", NOW)
    };
    // The config does not even exist: nothing is read.
    let ignore = ModuleArgs::parse(["config=/nonexistent/crm2fa.toml"]);
    assert_eq!(
        run(&ignore, &locker, &mut sc, &mut log, &store::Fresh(None)),
        Outcome::Ignore
    );
    let deny = ModuleArgs::parse(["config=/nonexistent/crm2fa.toml", "nonroot=deny"]);
    assert_eq!(
        run(&deny, &locker, &mut sc, &mut log, &store::Fresh(None)),
        Outcome::AuthErr
    );
    assert!(sc.prompts.is_empty() && sc.errors.is_empty());
    assert_eq!(
        run(
            &ignore,
            &req("nina", NOW),
            &mut sc,
            &mut log,
            &store::Fresh(None)
        ),
        Outcome::Unavailable,
        "root: the missing config denies"
    );
}

#[test]
fn a_clock_stepped_backwards_never_makes_a_used_step_good_again() {
    let mut e = env("[policy]\nenforce = \"all\"\nprompts = 1\n");
    let s = enrolled(&mut e, "olga");
    let mut sc = Script::new(&[Some(&code(&e, &s, NOW))]);
    assert_eq!(login(&mut e, "olga", NOW, &mut sc), Outcome::Success);
    // The host's clock goes back ten minutes: every code of that time,
    // the one just used included, belongs to an older step.
    for back in [0, 30, 300, 600] {
        let then = NOW - back;
        let mut sc = Script::new(&[Some(&code(&e, &s, then))]);
        assert_eq!(
            login(&mut e, "olga", then, &mut sc),
            Outcome::AuthErr,
            "{back} s back"
        );
    }
    let later = NOW + 30;
    let mut sc = Script::new(&[Some(&code(&e, &s, later))]);
    assert_eq!(login(&mut e, "olga", later, &mut sc), Outcome::Success);
}

#[test]
fn a_login_that_needs_no_code_is_not_refused_for_a_busy_audit_table() {
    let mut e = env("[policy]\nenforce = \"opt-in\"\n");
    // Reads work; the write of the audit row fails.
    let tried = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let write_tried = tried.clone();
    let mut s = failing(&mut e, move |kind| {
        let write = kind != store::TxKind::Read;
        if write {
            write_tried.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        write
    });
    let mut sc = Script::new(&[]);
    let out = authenticate(
        &e.cfg,
        &mut s,
        &mut e.sender,
        QrStyle::None,
        &req("pia", NOW),
        &mut sc,
        &mut e.log,
    );
    assert_eq!(out.unwrap(), Outcome::Ignore);
    assert!(
        tried.load(std::sync::atomic::Ordering::SeqCst),
        "the write was tried"
    );
}

mod hostile;
mod sent;

/// Stores that count the times a login asks for one, and have none.
struct NoStores {
    opens: std::cell::Cell<u32>,
    keeps_open: bool,
}

impl Stores for NoStores {
    fn open(&self, cfg: &crate::config::StoreConfig) -> crate::Result<Box<dyn Store + '_>> {
        self.opens.set(self.opens.get() + 1);
        Err(Error::store(
            cfg.path.display().to_string(),
            "no store here",
        ))
    }

    fn keeps_open(&self) -> bool {
        self.keeps_open
    }
}

#[test]
fn a_name_nss_does_not_know_opens_no_store_unless_stores_are_kept_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm2fa.toml");
    crate::fsperm::create_private_file(&path, b"[store]\npath = \"db\"\nkey_file = \"key\"\n")
        .unwrap();
    let config = format!("config={}", path.display());
    let args = ModuleArgs::parse([config.as_str()]);
    let mut log = Logger::new("crm2fa-test", false);
    for keeps_open in [false, true] {
        let stores = NoStores {
            opens: std::cell::Cell::new(0),
            keeps_open,
        };
        let mut sc = Script::new(&[]);
        let unknown = req("no-such-account-crm2fa", NOW);
        assert_eq!(
            run(&args, &unknown, &mut sc, &mut log, &stores),
            Outcome::UserUnknown,
            "the unknown account decides, not the store"
        );
        // A store opened afresh is not opened for a name NSS does not
        // know; a kept one is lent before the lookup, so that the login's
        // first read goes ahead.
        assert_eq!(stores.opens.get(), u32::from(keeps_open));
    }
}
