//! The demo a newcomer runs first, and what a host installation ships: man
//! pages that render, `make install`
//! / `make uninstall` with DESTDIR and PREFIX, and the .deb and .rpm built
//! from them; the .deb is installed, used for a real login and removed in a
//! throwaway root (an overlay over `/` in a private mount namespace).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

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
        "man8/crm2fad.8",
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
    let module = root.join(format!("usr/lib/{}/security/pam_crm2fa.so", multiarch()));
    for (path, want) in [
        (module.clone(), 0o644),
        (root.join("usr/sbin/crm2fa-admin"), 0o755),
        (root.join("usr/sbin/crm2fad"), 0o755),
        (root.join("usr/lib/systemd/system/crm2fad.service"), 0o644),
        (root.join("usr/share/man/man8/crm2fad.8"), 0o644),
        (root.join("usr/libexec/crm2fa/crm2fa-send"), 0o755),
        (root.join("usr/lib/crm2fa"), 0o755),
        (root.join("usr/lib/crm2fa/libcrm2fa_pg.so"), 0o644),
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

    let uninstall = || {
        Command::new("make")
            .current_dir(workspace_dir())
            .args(["-s", "uninstall"])
            .arg(format!("DESTDIR={}", root.display()))
            .output()
            .expect("make uninstall")
    };
    // While a PAM file of that tree loads the module, it stays: without it
    // every login through that file would fail.
    let pamd = root.join("etc/pam.d");
    fs::create_dir_all(&pamd).expect("mkdir pam.d");
    let sshd = pamd.join("sshd");
    fs::write(
        &sshd,
        "@include common-auth
auth required pam_crm2fa.so
",
    )
    .expect("sshd");
    let out = uninstall();
    assert!(!out.status.success(), "{}", show_output(&out));
    assert!(
        show_output(&out).contains(&format!("  {}", sshd.display())),
        "{}",
        show_output(&out)
    );
    assert!(files_under(&root)
        .iter()
        .any(|f| f.ends_with("pam_crm2fa.so")));
    fs::remove_dir_all(root.join("etc/pam.d")).expect("rm pam.d");
    let out = uninstall();
    assert!(out.status.success(), "{}", show_output(&out));
    assert_eq!(
        files_under(&root),
        vec![PathBuf::from("etc/crm2fa/crm2fa.toml")],
        "only the configuration is left (and /var/lib/crm2fa)"
    );
    assert!(root.join("var/lib/crm2fa").is_dir());
    assert!(
        !root.join("usr/lib/crm2fa").exists(),
        "the PostgreSQL client's directory is removed with it"
    );
}

/// Debian's multiarch triplet (`x86_64-linux-gnu`).
fn multiarch() -> String {
    String::from_utf8_lossy(
        &Command::new("dpkg-architecture")
            .arg("-qDEB_HOST_MULTIARCH")
            .output()
            .expect("dpkg-architecture")
            .stdout,
    )
    .trim()
    .to_string()
}

