//! Winograd convolution for 3×3 kernels with stride 1 and padding 1:
//! F(m×m, 3×3) computes each m×m tile of output pixels from the (m+2)×(m+2)
//! tile of input around it, through one GEMM of (tiles × c)·(c × k) per
//! position of the transformed tile: (m+2)² multiplies per tile and channel
//! pair instead of im2col's 9·m². The transforms take only adds and
//! multiplies by constants; every output sums in a fixed order, so results
//! are deterministic.
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

/// The two algorithms: output tiles of 2×2 pixels from 4×4 input tiles
/// (16 products per tile and channel pair, 4 per output pixel), or of 4×4
/// from 6×6 (36 per tile, 2.25 per pixel, with transforms that scale by up
/// to 8 and so round more: about 10× the error of the 2×2 ones on single
/// tiles, both within the f32 tolerance the tests hold them to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Variant {
    /// F(2×2, 3×3).
    F2,
    /// F(4×4, 3×3).
    F4,
}

/// One algorithm's transforms, each of one column of a tile (`M`: output
/// tile size, `A = M + 2`: input tile size); applied to the rows of a tile
/// and then to the columns of the result, they give the two-sided ones.
trait Transforms<const M: usize, const A: usize> {
    /// `Bᵀ·d` of input values.
    fn input<T: Real>(d: [Lanes<T>; A]) -> [Lanes<T>; A];
    /// `G·g` of kernel taps.
    fn weight<T: Real>(g: [Lanes<T>; 3]) -> [Lanes<T>; A];
    /// `Aᵀ·m` of transformed products.
    fn output<T: Real>(m: [Lanes<T>; A]) -> [Lanes<T>; M];
    /// `A·y` of output gradients (the transpose of [`Transforms::output`]).
    fn gradient<T: Real>(y: [Lanes<T>; M]) -> [Lanes<T>; A];
    /// `Gᵀ·u` of transformed weight gradients (the transpose of [`Transforms::weight`]).
    fn weight_gradient<T: Real>(u: [Lanes<T>; A]) -> [Lanes<T>; 3];
}

/// F(2×2, 3×3) (Lavin & Gray, 2015): adds and halves only.
struct F2;

impl Transforms<2, 4> for F2 {
    #[inline(always)]
    fn input<T: Real>([d0, d1, d2, d3]: [Lanes<T>; 4]) -> [Lanes<T>; 4] {
        [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
    }

    #[inline(always)]
    fn weight<T: Real>([g0, g1, g2]: [Lanes<T>; 3]) -> [Lanes<T>; 4] {
        let half = T::from_f64(0.5);
        let outer = g0 + g2;
        [g0, (outer + g1) * half, (outer - g1) * half, g2]
    }

    #[inline(always)]
    fn output<T: Real>([m0, m1, m2, m3]: [Lanes<T>; 4]) -> [Lanes<T>; 2] {
        [m0 + m1 + m2, m1 - m2 - m3]
    }

    #[inline(always)]
    fn gradient<T: Real>([y0, y1]: [Lanes<T>; 2]) -> [Lanes<T>; 4] {
        [y0, y0 + y1, y0 - y1, -y1]
    }

    #[inline(always)]
    fn weight_gradient<T: Real>([u0, u1, u2, u3]: [Lanes<T>; 4]) -> [Lanes<T>; 3] {
        let half = T::from_f64(0.5);
        let (sum, difference) = ((u1 + u2) * half, (u1 - u2) * half);
        [u0 + sum, difference, sum + u3]
    }
}

/// F(4×4, 3×3) (Lavin & Gray, 2015), interpolating at 0, ±1, ±2 and ∞.
struct F4;

impl Transforms<4, 6> for F4 {
    #[inline(always)]
    fn input<T: Real>([d0, d1, d2, d3, d4, d5]: [Lanes<T>; 6]) -> [Lanes<T>; 6] {
        let (four, five, two) = (T::from_f64(4.0), T::from_f64(5.0), T::from_f64(2.0));
        let (a, b) = (d4 - d2 * four, d3 - d1 * four);
        let (c, e) = (d4 - d2, (d3 - d1) * two);
        [
            d0 * four - d2 * five + d4,
            a + b,
            a - b,
            c + e,
            c - e,
            d1 * four - d3 * five + d5,
        ]
    }

