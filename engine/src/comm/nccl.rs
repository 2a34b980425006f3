//! NCCL's all-reduce on a CUDA device, through cudarc's bindings: the
//! transport of data parallel across GPUs and machines.
//!
//! No call here can hang. The communicator is created non-blocking, and
//! every wait — its set-up, each collective until the device has finished
//! it — polls NCCL's asynchronous error state, an [`Alarm`] (raised by the
//! trainer's watch when another rank's process ends) and a deadline. On an
//! error, the alarm or the deadline, the communicator is aborted
//! (`ncclCommAbort`, which also ends its kernels still waiting on the
//! stream) and the error names this rank and what is known of the others.
//!
//! NCCL is loaded on first use, like cuDNN and cuBLAS; a missing or too old
//! NCCL is an error, never a panic. It is needed only with more than one
//! process: one GPU trains without it.

use super::{Alarm, BUCKET_ELEMENTS, Communicator};
use crate::error::{Error, Result};
use crate::{DType, Device, Tensor};
use cudarc::driver::CudaStream;
use cudarc::nccl::sys;
use kernels::{Buffer, Gpu};
use std::ffi::{CStr, c_void};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a collective in flight may still finish after the alarm: the
/// last collective of a run completes on every rank at about the time the
/// first rank to finish exits, which raises the others' alarms.
const ALARM_GRACE: Duration = Duration::from_secs(2);

/// The oldest NCCL the engine runs with (the bindings' non-blocking
/// configuration and error calls).
const MIN_VERSION: (i32, i32) = (2, 18);

/// Events that only order streams.
const NO_TIMING: cudarc::driver::sys::CUevent_flags =
    cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING;

/// The bytes of an NCCL unique id.
pub const ID_BYTES: usize = 128;

fn unavailable(why: String) -> Error {
    Error::Gpu(kernels::Error::Unavailable(why))
}

/// NCCL's version as (major, minor, patch), or why it cannot be used: not
/// found, or older than 2.18.
pub fn version() -> Result<(i32, i32, i32)> {
    // SAFETY: a presence check only tries to load the library.
    if !unsafe { sys::is_culib_present() } {
        return Err(unavailable(
            "NCCL not found: data parallel on more than one GPU needs it (PyTorch's environment ships it under site-packages/nvidia/nccl/lib; or set M2T_CUDA_LIBS to its folder); `trainer info` shows what was found".into(),
        ));
    }
    let mut code = 0;
    // SAFETY: present, checked above; reads the version only.
    unsafe { sys::ncclGetVersion(&mut code) };
    let v = kernels::probe::nccl_version(code);
    if (v.0, v.1) < MIN_VERSION {
        return Err(unavailable(format!(
            "NCCL {}.{}.{} is loaded; the engine needs NCCL {}.{} or later",
            v.0, v.1, v.2, MIN_VERSION.0, MIN_VERSION.1
        )));
    }
    Ok(v)
}

/// NCCL's text for a status code.
fn status_text(status: sys::ncclResult_t) -> String {
    // SAFETY: NCCL returns a static string for every code.
    let text = unsafe { CStr::from_ptr(sys::ncclGetErrorString(status)) };
    format!("{status:?} ({})", text.to_string_lossy())
}

/// A new NCCL unique id, which rank 0 creates and hands to the others
/// before they create their communicators. Creating it starts NCCL's own
/// bootstrap listener in this process (rank 0 must live on); no GPU needed.
pub fn unique_id() -> Result<Vec<u8>> {
    version()?;
    let mut id = sys::ncclUniqueId {
        internal: [0; ID_BYTES],
    };
    // SAFETY: NCCL is present; `id` is a valid place for the result.
    let status = unsafe { sys::ncclGetUniqueId(&mut id) };
    if status != sys::ncclResult_t::ncclSuccess {
        return Err(Error::Comm(format!(
            "ncclGetUniqueId failed: {}",
            status_text(status)
        )));
    }
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

/// A non-blocking communicator's configuration, the rest left to NCCL (the
/// fields of `NCCL_CONFIG_INITIALIZER`). It says version 2.28: NCCL reads
/// the fields that version has, a newer NCCL leaving its own additions at
/// their defaults and an older one stopping at the fields it knows.
fn nonblocking_config() -> sys::ncclConfig_t {
    const UNDEF: i32 = i32::MIN;
    sys::ncclConfig_t {
        size: std::mem::size_of::<sys::ncclConfig_t>(),
        magic: 0xcafe_beef,
        version: 22800,
        blocking: 0,
        cgaClusterSize: UNDEF,
        minCTAs: UNDEF,
        maxCTAs: UNDEF,
        netName: std::ptr::null(),
        splitShare: UNDEF,
        trafficClass: UNDEF,
        commName: std::ptr::null(),
        collnetEnable: UNDEF,
        CTAPolicy: UNDEF,
        shrinkShare: UNDEF,
        nvlsCTAs: UNDEF,
        nChannelsPerNetPeer: UNDEF,
        nvlinkCentricSched: UNDEF,
        graphUsageMode: UNDEF,
        numRmaCtx: UNDEF,
        maxP2pPeers: UNDEF,
    }
}

/// Sleeps between polls: briefly at first (a collective usually finishes in
/// microseconds), then up to a millisecond.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_micros(10))
    }

    fn pause(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Duration::from_millis(1));
    }
}

