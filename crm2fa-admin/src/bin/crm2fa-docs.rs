//! Writes the documentation made from crm2fa-admin's command line: the man
//! page `crm2fa-admin(8)` with one page per command (`crm2fa-admin-enroll(8)`
//! …), and the bash, zsh and fish completions. Run at build time by `make`
//! (`crm2fa-docs OUTDIR`); not installed.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;

#[allow(dead_code, unreachable_pub)]
#[path = "../cli.rs"]
mod cli;

/// Where each file goes under OUTDIR.
const COMPLETIONS: [(clap_complete::Shell, &str); 3] = [
    (clap_complete::Shell::Bash, "completions/crm2fa-admin.bash"),
    (clap_complete::Shell::Zsh, "completions/_crm2fa-admin"),
    (clap_complete::Shell::Fish, "completions/crm2fa-admin.fish"),
];

fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, bytes)
}

/// The man pages: clap's rendering of the command and of each subcommand,
/// those of subcommands too (`crm2fa-admin-store-copy(8)` …): file name and
/// page. The main page also says the exit status and files, which the
/// command line cannot know about.
fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = cli::Cli::command()
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_subcommand(true)
        .long_about(
            "crm2fa-admin manages crm2fa, the second factor (TOTP app, backup, recovery codes) \
             that the PAM module pam_crm2fa asks for after the password. It enrols users \
             (printing a QR code), resets lost devices, regenerates backup codes, issues \
             recovery codes, unlocks, explains the policy and shows the audit log.",
        );
    cmd.build();
    let page = |cmd: clap::Command| -> std::io::Result<(String, Vec<u8>)> {
        let man = clap_mangen::Man::new(cmd)
            .section("8")
            .manual("crm2fa")
            .source(concat!("crm2fa ", env!("CARGO_PKG_VERSION")));
        let mut out = Vec::new();
        man.render(&mut out)?;
        Ok((man.get_filename(), out))
    };
    fn below(
        cmd: &clap::Command,
        page: &dyn Fn(clap::Command) -> std::io::Result<(String, Vec<u8>)>,
        pages: &mut Vec<(String, Vec<u8>)>,
    ) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages.push(page(sub.clone())?);
            below(sub, page, pages)?;
        }
        Ok(())
    }
    let mut pages = vec![];
    below(&cmd, &page, &mut pages)?;
    let (name, mut out) = page(cmd)?;
    out.extend_from_slice(
        br#".SH "EXIT STATUS"
0 success; 1 refused or failed (the reason on standard error); 2 usage error.
.SH FILES
.TP
\fI/etc/crm2fa/crm2fa.toml\fR
the configuration, see \fBcrm2fa.toml\fR(5); another with \fB\-\-config\fR or \fBCRM2FA_CONFIG\fR
.TP
\fI/etc/crm2fa/secret.key\fR
the host key that encrypts TOTP secrets at rest (0600)
.TP
\fI/var/lib/crm2fa/crm2fa.db\fR
the store (0600)
.SH "SEE ALSO"
\fBpam_crm2fa\fR(8), \fBcrm2fad\fR(8), \fBcrm2fa.toml\fR(5), \fBpam\fR(8)
"#,
    );
    pages.push((name, out));
    Ok(pages)
}

fn run(out: &Path) -> std::io::Result<()> {
    for (name, page) in man_pages()? {
        write(&out.join("man8").join(name), &page)?;
    }
    for (shell, file) in COMPLETIONS {
        write(&out.join(file), cli::completion_script(shell).as_bytes())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: crm2fa-docs OUTDIR");
        return ExitCode::from(2);
    };
    match run(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crm2fa-docs: {}: {e}", out.display());
            ExitCode::from(1)
        }
    }
}
