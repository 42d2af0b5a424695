//! The PostgreSQL client behind `[store] url`: [`Connector`] implements
//! [`PgConnect`] and the sessions it opens implement [`PgClient`], over
//! rust-postgres (`tokio-postgres`) with TLS by rustls and ring (no OpenSSL).
//!
//! # Deadlines
//!
//! Each session drives `tokio-postgres` on its own single-threaded runtime,
//! the way the blocking `postgres` crate does, but with a deadline around
//! every wait, so that no server, network or firewall can hold a login:
//!
//! - Connecting (name lookup, TCP, TLS, authentication, session start) must
//!   finish within [`PgTarget::connect_timeout`] as a whole, as libpq's
//!   `connect_timeout` does. A host that drops packets, a port that accepts
//!   a connection and never answers, a server stuck in authentication: all
//!   fail when it expires. (The blocking `postgres` crate applies its
//!   `connect_timeout` to the TCP connect only.)
//! - Every later call (`batch`, `execute`, `query`, `pipeline`) must be
//!   answered within [`CALL_TIMEOUT`], or the shorter limit the caller gives
//!   ([`PgClient::pipeline_within`]: the store gives `connect_timeout` to
//!   the first read of a login on a session crm2fad kept). When it expires the session is closed (the server
//!   sees the connection end and rolls back what the session had begun) and
//!   every later call on it fails.
//! - TCP keepalives, and `TCP_USER_TIMEOUT` set to the call deadline, make
//!   the kernel notice a peer that is gone between calls.
//!
//! The session sets two things on the server side, in the `options`
//! startup parameter (no extra round trip), over what the role, the
//! database or the server's configuration say:
//! `idle_in_transaction_session_timeout`, so that a host gone in the
//! middle of a transaction does not hold a user's row for long; and
//! `synchronous_commit = on`, so that a `COMMIT` that used up a code
//! returns only once it is on disk (with it `off`, a server crash could
//! lose the commit, and the code would work again). A bound on how long the server works on one
//! statement is its own setting: `ALTER ROLE crm2fa SET statement_timeout =
//! '5s'`.
//!
//! # Statements
//!
//! [`PgClient::pipeline`] sends its statements with their parameters and
//! reads the answers once all are sent: one round trip for them all. A
//! statement goes as the unnamed statement the first two times a session
//! runs it, then prepared by name; a session that
//! serves one login prepares nothing, one kept by crm2fad does not have
//! the server parse and plan its statements again. A prepared query can be
//! sent ahead ([`PgClient::send_ahead`]): a task on the session's runtime
//! holds the client until its answer is in, and the next call takes that
//! answer if it asks for the same query, or waits for it and drops it. Each parameter's type
//! is declared by its kind: [`Param::Int`] `bigint`,
//! [`Param::Text`] `text`, [`Param::Bytes`] `bytea`, [`Param::Bool`]
//! `boolean`, and [`Param::Null`] unknown (the server infers it from where
//! `$n` stands). A `bigint` parameter fits an `INTEGER` or `SMALLINT`
//! column: the server converts it on assignment and in comparisons, and
//! refuses a value out of range (SQLSTATE `22003`). Where a function takes an
//! `INTEGER`, cast the parameter (`$1::integer`).
//!
//! Columns are read by type: `SMALLINT`, `INTEGER`, `BIGINT` as
//! [`Value::Int`]; `TEXT`, `VARCHAR`, `CHAR(n)`, `NAME` as [`Value::Text`];
//! `BYTEA` as [`Value::Bytes`]; `BOOLEAN` as [`Value::Bool`]; NULL as
//! [`Value::Null`]. A column of any other type is an error that names it.
//!
//! # TLS
//!
//! - `disable`: no TLS.
//! - `require`: TLS, but the server's certificate is not checked (as in
//!   libpq). The server must then prove it knows the role's password by
//!   SCRAM-SHA-256 with channel binding (`channel_binding=require` in
//!   libpq's words): a server in the middle that asks for the password in
//!   clear, or lets the client in without any, is refused before the
//!   password leaves, so it neither learns the password nor serves forged
//!   rows. It needs a password and a server that offers SCRAM-SHA-256-PLUS
//!   (PostgreSQL 11 and later over TLS; not every pooler does).
//! - `verify-full`: TLS, the certificate chain checked against the PEM
//!   certificates in `ca_file` (required) and the name against `host`.
//!
//! # Errors
//!
//! A [`PgError`] carries the server's SQLSTATE when the server sent one
//! (`28P01` for a wrong password, `40001`, `40P01`, `23505` …) and a message
//! naming `host:port` for a failure of the connection. The password is never
//! part of a message.
use std::collections::HashMap;
use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crm2fa_common::store::pg::{
    out_of_resources, Done, Param, PgClient, PgConnect, PgError, PgTarget, SslMode, Stmt, Value,
    CLIENT_OUT_OF_RESOURCES,
};
use futures_util::future::join_all;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio::time::error::Elapsed;
use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row, Socket, Statement};

