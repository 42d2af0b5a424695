//! The store conformance suite — the same checks SQLite passes, races
//! included — on the PostgreSQL backend, against a real server started for
//! this test process (shared by its tests); each check gets a database of
//! its own.
mod testdb;

use crm2fa_common::store::conformance::Backend;
use crm2fa_common::store::pg::{PgConnect, PgTarget, SslMode};
use crm2fa_common::store::postgres::PgStore;
use crm2fa_common::store::Store;
use crm2fa_pg::Connector;
use crm2fa_tests::pg::PgServer;

/// A new database with the crm2fa schema; every `open` is a new session.
struct Postgres {
    target: PgTarget,
}

impl Postgres {
    fn new() -> Postgres {
        let target = testdb::new_db(PgServer::shared(), "conformance", SslMode::Disable);
        let client = Connector.connect(&target).expect("connect");
        PgStore::create(client, &target).expect("create the schema");
        Postgres { target }
    }
}

impl Backend for Postgres {
    fn open(&self) -> Box<dyn Store> {
        let client = Connector.connect(&self.target).expect("connect");
        Box::new(PgStore::open(client, &self.target).expect("open"))
    }
}

mod conformance {
    use super::Postgres;
    crm2fa_common::store_conformance!(Postgres::new());
}
