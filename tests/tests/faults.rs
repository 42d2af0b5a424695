//! Faults from outside the module, end to end: a full disk under the store,
//! a login process killed at the prompt or in the middle of its write, an
//! administrator's transaction holding the store's write lock, damaged or
//! replaced files, and the clock stepped backwards. In each case the login
//! fails closed (or works) for the right reason, says why in its log, and
//! leaves the store consistent: a code is consumed entirely or not at all.
//!
//! Some logins run in a private mount namespace (`nsenter` as the wrapper)
//! or with libfaketime preloaded: [`Sandbox::login_opts`] with
//! [`LoginOptions`].

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crm2fa_tests::*;

const PW: &str = "correct horse";
/// No lockout in the way of tests that offer refused codes on purpose.
const NO_LOCKOUT: &str = "[policy]\nenforce = \"opt-in\"\n[lockout]\nmax_failures = 1000\n";
/// The store's busy timeout (`BUSY_TIMEOUT` in common/src/store/sqlite.rs):
/// how long a write waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for one process started here; only a hang comes near it.
const HANG: Duration = Duration::from_secs(60);
/// libfaketime, from Debian's `libfaketime` package (`apt-get install faketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn s(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------
// The store, seen from outside

/// A sibling of the store: `-wal`, `-shm`.
fn side_file(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// `PRAGMA integrity_check` by the sqlite3 CLI, read-only (a read-only
/// connection neither writes nor checkpoints, so the files stay as the
/// module left them). `prefix` runs it elsewhere (`nsenter …`).
#[track_caller]
fn assert_integrity_ok(prefix: &[OsString], db: &Path) {
    let mut args = prefix.to_vec();
    args.extend([
        "sqlite3".into(),
        "-readonly".into(),
        db.into(),
        "PRAGMA integrity_check;".into(),
    ]);
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]);
    let out = run_command(cmd, "sqlite3 integrity_check");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "integrity check of {}:\n{}",
        db.display(),
        show_output(&out)
    );
}

/// The sqlite3 CLI on `db` with one SQL text; panics unless it succeeds.
fn sqlite3(db: &Path, sql: &str) -> String {
    let mut cmd = Command::new("sqlite3");
    cmd.arg(db).arg(sql);
    let out = run_command(cmd, "sqlite3");
    assert!(
        out.status.success(),
        "sqlite3 {sql:?}:\n{}",
        show_output(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Moves everything in the WAL into the store file and removes the WAL, so
/// the .db alone is the whole store (as after a clean shutdown).
fn checkpoint(db: &Path) {
    sqlite3(db, "PRAGMA wal_checkpoint(TRUNCATE);");
    for suffix in ["-wal", "-shm"] {
        let _ = fs::remove_file(side_file(db, suffix));
    }
}

// ---------------------------------------------------------------------------
// A private mount namespace

/// A process in its own mount namespace with a tmpfs mounted on one
/// directory: only processes entered into it (`nsenter`) see the tmpfs, and
/// the mount goes away with the namespace when the holder ends. Nothing
/// is ever mounted in the test's own namespace.
struct MountNamespace {
    holder: Child,
    stdin: Option<ChildStdin>,
    pid: String,
}

impl MountNamespace {
    /// `unshare --mount` (private propagation) running a shell that mounts
    /// a tmpfs of `size` (mode 0700, root's) on `dir`, then waits for its
    /// stdin to close.
    fn with_tmpfs(dir: &Path, size: &str) -> MountNamespace {
        let script = "mount -t tmpfs -o \"size=$1,mode=0700,uid=0,gid=0\" crm2fa-faults \"$2\" \
                      && echo mounted && read line";
        let mut holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(size)
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run unshare (util-linux)");
        let stdin = holder.stdin.take();
        let mut line = String::new();
        BufReader::new(holder.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read from unshare");
        if line.trim() != "mounted" {
            let mut err = String::new();
            let _ = holder
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err);
            panic!(
                "could not mount a tmpfs on {} in a new mount namespace: {err}",
                dir.display()
            );
        }
        let pid = holder.id().to_string();
        MountNamespace { holder, stdin, pid }
    }

    /// `nsenter` into the namespace: put in front of a command.
    fn enter(&self) -> Vec<OsString> {
        ["nsenter", "-t", &self.pid, "-m", "--"]
            .into_iter()
            .map(OsString::from)
            .collect()
    }

    /// Runs `sh -c script` inside the namespace.
    fn sh(&self, script: &str) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid, "-m", "--", "sh", "-c", script]);
        run_command(cmd, "sh in the mount namespace")
    }

    /// Like [`MountNamespace::sh`], panicking unless it exits 0.
    #[track_caller]
    fn sh_ok(&self, script: &str) -> Output {
        let out = self.sh(script);
        assert!(out.status.success(), "{script}:\n{}", show_output(&out));
        out
    }
}

