//! Logins run by crm2fad, the module conversing for it (`socket=`), through
//! real libpam: the same login as in the module, the store kept open
//! between logins, and the module running the login itself whenever no
//! crm2fad of root's answers.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crm2fa_tests::*;

const PW: &str = "correct horse";

/// A sandbox whose module offers its logins to crm2fad, with `user`
/// active.
fn sandbox(user: &str) -> (Sandbox, Enrolled) {
    let sb = Sandbox::new();
    sb.add_user(user, PW);
    let e = sb.enroll_active(user);
    sb.offer_to_crm2fad();
    (sb, e)
}

/// `n` active users named `prefix0`, `prefix1` ..., and their secrets.
fn active_users(sb: &Sandbox, prefix: &str, n: usize) -> (Vec<String>, Vec<String>) {
    let users: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let secrets = users
        .iter()
        .map(|u| {
            sb.add_user(u, PW);
            sb.enroll_active(u).secret
        })
        .collect();
    (users, secrets)
}

/// Rename the store and its -wal and -shm files, those there are.
fn move_store(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let f = format!("{}{suffix}", from.display());
        if Path::new(&f).exists() {
            std::fs::rename(&f, format!("{}{suffix}", to.display())).unwrap();
        }
    }
}

fn events(sb: &Sandbox, user: &str) -> Vec<String> {
    sb.audit(user)
        .iter()
        .map(|e| format!("{} {}", e["event"], e["outcome"]))
        .collect()
}

#[test]
fn crm2fad_runs_the_login_and_keeps_the_store_open_for_the_next() {
    let (sb, e) = sandbox("alice");
    let d = sb.start_daemon();
    assert!(!d.holds_open(&sb.store_path()));

    let r = sb.login("alice", &[PW, &wrong_code(&e.secret), &totp(&e.secret, 0)]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 2, "{r}");
    assert_eq!(r.invalid_code_messages(), 1, "{r}");
    // crm2fad ran it: the store stays open there, and the module's `debug`
    // still shows the login's log lines.
    assert!(d.holds_open(&sb.store_path()), "{}", d.stderr());
    assert!(
        !r.debug_lines_with(&["totp", "success"]).is_empty(),
        "the log lines come back to the module under debug:\n{r}"
    );

    // The step is spent, whoever asks: crm2fad again, or the module alone.
    let again = sb.login("alice", &[PW, &totp(&e.secret, 0)]);
    again.assert_denied();
    assert_eq!(again.invalid_code_messages(), 1, "{again}");
    sb.set_stack(&sb.default_stack());
    sb.login("alice", &[PW, &totp(&e.secret, 0)])
        .assert_denied();
    let ev = events(&sb, "alice");
    assert_eq!(
        ev.iter().filter(|e| e.contains("failure")).count(),
        3,
        "each wrong code counted once: {ev:?}"
    );
}

#[test]
fn without_crm2fad_the_module_runs_the_login_itself() {
    let (sb, e) = sandbox("bob");
    // No socket at all.
    let r = sb.login("bob", &[PW, &totp(&e.secret, 0)]);
    r.assert_success();

    // A socket left behind by a crm2fad that was killed: nobody listens.
    let d = sb.start_daemon();
    d.kill();
    assert!(sb.daemon_socket().exists());
    let r = sb.login("bob", &[PW, &totp(&e.secret, 1)]);
    r.assert_success();
    assert!(
        !r.debug_lines_with(&["crm2fad is not running"]).is_empty(),
        "{r}"
    );
}

#[test]
fn a_socket_not_of_roots_is_never_used() {
    let (sb, e) = sandbox("carol");
    let d = sb.start_daemon();
    let socket = sb.daemon_socket();
    // A socket another user owns could be anyone's listener.
    std::os::unix::fs::chown(&socket, Some(4242), None).unwrap();
    let r = sb.login("carol", &[PW, &totp(&e.secret, 0)]);
    r.assert_success();
    assert!(
        !r.debug_lines_with(&["not a socket of root's"]).is_empty(),
        "{r}"
    );
    assert!(!d.holds_open(&sb.store_path()), "crm2fad was not asked");

    // Nor one in a directory others may write to.
    std::os::unix::fs::chown(&socket, Some(0), None).unwrap();
    let dir = socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = sb.login("carol", &[PW, &totp(&e.secret, 1)]);
    r.assert_success();
    assert!(!r.debug_lines_with(&["is not used"]).is_empty(), "{r}");
    assert!(!d.holds_open(&sb.store_path()), "crm2fad was not asked");
}

