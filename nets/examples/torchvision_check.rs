//! Full-size torchvision compatibility check, engine side: builds width-64
//! ResNets with random weights, random BN γ/β and random running statistics,
//! exports each backbone with torchvision's names and layouts, and records an
//! NHWC input batch with the engine's eval-mode features.
//! `tests/fixtures/check_torchvision.py` then loads every export into
//! `torchvision.models.resnetXX()` and compares the features.
//!
//! ```text
//! cargo run --release -p nets --example torchvision_check -- /tmp/tvcheck
//! /opt/torchenv/bin/python tests/fixtures/check_torchvision.py /tmp/tvcheck
//! ```
//!
//! For each network `<name>` it writes `<dir>/<name>.safetensors` (the backbone)
//! and `<dir>/<name>.io.safetensors`: `input` `[2,h,w,c]` NHWC and `features`
//! `[2,feature_dim]`, with the architecture, stem and channel count as metadata.

use engine::{ParamKind, Rng, Tape, Tensor};
use nets::layers::{BnBuffers, BnMode, Forward, NetBuilder};
use nets::resnet::{Arch, ResNet, ResNetConfig, Stem};
use nets::weights::{Part, export, write_atomic};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::error::Error;
use std::path::{Path, PathBuf};

/// One network to check.
struct Case {
    arch: Arch,
    stem: Stem,
    in_channels: usize,
    /// Image height and width.
    size: usize,
}

impl Case {
    fn name(&self) -> String {
        format!(
            "{}_{}_c{}_{}px",
            self.arch, self.stem, self.in_channels, self.size
        )
    }
}

const CASES: [Case; 3] = [
    Case {
        arch: Arch::ResNet18,
        stem: Stem::Small,
        in_channels: 3,
        size: 32,
    },
    Case {
        arch: Arch::ResNet50,
        stem: Stem::ImageNet,
        in_channels: 3,
        size: 64,
    },
    Case {
        arch: Arch::ResNet18,
        stem: Stem::ImageNet,
        in_channels: 1,
        size: 64,
    },
];

const BATCH: usize = 2;

/// Values drawn uniformly from `[lo, hi)`.
fn uniform(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n).map(|_| rng.range(lo, hi) as f32).collect()
}

/// Writes f32 tensors and string metadata as one safetensors file.
fn write_tensors(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: HashMap<String, String>,
) -> Result<(), Box<dyn Error>> {
    let views = tensors
        .iter()
        .map(|&(name, t)| {
            let view = TensorView::new(
                Dtype::F32,
                t.dims().to_vec(),
                bytemuck::cast_slice(t.as_slice::<f32>()?),
            )?;
            Ok((name, view))
        })
        .collect::<Result<Vec<_>, Box<dyn Error>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata))?;
    write_atomic(path, &bytes)?;
    Ok(())
}

fn check(case: &Case, seed: u64, dir: &Path) -> Result<(), Box<dyn Error>> {
    let config = ResNetConfig {
        arch: case.arch,
        stem: case.stem,
        in_channels: case.in_channels,
        width: 64,
    };
    let mut builder = NetBuilder::new(seed);
    let net = ResNet::new(&mut builder, config)?;
    let mut buffers = BnBuffers::new(&builder.bn_layers)?;
    let mut store = builder.params.build()?;

    // Random γ/β and statistics, so that a wrong name, layout or BN formula
    // (not only a wrong convolution) changes the features.
    let mut rng = Rng::new(seed ^ 0x5eed);
    for id in store.ids() {
        let (kind, n) = (store.info(id).kind, store.info(id).shape.numel());
        let values = match kind {
            ParamKind::BnScale => uniform(&mut rng, n, 0.5, 1.5),
            ParamKind::BnShift => rng.normal_vec(n, 0.1),
            ParamKind::Weight | ParamKind::Bias => continue,
        };
        store.set(id, &values)?;
    }
    for i in 0..buffers.len() {
        let c = buffers.mean(i).numel();
        let mean = rng.normal_vec(c, 0.1);
        let var = uniform(&mut rng, c, 0.5, 1.5);
        buffers.set(i, &mean, &var)?;
    }

    let name = case.name();
    export(
        &dir.join(format!("{name}.safetensors")),
        &store,
        &buffers,
        Part::Backbone,
    )?;

    let (s, c) = (case.size, case.in_channels);
    let input = Tensor::from_vec(rng.normal_vec(BATCH * s * s * c, 1.0), [BATCH, s, s, c])?;
    let features = {
        let mut tape = Tape::no_grad();
        let params = store.attach(&mut tape);
        let mut f = Forward::new(&mut tape, &params, BnMode::Eval, &buffers);
        let x = f.tape.constant(input.clone());
        net.forward(&mut f, &x)?.value().clone()
    };
    let metadata = HashMap::from([
        ("arch".to_string(), case.arch.to_string()),
        ("stem".to_string(), case.stem.to_string()),
        ("in_channels".to_string(), c.to_string()),
    ]);
    write_tensors(
        &dir.join(format!("{name}.io.safetensors")),
        &[("input", &input), ("features", &features)],
        metadata,
    )?;
    println!(
        "{name}: {} parameters, {} BN layers, features {:?}",
        store.num_params(),
        buffers.len(),
        features.dims()
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .ok_or("usage: torchvision_check DIR")?,
    );
    std::fs::create_dir_all(&dir)?;
    for (i, case) in CASES.iter().enumerate() {
        check(case, 1000 + i as u64, &dir)?;
    }
    println!("wrote {} networks to {}", CASES.len(), dir.display());
    Ok(())
}
