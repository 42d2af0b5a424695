//! SQLite's "cannot open" keeps no errno: it counts as running out (which
//! `failmode = "safe"` never skips) only while this process can open no
//! file. A test binary of its own: it lowers the process's descriptor
//! limit.
use crm2fa_common::error::Error;
use crm2fa_tests::limits::with_descriptors_left;

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
    let says_out = Error::out_of_resources;
    assert!(!says_out(&cannot_open()), "descriptors to spare");
    let e = cannot_open();
    assert!(
        with_descriptors_left(0, || says_out(&e)),
        "no descriptor left"
    );
    assert!(!says_out(&e), "descriptors to spare again");
}
