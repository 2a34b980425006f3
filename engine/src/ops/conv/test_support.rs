//! Inputs and checks shared by the CPU convolution kernels' tests.

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
