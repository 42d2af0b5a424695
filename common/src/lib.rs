//! crm2fa-common: everything crm2fa knows, shared by the PAM module and the CLI.
//!
//! Configuration, the store and its contract, TOTP, backup and recovery
//! codes, policy, lockout and audit live here. Nothing in this crate talks
//! to a terminal, and the current time is always passed in by the caller.
//!
//! Where things are: [`auth`] is the login, step by step; [`ops`] what the
//! CLI and the module do to a user's factors; [`store`] the store contract
//! and its backends; [`model`] the plain data and the lockout arithmetic;
//! [`audit`] the wording of every decision.
// Safe code only, but for the three calls of sigaction(2) in
// delivery::child (a caller that ignores SIGCHLD), each allowed where it is.
#![deny(unsafe_code)]
// The module runs this code inside every login: no panics on bad data.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod account;
pub mod audit;
pub mod auth;
pub mod codes;
pub mod config;
pub mod crypto;
pub mod delivery;
pub mod doctor;
pub mod error;
pub mod fsperm;
pub mod model;
pub mod ops;
pub mod policy;
pub mod qr;
pub mod store;
pub mod totp;

pub use error::{Error, Result};

/// What a URL carries as it is: RFC 3986's unreserved characters; every
/// other byte is percent-encoded (a socket directory in `[store] url`, a
/// value in an SMS gateway's URL).
pub const URL_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Seconds since the Unix epoch, read once at the edge of the program.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or(0)
}

/// This host's name, for the audit log and the account shown in apps.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// RFC 3339 UTC rendering of a Unix time, for humans and JSON.
pub fn rfc3339(t: i64) -> String {
    let secs = u64::try_from(t).unwrap_or(0);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}
