//! Sending codes and notices by email and SMS, behind one [`Sender`] trait.
//!
//! The module never links an SMTP or HTTP client: every login would pay to
//! load it. A message goes to a separate program, `crm2fa-send` (see
//! [`Program`]), as one JSON [`Message`] on its standard input; it reads the
//! same configuration and exits 0 when the message was handed to the mail
//! server or the SMS gateway. The rest (who may get a code, where it goes,
//! the masked address shown at the prompt) is decided here, in plain Rust.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fsperm::{self, Secrecy};

pub mod child;

/// A way to send a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// By email, over SMTP.
    Email,
    /// By SMS, through a gateway or a command.
    Sms,
}

impl Channel {
    /// Both channels, in the order they are offered.
    pub const ALL: [Channel; 2] = [Channel::Email, Channel::Sms];

    /// The word the user types at the prompt, and the channel's name in the
    /// store, the audit log and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
        }
    }

    /// The channel a word names (`email`, `sms`, any case).
    pub fn parse(word: &str) -> Option<Channel> {
        Channel::ALL
            .into_iter()
            .find(|c| word.eq_ignore_ascii_case(c.as_str()))
    }

    /// How people call it in a sentence.
    pub fn label(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "SMS",
        }
    }

    /// Is the channel set up in `cfg` (an `[email]` section; an `[sms]`
    /// command or gateway)?
    pub fn configured(self, cfg: &Config) -> bool {
        match self {
            Channel::Email => cfg.email.is_some(),
            Channel::Sms => cfg.sms.as_ref().is_some_and(|s| s.sends()),
        }
    }

    /// Seconds a code sent this way stays valid.
    pub fn code_ttl(self, cfg: &Config) -> Option<i64> {
        match self {
            Channel::Email => cfg.email.as_ref().map(|e| e.code_ttl),
            Channel::Sms => cfg.sms.as_ref().map(|s| s.code_ttl),
        }
    }
}

/// One message for the sending program: a code or a notice. Zeroized on
/// drop, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// How it goes.
    #[zeroize(skip)]
    pub channel: Channel,
    /// The address or phone number.
    pub to: String,
    /// Subject line (email only; empty for SMS).
    #[serde(default)]
    pub subject: String,
    /// The text: email body or SMS message.
    pub text: String,
    /// The code the text carries, for an SMS gateway's `{code}`; empty for
    /// a notice.
    #[serde(default)]
    pub code: String,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("channel", &self.channel)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// Sends messages.
pub trait Sender {
    /// Send `msg`; `Err` with the reason (never containing the code) when it
    /// was not handed over, or may not have been.
    fn send(&mut self, msg: &Message) -> std::result::Result<(), SendError>;
}

/// Why a message is not known to be handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// It was not: the mail server or gateway refused it, or could not be
    /// reached; nothing will arrive.
    NotSent(String),
    /// It may have been: the sending program lost the server's answer
    /// after the message went out (a timeout, a dropped connection), or
    /// was stopped before it said. It may still arrive.
    Unconfirmed(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotSent(why) | SendError::Unconfirmed(why) => f.write_str(why),
        }
    }
}

/// The sending program, run once per message: `PROGRAM --config CONFIG`,
/// the message as JSON on standard input, as [`child::run`] runs a program
/// (no shell, PATH alone for environment, root's ids alone under a setuid
/// caller). Exit 0: handed over; otherwise the first line of its standard
/// error says why. Stopped (and the send failed) after `timeout`.
///
/// It runs in a process group of its own, killed whole when the send fails
/// or times out.
#[derive(Debug, Clone)]
pub struct Program {
    /// The program.
    pub path: PathBuf,
    /// The configuration it reads (the caller's own).
    pub config: PathBuf,
    /// How long it may take.
    pub timeout: Duration,
}

/// Exit status of the sending program: the message was handed over.
pub const EXIT_SENT: i32 = 0;
/// Exit status of the sending program: it was not (the reason on stderr).
pub const EXIT_NOT_SENT: i32 = 1;
/// Exit status of the sending program: bad usage or configuration.
pub const EXIT_USAGE: i32 = 2;
/// Exit status of the sending program: the message went out but the server
/// did not confirm it (the reason on stderr); it may still arrive.
pub const EXIT_UNCONFIRMED: i32 = 3;

impl Program {
    /// The program `cfg` names, reading `cfg`'s own file.
    pub fn from_config(cfg: &Config) -> Program {
        Program {
            path: cfg.delivery.program.clone(),
            config: cfg.source.clone(),
            timeout: Duration::from_secs(u64::try_from(cfg.delivery.timeout).unwrap_or(10)),
        }
    }

