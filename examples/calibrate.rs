//! Calibration of the propagation settings: many settings on many structures of one image, features
//! encoded once. Used to choose the defaults of `MemoryOptions` (see weights/README.md).
//!
//! cargo run --release --example calibrate -- IMAGE LABELS CLASSES SETTING...
//!   CLASSES: comma-separated label values (`a+b`: structures a and b as one multi-part class), or `pairs-even` /
//! `pairs-odd` (AAL left/right pairs by pair
//!            index (label+1)/2: the tuning and the report halves), or `all`
//!   SETTING: `copy`, or comma-separated key=value over prop (memory|independent), size, pw, gain,
//!            gate, radius, thr, drop, area, patience, inside, copy, band, fov (slice|auto), extent (auto|all)
//! Prints one summary line per setting and writes per-class JSON lines to $CALIBRATE_OUT if set.

use std::io::Write;

use dspnet::io::{read_image, read_labels};
use dspnet::model::{device_from_name, Model};
use dspnet::volume::eval::{evaluate_one_slice, evaluate_one_slice_cached, Baseline, ClassScore, Method};
use dspnet::volume::slicing::slice_indices;
use dspnet::volume::{
    segment_cached, AxisChoice, ComponentsMode, ExtentMode, FeatureCache, FovMode, Propagation, SegmentOptions,
    VolumeRef,
};

