//! `dspnet bench`: backbone ms/slice, head ms/query, a whole volume's seconds, peak memory.
//! Numbers are medians over repeated runs in one process; compare them as ratios against a reference
//! run on the same machine (tests/bench/ has the PyTorch side).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Tensor;
use clap::Args;
use dspnet::config::ModelConfig;
use dspnet::model::backbone::{ConvBackend, Profile};
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
    /// Query slices per backbone call (batching); times are reported per slice.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Convolution implementation: auto (CPU fast path on the CPU where it has its SIMD kernel), fast or
    /// candle (candle's conv2d, the reference).
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Also time candle's conv2d path, interleaved with the chosen one in this process, and report the
    /// ratio and the largest relative difference of the features.
    #[arg(long)]
    compare: bool,
    /// Print wall time per kind of work (stem, 1x1 and 3x3 convolutions, bias, ReLU, residual adds,
    /// layout changes): medians over the timed runs.
    #[arg(long)]
    breakdown: bool,
    /// Interactive session benchmark on this image (or `synthetic:NIxNJxNK`, a CT-like phantom): first
    /// run, a one-slice correction on the least confident slice, the re-run on the same session, and the
    /// corrected run without a session; seconds, slices encoded, the session's memory and peak RSS.
    /// Uses the default model unless --weights is given.
    #[arg(long, help_heading = "Session")]
    session: Option<String>,
    /// --session IMAGE: its support labels (default: --truth on its middle labelled slice along k).
    #[arg(long, requires = "session", help_heading = "Session")]
    support: Option<PathBuf>,
    /// --session IMAGE: ground truth to paint the correction from (default: the first run's prediction).
    #[arg(long, requires = "session", help_heading = "Session")]
    truth: Option<PathBuf>,
    /// --session: the session's feature budget in MB (0 = the library default).
    #[arg(long, default_value_t = 0, requires = "session", help_heading = "Session")]
    feature_budget_mb: usize,
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

fn backend_name(b: ConvBackend) -> &'static str {
    match b {
        ConvBackend::Candle => "candle",
        ConvBackend::Fast => "fast-cpu",
        ConvBackend::Auto => "auto",
    }
}

/// CPU features that matter to the convolution kernels.
fn cpu_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ] {
            if on {
                f.push(name);
            }
        }
    }
    if candle_core::utils::with_neon() {
        f.push("neon");
    }
    f
}

/// Relative L2 difference of two tensors of the same shape.
fn rel_l2(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    let b = b.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    Ok((num / den.max(1e-300)).sqrt())
}

