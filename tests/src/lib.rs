//! Test harness for crm2fa end-to-end tests through real libpam.
//!
//! Every test builds its own [`Sandbox`] in a temporary directory:
//!
//! - `crm2fa.toml` (mode 0600) with a relative store and key file,
//!   initialised with `crm2fa-admin init`;
//! - a pam_wrapper service directory holding the PAM stack under test
//!   (`pam_matrix` for the password, then `pam_crm2fa.so … debug`);
//! - a pam_matrix password database and nss_wrapper `passwd`/`group` files,
//!   so test users exist for the module and the CLI without touching `/etc`.
//!
//! Logins run `pamtester SERVICE USER authenticate` with `LD_PRELOAD` of
//! pam_wrapper and nss_wrapper, answers fed on stdin; [`LoginOptions`] adds
//! another operation, a wrapper command (`nsenter …`), libraries to preload
//! first (libfaketime) and more environment. The process's stdout
//! and stderr go to one file, unbuffered (libstdbuf), so the transcript
//! ([`LoginResult::output`]) keeps the order in which prompts, messages and
//! debug lines were written:
//! `misc_conv` writes prompts and `PAM_ERROR_MSG` to stderr, `PAM_TEXT_INFO`
//! to stdout; the module's `debug` lines go to stderr prefixed `pam_crm2fa`;
//! pamtester ends with `pamtester: successfully authenticated` or
//! `pamtester: <pam_strerror of the result>`.
//!
//! Set `CRM2FA_TEST_VERBOSE=1` (with `--nocapture`) to print every login's
//! transcript.
//!
//! The module and the CLI are taken from the cargo target directory the test
//! binary was built in (normally `<workspace>/target/debug`); build them first
//! with `cargo build --workspace`.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;

pub mod limits;
pub mod pg;
pub mod sinks;

/// pam_matrix, the password step of every test stack.
pub const PAM_MATRIX: &str = "/usr/lib/x86_64-linux-gnu/pam_wrapper/pam_matrix.so";
/// Service name used by every sandbox.
pub const SERVICE: &str = "crm2fa-test";
/// The module's code prompt.
pub const CODE_PROMPT: &str = "Verification code: ";
/// The module's message for a wrong code.
pub const INVALID_CODE: &str = "Invalid verification code.";
/// The final prompt after backup codes were shown at activation.
pub const SAVED_PROMPT: &str = "Press Enter when you have saved them: ";
/// pam_matrix's password prompt: a login waiting here has not reached the module.
pub const PASSWORD_PROMPT: &str = "Password: ";
/// Default TOTP period of the config (`[totp] period`).
pub const PERIOD: u64 = 30;
/// The `[policy]` section of [`Sandbox::new`].
pub const OPT_IN: &str = "[policy]\nenforce = \"opt-in\"\n";

/// Upper bound for one pamtester or crm2fa-admin run.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Artifacts

/// Directory holding the workspace's built artifacts for the profile the
/// tests were built with: the test binary lives in `<dir>/deps/`.
pub fn artifact_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(exe) = std::env::current_exe() {
            if let Some(deps) = exe.parent() {
                if deps.file_name().is_some_and(|n| n == "deps") {
                    if let Some(dir) = deps.parent() {
                        return dir.to_path_buf();
                    }
                }
            }
        }
        let workspace = workspace_dir();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(t) => {
                let t = PathBuf::from(t);
                if t.is_absolute() {
                    t
                } else {
                    workspace.join(t)
                }
            }
            None => workspace.join("target"),
        };
        target.join("debug")
    })
    .clone()
}

/// The workspace root (parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

