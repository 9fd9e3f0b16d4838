//! Command-line interface: one subcommand per job, each in its own file.

mod batch;
mod bench;
mod bench_session;
mod eval;
mod preview;
mod segment;
mod train;
mod weights_cmds;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dspnet", version, about = "Few-shot medical image segmentation (DSPNet)", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Segment the structures painted on a few slices of a volume through the whole volume.
    Segment(segment::SegmentArgs),
    /// Segment many studies listed in a CSV manifest with one model load; resumable (journal), shardable.
    Batch(batch::BatchArgs),
    /// Score segmentation against ground truth (3D Dice per class) under a protocol.
    Eval(eval::EvalArgs),
    /// Convert an official PyTorch checkpoint (.pth) to safetensors.
    Convert(weights_cmds::ConvertArgs),
    /// Describe a weight file: depth, tensors, parameters, metadata.
    Info(weights_cmds::InfoArgs),
    /// Import a torchvision-named ResNet backbone (2D, or inflated 3D) with an identity projection.
    ImportResnet(weights_cmds::ImportArgs),
    /// Fit a model's projection to the principal components of its features over unlabelled volumes.
    FitProjection(weights_cmds::FitProjectionArgs),
    /// Write deterministic synthetic weights (the golden-vector generator) for tests and demos.
    SyntheticWeights(weights_cmds::SyntheticArgs),
    /// Measure backbone and head speed and peak memory.
    Bench(bench::BenchArgs),
    /// Fine-tune a model on unlabelled scans (self-supervised, superpixel episodes).
    ///
    /// The official recipe: superpixel pseudo-labels (Felzenszwalb, computed here), episodes of two random
    /// augmentations of one slice and superpixel, weighted cross-entropy + prototype-alignment loss, SGD
    /// (momentum 0.9, weight decay 5e-4, lr x0.95 every 1000 steps).
    ///
    /// Made for CPUs without PyTorch, it differs from the reference in two ways: only the last K
    /// bottlenecks of the feature layer and the 1x1 projection are trained (--trainable-blocks; the rest
    /// is frozen), and BatchNorm is folded with its stored statistics and trained as a convolution bias
    /// instead of running on the statistics of a 2-image batch (which would destroy a pretrained
    /// backbone's statistics). The output is a normal weight file; every untrained tensor is unchanged.
    Train(train::TrainArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Segment(a) => segment::run(a),
        Command::Batch(a) => batch::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Convert(a) => weights_cmds::convert(a),
        Command::Info(a) => weights_cmds::info(a),
        Command::ImportResnet(a) => weights_cmds::import(a),
        Command::FitProjection(a) => weights_cmds::fit_projection(a),
        Command::SyntheticWeights(a) => weights_cmds::synthetic(a),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
