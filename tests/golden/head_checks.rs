#![allow(dead_code)]
//! Golden checks of the parameter-free DSPNet head (shared by `tests/golden.rs` and `tests/head.rs`) against the
//! reference vectors in
//! `tests/fixtures/golden/` (copied from the shared golden set; see docs/model.md, 'Parity tests').
//!
//! Each `check_<kind>` takes a `.safetensors` file and its parsed JSON sidecar and returns one line per
//! case with the worst errors, or an error string listing every failed comparison (followed by the
//! lines). Tolerances are those of docs/model.md, 'Parity tests': discrete quantities exact; `ran`, `bcma_protos`, `pc`,
//! `p_g` rel-L2 ≤ 1e-5; `s_bg`, `s_fg`, `logits` rel-L2 ≤ 1e-5 and max abs ≤ 1e-4; labels identical
//! wherever the reference margin |logit1 − logit0| ≥ 1e-3.

use std::path::Path;

use candle_core::{Device, Tensor};
use dspnet::model::prototypes::{labels_from_logits, seed_placement, upsample_logits, HeadOptions, SupportEpisode};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

const REL_TOL: f64 = 1e-5;
const ABS_TOL: f64 = 1e-4;
const LABEL_MARGIN: f32 = 1e-3;

// ------------------------------------------------------------------------------------------------
// Fixture reading

pub fn read_file(file: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))
}

pub fn view<'a>(st: &'a SafeTensors<'a>, name: &str, dtype: Dtype) -> Result<(&'a [u8], Vec<usize>), String> {
    let v = st.tensor(name).map_err(|e| format!("tensor {name}: {e}"))?;
    if v.dtype() != dtype {
        return Err(format!("tensor {name}: dtype {:?}, expected {dtype:?}", v.dtype()));
    }
    Ok((v.data(), v.shape().to_vec()))
}

pub fn f32s(st: &SafeTensors, name: &str) -> Result<(Vec<f32>, Vec<usize>), String> {
    let (d, s) = view(st, name, Dtype::F32)?;
    Ok((d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(), s))
}

pub fn i64s(st: &SafeTensors, name: &str) -> Result<(Vec<i64>, Vec<usize>), String> {
    let (d, s) = view(st, name, Dtype::I64)?;
    Ok((d.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect(), s))
}

pub fn u8s(st: &SafeTensors, name: &str) -> Result<(Vec<u8>, Vec<usize>), String> {
    let (d, s) = view(st, name, Dtype::U8)?;
    Ok((d.to_vec(), s))
}

pub fn has(st: &SafeTensors, name: &str) -> bool {
    st.names().contains(&name)
}

pub fn tensor(st: &SafeTensors, name: &str) -> Result<Tensor, String> {
    let (v, s) = f32s(st, name)?;
    Tensor::from_vec(v, s, &Device::Cpu).map_err(|e| format!("{name}: {e}"))
}

pub fn to_vec(t: &Tensor) -> Result<Vec<f32>, String> {
    t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| e.to_string())
}

// ------------------------------------------------------------------------------------------------
// Comparisons

/// rel-L2 = ‖a − b‖₂ / ‖b‖₂ (0/0 = 0; x/0 = ∞) and max |a − b|, accumulated in f64.
pub fn compare(a: &[f32], b: &[f32]) -> Result<(f64, f64), String> {
    if a.len() != b.len() {
        return Err(format!("length {} vs reference {}", a.len(), b.len()));
    }
    let (mut num, mut den, mut max_abs) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = x as f64 - y as f64;
        num += d * d;
        den += y as f64 * y as f64;
        max_abs = max_abs.max(d.abs());
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Ok((f64::INFINITY, f64::INFINITY));
    }
    let rel = if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (num / den).sqrt()
    };
    Ok((rel, max_abs))
}

/// Collects failures and the worst-error summary of one case.
struct Case {
    name: String,
    parts: Vec<String>,
    failures: Vec<String>,
}

impl Case {
    fn new(name: String) -> Self {
        Case { name, parts: Vec::new(), failures: Vec::new() }
    }

    fn fail(&mut self, msg: String) {
        self.failures.push(format!("{}: {msg}", self.name));
    }

