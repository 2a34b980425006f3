//! `trainer pretrain` as data-parallel ranks: threads of this process
//! joined by the host all-reduce that stands in for NCCL, on the CPU.
//! 1. Two ranks of batch B train as one process with batch 2B and
//!    `--bn-group 2` does, up to f32 summation order.
//! 2. A two-rank run that crashed after a checkpoint and was resumed equals
//!    the uninterrupted one bit for bit.
//! 3. Resuming with another number of ranks is refused, naming both.

use clap::Parser;
use engine::comm::host_group;
use std::path::{Path, PathBuf};
use std::time::Duration;
use trainer::config::PretrainOptions;
use trainer::pretrain::run_rank;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    options: PretrainOptions,
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("m2t-ranks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A small synthetic CPU run of 6 steps, checkpointed every 3, with `extra`
/// flags.
fn options(out: &Path, extra: &str) -> PretrainOptions {
    let flags = format!(
        "trainer --arch resnet18 --dataset synthetic --res 16 --width 4 --proj-hidden 32 \
         --proj-out 16 --knn-every 0 --knn-memory 128 --knn-queries 64 --log-every 1 \
         --workers 1 --checkpoint-every 3 --steps 6 --device cpu {extra} --out {}",
        out.display()
    );
    Flags::parse_from(flags.split_whitespace()).options
}

/// Runs `options` as `world` ranks on threads; each rank's result.
fn as_ranks(world: usize, options: &PretrainOptions) -> Vec<trainer::Result<()>> {
    let comms = host_group(world, Duration::from_secs(120)).unwrap();
    std::thread::scope(|scope| {
        let ranks: Vec<_> = comms
            .into_iter()
            .map(|comm| scope.spawn(move || run_rank(options.clone(), Some(Box::new(comm)))))
            .collect();
        ranks.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

fn all_ok(results: Vec<trainer::Result<()>>) {
    for (rank, r) in results.into_iter().enumerate() {
        if let Err(e) = r {
            panic!("rank {rank}: {e}");
        }
    }
}

/// (step, loss) of every metrics line.
fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

fn checkpoint_file(out: &Path, name: &str) -> Vec<u8> {
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    std::fs::read(out.join("checkpoints").join(latest.trim()).join(name)).unwrap()
}

/// The final student's tensors, as f32 by name.
fn student(out: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = checkpoint_file(out, "student.safetensors");
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<f32>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, bytemuck::pod_collect_to_vec::<u8, f32>(view.data())))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

#[test]
fn two_ranks_train_as_one_process_with_ghost_batch_norm() {
    let (ranks, one) = (tmp("equivalence-ranks"), tmp("equivalence-one"));
    all_ok(as_ranks(2, &options(&ranks, "--bs 8")));
    run_rank(options(&one, "--bs 16 --bn-group 2"), None).unwrap();

    let (a, b) = (losses(&ranks), losses(&one));
    assert_eq!(a.len(), 6);
    for ((step_a, loss_a), (step_b, loss_b)) in a.iter().zip(&b) {
        assert_eq!(step_a, step_b);
        assert!(
            (loss_a - loss_b).abs() <= 1e-5 * loss_b.abs().max(1.0),
            "step {step_a}: loss {loss_a} on two ranks, {loss_b} on one"
        );
    }
    let (a, b) = (student(&ranks), student(&one));
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x.len(), y.len(), "{name}");
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs() / q.abs().max(1e-2));
        }
    }
    assert!(
        worst < 1e-3,
        "weights after 6 steps differ by {worst} (relative)"
    );
    let config = std::fs::read_to_string(ranks.join("config.toml")).unwrap();
    assert!(config.contains("world-size = 2"), "{config}");
}

#[test]
fn a_resumed_two_rank_run_equals_the_uninterrupted_one_bit_for_bit() {
    let (whole, crashed) = (tmp("resume-whole"), tmp("resume-crashed"));
    all_ok(as_ranks(2, &options(&whole, "--bs 8")));
    all_ok(as_ranks(2, &options(&crashed, "--bs 8")));
    // A crash after the checkpoint at step 3: the later one never happened.
    let checkpoints = crashed.join("checkpoints");
    std::fs::remove_dir_all(checkpoints.join(trainer::checkpoint::folder_name(6))).unwrap();
    std::fs::write(
        checkpoints.join("latest"),
        trainer::checkpoint::folder_name(3),
    )
    .unwrap();

    let mut resume = options(&crashed, "--bs 8");
    resume.resume = true;
    all_ok(as_ranks(2, &resume));
    for file in [
        "student.safetensors",
        "teacher.safetensors",
        "optimizer.safetensors",
    ] {
        assert!(
            checkpoint_file(&whole, file) == checkpoint_file(&crashed, file),
            "{file} differs after the resume"
        );
    }
    let bits = |out: &Path| -> Vec<(u64, u64)> {
        losses(out)
            .into_iter()
            .map(|(s, l)| (s, l.to_bits()))
            .collect()
    };
    assert_eq!(bits(&whole), bits(&crashed));

    // The same run with one process: refused, naming both counts.
    let alone = PretrainOptions {
        resume: true,
        out: Some(whole.clone()),
        ..Default::default()
    };
    let err = run_rank(alone, None).unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("2 data-parallel rank(s), this job has 1"),
        "{message}"
    );
}
