//! Fully connected layers: cuBLAS products on a GPU (the host on the
//! emulator) and the bias kernels.

use super::*;
use engine::Tape;

pub const CASES: &[Case] = &[("forward_backward", forward_backward)];

/// (rows, in, out): a single row, sizes not multiples of 8 or of a block.
const SIZES: &[(usize, usize, usize)] = &[(1, 3, 5), (7, 17, 9), (33, 40, 300)];

fn forward_backward(device: Device) {
    for &dtype in &GPU_DTYPES {
        for (i, &(n, fin, fout)) in SIZES.iter().enumerate() {
            let seed = 300 + 10 * i as u64;
            let x = rounded(&uniform(&[n, fin], seed, -1.0, 1.0), dtype);
            let w = rounded(&uniform(&[fout, fin], seed + 1, -0.5, 0.5), dtype);
            let b = rounded(&uniform(&[fout], seed + 2, -0.5, 0.5), dtype);
            let dy = rounded(&uniform(&[n, fout], seed + 3, -1.0, 1.0), dtype);
            let run = |dev: Device, dt: DType| {
                let cast = |t: &Tensor| to(dev, &t.to_dtype(dt).unwrap());
                let mut tape = Tape::new();
                let (xv, wv, bv) = (
                    tape.param(cast(&x)),
                    tape.param(cast(&w)),
                    tape.param(cast(&b)),
                );
                let y = tape.linear(&xv, &wv, Some(&bv)).unwrap();
                let out = y.value().clone();
                let g = tape.backward_with(&y, cast(&dy)).unwrap();
                [
                    out,
                    g.get(&xv).unwrap().clone(),
                    g.get(&wv).unwrap().clone(),
                    g.get(&bv).unwrap().clone(),
                ]
            };
            let want = run(Device::Cpu, DType::F32);
            let got = run(device, dtype);
            let tol = tolerance(dtype).max(1e-4);
            for (name, (g, w)) in ["y", "dx", "dw", "db"].iter().zip(got.iter().zip(&want)) {
                assert_eq!(g.dtype(), dtype);
                assert_close(
                    &format!("linear {n}x{fin}->{fout} {dtype} {name}"),
                    g,
                    w,
                    tol,
                );
            }
        }
    }
    expect_launched(
        device,
        &[
            "bias_add_rows_f32",
            "bias_add_rows_bf16",
            "bias_add_rows_f16",
            "bias_grad_f32",
            "bias_grad_bf16",
            "bias_grad_f16",
        ],
    );
}
