//! crm2fad: runs the logins `pam_crm2fa.so` offers it, on a store it keeps
//! open between them.
//!
//! A login in the module alone opens the store afresh each time: SQLite
//! maps the WAL index, reads the WAL back and parses the schema; a
//! PostgreSQL store starts a server session. crm2fad keeps those open and
//! runs the very same login ([`crm2fa_common::auth::run`]), the module
//! conversing for it over a Unix socket of root's
//! ([`crm2fa_common::auth::relay`]). Where crm2fad is not running, the
//! module runs the login itself: nothing depends on it.
//!
//! Only root may connect (the socket is 0600 in a directory of root's, and
//! each connection's peer must be uid 0). Logins are served by threads
//! that are kept between them ([`Workers`]); past as many at once as the
//! file descriptors allow (see [`max_logins`]), a connection is closed
//! unanswered and the module runs that login itself. SIGTERM (systemd's
//! stop) removes the socket, so new logins run in the module, and waits up
//! to [`STOP_WAIT`] for the logins in progress before it exits.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use crm2fa_common::audit::{Logger, SyslogConnection};
use crm2fa_common::auth::relay;
use crm2fa_common::fsperm;
use crm2fa_common::store::pool::{self, Pool};
use nix::sys::signal::{SigSet, Signal};

/// How long a stop waits for the logins in progress (systemd's
/// TimeoutStopSec in crm2fad.service is longer).
const STOP_WAIT: Duration = Duration::from_secs(75);
/// File descriptors a login may hold at once: its connection, syslog, a
/// store opened for it (SQLite: the file, WAL and index; or a PostgreSQL
/// session, its socket and its runtime's), a file being checked or read
/// (configuration, key, /etc/passwd), the sending program's pipes.
const FDS_PER_LOGIN: u64 = 12;
/// File descriptors kept for the process itself (its standard streams, the
/// socket, the signal thread …) and for the stores kept between logins
/// (up to [`pool::MAX_IDLE`], four each at most).
const FDS_KEPT: u64 = 64 + 4 * pool::MAX_IDLE as u64;

/// crm2fa login service: runs the logins pam_crm2fa.so offers it, with the
/// store kept open between them.
#[derive(Debug, Parser)]
#[command(name = "crm2fad", version)]
struct Cli {
    /// The socket to listen on (the module's `socket=` names the same).
    #[arg(long, value_name = "PATH", default_value = relay::DEFAULT_SOCKET)]
    socket: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut log = Logger::new("crm2fad", true);
    if !nix::unistd::geteuid().is_root() {
        log.error("must run as root: it reads the configuration, the key and the store");
        return ExitCode::from(1);
    }
    // SIGTERM and SIGINT go to a thread of their own: blocked here, before
    // any other thread starts (they inherit the mask).
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    if let Err(e) = stop.thread_block() {
        log.error(&format!("cannot take SIGTERM: {e}"));
        return ExitCode::from(1);
    }
    let max = max_logins();
    let listener = match listen(&cli.socket) {
        Ok(l) => l,
        Err(why) => {
            log.error(&format!("cannot listen on {}: {why}", cli.socket.display()));
            return ExitCode::from(1);
        }
    };
    log.info(&format!(
        "listening on {}, up to {max} logins at once",
        cli.socket.display()
    ));
    let pool = Pool::new(Some(Box::new(crm2fa_pg::Connector)));
    let login: Login = |stream, pool, syslog| {
        relay::serve(stream, pool, syslog);
    };
    let workers = match Workers::new(listener, pool, max, IDLE_EXIT, login) {
        Ok(w) => w,
        Err(e) => {
            log.error(&format!("cannot set a timeout on the socket: {e}"));
            return ExitCode::from(1);
        }
    };
    {
        let (workers, socket) = (Arc::clone(&workers), cli.socket.clone());
        let spawned = std::thread::Builder::new()
            .name("stop".into())
            .spawn(move || stop_on_signal(stop, &socket, &workers));
        if let Err(e) = spawned {
            log.error(&format!("cannot start the thread that takes SIGTERM: {e}"));
            return ExitCode::from(1);
        }
    }
    // The main thread is the first of the workers, and never ends.
    workers.first();
    ExitCode::SUCCESS
}

/// How long a thread waits for a login before it ends, unless it is the
/// last one waiting.
const IDLE_EXIT: Duration = Duration::from_secs(60);

/// Runs one login on a connection ([`relay::serve`]).
type Login = fn(UnixStream, &Pool, &mut SyslogConnection);

