//! Codes by email and SMS, and notices, through real libpam and real
//! servers: an SMTP server (python3-aiosmtpd) and an HTTP server started on
//! 127.0.0.1 by each test, and an SMS command. The login asks for a code
//! with the word `email` or `sms` (or gets one without asking when the
//! channel is the user's factor), the test reads it from what the server
//! received and types it.

use std::time::Duration;

use crm2fa_tests::sinks::{code_in, dead_port, delivery_section, send_program, HttpSink, SmtpSink};
use crm2fa_tests::*;

const PW: &str = "correct horse";
const SENT: &str = "A code was sent by";
const WAIT: Duration = Duration::from_secs(30);

/// A sandbox whose `[email]` goes to `smtp`, with `alice` enrolled (TOTP)
/// and her address set.
fn email_sandbox(smtp: &SmtpSink, extra: &str) -> (Sandbox, Enrolled) {
    let sections = format!(
        "[policy]\nenforce = \"all\"\n{}{}{extra}",
        smtp.email_section(""),
        delivery_section("")
    );
    let (sb, e) = Sandbox::with_active_user(&sections, "alice", PW);
    sb.admin_ok(&["set-contact", "alice", "--email", "alice@example.com"]);
    (sb, e)
}

/// Log `user` in, asking for a code by `word` (none: the code comes without
/// asking); `read` fetches the code from where it went. The transcript.
fn login_with_sent_code(
    sb: &Sandbox,
    user: &str,
    word: Option<&str>,
    read: impl FnOnce() -> String,
) -> LoginResult {
    let mut l = sb.spawn_login(user, &[]);
    l.send_line(PW);
    if let Some(w) = word {
        l.send_line(w);
    }
    l.wait_for(SENT, WAIT);
    let code = read();
    l.send_line(&code);
    l.finish()
}

/// The header `name` of a raw message.
fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    raw.lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

/// The body of a raw message (after the headers), soft line breaks of
/// quoted-printable joined.
fn body(raw: &str) -> String {
    let b = raw.split_once("\r\n\r\n").map_or(raw, |(_, b)| b);
    b.replace("=\r\n", "")
}

#[test]
fn a_code_by_email_logs_in_once() {
    let smtp = SmtpSink::start(None);
    let (sb, _e) = email_sandbox(&smtp, "");
    let r = login_with_sent_code(&sb, "alice", Some("email"), || {
        let mail = &smtp.wait_for(1)[0];
        code_in(&body(mail), 6).unwrap_or_else(|| panic!("no code in {mail}"))
    });
    r.assert_success();
    assert!(r.output.contains("a***@example.com"), "{r}");
    assert!(
        r.output
            .contains("Or type \"email\" for a code at a***@example.com."),
        "{r}"
    );
    let mail = &smtp.messages()[0];
    assert_eq!(header(mail, "To"), Some("alice@example.com"), "{mail}");
    assert_eq!(
        header(mail, "Subject"),
        Some("Your verification code"),
        "{mail}"
    );
    assert!(body(mail).contains("alice@"), "{mail}");
    let code = code_in(&body(mail), 6).unwrap();
    // The code works once.
    let again = sb.login("alice", &[PW, &code]);
    again.assert_denied();
    assert!(again.invalid_code_messages() >= 1, "{again}");
    let audit = sb.audit("alice");
    assert!(
        audit
            .iter()
            .any(|a| a["event"] == "send" && a["outcome"] == "issued"),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|a| a["event"] == "login" && a["outcome"] == "success" && a["detail"] == "email"),
        "{audit:?}"
    );
}

#[test]
fn an_expired_email_code_is_refused() {
    let smtp = SmtpSink::start(None);
    let sections = format!(
        "[policy]\nenforce = \"all\"\nprompts = 1\n{}{}",
        smtp.email_section("code_ttl = \"1s\"\n"),
        delivery_section("")
    );
    let (sb, _e) = Sandbox::with_active_user(&sections, "alice", PW);
    sb.admin_ok(&["set-contact", "alice", "--email", "alice@example.com"]);
    let r = login_with_sent_code(&sb, "alice", Some("email"), || {
        let mail = &smtp.wait_for(1)[0];
        std::thread::sleep(Duration::from_millis(2100));
        code_in(&body(mail), 6).expect("a code")
    });
    r.assert_denied();
    assert_eq!(r.invalid_code_messages(), 1, "{r}");
    assert!(r.output.contains("It is valid for 1 minute."), "{r}");
}

