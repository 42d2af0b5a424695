//! `enroll` and `confirm`: a new TOTP secret, and its activation.
use std::io::{self, Write};

use crm2fa_common::codes::Code;
use crm2fa_common::delivery::Channel;
use crm2fa_common::model::{Origin, SeenFactors, TotpState};
use crm2fa_common::qr::{self, QrStyle};
use crm2fa_common::Error;
use serde::Serialize;
use zeroize::Zeroizing;

use super::{Ctx, Done, Status};
use crate::cli::{MethodArg, QrArg};
use crate::error::CliError;
use crate::output::{shown, write_backup_codes, Shown, Text};
use crate::terminal;

/// What the new user needs to set up their app.
#[derive(Serialize)]
struct SetupReport {
    user: String,
    #[serde(skip)]
    qr: QrStyle,
    secret: Zeroizing<String>,
    otpauth_uri: Zeroizing<String>,
    #[serde(skip)]
    digits: u32,
    #[serde(skip)]
    period: u64,
}

impl Text for SetupReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        let how = if self.qr == QrStyle::None {
            "Type this key into"
        } else {
            "Scan this QR code with"
        };
        writeln!(w, "Enrolling {}. {how} an authenticator app", self.user)?;
        writeln!(
            w,
            "(Google Authenticator, Microsoft Authenticator, FreeOTP, Authy ...):"
        )?;
        let block = qr::setup_block(&self.otpauth_uri, &self.secret, self.qr, "URI:        ");
        w.write_all(block.as_bytes())?;
        writeln!(
            w,
            "({} digits, every {} seconds, SHA1)",
            self.digits, self.period
        )
    }
}

/// `enroll`: the setup (unless already shown on the terminal) and whether
/// it is active.
#[derive(Serialize)]
struct EnrollReport {
    #[serde(flatten)]
    setup: SetupReport,
    #[serde(skip)]
    setup_shown: bool,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    backup_codes: Option<Shown>,
}

impl Text for EnrollReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        if !self.setup_shown {
            Text::write_text(&self.setup, w)?;
        }
        let user = &self.setup.user;
        match &self.backup_codes {
            Some(codes) => write_activated(w, user, codes),
            None => {
                writeln!(
                    w,
                    "The enrolment is pending. It becomes active with `crm2fa-admin confirm {user} CODE`,"
                )?;
                writeln!(
                    w,
                    "or at {user}'s first login with a valid code (the backup codes are shown then)."
                )
            }
        }
    }
}

fn write_activated(w: &mut dyn Write, user: &str, codes: &[String]) -> io::Result<()> {
    writeln!(w, "Two-factor authentication is now active for {user}.")?;
    write_backup_codes(w, codes)
}

/// `enroll --method email|sms`: codes by a channel are a factor.
#[derive(Serialize)]
struct ChannelReport {
    user: String,
    method: &'static str,
    state: &'static str,
    #[serde(skip)]
    to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    backup_codes: Option<Shown>,
}

impl Text for ChannelReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        let user = &self.user;
        writeln!(
            w,
            "{user} now gets codes by {}: the login sends one to {} without asking.",
            self.method, self.to
        )?;
        match &self.backup_codes {
            Some(codes) => write_backup_codes(w, codes),
            None => writeln!(w, "{user} keeps the backup codes they have."),
        }
    }
}

/// Make codes by `channel` a factor of `user`.
fn enroll_channel(ctx: &mut Ctx, user: &str, channel: Channel) -> Result<Done, CliError> {
    let now = ctx.now;
    let codes = ctx.ops().enroll_delivery(user, channel, now)?;
    let status = ctx.ops().status(user, now)?;
    let to = match channel {
        Channel::Email => status.email,
        Channel::Sms => status.phone,
    };
    Done::ok(ChannelReport {
        user: user.into(),
        method: channel.as_str(),
        state: status.state,
        to: to.unwrap_or_default(),
        backup_codes: codes.as_deref().map(shown),
    })
}

