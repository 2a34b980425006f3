//! One M2T iteration moves the teacher and its Momentum-BN history exactly as
//! m2t-method.md §2–§3 say.

use engine::ops::Conv2dParams;
use engine::optim::Sgd;
use engine::schedule::{ema_momentum, mbn_beta};
use engine::{Rng, Tape, Tensor};
use nets::m2t::{M2t, M2tConfig, TeacherBn, Which};
use nets::resnet::{Arch, ResNetConfig, Stem};

fn tiny(teacher_bn: TeacherBn) -> M2t {
    let backbone = ResNetConfig {
        arch: Arch::ResNet18,
        stem: Stem::Small,
        in_channels: 3,
        width: 4,
    };
    let config = M2tConfig {
        proj_hidden: 16,
        proj_out: 8,
        pred_hidden: 16,
        teacher_bn,
        ..M2tConfig::new(backbone)
    };
    M2t::new(config, 42).unwrap()
}

fn views(seed: u64) -> (Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let mut view = || Tensor::from_vec(rng.normal_vec(4 * 8 * 8 * 3, 1.0), [4, 8, 8, 3]).unwrap();
    (view(), view())
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().unwrap()
}

/// Per-channel mean and unbiased variance of the teacher's first conv on `x`.
fn stem_stats(model: &M2t, x: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let teacher = model.teacher();
    let w = teacher.value(teacher.find("conv1.weight").unwrap());
    let mut tape = Tape::no_grad();
    let (xv, wv) = (tape.constant(x.clone()), tape.constant(w));
    let y = tape
        .conv2d(
            &xv,
            &wv,
            Conv2dParams {
                stride: 1,
                padding: 1,
            },
        )
        .unwrap();
    let y = y.value().to_f64_vec().unwrap();
    let c = 4;
    let n = (y.len() / c) as f64;
    let mean: Vec<f64> = (0..c)
        .map(|j| y.iter().skip(j).step_by(c).sum::<f64>() / n)
        .collect();
    let var = (0..c)
        .map(|j| {
            y.iter()
                .skip(j)
                .step_by(c)
                .map(|v| (v - mean[j]).powi(2))
                .sum::<f64>()
                / (n - 1.0)
        })
        .collect();
    (mean, var)
}

#[test]
fn teacher_starts_as_an_exact_copy_without_predictor() {
    let model = tiny(TeacherBn::Momentum);
    let (s, t) = (model.student(), model.teacher());
    assert!(t.find("predictor.0.weight").is_none() && s.find("predictor.0.weight").is_some());
    assert!(t.find("projector.3.bias").is_some());
    let n = t.flat_len();
    assert!(n < s.flat_len());
    assert_eq!(values(t.values()), values(s.values())[..n]);
}

