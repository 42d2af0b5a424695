//! pam_crm2fa.so: PAM glue only. It reads the PAM items, talks to the user
//! through the PAM conversation, and maps the outcome of
//! [`crm2fa_common::auth::run`] to a PAM code: run by crm2fad when it
//! listens ([`crm2fa_common::auth::relay`]), else here. Panics never cross the FFI
//! boundary: the `pam_hooks!` entry points catch them and return PAM_ABORT.
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::CStr;

use crm2fa_common::audit::Logger;
use crm2fa_common::auth::relay::{self, Relayed};
use crm2fa_common::auth::{self, ConvError, Conversation, ModuleArgs, Outcome, Request};
use crm2fa_common::store::Fresh;
use pam::constants::{
    PamFlag, PamResultCode, PAM_ERROR_MSG, PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON, PAM_SILENT,
    PAM_TEXT_INFO,
};
use pam::conv::Conv;
use pam::items::RHost;
use pam::module::{PamHandle, PamHooks};

/// The module: libpam calls its hooks.
#[derive(Debug)]
pub struct Crm2fa;

// SAFETY: the macro defines the extern "C" entry points libpam calls; it
// checks the handle and argv for null and catches panics before returning.
#[allow(unsafe_code)]
mod hooks {
    use super::Crm2fa;
    pam::pam_hooks!(Crm2fa);
}

/// The PAM conversation behind crm2fa's [`Conversation`] trait. With
/// `silent` (the application passed `PAM_SILENT`) informational and error
/// messages are not sent; prompts still are.
struct PamConversation<'a> {
    conv: Conv<'a>,
    silent: bool,
    /// Essential information held back under `silent`, sent with the next
    /// prompt.
    held: zeroize::Zeroizing<String>,
}

impl PamConversation<'_> {
    fn ask(
        &mut self,
        style: pam::constants::PamMessageStyle,
        msg: &str,
    ) -> Result<Option<String>, ConvError> {
        let with_held;
        let msg = if self.held.is_empty() {
            msg
        } else {
            with_held = zeroize::Zeroizing::new(format!("{}\n{msg}", self.held.as_str()));
            self.held.clear();
            with_held.as_str()
        };
        match self.conv.send(style, msg) {
            Ok(Some(answer)) => Ok(Some(
                String::from_utf8_lossy(answer.as_bytes()).into_owned(),
            )),
            Ok(None) => Ok(None),
            Err(_) => Err(ConvError),
        }
    }
}

impl Conversation for PamConversation<'_> {
    fn prompt_hidden(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
        self.ask(PAM_PROMPT_ECHO_OFF, msg)
    }
    fn prompt_visible(&mut self, msg: &str) -> Result<Option<String>, ConvError> {
        self.ask(PAM_PROMPT_ECHO_ON, msg)
    }
    fn info(&mut self, msg: &str) {
        if !self.silent {
            let _ = self.conv.send(PAM_TEXT_INFO, msg);
        }
    }
    fn error(&mut self, msg: &str) {
        if !self.silent {
            let _ = self.conv.send(PAM_ERROR_MSG, msg);
        }
    }
    fn essential(&mut self, msg: &str) {
        if self.silent {
            self.held.push_str(msg);
        } else {
            let _ = self.conv.send(PAM_TEXT_INFO, msg);
        }
    }
}

/// Map a login outcome to the PAM code the design names.
pub fn pam_code(o: Outcome) -> PamResultCode {
    match o {
        Outcome::Success => PamResultCode::PAM_SUCCESS,
        Outcome::Ignore => PamResultCode::PAM_IGNORE,
        Outcome::AuthErr => PamResultCode::PAM_AUTH_ERR,
        Outcome::MaxTries => PamResultCode::PAM_MAXTRIES,
        Outcome::Unavailable => PamResultCode::PAM_AUTHINFO_UNAVAIL,
        Outcome::UserUnknown => PamResultCode::PAM_USER_UNKNOWN,
    }
}

fn item_string<'a, T>(pamh: &'a PamHandle) -> String
where
    T: pam::items::Item<'a> + std::ops::Deref<Target = &'a CStr>,
{
    match pamh.get_item::<T>() {
        Ok(Some(v)) => v.to_string_lossy().into_owned(),
        _ => String::new(),
    }
}

impl PamHooks for Crm2fa {
    fn sm_authenticate(pamh: &mut PamHandle, args: Vec<&CStr>, flags: PamFlag) -> PamResultCode {
        let argv: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let args = ModuleArgs::parse(argv.iter().map(String::as_str));
        let mut log = Logger::new("pam_crm2fa", args.debug);
        let user = match pamh.get_user(None) {
            Ok(u) if !u.is_empty() => u,
            _ => {
                log.error("cannot get the user name from PAM; login denied");
                return PamResultCode::PAM_AUTHINFO_UNAVAIL;
            }
        };
        let service = item_string::<pam::items::Service>(pamh);
        let rhost = item_string::<RHost>(pamh);
        let req = Request {
            user,
            service,
            rhost,
            clock: std::sync::Arc::new(crm2fa_common::unix_now),
            caller_uid: nix::unistd::geteuid().as_raw(),
        };
        let conv = match pamh.get_item::<Conv>() {
            Ok(Some(c)) => c,
            _ => {
                log.error(&format!(
                    "no PAM conversation for {}; login denied",
                    req.user
                ));
                return PamResultCode::PAM_CONV_ERR;
            }
        };
        let mut conv = PamConversation {
            conv,
            silent: flags & PAM_SILENT != 0,
            held: zeroize::Zeroizing::default(),
        };
        // Offered to crm2fad first, which keeps the store open between
        // logins; run here when none is listening (or the caller is not
        // root, which `run` handles).
        if let (0, Some(socket)) = (req.caller_uid, &args.socket) {
            match relay::relay(socket, &argv, &req, &mut conv, &mut log) {
                Relayed::Done(outcome) => return pam_code(outcome),
                Relayed::NotServed(Some((level, why))) => log.log(level, &why),
                Relayed::NotServed(None) => {}
            }
        }
        // The PostgreSQL client is loaded only if the config has a url.
        let stores = Fresh(Some(&crm2fa_pgload::Loader));
        pam_code(auth::run(&args, &req, &mut conv, &mut log, &stores))
    }

    fn sm_setcred(_pamh: &mut PamHandle, _args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        PamResultCode::PAM_SUCCESS
    }
}
