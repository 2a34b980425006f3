//! Evaluation on the training device: `trainer knn` and `trainer
//! linear-eval` on the emulated GPU path (features, memory bank,
//! similarities, top-k and vote, and the probe's head, on the device) print
//! the CPU's accuracies, to the printed digit.

use std::process::Output;

mod common;
use common::run;

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn knn_and_linear_eval_on_the_emulator_print_the_cpus_accuracies() {
    let out = std::env::temp_dir().join(format!("trainer-device-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run_dir = out.to_str().unwrap();
    stdout(&run(&[
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
        "--steps",
        "3",
        "--knn-memory",
        "64",
        "--knn-queries",
        "32",
        "--device",
        "cpu",
        "--out",
        run_dir,
    ]));
    for command in [
        &[
            "knn",
            "--checkpoint",
            run_dir,
            "--memory",
            "384",
            "--queries",
            "192",
        ][..],
        &[
            "linear-eval",
            "--checkpoint",
            run_dir,
            "--epochs",
            "2",
            "--bs",
            "64",
            "--limit",
            "256",
        ][..],
    ] {
        let on = |device: &[&str]| {
            let mut a = command.to_vec();
            a.extend(device);
            stdout(&run(&a))
        };
        let cpu = on(&["--device", "cpu"]);
        let emulated = on(&["--device", "emulator", "--precision", "fp32"]);
        assert!(cpu.contains('%'), "{cpu}");
        assert_eq!(emulated, cpu, "{}", command[0]);
    }
    let o = run(&[
        "knn",
        "--checkpoint",
        run_dir,
        "--device",
        "cpu",
        "--precision",
        "bf16",
    ]);
    assert_eq!(o.status.code(), Some(2), "bf16 needs a GPU");
}
