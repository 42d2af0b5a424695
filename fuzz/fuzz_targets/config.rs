//! Fuzz target: the configuration file parser on any text. It must never
//! panic, and every error must name the file and, for a syntax error, a
//! line of the text.
#![no_main]

use std::path::Path;

use crm2fa_common::config::Config;
use crm2fa_common::Error;
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/etc/crm2fa/crm2fa.toml";

fuzz_target!(|data: &[u8]| {
    // `Config::load` reads the file as UTF-8; the lossy form also feeds
    // U+FFFD to the parser.
    let text = String::from_utf8_lossy(data);
    let Err(e) = Config::parse(&text, Path::new(PATH)) else {
        return;
    };
    let shown = e.to_string();
    assert!(shown.starts_with(PATH), "{shown:?}");
    let lines = text.lines().count().max(1) + 1;
    match e {
        Error::ConfigSyntax { line, column, .. } => {
            assert!((1..=lines).contains(&line), "{shown:?}");
            assert!(column >= 1, "{shown:?}");
        }
        Error::ConfigInvalid { location, .. } => {
            if let Some(n) = location[PATH.len()..].strip_prefix(':') {
                let n: usize = n.parse().expect("a line number");
                assert!((1..=lines).contains(&n), "{shown:?}");
            }
        }
        other => panic!("not a configuration error: {other:?}"),
    }
});
