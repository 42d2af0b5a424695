//! Where codes and notices go: contacts, a delivery channel as a factor,
//! and the email that tells a user their 2FA was changed.
use super::Ops;
use crate::audit::{AuditEntry, Fact};
use crate::codes::{self, Code};
use crate::delivery::{self, Channel, Message, SendError, Sender};
use crate::error::{Error, Result};

/// A change to a user's 2FA that they are told of by email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// 2FA turned off (`disable`).
    Disabled,
    /// Every factor removed (`reset`).
    Reset,
    /// A new set of backup codes (`backup-codes --regenerate`).
    BackupCodes,
    /// A recovery code issued, valid until then (`recovery`).
    Recovery {
        /// When it expires.
        until: i64,
    },
}

impl Change {
    /// The change in one word, for the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Disabled => "disable",
            Change::Reset => "reset",
            Change::BackupCodes => "backup-codes",
            Change::Recovery { .. } => "recovery",
        }
    }

    fn subject(self) -> &'static str {
        match self {
            Change::Disabled => "two-factor login turned off",
            Change::Reset => "two-factor login reset",
            Change::BackupCodes => "new backup codes",
            Change::Recovery { .. } => "recovery code issued",
        }
    }

    fn what(self) -> String {
        match self {
            Change::Disabled => "was turned off: logging in now needs only your password".into(),
            Change::Reset => "was reset: your authenticator app, backup codes and remembered \
                              computers no longer work, and you will be asked to set it up again"
                .into(),
            Change::BackupCodes => {
                "got a new set of backup codes: the old ones no longer work".into()
            }
            Change::Recovery { until } => format!(
                "got a one-time recovery code, valid until {}",
                crate::rfc3339(until)
            ),
        }
    }
}

/// What became of a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Handed to the mail server, for this (masked) address.
    Sent(String),
    /// Not sent: why.
    Failed(String),
    /// No address is known for the user, or `[email]` is not configured.
    NoAddress,
}

