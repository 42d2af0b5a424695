//! crm2fa-admin: enrol users, reset lost devices, manage backup and recovery
//! codes, unlock, explain policy and read the audit log.
#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{json, Value};

use crm2fa_common::audit::Logger;
use crm2fa_common::codes::{self, Code};
use crm2fa_common::config::{self, Config};
use crm2fa_common::crypto::HostKey;
use crm2fa_common::enroll::{self, audit_entry};
use crm2fa_common::fsperm;
use crm2fa_common::policy;
use crm2fa_common::qr::{self, QrStyle};
use crm2fa_common::store::{Store, TotpMatch, TotpState, UserRecord};
use crm2fa_common::{rfc3339, totp, unix_now, Error};

/// The service name written to the audit log for administrative actions.
const SERVICE: &str = "crm2fa-admin";

#[derive(Parser)]
#[command(
    name = "crm2fa-admin",
    version,
    about = "Manage crm2fa two-factor authentication"
)]
struct Cli {
    /// Configuration file [default: $CRM2FA_CONFIG or /etc/crm2fa/crm2fa.toml]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Machine-readable output: one JSON document on stdout
    #[arg(long, global = true)]
    json: bool,
    /// Do not ask for confirmation of destructive actions
    #[arg(long, short = 'y', global = true)]
    yes: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the config directory, host key file (0600) and store; idempotent
    Init,
    /// Give USER a new TOTP secret: prints a QR code, the manual key and the URI
    Enroll {
        user: String,
        /// Do not print the QR code
        #[arg(long)]
        no_qr: bool,
        /// How to draw the QR code
        #[arg(long, value_name = "STYLE", default_value = "unicode", value_parser = ["unicode", "ascii"])]
        qr: String,
        /// The first code from the app: confirms and activates at once
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
    },
    /// Activate a pending enrolment with a code from the app
    Confirm { user: String, code: String },
    /// Show USER's 2FA state
    Status { user: String },
    /// Show every user the store knows
    List,
    /// Verify a code without logging in: consumes and counts nothing
    Check { user: String, code: String },
    /// Lost device: remove all of USER's factors and codes
    Reset { user: String },
    /// Show how many backup codes are left, or make a new set
    BackupCodes {
        user: String,
        /// Make a new set; the old set stops working at once
        #[arg(long)]
        regenerate: bool,
        /// Also write the new codes to FILE (mode 0600), ready to print
        #[arg(long, value_name = "FILE", requires = "regenerate")]
        output: Option<PathBuf>,
    },
    /// Issue a one-time recovery code for a user who lost every factor; clears a lock
    Recovery {
        user: String,
        /// How long the code is valid, e.g. 30m, 48h, 2d
        #[arg(long, value_name = "DURATION", default_value = "48h", value_parser = config::parse_duration)]
        valid: i64,
    },
    /// Clear USER's lockout
    Unlock { user: String },
    /// Turn USER's 2FA off, keeping their factors (`enable` turns it back on)
    Disable {
        user: String,
        /// Also when the policy requires 2FA of USER
        #[arg(long)]
        override_policy: bool,
    },
    /// Turn USER's 2FA back on with the factors they had
    Enable { user: String },
    /// Explain whether 2FA is required for USER, and why
    Policy { user: String },
    /// The audit log, oldest first
    Audit {
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// RFC 3339 time, YYYY-MM-DD, or a duration back from now (e.g. 24h)
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<i64>,
    },
    /// Check permissions, config, key and store integrity; say how to fix
    Doctor,
    /// Print shell completions
    Completions { shell: clap_complete::Shell },
}

/// Output mode and confirmation rules for one run.
struct Ui {
    json: bool,
    yes: bool,
}

impl Ui {
    fn print_json(&self, v: &Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }

    /// Ask before a destructive action: on a terminal, ask; otherwise require --yes.
    fn confirm(&self, what: &str) -> Result<(), Error> {
        if self.yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() || self.json {
            return Err(Error::Refused(format!(
                "{what}: this is destructive; pass --yes to do it without a terminal"
            )));
        }
        eprint!("{what}. Continue? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::Refused(format!("cannot read the answer: {e}")))?;
        if matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            Ok(())
        } else {
            Err(Error::Refused("cancelled; nothing was changed".into()))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crm2fa-admin: {e}");
            ExitCode::from(1)
        }
    }
}

