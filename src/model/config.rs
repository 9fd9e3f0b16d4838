//! Architecture description of a DSPNet model, stored in the weight file's safetensors metadata.

use std::collections::HashMap;

use crate::{DspnetError, Result};

/// Version of the metadata layout written by this crate.
pub const FORMAT_VERSION: u32 = 1;

/// Which backbone stage feeds the 1x1 projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureSource {
    /// layer3 (1024 channels): cheaper, and better on small structures with a CT-trained backbone.
    Layer3,
    /// layer4 (2048 channels): the paper's and the official code's choice.
    Layer4,
}

impl FeatureSource {
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureSource::Layer3 => "layer3",
            FeatureSource::Layer4 => "layer4",
        }
    }
    /// Channels of the chosen stage (bottleneck expansion 4 × width 256 / 512).
    pub fn channels(self) -> usize {
        match self {
            FeatureSource::Layer3 => 1024,
            FeatureSource::Layer4 => 2048,
        }
    }
}

/// How raw voxel intensities become network input. Declared by the weights, applied by the volume
/// pipeline.
#[derive(Clone, Debug, PartialEq)]
pub enum InputNormalization {
    /// The official DSPNet recipe: CT windowed to [-125, 275] HU, scaled to [0, 255], then z-scored over
    /// the volume; MRI clipped above the 99.5th percentile, then z-scored. The modality decides.
    Official,
    /// Clip to [low, high] and scale linearly to [0, 1] (CT foundation models, e.g. HU [-1000, 1000]);
    /// MRI, which has no absolute scale, uses its own 0.5th-99.5th percentile range instead.
    Window { low: f64, high: f64 },
}

impl InputNormalization {
    pub fn to_metadata(&self) -> String {
        match self {
            InputNormalization::Official => "official".into(),
            InputNormalization::Window { low, high } => format!("window:{low}:{high}"),
        }
    }
    pub fn from_metadata(s: &str) -> Result<Self> {
        if s == "official" {
            return Ok(InputNormalization::Official);
        }
        let bad = || DspnetError::ModelFormat(format!("unknown input_normalization '{s}' (expected 'official' or 'window:LOW:HIGH')"));
        let rest = s.strip_prefix("window:").ok_or_else(bad)?;
        let (low, high) = rest.split_once(':').ok_or_else(bad)?;
        let low: f64 = low.parse().map_err(|_| bad())?;
        let high: f64 = high.parse().map_err(|_| bad())?;
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(bad());
        }
        Ok(InputNormalization::Window { low, high })
    }
}

/// The learned part of a DSPNet model: which ResNet, which stage, which projection.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// ResNet depth: 50, 101 (the paper's) or 152.
    pub depth: usize,
    pub feature_source: FeatureSource,
    /// Output channels of the projection (256 in DSPNet).
    pub feature_channels: usize,
    /// Whether the projection has a bias (used to mean-centre features before projecting).
    pub projection_bias: bool,
    pub input_normalization: InputNormalization,
    /// Whether the backbone was trained on slices transposed relative to the crate's canvas (rows follow
    /// the first in-plane voxel axis instead of the second). The model transposes its input and its
    /// features back, so the rest of the pipeline never sees it.
    pub transpose_slices: bool,
}

impl Default for ModelConfig {
    /// The official configuration: ResNet-101, layer4, bias-free projection to 256 channels.
    fn default() -> Self {
        ModelConfig {
            depth: 101,
            feature_source: FeatureSource::Layer4,
            feature_channels: 256,
            projection_bias: false,
            input_normalization: InputNormalization::Official,
            transpose_slices: false,
        }
    }
}

/// Bottleneck counts of layer1..layer4 for a torchvision ResNet depth.
pub fn blocks_per_layer(depth: usize) -> Result<[usize; 4]> {
    match depth {
        50 => Ok([3, 4, 6, 3]),
        101 => Ok([3, 4, 23, 3]),
        152 => Ok([3, 8, 36, 3]),
        d => Err(DspnetError::ModelFormat(format!("unsupported ResNet depth {d} (supported: 50, 101, 152)"))),
    }
}

