//! The kernels crate's error type.

/// What can go wrong compiling, loading or launching kernels.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CUDA library or a usable device is missing.
    #[error("{0}")]
    Unavailable(String),
    /// NVRTC rejected a family's source.
    #[error("NVRTC failed to compile kernel family `{family}` for {arch}:\n{log}")]
    Compile {
        /// The kernel family.
        family: String,
        /// The target arch, e.g. `sm_90`.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// A capture broke a rule of CUDA graphs (a host copy or a wait during
    /// it, a buffer outliving it, a buffer freed during it).
    #[error("graph capture: {0}")]
    Capture(String),
    /// A CUDA driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(String),
    /// The arguments of a launch do not match the kernel's parameters.
    #[error("launch of `{kernel}`: {detail}")]
    Launch {
        /// The kernel.
        kernel: String,
        /// What was wrong.
        detail: String,
    },
    /// The emulator found misuse (a partial barrier, an inactive-lane shuffle,
    /// an out-of-bounds write) while running a kernel.
    #[error("emulated kernel `{kernel}`: {detail}")]
    Emulator {
        /// The kernel.
        kernel: String,
        /// What the emulator found.
        detail: String,
    },
    /// Reading or writing the kernel cache failed.
    #[error("kernel cache {path}: {source}")]
    Cache {
        /// The file or folder.
        path: std::path::PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
}

/// Shorthand for results with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Driver(e.to_string())
    }
}
