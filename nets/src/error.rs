//! The nets crate's error type.

use std::path::PathBuf;

/// What can go wrong building, running, saving or loading a network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An engine op or parameter call failed.
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A weights file is not valid safetensors.
    #[error("{path}: not a valid safetensors file: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        detail: String,
    },
    /// A weights file does not match the network: one line per problem.
    #[error("{path} does not match the network:\n  {}", .problems.join("\n  "))]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Missing, unexpected, mis-shaped or mis-typed tensors.
        problems: Vec<String>,
    },
    /// An invalid configuration.
    #[error("config: {0}")]
    Config(String),
}

/// Shorthand for results with the nets [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
