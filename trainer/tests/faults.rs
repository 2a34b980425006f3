//! Faults a long run meets, on small CPU runs: SIGKILL at many moments
//! (checkpoint writes included) with the job restarted by `--auto-resume`,
//! a full disk during a checkpoint, a torn metrics line, and checkpoints
//! damaged on disk. Each run ends equal, bit for bit, to an uninterrupted one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const STEPS: usize = 24;

fn trainer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.env("RAYON_NUM_THREADS", "2");
    c
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trainer-faults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The job's command line: a small synthetic run, checkpointed every 3 steps.
fn job(out: &Path, steps: usize) -> Vec<String> {
    let flags = format!(
        "--arch resnet18 --bs 16 --dataset synthetic --res 16 --width 4 --proj-hidden 32 \
         --proj-out 16 --knn-every 0 --knn-memory 128 --knn-queries 64 --log-every 1 \
         --workers 2 --checkpoint-every 3 --steps {steps} --out"
    );
    let mut args: Vec<String> = flags.split_whitespace().map(String::from).collect();
    args.push(out.display().to_string());
    args
}

fn run(args: &[String]) -> Output {
    trainer().args(args).output().expect("trainer starts")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// (step, loss bits) of every metrics line; panics on a torn line.
fn losses(out: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("whole metrics lines");
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap().to_bits(),
            )
        })
        .collect()
}

/// The bytes of the final checkpoint's networks and optimiser state.
fn final_weights(out: &Path) -> Vec<Vec<u8>> {
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    let dir = out.join("checkpoints").join(latest.trim());
    [
        "student.safetensors",
        "teacher.safetensors",
        "optimizer.safetensors",
    ]
    .iter()
    .map(|f| std::fs::read(dir.join(f)).unwrap())
    .collect()
}

fn reference(name: &str) -> PathBuf {
    let out = tmp(name);
    let o = run(&job(&out, STEPS));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&out).len(), STEPS);
    out
}

/// Polls `ready` every millisecond; panics if the run ends first or a
/// minute passes.
fn wait_for(child: &mut Child, what: &str, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended by itself ({status}) before {what}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no {what} within a minute"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn metric_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

/// Whether a checkpoint is being written: a temporary folder that has
/// changed `since` (one left by an earlier kill is older).
fn writing_checkpoint(out: &Path, since: std::time::SystemTime) -> bool {
    std::fs::read_dir(out.join("checkpoints")).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name().to_string_lossy().ends_with(".tmp")
                && e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= since)
        })
    })
}

/// SIGKILL at eight moments, half of them inside checkpoint writes (slowed
/// by the test hook, and each such kill waits until a write is under way),
/// the others at seeded random delays; after each, the same command line with `--auto-resume` starts
/// again. The finished run equals an uninterrupted one bit for bit.
#[test]
fn kill_9_at_any_moment_then_auto_resume_equals_an_uninterrupted_run() {
    let want = reference("kill-reference");
    let out = tmp("kill");
    let mut args = job(&out, STEPS);
    args.push("--auto-resume".into());
    let mut seed: u64 = 0x5eed;
    let mut random = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for kill in 0..8 {
        let started = std::time::SystemTime::now();
        let mut child = trainer()
            .args(&args)
            .env("M2T_TEST_SLOW_CHECKPOINT_MS", "40")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Each kill a little further on, so the run keeps progressing.
        let target = 2 + 2 * kill;
        wait_for(&mut child, "the metrics line", || {
            metric_lines(&out) >= target
        });
        if kill % 2 == 0 {
            wait_for(&mut child, "a checkpoint write", || {
                writing_checkpoint(&out, started)
            });
        } else {
            std::thread::sleep(Duration::from_millis(random(120)));
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "kill {kill}: the run must have been killed, not have ended ({status})"
        );
    }
    let o = run(&args);
    assert!(o.status.success(), "the last resume: {}", stderr(&o));
    assert!(stderr(&o).contains("auto-resume: "), "{}", stderr(&o));
    assert_eq!(
        losses(&out),
        losses(&want),
        "losses differ from the uninterrupted run"
    );
    assert!(
        final_weights(&out) == final_weights(&want),
        "weights differ"
    );
}

