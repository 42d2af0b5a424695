//! Migrating from google-authenticator and pam_oath. A file is read whole
//! and checked before anything is written; what crm2fa cannot honour
//! (counter-based HOTP, another period or number of digits, a PIN) is
//! refused with its line number. The user's app keeps working: the same
//! secret becomes an active factor, and every step the old tool saw used
//! stays used.
use std::path::Path;

use zeroize::Zeroizing;

use super::Ops;
use crate::audit::Fact;
use crate::codes::{self, Code};
use crate::config::TotpConfig;
use crate::crypto::Secret;
use crate::error::{Error, Result};
use crate::model::{NewEnrollment, Origin, SeenFactors};
use crate::store::Imported;
use crate::totp;

/// The shortest secret accepted: 80 bits, what google-authenticator makes.
const MIN_SECRET_BYTES: usize = 10;

/// Where a file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A `~/.google_authenticator` file.
    GoogleAuthenticator,
    /// pam_oath's `users.oath`.
    Oath,
}

impl Source {
    /// The tool's name, in the audit log and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::GoogleAuthenticator => "google-authenticator",
            Source::Oath => "oath",
        }
    }
}

/// One user's factor as read from a file.
pub struct ImportedFactor {
    /// The account (as the file names it, or as given).
    pub user: String,
    /// The TOTP secret.
    pub secret: Secret,
    /// Single-use codes that become backup codes.
    pub backup_codes: Vec<Code>,
    /// The newest time step the old tool saw used (-1: none).
    pub last_step: i64,
    /// The line the factor was read from.
    pub line: usize,
}

impl std::fmt::Debug for ImportedFactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportedFactor")
            .field("user", &self.user)
            .field("backup_codes", &self.backup_codes.len())
            .field("last_step", &self.last_step)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

/// What an import did, or would do, for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportPlan {
    /// The account.
    pub user: String,
    /// The state of the factor it replaces, if the user has one.
    pub replaces: Option<&'static str>,
    /// The user's unused backup codes, which the import makes void (the
    /// file's single-use codes take their place).
    pub voids_backup_codes: u32,
    /// Backup codes carried over.
    pub backup_codes: usize,
    /// The newest step counted as used.
    pub last_step: i64,
    /// The user's factors as read for this plan: the import replaces only
    /// these (see [`NewEnrollment::seen`]).
    pub seen: SeenFactors,
}

fn refuse(path: &Path, line: usize, message: impl Into<String>) -> Error {
    Error::Import {
        path: path.into(),
        line,
        message: message.into(),
    }
}

/// The secret must fit crm2fa's TOTP settings: SHA1, `digits`, `period`.
fn check_fit(path: &Path, line: usize, cfg: &TotpConfig, digits: u32, period: u64) -> Result<()> {
    if period != cfg.period {
        return Err(refuse(
            path,
            line,
            format!(
                "codes every {period} s, but [totp] period is {}: crm2fa cannot take this secret \
                 over; enrol the user again",
                cfg.period
            ),
        ));
    }
    if digits != cfg.digits {
        return Err(refuse(
            path,
            line,
            format!(
                "{digits}-digit codes, but [totp] digits is {}: crm2fa cannot take this secret \
                 over; enrol the user again",
                cfg.digits
            ),
        ));
    }
    Ok(())
}

fn secret_of(path: &Path, line: usize, bytes: Vec<u8>) -> Result<Secret> {
    let secret = Secret::new(bytes);
    if secret.expose().len() < MIN_SECRET_BYTES {
        return Err(refuse(
            path,
            line,
            format!(
                "the secret has {} bits; at least {} are needed",
                secret.expose().len() * 8,
                MIN_SECRET_BYTES * 8
            ),
        ));
    }
    Ok(secret)
}

