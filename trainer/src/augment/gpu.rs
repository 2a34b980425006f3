//! The view pipelines on a GPU, for a whole batch at once
//! (`kernels/cuda/augment.cu`).
//!
//! The host draws [`ViewParams`] exactly as the CPU pipeline does and packs
//! them into small per-image tables (the crop, the jitter order and factors,
//! the blur kernel's weights); the GPU works out the crop's resampling taps
//! itself, with the CPU's f64 arithmetic. The uint8 pixels go up once per
//! batch ([`GpuAugmenter::upload`]) and serve both views; each
//! [`GpuAugmenter::views`] call is one small upload and at most six kernel
//! launches.

use super::{AugmentConfig, JitterOp, ViewParams, blur_radius, gaussian_kernel};
use crate::data::Image;
use crate::{Error, Result};
use engine::{DType, Device, Tensor};
use kernels::{Arg, Buffer, Gpu, LaunchConfig};
use std::sync::Arc;

/// Threads per block of every augmentation kernel (a multiple of 32, for
/// the jitter kernel's block reduction).
const BLOCK: u32 = 256;

/// Integers per image in the parameter table, and their slots (`AUG_*` in
/// `augment.cu`).
const INTS: usize = 14;
const SRC_OFFSET_LO: usize = 0;
const SRC_WIDTH: usize = 1;
const SRC_CHANNELS: usize = 2;
const CROP_TOP: usize = 3;
const CROP_LEFT: usize = 4;
const CROP_HEIGHT: usize = 5;
const CROP_WIDTH: usize = 6;
const JITTER: usize = 7;
const JITTER_ORDER: usize = 8;
const BLUR_RADIUS: usize = 9;
const GRAYSCALE: usize = 10;
const FLIP: usize = 11;
const SOLARIZE: usize = 12;
const SRC_OFFSET_HI: usize = 13;

/// Jitter factors per image: brightness, contrast, saturation, hue.
const FLOATS: usize = 4;

/// Augments batches of images on one GPU device into `[n, size, size,
/// channels]` tensors of one float dtype.
#[derive(Debug)]
pub struct GpuAugmenter {
    device: Device,
    gpu: Arc<Gpu>,
    cfg: AugmentConfig,
    dtype: DType,
}

/// A batch of images in GPU memory, uploaded once for several views.
#[derive(Debug)]
pub struct GpuImages {
    device: Device,
    pixels: Buffer,
    /// Byte offset, height, width and channels of each image.
    images: Vec<[usize; 4]>,
}

impl GpuImages {
    /// The number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

impl GpuAugmenter {
    /// An augmenter for `device` (a GPU or the emulator) producing `cfg`'s
    /// views stored as `dtype` (f32, bf16 or f16).
    pub fn new(device: Device, cfg: AugmentConfig, dtype: DType) -> Result<GpuAugmenter> {
        if cfg.size == 0 || !(cfg.channels == 1 || cfg.channels == 3) {
            return Err(Error::Usage(format!(
                "augmentation needs a positive size and 1 or 3 channels, not {}×{}",
                cfg.size, cfg.channels
            )));
        }
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(engine::Error::DType {
                op: "GpuAugmenter",
                expected: "f32, bf16 or f16".into(),
                got: dtype,
            }
            .into());
        }
        Ok(GpuAugmenter {
            device,
            gpu: engine::gpu_launcher(device)?,
            cfg,
            dtype,
        })
    }

    /// The output settings.
    pub fn config(&self) -> &AugmentConfig {
        &self.cfg
    }

    /// Copies the pixels of `images` (any sizes, 1 or 3 channels each) to
    /// the GPU, back to back.
    pub fn upload(&self, images: &[&Image]) -> Result<GpuImages> {
        let mut layout = Vec::with_capacity(images.len());
        let mut bytes = 0usize;
        for (i, image) in images.iter().enumerate() {
            let (h, w, c) = (image.height, image.width, image.channels);
            if h == 0 || w == 0 || !(c == 1 || c == 3) || image.data.len() != h * w * c {
                return Err(shape_error(format!(
                    "image {i}: {} bytes for {h}×{w}×{c} (needs a non-empty image of 1 or 3 channels)",
                    image.data.len()
                )));
            }
            // Sides and crops are 32-bit ints in the kernels; offsets are 64-bit.
            if h.max(w) > i32::MAX as usize {
                return Err(shape_error(format!("image {i}: {h}×{w} is too large")));
            }
            layout.push([bytes, h, w, c]);
            bytes += image.data.len();
        }
        // Image by image: no host copy of the whole batch.
        let pixels = self.gpu.alloc(bytes).map_err(engine::Error::from)?;
        for (image, &[offset, ..]) in images.iter().zip(&layout) {
            self.gpu
                .write(&pixels, offset, &image.data)
                .map_err(engine::Error::from)?;
        }
        Ok(GpuImages {
            device: self.device,
            pixels,
            images: layout,
        })
    }

