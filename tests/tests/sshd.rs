//! A real SSH login: the distribution's sshd with crm2fa in its PAM stack,
//! and a real `ssh` client on a terminal (driven by `expect`), all without
//! touching /etc.
//!
//! How sshd runs here ([`Sshd::start`]):
//!
//! - `/usr/sbin/sshd -D -e -f <dir>/sshd_config`: in the foreground, logging
//!   to stderr (a file: [`Sshd::log`]), its own config, ed25519 host key
//!   (made with `ssh-keygen`) and pid file in a temporary directory, on
//!   127.0.0.1 and a free port, `UseDNS no`, `LogLevel VERBOSE`,
//!   `StrictModes no`. Its environment is cleared and set to pam_wrapper and
//!   nss_wrapper only: `LD_PRELOAD="libpam_wrapper.so libnss_wrapper.so"`,
//!   `PAM_WRAPPER=1`, `PAM_WRAPPER_SERVICE_DIR=<dir>/pam.d`,
//!   `NSS_WRAPPER_PASSWD`/`NSS_WRAPPER_GROUP`.
//! - The PAM service is sshd's program name, `sshd`: `<dir>/pam.d/sshd`
//!   holds the sandbox's pam_matrix line (its passdb) for the password and
//!   the built module by absolute path with the sandbox's `config=`
//!   ([`Sandbox::matrix_line`], [`Sandbox::module_line`]); `account` and
//!   `session` are `pam_permit`.
//! - OpenSSH 9.2 re-executes itself for every connection (`sshd -R`, kept):
//!   `execv` keeps the environment, so the preload reaches the per-connection
//!   monitor, which runs PAM (the conversation in a forked "thread"). The
//!   privilege-separated child chroots to `/run/sshd`, a path compiled into
//!   sshd: it is created (0755, what the systemd unit's RuntimeDirectory
//!   does) when missing; `UsePrivilegeSeparation` no longer exists.
//! - The accounts sshd sees come from nss_wrapper files written here: the
//!   system's own (for the privilege-separation user `sshd`) plus the test
//!   users, whose home is the temporary directory (0755) and shell /bin/sh.
//!   The session's environment is built by sshd and has no preload, so the
//!   command runs as on a real host.
//! - pam_wrapper makes a `/tmp/pam.X` directory in every process that loads
//!   it, and the per-connection process exits without removing it: every
//!   such directory holding a copy of this sshd's service file (which opens
//!   with a marker comment) is removed when the test stops sshd, after
//!   ending every process it started.
//!
//! The client is `ssh -F /dev/null` on a pseudo-terminal (`expect`), with
//! `NumberOfPasswordPrompts=1` so a refused keyboard-interactive round ends
//! the client, in the locale the test chooses. [`Client`] lets the test read
//! what the terminal showed before answering each prompt.
//!
//! What reaches the client (measured with OpenSSH 9.2p1, Debian 12): sshd
//! prepends PAM messages to the next prompt, which the client always shows
//! (as `(user@host) message…prompt`). Messages after the last prompt travel
//! otherwise: after a failure as the text of a request without a prompt,
//! after a success as the SSH banner (and again at the start of a terminal
//! session); the client prints both only at its default `LogLevel` (INFO),
//! not with `ssh -q`. Hence what the user must see comes before a prompt.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::TcpListener;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crm2fa_tests::*;
use tempfile::TempDir;

const PW: &str = "correct horse";
const SSHD: &str = "/usr/sbin/sshd";
/// sshd's PAM service name is its program name.
const PAM_SERVICE: &str = "sshd";
/// What the remote command prints.
const LOGGED_IN: &str = "logged-in";
/// The client's message when authentication failed.
const DENIED: &str = "Permission denied";
/// Until sshd listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// One whole client login, from spawn to its end; only a hang comes near it.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(90);
/// The pam_wrapper preload of sshd.
const PRELOAD: &str = "libpam_wrapper.so libnss_wrapper.so";
/// `[policy]` that sets users up during their first login.
const ENROLL_IN_LOGIN: &str = "[policy]\nenforce = \"all\"\nunenrolled = \"enroll\"\n";
/// `[backup_codes] count`, default.
const BACKUP_CODES: usize = 10;

/// pam_wrapper picks its `/tmp/pam.X` directory with a check-then-mkdir
/// race: two processes of this test binary setting up at once could share
/// one. Held while sshd starts (until it listens) and while a client
/// connects (until the per-connection sshd has answered).
static PAM_WRAPPER_SETUP: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------
// sshd

/// One sshd under pam_wrapper, with everything in a temporary directory.
struct Sshd {
    dir: TempDir,
    users: Vec<String>,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    serial: AtomicU32,
}

