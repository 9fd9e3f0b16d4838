//! `dspnet eval`: 3D Dice per class under the `one-slice` or `alpnet` protocol.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use dspnet::model::prototypes::HeadOptions;
use dspnet::volume::eval::{
    evaluate_alpnet, evaluate_one_slice, evaluate_one_slice_cached, spearman, Baseline, ClassScore, Method,
};
use dspnet::volume::{FeatureCache, Propagation, SegmentOptions, VolumeRef};
use dspnet::{DspnetError, Result};

use super::segment::ModelArgs;

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
    /// one-slice: score memory propagation, independent propagation and the copy baseline on the same
    /// painted slices, side by side per class (features are encoded once and shared by all three).
    #[arg(long, conflicts_with_all = ["method", "preview"])]
    compare: bool,
    /// one-slice: re-score with one head parameter at each of these values, the others as given (repeatable:
    /// each KEY is swept on its own), e.g. --sweep avg_sp_area=25,50,100,200 --sweep w1_w2_w3=0.3:0.8:0.3,0:1:0.
    /// Keys as --head. Slices are encoded once and reused: each further value costs the prototype head only.
    #[arg(long, value_name = "KEY=V1,V2,...", value_parser = parse_sweep, conflicts_with_all = ["method", "preview", "compare"])]
    sweep: Vec<(String, Vec<String>)>,
}

/// One `--sweep KEY=V1,V2,...`, each value checked now.
fn parse_sweep(s: &str) -> std::result::Result<(String, Vec<String>), String> {
    let (key, values) = s.split_once('=').ok_or(format!("'{s}': expected KEY=V1,V2,..."))?;
    let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
    if values.is_empty() {
        return Err(format!("'{s}': no values to sweep"));
    }
    for v in &values {
        HeadOptions::default().set(key.trim(), v).map_err(|e| e.to_string())?;
    }
    Ok((key.trim().to_string(), values))
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.compare {
        return compare(a);
    }
    if !a.sweep.is_empty() {
        return sweep(a);
    }
    let (img, gt) = dspnet::volume::read_study(&a.image, &a.labels)?;
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
                super::preview::write_montage(
                    p,
                    &img.data,
                    &prediction,
                    img.geometry.dims,
                    img.geometry.spacing,
                    axis,
                    &slices,
                )?;
            }
            scores
        }
        Protocol::Alpnet if a.preview.is_some() => {
            return Err(DspnetError::InvalidArgument("--preview applies to --protocol one-slice only".into()))
        }
        Protocol::Alpnet => match (&a.support_image, &a.support_labels) {
            (Some(si), Some(sl)) => {
                let (s_img, s_gt) = dspnet::volume::read_study(si, sl)?;
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
        let classes: Vec<_> = scores.iter().map(score_json).collect();
        println!(
            "{}",
            serde_json::json!({ "protocol": protocol, "method": method.name(), "classes": classes, "mean_dice": mean, "confidence_spearman": confidence_rank(&scores) })
        );
    } else {
        println!("protocol {protocol}, method {}", method.name());
        println!(
            "{:>6} {:>8} {:>14} {:>10} {:>10} {:>9} {:>8}",
            "class", "dice", "dice(extent)", "extent", "predicted", "slices", "seconds"
        );
        for s in &scores {
            println!(
                "{:>6} {:>8.4} {:>14.4} {:>10} {:>10} {:>9} {:>8.1}",
                s.label,
                s.dice,
                s.dice_in_extent,
                format!("{}-{}", s.extent.0, s.extent.1),
                s.predicted_extent.map_or("-".into(), |(a, b)| format!("{a}-{b}")),
                s.slices_processed,
                s.seconds
            );
        }
        println!("mean dice {mean:.4}");
        if let Some(r) = confidence_rank(&scores) {
            println!("slice confidence vs slice Dice: Spearman {r:.3} (pooled over the scored slices)");
        }
    }
    Ok(())
}

