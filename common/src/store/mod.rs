//! The store contract: everything crm2fa keeps, behind one trait.
//!
//! A backend ([`sqlite`], [`postgres`]) implements [`Store`],
//! which runs transactions, and [`Tx`], the reads and conditional writes
//! inside one. Each write's promise is in its documentation, and the
//! [`conformance`] suite checks every backend against them, races included.
//!
//! The operations the login and the CLI call (redeem a code, enrol,
//! unlock …) are written once, below, on `dyn Store`: the rules decided
//! from data (the lockout arithmetic in [`crate::model`], the audit wording
//! in [`crate::audit`]) never live in a backend. Every check-and-consume is
//! one conditional write whose affected-row count decides (`… WHERE
//! used_at IS NULL`; the user's row written only if it is still the row
//! the attempt was decided from), inside one transaction: that is
//! exactly-once in SQLite and in a server database, on one host or many.
use subtle::ConstantTimeEq;

use crate::audit::{AuditCtx, AuditEntry, AuditFilter, Fact};
use crate::codes::HASH_LEN;
use crate::config::{LockoutConfig, StoreConfig};
use crate::delivery::Channel;
use crate::error::{Error, Result};
use crate::model::{
    Candidate, CodeKind, Factor, LockState, NewEnrollment, SeenFactors, Snapshot, StepUse,
    StoredCode, TotpMatch, TotpState, UserRecord, Verdict,
};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod pg;
pub mod pool;
pub mod postgres;
pub mod sqlite;

/// How hard a commit insists on reaching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On disk before the commit returns: for everything that consumes a
    /// code or changes a factor, so it stays done across a power cut.
    Full,
    /// May reach the disk a little later: for audit-only rows, which
    /// consume nothing (a login that needs no code pays no disk flush).
    Light,
}

/// What a transaction may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxKind {
    /// Read only: a consistent view, no lock held against writers.
    Read,
    /// Read and write: concurrent writers queue behind it (up to the
    /// backend's busy timeout) rather than fail.
    Write(Durability),
}

/// The body of a transaction: called once, or again from the start when
/// the backend reports [`Error::Conflict`].
pub type TxBody<'a> = dyn FnMut(&mut dyn Tx) -> Result<()> + 'a;

