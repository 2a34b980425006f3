//! `nets`: layers, the ResNet family and the Momentum² Teacher model over the
//! `engine` crate's tape and flat parameter store.
//!
//! - [`layers`]: Conv2d, BatchNorm (train, eval, momentum), Linear, and the
//!   [`layers::BnBuffers`] that hold running statistics or Momentum-BN history.
//! - [`resnet`]: ResNet-18/34/50/101/152 in torchvision's v1.5 layout, with an
//!   ImageNet or a small-image stem.
//! - [`heads`]: the projector and predictor MLPs.
//! - [`m2t`]: the student/teacher pair and one M2T iteration.
//! - [`data_parallel`]: one M2T step across data-parallel ranks.
//! - [`weights`]: safetensors export and import with torchvision's names.

#![warn(missing_docs)]

pub mod data_parallel;
mod error;
pub mod heads;
pub mod layers;
pub mod m2t;
pub mod resnet;
pub mod weights;

pub use error::{Error, Result};
