//! A login run by crm2fad, with the PAM module as its conversation.
//!
//! The module opens crm2fad's socket (root's, in a directory of root's),
//! checks that root answers, and sends who is logging in and its module
//! arguments; crm2fad runs the same login, [`super::run`], on a store it
//! keeps open between logins ([`crate::store::pool`]), and sends back each
//! prompt and message, then the outcome. The module only converses: what
//! the person types goes to crm2fad as the answer to its prompt.
//!
//! When no crm2fad answers (no socket, none listening, its queue full, or
//! it turns the login away before accepting it: too many logins at once,
//! another version, stopping; or it sends nothing within
//! [`FIRST_FRAME_WAIT`]: stopped, stuck) the module runs the login itself.
//! crm2fad's first frame accepts the login, and it sends one before it
//! writes anything (see [`Link`]); from then on a failure denies: the login
//! is never run twice.
//!
//! Frames: a tag byte, a big-endian `u32` length, that many bytes. Every
//! buffer that may hold an answer or a message is zeroized when dropped.
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::MsgFlags;
use zeroize::Zeroizing;

use super::{run, ConvError, Conversation, ModuleArgs, Outcome, Request};
use crate::audit::{Level, Logger, SyslogConnection};
use crate::config::StoreConfig;
use crate::store::{Store, Stores, TxBody, TxKind};

/// Where crm2fad listens unless `socket=` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/crm2fa/crm2fad.sock";

/// The version of the frames below; a crm2fad of another version closes
/// the connection at once, and the module runs the login itself.
const VERSION: u8 = 2;
/// No frame is longer (a QR code drawn in text is a few kB).
const MAX_FRAME: usize = 1 << 20;
/// How long the module waits for crm2fad between two of its messages: the
/// store's busy timeout, a PostgreSQL connect timeout and a send with a
/// long `[delivery] timeout` all fit (sshd's LoginGraceTime ends a login
/// sooner).
const SERVER_WAIT: Duration = Duration::from_secs(600);
/// How long the module waits for crm2fad's first frame before it takes the
/// login back: a crm2fad that is stopped, stuck, or out of file descriptors
/// must not hold every login on the host. Room for crm2fad to look the
/// account up and reach a PostgreSQL server (its connect and first read,
/// each within the default `connect_timeout` of 3 s). A crm2fad that was
/// only slow has written nothing: the module shuts the connection down
/// first, so crm2fad can no longer send the frame that would accept the
/// login, and runs the login only if no byte of one came.
const FIRST_FRAME_WAIT: Duration = Duration::from_secs(15);
/// How long crm2fad waits for who is logging in.
const HELLO_WAIT: Duration = Duration::from_secs(5);
/// How long crm2fad waits for a person to answer a prompt.
const ANSWER_WAIT: Duration = Duration::from_secs(3600);

// Module to crm2fad.
const HELLO: u8 = b'H';
const ANSWER: u8 = b'A';
const NO_ANSWER: u8 = b'N';
const CONV_FAILED: u8 = b'X';
// crm2fad to module.
/// The login is crm2fad's from here on: sent before a write to the store
/// when no other frame went first (any frame accepts the login).
const ACCEPTED: u8 = b'K';
const PROMPT_HIDDEN: u8 = b'P';
const PROMPT_VISIBLE: u8 = b'V';
const INFO: u8 = b'I';
const ERROR: u8 = b'E';
const ESSENTIAL: u8 = b'S';
/// A log line the module's `debug` mirrors to its standard error.
const LOG_LINE: u8 = b'L';
const DONE: u8 = b'D';

const OUTCOMES: [Outcome; 6] = [
    Outcome::Success,
    Outcome::Ignore,
    Outcome::AuthErr,
    Outcome::MaxTries,
    Outcome::Unavailable,
    Outcome::UserUnknown,
];

fn put(stream: &UnixStream, tag: u8, body: &[u8]) -> io::Result<()> {
    send_all(stream, &frame(tag, body)?)
}

/// The frame of `tag` and `body`, if `body` is not too long.
fn frame(tag: u8, body: &[u8]) -> io::Result<Zeroizing<Vec<u8>>> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    let mut frame = Zeroizing::new(Vec::with_capacity(5 + body.len()));
    frame.push(tag);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    Ok(frame)
}

