//! Asking the administrator: confirmations and codes, on the terminal
//! (hidden) or from one line of standard input.
use std::io::{self, BufRead, IsTerminal, Write};

use zeroize::Zeroizing;

use crate::error::CliError;

/// Is there a person at the keyboard?
pub(crate) fn interactive() -> bool {
    io::stdin().is_terminal()
}

/// Ask before a destructive action: on a terminal, ask (on standard
/// error, so `--json`'s output stays one document); otherwise require
/// `--yes` (`yes`).
pub(crate) fn confirm(what: &str, yes: bool) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !interactive() {
        return Err(CliError::NeedsYes { what: what.into() });
    }
    let mut err = io::stderr();
    let _ = write!(err, "{what}. Continue? [y/N] ");
    let _ = err.flush();
    let line = read_line("the answer")?;
    if matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(CliError::Cancelled)
    }
}

/// One line of standard input, without its line end.
fn read_line(what: &'static str) -> Result<Zeroizing<String>, CliError> {
    let mut line = Zeroizing::new(String::new());
    io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|source| CliError::Read {
            what,
            source_name: "standard input",
            source,
        })?;
    while line.ends_with(['\n', '\r']) {
        line.pop();
    }
    Ok(line)
}

/// A code the administrator did not put on the command line (where the
/// process list and shell history would keep it): typed at `prompt` with
/// echo off on a terminal, else one line of standard input.
pub(crate) fn read_code(prompt: &str) -> Result<Zeroizing<String>, CliError> {
    ask_code(prompt)?.ok_or(CliError::NoCode)
}

/// Like [`read_code`]; `None` when the answer is empty (just Enter, or
/// end of input).
pub(crate) fn ask_code(prompt: &str) -> Result<Option<Zeroizing<String>>, CliError> {
    let code = if interactive() {
        // Echo off before the prompt: whatever is typed once it shows is hidden.
        let typed = without_echo(|| {
            let mut err = io::stderr();
            let _ = write!(err, "{prompt}");
            let _ = err.flush();
            let typed = read_line("the code");
            let _ = writeln!(err);
            typed
        });
        typed?
    } else {
        read_line("the code")?
    };
    if code.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(code))
}

/// Run `f` with the terminal on standard input not echoing what is typed.
fn without_echo<T>(f: impl FnOnce() -> T) -> T {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = io::stdin();
    let Ok(saved) = tcgetattr(&stdin) else {
        return f();
    };
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    let out = f();
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    out
}
