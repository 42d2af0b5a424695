//! Stores kept open between logins, for crm2fad: a login served by it
//! takes an open store (SQLite connection or PostgreSQL session) for the
//! configured `[store]`, and gives it back when it ends, so the next login
//! does not pay to open the database, read back its WAL, parse its schema
//! or start a server session.
//!
//! A kept store serves again only if [`Store::still_current`] says so (the
//! same file at its path, a session the server still answers) and no
//! transaction of the login that held it failed; otherwise it is closed and
//! the store opened afresh. Nothing is cached above the store: every login
//! reads its user's rows in its own transactions, as the module does.
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::pg::PgConnect;
use super::{Store, Stores, TxBody, TxKind};
use crate::config::{Config, LastLoaded, PostgresConfig, StoreConfig};
use crate::error::Result;

/// Open stores kept at most, over every `[store]` served.
pub const MAX_IDLE: usize = 32;
/// Open stores kept at most for one `[store]`: a burst of logins leaves no
/// more PostgreSQL sessions than this behind on each host.
pub const MAX_IDLE_PER_STORE: usize = 4;
/// A store not lent for this long is closed.
pub const IDLE_TIME: Duration = Duration::from_secs(60);

/// What a kept store was opened for: two configs that name the same
/// database the same way share stores.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    /// The SQLite file, when `postgres` is not set.
    path: Option<PathBuf>,
    postgres: Option<PostgresConfig>,
}

impl Key {
    fn of(cfg: &StoreConfig) -> Key {
        Key {
            path: cfg.postgres.is_none().then(|| cfg.path.clone()),
            postgres: cfg.postgres.clone(),
        }
    }
}

/// A kept store, what it was opened for and when it was given back.
type Kept = (Key, Box<dyn Store>, Instant);

/// Open stores, by the `[store]` they were opened for; and the
/// configuration last read, so that a login parses it only if it changed.
pub struct Pool {
    /// Kept stores, the oldest given back first.
    idle: Mutex<Vec<Kept>>,
    pg: Option<Box<dyn PgConnect + Send + Sync>>,
    config: LastLoaded,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("idle", &self.idle()).finish()
    }
}

impl Pool {
    /// An empty pool; PostgreSQL stores are opened through `pg`.
    pub fn new(pg: Option<Box<dyn PgConnect + Send + Sync>>) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            pg,
            config: LastLoaded::default(),
        }
    }

    /// How many open stores are kept now.
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// The store of `key` given back last, if any; stores idle too long
    /// are closed (after the lock is let go: closing a PostgreSQL session
    /// may wait for the server).
    fn take(&self, key: &Key) -> Option<Box<dyn Store>> {
        let (found, expired) = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let expired = Self::expired(&mut idle);
            let found = idle
                .iter()
                .rposition(|(k, _, _)| k == key)
                .map(|at| idle.remove(at).1);
            (found, expired)
        };
        drop(expired);
        found
    }

    /// Close the stores kept longer than [`IDLE_TIME`]: crm2fad calls it
    /// when it has had nothing to do for a while, so that a quiet host does
    /// not hold a PostgreSQL session for good. They are closed on a thread
    /// of their own (this one, if none can be started): closing a session
    /// may wait for a server that stopped answering, and the caller, the
    /// thread left to accept crm2fad's connections, goes back to it.
    pub fn close_idle(&self) {
        let expired = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            Self::expired(&mut idle)
        };
        if expired.is_empty() {
            return;
        }
        // A thread that cannot be started drops its closure, and with it
        // the stores, here.
        let _ = std::thread::Builder::new()
            .name("close-idle".into())
            .spawn(move || drop(expired));
    }

    /// Those of `idle` (oldest first) kept longer than [`IDLE_TIME`], taken
    /// out of it.
    fn expired(
        idle: &mut Vec<(Key, Box<dyn Store>, Instant)>,
    ) -> Vec<(Key, Box<dyn Store>, Instant)> {
        let now = Instant::now();
        let fresh = idle
            .iter()
            .position(|(_, _, at)| now.duration_since(*at) < IDLE_TIME)
            .unwrap_or(idle.len());
        idle.drain(..fresh).collect()
    }

    /// Close every store of `key` kept now.
    fn forget(&self, key: &Key) {
        let gone: Vec<_> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let (gone, kept) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|(k, _, _)| k == key);
            *idle = kept;
            gone
        };
        drop(gone);
    }

    fn give_back(&self, key: Key, store: Box<dyn Store>) {
        let closed = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let same: Vec<usize> = (0..idle.len()).filter(|&i| idle[i].0 == key).collect();
            let closed = if same.len() >= MAX_IDLE_PER_STORE {
                // The oldest of this store's goes.
                Some(idle.remove(same[0]).1)
            } else if idle.len() >= MAX_IDLE {
                // The oldest goes: it belongs to the config least used lately.
                Some(idle.remove(0).1)
            } else {
                None
            };
            idle.push((key, store, Instant::now()));
            closed
        };
        drop(closed);
    }
}

