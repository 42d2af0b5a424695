//! The one renderer: every command returns a typed report, printed here as
//! text or, with `--json`, as one JSON document on stdout.
use std::io::{self, Write};

use crm2fa_common::codes::Code;
use serde::{Serialize, Serializer};

/// A command's result as people read it.
pub(crate) trait Text {
    /// Write the report for a terminal.
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()>;
}

/// A command's result: text for people, JSON for scripts.
pub(crate) trait Report {
    /// Write the JSON document, straight from the report (no copy of the
    /// secrets it may hold is left behind).
    fn write_json(&self, w: &mut dyn Write) -> io::Result<()>;
    /// Write the text.
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()>;
}

impl<T: Serialize + Text> Report for T {
    fn write_json(&self, w: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut *w, self).map_err(|e| match e.io_error_kind() {
            Some(kind) => io::Error::new(kind, e),
            None => io::Error::other(e),
        })?;
        writeln!(w)
    }
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        Text::write_text(self, w)
    }
}

/// Where reports go, and in which form.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    /// `--json`.
    pub(crate) json: bool,
}

impl Output {
    /// Print `report` on stdout.
    pub(crate) fn show(&self, report: &dyn Report) -> io::Result<()> {
        let stdout = io::stdout();
        let mut w = stdout.lock();
        if self.json {
            report.write_json(&mut w)?;
        } else {
            report.write_text(&mut w)?;
        }
        w.flush()
    }
}

/// Serialize a Unix time as RFC 3339 UTC.
pub(crate) fn time<S: Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crm2fa_common::rfc3339(*t))
}

/// Serialize an optional Unix time as RFC 3339 UTC or null.
pub(crate) fn opt_time<S: Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => time(t, s),
        None => s.serialize_none(),
    }
}

/// Codes as shown to people (`abcd-efgh`), zeroized when dropped.
pub(crate) type Shown = zeroize::Zeroizing<Vec<String>>;

/// `codes` as shown to people.
pub(crate) fn shown(codes: &[Code]) -> Shown {
    zeroize::Zeroizing::new(codes.iter().map(|c| c.display().to_string()).collect())
}

/// New backup codes, one per line under a heading.
pub(crate) fn write_backup_codes(w: &mut dyn Write, codes: &[String]) -> io::Result<()> {
    if codes.is_empty() {
        return writeln!(
            w,
            "No new backup codes: the set made before (shown then) stays in force."
        );
    }
    writeln!(
        w,
        "Backup codes (each works once; shown only now, keep them somewhere safe):"
    )?;
    for c in codes {
        writeln!(w, "    {c}")?;
    }
    Ok(())
}

/// What became of the email telling a user of a change (JSON key
/// `notice`; absent when no address is known).
#[derive(Debug, Serialize)]
pub(crate) struct NoticeReport {
    /// Handed to the mail server.
    pub(crate) sent: bool,
    /// Where, masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) to: Option<String>,
    /// Why it was not sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// The line about a notice, if there was one to send.
pub(crate) fn write_notice(w: &mut dyn Write, notice: &Option<NoticeReport>) -> io::Result<()> {
    match notice {
        Some(NoticeReport { sent: true, to, .. }) => writeln!(
            w,
            "The user was told by email ({}).",
            to.as_deref().unwrap_or_default()
        ),
        Some(NoticeReport { error, .. }) => writeln!(
            w,
            "Warning: the email telling the user could not be sent: {}",
            error.as_deref().unwrap_or("unknown error")
        ),
        None => Ok(()),
    }
}