fn send_all(stream: &UnixStream, frame: &[u8]) -> io::Result<()> {
    // send(2) with MSG_NOSIGNAL: a PAM application (su, login) may not
    // ignore SIGPIPE, and a crm2fad gone away must not kill it.
    let mut rest: &[u8] = frame;
    while !rest.is_empty() {
        match nix::sys::socket::send(stream.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn take(mut stream: &UnixStream) -> io::Result<(u8, Zeroizing<Vec<u8>>)> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too long"));
    }
    let mut body = Zeroizing::new(vec![0u8; len]);
    stream.read_exact(&mut body)?;
    Ok((head[0], body))
}

fn text(body: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(String::from_utf8_lossy(body).into_owned())
}

/// Who is logging in, as the module sends it.
#[derive(Debug, PartialEq, Eq)]
struct Hello {
    /// The PAM process, named in crm2fad's syslog lines for the login as
    /// the module names itself (`pam_crm2fa[PID]`).
    pid: u32,
    user: String,
    service: String,
    rhost: String,
    args: Vec<String>,
}

impl Hello {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        out.extend_from_slice(&self.pid.to_be_bytes());
        let fields = [&self.user, &self.service, &self.rhost]
            .into_iter()
            .chain(&self.args);
        for s in fields {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    /// None: another version, or not a hello.
    fn decode(body: &[u8]) -> Option<Hello> {
        let (&version, rest) = body.split_first()?;
        if version != VERSION {
            return None;
        }
        let (pid, mut rest) = rest.split_first_chunk::<4>()?;
        let mut fields = vec![];
        while !rest.is_empty() {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = u32::from_be_bytes(*len) as usize;
            let field = tail.get(..len)?;
            fields.push(String::from_utf8(field.to_vec()).ok()?);
            rest = &tail[len..];
        }
        let mut fields = fields.into_iter();
        Some(Hello {
            pid: u32::from_be_bytes(*pid),
            user: fields.next()?,
            service: fields.next()?,
            rhost: fields.next()?,
            args: fields.collect(),
        })
    }
}

/// What became of a login offered to crm2fad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relayed {
    /// crm2fad ran it: its outcome.
    Done(Outcome),
    /// crm2fad did not take it (why, when worth a log line, and how loud):
    /// the module runs it itself.
    NotServed(Option<(Level, String)>),
}

/// Offer the login to the crm2fad listening on `socket`, then converse
/// for it through `conv` until it ends. `argv` are the module's arguments
/// as written on its PAM line; `req.user` the name as PAM has it. Only a
/// caller running as root offers a login: the socket is root's alone.
pub fn relay(
    socket: &Path,
    argv: &[String],
    req: &Request,
    conv: &mut dyn Conversation,
    log: &mut Logger,
) -> Relayed {
    let stream = match connect(socket) {
        Ok(s) => s,
        Err(why) => return Relayed::NotServed(why.reason()),
    };
    let hello = Hello {
        pid: std::process::id(),
        user: req.user.clone(),
        service: req.service.clone(),
        rhost: req.rhost.clone(),
        args: argv.to_vec(),
    };
    if put(&stream, HELLO, &hello.encode()).is_err() {
        return Relayed::NotServed(Some((
            Level::Info,
            format!(
                "crm2fad ({}) closed the connection before the login began",
                socket.display()
            ),
        )));
    }
    let mut begun = false;
    loop {
        if !begun && !first_byte_within(&stream, FIRST_FRAME_WAIT) {
            return take_back(&stream, socket, req, log);
        }
        let (tag, body) = match take(&stream) {
            Ok(frame) => frame,
            Err(e)
                if !begun
                    && matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                    ) =>
            {
                // Turned away before it accepted the login (too many
                // logins, another version, stopping): crm2fad has done
                // nothing for it. A close before reading the hello is a
                // reset, not an end.
                return Relayed::NotServed(Some((
                    Level::Info,
                    format!("crm2fad ({}) turned the login away", socket.display()),
                )));
            }
            Err(e) => {
                log.error(&format!(
                    "login of {} denied: crm2fad ({}) stopped answering during the login: {e}",
                    req.user,
                    socket.display()
                ));
                return Relayed::Done(Outcome::Unavailable);
            }
        };
        begun = true;
        let reply = match tag {
            ACCEPTED => None,
            PROMPT_HIDDEN => Some(conv.prompt_hidden(&text(&body))),
            PROMPT_VISIBLE => Some(conv.prompt_visible(&text(&body))),
            INFO => {
                conv.info(&text(&body));
                None
            }
            ERROR => {
                conv.error(&text(&body));
                None
            }
            ESSENTIAL => {
                conv.essential(&text(&body));
                None
            }
            LOG_LINE => {
                eprintln!("{}", text(&body).as_str());
                None
            }
            DONE => {
                let outcome = body
                    .first()
                    .and_then(|&b| OUTCOMES.get(usize::from(b)))
                    .copied();
                return Relayed::Done(outcome.unwrap_or_else(|| {
                    log.error(&format!(
                        "login of {} denied: crm2fad sent an outcome this module does not know",
                        req.user
                    ));
                    Outcome::Unavailable
                }));
            }
            _ => {
                log.error(&format!(
                    "login of {} denied: crm2fad sent a message this module does not know",
                    req.user
                ));
                return Relayed::Done(Outcome::Unavailable);
            }
        };
        let sent = match reply {
            None => Ok(()),
            Some(Ok(Some(answer))) => {
                let answer = Zeroizing::new(answer);
                put(&stream, ANSWER, answer.as_bytes())
            }
            Some(Ok(None)) => put(&stream, NO_ANSWER, &[]),
            Some(Err(ConvError)) => put(&stream, CONV_FAILED, &[]),
        };
        if let Err(e) = sent {
            log.error(&format!(
                "login of {} denied: crm2fad ({}) went away during the login: {e}",
                req.user,
                socket.display()
            ));
            return Relayed::Done(Outcome::Unavailable);
        }
    }
}

