//! Parity with PyTorch: one Momentum² Teacher step of a tiny ResNet-18 (small
//! stem, width 4, batch 4, 16×16 images) against a float64 PyTorch reference.
//!
//! The fixtures in `fixtures/m2t_tiny/` are written by `fixtures/gen_torch.py`
//! (run by hand with PyTorch; CI only reads the committed files). They hold the
//! student and teacher as PyTorch-named safetensors, the two views, and every
//! quantity the step produces: loss, student gradients, the teacher after the
//! EMA, the Momentum-BN history after the lazy update and the student's running
//! statistics after its two forwards. A missing fixture fails the test.

use engine::Tensor;
use nets::m2t::{M2t, M2tConfig, Which};
use nets::resnet::{Arch, ResNetConfig, Stem};
use nets::weights::{Part, import, to_torch_layout};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// Largest error allowed, relative to the largest |expected| of each tensor...
const RTOL: f64 = 1e-4;

/// ...unless PyTorch's own f32 run of the same step is already further off the
/// float64 reference than `RTOL` (the fixture records that error per tensor as
/// `torch_f32_err.<name>`): then up to this many times PyTorch's error. It is
/// so for a few backbone gradients, BN γ/β sums over 1024 values with heavy
/// cancellation, where PyTorch's f32 itself reaches ~1.6e-4.
const BASELINE_FACTOR: f64 = 2.0;

/// Smallest scale an error is measured against. Three gradients are exactly zero
/// in exact arithmetic (the biases of `projector.0`, `projector.3` and
/// `predictor.0`: each feeds a training-mode BN, which removes any per-channel
/// shift), so PyTorch's float64 gives ~1e-15 and any f32 run rounding noise
/// (the engine ~6e-8, PyTorch's f32 ~1.6e-6): they are measured against this.
const SCALE_FLOOR: f64 = 1e-3;

const SEED: u64 = 7;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("m2t_tiny")
        .join(name)
}

/// Reads a fixture, failing loudly (never skipping) when it is absent.
fn read_fixture(name: &str) -> Vec<u8> {
    let path = fixture(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "parity fixture {} is missing or unreadable ({e}); regenerate it with \
             `/opt/torchenv/bin/python tests/fixtures/gen_torch.py`",
            path.display()
        )
    })
}

/// `expected.safetensors`, with every tensor widened to f64.
struct Expected<'a>(SafeTensors<'a>);

impl Expected<'_> {
    fn names(&self, prefix: &str) -> BTreeSet<String> {
        self.0
            .names()
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    fn get(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let view = self
            .0
            .tensor(name)
            .unwrap_or_else(|e| panic!("expected.safetensors has no tensor {name}: {e}"));
        let bytes = view.data();
        let data = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I64 => bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("{name}: unsupported dtype {other:?}"),
        };
        (view.shape().to_vec(), data)
    }

    fn scalar(&self, name: &str) -> f64 {
        let (shape, data) = self.get(name);
        assert_eq!(
            data.len(),
            1,
            "{name} should hold one value, has shape {shape:?}"
        );
        data[0]
    }
}

/// The worst relative error over a group of tensors, and every tensor over `RTOL`.
struct Group {
    label: &'static str,
    tensors: usize,
    worst: f64,
    worst_name: String,
    /// PyTorch f32's error on the worst tensor.
    worst_baseline: f64,
    /// Tensors above `RTOL` but within `BASELINE_FACTOR` × PyTorch f32's error.
    by_baseline: usize,
    failures: Vec<String>,
}

impl Group {
    fn new(label: &'static str) -> Self {
        Group {
            label,
            tensors: 0,
            worst: 0.0,
            worst_name: String::new(),
            worst_baseline: 0.0,
            by_baseline: 0,
            failures: Vec::new(),
        }
    }

