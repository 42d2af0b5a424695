//! The audit trail: what happened, to whom, from where. Every decision is a
//! [`Fact`]; its event, outcome and wording are fixed here, once, for the
//! audit table of every store backend and for syslog alike.
use crate::delivery::Channel;
use crate::model::{Factor, Verdict};

mod syslog;

#[cfg(test)]
pub(crate) use self::syslog::lines_now;
pub use self::syslog::{Level, Logger, SyslogConnection};

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A login's second step.
    Login,
    /// A user was locked by wrong codes.
    Lock,
    /// A TOTP enrolment was made or activated.
    Enroll,
    /// A new set of backup codes.
    BackupCodes,
    /// A recovery code was issued.
    Recovery,
    /// A lock was cleared by an administrator.
    Unlock,
    /// 2FA was turned off for a user.
    Disable,
    /// 2FA was turned back on for a user.
    Enable,
    /// Every factor of a user was removed.
    Reset,
    /// Remembered hosts were forgotten.
    Forget,
    /// A code was sent by email or SMS.
    Send,
    /// Where a user's codes go was changed.
    Contact,
    /// A user was told by email of a change to their 2FA.
    Notice,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A code was accepted.
    Success,
    /// A code was refused, or the login failed otherwise.
    Failure,
    /// Refused because the user is locked, or a lock was set.
    Locked,
    /// No code was needed.
    Skipped,
    /// Refused without a code being asked.
    Denied,
    /// Let through without a code, by configuration.
    Allowed,
    /// An enrolment waits for its first code.
    Pending,
    /// An enrolment became active.
    Active,
    /// New codes were made.
    Regenerated,
    /// A code was issued.
    Issued,
    /// An administrative change was made.
    Done,
}

macro_rules! spelled {
    ($ty:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            /// The word stored in the audit table and shown in JSON.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),* }
            }
            /// Read a stored word.
            pub fn parse(s: &str) -> Option<$ty> {
                match s { $($text => Some($ty::$variant),)* _ => None }
            }
        }
    };
}

spelled!(Event {
    Login => "login",
    Lock => "lock",
    Enroll => "enroll",
    BackupCodes => "backup-codes",
    Recovery => "recovery",
    Unlock => "unlock",
    Disable => "disable",
    Enable => "enable",
    Reset => "reset",
    Forget => "forget",
    Send => "send",
    Contact => "contact",
    Notice => "notice",
});

spelled!(Outcome {
    Success => "success",
    Failure => "failure",
    Locked => "locked",
    Skipped => "skipped",
    Denied => "denied",
    Allowed => "allowed",
    Pending => "pending",
    Active => "active",
    Regenerated => "regenerated",
    Issued => "issued",
    Done => "done",
});