/// Whether crm2fad sent anything (or closed the connection) within `wait`.
fn first_byte_within(stream: &UnixStream, wait: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let until = std::time::Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(stream),
            PollFlags::POLLIN,
        )];
        match poll(&mut fds, timeout) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) if !left.is_zero() => {}
            // Let the read that follows say what is wrong.
            Err(_) => return true,
        }
    }
}

/// crm2fad sent nothing within [`FIRST_FRAME_WAIT`]: shut the connection
/// down, which makes every later send of crm2fad's fail (so it can no
/// longer accept the login, nor write anything for it), then look at what
/// came meanwhile. Nothing: the module runs the login. Anything: crm2fad
/// may have accepted it just before, and the login is denied.
fn take_back(stream: &UnixStream, socket: &Path, req: &Request, log: &mut Logger) -> Relayed {
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let mut byte = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    match nix::sys::socket::recv(stream.as_raw_fd(), &mut byte, flags) {
        Ok(n) if n > 0 => {
            log.error(&format!(
                "login of {} denied: crm2fad ({}) answered only as the module took the \
                 login back, after {} s",
                req.user,
                socket.display(),
                FIRST_FRAME_WAIT.as_secs()
            ));
            Relayed::Done(Outcome::Unavailable)
        }
        _ => Relayed::NotServed(Some((
            Level::Warning,
            format!(
                "crm2fad ({}) sent nothing within {} s; the module runs the login",
                socket.display(),
                FIRST_FRAME_WAIT.as_secs()
            ),
        ))),
    }
}

/// Why no crm2fad serves a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unserved {
    /// There is no socket: crm2fad is not installed or not running.
    Absent,
    /// Nobody listens (a socket left behind), or it cannot be used.
    NotRunning(String),
    /// The socket, a directory above it or the process listening is not
    /// root's: it is never used.
    Untrusted(String),
    /// It listens but takes no connection (its queue is full): stopped or
    /// stuck.
    Stalled(String),
}

impl Unserved {
    /// What a log line says, if anything, and how loud.
    fn reason(self) -> Option<(Level, String)> {
        match self {
            Unserved::Absent => None,
            Unserved::NotRunning(why) => Some((Level::Info, why)),
            Unserved::Untrusted(why) | Unserved::Stalled(why) => Some((Level::Warning, why)),
        }
    }
}

/// Whether a crm2fad of root's answers on `socket` (for `doctor`).
pub fn probe(socket: &Path) -> Result<(), Unserved> {
    connect(socket).map(drop)
}

