//! `crm2fa-send`: hands one code or notice to the mail server or the SMS
//! gateway. The PAM module runs it (`crm2fa-send --config CONFIG`, no shell,
//! an empty environment) only when a code must be sent, so a login that
//! uses an app code never loads an SMTP, HTTP or TLS stack.
//!
//! Standard input: one JSON message (see
//! [`crm2fa_common::delivery::Message`]). Exit status: 0 handed over, 1 not
//! sent, 2 bad usage or configuration; on 1 and 2 the first line of
//! standard error says why. That line never holds the code, the message
//! text or a password: the caller writes it to syslog.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crm2fa_common::config::{self, Config};
use crm2fa_common::delivery::{Channel, Message, EXIT_NOT_SENT, EXIT_UNCONFIRMED, EXIT_USAGE};
use zeroize::Zeroizing;

mod email;
mod secret;
mod sms;

/// The longest message accepted on standard input.
const MAX_INPUT: u64 = 64 * 1024;

const USAGE: &str = "\
usage: crm2fa-send [--config PATH]

Sends one code or notice by email (SMTP) or SMS (gateway or command), as
[email], [sms] and [delivery] of the configuration say. Reads one JSON
message from standard input:
  {\"channel\": \"email\"|\"sms\", \"to\": ..., \"subject\": ..., \"text\": ..., \"code\": ...}

Options:
  --config PATH   the configuration (default /etc/crm2fa/crm2fa.toml)
  --help          this text
  --version       the version

Exit status: 0 handed to the mail server or the SMS gateway, 1 not sent,
2 bad usage or configuration, 3 sent but not confirmed (the mail server
or gateway did not answer after the whole message: it may arrive). The
first line of standard error says why.
The PAM module runs it; by hand it helps to check a configuration.
";

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// The command line is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The configuration cannot be used, or names a file that cannot be
    /// (exit 2).
    #[error("{0}")]
    Config(String),
    /// The message on standard input is not one this program sends (exit 2).
    #[error("{0}")]
    Input(String),
    /// The mail server, the gateway or the command did not take the
    /// message (exit 1).
    #[error("{0}")]
    NotSent(String),
    /// The message went out, but the server's answer never came (exit 3):
    /// it may still arrive.
    #[error("{0}")]
    Unconfirmed(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        let code = match self {
            Failure::Usage(_) | Failure::Config(_) | Failure::Input(_) => EXIT_USAGE,
            Failure::NotSent(_) => EXIT_NOT_SENT,
            Failure::Unconfirmed(_) => EXIT_UNCONFIRMED,
        };
        u8::try_from(code).unwrap_or(1)
    }

    /// The same failure with the code and the text of `msg` taken out of
    /// its reason, on one line: a server or a command may echo them.
    fn scrubbed(self, msg: &Message) -> Failure {
        let clean = |s: String| secret::scrub(&s, msg);
        match self {
            Failure::Usage(s) => Failure::Usage(clean(s)),
            Failure::Config(s) => Failure::Config(clean(s)),
            Failure::Input(s) => Failure::Input(clean(s)),
            Failure::NotSent(s) => Failure::NotSent(clean(s)),
            Failure::Unconfirmed(s) => Failure::Unconfirmed(clean(s)),
        }
    }
}

/// What the command line asks for.
enum Action {
    Send { config: PathBuf },
    Help,
    Version,
}

fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Action, Failure> {
    let mut config = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--help" | "-h") => return Ok(Action::Help),
            Some("--version" | "-V") => return Ok(Action::Version),
            Some("--config") => match args.next() {
                Some(p) if !p.is_empty() => config = Some(PathBuf::from(p)),
                _ => return Err(Failure::Usage("--config needs a path (see --help)".into())),
            },
            Some(s) if s.starts_with("--config=") => {
                config = Some(PathBuf::from(&s["--config=".len()..]));
            }
            _ => {
                return Err(Failure::Usage(format!(
                    "unknown argument {:?} (see --help)",
                    arg.to_string_lossy()
                )))
            }
        }
    }
    let config = config.unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    Ok(Action::Send {
        config: std::path::absolute(&config).unwrap_or(config),
    })
}

/// Read the one message on standard input.
fn read_message(input: impl Read) -> Result<Message, Failure> {
    let mut input = input;
    let mut bytes = Zeroizing::new(Vec::new());
    (&mut input)
        .take(MAX_INPUT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::Input(format!("cannot read the message on standard input: {e}")))?;
    if bytes.len() as u64 > MAX_INPUT {
        // Read it all the same: the caller's write must not meet a closed pipe.
        let _ = std::io::copy(&mut input, &mut std::io::sink());
        return Err(Failure::Input(format!(
            "the message on standard input is longer than {MAX_INPUT} bytes"
        )));
    }
    // Only where it went wrong: serde_json's own words may quote a value,
    // and the value may be the code.
    let msg: Message = serde_json::from_slice(&bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Io => "cannot be read",
            serde_json::error::Category::Syntax => "is not JSON",
            serde_json::error::Category::Eof => "ends before the message does",
            serde_json::error::Category::Data => "has a key missing, unknown or of the wrong type",
        };
        Failure::Input(format!(
            "standard input {what} (line {}, column {}): expected one message \
             {{\"channel\": \"email\"|\"sms\", \"to\", \"subject\", \"text\", \"code\"}}",
            e.line(),
            e.column()
        ))
    })?;
    if msg.to.trim().is_empty() {
        return Err(Failure::Input(format!(
            "the {} message has no recipient (\"to\" is empty)",
            msg.channel.label()
        )));
    }
    Ok(msg)
}

