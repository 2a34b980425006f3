//! Dense tensors with shared, immutable storage.

use crate::error::{Error, Result, shape_err};
use crate::{DType, Device, Element, Shape};
use half::{bf16, f16};
use kernels::{Arg, Buffer, Gpu};
use std::sync::Arc;

/// Host memory of one dtype (crate-internal: the `tensor` module is private).
#[derive(Clone, Debug)]
pub enum CpuBuffer {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    U8(Vec<u8>),
    I64(Vec<i64>),
}

impl CpuBuffer {
    fn dtype(&self) -> DType {
        match self {
            CpuBuffer::F32(_) => DType::F32,
            CpuBuffer::F64(_) => DType::F64,
            CpuBuffer::F16(_) => DType::F16,
            CpuBuffer::BF16(_) => DType::BF16,
            CpuBuffer::U8(_) => DType::U8,
            CpuBuffer::I64(_) => DType::I64,
        }
    }

    /// The elements as little-endian bytes, as device memory holds them.
    fn bytes(&self) -> &[u8] {
        match self {
            CpuBuffer::F32(v) => bytemuck::cast_slice(v),
            CpuBuffer::F64(v) => bytemuck::cast_slice(v),
            CpuBuffer::F16(v) => bytemuck::cast_slice(v),
            CpuBuffer::BF16(v) => bytemuck::cast_slice(v),
            CpuBuffer::U8(v) => v,
            CpuBuffer::I64(v) => bytemuck::cast_slice(v),
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            CpuBuffer::F32(v) => bytemuck::cast_slice_mut(v),
            CpuBuffer::F64(v) => bytemuck::cast_slice_mut(v),
            CpuBuffer::F16(v) => bytemuck::cast_slice_mut(v),
            CpuBuffer::BF16(v) => bytemuck::cast_slice_mut(v),
            CpuBuffer::U8(v) => v,
            CpuBuffer::I64(v) => bytemuck::cast_slice_mut(v),
        }
    }

    fn from_bytes(dtype: DType, bytes: &[u8]) -> Self {
        fn cast<T: bytemuck::Pod>(b: &[u8]) -> Vec<T> {
            bytemuck::pod_collect_to_vec(b)
        }
        match dtype {
            DType::F32 => CpuBuffer::F32(cast(bytes)),
            DType::F64 => CpuBuffer::F64(cast(bytes)),
            DType::F16 => CpuBuffer::F16(cast(bytes)),
            DType::BF16 => CpuBuffer::BF16(cast(bytes)),
            DType::U8 => CpuBuffer::U8(bytes.to_vec()),
            DType::I64 => CpuBuffer::I64(cast(bytes)),
        }
    }

    fn zeros(dtype: DType, len: usize) -> Self {
        match dtype {
            DType::F32 => CpuBuffer::F32(vec![0.0; len]),
            DType::F64 => CpuBuffer::F64(vec![0.0; len]),
            DType::F16 => CpuBuffer::F16(vec![f16::ZERO; len]),
            DType::BF16 => CpuBuffer::BF16(vec![bf16::ZERO; len]),
            DType::U8 => CpuBuffer::U8(vec![0; len]),
            DType::I64 => CpuBuffer::I64(vec![0; len]),
        }
    }
}

/// The backing memory of a tensor.
#[derive(Debug)]
pub(crate) enum Storage {
    Cpu(CpuBuffer),
    Gpu(GpuBuffer),
}

/// Device memory of one dtype, and the launcher of the device it is on.
#[derive(Debug)]
pub(crate) struct GpuBuffer {
    pub(crate) gpu: Arc<Gpu>,
    pub(crate) device: Device,
    pub(crate) dtype: DType,
    pub(crate) buf: Buffer,
}

pub(crate) mod sealed {
    use super::CpuBuffer;

    /// Moves typed vectors in and out of [`CpuBuffer`]; sealed so only the
    /// engine's element types implement [`crate::Element`].
    pub trait Stored: Sized {
        fn wrap(v: Vec<Self>) -> CpuBuffer;
        fn slice(b: &CpuBuffer) -> Option<&[Self]>;
        fn slice_mut(b: &mut CpuBuffer) -> Option<&mut [Self]>;
    }

