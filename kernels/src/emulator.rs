//! The Rust side of the SIMT emulator (`kernels/emu/`): host memory with
//! guard zones, the FFI launch, and a per-thread log of launched kernels that
//! tests use to prove which kernels they ran.

use crate::gpu::LaunchConfig;
use crate::{Error, Result};
use std::cell::{RefCell, UnsafeCell};
use std::ffi::{CString, c_char, c_void};

unsafe extern "C" {
    fn emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared_bytes: usize,
        args: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
}

/// Guard bytes on each side of an emulated buffer. They hold 0xFF (NaN as
/// any float type) so out-of-bounds reads poison results, and a launch that
/// changes them fails, naming the kernel and the argument.
const GUARD: usize = 256;
const POISON: u8 = 0xFF;

/// Host memory standing in for a device allocation, 16-byte aligned.
#[derive(Debug)]
pub(crate) struct Memory {
    // u128 words for alignment; accessed as bytes.
    words: UnsafeCell<Vec<u128>>,
    bytes: usize,
}

// SAFETY: the bytes are only touched under the emulator's lock (see
// `all_bytes`), so a recorded step may hold memory on any thread.
unsafe impl Send for Memory {}
unsafe impl Sync for Memory {}

impl Memory {
    pub(crate) fn new(bytes: usize) -> Memory {
        let words = (2 * GUARD + bytes).div_ceil(16);
        Memory {
            words: UnsafeCell::new(vec![u128::MAX; words]),
            bytes,
        }
    }

    /// The whole allocation, guards included.
    ///
    /// # Safety
    /// The caller holds the emulator's lock and keeps no other reference.
    // Device memory is shared and written through by kernels; the lock, not
    // the borrow checker, serialises access.
    #[allow(clippy::mut_from_ref)]
    unsafe fn all_bytes(&self) -> &mut [u8] {
        // SAFETY: per the contract, this is the only live reference.
        unsafe {
            let v = &mut *self.words.get();
            std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 16)
        }
    }

    /// The usable bytes.
    ///
    /// # Safety
    /// As for [`Memory::all_bytes`].
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: forwarded contract.
        unsafe { &mut self.all_bytes()[GUARD..GUARD + self.bytes] }
    }

    /// Fills the usable bytes with poison, as on allocation (under the lock).
    pub(crate) fn poison(&self) {
        // SAFETY: called under the emulator's lock, by a replay.
        unsafe { self.bytes_mut() }.fill(POISON);
    }

    pub(crate) fn address(&self) -> u64 {
        // SAFETY: only the address is taken.
        unsafe { (*self.words.get()).as_ptr() as u64 + GUARD as u64 }
    }

    /// Whether the guards are intact; restores them either way (under the lock).
    fn guards_intact(&self) -> bool {
        // SAFETY: called under the emulator's lock after the launch finished.
        let all = unsafe { self.all_bytes() };
        let end = GUARD + self.bytes;
        let intact = all[..GUARD].iter().chain(&all[end..]).all(|&b| b == POISON);
        all[..GUARD].fill(POISON);
        all[end..].fill(POISON);
        intact
    }
}

thread_local! {
    static LAUNCHED: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

/// The kernels this thread launched on the emulator since the last call, in order.
pub fn take_launch_log() -> Vec<&'static str> {
    LAUNCHED.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

/// Runs one launch; `buffers` are the pointer arguments (index, memory).
pub(crate) fn launch(
    kernel: &'static str,
    cfg: LaunchConfig,
    params: &mut [*mut c_void],
    buffers: &[(usize, &Memory)],
) -> Result<()> {
    let name = CString::new(kernel).unwrap();
    let grid = [cfg.grid.0, cfg.grid.1, cfg.grid.2];
    let block = [cfg.block.0, cfg.block.1, cfg.block.2];
    let mut err = vec![0 as c_char; 1024];
    // SAFETY: `params` points at one value per kernel parameter (checked by
    // the caller against the source), pointer values address live memory.
    let failed = unsafe {
        emu_launch(
            name.as_ptr(),
            grid.as_ptr(),
            block.as_ptr(),
            cfg.shared_bytes as usize,
            params.as_mut_ptr(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    LAUNCHED.with(|l| l.borrow_mut().push(kernel));
    if failed != 0 {
        let bytes: Vec<u8> = err
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        return Err(Error::Emulator {
            kernel: kernel.into(),
            detail: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    let broken: Vec<String> = buffers
        .iter()
        .filter(|(_, m)| !m.guards_intact())
        .map(|(i, m)| format!("#{i} ({} bytes)", m.bytes))
        .collect();
    if !broken.is_empty() {
        return Err(Error::Emulator {
            kernel: kernel.into(),
            detail: format!(
                "wrote out of bounds of buffer argument {}",
                broken.join(", ")
            ),
        });
    }
    Ok(())
}