#[test]
fn prefix_moves_everything_but_the_pam_files_the_configuration_and_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    install(&root, &dir.path().join("docs"), &["PREFIX=/usr/local"]);
    let files = files_under(&root);
    assert!(
        files.contains(&PathBuf::from("usr/local/sbin/crm2fa-admin")),
        "{files:?}"
    );
    // libpam loads modules from its own directory only, and pam-auth-update
    // reads /usr/share/pam-configs only: under /usr/local the module would
    // fail every login whose PAM line names it, and the profile would
    // enable nothing.
    let module = PathBuf::from(format!("usr/lib/{}/security/pam_crm2fa.so", multiarch()));
    let profile = PathBuf::from("usr/share/pam-configs/crm2fa");
    assert!(files.contains(&module), "{files:?}");
    assert!(files.contains(&profile), "{files:?}");
    assert!(
        files.iter().all(|f| f.starts_with("usr/local")
            || f.starts_with("etc/crm2fa")
            || *f == module
            || *f == profile),
        "{files:?}"
    );
    assert!(root.join("var/lib/crm2fa").is_dir());
    // systemd reads units under /usr/local/lib too; the unit starts the
    // crm2fad installed beside the CLI.
    let unit = fs::read_to_string(root.join("usr/local/lib/systemd/system/crm2fad.service"))
        .expect("crm2fad.service");
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/local/sbin/crm2fad"),
        "{unit}"
    );
    // The configuration written names the sending program and the
    // PostgreSQL client where they went.
    let cfg = fs::read_to_string(root.join("etc/crm2fa/crm2fa.toml")).expect("config");
    assert!(
        cfg.contains("program = \"/usr/local/libexec/crm2fa/crm2fa-send\""),
        "{cfg}"
    );
    assert!(
        files.contains(&PathBuf::from("usr/local/lib/crm2fa/libcrm2fa_pg.so")),
        "{files:?}"
    );
    assert!(
        cfg.contains("client_library = \"/usr/local/lib/crm2fa/libcrm2fa_pg.so\""),
        "{cfg}"
    );
    assert!(!cfg.contains("\"/usr/lib/crm2fa/"), "{cfg}");

    // Both still go where their own variables say, under DESTDIR.
    let other = dir.path().join("other");
    install(
        &other,
        &dir.path().join("docs"),
        &[
            "PREFIX=/usr/local",
            "PAMDIR=/lib/security",
            "PAMCONFIGSDIR=/opt/pam-configs",
        ],
    );
    let files = files_under(&other);
    for want in ["lib/security/pam_crm2fa.so", "opt/pam-configs/crm2fa"] {
        assert!(files.contains(&PathBuf::from(want)), "{want} in {files:?}");
    }
    let out = Command::new("make")
        .current_dir(workspace_dir())
        .args(["-s", "uninstall", "PREFIX=/usr/local"])
        .args(["PAMDIR=/lib/security", "PAMCONFIGSDIR=/opt/pam-configs"])
        .arg(format!("DESTDIR={}", other.display()))
        .output()
        .expect("make uninstall");
    assert!(out.status.success(), "{}", show_output(&out));
    assert_eq!(
        files_under(&other),
        vec![PathBuf::from("etc/crm2fa/crm2fa.toml")]
    );
}

/// Where this test process builds its packages: `crm2fa-pkg-PID-…` in the
/// temporary directory. It outlives the tests that use it (they share it
/// through statics, which are never dropped), so each run first removes
/// those of test processes that have ended.
const PKG_PREFIX: &str = "crm2fa-pkg-";

