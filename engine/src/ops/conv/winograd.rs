//! Winograd F(2×2, 3×3) for 3×3 convolutions with stride 1 and padding 1:
//! each 2×2 tile of output pixels comes from the 4×4 tile of input around
//! it, through 16 GEMMs of (tiles × c)·(c × k), one per position of the
//! transformed 4×4 tile: 16 multiplies per tile and channel pair instead of
//! im2col's 36. The transforms (Lavin & Gray, 2015) take only adds and halves;
//! every output sums in a fixed order, so results are deterministic.
//!
//! The backward data of such a convolution is the forward of its transposed
//! convolution (also 3×3, stride 1, padding 1), so it runs here too.

use super::ConvGeometry;
use crate::ops::real::{Mat, Real, filled_by_blocks, matmul_serial_into};
use crate::ops::simd::vectorized;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::{Add, Mul, Neg, Sub};

/// Channels the transforms handle at once.
const LANES: usize = 16;

/// [`LANES`] consecutive channels of one value of a tile. The transforms do
/// their arithmetic on these, in fixed-size loops the compiler turns into
/// vector instructions (one channel at a time, it did not).
#[derive(Clone, Copy)]
struct Lanes<T>([T; LANES]);

impl<T: Real> Lanes<T> {
    /// The channels of `values` (at most [`LANES`]), zeros after them.
    #[inline(always)]
    fn load(values: &[T]) -> Self {
        match <[T; LANES]>::try_from(values) {
            Ok(all) => Lanes(all),
            Err(_) => {
                let mut lanes = [T::ZERO; LANES];
                lanes[..values.len()].copy_from_slice(values);
                Lanes(lanes)
            }
        }
    }

    /// Writes the first `out.len()` (at most [`LANES`]) channels to `out`;
    /// a whole vector through the fixed-size branch, which compiles to one
    /// vector store.
    #[inline(always)]
    fn store(self, out: &mut [MaybeUninit<T>]) {
        match <&mut [MaybeUninit<T>; LANES]>::try_from(&mut *out) {
            Ok(all) => all.iter_mut().zip(self.0).for_each(|(o, v)| {
                o.write(v);
            }),
            Err(_) => out.iter_mut().zip(self.0).for_each(|(o, v)| {
                o.write(v);
            }),
        }
    }

    /// `f` of each channel and the same channel of `other`.
    #[inline(always)]
    fn zip_with(mut self, other: Self, f: impl Fn(T, T) -> T) -> Self {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = f(*a, b);
        }
        self
    }
}

impl<T: Real> Add for Lanes<T> {
    type Output = Self;
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self.zip_with(other, |a, b| a + b)
    }
}

impl<T: Real> Sub for Lanes<T> {
    type Output = Self;
    #[inline(always)]
    fn sub(self, other: Self) -> Self {
        self.zip_with(other, |a, b| a - b)
    }
}

impl<T: Real> Neg for Lanes<T> {
    type Output = Self;
    #[inline(always)]
    fn neg(self) -> Self {
        self.zip_with(self, |a, _| -a)
    }
}

impl<T: Real> Mul<T> for Lanes<T> {
    type Output = Self;
    #[inline(always)]
    fn mul(self, factor: T) -> Self {
        self.zip_with(self, |a, _| a * factor)
    }
}

/// The channel chunks of `0..len`: `(first, count)`, `count` at most [`LANES`].
fn lane_chunks(len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len)
        .step_by(LANES)
        .map(move |first| (first, LANES.min(len - first)))
}

/// Positions in a transformed tile.
const POSITIONS: usize = 16;

/// Floats between the rows of one position's matrix: a tile's (or a
/// kernel's) 16 positions, then one cache line of padding, so the rows do
/// not fall a multiple of 4 KiB apart (which makes the GEMM's reads of
/// them evict each other from the L1 cache).
fn row_len(c: usize) -> usize {
    POSITIONS * c + 16
}

/// True for the convolutions this computes: 3×3, stride 1, padding 1.
pub(super) fn covers(g: &ConvGeometry) -> bool {
    g.r == 3 && g.s == 3 && g.stride == 1 && g.padding == 1
}

