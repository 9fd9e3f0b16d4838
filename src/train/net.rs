//! The trained part of the network: the last K bottlenecks of the feature layer and the projection, as
//! candle ops on [`Var`]s so that candle's autograd differentiates them.
//!
//! BatchNorm stays in eval mode, folded into each convolution (weight and bias are trained). The
//! reference trains with the statistics of its 2-image batch; on a pretrained backbone with batch 2 that
//! overwrites the trained statistics, so this is a deliberate deviation. Exported, a folded convolution
//! becomes the convolution weight plus an identity BatchNorm (weight 1, bias b, mean 0, variance 1 − ε),
//! which the loader folds back to the same numbers.
//!
//! Activations are channel-major, [C, B·H·W], so every convolution is one matrix product: 1×1 directly,
//! the dilated 3×3 after gathering its nine shifted copies (im2col from pads and narrows).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};

use crate::config::{ConvSpec, ModelConfig};
use crate::model::backbone::{fold_batchnorm, BN_EPS};
use crate::weights::NamedValues;
use crate::{DspnetError, Result};

/// One trained convolution, BatchNorm folded in.
struct Conv {
    /// Convolution tensor prefix ("backbone.layer3.22.conv2", "projection").
    name: String,
    /// Its BatchNorm prefix (none for the projection).
    bn: Option<String>,
    /// [O, I·k·k], PyTorch's weight order.
    weight: Var,
    /// [O, 1]
    bias: Option<Var>,
    shape: [usize; 4],
    dilation: usize,
}

impl Conv {
    /// A convolution of the architecture table (stride 1, padding equal to the dilation).
    fn folded(tensors: &HashMap<String, Tensor>, spec: &ConvSpec, device: &Device) -> Result<Self> {
        if spec.stride != 1 || spec.padding != spec.dilation * (spec.shape[2] / 2) {
            return Err(DspnetError::InvalidArgument(format!(
                "{} strides or pads unlike a dilated layer; it cannot be trained",
                spec.name
            )));
        }
        let (w, b) = fold_batchnorm(tensors, &spec.name, &spec.batchnorm)?;
        Self::from_tensors(spec.name.clone(), Some(spec.batchnorm.clone()), &w, Some(&b), spec.dilation, device)
    }

    fn from_tensors(
        name: String,
        bn: Option<String>,
        w: &Tensor,
        b: Option<&Tensor>,
        dilation: usize,
        device: &Device,
    ) -> Result<Self> {
        let (o, i, kh, kw) = w.dims4()?;
        let weight = Var::from_tensor(&w.reshape((o, i * kh * kw))?.to_device(device)?)?;
        let bias = b.map(|b| Var::from_tensor(&b.reshape((o, 1))?.to_device(device)?)).transpose()?;
        Ok(Conv { name, bn, weight, bias, shape: [o, i, kh, kw], dilation })
    }

    /// x [C, B, H, W] → [O, B, H, W].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (c, b, h, w) = x.dims4()?;
        let [o, _, k, _] = self.shape;
        let cols = if k == 1 {
            x.reshape((c, b * h * w))?
        } else {
            let d = self.dilation;
            let padded = x.pad_with_zeros(2, d, d)?.pad_with_zeros(3, d, d)?;
            let mut taps = Vec::with_capacity(k * k);
            for ky in 0..k {
                for kx in 0..k {
                    taps.push(padded.narrow(2, ky * d, h)?.narrow(3, kx * d, w)?);
                }
            }
            Tensor::stack(&taps, 1)?.reshape((c * k * k, b * h * w))? // row = c·k² + tap, as the weight
        };
        let y = self.weight.as_tensor().matmul(&cols)?;
        let y = match &self.bias {
            Some(bias) => y.broadcast_add(bias.as_tensor())?,
            None => y,
        };
        Ok(y.reshape((o, b, h, w))?)
    }

    fn vars(&self) -> impl Iterator<Item = (String, &Var)> {
        std::iter::once((format!("{}.weight", self.name), &self.weight))
            .chain(self.bias.as_ref().map(|b| (format!("{}.bias", self.name), b)))
    }

    /// The weight-file tensors that carry this convolution now.
    fn export(&self, out: &mut Vec<NamedValues>) -> Result<()> {
        let values = |v: &Var| -> Result<Vec<f32>> {
            Ok(v.as_tensor().to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
        };
        out.push((format!("{}.weight", self.name), self.shape.to_vec(), values(&self.weight)?));
        let o = self.shape[0];
        match (&self.bn, &self.bias) {
            (Some(bn), Some(bias)) => {
                // Identity BatchNorm: γ/√(σ² + ε) = 1/√(1 − ε + ε) = 1 and β − μ·1 = b.
                out.push((format!("{bn}.weight"), vec![o], vec![1.0; o]));
                out.push((format!("{bn}.bias"), vec![o], values(bias)?));
                out.push((format!("{bn}.running_mean"), vec![o], vec![0.0; o]));
                out.push((format!("{bn}.running_var"), vec![o], vec![(1.0 - BN_EPS) as f32; o]));
            }
            (None, Some(bias)) => out.push((format!("{}.bias", self.name), vec![o], values(bias)?)),
            _ => {}
        }
        Ok(())
    }
}

