//! The k-nearest-neighbour monitor of self-supervised learning libraries
//! (InstDisc, MoCo, BYOL): classify each query by a similarity-weighted vote of
//! its nearest labelled memory rows, and report top-1 accuracy.
//!
//! Rows are L2-normalised, so similarity is cosine similarity. Each of the `k`
//! most similar memory rows votes for its label with weight `exp(sim / t)`;
//! the class with the largest total wins.
//!
//! ```
//! use trainer::knn::{Features, knn_accuracy};
//! let memory = Features { data: vec![1.0, 0.0, 0.0, 1.0], dim: 2, labels: vec![0, 1] };
//! let queries = Features { data: vec![0.9, 0.1, 0.2, 0.8], dim: 2, labels: vec![0, 1] };
//! assert_eq!(knn_accuracy(&memory, &queries, 1, 0.1, 2)?, 1.0);
//! # Ok::<(), trainer::Error>(())
//! ```

use crate::{Error, Result};
use engine::{Tape, Tensor};
use rayon::prelude::*;

/// Queries per similarity block: bounds the block to `QUERY_CHUNK × memory`
/// floats (≈120 MB for 60k memory rows) instead of the whole query × memory
/// matrix.
const QUERY_CHUNK: usize = 512;

/// Norms are clamped here before dividing, as in `F.normalize`, so all-zero
/// rows stay zero instead of turning into NaN.
const NORM_EPS: f64 = 1e-12;

/// Labelled feature vectors, one row per sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Features {
    /// Row-major `[n, dim]` values.
    pub data: Vec<f32>,
    /// Values per row.
    pub dim: usize,
    /// The class index of each row (`n` of them).
    pub labels: Vec<i64>,
}