    fn exact<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.fail(format!("{what}: got {got:?}, expected {want:?}"));
        }
    }

    /// rel-L2 ≤ REL_TOL, and max abs ≤ ABS_TOL when `check_abs`.
    fn close(&mut self, what: &str, got: &[f32], want: &[f32], check_abs: bool) {
        match compare(got, want) {
            Err(e) => self.fail(format!("{what}: {e}")),
            Ok((rel, abs)) => {
                if check_abs {
                    self.parts.push(format!("{what} {rel:.1e}/{abs:.1e}"));
                } else {
                    self.parts.push(format!("{what} {rel:.1e}"));
                }
                let within = rel <= REL_TOL && (!check_abs || abs <= ABS_TOL);
                if !within {
                    self.fail(format!("{what}: rel-L2 {rel:.3e}, max abs {abs:.3e}"));
                }
            }
        }
    }

    fn bit_exact(&mut self, what: &str, got: &[f32], want: &[f32]) {
        match compare(got, want) {
            Err(e) => self.fail(format!("{what}: {e}")),
            Ok((_, abs)) if abs != 0.0 => self.fail(format!("{what}: not exact, max abs {abs:.3e}")),
            Ok(_) => {}
        }
    }

    fn line(&self) -> String {
        format!("{}: {}", self.name, self.parts.join(", "))
    }
}

fn finish(lines: Vec<String>, failures: Vec<String>) -> Result<Vec<String>, String> {
    if failures.is_empty() {
        Ok(lines)
    } else {
        Err(format!("{}\n--- case lines ---\n{}", failures.join("\n"), lines.join("\n")))
    }
}

// ------------------------------------------------------------------------------------------------
// Checks

/// `seeds.safetensors`: nearest-downsampled grid, K, the 5 padded seed rows and num_sp, all exact.
pub fn check_seeds(file: &Path, sidecar: &Value) -> Result<Vec<String>, String> {
    let bytes = read_file(file)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    let (masks, ms) = u8s(&st, "masks")?;
    let (grids, gs) = u8s(&st, "mask32_nearest")?;
    let (seeds, _) = i64s(&st, "seeds")?;
    let (ks, _) = i64s(&st, "K")?;
    let (nsp, _) = i64s(&st, "num_sp_used")?;
    let (n, h, w) = (ms[0], ms[1], ms[2]);
    let (gh, gw) = (gs[1], gs[2]);
    let max_seeds = sidecar["max_num_sp"].as_u64().unwrap_or(5) as usize;
    let stride = sidecar["down_stride"].as_u64().unwrap_or(8) as usize;
    let area = sidecar["avg_sp_area"].as_u64().unwrap_or(100) as usize;
    let cases = sidecar["cases"].as_array().cloned().unwrap_or_default();
    let (mut lines, mut failures) = (Vec::new(), Vec::new());
    for i in 0..n {
        let name = cases.get(i).and_then(|c| c["name"].as_str()).unwrap_or("?").to_string();
        let mut case = Case::new(format!("seeds/{i}:{name}"));
        let mask = &masks[i * h * w..(i + 1) * h * w];
        match seed_placement(mask, h, w, stride, max_seeds, area) {
            Err(e) => case.fail(format!("seed_placement failed: {e}")),
            Ok(p) => {
                case.exact("grid size", (p.grid_height, p.grid_width), (gh, gw));
                case.exact("nearest grid", p.grid.as_slice(), &grids[i * gh * gw..(i + 1) * gh * gw]);
                case.exact("K", p.k as i64, ks[i]);
                case.exact("num_sp", p.num_sp as i64, nsp[i]);
                let want: Vec<(usize, usize)> = (0..max_seeds)
                    .map(|j| (seeds[(i * max_seeds + j) * 2] as usize, seeds[(i * max_seeds + j) * 2 + 1] as usize))
                    .collect();
                case.exact("seeds", p.padded(max_seeds), want);
                // The public wrapper returns the same thing.
                case.exact(
                    "place_seeds",
                    crate_place_seeds(mask, h, w, stride, max_seeds, area),
                    Some((p.seeds.clone(), p.num_sp)),
                );
                case.parts.push(format!("K {} num_sp {} seeds {:?}", p.k, p.num_sp, p.seeds));
            }
        }
        lines.push(case.line());
        failures.extend(case.failures);
    }
    finish(lines, failures)
}

