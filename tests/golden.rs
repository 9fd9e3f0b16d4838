//! Golden parity with the official DSPNet code.
//!
//! Runs every fixture (`*.json` sidecar + data file) in the folder named by `DSPNET_GOLDEN_DIR`
//! (default `tests/fixtures/golden`), dispatching on the sidecar's `kind`, so a new folder of fixtures
//! in the same format is checked without code changes. Prints one line per file and case with the worst
//! error; fails on any tolerance violation, and when the folder holds no fixture.
//! Tolerances: docs/model.md, 'Parity tests'.

#[path = "golden/head_checks.rs"]
mod head_checks;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use dspnet::model::config::ModelConfig;
use dspnet::model::prototypes::{labels_from_logits, upsample_logits, SupportEpisode};
use dspnet::model::Model;
use serde_json::Value;

/// A fixture tensor, widened to f64 (every stored value is exact in f64).
struct Fx {
    shape: Vec<usize>,
    values: Vec<f64>,
}

fn read_fixture(path: &Path) -> Result<HashMap<String, Fx>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let values: Vec<f64> = match view.dtype() {
            safetensors::Dtype::F32 => {
                d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
            }
            safetensors::Dtype::F64 => d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
            safetensors::Dtype::I64 => {
                d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect()
            }
            safetensors::Dtype::U8 => d.iter().map(|&b| b as f64).collect(),
            other => return Err(format!("{name}: unsupported fixture dtype {other:?}")),
        };
        out.insert(name, Fx { shape: view.shape().to_vec(), values });
    }
    Ok(out)
}

fn get<'a>(fx: &'a HashMap<String, Fx>, name: &str) -> Result<&'a Fx, String> {
    fx.get(name).ok_or_else(|| format!("fixture has no tensor '{name}'"))
}

fn tensor_values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .and_then(|t| t.to_dtype(candle_core::DType::F64))
        .and_then(|t| t.to_vec1::<f64>())
        .expect("tensor to vec")
}

/// rel-L2 and max-abs errors of `got` against `want`.
fn errors(got: &[f64], want: &[f64]) -> (f64, f64) {
    let (mut num, mut den, mut max_abs) = (0.0, 0.0, 0.0f64);
    for (a, b) in got.iter().zip(want) {
        num += (a - b) * (a - b);
        den += b * b;
        max_abs = max_abs.max((a - b).abs());
    }
    ((num / den.max(1e-300)).sqrt(), max_abs)
}

/// Stage tolerance: rel-L2 ≤ 1e-5 and |a − b| ≤ 1e-4 + 1e-4·|b| elementwise.
fn check_stage(name: &str, got: &Tensor, want: &Fx, worst: &mut f64) -> Result<(), String> {
    if got.dims() != want.shape.as_slice() {
        return Err(format!("{name}: shape {:?}, expected {:?}", got.dims(), want.shape));
    }
    let g = tensor_values(got);
    let (rel, max_abs) = errors(&g, &want.values);
    *worst = worst.max(rel);
    if rel.is_nan() || rel > 1e-5 {
        return Err(format!("{name}: rel-L2 {rel:.3e} > 1e-5 (max abs {max_abs:.3e})"));
    }
    if let Some((i, (a, b))) =
        g.iter().zip(&want.values).enumerate().find(|(_, (a, b))| (*a - *b).abs() > 1e-4 + 1e-4 * b.abs())
    {
        return Err(format!("{name}: element {i} is {a}, expected {b}"));
    }
    Ok(())
}

