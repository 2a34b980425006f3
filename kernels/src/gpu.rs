//! A device to run kernels on — a CUDA GPU or the SIMT emulator — and the one
//! launch wrapper both share.

use crate::emulator::{self, Memory};
use crate::registry::{self, Param};
use crate::{Error, Result, nvrtc, probe};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, result, sys};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// Grid and block shape and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Blocks in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory per block, in bytes.
    pub shared_bytes: u32,
}

/// Grid-stride kernels need no more blocks than this to fill any current GPU.
const MAX_STRIDE_BLOCKS: usize = 4096;

impl LaunchConfig {
    /// One thread per element with `block` threads per block, for grid-stride
    /// loops: at most [`MAX_STRIDE_BLOCKS`] blocks, at least one.
    pub fn for_elements(n: usize, block: u32) -> LaunchConfig {
        let blocks = n.div_ceil(block as usize).clamp(1, MAX_STRIDE_BLOCKS);
        LaunchConfig {
            grid: (blocks as u32, 1, 1),
            block: (block, 1, 1),
            shared_bytes: 0,
        }
    }

    /// `grid` blocks of `block` threads (1-D).
    pub fn blocks(grid: u32, block: u32) -> LaunchConfig {
        LaunchConfig {
            grid: (grid, 1, 1),
            block: (block, 1, 1),
            shared_bytes: 0,
        }
    }

    /// The same launch with `bytes` of dynamic shared memory.
    pub fn with_shared(self, bytes: u32) -> LaunchConfig {
        LaunchConfig {
            shared_bytes: bytes,
            ..self
        }
    }

    fn threads_per_block(&self) -> u64 {
        self.block.0 as u64 * self.block.1 as u64 * self.block.2 as u64
    }
}

/// One launch argument. Pointers are a buffer and a byte offset into it.
#[derive(Clone, Copy, Debug)]
pub enum Arg<'a> {
    /// A device pointer: `buffer` + `offset` bytes.
    Ptr(&'a Buffer, usize),
    /// `int`.
    I32(i32),
    /// `unsigned`.
    U32(u32),
    /// `float`.
    F32(f32),
    /// `long long`.
    I64(i64),
    /// `unsigned long long`.
    U64(u64),
}

impl<'a> Arg<'a> {
    /// The start of `buffer`.
    pub fn ptr(buffer: &'a Buffer) -> Arg<'a> {
        Arg::Ptr(buffer, 0)
    }

    fn kind(&self) -> Param {
        match self {
            Arg::Ptr(..) => Param::Ptr,
            Arg::I32(_) => Param::I32,
            Arg::U32(_) => Param::U32,
            Arg::F32(_) => Param::F32,
            Arg::I64(_) => Param::I64,
            Arg::U64(_) => Param::U64,
        }
    }
}

/// A 2- or 4-byte fill value for [`Gpu::fill_words`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Word {
    /// Two bytes (bf16, f16).
    U16(u16),
    /// Four bytes (f32).
    U32(u32),
}

/// Device memory: bytes on a GPU, or host bytes for the emulator.
#[derive(Debug)]
pub struct Buffer {
    bytes: usize,
    mem: Mem,
    /// The device's capture book, and the capture this buffer was made in
    /// (0: none), so a free during a capture can be checked.
    book: Arc<CaptureBook>,
    made_in: u64,
}

#[derive(Debug)]
enum Mem {
    Cuda {
        ptr: sys::CUdeviceptr,
        stream: Arc<CudaStream>,
    },
    Emulated(Arc<Memory>),
}

/// Work the emulator has recorded during a capture, replayed in order.
type Recorded = Box<dyn Fn() -> Result<()> + Send>;

/// What a device knows of its capture in progress, shared with its buffers.
#[derive(Default)]
struct CaptureBook {
    state: Mutex<CaptureState>,
}

impl CaptureBook {
    /// The state, also after a panic elsewhere: every update leaves it whole.
    fn state(&self) -> std::sync::MutexGuard<'_, CaptureState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for CaptureBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaptureBook")
    }
}

#[derive(Default)]
struct CaptureState {
    /// The capture in progress (0: none); captures are numbered from 1.
    active: u64,
    last: u64,
    /// The emulator's recorded work (CUDA records in the driver).
    recorded: Vec<Recorded>,
    /// Buffers made during the capture and still live: (count, bytes).
    live: (usize, usize),
    /// Buffers made before the capture and freed during it: (count, bytes).
    freed_early: (usize, usize),
    /// Their CUDA memory, freed once the capture ends: the graph may use it.
    deferred: Vec<(sys::CUdeviceptr, Arc<CudaStream>)>,
}

/// A captured sequence of device work — a CUDA graph, or the emulator's
/// recording — replayed with [`Gpu::launch_graph`]. Replays read and write
/// the same buffers as the capture, with whatever they hold at the time.
pub struct Graph {
    kind: GraphKind,
}

enum GraphKind {
    Cuda(cudarc::driver::CudaGraph),
    Emulated(Vec<Recorded>),
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            GraphKind::Cuda(_) => f.write_str("Graph(cuda)"),
            GraphKind::Emulated(work) => write!(f, "Graph(emulated, {} steps)", work.len()),
        }
    }
}

// SAFETY: a CUDA pointer is a plain address valid in any thread of the
// process; emulated memory is only touched under the emulator's lock.
unsafe impl Send for Buffer {}
unsafe impl Sync for Buffer {}

impl Drop for Buffer {
    fn drop(&mut self) {
        {
            let mut state = self.book.state();
            if state.active != 0 {
                if self.made_in == state.active {
                    state.live.0 -= 1;
                    state.live.1 -= self.bytes;
                } else {
                    // The captured work may use this memory: keep it until the
                    // capture ends, which then fails, naming the cause.
                    state.freed_early.0 += 1;
                    state.freed_early.1 += self.bytes;
                    if let Mem::Cuda { ptr, stream } = &self.mem
                        && *ptr != 0
                    {
                        state.deferred.push((*ptr, stream.clone()));
                    }
                    return;
                }
            }
        }
        if let Mem::Cuda { ptr, stream } = &self.mem
            && *ptr != 0
        {
            // Stream-ordered: the pool reuses the memory after pending
            // work. The context is made current directly: cudarc's bind
            // would first report (and skip on) an unrelated earlier error.
            // SAFETY: `ptr` came from `malloc_async` on this stream and is
            // freed once, in the stream's own (live) context.
            unsafe {
                let _ = sys::cuCtxSetCurrent(stream.context().cu_ctx());
                let _ = result::free_async(*ptr, stream.cu_stream());
            }
        }
    }
}

