//! No code and no secret in anything crm2fa writes: syslog, the module's
//! `debug` mirror in the login transcripts, the CLI's standard error and
//! reports, the audit table, and the store's files.
//!
//! One realistic scenario (init, enrol and confirm, TOTP logins right and
//! wrong, a backup code, a new set, a lock, unlock, a recovery code, reset,
//! enrol again, disable and enable, check, the reports) runs with syslog
//! captured; then every secret and code it used is searched for in all of
//! it, in every spelling: the base32 secret (also grouped, in any case, or
//! any 16 characters of it), its raw bytes in hex, the otpauth URI's
//! `secret` parameter, every TOTP code typed (also `123 456`), every backup
//! and recovery code (with or without dashes or spaces, any case).
//!
//! Syslog: the module and the CLI log through the `syslog` crate's
//! `syslog::unix`, a datagram socket connected to the first of `/dev/log`,
//! `/var/run/syslog`, `/var/run/log` that exists. There may be no syslog
//! daemon at all, so the test brings its own, without touching the host:
//! [`nothing_crm2fa_writes_contains_a_code_or_a_secret`] runs this test
//! binary again under `unshare --mount` with a private tmpfs on `/run`
//! (and `/var/run` when it is not a link to `/run`), and the ignored
//! [`scenario_in_namespace`], inside that namespace, binds a datagram
//! socket at `/var/run/syslog` (or, when a `/dev/log` is still visible,
//! bind-mounts its socket over it) and collects every message on a thread
//! while the scenario runs; every pamtester and crm2fa-admin inherits the
//! namespace. The capture is proven to work, not assumed: every audit row
//! and every line the module mirrored to stderr must also have arrived.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crm2fa_tests::*;
use serde_json::Value;

const PW: &str = "correct horse";

/// The ignored test the outer test runs inside the namespace.
const INNER: &str = "scenario_in_namespace";
/// Set (to the outer test's mount namespace) only for the inner run.
const INNER_ENV: &str = "CRM2FA_NO_SECRETS_IN_NAMESPACE";
/// Source name of the namespace's tmpfs mounts, to recognise them.
const TMPFS_TAG: &str = "crm2fa-no-secrets";
/// Printed by the inner test when every check passed.
const DONE_MARKER: &str = "no-secrets: scenario checked";
/// `syslog::unix` tries these in this order (syslog 7, `UNIX_SOCK_PATHS`).
const SYSLOG_PATHS: [&str; 3] = ["/dev/log", "/var/run/syslog", "/var/run/log"];
/// syslog's authpriv facility (10), as encoded in `<PRI>`.
const AUTHPRIV: u32 = 10 << 3;

/// Lock after three wrong codes, so one login of three wrong codes locks.
const CONFIG: &str = "[policy]\nenforce = \"all\"\nunenrolled = \"deny\"\n\n\
                      [lockout]\nmax_failures = 3\n";

// ---------------------------------------------------------------------------
// The outer test: a private mount namespace around the scenario.

