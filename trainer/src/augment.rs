//! The two asymmetric augmentation pipelines of Momentum² Teacher (BYOL's),
//! and the deterministic evaluation transform.
//!
//! Both pipelines apply, in order: RandomResizedCrop, ColorJitter (p = 0.8),
//! Gaussian blur (p = 1.0 for view one, 0.1 for view two), Grayscale
//! (p = 0.2), horizontal flip (p = 0.5), Solarize (view two only, p = 0.2),
//! then normalisation. Semantics follow torchvision on float tensors in
//! [0, 1]; all randomness comes from the caller's [`Rng`].
//!
//! A view is drawn ([`ViewParams::draw`]) and then applied, on the CPU by
//! [`apply_view`] or to a whole batch on a GPU by [`GpuAugmenter`]; the same
//! seed gives the same view on both.

use crate::data::Image;
use crate::{Error, Result};
use engine::Rng;

mod gpu;
pub use gpu::{GpuAugmenter, GpuImages};

/// Which of the two pipelines to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Always blurred, never solarised (the student's `x1`).
    One,
    /// Rarely blurred, sometimes solarised (the student's `x2`).
    Two,
}

/// Output size, channels, normalisation and the size-dependent parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Output side in pixels (the crop is `size × size`).
    pub size: usize,
    /// Output channels, 1 or 3; images with the other count are converted.
    pub channels: usize,
    /// Per-channel mean subtracted after augmentation (first entry for grey).
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by (first entry for grey).
    pub std: [f32; 3],
    /// RandomResizedCrop area range, as fractions of the image area.
    pub crop_scale: (f64, f64),
    /// RandomResizedCrop aspect-ratio range (width / height).
    pub crop_ratio: (f64, f64),
    /// Gaussian blur σ range in output pixels; `None` disables blurring.
    pub blur_sigma: Option<(f64, f64)>,
}

impl AugmentConfig {
    /// The method's settings for `size × size × channels` outputs.
    ///
    /// RGB uses the ImageNet statistics. Grey uses their channel averages
    /// (mean 0.449, std 0.226): a grey image is roughly the average of its
    /// colour channels, so this keeps grey inputs on the scale RGB-trained
    /// settings (learning rates, initialisation) were tuned for.
    ///
    /// The blur σ range U[0.1, 2.0] is defined at 224 px, so it is scaled by
    /// `size / 224`; below 32 px the largest σ is under 0.3 px, a near
    /// no-op, and the blur is dropped.
    pub fn new(size: usize, channels: usize) -> Result<AugmentConfig> {
        if size == 0 || !(channels == 1 || channels == 3) {
            return Err(Error::Usage(format!(
                "augmentation needs a positive size and 1 or 3 channels, not {size}×{channels}"
            )));
        }
        let (mean, std) = if channels == 3 {
            ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        } else {
            ([0.449; 3], [0.226; 3])
        };
        let scale = size as f64 / 224.0;
        Ok(AugmentConfig {
            size,
            channels,
            mean,
            std,
            crop_scale: (0.08, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            blur_sigma: (size >= 32).then_some((0.1 * scale, 2.0 * scale)),
        })
    }

    /// Floats in one output image: `size · size · channels`.
    pub fn sample_len(&self) -> usize {
        self.size * self.size * self.channels
    }
}

/// Writes one augmented view of `image` into `out` (`size × size ×
/// channels`, HWC, normalised): [`ViewParams::draw`] then [`apply_view`].
///
/// # Panics
/// If `out.len() != cfg.sample_len()` or the image is empty.
pub fn view(image: &Image, which: View, cfg: &AugmentConfig, rng: &mut Rng, out: &mut [f32]) {
    let params = ViewParams::draw((image.height, image.width), which, cfg, rng);
    apply_view(image, &params, cfg, out);
}

/// Everything random about one view of one image, drawn up front so the CPU
/// ([`apply_view`]) and the GPU ([`GpuAugmenter`]) apply the same view.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewParams {
    /// The RandomResizedCrop rectangle, in source pixels.
    pub crop: Crop,
    /// ColorJitter's order and factors, if it applies.
    pub jitter: Option<Jitter>,
    /// The Gaussian blur σ in output pixels, if the view is blurred.
    pub blur_sigma: Option<f64>,
    /// Whether the view is converted to grey.
    pub grayscale: bool,
    /// Whether the view is mirrored left to right.
    pub flip: bool,
    /// Whether the view is solarised.
    pub solarize: bool,
}

