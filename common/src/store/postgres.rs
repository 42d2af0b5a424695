//! The PostgreSQL backend: one database shared by the hosts of a fleet.
//!
//! It speaks to the server through [`PgClient`] (see [`super::pg`]), so the
//! client library is not part of this crate. Every check-and-consume is one
//! conditional `UPDATE … WHERE …` whose affected-row count decides, in a
//! `READ COMMITTED` transaction: a concurrent update of the same row waits
//! for the first to commit and then re-checks its `WHERE` on the new row,
//! so of N hosts offering one code exactly one changes the row. A login's
//! attempt is written over the row it was decided from, the row's columns
//! in the `WHERE`; another write that reads before it writes (the resend
//! limit, an enrolment), and a login run again after a conflict, first
//! lock the user's row (`SELECT … FOR UPDATE`). Reads run in `REPEATABLE
//! READ READ ONLY` transactions: one consistent view. A login's first
//! read ([`Tx::last_reads`]) is one statement, whose branches see one
//! snapshot, with no `BEGIN` or `COMMIT` around it.
//!
//! Round trips are what a login waits for, so statements that need no
//! answer before the next one are sent with it ([`PgClient::pipeline`]):
//! `BEGIN` goes with the transaction's first statement, and writes whose
//! outcome nothing in the transaction reads (the success, the audit rows)
//! go with the next statement or the `COMMIT`. A statement whose outcome
//! must hold for the transaction to stand (the user's row still as the
//! login read it, the attempt's count made from the counters it read) is
//! a *guard*: the server itself fails it, and with it the transaction,
//! when it does not hold (a division by zero, [`GUARD_FAILED`]), so it too
//! goes with the `COMMIT`, which then rolls back. A code's consumption is
//! such a guard as well, reported as made, unless the transaction is run
//! again after a conflict: then its count is answered before anything is
//! decided from it. A write whose every statement was held back goes as
//! one statement instead ([`PgTx::commit`]): a login's write (the row's
//! check, the attempt written over the row it read, the audit) is one
//! statement, with no `BEGIN` or `COMMIT`, and a row changed meanwhile or
//! a code already used costs a second, careful transaction.
//!
//! The schema is versioned in `crm2fa_meta`; [`PgStore::create`] (run by
//! `crm2fa-admin init`, as a role that may create tables) creates or
//! upgrades it; [`PgStore::open`] (the login) never changes it, so the
//! module's role needs only row rights.
use std::ops::Range;

use super::pg::{Done, Param, PgClient, PgError, PgTarget, Stmt, Value};
use super::{Attempt, Durability, Found, Read, Store, Tx, TxBody, TxFailure, TxKind};
use crate::audit::{AuditEntry, AuditFilter, Event, Outcome};
use crate::codes::{HASH_LEN, SALT_LEN};
use crate::delivery::Channel;
use crate::error::{Error, Result};
use crate::model::{
    CodeKind, CodeRow, LockState, NewEnrollment, Origin, Snapshot, StoredCode, TotpState,
    UserRecord, UserRow,
};

/// Schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 1;

