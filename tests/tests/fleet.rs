//! A fleet: three hosts (three sandboxes, each its own PAM service and
//! config) sharing one PostgreSQL store and one host key, logging in through
//! real libpam. The module loads the PostgreSQL client library only because
//! the config has a url; it logs in as a role that may only read and write
//! rows, while `init` ran as the database's owner.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crm2fa_tests::pg::{make_ca, quote_literal, unique_name, PgServer, TLS_HOST};
use crm2fa_tests::*;

const PW: &str = "correct horse";
const OWNER_PW: &str = "owner-Secret-1";
const HOST_PW: &str = "host-Secret-2";

/// The client library the module loads.
fn client_library() -> PathBuf {
    let p = artifact_dir().join("libcrm2fa_pg.so");
    assert!(
        p.is_file(),
        "{} is missing: cargo build --workspace",
        p.display()
    );
    p
}

struct Fleet {
    hosts: Vec<Sandbox>,
    /// The hosts' url (the role with row rights only).
    host_url: String,
}

impl Fleet {
    /// `what` (an aggregate) over the server's sessions of the hosts' role.
    fn hosts_sessions(&self, pg: &PgServer, what: &str) -> String {
        let role = self.host_url["postgres://".len()..]
            .split('@')
            .next()
            .expect("a role in the url");
        pg.psql(&format!(
            "SELECT {what} FROM pg_stat_activity WHERE usename = {}",
            quote_literal(role)
        ))
    }
}

/// The `[store]` section for `url`, with the password in `pw_file`, and
/// `ca_file` if given.
fn store_section(
    url: &str,
    pw_file: &Path,
    key: &Path,
    timeout: &str,
    ca: Option<&Path>,
) -> String {
    let ca_line = ca.map_or(String::new(), |ca| {
        format!("ca_file = \"{}\"\n", ca.display())
    });
    format!(
        "[store]\nurl = \"{url}\"\npassword_file = \"{}\"\nkey_file = \"{}\"\n\
         client_library = \"{}\"\nconnect_timeout = \"{timeout}\"\n{ca_line}",
        pw_file.display(),
        key.display(),
        client_library().display()
    )
}

/// `url` on a server with TLS: by the name its certificate is for, with
/// `sslmode=verify-full`.
fn verify_full(url: &str) -> String {
    url.replace("@127.0.0.1:", &format!("@{TLS_HOST}:"))
        .replace("sslmode=disable", "sslmode=verify-full")
}

/// Three hosts on `pg`, the schema made by the owner role with `init` on
/// the first, the hosts' configs using a role with row rights only, the
/// config `sections` after `[store]`; `users` known to every host. With
/// `tls`, the server's CA: every config (the owner's too) then connects
/// with `verify-full`, each host checking with its own copy of the CA.
fn fleet_on(
    pg: &PgServer,
    sections: &str,
    users: &[&str],
    timeout: &str,
    tls: Option<&Path>,
) -> Fleet {
    let db = unique_name("fleet");
    let owner = unique_name("owner");
    let host_role = unique_name("host");
    let mut owner_url = pg.create_role_and_db(&owner, OWNER_PW, &db);
    let mut host_url = pg.grant_rw_role(&host_role, HOST_PW, &db);
    if tls.is_some() {
        owner_url = verify_full(&owner_url);
        host_url = verify_full(&host_url);
    }
    let hosts: Vec<Sandbox> = (0..3).map(|_| Sandbox::bare()).collect();
    let ca_copies: Vec<Option<PathBuf>> = hosts
        .iter()
        .map(|h| {
            tls.map(|ca| {
                let copy = h.root().join("db-ca.pem");
                write_bytes(&copy, &std::fs::read(ca).expect("read the CA"), 0o644);
                copy
            })
        })
        .collect();
    let first = &hosts[0];
    let key = first.key_path();
    // The administrator's config: the owner role, for `init` only.
    let owner_pw = first.root().join("owner.password");
    write_file(&owner_pw, &format!("{OWNER_PW}\n"), 0o600);
    let admin_cfg = first.root().join("admin.toml");
    write_file(
        &admin_cfg,
        &store_section(
            &owner_url,
            &owner_pw,
            &key,
            timeout,
            ca_copies[0].as_deref(),
        ),
        0o600,
    );
    let mut init = std::process::Command::new(admin_path());
    init.arg("--config").arg(&admin_cfg).arg("init");
    let out = run_command(init, "crm2fa-admin init as the owner role");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("has the current schema"),
        "{}",
        show_output(&out)
    );
    let key_bytes = std::fs::read(&key).expect("the key init made");
    for (h, ca) in hosts.iter().zip(&ca_copies) {
        if h.key_path() != key {
            write_bytes(&h.key_path(), &key_bytes, 0o600);
        }
        let pw = h.root().join("host.password");
        write_file(&pw, &format!("{HOST_PW}\n"), 0o600);
        let text = format!(
            "{}\n{sections}",
            store_section(&host_url, &pw, &h.key_path(), timeout, ca.as_deref())
        );
        h.write_config(&text);
        h.set_stack(&h.default_stack());
        for u in users {
            h.add_user(u, PW);
        }
    }
    Fleet { hosts, host_url }
}

