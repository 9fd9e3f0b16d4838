//! Whole-volume segmentation from labelled slices: the product's main job.
//!
//! Protocol: the slices (along the slice axis) that contain any non-zero label are support slices, and
//! 0 inside them means background. Each distinct label value is a class, segmented on its own; classes
//! are merged by highest foreground score, and support slices keep the user's labels untouched. How a
//! class's query slices are scored is the propagation ([`Propagation`]):
//! - `independent` ([`independent`]): every query slice is matched against the nearest painted slice,
//!   as in the paper;
//! - `memory` ([`propagate`]): the structure is followed slice by slice outward from each painted slice,
//!   each slice matched against the painted slice and the latest accepted predictions, until a presence
//!   score says the structure has ended.
//!
//! Modules: [`options`] (what a caller asks), [`axis`] (the painting axis), [`prepared`] (slices in and
//! logits out of the model), [`cache`] (features kept for reuse), the two propagations, [`components`],
//! [`eval`] (evaluation protocols and baselines), [`files`] (one study from files to file).

pub mod axis;
pub mod cache;
pub mod components;
pub mod confidence;
pub mod eval;
pub mod files;
pub mod independent;
pub mod normalize;
pub mod options;
pub mod prepared;
pub mod propagate;
pub mod refine;
pub mod session;
pub mod slicing;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::model::Model;
use crate::{DspnetError, Result};
use slicing::slice_indices;

pub use axis::{choose_axis, labelled_slice_counts};
pub use cache::{CacheStats, FeatureCache};
pub use files::{check_memory_limit, read_study, segment_files, segment_study};
pub use options::{
    AxisChoice, ComponentsMode, ExtentMode, FovMode, MemoryOptions, ModalityChoice, Progress, Propagation,
    SegmentOptions, SegmentSummary, VolumeRef,
};
pub use prepared::{PreparedVolume, SliceLogits, CANVAS};
pub use session::Session;

/// Checked product of dims.
pub fn voxel_count(dims: [usize; 3]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DspnetError::Shape(format!("volume dimensions {dims:?} overflow")))
}

/// Segment a volume from its labelled slices. `support` has the image's dims; returns the label volume
/// (same dims) and a summary. The output is computed in scratch memory: on error or cancel nothing of
/// the caller's is touched.
pub fn segment(
    model: &Model,
    image: VolumeRef<'_>,
    support: &[u16],
    opts: &SegmentOptions,
    progress: Progress<'_>,
) -> Result<(Vec<u16>, SegmentSummary)> {
    segment_cached(model, image, support, opts, progress, &mut FeatureCache::transient())
}

/// One class's pass over the volume: everything a propagation needs to score its query slices.
pub struct ClassPass<'p, 'v> {
    pub model: &'p Model,
    pub vol: &'p PreparedVolume<'v>,
    pub support: &'p [u16],
    pub label: u16,
    /// The slices painted with this class, sorted, non-empty.
    pub painted: &'p [usize],
    /// Slices painted with any class: never scored.
    pub any_label_slice: &'p [bool],
    /// The slices the caller allows to be scored (not painted, inside a requested range).
    pub query_slices: &'p [usize],
    pub opts: &'p SegmentOptions,
}

/// What a class's pass produced.
pub struct ClassOutcome {
    /// Per voxel: the class's foreground logit where it wins, −∞ elsewhere, +∞ on its painted voxels.
    pub fg: Vec<f32>,
    /// Query slices scored.
    pub scored: usize,
    /// Memory propagation: (slice, presence score) of every scored slice.
    pub presence: Vec<(usize, f32)>,
}

impl ClassPass<'_, '_> {
    /// The score volume with the painted voxels at +∞ and everything else at −∞.
    fn empty_scores(&self, classes: usize) -> Result<Vec<f32>> {
        let n = self.support.len();
        let mut fg: Vec<f32> = Vec::new();
        fg.try_reserve_exact(n).map_err(|_| oom(n, classes))?;
        fg.resize(n, f32::NEG_INFINITY);
        for &z in self.painted {
            for v in slice_indices(self.vol.dims, self.vol.axis, z) {
                if self.support[v] == self.label {
                    fg[v] = f32::INFINITY;
                }
            }
        }
        Ok(fg)
    }

    /// The class's painted mask on slice `s`, row-major over the slice.
    pub fn painted_mask(&self, s: usize) -> Vec<bool> {
        slice_indices(self.vol.dims, self.vol.axis, s).map(|v| self.support[v] == self.label).collect()
    }
}

/// Progress over all classes: `done` of `total` query-slice scorings.
pub struct Ticker<'a> {
    done: usize,
    total: usize,
    progress: Progress<'a>,
}

