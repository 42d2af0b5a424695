//! Codes by email and SMS at the prompt: asked for with a word, sent
//! without asking to a user whose factor is a channel, refused when the
//! channel is not there, limited, and never counted when sending fails.
use super::*;
use crate::audit::AuditFilter;

const EMAIL: &str = "[email]\ncode_ttl = \"10m\"\n";
const SMS: &str = "[sms]\ncommand = [\"/bin/true\"]\n";

/// `env` with the sections `extra`, and `user` known to the store with
/// email address u@example.com and phone +4420794611.
fn env_for(user: &str, extra: &str) -> Env {
    let mut e = env(&format!(
        "[policy]\nenforce = \"all\"\n[backup_codes]\ncount = 2\n{extra}"
    ));
    let salt = crate::codes::new_salt();
    let a = |f| AuditCtx::default().entry(NOW, user, &f);
    e.store
        .disable(user, &salt, NOW - 600, &a(Fact::Disabled))
        .unwrap();
    e.store.enable(user, NOW - 600, &a(Fact::Enabled)).unwrap();
    for (c, to) in [
        (Channel::Email, "u@example.com"),
        (Channel::Sms, "+4420794611"),
    ] {
        let f = Fact::ContactSet {
            channel: c,
            to: None,
        };
        e.store
            .set_contact(user, c, Some(to), &salt, NOW - 600, &a(f))
            .unwrap();
    }
    e
}

/// Make `channel` the user's factor, as `enroll --method` does.
fn by_channel(e: &mut Env, user: &str, channel: Channel) {
    let mut ops = Ops {
        cfg: &e.cfg,
        store: e.store.as_mut(),
        log: &mut e.log,
        ctx: AuditCtx::default(),
    };
    ops.enroll_delivery(user, channel, NOW - 600).unwrap();
}

fn failures(e: &mut Env, user: &str) -> u32 {
    e.store.user(user).unwrap().unwrap().lock.failures
}

fn events(e: &mut Env, user: &str) -> Vec<String> {
    let filter = AuditFilter {
        user: Some(user.into()),
        since: Some(NOW),
    };
    e.store
        .audit(&filter)
        .unwrap()
        .iter()
        .map(|r| format!("{} {} {}", r.event.as_str(), r.outcome.as_str(), r.detail))
        .collect()
}

#[test]
fn typing_email_sends_a_code_that_logs_in_once() {
    let mut e = env_for("ann", EMAIL);
    let s = enrolled(&mut e, "ann");
    let _ = s;
    let outbox = e.sender.clone();
    let mut sc = Script::new(&[Some("Email"), Some(SENT), Some("")]).reading(&outbox);
    assert_eq!(login(&mut e, "ann", NOW, &mut sc), Outcome::Success);
    assert_eq!(
        sc.infos[0],
        "Or type \"email\" for a code at u***@example.com."
    );
    assert_eq!(
        sc.infos[1],
        "A code was sent by email to u***@example.com. It is valid for 10 minutes."
    );
    let m = outbox.last().unwrap();
    assert_eq!(
        (m.channel, m.to.as_str()),
        (Channel::Email, "u@example.com")
    );
    assert_eq!(m.code.len(), 6);
    assert!(
        m.text.contains(&m.code) && m.text.contains("ann@"),
        "{}",
        m.text
    );
    assert_eq!(m.subject, "Your verification code");
    let ev = events(&mut e, "ann");
    assert!(
        ev.iter()
            .any(|l| l == "send issued code sent by email to u***@example.com"),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|l| l.starts_with("login success email")),
        "{ev:?}"
    );
    // The code works once.
    let again = m.code.clone();
    let mut sc = Script::new(&[Some(&again)]);
    e.cfg.policy.prompts = 1;
    assert_eq!(login(&mut e, "ann", NOW + 5, &mut sc), Outcome::AuthErr);
    assert_eq!(sc.errors, vec![INVALID]);
}