fn score_json(s: &ClassScore) -> serde_json::Value {
    serde_json::json!({
        "label": s.label, "dice": s.dice, "dice_in_extent": s.dice_in_extent,
        "support_slices": s.support_slices, "extent": [s.extent.0, s.extent.1],
        "predicted_extent": s.predicted_extent.map(|(a, b)| [a, b]),
        "extent_error": s.extent_error().map(|(a, b)| [a, b]),
        "slices_processed": s.slices_processed, "seconds": s.seconds,
        "confidence_spearman": confidence_rank(std::slice::from_ref(s)),
        "slice_scores": s.slice_scores.iter().map(|(z, c, d)| serde_json::json!({"slice": z, "confidence": c, "dice": d})).collect::<Vec<_>>(),
    })
}

/// Spearman correlation of slice confidence with slice Dice, pooled over the classes' scored slices.
fn confidence_rank(scores: &[ClassScore]) -> Option<f64> {
    let pairs: Vec<(f64, f64)> =
        scores.iter().flat_map(|s| s.slice_scores.iter().map(|&(_, c, d)| (c as f64, d))).collect();
    spearman(&pairs)
}

/// Mean over the classes of each class's own confidence/Dice rank correlation (classes with one defined).
fn mean_class_rank(scores: &[ClassScore]) -> Option<f64> {
    let r: Vec<f64> = scores.iter().filter_map(|s| confidence_rank(std::slice::from_ref(s))).collect();
    (!r.is_empty()).then(|| r.iter().sum::<f64>() / r.len() as f64)
}

/// Ends (first and last slice) predicted within this many slices of the truth count as found.
const EXTENT_TOLERANCE: usize = 3;

/// Summary of one method over the classes.
struct MethodSummary {
    name: String,
    mean: f64,
    median: f64,
    mean_in_extent: f64,
    median_in_extent: f64,
    ends_within: f64,
    slices: usize,
    seconds: f64,
    /// Slice confidence against slice Dice: pooled, and the mean of the per-class correlations.
    confidence_rank: Option<f64>,
    confidence_rank_mean: Option<f64>,
}

fn summarise(name: &str, scores: &[ClassScore]) -> MethodSummary {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let n = scores.len().max(1) as f64;
    let ends = scores
        .iter()
        .map(|s| {
            s.extent_error().map_or(0, |(a, b)| usize::from(a <= EXTENT_TOLERANCE) + usize::from(b <= EXTENT_TOLERANCE))
        })
        .sum::<usize>();
    MethodSummary {
        name: name.to_string(),
        mean: scores.iter().map(|s| s.dice).sum::<f64>() / n,
        median: median(scores.iter().map(|s| s.dice).collect()),
        mean_in_extent: scores.iter().map(|s| s.dice_in_extent).sum::<f64>() / n,
        median_in_extent: median(scores.iter().map(|s| s.dice_in_extent).collect()),
        ends_within: ends as f64 / (2.0 * n),
        slices: scores.iter().map(|s| s.slices_processed).sum(),
        seconds: scores.iter().map(|s| s.seconds).sum(),
        confidence_rank: confidence_rank(scores),
        confidence_rank_mean: mean_class_rank(scores),
    }
}

/// The study of `--compare` and `--sweep` (one-slice protocol only) and the model.
fn one_slice_study(
    a: &EvalArgs,
    flag: &str,
) -> Result<(dspnet::io::Volume<f32>, dspnet::io::Volume<u16>, dspnet::model::Model)> {
    if !matches!(a.protocol, Protocol::OneSlice) || a.support_image.is_some() {
        return Err(DspnetError::InvalidArgument(format!("{flag} applies to --protocol one-slice only")));
    }
    let (img, gt) = dspnet::volume::read_study(&a.image, &a.labels)?;
    Ok((img, gt, a.model.load_model()?))
}

