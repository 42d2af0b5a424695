//! How many round trips and statements a login takes on a real server,
//! and that the one-statement write decides as the careful one does: a
//! TOTP code accepted once, a replay refused and counted, also when the
//! row the login read before its prompt changed meanwhile.
mod testdb;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crm2fa_common::audit::AuditCtx;
use crm2fa_common::codes::SALT_LEN;
use crm2fa_common::config::LockoutConfig;
use crm2fa_common::delivery::Channel;
use crm2fa_common::model::{Candidate, TotpMatch, UserRecord, Verdict};
use crm2fa_common::store::pg::{Done, Param, PgClient, PgConnect, PgError, SslMode, Stmt};
use crm2fa_common::store::postgres::PgStore;
use crm2fa_common::store::Store;
use crm2fa_pg::Connector;
use crm2fa_tests::pg::PgServer;

const NOW: i64 = 1_800_000_000;
const SECRET: &[u8] = b"sealed secret";

/// The round trips of a session: the first words of each statement, one
/// list per round trip.
type Trips = Arc<Mutex<Vec<Vec<String>>>>;

/// A real session that notes its round trips.
struct Counting {
    inner: Box<dyn PgClient>,
    trips: Trips,
}

impl PgClient for Counting {
    fn pipeline_within(
        &mut self,
        statements: &[Stmt<'_>],
        limit: Option<Duration>,
    ) -> Vec<Result<Done, PgError>> {
        let words = statements
            .iter()
            .map(|s| {
                let (Stmt::Batch(sql) | Stmt::Execute(sql, _) | Stmt::Query(sql, _)) = *s;
                sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
            })
            .collect();
        self.trips.lock().unwrap().push(words);
        self.inner.pipeline_within(statements, limit)
    }
}

/// A login with TOTP step `step`, from the row read before its prompt:
/// the verdict, and the round trips of its write.
fn login(store: &mut dyn Store, trips: &Trips, step: i64) -> (Verdict, Vec<Vec<String>>) {
    let seen = store.user("u").unwrap().expect("the user");
    login_from(store, trips, &seen, step)
}

/// [`login`] from the row as `seen`.
fn login_from(
    store: &mut dyn Store,
    trips: &Trips,
    seen: &UserRecord,
    step: i64,
) -> (Verdict, Vec<Vec<String>>) {
    let before = trips.lock().unwrap().len();
    let code = Candidate {
        totp: Some(TotpMatch {
            step,
            sealed_secret: SECRET.to_vec(),
        }),
        ..Candidate::default()
    };
    let lockout = LockoutConfig {
        max_failures: 5,
        lock_seconds: 60,
        max_lock_seconds: 240,
    };
    let ctx = AuditCtx::here("sshd", "203.0.113.7");
    let verdict = store
        .redeem_seen("u", Some(seen), &code, NOW, &lockout, &ctx, None)
        .unwrap();
    (verdict, trips.lock().unwrap()[before..].to_vec())
}

/// A store on a new database `db` with user `u`, active with TOTP, whose
/// session notes its round trips.
fn counting_store(db: &str) -> (PgStore, Trips) {
    let (store, trips, _) = counting_store_and_admin(db);
    (store, trips)
}

/// [`counting_store`], and a session of the server's superuser on it.
fn counting_store_and_admin(db: &str) -> (PgStore, Trips, Box<dyn PgClient>) {
    let target = testdb::new_db(PgServer::shared(), db, SslMode::Disable);
    let mut admin = Connector.connect(&target).expect("connect");
    PgStore::create(Connector.connect(&target).expect("connect"), &target).expect("schema");
    admin
        .execute(
            "INSERT INTO users(name, state, secret, code_salt, created_at, updated_at)
             VALUES ('u', 'active', $1, $2, 0, 0)",
            &[Param::Bytes(SECRET), Param::Bytes(&[7; SALT_LEN])],
        )
        .unwrap();
    let trips = Trips::default();
    let client = Counting {
        inner: Connector.connect(&target).expect("connect"),
        trips: Arc::clone(&trips),
    };
    (
        PgStore::open(Box::new(client), &target).expect("open"),
        trips,
        admin,
    )
}

#[test]
fn a_logins_first_read_is_one_statement() {
    let (mut store, trips) = counting_store("first_read");
    let store: &mut dyn Store = &mut store;
    let before = trips.lock().unwrap().len();
    let view = store
        .login_view("u", Some("laptop"), &Channel::ALL, NOW)
        .unwrap();
    assert_eq!(view.user.map(|u| u.last_step), Some(-1));
    let reads = trips.lock().unwrap()[before..].to_vec();
    assert_eq!(reads.len(), 1, "one round trip: {reads:?}");
    assert_eq!(
        reads[0].len(),
        1,
        "one statement, with no BEGIN or COMMIT around it: {reads:?}"
    );
}

/// One round trip of one statement, with no BEGIN or COMMIT around it.
fn one_statement(write: &[Vec<String>]) {
    assert_eq!(write.len(), 1, "one round trip: {write:?}");
    assert_eq!(write[0].len(), 1, "one statement: {write:?}");
}

/// The verdict on a step already used, the first failure counted.
fn refused_as_reused_and_counted(v: &Verdict) {
    assert!(
        matches!(
            v,
            Verdict::Rejected {
                failures: 1,
                reused: true,
                ..
            }
        ),
        "{v:?}"
    );
}

#[test]
fn a_totp_logins_write_is_one_statement_and_a_replay_is_refused_and_counted() {
    let (mut store, trips) = counting_store("trips");
    let store: &mut dyn Store = &mut store;

    let (v, write) = login(store, &trips, 5);
    assert!(matches!(v, Verdict::Accepted { .. }), "{v:?}");
    one_statement(&write);

    // The same step again, from the row as it now is: refused and
    // counted, in one statement too.
    let (v, write) = login(store, &trips, 5);
    refused_as_reused_and_counted(&v);
    one_statement(&write);
    let row = store.user("u").unwrap().unwrap();
    assert_eq!((row.last_step, row.lock.failures), (5, 1));

    // Two logins read the row before their prompts; the first uses step
    // 6 and clears the count. The second offers step 6 too, decided from
    // the row it read (where step 6 is new): the server refuses its write
    // (the row is no longer what it read), and the write run again from
    // the row as it is hears the step used and counts the try.
    let stale = store.user("u").unwrap().unwrap();
    let (v, write) = login(store, &trips, 6);
    assert!(matches!(v, Verdict::Accepted { .. }), "{v:?}");
    one_statement(&write);
    let (v, write) = login_from(store, &trips, &stale, 6);
    refused_as_reused_and_counted(&v);
    assert!(write.len() > 1, "{write:?}");
    let row = store.user("u").unwrap().unwrap();
    assert_eq!((row.last_step, row.lock.failures), (6, 1));

    // A new step: one statement again, and the count cleared.
    let (v, write) = login(store, &trips, 7);
    assert!(matches!(v, Verdict::Accepted { .. }), "{v:?}");
    one_statement(&write);
    let row = store.user("u").unwrap().unwrap();
    assert_eq!((row.last_step, row.lock.failures), (7, 0));
}

#[test]
fn a_row_whose_values_this_build_reads_otherwise_still_logs_in() {
    // Written by hand or by another build: a channel in capitals, an
    // origin this build does not know. The row read back is not the row
    // stored, so the write over the row as read fails; run again with the
    // row locked, the login goes through, and the next one too.
    let (mut store, trips, mut admin) = counting_store_and_admin("odd_row");
    admin
        .execute(
            "UPDATE users SET delivery = 'EMAIL', enrolled_by = 'operator' WHERE name = 'u'",
            &[],
        )
        .unwrap();
    let store: &mut dyn Store = &mut store;
    for step in [5, 6] {
        let (v, write) = login(store, &trips, step);
        assert!(matches!(v, Verdict::Accepted { .. }), "{v:?}");
        assert!(write.len() > 1, "{write:?}");
        assert_eq!(store.user("u").unwrap().unwrap().last_step, step);
    }
}
