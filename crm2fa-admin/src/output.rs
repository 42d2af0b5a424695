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
    /// The JSON document.
    fn to_json(&self) -> serde_json::Result<serde_json::Value>;
    /// The text.
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()>;
}

impl<T: Serialize + Text> Report for T {
    fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self)
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
            let v = report.to_json().map_err(io::Error::other)?;
            let text = serde_json::to_string_pretty(&v).map_err(io::Error::other)?;
            writeln!(w, "{text}")?;
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
    zeroize::Zeroizing::new(codes.iter().map(Code::display).collect())
}

/// New backup codes, one per line under a heading.
pub(crate) fn write_backup_codes(w: &mut dyn Write, codes: &[String]) -> io::Result<()> {
    writeln!(
        w,
        "Backup codes (each works once; shown only now, keep them somewhere safe):"
    )?;
    for c in codes {
        writeln!(w, "    {c}")?;
    }
    Ok(())
}