/// Migrations: entry `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    state         TEXT NOT NULL DEFAULT 'none',
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    secret        BYTEA,
    pending_codes BYTEA,
    code_salt     BYTEA NOT NULL,
    last_step     BIGINT NOT NULL DEFAULT -1,
    failures      BIGINT NOT NULL DEFAULT 0,
    locked_until  BIGINT,
    lock_level    BIGINT NOT NULL DEFAULT 0,
    last_success  BIGINT,
    enrolled_by   TEXT NOT NULL DEFAULT 'admin',
    email         TEXT,
    phone         TEXT,
    delivery      TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE TABLE backup_codes (
    id         BIGSERIAL PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    hash       BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX backup_codes_user ON backup_codes(username);
CREATE TABLE recovery_codes (
    id         BIGSERIAL PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    hash       BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX recovery_codes_user ON recovery_codes(username);
CREATE TABLE email_codes (
    id         BIGSERIAL PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    hash       BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX email_codes_user ON email_codes(username);
CREATE TABLE sms_codes (
    id         BIGSERIAL PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    hash       BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX sms_codes_user ON sms_codes(username);
CREATE TABLE remembered (
    username TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    host     TEXT NOT NULL,
    until    BIGINT NOT NULL,
    PRIMARY KEY (username, host)
);
CREATE TABLE audit (
    id       BIGSERIAL PRIMARY KEY,
    time     BIGINT NOT NULL,
    host     TEXT NOT NULL,
    username TEXT NOT NULL,
    service  TEXT NOT NULL,
    rhost    TEXT NOT NULL,
    event    TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE INDEX audit_user_time ON audit(username, time);
"#];

/// A store in a PostgreSQL database.
pub struct PgStore {
    client: Box<dyn PgClient>,
    location: String,
    /// When the schema version was last found to be this build's.
    checked: std::time::Instant,
    /// `connect_timeout`: how long the server may take to answer a login's
    /// first read, and the checks of a session kept between logins (see
    /// [`Store::still_current`]).
    answer_within: std::time::Duration,
    /// The next read transaction is a login's first
    /// ([`Store::login_read_next`]): each of its answers must come within
    /// `answer_within`.
    first_read: bool,
    /// The last write transaction failed on a concurrent change (or a
    /// code already used): the next, which runs its body again, hears the
    /// count of each code's consumption before it decides from it.
    careful: bool,
}

/// How long a session kept between logins trusts the schema version it
/// found: another host's `crm2fa-admin init` may upgrade the schema, and
/// this build then refuses the store, as a fresh open would.
const SCHEMA_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.location)
            .finish()
    }
}

/// A [`PgError`] as crm2fa's error for the store at `location`: a
/// serialization failure or deadlock is a [`Error::Conflict`] (the
/// transaction is run again).
fn pg_err(location: &str, e: PgError) -> Error {
    match e.sqlstate.as_deref() {
        Some("40001" | "40P01") => Error::Conflict {
            location: location.into(),
        },
        _ => Error::store(location, e),
    }
}

impl PgStore {
    /// Use the session `client` to the database at `target`: the schema must
    /// be this build's (an older one: run `crm2fa-admin init`). Changes
    /// nothing.
    pub fn open(client: Box<dyn PgClient>, target: &PgTarget) -> Result<PgStore> {
        let mut store = PgStore::new(client, target);
        match store.version()? {
            v if v == SCHEMA_VERSION => Ok(store),
            v if v > SCHEMA_VERSION => Err(Error::StoreSchema {
                location: store.location,
                found: v,
                supported: SCHEMA_VERSION,
            }),
            0 => Err(Error::StoreMissing {
                path: store.location.into(),
            }),
            v => Err(Error::store(
                store.location,
                format!(
                    "schema version {v} is older than this crm2fa's ({SCHEMA_VERSION}): run \
                     `crm2fa-admin init` to upgrade it"
                ),
            )),
        }
    }

    /// Create the schema, or bring an older one up to date, then open the
    /// store. Idempotent; needs a role that may create tables.
    pub fn create(client: Box<dyn PgClient>, target: &PgTarget) -> Result<PgStore> {
        let mut store = PgStore::new(client, target);
        store.migrate()?;
        PgStore::open(store.client, target)
    }

    fn new(client: Box<dyn PgClient>, target: &PgTarget) -> PgStore {
        PgStore {
            client,
            location: target.location(),
            checked: std::time::Instant::now(),
            answer_within: target.connect_timeout,
            first_read: false,
            careful: false,
        }
    }

    fn err(&self, e: PgError) -> Error {
        pg_err(&self.location, e)
    }

    /// The schema version, 0 without one: one query, answered within
    /// `connect_timeout`.
    fn version(&mut self) -> Result<i64> {
        let rows = match self.client.query_within(
            "SELECT value FROM crm2fa_meta WHERE key = 'schema_version'",
            &[],
            Some(self.answer_within),
        ) {
            Ok(rows) => rows,
            // undefined_table: no schema yet.
            Err(e) if e.sqlstate.as_deref() == Some("42P01") => return Ok(0),
            Err(e) => return Err(self.err(e)),
        };
        match rows.first().and_then(|r| r.first()) {
            Some(Value::Text(t)) => t.parse().map_err(|_| {
                Error::store(self.location.clone(), format!("bad schema version {t:?}"))
            }),
            _ => Ok(0),
        }
    }

    fn migrate(&mut self) -> Result<()> {
        let location = self.location.clone();
        let err =
            |e: PgError| Error::store(location.clone(), format!("schema upgrade failed: {e}"));
        // READ COMMITTED: once the lock is ours, each statement sees what an
        // upgrader before us committed.
        self.client
            .batch("BEGIN ISOLATION LEVEL READ COMMITTED")
            .map_err(err)?;
        // One upgrader at a time, whichever host runs `init`.
        let done = (|| -> Result<()> {
            self.client
                .batch(
                    "SELECT pg_advisory_xact_lock(7262836367);
                     CREATE TABLE IF NOT EXISTS crm2fa_meta (
                         key   TEXT PRIMARY KEY,
                         value TEXT NOT NULL
                     )",
                )
                .map_err(err)?;
            let mut v = self.version()?;
            if v > SCHEMA_VERSION {
                return Err(Error::StoreSchema {
                    location: location.clone(),
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            while v < SCHEMA_VERSION {
                let step = usize::try_from(v)
                    .ok()
                    .and_then(|i| MIGRATIONS.get(i))
                    .ok_or_else(|| {
                        Error::store(location.clone(), format!("no migration from version {v}"))
                    })?;
                self.client.batch(step).map_err(err)?;
                v += 1;
                let text = v.to_string();
                self.client
                    .execute(
                        "INSERT INTO crm2fa_meta(key, value) VALUES ('schema_version', $1)
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        &[Param::Text(&text)],
                    )
                    .map_err(err)?;
            }
            self.client.batch("COMMIT").map_err(err)
        })();
        if done.is_err() {
            let _ = self.client.batch("ROLLBACK");
        }
        done
    }
}

/// The tables of the schema, and the sequences behind their ids.
const TABLES: &[&str] = &[
    "crm2fa_meta",
    "users",
    "backup_codes",
    "recovery_codes",
    "email_codes",
    "sms_codes",
    "remembered",
    "audit",
];
const SEQUENCES: &[&str] = &[
    "backup_codes_id_seq",
    "recovery_codes_id_seq",
    "email_codes_id_seq",
    "sms_codes_id_seq",
    "audit_id_seq",
];

impl PgStore {
    /// The row rights a login needs and the connected role lacks, each
    /// with the GRANT that gives it.
    fn missing_rights(&mut self) -> Result<Vec<String>> {
        let mut out = vec![];
        for t in TABLES {
            // has_table_privilege is true if any one of a list is held:
            // each right is asked on its own.
            let need: &[&str] = if *t == "crm2fa_meta" {
                &["SELECT"]
            } else {
                &["SELECT", "INSERT", "UPDATE", "DELETE"]
            };
            let mut missing = vec![];
            let mut role = String::new();
            for right in need {
                let rows = self
                    .client
                    .query(
                        "SELECT current_user::text, has_table_privilege($1, $2)",
                        &[Param::Text(t), Param::Text(right)],
                    )
                    .map_err(|e| self.err(e))?;
                if let Some([Value::Text(r), Value::Bool(false)]) = rows.first().map(Vec::as_slice)
                {
                    role.clone_from(r);
                    missing.push(*right);
                }
            }
            if !missing.is_empty() {
                out.push(format!(
                    "role {role} lacks {} on table {t}: GRANT {} ON {t} TO {role}",
                    missing.join(", "),
                    need.join(", ")
                ));
            }
        }
        for q in SEQUENCES {
            let rows = self
                .client
                .query(
                    "SELECT current_user::text, has_sequence_privilege($1, 'USAGE')",
                    &[Param::Text(q)],
                )
                .map_err(|e| self.err(e))?;
            if let Some([Value::Text(role), Value::Bool(false)]) = rows.first().map(Vec::as_slice) {
                out.push(format!(
                    "role {role} lacks USAGE on sequence {q}: GRANT USAGE ON SEQUENCE {q} TO {role}"
                ));
            }
        }
        Ok(out)
    }
}

impl Store for PgStore {
    fn location(&self) -> &str {
        &self.location
    }

    /// The session is still open (the server may have been restarted, or
    /// have closed an idle session, since the last login), and, once a
    /// minute, the schema is still this build's.
    ///
    /// A server that stopped answering (suspended, or cut off by the
    /// network) leaves the session open: so a read sent ahead for an
    /// earlier login and the schema check must be answered within
    /// `connect_timeout`, as a new session must connect within it, and the
    /// login fails if they are not (a new session would wait as long
    /// again); so must the login's first read ([`Store::login_read_next`]).
    fn still_current(&mut self) -> Result<bool> {
        if !self.client.still_open().map_err(|e| self.err(e))? {
            return Ok(false);
        }
        if self.checked.elapsed() < SCHEMA_RECHECK {
            return Ok(true);
        }
        let asked = std::time::Instant::now();
        let current = match self.version() {
            Ok(v) => v == SCHEMA_VERSION,
            // Unanswered for its whole bound: the server is not answering.
            Err(e) if asked.elapsed() >= self.answer_within => return Err(e),
            // Any other failure (a session the server ended without a word,
            // found by this call): a new session is tried.
            Err(_) => false,
        };
        if current {
            self.checked = std::time::Instant::now();
        }
        Ok(current)
    }

    fn login_read_next(&mut self) {
        self.first_read = true;
    }

    fn transaction(&mut self, kind: TxKind, body: &mut TxBody<'_>) -> Result<()> {
        let begin = match kind {
            TxKind::Read => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            TxKind::Write(Durability::Full) => "BEGIN ISOLATION LEVEL READ COMMITTED",
            // Audit-only rows: the commit need not wait for the server's
            // disk (the row is still written, just a moment later).
            TxKind::Write(Durability::Light) => {
                "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL synchronous_commit = off"
            }
        };
        let first_read = std::mem::take(&mut self.first_read);
        let careful = match kind {
            TxKind::Read => true,
            TxKind::Write(_) => std::mem::take(&mut self.careful),
        };
        let mut tx = PgTx {
            client: self.client.as_mut(),
            limit: (first_read && kind == TxKind::Read).then_some(self.answer_within),
            location: &self.location,
            failure: TxFailure::default(),
            later: vec![Later::batch(begin)],
            begun: false,
            read_only: kind == TxKind::Read,
            committed: false,
            careful,
            one_statement: kind == TxKind::Write(Durability::Full),
            locked: Vec::new(),
        };
        // A COMMIT after a failed statement is answered as a success (the
        // server rolls back instead): one that failed, even if the body went
        // on, fails the transaction here.
        let done = body(&mut tx).and_then(|()| tx.commit());
        match done {
            Ok(()) => Ok(()),
            Err(e) => {
                if tx.begun {
                    let _ = self.client.batch("ROLLBACK");
                }
                self.careful = matches!(e, Error::Conflict { .. });
                Err(e)
            }
        }
    }

    /// Sent now as the read transaction's one statement will be: no
    /// `BEGIN`, the reads as one statement.
    fn read_ahead(&mut self, reads: &[Read<'_>]) {
        let (sql, params, _) = reads_statement(reads);
        self.client.send_ahead(Stmt::Query(&sql, &params));
    }

    fn check_integrity(&mut self) -> Result<Vec<String>> {
        let mut problems = self.missing_rights()?;
        let rows = self
            .client
            .query(
                "SELECT name FROM users WHERE length(code_salt) <> $1
                 OR state NOT IN ('none', 'pending', 'active')
                 OR (state <> 'none' AND secret IS NULL)",
                &[Param::Int(SALT_LEN as i64)],
            )
            .map_err(|e| self.err(e))?;
        for r in rows {
            if let Some(Value::Text(name)) = r.first() {
                problems.push(format!("the row of user {name} is damaged"));
            }
        }
        Ok(problems)
    }
}

/// One transaction on the store's session.
struct PgTx<'a> {
    client: &'a mut dyn PgClient,
    /// How soon each answer must come, beyond the session's own bound.
    limit: Option<std::time::Duration>,
    location: &'a str,
    /// The first statement that failed: then none is sent after it, and
    /// the transaction is rolled back.
    failure: TxFailure,
    /// Statements to send with the next one that needs an answer: the
    /// `BEGIN`, and writes whose outcome nothing before the commit reads.
    later: Vec<Later>,
    /// The `BEGIN` was sent.
    begun: bool,
    /// A read transaction.
    read_only: bool,
    /// The `COMMIT` of a read transaction went with its last reads
    /// ([`Tx::last_reads`]).
    committed: bool,
    /// A code's consumption is answered before the body goes on (see
    /// [`PgStore::careful`]); else it is a guard that goes with the commit.
    careful: bool,
    /// What is held back may go as one statement ([`PgTx::commit`]):
    /// a write at the default isolation and durability.
    one_statement: bool,
    /// The users whose rows this transaction locked ([`Tx::lock_user`]).
    locked: Vec<String>,
}

/// At most this many statements are held back (a copy of a store inserts
/// rows by the thousand).
const MAX_LATER: usize = 64;

/// A statement held back to go with the next one. Statements held back
/// may also all go as one statement ([`PgTx::commit`]), each seeing the
/// rows as they were before it: none may depend on another's effect.
struct Later {
    sql: String,
    /// `None`: a batch without parameters.
    params: Option<Vec<Value>>,
    /// A guard: `sql` gives rows (`UPDATE … RETURNING 1`, `SELECT 1 …`),
    /// and the transaction stands only if it gives exactly one; else it
    /// fails with [`GUARD_FAILED`], as an [`Error::Conflict`].
    guard: bool,
}

impl Later {
    fn batch(sql: &str) -> Later {
        Later {
            sql: sql.to_owned(),
            params: None,
            guard: false,
        }
    }

    fn statement(sql: String, params: Vec<Value>, guard: bool) -> Later {
        Later {
            sql,
            params: Some(params),
            guard,
        }
    }

    /// The statement as sent on its own.
    fn text(&self) -> std::borrow::Cow<'_, str> {
        if self.guard {
            guarded(&self.sql).into()
        } else {
            self.sql.as_str().into()
        }
    }
}

/// The SQLSTATE of a guard that does not hold: `division_by_zero`, the
/// one division in a guard, by the number of rows that hold.
const GUARD_FAILED: &str = "22012";

/// `serialization_failure`.
const SERIALIZATION_FAILED: &str = "40001";

/// `sql` onto `out`, each parameter `$n` numbered `$(n + by)`. A statement held
/// back has no `$` but its parameters' (no literal, comment or quoting
/// with one): its values are all parameters.
fn renumber(out: &mut String, sql: &str, by: usize) {
    use std::fmt::Write;
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        match rest[..digits].parse::<usize>() {
            Ok(n) => {
                let _ = write!(out, "{}", n + by);
            }
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
}

/// `rows` as a guard: a statement whose one row is the number 1 if `rows`
/// gave exactly one row, and which fails with [`GUARD_FAILED`] if it gave
/// none.
fn guarded(rows: &str) -> String {
    format!("WITH done AS ({rows}) SELECT 1 / count(*)::int FROM done")
}

/// The columns a user is read from ([`Row::user`]), and the type of each.
const USER_COLUMNS: [(&str, &str); 15] = [
    ("name", "text"),
    ("state", "text"),
    ("disabled", "boolean"),
    ("secret", "bytea"),
    ("code_salt", "bytea"),
    ("last_step", "bigint"),
    ("failures", "bigint"),
    ("locked_until", "bigint"),
    ("last_success", "bigint"),
    (
        "(SELECT count(*) FROM backup_codes b WHERE b.username = users.name AND b.used_at IS NULL)",
        "bigint",
    ),
    ("email", "text"),
    ("phone", "text"),
    ("lock_level", "bigint"),
    ("enrolled_by", "text"),
    ("delivery", "text"),
];

/// The type of each of [`USER_COLUMNS`].
const USER_TYPES: [&str; USER_COLUMNS.len()] = {
    let mut types = [""; USER_COLUMNS.len()];
    let mut i = 0;
    while i < types.len() {
        types[i] = USER_COLUMNS[i].1;
        i += 1;
    }
    types
};

/// Which of [`USER_COLUMNS`] is the count of unused backup codes.
const UNUSED_BACKUP_CODES: usize = 9;

/// The select list of a user ([`USER_COLUMNS`]).
fn user_columns() -> &'static str {
    static LIST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let names: Vec<&str> = USER_COLUMNS.iter().map(|&(c, _)| c).collect();
        names.join(", ")
    });
    &LIST
}

/// The condition that the user's row is `u`, column by column, compared
/// with parameters added to `params`; with `count` false, the count of
/// unused backup codes is left out.
fn row_is(u: &UserRecord, count: bool, params: &mut Vec<Value>) -> String {
    use std::fmt::Write;
    let (mut columns, mut values) = (String::with_capacity(256), String::with_capacity(256));
    for (i, ((column, type_), value)) in USER_COLUMNS.iter().zip(user_values(u)).enumerate() {
        if i == UNUSED_BACKUP_CODES && !count {
            continue;
        }
        params.push(value);
        if !columns.is_empty() {
            columns.push_str(", ");
            values.push_str(", ");
        }
        columns.push_str(column);
        let _ = write!(values, "${}::{type_}", params.len());
    }
    format!("ROW({columns}) IS NOT DISTINCT FROM ROW({values})")
}

/// `u` as the values of [`USER_COLUMNS`] it was read from ([`Row::user`]
/// backwards).
fn user_values(u: &UserRecord) -> [Value; 15] {
    let opt_int = |v: Option<i64>| v.map_or(Value::Null, Value::Int);
    let opt_text = |v: Option<&str>| v.map_or(Value::Null, |t| Value::Text(t.into()));
    [
        Value::Text(u.name.clone()),
        Value::Text(u.state.as_str().into()),
        Value::Bool(u.disabled),
        u.secret.clone().map_or(Value::Null, Value::Bytes),
        Value::Bytes(u.code_salt.clone()),
        Value::Int(u.last_step),
        Value::Int(i64::from(u.lock.failures)),
        opt_int(u.lock.locked_until),
        opt_int(u.last_success),
        Value::Int(i64::from(u.unused_backup_codes)),
        opt_text(u.email.as_deref()),
        opt_text(u.phone.as_deref()),
        Value::Int(i64::from(u.lock.level)),
        Value::Text(u.enrolled_by.as_str().into()),
        opt_text(u.delivery.map(Channel::as_str)),
    ]
}

fn table(kind: CodeKind) -> &'static str {
    match kind {
        CodeKind::Backup => "backup_codes",
        CodeKind::Recovery => "recovery_codes",
        CodeKind::Email => "email_codes",
        CodeKind::Sms => "sms_codes",
    }
}

/// Reads typed columns out of a row, or says which column was not what it
/// should be.
struct Row<'a> {
    values: &'a [Value],
    location: &'a str,
}