/// Read a `~/.google_authenticator` file of `user`: the base32 secret on
/// the first line, `" OPTION` lines, eight-digit scratch codes.
pub fn parse_google_authenticator(
    path: &Path,
    text: &str,
    user: &str,
    cfg: &TotpConfig,
) -> Result<ImportedFactor> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    let (_, first) = lines
        .next()
        .ok_or_else(|| refuse(path, 1, "the file is empty"))?;
    let b32 = Zeroizing::new(first.replace(' ', "").to_ascii_uppercase());
    let raw = totp_rs::Secret::Encoded(b32.to_string())
        .to_bytes()
        .map_err(|_| refuse(path, 1, "the first line is not a base32 secret"))?;
    let secret = secret_of(path, 1, raw)?;
    let (mut totp_auth, mut period, mut used) = (false, 30u64, vec![]);
    // The line that set the step, if one did: a mismatch is reported there.
    let mut period_line = 1;
    let mut backup_codes = vec![];
    for (n, line) in lines {
        if line.is_empty() {
            continue;
        }
        if let Some(option) = line.strip_prefix("\" ") {
            let mut words = option.split_whitespace();
            match words.next().unwrap_or_default() {
                "TOTP_AUTH" => totp_auth = true,
                "HOTP_COUNTER" => {
                    return Err(refuse(
                        path,
                        n,
                        "a counter-based (HOTP) secret: crm2fa does time-based codes only; \
                         enrol the user again",
                    ))
                }
                "OTP_DISABLED" => {
                    return Err(refuse(
                        path,
                        n,
                        "one-time codes are turned off in this file (OTP_DISABLED)",
                    ))
                }
                "STEP_SIZE" => {
                    period = words
                        .next()
                        .and_then(|w| w.parse().ok())
                        .ok_or_else(|| refuse(path, n, "STEP_SIZE without a number"))?;
                    period_line = n;
                }
                "DISALLOW_REUSE" => {
                    for w in words {
                        used.push(
                            w.parse::<i64>()
                                .map_err(|_| refuse(path, n, format!("not a time step: {w:?}")))?,
                        );
                    }
                }
                // Kept by crm2fa's own settings: [totp] skew and [lockout].
                "WINDOW_SIZE" | "RATE_LIMIT" | "TIME_SKEW" | "RESETTING_TIME_SKEW" => {}
                other => {
                    return Err(refuse(path, n, format!("unknown option {other:?}")));
                }
            }
        } else if line.len() == 8 && line.bytes().all(|b| b.is_ascii_digit()) {
            backup_codes.push(Code::normalize(line));
        } else {
            return Err(refuse(
                path,
                n,
                "neither an option nor an eight-digit scratch code",
            ));
        }
    }
    if !totp_auth {
        return Err(refuse(
            path,
            1,
            "not a time-based (TOTP) secret: the file has no TOTP_AUTH line",
        ));
    }
    check_fit(path, period_line, cfg, 6, period)?;
    Ok(ImportedFactor {
        user: user.into(),
        secret,
        backup_codes,
        last_step: used.into_iter().max().unwrap_or(-1),
        line: 1,
    })
}

/// Read pam_oath's `users.oath`: `TYPE USER PIN SECRET [COUNTER [OTP
/// [TIME]]]` per line, `#` comments. Each user once.
pub fn parse_oath(
    path: &Path,
    text: &str,
    cfg: &TotpConfig,
    now: i64,
) -> Result<Vec<ImportedFactor>> {
    let mut out: Vec<ImportedFactor> = vec![];
    for (i, raw_line) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [kind, user, pin, hex_secret, rest @ ..] = fields.as_slice() else {
            return Err(refuse(
                path,
                n,
                "expected TYPE USER PIN SECRET [COUNTER [OTP [TIME]]]",
            ));
        };
        let (digits, period) = oath_type(path, n, kind)?;
        check_fit(path, n, cfg, digits, period)?;
        if *pin != "-" && *pin != "+" {
            return Err(refuse(
                path,
                n,
                format!(
                    "{user} has a PIN: crm2fa has none (the password step checks the password)"
                ),
            ));
        }
        if let Some(first) = out.iter().find(|f| f.user == *user) {
            return Err(refuse(
                path,
                n,
                format!("{user} is here twice (also line {})", first.line),
            ));
        }
        let raw = hex::decode(hex_secret)
            .map_err(|_| refuse(path, n, "the secret is not hexadecimal"))?;
        let secret = secret_of(path, n, raw)?;
        let last_step = match rest {
            [_, otp, time, ..] => last_used_step(path, n, cfg, &secret, otp, time, now)?,
            _ => -1,
        };
        out.push(ImportedFactor {
            user: (*user).into(),
            secret,
            backup_codes: vec![],
            last_step,
            line: n,
        });
    }
    if out.is_empty() {
        return Err(refuse(path, 1, "no user in the file"));
    }
    Ok(out)
}