/// Whether a store's error `e` says that this process or the server ran
/// out of descriptors, memory or connections, rather than that the store
/// cannot be used: the system refused a descriptor or memory
/// ([`pg::out_of_resources`]); the PostgreSQL server or client ran out
/// (SQLSTATE class 53, [`pg::PgError::out_of_resources`]); SQLite could
/// not allocate, or could not open a file (`CANTOPEN`, which keeps no
/// errno: a read-only file system or a refusing security module says it
/// too) while this process can open none.
pub fn out_of_resources(e: &(dyn std::error::Error + 'static)) -> bool {
    use rusqlite::ErrorCode::{CannotOpen, OutOfMemory};
    pg::out_of_resources(e)
        || std::iter::successors(Some(e), |c| c.source()).any(|c| {
            c.downcast_ref::<pg::PgError>()
                .is_some_and(pg::PgError::out_of_resources)
                || match c.downcast_ref::<rusqlite::Error>() {
                    Some(rusqlite::Error::SqliteFailure(f, _)) => {
                        f.code == OutOfMemory || (f.code == CannotOpen && no_file_opens())
                    }
                    _ => false,
                }
        })
}

/// This process cannot open a file now, for want of descriptors or memory.
fn no_file_opens() -> bool {
    std::fs::File::open("/dev/null").is_err_and(|e| pg::out_of_resources(&e))
}

/// A store backend: opens transactions. `Send`, so that crm2fad can keep
/// one open between the logins it serves, whichever thread serves them.
pub trait Store: Send {
    /// Where the store lives (a path, or an address without credentials),
    /// for messages.
    fn location(&self) -> &str;

    /// Whether this store, opened for an earlier login and kept, may serve
    /// another: still the file at its path (not one moved away since), a
    /// session the server has not ended. False means: open it afresh. An
    /// error when its server left a call unanswered past `connect_timeout`:
    /// the login fails now, rather than wait as long again for a new
    /// session.
    fn still_current(&mut self) -> Result<bool>;

    /// Run `body` in one transaction and commit if it returns `Ok`; roll
    /// back if it returns an error, if any call inside it failed (even one
    /// whose error the body did not pass on: then no further call runs and
    /// the transaction returns an error), or if the commit fails. All of a
    /// write transaction's changes become visible together or not at all,
    /// to every process and host sharing the store.
    fn transaction(&mut self, kind: TxKind, body: &mut TxBody<'_>) -> Result<()>;

    /// The backend's own consistency check: a list of problems, empty when
    /// all is well.
    fn check_integrity(&mut self) -> Result<Vec<String>>;

    /// Start `reads` now, as the next read transaction will make them
    /// ([`Tx::last_reads`] of exactly these, first and alone), so that the
    /// caller's work until then overlaps the wait for a server. Nothing to
    /// do for a store whose reads do not wait on one (the default); any
    /// other call after it is served as usual.
    fn read_ahead(&mut self, reads: &[Read<'_>]) {
        let _ = reads;
    }

    /// The login is about to wait on the person logging in (a prompt) or
    /// on a sender, for as long as they take. A store lent by crm2fad's
    /// pool that holds a server session gives it back meanwhile, so that
    /// logins parked at their prompts do not use up the server's
    /// connections (shared by every host of a fleet); the next call takes
    /// one again. Nothing to do for other stores (the default).
    fn set_aside(&mut self) {}

    /// The next read is a login's first (its `login_view`):
    /// a store whose server may have stopped answering bounds that read's
    /// answers by `connect_timeout`, as a new session must connect within
    /// it, so that a login fails within it when the server is down or cut
    /// off. Other calls keep their own bound: a write may wait for a row
    /// another host holds. Nothing to do for other stores (the default).
    fn login_read_next(&mut self) {}
}

/// The reads and conditional writes inside one transaction.
///
/// Writes whose result is a `bool` are conditional: they report whether
/// they changed a row, and that count is what decides (never a read made
/// before them). A store may report a code's consumption
/// ([`Tx::consume_code`]) as made before it knows:
/// if it was not, the transaction then fails with [`Error::Conflict`],
/// nothing of it is written, and the body, run again ([`Store::write`]
/// does), hears the true count.
pub trait Tx {
    /// One user, if the store knows them, and their row locked against
    /// other writers until the transaction ends: what a write operation
    /// decides from this read stays true while it writes.
    fn lock_user(&mut self, name: &str) -> Result<Option<UserRecord>>;

    /// Expect the user's row to be `seen` still (read earlier, outside
    /// this transaction): if it is not, or is gone, the transaction fails
    /// with [`Error::Conflict`] and nothing of it is written. A store may
    /// find that only when the transaction commits, so that the writes
    /// decided from `seen` go with the check: each of them is conditional
    /// itself ([`Tx::write_attempt`] is made only over `seen`, a code is
    /// consumed only if unused), so none stands on a row that changed.
    fn expect_user(&mut self, seen: &UserRecord) -> Result<()>;

    /// One user, if the store knows them.
    fn user(&mut self, name: &str) -> Result<Option<UserRecord>>;

    /// Every user, ordered by name.
    fn users(&mut self) -> Result<Vec<UserRecord>>;

    /// The user's unused codes of `kind`; codes that expire only while
    /// unexpired at `now`; of a kind that is [`CodeKind::newest_only`],
    /// only the newest row of the user and kind, if it is unused and
    /// unexpired (newest by row, never by a host's clock).
    fn unused_codes(&mut self, kind: CodeKind, name: &str, now: i64) -> Result<Vec<StoredCode>>;

    /// The sealed backup codes kept for display while the user's enrolment
    /// is pending (`None` when it is not pending; empty when none are kept).
    fn pending_codes(&mut self, name: &str) -> Result<Option<Vec<u8>>>;

    /// Audit rows matching `filter`, oldest first.
    fn audit(&mut self, filter: &AuditFilter) -> Result<Vec<AuditEntry>>;

    /// Add a user with no factor, unless the store knows them already.
    fn insert_user(&mut self, name: &str, code_salt: &[u8], now: i64) -> Result<()>;

    /// Set the user's lock counters to `to`. False when the user is
    /// unknown.
    fn update_lock(&mut self, name: &str, to: &LockState, now: i64) -> Result<bool>;

    /// Write `to`, the outcome of an attempt decided from `from`, into the
    /// user's row: `from` is the row as [`Tx::lock_user`] read it or as
    /// [`Tx::expect_user`] expects it. The write stands only if the row
    /// is still `from` when it is made (its count of unused backup codes
    /// aside, which a consumed code in this transaction changes): else the
    /// transaction fails with [`Error::Conflict`] and nothing of it is
    /// written. A store may find that only when the transaction commits.
    /// A step `to` uses was found usable in `from`
    /// ([`UserRecord::step_usable`]): as the row is still `from`, it is
    /// used once, ever, across every process and host sharing this store.
    fn write_attempt(&mut self, from: &UserRecord, to: &Attempt, now: i64) -> Result<()>;

    /// Mark the code in row `id` used at `now`, if it is still unused (and,
    /// of a kind that is [`CodeKind::newest_only`], still the newest row of
    /// its user). True for exactly one caller per code, ever.
    fn consume_code(&mut self, kind: CodeKind, id: i64, now: i64) -> Result<bool>;

    /// Give the user the new enrolment `new`, pending, with `last_step`
    /// reset: only if `new.replace`, or if the user has no TOTP factor.
    /// Turns 2FA back on. False when a factor was kept. The user's code
    /// salt stays as it is.
    fn set_enrollment(&mut self, name: &str, new: &NewEnrollment<'_>, now: i64) -> Result<bool>;

    /// Drop the sealed codes kept for display.
    fn clear_pending_codes(&mut self, name: &str, now: i64) -> Result<()>;

    /// Remove the user's codes of `kind` (only the unused ones with
    /// `unused_only`).
    fn delete_codes(&mut self, kind: CodeKind, name: &str, unused_only: bool) -> Result<()>;

    /// Add unused backup codes (their hashes).
    fn insert_backup_codes(
        &mut self,
        name: &str,
        hashes: &[[u8; HASH_LEN]],
        now: i64,
    ) -> Result<()>;

    /// Add an unused code of an expiring `kind` (recovery, email, SMS; its
    /// hash), valid until `expires_at`; the new row's id.
    fn insert_expiring_code(
        &mut self,
        kind: CodeKind,
        name: &str,
        hash: &[u8; HASH_LEN],
        expires_at: i64,
        now: i64,
    ) -> Result<i64>;

    /// Delete the user's rows of `kind` made before `before`, except the
    /// newest one: it stays whatever its age, so that taking back a code
    /// stored after it gives it back. Rewrites no other row.
    fn prune_codes(&mut self, kind: CodeKind, name: &str, before: i64) -> Result<()>;

    /// When each of the user's codes of `kind` made after `since` was made,
    /// oldest first (used, expired or not).
    fn codes_made_since(&mut self, kind: CodeKind, name: &str, since: i64) -> Result<Vec<i64>>;

    /// Delete `name`'s code in row `id` unless it was used: a used code
    /// stays, as a record and toward the resend limit. A row of another
    /// user (an id used again after a reset) is left alone.
    fn delete_unused_code(&mut self, kind: CodeKind, name: &str, id: i64) -> Result<()>;

    /// Set (or with `None` remove) where the user's `channel` codes go.
    /// False for an unknown user.
    fn set_contact(
        &mut self,
        name: &str,
        channel: Channel,
        to: Option<&str>,
        now: i64,
    ) -> Result<bool>;

    /// Set (or with `None` remove) the channel the user gets codes by
    /// without asking. Setting one is an enrolment: it turns 2FA back on.
    /// Removing one leaves the user's 2FA on or off as it was. False for an
    /// unknown user.
    fn set_delivery(&mut self, name: &str, channel: Option<Channel>, now: i64) -> Result<bool>;

    /// Turn the user's 2FA off or on. False for an unknown user.
    fn set_disabled(&mut self, name: &str, disabled: bool, now: i64) -> Result<bool>;

    /// Remove every factor: TOTP state none, no secret, no kept codes, no
    /// delivery channel, 2FA on, `last_step` reset. Contacts stay. False for
    /// an unknown user.
    fn clear_factors(&mut self, name: &str, now: i64) -> Result<bool>;

    /// The remote hosts the user is remembered from at `now`, with the time
    /// each is remembered until, by host.
    fn remembered(&mut self, name: &str, now: i64) -> Result<Vec<(String, i64)>>;

    /// Remember the user from `host` until `until` (replacing an earlier
    /// time for that host).
    fn remember(&mut self, name: &str, host: &str, until: i64) -> Result<()>;

    /// Forget the user's remembered `host`, or every one with `None`; how
    /// many were forgotten.
    fn forget(&mut self, name: &str, host: Option<&str>) -> Result<usize>;

    /// Make the user's pending enrolment active with every step up to
    /// `last_step` counted as used (a secret imported with its history).
    /// False unless the enrolment is pending.
    fn activate(&mut self, name: &str, last_step: i64, now: i64) -> Result<bool>;

    /// Append an audit row.
    fn insert_audit(&mut self, entry: &AuditEntry) -> Result<()>;

    /// Every row of the store, exactly as kept (audit oldest first).
    fn export(&mut self) -> Result<Snapshot>;

    /// Write every row of `snapshot` as it is, into a store that has none
    /// (codes get new row ids).
    fn load(&mut self, snapshot: &Snapshot) -> Result<()>;

    /// The transaction's last statements: several reads, each answered as
    /// its own method answers it, in order. Nothing may follow them in the
    /// transaction. A backend that talks to a server sends them together,
    /// in a read transaction with its `BEGIN` and `COMMIT`: one round trip.
    fn last_reads(&mut self, reads: &[Read<'_>]) -> Result<Vec<Found>> {
        reads
            .iter()
            .map(|r| {
                Ok(match *r {
                    Read::User(name) => Found::User(self.user(name)?),
                    Read::UnusedCodes(kind, name, now) => {
                        Found::Codes(self.unused_codes(kind, name, now)?)
                    }
                    Read::Remembered(name, now) => Found::Remembered(self.remembered(name, now)?),
                })
            })
            .collect()
    }
}

/// One read of [`Tx::last_reads`]: the method of [`Tx`] it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read<'a> {
    /// [`Tx::user`].
    User(&'a str),
    /// [`Tx::unused_codes`].
    UnusedCodes(CodeKind, &'a str, i64),
    /// [`Tx::remembered`].
    Remembered(&'a str, i64),
}

/// What one [`Read`] found.
#[derive(Debug, Clone)]
pub enum Found {
    /// Of [`Read::User`].
    User(Option<UserRecord>),
    /// Of [`Read::UnusedCodes`].
    Codes(Vec<StoredCode>),
    /// Of [`Read::Remembered`].
    Remembered(Vec<(String, i64)>),
}

/// What a login reads before it asks anything.
#[derive(Debug, Clone)]
pub struct LoginView {
    /// The user, if the store knows them.
    pub user: Option<UserRecord>,
    /// They hold an unused, unexpired recovery code.
    pub has_recovery: bool,
    /// Until when the login's remote host is remembered for them.
    pub remembered_until: Option<i64>,
    /// The channels asked about by which they hold an unused, unexpired
    /// sent code (counted only where they have a contact).
    pub sent: Vec<Channel>,
}

/// What [`Store`]'s `grant_send` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendGrant {
    /// The code is stored (row `id`) and may be sent.
    Granted {
        /// Its row, to withdraw it if sending fails.
        id: i64,
    },
    /// The resend limit is reached until then: nothing stored.
    Limited {
        /// When the next code may be sent.
        until: i64,
    },
    /// The user is locked: nothing stored.
    Locked {
        /// When the lock ends.
        until: i64,
    },
    /// The channel's address or number is no longer the one the code
    /// would be sent to (changed or removed meanwhile): nothing stored.
    ContactChanged,
}

/// The resend limit: at most `max` codes per user and channel within
/// `window` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendLimit {
    /// Codes within the window.
    pub max: u32,
    /// Seconds.
    pub window: i64,
}

/// One user's factor made elsewhere, for [`Store`]'s `import`.
#[derive(Debug, Clone, Copy)]
pub struct Imported<'a> {
    /// The account.
    pub user: &'a str,
    /// The secret and backup codes, sealed and hashed (`replace` is implied).
    pub new: NewEnrollment<'a>,
    /// The newest TOTP step already used with this secret.
    pub last_step: i64,
    /// The audit row.
    pub audit: &'a AuditEntry,
}

/// What one attempt writes to the user's row ([`Tx::write_attempt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The lock counters after it.
    pub lock: LockState,
    /// The TOTP step it used, if it used one: the newest used from now on;
    /// a pending enrolment becomes active and its kept codes are dropped.
    pub step: Option<i64>,
    /// It succeeded: the time of the last success is the attempt's.
    pub success: bool,
}

/// How often a write transaction is run again after [`Error::Conflict`].
const CONFLICT_RETRIES: u32 = 5;

/// The first statement that failed inside a transaction, kept by the
/// backend's [`Tx`]. A body may go on after an error and return `Ok`; the
/// transaction must not then commit: PostgreSQL would roll back and report
/// the COMMIT as done, SQLite would commit the statements around the
/// failed one, half of what the body meant to do. Once one has failed, no
/// further statement runs, and the transaction is rolled back and fails.
#[derive(Debug, Default)]
struct TxFailure {
    /// What failed; `None` while nothing has.
    what: Option<String>,
    /// It was a [`Error::Conflict`]: the transaction is run again.
    conflict: bool,
}

impl TxFailure {
    /// Keep `e` if it is the first failure; return it.
    fn note(&mut self, e: Error) -> Error {
        if self.what.is_none() {
            self.conflict = matches!(e, Error::Conflict { .. });
            self.what = Some(match &e {
                Error::Store { source, .. } => source.to_string(),
                other => other.to_string(),
            });
        }
        e
    }

    /// An error once a statement has failed: nothing more may run.
    fn check(&self, location: &str) -> Result<()> {
        match &self.what {
            None => Ok(()),
            Some(what) => Err(Error::store(
                location,
                format!("an earlier statement of this transaction failed ({what})"),
            )),
        }
    }

    /// What the transaction returns instead of committing, if a statement
    /// failed in it.
    fn into_error(self, location: &str) -> Option<Error> {
        let what = self.what?;
        Some(if self.conflict {
            Error::Conflict {
                location: location.into(),
            }
        } else {
            Error::store(
                location,
                format!("a statement failed ({what}): the transaction was rolled back"),
            )
        })
    }
}

/// Where a login gets its store: opened afresh for it ([`Fresh`], the PAM
/// module), or kept open between logins ([`pool::Pool`], crm2fad).
pub trait Stores {
    /// The configured store, open, for one login.
    fn open(&self, cfg: &StoreConfig) -> Result<Box<dyn Store + '_>>;

    /// Whether the stores stay open between logins (crm2fad's pool): then
    /// lending one opens nothing, and a login takes it before it looks the
    /// account up, so that its first read goes ahead
    /// ([`Store::read_ahead`]). A login that opens its store afresh looks
    /// the account up first: a name NSS does not know opens nothing.
    fn keeps_open(&self) -> bool {
        false
    }

    /// The configuration at `path`, read for one login ([`Config::load`]).
    /// crm2fad's pool parses it again only when its text changed.
    fn config(&self, path: &std::path::Path) -> Result<crate::config::Config> {
        crate::config::Config::load(path)
    }
}

/// Opens the configured store afresh at every call ([`open`]), a PostgreSQL
/// one through the connector, if any.
#[derive(Clone, Copy)]
pub struct Fresh<'a>(pub Option<&'a dyn pg::PgConnect>);

impl std::fmt::Debug for Fresh<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Fresh").field(&self.0.is_some()).finish()
    }
}