    #[inline(always)]
    fn weight<T: Real>([g0, g1, g2]: [Lanes<T>; 3]) -> [Lanes<T>; 6] {
        let sixth = T::from_f64(1.0 / 6.0);
        let outer = g0 + g2;
        let even = g0 * T::from_f64(1.0 / 24.0) + g2 * sixth;
        let odd = g1 * T::from_f64(1.0 / 12.0);
        [
            g0 * T::from_f64(0.25),
            -((outer + g1) * sixth),
            -((outer - g1) * sixth),
            even + odd,
            even - odd,
            g2,
        ]
    }

    #[inline(always)]
    fn output<T: Real>([m0, m1, m2, m3, m4, m5]: [Lanes<T>; 6]) -> [Lanes<T>; 4] {
        let (sum12, difference12) = (m1 + m2, m1 - m2);
        let (sum34, difference34) = (m3 + m4, m3 - m4);
        [
            m0 + sum12 + sum34,
            difference12 + difference34 * T::from_f64(2.0),
            sum12 + sum34 * T::from_f64(4.0),
            difference12 + difference34 * T::from_f64(8.0) + m5,
        ]
    }

    #[inline(always)]
    fn gradient<T: Real>([y0, y1, y2, y3]: [Lanes<T>; 4]) -> [Lanes<T>; 6] {
        let (even1, odd1) = (y0 + y2, y1 + y3);
        let even2 = y0 + y2 * T::from_f64(4.0);
        let odd2 = y1 * T::from_f64(2.0) + y3 * T::from_f64(8.0);
        [
            y0,
            even1 + odd1,
            even1 - odd1,
            even2 + odd2,
            even2 - odd2,
            y3,
        ]
    }

    #[inline(always)]
    fn weight_gradient<T: Real>([u0, u1, u2, u3, u4, u5]: [Lanes<T>; 6]) -> [Lanes<T>; 3] {
        let sixth = T::from_f64(1.0 / 6.0);
        let (sum12, sum34) = (u1 + u2, u3 + u4);
        [
            u0 * T::from_f64(0.25) - sum12 * sixth + sum34 * T::from_f64(1.0 / 24.0),
            (u2 - u1) * sixth + (u3 - u4) * T::from_f64(1.0 / 12.0),
            (sum34 - sum12) * sixth + u5,
        ]
    }
}

/// The two-sided transform of an `I × I` tile whose value at row `r`,
/// column `s` is `load(r, s)`: `f` applied to each row, then to each column
/// of the result; `store(a, b, value)` receives row `a`, column `b` of it.
/// Inlined, the whole tile stays in vector registers.
#[inline(always)]
fn both_sides<T: Real, const I: usize, const O: usize>(
    load: impl Fn(usize, usize) -> Lanes<T>,
    f: impl Fn([Lanes<T>; I]) -> [Lanes<T>; O],
    mut store: impl FnMut(usize, usize, Lanes<T>),
) {
    // Closures left to the inliner's judgement were compiled apart, without
    // the vector instruction sets, so each is inlined by order.
    let rows: [[Lanes<T>; O]; I] = array(
        #[inline(always)]
        |r| {
            f(array(
                #[inline(always)]
                |s| load(r, s),
            ))
        },
    );
    #[allow(
        clippy::needless_range_loop,
        reason = "b picks the column of every row"
    )]
    for b in 0..O {
        let column = array(
            #[inline(always)]
            |r| rows[r][b],
        );
        for (a, value) in f(column).into_iter().enumerate() {
            store(a, b, value);
        }
    }
}

