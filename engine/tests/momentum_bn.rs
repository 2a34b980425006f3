//! Batch norm's three modes against values computed by hand in f64: Momentum
//! BN with its lazy history update (m2t-method.md §3), training mode with the
//! running-statistics update, and evaluation mode on those running statistics.

use engine::ops::{BatchStats, BesselCorrection, BnNorm, momentum_bn_update, update_running_stats};
use engine::schedule::mbn_beta;
use engine::{Error, Rng, Tape, Tensor};
use std::ops::Range;

const EPS: f64 = 1e-5;

fn vec_in(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n).map(|_| rng.range(lo, hi) as f32).collect()
}

/// Activations of shape `dims` (channels last) with a per-channel offset and
/// spread, so batch statistics are far from the history's.
fn activations(rng: &mut Rng, dims: &[usize]) -> Vec<f32> {
    let c = *dims.last().unwrap();
    let shift = vec_in(rng, c, -2.0, 2.0);
    let spread = vec_in(rng, c, 0.3, 3.0);
    let n: usize = dims.iter().product();
    (0..n)
        .map(|i| shift[i % c] + spread[i % c] * rng.range(-1.0, 1.0) as f32)
        .collect()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec().unwrap()
}

fn tensor(v: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), dims).unwrap()
}

/// `|a − e| ≤ rtol·max|e|` per element (relative to the tensor's scale).
fn assert_close(what: &str, actual: &[f64], expected: &[f64], rtol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    let scale = expected.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    assert!(scale > 0.0, "{what}: expected values are all zero");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= rtol * scale,
            "{what}[{i}]: got {a}, expected {e} (scale {scale})"
        );
    }
}

/// Per-channel mean and unbiased variance over every leading axis.
fn channel_stats(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (x.len() / c) as f64;
    let mut mean = vec![0.0; c];
    for (i, &v) in x.iter().enumerate() {
        mean[i % c] += v as f64 / n;
    }
    let mut var = vec![0.0; c];
    for (i, &v) in x.iter().enumerate() {
        var[i % c] += (v as f64 - mean[i % c]).powi(2) / (n - 1.0);
    }
    (mean, var)
}

/// `γ·(x − μ̂)/sqrt(σ̂² + ε) + b`.
fn normalise(x: &[f32], gamma: &[f32], shift: &[f32], mean: &[f64], var: &[f64]) -> Vec<f64> {
    let c = gamma.len();
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let j = i % c;
            gamma[j] as f64 * (v as f64 - mean[j]) / (var[j] + EPS).sqrt() + shift[j] as f64
        })
        .collect()
}

/// Runs one batch norm on a no-grad tape (the teacher's forward).
fn forward(
    x: &[f32],
    dims: &[usize],
    gamma: &[f32],
    shift: &[f32],
    norm: BnNorm,
) -> engine::Result<(Vec<f64>, Option<BatchStats>)> {
    let c = gamma.len();
    let mut tape = Tape::no_grad();
    let x = tape.constant(tensor(x, dims));
    let g = tape.constant(tensor(gamma, &[c]));
    let b = tape.constant(tensor(shift, &[c]));
    let (y, stats) = tape.batch_norm(&x, &g, &b, norm, EPS)?;
    Ok((f64s(y.value()), stats))
}

fn check_batch_stats(what: &str, stats: &BatchStats, mean: &[f64], var: &[f64], n: usize) {
    assert_eq!(stats.count, n, "{what}: count");
    assert_close(&format!("{what} mean"), &f64s(&stats.mean), mean, 1e-6);
    assert_close(&format!("{what} var"), &f64s(&stats.var), var, 1e-6);
}

