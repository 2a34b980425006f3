//! SGD, LARS, the EMA teacher update and the schedules against closed forms
//! computed by hand in f64 (m2t-method.md §2 and §4), plus the gradient-buffer
//! and buffer-in-use rules of `ParamStore`.

use engine::optim::{Lars, Sgd, ema_update};
use engine::schedule::{LrSchedule, WARMUP_START_LR, ema_momentum, mbn_beta};
use engine::{Error, ParamId, ParamKind, ParamStore, ParamStoreBuilder, Rng, Tape, Tensor};
use std::f64::consts::PI;

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec().unwrap()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `|a − e| ≤ rtol·max|e|` per element: relative to the tensor's scale, so an
/// element that cancels to near zero is not held to an impossible bound.
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

/// The `numel(id)` elements of an optimiser buffer that belong to `id`.
fn param_slice(store: &ParamStore, buf: &Tensor, id: ParamId) -> Vec<f64> {
    let info = store.info(id);
    f64s(buf)[info.offset..info.offset + info.shape.numel()].to_vec()
}

/// Adds `g` to the gradient of `id`, exactly: backward from a flat reshape of
/// the parameter, seeded with `g`.
fn add_grad(store: &mut ParamStore, id: ParamId, g: &[f32]) {
    let mut tape = Tape::new();
    let vars = store.attach(&mut tape);
    let flat = tape.reshape(vars.get(id), [g.len()]).unwrap();
    let seed = Tensor::from_vec(g.to_vec(), [g.len()]).unwrap();
    let grads = tape.backward_with(&flat, seed).unwrap();
    drop(flat); // a view of the value buffer
    store.accumulate_grads(vars, &grads).unwrap();
}

/// Backpropagates upstream gradient `dy [n,out]` through `y = x·wᵀ (+ b)` into
/// the store's gradient buffer.
fn backprop_linear(
    store: &mut ParamStore,
    (w, b): (ParamId, Option<ParamId>),
    x: &[f32],
    dy: &[f32],
) {
    let dims = store.info(w).shape.dims().to_vec();
    let (out_f, in_f) = (dims[0], dims[1]);
    let n = x.len() / in_f;
    let mut tape = Tape::new();
    let vars = store.attach(&mut tape);
    let x = tape.constant(Tensor::from_vec(x.to_vec(), [n, in_f]).unwrap());
    let y = tape
        .linear(&x, vars.get(w), b.map(|b| vars.get(b)))
        .unwrap();
    let seed = Tensor::from_vec(dy.to_vec(), [n, out_f]).unwrap();
    let grads = tape.backward_with(&y, seed).unwrap();
    store.accumulate_grads(vars, &grads).unwrap();
}

/// `dw = dyᵀ·x` and `db = Σ_rows dy`, by hand in f64.
fn linear_grads(x: &[f32], dy: &[f32], out_f: usize, in_f: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / in_f;
    let mut dw = vec![0.0; out_f * in_f];
    let mut db = vec![0.0; out_f];
    for r in 0..n {
        for o in 0..out_f {
            let d = dy[r * out_f + o] as f64;
            db[o] += d;
            for i in 0..in_f {
                dw[o * in_f + i] += d * x[r * in_f + i] as f64;
            }
        }
    }
    (dw, db)
}

/// A store with a `[3,5]` weight and a `[3]` bias (odd sizes, so nothing lines
/// up with the 64-element alignment).
fn linear_store(rng: &mut Rng) -> (ParamStore, ParamId, ParamId) {
    let mut b = ParamStoreBuilder::new();
    let w = b
        .add(
            "fc.weight",
            [3, 5],
            ParamKind::Weight,
            rng.uniform_vec(15, 1.0),
        )
        .unwrap();
    let bias = b
        .add("fc.bias", [3], ParamKind::Bias, rng.uniform_vec(3, 1.0))
        .unwrap();
    (b.build().unwrap(), w, bias)
}