/// The array of `value(0), value(1), …`, built in place: through
/// `std::array::from_fn` (or zeroed first and then filled) the transforms'
/// tiles went through memory instead of staying in registers.
#[inline(always)]
fn array<V: Copy, const N: usize>(value: impl Fn(usize) -> V) -> [V; N] {
    let mut out = [MaybeUninit::<V>::uninit(); N];
    for (i, slot) in out.iter_mut().enumerate() {
        slot.write(value(i));
    }
    // SAFETY: every element was written above, and `[MaybeUninit<V>; N]`
    // has the layout of `[V; N]`.
    unsafe { std::mem::transmute_copy(&out) }
}

/// Floats between the rows of one position's matrix: a tile's (or a
/// kernel's) `positions` positions, then one cache line of padding, so the
/// rows do not fall a multiple of 4 KiB apart (which makes the GEMM's reads
/// of them evict each other from the L1 cache).
fn row_len(positions: usize, c: usize) -> usize {
    positions * c + 16
}

/// True for the convolutions this computes: 3×3, stride 1, padding 1.
pub(super) fn covers(g: &ConvGeometry) -> bool {
    g.r == 3 && g.s == 3 && g.stride == 1 && g.padding == 1
}

/// Most transformed tile positions (tiles × positions per tile) a task
/// transforms, multiplies and transforms back at once: enough tiles for
/// each GEMM to run at speed, few enough to stay mostly in the L2 cache
/// between the three steps (for F(4×4, 3×3) on 32 px images, 8192 ran
/// layer1's convolutions about 1.2× as fast as 4096).
const POSITIONS_PER_TASK: usize = 8192;

/// Elements of the transformed weight gradient a thread adds up at once.
const SUM_CHUNK: usize = 1 << 14;

/// Fewest tasks a batch is split into (when it has the images), so two
/// threads share the work evenly.
const TASKS: usize = 4;

/// The tiles of `g`'s output for output tiles of `m × m` pixels: (rows, columns).
fn tiles(g: &ConvGeometry, m: usize) -> (usize, usize) {
    (g.oh.div_ceil(m), g.ow.div_ceil(m))
}

/// Images per task: a fixed function of the shape.
fn images_per_task(g: &ConvGeometry, (th, tw): (usize, usize), positions: usize) -> usize {
    (POSITIONS_PER_TASK / positions / (th * tw))
        .min(g.n.div_ceil(TASKS))
        .max(1)
}

/// `y = conv(x, w)` for a shape [`covers`] accepts.
pub(super) fn forward<T: Real>(variant: Variant, g: &ConvGeometry, x: &[T], w: &[T]) -> Vec<T> {
    match variant {
        Variant::F2 => forward_by::<T, F2, 2, 4>(g, x, w),
        Variant::F4 => forward_by::<T, F4, 4, 6>(g, x, w),
    }
}

/// `dw = Σ dyᵀ · patches(x)` (KRSC) for a shape [`covers`] accepts.
pub(super) fn backward_filter<T: Real>(
    variant: Variant,
    g: &ConvGeometry,
    x: &[T],
    dy: &[T],
) -> Vec<T> {
    match variant {
        Variant::F2 => backward_filter_by::<T, F2, 2, 4>(g, x, dy),
        Variant::F4 => backward_filter_by::<T, F4, 4, 6>(g, x, dy),
    }
}

