//! The client against a real PostgreSQL server: values both ways, SQLSTATEs,
//! timeouts, TLS.
mod testdb;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use crm2fa_common::store::pg::{
    Done, Param, PgClient, PgConnect, PgError, PgTarget, SslMode, Stmt, Value,
};
use crm2fa_pg::Connector;
use crm2fa_tests::pg::{make_ca, quote_ident, unique_name, PgServer, TLS_HOST};
use testdb::{new_db, PASSWORD};
use zeroize::Zeroizing;

/// A database of its own on the shared server, which has no TLS.
fn plain(prefix: &str) -> PgTarget {
    new_db(PgServer::shared(), prefix, SslMode::Disable)
}

/// The server with TLS (`ssl = on`, a certificate for `localhost`), shared
/// by the tests of this file.
fn with_tls() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start_with_tls)
}

/// A target for a port where no PostgreSQL server is: no database needed.
fn nowhere(port: u16, sslmode: SslMode) -> PgTarget {
    testdb::target(port, "crm2fa", "crm2fa", sslmode)
}

fn connect(target: &PgTarget) -> Box<dyn PgClient> {
    Connector
        .connect(target)
        .unwrap_or_else(|e| panic!("connect {target:?}: {e}"))
}

fn error(result: Result<Box<dyn PgClient>, PgError>) -> PgError {
    match result {
        Ok(_) => panic!("connected where it should not"),
        Err(e) => e,
    }
}

fn assert_no_password(e: &PgError) {
    assert!(!e.message.contains(PASSWORD), "{e}");
    assert!(!e.to_string().contains(PASSWORD), "{e}");
    assert!(!format!("{e:?}").contains(PASSWORD), "{e:?}");
}

