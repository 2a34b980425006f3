//! `trainer pretrain --cuda-graph` on the emulated GPU path: a run that
//! replays the captured step writes the metrics of one that launches every
//! kernel, bit for bit, in f32 and bf16, also when stopped and resumed; a
//! divergence still stops at its step; the CPU refuses the flag.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn trainer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.env("RAYON_NUM_THREADS", "2");
    c
}

fn run(args: &[String]) -> Output {
    trainer().args(args).output().expect("trainer starts")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trainer-graph-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A width-4 ResNet-18 on 16-px synthetic images, batch 8, on the emulator
/// in `precision` with `--cuda-graph graph`, a metrics line and a
/// checkpoint every step or two, then `extra`.
fn emulated(out: &Path, precision: &str, graph: &str, steps: usize, extra: &[&str]) -> Vec<String> {
    let steps = steps.to_string();
    [
        "--arch",
        "resnet18",
        "--bs",
        "8",
        "--dataset",
        "synthetic",
        "--res",
        "16",
        "--width",
        "4",
        "--proj-hidden",
        "16",
        "--proj-out",
        "8",
        "--knn-memory",
        "64",
        "--knn-queries",
        "32",
        "--log-every",
        "1",
        "--checkpoint-every",
        "2",
        "--workers",
        "2",
        "--device",
        "emulator",
        "--precision",
        precision,
        "--cuda-graph",
        graph,
        "--steps",
        &steps,
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .chain(extra.iter().map(|s| s.to_string()))
    .collect()
}

/// Every metrics line without the timing fields, which no two runs share.
fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let fields = v.as_object_mut().unwrap();
            fields.remove("pairs_per_s");
            fields.remove("data_wait_ms");
            v
        })
        .collect()
}

/// The run's final kNN accuracy, as summary.json records it.
fn final_knn(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("summary.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["knn_acc"].clone()
}

/// Starts a run and stops it with SIGINT once `after` metrics lines exist.
fn interrupted(args: &[String], out: &Path, after: usize) -> Option<i32> {
    let mut child = trainer()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(300) {
        let lines =
            std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().count());
        if lines >= after {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap().code()
}

fn graph_equals_eager(precision: &str) {
    let steps = 5;
    let eager = tmp(&format!("eager-{precision}"));
    let o = run(&emulated(&eager, precision, "off", steps, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let want = metrics(&eager);
    assert_eq!(want.len(), steps);

    let graphed = tmp(&format!("graphed-{precision}"));
    let o = run(&emulated(&graphed, precision, "on", steps, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        metrics(&graphed),
        want,
        "replayed steps differ from eager ones"
    );
    assert_eq!(final_knn(&graphed), final_knn(&eager));

    // Stopped after three steps (a checkpoint at step 2 or later) and
    // resumed, which recaptures: still the eager run's metrics.
    let resumed = tmp(&format!("resumed-{precision}"));
    let args = emulated(&resumed, precision, "on", steps, &[]);
    assert_eq!(
        interrupted(&args, &resumed, 3),
        Some(130),
        "stopped mid-way"
    );
    let resume = [
        "--resume",
        "--out",
        resumed.to_str().unwrap(),
        "--device",
        "emulator",
        "--precision",
        precision,
        "--cuda-graph",
        "on",
    ]
    .map(String::from);
    let o = run(&resume);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics(&resumed), want, "the resumed graphed run differs");
    assert_eq!(final_knn(&resumed), final_knn(&eager));
}

#[test]
fn a_graphed_f32_run_writes_the_eager_runs_metrics_also_across_a_resume() {
    graph_equals_eager("fp32");
}

#[test]
fn a_graphed_bf16_run_writes_the_eager_runs_metrics_also_across_a_resume() {
    graph_equals_eager("bf16");
}

/// fp16 with its loss scaler on the device: the same losses as the host's.
#[test]
fn a_graphed_fp16_run_writes_the_eager_runs_metrics() {
    let eager = tmp("eager-fp16");
    let o = run(&emulated(&eager, "fp16", "off", 4, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let graphed = tmp("graphed-fp16");
    let o = run(&emulated(&graphed, "fp16", "on", 4, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics(&graphed), metrics(&eager));
    let scale = |out: &Path| {
        let state = out.join("checkpoints/step-0000004/state.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
        v["loss_scale"].clone()
    };
    assert_eq!(scale(&graphed), scale(&eager), "the checkpointed scaler");
}

/// A diverging graphed run stops at the step that diverged (learnt a step
/// later), names it, and keeps the last good checkpoint.
#[test]
fn a_graphed_run_stops_at_the_step_that_diverged() {
    let out = tmp("diverged");
    let o = run(&emulated(&out, "fp32", "on", 12, &["--lr", "1e30"]));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let logged = metrics(&out).len();
    assert!(
        err.contains(&format!("step {}: ", logged + 1)),
        "{logged} steps logged: {err}"
    );
    assert!(err.contains("Last good checkpoint"), "{err}");
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap_or_default();
    let saved: usize = latest
        .trim()
        .strip_prefix("step-")
        .map_or(0, |n| n.parse().unwrap());
    assert!(
        saved <= logged,
        "checkpoint {saved} after {logged} good steps"
    );
}

#[test]
fn the_cpu_and_bad_values_are_refused() {
    for (device, value, reason) in [
        ("cpu", "on", "--cuda-graph on needs a GPU"),
        ("emulator", "sometimes", "expected on or off"),
    ] {
        let out = tmp("refused");
        let mut a = emulated(&out, "fp32", value, 1, &[]);
        let at = a.iter().position(|f| f == "--device").unwrap();
        a[at + 1] = device.into();
        if device == "cpu" {
            let at = a.iter().position(|f| f == "--precision").unwrap();
            a.drain(at..at + 2);
        }
        let o = run(&a);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(reason), "{}", stderr(&o));
    }
    let out = tmp("profiled");
    let o = run(&emulated(&out, "fp32", "on", 1, &["--profile"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--cuda-graph off"), "{}", stderr(&o));
}
