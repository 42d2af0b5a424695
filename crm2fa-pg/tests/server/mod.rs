//! A throwaway PostgreSQL server for the tests: `initdb` into a temporary
//! directory (as the `postgres` user when run as root), listening on a free
//! port of 127.0.0.1 with password (SCRAM) authentication, optionally with
//! TLS from a CA made for it. The server stops, and its directory goes, when
//! the test process ends, however it ends.
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crm2fa_common::store::pg::{PgTarget, SslMode};
use zeroize::Zeroizing;

/// The password of the roles the tests log in as.
pub(crate) const PASSWORD: &str = "pg-test-Secret-7Q";

/// A running server.
pub(crate) struct Server {
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
    /// The directory of its data, socket and certificates.
    pub(crate) dir: PathBuf,
    /// Closing this (when the process ends) stops the server.
    _keepalive: Mutex<ChildStdin>,
}

/// The directory of the PostgreSQL programs.
fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    versions
        .pop()
        .filter(|p| p.join("initdb").exists())
        .expect("PostgreSQL is not installed (apt-get install postgresql)")
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `program` run as the `postgres` user when this is root (the server
/// refuses to run as root), else as this user.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command) {
    let out = command.output().expect("run a command");
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let mut c = Command::new("openssl");
    c.current_dir(dir).args(args);
    run(c);
}

/// A CA (`ca.crt`) and a certificate for `localhost` signed by it
/// (`server.crt`, `server.key`); `other-ca.crt` is a CA that signed nothing
/// here.
fn make_certificates(dir: &Path) {
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=crm2fa test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
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
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
}

impl Server {
    /// Starts a server, with TLS (`ssl = on`) or without, and creates the
    /// roles `crm2fa` (owner of database `crm2fa`) and `outsider`, both
    /// with [`PASSWORD`].
    pub(crate) fn start(tls: bool) -> Server {
        let bin = bindir();
        let dir = tempfile::Builder::new()
            .prefix("crm2fa-pg-test-")
            .tempdir()
            .unwrap()
            .keep();
        if tls {
            make_certificates(&dir);
        }
        if is_root() {
            let mut c = Command::new("chown");
            c.arg("-R").arg("postgres:").arg(&dir);
            run(c);
        }
        let data = dir.join("data");
        let mut initdb = as_postgres(&bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args(["--no-sync", "-E", "UTF8", "--locale=C"]);
        run(initdb);

        let port = free_port();
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\ndeadlock_timeout = '200ms'\nmax_connections = 60\n",
            dir.display()
        );
        if tls {
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
                dir.display()
            ));
        }
        fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();

        // The server runs under a shell that stops it, and removes its
        // directory, when its standard input closes: when this process
        // ends.
        let log = fs::File::create(dir.join("server.log")).unwrap();
        let mut shell = as_postgres(Path::new("/bin/sh"));
        shell
            .arg("-c")
            .arg(r#""$1" -D "$2" & pid=$!; read _; kill -INT $pid; wait $pid; rm -rf "$3""#)
            .arg("sh")
            .arg(bin.join("postgres"))
            .arg(&data)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = shell.spawn().expect("start postgres");
        let keepalive = child.stdin.take().unwrap();

        let setup = [
            format!("CREATE ROLE crm2fa LOGIN PASSWORD '{PASSWORD}'"),
            "CREATE DATABASE crm2fa OWNER crm2fa".to_owned(),
            format!("CREATE ROLE outsider LOGIN PASSWORD '{PASSWORD}'"),
        ];
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut psql = Command::new(bin.join("psql"));
            psql.arg("-h")
                .arg(&dir)
                .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", "SELECT 1"]);
            if psql.output().is_ok_and(|o| o.status.success()) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "postgres ended ({status}): {}",
                    fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "postgres did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut psql = Command::new(bin.join("psql"));
        psql.arg("-h")
            .arg(&dir)
            .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
        for statement in &setup {
            psql.args(["-c", statement]);
        }
        run(psql);

        Server {
            port,
            dir,
            _keepalive: Mutex::new(keepalive),
        }
    }

    /// Create database `name`, owned by `crm2fa`.
    #[allow(dead_code)]
    pub(crate) fn create_db(&self, name: &str) {
        let mut psql = Command::new(bindir().join("psql"));
        psql.arg("-h")
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-c", &format!("CREATE DATABASE {name} OWNER crm2fa")]);
        run(psql);
    }

    /// Logging in to database `crm2fa` as `crm2fa` on 127.0.0.1, with a
    /// connect timeout of 5 s.
    pub(crate) fn target(&self, sslmode: SslMode) -> PgTarget {
        PgTarget {
            host: "127.0.0.1".to_owned(),
            port: self.port,
            user: "crm2fa".to_owned(),
            dbname: "crm2fa".to_owned(),
            password: Some(Zeroizing::new(PASSWORD.to_owned())),
            sslmode,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            client_library: PathBuf::new(),
        }
    }
}
