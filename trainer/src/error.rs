//! The trainer's error type and the exit codes it maps to.

use std::path::PathBuf;

/// Everything the trainer reports to the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid flags or configuration (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// A dataset file is missing, truncated or malformed.
    #[error("{path}: {detail}")]
    Data {
        /// The offending file or folder.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A network, weights or checkpoint problem.
    #[error(transparent)]
    Nets(#[from] nets::Error),
    /// An engine op failed.
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// Training produced a non-finite loss.
    #[error("{0}")]
    Diverged(String),
    /// `trainer info --check` found a failing check (exit code 1).
    #[error("{0}")]
    Check(String),
    /// Another trainer holds the run folder's lock.
    #[error("{0}")]
    Locked(String),
    /// A data-parallel rank failed, and the job with it.
    #[error("{0}")]
    Ranks(String),
    /// SIGINT or SIGTERM arrived; the run was checkpointed (exit code 130).
    #[error("interrupted: {0}")]
    Interrupted(String),
}

impl Error {
    /// A data error for `path`.
    pub fn data(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            detail: detail.into(),
        }
    }

    /// An I/O error for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The process exit code: 2 for usage errors, 130 after an interrupt, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Interrupted(_) => 130,
            _ => 1,
        }
    }
}

/// Shorthand for results with the trainer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
