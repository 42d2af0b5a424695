//! A user's state, and the administrator's switches: reset, disable,
//! enable, unlock.
use super::Ops;
use crate::audit::{AuditEntry, Fact};
use crate::codes;
use crate::config::LockoutConfig;
use crate::delivery;
use crate::error::{Error, ProtectedAction, Result};
use crate::model::{lock_length, Factor, UserRecord};
use crate::policy;
use crate::store::Store;

/// What `status` and `list` show of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The user.
    pub user: String,
    /// none, pending, active or disabled.
    pub state: &'static str,
    /// The factors a login would accept now.
    pub methods: Vec<Factor>,
    /// Unused backup codes.
    pub backup_codes_left: u32,
    /// Wrong codes in a row.
    pub failures: u32,
    /// When the current lock ends, if locked.
    pub locked_until: Option<i64>,
    /// Locks since the last success or unlock.
    pub lock_level: u32,
    /// How long the next lock would last.
    pub next_lock_seconds: i64,
    /// The last successful code.
    pub last_success: Option<i64>,
    /// Remote hosts the user is not asked again from, and until when.
    pub remembered: Vec<(String, i64)>,
    /// Where email codes and notices go, masked.
    pub email: Option<String>,
    /// Where SMS codes go, masked.
    pub phone: Option<String>,
}

impl Status {
    /// The status of `user`, whose record is `record`, at `now`, under the
    /// lockout rules `lockout`.
    pub fn of(
        user: &str,
        record: Option<&UserRecord>,
        has_recovery: bool,
        now: i64,
        lockout: &LockoutConfig,
    ) -> Status {
        let none = UserRecord::new(user, vec![]);
        let r = record.unwrap_or(&none);
        Status {
            user: user.into(),
            state: r.display_state(),
            methods: r.methods(has_recovery),
            backup_codes_left: r.backup_codes_left(),
            failures: r.lock.failures,
            locked_until: r.locked_at(now),
            lock_level: r.lock.level,
            next_lock_seconds: lock_length(lockout, r.lock.level),
            last_success: r.last_success,
            remembered: vec![],
            email: r.email.as_deref().map(delivery::mask_email),
            phone: r.phone.as_deref().map(delivery::mask_phone),
        }
    }
}