fn crate_place_seeds(
    m: &[u8],
    h: usize,
    w: usize,
    s: usize,
    k: usize,
    a: usize,
) -> Option<(Vec<(usize, usize)>, usize)> {
    dspnet::model::prototypes::place_seeds(m, h, w, s, k, a).ok()
}

/// `head_synthetic.safetensors`: the head on stored synthetic features (6 masks, every fg path).
pub fn check_head(file: &Path, sidecar: &Value) -> Result<Vec<String>, String> {
    check_episodes(file, sidecar, "head_synthetic")
}

/// `e2e_*.safetensors`, head part only: the stored `feat_support` / `feat_query` with each case's
/// `sup_mask` must reproduce every head intermediate, the logits and the labels. (The backbone part
/// of these files — images → features — is checked elsewhere.)
pub fn check_e2e(file: &Path, sidecar: &Value) -> Result<Vec<String>, String> {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("e2e").to_string();
    check_episodes(file, sidecar, &stem)
}

pub fn options_from(sidecar: &Value) -> HeadOptions {
    let mut o = HeadOptions::default();
    let f = |k: &str, d: f32| sidecar[k].as_f64().map_or(d, |v| v as f32);
    o.alpha_bg = f("alpha_bg", o.alpha_bg);
    o.alpha_fg = f("alpha_fg", o.alpha_fg);
    o.fg_threshold = f("fg_thresh", o.fg_threshold);
    o.bg_threshold = f("bg_thresh", o.bg_threshold);
    if let Some(w) = sidecar["w1_w2_w3"].as_array() {
        for (i, v) in w.iter().take(3).enumerate() {
            o.mixing_weights[i] = v.as_f64().unwrap_or(o.mixing_weights[i] as f64) as f32;
        }
    }
    o.max_seeds = sidecar["max_num_sp"].as_u64().map_or(o.max_seeds, |v| v as usize);
    o.area_per_seed = sidecar["avg_sp_area"].as_u64().map_or(o.area_per_seed, |v| v as usize);
    o
}

pub fn check_episodes(file: &Path, sidecar: &Value, label: &str) -> Result<Vec<String>, String> {
    let bytes = read_file(file)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    let fs = tensor(&st, "feat_support")?;
    let fq = tensor(&st, "feat_query")?;
    let bcma_ref = f32s(&st, "bcma_protos")?.0;
    let ran_ref = if has(&st, "ran") { Some(f32s(&st, "ran")?.0) } else { None };
    let opts = options_from(sidecar);
    let cases = sidecar["cases"].as_object().ok_or("sidecar has no cases")?;
    let (mut lines, mut failures) = (Vec::new(), Vec::new());
    for (name, meta) in cases {
        let mut case = Case::new(format!("{label}/{name}"));
        if let Err(e) = check_one_episode(&st, name, meta, &fs, &fq, &bcma_ref, ran_ref.as_deref(), &opts, &mut case) {
            case.fail(e);
        }
        lines.push(case.line());
        failures.extend(case.failures);
    }
    finish(lines, failures)
}

