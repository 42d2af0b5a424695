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
    /// The user's unused backup codes made void.
    voids_backup_codes: u32,
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
            let mut replaces = match u.replaces {
                Some(state) => format!(", replacing the {state} enrolment"),
                None => String::new(),
            };
            if u.voids_backup_codes > 0 {
                replaces += &format!(
                    "; {} unused backup code(s) the user had {} void",
                    u.voids_backup_codes,
                    if self.dry_run {
                        "would become"
                    } else {
                        "became"
                    }
                );
            }
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

/// The most an import file may hold: far more than any real one.
const MAX_FILE: u64 = 4 << 20;

/// The whole file at `path`, which must be a regular file of at most
/// [`MAX_FILE`] bytes, not reached through a symbolic link (a user's own
/// `~/.google_authenticator` could otherwise be a link to anything, or a
/// FIFO that never ends).
fn read(path: &Path) -> Result<Zeroizing<String>, CliError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |message: String| Error::Import {
        path: path.into(),
        line: 1,
        message,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refuse("is a symbolic link: give the file it points to".into()),
            _ => Error::io(path, e),
        })?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()).into());
    }
    let too_big = || {
        refuse(format!(
            "larger than {} MiB: not an import file",
            MAX_FILE >> 20
        ))
    };
    if meta.len() > MAX_FILE {
        return Err(too_big().into());
    }
    let mut bytes = Zeroizing::new(Vec::new());
    Read::by_ref(&mut f)
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(too_big().into());
    }
    let bytes = std::mem::take(&mut *bytes);
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
    let plans = ctx.ops().plan_import(&factors)?;
    if !dry_run {
        let replaced: Vec<String> = plans
            .iter()
            .filter_map(|p| {
                let mut what: Vec<String> = p
                    .replaces
                    .map(|s| format!("the {s} enrolment"))
                    .into_iter()
                    .collect();
                if p.voids_backup_codes > 0 {
                    what.push(format!("{} unused backup code(s)", p.voids_backup_codes));
                }
                (!what.is_empty()).then(|| format!("{}: {}", p.user, what.join(" and ")))
            })
            .collect();
        if !replaced.is_empty() {
            ctx.confirm(&format!("This replaces {}", replaced.join("; ")))?;
        }
        // Only what was shown: a user whose factors changed since is not
        // imported over (nothing is).
        ctx.ops().import(kind, &factors, &plans, now)?;
    }
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
                voids_backup_codes: p.voids_backup_codes,
                backup_codes: p.backup_codes,
                last_step: p.last_step,
            })
            .collect(),
    }
}