#[test]
fn every_param_kind_goes_in_and_every_value_kind_comes_back() {
    let target = plain("kinds");
    let mut db = connect(&target);
    db.batch(
        "CREATE TABLE kinds (id BIGINT PRIMARY KEY, small SMALLINT, int INTEGER, big BIGINT,
                             txt TEXT, vc VARCHAR(20), ch CHAR(3), bin BYTEA, flag BOOLEAN);
         CREATE INDEX kinds_int ON kinds(int)",
    )
    .unwrap();
    let insert = "INSERT INTO kinds (id, small, int, big, txt, vc, ch, bin, flag)
                  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    let all = [
        Param::Int(1),
        Param::Int(-7),
        Param::Int(-42),
        Param::Int(i64::MAX),
        Param::Text("héllo ✓ 'quoted'"),
        Param::Text("v"),
        Param::Text("ab"),
        Param::Bytes(&[0, 1, 0xff, b'\\']),
        Param::Bool(true),
    ];
    assert_eq!(db.execute(insert, &all).unwrap(), 1);
    let mut nulls = [Param::Null; 9];
    nulls[0] = Param::Int(2);
    assert_eq!(db.execute(insert, &nulls).unwrap(), 1);
    let mut some = [Param::Null; 9];
    some[0] = Param::Int(3);
    some[2] = Param::Int(i32::MAX.into());
    some[7] = Param::Bytes(b"");
    some[8] = Param::Bool(false);
    some[4] = Param::Text("");
    assert_eq!(db.execute(insert, &some).unwrap(), 1);

    let rows = db
        .query(
            "SELECT id, small, int, big, txt, vc, ch, bin, flag FROM kinds ORDER BY id",
            &[],
        )
        .unwrap();
    assert_eq!(
        rows,
        vec![
            vec![
                Value::Int(1),
                Value::Int(-7),
                Value::Int(-42),
                Value::Int(i64::MAX),
                Value::Text("héllo ✓ 'quoted'".into()),
                Value::Text("v".into()),
                Value::Text("ab ".into()),
                Value::Bytes(vec![0, 1, 0xff, b'\\']),
                Value::Bool(true),
            ],
            [vec![Value::Int(2)], vec![Value::Null; 8]].concat(),
            vec![
                Value::Int(3),
                Value::Null,
                Value::Int(i32::MAX.into()),
                Value::Null,
                Value::Text(String::new()),
                Value::Null,
                Value::Null,
                Value::Bytes(vec![]),
                Value::Bool(false),
            ],
        ]
    );

    // An Int compared with INTEGER and SMALLINT columns.
    let ids = |db: &mut Box<dyn PgClient>, sql: &str, params: &[Param<'_>]| {
        db.query(sql, params)
            .unwrap()
            .into_iter()
            .map(|row| row[0].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(
            &mut db,
            "SELECT id FROM kinds WHERE int = $1",
            &[Param::Int(-42)]
        ),
        [Value::Int(1)]
    );
    assert_eq!(
        ids(
            &mut db,
            "SELECT id FROM kinds WHERE small = $1",
            &[Param::Int(-7)]
        ),
        [Value::Int(1)]
    );
    // Text, Bytes and Bool in WHERE; a NULL parameter whose type the
    // server infers.
    assert_eq!(
        ids(
            &mut db,
            "SELECT id FROM kinds WHERE txt = $1 AND bin = $2 AND flag = $3",
            &[
                Param::Text("héllo ✓ 'quoted'"),
                Param::Bytes(&[0, 1, 0xff, b'\\']),
                Param::Bool(true)
            ]
        ),
        [Value::Int(1)]
    );
    assert_eq!(
        ids(
            &mut db,
            "SELECT id FROM kinds WHERE ($1::text IS NULL OR txt = $1) ORDER BY id",
            &[Param::Null]
        ),
        [Value::Int(1), Value::Int(2), Value::Int(3)]
    );
    assert!(db
        .query("SELECT id FROM kinds WHERE id = $1", &[Param::Int(99)])
        .unwrap()
        .is_empty());

    // Values computed by the server, and a NAME.
    assert_eq!(
        db.query(
            "SELECT $1::bigint, $2 || 'x', current_user, 1::smallint, 2::integer, NULL::text",
            &[Param::Null, Param::Text("a")]
        )
        .unwrap(),
        [[
            Value::Null,
            Value::Text("ax".into()),
            Value::Text(target.user.clone()),
            Value::Int(1),
            Value::Int(2),
            Value::Null
        ]]
    );

    // Rows changed; a NULL assigned to a column of each type.
    assert_eq!(
        db.execute(
            "UPDATE kinds SET small = $1, int = $2, big = $3, txt = $4, bin = $5, flag = $6
             WHERE id >= $7",
            &[
                Param::Null,
                Param::Null,
                Param::Null,
                Param::Null,
                Param::Null,
                Param::Null,
                Param::Int(2)
            ]
        )
        .unwrap(),
        2
    );
    assert_eq!(
        db.execute("DELETE FROM kinds WHERE id = $1", &[Param::Int(99)])
            .unwrap(),
        0
    );

    // An Int out of the range of an INTEGER column: the server says so.
    let e = db
        .execute(
            "UPDATE kinds SET int = $1 WHERE id = 1",
            &[Param::Int(i64::from(i32::MAX) + 1)],
        )
        .unwrap_err();
    assert_eq!(e.sqlstate.as_deref(), Some("22003"), "{e}");
    // The session is still usable after an error; a transaction by batch.
    db.batch("BEGIN; UPDATE kinds SET int = 5 WHERE id = 1; COMMIT")
        .unwrap();
    assert_eq!(
        ids(&mut db, "SELECT int FROM kinds WHERE id = 1", &[]),
        [Value::Int(5)]
    );
    db.batch("DROP TABLE kinds").unwrap();
}

#[test]
fn a_column_of_another_type_is_an_error_that_names_it() {
    let mut db = connect(&plain("coltype"));
    let e = db.query("SELECT 1, now() AS stamp", &[]).unwrap_err();
    assert_eq!(e.sqlstate, None);
    assert!(
        e.message.contains("stamp") && e.message.contains("timestamptz"),
        "{e}"
    );
}

