//! A client out of file descriptors says so as the server says it ran
//! out (SQLSTATE class 53), which `failmode = "safe"` never skips: whoever
//! could make crm2fad run out would otherwise turn the second factor off.
//! A test binary of its own: it lowers the process's descriptor limit.
mod testdb;

use crm2fa_common::store::pg::{PgConnect, SslMode, CLIENT_OUT_OF_RESOURCES};
use crm2fa_pg::Connector;
use crm2fa_tests::pg::PgServer;

fn set_limit(limit: &libc::rlimit) {
    // SAFETY: setrlimit reads the struct it is given.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) }, 0);
}

/// The lowest descriptor number not in use: with the limit there, no
/// descriptor can be had.
fn lowest_free() -> u64 {
    (0..)
        // SAFETY: F_GETFD only asks whether the number is an open descriptor.
        .find(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1)
        .and_then(|fd| u64::try_from(fd).ok())
        .expect("a free descriptor number")
}

#[test]
fn a_connect_without_descriptors_fails_as_out_of_resources() {
    let target = testdb::new_db(PgServer::shared(), "nofd", SslMode::Disable);
    drop(
        Connector
            .connect(&target)
            .expect("connects with descriptors to spare"),
    );
    let mut was = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut was) }, 0);
    // None left, then one, two … more: the runtime's descriptors, then the
    // socket, are refused in turn, until a connect succeeds.
    let free = lowest_free();
    let mut outcomes = vec![];
    for spare in 0..8 {
        set_limit(&libc::rlimit {
            rlim_cur: free + spare,
            rlim_max: was.rlim_max,
        });
        let outcome = Connector.connect(&target).map(drop);
        set_limit(&was);
        outcomes.push(outcome);
    }
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(failed.len() >= 2, "{outcomes:?}");
    assert!(outcomes.last().is_some_and(Result::is_ok), "{outcomes:?}");
    for e in failed {
        assert_eq!(e.sqlstate.as_deref(), Some(CLIENT_OUT_OF_RESOURCES), "{e}");
    }
}