/// Per kind of work: median over runs, in ms per slice.
fn per_kind_median(profiles: &[Profile], batch: usize) -> Vec<(&'static str, f64)> {
    let mut kinds: Vec<&'static str> = Vec::new();
    for p in profiles {
        for (k, _) in &p.entries {
            if !kinds.contains(k) {
                kinds.push(k);
            }
        }
    }
    let mut out: Vec<(&'static str, f64)> = kinds
        .iter()
        .map(|k| {
            let v = profiles
                .iter()
                .map(|p| p.entries.iter().find(|e| e.0 == *k).map_or(0.0, |e| e.1) * 1e3 / batch as f64)
                .collect();
            (*k, median(v))
        })
        .collect();
    if !profiles.is_empty() {
        out.push(("total", median(profiles.iter().map(|p| p.total() * 1e3 / batch as f64).collect())));
    }
    out
}

fn print_breakdown(label: &str, rows: &[(&'static str, f64)]) {
    let total = rows.iter().find(|r| r.0 == "total").map_or(f64::NAN, |r| r.1);
    println!("breakdown ({label}, ms/slice, median per kind):");
    for (k, v) in rows {
        println!("  {k:<18} {v:8.1}  {:5.1}%", 100.0 * v / total);
    }
}

/// CPU time (user + system) of this process so far, in seconds (Linux; 10 ms resolution), if known.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
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
    if let Some(image) = a.session.clone() {
        let device = device_from_name(Some(&a.device))?;
        let path = match &a.weights {
            Some(p) => p.clone(),
            None => weights::default_model_path()?,
        };
        let model = Model::load(&path, &device)?;
        let b = super::bench_session::SessionBench {
            image,
            support: a.support,
            truth: a.truth,
            budget_mb: a.feature_budget_mb,
            json: a.json,
        };
        return super::bench_session::run(b, &model, &dspnet::volume::SegmentOptions::default());
    }
    if a.size == 0 || a.size % OUTPUT_STRIDE != 0 || a.slices == 0 {
        return Err(DspnetError::InvalidArgument(
            "--size must be a positive multiple of 8 and --slices positive".into(),
        ));
    }
    let device = device_from_name(Some(&a.device))?;
    let t0 = Instant::now();
    let model = match &a.weights {
        Some(p) => Model::load(p, &device)?,
        None => Model::from_weights(
            weights::synthetic_weights(&ModelConfig { depth: a.depth, ..ModelConfig::default() }, 1)?,
            &device,
        )?,
    };
    let load_s = t0.elapsed().as_secs_f64();
    let s = a.size;
    let sync = |t: &candle_core::Tensor| -> Result<()> {
        // Reading one value forces queued GPU work to finish before the clock stops.
        t.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
        Ok(())
    };
    if a.batch == 0 {
        return Err(DspnetError::InvalidArgument("--batch must be positive".into()));
    }
    let backend = ConvBackend::from_name(&a.backend)?;
    let resolved = model.backbone().resolve_backend(backend, model.device());
    let bb = model.backbone();
    // One batch of `a.batch` query slices, [B, 1, S, S] on the model's device.
    let batch_input = |i: usize| -> Result<Tensor> {
        let data: Vec<f32> = (0..a.batch).flat_map(|j| test_slice(s, 0.3 * (i * a.batch + j + 1) as f32)).collect();
        Ok(Tensor::from_vec(data, (a.batch, 1, s, s), &candle_core::Device::Cpu)?.to_device(model.device())?)
    };
    // Warm-up (allocations, kernel caches, lazily built weights), then timed passes.
    let support = model.encode_slices(&test_slice(s, 0.0), 1, s, s)?;
    sync(&support)?;
    let x0 = batch_input(0)?;
    sync(&bb.forward_with(&x0, resolved)?)?;
    if a.compare {
        sync(&bb.forward_with(&x0, ConvBackend::Candle)?)?;
    }
    let runs = a.slices.div_ceil(a.batch).max(1);
    let mut backbone_ms = Vec::new();
    let mut candle_ms = Vec::new();
    let mut cpu_ms = Vec::new();
    let mut max_rel_diff = 0f64;
    let mut profiles: Vec<Profile> = Vec::new();
    let mut candle_profiles: Vec<Profile> = Vec::new();
    let mut queries = Vec::new();
    for i in 0..runs {
        let x = batch_input(i + 1)?;
        // Alternate which implementation goes first, so drifting machine load hits both alike.
        let mut order = vec![false];
        if a.compare {
            order = if i % 2 == 0 { vec![false, true] } else { vec![true, false] };
        }
        let mut ours = None;
        let mut reference = None;
        for is_candle in order {
            let be = if is_candle { ConvBackend::Candle } else { resolved };
            let (t, cpu0) = (Instant::now(), cpu_seconds());
            let f = bb.forward_with(&x, be)?;
            sync(&f)?;
            let ms = t.elapsed().as_secs_f64() * 1e3 / a.batch as f64;
            if let (Some(c0), Some(c1), false) = (cpu0, cpu_seconds(), is_candle) {
                cpu_ms.push((c1 - c0) * 1e3 / a.batch as f64);
            }
            if is_candle {
                candle_ms.push(ms);
                reference = Some(f);
            } else {
                backbone_ms.push(ms);
                ours = Some(f);
            }
        }
        let ours = ours.expect("timed");
        if let Some(r) = reference {
            max_rel_diff = max_rel_diff.max(rel_l2(&ours, &r)?);
        }
        for j in 0..a.batch {
            if queries.len() < a.slices {
                queries.push(ours.narrow(0, j, 1)?);
            }
        }
        if a.breakdown {
            profiles.push(bb.forward_profiled(&x, resolved)?.1);
            if a.compare {
                candle_profiles.push(bb.forward_profiled(&x, ConvBackend::Candle)?.1);
            }
        }
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
    let backbone_all = backbone_ms.clone();
    let backbone = median(backbone_ms);
    let backbone_cpu = if cpu_ms.is_empty() { None } else { Some(median(cpu_ms)) };
    let candle_backbone = median(candle_ms.clone());
    let head = median(head_ms);
    // One support encoding + episode, then one backbone pass and one head per query slice.
    let volume_seconds = (backbone * (a.slices + 1) as f64 + episode_ms + head * a.slices as f64) / 1e3;
    let threads = candle_core::utils::get_num_threads();
    let features = cpu_features();
    let breakdown = per_kind_median(&profiles, a.batch);
    let candle_breakdown = per_kind_median(&candle_profiles, a.batch);
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
            "batch": a.batch,
            "backend": backend_name(resolved),
            "cpu_conv": bb.fast_path_info(),
            "backbone_ms_all": backbone_all,
            "backbone_cpu_ms_per_slice": backbone_cpu,
        });
        let mut j = j;
        if a.compare {
            j["candle_backbone_ms_per_slice"] = serde_json::json!(candle_backbone);
            j["speedup_vs_candle"] = serde_json::json!(candle_backbone / backbone);
            j["candle_ms_all"] = serde_json::json!(candle_ms);
            j["max_rel_l2_vs_candle"] = serde_json::json!(max_rel_diff);
        }
        if a.breakdown {
            j["breakdown_ms_per_slice"] = breakdown
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect::<serde_json::Map<_, _>>()
                .into();
            if a.compare {
                j["candle_breakdown_ms_per_slice"] = candle_breakdown
                    .iter()
                    .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
        }
        println!("{j}");
    } else {
        println!("device            {device_name}");
        println!(
            "model             ResNet-{} ({}), {s}x{s} slices",
            model.config().depth,
            model.config().feature_source.as_str()
        );
        println!("threads           {threads}   cpu features: {}", features.join(" "));
        println!("load              {:.2} s", load_s);
        if let Some(info) = bb.fast_path_info() {
            println!("cpu convolutions  {info}");
        }
        println!(
            "backbone          {backbone:.1} ms/slice (median of {runs} runs of {} slice(s), {} convolutions)",
            a.batch,
            backend_name(resolved)
        );
        if let Some(c) = backbone_cpu {
            println!("backbone CPU time {c:.1} ms/slice (all threads, median)");
        }
        if a.compare {
            println!(
                "candle conv2d     {candle_backbone:.1} ms/slice (interleaved): speed-up x{:.2}, features rel-L2 diff {max_rel_diff:.1e}",
                candle_backbone / backbone
            );
        }
        if a.breakdown {
            print_breakdown(backend_name(resolved), &breakdown);
            if a.compare {
                print_breakdown("candle", &candle_breakdown);
            }
        }
        println!("support episode   {episode_ms:.1} ms");
        println!("head              {head:.1} ms/query (median of {})", a.slices);
        println!("volume ({} slices) {volume_seconds:.2} s", a.slices);
        println!("peak RSS          {}", peak.map_or("n/a".to_string(), |p| format!("{p:.0} MB")));
    }
    Ok(())
}