    /// One view of each image of `batch`, the one `params[i]` describes for
    /// image `i` (as [`super::apply_view`] would make it), as a `[n, size,
    /// size, channels]` tensor on the device.
    pub fn views(&self, batch: &GpuImages, params: &[ViewParams]) -> Result<Tensor> {
        let n = batch.len();
        if batch.device != self.device {
            return Err(engine::Error::Device {
                op: "GpuAugmenter::views (images uploaded to another device)",
                device: self.device,
            }
            .into());
        }
        if n == 0 || params.len() != n {
            return Err(shape_error(format!(
                "{} view parameters for {n} images (needs one per image, at least one)",
                params.len()
            )));
        }
        let tables = Tables::pack(&batch.images, params, self.cfg.size)?;
        Ok(self.launch(batch, &tables)?)
    }

    /// Uploads `tables` and runs the kernels over `batch`.
    fn launch(&self, batch: &GpuImages, tables: &Tables) -> engine::Result<Tensor> {
        let (n, size, c) = (batch.len(), self.cfg.size, self.cfg.channels);
        let table_buf = self.gpu.upload(&tables.bytes)?;
        let table = |offset: usize| Arg::Ptr(&table_buf, offset);

        let taps = self.gpu.alloc(n * 2 * size * 2 * 4)?;
        let tap_weights = self.gpu.alloc(n * 2 * size * tables.tap_stride * 4)?;
        self.gpu.launch(
            "augment_crop_taps",
            LaunchConfig::for_elements(n * 2 * size, BLOCK),
            &[
                table(tables.ints),
                Arg::ptr(&taps),
                Arg::ptr(&tap_weights),
                Arg::I32(n as i32),
                Arg::I32(size as i32),
                Arg::I32(tables.tap_stride as i32),
            ],
        )?;
        let pixels = n * size * size;
        let px = self.gpu.alloc(pixels * c * 4)?;
        self.gpu.launch(
            "augment_resized_crop",
            LaunchConfig::for_elements(pixels, BLOCK),
            &[
                Arg::ptr(&batch.pixels),
                table(tables.ints),
                Arg::ptr(&taps),
                Arg::ptr(&tap_weights),
                Arg::ptr(&px),
                Arg::I32(n as i32),
                Arg::I32(size as i32),
                Arg::I32(c as i32),
                Arg::I32(tables.tap_stride as i32),
            ],
        )?;
        self.gpu.launch(
            "augment_color_jitter",
            LaunchConfig::blocks(n as u32, BLOCK),
            &[
                Arg::ptr(&px),
                table(tables.ints),
                table(tables.factors),
                Arg::I32(size as i32),
                Arg::I32(c as i32),
            ],
        )?;
        // Only blurred images have a horizontal pass (and need the buffer).
        let tmp = if tables.any_blur {
            let tmp = self.gpu.alloc(pixels * c * 4)?;
            self.gpu.launch(
                "augment_blur_rows",
                LaunchConfig::for_elements(pixels * c, BLOCK),
                &[
                    Arg::ptr(&px),
                    Arg::ptr(&tmp),
                    table(tables.ints),
                    table(tables.blur_weights),
                    Arg::I32(n as i32),
                    Arg::I32(size as i32),
                    Arg::I32(c as i32),
                    Arg::I32(tables.blur_stride as i32),
                ],
            )?;
            Some(tmp)
        } else {
            None
        };
        let out = self.gpu.alloc(pixels * c * self.dtype.size_in_bytes())?;
        let kernel = match self.dtype {
            DType::BF16 => "augment_blur_columns_normalise_bf16",
            DType::F16 => "augment_blur_columns_normalise_f16",
            _ => "augment_blur_columns_normalise_f32",
        };
        // The CPU multiplies by 1/std, rounded to f32.
        let inv_std = self.cfg.std.map(|s| 1.0 / s);
        self.gpu.launch(
            kernel,
            LaunchConfig::for_elements(pixels, BLOCK),
            &[
                Arg::ptr(&px),
                Arg::ptr(tmp.as_ref().unwrap_or(&px)),
                Arg::ptr(&out),
                table(tables.ints),
                table(tables.blur_weights),
                Arg::I32(n as i32),
                Arg::I32(size as i32),
                Arg::I32(c as i32),
                Arg::I32(tables.blur_stride as i32),
                Arg::F32(self.cfg.mean[0]),
                Arg::F32(self.cfg.mean[1]),
                Arg::F32(self.cfg.mean[2]),
                Arg::F32(inv_std[0]),
                Arg::F32(inv_std[1]),
                Arg::F32(inv_std[2]),
            ],
        )?;
        Tensor::from_gpu_buffer(self.device, self.dtype, out, [n, size, size, c])
    }
}