/// Connect to crm2fad if one listens on `socket` and it is root's: the
/// socket, the directories above it and the process that answers.
fn connect(socket: &Path) -> Result<UnixStream, Unserved> {
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Unserved::Absent),
        Err(e) => {
            return Err(Unserved::NotRunning(format!(
                "cannot use {}: {e}",
                socket.display()
            )))
        }
    };
    let untrusted = |why: String| {
        Unserved::Untrusted(format!(
            "crm2fad's socket {} is not used: {why}",
            socket.display()
        ))
    };
    if !meta.file_type().is_socket() || meta.uid() != 0 {
        return Err(untrusted("it is not a socket of root's".into()));
    }
    if let Err(e) = crate::fsperm::check_parent_dirs(socket) {
        return Err(untrusted(e.to_string()));
    }
    let stream = connect_now(socket).map_err(|e| match e.raw_os_error() {
        // Its queue of connections not yet taken is full (it is stopped
        // or stuck): a blocking connect would wait for room for good.
        Some(libc::EAGAIN) => Unserved::Stalled(format!(
            "crm2fad ({}) is not taking logins (its queue is full); the module runs the login",
            socket.display()
        )),
        _ => Unserved::NotRunning(format!(
            "crm2fad is not running ({}: {e}); the module runs the login",
            socket.display()
        )),
    })?;
    match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(cred) if cred.uid() == 0 => {}
        Ok(cred) => {
            return Err(untrusted(format!(
                "the process listening runs as uid {}, not root",
                cred.uid()
            )))
        }
        Err(e) => return Err(untrusted(format!("cannot tell who listens: {e}"))),
    }
    let timeouts = stream
        .set_read_timeout(Some(SERVER_WAIT))
        .and_then(|()| stream.set_write_timeout(Some(SERVER_WAIT)));
    timeouts.map_err(|e| Unserved::NotRunning(format!("cannot use {}: {e}", socket.display())))?;
    Ok(stream)
}

/// Connect to `socket` without waiting for room in its queue (`EAGAIN`
/// when there is none); the stream returned blocks.
fn connect_now(socket: &Path) -> io::Result<UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(socket)?;
    nix::sys::socket::connect(fd.as_raw_fd(), &addr)?;
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// crm2fad's end of a login's connection.
///
/// The login becomes crm2fad's (the module will not run it itself) with the
/// first frame crm2fad sends, or, if a write to the store comes before any
/// frame, with an [`ACCEPTED`] sent just before that write
/// ([`AcceptBeforeWrite`]). Until then crm2fad has only read: if it fails,
/// the module may run the login itself, and nothing is done twice. A login
/// that prompts, as most do, so costs the module no wake-up of its own for
/// the acceptance.
struct Link {
    stream: UnixStream,
    accepted: AtomicBool,
    /// A send failed, perhaps halfway through a frame: nothing more goes
    /// out (the module would read the rest as frames of their own).
    broken: AtomicBool,
}

impl Link {
    fn new(stream: UnixStream) -> Link {
        Link {
            stream,
            accepted: AtomicBool::new(false),
            broken: AtomicBool::new(false),
        }
    }

    /// Send a frame; the login is accepted once one went out whole.
    fn send(&self, tag: u8, body: &[u8]) -> io::Result<()> {
        let frame = frame(tag, body)?;
        if self.broken.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if let Err(e) = send_all(&self.stream, &frame) {
            self.broken.store(true, Ordering::SeqCst);
            return Err(e);
        }
        self.accepted.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Tell the module the login is crm2fad's, unless a frame already did.
    fn accept(&self) -> io::Result<()> {
        if self.accepted.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.send(ACCEPTED, &[])
    }
}

/// The module's conversation, over the socket.
struct Remote<'a> {
    link: &'a Link,
}

impl Remote<'_> {
    fn ask(&mut self, tag: u8, msg: &str) -> Result<Option<String>, ConvError> {
        self.link.send(tag, msg.as_bytes()).map_err(|_| ConvError)?;
        match take(&self.link.stream) {
            Ok((ANSWER, body)) => Ok(Some(text(&body).to_string())),
            Ok((NO_ANSWER, _)) => Ok(None),
            _ => Err(ConvError),
        }
    }

    fn say(&mut self, tag: u8, msg: &str) {
        let _ = self.link.send(tag, msg.as_bytes());
    }
}

impl Conversation for Remote<'_> {
    fn prompt_hidden(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
        self.ask(PROMPT_HIDDEN, msg)
    }
    fn prompt_visible(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
        self.ask(PROMPT_VISIBLE, msg)
    }
    fn info(&mut self, msg: &str) {
        self.say(INFO, msg)
    }
    fn error(&mut self, msg: &str) {
        self.say(ERROR, msg)
    }
    fn essential(&mut self, msg: &str) {
        self.say(ESSENTIAL, msg)
    }
}