impl Drop for MountNamespace {
    fn drop(&mut self) {
        // End of input ends the holder, and with it the namespace.
        drop(self.stdin.take());
        if wait_timeout(&mut self.holder, Duration::from_secs(5)).is_none() {
            let _ = self.holder.kill();
            let _ = self.holder.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// 1. A full disk

#[test]
fn a_full_disk_denies_the_login_says_why_and_consumes_no_code() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");

    // The store moves to `full/`, a 2 MiB tmpfs of a private mount
    // namespace (root's, 0700, like /var/lib/crm2fa), with the -wal and
    // -shm an earlier login left behind, as on a host in use.
    let full = sb.root().join("full");
    fs::create_dir(&full).unwrap();
    fs::set_permissions(&full, fs::Permissions::from_mode(0o700)).unwrap();
    let ns = MountNamespace::with_tmpfs(&full, "2m");
    let db = full.join("crm2fa.db");
    ns.sh_ok(&format!(
        "cp -p '{src}' '{src}-wal' '{src}-shm' '{full}/'",
        src = s(&sb.store_path()),
        full = s(&full)
    ));
    sb.write_config(&format!(
        "[store]\npath = \"full/crm2fa.db\"\nkey_file = \"secret.key\"\n\n{OPT_IN}"
    ));
    for f in [db.clone(), side_file(&db, "-wal"), side_file(&db, "-shm")] {
        let mode = ns.sh_ok(&format!("stat -c %a '{}'", s(&f)));
        assert_eq!(String::from_utf8_lossy(&mode.stdout).trim(), "600", "{f:?}");
    }

    // Fill the file system: the filler's write ends with ENOSPC, and then
    // not one more byte fits.
    ns.sh(&format!("cat /dev/zero > '{}/filler'", s(&full)));
    let probe = ns.sh(&format!(
        "printf x > '{full}/probe'; rc=$?; rm -f '{full}/probe'; exit $rc",
        full = s(&full)
    ));
    assert!(!probe.status.success(), "the tmpfs is not full");

    wait_for_step_margin(Duration::from_secs(5));
    let code = totp(&e.secret, 0);
    let in_ns = LoginOptions {
        wrapper: ns.enter(),
        ..LoginOptions::default()
    };
    let r = sb.login_opts("alice", &[PW, &code], &in_ns);
    r.assert_denied();
    assert_eq!(r.pam_result(), PamResult::AuthinfoUnavail, "{r}");
    assert_eq!(
        r.prompts_seen, 1,
        "the store is read, the code asked for: {r}"
    );
    assert_eq!(
        r.invalid_code_messages(),
        0,
        "the code was not refused: {r}"
    );
    assert!(
        !r.debug_lines_with(&[&s(&db), "full"]).is_empty(),
        "the log names the store and says the disk is full:\n{r}"
    );

    // Nothing half-written: the store is intact on the full disk.
    assert_integrity_ok(&ns.enter(), &db);

    // Room again: the same code works, so the failed login consumed nothing.
    ns.sh_ok(&format!("rm '{}/filler'", s(&full)));
    sb.login_opts("alice", &[PW, &code], &in_ns)
        .assert_success();
    assert_integrity_ok(&ns.enter(), &db);
}

// ---------------------------------------------------------------------------
// 2. A login process killed with SIGKILL

/// SIGKILL, as the OOM killer or an impatient `kill -9` sends it.
fn sigkill(pid: u32) {
    let mut kill = Command::new("kill");
    kill.args(["-KILL", &pid.to_string()]);
    let out = run_command(kill, "kill");
    // A process that already ended is a zombie until reaped: kill succeeds.
    assert!(
        out.status.success(),
        "kill -KILL {pid}:\n{}",
        show_output(&out)
    );
}

/// A killed pamtester leaves its pam_wrapper directory (/tmp/pam.X, with
/// its pid in `pid`) behind; pam_wrapper would reclaim it later, this
/// does it now so killed logins never use up the 62 names.
fn remove_pam_wrapper_dir_of(pid: u32) {
    for entry in fs::read_dir("/tmp").expect("read /tmp").flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.len() == 5 && name.starts_with("pam.") {
            let owner = fs::read_to_string(entry.path().join("pid")).unwrap_or_default();
            if owner.trim() == pid.to_string() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Only the module: its code prompt is the login's first, so a test can
/// hold the login there (nothing answered yet) or time it from the answer.
fn module_only_stack(sb: &Sandbox) {
    sb.set_stack(&[
        sb.module_line("required", ""),
        "account required pam_permit.so".to_string(),
    ]);
}

/// Waits, polling finely, until the transcript shows `needle`; returns
/// when it did.
fn poll_for(p: &PendingLogin, needle: &str) -> Instant {
    let deadline = Instant::now() + HANG;
    while !p.output_so_far().contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} within {HANG:?}");
        thread::sleep(Duration::from_micros(200));
    }
    Instant::now()
}

/// A small xorshift generator: random enough to spread kill delays.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        Rng(u64::from(nanos) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// What a later login with the same code says about a killed login's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeAfterKill {
    /// Not consumed: the later login accepted it (and consumed it).
    StillUsable,
    /// Consumed by the killed login: the later login refused it.
    Consumed,
}

/// Logs alice in with `code` after a kill: it must work, or be refused as a
/// used code; anything else (a store error, a wait for a lock the killed
/// process held) is a store left in between.
#[track_caller]
fn code_after_kill(sb: &Sandbox, code: &str, killed: &LoginResult) -> CodeAfterKill {
    let r = sb.login("alice", &[code]);
    assert!(
        r.exited_normally(),
        "the login after the kill crashed:\n{killed}\n{r}"
    );
    assert!(
        r.elapsed < BUSY_TIMEOUT,
        "the login after the kill waited for a lock ({:?}):\n{killed}\n{r}",
        r.elapsed
    );
    if r.success {
        return CodeAfterKill::StillUsable;
    }
    assert_eq!(
        (r.pam_result(), r.invalid_code_messages()),
        (PamResult::AuthErr, 1),
        "after the kill the code is neither usable nor refused as used:\n{killed}\n{r}"
    );
    CodeAfterKill::Consumed
}

#[test]
fn a_login_killed_at_the_code_prompt_leaves_no_lock_and_its_code_usable() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    module_only_stack(&sb);
    wait_for_step_margin(Duration::from_secs(5));
    let code = totp(&e.secret, 0);

