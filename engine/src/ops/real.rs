//! The float types the CPU reference backend computes in, and its GEMM.

use crate::Element;
use rayon::prelude::*;
use std::iter::Sum;
use std::mem::MaybeUninit;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// f32 or f64: what the CPU kernels are generic over.
pub(crate) trait Real:
    Element
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    };
}
real!(f32);
real!(f64);

/// A vector of `len` elements written block by block in parallel: `fill`
/// gets each block's index and its `block` elements (fewer in the last), and
/// must write every one of them. Nothing is zeroed first.
pub(crate) fn filled_by_blocks<T: Send>(
    len: usize,
    block: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(block.max(1))
        .enumerate()
        .for_each(|(i, b)| fill(i, b));
    // SAFETY: `fill` wrote every element of every block.
    unsafe { out.set_len(len) };
    out
}

/// `buf` (its allocation reused) resized to `len` elements, all written by
/// `fill`; nothing is zeroed first.
pub(crate) fn uninit_filled<T>(
    len: usize,
    mut buf: Vec<T>,
    fill: impl FnOnce(&mut [MaybeUninit<T>]),
) -> Vec<T> {
    buf.clear();
    buf.reserve(len);
    fill(&mut buf.spare_capacity_mut()[..len]);
    // SAFETY: `fill` wrote all `len` elements.
    unsafe { buf.set_len(len) };
    buf
}

/// A read-only matrix operand: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
/// Swapping the strides gives the transpose without a copy.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }
}

/// `c (m×n, row-major) = [c +] a (m×k) · b (k×n)` through the `gemm` crate.
///
/// A large product is cut into one strip of `c` per rayon thread (rows, or
/// columns when `c` is wider than tall), each a single-threaded GEMM: one
/// fork-join per product instead of one per block of gemm's own threading,
/// whose wake-ups cost more than the packing the threads then repeat.
pub(crate) fn matmul<T: Real>(
    dims: (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    c: &mut [T],
    accumulate: bool,
) {
    assert!(c.len() >= dims.0 * dims.1, "matmul: output too small");
    // SAFETY: `c` holds the `m × n` output, initialised as accumulating needs.
    unsafe { matmul_raw(dims, a, b, SharedOut(c.as_mut_ptr()), accumulate) }
}

/// [`matmul`] without accumulating, into an output whose old contents are
/// never read, so it need not be initialised (nor zeroed) first.
pub(crate) fn matmul_into<T: Real>(
    dims: (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    c: &mut [MaybeUninit<T>],
) {
    assert!(c.len() >= dims.0 * dims.1, "matmul: output too small");
    // SAFETY: `c` holds the `m × n` output; without accumulation the GEMM
    // only writes it (the `k == 0` case fills it with zeros).
    unsafe { matmul_raw(dims, a, b, SharedOut(c.as_mut_ptr().cast()), false) }
}

/// [`matmul_into`] on the calling thread alone: for products inside a
/// parallel task.
pub(crate) fn matmul_serial_into<T: Real>(
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    c: &mut [MaybeUninit<T>],
) {
    assert!(c.len() >= m * n, "matmul: output too small");
    let last = |x: Mat<T>, r: usize, cc: usize| (r - 1) * x.row_stride + (cc - 1) * x.col_stride;
    assert!(m > 0 && n > 0 && k > 0, "matmul_serial_into: empty product");
    assert!(last(a, m, k) < a.data.len() && last(b, k, n) < b.data.len());
    // SAFETY: `c` holds the `m × n` output, only written without accumulation;
    // the operands cover their bounds (asserted).
    unsafe { gemm_serial((m, n, k), a, b, c.as_mut_ptr().cast(), n, false) }
}

/// # Safety
/// `c` must point to `m × n` writable elements, initialised if `accumulate`.
unsafe fn matmul_raw<T: Real>(
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    c: SharedOut<T>,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            // SAFETY: the caller's `c` holds `m × n` elements.
            (0..m * n).for_each(|i| unsafe { c.at(i).write(T::ZERO) });
        }
        return;
    }
    let last = |x: Mat<T>, r: usize, cc: usize| (r - 1) * x.row_stride + (cc - 1) * x.col_stride;
    assert!(last(a, m, k) < a.data.len() && last(b, k, n) < b.data.len());
    let threads = if m * n * k >= 1 << 18 {
        rayon::current_num_threads()
    } else {
        1
    };
    let split_rows = m >= n;
    let long = if split_rows { m } else { n };
    // Strips a multiple of the widest microkernel tile, so none is ragged twice.
    let strip = long.div_ceil(threads).next_multiple_of(64);
    let run = |i: usize| {
        let (first, len) = (i * strip, strip.min(long - i * strip));
        // SAFETY: strips cover disjoint rows (or columns) of `c`, and every
        // operand index stays inside the bounds asserted above.
        unsafe {
            if split_rows {
                let a = Mat {
                    data: &a.data[first * a.row_stride..],
                    ..a
                };
                gemm_serial((len, n, k), a, b, c.at(first * n), n, accumulate);
            } else {
                let b = Mat {
                    data: &b.data[first * b.col_stride..],
                    ..b
                };
                gemm_serial((m, len, k), a, b, c.at(first), n, accumulate);
            }
        }
    };
    let strips = long.div_ceil(strip);
    if strips == 1 {
        run(0);
    } else {
        (0..strips).into_par_iter().for_each(run);
    }
}