impl Ticker<'_> {
    /// One slice scored; Err(Cancelled) when the caller says stop.
    pub fn tick(&mut self) -> Result<()> {
        self.done += 1;
        self.report()
    }

    /// `n` slices that were counted will not be scored after all (the extent stopped before them).
    pub fn skip(&mut self, n: usize) -> Result<()> {
        self.total -= n.min(self.total - self.done);
        self.report()
    }

    fn report(&mut self) -> Result<()> {
        if (self.progress)(self.done, self.total) {
            Ok(())
        } else {
            Err(DspnetError::Cancelled)
        }
    }
}

/// [`segment`] reusing (and filling) `cache`.
pub fn segment_cached(
    model: &Model,
    image: VolumeRef<'_>,
    support: &[u16],
    opts: &SegmentOptions,
    progress: Progress<'_>,
    cache: &mut FeatureCache,
) -> Result<(Vec<u16>, SegmentSummary)> {
    let t0 = Instant::now();
    let dims = image.dims;
    if dims.contains(&0) {
        return Err(DspnetError::Shape(format!("volume dimensions {dims:?} contain a zero")));
    }
    let n = voxel_count(dims)?;
    if image.data.len() != n {
        return Err(DspnetError::Shape(format!("image has {} voxels, dims {dims:?} need {n}", image.data.len())));
    }
    if support.len() != n {
        return Err(DspnetError::Shape(format!("support labels have {} voxels, the image {n}", support.len())));
    }
    if let Some(s) = image.spacing.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(DspnetError::InvalidArgument(format!(
            "voxel spacing {:?} must be finite and positive (found {s})",
            image.spacing
        )));
    }
    opts.memory.validate()?;
    let present: BTreeSet<u16> = support.iter().copied().filter(|&l| l != 0).collect();
    if present.is_empty() {
        return Err(DspnetError::empty_support(None, None, "no labelled voxel in the support label volume (every voxel is 0); paint the structure on at least one slice"));
    }
    let classes: Vec<u16> = match &opts.classes {
        None => present.iter().copied().collect(),
        Some(wanted) => {
            if wanted.is_empty() {
                return Err(DspnetError::InvalidArgument("the class list is empty".into()));
            }
            if let Some(c) = wanted.iter().find(|c| !present.contains(c)) {
                return Err(DspnetError::empty_support(
                    Some(*c),
                    None,
                    format!("it is absent from every support slice (labels present: {present:?})"),
                ));
            }
            let set: BTreeSet<u16> = wanted.iter().copied().collect();
            set.into_iter().collect()
        }
    };
    // The axis is judged from the classes being segmented only.
    let axis = axis::axis_from_counts(
        axis::slice_counts_where(support, dims, |l| l != 0 && classes.contains(&l)),
        dims,
        opts.axis,
    )?;
    let vol = PreparedVolume::new(model, image, axis, opts.modality)?;
    let n_slices = vol.slices();

    // Support slices (any label) are preserved in the output and never scored.
    let any_label_slice: Vec<bool> =
        (0..n_slices).map(|z| slice_indices(dims, axis, z).any(|v| support[v] != 0)).collect();
    let mut support_slices = BTreeMap::new();
    for &c in &classes {
        let zs: Vec<usize> = (0..n_slices).filter(|&z| slice_indices(dims, axis, z).any(|v| support[v] == c)).collect();
        support_slices.insert(c, zs);
    }
    if let ExtentMode::Range(a, b) = opts.extent {
        if a > b || b >= n_slices {
            return Err(DspnetError::InvalidArgument(format!("extent {a}:{b} is outside slices 0..={}", n_slices - 1)));
        }
    }
    let in_extent = |z: usize| match opts.extent {
        ExtentMode::Range(a, b) => z >= a && z <= b,
        _ => true,
    };
    let query_slices: Vec<usize> = (0..n_slices).filter(|&z| !any_label_slice[z] && in_extent(z)).collect();
    let mut ticker = Ticker { done: 0, total: query_slices.len() * classes.len(), progress };
    ticker.report()?;

    // Whole-slice features are shared by all classes.
    cache.bind(model, &image, axis, vol.modality);
    // The per-class score volumes are the big allocations: refuse cleanly rather than abort the host.
    let mut class_fg: Vec<Vec<f32>> = Vec::new();
    class_fg.try_reserve_exact(classes.len()).map_err(|_| oom(n, classes.len()))?;
    let mut processed = 0usize;
    let mut presence = BTreeMap::new();
    for (ci, &label) in classes.iter().enumerate() {
        let pass = ClassPass {
            model,
            vol: &vol,
            support,
            label,
            painted: &support_slices[&label],
            any_label_slice: &any_label_slice,
            query_slices: &query_slices,
            opts,
        };
        // Query features are kept for later classes only.
        let keep_queries = !cache.is_transient() || ci + 1 < classes.len();
        let fg = pass.empty_scores(classes.len())?;
        let mut outcome = match opts.propagation {
            Propagation::Independent => independent::segment_class(&pass, fg, cache, keep_queries, &mut ticker)?,
            Propagation::Memory => propagate::segment_class(&pass, fg, cache, keep_queries, &mut ticker)?,
        };
        processed += outcome.scored;
        presence.insert(label, std::mem::take(&mut outcome.presence));
        if opts.components == ComponentsMode::Support {
            let mask: Vec<bool> = outcome.fg.iter().map(|&f| f > f32::NEG_INFINITY).collect();
            let seeds = (0..n).filter(|&v| support[v] == label);
            let keep = components::keep_connected_to(&mask, seeds, dims);
            for (f, k) in outcome.fg.iter_mut().zip(keep) {
                if !k {
                    *f = f32::NEG_INFINITY;
                }
            }
        }
        class_fg.push(outcome.fg);
    }

    // Merge: the highest foreground score wins; support slices keep the user's labels exactly.
    let mut out = merge_classes(&classes, &class_fg);
    for z in (0..n_slices).filter(|&z| any_label_slice[z]) {
        for v in slice_indices(dims, axis, z) {
            out[v] = support[v];
        }
    }
    let mut voxels_per_class: BTreeMap<u16, usize> = classes.iter().map(|&c| (c, 0)).collect();
    for l in &out {
        if let Some(c) = voxels_per_class.get_mut(l) {
            *c += 1;
        }
    }
    let slice_confidence = confidence::slice_confidence(n_slices, &presence);
    let labelled: Vec<bool> =
        (0..n_slices).map(|z| slice_indices(dims, axis, z).any(|v| out[v] != 0 && classes.contains(&out[v]))).collect();
    let painted: Vec<usize> = (0..n_slices).filter(|&z| any_label_slice[z]).collect();
    let suggested_slices = confidence::suggest_slices(&slice_confidence, &labelled, &painted);
    let summary = SegmentSummary {
        axis,
        modality: vol.modality,
        classes,
        support_slices,
        slices_processed: processed,
        voxels_per_class,
        presence,
        slice_confidence,
        suggested_slices,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((out, summary))
}

