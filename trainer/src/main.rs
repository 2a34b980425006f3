//! `trainer`: the Momentum² Teacher command-line tool.

use clap::{Parser, Subcommand};

/// Momentum² Teacher self-supervised pretraining of ResNets.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the compute backends this build has and what they can use.
    Info,
}

fn main() {
    match Cli::parse().command {
        Command::Info => {
            println!("trainer {}", env!("CARGO_PKG_VERSION"));
            println!(
                "cpu: reference backend, {} rayon threads (set RAYON_NUM_THREADS to change)",
                rayon::current_num_threads()
            );
            println!("cuda: not in this build (CPU reference backend only)");
        }
    }
}
