//! The review findings of the hardening work, each through real libpam:
//! the account behind the name, groups by id, callers that are not root,
//! PAM_SILENT, and files checked when they are opened.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::{Command, Stdio};

use crm2fa_tests::*;

const PW: &str = "correct horse";

#[test]
fn a_name_nss_does_not_know_is_denied_even_under_opt_in() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    sb.enroll_active("alice");
    // The password step accepts ALICE; NSS knows only alice.
    sb.add_password_only("ALICE", PW);
    let r = sb.login("ALICE", &[PW]);
    r.assert_denied();
    assert_eq!(r.prompts_seen, 0, "{r}");
    assert!(
        !r.debug_lines_with(&["no such account"]).is_empty(),
        "the log says why: {r}"
    );
}

#[test]
fn a_user_whose_primary_group_has_no_entry_is_still_decided_by_group_id() {
    let sb = Sandbox::with_config_and_groups(
        "[policy]\nenforce = \"groups\"\nenforce_groups = [\"twofa\"]\nunenrolled = \"deny\"\n",
        &["twofa"],
    );
    sb.add_user_without_primary_group("bob", PW, &["twofa"]);
    sb.add_user_without_primary_group("carl", PW, &[]);
    let e = sb.enroll_active("bob");
    let r = sb.login("bob", &[PW, &totp(&e.secret, 0)]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 1, "in an enforced group: asked: {r}");
    let r = sb.login("carl", &[PW]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 0, "in no enforced group: not asked: {r}");
}

#[test]
fn an_unknown_group_in_the_config_denies_and_doctor_names_it() {
    let sb = Sandbox::new();
    sb.add_user("dora", PW);
    sb.write_config(&config_text(
        "[policy]\nenforce = \"groups\"\nenforce_groups = [\"admnis\"]\n",
    ));
    let r = sb.login("dora", &[PW]);
    r.assert_denied();
    assert_eq!(r.pam_result(), PamResult::AuthinfoUnavail, "{r}");
    assert!(!r.debug_lines_with(&["admnis"]).is_empty(), "{r}");
    let out = sb.admin(&["doctor"]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no group named \"admnis\"") && text.contains("crm2fa.toml:"),
        "{text}"
    );
}

#[test]
fn pam_silent_keeps_the_prompts_and_drops_the_messages() {
    let sb = Sandbox::new();
    sb.add_user("erik", PW);
    let e = sb.enroll_active("erik");
    let bad = wrong_code(&e.secret);
    let r = sb.login_op("erik", "authenticate(PAM_SILENT)", &[PW, &bad, &bad, &bad]);
    r.assert_denied();
    assert_eq!(r.prompts_seen, 3, "{r}");
    assert_eq!(r.invalid_code_messages(), 0, "{r}");
    let r = sb.login("erik", &[PW, &bad]);
    assert_eq!(r.invalid_code_messages(), 1, "without the flag: {r}");
}

#[test]
fn pam_silent_still_shows_the_backup_codes_a_login_activates() {
    let sb = Sandbox::new();
    sb.add_user("fran", PW);
    let secret = sb.enroll("fran");
    wait_for_step_margin(std::time::Duration::from_secs(3));
    let code = totp(&secret, 0);
    let r = sb.login_op("fran", "authenticate(PAM_SILENT)", &[PW, &code, ""]);
    r.assert_success();
    // The codes go out with the prompt that asks to save them.
    assert!(r.output.contains("Your backup codes"), "{r}");
    let shown = r
        .output
        .lines()
        .filter(|l| l.starts_with("    ") && l.trim().len() == 9 && l.contains('-'))
        .count();
    let st = sb.status("fran");
    assert_eq!(st["state"], "active", "{st}");
    assert_eq!(serde_json::json!(shown), st["backup_codes_left"], "{r}");
}