/// Once every login sits at its password prompt, all answers at once.
fn released_together(mut pending: Vec<PendingLogin>) -> Vec<LoginResult> {
    for p in &mut pending {
        p.wait_for("Password:", Duration::from_secs(30));
    }
    for p in &mut pending {
        p.send_answers();
    }
    pending.into_iter().map(PendingLogin::finish).collect()
}

fn fleet(sections: &str, users: &[&str]) -> Fleet {
    fleet_on(PgServer::shared(), sections, users, "3s", None)
}

#[test]
fn a_code_used_on_one_host_is_refused_on_the_others() {
    let f = fleet("[policy]\nenforce = \"all\"\nprompts = 1\n", &["alice"]);
    let e = f.hosts[0].enroll_active("alice");
    wait_for_step_margin(Duration::from_secs(5));
    let code = totp(&e.secret, 0);
    f.hosts[1].login("alice", &[PW, &code]).assert_success();
    for h in [&f.hosts[0], &f.hosts[2]] {
        let r = h.login("alice", &[PW, &code]);
        r.assert_denied();
        assert_eq!(r.invalid_code_messages(), 1, "{r}");
    }
    // A backup code likewise, and the audit says which host wrote what.
    f.hosts[2]
        .login("alice", &[PW, &e.backup_codes[0]])
        .assert_success();
    f.hosts[0]
        .login("alice", &[PW, &e.backup_codes[0]])
        .assert_denied();
    let audit = f.hosts[1].audit("alice");
    assert!(
        audit.iter().all(|a| a["host"].as_str().is_some()),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .filter(|a| a["event"] == "login" && a["outcome"] == "success")
            .count()
            == 2,
        "{audit:?}"
    );
}

#[test]
fn twenty_parallel_logins_with_one_code_over_three_hosts_let_exactly_one_in() {
    let f = fleet("[policy]\nenforce = \"all\"\nprompts = 1\n", &["bob"]);
    let e = f.hosts[0].enroll_active("bob");
    wait_for_step_margin(Duration::from_secs(10));
    let code = totp(&e.secret, 0);
    let pending = (0..20)
        .map(|i| f.hosts[i % 3].spawn_login("bob", &[PW, &code]))
        .collect();
    let results = released_together(pending);
    assert_eq!(successes(&results), 1, "{}", transcripts(&results));
}

