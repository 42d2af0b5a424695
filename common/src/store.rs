//! The store: one interface to everything crm2fa keeps, today in SQLite.
//!
//! Every check-and-consume is one conditional write whose affected-row count
//! decides (`… WHERE last_step < ?`, `… WHERE used_at IS NULL`), inside one
//! `BEGIN IMMEDIATE` transaction. That makes each code good for exactly one
//! login, also under concurrent logins, and keeps the SQL portable to a
//! server database later.
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};
use subtle::ConstantTimeEq;

use crate::codes::HASH_LEN;
use crate::error::{Error, Result};
use crate::fsperm::{self, Secrecy};

/// WAL size past which a write checkpoints and truncates it. Every login
/// process reads the whole WAL to rebuild its index, so it is kept small.
const WAL_TRUNCATE_BYTES: u64 = 256 * 1024;

/// Schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 1;

/// Migrations: entry `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

/// Enrolment state of a user's TOTP factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpState {
    None,
    Pending,
    Active,
}

impl TotpState {
    fn parse(s: &str) -> TotpState {
        match s {
            "pending" => TotpState::Pending,
            "active" => TotpState::Active,
            _ => TotpState::None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TotpState::None => "none",
            TotpState::Pending => "pending",
            TotpState::Active => "active",
        }
    }
}

/// What the store knows about one user.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub name: String,
    pub state: TotpState,
    pub disabled: bool,
    /// The sealed TOTP secret (see [`crate::crypto::HostKey::open`]).
    pub secret: Option<Vec<u8>>,
    pub code_salt: Vec<u8>,
    pub last_step: i64,
    pub failures: u32,
    pub locked_until: Option<i64>,
    pub last_success: Option<i64>,
    pub backup_codes_left: u32,
    pub email: Option<String>,
    pub phone: Option<String>,
}

impl UserRecord {
    /// Locked at `now`: the time the lock ends.
    pub fn locked_at(&self, now: i64) -> Option<i64> {
        self.locked_until.filter(|&t| t > now)
    }
    /// Has a TOTP secret, pending or active.
    pub fn has_totp(&self) -> bool {
        matches!(self.state, TotpState::Pending | TotpState::Active) && self.secret.is_some()
    }

    /// The TOTP secret, decrypted with the host key, if the user has one.
    pub fn open_totp_secret(
        &self,
        key: &crate::crypto::HostKey,
    ) -> Result<Option<crate::crypto::Secret>> {
        match (&self.secret, self.has_totp()) {
            (Some(sealed), true) => key.open(&self.name, sealed).map(Some),
            _ => Ok(None),
        }
    }

    /// State as `status` reports it: none, pending, active or disabled.
    pub fn display_state(&self) -> &'static str {
        if self.disabled {
            "disabled"
        } else {
            self.state.as_str()
        }
    }
}

/// Who and where, for the audit table.
#[derive(Debug, Clone, Default)]
pub struct AuditCtx {
    pub service: String,
    pub rhost: String,
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub time: i64,
    pub user: String,
    pub service: String,
    pub rhost: String,
    pub event: String,
    pub outcome: String,
    pub detail: String,
}

/// A new enrolment as the store keeps it: all secrets already sealed or hashed.
#[derive(Debug, Clone, Copy)]
pub struct NewEnrollment<'a> {
    pub sealed_secret: &'a [u8],
    pub code_salt: &'a [u8],
    pub backup_hashes: &'a [[u8; HASH_LEN]],
    pub sealed_codes: &'a [u8],
    /// Replace a pending or active enrolment; otherwise only a user with no
    /// factor is enrolled.
    pub replace: bool,
}

/// A TOTP code matched time step `step` of the secret that was stored
/// sealed as `sealed_secret` when it was read. The consuming write checks
/// both, so a code of a secret replaced meanwhile (re-enrolment during an
/// open login) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpMatch {
    pub step: i64,
    pub sealed_secret: Vec<u8>,
}

/// What a login attempt offers, worked out before the write lock is taken:
/// the TOTP step the code matched, and the argon2 hash of the code under the
/// user's salt when it is shaped like a backup or recovery code.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    pub totp: Option<TotpMatch>,
    pub backup_hash: Option<[u8; HASH_LEN]>,
    pub recovery_hash: Option<[u8; HASH_LEN]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    Totp,
    Backup,
    Recovery,
}

impl Factor {
    pub fn as_str(self) -> &'static str {
        match self {
            Factor::Totp => "totp",
            Factor::Backup => "backup",
            Factor::Recovery => "recovery",
        }
    }
}

/// Lockout rules for one attempt.
#[derive(Debug, Clone, Copy)]
pub struct Lockout {
    pub max_failures: u32,
    pub lock_seconds: i64,
}

