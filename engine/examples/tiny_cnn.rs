//! Embedding the engine in your own tool: a tiny CNN trained end to end through
//! the public API alone, on the CPU, in a few seconds.
//!
//! It shows the whole training loop the trainer crate builds on:
//!
//! - parameters declared in a [`ParamStoreBuilder`] (Kaiming-normal conv
//!   weights from a small PRNG written here) and kept in one flat [`ParamStore`];
//! - per step: a fresh [`Tape`], [`ParamStore::attach`], a forward of
//!   `conv3×3 → BN → ReLU → conv3×3/2 → BN → ReLU → global avg pool → linear`
//!   (NHWC activations, KRSC weights), [`Tape::cross_entropy`],
//!   [`Tape::backward`], [`ParamStore::zero_grad`] then
//!   [`ParamStore::accumulate_grads`], and an [`Sgd`] step at the rate an
//!   [`LrSchedule`] (linear warm-up, cosine decay) gives for that iteration;
//! - batch-norm running statistics, kept outside the store and updated from each
//!   step's batch statistics with [`update_running_stats`];
//! - evaluation on a [`Tape::no_grad`] tape with [`BnNorm::Running`], on fresh samples.
//!
//! The task is synthetic: 16×16 grey images of stripes in one of four
//! orientations (horizontal, vertical, and the two diagonals), with random
//! period and phase and heavy Gaussian noise; the class is the orientation.
//!
//! ```text
//! cargo run --release -p engine --example tiny_cnn
//! ```

use std::f64::consts::{SQRT_2, TAU};

use engine::ops::{BatchStats, BnNorm, Conv2dParams, update_running_stats};
use engine::optim::Sgd;
use engine::schedule::LrSchedule;
use engine::{
    ParamId, ParamKind, ParamStore, ParamStoreBuilder, ParamVars, Result, Tape, Tensor, Var,
};

const IMAGE: usize = 16;
const CLASSES: usize = 4;
const BATCH: usize = 32;
const STEPS: usize = 80;
const EVAL_SAMPLES: usize = 512;
const NOISE: f64 = 1.0;
const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;
const C1: usize = 8;
const C2: usize = 16;

/// SplitMix64: a small, good-enough PRNG so the example needs no dependencies.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: keeps ln finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize
    }
}

/// Kaiming-normal (He) init for a KRSC conv weight: `N(0, 2/fan_in)`, `fan_in = R·S·C`.
fn kaiming_normal(rng: &mut Rng, k: usize, r: usize, s: usize, c: usize) -> Vec<f32> {
    let std = (2.0 / (r * s * c) as f64).sqrt();
    (0..k * r * s * c)
        .map(|_| (rng.normal() * std) as f32)
        .collect()
}

/// A batch of `n` noisy stripe images `[n,16,16,1]` and their i64 labels `[n]`.
fn stripes(rng: &mut Rng, n: usize) -> Result<(Tensor, Tensor)> {
    let mut pixels = Vec::with_capacity(n * IMAGE * IMAGE);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let class = rng.below(CLASSES);
        let period = 3.0 + 3.0 * rng.uniform();
        let phase = TAU * rng.uniform();
        for y in 0..IMAGE {
            for x in 0..IMAGE {
                let (x, y) = (x as f64, y as f64);
                // The coordinate that varies across the stripes.
                let t = match class {
                    0 => y,                // horizontal stripes
                    1 => x,                // vertical stripes
                    2 => (x + y) / SQRT_2, // diagonal
                    _ => (x - y) / SQRT_2, // anti-diagonal
                };
                let v = (TAU * t / period + phase).sin() + NOISE * rng.normal();
                pixels.push(v as f32);
            }
        }
        labels.push(class as i64);
    }
    Ok((
        Tensor::from_vec(pixels, [n, IMAGE, IMAGE, 1])?,
        Tensor::from_vec(labels, [n])?,
    ))
}

