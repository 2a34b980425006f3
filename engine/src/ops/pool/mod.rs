//! Max pooling and global average pooling over NHWC tensors.

mod cpu;
mod cuda;

use super::with_float;
use crate::error::{Result, same_shape, shape_err};
use crate::{Shape, Tensor};

/// Window, stride and padding of a max pool (square windows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolParams {
    /// Window height and width.
    pub kernel: usize,
    /// Step between windows, at least 1.
    pub stride: usize,
    /// Implicit −∞ border on each side; at most half the window.
    pub padding: usize,
}

impl PoolParams {
    /// ResNet's stem pool: 3×3, stride 2, padding 1.
    pub const RESNET_STEM: PoolParams = PoolParams {
        kernel: 3,
        stride: 2,
        padding: 1,
    };
}

#[derive(Clone, Copy)]
pub(crate) struct PoolGeometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub oh: usize,
    pub ow: usize,
    pub p: PoolParams,
}

impl PoolGeometry {
    fn new(x: &Tensor, p: PoolParams) -> Result<Self> {
        const OP: &str = "max_pool2d";
        let &[n, h, w, c] = x.expect_rank(OP, 4)? else {
            unreachable!()
        };
        if p.kernel == 0 || p.stride == 0 || 2 * p.padding > p.kernel {
            return Err(shape_err(
                OP,
                format!("invalid window {p:?}: kernel and stride ≥ 1, padding ≤ kernel/2"),
            ));
        }
        if h + 2 * p.padding < p.kernel || w + 2 * p.padding < p.kernel {
            return Err(shape_err(
                OP,
                format!("window {} exceeds padded input {}", p.kernel, x.shape()),
            ));
        }
        Ok(PoolGeometry {
            n,
            h,
            w,
            c,
            oh: (h + 2 * p.padding - p.kernel) / p.stride + 1,
            ow: (w + 2 * p.padding - p.kernel) / p.stride + 1,
            p,
        })
    }
}

/// What max-pool backward needs: on the CPU, the flat input index of each
/// output's maximum; on a GPU, the input itself and the window (the backward
/// kernel finds each window's maximum again instead of storing indices).
#[derive(Debug)]
pub(crate) enum MaxSaved {
    Indices(Vec<u32>),
    Input { x: Tensor, params: PoolParams },
}

/// Max pool (the first maximum of each window wins ties).
pub(crate) fn max_forward(x: &Tensor, p: PoolParams) -> Result<(Tensor, MaxSaved)> {
    let g = PoolGeometry::new(x, p)?;
    if let Some(gpu) = x.gpu() {
        let y = cuda::max_forward(gpu, x, &g)?;
        return Ok((
            y,
            MaxSaved::Input {
                x: x.clone(),
                params: p,
            },
        ));
    }
    if x.numel() > u32::MAX as usize {
        return Err(shape_err("max_pool2d", "input exceeds 2³² elements"));
    }
    with_float!("max_pool2d", x.dtype(), T => {
        let (y, argmax) = cpu::max_forward::<T>(&g, x.as_slice()?);
        Ok((Tensor::from_vec(y, [g.n, g.oh, g.ow, g.c])?, MaxSaved::Indices(argmax)))
    })
}

/// Routes each output gradient to its window's maximum.
pub(crate) fn max_backward(dy: &Tensor, saved: &MaxSaved, input: &Shape) -> Result<Tensor> {
    let argmax = match saved {
        MaxSaved::Indices(argmax) => argmax,
        MaxSaved::Input { x, params } => {
            let gpu = x.gpu().expect("a GPU forward saves a GPU input");
            return cuda::max_backward(gpu, x, dy, &PoolGeometry::new(x, *params)?);
        }
    };
    if dy.numel() != argmax.len() {
        return Err(shape_err(
            "max_pool2d backward",
            "gradient does not match the forward output",
        ));
    }
    with_float!("max_pool2d backward", dy.dtype(), T => {
        Tensor::from_vec(cpu::max_backward::<T>(dy.as_slice()?, argmax, input.numel()), input.clone())
    })
}

/// `[n,h,w,c] → [n,c]`, the mean over each image's pixels.
pub(crate) fn avg_forward(x: &Tensor) -> Result<Tensor> {
    let &[n, h, w, c] = x.expect_rank("global_avg_pool", 4)? else {
        unreachable!()
    };
    if let Some(gpu) = x.gpu() {
        return cuda::avg_forward(gpu, x, n, h * w, c);
    }
    with_float!("global_avg_pool", x.dtype(), T => {
        Tensor::from_vec(cpu::avg_forward::<T>(x.as_slice()?, n, h * w, c), [n, c])
    })
}

/// Spreads each `[n,c]` gradient evenly over the pixels of `input`.
pub(crate) fn avg_backward(dy: &Tensor, input: &Shape) -> Result<Tensor> {
    let d = input.dims();
    same_shape(
        "global_avg_pool backward",
        dy.shape(),
        &Shape::new([d[0], d[3]]),
    )?;
    if let Some(gpu) = dy.gpu() {
        return cuda::avg_backward(gpu, dy, d[0], d[1] * d[2], d[3], input);
    }
    with_float!("global_avg_pool backward", dy.dtype(), T => {
        Tensor::from_vec(cpu::avg_backward::<T>(dy.as_slice()?, d[1] * d[2], d[3]), input.clone())
    })
}