    macro_rules! stored {
        ($t:ty, $v:ident) => {
            impl Stored for $t {
                fn wrap(v: Vec<Self>) -> CpuBuffer {
                    CpuBuffer::$v(v)
                }
                fn slice(b: &CpuBuffer) -> Option<&[Self]> {
                    match b {
                        CpuBuffer::$v(v) => Some(v),
                        _ => None,
                    }
                }
                fn slice_mut(b: &mut CpuBuffer) -> Option<&mut [Self]> {
                    match b {
                        CpuBuffer::$v(v) => Some(v),
                        _ => None,
                    }
                }
            }
        };
    }
    stored!(f32, F32);
    stored!(f64, F64);
    stored!(half::f16, F16);
    stored!(half::bf16, BF16);
    stored!(u8, U8);
    stored!(i64, I64);
}

/// A dense, row-major tensor.
///
/// Cloning is cheap: clones share storage. A tensor may be a view of a range of a
/// larger buffer (parameters are views of one flat buffer), so storage that is
/// shared cannot be written; in-place updates ([`Tensor::slice_mut`]) fail with
/// [`Error::BufferInUse`] while other references are alive.
#[derive(Clone, Debug)]
pub struct Tensor {
    storage: Arc<Storage>,
    offset: usize,
    shape: Shape,
}