impl Stores for Fresh<'_> {
    fn open(&self, cfg: &StoreConfig) -> Result<Box<dyn Store + '_>> {
        open(cfg, self.0)
    }
}

/// Open the configured store (never creates one): SQLite, or PostgreSQL
/// through `pg` when `[store] url` is set.
pub fn open(cfg: &StoreConfig, pg: Option<&dyn pg::PgConnect>) -> Result<Box<dyn Store>> {
    match &cfg.postgres {
        None => Ok(Box::new(sqlite::SqliteStore::open(&cfg.path)?)),
        Some(p) => {
            let (client, target) = connect(p, pg)?;
            Ok(Box::new(postgres::PgStore::open(client, &target)?))
        }
    }
}

/// Create the configured store if missing (or bring its schema up to
/// date), then open it. Idempotent.
pub fn create(cfg: &StoreConfig, pg: Option<&dyn pg::PgConnect>) -> Result<Box<dyn Store>> {
    match &cfg.postgres {
        None => Ok(Box::new(sqlite::SqliteStore::create(&cfg.path)?)),
        Some(p) => {
            let (client, target) = connect(p, pg)?;
            Ok(Box::new(postgres::PgStore::create(client, &target)?))
        }
    }
}

fn connect(
    cfg: &crate::config::PostgresConfig,
    pg: Option<&dyn pg::PgConnect>,
) -> Result<(Box<dyn pg::PgClient>, pg::PgTarget)> {
    let pg = pg.ok_or_else(|| {
        Error::store(
            cfg.location(),
            "this program has no PostgreSQL client (install the crm2fa PostgreSQL support)",
        )
    })?;
    let target = cfg.target()?;
    let client = pg
        .connect(&target)
        .map_err(|e| Error::store(cfg.location(), e))?;
    Ok((client, target))
}