impl Row<'_> {
    fn bad(&self, i: usize, want: &str) -> Error {
        // Never the value itself: it may be a hash or a sealed secret.
        Error::store(
            self.location,
            format!("column {i} is not {want}: the store is damaged"),
        )
    }

    fn int(&self, i: usize) -> Result<i64> {
        match self.values.get(i) {
            Some(Value::Int(v)) => Ok(*v),
            _ => Err(self.bad(i, "an integer")),
        }
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.values.get(i) {
            Some(Value::Null) => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    fn count(&self, i: usize) -> Result<u32> {
        u32::try_from(self.int(i)?).map_err(|_| self.bad(i, "a count"))
    }

    fn text(&self, i: usize) -> Result<String> {
        match self.values.get(i) {
            Some(Value::Text(v)) => Ok(v.clone()),
            _ => Err(self.bad(i, "text")),
        }
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.values.get(i) {
            Some(Value::Null) => Ok(None),
            _ => self.text(i).map(Some),
        }
    }

    fn bytes(&self, i: usize) -> Result<Vec<u8>> {
        match self.values.get(i) {
            Some(Value::Bytes(v)) => Ok(v.clone()),
            _ => Err(self.bad(i, "bytes")),
        }
    }

    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>> {
        match self.values.get(i) {
            Some(Value::Null) => Ok(None),
            _ => self.bytes(i).map(Some),
        }
    }

    fn boolean(&self, i: usize) -> Result<bool> {
        match self.values.get(i) {
            Some(Value::Bool(v)) => Ok(*v),
            _ => Err(self.bad(i, "a boolean")),
        }
    }

    fn user(&self) -> Result<UserRecord> {
        let code_salt = self.bytes(4)?;
        if code_salt.len() != SALT_LEN {
            return Err(Error::store(
                self.location,
                format!(
                    "the code salt has {} bytes, not {SALT_LEN}: the store is damaged",
                    code_salt.len()
                ),
            ));
        }
        Ok(UserRecord {
            name: self.text(0)?,
            state: TotpState::parse(&self.text(1)?),
            disabled: self.boolean(2)?,
            secret: self.opt_bytes(3)?,
            enrolled_by: Origin::parse(&self.text(13)?),
            code_salt,
            last_step: self.int(5)?,
            lock: LockState {
                failures: self.count(6)?,
                locked_until: self.opt_int(7)?,
                level: self.count(12)?,
            },
            last_success: self.opt_int(8)?,
            unused_backup_codes: self.count(9)?,
            email: self.opt_text(10)?,
            phone: self.opt_text(11)?,
            delivery: self.opt_text(14)?.as_deref().and_then(Channel::parse),
        })
    }
}

fn opt(v: Option<i64>) -> Param<'static> {
    v.map_or(Param::Null, Param::Int)
}

fn opt_text(v: Option<&str>) -> Param<'_> {
    v.map_or(Param::Null, Param::Text)
}

/// One read as a branch of [`reads_statement`]: the types of its
/// columns, its select list and the rest of its `SELECT` (`FROM …`).
struct ReadSql {
    types: &'static [&'static str],
    columns: &'static str,
    rest: String,
}

const CODE_TYPES: &[&str] = &["bigint", "bytea"];
const REMEMBERED_TYPES: &[&str] = &["text", "bigint"];

/// `read` as a branch of a statement whose parameters so far are `params`
/// (its own are added).
fn read_sql<'a>(read: &Read<'a>, params: &mut Vec<Param<'a>>) -> ReadSql {
    let mut param = |p: Param<'a>| {
        params.push(p);
        format!("${}", params.len())
    };
    match *read {
        Read::User(name) => ReadSql {
            types: &USER_TYPES,
            columns: user_columns(),
            rest: format!("FROM users WHERE name = {}", param(Param::Text(name))),
        },
        Read::UnusedCodes(kind, name, now) => {
            let t = table(kind);
            let name = param(Param::Text(name));
            let rest = if kind.expires() {
                // Newest by id: ids come from a sequence, and a sent code is
                // stored only with its user's row locked, so a later code of
                // a user always has a larger id, whichever host stored it.
                let newest = if kind.newest_only() {
                    format!(" AND id = (SELECT max(id) FROM {t} WHERE username = {name})")
                } else {
                    String::new()
                };
                let now = param(Param::Int(now));
                format!(
                    "FROM {t} WHERE username = {name} AND used_at IS NULL \
                     AND expires_at > {now}{newest}"
                )
            } else {
                format!("FROM {t} WHERE username = {name} AND used_at IS NULL")
            };
            ReadSql {
                types: CODE_TYPES,
                columns: "id, hash",
                rest,
            }
        }
        Read::Remembered(name, now) => ReadSql {
            types: REMEMBERED_TYPES,
            columns: "host, until",
            rest: format!(
                "FROM remembered WHERE username = {} AND until > {}",
                param(Param::Text(name)),
                param(Param::Int(now))
            ),
        },
    }
}

/// `reads` as one statement, its parameters, and where each read's columns
/// are in its rows: the first column is the read's position in `reads`,
/// and each read has columns of its own (NULL in the other reads' rows).
/// One statement sees one snapshot of the database: the reads agree with
/// each other without a transaction around them.
fn reads_statement<'a>(reads: &[Read<'a>]) -> (String, Vec<Param<'a>>, Vec<Range<usize>>) {
    use std::fmt::Write;
    let mut params = Vec::new();
    let parts: Vec<ReadSql> = reads.iter().map(|r| read_sql(r, &mut params)).collect();
    let mut ranges = Vec::with_capacity(parts.len());
    let mut at = 1;
    for part in &parts {
        ranges.push(at..at + part.types.len());
        at += part.types.len();
    }
    // Written into one buffer: this is on the way of each login's first
    // read, and a string for each piece would be an allocation each.
    let mut sql = String::with_capacity(1024);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            sql.push_str(" UNION ALL ");
        }
        let _ = write!(sql, "(SELECT {i}");
        for (j, other) in parts.iter().enumerate() {
            if j == i {
                sql.push_str(", ");
                sql.push_str(part.columns);
            } else {
                // Typed: a union's columns take their types pairwise,
                // and two untyped NULLs would make one `text`.
                for t in other.types {
                    let _ = write!(sql, ", NULL::{t}");
                }
            }
        }
        let _ = write!(sql, " {})", part.rest);
    }
    (sql, params, ranges)
}