pub mod abi;
mod tls;

/// How long the server may take to answer one call on an open session.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// How long closing a session may wait for the server to read its goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// TCP keepalive: first probe after this much silence …
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// The session's `idle_in_transaction_session_timeout`: a host that
/// vanishes inside a transaction (power, network) holds its locks (a user's
/// row, during a login) until the server notices; this bounds that wait for
/// everyone else. A transaction of crm2fa never waits on a person.
const IDLE_IN_TRANSACTION: &str = "15s";
/// … then one every …
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// … and the connection is dropped after this many unanswered.
const KEEPALIVE_RETRIES: u32 = 3;

/// Opens sessions with a PostgreSQL server: the [`PgConnect`] that
/// `[store] url` uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connector;

impl Connector {
    /// Like [`PgConnect::connect`], with `call_timeout` instead of
    /// [`CALL_TIMEOUT`] as the deadline of each call on the session.
    pub fn connect_with_call_timeout(
        &self,
        target: &PgTarget,
        call_timeout: Duration,
    ) -> Result<Box<dyn PgClient>, PgError> {
        Ok(Box::new(Session::open(target, call_timeout)?))
    }
}

impl PgConnect for Connector {
    fn connect(&self, target: &PgTarget) -> Result<Box<dyn PgClient>, PgError> {
        self.connect_with_call_timeout(target, CALL_TIMEOUT)
    }
}

/// One open session: the runtime that drives it, the client half, and the
/// task that runs the connection half.
struct Session {
    rt: Runtime,
    /// `None` once the session is closed (after a call timed out).
    client: Option<Client>,
    connection: Option<JoinHandle<()>>,
    /// `host:port`, for messages.
    server: String,
    call_timeout: Duration,
    /// The statements this session has run, by SQL and declared parameter
    /// types (at most [`MAX_KNOWN`]).
    known: HashMap<Key, Known>,
    /// A statement sent ahead ([`PgClient::send_ahead`]), not yet answered.
    ahead: Option<Ahead>,
    /// How long a statement sent ahead and then not asked for may take to
    /// be answered before the next call (the target's `connect_timeout`).
    drain_within: Duration,
}

/// A query sent ahead, answered: its statement, its parameters and what
/// came back.
type Answered = (Key, Vec<Value>, Result<Vec<Row>, tokio_postgres::Error>);

/// A query sent ahead: what it was, and the task that runs it, holding the
/// client until the answer is in.
struct Ahead {
    key: Key,
    params: Vec<Value>,
    task: JoinHandle<(Client, Result<Vec<Row>, tokio_postgres::Error>)>,
}

/// A statement as a session knows it: its SQL and declared parameter types.
type Key = (String, Vec<Type>);