/// One method's (or one sweep row's) classes and summary, as `--json` prints them.
fn summary_json(m: &MethodSummary, scores: &[ClassScore]) -> serde_json::Value {
    serde_json::json!({
        "classes": scores.iter().map(score_json).collect::<Vec<_>>(),
        "mean_dice": m.mean, "median_dice": m.median,
        "mean_dice_in_extent": m.mean_in_extent, "median_dice_in_extent": m.median_in_extent,
        "ends_within_3": m.ends_within, "slices_processed": m.slices, "seconds": m.seconds,
        "confidence_spearman": m.confidence_rank, "confidence_spearman_mean_per_class": m.confidence_rank_mean,
    })
}

/// `--compare`: memory, independent and copy on the same painted slices.
fn compare(a: EvalArgs) -> Result<()> {
    let (img, gt, model) = one_slice_study(&a, "--compare")?;
    let q = VolumeRef { data: &img.data, dims: img.geometry.dims, spacing: img.geometry.spacing };
    let base = a.model.options();
    let mut cache = FeatureCache::default();
    let memory = SegmentOptions { propagation: Propagation::Memory, ..base.clone() };
    let independent = SegmentOptions { propagation: Propagation::Independent, ..base.clone() };
    let runs: Vec<(&'static str, Vec<ClassScore>)> = vec![
        ("memory", evaluate_one_slice_cached(Method::Dspnet(&model), q, &gt.data, &memory, &mut cache)?.0),
        ("independent", evaluate_one_slice_cached(Method::Dspnet(&model), q, &gt.data, &independent, &mut cache)?.0),
        ("copy", evaluate_one_slice(Method::Naive(Baseline::Copy), q, &gt.data, &base)?.0),
    ];
    let summaries: Vec<MethodSummary> = runs.iter().map(|(n, s)| summarise(n, s)).collect();
    if a.json {
        let methods: serde_json::Map<String, serde_json::Value> = runs
            .iter()
            .zip(&summaries)
            .map(|((name, scores), m)| (name.to_string(), summary_json(m, scores)))
            .collect();
        println!("{}", serde_json::json!({ "protocol": "one-slice", "compare": methods }));
        return Ok(());
    }
    println!("protocol one-slice; Dice whole volume / inside the true extent; ends: predicted first/last slice minus the true one");
    print!("{:>6} {:>8} ", "class", "extent");
    for (name, _) in &runs {
        print!("| {:^34} ", name);
    }
    println!();
    print!("{:>6} {:>8} ", "", "");
    for _ in &runs {
        print!("| {:>6} {:>6} {:>9} {:>5} {:>5} ", "dice", "in-ext", "ends", "slc", "s");
    }
    println!();
    for (i, s0) in runs[0].1.iter().enumerate() {
        print!("{:>6} {:>8} ", s0.label, format!("{}-{}", s0.extent.0, s0.extent.1));
        for (_, scores) in &runs {
            let s = &scores[i];
            let ends = match s.predicted_extent {
                Some((p, q)) => format!("{:+},{:+}", p as i64 - s.extent.0 as i64, q as i64 - s.extent.1 as i64),
                None => "-".into(),
            };
            print!(
                "| {:>6.3} {:>6.3} {:>9} {:>5} {:>5.1} ",
                s.dice, s.dice_in_extent, ends, s.slices_processed, s.seconds
            );
        }
        println!();
    }
    println!();
    println!(
        "{:>12} {:>10} {:>10} {:>12} {:>14} {:>10} {:>8} {:>8}",
        "method", "mean", "median", "mean(ext)", "median(ext)", "ends<=3", "slices", "seconds"
    );
    for m in &summaries {
        println!(
            "{:>12} {:>10.4} {:>10.4} {:>12.4} {:>14.4} {:>9.0}% {:>8} {:>8.1}",
            m.name,
            m.mean,
            m.median,
            m.mean_in_extent,
            m.median_in_extent,
            100.0 * m.ends_within,
            m.slices,
            m.seconds
        );
    }
    for m in summaries.iter().filter(|m| m.confidence_rank.is_some()) {
        println!(
            "{:>12}: slice confidence vs slice Dice, Spearman {:.3} pooled, {} mean per class",
            m.name,
            m.confidence_rank.unwrap_or(f64::NAN),
            m.confidence_rank_mean.map_or("-".into(), |r| format!("{r:.3}"))
        );
    }
    println!("(seconds: features are encoded once and shared, so the first method pays for the encoding of the slices it visits)");
    Ok(())
}