/// The per-image tables of one batch, packed into one upload: byte offsets
/// of each table and their row strides.
struct Tables {
    bytes: Vec<u8>,
    /// `[n, INTS]` i32.
    ints: usize,
    /// `[n, FLOATS]` f32 jitter factors.
    factors: usize,
    /// Resampling weights per output row or column: the most any crop needs.
    tap_stride: usize,
    /// `[n, blur_stride]` f32 Gaussian weights (`2·radius + 1` used).
    blur_weights: usize,
    blur_stride: usize,
    any_blur: bool,
}

impl Tables {
    fn pack(images: &[[usize; 4]], params: &[ViewParams], size: usize) -> Result<Tables> {
        let n = images.len();
        let mut ints = vec![0i32; n * INTS];
        let mut factors = vec![0f32; n * FLOATS];
        let mut tap_stride = 1;
        let mut radii = Vec::with_capacity(n);
        for (i, (&[offset, h, w, c], p)) in images.iter().zip(params).enumerate() {
            check_crop(i, p, h, w)?;
            let radius = p.blur_sigma.map_or(0, |sigma| blur_radius(sigma, size));
            let row = &mut ints[i * INTS..(i + 1) * INTS];
            let offset = offset as u64;
            row[SRC_OFFSET_LO] = offset as u32 as i32;
            row[SRC_OFFSET_HI] = (offset >> 32) as u32 as i32;
            row[SRC_WIDTH] = w as i32;
            row[SRC_CHANNELS] = c as i32;
            row[CROP_TOP] = p.crop.top as i32;
            row[CROP_LEFT] = p.crop.left as i32;
            row[CROP_HEIGHT] = p.crop.height as i32;
            row[CROP_WIDTH] = p.crop.width as i32;
            row[BLUR_RADIUS] = radius as i32;
            row[GRAYSCALE] = p.grayscale as i32;
            row[FLIP] = p.flip as i32;
            row[SOLARIZE] = p.solarize as i32;
            if let Some(j) = &p.jitter {
                row[JITTER] = 1;
                row[JITTER_ORDER] = j
                    .order
                    .iter()
                    .enumerate()
                    .map(|(k, op)| (op_code(*op) << (2 * k)) as i32)
                    .sum();
                factors[i * FLOATS..(i + 1) * FLOATS].copy_from_slice(&[
                    j.brightness,
                    j.contrast,
                    j.saturation,
                    j.hue,
                ]);
            }
            for extent in [p.crop.height, p.crop.width] {
                tap_stride = tap_stride.max(super::tap_stride(extent as f64 / size as f64));
            }
            radii.push(radius);
        }

        let max_radius = radii.iter().copied().max().unwrap_or(0);
        let blur_stride = 2 * max_radius + 1;
        let mut blur_weights = vec![0f32; n * blur_stride];
        for (i, p) in params.iter().enumerate() {
            let r = radii[i];
            if let Some(sigma) = p.blur_sigma
                && r > 0
            {
                blur_weights[i * blur_stride..i * blur_stride + 2 * r + 1]
                    .copy_from_slice(&gaussian_kernel(sigma, r));
            }
        }

        let mut bytes = Vec::new();
        let mut push = |table: &[u8]| {
            let at = bytes.len();
            bytes.extend_from_slice(table);
            at
        };
        let ints = push(bytemuck::cast_slice(&ints));
        let factors = push(bytemuck::cast_slice(&factors));
        let blur_weights = push(bytemuck::cast_slice(&blur_weights));
        Ok(Tables {
            bytes,
            ints,
            factors,
            tap_stride,
            blur_weights,
            blur_stride,
            any_blur: max_radius > 0,
        })
    }
}

/// The kernel's code for a jitter op (`AUG_OP_*` in `augment.cu`).
fn op_code(op: JitterOp) -> usize {
    match op {
        JitterOp::Brightness => 0,
        JitterOp::Contrast => 1,
        JitterOp::Saturation => 2,
        JitterOp::Hue => 3,
    }
}

