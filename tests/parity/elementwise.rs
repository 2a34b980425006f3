//! ReLU and addition, forward and backward, in every GPU dtype.

use super::*;
use engine::Tape;

pub const CASES: &[Case] = &[("relu", relu), ("add", add)];

/// Awkward sizes: not a multiple of the block, a single element, channels of 3.
const SHAPES: &[&[usize]] = &[&[3, 5, 7, 3], &[1], &[2, 300]];

fn relu(device: Device) {
    for &dtype in &GPU_DTYPES {
        for (i, shape) in SHAPES.iter().enumerate() {
            let x = rounded(&uniform(shape, 1 + i as u64, -1.0, 1.0), dtype);
            let dy = rounded(&uniform(shape, 7 + i as u64, -1.0, 1.0), dtype);
            let (want_y, want_dx) = {
                let mut tape = Tape::new();
                let xv = tape.param(x.to_dtype(DType::F32).unwrap());
                let y = tape.relu(&xv).unwrap();
                let g = tape
                    .backward_with(&y, dy.to_dtype(DType::F32).unwrap())
                    .unwrap();
                (
                    y.value().to_dtype(dtype).unwrap(),
                    g.get(&xv).unwrap().to_dtype(dtype).unwrap(),
                )
            };
            let mut tape = Tape::new();
            let xv = tape.param(to(device, &x));
            let y = tape.relu(&xv).unwrap();
            let got_y = y.value().clone();
            let g = tape.backward_with(&y, to(device, &dy)).unwrap();
            assert_eq!(got_y.device(), device);
            assert_bits_equal(&format!("relu {dtype} {shape:?}"), &got_y, &want_y);
            assert_bits_equal(
                &format!("relu backward {dtype} {shape:?}"),
                g.get(&xv).unwrap(),
                &want_dx,
            );
        }
    }
    expect_launched(
        device,
        &[
            "relu_forward_f32",
            "relu_forward_bf16",
            "relu_forward_f16",
            "relu_backward_f32",
            "relu_backward_bf16",
            "relu_backward_f16",
        ],
    );
}

fn add(device: Device) {
    for &dtype in &GPU_DTYPES {
        for (i, shape) in SHAPES.iter().enumerate() {
            let a = rounded(&uniform(shape, 11 + i as u64, -2.0, 2.0), dtype);
            let b = rounded(&uniform(shape, 17 + i as u64, -2.0, 2.0), dtype);
            let want = {
                let mut tape = Tape::new();
                let (av, bv) = (
                    tape.constant(a.to_dtype(DType::F32).unwrap()),
                    tape.constant(b.to_dtype(DType::F32).unwrap()),
                );
                tape.add(&av, &bv).unwrap().value().to_dtype(dtype).unwrap()
            };
            let mut tape = Tape::new();
            let (av, bv) = (tape.constant(to(device, &a)), tape.constant(to(device, &b)));
            let got = tape.add(&av, &bv).unwrap();
            assert_close(
                &format!("add {dtype} {shape:?}"),
                got.value(),
                &want,
                tolerance(dtype),
            );
        }
    }
    expect_launched(device, &["add_f32", "add_bf16", "add_f16"]);
}