impl Ops<'_> {
    /// The channel whose factor the contact change would end (the user's
    /// delivery channel losing its address or number), if any. Refused for
    /// a protected user: their 2FA can be replaced, never removed.
    pub fn check_set_contact(
        &mut self,
        user: &str,
        email: Option<Option<&str>>,
        phone: Option<Option<&str>>,
    ) -> Result<Option<Channel>> {
        let delivery = self.store.user(user)?.and_then(|u| u.delivery);
        let ended = [(Channel::Email, email), (Channel::Sms, phone)]
            .into_iter()
            .find(|&(c, to)| to == Some(None) && delivery == Some(c))
            .map(|(c, _)| c);
        if ended.is_some() {
            crate::policy::ensure_unprotected(
                &self.cfg.policy,
                user,
                crate::error::ProtectedAction::Reset,
            )?;
        }
        Ok(ended)
    }

    /// Set or remove (`Some(None)`) the user's email address and phone
    /// number, checked first (a phone in its canonical `+` form). An
    /// unknown user is added with no factor. Removing the contact of the
    /// user's delivery channel ends that factor.
    pub fn set_contact(
        &mut self,
        user: &str,
        email: Option<Option<&str>>,
        phone: Option<Option<&str>>,
        now: i64,
    ) -> Result<()> {
        self.check_set_contact(user, email, phone)?;
        let email = match email {
            Some(Some(e)) => Some(Some(delivery::check_email(e)?)),
            Some(None) => Some(None),
            None => None,
        };
        let phone = match phone {
            Some(Some(p)) => Some(Some(delivery::check_phone(p)?)),
            Some(None) => Some(None),
            None => None,
        };
        let salt = codes::new_salt();
        let changes: Vec<(Channel, Option<String>, AuditEntry)> =
            [(Channel::Email, email), (Channel::Sms, phone)]
                .into_iter()
                .filter_map(|(channel, to)| {
                    let to = to?;
                    let fact = Fact::ContactSet {
                        channel,
                        to: to.as_deref().map(|t| delivery::mask(channel, t)),
                    };
                    Some((channel, to, self.entry(now, user, &fact)))
                })
                .collect();
        let all: Vec<(Channel, Option<&str>, &AuditEntry)> = changes
            .iter()
            .map(|(channel, to, audit)| (*channel, to.as_deref(), audit))
            .collect();
        self.store.set_contacts(user, &all, &salt, now)?;
        for (_, _, audit) in &changes {
            self.log.entry(audit);
        }
        Ok(())
    }

    /// Make codes by `channel` a factor of `user`: sent at the prompt
    /// without asking. The channel must be configured and the user have a
    /// contact for it. A user who held no usable backup codes gets a new
    /// set: the codes to show once.
    pub fn enroll_delivery(
        &mut self,
        user: &str,
        channel: Channel,
        now: i64,
    ) -> Result<Option<Vec<Code>>> {
        let unavailable = |why: &str| Error::ChannelUnavailable {
            user: user.into(),
            channel: channel.as_str(),
            why: why.into(),
        };
        if !channel.configured(self.cfg) {
            return Err(unavailable(match channel {
                Channel::Email => "[email] is not configured",
                Channel::Sms => "[sms] has neither a command nor a url",
            }));
        }
        let record = self
            .store
            .user(user)?
            .filter(|r| r.contact(channel).is_some())
            .ok_or_else(|| {
                unavailable(&format!(
                    "no {} is set; first run crm2fa-admin set-contact {user} {}",
                    match channel {
                        Channel::Email => "email address",
                        Channel::Sms => "phone number",
                    },
                    match channel {
                        Channel::Email => "--email ADDRESS",
                        Channel::Sms => "--phone NUMBER",
                    }
                ))
            })?;
        let set = codes::backup_set(self.cfg.backup_code_count, &record.code_salt);
        let hashes: Vec<_> = set.iter().map(|(_, h)| *h).collect();
        let audit = self.entry(now, user, &Fact::DeliveryEnrolled { channel });
        let added =
            self.store
                .set_delivery(user, channel, &record.code_salt, &hashes, now, &audit)?;
        self.log.entry(&audit);
        Ok(added.then(|| set.into_iter().map(|(c, _)| c).collect()))
    }

    /// Tell `user` by email that `change` was made at `now` by `by`, if an
    /// address is known and `[email]` is configured. The change stands
    /// whatever becomes of the notice; the audit log records which.
    pub fn notify(
        &mut self,
        sender: &mut dyn Sender,
        user: &str,
        change: Change,
        by: &str,
        now: i64,
    ) -> Result<Notice> {
        let to = self.store.user(user)?.and_then(|r| r.email);
        let (Some(to), Some(_)) = (to, self.cfg.email.as_ref()) else {
            return Ok(Notice::NoAddress);
        };
        let account = super::account_name(user);
        let text = format!(
            "The two-factor login of your account {account} {}.\n\n\
             When: {}\nBy: {by}\n\n\
             If you did not ask for this, tell your administrator at once.\n",
            change.what(),
            crate::rfc3339(now),
        );
        let msg = Message {
            channel: Channel::Email,
            to: to.clone(),
            subject: format!("{account}: {}", change.subject()),
            text,
            code: String::new(),
        };
        let what = change.as_str();
        let (fact, notice) = match sender.send(&msg) {
            Ok(()) => {
                let masked = delivery::mask_email(&to);
                (
                    Fact::NoticeSent {
                        what,
                        to: masked.clone(),
                    },
                    Notice::Sent(masked),
                )
            }
            Err(e) => {
                let reason = match e {
                    SendError::NotSent(why) => why,
                    SendError::Unconfirmed(why) => format!("{why} (it may still arrive)"),
                };
                (
                    Fact::NoticeFailed {
                        what,
                        reason: reason.clone(),
                    },
                    Notice::Failed(reason),
                )
            }
        };
        self.record(now, user, &fact)?;
        Ok(notice)
    }
}
