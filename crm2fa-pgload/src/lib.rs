//! The PostgreSQL client library, loaded only when `[store] url` is set: a
//! login on a host with a SQLite store never maps it. The library
//! (`libcrm2fa_pg.so`, crate `crm2fa-pg`) exports the C functions of
//! [`crm2fa_common::store::pg::abi`]; everything crosses as bytes in the
//! [`wire`] encoding. It is checked like the config (root's, closed to
//! writes by others, in root's directories) before it is loaded, loaded
//! once per process and never unloaded (a TLS or async runtime inside it may
//! have registered destructors).
//!
//! The PAM module connects through [`Loader`]; so does `crm2fa-admin
//! doctor`, which thereby checks the library a login would load.
#![allow(unsafe_code)]

use std::ffi::{c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crm2fa_common::fsperm::{self, Secrecy};
use crm2fa_common::store::pg::abi::{self, Buf};
use crm2fa_common::store::pg::{
    mismatched, wire, Done, PgClient, PgConnect, PgError, PgTarget, Stmt,
};

/// Loads the client library named by the target, then connects through it.
#[derive(Debug)]
pub struct Loader;

/// The functions of one loaded library.
struct Library {
    connect: abi::ConnectFn,
    pipeline: abi::PipelineFn,
    close: abi::CloseFn,
    free: abi::FreeFn,
}

/// Libraries loaded by this process, by path; never unloaded.
static LOADED: Mutex<Vec<(PathBuf, &'static Library)>> = Mutex::new(Vec::new());

fn fail(message: String) -> PgError {
    PgError {
        sqlstate: None,
        message,
    }
}

fn dlerror() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string owned by libc,
    // valid until the next dl* call on this thread; it is copied at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        return "unknown error".into();
    }
    // SAFETY: non-null, NUL-terminated (see above).
    unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
}

impl Library {
    fn load(path: &Path) -> Result<&'static Library, PgError> {
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, lib)) = loaded.iter().find(|(p, _)| p == path) {
            return Ok(lib);
        }
        // It runs as root inside every login: it must be root's.
        fsperm::open_trusted(path, Secrecy::NotWritableByOthers)
            .map_err(|e| fail(format!("will not load the PostgreSQL client library: {e}")))?;
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| fail(format!("{}: a NUL in the path", path.display())))?;
        // SAFETY: cpath is a valid NUL-terminated path. Loading runs the
        // library's initialisers: it was checked above to be root's, closed
        // to others, like the module itself.
        let handle = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(fail(format!(
                "cannot load the PostgreSQL client library {}: {}",
                path.display(),
                dlerror()
            )));
        }
        let sym = |name: &[u8]| -> Result<*mut c_void, PgError> {
            // SAFETY: handle is a live library handle; name is one of the
            // NUL-terminated symbol names of `abi`.
            let f = unsafe { libc::dlsym(handle, name.as_ptr().cast()) };
            if f.is_null() {
                let shown = String::from_utf8_lossy(name.strip_suffix(b"\0").unwrap_or(name));
                return Err(fail(format!(
                    "{} is not a crm2fa PostgreSQL client library (no {shown})",
                    path.display()
                )));
            }
            Ok(f)
        };
        let version_sym = sym(abi::ABI_VERSION)?;
        // SAFETY: the symbol was looked up by its `abi` name, whose signature
        // is `abi::AbiVersionFn`; the other symbols are taken only once the
        // library states with it that it has the `abi` signatures.
        let version: abi::AbiVersionFn = unsafe { std::mem::transmute(version_sym) };
        // SAFETY: a function of no arguments returning u32, per `abi`.
        let v = unsafe { version() };
        if v != wire::ABI_VERSION {
            return Err(fail(format!(
                "{} speaks version {v} of the client interface, this module {}: install the \
                 library from the same crm2fa release",
                path.display(),
                wire::ABI_VERSION
            )));
        }
        // SAFETY: see above.
        let lib = unsafe {
            Library {
                connect: std::mem::transmute::<*mut c_void, abi::ConnectFn>(sym(abi::CONNECT)?),
                pipeline: std::mem::transmute::<*mut c_void, abi::PipelineFn>(sym(abi::PIPELINE)?),
                close: std::mem::transmute::<*mut c_void, abi::CloseFn>(sym(abi::CLOSE)?),
                free: std::mem::transmute::<*mut c_void, abi::FreeFn>(sym(abi::FREE)?),
            }
        };
        let lib: &'static Library = Box::leak(Box::new(lib));
        loaded.push((path.to_path_buf(), lib));
        Ok(lib)
    }

    /// The bytes of `buf`, copied, and `buf` given back to the library.
    fn take(&self, buf: Buf) -> Vec<u8> {
        if buf.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: the library handed out `buf` (len bytes at ptr) and owns
        // it until FREE; it is copied before it is given back.
        let bytes = unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec();
        // SAFETY: `buf` came from this library and is given back once.
        unsafe { (self.free)(buf) };
        bytes
    }

    /// The error in `err` after a call that returned nonzero.
    fn error(&self, err: Buf) -> PgError {
        let bytes = self.take(err);
        wire::decode_error(&bytes)
            .unwrap_or_else(|e| fail(format!("the PostgreSQL client library failed ({e})")))
    }
}

