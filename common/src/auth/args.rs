//! The module's arguments on its PAM line.
use std::path::PathBuf;

use crate::config;
use crate::qr::QrStyle;

/// Module arguments: `config=PATH`, `qr=unicode|ascii|none`, `debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleArgs {
    /// The configuration file (`config=`).
    pub config: PathBuf,
    /// How to draw a QR code during an enrolment in the login (`qr=`).
    pub qr: QrStyle,
    /// Mirror syslog lines to standard error (`debug`).
    pub debug: bool,
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
            debug: false,
            unknown: vec![],
        };
        for a in args {
            match (a.split_once('='), a) {
                (Some(("config", p)), _) if !p.is_empty() => out.config = PathBuf::from(p),
                (Some(("qr", s)), _) => match QrStyle::parse(s) {
                    Some(style) => out.qr = style,
                    None => out.unknown.push(a.to_string()),
                },
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
        ]);
        assert_eq!(a.config, PathBuf::from("/x/y.toml"));
        assert_eq!(a.qr, QrStyle::Ascii);
        assert!(a.debug);
        assert_eq!(
            a.unknown,
            vec!["frobnicate".to_string(), "qr=big".to_string()]
        );
        let d = ModuleArgs::parse([]);
        assert_eq!(d.config, PathBuf::from(config::DEFAULT_PATH));
        assert_eq!(d.qr, QrStyle::Unicode);
    }
}
