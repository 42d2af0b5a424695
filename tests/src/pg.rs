//! Real PostgreSQL servers for tests of the PostgreSQL store: Debian's
//! `postgresql` package, a throwaway cluster per [`PgServer`] in a temporary
//! directory under `/tmp`, owned by the `postgres` system user.
//!
//! A server listens on a free TCP port on 127.0.0.1 (password logins with
//! SCRAM-SHA-256) and on a unix socket inside its own directory (the
//! superuser without a password; only root and `postgres` can reach it).
//! Server settings are PostgreSQL's defaults (`fsync` and
//! `synchronous_commit` stay on) except `max_connections = 100`.
//! [`PgServer::start_with_tls`] also turns on TLS (`ssl = on`) with a
//! certificate for `localhost` from a CA made for that server.
//!
//! Every server is stopped and its directory removed when the test process
//! ends, however it ends (a panic, `panic = "abort"`, SIGKILL): each server
//! has a watchdog, a small shell in its own process group that reads a pipe
//! whose only writer is the test process. When that end closes (the
//! [`PgServer`] is dropped, or the process is gone and the kernel closed its
//! files) the watchdog stops the server (`pg_ctl stop -m fast`, then
//! `-m immediate`, then SIGKILL of the postmaster) and removes the
//! directory. [`PgServer::shared`] relies on this, as statics are never
//! dropped.
//!
//! Commands run as `postgres` through `setpriv` (no PAM session); the tests
//! run as root. Certificates are made with the `openssl` command.
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Where Debian installs each PostgreSQL major version (`<version>/bin`).
const PG_LIB: &str = "/usr/lib/postgresql";
/// The system user the server runs as (created by the postgresql package).
const PG_USER: &str = "postgres";
/// The superuser role of every cluster.
pub const SUPERUSER: &str = "postgres";
/// util-linux's `setpriv`, to run a command as [`PG_USER`].
const SETPRIV: &str = "/usr/bin/setpriv";
/// `PATH` of the commands run as `postgres`.
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Ports tried before giving up when another process takes the free port
/// between the probe and the server's bind.
const PORT_ATTEMPTS: u32 = 10;
/// What `pg_ctl -w` may wait for a start or stop, in seconds.
const PG_CTL_WAIT: &str = "60";
/// `PGCONNECT_TIMEOUT` of [`PgServer::psql`] and [`PgServer::psql_as`], in
/// seconds.
const PSQL_CONNECT_TIMEOUT: &str = "10";
/// How long the certificates of [`make_ca`] and
/// [`PgServer::start_with_tls`] are valid, in days.
const CERT_DAYS: &str = "2";
/// The name the certificate of [`PgServer::start_with_tls`] is for.
pub const TLS_HOST: &str = "localhost";

/// The watchdog: waits for EOF on stdin, then stops the server of
/// `$1/data` with pg_ctl `$2` and removes `$1`. A postmaster stopped by
/// SIGSTOP is continued first. SIGKILL only hits a process named
/// `postgres`.
const WATCHDOG: &str = r#"
trap '' HUP INT
while read -r line; do :; done
d="$1/data"
if [ -f "$d/postmaster.pid" ]; then
  pid=$(head -n 1 "$d/postmaster.pid")
  kill -CONT "$pid" 2>/dev/null
  sp="$3"
  as_pg() { "$sp" --reuid=postgres --regid=postgres --init-groups -- "$@"; }
  if ! as_pg "$2" -D "$d" -m fast -w -t 30 stop >/dev/null 2>&1 &&
     ! as_pg "$2" -D "$d" -m immediate -w -t 10 stop >/dev/null 2>&1; then
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] && kill -9 "$pid"
    sleep 1
  fi
fi
rm -rf "$1"
[ ! -e "$1" ]
"#;