/// The output pointer, shared by strips that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SharedOut<T>(*mut T);
// SAFETY: each strip writes only its own rows or columns.
unsafe impl<T> Send for SharedOut<T> {}
unsafe impl<T> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// # Safety
    /// `offset` must be inside the output slice.
    unsafe fn at(self, offset: usize) -> *mut T {
        unsafe { self.0.add(offset) }
    }
}

/// One single-threaded GEMM into `c`, whose rows are `ldc` apart.
///
/// # Safety
/// `c` must hold an `m × n` block with row stride `ldc` that nothing else
/// reads or writes meanwhile; `a` and `b` must cover `m × k` and `k × n`.
unsafe fn gemm_serial<T: Real>(
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    c: *mut T,
    ldc: usize,
    accumulate: bool,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `c = [c +] a · b` by the definition, in f64.
    fn naive(
        (m, n, k): (usize, usize, usize),
        a: Mat<f64>,
        b: Mat<f64>,
        c: &mut [f64],
        accumulate: bool,
    ) {
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|p| {
                        a.data[i * a.row_stride + p * a.col_stride]
                            * b.data[p * b.row_stride + j * b.col_stride]
                    })
                    .sum();
                c[i * n + j] = if accumulate { c[i * n + j] + dot } else { dot };
            }
        }
    }

    #[test]
    fn strips_match_the_definition() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let value = |i: usize| ((i * 7919) % 23) as f64 - 11.0;
        // Tall (row strips), wide (column strips, ragged), small (one strip);
        // row-major and transposed operands; with and without accumulation.
        for (m, n, k) in [(301, 70, 40), (33, 517, 29), (5, 6, 7)] {
            let a_data: Vec<f64> = (0..m * k).map(value).collect();
            let b_data: Vec<f64> = (0..k * n).map(|i| value(i + 5)).collect();
            for (a, b) in [
                (Mat::rows(&a_data, k), Mat::rows(&b_data, n)),
                (Mat::transposed(&a_data, m), Mat::transposed(&b_data, k)),
            ] {
                for accumulate in [false, true] {
                    let start: Vec<f64> = (0..m * n).map(|i| value(i + 3)).collect();
                    let (mut got, mut want) = (start.clone(), start);
                    pool.install(|| matmul((m, n, k), a, b, &mut got, accumulate));
                    naive((m, n, k), a, b, &mut want, accumulate);
                    assert_eq!(got, want, "{m}x{n}x{k}, accumulate {accumulate}");
                }
            }
        }
    }
}
