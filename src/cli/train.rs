//! `dspnet train`: self-supervised fine-tuning on unlabelled scans (docs/model.md, 'Training').

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use dspnet::model::device_from_name;
use dspnet::train::data::load_slices;
use dspnet::train::superpixels::SuperpixelOptions;
use dspnet::train::{TrainOptions, Trainer};
use dspnet::{weights, DspnetError, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::segment::ModalityArg;

/// Arguments of `dspnet train` (the recipe and its deviations are in the subcommand's help).
#[derive(Args)]
pub struct TrainArgs {
    /// Initial weights (.safetensors, a DSPNet model).
    #[arg(long)]
    weights: PathBuf,
    /// Unlabelled training volumes (NIfTI, NRRD, DICOM folder).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Where to write the fine-tuned weights (.safetensors).
    #[arg(long, short)]
    output: PathBuf,
    /// Total number of training steps (episodes); with --resume, counted from the run's start.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Initial learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Random seed (episode draws, augmentations).
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Bottlenecks of the feature layer to train, counted from its end (0 = projection only).
    #[arg(long, default_value_t = 2)]
    trainable_blocks: usize,
    /// Folder for the resumable checkpoint (checkpoint.safetensors).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Save a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    /// Continue from the checkpoint in --checkpoint-dir (starts at step 0 if there is none yet).
    #[arg(long, requires = "checkpoint_dir")]
    resume: bool,
    /// CSV loss log: step,loss,l_seg,l_reg,seconds.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Slice axis of the volumes: 0, 1 or 2 (i, j, k).
    #[arg(long, default_value = "2", value_parser = parse_axis)]
    axis: usize,
    /// Intensity recipe when the model follows the official one.
    #[arg(long, value_enum, default_value = "auto")]
    modality: ModalityArg,
    /// Smallest superpixel, in canvas pixels (256x256).
    #[arg(long, default_value_t = 400)]
    min_size: usize,
    /// Body threshold on the slice rescaled to 0-255 (default: 1e-4 for CT, 10 for MRI).
    #[arg(long)]
    body_threshold: Option<f32>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_axis(s: &str) -> std::result::Result<usize, String> {
    match s {
        "i" | "0" => Ok(0),
        "j" | "1" => Ok(1),
        "k" | "2" => Ok(2),
        _ => Err(format!("'{s}': expected 0, 1, 2 (or i, j, k)")),
    }
}

const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
const LOG_HEADER: &str = "step,loss,l_seg,l_reg,seconds";

pub fn run(a: TrainArgs) -> Result<()> {
    if a.min_size < 2 {
        return Err(DspnetError::InvalidArgument("--min-size must be at least 2".into()));
    }
    if a.checkpoint_every == 0 {
        return Err(DspnetError::InvalidArgument("--checkpoint-every must be at least 1".into()));
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        return Err(DspnetError::InvalidArgument(format!("--lr {} must be positive", a.lr)));
    }
    let device = device_from_name(Some(&a.device))?;
    let init = weights::load_safetensors(&a.weights)?;
    let config = init.config.clone();
    let modality = match a.modality {
        ModalityArg::Auto => dspnet::volume::ModalityChoice::Auto,
        ModalityArg::Ct => dspnet::volume::ModalityChoice::Ct,
        ModalityArg::Mri => dspnet::volume::ModalityChoice::Mri,
    };
    let sp =
        SuperpixelOptions { min_size: a.min_size, body_threshold: a.body_threshold, ..SuperpixelOptions::default() };
    let t0 = Instant::now();
    let slices = load_slices(&a.images, a.axis, modality, &config.input_normalization, &sp)?;
    let superpixels: usize = slices.iter().map(|s| s.count).sum();
    eprintln!(
        "{} training slices from {} volume(s), {:.1} superpixels per slice on average ({:.1} s)",
        slices.len(),
        a.images.len(),
        superpixels as f64 / slices.len() as f64,
        t0.elapsed().as_secs_f64()
    );

    let opts = TrainOptions { trainable_blocks: a.trainable_blocks, lr: a.lr, seed: a.seed, ..TrainOptions::default() };
    let mut trainer = Trainer::new(init, opts, &device)?;
    let checkpoint = a.checkpoint_dir.as_ref().map(|d| d.join(CHECKPOINT_FILE));
    if let Some(dir) = &a.checkpoint_dir {
        std::fs::create_dir_all(dir).map_err(|e| DspnetError::io(dir, e))?;
    }
    if a.resume {
        let path = checkpoint.as_ref().expect("clap requires --checkpoint-dir");
        if path.exists() {
            trainer.load_checkpoint(path, slices.len())?;
            eprintln!("resumed from {} at step {}", path.display(), trainer.step());
        } else {
            eprintln!("no checkpoint in {} yet: starting at step 0", path.parent().unwrap_or(Path::new(".")).display());
        }
    }
    eprintln!(
        "ResNet-{} {}: training {} bottleneck(s) + projection ({} parameters), {} steps, seed {}",
        config.depth,
        config.feature_source.as_str(),
        a.trainable_blocks,
        trainer.trained_parameters(),
        a.steps,
        a.seed
    );
    let mut log = a.log.as_deref().map(|p| open_log(p, trainer.step())).transpose()?;

    let bar = if a.quiet { ProgressBar::hidden() } else { ProgressBar::new(a.steps as u64) };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps, {per_sec}, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_position(trainer.step() as u64);
    let mut smoothed: Option<f64> = None;
    while trainer.step() < a.steps {
        let episode = trainer.sample_episode(&slices)?;
        let t = Instant::now();
        let l = trainer.train_step(&episode)?;
        let seconds = t.elapsed().as_secs_f64();
        let step = trainer.step();
        if let Some((file, path)) = log.as_mut() {
            writeln!(file, "{step},{},{},{},{seconds:.3}", l.loss, l.l_seg, l.l_reg)
                .map_err(|e| DspnetError::io(path.as_path(), e))?;
        }
        if l.loss.is_finite() {
            smoothed = Some(smoothed.map_or(l.loss as f64, |s| 0.95 * s + 0.05 * l.loss as f64));
        } else {
            bar.println(format!("step {step}: non-finite loss, episode skipped"));
        }
        bar.set_message(format!("loss {:.4} (seg {:.4}, reg {:.4})", smoothed.unwrap_or(f64::NAN), l.l_seg, l.l_reg));
        bar.set_position(step as u64);
        if let Some(path) = &checkpoint {
            if step % a.checkpoint_every == 0 || step == a.steps {
                trainer.save_checkpoint(path, slices.len())?;
            }
        }
    }
    bar.finish_and_clear();

    let init_name = a.weights.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let meta = HashMap::from([
        (
            "description".to_string(),
            format!(
                "fine-tuned with dspnet train from {init_name}: {} steps, {} trained bottleneck(s), seed {}",
                trainer.step(),
                a.trainable_blocks,
                a.seed
            ),
        ),
        ("train_steps".to_string(), trainer.step().to_string()),
        ("train_trainable_blocks".to_string(), a.trainable_blocks.to_string()),
        ("train_seed".to_string(), a.seed.to_string()),
        ("train_lr".to_string(), a.lr.to_string()),
    ]);
    trainer.save_model(&a.output, &meta, &weights::stored_dtypes(&a.weights)?)?;
    eprintln!("wrote {} after {} steps ({:.1} s)", a.output.display(), trainer.step(), t0.elapsed().as_secs_f64());
    Ok(())
}

/// Open the loss log for appending after `step` completed steps: a fresh file with its header at step
/// 0; on resume, the rows up to `step` are kept and later ones (written after the checkpoint) dropped.
fn open_log(path: &Path, step: usize) -> Result<(std::fs::File, PathBuf)> {
    let io = |e| DspnetError::io(path, e);
    let mut kept = vec![LOG_HEADER.to_string()];
    if step > 0 {
        if let Ok(text) = std::fs::read_to_string(path) {
            kept.extend(
                text.lines()
                    .skip(1)
                    .filter(|l| l.split(',').next().and_then(|s| s.parse::<usize>().ok()).is_some_and(|s| s <= step))
                    .map(str::to_string),
            );
        }
    }
    std::fs::write(path, kept.join("\n") + "\n").map_err(io)?;
    let file = std::fs::OpenOptions::new().append(true).open(path).map_err(io)?;
    Ok((file, path.to_path_buf()))
}
