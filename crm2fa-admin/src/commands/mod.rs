//! The commands, one module per group. Each returns a typed report for
//! [`crate::output`] to print; none prints JSON of its own.
use std::path::Path;

use crm2fa_common::account::Account;
use crm2fa_common::audit::{AuditCtx, Logger};
use crm2fa_common::config::{self, Config};
use crm2fa_common::delivery::Program;
use crm2fa_common::ops::{Change, Notice, Ops, ADMIN_SERVICE};
use crm2fa_common::store::{self, Store};

use crate::cli::{Cli, Command};
use crate::error::CliError;
use crate::output::{NoticeReport, Output, Report};

mod audit;
mod codes;
mod enroll;
mod import;
mod setup;
mod stores;
mod users;

/// How a command ended, after its report was printed.
#[derive(Debug)]
pub(crate) enum Status {
    /// Exit 0.
    Success,
    /// Exit 1, the report says why (`check` of a wrong code, `doctor` with problems).
    Unsuccessful,
    /// Exit 1 with this error on stderr, after the report (which shows what
    /// must not be lost, such as a new secret or new codes).
    Failed(CliError),
}

/// A command's report and how it ended.
pub(crate) struct Done {
    /// What to print.
    pub(crate) report: Box<dyn Report>,
    /// The exit status.
    pub(crate) status: Status,
}

impl Done {
    fn ok(report: impl Report + 'static) -> Result<Done, CliError> {
        Ok(Done {
            report: Box::new(report),
            status: Status::Success,
        })
    }

    fn with(report: impl Report + 'static, status: Status) -> Result<Done, CliError> {
        Ok(Done {
            report: Box::new(report),
            status,
        })
    }
}

/// A command's surroundings: the global flags, the clock, and (opened on
/// first use) the configuration and store.
pub(crate) struct Ctx {
    cfg: Config,
    store: Box<dyn Store>,
    /// Every change is written to syslog (authpriv) as well as the audit table.
    log: Logger,
    now: i64,
    json: bool,
    yes: bool,
    out: Output,
}

impl Ctx {
    fn open(config: Option<&Path>, json: bool, yes: bool, out: Output) -> Result<Ctx, CliError> {
        let cfg = Config::load(&config::resolve_path(config))?;
        let store = store::open(&cfg.store, Some(&crm2fa_pg::Connector))?;
        Ok(Ctx {
            cfg,
            store,
            log: Logger::new(ADMIN_SERVICE, false),
            now: crm2fa_common::unix_now(),
            json,
            yes,
            out,
        })
    }

    /// The operations, as the administrator.
    fn ops(&mut self) -> Ops<'_> {
        Ops {
            cfg: &self.cfg,
            store: self.store.as_mut(),
            log: &mut self.log,
            ctx: AuditCtx::here(ADMIN_SERVICE, ""),
        }
    }

    /// Tell `user` by email of `change`, if an address is known: what
    /// became of the notice, for the report (the change stands either way).
    fn notify(&mut self, user: &str, change: Change) -> Option<NoticeReport> {
        let mut sender = Program::from_config(&self.cfg);
        let (now, by) = (self.now, administrator());
        let notice = match self.ops().notify(&mut sender, user, change, &by, now) {
            Ok(n) => n,
            Err(e) => Notice::Failed(e.to_string()),
        };
        match notice {
            Notice::Sent(to) => Some(NoticeReport {
                sent: true,
                to: Some(to),
                error: None,
            }),
            Notice::Failed(why) => Some(NoticeReport {
                sent: false,
                to: None,
                error: Some(why),
            }),
            Notice::NoAddress => None,
        }
    }

    /// Ask before a destructive action (see [`crate::terminal::confirm`]).
    fn confirm(&self, what: &str) -> Result<(), CliError> {
        crate::terminal::confirm(what, self.yes)
    }
}

/// The account's canonical name for `user`, as the login will use it; a
/// name this host does not know is kept as typed, with a warning (a
/// fleet's admin host need not know every user).
fn account(user: String) -> String {
    match Account::lookup(&user) {
        Ok(Some(a)) => {
            if a.name != user {
                eprintln!("crm2fa-admin: {user} is the account {}", a.name);
            }
            a.name
        }
        Ok(None) => {
            eprintln!("crm2fa-admin: warning: there is no account named {user} on this host");
            user
        }
        Err(e) => {
            eprintln!("crm2fa-admin: warning: {e}; using the name {user} as given");
            user
        }
    }
}

/// Who runs this command, for notices: the account (and the one behind
/// sudo), the program and the host.
fn administrator() -> String {
    let uid = nix::unistd::getuid();
    let me = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name);
    let host = crm2fa_common::hostname();
    match std::env::var("SUDO_USER") {
        Ok(s) if !s.is_empty() && s != me => {
            format!("{s} (as {me}, with crm2fa-admin on {host})")
        }
        _ => format!("{me} (with crm2fa-admin on {host})"),
    }
}

/// Run the command `cli` names.
pub(crate) fn run(cli: Cli, out: Output) -> Result<Done, CliError> {
    let config = cli.config.as_deref();
    let open = || Ctx::open(config, cli.json, cli.yes, out);
    match cli.command {
        Command::Init => setup::init(config),
        Command::Doctor => setup::doctor(config),
        Command::Completions { shell } => setup::completions(shell),
        Command::Enroll {
            user,
            method,
            no_qr,
            qr,
            code,
        } => enroll::enroll(&mut open()?, &account(user), method, no_qr, qr, code),
        Command::SetContact { user, email, phone } => {
            users::set_contact(&mut open()?, &account(user), email, phone)
        }
        Command::Confirm { user, code } => enroll::confirm(&mut open()?, &account(user), code),
        Command::Status { user } => users::status(&mut open()?, &account(user)),
        Command::List => users::list(&mut open()?),
        Command::Reset { user } => users::reset(&mut open()?, &account(user)),
        Command::Disable {
            user,
            override_policy,
        } => users::disable(&mut open()?, &account(user), override_policy),
        Command::Enable { user } => users::enable(&mut open()?, &account(user)),
        Command::Unlock { user } => users::unlock(&mut open()?, &account(user)),
        Command::Forget { user, host } => users::forget(&mut open()?, &account(user), host),
        Command::Policy { user } => users::policy(&mut open()?, &account(user)),
        Command::Check { user, code } => codes::check(&mut open()?, &account(user), code),
        Command::BackupCodes {
            user,
            regenerate,
            output,
        } => codes::backup_codes(&mut open()?, &account(user), regenerate, output),
        Command::Recovery { user, valid } => codes::recovery(&mut open()?, &account(user), valid),
        Command::Import { source } => import::import(&mut open()?, source, account),
        Command::Audit { user, since } => audit::audit(&mut open()?, user.map(account), since),
        Command::Store { action } => stores::store(&mut open()?, action),
    }
}
