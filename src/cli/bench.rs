//! `dspnet bench`: backbone ms/slice, head ms/query, a whole volume's seconds, peak memory.
//! Numbers are medians over repeated runs in one process; compare them as ratios against a reference
//! run on the same machine (tests/bench/ has the PyTorch side).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use dspnet::model::config::ModelConfig;
use dspnet::model::prototypes::{HeadOptions, SupportEpisode};
use dspnet::model::{device_from_name, Model, OUTPUT_STRIDE};
use dspnet::{weights, DspnetError, Result};

#[derive(Args)]
pub struct BenchArgs {
    /// Weight file; default: synthetic weights of --depth (speed does not depend on the values).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// ResNet depth of the synthetic weights (50, 101, 152).
    #[arg(long, default_value_t = 101)]
    depth: usize,
    /// Slice size (square), a multiple of 8.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Query slices in the simulated volume; also the number of timed backbone runs.
    #[arg(long, default_value_t = 5)]
    slices: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A smooth synthetic slice (the values do not change the cost).
fn test_slice(size: usize, phase: f32) -> Vec<f32> {
    (0..size * size)
        .map(|p| {
            let (r, c) = ((p / size) as f32, (p % size) as f32);
            ((r * 0.05 + phase).sin() + (c * 0.07).cos()) * 0.8
        })
        .collect()
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.size == 0 || a.size % OUTPUT_STRIDE != 0 || a.slices == 0 {
        return Err(DspnetError::InvalidArgument("--size must be a positive multiple of 8 and --slices positive".into()));
    }
    let device = device_from_name(Some(&a.device))?;
    let t0 = Instant::now();
    let model = match &a.weights {
        Some(p) => Model::load(p, &device)?,
        None => Model::from_weights(weights::synthetic_weights(&ModelConfig { depth: a.depth, ..ModelConfig::default() }, 1)?, &device)?,
    };
    let load_s = t0.elapsed().as_secs_f64();
    let s = a.size;
    let sync = |t: &candle_core::Tensor| -> Result<()> {
        // Reading one value forces queued GPU work to finish before the clock stops.
        t.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
        Ok(())
    };
    // Warm-up (allocations, kernel caches), then timed single-slice passes.
    let support = model.encode_slices(&test_slice(s, 0.0), 1, s, s)?;
    sync(&support)?;
    let mut backbone_ms = Vec::new();
    let mut queries = Vec::new();
    for i in 0..a.slices {
        let t = Instant::now();
        let f = model.encode_slices(&test_slice(s, 0.3 * (i + 1) as f32), 1, s, s)?;
        sync(&f)?;
        backbone_ms.push(t.elapsed().as_secs_f64() * 1e3);
        queries.push(f);
    }
    // Head: a disc-shaped support covering ~10% of the slice.
    let mask: Vec<u8> = (0..s * s)
        .map(|p| {
            let (r, c) = ((p / s) as f64 - s as f64 / 2.0, (p % s) as f64 - s as f64 / 2.0);
            u8::from(r * r + c * c < (0.18 * s as f64).powi(2))
        })
        .collect();
    let t = Instant::now();
    let episode = SupportEpisode::new(&support.squeeze(0)?, &mask, s, s, &HeadOptions::default())?;
    let episode_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut head_ms = Vec::new();
    for q in &queries {
        let t = Instant::now();
        let scores = episode.score(&q.squeeze(0)?)?;
        sync(&scores)?;
        head_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let backbone = median(backbone_ms);
    let head = median(head_ms);
    // One support encoding + episode, then one backbone pass and one head per query slice.
    let volume_seconds = (backbone * (a.slices + 1) as f64 + episode_ms + head * a.slices as f64) / 1e3;
    let threads = candle_core::utils::get_num_threads();
    let mut features = Vec::new();
    if candle_core::utils::with_avx() {
        features.push("avx");
    }
    if candle_core::utils::with_f16c() {
        features.push("f16c");
    }
    if candle_core::utils::with_neon() {
        features.push("neon");
    }
    let peak = peak_rss_mb();
    let device_name = format!("{:?}", model.device()).to_lowercase();
    if a.json {
        let j = serde_json::json!({
            "device": device_name,
            "depth": model.config().depth,
            "size": s,
            "slices": a.slices,
            "backbone_ms_per_slice": backbone,
            "head_ms_per_query": head,
            "episode_ms": episode_ms,
            "volume_seconds": volume_seconds,
            "load_seconds": load_s,
            "peak_rss_mb": peak,
            "threads": threads,
            "cpu_features": features,
        });
        println!("{j}");
    } else {
        println!("device            {device_name}");
        println!("model             ResNet-{} ({}), {s}x{s} slices", model.config().depth, model.config().feature_source.as_str());
        println!("threads           {threads}   cpu features: {}", features.join(" "));
        println!("load              {:.2} s", load_s);
        println!("backbone          {backbone:.1} ms/slice (median of {})", a.slices);
        println!("support episode   {episode_ms:.1} ms");
        println!("head              {head:.1} ms/query (median of {})", a.slices);
        println!("volume ({} slices) {volume_seconds:.2} s", a.slices);
        println!("peak RSS          {}", peak.map_or("n/a".to_string(), |p| format!("{p:.0} MB")));
    }
    Ok(())
}
