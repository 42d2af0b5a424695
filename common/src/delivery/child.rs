//! Running a program that sends a message, the one way both senders do it:
//! the PAM module and `crm2fa-admin` run `crm2fa-send` ([`super::Program`]),
//! and `crm2fa-send` runs an `[sms] command`.
//!
//! No shell; PATH alone for environment; `/` as working directory; the
//! input written as the program takes it, then its end; standard error
//! read as it comes, the
//! first 4 kB kept; a deadline; and nothing it started left running after
//! a send that failed or took too long. When the caller's effective uid is
//! 0 it runs with every uid and gid 0 and no supplementary groups, whoever
//! the real user is (a setuid caller: su, polkit's helpers).
//!
//! A caller that ignores SIGCHLD (or sets `SA_NOCLDWAIT`) has its children
//! reaped by the kernel, and the program's exit status would be lost: a
//! message handed over would read as failed. While a program runs, such a
//! caller's SIGCHLD is set to its default, as pam_unix does around its
//! helper, then put back (a handler the caller set is left alone).
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ChildStderr, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{self, FcntlArg, OFlag};
use nix::sys::signal::{self, Signal};
use nix::sys::socket::{self, MsgFlags};
use nix::sys::wait::{self, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The PATH the program gets (and nothing else of the environment).
pub const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// How long standard error is still read after a failed program ended, for
/// its first line: a process that left the group may hold it open.
const LAST_WORDS: Duration = Duration::from_millis(500);

/// The process group the program runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// One of its own, killed whole when the send fails or times out.
    Own,
    /// The caller's, which the caller leads: `crm2fa-send` run by the
    /// module, which kills that group whole at its own deadline and when
    /// the send failed, so a command started there stays in it. At the
    /// deadline the program and every other process of the group are
    /// killed here (all but the caller).
    Callers,
}

/// What the program's standard input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    /// A socket, written with MSG_NOSIGNAL: a program that ends before it
    /// read everything raises no SIGPIPE in the caller (su, login and other
    /// PAM applications do not ignore it). A program cannot open it again
    /// by name (`/dev/stdin`): it reads its standard input as it is.
    Socket,
    /// A pipe, which a program may also open as `/dev/stdin`: only for a
    /// caller that ignores SIGPIPE, as every Rust program does.
    Pipe,
}

/// What to run.
#[derive(Debug)]
pub struct Job<'a> {
    /// The program, by absolute path.
    pub program: &'a Path,
    /// Its name as it sees it (`argv[0]`); the path if `None`.
    pub arg0: Option<&'a OsStr>,
    /// Its arguments.
    pub args: &'a [&'a OsStr],
    /// What it reads on standard input, then the input's end. Written as
    /// the program takes it, never waiting for it to.
    pub input: &'a [u8],
    /// What its standard input is.
    pub stdin: Stdin,
    /// How long it may take.
    pub timeout: Duration,
    /// Its process group.
    pub group: Group,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it (this one, if known).
    Killed(Option<i32>),
    /// It had not finished at the deadline and was stopped.
    TimedOut,
}

impl Ended {
    /// It did not end by itself (stopped at the deadline, or killed): what
    /// it did before, such as handing a message over, is not known.
    pub fn cut_short(self) -> bool {
        matches!(self, Ended::TimedOut | Ended::Killed(_))
    }
}

/// How it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// How it ended.
    pub ended: Ended,
    /// The first line it wrote to standard error that is not blank,
    /// trimmed, when it failed.
    pub said: Option<String>,
}

impl Outcome {
    /// It exited 0: the message was handed over.
    pub fn sent(&self) -> bool {
        self.ended == Ended::Exited(0)
    }
}

/// Why it could not be run, or not waited for.
#[derive(Debug)]
pub enum RunError {
    /// It could not be started.
    Start(std::io::Error),
    /// Waiting for it failed. It was killed, unless it had been reaped
    /// already (a caller that ignores SIGCHLD): its pid may then be
    /// another's.
    Wait(std::io::Error),
}