impl ModelConfig {
    pub fn blocks(&self) -> Result<[usize; 4]> {
        blocks_per_layer(self.depth)
    }

    /// Number of layers built: layer4 is skipped entirely when features come from layer3.
    pub fn layers_used(&self) -> usize {
        match self.feature_source {
            FeatureSource::Layer3 => 3,
            FeatureSource::Layer4 => 4,
        }
    }

    /// Every tensor the model needs, in the crate's own names, with its shape. Loading is strict against
    /// this list.
    pub fn expected_tensors(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let blocks = self.blocks()?;
        let mut out = Vec::new();
        let bn = |out: &mut Vec<(String, Vec<usize>)>, prefix: &str, c: usize| {
            for p in ["weight", "bias", "running_mean", "running_var"] {
                out.push((format!("{prefix}.{p}"), vec![c]));
            }
        };
        out.push(("backbone.conv1.weight".into(), vec![64, 3, 7, 7]));
        bn(&mut out, "backbone.bn1", 64);
        let mut in_ch = 64;
        for (l, &n) in blocks.iter().enumerate().take(self.layers_used()) {
            let width = 64 << l;
            let out_ch = width * 4;
            for b in 0..n {
                let p = format!("backbone.layer{}.{b}", l + 1);
                let cin = if b == 0 { in_ch } else { out_ch };
                out.push((format!("{p}.conv1.weight"), vec![width, cin, 1, 1]));
                bn(&mut out, &format!("{p}.bn1"), width);
                out.push((format!("{p}.conv2.weight"), vec![width, width, 3, 3]));
                bn(&mut out, &format!("{p}.bn2"), width);
                out.push((format!("{p}.conv3.weight"), vec![out_ch, width, 1, 1]));
                bn(&mut out, &format!("{p}.bn3"), out_ch);
                if b == 0 {
                    out.push((format!("{p}.downsample.0.weight"), vec![out_ch, cin, 1, 1]));
                    bn(&mut out, &format!("{p}.downsample.1"), out_ch);
                }
            }
            in_ch = out_ch;
        }
        out.push(("projection.weight".into(), vec![self.feature_channels, self.feature_source.channels(), 1, 1]));
        if self.projection_bias {
            out.push(("projection.bias".into(), vec![self.feature_channels]));
        }
        Ok(out)
    }

    /// The safetensors `__metadata__` entries describing this configuration.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            ("format".to_string(), "dspnet".to_string()),
            ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ("depth".to_string(), self.depth.to_string()),
            ("feature_source".to_string(), self.feature_source.as_str().to_string()),
            ("feature_channels".to_string(), self.feature_channels.to_string()),
            ("projection_bias".to_string(), self.projection_bias.to_string()),
            ("input_normalization".to_string(), self.input_normalization.to_metadata()),
            ("transpose_slices".to_string(), self.transpose_slices.to_string()),
        ])
    }
}

/// Map an official `FewShotSeg.state_dict()` name to the crate's own name.
/// Returns `None` for names that carry no inference weight (dead ASPP, BN counters), and leaves names
/// that are already the crate's own unchanged.
pub fn canonical_name(name: &str) -> Option<String> {
    if name.ends_with(".num_batches_tracked")
        || name.starts_with("encoder.aspp_out.")
        || name == "encoder.asppconv.weight"
    {
        return None;
    }
    if let Some(rest) = name.strip_prefix("encoder.backbone.") {
        return Some(format!("backbone.{rest}"));
    }
    if let Some(rest) = name.strip_prefix("encoder.localconv.") {
        return Some(format!("projection.{rest}"));
    }
    Some(name.to_string())
}

/// The official name of one of the crate's own names (the synthetic generator is keyed on these).
pub fn official_name(own: &str) -> String {
    if let Some(rest) = own.strip_prefix("backbone.") {
        format!("encoder.backbone.{rest}")
    } else if let Some(rest) = own.strip_prefix("projection.") {
        format!("encoder.localconv.{rest}")
    } else {
        own.to_string()
    }
}
