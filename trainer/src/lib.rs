//! The `trainer` library: datasets, augmentation, the data loader, the
//! training loop, evaluation and checkpoints behind the `trainer` binary.

pub mod augment;
pub mod bench;
pub mod bench_loader;
pub mod bench_ops;
pub mod bootstrap;
pub mod check;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod data;
pub mod distributed;
mod error;
pub mod eval;
pub mod interrupt;
pub mod knn;
pub mod limits;
pub mod loader;
pub mod mutation;
pub mod output;
pub mod packing;
pub mod plot;
pub mod pretrain;
pub mod roofline;
pub mod run_lock;

pub use error::{Error, Result};
