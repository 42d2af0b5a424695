//! The CLI as an administrator uses it: in a pipeline, on a terminal, with
//! codes kept off the command line, and the per-user exemption.

use std::process::Stdio;

use crm2fa_tests::*;

const PW: &str = "secret-pw";

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let sb = Sandbox::new();
    for u in ["alice", "bob"] {
        sb.add_user(u, PW);
        sb.enroll(u);
    }
    for args in [
        &["list"][..],
        &["--json", "audit"],
        &["completions", "bash"],
    ] {
        // The reader is gone before the first byte is written, as with
        // `crm2fa-admin list | head -0`.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = sb
            .admin_command(args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run crm2fa-admin");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{args:?}: {}\n{stderr}",
            out.status
        );
    }
}

#[test]
fn confirm_and_check_read_the_code_from_standard_input() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let secret = sb.enroll("alice");
    wait_for_step_margin(std::time::Duration::from_secs(3));
    let out = sb.admin_with_input(
        &["--json", "confirm", "alice"],
        &format!("{}\n", totp(&secret, -1)),
    );
    assert!(out.status.success(), "{}", show_output(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["state"], "active", "{v}");
    assert_eq!(json_strings(&v["backup_codes"]).len(), 10);

    let code = totp(&secret, 0);
    let out = sb.admin_with_input(&["check", "alice"], &format!("{code}\n"));
    assert!(out.status.success(), "{}", show_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("valid"),
        "{}",
        show_output(&out)
    );
    let out = sb.admin_with_input(&["check", "alice"], &format!("{}\n", wrong_code(&secret)));
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    let out = sb.admin(&["check", "alice"]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no code given"),
        "{}",
        show_output(&out)
    );
    // Nothing was consumed: the login takes the checked code.
    sb.login("alice", &[PW, &code]).assert_success();
}

#[test]
fn confirm_on_a_terminal_reads_the_code_without_echo() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let secret = sb.enroll("alice");
    wait_for_step_margin(std::time::Duration::from_secs(3));
    let code = totp(&secret, 0);
    let out = sb.admin_on_terminal(&["confirm", "alice"], &[("Code from the app: ", &code)]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", show_output(&out));
    assert!(shown.contains("now active for alice"), "{shown}");
    assert!(!shown.contains(&code), "the code was echoed: {shown}");
    assert_eq!(sb.status("alice")["state"], "active");
}

#[test]
fn disable_exempts_a_user_without_a_factor_and_enable_takes_it_back() {
    let sb = Sandbox::with_config("[policy]\nenforce = \"all\"\nunenrolled = \"deny\"\n");
    sb.add_user("bob", PW);
    sb.add_user("root", PW);
    sb.login("bob", &[PW]).assert_denied();

    // Enforced: only with --override-policy; protected users never.
    let out = sb.admin(&["disable", "bob", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--override-policy"),
        "{}",
        show_output(&out)
    );
    let out = sb.admin(&["disable", "root", "--override-policy", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("protected"),
        "{}",
        show_output(&out)
    );

    let v = sb.admin_json(&["disable", "bob", "--override-policy", "--yes"]);
    assert_eq!(v["state"], "disabled", "{v}");
    assert_eq!(sb.status("bob")["state"], "disabled");
    let r = sb.login("bob", &[PW]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 0, "exempt: no code asked: {r}");
    let policy = sb.admin_json(&["policy", "bob"]);
    assert_eq!(policy["asked"], false, "{policy}");

    let v = sb.admin_json(&["enable", "bob"]);
    assert_eq!(v["state"], "none", "{v}");
    sb.login("bob", &[PW]).assert_denied();
    // What the policy says of it: required, and refused for want of a
    // factor (not "asked for a code", which would lock bob out unawares).
    let policy = sb.admin_json(&["policy", "bob"]);
    assert_eq!(
        (&policy["required"], &policy["asked"], &policy["login"]),
        (&true.into(), &false.into(), &"refused".into()),
        "{policy}"
    );
    let out = sb.admin_ok(&["policy", "bob"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("refused") && text.contains("enrol them first"),
        "{text}"
    );
    assert!(
        sb.audit("bob")
            .iter()
            .any(|r| r["event"] == "disable" && r["outcome"] == "done"),
        "the exemption is in the audit log"
    );
}

#[test]
fn disable_without_a_terminal_needs_yes() {
    let sb = Sandbox::new();
    sb.add_user("carol", PW);
    let out = sb.admin(&["disable", "carol"]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{}",
        show_output(&out)
    );
    assert_eq!(sb.status("carol")["state"], "none", "nothing changed");
}

#[test]
fn a_destructive_command_on_a_terminal_asks_also_with_json() {
    let sb = Sandbox::new();
    sb.add_user("carol", PW);
    let asked = [("Continue? [y/N] ", "n")];
    let out = sb.admin_on_terminal(&["--json", "disable", "carol"], &asked);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    assert_eq!(
        sb.status("carol")["state"],
        "none",
        "declined: nothing changed"
    );
    let out = sb.admin_on_terminal(
        &["--json", "disable", "carol"],
        &[("Continue? [y/N] ", "y")],
    );
    assert!(out.status.success(), "{}", show_output(&out));
    assert_eq!(sb.status("carol")["state"], "disabled");
}

#[test]
fn enroll_without_a_qr_code_says_to_type_the_key() {
    let sb = Sandbox::new();
    sb.add_user("kim", "pw");
    let text = |args: &[&str]| String::from_utf8_lossy(&sb.admin_ok(args).stdout).into_owned();
    let plain = text(&["enroll", "kim", "--no-qr"]);
    assert!(
        plain.contains("Type this key into an authenticator app"),
        "{plain}"
    );
    assert!(!plain.contains("QR code"), "{plain}");
    let drawn = text(&["enroll", "kim", "--qr", "ascii", "--yes"]);
    assert!(
        drawn.contains("Scan this QR code with an authenticator app"),
        "{drawn}"
    );
}

#[test]
fn init_at_a_new_config_path_keeps_the_store_and_key_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("etc").join("crm2fa.toml");
    let out = std::process::Command::new(admin_path())
        .arg("--config")
        .arg(&cfg)
        .arg("init")
        .env_remove("CRM2FA_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show_output(&out));
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains("path = \"crm2fa.db\"") && text.contains("key_file = \"secret.key\""),
        "{text}"
    );
    for made in ["secret.key", "crm2fa.db"] {
        assert!(
            dir.path().join("etc").join(made).exists(),
            "{made}: {}",
            show_output(&out)
        );
    }
}
