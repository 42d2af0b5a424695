//! One error type for the whole crate: each variant says what failed and where.
use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    ConfigSyntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    ConfigInvalid { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Permissions { path: PathBuf, message: String },
    #[error("key file {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("store {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error("store {path} does not exist; run `crm2fa-admin init`")]
    StoreMissing { path: PathBuf },
    #[error("secret of user {user} cannot be decrypted with the host key (wrong key file or tampered store)")]
    Decrypt { user: String },
    #[error("user {0} is not enrolled")]
    NotEnrolled(String),
    #[error("{0}")]
    Refused(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
