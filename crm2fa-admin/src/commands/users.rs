//! `status`, `list`, `reset`, `disable`, `enable`, `unlock`, `policy`.
use std::io::{self, Write};

use crm2fa_common::ops::{Change, Status};
use crm2fa_common::policy::AtLogin;
use serde::Serialize;

use super::{Ctx, Done};
use crate::error::CliError;
use crate::output::{self, write_notice, NoticeReport, Text};

/// One user's state.
#[derive(Serialize)]
struct StatusReport {
    user: String,
    state: &'static str,
    locked: bool,
    #[serde(serialize_with = "output::opt_time")]
    locked_until: Option<i64>,
    backup_codes_left: u32,
    methods: Vec<&'static str>,
    failures: u32,
    lock_level: u32,
    next_lock_seconds: i64,
    #[serde(serialize_with = "output::opt_time")]
    last_success: Option<i64>,
    remembered: Vec<RememberedHost>,
    email: Option<String>,
    phone: Option<String>,
}

/// A remote host a user is not asked again from.
#[derive(Serialize)]
struct RememberedHost {
    host: String,
    #[serde(serialize_with = "output::time")]
    until: i64,
}

impl From<Status> for StatusReport {
    fn from(s: Status) -> StatusReport {
        StatusReport {
            user: s.user,
            state: s.state,
            locked: s.locked_until.is_some(),
            locked_until: s.locked_until,
            backup_codes_left: s.backup_codes_left,
            methods: s.methods.iter().map(|m| m.as_str()).collect(),
            failures: s.failures,
            lock_level: s.lock_level,
            next_lock_seconds: s.next_lock_seconds,
            last_success: s.last_success,
            remembered: s
                .remembered
                .into_iter()
                .map(|(host, until)| RememberedHost { host, until })
                .collect(),
            email: s.email,
            phone: s.phone,
        }
    }
}

fn last_success(t: Option<i64>) -> String {
    t.map(crm2fa_common::rfc3339)
        .unwrap_or_else(|| "never".into())
}

impl Text for StatusReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        let methods = if self.methods.is_empty() {
            "none".to_string()
        } else {
            self.methods.join(", ")
        };
        writeln!(w, "User:              {}", self.user)?;
        writeln!(w, "State:             {}", self.state)?;
        writeln!(w, "Methods:           {methods}")?;
        writeln!(w, "Backup codes left: {}", self.backup_codes_left)?;
        match self.locked_until {
            Some(t) => writeln!(
                w,
                "Locked until:      {} (crm2fa-admin unlock to clear)",
                crm2fa_common::rfc3339(t)
            )?,
            None => writeln!(w, "Locked:            no")?,
        }
        writeln!(
            w,
            "Lock level:        {} (locks since the last success; a next lock lasts {} s)",
            self.lock_level, self.next_lock_seconds
        )?;
        writeln!(w, "Last success:      {}", last_success(self.last_success))?;
        let contact = |c: &Option<String>| c.clone().unwrap_or_else(|| "none".into());
        writeln!(w, "Email:             {}", contact(&self.email))?;
        writeln!(w, "Phone:             {}", contact(&self.phone))?;
        if self.remembered.is_empty() {
            return writeln!(w, "Remembered hosts:  none");
        }
        for (i, r) in self.remembered.iter().enumerate() {
            let label = if i == 0 { "Remembered hosts:" } else { "" };
            writeln!(
                w,
                "{label:<18} {} until {}",
                r.host,
                crm2fa_common::rfc3339(r.until)
            )?;
        }
        Ok(())
    }
}

/// `status USER`.
pub(super) fn status(ctx: &mut Ctx, user: &str) -> Result<Done, CliError> {
    let now = ctx.now;
    Done::ok(StatusReport::from(ctx.ops().status(user, now)?))
}

/// Every user's state.
#[derive(Serialize)]
#[serde(transparent)]
struct ListReport {
    users: Vec<StatusReport>,
}