#[test]
fn sgd_matches_pytorch_rule_over_two_steps() {
    let mut rng = Rng::new(0x5eed_0001);
    let (mut store, w, b) = linear_store(&mut rng);
    let (mu, wd) = (0.9f32, 1e-4f32);
    let mut sgd = Sgd::new(&store, mu, wd).unwrap();
    let (mu64, wd64) = (mu as f64, wd as f64);

    let ids = [w, b];
    let mut weights: Vec<Vec<f64>> = ids.iter().map(|&id| f64s(&store.value(id))).collect();
    let mut velocity: Vec<Vec<f64>> = weights.iter().map(|p| vec![0.0; p.len()]).collect();

    for lr in [0.1f32, 0.03] {
        let (x, dy) = (rng.uniform_vec(4 * 5, 1.0), rng.uniform_vec(4 * 3, 1.0));
        store.zero_grad().unwrap();
        backprop_linear(&mut store, (w, Some(b)), &x, &dy);
        let (dw, db) = linear_grads(&x, &dy, 3, 5);
        assert_close("dw", &f64s(&store.grad(w)), &dw, 1e-6);
        assert_close("db", &f64s(&store.grad(b)), &db, 1e-6);

        sgd.step(&mut store, lr).unwrap();
        for (p, g) in [dw, db].iter().enumerate() {
            for j in 0..g.len() {
                let wj = weights[p][j];
                velocity[p][j] = mu64 * velocity[p][j] + (g[j] + wd64 * wj);
                weights[p][j] = wj - lr as f64 * velocity[p][j];
            }
            let id = ids[p];
            let name = &store.info(id).name;
            assert_close(name, &f64s(&store.value(id)), &weights[p], 1e-6);
            let v = param_slice(&store, sgd.velocity(), id);
            assert_close(&format!("{name} velocity"), &v, &velocity[p], 1e-6);
        }
    }
}

#[test]
fn lars_trust_ratio_for_weights_only_over_two_steps() {
    let mut rng = Rng::new(0x5eed_0002);
    let mut builder = ParamStoreBuilder::new();
    let params: Vec<(ParamId, f32)> = [
        ("conv.weight", vec![4, 3], ParamKind::Weight, 10.0),
        ("fc.weight", vec![3, 5], ParamKind::Weight, 0.1),
        ("fc.bias", vec![3], ParamKind::Bias, 1.0),
        ("bn.gamma", vec![5], ParamKind::BnScale, 0.5),
        ("bn.beta", vec![5], ParamKind::BnShift, 2.0),
    ]
    .into_iter()
    .map(|(name, dims, kind, grad_scale)| {
        let n = dims.iter().product();
        let id = builder
            .add(name, dims, kind, rng.uniform_vec(n, 1.0))
            .unwrap();
        // Gradient scales differ per parameter so the trust ratio matters.
        (id, grad_scale)
    })
    .collect();
    let mut store = builder.build().unwrap();
    // Weight decay far above the release's 1e-6, so its share of both the
    // trust ratio and the update is well above the tolerance.
    let (eta, mu, wd) = (1e-3f32, 0.9f32, 1e-2f32);
    let mut lars = Lars::new(&store, eta, mu, wd).unwrap();
    let (eta64, mu64, wd64) = (eta as f64, mu as f64, wd as f64);

    let mut weights: Vec<Vec<f64>> = params
        .iter()
        .map(|&(id, _)| f64s(&store.value(id)))
        .collect();
    let mut velocity: Vec<Vec<f64>> = weights.iter().map(|p| vec![0.0; p.len()]).collect();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();

    for lr in [4.8f32, 3.2] {
        store.zero_grad().unwrap();
        let mut grads = Vec::new();
        for &(id, scale) in &params {
            let g: Vec<f32> = rng
                .uniform_vec(store.info(id).shape.numel(), 1.0)
                .iter()
                .map(|x| x * scale)
                .collect();
            add_grad(&mut store, id, &g);
            grads.push(widen(&g));
        }
        lars.step(&mut store, lr).unwrap();

        for (p, &(id, _)) in params.iter().enumerate() {
            let (w, g) = (&weights[p], &grads[p]);
            let local = if store.info(id).kind == ParamKind::Weight {
                eta64 * norm(w) / (norm(g) + wd64 * norm(w))
            } else {
                1.0
            };
            for j in 0..w.len() {
                velocity[p][j] = mu64 * velocity[p][j] + lr as f64 * local * (g[j] + wd64 * w[j]);
            }
            for j in 0..w.len() {
                weights[p][j] -= velocity[p][j];
            }
            let name = &store.info(id).name;
            let v = param_slice(&store, lars.velocity(), id);
            assert_close(&format!("{name} velocity"), &v, &velocity[p], 1e-6);
            assert_close(name, &f64s(&store.value(id)), &weights[p], 1e-6);
        }
    }
}

