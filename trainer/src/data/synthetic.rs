//! A deterministic synthetic dataset with learnable structure, for smoke
//! tests and benchmarks without downloads.

use super::{Dataset, Splits};
use engine::Rng;
use std::f64::consts::PI;
use std::sync::Arc;

const CLASSES: usize = 10;

/// `n` training and `max(n / 5, 10)` test images of `size × size ×
/// channels` in 10 balanced classes (image `i` has label `i mod 10`).
///
/// Class k is a pattern of stripes whose orientation (0°, 22.5°, .., 90°,
/// from `k mod 5`) and frequency (low for k < 5, high otherwise) identify it,
/// with a per-class tint in RGB, and random phase, small random jitter of
/// angle, frequency and contrast, and pixel noise. The angles lie in [0°, 90°]
/// so that a horizontal flip (which maps θ to 180° − θ) never turns one
/// class into another. `channels` other than 1 means 3; `size` is at least 1.
pub fn synthetic(n: usize, size: usize, channels: usize, seed: u64) -> Splits {
    let size = size.max(1);
    let channels = if channels == 1 { 1 } else { 3 };
    let train = generate("synthetic train", n, size, channels, seed);
    let test = generate(
        "synthetic test",
        (n / 5).max(10),
        size,
        channels,
        seed ^ 0x5eed_7e57_0000_0001,
    );
    Splits::new(train, Some(test))
}

fn generate(name: &str, n: usize, size: usize, channels: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let mut pixels = Vec::with_capacity(n * size * size * channels);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let k = i % CLASSES;
        labels.push(k as i64);
        let angle = (k % 5) as f64 * PI / 8.0 + rng.range(-0.05, 0.05);
        let cycles = if k < 5 { 2.0 } else { 5.0 } * rng.range(0.9, 1.1);
        let phase = rng.range(0.0, 2.0 * PI);
        let contrast = rng.range(0.3, 0.45);
        let (dx, dy) = (angle.cos(), angle.sin());
        let tint = [
            0.5 + 0.3 * (k as f64 * 0.6).cos(),
            0.5 + 0.3 * (k as f64 * 0.6 + 2.1).cos(),
            0.5 + 0.3 * (k as f64 * 0.6 + 4.2).cos(),
        ];
        for y in 0..size {
            for x in 0..size {
                let t = (x as f64 * dx + y as f64 * dy) / size as f64;
                let wave = contrast * (2.0 * PI * cycles * t + phase).sin();
                for &tint in &tint[..channels] {
                    let base = if channels == 1 { 0.5 } else { tint };
                    let v = base + wave + 0.05 * rng.normal();
                    pixels.push((v.clamp(0.0, 1.0) * 255.0).round() as u8);
                }
            }
        }
    }
    Dataset::memory(
        name.into(),
        vec![Arc::new(pixels)],
        (size, size, channels),
        Some(labels),
        Some(CLASSES),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_is_deterministic_labelled_and_split() {
        let a = synthetic(30, 8, 3, 7);
        let b = synthetic(30, 8, 3, 7);
        assert_eq!((a.train.len(), a.test.as_ref().unwrap().len()), (30, 10));
        assert_eq!(
            a.train.describe(),
            "synthetic train: 30 images, 8×8×3, 10 classes"
        );
        assert_eq!(a.train.image(13).unwrap(), b.train.image(13).unwrap());
        assert_ne!(
            a.train.image(13).unwrap(),
            synthetic(30, 8, 3, 8).train.image(13).unwrap()
        );
        assert_ne!(
            a.train.image(0).unwrap(),
            a.test.as_ref().unwrap().image(0).unwrap()
        );
        assert_eq!(a.train.label(13), Some(3));
        assert!(a.labelled_train.is_some());
        let grey = synthetic(10, 5, 1, 0);
        assert_eq!(grey.train.image(0).unwrap().data.len(), 25);
        assert_eq!(synthetic(0, 0, 2, 0).train.channels(), 3);
    }

    #[test]
    fn classes_are_separable_by_a_simple_statistic() {
        // Low- and high-frequency classes differ in mean squared neighbour
        // difference, well beyond the noise.
        let s = synthetic(200, 32, 1, 3);
        let roughness = |i: usize| {
            let img = s.train.image(i).unwrap();
            let d = |a: usize, b: usize| (img.data[a] as f64 - img.data[b] as f64).powi(2);
            (0..32 * 31)
                .map(|p| d(p, p + 32) + d(p + p / 31, p + p / 31 + 1))
                .sum::<f64>()
        };
        let (mut low, mut high) = (0.0, 0.0);
        for i in 0..200 {
            if i % 10 < 5 {
                low += roughness(i);
            } else {
                high += roughness(i);
            }
        }
        assert!(high > 2.0 * low, "low {low} high {high}");
    }
}