    fn run(&self, msg: &Message) -> std::result::Result<(), SendError> {
        // It runs as root with a code in its input: it must be root's.
        let not_sent = SendError::NotSent;
        fsperm::open_trusted(&self.path, Secrecy::NotWritableByOthers)
            .map_err(|e| not_sent(format!("will not run the sending program: {e}")))?;
        let input = zeroize::Zeroizing::new(
            serde_json::to_vec(msg)
                .map_err(|e| not_sent(format!("cannot encode the message: {e}")))?,
        );
        // It runs in `/`: a config named relative to where the caller runs
        // is made absolute.
        let config = std::path::absolute(&self.config)
            .map_err(|e| not_sent(format!("cannot name {}: {e}", self.config.display())))?;
        let outcome = child::run(&child::Job {
            program: &self.path,
            arg0: None,
            args: &["--config".as_ref(), config.as_os_str()],
            input: &input,
            // The calling program may not ignore SIGPIPE.
            stdin: child::Stdin::Socket,
            timeout: self.timeout,
            group: child::Group::Own,
        })
        .map_err(|e| match e {
            child::RunError::Start(e) => {
                not_sent(format!("cannot run {}: {e}", self.path.display()))
            }
            // Started, and then not waited for: it may have sent it.
            child::RunError::Wait(e) => {
                SendError::Unconfirmed(format!("cannot wait for {}: {e}", self.path.display()))
            }
        })?;
        let ended = outcome.ended;
        if ended == child::Ended::Exited(EXIT_SENT) {
            return Ok(());
        }
        // What crm2fa-send says on failure is the reason, worded for the log.
        let program = self.path.display();
        let why = match (ended, outcome.said) {
            (child::Ended::TimedOut, _) => format!(
                "{program} did not finish within {} s and was stopped",
                self.timeout.as_secs()
            ),
            (_, Some(said)) => said,
            (child::Ended::Killed(_), None) => format!("{program} was killed by a signal"),
            (child::Ended::Exited(EXIT_UNCONFIRMED), None) => {
                format!("{program} could not confirm the send")
            }
            (child::Ended::Exited(c), None) => format!("{program} exited with status {c}"),
        };
        // Stopped or killed before it said, or saying it could not tell:
        // it may have handed the message over.
        Err(
            if ended.cut_short() || ended == child::Ended::Exited(EXIT_UNCONFIRMED) {
                SendError::Unconfirmed(why)
            } else {
                not_sent(why)
            },
        )
    }
}

impl Sender for Program {
    fn send(&mut self, msg: &Message) -> std::result::Result<(), SendError> {
        self.run(msg)
    }
}

/// A contact address checked for use: an email address with one `@`, a
/// user part and a dotted domain, no spaces or control characters.
pub fn check_email(address: &str) -> Result<String> {
    let a = address.trim();
    let bad = |why: &str| Error::InvalidContact {
        value: address.into(),
        problem: why.into(),
    };
    let (local, domain) = a.split_once('@').ok_or_else(|| bad("has no @"))?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return Err(bad("must be one name@domain"));
    }
    if a.len() > 254 {
        return Err(bad("is longer than 254 characters"));
    }
    if a.chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"()[]\\".contains(c))
    {
        return Err(bad("has a space or a character an address cannot have"));
    }
    if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
        return Err(bad("needs a domain such as example.com"));
    }
    Ok(a.to_string())
}

/// A phone number checked for use, in its canonical form: international
/// (`+` and 8 to 15 digits; spaces, dashes, dots and brackets dropped).
pub fn check_phone(number: &str) -> Result<String> {
    let bad = |why: &str| Error::InvalidContact {
        value: number.into(),
        problem: why.into(),
    };
    let kept: String = number
        .chars()
        .filter(|c| !(c.is_whitespace() || matches!(c, '-' | '.' | '(' | ')')))
        .collect();
    let digits = kept
        .strip_prefix('+')
        .ok_or_else(|| bad("must start with + and the country code, e.g. +4412345678"))?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("may hold only digits after the +"));
    }
    if !(8..=15).contains(&digits.len()) {
        return Err(bad("must have 8 to 15 digits"));
    }
    Ok(kept)
}

