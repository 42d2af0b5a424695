//! The command line, declared once: `main` parses it, and the shell
//! completions (and man page) are generated from it.
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use crm2fa_common::config;
use crm2fa_common::qr::QrStyle;

/// Manage crm2fa two-factor authentication.
#[derive(Debug, Parser)]
#[command(
    name = "crm2fa-admin",
    version,
    about = "Manage crm2fa two-factor authentication"
)]
pub(crate) struct Cli {
    /// Configuration file [default: $CRM2FA_CONFIG or /etc/crm2fa/crm2fa.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
    /// Machine-readable output: one JSON document on stdout
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Do not ask for confirmation of destructive actions
    #[arg(long, short = 'y', global = true)]
    pub(crate) yes: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How `enroll` draws the QR code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum QrArg {
    /// Half-block characters: compact, needs a UTF-8 terminal
    Unicode,
    /// `##` cells: any terminal, twice as tall
    Ascii,
}

impl From<QrArg> for QrStyle {
    fn from(q: QrArg) -> QrStyle {
        match q {
            QrArg::Unicode => QrStyle::Unicode,
            QrArg::Ascii => QrStyle::Ascii,
        }
    }
}

/// What `enroll` sets up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MethodArg {
    /// An authenticator app (TOTP): QR code, manual key and URI
    Totp,
    /// Codes by email, sent at the prompt without asking (needs set-contact --email)
    Email,
    /// Codes by SMS, sent at the prompt without asking (needs set-contact --phone)
    Sms,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the config directory, host key file (0600) and store; idempotent
    Init,
    /// Give USER a new TOTP secret: prints a QR code, the manual key and the URI
    /// (or, with --method email|sms, codes sent to their contact)
    Enroll {
        /// The user (login name)
        user: String,
        /// The second factor to set up
        #[arg(long, value_name = "METHOD", value_enum, default_value_t = MethodArg::Totp)]
        method: MethodArg,
        /// Do not print the QR code
        #[arg(long)]
        no_qr: bool,
        /// How to draw the QR code
        #[arg(long, value_name = "STYLE", value_enum, default_value_t = QrArg::Unicode)]
        qr: QrArg,
        /// The first code from the app: confirms and activates at once (a
        /// pending enrolment printed earlier and scanned since: that one)
        #[arg(long, value_name = "CODE", conflicts_with = "method")]
        code: Option<String>,
    },
    /// Activate a pending enrolment with a code from the app
    Confirm {
        /// The user (login name)
        user: String,
        /// The code; without it, it is read from the terminal (hidden) or
        /// one line of standard input
        code: Option<String>,
    },
    /// Show USER's 2FA state
    Status {
        /// The user (login name)
        user: String,
    },
    /// Set where USER's email/SMS codes and notices go ("" removes one)
    #[command(group(clap::ArgGroup::new("contact").required(true).multiple(true).args(["email", "phone"])))]
    SetContact {
        /// The user (login name)
        user: String,
        /// Email address for codes and notices
        #[arg(long, value_name = "ADDRESS")]
        email: Option<String>,
        /// Phone number for SMS codes, international form (+4420...)
        #[arg(long, value_name = "NUMBER")]
        phone: Option<String>,
    },
    /// Show every user the store knows
    List,
    /// Verify a code without logging in: consumes and counts nothing
    Check {
        /// The user (login name)
        user: String,
        /// The code; without it, it is read from the terminal (hidden) or
        /// one line of standard input
        code: Option<String>,
    },
    /// Lost device: remove all of USER's factors and codes
    Reset {
        /// The user (login name)
        user: String,
    },
    /// Show how many backup codes are left, or make a new set
    BackupCodes {
        /// The user (login name)
        user: String,
        /// Make a new set; the old set stops working at once
        #[arg(long)]
        regenerate: bool,
        /// Also write the new codes to FILE (mode 0600), ready to print
        #[arg(long, value_name = "FILE", requires = "regenerate")]
        output: Option<PathBuf>,
    },
    /// Issue a one-time recovery code for a user who lost every factor; clears a lock
    Recovery {
        /// The user (login name)
        user: String,
        /// How long the code is valid, e.g. 30m, 48h, 2d
        #[arg(long, value_name = "DURATION", default_value = "48h", value_parser = config::parse_duration)]
        valid: i64,
    },
    /// Clear USER's lockout
    Unlock {
        /// The user (login name)
        user: String,
    },
    /// Forget USER's remembered remote hosts (or just HOST): a code is asked again
    Forget {
        /// The user (login name)
        user: String,
        /// Only this remote host
        host: Option<String>,
    },
    /// Turn USER's 2FA off, factor or not (`enable` turns it back on)
    Disable {
        /// The user (login name)
        user: String,
        /// Also when the policy requires 2FA of USER
        #[arg(long)]
        override_policy: bool,
    },
    /// Turn USER's 2FA back on with the factors they had
    Enable {
        /// The user (login name)
        user: String,
    },
    /// Explain whether 2FA is required for USER, and why
    Policy {
        /// The user (login name)
        user: String,
    },
    /// The audit log, oldest first
    Audit {
        /// Only this user's rows
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// RFC 3339 time, YYYY-MM-DD, or a duration back from now (e.g. 24h)
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<i64>,
    },
    /// Check permissions, config, key and store integrity; say how to fix
    Doctor,
    /// Take over secrets from google-authenticator or pam_oath; the users' apps keep working
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
    /// The store as a whole: copy it to another (SQLite <-> PostgreSQL)
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Print shell completions
    Completions { shell: clap_complete::Shell },
}

