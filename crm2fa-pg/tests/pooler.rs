//! A server that loses the statements a session prepared, as a pooler in
//! transaction mode without prepared-statement support does (PgBouncer
//! before 1.21): one call fails, then nothing more is prepared. Its own
//! test binary: what it sets holds for the whole process.
mod testdb;

use crm2fa_common::store::pg::{Param, PgConnect, SslMode, Value};
use crm2fa_pg::Connector;
use crm2fa_tests::pg::PgServer;

#[test]
fn a_lost_prepared_statement_fails_one_call_and_nothing_is_prepared_after() {
    let target = testdb::new_db(PgServer::shared(), "pooler", SslMode::Disable);
    let mut db = Connector.connect(&target).unwrap();
    db.batch("CREATE TABLE r (id BIGINT PRIMARY KEY, v TEXT); INSERT INTO r VALUES (1, 'a')")
        .unwrap();
    let read = "SELECT v FROM r WHERE id = $1";
    let count = "SELECT count(*) FROM pg_prepared_statements";
    let a = [[Value::Text("a".into())]];
    for _ in 0..3 {
        assert_eq!(db.query(read, &[Param::Int(1)]).unwrap(), a);
    }
    assert_eq!(db.query(count, &[]).unwrap(), [[Value::Int(1)]]);
    // What a pooler does when the next transaction gets another server
    // session.
    db.batch("DEALLOCATE ALL").unwrap();
    let e = db.query(read, &[Param::Int(1)]).unwrap_err();
    assert_eq!(e.sqlstate.as_deref(), Some("26000"), "{e}");
    for _ in 0..3 {
        assert_eq!(db.query(read, &[Param::Int(1)]).unwrap(), a);
        assert_eq!(db.query(count, &[]).unwrap(), [[Value::Int(0)]]);
    }
    // Another session of this process prepares nothing either.
    let mut other = Connector.connect(&target).unwrap();
    for _ in 0..3 {
        assert_eq!(other.query(read, &[Param::Int(1)]).unwrap(), a);
    }
    assert_eq!(other.query(count, &[]).unwrap(), [[Value::Int(0)]]);
}
