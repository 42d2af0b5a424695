//! SQLite's "cannot open" keeps no errno: it counts as running out (which
//! `failmode = "safe"` never skips) only while this process can open no
//! file. A test binary of its own: it lowers the process's descriptor
//! limit.
use crm2fa_common::error::Error;
use crm2fa_common::store::out_of_resources;

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
fn sqlites_cannot_open_is_running_out_only_while_no_file_opens() {
    let cannot_open = || {
        Error::store(
            "/var/lib/crm2fa/crm2fa.db",
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some("unable to open database file".into()),
            ),
        )
    };
    let says_out = |e: &Error| match e {
        Error::Store { source, .. } => out_of_resources(source.as_ref()),
        _ => unreachable!("a store error"),
    };
    assert!(!says_out(&cannot_open()), "descriptors to spare");
    let mut was = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut was) }, 0);
    let e = cannot_open();
    set_limit(&libc::rlimit {
        rlim_cur: lowest_free(),
        rlim_max: was.rlim_max,
    });
    let out = says_out(&e);
    set_limit(&was);
    assert!(out, "no descriptor left");
    assert!(!says_out(&e), "descriptors to spare again");
}