/// What `store` does.
#[derive(Debug, Subcommand)]
pub(crate) enum StoreAction {
    /// Copy everything (users, factors, codes with their used state,
    /// remembered hosts, audit) into an empty store, check the counts, and
    /// say how to switch the hosts over
    Copy {
        /// postgres://USER@HOST:PORT/DB?sslmode=... or the path of a SQLite file
        #[arg(long, value_name = "URL_OR_PATH")]
        to: String,
        /// File holding the PostgreSQL role's password (0600 root)
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// CA certificates for sslmode=verify-full
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
}

/// The completion script of `shell` for the command line above.
pub(crate) fn completion_script(shell: clap_complete::Shell) -> String {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "crm2fa-admin", &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

/// Where `import` reads from.
#[derive(Debug, Subcommand)]
pub(crate) enum ImportSource {
    /// A ~/.google_authenticator file: its secret, scratch codes (as backup
    /// codes) and used time steps
    GoogleAuthenticator {
        /// The file
        file: PathBuf,
        /// Whose file it is
        #[arg(long, value_name = "USER")]
        user: String,
        /// Check the file and show what would change; change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// pam_oath's users.oath: every time-based (HOTP/T…) user in it
    Oath {
        /// The file
        file: PathBuf,
        /// Check the file and show what would change; change nothing
        #[arg(long)]
        dry_run: bool,
    },
}

/// `--since`: RFC 3339, a date (YYYY-MM-DD), or a duration back from now.
fn parse_since(s: &str) -> Result<i64, String> {
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_secs()).ok())
            .unwrap_or(0)
    };
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(unix(t));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")) {
        return Ok(unix(t));
    }
    config::parse_duration(s)
        .map(|d| crm2fa_common::unix_now() - d)
        .map_err(|_| {
            "give a time (2026-11-23T10:00:00Z), a date (2026-11-23) or a duration (24h)".into()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn since_accepts_times_dates_and_durations() {
        assert_eq!(parse_since("2026-11-23T10:00:00Z"), Ok(1_795_428_000));
        assert_eq!(parse_since("2026-11-23"), Ok(1_795_392_000));
        let d = parse_since("24h").unwrap();
        assert!((crm2fa_common::unix_now() - 86_400 - d).abs() <= 1);
        assert!(parse_since("yesterday").is_err());
    }

    #[test]
    fn code_is_optional_for_confirm_and_check() {
        let cli = Cli::try_parse_from(["crm2fa-admin", "confirm", "alice"]).unwrap();
        assert!(matches!(cli.command, Command::Confirm { code: None, .. }));
        let cli =
            Cli::try_parse_from(["crm2fa-admin", "check", "alice", "123456", "--json"]).unwrap();
        assert!(cli.json);
        assert!(Cli::try_parse_from(["crm2fa-admin", "enroll", "a", "--qr", "big"]).is_err());
        let cli = Cli::try_parse_from(["crm2fa-admin", "enroll", "a", "--method", "sms"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Enroll {
                method: MethodArg::Sms,
                ..
            }
        ));
    }
}