/// pamtester run as `nobody` (as a screen locker runs PAM as the user),
/// with a PAM stack and module copy it can read; `extra` goes on the
/// module's line. Its exit status and everything it printed.
fn login_as_nobody(sb: &Sandbox, extra: &str) -> (bool, String) {
    let dir = tempfile::Builder::new()
        .prefix("crm2fa-nonroot-")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let pamd = dir.path().join("pam.d");
    fs::create_dir(&pamd).expect("mkdir");
    fs::set_permissions(&pamd, fs::Permissions::from_mode(0o755)).expect("chmod");
    let module = dir.path().join("pam_crm2fa.so");
    fs::copy(module_path(), &module).expect("copy module");
    fs::set_permissions(&module, fs::Permissions::from_mode(0o755)).expect("chmod");
    let passdb = dir.path().join("passdb");
    write_file(&passdb, &format!("nobody:{PW}:{SERVICE}\n"), 0o644);
    write_file(
        &pamd.join(SERVICE),
        &format!(
            "auth requisite {PAM_MATRIX} passdb={}\n\
             auth required {} config={} debug {extra}\n\
             account required pam_permit.so\n",
            passdb.display(),
            module.display(),
            sb.cfg.display()
        ),
        0o644,
    );
    write_file(&pamd.join("other"), "auth required pam_deny.so\n", 0o644);
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args(["pamtester", SERVICE, "nobody", "authenticate"])
        .env("LD_PRELOAD", "libpam_wrapper.so")
        .env("PAM_WRAPPER", "1")
        .env("PAM_WRAPPER_SERVICE_DIR", &pamd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(format!("{PW}\n").as_bytes())?;
            drop(stdin);
            child.wait_with_output()
        })
        .expect("run pamtester as nobody");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_screen_locker_running_as_the_user_gets_what_nonroot_says() {
    let sb = Sandbox::with_config("[policy]\nenforce = \"all\"\n");
    let (ok, text) = login_as_nobody(&sb, "");
    assert!(
        ok,
        "nonroot=ignore (the default): the password decides:\n{text}"
    );
    assert!(text.contains("not root"), "the log says why:\n{text}");
    let (ok, text) = login_as_nobody(&sb, "nonroot=deny");
    assert!(!ok, "nonroot=deny:\n{text}");
    assert!(text.contains("nonroot=deny"), "{text}");
}

#[test]
fn a_config_that_is_a_symbolic_link_is_refused() {
    let sb = Sandbox::new();
    sb.add_user("fred", PW);
    let e = sb.enroll_active("fred");
    let real = sb.root().join("real.toml");
    fs::rename(&sb.cfg, &real).expect("move config");
    symlink(&real, &sb.cfg).expect("symlink");
    let r = sb.login("fred", &[PW, &totp(&e.secret, 0)]);
    r.assert_denied();
    assert!(!r.debug_lines_with(&["symbolic link"]).is_empty(), "{r}");
}

#[test]
fn a_store_in_a_directory_others_can_write_is_refused_at_login() {
    let sb = Sandbox::new();
    sb.add_user("gina", PW);
    let data = sb.root().join("data");
    fs::create_dir(&data).expect("mkdir");
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).expect("chmod");
    sb.write_config(&format!(
        "[store]\npath = \"data/crm2fa.db\"\nkey_file = \"secret.key\"\n\n{OPT_IN}"
    ));
    sb.admin_ok(&["init"]);
    let e = sb.enroll_active("gina");
    sb.login("gina", &[PW, &totp(&e.secret, 0)])
        .assert_success();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o775)).expect("chmod");
    let r = sb.login("gina", &[PW, &totp(&e.secret, 1)]);
    r.assert_denied();
    assert!(!r.debug_lines_with(&["chmod go-w"]).is_empty(), "{r}");
}

#[test]
fn a_wal_file_open_to_others_is_refused_at_login() {
    let sb = Sandbox::new();
    sb.add_user("hugo", PW);
    let e = sb.enroll_active("hugo");
    let mut wal = sb.store_path().into_os_string();
    wal.push("-wal");
    assert!(fs::metadata(&wal).is_ok(), "the store has a WAL");
    fs::set_permissions(&wal, fs::Permissions::from_mode(0o644)).expect("chmod");
    let r = sb.login("hugo", &[PW, &totp(&e.secret, 0)]);
    r.assert_denied();
    assert!(
        !r.debug_lines_with(&["-wal", "chmod 0600"]).is_empty(),
        "{r}"
    );
}

#[test]
fn the_module_carries_its_unwinder_and_needs_no_libgcc_s() {
    // Every login loads what the module needs: libgcc_s.so.1 cost a login
    // about 50 us. The unwinder is linked in (pam_crm2fa/build.rs), so a
    // panic is still caught at the entry points.
    let out = Command::new("readelf")
        .arg("-d")
        .arg(module_path())
        .output()
        .expect("run readelf (binutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("(NEEDED)"), "{text}");
    assert!(!text.contains("libgcc_s"), "{text}");
}
