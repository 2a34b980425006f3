//! The projector and predictor: Linear → BN1d → ReLU → Linear.

use crate::Result;
use crate::layers::{BatchNorm, Forward, Linear, NetBuilder};
use engine::Var;

/// A two-layer MLP head with batch norm on the hidden layer.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// `projector` or `predictor`, also its NVTX range.
    name: String,
    fc1: Linear,
    bn: BatchNorm,
    fc2: Linear,
}

impl Mlp {
    /// Declares `{name}.0` (Linear in→hidden), `{name}.1` (BN1d) and
    /// `{name}.3` (Linear hidden→out): the indices of the equivalent
    /// `nn.Sequential(Linear, BatchNorm1d, ReLU, Linear)`.
    pub fn new(
        b: &mut NetBuilder,
        name: &str,
        fin: usize,
        hidden: usize,
        fout: usize,
    ) -> Result<Self> {
        Ok(Mlp {
            name: name.to_string(),
            fc1: Linear::new(b, &format!("{name}.0"), fin, hidden)?,
            bn: BatchNorm::new(b, &format!("{name}.1"), hidden)?,
            fc2: Linear::new(b, &format!("{name}.3"), hidden, fout)?,
        })
    }

    /// `[n, in] → [n, out]`.
    pub fn forward(&self, f: &mut Forward, x: &Var) -> Result<Var> {
        let _range = engine::nvtx::range(&self.name);
        let h = self.fc1.forward(f, x)?;
        let h = self.bn.forward_relu(f, &h)?;
        self.fc2.forward(f, &h)
    }
}
