//! Finite-difference gradient checks, in f64, for every op on the tape.
//!
//! Each check seeds backward with a random upstream gradient `r` and compares
//! the tape's gradient of `Σ r·f(x)` with central differences of the same sum.

use engine::ops::{BesselCorrection, BnNorm, Conv2dParams, PoolParams};
use engine::{DType, Result, Tape, Tensor, Var};

/// Test data in f64, from the engine's seedable generator.
struct Data(engine::Rng);

impl Data {
    fn new(seed: u64) -> Self {
        Data(engine::Rng::new(seed))
    }

    fn uniform(&mut self) -> f64 {
        self.0.uniform()
    }

    /// Uniform in [-1, 1).
    fn signed(&mut self) -> f64 {
        2.0 * self.uniform() - 1.0
    }

    fn tensor(&mut self, dims: &[usize]) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_vec((0..n).map(|_| self.signed()).collect::<Vec<f64>>(), dims).unwrap()
    }

    /// Values at least 0.01 apart and at least 0.005 from zero, so a small
    /// perturbation never flips a max or a ReLU.
    fn separated(&mut self, dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        let mut v: Vec<f64> = (0..n)
            .map(|i| (i as f64 - n as f64 / 2.0) * 0.01 + 0.005)
            .collect();
        for i in (1..n).rev() {
            let j = (self.uniform() * (i + 1) as f64) as usize;
            v.swap(i, j);
        }
        Tensor::from_vec(v, dims).unwrap()
    }
}

const H: f64 = 1e-5;

/// Checks the gradient of every input of `f` (all tracked as parameters).
fn check(name: &str, inputs: &[Tensor], f: impl Fn(&mut Tape, &[Var]) -> Result<Var>) {
    check_with(name, inputs, 1e-6, H, f)
}

fn check_with(
    name: &str,
    inputs: &[Tensor],
    rtol: f64,
    h: f64,
    f: impl Fn(&mut Tape, &[Var]) -> Result<Var>,
) {
    let mut rng = Data::new(0x9e37_79b9_7f4a_7c15);
    let mut tape = Tape::new();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.param(t.clone())).collect();
    let out = f(&mut tape, &vars).unwrap();
    let seed = rng.tensor(out.shape().dims());
    let r = seed.to_f64_vec().unwrap();
    let grads = tape.backward_with(&out, seed).unwrap();

    let objective = |xs: &[Tensor]| -> f64 {
        let mut t = Tape::no_grad();
        let vs: Vec<Var> = xs.iter().map(|x| t.constant(x.clone())).collect();
        let y = f(&mut t, &vs).unwrap().value().to_f64_vec().unwrap();
        y.iter().zip(&r).map(|(a, b)| a * b).sum()
    };
    for (i, input) in inputs.iter().enumerate() {
        let analytic = grads
            .get(&vars[i])
            .unwrap_or_else(|| panic!("{name}: no gradient for input {i}"))
            .to_f64_vec()
            .unwrap();
        let base = input.to_f64_vec().unwrap();
        // Every element of small inputs; an even sample of large ones.
        let step = (base.len() / 48).max(1);
        for j in (0..base.len()).step_by(step) {
            let probe = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                let mut xs = inputs.to_vec();
                xs[i] = Tensor::from_vec(v, input.shape().clone()).unwrap();
                if input.dtype() != DType::F64 {
                    xs[i] = cast(&xs[i], input.dtype());
                }
                objective(&xs)
            };
            let numeric = (probe(h) - probe(-h)) / (2.0 * h);
            let a = analytic[j];
            let tol = 1e-8 + rtol * a.abs().max(numeric.abs());
            assert!(
                (a - numeric).abs() <= tol,
                "{name}: input {i} element {j}: analytic {a}, numeric {numeric}"
            );
        }
    }
}

fn cast(t: &Tensor, to: DType) -> Tensor {
    let mut tape = Tape::no_grad();
    let v = tape.constant(t.clone());
    tape.cast(&v, to).unwrap().value().clone()
}

fn conv_case(x: [usize; 4], k: usize, r: usize, stride: usize, padding: usize, seed: u64) {
    let mut rng = Data::new(seed);
    let inputs = [rng.tensor(&x), rng.tensor(&[k, r, r, x[3]])];
    let p = Conv2dParams { stride, padding };
    let name = format!("conv2d x{x:?} k{k} {r}x{r}/{stride} pad {padding}");
    check(&name, &inputs, |t, v| t.conv2d(&v[0], &v[1], p));
}

#[test]
fn conv2d_3x3_odd_sizes() {
    conv_case([2, 5, 7, 3], 4, 3, 1, 1, 1);
}

#[test]
fn conv2d_3x3_stride2_batch1() {
    conv_case([1, 7, 6, 5], 3, 3, 2, 1, 2);
}

#[test]
fn conv2d_3x3_no_padding() {
    conv_case([2, 6, 5, 2], 3, 3, 1, 0, 3);
}