fn artifact(name: &str) -> PathBuf {
    let path = artifact_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` (in {}) before the end-to-end tests",
        path.display(),
        workspace_dir().display()
    );
    path
}

/// Absolute path of the built PAM module.
pub fn module_path() -> PathBuf {
    artifact("libpam_crm2fa.so")
}

/// Absolute path of the built CLI.
pub fn admin_path() -> PathBuf {
    artifact("crm2fa-admin")
}

/// Absolute path of the built login service.
pub fn daemon_path() -> PathBuf {
    artifact("crm2fad")
}

// ---------------------------------------------------------------------------
// TOTP helpers (oathtool is the reference implementation)

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The current TOTP step (period 30).
pub fn current_step() -> u64 {
    unix_now() / PERIOD
}

/// Waits, if needed, until at least `min_left` remains in the current TOTP
/// step, and returns that step. Call it before computing codes whose offset
/// matters (previous step, two steps away): a step boundary in the middle of
/// a test would shift every precomputed code by one step.
pub fn wait_for_step_margin(min_left: Duration) -> u64 {
    assert!(min_left < Duration::from_secs(PERIOD - 2));
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970");
        let period = Duration::from_secs(PERIOD);
        let into = Duration::from_millis((now.as_millis() % period.as_millis()) as u64);
        let left = period - into;
        if left >= min_left {
            return now.as_secs() / PERIOD;
        }
        thread::sleep(left + Duration::from_millis(20));
    }
}

/// The TOTP code of `secret` (base32) for step `step`, from oathtool.
pub fn totp_at_step(secret: &str, step: u64) -> String {
    oathtool(secret, step, 0, 6).remove(0)
}

/// The TOTP code `offset_steps` steps from now (-1: previous step).
pub fn totp(secret: &str, offset_steps: i64) -> String {
    totp_digits(secret, offset_steps, 6)
}

/// Like [`totp`] with `digits` digits (`[totp] digits`).
pub fn totp_digits(secret: &str, offset_steps: i64, digits: u32) -> String {
    let step = current_step()
        .checked_add_signed(offset_steps)
        .expect("step in range");
    oathtool(secret, step, 0, digits).remove(0)
}

/// A 6-digit code that is not the TOTP code of `secret` for any step within
/// ten steps of now, so it is wrong whatever the skew.
pub fn wrong_code(secret: &str) -> String {
    wrong_codes(secret, 1).remove(0)
}

/// `n` distinct 6-digit codes, none of them valid for `secret` near now.
pub fn wrong_codes(secret: &str, n: usize) -> Vec<String> {
    let valid: BTreeSet<String> = oathtool(secret, current_step() - 10, 20, 6)
        .into_iter()
        .collect();
    let mut out = Vec::new();
    let mut candidate: u32 = 135_791;
    while out.len() < n {
        let code = format!("{candidate:06}");
        if !valid.contains(&code) && !out.contains(&code) {
            out.push(code);
        }
        candidate = (candidate + 104_729) % 1_000_000;
    }
    out
}

/// `digits`-digit codes for steps `step ..= step + window`.
fn oathtool(secret: &str, step: u64, window: u32, digits: u32) -> Vec<String> {
    // The middle of the step, so rounding can never pick a neighbour.
    let at = format!("@{}", step * PERIOD + PERIOD / 2);
    let out = Command::new("oathtool")
        .args(["--totp", "-b", "--now", &at])
        .args(["-w", &window.to_string(), "-d", &digits.to_string(), secret])
        .output()
        .expect("run oathtool (is the oathtool package installed?)");
    assert!(
        out.status.success(),
        "oathtool failed for secret {secret}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let codes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        codes.len(),
        window as usize + 1,
        "oathtool output: {codes:?}"
    );
    codes
}

// ---------------------------------------------------------------------------
// Login results

/// What libpam returned to pamtester, from pamtester's last line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PamResult {
    /// PAM_SUCCESS
    Success,
    /// PAM_AUTH_ERR
    AuthErr,
    /// PAM_AUTHINFO_UNAVAIL
    AuthinfoUnavail,
    /// PAM_MAXTRIES
    MaxTries,
    /// PAM_CONV_ERR
    ConvErr,
    /// PAM_PERM_DENIED
    PermDenied,
    /// PAM_USER_UNKNOWN
    UserUnknown,
    /// Another pam_strerror text, or none at all.
    Other(String),
}

impl PamResult {
    fn parse(output: &str) -> PamResult {
        let Some(pos) = output.rfind("pamtester: ") else {
            return PamResult::Other(String::new());
        };
        let text = output[pos + "pamtester: ".len()..]
            .lines()
            .next()
            .unwrap_or("")
            .trim();
        match text {
            "successfully authenticated" => PamResult::Success,
            "Authentication failure" => PamResult::AuthErr,
            "Authentication service cannot retrieve authentication info" => {
                PamResult::AuthinfoUnavail
            }
            "Have exhausted maximum number of retries for service" => PamResult::MaxTries,
            "Conversation error" => PamResult::ConvErr,
            "Permission denied" => PamResult::PermDenied,
            "User not known to the underlying authentication module" => PamResult::UserUnknown,
            other => PamResult::Other(other.to_string()),
        }
    }
}

/// One finished pamtester run.
#[derive(Clone)]
pub struct LoginResult {
    /// Who logged in.
    pub user: String,
    /// pamtester's exit status.
    pub status: ExitStatus,
    /// pamtester exited 0: libpam returned PAM_SUCCESS.
    pub success: bool,
    /// stdout and stderr interleaved in write order.
    pub output: String,
    /// How many times the module asked `Verification code: `.
    pub prompts_seen: usize,
    /// From start to end of the pamtester run.
    pub elapsed: Duration,
}

impl LoginResult {
    /// Occurrences of `needle` in the transcript.
    pub fn count(&self, needle: &str) -> usize {
        self.output.matches(needle).count()
    }

    /// How many `Invalid verification code.` messages the module sent.
    pub fn invalid_code_messages(&self) -> usize {
        self.count(INVALID_CODE)
    }

    /// The module's debug lines (`pam_crm2fa…`, the mirror of its syslog).
    pub fn debug_lines(&self) -> Vec<&str> {
        self.output
            .lines()
            .filter_map(|line| {
                line.match_indices("pam_crm2fa")
                    .find(|(i, _)| !line[..*i].ends_with("lib"))
                    .map(|(i, _)| &line[i..])
            })
            .collect()
    }

    /// Debug lines that contain every one of `needles`.
    pub fn debug_lines_with(&self, needles: &[&str]) -> Vec<&str> {
        self.debug_lines()
            .into_iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .collect()
    }

    /// What libpam returned, as pamtester reported it.
    pub fn pam_result(&self) -> PamResult {
        PamResult::parse(&self.output)
    }

    /// pamtester exited by itself (no signal, no crash).
    pub fn exited_normally(&self) -> bool {
        self.status.code().is_some()
    }

    /// Panics unless the login was denied as a configuration or store
    /// error (PAM_AUTHINFO_UNAVAIL) with a module log line holding every
    /// one of `needles`.
    #[track_caller]
    pub fn assert_unavailable_naming(&self, needles: &[&str]) {
        self.assert_denied();
        assert_eq!(
            self.pam_result(),
            PamResult::AuthinfoUnavail,
            "config/store errors map to PAM_AUTHINFO_UNAVAIL:\n{self}"
        );
        assert!(
            !self.debug_lines_with(needles).is_empty(),
            "expected a pam_crm2fa log line containing {needles:?}:\n{self}"
        );
    }

    /// Panics, showing the transcript, unless the login succeeded.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success, "expected a successful login, got:\n{self}");
        assert_eq!(self.pam_result(), PamResult::Success, "{self}");
        self
    }

    /// Denied by libpam, with pamtester exiting normally (no crash).
    #[track_caller]
    pub fn assert_denied(&self) -> &Self {
        assert!(
            self.exited_normally(),
            "pamtester did not exit normally (signal {:?}): the module crashed?\n{self}",
            self.status.signal()
        );
        assert!(
            !self.success,
            "expected the login to be denied, got:\n{self}"
        );
        assert_ne!(self.pam_result(), PamResult::Success, "{self}");
        self
    }
}

impl fmt::Display for LoginResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "--- login of {:?}: {} ({:?}), {} code prompt(s), {:?} ---",
            self.user,
            self.status,
            self.pam_result(),
            self.prompts_seen,
            self.elapsed
        )?;
        write!(f, "{}", self.output)?;
        if !self.output.ends_with('\n') {
            writeln!(f)?;
        }
        write!(f, "--- end of login of {:?} ---", self.user)
    }
}

impl fmt::Debug for LoginResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Counts successes among `results`.
pub fn successes(results: &[LoginResult]) -> usize {
    results.iter().filter(|r| r.success).count()
}

/// All transcripts, for assertion messages.
pub fn transcripts(results: &[LoginResult]) -> String {
    results
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// Processes

/// Serialises pamtester start-up (see [`Sandbox::spawn_login`]).
static PAM_WRAPPER_STARTUP: Mutex<()> = Mutex::new(());

/// pam_wrapper has 62 possible runtime directories (`/tmp/pam.[0-9A-Za-z]`):
/// a process that finds none exits. Keep the live pamtesters of this test
/// binary well below that, whatever the number of test threads.
const MAX_LIVE_PAMTESTERS: usize = 40;
static LIVE_PAMTESTERS: Semaphore = Semaphore::new(MAX_LIVE_PAMTESTERS);

struct Semaphore {
    free: Mutex<usize>,
    cond: Condvar,
}

/// One slot of [`LIVE_PAMTESTERS`], given back on drop.
#[allow(missing_debug_implementations)]
pub struct Permit(&'static Semaphore);

impl Semaphore {
    const fn new(n: usize) -> Semaphore {
        Semaphore {
            free: Mutex::new(n),
            cond: Condvar::new(),
        }
    }

    /// Takes `n` slots at once (never part of them, so concurrent callers
    /// cannot deadlock each other).
    fn acquire(&'static self, n: usize) -> Vec<Permit> {
        assert!(
            n <= MAX_LIVE_PAMTESTERS,
            "at most {MAX_LIVE_PAMTESTERS} concurrent logins (pam_wrapper limit)"
        );
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free < n {
            free = self.cond.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= n;
        (0..n).map(|_| Permit(self)).collect()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|e| e.into_inner());
        *free += 1;
        self.0.cond.notify_all();
    }
}

/// How [`Sandbox::spawn_login_opts`] and [`Sandbox::login_opts`] start
/// pamtester; the default is what [`Sandbox::login`] does.
#[derive(Clone, Debug)]
pub struct LoginOptions {
    /// pamtester's operation: `authenticate` (the default),
    /// `authenticate(PAM_SILENT)`, …
    pub operation: String,
    /// A command pamtester runs under, e.g. `nsenter -t PID -m --`; it runs
    /// as `WRAPPER… env … pamtester …`, so the wrapper itself gets the
    /// test's environment and not the login's (nor `preload`). Its pid is
    /// [`PendingLogin::pid`]: a wrapper that forks hides pamtester's.
    pub wrapper: Vec<OsString>,
    /// Libraries put first in pamtester's LD_PRELOAD (e.g. libfaketime),
    /// before libstdbuf, pam_wrapper and nss_wrapper.
    pub preload: Vec<String>,
    /// More environment for pamtester, set after the harness's own.
    pub env: Vec<(String, String)>,
    /// PAM items pamtester sets before the operation (`-I rhost=HOST`).
    pub items: Vec<(String, String)>,
}

impl Default for LoginOptions {
    fn default() -> Self {
        LoginOptions {
            operation: "authenticate".to_string(),
            wrapper: Vec::new(),
            preload: Vec::new(),
            env: Vec::new(),
            items: Vec::new(),
        }
    }
}

/// A started pamtester whose answers have not necessarily been sent yet.
#[allow(missing_debug_implementations)]
pub struct PendingLogin {
    user: String,
    pid: u32,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    answers: Vec<u8>,
    transcript: File,
    started: Instant,
    _permit: Permit,
}

impl PendingLogin {
    /// The pid of the process started: pamtester's, also under a wrapper
    /// that execs it without forking (`env`, `nsenter -m`). Still the
    /// login's after it ended, until [`PendingLogin::finish`] reaps it.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The transcript so far.
    pub fn output_so_far(&self) -> String {
        read_all_at(&self.transcript)
    }

    /// Waits until the transcript contains `needle` (e.g. the password prompt:
    /// the process is then blocked reading its answer). Panics on timeout or
    /// if the process ends first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output_so_far().contains(needle) {
                return;
            }
            let child = self.child.as_mut().expect("child running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "pamtester for {} ended ({status}) before printing {needle:?}:\n{}",
                    self.user,
                    self.output_so_far()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "pamtester for {} did not print {needle:?} within {timeout:?}:\n{}",
                    self.user,
                    self.output_so_far()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Writes one more answer now, keeping stdin open (the answers given
    /// at the start still follow with [`PendingLogin::send_answers`]).
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("writing an answer for {}: {e}", self.user));
    }

    /// Writes every answer (one per line) and closes stdin: the end of input
    /// is what a client sends when it has nothing more to say.
    pub fn send_answers(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            match stdin.write_all(&self.answers) {
                Ok(()) => {}
                // The process already ended (e.g. denied before asking).
                Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
                Err(e) => panic!("writing answers for {}: {e}", self.user),
            }
        }
    }

    /// Sends the answers if not done yet, waits for the end and returns the
    /// result. Panics (after killing it) if pamtester hangs.
    pub fn finish(mut self) -> LoginResult {
        self.send_answers();
        let mut child = self.child.take().expect("child running");
        let status = wait_timeout(&mut child, PROCESS_TIMEOUT).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pamtester for {} hung for {PROCESS_TIMEOUT:?}:\n{}",
                self.user,
                read_all_at(&self.transcript)
            )
        });
        let output = read_all_at(&self.transcript);
        let result = LoginResult {
            user: self.user.clone(),
            status,
            success: status.success(),
            prompts_seen: output.matches(CODE_PROMPT).count(),
            output,
            elapsed: self.started.elapsed(),
        };
        if std::env::var_os("CRM2FA_TEST_VERBOSE").is_some() {
            eprintln!("{result}");
        }
        result
    }
}

impl Drop for PendingLogin {
    /// A login abandoned by a failing test: end of input lets pamtester
    /// finish by itself (so pam_wrapper removes its /tmp/pam.X directory);
    /// kill it only if it does not.
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            if wait_timeout(&mut child, Duration::from_secs(5)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Waits up to `timeout` for `child` to end; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn read_all_at(file: &File) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut chunk, offset).expect("read transcript");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        offset += n as u64;
    }
    String::from_utf8_lossy(&buf).into_owned()
}

// ---------------------------------------------------------------------------
// crm2fad

/// A crm2fad started for a sandbox ([`Sandbox::start_daemon`]): it knows
/// the sandbox's accounts (nss_wrapper) and listens on
/// [`Sandbox::daemon_socket`]. Killed and reaped when dropped.
#[allow(missing_debug_implementations)]
pub struct Daemon {
    child: Child,
    stderr: PathBuf,
}

impl Daemon {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to standard error so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Whether it has `path` open now (a store it keeps between logins).
    pub fn holds_open(&self, path: &Path) -> bool {
        let fds = fs::read_dir(format!("/proc/{}/fd", self.pid()));
        fds.into_iter()
            .flatten()
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target == path))
    }

    /// Send it SIGTERM (systemd's stop) without waiting.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM crm2fad: {status}");
    }

    /// Wait up to `timeout` for it to exit; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_timeout(&mut self.child, timeout)
    }

    /// Kill it (SIGKILL: no chance to tidy up) and reap it; its socket
    /// stays behind.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// Sandbox

/// An activated enrolment.
#[derive(Clone, Debug)]
pub struct Enrolled {
    /// The user.
    pub user: String,
    /// The TOTP secret, base32.
    pub secret: String,
    /// The backup codes shown at activation.
    pub backup_codes: Vec<String>,
}

#[derive(Default)]
struct Accounts {
    /// user -> (uid, password)
    users: BTreeMap<String, (u32, String)>,
    /// group -> (gid, members)
    groups: BTreeMap<String, (u32, BTreeSet<String>)>,
    /// name -> password, for pam_matrix only
    password_only: BTreeMap<String, String>,
}

/// A self-contained crm2fa installation plus a PAM service, in a tempdir.
#[allow(missing_debug_implementations)]
pub struct Sandbox {
    dir: TempDir,
    /// `crm2fa.toml`
    pub cfg: PathBuf,
    /// pam_wrapper's service directory (`PAM_WRAPPER_SERVICE_DIR`).
    pub service_dir: PathBuf,
    /// pam_matrix password database.
    pub passdb: PathBuf,
    passwd: PathBuf,
    group: PathBuf,
    accounts: Mutex<Accounts>,
    transcripts: PathBuf,
    serial: AtomicU32,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// Opt-in policy, everything else default.
    pub fn new() -> Sandbox {
        Sandbox::with_config(OPT_IN)
    }

    /// A sandbox whose config is `[store]` (relative `crm2fa.db` and
    /// `secret.key`) followed by `sections` (TOML text: `[policy]`,
    /// `[lockout]`, …); runs `crm2fa-admin init` and writes the default stack.
    pub fn with_config(sections: &str) -> Sandbox {
        Sandbox::with_config_and_groups(sections, &[])
    }

    /// Like [`Sandbox::with_config`], with the (empty) Unix `groups` made
    /// first: groups the config names must exist when it loads.
    pub fn with_config_and_groups(sections: &str, groups: &[&str]) -> Sandbox {
        let sb = Sandbox::bare();
        for g in groups {
            sb.add_group(g);
        }
        sb.write_config(&config_text(sections));
        sb.set_stack(&sb.default_stack());
        sb.admin_ok(&["init"]);
        sb
    }

    /// The directories and account files only: no config, no stack, no init.
    pub fn bare() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("crm2fa-e2e-")
            .tempdir()
            .expect("create tempdir");
        let root = dir.path().to_path_buf();
        // The module refuses group/other-writable files; keep the tree tight.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).expect("chmod sandbox");
        let service_dir = root.join("pam.d");
        let transcripts = root.join("transcripts");
        for d in [&service_dir, &transcripts] {
            fs::create_dir(d).expect("mkdir");
        }
        // Anything not configured is denied (and pam_wrapper stays quiet).
        write_file(
            &service_dir.join("other"),
            "auth required pam_deny.so\naccount required pam_deny.so\n\
             password required pam_deny.so\nsession required pam_deny.so\n",
            0o644,
        );
        let sb = Sandbox {
            cfg: root.join("crm2fa.toml"),
            passdb: root.join("passdb"),
            passwd: root.join("passwd"),
            group: root.join("group"),
            service_dir,
            transcripts,
            accounts: Mutex::new(Accounts::default()),
            serial: AtomicU32::new(0),
            dir,
        };
        sb.write_accounts(&sb.accounts.lock().unwrap());
        sb
    }

    /// The sandbox directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The store, as the default config names it.
    pub fn store_path(&self) -> PathBuf {
        self.root().join("crm2fa.db")
    }

    /// The key file, as the default config names it.
    pub fn key_path(&self) -> PathBuf {
        self.root().join("secret.key")
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.cfg
    }

    /// Overwrites the config file (mode 0600) with `text`.
    pub fn write_config(&self, text: &str) {
        write_file(&self.cfg, text, 0o600);
    }

    // ----- PAM stack

    /// `auth requisite pam_matrix.so passdb=…`
    pub fn matrix_line(&self) -> String {
        format!(
            "auth requisite {PAM_MATRIX} passdb={}",
            self.passdb.display()
        )
    }

    /// `auth CONTROL <module> config=<cfg> debug EXTRA`
    pub fn module_line(&self, control: &str, extra_args: &str) -> String {
        self.module_line_with_config(control, &self.cfg, extra_args)
    }

    /// Like [`Sandbox::module_line`] with another config path.
    pub fn module_line_with_config(&self, control: &str, cfg: &Path, extra_args: &str) -> String {
        format!(
            "auth {control} {} config={} debug {extra_args}",
            module_path().display(),
            cfg.display()
        )
        .trim_end()
        .to_string()
    }

    /// password (pam_matrix, requisite), then the module (required).
    pub fn default_stack(&self) -> Vec<String> {
        vec![
            self.matrix_line(),
            self.module_line("required", ""),
            "account required pam_permit.so".to_string(),
        ]
    }

    /// Writes the service file for [`SERVICE`].
    pub fn set_stack<S: AsRef<str>>(&self, lines: &[S]) {
        let mut text = String::new();
        for l in lines {
            text.push_str(l.as_ref());
            text.push('\n');
        }
        write_file(&self.service_dir.join(SERVICE), &text, 0o644);
    }

    // ----- accounts

    /// A user known to pam_matrix (with `password`) and to NSS (via
    /// nss_wrapper), with a primary group of the same name.
    pub fn add_user(&self, name: &str, password: &str) {
        self.add_user_in_groups(name, password, &[]);
    }

    /// Like [`Sandbox::add_user`], also a member of `groups`.
    pub fn add_user_in_groups(&self, name: &str, password: &str, groups: &[&str]) {
        let mut acc = self.accounts.lock().unwrap();
        assert!(!acc.users.contains_key(name), "user {name} added twice");
        let uid = 20_000 + acc.users.len() as u32;
        acc.users
            .insert(name.to_string(), (uid, password.to_string()));
        acc.groups.insert(name.to_string(), (uid, BTreeSet::new()));
        for g in groups {
            let next_gid = next_group_id(&acc);
            acc.groups
                .entry(g.to_string())
                .or_insert_with(|| (next_gid, BTreeSet::new()))
                .1
                .insert(name.to_string());
        }
        self.write_accounts(&acc);
    }

    /// An empty Unix group (members come with [`Sandbox::add_user_in_groups`]).
    pub fn add_group(&self, name: &str) {
        let mut acc = self.accounts.lock().unwrap();
        let gid = next_group_id(&acc);
        acc.groups
            .entry(name.to_string())
            .or_insert_with(|| (gid, BTreeSet::new()));
        self.write_accounts(&acc);
    }

    /// Remove the Unix group `name` from the group database.
    pub fn remove_group(&self, name: &str) {
        let mut acc = self.accounts.lock().unwrap();
        acc.groups.remove(name);
        self.write_accounts(&acc);
    }

    /// A user known to NSS whose primary group has no entry in the group
    /// database (as with some directory setups), member of `groups`.
    pub fn add_user_without_primary_group(&self, name: &str, password: &str, groups: &[&str]) {
        self.add_user_in_groups(name, password, groups);
        let mut acc = self.accounts.lock().unwrap();
        acc.groups.remove(name);
        self.write_accounts(&acc);
    }

    /// A name the password step accepts but NSS does not know (a
    /// spelling the directory would not resolve).
    pub fn add_password_only(&self, name: &str, password: &str) {
        let mut acc = self.accounts.lock().unwrap();
        acc.password_only
            .insert(name.to_string(), password.to_string());
        self.write_accounts(&acc);
    }

    fn write_accounts(&self, acc: &Accounts) {
        let mut passdb = String::new();
        let mut passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        let mut group = fs::read_to_string("/etc/group").unwrap_or_default();
        if !passwd.starts_with("root:") && !passwd.contains("\nroot:") {
            passwd.insert_str(0, "root:x:0:0:root:/root:/bin/sh\n");
        }
        if !group.starts_with("root:") && !group.contains("\nroot:") {
            group.insert_str(0, "root:x:0:\n");
        }
        for (name, pw) in &acc.password_only {
            passdb.push_str(&format!("{name}:{pw}:{SERVICE}\n"));
        }
        for (name, (uid, pw)) in &acc.users {
            passdb.push_str(&format!("{name}:{pw}:{SERVICE}\n"));
            passwd.push_str(&format!(
                "{name}:x:{uid}:{uid}:{name}:{}:/bin/sh\n",
                self.root().display()
            ));
        }
        for (name, (gid, members)) in &acc.groups {
            let members: Vec<&str> = members.iter().map(String::as_str).collect();
            group.push_str(&format!("{name}:x:{gid}:{}\n", members.join(",")));
        }
        write_file(&self.passdb, &passdb, 0o600);
        write_file(&self.passwd, &passwd, 0o644);
        write_file(&self.group, &group, 0o644);
    }

    /// nss_wrapper only (the CLI does not use PAM).
    fn nss_env(&self, cmd: &mut Command) {
        cmd.env_remove("CRM2FA_CONFIG")
            .env_remove("PAM_WRAPPER")
            .env("LD_PRELOAD", "libnss_wrapper.so")
            .env("NSS_WRAPPER_PASSWD", &self.passwd)
            .env("NSS_WRAPPER_GROUP", &self.group)
            .env("LC_ALL", "C.UTF-8");
    }

    /// pam_wrapper and nss_wrapper, for pamtester, after the libraries
    /// `preload`; stdout unbuffered.
    fn pam_env(&self, cmd: &mut Command, preload: &[String]) {
        self.nss_env(cmd);
        // misc_conv prints PAM_TEXT_INFO with stdio on stdout, which is
        // fully buffered when it is not a terminal: unbuffer it with
        // coreutils' libstdbuf (what `stdbuf -o0` does), so the transcript
        // shows messages and prompts in the order they were sent. Not the
        // `stdbuf` program: pam_wrapper would set itself up in that process
        // too and leave its /tmp/pam.X directory behind at the exec.
        let mut libs = preload.to_vec();
        if let Some(stdbuf) = libstdbuf() {
            libs.push(stdbuf.display().to_string());
            cmd.env("_STDBUF_O", "0");
        }
        libs.extend(["libpam_wrapper.so".into(), "libnss_wrapper.so".into()]);
        cmd.env("LD_PRELOAD", libs.join(" "))
            .env("PAM_WRAPPER", "1")
            .env("PAM_WRAPPER_SERVICE_DIR", &self.service_dir);
    }

    fn transcript_file(&self) -> (File, File, File) {
        let n = self.serial.fetch_add(1, Ordering::SeqCst);
        let path = self.transcripts.join(format!("{n:04}.log"));
        let f = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .expect("create transcript");
        let a = f.try_clone().expect("dup");
        let b = f.try_clone().expect("dup");
        (f, a, b)
    }

    // ----- crm2fad

    /// Where [`Sandbox::start_daemon`]'s crm2fad listens: a directory of
    /// the sandbox's, as /run/crm2fa is on a host.
    pub fn daemon_socket(&self) -> PathBuf {
        self.root().join("run").join("crm2fad.sock")
    }

    /// The module's argument that offers its logins to that crm2fad.
    pub fn socket_arg(&self) -> String {
        format!("socket={}", self.daemon_socket().display())
    }

    /// The stack that offers the module's logins to that crm2fad: the
    /// password (pam_matrix), the module with [`Sandbox::socket_arg`],
    /// then `pam_permit` for the account.
    pub fn offer_to_crm2fad(&self) {
        self.set_stack(&[
            self.matrix_line(),
            self.module_line("required", &self.socket_arg()),
            "account required pam_permit.so".to_string(),
        ]);
    }

    /// Start crm2fad on [`Sandbox::daemon_socket`] and wait until it
    /// answers there.
    #[track_caller]
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with_files(None)
    }

    /// [`Self::start_daemon`], its file descriptors limited to `files`
    /// (soft and hard, by `prlimit`), which bounds its logins at once.
    pub fn start_daemon_with_files(&self, files: Option<u64>) -> Daemon {
        let socket = self.daemon_socket();
        let stderr = self.root().join(format!(
            "crm2fad.{}.log",
            self.serial.fetch_add(1, Ordering::SeqCst)
        ));
        // crm2fad looks accounts up from several threads at once, which
        // nss_wrapper does not always survive (a name it knows is now and
        // then not found). It runs instead as on a host, with glibc's own
        // `files` module, in a mount namespace of its own where the
        // sandbox's passwd and group files are bound over /etc's (a
        // rewrite of them, in place, is seen there too). prlimit, unshare
        // and the shell each run the next in their place: the pid is
        // crm2fad's.
        let mut cmd = match files {
            None => Command::new("unshare"),
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg("unshare");
                c
            }
        };
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "mount --bind \"$1\" /etc/passwd && mount --bind \"$2\" /etc/group \
                 && shift 2 && exec \"$@\"",
            )
            .arg("sh")
            .arg(&self.passwd)
            .arg(&self.group)
            .arg(daemon_path())
            .arg("--socket")
            .arg(&socket);
        cmd.env_remove("CRM2FA_CONFIG")
            .env_remove("PAM_WRAPPER")
            .env_remove("LD_PRELOAD")
            .env("LC_ALL", "C.UTF-8");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("crm2fad log"));
        let mut daemon = Daemon {
            child: cmd.spawn().expect("start crm2fad"),
            stderr,
        };
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Some(status) = daemon.child.try_wait().expect("try_wait") {
                panic!("crm2fad exited ({status}):\n{}", daemon.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "crm2fad does not listen:\n{}",
                daemon.stderr()
            );
            thread::sleep(Duration::from_millis(5));
        }
        daemon
    }

    // ----- CLI

    /// `crm2fa-admin --config <cfg> ARGS…` with no terminal.
    pub fn admin(&self, args: &[&str]) -> Output {
        run_with_timeout(
            self.admin_command(args),
            &format!("crm2fa-admin {args:?}"),
            b"",
        )
    }

    /// Like [`Sandbox::admin`], with `input` on standard input.
    pub fn admin_with_input(&self, args: &[&str], input: &str) -> Output {
        run_with_timeout(
            self.admin_command(args),
            &format!("crm2fa-admin {args:?}"),
            input.as_bytes(),
        )
    }

    /// `crm2fa-admin --config <cfg> ARGS…` on a terminal (a pty, through
    /// `expect`): for each `(prompt, answer)` of `dialogue`, waits for the
    /// prompt and types the answer. The output is what the terminal showed.
    pub fn admin_on_terminal(&self, args: &[&str], dialogue: &[(&str, &str)]) -> Output {
        let mut script = String::from(
            "set timeout 30\n\
             spawn -noecho {*}$argv\n",
        );
        for (i, _) in dialogue.iter().enumerate() {
            script.push_str(&format!(
                "expect {{\n  -ex $env(PROMPT_{i}) {{ send -- \"$env(ANSWER_{i})\\r\" }}\n  \
                 timeout {{ puts \"\\nno prompt $env(PROMPT_{i})\"; exit 124 }}\n  \
                 eof {{ puts \"\\nended before $env(PROMPT_{i})\"; exit 125 }}\n}}\n"
            ));
        }
        script.push_str(
            "expect eof\n\
             lassign [wait] pid spawn_id os_error value\n\
             exit $value\n",
        );
        let n = self.serial.fetch_add(1, Ordering::SeqCst);
        let script_path = self.transcripts.join(format!("{n:04}.exp"));
        write_file(&script_path, &script, 0o600);
        let mut cmd = Command::new("expect");
        cmd.arg(&script_path).arg(admin_path());
        cmd.arg("--config").arg(&self.cfg).args(args);
        self.nss_env(&mut cmd);
        for (i, (prompt, answer)) in dialogue.iter().enumerate() {
            cmd.env(format!("PROMPT_{i}"), prompt)
                .env(format!("ANSWER_{i}"), answer);
        }
        run_with_timeout(cmd, &format!("expect crm2fa-admin {args:?}"), b"")
    }

    /// The command [`Sandbox::admin`] runs, for a test that wires its
    /// streams itself.
    pub fn admin_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(admin_path());
        cmd.arg("--config").arg(&self.cfg).args(args);
        self.nss_env(&mut cmd);
        cmd
    }

    /// Like [`Sandbox::admin`], panicking unless it exits 0.
    #[track_caller]
    pub fn admin_ok(&self, args: &[&str]) -> Output {
        let out = self.admin(args);
        assert!(
            out.status.success(),
            "crm2fa-admin {args:?} failed:\n{}",
            show_output(&out)
        );
        out
    }

    /// `crm2fa-admin --config <cfg> --json ARGS…`; must exit 0 and print one
    /// JSON document.
    #[track_caller]
    pub fn admin_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.admin_ok(&full);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "crm2fa-admin {full:?}: stdout is not one JSON document ({e}):\n{}",
                show_output(&out)
            )
        })
    }

    /// A sandbox with the config `sections` and one active user `user`
    /// with `password`; returns it and the enrolment.
    pub fn with_active_user(sections: &str, user: &str, password: &str) -> (Sandbox, Enrolled) {
        let sb = Sandbox::with_config(sections);
        sb.add_user(user, password);
        let e = sb.enroll_active(user);
        (sb, e)
    }

    /// `enroll USER --no-qr`: a pending enrolment; returns the secret.
    #[track_caller]
    pub fn enroll(&self, user: &str) -> String {
        let v = self.admin_json(&["enroll", user, "--no-qr"]);
        assert_eq!(v["user"], user, "enroll JSON: {v}");
        assert_eq!(v["state"], "pending", "enroll JSON: {v}");
        let uri = v["otpauth_uri"].as_str().unwrap_or_default();
        assert!(uri.starts_with("otpauth://totp/"), "enroll JSON: {v}");
        v["secret"]
            .as_str()
            .unwrap_or_else(|| panic!("enroll JSON has no secret: {v}"))
            .to_string()
    }

    /// Enrols `user` and activates it with `confirm` and the code of the
    /// *previous* step, so the current and the next step stay usable for
    /// logins in the test (each step is accepted once, never an older one).
    #[track_caller]
    pub fn enroll_active(&self, user: &str) -> Enrolled {
        let secret = self.enroll(user);
        wait_for_step_margin(Duration::from_secs(3));
        let code = totp(&secret, -1);
        let v = self.admin_json(&["confirm", user, &code]);
        let backup_codes = json_strings(&v["backup_codes"]);
        assert!(
            !backup_codes.is_empty(),
            "confirm JSON has no backup_codes: {v}"
        );
        Enrolled {
            user: user.to_string(),
            secret,
            backup_codes,
        }
    }

    /// `status USER` as JSON.
    #[track_caller]
    pub fn status(&self, user: &str) -> Value {
        let v = self.admin_json(&["status", user]);
        assert_eq!(v["user"], user, "status JSON: {v}");
        v
    }

    /// `audit --user USER` as a JSON array.
    #[track_caller]
    pub fn audit(&self, user: &str) -> Vec<Value> {
        match self.admin_json(&["audit", "--user", user]) {
            Value::Array(a) => a,
            other => panic!("audit JSON is not an array: {other}"),
        }
    }

    // ----- logins

    /// Starts `pamtester crm2fa-test USER authenticate`; the answers are
    /// written (one per line, then end of input) by
    /// [`PendingLogin::send_answers`] or [`PendingLogin::finish`].
    /// Returns once pamtester has printed something (normally the password
    /// prompt) or ended.
    pub fn spawn_login(&self, user: &str, answers: &[&str]) -> PendingLogin {
        self.spawn_login_opts(user, answers, &LoginOptions::default())
    }

    /// Like [`Sandbox::spawn_login`], started as `opts` says.
    pub fn spawn_login_opts(
        &self,
        user: &str,
        answers: &[&str],
        opts: &LoginOptions,
    ) -> PendingLogin {
        let permit = LIVE_PAMTESTERS.acquire(1).pop().expect("one permit");
        self.start_login(user, answers, opts, permit)
    }

    fn start_login(
        &self,
        user: &str,
        answers: &[&str],
        opts: &LoginOptions,
        permit: Permit,
    ) -> PendingLogin {
        let mut pamtester = Command::new("pamtester");
        for (item, value) in &opts.items {
            pamtester.arg("-I").arg(format!("{item}={value}"));
        }
        pamtester.args([SERVICE, user, &opts.operation]);
        self.pam_env(&mut pamtester, &opts.preload);
        pamtester.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let mut cmd = if opts.wrapper.is_empty() {
            pamtester
        } else {
            under_wrapper(&opts.wrapper, &pamtester)
        };
        let (transcript, out, err) = self.transcript_file();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let mut answer_bytes = Vec::new();
        for a in answers {
            answer_bytes.extend_from_slice(a.as_bytes());
            answer_bytes.push(b'\n');
        }
        // pam_wrapper picks its runtime directory /tmp/pam.<one character>
        // with a check-then-mkdir race: two processes initialising at once
        // can share one directory, and the first to exit deletes it under
        // the other. Start one pamtester at a time, until it has shown
        // output (pam_start is done) or ended.
        let startup = PAM_WRAPPER_STARTUP
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "run {:?}: {e} (pamtester comes in the pamtester package)",
                cmd.get_program()
            )
        });
        let stdin = child.stdin.take();
        let started = Instant::now();
        let deadline = started + PROCESS_TIMEOUT;
        loop {
            if transcript.metadata().map(|m| m.len() > 0).unwrap_or(false) {
                break;
            }
            if child.try_wait().expect("try_wait").is_some() || Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        drop(startup);
        PendingLogin {
            user: user.to_string(),
            pid: child.id(),
            child: Some(child),
            stdin,
            answers: answer_bytes,
            transcript,
            started,
            _permit: permit,
        }
    }

    /// One login with `answers` (password first, then the module's prompts).
    pub fn login(&self, user: &str, answers: &[&str]) -> LoginResult {
        self.spawn_login(user, answers).finish()
    }

    /// Like [`Sandbox::login`] from the remote host `rhost` (PAM_RHOST).
    pub fn login_from(&self, user: &str, rhost: &str, answers: &[&str]) -> LoginResult {
        let opts = LoginOptions {
            items: vec![("rhost".to_string(), rhost.to_string())],
            ..LoginOptions::default()
        };
        self.login_opts(user, answers, &opts)
    }

    /// Like [`Sandbox::login`] with pamtester's `operation`, e.g.
    /// `authenticate(PAM_SILENT)`.
    pub fn login_op(&self, user: &str, operation: &str, answers: &[&str]) -> LoginResult {
        let opts = LoginOptions {
            operation: operation.to_string(),
            ..LoginOptions::default()
        };
        self.login_opts(user, answers, &opts)
    }

    /// Like [`Sandbox::login`], started as `opts` says.
    pub fn login_opts(&self, user: &str, answers: &[&str], opts: &LoginOptions) -> LoginResult {
        self.spawn_login_opts(user, answers, opts).finish()
    }

    /// Starts every login, waits until all of them sit at pam_matrix's
    /// password prompt (so every process is loaded and blocked on its
    /// stdin), then releases all answers at once and collects the results
    /// (in the order given).
    pub fn login_all_at_once(&self, logins: &[(&str, Vec<String>)]) -> Vec<LoginResult> {
        let permits = LIVE_PAMTESTERS.acquire(logins.len());
        let opts = LoginOptions::default();
        let mut pending: Vec<PendingLogin> = logins
            .iter()
            .zip(permits)
            .map(|((user, answers), permit)| {
                let answers: Vec<&str> = answers.iter().map(String::as_str).collect();
                self.start_login(user, &answers, &opts, permit)
            })
            .collect();
        for p in &mut pending {
            p.wait_for(PASSWORD_PROMPT, PROCESS_TIMEOUT);
        }
        for p in &mut pending {
            p.send_answers();
        }
        pending.into_iter().map(PendingLogin::finish).collect()
    }
}

/// `cmd` run under `wrapper`: `WRAPPER… env [-u NAME]… [NAME=VALUE]…
/// PROGRAM ARGS…`. The wrapper runs with the test's own environment; only
/// `cmd`'s program gets `cmd`'s (its preloaded libraries in particular,
/// which could break the wrapper).
fn under_wrapper(wrapper: &[OsString], cmd: &Command) -> Command {
    let (program, wrapper_args) = wrapper.split_first().expect("a wrapper command");
    let mut wrapped = Command::new(program);
    wrapped.args(wrapper_args).arg("env");
    // `env` takes the variables it removes (`-u`) before those it sets.
    let mut set = Vec::new();
    for (name, value) in cmd.get_envs() {
        match value {
            None => {
                wrapped.arg("-u").arg(name);
            }
            Some(value) => {
                let mut assignment = name.to_os_string();
                assignment.push("=");
                assignment.push(value);
                set.push(assignment);
            }
        }
    }
    wrapped
        .args(set)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    wrapped
}

/// The id for a new supplementary group (primary groups take the uid,
/// from 20000; supplementary ones count up from 30000 and are never removed).
fn next_group_id(acc: &Accounts) -> u32 {
    30_000 + acc.groups.values().filter(|(g, _)| *g >= 30_000).count() as u32
}

/// coreutils' libstdbuf.so, where the distribution keeps it.
fn libstdbuf() -> Option<PathBuf> {
    static LIB: OnceLock<Option<PathBuf>> = OnceLock::new();
    LIB.get_or_init(|| {
        [
            "/usr/libexec/coreutils/libstdbuf.so",
            "/usr/lib/coreutils/libstdbuf.so",
            "/usr/lib64/coreutils/libstdbuf.so",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    })
    .clone()
}

/// The default config text: `[store]` with relative paths, then `sections`.
pub fn config_text(sections: &str) -> String {
    format!("[store]\npath = \"crm2fa.db\"\nkey_file = \"secret.key\"\n\n{sections}")
}

/// The strings of a JSON array (panics on anything else).
pub fn json_strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array of strings, got {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("expected a string, got {s}"))
                .to_string()
        })
        .collect()
}

