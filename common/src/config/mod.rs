//! The configuration file: parsed once into raw structs that reject unknown
//! keys, then validated into [`Config`]. Every error names the file and line.
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod raw;
use raw::RawConfig;

use crate::error::{Error, Result};
use crate::store::pg::PgTarget;
pub use crate::store::pg::SslMode;

/// Where the configuration lives unless `config=`, `--config` or
/// `CRM2FA_CONFIG` say otherwise.
pub const DEFAULT_PATH: &str = "/etc/crm2fa/crm2fa.toml";
/// Environment variable that overrides [`DEFAULT_PATH`].
pub const ENV_VAR: &str = "CRM2FA_CONFIG";
/// The shipped configuration, written by `crm2fa-admin init` when none exists.
pub const EXAMPLE: &str = include_str!("../../../packaging/crm2fa.toml");
/// [`EXAMPLE`]'s store and key, which a configuration written elsewhere
/// than [`DEFAULT_PATH`] keeps beside itself instead.
const EXAMPLE_FILES: [(&str, &str); 2] = [
    (
        "path = \"/var/lib/crm2fa/crm2fa.db\"",
        "path = \"crm2fa.db\"",
    ),
    (
        "key_file = \"/etc/crm2fa/secret.key\"",
        "key_file = \"secret.key\"",
    ),
];

/// The configuration `crm2fa-admin init` writes at `path`: the shipped
/// one; at another path than [`DEFAULT_PATH`], with its store and key
/// beside it (relative paths), so that a configuration made for a test or
/// a second instance leaves the host's own files alone.
pub fn example_for(path: &Path) -> String {
    if path == Path::new(DEFAULT_PATH) {
        return EXAMPLE.to_string();
    }
    EXAMPLE_FILES
        .iter()
        .fold(EXAMPLE.to_string(), |text, (shipped, beside)| {
            text.replacen(shipped, beside, 1)
        })
}

/// The config path to use: an explicit one, else `CRM2FA_CONFIG`, else the default.
/// The result is absolute, so the paths in the file are anchored to it.
pub fn resolve_path(explicit: Option<&Path>) -> PathBuf {
    let p = match (explicit, std::env::var_os(ENV_VAR)) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(v)) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_PATH),
    };
    std::path::absolute(&p).unwrap_or(p)
}

/// Who must use 2FA (`[policy] enforce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforce {
    /// Every user.
    All,
    /// Members of `enforce_groups`.
    Groups,
    /// Users who enrolled.
    OptIn,
}

/// What a required but unenrolled user gets (`[policy] unenrolled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unenrolled {
    /// Refuse the login.
    Deny,
    /// Let the password decide.
    Allow,
    /// Set up TOTP during the login.
    Enroll,
}

/// What a store or key failure does to a login (`[policy] failmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Deny.
    Secure,
    /// Let the password step decide.
    Safe,
}

/// How the SMTP connection is protected (`[email] tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// Plain SMTP.
    None,
    /// Upgrade with STARTTLS.
    Starttls,
    /// TLS from the first byte.
    Tls,
}

// ---- checked configuration ------------------------------------------------

/// `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The SQLite store (not used when `postgres` is set).
    pub path: PathBuf,
    /// The host key that seals secrets.
    pub key_file: PathBuf,
    /// A PostgreSQL store shared by many hosts (`url`), instead of `path`.
    pub postgres: Option<PostgresConfig>,
}

/// `[store] url` and its companions: a PostgreSQL store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// The server's host name or address.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The role.
    pub user: String,
    /// The database.
    pub dbname: String,
    /// TLS.
    pub sslmode: SslMode,
    /// Root-only file holding the role's password.
    pub password_file: Option<PathBuf>,
    /// CA certificates for `sslmode=verify-full`.
    pub ca_file: Option<PathBuf>,
    /// Seconds connecting may take.
    pub connect_timeout: i64,
    /// The PostgreSQL client library the PAM module loads (only when `url`
    /// is set: a host on SQLite never loads it).
    pub client_library: PathBuf,
}

impl PostgresConfig {
    /// The store `url` names, with its companions, checked as the config
    /// and `store copy --to` both need: Err names what is at fault (`url`,
    /// `password_file` or `ca_file`) and what is wrong.
    pub fn from_url(
        url: &str,
        password_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
        connect_timeout: i64,
        client_library: PathBuf,
    ) -> std::result::Result<PostgresConfig, (&'static str, String)> {
        let (user, host, port, dbname, sslmode) =
            parse_postgres_url(url).map_err(|m| ("url", m))?;
        tls_companions(sslmode, password_file.is_some(), ca_file.is_some())
            .map_err(|(key, m)| (key, m.to_string()))?;
        if crate::store::pg::on_socket(&host) && ca_file.is_some() {
            return Err((
                "ca_file",
                "the url names the server's Unix-domain socket, where TLS does not apply: \
                 leave ca_file out"
                    .into(),
            ));
        }
        Ok(PostgresConfig {
            host,
            port,
            user,
            dbname,
            sslmode,
            password_file,
            ca_file,
            connect_timeout,
            client_library,
        })
    }

    /// Where and how to connect, with the password read from
    /// `password_file` (which must be root's and closed to others). With
    /// `verify-full`, `ca_file` decides which server is trusted with the
    /// logins, so it must be root's and closed to writes by others, as the
    /// config is; so must a socket directory be closed to other users'
    /// writes, where the server is whoever made the socket.
    pub fn target(&self) -> Result<PgTarget> {
        if crate::store::pg::on_socket(&self.host) {
            crate::fsperm::check_socket_dir(Path::new(&self.host))?;
        }
        if let (SslMode::VerifyFull, Some(ca)) = (self.sslmode, &self.ca_file) {
            crate::fsperm::open_trusted(ca, crate::fsperm::Secrecy::NotWritableByOthers)?;
        }
        let password = match &self.password_file {
            Some(p) => {
                let text = crate::fsperm::read_trusted(p, crate::fsperm::Secrecy::OwnerOnly)?;
                let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
                // Where in it the bad byte is would say something of the
                // password: the message does not.
                let line = std::str::from_utf8(line).map_err(|_| {
                    Error::io(
                        p,
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "its first line is not UTF-8",
                        ),
                    )
                })?;
                Some(zeroize::Zeroizing::new(
                    line.trim_end_matches('\r').to_string(),
                ))
            }
            None => None,
        };
        Ok(PgTarget {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            dbname: self.dbname.clone(),
            password,
            sslmode: self.sslmode,
            ca_file: self.ca_file.clone(),
            connect_timeout: std::time::Duration::from_secs(
                u64::try_from(self.connect_timeout).unwrap_or(3),
            ),
            client_library: self.client_library.clone(),
        })
    }

    /// The address for messages, without a password.
    pub fn location(&self) -> String {
        crate::store::pg::location(&self.user, &self.host, self.port, &self.dbname)
    }
}

