//! ReLU and elementwise addition (the residual join).

mod cuda;

use super::real::Real;
use super::with_float;
use crate::Tensor;
use crate::error::{Result, same_shape};
use rayon::prelude::*;

/// Elements per parallel task.
const GRAIN: usize = 1 << 14;

// `collect_into_vec` writes the output once, without zero-filling it first.
fn map<T: Real>(x: &[T], f: impl Fn(T) -> T + Sync + Send) -> Vec<T> {
    let mut y = Vec::new();
    x.par_iter()
        .with_min_len(GRAIN)
        .map(|&v| f(v))
        .collect_into_vec(&mut y);
    y
}

fn zip_map<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync + Send) -> Vec<T> {
    let mut y = Vec::new();
    a.par_iter()
        .zip(b)
        .with_min_len(GRAIN)
        .map(|(&a, &b)| f(a, b))
        .collect_into_vec(&mut y);
    y
}

/// `max(v, 0)`, except that NaN stays NaN (as in PyTorch), so non-finite
/// weights or activations reach the checks on features and losses.
#[allow(clippy::eq_op)] // `v != v` is the NaN test for any float type.
pub(crate) fn relu_value<T: Real>(v: T) -> T {
    if v > T::ZERO || v != v { v } else { T::ZERO }
}

pub(crate) fn relu(x: &Tensor) -> Result<Tensor> {
    if let Some(g) = x.gpu() {
        return cuda::relu(g, x);
    }
    with_float!("relu", x.dtype(), T => {
        Tensor::from_vec(map::<T>(x.as_slice()?, relu_value), x.shape().clone())
    })
}

/// `dx = dy` where the output `y` is positive, else 0, also where `y` is NaN
/// (PyTorch passes `dy` there; either way the forward's NaN has already made
/// the loss NaN, which stops training).
pub(crate) fn relu_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    same_shape("relu backward", y.shape(), dy.shape())?;
    if let Some(g) = y.gpu() {
        return cuda::relu_backward(g, y, dy);
    }
    with_float!("relu backward", y.dtype(), T => {
        let g = zip_map::<T>(y.as_slice()?, dy.as_slice()?, |y, g| if y > T::ZERO { g } else { T::ZERO });
        Tensor::from_vec(g, y.shape().clone())
    })
}

/// `a + b`, same shape and dtype.
pub(crate) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_shape("add", a.shape(), b.shape())?;
    let dt = a.expect_same_dtype("add", b)?;
    if let Some(g) = a.gpu() {
        return cuda::add(g, a, b);
    }
    with_float!("add", dt, T => {
        Tensor::from_vec(zip_map::<T>(a.as_slice()?, b.as_slice()?, |a, b| a + b), a.shape().clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_keeps_nan_and_its_gradient_there_is_zero() {
        let x = Tensor::from_vec(vec![f32::NAN, -1.0, 0.0, 3.0], vec![4]).unwrap();
        let y = relu(&x).unwrap().to_vec::<f32>().unwrap();
        assert!(y[0].is_nan(), "{y:?}");
        assert_eq!(y[1..], [0.0, 0.0, 3.0]);
        let dy = Tensor::from_vec(vec![1.0f32; 4], vec![4]).unwrap();
        let y = relu(&x).unwrap();
        let dx = relu_backward(&y, &dy).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(dx, [0.0, 0.0, 0.0, 1.0]);
    }
}
