//! The C interface the PAM module loads this library through (when built as
//! `libcrm2fa_pg.so`): the functions of [`crm2fa_common::store::pg::abi`],
//! each a thin shell around [`Connector`] and the session it opens, with
//! every argument and result as bytes in the [`wire`] encoding. No panic
//! crosses into the caller: each function catches it and reports an error.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crm2fa_common::store::pg::abi::Buf;
use crm2fa_common::store::pg::wire::Statement;
use crm2fa_common::store::pg::{wire, Param, PgClient, PgConnect, PgError, Stmt, Value};

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

/// Run the encoded statements as a pipeline, each answer within `limit_ms`
/// milliseconds (0: the session's own bound); the encoded outcome of each
/// in `outcomes`.
///
/// # Safety
///
/// A live `handle`; `statements` valid for `len` bytes; `outcomes` and
/// `err` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn crm2fa_pg_pipeline(
    handle: *mut c_void,
    statements: *const u8,
    len: usize,
    limit_ms: u64,
    outcomes: *mut Buf,
    err: *mut Buf,
) -> i32 {
    // SAFETY: per this function's contract.
    unsafe {
        guarded(err, || {
            let decoded = wire::decode_statements(bytes(statements, len)).map_err(|e| fail(&e))?;
            let params: Vec<Vec<Param<'_>>> = decoded
                .iter()
                .map(|s| match s {
                    Statement::Batch(_) => Vec::new(),
                    Statement::Execute(_, v) | Statement::Query(_, v) => {
                        v.iter().map(Value::as_param).collect()
                    }
                })
                .collect();
            let stmts: Vec<Stmt<'_>> = decoded
                .iter()
                .zip(&params)
                .map(|(s, p)| match s {
                    Statement::Batch(sql) => Stmt::Batch(sql),
                    Statement::Execute(sql, _) => Stmt::Execute(sql, p),
                    Statement::Query(sql, _) => Stmt::Query(sql, p),
                })
                .collect();
            let limit = (limit_ms > 0).then(|| std::time::Duration::from_millis(limit_ms));
            let done = session(handle)?.pipeline_within(&stmts, limit);
            if outcomes.is_null() {
                return Err(fail("no place for the outcomes"));
            }
            outcomes.write(hand_out(wire::encode_outcomes(&done)));
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
