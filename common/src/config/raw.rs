//! The file as written: every section and key the configuration may have,
//! with its default. Unknown keys are an error (`deny_unknown_fields`).
use std::path::PathBuf;

use serde::Deserialize;

use super::{Enforce, FailMode, Tls, Unenrolled};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) store: RawStore,
    pub(super) totp: RawTotp,
    pub(super) policy: RawPolicy,
    pub(super) lockout: RawLockout,
    pub(super) remember: RawRemember,
    pub(super) backup_codes: RawBackupCodes,
    pub(super) email: Option<RawEmail>,
    pub(super) sms: Option<RawSms>,
    pub(super) delivery: RawDelivery,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDelivery {
    pub(super) program: PathBuf,
    pub(super) timeout: String,
    pub(super) max_sends: u32,
    pub(super) send_window: String,
}
impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            program: "/usr/libexec/crm2fa/crm2fa-send".into(),
            timeout: "10s".into(),
            max_sends: 3,
            send_window: "15m".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStore {
    pub(super) path: PathBuf,
    pub(super) key_file: PathBuf,
    pub(super) url: String,
    pub(super) password_file: PathBuf,
    pub(super) ca_file: PathBuf,
    pub(super) connect_timeout: String,
    pub(super) client_library: PathBuf,
}
impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            path: "/var/lib/crm2fa/crm2fa.db".into(),
            key_file: "/etc/crm2fa/secret.key".into(),
            url: String::new(),
            password_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            connect_timeout: "3s".into(),
            client_library: "/usr/lib/crm2fa/libcrm2fa_pg.so".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTotp {
    pub(super) digits: u32,
    pub(super) period: u64,
    pub(super) skew: u32,
    pub(super) issuer: String,
}
impl Default for RawTotp {
    fn default() -> Self {
        RawTotp {
            digits: 6,
            period: 30,
            skew: 1,
            issuer: "crm2fa".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPolicy {
    pub(super) enforce: Enforce,
    pub(super) enforce_groups: Vec<String>,
    pub(super) exempt_groups: Vec<String>,
    pub(super) unenrolled: Unenrolled,
    pub(super) protected_users: Vec<String>,
    pub(super) failmode: FailMode,
    pub(super) prompts: u32,
}
impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy {
            enforce: Enforce::All,
            enforce_groups: vec![],
            exempt_groups: vec![],
            unenrolled: Unenrolled::Deny,
            protected_users: vec!["root".into()],
            failmode: FailMode::Secure,
            prompts: 3,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLockout {
    pub(super) max_failures: u32,
    pub(super) lock_seconds: u64,
    pub(super) max_lock_seconds: u64,
}
impl Default for RawLockout {
    fn default() -> Self {
        RawLockout {
            max_failures: 5,
            lock_seconds: 300,
            max_lock_seconds: 86400,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRemember {
    pub(super) days: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBackupCodes {
    pub(super) count: u32,
}
impl Default for RawBackupCodes {
    fn default() -> Self {
        RawBackupCodes { count: 10 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawEmail {
    pub(super) smtp_host: String,
    pub(super) smtp_port: u16,
    pub(super) tls: Tls,
    pub(super) from: String,
    pub(super) username: String,
    pub(super) password_file: PathBuf,
    pub(super) code_ttl: String,
    pub(super) subject: String,
    pub(super) body: String,
}
impl Default for RawEmail {
    fn default() -> Self {
        RawEmail {
            smtp_host: "localhost".into(),
            smtp_port: 25,
            tls: Tls::Starttls,
            from: "crm2fa <root@localhost>".into(),
            username: String::new(),
            password_file: PathBuf::new(),
            code_ttl: "10m".into(),
            subject: "Your verification code".into(),
            body: "Your verification code for {account} is {code}.\n\
                   It is valid for {minutes} minutes and works once.\n\n\
                   If you did not just try to log in, tell your administrator: \
                   someone knows your password."
                .into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSms {
    pub(super) command: Vec<String>,
    pub(super) url: String,
    pub(super) method: String,
    pub(super) headers: std::collections::BTreeMap<String, String>,
    pub(super) body_template: String,
    pub(super) credentials_file: PathBuf,
    pub(super) code_ttl: String,
}
impl Default for RawSms {
    fn default() -> Self {
        RawSms {
            command: vec![],
            url: String::new(),
            method: "POST".into(),
            headers: Default::default(),
            body_template: String::new(),
            credentials_file: PathBuf::new(),
            code_ttl: "10m".into(),
        }
    }
}
