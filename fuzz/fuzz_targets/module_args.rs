//! Fuzz target: the module's arguments, as libpam hands them over (the PAM
//! line split on whitespace). Never a panic, and every argument not
//! understood is kept, in order, to be logged.
#![no_main]

use crm2fa_common::auth::ModuleArgs;
use libfuzzer_sys::fuzz_target;

/// Is `a` an argument the module understands?
fn understood(a: &str) -> bool {
    match a.split_once('=') {
        Some(("config", p)) => !p.is_empty(),
        Some(("qr", s)) => matches!(s, "unicode" | "ascii" | "none"),
        Some(("nonroot", s)) => matches!(s, "ignore" | "deny"),
        Some(_) => false,
        None => a == "debug",
    }
}

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let args: Vec<&str> = line.split_whitespace().collect();
    let parsed = ModuleArgs::parse(args.iter().copied());
    let unknown: Vec<&str> = args.iter().copied().filter(|a| !understood(a)).collect();
    assert_eq!(parsed.unknown, unknown);
    assert_eq!(parsed.debug, args.contains(&"debug"));
    if let Some(p) = args
        .iter()
        .rev()
        .find_map(|a| a.strip_prefix("config=").filter(|p| !p.is_empty()))
    {
        assert_eq!(parsed.config.to_str(), Some(p));
    }
});
