//! Max and global average pooling on a GPU (`kernels/cuda/pool.cu`).

use super::PoolGeometry;
use crate::error::{Result, shape_err};
use crate::ops::gpu::{BLOCK, kernel_for, same_device};
use crate::tensor::GpuBuffer;
use crate::{Shape, Tensor};
use kernels::{Arg, LaunchConfig};

/// Channels and pixel slices of a global-average-pool block (`AVG_CHANNELS`
/// and `AVG_SLICES` in the kernel).
const AVG_CHANNELS: usize = 32;
const AVG_SLICES: u32 = 8;

/// Tiles of the max-pool backward kernel (`MAX_TILE_H`, `MAX_TILE_W` and
/// its 32 × `MAX_ROWS` threads).
const TILE_H: usize = 8;
const TILE_W: usize = 16;
const TILE_ROWS: u32 = 8;

/// The geometry arguments of the max-pool kernels, as ints: they index in 32
/// bits, so pixel counts and one image's elements must fit (with room for
/// the last block's overhang), and channel groups go in grid y (at most
/// 65535 blocks).
fn geometry_args(op: &'static str, g: &PoolGeometry) -> Result<[Arg<'static>; 9]> {
    const LIMIT: usize = i32::MAX as usize - 1024;
    let counts = [
        g.n * g.oh * g.ow,
        g.n * g.h.div_ceil(TILE_H) * g.w.div_ceil(TILE_W),
        g.h * g.w * g.c,
        g.oh * g.ow * g.c,
        g.p.kernel + g.p.stride + g.p.padding,
    ];
    if counts.iter().any(|&v| v > LIMIT) || g.c.div_ceil(32) > 65535 {
        return Err(shape_err(
            op,
            format!(
                "input {}×{}×{}×{} with {:?} exceeds the kernel's 32-bit indexing",
                g.n, g.h, g.w, g.c, g.p
            ),
        ));
    }
    Ok([
        g.n,
        g.h,
        g.w,
        g.c,
        g.oh,
        g.ow,
        g.p.kernel,
        g.p.stride,
        g.p.padding,
    ]
    .map(|v| Arg::I32(v as i32)))
}

pub(super) fn max_forward(gpu: &GpuBuffer, x: &Tensor, g: &PoolGeometry) -> Result<Tensor> {
    const OP: &str = "max_pool2d";
    let kernel = kernel_for!(OP, x.dtype(), "max_pool_forward")?;
    let y = Tensor::gpu_empty(gpu, [g.n, g.oh, g.ow, g.c], x.dtype())?;
    let geometry = geometry_args(OP, g)?;
    // Threads: x over channels (a warp reads consecutive ones), y over
    // output pixels. Blocks: x over pixel groups, y over channel groups.
    let channels = g.c.clamp(1, 32) as u32;
    let rows = BLOCK / channels;
    let cfg = LaunchConfig {
        grid: (
            (g.n * g.oh * g.ow).div_ceil(rows as usize).max(1) as u32,
            g.c.div_ceil(channels as usize).max(1) as u32,
            1,
        ),
        block: (channels, rows, 1),
        shared_bytes: 0,
    };
    let mut args = vec![x.arg(), y.arg()];
    args.extend(geometry);
    gpu.gpu.launch(kernel, cfg, &args)?;
    Ok(y)
}

/// Recomputes each window's maximum from the saved input `x`.
pub(super) fn max_backward(
    gpu: &GpuBuffer,
    x: &Tensor,
    dy: &Tensor,
    g: &PoolGeometry,
) -> Result<Tensor> {
    const OP: &str = "max_pool2d backward";
    same_device(OP, &[x, dy])?;
    if dy.dims() != [g.n, g.oh, g.ow, g.c] {
        return Err(shape_err(
            OP,
            format!(
                "gradient {} does not match the forward output [{}, {}, {}, {}]",
                dy.shape(),
                g.n,
                g.oh,
                g.ow,
                g.c
            ),
        ));
    }
    let kernel = kernel_for!(OP, x.expect_same_dtype(OP, dy)?, "max_pool_backward")?;
    let dx = Tensor::gpu_empty(gpu, x.shape().clone(), x.dtype())?;
    let geometry = geometry_args(OP, g)?;
    let tiles = g.n * g.h.div_ceil(TILE_H) * g.w.div_ceil(TILE_W);
    if tiles == 0 || g.c == 0 {
        return Ok(dx);
    }
    // One block per tile of input pixels and group of 32 channels.
    let cfg = LaunchConfig {
        grid: (tiles as u32, g.c.div_ceil(32) as u32, 1),
        block: (32, TILE_ROWS, 1),
        shared_bytes: 0,
    };
    // The batch size is implied by the grid.
    let mut args = vec![x.arg(), dy.arg(), dx.arg()];
    args.extend_from_slice(&geometry[1..]);
    gpu.gpu.launch(kernel, cfg, &args)?;
    Ok(dx)
}

pub(super) fn avg_forward(
    gpu: &GpuBuffer,
    x: &Tensor,
    n: usize,
    pixels: usize,
    c: usize,
) -> Result<Tensor> {
    const OP: &str = "global_avg_pool";
    let kernel = kernel_for!(OP, x.dtype(), "global_avg_pool_forward")?;
    let y = Tensor::gpu_empty(gpu, [n, c], x.dtype())?;
    // One block per image and group of 32 channels.
    let blocks = n * c.div_ceil(AVG_CHANNELS);
    if blocks == 0 {
        return Ok(y);
    }
    let grid = u32::try_from(blocks)
        .map_err(|_| shape_err(OP, format!("{blocks} blocks exceed a launch")))?;
    let cfg = LaunchConfig {
        grid: (grid, 1, 1),
        block: (AVG_CHANNELS as u32, AVG_SLICES, 1),
        shared_bytes: 0,
    };
    gpu.gpu.launch(
        kernel,
        cfg,
        &[
            x.arg(),
            y.arg(),
            Arg::I64(pixels as i64),
            Arg::I64(c as i64),
        ],
    )?;
    Ok(y)
}

pub(super) fn avg_backward(
    gpu: &GpuBuffer,
    dy: &Tensor,
    n: usize,
    pixels: usize,
    c: usize,
    input: &Shape,
) -> Result<Tensor> {
    let kernel = kernel_for!(
        "global_avg_pool backward",
        dy.dtype(),
        "global_avg_pool_backward"
    )?;
    let dx = Tensor::gpu_empty(gpu, input.clone(), dy.dtype())?;
    // Rounded to f32 once, as the CPU backend rounds it.
    let scale = (1.0 / pixels as f64) as f32;
    gpu.gpu.launch(
        kernel,
        LaunchConfig::for_elements(dx.numel(), BLOCK),
        &[
            dy.arg(),
            dx.arg(),
            Arg::I64(n as i64),
            Arg::I64(pixels as i64),
            Arg::I64(c as i64),
            Arg::F32(scale),
        ],
    )?;
    Ok(dx)
}