#[test]
fn ten_users_in_parallel_over_three_hosts_all_get_in() {
    let users: Vec<String> = (0..10).map(|i| format!("user{i}")).collect();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let f = fleet("[policy]\nenforce = \"all\"\n", &names);
    let enrolled: Vec<Enrolled> = names.iter().map(|u| f.hosts[0].enroll_active(u)).collect();
    let pending = enrolled
        .iter()
        .enumerate()
        .map(|(i, e)| f.hosts[i % 3].spawn_login(&e.user, &[PW, &e.backup_codes[0]]))
        .collect();
    let results = released_together(pending);
    assert_eq!(successes(&results), 10, "{}", transcripts(&results));
}

#[test]
fn failures_on_different_hosts_add_up_to_one_lock() {
    let f = fleet(
        "[policy]\nenforce = \"all\"\nprompts = 1\n[lockout]\nmax_failures = 3\n",
        &["carol"],
    );
    let e = f.hosts[0].enroll_active("carol");
    let wrong = wrong_code(&e.secret);
    for h in &f.hosts {
        h.login("carol", &[PW, &wrong]).assert_denied();
    }
    let st = f.hosts[1].status("carol");
    assert_eq!(st["locked"], true, "{st}");
    // Locked everywhere: even a right code is not checked.
    let r = f.hosts[2].login("carol", &[PW, &e.backup_codes[0]]);
    r.assert_denied();
    assert!(r.output.contains("locked"), "{r}");
    f.hosts[0].admin_ok(&["unlock", "carol"]);
    f.hosts[2]
        .login("carol", &[PW, &e.backup_codes[0]])
        .assert_success();
}

#[test]
fn a_server_that_is_down_denies_within_the_connect_timeout() {
    let pg = PgServer::start();
    let f = fleet_on(
        &pg,
        "[policy]\nenforce = \"all\"\nfailmode = \"secure\"\n",
        &["dave"],
        "2s",
        None,
    );
    let e = f.hosts[0].enroll_active("dave");
    f.hosts[1]
        .login("dave", &[PW, &e.backup_codes[0]])
        .assert_success();
    // Stopped: refused at once. Hung (accepts, never answers): the timeout.
    pg.kill();
    let r = f.hosts[1].login("dave", &[PW, &e.backup_codes[1]]);
    r.assert_denied();
    assert_eq!(r.prompts_seen, 0, "no code is asked: {r}");
    // The reason, in syslog (mirrored by `debug`).
    assert_eq!(
        r.debug_lines_with(&["denied (failmode = secure)", "Connection refused"])
            .len(),
        1,
        "{r}"
    );
    pg.restart();
    pg.suspend();
    let started = Instant::now();
    let r = f.hosts[2].login("dave", &[PW, &e.backup_codes[1]]);
    let took = started.elapsed();
    pg.resume();
    r.assert_denied();
    assert_eq!(
        r.debug_lines_with(&[
            "denied (failmode = secure)",
            "no answer within 2s (connect_timeout)"
        ])
        .len(),
        1,
        "{r}"
    );
    assert!(
        took < Duration::from_secs(8),
        "a login waited {took:?} for a server that does not answer: {r}"
    );
    // Back: the same code works.
    f.hosts[0]
        .login("dave", &[PW, &e.backup_codes[1]])
        .assert_success();
}