/// Most tiles a task transforms, multiplies and transforms back at once, so
/// its transformed tiles stay in the L2 cache between the three steps.
const TILES_PER_TASK: usize = 256;

/// Fewest tasks a batch is split into (when it has the images), so two
/// threads share the work evenly.
const TASKS: usize = 4;

/// `y = conv(x, w)` for a shape [`covers`] accepts. One task per group of
/// whole images (at most [`TILES_PER_TASK`] tiles, at least [`TASKS`] tasks).
pub(super) fn forward<T: Real>(g: &ConvGeometry, x: &[T], w: &[T]) -> Vec<T> {
    debug_assert!(covers(g));
    let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
    let u = transformed_weights(g, w);
    let (c, k) = (g.c, g.k);
    let images_per_task = images_per_task(g, (th, tw));
    let (in_image, out_image) = (g.h * g.w * c, g.oh * g.ow * k);
    filled_by_blocks(g.n * out_image, images_per_task * out_image, |task, y| {
        let images = y.len() / out_image;
        let x = &x[task * images_per_task * in_image..][..images * in_image];
        let tiles = images * th * tw;
        let v = transformed_input(g, x, images, (th, tw));
        // m[position] (tiles × k) = v[position] (tiles × c) · u[position]ᵀ
        let mut m = Vec::with_capacity(POSITIONS * tiles * k);
        for (position, m) in m.spare_capacity_mut()[..POSITIONS * tiles * k]
            .chunks_mut(tiles * k)
            .enumerate()
        {
            let v = Mat {
                data: &v[position * c..],
                row_stride: row_len(c),
                col_stride: 1,
            };
            let u = Mat {
                data: &u[position * k..],
                row_stride: row_len(k),
                col_stride: 1,
            };
            matmul_serial_into((tiles, k, c), v, u, m);
        }
        // SAFETY: the GEMMs wrote every position's `tiles × k` block.
        unsafe { m.set_len(POSITIONS * tiles * k) };
        transformed_output(g, &m, images, (th, tw), y);
    })
}

/// Channels `ci..ci + len` of row `r` of a 4×4 tile held as 16 slices, row by row.
#[inline(always)]
fn tile_row<T: Real>(tile: &[&[T]; 16], r: usize, (ci, len): (usize, usize)) -> [Lanes<T>; 4] {
    let load = |s: usize| Lanes::load(&tile[r * 4 + s][ci..ci + len]);
    [load(0), load(1), load(2), load(3)]
}

/// Images per task: a fixed function of the shape.
fn images_per_task(g: &ConvGeometry, (th, tw): (usize, usize)) -> usize {
    (TILES_PER_TASK / (th * tw)).min(g.n.div_ceil(TASKS)).max(1)
}