/// One batch-norm layer's parameters and running statistics.
struct Bn {
    gamma: ParamId,
    beta: ParamId,
    /// Running mean and (unbiased) variance, f32 `[c]`; not trained, so not in the store.
    mean: Tensor,
    var: Tensor,
}

impl Bn {
    fn new(b: &mut ParamStoreBuilder, name: &str, c: usize) -> Result<Self> {
        Ok(Bn {
            gamma: b.add(
                format!("{name}.weight"),
                [c],
                ParamKind::BnScale,
                vec![1.0; c],
            )?,
            beta: b.add(
                format!("{name}.bias"),
                [c],
                ParamKind::BnShift,
                vec![0.0; c],
            )?,
            mean: Tensor::from_vec(vec![0.0f32; c], [c])?,
            var: Tensor::from_vec(vec![1.0f32; c], [c])?,
        })
    }

    /// Training mode normalises with the batch statistics and returns them;
    /// evaluation mode uses the running statistics.
    fn forward(
        &self,
        tape: &mut Tape,
        vars: &ParamVars,
        x: &Var,
        train: bool,
    ) -> Result<(Var, Option<BatchStats>)> {
        let norm = if train {
            BnNorm::Batch
        } else {
            BnNorm::Running {
                mean: &self.mean,
                var: &self.var,
            }
        };
        tape.batch_norm(x, vars.get(self.gamma), vars.get(self.beta), norm, BN_EPS)
    }
}

/// The network: parameter handles into the store, plus BN running statistics.
struct TinyCnn {
    conv1: ParamId,
    bn1: Bn,
    conv2: ParamId,
    bn2: Bn,
    fc_w: ParamId,
    fc_b: ParamId,
}

impl TinyCnn {
    /// Declares the parameters and builds the store.
    fn new(rng: &mut Rng) -> Result<(Self, ParamStore)> {
        let mut b = ParamStoreBuilder::new();
        let conv1 = b.add(
            "conv1.weight",
            [C1, 3, 3, 1],
            ParamKind::Weight,
            kaiming_normal(rng, C1, 3, 3, 1),
        )?;
        let bn1 = Bn::new(&mut b, "bn1", C1)?;
        let conv2 = b.add(
            "conv2.weight",
            [C2, 3, 3, C1],
            ParamKind::Weight,
            kaiming_normal(rng, C2, 3, 3, C1),
        )?;
        let bn2 = Bn::new(&mut b, "bn2", C2)?;
        // PyTorch's default linear init: U(−1/√fan_in, 1/√fan_in).
        let bound = 1.0 / (C2 as f64).sqrt();
        let fc_init = (0..CLASSES * C2)
            .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
            .collect();
        let fc_w = b.add("fc.weight", [CLASSES, C2], ParamKind::Weight, fc_init)?;
        let fc_b = b.add("fc.bias", [CLASSES], ParamKind::Bias, vec![0.0; CLASSES])?;
        let net = TinyCnn {
            conv1,
            bn1,
            conv2,
            bn2,
            fc_w,
            fc_b,
        };
        Ok((net, b.build()?))
    }

    /// Logits `[n, CLASSES]`, and in training mode each BN layer's batch statistics.
    fn forward(
        &self,
        tape: &mut Tape,
        vars: &ParamVars,
        x: &Var,
        train: bool,
    ) -> Result<(Var, Vec<BatchStats>)> {
        let same = Conv2dParams {
            stride: 1,
            padding: 1,
        };
        let down = Conv2dParams {
            stride: 2,
            padding: 1,
        };
        let mut stats = Vec::new();
        let h = tape.conv2d(x, vars.get(self.conv1), same)?; // [n,16,16,C1]
        let (h, s) = self.bn1.forward(tape, vars, &h, train)?;
        stats.extend(s);
        let h = tape.relu(&h)?;
        let h = tape.conv2d(&h, vars.get(self.conv2), down)?; // [n,8,8,C2]
        let (h, s) = self.bn2.forward(tape, vars, &h, train)?;
        stats.extend(s);
        let h = tape.relu(&h)?;
        let h = tape.global_avg_pool(&h)?; // [n,C2]
        let logits = tape.linear(&h, vars.get(self.fc_w), Some(vars.get(self.fc_b)))?;
        Ok((logits, stats))
    }

