//! Migrating to crm2fa: files written by the google-authenticator tool and
//! pam_oath's users.oath are imported, and the user's existing app (here:
//! oathtool on the same secret) keeps working through real libpam.

use std::fs;
use std::process::Command;
use std::time::Duration;

use crm2fa_tests::*;
use serde_json::Value;

const PW: &str = "correct horse";

/// A `.google_authenticator` file written by the tool itself; the
/// arguments choose the mode (`-t` time-based, `-c` counter-based).
fn google_authenticator_file(
    sb: &Sandbox,
    name: &str,
    mode: &[&str],
) -> (std::path::PathBuf, String) {
    let path = sb.root().join(name);
    let out = Command::new("google-authenticator")
        .args(mode)
        .args([
            "-f", "-C", "-q", "-w", "3", "-u", "-e", "5", "-Q", "NONE", "-s",
        ])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run google-authenticator (package libpam-google-authenticator)");
    assert!(out.status.success(), "{}", show_output(&out));
    let text = fs::read_to_string(&path).expect("read the file it wrote");
    let secret = text.lines().next().expect("secret line").trim().to_string();
    (path, secret)
}

fn scratch_codes(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.len() == 8 && l.bytes().all(|b| b.is_ascii_digit()))
        .map(String::from)
        .collect()
}

#[test]
fn a_google_authenticator_file_is_imported_and_the_app_keeps_working() {
    let sb = Sandbox::new();
    sb.add_user("alice", PW);
    let (file, secret) = google_authenticator_file(&sb, "ga-alice", &["-t", "-d"]);
    let scratch = scratch_codes(&fs::read_to_string(&file).unwrap());
    assert_eq!(scratch.len(), 5);
    let file = file.to_str().unwrap();

    // A dry run checks and shows, and changes nothing.
    let v = sb.admin_json(&[
        "import",
        "google-authenticator",
        file,
        "--user",
        "alice",
        "--dry-run",
    ]);
    assert_eq!(v["dry_run"], true, "{v}");
    assert_eq!(v["users"][0]["user"], "alice", "{v}");
    assert_eq!(v["users"][0]["backup_codes"], 5, "{v}");
    assert_eq!(sb.status("alice")["state"], "none");

    let v = sb.admin_json(&["import", "google-authenticator", file, "--user", "alice"]);
    assert_eq!(v["users"][0]["replaces"], Value::Null, "{v}");
    let st = sb.status("alice");
    assert_eq!(
        (st["state"].as_str(), st["backup_codes_left"].as_u64()),
        (Some("active"), Some(5))
    );
    // The app's code logs in; a scratch code is a backup code now.
    sb.login("alice", &[PW, &totp(&secret, 0)]).assert_success();
    sb.login("alice", &[PW, &scratch[2]]).assert_success();
    sb.login("alice", &[PW, &scratch[2]]).assert_denied();
    assert!(sb.audit("alice").iter().any(|r| r["event"] == "enroll"
        && r["detail"]
            .as_str()
            .unwrap_or("")
            .contains("google-authenticator")));
}

#[test]
fn steps_google_authenticator_saw_used_stay_used() {
    let sb = Sandbox::new();
    sb.add_user("bob", PW);
    let (file, secret) = google_authenticator_file(&sb, "ga-bob", &["-t", "-d"]);
    let step = wait_for_step_margin(Duration::from_secs(5));
    // GA recorded the current step as used at its last login.
    let text = fs::read_to_string(&file)
        .unwrap()
        .replace(
            "\" DISALLOW_REUSE",
            &format!("\" DISALLOW_REUSE {}", step - 3),
        )
        .replace("\" DISALLOW_REUSE ", &format!("\" DISALLOW_REUSE {step} "));
    write_file(&file, &text, 0o600);
    sb.admin_ok(&[
        "import",
        "google-authenticator",
        file.to_str().unwrap(),
        "--user",
        "bob",
    ]);
    let r = sb.login("bob", &[PW, &totp_at_step(&secret, step)]);
    r.assert_denied();
    assert_eq!(r.invalid_code_messages(), 1, "{r}");
    sb.login("bob", &[PW, &totp_at_step(&secret, step + 1)])
        .assert_success();
}