/// `dw = Σ dyᵀ · patches(x)` (KRSC) for a shape [`covers`] accepts: the
/// forward is bilinear in the transformed weights `U`, so
/// `∂U = Σ_tiles (A·dy·Aᵀ) ⊙ (Bᵀ·d·B)`, 16 GEMMs over each task's tiles
/// (the tasks' sums added in task order), and `dw = Gᵀ·∂U·G`.
pub(super) fn backward_filter<T: Real>(g: &ConvGeometry, x: &[T], dy: &[T]) -> Vec<T> {
    debug_assert!(covers(g));
    let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
    let (c, k) = (g.c, g.k);
    let per_task = images_per_task(g, (th, tw));
    let (in_image, out_image) = (g.h * g.w * c, g.oh * g.ow * k);
    let sums: Vec<Vec<T>> = (0..g.n.div_ceil(per_task))
        .into_par_iter()
        .map(|task| {
            let first = task * per_task;
            let images = per_task.min(g.n - first);
            let x = &x[first * in_image..][..images * in_image];
            let dy = &dy[first * out_image..][..images * out_image];
            let tiles = images * th * tw;
            let v = transformed_input(g, x, images, (th, tw));
            let e = transformed_gradient(g, dy, images, (th, tw));
            // ∂U[position] (k × c) = e[position]ᵀ (k × tiles) · v[position] (tiles × c)
            let mut du = Vec::with_capacity(POSITIONS * k * c);
            for (position, du) in du.spare_capacity_mut()[..POSITIONS * k * c]
                .chunks_mut(k * c)
                .enumerate()
            {
                let e = Mat {
                    data: &e[position * k..],
                    row_stride: 1,
                    col_stride: row_len(k),
                };
                let v = Mat {
                    data: &v[position * c..],
                    row_stride: row_len(c),
                    col_stride: 1,
                };
                matmul_serial_into((k, c, tiles), e, v, du);
            }
            // SAFETY: the GEMMs wrote every position's `k × c` block.
            unsafe { du.set_len(POSITIONS * k * c) };
            du
        })
        .collect();
    let mut sums = sums.into_iter();
    let mut du = sums.next().expect("at least one image");
    for task in sums {
        du.iter_mut().zip(task).for_each(|(d, t)| *d += t);
    }
    filled_by_blocks(k * 9 * c, 9 * c, |kk, out| {
        vectorized(
            #[inline(always)]
            || {
                for (ci, len) in lane_chunks(c) {
                    let at = |a: usize, b: usize| {
                        Lanes::load(&du[((a * 4 + b) * k + kk) * c + ci..][..len])
                    };
                    // Rows a of ∂U·G, then Gᵀ applied down each column.
                    let row = |a| weight_gradient_rows([at(a, 0), at(a, 1), at(a, 2), at(a, 3)]);
                    let rows = [row(0), row(1), row(2), row(3)];
                    for s in 0..3 {
                        let column =
                            weight_gradient_rows([rows[0][s], rows[1][s], rows[2][s], rows[3][s]]);
                        for (r, value) in column.into_iter().enumerate() {
                            value.store(&mut out[(r * 3 + s) * c + ci..][..len]);
                        }
                    }
                }
            },
        );
    })
}

/// `Gᵀ·u` for a column of a transformed weight gradient.
#[inline(always)]
fn weight_gradient_rows<T: Real>([u0, u1, u2, u3]: [Lanes<T>; 4]) -> [Lanes<T>; 3] {
    let half = T::from_f64(0.5);
    let (sum, difference) = ((u1 + u2) * half, (u1 - u2) * half);
    [u0 + sum, difference, sum + u3]
}

/// `A·y` for a column of a 2×2 output-gradient tile.
#[inline(always)]
fn gradient_rows<T: Real>([y0, y1]: [Lanes<T>; 2]) -> [Lanes<T>; 4] {
    [y0, y0 + y1, y0 - y1, -y1]
}

/// `E = A·dy·Aᵀ` of every 2×2 tile of output gradient (zeros outside the
/// output), as `[tile][position][k]` with rows [`row_len`] apart.
fn transformed_gradient<T: Real>(
    g: &ConvGeometry,
    dy: &[T],
    images: usize,
    (th, tw): (usize, usize),
) -> Vec<T> {
    let k = g.k;
    let zeros = vec![T::ZERO; k];
    tile_rows(images, (th, tw), k, |(n, i, j), out| {
        let pixel = |q: usize| -> &[T] {
            let (oh, ow) = (2 * i + q / 2, 2 * j + q % 2);
            if oh < g.oh && ow < g.ow {
                &dy[((n * g.oh + oh) * g.ow + ow) * k..][..k]
            } else {
                &zeros
            }
        };
        let d: [&[T]; 4] = std::array::from_fn(pixel);
        vectorized(
            #[inline(always)]
            || {
                for (kk, len) in lane_chunks(k) {
                    let pixel = |q: usize| Lanes::load(&d[q][kk..kk + len]);
                    // Rows p of dy·Aᵀ, then A applied down each column.
                    let rows = [
                        gradient_rows([pixel(0), pixel(1)]),
                        gradient_rows([pixel(2), pixel(3)]),
                    ];
                    for b in 0..4 {
                        let column = gradient_rows([rows[0][b], rows[1][b]]);
                        for (a, value) in column.into_iter().enumerate() {
                            value.store(&mut out[(a * 4 + b) * k + kk..][..len]);
                        }
                    }
                }
            },
        );
    })
}

