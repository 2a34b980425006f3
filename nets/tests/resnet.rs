//! The ResNet family: torchvision's parameter counts, a finite-difference
//! gradient check through whole tiny networks in f64, and weights round trips.

use engine::{DType, ParamVars, Rng, Tape, Tensor, Var};
use nets::layers::{BnBuffers, BnMode, Forward, NetBuilder, attach_as};
use nets::resnet::{Arch, ResNet, ResNetConfig, Stem};
use nets::weights::{Part, export, import};

fn build(config: ResNetConfig, seed: u64) -> (ResNet, engine::ParamStore, BnBuffers) {
    let mut b = NetBuilder::new(seed);
    let net = ResNet::new(&mut b, config).unwrap();
    let buffers = BnBuffers::new(&b.bn_layers).unwrap();
    (net, b.params.build().unwrap(), buffers)
}

#[test]
fn parameter_counts_match_torchvision_backbones() {
    // torchvision's totals minus the fc layer.
    for (arch, count) in [
        (Arch::ResNet18, 11_176_512),
        (Arch::ResNet34, 21_284_672),
        (Arch::ResNet50, 23_508_032),
        (Arch::ResNet101, 42_500_160),
        (Arch::ResNet152, 58_143_808),
    ] {
        let (net, store, _) = build(ResNetConfig::torchvision(arch), 0);
        assert_eq!(store.num_params(), count, "{arch}");
        let f = net.config().feature_dim();
        assert_eq!(f, if arch.bottleneck() { 2048 } else { 512 });
    }
}

#[test]
fn names_follow_torchvision() {
    let (_, store, buffers) = build(ResNetConfig::torchvision(Arch::ResNet50), 0);
    for name in [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "layer1.0.conv1.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.bias",
        "layer4.2.conv3.weight",
        "layer4.2.bn3.weight",
    ] {
        assert!(store.find(name).is_some(), "{name} missing");
    }
    assert!(store.find("layer1.1.downsample.0.weight").is_none());
    let w = store.value(store.find("layer2.0.conv2.weight").unwrap());
    assert_eq!(w.dims(), &[128, 3, 3, 128], "KRSC");
    assert_eq!(buffers.name(0), "bn1");
}

/// Sum of `seed ⊙ backbone(x)` in f64 train mode, with the given parameter values.
fn objective(
    net: &ResNet,
    buffers: &BnBuffers,
    params: &[Tensor],
    x: &Tensor,
    seed: &[f64],
) -> f64 {
    let mut tape = Tape::no_grad();
    let vars = ParamVars::from_vars(params.iter().map(|p| tape.constant(p.clone())).collect());
    let mut f = Forward::new(&mut tape, &vars, BnMode::Train, buffers);
    let x = f.tape.constant(x.clone());
    let y = net
        .forward(&mut f, &x)
        .unwrap()
        .value()
        .to_f64_vec()
        .unwrap();
    y.iter().zip(seed).map(|(a, b)| a * b).sum()
}

fn gradcheck(config: ResNetConfig, input: [usize; 4]) {
    let (net, store, buffers) = build(config, 5);
    let mut rng = Rng::new(9);
    let x: Vec<f64> = (0..input.iter().product()).map(|_| rng.normal()).collect();
    let x = Tensor::from_vec(x, input).unwrap();

    let mut tape = Tape::new();
    let vars = attach_as(&store, &mut tape, DType::F64).unwrap();
    let mut f = Forward::new(&mut tape, &vars, BnMode::Train, &buffers);
    let xv = f.tape.constant(x.clone());
    let y: Var = net.forward(&mut f, &xv).unwrap();
    let seed: Vec<f64> = (0..y.value().numel()).map(|_| rng.normal()).collect();
    let grads = tape
        .backward_with(
            &y,
            Tensor::from_vec(seed.clone(), y.shape().clone()).unwrap(),
        )
        .unwrap();

    let params: Vec<Tensor> = store.ids().map(|id| vars.get(id).value().clone()).collect();
    // Deep, narrow, batch-normalised nets are far from linear even 1e-5 away,
    // so the step is small and the absolute floor covers f64 rounding.
    let h = 1e-7;
    let mut checked = 0;
    for (i, id) in store.ids().enumerate() {
        let analytic = grads.get(vars.get(id)).unwrap().to_f64_vec().unwrap();
        let base = params[i].to_f64_vec().unwrap();
        // Two elements of every parameter tensor keeps the check fast and complete.
        for j in [0, base.len() / 2] {
            let probe = |d: f64| {
                let mut p = params.clone();
                let mut v = base.clone();
                v[j] += d;
                p[i] = Tensor::from_vec(v, params[i].shape().clone()).unwrap();
                objective(&net, &buffers, &p, &x, &seed)
            };
            let numeric = (probe(h) - probe(-h)) / (2.0 * h);
            let a = analytic[j];
            let name = &store.info(id).name;
            assert!(
                (a - numeric).abs() <= 1e-6 + 1e-5 * a.abs().max(numeric.abs()),
                "{}: {name}[{j}]: analytic {a}, numeric {numeric}",
                config.arch
            );
            checked += 1;
        }
    }
    assert!(checked >= 2 * store.infos().len());
}