#[test]
fn doctor_checks_the_server_and_the_rights_of_the_hosts_role() {
    let pg = PgServer::start();
    let f = fleet_on(&pg, "", &[], "2s", None);
    let h = &f.hosts[1];
    let good = h.admin(&["doctor"]);
    assert_eq!(good.status.code(), Some(0), "{}", show_output(&good));
    let text = String::from_utf8_lossy(&good.stdout).to_string();
    assert!(text.contains("this role has the row rights"), "{text}");
    assert!(!text.contains("store directory"), "{text}");
    // The client library a login loads is checked as the module loads it.
    assert!(
        text.contains(&format!(
            "{} is root's and loads",
            client_library().display()
        )),
        "{text}"
    );
    let config = std::fs::read_to_string(h.config_path()).unwrap();
    let lib = client_library().display().to_string();
    for (other, said) in [
        ("/nonexistent/libcrm2fa_pg.so", "No such file"),
        (
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "is not a crm2fa PostgreSQL client library",
        ),
    ] {
        h.write_config(&config.replace(&lib, other));
        let bad = h.admin(&["doctor"]);
        assert_eq!(bad.status.code(), Some(1), "{}", show_output(&bad));
        let text = show_output(&bad);
        assert!(
            text.contains("client library") && text.contains(said),
            "{text}"
        );
        assert!(text.contains("install libcrm2fa_pg.so"), "{text}");
    }
    h.write_config(&config);
    // A right taken away is named, with the GRANT that gives it back.
    let db = pg
        .psql("SELECT datname FROM pg_database WHERE datname LIKE 'fleet%'")
        .trim()
        .to_string();
    let role = pg
        .psql("SELECT rolname FROM pg_roles WHERE rolname LIKE 'host%'")
        .trim()
        .to_string();
    pg.psql_db(&db, &format!("REVOKE UPDATE ON email_codes FROM {role}"));
    let bad = h.admin(&["doctor"]);
    assert_eq!(bad.status.code(), Some(1), "{}", show_output(&bad));
    let text = show_output(&bad);
    assert!(
        text.contains(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON email_codes TO {role}"
        )),
        "{text}"
    );
    // A role without its GRANTs at all fails at the first read: said so.
    pg.psql_db(
        &db,
        &format!(
            "REVOKE SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public FROM {role}"
        ),
    );
    let bare = h.admin(&["doctor"]);
    assert_eq!(bare.status.code(), Some(1), "{}", show_output(&bare));
    let text = show_output(&bare);
    assert!(
        text.contains("permission denied") && text.contains("give this role the row rights"),
        "{text}"
    );
    // The server gone: said, with what to check.
    pg.kill();
    let down = h.admin(&["doctor"]);
    assert_eq!(down.status.code(), Some(1), "{}", show_output(&down));
    let text = show_output(&down);
    assert!(
        text.contains("Connection refused") && text.contains("reachable from this host"),
        "{text}"
    );
}