/// What [`login_view`](<dyn Store>::login_view) reads: all at once,
/// whatever the user turns out to be (on a server that is one round trip,
/// where reading the user first cost one more for each read that depends
/// on it).
fn login_reads<'a>(
    name: &'a str,
    rhost: Option<&str>,
    channels: &[Channel],
    now: i64,
) -> Vec<Read<'a>> {
    let mut reads = vec![
        Read::User(name),
        Read::UnusedCodes(CodeKind::Recovery, name, now),
    ];
    if rhost.is_some() {
        reads.push(Read::Remembered(name, now));
    }
    reads.extend(
        channels
            .iter()
            .map(|&c| Read::UnusedCodes(CodeKind::sent(c), name, now)),
    );
    reads
}

/// Void the user's unused codes sent by `channel`: marked used, they log
/// in no more but still count toward the resend limit, which a new
/// address or factor does not lift.
fn void_sent_codes(tx: &mut dyn Tx, channel: Channel, name: &str, now: i64) -> Result<()> {
    let kind = CodeKind::sent(channel);
    for code in tx.unused_codes(kind, name, now)? {
        tx.consume_code(kind, code.id, now)?;
    }
    Ok(())
}

/// A new factor takes the old one's place: the user's backup codes give
/// way to `backup_hashes`, recovery codes and remembered hosts (which
/// vouched for logins with the old factor) go, and unused sent codes are
/// voided.
fn replace_codes(
    tx: &mut dyn Tx,
    name: &str,
    backup_hashes: &[[u8; HASH_LEN]],
    now: i64,
) -> Result<()> {
    tx.delete_codes(CodeKind::Backup, name, false)?;
    tx.insert_backup_codes(name, backup_hashes, now)?;
    tx.delete_codes(CodeKind::Recovery, name, false)?;
    for channel in Channel::ALL {
        void_sent_codes(tx, channel, name, now)?;
    }
    tx.forget(name, None)?;
    Ok(())
}

/// [`Error::Changed`] unless `user`'s factors are still those `new` was
/// agreed on over ([`NewEnrollment::seen`]).
fn ensure_seen(user: &UserRecord, new: &NewEnrollment<'_>) -> Result<()> {
    match new.seen {
        Some(seen) if *seen != SeenFactors::of(Some(user)) => Err(Error::Changed {
            user: user.name.clone(),
        }),
        _ => Ok(()),
    }
}

/// Lock the user's row; [`Error::Changed`] unless codes hashed with `salt`
/// are theirs to keep (the salt was read, or made, before the transaction).
fn lock_with_salt(tx: &mut dyn Tx, name: &str, salt: &[u8]) -> Result<UserRecord> {
    match tx.lock_user(name)? {
        Some(u) if u.code_salt == salt => Ok(u),
        _ => Err(Error::Changed { user: name.into() }),
    }
}

