//! The SQLite backend: one file, WAL, for one host.
//!
//! Write transactions are `BEGIN IMMEDIATE`: the write lock is taken up
//! front, so concurrent logins queue (up to the busy timeout) instead of
//! failing, and a conditional write never races another.
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, FileControl, OpenFlags, OptionalExtension};

use super::{Attempt, Durability, Store, Tx, TxBody, TxFailure, TxKind};
use crate::audit::{AuditEntry, AuditFilter, Event, Outcome};
use crate::codes::{HASH_LEN, SALT_LEN};
use crate::delivery::Channel;
use crate::error::{Error, Result};
use crate::fsperm::{self, Secrecy};
use crate::model::{
    CodeKind, CodeRow, LockState, NewEnrollment, Origin, Snapshot, StoredCode, TotpState,
    UserRecord, UserRow,
};

/// WAL size past which a write first checkpoints the WAL and starts it over
/// from its beginning; also the size the WAL file is cut back to then
/// (`journal_size_limit`). Every login process reads the WAL's frames to
/// rebuild its index, so it is kept small; its file is kept, not emptied,
/// so that a commit overwrites blocks the file already has and its sync
/// need not also write the file's size (see [`SqliteStore::restart_wal`]).
const WAL_RESTART_BYTES: u64 = 256 * 1024;

/// Prepared statements kept per connection: more than the store's distinct
/// statements, so none is parsed twice.
const STATEMENT_CACHE: usize = 128;

/// The store file grows by this much at a time, the new blocks written out
/// when taken (this SQLite has no `posix_fallocate`: it writes a byte into
/// each block). A checkpoint that copies pages past the old end of the file
/// then overwrites blocks the file already has, and its sync need not also
/// record a new size and new blocks (an ext4 journal commit). With audit
/// rows at every login the store grows by a page every dozen logins, so
/// without it nearly every checkpoint paid that commit: here 0.16 against
/// 0.08 ms on a quiet disk, and 1.3-1.7 ms on average while other writers
/// keep the journal busy.
const DB_CHUNK_BYTES: i32 = 256 * 1024;

/// How long a transaction waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a waiting transaction tries the write lock again: a login
/// holds it a millisecond or two (SQLite's own handler sleeps up to 25 ms
/// between tries, so waiters queued far longer than the lock was held).
const BUSY_POLL: Duration = Duration::from_micros(250);

/// SQLite's busy handler: called with the number of tries so far of one
/// wait for the lock; waits [`BUSY_POLL`] and tries again, until
/// [`BUSY_TIMEOUT`] has passed since the first try.
fn busy() -> impl FnMut(i32) -> bool + Send + 'static {
    let mut since = std::time::Instant::now();
    move |tries| {
        let now = std::time::Instant::now();
        if tries == 0 {
            since = now;
        }
        if now.duration_since(since) >= BUSY_TIMEOUT {
            return false;
        }
        std::thread::sleep(BUSY_POLL);
        true
    }
}

/// Schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 5;

