//! Fully connected layer: `y = x·wᵀ + b`, x `[n,in]`, w `[out,in]` (PyTorch's
//! layout), b `[out]`.

mod cuda;

use super::real::{Mat, Real, matmul, matmul_into, uninit_filled};
use super::with_float;
use crate::Tensor;
use crate::error::{Result, shape_err};
use rayon::prelude::*;

fn sizes(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    const OP: &str = "linear";
    let &[n, fin] = x.expect_rank(OP, 2)? else {
        unreachable!()
    };
    let &[fout, win] = w.expect_rank(OP, 2)? else {
        unreachable!()
    };
    if win != fin {
        return Err(shape_err(
            OP,
            format!(
                "input {} has {fin} features, weight {} expects {win}",
                x.shape(),
                w.shape()
            ),
        ));
    }
    if let Some(b) = b {
        if b.dims() != [fout] {
            return Err(shape_err(
                OP,
                format!("bias {} must be [{fout}]", b.shape()),
            ));
        }
        x.expect_same_dtype(OP, b)?;
    }
    x.expect_same_dtype(OP, w)?;
    Ok((n, fin, fout))
}

pub(crate) fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (n, fin, fout) = sizes(x, w, b)?;
    if let Some(g) = x.gpu() {
        let mut operands = vec![x, w];
        operands.extend(b);
        crate::ops::gpu::same_device("linear", &operands)?;
        return cuda::forward(g, x, w, b, (n, fin, fout));
    }
    with_float!("linear", x.dtype(), T => {
        let mut y = vec![T::ZERO; n * fout];
        if let Some(b) = b {
            let b = b.as_slice::<T>()?;
            y.chunks_mut(fout.max(1)).for_each(|row| row.copy_from_slice(b));
        }
        matmul((n, fout, fin), Mat::rows(x.as_slice()?, fin), Mat::transposed(w.as_slice()?, fin), &mut y, b.is_some());
        Tensor::from_vec(y, [n, fout])
    })
}

/// `(dx, dw, db)`, each computed only if wanted (`db` only with a bias).
pub(crate) fn backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    (want_dx, want_dw, want_db): (bool, bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (n, fin, fout) = sizes(x, w, None)?;
    x.expect_same_dtype("linear backward", dy)?;
    crate::error::same_shape("linear backward", dy.shape(), &crate::Shape::new([n, fout]))?;
    if let Some(g) = x.gpu() {
        crate::ops::gpu::same_device("linear backward", &[x, w, dy])?;
        return cuda::backward(g, x, w, dy, (n, fin, fout), (want_dx, want_dw, want_db));
    }
    with_float!("linear backward", x.dtype(), T => {
        let (dys, ws, xs) = (dy.as_slice::<T>()?, w.as_slice::<T>()?, x.as_slice::<T>()?);
        // The GEMMs write their outputs whole, so these are not zeroed first.
        let dx = if want_dx {
            let dx = uninit_filled(n * fin, Vec::new(), |dx| {
                matmul_into((n, fin, fout), Mat::rows(dys, fout), Mat::rows(ws, fin), dx)
            });
            Some(Tensor::from_vec(dx, [n, fin])?)
        } else {
            None
        };
        let dw = if want_dw {
            let dw = uninit_filled(fout * fin, Vec::new(), |dw| {
                matmul_into((fout, fin, n), Mat::transposed(dys, fout), Mat::rows(xs, fin), dw)
            });
            Some(Tensor::from_vec(dw, [fout, fin])?)
        } else {
            None
        };
        let db = if want_db {
            let db: Vec<T> = (0..fout)
                .into_par_iter()
                .map(|j| (0..n).map(|i| dys[i * fout + j]).sum())
                .collect();
            Some(Tensor::from_vec(db, [fout])?)
        } else {
            None
        };
        Ok((dx, dw, db))
    })
}
