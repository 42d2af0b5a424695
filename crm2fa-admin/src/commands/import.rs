//! `import google-authenticator` and `import oath`: take over secrets from
//! the tools crm2fa replaces.
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crm2fa_common::ops::{self, ImportPlan, Source};
use crm2fa_common::Error;
use serde::Serialize;
use zeroize::Zeroizing;

use super::{Ctx, Done};
use crate::cli::ImportSource;
use crate::error::CliError;
use crate::output::Text;

/// One user's part of an import.
#[derive(Serialize)]
struct UserImport {
    user: String,
    /// The state of the factor replaced, if any.
    replaces: Option<&'static str>,
    backup_codes: usize,
    last_step: i64,
}

/// What an import did, or would do.
#[derive(Serialize)]
struct ImportReport {
    source: &'static str,
    file: PathBuf,
    dry_run: bool,
    users: Vec<UserImport>,
}

impl Text for ImportReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        let verb = if self.dry_run {
            "Would import"
        } else {
            "Imported"
        };
        for u in &self.users {
            let replaces = match u.replaces {
                Some(state) => format!(", replacing the {state} enrolment"),
                None => String::new(),
            };
            writeln!(
                w,
                "{verb} {} from {} ({} backup code(s){replaces}).",
                u.user,
                self.file.display(),
                u.backup_codes
            )?;
        }
        if self.dry_run {
            writeln!(w, "Nothing was changed (--dry-run).")
        } else {
            writeln!(
                w,
                "The users' authenticator apps keep working. Try one: crm2fa-admin check USER"
            )?;
            writeln!(
                w,
                "Then take the old module out of the PAM stack and delete the old files."
            )
        }
    }
}

fn read(path: &Path) -> Result<Zeroizing<String>, CliError> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| Error::Import {
        path: path.into(),
        line: 1,
        message: "not a text file".into(),
    })?;
    Ok(Zeroizing::new(text))
}

/// Read and check the whole file, then (unless `--dry-run`) import every
/// user in it in one transaction. Replacing an existing factor asks first.
pub(super) fn import(
    ctx: &mut Ctx,
    source: ImportSource,
    account: impl Fn(String) -> String,
) -> Result<Done, CliError> {
    let (kind, file, dry_run, mut factors) = match source {
        ImportSource::GoogleAuthenticator {
            file,
            user,
            dry_run,
        } => {
            let text = read(&file)?;
            let user = account(user);
            let f = ops::parse_google_authenticator(&file, &text, &user, &ctx.cfg.totp)?;
            (Source::GoogleAuthenticator, file, dry_run, vec![f])
        }
        ImportSource::Oath { file, dry_run } => {
            let text = read(&file)?;
            let found = ops::parse_oath(&file, &text, &ctx.cfg.totp, ctx.now)?;
            (Source::Oath, file, dry_run, found)
        }
    };
    if kind == Source::Oath {
        for f in &mut factors {
            f.user = account(std::mem::take(&mut f.user));
        }
    }
    let now = ctx.now;
    let plans = if dry_run {
        ctx.ops().plan_import(&factors)?
    } else {
        let replaced: Vec<String> = ctx
            .ops()
            .plan_import(&factors)?
            .into_iter()
            .filter_map(|p| p.replaces.map(|s| format!("{} ({s})", p.user)))
            .collect();
        if !replaced.is_empty() {
            ctx.confirm(&format!(
                "This replaces the enrolment of {}",
                replaced.join(", ")
            ))?;
        }
        ctx.ops().import(kind, &factors, now)?
    };
    Done::ok(report(kind, file, dry_run, plans))
}

fn report(kind: Source, file: PathBuf, dry_run: bool, plans: Vec<ImportPlan>) -> ImportReport {
    ImportReport {
        source: kind.as_str(),
        file,
        dry_run,
        users: plans
            .into_iter()
            .map(|p| UserImport {
                user: p.user,
                replaces: p.replaces,
                backup_codes: p.backup_codes,
                last_step: p.last_step,
            })
            .collect(),
    }
}
