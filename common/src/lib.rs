//! crm2fa-common: everything crm2fa knows, shared by the PAM module and the CLI.
//!
//! Configuration, the encrypted store, TOTP, backup and recovery codes, policy,
//! lockout and audit live here. Nothing in this crate talks to a terminal, and
//! the current time is always passed in by the caller.
#![forbid(unsafe_code)]

pub mod audit;
pub mod codes;
pub mod config;
pub mod crypto;
pub mod doctor;
pub mod enroll;
pub mod error;
pub mod fsperm;
pub mod login;
pub mod policy;
pub mod qr;
pub mod store;
pub mod totp;

pub use error::{Error, Result};

/// Seconds since the Unix epoch, read once at the edge of the program.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC rendering of a Unix time, for humans and JSON.
pub fn rfc3339(t: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