#[test]
fn a_sent_code_expires_and_a_wrong_one_counts() {
    let mut e = env_for("bea", EMAIL);
    enrolled(&mut e, "bea");
    let outbox = e.sender.clone();
    let mut sc = Script::new(&[Some("email"), Some("")]).reading(&outbox);
    login(&mut e, "bea", NOW, &mut sc);
    let code = outbox.last().unwrap().code.clone();
    let wrong = wrong_code(&code);
    let mut sc = Script::new(&[Some(wrong)]);
    e.cfg.policy.prompts = 1;
    assert_eq!(login(&mut e, "bea", NOW + 10, &mut sc), Outcome::AuthErr);
    assert_eq!(failures(&mut e, "bea"), 1, "a wrong code counts");
    let mut sc = Script::new(&[Some(&code)]);
    assert_eq!(login(&mut e, "bea", NOW + 600, &mut sc), Outcome::AuthErr);
    assert_eq!(sc.errors, vec![INVALID], "expired after 10 minutes");
}

#[test]
fn a_failed_send_says_so_offers_the_rest_and_counts_nothing() {
    let mut e = env_for("cat", &format!("{EMAIL}{SMS}"));
    by_channel(&mut e, "cat", Channel::Email);
    e.sender.fail = Some(SendError::NotSent(
        "cannot connect to the mail server localhost:25".into(),
    ));
    let mut sc = Script::new(&[Some(""), Some(""), Some("")]);
    assert_eq!(login(&mut e, "cat", NOW, &mut sc), Outcome::AuthErr);
    assert_eq!(
        sc.errors[0],
        "The code could not be sent by email. Enter a backup code, or type \"sms\" to get a \
         code by SMS."
    );
    assert_eq!(sc.prompts, vec![PROMPT; 3], "the prompt is still offered");
    assert_eq!(failures(&mut e, "cat"), 0);
    assert!(
        e.store
            .login_view("cat", None, &Channel::ALL, NOW)
            .unwrap()
            .sent
            .is_empty(),
        "withdrawn"
    );
    let ev = events(&mut e, "cat");
    assert!(
        ev.iter().any(|l| l
            == "send failure code could not be sent by email: cannot connect to \
                                the mail server localhost:25"),
        "{ev:?}"
    );
}

#[test]
fn a_send_not_confirmed_keeps_the_code_which_may_arrive_and_counts_it() {
    let mut e = env_for("cid", &format!("{EMAIL}{SMS}"));
    by_channel(&mut e, "cid", Channel::Email);
    e.sender.fail = Some(SendError::Unconfirmed(
        "the mail server did not confirm it".into(),
    ));
    let outbox = e.sender.clone();
    // It arrived after all: the code works.
    let mut sc = Script::new(&[Some(SENT)]).reading(&outbox);
    assert_eq!(login(&mut e, "cid", NOW, &mut sc), Outcome::Success);
    assert_eq!(
        sc.errors,
        vec![
            "A code was sent by email to u***@example.com, but its delivery was not confirmed. \
             If it arrives, type it (valid for 10 minutes). Enter a backup code, or type \
             \"sms\" to get a code by SMS."
        ]
    );
    let ev = events(&mut e, "cid");
    assert!(
        ev.iter().any(|l| l
            == "send issued code sent by email, delivery not confirmed (kept): the mail server \
                did not confirm it"),
        "{ev:?}"
    );
    // Each counts toward the resend limit, as any code sent: the default
    // allows 3 in 15 minutes.
    for i in 1..=2 {
        let mut sc = Script::new(&[Some("email"), Some("")]);
        e.cfg.policy.prompts = 1;
        login(&mut e, "cid", NOW + 60 * i, &mut sc);
    }
    let before = outbox.count();
    let mut sc = Script::new(&[Some("email"), Some("")]);
    login(&mut e, "cid", NOW + 200, &mut sc);
    assert_eq!(outbox.count(), before, "limited: {:?}", sc.errors);
    assert!(
        sc.errors[0].starts_with("Too many codes were sent by email"),
        "{:?}",
        sc.errors
    );
}

