//! What keeps a GPU busy between captured steps: a second stream that
//! stages the next step's inputs while the compute stream runs this one,
//! input slots a captured step picks from by a device cell, and results read
//! from page-locked host memory a step later, so the host never waits for
//! the step it has just queued. On the emulator, whose work runs as it is
//! queued, the same calls give the same results in the same order.

use crate::ops::gpu::{BLOCK, same_device};
use crate::{DType, Device, Error, Result, Tensor};
use kernels::{Arg, Gpu, LaunchConfig};
use std::sync::Arc;

/// A point in a device's queue (see [`kernels::Mark`]).
pub struct Mark(kernels::Mark);

fn gpu_of(device: Device, op: &'static str) -> Result<Arc<Gpu>> {
    if device == Device::Cpu {
        return Err(Error::Device { op, device });
    }
    crate::device::gpu(device)
}

/// A mark after the work queued so far on `device`.
pub fn mark(device: Device) -> Result<Mark> {
    Ok(Mark(gpu_of(device, "stream mark")?.mark()?))
}

/// Makes `device`'s later work wait until it reaches `mark`.
pub fn wait_for(device: Device, mark: &Mark) -> Result<()> {
    Ok(gpu_of(device, "stream wait")?.wait_for(&mark.0)?)
}

/// Runs `f` with `device`'s work on its copy stream, after `after`; returns
/// `f`'s result and a mark after its work (see [`kernels::Gpu::on_copy_stream`]).
pub fn on_copy_stream<R, E: From<Error>>(
    device: Device,
    after: &Mark,
    f: impl FnOnce() -> std::result::Result<R, E>,
) -> std::result::Result<(R, Mark), E> {
    let gpu = gpu_of(device, "copy stream")?;
    let (r, mark) = gpu.on_copy_stream(&after.0, f).map_err(Error::from)?;
    Ok((r?, Mark(mark)))
}

/// `dst ← [src0, src1][slot]`, where `slot` is a device cell holding 0.0 or
/// 1.0: a captured step reads the input buffer the cell names. One launch;
/// all three tensors alike in shape and 16- or 32-bit dtype.
pub fn copy_selected(dst: &Tensor, (src0, src1): (&Tensor, &Tensor), slot: &Tensor) -> Result<()> {
    same_device("copy_selected", &[dst, src0, src1, slot])?;
    for src in [src0, src1] {
        if src.shape() != dst.shape() || src.dtype() != dst.dtype() {
            return Err(Error::Shape {
                op: "copy_selected",
                detail: format!(
                    "{} {} into {} {}",
                    src.shape(),
                    src.dtype(),
                    dst.shape(),
                    dst.dtype()
                ),
            });
        }
    }
    slot.expect_dtype("copy_selected (slot)", &[DType::F32])?;
    dst.expect_dtype("copy_selected", &[DType::F32, DType::BF16, DType::F16])?;
    let g = dst.gpu().ok_or(Error::Device {
        op: "copy_selected",
        device: Device::Cpu,
    })?;
    let words = dst.numel() * dst.dtype().size_in_bytes() / 2;
    g.gpu.launch(
        "copy_selected_u16",
        LaunchConfig::for_elements(words, BLOCK),
        &[
            dst.arg(),
            src0.arg(),
            src1.arg(),
            slot.arg(),
            Arg::I64(words as i64),
        ],
    )?;
    Ok(())
}

/// Copies `src` into `dst` from element `at`, on the device (same dtype and
/// GPU): how a captured step gathers its results into one buffer. Fails
/// while other references to `dst`'s storage are alive.
pub fn copy_at(dst: &mut Tensor, at: usize, src: &Tensor) -> Result<()> {
    let size = dst.dtype().size_in_bytes();
    let (dst_numel, dst_dtype) = (dst.numel(), dst.dtype());
    let fits =
        src.dtype() == dst_dtype && src.device() == dst.device() && at + src.numel() <= dst_numel;
    let from = src
        .gpu_range()
        .filter(|_| fits)
        .ok_or_else(|| Error::Shape {
            op: "copy_at",
            detail: format!(
                "{} {} on {} at element {at} of {dst_numel} {dst_dtype} on {}",
                src.shape(),
                src.dtype(),
                src.device(),
                dst.device()
            ),
        })?;
    let offset = dst.gpu_range().map_or(0, |r| r.1);
    let Some(to) = dst.gpu_mut()? else {
        return Err(Error::Device {
            op: "copy_at (host destination)",
            device: Device::Cpu,
        });
    };
    to.gpu
        .copy(from.0, from.1, &to.buf, offset + at * size, from.2)?;
    Ok(())
}

/// A small f32 device tensor's values, copied into page-locked host memory
/// after the work queued so far and read when wanted, not when queued.
pub struct Readback {
    gpu: Arc<Gpu>,
    host: kernels::Readback,
    len: usize,
}

impl Readback {
    /// Room for `len` f32 values of a tensor on `device`.
    pub fn new(device: Device, len: usize) -> Result<Readback> {
        let gpu = gpu_of(device, "readback")?;
        let host = gpu.readback(4 * len)?;
        Ok(Readback { gpu, host, len })
    }

    /// Queues the copy of `values` (f32, `len` of them), without waiting.
    pub fn queue(&self, values: &Tensor) -> Result<()> {
        values.expect_dtype("readback", &[DType::F32])?;
        let range = values.gpu_range().filter(|_| values.numel() == self.len);
        let Some((buf, offset, _)) = range else {
            return Err(Error::Shape {
                op: "readback",
                detail: format!(
                    "{} values on {} for room of {}",
                    values.numel(),
                    values.device(),
                    self.len
                ),
            });
        };
        Ok(self.gpu.queue_read(buf, offset, &self.host)?)
    }

    /// Waits for the last queued copy and returns its values.
    pub fn wait(&self) -> Result<Vec<f32>> {
        let bytes = self.host.wait()?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}
