//! CPU convolution: im2col (skipped for pointwise convs) then one GEMM per
//! chunk of images, all NHWC so the GEMM output is already the NHWC result.

use super::ConvGeometry;
#[cfg(target_arch = "x86_64")]
use super::direct;
use super::winograd;
use crate::ops::real::{Mat, Real, filled_by_blocks, matmul, matmul_into, uninit_filled};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Upper bound on im2col elements held at once (8 MiB of f32); larger batches
/// go in chunks, so the buffer stays small enough for the allocator to reuse.
const COL_BUDGET: usize = 1 << 21;

fn images_per_chunk(g: &ConvGeometry) -> usize {
    if g.is_pointwise() {
        // No im2col buffer: the input rows are the GEMM operand.
        return g.n.max(1);
    }
    (COL_BUDGET / (g.oh * g.ow * g.patch()).max(1)).clamp(1, g.n.max(1))
}

/// `n` images as `(first, count)` chunks of at most `most` images, as few as
/// that allows and even in size: a short last chunk would be a GEMM too
/// small to keep every thread busy.
fn chunks(n: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = n.div_ceil(most.max(1));
    (0..count).map(move |i| {
        let first = i * n / count;
        (first, (i + 1) * n / count - first)
    })
}

/// Fills `col` (rows = output pixels of `images`, cols = r·s·c) from `x`,
/// writing every element.
fn im2col<T: Real>(g: &ConvGeometry, x: &[T], first_image: usize, col: &mut [MaybeUninit<T>]) {
    let patch = g.patch();
    col.par_chunks_mut(patch)
        .enumerate()
        .for_each(|(row, dst)| {
            let n = first_image + row / (g.oh * g.ow);
            let (oh, ow) = ((row / g.ow) % g.oh, row % g.ow);
            for r in 0..g.r {
                let ih = (oh * g.stride + r) as isize - g.padding as isize;
                for s in 0..g.s {
                    let iw = (ow * g.stride + s) as isize - g.padding as isize;
                    let d = &mut dst[(r * g.s + s) * g.c..][..g.c];
                    if ih < 0 || iw < 0 || ih as usize >= g.h || iw as usize >= g.w {
                        d.fill(MaybeUninit::new(T::ZERO));
                    } else {
                        let src = ((n * g.h + ih as usize) * g.w + iw as usize) * g.c;
                        for (d, &v) in d.iter_mut().zip(&x[src..src + g.c]) {
                            d.write(v);
                        }
                    }
                }
            }
        });
}

/// The gradient of the images: the im2col-shaped gradient `col` summed back
/// onto the pixels it came from (every element of `dx_images` is written).
fn col2im<T: Real>(g: &ConvGeometry, col: &[T], dx_images: &mut [MaybeUninit<T>]) {
    let patch = g.patch();
    let per_image = g.oh * g.ow * patch;
    dx_images
        .par_chunks_mut(g.h * g.w * g.c)
        .zip(col.par_chunks(per_image))
        .for_each(|(dx, col)| {
            dx.fill(MaybeUninit::new(T::ZERO));
            // SAFETY: just filled, so every element is initialised.
            let dx = unsafe { &mut *(dx as *mut [MaybeUninit<T>] as *mut [T]) };
            for (pixel, src) in col.chunks(patch).enumerate() {
                let (oh, ow) = (pixel / g.ow, pixel % g.ow);
                for r in 0..g.r {
                    let ih = (oh * g.stride + r) as isize - g.padding as isize;
                    if ih < 0 || ih as usize >= g.h {
                        continue;
                    }
                    for s in 0..g.s {
                        let iw = (ow * g.stride + s) as isize - g.padding as isize;
                        if iw < 0 || iw as usize >= g.w {
                            continue;
                        }
                        let d = &mut dx[(ih as usize * g.w + iw as usize) * g.c..][..g.c];
                        let sv = &src[(r * g.s + s) * g.c..][..g.c];
                        d.iter_mut().zip(sv).for_each(|(a, &b)| *a += b);
                    }
                }
            }
        });
}

/// The GEMM operand of `images` images from `first` on: their receptive
/// fields as rows, built in `col` unless the input pixels already are them.
fn patches<'a, T: Real>(
    g: &ConvGeometry,
    x: &'a [T],
    first: usize,
    images: usize,
    col: &'a mut Vec<T>,
) -> &'a [T] {
    let rows = images * g.oh * g.ow;
    if g.is_pointwise() {
        &x[first * g.h * g.w * g.c..][..rows * g.c]
    } else {
        *col = uninit_filled(rows * g.patch(), std::mem::take(col), |c| {
            im2col(g, x, first, c)
        });
        col
    }
}

