//! The authselect recipe of README.md, run through real libpam.
//!
//! README.md gives the complete `auth` sections of the custom profile for
//! authselect's `local` and `sssd` profiles, each fenced block preceded by
//! `<!-- authselect: PROFILE FILE -->`. These tests take the blocks from
//! README.md itself, write them out as authselect does for a selection
//! without features, and replace the modules this machine lacks by
//! stand-ins that take the same paths through the stack:
//!
//! - `pam_unix.so` (the local password): pam_matrix with a password database
//!   holding only the local users;
//! - `pam_sss.so` (the directory password): pam_matrix with a database
//!   holding only the directory users (pam_matrix asks for the password
//!   again where pam_sss would take the one already typed; which lines run
//!   is the same);
//! - `pam_localuser.so`: itself, with `file=` naming a passwd file of the
//!   local users only, so a directory user is not local;
//! - `pam_crm2fa.so`: the module under test, by absolute path, with
//!   `config=`;
//! - `pam_usertype.so`, `pam_env.so`, `pam_faildelay.so`, `pam_deny.so`,
//!   `pam_permit.so`: themselves (nss_wrapper gives the test users regular
//!   uids).
//!
//! For each block: a local user gets in with the right password and the
//! right code, and is denied with a wrong code or a wrong password (then
//! without being asked a code); in the `sssd` profile a directory user the
//! same; and, with opt-in, an unenrolled user gets in with the right password
//! alone and never with a wrong one.

use std::fs;
use std::path::Path;
use std::process::Command;

use crm2fa_tests::*;

/// The password of every local user (the `pam_unix` stand-in).
const LOCAL_PW: &str = "local secret";
/// The password of every directory user (the `pam_sss` stand-in).
const DIR_PW: &str = "directory secret";
const WRONG_PW: &str = "not the password";

/// The fenced block after `<!-- authselect: PROFILE FILE -->` in README.md.
fn readme_block(profile: &str, file: &str) -> String {
    let readme = fs::read_to_string(workspace_dir().join("README.md")).expect("read README.md");
    let marker = format!("<!-- authselect: {profile} {file} -->");
    let at = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"));
    let mut lines = readme[at + marker.len()..].lines().skip(1);
    assert_eq!(
        lines.next().map(str::trim),
        Some("```"),
        "a fenced block follows {marker} in README.md"
    );
    let block: Vec<&str> = lines.take_while(|l| l.trim() != "```").collect();
    assert!(!block.is_empty(), "the block after {marker} is empty");
    block.join("\n")
}

/// The `{…}` operators of one template line and the line without them.
fn operators(line: &str) -> (Vec<String>, String) {
    let mut ops = Vec::new();
    let mut text = String::new();
    let mut rest = line;
    while let Some(open) = rest.find('{') {
        text.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .unwrap_or_else(|| panic!("unclosed operator in {line:?}"))
            + open;
        ops.push(rest[open + 1..close].to_string());
        // Inline `if` operators leave their text in place of themselves.
        text.push('\u{0}');
        rest = &rest[close + 1..];
    }
    text.push_str(rest);
    (ops, text)
}

/// The feature named in `"…"` at the start of `s`, and what follows it.
fn quoted(s: &str) -> (&str, &str) {
    let s = s
        .strip_prefix('"')
        .unwrap_or_else(|| panic!("expected a quoted feature in {s:?}"));
    let end = s.find('"').expect("closing quote");
    (&s[..end], &s[end + 1..])
}

/// The template as authselect writes it with `features` selected: lines
/// `{include if "F"}` only with F, `{exclude if "F"}` only without it,
/// `{if "F":A|B}` and `{if not "F":A|B}` replaced by A or B. Any other
/// operator fails the test (the renderer would not know what it means).
fn render(template: &str, features: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    'lines: for line in template.lines() {
        let (ops, text) = operators(line);
        let mut pieces = Vec::new();
        for op in &ops {
            if let Some(rest) = op.strip_prefix("include if ") {
                if !features.contains(&quoted(rest).0) {
                    continue 'lines;
                }
                pieces.push(String::new());
            } else if let Some(rest) = op.strip_prefix("exclude if ") {
                if features.contains(&quoted(rest).0) {
                    continue 'lines;
                }
                pieces.push(String::new());
            } else if let Some(rest) = op.strip_prefix("if ") {
                let (negated, rest) = match rest.strip_prefix("not ") {
                    Some(r) => (true, r),
                    None => (false, rest),
                };
                let (feature, rest) = quoted(rest);
                let body = rest
                    .strip_prefix(':')
                    .unwrap_or_else(|| panic!("`if` without `:` in {line:?}"));
                let (yes, no) = body.split_once('|').unwrap_or((body, ""));
                let on = features.contains(&feature) != negated;
                pieces.push(if on { yes } else { no }.to_string());
            } else {
                panic!("authselect operator {{{op}}} not understood in {line:?}");
            }
        }
        let mut rendered = String::new();
        let mut pieces = pieces.into_iter();
        for part in text.split('\u{0}') {
            rendered.push_str(part);
            if let Some(p) = pieces.next() {
                rendered.push_str(&p);
            }
        }
        let rendered = rendered.trim_end().to_string();
        assert!(
            rendered.starts_with("auth "),
            "only auth lines belong in the block: {rendered:?}"
        );
        out.push(rendered);
    }
    out
}