/// One rank's NCCL communicator on its CUDA device. Collectives run on the
/// device's compute stream, in order with the engine's kernels, and can be
/// captured in a CUDA graph. Dropping it aborts the communicator (local and
/// immediate; every collective has completed by then on a clean end).
pub struct NcclComm {
    /// Null once aborted.
    comm: sys::ncclComm_t,
    rank: usize,
    world: usize,
    device: Device,
    gpu: Arc<Gpu>,
    timeout: Duration,
    alarm: Alarm,
    /// Device memory for host all-reduces, grown as needed.
    staging: Option<Buffer>,
    /// The stream [`Communicator::start_mean`] queues its all-reduces on,
    /// so they run beside the backward pass on the compute stream.
    side: Arc<CudaStream>,
    /// Whether all-reduces were started on `side` since the last wait.
    started: bool,
}

// SAFETY: the communicator is used by one thread at a time (`&mut self`),
// on the device's one compute stream; NCCL allows any thread to do so.
unsafe impl Send for NcclComm {}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NcclComm(rank {} of {} on {})",
            self.rank, self.world, self.device
        )
    }
}

impl NcclComm {
    /// Joins the communicator of `world` ranks that `id` (from rank 0's
    /// [`unique_id`]) names, as `rank`, on CUDA device `device`. Returns
    /// once every rank has joined; fails after `timeout`, or at once when
    /// `alarm` is raised, with the communicator aborted. `timeout` also
    /// bounds each later wait for a collective.
    pub fn new(
        device: Device,
        id: &[u8],
        (rank, world): (usize, usize),
        timeout: Duration,
        alarm: Alarm,
    ) -> Result<NcclComm> {
        if !matches!(device, Device::Cuda(_)) {
            return Err(Error::Device {
                op: "NCCL communicator (CUDA devices only)",
                device,
            });
        }
        if rank >= world {
            return Err(Error::Comm(format!(
                "rank {rank} of a group of {world}: expected a rank below the group's size"
            )));
        }
        let internal: [u8; ID_BYTES] = id.try_into().map_err(|_| {
            Error::Comm(format!(
                "an NCCL id has {ID_BYTES} bytes, this one {}",
                id.len()
            ))
        })?;
        version()?;
        let gpu = crate::device::gpu(device)?;
        let parts = gpu.cuda_parts().expect("a CUDA device");
        // NCCL takes the device of the thread's current context.
        parts.ctx.bind_to_thread().map_err(kernels::Error::from)?;
        let id = sys::ncclUniqueId {
            internal: internal.map(|b| b as _),
        };
        let mut config = nonblocking_config();
        let side = parts.ctx.new_stream().map_err(kernels::Error::from)?;
        let mut nccl = NcclComm {
            comm: std::ptr::null_mut(),
            rank,
            world,
            device,
            gpu,
            timeout,
            alarm,
            staging: None,
            side,
            started: false,
        };
        // SAFETY: `nccl.comm` and `config` are valid for the call; the id
        // is NCCL's. The communicator may be returned still in progress.
        let status = unsafe {
            sys::ncclCommInitRankConfig(&mut nccl.comm, world as i32, id, rank as i32, &mut config)
        };
        nccl.settle("set-up (ncclCommInitRankConfig)", status)?;
        Ok(nccl)
    }

    /// The communicator's asynchronous state: `ncclSuccess`,
    /// `ncclInProgress`, or the error that broke it.
    fn state(&self) -> sys::ncclResult_t {
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: a live communicator; `state` is a valid place.
        let status = unsafe { sys::ncclCommGetAsyncError(self.comm, &mut state) };
        if status == sys::ncclResult_t::ncclSuccess {
            state
        } else {
            status
        }
    }

