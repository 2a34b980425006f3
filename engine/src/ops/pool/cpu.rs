//! CPU pooling, parallel over images.

use super::PoolGeometry;
use crate::ops::real::Real;
use rayon::prelude::*;

pub(super) fn max_forward<T: Real>(g: &PoolGeometry, x: &[T]) -> (Vec<T>, Vec<u32>) {
    let out_image = g.oh * g.ow * g.c;
    let mut y = vec![T::ZERO; g.n * out_image];
    let mut argmax = vec![0u32; y.len()];
    y.par_chunks_mut(out_image.max(1))
        .zip(argmax.par_chunks_mut(out_image.max(1)))
        .enumerate()
        .for_each(|(n, (y, am))| {
            for (o, (y, am)) in y.iter_mut().zip(am).enumerate() {
                let (oh, ow, ch) = (o / (g.ow * g.c), (o / g.c) % g.ow, o % g.c);
                let mut best: Option<(T, usize)> = None;
                for r in 0..g.p.kernel {
                    let ih = (oh * g.p.stride + r) as isize - g.p.padding as isize;
                    if ih < 0 || ih as usize >= g.h {
                        continue;
                    }
                    for s in 0..g.p.kernel {
                        let iw = (ow * g.p.stride + s) as isize - g.p.padding as isize;
                        if iw < 0 || iw as usize >= g.w {
                            continue;
                        }
                        let i = ((n * g.h + ih as usize) * g.w + iw as usize) * g.c + ch;
                        // Strictly greater: ties keep the first element in scan order.
                        if best.is_none_or(|(b, _)| x[i] > b) {
                            best = Some((x[i], i));
                        }
                    }
                }
                // padding ≤ kernel/2 guarantees every window holds an input element.
                let (v, i) = best.expect("pool window inside the input");
                *y = v;
                *am = i as u32;
            }
        });
    (y, argmax)
}

pub(super) fn max_backward<T: Real>(dy: &[T], argmax: &[u32], input_len: usize) -> Vec<T> {
    let mut dx = vec![T::ZERO; input_len];
    for (&g, &i) in dy.iter().zip(argmax) {
        dx[i as usize] += g;
    }
    dx
}

pub(super) fn avg_forward<T: Real>(x: &[T], n: usize, pixels: usize, c: usize) -> Vec<T> {
    let mut y = vec![T::ZERO; n * c];
    if pixels == 0 {
        return y;
    }
    y.par_chunks_mut(c.max(1))
        .zip(x.par_chunks((pixels * c).max(1)))
        .for_each(|(y, img)| {
            let mut acc = vec![0.0f64; c];
            for px in img.chunks(c) {
                acc.iter_mut().zip(px).for_each(|(a, &v)| *a += v.to_f64());
            }
            y.iter_mut()
                .zip(acc)
                .for_each(|(y, a)| *y = T::from_f64(a / pixels as f64));
        });
    y
}

pub(super) fn avg_backward<T: Real>(dy: &[T], pixels: usize, c: usize) -> Vec<T> {
    let scale = T::from_f64(1.0 / pixels as f64);
    let mut dx = vec![T::ZERO; dy.len() * pixels];
    dx.par_chunks_mut((pixels * c).max(1))
        .zip(dy.par_chunks(c.max(1)))
        .for_each(|(dx, dy)| {
            for px in dx.chunks_mut(c) {
                px.iter_mut().zip(dy).for_each(|(d, &g)| *d = g * scale);
            }
        });
    dx
}
