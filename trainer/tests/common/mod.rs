//! What every end-to-end test of the `trainer` binary shares.

use std::process::{Command, Output};

/// Runs the trainer with `args` on two threads, as CI's machine has.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .env("RAYON_NUM_THREADS", "2")
        .args(args)
        .output()
        .expect("trainer starts")
}