impl ViewParams {
    /// Draws the parameters of pipeline `which` for an image of
    /// `(height, width)` from `rng`, in the order the pipeline applies them
    /// (crop, jitter, blur, grayscale, flip, solarize), so a seed names one
    /// view on every device.
    pub fn draw(
        (height, width): (usize, usize),
        which: View,
        cfg: &AugmentConfig,
        rng: &mut Rng,
    ) -> ViewParams {
        let crop = sample_crop(height, width, cfg.crop_scale, cfg.crop_ratio, rng);
        let jitter = (rng.uniform() < 0.8).then(|| Jitter::draw(rng));
        let blur_p = if which == View::One { 1.0 } else { 0.1 };
        let blur_sigma = match cfg.blur_sigma {
            Some((lo, hi)) if rng.uniform() < blur_p => Some(rng.range(lo, hi)),
            _ => None,
        };
        let grayscale = rng.uniform() < 0.2;
        let flip = rng.uniform() < 0.5;
        let solarize = which == View::Two && rng.uniform() < 0.2;
        ViewParams {
            crop,
            jitter,
            blur_sigma,
            grayscale,
            flip,
            solarize,
        }
    }
}

/// Writes the view `params` describes of `image` into `out` (`size × size ×
/// channels`, HWC, normalised): crop, jitter, blur, grayscale, flip,
/// solarize, normalise.
///
/// # Panics
/// If `out.len() != cfg.sample_len()` or the crop is outside the image.
pub fn apply_view(image: &Image, params: &ViewParams, cfg: &AugmentConfig, out: &mut [f32]) {
    assert_eq!(out.len(), cfg.sample_len(), "output buffer size");
    let (size, c) = (cfg.size, cfg.channels);
    let mut px = resized_crop(image, params.crop, cfg);
    if let Some(jitter) = &params.jitter {
        jitter.apply(&mut px, c);
    }
    if let Some(sigma) = params.blur_sigma {
        gaussian_blur(&mut px, size, size, c, sigma);
    }
    if params.grayscale {
        grayscale(&mut px, c);
    }
    if params.flip {
        flip_horizontal(&mut px, size, size, c);
    }
    if params.solarize {
        solarize(&mut px);
    }
    normalise(&px, cfg, out);
}

/// Writes the linear-evaluation training view of `image` into `out`:
/// RandomResizedCrop, horizontal flip (p = 0.5), normalisation.
///
/// # Panics
/// If `out.len() != cfg.sample_len()` or the image is empty.
pub fn classifier_view(image: &Image, cfg: &AugmentConfig, rng: &mut Rng, out: &mut [f32]) {
    assert_eq!(out.len(), cfg.sample_len(), "output buffer size");
    let crop = sample_crop(
        image.height,
        image.width,
        cfg.crop_scale,
        cfg.crop_ratio,
        rng,
    );
    let mut px = resized_crop(image, crop, cfg);
    if rng.uniform() < 0.5 {
        flip_horizontal(&mut px, cfg.size, cfg.size, cfg.channels);
    }
    normalise(&px, cfg, out);
}

/// `crop` of `image` resized to `size × size`, in [0, 1] with `cfg.channels`.
fn resized_crop(image: &Image, crop: Crop, cfg: &AugmentConfig) -> Vec<f32> {
    let (top, left, size) = (crop.top, crop.left, cfg.size);
    let rows = Taps::new(
        top,
        top + crop.height,
        size,
        crop.height as f64 / size as f64,
        0.0,
    );
    let cols = Taps::new(
        left,
        left + crop.width,
        size,
        crop.width as f64 / size as f64,
        0.0,
    );
    match_channels(resample(image, &rows, &cols), image.channels, cfg.channels)
}

/// Writes the evaluation view of `image` into `out`: an image already
/// `size × size` is only normalised; others are resized (bilinear,
/// antialiased) so the short side is `size · 256/224`, then centre-cropped
/// to `size × size` (torchvision `Resize(256)` + `CenterCrop(224)` scaled).
///
/// # Panics
/// If `out.len() != cfg.sample_len()` or the image is empty.
pub fn eval_view(image: &Image, cfg: &AugmentConfig, out: &mut [f32]) {
    assert_eq!(out.len(), cfg.sample_len(), "output buffer size");
    let size = cfg.size;
    let (h, w) = (image.height, image.width);
    let px = if (h, w) == (size, size) {
        image.data.iter().map(|&v| v as f32 / 255.0).collect()
    } else {
        let short = (size as f64 * 256.0 / 224.0).round() as usize;
        // torchvision: the long side is truncated, the crop offset rounded.
        let (rh, rw) = if h <= w {
            (short, (short as f64 * w as f64 / h as f64) as usize)
        } else {
            ((short as f64 * h as f64 / w as f64) as usize, short)
        };
        let top = ((rh - size) as f64 / 2.0).round_ties_even();
        let left = ((rw - size) as f64 / 2.0).round_ties_even();
        let rows = Taps::new(0, h, size, h as f64 / rh as f64, top);
        let cols = Taps::new(0, w, size, w as f64 / rw as f64, left);
        resample(image, &rows, &cols)
    };
    normalise(&match_channels(px, image.channels, cfg.channels), cfg, out);
}