impl Sshd {
    /// The directory with host key, client key, the accounts of `users`
    /// for NSS and an empty pam.d; sshd is not started yet. Their passwords
    /// are the sandbox's (pam_matrix).
    fn prepare(users: &[&str]) -> Sshd {
        ensure_privsep_dir();
        let dir = tempfile::Builder::new()
            .prefix("crm2fa-sshd-")
            .tempdir()
            .expect("create tempdir");
        // The users read authorized_keys and chdir to their home here.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let sshd = Sshd {
            log: dir.path().join("sshd.log"),
            dir,
            users: users.iter().map(|u| u.to_string()).collect(),
            port: 0,
            child: None,
            serial: AtomicU32::new(0),
        };
        fs::create_dir(sshd.path("pam.d")).expect("mkdir pam.d");
        write_file(
            &sshd.path("pam.d/other"),
            "auth required pam_deny.so\naccount required pam_deny.so\n\
             password required pam_deny.so\nsession required pam_deny.so\n",
            0o644,
        );
        sshd.write_accounts();
        for key in ["ssh_host_ed25519_key", "client_key"] {
            let out = run_command(
                {
                    let mut c = Command::new("ssh-keygen");
                    c.args(["-q", "-t", "ed25519", "-N", "", "-C", "crm2fa-test", "-f"])
                        .arg(sshd.path(key));
                    c
                },
                "ssh-keygen",
            );
            assert!(out.status.success(), "ssh-keygen:\n{}", show_output(&out));
        }
        let public = fs::read_to_string(sshd.path("client_key.pub")).expect("client_key.pub");
        write_file(&sshd.path("authorized_keys"), &public, 0o644);
        sshd
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// nss_wrapper files: the system's accounts plus the test users.
    fn write_accounts(&self) {
        let mut passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        let mut group = fs::read_to_string("/etc/group").expect("read /etc/group");
        for (i, user) in self.users.iter().enumerate() {
            let id = 20_000 + i;
            passwd.push_str(&format!(
                "{user}:x:{id}:{id}:{user}:{}:/bin/sh\n",
                self.dir.path().display()
            ));
            group.push_str(&format!("{user}:x:{id}:\n"));
        }
        write_file(&self.path("passwd"), &passwd, 0o644);
        write_file(&self.path("group"), &group, 0o644);
    }

    /// Writes the `sshd` PAM service (`auth_lines`, then account and
    /// session `pam_permit`) and starts sshd with `AuthenticationMethods
    /// methods`; returns once it listens.
    fn start(&mut self, methods: &str, auth_lines: &[String]) {
        // The first line marks pam_wrapper's copies of this file as this
        // sshd's ([`Sshd::remove_pam_wrapper_dirs`]).
        let mut stack = format!("{}\n", self.marker());
        for l in auth_lines {
            stack.push_str(l);
            stack.push('\n');
        }
        stack.push_str(
            "account required pam_permit.so\nsession required pam_permit.so\n\
             password required pam_deny.so\n",
        );
        write_file(&self.path(&format!("pam.d/{PAM_SERVICE}")), &stack, 0o644);
        let mut last_log = String::new();
        for _attempt in 0..5 {
            self.port = free_port();
            self.write_config(methods);
            if self.spawn() {
                return;
            }
            last_log = self.log();
            if !last_log.contains("Address already in use") {
                break;
            }
        }
        panic!(
            "sshd did not start:\n--- sshd_config ---\n{}--- pam.d/sshd ---\n{stack}\
             --- sshd stderr ---\n{last_log}--- end ---",
            fs::read_to_string(self.path("sshd_config")).unwrap_or_default()
        );
    }

    fn write_config(&self, methods: &str) {
        let d = self.dir.path().display();
        let text = format!(
            "ListenAddress 127.0.0.1:{port}\n\
             HostKey {d}/ssh_host_ed25519_key\n\
             PidFile {d}/sshd.pid\n\
             UsePAM yes\n\
             KbdInteractiveAuthentication yes\n\
             PasswordAuthentication no\n\
             PubkeyAuthentication yes\n\
             AuthenticationMethods {methods}\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             StrictModes no\n\
             UseDNS no\n\
             LogLevel VERBOSE\n\
             LoginGraceTime 60\n\
             PermitRootLogin no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             X11Forwarding no\n\
             AllowTcpForwarding no\n\
             AllowAgentForwarding no\n",
            port = self.port
        );
        write_file(&self.path("sshd_config"), &text, 0o644);
    }