/// The id of the one usable code whose hash is `hash`. Every stored hash
/// is compared, in constant time.
fn find_code(
    tx: &mut dyn Tx,
    kind: CodeKind,
    user: &UserRecord,
    hash: &[u8; HASH_LEN],
    now: i64,
) -> Result<Option<i64>> {
    if kind == CodeKind::Backup && !user.backup_codes_usable() {
        return Ok(None);
    }
    let mut found = None;
    for code in tx.unused_codes(kind, &user.name, now)? {
        if bool::from(code.hash.as_slice().ct_eq(&hash[..])) {
            found = Some(code.id);
        }
    }
    Ok(found)
}

impl dyn Store + '_ {
    /// Run `body` in a read transaction and return what it returns.
    pub fn read<T>(&mut self, mut body: impl FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
        let mut out = None;
        self.transaction(TxKind::Read, &mut |tx| {
            out = Some(body(tx)?);
            Ok(())
        })?;
        out.ok_or_else(|| self.no_result())
    }

    /// Run `body` in a write transaction with `durability` and return what
    /// it returns; run it again from the start when a concurrent writer
    /// got in between (never more than a few times).
    pub fn write<T>(
        &mut self,
        durability: Durability,
        mut body: impl FnMut(&mut dyn Tx) -> Result<T>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            let mut out = None;
            match self.transaction(TxKind::Write(durability), &mut |tx| {
                out = Some(body(tx)?);
                Ok(())
            }) {
                Err(Error::Conflict { .. }) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    // Back off a random 1 to 8 ms times the attempt, so
                    // writers that collided do not collide again.
                    let jitter = crate::crypto::random_bytes(1).first().copied().unwrap_or(0);
                    let ms = u64::from(attempt) * (1 + u64::from(jitter % 8));
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
                Err(e) => return Err(e),
                Ok(()) => return out.ok_or_else(|| self.no_result()),
            }
        }
    }

    fn no_result(&self) -> Error {
        Error::store(
            self.location(),
            "a transaction committed without running its body",
        )
    }

    /// One user, if the store knows them.
    pub fn user(&mut self, name: &str) -> Result<Option<UserRecord>> {
        self.read(|tx| tx.user(name))
    }

    /// Every user the store knows, by name.
    pub fn users(&mut self) -> Result<Vec<UserRecord>> {
        self.read(|tx| tx.users())
    }

    /// One user, if the store knows them, and whether they hold an unused,
    /// unexpired recovery code.
    pub fn user_and_recovery(
        &mut self,
        name: &str,
        now: i64,
    ) -> Result<(Option<UserRecord>, bool)> {
        let v = self.login_view(name, None, &[], now)?;
        Ok((v.user, v.has_recovery))
    }

    /// What a login reads first, in one read: the user, whether they hold
    /// a recovery code, until when `rhost` is remembered for them, and by
    /// which of `channels` (the configured ones) they hold a sent code.
    pub fn login_view(
        &mut self,
        name: &str,
        rhost: Option<&str>,
        channels: &[Channel],
        now: i64,
    ) -> Result<LoginView> {
        let reads = login_reads(name, rhost, channels, now);
        let location = self.location().to_string();
        let found = self.read(|tx| tx.last_reads(&reads))?;
        let mismatch = || {
            Error::store(
                location.clone(),
                "a read was answered with another kind of result",
            )
        };
        let mut found = found.into_iter();
        let user = match found.next() {
            Some(Found::User(u)) => u,
            _ => return Err(mismatch()),
        };
        let codes = |found: &mut std::vec::IntoIter<Found>| match found.next() {
            Some(Found::Codes(c)) => Ok(c),
            _ => Err(mismatch()),
        };
        let has_recovery = !codes(&mut found)?.is_empty();
        let remembered_until = match rhost {
            Some(host) => match found.next() {
                Some(Found::Remembered(hosts)) => hosts
                    .into_iter()
                    .find(|(h, _)| h == host)
                    .map(|(_, until)| until)
                    .filter(|_| user.is_some()),
                _ => return Err(mismatch()),
            },
            None => None,
        };
        // Only a channel with a contact can have sent a code.
        let mut sent = vec![];
        for &c in channels {
            let unused = codes(&mut found)?;
            if user.as_ref().is_some_and(|u| u.contact(c).is_some()) && !unused.is_empty() {
                sent.push(c);
            }
        }
        Ok(LoginView {
            user,
            has_recovery,
            remembered_until,
            sent,
        })
    }

    /// Start what [`login_view`](Self::login_view) with the same
    /// arguments reads first ([`Store::read_ahead`]).
    pub fn login_view_ahead(
        &mut self,
        name: &str,
        rhost: Option<&str>,
        channels: &[Channel],
        now: i64,
    ) {
        self.read_ahead(&login_reads(name, rhost, channels, now));
    }

    /// The remote hosts `name` is remembered from at `now`, until when.
    pub fn remembered(&mut self, name: &str, now: i64) -> Result<Vec<(String, i64)>> {
        self.read(|tx| tx.remembered(name, now))
    }

    /// Forget `host` for `name`, or every remembered host with `None`; how
    /// many were forgotten (the audit row is written only if any).
    pub fn forget(&mut self, name: &str, host: Option<&str>, audit: &AuditEntry) -> Result<usize> {
        self.write(Durability::Full, |tx| {
            let n = tx.forget(name, host)?;
            if n > 0 {
                tx.insert_audit(audit)?;
            }
            Ok(n)
        })
    }

    /// Does the user hold an unused, unexpired recovery code?
    pub fn has_valid_recovery(&mut self, name: &str, now: i64) -> Result<bool> {
        self.read(|tx| Ok(!tx.unused_codes(CodeKind::Recovery, name, now)?.is_empty()))
    }

    /// Would this backup or recovery code be accepted now? Consumes and
    /// counts nothing.
    pub fn code_usable(
        &mut self,
        kind: CodeKind,
        name: &str,
        hash: &[u8; HASH_LEN],
        now: i64,
    ) -> Result<bool> {
        self.read(|tx| match tx.user(name)? {
            Some(u) => Ok(find_code(tx, kind, &u, hash, now)?.is_some()),
            None => Ok(false),
        })
    }

    /// Audit rows, oldest first.
    pub fn audit(&mut self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        self.read(|tx| tx.audit(filter))
    }

    /// Record an audit row on its own, with [`Durability::Light`].
    pub fn record(&mut self, entry: &AuditEntry) -> Result<()> {
        self.write(Durability::Light, |tx| tx.insert_audit(entry))
    }

    /// Start (or, with `new.replace`, replace) the user's TOTP enrolment
    /// (it replaces a delivery channel as the factor too): pending, the new
    /// sealed secret, and a new set of backup codes that stay unusable
    /// until activation. Every older code of the user is void, and no host
    /// is remembered any more. False, and nothing changed, when the user
    /// has a factor and `replace` is off.
    pub fn begin_enrollment(
        &mut self,
        name: &str,
        new: &NewEnrollment<'_>,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool> {
        self.write(Durability::Full, |tx| {
            tx.insert_user(name, new.code_salt, now)?;
            let user = lock_with_salt(tx, name, new.code_salt)?;
            ensure_seen(&user, new)?;
            if !tx.set_enrollment(name, new, now)? {
                return Ok(false);
            }
            // The app replaces a delivery channel as the user's factor too:
            // until the first code activates it, codes by email or SMS are
            // asked for at the prompt, not sent unasked, and the new backup
            // codes wait for the activation like any enrolment's.
            tx.set_delivery(name, None, now)?;
            replace_codes(tx, name, new.backup_hashes, now)?;
            tx.insert_audit(audit)?;
            Ok(true)
        })
    }

    /// Activate a pending enrolment with a TOTP step the user's app showed
    /// (`confirm`): the step is consumed as by a login. Returns the sealed
    /// backup codes to show, or `None` when the user is not pending or the
    /// step was already used. Counts nothing toward the lockout.
    pub fn confirm(
        &mut self,
        name: &str,
        totp: &TotpMatch,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<Option<Vec<u8>>> {
        self.write(Durability::Full, |tx| {
            let Some(user) = tx.lock_user(name)? else {
                return Ok(None);
            };
            let Some(codes) = tx.pending_codes(name)? else {
                return Ok(None);
            };
            if !user.step_usable(totp, StepUse::Activation) {
                return Ok(None);
            }
            let used = Attempt {
                lock: user.lock,
                step: Some(totp.step),
                success: false,
            };
            tx.write_attempt(&user, &used, now)?;
            tx.insert_audit(audit)?;
            Ok(Some(codes))
        })
    }

    /// One login attempt, in one transaction. A locked user is refused and
    /// nothing is checked. Otherwise the first factor that matches is
    /// consumed — a TOTP step newer than the last one used, an unused
    /// backup code of an active enrolment, an unused unexpired recovery
    /// code (a code sent by email or SMS is used up like a recovery code)
    /// — and the failure count cleared, or else the attempt counted as a
    /// failure: one write of the user's row, made only if the row is still
    /// the one the attempt was decided from, so that parallel attempts
    /// never count from the same value nor use the same step. The audit
    /// rows go in with it. A success
    /// remembers `remember`'s host until its time; a lock forgets every
    /// remembered host of the user.
    pub fn redeem(
        &mut self,
        name: &str,
        candidate: &Candidate,
        now: i64,
        lockout: &LockoutConfig,
        ctx: &AuditCtx,
        remember: Option<(&str, i64)>,
    ) -> Result<Verdict> {
        self.redeem_seen(name, None, candidate, now, lockout, ctx, remember)
    }

    /// [`redeem`](Self::redeem) by a login that read the user as `seen`
    /// before it asked for the code: the attempt is decided from `seen`,
    /// and stands only if the row is still `seen` (on PostgreSQL the whole
    /// write is then one statement). If the row changed meanwhile, the
    /// attempt is made again from the row as it is, as `redeem` makes it.
    #[allow(clippy::too_many_arguments)]
    pub fn redeem_seen(
        &mut self,
        name: &str,
        seen: Option<&UserRecord>,
        candidate: &Candidate,
        now: i64,
        lockout: &LockoutConfig,
        ctx: &AuditCtx,
        remember: Option<(&str, i64)>,
    ) -> Result<Verdict> {
        let mut seen = seen.filter(|u| u.name == name);
        self.write(Durability::Full, |tx| {
            // Once only: a transaction run again after a conflict reads.
            let user = match seen.take() {
                Some(user) => {
                    tx.expect_user(user)?;
                    user.clone()
                }
                None => match tx.lock_user(name)? {
                    Some(user) => user,
                    None => return Ok(Verdict::UnknownUser),
                },
            };
            let verdict = match user.locked_at(now) {
                Some(until) => Verdict::Locked { until },
                None => match first_match(tx, &user, candidate, now)? {
                    Some((factor, activated_codes)) => {
                        let done = Attempt {
                            lock: LockState::default(),
                            step: match factor {
                                Factor::Totp => candidate.totp.as_ref().map(|m| m.step),
                                _ => None,
                            },
                            success: true,
                        };
                        tx.write_attempt(&user, &done, now)?;
                        if let Some((host, until)) = remember {
                            tx.remember(name, host, until)?;
                        }
                        Verdict::Accepted {
                            factor,
                            activated_codes,
                            backup_codes_left: user.after_success(factor, now).backup_codes_left(),
                        }
                    }
                    None => {
                        let counted = user.lock.after_attempt(lockout, now);
                        let failed = Attempt {
                            lock: counted,
                            step: None,
                            success: false,
                        };
                        tx.write_attempt(&user, &failed, now)?;
                        if counted.locked_until.is_some() {
                            tx.forget(name, None)?;
                        }
                        Verdict::Rejected {
                            failures: counted.failures,
                            reused: candidate
                                .totp
                                .as_ref()
                                .is_some_and(|m| m.step <= user.last_step),
                            locked_until: counted.locked_until,
                        }
                    }
                },
            };
            for e in ctx.entries(now, name, &Fact::of_verdict(&verdict)) {
                tx.insert_audit(&e)?;
            }
            Ok(verdict)
        })
    }

    /// Everything in the store, in one consistent read.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        self.read(|tx| tx.export())
    }

    /// Copy `snapshot` into this store, all or nothing, if it holds no
    /// user and no audit row; the counts of what it then holds, read back
    /// before the copy commits. Unless they are the snapshot's, table by
    /// table, the copy is rolled back: the store stays empty, so the copy
    /// can be tried again.
    pub fn load_snapshot(&mut self, snapshot: &Snapshot) -> Result<Vec<(&'static str, usize)>> {
        let location = self.location().to_string();
        let want = snapshot.counts();
        self.write(Durability::Full, |tx| {
            if !tx.users()?.is_empty() || !tx.audit(&AuditFilter::default())?.is_empty() {
                return Err(Error::store(
                    location.clone(),
                    "is not empty: a copy goes only into a store with no users and no audit \
                     rows",
                ));
            }
            tx.load(snapshot)?;
            let got = tx.export()?.counts();
            if got != want {
                return Err(Error::store(
                    location.clone(),
                    format!(
                        "the copy does not hold what the source does: {got:?} against \
                         {want:?}; nothing was written"
                    ),
                ));
            }
            Ok(got)
        })
    }

    /// Import factors made elsewhere, all or none in one transaction: for
    /// each, the user's enrolment is replaced by the active secret of
    /// `new` with its backup codes, every step up to `last_step` counts as
    /// used, every earlier code is void and no host is remembered.
    pub fn import(&mut self, factors: &[Imported<'_>], now: i64) -> Result<()> {
        self.write(Durability::Full, |tx| {
            for f in factors {
                tx.insert_user(f.user, f.new.code_salt, now)?;
                let user = lock_with_salt(tx, f.user, f.new.code_salt)?;
                ensure_seen(&user, &f.new)?;
                if !tx.set_enrollment(f.user, &f.new, now)?
                    || !tx.activate(f.user, f.last_step, now)?
                {
                    return Err(Error::Changed {
                        user: f.user.into(),
                    });
                }
                replace_codes(tx, f.user, f.new.backup_hashes, now)?;
                tx.update_lock(f.user, &LockState::default(), now)?;
                tx.insert_audit(f.audit)?;
            }
            Ok(())
        })
    }

    /// Replace the user's backup codes with a new set, hashed with `salt`
    /// (the old set is void at once). False, and nothing changed, unless the
    /// user's backup codes are usable (an active enrolment or a delivery
    /// channel).
    pub fn replace_backup_codes(
        &mut self,
        name: &str,
        salt: &[u8],
        hashes: &[[u8; HASH_LEN]],
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool> {
        self.write(Durability::Full, |tx| {
            if tx.user(name)?.is_none() {
                return Ok(false);
            }
            if !lock_with_salt(tx, name, salt)?.backup_codes_usable() {
                return Ok(false);
            }
            tx.delete_codes(CodeKind::Backup, name, false)?;
            tx.insert_backup_codes(name, hashes, now)?;
            tx.clear_pending_codes(name, now)?;
            tx.insert_audit(audit)?;
            Ok(true)
        })
    }

    /// Add a one-time recovery code (hash, made with `salt`) valid until
    /// `expires_at`; it replaces any earlier unused one and clears a lock.
    /// A user the store does not know is added with `salt`.
    pub fn add_recovery(
        &mut self,
        name: &str,
        salt: &[u8],
        hash: &[u8; HASH_LEN],
        expires_at: i64,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<()> {
        self.write(Durability::Full, |tx| {
            tx.insert_user(name, salt, now)?;
            lock_with_salt(tx, name, salt)?;
            tx.delete_codes(CodeKind::Recovery, name, true)?;
            tx.insert_expiring_code(CodeKind::Recovery, name, hash, expires_at, now)?;
            tx.update_lock(name, &LockState::default(), now)?;
            tx.insert_audit(audit)
        })
    }

    /// Store a code to send by `channel` to `to` (its hash under `salt`,
    /// salt and address read before), valid until `expires_at`, unless the
    /// user is locked, `limit` is reached, or the channel's address is no
    /// longer `to` (an administrator changed it meanwhile). It voids the
    /// user's earlier codes of that channel by being newer (only the newest
    /// can be used: one is outstanding at a time, on every host whatever
    /// its clock), and rewrites none of them. The audit row goes in with
    /// it. Every process and host counts against the same limit.
    #[allow(clippy::too_many_arguments)]
    pub fn grant_send(
        &mut self,
        name: &str,
        channel: Channel,
        to: &str,
        salt: &[u8],
        hash: &[u8; HASH_LEN],
        expires_at: i64,
        now: i64,
        limit: SendLimit,
        audit: &AuditEntry,
    ) -> Result<SendGrant> {
        let kind = CodeKind::sent(channel);
        self.write(Durability::Full, |tx| {
            let user = lock_with_salt(tx, name, salt)?;
            if let Some(until) = user.locked_at(now) {
                return Ok(SendGrant::Locked { until });
            }
            if user.contact(channel) != Some(to) {
                return Ok(SendGrant::ContactChanged);
            }
            let since = now.saturating_sub(limit.window);
            let made = tx.codes_made_since(kind, name, since)?;
            let max = limit.max as usize;
            if made.len() >= max {
                let until = made[made.len() - max].saturating_add(limit.window);
                return Ok(SendGrant::Limited { until });
            }
            tx.prune_codes(kind, name, since)?;
            let id = tx.insert_expiring_code(kind, name, hash, expires_at, now)?;
            tx.insert_audit(audit)?;
            Ok(SendGrant::Granted { id })
        })
    }

    /// Take back a code [`grant_send`](Self::grant_send) stored that could
    /// not be sent: it neither works nor counts toward the resend limit,
    /// and the code sent before it by that channel, if still unused and
    /// unexpired, works again. A code used meanwhile (the sender failed
    /// after the message went out) stays: it still counts, and the one
    /// before it stays void.
    pub fn withdraw_send(
        &mut self,
        name: &str,
        channel: Channel,
        id: i64,
        audit: &AuditEntry,
    ) -> Result<()> {
        self.write(Durability::Full, |tx| {
            tx.delete_unused_code(CodeKind::sent(channel), name, id)?;
            tx.insert_audit(audit)
        })
    }

    /// Set or remove where `name`'s codes by `channel` go; a user the
    /// store does not know is added with `code_salt_if_new`. A change
    /// (a removal too) voids the unused codes sent by that channel: a code
    /// sent to the old address or number no longer logs in, and still
    /// counts toward the resend limit. Removing the
    /// contact of the user's delivery channel ends that factor, and leaves
    /// their 2FA on or off as it was.
    pub fn set_contact(
        &mut self,
        name: &str,
        channel: Channel,
        to: Option<&str>,
        code_salt_if_new: &[u8],
        now: i64,
        audit: &AuditEntry,
    ) -> Result<()> {
        self.set_contacts(name, &[(channel, to, audit)], code_salt_if_new, now)
    }

    /// [`Store::set_contact`] for each of `changes` (a channel, its new
    /// contact, the audit row), all or none in one transaction.
    pub fn set_contacts(
        &mut self,
        name: &str,
        changes: &[(Channel, Option<&str>, &AuditEntry)],
        code_salt_if_new: &[u8],
        now: i64,
    ) -> Result<()> {
        self.write(Durability::Full, |tx| {
            tx.insert_user(name, code_salt_if_new, now)?;
            let before = tx.lock_user(name)?;
            for &(channel, to, audit) in changes {
                tx.set_contact(name, channel, to, now)?;
                if before.as_ref().and_then(|u| u.contact(channel)) != to {
                    void_sent_codes(tx, channel, name, now)?;
                }
                if to.is_none() && before.as_ref().and_then(|u| u.delivery) == Some(channel) {
                    // Nowhere to send them: the channel is no factor any more.
                    tx.set_delivery(name, None, now)?;
                }
                tx.insert_audit(audit)?;
            }
            Ok(())
        })
    }

    /// Make `channel` a factor of `name`: codes are sent without asking.
    /// Backup codes hashed with `salt` (the user's, read before) are added
    /// when the user holds none that a login would accept; true when they
    /// were. [`Error::Changed`] when the user is unknown or their salt is
    /// not `salt`.
    pub fn set_delivery(
        &mut self,
        name: &str,
        channel: Channel,
        salt: &[u8],
        backup_hashes: &[[u8; HASH_LEN]],
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool> {
        self.write(Durability::Full, |tx| {
            let user = lock_with_salt(tx, name, salt)?;
            tx.set_delivery(name, Some(channel), now)?;
            let add = user.backup_codes_left() == 0;
            if add {
                tx.delete_codes(CodeKind::Backup, name, false)?;
                tx.insert_backup_codes(name, backup_hashes, now)?;
                // A pending enrolment's set, kept to show at its
                // activation, is void now.
                tx.clear_pending_codes(name, now)?;
            }
            tx.insert_audit(audit)?;
            Ok(add)
        })
    }

    /// Clear the lockout. False for an unknown user.
    pub fn unlock(&mut self, name: &str, now: i64, audit: &AuditEntry) -> Result<bool> {
        self.write(Durability::Full, |tx| {
            let done = tx.update_lock(name, &LockState::default(), now)?;
            if done {
                tx.insert_audit(audit)?;
            }
            Ok(done)
        })
    }

    /// Turn the user's 2FA off, keeping every factor but forgetting the
    /// remembered hosts; a user with no factor (or unknown, then added with
    /// `code_salt_if_new`) is thereby exempt.
    pub fn disable(
        &mut self,
        name: &str,
        code_salt_if_new: &[u8],
        now: i64,
        audit: &AuditEntry,
    ) -> Result<()> {
        self.write(Durability::Full, |tx| {
            tx.insert_user(name, code_salt_if_new, now)?;
            tx.set_disabled(name, true, now)?;
            tx.forget(name, None)?;
            tx.insert_audit(audit)
        })
    }

    /// Turn the user's 2FA back on with the factors they had. False for an
    /// unknown user.
    pub fn enable(&mut self, name: &str, now: i64, audit: &AuditEntry) -> Result<bool> {
        self.write(Durability::Full, |tx| {
            let done = tx.set_disabled(name, false, now)?;
            if done {
                tx.insert_audit(audit)?;
            }
            Ok(done)
        })
    }

    /// Lost device: remove the TOTP secret, every backup and recovery code,
    /// the remembered hosts, the lock and the per-user exemption. Contact
    /// details stay. False for an unknown user.
    pub fn reset(&mut self, name: &str, now: i64, audit: &AuditEntry) -> Result<bool> {
        self.write(Durability::Full, |tx| {
            if !tx.clear_factors(name, now)? {
                return Ok(false);
            }
            tx.update_lock(name, &LockState::default(), now)?;
            for kind in CodeKind::ALL {
                tx.delete_codes(kind, name, false)?;
            }
            tx.forget(name, None)?;
            tx.insert_audit(audit)?;
            Ok(true)
        })
    }
}

/// The first factor of `candidate` that `user` accepts: a usable TOTP
/// step (written by [`Tx::write_attempt`]), else a backup code, a recovery
/// code, a code sent by email, by SMS (consumed here). The factor, and the
/// sealed codes to show when a TOTP code activates a pending enrolment.
fn first_match(
    tx: &mut dyn Tx,
    user: &UserRecord,
    candidate: &Candidate,
    now: i64,
) -> Result<Option<(Factor, Option<Vec<u8>>)>> {
    if let Some(totp) = &candidate.totp {
        if user.step_usable(totp, StepUse::Login) {
            // `user` is the row as it stands while the attempt is written.
            let pending = match user.state {
                TotpState::Pending => tx.pending_codes(&user.name)?,
                TotpState::None | TotpState::Active => None,
            };
            return Ok(Some((Factor::Totp, pending)));
        }
    }
    for kind in CodeKind::ALL {
        let Some(hash) = candidate.hash(kind) else {
            continue;
        };
        if let Some(id) = find_code(tx, kind, user, hash, now)? {
            if tx.consume_code(kind, id, now)? {
                return Ok(Some((kind.factor(), None)));
            }
        }
    }
    Ok(None)
}
