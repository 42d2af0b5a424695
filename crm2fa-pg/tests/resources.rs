//! A client out of file descriptors says so as the server says it ran
//! out (SQLSTATE class 53), which `failmode = "safe"` never skips: whoever
//! could make crm2fad run out would otherwise turn the second factor off.
//! A test binary of its own: it lowers the process's descriptor limit.
mod testdb;

use crm2fa_common::store::pg::{PgConnect, SslMode, CLIENT_OUT_OF_RESOURCES};
use crm2fa_pg::Connector;
use crm2fa_tests::limits::with_descriptors_left;
use crm2fa_tests::pg::PgServer;

#[test]
fn a_connect_without_descriptors_fails_as_out_of_resources() {
    let target = testdb::new_db(PgServer::shared(), "nofd", SslMode::Disable);
    drop(
        Connector
            .connect(&target)
            .expect("connects with descriptors to spare"),
    );
    // None left, then one, two … more: the runtime's descriptors, then the
    // socket, are refused in turn, until a connect succeeds.
    let outcomes: Vec<_> = (0..8)
        .map(|spare| with_descriptors_left(spare, || Connector.connect(&target).map(drop)))
        .collect();
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(failed.len() >= 2, "{outcomes:?}");
    assert!(outcomes.last().is_some_and(Result::is_ok), "{outcomes:?}");
    for e in failed {
        assert_eq!(e.sqlstate.as_deref(), Some(CLIENT_OUT_OF_RESOURCES), "{e}");
    }
}