type Layout<'a> = &'a [(&'static str, &'static [usize], ParamKind)];

/// Backbone + projector: what the teacher and student share.
const SHARED: Layout<'static> = &[
    ("stem.weight", &[4, 3, 3, 2], ParamKind::Weight),
    ("stem.bn.gamma", &[4], ParamKind::BnScale),
    ("stem.bn.beta", &[4], ParamKind::BnShift),
    ("proj.weight", &[3, 4], ParamKind::Weight),
    ("proj.bias", &[3], ParamKind::Bias),
];

/// Student only, last.
const PREDICTOR: Layout<'static> = &[
    ("pred.weight", &[3, 3], ParamKind::Weight),
    ("pred.bias", &[3], ParamKind::Bias),
];

fn store_of(layouts: &[Layout<'_>], rng: &mut Rng) -> ParamStore {
    let mut b = ParamStoreBuilder::new();
    for &(name, dims, kind) in layouts.iter().flat_map(|l| l.iter()) {
        let n = dims.iter().product();
        b.add(name, dims, kind, rng.uniform_vec(n, 1.0)).unwrap();
    }
    b.build().unwrap()
}

fn all_values(store: &ParamStore) -> Vec<f32> {
    store.values().to_vec::<f32>().unwrap()
}

#[test]
fn ema_averages_the_shared_prefix_and_leaves_the_student_alone() {
    let mut rng = Rng::new(0x5eed_0003);
    let student = store_of(&[SHARED, PREDICTOR], &mut rng);
    let mut teacher = store_of(&[SHARED], &mut rng);
    let (student_before, teacher_before) = (all_values(&student), all_values(&teacher));
    let flat_len = teacher.flat_len();

    let m = ema_momentum(123, 1000, 0.99) as f32;
    ema_update(&mut teacher, &student, m).unwrap();

    let m64 = m as f64;
    for id in teacher.ids() {
        let info = teacher.info(id);
        let s = f64s(&student.value(student.find(&info.name).unwrap()));
        let r = info.offset..info.offset + info.shape.numel();
        let expected: Vec<f64> = widen(&teacher_before[r])
            .iter()
            .zip(&s)
            .map(|(t, s)| m64 * t + (1.0 - m64) * s)
            .collect();
        assert_close(&info.name, &f64s(&teacher.value(id)), &expected, 1e-6);
    }
    // The predictor has no twin: the teacher gains nothing and the student is
    // bit-for-bit as it was.
    assert_eq!(teacher.infos().len(), SHARED.len());
    assert_eq!(teacher.flat_len(), flat_len);
    assert!(teacher.find("pred.weight").is_none());
    assert_eq!(all_values(&student), student_before);
}

#[test]
fn ema_with_zero_momentum_copies_the_student_exactly() {
    let mut rng = Rng::new(0x5eed_0004);
    let student = store_of(&[SHARED, PREDICTOR], &mut rng);
    let mut teacher = store_of(&[SHARED], &mut rng);
    ema_update(&mut teacher, &student, 0.0).unwrap();
    for id in teacher.ids() {
        let name = &teacher.info(id).name;
        let t = teacher.value(id).to_vec::<f32>().unwrap();
        let s = student
            .value(student.find(name).unwrap())
            .to_vec::<f32>()
            .unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&t), bits(&s), "{name}");
    }
}

