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

/// One statement of a [`PgClient::pipeline`].
#[derive(Debug, Clone, Copy)]
pub enum Stmt<'a> {
    /// As [`PgClient::batch`] runs it.
    Batch(&'a str),
    /// As [`PgClient::execute`] runs it.
    Execute(&'a str, &'a [Param<'a>]),
    /// As [`PgClient::query`] runs it.
    Query(&'a str, &'a [Param<'a>]),
}

/// What one statement of a [`PgClient::pipeline`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// A [`Stmt::Batch`] ran.
    Batch,
    /// A [`Stmt::Execute`] changed this many rows.
    Changed(u64),
    /// A [`Stmt::Query`]'s rows.
    Rows(Vec<Vec<Value>>),
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

/// The SQLSTATE a client gives a failure of its own for want of file
/// descriptors or memory (see [`out_of_resources`]): the server's
/// `insufficient_resources`, of the class (53) the server uses when it
/// runs out itself (memory, connections, disk).
pub const CLIENT_OUT_OF_RESOURCES: &str = "53000";

impl PgError {
    /// The server or this client ran out of memory, descriptors,
    /// connections or disk (SQLSTATE class 53).
    pub fn out_of_resources(&self) -> bool {
        self.sqlstate
            .as_deref()
            .is_some_and(|s| s.starts_with("53"))
    }
}

/// Whether the system refused this process a file descriptor or memory
/// (`EMFILE`, `ENFILE`, `ENOMEM`) anywhere in `e`'s chain of causes.
pub fn out_of_resources(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |c| c.source()).any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
            )
        })
    })
}

/// One open session with the server. `Send`: crm2fad keeps sessions open
/// between logins, served by different threads (one at a time).
pub trait PgClient: Send {
    /// Run `statements` in order, each as if on its own, and give each
    /// one's outcome. Each runs whatever became of those before it (in a
    /// transaction, the server refuses every statement after one that
    /// failed). They are all sent before the first answer is read: one
    /// round trip for them all. Every answer must come within `limit`, if
    /// given, as well as within the session's own bound; past it the
    /// session is closed and every statement fails.
    fn pipeline_within(
        &mut self,
        statements: &[Stmt<'_>],
        limit: Option<Duration>,
    ) -> Vec<Result<Done, PgError>>;

    /// Send `statement` (a [`Stmt::Query`]) now, without waiting for its
    /// answer, so that the caller can do other work while the server runs
    /// it: the next call, if it is [`pipeline_within`](Self::pipeline_within)
    /// of that statement alone (the same text and parameters), is answered
    /// by it without sending it again; any other call first waits for its
    /// answer (within that call's bound) and drops it. A client that
    /// cannot send ahead does nothing: the statement then goes when it is
    /// run.
    fn send_ahead(&mut self, statement: Stmt<'_>) {
        let _ = statement;
    }

    /// [`pipeline_within`](Self::pipeline_within) the session's own bound.
    fn pipeline(&mut self, statements: &[Stmt<'_>]) -> Vec<Result<Done, PgError>> {
        self.pipeline_within(statements, None)
    }

    /// Run `sql`, one or more statements without parameters (the simple
    /// query protocol): `BEGIN …`, `COMMIT`, `ROLLBACK`, DDL.
    fn batch(&mut self, sql: &str) -> Result<(), PgError> {
        match one(self.pipeline(&[Stmt::Batch(sql)]))? {
            Done::Batch => Ok(()),
            _ => Err(mismatched()),
        }
    }

    /// Run one statement with `params`; the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, PgError> {
        match one(self.pipeline(&[Stmt::Execute(sql, params)]))? {
            Done::Changed(n) => Ok(n),
            _ => Err(mismatched()),
        }
    }

    /// Run one query with `params`; its rows, each a value per column in
    /// the order of the select list.
    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Value>>, PgError> {
        self.query_within(sql, params, None)
    }

    /// [`query`](Self::query), answered within `limit` as
    /// [`pipeline_within`](Self::pipeline_within) says.
    fn query_within(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        limit: Option<Duration>,
    ) -> Result<Vec<Vec<Value>>, PgError> {
        match one(self.pipeline_within(&[Stmt::Query(sql, params)], limit))? {
            Done::Rows(rows) => Ok(rows),
            _ => Err(mismatched()),
        }
    }

    /// Whether the session is still open, for a session kept between
    /// logins: the server may have ended it since (a restart, an idle
    /// timeout). An error when the server left a call unanswered past its
    /// bound: it is not answering, and a new session would wait on it
    /// again. By default a round trip; a client that can tell without one
    /// says so.
    fn still_open(&mut self) -> Result<bool, PgError> {
        Ok(self.batch("SELECT 1").is_ok())
    }
}

/// The outcome of a pipeline of one statement.
fn one(outcomes: Vec<Result<Done, PgError>>) -> Result<Done, PgError> {
    let mut outcomes = outcomes.into_iter();
    match (outcomes.next(), outcomes.next()) {
        (Some(outcome), None) => outcome,
        _ => Err(mismatched()),
    }
}

/// A client's answer that does not fit the statements it was given.
pub fn mismatched() -> PgError {
    PgError {
        sqlstate: None,
        message: "the PostgreSQL client gave an answer that does not fit the statements".into(),
    }
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
    /// The client library a loader loads to connect (`[store]
    /// client_library`); not sent to the library itself.
    pub client_library: PathBuf,
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
        location(&self.user, &self.host, self.port, &self.dbname)
    }