impl Features {
    /// Number of rows (one per label).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Top-1 accuracy in `[0, 1]` of the weighted kNN classifier over `queries`,
/// with `memory` as the labelled bank.
///
/// Both sets are L2-normalised row by row; each query takes the `k` most
/// similar memory rows (`k` is clamped to the memory size; equal similarities
/// prefer the earlier memory row), weights each by `exp(sim / temperature)`,
/// sums the weights per label and predicts the largest sum (ties go to the
/// lowest class index). The usual monitor settings are `k = 200`,
/// `temperature = 0.1`.
///
/// Errors (nothing panics) when the two sets' dimensions differ or a set's
/// data does not hold `len() × dim` values, when either set is empty, when a
/// label is outside `0..classes`, when `k` is 0 or `temperature` is not a
/// positive finite number, and when a feature is NaN or infinite.
pub fn knn_accuracy(
    memory: &Features,
    queries: &Features,
    k: usize,
    temperature: f64,
    classes: usize,
) -> Result<f64> {
    let predicted = knn_predict(memory, queries, k, temperature, classes, QUERY_CHUNK)?;
    Ok(accuracy(&predicted, &queries.labels))
}

/// The share of `predicted` classes equal to their `labels`.
fn accuracy(predicted: &[usize], labels: &[i64]) -> f64 {
    let correct = predicted
        .iter()
        .zip(labels)
        .filter(|&(&p, &label)| i64::try_from(p).is_ok_and(|p| p == label))
        .count();
    correct as f64 / labels.len() as f64
}

/// Labelled feature rows on a GPU.
#[derive(Clone, Debug)]
pub struct DeviceFeatures {
    /// `[n, dim]` f32 on the device.
    pub data: Tensor,
    /// The class index of each row.
    pub labels: Vec<i64>,
}

/// Bytes of similarities one chunk of queries may hold on the device.
const DEVICE_CHUNK_BYTES: usize = 256 << 20;

/// [`knn_accuracy`] with everything on the GPU the features are on: rows
/// normalised there, similarities by cuBLAS a chunk of queries at a time,
/// each query's top-k and vote by a kernel; only the predicted classes come
/// back. The same rules and the same errors as on the CPU (`k` at most
/// 1024 and at most 2048 classes, the vote's shared memory).
pub fn knn_accuracy_device(
    memory: DeviceFeatures,
    queries: DeviceFeatures,
    k: usize,
    temperature: f64,
    classes: usize,
) -> Result<f64> {
    let labels = queries.labels.clone();
    let predicted = knn_predict_device(
        memory,
        queries,
        (k, temperature, classes),
        DEVICE_CHUNK_BYTES,
    )?;
    Ok(accuracy(&predicted, &labels))
}

/// The predicted class of every query, on the device, with at most
/// `chunk_bytes` of similarities at a time.
fn knn_predict_device(
    memory: DeviceFeatures,
    queries: DeviceFeatures,
    (k, temperature, classes): (usize, f64, usize),
    chunk_bytes: usize,
) -> Result<Vec<usize>> {
    check_settings(k, temperature, classes)?;
    for (f, what) in [(&memory, "memory"), (&queries, "query")] {
        check_labels(&f.labels, what, classes)?;
        if f.data.dims().len() != 2 || f.data.dims()[0] != f.labels.len() || f.data.dims()[1] == 0 {
            return Err(shape_error(format!(
                "{what} set has {} features for {} labels",
                f.data.shape(),
                f.labels.len()
            )));
        }
    }
    let (rows, dim) = (memory.labels.len(), memory.data.dims()[1]);
    if queries.data.dims()[1] != dim {
        return Err(shape_error(format!(
            "memory rows have {dim} values but query rows have {}",
            queries.data.dims()[1]
        )));
    }
    check_not_empty(rows, queries.labels.len())?;
    let k = k.min(rows);
    let labels = Tensor::from_vec(memory.labels, [rows])?.to_device(memory.data.device())?;
    let (mut bank, mut query_rows) = (memory.data, queries.data);
    for (set, what) in [(&mut bank, "memory"), (&mut query_rows, "query")] {
        if !engine::ops::knn::normalize_rows(set)? {
            return Err(Error::Diverged(format!(
                "kNN: a {what} row has a non-finite feature"
            )));
        }
    }
    let n = queries.labels.len();
    let chunk = (chunk_bytes / (4 * rows)).clamp(1, n);
    let flat = query_rows.reshape([n * dim])?;
    let mut tape = Tape::no_grad();
    let bank = tape.constant(bank);
    let mut predicted = Vec::with_capacity(n);
    for start in (0..n).step_by(chunk) {
        let c = chunk.min(n - start);
        let q = tape.constant(flat.narrow(start * dim, c * dim)?.reshape([c, dim])?);
        let sims = tape.linear(&q, &bank, None)?;
        predicted.extend(engine::ops::knn::knn_vote(
            sims.value(),
            &labels,
            k,
            temperature,
            classes,
        )?);
    }
    Ok(predicted)
}

/// `memory` and `queries` with the per-dimension mean of the memory's rows
/// subtracted (the raw-pixel kNN baseline runs on centred pixels, so that
/// cosine similarity compares deviations from the average image rather than
/// overall brightness; the queries are centred with what the memory shows, as
/// a fitted model would be).
///
/// Feature sets without rows or with `dim == 0` come back unchanged.
pub fn centre_on(memory: &Features, queries: &Features) -> (Features, Features) {
    let dim = memory.dim;
    if dim == 0 || memory.data.len() < dim || queries.dim != dim {
        return (memory.clone(), queries.clone());
    }
    let rows = memory.data.len() / dim;
    // Sequential f64 sums: exact enough for 60k rows and independent of the
    // thread count.
    let mut mean = vec![0f64; dim];
    for row in memory.data.chunks_exact(dim) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    for m in &mut mean {
        *m /= rows as f64;
    }
    let subtract = |f: &Features| {
        let mut data = f.data.clone();
        data.par_chunks_mut(dim).for_each(|row| {
            for (v, &m) in row.iter_mut().zip(&mean) {
                *v = (f64::from(*v) - m) as f32;
            }
        });
        Features {
            data,
            dim,
            labels: f.labels.clone(),
        }
    };
    (subtract(memory), subtract(queries))
}

/// The predicted class of every query, computing similarities `chunk` queries
/// at a time.
fn knn_predict(
    memory: &Features,
    queries: &Features,
    k: usize,
    temperature: f64,
    classes: usize,
    chunk: usize,
) -> Result<Vec<usize>> {
    check_settings(k, temperature, classes)?;
    check(memory, "memory", classes)?;
    check(queries, "query", classes)?;
    if memory.dim != queries.dim {
        return Err(shape_error(format!(
            "memory rows have {} values but query rows have {}",
            memory.dim, queries.dim
        )));
    }
    check_not_empty(memory.len(), queries.len())?;

    let (rows, dim) = (memory.len(), memory.dim);
    // Neighbour indices are u32 to halve the per-query selection buffer.
    if u32::try_from(rows).is_err() {
        return Err(Error::Usage(format!(
            "kNN: {rows} memory rows is more than the monitor supports"
        )));
    }
    let k = k.min(rows);
    // `check` proved every label is in 0..classes.
    let memory_labels: Vec<usize> = memory.labels.iter().map(|&l| l as usize).collect();
    let mut tape = Tape::no_grad();
    let bank = tape.constant(Tensor::from_vec(normalised(memory), [rows, dim])?);
    let query_rows = normalised(queries);
    let mut predicted = Vec::with_capacity(queries.len());
    for block in query_rows.chunks(chunk.max(1) * dim) {
        let q = tape.constant(Tensor::from_vec(block.to_vec(), [block.len() / dim, dim])?);
        let sims = tape.linear(&q, &bank, None)?;
        let sims = sims.value().as_slice::<f32>()?;
        let block_predictions: Vec<usize> = sims
            .par_chunks(rows)
            // Each rayon job reuses one index buffer across its queries.
            .map_init(
                || Vec::with_capacity(rows),
                |order, row| vote(row, &memory_labels, k, temperature, classes, order),
            )
            .collect();
        predicted.extend(block_predictions);
    }
    Ok(predicted)
}

/// The class that the `k` memory rows most similar to one query (`sims`, one
/// similarity per memory row) vote for.
fn vote(
    sims: &[f32],
    labels: &[usize],
    k: usize,
    temperature: f64,
    classes: usize,
    order: &mut Vec<u32>,
) -> usize {
    order.clear();
    order.extend(0..sims.len() as u32);
    // Most similar first; equal similarities go to the lower memory index so
    // the neighbour set is fully determined by the data.
    let closer = |a: &u32, b: &u32| {
        sims[*b as usize]
            .total_cmp(&sims[*a as usize])
            .then(a.cmp(b))
    };
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, closer);
    }
    let neighbours = &order[..k];
    // Weights relative to the best neighbour: a common factor that leaves the
    // argmax unchanged but keeps exp() finite for tiny temperatures.
    let best = neighbours
        .iter()
        .map(|&i| f64::from(sims[i as usize]))
        .fold(f64::NEG_INFINITY, f64::max);
    let mut scores = vec![0f64; classes];
    for &i in neighbours {
        let sim = f64::from(sims[i as usize]);
        scores[labels[i as usize]] += ((sim - best) / temperature).exp();
    }
    let mut winner = 0;
    for (class, &score) in scores.iter().enumerate() {
        if score > scores[winner] {
            winner = class;
        }
    }
    winner
}

