//! crm2fa-admin: enrol users, reset lost devices, manage backup and recovery
//! codes, unlock, explain policy and read the audit log.
//!
//! `main` only parses, runs the command, prints its report and maps the
//! outcome to the exit status: 0 success, 1 refused or failed (the reason
//! on stderr), 2 usage (from the parser).
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;
mod error;
mod output;
mod terminal;

use commands::Status;
use error::CliError;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let out = output::Output { json: cli.json };
    let done = match commands::run(cli, out) {
        Ok(done) => done,
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            return ExitCode::SUCCESS
        }
        Err(e) => return failed(&e),
    };
    // A reader that went away (`| head -1`) is not worth a word; the
    // command's own outcome still decides the exit status.
    match out.show(done.report.as_ref()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            return failed(&CliError::Output(e));
        }
        _ => {}
    }
    match done.status {
        Status::Success => ExitCode::SUCCESS,
        Status::Unsuccessful => ExitCode::from(1),
        Status::Failed(e) => failed(&e),
    }
}

/// Say why on stderr; exit 1 (2 for arguments that do not fit together).
fn failed(e: &CliError) -> ExitCode {
    let _ = writeln!(io::stderr(), "crm2fa-admin: {e}");
    match e {
        CliError::Usage(_) => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}