    /// Starts sshd; true once it listens, false if it ended first.
    fn spawn(&mut self) -> bool {
        let log = File::create(&self.log).expect("create sshd.log");
        let mut cmd = Command::new(SSHD);
        cmd.args(["-D", "-e", "-f"])
            .arg(self.path("sshd_config"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LD_PRELOAD", PRELOAD)
            .env("PAM_WRAPPER", "1")
            .env("PAM_WRAPPER_SERVICE_DIR", self.path("pam.d"))
            .env("NSS_WRAPPER_PASSWD", self.path("passwd"))
            .env("NSS_WRAPPER_GROUP", self.path("group"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("dup")))
            .stderr(Stdio::from(log));
        let setup = PAM_WRAPPER_SETUP.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = cmd.spawn().expect("run /usr/sbin/sshd (openssh-server)");
        let listening = format!("Server listening on 127.0.0.1 port {}.", self.port);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.log().contains(&listening) {
                drop(setup);
                self.child = Some(child);
                return true;
            }
            if child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// sshd's stderr so far.
    fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Starts `ssh … USER@127.0.0.1 'echo logged-in'` on a terminal as
    /// `ssh` says. `prompts` are waited for in order; each is answered with
    /// the next line given to [`Client::answer`].
    fn client(&self, ssh: Ssh<'_>, prompts: &[&str]) -> Client {
        let Ssh {
            user,
            locale,
            methods,
            flags,
        } = ssh;
        let n = self.serial.fetch_add(1, Ordering::SeqCst);
        let script = self.path("client.exp");
        write_file(&script, EXPECT_SCRIPT, 0o600);
        let transcript_path = self.path(&format!("client-{n}.log"));
        let transcript = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&transcript_path)
            .expect("create client transcript");
        let mut cmd = Command::new("expect");
        cmd.arg(&script)
            .arg("ssh")
            .args(["-F", "/dev/null", "-p", &self.port.to_string()])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", &format!("PreferredAuthentications={methods}")])
            .args(["-o", "NumberOfPasswordPrompts=1"])
            .args(["-o", "ConnectTimeout=30"])
            .args(["-o", "IdentityAgent=none"])
            .args(["-o", "IdentitiesOnly=yes"]);
        if methods.contains("publickey") {
            cmd.arg("-i").arg(self.path("client_key"));
        } else {
            cmd.args(["-o", "PubkeyAuthentication=no"]);
        }
        cmd.args(flags)
            .arg(format!("{user}@127.0.0.1"))
            .arg(format!("echo {LOGGED_IN}"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
            .env("LC_ALL", locale)
            .env("STEPS", prompts.len().to_string());
        for (i, p) in prompts.iter().enumerate() {
            cmd.env(format!("PROMPT_{i}"), p);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::from(transcript.try_clone().expect("dup")))
            .stderr(Stdio::from(transcript.try_clone().expect("dup")));
        // The per-connection sshd sets pam_wrapper up before the client
        // prints anything (host key warning, prompts) or ends.
        let setup = PAM_WRAPPER_SETUP.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = cmd.spawn().expect("run expect");
        let stdin = child.stdin.take();
        let deadline = Instant::now() + START_TIMEOUT;
        while transcript.metadata().map(|m| m.len()).unwrap_or(0) == 0
            && child.try_wait().expect("try_wait").is_none()
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(5));
        }
        drop(setup);
        Client {
            user: user.to_string(),
            locale: locale.to_string(),
            prompts: prompts.iter().map(|p| p.to_string()).collect(),
            child: Some(child),
            stdin,
            transcript,
            sshd_log: self.log.clone(),
            started: Instant::now(),
        }
    }

    /// A whole login whose answers are known in advance: each
    /// `(prompt, answer)` in order.
    fn login(&self, ssh: Ssh<'_>, dialogue: &[(&str, &str)]) -> Finished {
        let prompts: Vec<&str> = dialogue.iter().map(|(p, _)| *p).collect();
        let mut c = self.client(ssh, &prompts);
        for (_, answer) in dialogue {
            c.answer(answer);
        }
        c.finish()
    }

    /// Ends every process this sshd started, then sshd, and removes the
    /// pam_wrapper directories they left.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The clients have ended: give the per-connection processes a moment
        // to finish (and reap their own children) before ending them.
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut pids = descendants(child.id());
        while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
            pids = descendants(child.id());
        }
        for &pid in &pids {
            signal("-TERM", pid);
        }
        signal("-TERM", child.id());
        if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            pids.retain(|&p| alive(p));
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for &pid in &pids {
                    signal("-KILL", pid);
                }
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.remove_pam_wrapper_dirs();
    }

    /// The comment that opens this sshd's PAM service file.
    fn marker(&self) -> String {
        format!("# crm2fa sshd test {}", self.dir.path().display())
    }