/// `Bᵀ·d` for a column of an input tile.
#[inline(always)]
fn input_rows<T: Real>([d0, d1, d2, d3]: [Lanes<T>; 4]) -> [Lanes<T>; 4] {
    [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
}

/// `G·g` for a column of a 3×3 kernel.
#[inline(always)]
fn weight_rows<T: Real>([g0, g1, g2]: [Lanes<T>; 3]) -> [Lanes<T>; 4] {
    let half = T::from_f64(0.5);
    let outer = g0 + g2;
    [g0, (outer + g1) * half, (outer - g1) * half, g2]
}

/// `Aᵀ·m` for a column of a transformed output tile.
#[inline(always)]
fn output_rows<T: Real>([m0, m1, m2, m3]: [Lanes<T>; 4]) -> [Lanes<T>; 2] {
    [m0 + m1 + m2, m1 - m2 - m3]
}

/// `U = G·g·Gᵀ` of every kernel, as `[c][position][k]` with rows
/// [`row_len`] apart: position `p`'s matrix (`c × k`) starts at `p·k`, its
/// rows contiguous, which the GEMM reads without packing them (per task and
/// position, that packing cost more than the transform). One task per
/// [`LANES`] input channels: each kernel's taps are read for all of them at
/// once and its 16 transformed values scattered to their rows.
fn transformed_weights<T: Real>(g: &ConvGeometry, w: &[T]) -> Vec<T> {
    let (c, k) = (g.c, g.k);
    filled_by_blocks(c * row_len(k), LANES * row_len(k), |block, out| {
        let first = block * LANES;
        let channels = out.len() / row_len(k);
        for row in out.chunks_mut(row_len(k)) {
            row[POSITIONS * k..].fill(MaybeUninit::new(T::ZERO));
        }
        vectorized(
            #[inline(always)]
            || {
                for kk in 0..k {
                    let tap = |t: usize| Lanes::load(&w[(kk * 9 + t) * c + first..][..channels]);
                    // Rows r of g·Gᵀ, then G applied down each column.
                    let row = |r: usize| weight_rows([tap(r * 3), tap(r * 3 + 1), tap(r * 3 + 2)]);
                    let [r0, r1, r2] = [row(0), row(1), row(2)];
                    for b in 0..4 {
                        let column = weight_rows([r0[b], r1[b], r2[b]]);
                        for (a, value) in column.into_iter().enumerate() {
                            let at = (a * 4 + b) * k + kk;
                            for (ci, &v) in value.0[..channels].iter().enumerate() {
                                out[ci * row_len(k) + at].write(v);
                            }
                        }
                    }
                }
            },
        );
    })
}

/// One row per tile of `images` images, `(n, i, j)` in order: its
/// [`POSITIONS`] · `width` elements written by `fill`, then zero padding to
/// [`row_len`].
fn tile_rows<T: Real>(
    images: usize,
    (th, tw): (usize, usize),
    width: usize,
    fill: impl Fn((usize, usize, usize), &mut [MaybeUninit<T>]),
) -> Vec<T> {
    let len = images * th * tw * row_len(width);
    let mut rows = Vec::with_capacity(len);
    for (t, row) in rows.spare_capacity_mut()[..len]
        .chunks_mut(row_len(width))
        .enumerate()
    {
        let (positions, padding) = row.split_at_mut(POSITIONS * width);
        padding.fill(MaybeUninit::new(T::ZERO));
        fill((t / (th * tw), t / tw % th, t % tw), positions);
    }
    // SAFETY: every row's positions were written by `fill`, its padding here.
    unsafe { rows.set_len(len) };
    rows
}

/// `V = Bᵀ·d·B` of every 4×4 input tile (zeros outside the image), as
/// `[tile][position][c]`; tile `(n, i, j)` starts at pixel `(2i − 1, 2j − 1)`.
fn transformed_input<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    images: usize,
    (th, tw): (usize, usize),
) -> Vec<T> {
    let c = g.c;
    let zeros = vec![T::ZERO; c];
    tile_rows(images, (th, tw), c, |(n, i, j), out| {
        let pixel = |q: usize| -> &[T] {
            let (ih, iw) = (
                (2 * i + q / 4).wrapping_sub(1),
                (2 * j + q % 4).wrapping_sub(1),
            );
            if ih < g.h && iw < g.w {
                &x[((n * g.h + ih) * g.w + iw) * c..][..c]
            } else {
                &zeros
            }
        };
        let d: [&[T]; 16] = std::array::from_fn(pixel);
        vectorized(
            #[inline(always)]
            || {
                for (ci, len) in lane_chunks(c) {
                    // Rows r of d·B, then Bᵀ applied down each column.
                    let row = |r| input_rows(tile_row(&d, r, (ci, len)));
                    let rows = [row(0), row(1), row(2), row(3)];
                    for b in 0..4 {
                        let column = input_rows([rows[0][b], rows[1][b], rows[2][b], rows[3][b]]);
                        for (a, value) in column.into_iter().enumerate() {
                            value.store(&mut out[(a * 4 + b) * c + ci..][..len]);
                        }
                    }
                }
            },
        );
    })
}