impl Buffer {
    /// Size in bytes.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// The raw device address (CUDA buffers only), for cuDNN and cuBLAS calls.
    pub fn device_ptr(&self) -> Option<u64> {
        match &self.mem {
            Mem::Cuda { ptr, .. } => Some(*ptr),
            Mem::Emulated(_) => None,
        }
    }

    fn check_range(&self, what: &str, offset: usize, len: usize) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.bytes) {
            return Err(Error::Launch {
                kernel: what.into(),
                detail: format!(
                    "bytes {offset}..{} outside a buffer of {} bytes",
                    offset + len,
                    self.bytes
                ),
            });
        }
        Ok(())
    }
}

/// The CUDA half of a [`Gpu`]: its context, its one compute stream and the
/// loaded kernel modules.
pub struct CudaParts {
    /// The device context.
    pub ctx: Arc<CudaContext>,
    /// The compute stream every op runs on.
    pub stream: Arc<CudaStream>,
    /// The second stream [`Gpu::on_copy_stream`] queues work on, so that
    /// the next step's inputs upload while the compute stream runs a step.
    copy_stream: Arc<CudaStream>,
    /// The arch kernels are compiled for, e.g. `sm_90`.
    pub arch: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
}

enum Kind {
    Cuda(CudaParts),
    Emulator(Mutex<()>),
}

/// A point on a device's timeline: a CUDA event recorded on the compute
/// stream, or the host clock for the emulator (whose launches are synchronous).
pub enum Stamp {
    /// Recorded on the GPU's stream.
    Event(cudarc::driver::CudaEvent),
    /// Taken on the host.
    Host(std::time::Instant),
}

impl Stamp {
    /// Milliseconds from this stamp to `end` (waits for the GPU to reach `end`).
    pub fn ms_until(&self, end: &Stamp) -> Result<f64> {
        match (self, end) {
            (Stamp::Event(a), Stamp::Event(b)) => Ok(a.elapsed_ms(b)? as f64),
            (Stamp::Host(a), Stamp::Host(b)) => Ok((*b - *a).as_secs_f64() * 1e3),
            _ => Err(Error::Driver("stamps of different clocks".into())),
        }
    }
}

/// A point in a stream's queue that work on the other stream can wait for
/// ([`Gpu::mark`], [`Gpu::wait_for`]): a CUDA event, or nothing on the
/// emulator, whose work runs as it is queued.
pub struct Mark(Option<cudarc::driver::CudaEvent>);

/// Host memory that the device copies results into while the host goes on
/// ([`Gpu::queue_read`]); [`Readback::wait`] waits for that copy alone.
/// Page-locked on CUDA, so the copy is a DMA the host need not stage.
pub struct Readback {
    bytes: usize,
    host: Mutex<HostMem>,
    /// Recorded after the last queued copy (CUDA).
    done: Mutex<Option<cudarc::driver::CudaEvent>>,
}

enum HostMem {
    Pinned { ptr: *mut u8, ctx: Arc<CudaContext> },
    Plain(Vec<u8>),
}

// SAFETY: the page-locked pointer is only used under the `host` lock.
unsafe impl Send for Readback {}
unsafe impl Sync for Readback {}

impl Readback {
    /// Waits for the last queued copy and returns the bytes it copied.
    pub fn wait(&self) -> Result<Vec<u8>> {
        if let Some(event) = &*self.done.lock().unwrap() {
            event.synchronize()?;
        }
        Ok(match &*self.host.lock().unwrap() {
            // SAFETY: the copy into it has finished; `bytes` long.
            HostMem::Pinned { ptr, .. } => unsafe {
                std::slice::from_raw_parts(*ptr, self.bytes).to_vec()
            },
            HostMem::Plain(v) => v.clone(),
        })
    }
}

impl Drop for Readback {
    fn drop(&mut self) {
        if let Some(event) = self.done.get_mut().unwrap_or_else(|e| e.into_inner()) {
            let _ = event.synchronize();
        }
        if let HostMem::Pinned { ptr, ctx } = self.host.get_mut().unwrap_or_else(|e| e.into_inner())
        {
            // SAFETY: allocated by `malloc_host`, no copy pending, freed once.
            unsafe {
                let _ = sys::cuCtxSetCurrent(ctx.cu_ctx());
                let _ = result::free_host(ptr.cast());
            }
        }
    }
}

/// A timed section: its label and its start and end stamps.
type Timed = (&'static str, Stamp, Stamp);

/// Copies between host and device memory since the device was created:
/// how many, and how many bytes, each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfers {
    pub to_device: (u64, u64),
    pub to_host: (u64, u64),
}

/// A device that runs the registry's kernels.
pub struct Gpu {
    kind: Kind,
    /// When set, every launch and [`Gpu::timed`] section is timed by family.
    profiling: std::sync::atomic::AtomicBool,
    timings: Mutex<Vec<Timed>>,
    transfers: Mutex<Transfers>,
    book: Arc<CaptureBook>,
    /// Set inside [`Gpu::on_copy_stream`]: work goes to the copy stream.
    on_copy: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Cuda(c) => write!(f, "Gpu(cuda:{}, {})", c.ctx.ordinal(), c.arch),
            Kind::Emulator(_) => f.write_str("Gpu(emulator)"),
        }
    }
}

impl Gpu {
    /// The SIMT emulator: kernels run on the CPU, buffers are host memory
    /// with guard zones.
    pub fn emulator() -> Gpu {
        Gpu::with(Kind::Emulator(Mutex::new(())))
    }