    /// The `/tmp/pam.X` directories whose copy of the sshd service is this
    /// sshd's (pam_wrapper copies the service files there) and whose
    /// process is gone.
    fn remove_pam_wrapper_dirs(&self) {
        let marker = format!("{}\n", self.marker());
        let Ok(entries) = fs::read_dir("/tmp") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("pam.") && name.len() == 5) {
                continue;
            }
            let dir = entry.path();
            let service = fs::read_to_string(dir.join(PAM_SERVICE)).unwrap_or_default();
            if !service.starts_with(&marker) {
                continue;
            }
            let pid: Option<u32> = fs::read_to_string(dir.join("pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok());
            match pid {
                Some(pid) if alive(pid) => {
                    eprintln!("sshd test: {} still in use by process {pid}", dir.display())
                }
                _ => {
                    let _ = fs::remove_dir_all(&dir);
                }
            }
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// sshd's privilege-separation directory, compiled into it; systemd's unit
/// makes it (RuntimeDirectory=sshd) when the service runs.
fn ensure_privsep_dir() {
    let dir = Path::new("/run/sshd");
    if !dir.is_dir() {
        match fs::create_dir(dir) {
            Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .expect("chmod /run/sshd"),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => panic!("sshd needs /run/sshd: {e}"),
        }
    }
}

/// A port nothing listens on right now (sshd is retried if it is taken
/// in between).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

// ---------------------------------------------------------------------------
// Processes

/// Every descendant of `root`, from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some((_, ppid)) = proc_stat(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if seen.insert(c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// State letter and parent of `pid`.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …"; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Running (a zombie waiting for a parent that does not reap is not).
fn alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// `kill SIG PID`: only ever processes this test started.
fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// The client

/// How to run the client: `ssh [FLAGS] USER@127.0.0.1 'echo logged-in'`
/// with `LC_ALL=LOCALE` and `PreferredAuthentications=METHODS` (and the
/// client key if METHODS has publickey).
#[derive(Clone, Copy, Debug)]
struct Ssh<'a> {
    user: &'a str,
    locale: &'a str,
    methods: &'a str,
    flags: &'a [&'a str],
}

impl<'a> Ssh<'a> {
    /// UTF-8 locale, keyboard-interactive only, no extra flags.
    fn new(user: &'a str) -> Ssh<'a> {
        Ssh {
            user,
            locale: "C.UTF-8",
            methods: "keyboard-interactive",
            flags: &[],
        }
    }

    fn locale(self, locale: &'a str) -> Ssh<'a> {
        Ssh { locale, ..self }
    }

    fn methods(self, methods: &'a str) -> Ssh<'a> {
        Ssh { methods, ..self }
    }

    fn flags(self, flags: &'a [&'a str]) -> Ssh<'a> {
        Ssh { flags, ..self }
    }
}

/// Spawns argv on a pseudo-terminal; for each `PROMPT_i` (`STEPS` of them)
/// waits for it and types the next line of standard input; then waits for
/// the end and exits with the client's status. Everything the terminal
/// shows goes to standard output. The test enforces the deadlines; the
/// timeouts here only keep a forgotten expect from living forever.
const EXPECT_SCRIPT: &str = r#"set timeout 120
log_user 1
spawn -noecho {*}$argv
set ended 0
for {set i 0} {$i < $env(STEPS)} {incr i} {
    set prompt $env(PROMPT_$i)
    expect {
        -ex $prompt {}
        timeout { puts "\nexpect: no prompt: $prompt"; exit 124 }
        eof { puts "\nexpect: the client ended before the prompt: $prompt"; set ended 1; break }
    }
    if {[gets stdin answer] < 0} { puts "\nexpect: no answer for: $prompt"; exit 126 }
    send -- "$answer\r"
}
if {!$ended} {
    expect {
        eof {}
        timeout { puts "\nexpect: the client did not end"; exit 124 }
    }
}
lassign [wait] pid spawn_id os_error value
exit $value
"#;

/// A running `ssh` client on a terminal.
struct Client {
    user: String,
    locale: String,
    /// The prompts expect answers, in order.
    prompts: Vec<String>,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    transcript: File,
    sshd_log: PathBuf,
    started: Instant,
}

impl Client {
    /// What the terminal showed so far (`\r` removed).
    fn output(&self) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let mut offset = 0u64;
        loop {
            let n = self
                .transcript
                .read_at(&mut chunk, offset)
                .expect("read transcript");
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            offset += n as u64;
        }
        String::from_utf8_lossy(&buf).replace('\r', "")
    }