/// [`forward`] by `W`: one task per group of whole images (at most
/// [`POSITIONS_PER_TASK`] tile positions, at least [`TASKS`] tasks).
fn forward_by<T: Real, W: Transforms<M, A>, const M: usize, const A: usize>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
) -> Vec<T> {
    debug_assert!(covers(g));
    let positions = A * A;
    let (th, tw) = tiles(g, M);
    let u = transformed_weights::<T, W, M, A>(g, w);
    let (c, k) = (g.c, g.k);
    let images_per_task = images_per_task(g, (th, tw), positions);
    let (in_image, out_image) = (g.h * g.w * c, g.oh * g.ow * k);
    filled_by_blocks(g.n * out_image, images_per_task * out_image, |task, y| {
        let images = y.len() / out_image;
        let x = &x[task * images_per_task * in_image..][..images * in_image];
        let tiles = images * th * tw;
        let v = transformed_input::<T, W, M, A>(g, x, images, (th, tw));
        // m[position] (tiles × k) = v[position] (tiles × c) · u[position]ᵀ
        let mut m = Vec::with_capacity(positions * tiles * k);
        for (position, m) in m.spare_capacity_mut()[..positions * tiles * k]
            .chunks_mut(tiles * k)
            .enumerate()
        {
            let v = Mat {
                data: &v[position * c..],
                row_stride: row_len(positions, c),
                col_stride: 1,
            };
            let u = Mat {
                data: &u[position * k..],
                row_stride: row_len(positions, k),
                col_stride: 1,
            };
            matmul_serial_into((tiles, k, c), v, u, m);
        }
        // SAFETY: the GEMMs wrote every position's `tiles × k` block.
        unsafe { m.set_len(positions * tiles * k) };
        transformed_output::<T, W, M, A>(g, &m, images, (th, tw), y);
    })
}

/// [`backward_filter`] by `W`: the forward is bilinear in the transformed
/// weights `U`, so `∂U = Σ_tiles (A·dy·Aᵀ) ⊙ (Bᵀ·d·B)`, one GEMM per position
/// over each task's tiles (the tasks' sums added in task order), and
/// `dw = Gᵀ·∂U·G`.
fn backward_filter_by<T: Real, W: Transforms<M, A>, const M: usize, const A: usize>(
    g: &ConvGeometry,
    x: &[T],
    dy: &[T],
) -> Vec<T> {
    debug_assert!(covers(g));
    let positions = A * A;
    let (th, tw) = tiles(g, M);
    let (c, k) = (g.c, g.k);
    let per_task = images_per_task(g, (th, tw), positions);
    let (in_image, out_image) = (g.h * g.w * c, g.oh * g.ow * k);
    let mut sums: Vec<Vec<T>> = (0..g.n.div_ceil(per_task))
        .into_par_iter()
        .map(|task| {
            let first = task * per_task;
            let images = per_task.min(g.n - first);
            let x = &x[first * in_image..][..images * in_image];
            let dy = &dy[first * out_image..][..images * out_image];
            let tiles = images * th * tw;
            let v = transformed_input::<T, W, M, A>(g, x, images, (th, tw));
            let e = transformed_gradient::<T, W, M, A>(g, dy, images, (th, tw));
            // ∂U[position] (k × c) = e[position]ᵀ (k × tiles) · v[position] (tiles × c)
            let mut du = Vec::with_capacity(positions * k * c);
            for (position, du) in du.spare_capacity_mut()[..positions * k * c]
                .chunks_mut(k * c)
                .enumerate()
            {
                let e = Mat {
                    data: &e[position * k..],
                    row_stride: 1,
                    col_stride: row_len(positions, k),
                };
                let v = Mat {
                    data: &v[position * c..],
                    row_stride: row_len(positions, c),
                    col_stride: 1,
                };
                matmul_serial_into((k, c, tiles), e, v, du);
            }
            // SAFETY: the GEMMs wrote every position's `k × c` block.
            unsafe { du.set_len(positions * k * c) };
            du
        })
        .collect();
    // Every element adds the tasks' sums in task order, so splitting the
    // additions across threads leaves the result as it is.
    let (du, others) = sums.split_first_mut().expect("at least one image");
    du.par_chunks_mut(SUM_CHUNK)
        .enumerate()
        .for_each(|(chunk, du)| {
            for task in others.iter() {
                let task = &task[chunk * SUM_CHUNK..][..du.len()];
                du.iter_mut().zip(task).for_each(|(d, &t)| *d += t);
            }
        });
    filled_by_blocks(k * 9 * c, 9 * c, |kk, out| {
        vectorized(
            #[inline(always)]
            || {
                for (ci, len) in lane_chunks(c) {
                    let at = |a: usize, b: usize| {
                        Lanes::load(&du[((a * A + b) * k + kk) * c + ci..][..len])
                    };
                    both_sides(
                        at,
                        #[inline(always)]
                        |v| W::weight_gradient(v),
                        |r, s, value| {
                            value.store(&mut out[(r * 3 + s) * c + ci..][..len]);
                        },
                    );
                }
            },
        );
    })
}

