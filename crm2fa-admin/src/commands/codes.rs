//! `check`, `backup-codes`, `recovery`: codes other than the app's.
use std::io::{self, Write};
use std::path::PathBuf;

use crm2fa_common::ops::{account_name, Change, CodeCheck};
use crm2fa_common::{fsperm, rfc3339, Error};
use serde::Serialize;
use zeroize::Zeroizing;

use super::{Ctx, Done, Status};
use crate::error::CliError;
use crate::output::{self, shown, write_backup_codes, write_notice, NoticeReport, Shown, Text};
use crate::terminal;

/// What `check` found.
#[derive(Serialize)]
struct CheckReport {
    user: String,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    factor: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drift_steps: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    already_used: Option<bool>,
    #[serde(skip)]
    check: CodeCheck,
    #[serde(skip)]
    period: u64,
    #[serde(skip)]
    skew: u32,
}

impl Text for CheckReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        let user = &self.user;
        match (&self.check.drift, self.factor) {
            (Some(d), _) => {
                let secs = d.steps * i64::try_from(self.period).unwrap_or(0);
                let verdict = if !d.within_window {
                    format!(
                        "outside the accepted window of ±{} step(s): fix the phone's or this host's clock",
                        self.skew
                    )
                } else if d.already_used {
                    "valid, but this step was already used for a login".to_string()
                } else {
                    "valid".to_string()
                };
                writeln!(
                    w,
                    "TOTP code for {user}: clock drift {:+} step(s) ({secs:+} s); {verdict}",
                    d.steps
                )
            }
            (None, Some(kind)) => writeln!(w, "Unused {kind} code for {user}: valid."),
            (None, None) => writeln!(w, "The code is not valid for {user}."),
        }
    }
}

/// Check a code as a login would, consuming and counting nothing; exit 1
/// unless a login would accept it.
pub(super) fn check(ctx: &mut Ctx, user: &str, code: Option<String>) -> Result<Done, CliError> {
    let code = match code {
        Some(c) => Zeroizing::new(c),
        None => terminal::read_code("Code to check: ")?,
    };
    let now = ctx.now;
    let check = ctx.ops().check(user, &code, now)?;
    let status = if check.valid {
        Status::Success
    } else {
        Status::Unsuccessful
    };
    let report = CheckReport {
        user: check.user.clone(),
        valid: check.valid,
        factor: check.factor.map(|f| f.as_str()),
        drift_steps: check.drift.map(|d| d.steps),
        already_used: check.drift.map(|d| d.already_used),
        period: ctx.cfg.totp.period,
        skew: ctx.cfg.totp.skew,
        check,
    };
    Done::with(report, status)
}

/// How many backup codes are left.
#[derive(Serialize)]
struct CodesLeftReport {
    user: String,
    backup_codes_left: u32,
}

impl Text for CodesLeftReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(
            w,
            "{} has {} unused backup code(s). New set: --regenerate",
            self.user, self.backup_codes_left
        )
    }
}

/// A new set of backup codes.
#[derive(Serialize)]
struct NewCodesReport {
    user: String,
    backup_codes: Shown,
    #[serde(skip)]
    page: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notice: Option<NoticeReport>,
}

impl Text for NewCodesReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(
            w,
            "New backup codes for {} (the old set no longer works):",
            self.user
        )?;
        write_backup_codes(w, &self.backup_codes)?;
        if let Some(page) = &self.page {
            writeln!(
                w,
                "Written to {} (mode 0600), ready to print.",
                page.display()
            )?;
        }
        write_notice(w, &self.notice)
    }
}

/// Show how many backup codes are left, or make a new set (also written
/// to a printable 0600 page with `output`).
pub(super) fn backup_codes(
    ctx: &mut Ctx,
    user: &str,
    regenerate: bool,
    output: Option<PathBuf>,
) -> Result<Done, CliError> {
    if !regenerate {
        let left = ctx
            .store
            .user(user)?
            .map(|r| r.backup_codes_left())
            .unwrap_or(0);
        return Done::ok(CodesLeftReport {
            user: user.into(),
            backup_codes_left: left,
        });
    }
    ctx.confirm(&format!(
        "This makes new backup codes for {user}; the old ones stop working at once"
    ))?;
    // Open the page first: a path that cannot be written must not void the
    // old set and lose the new one.
    let mut page = match &output {
        Some(path) => Some(fsperm::open_private_new(path).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists => {
                CliError::PageExists { path: path.clone() }
            }
            source => CliError::PageUnusable { source },
        })?),
        None => None,
    };
    let now = ctx.now;
    let codes = match ctx.ops().regenerate_backup_codes(user, now) {
        Ok(c) => c,
        Err(e) => {
            if let Some(path) = &output {
                let _ = std::fs::remove_file(path);
            }
            return Err(e.into());
        }
    };
    let mut report = NewCodesReport {
        user: user.into(),
        backup_codes: shown(&codes),
        page: None,
        notice: ctx.notify(user, Change::BackupCodes),
    };
    // The new set is in force: show it whatever happens to the page.
    if let (Some(f), Some(path)) = (page.as_mut(), output) {
        let text = Zeroizing::new(printable_page(user, &report.backup_codes, now));
        match f.write_all(text.as_bytes()).and_then(|()| f.sync_all()) {
            Ok(()) => report.page = Some(path),
            Err(source) => {
                let _ = std::fs::remove_file(&path);
                return Done::with(report, Status::Failed(CliError::PageWrite { path, source }));
            }
        }
    }
    Done::ok(report)
}

/// A page to print and keep: who, where, when, the codes, and how to use them.
fn printable_page(user: &str, codes: &[String], now: i64) -> String {
    let mut s = format!(
        "crm2fa backup codes\n===================\n\nAccount:   {}\nGenerated: {} (UTC)\n\n",
        account_name(user),
        rfc3339(now)
    );
    for (i, c) in codes.iter().enumerate() {
        s.push_str(&format!("  {:>2}. [ ] {c}\n", i + 1));
    }
    s.push_str(
        "\nHow to use them: when the login asks \"Verification code:\" and your phone is\n\
         not at hand, type one of these codes instead (dashes and case do not matter).\n\
         Each code works once; tick it off when used. Any earlier set is void.\n\
         Keep this page somewhere safe, away from your computer.\n",
    );
    s
}

/// A recovery code and its expiry.
#[derive(Serialize)]
struct RecoveryReport {
    user: String,
    code: Zeroizing<String>,
    #[serde(serialize_with = "output::time")]
    expires_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    notice: Option<NoticeReport>,
}

impl Text for RecoveryReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        let user = &self.user;
        writeln!(w, "Recovery code for {user}: {}", self.code.as_str())?;
        writeln!(
            w,
            "It works once, at the \"Verification code:\" prompt, until {} (UTC).",
            rfc3339(self.expires_at)
        )?;
        writeln!(
            w,
            "Any lock on {user} has been cleared. After logging in, re-enrol or regenerate backup codes."
        )?;
        write_notice(w, &self.notice)
    }
}

/// Issue a one-time recovery code valid for `valid` seconds.
pub(super) fn recovery(ctx: &mut Ctx, user: &str, valid: i64) -> Result<Done, CliError> {
    let now = ctx.now;
    let (code, expires_at) = ctx.ops().issue_recovery(user, valid, now)?;
    Done::ok(RecoveryReport {
        user: user.into(),
        code: code.display(),
        expires_at,
        notice: ctx.notify(user, Change::Recovery { until: expires_at }),
    })
}
