//! Forward results against naive loops written independently of the kernels,
//! and the cast rounding rules. (Gradients are covered by `gradcheck.rs`.)

use engine::ops::{BnNorm, Conv2dParams, PoolParams};
use engine::{DType, Tape, Tensor};
use half::{bf16, f16};

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// f32 results against f64 references, to `rtol` of the largest reference
/// magnitude (sums of many f32 products lose absolute, not relative, precision).
fn assert_close(name: &str, got: &[f32], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(1e-3f64, |m, w| m.max(w.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= rtol * scale,
            "{name}: element {i}: got {g}, want {w}"
        );
    }
}

/// Direct NHWC × KRSC convolution, and its data and filter gradients for `dy`.
struct NaiveConv {
    y: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
fn naive_conv(
    x: &[f32],
    [n, h, w, c]: [usize; 4],
    wt: &[f32],
    [k, r, s]: [usize; 3],
    stride: usize,
    pad: usize,
    dy: impl Fn(usize) -> f64,
) -> NaiveConv {
    let oh = (h + 2 * pad - r) / stride + 1;
    let ow = (w + 2 * pad - s) / stride + 1;
    let mut out = NaiveConv {
        y: vec![0.0; n * oh * ow * k],
        dx: vec![0.0; x.len()],
        dw: vec![0.0; wt.len()],
    };
    for b in 0..n {
        for i in 0..oh {
            for j in 0..ow {
                for o in 0..k {
                    let yi = ((b * oh + i) * ow + j) * k + o;
                    for u in 0..r {
                        for v in 0..s {
                            let (ih, iw) = (
                                (i * stride + u) as isize - pad as isize,
                                (j * stride + v) as isize - pad as isize,
                            );
                            if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                continue;
                            }
                            for ch in 0..c {
                                let xi = ((b * h + ih as usize) * w + iw as usize) * c + ch;
                                let wi = ((o * r + u) * s + v) * c + ch;
                                out.y[yi] += x[xi] as f64 * wt[wi] as f64;
                                out.dx[xi] += dy(yi) * wt[wi] as f64;
                                out.dw[wi] += dy(yi) * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn conv2d_matches_direct_loops() {
    // The last case is large enough that the kernel splits the batch into
    // im2col chunks, so the filter gradient accumulates across chunks.
    let cases = [
        ([2, 5, 7, 3], [4, 3, 3], 1, 1),
        ([1, 9, 9, 3], [5, 7, 7], 2, 3),
        ([3, 4, 4, 8], [6, 1, 1], 1, 0),
        ([2, 5, 5, 4], [3, 1, 1], 2, 0),
        ([4, 64, 64, 64], [3, 3, 3], 1, 1),
    ];
    for (seed, (xd, [k, r, s], stride, pad)) in cases.into_iter().enumerate() {
        let x = data(xd.iter().product(), seed as u64);
        let w = data(k * r * s * xd[3], 100 + seed as u64);
        let mut tape = Tape::new();
        let xv = tape.param(Tensor::from_vec(x.clone(), xd).unwrap());
        let wv = tape.param(Tensor::from_vec(w.clone(), [k, r, s, xd[3]]).unwrap());
        let y = tape
            .conv2d(
                &xv,
                &wv,
                Conv2dParams {
                    stride,
                    padding: pad,
                },
            )
            .unwrap();
        let dy = data(y.value().numel(), 200 + seed as u64);
        let want = naive_conv(&x, xd, &w, [k, r, s], stride, pad, |i| dy[i] as f64);
        let name = format!("conv {xd:?} {k}x{r}x{s}/{stride} pad {pad}");
        assert_close(&name, y.value().as_slice().unwrap(), &want.y, 1e-5);
        let seed_t = Tensor::from_vec(dy, y.shape().clone()).unwrap();
        let grads = tape.backward_with(&y, seed_t).unwrap();
        assert_close(
            &format!("{name} dx"),
            grads.get(&xv).unwrap().as_slice().unwrap(),
            &want.dx,
            1e-4,
        );
        assert_close(
            &format!("{name} dw"),
            grads.get(&wv).unwrap().as_slice().unwrap(),
            &want.dw,
            1e-4,
        );
    }
}

#[test]
fn batch_norm_train_normalises_with_biased_variance() {
    let (n, c) = (10, 3);
    let x = data(n * c, 1);
    let gamma = [1.5f32, 0.5, 2.0];
    let beta = [0.1f32, -0.2, 0.0];
    let mut tape = Tape::no_grad();
    let v =
        |t: &mut Tape, d: &[f32], s: &[usize]| t.constant(Tensor::from_vec(d.to_vec(), s).unwrap());
    let (xv, gv, bv) = (
        v(&mut tape, &x, &[n, c]),
        v(&mut tape, &gamma, &[c]),
        v(&mut tape, &beta, &[c]),
    );
    let (y, stats) = tape.batch_norm(&xv, &gv, &bv, BnNorm::Batch, 1e-5).unwrap();
    let stats = stats.unwrap();
    let mut want = vec![0.0; n * c];
    for ch in 0..c {
        let col: Vec<f64> = (0..n).map(|i| x[i * c + ch] as f64).collect();
        let mean = col.iter().sum::<f64>() / n as f64;
        let biased = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        for i in 0..n {
            want[i * c + ch] =
                gamma[ch] as f64 * (col[i] - mean) / (biased + 1e-5).sqrt() + beta[ch] as f64;
        }
        assert!((stats.mean.as_slice::<f32>().unwrap()[ch] as f64 - mean).abs() < 1e-6);
        let unbiased = biased * n as f64 / (n as f64 - 1.0);
        assert!((stats.var.as_slice::<f32>().unwrap()[ch] as f64 - unbiased).abs() < 1e-6);
    }
    assert_eq!(stats.count, n);
    assert_close("batch_norm", y.value().as_slice().unwrap(), &want, 1e-5);
}

/// The fused batch-norm epilogues do in one pass what batch_norm, add and
/// relu do as three ops: the same arithmetic, so the same bits, forward and
/// backward (several row blocks, and exact zeros that relu must drop).
#[test]
fn fused_batch_norm_relu_is_the_composed_ops_exactly() {
    let (n, c) = (700, 5);
    let shape = [n, c];
    let t = |seed| Tensor::from_vec(data(n * c, seed), shape).unwrap();
    let (x, residual, dy) = (t(11), t(12), t(13));
    let gamma = Tensor::from_vec(vec![1.5f32, 0.5, 2.0, -1.0, 0.0], [c]).unwrap();
    let beta = Tensor::from_vec(vec![0.1f32, -0.2, 0.0, 0.3, 0.0], [c]).unwrap();
    for with_residual in [false, true] {
        let run = |fused: bool| {
            let mut tape = Tape::new();
            let (xv, rv) = (tape.param(x.clone()), tape.param(residual.clone()));
            let (gv, bv) = (tape.param(gamma.clone()), tape.param(beta.clone()));
            let y = match (fused, with_residual) {
                (true, false) => tape.batch_norm_relu(&xv, &gv, &bv, BnNorm::Batch, 1e-5),
                (true, true) => tape.batch_norm_add_relu(&xv, &rv, &gv, &bv, BnNorm::Batch, 1e-5),
                (false, _) => {
                    let (h, _) = tape.batch_norm(&xv, &gv, &bv, BnNorm::Batch, 1e-5).unwrap();
                    let h = if with_residual {
                        tape.add(&h, &rv).unwrap()
                    } else {
                        h
                    };
                    tape.relu(&h).map(|y| (y, None))
                }
            }
            .unwrap()
            .0;
            let value = y.value().to_vec::<f32>().unwrap();
            let g = tape.backward_with(&y, dy.clone()).unwrap();
            let grad = |v| g.get(v).map(|t: &Tensor| t.to_vec::<f32>().unwrap());
            (value, [grad(&xv), grad(&gv), grad(&bv), grad(&rv)])
        };
        let (fused, composed) = (run(true), run(false));
        assert!(fused.0.contains(&0.0) && fused.0.iter().any(|&v| v > 0.0));
        assert_eq!(fused, composed, "residual: {with_residual}");
    }
}

#[test]
fn max_pool_and_avg_pool_match_direct_loops() {
    let (n, h, w, c) = (2, 7, 6, 3);
    let x = data(n * h * w * c, 3);
    let mut tape = Tape::no_grad();
    let xv = tape.constant(Tensor::from_vec(x.clone(), [n, h, w, c]).unwrap());
    let y = tape.max_pool2d(&xv, PoolParams::RESNET_STEM).unwrap();
    assert_eq!(y.shape().dims(), &[2, 4, 3, 3]);
    let mut want = Vec::new();
    for b in 0..n {
        for i in 0..4 {
            for j in 0..3 {
                for ch in 0..c {
                    let mut m = f64::NEG_INFINITY;
                    for u in 0..3 {
                        for v in 0..3 {
                            let (ih, iw) = ((2 * i + u) as isize - 1, (2 * j + v) as isize - 1);
                            if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w {
                                m = m.max(
                                    x[((b * h + ih as usize) * w + iw as usize) * c + ch] as f64,
                                );
                            }
                        }
                    }
                    want.push(m);
                }
            }
        }
    }
    assert_close("max_pool2d", y.value().as_slice().unwrap(), &want, 0.0);

    let avg = tape.global_avg_pool(&xv).unwrap();
    let want: Vec<f64> = (0..n * c)
        .map(|bc| {
            (0..h * w)
                .map(|p| x[(bc / c * h * w + p) * c + bc % c] as f64)
                .sum::<f64>()
                / (h * w) as f64
        })
        .collect();
    assert_close(
        "global_avg_pool",
        avg.value().as_slice().unwrap(),
        &want,
        1e-6,
    );
}

#[test]
fn linear_normalize_and_losses_match_formulas() {
    let (n, fin, fout) = (3, 4, 2);
    let (x, w, b) = (data(n * fin, 4), data(fout * fin, 5), data(fout, 6));
    let mut tape = Tape::no_grad();
    let xv = tape.constant(Tensor::from_vec(x.clone(), [n, fin]).unwrap());
    let wv = tape.constant(Tensor::from_vec(w.clone(), [fout, fin]).unwrap());
    let bv = tape.constant(Tensor::from_vec(b.clone(), [fout]).unwrap());
    let y = tape.linear(&xv, &wv, Some(&bv)).unwrap();
    let want: Vec<f64> = (0..n * fout)
        .map(|i| {
            (0..fin)
                .map(|k| x[i / fout * fin + k] as f64 * w[i % fout * fin + k] as f64)
                .sum::<f64>()
                + b[i % fout] as f64
        })
        .collect();
    assert_close("linear", y.value().as_slice().unwrap(), &want, 1e-6);

    let q = tape.l2_normalize(&xv).unwrap();
    let qs = q.value().as_slice::<f32>().unwrap();
    for row in qs.chunks(fin) {
        assert!((row.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-6);
    }
    // Identical views give zero loss; opposite ones give the maximum of 8.
    let same = tape.m2t_loss(&q, &q, &q, &q).unwrap();
    assert!(same.value().as_slice::<f32>().unwrap()[0].abs() < 1e-6);
    let neg = tape
        .constant(Tensor::from_vec(qs.iter().map(|v| -v).collect::<Vec<_>>(), [n, fin]).unwrap());
    let opposite = tape.m2t_loss(&q, &neg, &q, &neg).unwrap();
    assert!((opposite.value().as_slice::<f32>().unwrap()[0] - 8.0).abs() < 1e-5);

    let labels = Tensor::from_vec(vec![1i64, 0, 1], [n]).unwrap();
    let ce = tape.cross_entropy(&y, &labels).unwrap();
    let want: f64 = (0..n)
        .map(|i| {
            let row = &want[i * fout..(i + 1) * fout];
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            lse - row[[1, 0, 1][i]]
        })
        .sum::<f64>()
        / n as f64;
    assert_close(
        "cross_entropy",
        ce.value().as_slice().unwrap(),
        &[want],
        1e-6,
    );
}

fn cast_f64(values: &[f64], to: DType) -> Tensor {
    let mut tape = Tape::no_grad();
    let x = tape.constant(Tensor::from_vec(values.to_vec(), [values.len()]).unwrap());
    tape.cast(&x, to).unwrap().value().clone()
}

#[test]
fn casts_round_to_nearest_even() {
    let p = |e: i32| 2f64.powi(e);
    // bf16 keeps 7 mantissa bits: ulp(1) = 2⁻⁷, so 1 + 2⁻⁸ is a tie. Just above
    // a tie must round up even where an f32 intermediate would land on the tie.
    let bf = cast_f64(
        &[
            1.0 + p(-8),
            1.0 + 3.0 * p(-8),
            1.0 + p(-8) + p(-40),
            -(1.0 + p(-8)),
        ],
        DType::BF16,
    );
    let want = [1.0, 1.0 + p(-6), 1.0 + p(-7), -1.0].map(bf16::from_f64);
    assert_eq!(bf.as_slice::<bf16>().unwrap(), want);
    // f16 keeps 10: ulp(1) = 2⁻¹⁰.
    let h = cast_f64(
        &[
            1.0 + p(-11),
            1.0 + 3.0 * p(-11),
            1.0 + p(-11) + p(-40),
            65519.0,
        ],
        DType::F16,
    );
    let want = [1.0, 1.0 + p(-9), 1.0 + p(-10), 65504.0].map(f16::from_f64);
    assert_eq!(h.as_slice::<f16>().unwrap(), want);
}

#[test]
fn f16_overflows_to_infinity_and_keeps_nan() {
    // 65520 is the tie between f16's largest finite value and 2¹⁶: it rounds to even, i.e. ∞.
    let h = cast_f64(&[65520.0, 1e6, -1e6, f64::NAN], DType::F16);
    let v = h.as_slice::<f16>().unwrap();
    assert_eq!(v[0], f16::INFINITY);
    assert_eq!(v[1], f16::INFINITY);
    assert_eq!(v[2], f16::NEG_INFINITY);
    assert!(v[3].is_nan());
}

#[test]
fn f32_to_bf16_and_back_is_exact_for_representable_values() {
    let mut tape = Tape::no_grad();
    let vals = vec![0.0f32, -0.0, 1.0, -2.5, 3.0e38, 1.0e-38, 0.15625];
    let x = tape.constant(Tensor::from_vec(vals.clone(), [vals.len()]).unwrap());
    let b = tape.cast(&x, DType::BF16).unwrap();
    let back = tape.cast(&b, DType::F32).unwrap();
    let got = back.value().as_slice::<f32>().unwrap();
    for (g, v) in got.iter().zip(&vals) {
        assert_eq!(g.to_bits(), bf16::from_f32(*v).to_f32().to_bits());
    }
    assert_eq!(got[6], 0.15625);
    assert!(tape.cast(&x, DType::U8).is_err());
}