    /// CUDA device `ordinal`, after checking that the driver and NVRTC are
    /// present and the device exists. Sets up the stream-ordered memory pool
    /// (release threshold at maximum: freed memory stays in the pool) and
    /// turns off cudarc's per-allocation event tracking (one stream).
    pub fn cuda(ordinal: usize) -> Result<Gpu> {
        if !probe::driver_present() || !probe::nvrtc_present() {
            return Err(Error::Unavailable(
                "the CUDA driver or NVRTC is missing; `trainer info` shows what was found".into(),
            ));
        }
        let devices = probe::list_devices().map_err(Error::Unavailable)?;
        let info = devices.get(ordinal).ok_or_else(|| {
            Error::Unavailable(format!(
                "no CUDA device {ordinal} (the driver reports {})",
                devices.len()
            ))
        })?;
        let ctx = CudaContext::new(ordinal)?;
        // SAFETY: all work of this context goes to the one stream below.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let copy_stream = ctx.new_stream()?;
        // SAFETY: plain driver calls on a live context's device.
        unsafe {
            let mut pool = std::ptr::null_mut();
            sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result()?;
            let mut threshold = u64::MAX;
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
            .result()?;
        }
        let (major, minor) = info.compute_capability;
        Ok(Gpu::with(Kind::Cuda(CudaParts {
            ctx,
            stream,
            copy_stream,
            arch: format!("sm_{major}{minor}"),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })))
    }

    fn with(kind: Kind) -> Gpu {
        Gpu {
            kind,
            profiling: false.into(),
            timings: Mutex::new(Vec::new()),
            transfers: Mutex::new(Transfers::default()),
            book: Arc::default(),
            on_copy: false.into(),
        }
    }