impl Ops<'_> {
    /// The status of one user.
    pub fn status(&mut self, user: &str, now: i64) -> Result<Status> {
        let (record, has_recovery) = self.store.user_and_recovery(user, now)?;
        let mut status = Status::of(user, record.as_ref(), has_recovery, now, &self.cfg.lockout);
        status.remembered = self.store.remembered(user, now)?;
        Ok(status)
    }

    /// The status of every user the store knows.
    pub fn statuses(&mut self, now: i64) -> Result<Vec<Status>> {
        let users = self.store.users()?;
        let mut out = Vec::with_capacity(users.len());
        for r in &users {
            let has_recovery = self.store.has_valid_recovery(&r.name, now)?;
            out.push(Status::of(
                &r.name,
                Some(r),
                has_recovery,
                now,
                &self.cfg.lockout,
            ));
        }
        Ok(out)
    }

    /// Refuse a reset that [`Ops::reset`] would refuse, before asking
    /// whether to go ahead.
    pub fn check_reset(&mut self, user: &str) -> Result<()> {
        policy::ensure_unprotected(&self.cfg.policy, user, ProtectedAction::Reset)?;
        match self.store.user(user)? {
            Some(_) => Ok(()),
            None => Err(Error::UnknownUser { user: user.into() }),
        }
    }

    /// Lost device: remove every factor and code of `user`. Refused for
    /// protected users.
    pub fn reset(&mut self, user: &str, now: i64) -> Result<()> {
        self.check_reset(user)?;
        self.change(user, now, &Fact::Reset, |store, audit| {
            store.reset(user, now, audit)
        })
    }

    /// Refuse a `disable` that [`Ops::disable`] would refuse, before asking
    /// whether to go ahead.
    pub fn check_disable(&mut self, user: &str, override_policy: bool, now: i64) -> Result<()> {
        policy::ensure_unprotected(&self.cfg.policy, user, ProtectedAction::Disable)?;
        let d = self.decide(user, now)?;
        if d.required && !override_policy {
            return Err(Error::PolicyRequires {
                user: user.into(),
                reason: d.reason,
            });
        }
        Ok(())
    }

    /// Turn `user`'s 2FA off, factor or not: the per-user exemption.
    /// Refused for protected users, and when the policy requires 2FA of the
    /// user unless `override_policy`.
    pub fn disable(&mut self, user: &str, override_policy: bool, now: i64) -> Result<()> {
        self.check_disable(user, override_policy, now)?;
        self.change(user, now, &Fact::Disabled, |store, audit| {
            store.disable(user, &codes::new_salt(), now, audit)?;
            Ok(true)
        })
    }

    /// Turn `user`'s 2FA back on with the factors they had.
    pub fn enable(&mut self, user: &str, now: i64) -> Result<()> {
        self.change(user, now, &Fact::Enabled, |store, audit| {
            store.enable(user, now, audit)
        })
    }

    /// Forget `host`, or every remembered host, of `user`: they are asked
    /// for a code again from there. How many were forgotten.
    pub fn forget(&mut self, user: &str, host: Option<&str>, now: i64) -> Result<usize> {
        let remembered = self.store.remembered(user, now)?;
        let fact = Fact::Forgotten {
            host: host.map(String::from),
            count: host.map_or(remembered.len(), |_| 1),
        };
        let audit = self.entry(now, user, &fact);
        let n = self.store.forget(user, host, &audit)?;
        if n > 0 {
            self.log.entry(&audit);
        }
        Ok(n)
    }

    /// Clear `user`'s lockout.
    pub fn unlock(&mut self, user: &str, now: i64) -> Result<()> {
        self.change(user, now, &Fact::Unlocked, |store, audit| {
            store.unlock(user, now, audit)
        })
    }

    /// Make a change recorded as `fact`: `write` performs it with the audit
    /// row in its transaction and says whether the store knew `user`; the
    /// same line goes to syslog once it is committed.
    fn change(
        &mut self,
        user: &str,
        now: i64,
        fact: &Fact,
        write: impl FnOnce(&mut dyn Store, &AuditEntry) -> Result<bool>,
    ) -> Result<()> {
        let audit = self.entry(now, user, fact);
        if !write(&mut *self.store, &audit)? {
            return Err(Error::UnknownUser { user: user.into() });
        }
        self.log.entry(&audit);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TotpState;

    const LOCKOUT: LockoutConfig = LockoutConfig {
        max_failures: 3,
        lock_seconds: 60,
        max_lock_seconds: 600,
    };

    #[test]
    fn status_lists_the_methods_a_login_would_accept() {
        let mut r = UserRecord::new("u", vec![]);
        assert!(Status::of("u", Some(&r), false, 0, &LOCKOUT)
            .methods
            .is_empty());
        r.state = TotpState::Active;
        r.secret = Some(vec![1]);
        r.unused_backup_codes = 2;
        let s = Status::of("u", Some(&r), true, 0, &LOCKOUT);
        assert_eq!(
            s.methods,
            vec![Factor::Totp, Factor::Backup, Factor::Recovery]
        );
        r.state = TotpState::Pending;
        assert_eq!(
            Status::of("u", Some(&r), false, 0, &LOCKOUT).methods,
            vec![Factor::Totp],
            "a pending secret's first code is accepted; its backup codes are not yet"
        );
        assert_eq!(
            Status::of("x", None, true, 0, &LOCKOUT).methods,
            vec![Factor::Recovery]
        );
    }

    #[test]
    fn status_shows_a_lock_only_while_it_holds() {
        let mut r = UserRecord::new("u", vec![]);
        r.lock.locked_until = Some(100);
        r.lock.level = 2;
        let s = Status::of("u", Some(&r), false, 99, &LOCKOUT);
        assert_eq!(
            (s.locked_until, s.lock_level, s.next_lock_seconds),
            (Some(100), 2, 240)
        );
        assert_eq!(
            Status::of("u", Some(&r), false, 100, &LOCKOUT).locked_until,
            None
        );
    }
}