#[test]
fn nothing_crm2fa_writes_contains_a_code_or_a_secret() {
    let outer_ns = fs::read_link("/proc/self/ns/mnt").expect("read /proc/self/ns/mnt");
    // Mounts only ever happen in the new namespace (private propagation):
    // the host's /run, /var/run and /dev are never written.
    let setup = format!(
        "set -e\n\
         mount -t tmpfs -o mode=0755,size=4m {TMPFS_TAG} /run\n\
         if [ ! -L /var/run ]; then mount -t tmpfs -o mode=0755,size=4m {TMPFS_TAG} /var/run; fi\n\
         exec \"$0\" \"$@\"\n"
    );
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(&setup)
        .arg(&exe)
        .args([
            "--exact",
            INNER,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_ENV, &outer_ns)
        .output()
        .expect("run unshare (util-linux)");
    let shown = show_output(&out);
    assert!(
        out.status.success(),
        "the scenario in its mount namespace failed (this test needs root, for \
         `unshare --mount`):\n{shown}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // libtest exits 0 when its filter matches nothing: make sure it ran.
    assert!(
        stdout.contains("1 passed") && stdout.contains(DONE_MARKER),
        "the scenario did not run:\n{shown}"
    );
    if std::env::var_os("CRM2FA_TEST_VERBOSE").is_some() {
        eprintln!("{shown}");
    }
}

// ---------------------------------------------------------------------------
// The inner test: capture, scenario, checks.

#[test]
#[ignore = "run by nothing_crm2fa_writes_contains_a_code_or_a_secret in a private mount namespace"]
fn scenario_in_namespace() {
    let Some(outer_ns) = std::env::var_os(INNER_ENV) else {
        return;
    };
    let capture = SyslogCapture::start(Path::new(&outer_ns));
    let socket = capture.path;
    let mut run = Run::new();
    scenario(&mut run);
    let messages = capture.finish();
    println!(
        "no-secrets: {} syslog messages captured at {socket}",
        messages.len()
    );
    run.check_capture(&messages);
    run.written.push(Written::new(
        "syslog".into(),
        messages
            .iter()
            .map(|m| format!("{}: {}\n", m.ident, m.text))
            .collect(),
    ));
    run.add_store_files();
    run.check_no_secret_anywhere();
    println!(
        "{DONE_MARKER}: {} secrets and codes, {} outputs",
        run.items.len(),
        run.written.len()
    );
}

fn scenario(run: &mut Run) {
    let sb = &run.sb;
    sb.add_user("alice", PW);
    sb.add_user("bob", PW);

    // ----- set-up and the first enrolment (pending, then confirmed)
    run.cli_ok(&["init"], "");
    run.cli_ok(&["--json", "policy", "alice"], "");
    let (v, w) = run.cli_json(&["enroll", "alice", "--no-qr"], "");
    assert_eq!(v["state"], "pending", "{v}");
    let s1 = run.secret("alice's first TOTP secret", &v);
    run.allow(w, &[s1.id]);
    assert_eq!(run.cli_json(&["status", "alice"], "").0["state"], "pending");

    let step = wait_for_step_margin(Duration::from_secs(5));
    // Codes are fixed from `step` now: one step boundary later they are all
    // still inside the window (skew 1).
    let confirm_code = run.totp(&s1, step - 1, "confirm on stdin");
    let (v, w) = run.cli_json(&["confirm", "alice"], &format!("{confirm_code}\n"));
    assert_eq!(v["state"], "active", "{v}");
    let set1 = run.codes("first backup code", &json_strings(&v["backup_codes"]));
    run.allow(w, &set1);

    // ----- TOTP logins: right; a replayed step, a wrong code, then right
    let code = run.totp(&s1, step, "login");
    let r = run.login("alice: TOTP code", "alice", &[PW, &code]);
    r.assert_success();
    let wrong = run.typed_wrong(&s1, 3);
    let next = run.totp(&s1, step + 1, "login after a replay and a wrong code");
    let r = run.login(
        "alice: replayed code, wrong code, right code",
        "alice",
        &[PW, &code, &wrong[0], &next],
    );
    r.assert_success();
    assert_eq!(r.invalid_code_messages(), 2, "{r}");

    // ----- a backup code, typed in capitals with a space
    let typed = spaced_upper(&run.items[set1[0]].canonical);
    let r = run.login("alice: backup code", "alice", &[PW, &typed]);
    r.assert_success();
    assert_eq!(r.invalid_code_messages(), 0, "{r}");

    // ----- a new set: the old one is void
    let (v, w) = run.cli_json(&["backup-codes", "alice", "--regenerate", "--yes"], "");
    let set2 = run.codes("second backup code", &json_strings(&v["backup_codes"]));
    run.allow(w, &set2);
    let old = run.items[set1[1]].shown.clone();
    let r = run.login("alice: voided backup code", "alice", &[PW, &old]);
    r.assert_denied();
    assert_eq!(r.invalid_code_messages(), 1, "{r}");
    let fresh = run.items[set2[0]].shown.clone();
    run.login("alice: new backup code", "alice", &[PW, &fresh])
        .assert_success();

    // ----- a lock by wrong codes (the first is her code six steps ahead:
    // syslog names the drift), refused while locked, unlocked
    let ahead = run.totp(&s1, step + 6, "login, six steps ahead");
    let r = run.login(
        "alice: three wrong codes",
        "alice",
        &[PW, &ahead, &wrong[1], &wrong[2]],
    );
    r.assert_denied();
    assert_eq!(r.pam_result(), PamResult::MaxTries, "{r}");
    assert_eq!(run.cli_json(&["status", "alice"], "").0["locked"], true);
    let unused = run.items[set2[1]].shown.to_uppercase();
    let r = run.login("alice: locked", "alice", &[PW, &unused]);
    assert_eq!(r.pam_result(), PamResult::MaxTries, "{r}");
    run.cli_ok(&["unlock", "alice"], "");
    assert_eq!(run.cli_json(&["status", "alice"], "").0["locked"], false);

    // ----- a recovery code, issued and used (typed in capitals)
    let (v, w) = run.cli_json(&["recovery", "alice", "--valid", "1h"], "");
    let recovery = run.codes(
        "recovery code",
        &[v["code"].as_str().expect("recovery JSON code").to_string()],
    );
    run.allow(w, &recovery);
    let typed = run.items[recovery[0]].shown.to_uppercase();
    let r = run.login("alice: recovery code", "alice", &[PW, &typed]);
    r.assert_success();

    // ----- reset: no factor left, the login is denied
    run.cli_ok(&["reset", "alice", "--yes"], "");
    assert_eq!(run.cli_json(&["status", "alice"], "").0["state"], "none");
    run.login("alice: after reset", "alice", &[PW])
        .assert_denied();

    // ----- enrol again with --code: the code cannot be the new secret's
    // (it is made by this very command), so it stays pending and the
    // secret is printed; confirmed with a code on the command line.
    let guess = "917253";
    run.item(
        "code given to enroll --code".into(),
        Vec::new(),
        Vec::new(),
        digit_variants(guess),
    );
    let (out, w) = run.cli(
        &["--json", "enroll", "alice", "--no-qr", "--code", guess],
        "",
    );
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("enroll --code: one JSON document");
    assert_eq!(v["state"], "pending", "{v}");
    let s2 = run.secret("alice's second TOTP secret", &v);
    run.allow(w, &[s2.id]);
    let step2 = wait_for_step_margin(Duration::from_secs(5));
    let confirm_code = run.totp(&s2, step2 - 1, "confirm argument");
    let (v, w) = run.cli_json(&["confirm", "alice", &confirm_code], "");
    let set3 = run.codes("third backup code", &json_strings(&v["backup_codes"]));
    run.allow(w, &set3);

    // ----- disable and enable
    run.cli_ok(&["disable", "alice", "--override-policy", "--yes"], "");
    let r = run.login("alice: disabled", "alice", &[PW]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 0, "{r}");
    run.cli_ok(&["enable", "alice"], "");

    // ----- check with a code on stdin (nothing consumed), then log in with it
    let now_code = run.totp(&s2, step2, "check on stdin, then login");
    let (out, _) = run.cli(&["check", "alice"], &format!("{now_code}\n"));
    assert!(out.status.success(), "{}", show_output(&out));
    let far = run.totp(&s2, step2 + 5, "check on stdin, five steps ahead");
    let (out, _) = run.cli(&["--json", "check", "alice"], &format!("{far}\n"));
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    let wrong2 = run.typed_wrong(&s2, 1);
    let (out, _) = run.cli(&["check", "alice"], &format!("{}\n", wrong2[0]));
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    let backup = run.items[set3[0]].shown.clone();
    let (out, _) = run.cli(&["--json", "check", "alice"], &format!("{backup}\n"));
    assert!(out.status.success(), "{}", show_output(&out));
    run.login("alice: checked code", "alice", &[PW, &now_code])
        .assert_success();

    // ----- bob's first login activates his pending enrolment and shows his
    // backup codes (legitimately, in that transcript only)
    let (v, w) = run.cli_json(&["enroll", "bob", "--no-qr"], "");
    let s3 = run.secret("bob's TOTP secret", &v);
    run.allow(w, &[s3.id]);
    let code = run.totp(&s3, current_step(), "first login");
    let (r, w) = run.login_written("bob: activation", "bob", &[PW, &code, ""]);
    r.assert_success();
    let shown = shown_backup_codes(&r.output);
    assert_eq!(shown.len(), 10, "backup codes shown at activation:\n{r}");
    let set4 = run.codes("bob's backup code", &shown);
    run.allow(w, &set4);

    // ----- the reports
    for args in [
        &["status", "alice"][..],
        &["--json", "status", "alice"],
        &["list"],
        &["--json", "list"],
        &["audit"],
        &["audit", "--user", "alice"],
        &["policy", "alice"],
        &["--json", "policy", "root"],
        // It opens every secret with the host key.
        &["doctor"],
        &["--json", "doctor"],
    ] {
        run.cli_ok(args, "");
    }
    let (audit, _) = run.cli_json(&["audit"], "");
    run.audit = match audit {
        Value::Array(a) => a,
        other => panic!("audit JSON is not an array: {other}"),
    };
}

// ---------------------------------------------------------------------------
// What the scenario used and what crm2fa wrote

/// One secret or code, in every spelling to look for.
struct Item {
    label: String,
    /// Lower-case canonical form (a backup code without dashes).
    canonical: String,
    /// As shown to people (`abcd-efgh`).
    shown: String,
    /// Searched case-insensitively as they are.
    plain: Vec<String>,
    /// Searched case-insensitively with whitespace and dashes removed from
    /// the text (long enough that a chance match is impossible).
    compact: Vec<String>,
    /// Digit strings searched where no digit precedes or follows them.
    digits: Vec<String>,
}

/// A TOTP secret of the scenario.
struct SecretItem {
    id: usize,
    base32: String,
}

/// Something crm2fa wrote, with the items it may show.
struct Written {
    name: String,
    text: String,
    allowed: Vec<usize>,
}

impl Written {
    fn new(name: String, text: String) -> Written {
        Written {
            name,
            text,
            allowed: Vec::new(),
        }
    }
}

struct Run {
    sb: Sandbox,
    items: Vec<Item>,
    written: Vec<Written>,
    /// Login transcripts, for the lines the module mirrored to stderr.
    logins: Vec<LoginResult>,
    /// Raw secret bytes, for the store files.
    raw_secrets: Vec<(usize, Vec<u8>)>,
    /// `--json audit` at the end.
    audit: Vec<Value>,
}

impl Run {
    fn new() -> Run {
        Run {
            sb: Sandbox::with_config(CONFIG),
            items: Vec::new(),
            written: Vec::new(),
            logins: Vec::new(),
            raw_secrets: Vec::new(),
            audit: Vec::new(),
        }
    }

    fn item(
        &mut self,
        label: String,
        plain: Vec<String>,
        compact: Vec<String>,
        digits: Vec<String>,
    ) -> usize {
        let canonical = digits
            .first()
            .or(compact.first())
            .cloned()
            .unwrap_or_default();
        self.items.push(Item {
            label,
            shown: canonical.clone(),
            canonical,
            plain,
            compact,
            digits,
        });
        self.items.len() - 1
    }

    /// A TOTP secret from an `enroll` JSON report: base32 (any 16
    /// characters of it), its raw bytes in hex (any 20 hex digits), the
    /// URI's `secret` parameter.
    fn secret(&mut self, label: &str, v: &Value) -> SecretItem {
        let base32 = v["secret"]
            .as_str()
            .unwrap_or_else(|| panic!("enroll JSON has no secret: {v}"))
            .to_string();
        let uri = v["otpauth_uri"]
            .as_str()
            .unwrap_or_else(|| panic!("enroll JSON has no otpauth_uri: {v}"));
        let param = uri
            .split(['?', '&'])
            .find_map(|p| p.strip_prefix("secret="))
            .unwrap_or_else(|| panic!("no secret parameter in {uri}"))
            .to_ascii_lowercase();
        let b32 = base32.trim_end_matches('=').to_ascii_lowercase();
        assert_eq!(param.trim_end_matches('='), b32, "URI {uri}");
        let raw = base32_decode(&base32);
        assert!(raw.len() >= 10, "a short secret? {base32}");
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert_hex_is_the_same_key(&base32, &hex);
        let mut compact = vec![b32.clone(), param, hex.clone()];
        compact.extend(windows(&b32, 16));
        compact.extend(windows(&hex, 20));
        compact.sort();
        compact.dedup();
        let id = self.item(label.into(), Vec::new(), compact, Vec::new());
        self.raw_secrets.push((id, raw));
        SecretItem { id, base32 }
    }

    /// The TOTP code of `secret` for `step`, as typed somewhere.
    fn totp(&mut self, secret: &SecretItem, step: u64, what: &str) -> String {
        let code = totp_at_step(&secret.base32, step);
        let label = format!("TOTP code of {} ({what})", self.items[secret.id].label);
        self.item(label, Vec::new(), Vec::new(), digit_variants(&code));
        code
    }

    /// `n` codes that are wrong for `secret`, as typed.
    fn typed_wrong(&mut self, secret: &SecretItem, n: usize) -> Vec<String> {
        let codes = wrong_codes(&secret.base32, n + self.items.len());
        // Not the ones `wrong_codes` gives to a previous call.
        let codes: Vec<String> = codes
            .into_iter()
            .filter(|c| !self.items.iter().any(|i| i.digits.contains(c)))
            .take(n)
            .collect();
        assert_eq!(codes.len(), n);
        for c in &codes {
            self.item(
                "wrong TOTP code typed".into(),
                Vec::new(),
                Vec::new(),
                digit_variants(c),
            );
        }
        codes
    }

    /// Backup or recovery codes as shown (`abcd-efgh`).
    fn codes(&mut self, label: &str, shown: &[String]) -> Vec<usize> {
        assert!(!shown.is_empty(), "no {label}s");
        shown
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let canonical: String = s
                    .chars()
                    .filter(|c| *c != '-' && !c.is_whitespace())
                    .map(|c| c.to_ascii_lowercase())
                    .collect();
                assert!(
                    canonical.len() >= 8 && canonical.chars().all(|c| c.is_ascii_alphanumeric()),
                    "{label} {s:?}"
                );
                let id = self.item(
                    format!("{label} #{}", i + 1),
                    vec![s.to_ascii_lowercase()],
                    vec![canonical],
                    Vec::new(),
                );
                self.items[id].shown = s.clone();
                id
            })
            .collect()
    }

    /// `written[w]` may show `ids` (the CLI printing what it made).
    fn allow(&mut self, w: usize, ids: &[usize]) {
        self.written[w].allowed.extend_from_slice(ids);
    }

    /// crm2fa-admin ARGS with `input` on stdin; records its stdout (index
    /// returned, for [`Run::allow`]) and its stderr (where nothing is allowed).
    fn cli(&mut self, args: &[&str], input: &str) -> (Output, usize) {
        let out = self.sb.admin_with_input(args, input);
        let name = format!("crm2fa-admin {}", args.join(" "));
        self.written.push(Written::new(
            format!("stderr of {name}"),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
        self.written.push(Written::new(
            format!("stdout of {name}"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ));
        let w = self.written.len() - 1;
        (out, w)
    }

    #[track_caller]
    fn cli_ok(&mut self, args: &[&str], input: &str) -> usize {
        let (out, w) = self.cli(args, input);
        assert!(
            out.status.success(),
            "crm2fa-admin {args:?} failed:\n{}",
            show_output(&out)
        );
        w
    }

    /// `--json ARGS`, exit 0, one JSON document.
    #[track_caller]
    fn cli_json(&mut self, args: &[&str], input: &str) -> (Value, usize) {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let w = self.cli_ok(&full, input);
        let v = serde_json::from_str(&self.written[w].text).unwrap_or_else(|e| {
            panic!(
                "crm2fa-admin {full:?}: not one JSON document ({e}):\n{}",
                self.written[w].text
            )
        });
        (v, w)
    }

    fn login(&mut self, what: &str, user: &str, answers: &[&str]) -> LoginResult {
        self.login_written(what, user, answers).0
    }

    fn login_written(&mut self, what: &str, user: &str, answers: &[&str]) -> (LoginResult, usize) {
        let r = self.sb.login(user, answers);
        self.written.push(Written::new(
            format!("login transcript ({what})"),
            r.output.clone(),
        ));
        self.logins.push(r.clone());
        (r, self.written.len() - 1)
    }

    /// The store and its WAL: encrypted secrets and hashed codes only.
    fn add_store_files(&mut self) {
        let db = self.sb.store_path();
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let path = PathBuf::from(format!("{}{suffix}", db.display()));
            let Ok(bytes) = fs::read(&path) else {
                continue;
            };
            for (id, raw) in &self.raw_secrets {
                assert!(
                    !bytes.windows(raw.len()).any(|w| w == raw.as_slice()),
                    "{} holds the raw bytes of {} unencrypted",
                    path.display(),
                    self.items[*id].label
                );
            }
            self.written.push(Written::new(
                format!("store file {}", path.display()),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }

    /// Syslog received what crm2fa logged: every audit row, every line the
    /// module mirrored to stderr, from both programs, as authpriv.
    fn check_capture(&self, messages: &[SyslogMessage]) {
        let dump = || {
            messages
                .iter()
                .map(|m| format!("<{}> {}: {}", m.pri, m.ident, m.text))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            !messages.is_empty(),
            "no syslog message was captured at all"
        );
        for m in messages {
            assert_eq!(m.pri & !7, AUTHPRIV, "not authpriv: {m:?}");
        }
        for ident in ["pam_crm2fa", "crm2fa-admin"] {
            assert!(
                messages.iter().any(|m| m.ident == ident),
                "nothing from {ident} in syslog:\n{}",
                dump()
            );
        }
        let mut received: BTreeMap<&str, usize> = BTreeMap::new();
        for m in messages {
            *received.entry(m.text.as_str()).or_default() += 1;
        }
        // Every audit row has its syslog line (the same wording).
        let mut expected: BTreeMap<String, usize> = BTreeMap::new();
        assert!(self.audit.len() >= 20, "audit: {:#?}", self.audit);
        for rec in &self.audit {
            let field = |k: &str| {
                rec[k]
                    .as_str()
                    .unwrap_or_else(|| panic!("audit row without {k}: {rec}"))
                    .to_string()
            };
            let mut line = format!(
                "{} {} user={} service={}",
                field("event"),
                field("outcome"),
                field("user"),
                field("service")
            );
            if !field("rhost").is_empty() {
                line.push_str(&format!(" rhost={}", field("rhost")));
            }
            if !field("detail").is_empty() {
                line.push_str(&format!(": {}", field("detail")));
            }
            *expected.entry(line).or_default() += 1;
        }
        for (line, n) in &expected {
            let got = received.get(line.as_str()).copied().unwrap_or(0);
            assert!(
                got >= *n,
                "audit row {line:?} ({n}x) reached syslog {got}x; syslog:\n{}",
                dump()
            );
        }
        // Every line the module mirrored to stderr (`debug`) reached syslog.
        let mut mirrored = 0;
        for r in &self.logins {
            for line in r.debug_lines() {
                let text = line
                    .strip_prefix("pam_crm2fa: ")
                    .unwrap_or_else(|| panic!("debug line {line:?}"));
                mirrored += 1;
                assert!(
                    messages
                        .iter()
                        .any(|m| m.ident == "pam_crm2fa" && m.text == text),
                    "mirrored line {text:?} is not in syslog:\n{}",
                    dump()
                );
            }
        }
        assert!(mirrored >= 10, "only {mirrored} debug lines in the logins");
        // And the decisions of this scenario are there, by both programs.
        for needle in [
            "enroll pending user=alice service=crm2fa-admin",
            "enroll active user=alice service=crm2fa-admin",
            "login success user=alice service=crm2fa-test",
            "login failure user=alice service=crm2fa-test",
            "lock locked user=alice",
            "backup-codes regenerated user=alice",
            "unlock done user=alice",
            "recovery issued user=alice",
            "reset done user=alice",
            "disable done user=alice",
            "enable done user=alice",
            "login success user=bob service=crm2fa-test",
            "code refused for alice: its time step was already used",
            "code refused for alice: it is the code of +",
        ] {
            assert!(
                messages.iter().any(|m| m.text.contains(needle)),
                "no syslog line with {needle:?}:\n{}",
                dump()
            );
        }
    }

    /// No item appears where it is not allowed, in any spelling.
    fn check_no_secret_anywhere(&self) {
        assert!(self.items.len() >= 40, "{} items", self.items.len());
        let mut found = Vec::new();
        for w in &self.written {
            let lower = w.text.to_ascii_lowercase();
            let compact: String = lower
                .chars()
                .filter(|c| !c.is_whitespace() && *c != '-')
                .collect();
            for (id, item) in self.items.iter().enumerate() {
                if w.allowed.contains(&id) {
                    continue;
                }
                let hit = item
                    .plain
                    .iter()
                    .find_map(|n| lower.find(n.as_str()).map(|i| (n, &lower, i)))
                    .or_else(|| {
                        item.compact
                            .iter()
                            .find_map(|n| compact.find(n.as_str()).map(|i| (n, &compact, i)))
                    })
                    .or_else(|| {
                        item.digits
                            .iter()
                            .find_map(|n| find_digits(&lower, n).map(|i| (n, &lower, i)))
                    });
                if let Some((needle, text, i)) = hit {
                    found.push(format!(
                        "{} contains {} as {needle:?}: …{}…",
                        w.name,
                        item.label,
                        context(text, i, needle.len())
                    ));
                }
            }
        }
        assert!(
            found.is_empty(),
            "secrets or codes where they must not be ({}):\n{}",
            found.len(),
            found.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Syslog capture

#[derive(Debug)]
struct SyslogMessage {
    pri: u32,
    ident: String,
    text: String,
}

impl SyslogMessage {
    /// RFC 3164 as the syslog crate writes it: `<PRI>Mmm dd hh:mm:ss ident[pid]: text`.
    fn parse(raw: &str) -> SyslogMessage {
        let parts = || {
            let rest = raw.strip_prefix('<')?;
            let (pri, rest) = rest.split_once('>')?;
            let (head, text) = rest.split_once("]: ")?;
            let (ident, _pid) = head.rsplit(' ').next()?.split_once('[')?;
            Some(SyslogMessage {
                pri: pri.parse().ok()?,
                ident: ident.into(),
                text: text.into(),
            })
        };
        parts().unwrap_or_else(|| panic!("not an RFC 3164 message: {raw:?}"))
    }
}

/// A datagram socket where `syslog::unix` connects, read by a thread.
struct SyslogCapture {
    path: &'static str,
    sentinel: String,
    done: mpsc::Receiver<Vec<String>>,
}

impl SyslogCapture {
    fn start(outer_ns: &Path) -> SyslogCapture {
        assert_private_namespace(outer_ns);
        let dev_log_visible = fs::metadata("/dev/log").is_ok();
        let (sock, path) = if dev_log_visible {
            // A syslog socket outside /run (a daemon in a container, say):
            // cover it, in this namespace only, with ours.
            let ours = "/run/crm2fa-no-secrets-syslog";
            let sock = UnixDatagram::bind(ours).expect("bind the capture socket");
            let st = Command::new("mount")
                .args(["--bind", ours, "/dev/log"])
                .status()
                .expect("run mount");
            assert!(st.success(), "mount --bind {ours} /dev/log: {st}");
            (sock, SYSLOG_PATHS[0])
        } else {
            // /dev/log absent, or a link into the host's /run, now hidden.
            assert_on_our_tmpfs(Path::new("/var/run"));
            let sock = UnixDatagram::bind(SYSLOG_PATHS[1]).expect("bind /var/run/syslog");
            (sock, SYSLOG_PATHS[1])
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let sentinel = format!("crm2fa-no-secrets end of capture {nanos}");
        let (tx, done) = mpsc::channel();
        let end = sentinel.clone();
        thread::spawn(move || {
            let mut messages = Vec::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let n = sock.recv(&mut buf).expect("recv on the capture socket");
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if m == end {
                    break;
                }
                messages.push(m);
            }
            let _ = tx.send(messages);
        });
        SyslogCapture {
            path,
            sentinel,
            done,
        }
    }

    /// Every message sent before this call (all senders have exited: their
    /// datagrams are queued ahead of the sentinel), parsed.
    fn finish(self) -> Vec<SyslogMessage> {
        // Reach the socket the way `syslog::unix` does: the first path that
        // exists wins.
        let client = UnixDatagram::unbound().expect("socket");
        let used = SYSLOG_PATHS
            .iter()
            .find(|p| match client.connect(p) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => panic!("connect {p}: {e}"),
            })
            .expect("a syslog socket");
        assert_eq!(*used, self.path, "syslog::unix would not reach the capture");
        client.send(self.sentinel.as_bytes()).expect("send");
        let raw = self
            .done
            .recv_timeout(Duration::from_secs(60))
            .expect("the capture thread got its end marker");
        raw.iter().map(|m| SyslogMessage::parse(m)).collect()
    }
}

/// Refuses to bind or mount anything unless this process is in its own
/// mount namespace with the test's tmpfs on /run.
fn assert_private_namespace(outer_ns: &Path) {
    let ours = fs::read_link("/proc/self/ns/mnt").expect("read /proc/self/ns/mnt");
    assert_ne!(
        ours, outer_ns,
        "{INNER} must run in a new mount namespace (it is started by \
         nothing_crm2fa_writes_contains_a_code_or_a_secret)"
    );
    assert_on_our_tmpfs(Path::new("/run"));
}

/// `dir` (resolved) is the mount point of this test's tmpfs.
fn assert_on_our_tmpfs(dir: &Path) {
    let dir = fs::canonicalize(dir).expect("canonicalize");
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let ok = info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            return false;
        };
        f.get(4).is_some_and(|m| Path::new(m) == dir)
            && f.get(sep + 1) == Some(&"tmpfs")
            && f.get(sep + 2) == Some(&TMPFS_TAG)
    });
    assert!(
        ok,
        "{} is not the test's private tmpfs:\n{info}",
        dir.display()
    );
}

// ---------------------------------------------------------------------------
// Helpers

/// A TOTP code as typed or shown: `123456`, `123 456`, `123-456`.
fn digit_variants(code: &str) -> Vec<String> {
    let (a, b) = code.split_at(code.len() / 2);
    vec![code.to_string(), format!("{a} {b}"), format!("{a}-{b}")]
}

/// `abcdefgh` → `ABCD EFGH`.
fn spaced_upper(canonical: &str) -> String {
    canonical
        .to_ascii_uppercase()
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every `len`-character piece of `s`.
fn windows(s: &str, len: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    chars.windows(len).map(|w| w.iter().collect()).collect()
}

/// `needle` (digits) in `hay` with no digit right before or after it.
fn find_digits(hay: &str, needle: &str) -> Option<usize> {
    hay.match_indices(needle).map(|(i, _)| i).find(|&i| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// Up to 60 characters either side of `text[at..at + len]`.
fn context(text: &str, at: usize, len: usize) -> String {
    let mut start = at.saturating_sub(60);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (at + len + 60).min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    text[start..end].replace('\n', "⏎")
}

/// RFC 4648 base32, padding and case ignored.
fn base32_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').chars() {
        let v = match c.to_ascii_uppercase() {
            u @ 'A'..='Z' => u as u32 - 'A' as u32,
            d @ '2'..='7' => d as u32 - '2' as u32 + 26,
            other => panic!("not base32: {other:?} in {s}"),
        };
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// oathtool gives the same code for the hex key as for the base32 one: the
/// decoding above is right, so the hex needle is the real key.
fn assert_hex_is_the_same_key(base32: &str, hex: &str) {
    let code = |args: &[&str]| {
        let out = Command::new("oathtool")
            .args(["--totp", "--now", "@1000000000"])
            .args(args)
            .output()
            .expect("run oathtool");
        assert!(out.status.success(), "{}", show_output(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(code(&["-b", base32]), code(&[hex]), "hex of {base32}");
}

/// The backup codes a login showed at activation (`    abcd-efgh` lines).
fn shown_backup_codes(transcript: &str) -> Vec<String> {
    transcript
        .lines()
        .map(str::trim)
        .filter(|l| {
            let parts: Vec<&str> = l.split('-').collect();
            parts.len() == 2
                && parts
                    .iter()
                    .all(|p| p.len() == 4 && p.chars().all(|c| c.is_ascii_alphanumeric()))
        })
        .map(str::to_string)
        .collect()
}