/// The stores of a login crm2fad runs: before a write transaction, the
/// module is told that the login is crm2fad's.
struct AcceptBeforeWrite<'a> {
    stores: &'a dyn Stores,
    link: &'a Link,
}

impl Stores for AcceptBeforeWrite<'_> {
    fn keeps_open(&self) -> bool {
        self.stores.keeps_open()
    }

    fn config(&self, path: &Path) -> crate::Result<crate::config::Config> {
        self.stores.config(path)
    }

    fn open(&self, cfg: &StoreConfig) -> crate::Result<Box<dyn Store + '_>> {
        Ok(Box::new(Accepting {
            store: self.stores.open(cfg)?,
            link: self.link,
        }))
    }
}

struct Accepting<'a> {
    store: Box<dyn Store + 'a>,
    link: &'a Link,
}

impl Store for Accepting<'_> {
    fn location(&self) -> &str {
        self.store.location()
    }

    fn still_current(&mut self) -> crate::Result<bool> {
        self.store.still_current()
    }

    fn transaction(&mut self, kind: TxKind, body: &mut TxBody<'_>) -> crate::Result<()> {
        if matches!(kind, TxKind::Write(_)) {
            self.link.accept().map_err(|e| {
                crate::Error::store(
                    self.store.location(),
                    format!("not written: the PAM module went away ({e})"),
                )
            })?;
        }
        self.store.transaction(kind, body)
    }

    fn check_integrity(&mut self) -> crate::Result<Vec<String>> {
        self.store.check_integrity()
    }

    fn read_ahead(&mut self, reads: &[crate::store::Read<'_>]) {
        self.store.read_ahead(reads);
    }

    fn set_aside(&mut self) {
        self.store.set_aside();
    }

    fn login_read_next(&mut self) {
        self.store.login_read_next();
    }
}