    /// The stream this device's work is queued on now: the compute stream,
    /// or the copy stream inside [`Gpu::on_copy_stream`].
    fn queue<'c>(&self, c: &'c CudaParts) -> &'c Arc<CudaStream> {
        if self.on_copy.load(std::sync::atomic::Ordering::Relaxed) {
            &c.copy_stream
        } else {
            &c.stream
        }
    }

    /// A mark after all work queued so far (on the stream work goes to now).
    pub fn mark(&self) -> Result<Mark> {
        self.refuse_while_capturing("a stream mark")?;
        match &self.kind {
            Kind::Cuda(c) => {
                let flags = Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING);
                Ok(Mark(Some(self.queue(c).record_event(flags)?)))
            }
            Kind::Emulator(_) => Ok(Mark(None)),
        }
    }

    /// Makes the work queued from now on wait until the device reaches `mark`.
    pub fn wait_for(&self, mark: &Mark) -> Result<()> {
        self.refuse_while_capturing("a stream wait")?;
        if let (Kind::Cuda(c), Some(event)) = (&self.kind, &mark.0) {
            self.queue(c).wait(event)?;
        }
        Ok(())
    }

    /// Runs `f`, whose device work (uploads, launches, allocations) goes to
    /// the device's copy stream, after `after`; returns `f`'s result and a
    /// mark after that work, for the compute stream to [`Gpu::wait_for`].
    /// Buffers made inside are freed on the copy stream, so `f` should drop
    /// its temporaries before it returns. Meanwhile no other thread may use
    /// this device. On the emulator, where work runs as it is queued, this
    /// is just `f`.
    pub fn on_copy_stream<R>(&self, after: &Mark, f: impl FnOnce() -> R) -> Result<(R, Mark)> {
        use std::sync::atomic::Ordering::Relaxed;
        self.refuse_while_capturing("the copy stream")?;
        if self.on_copy.swap(true, Relaxed) {
            return Err(Error::Driver("the copy stream is already in use".into()));
        }
        let result = self.wait_for(after).map(|()| f());
        let mark = self.mark();
        self.on_copy.store(false, Relaxed);
        Ok((result?, mark?))
    }

    /// Page-locked host memory of `bytes` (plain host memory on the
    /// emulator) for [`Gpu::queue_read`].
    pub fn readback(&self, bytes: usize) -> Result<Readback> {
        let host = match &self.kind {
            Kind::Cuda(c) => {
                c.ctx.bind_to_thread()?;
                // SAFETY: a page-locked allocation, freed once in `Drop`.
                let ptr = unsafe { result::malloc_host(bytes.max(1), 0)? };
                HostMem::Pinned {
                    ptr: ptr.cast(),
                    ctx: c.ctx.clone(),
                }
            }
            Kind::Emulator(_) => HostMem::Plain(vec![0; bytes]),
        };
        Ok(Readback {
            bytes,
            host: Mutex::new(host),
            done: Mutex::new(None),
        })
    }

    /// Queues a copy of `buffer`'s bytes from `offset` into `dst` (its
    /// length) after the work queued so far, without waiting for it:
    /// [`Readback::wait`] does. Counted as a transfer to the host.
    pub fn queue_read(&self, buffer: &Buffer, offset: usize, dst: &Readback) -> Result<()> {
        buffer.check_range("read", offset, dst.bytes)?;
        self.refuse_while_capturing("a copy to the host")?;
        self.count_transfer(false, dst.bytes);
        let mut host = dst.host.lock().unwrap();
        match (&self.kind, &buffer.mem, &mut *host) {
            (Kind::Cuda(c), Mem::Cuda { ptr, .. }, HostMem::Pinned { ptr: out, .. }) => {
                c.ctx.bind_to_thread()?;
                let stream = self.queue(c);
                // SAFETY: both ranges are inside their allocations; the host
                // side is page-locked and lives until the copy is waited for
                // (`Readback` waits in `Drop`).
                unsafe {
                    let out = std::slice::from_raw_parts_mut(*out, dst.bytes);
                    result::memcpy_dtoh_async(out, ptr + offset as u64, stream.cu_stream())?;
                }
                let flags = Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING);
                *dst.done.lock().unwrap() = Some(stream.record_event(flags)?);
                Ok(())
            }
            (Kind::Emulator(lock), Mem::Emulated(m), HostMem::Plain(out)) => {
                let _g = lock.lock().unwrap();
                // SAFETY: under the emulator's lock.
                out.copy_from_slice(&(unsafe { m.bytes_mut() })[offset..offset + dst.bytes]);
                Ok(())
            }
            _ => Err(foreign()),
        }
    }

    /// A stamp on this device's timeline, after all queued work.
    pub fn stamp(&self) -> Result<Stamp> {
        // Captured work does not run now: an event recorded with it would
        // never fire.
        self.refuse_while_capturing("a timing stamp")?;
        match &self.kind {
            Kind::Cuda(c) => {
                let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
                Ok(Stamp::Event(c.stream.record_event(flags)?))
            }
            Kind::Emulator(_) => Ok(Stamp::Host(std::time::Instant::now())),
        }
    }

    /// Turns timing of every launch and [`Gpu::timed`] section on or off.
    pub fn set_profiling(&self, on: bool) {
        self.profiling
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs `f` (work queued on this device), timed under `label` when
    /// profiling is on — e.g. a cuDNN or cuBLAS call.
    pub fn timed<R>(&self, label: &'static str, f: impl FnOnce() -> R) -> Result<R> {
        // Work being captured does not run now; there is nothing to time.
        if !self.profiling.load(std::sync::atomic::Ordering::Relaxed) || self.capturing() {
            return Ok(f());
        }
        let start = self.stamp()?;
        let r = f();
        let end = self.stamp()?;
        self.timings.lock().unwrap().push((label, start, end));
        Ok(r)
    }

    /// The milliseconds of every section timed since the last call, by label
    /// (waits for the device to finish them).
    pub fn take_timings(&self) -> Result<Vec<(&'static str, f64)>> {
        let pending = std::mem::take(&mut *self.timings.lock().unwrap());
        pending
            .iter()
            .map(|(label, a, b)| Ok((*label, a.ms_until(b)?)))
            .collect()
    }

    /// The CUDA context and stream, or `None` for the emulator.
    pub fn cuda_parts(&self) -> Option<&CudaParts> {
        match &self.kind {
            Kind::Cuda(c) => Some(c),
            Kind::Emulator(_) => None,
        }
    }

    /// `bytes` of uninitialised memory (the emulator fills it with 0xFF, so
    /// reads before writes show up as NaN).
    pub fn alloc(&self, bytes: usize) -> Result<Buffer> {
        let mem = match &self.kind {
            Kind::Cuda(c) => {
                c.ctx.bind_to_thread()?;
                // SAFETY: a stream-ordered allocation, freed in `Drop`.
                let ptr = if bytes == 0 {
                    0
                } else {
                    unsafe { result::malloc_async(self.queue(c).cu_stream(), bytes)? }
                };
                Mem::Cuda {
                    ptr,
                    stream: self.queue(c).clone(),
                }
            }
            Kind::Emulator(_) => Mem::Emulated(Arc::new(Memory::new(bytes))),
        };
        let mut state = self.book.state();
        let made_in = state.active;
        if made_in != 0 {
            state.live.0 += 1;
            state.live.1 += bytes;
            // Memory made in a capture holds what the last replay left there:
            // each replay poisons it again, so a read before a write still shows.
            if let Mem::Emulated(m) = &mem {
                let m = m.clone();
                state.recorded.push(Box::new(move || {
                    m.poison();
                    Ok(())
                }));
            }
        }
        drop(state);
        Ok(Buffer {
            bytes,
            mem,
            book: self.book.clone(),
            made_in,
        })
    }

    /// `bytes` of zeroed memory.
    pub fn alloc_zeroed(&self, bytes: usize) -> Result<Buffer> {
        let b = self.alloc(bytes)?;
        self.fill_bytes(&b, 0, bytes, 0)?;
        Ok(b)
    }

    /// A buffer holding a copy of `data`.
    pub fn upload(&self, data: &[u8]) -> Result<Buffer> {
        let b = self.alloc(data.len())?;
        self.write(&b, 0, data)?;
        Ok(b)
    }

    /// The host-device copies so far (uploads, writes and reads).
    pub fn transfers(&self) -> Transfers {
        *self.transfers.lock().unwrap()
    }

    fn count_transfer(&self, to_device: bool, bytes: usize) {
        let mut t = self.transfers.lock().unwrap();
        let way = if to_device {
            &mut t.to_device
        } else {
            &mut t.to_host
        };
        *way = (way.0 + 1, way.1 + bytes as u64);
    }

    /// Copies `data` into `buffer` at byte `offset`.
    pub fn write(&self, buffer: &Buffer, offset: usize, data: &[u8]) -> Result<()> {
        buffer.check_range("write", offset, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        self.refuse_while_capturing("a copy from the host")?;
        self.count_transfer(true, data.len());
        match (&self.kind, &buffer.mem) {
            (Kind::Cuda(c), Mem::Cuda { ptr, .. }) => {
                c.ctx.bind_to_thread()?;
                // SAFETY: the range is inside the allocation. An async copy
                // from pageable memory stages `data` before it returns, so
                // the caller may drop `data` at once, and nothing waits.
                unsafe {
                    result::memcpy_htod_async(
                        ptr + offset as u64,
                        data,
                        self.queue(c).cu_stream(),
                    )?;
                }
                Ok(())
            }
            (Kind::Emulator(lock), Mem::Emulated(m)) => {
                let _g = lock.lock().unwrap();
                // SAFETY: under the emulator's lock.
                (unsafe { m.bytes_mut() })[offset..offset + data.len()].copy_from_slice(data);
                Ok(())
            }
            _ => Err(foreign()),
        }
    }

    /// Copies bytes `offset..offset + out.len()` of `buffer` into `out`,
    /// after all queued work.
    pub fn read(&self, buffer: &Buffer, offset: usize, out: &mut [u8]) -> Result<()> {
        buffer.check_range("read", offset, out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        self.refuse_while_capturing("a copy to the host")?;
        self.count_transfer(false, out.len());
        match (&self.kind, &buffer.mem) {
            (Kind::Cuda(c), Mem::Cuda { ptr, .. }) => {
                c.ctx.bind_to_thread()?;
                // SAFETY: the range is inside the allocation; synchronised below.
                unsafe {
                    result::memcpy_dtoh_async(out, ptr + offset as u64, self.queue(c).cu_stream())?
                };
                self.queue(c).synchronize()?;
                Ok(())
            }
            (Kind::Emulator(lock), Mem::Emulated(m)) => {
                let _g = lock.lock().unwrap();
                // SAFETY: under the emulator's lock.
                out.copy_from_slice(&(unsafe { m.bytes_mut() })[offset..offset + out.len()]);
                Ok(())
            }
            _ => Err(foreign()),
        }
    }

    /// Copies `bytes` from `src` at `src_offset` to `dst` at `dst_offset`, on the device.
    pub fn copy(
        &self,
        src: &Buffer,
        src_offset: usize,
        dst: &Buffer,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        src.check_range("copy", src_offset, bytes)?;
        dst.check_range("copy", dst_offset, bytes)?;
        if bytes == 0 {
            return Ok(());
        }
        match (&self.kind, &src.mem, &dst.mem) {
            (Kind::Cuda(c), Mem::Cuda { ptr: s, .. }, Mem::Cuda { ptr: d, .. }) => {
                c.ctx.bind_to_thread()?;
                // SAFETY: both ranges are inside their allocations.
                unsafe {
                    sys::cuMemcpyDtoDAsync_v2(
                        d + dst_offset as u64,
                        s + src_offset as u64,
                        bytes,
                        self.queue(c).cu_stream(),
                    )
                    .result()?
                };
                Ok(())
            }
            (Kind::Emulator(_), Mem::Emulated(s), Mem::Emulated(d)) => {
                let (s, d) = (s.clone(), d.clone());
                self.emulate(Box::new(move || {
                    // SAFETY: under the emulator's lock; one slice live at a time.
                    let tmp = (unsafe { s.bytes_mut() })[src_offset..src_offset + bytes].to_vec();
                    (unsafe { d.bytes_mut() })[dst_offset..dst_offset + bytes]
                        .copy_from_slice(&tmp);
                    Ok(())
                }))
            }
            _ => Err(foreign()),
        }
    }

    /// Sets `bytes` bytes of `buffer` from `offset` to `value`.
    pub fn fill_bytes(
        &self,
        buffer: &Buffer,
        offset: usize,
        bytes: usize,
        value: u8,
    ) -> Result<()> {
        buffer.check_range("fill", offset, bytes)?;
        if bytes == 0 {
            return Ok(());
        }
        match (&self.kind, &buffer.mem) {
            (Kind::Cuda(c), Mem::Cuda { ptr, .. }) => {
                c.ctx.bind_to_thread()?;
                // SAFETY: the range is inside the allocation.
                unsafe {
                    result::memset_d8_async(
                        ptr + offset as u64,
                        value,
                        bytes,
                        self.queue(c).cu_stream(),
                    )?
                };
                Ok(())
            }
            (Kind::Emulator(_), Mem::Emulated(m)) => {
                let m = m.clone();
                self.emulate(Box::new(move || {
                    // SAFETY: under the emulator's lock.
                    (unsafe { m.bytes_mut() })[offset..offset + bytes].fill(value);
                    Ok(())
                }))
            }
            _ => Err(foreign()),
        }
    }

    /// The most device memory the stream-ordered pool and graphs' allocations
    /// have each held at once, summed (CUDA only; `None` for the emulator).
    pub fn pool_high_water(&self) -> Result<Option<u64>> {
        let Kind::Cuda(c) = &self.kind else {
            return Ok(None);
        };
        let mut high = 0u64;
        // SAFETY: reads one attribute of the device's default pool.
        unsafe {
            let mut pool = std::ptr::null_mut();
            sys::cuDeviceGetDefaultMemPool(&mut pool, c.ctx.cu_device()).result()?;
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut high as *mut u64).cast(),
            )
            .result()?;
        }
        let mut graphs = 0u64;
        // SAFETY: reads one attribute of the device's graph memory.
        unsafe {
            sys::cuDeviceGetGraphMemAttribute(
                c.ctx.cu_device(),
                sys::CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_USED_MEM_HIGH,
                (&mut graphs as *mut u64).cast(),
            )
            .result()?;
        }
        Ok(Some(high + graphs))
    }

    /// Sets `count` 2- or 4-byte words of `buffer` from byte `offset` to
    /// `value` (a float's bit pattern, say), queued on the stream.
    pub fn fill_words(
        &self,
        buffer: &Buffer,
        offset: usize,
        count: usize,
        value: Word,
    ) -> Result<()> {
        let size = match value {
            Word::U16(_) => 2,
            Word::U32(_) => 4,
        };
        buffer.check_range("fill", offset, count * size)?;
        if count == 0 {
            return Ok(());
        }
        match (&self.kind, &buffer.mem) {
            (Kind::Cuda(c), Mem::Cuda { ptr, .. }) => {
                c.ctx.bind_to_thread()?;
                let dst = ptr + offset as u64;
                // SAFETY: the range is inside the allocation.
                unsafe {
                    match value {
                        Word::U16(v) => {
                            sys::cuMemsetD16Async(dst, v, count, self.queue(c).cu_stream())
                        }
                        Word::U32(v) => {
                            sys::cuMemsetD32Async(dst, v, count, self.queue(c).cu_stream())
                        }
                    }
                    .result()?;
                }
                Ok(())
            }
            (Kind::Emulator(_), Mem::Emulated(m)) => {
                let m = m.clone();
                self.emulate(Box::new(move || {
                    // SAFETY: under the emulator's lock.
                    let bytes = &mut (unsafe { m.bytes_mut() })[offset..offset + count * size];
                    match value {
                        Word::U16(v) => bytes
                            .chunks_exact_mut(2)
                            .for_each(|w| w.copy_from_slice(&v.to_le_bytes())),
                        Word::U32(v) => bytes
                            .chunks_exact_mut(4)
                            .for_each(|w| w.copy_from_slice(&v.to_le_bytes())),
                    }
                    Ok(())
                }))
            }
            _ => Err(foreign()),
        }
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.refuse_while_capturing("waiting for the device")?;
        if let Kind::Cuda(c) = &self.kind {
            c.stream.synchronize()?;
            c.copy_stream.synchronize()?;
        }
        Ok(())
    }

    /// Launches `kernel`. The arguments are checked against the kernel's
    /// parameters from the source, then marshalled once, as cuLaunchKernel
    /// wants them (an array of pointers to values), for either backend.
    pub fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        let bad = |detail: String| Error::Launch {
            kernel: kernel.into(),
            detail,
        };
        let (family, k) =
            registry::find(kernel).ok_or_else(|| bad("no such kernel in kernels/cuda".into()))?;
        check_args(k.params, args).map_err(bad)?;
        let threads = cfg.threads_per_block();
        if threads == 0 || threads > 1024 || cfg.grid.0 == 0 || cfg.grid.1 == 0 || cfg.grid.2 == 0 {
            return Err(bad(format!(
                "grid {:?} of blocks {:?} (1 to 1024 threads per block)",
                cfg.grid, cfg.block
            )));
        }
        let mut slots: Vec<u64> = Vec::with_capacity(args.len());
        for (i, a) in args.iter().enumerate() {
            slots.push(match *a {
                Arg::Ptr(b, offset) => {
                    if offset > b.bytes {
                        return Err(bad(format!(
                            "argument {i}: offset {offset} past a buffer of {} bytes",
                            b.bytes
                        )));
                    }
                    match (&self.kind, &b.mem) {
                        (Kind::Cuda(_), Mem::Cuda { ptr, .. }) => ptr + offset as u64,
                        (Kind::Emulator(_), Mem::Emulated(m)) => m.address() + offset as u64,
                        _ => return Err(foreign()),
                    }
                }
                Arg::I32(v) => v as u32 as u64,
                Arg::U32(v) => v as u64,
                Arg::F32(v) => v.to_bits() as u64,
                Arg::I64(v) => v as u64,
                Arg::U64(v) => v,
            });
        }
        // Little-endian: a 4-byte parameter reads the low half of its slot.
        let mut params: Vec<*mut c_void> =
            slots.iter_mut().map(|s| (s as *mut u64).cast()).collect();
        self.timed(family.name, || {
            self.launch_marshalled(kernel, family, cfg, args, &mut params)
        })?
    }

    /// The driver (or emulator) call of [`Gpu::launch`].
    fn launch_marshalled(
        &self,
        kernel: &'static str,
        family: &'static registry::Family,
        cfg: LaunchConfig,
        args: &[Arg],
        params: &mut [*mut c_void],
    ) -> Result<()> {
        match &self.kind {
            Kind::Cuda(c) => {
                let f = c.function(family, kernel)?;
                c.ctx.bind_to_thread()?;
                // SAFETY: the arguments match the kernel's parameters in
                // number and kind, and every pointer is a live allocation of
                // this device.
                unsafe {
                    result::launch_kernel(
                        f.cu_function(),
                        cfg.grid,
                        cfg.block,
                        cfg.shared_bytes,
                        self.queue(c).cu_stream(),
                        params,
                    )?;
                }
                Ok(())
            }
            Kind::Emulator(_) => {
                let buffers: Vec<(usize, Arc<Memory>)> = args
                    .iter()
                    .enumerate()
                    .filter_map(|(i, a)| match a {
                        Arg::Ptr(b, _) => match &b.mem {
                            Mem::Emulated(m) => Some((i, m.clone())),
                            Mem::Cuda { .. } => None,
                        },
                        _ => None,
                    })
                    .collect();
                // SAFETY: each parameter points at its 8-byte slot.
                let slots: Vec<u64> = params
                    .iter()
                    .map(|&p| unsafe { *p.cast::<u64>() })
                    .collect();
                self.emulate(Box::new(move || {
                    let mut slots = slots.clone();
                    let mut params: Vec<*mut c_void> =
                        slots.iter_mut().map(|s| (s as *mut u64).cast()).collect();
                    let buffers: Vec<(usize, &Memory)> =
                        buffers.iter().map(|(i, m)| (*i, &**m)).collect();
                    emulator::launch(kernel, cfg, &mut params, &buffers)
                }))
            }
        }
    }

    /// Runs one piece of emulated work under the emulator's lock, or records
    /// it when a capture is in progress.
    fn emulate(&self, work: Recorded) -> Result<()> {
        let Kind::Emulator(lock) = &self.kind else {
            unreachable!("emulated work on a CUDA device")
        };
        let mut state = self.book.state();
        if state.active != 0 {
            state.recorded.push(work);
            return Ok(());
        }
        drop(state);
        let _g = lock.lock().unwrap();
        work()
    }

    /// Whether a capture is in progress.
    pub fn capturing(&self) -> bool {
        self.book.state().active != 0
    }

    fn refuse_while_capturing(&self, what: &str) -> Result<()> {
        if self.capturing() {
            return Err(Error::Capture(format!(
                "{what} during a CUDA-graph capture: a captured step may only queue device work"
            )));
        }
        Ok(())
    }

    /// Starts capturing: until [`Gpu::end_capture`], device work (launches,
    /// device copies and fills, allocations and frees) is recorded instead of
    /// run, and copies to or from the host and waits are refused.
    pub fn begin_capture(&self) -> Result<()> {
        let mut state = self.book.state();
        if state.active != 0 {
            return Err(Error::Capture("a capture is already in progress".into()));
        }
        if let Kind::Cuda(c) = &self.kind {
            // Thread-local: other threads may make driver calls meanwhile,
            // but not use this device: a capture takes its one stream.
            c.stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        }
        state.last += 1;
        state.active = state.last;
        state.live = (0, 0);
        state.freed_early = (0, 0);
        Ok(())
    }

    /// Ends the capture and returns its graph. Fails, and discards what was
    /// captured, when a buffer made during the capture is still live (its
    /// memory belongs to the graph, which rewrites it on every replay) or a
    /// buffer made before it was freed during it (the graph may still use
    /// its memory).
    pub fn end_capture(&self) -> Result<Graph> {
        let mut state = self.book.state();
        if state.active == 0 {
            return Err(Error::Capture("no capture is in progress".into()));
        }
        state.active = 0;
        let recorded = std::mem::take(&mut state.recorded);
        let (live, freed_early) = (state.live, state.freed_early);
        let deferred = std::mem::take(&mut state.deferred);
        drop(state);
        let graph = match &self.kind {
            Kind::Cuda(c) => c
                .stream
                .end_capture(sys::CUgraphInstantiate_flags(0))
                .map(|g| g.map(GraphKind::Cuda)),
            Kind::Emulator(_) => Ok(Some(GraphKind::Emulated(recorded))),
        };
        for (ptr, stream) in deferred {
            // SAFETY: as in `Buffer::drop`, whose free this is.
            unsafe {
                let _ = sys::cuCtxSetCurrent(stream.context().cu_ctx());
                let _ = result::free_async(ptr, stream.cu_stream());
            }
        }
        if live.0 > 0 {
            return Err(Error::Capture(format!(
                "{} buffers ({} bytes) made during the capture outlive it; a captured step must leave its results in buffers made before the capture",
                live.0, live.1
            )));
        }
        if freed_early.0 > 0 {
            return Err(Error::Capture(format!(
                "{} buffers ({} bytes) made before the capture were freed during it; the graph could still use their memory",
                freed_early.0, freed_early.1
            )));
        }
        let kind = graph?.ok_or_else(|| Error::Capture("the capture recorded nothing".into()))?;
        if let GraphKind::Cuda(g) = &kind {
            g.upload()?;
        }
        Ok(Graph { kind })
    }

    /// Queues one replay of `graph`, a capture of this device.
    pub fn launch_graph(&self, graph: &Graph) -> Result<()> {
        self.refuse_while_capturing("replaying a graph")?;
        match (&self.kind, &graph.kind) {
            (Kind::Cuda(_), GraphKind::Cuda(g)) => Ok(g.launch()?),
            (Kind::Emulator(lock), GraphKind::Emulated(work)) => {
                let _g = lock.lock().unwrap();
                work.iter().try_for_each(|w| w())
            }
            _ => Err(foreign()),
        }
    }

    /// The emulator's stand-in for a library it lacks (cuDNN, cuBLAS), in
    /// stream order like a launch (and recorded like one during a capture):
    /// `op` gets copies of the `inputs` byte ranges (buffer, offset, length)
    /// and returns the bytes of each of `outputs`. Its copies are not counted
    /// in [`Gpu::transfers`]: on a GPU the library reads device memory.
    pub fn host_op(
        &self,
        inputs: &[(&Buffer, usize, usize)],
        outputs: &[(&Buffer, usize, usize)],
        op: impl Fn(Vec<Vec<u8>>) -> std::result::Result<Vec<Vec<u8>>, String> + Send + 'static,
    ) -> Result<()> {
        let (inputs, outputs) = (emulated_ranges(inputs)?, emulated_ranges(outputs)?);
        self.emulate(Box::new(move || {
            // SAFETY (both): under the emulator's lock, one slice at a time.
            let copies = inputs
                .iter()
                .map(|(m, offset, len)| (unsafe { m.bytes_mut() })[*offset..offset + len].to_vec())
                .collect();
            let results = op(copies).map_err(|detail| Error::Emulator {
                kernel: "host stand-in".into(),
                detail,
            })?;
            for ((m, offset, len), bytes) in outputs.iter().zip(results) {
                if bytes.len() != *len {
                    return Err(Error::Emulator {
                        kernel: "host stand-in".into(),
                        detail: format!("{} bytes for an output of {len}", bytes.len()),
                    });
                }
                (unsafe { m.bytes_mut() })[*offset..offset + len].copy_from_slice(&bytes);
            }
            Ok(())
        }))
    }

    /// Compiles (or loads from the cache) and loads every kernel family;
    /// returns (family, seconds, from cache). The emulator has nothing to load.
    pub fn load_all(&self) -> Result<Vec<(&'static str, f64, bool)>> {
        let Kind::Cuda(c) = &self.kind else {
            return Ok(Vec::new());
        };
        registry::FAMILIES
            .iter()
            .map(|f| {
                let t = std::time::Instant::now();
                let cached = c.module(f)?.1;
                Ok((f.name, t.elapsed().as_secs_f64(), cached))
            })
            .collect()
    }
}