/// Fails unless image `i`'s crop is a non-empty rectangle inside its `h × w`.
fn check_crop(i: usize, p: &ViewParams, h: usize, w: usize) -> Result<()> {
    let crop = p.crop;
    if crop.height == 0
        || crop.width == 0
        || crop.top + crop.height > h
        || crop.left + crop.width > w
    {
        return Err(shape_error(format!(
            "image {i}: crop {}×{} at ({}, {}) is outside the {h}×{w} image",
            crop.height, crop.width, crop.top, crop.left
        )));
    }
    Ok(())
}

fn shape_error(detail: String) -> Error {
    engine::Error::Shape {
        op: "GpuAugmenter",
        detail,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::super::View;
    use super::*;
    use engine::Rng;

    #[test]
    fn bad_devices_dtypes_images_and_params_are_errors() {
        let cfg = AugmentConfig::new(8, 3).unwrap();
        assert!(GpuAugmenter::new(Device::Cpu, cfg.clone(), DType::F32).is_err());
        assert!(GpuAugmenter::new(Device::Emulator, cfg.clone(), DType::U8).is_err());
        let aug = GpuAugmenter::new(Device::Emulator, cfg.clone(), DType::F32).unwrap();

        let image = Image {
            data: vec![7; 4 * 5 * 3],
            height: 4,
            width: 5,
            channels: 3,
        };
        let truncated = Image {
            data: vec![7; 4 * 5 * 3 - 1],
            ..image.clone()
        };
        assert!(aug.upload(&[&truncated]).is_err());

        let batch = aug.upload(&[&image]).unwrap();
        let mut params = ViewParams::draw(
            (image.height, image.width),
            View::One,
            &cfg,
            &mut Rng::new(0),
        );
        assert!(aug.views(&batch, &[]).is_err());
        assert!(
            aug.views(&batch, &[params.clone(), params.clone()])
                .is_err()
        );
        params.crop.top = 4 - params.crop.height + 1;
        assert!(aug.views(&batch, &[params]).is_err());
    }

    /// Bytes of memory available to this process (Linux), if known.
    fn available_memory() -> Option<u64> {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }

    #[test]
    fn images_past_4_gib_of_offsets_render_like_the_cpu() {
        // Two images 4 GiB + 3 bytes apart: the second one's offset needs
        // the high half (and its low half alone is a small, wrong offset).
        let far = (1usize << 32) + 3;
        let cfg = AugmentConfig::new(8, 3).unwrap();
        let (first, second) = (test_image(12, 10, 1), test_image(9, 14, 2));
        let layout = vec![[0, 12, 10, 3], [far, 9, 14, 3]];
        let packed = Tables::pack(&layout, &[draw(&first, 0), draw(&second, 1)], 8).unwrap();
        let ints: &[i32] = bytemuck::cast_slice(&packed.bytes[..2 * INTS * 4]);
        assert_eq!(
            (ints[INTS + SRC_OFFSET_LO], ints[INTS + SRC_OFFSET_HI]),
            (3, 1)
        );

        // The emulator's memory is real: run only where 4 GiB fits twice over.
        if available_memory().is_none_or(|m| m < 9 << 30) {
            eprintln!("skipped: the 4 GiB emulator batch needs 9 GiB of free memory");
            return;
        }
        let aug = GpuAugmenter::new(Device::Emulator, cfg.clone(), DType::F32).unwrap();
        let pixels = aug.gpu.alloc(far + second.data.len()).unwrap();
        aug.gpu.write(&pixels, 0, &first.data).unwrap();
        aug.gpu.write(&pixels, far, &second.data).unwrap();
        let batch = GpuImages {
            device: Device::Emulator,
            pixels,
            images: layout,
        };
        let params = [draw(&first, 0), draw(&second, 1)];
        let got = aug.views(&batch, &params).unwrap().to_vec::<f32>().unwrap();
        for (k, (image, p)) in [&first, &second].into_iter().zip(&params).enumerate() {
            let mut want = vec![0f32; cfg.sample_len()];
            super::super::apply_view(image, p, &cfg, &mut want);
            let part = &got[k * cfg.sample_len()..(k + 1) * cfg.sample_len()];
            let worst = part
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "image {k}: {worst}");
        }
    }

    /// An `h × w` RGB image of varied pixels.
    fn test_image(h: usize, w: usize, seed: usize) -> Image {
        Image {
            data: (0..h * w * 3)
                .map(|i| ((i * 31 + seed * 97 + i / 5) % 256) as u8)
                .collect(),
            height: h,
            width: w,
            channels: 3,
        }
    }

    /// View one of `image`, drawn from `seed`.
    fn draw(image: &Image, seed: u64) -> ViewParams {
        let cfg = AugmentConfig::new(8, 3).unwrap();
        ViewParams::draw(
            (image.height, image.width),
            View::One,
            &cfg,
            &mut Rng::new(seed),
        )
    }
}
