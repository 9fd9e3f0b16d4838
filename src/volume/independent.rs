//! `independent` propagation, the paper's protocol: every query slice is matched, on its own, against the
//! nearest painted slice of its class.

use std::collections::HashMap;

use super::cache::{batch_size, FeatureCache, SliceFeatures};
use super::options::{ExtentMode, FovMode};
use super::prepared::{bounding_box, touches_border};
use super::slicing::slice_indices;
use super::{nearest, self_margin, ClassOutcome, ClassPass, Ticker};
use crate::model::prototypes::SupportEpisode;
use crate::Result;

/// Score the class's query slices into `fg` (see [`ClassOutcome`]).
pub fn segment_class(
    pass: &ClassPass<'_, '_>,
    fg: Vec<f32>,
    cache: &mut FeatureCache,
    keep_queries: bool,
    ticker: &mut Ticker<'_>,
) -> Result<ClassOutcome> {
    let mut scorer = Scorer {
        pass,
        feats: SliceFeatures::new(cache, keep_queries),
        episodes: HashMap::new(),
        fg,
        scored: 0,
        presence: Vec::new(),
    };
    let vol = pass.vol;
    let painted = pass.painted;
    let (lo, hi) = (painted[0], painted[painted.len() - 1]);
    match pass.opts.extent {
        ExtentMode::All | ExtentMode::Range(..) => {
            // Outward from the nearest painted slice so that the field of view can follow the structure.
            let mut order: Vec<usize> = pass.query_slices.to_vec();
            order.sort_by_key(|&z| (z.abs_diff(nearest(painted, z)), z));
            let batch = batch_size(pass.model, pass.opts);
            let whole = vol.frame(None)?;
            let mut last_bbox: HashMap<usize, [usize; 4]> = HashMap::new();
            for (i, &z) in order.iter().enumerate() {
                // The next slices to encode are known: encode them together.
                if batch > 1 && pass.opts.fov == FovMode::Slice && !scorer.feats.has(z) {
                    let next: Vec<usize> =
                        order[i..].iter().copied().filter(|&q| !scorer.feats.has(q)).take(batch).collect();
                    scorer.feats.encoded_ahead(next.len());
                    for (q, f) in next.iter().zip(vol.encode_batch(pass.model, &next, &whole)?) {
                        scorer.feats.ahead.insert(*q, f);
                    }
                }
                let towards = if z < nearest(painted, z) { z + 1 } else { z.wrapping_sub(1) };
                let follow = last_bbox.get(&towards).copied().or_else(|| scorer.painted_bbox(nearest(painted, z)));
                let (_, bbox) = scorer.score_slice(z, follow)?;
                if let Some(b) = bbox {
                    last_bbox.insert(z, b);
                }
                ticker.tick()?;
            }
        }
        ExtentMode::Auto => {
            // Every slice between the outermost painted slices, then outward until the structure has been
            // missing (or tiny) for `extent_patience` slices in a row.
            let mut follow = scorer.painted_bbox(lo);
            for z in (lo + 1..hi).filter(|&z| !pass.any_label_slice[z]) {
                let (_, bbox) = scorer.score_slice(z, follow.or_else(|| scorer.painted_bbox(nearest(painted, z))))?;
                follow = bbox.or(follow);
                ticker.tick()?;
            }
            let outside = pass.query_slices.iter().filter(|&&z| z < lo || z > hi).count();
            let mut visited = 0usize;
            for (start, dir) in [(lo, -1i64), (hi, 1)] {
                let area = pass.painted_mask(start).iter().filter(|&&m| m).count();
                let min_area = ((area as f64 * pass.opts.extent_min_fraction).ceil() as usize).max(1);
                let mut follow = scorer.painted_bbox(start);
                let mut misses = 0;
                let mut z = start as i64 + dir;
                while z >= 0 && (z as usize) < vol.slices() && misses < pass.opts.extent_patience {
                    let zu = z as usize;
                    if !pass.any_label_slice[zu] {
                        let (area, bbox) = scorer.score_slice(zu, follow)?;
                        follow = bbox.or(follow);
                        visited += 1;
                        ticker.tick()?;
                        misses = if area < min_area { misses + 1 } else { 0 };
                    }
                    z += dir;
                }
            }
            // The slices the extent stopped before are no longer part of the work.
            ticker.skip(outside - visited)?;
        }
    }
    Ok(ClassOutcome { fg: scorer.fg, scored: scorer.scored, presence: scorer.presence })
}

