//! Checking a code without logging in, and the clock drift report.
use super::Ops;
use crate::codes::Code;
use crate::config::TotpConfig;
use crate::crypto::Secret;
use crate::error::{Error, Result};
use crate::model::{CodeKind, Factor};
use crate::totp;

/// How far from now the steps are searched for a drift report.
const DRIFT_SEARCH_STEPS: u32 = 20;

/// Where a TOTP code sits relative to the host's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drift {
    /// The step the code belongs to, minus the step of now.
    pub steps: i64,
    /// Inside the accepted window (`[totp] skew`).
    pub within_window: bool,
    /// The step was already used for a login.
    pub already_used: bool,
}

impl Drift {
    /// Find `typed` up to [`DRIFT_SEARCH_STEPS`] steps either side of `now`.
    /// `None` when it is no code of `secret` near now.
    pub fn find(
        cfg: &TotpConfig,
        secret: &Secret,
        typed: &str,
        now: i64,
        last_step: i64,
    ) -> Option<Drift> {
        let wide = TotpConfig {
            skew: DRIFT_SEARCH_STEPS,
            ..cfg.clone()
        };
        let step = totp::matching_step(&wide, secret, typed, now)?;
        let steps = step.saturating_sub(totp::step_at(cfg, now));
        Some(Drift {
            steps,
            within_window: steps.unsigned_abs() <= u64::from(cfg.skew),
            already_used: step <= last_step,
        })
    }

    /// The drift in seconds.
    pub fn seconds(&self, cfg: &TotpConfig) -> i64 {
        self.steps * i64::try_from(cfg.period).unwrap_or(i64::MAX)
    }

    /// Would a login accept it?
    pub fn valid(&self) -> bool {
        self.within_window && !self.already_used
    }
}

/// What `check` found out about a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeCheck {
    /// The user.
    pub user: String,
    /// The factor the code is, if it is one of the user's.
    pub factor: Option<Factor>,
    /// A login would accept it now.
    pub valid: bool,
    /// For a TOTP code: where it sits relative to the clock.
    pub drift: Option<Drift>,
}

impl Ops<'_> {
    /// Check `code` for `user` as a login would, consuming and counting
    /// nothing, and report the clock drift of a TOTP code.
    pub fn check(&mut self, user: &str, code: &str, now: i64) -> Result<CodeCheck> {
        let rec = self
            .store
            .user(user)?
            .ok_or_else(|| Error::NotEnrolled { user: user.into() })?;
        let key = self.key()?;
        if let Some(secret) = rec.open_totp_secret(&key)? {
            if let Some(d) = Drift::find(&self.cfg.totp, &secret, code, now, rec.last_step) {
                return Ok(CodeCheck {
                    user: user.into(),
                    factor: Some(Factor::Totp),
                    valid: d.valid(),
                    drift: Some(d),
                });
            }
        }
        let c = Code::normalize(code);
        let digits = self.cfg.totp.digits;
        let mut hash = None;
        for kind in CodeKind::ALL.into_iter().filter(|k| k.shapes(&c, digits)) {
            // One argon2 serves every kind: they share the user's salt.
            let h = *hash.get_or_insert_with(|| c.hash(&rec.code_salt));
            if self.store.code_usable(kind, user, &h, now)? {
                return Ok(CodeCheck {
                    user: user.into(),
                    factor: Some(kind.factor()),
                    valid: true,
                    drift: None,
                });
            }
        }
        Ok(CodeCheck {
            user: user.into(),
            factor: None,
            valid: false,
            drift: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TotpConfig {
        TotpConfig::for_tests()
    }

    #[test]
    fn drift_is_reported_in_steps_and_seconds() {
        let s = Secret::new(b"12345678901234567890".to_vec());
        let c = cfg();
        let now = 1_700_000_000;
        let cur = totp::step_at(&c, now);
        let ahead = totp::code_at_step(&c, &s, cur + 3);
        let d = Drift::find(&c, &s, &ahead, now, -1).unwrap();
        assert_eq!((d.steps, d.seconds(&c)), (3, 90));
        assert!(!d.within_window && !d.valid());
        let behind = totp::code_at_step(&c, &s, cur - 1);
        let d = Drift::find(&c, &s, &behind, now, -1).unwrap();
        assert!(d.within_window && d.valid());
        let d = Drift::find(&c, &s, &behind, now, cur - 1).unwrap();
        assert!(d.already_used && !d.valid(), "a used step is not valid");
        let far = totp::code_at_step(&c, &s, cur + i64::from(DRIFT_SEARCH_STEPS) + 1);
        assert_eq!(Drift::find(&c, &s, &far, now, -1), None);
    }
}