/// Fails unless `k`, `temperature` and `classes` make a classifier.
fn check_settings(k: usize, temperature: f64, classes: usize) -> Result<()> {
    if k == 0 {
        return Err(Error::Usage("kNN: k must be at least 1".into()));
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Usage(format!(
            "kNN: the temperature must be a positive number, got {temperature}"
        )));
    }
    if classes == 0 {
        return Err(Error::Usage("kNN: there must be at least one class".into()));
    }
    Ok(())
}

/// Fails when the memory bank or the queries are empty.
fn check_not_empty(memory: usize, queries: usize) -> Result<()> {
    if memory == 0 {
        return Err(Error::Usage("kNN: the memory bank is empty".into()));
    }
    if queries == 0 {
        return Err(Error::Usage("kNN: there are no queries".into()));
    }
    Ok(())
}

/// Fails unless every label is in `0..classes`.
fn check_labels(labels: &[i64], what: &str, classes: usize) -> Result<()> {
    if let Some((row, &label)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| !usize::try_from(l).is_ok_and(|l| l < classes))
    {
        return Err(Error::Usage(format!(
            "kNN: {what} row {row} has label {label}, outside 0..{classes}"
        )));
    }
    Ok(())
}

/// Fails unless `f` holds `len() × dim` finite values with labels in `0..classes`.
fn check(f: &Features, what: &str, classes: usize) -> Result<()> {
    if f.dim == 0 {
        return Err(shape_error(format!("{what} rows have no values (dim 0)")));
    }
    if f.data.len() != f.len() * f.dim {
        return Err(shape_error(format!(
            "{what} set has {} values, expected {} rows × {} = {}",
            f.data.len(),
            f.len(),
            f.dim,
            f.len() * f.dim
        )));
    }
    check_labels(&f.labels, what, classes)?;
    if let Some(at) = f.data.iter().position(|v| !v.is_finite()) {
        return Err(Error::Diverged(format!(
            "kNN: {what} row {} has a non-finite feature",
            at / f.dim
        )));
    }
    Ok(())
}