/// The [`Key`] of `sql` run with `params` (as [`typed`] gives them).
fn key_of(sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Key {
    (
        sql.to_owned(),
        params.iter().map(|(_, t)| t.clone()).collect(),
    )
}

/// What a session knows of a statement.
enum Known {
    /// Run this many times, as the unnamed statement.
    Seen(u32),
    /// Prepared on the server: run by name, without parsing or planning.
    Prepared(Statement),
    /// Preparing it failed, or running it prepared did: run it unnamed.
    Unnamed,
}

/// How many times a session runs a statement unnamed before it prepares
/// it: one login runs none of its statements more than twice, so a session
/// that serves one login (the module's own) prepares nothing.
const PREPARE_AFTER: u32 = 2;

/// How many statements a session remembers: more than crm2fa runs.
const MAX_KNOWN: usize = 256;

/// Set once the server lost a statement this process prepared (SQLSTATE
/// `26000`: a pooler in transaction mode that does not keep prepared
/// statements, such as PgBouncer before 1.21): from then on, nothing is
/// prepared.
static PREPARING_FAILED: AtomicBool = AtomicBool::new(false);

impl Session {
    fn open(target: &PgTarget, call_timeout: Duration) -> Result<Session, PgError> {
        let server = format!("{}:{}", target.host, target.port);
        let fail = |message: String| PgError {
            sqlstate: None,
            message: format!("cannot connect to {server}: {message}"),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| PgError {
                sqlstate: resources(&e),
                ..fail(format!("cannot start the I/O runtime: {e}"))
            })?;

        let mut config = tokio_postgres::Config::new();
        config
            .host(&target.host)
            .port(target.port)
            .user(&target.user)
            .dbname(&target.dbname)
            .application_name("crm2fa")
            .options(format!(
                "-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION} \
                 -c synchronous_commit=on"
            ))
            .connect_timeout(target.connect_timeout)
            .tcp_user_timeout(call_timeout)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
        if let Some(password) = &target.password {
            config.password(password.as_bytes());
        }

        let started = match target.sslmode {
            SslMode::Disable => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                rt.block_on(start(&config, NoTls, target.connect_timeout))
            }
            SslMode::Require | SslMode::VerifyFull => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                if target.sslmode == SslMode::Require {
                    // The certificate is not checked, so the server proves
                    // itself by SCRAM bound to this TLS session: a server
                    // asking for the password in clear (or not at all) is
                    // refused before anything is sent.
                    config.channel_binding(tokio_postgres::config::ChannelBinding::Require);
                }
                let tls =
                    tls::connector(target.sslmode, target.ca_file.as_deref()).map_err(fail)?;
                rt.block_on(start(&config, tls, target.connect_timeout))
            }
        };
        drop(config);
        match started {
            Some(Ok((client, connection))) => Ok(Session {
                rt,
                client: Some(client),
                connection: Some(connection),
                server,
                call_timeout,
                known: HashMap::new(),
                ahead: None,
                drain_within: target.connect_timeout,
            }),
            outcome => {
                // A name lookup may still run on a blocking thread: leave it.
                rt.shutdown_background();
                Err(match outcome {
                    Some(Err(e)) => {
                        let e = convert(&e);
                        PgError {
                            sqlstate: e.sqlstate,
                            message: format!("cannot connect to {server}: {}", e.message),
                        }
                    }
                    _ => fail(format!(
                        "no answer within {} (connect_timeout)",
                        seconds(target.connect_timeout)
                    )),
                })
            }
        }
    }

    /// The client, taken out for one call (given back by [`Self::finish`]).
    fn take_client(&mut self) -> Result<Client, PgError> {
        self.client.take().ok_or_else(|| PgError {
            sqlstate: None,
            message: format!(
                "the session with {} was closed after a call got no answer",
                self.server
            ),
        })
    }

    /// `answer`, once the client is given back; after a timeout, the
    /// session closed and an error saying so.
    fn give_back<T>(
        &mut self,
        client: Client,
        answer: Result<T, Elapsed>,
        limit: Duration,
    ) -> Result<T, PgError> {
        match answer {
            Ok(answer) => {
                self.client = Some(client);
                Ok(answer)
            }
            Err(_elapsed) => {
                drop(client);
                Err(self.unanswered(limit))
            }
        }
    }

    /// Close the session after a call that got no answer within `limit`.
    fn unanswered(&mut self, limit: Duration) -> PgError {
        let why = format!("no answer from {} within {}", self.server, seconds(limit));
        self.close(&why)
    }

    /// Close the session after a call that got no answer (`why`): every
    /// later call fails.
    fn close(&mut self, why: &str) -> PgError {
        if let Some(connection) = self.connection.take() {
            connection.abort();
            // Lets the runtime drop the aborted task, and with it the socket.
            let _ = self.rt.block_on(connection);
        }
        PgError {
            sqlstate: None,
            message: format!("{why}; the session is closed"),
        }
    }

    /// A failed call's error, naming the server when the server did not
    /// send it.
    fn error(&self, e: &tokio_postgres::Error) -> PgError {
        let mut converted = convert(e);
        if e.as_db_error().is_none() {
            converted.message = format!("{}: {}", self.server, converted.message);
        }
        converted
    }
}

