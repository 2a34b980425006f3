//! The two view pipelines on a GPU (`trainer::augment::GpuAugmenter`)
//! against the CPU pipeline (`apply_view`) for the same drawn parameters:
//! odd source sizes, grey and RGB sources into grey and RGB outputs, and
//! parameters forced so every stage and every jitter order runs.
//!
//! The emulator follows the CPU's float operation order except in the
//! contrast mean (a block reduction), so f32 views agree to rounding; on a
//! GPU, fused multiply-adds add a few more ulps. The tolerance, 1e-4 of the
//! largest normalised value (about 2.6), leaves room for both.

use super::*;
use trainer::augment::{
    AugmentConfig, Crop, GpuAugmenter, Jitter, JitterOp, View, ViewParams, apply_view,
};
use trainer::data::Image;

pub const CASES: &[Case] = &[
    ("drawn_views", drawn_views),
    ("forced_stages", forced_stages),
];

/// Relative tolerance of f32 views (see the module comment).
const F32_TOLERANCE: f64 = 1e-4;

/// A `h × w × c` image with varied content, including values near the
/// solarize threshold.
fn test_image(h: usize, w: usize, c: usize, seed: usize) -> Image {
    let data = (0..h * w * c)
        .map(|i| ((i * 37 + i / 7 * 11 + seed * 101 + i * i / 13) % 256) as u8)
        .collect();
    Image {
        data,
        height: h,
        width: w,
        channels: c,
    }
}

/// Sources of both channel counts, of awkward sizes, down to one pixel.
fn test_images() -> Vec<Image> {
    vec![
        test_image(13, 9, 3, 0),
        test_image(9, 13, 1, 1),
        test_image(17, 11, 3, 2),
        test_image(6, 5, 1, 3),
        test_image(1, 1, 3, 4),
    ]
}

/// The CPU views of `images` as one `[n, size, size, c]` tensor.
fn cpu_views(images: &[Image], params: &[ViewParams], cfg: &AugmentConfig) -> Tensor {
    let len = cfg.sample_len();
    let mut out = vec![0f32; images.len() * len];
    for ((image, p), dst) in images.iter().zip(params).zip(out.chunks_exact_mut(len)) {
        apply_view(image, p, cfg, dst);
    }
    Tensor::from_vec(out, [images.len(), cfg.size, cfg.size, cfg.channels]).unwrap()
}

/// GPU views against CPU views, stored as `dtype`.
fn check(
    device: Device,
    images: &[Image],
    params: &[ViewParams],
    cfg: &AugmentConfig,
    dtype: DType,
) {
    let refs: Vec<&Image> = images.iter().collect();
    let aug = GpuAugmenter::new(device, cfg.clone(), dtype).unwrap();
    let batch = aug.upload(&refs).unwrap();
    let got = aug.views(&batch, params).unwrap();
    assert_eq!((got.device(), got.dtype()), (device, dtype));
    let want = cpu_views(images, params, cfg);
    let rtol = match dtype {
        DType::F32 => F32_TOLERANCE,
        other => tolerance(other),
    };
    let what = format!("{} channels as {dtype}", cfg.channels);
    assert_close(&what, &got, &want, rtol);
}

/// Parameters drawn like the loader draws them (view one, then view two
/// from the same per-sample generator), with a blur range so that 8-pixel
/// views are blurred too.
fn drawn_views(device: Device) {
    let images = test_images();
    for channels in [3, 1] {
        let mut cfg = AugmentConfig::new(8, channels).unwrap();
        cfg.blur_sigma = Some((0.2, 1.5));
        for seed in 0..3 {
            let (mut one, mut two) = (Vec::new(), Vec::new());
            for (i, image) in images.iter().enumerate() {
                let mut rng = Rng::new(seed * 100 + i as u64);
                one.push(ViewParams::draw(
                    (image.height, image.width),
                    View::One,
                    &cfg,
                    &mut rng,
                ));
                two.push(ViewParams::draw(
                    (image.height, image.width),
                    View::Two,
                    &cfg,
                    &mut rng,
                ));
            }
            check(device, &images, &one, &cfg, DType::F32);
            check(device, &images, &two, &cfg, DType::F32);
        }
    }
    expect_launched(
        device,
        &[
            "augment_crop_taps",
            "augment_resized_crop",
            "augment_color_jitter",
            "augment_blur_rows",
            "augment_blur_columns_normalise_f32",
        ],
    );
}

/// Every stage on, contrast at each position of the jitter order, blur σ
/// from far below a pixel to past the border, grayscale, flip and solarize
/// toggled per image, up- and downsampling crops; every output dtype.
fn forced_stages(device: Device) {
    use JitterOp::{Brightness, Contrast, Hue, Saturation};
    let images = test_images();
    let orders = [
        [Contrast, Hue, Brightness, Saturation],
        [Hue, Contrast, Saturation, Brightness],
        [Saturation, Brightness, Contrast, Hue],
        [Brightness, Saturation, Hue, Contrast],
        [Hue, Saturation, Brightness, Contrast],
    ];
    let sigmas = [Some(0.05), Some(0.9), None, Some(1.7), Some(3.0)];
    let crops = [
        (2, 1, 10, 7),
        (0, 3, 9, 10),
        (1, 0, 16, 4),
        (1, 1, 3, 3),
        (0, 0, 1, 1),
    ];
    let params: Vec<ViewParams> = (0..images.len())
        .map(|i| {
            let (top, left, height, width) = crops[i];
            ViewParams {
                crop: Crop {
                    top,
                    left,
                    height,
                    width,
                },
                jitter: Some(Jitter {
                    order: orders[i],
                    brightness: 0.7 + 0.15 * i as f32,
                    contrast: 1.35 - 0.17 * i as f32,
                    saturation: 0.85 + 0.08 * i as f32,
                    hue: -0.09 + 0.045 * i as f32,
                }),
                blur_sigma: sigmas[i],
                grayscale: i % 2 == 1,
                flip: i % 3 != 1,
                solarize: i != 2,
            }
        })
        .collect();
    for channels in [3, 1] {
        let cfg = AugmentConfig::new(8, channels).unwrap();
        for dtype in GPU_DTYPES {
            check(device, &images, &params, &cfg, dtype);
        }
    }
    expect_launched(
        device,
        &[
            "augment_crop_taps",
            "augment_resized_crop",
            "augment_color_jitter",
            "augment_blur_rows",
            "augment_blur_columns_normalise_f32",
            "augment_blur_columns_normalise_bf16",
            "augment_blur_columns_normalise_f16",
        ],
    );
}