    /// Aborts the communicator and returns the error `why`, naming this
    /// rank, with NCCL's last message and the alarm's reason if raised.
    fn abort(&mut self, why: String) -> Error {
        let mut text = format!("rank {} of {}: {why}", self.rank, self.world);
        if !self.comm.is_null() {
            // SAFETY: a live communicator; NCCL returns a string it owns.
            let last = unsafe { CStr::from_ptr(sys::ncclGetLastError(self.comm)) };
            let last = last.to_string_lossy();
            if !last.is_empty() {
                text += &format!("; NCCL says: {}", last.trim());
            }
            // SAFETY: a live communicator, aborted once; nulled below.
            unsafe { sys::ncclCommAbort(self.comm) };
            self.comm = std::ptr::null_mut();
        }
        if let Some(alarm) = self.alarm.raised()
            && !why.contains(&alarm)
        {
            text += &format!("; {alarm}");
        }
        Error::Comm(text)
    }

    /// Fails if the communicator was aborted or the alarm is raised:
    /// checked before each collective, which could never complete then.
    fn ready(&mut self, what: &str) -> Result<()> {
        if self.comm.is_null() {
            return Err(Error::Comm(format!(
                "rank {} of {}: {what} on an NCCL communicator aborted after an earlier failure",
                self.rank, self.world
            )));
        }
        match self.alarm.raised() {
            Some(why) => Err(self.abort(format!("{what} not started: {why}"))),
            None => Ok(()),
        }
    }

    /// Completes a call that returned `status` on the non-blocking
    /// communicator: polls its state until it settles.
    fn settle(&mut self, call: &str, status: sys::ncclResult_t) -> Result<()> {
        use sys::ncclResult_t::{ncclInProgress, ncclSuccess};
        match status {
            ncclSuccess => Ok(()),
            ncclInProgress => {
                self.poll_until(call, Duration::ZERO, |nccl| Ok(nccl.state() == ncclSuccess))
            }
            _ => Err(self.abort(format!("{call} failed: {}", status_text(status)))),
        }
    }

    /// Waits until the device has run everything queued so far (this
    /// rank's collectives among it). The alarm leaves a collective in
    /// flight [`ALARM_GRACE`] to finish. Nothing to wait for while a CUDA
    /// graph is being captured: the work is only recorded.
    fn wait_for_device(&mut self, what: &str) -> Result<()> {
        if self.gpu.capturing() {
            return Ok(());
        }
        let parts = self.parts();
        let done = parts
            .stream
            .record_event(Some(NO_TIMING))
            .map_err(kernels::Error::from)?;
        self.poll_until(what, ALARM_GRACE, |_| {
            Ok(done.try_is_complete().map_err(kernels::Error::from)?)
        })
    }

    /// Polls until `done` says so. Fails, with the communicator aborted,
    /// when NCCL reports an error, when the alarm has been raised for
    /// `grace`, or at the timeout.
    fn poll_until(
        &mut self,
        what: &str,
        grace: Duration,
        mut done: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut alarmed: Option<Instant> = None;
        let mut backoff = Backoff::new();
        loop {
            if done(self)? {
                return Ok(());
            }
            let state = self.state();
            if !matches!(
                state,
                sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress
            ) {
                return Err(self.abort(format!("{what} failed: {}", status_text(state))));
            }
            if let Some(why) = self.alarm.raised()
                && alarmed.get_or_insert_with(Instant::now).elapsed() >= grace
            {
                return Err(self.abort(format!("{what} stopped: {why}")));
            }
            if Instant::now() >= deadline {
                return Err(self.abort(format!(
                    "{what} did not finish within {:.0?}: another rank is not taking part",
                    self.timeout
                )));
            }
            backoff.pause();
        }
    }

    /// Queues the in-place mean over the ranks of the `count` f32 values at
    /// device address `ptr`, [`BUCKET_ELEMENTS`] per NCCL call, on `stream`
    /// (`None`: the compute stream).
    fn queue_mean(&mut self, ptr: u64, count: usize, stream: Option<&CudaStream>) -> Result<()> {
        self.ready("an all-reduce")?;
        let parts = self.parts();
        let stream = stream.unwrap_or(&parts.stream).cu_stream();
        for first in (0..count).step_by(BUCKET_ELEMENTS) {
            let len = BUCKET_ELEMENTS.min(count - first);
            let at = (ptr + (first * 4) as u64) as *mut c_void;
            // SAFETY: `at..at + len` f32 values lie in a live device buffer
            // of this communicator's device; the stream is its compute stream.
            let status = unsafe {
                sys::ncclAllReduce(
                    at,
                    at,
                    len,
                    sys::ncclDataType_t::ncclFloat32,
                    sys::ncclRedOp_t::ncclAvg,
                    self.comm,
                    stream as sys::cudaStream_t,
                )
            };
            self.settle("ncclAllReduce", status)?;
        }
        Ok(())
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        if !self.comm.is_null() {
            // SAFETY: a live communicator, aborted once.
            unsafe { sys::ncclCommAbort(self.comm) };
        }
    }
}