/// Run `job` to its end or its deadline.
pub fn run(job: &Job<'_>) -> Result<Outcome, RunError> {
    let _kept = ExitStatusKept::new();
    let mut command = Command::new(job.program);
    if let Some(arg0) = job.arg0 {
        command.arg0(arg0);
    }
    command
        .args(job.args)
        .env_clear()
        .env("PATH", PATH)
        .current_dir("/")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if job.group == Group::Own {
        command.process_group(0);
    }
    if nix::unistd::geteuid().is_root() {
        // Under a setuid caller the real ids are the user's: the user could
        // stop or kill the program mid-send, and a shell would drop root.
        // Root's ids only, no supplementary groups (which setting the uid
        // drops).
        command.uid(0).gid(0);
    }
    let ours = match job.stdin {
        Stdin::Socket => {
            let (ours, theirs) = UnixStream::pair().map_err(RunError::Start)?;
            ours.set_nonblocking(true).map_err(RunError::Start)?;
            command.stdin(Stdio::from(OwnedFd::from(theirs)));
            Some(InputEnd::Socket(ours))
        }
        Stdin::Pipe => {
            command.stdin(Stdio::piped());
            None
        }
    };
    let mut child = command.spawn().map_err(RunError::Start)?;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let mut said = ErrorOutput::new(child.stderr.take());
    let ours = ours.or_else(|| nonblocking(child.stdin.take()?).map(InputEnd::Pipe));
    let mut input = Input {
        end: ours,
        rest: job.input,
    };
    input.push();
    let deadline = Instant::now() + job.timeout;
    // Waited for without reaping it: until it is reaped its pid, and so its
    // process group, cannot be another's.
    let ended = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    let status = loop {
        said.read_available();
        input.push();
        match wait::waitid(Id::Pid(pid), ended) {
            Ok(WaitStatus::StillAlive) if Instant::now() >= deadline => {
                stop(job.group, pid);
                let _ = child.wait();
                return Ok(Outcome {
                    ended: Ended::TimedOut,
                    said: None,
                });
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(status) => break status,
            Err(e) => {
                if e != Errno::ECHILD {
                    stop(job.group, pid);
                }
                let _ = child.wait();
                return Err(RunError::Wait(e.into()));
            }
        }
    };
    let ended = match status {
        WaitStatus::Exited(_, code) => Ended::Exited(code),
        WaitStatus::Signaled(_, sig, _) => Ended::Killed(Some(sig as i32)),
        _ => Ended::Killed(None),
    };
    if ended != Ended::Exited(0) && job.group == Group::Own {
        // Whatever it left behind must not send the message later (a code
        // is withdrawn when its send failed).
        let _ = signal::killpg(pid, Signal::SIGKILL);
    }
    drop(input);
    child.wait().map_err(RunError::Wait)?;
    if ended == Ended::Exited(0) {
        return Ok(Outcome { ended, said: None });
    }
    let until = deadline.min(Instant::now() + LAST_WORDS);
    while !said.has_first_line() && said.read_available() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let said = String::from_utf8_lossy(&said.kept)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string);
    Ok(Outcome { ended, said })
}

/// While one exists, the exit status of this process's children is kept
/// for it to read: a SIGCHLD that the caller ignores (or whose
/// `SA_NOCLDWAIT` has the kernel reap them) is set to its default, and put
/// back when the last one ends. Counted, for programs run at once by
/// several threads.
struct ExitStatusKept;

/// How many [`ExitStatusKept`] there are, and the caller's SIGCHLD action
/// to put back after the last (`None`: nothing was changed).
static KEPT: Mutex<(usize, Option<libc::sigaction>)> = Mutex::new((0, None));

impl ExitStatusKept {
    fn new() -> ExitStatusKept {
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        if kept.0 == 0 {
            kept.1 = match sigchld_action() {
                Some(old)
                    if (old.sa_sigaction == libc::SIG_IGN
                        || old.sa_flags & libc::SA_NOCLDWAIT != 0)
                        && set_sigchld(&default_action()) =>
                {
                    Some(old)
                }
                _ => None,
            };
        }
        kept.0 += 1;
        ExitStatusKept
    }
}

impl Drop for ExitStatusKept {
    fn drop(&mut self) {
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        kept.0 -= 1;
        if kept.0 == 0 {
            if let Some(old) = kept.1.take() {
                set_sigchld(&old);
            }
        }
    }
}

