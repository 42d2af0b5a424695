//! The PostgreSQL servers the store's tests run against
//! (`crm2fa_tests::pg`): roles, databases and password logins over TCP,
//! a role limited to rows, servers side by side, TLS, stop, crash and
//! restart, and a shared server removed when its test process ends, also
//! after a panic or SIGKILL.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crm2fa_tests::pg::{make_ca, unique_name, PgServer, TLS_HOST};

/// Set in a child run of this binary: what [`shared_server_child`] does.
const CHILD_ENV: &str = "CRM2FA_PG_SERVER_CHILD";
const CHILD_LINE: &str = "crm2fa-pg-shared ";
const WAIT: Duration = Duration::from_secs(30);

fn start_timed() -> PgServer {
    let t = Instant::now();
    let pg = PgServer::start();
    eprintln!(
        "PostgreSQL server started in {:?} on port {}",
        t.elapsed(),
        pg.port()
    );
    pg
}

fn answers(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn role_and_database_log_in_over_tcp_with_scram() {
    let pg = start_timed();
    let pw = "s3cret 'quoted' \\ pw";
    let url = pg.create_role_and_db("app", pw, "appdb");
    assert_eq!(
        url,
        format!(
            "postgres://app@127.0.0.1:{}/appdb?sslmode=disable",
            pg.port()
        )
    );
    assert_eq!(pg.psql_as(&url, pw, "SELECT 1;").unwrap(), "1");
    assert_eq!(
        pg.psql_as(&url, pw, "SELECT current_user, current_database();")
            .unwrap(),
        "app|appdb"
    );
    let owner = pg.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'appdb';");
    assert_eq!(owner, "app");

    // The password is checked, stored as SCRAM, and not part of the URL.
    let err = pg.psql_as(&url, "wrong", "SELECT 1;").unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");
    let err = pg.psql_as(&url, "", "SELECT 1;").unwrap_err();
    assert!(err.contains("password"), "{err}");
    assert_eq!(
        pg.psql("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'app';"),
        "t"
    );
    let hba = pg.psql("SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type = 'host';");
    assert_eq!(hba, "scram-sha-256");

    // The superuser over TCP, with its password.
    let su = pg.psql_as(
        &pg.superuser_url(),
        pg.superuser_password(),
        "SELECT current_user;",
    );
    assert_eq!(su.unwrap(), "postgres");
    assert!(pg
        .psql_as(&pg.superuser_url(), "wrong", "SELECT 1;")
        .is_err());

    // Default durability settings; room for 40 parallel connections.
    assert_eq!(pg.psql("SHOW fsync;"), "on");
    assert_eq!(pg.psql("SHOW synchronous_commit;"), "on");
    let max: u32 = pg.psql("SHOW max_connections;").parse().unwrap();
    assert!(max >= 100, "max_connections = {max}");
    // No TLS unless asked for.
    assert_eq!(pg.psql("SHOW ssl;"), "off");
    assert!(pg.tls_ca().is_none());

    // 40 sessions at once.
    let most = thread::scope(|scope| {
        let all: Vec<_> = (0..40)
            .map(|_| scope.spawn(|| pg.psql_as(&url, pw, "SELECT pg_sleep(2);")))
            .collect();
        let mut most = 0;
        while !all.iter().all(|h| h.is_finished()) {
            let now: u32 = pg
                .psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app';")
                .parse()
                .unwrap();
            most = most.max(now);
            thread::sleep(Duration::from_millis(20));
        }
        for h in all {
            h.join().unwrap().unwrap();
        }
        most
    });
    assert_eq!(most, 40);

    // The owner may create its schema.
    pg.psql_as(&url, pw, "CREATE TABLE t (id int PRIMARY KEY);")
        .unwrap();
    pg.stop();
}

#[test]
fn rw_role_reads_and_writes_rows_but_changes_no_schema() {
    let pg = start_timed();
    let owner_pw = "owner pw";
    let owner = pg.create_role_and_db("owner", owner_pw, "store");
    pg.psql_as(
        &owner,
        owner_pw,
        "CREATE TABLE codes (id serial PRIMARY KEY, used_at bigint);",
    )
    .unwrap();
    let rw_pw = "rw pw";
    let rw = pg.grant_rw_role("rw", rw_pw, "store");
    assert_eq!(
        rw,
        format!(
            "postgres://rw@127.0.0.1:{}/store?sslmode=disable",
            pg.port()
        )
    );

    let rows = pg.psql_as(
        &rw,
        rw_pw,
        "INSERT INTO codes (used_at) VALUES (NULL), (NULL);\n\
         UPDATE codes SET used_at = 7 WHERE id = 1 AND used_at IS NULL;\n\
         DELETE FROM codes WHERE id = 2;\n\
         SELECT id, used_at FROM codes;",
    );
    assert_eq!(rows.unwrap(), "1|7");

    // A table the owner creates later is covered too.
    pg.psql_as(&owner, owner_pw, "CREATE TABLE later (x int);")
        .unwrap();
    pg.psql_as(&rw, rw_pw, "INSERT INTO later VALUES (1);")
        .unwrap();

    for ddl in [
        "CREATE TABLE mine (x int);",
        "CREATE TEMP TABLE mine (x int);",
        "DROP TABLE codes;",
        "ALTER TABLE codes ADD COLUMN y int;",
        "TRUNCATE codes;",
        "CREATE INDEX ON codes (used_at);",
        "CREATE SCHEMA mine;",
    ] {
        let err = pg.psql_as(&rw, rw_pw, ddl).unwrap_err();
        assert!(
            err.contains("permission denied") || err.contains("must be owner"),
            "{ddl}: {err}"
        );
    }
    assert_eq!(
        pg.psql_as(&owner, owner_pw, "SELECT count(*) FROM codes;")
            .unwrap(),
        "1"
    );
}

#[test]
fn two_servers_at_once_and_stop_removes_everything() {
    let other = thread::spawn(start_timed);
    let a = start_timed();
    let b = other.join().unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    for pg in [&a, &b] {
        let url = pg.create_role_and_db("same", "pw", "same");
        assert_eq!(pg.psql_as(&url, "pw", "SELECT 1;").unwrap(), "1");
    }
    a.psql("CREATE DATABASE only_a;");
    assert_eq!(
        b.psql("SELECT count(*) FROM pg_database WHERE datname = 'only_a';"),
        "0"
    );

    let (port, dir) = (a.port(), a.dir().to_path_buf());
    let t = Instant::now();
    a.stop();
    eprintln!("stopped and removed in {:?}", t.elapsed());
    assert!(!answers(port), "port {port} still accepts connections");
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert_eq!(b.psql("SELECT 1;"), "1");

    let (port, dir) = (b.port(), b.dir().to_path_buf());
    drop(b);
    assert!(!answers(port));
    assert!(!dir.exists());
}

#[test]
fn tls_server_is_verified_by_its_ca_for_localhost_only() {
    let t = Instant::now();
    let pg = PgServer::start_with_tls();
    eprintln!("PostgreSQL server with TLS started in {:?}", t.elapsed());
    let ca = pg.tls_ca().expect("the CA of a TLS server").to_path_buf();
    assert!(ca.starts_with(pg.dir()));
    let pw = "tls pw";
    pg.create_role_and_db("app", pw, "app");
    assert_eq!(pg.psql("SHOW ssl;"), "on");
    let tls = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid();";
    let url = |host: &str, mode: &str, ca: &Path| {
        format!(
            "postgres://app@{host}:{}/app?sslmode={mode}&sslrootcert={}",
            pg.port(),
            ca.display()
        )
    };

    // The certificate is for localhost, signed by the server's CA.
    assert_eq!(
        pg.psql_as(&url(TLS_HOST, "verify-full", &ca), pw, tls)
            .unwrap(),
        "t"
    );
    // Not for 127.0.0.1.
    let err = pg
        .psql_as(&url("127.0.0.1", "verify-full", &ca), pw, tls)
        .unwrap_err();
    assert!(err.contains("127.0.0.1"), "{err}");
    // Not by another CA.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = make_ca(elsewhere.path(), "other");
    assert_eq!(other, elsewhere.path().join("other.crt"));
    let err = pg
        .psql_as(&url(TLS_HOST, "verify-full", &other), pw, tls)
        .unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");
    // Without TLS still, as the client chooses.
    assert_eq!(pg.psql_as(&pg.url("app", "app"), pw, tls).unwrap(), "f");
}

#[test]
fn kill_suspend_and_restart() {
    let pg = start_timed();
    let url = pg.create_role_and_db("app", "pw", "app");
    pg.psql_as(
        &url,
        "pw",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (42);",
    )
    .unwrap();

    // Hung: TCP connects, no login is answered.
    pg.suspend();
    let t = Instant::now();
    let hung = format!("{url}&connect_timeout=1");
    let err = pg.psql_as(&hung, "pw", "SELECT 1;").unwrap_err();
    assert!(err.contains("timeout"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    pg.resume();
    assert_eq!(pg.psql_as(&url, "pw", "SELECT 1;").unwrap(), "1");

    // Down: refused; committed data survives the crash.
    pg.kill();
    assert!(!pg.is_running());
    assert!(!answers(pg.port()));
    let err = pg.psql_as(&url, "pw", "SELECT 1;").unwrap_err();
    assert!(err.contains("refused"), "{err}");
    assert!(pg.data_dir().is_dir());
    let t = Instant::now();
    pg.restart();
    eprintln!("restarted after a crash in {:?}", t.elapsed());
    assert!(pg.is_running());
    assert_eq!(pg.psql_as(&url, "pw", "SELECT x FROM t;").unwrap(), "42");
    pg.restart();
    assert_eq!(pg.psql_as(&url, "pw", "SELECT x FROM t;").unwrap(), "42");

    // Dropping a suspended server still stops it.
    pg.suspend();
    let (port, dir) = (pg.port(), pg.dir().to_path_buf());
    drop(pg);
    assert!(!answers(port));
    assert!(!dir.exists());
}

/// Run in a child process by the tests below (does nothing otherwise):
/// starts the shared server, prints its port and directory, then panics or
/// waits to be killed.
#[test]
fn shared_server_child() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let pg = PgServer::shared();
    assert!(std::ptr::eq(pg, PgServer::shared()));
    let db = unique_name("child");
    let url = pg.create_role_and_db(&db, "pw", &db);
    assert_eq!(pg.psql_as(&url, "pw", "SELECT 1;").unwrap(), "1");
    println!("{CHILD_LINE}{} {}", pg.port(), pg.dir().display());
    match mode.as_str() {
        "panic" => panic!("a test panics while the shared server runs"),
        _ => thread::sleep(Duration::from_secs(120)),
    }
}

/// A child run of this binary, killed if the test fails first.
struct ChildRun(Child);

impl Drop for ChildRun {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run [`shared_server_child`] in a child process with `mode`; the child
/// and its shared server's port and directory.
fn child_with_shared_server(mode: &str) -> (ChildRun, u16, PathBuf) {
    let mut child = ChildRun(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "shared_server_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // libtest writes `test NAME ... ` on the same line first.
    thread::spawn(move || {
        let line = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.split_once(CHILD_LINE).map(|(_, rest)| rest.to_string()));
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(WAIT)
        .ok()
        .flatten()
        .expect("the child prints its server");
    let (port, dir) = line.split_once(' ').unwrap();
    (child, port.parse().unwrap(), PathBuf::from(dir))
}

/// Wait until the port refuses connections and the directory is gone.
fn assert_cleaned_up(port: u16, dir: &Path) {
    let deadline = Instant::now() + WAIT;
    while answers(port) || dir.exists() {
        assert!(
            Instant::now() < deadline,
            "shared server on port {port} in {} not cleaned up after {WAIT:?}",
            dir.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn shared_server_is_removed_when_a_test_panics() {
    let (mut child, port, dir) = child_with_shared_server("panic");
    assert!(!child.0.wait().unwrap().success());
    assert_cleaned_up(port, &dir);
}

#[test]
fn shared_server_is_removed_when_the_test_process_is_killed() {
    let (mut child, port, dir) = child_with_shared_server("wait");
    assert!(answers(port));
    assert!(dir.exists());
    child.0.kill().unwrap(); // SIGKILL: no destructor, no exit handler runs
    child.0.wait().unwrap();
    assert_cleaned_up(port, &dir);
    // Nothing of it is left running: no postgres, no watchdog.
    let dir = dir.display().to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
        if !ps.lines().any(|l| l.contains(&dir)) {
            break;
        }
        assert!(Instant::now() < deadline, "still running:\n{ps}");
        thread::sleep(Duration::from_millis(50));
    }
}