    // The login waits at the prompt, its answer not yet sent.
    let mut p = sb.spawn_login("alice", &[&code]);
    p.wait_for(CODE_PROMPT, HANG);
    let pid = p.pid();
    sigkill(pid);
    let killed = p.finish();
    remove_pam_wrapper_dir_of(pid);
    assert_eq!(killed.status.signal(), Some(9), "{killed}");

    // The code it never sent is still good, at once.
    assert_eq!(
        code_after_kill(&sb, &code, &killed),
        CodeAfterKill::StillUsable
    );
    assert_integrity_ok(&[], &sb.store_path());
}

#[test]
fn a_login_killed_during_its_write_consumes_its_code_entirely_or_not_at_all() {
    const KILLS: usize = 20;
    let sb = Sandbox::with_config(&format!(
        "{NO_LOCKOUT}[backup_codes]\ncount = {}\n",
        KILLS + 1
    ));
    sb.add_user("alice", PW);
    // Backup codes: one per kill, each usable once whatever the time.
    let codes = sb.enroll_active("alice").backup_codes;
    module_only_stack(&sb);

    // How long a login takes from its answer to the commit of its write
    // (the module logs the success right after it).
    let mut p = sb.spawn_login("alice", &[&codes[0]]);
    p.wait_for(CODE_PROMPT, HANG);
    p.send_answers();
    let sent = Instant::now();
    let commit = poll_for(&p, "login success") - sent;
    p.finish().assert_success();

    // The kills home in on the commit: each comes at a random delay around
    // a centre that moves earlier after a kill that left the code consumed
    // and later after one that left it usable (a staircase), so they land
    // on both sides of the commit and within its few milliseconds.
    let mut rng = Rng::seeded();
    let seed = rng.0;
    let jitter = (commit / 8).max(Duration::from_millis(2));
    let mut centre = commit;
    let mut outcomes = vec![];
    for code in &codes[1..=KILLS] {
        let mut p = sb.spawn_login("alice", &[code]);
        p.wait_for(CODE_PROMPT, HANG);
        let pid = p.pid();
        let offset = rng.below(2 * jitter.as_micros() as u64);
        let delay = (centre + Duration::from_micros(offset)).saturating_sub(jitter);
        p.send_answers();
        thread::sleep(delay);
        sigkill(pid);
        let killed = p.finish();
        remove_pam_wrapper_dir_of(pid);
        let was_killed = killed.status.signal() == Some(9);
        let after = code_after_kill(&sb, code, &killed);
        if !was_killed {
            // The kill came after the end: the login was complete.
            killed.assert_success();
            assert_eq!(after, CodeAfterKill::Consumed, "{killed}");
        }
        centre = match after {
            CodeAfterKill::Consumed => delay.saturating_sub(jitter / 2),
            CodeAfterKill::StillUsable => delay + jitter / 2,
        };
        outcomes.push((delay, was_killed, after));
    }
    let summary = format!("commit after {commit:?}, seed {seed}: {outcomes:?}");

    // Every code was used exactly once, by the killed login or the next,
    // and the audit row of each went in with it.
    assert_integrity_ok(&[], &sb.store_path());
    let st = sb.status("alice");
    assert_eq!(st["backup_codes_left"], 0, "{st}\n{summary}");
    let accepted = sb
        .audit("alice")
        .into_iter()
        .filter(|a| a["event"] == "login" && a["outcome"] == "success")
        .count();
    assert_eq!(
        accepted,
        KILLS + 1,
        "audit rows of accepted codes\n{summary}"
    );
    // The kills fell on both sides of the commit: some cut a login short
    // before it, some came after it.
    assert!(
        outcomes
            .iter()
            .any(|(_, killed, after)| *killed && *after == CodeAfterKill::StillUsable),
        "no kill came before the commit: {summary}"
    );
    assert!(
        outcomes
            .iter()
            .any(|(_, _, after)| *after == CodeAfterKill::Consumed),
        "no kill came after the commit: {summary}"
    );
}

