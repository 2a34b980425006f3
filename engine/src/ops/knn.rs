//! The kNN monitor's device kernels (`kernels/cuda/knn.cu`): rows scaled to
//! unit norm, and each query's top-k weighted vote, so the memory bank and
//! the similarities never leave the GPU. The similarities themselves are a
//! matrix product (cuBLAS, through [`crate::Tape::linear`]).

use crate::ops::gpu::{BLOCK, same_device};
use crate::{DType, Error, Result, Tensor};
use kernels::{Arg, LaunchConfig};

/// The most neighbours and classes one vote holds in shared memory.
pub const MAX_VOTE: (usize, usize) = (1024, 2048);

fn gpu_f32(op: &'static str, t: &Tensor, rank: usize) -> Result<()> {
    t.expect_dtype(op, &[DType::F32])?;
    t.expect_rank(op, rank)?;
    if t.gpu().is_none() {
        return Err(Error::Device {
            op,
            device: t.device(),
        });
    }
    Ok(())
}

/// Scales each row of `x` (`[rows, dim]` f32 on a GPU) to unit L2 norm in
/// place, as the CPU monitor does (f64 sums, norms clamped to 1e-12); false
/// when a value was NaN or ±∞. One launch and a 4-byte read.
pub fn normalize_rows(x: &mut Tensor) -> Result<bool> {
    gpu_f32("normalize_rows", x, 2)?;
    let (rows, dim) = (x.dims()[0], x.dims()[1]);
    let flag = Tensor::zeros([1], DType::F32, x.device())?;
    // In place: refused while another tensor shares the storage.
    x.gpu_mut()?;
    let gpu = &x.gpu().expect("checked on a GPU").gpu;
    gpu.launch(
        "knn_normalize_rows",
        LaunchConfig::for_elements(rows, BLOCK),
        &[
            x.arg(),
            Arg::I64(rows as i64),
            Arg::I64(dim as i64),
            flag.arg(),
        ],
    )?;
    Ok(flag.to_vec::<f32>()?[0].to_bits() == 0)
}

/// The class each query row of `sims` (`[queries, rows]` cosine
/// similarities, f32 on a GPU) votes for: its `k` most similar memory rows
/// (equal similarities taken in memory order), each weighted by
/// `exp((sim − best) / temperature)`, summed per class of `labels`
/// (`[rows]` i64 in `0..classes`, same device); the largest sum wins, the
/// lowest class on a tie. One launch and one read of the answers.
pub fn knn_vote(
    sims: &Tensor,
    labels: &Tensor,
    k: usize,
    temperature: f64,
    classes: usize,
) -> Result<Vec<usize>> {
    gpu_f32("knn_vote", sims, 2)?;
    same_device("knn_vote", &[sims, labels])?;
    labels.expect_dtype("knn_vote (labels)", &[DType::I64])?;
    let (queries, rows) = (sims.dims()[0], sims.dims()[1]);
    let (max_k, max_classes) = MAX_VOTE;
    if labels.numel() != rows || !(1..=rows.min(max_k)).contains(&k) || classes > max_classes {
        return Err(Error::Shape {
            op: "knn_vote",
            detail: format!(
                "{rows} memory rows with {} labels, k {k} (1 to {max_k}), {classes} classes (at most {max_classes})",
                labels.numel()
            ),
        });
    }
    let predicted = Tensor::zeros([queries.max(1)], DType::I64, sims.device())?;
    if queries == 0 {
        return Ok(Vec::new());
    }
    let g = sims.gpu().expect("checked on a GPU");
    let shared = (2 * k + classes) * 8;
    g.gpu.launch(
        "knn_vote",
        LaunchConfig::blocks(queries as u32, 256).with_shared(shared as u32),
        &[
            sims.arg(),
            labels.arg(),
            Arg::I64(rows as i64),
            Arg::I32(k as i32),
            Arg::I32(classes as i32),
            Arg::U64(temperature.to_bits()),
            predicted.arg(),
        ],
    )?;
    Ok(predicted
        .to_vec::<i64>()?
        .into_iter()
        .map(|c| c as usize)
        .collect())
}
