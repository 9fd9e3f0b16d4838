//! Dilated bottleneck ResNet (torchvision v1.5 blocks, DeepLabV3 style, output stride 8) and the 1x1
//! projection to the feature channels (spec §1.2–1.3).
//!
//! Eval-mode BatchNorm is folded into the preceding bias-free convolution at load time, so every stage is
//! one convolution plus bias: w' = w·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};

use crate::model::config::{FeatureSource, ModelConfig};
use crate::{DspnetError, Result};

/// torchvision's BatchNorm epsilon.
const BN_EPS: f64 = 1e-5;

/// A convolution with its BatchNorm folded in (or a plain projection with optional bias).
struct FoldedConv {
    weight: Tensor,
    /// Shaped [1, C, 1, 1] for broadcasting.
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
}

impl FoldedConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, self.padding, self.stride, self.dilation, 1)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

struct Bottleneck {
    conv1: FoldedConv,
    conv2: FoldedConv,
    conv3: FoldedConv,
    downsample: Option<FoldedConv>,
}

impl Bottleneck {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv1.forward(x)?.relu()?;
        let y = self.conv2.forward(&y)?.relu()?;
        let y = self.conv3.forward(&y)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        Ok((y + shortcut)?.relu()?)
    }
}

/// Outputs of the stages, for parity tests and debugging.
pub struct StageOutputs {
    pub stem: Tensor,
    /// layer1.. outputs (3 or 4 entries, depending on the feature source).
    pub layers: Vec<Tensor>,
    pub features: Tensor,
}

/// The learned encoder: ResNet stem, layers, projection.
pub struct Backbone {
    /// conv1 for 3-channel input, as stored.
    stem_rgb: FoldedConv,
    /// conv1 with its 3 input channels summed: DSPNet feeds the grey slice replicated to 3 identical
    /// channels, so a 1-channel convolution with summed kernels computes the same thing 3x cheaper.
    stem_grey: FoldedConv,
    layers: Vec<Vec<Bottleneck>>,
    projection: FoldedConv,
    feature_source: FeatureSource,
}

/// Take a named tensor out of the map (it was validated by the loader).
fn take(tensors: &HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    tensors.get(name).cloned().ok_or_else(|| DspnetError::ModelFormat(format!("missing tensor {name}")))
}

/// Fold `bn` (eval mode) into conv `weight`; computed in f64 on the CPU, then moved to `device` as f32.
fn fold(tensors: &HashMap<String, Tensor>, conv: &str, bn: &str, stride: usize, padding: usize, dilation: usize, device: &Device) -> Result<FoldedConv> {
    let w = take(tensors, &format!("{conv}.weight"))?.to_dtype(DType::F64)?;
    let gamma = take(tensors, &format!("{bn}.weight"))?.to_dtype(DType::F64)?;
    let beta = take(tensors, &format!("{bn}.bias"))?.to_dtype(DType::F64)?;
    let mean = take(tensors, &format!("{bn}.running_mean"))?.to_dtype(DType::F64)?;
    let var = take(tensors, &format!("{bn}.running_var"))?.to_dtype(DType::F64)?;
    let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
    let weight = w.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
    let bias = (beta - (mean * &scale)?)?;
    let c = bias.dim(0)?;
    Ok(FoldedConv {
        weight: weight.to_dtype(DType::F32)?.to_device(device)?,
        bias: Some(bias.to_dtype(DType::F32)?.reshape((1, c, 1, 1))?.to_device(device)?),
        stride,
        padding,
        dilation,
    })
}