#[test]
fn a_dead_mail_server_fails_fast_counts_nothing_and_offers_the_rest() {
    let port = dead_port();
    let sections = format!(
        "[policy]\nenforce = \"all\"\n[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\n\
         tls = \"none\"\n{}",
        delivery_section("")
    );
    let (sb, e) = Sandbox::with_active_user(&sections, "alice", PW);
    sb.admin_ok(&["set-contact", "alice", "--email", "alice@example.com"]);
    let r = sb.login("alice", &[PW, "email", &e.backup_codes[0]]);
    r.assert_success();
    assert!(
        r.output.contains(
            "The code could not be sent by email. Enter a code from your authenticator app, \
             or a backup code."
        ),
        "{r}"
    );
    assert_eq!(sb.status("alice")["failures"], 0);
    let audit = sb.audit("alice");
    let failed = audit
        .iter()
        .find(|a| a["event"] == "send" && a["outcome"] == "failure")
        .unwrap_or_else(|| panic!("no failed send in {audit:?}"));
    let why = failed["detail"].as_str().unwrap_or_default();
    assert!(
        why.contains("127.0.0.1") && !why.contains("did not finish"),
        "a refused connection fails at once, with the server named: {why}"
    );
}

#[test]
fn a_user_whose_factor_is_sms_gets_the_code_from_an_http_gateway() {
    let http = HttpSink::start(200);
    let sections = format!(
        "[policy]\nenforce = \"all\"\n[sms]\nurl = \"http://127.0.0.1:{}/send\"\n\
         headers = {{ \"Content-Type\" = \"application/json\" }}\n\
         body_template = '{{\"to\": \"{{phone}}\", \"text\": \"{{message}}\", \"otp\": \"{{code}}\"}}'\n{}",
        http.port(),
        delivery_section("")
    );
    let sb = Sandbox::with_config(&sections);
    sb.add_user("bob", PW);
    sb.admin_ok(&["set-contact", "bob", "--phone", "+44 20 7946 0123"]);
    let v = sb.admin_json(&["enroll", "bob", "--method", "sms"]);
    assert_eq!(
        (v["method"].as_str(), v["state"].as_str()),
        (Some("sms"), Some("active")),
        "a factor of its own: {v}"
    );
    let backup = json_strings(&v["backup_codes"]);
    assert!(!backup.is_empty(), "{v}");
    let r = login_with_sent_code(&sb, "bob", None, || {
        let req = &http.wait_for(1)[0];
        assert_eq!(req["method"], "POST", "{req}");
        assert_eq!(req["path"], "/send", "{req}");
        let body: serde_json::Value =
            serde_json::from_str(req["body"].as_str().unwrap()).expect("JSON body");
        assert_eq!(body["to"], "+442079460123", "{req}");
        let otp = body["otp"].as_str().unwrap().to_string();
        assert!(body["text"].as_str().unwrap().contains(&otp), "{req}");
        otp
    });
    r.assert_success();
    assert_eq!(r.prompts_seen, 1, "{r}");
    assert!(
        r.output.contains("A code was sent by SMS to ***0123."),
        "{r}"
    );
    let st = sb.status("bob");
    assert_eq!(st["phone"], "***0123", "{st}");
    assert!(
        json_strings(&st["methods"]).contains(&"sms".to_string()),
        "{st}"
    );
}

