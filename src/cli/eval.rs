//! `dspnet eval`: 3D Dice per class under the `one-slice` or `alpnet` protocol.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use dspnet::volume::eval::{evaluate_alpnet, evaluate_one_slice, Baseline, ClassScore, Method};
use dspnet::volume::VolumeRef;
use dspnet::{DspnetError, Result};

use super::segment::{read_pair, ModelArgs};

#[derive(Clone, Copy, ValueEnum)]
pub enum Protocol {
    /// The middle slice of each class's extent is the only support; the whole volume is scored.
    OneSlice,
    /// The paper's chunk protocol (3 chunks, supports at 1/6, 1/2, 5/6), scored inside the extent.
    Alpnet,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MethodArg {
    /// The model.
    Dspnet,
    /// Baseline: the support slice's mask repeated on every processed slice.
    Copy,
    /// Baseline: the support region's intensity range (2nd-98th percentile of its voxels) on the processed
    /// slices, then the 3D components (6-connected) touching the support (alpnet: overlapping the support
    /// mask's in-plane footprint in each chunk; --components all skips this step).
    Threshold,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Query volume.
    image: PathBuf,
    /// Its ground-truth labels.
    #[arg(long)]
    labels: PathBuf,
    #[arg(long, value_enum, default_value = "one-slice")]
    protocol: Protocol,
    /// Segmentation method, on the same supports and scored region. The baselines need no model (--weights,
    /// --device, --modality and --fov are ignored); under one-slice, --extent auto means all for them, as
    /// auto extent follows a model's predictions; under alpnet they need the support volume on the
    /// query's in-plane grid.
    #[arg(long, value_enum, default_value = "dspnet")]
    method: MethodArg,
    /// alpnet: the support volume (default: the query itself).
    #[arg(long, requires = "support_labels")]
    support_image: Option<PathBuf>,
    /// alpnet: the support volume's labels.
    #[arg(long, requires = "support_image")]
    support_labels: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// One JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// one-slice: also write a PNG montage of the prediction.
    #[arg(long)]
    preview: Option<PathBuf>,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let (img, gt) = read_pair(&a.image, &a.labels)?;
    // Loaded only for dspnet: the baselines must run where no model is installed.
    let model;
    let method = match a.method {
        MethodArg::Dspnet => {
            model = a.model.load_model()?;
            Method::Dspnet(&model)
        }
        MethodArg::Copy => Method::Naive(Baseline::Copy),
        MethodArg::Threshold => Method::Naive(Baseline::Threshold),
    };
    let opts = a.model.options();
    let q = VolumeRef { data: &img.data, dims: img.geometry.dims, spacing: img.geometry.spacing };
    let scores: Vec<ClassScore> = match a.protocol {
        Protocol::OneSlice => {
            if a.support_image.is_some() {
                return Err(DspnetError::InvalidArgument("--support-image applies to --protocol alpnet only".into()));
            }
            let (scores, prediction) = evaluate_one_slice(method, q, &gt.data, &opts)?;
            if let Some(p) = &a.preview {
                let axis = match opts.axis {
                    dspnet::volume::AxisChoice::Fixed(a) => a,
                    dspnet::volume::AxisChoice::Auto => 2,
                };
                let supports: Vec<usize> = scores.iter().flat_map(|s| s.support_slices.clone()).collect();
                let slices = super::preview::pick_slices(&prediction, img.geometry.dims, axis, &supports);
                super::preview::write_montage(p, &img.data, &prediction, img.geometry.dims, img.geometry.spacing, axis, &slices)?;
            }
            scores
        }
        Protocol::Alpnet if a.preview.is_some() => {
            return Err(DspnetError::InvalidArgument("--preview applies to --protocol one-slice only".into()))
        }
        Protocol::Alpnet => match (&a.support_image, &a.support_labels) {
            (Some(si), Some(sl)) => {
                let (s_img, s_gt) = read_pair(si, sl)?;
                let s = VolumeRef { data: &s_img.data, dims: s_img.geometry.dims, spacing: s_img.geometry.spacing };
                evaluate_alpnet(method, (s, &s_gt.data), (q, &gt.data), &opts)?
            }
            _ => evaluate_alpnet(method, (q, &gt.data), (q, &gt.data), &opts)?,
        },
    };
    let mean = scores.iter().map(|s| s.dice).sum::<f64>() / scores.len().max(1) as f64;
    let protocol = match a.protocol {
        Protocol::OneSlice => "one-slice",
        Protocol::Alpnet => "alpnet",
    };
    if a.json {
        let classes: Vec<_> = scores
            .iter()
            .map(|s| {
                serde_json::json!({
                    "label": s.label, "dice": s.dice, "dice_in_extent": s.dice_in_extent,
                    "support_slices": s.support_slices, "extent": [s.extent.0, s.extent.1],
                    "slices_processed": s.slices_processed, "seconds": s.seconds,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "protocol": protocol, "method": method.name(), "classes": classes, "mean_dice": mean }));
    } else {
        println!("protocol {protocol}, method {}", method.name());
        println!("{:>6} {:>8} {:>14} {:>10} {:>9} {:>8}", "class", "dice", "dice(extent)", "extent", "slices", "seconds");
        for s in &scores {
            println!(
                "{:>6} {:>8.4} {:>14.4} {:>10} {:>9} {:>8.1}",
                s.label,
                s.dice,
                s.dice_in_extent,
                format!("{}-{}", s.extent.0, s.extent.1),
                s.slices_processed,
                s.seconds
            );
        }
        println!("mean dice {mean:.4}");
    }
    Ok(())
}