/// Digits and period of an oath token type; counter-based ones are refused.
fn oath_type(path: &Path, line: usize, kind: &str) -> Result<(u32, u64)> {
    let parts: Vec<&str> = kind.split('/').collect();
    let period =
        match parts.get(1) {
            Some(t) if t.starts_with('T') => t[1..]
                .parse::<u64>()
                .map_err(|_| refuse(path, line, format!("unknown token type {kind:?}")))?,
            Some(&"E") | None if parts[0] == "HOTP" => return Err(refuse(
                path,
                line,
                "a counter-based (HOTP) token: crm2fa does time-based codes only; enrol the user \
                 again",
            )),
            _ => return Err(refuse(path, line, format!("unknown token type {kind:?}"))),
        };
    if parts[0] != "HOTP" {
        return Err(refuse(path, line, format!("unknown token type {kind:?}")));
    }
    let digits = match parts.get(2) {
        None => 6,
        Some(d) => d
            .parse::<u32>()
            .map_err(|_| refuse(path, line, format!("unknown token type {kind:?}")))?,
    };
    Ok((digits, period))
}

/// The step of the last code pam_oath accepted, `otp` at local time
/// `time` (`YYYY-MM-DDTHH:MM:SSL`). The time zone is not in the file, so
/// every step within 14 hours of it (and not after now) is tried, and the
/// latest that gives `otp` counts: never earlier than the real one.
fn last_used_step(
    path: &Path,
    line: usize,
    cfg: &TotpConfig,
    secret: &Secret,
    otp: &str,
    time: &str,
    now: i64,
) -> Result<i64> {
    let local = parse_local_time(time)
        .ok_or_else(|| refuse(path, line, format!("not a time stamp: {time:?}")))?;
    const ZONES: i64 = 14 * 3600;
    let skew = i64::from(cfg.skew);
    let latest = (totp::step_at(cfg, local + ZONES) + skew).min(totp::step_at(cfg, now) + skew);
    let earliest = totp::step_at(cfg, local - ZONES) - skew;
    let found = (earliest..=latest)
        .rev()
        .find(|&s| totp::code_at_step(cfg, secret, s).as_str() == otp);
    // Not found (an edited file?): count every step it could have been.
    Ok(found.unwrap_or(latest))
}