/// `E = A·dy·Aᵀ` of every `M × M` tile of output gradient (zeros outside
/// the output), as `[tile][position][k]` with rows [`row_len`] apart.
fn transformed_gradient<T: Real, W: Transforms<M, A>, const M: usize, const A: usize>(
    g: &ConvGeometry,
    dy: &[T],
    images: usize,
    (th, tw): (usize, usize),
) -> Vec<T> {
    let k = g.k;
    let zeros = vec![T::ZERO; k];
    tile_rows(images, (th, tw), A * A, k, |(n, i, j), out| {
        let pixel = |p: usize, q: usize| -> &[T] {
            let (oh, ow) = (M * i + p, M * j + q);
            if oh < g.oh && ow < g.ow {
                &dy[((n * g.oh + oh) * g.ow + ow) * k..][..k]
            } else {
                &zeros
            }
        };
        let d: [[&[T]; M]; M] = std::array::from_fn(|p| std::array::from_fn(|q| pixel(p, q)));
        transformed_tile(
            &d,
            #[inline(always)]
            |v| W::gradient(v),
            out,
        );
    })
}

/// `f` applied to both sides of a tile of pixels (each a slice of channels),
/// [`LANES`] channels at a time, into a row of `[position][channel]` values.
/// `f` must be an `#[inline(always)]` closure, as for [`both_sides`].
#[inline(always)]
fn transformed_tile<T: Real, const I: usize, const O: usize>(
    pixels: &[[&[T]; I]; I],
    f: impl Fn([Lanes<T>; I]) -> [Lanes<T>; O] + Copy,
    out: &mut [MaybeUninit<T>],
) {
    let width = pixels[0][0].len();
    vectorized(
        #[inline(always)]
        || {
            for (first, len) in lane_chunks(width) {
                both_sides(
                    #[inline(always)]
                    |p, q| Lanes::load(&pixels[p][q][first..first + len]),
                    f,
                    #[inline(always)]
                    |a, b, value| value.store(&mut out[(a * O + b) * width + first..][..len]),
                );
            }
        },
    );
}

/// `U = G·g·Gᵀ` of every kernel, as `[c][position][k]` with rows
/// [`row_len`] apart: position `p`'s matrix (`c × k`) starts at `p·k`, its
/// rows contiguous, which the GEMM reads without packing them (per task and
/// position, that packing cost more than the transform). One task per
/// [`LANES`] input channels: each kernel's taps are read for all of them at
/// once and its transformed values scattered to their rows.
fn transformed_weights<T: Real, W: Transforms<M, A>, const M: usize, const A: usize>(
    g: &ConvGeometry,
    w: &[T],
) -> Vec<T> {
    let (c, k, positions) = (g.c, g.k, A * A);
    let row = row_len(positions, k);
    filled_by_blocks(c * row, LANES * row, |block, out| {
        let first = block * LANES;
        let channels = out.len() / row;
        for row in out.chunks_mut(row) {
            row[positions * k..].fill(MaybeUninit::new(T::ZERO));
        }
        vectorized(
            #[inline(always)]
            || {
                for kk in 0..k {
                    let tap = |t: usize| Lanes::load(&w[(kk * 9 + t) * c + first..][..channels]);
                    both_sides(
                        |r, s| tap(r * 3 + s),
                        #[inline(always)]
                        |v| W::weight(v),
                        |a, b, value| {
                            let at = (a * A + b) * k + kk;
                            for (ci, &v) in value.0[..channels].iter().enumerate() {
                                out[ci * row + at].write(v);
                            }
                        },
                    );
                }
            },
        );
    })
}