/// Whether `host` names this machine (`localhost` or a loopback address,
/// in brackets or not), where nothing sent to it crosses a network.
pub(crate) fn loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host of an `http://` or `https://` url (no user info, no port).
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    }
}

/// What `sslmode` needs beside the url, or refuses. `verify-full` checks
/// the server's certificate against `ca_file`, so it needs one. `require`
/// checks no certificate: the server proves itself by SCRAM with channel
/// binding instead, which needs the role's password (`password_file`), and
/// a `ca_file` would go unused while seeming to protect. Err: the key at
/// fault and what is wrong.
fn tls_companions(
    sslmode: SslMode,
    password_file: bool,
    ca_file: bool,
) -> std::result::Result<(), (&'static str, &'static str)> {
    match (sslmode, password_file, ca_file) {
        (SslMode::VerifyFull, _, false) => Err((
            "ca_file",
            "sslmode=verify-full needs ca_file, the CA that signed the server's certificate",
        )),
        (SslMode::Require, false, _) => Err((
            "password_file",
            "sslmode=require checks no certificate, so the server must prove itself by SCRAM \
             with channel binding, which needs the role's password: set password_file, or use \
             sslmode=verify-full with ca_file",
        )),
        (SslMode::Require, true, true) => Err((
            "ca_file",
            "sslmode=require does not check the certificate against ca_file; use \
             sslmode=verify-full (the certificate must then name the url's host)",
        )),
        _ => Ok(()),
    }
}

/// Read `postgres://USER@HOST[:PORT]/DB[?sslmode=MODE]`; a password in it
/// is refused (it belongs in `password_file`). HOST may be a server on this
/// host's Unix-domain socket: its directory, percent-encoded as libpq
/// writes it (`%2Frun%2Fpostgresql`); TLS does not apply there, so
/// `sslmode` is then `disable`, and no other mode is accepted.
fn parse_postgres_url(
    url: &str,
) -> std::result::Result<(String, String, u16, String, SslMode), String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or("must start with postgres://")?;
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, db) = main
        .split_once('/')
        .ok_or("needs a database: postgres://USER@HOST:PORT/DB")?;
    let (user, hostport) = authority
        .rsplit_once('@')
        .ok_or("needs a user: postgres://USER@HOST:PORT/DB")?;
    if user.contains(':') {
        return Err("must not hold a password: put it in password_file".into());
    }
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6.split_once(']').ok_or("has an unclosed [ in the host")?;
            (h, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("has a bad port {p:?}"))?,
        None => 5432,
    };
    if user.is_empty() || host.is_empty() || db.is_empty() || db.contains('/') {
        return Err("must be postgres://USER@HOST:PORT/DB".into());
    }
    // libpq's way to write a socket's directory: percent-encoded, from its
    // leading slash on. Any other host is a name or an address, as written.
    let socket = host.len() >= 3 && host[..3].eq_ignore_ascii_case("%2F");
    let host = if socket {
        percent_decoded(host)?
    } else {
        host.to_owned()
    };
    if socket && host.split('/').any(|part| part == "..") {
        return Err(format!("names the socket directory {host:?} with \"..\""));
    }
    let mut sslmode = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", "disable")) => sslmode = Some(SslMode::Disable),
            Some(("sslmode", "require")) => sslmode = Some(SslMode::Require),
            Some(("sslmode", "verify-full")) => sslmode = Some(SslMode::VerifyFull),
            Some(("sslmode", m)) => {
                return Err(format!(
                    "sslmode must be disable, require or verify-full, not {m:?}"
                ))
            }
            _ => return Err(format!("has an unknown parameter {pair:?} (only sslmode)")),
        }
    }
    let sslmode = match (socket, sslmode) {
        (false, mode) => mode.unwrap_or(SslMode::VerifyFull),
        (true, None | Some(SslMode::Disable)) => SslMode::Disable,
        (true, Some(_)) => {
            return Err(format!(
                "names the Unix-domain socket directory {host}, where TLS does not apply: \
                 leave sslmode out (or set sslmode=disable)"
            ))
        }
    };
    Ok((user.into(), host, port, db.into(), sslmode))
}

