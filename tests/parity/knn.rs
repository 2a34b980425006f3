//! The kNN monitor's kernels: unit rows against an f64 reference, bit for
//! bit, and each query's top-k vote against a brute-force one.

use super::*;
use engine::ops::knn::{knn_vote, normalize_rows};

pub const CASES: &[Case] = &[("normalize_and_vote", normalize_and_vote)];

fn normalize_and_vote(device: Device) {
    let (rows, dim, classes) = (37, 9, 4);
    let x = uniform(&[rows, dim], 3, -1.0, 1.0);
    let mut unit = to(device, &x);
    assert!(normalize_rows(&mut unit).unwrap());
    let want: Vec<f32> = x
        .to_vec::<f32>()
        .unwrap()
        .chunks(dim)
        .flat_map(|row| {
            let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            row.iter()
                .map(move |&v| (v as f64 * (1.0 / norm.max(1e-12))) as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_bits_equal(
        "unit rows",
        &unit,
        &Tensor::from_vec(want, [rows, dim]).unwrap(),
    );

    // Similarities with repeated values, so the k-th place has ties.
    let queries = 5;
    let sims: Vec<f32> = (0..queries * rows)
        .map(|i| ((i * 7919) % 11) as f32 / 10.0 - 0.5)
        .collect();
    let labels: Vec<i64> = (0..rows as i64).map(|i| (i * 3) % classes as i64).collect();
    for (k, t) in [(1, 0.1), (6, 0.1), (rows, 1.0)] {
        let got = knn_vote(
            &to(
                device,
                &Tensor::from_vec(sims.clone(), [queries, rows]).unwrap(),
            ),
            &to(device, &Tensor::from_vec(labels.clone(), [rows]).unwrap()),
            k,
            t,
            classes,
        )
        .unwrap();
        let want: Vec<usize> = sims
            .chunks(rows)
            .map(|row| {
                let mut order: Vec<usize> = (0..rows).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                let best = row[order[0]] as f64;
                let mut scores = vec![0.0f64; classes];
                for &i in &order[..k] {
                    scores[labels[i] as usize] += ((row[i] as f64 - best) / t).exp();
                }
                (0..classes).fold(0, |w, c| if scores[c] > scores[w] { c } else { w })
            })
            .collect();
        assert_eq!(got, want, "k {k}, t {t}");
    }
    let bad = knn_vote(
        &to(device, &Tensor::from_vec(sims, [queries, rows]).unwrap()),
        &to(device, &Tensor::from_vec(labels, [rows]).unwrap()),
        rows + 1,
        0.1,
        classes,
    );
    assert!(bad.unwrap_err().to_string().contains("k 38"));
    expect_launched(device, &["knn_normalize_rows", "knn_vote"]);
}
