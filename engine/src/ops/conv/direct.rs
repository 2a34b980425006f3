//! Direct f32 convolutions on x86-64 with AVX-512 or AVX2 + FMA (detected at
//! run time): no im2col buffer, and one parallel region per op, over images
//! (forward) or over output tiles of the weight gradient.
//!
//! Each image is first copied into a padded, channel-blocked layout in which
//! every tap of the kernel sees the output pixels at one fixed stride: the
//! input is split into `stride²` phase planes (rows and columns by their
//! remainder modulo the stride) of `lh × lw` pixels, each pixel holding a
//! block of `cb` channels. Output pixel `q = oh·lw + ow` then reads, for tap
//! `(r, s)`, pixel `q + (r/stride)·lw + s/stride` of plane
//! `(r mod stride, s mod stride)`, so a tile of consecutive `q`s is a run of
//! consecutive blocks. Columns `ow ≥ OW` of that grid are computed and thrown
//! away (a few percent of the work).
//!
//! The register tile holds `P` output pixels × `KB` vectors of output
//! channels; each step broadcasts one input value and multiplies it into the
//! weight vectors. Every output sums its taps and channels in one fixed
//! order, and the weight gradient sums images in fixed groups that depend on
//! the shape alone, so results never depend on the number of threads.

use super::ConvGeometry;
pub(crate) use crate::ops::simd::{Isa, detected};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// One vector register type.
trait Simd {
    const LANES: usize;
    type R: Copy;
    unsafe fn zero() -> Self::R;
    unsafe fn load(p: *const f32) -> Self::R;
    unsafe fn splat(p: *const f32) -> Self::R;
    /// `a·b + c`.
    unsafe fn fma(a: Self::R, b: Self::R, c: Self::R) -> Self::R;
    unsafe fn store(p: *mut f32, v: Self::R);
}

struct Zmm;
struct Ymm;