#[test]
fn a_wrong_password_is_28p01_without_the_password() {
    let mut target = plain("wrongpw");
    target.password = Some(Zeroizing::new("Wrong-Pass-ZZ9".to_owned()));
    let e = error(Connector.connect(&target));
    assert_eq!(e.sqlstate.as_deref(), Some("28P01"), "{e}");
    assert!(
        e.message
            .contains(&format!("127.0.0.1:{}", PgServer::shared().port())),
        "{e}"
    );
    assert!(e.message.contains("password authentication failed"), "{e}");
    assert!(!e.message.contains("Wrong-Pass-ZZ9"), "{e}");
    assert_no_password(&e);

    target.password = None;
    let e = error(Connector.connect(&target));
    assert!(e.message.contains("password"), "{e}");
}

#[test]
fn a_refused_port_fails_at_once_naming_it() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut target = nowhere(port, SslMode::Disable);
    target.connect_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let e = error(Connector.connect(&target));
    assert!(started.elapsed() < Duration::from_secs(2), "{e}");
    assert_eq!(e.sqlstate, None);
    assert!(e.message.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(e.message.to_lowercase().contains("refused"), "{e}");
    assert_no_password(&e);
}

#[test]
fn a_server_that_never_answers_fails_within_connect_timeout() {
    // Accepted by the kernel, never read: TCP connects, nothing answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    for sslmode in [SslMode::Disable, SslMode::Require] {
        let mut target = nowhere(port, sslmode);
        target.connect_timeout = Duration::from_secs(1);
        let started = Instant::now();
        let e = error(Connector.connect(&target));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900), "{took:?} {e}");
        assert!(took < Duration::from_secs(3), "{sslmode:?} took {took:?}");
        assert_eq!(e.sqlstate, None);
        assert!(e.message.contains(&format!("127.0.0.1:{port}")), "{e}");
        assert!(e.message.contains("connect_timeout"), "{e}");
    }
    drop(silent);
}

#[test]
fn a_call_without_an_answer_closes_the_session() {
    let mut db = Connector
        .connect_with_call_timeout(&plain("calltimeout"), Duration::from_millis(500))
        .unwrap();
    assert_eq!(db.query("SELECT 1", &[]).unwrap(), [[Value::Int(1)]]);
    let started = Instant::now();
    let e = db.query("SELECT pg_sleep(10)", &[]).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{e}");
    assert_eq!(e.sqlstate, None);
    assert!(e.message.contains("no answer"), "{e}");
    let e = db.batch("SELECT 1").unwrap_err();
    assert!(e.message.contains("closed"), "{e}");
}