/// Migrations: entry `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    state         TEXT NOT NULL DEFAULT 'none',   -- none | pending | active
    disabled      INTEGER NOT NULL DEFAULT 0,
    secret        BLOB,                           -- sealed TOTP secret
    pending_codes BLOB,                           -- sealed backup codes, shown once at activation
    code_salt     BLOB NOT NULL,                  -- per-user salt of backup/recovery code hashes
    last_step     INTEGER NOT NULL DEFAULT -1,    -- newest TOTP step accepted
    failures      INTEGER NOT NULL DEFAULT 0,     -- consecutive wrong codes
    locked_until  INTEGER,
    last_success  INTEGER,
    email         TEXT,
    phone         TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE TABLE backup_codes (
    id         INTEGER PRIMARY KEY,
    user       TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    hash       BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX backup_codes_user ON backup_codes(user);
CREATE TABLE recovery_codes (
    id         INTEGER PRIMARY KEY,
    user       TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    hash       BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX recovery_codes_user ON recovery_codes(user);
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY,
    time    INTEGER NOT NULL,
    user    TEXT NOT NULL,
    service TEXT NOT NULL,
    rhost   TEXT NOT NULL,
    event   TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE INDEX audit_user_time ON audit(user, time);
"#,
    r#"
-- Escalating locks: locks since the last success or unlock.
ALTER TABLE users ADD COLUMN lock_level INTEGER NOT NULL DEFAULT 0;
-- Who made the TOTP enrolment: 'admin' (crm2fa-admin) or 'login' (the user's
-- own login under unenrolled = "enroll"). Existing ones count as 'admin'.
ALTER TABLE users ADD COLUMN enrolled_by TEXT NOT NULL DEFAULT 'admin';
"#,
    r#"
-- The host that wrote each audit row (hosts of a fleet share one store).
ALTER TABLE audit ADD COLUMN host TEXT NOT NULL DEFAULT '';
"#,
    r#"
-- Remote hosts a user is not asked again from, until a time.
CREATE TABLE remembered (
    user  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    host  TEXT NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (user, host)
) WITHOUT ROWID;
"#,
    r#"
-- Codes sent by email and SMS: hashed like recovery codes, short-lived; the
-- rows stay for the resend limit's window after they are used or expire.
CREATE TABLE email_codes (
    id         INTEGER PRIMARY KEY,
    user       TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    hash       BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX email_codes_user ON email_codes(user);
CREATE TABLE sms_codes (
    id         INTEGER PRIMARY KEY,
    user       TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    hash       BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX sms_codes_user ON sms_codes(user);
-- The channel a user gets codes by without asking: 'email' | 'sms' | NULL.
ALTER TABLE users ADD COLUMN delivery TEXT;
"#,
];

/// A store in one SQLite file.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    location: String,
    /// The `synchronous` level the connection is set to, if known.
    durability: Option<Durability>,
    /// The `-wal` file did not exist when the store was opened: the first
    /// commit creates it, and then its directory entry is synced (SQLite is
    /// built without its own directory syncs, which cost a second fsync at
    /// every login).
    wal_created: bool,
    /// The file opened (device, inode), to tell whether the path still
    /// names it.
    file: Option<(u64, u64)>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn pragma(durability: Durability) -> &'static str {
    match durability {
        Durability::Full => "PRAGMA synchronous = FULL",
        Durability::Light => "PRAGMA synchronous = NORMAL",
    }
}

impl SqliteStore {
    /// Open an existing store (never creates one). Checks ownership and mode,
    /// and brings an older schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        // The file checked is the one remembered, before SQLite opens it: a
        // file swapped in between is told apart at the next lend, never
        // trusted for good.
        let (file, wal_present) = check_files(path)?;
        let mut store = SqliteStore::connect(path)?;
        store.wal_created = !wal_present;
        store.file = Some(file);
        Ok(store)
    }

    /// Create the store if missing (mode 0600 before SQLite sees it, so the
    /// -wal and -shm files inherit it), then open it. Idempotent.
    pub fn create(path: &Path) -> Result<SqliteStore> {
        if !fsperm::check_if_present(path, Secrecy::OwnerOnly)? {
            if let Some(dir) = path.parent() {
                fsperm::ensure_dir(dir, 0o700)?;
            }
            fsperm::check_no_one_else_adds_beside(path)?;
            fsperm::create_private_file(path, b"")?;
        }
        SqliteStore::open(path)
    }

    fn connect(path: &Path) -> Result<SqliteStore> {
        let location = path.display().to_string();
        let err = |e: rusqlite::Error| Error::store(location.clone(), e);
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(err)?;
        conn.busy_handler(Some(busy())).map_err(err)?;
        // Every statement a transaction runs is kept prepared: a store kept
        // open between logins (crm2fad) parses each once.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mut chunk = DB_CHUNK_BYTES;
        conn.file_control(Some("main"), FileControl::ChunkSize(&mut chunk))
            .map_err(err)?;
        // One process per login: do not checkpoint and delete the WAL at every
        // close; past a bound, a write starts it over instead.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(err)?;
        // Plans that never depend on the values bound: else SQLite marks a
        // statement whose plan a value might change (an `=` it checks row
        // by row, as the newest sent code's `user = ?1`) to be compiled
        // again whenever its values are cleared, which a kept statement's
        // are after each use: a store kept open (crm2fad) parsed and
        // planned those statements anew at every login.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(err)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA foreign_keys = ON;
             PRAGMA temp_store = MEMORY;
             PRAGMA synchronous = FULL;
             PRAGMA journal_size_limit = {WAL_RESTART_BYTES};",
        ))
        .map_err(err)?;
        let mut store = SqliteStore {
            conn,
            path: path.into(),
            location,
            durability: Some(Durability::Full),
            wal_created: false,
            file: None,
        };
        store.migrate()?;
        Ok(store)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        Error::store(self.location.clone(), e)
    }

    fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
        let has_meta: bool = conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |r| r.get(0),
        )?;
        if !has_meta {
            return Ok(0);
        }
        conn.query_row(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map(|v| v.unwrap_or(0))
    }

    /// The schema version in the file header (`user_version`): one read of
    /// a page the open has read anyway. Stores made before it was kept
    /// there have 0, and their version in the `meta` table.
    fn header_version(conn: &Connection) -> rusqlite::Result<i64> {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
    }

    fn migrate(&mut self) -> Result<()> {
        let header = SqliteStore::header_version(&self.conn).map_err(|e| self.err(e))?;
        if header == SCHEMA_VERSION {
            return Ok(());
        }
        let v = match header {
            0 => SqliteStore::schema_version(&self.conn).map_err(|e| self.err(e))?,
            v => v,
        };
        if v > SCHEMA_VERSION {
            return Err(Error::StoreSchema {
                location: self.location.clone(),
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
        let location = self.location.clone();
        let err = |e: rusqlite::Error| {
            Error::store(location.clone(), format!("schema upgrade failed: {e}"))
        };
        let conn = &self.conn;
        let tx = Begun::new(conn, "BEGIN IMMEDIATE").map_err(err)?;
        let mut v = SqliteStore::schema_version(conn).map_err(err)?;
        while v < SCHEMA_VERSION {
            let step = usize::try_from(v)
                .ok()
                .and_then(|i| MIGRATIONS.get(i))
                .ok_or_else(|| {
                    Error::store(location.clone(), format!("no migration from version {v}"))
                })?;
            conn.execute_batch(step).map_err(err)?;
            v += 1;
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [v.to_string()],
            )
            .map_err(err)?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Sync the store's directory, so the `-wal` file this process created
    /// (and what was just committed in it) survives a power cut. A failure
    /// is the store's: it comes after the store answered for the user, and
    /// `failmode = "safe"` must not skip the code for it.
    fn sync_dir(&mut self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| {
                Error::store(
                    self.location.clone(),
                    format!("cannot sync its directory {}: {e}", dir.display()),
                )
            })?;
        self.wal_created = false;
        Ok(())
    }

    /// Each login is its own process and the WAL is not checkpointed on
    /// close, so SQLite never starts it over by itself (a process that opens
    /// the database alone rebuilds the WAL index, which forgets how much was
    /// checkpointed; SQLite's auto-checkpoint would copy the whole WAL again
    /// at every later commit). So, before a write, past [`WAL_RESTART_BYTES`]:
    /// checkpoint here, and the write that follows in this process finds the
    /// WAL fully copied and writes its frames from the WAL's beginning again,
    /// over blocks the file already has. Its commit cuts the file back to
    /// `journal_size_limit`.
    ///
    /// The WAL is not truncated to nothing, as a `TRUNCATE` checkpoint would:
    /// then every commit appends, and its sync must also record the file's
    /// new size and blocks (an ext4 journal commit), where overwriting
    /// needs only the data synced: here 0.16 against 0.08 ms on a quiet
    /// disk, 1.3-1.7 ms (p95 4 ms) against 0.2 ms while other writers keep
    /// the journal busy.
    ///
    /// Never waits: the checkpoint is PASSIVE (it copies what no reader
    /// still needs, and takes no lock it would wait for), and SQLite starts
    /// the WAL over only if no reader uses it. With a reader open (a
    /// `sqlite3` shell, a backup, `doctor`), or other logins reading at that
    /// moment, the WAL goes on growing, and a later write starts it over.
    fn restart_wal(&mut self) {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_RESTART_BYTES) {
            // Best effort: a checkpoint that fails leaves the WAL to grow,
            // and a later write tries again.
            let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
        }
    }
}

/// The statement of [`Tx::unused_codes`] for codes of `kind`: `?1` the
/// user, and `?2` the time now for codes that expire.
fn unused_codes_sql(kind: CodeKind) -> String {
    let t = table(kind);
    if !kind.expires() {
        return format!("SELECT id, hash FROM {t} WHERE user = ?1 AND used_at IS NULL");
    }
    let newest = if kind.newest_only() {
        format!(" AND id = (SELECT max(id) FROM {t} WHERE user = ?1)")
    } else {
        String::new()
    };
    format!(
        "SELECT id, hash FROM {t} WHERE user = ?1 AND used_at IS NULL AND expires_at > ?2{newest}"
    )
}

/// The store file, its `-wal` and `-shm` files, and the directories above
/// them: root's and closed to others, at every open and before a kept store
/// serves another login. The file checked (device, inode), and whether the
/// `-wal` file is there.
fn check_files(path: &Path) -> Result<((u64, u64), bool)> {
    use std::os::unix::fs::MetadataExt;
    let (file, present) =
        match fsperm::check_with_siblings(path, &["-wal", "-shm"], Secrecy::OwnerOnly) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::StoreMissing { path: path.into() })
            }
            checked => checked?,
        };
    Ok((
        (file.dev(), file.ino()),
        present.first().copied().unwrap_or(false),
    ))
}

