//! `init`, `doctor`, `completions`: setting a host up and checking it.
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crm2fa_common::config::{self, Config};
use crm2fa_common::crypto::HostKey;
use crm2fa_common::doctor::{self, Check};
use crm2fa_common::{fsperm, store};
use serde::Serialize;

use super::{Done, Status};
use crate::error::CliError;
use crate::output::Text;

/// What `init` found and did.
#[derive(Serialize)]
struct InitReport {
    config: PathBuf,
    key_file: PathBuf,
    /// The SQLite file, or the PostgreSQL address (no password).
    store: String,
    changes: Vec<String>,
}

impl Text for InitReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        if self.changes.is_empty() {
            writeln!(w, "Already initialised: {}", self.config.display())?;
        }
        for c in &self.changes {
            writeln!(w, "{c}")?;
        }
        Ok(())
    }
}

/// Create the config (the shipped default), the host key and the store,
/// each only if missing.
pub(super) fn init(config: Option<&Path>) -> Result<Done, CliError> {
    let path = config::resolve_path(config);
    let mut changes = vec![];
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fsperm::ensure_dir(dir, 0o755)?;
        }
        fsperm::create_private_file(&path, config::example_for(&path).as_bytes())?;
        changes.push(format!(
            "wrote the default configuration {}",
            path.display()
        ));
    }
    let cfg = Config::load(&path)?;
    if cfg.store.key_file.exists() {
        HostKey::load(&cfg.store.key_file)?;
    } else {
        if let Some(dir) = cfg.store.key_file.parent() {
            fsperm::ensure_dir(dir, 0o755)?;
        }
        HostKey::create(&cfg.store.key_file)?;
        changes.push(format!(
            "created the host key {} (0600); back it up: without it no secret can be read",
            cfg.store.key_file.display()
        ));
    }
    let store = match &cfg.store.postgres {
        Some(pg) => {
            // Creates the schema, or brings it up to date: idempotent.
            store::create(&cfg.store, Some(&crm2fa_pg::Connector))?;
            changes.push(format!(
                "the PostgreSQL store {} has the current schema (the hosts' role needs only \
                 row rights: see README, PostgreSQL store)",
                pg.location()
            ));
            pg.location()
        }
        None => {
            let existed = cfg.store.path.exists();
            store::create(&cfg.store, None)?;
            if !existed {
                changes.push(format!(
                    "created the store {} (0600)",
                    cfg.store.path.display()
                ));
            }
            cfg.store.path.display().to_string()
        }
    };
    Done::ok(InitReport {
        config: path,
        key_file: cfg.store.key_file,
        store,
        changes,
    })
}

/// Every check `doctor` made.
#[derive(Serialize)]
struct DoctorReport {
    ok: bool,
    checks: Vec<Check>,
}

impl Text for DoctorReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        for c in &self.checks {
            let verdict = if c.ok { "ok" } else { "PROBLEM" };
            writeln!(w, "{verdict:<7} {:<16} {}", c.check, c.detail)?;
            if let Some(fix) = &c.fix {
                writeln!(w, "{:<7} {:<16} fix: {fix}", "", "")?;
            }
        }
        Ok(())
    }
}

/// Check what a login depends on; exit 1 when anything is wrong.
pub(super) fn doctor(config: Option<&Path>) -> Result<Done, CliError> {
    let checks = doctor::run(&config::resolve_path(config), Some(&crm2fa_pgload::Loader));
    let ok = checks.iter().all(|c| c.ok);
    let status = if ok {
        Status::Success
    } else {
        Status::Unsuccessful
    };
    Done::with(DoctorReport { ok, checks }, status)
}

/// A shell's completion script.
#[derive(Serialize)]
struct CompletionsReport {
    shell: String,
    script: String,
}

impl Text for CompletionsReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        w.write_all(self.script.as_bytes())
    }
}

/// The completion script for `shell`, made from the command line's definition.
pub(super) fn completions(shell: clap_complete::Shell) -> Result<Done, CliError> {
    Done::ok(CompletionsReport {
        shell: shell.to_string(),
        script: crate::cli::completion_script(shell),
    })
}