/// `y = Aᵀ·m·A` of every tile of `images` images into `y`, every pixel of
/// the output written.
fn transformed_output<T: Real>(
    g: &ConvGeometry,
    m: &[T],
    images: usize,
    (th, tw): (usize, usize),
    y: &mut [MaybeUninit<T>],
) {
    let (k, tiles) = (g.k, images * th * tw);
    for t in 0..tiles {
        let (n, i, j) = (t / (th * tw), t / tw % th, t % tw);
        let y = &mut y[n * g.oh * g.ow * k..][..g.oh * g.ow * k];
        let m: [&[T]; 16] = std::array::from_fn(|position| &m[(position * tiles + t) * k..][..k]);
        let (rows, cols) = ((g.oh - 2 * i).min(2), (g.ow - 2 * j).min(2));
        vectorized(
            #[inline(always)]
            || {
                for (kk, len) in lane_chunks(k) {
                    // Rows a of m·A, then Aᵀ applied down each column.
                    let row = |a| output_rows(tile_row(&m, a, (kk, len)));
                    let ma = [row(0), row(1), row(2), row(3)];
                    for q in 0..cols {
                        let column = output_rows([ma[0][q], ma[1][q], ma[2][q], ma[3][q]]);
                        for (p, value) in column.into_iter().enumerate().take(rows) {
                            value.store(&mut y[((2 * i + p) * g.ow + 2 * j + q) * k + kk..][..len]);
                        }
                    }
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::cpu;
    use super::super::test_support::{Case, assert_close, case};
    use super::*;

    /// Forward, backward data and weight gradient against the f64 im2col
    /// reference, on even
    /// and odd sizes (a ragged last tile), one image and several, one task
    /// and several (16×16 images: 2 a task, the last task short).
    #[test]
    fn winograd_matches_the_f64_reference() {
        for (n, h, w, c, k) in [
            (2, 8, 8, 16, 24),
            (1, 5, 7, 8, 8),
            (3, 4, 4, 32, 16),
            (2, 3, 1, 4, 8),
            (3, 16, 16, 8, 8),
        ] {
            let Case {
                g,
                x,
                w: wt,
                dy,
                y: want_y,
                dx: want_dx,
                dw: want_dw,
            } = case((n, h, w, c, k), (3, 1, 1));
            assert!(covers(&g));
            assert_close(&forward(&g, &x, &wt), &want_y, &format!("forward {g:?}"));
            let t = cpu::transposed(&g).unwrap();
            let dx = forward(&t, &dy, &cpu::flipped(&g, &wt));
            assert_close(
                &backward_filter(&g, &x, &dy),
                &want_dw,
                &format!("dw {g:?}"),
            );
            assert_close(&dx, &want_dx, &format!("dx {g:?}"));
        }
    }
}