#[allow(clippy::too_many_arguments)]
fn check_one_episode(
    st: &SafeTensors,
    name: &str,
    meta: &Value,
    fs: &Tensor,
    fq: &Tensor,
    bcma_ref: &[f32],
    ran_ref: Option<&[f32]>,
    opts: &HeadOptions,
    case: &mut Case,
) -> Result<(), String> {
    let t = |s: &str| format!("{name}.{s}");
    let (mask, ms) = u8s(st, &t("sup_mask"))?;
    let ep = SupportEpisode::new(fs, &mask, ms[0], ms[1], opts).map_err(|e| format!("SupportEpisode::new: {e}"))?;

    // Discrete quantities: exact.
    case.exact("fg mode", ep.fg_mode().as_str(), meta["fg_mode"].as_str().unwrap_or("?"));
    case.exact("num_sp", ep.seeds().len() as u64, meta["num_sp_used"].as_u64().unwrap_or(u64::MAX));
    let (seeds, _) = i64s(st, &t("seeds"))?;
    let want: Vec<(usize, usize)> =
        seeds.chunks_exact(2).take(ep.seeds().len()).map(|s| (s[0] as usize, s[1] as usize)).collect();
    case.exact("seeds", ep.seeds().to_vec(), want);
    case.exact("bg prototypes", ep.num_bg_prototypes() as u64, meta["n_bg_protos"].as_u64().unwrap_or(u64::MAX));
    case.exact(
        "fg local prototypes",
        ep.num_fg_local_prototypes() as u64,
        meta["n_fg_local_protos"].as_u64().unwrap_or(u64::MAX),
    );
    case.exact("ROI cells", ep.masks().roi().len() as u64, meta["clustering_roi_cells"].as_u64().unwrap_or(u64::MAX));
    case.parts.push(format!(
        "{} num_sp {} bg {} fg {}",
        ep.fg_mode().as_str(),
        ep.seeds().len(),
        ep.num_bg_prototypes(),
        ep.num_fg_local_prototypes()
    ));

    let (scores, tr) = ep.score_traced(fq).map_err(|e| format!("score_traced: {e}"))?;
    for (what, got) in [("m_f", &tr.m_f), ("m_b", &tr.m_b), ("pool_f", &tr.pool_f), ("pool_b", &tr.pool_b)] {
        case.bit_exact(what, got, &f32s(st, &t(what))?.0);
    }

    // Head tensors.
    if let Some(r) = ran_ref {
        case.close("ran", &to_vec(&tr.ran)?, r, false);
    }
    case.close("bcma", &to_vec(&tr.bcma_protos)?, bcma_ref, false);
    match (&tr.fg_local_protos, has(st, &t("fg_local_protos"))) {
        (Some(p), true) => case.close("fg_local", &to_vec(p)?, &f32s(st, &t("fg_local_protos"))?.0, false),
        (None, false) => {}
        (got, _) => case.fail(format!("fg_local_protos presence: ours {}, reference the opposite", got.is_some())),
    }
    match (&tr.pc, has(st, &t("pc"))) {
        (Some(pc), true) => {
            case.bit_exact(
                "pc_init",
                &to_vec(tr.pc_init.as_ref().ok_or("pc without pc_init")?)?,
                &f32s(st, &t("pc_init"))?.0,
            );
            case.close("pc", &to_vec(pc)?, &f32s(st, &t("pc"))?.0, false);
        }
        (None, false) => {}
        (got, _) => case.fail(format!("pc presence: ours {}, reference the opposite", got.is_some())),
    }
    case.close("p_g", &to_vec(&tr.p_g)?, &f32s(st, &t("p_g"))?.0, false);
    case.close("s_bg", &to_vec(&tr.s_bg)?, &f32s(st, &t("s_bg"))?.0, true);
    case.close("s_fg", &to_vec(&tr.s_fg)?, &f32s(st, &t("s_fg"))?.0, true);

    // Logits and labels.
    let (logits_ref, ls) = f32s(st, &t("logits"))?;
    let logits = upsample_logits(&scores, ls[1], ls[2]).map_err(|e| e.to_string())?;
    case.close("logits", &to_vec(&logits)?, &logits_ref, true);
    let labels = labels_from_logits(&logits).map_err(|e| e.to_string())?;
    let (label_ref, _) = u8s(st, &t("label"))?;
    let hw = ls[1] * ls[2];
    let (mut hard, mut soft) = (0usize, 0usize);
    for p in 0..hw.min(labels.len()).min(label_ref.len()) {
        if labels[p] != label_ref[p] {
            if (logits_ref[hw + p] - logits_ref[p]).abs() >= LABEL_MARGIN {
                hard += 1;
            } else {
                soft += 1;
            }
        }
    }
    case.exact("label count", labels.len(), label_ref.len());
    case.parts.push(format!("labels: {hard} flips, {soft} below margin"));
    if hard > 0 {
        case.fail(format!("{hard} labels differ where the reference margin is >= {LABEL_MARGIN}"));
    }
    Ok(())
}