/// At least 32 input channels and at most 64 output channels: the CPU
/// computes dx as the transposed convolution (padding 1, 2 and 0 here).
#[test]
fn conv2d_3x3_as_transposed_for_dx() {
    conv_case([1, 4, 5, 32], 3, 3, 1, 1, 8);
    conv_case([1, 5, 4, 32], 2, 3, 1, 0, 9);
    conv_case([1, 3, 4, 32], 2, 3, 1, 2, 10);
}

#[test]
fn conv2d_1x1_pointwise() {
    conv_case([2, 4, 3, 6], 5, 1, 1, 0, 4);
}

#[test]
fn conv2d_1x1_stride2_downsample() {
    conv_case([2, 5, 5, 4], 3, 1, 2, 0, 5);
}

#[test]
fn conv2d_7x7_stride2_pad3_stem() {
    conv_case([1, 9, 9, 3], 4, 7, 2, 3, 6);
}

#[test]
fn conv2d_weight_only_gradient() {
    // An input that needs no gradient (the images) still gives the weight's.
    let mut rng = Data::new(7);
    let x = rng.tensor(&[2, 5, 5, 3]);
    let w = rng.tensor(&[2, 3, 3, 3]);
    let p = Conv2dParams {
        stride: 2,
        padding: 1,
    };
    check("conv2d weight only", &[w], |t, v| {
        let x = t.constant(x.clone());
        t.conv2d(&x, &v[0], p)
    });
}

fn bn_inputs(rng: &mut Data, x: &[usize]) -> Vec<Tensor> {
    let c = *x.last().unwrap();
    let gamma: Vec<f64> = (0..c).map(|_| 0.5 + rng.uniform()).collect();
    vec![
        rng.tensor(x),
        Tensor::from_vec(gamma, [c]).unwrap(),
        rng.tensor(&[c]),
    ]
}

fn stats(rng: &mut Data, c: usize) -> (Tensor, Tensor) {
    let mean: Vec<f32> = (0..c).map(|_| rng.signed() as f32 * 0.3).collect();
    let var: Vec<f32> = (0..c).map(|_| 0.5 + rng.uniform() as f32).collect();
    (
        Tensor::from_vec(mean, [c]).unwrap(),
        Tensor::from_vec(var, [c]).unwrap(),
    )
}

#[test]
fn batch_norm_train_2d_and_1d() {
    let mut rng = Data::new(11);
    for dims in [&[4, 3, 3, 5][..], &[1, 3, 3, 2], &[6, 7]] {
        let inputs = bn_inputs(&mut rng, dims);
        check(&format!("batch_norm train {dims:?}"), &inputs, |t, v| {
            Ok(t.batch_norm(&v[0], &v[1], &v[2], BnNorm::Batch, 1e-5)?.0)
        });
    }
}

#[test]
fn batch_norm_eval() {
    let mut rng = Data::new(12);
    let inputs = bn_inputs(&mut rng, &[3, 2, 4, 3]);
    let (mean, var) = stats(&mut rng, 3);
    check("batch_norm eval", &inputs, |t, v| {
        let norm = BnNorm::Running {
            mean: &mean,
            var: &var,
        };
        Ok(t.batch_norm(&v[0], &v[1], &v[2], norm, 1e-5)?.0)
    });
}

#[test]
fn batch_norm_momentum_both_corrections() {
    let mut rng = Data::new(13);
    for (dims, correction) in [
        (&[2, 3, 3, 4][..], BesselCorrection::Double),
        (&[5, 6][..], BesselCorrection::Double),
        (&[5, 6][..], BesselCorrection::Single),
    ] {
        let inputs = bn_inputs(&mut rng, dims);
        let (mean, var) = stats(&mut rng, *dims.last().unwrap());
        check(
            &format!("batch_norm momentum {dims:?} {correction:?}"),
            &inputs,
            |t, v| {
                let norm = BnNorm::Momentum {
                    mean: &mean,
                    var: &var,
                    beta: &0.7.into(),
                    correction,
                };
                Ok(t.batch_norm(&v[0], &v[1], &v[2], norm, 1e-5)?.0)
            },
        );
    }
}

#[test]
fn relu() {
    let x = Data::new(21).separated(&[3, 4, 5]);
    check("relu", &[x], |t, v| t.relu(&v[0]));
}

#[test]
fn add() {
    let mut rng = Data::new(22);
    let inputs = [rng.tensor(&[2, 3, 4]), rng.tensor(&[2, 3, 4])];
    check("add", &inputs, |t, v| t.add(&v[0], &v[1]));
}

#[test]
fn gradients_accumulate_over_two_consumers() {
    // A residual block: x feeds both the conv branch and the skip connection.
    let mut rng = Data::new(23);
    let inputs = [rng.tensor(&[2, 4, 4, 3]), rng.tensor(&[3, 3, 3, 3])];
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    check("residual", &inputs, |t, v| {
        let branch = t.conv2d(&v[0], &v[1], p)?;
        let branch = t.conv2d(&branch, &v[1], p)?;
        t.add(&branch, &v[0])
    });
}