/// An address as shown at the prompt and in `status`: the first letter of
/// the user part and the domain (`a***@example.com`).
pub fn mask_email(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

/// A phone number as shown at the prompt and in `status`: its last four
/// digits (`***1234`).
pub fn mask_phone(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    let tail: String = digits[digits.len().saturating_sub(4)..].iter().collect();
    format!("***{tail}")
}

/// The masked form of `to` for `channel`.
pub fn mask(channel: Channel, to: &str) -> String {
    match channel {
        Channel::Email => mask_email(to),
        Channel::Sms => mask_phone(to),
    }
}

/// `template` with each `{name}` of `vars` replaced by its value; other
/// braces stay as they are.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        match vars.iter().find(|(name, _)| {
            after[1..].starts_with(name) && after[1 + name.len()..].starts_with('}')
        }) {
            Some((name, value)) => {
                out.push_str(value);
                rest = &after[name.len() + 2..];
            }
            None => {
                out.push('{');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Check the sending program as a login would before running it.
pub fn check_program(path: &Path) -> Result<()> {
    fsperm::open_trusted(path, Secrecy::NotWritableByOthers).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Instant;

    use nix::sys::signal::{self, Signal};
    use nix::unistd::Pid;

    #[test]
    fn addresses_and_numbers_are_masked_as_the_prompt_shows_them() {
        assert_eq!(mask_email("alice@example.com"), "a***@example.com");
        assert_eq!(mask_phone("+44 20 7946 1234"), "***1234");
        assert_eq!(mask(Channel::Sms, "+12"), "***12");
    }

    #[test]
    fn contacts_are_checked_and_made_canonical() {
        assert_eq!(check_email(" a.b@example.com ").unwrap(), "a.b@example.com");
        for bad in [
            "alice",
            "@example.com",
            "a@b",
            "a b@example.com",
            "a@@example.com",
            "a@.com",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
        assert_eq!(check_phone("+44 (20) 7946-1234").unwrap(), "+442079461234");
        for bad in ["07946 1234", "+44abc12345", "+123", "+1234567890123456"] {
            assert!(check_phone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_fill_known_names_and_keep_other_braces() {
        let vars = [("code", "123456"), ("minutes", "10")];
        assert_eq!(
            fill("{code} valid {minutes} min {other} {", &vars),
            "123456 valid 10 min {other} {"
        );
        assert_eq!(
            fill("{\"text\": \"{code}\"}", &vars),
            "{\"text\": \"123456\"}"
        );
    }

    /// A program in a private directory running `script`.
    fn program(dir: &tempfile::TempDir, script: &str, timeout: u64) -> Program {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join("send");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Program {
            path,
            config: dir.path().join("crm2fa.toml"),
            timeout: Duration::from_secs(timeout),
        }
    }

    fn message() -> Message {
        Message {
            channel: Channel::Email,
            to: "a@example.com".into(),
            subject: "s".into(),
            text: "code 424242".into(),
            code: "424242".into(),
        }
    }

    #[test]
    fn the_program_gets_the_message_on_stdin_and_its_config() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got");
        let script = format!("{{ echo \"$1 $2\"; cat; }} > {}", out.display());
        let mut p = program(&dir, &script, 10);
        p.send(&message()).unwrap();
        let got = std::fs::read_to_string(&out).unwrap();
        let (args, json) = got.split_once('\n').unwrap();
        assert_eq!(args, format!("--config {}", p.config.display()));
        assert_eq!(serde_json::from_str::<Message>(json).unwrap(), message());
    }

    #[test]
    fn a_failure_gives_the_first_line_of_stderr_or_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = program(
            &dir,
            "echo 'no route to the mail server' >&2; echo more >&2; exit 1",
            10,
        );
        assert_eq!(
            p.send(&message()),
            Err(SendError::NotSent("no route to the mail server".into()))
        );
        // Exits before reading its input: the write fails quietly.
        let mut p = program(&dir, "exit 4", 10);
        let e = p.send(&message()).unwrap_err();
        assert!(matches!(e, SendError::NotSent(_)), "{e:?}");
        assert!(e.to_string().ends_with("exited with status 4"), "{e}");
    }

    #[test]
    fn a_send_the_program_could_not_confirm_is_unconfirmed() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = program(&dir, "echo 'no answer after the message' >&2; exit 3", 10);
        assert_eq!(
            p.send(&message()),
            Err(SendError::Unconfirmed("no answer after the message".into()))
        );
        let mut p = program(&dir, "kill -9 $$", 10);
        let e = p.send(&message()).unwrap_err();
        assert!(matches!(e, SendError::Unconfirmed(_)), "{e:?}");
        assert!(e.to_string().ends_with("was killed by a signal"), "{e}");
    }

    #[test]
    fn a_program_that_hangs_is_stopped_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = program(&dir, "exec sleep 30", 1);
        let e = p.send(&message()).unwrap_err();
        // It may have handed the message over before it hung.
        assert!(matches!(e, SendError::Unconfirmed(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("did not finish within 1 s and was stopped"),
            "{e}"
        );
    }

    /// `nap` in `dir`: a link to `sleep`, so that what a script starts
    /// carries `dir` in its command line.
    fn nap(dir: &tempfile::TempDir) {
        let sleep = ["/usr/bin/sleep", "/bin/sleep"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sleep");
        std::os::unix::fs::symlink(sleep, dir.path().join("nap")).unwrap();
    }

    /// The processes whose command line holds `dir`, once those killed had
    /// a moment to go; any left are killed, so that a failed test leaves
    /// nothing behind.
    fn left_in(dir: &tempfile::TempDir) -> Vec<i32> {
        let marker = dir.path().to_string_lossy().into_owned();
        let find = || -> Vec<i32> {
            std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| {
                    let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                    String::from_utf8_lossy(&cmdline)
                        .contains(&marker)
                        .then_some(pid)
                })
                .collect()
        };
        let until = Instant::now() + Duration::from_secs(2);
        let mut left = find();
        while !left.is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            left = find();
        }
        for pid in &left {
            let _ = signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        left
    }

    #[test]
    fn a_timeout_stops_all_the_program_started() {
        let dir = tempfile::tempdir().unwrap();
        nap(&dir);
        let mut p = program(&dir, "\"${0%/*}/nap\" 30 &\nexec \"${0%/*}/nap\" 30", 1);
        let e = p.send(&message()).unwrap_err();
        assert!(e.to_string().contains("did not finish"), "{e}");
        assert_eq!(left_in(&dir), Vec::<i32>::new(), "still running");
    }

    #[test]
    fn a_failure_stops_what_the_program_left_behind_and_returns_at_once() {
        let dir = tempfile::tempdir().unwrap();
        nap(&dir);
        // The child holds standard error open: reading it to its end would
        // wait for the child.
        let mut p = program(
            &dir,
            "\"${0%/*}/nap\" 30 &\necho 'modem refused' >&2\nexit 1",
            5,
        );
        let started = Instant::now();
        assert_eq!(
            p.send(&message()),
            Err(SendError::NotSent("modem refused".into()))
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(left_in(&dir), Vec::<i32>::new(), "still running");
    }

    #[test]
    fn standard_error_held_open_from_outside_the_group_is_read_for_a_moment_only() {
        let dir = tempfile::tempdir().unwrap();
        nap(&dir);
        let mut p = program(&dir, "setsid \"${0%/*}/nap\" 30 &\nexit 1", 2);
        let started = Instant::now();
        let e = p.send(&message()).unwrap_err();
        let took = started.elapsed();
        left_in(&dir);
        assert!(e.to_string().ends_with("exited with status 1"), "{e}");
        assert!(took < Duration::from_secs(4), "{took:?}");
    }

    /// Set in the copy of the test binary that
    /// [`under_a_setuid_caller_the_program_runs_as_root_alone`] runs.
    const AS_SETUID_CALLER: &str = "CRM2FA_TEST_AS_SETUID_CALLER";

    #[test]
    fn under_a_setuid_caller_the_program_runs_as_root_alone() {
        let name = "delivery::tests::under_a_setuid_caller_the_program_runs_as_root_alone";
        if std::env::var_os(AS_SETUID_CALLER).is_some() {
            // Here as su runs the module: real ids nobody's, effective root.
            let dir = tempfile::tempdir().unwrap();
            let mut p = program(
                &dir,
                "echo $(grep -E '^(Uid|Gid|Groups):' /proc/$$/status) >&2\nexit 1",
                10,
            );
            assert_eq!(
                p.send(&message()),
                Err(SendError::NotSent(
                    "Uid: 0 0 0 0 Gid: 0 0 0 0 Groups:".into()
                ))
            );
            return;
        }
        let out = Command::new("setpriv")
            .args(["--ruid=65534", "--rgid=65534", "--groups=65534", "--"])
            .arg(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(AS_SETUID_CALLER, "1")
            .output()
            .expect("run setpriv (util-linux)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn a_program_others_may_change_is_not_run() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ran");
        let mut p = program(&dir, &format!("touch {}", out.display()), 10);
        std::fs::set_permissions(&p.path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = p.send(&message()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("will not run the sending program"),
            "{e}"
        );
        assert!(!out.exists());
    }

    #[test]
    fn words_name_channels_in_any_case() {
        assert_eq!(Channel::parse("EMAIL"), Some(Channel::Email));
        assert_eq!(Channel::parse("sms"), Some(Channel::Sms));
        assert_eq!(Channel::parse("phone"), None);
    }

    #[test]
    fn a_message_reads_back_from_its_json_and_debug_hides_it() {
        let m = Message {
            channel: Channel::Sms,
            to: "+442079460000".into(),
            subject: String::new(),
            text: "code 123456".into(),
            code: "123456".into(),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"channel\":\"sms\""), "{json}");
        assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), m);
        assert!(!format!("{m:?}").contains("123456"));
    }
}