// Each stage must keep several values per BN channel (batch × pixels); with
// only two, train-mode BN is too non-linear for finite differences.
#[test]
fn gradient_check_basic_block_imagenet_stem_grey() {
    let config = ResNetConfig {
        arch: Arch::ResNet18,
        stem: Stem::ImageNet,
        in_channels: 1,
        width: 2,
    };
    gradcheck(config, [2, 64, 64, 1]);
}

#[test]
fn gradient_check_bottleneck_small_stem() {
    let config = ResNetConfig {
        arch: Arch::ResNet50,
        stem: Stem::Small,
        in_channels: 3,
        width: 2,
    };
    gradcheck(config, [2, 16, 16, 3]);
}

fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nets-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn export_then_import_is_bit_exact() {
    let config = ResNetConfig {
        arch: Arch::ResNet18,
        stem: Stem::Small,
        in_channels: 3,
        width: 4,
    };
    let (_, store, mut buffers) = build(config, 1);
    let mut rng = Rng::new(3);
    for i in 0..buffers.len() {
        let c = buffers.mean(i).numel();
        let var: Vec<f32> = (0..c).map(|_| rng.range(0.5, 2.0) as f32).collect();
        buffers.set(i, &rng.normal_vec(c, 1.0), &var).unwrap();
    }
    let path = temp_path("roundtrip.safetensors");
    export(&path, &store, &buffers, Part::Backbone).unwrap();

    let (_, mut other, mut other_buffers) = build(config, 2);
    assert_ne!(
        other.values().to_vec::<f32>().unwrap(),
        store.values().to_vec::<f32>().unwrap()
    );
    import(&path, &mut other, &mut other_buffers, Part::Backbone).unwrap();
    let bits = |t: &Tensor| {
        t.to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(other.values()), bits(store.values()));
    for i in 0..buffers.len() {
        assert_eq!(bits(other_buffers.mean(i)), bits(buffers.mean(i)));
        assert_eq!(bits(other_buffers.var(i)), bits(buffers.var(i)));
    }
}

#[test]
fn import_lists_every_mismatch_by_name() {
    let small = ResNetConfig {
        arch: Arch::ResNet18,
        stem: Stem::Small,
        in_channels: 3,
        width: 4,
    };
    let (_, store, buffers) = build(small, 1);
    let path = temp_path("width4.safetensors");
    export(&path, &store, &buffers, Part::Backbone).unwrap();

    // Same names, different widths: every tensor's shape is wrong.
    let wider = ResNetConfig { width: 8, ..small };
    let (_, mut target, mut target_buffers) = build(wider, 1);
    let before = target.values().to_vec::<f32>().unwrap();
    let err = import(&path, &mut target, &mut target_buffers, Part::Backbone)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv1.weight: shape [4, 3, 3, 3], expected [8, 3, 3, 3]"),
        "{err}"
    );
    assert!(err.contains("layer4.1.bn2.running_var"), "{err}");
    assert_eq!(
        target.values().to_vec::<f32>().unwrap(),
        before,
        "nothing imported on error"
    );

    // A deeper network: the file lacks its extra blocks.
    let deeper = ResNetConfig {
        arch: Arch::ResNet34,
        ..small
    };
    let (_, mut target, mut target_buffers) = build(deeper, 1);
    let err = import(&path, &mut target, &mut target_buffers, Part::Backbone)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing tensor layer1.2.conv1.weight"),
        "{err}"
    );

    // A shallower one: the file has blocks it does not know.
    let (_, mut big_store, big_buffers) = build(deeper, 1);
    let deep_path = temp_path("deep.safetensors");
    export(&deep_path, &big_store, &big_buffers, Part::Backbone).unwrap();
    let (_, mut target, mut target_buffers) = build(small, 1);
    let err = import(&deep_path, &mut target, &mut target_buffers, Part::Backbone)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unexpected tensor layer1.2.bn1.bias"), "{err}");

    std::fs::write(&deep_path, b"not safetensors").unwrap();
    let err = import(
        &deep_path,
        &mut big_store,
        &mut target_buffers,
        Part::Backbone,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a valid safetensors file"), "{err}");
    let err = import(
        &temp_path("absent.safetensors"),
        &mut target,
        &mut target_buffers,
        Part::Backbone,
    )
    .unwrap_err();
    assert!(err.to_string().contains("absent.safetensors"), "{err}");
}
