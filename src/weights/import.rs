//! `dspnet import-resnet`: a torchvision-named ResNet checkpoint (2D, or inflated 3D as in CT foundation
//! models) → a DSPNet weight file whose projection is the identity, ready for `dspnet fit-projection`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::pth::{read_checkpoint, PthDtype};
use super::{from_named_tensors, save_safetensors_mixed};
use crate::config::{FeatureSource, InputNormalization, ModelConfig};
use crate::{DspnetError, Result};

/// How an inflated 3D kernel `[out, in, depth, kh, kw]` becomes a 2D one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepthReduce {
    /// Sum over depth: the 2D convolution then equals the 3D one on a volume that is constant along
    /// depth (what I3D inflation assumed in reverse), so activation scales and BatchNorm statistics match.
    Sum,
    /// The centre tap only.
    Centre,
}

/// What the imported model declares.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub depth_reduce: DepthReduce,
    pub feature_source: FeatureSource,
    pub input_normalization: InputNormalization,
    pub transpose_slices: bool,
    /// Extra metadata to store (provenance, licence); architecture keys cannot be overridden.
    pub metadata: HashMap<String, String>,
}

/// What an import kept and dropped.
#[derive(Debug)]
pub struct ImportReport {
    pub config: ModelConfig,
    /// Kernels reduced from 3D.
    pub inflated: usize,
    /// Checkpoint entries left out (classifier, BatchNorm counters, stages past the feature source).
    pub dropped: usize,
}

/// The crate's own name for a torchvision ResNet key, or None for keys that carry no inference weight
/// here. Common wrapper prefixes (`module.`, `backbone.`, `encoder.`) are stripped.
fn backbone_name(name: &str, feature_source: FeatureSource) -> Option<String> {
    let mut n = name;
    while let Some(rest) = ["module.", "encoder.", "backbone."].iter().find_map(|p| n.strip_prefix(p)) {
        n = rest;
    }
    if n.ends_with(".num_batches_tracked")
        || !(n.starts_with("conv1.") || n.starts_with("bn1.") || n.starts_with("layer"))
    {
        return None;
    }
    if feature_source == FeatureSource::Layer3 && n.starts_with("layer4.") {
        return None;
    }
    Some(format!("backbone.{n}"))
}

fn reduce_depth(w: &Tensor, how: DepthReduce) -> Result<Tensor> {
    Ok(match how {
        DepthReduce::Sum => w.sum(2)?,
        DepthReduce::Centre => {
            let d = w.dim(2)?;
            w.narrow(2, d / 2, 1)?.squeeze(2)?
        }
    })
}

/// Import `input` and write `output`. Convolution kernels are stored as f16 (half the size; the
/// rounding is below that of the bf16 checkpoints this is made for), BatchNorm as f32.
pub fn import_resnet(input: &Path, output: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    let raw = read_checkpoint(input)?;
    // Integer entries (BatchNorm counters) carry nothing for inference.
    let (floats, integers): (Vec<_>, Vec<_>) =
        raw.iter().partition(|t| matches!(t.dtype, PthDtype::F32 | PthDtype::F16 | PthDtype::BF16 | PthDtype::F64));
    let named = floats.into_iter().map(|t| Ok((t.name.clone(), t.to_float_tensor()?))).collect::<Result<Vec<_>>>()?;
    let file = input.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let (imported, mut report) = import_tensors(named, opts, &file).map_err(|e| match e {
        DspnetError::ModelFormat(m) => DspnetError::ModelFormat(format!("{}: {m}", input.display())),
        other => other,
    })?;
    save_safetensors_mixed(output, &report.config, &imported.tensors, &imported.metadata)?;
    report.dropped += integers.len();
    Ok(report)
}

/// An imported model, ready to write: tensors in their storage dtype, and the non-architecture metadata.
pub struct Imported {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// [`import_resnet`] on named tensors (checkpoint names, any float dtype); `source` names the origin in
/// the metadata.
pub fn import_tensors(
    named: Vec<(String, Tensor)>,
    opts: &ImportOptions,
    source: &str,
) -> Result<(Imported, ImportReport)> {
    let (mut kept, mut inflated, mut dropped) = (Vec::new(), 0, 0);
    for (name, t) in named {
        let Some(own) = backbone_name(&name, opts.feature_source) else {
            dropped += 1;
            continue;
        };
        let mut v = t.to_dtype(DType::F64)?;
        if v.rank() == 5 {
            v = reduce_depth(&v, opts.depth_reduce)?;
            inflated += 1;
        }
        kept.push((own, v));
    }
    if kept.is_empty() {
        return Err(DspnetError::ModelFormat(
            "no torchvision ResNet tensor (conv1, bn1, layer1..) in this checkpoint".into(),
        ));
    }
    let channels = opts.feature_source.channels();
    let eye = Tensor::eye(channels, DType::F64, &Device::Cpu)?.reshape((channels, channels, 1, 1))?;
    kept.push(("projection.weight".into(), eye));
    // Validate as a model (depth inferred from layer3); the identity projection keeps the stage's features.
    let declared = HashMap::from([
        ("feature_source".to_string(), opts.feature_source.as_str().to_string()),
        ("projection_bias".to_string(), "false".to_string()),
    ]);
    let mut config = from_named_tensors(
        kept.iter().map(|(n, t)| Ok((n.clone(), t.to_dtype(DType::F32)?))).collect::<Result<_>>()?,
        declared,
    )?
    .config;
    config.input_normalization = opts.input_normalization.clone();
    config.transpose_slices = opts.transpose_slices;
    let architecture = config.to_metadata();
    let mut metadata: HashMap<String, String> = opts
        .metadata
        .iter()
        .filter(|(k, _)| !architecture.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let how = match opts.depth_reduce {
        DepthReduce::Sum => "summing over depth",
        DepthReduce::Centre => "taking the centre tap",
    };
    metadata.insert("source".into(), format!("imported from {source} ({inflated} kernels reduced from 3D by {how})"));
    metadata.insert("projection".into(), "identity (not fitted yet: dspnet fit-projection)".into());
    let tensors: BTreeMap<String, Tensor> = kept
        .into_iter()
        .map(|(n, t)| {
            let half = n.ends_with(".weight") && t.rank() == 4 && n != "projection.weight";
            Ok((n, t.to_dtype(if half { DType::F16 } else { DType::F32 })?))
        })
        .collect::<Result<_>>()?;
    Ok((Imported { tensors, metadata }, ImportReport { config, inflated, dropped }))
}