/// SIGCHLD's default action: SIG_DFL, no flags, an empty mask.
fn default_action() -> libc::sigaction {
    #[allow(unsafe_code)]
    // SAFETY: `sigaction` is a plain C struct; all zeroes is SIG_DFL (0)
    // with no flags and an empty mask.
    unsafe {
        std::mem::zeroed()
    }
}

/// The process's SIGCHLD action, read without changing it.
fn sigchld_action() -> Option<libc::sigaction> {
    let mut old = default_action();
    #[allow(unsafe_code)]
    // SAFETY: with a null new action, sigaction(2) only writes the current
    // one into `old`, a valid `sigaction`.
    let read = unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) };
    (read == 0).then_some(old)
}

/// Set the process's SIGCHLD action to `action`; true if it was.
fn set_sigchld(action: &libc::sigaction) -> bool {
    #[allow(unsafe_code)]
    // SAFETY: `action` is a valid `sigaction`, either the default or one
    // that sigaction(2) itself returned; the old one is not asked for.
    let set = unsafe { libc::sigaction(libc::SIGCHLD, action, std::ptr::null_mut()) };
    set == 0
}

/// The caller's end of the program's standard input.
enum InputEnd {
    Socket(UnixStream),
    Pipe(std::fs::File),
}

/// The input not yet written, and where it goes until all of it is.
struct Input<'a> {
    /// `None` once all is written (the end closed, so the program reads
    /// the input's end), or when the program no longer reads.
    end: Option<InputEnd>,
    rest: &'a [u8],
}

impl Input<'_> {
    /// Write what the program takes now, without waiting.
    fn push(&mut self) {
        while let Some(end) = &mut self.end {
            if self.rest.is_empty() {
                self.end = None;
                return;
            }
            let wrote = match end {
                InputEnd::Socket(s) => socket::send(
                    s.as_raw_fd(),
                    self.rest,
                    MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                )
                .map_err(std::io::Error::from),
                InputEnd::Pipe(p) => p.write(self.rest),
            };
            match wrote {
                Ok(n) => self.rest = &self.rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // It closed its input or ended (EPIPE …): its status says
                // how it went.
                Err(_) => self.end = None,
            }
        }
    }
}

/// Our end of one of the program's pipes, reads and writes on it never
/// waiting; `None` if it cannot be made so.
fn nonblocking(pipe: impl Into<OwnedFd>) -> Option<std::fs::File> {
    let fd: OwnedFd = pipe.into();
    fcntl::fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).ok()?;
    Some(fd.into())
}

/// Kill the program and, in its own group, all of it; in the caller's
/// group every other process of it.
fn stop(group: Group, pid: Pid) {
    match group {
        Group::Own => {
            let _ = signal::killpg(pid, Signal::SIGKILL);
        }
        Group::Callers => {
            let _ = signal::kill(pid, Signal::SIGKILL);
            kill_the_rest_of_the_group();
        }
    }
}

/// Kill every other process of this process's group (what the program
/// started), until none is left or a second has passed.
fn kill_the_rest_of_the_group() {
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        let others = group_members(nix::unistd::getpgrp().as_raw());
        if others.is_empty() || Instant::now() >= until {
            return;
        }
        for pid in others {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The live processes of the process group `group` but this one, from
/// `/proc` (none where it cannot be read).
fn group_members(group: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid pgrp …: comm may hold anything but the
            // last ')'.
            let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
            let state = fields.next()?;
            let pgrp: i32 = fields.nth(1)?.parse().ok()?;
            (pgrp == group && pid != me && !matches!(state, "Z" | "X"))
                .then(|| i32::try_from(pid).ok())
                .flatten()
        })
        .collect()
}

/// The first 4 kB the program writes to its standard error, read without
/// blocking while it runs: a program that writes much never stalls on a
/// full pipe, and one whose child keeps the pipe open never holds up the
/// caller past its deadline.
struct ErrorOutput {
    /// The pipe, until its end (`None` then, or if it could not be made
    /// non-blocking).
    pipe: Option<std::fs::File>,
    /// What was read, up to [`ErrorOutput::KEPT`] bytes.
    kept: Vec<u8>,
}

