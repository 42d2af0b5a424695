//! What can stop a command, beyond crm2fa's own errors.
use std::path::PathBuf;

use crm2fa_common::Error;

/// Why a command did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// crm2fa refused or failed.
    #[error(transparent)]
    Crm2fa(#[from] Error),
    /// A destructive command without a terminal to ask on, and no `--yes`.
    #[error("{what}: this is destructive; pass --yes to do it without a terminal")]
    NeedsYes {
        /// What it would do.
        what: String,
    },
    /// The administrator said no.
    #[error("cancelled; nothing was changed")]
    Cancelled,
    /// The terminal or standard input could not be read.
    #[error("cannot read {what} from {source_name}: {source}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// The terminal or standard input.
        source_name: &'static str,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// No code on the command line, and none typed or piped in.
    #[error(
        "no code given: pass it as an argument, type it when asked, or give it on standard input"
    )]
    NoCode,
    /// `--output` names a file that exists.
    #[error("{} already exists; remove it or choose another file; nothing was changed", path.display())]
    PageExists {
        /// The file.
        path: PathBuf,
    },
    /// `--output` cannot be created.
    #[error("{source}; nothing was changed")]
    PageUnusable {
        /// Why.
        #[source]
        source: Error,
    },
    /// Arguments that do not fit together (exit 2, like clap's own).
    #[error("{0}")]
    Usage(String),
    /// Standard output could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
    /// The printable page could not be written after the new set was made.
    #[error("cannot write {}: {source}; the new codes are shown above, copy them by hand", path.display())]
    PageWrite {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}