/// Per voxel, the class whose foreground score is highest among the classes that predict it
/// (`class_fg[c][v]` is −∞ where class c does not); 0 where none does. Ties go to the earlier class.
pub fn merge_classes(classes: &[u16], class_fg: &[Vec<f32>]) -> Vec<u16> {
    let n = class_fg.first().map_or(0, Vec::len);
    (0..n)
        .map(|v| {
            let mut best = (f32::NEG_INFINITY, 0u16);
            for (c, fg) in classes.iter().zip(class_fg) {
                if fg[v] > best.0 {
                    best = (fg[v], *c);
                }
            }
            best.1
        })
        .collect()
}

fn oom(voxels: usize, classes: usize) -> DspnetError {
    DspnetError::OutOfMemory(format!(
        "cannot allocate the score volumes for {classes} class(es) of {voxels} voxels ({} MB each)",
        (voxels * 4) >> 20
    ))
}

/// The mean margin (foreground minus background logit) of a painted slice's own mask under its own
/// episode: the scale presence scores are measured in. A painted slice the model cannot even recognise
/// itself falls back to one logit unit.
pub(crate) fn self_margin(mask: &[bool], own: &SliceLogits) -> f32 {
    let area = mask.iter().filter(|&&m| m).count();
    let sum: f32 = mask.iter().zip(own.fg.iter().zip(&own.bg)).filter(|(&m, _)| m).map(|(_, (f, b))| f - b).sum();
    let m = sum / area.max(1) as f32;
    if m.is_finite() && m > 0.0 {
        m
    } else {
        1.0
    }
}

/// The painted slice nearest to `z` (ties: the lower index). `painted` is sorted and non-empty.
pub(crate) fn nearest(painted: &[usize], z: usize) -> usize {
    let mut best = painted[0];
    for &s in painted {
        if s.abs_diff(z) < best.abs_diff(z) {
            best = s;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_support_prefers_lower_on_ties() {
        assert_eq!(nearest(&[2, 6], 4), 2);
        assert_eq!(nearest(&[2, 6], 5), 6);
        assert_eq!(nearest(&[2, 6], 0), 2);
        assert_eq!(nearest(&[2, 6], 9), 6);
    }

    #[test]
    fn merge_picks_highest_score() {
        let ninf = f32::NEG_INFINITY;
        let fg = vec![vec![1.0, ninf, 5.0, ninf, 2.0], vec![3.0, ninf, 4.0, 0.5, 2.0]];
        assert_eq!(merge_classes(&[7, 9], &fg), vec![9, 0, 7, 9, 7]);
    }
}