#[test]
fn an_sms_command_gets_the_phone_and_the_message_as_two_arguments() {
    let sb = Sandbox::new();
    let out = sb.root().join("sms.out");
    let script = sb.root().join("send-sms");
    write_file(
        &script,
        &format!(
            "#!/bin/sh\nprintf '%s\\n' \"$#\" \"$1\" \"$2\" > {}\n",
            out.display()
        ),
        0o755,
    );
    sb.write_config(&config_text(&format!(
        "[policy]\nenforce = \"all\"\n[sms]\ncommand = [\"{}\"]\n{}",
        script.display(),
        delivery_section("")
    )));
    sb.add_user("carol", PW);
    sb.enroll_active("carol");
    sb.admin_ok(&["set-contact", "carol", "--phone", "+4420794600"]);
    let r = login_with_sent_code(&sb, "carol", Some("sms"), || {
        let text = std::fs::read_to_string(&out).expect("the command ran");
        let args: Vec<&str> = text.lines().collect();
        assert_eq!(args[..2], ["2", "+4420794600"], "{text}");
        code_in(args[2], 6).unwrap_or_else(|| panic!("no code in {text}"))
    });
    r.assert_success();
}

/// `nap` in the sandbox: a link to `sleep`, so that what a script starts
/// carries the sandbox's directory in its command line.
fn add_nap(sb: &Sandbox) {
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("sleep");
    std::os::unix::fs::symlink(sleep, sb.root().join("nap")).expect("ln -s");
}

/// The processes whose command line holds the sandbox's directory, once
/// killed ones had a moment to go; any left are killed, so that a failed
/// test leaves nothing behind.
fn left_running(sb: &Sandbox) -> Vec<String> {
    let marker = sb.root().to_string_lossy().into_owned();
    let find = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| {
                let pid = e.ok()?.file_name().into_string().ok()?;
                pid.parse::<u32>().ok()?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                String::from_utf8_lossy(&cmdline)
                    .contains(&marker)
                    .then_some(pid)
            })
            .collect()
    };
    let until = std::time::Instant::now() + Duration::from_secs(2);
    let mut left = find();
    while !left.is_empty() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        left = find();
    }
    for pid in &left {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status();
    }
    left
}

/// The reason of the failed send in `user`'s audit.
fn failed_send(sb: &Sandbox, user: &str) -> String {
    let audit = sb.audit(user);
    let failed = audit
        .iter()
        .find(|a| a["event"] == "send" && a["outcome"] == "failure")
        .unwrap_or_else(|| panic!("no failed send in {audit:?}"));
    failed["detail"].as_str().unwrap_or_default().to_string()
}

/// A sandbox with `nap`, the SMS command `sms` and the sending program
/// `program` (scripts written into it), `[delivery] timeout` `timeout`, and
/// `carol` enrolled (TOTP) with a phone.
fn sms_sandbox(sms: &str, program: &str, timeout: &str) -> (Sandbox, Enrolled) {
    let sb = Sandbox::new();
    add_nap(&sb);
    let (command, send) = (sb.root().join("sms"), sb.root().join("send"));
    write_file(&command, &format!("#!/bin/sh\n{sms}\n"), 0o755);
    write_file(&send, &format!("#!/bin/sh\n{program}\n"), 0o755);
    sb.write_config(&config_text(&format!(
        "[policy]\nenforce = \"all\"\n[sms]\ncommand = [\"{}\"]\n\
         [delivery]\nprogram = \"{}\"\ntimeout = \"{timeout}\"\n",
        command.display(),
        send.display()
    )));
    sb.add_user("carol", PW);
    let e = sb.enroll_active("carol");
    sb.admin_ok(&["set-contact", "carol", "--phone", "+4420794600"]);
    (sb, e)
}

