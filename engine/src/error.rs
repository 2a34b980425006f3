//! The engine's error type: every fallible public call returns [`Result`].

use crate::{DType, Device, Shape};

/// Everything that can go wrong in the engine's public API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operand shapes do not fit the op.
    #[error("{op}: {detail}")]
    Shape {
        /// The op that rejected its operands.
        op: &'static str,
        /// What was expected and what was given, with the shapes.
        detail: String,
    },
    /// An operand has a dtype the op does not accept.
    #[error("{op}: expected dtype {expected}, got {got}")]
    DType {
        /// The op that rejected its operand.
        op: &'static str,
        /// The accepted dtype(s), as text.
        expected: String,
        /// The dtype that was given.
        got: DType,
    },
    /// The operands live on different devices, or the op has no kernel for the device.
    #[error("{op}: not available on {device}")]
    Device {
        /// The op that was asked to run.
        op: &'static str,
        /// The device it was asked to run on.
        device: Device,
    },
    /// A buffer that must be updated in place is still shared by live tensors.
    #[error(
        "{what} is still referenced by {count} live tensor(s); drop the tape and its variables first"
    )]
    BufferInUse {
        /// Which buffer.
        what: &'static str,
        /// How many other references exist.
        count: usize,
    },
    /// A named parameter does not exist, or two stores do not line up.
    #[error("parameters: {0}")]
    Param(String),
    /// The GPU backend failed: a missing library or device, a kernel that
    /// failed to compile or launch, or a CUDA library call that failed.
    #[error("{0}")]
    Gpu(#[from] kernels::Error),
    /// Misuse of the autograd tape.
    #[error("tape: {0}")]
    Tape(String),
    /// A collective between data-parallel ranks failed: a rank failed or
    /// left, or did not join in time.
    #[error("data parallel: {0}")]
    Comm(String),
}

/// Shorthand for results with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds a shape error for `op`.
pub(crate) fn shape_err(op: &'static str, detail: impl Into<String>) -> Error {
    Error::Shape {
        op,
        detail: detail.into(),
    }
}

/// Fails with a shape error unless `a` and `b` are equal.
pub(crate) fn same_shape(op: &'static str, a: &Shape, b: &Shape) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(shape_err(op, format!("shapes differ: {a} vs {b}")))
    }
}