/// One `auth` line: its control (`required`, `[success=1 default=ignore]`),
/// its module and the module's arguments.
fn parse(line: &str) -> (String, String, Vec<String>) {
    let rest = line
        .strip_prefix("auth")
        .expect("an auth line")
        .trim_start();
    let (control, rest) = if let Some(r) = rest.strip_prefix('[') {
        let end = r.find(']').expect("closing ]");
        (format!("[{}]", &r[..end]), &r[end + 1..])
    } else {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        (rest[..end].to_string(), &rest[end..])
    };
    // PAM ignores everything after `#`.
    let rest = rest.split('#').next().unwrap_or("");
    let mut words = rest.split_whitespace().map(str::to_string);
    let module = words.next().expect("a module");
    (control, module, words.collect())
}

/// The accounts the stand-ins decide by.
struct Accounts<'a> {
    sb: &'a Sandbox,
    local_passdb: String,
    directory_passdb: String,
    local_passwd: String,
}

/// A rendered line with this machine's stand-ins for the modules it lacks.
fn stand_in(line: &str, acc: &Accounts) -> String {
    let (control, module, args) = parse(line);
    match module.as_str() {
        "pam_unix.so" => format!("auth {control} {PAM_MATRIX} passdb={}", acc.local_passdb),
        "pam_sss.so" => {
            assert_eq!(args, ["forward_pass"], "pam_sss for the password: {line}");
            format!(
                "auth {control} {PAM_MATRIX} passdb={}",
                acc.directory_passdb
            )
        }
        "pam_localuser.so" => {
            assert!(args.is_empty(), "{line}");
            format!("auth {control} pam_localuser.so file={}", acc.local_passwd)
        }
        "pam_crm2fa.so" => acc.sb.module_line(&control, &args.join(" ")),
        "pam_env.so" | "pam_faildelay.so" | "pam_deny.so" | "pam_permit.so" | "pam_usertype.so" => {
            format!("auth {control} {module} {}", args.join(" "))
        }
        other => panic!("no stand-in for {other} ({line})"),
    }
}

/// A sandbox (opt-in) whose PAM service is `lines` with stand-ins, with
/// `local` and `directory` users: `(name, enrolled)`. Returns the sandbox
/// and the secret of each enrolled user, in the order given.
fn sandbox(
    lines: &[String],
    local: &[(&str, bool)],
    directory: &[(&str, bool)],
) -> (Sandbox, Vec<(String, String)>) {
    let sb = Sandbox::new();
    let root = sb.root().to_path_buf();
    let mut local_passdb = String::new();
    let mut directory_passdb = String::new();
    let mut local_passwd = String::new();
    let mut enrolled = Vec::new();
    for (i, (name, _)) in local.iter().enumerate() {
        sb.add_user(name, LOCAL_PW);
        local_passdb.push_str(&format!("{name}:{LOCAL_PW}:{SERVICE}\n"));
        local_passwd.push_str(&format!(
            "{name}:x:{}:{}::/:/bin/sh\n",
            21_000 + i,
            21_000 + i
        ));
    }
    for (name, _) in directory {
        sb.add_user(name, DIR_PW);
        directory_passdb.push_str(&format!("{name}:{DIR_PW}:{SERVICE}\n"));
    }
    for (name, enrol) in local.iter().chain(directory) {
        if *enrol {
            enrolled.push((name.to_string(), sb.enroll_active(name).secret));
        }
    }
    let files = [
        ("passdb-local", local_passdb),
        ("passdb-directory", directory_passdb),
        ("passwd-local", local_passwd),
    ];
    for (file, text) in &files {
        write_file(&root.join(file), text, 0o600);
    }
    let path = |f: &str| root.join(f).display().to_string();
    let acc = Accounts {
        sb: &sb,
        local_passdb: path("passdb-local"),
        directory_passdb: path("passdb-directory"),
        local_passwd: path("passwd-local"),
    };
    let mut stack: Vec<String> = lines.iter().map(|l| stand_in(l, &acc)).collect();
    stack.push("account required pam_permit.so".to_string());
    sb.set_stack(&stack);
    (sb, enrolled)
}

/// The three logins of an enrolled user whose password is `pw`.
fn check_enrolled(sb: &Sandbox, user: &str, secret: &str, pw: &str, stack: &str) {
    let r = sb.login(user, &[pw, &totp(secret, 0)]);
    assert!(
        r.success && r.prompts_seen == 1,
        "{user}: right password + right code must log in after one code prompt\n\
         stack:\n{stack}\n{r}"
    );

    let wrong = wrong_codes(secret, 3);
    let r = sb.login(user, &[pw, &wrong[0], &wrong[1], &wrong[2]]);
    r.assert_denied();
    assert!(
        r.prompts_seen >= 1,
        "{user}: right password + wrong code: the code was asked\nstack:\n{stack}\n{r}"
    );

    // The answers a client would give if the stack asked for a code after
    // the password (the password once more, then the right code): none of
    // them may get the user in.
    let r = sb.login(user, &[WRONG_PW, WRONG_PW, &totp(secret, 1)]);
    r.assert_denied();
    assert_eq!(
        r.prompts_seen, 0,
        "{user}: a wrong password ends the login without a code prompt\nstack:\n{stack}\n{r}"
    );
}