fn remove_ended_runs_packages() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(PKG_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Build a package with `script` from this test run's artifacts, once per
/// test process; its path.
fn package(script: &str, cell: &'static OnceLock<PathBuf>) -> PathBuf {
    cell.get_or_init(|| {
        remove_ended_runs_packages();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PKG_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("tempdir")
            .keep();
        let target = artifact_dir();
        let out = Command::new("bash")
            .arg(workspace_dir().join("scripts").join(script))
            .env(
                "PROFILE",
                target
                    .file_name()
                    .expect("profile")
                    .to_string_lossy()
                    .as_ref(),
            )
            .env("TARGET_DIR", target.parent().expect("target dir"))
            .env("PKG_DIR", &dir)
            .output()
            .expect("run the package build");
        assert!(out.status.success(), "{script}: {}", show_output(&out));
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

fn deb() -> PathBuf {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    package("build-deb.sh", &DEB)
}

fn rpm() -> PathBuf {
    static RPM: OnceLock<PathBuf> = OnceLock::new();
    package("build-rpm.sh", &RPM)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", show_output(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_deb_holds_every_file_where_debian_wants_it_and_lintian_finds_no_error() {
    let deb = deb();
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let multiarch = run(Command::new("dpkg-architecture").arg("-qDEB_HOST_MULTIARCH"));
    for (mode, path) in [
        (
            "-rw-r--r--",
            format!("./usr/lib/{}/security/pam_crm2fa.so", multiarch.trim()),
        ),
        ("-rwxr-xr-x", "./usr/sbin/crm2fa-admin".into()),
        ("-rwxr-xr-x", "./usr/sbin/crm2fad".into()),
        (
            "-rw-r--r--",
            "./usr/lib/systemd/system/crm2fad.service".into(),
        ),
        ("-rw-r--r--", "./usr/share/man/man8/crm2fad.8.gz".into()),
        ("-rwxr-xr-x", "./usr/libexec/crm2fa/crm2fa-send".into()),
        ("drwxr-xr-x", "./usr/lib/crm2fa/".into()),
        ("-rw-r--r--", "./usr/lib/crm2fa/libcrm2fa_pg.so".into()),
        ("-rw-------", "./etc/crm2fa/crm2fa.toml".into()),
        ("drwx------", "./var/lib/crm2fa/".into()),
        ("-rw-r--r--", "./usr/share/pam-configs/crm2fa".into()),
        (
            "-rw-r--r--",
            "./usr/share/man/man8/crm2fa-admin.8.gz".into(),
        ),
        ("-rw-r--r--", "./usr/share/man/man8/pam_crm2fa.8.gz".into()),
        ("-rw-r--r--", "./usr/share/man/man5/crm2fa.toml.5.gz".into()),
        (
            "-rw-r--r--",
            "./usr/share/bash-completion/completions/crm2fa-admin".into(),
        ),
        (
            "-rw-r--r--",
            "./usr/share/zsh/vendor-completions/_crm2fa-admin".into(),
        ),
        (
            "-rw-r--r--",
            "./usr/share/fish/vendor_completions.d/crm2fa-admin.fish".into(),
        ),
        ("-rw-r--r--", "./usr/share/doc/crm2fa/copyright".into()),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(mode) && l.contains(" root/root ") && l.ends_with(&path)),
            "{mode} root/root {path} in:\n{listing}"
        );
    }
    // The objects are stripped, and the PostgreSQL client still exports the
    // functions the module looks up.
    let unpacked = tempfile::tempdir().expect("tempdir");
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(unpacked.path()));
    let client = unpacked.path().join("usr/lib/crm2fa/libcrm2fa_pg.so");
    for object in [
        client.clone(),
        unpacked.path().join(format!(
            "usr/lib/{}/security/pam_crm2fa.so",
            multiarch.trim()
        )),
    ] {
        let sections = run(Command::new("readelf").arg("-S").arg(&object));
        assert!(
            !sections.contains(".symtab") && !sections.contains(".debug_"),
            "{} is not stripped:\n{sections}",
            object.display()
        );
    }
    let exported = run(Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&client));
    assert!(exported.contains(" T crm2fa_pg_connect"), "{exported}");
    let conffiles = run(Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/crm2fa/crm2fa.toml");
    let package = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Package"));
    assert_eq!(package.trim(), "crm2fa");
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .expect("run lintian");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.lines().any(|l| l.starts_with("E: ")),
        "lintian: {}",
        show_output(&out)
    );
}