#[test]
fn crm2fad_gone_during_the_login_denies_and_never_runs_it_twice() {
    let (sb, e) = sandbox("dave");
    let d = sb.start_daemon();
    let mut pending = sb.spawn_login("dave", &[]);
    pending.send_line(PW);
    pending.wait_for("Verification code", Duration::from_secs(30));
    d.kill();
    pending.send_line(&totp(&e.secret, 0));
    let r = pending.finish();
    r.assert_denied();
    assert_eq!(r.pam_result(), PamResult::AuthinfoUnavail, "{r}");
    assert_eq!(r.prompts_seen, 1, "not asked again by the module:\n{r}");
    assert!(!r.debug_lines_with(&["crm2fad"]).is_empty(), "{r}");
    // The code was never checked: it still works.
    sb.login("dave", &[PW, &totp(&e.secret, 0)])
        .assert_success();
}

#[test]
fn a_store_moved_away_is_not_served_from_the_open_one() {
    let (sb, e) = sandbox("erin");
    let _d = sb.start_daemon();
    sb.login("erin", &[PW, &totp(&e.secret, 0)])
        .assert_success();
    let (store, moved) = (sb.store_path(), sb.root().join("moved.db"));
    move_store(&store, &moved);
    let r = sb.login("erin", &[PW, &totp(&e.secret, 1)]);
    r.assert_denied();
    r.assert_unavailable_naming(&["crm2fa.db"]);
    move_store(&moved, &store);
    sb.login("erin", &[PW, &totp(&e.secret, 1)])
        .assert_success();
}

#[test]
fn concurrent_logins_through_crm2fad_accept_a_code_once_and_every_user() {
    let sb = Sandbox::new();
    let (users, secrets) = active_users(&sb, "user", 10);
    sb.add_user("frank", PW);
    let frank = sb.enroll_active("frank");
    sb.offer_to_crm2fad();
    let _d = sb.start_daemon();
    wait_for_step_margin(Duration::from_secs(10));

    let code = totp(&frank.secret, 0);
    let same: Vec<(&str, Vec<String>)> = (0..20)
        .map(|_| ("frank", vec![PW.to_string(), code.clone()]))
        .collect();
    let results = sb.login_all_at_once(&same);
    assert_eq!(successes(&results), 1, "{}", transcripts(&results));

    let each: Vec<(&str, Vec<String>)> = users
        .iter()
        .zip(&secrets)
        .map(|(u, s)| (u.as_str(), vec![PW.to_string(), totp(s, 0)]))
        .collect();
    let results = sb.login_all_at_once(&each);
    assert_eq!(
        successes(&results),
        users.len(),
        "{}",
        transcripts(&results)
    );
}

#[test]
fn a_stop_lets_the_login_in_progress_finish_and_sends_new_ones_to_the_module() {
    let (sb, e) = sandbox("gina");
    let mut d = sb.start_daemon();
    let mut pending = sb.spawn_login("gina", &[]);
    pending.send_line(PW);
    pending.wait_for("Verification code", Duration::from_secs(30));
    d.terminate();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sb.daemon_socket().exists() {
        assert!(std::time::Instant::now() < deadline, "the socket stays");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The login under way ends in crm2fad, which then exits.
    pending.send_line(&totp(&e.secret, 0));
    pending.finish().assert_success();
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}:\n{}",
        d.stderr()
    );
    // A new login runs in the module.
    let r = sb.login("gina", &[PW, &totp(&e.secret, 1)]);
    r.assert_success();
    assert!(!d.holds_open(&sb.store_path()));
}

#[test]
fn a_kept_store_others_may_now_write_is_refused_as_an_open_would_refuse_it() {
    let (sb, e) = sandbox("hank");
    let d = sb.start_daemon();
    sb.login("hank", &[PW, &totp(&e.secret, 0)])
        .assert_success();
    assert!(d.holds_open(&sb.store_path()));
    let store = sb.store_path();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = sb.login("hank", &[PW, &totp(&e.secret, 1)]);
    r.assert_unavailable_naming(&["crm2fa.db", "0666"]);
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).unwrap();
    sb.login("hank", &[PW, &totp(&e.secret, 1)])
        .assert_success();
}

