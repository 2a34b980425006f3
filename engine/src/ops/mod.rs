//! Ops: shape checks and device dispatch in each `mod.rs`, the CPU reference
//! kernels beside them in `cpu.rs`. The tape ([`crate::Tape`]) is the public way to
//! call them; the parameter types live here.

pub(crate) mod batchnorm;
pub(crate) mod cast;
pub(crate) mod conv;
pub(crate) mod elementwise;
pub(crate) mod gpu;
pub mod knn;
pub(crate) mod linear;
pub(crate) mod loss;
pub(crate) mod pool;
pub(crate) mod real;
pub(crate) mod simd;

pub use batchnorm::{
    BatchStats, BesselCorrection, BnNorm, momentum_bn_update, update_running_stats,
};
pub use conv::{Conv2dParams, cudnn_algorithms};
pub use pool::PoolParams;

/// Runs `$body` with `$t` bound to the Rust float type of `$dtype` (f32 or f64),
/// or fails with a dtype error naming `$op`.
macro_rules! with_float {
    ($op:expr, $dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $t = f32;
                $body
            }
            $crate::DType::F64 => {
                type $t = f64;
                $body
            }
            other => Err($crate::Error::DType {
                op: $op,
                expected: "f32 or f64 (the CPU backend computes in these; cast 16-bit data first)"
                    .into(),
                got: other,
            }),
        }
    };
}
pub(crate) use with_float;