    fn report(&self, status: &str) -> String {
        report(
            &self.user,
            &self.locale,
            &format!("{status}; prompts to answer: {:?}", self.prompts),
            &self.output(),
            &fs::read_to_string(&self.sshd_log).unwrap_or_default(),
        )
    }

    /// Types `answer` at the next prompt (expect waits for the prompt).
    fn answer(&mut self, answer: &str) {
        let stdin = self.stdin.as_mut().expect("client stdin open");
        match stdin.write_all(format!("{answer}\n").as_bytes()) {
            Ok(()) => {}
            // The client already ended: the transcript says why.
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
            Err(e) => panic!("writing to expect: {e}"),
        }
    }

    /// Waits until the terminal has shown `needle` `nth` times; returns
    /// everything shown so far. Panics with both sides' output if the
    /// client ends first or the login takes too long.
    #[track_caller]
    fn wait_for(&mut self, needle: &str, nth: usize) -> String {
        loop {
            let out = self.output();
            if out.matches(needle).count() >= nth {
                return out;
            }
            let child = self.child.as_mut().expect("client running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "the client ended before showing {needle:?} (#{nth}):\n{}",
                    self.report(&status.to_string())
                );
            }
            if self.started.elapsed() > LOGIN_TIMEOUT {
                let report = self.report("still running");
                self.kill();
                panic!("the client did not show {needle:?} (#{nth}) within {LOGIN_TIMEOUT:?}:\n{report}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the end of the login.
    #[track_caller]
    fn finish(mut self) -> Finished {
        drop(self.stdin.take());
        let mut child = self.child.take().expect("client running");
        let left = LOGIN_TIMEOUT.saturating_sub(self.started.elapsed());
        let Some(status) = wait_timeout(&mut child, left) else {
            self.child = Some(child);
            let report = self.report("still running");
            self.kill();
            panic!("the client did not end within {LOGIN_TIMEOUT:?}:\n{report}");
        };
        let finished = Finished {
            user: self.user.clone(),
            locale: self.locale.clone(),
            status,
            output: self.output(),
            sshd_log: fs::read_to_string(&self.sshd_log).unwrap_or_default(),
            elapsed: self.started.elapsed(),
        };
        if std::env::var_os("CRM2FA_TEST_VERBOSE").is_some() {
            eprintln!("{finished}");
        }
        finished
    }

    /// Ends expect and the ssh client under it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            for pid in descendants(child.id()) {
                signal("-KILL", pid);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client that ended.
struct Finished {
    user: String,
    locale: String,
    /// expect's status: the ssh client's (255: authentication failed).
    status: ExitStatus,
    /// What the terminal showed, `\r` removed.
    output: String,
    /// sshd's stderr when the client had ended.
    sshd_log: String,
    elapsed: Duration,
}

impl Finished {
    fn count(&self, needle: &str) -> usize {
        self.output.matches(needle).count()
    }

    /// The remote command ran.
    #[track_caller]
    fn assert_logged_in(&self) -> &Self {
        assert!(
            self.status.success() && self.output.lines().any(|l| l.trim() == LOGGED_IN),
            "expected the remote command to run:\n{self}"
        );
        assert!(
            self.sshd_log.contains(&format!(
                "Accepted keyboard-interactive/pam for {}",
                self.user
            )),
            "sshd did not log the keyboard-interactive (PAM) success:\n{self}"
        );
        self
    }

    /// Refused by sshd, the command never ran.
    #[track_caller]
    fn assert_denied(&self) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(255),
            "expected ssh to fail (255):\n{self}"
        );
        assert!(self.output.contains(DENIED), "no {DENIED:?}:\n{self}");
        assert!(
            !self.output.lines().any(|l| l.trim() == LOGGED_IN),
            "the command ran:\n{self}"
        );
        self
    }
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = format!("{}, after {:?}", self.status, self.elapsed);
        f.write_str(&report(
            &self.user,
            &self.locale,
            &status,
            &self.output,
            &self.sshd_log,
        ))
    }
}

fn report(user: &str, locale: &str, status: &str, client: &str, sshd: &str) -> String {
    let mut s = format!("--- ssh client of {user:?} (LC_ALL={locale}): {status} ---\n{client}");
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str("--- sshd stderr ---\n");
    s.push_str(sshd);
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str("--- end ---");
    s
}

// ---------------------------------------------------------------------------
// QR codes as a terminal shows them

/// How the module drew the QR code (`qr=` module argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QrDrawing {
    /// Half blocks: one character is one module wide and two tall.
    Unicode,
    /// `##`: two characters are one module wide, one line tall.
    Ascii,
}

impl QrDrawing {
    fn arg(self) -> &'static str {
        match self {
            QrDrawing::Unicode => "qr=unicode",
            QrDrawing::Ascii => "qr=ascii",
        }
    }

