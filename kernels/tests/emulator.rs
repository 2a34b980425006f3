//! The emulator itself: known answers, and misuse it must catch.

use kernels::{Arg, Buffer, Gpu, LaunchConfig};

fn upload(gpu: &Gpu, v: &[f32]) -> Buffer {
    gpu.upload(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>())
        .unwrap()
}

fn download(gpu: &Gpu, b: &Buffer) -> Vec<f32> {
    let mut bytes = vec![0u8; b.len_bytes()];
    gpu.read(b, 0, &mut bytes).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn block_reduction_sums_ragged_blocks() {
    let gpu = Gpu::emulator();
    let n = 1000; // 3 full blocks of 256 and a ragged one
    let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
    let xb = upload(&gpu, &x);
    let out = gpu.alloc(4 * 4).unwrap();
    gpu.launch(
        "selftest_block_sum",
        LaunchConfig::blocks(4, 256),
        &[Arg::ptr(&xb), Arg::ptr(&out), Arg::I32(n as i32)],
    )
    .unwrap();
    let got = download(&gpu, &out);
    for (b, g) in got.iter().enumerate() {
        let want: f32 = x[b * 256..((b + 1) * 256).min(n)].iter().sum();
        assert_eq!(*g, want, "block {b}");
    }
}

#[test]
fn block_reduction_with_1024_threads() {
    let gpu = Gpu::emulator();
    let x: Vec<f32> = (0..1024).map(|i| i as f32).collect();
    let xb = upload(&gpu, &x);
    let out = gpu.alloc(4).unwrap();
    gpu.launch(
        "selftest_block_sum",
        LaunchConfig::blocks(1, 1024),
        &[Arg::ptr(&xb), Arg::ptr(&out), Arg::I32(1024)],
    )
    .unwrap();
    assert_eq!(download(&gpu, &out), vec![1023.0 * 1024.0 / 2.0]);
}

#[test]
fn warp_shuffles_move_values_between_lanes() {
    let gpu = Gpu::emulator();
    let x: Vec<f32> = (0..64).map(|i| (i * i % 11) as f32).collect();
    let xb = upload(&gpu, &x);
    let out = gpu.alloc(4 * 4).unwrap();
    let up = gpu.alloc(64 * 4).unwrap();
    gpu.launch(
        "selftest_warp_shuffles",
        LaunchConfig::blocks(1, 64),
        &[Arg::ptr(&xb), Arg::ptr(&out), Arg::ptr(&up)],
    )
    .unwrap();
    let got = download(&gpu, &out);
    let sums: Vec<f32> = x.chunks(32).map(|w| w.iter().sum()).collect();
    assert_eq!(got, vec![sums[0], sums[1], x[7], x[32 + 7]]);
    let up = download(&gpu, &up);
    for i in 0..64 {
        let want = if i % 32 == 0 { x[i] } else { x[i - 1] };
        assert_eq!(up[i], want, "lane {i}");
    }
}

#[test]
fn barrier_orders_a_shared_memory_exchange() {
    let gpu = Gpu::emulator();
    let x: Vec<f32> = (0..96).map(|i| i as f32).collect();
    let xb = upload(&gpu, &x);
    let y = gpu.alloc(96 * 4).unwrap();
    let cfg = LaunchConfig::blocks(3, 32).with_shared(32 * 4);
    gpu.launch(
        "selftest_reverse_in_block",
        cfg,
        &[Arg::ptr(&xb), Arg::ptr(&y)],
    )
    .unwrap();
    let want: Vec<f32> = x.chunks(32).flat_map(|c| c.iter().rev().copied()).collect();
    assert_eq!(download(&gpu, &y), want);

    // Without the barrier, early threads read slots later threads have not
    // written yet: poisoned shared memory makes the race visible as NaN.
    gpu.launch(
        "selftest_reverse_missing_barrier",
        cfg,
        &[Arg::ptr(&xb), Arg::ptr(&y)],
    )
    .unwrap();
    let broken = download(&gpu, &y);
    assert!(
        broken.iter().any(|v| v.is_nan()),
        "the missing barrier went unnoticed: {broken:?}"
    );
}

/// Blocks run last first, so a kernel that counts on block 0 having run
/// before the others reads the value from before the launch.
#[test]
fn blocks_do_not_run_in_index_order() {
    let gpu = Gpu::emulator();
    let flag = upload(&gpu, &[0.0]);
    let out = gpu.alloc(4 * 4).unwrap();
    gpu.launch(
        "selftest_reads_block_zero",
        LaunchConfig::blocks(4, 32),
        &[Arg::ptr(&flag), Arg::ptr(&out)],
    )
    .unwrap();
    assert_eq!(download(&gpu, &out), [1.0, 0.0, 0.0, 0.0]);
}

#[test]
fn partial_barrier_is_reported_with_the_kernel_name() {
    let gpu = Gpu::emulator();
    let y = gpu.alloc(64 * 4).unwrap();
    let err = gpu
        .launch(
            "selftest_partial_barrier",
            LaunchConfig::blocks(1, 64),
            &[Arg::ptr(&y)],
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("selftest_partial_barrier") && msg.contains("reached by 63 of 64"),
        "{msg}"
    );
}

#[test]
fn shuffle_with_exited_lanes_is_reported() {
    let gpu = Gpu::emulator();
    let y = gpu.alloc(32 * 4).unwrap();
    let err = gpu
        .launch(
            "selftest_shuffle_inactive_lanes",
            LaunchConfig::blocks(1, 32),
            &[Arg::ptr(&y)],
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("selftest_shuffle_inactive_lanes") && msg.contains("inactive lanes"),
        "{msg}"
    );
}

#[test]
fn shuffle_naming_lanes_past_a_partial_warp_is_reported() {
    let gpu = Gpu::emulator();
    let x = upload(&gpu, &[0.0; 48]);
    let (out, up) = (gpu.alloc(16).unwrap(), gpu.alloc(48 * 4).unwrap());
    let err = gpu
        .launch(
            "selftest_warp_shuffles",
            LaunchConfig::blocks(1, 48),
            &[Arg::ptr(&x), Arg::ptr(&out), Arg::ptr(&up)],
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("does not exist in this block"),
        "{err}"
    );
}

#[test]
fn out_of_bounds_write_is_reported() {
    let gpu = Gpu::emulator();
    let y = gpu.alloc(8 * 4).unwrap();
    let err = gpu
        .launch(
            "selftest_write_past_end",
            LaunchConfig::blocks(1, 32),
            &[Arg::ptr(&y), Arg::I32(8)],
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("selftest_write_past_end")
            && msg.contains("out of bounds of buffer argument #0"),
        "{msg}"
    );
    // In bounds is fine, and the guards were restored.
    gpu.launch(
        "selftest_write_past_end",
        LaunchConfig::blocks(1, 32),
        &[Arg::ptr(&y), Arg::I32(7)],
    )
    .unwrap();
}

#[test]
fn launch_log_names_the_kernels_run() {
    let gpu = Gpu::emulator();
    let y = gpu.alloc(8 * 4).unwrap();
    kernels::take_launch_log();
    gpu.launch(
        "selftest_write_past_end",
        LaunchConfig::blocks(1, 32),
        &[Arg::ptr(&y), Arg::I32(0)],
    )
    .unwrap();
    assert_eq!(kernels::take_launch_log(), vec!["selftest_write_past_end"]);
    assert!(kernels::take_launch_log().is_empty());
}
