//! `dspnet convert`, `dspnet info`, `dspnet synthetic-weights`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use dspnet::config::{FeatureSource, InputNormalization, ModelConfig};
use dspnet::weights::{self, convert::convert_checkpoint};
use dspnet::Result;

#[derive(Args)]
pub struct ConvertArgs {
    /// Official checkpoint (`torch.save` zip format; a nested {"model": state_dict} works too).
    input: PathBuf,
    /// Output .safetensors file.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    let r = convert_checkpoint(&a.input, &a.output)?;
    println!(
        "{}: {} tensors read, {} written, {} dead keys dropped (ASPP, BatchNorm counters){}",
        a.output.display(),
        r.read,
        r.kept,
        r.dropped.len(),
        if r.has_calibration {
            "; cls_unit.cal stored but ignored at inference (as the official code does)"
        } else {
            ""
        }
    );
    match r.config {
        Ok(c) => println!("complete ResNet-{} DSPNet model ({} features)", c.depth, c.feature_source.as_str()),
        Err(why) => eprintln!("warning: the file is not a complete model and will not load for inference: {why}"),
    }
    Ok(())
}

#[derive(Args)]
pub struct InfoArgs {
    /// A .safetensors weight file.
    file: PathBuf,
}

pub fn info(a: InfoArgs) -> Result<()> {
    let w = weights::load_safetensors(&a.file)?;
    let c = &w.config;
    println!("file:            {}", a.file.display());
    println!(
        "architecture:    ResNet-{} (output stride 8), features from {}, projection {} -> {}{}",
        c.depth,
        c.feature_source.as_str(),
        c.feature_source.channels(),
        c.feature_channels,
        if c.projection_bias { " with bias" } else { "" }
    );
    println!("input:           {}", c.input_normalization.to_metadata());
    println!("tensors:         {}", w.tensors.len() + usize::from(w.calibration.is_some()));
    println!("parameters:      {} ({:.1} MB as f32)", w.parameter_count(), w.parameter_count() as f64 * 4.0 / 1e6);
    if w.calibration.is_some() {
        println!("cls_unit.cal:    present (ignored unless the head is asked to use it)");
    }
    let mut keys: Vec<_> = w.metadata.iter().collect();
    keys.sort();
    println!("metadata:");
    for (k, v) in keys {
        println!("  {k}: {v}");
    }
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FeatureSourceArg {
    Layer3,
    Layer4,
}

impl From<FeatureSourceArg> for FeatureSource {
    fn from(a: FeatureSourceArg) -> Self {
        match a {
            FeatureSourceArg::Layer3 => FeatureSource::Layer3,
            FeatureSourceArg::Layer4 => FeatureSource::Layer4,
        }
    }
}

#[derive(Args)]
pub struct SyntheticArgs {
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// ResNet depth: 50, 101 or 152.
    #[arg(long, default_value_t = 101)]
    depth: usize,
    /// Backbone stage feeding the projection.
    #[arg(long, value_enum, default_value = "layer4")]
    features: FeatureSourceArg,
    /// Output .safetensors file.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn synthetic(a: SyntheticArgs) -> Result<()> {
    let config = ModelConfig { depth: a.depth, feature_source: a.features.into(), ..ModelConfig::default() };
    weights::write_synthetic(&a.output, &config, a.seed)?;
    println!("{}: synthetic ResNet-{} weights, seed {} (not a trained model)", a.output.display(), a.depth, a.seed);
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DepthReduceArg {
    /// Sum the kernel over depth (equals the 3D convolution on a volume constant along depth).
    Sum,
    /// Keep the centre tap.
    Centre,
}

#[derive(Args)]
pub struct ImportArgs {
    /// A torchvision-named ResNet-50/101/152 checkpoint (`torch.save` zip; 2D, or inflated 3D), possibly
    /// nested under "state_dict"/"model" and prefixed with "module."/"encoder."/"backbone.".
    input: PathBuf,
    /// Output .safetensors file (identity projection: run `dspnet fit-projection` on it next).
    #[arg(short, long)]
    output: PathBuf,
    /// How inflated 3D kernels become 2D.
    #[arg(long, value_enum, default_value = "sum")]
    depth_reduce: DepthReduceArg,
    /// Backbone stage feeding the projection (layer4 is left out of the file for layer3).
    #[arg(long, value_enum, default_value = "layer3")]
    features: FeatureSourceArg,
    /// Input intensities the backbone was trained on: "official" (DSPNet's recipe) or "window:LOW:HIGH"
    /// (CT clipped to [LOW, HIGH] HU and scaled to [0, 1]).
    #[arg(long, default_value = "window:-1000:1000")]
    input_normalization: String,
    /// The backbone was trained on slices whose rows follow the first voxel axis (e.g. `vol[:, :, k]`).
    #[arg(long)]
    transpose_slices: bool,
    /// Extra metadata stored in the file (provenance, licence), as KEY=VALUE; repeatable.
    #[arg(long = "metadata", value_parser = parse_key_value)]
    metadata: Vec<(String, String)>,
}

fn parse_key_value(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("'{s}': expected KEY=VALUE"))
}

pub fn import(a: ImportArgs) -> Result<()> {
    use dspnet::weights::import::{import_resnet, DepthReduce, ImportOptions};
    let opts = ImportOptions {
        depth_reduce: match a.depth_reduce {
            DepthReduceArg::Sum => DepthReduce::Sum,
            DepthReduceArg::Centre => DepthReduce::Centre,
        },
        feature_source: a.features.into(),
        input_normalization: InputNormalization::from_metadata(&a.input_normalization)?,
        transpose_slices: a.transpose_slices,
        metadata: a.metadata.into_iter().collect(),
    };
    let r = import_resnet(&a.input, &a.output, &opts)?;
    println!(
        "{}: ResNet-{} up to {}, {} kernels reduced from 3D, {} entries left out; projection is the identity ({} channels) until `dspnet fit-projection`",
        a.output.display(),
        r.config.depth,
        r.config.feature_source.as_str(),
        r.inflated,
        r.dropped,
        r.config.feature_channels
    );
    Ok(())
}

#[derive(Args)]
pub struct FitProjectionArgs {
    /// The model whose features are projected (e.g. the output of `dspnet import-resnet`).
    #[arg(long)]
    weights: PathBuf,
    /// Unlabelled volumes to gather feature statistics from.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Output .safetensors file.
    #[arg(short, long)]
    output: PathBuf,
    /// Principal components kept (the projection's output channels).
    #[arg(long, default_value_t = 256)]
    channels: usize,
    /// Slices encoded per volume, evenly spaced along the axis.
    #[arg(long, default_value_t = 32)]
    slices_per_volume: usize,
    /// Slice axis: 0, 1 or 2 (2 = k, axial for RAS volumes).
    #[arg(long, default_value_t = 2)]
    axis: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// `dspnet fit-projection`: replace a model's projection by the mean-centred principal components of
/// its features over the given volumes (composed with the current projection, which is usually the
/// identity of an imported backbone).
pub fn fit_projection(a: FitProjectionArgs) -> Result<()> {
    use candle_core::{DType, Tensor};
    use dspnet::model::projection::FeatureMoments;
    use dspnet::volume::{ModalityChoice, PreparedVolume, VolumeRef};
    if a.axis > 2 || a.slices_per_volume == 0 {
        return Err(dspnet::DspnetError::InvalidArgument(
            "--axis must be 0, 1 or 2 and --slices-per-volume positive".into(),
        ));
    }
    let device = dspnet::model::device_from_name(Some(&a.device))?;
    let w = weights::load_safetensors(&a.weights)?;
    let stored = weights::stored_dtypes(&a.weights)?;
    let model = dspnet::model::Model::from_weights(w.clone(), &device)?;
    let mut moments = FeatureMoments::new(w.config.feature_channels);
    let total = a.images.len() * a.slices_per_volume;
    let bar = indicatif::ProgressBar::new(total as u64).with_message("encoding slices");
    for path in &a.images {
        let img = dspnet::io::read_image(path)?;
        let g = &img.geometry;
        let vol = PreparedVolume::new(
            &model,
            VolumeRef { data: &img.data, dims: g.dims, spacing: g.spacing },
            a.axis,
            ModalityChoice::Auto,
        )?;
        let frame = vol.frame(None)?;
        let n = vol.slices();
        let picks = a.slices_per_volume.min(n);
        for s in 0..picks {
            let z = ((s as f64 + 0.5) * n as f64 / picks as f64) as usize;
            moments.add(&vol.encode(&model, z.min(n - 1), &frame)?)?;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let p = moments.principal_projection(a.channels)?;
    // Compose with the current projection: new = P·W0, bias = P·(b0 − mean).
    let w0 = w.tensors["projection.weight"].to_dtype(DType::F64)?;
    let (c0, cin) = (w0.dim(0)?, w0.dim(1)?);
    let w0 = w0.reshape((c0, cin))?;
    let pc = Tensor::from_vec(
        p.weight.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        (a.channels, c0),
        &candle_core::Device::Cpu,
    )?;
    let weight = pc.matmul(&w0)?.reshape((a.channels, cin, 1, 1))?;
    let b0 = match w.tensors.get("projection.bias") {
        Some(b) => b.to_dtype(DType::F64)?.to_vec1::<f64>()?,
        None => vec![0.0; c0],
    };
    let centred: Vec<f64> = b0.iter().zip(&p.mean).map(|(b, m)| b - m).collect();
    let bias = pc.matmul(&Tensor::from_vec(centred, (c0, 1), &candle_core::Device::Cpu)?)?.flatten_all()?;
    let mut config = w.config.clone();
    config.feature_channels = a.channels;
    config.projection_bias = true;
    let mut tensors = std::collections::BTreeMap::new();
    for (name, t) in w.tensors {
        if name.starts_with("projection.") {
            continue;
        }
        // Keep each tensor in the precision it was stored in (f16 → f32 → f16 is exact).
        let dtype = stored.get(&name).copied().unwrap_or(DType::F32);
        tensors.insert(name, t.to_dtype(dtype)?);
    }
    tensors.insert("projection.weight".to_string(), weight.to_dtype(DType::F32)?);
    tensors.insert("projection.bias".to_string(), bias.to_dtype(DType::F32)?);
    let mut extra = w.metadata.clone();
    for k in config.to_metadata().keys() {
        extra.remove(k);
    }
    extra.insert(
        "projection".into(),
        format!(
            "mean-centred principal components ({} of {c0}, {:.1}% of the variance) of features from {} cells of {} slices of {}",
            a.channels,
            100.0 * p.explained,
            moments.count(),
            total,
            a.images.iter().map(|p| short_name(p)).collect::<Vec<_>>().join(", ")
        ),
    );
    weights::save_safetensors_mixed(&a.output, &config, &tensors, &extra)?;
    println!(
        "{}: projection {c0} -> {} fitted on {} feature cells, keeps {:.1}% of the variance",
        a.output.display(),
        a.channels,
        moments.count(),
        100.0 * p.explained
    );
    Ok(())
}

/// The last two components of a path ("ct-liver/image.nii.gz"): enough to tell scans apart in metadata
/// without recording the machine's folders.
fn short_name(p: &std::path::Path) -> String {
    let parts: Vec<String> =
        p.components().rev().take(2).map(|c| c.as_os_str().to_string_lossy().to_string()).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}