/// Exit status, stdout and stderr of a finished command, for messages.
pub fn show_output(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `text` to `path` with `mode` (also when the file existed).
pub fn write_file(path: &Path, text: &str, mode: u32) {
    write_bytes(path, text.as_bytes(), mode);
}

/// Writes `bytes` to `path` with `mode` (also when the file existed).
pub fn write_bytes(path: &Path, bytes: &[u8], mode: u32) {
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    f.write_all(bytes)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Runs `cmd` to its end with no standard input and returns its output;
/// panics (after killing it) if it runs as long as the bound of every
/// process the harness starts. `what` names it in messages.
pub fn run_command(cmd: Command, what: &str) -> Output {
    run_with_timeout(cmd, what, b"")
}

fn run_with_timeout(mut cmd: Command, what: &str, input: &[u8]) -> Output {
    let mut out = tempfile::tempfile().expect("tempfile");
    let mut err = tempfile::tempfile().expect("tempfile");
    let stdin = if input.is_empty() {
        Stdio::null()
    } else {
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(input).expect("write stdin");
        f.seek(SeekFrom::Start(0)).expect("seek");
        Stdio::from(f)
    };
    cmd.stdin(stdin)
        .stdout(Stdio::from(out.try_clone().expect("dup")))
        .stderr(Stdio::from(err.try_clone().expect("dup")));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {what}: {e}"));
    let status = wait_timeout(&mut child, PROCESS_TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} hung for {PROCESS_TIMEOUT:?}")
    });
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    out.seek(SeekFrom::Start(0)).expect("seek");
    out.read_to_end(&mut stdout).expect("read");
    err.seek(SeekFrom::Start(0)).expect("seek");
    err.read_to_end(&mut stderr).expect("read");
    Output {
        status,
        stdout,
        stderr,
    }
}