/// Why a call sent ahead has no answer; the session is closed either way.
enum Unanswered {
    /// The call failed, and the session with it.
    Failed(PgError),
    /// No answer came within the bound.
    Within(PgError),
}

impl Unanswered {
    fn error(self) -> PgError {
        match self {
            Unanswered::Failed(e) | Unanswered::Within(e) => e,
        }
    }
}

/// What one call of a pipeline got, before its rows are read.
enum Answer {
    Batch,
    Changed(u64),
    Rows(Vec<Row>),
}

impl Drop for Session {
    fn drop(&mut self) {
        // Dropping the client ends the request channel: the connection task
        // sends Terminate and finishes.
        self.client = None;
        if let Some(ahead) = self.ahead.take() {
            ahead.task.abort();
            let _ = self.rt.block_on(ahead.task);
        }
        if let Some(connection) = self.connection.take() {
            let _ = within(&self.rt, CLOSE_TIMEOUT, connection);
        }
    }
}

impl PgClient for Session {
    /// Without a round trip: the connection task reads what the server
    /// sent since the last call, and a server that ended the session (a
    /// restart, an idle timeout) has sent its end, so the client is closed.
    fn still_open(&mut self) -> Result<bool, PgError> {
        // One sent ahead for a login that ended without asking for it. Not
        // answered within `connect_timeout`: the server is not answering,
        // and the login fails now rather than wait as long again for a new
        // session.
        if let Err(Unanswered::Within(e)) = self.answer_ahead(self.drain_within) {
            return Err(e);
        }
        let Some(client) = self.client.as_ref() else {
            return Ok(false);
        };
        // Each yield lets the runtime poll the socket and run the
        // connection task once.
        self.rt.block_on(async {
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        });
        Ok(!client.is_closed())
    }

    /// Sent ahead only once the session has prepared the statement (from
    /// its third run on), as that is the statement of each login's first
    /// read on a session crm2fad keeps: run by name, its answer is the
    /// same whenever it is read.
    fn send_ahead(&mut self, statement: Stmt<'_>) {
        let Stmt::Query(sql, params) = statement else {
            return;
        };
        if self.ahead.is_some() {
            return;
        }
        let key = key_of(sql, &typed(params));
        let Some(Known::Prepared(prepared)) = self.known.get(&key) else {
            return;
        };
        let prepared = prepared.clone();
        let Some(client) = self.client.take() else {
            return;
        };
        let params: Vec<Value> = params.iter().map(|&p| Value::from(p)).collect();
        let owned = params.clone();
        let task = self.rt.spawn(async move {
            let params: Vec<Param<'_>> = owned.iter().map(Value::as_param).collect();
            let values: Vec<&(dyn ToSql + Sync)> =
                typed(&params).into_iter().map(|(v, _)| v).collect();
            let answer = client.query(&prepared, &values).await;
            (client, answer)
        });
        // Each yield lets the runtime run the task (which queues the
        // query's messages) and the connection task (which writes them).
        self.rt.block_on(async {
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        });
        self.ahead = Some(Ahead { key, params, task });
    }