/// A crop rectangle in source pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl Crop {
    /// This crop of an `h × w` image on the same image decoded at
    /// 1/`divisor` (`⌈h / divisor⌉ × ⌈w / divisor⌉`): the smallest
    /// rectangle of whole decoded pixels that covers it.
    pub fn reduced(self, divisor: usize, (h, w): (usize, usize)) -> Crop {
        let (rh, rw) = (h.div_ceil(divisor), w.div_ceil(divisor));
        let (top, left) = (self.top / divisor, self.left / divisor);
        let bottom = (self.top + self.height).div_ceil(divisor).min(rh);
        let right = (self.left + self.width).div_ceil(divisor).min(rw);
        Crop {
            top,
            left,
            height: bottom - top,
            width: right - left,
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 tries at a random
/// area fraction and log-uniform aspect ratio that fits, else a centre crop
/// of the whole image clamped to the ratio range.
fn sample_crop(h: usize, w: usize, scale: (f64, f64), ratio: (f64, f64), rng: &mut Rng) -> Crop {
    let area = (h * w) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.range(scale.0, scale.1);
        let aspect = rng.range(log_lo, log_hi).exp();
        let cw = (target * aspect).sqrt().round_ties_even() as usize;
        let ch = (target / aspect).sqrt().round_ties_even() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.below(h - ch + 1);
            let left = rng.below(w - cw + 1);
            return Crop {
                top,
                left,
                height: ch,
                width: cw,
            };
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio.0 {
        (
            ((w as f64 / ratio.0).round_ties_even() as usize).clamp(1, h),
            w,
        )
    } else if in_ratio > ratio.1 {
        (
            h,
            ((h as f64 * ratio.1).round_ties_even() as usize).clamp(1, w),
        )
    } else {
        (h, w)
    };
    Crop {
        top: (h - ch) / 2,
        left: (w - cw) / 2,
        height: ch,
        width: cw,
    }
}

/// Resampling weights along one axis (PIL / torchvision antialiased
/// bilinear): output `o` averages source pixels near
/// `lo + (o + offset + 0.5) · scale` with a triangle filter widened to the
/// scale when downsampling, never reading outside `lo..hi`.
/// (`augment_crop_taps` in `kernels/cuda/augment.cu` repeats this arithmetic.)
struct Taps {
    /// First source index of each output.
    start: Vec<usize>,
    /// `stride` weights per output, zero-padded.
    weights: Vec<f32>,
    stride: usize,
}

impl Taps {
    fn new(lo: usize, hi: usize, out: usize, scale: f64, offset: f64) -> Taps {
        let support = scale.max(1.0);
        let stride = tap_stride(scale);
        let mut start = Vec::with_capacity(out);
        let mut weights = vec![0f32; out * stride];
        for o in 0..out {
            let center = lo as f64 + (o as f64 + offset + 0.5) * scale;
            let first = ((center - support).floor().max(lo as f64) as usize).min(hi - 1);
            let last = ((center + support).ceil() as usize)
                .min(hi)
                .min(first + stride);
            let w = &mut weights[o * stride..(o + 1) * stride];
            let mut total = 0.0;
            for (k, x) in (first..last).enumerate() {
                let t = 1.0 - ((x as f64 + 0.5 - center) / support).abs();
                w[k] = t.max(0.0) as f32;
                total += w[k];
            }
            if total > 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            } else {
                w[0] = 1.0; // unreachable for in-range centres; keeps the pixel defined
            }
            start.push(first);
        }
        Taps {
            start,
            weights,
            stride,
        }
    }

    /// The first source index and the weights of output `o`.
    fn get(&self, o: usize) -> (usize, &[f32]) {
        (
            self.start[o],
            &self.weights[o * self.stride..(o + 1) * self.stride],
        )
    }
}

/// Weights per output at `scale` source pixels per output: the triangle
/// filter's reach `max(scale, 1)` on both sides, rounded up, plus one.
fn tap_stride(scale: f64) -> usize {
    2 * scale.max(1.0).ceil() as usize + 1
}

/// Resamples `image` with separable `rows` × `cols` taps into f32 in [0, 1]
/// (same channels as the image).
fn resample(image: &Image, rows: &Taps, cols: &Taps) -> Vec<f32> {
    let c = image.channels;
    let (out_h, out_w) = (rows.start.len(), cols.start.len());
    let y0 = rows.start.iter().copied().min().unwrap_or(0);
    let y1 = (rows.start.iter().copied().max().unwrap_or(0) + rows.stride).min(image.height);
    // Horizontal pass over the source rows the vertical taps can reach.
    let row_len = out_w * c;
    let mut tmp = vec![0f32; (y1 - y0) * row_len];
    for y in y0..y1 {
        let src = &image.data[y * image.width * c..(y + 1) * image.width * c];
        let dst = &mut tmp[(y - y0) * row_len..(y - y0 + 1) * row_len];
        for (ox, out) in dst.chunks_exact_mut(c).enumerate() {
            let (x0, w) = cols.get(ox);
            // Zero-padded taps may run past the row's end; stop there.
            let taps = w.len().min(image.width - x0);
            let mut acc = [0f32; 3];
            for (&wk, p) in w[..taps].iter().zip(src[x0 * c..].chunks_exact(c)) {
                for (a, &v) in acc.iter_mut().zip(p) {
                    *a += wk * v as f32;
                }
            }
            // Element by element: a 3-float copy_from_slice is a memmove call.
            out.iter_mut().zip(acc).for_each(|(o, a)| *o = a);
        }
    }
    // Vertical pass, folding in the 1/255.
    let mut out = vec![0f32; out_h * row_len];
    for oy in 0..out_h {
        let (ys, w) = rows.get(oy);
        let dst = &mut out[oy * row_len..(oy + 1) * row_len];
        for (k, &wk) in w.iter().enumerate() {
            if wk == 0.0 {
                continue;
            }
            let src = &tmp[(ys + k - y0) * row_len..(ys + k - y0 + 1) * row_len];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += wk * s;
            }
        }
        dst.iter_mut()
            .for_each(|v| *v = (*v / 255.0).clamp(0.0, 1.0));
    }
    out
}

