//! Inputs and checks shared by the CPU convolution kernels' tests.

use super::{Conv2dParams, ConvGeometry, cpu};
use crate::Tensor;

/// `len` deterministic values in [-1, 1).
pub(super) fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0)
        .collect()
}

/// Fails unless `got` matches the f64 reference `want` to f32 rounding.
pub(super) fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 2e-5 * scale,
            "{what}: element {i}: {g} vs {w}"
        );
    }
}

/// One convolution's inputs and the f64 im2col reference's results.
pub(super) struct Case {
    pub g: ConvGeometry,
    pub x: Vec<f32>,
    pub w: Vec<f32>,
    pub dy: Vec<f32>,
    pub y: Vec<f64>,
    pub dx: Vec<f64>,
    pub dw: Vec<f64>,
}

/// The case of `n` images of `h × w × c` and `k` square `kernel`s, with
/// deterministic inputs.
pub(super) fn case(
    (n, h, w, c, k): (usize, usize, usize, usize, usize),
    (kernel, stride, padding): (usize, usize, usize),
) -> Case {
    let x = Tensor::from_vec(values(n * h * w * c, 1), [n, h, w, c]).unwrap();
    let wt = Tensor::from_vec(values(k * kernel * kernel * c, 2), [k, kernel, kernel, c]).unwrap();
    let g = ConvGeometry::new(&x, &wt, Conv2dParams { stride, padding }).unwrap();
    let (x, w) = (
        x.as_slice::<f32>().unwrap().to_vec(),
        wt.as_slice::<f32>().unwrap().to_vec(),
    );
    let dy = values(n * g.oh * g.ow * k, 3);
    let f64s = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<_>>();
    let (x64, w64, dy64) = (f64s(&x), f64s(&w), f64s(&dy));
    let y = cpu::forward::<f64>(&g, &x64, &w64);
    let (dx, dw) = cpu::backward::<f64>(&g, &x64, &w64, &dy64, (true, true));
    let (dx, dw) = (dx.unwrap(), dw.unwrap());
    Case {
        g,
        x,
        w,
        dy,
        y,
        dx,
        dw,
    }
}