    /// All sent at once: tokio-postgres queues each call's messages when
    /// it is first polled, and `join_all` polls them in order, so the
    /// server gets them in order and answers them in one round trip.
    ///
    /// A statement runs as the unnamed statement the first
    /// [`PREPARE_AFTER`] times; the next time it is prepared (in one round
    /// trip with any others to prepare), and from then on run by name: the
    /// server neither parses nor plans it again. A session that serves one
    /// login prepares nothing; one that crm2fad keeps has every statement
    /// of a login prepared from its second login on.
    fn pipeline_within(
        &mut self,
        statements: &[Stmt<'_>],
        limit: Option<Duration>,
    ) -> Vec<Result<Done, PgError>> {
        let limit = limit.map_or(self.call_timeout, |l| l.min(self.call_timeout));
        let started = std::time::Instant::now();
        match self.answer_ahead(limit).map_err(Unanswered::error) {
            Err(e) => return statements.iter().map(|_| Err(e.clone())).collect(),
            Ok(Some((key, params, answer))) => {
                if let [Stmt::Query(sql, p)] = statements {
                    let same = key == key_of(sql, &typed(p))
                        && p.iter().map(|&v| Value::from(v)).eq(params);
                    if same {
                        return vec![answer
                            .map_err(|e| self.error(&e))
                            .and_then(|rows| rows.iter().map(values).collect())
                            .map(Done::Rows)];
                    }
                }
            }
            Ok(None) => {}
        }
        // One bound for the answer sent ahead and these together (messages
        // name the bound).
        let left = limit.saturating_sub(started.elapsed());
        let client = match self.take_client() {
            Ok(client) => client,
            Err(e) => return statements.iter().map(|_| Err(e.clone())).collect(),
        };
        let params: Vec<Vec<(&(dyn ToSql + Sync), Type)>> = statements
            .iter()
            .map(|s| match s {
                Stmt::Batch(_) => Vec::new(),
                Stmt::Execute(_, p) | Stmt::Query(_, p) => typed(p),
            })
            .collect();
        let keys: Vec<Option<Key>> = statements
            .iter()
            .zip(&params)
            .map(|(s, p)| match *s {
                Stmt::Batch(_) => None,
                Stmt::Execute(sql, _) | Stmt::Query(sql, _) => Some(key_of(sql, p)),
            })
            .collect();
        let prepared = match self.prepared_for(&client, &keys, left) {
            Ok(prepared) => prepared,
            Err(elapsed) => {
                let e = self
                    .give_back(client, Err::<(), _>(elapsed), limit)
                    .unwrap_err();
                return statements.iter().map(|_| Err(e.clone())).collect();
            }
        };
        let calls: Vec<Call<'_>> =
            statements
                .iter()
                .zip(&params)
                .zip(&prepared)
                .map(|((s, p), prepared)| -> Call<'_> {
                    let client = &client;
                    let by_name = || p.iter().map(|(v, _)| *v).collect::<Vec<_>>();
                    match (*s, prepared) {
                        (Stmt::Batch(sql), _) => Box::pin(async move {
                            client.batch_execute(sql).await.map(|()| Answer::Batch)
                        }),
                        (Stmt::Execute(_, _), Some(statement)) => {
                            let values = by_name();
                            Box::pin(async move {
                                client
                                    .execute(statement, &values)
                                    .await
                                    .map(Answer::Changed)
                            })
                        }
                        (Stmt::Query(_, _), Some(statement)) => {
                            let values = by_name();
                            Box::pin(async move {
                                client.query(statement, &values).await.map(Answer::Rows)
                            })
                        }
                        (Stmt::Execute(sql, _), None) => Box::pin(async move {
                            client.execute_typed(sql, p).await.map(Answer::Changed)
                        }),
                        (Stmt::Query(sql, _), None) => {
                            Box::pin(
                                async move { client.query_typed(sql, p).await.map(Answer::Rows) },
                            )
                        }
                    }
                })
                .collect();
        // What the preparing took comes off the same bound.
        let left = limit.saturating_sub(started.elapsed());
        let answer = within(&self.rt, left, join_all(calls));
        let answers = match self.give_back(client, answer, limit) {
            Ok(answers) => answers,
            Err(e) => return statements.iter().map(|_| Err(e.clone())).collect(),
        };
        answers
            .into_iter()
            .zip(keys.iter().zip(&prepared))
            .map(|(answer, (key, prepared))| match answer {
                Ok(Answer::Batch) => Ok(Done::Batch),
                Ok(Answer::Changed(n)) => Ok(Done::Changed(n)),
                Ok(Answer::Rows(rows)) => rows
                    .iter()
                    .map(values)
                    .collect::<Result<_, _>>()
                    .map(Done::Rows),
                Err(e) => {
                    if let (Some(key), Some(_)) = (key, prepared) {
                        self.failed_prepared(key, &e);
                    }
                    Err(self.error(&e))
                }
            })
            .collect()
    }
}

impl Session {
    /// The answer to the query sent ahead, if one was: what it was and what
    /// came back, the client given back to the session. Past `limit` the
    /// session is closed, as for any call without an answer.
    fn answer_ahead(&mut self, limit: Duration) -> Result<Option<Answered>, Unanswered> {
        let Some(mut ahead) = self.ahead.take() else {
            return Ok(None);
        };
        match within(&self.rt, limit, &mut ahead.task) {
            Ok(Ok((client, answer))) => {
                self.client = Some(client);
                if let Err(e) = &answer {
                    self.failed_prepared(&ahead.key, e);
                }
                Ok(Some((ahead.key, ahead.params, answer)))
            }
            // The task failed (it is over): the client went with it.
            Ok(Err(_failed)) => Err(Unanswered::Failed(
                self.close(&format!("the call to {} failed", self.server)),
            )),
            Err(_elapsed) => {
                ahead.task.abort();
                let _ = self.rt.block_on(ahead.task);
                Err(Unanswered::Within(self.unanswered(limit)))
            }
        }
    }