impl PgTx<'_> {
    /// Send what was held back, then `now`, together; the outcome of each
    /// of `now`. A held-back statement that failed, or a guard that did
    /// not hold, fails the transaction.
    fn run(&mut self, now: &[Stmt<'_>]) -> Result<Vec<Done>> {
        self.failure.check(self.location)?;
        if self.committed {
            return Err(self.failure.note(Error::store(
                self.location,
                "a statement came after the transaction's commit",
            )));
        }
        let later = std::mem::take(&mut self.later);
        let params: Vec<Vec<Param<'_>>> = later
            .iter()
            .map(|l| l.params.iter().flatten().map(Value::as_param).collect())
            .collect();
        let texts: Vec<_> = later.iter().map(Later::text).collect();
        let mut statements: Vec<Stmt<'_>> = later
            .iter()
            .zip(texts.iter().zip(&params))
            .map(|(l, (sql, p))| match (&l.params, l.guard) {
                (None, _) => Stmt::Batch(sql),
                (Some(_), false) => Stmt::Execute(sql, p),
                (Some(_), true) => Stmt::Query(sql, p),
            })
            .collect();
        statements.extend_from_slice(now);
        // The `BEGIN` is the first statement held back: it goes with the
        // first that is sent, unless a read alone took its place.
        self.begun |= !later.is_empty();
        let results = self.client.pipeline_within(&statements, self.limit);
        if results.len() != statements.len() {
            return Err(self.failure.note(Error::store(
                self.location,
                format!(
                    "the client answered {} of {} statements",
                    results.len(),
                    statements.len()
                ),
            )));
        }
        let mut results = results.into_iter();
        for (l, result) in later.iter().zip(results.by_ref()) {
            match result {
                Err(e) if l.guard && e.sqlstate.as_deref() == Some(GUARD_FAILED) => {
                    return Err(self.failure.note(Error::Conflict {
                        location: self.location.into(),
                    }));
                }
                Err(e) => return Err(self.failure.note(pg_err(self.location, e))),
                // A guard answered otherwise than the server answers one
                // that holds: the client is not what it should be.
                Ok(Done::Rows(rows)) if l.guard && rows != [vec![Value::Int(1)]] => {
                    return Err(self.unanswered())
                }
                Ok(Done::Rows(_)) => {}
                Ok(_) if l.guard => return Err(self.unanswered()),
                Ok(_) => {}
            }
        }
        results
            .map(|r| r.map_err(|e| self.failure.note(pg_err(self.location, e))))
            .collect()
    }

    /// Hold `sql` back to go with the next statement (see [`Later`]).
    fn exec_later(&mut self, sql: &str, params: &[Param<'_>]) -> Result<()> {
        let params = params.iter().map(|&p| Value::from(p)).collect();
        self.hold(Later::statement(sql.to_owned(), params, false))
    }

    /// Hold `rows` back as a guard (see [`Later::guard`]).
    fn guard_later(&mut self, rows: String, params: Vec<Value>) -> Result<()> {
        self.hold(Later::statement(rows, params, true))
    }

    /// Consume one row with `update`: whether it changed it. Unless
    /// careful, it goes with the commit as a guard and is reported as
    /// made: if it changed nothing, the transaction fails as a conflict,
    /// and the body, run again, hears the count.
    fn consume(&mut self, update: &str, params: &[Param<'_>]) -> Result<bool> {
        if self.careful {
            Ok(self.exec(update, params)? == 1)
        } else {
            let params = params.iter().map(|&p| Value::from(p)).collect();
            self.guard_later(format!("{update} RETURNING 1"), params)
                .map(|()| true)
        }
    }

    /// Hold `later` back to go with the next statement.
    fn hold(&mut self, later: Later) -> Result<()> {
        self.failure.check(self.location)?;
        if self.later.len() >= MAX_LATER {
            self.run(&[])?;
        }
        self.later.push(later);
        Ok(())
    }

    /// Send what is held back and `COMMIT`, together: a guard among them
    /// that does not hold fails the transaction on the server, whose
    /// `COMMIT` then rolls back.
    fn commit(&mut self) -> Result<()> {
        if let Some(e) = std::mem::take(&mut self.failure).into_error(self.location) {
            return Err(e);
        }
        if self.committed {
            return Ok(());
        }
        if self.one_statement && !self.begun && self.later.len() > 1 {
            return self.commit_as_one();
        }
        self.run(&[Stmt::Batch("COMMIT")]).map(drop)
    }

    /// Nothing was sent yet and the `BEGIN` is all that is held back
    /// besides statements: send them as one statement instead, each a
    /// part of its `WITH` (all see the rows as they were before it; each
    /// modifying part runs, to its end), the guards' checks its select
    /// list. One statement is one transaction: no `BEGIN`, no `COMMIT`.
    fn commit_as_one(&mut self) -> Result<()> {
        use std::fmt::Write;
        let later = std::mem::take(&mut self.later);
        // Written into one buffer, as the login's write is on its way.
        let mut sql = String::with_capacity(4096);
        let (mut checks, mut guards) = (String::new(), 0);
        let mut values: Vec<&Value> = Vec::new();
        for (i, l) in later.iter().enumerate().skip(1) {
            let Some(params) = &l.params else {
                return Err(self.failure.note(Error::store(
                    self.location,
                    "a batch was held back after the transaction's BEGIN",
                )));
            };
            sql.push_str(if i == 1 { "WITH " } else { ", " });
            let _ = write!(sql, "s{i} AS (");
            renumber(&mut sql, &l.sql, values.len());
            sql.push(')');
            values.extend(params);
            if l.guard {
                let comma = if guards == 0 { "" } else { ", " };
                let _ = write!(checks, "{comma}1 / (SELECT count(*)::int FROM s{i})");
                guards += 1;
            }
        }
        sql.push_str(" SELECT ");
        sql.push_str(if guards == 0 { "1" } else { &checks });
        let want = vec![vec![Value::Int(1); guards.max(1)]];
        let params: Vec<Param<'_>> = values.into_iter().map(Value::as_param).collect();
        let done = self
            .client
            .pipeline_within(&[Stmt::Query(&sql, &params)], self.limit)
            .pop();
        self.committed = true;
        match done {
            Some(Ok(Done::Rows(rows))) if rows == want => Ok(()),
            // A server whose sessions default to a stricter isolation
            // level refuses the statement on a concurrent change instead.
            Some(Err(e))
                if matches!(
                    e.sqlstate.as_deref(),
                    Some(GUARD_FAILED | SERIALIZATION_FAILED)
                ) =>
            {
                Err(self.failure.note(Error::Conflict {
                    location: self.location.into(),
                }))
            }
            Some(Err(e)) => Err(self.failure.note(pg_err(self.location, e))),
            _ => Err(self.unanswered()),
        }
    }

    /// Run one statement; the number of rows it changed.
    fn exec(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        match self.run(&[Stmt::Execute(sql, params)])?.pop() {
            Some(Done::Changed(n)) => Ok(n),
            _ => Err(self.unanswered()),
        }
    }

    fn rows(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Value>>> {
        match self.run(&[Stmt::Query(sql, params)])?.pop() {
            Some(Done::Rows(rows)) => Ok(rows),
            _ => Err(self.unanswered()),
        }
    }

    fn unanswered(&mut self) -> Error {
        self.failure.note(Error::store(
            self.location,
            "the client gave no rows for a statement",
        ))
    }

    fn row<'r>(&self, values: &'r [Value]) -> Row<'r>
    where
        Self: 'r,
    {
        Row {
            values,
            location: self.location,
        }
    }

    /// `reads` in one statement ([`reads_statement`]), sent with `then`
    /// after it; what each found.
    fn read_all(&mut self, reads: &[Read<'_>], then: &[Stmt<'_>]) -> Result<Vec<Found>> {
        let (sql, params, ranges) = reads_statement(reads);
        let mut statements = vec![Stmt::Query(&sql, &params)];
        statements.extend_from_slice(then);
        let rows = match self.run(&statements)?.into_iter().next() {
            Some(Done::Rows(rows)) => rows,
            _ => return Err(self.unanswered()),
        };
        let mut parts: Vec<Vec<Row<'_>>> = reads.iter().map(|_| Vec::new()).collect();
        for values in &rows {
            let part = match values.first() {
                Some(&Value::Int(i)) => usize::try_from(i).ok(),
                _ => None,
            };
            match part.and_then(|i| Some((i, values.get(ranges.get(i)?.clone())?))) {
                Some((i, values)) => parts[i].push(self.row(values)),
                None => return Err(self.bad_read()),
            }
        }
        reads
            .iter()
            .zip(parts)
            .map(|(read, rows)| self.found(read, &rows))
            .collect()
    }

    fn bad_read(&self) -> Error {
        Error::store(
            self.location,
            "a read was answered with rows of no read: the client is not what it should be",
        )
    }

    /// One read on its own.
    fn read_one(&mut self, read: Read<'_>) -> Result<Found> {
        let mut found = self.read_all(&[read], &[])?;
        found.pop().ok_or_else(|| self.bad_read())
    }

    /// What `read`'s rows say.
    fn found(&self, read: &Read<'_>, rows: &[Row<'_>]) -> Result<Found> {
        Ok(match read {
            Read::User(_) => Found::User(rows.first().map(Row::user).transpose()?),
            Read::UnusedCodes(..) => Found::Codes(
                rows.iter()
                    .map(|row| {
                        Ok(StoredCode {
                            id: row.int(0)?,
                            hash: row.bytes(1)?,
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
            Read::Remembered(..) => {
                let mut hosts = rows
                    .iter()
                    .map(|row| Ok((row.text(0)?, row.int(1)?)))
                    .collect::<Result<Vec<_>>>()?;
                hosts.sort();
                Found::Remembered(hosts)
            }
        })
    }

    fn users_where(&mut self, clause: &str, params: &[Param<'_>]) -> Result<Vec<UserRecord>> {
        let rows = self.rows(
            &format!("SELECT {} FROM users {clause}", user_columns()),
            params,
        )?;
        rows.iter().map(|r| self.row(r).user()).collect()
    }
}

impl Tx for PgTx<'_> {
    fn lock_user(&mut self, name: &str) -> Result<Option<UserRecord>> {
        // Lock the row first (FOR UPDATE cannot go with the count in the
        // select list), then read it: what the write decides from stays
        // true until the transaction ends, on every host. Sent together:
        // the server runs the read once the lock is granted.
        let key = [Param::Text(name)];
        let read = format!("SELECT {} FROM users WHERE name = $1", user_columns());
        let mut done = self
            .run(&[
                Stmt::Query("SELECT 1 FROM users WHERE name = $1 FOR UPDATE", &key),
                Stmt::Query(&read, &key),
            ])?
            .into_iter();
        match (done.next(), done.next()) {
            (Some(Done::Rows(locked)), _) if locked.is_empty() => Ok(None),
            (Some(Done::Rows(_)), Some(Done::Rows(users))) => {
                let user = users.first().map(|r| self.row(r).user()).transpose()?;
                self.locked.extend(user.as_ref().map(|u| u.name.clone()));
                Ok(user)
            }
            _ => Err(self.unanswered()),
        }
    }

    fn expect_user(&mut self, seen: &UserRecord) -> Result<()> {
        // A guard, held back: it goes with the writes decided from `seen`,
        // which are conditional themselves (`write_attempt` over the row's
        // columns as `seen` has them, a code only if unused). Here the
        // count of unused backup codes is checked too, as the statement
        // finds it before any of them is consumed.
        let mut params = vec![Value::Text(seen.name.clone())];
        let sql = format!(
            "SELECT 1 FROM users WHERE name = $1 AND {}",
            row_is(seen, true, &mut params)
        );
        self.guard_later(sql, params)
    }

    fn user(&mut self, name: &str) -> Result<Option<UserRecord>> {
        match self.read_one(Read::User(name))? {
            Found::User(u) => Ok(u),
            _ => Err(self.unanswered()),
        }
    }

    fn users(&mut self) -> Result<Vec<UserRecord>> {
        self.users_where("ORDER BY name", &[])
    }

    fn unused_codes(&mut self, kind: CodeKind, name: &str, now: i64) -> Result<Vec<StoredCode>> {
        match self.read_one(Read::UnusedCodes(kind, name, now))? {
            Found::Codes(c) => Ok(c),
            _ => Err(self.unanswered()),
        }
    }

    fn pending_codes(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        let rows = self.rows(
            "SELECT pending_codes FROM users WHERE name = $1 AND state = 'pending'",
            &[Param::Text(name)],
        )?;
        match rows.first() {
            Some(r) => Ok(Some(self.row(r).opt_bytes(0)?.unwrap_or_default())),
            None => Ok(None),
        }
    }

    fn audit(&mut self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let rows = self.rows(
            "SELECT time, username, service, rhost, event, outcome, detail, host FROM audit
             WHERE ($1::text IS NULL OR username = $1) AND ($2::bigint IS NULL OR time >= $2)
             ORDER BY time, id",
            &[opt_text(filter.user.as_deref()), opt(filter.since)],
        )?;
        rows.iter()
            .map(|r| {
                let row = self.row(r);
                let (event, outcome) = (row.text(4)?, row.text(5)?);
                let unknown = |what: &str, word: &str| {
                    Error::store(self.location, format!("unknown audit {what} {word:?}"))
                };
                Ok(AuditEntry {
                    time: row.int(0)?,
                    user: row.text(1)?,
                    service: row.text(2)?,
                    rhost: row.text(3)?,
                    event: Event::parse(&event).ok_or_else(|| unknown("event", &event))?,
                    outcome: Outcome::parse(&outcome)
                        .ok_or_else(|| unknown("outcome", &outcome))?,
                    detail: row.text(6)?,
                    host: row.text(7)?,
                })
            })
            .collect()
    }

    fn insert_user(&mut self, name: &str, code_salt: &[u8], now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO users(name, code_salt, created_at, updated_at) VALUES ($1, $2, $3, $3)
             ON CONFLICT(name) DO NOTHING",
            &[Param::Text(name), Param::Bytes(code_salt), Param::Int(now)],
        )
        .map(drop)
    }

    fn update_lock(&mut self, name: &str, to: &LockState, now: i64) -> Result<bool> {
        let n = self.exec(
            "UPDATE users SET failures = $2, locked_until = $3, lock_level = $4, updated_at = $5
             WHERE name = $1",
            &[
                Param::Text(name),
                Param::Int(i64::from(to.failures)),
                opt(to.locked_until),
                Param::Int(i64::from(to.level)),
                Param::Int(now),
            ],
        )?;
        Ok(n == 1)
    }

    fn write_attempt(&mut self, from: &UserRecord, to: &Attempt, now: i64) -> Result<()> {
        // Over a row this transaction locked and read (`lock_user`), the
        // row is `from`. Else a guard that goes with the commit: the row
        // is written only if it is still `from` once this statement holds
        // it (a row another host changed meanwhile is read anew, as it now
        // is, and then differs). The count of unused backup codes is left
        // out: a code this transaction consumed changes it. A row whose
        // values do not read back as they are stored (a state or channel
        // this build does not know) fails the guard: the attempt is then
        // made again with the row locked.
        let locked = self.locked.contains(&from.name);
        let mut params = vec![
            Value::Text(from.name.clone()),
            Value::Int(i64::from(to.lock.failures)),
            to.lock.locked_until.map_or(Value::Null, Value::Int),
            Value::Int(i64::from(to.lock.level)),
            Value::Int(now),
            to.step.map_or(Value::Null, Value::Int),
            Value::Bool(to.success),
        ];
        let update = "UPDATE users SET failures = $2, locked_until = $3, lock_level = $4,
                    updated_at = $5, last_step = coalesce($6::bigint, last_step),
                    state = CASE WHEN $6::bigint IS NULL THEN state ELSE 'active' END,
                    pending_codes = CASE WHEN $6::bigint IS NULL THEN pending_codes END,
                    last_success = CASE WHEN $7::boolean THEN $5 ELSE last_success END
             WHERE name = $1";
        if locked {
            return self.hold(Later::statement(update.into(), params, false));
        }
        let still_from = row_is(from, false, &mut params);
        self.guard_later(format!("{update} AND {still_from} RETURNING 1"), params)
    }

    fn consume_code(&mut self, kind: CodeKind, id: i64, now: i64) -> Result<bool> {
        let t = table(kind);
        let newest = if kind.newest_only() {
            format!(" AND id = (SELECT max(c.id) FROM {t} c WHERE c.username = {t}.username)")
        } else {
            String::new()
        };
        self.consume(
            &format!("UPDATE {t} SET used_at = $2 WHERE id = $1 AND used_at IS NULL{newest}"),
            &[Param::Int(id), Param::Int(now)],
        )
    }

    fn set_enrollment(&mut self, name: &str, new: &NewEnrollment<'_>, now: i64) -> Result<bool> {
        let n = self.exec(
            "UPDATE users SET state = 'pending', disabled = FALSE, secret = $2,
                    pending_codes = $3, last_step = -1, enrolled_by = $6, updated_at = $4
             WHERE name = $1 AND ($5 OR state = 'none')",
            &[
                Param::Text(name),
                Param::Bytes(new.sealed_secret),
                Param::Bytes(new.sealed_codes),
                Param::Int(now),
                Param::Bool(new.replace),
                Param::Text(new.origin.as_str()),
            ],
        )?;
        Ok(n == 1)
    }

    fn clear_pending_codes(&mut self, name: &str, now: i64) -> Result<()> {
        self.exec(
            "UPDATE users SET pending_codes = NULL, updated_at = $2 WHERE name = $1",
            &[Param::Text(name), Param::Int(now)],
        )
        .map(drop)
    }

    fn delete_codes(&mut self, kind: CodeKind, name: &str, unused_only: bool) -> Result<()> {
        self.exec(
            &format!(
                "DELETE FROM {} WHERE username = $1 AND (NOT $2 OR used_at IS NULL)",
                table(kind)
            ),
            &[Param::Text(name), Param::Bool(unused_only)],
        )
        .map(drop)
    }

    fn insert_backup_codes(
        &mut self,
        name: &str,
        hashes: &[[u8; HASH_LEN]],
        now: i64,
    ) -> Result<()> {
        for h in hashes {
            self.exec(
                "INSERT INTO backup_codes(username, hash, created_at) VALUES ($1, $2, $3)",
                &[Param::Text(name), Param::Bytes(&h[..]), Param::Int(now)],
            )?;
        }
        Ok(())
    }

    fn insert_expiring_code(
        &mut self,
        kind: CodeKind,
        name: &str,
        hash: &[u8; HASH_LEN],
        expires_at: i64,
        now: i64,
    ) -> Result<i64> {
        let rows = self.rows(
            &format!(
                "INSERT INTO {}(username, hash, created_at, expires_at) VALUES ($1, $2, $3, $4)
                 RETURNING id",
                table(kind)
            ),
            &[
                Param::Text(name),
                Param::Bytes(&hash[..]),
                Param::Int(now),
                Param::Int(expires_at),
            ],
        )?;
        match rows.first() {
            Some(r) => self.row(r).int(0),
            None => Err(Error::store(self.location, "INSERT … RETURNING gave no id")),
        }
    }

    fn prune_codes(&mut self, kind: CodeKind, name: &str, before: i64) -> Result<()> {
        let t = table(kind);
        self.exec(
            &format!(
                "DELETE FROM {t} WHERE username = $1 AND created_at < $2
                   AND id <> (SELECT max(id) FROM {t} WHERE username = $1)"
            ),
            &[Param::Text(name), Param::Int(before)],
        )
        .map(drop)
    }

    fn codes_made_since(&mut self, kind: CodeKind, name: &str, since: i64) -> Result<Vec<i64>> {
        let rows = self.rows(
            &format!(
                "SELECT created_at FROM {} WHERE username = $1 AND created_at > $2
                 ORDER BY created_at",
                table(kind)
            ),
            &[Param::Text(name), Param::Int(since)],
        )?;
        rows.iter().map(|r| self.row(r).int(0)).collect()
    }

    fn delete_unused_code(&mut self, kind: CodeKind, name: &str, id: i64) -> Result<()> {
        self.exec(
            &format!(
                "DELETE FROM {} WHERE id = $1 AND username = $2 AND used_at IS NULL",
                table(kind)
            ),
            &[Param::Int(id), Param::Text(name)],
        )
        .map(drop)
    }

    fn set_contact(
        &mut self,
        name: &str,
        channel: Channel,
        to: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let column = match channel {
            Channel::Email => "email",
            Channel::Sms => "phone",
        };
        let n = self.exec(
            &format!("UPDATE users SET {column} = $2, updated_at = $3 WHERE name = $1"),
            &[Param::Text(name), opt_text(to), Param::Int(now)],
        )?;
        Ok(n == 1)
    }

    fn set_delivery(&mut self, name: &str, channel: Option<Channel>, now: i64) -> Result<bool> {
        let n = match channel {
            Some(c) => self.exec(
                "UPDATE users SET delivery = $2, disabled = FALSE, updated_at = $3
                 WHERE name = $1",
                &[Param::Text(name), Param::Text(c.as_str()), Param::Int(now)],
            )?,
            None => self.exec(
                "UPDATE users SET delivery = NULL, updated_at = $2 WHERE name = $1",
                &[Param::Text(name), Param::Int(now)],
            )?,
        };
        Ok(n == 1)
    }

    fn set_disabled(&mut self, name: &str, disabled: bool, now: i64) -> Result<bool> {
        let n = self.exec(
            "UPDATE users SET disabled = $2, updated_at = $3 WHERE name = $1",
            &[Param::Text(name), Param::Bool(disabled), Param::Int(now)],
        )?;
        Ok(n == 1)
    }

    fn clear_factors(&mut self, name: &str, now: i64) -> Result<bool> {
        let n = self.exec(
            "UPDATE users SET state = 'none', disabled = FALSE, secret = NULL,
                    pending_codes = NULL, delivery = NULL, last_step = -1, updated_at = $2
             WHERE name = $1",
            &[Param::Text(name), Param::Int(now)],
        )?;
        Ok(n == 1)
    }

    fn remembered(&mut self, name: &str, now: i64) -> Result<Vec<(String, i64)>> {
        match self.read_one(Read::Remembered(name, now))? {
            Found::Remembered(hosts) => Ok(hosts),
            _ => Err(self.unanswered()),
        }
    }

    fn last_reads(&mut self, reads: &[Read<'_>]) -> Result<Vec<Found>> {
        // One statement is consistent on its own: a read transaction that
        // has sent nothing yet sends neither its `BEGIN` nor a `COMMIT`.
        let alone = self.read_only && !self.begun && self.later.len() == 1;
        if alone {
            self.later.clear();
        }
        let commit = [Stmt::Batch("COMMIT")];
        let then: &[Stmt<'_>] = if self.read_only && !alone {
            &commit
        } else {
            &[]
        };
        let found = self.read_all(reads, then);
        self.committed = self.read_only;
        found
    }

    fn remember(&mut self, name: &str, host: &str, until: i64) -> Result<()> {
        self.exec_later(
            "INSERT INTO remembered(username, host, until) VALUES ($1, $2, $3)
             ON CONFLICT(username, host) DO UPDATE SET until = excluded.until",
            &[Param::Text(name), Param::Text(host), Param::Int(until)],
        )
    }

    fn forget(&mut self, name: &str, host: Option<&str>) -> Result<usize> {
        let n = self.exec(
            "DELETE FROM remembered WHERE username = $1 AND ($2::text IS NULL OR host = $2)",
            &[Param::Text(name), opt_text(host)],
        )?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn activate(&mut self, name: &str, last_step: i64, now: i64) -> Result<bool> {
        let n = self.exec(
            "UPDATE users SET state = 'active', pending_codes = NULL, last_step = $2,
                    updated_at = $3
             WHERE name = $1 AND state = 'pending'",
            &[Param::Text(name), Param::Int(last_step), Param::Int(now)],
        )?;
        Ok(n == 1)
    }

    fn export(&mut self) -> Result<Snapshot> {
        let rows = self.rows(
            "SELECT name, state, disabled, secret, pending_codes, code_salt, last_step, failures,
                    locked_until, lock_level, last_success, enrolled_by, email, phone, delivery,
                    created_at, updated_at
             FROM users ORDER BY name",
            &[],
        )?;
        let users = rows
            .iter()
            .map(|r| {
                let row = self.row(r);
                Ok(UserRow {
                    name: row.text(0)?,
                    state: row.text(1)?,
                    disabled: row.boolean(2)?,
                    secret: row.opt_bytes(3)?,
                    pending_codes: row.opt_bytes(4)?,
                    code_salt: row.bytes(5)?,
                    last_step: row.int(6)?,
                    failures: row.int(7)?,
                    locked_until: row.opt_int(8)?,
                    lock_level: row.int(9)?,
                    last_success: row.opt_int(10)?,
                    enrolled_by: row.text(11)?,
                    email: row.opt_text(12)?,
                    phone: row.opt_text(13)?,
                    delivery: row.opt_text(14)?,
                    created_at: row.int(15)?,
                    updated_at: row.int(16)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut codes = vec![];
        for kind in CodeKind::ALL {
            let expires = if kind.expires() {
                "expires_at"
            } else {
                "NULL::bigint"
            };
            let rows = self.rows(
                &format!(
                    "SELECT username, hash, created_at, {expires}, used_at FROM {} ORDER BY id",
                    table(kind)
                ),
                &[],
            )?;
            for r in &rows {
                let row = self.row(r);
                codes.push(CodeRow {
                    kind,
                    user: row.text(0)?,
                    hash: row.bytes(1)?,
                    created_at: row.int(2)?,
                    expires_at: row.opt_int(3)?,
                    used_at: row.opt_int(4)?,
                });
            }
        }
        let rows = self.rows(
            "SELECT username, host, until FROM remembered ORDER BY username, host",
            &[],
        )?;
        let remembered = rows
            .iter()
            .map(|r| {
                let row = self.row(r);
                Ok((row.text(0)?, row.text(1)?, row.int(2)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let audit = self.audit(&AuditFilter::default())?;
        Ok(Snapshot {
            users,
            codes,
            remembered,
            audit,
        })
    }

    fn load(&mut self, snapshot: &Snapshot) -> Result<()> {
        for u in &snapshot.users {
            self.exec(
                "INSERT INTO users(name, state, disabled, secret, pending_codes, code_salt,
                    last_step, failures, locked_until, lock_level, last_success, enrolled_by,
                    email, phone, delivery, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                         $17)",
                &[
                    Param::Text(&u.name),
                    Param::Text(&u.state),
                    Param::Bool(u.disabled),
                    u.secret.as_deref().map_or(Param::Null, Param::Bytes),
                    u.pending_codes.as_deref().map_or(Param::Null, Param::Bytes),
                    Param::Bytes(&u.code_salt),
                    Param::Int(u.last_step),
                    Param::Int(u.failures),
                    opt(u.locked_until),
                    Param::Int(u.lock_level),
                    opt(u.last_success),
                    Param::Text(&u.enrolled_by),
                    opt_text(u.email.as_deref()),
                    opt_text(u.phone.as_deref()),
                    opt_text(u.delivery.as_deref()),
                    Param::Int(u.created_at),
                    Param::Int(u.updated_at),
                ],
            )?;
        }
        for c in &snapshot.codes {
            if c.kind.expires() {
                self.exec(
                    &format!(
                        "INSERT INTO {}(username, hash, created_at, expires_at, used_at)
                         VALUES ($1, $2, $3, $4, $5)",
                        table(c.kind)
                    ),
                    &[
                        Param::Text(&c.user),
                        Param::Bytes(&c.hash),
                        Param::Int(c.created_at),
                        Param::Int(c.expires_at.unwrap_or(0)),
                        opt(c.used_at),
                    ],
                )?;
            } else {
                self.exec(
                    "INSERT INTO backup_codes(username, hash, created_at, used_at)
                     VALUES ($1, $2, $3, $4)",
                    &[
                        Param::Text(&c.user),
                        Param::Bytes(&c.hash),
                        Param::Int(c.created_at),
                        opt(c.used_at),
                    ],
                )?;
            }
        }
        for (user, host, until) in &snapshot.remembered {
            self.remember(user, host, *until)?;
        }
        for e in &snapshot.audit {
            self.insert_audit(e)?;
        }
        Ok(())
    }

    fn insert_audit(&mut self, e: &AuditEntry) -> Result<()> {
        self.exec_later(
            "INSERT INTO audit(time, username, service, rhost, event, outcome, detail, host)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                Param::Int(e.time),
                Param::Text(&e.user),
                Param::Text(&e.service),
                Param::Text(&e.rhost),
                Param::Text(e.event.as_str()),
                Param::Text(e.outcome.as_str()),
                Param::Text(&e.detail),
                Param::Text(&e.host),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    //! What goes to the server in which round trip, with a client that
    //! answers from a script. (The SQL itself runs against a real server in
    //! the conformance suite.)
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The statements of each call, as their first words.
    type Calls = Arc<Mutex<Vec<Vec<String>>>>;

    struct Scripted {
        calls: Calls,
        /// A statement starting with this fails (insufficient privilege).
        fail: Option<&'static str>,
        /// What an `UPDATE` changes; 0 also fails every guard (the row
        /// seen before is not found).
        changed: u64,
        /// The schema version in the database.
        schema: Arc<AtomicI64>,
        /// Every statement is answered as a batch, whatever it is.
        wrong_kind: bool,
        /// The limit of each call.
        limits: Arc<Mutex<Vec<Option<std::time::Duration>>>>,
    }

    fn words(sql: &str) -> String {
        sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    }

    impl Scripted {
        fn answer(&self, sql: &str, query: bool) -> std::result::Result<Done, PgError> {
            if self
                .fail
                .is_some_and(|f| sql.starts_with(f) || sql.contains(&format!(" AS ({f}")))
            {
                return Err(PgError {
                    sqlstate: Some("42501".into()),
                    message: "permission denied".into(),
                });
            }
            if sql.starts_with("WITH s1 AS") {
                // One statement ([`PgTx::commit_as_one`]): a check per guard.
                let guards = sql.matches("1 / (SELECT count(*)::int FROM s").count();
                return match (guards, self.changed) {
                    (0, _) => Ok(Done::Rows(vec![vec![Value::Int(1)]])),
                    (n, 1) => Ok(Done::Rows(vec![vec![Value::Int(1); n]])),
                    _ => Err(PgError {
                        sqlstate: Some(GUARD_FAILED.into()),
                        message: "division by zero".into(),
                    }),
                };
            }
            if sql.starts_with("WITH done AS") {
                return match self.changed {
                    1 => Ok(Done::Rows(vec![vec![Value::Int(1)]])),
                    _ => Err(PgError {
                        sqlstate: Some(GUARD_FAILED.into()),
                        message: "division by zero".into(),
                    }),
                };
            }
            Ok(if !query {
                Done::Changed(if sql.starts_with("UPDATE") {
                    self.changed
                } else {
                    1
                })
            } else if sql.starts_with("SELECT value FROM crm2fa_meta") {
                let v = self.schema.load(Ordering::Relaxed).to_string();
                Done::Rows(vec![vec![Value::Text(v)]])
            } else if sql.starts_with("SELECT 1 FROM users") {
                Done::Rows(vec![vec![Value::Int(1)]])
            } else {
                Done::Rows(Vec::new())
            })
        }
    }

    impl PgClient for Scripted {
        fn pipeline_within(
            &mut self,
            statements: &[Stmt<'_>],
            limit: Option<std::time::Duration>,
        ) -> Vec<std::result::Result<Done, PgError>> {
            self.limits.lock().unwrap().push(limit);
            let sqls = statements.iter().map(|s| match *s {
                Stmt::Batch(sql) => (sql, None),
                Stmt::Execute(sql, _) => (sql, Some(false)),
                Stmt::Query(sql, _) => (sql, Some(true)),
            });
            let mut sent = Vec::new();
            let mut out = Vec::new();
            for (sql, query) in sqls {
                sent.push(words(sql));
                out.push(match query {
                    _ if self.wrong_kind => Ok(Done::Batch),
                    None => Ok(Done::Batch),
                    Some(query) => self.answer(sql, query),
                });
            }
            self.calls.lock().unwrap().push(sent);
            out
        }
    }

    fn store(fail: Option<&'static str>, changed: u64) -> (PgStore, Calls) {
        let (store, calls, _) = store_with_schema(fail, changed);
        (store, calls)
    }

    fn store_with_schema(
        fail: Option<&'static str>,
        changed: u64,
    ) -> (PgStore, Calls, Arc<AtomicI64>) {
        let calls = Calls::default();
        let schema = Arc::new(AtomicI64::new(SCHEMA_VERSION));
        let client = Scripted {
            calls: calls.clone(),
            fail,
            changed,
            schema: schema.clone(),
            wrong_kind: false,
            limits: Arc::default(),
        };
        (scripted(client), calls, schema)
    }

    /// How long [`scripted`] stores wait for a kept session's first answers.
    const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

    fn scripted(client: Scripted) -> PgStore {
        PgStore {
            client: Box::new(client),
            location: "test".into(),
            checked: std::time::Instant::now(),
            answer_within: ANSWER_WITHIN,
            first_read: false,
            careful: false,
        }
    }

    fn entry() -> AuditEntry {
        AuditEntry {
            time: 1,
            host: "h".into(),
            user: "u".into(),
            service: "s".into(),
            rhost: String::new(),
            event: Event::Login,
            outcome: Outcome::Success,
            detail: String::new(),
        }
    }

    fn write(store: &mut PgStore, body: &mut TxBody<'_>) -> Result<()> {
        store.transaction(TxKind::Write(Durability::Full), body)
    }

    fn calls(c: &Calls) -> Vec<Vec<String>> {
        c.lock().unwrap().clone()
    }

    #[test]
    fn begin_lock_and_read_go_together_and_writes_go_with_the_commit() {
        let (mut s, c) = store(None, 1);
        write(&mut s, &mut |tx| {
            assert!(tx.lock_user("u")?.is_none(), "no row from the script");
            tx.write_attempt(&seen(), &attempt(), 1)?;
            tx.insert_audit(&entry())
        })
        .unwrap();
        assert_eq!(
            calls(&c),
            [
                vec![
                    "BEGIN ISOLATION LEVEL",
                    "SELECT 1 FROM",
                    "SELECT name, state,"
                ],
                vec!["WITH done AS", "INSERT INTO audit(time,", "COMMIT"],
            ]
        );
    }

    fn seen() -> UserRecord {
        UserRecord::new("u", vec![0; SALT_LEN])
    }

    /// A successful TOTP attempt.
    fn attempt() -> Attempt {
        Attempt {
            lock: LockState::default(),
            step: Some(7),
            success: true,
        }
    }

    #[test]
    fn a_login_write_is_one_statement_and_stands_only_over_the_row_seen() {
        for (changed, stands) in [(1, true), (0, false)] {
            let (mut s, c) = store(None, changed);
            let done = write(&mut s, &mut |tx| {
                tx.expect_user(&seen())?;
                tx.write_attempt(&seen(), &attempt(), 1)?;
                tx.insert_audit(&entry())
            });
            assert_eq!(done.is_ok(), stands, "{done:?}");
            if !stands {
                assert!(matches!(done, Err(Error::Conflict { .. })), "{done:?}");
            }
            // No BEGIN, COMMIT or ROLLBACK: one statement is one
            // transaction, all of it or none.
            assert_eq!(calls(&c), [vec!["WITH s1 AS"]], "changed {changed}");
        }
    }

    #[test]
    fn one_statement_numbers_the_parameters_of_its_parts_in_turn() {
        let renumbered = |sql, by| {
            let mut out = String::new();
            renumber(&mut out, sql, by);
            out
        };
        assert_eq!(
            renumbered("UPDATE t SET a = $1, b = $2::bigint WHERE c = $10", 3),
            "UPDATE t SET a = $4, b = $5::bigint WHERE c = $13"
        );
        assert_eq!(renumbered("SELECT 1", 5), "SELECT 1");
    }

    #[test]
    fn a_code_already_used_fails_the_transaction_and_its_next_run_hears_the_count() {
        let (mut s, c) = store(None, 0);
        let body = |tx: &mut dyn Tx| -> Result<bool> {
            let used = tx.consume_code(CodeKind::Backup, 1, 1)?;
            tx.insert_audit(&entry())?;
            Ok(used)
        };
        let store: &mut dyn Store = &mut s;
        assert!(!store.write(Durability::Full, body).unwrap());
        assert_eq!(
            calls(&c),
            [
                vec!["WITH s1 AS"],
                vec!["BEGIN ISOLATION LEVEL", "UPDATE backup_codes SET"],
                vec!["INSERT INTO audit(time,", "COMMIT"],
            ]
        );
        // The run after it goes back to one statement.
        c.lock().unwrap().clear();
        let store: &mut dyn Store = &mut s;
        let _ = store.write(Durability::Full, body);
        assert_eq!(calls(&c)[0], ["WITH s1 AS"]);
    }

    #[test]
    fn a_user_read_back_as_its_values_is_the_same_user() {
        let mut u = seen();
        u.secret = Some(vec![9; 8]);
        u.email = Some("u@example.org".into());
        u.lock.locked_until = Some(5);
        u.delivery = Some(Channel::Sms);
        let values = user_values(&u);
        let row = Row {
            values: &values,
            location: "test",
        };
        assert_eq!(row.user().unwrap(), u);
        assert_eq!(values.len(), USER_TYPES.len());
    }

    #[test]
    fn a_check_answered_with_another_kind_of_result_fails_the_transaction() {
        let calls = Calls::default();
        let client = Scripted {
            calls: calls.clone(),
            fail: None,
            changed: 1,
            schema: Arc::new(AtomicI64::new(SCHEMA_VERSION)),
            wrong_kind: true,
            limits: Arc::default(),
        };
        let mut s = scripted(client);
        // The guards go with the commit; the server, not this client,
        // decides whether it stands, and the transaction fails here.
        let bodies: [&mut TxBody<'_>; 2] = [
            &mut |tx| {
                tx.expect_user(&seen())?;
                tx.insert_audit(&entry())
            },
            &mut |tx| {
                tx.write_attempt(&seen(), &attempt(), 1)?;
                tx.insert_audit(&entry())
            },
        ];
        for body in bodies {
            let done = write(&mut s, body);
            assert!(matches!(done, Err(Error::Store { .. })), "{done:?}");
        }
    }

    #[test]
    fn a_row_seen_before_that_changed_rolls_the_commit_back() {
        // A read in the transaction: the guard goes with it, and the
        // transaction fails there.
        let (mut s, c) = store(None, 0);
        let done = write(&mut s, &mut |tx| {
            tx.expect_user(&seen())?;
            tx.unused_codes(CodeKind::Backup, "u", 1)?;
            tx.insert_audit(&entry())
        });
        assert!(matches!(done, Err(Error::Conflict { .. })), "{done:?}");
        assert_eq!(
            calls(&c),
            [
                vec!["BEGIN ISOLATION LEVEL", "WITH done AS", "(SELECT 0, id,"],
                vec!["ROLLBACK"],
            ]
        );
    }

    #[test]
    fn a_login_reads_everything_at_once_in_one_statement() {
        let (mut s, c) = store(None, 1);
        let store: &mut dyn Store = &mut s;
        let view = store
            .login_view("u", Some("laptop"), &[Channel::Email], 1)
            .unwrap();
        assert!(view.user.is_none() && view.remembered_until.is_none());
        // No BEGIN or COMMIT: one statement sees one snapshot.
        assert_eq!(calls(&c), [vec!["(SELECT 0, name,"]]);
    }

    #[test]
    fn nothing_goes_after_the_commit_of_a_read() {
        let (mut s, c) = store(None, 1);
        let done = s.transaction(TxKind::Read, &mut |tx| {
            tx.last_reads(&[Read::User("u")])?;
            tx.user("u").map(drop)
        });
        assert!(done.is_err(), "{done:?}");
        // Nothing after the read, and no ROLLBACK: nothing was begun.
        assert_eq!(calls(&c), [vec!["(SELECT 0, name,"]]);
    }

    #[test]
    fn the_last_reads_of_a_write_leave_the_commit_to_it() {
        let (mut s, c) = store(None, 1);
        write(&mut s, &mut |tx| {
            tx.last_reads(&[Read::User("u")]).map(drop)
        })
        .unwrap();
        assert_eq!(
            calls(&c),
            [
                vec!["BEGIN ISOLATION LEVEL", "(SELECT 0, name,"],
                vec!["COMMIT"]
            ]
        );
    }

    #[test]
    fn a_read_that_fails_fails_the_login_view() {
        let (mut s, c) = store(Some("(SELECT 0"), 1);
        let store: &mut dyn Store = &mut s;
        let done = store.login_view("u", Some("laptop"), &[], 1);
        assert!(matches!(&done, Err(Error::Store { .. })), "{done:?}");
        assert_eq!(calls(&c), [vec!["(SELECT 0, name,"]]);
    }

    #[test]
    fn a_held_back_write_that_failed_fails_the_transaction() {
        // Sent with the COMMIT (an audit row alone commits without
        // waiting for the disk: no one statement then), or as one.
        for (durability, want) in [
            (
                Durability::Light,
                vec![
                    vec!["BEGIN ISOLATION LEVEL", "INSERT INTO audit(time,", "COMMIT"],
                    vec!["ROLLBACK"],
                ],
            ),
            (Durability::Full, vec![vec!["WITH s1 AS"]]),
        ] {
            let (mut s, c) = store(Some("INSERT INTO audit"), 1);
            let done = s.transaction(TxKind::Write(durability), &mut |tx| {
                tx.insert_audit(&entry())
            });
            let e = done.unwrap_err().to_string();
            assert!(e.contains("permission denied"), "{e}");
            assert_eq!(calls(&c), want, "{durability:?}");
        }
    }

    #[test]
    fn a_body_that_fails_before_any_statement_sends_nothing() {
        let (mut s, c) = store(None, 1);
        let done = write(&mut s, &mut |_| Err(Error::store("test", "no")));
        assert!(done.is_err());
        assert!(calls(&c).is_empty(), "{:?}", calls(&c));
    }

    #[test]
    fn held_back_writes_are_sent_before_they_pile_up() {
        let (mut s, c) = store(None, 1);
        write(&mut s, &mut |tx| {
            for _ in 0..MAX_LATER * 2 {
                tx.insert_audit(&entry())?;
            }
            Ok(())
        })
        .unwrap();
        let sizes: Vec<usize> = calls(&c).iter().map(Vec::len).collect();
        assert!(sizes.iter().all(|&n| n <= MAX_LATER + 1), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), MAX_LATER * 2 + 2);
    }

    #[test]
    fn a_kept_session_looks_at_the_schema_version_once_a_minute() {
        let (mut s, c, schema) = store_with_schema(None, 1);
        let looked = |c: &Calls| {
            calls(c)
                .iter()
                .flatten()
                .filter(|w| w.starts_with("SELECT value FROM"))
                .count()
        };
        assert!(s.still_current().unwrap());
        schema.store(SCHEMA_VERSION + 1, Ordering::Relaxed);
        assert!(
            s.still_current().unwrap(),
            "within the minute, not looked at"
        );
        assert_eq!(looked(&c), 0);
        s.checked = std::time::Instant::now()
            .checked_sub(SCHEMA_RECHECK + std::time::Duration::from_secs(1))
            .expect("the clock started over a minute ago");
        assert!(
            !s.still_current().unwrap(),
            "another host's init upgraded it"
        );
        assert!(!s.still_current().unwrap(), "and it stays refused");
        assert_eq!(looked(&c), 2);
        schema.store(SCHEMA_VERSION, Ordering::Relaxed);
        assert!(s.still_current().unwrap());
        assert!(
            s.still_current().unwrap(),
            "looked at again only after a minute"
        );
        assert_eq!(looked(&c), 3);
    }

    #[test]
    fn a_failed_schema_check_opens_afresh_unless_it_took_the_whole_bound() {
        let stale = |s: &mut PgStore| {
            s.checked = std::time::Instant::now()
                .checked_sub(SCHEMA_RECHECK + std::time::Duration::from_secs(1))
                .expect("the clock started over a minute ago");
        };
        // Failed at once (a session the server ended without a word): a
        // new session is tried.
        let (mut s, _) = store(Some("SELECT value FROM"), 1);
        stale(&mut s);
        assert!(!s.still_current().unwrap());
        // Failed once its bound was over (here, none): the server is not
        // answering, and a new session would wait as long again.
        s.answer_within = std::time::Duration::ZERO;
        assert!(s.still_current().is_err());
    }

    #[test]
    fn a_logins_first_read_and_a_kept_sessions_schema_check_answer_within_connect_timeout() {
        let limits = Arc::default();
        let client = Scripted {
            calls: Calls::default(),
            fail: None,
            changed: 1,
            schema: Arc::new(AtomicI64::new(SCHEMA_VERSION)),
            wrong_kind: false,
            limits: Arc::clone(&limits),
        };
        let mut s = scripted(client);
        // As a login reads first; `crm2fa-admin status` makes the same
        // read without the mark.
        let view = |s: &mut PgStore| {
            let store: &mut dyn Store = s;
            store.login_read_next();
            store.login_view("u", None, &[], 1).unwrap();
        };
        let status = |s: &mut PgStore| {
            let store: &mut dyn Store = s;
            store.login_view("u", None, &[], 1).unwrap();
        };
        let read = |s: &mut PgStore| {
            let store: &mut dyn Store = s;
            store.read(|tx| tx.user("u")).unwrap();
        };
        let taken = |limits: &Arc<Mutex<Vec<Option<std::time::Duration>>>>| {
            std::mem::take(&mut *limits.lock().unwrap())
        };
        // A login's first read is bounded, on a session just opened too
        // (its server answered a moment ago, and may have stopped since);
        // the write after it (which may wait for a row another host holds)
        // is not, nor is any other read.
        view(&mut s);
        write(&mut s, &mut |tx| tx.insert_audit(&entry())).unwrap();
        read(&mut s);
        status(&mut s);
        let limits_seen = taken(&limits);
        assert_eq!(limits_seen[0], Some(ANSWER_WITHIN));
        assert!(
            limits_seen[1..].iter().all(Option::is_none),
            "{limits_seen:?}"
        );
        // Lent again for a login (this client's `still_open` is a round
        // trip, unbounded here): the same.
        assert!(s.still_current().unwrap());
        view(&mut s);
        write(&mut s, &mut |tx| tx.insert_audit(&entry())).unwrap();
        assert_eq!(taken(&limits), [None, Some(ANSWER_WITHIN), None]);
        // The schema check, once a minute, is bounded too.
        s.checked = std::time::Instant::now()
            .checked_sub(SCHEMA_RECHECK + std::time::Duration::from_secs(1))
            .expect("the clock started over a minute ago");
        assert!(s.still_current().unwrap());
        view(&mut s);
        assert_eq!(
            taken(&limits),
            [None, Some(ANSWER_WITHIN), Some(ANSWER_WITHIN)]
        );
    }
}
