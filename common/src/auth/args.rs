//! The module's arguments on its PAM line.
use std::path::PathBuf;

use crate::config;
use crate::qr::QrStyle;

/// What a caller that is not root gets (`nonroot=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonRoot {
    /// PAM_IGNORE: the password decides (a screen locker running as the
    /// user cannot read the configuration).
    Ignore,
    /// Refused.
    Deny,
}

/// Module arguments: `config=PATH`, `qr=unicode|ascii|none`,
/// `nonroot=ignore|deny`, `socket=PATH|none`, `debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleArgs {
    /// The configuration file (`config=`).
    pub config: PathBuf,
    /// How to draw a QR code during an enrolment in the login (`qr=`).
    pub qr: QrStyle,
    /// What a caller that is not root gets (`nonroot=`).
    pub nonroot: NonRoot,
    /// Mirror syslog lines to standard error (`debug`).
    pub debug: bool,
    /// crm2fad's socket (`socket=PATH`; `socket=none`: never offer the
    /// login to crm2fad).
    pub socket: Option<PathBuf>,
    /// Arguments not understood: logged and ignored.
    pub unknown: Vec<String>,
}

impl ModuleArgs {
    /// Parse the module's arguments. The environment is never read: under
    /// su or sudo it belongs to the calling user.
    pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> ModuleArgs {
        let mut out = ModuleArgs {
            config: PathBuf::from(config::DEFAULT_PATH),
            qr: QrStyle::Unicode,
            nonroot: NonRoot::Ignore,
            debug: false,
            socket: Some(PathBuf::from(super::relay::DEFAULT_SOCKET)),
            unknown: vec![],
        };
        for a in args {
            match (a.split_once('='), a) {
                (Some(("config", p)), _) if !p.is_empty() => out.config = PathBuf::from(p),
                (Some(("qr", s)), _) => match QrStyle::parse(s) {
                    Some(style) => out.qr = style,
                    None => out.unknown.push(a.to_string()),
                },
                (Some(("nonroot", "ignore")), _) => out.nonroot = NonRoot::Ignore,
                (Some(("nonroot", "deny")), _) => out.nonroot = NonRoot::Deny,
                (Some(("socket", "none")), _) => out.socket = None,
                (Some(("socket", p)), _) if p.starts_with('/') => out.socket = Some(p.into()),
                (None, "debug") => out.debug = true,
                _ => out.unknown.push(a.to_string()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_args_parse_and_keep_unknown_ones() {
        let a = ModuleArgs::parse([
            "config=/x/y.toml",
            "qr=ascii",
            "debug",
            "frobnicate",
            "qr=big",
            "nonroot=deny",
            "nonroot=maybe",
            "socket=relative.sock",
        ]);
        assert_eq!(a.config, PathBuf::from("/x/y.toml"));
        assert_eq!(a.qr, QrStyle::Ascii);
        assert_eq!(a.nonroot, NonRoot::Deny);
        assert!(a.debug);
        assert_eq!(
            a.unknown,
            vec![
                "frobnicate",
                "qr=big",
                "nonroot=maybe",
                "socket=relative.sock"
            ]
        );
        assert_eq!(
            a.socket.as_deref(),
            Some(std::path::Path::new(crate::auth::relay::DEFAULT_SOCKET))
        );
        assert_eq!(ModuleArgs::parse(["socket=none"]).socket, None);
        assert_eq!(
            ModuleArgs::parse(["socket=/tmp/d.sock"]).socket,
            Some(PathBuf::from("/tmp/d.sock"))
        );
        let d = ModuleArgs::parse([]);
        assert_eq!(d.config, PathBuf::from(config::DEFAULT_PATH));
        assert_eq!(d.qr, QrStyle::Unicode);
        assert_eq!(d.nonroot, NonRoot::Ignore);
    }
}
