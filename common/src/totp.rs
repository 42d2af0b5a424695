//! RFC 6238 TOTP (HMAC-SHA1), as every authenticator app computes it.
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};
use zeroize::Zeroizing;

use crate::config::TotpConfig;
use crate::crypto::Secret;

/// Length of a new TOTP secret: 160 bits, as RFC 4226 recommends.
pub const SECRET_LEN: usize = 20;

fn totp(cfg: &TotpConfig, secret: &Secret, account: &str) -> TOTP {
    TOTP::new_unchecked(
        Algorithm::SHA1,
        cfg.digits as usize,
        0,
        cfg.period,
        secret.expose().to_vec(),
        Some(cfg.issuer.clone()),
        account.to_string(),
    )
}

/// The time step that `now` falls in.
pub fn step_at(cfg: &TotpConfig, now: i64) -> i64 {
    now.max(0) / cfg.period as i64
}

/// The code for time step `step`.
pub fn code_at_step(cfg: &TotpConfig, secret: &Secret, step: i64) -> Zeroizing<String> {
    let step = u64::try_from(step).unwrap_or(0);
    Zeroizing::new(totp(cfg, secret, "").generate(step.saturating_mul(cfg.period)))
}

/// Does `typed` match a step within `skew` of `now`? Returns the matching
/// step. Whitespace and dashes are ignored, as people type them. Every step
/// in the window is compared, in constant time, whatever matches.
pub fn matching_step(cfg: &TotpConfig, secret: &Secret, typed: &str, now: i64) -> Option<i64> {
    let code = Zeroizing::new(
        typed
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect::<String>(),
    );
    if code.len() != cfg.digits as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = step_at(cfg, now);
    let skew = cfg.skew as i64;
    let mut found = None;
    // Saturating: a clock set absurdly far ahead must not overflow.
    for step in current.saturating_sub(skew)..=current.saturating_add(skew) {
        if step < 0 {
            continue;
        }
        let expected = code_at_step(cfg, secret, step);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// Base32 of the secret (no padding), as apps expect it for manual entry.
pub fn secret_base32(secret: &Secret) -> Zeroizing<String> {
    let raw = totp_rs::Secret::Raw(secret.expose().to_vec());
    let encoded = raw.to_encoded();
    Zeroizing::new(encoded.to_string())
}

/// Base32 secret in groups of four, easier to type by hand.
pub fn grouped(base32: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(base32.len() * 5 / 4));
    for (i, c) in base32.chars().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// The `otpauth://totp/ISSUER:ACCOUNT?secret=…&issuer=…` URI an app scans.
pub fn otpauth_uri(cfg: &TotpConfig, secret: &Secret, account: &str) -> Zeroizing<String> {
    Zeroizing::new(totp(cfg, secret, account).get_url())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(digits: u32) -> TotpConfig {
        TotpConfig {
            digits,
            period: 30,
            skew: 1,
            issuer: "crm2fa".into(),
        }
    }

    // RFC 6238 appendix B, SHA1 seed "12345678901234567890".
    #[test]
    fn rfc6238_test_vectors() {
        let s = Secret::new(b"12345678901234567890".to_vec());
        let c = cfg(8);
        for (t, code) in [
            (59, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ] {
            assert_eq!(code_at_step(&c, &s, step_at(&c, t)).as_str(), code, "t={t}");
        }
    }

    #[test]
    fn window_accepts_skew_steps_and_no_more() {
        let s = Secret::new(b"12345678901234567890".to_vec());
        let c = cfg(6);
        let now = 1_700_000_000;
        let cur = step_at(&c, now);
        for d in -1..=1 {
            let code = code_at_step(&c, &s, cur + d);
            assert_eq!(matching_step(&c, &s, &code, now), Some(cur + d));
        }
        for d in [-2, 2] {
            let code = code_at_step(&c, &s, cur + d);
            assert_eq!(matching_step(&c, &s, &code, now), None, "d={d}");
        }
        assert_eq!(matching_step(&c, &s, "12345", now), None);
        assert_eq!(matching_step(&c, &s, "abcdef", now), None);
        let spaced = code_at_step(&c, &s, cur);
        let spaced = format!(" {}-{} ", &spaced[..3], &spaced[3..]);
        assert_eq!(matching_step(&c, &s, &spaced, now), Some(cur));
    }

    #[test]
    fn uri_names_issuer_and_account() {
        let s = Secret::new(b"12345678901234567890".to_vec());
        let uri = otpauth_uri(&cfg(6), &s, "alice@host");
        assert!(
            uri.starts_with("otpauth://totp/crm2fa:alice%40host?"),
            "{}",
            uri.as_str()
        );
        assert!(
            uri.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"),
            "{}",
            uri.as_str()
        );
        assert!(uri.contains("issuer=crm2fa"), "{}", uri.as_str());
        assert_eq!(grouped("ABCDEFGHIJ").as_str(), "ABCD EFGH IJ");
    }
}