/// The outcome of [`Store::redeem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted {
        factor: Factor,
        /// Sealed backup codes to show once: set when this login activated a pending enrolment.
        activated_codes: Option<Vec<u8>>,
        backup_codes_left: u32,
    },
    Rejected {
        failures: u32,
        /// Set when this failure locked the user.
        locked_until: Option<i64>,
    },
    Locked {
        until: i64,
    },
    UnknownUser,
}

/// How hard a commit insists on reaching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// fsync the WAL at every commit: for everything that consumes a code.
    Full,
    /// Leave the fsync to the next checkpoint: for audit-only rows.
    Light,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "PRAGMA synchronous = FULL",
            Durability::Light => "PRAGMA synchronous = NORMAL",
        }
    }
}

/// The crm2fa store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The `synchronous` level the connection is set to, if known.
    durability: Option<Durability>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Open an existing store (never creates one). Checks ownership and mode,
    /// and brings an older schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(Error::StoreMissing { path: path.into() });
        }
        fsperm::check_private_file(path, Secrecy::OwnerOnly)?;
        Store::connect(path)
    }

    /// Create the store if missing (mode 0600 before SQLite sees it, so the
    /// -wal and -shm files inherit it), then open it. Idempotent.
    pub fn create(path: &Path) -> Result<Store> {
        if !path.exists() {
            if let Some(dir) = path.parent() {
                fsperm::ensure_dir(dir, 0o700)?;
            }
            fsperm::create_private_file(path, b"")?;
        }
        Store::open(path)
    }

    fn connect(path: &Path) -> Result<Store> {
        let err = |e: rusqlite::Error| Error::Store {
            path: path.into(),
            message: e.to_string(),
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        // One process per login: do not checkpoint and delete the WAL at every
        // close; let it grow to a bound and be truncated past it instead.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA foreign_keys = ON;
             PRAGMA journal_size_limit = 262144;",
        )
        .map_err(err)?;
        let mut store = Store {
            conn,
            path: path.into(),
            durability: None,
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        Error::Store {
            path: self.path.clone(),
            message: e.to_string(),
        }
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

    fn migrate(&mut self) -> Result<()> {
        let v = Store::schema_version(&self.conn).map_err(|e| self.err(e))?;
        if v == SCHEMA_VERSION {
            return Ok(());
        }
        if v > SCHEMA_VERSION {
            return Err(Error::Store {
                path: self.path.clone(),
                message: format!(
                    "schema version {v} is newer than this crm2fa understands ({SCHEMA_VERSION}); \
                     upgrade crm2fa"
                ),
            });
        }
        let path = self.path.clone();
        let err = |e: rusqlite::Error| Error::Store {
            path: path.clone(),
            message: format!("schema upgrade failed: {e}"),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut v = Store::schema_version(&tx).map_err(err)?;
        while v < SCHEMA_VERSION {
            tx.execute_batch(MIGRATIONS[v as usize]).map_err(err)?;
            v += 1;
            tx.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [v.to_string()],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// SQLite's own consistency check plus the schema version, for `doctor`.
    pub fn integrity_check(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA integrity_check")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }

    /// Run `f` in one `BEGIN IMMEDIATE` transaction (the write lock is taken
    /// up front, so concurrent logins queue instead of failing) and commit,
    /// with `synchronous = FULL`: what it consumes stays consumed across a
    /// power cut.
    fn write<T>(&mut self, f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>) -> Result<T> {
        self.write_with(Durability::Full, f)
    }

    fn write_with<T>(
        &mut self,
        durability: Durability,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        if self.durability != Some(durability) {
            // Set before the transaction (SQLite refuses it inside one); on
            // failure nothing is written.
            self.durability = None;
            self.conn
                .execute_batch(durability.pragma())
                .map_err(|e| self.err(e))?;
            self.durability = Some(durability);
        }
        let path = self.path.clone();
        let err = |e: rusqlite::Error| Error::Store {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let out = f(&tx).map_err(err)?;
        tx.commit().map_err(err)?;
        self.trim_wal();
        Ok(out)
    }

    /// Each login is its own process and the WAL is not checkpointed on
    /// close, so SQLite never restarts it by itself: past a size, checkpoint
    /// and truncate it here. A failure only postpones that to a later write.
    fn trim_wal(&self) {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let big = std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_TRUNCATE_BYTES);
        if big {
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
    }

    // ---- reading ----------------------------------------------------------

    const USER_COLUMNS: &'static str =
        "name, state, disabled, secret, code_salt, last_step, failures,
         locked_until, last_success,
         CASE WHEN state = 'active' THEN (SELECT count(*) FROM backup_codes b
              WHERE b.user = users.name AND b.used_at IS NULL) ELSE 0 END,
         email, phone";

    fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
        Ok(UserRecord {
            name: r.get(0)?,
            state: TotpState::parse(&r.get::<_, String>(1)?),
            disabled: r.get(2)?,
            secret: r.get(3)?,
            code_salt: r.get(4)?,
            last_step: r.get(5)?,
            failures: r.get(6)?,
            locked_until: r.get(7)?,
            last_success: r.get(8)?,
            backup_codes_left: r.get(9)?,
            email: r.get(10)?,
            phone: r.get(11)?,
        })
    }

    /// One user, if the store knows them.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.conn
            .query_row(
                &format!("SELECT {} FROM users WHERE name = ?1", Self::USER_COLUMNS),
                [name],
                Store::user_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every user the store knows, by name.
    pub fn users(&self) -> Result<Vec<UserRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {} FROM users ORDER BY name",
                Self::USER_COLUMNS
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], Store::user_row)
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>();
        rows.map_err(|e| self.err(e))
    }

    /// Does the user hold an unused, unexpired recovery code?
    pub fn has_valid_recovery(&self, name: &str, now: i64) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT count(*) > 0 FROM recovery_codes
                 WHERE user = ?1 AND used_at IS NULL AND expires_at > ?2",
                params![name, now],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Would this backup (or recovery) code be accepted now? Consumes nothing.
    pub fn code_usable(
        &self,
        name: &str,
        backup: bool,
        hash: &[u8; HASH_LEN],
        now: i64,
    ) -> Result<bool> {
        let kind = if backup {
            HashedCode::Backup
        } else {
            HashedCode::Recovery
        };
        find_hashed(&self.conn, kind, name, hash, now)
            .map(|id| id.is_some())
            .map_err(|e| self.err(e))
    }

    /// Audit rows, oldest first, optionally for one user and from a time on.
    pub fn audit(&self, user: Option<&str>, since: Option<i64>) -> Result<Vec<AuditEntry>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT time, user, service, rhost, event, outcome, detail FROM audit
                 WHERE (?1 IS NULL OR user = ?1) AND (?2 IS NULL OR time >= ?2)
                 ORDER BY time, id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![user, since], |r| {
                Ok(AuditEntry {
                    time: r.get(0)?,
                    user: r.get(1)?,
                    service: r.get(2)?,
                    rhost: r.get(3)?,
                    event: r.get(4)?,
                    outcome: r.get(5)?,
                    detail: r.get(6)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<Vec<_>>>();
        rows.map_err(|e| self.err(e))
    }

    // ---- writing ----------------------------------------------------------

    /// Record an audit row on its own.
    /// It consumes nothing, so it is not worth an fsync: a login that needs
    /// no code (exempt, opt-in) pays no disk flush for its audit row.
    pub fn record(&mut self, entry: &AuditEntry) -> Result<()> {
        self.write_with(Durability::Light, |tx| insert_audit(tx, entry))
    }

    /// Start (or, with `replace`, replace) the user's TOTP enrolment: state pending, the new
    /// sealed secret, and a new set of backup codes (hashes, plus the sealed
    /// plain codes to show once) that stay unusable until activation. Every
    /// older factor and code of the user is void.
    pub fn begin_enrollment(
        &mut self,
        name: &str,
        new: &NewEnrollment<'_>,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let NewEnrollment {
            sealed_secret,
            code_salt,
            backup_hashes,
            sealed_codes,
            replace,
        } = *new;
        self.write(|tx| {
            ensure_user(tx, name, code_salt, now)?;
            let n = tx.execute(
                "UPDATE users SET state = 'pending', disabled = 0, secret = ?2, pending_codes = ?3,
                        code_salt = ?4, last_step = -1, updated_at = ?5
                 WHERE name = ?1 AND (?6 OR state = 'none')",
                params![name, sealed_secret, sealed_codes, code_salt, now, replace],
            )?;
            if n == 0 {
                return Ok(false);
            }
            replace_backup_codes(tx, name, backup_hashes, now)?;
            tx.execute("DELETE FROM recovery_codes WHERE user = ?1", [name])?;
            insert_audit(tx, audit)?;
            Ok(true)
        })
    }

    /// Activate a pending enrolment with a TOTP step the user's app showed
    /// (`confirm`). Returns the sealed backup codes to show, or `None` when
    /// the user is not pending or the step was already used.
    pub fn confirm(
        &mut self,
        name: &str,
        totp: &TotpMatch,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<Option<Vec<u8>>> {
        self.write(|tx| {
            let pending: Option<Option<Vec<u8>>> = tx
                .query_row(
                    "SELECT pending_codes FROM users WHERE name = ?1 AND state = 'pending'",
                    [name],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(codes) = pending else {
                return Ok(None);
            };
            if !consume_step(tx, name, totp, now)? {
                return Ok(None);
            }
            insert_audit(tx, audit)?;
            Ok(Some(codes.unwrap_or_default()))
        })
    }

    /// One login attempt, in one transaction: refuse if locked; count the
    /// attempt as a failure up front (so parallel guesses can never exceed
    /// the limit); then consume the first factor that matches — a TOTP step
    /// newer than the last one used, or an unused backup or recovery code —
    /// and clear the failure count if one did. The audit row goes in with it.
    pub fn redeem(
        &mut self,
        name: &str,
        candidate: &Candidate,
        now: i64,
        lockout: Lockout,
        ctx: &AuditCtx,
    ) -> Result<Verdict> {
        self.write(|tx| {
            let reserved = tx.execute(
                "UPDATE users SET
                    failures = CASE WHEN locked_until IS NOT NULL THEN 1 ELSE failures + 1 END,
                    locked_until = CASE
                        WHEN (CASE WHEN locked_until IS NOT NULL THEN 1 ELSE failures + 1 END) >= ?3
                        THEN ?2 + ?4 ELSE NULL END
                 WHERE name = ?1 AND (locked_until IS NULL OR locked_until <= ?2)",
                params![name, now, lockout.max_failures, lockout.lock_seconds],
            )?;
            let entry = |event: &str, outcome: &str, detail: String| AuditEntry {
                time: now,
                user: name.to_string(),
                service: ctx.service.clone(),
                rhost: ctx.rhost.clone(),
                event: event.into(),
                outcome: outcome.into(),
                detail,
            };
            if reserved == 0 {
                let until: Option<Option<i64>> = tx
                    .query_row("SELECT locked_until FROM users WHERE name = ?1", [name], |r| {
                        r.get(0)
                    })
                    .optional()?;
                return match until {
                    None => Ok(Verdict::UnknownUser),
                    Some(until) => {
                        let until = until.unwrap_or(now);
                        insert_audit(
                            tx,
                            &entry("login", "locked", format!("locked until {}", crate::rfc3339(until))),
                        )?;
                        Ok(Verdict::Locked { until })
                    }
                };
            }
            let mut accepted: Option<(Factor, Option<Vec<u8>>)> = None;
            if let Some(totp) = &candidate.totp {
                let pending: Option<Vec<u8>> = tx.query_row(
                    "SELECT CASE WHEN state = 'pending' THEN pending_codes END FROM users WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )?;
                if consume_step(tx, name, totp, now)? {
                    accepted = Some((Factor::Totp, pending));
                }
            }
            if accepted.is_none() {
                if let Some(hash) = &candidate.backup_hash {
                    if consume_hashed(tx, HashedCode::Backup, name, hash, now)? {
                        accepted = Some((Factor::Backup, None));
                    }
                }
            }
            if accepted.is_none() {
                if let Some(hash) = &candidate.recovery_hash {
                    if consume_hashed(tx, HashedCode::Recovery, name, hash, now)? {
                        accepted = Some((Factor::Recovery, None));
                    }
                }
            }
            match accepted {
                Some((factor, activated_codes)) => {
                    tx.execute(
                        "UPDATE users SET failures = 0, locked_until = NULL, last_success = ?2
                         WHERE name = ?1",
                        params![name, now],
                    )?;
                    let left: u32 = tx.query_row(
                        "SELECT count(*) FROM backup_codes WHERE user = ?1 AND used_at IS NULL",
                        [name],
                        |r| r.get(0),
                    )?;
                    let detail = if activated_codes.is_some() {
                        format!("{} (enrolment activated)", factor.as_str())
                    } else {
                        factor.as_str().to_string()
                    };
                    insert_audit(tx, &entry("login", "success", detail))?;
                    Ok(Verdict::Accepted {
                        factor,
                        activated_codes,
                        backup_codes_left: left,
                    })
                }
                None => {
                    let (failures, locked_until): (u32, Option<i64>) = tx.query_row(
                        "SELECT failures, locked_until FROM users WHERE name = ?1",
                        [name],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    insert_audit(
                        tx,
                        &entry("login", "failure", format!("wrong code ({failures} in a row)")),
                    )?;
                    if let Some(until) = locked_until {
                        insert_audit(
                            tx,
                            &entry(
                                "lock",
                                "locked",
                                format!(
                                    "{failures} wrong codes; locked until {}",
                                    crate::rfc3339(until)
                                ),
                            ),
                        )?;
                    }
                    Ok(Verdict::Rejected {
                        failures,
                        locked_until,
                    })
                }
            }
        })
    }

    /// Replace the user's backup codes with a new set (the old set is void at once).
    /// Returns false if the user has no active enrolment.
    pub fn replace_backup_codes(
        &mut self,
        name: &str,
        hashes: &[[u8; HASH_LEN]],
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool> {
        self.write(|tx| {
            let active: bool = tx
                .query_row(
                    "SELECT state = 'active' FROM users WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(false);
            if !active {
                return Ok(false);
            }
            replace_backup_codes(tx, name, hashes, now)?;
            tx.execute(
                "UPDATE users SET pending_codes = NULL, updated_at = ?2 WHERE name = ?1",
                params![name, now],
            )?;
            insert_audit(tx, audit)?;
            Ok(true)
        })
    }

    /// Add a one-time recovery code (hash) valid until `expires_at`; it
    /// replaces any earlier unused one and clears a lock.
    pub fn add_recovery(
        &mut self,
        name: &str,
        code_salt_if_new: &[u8],
        hash: &[u8; HASH_LEN],
        expires_at: i64,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<()> {
        self.write(|tx| {
            ensure_user(tx, name, code_salt_if_new, now)?;
            tx.execute(
                "DELETE FROM recovery_codes WHERE user = ?1 AND used_at IS NULL",
                [name],
            )?;
            tx.execute(
                "INSERT INTO recovery_codes(user, hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![name, &hash[..], now, expires_at],
            )?;
            tx.execute(
                "UPDATE users SET failures = 0, locked_until = NULL, updated_at = ?2 WHERE name = ?1",
                params![name, now],
            )?;
            insert_audit(tx, audit)
        })
    }

    /// Clear the lockout. Returns false for an unknown user.
    pub fn unlock(&mut self, name: &str, now: i64, audit: &AuditEntry) -> Result<bool> {
        self.update_user(
            name,
            "UPDATE users SET failures = 0, locked_until = NULL, updated_at = ?2 WHERE name = ?1",
            now,
            audit,
        )
    }

    /// Turn the user's 2FA off (`disabled`) or back on, keeping every factor.
    /// Returns false unless the user has a factor to turn off or on.
    pub fn set_disabled(
        &mut self,
        name: &str,
        disabled: bool,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let sql = if disabled {
            "UPDATE users SET disabled = 1, updated_at = ?2 WHERE name = ?1 AND state != 'none'"
        } else {
            "UPDATE users SET disabled = 0, updated_at = ?2 WHERE name = ?1 AND state != 'none'"
        };
        self.update_user(name, sql, now, audit)
    }

    /// Lost device: remove the TOTP secret, every backup and recovery code
    /// and the lock. Contact details stay. Returns false for an unknown user.
    pub fn reset(&mut self, name: &str, now: i64, audit: &AuditEntry) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE users SET state = 'none', disabled = 0, secret = NULL, pending_codes = NULL,
                        last_step = -1, failures = 0, locked_until = NULL, updated_at = ?2
                 WHERE name = ?1",
                params![name, now],
            )?;
            if n == 0 {
                return Ok(false);
            }
            tx.execute("DELETE FROM backup_codes WHERE user = ?1", [name])?;
            tx.execute("DELETE FROM recovery_codes WHERE user = ?1", [name])?;
            insert_audit(tx, audit)?;
            Ok(true)
        })
    }

    fn update_user(&mut self, name: &str, sql: &str, now: i64, audit: &AuditEntry) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(sql, params![name, now])?;
            if n > 0 {
                insert_audit(tx, audit)?;
            }
            Ok(n > 0)
        })
    }
}

/// Create the user's row if missing.
fn ensure_user(
    tx: &Transaction<'_>,
    name: &str,
    code_salt: &[u8],
    now: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO users(name, code_salt, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT(name) DO NOTHING",
        params![name, code_salt, now],
    )?;
    Ok(())
}

fn replace_backup_codes(
    tx: &Transaction<'_>,
    name: &str,
    hashes: &[[u8; HASH_LEN]],
    now: i64,
) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM backup_codes WHERE user = ?1", [name])?;
    let mut ins =
        tx.prepare("INSERT INTO backup_codes(user, hash, created_at) VALUES (?1, ?2, ?3)")?;
    for h in hashes {
        ins.execute(params![name, &h[..], now])?;
    }
    Ok(())
}

/// Accept TOTP step `step` for `name` if it is newer than every step used
/// before; activates a pending enrolment. The affected-row count decides.
fn consume_step(
    tx: &Transaction<'_>,
    name: &str,
    totp: &TotpMatch,
    now: i64,
) -> rusqlite::Result<bool> {
    let n = tx.execute(
        "UPDATE users SET last_step = ?2, state = 'active', pending_codes = NULL, updated_at = ?3
         WHERE name = ?1 AND state IN ('pending', 'active') AND disabled = 0 AND last_step < ?2
           AND secret = ?4",
        params![name, totp.step, now, totp.sealed_secret],
    )?;
    Ok(n == 1)
}

/// The two kinds of single-use code kept as hashes.
#[derive(Clone, Copy)]
enum HashedCode {
    Backup,
    Recovery,
}

impl HashedCode {
    /// Unused codes that may be redeemed now: backup codes only once the
    /// enrolment is active, recovery codes only until they expire.
    fn usable_sql(self) -> &'static str {
        match self {
            HashedCode::Backup => {
                "SELECT b.id, b.hash FROM backup_codes b JOIN users u ON u.name = b.user
                 WHERE b.user = ?1 AND b.used_at IS NULL AND u.state = 'active' AND u.disabled = 0
                   AND ?2 IS NOT NULL"
            }
            HashedCode::Recovery => {
                "SELECT id, hash FROM recovery_codes
                 WHERE user = ?1 AND used_at IS NULL AND expires_at > ?2"
            }
        }
    }
    fn consume_sql(self) -> &'static str {
        match self {
            HashedCode::Backup => {
                "UPDATE backup_codes SET used_at = ?2 WHERE id = ?1 AND used_at IS NULL"
            }
            HashedCode::Recovery => {
                "UPDATE recovery_codes SET used_at = ?2 WHERE id = ?1 AND used_at IS NULL"
            }
        }
    }
}

/// The id of the user's usable code whose hash is `hash`. Every stored hash
/// is compared, in constant time.
fn find_hashed(
    conn: &Connection,
    kind: HashedCode,
    name: &str,
    hash: &[u8; HASH_LEN],
    now: i64,
) -> rusqlite::Result<Option<i64>> {
    let mut stmt = conn.prepare(kind.usable_sql())?;
    let rows = stmt
        .query_map(params![name, now], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut found = None;
    for (id, stored) in rows {
        if bool::from(stored.as_slice().ct_eq(&hash[..])) {
            found = Some(id);
        }
    }
    Ok(found)
}

/// Mark the user's usable code with hash `hash` used; the conditional
/// write's row count decides.
fn consume_hashed(
    tx: &Transaction<'_>,
    kind: HashedCode,
    name: &str,
    hash: &[u8; HASH_LEN],
    now: i64,
) -> rusqlite::Result<bool> {
    match find_hashed(tx, kind, name, hash, now)? {
        Some(id) => Ok(tx.execute(kind.consume_sql(), params![id, now])? == 1),
        None => Ok(false),
    }
}

fn insert_audit(tx: &Transaction<'_>, e: &AuditEntry) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO audit(time, user, service, rhost, event, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![e.time, e.user, e.service, e.rhost, e.event, e.outcome, e.detail],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::{self, Code};

    const NOW: i64 = 1_800_000_000;

    fn audit(event: &str) -> AuditEntry {
        crate::enroll::audit_entry(NOW, "u", "test", "", event, "done", "")
    }

    fn lockout(max: u32) -> Lockout {
        Lockout {
            max_failures: max,
            lock_seconds: 60,
        }
    }

    /// A store with user `u`, enrolled (pending) with `n` backup codes.
    fn pending_user(dir: &Path, n: u32) -> (Store, Vec<u8>, Vec<Code>) {
        let mut s = Store::create(&dir.join("db")).unwrap();
        let salt = codes::new_salt();
        let set = codes::backup_set(n, &salt);
        let hashes: Vec<_> = set.iter().map(|(_, h)| *h).collect();
        let new = NewEnrollment {
            sealed_secret: b"sealed",
            code_salt: &salt,
            backup_hashes: &hashes,
            sealed_codes: b"",
            replace: true,
        };
        s.begin_enrollment("u", &new, NOW, &audit("enroll"))
            .unwrap();
        (s, salt, set.into_iter().map(|(c, _)| c).collect())
    }

    /// The same, activated.
    fn active_user(dir: &Path, n: u32) -> (Store, Vec<u8>, Vec<Code>) {
        let (mut s, salt, set) = pending_user(dir, n);
        assert!(s
            .confirm("u", &at(10), NOW, &audit("confirm"))
            .unwrap()
            .is_some());
        (s, salt, set)
    }

    /// Step `step` of the test user's secret.
    fn at(step: i64) -> TotpMatch {
        TotpMatch {
            step,
            sealed_secret: b"sealed".to_vec(),
        }
    }

    #[test]
    fn enrolment_without_replace_never_overwrites_a_factor() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, salt, _) = active_user(d.path(), 1);
        let new = NewEnrollment {
            sealed_secret: b"other",
            code_salt: &salt,
            backup_hashes: &[],
            sealed_codes: b"",
            replace: false,
        };
        assert!(!s
            .begin_enrollment("u", &new, NOW, &audit("enroll"))
            .unwrap());
        let r = s.user("u").unwrap().unwrap();
        assert_eq!(
            (r.state, r.secret.as_deref()),
            (TotpState::Active, Some(&b"sealed"[..]))
        );
        assert!(
            s.begin_enrollment("v", &new, NOW, &audit("enroll"))
                .unwrap(),
            "a new user is enrolled"
        );
    }

    #[test]
    fn code_of_a_replaced_secret_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, salt, _) = active_user(d.path(), 1);
        // Re-enrolment while a login holds a code of the old secret.
        let new = NewEnrollment {
            sealed_secret: b"new sealed",
            code_salt: &salt,
            backup_hashes: &[],
            sealed_codes: b"new codes",
            replace: true,
        };
        s.begin_enrollment("u", &new, NOW, &audit("enroll"))
            .unwrap();
        let old = Candidate {
            totp: Some(at(20)),
            ..Candidate::default()
        };
        let v = s
            .redeem("u", &old, NOW, lockout(9), &AuditCtx::default())
            .unwrap();
        assert!(matches!(v, Verdict::Rejected { .. }), "{v:?}");
        assert!(s
            .confirm("u", &at(21), NOW, &audit("confirm"))
            .unwrap()
            .is_none());
        let fresh = TotpMatch {
            step: 20,
            sealed_secret: b"new sealed".to_vec(),
        };
        assert_eq!(
            s.confirm("u", &fresh, NOW, &audit("confirm")).unwrap(),
            Some(b"new codes".to_vec())
        );
    }

    fn backup(code: &Code, salt: &[u8]) -> Candidate {
        Candidate {
            backup_hash: Some(code.hash(salt)),
            ..Candidate::default()
        }
    }

    #[test]
    fn backup_code_is_accepted_once_and_regeneration_voids_the_old_set() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, salt, set) = active_user(d.path(), 3);
        let ctx = AuditCtx::default();
        let v = s
            .redeem("u", &backup(&set[0], &salt), NOW, lockout(9), &ctx)
            .unwrap();
        assert_eq!(
            v,
            Verdict::Accepted {
                factor: Factor::Backup,
                activated_codes: None,
                backup_codes_left: 2
            }
        );
        let v = s
            .redeem("u", &backup(&set[0], &salt), NOW, lockout(9), &ctx)
            .unwrap();
        assert!(matches!(v, Verdict::Rejected { failures: 1, .. }), "{v:?}");
        let new = codes::backup_set(2, &salt);
        let hashes: Vec<_> = new.iter().map(|(_, h)| *h).collect();
        assert!(s
            .replace_backup_codes("u", &hashes, NOW, &audit("regen"))
            .unwrap());
        let v = s
            .redeem("u", &backup(&set[1], &salt), NOW, lockout(9), &ctx)
            .unwrap();
        assert!(
            matches!(v, Verdict::Rejected { .. }),
            "old set is void: {v:?}"
        );
        let v = s
            .redeem("u", &backup(&new[1].0, &salt), NOW, lockout(9), &ctx)
            .unwrap();
        assert!(matches!(v, Verdict::Accepted { .. }), "{v:?}");
    }

    #[test]
    fn pending_enrolment_backup_codes_are_unusable() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, salt, set) = pending_user(d.path(), 1);
        let v = s
            .redeem(
                "u",
                &backup(&set[0], &salt),
                NOW,
                lockout(9),
                &AuditCtx::default(),
            )
            .unwrap();
        assert!(matches!(v, Verdict::Rejected { .. }), "{v:?}");
    }

    #[test]
    fn recovery_code_works_once_and_not_after_expiry() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::create(&d.path().join("db")).unwrap();
        let salt = codes::new_salt();
        let c = Code::generate(codes::RECOVERY_LEN);
        s.add_recovery(
            "u",
            &salt,
            &c.hash(&salt),
            NOW + 60,
            NOW,
            &audit("recovery"),
        )
        .unwrap();
        let cand = Candidate {
            recovery_hash: Some(c.hash(&salt)),
            ..Candidate::default()
        };
        let ctx = AuditCtx::default();
        assert!(s.has_valid_recovery("u", NOW).unwrap());
        assert!(!s.has_valid_recovery("u", NOW + 60).unwrap());
        let v = s.redeem("u", &cand, NOW + 60, lockout(9), &ctx).unwrap();
        assert!(matches!(v, Verdict::Rejected { .. }), "expired: {v:?}");
        let v = s.redeem("u", &cand, NOW + 59, lockout(9), &ctx).unwrap();
        assert!(
            matches!(
                v,
                Verdict::Accepted {
                    factor: Factor::Recovery,
                    ..
                }
            ),
            "{v:?}"
        );
        let v = s.redeem("u", &cand, NOW + 59, lockout(9), &ctx).unwrap();
        assert!(matches!(v, Verdict::Rejected { .. }), "used: {v:?}");
    }

    #[test]
    fn lock_refuses_without_checking_and_unlock_clears_it() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, salt, set) = active_user(d.path(), 1);
        let ctx = AuditCtx::default();
        let wrong = Candidate::default();
        for i in 1..=2 {
            let v = s.redeem("u", &wrong, NOW, lockout(3), &ctx).unwrap();
            assert_eq!(
                v,
                Verdict::Rejected {
                    failures: i,
                    locked_until: None
                }
            );
        }
        let v = s.redeem("u", &wrong, NOW, lockout(3), &ctx).unwrap();
        assert_eq!(
            v,
            Verdict::Rejected {
                failures: 3,
                locked_until: Some(NOW + 60)
            }
        );
        let v = s
            .redeem("u", &backup(&set[0], &salt), NOW + 1, lockout(3), &ctx)
            .unwrap();
        assert_eq!(
            v,
            Verdict::Locked { until: NOW + 60 },
            "a right code is refused while locked"
        );
        assert!(s.unlock("u", NOW + 2, &audit("unlock")).unwrap());
        let v = s
            .redeem("u", &backup(&set[0], &salt), NOW + 2, lockout(3), &ctx)
            .unwrap();
        assert!(matches!(v, Verdict::Accepted { .. }), "{v:?}");
        assert_eq!(s.user("u").unwrap().unwrap().failures, 0);
    }

    #[test]
    fn parallel_wrong_guesses_never_exceed_max_failures() {
        let d = tempfile::tempdir().unwrap();
        let (s, _, _) = active_user(d.path(), 1);
        let path = s.path().to_path_buf();
        drop(s);
        let rejected: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let path = path.clone();
                    scope.spawn(move || {
                        let mut s = Store::open(&path).unwrap();
                        (0..3)
                            .filter(|_| {
                                matches!(
                                    s.redeem(
                                        "u",
                                        &Candidate::default(),
                                        NOW,
                                        lockout(5),
                                        &AuditCtx::default()
                                    )
                                    .unwrap(),
                                    Verdict::Rejected { .. }
                                )
                            })
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(rejected, 5, "exactly max_failures attempts were checked");
    }

    #[test]
    fn totp_step_is_consumed_once_and_older_steps_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _, _) = active_user(d.path(), 0);
        let ctx = AuditCtx::default();
        let at = |step| Candidate {
            totp: Some(at(step)),
            ..Candidate::default()
        };
        assert!(matches!(
            s.redeem("u", &at(12), NOW, lockout(9), &ctx).unwrap(),
            Verdict::Accepted { .. }
        ));
        assert!(matches!(
            s.redeem("u", &at(12), NOW, lockout(9), &ctx).unwrap(),
            Verdict::Rejected { .. }
        ));
        assert!(matches!(
            s.redeem("u", &at(11), NOW, lockout(9), &ctx).unwrap(),
            Verdict::Rejected { .. }
        ));
        assert!(matches!(
            s.redeem("u", &at(13), NOW, lockout(9), &ctx).unwrap(),
            Verdict::Accepted { .. }
        ));
    }

    #[test]
    fn corrupt_store_is_an_error_naming_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        std::fs::write(&p, vec![0x5a; 8192]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = Store::open(&p).unwrap_err().to_string();
        assert!(err.contains(&p.display().to_string()), "{err}");
        let missing = Store::open(&d.path().join("nope")).unwrap_err().to_string();
        assert!(missing.contains("crm2fa-admin init"), "{missing}");
    }
}

#[cfg(test)]
mod durability_tests {
    use super::*;

    fn synchronous(s: &Store) -> i64 {
        s.conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn consuming_writes_are_full_and_audit_rows_light() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::create(&d.path().join("db")).unwrap();
        let e = crate::enroll::audit_entry(1, "u", "t", "", "login", "skipped", "");
        s.record(&e).unwrap();
        assert_eq!(synchronous(&s), 1, "audit-only row: NORMAL");
        s.unlock("u", 1, &e).unwrap();
        assert_eq!(synchronous(&s), 2, "any other write: FULL");
    }
}