/// Converts interleaved pixels from `from` to `to` channels (1 ↔ 3).
fn match_channels(px: Vec<f32>, from: usize, to: usize) -> Vec<f32> {
    match (from, to) {
        (1, 3) => px.iter().flat_map(|&v| [v; 3]).collect(),
        (3, 1) => px.chunks_exact(3).map(luma).collect(),
        _ => px,
    }
}

/// torchvision's `rgb_to_grayscale` weights.
fn luma(p: &[f32]) -> f32 {
    0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// One of ColorJitter's four adjustments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitterOp {
    /// Scale every value.
    Brightness,
    /// Blend with the image's mean grey level.
    Contrast,
    /// Blend each pixel with its own grey level.
    Saturation,
    /// Rotate the hue.
    Hue,
}

/// ColorJitter(0.4, 0.4, 0.2, 0.1): the four ops in a random order, each
/// with its factor drawn up front (torchvision's `get_params`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Jitter {
    /// The order the ops apply in.
    pub order: [JitterOp; 4],
    /// Brightness factor, in [0.6, 1.4].
    pub brightness: f32,
    /// Contrast factor, in [0.6, 1.4].
    pub contrast: f32,
    /// Saturation factor, in [0.8, 1.2].
    pub saturation: f32,
    /// Hue shift in turns, in [−0.1, 0.1].
    pub hue: f32,
}

impl Jitter {
    /// Draws the order (a Fisher–Yates shuffle) and then the four factors.
    pub fn draw(rng: &mut Rng) -> Jitter {
        let mut order = [
            JitterOp::Brightness,
            JitterOp::Contrast,
            JitterOp::Saturation,
            JitterOp::Hue,
        ];
        for i in (1..4).rev() {
            order.swap(i, rng.below(i + 1));
        }
        Jitter {
            order,
            brightness: rng.range(0.6, 1.4) as f32,
            contrast: rng.range(0.6, 1.4) as f32,
            saturation: rng.range(0.8, 1.2) as f32,
            hue: rng.range(-0.1, 0.1) as f32,
        }
    }

    /// Applies the ops in order to `px` with `c` channels. Grey images
    /// (`c == 1`) behave like an RGB image with equal channels, for which
    /// saturation and hue do nothing.
    fn apply(&self, px: &mut [f32], c: usize) {
        for op in self.order {
            match op {
                JitterOp::Brightness => px
                    .iter_mut()
                    .for_each(|v| *v = (*v * self.brightness).clamp(0.0, 1.0)),
                JitterOp::Contrast => adjust_contrast(px, c, self.contrast),
                JitterOp::Saturation if c == 3 => adjust_saturation(px, self.saturation),
                JitterOp::Hue if c == 3 => adjust_hue(px, self.hue),
                _ => {}
            }
        }
    }
}

/// Blends with the mean grey level of the whole image.
fn adjust_contrast(px: &mut [f32], c: usize, factor: f32) {
    let n = (px.len() / c).max(1) as f32;
    let mean = if c == 3 {
        px.chunks_exact(3).map(luma).sum::<f32>() / n
    } else {
        px.iter().sum::<f32>() / n
    };
    let offset = (1.0 - factor) * mean;
    px.iter_mut()
        .for_each(|v| *v = (factor * *v + offset).clamp(0.0, 1.0));
}