impl Text for ListReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        if self.users.is_empty() {
            return writeln!(w, "No users enrolled.");
        }
        writeln!(
            w,
            "{:<20} {:<9} {:>6} {:<7} LAST SUCCESS",
            "USER", "STATE", "BACKUP", "LOCKED"
        )?;
        for u in &self.users {
            writeln!(
                w,
                "{:<20} {:<9} {:>6} {:<7} {}",
                u.user,
                u.state,
                u.backup_codes_left,
                if u.locked { "yes" } else { "no" },
                last_success(u.last_success),
            )?;
        }
        Ok(())
    }
}

/// `list`.
pub(super) fn list(ctx: &mut Ctx) -> Result<Done, CliError> {
    let now = ctx.now;
    let users = ctx.ops().statuses(now)?;
    Done::ok(ListReport {
        users: users.into_iter().map(StatusReport::from).collect(),
    })
}

/// `reset USER`: every factor removed.
#[derive(Serialize)]
struct ResetReport {
    user: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    notice: Option<NoticeReport>,
}

impl Text for ResetReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        let user = &self.user;
        writeln!(
            w,
            "All factors of {user} removed. Enrol them again with `crm2fa-admin enroll {user}`."
        )?;
        write_notice(w, &self.notice)
    }
}

/// Lost device: remove every factor and code of `user`, after asking.
pub(super) fn reset(ctx: &mut Ctx, user: &str) -> Result<Done, CliError> {
    ctx.ops().check_reset(user)?;
    ctx.confirm(&format!(
        "This removes every factor of {user}: authenticator app, backup and recovery codes"
    ))?;
    let now = ctx.now;
    ctx.ops().reset(user, now)?;
    Done::ok(ResetReport {
        user: user.into(),
        state: "none",
        notice: ctx.notify(user, Change::Reset),
    })
}

/// `disable` or `enable`: the user's state afterwards.
#[derive(Serialize)]
struct SwitchReport {
    user: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    notice: Option<NoticeReport>,
}

impl Text for SwitchReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        let user = &self.user;
        if self.state == "disabled" {
            writeln!(
                w,
                "2FA is off for {user}: the login will not ask for a code. Undo: crm2fa-admin enable {user}"
            )?;
        } else {
            writeln!(w, "2FA is on again for {user} (state: {}).", self.state)?;
        }
        write_notice(w, &self.notice)
    }
}

fn switched(ctx: &mut Ctx, user: &str, notice: Option<NoticeReport>) -> Result<Done, CliError> {
    let now = ctx.now;
    let status = ctx.ops().status(user, now)?;
    Done::ok(SwitchReport {
        user: user.into(),
        state: status.state,
        notice,
    })
}

/// Turn `user`'s 2FA off, factor or not, after asking.
pub(super) fn disable(ctx: &mut Ctx, user: &str, override_policy: bool) -> Result<Done, CliError> {
    let now = ctx.now;
    ctx.ops().check_disable(user, override_policy, now)?;
    ctx.confirm(&format!(
        "{user} will log in with the password alone until `crm2fa-admin enable {user}`"
    ))?;
    ctx.ops().disable(user, override_policy, now)?;
    let notice = ctx.notify(user, Change::Disabled);
    switched(ctx, user, notice)
}

/// Turn `user`'s 2FA back on.
pub(super) fn enable(ctx: &mut Ctx, user: &str) -> Result<Done, CliError> {
    let now = ctx.now;
    ctx.ops().enable(user, now)?;
    switched(ctx, user, None)
}

/// `forget USER [HOST]`.
#[derive(Serialize)]
struct ForgetReport {
    user: String,
    host: Option<String>,
    forgotten: usize,
}

impl Text for ForgetReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        match (&self.host, self.forgotten) {
            (Some(h), 0) => writeln!(w, "{h} was not remembered for {}.", self.user),
            (Some(h), _) => writeln!(
                w,
                "{h} forgotten: {} is asked for a code from there again.",
                self.user
            ),
            (None, n) => writeln!(
                w,
                "{n} remembered host(s) of {} forgotten: a code is asked from everywhere again.",
                self.user
            ),
        }
    }
}

/// Forget `user`'s remembered hosts, or one of them.
pub(super) fn forget(ctx: &mut Ctx, user: &str, host: Option<String>) -> Result<Done, CliError> {
    let now = ctx.now;
    let forgotten = ctx.ops().forget(user, host.as_deref(), now)?;
    Done::ok(ForgetReport {
        user: user.into(),
        host,
        forgotten,
    })
}