pub(super) fn forward<T: Real>(g: &ConvGeometry, x: &[T], w: &[T]) -> Vec<T> {
    let (patch, pixels) = (g.patch(), g.oh * g.ow);
    let mut col = Vec::new();
    // The weights as `patch × k` rows, which the GEMM reads in place: given
    // transposed, every thread's GEMM packed all of them again.
    let w_rows = transposed_weights(g, w);
    uninit_filled(g.n * pixels * g.k, Vec::new(), |y| {
        for (first, images) in chunks(g.n, images_per_chunk(g)) {
            let rows = images * pixels;
            let a = patches(g, x, first, images, &mut col);
            let out = &mut y[first * pixels * g.k..][..rows * g.k];
            matmul_into(
                (rows, g.k, patch),
                Mat::rows(a, patch),
                Mat::rows(&w_rows, g.k),
                out,
            );
        }
    })
}

/// `w` (`k × patch`) transposed to `patch × k`, 16 rows of the result at a
/// time (threaded over those blocks), so the reads of `w` run along its rows.
fn transposed_weights<T: Real>(g: &ConvGeometry, w: &[T]) -> Vec<T> {
    const BLOCK: usize = 16;
    let (patch, k) = (g.patch(), g.k);
    // Every element is written, so nothing is zeroed first.
    filled_by_blocks(w.len(), BLOCK * k, |block, rows| {
        let first = block * BLOCK;
        let width = rows.len() / k;
        for kk in 0..k {
            for (i, &v) in w[kk * patch + first..][..width].iter().enumerate() {
                rows[i * k + kk].write(v);
            }
        }
    })
}

/// Most input and output channels the direct kernels take: they stream a
/// whole block of weights per tile of pixels, which beats im2col + GEMM
/// while the weights are few, and loses to the GEMM's cache blocking beyond
/// (ResNet-18 at width 64 ran 0.79× as fast with them everywhere).
const DIRECT_MAX_CHANNELS: usize = 64;

/// The instruction set for the direct kernels: on x86-64 CPUs with AVX2 or
/// AVX-512, for convolutions with at most [`DIRECT_MAX_CHANNELS`] input and
/// output channels, but not pointwise ones (already a plain GEMM).
#[cfg(target_arch = "x86_64")]
fn direct_isa(g: &ConvGeometry) -> Option<direct::Isa> {
    let small = g.c <= DIRECT_MAX_CHANNELS && g.k <= DIRECT_MAX_CHANNELS;
    direct::detected().filter(|_| small && !g.is_pointwise())
}

/// The Winograd algorithm an f32 convolution runs as, where one pays:
/// measured on ResNet-18's shapes at batch 32, it pays with at least 64
/// input and output channels (at 64, 32×32 pixels, it beats the direct
/// kernels: P2 step 1.03×) and at least as many 2×2 tiles as output
/// channels (8×8 pixels at 256 channels: forward 9.0 → 6.3 ms; 16×16 at
/// 128: 8.8 → 8.3 ms). With fewer channels the GEMMs' inner dimension is
/// too short, and with fewer tiles (4×4 pixels at 512 channels) the
/// transformed weights, 16/9 of the weights, cost more than the multiplies
/// saved. F(4×4, 3×3) takes images of 16 pixels and more a side (at 16 and
/// 32 px, backward 1.2–1.4× as fast as F(2×2, 3×3)); on 8 px images its
/// transformed weights, 4× the weights, are read for too few tiles (0.6×).
fn winograd_variant(g: &ConvGeometry) -> Option<winograd::Variant> {
    let tiles = g.n * g.oh.div_ceil(2) * g.ow.div_ceil(2);
    let pays = winograd::covers(g) && g.c.min(g.k) >= 64 && tiles >= g.k;
    let large = g.oh.min(g.ow) >= 16;
    pays.then_some(if large {
        winograd::Variant::F4
    } else {
        winograd::Variant::F2
    })
}

