//! `memory` propagation: follow the structure slice by slice.
//!
//! From every painted slice, two chains run outward (down and up) through the slices nearer to that
//! painted slice than to any other of its class. Each query slice is scored against the painted slice and
//! a memory of the most recently accepted predictions of its chain; their logits are averaged (painted
//! slice weighted by `painted_weight`, each memory slice by 1), optionally with a spatial prior around
//! the last accepted mask. A presence score (the mean margin of the new prediction relative to the
//! painted slice's own) decides whether the slice is accepted: accepted slices are written and join the
//! memory; rejected slices stay empty, and under `--extent auto` the chain ends after `patience` of them
//! in a row, so slices past the structure's end are never encoded (an optional fitted stop probability,
//! `inside_probability`, can end chains earlier). What is written: near the painted
//! slice (the copy zone, `copy_tolerance`) the painted mask itself; elsewhere the model's mask with its
//! boundary refined on the image intensities (`refine_band`, `refine.rs`). The memory and the leak gate
//! always see the model's own masks.

use std::collections::VecDeque;

use candle_core::Tensor;

use super::cache::{ChainRecord, ChainSettings, ChainStep, FeatureCache, SliceFeatures};
use super::options::{ExtentMode, FovMode, MemoryOptions};
use super::prepared::{bounding_box, SliceLogits};
use super::refine::IntensityModel;
use super::slicing::{slice_indices, CanvasFrame};
use super::{nearest, self_margin, ClassOutcome, ClassPass, Ticker};
use crate::model::prototypes::{HeadOptions, SupportEpisode};
use crate::{DspnetError, Result};

/// Score the class's query slices into `fg` (see [`ClassOutcome`]).
pub fn segment_class(
    pass: &ClassPass<'_, '_>,
    mut fg: Vec<f32>,
    cache: &mut FeatureCache,
    keep_queries: bool,
    ticker: &mut Ticker<'_>,
) -> Result<ClassOutcome> {
    let mut presence = Vec::new();
    // Nothing to score (e.g. a range holding only painted slices): no painted slice needs encoding.
    if pass.query_slices.is_empty() {
        return Ok(ClassOutcome { fg, scored: 0, presence });
    }
    let mut feats = SliceFeatures::new(cache, keep_queries);
    let allowed: Vec<bool> = {
        let mut a = vec![false; pass.vol.slices()];
        for &z in pass.query_slices {
            a[z] = true;
        }
        a
    };
    for &s in pass.painted {
        let anchor = Anchor::new(pass, s, &mut feats)?;
        for dir in [-1i64, 1] {
            follow_chain(pass, &anchor, dir, &allowed, &mut feats, &mut fg, ticker, &mut presence)?;
        }
    }
    // Slices the chains stopped before are no longer part of the work.
    let scored = presence.len();
    if scored < pass.query_slices.len() {
        ticker.skip(pass.query_slices.len() - scored)?;
    }
    Ok(ClassOutcome { fg, scored, presence })
}

/// A painted slice: its episode, the window it was encoded in, and its own margin (the presence scale).
struct Anchor {
    slice: usize,
    episode: SupportEpisode,
    window: Option<[f64; 4]>,
    mask: Vec<bool>,
    area: usize,
    /// How far (mm) from the painted slice the painted mask is copied.
    copy_zone_mm: f64,
    /// Boundary refinement: the painted slice's intensity model and the band in pixels (0 = off).
    intensity: Option<IntensityModel>,
    band_px: usize,
    self_margin: f32,
}