impl ErrorOutput {
    /// The most kept.
    const KEPT: usize = 4096;

    fn new(pipe: Option<ChildStderr>) -> ErrorOutput {
        ErrorOutput {
            pipe: pipe.and_then(nonblocking),
            kept: Vec::new(),
        }
    }

    /// Read what is there now; `false` once the pipe has ended.
    fn read_available(&mut self) -> bool {
        let Some(pipe) = self.pipe.as_mut() else {
            return false;
        };
        let mut buf = [0u8; 1024];
        // A bound, so that a program that writes without pause cannot keep
        // the caller from its deadline: the rest is read next time.
        for _ in 0..64 {
            match pipe.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let room = Self::KEPT - self.kept.len();
                    self.kept.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // Its end, or an error: nothing more to read.
                Ok(_) | Err(_) => {
                    self.pipe = None;
                    return false;
                }
            }
        }
        true
    }

    /// Is the first line that is not blank, the one that says why, all
    /// there?
    fn has_first_line(&self) -> bool {
        let mut lines = self.kept.split(|&b| b == b'\n').rev();
        // The last piece is the one after the last newline: not all there.
        lines.next();
        self.kept.len() == Self::KEPT
            || lines.any(|line| line.iter().any(|b| !b.is_ascii_whitespace()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `script` by `sh` with `input` on a socket.
    fn sh(script: &str, input: &[u8], timeout: Duration) -> Outcome {
        sh_with(script, input, Stdin::Socket, timeout)
    }

    /// Run `script` by `sh` with `input` on `stdin`.
    fn sh_with(script: &str, input: &[u8], stdin: Stdin, timeout: Duration) -> Outcome {
        let sh = ["/usr/bin/sh", "/bin/sh"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("sh");
        run(&Job {
            program: sh,
            arg0: None,
            args: &["-c".as_ref(), script.as_ref()],
            input,
            stdin,
            timeout,
            group: Group::Own,
        })
        .unwrap()
    }

    #[test]
    fn a_program_that_reads_no_input_is_still_stopped_at_the_deadline() {
        // Far more than a socket holds: a write that waited for the program
        // to read would wait for its end, past the deadline.
        let input = vec![b'x'; 8 << 20];
        let started = Instant::now();
        let out = sh("exec sleep 30", &input, Duration::from_secs(1));
        assert_eq!(out.ended, Ended::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(10), "{out:?}");
    }

    #[test]
    fn the_input_arrives_whole_then_its_end() {
        let out = sh(
            r#"test "$(cat)" = "one line" && exit 0; echo "got other input" >&2; exit 1"#,
            b"one line",
            Duration::from_secs(10),
        );
        assert!(out.sent(), "{out:?}");
    }

    #[test]
    fn an_input_larger_than_the_buffer_arrives_whole_to_a_slow_reader() {
        let input = vec![b'x'; 4 << 20];
        for stdin in [Stdin::Socket, Stdin::Pipe] {
            let out = sh_with(
                "sleep 0.3; test \"$(wc -c)\" -eq 4194304",
                &input,
                stdin,
                Duration::from_secs(20),
            );
            assert!(out.sent(), "{stdin:?}: {out:?}");
        }
    }

    #[test]
    fn on_a_pipe_the_input_can_be_opened_as_dev_stdin() {
        let out = sh_with(
            r#"test "$(cat /dev/stdin)" = hello"#,
            b"hello",
            Stdin::Pipe,
            Duration::from_secs(10),
        );
        assert!(out.sent(), "{out:?}");
    }

    #[test]
    fn the_reason_is_the_first_line_of_standard_error_that_is_not_blank() {
        let out = sh(
            r#"printf '\n   \n  modem refused  \nmore\n' >&2; exit 3"#,
            b"",
            Duration::from_secs(10),
        );
        assert_eq!(
            out,
            Outcome {
                ended: Ended::Exited(3),
                said: Some("modem refused".into()),
            }
        );
        let out = sh("kill -9 $$", b"", Duration::from_secs(10));
        assert_eq!(out.ended, Ended::Killed(Some(9)));
        assert_eq!(out.said, None);
    }
}