/// The threads that run logins. Each waits in `accept` on the socket,
/// serves the connection it gets, and waits again: no thread is started
/// for a login, nor is a connection handed from one thread to another.
/// When the last waiting thread takes a connection, it starts another to
/// wait in its place (at most `max` + 1 in all: the one beyond `max` turns
/// connections away while `max` logins run). A thread that waited
/// [`IDLE_EXIT`] for nothing ends, unless no other is waiting.
struct Workers {
    listener: UnixListener,
    pool: Pool,
    login: Login,
    /// How many logins may run at once ([`max_logins`]).
    max: usize,
    /// Logins being served.
    active: AtomicUsize,
    /// Threads waiting in `accept`.
    waiting: AtomicUsize,
    /// Threads in all.
    threads: AtomicUsize,
    /// SIGTERM came: new connections are closed unanswered.
    stopping: AtomicBool,
}

impl Workers {
    /// Workers on `listener`, whose threads beyond the first end after
    /// `idle` without a connection.
    fn new(
        listener: UnixListener,
        pool: Pool,
        max: usize,
        idle: Duration,
        login: Login,
    ) -> nix::Result<Arc<Workers>> {
        nix::sys::socket::setsockopt(
            &listener,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(idle.as_secs() as i64, idle.subsec_micros().into()),
        )?;
        Ok(Arc::new(Workers {
            listener,
            pool,
            login,
            max,
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            threads: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        }))
    }

    /// The first thread's life, on the calling thread: it never ends.
    fn first(self: &Arc<Self>) {
        self.threads.fetch_add(1, Ordering::SeqCst);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.work(true);
    }

    /// One thread's life; `waiting` and `threads` already count it. The
    /// main thread (`forever`) never ends.
    fn work(self: &Arc<Self>, forever: bool) {
        // Each thread's own connection to syslog, kept from one login to
        // the next.
        let mut syslog = SyslogConnection::default();
        // Accepting fails (out of file descriptors): said once, until a
        // connection is accepted again.
        let mut failing = false;
        loop {
            let accepted = self.listener.accept();
            let others_waiting = self.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
            match accepted {
                Ok((stream, _)) => {
                    failing = false;
                    if others_waiting == 0 {
                        self.start_one();
                    }
                    self.serve(stream, &mut syslog);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Idle for IDLE_EXIT: end, if another thread waits.
                    if others_waiting > 0 && !forever {
                        self.threads.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                    // The last one waiting: the host is quiet, and the
                    // stores no login took for a while are closed.
                    self.pool.close_idle();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if !failing {
                        let mut log =
                            Logger::new("crm2fad", true).through(std::mem::take(&mut syslog));
                        log.warn(&format!("accepting a connection failed: {e}"));
                        syslog = log.into_connection();
                        failing = true;
                    }
                    // Out of file descriptors, memory …: wait for a login to
                    // end rather than spin.
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            self.waiting.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Serve one connection, unless stopping or `max` logins run already:
    /// then it is closed unanswered, and the module runs that login itself.
    /// A login that panics ends alone (its connection closed: denied, or
    /// left to the module if nothing was sent yet); the thread goes on.
    fn serve(&self, stream: UnixStream, syslog: &mut SyslogConnection) {
        let admitted = self
            .active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            });
        if admitted.is_err() {
            return;
        }
        // Counted first, then the stop looked at: a stop that found no
        // login in progress (it sets `stopping` before it counts them)
        // is seen here, and the login goes back to the module; one that
        // came later waits for this login.
        if self.stopping.load(Ordering::SeqCst) {
            self.active.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (self.login)(stream, &self.pool, syslog)
        }));
        self.active.fetch_sub(1, Ordering::SeqCst);
        if served.is_err() {
            Logger::new("crm2fad", true)
                .error("a login failed unexpectedly (a panic); it is denied");
        }
    }

    /// Start a thread to wait for the next connection, unless `max` + 1
    /// run already.
    fn start_one(self: &Arc<Self>) {
        let room = self
            .threads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n <= self.max).then_some(n + 1)
            });
        if room.is_err() {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let workers = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("login".into())
            .spawn(move || workers.work(false));
        if let Err(e) = started {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.threads.fetch_sub(1, Ordering::SeqCst);
            Logger::new("crm2fad", true).warn(&format!("cannot start a thread for logins: {e}"));
        }
    }
}

/// How many logins may run at once: as many as the file descriptors allow
/// (the soft limit raised to the hard one first), [`FDS_PER_LOGIN`] each,
/// between 16 and 1024.
fn max_logins() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard))
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() =>
        {
            hard
        }
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    };
    let n = limit.saturating_sub(FDS_KEPT) / FDS_PER_LOGIN;
    n.clamp(16, 1024) as usize
}