/// The device the model-level checks run on: `DSPNET_TEST_DEVICE` (cpu, cuda, cuda:N; default cpu).
/// The GPU check (tests/gpu/check.sh) sets it to run the same parity checks on CUDA.
fn test_device() -> Device {
    let name = std::env::var("DSPNET_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    dspnet::model::device_from_name(Some(&name)).unwrap_or_else(|e| panic!("DSPNET_TEST_DEVICE={name}: {e}"))
}

fn synthetic_model(sidecar: &Value, config: ModelConfig) -> Result<Model, String> {
    let seed = sidecar["generator_seed"].as_u64().ok_or("sidecar has no generator_seed")?;
    let w = dspnet::weights::synthetic_weights(&config, seed).map_err(|e| e.to_string())?;
    Model::from_weights(w, &test_device()).map_err(|e| e.to_string())
}

/// Backbone file: every stage and every bottleneck probe, through both the 3-channel stem and the
/// equivalent 1-channel (summed-kernel) stem.
fn check_backbone(data: &Path, sidecar: &Value) -> Result<Vec<String>, String> {
    let fx = read_fixture(data)?;
    let model = synthetic_model(sidecar, ModelConfig::default())?;
    let input = get(&fx, "input")?;
    let x =
        Tensor::from_vec(input.values.iter().map(|&v| v as f32).collect::<Vec<_>>(), input.shape.clone(), &Device::Cpu)
            .map_err(|e| e.to_string())?;
    let (_, c, h, w) = x.dims4().map_err(|e| e.to_string())?;
    if c != 3 {
        return Err(format!("input has {c} channels"));
    }
    let x = x.to_device(model.device()).map_err(|e| e.to_string())?;
    let grey = x.narrow(1, 0, 1).map_err(|e| e.to_string())?;
    let probe = get(&fx, "block_probe")?;
    let block_mean = get(&fx, "block_mean")?;
    let block_absmean = get(&fx, "block_absmean")?;
    let mut lines = Vec::new();
    println!("backbone checks on {:?}", model.device());
    for (label, input) in [("rgb stem", &x), ("grey stem", &grey)] {
        let mut worst = 0.0f64;
        let mut probe_err = 0.0f64;
        let mut probe_fail = None;
        let out = model
            .backbone()
            .forward_traced(input, |b, t| {
                let v = tensor_values(t);
                let (_, c, hh, ww) = t.dims4().unwrap();
                let n = v.len() as f64;
                let mean = v.iter().sum::<f64>() / n;
                let absmean = v.iter().map(|a| a.abs()).sum::<f64>() / n;
                for (got, want) in [(mean, block_mean.values[b]), (absmean, block_absmean.values[b])] {
                    let e = (got - want).abs() / want.abs().max(1e-3);
                    probe_err = probe_err.max(e);
                    if e > 1e-4 && probe_fail.is_none() {
                        probe_fail = Some(format!("block {b}: mean/absmean {got} vs {want}"));
                    }
                }
                for j in 0..16 {
                    let idx = ((17 * j) % c) * hh * ww + ((5 * j) % hh) * ww + (3 * j + 1) % ww;
                    let want = probe.values[b * 16 + j];
                    if (v[idx] - want).abs() > 1e-4 + 1e-4 * want.abs() && probe_fail.is_none() {
                        probe_fail = Some(format!("block {b} probe {j}: {} vs {want}", v[idx]));
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        if let Some(f) = probe_fail {
            return Err(format!("{label}: {f}"));
        }
        check_stage("stem", &out.stem, get(&fx, "stem")?, &mut worst)?;
        for (i, l) in out.layers.iter().enumerate() {
            check_stage(&format!("layer{}", i + 1), l, get(&fx, &format!("layer{}", i + 1))?, &mut worst)?;
        }
        check_stage("localconv", &out.features, get(&fx, "localconv")?, &mut worst)?;
        lines.push(format!("{h}x{w} {label}: stem, layer1-4, localconv, 33 block probes ok; worst rel-L2 {worst:.2e}, worst probe stat rel err {probe_err:.2e}"));
    }
    Ok(lines)
}

/// End-to-end episode file: the head from stored features (every intermediate, in `head_checks`), then
/// the whole chain from the stored images: backbone features, logits and labels.
fn check_e2e_full(data: &Path, sidecar: &Value) -> Result<Vec<String>, String> {
    let mut lines = head_checks::check_e2e(data, sidecar)?;
    let fx = read_fixture(data)?;
    let model = synthetic_model(sidecar, ModelConfig::default())?;
    let sup = get(&fx, "sup_img")?;
    let qry = get(&fx, "qry_img")?;
    let (h, w) = (sup.shape[0], sup.shape[1]);
    let pixels: Vec<f32> = sup.values.iter().chain(&qry.values).map(|&v| v as f32).collect();
    // Support and query encoded in one batch of 2, as the official code does.
    let feats = model.encode_slices(&pixels, 2, h, w).map_err(|e| e.to_string())?;
    let fs = feats.get(0).map_err(|e| e.to_string())?;
    let fq = feats.get(1).map_err(|e| e.to_string())?;
    let mut worst = 0.0;
    check_stage("feat_support", &fs, get(&fx, "feat_support")?, &mut worst)?;
    check_stage("feat_query", &fq, get(&fx, "feat_query")?, &mut worst)?;
    let opts = head_checks::options_from(sidecar);
    let cases = sidecar["cases"].as_object().ok_or("sidecar has no cases")?;
    for name in cases.keys() {
        let mask_fx = get(&fx, &format!("{name}.sup_mask"))?;
        let mask: Vec<u8> = mask_fx.values.iter().map(|&v| v as u8).collect();
        let episode = SupportEpisode::new(&fs, &mask, h, w, &opts).map_err(|e| e.to_string())?;
        let scores = episode.score(&fq).map_err(|e| e.to_string())?;
        let logits = upsample_logits(&scores, h, w).map_err(|e| e.to_string())?;
        let want = get(&fx, &format!("{name}.logits"))?;
        let got = tensor_values(&logits);
        let (rel, max_abs) = errors(&got, &want.values);
        if !(rel <= 1e-5 && max_abs <= 5e-4) {
            return Err(format!("{name}: end-to-end logits rel-L2 {rel:.3e} (≤ 1e-5), max abs {max_abs:.3e} (≤ 5e-4)"));
        }
        let labels = labels_from_logits(&logits).map_err(|e| e.to_string())?;
        let want_labels = get(&fx, &format!("{name}.label"))?;
        let hw = h * w;
        let (mut hard, mut soft) = (0, 0);
        for (p, &label) in labels.iter().enumerate().take(hw) {
            if label as f64 != want_labels.values[p] {
                if (want.values[hw + p] - want.values[p]).abs() >= 1e-3 {
                    hard += 1
                } else {
                    soft += 1
                }
            }
        }
        if hard > 0 {
            return Err(format!("{name}: {hard} end-to-end labels differ where the reference margin is ≥ 1e-3"));
        }
        lines.push(format!(
            "{name} end to end (images → backbone → head): features worst rel-L2 {worst:.2e}; logits rel-L2 {rel:.2e}, max abs {max_abs:.2e}; labels: {hard} flips, {soft} below margin"
        ));
    }
    Ok(lines)
}

/// Converter file: the checkpoint converts; every kept tensor holds exactly the generator's values
/// under the crate's own name; dead keys are dropped; `cls_unit.cal` is stored for the opt-in option.
fn check_checkpoint(data: &Path, sidecar: &Value) -> Result<Vec<String>, String> {
    let seed = sidecar["generator_seed"].as_u64().ok_or("sidecar has no generator_seed")?;
    let keys = sidecar["keys"].as_array().ok_or("sidecar has no keys")?;
    let out = std::env::temp_dir().join(format!(
        "dspnet-golden-{}-{}.safetensors",
        std::process::id(),
        data.file_stem().unwrap().to_string_lossy()
    ));
    let report = dspnet::weights::convert::convert_checkpoint(data, &out).map_err(|e| e.to_string())?;
    let fx = read_fixture(&out)?;
    let _ = std::fs::remove_file(&out);
    let mut kept = 0;
    for k in keys {
        let name = k["key"].as_str().ok_or("key without name")?;
        let shape: Vec<usize> = k["shape"]
            .as_array()
            .ok_or("key without shape")?
            .iter()
            .map(|v| v.as_u64().unwrap_or(0) as usize)
            .collect();
        match dspnet::model::config::canonical_name(name) {
            None => {
                if fx.keys().any(|n| n.ends_with("num_batches_tracked") || n.contains("aspp")) {
                    return Err(format!("dead key {name} was written"));
                }
            }
            Some(own) => {
                let t = fx.get(&own).ok_or_else(|| format!("{name} was not written as {own}"))?;
                if t.shape != shape {
                    return Err(format!("{own}: shape {:?}, expected {shape:?}", t.shape));
                }
                let want =
                    dspnet::weights::synthetic::tensor_values(name, &shape, seed).ok_or("no generator values")?;
                if let Some(i) = want.iter().zip(&t.values).position(|(a, b)| (*a as f64).to_bits() != b.to_bits()) {
                    return Err(format!("{own}[{i}] = {}, generator says {}", t.values[i], want[i]));
                }
                kept += 1;
            }
        }
    }
    if kept != report.kept || fx.len() != kept {
        return Err(format!(
            "{kept} tensors expected in the output, report says {}, file holds {}",
            report.kept,
            fx.len()
        ));
    }
    Ok(vec![format!(
        "{} keys read, {kept} converted bit-exactly, {} dead keys dropped{}",
        report.read,
        report.dropped.len(),
        if report.has_calibration { ", cls_unit.cal stored (ignored by default)" } else { "" }
    )])
}

fn golden_dir() -> PathBuf {
    std::env::var_os("DSPNET_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden"))
}

/// Checks every fixture in `dir`: (fixtures checked, one line per failure). A sidecar of a kind this
/// harness does not know is a failure, so that a misspelt or new kind is never silently skipped.
fn run_golden(dir: &Path) -> (usize, Vec<String>) {
    let mut sidecars: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read golden folder {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    sidecars.sort();
    let mut checked = 0;
    let mut failures = Vec::new();
    for json in &sidecars {
        let sidecar: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", json.display()));
        let kind = sidecar["kind"].as_str().unwrap_or("");
        let stem = json.file_stem().unwrap().to_string_lossy().to_string();
        let data = |ext: &str| json.with_extension(ext);
        let result = match kind {
            "backbone" => check_backbone(&data("safetensors"), &sidecar),
            "seeds" => head_checks::check_seeds(&data("safetensors"), &sidecar),
            "head" => head_checks::check_head(&data("safetensors"), &sidecar),
            "e2e" => check_e2e_full(&data("safetensors"), &sidecar),
            "checkpoint" => check_checkpoint(&data("pth"), &sidecar),
            other => Err(format!("unknown fixture kind '{other}' (expected backbone, seeds, head, e2e or checkpoint)")),
        };
        checked += 1;
        match result {
            Ok(lines) => lines.iter().for_each(|l| println!("{stem}: {l}")),
            Err(e) => {
                println!("{stem}: FAILED: {e}");
                failures.push(format!("{stem}: {e}"));
            }
        }
    }
    (checked, failures)
}

#[test]
fn golden_fixtures() {
    let dir = golden_dir();
    let (checked, failures) = run_golden(&dir);
    assert!(checked > 0, "no golden fixture found in {}", dir.display());
    assert!(failures.is_empty(), "golden parity failures:\n{}", failures.join("\n"));
}

#[test]
fn a_fixture_of_unknown_kind_fails_the_harness() {
    let dir = std::env::temp_dir().join(format!("dspnet-golden-kind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("typo.json"), r#"{"kind": "bakcbone"}"#).unwrap();
    std::fs::write(dir.join("nokind.json"), r#"{"cases": []}"#).unwrap();
    let (checked, failures) = run_golden(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(checked, 2);
    assert!(failures.iter().any(|f| f.starts_with("typo: unknown fixture kind 'bakcbone'")), "{failures:?}");
    assert!(failures.iter().any(|f| f.starts_with("nokind: unknown fixture kind ''")), "{failures:?}");
}