impl Anchor {
    fn new(pass: &ClassPass<'_, '_>, s: usize, feats: &mut SliceFeatures<'_>) -> Result<Self> {
        let vol = pass.vol;
        let mask = pass.painted_mask(s);
        let window = match pass.opts.fov {
            FovMode::Slice => None,
            FovMode::Auto => bounding_box(mask.iter().copied(), vol.cols).and_then(|b| vol.fov_window(b, 1.0)),
        };
        let frame = vol.frame(window)?;
        let features = slice_features(pass, feats, s, window, &frame, false)?;
        let episode = vol.episode(&features, pass.support, s, pass.label, &frame, &pass.opts.head)?;
        let own = vol.score(&episode, &features, &frame)?;
        let area = mask.iter().filter(|&&m| m).count();
        let self_margin = self_margin(&mask, &own);
        let mo = &pass.opts.memory;
        // A feature cell (8 canvas pixels) in mm, and the painted mask's equivalent radius (a disc of its area).
        let cell_mm = 8.0 * vol.pixel_spacing[0] / frame.scale[0];
        let radius_mm = (area as f64 * vol.pixel_spacing[0] * vol.pixel_spacing[1] / std::f64::consts::PI).sqrt();
        // A sphere of radius R has moved its boundary by t at height sqrt(2 R t) (for t << R).
        let copy_zone_mm = (2.0 * radius_mm * mo.copy_tolerance * cell_mm).sqrt();
        let band_px = (mo.refine_band * cell_mm / vol.pixel_spacing[0].min(vol.pixel_spacing[1])).round() as usize;
        let intensity = if band_px > 0 {
            IntensityModel::from_painted(
                &vol.intensities(s),
                &mask,
                vol.rows,
                vol.cols,
                band_px.saturating_mul(2).max(2),
            )
        } else {
            None
        };
        Ok(Anchor { slice: s, episode, window, mask, area, copy_zone_mm, intensity, band_px, self_margin })
    }
}

/// Features of slice `z`: whole slices through the cache, windows encoded on the spot.
fn slice_features(
    pass: &ClassPass<'_, '_>,
    feats: &mut SliceFeatures<'_>,
    z: usize,
    window: Option<[f64; 4]>,
    frame: &CanvasFrame,
    is_query: bool,
) -> Result<Tensor> {
    match window {
        None => feats.get(z, is_query, || pass.vol.encode(pass.model, z, frame)),
        Some(_) => pass.vol.encode(pass.model, z, frame),
    }
}

/// The slices a chain from `anchor` in direction `dir` may visit, in order: up to where another painted
/// slice of its class is nearer (its territory) or the volume ends, skipping slices that may not be scored.
fn chain_slices(pass: &ClassPass<'_, '_>, anchor: usize, dir: i64, allowed: &[bool]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut z = anchor as i64 + dir;
    while z >= 0 && (z as usize) < pass.vol.slices() {
        let zu = z as usize;
        z += dir;
        // Nearer another painted slice of this class: that slice's chain owns it (ties: the lower one).
        if nearest(pass.painted, zu) != anchor {
            break;
        }
        if allowed[zu] {
            out.push(zu);
        }
    }
    out
}