#[test]
fn a_session_ended_by_the_server_says_so() {
    let target = plain("terminated");
    let mut db = connect(&target);
    let pid = db.query("SELECT pg_backend_pid()", &[]).unwrap()[0][0].clone();
    let Value::Int(pid) = pid else {
        panic!("{pid:?}")
    };
    let mut admin = connect(&target);
    admin
        .query(
            "SELECT pg_terminate_backend($1::integer)",
            &[Param::Int(pid)],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The server's last word, then the connection is gone.
    let e = db.query("SELECT 1", &[]).unwrap_err();
    assert_eq!(e.sqlstate.as_deref(), Some("57P01"), "{e}");
    let e = db.query("SELECT 1", &[]).unwrap_err();
    assert_eq!(e.sqlstate, None);
    assert!(
        e.message
            .contains(&format!("127.0.0.1:{}", PgServer::shared().port())),
        "{e}"
    );
    assert!(e.message.contains("closed"), "{e}");
}

#[test]
fn sqlstates_come_through() {
    let target = plain("sqlstates");
    let mut db = connect(&target);
    db.batch("CREATE TABLE uniq (name TEXT PRIMARY KEY)")
        .unwrap();
    db.execute("INSERT INTO uniq VALUES ($1)", &[Param::Text("a")])
        .unwrap();
    let e = db
        .execute("INSERT INTO uniq VALUES ($1)", &[Param::Text("a")])
        .unwrap_err();
    assert_eq!(e.sqlstate.as_deref(), Some("23505"), "{e}");
    assert!(e.to_string().contains("SQLSTATE 23505"), "{e}");

    let e = db.query("SELECT * FROM no_such_table", &[]).unwrap_err();
    assert_eq!(e.sqlstate.as_deref(), Some("42P01"), "{e}");
    let e = db.batch("SELEKT 1").unwrap_err();
    assert_eq!(e.sqlstate.as_deref(), Some("42601"), "{e}");

    let mut outsider = target.clone();
    outsider.user = unique_name("outsider");
    PgServer::shared().create_role(&outsider.user, PASSWORD);
    let mut other = connect(&outsider);
    let e = other.query("SELECT name FROM uniq", &[]).unwrap_err();
    assert_eq!(e.sqlstate.as_deref(), Some("42501"), "{e}");
    assert_no_password(&e);
    db.batch("DROP TABLE uniq").unwrap();
}

#[test]
fn concurrent_updates_are_40001_in_repeatable_read() {
    let target = plain("serial");
    let mut a = connect(&target);
    let mut b = connect(&target);
    a.batch("CREATE TABLE counter (id INTEGER PRIMARY KEY, n BIGINT NOT NULL)")
        .unwrap();
    a.execute(
        "INSERT INTO counter VALUES ($1, $2)",
        &[Param::Int(1), Param::Int(0)],
    )
    .unwrap();
    a.batch("BEGIN ISOLATION LEVEL REPEATABLE READ").unwrap();
    a.query("SELECT n FROM counter WHERE id = $1", &[Param::Int(1)])
        .unwrap();
    b.execute(
        "UPDATE counter SET n = n + 1 WHERE id = $1",
        &[Param::Int(1)],
    )
    .unwrap();
    let e = a
        .execute(
            "UPDATE counter SET n = n + 1 WHERE id = $1",
            &[Param::Int(1)],
        )
        .unwrap_err();
    assert_eq!(e.sqlstate.as_deref(), Some("40001"), "{e}");
    a.batch("ROLLBACK").unwrap();
    a.batch("DROP TABLE counter").unwrap();
}

#[test]
fn a_deadlock_is_40p01() {
    let target = plain("deadlock");
    // Detected after 200 ms rather than the default 1 s.
    PgServer::shared().psql(&format!(
        "ALTER DATABASE {} SET deadlock_timeout = '200ms';",
        quote_ident(&target.dbname)
    ));
    let mut setup = connect(&target);
    setup
        .batch("CREATE TABLE locks (id BIGINT PRIMARY KEY); INSERT INTO locks VALUES (1), (2)")
        .unwrap();
    let barrier = Barrier::new(2);
    let run = |first: i64, second: i64| {
        let mut db = connect(&target);
        db.batch("BEGIN").unwrap();
        db.execute(
            "UPDATE locks SET id = id WHERE id = $1",
            &[Param::Int(first)],
        )
        .unwrap();
        barrier.wait();
        let outcome = db.execute(
            "UPDATE locks SET id = id WHERE id = $1",
            &[Param::Int(second)],
        );
        db.batch("ROLLBACK").unwrap();
        outcome.err().and_then(|e| e.sqlstate)
    };
    let errors: Vec<Option<String>> = std::thread::scope(|s| {
        let run = &run;
        let one = s.spawn(move || run(1, 2));
        let two = s.spawn(move || run(2, 1));
        vec![one.join().unwrap(), two.join().unwrap()]
    });
    assert!(errors.contains(&Some("40P01".to_owned())), "{errors:?}");
    setup.batch("DROP TABLE locks").unwrap();
}

#[test]
fn require_against_a_server_without_tls_is_refused_clearly() {
    let server = PgServer::shared();
    let e = error(Connector.connect(&nowhere(server.port(), SslMode::Require)));
    assert_eq!(e.sqlstate, None);
    assert!(e.message.contains("TLS"), "{e}");
    assert!(e.message.contains("does not support TLS"), "{e}");
}

fn uses_tls(db: &mut Box<dyn PgClient>) -> bool {
    let rows = db
        .query(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap();
    rows == [[Value::Bool(true)]]
}

#[test]
fn require_encrypts_without_checking_the_certificate() {
    // 127.0.0.1 is not a name in the certificate, and its CA is not given.
    let mut target = new_db(with_tls(), "require", SslMode::Require);
    let mut db = connect(&target);
    assert!(uses_tls(&mut db));
    target.sslmode = SslMode::Disable;
    let mut db = connect(&target);
    assert!(!uses_tls(&mut db));
}

#[test]
fn verify_full_checks_the_ca_and_the_name() {
    let server = with_tls();
    let mut target = new_db(server, "verify", SslMode::VerifyFull);
    target.host = TLS_HOST.to_owned();
    target.ca_file = server.tls_ca().map(PathBuf::from);
    assert!(target.ca_file.is_some());
    let elsewhere = tempfile::tempdir().unwrap();
    let mut db = connect(&target);
    assert!(uses_tls(&mut db));

    // The right CA, but a name the certificate is not for.
    let mut by_address = target.clone();
    by_address.host = "127.0.0.1".to_owned();
    let e = error(Connector.connect(&by_address));
    assert_eq!(e.sqlstate, None);
    assert!(
        e.message.contains("TLS") && e.message.contains("certificate"),
        "{e}"
    );
    assert!(e.message.contains("127.0.0.1"), "{e}");

    // Another CA.
    let mut other_ca = target.clone();
    other_ca.ca_file = Some(make_ca(elsewhere.path(), "other-ca"));
    let e = error(Connector.connect(&other_ca));
    assert!(e.message.contains("certificate"), "{e}");
    assert!(e.message.contains("UnknownIssuer"), "{e}");
    assert_no_password(&e);

    // No ca_file, a missing one, one without a certificate.
    let mut none = target.clone();
    none.ca_file = None;
    let e = error(Connector.connect(&none));
    assert!(e.message.contains("ca_file"), "{e}");
    let mut missing = target.clone();
    missing.ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
    let e = error(Connector.connect(&missing));
    assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
    let mut empty = target.clone();
    let no_certificate = elsewhere.path().join("server.ext");
    std::fs::write(&no_certificate, "subjectAltName=DNS:localhost\n").unwrap();
    empty.ca_file = Some(no_certificate);
    let e = error(Connector.connect(&empty));
    assert!(e.message.contains("no certificate"), "{e}");
}

#[test]
fn require_refuses_a_server_that_does_not_prove_it_knows_the_password() {
    // A server of its own: its rules change, and it restarts.
    let server = PgServer::start_with_tls();
    let clear = new_db(&server, "cleartext", SslMode::Require);
    let trusting = new_db(&server, "trusting", SslMode::Require);
    let scram = new_db(&server, "scram", SslMode::Require);
    // Every login the server lets in is logged.
    server.psql("ALTER SYSTEM SET log_connections = on;");
    // As a server in the middle would: ask for the password in clear, or
    // let the client in without any (the restart applies the setting too).
    server.prepend_hba(&format!("hostssl all {} 127.0.0.1/32 password", clear.user));
    server.prepend_hba(&format!("hostssl all {} 127.0.0.1/32 trust", trusting.user));
    for target in [&clear, &trusting] {
        let e = error(Connector.connect(target));
        assert!(
            e.message.contains("channel binding"),
            "{}: {e}",
            target.user
        );
        assert_no_password(&e);
    }
    // The password never reached the server: it did not let the role that
    // needs one in (the trusting rule lets anyone in; the client left).
    let log = server.log();
    let authorized = format!("connection authorized: user={}", clear.user);
    assert!(!log.contains(&authorized), "{log}");
    // SCRAM over TLS binds to the session: require connects.
    let mut db = connect(&scram);
    assert!(uses_tls(&mut db));
    let authorized = format!("connection authorized: user={}", scram.user);
    assert!(server.log().contains(&authorized));
    // verify-full checks the certificate instead and does not insist on
    // channel binding (a pooler may not offer it).
    let mut checked = clear.clone();
    checked.sslmode = SslMode::VerifyFull;
    checked.host = TLS_HOST.to_owned();
    checked.ca_file = server.tls_ca().map(PathBuf::from);
    let mut db = connect(&checked);
    assert!(uses_tls(&mut db));
}

#[test]
fn every_session_bounds_how_long_a_transaction_may_idle() {
    let mut db = connect(&plain("idle"));
    assert_eq!(
        db.query(
            "SELECT current_setting('idle_in_transaction_session_timeout')",
            &[]
        )
        .unwrap(),
        [[Value::Text("15s".into())]]
    );
}

#[test]
fn every_session_commits_to_disk_whatever_the_database_says() {
    // A DBA's `synchronous_commit = off` would let a server crash lose a
    // commit that used up a code, and the code would work again.
    let target = plain("synccommit");
    PgServer::shared().psql(&format!(
        "ALTER DATABASE {} SET synchronous_commit = off",
        quote_ident(&target.dbname)
    ));
    let setting = |db: &mut Box<dyn PgClient>| {
        db.query("SELECT current_setting('synchronous_commit')", &[])
            .unwrap()
    };
    let mut db = connect(&target);
    assert_eq!(setting(&mut db), [[Value::Text("on".into())]]);
    // What any other session of that database gets (the check of the check).
    let other = PgServer::shared().psql_db(&target.dbname, "SHOW synchronous_commit");
    assert!(other.contains("off"), "{other}");
}

/// The statements this session has prepared on the server (but this one).
fn prepared(db: &mut Box<dyn PgClient>) -> Vec<String> {
    db.batch("SELECT 1").unwrap();
    let rows = db
        .query(
            "SELECT statement FROM pg_prepared_statements
             WHERE statement NOT LIKE '%pg_prepared_statements%' ORDER BY statement",
            &[],
        )
        .unwrap();
    rows.into_iter()
        .map(|r| match &r[0] {
            Value::Text(t) => t.clone(),
            v => panic!("{v:?}"),
        })
        .collect()
}

#[test]
fn a_pipeline_runs_in_order_and_reports_each_outcome() {
    let target = plain("pipeline");
    let mut db = connect(&target);
    db.batch("CREATE TABLE p (id BIGINT PRIMARY KEY, v TEXT)")
        .unwrap();
    let pid = db.query("SELECT pg_backend_pid()", &[]).unwrap();
    let insert = "INSERT INTO p(id, v) VALUES ($1, $2)";
    let done = db.pipeline(&[
        Stmt::Batch("BEGIN"),
        Stmt::Execute(insert, &[Param::Int(1), Param::Text("a")]),
        Stmt::Execute(insert, &[Param::Int(2), Param::Null]),
        Stmt::Query("SELECT count(*) FROM p", &[]),
        Stmt::Execute(
            "UPDATE p SET v = $2 WHERE id = $1",
            &[Param::Int(9), Param::Text("x")],
        ),
        Stmt::Batch("COMMIT"),
    ]);
    assert_eq!(
        done,
        [
            Ok(Done::Batch),
            Ok(Done::Changed(1)),
            Ok(Done::Changed(1)),
            Ok(Done::Rows(vec![vec![Value::Int(2)]])),
            Ok(Done::Changed(0)),
            Ok(Done::Batch),
        ]
    );
    // A failure in a transaction: the server refuses what follows, and
    // the COMMIT rolls back.
    let done = db.pipeline(&[
        Stmt::Batch("BEGIN"),
        Stmt::Execute(insert, &[Param::Int(3), Param::Text("c")]),
        Stmt::Execute(insert, &[Param::Int(1), Param::Text("again")]),
        Stmt::Execute(insert, &[Param::Int(4), Param::Text("d")]),
        Stmt::Batch("COMMIT"),
    ]);
    assert_eq!(done[1], Ok(Done::Changed(1)));
    assert_eq!(
        done[2].as_ref().unwrap_err().sqlstate.as_deref(),
        Some("23505")
    );
    assert_eq!(
        done[3].as_ref().unwrap_err().sqlstate.as_deref(),
        Some("25P02")
    );
    assert_eq!(
        db.query("SELECT id FROM p ORDER BY id", &[]).unwrap(),
        [[Value::Int(1)], [Value::Int(2)]]
    );
    // One session throughout.
    assert_eq!(db.query("SELECT pg_backend_pid()", &[]).unwrap(), pid);
}

#[test]
fn a_statement_run_a_third_time_is_prepared_and_one_whose_plan_broke_runs_unnamed() {
    let target = plain("prepared");
    let mut db = connect(&target);
    db.batch("CREATE TABLE q (id BIGINT PRIMARY KEY, v INTEGER); INSERT INTO q VALUES (1, 7)")
        .unwrap();
    let read = "SELECT v FROM q WHERE id = $1";
    let twice = "SELECT v + 1 FROM q WHERE id = $1";
    for _ in 0..2 {
        assert_eq!(db.query(read, &[Param::Int(1)]).unwrap(), [[Value::Int(7)]]);
        assert_eq!(
            db.query(twice, &[Param::Int(1)]).unwrap(),
            [[Value::Int(8)]]
        );
    }
    assert!(
        prepared(&mut db).is_empty(),
        "run twice (as in one login): not prepared: {:?}",
        prepared(&mut db)
    );
    for _ in 0..2 {
        assert_eq!(db.query(read, &[Param::Int(1)]).unwrap(), [[Value::Int(7)]]);
    }
    assert_eq!(prepared(&mut db), [read], "run a third time: prepared");
    // The same text with a NULL is another statement (its types differ).
    assert_eq!(
        db.query(read, &[Param::Null]).unwrap(),
        Vec::<Vec<Value>>::new()
    );
    // A column's type changed under the prepared plan: that run fails,
    // the next runs unnamed and works.
    db.batch("ALTER TABLE q ALTER v TYPE BIGINT").unwrap();
    let e = db.query(read, &[Param::Int(1)]).unwrap_err();
    assert_eq!(e.sqlstate.as_deref(), Some("0A000"), "{e}");
    for _ in 0..2 {
        assert_eq!(db.query(read, &[Param::Int(1)]).unwrap(), [[Value::Int(7)]]);
    }
}

#[test]
fn a_query_sent_ahead_runs_once_and_answers_only_the_call_that_asks_for_it() {
    let mut db = connect(&plain("ahead"));
    db.batch("CREATE SEQUENCE s").unwrap();
    let next = "SELECT nextval('s') + $1";
    let run = |db: &mut Box<dyn PgClient>, plus: i64| match db.query(next, &[Param::Int(plus)]) {
        Ok(rows) => rows,
        Err(e) => panic!("{e}"),
    };
    // Sent ahead once prepared (from its third run): before, it goes when
    // it is run, as usual.
    db.send_ahead(Stmt::Query(next, &[Param::Int(0)]));
    for n in 1..=3 {
        assert_eq!(run(&mut db, 0), [[Value::Int(n)]]);
    }
    assert_eq!(prepared(&mut db), [next]);
    // Asked for: answered by what was sent ahead, run once.
    db.send_ahead(Stmt::Query(next, &[Param::Int(0)]));
    assert_eq!(run(&mut db, 0), [[Value::Int(4)]]);
    // Another call (other parameters, another statement): it waits for
    // the answer sent ahead, drops it, and is answered itself.
    db.send_ahead(Stmt::Query(next, &[Param::Int(0)]));
    assert_eq!(run(&mut db, 100), [[Value::Int(106)]]);
    db.send_ahead(Stmt::Query(next, &[Param::Int(0)]));
    assert_eq!(
        db.query("SELECT currval('s')", &[]).unwrap(),
        [[Value::Int(7)]]
    );
    // Never asked for: a kept session is still open and serves on.
    db.send_ahead(Stmt::Query(next, &[Param::Int(0)]));
    assert!(db.still_open().unwrap());
    assert_eq!(run(&mut db, 0), [[Value::Int(9)]]);
    // The server's error to a statement sent ahead is the asker's.
    let div = "SELECT 1 / $1";
    for _ in 0..3 {
        db.query(div, &[Param::Int(1)]).unwrap();
    }
    db.send_ahead(Stmt::Query(div, &[Param::Int(0)]));
    let e = db.query(div, &[Param::Int(0)]).unwrap_err();
    assert_eq!(e.sqlstate.as_deref(), Some("22012"), "{e}");
    assert_eq!(run(&mut db, 0), [[Value::Int(10)]]);
    // A plan broken under a statement sent ahead: that answer fails, and
    // the statement runs unnamed from then on, as after any run by name.
    db.batch("CREATE TABLE r (v INTEGER); INSERT INTO r VALUES (7)")
        .unwrap();
    let read = "SELECT v FROM r WHERE v = $1";
    for _ in 0..3 {
        assert_eq!(db.query(read, &[Param::Int(7)]).unwrap(), [[Value::Int(7)]]);
    }
    db.batch("ALTER TABLE r ALTER v TYPE BIGINT").unwrap();
    db.send_ahead(Stmt::Query(read, &[Param::Int(7)]));
    let e = db.query(read, &[Param::Int(7)]).unwrap_err();
    assert_eq!(e.sqlstate.as_deref(), Some("0A000"), "{e}");
    db.send_ahead(Stmt::Query(read, &[Param::Int(7)]));
    assert_eq!(db.query(read, &[Param::Int(7)]).unwrap(), [[Value::Int(7)]]);
}

#[test]
fn a_query_sent_ahead_and_not_answered_in_time_closes_the_session() {
    let mut db = Connector
        .connect_with_call_timeout(&plain("aheadslow"), Duration::from_millis(500))
        .unwrap();
    let nap = "SELECT 1 FROM pg_sleep($1::float8 / 1000)";
    for _ in 0..3 {
        assert_eq!(db.query(nap, &[Param::Int(0)]).unwrap(), [[Value::Int(1)]]);
    }
    db.send_ahead(Stmt::Query(nap, &[Param::Int(10_000)]));
    let started = Instant::now();
    let e = db.query("SELECT 1", &[]).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{e}");
    assert!(e.message.contains("no answer"), "{e}");
    let e = db.batch("SELECT 1").unwrap_err();
    assert!(e.message.contains("closed"), "{e}");
    assert!(!db.still_open().unwrap());

    // Kept between logins, a session with a query sent ahead that its
    // login did not wait for: not answered within connect_timeout, the
    // server is taken to have stopped answering (an error, not a closed
    // session that a new one replaces), and the session is closed.
    let target = plain("aheadslow");
    let mut db = Connector.connect(&target).unwrap();
    for _ in 0..3 {
        assert_eq!(db.query(nap, &[Param::Int(0)]).unwrap(), [[Value::Int(1)]]);
    }
    db.send_ahead(Stmt::Query(nap, &[Param::Int(10_000)]));
    let started = Instant::now();
    let e = db.still_open().unwrap_err();
    assert!(
        started.elapsed() < target.connect_timeout + Duration::from_secs(2),
        "{e}"
    );
    assert!(e.message.contains("no answer"), "{e}");
    assert!(!db.still_open().unwrap());
}