    /// Compares `actual` (shape and data, PyTorch layout) with the fixture's `name`.
    fn check(&mut self, expected: &Expected, name: &str, shape: &[usize], actual: &[f64]) {
        let (want_shape, want) = expected.get(name);
        assert_eq!(
            shape,
            want_shape.as_slice(),
            "{name}: engine shape {shape:?}, PyTorch shape {want_shape:?}"
        );
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = actual
            .iter()
            .zip(&want)
            .fold(0.0f64, |m, (a, e)| m.max((a - e).abs()));
        let err = if actual.iter().all(|a| a.is_finite()) {
            diff / scale.max(SCALE_FLOOR)
        } else {
            f64::INFINITY
        };
        let baseline = expected.scalar(&format!("torch_f32_err.{name}"));
        let limit = RTOL.max(BASELINE_FACTOR * baseline);
        self.tensors += 1;
        if err >= self.worst {
            self.worst = err;
            self.worst_name = name.to_string();
            self.worst_baseline = baseline;
        }
        if err > RTOL && err <= limit {
            self.by_baseline += 1;
        }
        if err.is_nan() || err > limit {
            self.failures.push(format!(
                "{name}: max |Δ| {diff:.3e} over scale {scale:.3e} = {err:.3e} \
                 (limit {limit:.3e}; PyTorch f32 {baseline:.3e})"
            ));
        }
    }

    fn check_tensor(&mut self, expected: &Expected, name: &str, t: &Tensor) {
        let data = t.to_f64_vec().unwrap();
        self.check(expected, name, t.dims(), &data);
    }

    /// A parameter in the engine's layout, converted to PyTorch's (OIHW).
    fn check_param(&mut self, expected: &Expected, name: &str, t: &Tensor) {
        let (shape, data) = to_torch_layout(t.dims(), t.as_slice::<f32>().unwrap());
        let data: Vec<f64> = data.into_iter().map(f64::from).collect();
        self.check(expected, name, &shape, &data);
    }

    fn report(&self) -> Vec<String> {
        println!(
            "{:<22} {:>3} tensors  max rel err {:.3e}  ({}; PyTorch f32 {:.3e}){}",
            self.label,
            self.tensors,
            self.worst,
            self.worst_name,
            self.worst_baseline,
            match self.by_baseline {
                0 => String::new(),
                n => format!("  [{n} above {RTOL:e}, within {BASELINE_FACTOR}× PyTorch f32]"),
            }
        );
        assert!(self.tensors > 0, "{}: nothing compared", self.label);
        self.failures.clone()
    }
}

/// Asserts the fixture holds exactly the tensors the engine has under `prefix`.
fn assert_same_names(expected: &Expected, prefix: &str, engine: BTreeSet<String>) {
    let file = expected.names(prefix);
    let missing: Vec<_> = engine.difference(&file).collect();
    let extra: Vec<_> = file.difference(&engine).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{prefix}*: missing from the fixture {missing:?}, unknown to the engine {extra:?}"
    );
}

fn images(expected: &Expected, name: &str) -> Tensor {
    let (shape, data) = expected.get(name);
    assert_eq!(shape, [4, 16, 16, 3], "{name} must be NHWC [4,16,16,3]");
    let data: Vec<f32> = data.into_iter().map(|v| v as f32).collect();
    Tensor::from_vec(data, shape).unwrap()
}