// ---------------------------------------------------------------------------
// 3. An administrator's transaction holding the write lock

/// An administrator's `sqlite3` shell inside `BEGIN IMMEDIATE` on the
/// store: it holds the write lock until [`WriteLock::release`].
struct WriteLock {
    shell: Child,
    stdin: Option<ChildStdin>,
}

impl WriteLock {
    fn hold(db: &Path) -> WriteLock {
        // -bail: a BEGIN that fails ends the shell instead of going on.
        let mut shell = Command::new("sqlite3")
            .args(["-batch", "-bail"])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run sqlite3");
        let mut stdin = shell.stdin.take().expect("stdin");
        stdin
            .write_all(b"BEGIN IMMEDIATE;\nSELECT 'holding';\n")
            .expect("write to sqlite3");
        // The SELECT answers once BEGIN IMMEDIATE has the lock.
        let mut line = String::new();
        BufReader::new(shell.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read from sqlite3");
        assert_eq!(
            line.trim(),
            "holding",
            "sqlite3 did not take the write lock"
        );
        WriteLock {
            shell,
            stdin: Some(stdin),
        }
    }

    /// Ends the transaction and the shell.
    fn release(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            stdin.write_all(b"ROLLBACK;\n").expect("write to sqlite3");
        }
        // A hang panics; the drop then kills the shell.
        let status = wait_timeout(&mut self.shell, HANG)
            .unwrap_or_else(|| panic!("sqlite3 hung for {HANG:?}"));
        assert!(status.success(), "sqlite3 ended with {status}");
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if wait_timeout(&mut self.shell, Duration::from_secs(5)).is_none() {
            let _ = self.shell.kill();
            let _ = self.shell.wait();
        }
    }
}

