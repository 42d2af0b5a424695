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
    /// Lines held back from syslog until [`Logger::release`], in order
    /// ([`Logger::holding`]).
    held: Option<Vec<(Level, String)>>,
}

/// A logger's connection to syslog.
enum Syslog {
    /// Not tried yet; a connection kept from an earlier logger, if any.
    Unopened(SyslogConnection),
    Open(syslog::Logger<syslog::LoggerBackend, Formatter3164>),
    /// Tried, and there is no syslog to write to.
    Unavailable,
}

/// A connection to syslog that outlives a [`Logger`]: crm2fad keeps one
/// per thread, so that a login it runs writes its lines without connecting
/// to `/dev/log` anew. Empty until a logger has connected.
#[derive(Default)]
pub struct SyslogConnection(Option<syslog::LoggerBackend>);

impl std::fmt::Debug for SyslogConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SyslogConnection")
            .field(&self.0.is_some())
            .finish()
    }
}

/// Connect to the system's syslog socket (`/dev/log`, or the other
/// places syslog listens); in this crate's tests, to a socket the test
/// owns when it has named one.
fn connect(
    formatter: Formatter3164,
) -> syslog::Result<syslog::Logger<syslog::LoggerBackend, Formatter3164>> {
    #[cfg(test)]
    if let Some(path) = tests::SOCKET.with(|p| p.borrow().clone()) {
        return syslog::unix_custom(formatter, path);
    }
    syslog::unix(formatter)
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
            syslog: Syslog::Unopened(SyslogConnection::default()),
            mirror,
            sink: None,
            held: None,
        }
    }

    /// The same logger, holding its syslog lines back until
    /// [`Logger::release`] (or its end): crm2fad sends a login's outcome
    /// first and its lines right after, and the login releases them before
    /// it waits on the user. Mirrored lines still go at once.
    pub fn holding(mut self) -> Logger {
        self.held = Some(Vec::new());
        self
    }

    /// Write the lines held back to syslog, in order.
    pub fn release(&mut self) {
        let Some(held) = self.held.as_mut() else {
            return;
        };
        for (level, msg) in std::mem::take(held) {
            self.write_syslog(level, &msg);
        }
    }

    /// The same logger, its mirrored lines (under `debug`) handed to
    /// `sink` instead of written to standard error.
    pub fn mirrored_to(mut self, sink: impl FnMut(&str) + Send + 'static) -> Logger {
        self.sink = Some(Box::new(sink));
        self
    }

    /// The same logger, writing through `kept` (a connection an earlier
    /// logger had) rather than connecting anew.
    pub fn through(mut self, kept: SyslogConnection) -> Logger {
        if let Syslog::Unopened(_) = self.syslog {
            self.syslog = Syslog::Unopened(kept);
        }
        self
    }

    /// The logger's connection to syslog, to keep for the next one (the
    /// lines held back written first).
    pub fn into_connection(mut self) -> SyslogConnection {
        self.release();
        match std::mem::replace(&mut self.syslog, Syslog::Unavailable) {
            Syslog::Open(s) => SyslogConnection(Some(s.backend)),
            Syslog::Unopened(kept) => kept,
            Syslog::Unavailable => SyslogConnection::default(),
        }
    }

    /// The connection to syslog: the kept one, or one made on first use.
    fn connected(&mut self) -> Option<&mut syslog::Logger<syslog::LoggerBackend, Formatter3164>> {
        if let Syslog::Unopened(kept) = &mut self.syslog {
            let formatter = Formatter3164 {
                facility: Facility::LOG_AUTHPRIV,
                hostname: None,
                process: self.ident.clone(),
                pid: self.pid,
            };
            self.syslog = match kept.0.take() {
                Some(backend) => Syslog::Open(syslog::Logger::new(backend, formatter)),
                None => match connect(formatter) {
                    Ok(s) => Syslog::Open(s),
                    Err(_) => Syslog::Unavailable,
                },
            };
        }
        match &mut self.syslog {
            Syslog::Open(s) => Some(s),
            _ => None,
        }
    }

    /// Write one line to syslog; if that fails on a connection made
    /// earlier (syslog was restarted since), connect again and retry once.
    fn write_syslog(&mut self, level: Level, msg: &str) {
        for _ in 0..2 {
            let Some(s) = self.connected() else {
                return;
            };
            let written = match level {
                Level::Info => s.info(msg),
                Level::Warning => s.warning(msg),
                Level::Error => s.err(msg),
            };
            if written.is_ok() {
                return;
            }
            self.syslog = Syslog::Unopened(SyslogConnection::default());
        }
    }

    /// Log one line.
    pub fn log(&mut self, level: Level, msg: &str) {
        match self.held.as_mut() {
            Some(held) => held.push((level, msg.to_string())),
            None => self.write_syslog(level, msg),
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
impl SyslogConnection {
    /// A connection to `socket`, a test's syslogd.
    pub(crate) fn to_socket(socket: std::os::unix::net::UnixDatagram) -> SyslogConnection {
        SyslogConnection(Some(syslog::LoggerBackend::Unix(socket)))
    }
}

/// The lines a test's `syslogd` has received by now, without waiting.
#[cfg(test)]
pub(crate) fn lines_now(syslogd: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    syslogd.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = syslogd.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    syslogd.set_nonblocking(false).unwrap();
    got
}

impl Drop for Logger {
    /// Nothing held back is lost, whatever ends the logger.
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::os::unix::net::UnixDatagram;
    use std::path::PathBuf;

    thread_local! {
        /// The syslog socket [`connect`] uses in this thread's test, if any.
        pub(super) static SOCKET: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
    }

    /// A syslog socket bound at `path`, as syslogd binds `/dev/log`.
    fn syslogd(path: &std::path::Path) -> UnixDatagram {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        socket
    }

    fn line(syslogd: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = syslogd.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn held_lines_go_to_syslog_in_order_when_released_or_when_the_logger_ends() {
        let (ours, syslogd) = UnixDatagram::pair().unwrap();
        let mirrored = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = std::sync::Arc::clone(&mirrored);
        let mut log = Logger::with_pid("crm2fa-test", true, 61)
            .mirrored_to(move |l| into.lock().unwrap().push(l.to_string()))
            .through(SyslogConnection::to_socket(ours))
            .holding();
        log.info("one");
        log.warn("two");
        assert!(lines_now(&syslogd).is_empty(), "held back");
        assert_eq!(mirrored.lock().unwrap().len(), 2, "mirrored at once");
        log.release();
        let got = lines_now(&syslogd);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].ends_with("one") && got[1].ends_with("two"),
            "{got:?}"
        );
        // Still holding after a release; the end writes what is left.
        log.error("three");
        assert!(lines_now(&syslogd).is_empty());
        let kept = log.into_connection();
        let got = lines_now(&syslogd);
        assert!(got.len() == 1 && got[0].ends_with("three"), "{got:?}");
        // A logger dropped (a login that panicked) loses nothing either.
        let mut next = Logger::with_pid("crm2fa-test", false, 62)
            .through(kept)
            .holding();
        next.info("four");
        drop(next);
        let got = lines_now(&syslogd);
        assert!(got.len() == 1 && got[0].ends_with("four"), "{got:?}");
    }

    #[test]
    fn syslog_is_connected_at_the_first_line_not_before() {
        let mut log = Logger::with_pid("crm2fa-test", false, 1);
        assert!(matches!(log.syslog, Syslog::Unopened(_)));
        // What the first line does first (without writing one).
        let _ = log.connected();
        assert!(!matches!(log.syslog, Syslog::Unopened(_)));
    }

    #[test]
    fn a_kept_connection_carries_the_next_loggers_lines_and_a_dead_one_is_dropped() {
        let (ours, syslogd) = UnixDatagram::pair().unwrap();
        syslogd
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let read = || line(&syslogd);
        let kept = SyslogConnection(Some(syslog::LoggerBackend::Unix(ours)));
        let mut first = Logger::with_pid("crm2fa-test", false, 41).through(kept);
        first.info("one");
        let line = read();
        assert!(
            line.contains("crm2fa-test[41]") && line.ends_with("one"),
            "{line}"
        );
        let kept = first.into_connection();
        assert!(kept.0.is_some());
        // The next logger writes through it, under its own pid.
        let mut second = Logger::with_pid("crm2fa-test", false, 42).through(kept);
        second.warn("two");
        let line = read();
        assert!(
            line.contains("crm2fa-test[42]") && line.ends_with("two"),
            "{line}"
        );
        // syslog gone (restarted): the write fails, the logger connects
        // anew rather than keep the dead socket.
        drop(syslogd);
        let mut third =
            Logger::with_pid("crm2fa-test", false, 43).through(second.into_connection());
        third.error("three");
        match &third.syslog {
            Syslog::Unavailable => {}
            Syslog::Open(s) => {
                if let syslog::LoggerBackend::Unix(socket) = &s.backend {
                    let peer = socket.peer_addr().unwrap();
                    assert!(peer.as_pathname().is_some(), "still the dead socket");
                }
            }
            Syslog::Unopened(_) => panic!("not reconnected"),
        }
    }

    #[test]
    fn a_line_written_after_syslog_restarted_reaches_the_new_syslog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        SOCKET.with(|p| *p.borrow_mut() = Some(path.clone()));
        let first = syslogd(&path);
        let mut log = Logger::with_pid("crm2fa-test", false, 51);
        log.info("before");
        assert!(line(&first).ends_with("before"));
        let kept = log.into_connection();
        // syslog restarts: its socket goes, and a new one is bound in its place.
        drop(first);
        std::fs::remove_file(&path).unwrap();
        let second = syslogd(&path);
        let mut next = Logger::with_pid("crm2fa-test", false, 52).through(kept);
        next.warn("after");
        let got = line(&second);
        assert!(
            got.contains("crm2fa-test[52]") && got.ends_with("after"),
            "{got}"
        );
        // And the connection made anew is the one kept for the next logger.
        let mut third = Logger::with_pid("crm2fa-test", false, 53).through(next.into_connection());
        third.info("again");
        assert!(line(&second).ends_with("again"));
        SOCKET.with(|p| *p.borrow_mut() = None);
    }
}
