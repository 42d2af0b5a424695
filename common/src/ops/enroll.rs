//! A new TOTP enrolment, and its activation by a first code.
use zeroize::Zeroizing;

use super::Ops;
use crate::audit::Fact;
use crate::codes::{self, Code};
use crate::crypto::{HostKey, Secret};
use crate::error::{Error, Result};
use crate::model::{NewEnrollment, Origin, SeenFactors, TotpMatch, TotpState};
use crate::totp;

/// A new, pending enrolment: what the user needs to set up their app.
pub struct Enrollment {
    /// Whose.
    pub user: String,
    /// The TOTP secret.
    pub secret: Secret,
    /// Base32 of the secret, for manual entry.
    pub base32: Zeroizing<String>,
    /// The `otpauth://` URI the QR code holds.
    pub otpauth_uri: Zeroizing<String>,
    /// The secret as the store holds it (sealed by the host key): a login
    /// that made the enrolment checks that the row still holds this one.
    pub sealed_secret: Vec<u8>,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The account name shown in the app: `user@host`.
pub fn account_name(user: &str) -> String {
    format!("{user}@{}", crate::hostname())
}

/// Open the sealed backup codes kept for display at activation.
pub fn open_codes(key: &HostKey, user: &str, sealed: &[u8]) -> Result<Vec<Code>> {
    if sealed.is_empty() {
        return Ok(vec![]);
    }
    let plain = key.open(user, sealed)?;
    let text = std::str::from_utf8(plain.expose()).map_err(|_| key.decrypt_error(user))?;
    Ok(text.lines().map(Code::normalize).collect())
}

impl Ops<'_> {
    /// What the user needs to set up their app for `secret`, stored as
    /// `sealed_secret`.
    fn enrollment(&self, user: &str, secret: Secret, sealed_secret: Vec<u8>) -> Enrollment {
        Enrollment {
            user: user.into(),
            base32: totp::secret_base32(&secret),
            otpauth_uri: totp::otpauth_uri(&self.cfg.totp, &secret, &account_name(user)),
            secret,
            sealed_secret,
        }
    }

    /// `user`'s pending TOTP enrolment, as [`begin_enrollment`] showed it
    /// (an administrator confirming it with a code the user read from
    /// their app); [`Error::NotPending`] if there is none.
    ///
    /// [`begin_enrollment`]: Self::begin_enrollment
    pub fn pending_enrollment(&mut self, key: &HostKey, user: &str) -> Result<Enrollment> {
        let rec = self
            .store
            .user(user)?
            .ok_or_else(|| Error::NotEnrolled { user: user.into() })?;
        match (rec.state, &rec.secret) {
            (TotpState::Pending, Some(sealed)) => {
                let secret = key.open(user, sealed)?;
                Ok(self.enrollment(user, secret, sealed.clone()))
            }
            _ => Err(Error::NotPending {
                user: user.into(),
                state: rec.display_state(),
            }),
        }
    }

    /// Start a new TOTP enrolment for `user`, pending until a first valid
    /// code, with its backup codes made and hashed now, so activation costs
    /// nothing. An administrator's enrolment replaces an existing factor,
    /// only while it is still `seen` when given ([`Error::Changed`]); a
    /// login's never does ([`Error::AlreadyEnrolled`]).
    pub fn begin_enrollment(
        &mut self,
        key: &HostKey,
        user: &str,
        now: i64,
        origin: Origin,
        seen: Option<&SeenFactors>,
    ) -> Result<Enrollment> {
        let secret = Secret::random(totp::SECRET_LEN);
        let salt = match self.store.user(user)? {
            Some(r) => r.code_salt,
            None => codes::new_salt(),
        };
        let set = codes::backup_set(self.cfg.backup_code_count, &salt);
        let plain = Zeroizing::new(
            set.iter()
                .map(|(c, _)| c.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        );
        let hashes: Vec<_> = set.iter().map(|(_, h)| *h).collect();
        let sealed_codes = key.seal(user, plain.as_bytes());
        let sealed_secret = key.seal(user, secret.expose());
        let audit = self.entry(now, user, &Fact::Enrolled);
        let new = NewEnrollment {
            sealed_secret: &sealed_secret,
            code_salt: &salt,
            backup_hashes: &hashes,
            sealed_codes: &sealed_codes,
            replace: origin == Origin::Admin,
            seen,
            origin,
        };
        if !self.store.begin_enrollment(user, &new, now, &audit)? {
            return Err(Error::AlreadyEnrolled { user: user.into() });
        }
        self.log.entry(&audit);
        Ok(self.enrollment(user, secret, sealed_secret))
    }

    /// Activate `user`'s pending enrolment with `code` from their app: the
    /// new backup codes to show once, or `None` if the code is wrong or its
    /// step was already used. Counts nothing toward the lockout.
    pub fn confirm(&mut self, user: &str, code: &str, now: i64) -> Result<Option<Vec<Code>>> {
        let rec = self
            .store
            .user(user)?
            .ok_or_else(|| Error::NotEnrolled { user: user.into() })?;
        let sealed = match (rec.state, &rec.secret) {
            (TotpState::Pending, Some(s)) => s.clone(),
            _ => {
                return Err(Error::NotPending {
                    user: user.into(),
                    state: rec.display_state(),
                })
            }
        };
        let key = self.key()?;
        let secret = key.open(user, &sealed)?;
        let Some(step) = totp::matching_step(&self.cfg.totp, &secret, code, now) else {
            return Ok(None);
        };
        let audit = self.entry(now, user, &Fact::Confirmed);
        let totp = TotpMatch {
            step,
            sealed_secret: sealed,
        };
        match self.store.confirm(user, &totp, now, &audit)? {
            Some(codes) => {
                self.log.entry(&audit);
                Ok(Some(open_codes(&key, user, &codes)?))
            }
            None => Ok(None),
        }
    }
}
