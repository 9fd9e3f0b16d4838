//! What a DSPNet weight file declares, below both the weight loader and the network: the architecture
//! (one table of bottlenecks that the weight check, the backbone and the trainer all read), the tensor
//! names (official and the crate's own) and the metadata layout.

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
    /// How many layers are built up to and including the chosen stage.
    pub fn layers(self) -> usize {
        match self {
            FeatureSource::Layer3 => 3,
            FeatureSource::Layer4 => 4,
        }
    }
    /// Channels of the chosen stage (bottleneck expansion × the layer's width).
    pub fn channels(self) -> usize {
        LAYERS[self.layers() - 1].width * EXPANSION
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
        let bad = || {
            DspnetError::ModelFormat(format!(
                "unknown input_normalization '{s}' (expected 'official' or 'window:LOW:HIGH')"
            ))
        };
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

/// Bottlenecks in layer1..layer4 of each supported torchvision ResNet depth. Adding a depth is one row.
const DEPTHS: &[(usize, [usize; 4])] = &[(50, [3, 4, 6, 3]), (101, [3, 4, 23, 3]), (152, [3, 8, 36, 3])];

/// Channels out of the stem (7x7 convolution, then 3x3/2 max-pool).
const STEM_CHANNELS: usize = 64;

/// A bottleneck's output channels over its width (torchvision's `Bottleneck.expansion`).
const EXPANSION: usize = 4;

/// How one ResNet layer is built.
struct LayerPlan {
    /// Channels inside its bottlenecks (the 3x3 convolution's).
    width: usize,
    /// Stride of its first bottleneck (3x3 convolution and downsample shortcut).
    stride: usize,
    /// Dilation of its first bottleneck's 3x3 convolution, and of the others'.
    first_dilation: usize,
    dilation: usize,
}

/// DeepLabV3's dilated ResNet (torchvision's `replace_stride_with_dilation = [False, True, True]`):
/// layer2 strides; layer3 and layer4 dilate instead, and the first bottleneck of a dilated layer keeps the
/// previous dilation. Output stride 8.
const LAYERS: [LayerPlan; 4] = [
    LayerPlan { width: 64, stride: 1, first_dilation: 1, dilation: 1 },
    LayerPlan { width: 128, stride: 2, first_dilation: 1, dilation: 1 },
    LayerPlan { width: 256, stride: 1, first_dilation: 1, dilation: 2 },
    LayerPlan { width: 512, stride: 1, first_dilation: 2, dilation: 4 },
];

/// Bottleneck counts of layer1..layer4 for a torchvision ResNet depth.
pub fn blocks_per_layer(depth: usize) -> Result<[usize; 4]> {
    DEPTHS.iter().find(|(d, _)| *d == depth).map(|(_, blocks)| *blocks).ok_or_else(|| {
        let supported: Vec<String> = DEPTHS.iter().map(|(d, _)| d.to_string()).collect();
        DspnetError::ModelFormat(format!("unsupported ResNet depth {depth} (supported: {})", supported.join(", ")))
    })
}

/// The supported depth whose layer3 has `layer3_blocks` bottlenecks (to recognise files without metadata).
pub fn depth_with_layer3_blocks(layer3_blocks: usize) -> Result<usize> {
    DEPTHS.iter().find(|(_, blocks)| blocks[2] == layer3_blocks).map(|(d, _)| *d).ok_or_else(|| {
        let counts: Vec<String> = DEPTHS.iter().map(|(_, b)| b[2].to_string()).collect();
        let (last, rest) = counts.split_last().expect("at least one depth");
        DspnetError::ModelFormat(format!(
            "cannot infer the ResNet depth: layer3 has {layer3_blocks} blocks (expected {} or {last})",
            rest.join(", ")
        ))
    })
}

/// One convolution of the backbone as stored: `{name}.weight` of `shape`, followed by the BatchNorm
/// `{batchnorm}.{weight,bias,running_mean,running_var}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvSpec {
    pub name: String,
    pub batchnorm: String,
    /// [out, in, k, k], PyTorch's order.
    pub shape: [usize; 4],
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl ConvSpec {
    fn new(name: String, batchnorm: String, shape: [usize; 4], stride: usize, padding: usize, dilation: usize) -> Self {
        ConvSpec { name, batchnorm, shape, stride, padding, dilation }
    }

    /// Its tensors (the convolution's, then the BatchNorm's) with their shapes.
    fn tensors(&self) -> impl Iterator<Item = (String, Vec<usize>)> + '_ {
        let c = self.shape[0];
        std::iter::once((format!("{}.weight", self.name), self.shape.to_vec())).chain(
            ["weight", "bias", "running_mean", "running_var"].map(|p| (format!("{}.{p}", self.batchnorm), vec![c])),
        )
    }
}

/// One bottleneck (torchvision v1.5: the stride sits on the 3x3 convolution): 1x1 reduce, dilated 3x3,
/// 1x1 expand, and on the first bottleneck of a layer a 1x1 projection shortcut.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSpec {
    /// 0-based layer (layer1 is 0).
    pub layer: usize,
    /// Position within the layer.
    pub index: usize,
    pub conv1: ConvSpec,
    pub conv2: ConvSpec,
    pub conv3: ConvSpec,
    pub downsample: Option<ConvSpec>,
}