fn parse(setting: &str) -> Option<SegmentOptions> {
    if setting == "copy" {
        return None;
    }
    let mut o = SegmentOptions { axis: AxisChoice::Fixed(2), ..SegmentOptions::default() };
    for kv in setting.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').expect("key=value");
        let m = &mut o.memory;
        match k {
            "prop" => o.propagation = if v == "memory" { Propagation::Memory } else { Propagation::Independent },
            "size" => m.size = v.parse().unwrap(),
            "pw" => m.painted_weight = v.parse().unwrap(),
            "gain" => m.prior_gain = v.parse().unwrap(),
            "gate" => m.leak_gate = v.parse().unwrap(),
            "radius" => m.prior_radius_mm = v.parse().unwrap(),
            "thr" => m.presence_threshold = v.parse().unwrap(),
            "area" => m.min_area_fraction = v.parse().unwrap(),
            "drop" => m.presence_drop = v.parse().unwrap(),
            "patience" => m.patience = v.parse().unwrap(),
            "copy" => m.copy_tolerance = v.parse().unwrap(),
            "band" => m.refine_band = v.parse().unwrap(),
            "inside" => m.stop_probability = v.parse().unwrap(),
            "fov" => o.fov = if v == "auto" { FovMode::Auto } else { FovMode::Slice },
            "extent" => o.extent = if v == "all" { ExtentMode::All } else { ExtentMode::Auto },
            _ => panic!("unknown key {k}"),
        }
    }
    Some(o)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> dspnet::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let img = read_image(args[0].as_ref())?;
    let mut gt = read_labels(args[1].as_ref())?;
    // Multi-part targets: `a+b` relabels b as a (two structures as one class), and only such groups count.
    if args[2].contains('+') {
        let mut keep = std::collections::HashMap::new();
        for group in args[2].split(',') {
            let ls: Vec<u16> = group.split('+').map(|s| s.parse().unwrap()).collect();
            for &l in &ls {
                keep.insert(l, ls[0]);
            }
        }
        for l in gt.data.iter_mut() {
            *l = keep.get(l).copied().unwrap_or(0);
        }
    }
    let present: std::collections::BTreeSet<u16> = gt.data.iter().copied().filter(|&l| l != 0).collect();
    let classes: Vec<u16> = match args[2].as_str() {
        "all" => present.iter().copied().collect(),
        "pairs-even" => present.iter().copied().filter(|l| l.div_ceil(2) % 2 == 0).collect(),
        "pairs-odd" => present.iter().copied().filter(|l| l.div_ceil(2) % 2 == 1).collect(),
        // One of each left/right pair of the tuning half.
        "tune" => present.iter().copied().filter(|l| l.div_ceil(2) % 2 == 0 && l % 2 == 1).collect(),
        list => list.split(',').map(|s| s.split('+').next().unwrap().parse().unwrap()).collect(),
    };
    let model = Model::load(&dspnet::weights::default_model_path()?, &device_from_name(Some("cpu"))?)?;
    let q = VolumeRef { data: &img.data, dims: img.geometry.dims, spacing: img.geometry.spacing };
    let mut cache = FeatureCache::default();
    let mut out = std::env::var("CALIBRATE_OUT")
        .ok()
        .map(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap());
    let copy_opts =
        SegmentOptions { axis: AxisChoice::Fixed(2), classes: Some(classes.clone()), ..SegmentOptions::default() };
    let copy = evaluate_one_slice(Method::Naive(Baseline::Copy), q, &gt.data, &copy_opts)?.0;
    let copy_in: Vec<f64> = copy.iter().map(|s| s.dice_in_extent).collect();
    for setting in &args[3..] {
        if let Some(rest) = setting.strip_prefix("trace:") {
            trace(&model, q, &gt.data, &classes, rest, &mut cache, out.as_mut().expect("trace needs CALIBRATE_OUT"))?;
            continue;
        }
        let t0 = std::time::Instant::now();
        let scores: Vec<ClassScore> = match parse(setting) {
            None => copy.clone(),
            Some(o) => {
                let o = SegmentOptions { classes: Some(classes.clone()), ..o };
                let mut v = Vec::new();
                for &c in &classes {
                    let oc = SegmentOptions { classes: Some(vec![c]), ..o.clone() };
                    let r = evaluate_one_slice_cached(Method::Dspnet(&model), q, &gt.data, &oc, &mut cache)?.0;
                    let s = &r[0];
                    eprintln!(
                        "  {setting} class {c}: dice {:.3} in {:.3} extent {:?} pred {:?} slices {} {:.1}s",
                        s.dice, s.dice_in_extent, s.extent, s.predicted_extent, s.slices_processed, s.seconds
                    );
                    v.extend(r);
                }
                v
            }
        };
        let whole: Vec<f64> = scores.iter().map(|s| s.dice).collect();
        let inside: Vec<f64> = scores.iter().map(|s| s.dice_in_extent).collect();
        let ends = scores
            .iter()
            .map(|s| s.extent_error().map_or(0, |(a, b)| usize::from(a <= 3) + usize::from(b <= 3)))
            .sum::<usize>();
        let beats = whole.iter().zip(&copy_in).filter(|(w, c)| w > c).count();
        let slices: usize = scores.iter().map(|s| s.slices_processed).sum();
        println!(
            "{setting:<60} n {:>3} whole mean {:.4} median {:.4} | in-ext mean {:.4} median {:.4} | ends<=3 {:>5.1}% | beats copy(ext) {:>3} | copy(ext) median {:.4} | slices {slices} | {:.0}s",
            scores.len(),
            whole.iter().sum::<f64>() / whole.len() as f64,
            median(whole.clone()),
            inside.iter().sum::<f64>() / inside.len() as f64,
            median(inside.clone()),
            100.0 * ends as f64 / (2 * scores.len()) as f64,
            beats,
            median(copy_in.clone()),
            t0.elapsed().as_secs_f64()
        );
        std::io::stdout().flush().ok();
        if let Some(f) = out.as_mut() {
            for s in &scores {
                writeln!(
                    f,
                    "{}",
                    serde_json::json!({"image": args[0], "setting": setting, "label": s.label, "dice": s.dice, "in": s.dice_in_extent,
                        "extent": [s.extent.0, s.extent.1], "pred": s.predicted_extent.map(|(a, b)| [a, b]), "slices": s.slices_processed})
                )
                .unwrap();
            }
        }
    }
    Ok(())
}