    /// A prepared statement failed with `e`: it runs unnamed from now on
    /// (the schema changed under its plan, a pooler lost it …); a lost one
    /// (SQLSTATE `26000`) means nothing is prepared any more.
    fn failed_prepared(&mut self, key: &Key, e: &tokio_postgres::Error) {
        self.known.insert(key.clone(), Known::Unnamed);
        if e.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME) {
            PREPARING_FAILED.store(true, Ordering::Relaxed);
        }
    }

    /// For each of `keys` (`None`: a batch), the prepared statement to run
    /// it by, if it has one now. Those that ran [`PREPARE_AFTER`] times
    /// unnamed are prepared first; a run without a prepared statement is
    /// counted. Only a timeout of the preparing (past `limit`) is an error.
    fn prepared_for(
        &mut self,
        client: &Client,
        keys: &[Option<Key>],
        limit: Duration,
    ) -> Result<Vec<Option<Statement>>, Elapsed> {
        self.prepare_seen(client, keys.iter().flatten(), limit)?;
        Ok(keys
            .iter()
            .map(|key| {
                let key = key.as_ref()?;
                let room = self.known.len() < MAX_KNOWN;
                match self.known.get_mut(key) {
                    Some(Known::Prepared(statement)) => return Some(statement.clone()),
                    Some(Known::Seen(n)) => *n += 1,
                    Some(Known::Unnamed) => {}
                    None if room => {
                        self.known.insert(key.clone(), Known::Seen(1));
                    }
                    None => {}
                }
                None
            })
            .collect())
    }

    /// Prepare, in one round trip, those of `keys` that ran
    /// [`PREPARE_AFTER`] times unnamed.
    /// A statement the server would not prepare runs unnamed; only a
    /// timeout is an error.
    fn prepare_seen<'k>(
        &mut self,
        client: &Client,
        keys: impl Iterator<Item = &'k Key>,
        limit: Duration,
    ) -> Result<(), Elapsed> {
        let mut todo: Vec<&Key> = Vec::new();
        for key in keys {
            if matches!(self.known.get(key), Some(Known::Seen(n)) if *n >= PREPARE_AFTER)
                && !todo.contains(&key)
            {
                todo.push(key);
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        if PREPARING_FAILED.load(Ordering::Relaxed) {
            for key in todo {
                self.known.insert(key.clone(), Known::Unnamed);
            }
            return Ok(());
        }
        let prepares = todo
            .iter()
            .map(|(sql, types)| client.prepare_typed(sql, types));
        let prepared = within(&self.rt, limit, join_all(prepares))?;
        for (key, statement) in todo.into_iter().zip(prepared) {
            let known = statement.map_or(Known::Unnamed, Known::Prepared);
            self.known.insert(key.clone(), known);
        }
        Ok(())
    }
}

/// One call of a pipeline.
type Call<'a> = Pin<Box<dyn Future<Output = Result<Answer, tokio_postgres::Error>> + 'a>>;

/// Runs `f` on `rt` until it is done or `deadline` has passed.
fn within<F: Future>(rt: &Runtime, deadline: Duration, f: F) -> Result<F::Output, Elapsed> {
    // The timer must be made inside the runtime.
    rt.block_on(async { timeout(deadline, f).await })
}

/// Connects within `deadline` and starts the connection task; `None` when
/// the deadline passed.
async fn start<T>(
    config: &tokio_postgres::Config,
    tls: T,
    deadline: Duration,
) -> Option<Result<(Client, JoinHandle<()>), tokio_postgres::Error>>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let connected = timeout(deadline, config.connect(tls)).await.ok()?;
    Some(connected.map(|(client, connection)| {
        // Its error (the server went away) reaches the client's next call
        // as "connection closed"; notices are logged by tokio-postgres.
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        (client, task)
    }))
}

