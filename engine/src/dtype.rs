//! Element types.

use half::{bf16, f16};
use std::fmt;

/// The element type of a tensor.
///
/// The CPU reference backend computes in [`DType::F32`] (and [`DType::F64`] for
/// gradient checks); the 16-bit types are storage formats reached through casts.
/// [`DType::U8`] holds images and [`DType::I64`] holds class labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary64, used by the reference backend's gradient checks.
    F64,
    /// IEEE binary16.
    F16,
    /// bfloat16: binary32's exponent with a 7-bit mantissa.
    BF16,
    /// Unsigned bytes (image pixels).
    U8,
    /// Signed 64-bit integers (class labels).
    I64,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        !matches!(self, DType::U8 | DType::I64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U8 => "u8",
            DType::I64 => "i64",
        })
    }
}

/// A Rust type that can be a tensor element.
pub trait Element:
    Copy + Send + Sync + fmt::Debug + 'static + crate::tensor::sealed::Stored
{
    /// The matching [`DType`].
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for f64 {
    const DTYPE: DType = DType::F64;
}
impl Element for f16 {
    const DTYPE: DType = DType::F16;
}
impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
}
impl Element for u8 {
    const DTYPE: DType = DType::U8;
}
impl Element for i64 {
    const DTYPE: DType = DType::I64;
}
