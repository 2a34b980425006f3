//! A tiny two-block residual CNN, trained on one fixed batch through the public
//! engine API (tape, flat parameters, SGD), must memorise it: loss down ≥ 10×.

use engine::ops::{BnNorm, Conv2dParams};
use engine::optim::Sgd;
use engine::{
    ParamId, ParamKind, ParamStore, ParamStoreBuilder, ParamVars, Result, Rng, Tape, Tensor, Var,
};

const WIDTH: usize = 8;
const CLASSES: usize = 4;
const SAME: Conv2dParams = Conv2dParams {
    stride: 1,
    padding: 1,
};

struct ConvBn {
    conv: ParamId,
    gamma: ParamId,
    beta: ParamId,
}

impl ConvBn {
    fn new(b: &mut ParamStoreBuilder, rng: &mut Rng, name: &str, cin: usize) -> Result<Self> {
        // Kaiming-normal, fan-out mode, as ResNet initialises convolutions.
        let std = (2.0 / (9.0 * WIDTH as f64)).sqrt();
        Ok(ConvBn {
            conv: b.add(
                format!("{name}.conv"),
                [WIDTH, 3, 3, cin],
                ParamKind::Weight,
                rng.normal_vec(WIDTH * 9 * cin, std),
            )?,
            gamma: b.add(
                format!("{name}.gamma"),
                [WIDTH],
                ParamKind::BnScale,
                vec![1.0; WIDTH],
            )?,
            beta: b.add(
                format!("{name}.beta"),
                [WIDTH],
                ParamKind::BnShift,
                vec![0.0; WIDTH],
            )?,
        })
    }

    fn forward(&self, t: &mut Tape, p: &ParamVars, x: &Var) -> Result<Var> {
        let y = t.conv2d(x, p.get(self.conv), SAME)?;
        Ok(
            t.batch_norm(&y, p.get(self.gamma), p.get(self.beta), BnNorm::Batch, 1e-5)?
                .0,
        )
    }
}

struct Net {
    stem: ConvBn,
    blocks: Vec<[ConvBn; 2]>,
    fc_w: ParamId,
    fc_b: ParamId,
}

impl Net {
    fn new(rng: &mut Rng) -> Result<(Net, ParamStore)> {
        let mut b = ParamStoreBuilder::new();
        let stem = ConvBn::new(&mut b, rng, "stem", 3)?;
        let blocks = (0..2)
            .map(|i| {
                Ok([
                    ConvBn::new(&mut b, rng, &format!("block{i}.a"), WIDTH)?,
                    ConvBn::new(&mut b, rng, &format!("block{i}.b"), WIDTH)?,
                ])
            })
            .collect::<Result<_>>()?;
        let bound = 1.0 / (WIDTH as f64).sqrt();
        let fc_w = b.add(
            "fc.weight",
            [CLASSES, WIDTH],
            ParamKind::Weight,
            rng.uniform_vec(CLASSES * WIDTH, bound),
        )?;
        let fc_b = b.add(
            "fc.bias",
            [CLASSES],
            ParamKind::Bias,
            rng.uniform_vec(CLASSES, bound),
        )?;
        Ok((
            Net {
                stem,
                blocks,
                fc_w,
                fc_b,
            },
            b.build()?,
        ))
    }

    fn loss(&self, t: &mut Tape, p: &ParamVars, x: &Var, labels: &Tensor) -> Result<Var> {
        let y = self.stem.forward(t, p, x)?;
        let mut h = t.relu(&y)?;
        for [a, b] in &self.blocks {
            let branch = a.forward(t, p, &h)?;
            let branch = t.relu(&branch)?;
            let branch = b.forward(t, p, &branch)?;
            let joined = t.add(&branch, &h)?;
            h = t.relu(&joined)?;
        }
        let pooled = t.global_avg_pool(&h)?;
        let logits = t.linear(&pooled, p.get(self.fc_w), Some(p.get(self.fc_b)))?;
        t.cross_entropy(&logits, labels)
    }
}

#[test]
fn two_block_residual_net_memorises_a_batch() -> Result<()> {
    let mut rng = Rng::new(2024);
    let (net, mut store) = Net::new(&mut rng)?;
    let batch = 8;
    let images = Tensor::from_vec(rng.normal_vec(batch * 8 * 8 * 3, 1.0), [batch, 8, 8, 3])?;
    let labels = Tensor::from_vec(
        (0..batch as i64)
            .map(|i| i % CLASSES as i64)
            .collect::<Vec<_>>(),
        [batch],
    )?;
    let mut sgd = Sgd::new(&store, 0.9, 0.0)?;
    let mut losses = Vec::new();
    for _ in 0..50 {
        let mut tape = Tape::new();
        let params = store.attach(&mut tape);
        let x = tape.constant(images.clone());
        let loss = net.loss(&mut tape, &params, &x, &labels)?;
        losses.push(loss.value().to_f64_vec()?[0]);
        let grads = tape.backward(&loss)?;
        store.zero_grad()?;
        store.accumulate_grads(params, &grads)?;
        sgd.step(&mut store, 0.05)?;
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    println!("loss {first:.4} -> {last:.4} over {} steps", losses.len());
    assert!(
        last.is_finite() && last * 10.0 <= first,
        "loss {first} -> {last}: {losses:?}"
    );
    Ok(())
}
