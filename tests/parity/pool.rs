//! Max pooling and global average pooling, forward and backward, in every
//! GPU dtype, against the CPU backend in f32 from the same rounded inputs.

use super::*;
use engine::Tape;
use engine::ops::PoolParams;

pub const CASES: &[Case] = &[("max_pool", max_pool), ("global_avg_pool", global_avg_pool)];

/// Values from {−2, −1.5, −1, −0.5, 0} (exact in every dtype): windows tie
/// often, and border windows that hold only negative values show whether
/// padding ever wins.
fn levels(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.below(5) as f32 * 0.5 - 2.0).collect();
    Tensor::from_vec(v, shape.to_vec()).unwrap()
}

/// Forward and backward of `op` on the CPU in f32 and on `device`:
/// ((want y, want dx), (got y, got dx)), the wanted values rounded to `dtype`.
fn both_sides(
    device: Device,
    x: &Tensor,
    dy: &Tensor,
    op: impl Fn(&mut Tape, &engine::Var) -> engine::Var,
) -> ((Tensor, Tensor), (Tensor, Tensor)) {
    let dtype = x.dtype();
    let run = |x: Tensor, dy: Tensor| {
        let mut tape = Tape::new();
        let xv = tape.param(x);
        let y = op(&mut tape, &xv);
        let y_value = y.value().clone();
        let g = tape.backward_with(&y, dy).unwrap();
        (y_value, g.get(&xv).unwrap().clone())
    };
    let (want_y, want_dx) = run(
        x.to_dtype(DType::F32).unwrap(),
        dy.to_dtype(DType::F32).unwrap(),
    );
    let (got_y, got_dx) = run(to(device, x), to(device, dy));
    assert_eq!(got_y.device(), device);
    (
        (
            want_y.to_dtype(dtype).unwrap(),
            want_dx.to_dtype(dtype).unwrap(),
        ),
        (got_y, got_dx),
    )
}

fn max_pool(device: Device) {
    let two_by_two = PoolParams {
        kernel: 2,
        stride: 2,
        padding: 0,
    };
    let overlapping = PoolParams {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let gaps = PoolParams {
        kernel: 2,
        stride: 3,
        padding: 0,
    };
    // Odd sizes, channels of 3 and 5, a batch of one; inputs in no window
    // (stride > kernel); several backward tiles (8×16 pixels) with more
    // windows than one pass of shared memory holds (64), and channels past
    // one group of 32.
    let configs: &[(&[usize], PoolParams)] = &[
        (&[2, 7, 5, 3], PoolParams::RESNET_STEM),
        (&[1, 6, 8, 5], two_by_two),
        (&[3, 5, 7, 3], overlapping),
        (&[2, 8, 11, 5], gaps),
        (&[1, 9, 17, 37], overlapping),
    ];
    for &dtype in &GPU_DTYPES {
        for (i, &(shape, p)) in configs.iter().enumerate() {
            let x = rounded(&levels(shape, 3 + i as u64), dtype);
            let out_shape = {
                let mut t = Tape::no_grad();
                let xv = t.constant(x.to_dtype(DType::F32).unwrap());
                t.max_pool2d(&xv, p).unwrap().shape().dims().to_vec()
            };
            let dy = rounded(&uniform(&out_shape, 13 + i as u64, -1.0, 1.0), dtype);
            let ((want_y, want_dx), (got_y, got_dx)) =
                both_sides(device, &x, &dy, |t, x| t.max_pool2d(x, p).unwrap());
            let what = format!("max_pool2d {dtype} {shape:?} {p:?}");
            // The maximum is exact, and the gradient sums the same f32 terms
            // in the same order, rounded once.
            assert_bits_equal(&what, &got_y, &want_y);
            assert_bits_equal(&format!("{what} backward"), &got_dx, &want_dx);
        }
    }
    expect_launched(
        device,
        &[
            "max_pool_forward_f32",
            "max_pool_forward_bf16",
            "max_pool_forward_f16",
            "max_pool_backward_f32",
            "max_pool_backward_bf16",
            "max_pool_backward_f16",
        ],
    );
}

fn global_avg_pool(device: Device) {
    // Channels below, above and not a multiple of a block's 32; one pixel.
    let shapes: &[&[usize]] = &[&[2, 7, 5, 3], &[1, 3, 3, 37], &[3, 1, 1, 5]];
    for &dtype in &GPU_DTYPES {
        for (i, &shape) in shapes.iter().enumerate() {
            let x = rounded(&uniform(shape, 21 + i as u64, -1.0, 1.0), dtype);
            let dy = rounded(
                &uniform(&[shape[0], shape[3]], 29 + i as u64, -1.0, 1.0),
                dtype,
            );
            let ((want_y, want_dx), (got_y, got_dx)) =
                both_sides(device, &x, &dy, |t, x| t.global_avg_pool(x).unwrap());
            let what = format!("global_avg_pool {dtype} {shape:?}");
            assert_close(&what, &got_y, &want_y, tolerance(dtype));
            // dy times 1/pixels rounded to f32, as the CPU does it.
            assert_bits_equal(&format!("{what} backward"), &got_dx, &want_dx);
        }
    }
    expect_launched(
        device,
        &[
            "global_avg_pool_forward_f32",
            "global_avg_pool_forward_bf16",
            "global_avg_pool_forward_f16",
            "global_avg_pool_backward_f32",
            "global_avg_pool_backward_bf16",
            "global_avg_pool_backward_f16",
        ],
    );
}
