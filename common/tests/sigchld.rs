//! A caller that ignores SIGCHLD has its children reaped by the kernel:
//! the sending program's exit status must still be read (else every
//! message handed over reads as failed), and the caller's SIGCHLD is
//! ignored again afterwards. A test binary of its own: the setting is the
//! whole process's.
use std::path::Path;
use std::time::Duration;

use crm2fa_common::delivery::child::{run, Ended, Group, Job, Stdin};
use nix::sys::signal::{signal, SigHandler, Signal};

fn sh(script: &str) -> Ended {
    let sh = ["/usr/bin/sh", "/bin/sh"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("sh");
    run(&Job {
        program: sh,
        arg0: None,
        args: &["-c".as_ref(), script.as_ref()],
        input: b"message",
        stdin: Stdin::Socket,
        timeout: Duration::from_secs(20),
        group: Group::Own,
    })
    .expect("the program's end is read")
    .ended
}

/// Whether SIGCHLD is ignored, as the kernel says in /proc/self/status.
fn sigchld_ignored() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .unwrap()
        .trim();
    u64::from_str_radix(mask, 16).unwrap() & (1 << (libc::SIGCHLD - 1)) != 0
}

#[test]
fn the_exit_status_is_read_under_a_caller_that_ignores_sigchld() {
    // SAFETY: ignoring SIGCHLD installs no handler.
    unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) }.unwrap();
    assert!(sigchld_ignored());
    assert_eq!(sh("cat >/dev/null; exit 0"), Ended::Exited(0));
    assert_eq!(sh("cat >/dev/null; exit 3"), Ended::Exited(3));
    assert!(sigchld_ignored(), "the caller's SIGCHLD is put back");
}