#[test]
fn one_m2t_step_matches_pytorch() {
    let bytes = read_fixture("expected.safetensors");
    let expected = Expected(SafeTensors::deserialize(&bytes).expect("expected.safetensors"));
    let (student_file, teacher_file) = (
        fixture("student.safetensors"),
        fixture("teacher.safetensors"),
    );
    for f in [&student_file, &teacher_file] {
        assert!(
            f.is_file(),
            "parity fixture {} is missing; regenerate it with \
             `/opt/torchenv/bin/python tests/fixtures/gen_torch.py`",
            f.display()
        );
    }
    let k = expected.scalar("step.k") as usize;
    let total = expected.scalar("step.total") as usize;
    let m0 = expected.scalar("step.m0");

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
        ema_base: m0,
        ..M2tConfig::new(backbone)
    };
    let mut model = M2t::new(config, SEED).unwrap();
    for (which, path) in [
        (Which::Student, &student_file),
        (Which::Teacher, &teacher_file),
    ] {
        let (store, buffers) = model.network_mut(which);
        import(path, store, buffers, Part::Whole)
            .unwrap_or_else(|e| panic!("importing {}: {e}", path.display()));
    }
    let (x1, x2) = (images(&expected, "x1"), images(&expected, "x2"));

    // Eval-mode features before the step: running statistics / MBN history.
    let mut features = Group::new("features (eval)");
    for (which, name) in [
        (Which::Student, "features.student"),
        (Which::Teacher, "features.teacher"),
    ] {
        let f = model.features(which, &x1).unwrap();
        features.check_tensor(&expected, name, &f);
    }

    let numbers = model.schedule(k, total, 0.05).unwrap();
    let report = model.step(&x1, &x2, &numbers).unwrap();
    for (what, got, name) in [
        ("EMA momentum", report.ema_momentum, "step.ema_momentum"),
        ("Momentum-BN beta", report.mbn_beta, "step.mbn_beta"),
    ] {
        let want = expected.scalar(name);
        assert!(
            (got - want).abs() < 1e-12,
            "{what}: engine {got}, PyTorch {want}"
        );
    }
    let mut loss = Group::new("loss");
    loss.check(&expected, "loss", &[1], &[report.loss]);

    // Student gradients, per part of the network.
    let student = model.student();
    let mut grads = [
        Group::new("grad backbone"),
        Group::new("grad projector"),
        Group::new("grad predictor"),
    ];
    let mut names = BTreeSet::new();
    for id in student.ids() {
        let name = &student.info(id).name;
        let group = if name.starts_with("projector.") {
            1
        } else if name.starts_with("predictor.") {
            2
        } else {
            0
        };
        let key = format!("grad.{name}");
        grads[group].check_param(&expected, &key, &student.grad(id));
        names.insert(key);
    }
    assert_same_names(&expected, "grad.", names);

    // Teacher parameters after the EMA.
    let teacher = model.teacher();
    let mut teacher_after = Group::new("teacher params (EMA)");
    let mut names = BTreeSet::new();
    for id in teacher.ids() {
        let key = format!("teacher_after.{}", teacher.info(id).name);
        teacher_after.check_param(&expected, &key, &teacher.value(id));
        names.insert(key);
    }
    assert_same_names(&expected, "teacher_after.", names);

    // BN buffers: the teacher's Momentum-BN history after the lazy update, and
    // the student's running statistics after view 1 then view 2.
    let mut buffer_groups = Vec::new();
    for (which, prefix, label) in [
        (Which::Teacher, "history_after.", "teacher MBN history"),
        (
            Which::Student,
            "student_running_after.",
            "student running stats",
        ),
    ] {
        let (_, buffers) = model.network(which);
        let mut group = Group::new(label);
        let mut names = BTreeSet::new();
        for i in 0..buffers.len() {
            for (suffix, t) in [
                ("running_mean", buffers.mean(i)),
                ("running_var", buffers.var(i)),
            ] {
                let key = format!("{prefix}{}.{suffix}", buffers.name(i));
                group.check_tensor(&expected, &key, t);
                names.insert(key);
            }
        }
        assert_same_names(&expected, prefix, names);
        buffer_groups.push(group);
    }

    let failures: Vec<String> = [features, loss]
        .iter()
        .chain(&grads)
        .chain([&teacher_after])
        .chain(&buffer_groups)
        .flat_map(Group::report)
        .collect();
    assert!(
        failures.is_empty(),
        "{} tensor(s) differ from PyTorch by more than {RTOL:e} (relative):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