/// Runs `script` as root in a throwaway copy of this system: an overlay
/// over `/` (its upper layer on a tmpfs) in a private mount namespace, with
/// /proc and /dev bound, a tmpfs on /run and /tmp, and `files` copied into
/// /tmp; then `chroot`. Nothing reaches the host. Its output.
fn in_throwaway_root(files: &[&Path], script: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let mut copy = String::new();
    for f in files {
        copy.push_str(&format!("cp '{}' $T/root/tmp/\n", f.display()));
    }
    let outer = format!(
        "set -e\nT='{d}'\nmkdir -p $T/layers $T/root\n\
         mount -t tmpfs tmpfs $T/layers\nmkdir -p $T/layers/upper $T/layers/work\n\
         mount -t overlay overlay -o lowerdir=/,upperdir=$T/layers/upper,workdir=$T/layers/work $T/root\n\
         mount --bind /proc $T/root/proc\nmount --bind /dev $T/root/dev\n\
         mount -t tmpfs tmpfs $T/root/run\nmount -t tmpfs tmpfs $T/root/tmp\n\
         {copy}exec chroot $T/root /bin/sh -c \"$1\"\n"
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(outer)
        .arg("throwaway-root")
        .arg(script)
        .env("LC_ALL", "C.UTF-8")
        .env_remove("LD_PRELOAD")
        .output()
        .expect("run unshare")
}

/// Shell functions for the scripts of [`run_steps`]. `early_in_step`:
/// with less than 5 s left of the current 30 s TOTP step, wait for the
/// next, so that a code made for the step before stays within the window
/// until the command that reads it has read the clock.
const PRELUDE: &str =
    "early_in_step() { s=$(( $(date +%s) % 30 )); if [ $s -ge 25 ]; then sleep $(( 30 - s )); fi; }\n";

/// [`in_throwaway_root`], checked: the script (after [`PRELUDE`])
/// succeeded and announced each of `steps` (`say STEP` prints `== STEP`).
fn run_steps(files: &[&Path], script: &str, steps: &[&str]) {
    let out = in_throwaway_root(files, &format!("{PRELUDE}{script}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", show_output(&out));
    for step in steps {
        assert!(
            text.contains(&format!("== {step}")),
            "{step}: {}",
            show_output(&out)
        );
    }
}

/// The file name of `path`, which has one.
fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn the_deb_installs_locks_nobody_out_logs_in_with_a_code_and_removes_cleanly() {
    let deb = deb();
    let name = file_name(&deb);
    // A real pam_unix user, the packaged profile, and pamtester on the
    // distribution's "login" service (which includes common-auth).
    let script = format!(
        r#"set -eu
say() {{ echo "== $*"; }}
login() {{ printf '%s\n' "$@" | pamtester login tess authenticate; }}
dpkg -i /tmp/{name} >/dev/null
say installed
if grep -q pam_crm2fa /etc/pam.d/common-auth; then echo 'installing enabled it'; exit 1; fi
useradd -m tess
echo 'tess:Tr0ub4dor&3' | chpasswd
login 'Tr0ub4dor&3'
say password alone before the profile is enabled
crm2fa-admin init >/dev/null
secret=$(crm2fa-admin --json enroll tess --no-qr | sed -n 's/.*"secret": "\([A-Z2-7]*\)".*/\1/p')
early_in_step
crm2fa-admin confirm tess "$(oathtool --totp -b -N 'now - 30 seconds' "$secret")" >/dev/null
pam-auth-update --enable crm2fa
grep -q pam_crm2fa /etc/pam.d/common-auth
if login 'Tr0ub4dor&3' 000000 000000 000000; then echo 'a wrong code logged in'; exit 1; fi
say a wrong code is refused
login 'Tr0ub4dor&3' "$(oathtool --totp -b "$secret")"
say logged in with the password and a code
mkdir -p -m 0755 /run/crm2fa
/usr/sbin/crm2fad 2>/tmp/crm2fad.log &
dpid=$!
i=0
while [ ! -S /run/crm2fa/crm2fad.sock ]; do
  i=$((i + 1)); [ "$i" -lt 500 ] || {{ cat /tmp/crm2fad.log; exit 1; }}; sleep 0.01
done
login 'Tr0ub4dor&3' "$(oathtool --totp -b -N 'now + 30 seconds' "$secret")"
ls -l /proc/$dpid/fd | grep -q /var/lib/crm2fa/crm2fa.db
say the installed crm2fad ran the login and keeps the store open
kill -TERM $dpid
wait $dpid
test ! -e /run/crm2fa/crm2fad.sock
say crm2fad stopped and took its socket away
dpkg -r crm2fa >/dev/null
if grep -q pam_crm2fa /etc/pam.d/common-auth; then echo 'common-auth still loads it'; exit 1; fi
login 'Tr0ub4dor&3'
say removed: the password alone again
test -f /etc/crm2fa/secret.key && test -f /var/lib/crm2fa/crm2fa.db
dpkg -P crm2fa >/dev/null
test ! -e /etc/crm2fa && test ! -e /var/lib/crm2fa
if dpkg -s crm2fa >/dev/null 2>&1; then echo 'still known to dpkg'; exit 1; fi
say purged
"#
    );
    run_steps(
        &[&deb],
        &script,
        &[
            "password alone before the profile is enabled",
            "a wrong code is refused",
            "logged in with the password and a code",
            "the installed crm2fad ran the login and keeps the store open",
            "crm2fad stopped and took its socket away",
            "removed: the password alone again",
            "purged",
        ],
    );
    // The host never saw any of it.
    let host_auth = fs::read_to_string("/etc/pam.d/common-auth").unwrap_or_default();
    assert!(
        !host_auth.contains("pam_crm2fa"),
        "the host's PAM stack was changed"
    );
}

#[test]
fn the_deb_is_not_removed_while_a_pam_line_it_does_not_manage_loads_the_module() {
    let deb = deb();
    let name = file_name(&deb);
    // The README's SSH-only line, right after `@include common-auth` in
    // /etc/pam.d/sshd: pam-auth-update does not manage it, so removing the
    // package would leave a line whose module is gone ("Module is unknown":
    // every SSH login fails). Each code is one step later than the last,
    // as a code is accepted once.
    let script = format!(
        r#"set -eu
say() {{ echo "== $*"; }}
login() {{ printf '%s\n' "$@" | pamtester sshd tess authenticate; }}
code() {{ oathtool --totp -b -N "now + $1 seconds" "$secret"; }}
installed() {{ [ "$(dpkg-query -W -f='${{db:Status-Status}}' crm2fa)" = installed ]; }}
export DEBIAN_FRONTEND=noninteractive
dpkg -i /tmp/{name} >/dev/null
module=$(dpkg -L crm2fa | grep '/security/pam_crm2fa.so$')
useradd -m tess
echo 'tess:Tr0ub4dor&3' | chpasswd
crm2fa-admin init >/dev/null
secret=$(crm2fa-admin --json enroll tess --no-qr | sed -n 's/.*"secret": "\([A-Z2-7]*\)".*/\1/p')
early_in_step
crm2fa-admin confirm tess "$(code -30)" >/dev/null
[ -e /etc/pam.d/sshd ] || echo '@include common-auth' >/etc/pam.d/sshd
sed -i 's/^@include common-auth$/&\nauth required pam_crm2fa.so/' /etc/pam.d/sshd
grep -q '^auth required pam_crm2fa.so$' /etc/pam.d/sshd
if login 'Tr0ub4dor&3'; then echo 'the password alone logged in'; exit 1; fi
login 'Tr0ub4dor&3' "$(code 0)"
say sshd asks for the code

if dpkg -r crm2fa 2>/tmp/refused; then echo 'removed with the sshd line in place'; exit 1; fi
cat /tmp/refused
grep -q '^  /etc/pam.d/sshd$' /tmp/refused
grep -q 'Take the pam_crm2fa.so line out' /tmp/refused
installed && test -f "$module"
login 'Tr0ub4dor&3' "$(code 30)"
say refused: the module stays and the password and a code log in

# With the profile enabled too, a refused removal leaves it enabled.
pam-auth-update --enable crm2fa
if dpkg -r crm2fa 2>/tmp/refused; then echo 'removed with the sshd line in place'; exit 1; fi
installed
grep -q pam_crm2fa /etc/pam.d/common-auth
grep -q '^Module: crm2fa$' /var/lib/pam/auth
say refused: the profile stays enabled
pam-auth-update --disable crm2fa

# Comments and copies nothing loads do not hold the package back.
sed -i 's/^auth required pam_crm2fa.so$/# &/' /etc/pam.d/sshd
echo 'auth required pam_crm2fa.so' >/etc/pam.d/sshd.dpkg-old
echo 'auth required pam_crm2fa.so' >/etc/pam.d/sshd~
dpkg -r crm2fa >/dev/null
if installed || test -e "$module"; then echo 'not removed'; exit 1; fi
if grep -q pam_crm2fa /etc/pam.d/common-auth; then echo 'common-auth still loads it'; exit 1; fi
login 'Tr0ub4dor&3'
say removed once the line is out: the password alone again
"#
    );
    run_steps(
        &[&deb],
        &script,
        &[
            "sshd asks for the code",
            "refused: the module stays and the password and a code log in",
            "refused: the profile stays enabled",
            "removed once the line is out: the password alone again",
        ],
    );
}

#[test]
fn the_rpm_holds_every_file_with_the_config_kept_on_upgrade() {
    let rpm = rpm();
    let listing = run(Command::new("rpm").args(["-qlpv"]).arg(&rpm));
    for (mode, path) in [
        ("-rw-r--r--", "/usr/lib64/security/pam_crm2fa.so"),
        ("-rwxr-xr-x", "/usr/sbin/crm2fa-admin"),
        ("-rwxr-xr-x", "/usr/sbin/crm2fad"),
        ("-rw-r--r--", "/usr/lib/systemd/system/crm2fad.service"),
        ("-rwxr-xr-x", "/usr/libexec/crm2fa/crm2fa-send"),
        ("drwxr-xr-x", "/usr/lib/crm2fa"),
        ("-rw-r--r--", "/usr/lib/crm2fa/libcrm2fa_pg.so"),
        ("-rw-------", "/etc/crm2fa/crm2fa.toml"),
        ("drwx------", "/var/lib/crm2fa"),
        ("-rw-r--r--", "/usr/share/man/man8/pam_crm2fa.8.gz"),
        ("-rw-r--r--", "/usr/share/zsh/site-functions/_crm2fa-admin"),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(path)),
            "{mode} {path} in:\n{listing}"
        );
    }
    assert!(!listing.contains("pam-configs"), "{listing}");
    let client = listing
        .lines()
        .find(|l| l.ends_with("/usr/lib/crm2fa/libcrm2fa_pg.so"))
        .expect("the PostgreSQL client");
    let fields: Vec<&str> = client.split_whitespace().collect();
    assert_eq!(fields.get(2..4), Some(&["root", "root"][..]), "{client}");
    let config = run(Command::new("rpm").args(["-qp", "--configfiles"]).arg(&rpm));
    assert_eq!(config.trim(), "/etc/crm2fa/crm2fa.toml");
    let flags = run(Command::new("rpm")
        .args([
            "-qp",
            "--queryformat",
            "[%{FILENAMES} %{FILEFLAGS:fflags}\\n]",
        ])
        .arg(&rpm));
    assert!(
        flags
            .lines()
            .any(|l| l.starts_with("/etc/crm2fa/crm2fa.toml ") && l.contains('n')),
        "the config is %config(noreplace): {flags}"
    );
}