impl Simd for Zmm {
    const LANES: usize = 16;
    type R = __m512;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m512 {
        unsafe { _mm512_set1_ps(*p) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        unsafe { _mm512_storeu_ps(p, v) }
    }
}

impl Simd for Ymm {
    const LANES: usize = 8;
    type R = __m256;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m256 {
        unsafe { _mm256_broadcast_ss(&*p) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
}

/// The most output pixels a forward tile holds; the planes keep this much
/// slack so the last tile's extra reads stay inside them.
const MAX_TILE: usize = 24;

/// The padded, channel-blocked, phase-split layout of one image.
struct Layout {
    st: usize,
    /// Channels per block (the kernels' unrolled inner loop).
    cb: usize,
    blocks: usize,
    lh: usize,
    lw: usize,
    /// Floats per phase plane.
    plane_len: usize,
    /// Floats per channel block (all its planes).
    block_len: usize,
    /// Floats per image.
    image_len: usize,
    /// Per tap `(r, s)`, the offset of its first read inside a block.
    taps: Vec<usize>,
}

impl Layout {
    fn new(g: &ConvGeometry, cb: usize) -> Layout {
        let st = g.stride;
        let (lh, lw) = (g.oh + (g.r - 1) / st, g.ow + (g.s - 1) / st);
        let plane_len = (lh * lw + lw + MAX_TILE) * cb;
        let block_len = st * st * plane_len;
        let taps = (0..g.r * g.s)
            .map(|t| {
                let (r, s) = (t / g.s, t % g.s);
                let plane = (r % st) * st + s % st;
                plane * plane_len + ((r / st) * lw + s / st) * cb
            })
            .collect();
        let blocks = g.c.div_ceil(cb);
        Layout {
            st,
            cb,
            blocks,
            lh,
            lw,
            plane_len,
            block_len,
            image_len: blocks * block_len,
            taps,
        }
    }

    /// Copies image `src` (`h × w × c`) into `dst` (`image_len` floats).
    fn pack(&self, g: &ConvGeometry, src: &[f32], dst: &mut [f32]) {
        if self.st == 1 && self.cb == g.c {
            return self.pack_rows(g, src, dst);
        }
        dst.fill(0.0);
        let (st, cb) = (self.st, self.cb);
        for ih in 0..g.h {
            let ph = ih + g.padding;
            let i = ph / st;
            if i >= self.lh {
                continue; // Rows no output reads.
            }
            for iw in 0..g.w {
                let pw = iw + g.padding;
                let j = pw / st;
                if j >= self.lw {
                    continue;
                }
                let at = ((ph % st) * st + pw % st) * self.plane_len + (i * self.lw + j) * cb;
                let pixel = &src[(ih * g.w + iw) * g.c..][..g.c];
                for (b, chunk) in pixel.chunks(cb).enumerate() {
                    let to = &mut dst[b * self.block_len + at..][..chunk.len()];
                    // Eight channels by value: a call to memcpy costs more.
                    match (
                        <&mut [f32; 8]>::try_from(&mut *to),
                        <&[f32; 8]>::try_from(chunk),
                    ) {
                        (Ok(to), Ok(from)) => *to = *from,
                        _ => to.copy_from_slice(chunk),
                    }
                }
            }
        }
    }

    /// [`Self::pack`] for stride 1 and one block of all the channels: the
    /// zero-padded image, row by row, each element written once.
    fn pack_rows(&self, g: &ConvGeometry, src: &[f32], dst: &mut [f32]) {
        let (c, pad) = (g.c, g.padding);
        let row_len = self.lw * c;
        let (rows, slack) = dst.split_at_mut(self.lh * row_len);
        for (i, row) in rows.chunks_exact_mut(row_len).enumerate() {
            let Some(ih) = i.checked_sub(pad).filter(|&ih| ih < g.h) else {
                row.fill(0.0);
                continue;
            };
            let cols = g.w.min(self.lw - pad);
            let (left, rest) = row.split_at_mut(pad * c);
            let (data, right) = rest.split_at_mut(cols * c);
            left.fill(0.0);
            data.copy_from_slice(&src[ih * g.w * c..][..cols * c]);
            right.fill(0.0);
        }
        slack.fill(0.0);
    }
}

/// Register tile shapes: vector width, output-channel vectors, pixels.
#[derive(Clone, Copy, Debug)]
struct Tile {
    lanes: usize,
    kb: usize,
    p: usize,
}

impl Tile {
    fn width(self) -> usize {
        self.lanes * self.kb
    }
}

/// The forward tile for `k` output channels, if the kernels cover it.
fn forward_tile(isa: Isa, k: usize) -> Option<Tile> {
    let t = |lanes, kb, p| Some(Tile { lanes, kb, p });
    match isa {
        Isa::Avx512 if k.is_multiple_of(64) => t(16, 4, 6),
        Isa::Avx512 if k.is_multiple_of(32) => t(16, 2, 12),
        Isa::Avx512 if k.is_multiple_of(16) => t(16, 1, MAX_TILE),
        Isa::Avx512 if k.is_multiple_of(8) => t(8, 1, MAX_TILE),
        Isa::Avx2 if k.is_multiple_of(32) => t(8, 4, 3),
        Isa::Avx2 if k.is_multiple_of(16) => t(8, 2, 6),
        Isa::Avx2 if k.is_multiple_of(8) => t(8, 1, 12),
        _ => None,
    }
}

/// The weight-gradient tile (`cb × kb` accumulators) for `k` output channels.
fn filter_tile(isa: Isa, k: usize) -> Option<Tile> {
    let t = |lanes, kb| Some(Tile { lanes, kb, p: 1 });
    match isa {
        Isa::Avx512 if k.is_multiple_of(32) => t(16, 2),
        Isa::Avx512 if k.is_multiple_of(16) => t(16, 1),
        _ if k.is_multiple_of(8) => t(8, 1),
        _ => None,
    }
}

/// Channels per block for `c` input channels (fewer than 4 are padded with zeros).
fn channel_block(c: usize) -> Option<usize> {
    match c {
        1 => Some(1),
        2..=4 => Some(4),
        _ if c.is_multiple_of(8) => Some(8),
        _ => None,
    }
}

thread_local! {
    /// Each thread's packed images, reused across calls.
    static PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The packed batch of a weight gradient, reused across calls.
    static FILTER_PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Images per forward task: enough that a block of weights is reused across
/// several images while their packed copies stay in the L2 cache.
fn images_per_task(layout: &Layout, n: usize) -> usize {
    const PACKED_BYTES: usize = 256 << 10;
    (PACKED_BYTES / (layout.image_len * 4))
        .clamp(1, 8)
        .min(n.max(1))
}

/// True for a shape with something to compute (the kernels' chunking
/// assumes it).
fn nonempty(g: &ConvGeometry) -> bool {
    g.n > 0 && g.c > 0 && g.k > 0
}

/// `y = conv(x, w)`, or `None` when the kernels do not cover the shape.
pub(super) fn forward(isa: Isa, g: &ConvGeometry, x: &[f32], w: &[f32]) -> Option<Vec<f32>> {
    if !nonempty(g) {
        return None;
    }
    let tile = forward_tile(isa, g.k)?;
    let layout = Layout::new(g, channel_block(g.c)?);
    let wp = pack_weights(g, &layout, tile.width(), w);
    let out_image = g.oh * g.ow * g.k;
    let mut y: Vec<f32> = Vec::with_capacity(g.n * out_image);
    let per_task = images_per_task(&layout, g.n);
    let in_image = g.h * g.w * g.c;
    y.spare_capacity_mut()[..g.n * out_image]
        .par_chunks_mut(per_task * out_image)
        .zip(x.par_chunks(per_task * in_image))
        .for_each(|(y, x)| {
            PACKED.with_borrow_mut(|buf| {
                let images = y.len() / out_image;
                buf.resize(images * layout.image_len, 0.0);
                for (src, dst) in x.chunks(in_image).zip(buf.chunks_mut(layout.image_len)) {
                    layout.pack(g, src, dst);
                }
                // SAFETY: `buf` holds `images` packed images with the slack
                // the tiles read into, `wp` the packed weights, and `y` room
                // for `images` outputs; the ISA was detected on this CPU.
                unsafe { forward_images(isa, tile, g, &layout, buf, &wp, y) }
            })
        });
    // SAFETY: the tasks wrote every output pixel of every image.
    unsafe { y.set_len(g.n * out_image) };
    Some(y)
}

/// `w` (KRSC) as `[k / width][tap][block][channel in block][width]`, zero
/// for the channels that pad the last block.
fn pack_weights(g: &ConvGeometry, layout: &Layout, width: usize, w: &[f32]) -> Vec<f32> {
    let (taps, cb) = (g.r * g.s, layout.cb);
    let mut out = vec![0.0; g.k / width * layout.blocks * taps * cb * width];
    for k in 0..g.k {
        for t in 0..taps {
            for c in 0..g.c {
                let (b, ci) = (c / cb, c % cb);
                let row = ((k / width * taps + t) * layout.blocks + b) * cb + ci;
                out[row * width + k % width] = w[(k * taps + t) * g.c + c];
            }
        }
    }
    out
}

/// Expands to a `match` on the tile and channel block that calls `$f` with
/// the matching vector type and constants.
macro_rules! dispatch {
    ($tile:expr, $cb:expr, $f:ident $args:tt, [$(($simd:ty, $kb:literal, $p:literal)),*]) => {
        match ($tile.lanes, $tile.kb, $tile.p, $cb) {
            $(
                (l, $kb, $p, 1) if l == <$simd>::LANES => $f::<$simd, $kb, $p, 1> $args,
                (l, $kb, $p, 4) if l == <$simd>::LANES => $f::<$simd, $kb, $p, 4> $args,
                (l, $kb, $p, 8) if l == <$simd>::LANES => $f::<$simd, $kb, $p, 8> $args,
            )*
            other => unreachable!("no kernel for tile and block {other:?}"),
        }
    };
}

/// Each entry point below runs its kernel for the tile and channel block,
/// compiled with the features of the instruction set it is given (which
/// must be available on this CPU); each set's build covers its own tiles.
macro_rules! entry_point {
    ($(#[$doc:meta])* fn $name:ident => $kernel:ident($($arg:ident: $ty:ty),*),
     block: $layout:ident, avx512: $avx512:tt, avx2: $avx2:tt) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(isa: Isa, tile: Tile, $($arg: $ty),*) {
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            unsafe fn avx512(tile: Tile, $($arg: $ty),*) {
                unsafe { dispatch!(tile, $layout.cb, $kernel($($arg),*), $avx512) }
            }
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(tile: Tile, $($arg: $ty),*) {
                unsafe { dispatch!(tile, $layout.cb, $kernel($($arg),*), $avx2) }
            }
            unsafe {
                match isa {
                    Isa::Avx512 => avx512(tile, $($arg),*),
                    Isa::Avx2 => avx2(tile, $($arg),*),
                }
            }
        }
    };
}

entry_point!(
    /// # Safety
    /// As [`forward_images_with`].
    fn forward_images => forward_images_with(
        g: &ConvGeometry,
        layout: &Layout,
        packed: &[f32],
        wp: &[f32],
        y: &mut [MaybeUninit<f32>]
    ),
    block: layout,
    avx512: [(Zmm, 4, 6), (Zmm, 2, 12), (Zmm, 1, 24), (Ymm, 1, 24)],
    avx2: [(Ymm, 4, 3), (Ymm, 2, 6), (Ymm, 1, 12)]
);

/// The forward of the images packed in `packed` into `y`, a block of output
/// channels at a time so its weights stay in cache across the images.
///
/// # Safety
/// `packed` holds whole images of `layout` (with its slack), `wp` the
/// weights packed for a `KB × S::LANES`-wide tile, `y` their outputs; the
/// vector type's instructions must be available.
#[inline(always)]
unsafe fn forward_images_with<S: Simd, const KB: usize, const P: usize, const CB: usize>(
    g: &ConvGeometry,
    layout: &Layout,
    packed: &[f32],
    wp: &[f32],
    y: &mut [MaybeUninit<f32>],
) {
    let width = KB * S::LANES;
    let out_image = g.oh * g.ow * g.k;
    let grid = g.oh * layout.lw;
    let block_weights = layout.blocks * layout.taps.len() * CB * width;
    for kblock in 0..g.k / width {
        let w = wp[kblock * block_weights..].as_ptr();
        for (image, x) in packed.chunks(layout.image_len).enumerate() {
            let y = y[image * out_image + kblock * width..].as_mut_ptr() as *mut f32;
            for q0 in (0..grid).step_by(P) {
                // SAFETY: reads stay within the image's planes (their slack
                // covers the last tile); stores go to valid output pixels.
                unsafe {
                    let acc = forward_tile_with::<S, KB, P, CB>(x.as_ptr().add(q0 * CB), layout, w);
                    for (p, acc) in acc.iter().enumerate() {
                        let (oh, ow) = ((q0 + p) / layout.lw, (q0 + p) % layout.lw);
                        if oh < g.oh && ow < g.ow {
                            let out = y.add((oh * g.ow + ow) * g.k);
                            for (kb, &v) in acc.iter().enumerate() {
                                S::store(out.add(kb * S::LANES), v);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `P` consecutive output pixels × `KB` vectors of output channels: the sum
/// over taps, then channels, in im2col's patch order (`r`, `s`, `c`).
#[inline(always)]
unsafe fn forward_tile_with<S: Simd, const KB: usize, const P: usize, const CB: usize>(
    x: *const f32,
    layout: &Layout,
    mut w: *const f32,
) -> [[S::R; KB]; P] {
    unsafe {
        let mut acc = [[S::zero(); KB]; P];
        for &tap in &layout.taps {
            for b in 0..layout.blocks {
                let xt = x.add(b * layout.block_len + tap);
                for ci in 0..CB {
                    let mut wv = [S::zero(); KB];
                    for (kb, wv) in wv.iter_mut().enumerate() {
                        *wv = S::load(w.add(kb * S::LANES));
                    }
                    for (p, acc) in acc.iter_mut().enumerate() {
                        let xv = S::splat(xt.add(p * CB + ci));
                        for (a, &wv) in acc.iter_mut().zip(&wv) {
                            *a = S::fma(xv, wv, *a);
                        }
                    }
                    w = w.add(KB * S::LANES);
                }
            }
        }
        acc
    }
}

/// Images per weight-gradient group: at least 32 tiles in all, the split
/// fixed by the shape alone so the sums' order never changes.
fn filter_groups(n: usize, tiles: usize) -> usize {
    32usize.div_ceil(tiles).clamp(1, n.max(1))
}

/// `dw = Σ dyᵀ · patches(x)` (KRSC), or `None` when the kernels do not cover
/// the shape.
pub(super) fn backward_filter(
    isa: Isa,
    g: &ConvGeometry,
    x: &[f32],
    dy: &[f32],
) -> Option<Vec<f32>> {
    if !nonempty(g) {
        return None;
    }
    let tile = filter_tile(isa, g.k)?;
    let layout = Layout::new(g, channel_block(g.c)?);
    let in_image = g.h * g.w * g.c;
    // Taken out while in use, so a nested call would allocate its own.
    let mut packed = FILTER_PACKED.take();
    packed.resize(g.n * layout.image_len, 0.0);
    packed
        .par_chunks_mut(layout.image_len)
        .zip(x.par_chunks(in_image))
        .for_each(|(dst, src)| layout.pack(g, src, dst));
    let dw = filter_from_packed(isa, tile, g, &layout, &packed, dy);
    FILTER_PACKED.set(packed);
    Some(dw)
}

/// [`backward_filter`] of the images packed in `packed`.
fn filter_from_packed(
    isa: Isa,
    tile: Tile,
    g: &ConvGeometry,
    layout: &Layout,
    packed: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    let taps = g.r * g.s;
    // One task per (group, output-channel block, channel block): all the
    // taps of that block, so its slices of `x` and `dy` stay in cache.
    let blocks = g.k / tile.width() * layout.blocks;
    let groups = filter_groups(g.n, blocks * taps);
    let per_group = g.n.div_ceil(groups);
    let tile_len = layout.cb * tile.width();
    let sums: Vec<Vec<f64>> = (0..groups * blocks)
        .into_par_iter()
        .map(|task| {
            let (group, block) = (task / blocks, task % blocks);
            let first = (group * per_group).min(g.n);
            let images = per_group.min(g.n - first);
            let mut out = vec![0.0; taps * tile_len];
            // SAFETY: the packed images and `dy` cover `first..first + images`;
            // the ISA was detected on this CPU.
            unsafe {
                filter_sums(
                    isa,
                    tile,
                    g,
                    layout,
                    packed,
                    dy,
                    (first, images),
                    block,
                    &mut out,
                )
            };
            out
        })
        .collect();
    let mut dw = vec![0.0f64; g.k * taps * g.c];
    for (task, sums) in sums.iter().enumerate() {
        let (kblock, b) = (task % blocks / layout.blocks, task % layout.blocks);
        for (tap, sums) in sums.chunks(tile_len).enumerate() {
            for ci in 0..layout.cb.min(g.c - b * layout.cb) {
                for lane in 0..tile.width() {
                    let k = kblock * tile.width() + lane;
                    dw[(k * taps + tap) * g.c + b * layout.cb + ci] +=
                        sums[ci * tile.width() + lane];
                }
            }
        }
    }
    dw.into_iter().map(|v| v as f32).collect()
}

entry_point!(
    /// # Safety
    /// As [`filter_sums_with`].
    fn filter_sums => filter_sums_with(
        g: &ConvGeometry,
        layout: &Layout,
        packed: &[f32],
        dy: &[f32],
        images: (usize, usize),
        block: usize,
        out: &mut [f64]
    ),
    block: layout,
    avx512: [(Zmm, 2, 1), (Zmm, 1, 1), (Ymm, 1, 1)],
    avx2: [(Ymm, 1, 1)]
);

/// The weight-gradient tiles of `block` (output-channel block, channel
/// block), one per tap, each summed over `images` in order, pixel by pixel:
/// `out[tap][ci][k] = Σ x[ci]·dy[k]`. The registers sum runs of at least
/// [`FLUSH_PIXELS`] pixels in f32, which are added up in f64 (one long f32
/// sum would lose digits a GEMM keeps); every tap goes through one run
/// before the next run starts, so the run's images are read from cache.
///
/// # Safety
/// `packed` holds the packed images, `dy` their output gradients; the vector
/// type's instructions must be available.
#[inline(always)]
unsafe fn filter_sums_with<S: Simd, const KB: usize, const P: usize, const CB: usize>(
    g: &ConvGeometry,
    layout: &Layout,
    packed: &[f32],
    dy: &[f32],
    (first, images): (usize, usize),
    block: usize,
    out: &mut [f64],
) {
    let width = KB * S::LANES;
    let (kblock, b) = (block / layout.blocks, block % layout.blocks);
    let out_image = g.oh * g.ow * g.k;
    let run = FLUSH_PIXELS.div_ceil(g.oh * g.ow);
    for run_first in (first..first + images).step_by(run) {
        let run_images = run_first..(run_first + run).min(first + images);
        for (&tap, out) in layout.taps.iter().zip(out.chunks_mut(CB * width)) {
            unsafe {
                let mut acc = [[S::zero(); KB]; CB];
                for image in run_images.clone() {
                    let x = packed
                        .as_ptr()
                        .add(image * layout.image_len + b * layout.block_len + tap);
                    let d = dy.as_ptr().add(image * out_image + kblock * width);
                    for oh in 0..g.oh {
                        let (xr, dr) = (x.add(oh * layout.lw * CB), d.add(oh * g.ow * g.k));
                        for ow in 0..g.ow {
                            let mut dv = [S::zero(); KB];
                            for (kb, dv) in dv.iter_mut().enumerate() {
                                *dv = S::load(dr.add(ow * g.k + kb * S::LANES));
                            }
                            for (ci, acc) in acc.iter_mut().enumerate() {
                                let xv = S::splat(xr.add(ow * CB + ci));
                                for (a, &dv) in acc.iter_mut().zip(&dv) {
                                    *a = S::fma(xv, dv, *a);
                                }
                            }
                        }
                    }
                }
                flush::<S, KB, CB>(&mut acc, out);
            }
        }
    }
}

/// Pixels a weight-gradient tile sums in registers before adding into f64.
const FLUSH_PIXELS: usize = 256;

/// Adds the register tile into `out` (f64, `[ci][k]`) and clears it.
#[inline(always)]
unsafe fn flush<S: Simd, const KB: usize, const CB: usize>(
    acc: &mut [[S::R; KB]; CB],
    out: &mut [f64],
) {
    let mut lanes = [0.0f32; 16];
    for (ci, acc) in acc.iter_mut().enumerate() {
        for (kb, v) in acc.iter_mut().enumerate() {
            // SAFETY: `lanes` holds a vector of up to 16 floats.
            unsafe { S::store(lanes.as_mut_ptr(), *v) };
            let row = &mut out[(ci * KB + kb) * S::LANES..][..S::LANES];
            row.iter_mut().zip(lanes).for_each(|(o, l)| *o += l as f64);
            *v = unsafe { S::zero() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Case, assert_close, case, values};
    use super::super::{Conv2dParams, cpu};
    use super::*;
    use crate::Tensor;

    /// `(n, h, w, c, k, kernel, stride, padding)`.
    type Shape = (usize, usize, usize, usize, usize, usize, usize, usize);

    /// Every tile and channel block, both strides, a non-square input, the
    /// ImageNet stem.
    const SHAPES: [Shape; 9] = [
        (2, 9, 9, 1, 8, 3, 1, 1),
        (2, 8, 8, 8, 8, 3, 1, 1),
        (3, 7, 7, 16, 32, 3, 2, 1),
        (2, 5, 5, 64, 64, 3, 1, 1),
        (2, 6, 6, 3, 64, 3, 1, 1),
        (2, 7, 7, 8, 16, 1, 2, 0),
        (1, 9, 7, 24, 48, 3, 2, 1),
        (2, 4, 4, 32, 16, 3, 1, 1),
        (1, 13, 13, 3, 64, 7, 2, 3),
    ];

    #[test]
    fn results_do_not_depend_on_the_number_of_threads() {
        let Some(isa) = detected() else {
            eprintln!("skipped: no AVX2 on this CPU");
            return;
        };
        let (n, hw, c, k) = (37, 9, 16, 32);
        let x = Tensor::from_vec(values(n * hw * hw * c, 4), [n, hw, hw, c]).unwrap();
        let wt = Tensor::from_vec(values(k * 9 * c, 5), [k, 3, 3, c]).unwrap();
        let params = Conv2dParams {
            stride: 1,
            padding: 1,
        };
        let g = ConvGeometry::new(&x, &wt, params).unwrap();
        let (x, wt) = (x.as_slice::<f32>().unwrap(), wt.as_slice::<f32>().unwrap());
        let dy = values(n * hw * hw * k, 6);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| (forward(isa, &g, x, wt), backward_filter(isa, &g, x, &dy)))
        };
        let bits = |v: Option<Vec<f32>>| v.unwrap().iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let (y1, dw1) = run(1);
        let (y3, dw3) = run(3);
        assert_eq!(bits(y1), bits(y3));
        assert_eq!(bits(dw1), bits(dw3));
    }

    #[test]
    fn direct_kernels_match_the_f64_reference() {
        let isas: Vec<Isa> = match detected() {
            Some(Isa::Avx512) => vec![Isa::Avx512, Isa::Avx2],
            Some(Isa::Avx2) => vec![Isa::Avx2],
            None => {
                eprintln!("skipped: no AVX2 on this CPU");
                return;
            }
        };
        for (n, h, w, c, k, rs, stride, padding) in SHAPES {
            let Case {
                g,
                x,
                w,
                dy,
                y: want_y,
                dx: want_dx,
                dw: want_dw,
            } = case((n, h, w, c, k), (rs, stride, padding));
            for &isa in &isas {
                let what = |op| format!("{op} {isa:?} {g:?}");
                let y = forward(isa, &g, &x, &w).expect("forward covered");
                assert_close(&y, &want_y, &what("forward"));
                let dw = backward_filter(isa, &g, &x, &dy).expect("filter covered");
                assert_close(&dw, &want_dw, &what("dw"));
                if let Some(t) = cpu::transposed(&g).filter(|_| c % 8 == 0) {
                    let dx = forward(isa, &t, &dy, &cpu::flipped(&g, &w)).expect("dx covered");
                    assert_close(&dx, &want_dx, &what("dx"));
                }
            }
        }
    }
}
