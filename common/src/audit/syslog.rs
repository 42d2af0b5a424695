//! Syslog (authpriv) for every decision. The same decisions go to the audit
//! table through the store, in the transaction that made them.
use syslog::{Facility, Formatter3164};

use super::{AuditEntry, Outcome};

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Normal operation.
    Info,
    /// Refused logins, locks.
    Warning,
    /// Failures of the configuration or the store.
    Error,
}

/// Writes to syslog's authpriv facility; with `mirror` (module argument
/// `debug`) also to standard error. Without `debug` nothing goes to standard
/// error: under su or sudo that is the user's terminal.
pub struct Logger {
    ident: String,
    /// The PAM process the lines are about.
    pid: u32,
    /// Connected at the first line: a login the module hands to crm2fad
    /// logs nothing in its own process, and so never connects.
    syslog: Syslog,
    mirror: bool,
    /// Where mirrored lines go instead of standard error (crm2fad sends
    /// them to the module it runs a login for).
    sink: Option<Sink>,
}

/// A logger's connection to syslog.
enum Syslog {
    /// Not tried yet.
    Unopened,
    Open(syslog::Logger<syslog::LoggerBackend, Formatter3164>),
    /// Tried, and there is no syslog to write to.
    Unavailable,
}

/// Where a logger's mirrored lines go, instead of standard error.
type Sink = Box<dyn FnMut(&str) + Send>;

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger")
            .field("ident", &self.ident)
            .field("mirror", &self.mirror)
            .finish()
    }
}

impl Logger {
    /// A logger that names itself `ident`.
    pub fn new(ident: &str, mirror: bool) -> Logger {
        Logger::with_pid(ident, mirror, std::process::id())
    }

    /// A logger that names itself `ident[pid]`: crm2fad logs a login it
    /// runs with the PAM process's pid, as the module would.
    pub fn with_pid(ident: &str, mirror: bool, pid: u32) -> Logger {
        Logger {
            ident: ident.into(),
            pid,
            syslog: Syslog::Unopened,
            mirror,
            sink: None,
        }
    }

    /// The same logger, its mirrored lines (under `debug`) handed to
    /// `sink` instead of written to standard error.
    pub fn mirrored_to(mut self, sink: impl FnMut(&str) + Send + 'static) -> Logger {
        self.sink = Some(Box::new(sink));
        self
    }

    /// The connection to syslog, made on first use.
    fn connected(&mut self) -> Option<&mut syslog::Logger<syslog::LoggerBackend, Formatter3164>> {
        if let Syslog::Unopened = self.syslog {
            self.syslog = match syslog::unix(Formatter3164 {
                facility: Facility::LOG_AUTHPRIV,
                hostname: None,
                process: self.ident.clone(),
                pid: self.pid,
            }) {
                Ok(s) => Syslog::Open(s),
                Err(_) => Syslog::Unavailable,
            };
        }
        match &mut self.syslog {
            Syslog::Open(s) => Some(s),
            _ => None,
        }
    }

    /// Log one line.
    pub fn log(&mut self, level: Level, msg: &str) {
        if let Some(s) = self.connected() {
            let _ = match level {
                Level::Info => s.info(msg),
                Level::Warning => s.warning(msg),
                Level::Error => s.err(msg),
            };
        }
        if self.mirror {
            let line = format!("{}: {msg}", self.ident);
            match self.sink.as_mut() {
                Some(sink) => sink(&line),
                None => eprintln!("{line}"),
            }
        }
    }

    /// Log at [`Level::Info`].
    pub fn info(&mut self, msg: &str) {
        self.log(Level::Info, msg)
    }
    /// Log at [`Level::Warning`].
    pub fn warn(&mut self, msg: &str) {
        self.log(Level::Warning, msg)
    }
    /// Log at [`Level::Error`].
    pub fn error(&mut self, msg: &str) {
        self.log(Level::Error, msg)
    }

    /// Log an audit entry as one line (never a code or a secret: entries hold neither).
    pub fn entry(&mut self, e: &AuditEntry) {
        let level = match e.outcome {
            Outcome::Failure | Outcome::Locked | Outcome::Denied => Level::Warning,
            _ => Level::Info,
        };
        let mut line = format!(
            "{} {} user={} service={}",
            e.event.as_str(),
            e.outcome.as_str(),
            e.user,
            e.service
        );
        if !e.rhost.is_empty() {
            line.push_str(&format!(" rhost={}", e.rhost));
        }
        if !e.detail.is_empty() {
            line.push_str(&format!(": {}", e.detail));
        }
        self.log(level, &line);
    }

    /// Log each of `entries`.
    pub fn entries(&mut self, entries: &[AuditEntry]) {
        for e in entries {
            self.entry(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_is_connected_at_the_first_line_not_before() {
        let mut log = Logger::with_pid("crm2fa-test", false, 1);
        assert!(matches!(log.syslog, Syslog::Unopened));
        // What the first line does first (without writing one).
        let _ = log.connected();
        assert!(!matches!(log.syslog, Syslog::Unopened));
    }
}