/// Runs the teacher's Momentum BN for iterations `iters` of a `total`-iteration
/// run, two views each, and checks every output and history update by hand.
fn check_momentum_bn(
    dims: &[usize],
    iters: Range<usize>,
    total: usize,
    correction: BesselCorrection,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let c = *dims.last().unwrap();
    let n = dims.iter().product::<usize>() / c;
    let nf = n as f64;
    // The release's extra n/(n−1) on top of the unbiased variance.
    let extra = match correction {
        BesselCorrection::Double => nf / (nf - 1.0),
        BesselCorrection::Single => 1.0,
    };
    let gamma = vec_in(&mut rng, c, 0.5, 1.5);
    let shift = vec_in(&mut rng, c, -0.5, 0.5);
    let mut hist_mean = Tensor::from_vec(vec![0.0f32; c], [c]).unwrap();
    let mut hist_var = Tensor::from_vec(vec![1.0f32; c], [c]).unwrap();
    let (mut mean_h, mut var_h) = (vec![0.0; c], vec![1.0; c]);

    for k in iters {
        let beta = mbn_beta(k, total);
        let history = (f64s(&hist_mean), f64s(&hist_var));
        let mut views = Vec::new();
        for view in 1..=2 {
            let what = format!("iteration {k} (β = {beta:.3}) view {view}");
            let x = activations(&mut rng, dims);
            let norm = BnNorm::Momentum {
                mean: &hist_mean,
                var: &hist_var,
                beta: &beta.into(),
                correction,
            };
            let (y, stats) = forward(&x, dims, &gamma, &shift, norm).unwrap();
            let stats = stats.expect("Momentum BN returns the batch statistics");
            let (mean_b, var_b) = channel_stats(&x, c);
            check_batch_stats(&what, &stats, &mean_b, &var_b, n);

            // Both views normalise with the history as it was before the
            // iteration: the forward never writes it.
            let mean_hat: Vec<f64> = (0..c)
                .map(|j| beta * mean_b[j] + (1.0 - beta) * mean_h[j])
                .collect();
            let var_hat: Vec<f64> = (0..c)
                .map(|j| beta * var_b[j] * extra + (1.0 - beta) * var_h[j])
                .collect();
            let expected = normalise(&x, &gamma, &shift, &mean_hat, &var_hat);
            assert_close(&format!("{what} y"), &y, &expected, 1e-6);
            assert_eq!((f64s(&hist_mean), f64s(&hist_var)), history, "{what}");
            views.push((stats, mean_b, var_b));
        }

        let [(s1, m1, v1), (s2, m2, v2)] = <[_; 2]>::try_from(views).unwrap();
        momentum_bn_update(&mut hist_mean, &mut hist_var, &s1, &s2, beta, correction).unwrap();
        for j in 0..c {
            mean_h[j] = beta * (m1[j] + m2[j]) / 2.0 + (1.0 - beta) * mean_h[j];
            var_h[j] = beta * (v1[j] + v2[j]) / 2.0 * extra + (1.0 - beta) * var_h[j];
        }
        let what = format!("history after iteration {k}");
        assert_close(&format!("{what} mean"), &f64s(&hist_mean), &mean_h, 1e-6);
        assert_close(&format!("{what} var"), &f64s(&hist_var), &var_h, 1e-6);
    }
}

#[test]
fn momentum_bn_nhwc_double_correction() {
    // n = 12 per channel; β = 1, 0.85, 0.5, 0.15.
    check_momentum_bn(&[3, 2, 2, 2], 0..4, 4, BesselCorrection::default(), 11);
}

#[test]
fn momentum_bn_1d_double_correction_from_the_initial_history() {
    // n = 5 (extra factor 1.25); starting at k = 1 so the first forward already
    // mixes in the initial history μ = 0, σ² = 1; β = 0.75, 0.25, 0 (pure history).
    check_momentum_bn(&[5, 3], 1..4, 3, BesselCorrection::Double, 12);
}

#[test]
fn momentum_bn_nhwc_single_correction() {
    check_momentum_bn(&[3, 2, 2, 2], 0..3, 3, BesselCorrection::Single, 13);
}

#[test]
fn momentum_bn_1d_single_correction() {
    check_momentum_bn(&[5, 3], 1..4, 4, BesselCorrection::Single, 14);
}

/// Two training-mode batches update the running statistics; evaluation mode
/// then normalises a third batch with them.
fn check_train_then_eval(dims: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let c = *dims.last().unwrap();
    let n = dims.iter().product::<usize>() / c;
    let nf = n as f64;
    let gamma = vec_in(&mut rng, c, 0.5, 1.5);
    let shift = vec_in(&mut rng, c, -0.5, 0.5);
    let mut running_mean = Tensor::from_vec(vec![0.0f32; c], [c]).unwrap();
    let mut running_var = Tensor::from_vec(vec![1.0f32; c], [c]).unwrap();
    let (mut rm, mut rv) = (vec![0.0; c], vec![1.0; c]);

    for step in 0..2 {
        let x = activations(&mut rng, dims);
        let (y, stats) = forward(&x, dims, &gamma, &shift, BnNorm::Batch).unwrap();
        let stats = stats.expect("training mode returns the batch statistics");
        let (mean_b, var_b) = channel_stats(&x, c);
        check_batch_stats(&format!("step {step}"), &stats, &mean_b, &var_b, n);
        // Normalisation uses the biased variance; the statistics carry the unbiased one.
        let biased: Vec<f64> = var_b.iter().map(|v| v * (nf - 1.0) / nf).collect();
        let expected = normalise(&x, &gamma, &shift, &mean_b, &biased);
        assert_close(&format!("step {step} y"), &y, &expected, 1e-6);

        update_running_stats(&mut running_mean, &mut running_var, &stats, 0.1).unwrap();
        for j in 0..c {
            rm[j] = 0.9 * rm[j] + 0.1 * mean_b[j];
            rv[j] = 0.9 * rv[j] + 0.1 * var_b[j];
        }
        assert_close("running mean", &f64s(&running_mean), &rm, 1e-6);
        assert_close("running var", &f64s(&running_var), &rv, 1e-6);
    }

    let x = activations(&mut rng, dims);
    let norm = BnNorm::Running {
        mean: &running_mean,
        var: &running_var,
    };
    let (y, stats) = forward(&x, dims, &gamma, &shift, norm).unwrap();
    assert!(
        stats.is_none(),
        "evaluation mode computes no batch statistics"
    );
    let expected = normalise(&x, &gamma, &shift, &rm, &rv);
    assert_close("eval y", &y, &expected, 1e-6);
}

