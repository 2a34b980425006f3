//! L2 normalisation, the M2T loss and softmax cross-entropy, forward and
//! backward, against the CPU backend in f32 from the same rounded inputs.

use super::*;
use engine::Tape;

pub const CASES: &[Case] = &[
    ("l2_normalize", l2_normalize),
    ("m2t_loss", m2t_loss),
    ("cross_entropy", cross_entropy),
    ("cross_entropy_labels", cross_entropy_labels),
];

/// `[rows, f]` rows not a multiple of 32, features below, between and above
/// the 32 to 256 threads of a row block.
const ROWS: &[(usize, usize)] = &[(5, 17), (33, 40), (2, 300)];

/// A scalar of `dtype` on `device`: the gradient seed of a loss.
fn seed(device: Device, v: f32, dtype: DType) -> Tensor {
    to(device, &rounded(&Tensor::scalar(v), dtype))
}

/// [`assert_close`] row by row, each row scaled by its own largest value (a
/// clamped row's gradient is 1e12 times the others'). Infinities, where a
/// 16-bit gradient overflows, must be equal.
fn assert_rows_close(what: &str, got: &Tensor, want: &Tensor, rtol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let f = want.dims()[1];
    let (got, want) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    for (r, (g, w)) in got.chunks(f).zip(want.chunks(f)).enumerate() {
        let (mut g, mut w) = (g.to_vec(), w.to_vec());
        for (a, b) in g.iter_mut().zip(&mut w) {
            if b.is_infinite() && a == b {
                (*a, *b) = (0.0, 0.0);
            }
        }
        assert_close(
            &format!("{what} row {r}"),
            &Tensor::from_vec(g, [f]).unwrap(),
            &Tensor::from_vec(w, [f]).unwrap(),
            rtol,
        );
    }
}

fn l2_normalize(device: Device) {
    for &dtype in &GPU_DTYPES {
        for (i, &(n, f)) in ROWS.iter().enumerate() {
            let mut v = uniform(&[n, f], 31 + i as u64, -1.0, 1.0)
                .to_vec::<f32>()
                .unwrap();
            if i == 0 {
                // Row 1 is zero and row 3 tiny (norm under 1e-12, f16
                // flushes it to zero): both take the clamp path.
                v[f..2 * f].fill(0.0);
                v[3 * f..4 * f].iter_mut().for_each(|x| *x *= 1e-14);
            }
            let x = rounded(&Tensor::from_vec(v, [n, f]).unwrap(), dtype);
            let dy = rounded(&uniform(&[n, f], 37 + i as u64, -1.0, 1.0), dtype);
            let (want_y, want_dx) = {
                let mut tape = Tape::new();
                let xv = tape.param(x.to_dtype(DType::F32).unwrap());
                let y = tape.l2_normalize(&xv).unwrap();
                let y_value = y.value().to_dtype(dtype).unwrap();
                let g = tape
                    .backward_with(&y, dy.to_dtype(DType::F32).unwrap())
                    .unwrap();
                (y_value, g.get(&xv).unwrap().to_dtype(dtype).unwrap())
            };
            let mut tape = Tape::new();
            let xv = tape.param(to(device, &x));
            let y = tape.l2_normalize(&xv).unwrap();
            let got_y = y.value().clone();
            let g = tape.backward_with(&y, to(device, &dy)).unwrap();
            assert_eq!(got_y.device(), device);
            let what = format!("l2_normalize {dtype} [{n}, {f}]");
            assert_rows_close(&what, &got_y, &want_y, tolerance(dtype));
            assert_rows_close(
                &format!("{what} backward"),
                g.get(&xv).unwrap(),
                &want_dx,
                tolerance(dtype),
            );
        }
    }
    expect_launched(
        device,
        &[
            "l2_normalize_forward_f32",
            "l2_normalize_forward_bf16",
            "l2_normalize_forward_f16",
            "l2_normalize_backward_f32",
            "l2_normalize_backward_bf16",
            "l2_normalize_backward_f16",
        ],
    );
}

fn m2t_loss(device: Device) {
    // A batch of one, rows not a multiple of 32, more elements than the
    // reducing block's 1024 threads.
    for &dtype in &GPU_DTYPES {
        for (i, &(n, f)) in [(1, 17), (37, 40)].iter().enumerate() {
            let inputs: Vec<Tensor> = (0..4)
                .map(|k| {
                    let seed = 41 + 4 * i as u64 + k;
                    rounded(&uniform(&[n, f], seed, -0.3, 0.3), dtype)
                })
                .collect();
            let run = |inputs: Vec<Tensor>, dloss: Tensor| {
                let mut tape = Tape::new();
                let vars: Vec<_> = inputs.into_iter().map(|t| tape.param(t)).collect();
                let loss = tape
                    .m2t_loss(&vars[0], &vars[1], &vars[2], &vars[3])
                    .unwrap();
                let value = loss.value().clone();
                let g = tape.backward_with(&loss, dloss).unwrap();
                let grads: Vec<Tensor> = vars.iter().map(|v| g.get(v).unwrap().clone()).collect();
                (value, grads)
            };
            // A seed other than 1 shows that backward reads it from the device.
            let (want, want_grads) = run(
                inputs
                    .iter()
                    .map(|t| t.to_dtype(DType::F32).unwrap())
                    .collect(),
                seed(Device::Cpu, 0.75, DType::F32),
            );
            let (got, got_grads) = run(
                inputs.iter().map(|t| to(device, t)).collect(),
                seed(device, 0.75, dtype),
            );
            assert_eq!((got.device(), got.dtype()), (device, dtype));
            let what = format!("m2t_loss {dtype} [{n}, {f}]");
            assert_close(
                &what,
                &got,
                &want.to_dtype(dtype).unwrap(),
                tolerance(dtype),
            );
            for (k, (got, want)) in got_grads.iter().zip(&want_grads).enumerate() {
                assert_close(
                    &format!("{what} backward of input {k}"),
                    got,
                    &want.to_dtype(dtype).unwrap(),
                    tolerance(dtype),
                );
            }
        }
    }
    expect_launched(
        device,
        &[
            "m2t_loss_forward_f32",
            "m2t_loss_forward_bf16",
            "m2t_loss_forward_f16",
            "m2t_loss_backward_f32",
            "m2t_loss_backward_bf16",
            "m2t_loss_backward_f16",
        ],
    );
}