/// `text` with each `%XX` replaced by the byte it encodes; a `%` without
/// two hex digits after it is an error (not kept as it is).
fn percent_decoded(text: &str) -> std::result::Result<String, String> {
    let bad = || format!("has a bad %-escape in the host {text:?}");
    let escapes_whole = text.split('%').skip(1).all(|after| {
        after
            .as_bytes()
            .get(..2)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_whole {
        return Err(bad());
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(String::from)
        .map_err(|_| bad())
}

/// `[totp]`.
#[derive(Debug, Clone)]
pub struct TotpConfig {
    /// 6 or 8.
    pub digits: u32,
    /// Seconds per step.
    pub period: u64,
    /// Steps accepted either side of now.
    pub skew: u32,
    /// Shown in the authenticator app.
    pub issuer: String,
}

/// A Unix group named in the configuration, resolved when it loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    /// The name as written.
    pub name: String,
    /// Its id: membership is decided on ids.
    pub gid: u32,
}

impl GroupRef {
    /// Resolve `name` through NSS (`getgrnam`).
    fn resolve(name: &str) -> std::result::Result<GroupRef, String> {
        match crate::account::not_found_is_none(nix::unistd::Group::from_name(name)) {
            Ok(Some(g)) => Ok(GroupRef {
                name: name.into(),
                gid: g.gid.as_raw(),
            }),
            Ok(None) => Err(format!(
                "there is no group named {name:?} (check with `getent group {name}`)"
            )),
            Err(e) => Err(format!("cannot look up the group {name:?}: {e}")),
        }
    }
}

#[cfg(test)]
impl TotpConfig {
    /// The defaults (6 digits, 30 s, skew 1), for tests.
    pub(crate) fn for_tests() -> TotpConfig {
        TotpConfig {
            digits: 6,
            period: 30,
            skew: 1,
            issuer: "t".into(),
        }
    }
}

/// `[policy]`.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Who must use 2FA.
    pub enforce: Enforce,
    /// With `enforce = "groups"`: the groups that must.
    pub enforce_groups: Vec<GroupRef>,
    /// Groups never asked.
    pub exempt_groups: Vec<GroupRef>,
    /// Required but not enrolled.
    pub unenrolled: Unenrolled,
    /// Users whose 2FA can be replaced, never removed.
    pub protected_users: Vec<String>,
    /// Store or key failure.
    pub failmode: FailMode,
    /// Code attempts per login.
    pub prompts: u32,
}

/// `[lockout]`.
#[derive(Debug, Clone)]
pub struct LockoutConfig {
    /// Consecutive wrong codes before a lock.
    pub max_failures: u32,
    /// How long the first lock lasts.
    pub lock_seconds: i64,
    /// The longest lock: each further lock without a success doubles, up to this.
    pub max_lock_seconds: i64,
}

/// `[delivery]`: the program that sends codes and notices.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// The sending program (SMTP, HTTP, command); the module runs it only
    /// when a code must be sent.
    pub program: PathBuf,
    /// Seconds the program may take before it is stopped.
    pub timeout: i64,
    /// Codes sent per user and channel within `send_window`.
    pub max_sends: u32,
    /// Seconds over which `max_sends` counts.
    pub send_window: i64,
}

/// `[email]`.
#[derive(Debug, Clone)]
pub struct EmailConfig {
    /// SMTP server.
    pub smtp_host: String,
    /// SMTP port.
    pub smtp_port: u16,
    /// Connection protection.
    pub tls: Tls,
    /// Sender.
    pub from: String,
    /// SMTP user, empty for none.
    pub username: String,
    /// Root-only file with the SMTP password.
    pub password_file: Option<PathBuf>,
    /// Seconds a sent code stays valid.
    pub code_ttl: i64,
    /// Subject of a code message; `{account}`, `{code}`, `{minutes}` are replaced.
    pub subject: String,
    /// Body of a code message; `{account}`, `{code}`, `{minutes}` are replaced.
    pub body: String,
}

/// `[sms]`.
#[derive(Debug, Clone)]
pub struct SmsConfig {
    /// Program and arguments; the phone and message are appended.
    pub command: Vec<String>,
    /// HTTP gateway.
    pub url: String,
    /// HTTP method for the gateway: POST, PUT or GET.
    pub method: String,
    /// HTTP headers.
    pub headers: std::collections::BTreeMap<String, String>,
    /// HTTP body with `{phone}`, `{message}` and `{code}`.
    pub body_template: String,
    /// Root-only file with `user:password` for the gateway.
    pub credentials_file: Option<PathBuf>,
    /// Seconds a sent code stays valid.
    pub code_ttl: i64,
}

impl SmsConfig {
    /// Whether a command or a gateway is set: without either, no SMS is sent.
    pub fn sends(&self) -> bool {
        !self.command.is_empty() || !self.url.is_empty()
    }
}