/// Configuration, host key and store, opened once for a command.
struct Ctx {
    cfg: Config,
    store: Store,
    /// Every change is written to syslog (authpriv) as well as the audit table.
    log: Logger,
}

impl Ctx {
    fn open(config: Option<&Path>) -> Result<Ctx, Error> {
        let path = config::resolve_path(config);
        let cfg = Config::load(&path).map_err(|e| match e {
            Error::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::Refused(format!(
                    "{} does not exist; run `crm2fa-admin init` first",
                    path.display()
                ))
            }
            e => e,
        })?;
        let store = Store::open(&cfg.store.path)?;
        Ok(Ctx {
            cfg,
            store,
            log: Logger::new(SERVICE, false),
        })
    }

    fn key(&self) -> Result<HostKey, Error> {
        HostKey::load(&self.cfg.store.key_file)
    }

    fn record(&self, user: &str) -> Result<Option<UserRecord>, Error> {
        self.store.user(user)
    }
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    let ui = Ui {
        json: cli.json,
        yes: cli.yes,
    };
    let now = unix_now();
    let config = cli.config.as_deref();
    match cli.command {
        Command::Init => init(&ui, config),
        Command::Doctor => {
            let checks = crm2fa_common::doctor::run(&config::resolve_path(config));
            let healthy = checks.iter().all(|c| c.ok);
            if ui.json {
                ui.print_json(&json!({"ok": healthy, "checks": checks}));
            } else {
                for c in &checks {
                    println!(
                        "{:<7} {:<16} {}",
                        if c.ok { "ok" } else { "PROBLEM" },
                        c.check,
                        c.detail
                    );
                    if let Some(fix) = &c.fix {
                        println!("{:<7} {:<16} fix: {fix}", "", "");
                    }
                }
            }
            Ok(if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "crm2fa-admin",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Enroll {
            user,
            no_qr,
            qr,
            code,
        } => {
            let style = if no_qr {
                QrStyle::None
            } else {
                QrStyle::parse(&qr).unwrap_or(QrStyle::Unicode)
            };
            enroll_user(&ui, &mut Ctx::open(config)?, &user, style, code, now)
        }
        Command::Confirm { user, code } => {
            let mut ctx = Ctx::open(config)?;
            match confirm_code(&mut ctx, &user, &code, now)? {
                Some(codes) => {
                    if ui.json {
                        ui.print_json(&json!({"user": user, "state": "active", "backup_codes": shown(&codes)}));
                    } else {
                        println!("Two-factor authentication is now active for {user}.");
                        print_backup_codes(&codes);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None => Err(Error::Refused(format!(
                    "invalid verification code for {user} (or the code was already used); \
                     nothing was activated"
                ))),
            }
        }
        Command::Status { user } => {
            let ctx = Ctx::open(config)?;
            let v = status_json(&ctx, &user, ctx.record(&user)?.as_ref(), now)?;
            if ui.json {
                ui.print_json(&v);
            } else {
                print_status(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List => {
            let ctx = Ctx::open(config)?;
            let mut all = vec![];
            for r in ctx.store.users()? {
                all.push(status_json(&ctx, &r.name, Some(&r), now)?);
            }
            if ui.json {
                ui.print_json(&Value::Array(all));
            } else if all.is_empty() {
                println!("No users enrolled.");
            } else {
                println!(
                    "{:<20} {:<9} {:>6} {:<7} LAST SUCCESS",
                    "USER", "STATE", "BACKUP", "LOCKED"
                );
                for v in &all {
                    println!(
                        "{:<20} {:<9} {:>6} {:<7} {}",
                        v["user"].as_str().unwrap_or(""),
                        v["state"].as_str().unwrap_or(""),
                        v["backup_codes_left"].to_string(),
                        if v["locked"].as_bool() == Some(true) {
                            "yes"
                        } else {
                            "no"
                        },
                        v["last_success"].as_str().unwrap_or("never"),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { user, code } => check(&ui, &Ctx::open(config)?, &user, &code, now),
        Command::Reset { user } => {
            let mut ctx = Ctx::open(config)?;
            if ctx.record(&user)?.is_none() {
                return Err(Error::Refused(format!(
                    "{user} has no factors; nothing to reset"
                )));
            }
            if ctx.cfg.policy.protected_users.contains(&user) {
                return Err(Error::Refused(format!(
                    "{user} is a protected user: their 2FA can be replaced, never removed; \
                     give them a new device with `crm2fa-admin enroll {user}`"
                )));
            }
            ui.confirm(&format!(
                "This removes every factor of {user}: authenticator app, backup and recovery codes"
            ))?;
            let audit = audit_entry(
                now,
                &user,
                SERVICE,
                "",
                "reset",
                "done",
                "all factors removed",
            );
            ctx.store.reset(&user, now, &audit)?;
            ctx.log.entry(&audit);
            if ui.json {
                ui.print_json(&json!({"user": user, "state": "none"}));
            } else {
                println!(
                    "All factors of {user} removed. Enrol them again with `crm2fa-admin enroll {user}`."
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::BackupCodes {
            user,
            regenerate,
            output,
        } => {
            let mut ctx = Ctx::open(config)?;
            if !regenerate {
                let left = ctx.record(&user)?.map(|r| r.backup_codes_left).unwrap_or(0);
                if ui.json {
                    ui.print_json(&json!({"user": user, "backup_codes_left": left}));
                } else {
                    println!("{user} has {left} unused backup code(s). New set: --regenerate");
                }
                return Ok(ExitCode::SUCCESS);
            }
            ui.confirm(&format!(
                "This makes new backup codes for {user}; the old ones stop working at once"
            ))?;
            // Open the page first: a path that cannot be written must not
            // void the old set and lose the new one.
            let mut page = match &output {
                Some(out) => Some(fsperm::open_private_new(out).map_err(|e| match e {
                    Error::Io { source, .. }
                        if source.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        Error::Refused(format!(
                            "{} already exists; remove it or choose another file; nothing was changed",
                            out.display()
                        ))
                    }
                    e => Error::Refused(format!("{e}; nothing was changed")),
                })?),
                None => None,
            };
            let codes = enroll::regenerate_backup_codes(
                &ctx.cfg,
                &mut ctx.store,
                &user,
                now,
                SERVICE,
                &mut ctx.log,
            );
            let codes = match codes {
                Ok(c) => c,
                Err(e) => {
                    if let Some(out) = &output {
                        let _ = std::fs::remove_file(out);
                    }
                    return Err(e);
                }
            };
            let mut page_error = None;
            if let (Some(f), Some(out)) = (page.as_mut(), &output) {
                let text = zeroize::Zeroizing::new(printable_page(&user, &codes, now));
                if let Err(e) = f.write_all(text.as_bytes()).and_then(|_| f.sync_all()) {
                    let _ = std::fs::remove_file(out);
                    page_error = Some(Error::Refused(format!(
                        "cannot write {}: {e}; the new codes are shown above, copy them by hand",
                        out.display()
                    )));
                }
            }
            // The new set is in force: show it whatever happened to the page.
            if ui.json {
                ui.print_json(&json!({"user": user, "backup_codes": shown(&codes)}));
            } else {
                println!("New backup codes for {user} (the old set no longer works):");
                print_backup_codes(&codes);
                if let (Some(out), None) = (&output, &page_error) {
                    println!("Written to {} (mode 0600), ready to print.", out.display());
                }
            }
            match page_error {
                Some(e) => Err(e),
                None => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Recovery { user, valid } => {
            let secs = valid;
            let mut ctx = Ctx::open(config)?;
            warn_if_no_account(&user);
            let (code, expires) =
                enroll::issue_recovery(&mut ctx.store, &user, secs, now, SERVICE, &mut ctx.log)?;
            if ui.json {
                ui.print_json(
                    &json!({"user": user, "code": code.display(), "expires_at": rfc3339(expires)}),
                );
            } else {
                println!("Recovery code for {user}: {}", code.display());
                println!(
                    "It works once, at the \"Verification code:\" prompt, until {} (UTC).",
                    rfc3339(expires)
                );
                println!("Any lock on {user} has been cleared. After logging in, re-enrol or regenerate backup codes.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Unlock { user } => {
            let mut ctx = Ctx::open(config)?;
            let audit = audit_entry(now, &user, SERVICE, "", "unlock", "done", "lockout cleared");
            if !ctx.store.unlock(&user, now, &audit)? {
                return Err(Error::Refused(format!("{user} is not known to crm2fa")));
            }
            ctx.log.entry(&audit);
            if ui.json {
                ui.print_json(&json!({"user": user, "locked": false}));
            } else {
                println!("{user} is unlocked.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Disable {
            user,
            override_policy,
        } => {
            let mut ctx = Ctx::open(config)?;
            if ctx.cfg.policy.protected_users.contains(&user) {
                return Err(Error::Refused(format!(
                    "{user} is a protected user: their 2FA can never be disabled"
                )));
            }
            let d = decide_for(&ctx, &user, now)?;
            if d.required && !override_policy {
                return Err(Error::Refused(format!(
                    "the policy requires 2FA of {user} ({}); pass --override-policy to disable it anyway",
                    d.reason
                )));
            }
            ui.confirm(&format!(
                "{user} will log in with the password alone until `crm2fa-admin enable {user}`"
            ))?;
            set_disabled(&ui, &mut ctx, &user, true, now)
        }
        Command::Enable { user } => {
            let mut ctx = Ctx::open(config)?;
            set_disabled(&ui, &mut ctx, &user, false, now)
        }
        Command::Policy { user } => {
            let ctx = Ctx::open(config)?;
            let d = decide_for(&ctx, &user, now)?;
            if ui.json {
                ui.print_json(&json!({"user": user, "required": d.required, "asked": d.ask, "reason": d.reason}));
            } else {
                println!(
                    "{user}: 2FA is {} ({}); the login {} ask for a code.",
                    if d.required {
                        "required"
                    } else {
                        "not required"
                    },
                    d.reason,
                    if d.ask { "will" } else { "will not" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { user, since } => {
            let ctx = Ctx::open(config)?;
            let rows = ctx.store.audit(user.as_deref(), since)?;
            if ui.json {
                let v: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        json!({"time": rfc3339(r.time), "user": r.user, "service": r.service,
                               "rhost": r.rhost, "event": r.event, "outcome": r.outcome, "detail": r.detail})
                    })
                    .collect();
                ui.print_json(&Value::Array(v));
            } else {
                for r in rows {
                    println!(
                        "{} {} {}{} {} {} {}",
                        rfc3339(r.time),
                        r.user,
                        r.service,
                        if r.rhost.is_empty() {
                            String::new()
                        } else {
                            format!(" from {}", r.rhost)
                        },
                        r.event,
                        r.outcome,
                        r.detail
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The policy's decision for USER, as the login would make it now.
fn decide_for(ctx: &Ctx, user: &str, now: i64) -> Result<policy::Decision, Error> {
    let groups = if policy::needs_groups(&ctx.cfg.policy) {
        policy::unix_groups(user)?
    } else {
        vec![]
    };
    let rec = ctx.record(user)?;
    let has_recovery = ctx.store.has_valid_recovery(user, now)?;
    Ok(policy::decide(
        &ctx.cfg.policy,
        user,
        &groups,
        rec.as_ref(),
        has_recovery,
    ))
}

fn set_disabled(
    ui: &Ui,
    ctx: &mut Ctx,
    user: &str,
    disabled: bool,
    now: i64,
) -> Result<ExitCode, Error> {
    let (event, detail) = if disabled {
        ("disable", "2FA turned off; factors kept")
    } else {
        ("enable", "2FA turned back on")
    };
    let audit = audit_entry(now, user, SERVICE, "", event, "done", detail);
    if !ctx.store.set_disabled(user, disabled, now, &audit)? {
        return Err(Error::Refused(format!(
            "{user} has no second factor to {event}; enrol them with `crm2fa-admin enroll {user}`"
        )));
    }
    ctx.log.entry(&audit);
    let state = ctx
        .record(user)?
        .map(|r| r.display_state())
        .unwrap_or("none");
    if ui.json {
        ui.print_json(&json!({"user": user, "state": state}));
    } else if disabled {
        println!("2FA is off for {user}: the login will not ask for a code. Undo: crm2fa-admin enable {user}");
    } else {
        println!("2FA is on again for {user} (state: {state}).");
    }
    Ok(ExitCode::SUCCESS)
}

fn init(ui: &Ui, config: Option<&Path>) -> Result<ExitCode, Error> {
    let path = config::resolve_path(config);
    let mut done = vec![];
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fsperm::ensure_dir(dir, 0o755)?;
        }
        fsperm::create_private_file(&path, config::EXAMPLE.as_bytes())?;
        done.push(format!(
            "wrote the default configuration {}",
            path.display()
        ));
    }
    let cfg = Config::load(&path)?;
    if cfg.store.key_file.exists() {
        HostKey::load(&cfg.store.key_file)?;
    } else {
        if let Some(dir) = cfg.store.key_file.parent() {
            fsperm::ensure_dir(dir, 0o755)?;
        }
        HostKey::create(&cfg.store.key_file)?;
        done.push(format!(
            "created the host key {} (0600); back it up: without it no secret can be read",
            cfg.store.key_file.display()
        ));
    }
    let existed = cfg.store.path.exists();
    Store::create(&cfg.store.path)?;
    if !existed {
        done.push(format!(
            "created the store {} (0600)",
            cfg.store.path.display()
        ));
    }
    if ui.json {
        ui.print_json(&json!({"config": path, "key_file": cfg.store.key_file,
                              "store": cfg.store.path, "changes": done}));
    } else if done.is_empty() {
        println!("Already initialised: {}", path.display());
    } else {
        for d in done {
            println!("{d}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn enroll_user(
    ui: &Ui,
    ctx: &mut Ctx,
    user: &str,
    style: QrStyle,
    code: Option<String>,
    now: i64,
) -> Result<ExitCode, Error> {
    if let Some(r) = ctx.record(user)? {
        if r.state != TotpState::None {
            ui.confirm(&format!(
                "{user} already has a {} enrolment; a new secret replaces it and its backup codes",
                r.state.as_str()
            ))?;
        }
    }
    warn_if_no_account(user);
    let key = ctx.key()?;
    let req = enroll::EnrollRequest {
        user,
        now,
        service: SERVICE,
        replace: true,
    };
    let e = enroll::begin(&ctx.cfg, &key, &mut ctx.store, &req, &mut ctx.log)?;
    let interactive = !ui.json && std::io::stdin().is_terminal();
    if !ui.json {
        println!("Enrolling {user}. Scan this QR code with an authenticator app");
        println!("(Google Authenticator, Microsoft Authenticator, FreeOTP, Authy ...):");
        if let Some(q) = qr::render(&e.otpauth_uri, style) {
            println!("{q}");
        }
        println!("Manual key: {}", totp::grouped(&e.base32));
        println!("URI:        {}", e.otpauth_uri.as_str());
        println!(
            "({} digits, every {} seconds, SHA1)",
            ctx.cfg.totp.digits, ctx.cfg.totp.period
        );
    }
    let mut activated = None;
    // A wrong --code still prints the enrolment: it stays pending, and the
    // secret must not be lost.
    let mut failure = None;
    if let Some(c) = code {
        match confirm_code(ctx, user, &c, now) {
            Ok(Some(codes)) => activated = Some(codes),
            Ok(None) => {
                failure = Some(Error::Refused(format!(
                    "invalid verification code for {user}; the enrolment stays pending \
                     (confirm with `crm2fa-admin confirm {user} CODE`)"
                )))
            }
            Err(e) => failure = Some(e),
        }
    } else if interactive {
        for _ in 0..3 {
            print!("Enter the code the app shows to confirm (Enter to leave it pending): ");
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            if std::io::stdin().lock().read_line(&mut line).unwrap_or(0) == 0
                || line.trim().is_empty()
            {
                break;
            }
            match confirm_code(ctx, user, line.trim(), unix_now()) {
                Ok(Some(c)) => {
                    activated = Some(c);
                    break;
                }
                Ok(None) => println!("Invalid verification code. Check the app and try again."),
                Err(e) => {
                    // E.g. the user's first login activated it meanwhile.
                    println!("Not confirmed here: {e}");
                    break;
                }
            }
        }
    }
    if ui.json {
        let mut v = json!({
            "user": user,
            "secret": e.base32.as_str(),
            "otpauth_uri": e.otpauth_uri.as_str(),
            "state": if activated.is_some() { "active" } else { "pending" },
        });
        if let Some(c) = &activated {
            v["backup_codes"] = shown(c);
        }
        ui.print_json(&v);
    } else if let Some(c) = &activated {
        println!("Two-factor authentication is now active for {user}.");
        print_backup_codes(c);
    } else {
        println!(
            "The enrolment is pending. It becomes active with `crm2fa-admin confirm {user} CODE`,"
        );
        println!("or at {user}'s first login with a valid code (the backup codes are shown then).");
    }
    match failure {
        // Printed above all the same: the secret is never lost.
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Activate `user`'s pending enrolment with `code`; the new backup codes, or
/// `None` if the code is wrong, already used, or nothing is pending.
fn confirm_code(
    ctx: &mut Ctx,
    user: &str,
    code: &str,
    now: i64,
) -> Result<Option<Vec<Code>>, Error> {
    let rec = ctx
        .record(user)?
        .ok_or_else(|| Error::NotEnrolled(user.into()))?;
    let sealed = match (rec.state, rec.secret.clone()) {
        (TotpState::Pending, Some(s)) => s,
        _ => {
            return Err(Error::Refused(format!(
                "{user} has no pending enrolment (state: {}); nothing to confirm",
                rec.display_state()
            )))
        }
    };
    let key = ctx.key()?;
    let secret = key.open(user, &sealed)?;
    let Some(step) = totp::matching_step(&ctx.cfg.totp, &secret, code, now) else {
        return Ok(None);
    };
    let audit = audit_entry(
        now,
        user,
        SERVICE,
        "",
        "enroll",
        "active",
        "confirmed with a TOTP code",
    );
    let totp = TotpMatch {
        step,
        sealed_secret: sealed,
    };
    match ctx.store.confirm(user, &totp, now, &audit)? {
        Some(codes) => {
            ctx.log.entry(&audit);
            Ok(Some(enroll::open_codes(&key, user, &codes)?))
        }
        None => Ok(None),
    }
}

fn check(ui: &Ui, ctx: &Ctx, user: &str, code: &str, now: i64) -> Result<ExitCode, Error> {
    let rec = ctx
        .record(user)?
        .ok_or_else(|| Error::NotEnrolled(user.into()))?;
    let key = ctx.key()?;
    let mut result = json!({"user": user, "valid": false});
    let mut text = format!("The code is not valid for {user}.");
    if let Some(secret) = rec.open_totp_secret(&key)? {
        // Look well beyond the window to report clock drift.
        let wide = config::TotpConfig {
            skew: 20,
            ..ctx.cfg.totp.clone()
        };
        if let Some(step) = totp::matching_step(&wide, &secret, code, now) {
            let drift = step - totp::step_at(&ctx.cfg.totp, now);
            let within = drift.unsigned_abs() <= u64::from(ctx.cfg.totp.skew);
            let unused = step > rec.last_step;
            result = json!({"user": user, "valid": within && unused, "factor": "totp",
                            "drift_steps": drift, "already_used": !unused});
            let secs = drift * ctx.cfg.totp.period as i64;
            text = format!(
                "TOTP code for {user}: clock drift {drift:+} step(s) ({secs:+} s); {}",
                if !within {
                    format!("outside the accepted window of ±{} step(s): fix the phone's or this host's clock", ctx.cfg.totp.skew)
                } else if !unused {
                    "valid, but this step was already used for a login".to_string()
                } else {
                    "valid".to_string()
                }
            );
        }
    }
    if result["valid"] == json!(false) && result.get("factor").is_none() {
        let c = Code::normalize(code);
        for (kind, len) in [
            ("backup", codes::BACKUP_LEN),
            ("recovery", codes::RECOVERY_LEN),
        ] {
            if c.is_code_of_len(len)
                && ctx
                    .store
                    .code_usable(user, kind == "backup", &c.hash(&rec.code_salt), now)?
            {
                result = json!({"user": user, "valid": true, "factor": kind});
                text = format!("Unused {kind} code for {user}: valid.");
            }
        }
    }
    let valid = result["valid"] == json!(true);
    if ui.json {
        ui.print_json(&result);
    } else {
        println!("{text}");
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn status_json(ctx: &Ctx, user: &str, rec: Option<&UserRecord>, now: i64) -> Result<Value, Error> {
    let has_recovery = ctx.store.has_valid_recovery(user, now)?;
    Ok(match rec {
        None => json!({"user": user, "state": "none", "locked": false, "locked_until": null,
                       "backup_codes_left": 0, "methods": [], "last_success": null}),
        Some(r) => {
            let mut methods = vec![];
            if r.state == TotpState::Active {
                methods.push("totp");
            }
            if r.state == TotpState::Active && r.backup_codes_left > 0 {
                methods.push("backup");
            }
            if has_recovery {
                methods.push("recovery");
            }
            let locked = r.locked_at(now);
            json!({
                "user": user,
                "state": r.display_state(),
                "locked": locked.is_some(),
                "locked_until": locked.map(rfc3339),
                "backup_codes_left": r.backup_codes_left,
                "methods": methods,
                "failures": r.failures,
                "last_success": r.last_success.map(rfc3339),
            })
        }
    })
}

fn print_status(v: &Value) {
    println!("User:              {}", v["user"].as_str().unwrap_or(""));
    println!("State:             {}", v["state"].as_str().unwrap_or(""));
    let methods: Vec<&str> = v["methods"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "Methods:           {}",
        if methods.is_empty() {
            "none".to_string()
        } else {
            methods.join(", ")
        }
    );
    println!("Backup codes left: {}", v["backup_codes_left"]);
    match v["locked_until"].as_str() {
        Some(t) => println!("Locked until:      {t} (crm2fa-admin unlock to clear)"),
        None => println!("Locked:            no"),
    }
    println!(
        "Last success:      {}",
        v["last_success"].as_str().unwrap_or("never")
    );
}

fn shown(codes: &[Code]) -> Value {
    Value::Array(codes.iter().map(|c| Value::String(c.display())).collect())
}

fn print_backup_codes(codes: &[Code]) {
    println!("Backup codes (each works once; shown only now, keep them somewhere safe):");
    for c in codes {
        println!("    {}", c.display());
    }
}

/// A page to print and keep: who, where, when, the codes, and how to use them.
fn printable_page(user: &str, codes: &[Code], now: i64) -> String {
    let host = enroll::account_name(user);
    let mut s = format!(
        "crm2fa backup codes\n===================\n\nAccount:   {host}\nGenerated: {} (UTC)\n\n",
        rfc3339(now)
    );
    for (i, c) in codes.iter().enumerate() {
        s.push_str(&format!("  {:>2}. [ ] {}\n", i + 1, c.display()));
    }
    s.push_str(
        "\nHow to use them: when the login asks \"Verification code:\" and your phone is\n\
         not at hand, type one of these codes instead (dashes and case do not matter).\n\
         Each code works once; tick it off when used. Any earlier set is void.\n\
         Keep this page somewhere safe, away from your computer.\n",
    );
    s
}

/// `--since`: RFC 3339, a date (YYYY-MM-DD), or a duration back from now.
fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(unix(t));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")) {
        return Ok(unix(t));
    }
    config::parse_duration(s)
        .map(|d| unix_now() - d)
        .map_err(|_| {
            "give a time (2026-11-23T10:00:00Z), a date (2026-11-23) or a duration (24h)".into()
        })
}

/// Warn (on stderr) when USER has no account on this host: likely a typo.
fn warn_if_no_account(user: &str) {
    if let Ok(None) = nix::unistd::User::from_name(user) {
        eprintln!("crm2fa-admin: warning: there is no account named {user} on this host");
    }
}

fn unix(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