impl Store for SqliteStore {
    fn location(&self) -> &str {
        &self.location
    }

    /// The path names the file this connection has open (a store restored
    /// by moving another file into its place is opened afresh), and the
    /// files pass the checks of an open (a store others may now read or
    /// write is not served from the open connection either: the open that
    /// follows refuses it).
    fn still_current(&mut self) -> Result<bool> {
        Ok(check_files(&self.path).is_ok_and(|(file, _)| Some(file) == self.file))
    }

    fn transaction(&mut self, kind: TxKind, body: &mut TxBody<'_>) -> Result<()> {
        let begin = match kind {
            TxKind::Read => "BEGIN",
            TxKind::Write(durability) => {
                if self.durability != Some(durability) {
                    // Set before the transaction (SQLite refuses it inside
                    // one); on failure nothing is written.
                    self.durability = None;
                    self.conn
                        .execute_batch(pragma(durability))
                        .map_err(|e| self.err(e))?;
                    self.durability = Some(durability);
                }
                self.restart_wal();
                "BEGIN IMMEDIATE"
            }
        };
        let location = &self.location;
        let tx = Begun::new(&self.conn, begin).map_err(|e| Error::store(location.clone(), e))?;
        let mut stx = SqliteTx {
            conn: &self.conn,
            location,
            failure: RefCell::default(),
            locked: Vec::new(),
        };
        // On an error the transaction is dropped: rolled back.
        body(&mut stx)?;
        if let Some(e) = stx.failure.into_inner().into_error(location) {
            // A statement failed and the body went on: what ran around it
            // is not committed. Dropping the transaction rolls it back
            // (unless SQLite already did, as it does after some errors).
            drop(tx);
            return Err(e);
        }
        tx.commit().map_err(|e| Error::store(location.clone(), e))?;
        if kind != TxKind::Read && self.wal_created {
            self.sync_dir()?;
        }
        Ok(())
    }

    fn check_integrity(&mut self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA integrity_check")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| Error::store(self.location.clone(), e))?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }
}

/// A transaction begun on a connection: `BEGIN` and `COMMIT` run as kept
/// statements, parsed once per connection (rusqlite's `Transaction` parses
/// them at every transaction), and a transaction still open when this is
/// dropped (an error, a failed `COMMIT`) is rolled back.
struct Begun<'c> {
    conn: &'c Connection,
}

impl<'c> Begun<'c> {
    /// `begin`: `BEGIN` (reads) or `BEGIN IMMEDIATE` (writes).
    fn new(conn: &'c Connection, begin: &str) -> rusqlite::Result<Begun<'c>> {
        conn.prepare_cached(begin)?.execute([])?;
        Ok(Begun { conn })
    }

    fn commit(self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([]).map(drop)
    }
}

impl Drop for Begun<'_> {
    fn drop(&mut self) {
        // SQLite may already have rolled it back itself (after some
        // errors): then there is nothing to roll back.
        if !self.conn.is_autocommit() {
            let _ = self
                .conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut s| s.execute([]));
        }
    }
}

/// One transaction on the store's connection.
struct SqliteTx<'a> {
    conn: &'a Connection,
    location: &'a str,
    /// The first statement that failed: then none runs after it, and the
    /// transaction is rolled back.
    failure: RefCell<TxFailure>,
    /// The users whose rows this transaction read with [`Tx::lock_user`]
    /// (under its write lock, as PostgreSQL's reads them under a row lock).
    locked: Vec<String>,
}

const USER_COLUMNS: &str = "name, state, disabled, secret, code_salt, last_step, failures,
     locked_until, last_success,
     (SELECT count(*) FROM backup_codes b WHERE b.user = users.name AND b.used_at IS NULL),
     email, phone, lock_level, enrolled_by, delivery";

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    let code_salt: Vec<u8> = r.get(4)?;
    if code_salt.len() != SALT_LEN {
        return Err(rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Blob,
            format!(
                "the code salt has {} bytes, not {SALT_LEN}: the store is damaged",
                code_salt.len()
            )
            .into(),
        ));
    }
    Ok(UserRecord {
        name: r.get(0)?,
        state: TotpState::parse(&r.get::<_, String>(1)?),
        disabled: r.get(2)?,
        secret: r.get(3)?,
        enrolled_by: Origin::parse(&r.get::<_, String>(13)?),
        code_salt,
        last_step: r.get(5)?,
        lock: LockState {
            failures: r.get(6)?,
            locked_until: r.get(7)?,
            level: r.get(12)?,
        },
        last_success: r.get(8)?,
        unused_backup_codes: r.get(9)?,
        email: r.get(10)?,
        phone: r.get(11)?,
        delivery: r
            .get::<_, Option<String>>(14)?
            .as_deref()
            .and_then(Channel::parse),
    })
}

