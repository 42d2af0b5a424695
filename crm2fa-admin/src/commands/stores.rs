//! `store copy`: the whole store into another, empty one.
use std::io::{self, Write};
use std::path::PathBuf;

use crm2fa_common::config::{self, PostgresConfig, StoreConfig};
use crm2fa_common::ops;
use crm2fa_common::store;
use serde::Serialize;

use super::{Ctx, Done};
use crate::cli::StoreAction;
use crate::error::CliError;
use crate::output::Text;

/// What was copied where, and how to switch over.
#[derive(Serialize)]
struct CopyReport {
    from: String,
    to: String,
    counts: std::collections::BTreeMap<&'static str, usize>,
    #[serde(skip)]
    order: Vec<&'static str>,
    switch_over: Vec<String>,
}

impl Text for CopyReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(w, "Copied {} to {}:", self.from, self.to)?;
        for t in &self.order {
            writeln!(
                w,
                "    {:<17} {}",
                t,
                self.counts.get(t).copied().unwrap_or(0)
            )?;
        }
        writeln!(w, "(the same counts in both)")?;
        writeln!(w, "To switch the hosts over:")?;
        for (i, step) in self.switch_over.iter().enumerate() {
            writeln!(w, "  {}. {step}", i + 1)?;
        }
        Ok(())
    }
}

/// `store …`.
pub(super) fn store(ctx: &mut Ctx, action: StoreAction) -> Result<Done, CliError> {
    match action {
        StoreAction::Copy {
            to,
            password_file,
            ca_file,
        } => copy(ctx, &to, password_file, ca_file),
    }
}

fn copy(
    ctx: &mut Ctx,
    to: &str,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
) -> Result<Done, CliError> {
    let target = target_config(ctx, to, password_file, ca_file)?;
    let to_location = match &target.postgres {
        Some(p) => p.location(),
        None => target.path.display().to_string(),
    };
    ctx.confirm(&format!(
        "This copies the whole store {} into {to_location}, which must be empty",
        ctx.store.location()
    ))?;
    let mut dest = store::create(&target, Some(&crm2fa_pg::Connector))?;
    let copied = ops::copy_store(ctx.store.as_mut(), dest.as_mut())?;
    let switch_over = match &target.postgres {
        Some(p) => vec![
            "copy the key file (the same key_file on every host: it seals the TOTP secrets) \
             to each host, mode 0600 root"
                .to_string(),
            format!(
                "on each host set [store] url = \"{}\" with HOSTS_ROLE the hosts' role, which \
                 has row rights only (README, PostgreSQL store), never {}, the owner this copy \
                 used; its password_file{}; then run `crm2fa-admin doctor`",
                hosts_url(p),
                p.user,
                if p.sslmode == config::SslMode::VerifyFull {
                    " and ca_file"
                } else {
                    ""
                }
            ),
            "logins made on the old store after this copy are not in the new one: switch soon, \
             or copy again into an empty database"
                .to_string(),
        ],
        None => vec![
            format!(
                "on this host set [store] path = \"{}\" and remove [store] url, then run \
                 `crm2fa-admin doctor`",
                target.path.display()
            ),
            "logins made on the old store after this copy are not in the new one".to_string(),
        ],
    };
    Done::ok(CopyReport {
        from: ctx.store.location().to_string(),
        to: to_location,
        order: copied.from.iter().map(|(t, _)| *t).collect(),
        counts: copied.to.into_iter().collect(),
        switch_over,
    })
}

/// The url the hosts' configs write for the database `p` names: the
/// same server, database and sslmode, with the role left for the admin to
/// fill in (`HOSTS_ROLE`).
fn hosts_url(p: &PostgresConfig) -> String {
    let mode = match p.sslmode {
        config::SslMode::Disable => "disable",
        config::SslMode::Require => "require",
        config::SslMode::VerifyFull => "verify-full",
    };
    let at = store::pg::location("HOSTS_ROLE", &p.host, p.port, &p.dbname);
    format!("{at}?sslmode={mode}")
}

/// The store `to` names, with this config's key file and timeouts.
fn target_config(
    ctx: &Ctx,
    to: &str,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
) -> Result<StoreConfig, CliError> {
    let mine = &ctx.cfg.store;
    if !to.starts_with("postgres://") && !to.starts_with("postgresql://") {
        return Ok(StoreConfig {
            path: std::path::absolute(to).unwrap_or_else(|_| PathBuf::from(to)),
            key_file: mine.key_file.clone(),
            postgres: None,
        });
    }
    let connect_timeout = mine.postgres.as_ref().map_or(3, |p| p.connect_timeout);
    let pg = PostgresConfig::from_url(to, password_file, ca_file, connect_timeout, PathBuf::new())
        .map_err(|(key, m)| {
            CliError::Usage(match key {
                "url" => format!("--to {to}: {m}"),
                "ca_file" => format!("--to {to}: {m} (here: --ca-file)"),
                _ => format!("--to {to}: {m} (here: --password-file)"),
            })
        })?;
    Ok(StoreConfig {
        path: mine.path.clone(),
        key_file: mine.key_file.clone(),
        postgres: Some(pg),
    })
}
