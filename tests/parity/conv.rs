//! Convolutions: cuDNN on a GPU (the emulator runs the CPU op, so there this
//! checks the host fallback and the tensor plumbing around it).

use super::*;
use engine::Tape;
use engine::ops::Conv2dParams;

pub const CASES: &[Case] = &[("forward_backward", forward_backward)];

/// (input NHWC, weight KRSC, stride, padding): the ResNet layer kinds on
/// awkward sizes.
const LAYERS: &[([usize; 4], [usize; 4], usize, usize)] = &[
    ([2, 7, 5, 3], [5, 3, 3, 3], 1, 1),   // 3×3, odd sizes, 3 channels
    ([1, 9, 9, 5], [8, 3, 3, 5], 2, 1),   // 3×3 stride 2, batch 1
    ([3, 4, 4, 6], [7, 1, 1, 6], 1, 0),   // pointwise
    ([2, 5, 5, 4], [6, 1, 1, 4], 2, 0),   // downsample
    ([1, 12, 10, 3], [4, 7, 7, 3], 2, 3), // stem
];

fn forward_backward(device: Device) {
    for &dtype in &GPU_DTYPES {
        for (i, &(xs, ws, stride, padding)) in LAYERS.iter().enumerate() {
            let p = Conv2dParams { stride, padding };
            let seed = 100 + 10 * i as u64;
            let x = rounded(&uniform(&xs, seed, -1.0, 1.0), dtype);
            let w = rounded(&uniform(&ws, seed + 1, -0.5, 0.5), dtype);
            let run = |dev: Device, x: &Tensor, w: &Tensor, dy_of: &dyn Fn(&[usize]) -> Tensor| {
                let mut tape = Tape::new();
                let (xv, wv) = (tape.param(to(dev, x)), tape.param(to(dev, w)));
                let y = tape.conv2d(&xv, &wv, p).unwrap();
                let out = y.value().clone();
                let dy = to(dev, &dy_of(y.shape().dims()));
                let g = tape.backward_with(&y, dy).unwrap();
                (
                    out,
                    g.get(&xv).unwrap().clone(),
                    g.get(&wv).unwrap().clone(),
                )
            };
            let dy_of = |shape: &[usize]| rounded(&uniform(shape, seed + 2, -1.0, 1.0), dtype);
            let f32_dy = |shape: &[usize]| dy_of(shape).to_dtype(DType::F32).unwrap();
            let (want_y, want_dx, want_dw) = run(
                Device::Cpu,
                &x.to_dtype(DType::F32).unwrap(),
                &w.to_dtype(DType::F32).unwrap(),
                &f32_dy,
            );
            let (got_y, got_dx, got_dw) = run(device, &x, &w, &dy_of);
            assert_eq!(got_y.dtype(), dtype);
            // Sums of up to a few hundred products in another order.
            let tol = tolerance(dtype).max(1e-4);
            assert_close(
                &format!("conv {xs:?}*{ws:?} {dtype} y"),
                &got_y,
                &want_y,
                tol,
            );
            assert_close(
                &format!("conv {xs:?}*{ws:?} {dtype} dx"),
                &got_dx,
                &want_dx,
                tol,
            );
            assert_close(
                &format!("conv {xs:?}*{ws:?} {dtype} dw"),
                &got_dw,
                &want_dw,
                tol,
            );
        }
    }
}