#[test]
fn batch_norm_train_then_eval_nhwc() {
    check_train_then_eval(&[3, 2, 2, 2], 21);
}

#[test]
fn batch_norm_train_then_eval_1d() {
    check_train_then_eval(&[5, 3], 22);
}

#[test]
fn one_value_per_channel_is_an_error_not_a_panic() {
    let mut rng = Rng::new(31);
    let (gamma, shift) = (
        vec_in(&mut rng, 3, 0.5, 1.5),
        vec_in(&mut rng, 3, -0.5, 0.5),
    );
    let (mean, var) = (
        Tensor::from_vec(vec![0.0f32; 3], [3]).unwrap(),
        Tensor::from_vec(vec![1.0f32; 3], [3]).unwrap(),
    );
    for dims in [&[1, 1, 1, 3][..], &[1, 3]] {
        let x = vec_in(&mut rng, 3, -1.0, 1.0);
        let momentum = BnNorm::Momentum {
            mean: &mean,
            var: &var,
            beta: &0.5.into(),
            correction: BesselCorrection::Double,
        };
        for norm in [BnNorm::Batch, momentum] {
            let err = forward(&x, dims, &gamma, &shift, norm).unwrap_err();
            assert!(matches!(err, Error::Shape { .. }), "{dims:?}: {err}");
        }
        // Fixed statistics need no batch: one value per channel is fine.
        let (y, _) = forward(
            &x,
            dims,
            &gamma,
            &shift,
            BnNorm::Running {
                mean: &mean,
                var: &var,
            },
        )
        .unwrap();
        let expected = normalise(&x, &gamma, &shift, &[0.0; 3], &[1.0; 3]);
        assert_close("eval y", &y, &expected, 1e-6);
    }
}

#[test]
fn history_update_rejects_views_of_different_sizes() {
    let mut rng = Rng::new(32);
    let (gamma, shift) = (
        vec_in(&mut rng, 3, 0.5, 1.5),
        vec_in(&mut rng, 3, -0.5, 0.5),
    );
    let (x1, x2) = (
        vec_in(&mut rng, 12, -1.0, 1.0),
        vec_in(&mut rng, 15, -1.0, 1.0),
    );
    let (_, s1) = forward(&x1, &[4, 3], &gamma, &shift, BnNorm::Batch).unwrap();
    let (_, s2) = forward(&x2, &[5, 3], &gamma, &shift, BnNorm::Batch).unwrap();
    let mut mean = Tensor::from_vec(vec![0.0f32; 3], [3]).unwrap();
    let mut var = Tensor::from_vec(vec![1.0f32; 3], [3]).unwrap();
    let err = momentum_bn_update(
        &mut mean,
        &mut var,
        &s1.unwrap(),
        &s2.unwrap(),
        0.5,
        BesselCorrection::Double,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert_eq!(f64s(&mean), [0.0; 3]);
    assert_eq!(f64s(&var), [1.0; 3]);
}

#[test]
fn failed_updates_change_neither_buffer() {
    let stats = BatchStats {
        mean: tensor(&[0.5, 0.5], &[2]),
        var: tensor(&[2.0, 2.0], &[2]),
        count: 4,
    };
    let mut mean = tensor(&[0.0, 0.0], &[2]);
    let mut wrong_var = tensor(&[1.0, 1.0, 1.0], &[3]);
    assert!(update_running_stats(&mut mean, &mut wrong_var, &stats, 0.1).is_err());
    assert!(
        momentum_bn_update(
            &mut mean,
            &mut wrong_var,
            &stats,
            &stats,
            0.5,
            BesselCorrection::Double
        )
        .is_err()
    );
    assert_eq!(f64s(&mean), [0.0, 0.0]);

    // One value per channel would make the n/(n−1) correction infinite.
    let single = BatchStats { count: 1, ..stats };
    let mut var = tensor(&[1.0, 1.0], &[2]);
    assert!(
        momentum_bn_update(
            &mut mean,
            &mut var,
            &single,
            &single,
            0.5,
            BesselCorrection::Double
        )
        .is_err()
    );
    assert_eq!(f64s(&var), [1.0, 1.0]);
}
