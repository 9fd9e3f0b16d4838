//! SGD with momentum and weight decay (PyTorch's `torch.optim.SGD`, no dampening, no Nesterov) and the
//! reference's step schedule (docs/model.md, 'Training').

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::Result;

pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    /// Momentum buffers, one per parameter (zeros before the first step: 0.9·0 + d = d is PyTorch's
    /// first-step initialisation).
    pub buffers: Vec<Tensor>,
}

impl Sgd {
    pub fn new(params: &[&Var], momentum: f64, weight_decay: f64) -> Result<Self> {
        let buffers = params.iter().map(|p| p.as_tensor().zeros_like()).collect::<candle_core::Result<_>>()?;
        Ok(Sgd { momentum, weight_decay, buffers })
    }

    /// p ← p − lr·buf, buf ← momentum·buf + (grad + wd·p). Parameters without a gradient are skipped.
    pub fn step(&mut self, params: &[&Var], grads: &GradStore, lr: f64) -> Result<()> {
        for (p, buf) in params.iter().zip(self.buffers.iter_mut()) {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            let d = (g + p.as_tensor().affine(self.weight_decay, 0.0)?)?;
            *buf = (buf.affine(self.momentum, 0.0)? + d)?.detach();
            p.set(&(p.as_tensor() - buf.affine(lr, 0.0)?)?.detach())?;
        }
        Ok(())
    }
}

/// lr × decay^⌊step / every⌋ (MultiStepLR with milestones every `every` steps), `step` counted from 0.
pub fn learning_rate(base: f64, decay: f64, every: usize, step: usize) -> f64 {
    base * decay.powi((step / every.max(1)) as i32)
}