    fn cells(self) -> &'static [char] {
        match self {
            QrDrawing::Unicode => &[' ', '▀', '▄', '█'],
            QrDrawing::Ascii => &[' ', '#'],
        }
    }
}

/// The longest run of consecutive lines of `text` made only of the
/// drawing's characters (with at least one drawn cell).
fn qr_lines(text: &str, drawing: QrDrawing) -> Vec<&str> {
    let is_qr = |l: &str| {
        !l.trim().is_empty()
            && l.chars().count() >= 21
            && l.chars().all(|c| drawing.cells().contains(&c))
    };
    let mut best: Vec<&str> = Vec::new();
    let mut run: Vec<&str> = Vec::new();
    for line in text.lines() {
        if is_qr(line) {
            run.push(line);
        } else {
            if run.len() > best.len() {
                best = std::mem::take(&mut run);
            }
            run.clear();
        }
    }
    if run.len() > best.len() {
        best = run;
    }
    best
}

/// The modules (true: light) of the QR code the lines draw. The module
/// draws light modules and leaves dark ones blank, for the usual
/// light-on-dark terminal.
fn qr_modules(lines: &[&str], drawing: QrDrawing) -> Vec<Vec<bool>> {
    let mut rows = Vec::new();
    for line in lines {
        let chars: Vec<char> = line.chars().collect();
        match drawing {
            QrDrawing::Unicode => {
                let half = |c: char, top: bool| match c {
                    '█' => true,
                    '▀' => top,
                    '▄' => !top,
                    _ => false,
                };
                rows.push(chars.iter().map(|&c| half(c, true)).collect());
                rows.push(chars.iter().map(|&c| half(c, false)).collect());
            }
            QrDrawing::Ascii => {
                assert!(chars.len().is_multiple_of(2), "odd ## line: {line:?}");
                rows.push(chars.chunks(2).map(|p| p[0] == '#').collect());
            }
        }
    }
    // A half-block drawing of an odd number of rows ends with half a line.
    let width = rows.first().map(Vec::len).unwrap_or(0);
    if rows.len() == width + 1 {
        rows.pop();
    }
    rows
}

/// Writes `modules` as a binary PGM, `scale` pixels a module, light
/// modules white, with a white margin of `margin` modules.
fn write_pgm(path: &Path, modules: &[Vec<bool>], scale: usize, margin: usize) {
    let w = modules.iter().map(Vec::len).max().unwrap_or(0);
    let h = modules.len();
    let (pw, ph) = ((w + 2 * margin) * scale, (h + 2 * margin) * scale);
    let mut out = format!("P5\n{pw} {ph}\n255\n").into_bytes();
    for y in 0..ph {
        for x in 0..pw {
            let (my, mx) = ((y / scale) as isize, (x / scale) as isize);
            let (my, mx) = (my - margin as isize, mx - margin as isize);
            let light = if my < 0 || mx < 0 {
                true
            } else {
                modules
                    .get(my as usize)
                    .and_then(|r| r.get(mx as usize))
                    .copied()
                    .unwrap_or(true)
            };
            out.push(if light { 255 } else { 0 });
        }
    }
    write_bytes(path, &out, 0o600);
}