/// The logins of an unenrolled user (opt-in: the password alone decides).
fn check_unenrolled(sb: &Sandbox, user: &str, pw: &str, stack: &str) {
    let r = sb.login(user, &[WRONG_PW, WRONG_PW, "000000"]);
    r.assert_denied();
    assert_eq!(
        r.prompts_seen, 0,
        "{user}: wrong password\nstack:\n{stack}\n{r}"
    );

    let r = sb.login(user, &[pw]);
    assert!(
        r.success && r.prompts_seen == 0,
        "{user}: opt-in, not enrolled: the right password alone logs in\nstack:\n{stack}\n{r}"
    );
}

/// Every login through README.md's block for `profile` and `file`.
fn check(profile: &str, file: &str) {
    let lines = render(&readme_block(profile, file), &[]);
    let stack = lines.join("\n");
    assert!(
        lines.last().is_some_and(|l| l.contains("pam_crm2fa.so")),
        "pam_crm2fa.so is the last auth line:\n{stack}"
    );
    let directory = lines.iter().any(|l| l.contains("pam_sss.so"));
    let dir_users: &[(&str, bool)] = if directory {
        &[("dora", true), ("dirk", false)]
    } else {
        &[]
    };
    let (sb, enrolled) = sandbox(&lines, &[("lou", true), ("lena", false)], dir_users);

    let secret = |u: &str| {
        enrolled
            .iter()
            .find(|(n, _)| n == u)
            .map(|(_, s)| s.clone())
            .expect("enrolled")
    };
    check_enrolled(&sb, "lou", &secret("lou"), LOCAL_PW, &stack);
    check_unenrolled(&sb, "lena", LOCAL_PW, &stack);
    if directory {
        check_enrolled(&sb, "dora", &secret("dora"), DIR_PW, &stack);
        check_unenrolled(&sb, "dirk", DIR_PW, &stack);
        // A local user's password is not a directory user's, nor the
        // other way round.
        sb.login("dora", &[LOCAL_PW, LOCAL_PW, &totp(&secret("dora"), 1)])
            .assert_denied();
        sb.login("lou", &[DIR_PW, DIR_PW, &totp(&secret("lou"), 1)])
            .assert_denied();
    }
}

#[test]
fn local_system_auth_asks_the_code_only_after_the_right_password() {
    check("local", "system-auth");
}

#[test]
fn local_password_auth_asks_the_code_only_after_the_right_password() {
    check("local", "password-auth");
}

#[test]
fn sssd_system_auth_asks_local_and_directory_users_the_code_only_after_the_right_password() {
    check("sssd", "system-auth");
}

#[test]
fn sssd_password_auth_asks_local_and_directory_users_the_code_only_after_the_right_password() {
    check("sssd", "password-auth");
}

/// Runs README.md's jump check (the `for f in /etc/pam.d/system-auth …`
/// block) on `files`: its output.
fn readme_jump_check(files: &[&Path]) -> String {
    let readme = fs::read_to_string(workspace_dir().join("README.md")).expect("read README.md");
    let start = readme
        .find("for f in /etc/pam.d/system-auth /etc/pam.d/password-auth; do")
        .expect("README.md has the jump check");
    let end = start + readme[start..].find("\ndone\n").expect("end of the loop") + "\ndone".len();
    let names: Vec<String> = files.iter().map(|f| format!("'{}'", f.display())).collect();
    let script = readme[start..end].replacen(
        "/etc/pam.d/system-auth /etc/pam.d/password-auth",
        &names.join(" "),
        1,
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    let out = run_command(cmd, "README.md's jump check");
    assert!(out.status.success(), "{}", show_output(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_readme_jump_check_passes_the_recipe_and_catches_a_feature_that_shifts_the_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    for profile in ["local", "sssd"] {
        for features in [&[][..], &["with-faillock"][..]] {
            let mut files = Vec::new();
            for file in ["system-auth", "password-auth"] {
                let path = dir.path().join(format!("{profile}-{file}"));
                let lines = render(&readme_block(profile, file), features);
                write_file(&path, &(lines.join("\n") + "\n"), 0o644);
                files.push(path);
            }
            let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
            let report = readme_jump_check(&paths);
            let jumps = if profile == "sssd" { 2 } else { 1 };
            let (ok, wrong) = if features.is_empty() {
                (2 * jumps, 0)
            } else {
                (0, 2 * jumps)
            };
            assert_eq!(
                (
                    report.lines().filter(|l| l.starts_with("ok ")).count(),
                    report.lines().filter(|l| l.starts_with("WRONG ")).count(),
                ),
                (ok, wrong),
                "{profile} with {features:?}:\n{report}"
            );
        }
    }
}
