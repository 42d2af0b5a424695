//! crm2fad: runs the logins `pam_crm2fa.so` offers it, on a store it keeps
//! open between them.
//!
//! A login in the module alone opens the store afresh each time: SQLite
//! maps the WAL index, reads the WAL back and parses the schema; a
//! PostgreSQL store starts a server session. crm2fad keeps those open and
//! runs the very same login ([`crm2fa_common::auth::run`]), the module
//! conversing for it over a Unix socket of root's
//! ([`crm2fa_common::auth::relay`]). Where crm2fad is not running, the
//! module runs the login itself: nothing depends on it.
//!
//! Only root may connect (the socket is 0600 in a directory of root's, and
//! each connection's peer must be uid 0). Each login is served by its own
//! thread; past [`MAX_LOGINS`] at once, a connection is closed unanswered
//! and the module runs that login itself.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use clap::Parser;
use crm2fa_common::audit::Logger;
use crm2fa_common::auth::relay;
use crm2fa_common::fsperm;
use crm2fa_common::store::pool::Pool;

/// Logins served at once, at most.
const MAX_LOGINS: usize = 256;

/// crm2fa login service: runs the logins pam_crm2fa.so offers it, with the
/// store kept open between them.
#[derive(Debug, Parser)]
#[command(name = "crm2fad", version)]
struct Cli {
    /// The socket to listen on (the module's `socket=` names the same).
    #[arg(long, value_name = "PATH", default_value = relay::DEFAULT_SOCKET)]
    socket: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut log = Logger::new("crm2fad", true);
    if !nix::unistd::geteuid().is_root() {
        log.error("must run as root: it reads the configuration, the key and the store");
        return ExitCode::from(1);
    }
    let listener = match listen(&cli.socket) {
        Ok(l) => l,
        Err(why) => {
            log.error(&format!("cannot listen on {}: {why}", cli.socket.display()));
            return ExitCode::from(1);
        }
    };
    log.info(&format!("listening on {}", cli.socket.display()));
    let pool = Arc::new(Pool::new(Some(Box::new(crm2fa_pg::Connector))));
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log.warn(&format!("accepting a connection failed: {e}"));
                continue;
            }
        };
        if active.load(Ordering::Relaxed) >= MAX_LOGINS {
            // Closed unanswered: the module runs this login itself.
            continue;
        }
        let serving = Serving::start(&active);
        let pool = Arc::clone(&pool);
        let spawned = std::thread::Builder::new()
            .name("login".into())
            .spawn(move || {
                let _serving = serving;
                relay::serve(stream, pool.as_ref());
            });
        if let Err(e) = spawned {
            log.warn(&format!("cannot start a thread for a login: {e}"));
        }
    }
    ExitCode::SUCCESS
}

/// One login being served, counted until its thread ends (or never starts).
struct Serving(Arc<AtomicUsize>);

impl Serving {
    fn start(active: &Arc<AtomicUsize>) -> Serving {
        active.fetch_add(1, Ordering::Relaxed);
        Serving(Arc::clone(active))
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Listen on `path`, mode 0600, in a directory of root's closed to others'
/// writes (made 0755 if missing). A socket left by a crm2fad that is gone
/// is replaced; one that answers is another crm2fad's, and left alone.
fn listen(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        fsperm::ensure_dir(dir, 0o755).map_err(|e| e.to_string())?;
    }
    fsperm::check_parent_dirs(path).map_err(|e| e.to_string())?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err("another crm2fad is listening on it".into());
            }
            std::fs::remove_file(path).map_err(|e| format!("cannot remove the old socket: {e}"))?;
        }
        Ok(_) => return Err("it exists and is not a socket".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.to_string()),
    }
    // Made 0600 from the start: no moment when another user could connect.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    UnixListener::bind(path).map_err(|e| e.to_string())
}