struct Block {
    conv1: Conv,
    conv2: Conv,
    conv3: Conv,
    downsample: Option<Conv>,
}

impl Block {
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

    fn convs(&self) -> impl Iterator<Item = &Conv> {
        [&self.conv1, &self.conv2, &self.conv3].into_iter().chain(self.downsample.as_ref())
    }
}

/// The last `K` bottlenecks of the feature layer and the projection, trainable.
pub struct TrainableNet {
    /// Bottlenecks run frozen before these (over all layers, layer1 first).
    prefix_blocks: usize,
    blocks: Vec<Block>,
    projection: Conv,
}

impl TrainableNet {
    /// From validated weights (own names); `k` ≤ the number of bottlenecks in the feature layer.
    pub fn new(config: &ModelConfig, tensors: &HashMap<String, Tensor>, k: usize, device: &Device) -> Result<Self> {
        let all = config.bottlenecks()?;
        let layer = config.layers_used() - 1;
        let n = all.iter().filter(|b| b.layer == layer).count();
        if k > n {
            return Err(DspnetError::InvalidArgument(format!(
                "--trainable-blocks {k}: the feature layer (layer{}) of this ResNet-{} has {n} bottlenecks",
                layer + 1,
                config.depth
            )));
        }
        let total = all.len();
        let mut trained = Vec::with_capacity(k);
        for spec in &all[total - k..] {
            let conv = |c: &ConvSpec| Conv::folded(tensors, c, device);
            trained.push(Block {
                conv1: conv(&spec.conv1)?,
                conv2: conv(&spec.conv2)?,
                conv3: conv(&spec.conv3)?,
                downsample: spec.downsample.as_ref().map(conv).transpose()?,
            });
        }
        let pw = tensors
            .get("projection.weight")
            .ok_or_else(|| DspnetError::ModelFormat("missing projection.weight".into()))?
            .to_dtype(DType::F32)?;
        let pb = tensors.get("projection.bias").map(|b| b.to_dtype(DType::F32)).transpose()?;
        let projection = Conv::from_tensors("projection".into(), None, &pw, pb.as_ref(), 1, device)?;
        Ok(TrainableNet { prefix_blocks: total - k, blocks: trained, projection })
    }

    /// Bottlenecks that run frozen, before the trained ones.
    pub fn prefix_blocks(&self) -> usize {
        self.prefix_blocks
    }

    /// Output of the frozen prefix [B, C, H, W] → features [C_f, B, h, w] (channel-major).
    pub fn forward(&self, prefix: &Tensor) -> Result<Tensor> {
        let mut y = prefix.transpose(0, 1)?.contiguous()?;
        for block in &self.blocks {
            y = block.forward(&y)?;
        }
        self.projection.forward(&y)
    }

    /// Every trained parameter with its name, in a fixed order.
    pub fn vars(&self) -> Vec<(String, &Var)> {
        self.blocks
            .iter()
            .flat_map(Block::convs)
            .chain(std::iter::once(&self.projection))
            .flat_map(Conv::vars)
            .collect()
    }

    /// The weight-file tensors (own names, shapes, values) that replace the initial ones.
    pub fn export(&self) -> Result<Vec<NamedValues>> {
        let mut out = Vec::new();
        for conv in self.blocks.iter().flat_map(Block::convs).chain(std::iter::once(&self.projection)) {
            conv.export(&mut out)?;
        }
        Ok(out)
    }
}
