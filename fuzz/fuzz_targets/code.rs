//! Fuzz target: what a person types at the code prompt, as the module
//! reads it (lossy UTF-8), through the code parser and the TOTP window.
//!
//! The first 12 bytes choose the TOTP settings and the clock (any `now`,
//! the ends of time included); the rest is the answer. With bit 1 of the first byte set, the answer is the right
//! code of a step near now with the fuzzer's bytes around it (split at the
//! first `|`), so the window is searched for real, not only refused by shape.
#![no_main]

use crm2fa_common::codes::{Code, BACKUP_LEN, RECOVERY_LEN};
use crm2fa_common::config::TotpConfig;
use crm2fa_common::crypto::Secret;
use crm2fa_common::totp;
use libfuzzer_sys::fuzz_target;

/// The code alphabet, as documented (Crockford's base32, lower case).
const ALPHABET: &str = "0123456789abcdefghjkmnpqrstvwxyz";

/// The latest `now` tried: the end of time, where the window must not
/// overflow.
const LATEST: i64 = i64::MAX;

fuzz_target!(|data: &[u8]| {
    let mut head = [0u8; 12];
    let n = data.len().min(head.len());
    head[..n].copy_from_slice(&data[..n]);
    let rest = String::from_utf8_lossy(&data[n..]);

    let cfg = TotpConfig {
        digits: if head[0] & 1 == 0 { 6 } else { 8 },
        period: 1 + u64::from(u16::from_le_bytes([head[1], head[2]])) % 300,
        skew: u32::from(head[3] & 0x0f) % 11,
        issuer: "crm2fa".into(),
    };
    let mut now_bytes = [0u8; 8];
    now_bytes.copy_from_slice(&head[4..12]);
    let raw = i64::from_le_bytes(now_bytes);
    // Bits 4 and 5 of the fourth byte put the clock at either end of time.
    let now = match head[3] >> 4 & 3 {
        1 => LATEST - i64::from(head[4]),
        2 => i64::MIN + i64::from(head[4]),
        _ => raw.min(LATEST),
    };
    let secret = Secret::new(b"12345678901234567890".to_vec());

    let typed = if head[0] & 2 != 0 {
        let offset = i64::from(head[0] >> 2) - 16;
        let step = totp::step_at(&cfg, now).saturating_add(offset);
        let code = totp::code_at_step(&cfg, &secret, step);
        let (before, after) = rest.split_once('|').unwrap_or((&rest, ""));
        format!("{before}{}{after}", code.as_str())
    } else {
        rest.into_owned()
    };

    // The code parser: canonical, idempotent, and a code only when it is
    // made of the alphabet and has the length.
    let c = Code::normalize(&typed);
    let n = c.as_str();
    assert!(!n
        .chars()
        .any(|ch| ch.is_whitespace() || ch == '-' || ch.is_ascii_uppercase()));
    assert_eq!(Code::normalize(n).as_str(), n);
    for len in [BACKUP_LEN, RECOVERY_LEN, n.len()] {
        let expected = n.chars().count() == len && n.chars().all(|ch| ALPHABET.contains(ch));
        assert_eq!(c.is_code_of_len(len), expected, "{n:?} len {len}");
    }

    // The window: exactly the first step within skew of now whose code is
    // the answer without its whitespace and dashes.
    let bare: String = typed
        .chars()
        .filter(|ch| !ch.is_whitespace() && *ch != '-')
        .collect();
    let current = totp::step_at(&cfg, now);
    let skew = i64::from(cfg.skew);
    let expected = if bare.len() == cfg.digits as usize && bare.bytes().all(|b| b.is_ascii_digit())
    {
        (-skew..=skew)
            .filter_map(|d| current.checked_add(d))
            .filter(|s| *s >= 0)
            .find(|s| totp::code_at_step(&cfg, &secret, *s).as_str() == bare)
    } else {
        None
    };
    assert_eq!(
        totp::matching_step(&cfg, &secret, &typed, now),
        expected,
        "{typed:?}"
    );
});
