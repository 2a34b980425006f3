//! Bad input to the public API gives errors that name the op and the shapes;
//! the no-grad tape records nothing.

use engine::ops::{BnNorm, Conv2dParams, PoolParams};
use engine::{DType, Error, Tape, Tensor};

fn t(dims: &[usize]) -> Tensor {
    Tensor::from_vec(vec![0.5f32; dims.iter().product()], dims).unwrap()
}

fn message(r: engine::Result<impl std::fmt::Debug>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn shape_mismatches_name_the_op_and_shapes() {
    let mut tape = Tape::new();
    let x = tape.constant(t(&[2, 5, 5, 3]));
    let w = tape.param(t(&[4, 3, 3, 2]));
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let m = message(tape.conv2d(&x, &w, p));
    assert!(
        m.contains("conv2d") && m.contains("[2, 5, 5, 3]") && m.contains("[4, 3, 3, 2]"),
        "{m}"
    );

    let big = tape.param(t(&[4, 9, 9, 3]));
    let m = message(tape.conv2d(
        &x,
        &big,
        Conv2dParams {
            stride: 1,
            padding: 0,
        },
    ));
    assert!(m.contains("conv2d") && m.contains("larger"), "{m}");
    let ok = tape.param(t(&[4, 3, 3, 3]));
    let m = message(tape.conv2d(
        &x,
        &ok,
        Conv2dParams {
            stride: 0,
            padding: 0,
        },
    ));
    assert!(m.contains("stride"), "{m}");

    let a = tape.param(t(&[3, 4]));
    let lw = tape.param(t(&[2, 5]));
    let m = message(tape.linear(&a, &lw, None));
    assert!(
        m.contains("linear") && m.contains("[3, 4]") && m.contains("[2, 5]"),
        "{m}"
    );

    let m = message(tape.add(&a, &lw));
    assert!(
        m.contains("add") && m.contains("[3, 4]") && m.contains("[2, 5]"),
        "{m}"
    );

    let gamma = tape.param(t(&[2]));
    let m = message(tape.batch_norm(&x, &gamma, &gamma, BnNorm::Batch, 1e-5));
    assert!(m.contains("batch_norm") && m.contains("[2]"), "{m}");

    let m = message(tape.max_pool2d(&a, PoolParams::RESNET_STEM));
    assert!(m.contains("max_pool2d") && m.contains("[3, 4]"), "{m}");

    let m = message(tape.reshape(&a, [5, 3]));
    assert!(
        m.contains("reshape") && m.contains("[3, 4]") && m.contains("[5, 3]"),
        "{m}"
    );

    let m = message(Tensor::from_vec(vec![1.0f32; 5], [2, 3]));
    assert!(m.contains("[2, 3]"), "{m}");
}

#[test]
fn bad_labels_and_dtypes_are_errors() {
    let mut tape = Tape::new();
    let logits = tape.param(t(&[2, 3]));
    let labels = Tensor::from_vec(vec![0i64, 3], [2]).unwrap();
    let m = message(tape.cross_entropy(&logits, &labels));
    assert!(m.contains("cross_entropy") && m.contains("label 3"), "{m}");
    let m = message(tape.cross_entropy(&logits, &t(&[2])));
    assert!(m.contains("i64"), "{m}");

    let x = tape.constant(t(&[1, 3, 3, 2]));
    let w64 = tape.param(Tensor::from_vec(vec![0.1f64; 2 * 9 * 2], [2, 3, 3, 2]).unwrap());
    let m = message(tape.conv2d(
        &x,
        &w64,
        Conv2dParams {
            stride: 1,
            padding: 1,
        },
    ));
    assert!(m.contains("conv2d") && m.contains("f64"), "{m}");

    let half = tape.cast(&x, DType::BF16).unwrap();
    let m = message(tape.relu(&half));
    assert!(m.contains("relu") && m.contains("bf16"), "{m}");

    assert!(matches!(
        t(&[2]).as_slice::<f64>(),
        Err(Error::DType { .. })
    ));
}

#[test]
fn batch_statistics_need_two_values_per_channel() {
    let mut tape = Tape::new();
    let x = tape.param(t(&[1, 3]));
    let g = tape.param(t(&[3]));
    let m = message(tape.batch_norm(&x, &g, &g, BnNorm::Batch, 1e-5));
    assert!(m.contains("more than one value"), "{m}");
}

#[test]
fn backward_misuse_is_an_error() {
    let mut tape = Tape::new();
    let w = tape.param(t(&[2, 3]));
    let y = tape.relu(&w).unwrap();
    assert!(message(tape.backward(&y)).contains("scalar"));

    let tape = Tape::new();
    let c = tape.constant(Tensor::scalar(1.0f32));
    assert!(message(tape.backward(&c)).contains("depends on no parameter"));

    let mut a = Tape::new();
    let mut b = Tape::new();
    let wa = a.param(t(&[2, 2]));
    assert!(message(b.relu(&wa)).contains("another tape"));
}

#[test]
fn no_grad_tape_records_nothing() {
    let mut tape = Tape::no_grad();
    let w = tape.param(t(&[2, 3]));
    let x = tape.constant(t(&[4, 3]));
    let y = tape.linear(&x, &w, None).unwrap();
    let y = tape.relu(&y).unwrap();
    assert!(tape.is_empty());
    assert!(!w.requires_grad() && !y.requires_grad());
    assert_eq!(y.shape().dims(), &[4, 2]);
}

#[test]
fn recording_tape_prints_its_nodes() {
    let mut tape = Tape::new();
    let w = tape.param(t(&[2, 3]));
    let x = tape.constant(t(&[4, 3]));
    let y = tape.linear(&x, &w, None).unwrap();
    tape.relu(&y).unwrap();
    assert_eq!(tape.len(), 2);
    assert_eq!(tape.to_string(), "#1 = linear(-, #0, -)\n#2 = relu(#1)\n");
}