/// Serve one connection to crm2fad: a login offered by a PAM module
/// running as root, run with a store from `stores`, its syslog lines
/// written through `syslog` (kept by the caller for its next login).
/// Anyone else, or a module of another version, is closed on at once.
/// Returns the outcome, if a login ran.
pub fn serve(
    stream: UnixStream,
    stores: &dyn Stores,
    syslog: &mut SyslogConnection,
) -> Option<Outcome> {
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
    if !peer.is_ok_and(|c| c.uid() == 0) {
        return None;
    }
    stream.set_read_timeout(Some(HELLO_WAIT)).ok()?;
    stream.set_write_timeout(Some(SERVER_WAIT)).ok()?;
    let hello = match take(&stream) {
        Ok((HELLO, body)) => Hello::decode(&body)?,
        _ => return None,
    };
    stream.set_read_timeout(Some(ANSWER_WAIT)).ok()?;
    let args = ModuleArgs::parse(hello.args.iter().map(String::as_str));
    let req = Request {
        user: hello.user,
        service: hello.service,
        rhost: hello.rhost,
        clock: Arc::new(crate::unix_now),
        caller_uid: 0,
    };
    // Shared with the debug mirror, which sends its log lines as frames.
    let link = Arc::new(Link::new(stream));
    // The login's syslog lines are held back while it runs (released
    // before it waits on the user) and written after the outcome is sent.
    let mut log = Logger::with_pid("pam_crm2fa", args.debug, hello.pid)
        .through(std::mem::take(syslog))
        .holding();
    if args.debug {
        let mirror = Arc::clone(&link);
        log = log.mirrored_to(move |line| {
            let _ = mirror.send(LOG_LINE, line.as_bytes());
        });
    }
    let outcome = run(
        &args,
        &req,
        &mut Remote { link: &link },
        &mut log,
        &AcceptBeforeWrite {
            stores,
            link: &link,
        },
    );
    let code = OUTCOMES.iter().position(|&o| o == outcome).unwrap_or(4) as u8;
    let _ = link.send(DONE, &[code]);
    *syslog = log.into_connection();
    Some(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_reads_back_as_written_and_another_version_is_refused() {
        let h = Hello {
            pid: 4321,
            user: "alice".into(),
            service: "sshd".into(),
            rhost: "".into(),
            args: vec!["config=/x.toml".into(), "debug".into()],
        };
        let mut bytes = h.encode();
        assert_eq!(Hello::decode(&bytes), Some(h));
        bytes[0] = VERSION + 1;
        assert_eq!(Hello::decode(&bytes), None);
        assert_eq!(
            Hello::decode(&[VERSION, 0, 0, 0, 1, 0, 0, 0, 9, b'a']),
            None
        );
        assert_eq!(Hello::decode(&[VERSION, 0, 0]), None);
    }

    /// A conversation that answers every prompt with `answer`.
    struct Answers(&'static str, usize);

    impl Conversation for Answers {
        fn prompt_hidden(&mut self, _: &str) -> Result<Option<String>, ConvError> {
            self.1 += 1;
            Ok(Some(self.0.into()))
        }
        fn prompt_visible(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
            self.prompt_hidden(msg)
        }
        fn info(&mut self, _: &str) {}
        fn error(&mut self, _: &str) {}
    }

    /// alice logging in over ssh, as root's sshd offers it.
    fn alice() -> Request {
        Request {
            user: "alice".into(),
            service: "sshd".into(),
            rhost: String::new(),
            clock: Arc::new(|| 0),
            caller_uid: 0,
        }
    }

    /// Offer a login to a listener that does `serve` with its connection.
    fn offer(serve: impl FnOnce(UnixStream) + Send + 'static) -> (Relayed, usize) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("crm2fad.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || serve(listener.accept().unwrap().0));
        let req = alice();
        let mut conv = Answers("123456", 0);
        let mut log = Logger::new("crm2fa-test", false);
        let relayed = relay(&socket, &[], &req, &mut conv, &mut log);
        server.join().unwrap();
        (relayed, conv.1)
    }

    #[test]
    fn a_login_turned_away_before_it_began_runs_in_the_module() {
        if !nix::unistd::geteuid().is_root() {
            return; // the socket must be root's
        }
        // Closed unread (too many logins at once): a reset, not an end.
        let (r, asked) = offer(|s| {
            std::thread::sleep(Duration::from_millis(50));
            drop(s)
        });
        assert!(matches!(r, Relayed::NotServed(Some(_))), "{r:?}");
        assert_eq!(asked, 0);
        // Read, then closed (another version).
        let (r, _) = offer(|s| {
            take(&s).unwrap();
        });
        assert!(matches!(r, Relayed::NotServed(Some(_))), "{r:?}");
    }

    #[test]
    fn a_crm2fad_whose_queue_is_full_leaves_the_login_to_the_module_at_once() {
        if !nix::unistd::geteuid().is_root() {
            return; // the socket must be root's
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("crm2fad.sock");
        // A crm2fad that takes no connection, its queue (backlog 0) filled
        // by one that waits there.
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(0).unwrap()).unwrap();
        let _waiting = connect_now(&socket).unwrap();
        let req = alice();
        let mut conv = Answers("123456", 0);
        let mut log = Logger::new("crm2fa-test", false);
        let started = std::time::Instant::now();
        let relayed = relay(&socket, &[], &req, &mut conv, &mut log);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "it waited for room"
        );
        match relayed {
            Relayed::NotServed(Some((_, why))) => assert!(why.contains("queue is full"), "{why}"),
            r => panic!("{r:?}"),
        }
        assert_eq!(conv.1, 0);
    }

    #[test]
    fn crm2fad_gone_after_its_first_prompt_denies() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let (r, asked) = offer(|s| {
            take(&s).unwrap();
            put(&s, PROMPT_HIDDEN, b"Verification code: ").unwrap();
            let (tag, answer) = take(&s).unwrap();
            assert_eq!((tag, answer.as_slice()), (ANSWER, &b"123456"[..]));
        });
        assert_eq!(r, Relayed::Done(Outcome::Unavailable));
        assert_eq!(asked, 1);
        // Gone once it accepted the login, before any prompt (a send under
        // way, say): denied, never run again in the module.
        let (r, asked) = offer(|s| {
            take(&s).unwrap();
            put(&s, ACCEPTED, &[]).unwrap();
        });
        assert_eq!(r, Relayed::Done(Outcome::Unavailable));
        assert_eq!(asked, 0);
        // And an outcome it sends is the login's.
        let (r, _) = offer(|s| {
            take(&s).unwrap();
            put(&s, DONE, &[3]).unwrap();
        });
        assert_eq!(r, Relayed::Done(Outcome::MaxTries));
    }

    #[test]
    fn crm2fad_sends_nothing_before_the_first_frame_of_the_login() {
        if !nix::unistd::geteuid().is_root() {
            return; // serve() answers root only
        }
        // A login that ends while reading (no configuration there): its
        // outcome is the first frame, with no ACCEPTED before it.
        let (module, ours) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            serve(
                ours,
                &crate::store::Fresh(None),
                &mut SyslogConnection::default(),
            )
        });
        let hello = Hello {
            pid: 1,
            user: "alice".into(),
            service: "sshd".into(),
            rhost: String::new(),
            args: vec!["config=/nonexistent/crm2fa.toml".into()],
        };
        put(&module, HELLO, &hello.encode()).unwrap();
        let (tag, body) = take(&module).unwrap();
        let unavailable = OUTCOMES
            .iter()
            .position(|&o| o == Outcome::Unavailable)
            .unwrap() as u8;
        assert_eq!((tag, body.as_slice()), (DONE, &[unavailable][..]));
        assert_eq!(server.join().unwrap(), Some(Outcome::Unavailable));
    }

    /// A link to a module (the other end, not blocking), and a store.
    fn linked() -> (Link, UnixStream, tempfile::TempDir, crate::config::Config) {
        let (ours, module) = UnixStream::pair().unwrap();
        module.set_nonblocking(true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config::parse(
            "[store]\npath = \"db\"\nkey_file = \"key\"\n",
            &dir.path().join("crm2fa.toml"),
        )
        .unwrap();
        drop(crate::store::create(&cfg.store, None).unwrap());
        (Link::new(ours), module, dir, cfg)
    }

    /// The frames the module has been sent so far, by tag.
    fn sent(module: &UnixStream) -> Vec<u8> {
        let mut tags = vec![];
        while let Ok((tag, _)) = take(module) {
            tags.push(tag);
        }
        tags
    }

    #[test]
    fn a_login_is_accepted_before_its_first_write_or_with_its_first_frame() {
        use crate::store::Durability;
        let (link, module, _dir, cfg) = linked();
        let stores = AcceptBeforeWrite {
            stores: &crate::store::Fresh(None),
            link: &link,
        };
        let mut store = stores.open(&cfg.store).unwrap();
        // Reads tell the module nothing: crm2fad failing now leaves the
        // login to the module, with nothing done. Nor does a frame that
        // could not be sent.
        assert_eq!(store.user("alice").unwrap(), None);
        assert!(link.send(INFO, &vec![b'x'; MAX_FRAME + 1]).is_err());
        assert_eq!(sent(&module), b"");
        // A write is told first, once.
        let salt = [0u8; 16];
        store
            .write(Durability::Full, |tx| tx.insert_user("alice", &salt, 1))
            .unwrap();
        assert_eq!(sent(&module), vec![ACCEPTED]);
        store
            .write(Durability::Full, |tx| tx.insert_user("bob", &salt, 1))
            .unwrap();
        assert_eq!(sent(&module), b"");

        // A frame first accepts the login by itself.
        let (link, module, _dir, cfg) = linked();
        let stores = AcceptBeforeWrite {
            stores: &crate::store::Fresh(None),
            link: &link,
        };
        Remote { link: &link }.info("hello");
        let mut store = stores.open(&cfg.store).unwrap();
        store
            .write(Durability::Full, |tx| tx.insert_user("alice", &salt, 1))
            .unwrap();
        assert_eq!(sent(&module), vec![INFO]);

        // The module gone: nothing is written.
        let (link, module, _dir, cfg) = linked();
        drop(module);
        let stores = AcceptBeforeWrite {
            stores: &crate::store::Fresh(None),
            link: &link,
        };
        let mut store = stores.open(&cfg.store).unwrap();
        assert!(store
            .write(Durability::Full, |tx| tx.insert_user("alice", &salt, 1))
            .is_err());
        assert_eq!(store.user("alice").unwrap(), None);
    }

    #[test]
    fn frames_read_back_and_an_oversized_one_is_refused() {
        use std::io::Write;
        let (mut a, b) = UnixStream::pair().unwrap();
        put(&a, INFO, b"hello").unwrap();
        let (tag, body) = take(&b).unwrap();
        assert_eq!((tag, body.as_slice()), (INFO, &b"hello"[..]));
        let mut head = vec![INFO];
        head.extend_from_slice(&((MAX_FRAME + 1) as u32).to_be_bytes());
        a.write_all(&head).unwrap();
        assert_eq!(take(&b).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(put(&a, INFO, &vec![0; MAX_FRAME + 1]).is_err());
    }
}