/// On SIGTERM or SIGINT: remove the socket (new logins then run in the
/// module), wait for the logins in progress up to [`STOP_WAIT`], exit.
fn stop_on_signal(signals: SigSet, socket: &Path, workers: &Workers) {
    let Ok(signal) = signals.wait() else {
        return;
    };
    workers.stopping.store(true, Ordering::SeqCst);
    let mut log = Logger::new("crm2fad", true);
    let _ = std::fs::remove_file(socket);
    let waiting = workers.active.load(Ordering::SeqCst);
    log.info(&format!(
        "{signal}: stopping; new logins run in the module; waiting for {waiting} in progress"
    ));
    let deadline = Instant::now() + STOP_WAIT;
    while workers.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = workers.active.load(Ordering::SeqCst);
    if left > 0 {
        log.warn(&format!(
            "stopped with {left} logins still in progress (they are denied)"
        ));
    }
    std::process::exit(0);
}

/// Listen on `path`, mode 0600, in a directory of root's closed to others'
/// writes (made 0755 if missing). A socket left by a crm2fad that is gone
/// is replaced; one that answers is another crm2fad's, and left alone.
fn listen(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        fsperm::ensure_dir(dir, 0o755).map_err(|e| e.to_string())?;
    }
    fsperm::check_parent_dirs(path).map_err(|e| e.to_string())?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err("another crm2fad is listening on it".into());
            }
            std::fs::remove_file(path).map_err(|e| format!("cannot remove the old socket: {e}"))?;
        }
        Ok(_) => return Err("it exists and is not a socket".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.to_string()),
    }
    // Made 0600 from the start: no moment when another user could connect.
    // The umask goes back after: the sending program and an [sms] command
    // run with the one crm2fad was started with, as under the module.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(umask);
    bound.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A login that reads one byte: `p` is a bug (it panics), anything
    /// else is answered `ok`.
    fn echo(mut stream: UnixStream, _: &Pool, _: &mut SyslogConnection) {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).expect("a byte");
        assert_ne!(&byte, b"p", "a login's bug");
        stream.write_all(b"ok").expect("the answer");
    }

    /// Workers with `idle` on a socket in `dir`, the first thread started.
    fn start(dir: &Path, idle: Duration) -> (Arc<Workers>, PathBuf) {
        let path = dir.join("crm2fad.sock");
        let listener = UnixListener::bind(&path).expect("listen");
        let workers = Workers::new(listener, Pool::new(None), 16, idle, echo).expect("workers");
        let first = Arc::clone(&workers);
        std::thread::spawn(move || first.first());
        (workers, path)
    }

    /// What a connection that sends `byte` hears back.
    fn ask(path: &Path, byte: &[u8]) -> Vec<u8> {
        let mut c = UnixStream::connect(path).expect("connect");
        c.write_all(byte).expect("send");
        let mut heard = Vec::new();
        let _ = c.read_to_end(&mut heard);
        heard
    }

    /// Wait up to 10 s for `what` to hold.
    fn eventually(what: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !what() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    #[test]
    fn a_login_that_panics_ends_alone_and_its_thread_serves_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let (workers, path) = start(dir.path(), IDLE_EXIT);
        assert_eq!(
            ask(&path, b"p"),
            b"",
            "the panicking login's connection is closed"
        );
        assert!(
            eventually(|| workers.active.load(Ordering::SeqCst) == 0),
            "the login that panicked is no longer counted"
        );
        // The thread that took it and the one it started both wait again.
        assert!(eventually(|| workers.waiting.load(Ordering::SeqCst) == 2));
        assert_eq!(workers.threads.load(Ordering::SeqCst), 2);
        for _ in 0..3 {
            assert_eq!(ask(&path, b"o"), b"ok");
        }
        assert!(eventually(|| workers.active.load(Ordering::SeqCst) == 0));
    }

    #[test]
    fn threads_started_for_a_burst_end_when_idle_but_the_first_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (workers, path) = start(dir.path(), Duration::from_millis(300));
        // Three logins at once, each waiting for its byte: each thread
        // that takes one starts another to wait in its place.
        let mut held: Vec<UnixStream> = (0..3)
            .map(|_| UnixStream::connect(&path).expect("connect"))
            .collect();
        assert!(eventually(|| workers.active.load(Ordering::SeqCst) == 3));
        assert_eq!(workers.threads.load(Ordering::SeqCst), 4);
        for c in &mut held {
            c.write_all(b"o").unwrap();
            let mut answer = [0u8; 2];
            c.read_exact(&mut answer).unwrap();
            assert_eq!(&answer, b"ok");
        }
        assert!(
            eventually(|| workers.threads.load(Ordering::SeqCst) == 1),
            "idle threads end: {} left",
            workers.threads.load(Ordering::SeqCst)
        );
        assert_eq!(workers.waiting.load(Ordering::SeqCst), 1);
        // The one left still serves.
        assert_eq!(ask(&path, b"o"), b"ok");
    }
}