#[test]
fn the_rpm_refuses_to_be_erased_while_a_pam_file_loads_the_module() {
    let rpm = rpm();
    let query = |tag: &str| {
        run(Command::new("rpm")
            .args(["-qp", "--queryformat", tag])
            .arg(&rpm))
    };
    assert_eq!(query("%{PREUNPROG}"), "/bin/sh");
    let preun = query("%{PREUN}");
    let shared = fs::read_to_string(workspace_dir().join("packaging/pam-lines.sh")).expect("read");
    assert!(preun.contains(shared.trim()), "{preun}");
    let dir = tempfile::tempdir().expect("tempdir");
    let scriptlet = dir.path().join("preun");
    fs::write(&scriptlet, &preun).expect("write the scriptlet");
    // rpm runs the scriptlet with 0 on erase, 1 on upgrade. authselect's
    // system-auth is a link into /etc/authselect; a stand-in authselect
    // reports the README's profile and feature.
    let name = file_name(&rpm);
    let script = format!(
        r##"set -u
say() {{ echo "== $*"; }}
preun() {{ sh /tmp/preun "$1" 2>/tmp/err; }}
fail() {{ echo "$*"; cat /tmp/err; exit 1; }}
preun 0 || fail 'refused with no line'
say erased with no line
mkdir -p /etc/authselect /tmp/bin
line='auth [success=ok ignore=ignore default=die] pam_crm2fa.so'
echo "$line" >/etc/authselect/system-auth
ln -sf /etc/authselect/system-auth /etc/pam.d/system-auth
echo "$line" >/etc/pam.d/password-auth
preun 1 || fail 'an upgrade was refused'
say upgraded with the lines
preun 0 && fail 'erased with the lines in place'
grep -qx '  /etc/pam.d/password-auth' /tmp/err && grep -qx '  /etc/pam.d/system-auth' /tmp/err \
  || fail 'the files are not named'
grep -q 'Take the pam_crm2fa.so line out' /tmp/err || fail 'no advice'
grep -q authselect /tmp/err && fail 'authselect named without authselect'
say refused, naming the files
printf '%s\n' '#!/bin/sh' 'printf "Profile ID: custom/crm2fa\nEnabled features:\n- with-faillock\n"' \
  >/tmp/bin/authselect
chmod 0755 /tmp/bin/authselect
PATH=/tmp/bin:$PATH preun 0 && fail 'erased with the lines in place'
grep -q '^  Profile ID: custom/crm2fa$' /tmp/err \
  && grep -q 'authselect select local --force' /tmp/err || fail 'authselect not named'
say refused, naming the authselect profile and how to leave it
echo "# $line" >/etc/authselect/system-auth
echo "  #$line" >/etc/pam.d/password-auth
echo "$line" >/etc/pam.d/password-auth.rpmsave
echo "$line" >/etc/pam.d/common-auth.pam-old
preun 0 || fail 'refused for comments and backups'
say erased with comments and backups only
rm /etc/pam.d/system-auth /etc/pam.d/password-auth /tmp/bin/authselect
rpm -i --nodeps --force-debian /tmp/{name} 2>/dev/null || fail 'rpm -i'
module=/usr/lib64/security/pam_crm2fa.so
echo 'auth required pam_crm2fa.so' >>/etc/pam.d/sshd
rpm -e --nodeps crm2fa 2>/tmp/err && fail 'rpm -e erased it with the sshd line in place'
grep -qx '  /etc/pam.d/sshd' /tmp/err || fail 'rpm -e did not name the file'
rpm -q crm2fa >/dev/null && test -f $module || fail 'rpm -e removed the module'
sed -i '/pam_crm2fa/d' /etc/pam.d/sshd
rpm -e --nodeps crm2fa 2>/tmp/err || fail 'rpm -e refused with no line'
rpm -q crm2fa >/dev/null || test -e $module && fail 'rpm -e left the module'
say rpm -e refused while the sshd line was there, erased once it was out
"##
    );
    run_steps(
        &[&scriptlet, &rpm],
        &script,
        &[
            "erased with no line",
            "upgraded with the lines",
            "refused, naming the files",
            "refused, naming the authselect profile and how to leave it",
            "erased with comments and backups only",
            "rpm -e refused while the sshd line was there, erased once it was out",
        ],
    );
}