/// `unlock USER`.
#[derive(Serialize)]
struct UnlockReport {
    user: String,
    locked: bool,
}

impl Text for UnlockReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(w, "{} is unlocked.", self.user)
    }
}

/// Clear `user`'s lockout.
pub(super) fn unlock(ctx: &mut Ctx, user: &str) -> Result<Done, CliError> {
    let now = ctx.now;
    ctx.ops().unlock(user, now)?;
    Done::ok(UnlockReport {
        user: user.into(),
        locked: false,
    })
}

/// `policy USER`: the login's decision, explained.
#[derive(Serialize)]
struct PolicyReport {
    user: String,
    required: bool,
    /// The login asks for a code (after setting up an app, under
    /// `unenrolled = "enroll"`).
    asked: bool,
    reason: String,
    /// What the login does: `code`, `no code`, `refused` (no factor, under
    /// `unenrolled = "deny"`), `password only` (no factor, `"allow"`) or
    /// `set up` (no factor, `"enroll"`).
    login: &'static str,
    #[serde(skip)]
    at_login: AtLogin,
}

impl Text for PolicyReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        let login = match self.at_login {
            AtLogin::Code => "the login will ask for a code",
            AtLogin::NoCode => "the login will not ask for a code",
            AtLogin::Refused => {
                "but no second factor is set up, so the login will be refused \
                 (unenrolled = \"deny\"): enrol them first"
            }
            AtLogin::PasswordOnly => {
                "but no second factor is set up, so the password alone will let them \
                 in (unenrolled = \"allow\")"
            }
            AtLogin::SetUp => {
                "and no second factor is set up yet: the login will show a QR code to \
                 set one up (unenrolled = \"enroll\")"
            }
        };
        writeln!(
            w,
            "{}: 2FA is {} ({}); {login}.",
            self.user,
            if self.required {
                "required"
            } else {
                "not required"
            },
            self.reason,
        )
    }
}

/// Explain whether 2FA is required of `user`, and why, and what the login
/// will do about it.
pub(super) fn policy(ctx: &mut Ctx, user: &str) -> Result<Done, CliError> {
    let now = ctx.now;
    let (d, at_login) = ctx.ops().explain(user, now)?;
    Done::ok(PolicyReport {
        user: user.into(),
        required: d.required,
        asked: matches!(at_login, AtLogin::Code | AtLogin::SetUp),
        reason: d.reason,
        login: match at_login {
            AtLogin::Code => "code",
            AtLogin::NoCode => "no code",
            AtLogin::Refused => "refused",
            AtLogin::PasswordOnly => "password only",
            AtLogin::SetUp => "set up",
        },
        at_login,
    })
}

/// `set-contact USER`: where codes and notices go now, masked.
#[derive(Serialize)]
struct ContactReport {
    user: String,
    email: Option<String>,
    phone: Option<String>,
}

impl Text for ContactReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        let shown = |c: &Option<String>| c.clone().unwrap_or_else(|| "none".into());
        writeln!(
            w,
            "Contacts of {}: email {}, phone {}.",
            self.user,
            shown(&self.email),
            shown(&self.phone)
        )
    }
}

/// Set or remove (an empty value) `user`'s email address and phone number.
pub(super) fn set_contact(
    ctx: &mut Ctx,
    user: &str,
    email: Option<String>,
    phone: Option<String>,
) -> Result<Done, CliError> {
    fn given(v: &Option<String>) -> Option<Option<&str>> {
        v.as_deref()
            .map(|s| Some(s.trim()).filter(|s| !s.is_empty()))
    }
    let now = ctx.now;
    let (email, phone) = (given(&email), given(&phone));
    if let Some(channel) = ctx.ops().check_set_contact(user, email, phone)? {
        ctx.confirm(&format!(
            "This ends {user}'s {} factor: no code will be sent that way any more",
            channel.label()
        ))?;
    }
    ctx.ops().set_contact(user, email, phone, now)?;
    let status = ctx.ops().status(user, now)?;
    Done::ok(ContactReport {
        user: user.into(),
        email: status.email,
        phone: status.phone,
    })
}