/// Everything crm2fa records. Codes and secrets are never part of a fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// The login needs no code from this user.
    NotRequired {
        /// The policy's reason.
        reason: String,
    },
    /// Required but not enrolled, and `unenrolled = "deny"`.
    UnenrolledDenied,
    /// Required but not enrolled, and `unenrolled = "allow"`.
    UnenrolledAllowed,
    /// The login's remote host is remembered: no code was asked.
    RememberedHost {
        /// The host.
        host: String,
        /// Until when it is remembered.
        until: i64,
    },
    /// Remembered hosts were forgotten by an administrator.
    Forgotten {
        /// The host, or every host.
        host: Option<String>,
        /// How many.
        count: usize,
    },
    /// The user is locked: no code was asked for or checked.
    Locked {
        /// When the lock ends.
        until: i64,
    },
    /// A code was accepted.
    Accepted {
        /// Which factor.
        factor: Factor,
        /// It activated a pending enrolment.
        activated: bool,
    },
    /// A code was refused.
    Rejected {
        /// Wrong codes in a row.
        failures: u32,
        /// The code was one already used.
        reused: bool,
    },
    /// Wrong codes locked the user.
    LockedOut {
        /// Wrong codes in a row.
        failures: u32,
        /// When the lock ends.
        until: i64,
    },
    /// Every prompt was answered with nothing.
    NoCode,
    /// The client went away or refused to answer.
    ConversationFailed,
    /// Someone else enrolled the user while this login was running.
    EnrolmentChanged,
    /// A new TOTP secret, pending.
    Enrolled,
    /// A pending enrolment confirmed by the administrator.
    Confirmed,
    /// A secret (and codes) imported from another tool.
    Imported {
        /// Which tool's file: `google-authenticator` or `oath`.
        from: &'static str,
        /// Backup codes carried over.
        backup_codes: usize,
    },
    /// A new set of backup codes.
    BackupCodesRegenerated {
        /// How many.
        count: usize,
    },
    /// A recovery code was issued.
    RecoveryIssued {
        /// When it expires.
        until: i64,
    },
    /// The lock was cleared.
    Unlocked,
    /// 2FA turned off.
    Disabled,
    /// 2FA turned back on.
    Enabled,
    /// Every factor removed.
    Reset,
    /// A code was sent (stored; the sending program runs next).
    CodeSent {
        /// How.
        channel: Channel,
        /// Where, masked.
        to: String,
    },
    /// A code could not be sent: it was withdrawn.
    SendFailed {
        /// How.
        channel: Channel,
        /// Why, as the sending program said (never the code).
        reason: String,
    },
    /// A code went to the sending program, which could not confirm that it
    /// was handed over (it may still arrive): the code is kept.
    SendUnconfirmed {
        /// How.
        channel: Channel,
        /// Why, as the sending program said (never the code).
        reason: String,
    },
    /// A code was not sent: the resend limit is reached.
    SendLimited {
        /// How.
        channel: Channel,
        /// When the next may be sent.
        until: i64,
    },
    /// Where the user's codes by a channel go was set or removed.
    ContactSet {
        /// Which.
        channel: Channel,
        /// The new contact, masked; `None` when removed.
        to: Option<String>,
    },
    /// Codes by a channel became a factor of the user.
    DeliveryEnrolled {
        /// Which.
        channel: Channel,
    },
    /// The user was told by email of a change.
    NoticeSent {
        /// The change (`reset`, `disable` …).
        what: &'static str,
        /// Where, masked.
        to: String,
    },
    /// The notice of a change could not be sent.
    NoticeFailed {
        /// The change.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl Fact {
    /// The event, outcome and detail of this fact: its one wording.
    pub fn wording(&self) -> (Event, Outcome, String) {
        use Fact as F;
        let until = |t: &i64| crate::rfc3339(*t);
        match self {
            F::NotRequired { reason } => (
                Event::Login,
                Outcome::Skipped,
                format!("2FA not required: {reason}"),
            ),
            F::RememberedHost { host, until: t } => (
                Event::Login,
                Outcome::Skipped,
                format!("no code asked: {host} is remembered until {}", until(t)),
            ),
            F::Forgotten { host, count } => (
                Event::Forget,
                Outcome::Done,
                match host {
                    Some(h) => format!("{h} forgotten"),
                    None => format!("{count} remembered host(s) forgotten"),
                },
            ),
            F::UnenrolledDenied => (
                Event::Login,
                Outcome::Denied,
                "required but not enrolled (unenrolled = deny)".into(),
            ),
            F::UnenrolledAllowed => (
                Event::Login,
                Outcome::Allowed,
                "required but not enrolled (unenrolled = allow)".into(),
            ),
            F::Locked { until: t } => (
                Event::Login,
                Outcome::Locked,
                format!("locked until {}; no code checked", until(t)),
            ),
            F::Accepted { factor, activated } => (
                Event::Login,
                Outcome::Success,
                if *activated {
                    format!("{} (enrolment activated)", factor.as_str())
                } else {
                    factor.as_str().to_string()
                },
            ),
            F::Rejected { failures, reused } => (
                Event::Login,
                Outcome::Failure,
                format!(
                    "{} ({failures} in a row)",
                    if *reused {
                        "code already used"
                    } else {
                        "wrong code"
                    }
                ),
            ),
            F::LockedOut { failures, until: t } => (
                Event::Lock,
                Outcome::Locked,
                format!("{failures} wrong codes; locked until {}", until(t)),
            ),
            F::NoCode => (Event::Login, Outcome::Failure, "no code entered".into()),
            F::ConversationFailed => (
                Event::Login,
                Outcome::Failure,
                "the conversation with the client failed".into(),
            ),
            F::EnrolmentChanged => (
                Event::Login,
                Outcome::Failure,
                "the user was enrolled by someone else during this login".into(),
            ),
            F::Enrolled => (Event::Enroll, Outcome::Pending, "new TOTP secret".into()),
            F::Confirmed => (
                Event::Enroll,
                Outcome::Active,
                "confirmed with a TOTP code".into(),
            ),
            F::Imported { from, backup_codes } => (
                Event::Enroll,
                Outcome::Active,
                format!("imported from a {from} file with {backup_codes} backup code(s)"),
            ),
            F::BackupCodesRegenerated { count } => (
                Event::BackupCodes,
                Outcome::Regenerated,
                format!("{count} new codes; the old set is void"),
            ),
            F::RecoveryIssued { until: t } => (
                Event::Recovery,
                Outcome::Issued,
                format!("valid until {}", until(t)),
            ),
            F::Unlocked => (Event::Unlock, Outcome::Done, "lockout cleared".into()),
            F::Disabled => (
                Event::Disable,
                Outcome::Done,
                "2FA turned off; factors kept".into(),
            ),
            F::Enabled => (Event::Enable, Outcome::Done, "2FA turned back on".into()),
            F::Reset => (Event::Reset, Outcome::Done, "all factors removed".into()),
            F::CodeSent { channel, to } => (
                Event::Send,
                Outcome::Issued,
                format!("code sent by {} to {to}", channel.label()),
            ),
            F::SendFailed { channel, reason } => (
                Event::Send,
                Outcome::Failure,
                format!("code could not be sent by {}: {reason}", channel.label()),
            ),
            F::SendUnconfirmed { channel, reason } => (
                Event::Send,
                Outcome::Issued,
                format!(
                    "code sent by {}, delivery not confirmed (kept): {reason}",
                    channel.label()
                ),
            ),
            F::SendLimited { channel, until: t } => (
                Event::Send,
                Outcome::Denied,
                format!(
                    "no code sent by {}: resend limit reached until {}",
                    channel.label(),
                    until(t)
                ),
            ),
            F::ContactSet { channel, to } => (
                Event::Contact,
                Outcome::Done,
                match to {
                    Some(to) => format!("{} set to {to}", contact_name(*channel)),
                    None => format!("{} removed", contact_name(*channel)),
                },
            ),
            F::DeliveryEnrolled { channel } => (
                Event::Enroll,
                Outcome::Active,
                format!("codes by {}", channel.label()),
            ),
            F::NoticeSent { what, to } => (
                Event::Notice,
                Outcome::Done,
                format!("{what} notice sent to {to}"),
            ),
            F::NoticeFailed { what, reason } => (
                Event::Notice,
                Outcome::Failure,
                format!("{what} notice could not be sent: {reason}"),
            ),
        }
    }

    /// The facts a login attempt's verdict records: nothing for an unknown
    /// user, one for the others, two when a failure locked the user.
    pub fn of_verdict(v: &Verdict) -> Vec<Fact> {
        match v {
            Verdict::Accepted {
                factor,
                activated_codes,
                ..
            } => vec![Fact::Accepted {
                factor: *factor,
                activated: activated_codes.is_some(),
            }],
            Verdict::Rejected {
                failures,
                reused,
                locked_until,
            } => {
                let mut out = vec![Fact::Rejected {
                    failures: *failures,
                    reused: *reused,
                }];
                if let Some(until) = locked_until {
                    out.push(Fact::LockedOut {
                        failures: *failures,
                        until: *until,
                    });
                }
                out
            }
            Verdict::Locked { until } => vec![Fact::Locked { until: *until }],
            Verdict::UnknownUser => vec![],
        }
    }
}

