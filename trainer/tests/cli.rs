//! End-to-end runs of the `trainer` binary: small CPU pretraining runs on
//! synthetic data, Fashion-MNIST and an ImageFolder, exact resume after an
//! interrupt or a kill, the evaluation subcommands, and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

fn trainer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.env("RAYON_NUM_THREADS", "2");
    c
}

fn run(args: &[&str]) -> Output {
    trainer().args(args).output().expect("trainer starts")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trainer-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A small, fast configuration on synthetic 16-px images.
fn tiny(out: &Path, steps: usize) -> Vec<String> {
    [
        "--arch",
        "resnet18",
        "--bs",
        "16",
        "--dataset",
        "synthetic",
        "--res",
        "16",
        "--width",
        "4",
        "--proj-hidden",
        "32",
        "--proj-out",
        "16",
        "--knn-memory",
        "256",
        "--knn-queries",
        "128",
        "--log-every",
        "1",
        "--workers",
        "2",
        "--steps",
        &steps.to_string(),
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A width-4 ResNet-18 with 16/8-wide heads, batch 4, on `data` for `steps`
/// steps into `out`, then `extra` flags.
fn small_on(data: &str, out: &Path, steps: &str, extra: &[&str]) -> Vec<String> {
    [
        "--arch",
        "resnet18",
        "--bs",
        "4",
        "--width",
        "4",
        "--proj-hidden",
        "16",
        "--proj-out",
        "8",
        "--steps",
        steps,
        "--data",
        data,
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .chain(extra.iter().map(|s| s.to_string()))
    .collect()
}

/// The losses of a run's metrics, as exact bit patterns.
fn losses(out: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap().to_bits(),
            )
        })
        .collect()
}

#[test]
fn synthetic_run_writes_every_output() {
    let out = tmp("synthetic");
    let o = run(&args(&tiny(&out, 6)));
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
        "checkpoints/latest",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert_eq!(losses(&out).len(), 6);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 6);
    let acc = summary["knn_acc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        config.contains("arch = \"resnet18\"") && config.contains("bs = 16"),
        "{config}"
    );
}

#[test]
fn fashion_mnist_run() {
    if !Path::new(FASHION_MNIST).is_dir() {
        panic!(
            "{FASHION_MNIST} is missing: apt-get install dataset-fashion-mnist (scripts/test.sh installs it)"
        );
    }
    let out = tmp("fmnist");
    let o = run(&[
        "--arch",
        "resnet18",
        "--bs",
        "32",
        "--width",
        "4",
        "--proj-hidden",
        "32",
        "--proj-out",
        "16",
        "--steps",
        "3",
        "--knn-memory",
        "500",
        "--knn-queries",
        "200",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("60000 images"), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("kNN accuracy (teacher, k=200)"), "{stdout}");
}

#[test]
fn image_folder_run_and_tools() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imagefolder");
    let out = tmp("folder");
    let o = run(&args(&small_on(
        data.to_str().unwrap(),
        &out,
        "2",
        &["--res", "8"],
    )));
    assert!(o.status.success(), "{}", stderr(&o));

    let exported = out.join("backbone.safetensors");
    let o = run(&[
        "export",
        "--checkpoint",
        out.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&exported).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        file.tensor("conv1.weight").unwrap().shape(),
        [4, 3, 3, 3],
        "OIHW"
    );
    assert!(file.tensor("layer4.1.bn2.running_var").is_ok());
    assert!(file.names().iter().all(|n| !n.starts_with("projector")));

    let feats = out.join("features.safetensors");
    let o = run(&[
        "embed",
        "--checkpoint",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        feats.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&feats).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("features").unwrap().shape(), [8, 32]);
    assert_eq!(file.tensor("labels").unwrap().shape(), [8]);
}

