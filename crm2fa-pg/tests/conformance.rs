//! The store conformance suite — the same checks SQLite passes, races
//! included — on the PostgreSQL backend, against a real server started for
//! this test process; each check gets a database of its own.
mod server;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use crm2fa_common::store::conformance::Backend;
use crm2fa_common::store::pg::{PgConnect, PgTarget, SslMode};
use crm2fa_common::store::postgres::PgStore;
use crm2fa_common::store::Store;
use crm2fa_pg::Connector;

fn server() -> &'static server::Server {
    static SERVER: OnceLock<server::Server> = OnceLock::new();
    SERVER.get_or_init(|| server::Server::start(false))
}

/// A new database with the crm2fa schema; every `open` is a new session.
struct Postgres {
    target: PgTarget,
}

impl Postgres {
    fn new() -> Postgres {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let s = server();
        let name = format!("conformance_{}", NEXT.fetch_add(1, Ordering::SeqCst));
        s.create_db(&name);
        let mut target = s.target(SslMode::Disable);
        target.dbname = name;
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