impl Backbone {
    /// Build from validated weights (crate's own names), folding BatchNorm.
    pub fn new(config: &ModelConfig, tensors: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let stem_rgb = fold(tensors, "backbone.conv1", "backbone.bn1", 2, 3, 1, device)?;
        let stem_grey = FoldedConv {
            weight: stem_rgb.weight.sum_keepdim(1)?,
            bias: stem_rgb.bias.clone(),
            stride: 2,
            padding: 3,
            dilation: 1,
        };
        let blocks = config.blocks()?;
        let mut layers = Vec::new();
        // torchvision with replace_stride_with_dilation = [False, True, True]: layer2 strides, layer3 and
        // layer4 dilate instead; the first block of a dilated layer keeps the previous dilation.
        let plan: [(usize, usize, usize); 4] = [(1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4)]; // (stride, first dilation, later dilation)
        for (l, &n) in blocks.iter().enumerate().take(config.layers_used()) {
            let (stride, first_dil, dil) = plan[l];
            let mut layer = Vec::with_capacity(n);
            for b in 0..n {
                let p = format!("backbone.layer{}.{b}", l + 1);
                let (s, d) = if b == 0 { (stride, first_dil) } else { (1, dil) };
                layer.push(Bottleneck {
                    conv1: fold(tensors, &format!("{p}.conv1"), &format!("{p}.bn1"), 1, 0, 1, device)?,
                    conv2: fold(tensors, &format!("{p}.conv2"), &format!("{p}.bn2"), s, d, d, device)?,
                    conv3: fold(tensors, &format!("{p}.conv3"), &format!("{p}.bn3"), 1, 0, 1, device)?,
                    downsample: if b == 0 {
                        Some(fold(tensors, &format!("{p}.downsample.0"), &format!("{p}.downsample.1"), s, 0, 1, device)?)
                    } else {
                        None
                    },
                });
            }
            layers.push(layer);
        }
        let proj_w = take(tensors, "projection.weight")?.to_dtype(DType::F32)?.to_device(device)?;
        let proj_b = if config.projection_bias {
            let b = take(tensors, "projection.bias")?.to_dtype(DType::F32)?;
            let c = b.dim(0)?;
            Some(b.reshape((1, c, 1, 1))?.to_device(device)?)
        } else {
            None
        };
        Ok(Backbone {
            stem_rgb,
            stem_grey,
            layers,
            projection: FoldedConv { weight: proj_w, bias: proj_b, stride: 1, padding: 0, dilation: 1 },
            feature_source: config.feature_source,
        })
    }

    pub fn feature_source(&self) -> FeatureSource {
        self.feature_source
    }

    /// conv1 → BN → ReLU → 3x3/2 max-pool (pad 1).
    fn stem(&self, x: &Tensor) -> Result<Tensor> {
        let conv = match x.dim(1)? {
            1 => &self.stem_grey,
            3 => &self.stem_rgb,
            c => return Err(DspnetError::Shape(format!("backbone input has {c} channels; expected 1 (grey) or 3"))),
        };
        let y = conv.forward(x)?.relu()?;
        // Zero padding is exact here: after the ReLU every value is ≥ 0 and each window holds at least one
        // real value, so a 0 never wins the max unless a real 0 would.
        let y = y.pad_with_zeros(D::Minus2, 1, 1)?.pad_with_zeros(D::Minus1, 1, 1)?;
        Ok(y.max_pool2d_with_stride(3, 2)?)
    }

    /// Input [B, 1 or 3, H, W] → features [B, C, H/8, W/8].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = self.stem(x)?;
        for layer in &self.layers {
            for block in layer {
                y = block.forward(&y)?;
            }
        }
        self.projection.forward(&y)
    }

    /// As [`forward`](Self::forward), keeping every stage and calling `on_block(index, output)` after each
    /// bottleneck (index counts from 0 over all layers).
    pub fn forward_traced(&self, x: &Tensor, mut on_block: impl FnMut(usize, &Tensor)) -> Result<StageOutputs> {
        let stem = self.stem(x)?;
        let mut y = stem.clone();
        let mut layers = Vec::new();
        let mut index = 0;
        for layer in &self.layers {
            for block in layer {
                y = block.forward(&y)?;
                on_block(index, &y);
                index += 1;
            }
            layers.push(y.clone());
        }
        let features = self.projection.forward(&y)?;
        Ok(StageOutputs { stem, layers, features })
    }
}