#[test]
fn a_sqlite_store_copied_to_postgresql_keeps_the_users_app_working() {
    let pg = PgServer::shared();
    let (sb, e) = Sandbox::with_active_user("[policy]\nenforce = \"all\"\n", "erin", PW);
    sb.login("erin", &[PW, &e.backup_codes[0]]).assert_success();
    let db = unique_name("copy");
    let owner = unique_name("owner");
    let owner_url = pg.create_role_and_db(&owner, OWNER_PW, &db);
    let host_role = unique_name("host");
    let host_url = pg.grant_rw_role(&host_role, HOST_PW, &db);
    let owner_pw = sb.root().join("owner.password");
    write_file(&owner_pw, &format!("{OWNER_PW}\n"), 0o600);
    let v = sb.admin_json(&[
        "store",
        "copy",
        "--to",
        &owner_url,
        "--password-file",
        owner_pw.to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(v["counts"]["users"], 1, "{v}");
    assert_eq!(v["counts"]["backup codes"], e.backup_codes.len(), "{v}");
    // The hosts are told to use their own role, never the owner's.
    let hosts_url = host_url.replacen(&format!("//{host_role}@"), "//HOSTS_ROLE@", 1);
    let switch = json_strings(&v["switch_over"]);
    let step = switch
        .iter()
        .find(|s| s.contains("url = "))
        .unwrap_or_else(|| panic!("{v}"));
    assert!(step.contains(&format!("url = \"{hosts_url}\"")), "{step}");
    assert!(step.contains(&format!("never {owner}")), "{step}");
    // A second copy into the same database is refused: it is not empty.
    let again = sb.admin(&[
        "store",
        "copy",
        "--to",
        &owner_url,
        "--password-file",
        owner_pw.to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(again.status.code(), Some(1), "{}", show_output(&again));
    assert!(show_output(&again).contains("is not empty"));
    // Switch the host over: the same app and the same (used) codes.
    let pw = sb.root().join("host.password");
    write_file(&pw, &format!("{HOST_PW}\n"), 0o600);
    sb.write_config(&format!(
        "{}\n[policy]\nenforce = \"all\"\nprompts = 1\n",
        store_section(&host_url, &pw, &sb.key_path(), "3s", None)
    ));
    wait_for_step_margin(Duration::from_secs(5));
    sb.login("erin", &[PW, &totp(&e.secret, 0)])
        .assert_success();
    sb.login("erin", &[PW, &e.backup_codes[0]]).assert_denied();
    let audit = sb.audit("erin");
    assert!(
        audit.iter().filter(|a| a["event"] == "login").count() >= 3,
        "the old audit rows came along: {audit:?}"
    );
}

#[test]
fn logins_over_tls_check_the_servers_certificate_with_a_trusted_ca_file() {
    let pg = PgServer::start_with_tls();
    let sections = "[policy]\nenforce = \"all\"\nfailmode = \"secure\"\n";
    let f = fleet_on(&pg, sections, &["tina"], "3s", pg.tls_ca());
    assert!(f.host_url.contains("sslmode=verify-full"), "{}", f.host_url);
    let e = f.hosts[0].enroll_active("tina");
    f.hosts[1]
        .login("tina", &[PW, &e.backup_codes[0]])
        .assert_success();

    // A certificate from another CA than the host's ca_file: no session,
    // so no code is asked, and doctor says why.
    let h = &f.hosts[2];
    let ca_file = h.root().join("db-ca.pem");
    let good_ca = std::fs::read(&ca_file).unwrap();
    let other = make_ca(h.root(), "other-ca");
    write_bytes(&ca_file, &std::fs::read(other).unwrap(), 0o644);
    let r = h.login("tina", &[PW, &e.backup_codes[1]]);
    r.assert_denied();
    assert_eq!(r.prompts_seen, 0, "{r}");
    let doctor = show_output(&h.admin(&["doctor"]));
    assert!(doctor.contains("certificate"), "{doctor}");

    // The right CA in a file others may change: refused before any
    // connection (whoever can change it picks the server logins trust).
    write_bytes(&ca_file, &good_ca, 0o666);
    let r = h.login("tina", &[PW, &e.backup_codes[1]]);
    r.assert_denied();
    assert_eq!(r.prompts_seen, 0, "{r}");
    let doctor = show_output(&h.admin(&["doctor"]));
    assert!(doctor.contains(&ca_file.display().to_string()), "{doctor}");

    write_bytes(&ca_file, &good_ca, 0o644);
    h.login("tina", &[PW, &e.backup_codes[1]]).assert_success();

    // sslmode=require: encrypted without checking the certificate (the
    // address is not a name in it), no ca_file needed.
    let require = f
        .host_url
        .replace(&format!("@{TLS_HOST}:"), "@127.0.0.1:")
        .replace("sslmode=verify-full", "sslmode=require");
    h.write_config(&format!(
        "{}\n{sections}",
        store_section(
            &require,
            &h.root().join("host.password"),
            &h.key_path(),
            "3s",
            None
        )
    ));
    h.login("tina", &[PW, &e.backup_codes[2]]).assert_success();
}

#[test]
fn crm2fad_keeps_a_hosts_session_between_logins_and_opens_another_after_a_restart() {
    // Its own server: this test restarts it.
    let pg = PgServer::start();
    let f = fleet_on(&pg, "[policy]\nenforce = \"all\"\n", &["erin"], "3s", None);
    let h = &f.hosts[0];
    let e = h.enroll_active("erin");
    h.offer_to_crm2fad();
    let _d = h.start_daemon();
    let sessions = || f.hosts_sessions(&pg, "coalesce(string_agg(pid::text, ','), '')");
    h.login("erin", &[PW, &totp(&e.secret, 0)]).assert_success();
    let first = sessions();
    assert!(
        !first.is_empty() && !first.contains(','),
        "one session of the hosts' role, kept by crm2fad after the login: {first:?}"
    );
    h.login("erin", &[PW, &e.backup_codes[0]]).assert_success();
    assert_eq!(sessions(), first, "the same session served the next login");
    // The server restarted: the kept session is gone, the next login opens
    // another and gets in.
    pg.restart();
    h.login("erin", &[PW, &totp(&e.secret, 1)]).assert_success();
    let after = sessions();
    assert!(
        !after.is_empty() && after != first,
        "{first:?} then {after:?}"
    );
    pg.stop();
}

#[test]
fn logins_waiting_on_their_users_hold_no_postgresql_session() {
    // Logins parked at their prompts (a user who walked away, or one who
    // parks many on purpose) must not use up the server's connections,
    // which every host of the fleet shares.
    let users = ["pia", "quin", "rue", "sal", "tam", "uma"];
    let pg = PgServer::shared();
    let f = fleet_on(pg, "[policy]\nenforce = \"all\"\n", &users, "3s", None);
    let h = &f.hosts[0];
    let codes: Vec<String> = users
        .iter()
        .map(|u| h.enroll_active(u).backup_codes[0].clone())
        .collect();
    h.offer_to_crm2fad();
    let _d = h.start_daemon();
    let sessions = || -> usize {
        let n = f.hosts_sessions(pg, "count(*)");
        n.trim().parse().expect("a count")
    };
    let mut waiting: Vec<PendingLogin> = users
        .iter()
        .map(|u| {
            let mut p = h.spawn_login(u, &[]);
            p.wait_for("Password:", Duration::from_secs(30));
            p.send_line(PW);
            p.wait_for("Verification code:", Duration::from_secs(30));
            p
        })
        .collect();
    let held = sessions();
    assert!(
        // crm2fad keeps at most 4 idle sessions a store (MAX_IDLE_PER_STORE).
        (1..=4).contains(&held),
        "{} logins at their prompts, {held} sessions of the hosts' role open",
        users.len()
    );
    // Each answers: its write takes a session again, and it gets in.
    for (p, code) in waiting.iter_mut().zip(&codes) {
        p.send_line(code);
    }
    for p in waiting {
        p.finish().assert_success();
    }
}

#[test]
fn a_server_that_stops_answering_under_a_kept_session_denies_within_the_connect_timeout() {
    // Its own server: this test suspends it.
    let pg = PgServer::start();
    let f = fleet_on(
        &pg,
        "[policy]\nenforce = \"all\"\nfailmode = \"secure\"\n",
        &["gus"],
        "2s",
        None,
    );
    let h = &f.hosts[0];
    let e = h.enroll_active("gus");
    h.offer_to_crm2fad();
    let _d = h.start_daemon();
    // A login while the server is frozen (then thawed): denied without a
    // prompt, saying why; how long it waited.
    let denied_while_frozen = |code: &str| {
        let started = Instant::now();
        let r = h.login("gus", &[PW, code]);
        let took = started.elapsed();
        pg.resume();
        r.assert_denied();
        assert_eq!(r.prompts_seen, 0, "no code is asked: {r}");
        let why = [
            "denied (failmode = secure)",
            "within 2s; the session is closed",
        ];
        assert_eq!(r.debug_lines_with(&why).len(), 1, "{r}");
        took
    };
    h.login("gus", &[PW, &e.backup_codes[0]]).assert_success();
    // crm2fad keeps the session; the server stops answering on it (the
    // socket stays open, as when the network drops its packets).
    pg.freeze();
    let took = denied_while_frozen(&e.backup_codes[1]);
    // Not the 15 s any call may take.
    assert!(
        took < Duration::from_secs(8),
        "a login waited {took:?} on a kept session the server no longer answers"
    );
    // Back: a new session serves, and the code not used works.
    h.login("gus", &[PW, &e.backup_codes[1]]).assert_success();

    // A read sent ahead that no login waited for: crm2fad sends a login's
    // first read (once the session has it prepared, from its third login)
    // before NSS is asked for the name, and this name is unknown. The
    // server stopped answering before it answered that read: the next
    // login waits for it once, then fails; it does not wait as long again
    // to connect anew.
    for code in &e.backup_codes[2..4] {
        h.login("gus", &[PW, code]).assert_success();
    }
    h.add_password_only("nosuchuser", PW);
    pg.freeze();
    let unknown = h.login("nosuchuser", &[PW]);
    assert_eq!(unknown.pam_result(), PamResult::UserUnknown, "{unknown}");
    let took = denied_while_frozen(&e.backup_codes[4]);
    assert!(
        took < Duration::from_millis(3500),
        "a login waited {took:?}: connect_timeout (2s) once for the read and again to connect"
    );
    h.login("gus", &[PW, &e.backup_codes[4]]).assert_success();
    pg.stop();
}

#[test]
fn a_kept_session_is_not_used_once_the_password_file_is_open_to_others() {
    let f = fleet("[policy]\nenforce = \"all\"\n", &["fay"]);
    let h = &f.hosts[0];
    let e = h.enroll_active("fay");
    h.offer_to_crm2fad();
    let _d = h.start_daemon();
    h.login("fay", &[PW, &totp(&e.secret, 0)]).assert_success();
    // The module would refuse to read it now; so does crm2fad, though its
    // session was opened with it while it was closed to others.
    let pw = h.root().join("host.password");
    let mode = |m| std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(m));
    mode(0o644).unwrap();
    h.login("fay", &[PW, &totp(&e.secret, 1)])
        .assert_unavailable_naming(&["host.password"]);
    mode(0o600).unwrap();
    h.login("fay", &[PW, &totp(&e.secret, 1)]).assert_success();
}

#[test]
fn a_host_beside_the_server_logs_in_over_its_unix_socket() {
    let pg = PgServer::shared();
    let f = fleet_on(pg, "[policy]\nenforce = \"all\"\n", &["gus"], "3s", None);
    let e = f.hosts[0].enroll_active("gus");
    let h = &f.hosts[1];
    // The url as libpq writes it: the socket's directory, percent-encoded,
    // and no sslmode (TLS does not apply there).
    let on_socket = |dir: &Path| {
        let encoded = dir.display().to_string().replace('/', "%2F");
        f.host_url
            .replace("@127.0.0.1:", &format!("@{encoded}:"))
            .replace("?sslmode=disable", "")
    };
    let config = |url: &str| {
        format!(
            "{}\n[policy]\nenforce = \"all\"\n",
            store_section(
                url,
                &h.root().join("host.password"),
                &h.key_path(),
                "3s",
                None
            )
        )
    };
    h.write_config(&config(&on_socket(&pg.socket_dir())));
    h.login("gus", &[PW, &totp(&e.secret, 0)]).assert_success();
    // The same store as the hosts on TCP: the step is used fleet-wide.
    f.hosts[2]
        .login("gus", &[PW, &totp(&e.secret, 0)])
        .assert_denied();
    let doctor = h.admin(&["doctor"]);
    assert!(doctor.status.success(), "{}", show_output(&doctor));

    // A socket directory any user may write: whoever creates a socket
    // there answers the logins, so nothing is connected to, no code asked.
    let open_dir = h.root().join("anyone");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(
        &open_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    h.write_config(&config(&on_socket(&open_dir)));
    let r = h.login("gus", &[PW, &e.backup_codes[0]]);
    r.assert_unavailable_naming(&["anyone", "chmod o-w"]);
    assert_eq!(r.prompts_seen, 0, "{r}");
    let doctor = show_output(&h.admin(&["doctor"]));
    assert!(doctor.contains("stands in for the server"), "{doctor}");
}