#[test]
fn a_send_stopped_at_the_deadline_leaves_nothing_running() {
    // crm2fa-send starts late, so that the module's deadline comes before
    // its own; the SMS command starts two processes and waits for them.
    let (sb, e) = sms_sandbox(
        "\"${0%/*}/nap\" 30 &\n\"${0%/*}/nap\" 30",
        &format!("sleep 1\nexec {} \"$@\"", send_program().display()),
        "2s",
    );
    let r = sb.login("carol", &[PW, "sms", &e.backup_codes[0]]);
    r.assert_success();
    // Stopped before it said: the SMS may have gone out, so the code is
    // kept and the user told so.
    assert!(
        r.output
            .contains("A code was sent by SMS to ***4600, but its delivery was not confirmed."),
        "{r}"
    );
    let audit = sb.audit("carol");
    let unconfirmed = audit
        .iter()
        .find(|a| {
            a["event"] == "send"
                && a["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("not confirmed"))
        })
        .unwrap_or_else(|| panic!("no unconfirmed send in {audit:?}"));
    let why = unconfirmed["detail"].as_str().unwrap_or_default();
    assert!(why.contains("did not finish within 2 s"), "{why}");
    assert_eq!(left_running(&sb), Vec::<String>::new(), "still running");
}

#[test]
fn a_failed_send_returns_at_once_though_a_child_keeps_stderr_open() {
    // The program's child inherits its standard error and outlives it.
    let (sb, e) = sms_sandbox(
        "exit 0",
        "\"${0%/*}/nap\" 30 &\necho 'modem refused' >&2\nexit 1",
        "5s",
    );
    let started = std::time::Instant::now();
    let r = sb.login("carol", &[PW, "sms", &e.backup_codes[0]]);
    let took = started.elapsed();
    r.assert_success();
    let why = failed_send(&sb, "carol");
    assert!(why.ends_with(": modem refused"), "{why}");
    assert!(took < Duration::from_secs(5), "the login took {took:?}");
    assert_eq!(left_running(&sb), Vec::<String>::new(), "still running");
}

#[test]
fn notices_arrive_for_disable_reset_backup_codes_and_recovery() {
    let smtp = SmtpSink::start(None);
    let sections = format!(
        "[policy]\nenforce = \"opt-in\"\n{}{}",
        smtp.email_section(""),
        delivery_section("")
    );
    let (sb, _e) = Sandbox::with_active_user(&sections, "dora", PW);
    sb.admin_ok(&["set-contact", "dora", "--email", "dora@example.com"]);
    let v = sb.admin_json(&["disable", "dora", "--yes"]);
    assert_eq!(v["notice"]["sent"], true, "{v}");
    assert_eq!(v["notice"]["to"], "d***@example.com", "{v}");
    sb.admin_ok(&["enable", "dora"]);
    sb.admin_ok(&["backup-codes", "dora", "--regenerate", "--yes"]);
    sb.admin_ok(&["recovery", "dora"]);
    let text = sb.admin_ok(&["reset", "dora", "--yes"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("The user was told by email"),
        "{}",
        show_output(&text)
    );
    let mails = smtp.wait_for(4);
    let subjects: Vec<&str> = mails
        .iter()
        .map(|m| header(m, "Subject").unwrap_or_default())
        .collect();
    for (i, what) in [
        "two-factor login turned off",
        "new backup codes",
        "recovery code issued",
        "two-factor login reset",
    ]
    .into_iter()
    .enumerate()
    {
        assert!(subjects[i].ends_with(what), "{subjects:?}");
        let b = body(&mails[i]);
        assert!(b.contains("When: ") && b.contains("By: "), "{b}");
        assert_eq!(header(&mails[i], "To"), Some("dora@example.com"));
    }
    let audit = sb.audit("dora");
    assert_eq!(
        audit.iter().filter(|a| a["event"] == "notice").count(),
        4,
        "{audit:?}"
    );
}

#[test]
fn a_notice_that_cannot_be_sent_leaves_the_change_done() {
    let port = dead_port();
    let sections = format!(
        "[policy]\nenforce = \"opt-in\"\n[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\n\
         tls = \"none\"\n{}",
        delivery_section("")
    );
    let (sb, _e) = Sandbox::with_active_user(&sections, "erin", PW);
    sb.admin_ok(&["set-contact", "erin", "--email", "erin@example.com"]);
    let v = sb.admin_json(&["disable", "erin", "--yes"]);
    assert_eq!(v["state"], "disabled", "{v}");
    assert_eq!(v["notice"]["sent"], false, "{v}");
    assert!(v["notice"]["error"].as_str().is_some(), "{v}");
}

#[test]
fn contacts_are_checked_masked_and_needed_for_a_channel() {
    let smtp = SmtpSink::start(None);
    let sb = Sandbox::with_config(&format!(
        "{}{}",
        smtp.email_section(""),
        delivery_section("")
    ));
    sb.add_user("fred", PW);
    let bad = sb.admin(&["set-contact", "fred", "--email", "fred"]);
    assert_eq!(bad.status.code(), Some(1), "{}", show_output(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("\"fred\" has no @"),
        "{}",
        show_output(&bad)
    );
    let bad = sb.admin(&["set-contact", "fred", "--phone", "07946 0123"]);
    assert_eq!(bad.status.code(), Some(1), "{}", show_output(&bad));
    let none = sb.admin(&["set-contact", "fred"]);
    assert_eq!(none.status.code(), Some(2), "{}", show_output(&none));
    let refused = sb.admin(&["enroll", "fred", "--method", "email"]);
    assert_eq!(refused.status.code(), Some(1), "{}", show_output(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("set-contact fred --email"),
        "{}",
        show_output(&refused)
    );
    let v = sb.admin_json(&["set-contact", "fred", "--email", "fred@example.com"]);
    assert_eq!(v["email"], "f***@example.com", "{v}");
    sb.admin_ok(&["enroll", "fred", "--method", "email"]);
    assert_eq!(sb.status("fred")["state"], "active", "a factor of its own");
    // An app would replace it (and its backup codes): asked.
    let unasked = sb.admin(&["enroll", "fred", "--no-qr"]);
    assert_eq!(unasked.status.code(), Some(1), "{}", show_output(&unasked));
    assert!(
        show_output(&unasked).contains("fred already has an email factor"),
        "{}",
        show_output(&unasked)
    );
    // Removing the address of the delivery channel ends a factor: asked.
    let unasked = sb.admin(&["set-contact", "fred", "--email", ""]);
    assert_eq!(unasked.status.code(), Some(1), "{}", show_output(&unasked));
    assert!(
        show_output(&unasked).contains("ends fred's email factor"),
        "{}",
        show_output(&unasked)
    );
    assert_eq!(sb.status("fred")["email"], "f***@example.com");
    let v = sb.admin_json(&["set-contact", "fred", "--email", "", "--yes"]);
    assert_eq!(v["email"], serde_json::Value::Null, "{v}");
    let st = sb.status("fred");
    assert!(
        !json_strings(&st["methods"]).contains(&"email".to_string()),
        "removing the address ends the email factor: {st}"
    );
    assert_eq!(st["state"], "none", "{st}");
}

#[test]
fn doctor_checks_the_sending_program_when_a_channel_is_configured() {
    let sb = Sandbox::with_config(&format!("[email]\n{}", delivery_section("")));
    let good = sb.admin(&["doctor"]);
    assert!(
        String::from_utf8_lossy(&good.stdout).contains("sends codes by email"),
        "{}",
        show_output(&good)
    );
    sb.write_config(&config_text(
        "[email]\n[delivery]\nprogram = \"/nonexistent/crm2fa-send\"\n",
    ));
    let bad = sb.admin(&["doctor"]);
    assert_eq!(bad.status.code(), Some(1), "{}", show_output(&bad));
    let text = show_output(&bad);
    assert!(
        text.contains("/nonexistent/crm2fa-send") && text.contains("install crm2fa-send"),
        "{text}"
    );
}

#[test]
fn a_protected_users_delivery_factor_is_never_removed_by_a_contact_change() {
    let smtp = SmtpSink::start(None);
    let sb = Sandbox::with_config(&format!(
        "[policy]\nenforce = \"opt-in\"\nprotected_users = [\"pat\"]\n{}{}",
        smtp.email_section(""),
        delivery_section("")
    ));
    sb.add_user("pat", PW);
    sb.admin_ok(&["set-contact", "pat", "--email", "pat@example.com"]);
    sb.admin_ok(&["enroll", "pat", "--method", "email"]);
    let refused = sb.admin(&["set-contact", "pat", "--email", "", "--yes"]);
    assert_eq!(refused.status.code(), Some(1), "{}", show_output(&refused));
    assert!(
        show_output(&refused).contains("protected user"),
        "{}",
        show_output(&refused)
    );
    let st = sb.status("pat");
    assert!(
        json_strings(&st["methods"]).contains(&"email".to_string()),
        "{st}"
    );
    // A new address is a replacement, not a removal.
    sb.admin_ok(&["set-contact", "pat", "--email", "pat@new.example"]);
}