/// `trace:SETTING`: chains that accept every slice, run to the end of their territory, with each scored
/// slice's presence, area, overlap with the chain's previous slice and counts against the truth, one JSON
/// line per slice: a stop rule that depends on the chain so far can then be replayed exactly offline.
fn trace(
    model: &Model,
    q: VolumeRef<'_>,
    gt: &[u16],
    classes: &[u16],
    setting: &str,
    cache: &mut FeatureCache,
    out: &mut std::fs::File,
) -> dspnet::Result<()> {
    let dims = q.dims;
    let base = parse(setting).expect("a model setting");
    for &c in classes {
        let zs: Vec<usize> = (0..dims[2]).filter(|&z| slice_indices(dims, 2, z).any(|v| gt[v] == c)).collect();
        let (lo, hi) = (zs[0], *zs.last().unwrap());
        let mid = (lo + hi) / 2;
        let z0 = *zs.iter().min_by_key(|&&z| (z.abs_diff(mid), z)).unwrap();
        let mut sup = vec![0u16; gt.len()];
        for v in slice_indices(dims, 2, z0) {
            if gt[v] == c {
                sup[v] = c;
            }
        }
        let mut o = base.clone();
        o.extent = ExtentMode::All;
        o.components = ComponentsMode::All;
        o.classes = Some(vec![c]);
        o.memory.presence_threshold = f32::NEG_INFINITY;
        o.memory.min_area_fraction = 0.0;
        o.memory.stop_probability = 0.0;
        // The model's own masks are recorded; copying near the painted slice is replayed offline.
        o.memory.copy_tolerance = 0.0;
        o.memory.refine_band = 0.0;
        let (pred, summary) = segment_cached(model, q, &sup, &o, &mut |_, _| true, cache)?;
        let mask = |z: usize| -> Vec<bool> { slice_indices(dims, 2, z).map(|v| pred[v] == c).collect() };
        let truth = |z: usize| -> Vec<bool> { slice_indices(dims, 2, z).map(|v| gt[v] == c).collect() };
        let painted_mask = truth(z0);
        let painted_area = painted_mask.iter().filter(|&&t| t).count();
        // In-plane position (mm) and intensity of a slice's mask, for drift-aware stop rules.
        let stats = |z: usize, m: &[bool]| -> serde_json::Value {
            let (mut n, mut sx, mut sy, mut si, mut sii) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for (i, v) in slice_indices(dims, 2, z).enumerate() {
                if m[i] {
                    let (x, y) = ((v % dims[0]) as f64 * q.spacing[0], ((v / dims[0]) % dims[1]) as f64 * q.spacing[1]);
                    let it = q.data[v] as f64;
                    n += 1.0;
                    sx += x;
                    sy += y;
                    si += it;
                    sii += it * it;
                }
            }
            if n == 0.0 {
                return serde_json::Value::Null;
            }
            let mean = si / n;
            serde_json::json!([sx / n, sy / n, mean, (sii / n - mean * mean).max(0.0).sqrt()])
        };
        let painted_stats = stats(z0, &painted_mask);
        for &(z, presence) in &summary.presence[&c] {
            let prev = if z < z0 { z + 1 } else { z - 1 };
            let (m, p, t) = (mask(z), mask(prev), truth(z));
            let count = |f: &dyn Fn(usize) -> bool| (0..m.len()).filter(|&i| f(i)).count();
            writeln!(
                out,
                "{}",
                serde_json::json!({"image": q.dims, "setting": setting, "label": c, "painted": z0, "painted_area": painted_area, "extent": [lo, hi], "z": z, "presence": presence,
                    "area": count(&|i| m[i]), "prev_area": count(&|i| p[i]), "overlap": count(&|i| m[i] && p[i]),
                    "stats": stats(z, &m), "painted_stats": painted_stats, "painted_overlap": count(&|i| m[i] && painted_mask[i]),
                    "painted_tp": count(&|i| painted_mask[i] && t[i]), "spacing": q.spacing,
                    "tp": count(&|i| m[i] && t[i]), "fp": count(&|i| m[i] && !t[i]), "fn": count(&|i| !m[i] && t[i]), "truth": count(&|i| t[i])})
            )
            .unwrap();
        }
        eprintln!("  trace {setting} class {c}: {} slices {:.1}s", summary.slices_processed, summary.seconds);
    }
    Ok(())
}
