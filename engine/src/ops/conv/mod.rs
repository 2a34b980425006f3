//! 2-D convolution, NHWC activations and KRSC weights, groups 1, no bias.

mod cpu;
mod cuda;
#[cfg(target_arch = "x86_64")]
mod direct;
mod winograd;

#[cfg(test)]
mod test_support;

use super::with_float;
use crate::error::{Result, shape_err};
use crate::{DType, Tensor};

/// Stride and zero padding of a convolution (the same along height and width).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Step between output positions, at least 1.
    pub stride: usize,
    /// Zeros added on each side of the input.
    pub padding: usize,
}

/// All the sizes of one convolution, checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvGeometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub k: usize,
    pub r: usize,
    pub s: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvGeometry {
    fn new(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<Self> {
        const OP: &str = "conv2d";
        let &[n, h, wd, c] = x.expect_rank(OP, 4)? else {
            unreachable!()
        };
        let &[k, r, s, wc] = w.expect_rank(OP, 4)? else {
            unreachable!()
        };
        if wc != c {
            return Err(shape_err(
                OP,
                format!(
                    "input {} (NHWC) has {c} channels but weight {} (KRSC) expects {wc}",
                    x.shape(),
                    w.shape()
                ),
            ));
        }
        if p.stride == 0 {
            return Err(shape_err(OP, "stride must be at least 1"));
        }
        if h + 2 * p.padding < r || wd + 2 * p.padding < s {
            return Err(shape_err(
                OP,
                format!(
                    "kernel {r}x{s} is larger than the padded input {}x{} (input {}, padding {})",
                    h + 2 * p.padding,
                    wd + 2 * p.padding,
                    x.shape(),
                    p.padding
                ),
            ));
        }
        Ok(ConvGeometry {
            n,
            h,
            w: wd,
            c,
            k,
            r,
            s,
            oh: (h + 2 * p.padding - r) / p.stride + 1,
            ow: (wd + 2 * p.padding - s) / p.stride + 1,
            stride: p.stride,
            padding: p.padding,
        })
    }

    /// Length of one im2col row: the receptive field of one output pixel.
    pub fn patch(&self) -> usize {
        self.r * self.s * self.c
    }

    /// True when the input pixels are already the im2col rows.
    pub fn is_pointwise(&self) -> bool {
        self.r == 1 && self.s == 1 && self.stride == 1 && self.padding == 0
    }
}

/// The cuDNN algorithms chosen on CUDA `device` for a convolution of input
/// `x` (NHWC) and weight `w` (KRSC) in `dtype` that has already run there:
/// forward, backward data, backward filter (`None` for a direction not yet
/// run). `None` on other devices or for a shape that has not run.
pub fn cudnn_algorithms(
    device: crate::Device,
    x: [usize; 4],
    w: [usize; 4],
    p: Conv2dParams,
    dtype: crate::DType,
) -> Result<Option<[Option<String>; 3]>> {
    if !matches!(device, crate::Device::Cuda(_)) {
        return Ok(None);
    }
    let gpu = crate::device::gpu(device)?;
    cuda::chosen_algorithms(device, &gpu, &x, &w, p, dtype)
}

/// `y = conv(x, w)`: x `[n,h,w,c]`, w `[k,r,s,c]`, y `[n,oh,ow,k]`.
pub(crate) fn forward(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<Tensor> {
    let g = ConvGeometry::new(x, w, p)?;
    let dt = x.expect_same_dtype("conv2d", w)?;
    if let Some(gpu) = x.gpu() {
        crate::ops::gpu::same_device("conv2d", &[x, w])?;
        return cuda::forward(gpu, x, w, &g, p);
    }
    let shape = [g.n, g.oh, g.ow, g.k];
    if dt == DType::F32 {
        return Tensor::from_vec(cpu::forward_f32(&g, x.as_slice()?, w.as_slice()?), shape);
    }
    with_float!("conv2d", dt, T => {
        Tensor::from_vec(cpu::forward::<T>(&g, x.as_slice()?, w.as_slice()?), shape)
    })
}

/// Gradients of [`forward`]: `(dx, dw)`, each computed only if wanted.
pub(crate) fn backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    p: Conv2dParams,
    want: (bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let g = ConvGeometry::new(x, w, p)?;
    let dt = x.expect_same_dtype("conv2d backward", w)?;
    x.expect_same_dtype("conv2d backward", dy)?;
    crate::error::same_shape(
        "conv2d backward",
        dy.shape(),
        &crate::Shape::new([g.n, g.oh, g.ow, g.k]),
    )?;
    if let Some(gpu) = x.gpu() {
        crate::ops::gpu::same_device("conv2d backward", &[x, w, dy])?;
        return cuda::backward(gpu, x, w, dy, &g, p, want);
    }
    if dt == DType::F32 {
        let grads = cpu::backward_f32(&g, x.as_slice()?, w.as_slice()?, dy.as_slice()?, want);
        return gradient_tensors(grads, x, w);
    }
    with_float!("conv2d backward", dt, T => {
        let grads = cpu::backward::<T>(&g, x.as_slice()?, w.as_slice()?, dy.as_slice()?, want);
        gradient_tensors(grads, x, w)
    })
}

/// `(dx, dw)` as tensors shaped like `x` and `w`.
fn gradient_tensors<T: crate::Element>(
    (dx, dw): (Option<Vec<T>>, Option<Vec<T>>),
    x: &Tensor,
    w: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dx = dx
        .map(|v| Tensor::from_vec(v, x.shape().clone()))
        .transpose()?;
    let dw = dw
        .map(|v| Tensor::from_vec(v, w.shape().clone()))
        .transpose()?;
    Ok((dx, dw))
}
