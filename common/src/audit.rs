//! Syslog (authpriv) for every decision. The same decisions go to the audit
//! table through the store, in the transaction that made them.
use syslog::{Facility, Formatter3164};

use crate::store::AuditEntry;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

/// Writes to syslog's authpriv facility; with `mirror` (module argument
/// `debug`) also to standard error. Without `debug` nothing goes to standard
/// error: under su or sudo that is the user's terminal.
pub struct Logger {
    ident: String,
    syslog: Option<syslog::Logger<syslog::LoggerBackend, Formatter3164>>,
    mirror: bool,
}

impl Logger {
    pub fn new(ident: &str, mirror: bool) -> Logger {
        let syslog = syslog::unix(Formatter3164 {
            facility: Facility::LOG_AUTHPRIV,
            hostname: None,
            process: ident.into(),
            pid: std::process::id(),
        })
        .ok();
        Logger {
            ident: ident.into(),
            syslog,
            mirror,
        }
    }

    pub fn log(&mut self, level: Level, msg: &str) {
        if let Some(s) = self.syslog.as_mut() {
            let _ = match level {
                Level::Info => s.info(msg),
                Level::Warning => s.warning(msg),
                Level::Error => s.err(msg),
            };
        }
        if self.mirror {
            eprintln!("{}: {msg}", self.ident);
        }
    }

    pub fn info(&mut self, msg: &str) {
        self.log(Level::Info, msg)
    }
    pub fn warn(&mut self, msg: &str) {
        self.log(Level::Warning, msg)
    }
    pub fn error(&mut self, msg: &str) {
        self.log(Level::Error, msg)
    }

    /// Log an audit entry as one line (never a code or a secret: entries hold neither).
    pub fn entry(&mut self, e: &AuditEntry) {
        let level = match e.outcome.as_str() {
            "failure" | "locked" | "denied" | "error" => Level::Warning,
            _ => Level::Info,
        };
        let mut line = format!(
            "{} {} user={} service={}",
            e.event, e.outcome, e.user, e.service
        );
        if !e.rhost.is_empty() {
            line.push_str(&format!(" rhost={}", e.rhost));
        }
        if !e.detail.is_empty() {
            line.push_str(&format!(": {}", e.detail));
        }
        self.log(level, &line);
    }
}
