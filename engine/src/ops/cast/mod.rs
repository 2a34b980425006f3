//! Casts between float types, rounding to nearest, ties to even (through `half`);
//! f16 overflows to ±∞. The CPU backend emulates 16-bit storage this way.

mod cuda;

use crate::error::{Error, Result};
use crate::{DType, Tensor};
use half::{bf16, f16};

pub(crate) fn cast(x: &Tensor, to: DType) -> Result<Tensor> {
    if x.dtype() == to {
        return Ok(x.clone());
    }
    if let Some(g) = x.gpu() {
        return cuda::cast(g, x, to);
    }
    let bad = |got| Error::DType {
        op: "cast",
        expected: "float to float (f32, f64, f16, bf16)".into(),
        got,
    };
    // Widening to f64 is exact; from there each target is rounded once.
    let wide = x.to_f64_vec().map_err(|_| bad(x.dtype()))?;
    let shape = x.shape().clone();
    match to {
        DType::F64 => Tensor::from_vec(wide, shape),
        DType::F32 => Tensor::from_vec(wide.iter().map(|&v| v as f32).collect::<Vec<_>>(), shape),
        DType::F16 => Tensor::from_vec(
            wide.iter()
                .map(|&v| f16::from_f32(round_to_odd_f32(v)))
                .collect::<Vec<_>>(),
            shape,
        ),
        DType::BF16 => Tensor::from_vec(
            wide.iter()
                .map(|&v| bf16::from_f32(round_to_odd_f32(v)))
                .collect::<Vec<_>>(),
            shape,
        ),
        DType::U8 | DType::I64 => Err(bad(to)),
    }
}

/// f64 → f32 rounding to odd: truncate, then set the last bit if anything was
/// lost. A second rounding to nearest-even into a format at least two bits
/// narrower (f16, bf16) then equals rounding the f64 directly, which plain
/// round-to-nearest f64 → f32 → 16-bit does not (it can land on a false tie).
fn round_to_odd_f32(v: f64) -> f32 {
    let nearest = v as f32;
    if !nearest.is_finite() || nearest as f64 == v {
        return nearest;
    }
    let toward_zero = if (nearest as f64).abs() > v.abs() {
        f32::from_bits(nearest.to_bits() - 1)
    } else {
        nearest
    };
    f32::from_bits(toward_zero.to_bits() | 1)
}