/// A new TOTP secret for `user`, pending; confirmed at once with `code`,
/// or with a code typed on the terminal. With `code`, a pending enrolment
/// the user already set their app up with is confirmed, not replaced. With
/// `method` email or SMS, codes by that channel instead.
pub(super) fn enroll(
    ctx: &mut Ctx,
    user: &str,
    method: MethodArg,
    no_qr: bool,
    qr: QrArg,
    code: Option<String>,
) -> Result<Done, CliError> {
    match method {
        MethodArg::Totp => {}
        MethodArg::Email => return enroll_channel(ctx, user, Channel::Email),
        MethodArg::Sms => return enroll_channel(ctx, user, Channel::Sms),
    }
    let record = ctx.store.user(user)?;
    // `enroll USER` showed the secret; the user scanned it and read a code
    // from their app: `enroll USER --code CODE` confirms that one.
    let confirm_pending = code.is_some()
        && record
            .as_ref()
            .is_some_and(|r| r.state == TotpState::Pending);
    // What the question below asked about (or found nothing to ask about):
    // the new secret replaces only that.
    let seen = SeenFactors::of(record.as_ref());
    if let Some(r) = record.filter(|_| !confirm_pending) {
        let factor = match (r.state, r.delivery) {
            (TotpState::None, Some(c)) => Some(format!("an {} factor", c.label())),
            (TotpState::None, None) => None,
            (state, _) => Some(format!("an enrolment ({})", state.as_str())),
        };
        if let Some(factor) = factor {
            ctx.confirm(&format!(
                "{user} already has {factor}; a new secret replaces it and its backup codes"
            ))?;
        }
    }
    let now = ctx.now;
    let mut ops = ctx.ops();
    let key = ops.key()?;
    let e = if confirm_pending {
        ops.pending_enrollment(&key, user)?
    } else {
        ops.begin_enrollment(&key, user, now, Origin::Admin, Some(&seen))?
    };
    let setup = SetupReport {
        user: user.into(),
        qr: if no_qr { QrStyle::None } else { qr.into() },
        secret: e.base32.clone(),
        otpauth_uri: e.otpauth_uri.clone(),
        digits: ctx.cfg.totp.digits,
        period: ctx.cfg.totp.period,
    };
    let interactive = !ctx.json && terminal::interactive();
    let setup_shown = interactive && code.is_none();
    if setup_shown {
        ctx.out.show(&setup).map_err(CliError::Output)?;
    }
    // A wrong --code still prints the enrolment: it stays pending, and the
    // secret must not be lost.
    let mut activated = None;
    let mut failure = None;
    if let Some(c) = code {
        match ctx.ops().confirm(user, &c, now) {
            Ok(Some(codes)) => activated = Some(codes),
            Ok(None) => {
                failure = Some(CliError::from(Error::InvalidCode {
                    user: user.into(),
                    consequence: format!(
                        "the enrolment stays pending (confirm with `crm2fa-admin confirm {user}`)"
                    ),
                }))
            }
            Err(e) => failure = Some(e.into()),
        }
    } else if interactive {
        match confirm_on_terminal(ctx, user) {
            Ok(codes) => activated = codes,
            Err(e) => failure = Some(e),
        }
    }
    let report = EnrollReport {
        setup_shown,
        setup,
        state: if activated.is_some() {
            "active"
        } else {
            "pending"
        },
        backup_codes: activated.as_deref().map(shown),
    };
    match failure {
        Some(e) => Done::with(report, Status::Failed(e)),
        None => Done::ok(report),
    }
}

/// Ask for the app's code up to three times; Enter leaves it pending.
fn confirm_on_terminal(ctx: &mut Ctx, user: &str) -> Result<Option<Vec<Code>>, CliError> {
    for _ in 0..3 {
        let Some(code) = terminal::ask_code(
            "Enter the code the app shows to confirm (Enter to leave it pending): ",
        )?
        else {
            return Ok(None);
        };
        match ctx.ops().confirm(user, &code, crm2fa_common::unix_now()) {
            Ok(Some(codes)) => return Ok(Some(codes)),
            Ok(None) => eprintln!("Invalid verification code. Check the app and try again."),
            Err(e @ Error::NotPending { .. }) => {
                // The user's first login activated it meanwhile.
                eprintln!("Not confirmed here: {e}");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// `confirm`: the new backup codes.
#[derive(Serialize)]
struct ConfirmReport {
    user: String,
    state: &'static str,
    backup_codes: Shown,
}

impl Text for ConfirmReport {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        write_activated(w, &self.user, &self.backup_codes)
    }
}

/// Activate `user`'s pending enrolment with a code from their app.
pub(super) fn confirm(ctx: &mut Ctx, user: &str, code: Option<String>) -> Result<Done, CliError> {
    let code = match code {
        Some(c) => Zeroizing::new(c),
        None => terminal::read_code("Code from the app: ")?,
    };
    let now = ctx.now;
    match ctx.ops().confirm(user, &code, now)? {
        Some(codes) => Done::ok(ConfirmReport {
            user: user.into(),
            state: "active",
            backup_codes: shown(&codes),
        }),
        None => Err(Error::InvalidCode {
            user: user.into(),
            consequence: "nothing was activated".into(),
        }
        .into()),
    }
}
