//! `dspnet convert`, `dspnet info`, `dspnet synthetic-weights`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use dspnet::model::config::{FeatureSource, ModelConfig};
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
        if r.has_calibration { "; cls_unit.cal stored but ignored at inference (as the official code does)" } else { "" }
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
    println!("architecture:    ResNet-{} (output stride 8), features from {}, projection {} -> {}{}", c.depth, c.feature_source.as_str(), c.feature_source.channels(), c.feature_channels, if c.projection_bias { " with bias" } else { "" });
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
    let config = ModelConfig {
        depth: a.depth,
        feature_source: match a.features {
            FeatureSourceArg::Layer3 => FeatureSource::Layer3,
            FeatureSourceArg::Layer4 => FeatureSource::Layer4,
        },
        ..ModelConfig::default()
    };
    weights::write_synthetic(&a.output, &config, a.seed)?;
    println!("{}: synthetic ResNet-{} weights, seed {} (not a trained model)", a.output.display(), a.depth, a.seed);
    Ok(())
}
