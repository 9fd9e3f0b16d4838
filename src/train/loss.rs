//! The training losses (docs/model.md, 'Training'): pixel-wise cross-entropy on two-channel logits.

use candle_core::Tensor;

use crate::{DspnetError, Result};

/// Class weights of L_seg (bg, fg): the reference's `use_wce` (0.05, 1.0).
pub const SEG_CLASS_WEIGHTS: [f32; 2] = [0.05, 1.0];

/// Weighted cross-entropy of `logits` [2, H, W] (channel 0 = background) against a {0, 1} `target`
/// (H·W, row-major), PyTorch's mean reduction: Σ w_y·nll / Σ w_y.
pub fn cross_entropy(logits: &Tensor, target: &[u8], weights: [f32; 2]) -> Result<Tensor> {
    let (c, h, w) = logits.dims3()?;
    if c != 2 || target.len() != h * w {
        return Err(DspnetError::Shape(format!(
            "cross-entropy of {:?} logits against {} labels",
            logits.dims(),
            target.len()
        )));
    }
    let dev = logits.device();
    let l = logits.reshape((2, h * w))?;
    let max = l.max_keepdim(0)?.detach();
    let lse = (l.broadcast_sub(&max)?.exp()?.sum_keepdim(0)?.log()? + max)?; // [1, N]
    let fg: Vec<f32> = target.iter().map(|&t| f32::from(t != 0)).collect();
    let bg: Vec<f32> = fg.iter().map(|v| 1.0 - v).collect();
    let pixel_weight: Vec<f32> = fg.iter().map(|v| weights[0] + (weights[1] - weights[0]) * v).collect();
    let total: f32 = pixel_weight.iter().sum();
    let onehot = Tensor::from_vec([bg, fg].concat(), (2, h * w), dev)?;
    let picked = (l * onehot)?.sum_keepdim(0)?; // logit of the true class, [1, N]
    let pixel_weight = Tensor::from_vec(pixel_weight, (1, h * w), dev)?;
    let nll = (lse - picked)?;
    Ok((nll * pixel_weight)?.sum_all()?.affine(1.0 / total as f64, 0.0)?)
}
