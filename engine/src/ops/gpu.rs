//! Helpers shared by the GPU halves (`cuda.rs`) of the ops. The same code
//! drives a CUDA GPU and the SIMT emulator ([`crate::Device::Emulator`]).

use crate::error::{Error, Result};
use crate::tensor::GpuBuffer;
use crate::{DType, Device, Shape, Tensor};

/// Threads per block of the elementwise kernels.
pub(crate) const BLOCK: u32 = 256;

/// The kernel `$base` for `$dtype` (`_f32`, `_bf16` or `_f16`), or a dtype error.
macro_rules! kernel_for {
    ($op:expr, $dtype:expr, $base:literal) => {
        match $dtype {
            $crate::DType::F32 => Ok(concat!($base, "_f32")),
            $crate::DType::BF16 => Ok(concat!($base, "_bf16")),
            $crate::DType::F16 => Ok(concat!($base, "_f16")),
            other => Err($crate::Error::DType {
                op: $op,
                expected: "f32, bf16 or f16 (the GPU kernels' types)".into(),
                got: other,
            }),
        }
    };
}
pub(crate) use kernel_for;

/// Fails unless every tensor is on the device of the first.
pub(crate) fn same_device(op: &'static str, tensors: &[&Tensor]) -> Result<Device> {
    let device = tensors[0].device();
    match tensors.iter().find(|t| t.device() != device) {
        Some(t) => Err(Error::Shape {
            op,
            detail: format!("operands on different devices: {device} and {}", t.device()),
        }),
        None => Ok(device),
    }
}

/// Runs a CPU op for the emulator, where cuDNN and cuBLAS do not exist,
/// in stream order like a library call (and recorded like one during a graph
/// capture): the op gets the inputs as host tensors (16-bit ones widened to
/// f32) and its outputs, of the shapes asked for (`None`: not wanted), are
/// rounded to `dtype` and land in device tensors returned at once. Only the
/// emulator takes this path; its copies are not the program's transfers.
pub(crate) fn on_host<const N: usize, const M: usize>(
    g: &GpuBuffer,
    dtype: DType,
    inputs: [&Tensor; N],
    outputs: [Option<Shape>; M],
    op: impl Fn([Tensor; N]) -> Result<[Option<Tensor>; M]> + Send + 'static,
) -> Result<[Option<Tensor>; M]> {
    debug_assert_eq!(g.device, Device::Emulator);
    let layouts = inputs.map(|t| (t.dtype(), t.shape().clone()));
    let wanted: Vec<bool> = outputs.iter().map(Option::is_some).collect();
    let made = outputs.map(|s| s.map(|s| Tensor::gpu_empty(g, s, dtype)).transpose());
    let mut tensors = Vec::with_capacity(M);
    for t in made {
        tensors.push(t?);
    }
    let reads: Vec<_> = inputs.iter().map(|t| emulated(t)).collect();
    let writes: Vec<_> = tensors.iter().flatten().map(emulated).collect();
    let run = move |bytes: Vec<Vec<u8>>| -> Result<Vec<Vec<u8>>> {
        let mut host = Vec::with_capacity(N);
        for ((dt, shape), b) in layouts.iter().zip(&bytes) {
            let t = Tensor::from_host_bytes(*dt, shape.clone(), b);
            host.push(match dt {
                DType::BF16 | DType::F16 => t.to_dtype(DType::F32)?,
                _ => t,
            });
        }
        let results = op(host.try_into().expect("N inputs"))?;
        let mut out = Vec::new();
        for (result, want) in results.into_iter().zip(&wanted) {
            match (result, want) {
                (Some(t), true) => out.push(
                    t.to_dtype(dtype)?
                        .host_bytes()
                        .expect("a CPU op's output")
                        .to_vec(),
                ),
                (None, false) => {}
                _ => unreachable!("the CPU op gives exactly the outputs asked for"),
            }
        }
        Ok(out)
    };
    g.gpu
        .host_op(&reads, &writes, move |b| run(b).map_err(|e| e.to_string()))?;
    Ok(tensors.try_into().expect("M outputs"))
}

fn emulated(t: &Tensor) -> (&kernels::Buffer, usize, usize) {
    t.gpu_range().expect("emulator tensors live on the device")
}