impl Tensor {
    /// A CPU tensor holding `data` with `shape`.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(shape_err(
                "from_vec",
                format!("{} elements do not fill shape {shape}", data.len()),
            ));
        }
        Ok(Tensor {
            storage: Arc::new(Storage::Cpu(T::wrap(data))),
            offset: 0,
            shape,
        })
    }

    /// A zero-filled tensor on `device`.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        match device {
            Device::Cpu => Ok(Tensor {
                storage: Arc::new(Storage::Cpu(CpuBuffer::zeros(dtype, shape.numel()))),
                offset: 0,
                shape,
            }),
            Device::Cuda(_) | Device::Emulator => {
                let gpu = crate::device::gpu(device)?;
                let buf = gpu.alloc_zeroed(shape.numel() * dtype.size_in_bytes())?;
                Ok(Tensor::on_gpu(gpu, device, dtype, buf, shape))
            }
        }
    }

    /// A tensor of `shape` filled with `value` (rounded to `dtype`) on
    /// `device`; on a GPU one queued memset, so nothing waits.
    pub fn full(
        shape: impl Into<Shape>,
        value: f64,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let host = Tensor::from_vec(vec![value], [1])?.to_dtype(dtype)?;
        if device == Device::Cpu {
            let n = shape.numel();
            let Storage::Cpu(b) = &*host.storage else {
                unreachable!("built on the host")
            };
            let data = CpuBuffer::from_bytes(dtype, &b.bytes().repeat(n));
            return Ok(Tensor {
                storage: Arc::new(Storage::Cpu(data)),
                offset: 0,
                shape,
            });
        }
        let word = match &*host.storage {
            Storage::Cpu(CpuBuffer::F32(v)) => kernels::Word::U32(v[0].to_bits()),
            Storage::Cpu(CpuBuffer::BF16(v)) => kernels::Word::U16(v[0].to_bits()),
            Storage::Cpu(CpuBuffer::F16(v)) => kernels::Word::U16(v[0].to_bits()),
            _ => {
                return Err(Error::DType {
                    op: "full",
                    expected: "f32, bf16 or f16 on a GPU".into(),
                    got: dtype,
                });
            }
        };
        let gpu = crate::device::gpu(device)?;
        let buf = gpu.alloc(shape.numel() * dtype.size_in_bytes())?;
        gpu.fill_words(&buf, 0, shape.numel(), word)?;
        Ok(Tensor::on_gpu(gpu, device, dtype, buf, shape))
    }

    /// A scalar (shape `[]`).
    pub fn scalar<T: Element>(v: T) -> Tensor {
        Tensor {
            storage: Arc::new(Storage::Cpu(T::wrap(vec![v]))),
            offset: 0,
            shape: Shape::new([]),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The dimensions (shorthand for `shape().dims()`).
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::Cpu(b) => b.dtype(),
            Storage::Gpu(g) => g.dtype,
        }
    }

    /// The device holding the data.
    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Gpu(g) => g.device,
        }
    }

    /// Overwrites this tensor's elements with `src`'s (same shape, dtype and
    /// device; on a GPU, a device copy queued on the stream). Fails while
    /// other references to this tensor's storage are alive.
    pub fn copy_from(&mut self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(self.copy_mismatch("copy_from", src));
        }
        self.copy_from_at(0, src)
    }

    /// Overwrites elements `first..first + src.numel()` of this tensor (in
    /// row-major order) with `src`'s, as [`Self::copy_from`] does the whole.
    pub fn copy_from_at(&mut self, first: usize, src: &Tensor) -> Result<()> {
        if src.dtype() != self.dtype()
            || src.device() != self.device()
            || first + src.numel() > self.numel()
        {
            return Err(self.copy_mismatch("copy_from_at", src));
        }
        let size = self.dtype().size_in_bytes();
        let (offset, bytes) = ((self.offset + first) * size, src.numel() * size);
        if let Some(dst) = self.gpu_mut()? {
            let (from, from_offset, _) = src.gpu_range().expect("on the same GPU");
            dst.gpu.copy(from, from_offset, &dst.buf, offset, bytes)?;
            return Ok(());
        }
        let data = src.host_bytes().expect("on the host").to_vec();
        let Some(Storage::Cpu(b)) = Arc::get_mut(&mut self.storage) else {
            return Err(Error::BufferInUse {
                what: "tensor storage",
                count: Arc::strong_count(&self.storage) - 1,
            });
        };
        b.bytes_mut()[offset..offset + bytes].copy_from_slice(&data);
        Ok(())
    }

    fn copy_mismatch(&self, op: &'static str, src: &Tensor) -> Error {
        Error::Shape {
            op,
            detail: format!(
                "{} {} on {} into {} {} on {}",
                src.shape(),
                src.dtype(),
                src.device(),
                self.shape(),
                self.dtype(),
                self.device()
            ),
        }
    }

    /// A copy on `device` (the same tensor if it is already there). Copies
    /// from a GPU wait for the work queued before them.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let host = self.to_cpu()?;
        if device == Device::Cpu {
            return Ok(host);
        }
        let Storage::Cpu(b) = &*host.storage else {
            unreachable!("to_cpu gives host memory")
        };
        let gpu = crate::device::gpu(device)?;
        let buf = gpu.upload(b.bytes())?;
        Ok(Tensor::on_gpu(
            gpu,
            device,
            host.dtype(),
            buf,
            host.shape.clone(),
        ))
    }

    /// A host tensor of `dtype` from its little-endian bytes.
    pub(crate) fn from_host_bytes(dtype: DType, shape: Shape, bytes: &[u8]) -> Tensor {
        debug_assert_eq!(bytes.len(), shape.numel() * dtype.size_in_bytes());
        Tensor {
            storage: Arc::new(Storage::Cpu(CpuBuffer::from_bytes(dtype, bytes))),
            offset: 0,
            shape,
        }
    }

    /// The bytes of a host tensor's elements, `None` for a GPU tensor.
    pub(crate) fn host_bytes(&self) -> Option<&[u8]> {
        let Storage::Cpu(b) = &*self.storage else {
            return None;
        };
        let size = self.dtype().size_in_bytes();
        Some(&b.bytes()[self.offset * size..(self.offset + self.numel()) * size])
    }

    /// Whether this tensor and `other` are views of the same storage.
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// The device buffer and byte range of a GPU tensor's elements.
    pub(crate) fn gpu_range(&self) -> Option<(&kernels::Buffer, usize, usize)> {
        let g = self.gpu()?;
        let size = g.dtype.size_in_bytes();
        Some((&g.buf, self.offset * size, self.numel() * size))
    }

    /// This tensor in host memory (downloaded from a GPU if need be).
    fn to_cpu(&self) -> Result<Tensor> {
        let Storage::Gpu(g) = &*self.storage else {
            return Ok(self.clone());
        };
        let size = g.dtype.size_in_bytes();
        let mut bytes = vec![0u8; self.numel() * size];
        g.gpu.read(&g.buf, self.offset * size, &mut bytes)?;
        let data = CpuBuffer::from_bytes(g.dtype, &bytes);
        Ok(Tensor {
            storage: Arc::new(Storage::Cpu(data)),
            offset: 0,
            shape: self.shape.clone(),
        })
    }

    /// The elements as a host slice. Fails for another dtype or a GPU tensor
    /// (copy it with [`Tensor::to_device`] or [`Tensor::to_vec`] first).
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        let Storage::Cpu(b) = &*self.storage else {
            return Err(Error::Device {
                op: "as_slice (host access; copy with to_device(Device::Cpu) first)",
                device: self.device(),
            });
        };
        T::slice(b)
            .map(|s| &s[self.offset..self.offset + self.numel()])
            .ok_or(Error::DType {
                op: "as_slice",
                expected: T::DTYPE.to_string(),
                got: self.dtype(),
            })
    }

    /// The elements as a writable host slice, if this tensor is the only
    /// reference to its storage.
    pub fn slice_mut<T: Element>(&mut self) -> Result<&mut [T]> {
        let dtype = self.dtype();
        let count = Arc::strong_count(&self.storage) - 1;
        let (offset, numel) = (self.offset, self.numel());
        let device = self.device();
        let Storage::Cpu(b) = Arc::get_mut(&mut self.storage).ok_or(Error::BufferInUse {
            what: "tensor storage",
            count,
        })?
        else {
            return Err(Error::Device {
                op: "slice_mut (host access)",
                device,
            });
        };
        T::slice_mut(b)
            .map(|s| &mut s[offset..offset + numel])
            .ok_or(Error::DType {
                op: "slice_mut",
                expected: T::DTYPE.to_string(),
                got: dtype,
            })
    }

    /// Copies the elements into a `Vec` (from any device).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.to_cpu()?.as_slice::<T>().map(<[T]>::to_vec)
    }

    /// Copies the elements of any float tensor into a `Vec<f64>` (exact
    /// widening), from any device.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        let host = self.to_cpu()?;
        let Storage::Cpu(b) = &*host.storage else {
            unreachable!("to_cpu gives host memory")
        };
        let r = host.offset..host.offset + host.numel();
        Ok(match b {
            CpuBuffer::F32(v) => v[r].iter().map(|&x| x as f64).collect(),
            CpuBuffer::F64(v) => v[r].to_vec(),
            CpuBuffer::F16(v) => v[r].iter().map(|x| x.to_f64()).collect(),
            CpuBuffer::BF16(v) => v[r].iter().map(|x| x.to_f64()).collect(),
            CpuBuffer::U8(_) | CpuBuffer::I64(_) => {
                return Err(Error::DType {
                    op: "to_f64_vec",
                    expected: "a float dtype".into(),
                    got: self.dtype(),
                });
            }
        })
    }

    /// The same data with another shape of equal element count (no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(shape_err(
                "reshape",
                format!("cannot view {} as {shape}", self.shape),
            ));
        }
        Ok(Tensor {
            storage: self.storage.clone(),
            offset: self.offset,
            shape,
        })
    }

    /// Elements `start..start + len` of a rank-1 tensor: a view sharing its
    /// storage, so writes through either show in both.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Tensor> {
        if self.shape.rank() != 1 || start.checked_add(len).is_none_or(|end| end > self.numel()) {
            return Err(shape_err(
                "narrow",
                format!("elements {start}..{} of {}", start + len, self.shape),
            ));
        }
        Ok(self.view(start, [len].into()))
    }

    /// A copy converted to another float dtype, rounding to nearest even
    /// (f16 overflows to ±∞); the same tensor if it already has that dtype.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        crate::ops::cast::cast(self, dtype)
    }

    /// A tensor of `shape` and `dtype` over `buf`, which must come from
    /// [`crate::gpu_launcher`]`(device)` and hold exactly its bytes: for
    /// outputs of kernels launched outside the engine.
    pub fn from_gpu_buffer(
        device: Device,
        dtype: DType,
        buf: Buffer,
        shape: impl Into<Shape>,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let gpu = crate::gpu_launcher(device)?;
        if buf.len_bytes() != shape.numel() * dtype.size_in_bytes() {
            return Err(shape_err(
                "from_gpu_buffer",
                format!(
                    "{} bytes do not hold {dtype} shape {shape}",
                    buf.len_bytes()
                ),
            ));
        }
        Ok(Tensor::on_gpu(gpu, device, dtype, buf, shape))
    }

    fn on_gpu(gpu: Arc<Gpu>, device: Device, dtype: DType, buf: Buffer, shape: Shape) -> Tensor {
        Tensor {
            storage: Arc::new(Storage::Gpu(GpuBuffer {
                gpu,
                device,
                dtype,
                buf,
            })),
            offset: 0,
            shape,
        }
    }

    /// An uninitialised tensor on the GPU of `like` (whose kernels will fill it).
    pub(crate) fn gpu_empty(
        like: &GpuBuffer,
        shape: impl Into<Shape>,
        dtype: DType,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let buf = like.gpu.alloc(shape.numel() * dtype.size_in_bytes())?;
        Ok(Tensor::on_gpu(
            like.gpu.clone(),
            like.device,
            dtype,
            buf,
            shape,
        ))
    }

    /// The GPU memory behind this tensor, if it is on a GPU.
    pub(crate) fn gpu(&self) -> Option<&GpuBuffer> {
        match &*self.storage {
            Storage::Gpu(g) => Some(g),
            Storage::Cpu(_) => None,
        }
    }

    /// The GPU memory behind this tensor for an in-place kernel, if this
    /// tensor is the only reference to it (the GPU twin of
    /// [`Tensor::slice_mut`]); `Ok(None)` for a host tensor.
    pub(crate) fn gpu_mut(&mut self) -> Result<Option<&GpuBuffer>> {
        if self.gpu().is_none() {
            return Ok(None);
        }
        let count = Arc::strong_count(&self.storage) - 1;
        match Arc::get_mut(&mut self.storage) {
            Some(Storage::Gpu(g)) => Ok(Some(g)),
            _ => Err(Error::BufferInUse {
                what: "tensor storage",
                count,
            }),
        }
    }

    /// The device address of the first element (CUDA tensors), for cuDNN
    /// and cuBLAS calls.
    pub(crate) fn device_ptr(&self) -> u64 {
        let g = self.gpu().expect("device pointer of a host tensor");
        g.buf
            .device_ptr()
            .expect("device pointer of an emulated tensor")
            + (self.offset * g.dtype.size_in_bytes()) as u64
    }

    /// This tensor as a kernel argument: its buffer at its element offset.
    /// Panics for a host tensor: callers dispatch on [`Tensor::gpu`] first.
    pub(crate) fn arg(&self) -> Arg<'_> {
        let g = self.gpu().expect("kernel argument on the host");
        Arg::Ptr(&g.buf, self.offset * g.dtype.size_in_bytes())
    }

    /// A view of `numel(shape)` elements starting `offset` elements into this tensor.
    pub(crate) fn view(&self, offset: usize, shape: Shape) -> Tensor {
        debug_assert!(offset + shape.numel() <= self.numel());
        Tensor {
            storage: self.storage.clone(),
            offset: self.offset + offset,
            shape,
        }
    }

    /// `parts` joined along the outermost axis into one new tensor; they
    /// share dtype, device and all other dimensions.
    pub(crate) fn concat_outer(parts: &[Tensor]) -> Result<Tensor> {
        const OP: &str = "concat";
        let first = parts
            .first()
            .ok_or_else(|| shape_err(OP, "nothing to join"))?;
        let mut dims = first.dims().to_vec();
        for p in parts {
            if p.dims().get(1..) != first.dims().get(1..)
                || p.dtype() != first.dtype()
                || p.device() != first.device()
            {
                return Err(shape_err(
                    OP,
                    format!(
                        "{} {} joined to {} {}",
                        p.shape(),
                        p.dtype(),
                        first.shape(),
                        first.dtype()
                    ),
                ));
            }
        }
        dims[0] = parts.iter().map(|p| p.dims()[0]).sum();
        let shape = Shape::from(dims);
        if first.gpu().is_none() {
            let bytes: Vec<u8> = parts
                .iter()
                .flat_map(|p| p.host_bytes().expect("on the host"))
                .copied()
                .collect();
            return Ok(Tensor::from_host_bytes(first.dtype(), shape, &bytes));
        }
        let mut out = Tensor::zeros(shape, first.dtype(), first.device())?;
        let dst = out.gpu_mut()?.expect("on a GPU");
        let mut at = 0;
        for p in parts {
            let (from, from_offset, bytes) = p.gpu_range().expect("on the same GPU");
            dst.gpu.copy(from, from_offset, &dst.buf, at, bytes)?;
            at += bytes;
        }
        Ok(out)
    }

    /// Fails unless the dtype is one of `allowed`.
    pub(crate) fn expect_dtype(&self, op: &'static str, allowed: &[DType]) -> Result<DType> {
        let d = self.dtype();
        if allowed.contains(&d) {
            Ok(d)
        } else {
            let names: Vec<String> = allowed.iter().map(|d| d.to_string()).collect();
            Err(Error::DType {
                op,
                expected: names.join(" or "),
                got: d,
            })
        }
    }

    /// Fails unless `other` has this tensor's dtype; returns it.
    pub(crate) fn expect_same_dtype(&self, op: &'static str, other: &Tensor) -> Result<DType> {
        if self.dtype() == other.dtype() {
            Ok(self.dtype())
        } else {
            Err(Error::DType {
                op,
                expected: self.dtype().to_string(),
                got: other.dtype(),
            })
        }
    }

    /// Fails unless the tensor has exactly `rank` dimensions.
    pub(crate) fn expect_rank(&self, op: &'static str, rank: usize) -> Result<&[usize]> {
        if self.shape.rank() == rank {
            Ok(self.dims())
        } else {
            Err(shape_err(
                op,
                format!("expected a rank-{rank} tensor, got shape {}", self.shape),
            ))
        }
    }
}