/// The highest PostgreSQL version installed under `/usr/lib/postgresql`:
/// its `bin` directory. Panics, saying to run `make deps`, when the server,
/// the client or the `postgres` user is missing. Checked once per process.
pub fn bin_dir() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(PG_LIB)
            .map_err(|e| format!("{PG_LIB}: {e}"))?
            .filter_map(|e| {
                let e = e.ok()?;
                let v = e.file_name().to_str()?.parse().ok()?;
                Some((v, e.path().join("bin")))
            })
            .filter(|(_, bin)| bin.join("initdb").is_file())
            .collect();
        versions.sort();
        let (_, bin) = versions
            .pop()
            .ok_or_else(|| format!("no {PG_LIB}/<version>/bin/initdb"))?;
        for tool in ["pg_ctl", "postgres", "psql"] {
            if !bin.join(tool).is_file() {
                return Err(format!("{} is missing", bin.join(tool).display()));
            }
        }
        if !Path::new(SETPRIV).is_file() {
            return Err(format!("{SETPRIV} (util-linux) is missing"));
        }
        let id = Command::new("id")
            .args(["-u", PG_USER])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run id: {e}"))?;
        if !id.status.success() {
            return Err(format!("there is no system user {PG_USER:?}"));
        }
        Ok(bin)
    });
    match found {
        Ok(bin) => bin,
        Err(why) => panic!(
            "PostgreSQL is not installed ({why}): run `make deps`, which installs \
             postgresql and postgresql-client with apt-get"
        ),
    }
}

/// A name no other call in this process returns: `<prefix>_<pid>_<n>`, a
/// valid unquoted SQL identifier when `prefix` is one. For roles and
/// databases on a [`PgServer::shared`] server.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `s` as an SQL identifier: double-quoted, inner quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `s` as an SQL string literal: single-quoted, inner quotes doubled
/// (`standard_conforming_strings` is on, so backslashes are plain).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `s` percent-encoded for the user or database part of a URL.
fn url_part(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// 16 random bytes from the kernel, as hex.
fn random_hex() -> String {
    let mut buf = [0u8; 16];
    let mut f = fs::File::open("/dev/urandom").expect("open /dev/urandom");
    f.read_exact(&mut buf).expect("read /dev/urandom");
    buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Run `openssl ARGS` in `dir`; panics if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run openssl (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "openssl {}: {}{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `-newkey` arguments of `openssl req`: a P-256 key, unencrypted.
const NEW_EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Make a self-signed CA in `dir`: `NAME.crt` (PEM) and its key
/// `NAME.key`; the path of the certificate. (One that signed nothing is
/// the wrong CA for a client to check a server's certificate with.)
pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
    let subject = format!("/CN=crm2fa test {name}");
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &NEW_EC_KEY,
            &["-days", CERT_DAYS, "-subj", &subject],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            &["-keyout", &key, "-out", &crt],
        ]
        .concat(),
    );
    dir.join(crt)
}

