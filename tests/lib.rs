//! Cross-crate integration tests live in `tests/`; this library holds what
//! several of them share: the GPU parity cases ([`parity`]), run on the SIMT
//! emulator by `tests/emulated.rs` and on a CUDA GPU by `tests/cuda_parity.rs`.

pub mod parity;

/// The host-device copies `f` makes on `device`: (count, bytes) to the
/// device, then to the host. The count is the device's, for the whole
/// process: nothing else may use the device meanwhile.
pub fn transfers_during(device: engine::Device, f: impl FnOnce()) -> ((u64, u64), (u64, u64)) {
    let gpu = engine::gpu_launcher(device).unwrap();
    let before = gpu.transfers();
    f();
    let after = gpu.transfers();
    let moved = |(n1, b1): (u64, u64), (n0, b0): (u64, u64)| (n1 - n0, b1 - b0);
    (
        moved(after.to_device, before.to_device),
        moved(after.to_host, before.to_host),
    )
}
