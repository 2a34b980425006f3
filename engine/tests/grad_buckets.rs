//! The data-parallel backward: `ParamStore::backward_in_buckets` hands the
//! gradient buffer over in buckets as soon as the backward pass completes
//! them, and leaves the same gradients as a plain backward.
//! - the buckets cover the buffer, whole parameters each, last first;
//! - each bucket is complete when handed over, and the first is handed over
//!   before the backward has reached the first layer;
//! - a parameter read twice (two views) completes only after its first
//!   reader; a parameter read by nothing completes at once;
//! - the resulting buffer equals `backward` + `accumulate_grads` bit for bit.

use engine::comm::BUCKET_ELEMENTS;
use engine::{ParamKind, ParamStore, ParamStoreBuilder};
use engine::{Rng, Tape, Tensor, Var};
use std::ops::Range;

/// A four-layer MLP whose second layer alone fills a bucket, and an unused bias.
fn store() -> ParamStore {
    let mut rng = Rng::new(7);
    let mut b = ParamStoreBuilder::new();
    for (name, shape) in [
        ("w1", [600, 16]),
        ("w2", [512, 600]),
        ("w3", [300, 512]),
        ("w4", [8, 300]),
    ] {
        let n = shape[0] * shape[1];
        let scale = (1.0 / shape[1] as f64).sqrt();
        b.add(name, shape, ParamKind::Weight, rng.normal_vec(n, scale))
            .unwrap();
    }
    b.add("unused", [4], ParamKind::Bias, vec![0.0; 4]).unwrap();
    b.build().unwrap()
}

/// Both views through the MLP, cross-entropy summed: every weight is read
/// twice, once per view.
fn forward(tape: &mut Tape, vars: &[&Var]) -> Var {
    let mut rng = Rng::new(11);
    let labels = Tensor::from_vec(vec![1i64, 5, 0, 7], [4]).unwrap();
    let mut losses = Vec::new();
    for _view in 0..2 {
        let x = tape.constant(Tensor::from_vec(rng.normal_vec(4 * 16, 1.0), [4, 16]).unwrap());
        let mut h = x;
        for (i, w) in vars[..4].iter().enumerate() {
            h = tape.linear(&h, w, None).unwrap();
            if i < 3 {
                h = tape.relu(&h).unwrap();
            }
        }
        losses.push(tape.cross_entropy(&h, &labels).unwrap());
    }
    tape.add(&losses[0], &losses[1]).unwrap()
}

/// The gradient 1 of a loss shaped like `loss`.
fn seed(loss: &Var) -> Tensor {
    Tensor::full(
        loss.shape().clone(),
        1.0,
        engine::DType::F32,
        engine::Device::Cpu,
    )
    .unwrap()
}

#[test]
fn buckets_are_handed_over_complete_and_early_and_sum_as_a_plain_backward() {
    let mut plain = store();
    let mut tape = Tape::new();
    let vars = plain.attach(&mut tape);
    let ids: Vec<_> = plain.ids().collect();
    let loss = forward(
        &mut tape,
        &ids.iter().map(|&id| vars.get(id)).collect::<Vec<_>>(),
    );
    let grads = tape.backward(&loss).unwrap();
    plain.accumulate_grads(vars, &grads).unwrap();
    let expected = plain.grads().to_vec::<f32>().unwrap();

    let mut bucketed = store();
    let buckets = bucketed.grad_buckets();
    // Last parameters first; whole parameters; the buffer covered once.
    assert_eq!(buckets.len(), 2, "{buckets:?}");
    assert_eq!(buckets[0].end, expected.len());
    assert_eq!(buckets[1], 0..buckets[0].start);
    assert!(buckets[0].len() >= BUCKET_ELEMENTS);
    let w2 = bucketed.infos().iter().find(|i| i.name == "w2").unwrap();
    assert_eq!(buckets[0].start, w2.offset);

    let mut tape = Tape::new();
    let vars = bucketed.attach(&mut tape);
    let loss = forward(
        &mut tape,
        &ids.iter().map(|&id| vars.get(id)).collect::<Vec<_>>(),
    );
    let mut handed: Vec<(Range<usize>, Vec<f32>, Vec<f32>)> = Vec::new();
    bucketed
        .backward_in_buckets(tape, (&loss, seed(&loss)), vars, |grads, range| {
            let all = grads.to_vec::<f32>()?;
            handed.push((range.clone(), all[range].to_vec(), all));
            Ok(())
        })
        .unwrap();
    assert_eq!(bucketed.grads().to_vec::<f32>().unwrap(), expected);
    assert_eq!(
        handed.iter().map(|h| h.0.clone()).collect::<Vec<_>>(),
        buckets
    );
    for (range, at_hand_over, _) in &handed {
        assert_eq!(at_hand_over[..], expected[range.clone()], "{range:?}");
    }
    // When the last layers' bucket was handed over, w1's gradient (read
    // first in the forward, so last in the backward) was not yet in.
    let w1 = &bucketed.infos()[0];
    let w1_then = &handed[0].2[w1.offset..w1.offset + w1.shape.numel()];
    assert!(w1_then.iter().all(|&g| g == 0.0));
    assert!(expected[..w1.shape.numel()].iter().any(|&g| g != 0.0));
}

#[test]
fn a_gradient_is_complete_only_after_its_first_reader() {
    // y = w·x twice (two readers of w), loss = y1 + y2 summed through linear.
    let mut tape = Tape::new();
    let w = tape.param(Tensor::from_vec(vec![2.0f32, -1.0], [1, 2]).unwrap());
    let unused = tape.param(Tensor::from_vec(vec![1.0f32], [1]).unwrap());
    let x1 = tape.constant(Tensor::from_vec(vec![1.0f32, 3.0], [1, 2]).unwrap());
    let x2 = tape.constant(Tensor::from_vec(vec![5.0f32, 7.0], [1, 2]).unwrap());
    let y1 = tape.linear(&x1, &w, None).unwrap();
    let y2 = tape.linear(&x2, &w, None).unwrap();
    let sum = tape.add(&y1, &y2).unwrap();
    let loss = tape.reshape(&sum, [1]).unwrap();
    let mut seen: Vec<(usize, Option<Vec<f32>>)> = Vec::new();
    let rest = tape
        .backward_streaming(&loss, seed(&loss), &[w.clone(), unused.clone()], |i, g| {
            seen.push((i, g.map(|g| g.to_vec::<f32>().unwrap())));
            Ok(())
        })
        .unwrap();
    // The unused one first (nothing can flow into it), then w with both
    // readers' contributions: x1 + x2.
    assert_eq!(seen, vec![(1, None), (0, Some(vec![6.0, 10.0]))]);
    assert!(rest.get(&w).is_none(), "handed over, not kept");
}