/// A validated configuration. Paths are absolute.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from.
    pub source: PathBuf,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[totp]`.
    pub totp: TotpConfig,
    /// `[policy]`.
    pub policy: PolicyConfig,
    /// `[lockout]`.
    pub lockout: LockoutConfig,
    /// Days a successful login from one remote host is remembered (0: never).
    pub remember_days: u32,
    /// Backup codes per set.
    pub backup_code_count: u32,
    /// `[email]`, when configured.
    pub email: Option<EmailConfig>,
    /// `[sms]`, when the file has the section (see [`SmsConfig::sends`]).
    pub sms: Option<SmsConfig>,
    /// `[delivery]`.
    pub delivery: DeliveryConfig,
}

/// How many configuration files [`LastLoaded`] keeps parsed: PAM services
/// may each name their own (`config=`), and crm2fad serves them all.
const KEPT_CONFIGS: usize = 8;

/// The configuration a process last loaded from each path (up to
/// [`KEPT_CONFIGS`] paths, the one used longest ago forgotten first), with
/// the text it was parsed from: crm2fad, which reads the file at every
/// login, parses it again only when the text changed (see
/// [`Config::load_reusing`]).
#[derive(Debug, Default)]
pub struct LastLoaded(std::sync::Mutex<Vec<(PathBuf, String, Config)>>);

impl LastLoaded {
    /// The configuration parsed from `text` at `path`, if that is the one
    /// kept for `path`.
    fn parsed(&self, path: &Path, text: &str) -> Option<Config> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = kept.iter().position(|(p, t, _)| p == path && t == text)?;
        // Now the one used last.
        let entry = kept.remove(at);
        let cfg = entry.2.clone();
        kept.push(entry);
        Some(cfg)
    }

    fn keep(&self, path: &Path, text: String, cfg: &Config) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|(p, _, _)| p != path);
        if kept.len() >= KEPT_CONFIGS {
            kept.remove(0);
        }
        kept.push((path.into(), text, cfg.clone()));
    }
}

impl Config {
    /// Read, check ownership and permissions, parse and validate `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = Config::read(path)?;
        Config::parse(&text, path)
    }

    /// [`Config::load`], reusing `last`'s parse while the file holds the
    /// same text: the file is opened, checked and read as by `load`, and
    /// its groups looked up again (NSS may have changed them); a group
    /// that no longer resolves to the same id parses the text afresh, which
    /// says why. The same configuration as `load` gives, without parsing
    /// the TOML again.
    pub fn load_reusing(path: &Path, last: &LastLoaded) -> Result<Config> {
        let text = Config::read(path)?;
        if let Some(cfg) = last.parsed(path, &text) {
            let unchanged = |groups: &[GroupRef]| {
                groups
                    .iter()
                    .all(|g| GroupRef::resolve(&g.name).as_ref() == Ok(g))
            };
            if unchanged(&cfg.policy.enforce_groups) && unchanged(&cfg.policy.exempt_groups) {
                return Ok(cfg);
            }
        }
        let cfg = Config::parse(&text, path)?;
        last.keep(path, text, &cfg);
        Ok(cfg)
    }

    /// The text of the configuration file `path`, opened without following
    /// a symbolic link and checked (owner, mode, parent directories).
    fn read(path: &Path) -> Result<String> {
        let not_found = |e: Error| match e {
            Error::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::ConfigMissing { path }
            }
            e => e,
        };
        let mut bytes =
            crate::fsperm::read_trusted(path, crate::fsperm::Secrecy::NotWritableByOthers)
                .map_err(not_found)?;
        let text = String::from_utf8(std::mem::take(&mut *bytes)).map_err(|e| {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
            let column =
                good.len() - good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
            Error::ConfigSyntax {
                path: path.into(),
                line,
                column,
                message: "not UTF-8 text".into(),
            }
        })?;
        Ok(text)
    }

    /// Parse and validate configuration text; `path` names it in errors and
    /// anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            Error::ConfigSyntax {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        // The line of the key at fault; when the file does not set it (a
        // default clashes with what it does set), of `instead`, the key
        // that caused the clash, or else of the section. (The text is
        // parsed again for its spans only when there is an error.)
        let invalid_or = |section: &str, key: &str, instead: &str, message: String| {
            let lines = Lines::new(text);
            let at = [key, instead]
                .iter()
                .find_map(|k| lines.of_key(section, k))
                .or_else(|| lines.of_section(section))
                .map(|l| format!(":{l}"))
                .unwrap_or_default();
            Error::ConfigInvalid {
                location: format!("{}{at}", path.display()),
                message: format!("[{section}] {key}: {message}"),
            }
        };
        let invalid =
            |section: &str, key: &str, message: String| invalid_or(section, key, key, message);
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let anchor = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let optional_path = |p: &Path| -> Option<PathBuf> {
            if p.as_os_str().is_empty() {
                None
            } else {
                Some(anchor(p))
            }
        };
        let duration = |section: &str, key: &str, v: &str| -> Result<i64> {
            parse_duration(v).map_err(|m| invalid(section, key, m))
        };

        let t = raw.totp;
        if t.digits != 6 && t.digits != 8 {
            return Err(invalid(
                "totp",
                "digits",
                format!("must be 6 or 8, not {}", t.digits),
            ));
        }
        if !(1..=300).contains(&t.period) {
            return Err(invalid(
                "totp",
                "period",
                format!("must be 1 to 300 seconds, not {}", t.period),
            ));
        }
        if t.skew > 10 {
            return Err(invalid(
                "totp",
                "skew",
                format!("must be 0 to 10 steps, not {}", t.skew),
            ));
        }
        if t.issuer.is_empty() || t.issuer.contains(':') {
            return Err(invalid(
                "totp",
                "issuer",
                "must be non-empty and contain no ':'".into(),
            ));
        }
        let p = raw.policy;
        if p.prompts == 0 || p.prompts > 10 {
            return Err(invalid(
                "policy",
                "prompts",
                format!("must be 1 to 10, not {}", p.prompts),
            ));
        }
        if p.enforce == Enforce::Groups && p.enforce_groups.is_empty() {
            return Err(invalid_or(
                "policy",
                "enforce_groups",
                "enforce",
                "enforce = \"groups\" needs at least one group here".into(),
            ));
        }
        let groups = |key: &str, names: &[String]| -> Result<Vec<GroupRef>> {
            names
                .iter()
                .map(|n| GroupRef::resolve(n).map_err(|m| invalid("policy", key, m)))
                .collect()
        };
        let enforce_groups = groups("enforce_groups", &p.enforce_groups)?;
        let exempt_groups = groups("exempt_groups", &p.exempt_groups)?;
        let l = raw.lockout;
        if l.max_failures == 0 {
            return Err(invalid(
                "lockout",
                "max_failures",
                "must be at least 1".into(),
            ));
        }
        if l.lock_seconds == 0 || l.lock_seconds > 365 * 86400 {
            return Err(invalid(
                "lockout",
                "lock_seconds",
                "must be 1 second to one year".into(),
            ));
        }
        if l.max_lock_seconds < l.lock_seconds || l.max_lock_seconds > 365 * 86400 {
            return Err(invalid_or(
                "lockout",
                "max_lock_seconds",
                "lock_seconds",
                format!("must be lock_seconds ({}) to one year", l.lock_seconds),
            ));
        }
        if !(1..=100).contains(&raw.backup_codes.count) {
            return Err(invalid(
                "backup_codes",
                "count",
                format!("must be 1 to 100, not {}", raw.backup_codes.count),
            ));
        }
        if raw.remember.days > 365 {
            return Err(invalid("remember", "days", "must be 0 to 365".into()));
        }
        let email = match raw.email {
            None => None,
            Some(e) if !e.username.is_empty() && e.tls == Tls::None && !loopback(&e.smtp_host) => {
                return Err(invalid(
                    "email",
                    "tls",
                    "with a username, tls = \"none\" would send the SMTP password in clear: use \
                     \"starttls\" or \"tls\" (\"none\" only to a relay on this host)"
                        .into(),
                ));
            }
            Some(e) => Some(EmailConfig {
                code_ttl: duration("email", "code_ttl", &e.code_ttl)?,
                smtp_host: e.smtp_host,
                smtp_port: e.smtp_port,
                tls: e.tls,
                from: e.from,
                username: e.username,
                password_file: optional_path(&e.password_file),
                subject: e.subject,
                body: e.body,
            }),
        };
        let sms = match raw.sms {
            None => None,
            Some(s) => {
                let code_ttl = duration("sms", "code_ttl", &s.code_ttl)?;
                if !s.command.is_empty() && !s.url.is_empty() {
                    return Err(invalid(
                        "sms",
                        "url",
                        "set either command or url, not both".into(),
                    ));
                }
                // The code goes in every request (and credentials_file
                // as HTTP Basic auth): never in clear across a network.
                if s.url
                    .get(..7)
                    .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
                    && !loopback(url_host(&s.url))
                {
                    return Err(invalid(
                        "sms",
                        "url",
                        "the code (and credentials_file) would cross the network in clear over \
                         http://: use an https:// gateway (http:// only to one on this host)"
                            .into(),
                    ));
                }
                if !matches!(s.method.as_str(), "POST" | "PUT" | "GET") {
                    return Err(invalid(
                        "sms",
                        "method",
                        format!("must be POST, PUT or GET, not {:?}", s.method),
                    ));
                }
                Some(SmsConfig {
                    code_ttl,
                    command: s.command,
                    url: s.url,
                    method: s.method,
                    headers: s.headers,
                    body_template: s.body_template,
                    credentials_file: optional_path(&s.credentials_file),
                })
            }
        };
        let st = &raw.store;
        let connect_timeout = duration("store", "connect_timeout", &st.connect_timeout)?;
        let postgres = if st.url.is_empty() {
            None
        } else {
            let pg = PostgresConfig::from_url(
                &st.url,
                optional_path(&st.password_file),
                optional_path(&st.ca_file),
                connect_timeout,
                anchor(&st.client_library),
            )
            .map_err(|(key, m)| invalid("store", key, m))?;
            Some(pg)
        };
        let d = raw.delivery;
        if d.max_sends == 0 {
            return Err(invalid(
                "delivery",
                "max_sends",
                "must be at least 1".into(),
            ));
        }
        let delivery = DeliveryConfig {
            program: anchor(&d.program),
            timeout: duration("delivery", "timeout", &d.timeout)?,
            max_sends: d.max_sends,
            send_window: duration("delivery", "send_window", &d.send_window)?,
        };
        Ok(Config {
            source: path.to_path_buf(),
            store: StoreConfig {
                path: anchor(&raw.store.path),
                key_file: anchor(&raw.store.key_file),
                postgres,
            },
            totp: TotpConfig {
                digits: t.digits,
                period: t.period,
                skew: t.skew,
                issuer: t.issuer,
            },
            policy: PolicyConfig {
                enforce: p.enforce,
                enforce_groups,
                exempt_groups,
                unenrolled: p.unenrolled,
                protected_users: p.protected_users,
                failmode: p.failmode,
                prompts: p.prompts,
            },
            lockout: LockoutConfig {
                max_failures: l.max_failures,
                lock_seconds: i64::try_from(l.lock_seconds).unwrap_or(i64::MAX),
                max_lock_seconds: i64::try_from(l.max_lock_seconds).unwrap_or(i64::MAX),
            },
            remember_days: raw.remember.days,
            backup_code_count: raw.backup_codes.count,
            email,
            sms,
            delivery,
        })
    }
}

