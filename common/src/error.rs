//! One error type for the whole crate. Each variant says what failed, on
//! which file or user, and, where there is one, what to do about it.
use std::path::PathBuf;

/// This crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// The error a backend reports, kept as the source of [`Error::Store`].
pub type StoreSource = Box<dyn std::error::Error + Send + Sync>;

/// What an administrative action was refused for a protected user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtectedAction {
    /// `reset`: removing every factor.
    Reset,
    /// `disable`: turning 2FA off.
    Disable,
}

/// Everything that can go wrong in crm2fa.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read, written or created.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file does not exist.
    #[error("{path} does not exist; run `crm2fa-admin init` first")]
    ConfigMissing {
        /// The configuration file looked for.
        path: PathBuf,
    },
    /// A file to import holds something crm2fa cannot honour, or is not in
    /// the format expected.
    #[error("{}:{line}: {message}", path.display())]
    Import {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong there, and what to do.
        message: String,
    },
    /// The configuration is not valid TOML or names an unknown key.
    #[error("{path}:{line}:{column}: {message}")]
    ConfigSyntax {
        /// The configuration file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What is wrong there.
        message: String,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("{location}: {message}")]
    ConfigInvalid {
        /// The file, with `:LINE` when the key was found.
        location: String,
        /// `[section] key: what is wrong`.
        message: String,
    },
    /// A file that holds trust (config, key, store) is not root's, or is
    /// open to other users, or is not a regular file.
    #[error("{path}: {problem}; fix: {fix}")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// The command that fixes it.
        fix: String,
    },
    /// The key file exists but does not hold a key.
    #[error("key file {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        message: String,
    },
    /// The store does not exist.
    #[error("store {path} does not exist; run `crm2fa-admin init`")]
    StoreMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The store failed: it could not be opened, read or written.
    #[error("store {location}: {source}")]
    Store {
        /// The store's path or address.
        location: String,
        /// The backend's error.
        #[source]
        source: StoreSource,
    },
    /// The store's schema is newer than this build understands.
    #[error("store {location}: schema version {found} is newer than this crm2fa understands ({supported}); upgrade crm2fa")]
    StoreSchema {
        /// The store's path or address.
        location: String,
        /// The version found in the store.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A concurrent writer changed what a transaction read; it is run again.
    #[error("store {location}: a concurrent change kept this update from applying")]
    Conflict {
        /// The store's path or address.
        location: String,
    },
    /// The user's factors changed while the command ran (another
    /// administrator or host); nothing was written.
    #[error("the factors of {user} changed while this ran; nothing was written, run it again")]
    Changed {
        /// The user.
        user: String,
    },
    /// A sealed secret does not open with the host key.
    #[error("the secret of {user} does not open with the host key {}: the key file is not the one that sealed it (restore that one from backup, or re-enrol the user), or the store was tampered with", key_file.display())]
    Decrypt {
        /// Whose secret.
        user: String,
        /// The key file that was tried.
        key_file: PathBuf,
    },
    /// The user's account or groups could not be looked up.
    #[error("cannot look up the account or groups of {user}: {source}")]
    Groups {
        /// The user.
        user: String,
        /// What the lookup said.
        #[source]
        source: nix::Error,
    },
    /// The user has no account on this host.
    #[error("no such user: {user}")]
    NoSuchAccount {
        /// The name looked up.
        user: String,
    },
    /// The store has no record of the user.
    #[error("{user} is not known to crm2fa")]
    UnknownUser {
        /// The user.
        user: String,
    },
    /// The user has no factor for what was asked.
    #[error("user {user} is not enrolled")]
    NotEnrolled {
        /// The user.
        user: String,
    },
    /// A new enrolment would replace an existing factor, and replacing was
    /// not allowed (an enrolment during a login).
    #[error("{user} is already enrolled")]
    AlreadyEnrolled {
        /// The user.
        user: String,
    },
    /// `confirm` for a user whose enrolment is not pending.
    #[error("{user} has no pending enrolment (state: {state}); nothing to confirm")]
    NotPending {
        /// The user.
        user: String,
        /// The state the user is in.
        state: &'static str,
    },
    /// Backup codes for a user without an active enrolment.
    #[error("{user} has no active enrolment; enrol them first")]
    NotActive {
        /// The user.
        user: String,
    },
    /// The code given to `confirm` or `enroll --code` is wrong or used.
    #[error("invalid verification code for {user} (or the code was already used); {consequence}")]
    InvalidCode {
        /// The user.
        user: String,
        /// What this means for the enrolment.
        consequence: String,
    },
    /// A protected user's 2FA can be replaced, never removed.
    #[error("{}", protected_message(user, *action))]
    Protected {
        /// The user.
        user: String,
        /// What was refused.
        action: ProtectedAction,
    },
    /// The policy requires 2FA of the user, and no override was given.
    #[error(
        "the policy requires 2FA of {user} ({reason}); pass --override-policy to disable it anyway"
    )]
    PolicyRequires {
        /// The user.
        user: String,
        /// Why the policy requires it.
        reason: String,
    },
    /// An email address or phone number that cannot be used.
    #[error("{value:?} {problem}")]
    InvalidContact {
        /// What was given.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A code or notice could not be sent.
    #[error("could not send by {channel}: {reason}")]
    Delivery {
        /// `email` or `sms`.
        channel: &'static str,
        /// Why, as the sending program said.
        reason: String,
    },
    /// A channel the user cannot be reached on.
    #[error("{user} cannot get codes by {channel}: {why}")]
    ChannelUnavailable {
        /// The user.
        user: String,
        /// `email` or `sms`.
        channel: &'static str,
        /// What is missing.
        why: String,
    },
}

fn protected_message(user: &str, action: ProtectedAction) -> String {
    match action {
        ProtectedAction::Reset => format!(
            "{user} is a protected user: their 2FA can be replaced, never removed; \
             give them a new device with `crm2fa-admin enroll {user}`"
        ),
        ProtectedAction::Disable => {
            format!("{user} is a protected user: their 2FA can never be disabled")
        }
    }
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`Error::Store`] at `location` from a backend error.
    pub fn store(location: impl Into<String>, source: impl Into<StoreSource>) -> Self {
        Error::Store {
            location: location.into(),
            source: source.into(),
        }
    }

    /// This process or the PostgreSQL server ran out of file descriptors,
    /// memory or connections, as the error or its causes say
    /// ([`crate::store::out_of_resources`]).
    pub fn out_of_resources(&self) -> bool {
        match self {
            Error::Io { source, .. } => crate::store::out_of_resources(source),
            Error::Store { source, .. } => crate::store::out_of_resources(source.as_ref()),
            _ => false,
        }
    }

    /// The command that fixes this error, when it has one.
    pub fn fix(&self) -> Option<&str> {
        match self {
            Error::Permissions { fix, .. } => Some(fix),
            _ => None,
        }
    }

    /// The error without its fix: what is wrong, for a report that shows
    /// the fix on a line of its own.
    pub fn problem(&self) -> String {
        match self {
            Error::Permissions { path, problem, .. } => format!("{}: {problem}", path.display()),
            e => e.to_string(),
        }
    }
}