/// One row per tile of `images` images, `(n, i, j)` in order: its
/// `positions · width` elements written by `fill`, then zero padding to
/// [`row_len`].
fn tile_rows<T: Real>(
    images: usize,
    (th, tw): (usize, usize),
    positions: usize,
    width: usize,
    fill: impl Fn((usize, usize, usize), &mut [MaybeUninit<T>]),
) -> Vec<T> {
    let row = row_len(positions, width);
    let len = images * th * tw * row;
    let mut rows = Vec::with_capacity(len);
    for (t, row) in rows.spare_capacity_mut()[..len].chunks_mut(row).enumerate() {
        let (values, padding) = row.split_at_mut(positions * width);
        padding.fill(MaybeUninit::new(T::ZERO));
        fill((t / (th * tw), t / tw % th, t % tw), values);
    }
    // SAFETY: every row's positions were written by `fill`, its padding here.
    unsafe { rows.set_len(len) };
    rows
}

/// `V = Bᵀ·d·B` of every `A × A` input tile (zeros outside the image), as
/// `[tile][position][c]`; tile `(n, i, j)` starts at pixel `(M·i − 1, M·j − 1)`.
fn transformed_input<T: Real, W: Transforms<M, A>, const M: usize, const A: usize>(
    g: &ConvGeometry,
    x: &[T],
    images: usize,
    (th, tw): (usize, usize),
) -> Vec<T> {
    let c = g.c;
    let zeros = vec![T::ZERO; c];
    tile_rows(images, (th, tw), A * A, c, |(n, i, j), out| {
        let pixel = |p: usize, q: usize| -> &[T] {
            let (ih, iw) = ((M * i + p).wrapping_sub(1), (M * j + q).wrapping_sub(1));
            if ih < g.h && iw < g.w {
                &x[((n * g.h + ih) * g.w + iw) * c..][..c]
            } else {
                &zeros
            }
        };
        let d: [[&[T]; A]; A] = std::array::from_fn(|p| std::array::from_fn(|q| pixel(p, q)));
        transformed_tile(
            &d,
            #[inline(always)]
            |v| W::input(v),
            out,
        );
    })
}

/// `y = Aᵀ·m·A` of every tile of `images` images into `y`, every pixel of
/// the output written.
fn transformed_output<T: Real, W: Transforms<M, A>, const M: usize, const A: usize>(
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
        let m: [[&[T]; A]; A] = std::array::from_fn(|a| {
            std::array::from_fn(|b| &m[((a * A + b) * tiles + t) * k..][..k])
        });
        let (rows, cols) = ((g.oh - M * i).min(M), (g.ow - M * j).min(M));
        vectorized(
            #[inline(always)]
            || {
                for (kk, len) in lane_chunks(k) {
                    let load = |a: usize, b: usize| Lanes::load(&m[a][b][kk..kk + len]);
                    both_sides(
                        load,
                        #[inline(always)]
                        |v| W::output(v),
                        |p, q, value| {
                            if p < rows && q < cols {
                                value.store(
                                    &mut y[((M * i + p) * g.ow + M * j + q) * k + kk..][..len],
                                );
                            }
                        },
                    );
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

    /// Forward, backward data and weight gradient of both algorithms against
    /// the f64 im2col reference, on even and odd sizes (a ragged last tile),
    /// one image and several, one task and several (five 16×16 images: 2 a
    /// task, the last task short).
    #[test]
    fn winograd_matches_the_f64_reference() {
        for (n, h, w, c, k) in [
            (2, 8, 8, 16, 24),
            (1, 5, 7, 8, 8),
            (3, 4, 4, 32, 16),
            (2, 3, 1, 4, 8),
            (5, 16, 16, 8, 8),
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
            for variant in [Variant::F2, Variant::F4] {
                let what = |part| format!("{variant:?} {part} {g:?}");
                let y = forward(variant, &g, &x, &wt);
                assert_close(&y, &want_y, &what("forward"));
                let t = cpu::transposed(&g).unwrap();
                let dx = forward(variant, &t, &dy, &cpu::flipped(&g, &wt));
                assert_close(&dx, &want_dx, &what("dx"));
                let dw = backward_filter(variant, &g, &x, &dy);
                assert_close(&dw, &want_dw, &what("dw"));
            }
        }
    }
}
