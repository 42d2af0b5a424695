//! The C interface the PAM module loads this library through (when built as
//! `libcrm2fa_pg.so`): the functions of [`crm2fa_common::store::pg::abi`],
//! each a thin shell around [`Connector`] and the session it opens, with
//! every argument and result as bytes in the [`wire`] encoding. No panic
//! crosses into the caller: each function catches it and reports an error.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crm2fa_common::store::pg::abi::Buf;
use crm2fa_common::store::pg::{wire, PgClient, PgConnect, PgError, Value};

use crate::Connector;

fn fail(message: &str) -> PgError {
    PgError {
        sqlstate: None,
        message: message.into(),
    }
}

/// Hand `bytes` to the caller (it gives them back with [`crm2fa_pg_free`]).
fn hand_out(bytes: Vec<u8>) -> Buf {
    let boxed = bytes.into_boxed_slice();
    let len = boxed.len();
    Buf {
        ptr: Box::into_raw(boxed).cast::<u8>(),
        len,
    }
}

/// Run `f`, writing an error (or a panic, as one) to `err`: 0 or 1.
///
/// # Safety
///
/// `err` must be null or valid for a write of a [`Buf`].
unsafe fn guarded(err: *mut Buf, f: impl FnOnce() -> Result<(), PgError>) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(fail("the PostgreSQL client library failed (a panic)")));
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            if !err.is_null() {
                // SAFETY: valid for a write, per this function's contract.
                unsafe { err.write(hand_out(wire::encode_error(&e))) };
            }
            1
        }
    }
}

/// The bytes at `ptr`, `len` long.
///
/// # Safety
///
/// `ptr` must be valid for reads of `len` bytes (or `len` be 0).
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 || ptr.is_null() {
        return &[];
    }
    // SAFETY: per this function's contract.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// The session behind a handle.
///
/// # Safety
///
/// `handle` must come from [`crm2fa_pg_connect`] and not be closed.
unsafe fn session<'a>(handle: *mut c_void) -> Result<&'a mut Box<dyn PgClient>, PgError> {
    // SAFETY: per this function's contract, a live Box<Box<dyn PgClient>>.
    unsafe { handle.cast::<Box<dyn PgClient>>().as_mut() }.ok_or_else(|| fail("no session"))
}

fn params_of(b: &[u8]) -> Result<Vec<Value>, PgError> {
    wire::decode_params(b).map_err(|e| fail(&e))
}

fn text(b: &[u8]) -> Result<&str, PgError> {
    std::str::from_utf8(b).map_err(|_| fail("the statement is not UTF-8"))
}

/// The version of the interface this library speaks.
#[no_mangle]
pub extern "C" fn crm2fa_pg_abi_version() -> u32 {
    wire::ABI_VERSION
}

/// Connect to the encoded target; the session's handle in `handle`.
///
/// # Safety
///
/// `target` valid for `len` bytes; `handle` and `err` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn crm2fa_pg_connect(
    target: *const u8,
    len: usize,
    handle: *mut *mut c_void,
    err: *mut Buf,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        guarded(err, || {
            let t = wire::decode_target(bytes(target, len)).map_err(|e| fail(&e))?;
            let client: Box<dyn PgClient> = Connector.connect(&t)?;
            if handle.is_null() {
                return Err(fail("no place for the handle"));
            }
            handle.write(Box::into_raw(Box::new(client)).cast::<c_void>());
            Ok(())
        })
    }
}

/// Run statements without parameters.
///
/// # Safety
///
/// A live `handle`; `sql` valid for `len` bytes; `err` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn crm2fa_pg_batch(
    handle: *mut c_void,
    sql: *const u8,
    len: usize,
    err: *mut Buf,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe { guarded(err, || session(handle)?.batch(text(bytes(sql, len))?)) }
}

/// Run one statement with encoded parameters; rows changed in `changed`.
///
/// # Safety
///
/// A live `handle`; `sql` and `params` valid for their lengths; `changed`
/// and `err` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn crm2fa_pg_execute(
    handle: *mut c_void,
    sql: *const u8,
    sql_len: usize,
    params: *const u8,
    params_len: usize,
    changed: *mut u64,
    err: *mut Buf,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        guarded(err, || {
            let values = params_of(bytes(params, params_len))?;
            let p: Vec<_> = values.iter().map(Value::as_param).collect();
            let n = session(handle)?.execute(text(bytes(sql, sql_len))?, &p)?;
            if !changed.is_null() {
                changed.write(n);
            }
            Ok(())
        })
    }
}

/// Run one query with encoded parameters; the encoded rows in `rows`.
///
/// # Safety
///
/// As [`crm2fa_pg_execute`], with `rows` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn crm2fa_pg_query(
    handle: *mut c_void,
    sql: *const u8,
    sql_len: usize,
    params: *const u8,
    params_len: usize,
    rows: *mut Buf,
    err: *mut Buf,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        guarded(err, || {
            let values = params_of(bytes(params, params_len))?;
            let p: Vec<_> = values.iter().map(Value::as_param).collect();
            let found = session(handle)?.query(text(bytes(sql, sql_len))?, &p)?;
            if rows.is_null() {
                return Err(fail("no place for the rows"));
            }
            rows.write(hand_out(wire::encode_rows(&found)));
            Ok(())
        })
    }
}

/// End the session and free its handle.
///
/// # Safety
///
/// A handle from [`crm2fa_pg_connect`], closed once (or null).
#[no_mangle]
pub unsafe extern "C" fn crm2fa_pg_close(handle: *mut c_void) {
    if handle.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per this function's contract: the Box made by connect.
        drop(unsafe { Box::from_raw(handle.cast::<Box<dyn PgClient>>()) });
    }));
}

/// Give back bytes this library handed out.
///
/// # Safety
///
/// A [`Buf`] this library handed out, given back once.
#[no_mangle]
pub unsafe extern "C" fn crm2fa_pg_free(buf: Buf) {
    if buf.ptr.is_null() {
        return;
    }
    // SAFETY: per this function's contract: the boxed slice of hand_out.
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(buf.ptr, buf.len)) });
}