/// SQL NULL, for a parameter of any type.
#[derive(Debug)]
struct Null;

impl ToSql for Null {
    fn to_sql(
        &self,
        _: &Type,
        _: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(tokio_postgres::types::IsNull::Yes)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Each parameter with the type it is declared as.
fn typed<'p>(params: &'p [Param<'_>]) -> Vec<(&'p (dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|param| -> (&(dyn ToSql + Sync), Type) {
            match param {
                Param::Null => (&Null, Type::UNKNOWN),
                Param::Int(v) => (v, Type::INT8),
                Param::Text(v) => (v, Type::TEXT),
                Param::Bytes(v) => (v, Type::BYTEA),
                Param::Bool(v) => (v, Type::BOOL),
            }
        })
        .collect()
}

/// A row as values, by the type of each column.
fn values(row: &Row) -> Result<Vec<Value>, PgError> {
    (0..row.len())
        .map(|i| {
            let ty = row.columns()[i].type_();
            let value = match *ty {
                Type::INT2 => row
                    .try_get::<_, Option<i16>>(i)
                    .map(|v| v.map(|v| Value::Int(v.into()))),
                Type::INT4 => row
                    .try_get::<_, Option<i32>>(i)
                    .map(|v| v.map(|v| Value::Int(v.into()))),
                Type::INT8 => row.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int)),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => row
                    .try_get::<_, Option<String>>(i)
                    .map(|v| v.map(Value::Text)),
                Type::BYTEA => row
                    .try_get::<_, Option<Vec<u8>>>(i)
                    .map(|v| v.map(Value::Bytes)),
                Type::BOOL => row
                    .try_get::<_, Option<bool>>(i)
                    .map(|v| v.map(Value::Bool)),
                _ => {
                    return Err(PgError {
                        sqlstate: None,
                        message: format!(
                            "column {} ({}) is of type {}, which crm2fa does not read",
                            i + 1,
                            row.columns()[i].name(),
                            ty.name()
                        ),
                    })
                }
            };
            value.map(|v| v.unwrap_or(Value::Null)).map_err(|e| {
                let e = convert(&e);
                PgError {
                    sqlstate: None,
                    message: format!(
                        "column {} ({}): {}",
                        i + 1,
                        row.columns()[i].name(),
                        e.message
                    ),
                }
            })
        })
        .collect()
}

/// The server's SQLSTATE and message, or what went wrong on this side with
/// its causes.
fn convert(e: &tokio_postgres::Error) -> PgError {
    if let Some(db) = e.as_db_error() {
        let mut message = db.message().to_owned();
        if let Some(detail) = db.detail() {
            message.push_str(" (");
            message.push_str(detail);
            message.push(')');
        }
        return PgError {
            sqlstate: Some(db.code().code().to_owned()),
            message,
        };
    }
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    PgError {
        sqlstate: resources(e),
        message,
    }
}

/// A failure of this client for want of descriptors or memory (a socket,
/// the runtime's): marked as such ([`CLIENT_OUT_OF_RESOURCES`]), which
/// `failmode = "safe"` never skips.
fn resources(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    out_of_resources(e).then(|| CLIENT_OUT_OF_RESOURCES.to_owned())
}

/// `3s`, `1.5s`, `250ms`.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_in_the_config() {
        assert_eq!(seconds(Duration::from_secs(3)), "3s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5s");
        assert_eq!(seconds(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn every_param_kind_has_a_declared_type() {
        let params = [
            Param::Null,
            Param::Int(1),
            Param::Text("a"),
            Param::Bytes(b"a"),
            Param::Bool(true),
        ];
        let types: Vec<Type> = typed(&params).into_iter().map(|(_, t)| t).collect();
        assert_eq!(
            types,
            [
                Type::UNKNOWN,
                Type::INT8,
                Type::TEXT,
                Type::BYTEA,
                Type::BOOL
            ]
        );
    }

    #[test]
    fn null_fits_any_type_and_writes_null() {
        let mut buf = bytes::BytesMut::new();
        for ty in [Type::INT4, Type::TEXT, Type::TIMESTAMPTZ, Type::UNKNOWN] {
            assert!(matches!(
                Null.to_sql_checked(&ty, &mut buf),
                Ok(tokio_postgres::types::IsNull::Yes)
            ));
        }
        assert!(buf.is_empty());
    }
}