/// Scores query slices against the nearest painted slice, building each painted slice's episode once.
/// A support episode with the window it was built in and the painted slice's own margin under it.
type WindowedEpisode = (SupportEpisode, Option<[f64; 4]>, f32);

struct Scorer<'s, 'p, 'v, 'c> {
    pass: &'s ClassPass<'p, 'v>,
    feats: SliceFeatures<'c>,
    /// Episodes keyed by (painted slice, window growth step), with the window they were built in and the
    /// painted slice's own margin under it.
    episodes: HashMap<(usize, u32), WindowedEpisode>,
    fg: Vec<f32>,
    scored: usize,
    /// (slice, presence) of every scored slice, as memory propagation measures it.
    presence: Vec<(usize, f32)>,
}

impl Scorer<'_, '_, '_, '_> {
    fn painted_bbox(&self, s: usize) -> Option<[usize; 4]> {
        bounding_box(self.pass.painted_mask(s).into_iter(), self.pass.vol.cols)
    }

    /// Score slice `z` into the score volume; `follow` is the prediction bbox of the neighbour towards
    /// the painted slice (auto field of view). Returns the foreground area and bbox.
    fn score_slice(&mut self, z: usize, follow: Option<[usize; 4]>) -> Result<(usize, Option<[usize; 4]>)> {
        let pass = self.pass;
        let (vol, model, opts) = (pass.vol, pass.model, pass.opts);
        let (rows, cols) = (vol.rows, vol.cols);
        let whole = vol.frame(None)?;
        let s = nearest(pass.painted, z);
        let mut growth = 0u32;
        loop {
            let grow = 1.5f64.powi(growth as i32);
            if !self.episodes.contains_key(&(s, growth)) {
                let window = match opts.fov {
                    FovMode::Slice => None,
                    FovMode::Auto => self.painted_bbox(s).and_then(|b| vol.fov_window(b, grow)),
                };
                let frame = vol.frame(window)?;
                let features = match window {
                    None => self.feats.get(s, false, || vol.encode(model, s, &whole))?,
                    Some(_) => vol.encode(model, s, &frame)?,
                };
                let episode = vol.episode(&features, pass.support, s, pass.label, &frame, &opts.head)?;
                let own = vol.score(&episode, &features, &frame)?;
                let margin = self_margin(&pass.painted_mask(s), &own);
                self.episodes.insert((s, growth), (episode, window, margin));
            }
            let (episode, painted_window, own_margin) = &self.episodes[&(s, growth)];
            let own_margin = *own_margin;
            // Same window size as the painted slice's (same scale), centred on the followed structure.
            let window = painted_window.map(|w| match follow {
                None => w,
                Some(b) => vol.window_centred_on(b, w),
            });
            let frame = vol.frame(window)?;
            let features = match window {
                None => self.feats.get(z, true, || vol.encode(model, z, &whole))?,
                Some(_) => vol.encode(model, z, &frame)?,
            };
            let logits = vol.score(episode, &features, &frame)?;
            let bbox = bounding_box(logits.foreground(), cols);
            // The structure runs into the window's edge: look again with a larger window.
            if let (Some(w), Some(b)) = (window, bbox) {
                if touches_border(w, b, rows, cols) && growth < 3 {
                    growth += 1;
                    continue;
                }
            }
            let (mut area, mut margin_sum) = (0, 0f32);
            for ((v, f), b) in slice_indices(vol.dims, vol.axis, z).zip(&logits.fg).zip(&logits.bg) {
                if f > b {
                    self.fg[v] = *f;
                    area += 1;
                    margin_sum += f - b;
                }
            }
            self.scored += 1;
            let presence = if area > 0 { margin_sum / area as f32 / own_margin } else { f32::NEG_INFINITY };
            self.presence.push((z, presence));
            return Ok((area, bbox));
        }
    }
}
