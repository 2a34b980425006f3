//! Ghost batch norm (`Tape::set_bn_groups`) on the CPU: one group is plain
//! batch norm bit for bit; `G` groups are `G` separate batch norms over the
//! slices, joined, with `dγ`, `dβ` summed and the statistics averaged; bad
//! splits are refused.

use engine::ops::{BatchStats, BesselCorrection, BnNorm};
use engine::{Rng, Tape, Tensor, Var};

fn tensor(rng: &mut Rng, dims: &[usize]) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(rng.normal_vec(n, 1.0), dims).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().unwrap()
}

/// A run's output, batch statistics and gradients.
type Outcome = (Tensor, BatchStats, Vec<Tensor>);

/// `relu(bn(x) + r)` with `groups` groups (`None`: a tape never told about
/// groups) and Momentum BN: output, batch statistics and the gradients of
/// `x`, `r`, `γ`, `β` for upstream `dy`.
fn run(
    groups: Option<usize>,
    [x, r, gamma, beta, dy]: [&Tensor; 5],
    history: (&Tensor, &Tensor),
) -> Outcome {
    let mut tape = Tape::new();
    if let Some(groups) = groups {
        tape.set_bn_groups(groups).unwrap();
    }
    let vars: Vec<Var> = [x, r, gamma, beta]
        .iter()
        .map(|t| tape.param((*t).clone()))
        .collect();
    let norm = BnNorm::Momentum {
        mean: history.0,
        var: history.1,
        beta: &0.6.into(),
        correction: BesselCorrection::Double,
    };
    let (y, stats) = tape
        .batch_norm_add_relu(&vars[0], &vars[1], &vars[2], &vars[3], norm, 1e-5)
        .unwrap();
    let grads = tape.backward_with(&y, dy.clone()).unwrap();
    let g = vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();
    (y.value().clone(), stats.unwrap(), g)
}

fn slice(t: &Tensor, g: usize, groups: usize) -> Tensor {
    let mut dims = t.dims().to_vec();
    dims[0] /= groups;
    let per: usize = dims.iter().product();
    Tensor::from_vec(f32s(t)[g * per..(g + 1) * per].to_vec(), dims).unwrap()
}

/// Random `x`, residual, `dy` of shape `dims`, then `γ`, `β` and a
/// Momentum-BN history (mean, variance) for its channels.
fn problem(seed: u64, dims: &[usize]) -> ([Tensor; 5], (Tensor, Tensor)) {
    let mut rng = Rng::new(seed);
    let c = *dims.last().unwrap();
    let data = [dims, dims, dims, &[c], &[c]].map(|d| tensor(&mut rng, d));
    let var = rng
        .normal_vec(c, 0.2)
        .iter()
        .map(|v| 1.0 + v.abs())
        .collect();
    let hist = (
        tensor(&mut rng, &[c]),
        Tensor::from_vec::<f32>(var, [c]).unwrap(),
    );
    (data, hist)
}

#[test]
fn ghost_groups_are_separate_batch_norms_joined() {
    let ([x, r, dy, gamma, beta], hist) = problem(5, &[6, 3, 2, 4]);
    let groups = 3;
    let (y, stats, grads) = run(
        Some(groups),
        [&x, &r, &gamma, &beta, &dy],
        (&hist.0, &hist.1),
    );
    let parts: Vec<_> = (0..groups)
        .map(|g| {
            let [xs, rs, dys] = [&x, &r, &dy].map(|t| slice(t, g, groups));
            run(Some(1), [&xs, &rs, &gamma, &beta, &dys], (&hist.0, &hist.1))
        })
        .collect();
    let joined =
        |f: &dyn Fn(&Outcome) -> Vec<f32>| -> Vec<f32> { parts.iter().flat_map(f).collect() };
    // Outputs and input gradients are the groups' exactly.
    assert_eq!(f32s(&y), joined(&|p| f32s(&p.0)));
    assert_eq!(f32s(&grads[0]), joined(&|p| f32s(&p.2[0])));
    assert_eq!(f32s(&grads[1]), joined(&|p| f32s(&p.2[1])));
    // dγ, dβ are summed and the statistics averaged over the groups.
    let close = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs()))
    };
    for k in [2, 3] {
        let want: Vec<f32> = (0..4)
            .map(|j| parts.iter().map(|p| f32s(&p.2[k])[j]).sum::<f32>())
            .collect();
        assert!(close(&f32s(&grads[k]), &want), "parameter {k}");
    }
    let avg = |f: &dyn Fn(&BatchStats) -> &Tensor| -> Vec<f32> {
        (0..4)
            .map(|j| parts.iter().map(|p| f32s(f(&p.1))[j]).sum::<f32>() / groups as f32)
            .collect()
    };
    assert!(close(&f32s(&stats.mean), &avg(&|s| &s.mean)));
    assert!(close(&f32s(&stats.var), &avg(&|s| &s.var)));
    assert_eq!(stats.count, 2 * 3 * 2);
}

#[test]
fn one_group_is_plain_batch_norm_bit_for_bit() {
    let ([x, r, dy, gamma, beta], hist) = problem(6, &[4, 3, 3, 8]);
    let inputs = [&x, &r, &gamma, &beta, &dy];
    let grouped = run(Some(1), inputs, (&hist.0, &hist.1));
    let plain = run(None, inputs, (&hist.0, &hist.1));
    assert_eq!(f32s(&grouped.0), f32s(&plain.0));
    assert_eq!(f32s(&grouped.1.mean), f32s(&plain.1.mean));
    assert_eq!(f32s(&grouped.1.var), f32s(&plain.1.var));
    for k in 0..4 {
        assert_eq!(f32s(&grouped.2[k]), f32s(&plain.2[k]), "gradient {k}");
    }
}

#[test]
fn bad_splits_are_refused() {
    let mut rng = Rng::new(7);
    let (gamma, beta) = (tensor(&mut rng, &[3]), tensor(&mut rng, &[3]));
    for (dims, groups, says) in [
        (&[6, 3][..], 4, "does not split into 4 equal groups"),
        (&[6, 3][..], 6, "1 value per channel"),
        (&[4, 1, 1, 3][..], 4, "1 value per channel"),
    ] {
        let mut tape = Tape::new();
        tape.set_bn_groups(groups).unwrap();
        let x = tape.param(tensor(&mut rng, dims));
        let (g, b) = (tape.param(gamma.clone()), tape.param(beta.clone()));
        let err = tape
            .batch_norm(&x, &g, &b, BnNorm::Batch, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{dims:?} in {groups}: {err}");
    }
    assert!(Tape::new().set_bn_groups(0).is_err());
}