#[test]
fn steps_zero_writes_the_initial_checkpoint_and_tools_use_it() {
    let out = tmp("init");
    let o = run(&args(&tiny(&out, 0)));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::read_to_string(out.join("checkpoints/latest"))
            .unwrap()
            .contains("step-0000000")
    );

    // embed --input: normalised NHWC images in, features out.
    let images: Vec<f32> = (0..2 * 16 * 16 * 3).map(|i| (i % 7) as f32 / 7.0).collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![2, 16, 16, 3],
        bytemuck::cast_slice(&images),
    )
    .unwrap();
    let input = out.join("images.safetensors");
    std::fs::write(
        &input,
        safetensors::serialize([("images", view)], None).unwrap(),
    )
    .unwrap();
    let feats = out.join("f.safetensors");
    let o = run(&[
        "embed",
        "--checkpoint",
        out.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        feats.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&feats).unwrap();
    assert_eq!(
        safetensors::SafeTensors::deserialize(&bytes)
            .unwrap()
            .tensor("features")
            .unwrap()
            .shape(),
        [2, 32]
    );

    let o = run(&[
        "knn",
        "--checkpoint",
        out.to_str().unwrap(),
        "--memory",
        "300",
        "--queries",
        "100",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("knn teacher k=200"));

    let o = run(&[
        "linear-eval",
        "--checkpoint",
        out.to_str().unwrap(),
        "--epochs",
        "2",
        "--bs",
        "64",
        "--limit",
        "256",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("best top-1"));
}

/// Runs `args` in the background and sends `signal` once the run has logged
/// `after` metric lines; returns the exit status.
fn interrupt(args: &[&str], out: &Path, signal: &str, after: usize) -> std::process::ExitStatus {
    let mut child = trainer()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        let lines =
            std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().count());
        if lines >= after {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap()
}

#[test]
fn resume_after_interrupt_or_kill_equals_an_uninterrupted_run() {
    let steps = 120;
    let reference = tmp("reference");
    let mut a = tiny(&reference, steps);
    a.extend(["--checkpoint-every".into(), "7".into()]);
    let o = run(&args(&a));
    assert!(o.status.success(), "{}", stderr(&o));
    let want = losses(&reference);
    assert_eq!(want.len(), steps);

    for (signal, exit) in [("-INT", Some(130)), ("-KILL", None)] {
        let out = tmp(&format!("resumed{signal}"));
        let mut a = tiny(&out, steps);
        a.extend(["--checkpoint-every".into(), "7".into()]);
        let status = interrupt(&args(&a), &out, signal, 10);
        assert_eq!(
            status.code(),
            exit,
            "{signal}: the run must be stopped mid-way"
        );
        let o = run(&["--resume", "--out", out.to_str().unwrap(), "--workers", "1"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("resuming"), "{}", stderr(&o));
        assert_eq!(
            losses(&out),
            want,
            "{signal}: resumed losses differ from the uninterrupted run"
        );
    }
}

fn assert_usage_error(a: &[&str], needle: &str) {
    let o = run(a);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{a:?}: {err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "{a:?}: one line expected: {err}"
    );
    assert!(err.contains(needle), "{a:?}: {err}");
}

#[test]
fn invalid_flags_exit_2_with_one_line() {
    let out = tmp("bad");
    let o = out.to_str().unwrap();
    let base = [
        "--dataset",
        "synthetic",
        "--res",
        "16",
        "--width",
        "4",
        "--steps",
        "1",
        "--out",
        o,
    ];
    let with =
        |extra: &[&'static str]| -> Vec<&str> { extra.iter().copied().chain(base).collect() };
    assert_usage_error(&with(&["--arch", "resnet18", "--bs", "0"]), "--bs 0");
    assert_usage_error(
        &with(&["--arch", "resnet18", "--bs", "5000"]),
        "larger than the dataset",
    );
    assert_usage_error(
        &with(&["--arch", "resnet9", "--bs", "16"]),
        "unknown arch 'resnet9'",
    );
    assert_usage_error(
        &with(&["--arch", "resnet18", "--bs", "16", "--device", "cuda"]),
        "--device cuda: ",
    );
    assert_usage_error(
        &with(&["--arch", "resnet18", "--bs", "16", "--precision", "bf16"]),
        "fp32",
    );
    assert_usage_error(&with(&["--bs", "16"]), "missing --arch");
    assert_usage_error(&["--bogus"], "--bogus");
    assert_usage_error(
        &with(&["--arch", "resnet18", "--bs", "16", "--lr", "-1"]),
        "--lr -1",
    );
    assert_usage_error(
        &["export", "--checkpoint", o],
        "required arguments were not provided: --out",
    );
    assert_usage_error(
        &[
            "--arch",
            "resnet18",
            "--bs",
            "16",
            "--dataset",
            "synthetic",
            "--epochs",
            "0",
        ],
        "--epochs 0",
    );
    assert_usage_error(&["--resume"], "--resume needs --out");
    // Flags that differ from a saved run are tested in faults.rs; here the
    // folder holds no run at all.
    assert_usage_error(
        &["--resume", "--out", o, "--bs", "4", "--lr", "0.1"],
        "holds no run",
    );
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tmp("files");
    std::fs::create_dir_all(&dir).unwrap();
    // A truncated IDX image file.
    std::fs::write(
        dir.join("train-images-idx3-ubyte"),
        [0, 0, 8, 3, 0, 0, 0, 9, 0, 0, 0, 28, 0, 0, 0, 28, 1, 2, 3],
    )
    .unwrap();
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        [0, 0, 8, 1, 0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    )
    .unwrap();
    let o = run(&[
        "--arch",
        "resnet18",
        "--bs",
        "4",
        "--data",
        dir.to_str().unwrap(),
        "--out",
        dir.join("run").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("train-images-idx3-ubyte"),
        "{}",
        stderr(&o)
    );

    let o = run(&[
        "--arch",
        "resnet18",
        "--bs",
        "4",
        "--data",
        "/nonexistent/data",
        "--out",
        dir.join("run").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/data"), "{}", stderr(&o));

    // A corrupt checkpoint file.
    let run_dir = tmp("corrupt");
    let o = run(&args(&tiny(&run_dir, 0)));
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(
        run_dir.join("checkpoints/step-0000000/teacher.safetensors"),
        b"garbage",
    )
    .unwrap();
    let o = run(&[
        "export",
        "--checkpoint",
        run_dir.to_str().unwrap(),
        "--out",
        dir.join("x.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("teacher.safetensors")
            && stderr(&o).contains("not a valid safetensors"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn divergence_stops_with_a_diagnosis() {
    let out = tmp("nan");
    let mut a = tiny(&out, 30);
    a.extend(["--lr".into(), "1e30".into()]);
    let o = run(&args(&a));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the M2T loss") || err.contains("non-finite gradients"),
        "{err}"
    );
    // The step that failed is the one after the last logged step, numbered
    // as metrics.jsonl and the progress line number them.
    let logged = losses(&out).len();
    assert!(
        err.contains(&format!("step {}: ", logged + 1)),
        "{logged} steps logged: {err}"
    );
}

#[test]
fn config_file_is_read_and_flags_override_it() {
    let dir = tmp("config");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("m2t.toml");
    std::fs::write(&file, "arch = \"resnet18\"\nbs = 8\ndataset = \"synthetic\"\nres = 16\nwidth = 4\nproj-hidden = 16\nproj-out = 8\nsteps = 1\n").unwrap();
    let out = dir.join("run");
    let o = run(&[
        "--config",
        file.to_str().unwrap(),
        "--bs",
        "16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let saved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        saved.contains("bs = 16") && saved.contains("width = 4"),
        "{saved}"
    );

    std::fs::write(&file, "arch = \"resnet18\"\nbatch = 8\n").unwrap();
    assert_usage_error(
        &["--config", file.to_str().unwrap()],
        "unknown field `batch`",
    );
}

#[test]
fn help_explains_flags_with_defaults() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "--arch",
        "--teacher-bn",
        "default: 0.05·B/256",
        "B the global batch",
        "knn",
        "linear-eval",
        "export",
        "bench",
        "Exit codes: 0 success; 1 data or runtime error",
        "130 interrupted",
        "at most 1024",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
}

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

/// The final kNN a [`tiny`] run reports, checked against `trainer knn` on
/// the run's checkpoint with the same sets.
fn final_knn_matches_the_knn_command(out: &Path) -> f64 {
    let reported = summary(out)["knn_acc"].as_f64().unwrap();
    let checkpoint = out.to_str().unwrap();
    let o = run(&[
        "knn",
        "--checkpoint",
        checkpoint,
        "--memory",
        "256",
        "--queries",
        "128",
    ]);
    let printed = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        printed.contains(&format!("{:.2}%", 100.0 * reported)),
        "summary {reported} vs {printed}"
    );
    reported
}

#[test]
fn final_knn_is_of_the_final_networks_and_finished_runs_resume_as_no_ops() {
    // One epoch is 128 steps: the monitor runs at 128, the run ends at 130.
    let out = tmp("final");
    let mut a = tiny(&out, 130);
    a.extend(["--knn-every", "1", "--checkpoint-every", "64"].map(String::from));
    let o = run(&args(&a));
    assert!(o.status.success(), "{}", stderr(&o));
    let reported = final_knn_matches_the_knn_command(&out);

    let before: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let o = run(&["--resume", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut after: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(
        before, after,
        "resuming a finished run must keep both checkpoints"
    );
    assert_eq!(summary(&out)["knn_acc"].as_f64().unwrap(), reported);
}

#[test]
fn step_monitor_runs_on_its_own_sets_from_step_zero() {
    let out = tmp("monitor");
    let mut a = tiny(&out, 4);
    a.extend(
        ["--knn-every", "0", "--knn-every-steps", "2"]
            .into_iter()
            .chain(["--monitor-memory", "64", "--monitor-queries", "32"])
            .map(String::from),
    );
    let o = run(&args(&a));
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Step 0: the untrained network and raw pixels, the plot's references.
    let first = &lines[0];
    assert_eq!(first["step"], 0, "{first}");
    for key in ["knn_acc", "knn_raw_pixels"] {
        let v = first[key].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&v), "{key}: {first}");
    }
    let monitored: Vec<u64> = lines
        .iter()
        .filter(|l| l["knn_acc"].is_f64())
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(monitored, [0, 2, 4]);
    // The end of the run measures on the --knn-memory/--knn-queries sets.
    final_knn_matches_the_knn_command(&out);
    let saved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    for needle in [
        "knn-every-steps = 2",
        "monitor-memory = 64",
        "monitor-queries = 32",
    ] {
        assert!(saved.contains(needle), "{needle} not in {saved}");
    }
    assert!(out.join("curves.png").is_file());
}

#[test]
fn flags_override_both_keys_of_a_pair_in_a_config_file() {
    let first = tmp("pair");
    let o = run(&args(&tiny(&first, 3)));
    assert!(o.status.success(), "{}", stderr(&o));
    let second = tmp("pair2");
    let o = run(&[
        "--config",
        first.join("config.toml").to_str().unwrap(),
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--out",
        second.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let saved = std::fs::read_to_string(second.join("config.toml")).unwrap();
    assert!(
        saved.contains("steps = 128") && saved.contains("warmup-steps = 0"),
        "{saved}"
    );
}

#[test]
fn evaluation_flags_are_checked() {
    let out = tmp("evalflags");
    let o = run(&args(&tiny(&out, 0)));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = out.to_str().unwrap();
    assert_usage_error(&["linear-eval", "--checkpoint", o, "--bs", "0"], "--bs 0");
    assert_usage_error(&["linear-eval", "--checkpoint", o, "--lr", "-1"], "--lr -1");
    assert_usage_error(&["knn", "--checkpoint", o, "--t", "-1"], "--t -1");
}

/// The GPU path end to end without a GPU: the CUDA backend's kernels on the
/// emulator, in fp16 (so the loss scaler runs too), checkpointed, stopped
/// with SIGINT and resumed to the same losses, bit for bit.
#[test]
fn emulated_gpu_run_resumes_exactly() {
    let steps = 6;
    let config = |out: &Path| {
        let mut a = tiny(out, steps);
        a.extend(
            [
                "--device",
                "emulator",
                "--precision",
                "fp16",
                "--checkpoint-every",
                "2",
            ]
            .map(String::from),
        );
        a
    };
    let reference = tmp("emulated-reference");
    let o = run(&args(&config(&reference)));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("on emulator in fp16"), "{}", stderr(&o));
    let want = losses(&reference);
    assert_eq!(want.len(), steps);

    let out = tmp("emulated-resumed");
    let status = interrupt(&args(&config(&out)), &out, "-INT", 3);
    assert_eq!(status.code(), Some(130), "the run must be stopped mid-way");
    let o = run(&[
        "--resume",
        "--out",
        out.to_str().unwrap(),
        "--device",
        "emulator",
        "--precision",
        "fp16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        losses(&out),
        want,
        "resumed losses differ from the uninterrupted run"
    );
}

/// `--deterministic` on the emulated GPU path: two runs of one command, and
/// a run stopped and resumed, give the same losses bit for bit.
#[test]
fn deterministic_emulated_runs_repeat_and_resume_bit_for_bit() {
    let steps = 4;
    let device = [
        "--device",
        "emulator",
        "--precision",
        "bf16",
        "--deterministic",
    ];
    let config = |out: &Path| {
        let mut a = tiny(out, steps);
        a.extend(device.map(String::from));
        a.extend(["--checkpoint-every", "1"].map(String::from));
        a
    };
    let first = tmp("deterministic-first");
    let o = run(&args(&config(&first)));
    assert!(o.status.success(), "{}", stderr(&o));
    let want = losses(&first);
    assert_eq!(want.len(), steps);
    let second = tmp("deterministic-second");
    let o = run(&args(&config(&second)));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&second), want, "two runs of one command differ");

    let out = tmp("deterministic-resumed");
    let status = interrupt(&args(&config(&out)), &out, "-INT", 2);
    assert_eq!(status.code(), Some(130), "the run must be stopped mid-way");
    let mut resume = vec!["--resume", "--out", out.to_str().unwrap()];
    resume.extend(device);
    let o = run(&resume);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&out), want, "the resumed run differs");
}

/// `bench --ops` runs the op benchmark end to end on the emulated GPU path
/// (its times mean nothing there) and refuses the CPU.
#[test]
fn op_benchmark_runs_on_the_emulator() {
    let a = [
        "bench", "--ops", "--device", "emulator", "--arch", "resnet18", "--bs", "2", "--res", "16",
        "--width", "4", "--steps", "1",
    ];
    let o = run(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("[2, 16, 16, 3]*[4, 3, 3, 3]/1,1")
            && out.contains("bn+add+relu [2, 16, 16, 4]"),
        "{out}"
    );
    let o = run(&["bench", "--ops", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// `bench --cuda-graph` captures the step after the warm-up step and times
/// its replays on the emulated GPU path; the CPU and `--profile` are refused
/// with the reason.
#[test]
fn graph_benchmark_runs_on_the_emulator() {
    let net = "--arch resnet18 --bs 2 --res 16 --width 4 --proj-hidden 16 --proj-out 8";
    let flags = |text: String| {
        text.split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let a = flags(format!(
        "bench --device emulator {net} --steps 2 --cuda-graph --json"
    ));
    let o = run(&args(&a));
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(line["cuda_graph"], true, "{line}");
    assert!(line["step_ms_median"].as_f64().unwrap() > 0.0, "{line}");
    for (device, extra, reason) in [
        ("cpu", None, "--cuda-graph needs a GPU"),
        (
            "emulator",
            Some("--profile"),
            "profile without --cuda-graph",
        ),
    ] {
        let mut a = flags(format!("bench --device {device} {net} --cuda-graph"));
        a.extend(extra.map(String::from));
        let o = run(&args(&a));
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(reason), "{}", stderr(&o));
    }
}

/// `export --out` follows a symlink instead of replacing it, refuses a path
/// that is not a regular file (here a FIFO, as /dev/full would be), and
/// refuses to write into a run's checkpoints.
#[test]
fn export_writes_through_links_and_refuses_special_files_and_checkpoints() {
    use std::os::unix::fs::FileTypeExt;
    let out = tmp("export-targets");
    let o = run(&args(&tiny(&out, 0)));
    assert!(o.status.success(), "{}", stderr(&o));
    let export_to = |target: &Path| {
        run(&[
            "export",
            "--checkpoint",
            out.to_str().unwrap(),
            "--out",
            target.to_str().unwrap(),
        ])
    };

    let real = out.join("real.safetensors");
    std::fs::write(&real, b"old").unwrap();
    let link = out.join("link.safetensors");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let o = export_to(&link);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(safetensors::SafeTensors::deserialize(&std::fs::read(&real).unwrap()).is_ok());

    let fifo = out.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let o = export_to(&fifo);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );

    let teacher = out.join("checkpoints/step-0000000/teacher.safetensors");
    let before = std::fs::read(&teacher).unwrap();
    let o = export_to(&teacher);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("checkpoints"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&teacher).unwrap(), before);
    let o = export_to(&out.join("checkpoints/fresh.safetensors"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // The run folder's own files (its lock among them) are the run's too.
    let o = export_to(&out.join("lock"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // An ordinary project folder with a config.toml and a checkpoints/ of
    // its own is not a run.
    let project = tmp("export-project");
    std::fs::create_dir_all(project.join("checkpoints")).unwrap();
    std::fs::write(project.join("config.toml"), "lr = 1\n").unwrap();
    let o = export_to(&project.join("checkpoints/backbone.safetensors"));
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Copies the committed ImageFolder fixture to `to`.
fn copy_fixture(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imagefolder");
    for class in ["horizontal", "vertical"] {
        std::fs::create_dir_all(to.join(class)).unwrap();
        for entry in std::fs::read_dir(from.join(class)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(class).join(entry.file_name())).unwrap();
        }
    }
}

/// A relative `--data` is saved as an absolute path, so resuming from another
/// working directory that has its own `data/x` reads the original data; and
/// a dataset that changed since the run started is refused, naming the change.
#[test]
fn resume_reads_the_original_data_and_refuses_changed_data() {
    let root = tmp("resume-data");
    let (first, second) = (root.join("first"), root.join("second"));
    copy_fixture(&first.join("data/x"));
    copy_fixture(&second.join("data/x"));
    // The other directory's data/x is different: one more image.
    std::fs::copy(
        second.join("data/x/horizontal/0.png"),
        second.join("data/x/horizontal/9.png"),
    )
    .unwrap();
    let out = root.join("run");
    let o = trainer()
        .current_dir(&first)
        .args(small_on("data/x", &out, "2", &["--res", "8"]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    let absolute = std::fs::canonicalize(first.join("data/x")).unwrap();
    assert!(
        config.contains(&format!("path = \"{}\"", absolute.display())),
        "{config}"
    );

    let resume = || {
        trainer()
            .current_dir(&second)
            .args(["--resume", "--out", out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let o = resume();
    assert!(o.status.success(), "{}", stderr(&o));

    std::fs::copy(
        first.join("data/x/vertical/0.png"),
        first.join("data/x/vertical/9.png"),
    )
    .unwrap();
    let o = resume();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("dataset changed") && stderr(&o).contains("8 files, now 9"),
        "{}",
        stderr(&o)
    );
}

/// `--resume` refuses an edited config.toml, a state.json that disagrees with
/// its checkpoint and the metrics, and a `latest` that leaves the run folder.
#[test]
fn resume_refuses_edited_state() {
    let out = tmp("edited");
    let o = run(&args(&tiny(&out, 2)));
    assert!(o.status.success(), "{}", stderr(&o));
    let resume = || run(&["--resume", "--out", out.to_str().unwrap()]);
    let edit = |file: &str, from: &str, to: &str| {
        let path = out.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file}: {text}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    };

    for (key, from, to) in [
        ("bs", "bs = 16", "bs = 8"),
        (
            "teacher-bn",
            "teacher-bn = \"momentum\"",
            "teacher-bn = \"plain\"",
        ),
    ] {
        edit("config.toml", from, to);
        let o = resume();
        assert_eq!(o.status.code(), Some(2), "{key}: {}", stderr(&o));
        assert!(stderr(&o).contains(&format!("{key}: ")), "{}", stderr(&o));
        edit("config.toml", to, from);
    }
    // A size no flag would accept is refused before anything is allocated.
    edit("config.toml", "width = 4", "width = 18446744073709551615");
    let o = resume();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("expected 1 to 1024"), "{}", stderr(&o));
    edit("config.toml", "width = 18446744073709551615", "width = 4");

    let state = "checkpoints/step-0000002/state.json";
    edit(state, "\"step\": 2", "\"step\": 99");
    // The checkpoint's checksums name the edited file first ...
    let o = resume();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("state.json has"), "{}", stderr(&o));
    // ... and without them (a checkpoint from before checksums), the state
    // is checked against its folder and the metrics.
    std::fs::remove_file(out.join("checkpoints/step-0000002/checksums.json")).unwrap();
    let o = resume();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("step 99"), "{}", stderr(&o));
    edit(state, "\"step\": 99", "\"step\": 2");
    edit(state, "\"metrics_lines\": 2", "\"metrics_lines\": 1");
    let o = resume();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    edit(state, "\"metrics_lines\": 1", "\"metrics_lines\": 2");

    let other = tmp("edited-other");
    let o = run(&args(&tiny(&other, 0)));
    assert!(o.status.success(), "{}", stderr(&o));
    let elsewhere = other.join("checkpoints/step-0000000");
    for latest in [
        "../../".to_string() + other.file_name().unwrap().to_str().unwrap(),
        elsewhere.display().to_string(),
    ] {
        std::fs::write(out.join("checkpoints/latest"), &latest).unwrap();
        let o = resume();
        assert_eq!(o.status.code(), Some(1), "{latest}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("not a checkpoint of this run"),
            "{}",
            stderr(&o)
        );
    }
    std::fs::write(out.join("checkpoints/latest"), "step-0000002").unwrap();
    let o = resume();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// SIGINT during the final kNN evaluation stops it between batches: exit
/// 130, the final checkpoint already written, no summary.
#[test]
fn interrupt_during_the_final_knn_exits_130() {
    let out = tmp("final-knn-interrupt");
    let mut a = tiny(&out, 2);
    // A larger network at 32 px and every image in the kNN: seconds of evaluation.
    for (flag, value) in [
        ("--res", "32"),
        ("--width", "16"),
        ("--knn-memory", "0"),
        ("--knn-queries", "0"),
    ] {
        let at = a.iter().position(|f| f == flag).unwrap();
        a[at + 1] = value.into();
    }
    let child = trainer()
        .args(args(&a))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let latest = out.join("checkpoints/latest");
    let start = Instant::now();
    while std::fs::read_to_string(&latest).map_or(true, |n| n.trim() != "step-0000002") {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no final checkpoint"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("checkpoint at step 2/2 is saved"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("summary.json").exists());
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "{:?}",
        signalled.elapsed()
    );
}

/// A steps-0 run on a copy of the ImageFolder fixture in `root/data`;
/// returns (data, run).
fn fixture_run(root: &Path) -> (PathBuf, PathBuf) {
    let (data, out) = (root.join("data"), root.join("run"));
    copy_fixture(&data);
    let o = run(&args(&small_on(
        data.to_str().unwrap(),
        &out,
        "0",
        &["--res", "8"],
    )));
    assert!(o.status.success(), "{}", stderr(&o));
    (data, out)
}

/// `embed --data` names the images it skips and writes each row's image:
/// `indices` into the split, and the files in the metadata.
#[test]
fn embed_names_skipped_images_and_writes_each_rows_source() {
    let (data, out) = fixture_run(&tmp("embed-rows"));
    // Sorted first in its class: the corrupt file is image 0.
    std::fs::write(data.join("horizontal/-bad.jpg"), [0xff, 0xd8, 0xff, 0xe0]).unwrap();
    let feats = out.join("features.safetensors");
    let o = run(&[
        "embed",
        "--checkpoint",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        feats.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("-bad.jpg"), "{}", stderr(&o));
    let bytes = std::fs::read(&feats).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("features").unwrap().shape(), [8, 32]);
    let indices: Vec<i64> = bytemuck::pod_collect_to_vec(file.tensor("indices").unwrap().data());
    assert_eq!(indices, [1, 2, 3, 4, 5, 6, 7, 8]);
    let sources: Vec<String> =
        serde_json::from_str(meta.metadata().as_ref().unwrap().get("sources").unwrap()).unwrap();
    assert_eq!(sources.len(), 8);
    assert!(sources[0].ends_with("horizontal/0.png"), "{sources:?}");
}

/// `embed --input` with no pixels per image, and a linear probe whose loss
/// is not finite, fail instead of reporting success.
#[test]
fn empty_embed_input_and_diverged_linear_eval_fail() {
    let out = tmp("empty-input");
    let o = run(&args(&tiny(&out, 0)));
    assert!(o.status.success(), "{}", stderr(&o));
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 0, 16, 3], &[])
            .unwrap();
    let input = out.join("empty.safetensors");
    std::fs::write(
        &input,
        safetensors::serialize([("images", view)], None).unwrap(),
    )
    .unwrap();
    let o = run(&[
        "embed",
        "--checkpoint",
        out.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.join("f.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no images"), "{}", stderr(&o));

    let o = run(&[
        "linear-eval",
        "--checkpoint",
        out.to_str().unwrap(),
        "--epochs",
        "2",
        "--bs",
        "64",
        "--limit",
        "256",
        "--lr",
        "1e30",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("the probe's loss is"), "{}", stderr(&o));
}

/// A second trainer on a run folder in use refuses at once, naming the
/// first one's pid.
#[test]
fn a_run_folder_in_use_is_refused() {
    let out = tmp("locked");
    let mut child = trainer()
        .args(args(&tiny(&out, 100_000)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !out.join("metrics.jsonl").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = run(&["--resume", "--out", out.to_str().unwrap()]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("another trainer (pid {})", child.id())),
        "{}",
        stderr(&o)
    );
}

/// A write past the file-size limit (`ulimit -f`) is reported as an error,
/// not a silent death by SIGXFSZ.
#[test]
fn file_size_limit_is_reported() {
    let out = tmp("fsize");
    let o = Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 64 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_trainer"))
        .args(tiny(&out, 0))
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{:?}: {}", o.status, stderr(&o));
    assert!(stderr(&o).contains("File too large"), "{}", stderr(&o));
}

/// Writes an IDX dataset of 8×8 images to `dir`: `train` and `test` labels.
fn write_idx(dir: &Path, train: &[u8], test: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, labels) in [("train", train), ("t10k", test)] {
        let n = labels.len() as u32;
        let mut images = vec![0, 0, 8, 3];
        for d in [n, 8, 8] {
            images.extend(d.to_be_bytes());
        }
        images.extend((0..n * 64).map(|i| (i * 37 % 251) as u8));
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        let mut file = vec![0, 0, 8, 1];
        file.extend(n.to_be_bytes());
        file.extend(labels);
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), file).unwrap();
    }
}

fn idx_run(data: &Path, out: &Path, steps: &str) -> Output {
    run(&args(&small_on(data.to_str().unwrap(), out, steps, &[])))
}

/// A test label outside the training split's classes is a data error (exit
/// 1) when the dataset opens, before any training.
#[test]
fn out_of_range_test_labels_fail_before_training() {
    let dir = tmp("test-labels");
    let train: Vec<u8> = (0..32).map(|i| i % 10).collect();
    write_idx(&dir.join("data"), &train, &[0, 1, 255, 3]);
    let o = idx_run(&dir.join("data"), &dir.join("run"), "2");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("image 2 has label 255"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.join("run/metrics.jsonl").exists());
}

/// Sparse training labels are reported with the class count they imply.
#[test]
fn sparse_training_labels_are_warned_about() {
    let dir = tmp("sparse-labels");
    let train: Vec<u8> = (0..32).map(|i| [0, 1, 200][i % 3]).collect();
    write_idx(&dir.join("data"), &train, &[0, 1, 200, 1]);
    let o = idx_run(&dir.join("data"), &dir.join("run"), "0");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("201 classes")
            && stderr(&o).contains("warning: IDX train: labels use 3 of 201 class numbers (0..201); evaluation counts all 201 classes"),
        "{}",
        stderr(&o)
    );
}

/// Size flags have upper bounds, and a run whose step cannot fit in memory
/// is refused at once with the estimate, instead of overflowing or running
/// until the kernel kills it.
#[test]
fn huge_sizes_are_refused_before_allocating() {
    let out = tmp("huge");
    let o = out.to_str().unwrap();
    let base = [
        "--arch",
        "resnet18",
        "--bs",
        "16",
        "--dataset",
        "synthetic",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--out",
        o,
    ];
    for (flag, value, bound) in [
        ("--width", "18446744073709551615", "at most 1024"),
        ("--proj-hidden", "4000000000", "at most 65536"),
        ("--workers", "18446744073709551615", "at most 1024"),
        ("--res", "100000", "at most 4096"),
    ] {
        let a: Vec<&str> = base.iter().copied().chain([flag, value]).collect();
        assert_usage_error(&a, &format!("{flag} {value}: {bound}"));
    }
    let data = out.join("data");
    write_idx(&data, &[0; 32], &[0; 4]);
    let started = Instant::now();
    assert_usage_error(
        &[
            "--arch",
            "resnet50",
            "--width",
            "256",
            "--res",
            "4096",
            "--bs",
            "4",
            "--device",
            "cpu",
            "--steps",
            "1",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.join("run").to_str().unwrap(),
        ],
        "this run needs at least",
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(!out.join("run").exists(), "a refused run leaves no folder");
    // The loader's batches count too: 1000 workers each holding three
    // batches of 2 × 256 views at 224 px in f32 need 860 GiB.
    let mut a: Vec<&str> = base.to_vec();
    a[3] = "256";
    a.extend(["--res", "224", "--workers", "1000"]);
    assert_usage_error(&a, "loader batches");
}

/// A checkpoint whose teacher weights are all NaN gives NaN features, which
/// kNN refuses: ReLU keeps NaN instead of turning it into a finite 0.
#[test]
fn nan_weights_are_caught_by_evaluation() {
    let out = tmp("nan-weights");
    let o = run(&args(&tiny(&out, 0)));
    assert!(o.status.success(), "{}", stderr(&o));
    let teacher = out.join("checkpoints/step-0000000/teacher.safetensors");
    let mut bytes = std::fs::read(&teacher).unwrap();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    // All ones: NaN as f32.
    bytes[header..].fill(0xff);
    std::fs::write(&teacher, bytes).unwrap();
    let o = run(&[
        "knn",
        "--checkpoint",
        out.to_str().unwrap(),
        "--memory",
        "64",
        "--queries",
        "32",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("non-finite feature"), "{}", stderr(&o));
}

#[test]
fn bn_group_one_is_plain_batch_norm_and_bad_groups_or_gpus_are_refused() {
    let (plain, one, two) = (tmp("bn-plain"), tmp("bn-one"), tmp("bn-two"));
    for (out, extra) in [
        (&plain, &[][..]),
        (&one, &["--bn-group", "1"]),
        (&two, &["--bn-group", "2"]),
    ] {
        let mut a = tiny(out, 2);
        a.extend(extra.iter().map(|s| s.to_string()));
        let o = run(&args(&a));
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
    }
    assert_eq!(
        losses(&one),
        losses(&plain),
        "--bn-group 1 is plain batch norm bit for bit"
    );
    assert_ne!(
        losses(&two),
        losses(&plain),
        "--bn-group 2 normalises each half on its own"
    );
    let saved = std::fs::read_to_string(two.join("config.toml")).unwrap();
    assert!(saved.contains("bn-group = 2"), "{saved}");
    for out in [plain, one, two] {
        let _ = std::fs::remove_dir_all(out);
    }

    let out = tmp("bn-bad");
    for (group, flag) in [
        ("16", "--bn-group 16"),
        ("3", "--bn-group 3"),
        ("0", "--bn-group 0"),
    ] {
        let mut a = tiny(&out, 1);
        a.extend(["--bn-group".to_string(), group.to_string()]);
        assert_usage_error(&args(&a), flag);
    }
    // No GPU here (CI): a data-parallel launch is refused with the reason.
    let mut a = tiny(&out, 1);
    a.extend(["--gpus".to_string(), "2".to_string()]);
    assert_usage_error(&args(&a), "GPU");
    assert!(!out.exists(), "nothing written by a refused run");
}