/// Blends each RGB pixel with its own grey level.
fn adjust_saturation(px: &mut [f32], factor: f32) {
    for p in px.chunks_exact_mut(3) {
        let g = (1.0 - factor) * luma(p);
        p.iter_mut()
            .for_each(|v| *v = (factor * *v + g).clamp(0.0, 1.0));
    }
}

/// Rotates the hue of each RGB pixel by `shift` turns (in HSV).
fn adjust_hue(px: &mut [f32], shift: f32) {
    for p in px.chunks_exact_mut(3) {
        let (r, g, b) = (p[0], p[1], p[2]);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let delta = max - min;
        if delta <= 0.0 {
            continue; // grey: hue is undefined and rotating it changes nothing
        }
        let h = if max == r {
            (g - b) / delta
        } else if max == g {
            2.0 + (b - r) / delta
        } else {
            4.0 + (r - g) / delta
        };
        let h = (h / 6.0 + shift).rem_euclid(1.0) * 6.0;
        let (v, s) = (max, delta / max);
        let sector = (h.floor() as usize).min(5);
        let f = h - sector as f32;
        let (pv, qv, tv) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
        let rgb = match sector {
            0 => [v, tv, pv],
            1 => [qv, v, pv],
            2 => [pv, v, tv],
            3 => [pv, qv, v],
            4 => [tv, pv, v],
            _ => [v, pv, qv],
        };
        p.copy_from_slice(&rgb);
    }
}

/// Separable Gaussian blur with a ±3σ kernel (at least 3 taps) and
/// reflected borders, like torchvision's `gaussian_blur`.
fn gaussian_blur(px: &mut [f32], h: usize, w: usize, c: usize, sigma: f64) {
    let radius = blur_radius(sigma, h.min(w));
    if radius == 0 {
        return; // a 1-pixel side: nothing to blur against
    }
    let kernel = gaussian_kernel(sigma, radius);
    let reflect = |i: isize, n: usize| -> usize {
        let n = n as isize;
        (if i < 0 {
            -i
        } else if i >= n {
            2 * (n - 1) - i
        } else {
            i
        }) as usize
    };
    // Horizontal pass: each row padded by reflection, then plain sums.
    let row = w * c;
    let mut padded = vec![0f32; (w + 2 * radius) * c];
    let mut tmp = vec![0f32; px.len()];
    for (src, dst) in px.chunks_exact(row).zip(tmp.chunks_exact_mut(row)) {
        for (p, chunk) in padded.chunks_exact_mut(c).enumerate() {
            let sx = reflect(p as isize - radius as isize, w);
            chunk
                .iter_mut()
                .zip(&src[sx * c..])
                .for_each(|(d, &s)| *d = s);
        }
        // Tap-major so the inner loop runs over contiguous, independent lanes.
        for (k, &wk) in kernel.iter().enumerate() {
            for (d, &s) in dst.iter_mut().zip(&padded[k * c..k * c + row]) {
                *d += wk * s;
            }
        }
    }
    // Vertical pass: whole rows at a time.
    px.fill(0.0);
    for y in 0..h {
        let dst = &mut px[y * row..(y + 1) * row];
        for (k, &wk) in kernel.iter().enumerate() {
            let sy = reflect(y as isize + k as isize - radius as isize, h);
            for (d, &s) in dst.iter_mut().zip(&tmp[sy * row..(sy + 1) * row]) {
                *d += wk * s;
            }
        }
    }
}

/// The blur radius for σ on an image whose short side is `side`: ±3σ, at
/// least 1, and never past the opposite border (0 for a 1-pixel side).
fn blur_radius(sigma: f64, side: usize) -> usize {
    ((3.0 * sigma).ceil() as usize)
        .max(1)
        .min(side.saturating_sub(1))
}