fn shape_error(detail: String) -> Error {
    engine::Error::Shape { op: "kNN", detail }.into()
}

/// The rows of `f` scaled to unit L2 norm.
fn normalised(f: &Features) -> Vec<f32> {
    let mut data = f.data.clone();
    data.par_chunks_mut(f.dim).for_each(|row| {
        let norm = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        let scale = 1.0 / norm.max(NORM_EPS);
        for v in row {
            *v = (f64::from(*v) * scale) as f32;
        }
    });
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(rows: &[&[f32]], labels: &[i64]) -> Features {
        Features {
            data: rows.concat(),
            dim: rows.first().map_or(0, |r| r.len()),
            labels: labels.to_vec(),
        }
    }

    /// Brute-force reference: full similarity matrix in f64, full sort.
    fn reference(
        memory: &Features,
        queries: &Features,
        k: usize,
        t: f64,
        classes: usize,
    ) -> Vec<usize> {
        let unit = |row: &[f32]| {
            let n = row
                .iter()
                .map(|&v| f64::from(v).powi(2))
                .sum::<f64>()
                .sqrt();
            row.iter()
                .map(|&v| f64::from(v) / n.max(NORM_EPS))
                .collect::<Vec<_>>()
        };
        let bank: Vec<Vec<f64>> = memory.data.chunks(memory.dim).map(unit).collect();
        queries
            .data
            .chunks(queries.dim)
            .map(|q| {
                let q = unit(q);
                let mut sims: Vec<(f64, usize)> = bank
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (m.iter().zip(&q).map(|(a, b)| a * b).sum(), i))
                    .collect();
                sims.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let mut scores = vec![0.0; classes];
                for &(s, i) in sims.iter().take(k) {
                    scores[memory.labels[i] as usize] += (s / t).exp();
                }
                (0..classes).fold(0, |w, c| if scores[c] > scores[w] { c } else { w })
            })
            .collect()
    }

    /// Deterministic pseudo-random features in `classes` noisy clusters.
    fn clustered(n: usize, dim: usize, classes: usize, seed: u64) -> Features {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let mut data = Vec::with_capacity(n * dim);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let class = i % classes;
            for d in 0..dim {
                let centre = if d % classes == class { 1.0 } else { 0.0 };
                data.push(centre + 1.5 * next());
            }
            labels.push(class as i64);
        }
        Features { data, dim, labels }
    }

    #[test]
    fn hand_made_example() -> Result<()> {
        // Class 0 points east, class 1 north; scale must not matter (cosine).
        let memory = features(
            &[&[1.0, 0.0], &[5.0, 0.5], &[0.0, 2.0], &[0.2, 1.0]],
            &[0, 0, 1, 1],
        );
        let queries = features(&[&[3.0, 1.0], &[1.0, 4.0], &[1.0, 1.2]], &[0, 1, 0]);
        // The third query is labelled east but leans north: 2 of 3 right.
        let acc = knn_accuracy(&memory, &queries, 2, 0.1, 2)?;
        assert!((acc - 2.0 / 3.0).abs() < 1e-12, "{acc}");
        assert_eq!(
            knn_predict(&memory, &queries, 2, 0.1, 2, QUERY_CHUNK)?,
            vec![0, 1, 1]
        );
        Ok(())
    }

    #[test]
    fn k_larger_than_memory_uses_all_rows() -> Result<()> {
        let memory = features(&[&[1.0, 0.0], &[0.0, 1.0], &[0.1, 1.0]], &[0, 1, 1]);
        let queries = features(&[&[1.0, 0.05]], &[0]);
        // With all three rows the nearest one still wins at t = 0.1 ...
        assert_eq!(knn_accuracy(&memory, &queries, 200, 0.1, 2)?, 1.0);
        // ... and k = 200 is the same as k = 3.
        assert_eq!(
            knn_predict(&memory, &queries, 200, 0.1, 2, 4)?,
            knn_predict(&memory, &queries, 3, 0.1, 2, 4)?
        );
        Ok(())
    }

    #[test]
    fn ties_go_to_the_lowest_class() -> Result<()> {
        // Two identical memory rows with different labels: equal scores.
        let memory = features(&[&[1.0, 0.0], &[1.0, 0.0]], &[2, 1]);
        let queries = features(&[&[1.0, 0.0]], &[1]);
        assert_eq!(knn_predict(&memory, &queries, 2, 0.1, 3, 8)?, vec![1]);
        // Equal similarities at the k-th place: the earlier memory row is kept.
        assert_eq!(knn_predict(&memory, &queries, 1, 0.1, 3, 8)?, vec![2]);
        Ok(())
    }

    #[test]
    fn temperature_trades_similarity_against_votes() -> Result<()> {
        // One very close class-0 row against two fairly close class-1 rows.
        let memory = features(&[&[1.0, 0.0], &[0.8, 0.6], &[0.8, -0.6]], &[0, 1, 1]);
        let queries = features(&[&[1.0, 0.0]], &[0]);
        // Sharp weights: the closest row dominates (e^0 vs 2·e^-2).
        assert_eq!(knn_accuracy(&memory, &queries, 3, 0.1, 2)?, 1.0);
        // Flat weights: it becomes a majority vote (1 vs ~2·0.82).
        assert_eq!(knn_accuracy(&memory, &queries, 3, 1.0, 2)?, 0.0);
        // A tiny temperature must not overflow exp() into a NaN/inf tie.
        assert_eq!(knn_accuracy(&memory, &queries, 3, 1e-6, 2)?, 1.0);
        Ok(())
    }

    #[test]
    fn chunking_matches_the_reference() -> Result<()> {
        let memory = clustered(300, 16, 5, 1);
        let queries = clustered(1100, 16, 5, 2);
        let expected = reference(&memory, &queries, 20, 0.1, 5);
        for chunk in [1, 7, 512, 5000] {
            assert_eq!(
                knn_predict(&memory, &queries, 20, 0.1, 5, chunk)?,
                expected,
                "chunk {chunk}"
            );
        }
        let correct = expected
            .iter()
            .zip(&queries.labels)
            .filter(|&(&p, &l)| p as i64 == l)
            .count();
        let acc = knn_accuracy(&memory, &queries, 20, 0.1, 5)?;
        assert_eq!(acc, correct as f64 / queries.len() as f64);
        // The clusters are separable enough for the monitor to see them.
        assert!(acc > 0.6, "{acc}");
        Ok(())
    }

    fn on_emulator(f: &Features) -> DeviceFeatures {
        DeviceFeatures {
            data: Tensor::from_vec(f.data.clone(), [f.len(), f.dim])
                .unwrap()
                .to_device(engine::Device::Emulator)
                .unwrap(),
            labels: f.labels.clone(),
        }
    }

    /// The device's normalisation, similarities, top-k and vote give the
    /// CPU's predictions, query for query, over several chunkings, k and
    /// temperatures, with ties at the k-th place and between classes.
    #[test]
    fn the_device_vote_predicts_as_the_cpu_does() -> Result<()> {
        let memory = clustered(300, 16, 5, 1);
        let queries = clustered(130, 16, 5, 2);
        for (k, t, chunk_bytes) in [
            (20, 0.1, 1 << 20),
            (1, 0.1, 4 * 300 * 7),
            (300, 1.0, 1),
            (7, 1e-6, 1 << 20),
        ] {
            let want = knn_predict(&memory, &queries, k, t, 5, QUERY_CHUNK)?;
            let got = knn_predict_device(
                on_emulator(&memory),
                on_emulator(&queries),
                (k, t, 5),
                chunk_bytes,
            )?;
            assert_eq!(got, want, "k {k}, t {t}, chunk {chunk_bytes} bytes");
        }
        // Equal rows of different classes: the earlier rows win the k-th
        // place; equal scores go to the lowest class.
        let memory = features(
            &[&[1.0, 0.0], &[1.0, 0.0], &[1.0, 0.0], &[0.0, 1.0]],
            &[2, 1, 0, 1],
        );
        let queries = features(&[&[1.0, 0.0], &[0.0, 1.0], &[0.0, 0.0]], &[1, 1, 0]);
        for k in 1..=4 {
            let want = knn_predict(&memory, &queries, k, 0.1, 3, QUERY_CHUNK)?;
            let got = knn_predict_device(
                on_emulator(&memory),
                on_emulator(&queries),
                (k, 0.1, 3),
                1 << 20,
            )?;
            assert_eq!(got, want, "k {k}");
        }
        let acc = knn_accuracy_device(on_emulator(&memory), on_emulator(&queries), 2, 0.1, 3)?;
        assert_eq!(acc, knn_accuracy(&memory, &queries, 2, 0.1, 3)?);
        // NaN features are refused on the device too.
        let nan = features(&[&[f32::NAN, 0.0]], &[0]);
        let err =
            knn_accuracy_device(on_emulator(&memory), on_emulator(&nan), 1, 0.1, 3).unwrap_err();
        assert!(err.to_string().contains("non-finite"), "{err}");
        Ok(())
    }

    #[test]
    fn zero_rows_do_not_produce_nan() -> Result<()> {
        let memory = features(&[&[0.0, 0.0], &[0.0, 1.0]], &[0, 1]);
        let queries = features(&[&[0.0, 2.0], &[0.0, 0.0]], &[1, 0]);
        // The zero query has similarity 0 to both rows: tie → class 0.
        assert_eq!(knn_accuracy(&memory, &queries, 2, 0.1, 2)?, 1.0);
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() {
        let memory = features(&[&[1.0, 0.0], &[0.0, 1.0]], &[0, 1]);
        let queries = features(&[&[1.0, 0.0]], &[0]);
        let run = |m: &Features, q: &Features, k, t, c| {
            knn_accuracy(m, q, k, t, c).map_err(|e| e.to_string())
        };
        let narrow = features(&[&[1.0, 0.0, 0.0]], &[0]);
        assert!(run(&memory, &narrow, 1, 0.1, 2).unwrap_err().contains("3"));
        let empty = Features {
            dim: 2,
            ..Features::default()
        };
        assert!(
            run(&empty, &queries, 1, 0.1, 2)
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            run(&memory, &empty, 1, 0.1, 2)
                .unwrap_err()
                .contains("no queries")
        );
        let ragged = Features {
            data: vec![1.0; 3],
            dim: 2,
            labels: vec![0, 1],
        };
        assert!(
            run(&ragged, &queries, 1, 0.1, 2)
                .unwrap_err()
                .contains("expected 2 rows")
        );
        let out_of_range = features(&[&[1.0, 0.0]], &[2]);
        assert!(
            run(&memory, &out_of_range, 1, 0.1, 2)
                .unwrap_err()
                .contains("label 2")
        );
        let negative = features(&[&[1.0, 0.0]], &[-1]);
        assert!(
            run(&negative, &queries, 1, 0.1, 2)
                .unwrap_err()
                .contains("label -1")
        );
        let nan = features(&[&[f32::NAN, 0.0]], &[0]);
        assert!(
            run(&memory, &nan, 1, 0.1, 2)
                .unwrap_err()
                .contains("non-finite")
        );
        assert!(
            run(&memory, &queries, 0, 0.1, 2)
                .unwrap_err()
                .contains("k must")
        );
        assert!(
            run(&memory, &queries, 1, 0.0, 2)
                .unwrap_err()
                .contains("temperature")
        );
        assert!(
            run(&memory, &queries, 1, f64::NAN, 2)
                .unwrap_err()
                .contains("temperature")
        );
        assert!(
            run(&memory, &queries, 1, 0.1, 0)
                .unwrap_err()
                .contains("class")
        );
    }

    #[test]
    fn centring_removes_the_mean() {
        let f = features(&[&[1.0, 10.0], &[3.0, 10.0], &[5.0, 13.0]], &[0, 1, 0]);
        let q = features(&[&[2.0, 12.0]], &[1]);
        let (c, cq) = centre_on(&f, &q);
        assert_eq!(c.data, vec![-2.0, -1.0, 0.0, -1.0, 2.0, 2.0]);
        assert_eq!((c.dim, c.labels), (2, f.labels.clone()));
        assert_eq!(cq.data, vec![-1.0, 1.0], "queries use the memory's mean");
        let empty = Features {
            dim: 4,
            ..Features::default()
        };
        assert_eq!(centre_on(&empty, &empty), (empty.clone(), empty));
    }
}