impl PgConnect for Loader {
    fn prepare(&self, client_library: &Path) -> Result<Option<String>, PgError> {
        Library::load(client_library)?;
        Ok(Some(format!(
            "{} is root's and loads, client interface version {}",
            client_library.display(),
            wire::ABI_VERSION
        )))
    }

    fn connect(&self, target: &PgTarget) -> Result<Box<dyn PgClient>, PgError> {
        let lib = Library::load(&target.client_library)?;
        let encoded = wire::encode_target(target);
        let mut handle: *mut c_void = std::ptr::null_mut();
        let mut err = Buf::EMPTY;
        // SAFETY: `abi::CONNECT`: the target bytes are valid for their
        // length during the call; handle and err are valid out-pointers.
        let rc = unsafe { (lib.connect)(encoded.as_ptr(), encoded.len(), &mut handle, &mut err) };
        if rc != 0 || handle.is_null() {
            return Err(lib.error(err));
        }
        Ok(Box::new(Session { lib, handle }))
    }
}

/// A session opened by a loaded library; closed on drop.
struct Session {
    lib: &'static Library,
    handle: *mut c_void,
}

// SAFETY: a session is one handle owned by this value alone, used by one
// thread at a time (`&mut self`); the library's functions keep no
// thread-local state about it, as its own Send session (`postgres::Client`)
// does not.
unsafe impl Send for Session {}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: the handle came from CONNECT and is closed once.
        unsafe { (self.lib.close)(self.handle) };
    }
}

impl PgClient for Session {
    fn pipeline_within(
        &mut self,
        statements: &[Stmt<'_>],
        limit: Option<std::time::Duration>,
    ) -> Vec<Result<Done, PgError>> {
        let encoded = wire::encode_statements(statements);
        // At least a millisecond: 0 says "none".
        let limit_ms = limit.map_or(0, |l| {
            u64::try_from(l.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        let (mut outcomes, mut err) = (Buf::EMPTY, Buf::EMPTY);
        // SAFETY: `abi::PIPELINE`: a live handle; the statements valid for
        // their length; outcomes and err valid out-pointers.
        let rc = unsafe {
            (self.lib.pipeline)(
                self.handle,
                encoded.as_ptr(),
                encoded.len(),
                limit_ms,
                &mut outcomes,
                &mut err,
            )
        };
        let answered = match rc {
            0 => wire::decode_outcomes(&self.lib.take(outcomes)).map_err(|e| {
                fail(format!(
                    "the PostgreSQL client library sent bad outcomes ({e})"
                ))
            }),
            _ => Err(self.lib.error(err)),
        };
        match answered {
            Ok(done) if done.len() == statements.len() => done,
            Ok(_) => statements.iter().map(|_| Err(mismatched())).collect(),
            Err(e) => statements.iter().map(|_| Err(e.clone())).collect(),
        }
    }
}