/// A checkpoint write that hits the file-size limit (a full disk, as far as
/// the trainer can tell) stops the run naming the file and the cause, keeps
/// the previous checkpoint and `latest`, and the next resume finishes the
/// run exactly. A torn metrics line left behind is dropped on resume.
#[test]
fn a_full_disk_during_a_checkpoint_loses_nothing_before_it() {
    let want = reference("disk-reference");
    let out = tmp("disk");
    let args = job(&out, STEPS);
    // Slowed checkpoints leave the run at step 6 long enough to be caught there.
    let mut child = trainer()
        .args(&args)
        .env("M2T_TEST_SLOW_CHECKPOINT_MS", "40")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let latest = out.join("checkpoints/latest");
    wait_for(&mut child, "the checkpoint of step 6", || {
        std::fs::read_to_string(&latest).is_ok_and(|n| n.trim() == "step-0000006")
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = std::fs::read_to_string(&latest).unwrap();

    let o = Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 64 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_trainer"))
        .args(["--resume", "--out", out.to_str().unwrap()])
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("File too large") && err.contains("checkpoints"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&latest).unwrap(), kept);
    // What a crash mid-line would leave.
    use std::io::Write;
    let mut metrics = std::fs::OpenOptions::new()
        .append(true)
        .open(out.join("metrics.jsonl"))
        .unwrap();
    metrics.write_all(b"{\"step\":99,\"lo").unwrap();

    let o = run(&["--resume".into(), "--out".into(), out.display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&out), losses(&want));
    assert!(
        final_weights(&out) == final_weights(&want),
        "weights differ"
    );
}

/// A flipped byte, a truncated file and a missing file in the newest
/// checkpoint: each is named, the previous checkpoint is used, and the run
/// ends as an undamaged one. With both damaged, the error says so.
#[test]
fn a_damaged_checkpoint_is_named_and_the_previous_one_used() {
    let want = reference("damage-reference");
    let newest = |out: &Path| {
        let name = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
        out.join("checkpoints").join(name.trim())
    };
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 3] = [
        ("teacher.safetensors fails its CRC-32", |dir| {
            let path = dir.join("teacher.safetensors");
            let mut bytes = std::fs::read(&path).unwrap();
            let at = bytes.len() / 2;
            bytes[at] ^= 0x10;
            std::fs::write(path, bytes).unwrap();
        }),
        ("optimizer.safetensors has", |dir| {
            let path = dir.join("optimizer.safetensors");
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(path, &bytes[..bytes.len() - 7]).unwrap();
        }),
        ("student.safetensors is missing", |dir| {
            std::fs::remove_file(dir.join("student.safetensors")).unwrap();
        }),
    ];
    for (i, (said, damage)) in damages.iter().enumerate() {
        let out = tmp(&format!("damage-{i}"));
        let o = run(&job(&out, STEPS));
        assert!(o.status.success(), "{}", stderr(&o));
        damage(&newest(&out));
        let o = run(&["--resume".into(), "--out".into(), out.display().to_string()]);
        let err = stderr(&o);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains("warning: checkpoint skipped") && err.contains(said),
            "{err}"
        );
        assert_eq!(losses(&out), losses(&want));
        assert!(
            final_weights(&out) == final_weights(&want),
            "weights differ"
        );
    }
    let out = tmp("damage-all");
    let o = run(&job(&out, STEPS));
    assert!(o.status.success(), "{}", stderr(&o));
    for entry in std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("step-") {
            damages[0].1(&entry.path());
        }
    }
    let o = run(&["--resume".into(), "--out".into(), out.display().to_string()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no valid checkpoint to resume"),
        "{}",
        stderr(&o)
    );
}

/// A requeued job reruns its own command line with `--resume`: accepted.
/// A flag that differs is refused, naming the flag and both values.
#[test]
fn resume_accepts_the_runs_own_flags_and_names_each_difference() {
    let out = tmp("requeue");
    let mut args = job(&out, 4);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    args.push("--resume".into());
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let changed: Vec<String> = args
        .iter()
        .map(|a| {
            if a == "32" {
                "64".to_string()
            } else {
                a.clone()
            }
        })
        .chain(["--lr".into(), "0.5".into()])
        .collect();
    let o = run(&changed);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--proj-hidden: 32 → 64"), "{err}");
    assert!(err.contains("--lr: 0.003125 → 0.5"), "{err}");
    // --auto-resume without a checkpoint starts the run, and says so.
    let fresh = tmp("requeue-fresh");
    let mut args = job(&fresh, 2);
    args.push("--auto-resume".into());
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("auto-resume: no checkpoint in"),
        "{}",
        stderr(&o)
    );
    // --resume without a checkpoint stays an error.
    let o = run(&[
        "--resume".into(),
        "--out".into(),
        tmp("requeue-none").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// A run whose `latest` is lost (a kill between a checkpoint's rename and
/// its `latest`) still holds its checkpoints: `--auto-resume` resumes from
/// them instead of starting over, and a new run there is refused.
#[test]
fn a_run_whose_latest_is_lost_still_holds_its_checkpoints() {
    let out = tmp("lost-latest");
    let args = job(&out, 6);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = losses(&out);
    std::fs::remove_file(out.join("checkpoints/latest")).unwrap();
    let o = run(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("already holds a run"), "{}", stderr(&o));
    let mut again = args.clone();
    again.push("--auto-resume".into());
    let o = run(&again);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("holds a checkpoint; resuming it"), "{err}");
    assert!(err.contains("warning: checkpoint skipped"), "{err}");
    assert_eq!(losses(&out), want);
    assert!(out.join("checkpoints/latest").is_file());
}