impl Stores for Pool {
    fn keeps_open(&self) -> bool {
        true
    }

    fn config(&self, path: &std::path::Path) -> Result<Config> {
        Config::load_reusing(path, &self.config)
    }

    fn open(&self, cfg: &StoreConfig) -> Result<Box<dyn Store + '_>> {
        let (store, kept) = self.take_or_open(cfg)?;
        Ok(Box::new(Lent {
            pool: self,
            cfg: cfg.clone(),
            location: store.location().to_string(),
            store: Some(store),
            failed: false,
            unchecked: kept,
            login_read: false,
        }))
    }
}

impl Pool {
    /// A kept store for `cfg` that may serve again (and true), or one
    /// opened afresh.
    fn take_or_open(&self, cfg: &StoreConfig) -> Result<(Box<dyn Store>, bool)> {
        let key = Key::of(cfg);
        if let Some(mut kept) = self.take(&key) {
            let current = kept.still_current();
            if let Ok(true) = current {
                return Ok((kept, true));
            }
            self.closed_stale(kept, &key);
            current?;
        }
        Ok((self.open_fresh(cfg)?, false))
    }

    /// `stale` closed, and the others kept for its store with it: what
    /// ended this one (the file replaced, the server restarted or no longer
    /// answering, its files no longer passing their checks) most likely
    /// ended them too, and each would make a login wait again.
    fn closed_stale(&self, stale: Box<dyn Store>, key: &Key) {
        drop(stale);
        self.forget(key);
    }

    fn open_fresh(&self, cfg: &StoreConfig) -> Result<Box<dyn Store>> {
        super::open(cfg, self.pg.as_deref().map(|c| c as &dyn PgConnect))
    }
}

/// A store lent to one login: back to the pool when the login drops it,
/// unless one of its transactions failed; a PostgreSQL session also while
/// the login waits on its user ([`Store::set_aside`]).
struct Lent<'p> {
    pool: &'p Pool,
    /// What it was lent for: a store set aside is taken again for it,
    /// and given back under its [`Key`].
    cfg: StoreConfig,
    location: String,
    /// `None` once set aside (or dropped).
    store: Option<Box<dyn Store>>,
    failed: bool,
    /// A kept store was lent, and the files a new connection to its
    /// server reads are not checked yet: see [`Lent::inner`].
    unchecked: bool,
    /// [`Store::login_read_next`] is to be passed on to the store.
    login_read: bool,
}

impl Lent<'_> {
    /// The store, as [`Lent::sending`] has it, checked.
    ///
    /// A kept PostgreSQL session also needs the files a new connection
    /// reads to pass their checks (`password_file` root's and closed to
    /// others, `ca_file` closed to others' writes, the socket's directory
    /// closed to others): otherwise it is closed and the store opened
    /// afresh, which fails on them as the module's open would. Checked
    /// once a login, before the store's first use but after the read sent
    /// ahead ([`Store::read_ahead`]), which goes on the session already
    /// open and whose answer nothing uses unless the checks pass; a store
    /// taken again after [`Store::set_aside`] is not checked again.
    fn inner(&mut self) -> Result<&mut dyn Store> {
        if self.unchecked && (self.cfg.postgres.as_ref()).is_some_and(|pg| pg.target().is_err()) {
            if let Some(stale) = self.store.take() {
                self.pool.closed_stale(stale, &Key::of(&self.cfg));
            }
            // Fails on the files, as the module's open would (and then the
            // next call checks again: no kept store is lent unchecked).
            self.store = Some(self.pool.open_fresh(&self.cfg)?);
        }
        self.unchecked = false;
        self.sending()
    }

    /// The store, taken again from the pool (or opened) if it was set
    /// aside; its files not checked.
    fn sending(&mut self) -> Result<&mut dyn Store> {
        let store = match self.store.take() {
            Some(store) => store,
            None => self.pool.take_or_open(&self.cfg)?.0,
        };
        let store = self.store.insert(store);
        if std::mem::take(&mut self.login_read) {
            store.login_read_next();
        }
        Ok(store.as_mut())
    }

    /// The store back to the pool, unless a transaction of it failed.
    fn give_back(&mut self) {
        if self.failed {
            return;
        }
        if let Some(store) = self.store.take() {
            self.pool.give_back(Key::of(&self.cfg), store);
        }
    }
}