/// `[delivery] timeout`, less a little so that this program reports the
/// time-out itself before its caller, which waits exactly that long, stops
/// it.
fn step_timeout(cfg: &Config) -> Duration {
    let whole = Duration::from_secs(u64::try_from(cfg.delivery.timeout).unwrap_or(10).max(1));
    let margin = (whole / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    whole - margin
}

/// Under a setuid caller (su, polkit's helpers) this program runs with the
/// user's real uid and gid and root's effective ones: the user could signal
/// it and the SMS command (stop them, kill them mid-send), and a shell
/// script as the command would drop root. With an effective uid of 0, every
/// uid and gid becomes 0 and the supplementary groups go, before anything
/// is read; what it runs inherits that.
fn become_root_alone() -> Result<(), Failure> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    if !Uid::effective().is_root() {
        return Ok(());
    }
    // Refused only where groups cannot be set at all (some user
    // namespaces): the uids and gids below still are.
    match setgroups(&[]) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(e) => return Err(Failure::NotSent(format!("cannot drop the groups: {e}"))),
    }
    let root = (Gid::from_raw(0), Uid::from_raw(0));
    setresgid(root.0, root.0, root.0)
        .and_then(|()| setresuid(root.1, root.1, root.1))
        .map_err(|e| Failure::NotSent(format!("cannot take root's ids: {e}")))
}

fn run() -> Result<(), Failure> {
    become_root_alone()?;
    let config = match parse_args(std::env::args_os().skip(1))? {
        Action::Help => {
            print!("{USAGE}");
            return Ok(());
        }
        Action::Version => {
            println!("crm2fa-send {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Action::Send { config } => config,
    };
    // The message first, whole: the caller writes it before it waits, and
    // a write to a pipe closed early could cost it a SIGPIPE.
    let msg = read_message(std::io::stdin().lock())?;
    let cfg = Config::load(&config).map_err(|e| Failure::Config(e.to_string()))?;
    let timeout = step_timeout(&cfg);
    let sent = match msg.channel {
        Channel::Email => {
            let email = cfg.email.as_ref().ok_or_else(|| {
                Failure::Config(format!(
                    "{}: email is not configured: add an [email] section",
                    config.display()
                ))
            })?;
            email::send(email, timeout, &msg)
        }
        Channel::Sms => {
            let sms = cfg.sms.as_ref().filter(|s| s.sends()).ok_or_else(|| {
                Failure::Config(format!(
                    "{}: SMS is not configured: set [sms] command or [sms] url",
                    config.display()
                ))
            })?;
            sms::send(sms, timeout, &msg)
        }
    };
    sent.map_err(|f| f.scrubbed(&msg))
}

fn main() -> ExitCode {
    // One TLS provider for SMTP and HTTPS alike: ring, in safe Rust's hands.
    // (An error only says a provider is installed already.)
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_config_defaults_to_the_system_one_and_unknown_flags_are_usage_errors() {
        match parse_args(args(&[])).unwrap() {
            Action::Send { config } => assert_eq!(config, PathBuf::from(config::DEFAULT_PATH)),
            _ => panic!("not a send"),
        }
        match parse_args(args(&["--config=/x/y.toml"])).unwrap() {
            Action::Send { config } => assert_eq!(config, PathBuf::from("/x/y.toml")),
            _ => panic!("not a send"),
        }
        assert!(matches!(parse_args(args(&["--help"])), Ok(Action::Help)));
        for bad in [&["--config"][..], &["--verbose"], &["x.toml"]] {
            let e = parse_args(args(bad)).err().expect("an error");
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn a_message_needs_json_and_a_recipient() {
        let ok = br#"{"channel":"sms","to":"+4412345678","text":"code 1","code":"1"}"#;
        assert_eq!(read_message(&ok[..]).unwrap().to, "+4412345678");
        for bad in [
            &b"not json"[..],
            br#"{"channel":"fax","to":"x","text":"t"}"#,
            br#"{"channel":"sms","to":" ","text":"t"}"#,
            br#"{"channel":"sms","to":"x","text":"t","extra":1}"#,
        ] {
            let e = read_message(bad).expect_err("an error");
            assert_eq!(e.exit_code(), 2);
        }
        let big = vec![b' '; MAX_INPUT as usize + 10];
        assert!(read_message(&big[..]).is_err());
    }

    #[test]
    fn the_network_gives_up_before_the_caller_stops_the_program() {
        let cfg = Config::parse("[delivery]\ntimeout = \"10s\"\n", "/c.toml".as_ref()).unwrap();
        assert_eq!(step_timeout(&cfg), Duration::from_secs(9));
        let cfg = Config::parse("[delivery]\ntimeout = \"1s\"\n", "/c.toml".as_ref()).unwrap();
        assert_eq!(step_timeout(&cfg), Duration::from_millis(900));
    }
}
