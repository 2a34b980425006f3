//! Fully connected layers on a GPU: the products through cuBLAS `gemm_ex`
//! (16-bit or f32 inputs, fp32 accumulation; TF32 off), the bias through
//! `kernels/cuda/linear.cu`. The emulator does the products on the host.

use crate::cuda_libs::{cublas_ok, with_libs};
use crate::error::Result;
use crate::ops::gpu::{BLOCK, kernel_for, on_host};
use crate::tensor::GpuBuffer;
use crate::{DType, Device, Tensor};
use cudarc::cublas::sys as cublas;
use kernels::{Arg, LaunchConfig};

fn data_type(dtype: DType) -> Result<cublas::cudaDataType_t> {
    Ok(match dtype {
        DType::F32 => cublas::cudaDataType_t::CUDA_R_32F,
        DType::BF16 => cublas::cudaDataType_t::CUDA_R_16BF,
        DType::F16 => cublas::cudaDataType_t::CUDA_R_16F,
        other => {
            return Err(crate::Error::DType {
                op: "linear",
                expected: "f32, bf16 or f16 on a GPU".into(),
                got: other,
            });
        }
    })
}

/// Row-major `c[m,n] = op(a)·op(b)` expressed for column-major cuBLAS: the
/// caller passes the column-major view (`c` is `[n, m]` there), so this is a
/// thin wrapper over `cublasGemmEx` with fp32 compute.
#[allow(clippy::too_many_arguments)]
fn gemm(
    g: &GpuBuffer,
    (trans_a, trans_b): (bool, bool),
    (m, n, k): (usize, usize, usize),
    (a, lda): (&Tensor, usize),
    (b, ldb): (&Tensor, usize),
    (c, ldc): (&Tensor, usize),
) -> Result<()> {
    let op = |t| {
        if t {
            cublas::cublasOperation_t::CUBLAS_OP_T
        } else {
            cublas::cublasOperation_t::CUBLAS_OP_N
        }
    };
    let dt = data_type(c.dtype())?;
    let (one, zero) = (1.0f32, 0.0f32);
    with_libs(g.device, &g.gpu, |libs| {
        // SAFETY: the three matrices are device buffers of the sizes the
        // dimensions and leading dimensions describe.
        g.gpu.timed("cublas gemm", || unsafe {
            cublas_ok(
                "cublasGemmEx",
                cublas::cublasGemmEx(
                    libs.cublas,
                    op(trans_a),
                    op(trans_b),
                    m as i32,
                    n as i32,
                    k as i32,
                    (&one as *const f32).cast(),
                    a.device_ptr() as *const _,
                    dt,
                    lda as i32,
                    b.device_ptr() as *const _,
                    dt,
                    ldb as i32,
                    (&zero as *const f32).cast(),
                    c.device_ptr() as *mut _,
                    dt,
                    ldc as i32,
                    cublas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                ),
            )
        })?
    })
}

fn add_bias(g: &GpuBuffer, y: &Tensor, b: &Tensor, (n, fout): (usize, usize)) -> Result<()> {
    let kernel = kernel_for!("linear", y.dtype(), "bias_add_rows")?;
    let cfg = LaunchConfig::for_elements(n * fout, BLOCK);
    g.gpu.launch(
        kernel,
        cfg,
        &[y.arg(), b.arg(), Arg::I64(n as i64), Arg::I32(fout as i32)],
    )?;
    Ok(())
}

pub(super) fn forward(
    g: &GpuBuffer,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    (n, fin, fout): (usize, usize, usize),
) -> Result<Tensor> {
    let dtype = x.dtype();
    let y = if g.device == Device::Emulator {
        let [y] = on_host(g, dtype, [x, w], [Some([n, fout].into())], |[x, w]| {
            Ok([Some(super::forward(&x, &w, None)?)])
        })?;
        y.expect("forward output")
    } else {
        let y = Tensor::gpu_empty(g, [n, fout], dtype)?;
        // y[n,fout] = x·wᵀ; column-major: yᵀ[fout,n] = w[fout,fin]·xᵀ[fin,n].
        gemm(
            g,
            (true, false),
            (fout, n, fin),
            (w, fin),
            (x, fin),
            (&y, fout),
        )?;
        y
    };
    if let Some(b) = b {
        add_bias(g, &y, b, (n, fout))?;
    }
    Ok(y)
}

pub(super) fn backward(
    g: &GpuBuffer,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    (n, fin, fout): (usize, usize, usize),
    (want_dx, want_dw, want_db): (bool, bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let dtype = x.dtype();
    let (dx, dw) = if g.device == Device::Emulator {
        let shapes = [
            want_dx.then(|| [n, fin].into()),
            want_dw.then(|| [fout, fin].into()),
        ];
        let [dx, dw] = on_host(g, dtype, [x, w, dy], shapes, move |[x, w, dy]| {
            let (dx, dw, _) = super::backward(&x, &w, &dy, (want_dx, want_dw, false))?;
            Ok([dx, dw])
        })?;
        (dx, dw)
    } else {
        let dx = if want_dx {
            let dx = Tensor::gpu_empty(g, [n, fin], dtype)?;
            // dx[n,fin] = dy·w; column-major: dxᵀ[fin,n] = wᵀ[fin,fout]·dyᵀ[fout,n].
            gemm(
                g,
                (false, false),
                (fin, n, fout),
                (w, fin),
                (dy, fout),
                (&dx, fin),
            )?;
            Some(dx)
        } else {
            None
        };
        let dw = if want_dw {
            let dw = Tensor::gpu_empty(g, [fout, fin], dtype)?;
            // dw[fout,fin] = dyᵀ·x; column-major: dwᵀ[fin,fout] = xᵀ[fin,n]·dy[n,fout].
            gemm(
                g,
                (false, true),
                (fin, fout, n),
                (x, fin),
                (dy, fout),
                (&dw, fin),
            )?;
            Some(dw)
        } else {
            None
        };
        (dx, dw)
    };
    let db = if want_db {
        let db = Tensor::gpu_empty(g, [fout], dtype)?;
        let kernel = kernel_for!("linear backward", dtype, "bias_grad")?;
        g.gpu.launch(
            kernel,
            LaunchConfig::for_elements(fout, BLOCK),
            &[
                dy.arg(),
                db.arg(),
                Arg::I64(n as i64),
                Arg::I32(fout as i32),
            ],
        )?;
        Some(db)
    } else {
        None
    };
    Ok((dx, dw, db))
}
