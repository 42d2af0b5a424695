//! Making factors: a new TOTP enrolment, a new backup code set, a recovery code.
//! The CLI and the in-login enrolment both go through here.
use zeroize::Zeroizing;

use crate::audit::Logger;
use crate::codes::{self, Code};
use crate::config::Config;
use crate::crypto::{HostKey, Secret};
use crate::error::{Error, Result};
use crate::store::{AuditEntry, NewEnrollment, Store, TotpState};
use crate::totp;

/// A new, pending enrolment: what the user needs to set up their app.
#[derive(Debug)]
pub struct Enrollment {
    pub user: String,
    pub secret: Secret,
    /// Base32 of the secret, for manual entry.
    pub base32: Zeroizing<String>,
    pub otpauth_uri: Zeroizing<String>,
}

/// The account name shown in the app: `user@host`.
pub fn account_name(user: &str) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

/// An audit entry for an administrative or login event.
pub fn audit_entry(
    now: i64,
    user: &str,
    service: &str,
    rhost: &str,
    event: &str,
    outcome: &str,
    detail: impl Into<String>,
) -> AuditEntry {
    AuditEntry {
        time: now,
        user: user.into(),
        service: service.into(),
        rhost: rhost.into(),
        event: event.into(),
        outcome: outcome.into(),
        detail: detail.into(),
    }
}

/// Who is enrolled, when, by which service, and whether an existing factor
/// may be replaced (an administrator's `enroll`) or not (a login's).
#[derive(Debug, Clone, Copy)]
pub struct EnrollRequest<'a> {
    pub user: &'a str,
    pub now: i64,
    pub service: &'a str,
    pub replace: bool,
}

/// Start a new TOTP enrolment for `user` (pending until a first valid code),
/// with its backup codes made and hashed now, so activation costs nothing.
pub fn begin(
    cfg: &Config,
    key: &HostKey,
    store: &mut Store,
    req: &EnrollRequest<'_>,
    log: &mut Logger,
) -> Result<Enrollment> {
    let EnrollRequest {
        user,
        now,
        service,
        replace,
    } = *req;
    let secret = Secret::random(totp::SECRET_LEN);
    let salt = codes::new_salt();
    let set = codes::backup_set(cfg.backup_code_count, &salt);
    let plain = Zeroizing::new(
        set.iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let hashes: Vec<_> = set.iter().map(|(_, h)| *h).collect();
    let sealed_codes = key.seal(user, plain.as_bytes());
    let sealed_secret = key.seal(user, secret.expose());
    let audit = audit_entry(
        now,
        user,
        service,
        "",
        "enroll",
        "pending",
        "new TOTP secret",
    );
    let new = NewEnrollment {
        sealed_secret: &sealed_secret,
        code_salt: &salt,
        backup_hashes: &hashes,
        sealed_codes: &sealed_codes,
        replace,
    };
    if !store.begin_enrollment(user, &new, now, &audit)? {
        return Err(Error::Refused(format!("{user} is already enrolled")));
    }
    log.entry(&audit);
    Ok(Enrollment {
        user: user.into(),
        base32: Zeroizing::new(totp::secret_base32(&secret)),
        otpauth_uri: Zeroizing::new(totp::otpauth_uri(&cfg.totp, &secret, &account_name(user))),
        secret,
    })
}

/// Open the sealed backup codes kept for display at activation.
pub fn open_codes(key: &HostKey, user: &str, sealed: &[u8]) -> Result<Vec<Code>> {
    if sealed.is_empty() {
        return Ok(vec![]);
    }
    let plain = key.open(user, sealed)?;
    let text =
        std::str::from_utf8(plain.expose()).map_err(|_| Error::Decrypt { user: user.into() })?;
    Ok(text.lines().map(Code::normalize).collect())
}

/// Void the user's backup codes and make a new set; returns the codes to show once.
pub fn regenerate_backup_codes(
    cfg: &Config,
    store: &mut Store,
    user: &str,
    now: i64,
    service: &str,
    log: &mut Logger,
) -> Result<Vec<Code>> {
    let record = store
        .user(user)?
        .filter(|r| r.state == TotpState::Active)
        .ok_or_else(|| {
            Error::Refused(format!("{user} has no active enrolment; enrol them first"))
        })?;
    let set = codes::backup_set(cfg.backup_code_count, &record.code_salt);
    let hashes: Vec<_> = set.iter().map(|(_, h)| *h).collect();
    let audit = audit_entry(
        now,
        user,
        service,
        "",
        "backup-codes",
        "regenerated",
        format!("{} new codes; the old set is void", set.len()),
    );
    if !store.replace_backup_codes(user, &hashes, now, &audit)? {
        return Err(Error::Refused(format!(
            "{user} has no active enrolment; enrol them first"
        )));
    }
    log.entry(&audit);
    Ok(set.into_iter().map(|(c, _)| c).collect())
}

/// Issue a one-time recovery code valid for `valid_seconds`; clears a lock.
pub fn issue_recovery(
    store: &mut Store,
    user: &str,
    valid_seconds: i64,
    now: i64,
    service: &str,
    log: &mut Logger,
) -> Result<(Code, i64)> {
    let salt = match store.user(user)? {
        Some(r) => r.code_salt,
        None => codes::new_salt(),
    };
    let code = Code::generate(codes::RECOVERY_LEN);
    let hash = code.hash(&salt);
    let expires = now + valid_seconds;
    let audit = audit_entry(
        now,
        user,
        service,
        "",
        "recovery",
        "issued",
        format!("valid until {}", crate::rfc3339(expires)),
    );
    store.add_recovery(user, &salt, &hash, expires, now, &audit)?;
    log.entry(&audit);
    Ok((code, expires))
}