fn contact_name(channel: Channel) -> &'static str {
    match channel {
        Channel::Email => "email address",
        Channel::Sms => "phone number",
    }
}

/// Who acts, and from where: the host, service and remote host of every row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditCtx {
    /// The host that writes the row (a fleet shares one store).
    pub host: String,
    /// The PAM service, or `crm2fa-admin`.
    pub service: String,
    /// The remote host (PAM_RHOST), empty when local or unknown.
    pub rhost: String,
}

impl AuditCtx {
    /// Rows written on this host by `service` for a client at `rhost`.
    pub fn here(service: &str, rhost: &str) -> AuditCtx {
        AuditCtx {
            host: crate::hostname(),
            service: service.into(),
            rhost: rhost.into(),
        }
    }

    /// The row recording `fact` about `user` at `now`.
    pub fn entry(&self, now: i64, user: &str, fact: &Fact) -> AuditEntry {
        let (event, outcome, detail) = fact.wording();
        AuditEntry {
            time: now,
            host: self.host.clone(),
            user: user.into(),
            service: self.service.clone(),
            rhost: self.rhost.clone(),
            event,
            outcome,
            detail,
        }
    }

    /// The rows recording each of `facts`.
    pub fn entries(&self, now: i64, user: &str, facts: &[Fact]) -> Vec<AuditEntry> {
        facts.iter().map(|f| self.entry(now, user, f)).collect()
    }
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Seconds since the epoch.
    pub time: i64,
    /// The host that wrote the row.
    pub host: String,
    /// The account concerned.
    pub user: String,
    /// The PAM service, or `crm2fa-admin`.
    pub service: String,
    /// The remote host, empty when local or unknown.
    pub rhost: String,
    /// What happened.
    pub event: Event,
    /// How it ended.
    pub outcome: Outcome,
    /// In words; never a code or a secret.
    pub detail: String,
}

/// Which audit rows to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this user's rows.
    pub user: Option<String>,
    /// Only rows from this time on.
    pub since: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for e in [
            Event::Login,
            Event::BackupCodes,
            Event::Reset,
            Event::Send,
            Event::Notice,
        ] {
            assert_eq!(Event::parse(e.as_str()), Some(e));
        }
        for o in [Outcome::Success, Outcome::Regenerated, Outcome::Done] {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(Event::parse("nonsense"), None);
    }

    #[test]
    fn a_locking_failure_records_the_failure_and_the_lock() {
        let v = Verdict::Rejected {
            failures: 3,
            reused: false,
            locked_until: Some(60),
        };
        let facts = Fact::of_verdict(&v);
        let words: Vec<_> = facts.iter().map(Fact::wording).collect();
        assert_eq!(words[0].0, Event::Login);
        assert_eq!(words[0].2, "wrong code (3 in a row)");
        assert_eq!((words[1].0, words[1].1), (Event::Lock, Outcome::Locked));
        assert!(words[1].2.contains("locked until 1970-01-01T00:01:00Z"));
        assert!(Fact::of_verdict(&Verdict::UnknownUser).is_empty());
    }

    #[test]
    fn activation_is_said() {
        let (_, o, d) = Fact::Accepted {
            factor: Factor::Totp,
            activated: true,
        }
        .wording();
        assert_eq!(
            (o, d.as_str()),
            (Outcome::Success, "totp (enrolment activated)")
        );
    }
}
