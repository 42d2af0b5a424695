//! `audit`: the audit log.
use std::io::{self, Write};

use crm2fa_common::audit::{AuditEntry, AuditFilter};
use serde::Serialize;

use super::{Ctx, Done};
use crate::error::CliError;
use crate::output::{self, Text};

/// One audit row as shown.
#[derive(Serialize)]
struct Row {
    #[serde(serialize_with = "output::time")]
    time: i64,
    host: String,
    user: String,
    service: String,
    rhost: String,
    event: &'static str,
    outcome: &'static str,
    detail: String,
}

impl From<AuditEntry> for Row {
    fn from(e: AuditEntry) -> Row {
        Row {
            time: e.time,
            host: e.host,
            user: e.user,
            service: e.service,
            rhost: e.rhost,
            event: e.event.as_str(),
            outcome: e.outcome.as_str(),
            detail: e.detail,
        }
    }
}

/// The rows, oldest first.
#[derive(Serialize)]
#[serde(transparent)]
struct AuditReport {
    rows: Vec<Row>,
}

impl Text for AuditReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        for r in &self.rows {
            let from = if r.rhost.is_empty() {
                String::new()
            } else {
                format!(" from {}", r.rhost)
            };
            writeln!(
                w,
                "{} {} {} {}{from} {} {} {}",
                crm2fa_common::rfc3339(r.time),
                r.host,
                r.user,
                r.service,
                r.event,
                r.outcome,
                r.detail
            )?;
        }
        Ok(())
    }
}

/// The audit log, for one user and from a time on if asked.
pub(super) fn audit(
    ctx: &mut Ctx,
    user: Option<String>,
    since: Option<i64>,
) -> Result<Done, CliError> {
    let rows = ctx.store.audit(&AuditFilter { user, since })?;
    Done::ok(AuditReport {
        rows: rows.into_iter().map(Row::from).collect(),
    })
}