impl Store for Lent<'_> {
    fn location(&self) -> &str {
        &self.location
    }

    fn still_current(&mut self) -> Result<bool> {
        self.inner()?.still_current()
    }

    fn transaction(&mut self, kind: TxKind, body: &mut TxBody<'_>) -> Result<()> {
        let result = self.inner().and_then(|s| s.transaction(kind, body));
        self.failed |= result.is_err();
        result
    }

    fn check_integrity(&mut self) -> Result<Vec<String>> {
        self.inner()?.check_integrity()
    }

    fn read_ahead(&mut self, reads: &[super::Read<'_>]) {
        // A store that cannot be had now fails the read that follows.
        if let Ok(s) = self.sending() {
            s.read_ahead(reads);
        }
    }

    fn login_read_next(&mut self) {
        // Passed on when the store is next used (see `sending`).
        self.login_read = true;
    }

    fn set_aside(&mut self) {
        // A SQLite connection holds no server's session: kept, it spares
        // the login its checks when taken again.
        if self.cfg.postgres.is_some() {
            self.give_back();
        }
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        // Not after a panic: a transaction may have been left open.
        if !std::thread::panicking() {
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::store::pg::{Done, PgClient, PgError, PgTarget, Stmt, Value};

    fn config(dir: &std::path::Path) -> StoreConfig {
        StoreConfig {
            path: dir.join("crm2fa.db"),
            key_file: dir.join("secret.key"),
            postgres: None,
        }
    }

    fn read(store: &mut dyn Store) -> Result<()> {
        store.transaction(TxKind::Read, &mut |tx| tx.users().map(drop))
    }

    #[test]
    fn a_store_is_kept_while_current_and_closed_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        drop(super::super::create(&cfg, None).unwrap());
        let pool = Pool::new(None);

        let mut s = pool.open(&cfg).unwrap();
        read(s.as_mut()).unwrap();
        drop(s);
        assert_eq!(pool.idle(), 1, "given back");
        let s = pool.open(&cfg).unwrap();
        assert_eq!(pool.idle(), 0, "the kept one was lent");
        drop(s);

        // A transaction that fails: the store is closed, not kept.
        let mut s = pool.open(&cfg).unwrap();
        let failed = s.transaction(TxKind::Read, &mut |_| {
            Err(Error::store("test", "failed on purpose"))
        });
        assert!(failed.is_err());
        drop(s);
        assert_eq!(pool.idle(), 0);

        // Another file moved into the store's place: the kept store is not
        // lent again; the new file is opened.
        drop(pool.open(&cfg).unwrap());
        assert_eq!(pool.idle(), 1);
        let other = tempfile::tempdir().unwrap();
        let other_cfg = config(other.path());
        drop(super::super::create(&other_cfg, None).unwrap());
        std::fs::rename(&other_cfg.path, &cfg.path).unwrap();
        let mut s = pool.open(&cfg).unwrap();
        assert!(s.still_current().unwrap());
        read(s.as_mut()).unwrap();
        drop(s);
        assert_eq!(pool.idle(), 1, "the old one closed, the new one kept");

        // Kept past IDLE_TIME on a quiet host: closed without a login to
        // come for it.
        drop(pool.open(&cfg).unwrap());
        assert_eq!(pool.idle(), 1);
        pool.close_idle();
        assert_eq!(pool.idle(), 1, "not idle long enough");
        for (_, _, at) in pool.idle.lock().unwrap().iter_mut() {
            *at = Instant::now()
                .checked_sub(IDLE_TIME + Duration::from_secs(1))
                .expect("the clock started over a minute ago");
        }
        pool.close_idle();
        assert_eq!(pool.idle(), 0);

        // A burst of logins leaves at most MAX_IDLE_PER_STORE behind.
        let lent: Vec<_> = (0..MAX_IDLE_PER_STORE + 3)
            .map(|_| pool.open(&cfg).unwrap())
            .collect();
        drop(lent);
        assert_eq!(pool.idle(), MAX_IDLE_PER_STORE);

        // One of them found out of date: the others kept with it are
        // closed too, rather than each tried in turn.
        let third = tempfile::tempdir().unwrap();
        let third_cfg = config(third.path());
        drop(super::super::create(&third_cfg, None).unwrap());
        std::fs::rename(&third_cfg.path, &cfg.path).unwrap();
        let s = pool.open(&cfg).unwrap();
        assert_eq!(pool.idle(), 0, "every old one closed");
        drop(s);
        assert_eq!(pool.idle(), 1);
    }

    /// A store whose closing waits (up to 10 s) for the test to let it.
    struct SlowToClose {
        release: std::sync::mpsc::Receiver<()>,
        closed: std::sync::mpsc::Sender<()>,
    }

    impl Store for SlowToClose {
        fn location(&self) -> &str {
            "slow"
        }
        fn still_current(&mut self) -> Result<bool> {
            Ok(true)
        }
        fn transaction(&mut self, _: TxKind, _: &mut TxBody<'_>) -> Result<()> {
            Ok(())
        }
        fn check_integrity(&mut self) -> Result<Vec<String>> {
            Ok(vec![])
        }
    }

    impl Drop for SlowToClose {
        fn drop(&mut self) {
            let _ = self.release.recv_timeout(Duration::from_secs(10));
            let _ = self.closed.send(());
        }
    }

    #[test]
    fn closing_idle_stores_does_not_hold_up_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(None);
        let (release, released) = std::sync::mpsc::channel();
        let (closed, was_closed) = std::sync::mpsc::channel();
        let long_ago = Instant::now()
            .checked_sub(IDLE_TIME + Duration::from_secs(1))
            .expect("the clock started over a minute ago");
        pool.idle.lock().unwrap().push((
            Key::of(&config(dir.path())),
            Box::new(SlowToClose {
                release: released,
                closed,
            }),
            long_ago,
        ));
        // Back before the store is closed: it waits for a server, say.
        pool.close_idle();
        assert_eq!(pool.idle(), 0);
        assert!(was_closed.try_recv().is_err(), "closed before returning");
        release.send(()).unwrap();
        was_closed
            .recv_timeout(Duration::from_secs(10))
            .expect("closed meanwhile, on a thread of its own");
    }

    /// A session that answers what a store's open and a read ask.
    struct Answering;

    impl PgClient for Answering {
        fn pipeline_within(
            &mut self,
            statements: &[Stmt<'_>],
            _: Option<Duration>,
        ) -> Vec<std::result::Result<Done, PgError>> {
            let version = crate::store::postgres::SCHEMA_VERSION.to_string();
            statements
                .iter()
                .map(|s| {
                    Ok(match s {
                        Stmt::Batch(_) => Done::Batch,
                        Stmt::Execute(..) => Done::Changed(0),
                        Stmt::Query(sql, _) if sql.starts_with("SELECT value FROM crm2fa_meta") => {
                            Done::Rows(vec![vec![Value::Text(version.clone())]])
                        }
                        Stmt::Query(..) => Done::Rows(vec![]),
                    })
                })
                .collect()
        }
    }

    struct Connecting;

    impl PgConnect for Connecting {
        fn connect(&self, _: &PgTarget) -> std::result::Result<Box<dyn PgClient>, PgError> {
            Ok(Box::new(Answering))
        }
    }

    #[test]
    fn a_kept_session_whose_files_fail_is_never_lent_unchecked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("host.password");
        std::fs::write(&password, "secret\n").unwrap();
        let mode = |m| std::fs::set_permissions(&password, std::fs::Permissions::from_mode(m));
        mode(0o600).unwrap();
        let config = dir.path().join("crm2fa.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\nurl = \"postgres://crm2fa@127.0.0.1:5432/crm2fa?sslmode=disable\"\n\
                 password_file = \"{}\"\nkey_file = \"{}\"\n",
                password.display(),
                dir.path().join("secret.key").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cfg = Config::load(&config).unwrap().store;
        let pool = Pool::new(Some(Box::new(Connecting)));
        drop(pool.open(&cfg).unwrap());
        assert_eq!(pool.idle(), 1);

        // Open to others now: the kept session is lent (its read may go
        // ahead), then refused at its first use, and no fresh one opens.
        mode(0o644).unwrap();
        let mut lent = pool.open(&cfg).unwrap();
        let first = read(lent.as_mut()).unwrap_err();
        assert!(first.to_string().contains("host.password"), "{first}");
        // Another login's session, opened before and given back since: the
        // login whose check failed does not take it unchecked.
        mode(0o600).unwrap();
        let other = pool.open(&cfg).unwrap();
        mode(0o644).unwrap();
        drop(other);
        assert_eq!(pool.idle(), 1);
        let again = read(lent.as_mut()).unwrap_err();
        assert!(again.to_string().contains("host.password"), "{again}");
    }
}