/// `--sweep`: the model at the given options, then one head parameter at a time over its values, with the
/// copy baseline on the same painted slices beside them.
fn sweep(a: EvalArgs) -> Result<()> {
    let (img, gt, model) = one_slice_study(&a, "--sweep")?;
    let q = VolumeRef { data: &img.data, dims: img.geometry.dims, spacing: img.geometry.spacing };
    let base = a.model.options();
    let mut cache = FeatureCache::default();
    // (key, value, scores); the first row is the options as given.
    let mut rows: Vec<(String, String, Vec<ClassScore>)> = Vec::new();
    let given = base.head.changed();
    let given = if given.is_empty() { "defaults".to_string() } else { given.join(" ") };
    rows.push((
        "as given".into(),
        given,
        evaluate_one_slice_cached(Method::Dspnet(&model), q, &gt.data, &base, &mut cache)?.0,
    ));
    for (key, values) in &a.sweep {
        for value in values {
            let mut opts = base.clone();
            opts.head.set(key, value)?;
            let scores = evaluate_one_slice_cached(Method::Dspnet(&model), q, &gt.data, &opts, &mut cache)?.0;
            rows.push((key.clone(), opts.head.get(key).unwrap_or_default(), scores));
        }
    }
    let copy = evaluate_one_slice(Method::Naive(Baseline::Copy), q, &gt.data, &base)?.0;
    let propagation = match base.propagation {
        Propagation::Memory => "memory",
        Propagation::Independent => "independent",
    };
    let copy_summary = summarise("copy", &copy);
    if a.json {
        let results: Vec<serde_json::Value> = rows
            .iter()
            .map(|(key, value, scores)| {
                let mut v = summary_json(&summarise(key, scores), scores);
                v["key"] = serde_json::json!(key);
                v["value"] = serde_json::json!(value);
                v
            })
            .collect();
        let head: serde_json::Map<String, serde_json::Value> = dspnet::model::prototypes::HEAD_KEYS
            .iter()
            .map(|(k, _)| (k.to_string(), serde_json::json!(base.head.get(k))))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "protocol": "one-slice", "propagation": propagation, "head": head, "sweep": results, "copy": summary_json(&copy_summary, &copy) })
        );
        return Ok(());
    }
    println!("protocol one-slice, propagation {propagation}; Dice whole volume per class, then over the classes (ext: inside the true extent)");
    print!("{:>12} {:>16} |", "key", "value");
    for s in &copy {
        print!(" {:>6}", s.label);
    }
    println!(" | {:>7} {:>7} {:>9} {:>7} {:>7} {:>7}", "mean", "median", "mean(ext)", "ends<=3", "slices", "seconds");
    let print_row = |key: &str, value: &str, scores: &[ClassScore]| {
        let m = summarise(key, scores);
        print!("{:>12} {:>16} |", key, value);
        for s in scores {
            print!(" {:>6.3}", s.dice);
        }
        println!(
            " | {:>7.4} {:>7.4} {:>9.4} {:>6.0}% {:>7} {:>7.1}",
            m.mean,
            m.median,
            m.mean_in_extent,
            100.0 * m.ends_within,
            m.slices,
            m.seconds
        );
    };
    for (key, value, scores) in &rows {
        print_row(key, value, scores);
    }
    print_row("copy", "(baseline)", &copy);
    println!("(seconds: slices are encoded once and shared, so the first row pays for the encoding)");
    Ok(())
}