#[test]
fn a_user_whose_factor_is_a_channel_gets_the_code_without_asking() {
    let mut e = env_for("dan", SMS);
    by_channel(&mut e, "dan", Channel::Sms);
    let outbox = e.sender.clone();
    let mut sc = Script::new(&[Some(SENT)]).reading(&outbox);
    assert_eq!(login(&mut e, "dan", NOW, &mut sc), Outcome::Success);
    assert_eq!(sc.prompts, vec![PROMPT]);
    assert_eq!(
        sc.infos,
        vec!["A code was sent by SMS to ***4611. It is valid for 10 minutes."]
    );
    let m = outbox.last().unwrap();
    assert_eq!((m.channel, m.to.as_str()), (Channel::Sms, "+4420794611"));
    assert!(m.text.contains(&m.code));
    // A code still unused from an earlier login is not replaced.
    let mut sc = Script::new(&[Some("")]);
    e.cfg.policy.prompts = 1;
    login(&mut e, "dan", NOW + 1, &mut sc);
    assert_eq!(outbox.count(), 2);
    let mut sc = Script::new(&[Some("")]);
    login(&mut e, "dan", NOW + 2, &mut sc);
    assert_eq!(
        outbox.count(),
        2,
        "the code of the last login is still unused"
    );
}

#[test]
fn a_channel_without_config_or_contact_is_refused_and_not_counted() {
    let mut e = env_for("eve", EMAIL);
    enrolled(&mut e, "eve");
    let mut sc = Script::new(&[Some("sms"), Some("SMS"), Some("")]);
    assert_eq!(login(&mut e, "eve", NOW, &mut sc), Outcome::AuthErr);
    assert_eq!(
        sc.errors,
        vec!["Codes by SMS are not available for this account."; 2]
    );
    assert_eq!(failures(&mut e, "eve"), 0);
    assert_eq!(e.sender.count(), 0);
}

#[test]
fn the_resend_limit_ends_the_sending() {
    let mut e = env_for("fay", EMAIL);
    enrolled(&mut e, "fay");
    let mut sc = Script::new(&[Some("email"); 6]);
    assert_eq!(login(&mut e, "fay", NOW, &mut sc), Outcome::AuthErr);
    assert_eq!(e.sender.count(), 3, "3 per 15 minutes by default");
    assert!(
        sc.errors[0].starts_with(
            "Too many codes were sent by email lately; the next can be sent in about 15 min."
        ),
        "{:?}",
        sc.errors
    );
    assert_eq!(sc.prompts.len(), 6, "each send gave its prompt back");
    assert_eq!(failures(&mut e, "fay"), 0);
}

#[test]
fn a_locked_user_gets_no_code() {
    let mut e = env_for("gil", &format!("{EMAIL}[lockout]\nmax_failures = 1\n"));
    by_channel(&mut e, "gil", Channel::Email);
    let mut sc = Script::new(&[Some("000000"), Some("111111")]);
    login(&mut e, "gil", NOW, &mut sc);
    let before = e.sender.count();
    let mut sc = Script::new(&[]);
    assert_eq!(login(&mut e, "gil", NOW + 1, &mut sc), Outcome::MaxTries);
    assert_eq!(e.sender.count(), before);
}

/// Asks for a code by email, after another login (another host) locked
/// the user while this one was at its prompt.
struct LockedMeanwhile {
    other: Box<dyn Store>,
    cfg: Config,
    errors: Vec<String>,
}

impl Conversation for LockedMeanwhile {
    fn prompt_hidden(&mut self, _msg: &str) -> Result<Option<String>, ConvError> {
        let wrong = Candidate::default();
        let v = self
            .other
            .redeem(
                "hal",
                &wrong,
                NOW + 1,
                &self.cfg.lockout,
                &AuditCtx::default(),
                None,
            )
            .unwrap();
        assert!(
            matches!(
                v,
                Verdict::Rejected {
                    locked_until: Some(_),
                    ..
                }
            ),
            "{v:?}"
        );
        Ok(Some("email".into()))
    }
    fn prompt_visible(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
        self.prompt_hidden(msg)
    }
    fn info(&mut self, _msg: &str) {}
    fn error(&mut self, msg: &str) {
        self.errors.push(msg.into());
    }
}