    /// Whether `host` is the directory of the server's Unix-domain socket
    /// on this host rather than a name or address to reach over TCP.
    pub fn on_socket(&self) -> bool {
        on_socket(&self.host)
    }
}

/// Whether `host` (of `[store] url`) is the directory of a server's
/// Unix-domain socket.
pub fn on_socket(host: &str) -> bool {
    host.starts_with('/')
}

/// `postgres://USER@HOST:PORT/DB`, as `[store] url` is written (an IPv6
/// address in brackets, a socket directory percent-encoded): never a
/// password.
pub fn location(user: &str, host: &str, port: u16, dbname: &str) -> String {
    let host = if on_socket(host) {
        // So that the url reads back as the same directory.
        percent_encoding::utf8_percent_encode(host, crate::URL_UNRESERVED).to_string()
    } else if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("postgres://{user}@{host}:{port}/{dbname}")
}

/// Opens sessions: what a PostgreSQL client library provides.
pub trait PgConnect {
    /// Connect to `target` within its `connect_timeout`.
    fn connect(&self, target: &PgTarget) -> Result<Box<dyn PgClient>, PgError>;

    /// Get ready to connect without connecting: a connector that loads
    /// `client_library` (as the PAM module's does) loads and checks it and
    /// says what it found; one built in has nothing to do (None).
    fn prepare(&self, client_library: &std::path::Path) -> Result<Option<String>, PgError> {
        let _ = client_library;
        Ok(None)
    }
}

impl From<Param<'_>> for Value {
    fn from(p: Param<'_>) -> Value {
        match p {
            Param::Null => Value::Null,
            Param::Int(v) => Value::Int(v),
            Param::Text(v) => Value::Text(v.to_owned()),
            Param::Bytes(v) => Value::Bytes(v.to_vec()),
            Param::Bool(v) => Value::Bool(v),
        }
    }
}

impl Value {
    /// The value as a parameter of another statement.
    pub fn as_param(&self) -> Param<'_> {
        match self {
            Value::Null => Param::Null,
            Value::Int(v) => Param::Int(*v),
            Value::Text(v) => Param::Text(v),
            Value::Bytes(v) => Param::Bytes(v),
            Value::Bool(v) => Param::Bool(*v),
        }
    }
}

/// The byte encoding of parameters, rows, errors and connection targets
/// between the PAM module and a client library it loads at run time (a C
/// interface carries bytes, not Rust types). Every decoder refuses, rather
/// than panics on, input it did not make.
pub mod wire {
    use super::{Done, Param, PgError, PgTarget, SslMode, Stmt, Value};
    use std::path::PathBuf;
    use std::time::Duration;
    use zeroize::Zeroizing;

    /// The version of this encoding and of the C functions that carry it;
    /// a library built for another is refused.
    pub const ABI_VERSION: u32 = 3;

    const NULL: u8 = 0;
    const INT: u8 = 1;
    const TEXT: u8 = 2;
    const BYTES: u8 = 3;
    const BOOL: u8 = 4;

    fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
        // A length that does not fit is cut to what does: the decoder then
        // finds the rest missing and refuses it.
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&b[..len as usize]);
    }

    fn put_param(out: &mut Vec<u8>, p: &Param<'_>) {
        match p {
            Param::Null => out.push(NULL),
            Param::Int(v) => {
                out.push(INT);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Param::Text(v) => {
                out.push(TEXT);
                put_bytes(out, v.as_bytes());
            }
            Param::Bytes(v) => {
                out.push(BYTES);
                put_bytes(out, v);
            }
            Param::Bool(v) => {
                out.push(BOOL);
                out.push(u8::from(*v));
            }
        }
    }

    /// Reads what the `put_` functions wrote.
    struct Reader<'a> {
        rest: &'a [u8],
    }

    type Decoded<T> = Result<T, String>;

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Decoded<&'a [u8]> {
            if self.rest.len() < n {
                return Err("the encoded data ends too soon".into());
            }
            let (head, tail) = self.rest.split_at(n);
            self.rest = tail;
            Ok(head)
        }

        fn u8(&mut self) -> Decoded<u8> {
            Ok(self.take(1)?[0])
        }

        fn u32(&mut self) -> Decoded<u32> {
            let b = self.take(4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }

        fn eight(&mut self) -> Decoded<[u8; 8]> {
            let mut a = [0u8; 8];
            a.copy_from_slice(self.take(8)?);
            Ok(a)
        }

        fn i64(&mut self) -> Decoded<i64> {
            Ok(i64::from_le_bytes(self.eight()?))
        }

        fn u64(&mut self) -> Decoded<u64> {
            Ok(u64::from_le_bytes(self.eight()?))
        }

        fn bytes(&mut self) -> Decoded<&'a [u8]> {
            let n = self.u32()? as usize;
            self.take(n)
        }

        fn text(&mut self) -> Decoded<String> {
            String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "text is not UTF-8".into())
        }

        fn value(&mut self) -> Decoded<Value> {
            Ok(match self.u8()? {
                NULL => Value::Null,
                INT => Value::Int(self.i64()?),
                TEXT => Value::Text(self.text()?),
                BYTES => Value::Bytes(self.bytes()?.to_vec()),
                BOOL => Value::Bool(self.u8()? != 0),
                t => return Err(format!("unknown value tag {t}")),
            })
        }

        fn count(&mut self) -> Decoded<usize> {
            let n = self.u32()? as usize;
            // Every item takes at least one byte: a count beyond what is
            // left is a lie, refused before anything is allocated for it.
            if n > self.rest.len() {
                return Err("a count larger than the data".into());
            }
            Ok(n)
        }

        fn end(&self) -> Decoded<()> {
            match self.rest.is_empty() {
                true => Ok(()),
                false => Err("bytes left over after the encoded data".into()),
            }
        }
    }

    fn put_count(out: &mut Vec<u8>, n: usize) {
        out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
    }

    fn put_values(out: &mut Vec<u8>, params: &[Param<'_>]) {
        put_count(out, params.len());
        for p in params {
            put_param(out, p);
        }
    }

    fn put_error(out: &mut Vec<u8>, e: &PgError) {
        match &e.sqlstate {
            Some(s) => {
                out.push(1);
                put_bytes(out, s.as_bytes());
            }
            None => out.push(0),
        }
        put_bytes(out, e.message.as_bytes());
    }

    impl Reader<'_> {
        fn values(&mut self) -> Decoded<Vec<Value>> {
            let n = self.count()?;
            (0..n).map(|_| self.value()).collect()
        }

        fn error(&mut self) -> Decoded<PgError> {
            let sqlstate = match self.u8()? {
                0 => None,
                _ => Some(self.text()?),
            };
            let message = self.text()?;
            Ok(PgError { sqlstate, message })
        }
    }

    const BATCH: u8 = 0;
    const EXECUTE: u8 = 1;
    const QUERY: u8 = 2;
    const FAILED: u8 = 3;

    /// A [`Stmt`] as decoded, owning what it borrowed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Statement {
        /// [`Stmt::Batch`].
        Batch(String),
        /// [`Stmt::Execute`], with its parameters as values.
        Execute(String, Vec<Value>),
        /// [`Stmt::Query`], with its parameters as values.
        Query(String, Vec<Value>),
    }

    /// Encode the statements of a pipeline.
    pub fn encode_statements(statements: &[Stmt<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        put_count(&mut out, statements.len());
        for s in statements {
            match *s {
                Stmt::Batch(sql) => {
                    out.push(BATCH);
                    put_bytes(&mut out, sql.as_bytes());
                }
                Stmt::Execute(sql, params) | Stmt::Query(sql, params) => {
                    out.push(match s {
                        Stmt::Execute(..) => EXECUTE,
                        _ => QUERY,
                    });
                    put_bytes(&mut out, sql.as_bytes());
                    put_values(&mut out, params);
                }
            }
        }
        out
    }

    /// Decode the statements of a pipeline.
    pub fn decode_statements(bytes: &[u8]) -> Decoded<Vec<Statement>> {
        let mut r = Reader { rest: bytes };
        let n = r.count()?;
        let mut statements = Vec::with_capacity(n);
        for _ in 0..n {
            statements.push(match r.u8()? {
                BATCH => Statement::Batch(r.text()?),
                EXECUTE => Statement::Execute(r.text()?, r.values()?),
                QUERY => Statement::Query(r.text()?, r.values()?),
                t => return Err(format!("unknown statement tag {t}")),
            });
        }
        r.end()?;
        Ok(statements)
    }

    /// Encode the outcome of each statement of a pipeline.
    pub fn encode_outcomes(outcomes: &[Result<Done, PgError>]) -> Vec<u8> {
        let mut out = Vec::new();
        put_count(&mut out, outcomes.len());
        for o in outcomes {
            match o {
                Ok(Done::Batch) => out.push(BATCH),
                Ok(Done::Changed(n)) => {
                    out.push(EXECUTE);
                    out.extend_from_slice(&n.to_le_bytes());
                }
                Ok(Done::Rows(rows)) => {
                    out.push(QUERY);
                    put_count(&mut out, rows.len());
                    for row in rows {
                        let values: Vec<Param<'_>> = row.iter().map(Value::as_param).collect();
                        put_values(&mut out, &values);
                    }
                }
                Err(e) => {
                    out.push(FAILED);
                    put_error(&mut out, e);
                }
            }
        }
        out
    }

    /// Decode the outcome of each statement of a pipeline.
    pub fn decode_outcomes(bytes: &[u8]) -> Decoded<Vec<Result<Done, PgError>>> {
        let mut r = Reader { rest: bytes };
        let n = r.count()?;
        let mut outcomes = Vec::with_capacity(n);
        for _ in 0..n {
            outcomes.push(match r.u8()? {
                BATCH => Ok(Done::Batch),
                EXECUTE => Ok(Done::Changed(r.u64()?)),
                QUERY => {
                    let rows = r.count()?;
                    Ok(Done::Rows(
                        (0..rows).map(|_| r.values()).collect::<Decoded<_>>()?,
                    ))
                }
                FAILED => Err(r.error()?),
                t => return Err(format!("unknown outcome tag {t}")),
            });
        }
        r.end()?;
        Ok(outcomes)
    }

    /// Encode an error.
    pub fn encode_error(e: &PgError) -> Vec<u8> {
        let mut out = Vec::new();
        put_error(&mut out, e);
        out
    }

    /// Decode an error.
    pub fn decode_error(bytes: &[u8]) -> Decoded<PgError> {
        let mut r = Reader { rest: bytes };
        let e = r.error()?;
        r.end()?;
        Ok(e)
    }

    /// Encode a connection target (the password too: zeroized on drop).
    pub fn encode_target(t: &PgTarget) -> Zeroizing<Vec<u8>> {
        // Room for everything up front: a buffer that grew would leave a
        // copy of the password behind in the memory it gave back.
        let ca = t.ca_file.as_ref().map(|p| p.to_string_lossy());
        let ca_len = ca.as_ref().map_or(0, |p| p.len());
        let password_len = t.password.as_ref().map_or(0, |p| p.len());
        let size = 4 * 5
            + 2
            + 3
            + 8
            + t.host.len()
            + t.user.len()
            + t.dbname.len()
            + password_len
            + ca_len;
        let mut out = Zeroizing::new(Vec::with_capacity(size));
        put_bytes(&mut out, t.host.as_bytes());
        out.extend_from_slice(&t.port.to_le_bytes());
        put_bytes(&mut out, t.user.as_bytes());
        put_bytes(&mut out, t.dbname.as_bytes());
        match &t.password {
            Some(p) => {
                out.push(1);
                put_bytes(&mut out, p.as_bytes());
            }
            None => out.push(0),
        }
        out.push(match t.sslmode {
            SslMode::Disable => 0,
            SslMode::Require => 1,
            SslMode::VerifyFull => 2,
        });
        match &ca {
            Some(p) => {
                out.push(1);
                put_bytes(&mut out, p.as_bytes());
            }
            None => out.push(0),
        }
        let ms = u64::try_from(t.connect_timeout.as_millis()).unwrap_or(u64::MAX);
        out.extend_from_slice(&ms.to_le_bytes());
        debug_assert!(out.len() <= size, "{} > {size}", out.len());
        out
    }

    /// Decode a connection target.
    pub fn decode_target(bytes: &[u8]) -> Decoded<PgTarget> {
        let mut r = Reader { rest: bytes };
        let host = r.text()?;
        let p = r.take(2)?;
        let port = u16::from_le_bytes([p[0], p[1]]);
        let user = r.text()?;
        let dbname = r.text()?;
        let password = match r.u8()? {
            0 => None,
            _ => Some(Zeroizing::new(r.text()?)),
        };
        let sslmode = match r.u8()? {
            0 => SslMode::Disable,
            1 => SslMode::Require,
            2 => SslMode::VerifyFull,
            m => return Err(format!("unknown sslmode {m}")),
        };
        let ca_file = match r.u8()? {
            0 => None,
            _ => Some(PathBuf::from(r.text()?)),
        };
        let ms = r.i64()?;
        r.end()?;
        Ok(PgTarget {
            host,
            port,
            user,
            dbname,
            password,
            sslmode,
            ca_file,
            connect_timeout: Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
            client_library: PathBuf::new(),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn values() -> Vec<Value> {
            vec![
                Value::Null,
                Value::Int(i64::MIN),
                Value::Text("héllo".into()),
                Value::Bytes(vec![0, 255, 7]),
                Value::Bool(true),
            ]
        }

        fn outcomes() -> Vec<Result<Done, PgError>> {
            let v = values();
            vec![
                Ok(Done::Batch),
                Ok(Done::Changed(u64::MAX)),
                Ok(Done::Rows(vec![v.clone(), vec![], v])),
                Ok(Done::Rows(vec![])),
                Err(PgError {
                    sqlstate: Some("40001".into()),
                    message: "could not serialize".into(),
                }),
                Err(PgError {
                    sqlstate: None,
                    message: "closed".into(),
                }),
            ]
        }

        #[test]
        fn everything_reads_back_as_written() {
            let v = values();
            let params: Vec<Param<'_>> = v.iter().map(Value::as_param).collect();
            let statements = [
                Stmt::Batch("BEGIN"),
                Stmt::Execute("UPDATE t SET a = $1", &params),
                Stmt::Query("SELECT 1", &[]),
            ];
            assert_eq!(
                decode_statements(&encode_statements(&statements)).unwrap(),
                [
                    Statement::Batch("BEGIN".into()),
                    Statement::Execute("UPDATE t SET a = $1".into(), v.clone()),
                    Statement::Query("SELECT 1".into(), vec![]),
                ]
            );
            let o = outcomes();
            assert_eq!(decode_outcomes(&encode_outcomes(&o)).unwrap(), o);
            let e = PgError {
                sqlstate: Some("40001".into()),
                message: "could not serialize".into(),
            };
            assert_eq!(decode_error(&encode_error(&e)).unwrap(), e);
            let t = PgTarget {
                host: "db".into(),
                port: 5433,
                user: "crm2fa".into(),
                dbname: "fleet".into(),
                password: Some(Zeroizing::new("pw".into())),
                sslmode: SslMode::VerifyFull,
                ca_file: Some("/etc/ca.pem".into()),
                connect_timeout: Duration::from_millis(2500),
                client_library: PathBuf::new(),
            };
            let encoded = encode_target(&t);
            // Written without growing (no stray copy of the password).
            assert_eq!(encoded.len(), encoded.capacity());
            let back = decode_target(&encoded).unwrap();
            assert_eq!(back.location(), t.location());
            assert_eq!(back.password.as_deref().map(String::as_str), Some("pw"));
            assert_eq!(
                (back.sslmode, back.connect_timeout),
                (t.sslmode, t.connect_timeout)
            );
            assert_eq!(back.ca_file, t.ca_file);
        }

        #[test]
        fn damaged_input_is_refused_not_a_panic() {
            let good = encode_outcomes(&outcomes());
            for cut in 0..good.len() {
                assert!(decode_outcomes(&good[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = good.clone();
            longer.push(0);
            assert!(decode_outcomes(&longer).is_err());
            let params = [Param::Int(1), Param::Text("a")];
            let good = encode_statements(&[Stmt::Query("SELECT $1, $2", &params)]);
            for cut in 0..good.len() {
                assert!(decode_statements(&good[..cut]).is_err(), "cut at {cut}");
            }
            assert!(decode_statements(&[255, 255, 255, 255]).is_err());
            assert!(decode_statements(&[1, 0, 0, 0, 9]).is_err());
            assert!(decode_outcomes(&[1, 0, 0, 0, 9]).is_err());
            assert!(decode_error(&[]).is_err());
            assert!(decode_target(&[0, 0, 0]).is_err());
        }
    }
}

/// The C interface of a client library loaded at run time by the PAM
/// module: the symbol names and their signatures, for both sides. All data
/// crosses as bytes in the [`wire`] encoding; a function returns 0 on
/// success, otherwise 1 with an encoded [`PgError`] in `err`. Buffers the
/// library hands out are given back to it with [`abi::FREE`].
pub mod abi {
    use std::ffi::c_void;

    /// Bytes handed out by the library.
    #[repr(C)]
    #[derive(Debug)]
    pub struct Buf {
        /// Start of the bytes (null when empty).
        pub ptr: *mut u8,
        /// How many.
        pub len: usize,
    }

    impl Buf {
        /// No bytes.
        pub const EMPTY: Buf = Buf {
            ptr: std::ptr::null_mut(),
            len: 0,
        };
    }

    /// `u32 crm2fa_pg_abi_version(void)`: must return [`super::wire::ABI_VERSION`].
    pub const ABI_VERSION: &[u8] = b"crm2fa_pg_abi_version\0";
    /// Signature of [`ABI_VERSION`].
    pub type AbiVersionFn = unsafe extern "C" fn() -> u32;

    /// `connect(target, target_len, &handle, &err)`.
    pub const CONNECT: &[u8] = b"crm2fa_pg_connect\0";
    /// Signature of [`CONNECT`].
    pub type ConnectFn = unsafe extern "C" fn(*const u8, usize, *mut *mut c_void, *mut Buf) -> i32;

    /// `pipeline(handle, statements, statements_len, limit_ms, &outcomes,
    /// &err)`: the statements encoded by
    /// [`super::wire::encode_statements`], the outcomes by
    /// [`super::wire::encode_outcomes`]; `limit_ms` as
    /// [`PgClient::pipeline_within`](super::PgClient::pipeline_within)'s
    /// `limit` in milliseconds, 0 for none; nonzero (and `err`) only when
    /// the call itself failed.
    pub const PIPELINE: &[u8] = b"crm2fa_pg_pipeline\0";
    /// Signature of [`PIPELINE`].
    pub type PipelineFn =
        unsafe extern "C" fn(*mut c_void, *const u8, usize, u64, *mut Buf, *mut Buf) -> i32;

    /// `close(handle)`: ends the session.
    pub const CLOSE: &[u8] = b"crm2fa_pg_close\0";
    /// Signature of [`CLOSE`].
    pub type CloseFn = unsafe extern "C" fn(*mut c_void);

    /// `free(buf)`: gives back bytes the library handed out.
    pub const FREE: &[u8] = b"crm2fa_pg_free\0";
    /// Signature of [`FREE`].
    pub type FreeFn = unsafe extern "C" fn(Buf);
}