#[test]
fn max_pool_resnet_stem_and_odd_sizes() {
    let mut rng = Data::new(31);
    for (dims, p) in [
        ([2, 6, 6, 3], PoolParams::RESNET_STEM),
        ([1, 7, 5, 2], PoolParams::RESNET_STEM),
        (
            [2, 4, 5, 3],
            PoolParams {
                kernel: 2,
                stride: 2,
                padding: 0,
            },
        ),
    ] {
        let x = rng.separated(&dims);
        check(&format!("max_pool2d {dims:?} {p:?}"), &[x], |t, v| {
            t.max_pool2d(&v[0], p)
        });
    }
}

#[test]
fn global_avg_pool() {
    let x = Data::new(32).tensor(&[3, 3, 5, 4]);
    check("global_avg_pool", &[x], |t, v| t.global_avg_pool(&v[0]));
}

#[test]
fn linear_with_and_without_bias() {
    let mut rng = Data::new(41);
    let inputs = [rng.tensor(&[5, 7]), rng.tensor(&[3, 7]), rng.tensor(&[3])];
    check("linear", &inputs, |t, v| {
        t.linear(&v[0], &v[1], Some(&v[2]))
    });
    check("linear no bias", &inputs[..2], |t, v| {
        t.linear(&v[0], &v[1], None)
    });
    let batch1 = [rng.tensor(&[1, 4]), rng.tensor(&[6, 4])];
    check("linear batch 1", &batch1, |t, v| {
        t.linear(&v[0], &v[1], None)
    });
}

#[test]
fn l2_normalize() {
    let x = Data::new(51).tensor(&[4, 9]);
    check("l2_normalize", &[x], |t, v| t.l2_normalize(&v[0]));
}

#[test]
fn m2t_loss_through_normalisation() {
    // The loss as the model computes it: on normalised projections.
    let mut rng = Data::new(52);
    let inputs: Vec<Tensor> = (0..4).map(|_| rng.tensor(&[3, 5])).collect();
    check("m2t_loss", &inputs, |t, v| {
        let n: Vec<Var> = v.iter().map(|x| t.l2_normalize(x)).collect::<Result<_>>()?;
        t.m2t_loss(&n[0], &n[1], &n[2], &n[3])
    });
    check("m2t_loss raw", &inputs, |t, v| {
        t.m2t_loss(&v[0], &v[1], &v[2], &v[3])
    });
}

#[test]
fn cross_entropy() {
    let logits = Data::new(53).tensor(&[4, 5]);
    let labels = Tensor::from_vec(vec![0i64, 4, 2, 2], [4]).unwrap();
    check("cross_entropy", &[logits], |t, v| {
        t.cross_entropy(&v[0], &labels)
    });
}

#[test]
fn reshape() {
    let mut rng = Data::new(54);
    let inputs = [rng.tensor(&[2, 1, 1, 6]), rng.tensor(&[3, 6])];
    check("reshape", &inputs, |t, v| {
        let flat = t.reshape(&v[0], [2, 6])?;
        t.linear(&flat, &v[1], None)
    });
}

#[test]
fn cast_gradient_is_the_cast_back() {
    // Through an f32 round trip the function is the identity up to f32
    // rounding, so differences need a wider step and a looser tolerance.
    let x = Data::new(55).tensor(&[3, 4]);
    check_with("cast f64→f32→f64", &[x], 1e-3, 1e-3, |t, v| {
        let narrow = t.cast(&v[0], DType::F32)?;
        let y = t.relu(&narrow)?;
        t.cast(&y, DType::F64)
    });
}

#[test]
fn ghost_batch_norm_train_and_momentum() {
    let mut rng = Data::new(14);
    for (dims, groups) in [
        (&[4, 3, 3, 5][..], 2),
        (&[6, 7][..], 3),
        (&[2, 2, 1, 3][..], 2),
    ] {
        let inputs = bn_inputs(&mut rng, dims);
        check(
            &format!("ghost batch_norm {dims:?} in {groups} groups"),
            &inputs,
            |t, v| {
                t.set_bn_groups(groups)?;
                Ok(t.batch_norm(&v[0], &v[1], &v[2], BnNorm::Batch, 1e-5)?.0)
            },
        );
    }
    let inputs = bn_inputs(&mut rng, &[6, 4]);
    let (mean, var) = stats(&mut rng, 4);
    check("ghost momentum batch_norm", &inputs, |t, v| {
        t.set_bn_groups(2)?;
        let norm = BnNorm::Momentum {
            mean: &mean,
            var: &var,
            beta: &0.7.into(),
            correction: BesselCorrection::Double,
        };
        Ok(t.batch_norm(&v[0], &v[1], &v[2], norm, 1e-5)?.0)
    });
}
