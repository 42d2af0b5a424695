//! `store copy` between SQLite and PostgreSQL: every row, used state and
//! audit included, there and back again, and never into a store that has
//! users.
mod testdb;

use crm2fa_common::audit::{AuditCtx, Fact};
use crm2fa_common::codes::{self, Code};
use crm2fa_common::model::{Candidate, NewEnrollment, Origin};
use crm2fa_common::ops::copy_store;
use crm2fa_common::store::pg::{PgConnect, SslMode};
use crm2fa_common::store::postgres::PgStore;
use crm2fa_common::store::sqlite::SqliteStore;
use crm2fa_common::store::Store;
use crm2fa_common::Error;
use crm2fa_pg::Connector;
use crm2fa_tests::pg::PgServer;

const NOW: i64 = 1_800_000_000;

fn audit(user: &str, f: Fact) -> crm2fa_common::audit::AuditEntry {
    AuditCtx::here("copy-test", "").entry(NOW, user, &f)
}

/// A SQLite store with two users, used and unused codes, a recovery code,
/// a lock count and the audit rows all that made.
fn filled(dir: &tempfile::TempDir) -> Box<dyn Store> {
    let mut s: Box<dyn Store> = Box::new(SqliteStore::create(&dir.path().join("from.db")).unwrap());
    for user in ["ann", "ben"] {
        let salt = codes::new_salt();
        let set = codes::backup_set(3, &salt);
        let hashes: Vec<_> = set.iter().map(|(_, h)| *h).collect();
        let new = NewEnrollment {
            sealed_secret: b"sealed",
            code_salt: &salt,
            backup_hashes: &hashes,
            sealed_codes: b"codes",
            replace: true,
            seen: None,
            origin: Origin::Admin,
        };
        s.begin_enrollment(user, &new, NOW, &audit(user, Fact::Enrolled))
            .unwrap();
        let code = Code::generate(codes::RECOVERY_LEN);
        s.add_recovery(
            user,
            &salt,
            &code.hash(&salt),
            NOW + 60,
            NOW,
            &audit(user, Fact::RecoveryIssued { until: NOW + 60 }),
        )
        .unwrap();
        let lockout = crm2fa_common::config::LockoutConfig {
            max_failures: 9,
            lock_seconds: 60,
            max_lock_seconds: 60,
        };
        let used = Candidate::code(crm2fa_common::model::CodeKind::Recovery, code.hash(&salt));
        s.redeem(user, &used, NOW, &lockout, &AuditCtx::default(), None)
            .unwrap();
        s.redeem(
            user,
            &Candidate::default(),
            NOW,
            &lockout,
            &AuditCtx::default(),
            None,
        )
        .unwrap();
    }
    s
}

#[test]
fn a_store_copied_to_postgresql_and_back_is_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut from = filled(&dir);
    let target = testdb::new_db(PgServer::shared(), "copy", SslMode::Disable);
    let mut pg: Box<dyn Store> =
        Box::new(PgStore::create(Connector.connect(&target).unwrap(), &target).unwrap());
    let copied = copy_store(from.as_mut(), pg.as_mut()).unwrap();
    assert_eq!(copied.from, copied.to);
    assert!(copied.to.iter().any(|(t, n)| *t == "audit rows" && *n >= 6));
    let mut back: Box<dyn Store> =
        Box::new(SqliteStore::create(&dir.path().join("back.db")).unwrap());
    copy_store(pg.as_mut(), back.as_mut()).unwrap();
    assert_eq!(back.snapshot().unwrap(), from.snapshot().unwrap());
    // Never into a store that has users; nothing is written then.
    let before = pg.snapshot().unwrap();
    assert!(matches!(
        copy_store(from.as_mut(), pg.as_mut()),
        Err(Error::Store { .. })
    ));
    assert_eq!(pg.snapshot().unwrap(), before);
}