#[test]
fn a_lock_found_when_a_code_is_asked_for_is_refused_and_recorded() {
    let mut e = env_for("hal", &format!("{EMAIL}[lockout]\nmax_failures = 1\n"));
    enrolled(&mut e, "hal");
    let mut conv = LockedMeanwhile {
        other: store::open(&e.cfg.store, None).unwrap(),
        cfg: e.cfg.clone(),
        errors: vec![],
    };
    let out = authenticate(
        &e.cfg,
        e.store.as_mut(),
        &mut e.sender,
        QrStyle::None,
        &req("hal", NOW + 2),
        &mut conv,
        &mut e.log,
    )
    .unwrap();
    assert_eq!(out, Outcome::MaxTries);
    assert_eq!(e.sender.count(), 0, "no code is sent to a locked user");
    assert!(
        conv.errors.iter().any(|m| m.contains("locked")),
        "{:?}",
        conv.errors
    );
    let recorded = events(&mut e, "hal");
    assert!(
        recorded
            .iter()
            .any(|r| r.starts_with("login locked") && r.contains("no code checked")),
        "{recorded:?}"
    );
}

#[test]
fn failmode_safe_denies_when_the_automatic_send_cannot_be_recorded() {
    let mut e = env_for("liam", EMAIL);
    e.cfg.policy.failmode = FailMode::Safe;
    by_channel(&mut e, "liam", Channel::Email);
    let mut sc = Script::new(&[Some("")]);
    // The store answered for liam; the send's write then failed: his code
    // is not skipped for it.
    assert_eq!(
        fails_after_the_read(&mut e, "liam", NOW, &mut sc),
        Outcome::Unavailable
    );
    assert!(e.sender.last().is_none());
}

/// Answers the code prompt with a code that another login, on another
/// handle of the same store (another process or host), had sent meanwhile.
struct SentElsewhere {
    other: Box<dyn Store>,
    cfg: Config,
    outbox: Outbox,
    errors: Vec<String>,
}

impl Conversation for SentElsewhere {
    fn prompt_hidden(&mut self, _msg: &str) -> Result<Option<String>, ConvError> {
        let mut asks = Script::new(&[Some("email"), Some("")]);
        let mut log = Logger::new("crm2fa-test", false);
        let mut cfg = self.cfg.clone();
        cfg.policy.prompts = 1;
        let other = authenticate(
            &cfg,
            self.other.as_mut(),
            &mut self.outbox,
            QrStyle::None,
            &req("eve", NOW + 5),
            &mut asks,
            &mut log,
        );
        assert!(other.is_ok());
        Ok(self.outbox.last().map(|m| m.code.clone()))
    }
    fn prompt_visible(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
        self.prompt_hidden(msg)
    }
    fn info(&mut self, _msg: &str) {}
    fn error(&mut self, msg: &str) {
        self.errors.push(msg.into());
    }
}

#[test]
fn a_code_another_login_had_sent_is_good_here_too() {
    let mut e = env_for("eve", EMAIL);
    enrolled(&mut e, "eve");
    e.cfg.policy.prompts = 1;
    let mut conv = SentElsewhere {
        other: store::open(&e.cfg.store, None).unwrap(),
        cfg: e.cfg.clone(),
        outbox: Outbox::default(),
        errors: vec![],
    };
    let out = authenticate(
        &e.cfg,
        e.store.as_mut(),
        &mut e.sender,
        QrStyle::None,
        &req("eve", NOW + 10),
        &mut conv,
        &mut e.log,
    )
    .unwrap();
    assert_eq!(out, Outcome::Success, "{:?}", conv.errors);
    assert_eq!(failures(&mut e, "eve"), 0);
}