impl NcclComm {
    /// The device's context and streams: a communicator exists only on a
    /// CUDA device ([`NcclComm::new`] refuses others).
    fn parts(&self) -> &kernels::CudaParts {
        self.gpu.cuda_parts().expect("a CUDA device")
    }

    /// Refuses a tensor the all-reduce cannot work on in place.
    fn check_buffer(&self, buf: &mut Tensor) -> Result<()> {
        buf.expect_dtype("all_reduce", &[DType::F32])?;
        if buf.device() != self.device {
            return Err(Error::Device {
                op: "all_reduce (a tensor on another device than the communicator's)",
                device: buf.device(),
            });
        }
        // In place: the buffer must not be shared by live tensors.
        buf.gpu_mut()?;
        Ok(())
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    /// Through a device buffer: uploaded, all-reduced, read back.
    fn all_reduce_mean_host(&mut self, data: &mut [f32]) -> Result<()> {
        let bytes = std::mem::size_of_val(data);
        if self.staging.as_ref().is_none_or(|s| s.len_bytes() < bytes) {
            self.staging = None; // free the old one first
            self.staging = Some(self.gpu.alloc(bytes.max(4))?);
        }
        let staging = self.staging.take().expect("allocated above");
        let ptr = staging.device_ptr().expect("CUDA memory");
        let result = (|| {
            self.gpu.write(&staging, 0, bytemuck::cast_slice(data))?;
            self.queue_mean(ptr, data.len(), None)?;
            self.wait_for_device("a host all-reduce")?;
            self.gpu
                .read(&staging, 0, bytemuck::cast_slice_mut(data))
                .map_err(Error::from)
        })();
        self.staging = Some(staging);
        result
    }

    /// The device buffer itself, in place, on the compute stream; waits
    /// for it (watching for failures) unless a graph is being captured.
    fn all_reduce_mean(&mut self, buf: &mut Tensor) -> Result<()> {
        self.check_buffer(buf)?;
        self.queue_mean(buf.device_ptr(), buf.numel(), None)?;
        self.wait_for_device("a gradient all-reduce")
    }

    /// Elements `range` of the device buffer, in place, on the side stream
    /// once the compute stream has reached this point: the kernels queued
    /// after it (the rest of the backward) run beside the all-reduce.
    fn start_mean(&mut self, buf: &mut Tensor, range: Range<usize>) -> Result<()> {
        self.check_buffer(buf)?;
        if range.end > buf.numel() {
            return Err(Error::Comm(format!(
                "all-reduce of elements {range:?} of a buffer of {}",
                buf.numel()
            )));
        }
        let parts = self.parts();
        let reached = parts
            .stream
            .record_event(Some(NO_TIMING))
            .map_err(kernels::Error::from)?;
        self.side.wait(&reached).map_err(kernels::Error::from)?;
        let side = self.side.clone();
        let first = buf.device_ptr() + (range.start * 4) as u64;
        self.queue_mean(first, range.len(), Some(&side))?;
        self.started = true;
        Ok(())
    }

    /// Orders the compute stream after the started all-reduces, then waits
    /// for them as [`Self::all_reduce_mean`] does (not while capturing).
    fn wait(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.started) {
            return Ok(());
        }
        let parts = self.parts();
        let done = self
            .side
            .record_event(Some(NO_TIMING))
            .map_err(kernels::Error::from)?;
        parts.stream.wait(&done).map_err(kernels::Error::from)?;
        self.wait_for_device("the gradient all-reduces")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_is_non_blocking_and_leaves_the_rest_to_nccl() {
        let c = nonblocking_config();
        assert_eq!((c.magic, c.version, c.blocking), (0xcafe_beef, 22800, 0));
        assert_eq!(c.size, std::mem::size_of::<sys::ncclConfig_t>());
        assert!(c.netName.is_null() && c.commName.is_null());
        assert_eq!(c.minCTAs, i32::MIN);
    }

    #[test]
    fn a_communicator_is_refused_off_cuda_and_with_a_bad_id_or_rank() {
        let alarm = Alarm::default();
        let t = Duration::from_secs(1);
        for device in [Device::Cpu, Device::Emulator] {
            let err = NcclComm::new(device, &[0; ID_BYTES], (0, 1), t, alarm.clone())
                .unwrap_err()
                .to_string();
            assert!(err.contains("CUDA devices only"), "{err}");
        }
        let err = NcclComm::new(Device::Cuda(0), &[0; 16], (0, 1), t, alarm.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains("128 bytes, this one 16"), "{err}");
        let err = NcclComm::new(Device::Cuda(0), &[0; ID_BYTES], (2, 2), t, alarm)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rank 2 of a group of 2"), "{err}");
    }
}
