//! Whole-volume segmentation from labelled slices: the product's main job.
//!
//! Protocol: the slices (along the slice axis) that contain any non-zero label are support slices, and
//! 0 inside them means background. Each distinct label value is a class, segmented as its own 1-way
//! episode; every query slice uses the nearest support slice of that class (ties: the lower index).
//! Classes are merged by highest foreground score. Support slices keep the user's labels untouched.

pub mod components;
pub mod normalize;
pub mod slicing;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use candle_core::Tensor;

use crate::model::prototypes::{upsample_logits, HeadOptions, SupportEpisode};
use crate::model::Model;
use crate::{DspnetError, Result};
use normalize::Modality;
use slicing::{extract_slice, in_plane_axes, slice_indices, slice_shape, CanvasFrame};

/// Side of the square model input.
pub const CANVAS: usize = 256;

/// A borrowed image volume: voxel (i, j, k) at `data[i + dims[0]*(j + dims[1]*k)]`, spacing in mm.
#[derive(Clone, Copy, Debug)]
pub struct VolumeRef<'a> {
    pub data: &'a [f32],
    pub dims: [usize; 3],
    pub spacing: [f64; 3],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AxisChoice {
    /// The only axis along which the labels lie on few slices.
    Auto,
    /// 0 = i, 1 = j, 2 = k.
    Fixed(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModalityChoice {
    Auto,
    Ct,
    Mri,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentMode {
    /// Propagate outward from the support slices; stop when the structure has vanished.
    Auto,
    /// Every slice.
    All,
    /// Slices `first..=last` (support slices are always kept).
    Range(usize, usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FovMode {
    /// The whole slice fitted into the model input (the paper's setting).
    Slice,
    /// A square window around the structure, following it from slice to slice.
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComponentsMode {
    /// Keep only the 3D connected parts of each class that touch its support voxels.
    Support,
    /// Keep everything predicted.
    All,
}

/// Options of [`segment`]; `Default` gives the recommended settings.
#[derive(Clone, Debug)]
pub struct SegmentOptions {
    pub axis: AxisChoice,
    pub modality: ModalityChoice,
    pub extent: ExtentMode,
    pub fov: FovMode,
    pub components: ComponentsMode,
    /// Restrict to these label values (None = every label found in the support).
    pub classes: Option<Vec<u16>>,
    pub head: HeadOptions,
    /// Auto extent: stop after this many consecutive slices without the structure.
    pub extent_patience: usize,
    /// Auto extent: a slice counts as "without the structure" below this fraction of the support area.
    pub extent_min_fraction: f64,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            axis: AxisChoice::Auto,
            modality: ModalityChoice::Auto,
            extent: ExtentMode::Auto,
            fov: FovMode::Slice,
            components: ComponentsMode::Support,
            classes: None,
            head: HeadOptions::default(),
            extent_patience: 3,
            extent_min_fraction: 0.05,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentSummary {
    pub axis: usize,
    pub modality: Modality,
    pub classes: Vec<u16>,
    /// Support slice indices per class.
    pub support_slices: BTreeMap<u16, Vec<usize>>,
    /// Query slices scored (over all classes; a slice scored for two classes counts twice).
    pub slices_processed: usize,
    /// Output voxels per class.
    pub voxels_per_class: BTreeMap<u16, usize>,
    pub seconds: f64,
}

/// Progress callback: (done, total) → keep going? Returning false cancels the run.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize) -> bool;

/// Checked product of dims.
pub fn voxel_count(dims: [usize; 3]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DspnetError::Shape(format!("volume dimensions {dims:?} overflow")))
}

/// Number of slices along each axis that hold a non-zero label.
pub fn labelled_slice_counts(labels: &[u16], dims: [usize; 3]) -> [usize; 3] {
    let mut seen = [vec![false; dims[0]], vec![false; dims[1]], vec![false; dims[2]]];
    for (n, &l) in labels.iter().enumerate() {
        if l != 0 {
            let i = n % dims[0];
            let j = (n / dims[0]) % dims[1];
            let k = n / (dims[0] * dims[1]);
            seen[0][i] = true;
            seen[1][j] = true;
            seen[2][k] = true;
        }
    }
    [0, 1, 2].map(|a| seen[a].iter().filter(|&&s| s).count())
}

const AXIS_NAMES: [&str; 3] = ["i", "j", "k"];

/// The slice axis: the one along which the labels lie on clearly fewer slices than along the others.
pub fn choose_axis(labels: &[u16], dims: [usize; 3], choice: AxisChoice) -> Result<usize> {
    let counts = labelled_slice_counts(labels, dims);
    let describe = || format!("labels lie on {} slices along i, {} along j, {} along k", counts[0], counts[1], counts[2]);
    let mut order = [0usize, 1, 2];
    order.sort_by_key(|&a| (counts[a], a));
    match choice {
        AxisChoice::Fixed(a) if a > 2 => Err(DspnetError::InvalidArgument(format!("slice axis {a} is not 0, 1 or 2"))),
        AxisChoice::Fixed(a) => {
            let best = order[0];
            // The user named an axis, but the painting says otherwise: a labelled sagittal slice spans
            // many axial slices, which would silently turn into many support slices.
            if best != a && counts[a] > 3 && counts[a] >= 2 * counts[best] {
                return Err(DspnetError::InvalidArgument(format!(
                    "the labels do not look painted on {} slices ({}); were they painted along {}?",
                    AXIS_NAMES[a],
                    describe(),
                    AXIS_NAMES[best]
                )));
            }
            Ok(a)
        }
        AxisChoice::Auto => {
            let (a, b) = (order[0], order[1]);
            if 2 * counts[a] <= counts[b] && counts[a] < dims[a].max(2) {
                Ok(a)
            } else {
                Err(DspnetError::InvalidArgument(format!(
                    "cannot tell the slice axis: {}; choose it with --axis i|j|k",
                    describe()
                )))
            }
        }
    }
}

/// Feature/score state for one class while propagating.
struct ClassRun {
    label: u16,
    /// Sorted support slice indices.
    supports: Vec<usize>,
    /// Support area (pixels) per support slice.
    support_area: HashMap<usize, usize>,
}

/// Segment a volume from its labelled slices. `support` has the image's dims; returns the label volume
/// (same dims) and a summary. The output is computed in scratch memory: on error or cancel nothing of
/// the caller's is touched.
pub fn segment(model: &Model, image: VolumeRef<'_>, support: &[u16], opts: &SegmentOptions, progress: Progress<'_>) -> Result<(Vec<u16>, SegmentSummary)> {
    let t0 = Instant::now();
    let dims = image.dims;
    let n = voxel_count(dims)?;
    if dims.iter().any(|&d| d == 0) {
        return Err(DspnetError::Shape(format!("volume dimensions {dims:?} contain a zero")));
    }
    if image.data.len() != n {
        return Err(DspnetError::Shape(format!("image has {} voxels, dims {dims:?} need {n}", image.data.len())));
    }
    if support.len() != n {
        return Err(DspnetError::Shape(format!("support labels have {} voxels, the image {n}", support.len())));
    }
    if let Some(s) = image.spacing.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(DspnetError::InvalidArgument(format!("voxel spacing {:?} must be finite and positive (found {s})", image.spacing)));
    }
    let present: BTreeSet<u16> = support.iter().copied().filter(|&l| l != 0).collect();
    if present.is_empty() {
        return Err(DspnetError::EmptySupport(": the support label volume has no non-zero voxel; paint the structure on at least one slice".into()));
    }
    let classes: Vec<u16> = match &opts.classes {
        None => present.iter().copied().collect(),
        Some(wanted) => {
            if wanted.is_empty() {
                return Err(DspnetError::InvalidArgument("the class list is empty".into()));
            }
            if let Some(c) = wanted.iter().find(|c| !present.contains(c)) {
                return Err(DspnetError::EmptySupport(format!(
                    " for class {c}: it is absent from every support slice (labels present: {present:?})"
                )));
            }
            let set: BTreeSet<u16> = wanted.iter().copied().collect();
            set.into_iter().collect()
        }
    };
    // Axis from the classes being segmented only.
    let class_labels: Vec<u16> = support.iter().map(|&l| if classes.contains(&l) { l } else { 0 }).collect();
    let axis = choose_axis(&class_labels, dims, opts.axis)?;
    let n_slices = dims[axis];
    let (rows, cols) = slice_shape(dims, axis);
    let (row_axis, col_axis) = in_plane_axes(axis);
    let pixel_spacing = [image.spacing[row_axis], image.spacing[col_axis]];

    // Normalise once for the whole volume.
    let modality = match opts.modality {
        ModalityChoice::Ct => Modality::Ct,
        ModalityChoice::Mri => Modality::Mri,
        ModalityChoice::Auto => Modality::guess(image.data),
    };
    let mut normalized = image.data.to_vec();
    let pad = normalize::normalize_volume(&mut normalized, &model.config().input_normalization, modality)?;

    // Which slices hold which class; support slices (any label) are preserved in the output.
    let mut runs = Vec::new();
    let mut support_slices = BTreeMap::new();
    for &c in &classes {
        let mut supports = Vec::new();
        let mut support_area = HashMap::new();
        for z in 0..n_slices {
            let area = slice_indices(dims, axis, z).filter(|&v| support[v] == c).count();
            if area > 0 {
                supports.push(z);
                support_area.insert(z, area);
            }
        }
        support_slices.insert(c, supports.clone());
        runs.push(ClassRun { label: c, supports, support_area });
    }
    let any_label_slice: Vec<bool> = (0..n_slices).map(|z| slice_indices(dims, axis, z).any(|v| support[v] != 0)).collect();

    let range = match opts.extent {
        ExtentMode::Range(a, b) => {
            if a > b || b >= n_slices {
                return Err(DspnetError::InvalidArgument(format!("extent {a}:{b} is outside slices 0..{}", n_slices - 1)));
            }
            Some((a, b))
        }
        _ => None,
    };
    let in_extent = |z: usize| match (opts.extent, range) {
        (ExtentMode::Range(..), Some((a, b))) => z >= a && z <= b,
        _ => true,
    };
    let query_slices: Vec<usize> = (0..n_slices).filter(|&z| !any_label_slice[z] && in_extent(z)).collect();
    let mut total = query_slices.len() * runs.len();
    let mut done = 0usize;
    if !progress(done, total) {
        return Err(DspnetError::Cancelled);
    }

    let full_window = [0.0, 0.0, rows as f64, cols as f64];
    let slice_frame = CanvasFrame::fit(full_window, pixel_spacing, CANVAS)?;
    // Features of whole-slice canvases are shared by all classes.
    let mut feature_cache: HashMap<usize, Tensor> = HashMap::new();
    let encode_canvas = |z: usize, frame: &CanvasFrame| -> Result<Tensor> {
        let img = extract_slice(&normalized, dims, axis, z);
        let canvas = frame.image_to_canvas(&img, rows, cols, pad);
        Ok(model.encode_slices(&canvas, 1, CANVAS, CANVAS)?.squeeze(0)?)
    };

    let mut class_fg: Vec<Vec<f32>> = Vec::with_capacity(runs.len()); // per class: fg score where predicted fg, else -inf
    let mut processed = 0usize;
    for run in &runs {
        let mut fg = vec![f32::NEG_INFINITY; n];
        // Support slices of this class are its own labels.
        for &z in &run.supports {
            for v in slice_indices(dims, axis, z) {
                if support[v] == run.label {
                    fg[v] = f32::INFINITY;
                }
            }
        }
        // Episodes per support slice (built lazily, reused by every query slice that is nearest to it).
        let mut episodes: HashMap<(usize, [i64; 4]), SupportEpisode> = HashMap::new();
        let mut score_slice = |z: usize, window: Option<[f64; 4]>, fg: &mut Vec<f32>| -> Result<usize> {
            let s = nearest(&run.supports, z);
            let frame = match window {
                None => slice_frame,
                Some(w) => CanvasFrame::fit(w, pixel_spacing, CANVAS)?,
            };
            let key = (s, window.map_or([0; 4], |w| w.map(|x| (x * 1000.0) as i64)));
            if !episodes.contains_key(&key) {
                let features = match window {
                    None => match feature_cache.get(&s) {
                        Some(f) => f.clone(),
                        None => {
                            let f = encode_canvas(s, &frame)?;
                            feature_cache.insert(s, f.clone());
                            f
                        }
                    },
                    Some(_) => encode_canvas(s, &frame)?,
                };
                let labels = extract_slice(support, dims, axis, s);
                let mask: Vec<u8> = labels.iter().map(|&l| u8::from(l == run.label)).collect();
                let canvas_mask = frame.mask_to_canvas(&mask, rows, cols);
                let ep = SupportEpisode::new(&features, &canvas_mask, CANVAS, CANVAS, &opts.head).map_err(|e| match e {
                    DspnetError::EmptySupport(_) => DspnetError::EmptySupport(format!(
                        " for class {} on slice {s}: the labelled region vanishes at the model's resolution (too small?)",
                        run.label
                    )),
                    other => other,
                })?;
                episodes.insert(key, ep);
            }
            let episode = &episodes[&key];
            let features = match window {
                None => match feature_cache.get(&z) {
                    Some(f) => f.clone(),
                    None => {
                        let f = encode_canvas(z, &frame)?;
                        feature_cache.insert(z, f.clone());
                        f
                    }
                },
                Some(_) => encode_canvas(z, &frame)?,
            };
            let scores = episode.score(&features)?;
            let logits = upsample_logits(&scores, CANVAS, CANVAS)?.to_device(&candle_core::Device::Cpu)?;
            let bg_canvas = logits.get(0)?.flatten_all()?.to_vec1::<f32>()?;
            let fg_canvas = logits.get(1)?.flatten_all()?.to_vec1::<f32>()?;
            let win = [0usize, 0, rows, cols];
            let bg_s = frame.canvas_to_slice(&bg_canvas, win);
            let fg_s = frame.canvas_to_slice(&fg_canvas, win);
            let mut area = 0;
            for ((v, b), f) in slice_indices(dims, axis, z).zip(bg_s).zip(fg_s) {
                // argmax with ties → background
                if f > b {
                    fg[v] = f;
                    area += 1;
                }
            }
            Ok(area)
        };
        let (lo, hi) = (run.supports[0], *run.supports.last().unwrap_or(&run.supports[0]));
        let planned: Vec<usize> = match opts.extent {
            ExtentMode::All | ExtentMode::Range(..) => query_slices.clone(),
            ExtentMode::Auto => query_slices.iter().copied().filter(|&z| z > lo && z < hi).collect(),
        };
        let mut tick = |done: &mut usize, total: usize| -> Result<()> {
            *done += 1;
            if progress(*done, total) { Ok(()) } else { Err(DspnetError::Cancelled) }
        };
        let window_for = |_z: usize| -> Option<[f64; 4]> { None };
        for &z in &planned {
            score_slice(z, window_for(z), &mut fg)?;
            processed += 1;
            tick(&mut done, total)?;
        }
        if opts.extent == ExtentMode::Auto {
            // Outward from the outermost support slices, in both directions.
            let min_area = |s: usize| ((run.support_area[&s] as f64) * opts.extent_min_fraction).max(1.0) as usize;
            let unplanned_total = query_slices.iter().filter(|&&z| z < lo || z > hi).count();
            let mut visited = 0usize;
            for dir in [-1i64, 1] {
                let start = if dir < 0 { lo } else { hi };
                let mut misses = 0;
                let mut z = start as i64 + dir;
                while z >= 0 && (z as usize) < n_slices && misses < opts.extent_patience {
                    let zu = z as usize;
                    if !any_label_slice[zu] {
                        let area = score_slice(zu, window_for(zu), &mut fg)?;
                        processed += 1;
                        visited += 1;
                        tick(&mut done, total)?;
                        misses = if area < min_area(start) { misses + 1 } else { 0 };
                    }
                    z += dir;
                }
            }
            // Slices the extent stopped before are no longer part of the work.
            total -= unplanned_total - visited;
            if !progress(done, total) {
                return Err(DspnetError::Cancelled);
            }
        }
        if opts.components == ComponentsMode::Support {
            let mask: Vec<bool> = fg.iter().map(|&f| f > f32::NEG_INFINITY).collect();
            let seeds = (0..n).filter(|&v| support[v] == run.label);
            let keep = components::keep_connected_to(&mask, seeds, dims);
            for (f, k) in fg.iter_mut().zip(keep) {
                if !k {
                    *f = f32::NEG_INFINITY;
                }
            }
        }
        class_fg.push(fg);
    }

    // Merge: highest foreground score wins; support slices keep the user's labels exactly.
    let mut out = vec![0u16; n];
    for v in 0..n {
        let mut best = f32::NEG_INFINITY;
        for (ci, fg) in class_fg.iter().enumerate() {
            if fg[v] > best {
                best = fg[v];
                out[v] = runs[ci].label;
            }
        }
    }
    for z in (0..n_slices).filter(|&z| any_label_slice[z]) {
        for v in slice_indices(dims, axis, z) {
            out[v] = support[v];
        }
    }
    let mut voxels_per_class = BTreeMap::new();
    for &c in &classes {
        voxels_per_class.insert(c, out.iter().filter(|&&l| l == c).count());
    }
    let summary = SegmentSummary {
        axis,
        modality,
        classes,
        support_slices,
        slices_processed: processed,
        voxels_per_class,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((out, summary))
}

/// The support slice nearest to `z` (ties: the lower index). `supports` is sorted and non-empty.
fn nearest(supports: &[usize], z: usize) -> usize {
    let mut best = supports[0];
    for &s in supports {
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
    fn axis_choice() {
        let dims = [20, 20, 10];
        let mut labels = vec![0u16; 4000];
        // A 6x5 blob on axial slice k = 4.
        for j in 5..10 {
            for i in 3..9 {
                labels[i + 20 * (j + 20 * 4)] = 1;
            }
        }
        assert_eq!(choose_axis(&labels, dims, AxisChoice::Auto).unwrap(), 2);
        assert_eq!(choose_axis(&labels, dims, AxisChoice::Fixed(2)).unwrap(), 2);
        let e = choose_axis(&labels, dims, AxisChoice::Fixed(0)).unwrap_err().to_string();
        assert!(e.contains("painted along k"), "{e}");
        // Add a sagittal painting (i = 15, many k): now ambiguous.
        for k in 0..10 {
            for j in 2..12 {
                labels[15 + 20 * (j + 20 * k)] = 1;
            }
        }
        let e = choose_axis(&labels, dims, AxisChoice::Auto).unwrap_err().to_string();
        assert!(e.contains("cannot tell the slice axis"), "{e}");
    }
}