/// The f32 forward: Winograd where it pays, else the direct kernels where
/// they cover the shape on this CPU, else im2col and GEMM.
pub(super) fn forward_f32(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    if let Some(variant) = winograd_variant(g) {
        return winograd::forward(variant, g, x, w);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(y) = direct_isa(g).and_then(|isa| direct::forward(isa, g, x, w)) {
        return y;
    }
    forward(g, x, w)
}

/// The f32 backward: both gradients by Winograd where it pays (the data
/// gradient of a stride-1 convolution is the forward of the transposed
/// one), else each from the direct kernels where they cover it, the rest by
/// im2col and GEMM.
pub(super) fn backward_f32(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (want_dx, want_dw): (bool, bool),
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    if let Some(variant) = winograd_variant(g) {
        // The transposed convolution of a 3×3 one with padding 1 is another.
        let t = transposed(g).expect("stride 1, square kernel, padding below it");
        let dx = want_dx.then(|| winograd::forward(variant, &t, dy, &flipped(g, w)));
        let dw = want_dw.then(|| winograd::backward_filter(variant, g, x, dy));
        return (dx, dw);
    }
    #[allow(unused_mut)]
    let (mut dx, mut dw) = (None, None);
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = direct_isa(g) {
        if want_dw {
            dw = direct::backward_filter(isa, g, x, dy);
        }
        if let Some(t) = transposed(g).filter(|_| want_dx) {
            dx = direct::forward(isa, &t, dy, &flipped(g, w));
        }
    }
    let (rest_dx, rest_dw) = backward(
        g,
        x,
        w,
        dy,
        (want_dx && dx.is_none(), want_dw && dw.is_none()),
    );
    (dx.or(rest_dx), dw.or(rest_dw))
}

/// For a stride-1 convolution with a square kernel and padding below its
/// size, the convolution whose forward is its backward-data: `dy` as input
/// (`k` channels, `oh × ow`), the weights flipped in space with input and
/// output channels swapped (see [`flipped`]), padding `r − 1 − padding`, so
/// the output is `h × w × c`.
pub(super) fn transposed(g: &ConvGeometry) -> Option<ConvGeometry> {
    let square = g.r == g.s && g.padding < g.r;
    (g.stride == 1 && square).then_some(ConvGeometry {
        h: g.oh,
        w: g.ow,
        c: g.k,
        k: g.c,
        oh: g.h,
        ow: g.w,
        padding: g.r - 1 - g.padding,
        ..*g
    })
}

/// [`transposed`], where its im2col route beats the usual one: the usual
/// route's GEMM into the `r·s·c`-wide column buffer has inner dimension `k`,
/// which at 64 or less leaves it bound by writing that buffer (and col2im by
/// reading it back), while this GEMM's inner dimension is the whole `r·s·k`
/// patch. With few input channels (the stem) this GEMM would be too narrow
/// instead.
fn as_transposed(g: &ConvGeometry) -> Option<ConvGeometry> {
    let pays = g.k <= 64 && g.c >= 32;
    transposed(g).filter(|_| !g.is_pointwise() && pays)
}

/// `w` (k × r × s × c) flipped in space, channels swapped: (c × r × s × k).
/// Built 16 input channels at a time, so each read is one cache line and the
/// writes run along 16 rows, and threaded over those blocks.
pub(super) fn flipped<T: Real>(g: &ConvGeometry, w: &[T]) -> Vec<T> {
    const BLOCK: usize = 16;
    let taps = g.r * g.s;
    // Every element is written, so nothing is zeroed first.
    filled_by_blocks(w.len(), BLOCK * taps * g.k, |block, rows| {
        let c0 = block * BLOCK;
        let width = rows.len() / (taps * g.k);
        for k in 0..g.k {
            for tap in 0..taps {
                let src = &w[(k * taps + tap) * g.c + c0..][..width];
                let flipped_tap = taps - 1 - tap;
                for (i, &v) in src.iter().enumerate() {
                    rows[(i * taps + flipped_tap) * g.k + k].write(v);
                }
            }
        }
    })
}

pub(super) fn backward<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    dy: &[T],
    (want_dx, want_dw): (bool, bool),
) -> (Option<Vec<T>>, Option<Vec<T>>) {
    let (patch, pixels) = (g.patch(), g.oh * g.ow);
    // The first chunk's GEMM writes dw whole, the others add to it.
    let mut dw = want_dw.then(|| Vec::with_capacity(g.k * patch));
    // Every route below writes each chunk of dx whole.
    let mut dx = want_dx.then(|| Vec::with_capacity(x.len()));
    let transposed = as_transposed(g).filter(|_| want_dx);
    let flipped_w = transposed.as_ref().map(|_| flipped(g, w));
    let chunk = transposed.as_ref().map_or(images_per_chunk(g), |t| {
        images_per_chunk(t).min(images_per_chunk(g))
    });
    let (mut col, mut dcol) = (Vec::new(), Vec::new());
    for (first, images) in chunks(g.n, chunk) {
        let rows = images * pixels;
        let dy_chunk = &dy[first * pixels * g.k..][..rows * g.k];
        if let Some(dw) = dw.as_mut() {
            let a = patches(g, x, first, images, &mut col);
            // dw (k × patch) += dyᵀ (k × rows) · col (rows × patch)
            let (dims, dy_t, a) = (
                (g.k, patch, rows),
                Mat::transposed(dy_chunk, g.k),
                Mat::rows(a, patch),
            );
            if first == 0 {
                matmul_into(dims, dy_t, a, &mut dw.spare_capacity_mut()[..g.k * patch]);
                // SAFETY: the GEMM wrote all `k × patch` elements.
                unsafe { dw.set_len(g.k * patch) };
            } else {
                matmul(dims, dy_t, a, dw, true);
            }
        }
        if let Some(dx) = dx.as_mut() {
            let image_len = g.h * g.w * g.c;
            let dx_chunk = &mut dx.spare_capacity_mut()[first * image_len..][..images * image_len];
            let dy_mat = Mat::rows(dy_chunk, g.k);
            if let (Some(t), Some(wf)) = (&transposed, &flipped_w) {
                // dx (h·w rows × c) = patches of dy (× r·s·k) · flipped wᵀ
                let a = patches(t, dy, first, images, &mut dcol);
                matmul_into(
                    (images * g.h * g.w, g.c, t.patch()),
                    Mat::rows(a, t.patch()),
                    Mat::transposed(wf, t.patch()),
                    dx_chunk,
                );
            } else if g.is_pointwise() {
                matmul_into((rows, patch, g.k), dy_mat, Mat::rows(w, patch), dx_chunk);
            } else {
                // dcol (rows × patch) = dy (rows × k) · w (k × patch), then scatter.
                dcol = uninit_filled(rows * patch, std::mem::take(&mut dcol), |dcol| {
                    matmul_into((rows, patch, g.k), dy_mat, Mat::rows(w, patch), dcol)
                });
                col2im(g, &dcol, dx_chunk);
            }
        }
    }
    if let Some(dx) = dx.as_mut() {
        // SAFETY: the chunks above wrote every element.
        unsafe { dx.set_len(x.len()) };
    }
    if let Some(dw) = dw.as_mut() {
        // An empty batch: no chunk, a zero gradient.
        dw.resize(g.k * patch, T::ZERO);
    }
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Case, assert_close, case};
    use super::*;

    /// The f32 routes as the op picks them, against the f64 im2col
    /// reference: Winograd from 64 channels (and enough tiles; F(4×4, 3×3)
    /// from 16 px, F(2×2, 3×3) below), the direct
    /// kernels below, im2col + GEMM for strided and 4×4-pixel 3×3s (the
    /// weights transposed for the GEMM), and a pointwise conv.
    #[test]
    fn f32_routes_match_the_f64_reference() {
        // (n, hw, c, k, kernel, stride, padding), and the Winograd algorithm taking it
        for ((n, hw, c, k, rs, stride, padding), by_winograd) in [
            ((1, 16, 64, 64, 3, 1, 1), Some(winograd::Variant::F4)),
            ((4, 8, 64, 64, 3, 1, 1), Some(winograd::Variant::F2)),
            ((1, 8, 32, 48, 3, 1, 1), None),
            ((2, 8, 64, 128, 3, 2, 1), None),
            ((2, 4, 128, 256, 3, 1, 1), None),
            ((2, 6, 48, 80, 1, 1, 0), None),
        ] {
            let Case {
                g,
                x,
                w,
                dy,
                y: want_y,
                dx: want_dx,
                dw: want_dw,
            } = case((n, hw, hw, c, k), (rs, stride, padding));
            assert_eq!(winograd_variant(&g), by_winograd, "{g:?}");
            assert_close(&forward_f32(&g, &x, &w), &want_y, &format!("forward {g:?}"));
            let (dx, dw) = backward_f32(&g, &x, &w, &dy, (true, true));
            assert_close(&dx.unwrap(), &want_dx, &format!("dx {g:?}"));
            assert_close(&dw.unwrap(), &want_dw, &format!("dw {g:?}"));
        }
    }

    #[test]
    fn chunks_cover_the_batch_evenly() {
        for (n, most) in [
            (32, 28),
            (32, 7),
            (32, 32),
            (5, 1),
            (1, 4),
            (0, 3),
            (37, 10),
        ] {
            let got: Vec<_> = chunks(n, most).collect();
            assert_eq!(got.len(), n.div_ceil(most), "{n} in chunks of {most}");
            let mut next = 0;
            for &(first, count) in &got {
                assert_eq!(first, next, "{n}, {most}: chunks are contiguous");
                assert!(count >= 1 && count <= most, "{n}, {most}: {got:?}");
                next += count;
            }
            assert_eq!(next, n, "{n}, {most}: every image once");
            let sizes = got.iter().map(|c| c.1);
            let (lo, hi) = (sizes.clone().min(), sizes.max());
            assert!(
                hi.zip(lo).is_none_or(|(h, l)| h - l <= 1),
                "{n}, {most}: {got:?}"
            );
        }
    }
}
