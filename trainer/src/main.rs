//! `trainer`: Momentum² Teacher self-supervised pretraining of ResNets.

use clap::{Parser, Subcommand};
use trainer::bench::BenchArgs;
use trainer::commands::{EmbedArgs, ExportArgs, InfoArgs, KnnArgs, LinearEvalArgs};
use trainer::config::PretrainOptions;
use trainer::packing::PackArgs;

// The CPU backend allocates fresh activation buffers every step; mimalloc
// reuses freed memory instead of returning it to the OS and faulting it back in.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (libmimalloc-sys
/// names no constant for it); checked against its default by a test.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped for reuse. mimalloc otherwise hands unused pages
/// back to the OS a second after they are freed, so every step of a CPU run
/// faulted its activation buffers in again (about 5% of the step).
fn keep_freed_memory() {
    // SAFETY: sets one allocator option before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Momentum² Teacher self-supervised pretraining of ResNets.
///
/// With no subcommand, pretrains: `trainer --arch resnet18 --bs 128`.
#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    after_help = "Exit codes: 0 success; 1 data or runtime error (bad or changed data, \
                  unreadable files, divergence, a run folder in use, a full disk); \
                  2 usage error (bad flags or configuration, a run that cannot fit in memory); \
                  130 interrupted by SIGINT or SIGTERM, with the checkpoint written.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    allow_negative_numbers = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    pretrain: PretrainOptions,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain student and teacher (the default command).
    #[command(allow_negative_numbers = true)]
    Pretrain(Box<PretrainOptions>),
    /// kNN accuracy (k=200, cosine, t=0.1) of a checkpoint's backbone features, or of raw pixels.
    #[command(allow_negative_numbers = true)]
    Knn(KnnArgs),
    /// Linear evaluation on frozen backbone features (m2t-method.md §6).
    #[command(allow_negative_numbers = true)]
    LinearEval(LinearEvalArgs),
    /// Write backbone features of a dataset or of an `images` safetensors file.
    Embed(EmbedArgs),
    /// Export a backbone as safetensors that torchvision's resnetXX() loads.
    Export(ExportArgs),
    /// Time full M2T steps on synthetic data, or (--loader) the input pipeline alone.
    Bench(BenchArgs),
    /// Pack an ImageFolder into one memory-mapped file (`--data FILE` reads it).
    Pack(PackArgs),
    /// Show the compute backends and datasets this build can use; --check tests each.
    Info(InfoArgs),
}

/// Makes a write past the file-size limit (`ulimit -f`) fail with EFBIG,
/// which is reported, instead of SIGXFSZ killing the process silently.
fn report_file_size_limit() {
    // SAFETY: sets a signal disposition before any other thread exists.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

fn main() {
    // First, before any thread exists: cuDNN's own loads of its sub-libraries
    // must find the folder chosen for it (see kernels::probe).
    kernels::probe::reexec_with_library_path();
    keep_freed_memory();
    report_file_size_limit();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            // One line: clap's message (with its list of missing arguments)
            // without the usage block and the pointer to --help.
            let rendered = e.to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!(
                "trainer: {} (see --help)",
                message.join(" ").trim_start_matches("error: ")
            );
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        None => trainer::pretrain::run(cli.pretrain),
        Some(Command::Pretrain(opts)) => trainer::pretrain::run(*opts),
        Some(Command::Knn(args)) => trainer::commands::knn(args).map(|_| ()),
        Some(Command::LinearEval(args)) => trainer::commands::linear_eval(args),
        Some(Command::Embed(args)) => trainer::commands::embed(args),
        Some(Command::Export(args)) => trainer::commands::export_backbone(args),
        Some(Command::Bench(args)) => trainer::bench::run(args),
        Some(Command::Pack(args)) => trainer::packing::run(args),
        Some(Command::Info(args)) => trainer::commands::info(args),
    };
    if let Err(e) = result {
        // Each rank of a data-parallel job prints its own error: say whose.
        let world = trainer::distributed::world_from_env(|name| std::env::var(name).ok());
        match world {
            Ok(Some(w)) if w.size > 1 => eprintln!("trainer (rank {} of {}): {e}", w.rank, w.size),
            _ => eprintln!("trainer: {e}"),
        }
        std::process::exit(e.exit_code());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_option_is_the_one_meant() {
        // mimalloc 3's purge delay defaults to 1000 ms; a shifted index reads
        // some other option's value.
        // SAFETY: reads one option.
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            1000
        );
    }
}
