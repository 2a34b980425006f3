//! `trainer bench --ops --card`: the roofline of a step on a machine
//! without a GPU, and step figures against a card.

use std::process::Output;

mod common;
use common::run;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The tiny network of the unit test's count by hand (286,144 FLOPs a step).
const TINY: [&str; 14] = [
    "--arch",
    "resnet18",
    "--bs",
    "2",
    "--res",
    "8",
    "--width",
    "1",
    "--channels",
    "1",
    "--proj-hidden",
    "4",
    "--proj-out",
    "3",
];

#[test]
fn the_bounds_need_no_gpu_and_sum_their_ops() {
    let mut a = vec![
        "bench", "--ops", "--card", "h200", "--device", "cpu", "--json",
    ];
    a.extend(TINY);
    let o = run(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing timed"), "{}", stderr(&o));
    let lines = json_lines(&o);
    let (total, ops) = lines.split_last().unwrap();
    assert_eq!(total["card"], "h200");
    assert_eq!(total["precision"], "bf16", "bf16 unless --precision says");
    assert_eq!(total["model_flops"].as_f64(), Some(286_144.0));
    let sum: f64 = ops.iter().map(|o| o["bound_ms"].as_f64().unwrap()).sum();
    let bound = total["bound_ms"].as_f64().unwrap();
    assert!((sum - bound).abs() <= 1e-9 * bound, "{sum} vs {bound}");
    assert!(ops.iter().all(|o| o.get("measured_ms").is_none()));

    let text = run(&["bench", "--ops", "--card", "h100-sxm", "--device", "cpu"]);
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(
        out.contains("resnet50 (imagenet stem), width 64, bs 128, 224 px, bf16 on H100 SXM5"),
        "{out}"
    );
    assert!(out.contains("total: 8332.6 GFLOP"), "{out}");

    let o = run(&["bench", "--ops", "--card", "tpu", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("expected one of a100"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_benchmarked_step_reports_model_flops_and_mfu_against_a_card() {
    let mut a = vec![
        "bench", "--device", "cpu", "--steps", "1", "--json", "--card", "a100",
    ];
    a.extend(TINY);
    let o = run(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = &json_lines(&o)[0];
    assert_eq!(line["model_flops_per_step"].as_f64(), Some(286_144.0));
    let seconds = line["step_ms_median"].as_f64().unwrap() / 1e3;
    let mfu = 286_144.0 / seconds / 19.5e12;
    assert!(
        (line["mfu"].as_f64().unwrap() - mfu).abs() <= 1e-9 * mfu,
        "{line}"
    );
    assert!(line["bound_ms"].as_f64().unwrap() > 0.0, "{line}");
}
