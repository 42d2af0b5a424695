//! Backup code sets and recovery codes.
use super::Ops;
use crate::audit::Fact;
use crate::codes::{self, Code};
use crate::error::{Error, Result};

impl Ops<'_> {
    /// Void the user's backup codes and make a new set; the codes to show once.
    pub fn regenerate_backup_codes(&mut self, user: &str, now: i64) -> Result<Vec<Code>> {
        let not_active = || Error::NotActive { user: user.into() };
        let record = self
            .store
            .user(user)?
            .filter(|r| r.backup_codes_usable())
            .ok_or_else(not_active)?;
        let set = codes::backup_set(self.cfg.backup_code_count, &record.code_salt);
        let hashes: Vec<_> = set.iter().map(|(_, h)| *h).collect();
        let audit = self.entry(
            now,
            user,
            &Fact::BackupCodesRegenerated { count: set.len() },
        );
        if !self
            .store
            .replace_backup_codes(user, &record.code_salt, &hashes, now, &audit)?
        {
            return Err(not_active());
        }
        self.log.entry(&audit);
        Ok(set.into_iter().map(|(c, _)| c).collect())
    }

    /// Issue a one-time recovery code valid for `valid_seconds`; it voids
    /// an earlier unused one and clears a lock. The code and its expiry.
    pub fn issue_recovery(
        &mut self,
        user: &str,
        valid_seconds: i64,
        now: i64,
    ) -> Result<(Code, i64)> {
        let salt = match self.store.user(user)? {
            Some(r) => r.code_salt,
            None => codes::new_salt(),
        };
        let code = Code::generate(codes::RECOVERY_LEN);
        let hash = code.hash(&salt);
        let expires = now + valid_seconds;
        let audit = self.entry(now, user, &Fact::RecoveryIssued { until: expires });
        self.store
            .add_recovery(user, &salt, &hash, expires, now, &audit)?;
        self.log.entry(&audit);
        Ok((code, expires))
    }
}