#[test]
fn a_first_login_through_crm2fad_shows_the_backup_codes_also_when_silent() {
    let sb = Sandbox::new();
    sb.add_user("ivy", PW);
    sb.add_user("jon", PW);
    let ivy = sb.enroll("ivy");
    let jon = sb.enroll("jon");
    sb.offer_to_crm2fad();
    let d = sb.start_daemon();

    // The codes shown (one a line, indented) before the prompt to save them.
    let shown = |r: &LoginResult| {
        let before = &r.output[..r.output.find(SAVED_PROMPT).unwrap_or(0)];
        before
            .lines()
            .filter(|l| l.starts_with("    ") && l.trim().len() == 9 && l.contains('-'))
            .count()
    };
    let r = sb.login("ivy", &[PW, &totp(&ivy, 0), ""]);
    r.assert_success();
    assert_eq!(r.count(SAVED_PROMPT), 1, "{r}");
    assert_eq!(shown(&r), 10, "{r}");
    assert_eq!(sb.status("ivy")["state"], "active");
    assert!(d.holds_open(&sb.store_path()), "crm2fad ran it");

    // PAM_SILENT: the codes still come, with the last prompt's text.
    let r = sb.login_op("jon", "authenticate(PAM_SILENT)", &[PW, &totp(&jon, 0), ""]);
    r.assert_success();
    assert_eq!(shown(&r), 10, "{r}");
    assert_eq!(sb.status("jon")["backup_codes_left"], 10);
}

/// crm2fad's threads, by id.
fn threads_of(d: &Daemon) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .unwrap()
        .map(|t| t.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn logins_one_after_another_are_served_by_the_threads_kept_from_the_first() {
    let sb = Sandbox::new();
    let (users, secrets) = active_users(&sb, "kept", 4);
    sb.offer_to_crm2fad();
    let d = sb.start_daemon();
    // crm2fad's threads while each login waits at its prompt: one serves
    // it, and no thread is started or ended for a login.
    let mut seen = vec![];
    for (u, s) in users.iter().zip(&secrets) {
        let mut pending = sb.spawn_login(u, &[]);
        pending.send_line(PW);
        pending.wait_for("Verification code", Duration::from_secs(30));
        seen.push(threads_of(&d));
        pending.send_line(&totp(s, 0));
        pending.finish().assert_success();
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
}

/// Send `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

#[test]
fn a_crm2fad_that_sends_nothing_gives_the_login_back_to_the_module() {
    let (sb, e) = sandbox("hank");
    let d = sb.start_daemon();
    // Stopped: it takes no connection and sends nothing.
    signal(d.pid(), "STOP");
    let started = std::time::Instant::now();
    let r = sb.login("hank", &[PW, &totp(&e.secret, 0)]);
    let took = started.elapsed();
    signal(d.pid(), "CONT");
    r.assert_success();
    assert!(
        !r.debug_lines_with(&["crm2fad", "sent nothing within 15 s"])
            .is_empty(),
        "{r}"
    );
    assert!(
        took < Duration::from_secs(40),
        "the login took {took:?}: {r}"
    );
    // Running again, crm2fad takes the connection the module gave up: it
    // can no longer send on it, so it writes nothing for that login; the
    // next login it serves.
    let r = sb.login("hank", &[PW, &totp(&e.secret, 1)]);
    r.assert_success();
    assert!(
        r.debug_lines_with(&["sent nothing"]).is_empty(),
        "served by crm2fad again: {r}"
    );
    // The code the module accepted was used once, in the module: it is
    // refused now, as any used code is.
    sb.login("hank", &[PW, &totp(&e.secret, 0)]).assert_denied();
}

/// The POSIX locks process `pid` holds on the file at `path`, as the
/// kernel lists them in /proc/locks.
fn locks_of(pid: u32, path: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).unwrap().ino().to_string();
    let pid = pid.to_string();
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| {
            // N: POSIX ADVISORY READ|WRITE PID MAJ:MIN:INODE START END
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 6 && f[4] == pid && f[5].rsplit(':').next() == Some(ino.as_str())
        })
        .map(String::from)
        .collect()
}

#[test]
fn crm2fad_keeps_sqlites_lock_on_the_store_between_logins() {
    // SQLite's shared lock on the -shm file tells every other process (the
    // module running a login itself, crm2fa-admin) that the WAL index is in
    // use. Checking the store's files for the next login must not drop it:
    // closing any descriptor a process opened on a file drops all its
    // POSIX locks on it.
    let sb = Sandbox::new();
    let (users, secrets) = active_users(&sb, "lock", 3);
    sb.offer_to_crm2fad();
    let d = sb.start_daemon();
    let mut shm = sb.store_path().into_os_string();
    shm.push("-shm");
    for (u, s) in users.iter().zip(&secrets) {
        sb.login(u, &[PW, &totp(s, 0)]).assert_success();
        let held = locks_of(d.pid(), Path::new(&shm));
        assert!(
            !held.is_empty(),
            "crm2fad holds no lock on the -shm file after the login of {u}"
        );
    }
}