impl BlockSpec {
    fn new(layer: usize, index: usize, in_channels: usize) -> Self {
        let plan = &LAYERS[layer];
        let (width, out) = (plan.width, plan.width * EXPANSION);
        let (stride, dilation) = if index == 0 { (plan.stride, plan.first_dilation) } else { (1, plan.dilation) };
        let p = format!("backbone.layer{}.{index}", layer + 1);
        let conv = |c: &str, bn: &str, shape, stride, padding, dilation| {
            ConvSpec::new(format!("{p}.{c}"), format!("{p}.{bn}"), shape, stride, padding, dilation)
        };
        BlockSpec {
            layer,
            index,
            conv1: conv("conv1", "bn1", [width, in_channels, 1, 1], 1, 0, 1),
            // Padding equal to the dilation keeps the grid.
            conv2: conv("conv2", "bn2", [width, width, 3, 3], stride, dilation, dilation),
            conv3: conv("conv3", "bn3", [out, width, 1, 1], 1, 0, 1),
            downsample: (index == 0)
                .then(|| conv("downsample.0", "downsample.1", [out, in_channels, 1, 1], stride, 0, 1)),
        }
    }

    /// conv1, conv2, conv3, then the downsample shortcut if any.
    pub fn convs(&self) -> impl Iterator<Item = &ConvSpec> {
        [&self.conv1, &self.conv2, &self.conv3].into_iter().chain(self.downsample.as_ref())
    }
}

impl ModelConfig {
    pub fn blocks(&self) -> Result<[usize; 4]> {
        blocks_per_layer(self.depth)
    }

    /// Number of layers built: layer4 is skipped entirely when features come from layer3.
    pub fn layers_used(&self) -> usize {
        self.feature_source.layers()
    }

    /// The stem convolution: 7x7, stride 2, padding 3, on 3 input channels.
    pub fn stem(&self) -> ConvSpec {
        ConvSpec::new("backbone.conv1".into(), "backbone.bn1".into(), [STEM_CHANNELS, 3, 7, 7], 2, 3, 1)
    }

    /// Every bottleneck that is built, layer1 first.
    pub fn bottlenecks(&self) -> Result<Vec<BlockSpec>> {
        let blocks = self.blocks()?;
        let mut out = Vec::new();
        let mut in_channels = STEM_CHANNELS;
        for (layer, &n) in blocks.iter().enumerate().take(self.layers_used()) {
            for index in 0..n {
                out.push(BlockSpec::new(layer, index, in_channels));
                in_channels = LAYERS[layer].width * EXPANSION;
            }
        }
        Ok(out)
    }

    /// Shape of the 1x1 projection from the feature layer to the feature channels ([out, in, 1, 1]).
    pub fn projection_shape(&self) -> [usize; 4] {
        [self.feature_channels, self.feature_source.channels(), 1, 1]
    }

    /// Every tensor the model needs, in the crate's own names, with its shape. Loading is strict against
    /// this list.
    pub fn expected_tensors(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let mut out: Vec<(String, Vec<usize>)> = self.stem().tensors().collect();
        for block in self.bottlenecks()? {
            for conv in block.convs() {
                out.extend(conv.tensors());
            }
        }
        out.push(("projection.weight".into(), self.projection_shape().to_vec()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_deeplab_resnet_with_output_stride_8() {
        let config = ModelConfig::default();
        let blocks = config.bottlenecks().unwrap();
        assert_eq!(blocks.len(), 3 + 4 + 23 + 3);
        // Each bottleneck takes what the previous one gives.
        let mut channels = config.stem().shape[0];
        let mut stride = config.stem().stride * 2; // the 3x3/2 max-pool after the stem
        for b in &blocks {
            assert_eq!(b.conv1.shape[1], channels, "{}", b.conv1.name);
            assert_eq!(b.downsample.is_some(), b.index == 0);
            assert_eq!(b.conv2.padding, b.conv2.dilation);
            stride *= b.conv2.stride;
            channels = b.conv3.shape[0];
        }
        assert_eq!(stride, 8);
        assert_eq!(channels, config.feature_source.channels());
        let dilations =
            |layer: usize| blocks.iter().filter(|b| b.layer == layer).map(|b| b.conv2.dilation).collect::<Vec<_>>();
        assert_eq!(dilations(2)[..3], [1, 2, 2]);
        assert_eq!(dilations(3), [2, 4, 4]);
        let layer3_only = ModelConfig { feature_source: FeatureSource::Layer3, depth: 50, ..Default::default() };
        assert_eq!(layer3_only.bottlenecks().unwrap().len(), 3 + 4 + 6);
    }

    #[test]
    fn depths_outside_the_table_are_refused_by_name() {
        assert_eq!(depth_with_layer3_blocks(36).unwrap(), 152);
        let e = depth_with_layer3_blocks(5).unwrap_err().to_string();
        assert!(e.contains("layer3 has 5 blocks (expected 6, 23 or 36)"), "{e}");
        let e = blocks_per_layer(34).unwrap_err().to_string();
        assert!(e.contains("unsupported ResNet depth 34 (supported: 50, 101, 152)"), "{e}");
    }
}