#[test]
fn a_counter_based_google_authenticator_file_is_refused_with_its_line() {
    let sb = Sandbox::new();
    sb.add_user("carol", PW);
    let (file, _) = google_authenticator_file(&sb, "ga-carol", &["-c"]);
    let out = sb.admin(&[
        "import",
        "google-authenticator",
        file.to_str().unwrap(),
        "--user",
        "carol",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:3:", file.display())) && err.contains("counter-based"),
        "{err}"
    );
    assert_eq!(sb.status("carol")["state"], "none");
}

#[test]
fn an_oath_file_is_imported_whole_or_not_at_all() {
    let sb = Sandbox::new();
    sb.add_user("dave", PW);
    sb.add_user("erin", PW);
    let (d, e) = (
        "3132333435363738393031323334353637383930",
        "00112233445566778899aabbccddeeff00112233",
    );
    let file = sb.root().join("users.oath");
    // A counter-based line (3) makes the whole file fail: nothing imported.
    write_file(
        &file,
        &format!("# migrated\nHOTP/T30 dave - {d}\nHOTP erin - {e}\n"),
        0o600,
    );
    let out = sb.admin(&["import", "oath", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("users.oath:3:"),
        "{}",
        show_output(&out)
    );
    assert_eq!(sb.status("dave")["state"], "none", "not even the good line");

    write_file(
        &file,
        &format!("# migrated\nHOTP/T30 dave - {d}\nHOTP/T30/6 erin - {e}\n"),
        0o600,
    );
    let v = sb.admin_json(&["import", "oath", file.to_str().unwrap()]);
    assert_eq!(v["users"].as_array().map(Vec::len), Some(2), "{v}");
    let base32 = |hex: &str| {
        let out = Command::new("oathtool")
            .args(["--totp", "-v", hex])
            .output()
            .expect("oathtool");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Base32 secret: ").map(String::from))
            .expect("oathtool -v prints the base32 secret")
    };
    sb.login("dave", &[PW, &totp(&base32(d), 0)])
        .assert_success();
    sb.login("erin", &[PW, &totp(&base32(e), 0)])
        .assert_success();
}

#[test]
fn an_import_that_replaces_a_factor_needs_yes_without_a_terminal() {
    let sb = Sandbox::new();
    sb.add_user("fay", PW);
    let old = sb.enroll_active("fay");
    let (file, secret) = google_authenticator_file(&sb, "ga-fay", &["-t", "-d"]);
    let file = file.to_str().unwrap();
    let out = sb.admin(&["import", "google-authenticator", file, "--user", "fay"]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{}",
        show_output(&out)
    );
    sb.login("fay", &[PW, &totp(&old.secret, 0)])
        .assert_success();
    let v = sb.admin_json(&[
        "import",
        "google-authenticator",
        file,
        "--user",
        "fay",
        "--yes",
    ]);
    assert_eq!(v["users"][0]["replaces"], "active", "{v}");
    sb.login("fay", &[PW, &totp(&secret, 1)]).assert_success();
}

#[test]
fn an_import_that_voids_a_users_backup_codes_needs_yes_too() {
    // carol's factor is email, with backup codes on paper: the import's
    // codes replace those.
    let sb = Sandbox::with_config("[email]\nsmtp_host = \"127.0.0.1\"\n");
    sb.add_user("carol", PW);
    sb.admin_ok(&["set-contact", "carol", "--email", "carol@example.com"]);
    let v = sb.admin_json(&["enroll", "carol", "--method", "email"]);
    let paper = v["backup_codes"].as_array().map_or(0, Vec::len);
    assert!(paper > 0, "{v}");
    let (file, _) = google_authenticator_file(&sb, "ga-carol", &["-t", "-d"]);
    let file = file.to_str().unwrap();
    let args = ["import", "google-authenticator", file, "--user", "carol"];
    let out = sb.admin(&args);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    assert!(
        show_output(&out).contains(&format!("carol: {paper} unused backup code(s)")),
        "{}",
        show_output(&out)
    );
    assert_eq!(sb.status("carol")["backup_codes_left"], paper);
    let v = sb.admin_json(&[&args[..], &["--yes"]].concat());
    assert_eq!(v["users"][0]["voids_backup_codes"], paper, "{v}");
    assert_eq!(v["users"][0]["replaces"], Value::Null, "{v}");
}

#[test]
fn an_import_file_must_be_a_regular_file_not_a_link_nor_a_fifo() {
    let sb = Sandbox::new();
    sb.add_user("gil", PW);
    let (file, _) = google_authenticator_file(&sb, "ga-gil", &["-t", "-d"]);
    let link = sb.root().join("ga-link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let fifo = sb.root().join("ga-fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    for (path, said) in [(&link, "symbolic link"), (&fifo, "not a regular file")] {
        let started = std::time::Instant::now();
        let out = sb.admin(&[
            "import",
            "google-authenticator",
            path.to_str().unwrap(),
            "--user",
            "gil",
            "--dry-run",
        ]);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
        assert!(show_output(&out).contains(said), "{}", show_output(&out));
    }
    let big = sb.root().join("ga-big");
    fs::write(&big, vec![b'#'; (4 << 20) + 1]).unwrap();
    let out = sb.admin(&["import", "oath", big.to_str().unwrap(), "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", show_output(&out));
    assert!(
        show_output(&out).contains("larger than 4 MiB"),
        "{}",
        show_output(&out)
    );
}