/// A login while another process holds the store's write lock for longer
/// than the busy timeout. The store opens and the user is read before the
/// prompt (WAL readers never wait for a writer), so the wait comes at the
/// write that would consume the code, after the prompt: the login is then
/// denied whatever `failmode` says, with the reason in its log, and it has
/// consumed nothing.
fn login_behind_a_held_write_lock(failmode: &str, log_says: &str) {
    let sb = Sandbox::with_config(&format!(
        "[policy]\nenforce = \"opt-in\"\nfailmode = \"{failmode}\"\n"
    ));
    sb.add_user("alice", PW);
    let e = sb.enroll_active("alice");
    // Good for this step and the next: both logins fall inside its window.
    let code = totp(&e.secret, 0);

    let lock = WriteLock::hold(&sb.store_path());
    let r = sb.login("alice", &[PW, &code]);
    r.assert_denied();
    assert_eq!(r.pam_result(), PamResult::AuthinfoUnavail, "{r}");
    assert_eq!(r.prompts_seen, 1, "{r}");
    assert_eq!(
        r.invalid_code_messages(),
        0,
        "the code was not refused: {r}"
    );
    assert!(
        r.elapsed < Duration::from_secs(25),
        "the login waited {:?}, far past the busy timeout of {BUSY_TIMEOUT:?}:\n{r}",
        r.elapsed
    );
    assert!(
        !r.debug_lines_with(&[&s(&sb.store_path()), "locked", log_says])
            .is_empty(),
        "the log names the store, the lock and the failmode decision:\n{r}"
    );

    // Released: the same code works at once, so the blocked login
    // consumed nothing.
    lock.release();
    let r = sb.login("alice", &[PW, &code]);
    r.assert_success();
    assert!(r.elapsed < BUSY_TIMEOUT, "{r}");
}

#[test]
fn a_write_lock_held_past_the_busy_timeout_denies_the_login_under_either_failmode() {
    // Side by side: each waits out the busy timeout.
    thread::scope(|scope| {
        let secure = scope.spawn(|| login_behind_a_held_write_lock("secure", "failmode = secure"));
        let safe =
            scope.spawn(|| login_behind_a_held_write_lock("safe", "a code was already asked for"));
        for (failmode, t) in [("secure", secure), ("safe", safe)] {
            if let Err(panic) = t.join() {
                eprintln!("failmode = {failmode:?} failed");
                std::panic::resume_unwind(panic);
            }
        }
    });
}

// ---------------------------------------------------------------------------
// 4. Damaged, replaced or unreadable files (failures.rs has the missing,
//    garbage and badly owned ones)

/// A sandbox with one active user, `alice`; returns it and her secret.
fn sandbox_with_alice() -> (Sandbox, String) {
    let (sb, e) = Sandbox::with_active_user(OPT_IN, "alice", PW);
    (sb, e.secret)
}

