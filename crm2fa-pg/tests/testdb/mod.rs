//! What the tests log in to: a database of its own on a PostgreSQL server
//! of `crm2fa_tests::pg` (the shared one unless a test needs another),
//! owned by a login role of its own.
use std::path::PathBuf;
use std::time::Duration;

use crm2fa_common::store::pg::{PgTarget, SslMode};
use crm2fa_tests::pg::{unique_name, PgServer};
use zeroize::Zeroizing;

/// The password of every role the tests make.
pub(crate) const PASSWORD: &str = "pg-test-Secret-7Q";

/// Logging in to `dbname` as `user` with [`PASSWORD`] on 127.0.0.1:`port`,
/// with a connect timeout of 5 s.
pub(crate) fn target(port: u16, user: &str, dbname: &str, sslmode: SslMode) -> PgTarget {
    PgTarget {
        host: "127.0.0.1".to_owned(),
        port,
        user: user.to_owned(),
        dbname: dbname.to_owned(),
        password: Some(Zeroizing::new(PASSWORD.to_owned())),
        sslmode,
        ca_file: None,
        connect_timeout: Duration::from_secs(5),
        client_library: PathBuf::new(),
    }
}

/// A new login role with [`PASSWORD`] and a new database it owns on
/// `server`, both named `PREFIX_<pid>_<n>`: the [`target`] that logs in to
/// it as that role.
pub(crate) fn new_db(server: &PgServer, prefix: &str, sslmode: SslMode) -> PgTarget {
    let name = unique_name(prefix);
    server.create_role_and_db(&name, PASSWORD, &name);
    target(server.port(), &name, &name, sslmode)
}