fn labels(n: usize, classes: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    Tensor::from_vec((0..n).map(|_| rng.below(classes) as i64).collect(), [n]).unwrap()
}

/// Loss, probabilities and logit gradient (seeded with 0.5) of a cross-entropy
/// on whatever device `logits` and `labels` are.
fn cross_entropy_run(logits: Tensor, labels: &Tensor, dloss: Tensor) -> (Tensor, Tensor) {
    let mut tape = Tape::new();
    let lv = tape.param(logits);
    let loss = tape.cross_entropy(&lv, labels).unwrap();
    let value = loss.value().clone();
    let g = tape.backward_with(&loss, dloss).unwrap();
    (value, g.get(&lv).unwrap().clone())
}

fn cross_entropy(device: Device) {
    // One row of three classes; rows and classes not multiples of 32; more
    // classes than a row block's 256 threads.
    for &dtype in &GPU_DTYPES {
        for (i, &(n, c)) in [(1, 3), (5, 10), (33, 300)].iter().enumerate() {
            let logits = rounded(&uniform(&[n, c], 51 + i as u64, -4.0, 4.0), dtype);
            let ls = labels(n, c, 57 + i as u64);
            let (want, want_dx) = cross_entropy_run(
                logits.to_dtype(DType::F32).unwrap(),
                &ls,
                seed(Device::Cpu, 0.5, DType::F32),
            );
            // Host labels on even rounds, device labels on odd ones.
            let device_ls = if i % 2 == 0 {
                ls.clone()
            } else {
                to(device, &ls)
            };
            let (got, got_dx) =
                cross_entropy_run(to(device, &logits), &device_ls, seed(device, 0.5, dtype));
            assert_eq!((got.device(), got.dtype()), (device, dtype));
            let what = format!("cross_entropy {dtype} [{n}, {c}]");
            assert_close(
                &what,
                &got,
                &want.to_dtype(dtype).unwrap(),
                tolerance(dtype),
            );
            assert_close(
                &format!("{what} backward"),
                &got_dx,
                &want_dx.to_dtype(dtype).unwrap(),
                tolerance(dtype),
            );
        }
    }
    expect_launched(
        device,
        &[
            "cross_entropy_forward_f32",
            "cross_entropy_forward_bf16",
            "cross_entropy_forward_f16",
            "cross_entropy_mean_f32",
            "cross_entropy_mean_bf16",
            "cross_entropy_mean_f16",
            "cross_entropy_backward_f32",
            "cross_entropy_backward_bf16",
            "cross_entropy_backward_f16",
        ],
    );
}

/// Out-of-range labels: host labels are rejected before any launch; device
/// labels (not read back) give a NaN loss, and the gradient skips their
/// one-hot term instead of writing outside the row.
fn cross_entropy_labels(device: Device) {
    let logits = to(device, &uniform(&[3, 4], 61, -1.0, 1.0));
    let bad = Tensor::from_vec(vec![0i64, 4, 1], [3]).unwrap();
    let mut tape = Tape::new();
    let lv = tape.param(logits.clone());
    let err = tape.cross_entropy(&lv, &bad).unwrap_err();
    assert!(
        err.to_string().contains("label 4 at row 1"),
        "unexpected error: {err}"
    );

    let negative = Tensor::from_vec(vec![2i64, -1, 0], [3]).unwrap();
    let good = Tensor::from_vec(vec![2i64, 3, 0], [3]).unwrap();
    let (loss, dx) = cross_entropy_run(
        logits.clone(),
        &to(device, &negative),
        seed(device, 1.0, DType::F32),
    );
    assert!(loss.to_f64_vec().unwrap()[0].is_nan(), "loss should be NaN");
    // Rows 0 and 2 match those of valid labels; row 1 is the bare softmax / n.
    let (_, want_dx) = cross_entropy_run(logits, &to(device, &good), seed(device, 1.0, DType::F32));
    let (dx, want_dx) = (dx.to_f64_vec().unwrap(), want_dx.to_f64_vec().unwrap());
    assert_eq!(dx[..4], want_dx[..4]);
    assert_eq!(dx[8..], want_dx[8..]);
    assert!(
        dx[4..8].iter().all(|&g| g > 0.0),
        "row 1 without its one-hot term: {:?}",
        &dx[4..8]
    );
    expect_launched(
        device,
        &["cross_entropy_forward_f32", "cross_entropy_backward_f32"],
    );
}
