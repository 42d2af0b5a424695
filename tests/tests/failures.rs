//! Broken or unsafe configuration and store: the login is denied with
//! PAM_AUTHINFO_UNAVAIL, pamtester never crashes, and the module's log (its
//! `debug` mirror on stderr) names the problem.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;

use crm2fa_tests::*;

const PW: &str = "correct horse";

/// A sandbox with one active user, `alice`; returns it and her secret.
fn sandbox_with_alice(sections: &str) -> (Sandbox, String) {
    let (sb, e) = Sandbox::with_active_user(sections, "alice", PW);
    (sb, e.secret)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn missing_config_file_denies_login_and_names_the_path() {
    let (sb, secret) = sandbox_with_alice(OPT_IN);
    let missing = sb.root().join("no-such-config.toml");
    sb.set_stack(&[
        sb.matrix_line(),
        sb.module_line_with_config("required", &missing, ""),
    ]);

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    r.assert_unavailable_naming(&[&s(&missing)]);
}

#[test]
fn config_path_that_is_a_directory_denies_login_and_names_the_path() {
    let (sb, secret) = sandbox_with_alice(OPT_IN);
    let dir = sb.root().join("config-dir.toml");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    sb.set_stack(&[
        sb.matrix_line(),
        sb.module_line_with_config("required", &dir, ""),
    ]);

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    r.assert_unavailable_naming(&[&s(&dir)]);
}

#[test]
fn config_with_syntax_error_denies_login_and_names_the_file() {
    let (sb, secret) = sandbox_with_alice(OPT_IN);
    sb.write_config(&config_text("[policy\nenforce = \"opt-in\"\n"));

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    r.assert_unavailable_naming(&[&s(&sb.cfg)]);
}

#[test]
fn config_with_unknown_key_denies_login_and_names_the_key() {
    let (sb, secret) = sandbox_with_alice(OPT_IN);
    sb.write_config(&config_text(
        "[policy]\nenforce = \"opt-in\"\nenforcement = \"all\"\n",
    ));

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    r.assert_unavailable_naming(&[&s(&sb.cfg), "enforcement"]);
}

#[test]
fn config_with_invalid_value_denies_login_even_with_failmode_safe() {
    let (sb, secret) = sandbox_with_alice(OPT_IN);
    sb.write_config(&config_text(
        "[policy]\nenforce = \"opt-in\"\nfailmode = \"safe\"\n[totp]\ndigits = 7\n",
    ));

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    r.assert_unavailable_naming(&[&s(&sb.cfg), "digits"]);
}

#[test]
fn missing_store_file_denies_login_and_names_the_path() {
    // Opt-in: a module that quietly created an empty store would find no
    // enrolment and let alice in with her password alone.
    let (sb, secret) = sandbox_with_alice(OPT_IN);
    remove_store(&sb);

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    r.assert_unavailable_naming(&[&s(&sb.store_path())]);
    assert!(
        !sb.store_path().exists(),
        "a login must not create the store"
    );
}

#[test]
fn corrupt_store_file_denies_login_and_names_the_path() {
    let (sb, secret) = sandbox_with_alice(OPT_IN);
    remove_store(&sb);
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write_bytes(&sb.store_path(), &garbage, 0o600);

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    r.assert_unavailable_naming(&[&s(&sb.store_path())]);
}

#[test]
fn store_error_with_failmode_safe_lets_the_password_decide() {
    let (sb, secret) = sandbox_with_alice("[policy]\nenforce = \"opt-in\"\nfailmode = \"safe\"\n");
    remove_store(&sb);
    write_bytes(&sb.store_path(), b"this is not a database", 0o600);

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    r.assert_success();
    assert_eq!(r.prompts_seen, 0, "{r}");
    assert!(
        !r.debug_lines_with(&[&s(&sb.store_path())]).is_empty(),
        "the store error is still logged:\n{r}"
    );
    // The password still decides.
    sb.login("alice", &["wrong password"]).assert_denied();
}

#[test]
fn group_writable_config_is_refused() {
    let (sb, secret) = sandbox_with_alice(OPT_IN);
    fs::set_permissions(&sb.cfg, fs::Permissions::from_mode(0o620)).unwrap();

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    r.assert_unavailable_naming(&[&s(&sb.cfg)]);
}

#[test]
fn key_file_readable_by_others_is_refused() {
    let (sb, secret) = sandbox_with_alice(OPT_IN);
    fs::set_permissions(sb.key_path(), fs::Permissions::from_mode(0o604)).unwrap();

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    r.assert_unavailable_naming(&[&s(&sb.key_path())]);
}

#[test]
fn store_not_owned_by_root_is_refused() {
    let (sb, secret) = sandbox_with_alice(OPT_IN);
    chown(sb.store_path(), Some(20_000), None).unwrap();

    let r = sb.login("alice", &[PW, &totp(&secret, 0)]);
    r.assert_unavailable_naming(&[&s(&sb.store_path())]);
}

/// Removes the store and its WAL/SHM companions.
fn remove_store(sb: &Sandbox) {
    let db = sb.store_path();
    fs::remove_file(&db).unwrap();
    for ext in ["-wal", "-shm", "-journal"] {
        let mut p = db.clone().into_os_string();
        p.push(ext);
        let _ = fs::remove_file(p);
    }
}

#[test]
fn doctor_passes_a_healthy_setup_and_names_the_fix_for_a_readable_key() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let out = sb.admin(&["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", show_output(&out));
    fs::set_permissions(sb.key_path(), fs::Permissions::from_mode(0o640)).unwrap();
    let out = sb.admin(&["--json", "doctor"]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    assert_eq!(v["ok"], false, "{v}");
    let key = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "key file")
        .expect("key file check");
    assert_eq!(key["ok"], false, "{v}");
    assert!(key["fix"].as_str().unwrap().contains("chmod 0600"), "{v}");
}