    /// Folds one step's batch statistics into the running statistics.
    fn update_running_stats(&mut self, stats: &[BatchStats]) -> Result<()> {
        for (bn, s) in [&mut self.bn1, &mut self.bn2].into_iter().zip(stats) {
            update_running_stats(&mut bn.mean, &mut bn.var, s, BN_MOMENTUM)?;
        }
        Ok(())
    }
}

/// Fraction of rows of `logits [n,c]` whose argmax is the label.
fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let classes = logits.dims()[1];
    let labels = labels.as_slice::<i64>()?;
    let correct = logits
        .as_slice::<f32>()?
        .chunks(classes)
        .zip(labels)
        .filter(|(row, label)| {
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as i64);
            best == Some(**label)
        })
        .count();
    Ok(correct as f64 / labels.len() as f64)
}

fn main() -> Result<()> {
    let mut rng = Rng(0x5EED);
    let (mut net, mut store) = TinyCnn::new(&mut rng)?;
    println!(
        "tiny CNN: {} parameters in {} tensors ({} floats in the flat buffer)",
        store.num_params(),
        store.infos().len(),
        store.flat_len()
    );

    let mut sgd = Sgd::new(&store, 0.9, 5e-4)?;
    let schedule = LrSchedule {
        base_lr: 0.1,
        warmup_iters: 5,
        total_iters: STEPS,
    };

    println!(
        "training {STEPS} steps of batch {BATCH}; loss and accuracy are means over the last 10 steps"
    );
    // Sums of the loss and accuracy over the steps since the last print.
    let (mut loss_sum, mut acc_sum, mut seen) = (0.0, 0.0, 0);
    for step in 0..STEPS {
        let (images, labels) = stripes(&mut rng, BATCH)?;
        let lr = schedule.at(step);

        let mut tape = Tape::new();
        let vars = store.attach(&mut tape);
        let x = tape.constant(images);
        let (logits, stats) = net.forward(&mut tape, &vars, &x, true)?;
        let loss = tape.cross_entropy(&logits, &labels)?;
        loss_sum += loss.value().to_f64_vec()?[0];
        acc_sum += accuracy(logits.value(), &labels)?;
        seen += 1;

        let grads = tape.backward(&loss)?;
        store.zero_grad()?;
        // Consumes `vars`, so no view of the value buffer outlives this line
        // and the optimiser can update it in place.
        store.accumulate_grads(vars, &grads)?;
        sgd.step(&mut store, lr as f32)?;
        net.update_running_stats(&stats)?;

        if (step + 1) % 10 == 0 {
            println!(
                "step {:>3}  lr {lr:.4}  loss {:.4}  train acc {:>5.1}%",
                step + 1,
                loss_sum / seen as f64,
                100.0 * acc_sum / seen as f64
            );
            (loss_sum, acc_sum, seen) = (0.0, 0.0, 0);
        }
    }

    // Evaluation: nothing recorded, BN on its running statistics, fresh samples.
    let (images, labels) = stripes(&mut rng, EVAL_SAMPLES)?;
    let mut tape = Tape::no_grad();
    let vars = store.attach(&mut tape);
    let x = tape.constant(images);
    let (logits, _) = net.forward(&mut tape, &vars, &x, false)?;
    let loss = tape.cross_entropy(&logits, &labels)?;
    println!(
        "eval on {EVAL_SAMPLES} fresh samples (running BN stats): loss {:.4}  accuracy {:.1}% (chance {:.1}%)",
        loss.value().to_f64_vec()?[0],
        100.0 * accuracy(logits.value(), &labels)?,
        100.0 / CLASSES as f64
    );
    Ok(())
}