/// Parse a duration such as `90s`, `10m`, `48h` or `2d` into seconds.
pub fn parse_duration(v: &str) -> std::result::Result<i64, String> {
    let d = humantime::parse_duration(v.trim())
        .map_err(|e| format!("{v:?} is not a duration like 10m, 48h or 2d ({e})"))?;
    let secs = d.as_secs();
    if secs == 0 || secs > 10 * 365 * 86400 {
        return Err(format!("{v:?} must be between 1 second and 10 years"));
    }
    Ok(secs as i64)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Where keys and sections are in the configuration text, for errors
/// found after parsing: from the TOML parser's own spans, so every way of
/// writing a key (quoted, dotted, in an inline table, after a comment)
/// gives its line.
struct Lines<'a> {
    text: &'a str,
    doc: Option<toml_edit::ImDocument<&'a str>>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Lines<'a> {
        Lines {
            text,
            doc: toml_edit::ImDocument::parse(text).ok(),
        }
    }

    fn line_at(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }

    /// The line of `key` in `[section]`, if the file sets it.
    fn of_key(&self, section: &str, key: &str) -> Option<usize> {
        let table = self.doc.as_ref()?.get(section)?.as_table_like()?;
        let (k, v) = table.get_key_value(key)?;
        let span = k.span().or_else(|| v.span())?;
        Some(self.line_at(span.start))
    }

    /// The line of the `[section]` header, or of its first key.
    fn of_section(&self, section: &str) -> Option<usize> {
        let item = self.doc.as_ref()?.get(section)?;
        if let Some(span) = item.span() {
            return Some(self.line_at(span.start));
        }
        let table = item.as_table_like()?;
        table
            .iter()
            .filter_map(|(k, _)| table.get_key_value(k))
            .filter_map(|(k, v)| k.span().or_else(|| v.span()))
            .map(|s| self.line_at(s.start))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/crm2fa/crm2fa.toml"))
    }

    #[test]
    fn credentials_never_go_in_clear_to_another_host() {
        let smtp = |host: &str, tls: &str| {
            parse(&format!(
                "[email]\nsmtp_host = \"{host}\"\ntls = \"{tls}\"\nusername = \"crm2fa\"\n\
                 password_file = \"smtp.pw\"\n"
            ))
        };
        let e = smtp("mail.example", "none").unwrap_err();
        assert!(e.to_string().contains("[email] tls"), "{e}");
        for ok in [("mail.example", "starttls"), ("mail.example", "tls")] {
            assert!(smtp(ok.0, ok.1).is_ok(), "{ok:?}");
        }
        for here in ["localhost", "127.0.0.1", "::1", "[::1]", "127.0.0.53"] {
            assert!(smtp(here, "none").is_ok(), "{here}");
        }
        // Without a username nothing secret is sent.
        assert!(parse("[email]\nsmtp_host = \"mail.example\"\ntls = \"none\"\n").is_ok());

        let gateway = |url: &str| {
            parse(&format!(
                "[sms]\nurl = \"{url}\"\ncredentials_file = \"sms.cred\"\n"
            ))
        };
        for clear in [
            "http://sms.example/send",
            "HTTP://sms.example:8080/send?to={phone}",
            "http://user@sms.example/",
            "http://[2001:db8::1]:80/",
        ] {
            let e = gateway(clear).unwrap_err();
            assert!(e.to_string().contains("[sms] url"), "{clear}: {e}");
        }
        for fine in [
            "https://sms.example/send",
            "http://127.0.0.1:8080/send",
            "http://localhost/send",
            "http://[::1]:9000/x",
        ] {
            assert!(gateway(fine).is_ok(), "{fine}");
        }
        // Without credentials too: the code itself is in the request.
        let e = parse("[sms]\nurl = \"http://sms.example/send\"\n").unwrap_err();
        assert!(e.to_string().contains("in clear"), "{e}");
        assert!(parse("[sms]\nurl = \"http://127.0.0.1:8080/send\"\n").is_ok());
    }

    #[test]
    fn a_config_written_elsewhere_keeps_its_store_and_key_beside_it() {
        let shipped = Config::parse(
            &example_for(Path::new(DEFAULT_PATH)),
            Path::new(DEFAULT_PATH),
        )
        .unwrap();
        assert_eq!(
            shipped.store.path,
            PathBuf::from("/var/lib/crm2fa/crm2fa.db")
        );
        let at = Path::new("/srv/test/crm2fa.toml");
        let beside = Config::parse(&example_for(at), at).unwrap();
        assert_eq!(beside.store.path, PathBuf::from("/srv/test/crm2fa.db"));
        assert_eq!(beside.store.key_file, PathBuf::from("/srv/test/secret.key"));
        // Nothing else changes.
        assert_eq!(example_for(at).lines().count(), EXAMPLE.lines().count());
    }

    #[test]
    fn shipped_example_config_parses_with_design_defaults() {
        let c = parse(EXAMPLE).expect("packaging/crm2fa.toml must parse");
        assert_eq!(c.store.path, PathBuf::from("/var/lib/crm2fa/crm2fa.db"));
        assert_eq!(c.store.key_file, PathBuf::from("/etc/crm2fa/secret.key"));
        assert_eq!(c.totp.digits, 6);
        assert_eq!(c.totp.period, 30);
        assert_eq!(c.totp.skew, 1);
        assert_eq!(c.policy.enforce, Enforce::All);
        assert_eq!(c.policy.unenrolled, Unenrolled::Deny);
        assert_eq!(c.policy.failmode, FailMode::Secure);
        assert_eq!(c.policy.prompts, 3);
        assert_eq!(c.policy.protected_users, vec!["root".to_string()]);
        assert_eq!(c.lockout.max_failures, 5);
        assert_eq!(c.lockout.lock_seconds, 300);
        assert_eq!(c.lockout.max_lock_seconds, 86400);
        assert_eq!(c.backup_code_count, 10);
        assert_eq!(c.email.as_ref().map(|e| e.code_ttl), Some(600));
        let sms = c.sms.as_ref().expect("[sms] is in the shipped config");
        assert!(!sms.sends(), "no command and no gateway: no SMS is sent");
        assert_eq!(
            c.delivery.program,
            PathBuf::from("/usr/libexec/crm2fa/crm2fa-send")
        );
        assert_eq!(
            (
                c.delivery.timeout,
                c.delivery.max_sends,
                c.delivery.send_window
            ),
            (10, 3, 900)
        );
    }

    #[test]
    fn empty_config_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.policy.enforce, Enforce::All);
        assert!(c.email.is_none());
    }

    #[test]
    fn unknown_key_is_an_error_with_file_and_line() {
        let err = parse("[totp]\ndigits = 6\nperiode = 30\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/crm2fa/crm2fa.toml:3:"), "{err}");
        assert!(err.contains("periode"), "{err}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let err = parse("[totps]\n").unwrap_err().to_string();
        assert!(err.contains(":1:"), "{err}");
    }

    #[test]
    fn syntax_error_names_line() {
        let err = parse("[store]\npath = \n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/crm2fa/crm2fa.toml:2:"), "{err}");
    }

    #[test]
    fn bad_enum_value_names_line() {
        let err = parse("\n[policy]\nenforce = \"some\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(":3:"), "{err}");
    }

    #[test]
    fn invalid_digits_names_line() {
        let err = parse("[totp]\n\ndigits = 7\n").unwrap_err().to_string();
        assert!(err.contains("crm2fa.toml:3"), "{err}");
        assert!(err.contains("6 or 8"), "{err}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_directory() {
        let c = Config::parse(
            "[store]\npath = \"db/x.db\"\nkey_file = \"k\"\n",
            Path::new("/srv/conf/crm2fa.toml"),
        )
        .unwrap();
        assert_eq!(c.store.path, PathBuf::from("/srv/conf/db/x.db"));
        assert_eq!(c.store.key_file, PathBuf::from("/srv/conf/k"));
    }

    #[test]
    fn a_bad_value_names_its_line_however_the_key_is_written() {
        for (text, line) in [
            ("[totp] # six or eight\n\ndigits = 7\n", 3),
            ("[totp]\n\"digits\" = 7\n", 2),
            ("\ntotp.digits = 7\n", 2),
            ("\n\ntotp = { digits = 7 }\n", 3),
            (
                "[sms]\nbody_template = \"\"\"\ncode_ttl = 1\n\"\"\"\ncode_ttl = \"soon\"\n",
                5,
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains(&format!("crm2fa.toml:{line}:")),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn a_default_that_clashes_names_the_key_that_caused_it() {
        let err = parse("[lockout]\n\nlock_seconds = 100000\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("crm2fa.toml:3:") && err.contains("max_lock_seconds"),
            "{err}"
        );
        let err = parse("\n[policy]\nenforce = \"groups\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("crm2fa.toml:3:"), "{err}");
    }

    #[test]
    fn groups_policy_needs_groups() {
        let err = parse("[policy]\nenforce = \"groups\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("enforce_groups"), "{err}");
    }

    #[test]
    fn groups_resolve_to_ids_and_an_unknown_group_is_an_error_with_its_line() {
        let c = parse("[policy]\nenforce = \"groups\"\nenforce_groups = [\"root\"]\n").unwrap();
        assert_eq!(
            c.policy.enforce_groups,
            vec![GroupRef {
                name: "root".into(),
                gid: 0
            }]
        );
        let err = parse("[policy]\n\nexempt_groups = [\"no-such-group-crm2fa\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("crm2fa.toml:3"), "{err}");
        assert!(err.contains("no group named"), "{err}");
    }

    #[test]
    fn a_postgres_url_is_read_and_a_password_in_it_refused() {
        let ok = |u: &str| parse_postgres_url(u).unwrap();
        assert_eq!(
            ok("postgres://crm2fa@db.example:5433/fleet?sslmode=require"),
            (
                "crm2fa".into(),
                "db.example".into(),
                5433,
                "fleet".into(),
                SslMode::Require
            )
        );
        assert_eq!(
            ok("postgresql://u@[::1]/d?sslmode=disable"),
            ("u".into(), "::1".into(), 5432, "d".into(), SslMode::Disable)
        );
        assert_eq!(ok("postgres://u@h/d").4, SslMode::VerifyFull);
        for bad in [
            "mysql://u@h/d",
            "postgres://u:secret@h/d",
            "postgres://h/d",
            "postgres://u@h",
            "postgres://u@h:99999/d",
            "postgres://u@h/d?sslmode=prefer",
            "postgres://u@h/d?password=x",
        ] {
            assert!(parse_postgres_url(bad).is_err(), "{bad}");
        }
        let e = parse_postgres_url("postgres://u:hunter2@h/d").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn a_postgres_url_may_name_the_servers_socket_directory() {
        let ok = |u: &str| parse_postgres_url(u).unwrap();
        // As libpq writes it: the directory percent-encoded; no TLS there.
        assert_eq!(
            ok("postgres://crm2fa@%2Frun%2Fpostgresql/crm2fa"),
            (
                "crm2fa".into(),
                "/run/postgresql".into(),
                5432,
                "crm2fa".into(),
                SslMode::Disable
            )
        );
        assert_eq!(
            ok("postgres://u@%2fvar%2Frun%2Fpg:5433/d?sslmode=disable").1,
            "/var/run/pg"
        );
        for (bad, says) in [
            (
                "postgres://u@%2Frun%2Fpostgresql/d?sslmode=require",
                "TLS does not apply",
            ),
            (
                "postgres://u@%2Frun%2Fpostgresql/d?sslmode=verify-full",
                "TLS does not apply",
            ),
            ("postgres://u@%2Frun%2F..%2Ftmp/d", "\"..\""),
            ("postgres://u@%2Frun%2/d", "bad %-escape"),
            ("postgres://u@%2Frun%+1/d", "bad %-escape"),
            ("postgres://u@%2Frun%ff/d", "bad %-escape"),
        ] {
            let e = parse_postgres_url(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let path = Path::new("/etc/crm2fa/crm2fa.toml");
        let c = Config::parse(
            "[store]\nurl = \"postgres://crm2fa@%2Frun%2Fpostgresql:5433/crm2fa\"\n",
            path,
        )
        .unwrap();
        let pg = c.store.postgres.unwrap();
        // Messages write the url as the config does.
        assert_eq!(
            pg.location(),
            "postgres://crm2fa@%2Frun%2Fpostgresql:5433/crm2fa"
        );
        assert_eq!(
            crate::store::pg::location("u", "::1", 5432, "d"),
            "postgres://u@[::1]:5432/d"
        );
        // Whatever the directory's name, its url reads back as it.
        let odd = "/run/pg@x?y#z%20 é";
        let url = crate::store::pg::location("u", odd, 5433, "d");
        assert_eq!(ok(&url).1, odd, "{url}");
        // Only a socket's directory is percent-encoded: other hosts are
        // read as written.
        assert_eq!(ok("postgres://u@db%41/d").1, "db%41");
        // No TLS there, so no CA file either.
        let e = PostgresConfig::from_url(
            "postgres://u@%2Frun%2Fpostgresql/d",
            None,
            Some(PathBuf::from("/etc/ssl/ca.pem")),
            3,
            PathBuf::new(),
        )
        .unwrap_err();
        assert_eq!(e.0, "ca_file", "{e:?}");
        assert!(e.1.contains("TLS does not apply"), "{e:?}");
    }

    #[test]
    fn a_socket_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let socket_dir = dir.path().join("pg");
        std::fs::create_dir(&socket_dir).unwrap();
        let url = |d: &Path| {
            format!(
                "postgres://crm2fa@{}/crm2fa",
                d.display().to_string().replace('/', "%2F")
            )
        };
        let cfg =
            |d: &Path| PostgresConfig::from_url(&url(d), None, None, 3, PathBuf::new()).unwrap();
        // Debian's /run/postgresql: its owner's and group's to write.
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o2775)).unwrap();
        let target = cfg(&socket_dir).target().unwrap();
        assert!(target.on_socket());
        assert_eq!(target.host, socket_dir.to_str().unwrap());
        // Any user could stand in for the server: refused, saying how to fix it.
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = cfg(&socket_dir).target().unwrap_err().to_string();
        assert!(e.contains("stands in for the server"), "{e}");
        assert!(e.contains("chmod o-w"), "{e}");
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = cfg(&file).target().unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        let e = cfg(&dir.path().join("gone"))
            .target()
            .unwrap_err()
            .to_string();
        assert!(e.contains("gone"), "{e}");
        // A link to the directory: the link could be pointed elsewhere.
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&socket_dir, &link).unwrap();
        let e = cfg(&link).target().unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        // An ordinary user's directory, or one under such a user's: they
        // could put their own socket there.
        let chown = |p: &Path, uid: u32| std::os::unix::fs::chown(p, Some(uid), None).unwrap();
        chown(&socket_dir, 1000);
        let e = cfg(&socket_dir).target().unwrap_err().to_string();
        assert!(e.contains("uid 1000, an ordinary user"), "{e}");
        chown(&socket_dir, 101);
        assert!(cfg(&socket_dir).target().is_ok());
        chown(dir.path(), 1000);
        let e = cfg(&socket_dir).target().unwrap_err().to_string();
        assert!(e.contains("uid 1000, not root nor uid 101"), "{e}");
        // The server's own account may own the directories above too.
        chown(dir.path(), 101);
        assert!(cfg(&socket_dir).target().is_ok());
        chown(dir.path(), 0);
    }

    #[test]
    fn the_password_is_the_first_line_of_password_file() {
        if !nix::unistd::geteuid().is_root() {
            return; // the file must be root's
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("db.password");
        let text = format!(
            "[store]\nurl = \"postgres://u@h/d?sslmode=require\"\npassword_file = \"{}\"\n",
            pw.display()
        );
        let cfg = Config::parse(&text, &dir.path().join("crm2fa.toml")).unwrap();
        let pg = cfg.store.postgres.unwrap();
        let password = |bytes: &[u8]| {
            std::fs::write(&pw, bytes).unwrap();
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
            pg.target().map(|t| t.password.map(|p| p.to_string()))
        };
        assert_eq!(password(b"s3cret\n").unwrap().as_deref(), Some("s3cret"));
        assert_eq!(
            password(b"s3cret\r\nnot this\n").unwrap().as_deref(),
            Some("s3cret")
        );
        assert_eq!(password(b"s3cret").unwrap().as_deref(), Some("s3cret"));
        let e = password(b"s3\xffcret\n").unwrap_err().to_string();
        assert!(e.contains("db.password"), "{e}");
        assert!(e.contains("not UTF-8") && !e.contains("index"), "{e}");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = pg.target().unwrap_err().to_string();
        assert!(e.contains("db.password"), "{e}");
    }

    #[test]
    fn a_postgres_store_is_configured_with_its_companions() {
        let path = Path::new("/etc/crm2fa/crm2fa.toml");
        let c = Config::parse(
            "[store]\nurl = \"postgres://crm2fa@db:5432/crm2fa?sslmode=verify-full\"\n\
             password_file = \"db.password\"\nca_file = \"/etc/ssl/db-ca.pem\"\n\
             connect_timeout = \"2s\"\n",
            path,
        )
        .unwrap();
        let pg = c.store.postgres.unwrap();
        assert_eq!(
            pg.password_file,
            Some(PathBuf::from("/etc/crm2fa/db.password"))
        );
        assert_eq!((pg.connect_timeout, pg.sslmode), (2, SslMode::VerifyFull));
        assert_eq!(pg.location(), "postgres://crm2fa@db:5432/crm2fa");
        let e = Config::parse("[store]\nurl = \"postgres://u@h/d\"\n", path).unwrap_err();
        assert!(e.to_string().contains("[store] ca_file"), "{e}");
        // require: the server proves itself by SCRAM with channel binding,
        // so a password is needed, and a ca_file would go unused.
        let require = "[store]\nurl = \"postgres://u@h/d?sslmode=require\"\n";
        let e = Config::parse(require, path).unwrap_err();
        assert!(e.to_string().contains("[store] password_file"), "{e}");
        let with_pw = format!("{require}password_file = \"db.password\"\n");
        assert!(Config::parse(&with_pw, path).is_ok());
        let e = Config::parse(&format!("{with_pw}ca_file = \"ca.pem\"\n"), path).unwrap_err();
        assert!(e.to_string().contains("[store] ca_file"), "{e}");
        assert!(e.to_string().contains("verify-full"), "{e}");
        let e = Config::parse("[store]\n\nurl = \"postgres://u:pw@h/d\"\n", path).unwrap_err();
        assert!(
            e.to_string().starts_with("/etc/crm2fa/crm2fa.toml:3:"),
            "{e}"
        );
        assert!(Config::parse("", path).unwrap().store.postgres.is_none());
    }

    #[test]
    fn durations_accept_minutes_hours_days() {
        assert_eq!(parse_duration("10m").unwrap(), 600);
        assert_eq!(parse_duration("48h").unwrap(), 172800);
        assert_eq!(parse_duration("2d").unwrap(), 172800);
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn a_config_read_again_is_parsed_again_only_when_its_text_changed() {
        use std::os::unix::fs::PermissionsExt;
        // The ownership checks refuse a file root does not own.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm2fa.toml");
        let write = |text: &str| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        let text = |failures: &str| {
            format!(
                "[policy]\nenforce = \"groups\"\nenforce_groups = [\"root\"]\n\
                 [lockout]\nmax_failures = {failures}\n"
            )
        };
        let last = LastLoaded::default();
        write(&text("4"));
        let first = Config::load_reusing(&path, &last).unwrap();
        assert_eq!(
            format!("{first:?}"),
            format!("{:?}", Config::load(&path).unwrap())
        );
        assert!(
            last.parsed(&path, &text("4")).is_some(),
            "the parse is kept"
        );
        assert!(last
            .parsed(&dir.path().join("other.toml"), &text("4"))
            .is_none());
        let again = Config::load_reusing(&path, &last).unwrap();
        assert_eq!(format!("{again:?}"), format!("{first:?}"));
        // Another value of the same length: read, compared, parsed anew.
        write(&text("6"));
        assert_eq!(
            Config::load_reusing(&path, &last)
                .unwrap()
                .lockout
                .max_failures,
            6
        );
        // A file broken since is refused, never answered from the kept parse.
        write("[lockout\n");
        let e = Config::load_reusing(&path, &last).unwrap_err().to_string();
        assert!(e.contains("crm2fa.toml:1:"), "{e}");
        // And so is one others may now write.
        write(&text("6"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(Config::load_reusing(&path, &last).is_err());
    }

    #[test]
    fn each_services_configuration_is_kept_parsed_up_to_a_bound() {
        if !nix::unistd::geteuid().is_root() {
            return; // the files must be root's
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = |i: usize| dir.path().join(format!("service{i}.toml"));
        let text = |i: usize| format!("[lockout]\nmax_failures = {}\n", i + 1);
        for i in 0..=KEPT_CONFIGS {
            std::fs::write(path(i), text(i)).unwrap();
            std::fs::set_permissions(path(i), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let last = LastLoaded::default();
        // Two services' logins in turn: each finds its own kept.
        for _ in 0..2 {
            for i in [0, 1] {
                let cfg = Config::load_reusing(&path(i), &last).unwrap();
                assert_eq!(cfg.lockout.max_failures, i as u32 + 1);
            }
        }
        assert!(last.parsed(&path(1), &text(1)).is_some());
        assert!(last.parsed(&path(0), &text(0)).is_some());
        // Past the bound the one used longest ago goes: 0 was used after 1
        // (just above), so 1 goes when the last of the others is loaded.
        for i in 2..=KEPT_CONFIGS {
            Config::load_reusing(&path(i), &last).unwrap();
        }
        assert!(last.parsed(&path(1), &text(1)).is_none());
        for i in (0..=KEPT_CONFIGS).filter(|&i| i != 1) {
            assert!(last.parsed(&path(i), &text(i)).is_some(), "{i}");
        }
        // A path's new text replaces its old parse, not another path's.
        std::fs::write(path(0), text(5)).unwrap();
        assert_eq!(
            Config::load_reusing(&path(0), &last)
                .unwrap()
                .lockout
                .max_failures,
            6
        );
        assert!(last.parsed(&path(0), &text(0)).is_none());
        assert!(last.parsed(&path(0), &text(5)).is_some());
        assert!(last.parsed(&path(2), &text(2)).is_some());
        assert_eq!(last.0.lock().unwrap().len(), KEPT_CONFIGS);
    }
}