fn table(kind: CodeKind) -> &'static str {
    match kind {
        CodeKind::Backup => "backup_codes",
        CodeKind::Recovery => "recovery_codes",
        CodeKind::Email => "email_codes",
        CodeKind::Sms => "sms_codes",
    }
}

impl SqliteTx<'_> {
    /// `e` as crm2fa's error, kept as the transaction's failure.
    fn err(&self, e: rusqlite::Error) -> Error {
        self.failure
            .borrow_mut()
            .note(Error::store(self.location, e))
    }

    /// An error if a statement failed before in this transaction.
    fn check(&self) -> Result<()> {
        self.failure.borrow().check(self.location)
    }

    /// Run one statement; the number of rows it changed.
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
        self.check()?;
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        stmt.execute(params).map_err(|e| self.err(e))
    }

    /// The row `sql` selects, if any.
    fn one<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>> {
        self.check()?;
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        stmt.query_row(params, f)
            .optional()
            .map_err(|e| self.err(e))
    }

    fn rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        self.check()?;
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params, f)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(|e| self.err(e))
    }
}

impl Tx for SqliteTx<'_> {
    fn lock_user(&mut self, name: &str) -> Result<Option<UserRecord>> {
        // The transaction holds SQLite's one write lock already.
        let user = self.user(name)?;
        self.locked.extend(user.as_ref().map(|u| u.name.clone()));
        Ok(user)
    }

    fn expect_user(&mut self, seen: &UserRecord) -> Result<()> {
        if self.lock_user(&seen.name)?.as_ref() == Some(seen) {
            return Ok(());
        }
        Err(Error::Conflict {
            location: self.location.into(),
        })
    }

    fn user(&mut self, name: &str) -> Result<Option<UserRecord>> {
        self.one(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1"),
            [name],
            user_row,
        )
    }

    fn users(&mut self) -> Result<Vec<UserRecord>> {
        self.rows(
            &format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"),
            [],
            user_row,
        )
    }

    fn unused_codes(&mut self, kind: CodeKind, name: &str, now: i64) -> Result<Vec<StoredCode>> {
        let code = |r: &rusqlite::Row<'_>| {
            Ok(StoredCode {
                id: r.get(0)?,
                hash: r.get(1)?,
            })
        };
        let sql = unused_codes_sql(kind);
        if kind.expires() {
            self.rows(&sql, params![name, now], code)
        } else {
            self.rows(&sql, params![name], code)
        }
    }

    fn pending_codes(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        let codes: Option<Option<Vec<u8>>> = self.one(
            "SELECT pending_codes FROM users WHERE name = ?1 AND state = 'pending'",
            [name],
            |r| r.get(0),
        )?;
        Ok(codes.map(Option::unwrap_or_default))
    }

    fn audit(&mut self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let rows = self.rows(
            "SELECT time, user, service, rhost, event, outcome, detail, host FROM audit
             WHERE (?1 IS NULL OR user = ?1) AND (?2 IS NULL OR time >= ?2)
             ORDER BY time, id",
            params![filter.user, filter.since],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(
                |(time, user, service, rhost, event, outcome, detail, host)| {
                    let unknown = |what: &str, word: &str| {
                        Error::store(self.location, format!("unknown audit {what} {word:?}"))
                    };
                    Ok(AuditEntry {
                        time,
                        host,
                        event: Event::parse(&event).ok_or_else(|| unknown("event", &event))?,
                        outcome: Outcome::parse(&outcome)
                            .ok_or_else(|| unknown("outcome", &outcome))?,
                        user,
                        service,
                        rhost,
                        detail,
                    })
                },
            )
            .collect()
    }

    fn insert_user(&mut self, name: &str, code_salt: &[u8], now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO users(name, code_salt, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(name) DO NOTHING",
            params![name, code_salt, now],
        )
        .map(drop)
    }

    fn update_lock(&mut self, name: &str, to: &LockState, now: i64) -> Result<bool> {
        let n = self.exec(
            "UPDATE users SET failures = ?2, locked_until = ?3, lock_level = ?4, updated_at = ?5
             WHERE name = ?1",
            params![name, to.failures, to.locked_until, to.level, now],
        )?;
        Ok(n == 1)
    }

    fn write_attempt(&mut self, from: &UserRecord, to: &Attempt, now: i64) -> Result<()> {
        // The transaction holds SQLite's one write lock: a row it read
        // (lock_user, expect_user) is still `from`. Any other is read now
        // and compared, as the contract says.
        if !self.locked.contains(&from.name) {
            let stored = self.user(&from.name)?.map(|mut u| {
                u.unused_backup_codes = from.unused_backup_codes;
                u
            });
            if stored.as_ref() != Some(from) {
                return Err(Error::Conflict {
                    location: self.location.into(),
                });
            }
        }
        let n = self.exec(
            "UPDATE users SET failures = ?2, locked_until = ?3, lock_level = ?4, updated_at = ?5,
                    last_step = coalesce(?6, last_step),
                    state = CASE WHEN ?6 IS NULL THEN state ELSE 'active' END,
                    pending_codes = CASE WHEN ?6 IS NULL THEN pending_codes END,
                    last_success = CASE WHEN ?7 THEN ?5 ELSE last_success END
             WHERE name = ?1",
            params![
                from.name,
                to.lock.failures,
                to.lock.locked_until,
                to.lock.level,
                now,
                to.step,
                to.success
            ],
        )?;
        if n == 1 {
            return Ok(());
        }
        Err(Error::Conflict {
            location: self.location.into(),
        })
    }

    fn consume_code(&mut self, kind: CodeKind, id: i64, now: i64) -> Result<bool> {
        let t = table(kind);
        let newest = if kind.newest_only() {
            format!(" AND id = (SELECT max(c.id) FROM {t} c WHERE c.user = {t}.user)")
        } else {
            String::new()
        };
        let n = self.exec(
            &format!("UPDATE {t} SET used_at = ?2 WHERE id = ?1 AND used_at IS NULL{newest}"),
            params![id, now],
        )?;
        Ok(n == 1)
    }

    fn set_enrollment(&mut self, name: &str, new: &NewEnrollment<'_>, now: i64) -> Result<bool> {
        let n = self.exec(
            "UPDATE users SET state = 'pending', disabled = 0, secret = ?2, pending_codes = ?3,
                    last_step = -1, enrolled_by = ?6, updated_at = ?4
             WHERE name = ?1 AND (?5 OR state = 'none')",
            params![
                name,
                new.sealed_secret,
                new.sealed_codes,
                now,
                new.replace,
                new.origin.as_str()
            ],
        )?;
        Ok(n == 1)
    }

    fn clear_pending_codes(&mut self, name: &str, now: i64) -> Result<()> {
        self.exec(
            "UPDATE users SET pending_codes = NULL, updated_at = ?2 WHERE name = ?1",
            params![name, now],
        )
        .map(drop)
    }

    fn delete_codes(&mut self, kind: CodeKind, name: &str, unused_only: bool) -> Result<()> {
        self.exec(
            &format!(
                "DELETE FROM {} WHERE user = ?1 AND (NOT ?2 OR used_at IS NULL)",
                table(kind)
            ),
            params![name, unused_only],
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
                "INSERT INTO backup_codes(user, hash, created_at) VALUES (?1, ?2, ?3)",
                params![name, &h[..], now],
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
        self.exec(
            &format!(
                "INSERT INTO {}(user, hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                table(kind)
            ),
            params![name, &hash[..], now, expires_at],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    fn prune_codes(&mut self, kind: CodeKind, name: &str, before: i64) -> Result<()> {
        let t = table(kind);
        self.exec(
            &format!(
                "DELETE FROM {t} WHERE user = ?1 AND created_at < ?2
                   AND id <> (SELECT max(id) FROM {t} WHERE user = ?1)"
            ),
            params![name, before],
        )
        .map(drop)
    }

    fn codes_made_since(&mut self, kind: CodeKind, name: &str, since: i64) -> Result<Vec<i64>> {
        self.rows(
            &format!(
                "SELECT created_at FROM {} WHERE user = ?1 AND created_at > ?2 ORDER BY created_at",
                table(kind)
            ),
            params![name, since],
            |r| r.get(0),
        )
    }

    fn delete_unused_code(&mut self, kind: CodeKind, name: &str, id: i64) -> Result<()> {
        self.exec(
            &format!(
                "DELETE FROM {} WHERE id = ?1 AND user = ?2 AND used_at IS NULL",
                table(kind)
            ),
            params![id, name],
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
            &format!("UPDATE users SET {column} = ?2, updated_at = ?3 WHERE name = ?1"),
            params![name, to, now],
        )?;
        Ok(n == 1)
    }

    fn set_delivery(&mut self, name: &str, channel: Option<Channel>, now: i64) -> Result<bool> {
        let n = match channel {
            Some(c) => self.exec(
                "UPDATE users SET delivery = ?2, disabled = 0, updated_at = ?3 WHERE name = ?1",
                params![name, c.as_str(), now],
            )?,
            None => self.exec(
                "UPDATE users SET delivery = NULL, updated_at = ?2 WHERE name = ?1",
                params![name, now],
            )?,
        };
        Ok(n == 1)
    }

    fn set_disabled(&mut self, name: &str, disabled: bool, now: i64) -> Result<bool> {
        let n = self.exec(
            "UPDATE users SET disabled = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, disabled, now],
        )?;
        Ok(n == 1)
    }

    fn clear_factors(&mut self, name: &str, now: i64) -> Result<bool> {
        let n = self.exec(
            "UPDATE users SET state = 'none', disabled = 0, secret = NULL, pending_codes = NULL,
                    delivery = NULL, last_step = -1, updated_at = ?2
             WHERE name = ?1",
            params![name, now],
        )?;
        Ok(n == 1)
    }

    fn remembered(&mut self, name: &str, now: i64) -> Result<Vec<(String, i64)>> {
        self.rows(
            "SELECT host, until FROM remembered WHERE user = ?1 AND until > ?2 ORDER BY host",
            params![name, now],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn remember(&mut self, name: &str, host: &str, until: i64) -> Result<()> {
        self.exec(
            "INSERT INTO remembered(user, host, until) VALUES (?1, ?2, ?3)
             ON CONFLICT(user, host) DO UPDATE SET until = excluded.until",
            params![name, host, until],
        )
        .map(drop)
    }

    fn forget(&mut self, name: &str, host: Option<&str>) -> Result<usize> {
        self.exec(
            "DELETE FROM remembered WHERE user = ?1 AND (?2 IS NULL OR host = ?2)",
            params![name, host],
        )
    }

    fn activate(&mut self, name: &str, last_step: i64, now: i64) -> Result<bool> {
        let n = self.exec(
            "UPDATE users SET state = 'active', pending_codes = NULL, last_step = ?2, updated_at = ?3
             WHERE name = ?1 AND state = 'pending'",
            params![name, last_step, now],
        )?;
        Ok(n == 1)
    }

    fn export(&mut self) -> Result<Snapshot> {
        let users = self.rows(
            "SELECT name, state, disabled, secret, pending_codes, code_salt, last_step, failures,
                    locked_until, lock_level, last_success, enrolled_by, email, phone, delivery,
                    created_at, updated_at
             FROM users ORDER BY name",
            [],
            |r| {
                Ok(UserRow {
                    name: r.get(0)?,
                    state: r.get(1)?,
                    disabled: r.get(2)?,
                    secret: r.get(3)?,
                    pending_codes: r.get(4)?,
                    code_salt: r.get(5)?,
                    last_step: r.get(6)?,
                    failures: r.get(7)?,
                    locked_until: r.get(8)?,
                    lock_level: r.get(9)?,
                    last_success: r.get(10)?,
                    enrolled_by: r.get(11)?,
                    email: r.get(12)?,
                    phone: r.get(13)?,
                    delivery: r.get(14)?,
                    created_at: r.get(15)?,
                    updated_at: r.get(16)?,
                })
            },
        )?;
        let mut codes = vec![];
        for kind in CodeKind::ALL {
            let expires = if kind.expires() { "expires_at" } else { "NULL" };
            codes.extend(self.rows(
                &format!(
                    "SELECT user, hash, created_at, {expires}, used_at FROM {} ORDER BY id",
                    table(kind)
                ),
                [],
                |r| {
                    Ok(CodeRow {
                        kind,
                        user: r.get(0)?,
                        hash: r.get(1)?,
                        created_at: r.get(2)?,
                        expires_at: r.get(3)?,
                        used_at: r.get(4)?,
                    })
                },
            )?);
        }
        let remembered = self.rows(
            "SELECT user, host, until FROM remembered ORDER BY user, host",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
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
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                params![
                    u.name,
                    u.state,
                    u.disabled,
                    u.secret,
                    u.pending_codes,
                    u.code_salt,
                    u.last_step,
                    u.failures,
                    u.locked_until,
                    u.lock_level,
                    u.last_success,
                    u.enrolled_by,
                    u.email,
                    u.phone,
                    u.delivery,
                    u.created_at,
                    u.updated_at
                ],
            )?;
        }
        for c in &snapshot.codes {
            if c.kind.expires() {
                self.exec(
                    &format!(
                        "INSERT INTO {}(user, hash, created_at, expires_at, used_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        table(c.kind)
                    ),
                    params![
                        c.user,
                        c.hash,
                        c.created_at,
                        c.expires_at.unwrap_or(0),
                        c.used_at
                    ],
                )?;
            } else {
                self.exec(
                    "INSERT INTO backup_codes(user, hash, created_at, used_at)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![c.user, c.hash, c.created_at, c.used_at],
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
        self.exec(
            "INSERT INTO audit(time, user, service, rhost, event, outcome, detail, host)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                e.time,
                e.user,
                e.service,
                e.rhost,
                e.event.as_str(),
                e.outcome.as_str(),
                e.detail,
                e.host
            ],
        )
        .map(drop)
    }
}

#[cfg(test)]
mod conformance {
    use super::*;
    use crate::store::conformance::Backend;

    /// A new, empty SQLite store in a temporary directory.
    struct Sqlite {
        dir: tempfile::TempDir,
    }

    impl Sqlite {
        fn new() -> Sqlite {
            let dir = tempfile::tempdir().unwrap();
            SqliteStore::create(&dir.path().join("crm2fa.db")).unwrap();
            Sqlite { dir }
        }
    }

    impl Backend for Sqlite {
        fn open(&self) -> Box<dyn Store> {
            Box::new(SqliteStore::open(&self.dir.path().join("crm2fa.db")).unwrap())
        }
    }

    crate::store_conformance!(Sqlite::new());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditCtx, Fact};

    /// The POSIX locks this process holds on the file with inode `ino`, as
    /// the kernel lists them, without their place in its list (which moves
    /// as other tests' locks come and go).
    fn locks_held_on(ino: u64) -> Vec<String> {
        let me = std::process::id().to_string();
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>())
            .filter(|f| {
                // (N:) POSIX ADVISORY READ|WRITE PID MAJ:MIN:INODE START END
                f.len() >= 5
                    && f[0] == "POSIX"
                    && f[3] == me
                    && f[4].rsplit(':').next() == Some(&ino.to_string())
            })
            .map(|f| f.join(" "))
            .collect()
    }

    #[test]
    fn a_failed_transaction_is_rolled_back_and_the_next_one_begins() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        let mut s = SqliteStore::create(&p).unwrap();
        // How often each ran, through the statements kept prepared (the
        // schema's creation ran one write transaction already).
        let runs = |s: &SqliteStore| {
            ["BEGIN IMMEDIATE", "BEGIN", "COMMIT", "ROLLBACK"].map(|sql| {
                s.conn
                    .prepare_cached(sql)
                    .unwrap()
                    .get_status(rusqlite::StatementStatus::Run)
            })
        };
        let before = runs(&s);
        let salt = [7u8; SALT_LEN];
        for kind in [TxKind::Write(Durability::Full), TxKind::Read] {
            let store: &mut dyn Store = &mut s;
            let failed = store.transaction(kind, &mut |tx| {
                if kind != TxKind::Read {
                    tx.insert_user("alice", &salt, 1)?;
                }
                Err(Error::store("test", "the body failed"))
            });
            assert!(failed.is_err());
            assert!(s.conn.is_autocommit(), "{kind:?}: still in a transaction");
        }
        let store: &mut dyn Store = &mut s;
        assert!(store.read(|tx| tx.user("alice")).unwrap().is_none());
        store
            .write(Durability::Full, |tx| tx.insert_user("alice", &salt, 1))
            .unwrap();
        assert!(store.read(|tx| tx.user("alice")).unwrap().is_some());
        assert!(s.conn.is_autocommit());
        // BEGIN and COMMIT are kept prepared, as every statement is:
        // BEGIN IMMEDIATE, BEGIN, COMMIT and ROLLBACK ran 2, 3, 3, 2 times.
        let after = runs(&s);
        let ran: Vec<i32> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        assert_eq!(ran, [2, 3, 3, 2]);
        assert_eq!(before, [1, 0, 1, 0], "the schema made in one transaction");
    }

    #[test]
    fn checking_the_files_leaves_sqlites_locks_on_them_alone() {
        use std::os::unix::fs::MetadataExt;
        // The ownership checks refuse a store root does not own.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        let mut s = SqliteStore::create(&p).unwrap();
        let store: &mut dyn Store = &mut s;
        // A write transaction in progress, as in another of crm2fad's
        // threads while this one checks the files for the next login.
        store
            .transaction(TxKind::Write(Durability::Full), &mut |_| {
                let shm = std::fs::metadata(d.path().join("db-shm")).unwrap().ino();
                let held = locks_held_on(shm);
                assert!(!held.is_empty(), "SQLite holds locks on the -shm file");
                check_files(&p).unwrap();
                assert_eq!(locks_held_on(shm), held, "the check dropped them");
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_directory_that_cannot_be_synced_after_the_wal_is_made_fails_the_write() {
        // The ownership checks refuse a store root does not own.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (dir, moved) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&dir).unwrap();
        let p = dir.join("db");
        drop(SqliteStore::create(&p).unwrap());
        // The WAL emptied and removed, as after a checkpoint on close.
        Connection::open(&p)
            .unwrap()
            .pragma_update(None, "journal_mode", "DELETE")
            .unwrap();
        assert!(!dir.join("db-wal").exists());
        let mut s = SqliteStore::open(&p).unwrap();
        // The directory moves away: its old path cannot be opened to sync.
        std::fs::rename(&dir, &moved).unwrap();
        let store: &mut dyn Store = &mut s;
        let e = store
            .transaction(TxKind::Write(Durability::Full), &mut |tx| {
                tx.insert_user("u", &[0; SALT_LEN], 1)
            })
            .expect_err("the directory entry of the new -wal file is not known durable");
        let why = e.to_string();
        assert!(why.contains("cannot sync its directory"), "{why}");
        assert!(why.contains(&dir.display().to_string()), "{why}");
        // Until a sync succeeds, every write says so.
        let e = store
            .transaction(TxKind::Write(Durability::Full), &mut |tx| {
                tx.insert_user("v", &[0; SALT_LEN], 1)
            })
            .expect_err("still not synced");
        assert!(e.to_string().contains("cannot sync its directory"));
        // Back in place, the next write syncs it, and the rows are there.
        std::fs::rename(&moved, &dir).unwrap();
        store
            .transaction(TxKind::Write(Durability::Full), &mut |tx| {
                tx.insert_user("w", &[0; SALT_LEN], 1)
            })
            .unwrap();
        assert!(!s.wal_created);
        drop(s);
        let mut names = Vec::new();
        let again: &mut dyn Store = &mut SqliteStore::open(&p).unwrap();
        again
            .transaction(TxKind::Read, &mut |tx| {
                names = tx.users()?.into_iter().map(|u| u.name).collect();
                Ok(())
            })
            .unwrap();
        assert_eq!(names, ["u", "v", "w"]);
    }

    #[test]
    fn contacts_set_together_are_set_all_or_none() {
        use crate::audit::AuditFilter;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        let mut store = SqliteStore::create(&p).unwrap();
        let s: &mut dyn Store = &mut store;
        let ctx = AuditCtx {
            host: "h".into(),
            service: "s".into(),
            rhost: String::new(),
        };
        let set = |channel, to: &str| {
            ctx.entry(
                1,
                "u",
                &Fact::ContactSet {
                    channel,
                    to: Some(to.into()),
                },
            )
        };
        let salt = crate::codes::new_salt();
        let (email, phone) = (set(Channel::Email, "a"), set(Channel::Sms, "p"));
        s.set_contacts(
            "u",
            &[
                (Channel::Email, Some("a@example.com"), &email),
                (Channel::Sms, Some("+15550100"), &phone),
            ],
            &salt,
            1,
        )
        .unwrap();
        let u = s.user("u").unwrap().unwrap();
        assert_eq!(
            (u.email.as_deref(), u.phone.as_deref()),
            (Some("a@example.com"), Some("+15550100"))
        );
        // The second change fails in the store: the first is not kept.
        let conn = Connection::open(&p).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER no_phone BEFORE UPDATE OF phone ON users
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
        drop(conn);
        let err = s
            .set_contacts(
                "u",
                &[
                    (Channel::Email, Some("b@example.com"), &email),
                    (Channel::Sms, Some("+15550101"), &phone),
                ],
                &salt,
                2,
            )
            .unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        let u = s.user("u").unwrap().unwrap();
        assert_eq!(
            (u.email.as_deref(), u.phone.as_deref()),
            (Some("a@example.com"), Some("+15550100"))
        );
        assert_eq!(s.audit(&AuditFilter::default()).unwrap().len(), 2);
    }

    #[test]
    fn a_store_is_refused_in_a_directory_where_others_can_add_files() {
        use std::os::unix::fs::PermissionsExt;
        // The ownership checks refuse a directory root does not own.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let shared = d.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        // As /tmp: sticky, and anyone may create a name in it.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let p = shared.join("crm2fa.db");
        let Err(err) = SqliteStore::create(&p) else {
            panic!("a store made in a shared directory")
        };
        assert!(
            matches!(&err, Error::Permissions { path, .. } if path == &shared),
            "{err}"
        );
        assert!(err.to_string().contains("-wal"), "{err}");
        assert!(!p.exists(), "nothing is created there");
        // Made elsewhere, then its directory opened to others: not opened.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
        drop(SqliteStore::create(&p).unwrap());
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let Err(err) = SqliteStore::open(&p) else {
            panic!("a store opened in a shared directory")
        };
        assert!(matches!(err, Error::Permissions { .. }), "{err}");
    }

    #[test]
    fn corrupt_store_is_an_error_naming_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        std::fs::write(&p, vec![0x5a; 8192]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = SqliteStore::open(&p).unwrap_err().to_string();
        assert!(err.contains(&p.display().to_string()), "{err}");
        let missing = SqliteStore::open(&d.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("crm2fa-admin init"), "{missing}");
    }

    #[test]
    fn newer_schema_is_refused_with_the_versions() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        drop(SqliteStore::create(&p).unwrap());
        let conn = Connection::open(&p).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = SqliteStore::open(&p).unwrap_err();
        assert!(matches!(err, Error::StoreSchema { found: 99, .. }), "{err}");
    }

    #[test]
    fn a_store_made_before_the_header_version_is_read_by_its_meta_table() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        drop(SqliteStore::create(&p).unwrap());
        let conn = Connection::open(&p).unwrap();
        conn.pragma_update(None, "user_version", 0).unwrap();
        drop(conn);
        // Current per its meta table: opened, and the header is written.
        drop(SqliteStore::open(&p).unwrap());
        let conn = Connection::open(&p).unwrap();
        assert_eq!(SqliteStore::header_version(&conn).unwrap(), SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", 0).unwrap();
        conn.execute(
            "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        drop(conn);
        let err = SqliteStore::open(&p).unwrap_err();
        assert!(matches!(err, Error::StoreSchema { found: 99, .. }), "{err}");
    }

    fn audit_entry(i: i64) -> AuditEntry {
        AuditEntry {
            detail: "x".repeat(3000),
            ..AuditCtx::default().entry(i, "u", &Fact::NoCode)
        }
    }

    /// Writes past the WAL limit while a reader holds a snapshot (a
    /// `sqlite3` shell, a backup): none waits for the reader, and the first
    /// write after the reader is gone starts the WAL over and cuts its file
    /// back.
    #[test]
    fn writes_never_wait_for_a_reader_to_restart_the_wal() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        let mut s = SqliteStore::create(&p).unwrap();
        let reader = Connection::open(&p).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM users;")
            .unwrap();
        let wal = d.path().join("db-wal");
        let mut slowest = Duration::ZERO;
        let mut i = 0;
        while std::fs::metadata(&wal).unwrap().len() <= 2 * WAL_RESTART_BYTES {
            i += 1;
            let t = std::time::Instant::now();
            let store: &mut dyn Store = &mut s;
            store.record(&audit_entry(i)).unwrap();
            slowest = slowest.max(t.elapsed());
        }
        assert!(
            slowest < BUSY_TIMEOUT / 2,
            "a write waited {slowest:?} behind the reader"
        );
        reader.execute_batch("COMMIT").unwrap();
        drop(reader);
        let store: &mut dyn Store = &mut s;
        store.record(&audit_entry(i + 1)).unwrap();
        let left = std::fs::metadata(&wal).unwrap().len();
        assert!(left <= WAL_RESTART_BYTES, "WAL not cut back: {left} bytes");
        drop(s);
        let store: &mut dyn Store = &mut SqliteStore::open(&p).unwrap();
        assert_eq!(
            store.audit(&AuditFilter::default()).unwrap().len() as i64,
            i + 1
        );
    }

    /// One process per write, as logins are: the WAL starts over in place.
    /// Its file stays between the limit and the limit plus one write, never
    /// emptied (then every commit would grow it again) and never growing on;
    /// every write is read back by the next process. The store file grows
    /// by whole chunks.
    #[test]
    fn the_wal_starts_over_in_its_own_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        drop(SqliteStore::create(&p).unwrap());
        let wal = d.path().join("db-wal");
        let (mut reached, mut restarts, mut last) = (false, 0, 0);
        for i in 1..=400 {
            let mut s = SqliteStore::open(&p).unwrap();
            let store: &mut dyn Store = &mut s;
            store.record(&audit_entry(i)).unwrap();
            assert_eq!(
                store.audit(&AuditFilter::default()).unwrap().len() as i64,
                i
            );
            let len = std::fs::metadata(&wal).unwrap().len();
            reached |= len >= WAL_RESTART_BYTES;
            if reached {
                assert!(len >= WAL_RESTART_BYTES, "WAL file emptied: {len} bytes");
            }
            assert!(
                len <= WAL_RESTART_BYTES + 64 * 1024,
                "WAL grew on: {len} bytes"
            );
            restarts += usize::from(len < last);
            last = len;
        }
        assert!(restarts >= 2, "the WAL never started over");
        // The store file grew by whole chunks, so checkpoints wrote into
        // blocks it already had.
        let db = std::fs::metadata(&p).unwrap().len();
        assert!(
            db > 0 && db.is_multiple_of(DB_CHUNK_BYTES as u64),
            "store file of {db} bytes"
        );
    }

    #[test]
    fn a_damaged_code_salt_is_a_store_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        let mut s = SqliteStore::create(&p).unwrap();
        let store: &mut dyn Store = &mut s;
        let e = AuditCtx::default().entry(1, "u", &Fact::Disabled);
        store
            .disable("u", &crate::codes::new_salt(), 1, &e)
            .unwrap();
        let conn = Connection::open(&p).unwrap();
        conn.execute("UPDATE users SET code_salt = x'01'", [])
            .unwrap();
        let err = store.user("u").unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    #[test]
    fn a_kept_stores_reads_are_not_compiled_again_at_each_login() {
        let d = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::create(&d.path().join("db")).unwrap();
        s.conn
            .execute(
                "INSERT INTO users(name, state, code_salt, created_at, updated_at, email, phone)
                 VALUES ('u', 'active', zeroblob(16), 0, 0, 'u@example.org', '+15550100')",
                [],
            )
            .unwrap();
        for _ in 0..3 {
            let store: &mut dyn Store = &mut s;
            store
                .login_view("u", None, &[Channel::Email, Channel::Sms], 100)
                .unwrap();
        }
        for kind in [CodeKind::Recovery, CodeKind::Email, CodeKind::Sms] {
            let stmt = s.conn.prepare_cached(&unused_codes_sql(kind)).unwrap();
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "{kind:?}"
            );
        }
    }

    fn synchronous(s: &SqliteStore) -> i64 {
        s.conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn consuming_writes_are_full_and_audit_rows_light() {
        let d = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::create(&d.path().join("db")).unwrap();
        let e = AuditCtx::default().entry(1, "u", &Fact::Unlocked);
        {
            let store: &mut dyn Store = &mut s;
            store.record(&e).unwrap();
        }
        assert_eq!(synchronous(&s), 1, "audit-only row: NORMAL");
        {
            let store: &mut dyn Store = &mut s;
            store.unlock("u", 1, &e).unwrap();
        }
        assert_eq!(synchronous(&s), 2, "any other write: FULL");
    }
}