/// The emulated memory behind byte ranges of buffers, checked.
fn emulated_ranges(list: &[(&Buffer, usize, usize)]) -> Result<Vec<(Arc<Memory>, usize, usize)>> {
    list.iter()
        .map(|&(b, offset, len)| {
            b.check_range("host stand-in", offset, len)?;
            match &b.mem {
                Mem::Emulated(m) => Ok((m.clone(), offset, len)),
                Mem::Cuda { .. } => Err(Error::Launch {
                    kernel: "host stand-in".into(),
                    detail: "host stand-ins run on the emulator only".into(),
                }),
            }
        })
        .collect()
}

fn foreign() -> Error {
    Error::Launch {
        kernel: "buffer".into(),
        detail: "a buffer of another device".into(),
    }
}

fn check_args(params: &[Param], args: &[Arg]) -> Result<(), String> {
    if params.len() != args.len() {
        return Err(format!(
            "{} arguments for {} parameters",
            args.len(),
            params.len()
        ));
    }
    for (i, (p, a)) in params.iter().zip(args).enumerate() {
        if *p != a.kind() {
            return Err(format!(
                "argument {i} is {:?}, the kernel takes {p:?}",
                a.kind()
            ));
        }
    }
    Ok(())
}

impl CudaParts {
    /// The family's module, loaded once; also whether its CUBIN came from the cache.
    fn module(&self, family: &'static registry::Family) -> Result<(Arc<CudaModule>, bool)> {
        let mut modules = self.modules.lock().unwrap();
        if let Some(m) = modules.get(family.name) {
            return Ok((m.clone(), true));
        }
        let compiled = nvrtc::compile(family, &self.arch)?;
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(compiled.cubin))?;
        modules.insert(family.name, module.clone());
        Ok((module, compiled.cached))
    }

    fn function(
        &self,
        family: &'static registry::Family,
        kernel: &'static str,
    ) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().unwrap().get(kernel) {
            return Ok(f.clone());
        }
        let f = self.module(family)?.0.load_function(kernel)?;
        self.functions.lock().unwrap().insert(kernel, f.clone());
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elementwise_grid_covers_every_element_and_is_capped() {
        let c = LaunchConfig::for_elements(1000, 256);
        assert_eq!(c.grid, (4, 1, 1));
        assert_eq!(LaunchConfig::for_elements(0, 256).grid, (1, 1, 1));
        assert_eq!(LaunchConfig::for_elements(1, 256).grid, (1, 1, 1));
        assert_eq!(
            LaunchConfig::for_elements(1 << 30, 256).grid,
            (MAX_STRIDE_BLOCKS as u32, 1, 1)
        );
        assert_eq!(
            LaunchConfig::blocks(3, 64).with_shared(128).shared_bytes,
            128
        );
    }

    #[test]
    fn arguments_are_checked_against_the_source() {
        let gpu = Gpu::emulator();
        let x = gpu.alloc(16).unwrap();
        let err = gpu.launch(
            "relu_forward_f32",
            LaunchConfig::for_elements(4, 32),
            &[Arg::ptr(&x), Arg::I64(4)],
        );
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("2 arguments for 3 parameters")
        );
        let err = gpu.launch(
            "relu_forward_f32",
            LaunchConfig::for_elements(4, 32),
            &[Arg::ptr(&x), Arg::ptr(&x), Arg::I32(4)],
        );
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("argument 2 is I32, the kernel takes I64")
        );
        let err = gpu.launch("no_such", LaunchConfig::for_elements(4, 32), &[]);
        assert!(err.unwrap_err().to_string().contains("no such kernel"));
        let err = gpu.launch(
            "relu_forward_f32",
            LaunchConfig::blocks(1, 2048),
            &[Arg::ptr(&x), Arg::ptr(&x), Arg::I64(4)],
        );
        assert!(err.unwrap_err().to_string().contains("1 to 1024 threads"));
    }

    fn floats(gpu: &Gpu, b: &Buffer) -> Vec<f32> {
        let mut out = vec![0u8; b.len_bytes()];
        gpu.read(b, 0, &mut out).unwrap();
        bytemuck::cast_slice(&out).to_vec()
    }

    #[test]
    fn a_capture_records_and_each_replay_reads_the_buffers_anew() {
        let gpu = Gpu::emulator();
        let x = gpu
            .upload(bytemuck::cast_slice(&[-1.0f32, 2.0, -3.0, 4.0]))
            .unwrap();
        let y = gpu.alloc_zeroed(16).unwrap();
        gpu.begin_capture().unwrap();
        let relu = |dst: &Buffer| {
            gpu.launch(
                "relu_forward_f32",
                LaunchConfig::for_elements(4, 32),
                &[Arg::ptr(&x), Arg::ptr(dst), Arg::I64(4)],
            )
        };
        // A temporary made and freed inside the capture belongs to the graph.
        let scratch = gpu.alloc(16).unwrap();
        relu(&scratch).unwrap();
        gpu.copy(&scratch, 0, &y, 0, 16).unwrap();
        drop(scratch);
        let graph = gpu.end_capture().unwrap();
        assert_eq!(floats(&gpu, &y), [0.0; 4], "capturing ran the work");
        gpu.launch_graph(&graph).unwrap();
        assert_eq!(floats(&gpu, &y), [0.0, 2.0, 0.0, 4.0]);
        gpu.write(&x, 0, bytemuck::cast_slice(&[5.0f32, -6.0, 7.0, -8.0]))
            .unwrap();
        gpu.launch_graph(&graph).unwrap();
        assert_eq!(floats(&gpu, &y), [5.0, 0.0, 7.0, 0.0]);
    }

    #[test]
    fn a_capture_refuses_what_a_cuda_graph_cannot_hold() {
        let gpu = Gpu::emulator();
        let before = gpu.alloc(8).unwrap();
        gpu.begin_capture().unwrap();
        let refused = |e: Error, what: &str| {
            let text = e.to_string();
            assert!(text.contains(what), "{text}");
        };
        refused(
            gpu.write(&before, 0, &[1]).unwrap_err(),
            "a copy from the host",
        );
        refused(
            gpu.read(&before, 0, &mut [0]).unwrap_err(),
            "a copy to the host",
        );
        refused(gpu.synchronize().unwrap_err(), "waiting for the device");
        refused(gpu.begin_capture().unwrap_err(), "already in progress");
        let kept = gpu.alloc(8).unwrap();
        refused(
            gpu.end_capture().unwrap_err(),
            "1 buffers (8 bytes) made during the capture outlive it",
        );
        drop(kept);

        gpu.begin_capture().unwrap();
        drop(before);
        refused(
            gpu.end_capture().unwrap_err(),
            "made before the capture were freed during it",
        );
        refused(gpu.end_capture().unwrap_err(), "no capture is in progress");
        // Outside a capture everything works again.
        let b = gpu.upload(&[7]).unwrap();
        let mut out = [0u8];
        gpu.read(&b, 0, &mut out).unwrap();
        assert_eq!(out, [7]);
    }

    #[test]
    fn host_stand_ins_run_in_order_and_are_recorded() {
        let gpu = Gpu::emulator();
        let x = gpu.upload(&[1, 2, 3]).unwrap();
        let y = gpu.alloc(3).unwrap();
        let double = |b: Vec<Vec<u8>>| Ok(vec![b[0].iter().map(|v| v * 2).collect()]);
        gpu.host_op(&[(&x, 0, 3)], &[(&y, 0, 3)], double).unwrap();
        let mut out = [0u8; 3];
        gpu.read(&y, 0, &mut out).unwrap();
        assert_eq!(out, [2, 4, 6]);
        assert_eq!(
            gpu.transfers().to_host,
            (1, 3),
            "the stand-in's copies are not transfers"
        );
        gpu.begin_capture().unwrap();
        gpu.host_op(&[(&x, 1, 2)], &[(&y, 0, 2)], double).unwrap();
        let graph = gpu.end_capture().unwrap();
        gpu.write(&x, 0, &[0, 10, 20]).unwrap();
        gpu.launch_graph(&graph).unwrap();
        gpu.read(&y, 0, &mut out).unwrap();
        assert_eq!(out, [20, 40, 6]);
        let wrong = gpu.host_op(&[(&x, 0, 3)], &[(&y, 0, 2)], double);
        assert!(
            wrong
                .unwrap_err()
                .to_string()
                .contains("3 bytes for an output of 2")
        );
    }

    #[test]
    fn copies_check_their_ranges() {
        let gpu = Gpu::emulator();
        let b = gpu.upload(&[1, 2, 3, 4]).unwrap();
        let mut out = [0u8; 2];
        gpu.read(&b, 2, &mut out).unwrap();
        assert_eq!(out, [3, 4]);
        assert!(gpu.read(&b, 3, &mut out).is_err());
        assert!(gpu.write(&b, 4, &[1]).is_err());
    }
}