/// The `2·radius + 1` normalised Gaussian weights of σ.
fn gaussian_kernel(sigma: f64, radius: usize) -> Vec<f32> {
    let kernel: Vec<f32> = (0..=2 * radius)
        .map(|i| (-((i as f64 - radius as f64).powi(2)) / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter().map(|k| k / total).collect()
}

/// Replaces RGB pixels by their grey level in all three channels (a grey
/// image is left as is).
fn grayscale(px: &mut [f32], c: usize) {
    if c == 3 {
        for p in px.chunks_exact_mut(3) {
            let g = luma(p);
            p.fill(g);
        }
    }
}

/// Mirrors left to right.
fn flip_horizontal(px: &mut [f32], h: usize, w: usize, c: usize) {
    for row in px.chunks_exact_mut(w * c).take(h) {
        for x in 0..w / 2 {
            for ch in 0..c {
                row.swap(x * c + ch, (w - 1 - x) * c + ch);
            }
        }
    }
}

/// PIL's `solarize(threshold=128)` on [0, 1] values: pixels at or above
/// 128/255 are inverted.
fn solarize(px: &mut [f32]) {
    const THRESHOLD: f32 = 128.0 / 255.0;
    px.iter_mut()
        .filter(|v| **v >= THRESHOLD)
        .for_each(|v| *v = 1.0 - *v);
}

/// `(x − mean) / std` per channel into `out`.
fn normalise(px: &[f32], cfg: &AugmentConfig, out: &mut [f32]) {
    let c = cfg.channels;
    let inv_std = cfg.std.map(|s| 1.0 / s);
    for (o, p) in out.chunks_exact_mut(c).zip(px.chunks_exact(c)) {
        for ch in 0..c {
            o[ch] = (p[ch] - cfg.mean[ch]) * inv_std[ch];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `h × w × c` image with varied content.
    fn test_image(h: usize, w: usize, c: usize) -> Image {
        let data = (0..h * w * c)
            .map(|i| ((i * 37 + i / 7 * 11) % 256) as u8)
            .collect();
        Image {
            data,
            height: h,
            width: w,
            channels: c,
        }
    }

    fn denormalise(out: &[f32], cfg: &AugmentConfig) -> Vec<f32> {
        let c = cfg.channels;
        out.iter()
            .enumerate()
            .map(|(i, v)| v * cfg.std[i % c] + cfg.mean[i % c])
            .collect()
    }

    #[test]
    fn config_picks_statistics_and_blur_by_size() {
        let rgb = AugmentConfig::new(224, 3).unwrap();
        assert_eq!(rgb.mean, [0.485, 0.456, 0.406]);
        let (lo, hi) = rgb.blur_sigma.unwrap();
        assert!((lo - 0.1).abs() < 1e-12 && (hi - 2.0).abs() < 1e-12);
        let grey = AugmentConfig::new(28, 1).unwrap();
        assert_eq!(
            (grey.mean[0], grey.std[0], grey.blur_sigma),
            (0.449, 0.226, None)
        );
        assert_eq!(grey.sample_len(), 28 * 28);
        assert!(AugmentConfig::new(32, 2).is_err() && AugmentConfig::new(0, 3).is_err());
    }

    #[test]
    fn views_have_the_right_size_and_range_for_all_shapes() {
        let mut rng = Rng::new(1);
        for (img, size, c) in [
            (test_image(32, 32, 3), 32, 3),
            (test_image(96, 80, 3), 64, 3),
            (test_image(28, 28, 1), 28, 1),
            (test_image(20, 30, 1), 16, 3),
            (test_image(40, 40, 3), 32, 1),
            (test_image(1, 1, 3), 8, 3),
        ] {
            let cfg = AugmentConfig::new(size, c).unwrap();
            let mut out = vec![f32::NAN; cfg.sample_len()];
            for which in [View::One, View::Two] {
                for _ in 0..20 {
                    view(&img, which, &cfg, &mut rng, &mut out);
                    for v in denormalise(&out, &cfg) {
                        assert!((-1e-5..=1.0 + 1e-5).contains(&v), "{v}");
                    }
                }
            }
            classifier_view(&img, &cfg, &mut rng, &mut out);
            assert!(
                denormalise(&out, &cfg)
                    .iter()
                    .all(|v| (-1e-5..=1.0 + 1e-5).contains(v))
            );
            eval_view(&img, &cfg, &mut out);
            assert!(
                denormalise(&out, &cfg)
                    .iter()
                    .all(|v| (-1e-5..=1.0 + 1e-5).contains(v))
            );
        }
    }

    #[test]
    fn views_are_deterministic_per_seed() {
        let img = test_image(48, 40, 3);
        let cfg = AugmentConfig::new(32, 3).unwrap();
        let run = |seed, which| {
            let mut out = vec![0.0; cfg.sample_len()];
            view(&img, which, &cfg, &mut Rng::new(seed), &mut out);
            out
        };
        assert_eq!(run(5, View::One), run(5, View::One));
        assert_eq!(run(5, View::Two), run(5, View::Two));
        assert_ne!(run(5, View::One), run(6, View::One));
        let classifier = |seed| {
            let mut out = vec![0.0; cfg.sample_len()];
            classifier_view(&img, &cfg, &mut Rng::new(seed), &mut out);
            out
        };
        assert_eq!(classifier(5), classifier(5));
        assert_ne!(classifier(5), classifier(6));
    }

    #[test]
    fn full_crop_reproduces_a_resize() {
        let mut rng = Rng::new(0);
        // Scale 1 and ratio 1 on a square image always select all of it...
        for _ in 0..5 {
            let crop = sample_crop(12, 12, (1.0, 1.0), (1.0, 1.0), &mut rng);
            assert_eq!(
                crop,
                Crop {
                    top: 0,
                    left: 0,
                    height: 12,
                    width: 12
                }
            );
        }
        // ...and fall back to the centre square of a non-square one.
        let crop = sample_crop(10, 16, (1.0, 1.0), (1.0, 1.0), &mut rng);
        assert_eq!(
            crop,
            Crop {
                top: 0,
                left: 3,
                height: 10,
                width: 10
            }
        );

        // Same size: the identity. Upsampling: classic half-pixel bilinear.
        let img = test_image(8, 8, 3);
        let same = resample(
            &img,
            &Taps::new(0, 8, 8, 1.0, 0.0),
            &Taps::new(0, 8, 8, 1.0, 0.0),
        );
        for (a, &b) in same.iter().zip(&img.data) {
            assert!((a - b as f32 / 255.0).abs() < 1e-6);
        }
        let up = resample(
            &img,
            &Taps::new(0, 8, 16, 0.5, 0.0),
            &Taps::new(0, 8, 16, 0.5, 0.0),
        );
        let at = |y: usize, x: usize, c: usize| img.data[(y * 8 + x) * 3 + c] as f32 / 255.0;
        let src = |o: usize| ((o as f32 + 0.5) * 0.5 - 0.5).clamp(0.0, 7.0);
        for oy in 0..16 {
            for ox in 0..16 {
                let (sy, sx) = (src(oy), src(ox));
                let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
                let (y1, x1) = ((y0 + 1).min(7), (x0 + 1).min(7));
                let (fy, fx) = (sy - y0 as f32, sx - x0 as f32);
                for c in 0..3 {
                    let want = (1.0 - fy) * ((1.0 - fx) * at(y0, x0, c) + fx * at(y0, x1, c))
                        + fy * ((1.0 - fx) * at(y1, x0, c) + fx * at(y1, x1, c));
                    let got = up[(oy * 16 + ox) * 3 + c];
                    assert!((got - want).abs() < 1e-5, "({oy},{ox},{c}) {got} vs {want}");
                }
            }
        }
        // Downsampling by 2: PIL's triangle filter stretched to a radius of
        // 2 source pixels; interior output 1 uses source pixels 1..5 with
        // weights (1, 3, 3, 1) / 8 on each axis.
        let down = resample(
            &img,
            &Taps::new(0, 8, 4, 2.0, 0.0),
            &Taps::new(0, 8, 4, 2.0, 0.0),
        );
        let w = [1.0, 3.0, 3.0, 1.0].map(|v: f32| v / 8.0);
        let mut want = 0.0;
        for (dy, wy) in w.iter().enumerate() {
            for (dx, wx) in w.iter().enumerate() {
                want += wy * wx * at(1 + dy, 1 + dx, 2);
            }
        }
        let got = down[(4 + 1) * 3 + 2];
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn reduced_crops_cover_the_original_rectangle() {
        let crop = Crop {
            top: 5,
            left: 9,
            height: 30,
            width: 17,
        };
        assert_eq!(crop.reduced(1, (40, 30)), crop);
        // Rows 5..35 of 40 at 1/4: decoded rows 1..9 of 10.
        assert_eq!(
            crop.reduced(4, (40, 30)),
            Crop {
                top: 1,
                left: 2,
                height: 8,
                width: 5
            }
        );
        let whole = Crop {
            top: 0,
            left: 0,
            height: 37,
            width: 50,
        };
        let reduced = whole.reduced(8, (37, 50));
        assert_eq!((reduced.height, reduced.width), (5, 7));
    }

    #[test]
    fn flip_grayscale_and_solarize() {
        let mut px: Vec<f32> = (0..2 * 3 * 3).map(|v| v as f32).collect();
        flip_horizontal(&mut px, 2, 3, 3);
        assert_eq!(&px[..9], &[6., 7., 8., 3., 4., 5., 0., 1., 2.]);
        let mut grey = vec![1.0, 2.0, 3.0, 4.0];
        flip_horizontal(&mut grey, 2, 2, 1);
        assert_eq!(grey, [2.0, 1.0, 4.0, 3.0]);

        let mut rgb = vec![1.0, 0.0, 0.0, 0.2, 0.4, 0.6];
        grayscale(&mut rgb, 3);
        assert!(rgb[..3].iter().all(|&v| (v - 0.2989).abs() < 1e-6));
        assert!(
            rgb[3..]
                .iter()
                .all(|&v| (v - (0.2989 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6)).abs() < 1e-6)
        );

        let mut s = vec![0.0, 0.5, 128.0 / 255.0, 0.75, 1.0];
        solarize(&mut s);
        assert_eq!(s, [0.0, 0.5, 1.0 - 128.0 / 255.0, 0.25, 0.0]);
    }

    #[test]
    fn colour_ops_keep_grey_images_grey() {
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            let g: Vec<f32> = (0..64)
                .map(|i| (i as f32 * 0.37).sin() * 0.5 + 0.5)
                .collect();
            let mut rgb: Vec<f32> = g.iter().flat_map(|&v| [v; 3]).collect();
            Jitter::draw(&mut rng).apply(&mut rgb, 3);
            for p in rgb.chunks_exact(3) {
                assert!(
                    (p[0] - p[1]).abs() < 1e-5 && (p[1] - p[2]).abs() < 1e-5,
                    "{p:?}"
                );
            }
            let mut one = g.clone();
            Jitter::draw(&mut rng).apply(&mut one, 1);
            assert!(one.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }

    #[test]
    fn jitter_ops_match_torchvision_formulas() {
        // Contrast: blend with the mean grey level.
        let mut px = vec![0.2, 0.2, 0.2, 0.6, 0.6, 0.6];
        adjust_contrast(&mut px, 3, 0.5);
        let mean = 0.4 * (0.2989 + 0.587 + 0.114);
        assert!((px[0] - (0.1 + 0.5 * mean)).abs() < 1e-6);
        // Saturation 0 is grayscale.
        let mut px = vec![0.9, 0.1, 0.3];
        adjust_saturation(&mut px, 0.0);
        assert!(
            px.iter()
                .all(|&v| (v - luma(&[0.9, 0.1, 0.3])).abs() < 1e-6)
        );
        // Hue: a third of a turn maps red to green; a full turn is the identity.
        let mut px = vec![1.0, 0.0, 0.0, 0.3, 0.5, 0.9];
        adjust_hue(&mut px, 1.0 / 3.0);
        assert!((px[0] - 0.0).abs() < 1e-5 && (px[1] - 1.0).abs() < 1e-5 && px[2].abs() < 1e-5);
        let mut px2 = vec![0.3, 0.5, 0.9];
        adjust_hue(&mut px2, 1.0);
        assert!(
            px2.iter()
                .zip([0.3, 0.5, 0.9])
                .all(|(a, b)| (a - b).abs() < 1e-5)
        );
    }

    #[test]
    fn blur_preserves_constants_and_mass() {
        let mut flat = vec![0.3f32; 10 * 10 * 3];
        gaussian_blur(&mut flat, 10, 10, 3, 1.5);
        assert!(flat.iter().all(|v| (v - 0.3).abs() < 1e-6));
        let mut spike = vec![0f32; 9 * 9];
        spike[4 * 9 + 4] = 1.0;
        gaussian_blur(&mut spike, 9, 9, 1, 0.8);
        assert!((spike.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(spike[4 * 9 + 4] < 1.0 && spike[4 * 9 + 3] > 0.0 && spike[3 * 9 + 4] > 0.0);
        // Tiny σ still uses 3 taps, but leaves the image all but unchanged.
        let mut img: Vec<f32> = (0..16).map(|v| v as f32 / 16.0).collect();
        let orig = img.clone();
        gaussian_blur(&mut img, 4, 4, 1, 0.05);
        assert!(img.iter().zip(&orig).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn eval_view_normalises_native_images_and_centre_crops_others() {
        let cfg = AugmentConfig::new(8, 3).unwrap();
        let img = test_image(8, 8, 3);
        let mut out = vec![0.0; cfg.sample_len()];
        eval_view(&img, &cfg, &mut out);
        for (i, (&o, &p)) in out.iter().zip(&img.data).enumerate() {
            let c = i % 3;
            assert!((o - (p as f32 / 255.0 - cfg.mean[c]) / cfg.std[c]).abs() < 1e-5);
        }
        // A constant image stays constant; a left/right split stays centred.
        let mut data = vec![0u8; 30 * 20 * 3];
        for y in 0..30 {
            for x in 10..20 {
                data[(y * 20 + x) * 3..(y * 20 + x) * 3 + 3].fill(255);
            }
        }
        // Size 14: resized to 24×16, cropped at (5, 1): the edge stays centred.
        let split = Image {
            data,
            height: 30,
            width: 20,
            channels: 3,
        };
        let cfg14 = AugmentConfig::new(14, 3).unwrap();
        let mut out14 = vec![0.0; cfg14.sample_len()];
        eval_view(&split, &cfg14, &mut out14);
        let px = denormalise(&out14, &cfg14);
        let at = |y: usize, x: usize| px[(y * 14 + x) * 3];
        for y in 0..14 {
            assert!(at(y, 0) < 0.01 && at(y, 13) > 0.99);
            assert!(
                (at(y, 6) + at(y, 7) - 1.0).abs() < 0.01,
                "symmetric around the centre"
            );
        }
        // Grey in, RGB out: channels replicated.
        let grey = test_image(8, 8, 1);
        eval_view(&grey, &cfg, &mut out);
        let px = denormalise(&out, &cfg);
        assert!(
            px.chunks_exact(3)
                .all(|p| (p[0] - p[1]).abs() < 1e-5 && (p[1] - p[2]).abs() < 1e-5)
        );
    }
}