/// `YYYY-MM-DDTHH:MM:SSL` read as if it were UTC: seconds since the epoch.
fn parse_local_time(s: &str) -> Option<i64> {
    let s = s.strip_suffix('L')?;
    let (date, clock) = s.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let c: Vec<i64> = clock
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let ([y, m, day], [h, min, sec]) = (d.as_slice(), c.as_slice()) else {
        return None;
    };
    if !(1..=12).contains(m) || !(1..=31).contains(day) || *h > 23 || *min > 59 || *sec > 60 {
        return None;
    }
    Some(days_from_civil(*y, *m, *day) * 86400 + h * 3600 + min * 60 + sec)
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Ops<'_> {
    /// What importing `factors` would do, reading the store only.
    pub fn plan_import(&mut self, factors: &[ImportedFactor]) -> Result<Vec<ImportPlan>> {
        factors
            .iter()
            .map(|f| {
                let record = self.store.user(&f.user)?;
                let replaces = record
                    .as_ref()
                    .filter(|r| r.has_totp())
                    .map(|r| r.display_state());
                Ok(ImportPlan {
                    user: f.user.clone(),
                    replaces,
                    voids_backup_codes: record.as_ref().map_or(0, |r| r.unused_backup_codes),
                    backup_codes: f.backup_codes.len(),
                    last_step: f.last_step,
                    seen: SeenFactors::of(record.as_ref()),
                })
            })
            .collect()
    }

    /// Import `factors` from `source` as `plans` ([`Ops::plan_import`] of
    /// them, what the administrator agreed to) say, all or none: each
    /// user's secret becomes their active factor, with the old tool's
    /// single-use codes as backup codes and its used steps still used. A
    /// user whose factors changed since the plan was read:
    /// [`Error::Changed`], and nothing is imported.
    pub fn import(
        &mut self,
        source: Source,
        factors: &[ImportedFactor],
        plans: &[ImportPlan],
        now: i64,
    ) -> Result<()> {
        // A plan that is not these factors' plan was not agreed to either.
        if let Some(f) = factors
            .iter()
            .enumerate()
            .find(|&(i, f)| plans.get(i).is_none_or(|p| p.user != f.user))
            .map(|(_, f)| f)
        {
            return Err(Error::Changed {
                user: f.user.clone(),
            });
        }
        let key = self.key()?;
        struct Prepared {
            salt: Vec<u8>,
            sealed: Vec<u8>,
            hashes: Vec<[u8; codes::HASH_LEN]>,
            audit: crate::audit::AuditEntry,
        }
        let mut prepared = Vec::with_capacity(factors.len());
        for f in factors {
            let salt = match self.store.user(&f.user)? {
                Some(r) => r.code_salt,
                None => codes::new_salt(),
            };
            let hashes = f.backup_codes.iter().map(|c| c.hash(&salt)).collect();
            let fact = Fact::Imported {
                from: source.as_str(),
                backup_codes: f.backup_codes.len(),
            };
            prepared.push(Prepared {
                sealed: key.seal(&f.user, f.secret.expose()),
                salt,
                hashes,
                audit: self.entry(now, &f.user, &fact),
            });
        }
        let imported: Vec<Imported<'_>> = factors
            .iter()
            .zip(&prepared)
            .zip(plans)
            .map(|((f, p), plan)| Imported {
                user: &f.user,
                new: NewEnrollment {
                    sealed_secret: &p.sealed,
                    code_salt: &p.salt,
                    backup_hashes: &p.hashes,
                    sealed_codes: b"",
                    replace: true,
                    seen: Some(&plan.seen),
                    origin: Origin::Admin,
                },
                last_step: f.last_step,
                audit: &p.audit,
            })
            .collect();
        self.store.import(&imported, now)?;
        for p in &prepared {
            self.log.entry(&p.audit);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TotpConfig {
        TotpConfig::for_tests()
    }

    const GA: &str = "JBSWY3DPEHPK3PXP\n\" RATE_LIMIT 3 30 1700000000\n\
                      \" WINDOW_SIZE 3\n\" DISALLOW_REUSE 56666666 56666667\n\" TOTP_AUTH\n\
                      12345678\n87654321\n";

    fn p() -> &'static Path {
        Path::new("/home/u/.google_authenticator")
    }

    #[test]
    fn a_google_authenticator_file_gives_secret_scratch_codes_and_used_steps() {
        let f = parse_google_authenticator(p(), GA, "u", &cfg()).unwrap();
        assert_eq!(f.backup_codes.len(), 2);
        assert_eq!(f.backup_codes[1].as_str(), "87654321");
        assert_eq!(f.last_step, 56666667);
        assert_eq!(f.secret.expose(), b"Hello!\xde\xad\xbe\xef");
    }

    #[test]
    fn what_crm2fa_cannot_honour_is_refused_with_its_line() {
        let cases = [
            (
                GA.replace("\" TOTP_AUTH\n", "\" HOTP_COUNTER 1\n"),
                5,
                "counter-based",
            ),
            (
                GA.replace("\" TOTP_AUTH\n", "\" TOTP_AUTH\n\" STEP_SIZE 60\n"),
                6,
                "every 60 s",
            ),
            (GA.replace("\" TOTP_AUTH\n", ""), 1, "TOTP_AUTH"),
            (GA.replace("12345678", "1234567x"), 6, "scratch code"),
            ("JBSWY3DP\n\" TOTP_AUTH\n".into(), 1, "bits"),
            ("not base32!\n".into(), 1, "base32"),
        ];
        for (text, line, words) in cases {
            let err = parse_google_authenticator(p(), &text, "u", &cfg())
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("{}:{line}:", p().display())) && err.contains(words),
                "{err}"
            );
        }
        let eight = TotpConfig { digits: 8, ..cfg() };
        let err = parse_google_authenticator(p(), GA, "u", &eight).unwrap_err();
        assert!(err.to_string().contains("6-digit"), "{err}");
    }

    const SECRET: &str = "3132333435363738393031323334353637383930";

    #[test]
    fn an_oath_file_gives_each_users_secret() {
        let text =
            format!("# users\nHOTP/T30 alice - {SECRET}\n\nHOTP/T30/6\tbob\t+\t{SECRET}\t0\n");
        let f = parse_oath(Path::new("users.oath"), &text, &cfg(), 1_700_000_000).unwrap();
        let users: Vec<_> = f
            .iter()
            .map(|f| (f.user.as_str(), f.line, f.last_step))
            .collect();
        assert_eq!(users, vec![("alice", 2, -1), ("bob", 4, -1)]);
        assert_eq!(f[0].secret.expose(), b"12345678901234567890");
    }

    #[test]
    fn oath_lines_crm2fa_cannot_honour_are_refused_with_their_line() {
        for (line, words) in [
            (format!("HOTP bob - {SECRET}"), "counter-based"),
            (format!("HOTP/E/8 bob - {SECRET}"), "counter-based"),
            (format!("HOTP/T60 bob - {SECRET}"), "every 60 s"),
            (format!("HOTP/T30/8 bob - {SECRET}"), "8-digit"),
            (format!("HOTP/T30 bob 1234 {SECRET}"), "PIN"),
            (format!("TOTP bob - {SECRET}"), "unknown token type"),
            ("HOTP/T30 bob -".to_string(), "expected TYPE"),
            ("HOTP/T30 bob - zz".to_string(), "hexadecimal"),
            (format!("HOTP/T30 alice - {SECRET}"), "twice"),
        ] {
            let text = format!("HOTP/T30 alice - {SECRET}\n{line}\n");
            let err = parse_oath(Path::new("users.oath"), &text, &cfg(), 0)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("users.oath:2:") && err.contains(words),
                "{line}: {err}"
            );
        }
    }

    #[test]
    fn the_last_code_pam_oath_accepted_stays_used_whatever_the_time_zone() {
        let c = cfg();
        let secret = Secret::new(b"12345678901234567890".to_vec());
        let used_at: i64 = 1_700_000_000;
        let step = totp::step_at(&c, used_at);
        let otp = totp::code_at_step(&c, &secret, step).to_string();
        for zone_hours in [-10i64, 0, 5, 13] {
            // The file holds local time: UTC plus the zone's offset.
            let local = used_at + zone_hours * 3600;
            let days = local.div_euclid(86400);
            let secs = local.rem_euclid(86400);
            let (y, m, d) = civil(days);
            let stamp = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}L",
                secs / 3600,
                secs % 3600 / 60,
                secs % 60
            );
            assert_eq!(parse_local_time(&stamp), Some(local), "{stamp}");
            let text = format!("HOTP/T30 alice - {SECRET} 0 {otp} {stamp}\n");
            let f = parse_oath(Path::new("u"), &text, &c, used_at + 3600).unwrap();
            assert!(f[0].last_step >= step, "{zone_hours} h: {}", f[0].last_step);
            assert!(f[0].last_step <= totp::step_at(&c, used_at + 3600) + 1);
        }
    }

    /// Inverse of `days_from_civil`, for the test.
    fn civil(days: i64) -> (i64, i64, i64) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (yoe + era * 400 + i64::from(m <= 2), m, d)
    }
}