/// Reconstructs the QR code drawn in `shown` and decodes it with zbarimg.
#[track_caller]
fn decode_qr(shown: &str, drawing: QrDrawing, image: &Path) -> String {
    let lines = qr_lines(shown, drawing);
    assert!(
        lines.len() >= 10,
        "no {drawing:?} QR code in what the client showed:\n{shown}"
    );
    let modules = qr_modules(&lines, drawing);
    let width = modules[0].len();
    assert!(
        modules.iter().all(|r| r.len() == width) && modules.len() == width,
        "the {drawing:?} QR code is not square ({} rows, widths {:?}):\n{}",
        modules.len(),
        modules.iter().map(Vec::len).collect::<BTreeSet<_>>(),
        lines.join("\n")
    );
    write_pgm(image, &modules, 6, 8);
    let out = run_command(
        {
            let mut c = Command::new("zbarimg");
            c.args(["--raw", "-q"]).arg(image);
            c
        },
        "zbarimg",
    );
    assert!(
        out.status.success(),
        "zbarimg could not decode the {drawing:?} QR code ({} modules) the client showed:\n{}\n{}",
        width,
        lines.join("\n"),
        show_output(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The `secret` parameter of an otpauth URI.
fn uri_secret(uri: &str) -> String {
    let query = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("secret="))
        .unwrap_or_else(|| panic!("no secret in {uri:?}"))
        .to_string()
}

// ---------------------------------------------------------------------------
// Tests

/// alice, enrolled and active, behind password + code.
fn alice_with_password_and_code() -> (Sandbox, Enrolled, Sshd) {
    let (sb, e) = Sandbox::with_active_user(OPT_IN, "alice", PW);
    let mut sshd = Sshd::prepare(&["alice"]);
    let stack = [sb.matrix_line(), sb.module_line("required", "")];
    sshd.start("keyboard-interactive", &stack);
    (sb, e, sshd)
}

/// The audit records of `user` the module wrote under sshd.
fn sshd_audit(sb: &Sandbox, user: &str) -> Vec<serde_json::Value> {
    sb.audit(user)
        .into_iter()
        .filter(|r| r["service"] == PAM_SERVICE)
        .collect()
}

#[test]
fn ssh_with_password_and_totp_code_runs_the_command() {
    let (sb, e, sshd) = alice_with_password_and_code();
    wait_for_step_margin(Duration::from_secs(5));
    let code = totp(&e.secret, 0);

    let r = sshd.login(
        Ssh::new("alice"),
        &[(PASSWORD_PROMPT, PW), (CODE_PROMPT, &code)],
    );
    r.assert_logged_in();
    assert_eq!(r.count(CODE_PROMPT), 1, "one code prompt:\n{r}");
    assert_eq!(r.count(INVALID_CODE), 0, "{r}");
    let password_at = r.output.find("(alice@127.0.0.1) Password: ");
    let code_at = r.output.find(CODE_PROMPT);
    assert!(
        password_at.is_some() && password_at < code_at,
        "the password (pam_matrix) comes first:\n{r}"
    );
    let audit = sshd_audit(&sb, "alice");
    assert!(
        audit.iter().any(|a| a["event"] == "login"
            && a["outcome"] == "success"
            && a["rhost"] == "127.0.0.1"),
        "no successful login under service sshd from 127.0.0.1 in the audit: {audit:#?}\n{r}"
    );
}

#[test]
fn ssh_with_three_wrong_codes_is_permission_denied() {
    let (sb, e, sshd) = alice_with_password_and_code();
    let wrong = wrong_codes(&e.secret, 3);

    let r = sshd.login(
        Ssh::new("alice"),
        &[
            (PASSWORD_PROMPT, PW),
            (CODE_PROMPT, &wrong[0]),
            (CODE_PROMPT, &wrong[1]),
            (CODE_PROMPT, &wrong[2]),
        ],
    );
    r.assert_denied();
    assert!(
        r.output
            .contains("Permission denied (keyboard-interactive)"),
        "{r}"
    );
    assert_eq!(r.count(CODE_PROMPT), 3, "three code prompts:\n{r}");
    // The first two come with the next prompt; sshd sends the last one,
    // after which PAM failed, as the text of a request without a prompt.
    assert_eq!(r.count(INVALID_CODE), 3, "{r}");
    assert!(
        r.sshd_log
            .contains("Failed keyboard-interactive/pam for alice from 127.0.0.1"),
        "sshd did not log the PAM failure:\n{r}"
    );
    let failures = sshd_audit(&sb, "alice")
        .into_iter()
        .filter(|a| a["event"] == "login" && a["outcome"] == "failure")
        .count();
    assert_eq!(
        failures, 3,
        "each wrong code is a failure in the audit:\n{r}"
    );
}

#[test]
fn ssh_with_a_backup_code_is_told_how_many_are_left() {
    let (sb, e, sshd) = alice_with_password_and_code();

    let r = sshd.login(
        Ssh::new("alice"),
        &[(PASSWORD_PROMPT, PW), (CODE_PROMPT, &e.backup_codes[0])],
    );
    r.assert_logged_in();
    let left = BACKUP_CODES - 1;
    // Sent after the last prompt: sshd passes it on as the SSH banner,
    // which the client prints at its default LogLevel (not with -q).
    let message = format!("Backup code accepted; it cannot be used again. {left} left.");
    let shown = r.output.find(&message);
    assert!(
        shown.is_some() && shown < r.output.find(LOGGED_IN),
        "the message after the last prompt did not reach the client before the command ran:\n{r}"
    );
    assert_eq!(sb.status("alice")["backup_codes_left"], left);
}

#[test]
fn ssh_with_publickey_then_keyboard_interactive_asks_for_the_code() {
    // README "Key + code": the key first, then a PAM stack that asks only
    // for the code.
    let (sb, e) = Sandbox::with_active_user(OPT_IN, "alice", PW);
    let mut sshd = Sshd::prepare(&["alice"]);
    let stack = [
        sb.module_line("required", ""),
        "auth required pam_permit.so".to_string(),
    ];
    sshd.start("publickey,keyboard-interactive", &stack);
    wait_for_step_margin(Duration::from_secs(5));
    let code = totp(&e.secret, 0);
    let with_key = Ssh::new("alice").methods("publickey,keyboard-interactive");

    let r = sshd.login(with_key, &[(CODE_PROMPT, &code)]);
    r.assert_logged_in();
    assert_eq!(r.count(CODE_PROMPT), 1, "{r}");
    assert_eq!(
        r.count(PASSWORD_PROMPT),
        0,
        "no password after the key:\n{r}"
    );
    assert!(
        r.sshd_log.contains("Partial publickey for alice"),
        "the key was not the first method:\n{r}"
    );

    // Without the key, the code step is never reached.
    let audit_before = sshd_audit(&sb, "alice").len();
    let r = sshd.login(Ssh::new("alice"), &[]);
    r.assert_denied();
    assert!(r.output.contains("Permission denied (publickey)"), "{r}");
    assert_eq!(r.count(CODE_PROMPT), 0, "{r}");
    assert_eq!(
        sshd_audit(&sb, "alice").len(),
        audit_before,
        "the module ran without the key:\n{r}"
    );
}

/// In-login enrolment over SSH, the module drawing the QR code with
/// `drawing` and the client run as `ssh` says: the QR code scans and
/// matches the URI shown, its code logs in, and the backup codes reach the
/// client before the last prompt.
fn enrol_over_ssh(drawing: QrDrawing, ssh: Ssh<'_>) {
    let sb = Sandbox::with_config(ENROLL_IN_LOGIN);
    sb.add_user(ssh.user, PW);
    let mut sshd = Sshd::prepare(&[ssh.user]);
    let stack = [sb.matrix_line(), sb.module_line("required", drawing.arg())];
    sshd.start("keyboard-interactive", &stack);

    let mut c = sshd.client(ssh, &[PASSWORD_PROMPT, CODE_PROMPT, SAVED_PROMPT]);
    c.answer(PW);
    let shown = c.wait_for(CODE_PROMPT, 1);
    let before_prompt = &shown[..shown.find(CODE_PROMPT).expect("prompt shown")];
    let decoded = decode_qr(before_prompt, drawing, &sshd.path("qr.pgm"));
    assert!(
        decoded.starts_with("otpauth://totp/"),
        "the QR code holds {decoded:?}:\n{}",
        c.report("running")
    );
    assert!(
        before_prompt.contains(&format!("URI: {decoded}")),
        "the QR code and the URI shown differ ({decoded:?}):\n{}",
        c.report("running")
    );
    let secret = uri_secret(&decoded);
    c.answer(&totp(&secret, 0));

    let shown = c.wait_for(SAVED_PROMPT, 1);
    let saved_at = shown.find(SAVED_PROMPT).expect("prompt shown");
    let codes: Vec<String> = shown[..saved_at]
        .lines()
        .skip_while(|l| !l.contains("backup codes"))
        .filter(|l| l.starts_with("    ") && !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(
        codes.len(),
        BACKUP_CODES,
        "the backup codes must reach the client before {SAVED_PROMPT:?}:\n{}",
        c.report("running")
    );
    c.answer("");
    let r = c.finish();
    r.assert_logged_in();
    assert_eq!(r.count(INVALID_CODE), 0, "{r}");

    let status = sb.status(ssh.user);
    assert_eq!(status["state"], "active", "{status}\n{r}");
    assert_eq!(status["backup_codes_left"], BACKUP_CODES, "{status}");
    // What the client showed are the user's real backup codes.
    for code in [&codes[0], &codes[BACKUP_CODES - 1]] {
        let out = sb.admin(&["check", ssh.user, code]);
        assert!(
            out.status.success(),
            "backup code {code} shown over SSH is not valid:\n{}\n{r}",
            show_output(&out)
        );
    }
}

#[test]
fn ssh_enrolment_in_a_utf8_client_shows_a_half_block_qr_code_that_scans() {
    enrol_over_ssh(QrDrawing::Unicode, Ssh::new("bob"));
}

#[test]
fn ssh_enrolment_in_a_c_locale_client_shows_an_ascii_qr_code_that_scans() {
    enrol_over_ssh(QrDrawing::Ascii, Ssh::new("bob").locale("C"));
}

#[test]
fn ssh_enrolment_reaches_a_quiet_client_because_it_ends_with_a_prompt() {
    // `ssh -q` prints no banner and no prompt-less text: what comes with a
    // prompt (the QR code with the code prompt, the backup codes with the
    // last one) is all a quiet client shows.
    enrol_over_ssh(QrDrawing::Unicode, Ssh::new("bob").flags(&["-q"]));
}