/// Make the CA `ca.crt` in `dir` and a certificate for [`TLS_HOST`] signed
/// by it, `server.crt` with its key `server.key` (mode 0600); the path of
/// the CA's certificate.
fn make_server_certificates(dir: &Path) -> PathBuf {
    let ca = make_ca(dir, "ca");
    openssl(
        dir,
        &[
            &["req"][..],
            &NEW_EC_KEY,
            &["-subj", &format!("/CN={TLS_HOST}")],
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat(),
    );
    fs::write(
        dir.join("server.ext"),
        format!(
            "subjectAltName=DNS:{TLS_HOST}\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .expect("write server.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            CERT_DAYS,
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    // The server refuses a key others can read.
    fs::set_permissions(dir.join("server.key"), fs::Permissions::from_mode(0o600))
        .expect("chmod server.key");
    ca
}

/// A throwaway PostgreSQL cluster on 127.0.0.1, stopped and removed when
/// dropped (or, for [`PgServer::shared`], when the process ends).
#[derive(Debug)]
pub struct PgServer {
    /// The temporary directory: `data/` (the cluster), `s/` (the unix
    /// socket), `server.log`.
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    password: String,
    /// The CA of the server's certificate, with TLS.
    tls_ca: Option<PathBuf>,
    /// The watchdog; its stdin is the pipe whose closing stops the server.
    watchdog: Mutex<Option<Child>>,
}

impl PgServer {
    /// Create, start and return a new cluster: `initdb` (superuser
    /// `postgres` with a random password, `scram-sha-256` for TCP, `trust`
    /// on the private unix socket) and `pg_ctl start` on a free port;
    /// returns when the server accepts connections.
    pub fn start() -> PgServer {
        PgServer::start_with(false)
    }

    /// [`start`](Self::start) a server that also speaks TLS (`ssl = on`;
    /// clients choose, `sslmode=disable` still works) with a certificate
    /// for [`TLS_HOST`] (not for `127.0.0.1`) signed by a CA made for it:
    /// [`tls_ca`](Self::tls_ca).
    pub fn start_with_tls() -> PgServer {
        PgServer::start_with(true)
    }

    fn start_with(tls: bool) -> PgServer {
        let bin = bin_dir().to_path_buf();
        let tmp = tempfile::Builder::new()
            .prefix("crm2fa-pg-")
            .tempdir_in("/tmp")
            .expect("create a temporary directory in /tmp");
        let dir = tmp.keep();
        // Cleanup from here on is the watchdog's: a panic below drops `pg`.
        let watchdog = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("crm2fa-pg-watchdog")
            .arg(&dir)
            .arg(bin.join("pg_ctl"))
            .arg(SETPRIV)
            .env_clear()
            .env("PATH", PATH)
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        let watchdog = match watchdog {
            Ok(w) => w,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                panic!("start the watchdog shell: {e}");
            }
        };
        let mut pg = PgServer {
            dir,
            bin,
            port: 0,
            password: random_hex(),
            tls_ca: None,
            watchdog: Mutex::new(Some(watchdog)),
        };
        if tls {
            let certs = pg.tls_dir();
            fs::create_dir(&certs).expect("create the certificate directory");
            pg.tls_ca = Some(make_server_certificates(&certs));
        }
        pg.init();
        pg.port = pg.launch_on_free_port();
        pg
    }

    /// One server for every test of this test binary, started by the first
    /// call. Tests share it: give roles and databases [`unique_name`]s, and
    /// do not [`kill`](Self::kill), [`suspend`](Self::suspend) or
    /// [`restart`](Self::restart) it. It is stopped and removed by its
    /// watchdog when the process ends, however it ends.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(PgServer::start)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The certificate (PEM) of the CA that signed the server's, for a
    /// client's `verify-full`; None without TLS.
    pub fn tls_ca(&self) -> Option<&Path> {
        self.tls_ca.as_deref()
    }

    /// The server's temporary directory (removed when it stops).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory of the server's Unix-domain socket (local logins
    /// there are trusted: the tests' admin connections).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("s")
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| text(&b))
            .unwrap_or_default()
    }

    /// `postgres://ROLE@127.0.0.1:PORT/DB?sslmode=disable` (no password).
    pub fn url(&self, role: &str, db: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}?sslmode=disable",
            url_part(role),
            self.port,
            url_part(db)
        )
    }

    /// The superuser's URL, database `postgres`; its password is
    /// [`superuser_password`](Self::superuser_password).
    pub fn superuser_url(&self) -> String {
        self.url(SUPERUSER, "postgres")
    }

    /// The superuser's password (random per server).
    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// A command run as the `postgres` user in the server's directory, with
    /// a minimal environment.
    fn as_postgres(&self, tool: &str) -> Command {
        let mut c = Command::new(SETPRIV);
        c.args([
            "--reuid",
            PG_USER,
            "--regid",
            PG_USER,
            "--init-groups",
            "--",
        ])
        .arg(self.bin.join(tool))
        .env_clear()
        .env("PATH", PATH)
        .env("LC_ALL", "C")
        .current_dir(&self.dir)
        .stdin(Stdio::null());
        c
    }

    fn run(mut c: Command, what: &str) -> Output {
        c.output().unwrap_or_else(|e| panic!("run {what}: {e}"))
    }

    /// Make the directory the `postgres` user's and run `initdb`.
    fn init(&self) {
        let pwfile = self.dir.join("superuser.pw");
        fs::create_dir(self.socket_dir()).expect("create the socket directory");
        fs::write(&pwfile, format!("{}\n", self.password)).expect("write the password file");
        let chown = Self::run(
            {
                let mut c = Command::new("chown");
                c.arg("-R")
                    .arg(format!("{PG_USER}:"))
                    .arg(&self.dir)
                    .stdin(Stdio::null());
                c
            },
            "chown",
        );
        assert!(
            chown.status.success(),
            "chown {PG_USER}: {}: {}",
            self.dir.display(),
            text(&chown.stderr)
        );
        let mut initdb = self.as_postgres("initdb");
        initdb
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-locale",
                "--encoding=UTF8",
                // Not synced to disk at the end: nothing here must survive
                // a crash of the machine.
                "--no-sync",
            ]);
        let out = Self::run(initdb, "initdb");
        let _ = fs::remove_file(&pwfile);
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        let mut conf = String::from(
            "\n# crm2fa tests: room for 40 parallel connections and more\nmax_connections = 100\n",
        );
        if self.tls_ca.is_some() {
            let certs = self.tls_dir();
            let _ = write!(
                conf,
                "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\n",
                quote_literal(&certs.join("server.crt").display().to_string()),
                quote_literal(&certs.join("server.key").display().to_string())
            );
        }
        fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("append to postgresql.conf");
    }

    /// `pg_ctl start` on `port`: Ok, or Err(log of this attempt) when the
    /// server did not start.
    fn launch(&self, port: u16) -> Result<(), String> {
        let log_before = self.log().len();
        let opts = format!("-p {port} -h 127.0.0.1 -k {}", self.socket_dir().display());
        let mut c = self.as_postgres("pg_ctl");
        c.arg("-D")
            .arg(self.data_dir())
            .arg("-o")
            .arg(opts)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", PG_CTL_WAIT, "start"]);
        let out = Self::run(c, "pg_ctl start");
        if out.status.success() {
            return Ok(());
        }
        let log = self.log();
        Err(format!(
            "pg_ctl start on port {port} failed ({}): {}{}\nserver log:\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            log.get(log_before..).unwrap_or(&log)
        ))
    }

    fn launch_on_free_port(&self) -> u16 {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match self.launch(port) {
                Ok(()) => return port,
                Err(e) if e.contains("could not bind") || e.contains("already in use") => {
                    last = e;
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free port after {PORT_ATTEMPTS} attempts; last: {last}")
    }

    /// The postmaster's pid, from `postmaster.pid`, while it exists.
    fn postmaster_pid(&self) -> Option<String> {
        let s = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid = s.lines().next()?.trim().to_string();
        (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(pid)
    }

    /// The processes the postmaster started: a backend per session, and
    /// the server's own workers.
    fn children(&self) -> Vec<String> {
        let Some(parent) = self.postmaster_pid() else {
            return Vec::new();
        };
        let Ok(procs) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter_map(|p| {
                let pid = p.file_name().into_string().ok()?;
                let stat = fs::read_to_string(p.path().join("stat")).ok()?;
                // pid (comm) state ppid …: comm may hold spaces and parentheses.
                let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
                (ppid == parent).then_some(pid)
            })
            .collect()
    }

    fn signal(&self, sig: &str) -> bool {
        let Some(pid) = self.postmaster_pid() else {
            return false;
        };
        Self::send_signal(sig, &[pid])
    }

    fn send_signal(sig: &str, pids: &[String]) -> bool {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .args(pids)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Whether the server is up (`pg_ctl status`). A suspended server counts
    /// as up.
    pub fn is_running(&self) -> bool {
        let mut c = self.as_postgres("pg_ctl");
        c.arg("-D").arg(self.data_dir()).arg("status");
        Self::run(c, "pg_ctl status").status.success()
    }

    fn pg_ctl_stop(&self, mode: &str) -> Output {
        self.resume();
        let mut c = self.as_postgres("pg_ctl");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", PG_CTL_WAIT, "stop"]);
        Self::run(c, "pg_ctl stop")
    }

    /// Take the server down as a crash would (`pg_ctl stop -m immediate`:
    /// no checkpoint; committed data is recovered at the next start). The
    /// port refuses connections afterwards; the data is kept for
    /// [`restart`](Self::restart).
    pub fn kill(&self) {
        let out = self.pg_ctl_stop("immediate");
        assert!(
            out.status.success() || !self.is_running(),
            "pg_ctl stop -m immediate failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    /// Stop the server if it runs (`-m fast`) and start it again on the same
    /// port with the same data. Panics if it does not come up (the port may
    /// have been taken while it was down).
    pub fn restart(&self) {
        if self.is_running() {
            let out = self.pg_ctl_stop("fast");
            assert!(
                out.status.success(),
                "pg_ctl stop -m fast failed: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        if let Err(e) = self.launch(self.port) {
            panic!("restart: {e}");
        }
    }

    /// Freeze the postmaster (SIGSTOP): the port still accepts TCP
    /// connections but no login is answered, as with a hung server or host.
    /// Established sessions keep working. Undone by [`resume`](Self::resume)
    /// (and before any stop).
    pub fn suspend(&self) {
        assert!(self.signal("STOP"), "SIGSTOP to the postmaster failed");
    }

    /// Freeze the whole server (SIGSTOP to the postmaster and every
    /// process it started): established sessions get no answer either,
    /// as when the server's host hangs or the network drops its packets.
    /// Undone by [`resume`](Self::resume).
    pub fn freeze(&self) {
        self.suspend();
        let children = self.children();
        assert!(
            !children.is_empty() && Self::send_signal("STOP", &children),
            "SIGSTOP to the server's processes failed"
        );
    }

    /// Let a [`suspend`](Self::suspend)ed postmaster, or a
    /// [`freeze`](Self::freeze)d server, run again.
    pub fn resume(&self) {
        let children = self.children();
        if !children.is_empty() {
            Self::send_signal("CONT", &children);
        }
        self.signal("CONT");
    }

    /// Stop the server (`pg_ctl stop -m fast`) and remove its directory;
    /// panics if either fails. Dropping does the same without the checks.
    pub fn stop(mut self) {
        if let Err(e) = self.shut_down() {
            panic!("{e}");
        }
    }

    /// Close the watchdog's pipe and wait for it to stop the server and
    /// remove the directory; do it here if the watchdog could not.
    fn shut_down(&mut self) -> Result<(), String> {
        let child = self
            .watchdog
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut child) = child else {
            return Ok(());
        };
        drop(child.stdin.take());
        let status = child
            .wait()
            .map_err(|e| format!("wait for the watchdog: {e}"))?;
        if status.success() && !self.dir.exists() {
            return Ok(());
        }
        if self.postmaster_pid().is_some() {
            self.pg_ctl_stop("immediate");
        }
        fs::remove_dir_all(&self.dir).map_err(|e| format!("remove {}: {e}", self.dir.display()))?;
        Err(format!(
            "the watchdog failed ({status}); stopped and removed here"
        ))
    }

    /// Put `line` first in the server's `pg_hba.conf` (so it decides for
    /// the connections it matches) and [`restart`](Self::restart) the
    /// server, so that every connection from now on is under the new rules
    /// (a reload would take effect at a moment nobody can observe).
    pub fn prepend_hba(&self, line: &str) {
        let path = self.data_dir().join("pg_hba.conf");
        let old = fs::read_to_string(&path).expect("read pg_hba.conf");
        fs::write(&path, format!("{line}\n{old}")).expect("write pg_hba.conf");
        self.restart();
    }

    /// Run `sql` (one or more statements) as the superuser on database
    /// `postgres`; the rows, unaligned (`|` between columns), one a line.
    /// Panics on any error.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    /// [`psql`](Self::psql) on database `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        let target = [
            "-h".as_ref(),
            self.socket_dir().as_os_str(),
            "-p".as_ref(),
            self.port.to_string().as_ref(),
            "-U".as_ref(),
            SUPERUSER.as_ref(),
            "-d".as_ref(),
            db.as_ref(),
        ]
        .map(|s: &std::ffi::OsStr| s.to_os_string());
        self.run_psql(&target, None, sql)
            .unwrap_or_else(|e| panic!("psql as {SUPERUSER} on {db} failed: {e}\nSQL: {sql}"))
    }

    /// Run `sql` over TCP as whoever `url` names, logging in with
    /// `password`: the rows as [`psql`](Self::psql) returns them, or
    /// psql's error output.
    pub fn psql_as(&self, url: &str, password: &str, sql: &str) -> Result<String, String> {
        self.run_psql(&["-d".into(), url.into()], Some(password), sql)
    }

    fn run_psql(
        &self,
        target: &[std::ffi::OsString],
        password: Option<&str>,
        sql: &str,
    ) -> Result<String, String> {
        let mut c = Command::new(self.bin.join("psql"));
        // Only the arguments and the variables set here choose the target.
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("PG")) {
                c.env_remove(k);
            }
        }
        c.args(["-X", "-q", "-w", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(target)
            .args(["-f", "-"])
            .env("PGCONNECT_TIMEOUT", PSQL_CONNECT_TIMEOUT)
            .env("PGCLIENTENCODING", "UTF8")
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(pw) = password {
            c.env("PGPASSWORD", pw);
        }
        let mut child = c.spawn().map_err(|e| format!("run psql: {e}"))?;
        let mut stdin = child.stdin.take().expect("psql stdin");
        let sql_owned = sql.to_string();
        let writer = thread::spawn(move || {
            let _ = stdin.write_all(sql_owned.as_bytes());
        });
        let out = child
            .wait_with_output()
            .map_err(|e| format!("wait for psql: {e}"))?;
        let _ = writer.join();
        if out.status.success() {
            Ok(text(&out.stdout).trim_end_matches('\n').to_string())
        } else {
            Err(format!(
                "psql {}: {}",
                out.status,
                text(&out.stderr).trim_end()
            ))
        }
    }

    /// Create login role `role` with `password` (stored as SCRAM-SHA-256)
    /// and database `db` owned by it; the URL to log in with (the password
    /// is not in it).
    pub fn create_role_and_db(&self, role: &str, password: &str, db: &str) -> String {
        self.create_role(role, password);
        self.create_db(db, role);
        self.url(role, db)
    }

    /// Create login role `role` with `password`, no other rights.
    pub fn create_role(&self, role: &str, password: &str) {
        self.psql(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {};",
            quote_ident(role),
            quote_literal(password)
        ));
    }

    /// Create database `db` owned by role `owner`, which also owns its
    /// schema `public` (may create tables in it on every PostgreSQL
    /// version).
    pub fn create_db(&self, db: &str, owner: &str) {
        self.psql(&format!(
            "CREATE DATABASE {} OWNER {};",
            quote_ident(db),
            quote_ident(owner)
        ));
        self.psql_db(
            db,
            &format!("ALTER SCHEMA public OWNER TO {};", quote_ident(owner)),
        );
    }

    /// Create login role `role` with `password` that may only read and
    /// write rows in `db`: SELECT, INSERT, UPDATE, DELETE on every table of
    /// schema `public` and USAGE on its sequences, now and for those its
    /// owner creates later. No CREATE in the schema (revoked from PUBLIC),
    /// no temporary tables in `db` (TEMPORARY revoked from PUBLIC), no
    /// TRUNCATE, no DDL. The URL to log in with.
    pub fn grant_rw_role(&self, role: &str, password: &str, db: &str) -> String {
        let owner = self.psql(&format!(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = {};",
            quote_literal(db)
        ));
        assert!(!owner.is_empty(), "no database {db:?}");
        self.create_role(role, password);
        let (r, o, d) = (quote_ident(role), quote_ident(&owner), quote_ident(db));
        self.psql_db(
            db,
            &format!(
                "REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n\
                 REVOKE TEMPORARY ON DATABASE {d} FROM PUBLIC;\n\
                 GRANT CONNECT ON DATABASE {d} TO {r};\n\
                 GRANT USAGE ON SCHEMA public TO {r};\n\
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {r};\n\
                 GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {r};\n\
                 ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public \
                   GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r};\n\
                 ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public \
                   GRANT USAGE ON SEQUENCES TO {r};\n"
            ),
        );
        self.url(role, db)
    }

    /// Wait until the port refuses TCP connections, at most `timeout`;
    /// whether it does.
    pub fn wait_refused(port: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_err() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            eprintln!("PostgreSQL test server {}: {e}", self.dir.display());
        }
    }
}