#[test]
fn one_step_moves_teacher_by_ema_and_history_by_the_lazy_rule() {
    let mut model = tiny(TeacherBn::Momentum);
    let total = 5;
    // A first step and an SGD update make student and teacher differ.
    let (a, b) = views(1);
    let first = model
        .step(&a, &b, &model.schedule(0, total, 0.5).unwrap())
        .unwrap();
    assert!(first.loss.is_finite() && (0.0..=8.0).contains(&first.loss));
    let mut sgd = Sgd::new(model.student(), 0.9, 1e-4).unwrap();
    sgd.step(model.student_mut(), 0.5).unwrap();

    let k = 2;
    let (x1, x2) = views(2);
    let old_student = values(model.student().values());
    let old_teacher = values(model.teacher().values());
    let (old_mean, old_var) = {
        let (_, buffers) = model.network(Which::Teacher);
        (
            buffers.mean(0).to_f64_vec().unwrap(),
            buffers.var(0).to_f64_vec().unwrap(),
        )
    };
    assert_ne!(old_student[..old_teacher.len()], old_teacher[..]);

    let numbers = model.schedule(k, total, 0.5).unwrap();
    let report = model.step(&x1, &x2, &numbers).unwrap();
    let beta = mbn_beta(k, total);
    assert_eq!(
        (report.ema_momentum, report.mbn_beta),
        (ema_momentum(k, total, 0.99), beta)
    );
    let m = report.ema_momentum as f32;
    assert!(beta > 0.0 && beta < 1.0);

    // Teacher ← m·teacher + (1 − m)·student, taken before this step's forward.
    let new_teacher = values(model.teacher().values());
    for (i, ((&t, &s), &new)) in old_teacher
        .iter()
        .zip(&old_student)
        .zip(&new_teacher)
        .enumerate()
    {
        assert_eq!(new, m * t + (1.0 - m) * s, "teacher element {i}");
    }
    // The student's values are the optimiser's business: step() leaves them.
    assert_eq!(values(model.student().values()), old_student);
    // ... but it leaves this step's gradients in the student's gradient buffer.
    assert!(values(model.student().grads()).iter().any(|&g| g != 0.0));

    // History of the stem BN: β·mean of the two views' batch statistics (with
    // the release's double Bessel correction on the variance) + (1 − β)·old.
    let (m1, v1) = stem_stats(&model, &x1);
    let (m2, v2) = stem_stats(&model, &x2);
    let n = (4 * 8 * 8) as f64;
    let (_, buffers) = model.network(Which::Teacher);
    let (mean, var) = (
        buffers.mean(0).to_f64_vec().unwrap(),
        buffers.var(0).to_f64_vec().unwrap(),
    );
    for c in 0..4 {
        let want_mean = beta * (m1[c] + m2[c]) / 2.0 + (1.0 - beta) * old_mean[c];
        let want_var = beta * (v1[c] + v2[c]) / 2.0 * n / (n - 1.0) + (1.0 - beta) * old_var[c];
        assert!(
            (mean[c] - want_mean).abs() < 1e-5 * want_mean.abs().max(1.0),
            "mean[{c}] {} vs {want_mean}",
            mean[c]
        );
        assert!(
            (var[c] - want_var).abs() < 1e-5 * want_var.abs().max(1.0),
            "var[{c}] {} vs {want_var}",
            var[c]
        );
    }
    // Every teacher BN layer's history moved, including the projector's BN1d.
    for i in 0..buffers.len() {
        assert_ne!(
            values(buffers.mean(i)),
            vec![0.0; buffers.mean(i).numel()],
            "{}",
            buffers.name(i)
        );
    }
}

#[test]
fn plain_teacher_bn_keeps_running_statistics_instead() {
    let mut model = tiny(TeacherBn::Plain);
    let (x1, x2) = views(3);
    let report = model
        .step(&x1, &x2, &model.schedule(0, 4, 0.5).unwrap())
        .unwrap();
    assert!(report.loss.is_finite());
    let (m1, v1) = stem_stats(&model, &x1);
    let (m2, v2) = stem_stats(&model, &x2);
    // Two training-mode updates (momentum 0.1) from mean 0 / var 1: view 2 first.
    let (_, buffers) = model.network(Which::Teacher);
    let (mean, var) = (
        buffers.mean(0).to_f64_vec().unwrap(),
        buffers.var(0).to_f64_vec().unwrap(),
    );
    for c in 0..4 {
        let want_mean = 0.9 * (0.1 * m2[c]) + 0.1 * m1[c];
        let want_var = 0.9 * (0.9 + 0.1 * v2[c]) + 0.1 * v1[c];
        assert!((mean[c] - want_mean).abs() < 1e-5, "mean[{c}]");
        assert!((var[c] - want_var).abs() < 1e-5 * want_var, "var[{c}]");
    }
}

#[test]
fn features_have_the_backbone_width() {
    let model = tiny(TeacherBn::Momentum);
    let (x, _) = views(4);
    for which in [Which::Student, Which::Teacher] {
        let f = model.features(which, &x).unwrap();
        assert_eq!(f.dims(), &[4, 32]);
    }
}
