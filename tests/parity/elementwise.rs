//! ReLU and addition, forward and backward, in every GPU dtype.

use super::*;
use engine::Tape;
use engine::ops::BnNorm;

pub const CASES: &[Case] = &[
    ("relu", relu),
    ("relu_keeps_nan", relu_keeps_nan),
    ("add", add),
];

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

/// ReLU keeps NaN, as PyTorch's does, alone and fused after batch norm, on
/// `device` and on the CPU: NaN weights must give NaN features, not zeros
/// that pass the non-finite checks. The gradient at NaN is 0 (NaN > 0 is
/// false; PyTorch passes the gradient there, but the NaN loss stops
/// training first).
fn relu_keeps_nan(device: Device) {
    let nan = f32::NAN;
    for dev in [Device::Cpu, device] {
        // The CPU backend computes in f32 only.
        let dtypes: &[DType] = if dev == Device::Cpu {
            &[DType::F32]
        } else {
            &GPU_DTYPES
        };
        for &dtype in dtypes {
            let put = |v: Vec<f32>, shape: &[usize]| {
                to(
                    dev,
                    &rounded(&Tensor::from_vec(v, shape.to_vec()).unwrap(), dtype),
                )
            };
            let values = |t: &Tensor| t.to_device(Device::Cpu).unwrap().to_f64_vec().unwrap();
            let what = format!("{dev} {dtype}");

            let mut tape = Tape::new();
            let x = tape.param(put(vec![nan, -1.0, 0.5, 2.0], &[4]));
            let y = tape.relu(&x).unwrap();
            let got = values(y.value());
            assert!(got[0].is_nan(), "relu(NaN) on {what}: {got:?}");
            assert_eq!(got[1..], [0.0, 0.5, 2.0], "relu on {what}");
            let g = tape.backward_with(&y, put(vec![1.0; 4], &[4])).unwrap();
            assert_eq!(
                values(g.get(&x).unwrap()),
                [0.0, 0.0, 1.0, 1.0],
                "relu backward on {what}"
            );

            // Channel 0 holds a NaN, so its batch statistics and every output
            // in it are NaN; channel 1 is finite.
            let affine = |tape: &mut Tape| {
                let gamma = tape.param(to(
                    dev,
                    &Tensor::from_vec(vec![1.0f32; 2], vec![2]).unwrap(),
                ));
                let beta = tape.param(to(
                    dev,
                    &Tensor::from_vec(vec![0.0f32; 2], vec![2]).unwrap(),
                ));
                (gamma, beta)
            };
            let mut tape = Tape::new();
            let x = tape.param(put(vec![nan, 1.0, 2.0, 3.0, 4.0, -5.0], &[3, 2]));
            let (gamma, beta) = affine(&mut tape);
            let (y, _) = tape
                .batch_norm_relu(&x, &gamma, &beta, BnNorm::Batch, 1e-5)
                .unwrap();
            let got = values(y.value());
            assert!(
                got.iter().step_by(2).all(|v| v.is_nan()),
                "bn+relu on {what}: {got:?}"
            );
            assert!(
                got.iter()
                    .skip(1)
                    .step_by(2)
                    .all(|v| v.is_finite() && *v >= 0.0),
                "bn+relu on {what}: {got:?}"
            );

            // Only the residual's first element is NaN.
            let mut tape = Tape::new();
            let x = tape.param(put(vec![0.0, 1.0, 2.0, 3.0, 4.0, -5.0], &[3, 2]));
            let residual = tape.param(put(vec![nan, 0.0, 0.0, 0.0, 0.0, 0.0], &[3, 2]));
            let (gamma, beta) = affine(&mut tape);
            let (y, _) = tape
                .batch_norm_add_relu(&x, &residual, &gamma, &beta, BnNorm::Batch, 1e-5)
                .unwrap();
            let got = values(y.value());
            assert!(got[0].is_nan(), "bn+add+relu on {what}: {got:?}");
            assert!(
                got[1..].iter().all(|v| v.is_finite() && *v >= 0.0),
                "bn+add+relu on {what}: {got:?}"
            );
        }
    }
    expect_launched(
        device,
        &[
            "relu_forward_f32",
            "bn_apply_relu_f16",
            "bn_apply_add_relu_bf16",
        ],
    );
}
