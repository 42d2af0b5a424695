//! What a host installation ships: man pages that render, and `make
//! install` / `make uninstall` with DESTDIR and PREFIX (the packages are
//! built from them).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crm2fa_tests::*;

/// `make install-files` from the test's build into `destdir` (nothing is
/// built: the artifacts of this test run are copied).
fn install(destdir: &Path, docs: &Path, extra: &[&str]) {
    let target = artifact_dir();
    let out = Command::new("make")
        .current_dir(workspace_dir())
        .arg("-s")
        .arg("install-files")
        .arg(format!(
            "TARGET_DIR={}",
            target.parent().expect("target dir").display()
        ))
        .arg(format!(
            "PROFILE={}",
            target.file_name().expect("profile").to_string_lossy()
        ))
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("DOCS={}", docs.display()))
        .args(extra)
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make install-files: {}",
        show_output(&out)
    );
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).expect("under root").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_man_page_renders_without_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    install(&dir.path().join("root"), &dir.path().join("docs"), &[]);
    let man = dir.path().join("root/usr/share/man");
    let pages: Vec<PathBuf> = files_under(&man);
    for want in [
        "man8/crm2fa-admin.8",
        "man8/crm2fa-admin-enroll.8",
        "man8/pam_crm2fa.8",
        "man5/crm2fa.toml.5",
    ] {
        assert!(pages.contains(&PathBuf::from(want)), "{want} in {pages:?}");
    }
    for page in &pages {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(man.join(page))
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C.UTF-8")
            .output()
            .expect("run man");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "man -l {}: {}",
            page.display(),
            show_output(&out)
        );
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{text}");
    }
    let admin = fs::read_to_string(man.join("man8/crm2fa-admin.8")).expect("page");
    for section in ["EXIT STATUS", "FILES", "crm2fa\\-admin\\-enroll"] {
        assert!(admin.contains(section), "crm2fa-admin(8) lacks {section}");
    }
}

#[test]
fn make_install_places_every_file_and_uninstall_keeps_only_the_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let docs = dir.path().join("docs");
    install(&root, &docs, &[]);
    let multiarch = String::from_utf8_lossy(
        &Command::new("dpkg-architecture")
            .arg("-qDEB_HOST_MULTIARCH")
            .output()
            .expect("dpkg-architecture")
            .stdout,
    )
    .trim()
    .to_string();
    let module = root.join(format!("usr/lib/{multiarch}/security/pam_crm2fa.so"));
    for (path, want) in [
        (module.clone(), 0o644),
        (root.join("usr/sbin/crm2fa-admin"), 0o755),
        (root.join("etc/crm2fa/crm2fa.toml"), 0o600),
        (root.join("var/lib/crm2fa"), 0o700),
        (root.join("usr/share/pam-configs/crm2fa"), 0o644),
        (root.join("usr/lib/tmpfiles.d/crm2fa.conf"), 0o644),
        (
            root.join("usr/share/bash-completion/completions/crm2fa-admin"),
            0o644,
        ),
        (
            root.join("usr/share/zsh/vendor-completions/_crm2fa-admin"),
            0o644,
        ),
        (
            root.join("usr/share/fish/vendor_completions.d/crm2fa-admin.fish"),
            0o644,
        ),
    ] {
        assert_eq!(mode(&path), want, "{}", path.display());
    }
    // The installed CLI runs, and its completions are the ones shipped.
    let out = Command::new(root.join("usr/sbin/crm2fa-admin"))
        .args(["completions", "bash"])
        .output()
        .expect("run installed crm2fa-admin");
    let shipped = fs::read(root.join("usr/share/bash-completion/completions/crm2fa-admin"))
        .expect("completion");
    assert_eq!(out.stdout, shipped);

    // A second install never overwrites the administrator's configuration.
    let cfg = root.join("etc/crm2fa/crm2fa.toml");
    write_file(&cfg, "[policy]\nenforce = \"opt-in\"\n", 0o600);
    install(&root, &docs, &[]);
    assert_eq!(
        fs::read_to_string(&cfg).expect("config"),
        "[policy]\nenforce = \"opt-in\"\n"
    );

    let out = Command::new("make")
        .current_dir(workspace_dir())
        .args(["-s", "uninstall"])
        .arg(format!("DESTDIR={}", root.display()))
        .output()
        .expect("make uninstall");
    assert!(out.status.success(), "{}", show_output(&out));
    assert_eq!(
        files_under(&root),
        vec![PathBuf::from("etc/crm2fa/crm2fa.toml")],
        "only the configuration is left (and /var/lib/crm2fa)"
    );
    assert!(root.join("var/lib/crm2fa").is_dir());
}

#[test]
fn prefix_moves_everything_but_the_configuration_and_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    install(&root, &dir.path().join("docs"), &["PREFIX=/usr/local"]);
    let files = files_under(&root);
    assert!(
        files.contains(&PathBuf::from("usr/local/sbin/crm2fa-admin")),
        "{files:?}"
    );
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("usr/local") || f.starts_with("etc/crm2fa")),
        "{files:?}"
    );
    assert!(root.join("var/lib/crm2fa").is_dir());
}