#[test]
fn the_rpm_enables_crm2fad_when_installed_or_upgraded_from_a_version_without_it() {
    let rpm = rpm();
    let query = |tag: &str| {
        run(Command::new("rpm")
            .args(["-qp", "--queryformat", tag])
            .arg(&rpm))
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pre = dir.path().join("pre");
    let post = dir.path().join("post");
    fs::write(&pre, query("%{PREIN}")).expect("write the scriptlet");
    fs::write(&post, query("%{POSTIN}")).expect("write the scriptlet");
    // rpm runs %pre and %post with 1 on a first installation, 2 on an
    // upgrade; the new files are in place between them. A stand-in
    // systemctl notes what it was asked.
    let script = r##"set -u
say() { echo "== $*"; }
fail() { echo "$*"; cat /tmp/calls 2>/dev/null; exit 1; }
mkdir -p /tmp/bin /run/systemd/system
printf '%s\n' '#!/bin/sh' 'echo "$*" >>/tmp/calls' >/tmp/bin/systemctl
printf '%s\n' '#!/bin/sh' 'exit 0' >/tmp/bin/systemd-tmpfiles
chmod 0755 /tmp/bin/systemctl /tmp/bin/systemd-tmpfiles
unit=/usr/lib/systemd/system/crm2fad.service
state=/var/lib/rpm-state/crm2fa
step() { # $1: 1 install, 2 upgrade; $2: the unit there before (old version has it)
  rm -f /tmp/calls $unit
  [ "$2" = yes ] && : >$unit
  PATH=/tmp/bin:$PATH sh /tmp/pre "$1" || fail "pre $1"
  : >$unit
  PATH=/tmp/bin:$PATH sh /tmp/post "$1" || fail "post $1"
  test ! -e $state || fail "the state directory is left"
}
step 1 no
grep -qx -- '--no-reload enable crm2fad.service' /tmp/calls && grep -qx 'start crm2fad.service' /tmp/calls \
  || fail 'a first installation did not enable and start it'
say a first installation enables and starts crm2fad
step 2 no
grep -qx -- '--no-reload enable crm2fad.service' /tmp/calls && grep -qx 'start crm2fad.service' /tmp/calls \
  || fail 'the upgrade that brings it did not enable and start it'
say the upgrade that brings crm2fad enables and starts it
step 2 yes
grep -q enable /tmp/calls && fail 'a later upgrade enabled it again'
grep -qx 'try-restart crm2fad.service' /tmp/calls || fail 'a later upgrade did not restart it'
say a later upgrade enables nothing and restarts crm2fad if running
"##;
    run_steps(
        &[&pre, &post],
        script,
        &[
            "a first installation enables and starts crm2fad",
            "the upgrade that brings crm2fad enables and starts it",
            "a later upgrade enables nothing and restarts crm2fad if running",
        ],
    );
}

#[test]
fn the_demo_logs_in_without_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = artifact_dir();
    let out = Command::new("bash")
        .arg(workspace_dir().join("scripts/demo.sh"))
        .env("DEMO_SANDBOX", dir.path().join("demo"))
        .env("DEMO_BUILD", "0")
        .env("CARGO_TARGET_DIR", target.parent().expect("target dir"))
        .env_remove("LD_PRELOAD")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run scripts/demo.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Login succeeded"),
        "{}",
        show_output(&out)
    );
    assert!(
        text.contains("otpauth://totp/"),
        "the enrolment is shown: {text}"
    );
}