/// Run one chain from `anchor` in direction `dir`, appending (slice, presence) of each scored slice. A chain
/// recorded by an earlier run on the same image (same painted mask and settings) that walked the same
/// slices is replayed instead of scored: its outcome is the same, step for step.
#[allow(clippy::too_many_arguments)]
fn follow_chain(
    pass: &ClassPass<'_, '_>,
    anchor: &Anchor,
    dir: i64,
    allowed: &[bool],
    feats: &mut SliceFeatures<'_>,
    fg: &mut [f32],
    ticker: &mut Ticker<'_>,
    trace: &mut Vec<(usize, f32)>,
) -> Result<()> {
    let vol = pass.vol;
    let visit = chain_slices(pass, anchor.slice, dir, allowed);
    let settings = ChainSettings {
        memory: pass.opts.memory.clone(),
        head: pass.opts.head.clone(),
        fov: pass.opts.fov,
        stops: pass.opts.extent == ExtentMode::Auto,
    };
    if let Some(record) = feats.cache.chain(pass.label, anchor.slice, dir, &anchor.mask, &settings) {
        let n = visit.len().min(record.steps.len());
        // Same slices in the same order, and the record went at least as far as this chain will.
        if record.steps[..n].iter().zip(&visit).all(|(s, &z)| s.slice == z)
            && (record.stopped || visit.len() <= record.steps.len())
        {
            for step in &record.steps[..n] {
                let slice: Vec<usize> = slice_indices(vol.dims, vol.axis, step.slice).collect();
                for &(p, score) in &step.written {
                    fg[slice[p as usize]] = score;
                }
                ticker.tick()?;
                trace.push((step.slice, step.presence));
            }
            feats.cache.replayed_chain();
            return Ok(());
        }
    }
    let mut record = ChainRecord {
        label: pass.label,
        anchor: anchor.slice,
        dir,
        mask: anchor.mask.clone(),
        settings,
        steps: Vec::new(),
        stopped: false,
    };
    let mo = &pass.opts.memory;
    let stops = record.settings.stops;
    let min_area = ((anchor.area as f64 * mo.min_area_fraction).ceil() as usize).max(1);
    let mut memory: VecDeque<SupportEpisode> = VecDeque::with_capacity(mo.size + 1);
    let mut last_mask = anchor.mask.clone();
    let mut misses = 0usize;
    // Presence of the last accepted slices, for the drop rule.
    let mut recent: VecDeque<f32> = VecDeque::with_capacity(RECENT);
    for &zu in &visit {
        // Same window size as the painted slice's (same scale), centred on the last accepted mask.
        let window = anchor.window.map(|w| match bounding_box(last_mask.iter().copied(), vol.cols) {
            Some(b) => vol.window_centred_on(b, w),
            None => w,
        });
        let frame = vol.frame(window)?;
        let features = slice_features(pass, feats, zu, window, &frame, true)?;
        let step = score_with_memory(pass, anchor, &memory, &features, &frame, &last_mask, mo)?;

        ticker.tick()?;
        let presence = step.presence / anchor.self_margin;
        trace.push((zu, presence));
        let dropped = mo.presence_drop > 0.0
            && !recent.is_empty()
            && presence < mo.presence_drop * recent.iter().sum::<f32>() / recent.len() as f32;
        // The fitted stop probability is only computed when asked for (off by default).
        let inside =
            || inside_probability(presence, step.area, anchor, &step.mask, &last_mask, &recent) >= mo.stop_probability;
        let accepted = step.area >= min_area
            && presence >= mo.presence_threshold
            && !dropped
            && (mo.stop_probability <= 0.0 || inside());
        let mut written = Vec::new();
        // Near the painted slice the painted mask is written, elsewhere the refined model mask (the model's
        // own mask feeds the memory).
        let copying = zu.abs_diff(anchor.slice) as f64 * vol.slice_spacing <= anchor.copy_zone_mm;
        let refined;
        let out_mask = match &anchor.intensity {
            _ if copying => &anchor.mask,
            Some(model) if accepted || !stops => {
                refined = model.refine(&vol.intensities(zu), &step.mask, vol.rows, vol.cols, anchor.band_px);
                &refined
            }
            _ => &step.mask,
        };
        // Under a fixed extent every slice keeps its prediction; only accepted ones feed the memory.
        if accepted || !stops {
            for (p, ((v, &on), &score)) in slice_indices(vol.dims, vol.axis, zu).zip(out_mask).zip(&step.fg).enumerate()
            {
                if on {
                    fg[v] = score;
                    written.push((p as u32, score));
                }
            }
        }
        record.steps.push(ChainStep { slice: zu, presence, written });
        if accepted {
            misses = 0;
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(presence);
            if mo.size > 0 {
                let r = memory_episode(pass, &features, &step.mask, &frame, &pass.opts.head);
                match r {
                    Ok(e) => {
                        if memory.len() == mo.size {
                            memory.pop_front();
                        }
                        memory.push_back(e);
                    }
                    // Too small to be seen at the model's resolution: keep the memory as it is.
                    Err(DspnetError::EmptySupport { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            last_mask = step.mask;
        } else {
            misses += 1;
            if stops && misses >= mo.patience {
                record.stopped = true;
                break;
            }
        }
    }
    feats.cache.record_chain(record);
    Ok(())
}

/// Accepted slices whose presence the drop rule compares against.
const RECENT: usize = 3;

/// Logistic model of "this slice is still inside the structure" (weights on the features below, then the
/// intercept), fitted by `scripts/stop_model.py` on chain traces of the tuning structures (the even AAL
/// pairs of the Colin27 MRI and the 8 deep nuclei of its crop; weights/README.md): a chain that keeps a
/// constant mask on look-alike tissue (high overlap with its previous slice) while leaving the painted
/// footprint, or whose presence falls against its recent slices, has left the structure.
const INSIDE_WEIGHTS: [f64; 5] = [1.2738, 0.8443, -2.9422, 3.6073, -1.7513];
const INSIDE_INTERCEPT: f64 = 1.9525;

/// The probability (0–1) that a chain's new slice is still inside the structure, from what the chain
/// knows: its presence, its area against the painted one, its overlap with the previous accepted mask and
/// with the painted mask, and its presence against the recent accepted slices.
fn inside_probability(
    presence: f32,
    area: usize,
    anchor: &Anchor,
    mask: &[bool],
    previous: &[bool],
    recent: &VecDeque<f32>,
) -> f32 {
    let clamp_presence = |p: f32| if p.is_finite() { f64::from(p).clamp(-2.0, 3.0) } else { -2.0 };
    let p = clamp_presence(presence);
    let overlap = |other: &[bool]| mask.iter().zip(other).filter(|(&a, &b)| a && b).count() as f64 / area.max(1) as f64;
    let recent_mean = recent.iter().map(|&r| clamp_presence(r)).sum::<f64>() / recent.len().max(1) as f64;
    let drop = if !recent.is_empty() && recent_mean > 0.0 { (p / recent_mean).clamp(-2.0, 2.0) } else { 1.0 };
    let features = [p, ((area + 1) as f64 / anchor.area as f64).ln(), overlap(previous), overlap(&anchor.mask), drop];
    let z = INSIDE_INTERCEPT + INSIDE_WEIGHTS.iter().zip(features).map(|(w, f)| w * f).sum::<f64>();
    (1.0 / (1.0 + (-z).exp())) as f32
}

/// One query slice scored against the painted slice and the memory.
struct Step {
    /// Predicted foreground, row-major over the slice.
    mask: Vec<bool>,
    /// Combined foreground logit per pixel (what classes are merged by).
    fg: Vec<f32>,
    area: usize,
    /// Mean combined margin (without the prior) over the predicted pixels.
    presence: f32,
}

fn score_with_memory(
    pass: &ClassPass<'_, '_>,
    anchor: &Anchor,
    memory: &VecDeque<SupportEpisode>,
    features: &Tensor,
    frame: &CanvasFrame,
    last_mask: &[bool],
    mo: &MemoryOptions,
) -> Result<Step> {
    let vol = pass.vol;
    let mut parts = vec![(&anchor.episode, mo.painted_weight)];
    parts.extend(memory.iter().map(|e| (e, 1.0)));
    let SliceLogits { fg, bg } = vol.score_mean(&parts, features, frame)?;
    let prior = (mo.prior_gain > 0.0 || mo.leak_gate > 0.0).then(|| {
        let d = distance_mm(last_mask, vol.rows, vol.cols, vol.pixel_spacing);
        let r = mo.prior_radius_mm as f32;
        d.into_iter()
            .map(|d| if d == 0.0 { mo.prior_gain } else { -mo.leak_gate * (d / r).min(1.0) })
            .collect::<Vec<f32>>()
    });
    let mut mask = Vec::with_capacity(fg.len());
    let (mut area, mut margin_sum) = (0usize, 0f32);
    for (p, (f, b)) in fg.iter().zip(&bg).enumerate() {
        let margin = f - b;
        let on = margin + prior.as_ref().map_or(0.0, |pr| pr[p]) > 0.0;
        if on {
            area += 1;
            margin_sum += margin;
        }
        mask.push(on);
    }
    let presence = if area > 0 { margin_sum / area as f32 } else { f32::NEG_INFINITY };
    Ok(Step { mask, fg, area, presence })
}

/// The episode of an accepted prediction, on the features it was predicted from.
fn memory_episode(
    pass: &ClassPass<'_, '_>,
    features: &Tensor,
    mask: &[bool],
    frame: &CanvasFrame,
    head: &HeadOptions,
) -> Result<SupportEpisode> {
    let vol = pass.vol;
    let m: Vec<u8> = mask.iter().map(|&b| u8::from(b)).collect();
    let canvas_mask = frame.mask_to_canvas(&m, vol.rows, vol.cols);
    SupportEpisode::new(features, &canvas_mask, super::CANVAS, super::CANVAS, head)
}

/// Euclidean distance (mm) of every pixel of a rows x cols slice to the nearest `true` pixel; +∞ when
/// there is none. Exact, separable (Felzenszwalb & Huttenlocher's lower envelope of parabolas).
pub fn distance_mm(mask: &[bool], rows: usize, cols: usize, spacing: [f64; 2]) -> Vec<f32> {
    const FAR: f64 = 1e20;
    let mut d2: Vec<f64> = mask.iter().map(|&m| if m { 0.0 } else { FAR }).collect();
    let mut line = Vec::new();
    // Along rows (column index varies), then along columns.
    for r in 0..rows {
        line.clear();
        line.extend_from_slice(&d2[r * cols..(r + 1) * cols]);
        let out = envelope(&line, spacing[1]);
        d2[r * cols..(r + 1) * cols].copy_from_slice(&out);
    }
    for c in 0..cols {
        line.clear();
        line.extend((0..rows).map(|r| d2[r * cols + c]));
        for (r, v) in envelope(&line, spacing[0]).into_iter().enumerate() {
            d2[r * cols + c] = v;
        }
    }
    d2.into_iter().map(|v| if v >= FAR / 2.0 { f32::INFINITY } else { v.sqrt() as f32 }).collect()
}

/// 1D squared distance transform of `f` (squared distances, FAR = none) with sample spacing `h`.
fn envelope(f: &[f64], h: f64) -> Vec<f64> {
    let n = f.len();
    let pos = |q: usize| q as f64 * h;
    let mut v = vec![0usize; n];
    let mut zb = vec![0f64; n + 1];
    let mut k = 0usize;
    zb[0] = f64::NEG_INFINITY;
    zb[1] = f64::INFINITY;
    let cross = |q: usize, p: usize| ((f[q] + pos(q) * pos(q)) - (f[p] + pos(p) * pos(p))) / (2.0 * (pos(q) - pos(p)));
    for q in 1..n {
        let mut s = cross(q, v[k]);
        // zb[0] is −∞, so this ends at k = 0 at the latest.
        while s <= zb[k] {
            k -= 1;
            s = cross(q, v[k]);
        }
        k += 1;
        v[k] = q;
        zb[k] = s;
        zb[k + 1] = f64::INFINITY;
    }
    let mut out = vec![0f64; n];
    let mut k = 0usize;
    for (q, o) in out.iter_mut().enumerate() {
        while zb[k + 1] < pos(q) {
            k += 1;
        }
        let p = v[k];
        *o = (pos(q) - pos(p)).powi(2) + f[p];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_transform_is_exact_with_anisotropic_spacing() {
        let (rows, cols) = (7, 9);
        let mut mask = vec![false; rows * cols];
        mask[2 * cols + 3] = true;
        mask[5 * cols + 7] = true;
        let d = distance_mm(&mask, rows, cols, [2.0, 0.5]);
        for r in 0..rows {
            for c in 0..cols {
                let brute = [(2usize, 3usize), (5, 7)]
                    .iter()
                    .map(|&(pr, pc)| {
                        (((r as f64 - pr as f64) * 2.0).powi(2) + ((c as f64 - pc as f64) * 0.5).powi(2)).sqrt()
                    })
                    .fold(f64::INFINITY, f64::min);
                assert!((d[r * cols + c] as f64 - brute).abs() < 1e-5, "({r},{c}): {} vs {brute}", d[r * cols + c]);
            }
        }
        assert!(distance_mm(&[false; 4], 2, 2, [1.0, 1.0]).iter().all(|v| v.is_infinite()));
    }
}
