//! The narrow interface between the PostgreSQL backend ([`super::postgres`])
//! and a PostgreSQL client library.
//!
//! The backend (its SQL, its transactions, the store contract) is plain Rust
//! in this crate; it talks to the server only through [`PgClient`]: run a
//! statement with parameters, read rows back. The client library that
//! implements it (crate `crm2fa-pg`, over the `postgres` crate) is linked
//! into the CLI, and loaded by the PAM module only when `[store] url` is
//! set, so a host on SQLite never loads a PostgreSQL client.
use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

/// A statement parameter (`$1`, `$2` …). Its PostgreSQL type is the one the
/// server infers for the parameter; `Null` fits any type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param<'a> {
    /// SQL NULL.
    Null,
    /// `BIGINT` (also fits `INTEGER` columns the value fits in).
    Int(i64),
    /// `TEXT`.
    Text(&'a str),
    /// `BYTEA`.
    Bytes(&'a [u8]),
    /// `BOOLEAN`.
    Bool(bool),
}

/// A column value read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Any integer column (`SMALLINT`, `INTEGER`, `BIGINT`).
    Int(i64),
    /// `TEXT` or `VARCHAR`.
    Text(String),
    /// `BYTEA`.
    Bytes(Vec<u8>),
    /// `BOOLEAN`.
    Bool(bool),
}

/// What went wrong talking to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    /// The SQLSTATE the server sent (`40001` serialization failure, `40P01`
    /// deadlock, `42501` insufficient privilege …); `None` for a failure of
    /// the connection itself (refused, timed out, TLS, authentication
    /// before a session exists).
    pub sqlstate: Option<String>,
    /// What happened, for a log line: never a password.
    pub message: String,
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sqlstate {
            Some(code) => write!(f, "{} (SQLSTATE {code})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for PgError {}

/// One open session with the server.
pub trait PgClient {
    /// Run `sql`, one or more statements without parameters (the simple
    /// query protocol): `BEGIN …`, `COMMIT`, `ROLLBACK`, DDL.
    fn batch(&mut self, sql: &str) -> Result<(), PgError>;

    /// Run one statement with `params`; the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, PgError>;

    /// Run one query with `params`; its rows, each a value per column in
    /// the order of the select list.
    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Value>>, PgError>;
}

/// `sslmode` of `[store] url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS required, the server's certificate not checked.
    Require,
    /// TLS required, the certificate checked against `ca_file` and the host
    /// name.
    VerifyFull,
}

/// Where and how to connect, as `[store]` says.
#[derive(Clone)]
pub struct PgTarget {
    /// The server's host name or address.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The role to log in as.
    pub user: String,
    /// The database.
    pub dbname: String,
    /// The role's password (read from `password_file`), if any.
    pub password: Option<Zeroizing<String>>,
    /// TLS.
    pub sslmode: SslMode,
    /// CA certificates (PEM) for `verify-full`.
    pub ca_file: Option<PathBuf>,
    /// How long connecting may take, TLS and authentication included.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .finish_non_exhaustive()
    }
}

impl PgTarget {
    /// The address for messages: `postgres://USER@HOST:PORT/DB`, never a
    /// password.
    pub fn location(&self) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

/// Opens sessions: what a PostgreSQL client library provides.
pub trait PgConnect {
    /// Connect to `target` within its `connect_timeout`.
    fn connect(&self, target: &PgTarget) -> Result<Box<dyn PgClient>, PgError>;
}