#[test]
fn ema_rejects_a_teacher_that_is_not_a_layout_prefix() {
    let mut rng = Rng::new(0x5eed_0005);
    let student = store_of(&[SHARED, PREDICTOR], &mut rng);
    let reordered = [SHARED[1], SHARED[0], SHARED[2], SHARED[3], SHARED[4]];
    let renamed: Layout = &[("stem.w", &[4, 3, 3, 2], ParamKind::Weight)];
    let reshaped: Layout = &[("stem.weight", &[4, 3, 3, 3], ParamKind::Weight)];
    let bad: [&[Layout<'_>]; 4] = [
        &[&reordered],
        &[renamed],
        &[reshaped],
        // Longer than the student: the student cannot hold it.
        &[SHARED, PREDICTOR, &[("extra", &[2], ParamKind::Bias)]],
    ];
    for layouts in bad {
        let mut teacher = store_of(layouts, &mut rng);
        let before = all_values(&teacher);
        let err = ema_update(&mut teacher, &student, 0.5).unwrap_err();
        assert!(matches!(err, Error::Param(_)), "{err}");
        assert_eq!(all_values(&teacher), before, "a failed update wrote");
    }
}

#[test]
fn lr_schedule_warms_up_linearly_then_decays_by_cosine() {
    let (base, warmup, total) = (0.2, 10, 110);
    let s = LrSchedule {
        base_lr: base,
        warmup_iters: warmup,
        total_iters: total,
    };
    let decay = (total - warmup) as f64;
    assert_eq!(WARMUP_START_LR, 1e-6);
    assert_eq!(s.at(0), WARMUP_START_LR);
    let mid_warmup = 1e-6 + (base - 1e-6) * 0.5;
    assert!((s.at(5) - mid_warmup).abs() < 1e-15, "{}", s.at(5));
    assert!((s.at(warmup) - base).abs() < 1e-15, "{}", s.at(warmup));
    // Cosine midpoint: half the base rate.
    assert!((s.at(warmup + 50) - base / 2.0).abs() < 1e-15);
    // Last step: base·(cos(π·(D−1)/D) + 1)/2 = base·sin²(π/2D), small but positive.
    let last = base * (PI / (2.0 * decay)).sin().powi(2);
    assert!(last > 0.0 && last < 1e-4);
    assert!(
        (s.at(total - 1) - last).abs() < 1e-15,
        "{}",
        s.at(total - 1)
    );
    // Rising through warm-up, falling after.
    let lrs: Vec<f64> = (0..total).map(|k| s.at(k)).collect();
    assert!(lrs[..=warmup].windows(2).all(|w| w[0] < w[1]));
    assert!(lrs[warmup..].windows(2).all(|w| w[0] > w[1]));
}

#[test]
fn ema_momentum_and_mbn_beta_follow_the_cosine() {
    let total = 1000;
    // (cos(π·(K−1)/K) + 1)/2 = sin²(π/2K).
    let tail = (PI / (2.0 * total as f64)).sin().powi(2);

    assert!((ema_momentum(0, total, 0.99) - 0.99).abs() < 1e-15);
    assert!((ema_momentum(total / 2, total, 0.99) - 0.995).abs() < 1e-15);
    let last = ema_momentum(total - 1, total, 0.99);
    assert!((last - (1.0 - 0.01 * tail)).abs() < 1e-15, "{last}");
    assert!(last < 1.0);

    assert_eq!(mbn_beta(0, total), 1.0);
    assert!((mbn_beta(total / 2, total) - 0.5).abs() < 1e-15);
    let last = mbn_beta(total - 1, total);
    // 1 + cos(x) near x = π loses ~1e-16 absolute; compare relatively.
    assert!(last > 0.0 && (last - tail).abs() < 1e-9 * tail, "{last}");
}

#[test]
fn gradients_accumulate_across_backward_passes_until_zeroed() {
    let mut rng = Rng::new(0x5eed_0006);
    let (mut store, w, b) = linear_store(&mut rng);
    let (x1, dy1) = (rng.uniform_vec(4 * 5, 1.0), rng.uniform_vec(4 * 3, 1.0));
    let (x2, dy2) = (rng.uniform_vec(2 * 5, 1.0), rng.uniform_vec(2 * 3, 1.0));
    let (dw1, db1) = linear_grads(&x1, &dy1, 3, 5);
    let (dw2, _) = linear_grads(&x2, &dy2, 3, 5);

    backprop_linear(&mut store, (w, Some(b)), &x1, &dy1);
    assert_close("dw after one pass", &f64s(&store.grad(w)), &dw1, 1e-6);
    // Second pass without the bias: the weight's gradient adds up, the bias
    // keeps what it had.
    backprop_linear(&mut store, (w, None), &x2, &dy2);
    let sum: Vec<f64> = dw1.iter().zip(&dw2).map(|(a, b)| a + b).collect();
    assert_close("dw after two passes", &f64s(&store.grad(w)), &sum, 1e-6);
    assert_close("db after two passes", &f64s(&store.grad(b)), &db1, 1e-6);

    store.zero_grad().unwrap();
    let grads = store.grads().to_vec::<f32>().unwrap();
    assert_eq!(grads.len(), store.flat_len());
    assert!(grads.iter().all(|&g| g == 0.0));
}

#[test]
fn updates_fail_cleanly_while_views_of_the_values_are_alive() {
    let mut rng = Rng::new(0x5eed_0007);
    let (mut store, w, b) = linear_store(&mut rng);
    backprop_linear(
        &mut store,
        (w, Some(b)),
        &rng.uniform_vec(4 * 5, 1.0),
        &rng.uniform_vec(4 * 3, 1.0),
    );
    let mut sgd = Sgd::new(&store, 0.9, 1e-4).unwrap();
    let mut lars = Lars::new(&store, 1e-3, 0.9, 1e-6).unwrap();
    let before = all_values(&store);
    let in_use = |r: engine::Result<()>| matches!(r, Err(Error::BufferInUse { .. }));

    let mut tape = Tape::new();
    let vars = store.attach(&mut tape);
    assert!(in_use(sgd.step(&mut store, 0.1)));
    assert!(in_use(lars.step(&mut store, 0.1)));
    drop(vars);

    let view = store.value(b);
    assert!(in_use(sgd.step(&mut store, 0.1)));
    drop(view);

    // The EMA writes the teacher: a live view of it blocks the update.
    let (mut teacher, _, _) = linear_store(&mut rng);
    let teacher_before = all_values(&teacher);
    let teacher_view = teacher.value(w);
    assert!(in_use(ema_update(&mut teacher, &store, 0.5)));
    drop(teacher_view);
    assert_eq!(all_values(&teacher), teacher_before);

    let grad_view = store.grad(w);
    assert!(in_use(store.zero_grad()));
    drop(grad_view);

    // Nothing was written by the failed calls.
    assert_eq!(all_values(&store), before);
    assert!(f64s(sgd.velocity()).iter().all(|&v| v == 0.0));
    assert!(f64s(lars.velocity()).iter().all(|&v| v == 0.0));

    // With every view gone the same calls succeed.
    sgd.step(&mut store, 0.1).unwrap();
    assert_ne!(all_values(&store), before);
    ema_update(&mut teacher, &store, 0.5).unwrap();
    assert_ne!(all_values(&teacher), teacher_before);
    store.zero_grad().unwrap();
}

#[test]
fn optimisers_refuse_a_store_they_were_not_built_for() {
    let mut rng = Rng::new(77);
    let (small, _, _) = linear_store(&mut rng);
    let mut b = ParamStoreBuilder::new();
    b.add("big", [300], ParamKind::Weight, vec![1.0; 300])
        .unwrap();
    let mut big = b.build().unwrap();
    let mut sgd = Sgd::new(&small, 0.9, 0.0).unwrap();
    let mut lars = Lars::new(&small, 0.001, 0.9, 0.0).unwrap();
    assert!(matches!(sgd.step(&mut big, 0.1), Err(Error::Param(_))));
    assert!(matches!(lars.step(&mut big, 0.1), Err(Error::Param(_))));
    assert!(all_values(&big)[..300].iter().all(|&v| v == 1.0));
}
