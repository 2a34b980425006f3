//! `engine`: the numerical core of the Momentum² Teacher trainer.
//!
//! - [`Tensor`]: dense row-major data with a [`DType`] and a [`Device`];
//!   activations are NHWC, convolution weights KRSC.
//! - [`Tape`]: a hand-written autograd tape. Ops are methods on the tape; the
//!   forward is recorded as data and [`Tape::backward`] walks it in reverse.
//! - [`ParamStore`]: a network's parameters as views of one flat f32 buffer,
//!   with gradients in a second buffer at the same offsets.
//! - [`optim`]: SGD, LARS and the EMA teacher update over the flat buffers.
//! - [`scaler`]: the dynamic loss scaler of fp16 training.
//! - [`Scalar`], [`StepScalars`]: per-step numbers (learning rate, EMA
//!   momentum, Momentum-BN β) in device cells, so a captured step replays.
//! - [`schedule`]: learning rate, EMA momentum and Momentum-BN β per iteration.
//! - [`ops`]: op parameters, and the running/Momentum-BN statistics updates.
//! - [`comm`]: the all-reduce between data-parallel ranks.
//! - [`graph`]: capture of a whole step's device work as a CUDA graph, replayed
//!   in one launch.
//! - [`Rng`]: a seedable generator with saveable state, for initialisation and data.
//!
//! The CPU backend is the reference every other backend is tested against.
//!
//! ```
//! use engine::{Tape, Tensor};
//! let mut tape = Tape::new();
//! let w = tape.param(Tensor::from_vec(vec![1.0f32, -2.0, 0.5, 3.0], [2, 2])?);
//! let x = tape.constant(Tensor::from_vec(vec![1.0f32, 1.0], [1, 2])?);
//! let y = tape.linear(&x, &w, None)?;
//! let labels = Tensor::from_vec(vec![0i64], [1])?;
//! let loss = tape.cross_entropy(&y, &labels)?;
//! let grads = tape.backward(&loss)?;
//! assert_eq!(grads.get(&w).unwrap().dims(), &[2, 2]);
//! # Ok::<(), engine::Error>(())
//! ```

#![warn(missing_docs)]

pub mod comm;
mod cuda_libs;
mod device;
mod dtype;
mod error;
pub mod graph;
pub mod nvtx;
pub mod ops;
pub mod optim;
mod params;
pub mod profile;
mod rng;
mod scalar;
pub mod scaler;
pub mod schedule;
mod shape;
mod tape;
mod tensor;

pub use device::{
    Device, deterministic, gpu_launcher, memory_high_water, set_deterministic, synchronize,
};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use params::{ParamId, ParamInfo, ParamKind, ParamStore, ParamStoreBuilder, ParamVars};
pub use rng::Rng;
pub use scalar::{Scalar, StepScalars};
pub use shape::Shape;
pub use tape::{Gradients, Tape, Var};
pub use tensor::Tensor;
