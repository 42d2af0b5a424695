//! What the CLI and the module both do to a user's factors: enrol, make
//! codes, check a code, decide the policy, reset, disable, unlock. Each
//! operation writes its audit row in the store's transaction and the same
//! line to syslog once it committed.
use crate::account::Account;
use crate::audit::{AuditCtx, AuditEntry, Fact, Logger};
use crate::config::Config;
use crate::crypto::HostKey;
use crate::error::{Error, Result};
use crate::model::UserRecord;
use crate::policy::{self, Decision};
use crate::store::Store;

mod check;
mod codes;
mod contact;
mod enroll;
mod import;
mod store_copy;
mod users;

pub use check::{CodeCheck, Drift};
pub use contact::{Change, Notice};
pub use enroll::{account_name, open_codes, Enrollment};
pub use import::{parse_google_authenticator, parse_oath, ImportPlan, ImportedFactor, Source};
pub use store_copy::{copy_store, Copied};
pub use users::Status;

/// The service name the CLI writes to the audit log.
pub const ADMIN_SERVICE: &str = "crm2fa-admin";

/// Everything an operation needs: the configuration, the store, the log,
/// and who acts from where.
pub struct Ops<'a> {
    /// The configuration.
    pub cfg: &'a Config,
    /// The open store.
    pub store: &'a mut dyn Store,
    /// Syslog.
    pub log: &'a mut Logger,
    /// The service and remote host written to the audit log.
    pub ctx: AuditCtx,
}

impl std::fmt::Debug for Ops<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("store", &self.store.location())
            .field("ctx", &self.ctx)
            .finish()
    }
}

impl Ops<'_> {
    /// The host key, read from `[store] key_file`.
    pub fn key(&self) -> Result<HostKey> {
        HostKey::load(&self.cfg.store.key_file)
    }

    /// The audit row recording `fact` about `user` at `now`.
    pub fn entry(&self, now: i64, user: &str, fact: &Fact) -> AuditEntry {
        self.ctx.entry(now, user, fact)
    }

    /// Record a fact that changes nothing else: audit table and syslog.
    /// The store first: crm2fad tells the module a login is its own before
    /// that write, so no line goes out for a login the module may still run.
    pub fn record(&mut self, now: i64, user: &str, fact: &Fact) -> Result<()> {
        let e = self.entry(now, user, fact);
        let stored = self.store.record(&e);
        self.log.entry(&e);
        stored
    }

    /// The policy's decision for `user` at `now`, as the login makes it.
    pub fn decide(&mut self, user: &str, now: i64) -> Result<Decision> {
        let (record, has_recovery) = self.store.user_and_recovery(user, now)?;
        self.decide_with(user, record.as_ref(), has_recovery)
    }

    /// The policy's decision for `user` at `now`, and what the login does
    /// with it for them.
    pub fn explain(&mut self, user: &str, now: i64) -> Result<(Decision, policy::AtLogin)> {
        let (record, has_recovery) = self.store.user_and_recovery(user, now)?;
        let d = self.decide_with(user, record.as_ref(), has_recovery)?;
        let enrolled = record.as_ref().is_some_and(UserRecord::has_factor);
        let at_login = d.at_login(enrolled, has_recovery, self.cfg.policy.unenrolled);
        Ok((d, at_login))
    }

    /// The policy's decision for `user`, whose record is `record` and who
    /// holds a valid recovery code or not, as read by the caller.
    pub fn decide_with(
        &self,
        user: &str,
        record: Option<&UserRecord>,
        has_recovery: bool,
    ) -> Result<Decision> {
        let gids = if policy::needs_groups(&self.cfg.policy) {
            Account::lookup(user)?
                .ok_or_else(|| Error::NoSuchAccount { user: user.into() })?
                .group_ids()?
        } else {
            vec![]
        };
        Ok(policy::decide(
            &self.cfg.policy,
            user,
            &gids,
            record,
            has_recovery,
        ))
    }
}