#[test]
fn past_its_logins_at_once_crm2fad_turns_the_next_away_to_the_module() {
    let sb = Sandbox::new();
    let (users, secrets) = active_users(&sb, "busy", 17);
    sb.offer_to_crm2fad();
    // 384 file descriptors: (384 - 64 - 4 * 32 kept) / 12 = 16 logins at once.
    let _d = sb.start_daemon_with_files(Some(384));
    let mut pending = vec![];
    for u in &users[..16] {
        let mut login = sb.spawn_login(u, &[]);
        login.send_line(PW);
        login.wait_for("Verification code", Duration::from_secs(30));
        pending.push(login);
    }
    // The 17th: closed unanswered, and run by the module itself. The
    // module says so in one of two ways, as the close comes before or
    // after it sent who is logging in.
    let r = sb.login(&users[16], &[PW, &totp(&secrets[16], 0)]);
    r.assert_success();
    let turned_away = [
        "turned the login away",
        "closed the connection before the login began",
    ];
    assert!(
        turned_away
            .iter()
            .any(|why| !r.debug_lines_with(&["crm2fad", why]).is_empty()),
        "{r}"
    );
    // The 16 go on in crm2fad.
    for (mut login, s) in pending.into_iter().zip(&secrets) {
        login.send_line(&totp(s, 0));
        login.finish().assert_success();
    }
}

#[test]
fn connections_that_send_half_a_frame_hold_up_no_other_login() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let (sb, e) = sandbox("ivy");
    let d = sb.start_daemon();
    let connect = || UnixStream::connect(sb.daemon_socket()).expect("connect to crm2fad");
    // Half a frame's head, then silence; a head whose body stops halfway,
    // then silence; a head announcing a body far too long; half a head,
    // then gone.
    let mut stalled = connect();
    stalled.write_all(&[1, 0, 0]).unwrap();
    let mut halfway = connect();
    halfway.write_all(&[1, 0, 0, 0, 100]).unwrap();
    halfway.write_all(&[b'x'; 50]).unwrap();
    let mut huge = connect();
    huge.write_all(&[1, 0xff, 0xff, 0xff, 0xff]).unwrap();
    let mut gone = connect();
    gone.write_all(&[1, 0]).unwrap();
    drop(gone);

    let r = sb.login("ivy", &[PW, &totp(&e.secret, 0)]);
    r.assert_success();
    assert!(
        r.debug_lines_with(&["sent nothing"]).is_empty(),
        "served by crm2fad at once: {r}"
    );
    assert!(d.holds_open(&sb.store_path()), "{}", d.stderr());
    drop((stalled, halfway, huge));
    let r = sb.login("ivy", &[PW, &totp(&e.secret, 1)]);
    r.assert_success();
    assert!(r.debug_lines_with(&["sent nothing"]).is_empty(), "{r}");
}

#[test]
fn crm2fad_sees_a_group_the_config_names_removed_though_the_config_is_unchanged() {
    let sb = Sandbox::with_config_and_groups(
        "[policy]\nenforce = \"groups\"\nenforce_groups = [\"twofa\"]\nunenrolled = \"deny\"\n",
        &["twofa"],
    );
    sb.add_user_in_groups("member", PW, &["twofa"]);
    sb.add_user("outsider", PW);
    sb.offer_to_crm2fad();
    let d = sb.start_daemon();
    let r = sb.login("member", &[PW, "123456"]);
    r.assert_denied();
    assert_eq!(r.prompts_seen, 0, "{r}");
    sb.login("outsider", &[PW]).assert_success();
    assert!(d.holds_open(&sb.store_path()), "crm2fad ran them");

    // The group is gone: the configuration names a group that no longer
    // exists, so it no longer loads, as when read afresh.
    sb.remove_group("twofa");
    let r = sb.login("outsider", &[PW]);
    r.assert_denied();
    assert!(r.output.contains("no group named \"twofa\""), "{r}");

    // Back (another id): the configuration loads again.
    sb.add_group("twofa");
    sb.login("outsider", &[PW]).assert_success();
}