/// `doctor` exits 1 with a PROBLEM line of the check `check` (any check
/// when empty) naming `file`, and a `fix:` line right under it; returns
/// the fix.
#[track_caller]
fn assert_doctor_names(sb: &Sandbox, check: &str, file: &Path) -> String {
    let out = sb.admin(&["doctor"]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let Some(i) = lines
        .iter()
        .position(|l| l.starts_with("PROBLEM") && l.contains(check) && l.contains(&s(file)))
    else {
        panic!(
            "doctor has no PROBLEM line for the {check} naming {}:\n{}",
            file.display(),
            show_output(&out)
        )
    };
    let fix = lines.get(i + 1).map(|l| l.trim()).unwrap_or_default();
    assert!(
        fix.starts_with("fix: ") && fix.len() > "fix: ".len(),
        "no fix line under the {check} problem:\n{}",
        show_output(&out)
    );
    fix["fix: ".len()..].to_string()
}

#[test]
fn a_truncated_store_denies_the_login_and_doctor_names_it_with_a_fix() {
    let (sb, secret) = sandbox_with_alice();
    let db = sb.store_path();
    // The whole store in the .db, then the second half of its pages gone
    // (a copy cut short, a full disk during a restore). The file itself may
    // be longer than its pages: it grows by whole chunks.
    checkpoint(&db);
    let page_size: u64 = sqlite3(&db, "PRAGMA page_size;").parse().unwrap();
    let pages: u64 = sqlite3(&db, "PRAGMA page_count;").parse().unwrap();
    OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(pages / 2 * page_size)
        .unwrap();

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    r.assert_unavailable_naming(&[&s(&db)]);
    assert_doctor_names(&sb, "store", &db);
}

#[test]
fn a_store_with_a_damaged_page_denies_the_login_and_doctor_names_it_with_a_fix() {
    let (sb, secret) = sandbox_with_alice();
    let db = sb.store_path();
    checkpoint(&db);
    // Overwrite the root page of the users table: the header and schema
    // are intact, so the store opens, but the user cannot be read.
    let page_size: u64 = sqlite3(&db, "PRAGMA page_size;").parse().unwrap();
    let root: u64 = sqlite3(
        &db,
        "SELECT rootpage FROM sqlite_master WHERE name = 'users';",
    )
    .parse()
    .unwrap();
    let garbage: Vec<u8> = (0..page_size as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .write_all_at(&garbage, (root - 1) * page_size)
        .unwrap();

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    r.assert_unavailable_naming(&[&s(&db)]);
    assert_doctor_names(&sb, "store", &db);
}

#[test]
fn a_key_file_replaced_by_another_key_denies_the_login_and_doctor_names_it() {
    let (sb, secret) = sandbox_with_alice();
    // A valid key, but not the one that sealed alice's secret (a key file
    // restored from another host's backup).
    write_file(&sb.key_path(), &format!("{}\n", "5a".repeat(32)), 0o600);

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    assert_eq!(r.prompts_seen, 0, "{r}");
    r.assert_unavailable_naming(&[&s(&sb.key_path())]);
    // Whichever check notices (the key file, the secrets it opens).
    assert_doctor_names(&sb, "", &sb.key_path());
}

#[test]
fn a_key_file_holding_garbage_denies_the_login_and_doctor_names_it_with_a_fix() {
    let (sb, secret) = sandbox_with_alice();
    write_bytes(&sb.key_path(), b"\x00\x01not a key at all\xff\n", 0o600);

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    assert_eq!(r.prompts_seen, 0, "{r}");
    r.assert_unavailable_naming(&[&s(&sb.key_path())]);
    assert_doctor_names(&sb, "key file", &sb.key_path());
}

#[test]
fn a_config_that_is_not_utf8_denies_the_login_and_doctor_gives_a_fix_that_works() {
    let (sb, secret) = sandbox_with_alice();
    // One Latin-1 byte in a comment: not UTF-8, so not TOML.
    let mut text = config_text(OPT_IN).into_bytes();
    text.extend_from_slice(b"# r\xe9sum\xe9 of the policy\n");
    write_bytes(&sb.cfg, &text, 0o600);

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    assert_eq!(r.prompts_seen, 0, "{r}");
    r.assert_unavailable_naming(&[&s(&sb.cfg)]);
    let fix = assert_doctor_names(&sb, "config", &sb.cfg);
    // `init` keeps an existing config: it cannot be the fix for this one.
    if fix.contains("crm2fa-admin init") {
        let out = sb.admin(&["init"]);
        assert!(
            out.status.success(),
            "doctor's fix for {} is {fix:?}, which fails:\n{}",
            sb.cfg.display(),
            show_output(&out)
        );
    }
}

#[test]
fn a_config_path_that_is_a_directory_makes_doctor_name_it_with_a_fix() {
    let sb = Sandbox::new();
    fs::remove_file(&sb.cfg).unwrap();
    fs::create_dir(&sb.cfg).unwrap();
    fs::set_permissions(&sb.cfg, fs::Permissions::from_mode(0o700)).unwrap();
    assert_doctor_names(&sb, "config", &sb.cfg);
}

// ---------------------------------------------------------------------------
// 5. The clock stepped backwards

/// A login whose module sees the clock `back` seconds behind (libfaketime).
fn login_in_the_past(sb: &Sandbox, back: u64, user: &str, answers: &[&str]) -> LoginResult {
    assert!(
        Path::new(LIBFAKETIME).is_file(),
        "{LIBFAKETIME} is missing: apt-get install faketime"
    );
    let opts = LoginOptions {
        preload: vec![LIBFAKETIME.to_string()],
        env: vec![
            ("FAKETIME".to_string(), format!("-{back}")),
            ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
        ],
        ..LoginOptions::default()
    };
    sb.login_opts(user, answers, &opts)
}

#[test]
fn a_clock_stepped_backwards_never_accepts_a_used_step_again() {
    let sb = Sandbox::with_config(NO_LOCKOUT);
    sb.add_user("alice", PW);
    sb.add_user("bob", PW);
    let alice = sb.enroll_active("alice");
    // bob's enrolment stays pending: no step of his is used yet.
    let bob = sb.enroll("bob");
    wait_for_step_margin(Duration::from_secs(5));
    let now = current_step();

    // alice logs in with the code of now: step `now` is used.
    let used = totp_at_step(&alice.secret, now);
    sb.login("alice", &[PW, &used]).assert_success();

    // The control: ten minutes back, the module really lives in the past
    // (bob's code of that time activates his enrolment).
    let back = 600;
    let then = (unix_now() - back) / PERIOD;
    let r = login_in_the_past(&sb, back, "bob", &[PW, &totp_at_step(&bob, then), ""]);
    r.assert_success();
    assert_eq!(sb.status("bob")["state"], "active", "{r}");

    // With the clock 2 to 10 minutes back, alice's codes of that time
    // (older steps than the one she used) are refused, and so is the code
    // she used.
    for back in [120, 300, 600] {
        let then = (unix_now() - back) / PERIOD;
        let r = login_in_the_past(
            &sb,
            back,
            "alice",
            &[PW, &totp_at_step(&alice.secret, then), &used],
        );
        r.assert_denied();
        assert_eq!(r.pam_result(), PamResult::AuthErr, "{back} s back:\n{r}");
        assert_eq!(r.invalid_code_messages(), 2, "{back} s back:\n{r}");
        assert!(
            !r.debug_lines_with(&["already used"]).is_empty(),
            "refused as a used step, not as a code of another time:\n{r}"
        );
    }

    // Back to the present: the step after the used one still works.
    let st = sb.status("alice");
    assert_eq!(st["locked"], false, "{st}");
    let next = totp_at_step(&alice.secret, now + 1);
    sb.login("alice", &[PW, &next]).assert_success();
}
