//! Whole-volume segmentation from labelled slices: the product's main job.
//!
//! Protocol: the slices (along the slice axis) that contain any non-zero label are support slices, and
//! 0 inside them means background. Each distinct label value is a class, segmented as its own 1-way
//! episode; every query slice uses the nearest support slice of that class (ties: the lower index).
//! Classes are merged by highest foreground score. Support slices keep the user's labels untouched.

pub mod components;
pub mod eval;
pub mod normalize;
pub mod slicing;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use candle_core::Tensor;

use crate::model::prototypes::{upsample_logits, HeadOptions, SupportEpisode};
use crate::model::config::InputNormalization;
use crate::model::Model;
use crate::{DspnetError, Result};
use normalize::{Modality, Normalizer};
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
    /// Slices per backbone call where the slices to encode are known in advance (extent all or a range,
    /// whole-slice field of view); 0 = from the device and the activation memory budget.
    pub batch: usize,
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
            batch: 0,
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
    slice_counts_where(labels, dims, |l| l != 0)
}

/// Number of slices along each axis that hold a label accepted by `counted`.
fn slice_counts_where(labels: &[u16], dims: [usize; 3], counted: impl Fn(u16) -> bool) -> [usize; 3] {
    let mut seen = [vec![false; dims[0]], vec![false; dims[1]], vec![false; dims[2]]];
    for (n, &l) in labels.iter().enumerate() {
        if counted(l) {
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
    axis_from_counts(labelled_slice_counts(labels, dims), dims, choice)
}

/// [`choose_axis`] from the labelled slice counts along each axis.
fn axis_from_counts(counts: [usize; 3], dims: [usize; 3], choice: AxisChoice) -> Result<usize> {
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
                    "cannot tell the slice axis: {}; choose it explicitly (--axis i|j|k on the command line, slice_axis in the C API)",
                    describe()
                )))
            }
        }
    }
}

/// A volume prepared for the model and cut along the slice axis: everything needed to turn slice `z`
/// into model input and model output back into slice pixels. Slices are normalised as they are cut, so
/// no normalised copy of the volume is kept.
pub struct PreparedVolume<'a> {
    image: &'a [f32],
    normalizer: Normalizer,
    pub dims: [usize; 3],
    pub axis: usize,
    pub rows: usize,
    pub cols: usize,
    /// In-plane spacing (row, column) in mm.
    pub pixel_spacing: [f64; 2],
    pub modality: Modality,
}

/// Per-slice model output mapped back onto the slice grid: background and foreground logits.
pub struct SliceLogits {
    pub bg: Vec<f32>,
    pub fg: Vec<f32>,
}

impl SliceLogits {
    /// Pixels where the foreground wins (ties → background, as the argmax of the official code).
    pub fn foreground(&self) -> impl Iterator<Item = bool> + '_ {
        self.fg.iter().zip(&self.bg).map(|(f, b)| f > b)
    }
}

impl<'a> PreparedVolume<'a> {
    pub fn new(model: &Model, image: VolumeRef<'a>, axis: usize, modality: ModalityChoice) -> Result<Self> {
        Self::with_normalization(image, axis, modality, &model.config().input_normalization)
    }

    /// As [`new`](Self::new) for weights not loaded as a [`Model`] (training).
    pub fn with_normalization(image: VolumeRef<'a>, axis: usize, modality: ModalityChoice, norm: &InputNormalization) -> Result<Self> {
        let modality = match modality {
            ModalityChoice::Ct => Modality::Ct,
            ModalityChoice::Mri => Modality::Mri,
            ModalityChoice::Auto => Modality::guess(image.data),
        };
        let normalizer = Normalizer::fit(image.data, norm, modality)?;
        let (rows, cols) = slice_shape(image.dims, axis);
        let (ra, ca) = in_plane_axes(axis);
        Ok(PreparedVolume {
            image: image.data,
            normalizer,
            dims: image.dims,
            axis,
            rows,
            cols,
            pixel_spacing: [image.spacing[ra], image.spacing[ca]],
            modality,
        })
    }

    /// Smallest and largest normalised value of the volume.
    pub fn value_range(&self) -> (f32, f32) {
        // The mapping is monotone: the extremes are the images of the raw extremes.
        (self.normalizer.pad, self.normalizer.map(self.image.iter().copied().fold(f32::NEG_INFINITY, f32::max)))
    }

    pub fn slices(&self) -> usize {
        self.dims[self.axis]
    }

    /// The canvas frame of a window `[r0, c0, h, w]` (slice pixels), or of the whole slice.
    pub fn frame(&self, window: Option<[f64; 4]>) -> Result<CanvasFrame> {
        CanvasFrame::fit(window.unwrap_or([0.0, 0.0, self.rows as f64, self.cols as f64]), self.pixel_spacing, CANVAS)
    }

    /// Model input for slice `z` under `frame`.
    pub fn canvas(&self, z: usize, frame: &CanvasFrame) -> Vec<f32> {
        let img: Vec<f32> = slice_indices(self.dims, self.axis, z).map(|v| self.normalizer.map(self.image[v])).collect();
        frame.image_to_canvas(&img, self.rows, self.cols, self.normalizer.pad)
    }

    /// Features `[C, 32, 32]` of slice `z` under `frame`.
    pub fn encode(&self, model: &Model, z: usize, frame: &CanvasFrame) -> Result<Tensor> {
        Ok(model.encode_slices(&self.canvas(z, frame), 1, CANVAS, CANVAS)?.squeeze(0)?)
    }

    /// Features `[C, 32, 32]` of the whole slices `zs`, encoded in one backbone call.
    pub fn encode_batch(&self, model: &Model, zs: &[usize], frame: &CanvasFrame) -> Result<Vec<Tensor>> {
        let input: Vec<f32> = zs.iter().flat_map(|&z| self.canvas(z, frame)).collect();
        let f = model.encode_slices(&input, zs.len(), CANVAS, CANVAS)?;
        Ok((0..zs.len()).map(|i| f.get(i)).collect::<candle_core::Result<_>>()?)
    }

    /// The episode of class `label` painted on slice `z` of `labels` (a volume on this grid).
    pub fn episode(&self, features: &Tensor, labels: &[u16], z: usize, label: u16, frame: &CanvasFrame, head: &HeadOptions) -> Result<SupportEpisode> {
        let mask: Vec<u8> = extract_slice(labels, self.dims, self.axis, z).iter().map(|&l| u8::from(l == label)).collect();
        let canvas_mask = frame.mask_to_canvas(&mask, self.rows, self.cols);
        SupportEpisode::new(features, &canvas_mask, CANVAS, CANVAS, head).map_err(|e| match e {
            DspnetError::EmptySupport(_) => DspnetError::EmptySupport(format!(
                " for class {label} on slice {z}: the labelled region vanishes at the model's input resolution"
            )),
            other => other,
        })
    }

    /// Score query features and map the logits (bilinear ×8 on the canvas, then bilinear onto the slice
    /// pixels) back onto the slice grid, before any argmax.
    pub fn score(&self, episode: &SupportEpisode, features: &Tensor, frame: &CanvasFrame) -> Result<SliceLogits> {
        let scores = episode.score(features)?;
        let logits = upsample_logits(&scores, CANVAS, CANVAS)?.to_device(&candle_core::Device::Cpu)?;
        let window = [0, 0, self.rows, self.cols];
        let bg = frame.canvas_to_slice(&logits.get(0)?.flatten_all()?.to_vec1::<f32>()?, window);
        let fg = frame.canvas_to_slice(&logits.get(1)?.flatten_all()?.to_vec1::<f32>()?, window);
        Ok(SliceLogits { bg, fg })
    }

    /// Square window (in slice pixels) around a structure's bounding box `[r0, c0, r1, c1]` (inclusive),
    /// enlarged so the structure spans about a third of the window side, at least `MIN_FOV_MM`, and
    /// shifted to stay inside the slice. `None` when the window would cover the whole slice anyway.
    pub fn fov_window(&self, bbox: [usize; 4], grow: f64) -> Option<[f64; 4]> {
        let [sr, sc] = self.pixel_spacing;
        let h_mm = (bbox[2] - bbox[0] + 1) as f64 * sr;
        let w_mm = (bbox[3] - bbox[1] + 1) as f64 * sc;
        let side_mm = (FOV_CONTEXT * h_mm.max(w_mm) * grow).max(MIN_FOV_MM);
        let (h, w) = (side_mm / sr, side_mm / sc);
        if h >= self.rows as f64 && w >= self.cols as f64 {
            return None;
        }
        let place = |centre: f64, size: f64, len: usize| -> (f64, f64) {
            if size >= len as f64 {
                (0.0, len as f64)
            } else {
                ((centre - size / 2.0).clamp(0.0, len as f64 - size), size)
            }
        };
        let (r0, hh) = place((bbox[0] + bbox[2] + 1) as f64 / 2.0, h, self.rows);
        let (c0, ww) = place((bbox[1] + bbox[3] + 1) as f64 / 2.0, w, self.cols);
        Some([r0, c0, hh, ww])
    }
}

/// Auto field of view: the window side is this many times the structure's larger side...
const FOV_CONTEXT: f64 = 3.0;
/// ...and at least this many millimetres.
const MIN_FOV_MM: f64 = 48.0;

/// Bounding box `[r0, c0, r1, c1]` (inclusive) of the true pixels of a rows x cols slice.
fn bounding_box(mask: impl Iterator<Item = bool>, cols: usize) -> Option<[usize; 4]> {
    let mut b: Option<[usize; 4]> = None;
    for (p, on) in mask.enumerate() {
        if on {
            let (r, c) = (p / cols, p % cols);
            b = Some(match b {
                None => [r, c, r, c],
                Some([r0, c0, r1, c1]) => [r0.min(r), c0.min(c), r1.max(r), c1.max(c)],
            });
        }
    }
    b
}

/// Does a window (not the whole slice) have foreground on its border, i.e. the structure may go on
/// outside it?
fn touches_border(window: [f64; 4], bbox: [usize; 4], rows: usize, cols: usize) -> bool {
    let [r0, c0, h, w] = window;
    let (r1, c1) = (r0 + h - 1.0, c0 + w - 1.0);
    (bbox[0] as f64 <= r0.ceil() && r0 > 0.0)
        || (bbox[1] as f64 <= c0.ceil() && c0 > 0.0)
        || (bbox[2] as f64 >= r1.floor() && r1 < rows as f64 - 1.0)
        || (bbox[3] as f64 >= c1.floor() && c1 < cols as f64 - 1.0)
}

/// Segment a volume from its labelled slices. `support` has the image's dims; returns the label volume
/// (same dims) and a summary. The output is computed in scratch memory: on error or cancel nothing of
/// the caller's is touched.
pub fn segment(model: &Model, image: VolumeRef<'_>, support: &[u16], opts: &SegmentOptions, progress: Progress<'_>) -> Result<(Vec<u16>, SegmentSummary)> {
    segment_cached(model, image, support, opts, progress, &mut FeatureCache { transient: true, ..FeatureCache::default() })
}

/// Backbone activation memory of one 256x256 slice: peak RSS grows by 9-11 MB per slice of a batch for
/// ResNet-50 with layer3 or layer4 features (`dspnet bench --batch 1|8`), rounded up.
const SLICE_ACTIVATION_BYTES: usize = 12 << 20;
/// What the activations of one batch may take.
const BATCH_BUDGET_BYTES: usize = 96 << 20;
const MAX_BATCH: usize = 8;

/// Slices per backbone call for known query slices.
fn batch_size(model: &Model, opts: &SegmentOptions) -> usize {
    match opts.batch {
        // On the CPU a batch costs as much per slice as single slices, or more (ResNet-50 layer3, 2 cores:
        // 150 ms/slice at batch 1, 158 at 4, 188 at 8), and holds more memory.
        0 if model.device().is_cpu() => 1,
        0 => (BATCH_BUDGET_BYTES / SLICE_ACTIVATION_BYTES).clamp(1, MAX_BATCH),
        b => b,
    }
}

/// Whole-slice features of one image, kept between [`segment_cached`] runs on that same image (e.g. an
/// evaluation that segments one class at a time from different support slices). Entries are tied to the
/// model, image buffer and axis they were computed for; any other run clears them.
#[derive(Default)]
pub struct FeatureCache {
    key: Option<(usize, usize, usize, usize, ModalityChoice)>,
    features: HashMap<usize, Tensor>,
    /// Not reused after this run: query slices are kept only while a later class may still score them
    /// (1 MB per slice adds up to a second volume).
    transient: bool,
}

impl FeatureCache {
    fn bind(&mut self, model: &Model, image: &VolumeRef<'_>, axis: usize, modality: ModalityChoice) {
        let key = (model as *const Model as usize, image.data.as_ptr() as usize, image.data.len(), axis, modality);
        if self.key != Some(key) {
            self.features.clear();
            self.key = Some(key);
        }
    }
}

/// Whole-slice features during one class's pass: the cache, plus query slices encoded ahead in a batch.
struct SliceFeatures<'c> {
    cache: &'c mut FeatureCache,
    ahead: HashMap<usize, Tensor>,
    /// Store scored query slices in the cache.
    keep_queries: bool,
}

impl SliceFeatures<'_> {
    fn has(&self, z: usize) -> bool {
        self.cache.features.contains_key(&z) || self.ahead.contains_key(&z)
    }

    /// Features of slice `z`; support slices stay cached (few, and shared by the classes).
    fn get(&mut self, z: usize, is_query: bool, encode: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        if let Some(t) = self.cache.features.get(&z) {
            return Ok(t.clone());
        }
        let t = match self.ahead.remove(&z) {
            Some(t) => t,
            None => encode()?,
        };
        if !is_query || self.keep_queries {
            self.cache.features.insert(z, t.clone());
        }
        Ok(t)
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
    if dims.iter().any(|&d| d == 0) {
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
    // The axis is judged from the classes being segmented only.
    let axis = axis_from_counts(slice_counts_where(support, dims, |l| l != 0 && classes.contains(&l)), dims, opts.axis)?;
    let vol = PreparedVolume::new(model, image, axis, opts.modality)?;
    let n_slices = vol.slices();
    let (rows, cols) = (vol.rows, vol.cols);

    // Support slices (any label) are preserved in the output and never scored.
    let any_label_slice: Vec<bool> = (0..n_slices).map(|z| slice_indices(dims, axis, z).any(|v| support[v] != 0)).collect();
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
    let mut total = query_slices.len() * classes.len();
    let mut done = 0usize;
    if !progress(done, total) {
        return Err(DspnetError::Cancelled);
    }

    let whole = vol.frame(None)?;
    // Whole-slice features are shared by all classes.
    cache.bind(model, &image, axis, opts.modality);
    let batch = batch_size(model, opts);
    // The per-class score volumes are the big allocations: refuse cleanly rather than abort the host.
    let mut class_fg: Vec<Vec<f32>> = Vec::new();
    class_fg.try_reserve_exact(classes.len()).map_err(|_| oom(n, classes.len()))?;
    let mut processed = 0usize;
    for (ci, &label) in classes.iter().enumerate() {
        let supports = &support_slices[&label];
        let keep_queries = !cache.transient || ci + 1 < classes.len();
        let mut feats = SliceFeatures { cache: &mut *cache, ahead: HashMap::new(), keep_queries };
        // Per voxel: the class's foreground logit where it wins, -inf elsewhere; support voxels +inf.
        let mut fg: Vec<f32> = Vec::new();
        fg.try_reserve_exact(n).map_err(|_| oom(n, classes.len()))?;
        fg.resize(n, f32::NEG_INFINITY);
        for &z in supports {
            for v in slice_indices(dims, axis, z) {
                if support[v] == label {
                    fg[v] = f32::INFINITY;
                }
            }
        }
        let support_bbox = |s: usize| bounding_box(extract_slice(support, dims, axis, s).iter().map(|&l| l == label), cols);
        let support_area = |s: usize| slice_indices(dims, axis, s).filter(|&v| support[v] == label).count();
        // Episodes keyed by (support slice, window growth step); built once, reused by many queries.
        let mut episodes: HashMap<(usize, u32), (SupportEpisode, Option<[f64; 4]>)> = HashMap::new();
        // Score slice z; `follow` is the prediction bbox of the neighbour towards the support (auto fov).
        let mut score_slice = |z: usize, follow: Option<[usize; 4]>, fg: &mut Vec<f32>, feats: &mut SliceFeatures|  -> Result<(usize, Option<[usize; 4]>)> {
            let s = nearest(supports, z);
            let mut growth = 0u32;
            loop {
                let grow = 1.5f64.powi(growth as i32);
                if !episodes.contains_key(&(s, growth)) {
                    let window = match opts.fov {
                        FovMode::Slice => None,
                        FovMode::Auto => support_bbox(s).and_then(|b| vol.fov_window(b, grow)),
                    };
                    let frame = vol.frame(window)?;
                    let features = match window {
                        None => feats.get(s, false, || vol.encode(model, s, &whole))?,
                        Some(_) => vol.encode(model, s, &frame)?,
                    };
                    episodes.insert((s, growth), (vol.episode(&features, support, s, label, &frame, &opts.head)?, window));
                }
                let (episode, support_window) = &episodes[&(s, growth)];
                // Same window size as the support's (same scale), centred on the followed structure.
                let window = match (support_window, follow) {
                    (None, _) => None,
                    (Some(w), None) => Some(*w),
                    (Some(w), Some(b)) => {
                        let centre = [(b[0] + b[2] + 1) as f64 / 2.0, (b[1] + b[3] + 1) as f64 / 2.0];
                        Some([
                            (centre[0] - w[2] / 2.0).clamp(0.0, (rows as f64 - w[2]).max(0.0)),
                            (centre[1] - w[3] / 2.0).clamp(0.0, (cols as f64 - w[3]).max(0.0)),
                            w[2],
                            w[3],
                        ])
                    }
                };
                let frame = vol.frame(window)?;
                let features = match window {
                    None => feats.get(z, true, || vol.encode(model, z, &whole))?,
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
                let mut area = 0;
                for ((v, f), b) in slice_indices(dims, axis, z).zip(&logits.fg).zip(&logits.bg) {
                    if f > b {
                        fg[v] = *f;
                        area += 1;
                    }
                }
                return Ok((area, bbox));
            }
        };
        let mut tick = |done: &mut usize, total: usize| -> Result<()> {
            *done += 1;
            if progress(*done, total) { Ok(()) } else { Err(DspnetError::Cancelled) }
        };
        let (lo, hi) = (supports[0], supports[supports.len() - 1]);
        match opts.extent {
            ExtentMode::All | ExtentMode::Range(..) => {
                // Outward from the nearest support so that the field of view can follow the structure.
                let mut order: Vec<usize> = query_slices.clone();
                order.sort_by_key(|&z| (z.abs_diff(nearest(supports, z)), z));
                let mut last_bbox: HashMap<usize, [usize; 4]> = HashMap::new();
                for (i, &z) in order.iter().enumerate() {
                    // The next slices to encode are known: encode them together.
                    if batch > 1 && opts.fov == FovMode::Slice && !feats.has(z) {
                        let next: Vec<usize> = order[i..].iter().copied().filter(|&q| !feats.has(q)).take(batch).collect();
                        for (q, f) in next.iter().zip(vol.encode_batch(model, &next, &whole)?) {
                            feats.ahead.insert(*q, f);
                        }
                    }
                    let towards = if z < nearest(supports, z) { z + 1 } else { z.wrapping_sub(1) };
                    let follow = last_bbox.get(&towards).copied().or_else(|| support_bbox(nearest(supports, z)));
                    let (_, bbox) = score_slice(z, follow, &mut fg, &mut feats)?;
                    if let Some(b) = bbox {
                        last_bbox.insert(z, b);
                    }
                    processed += 1;
                    tick(&mut done, total)?;
                }
            }
            ExtentMode::Auto => {
                // Every slice between the outermost supports, then outward until the structure has been
                // missing (or tiny) for `extent_patience` slices in a row.
                let mut follow = support_bbox(lo);
                for z in (lo + 1..hi).filter(|&z| !any_label_slice[z]) {
                    let (_, bbox) = score_slice(z, follow.or_else(|| support_bbox(nearest(supports, z))), &mut fg, &mut feats)?;
                    follow = bbox.or(follow);
                    processed += 1;
                    tick(&mut done, total)?;
                }
                let outside = query_slices.iter().filter(|&&z| z < lo || z > hi).count();
                let mut visited = 0usize;
                for (start, dir) in [(lo, -1i64), (hi, 1)] {
                    let min_area = ((support_area(start) as f64 * opts.extent_min_fraction).ceil() as usize).max(1);
                    let mut follow = support_bbox(start);
                    let mut misses = 0;
                    let mut z = start as i64 + dir;
                    while z >= 0 && (z as usize) < n_slices && misses < opts.extent_patience {
                        let zu = z as usize;
                        if !any_label_slice[zu] {
                            let (area, bbox) = score_slice(zu, follow, &mut fg, &mut feats)?;
                            follow = bbox.or(follow);
                            processed += 1;
                            visited += 1;
                            tick(&mut done, total)?;
                            misses = if area < min_area { misses + 1 } else { 0 };
                        }
                        z += dir;
                    }
                }
                // The slices the extent stopped before are no longer part of the work.
                total -= outside - visited;
                if !progress(done, total) {
                    return Err(DspnetError::Cancelled);
                }
            }
        }
        if opts.components == ComponentsMode::Support {
            let mask: Vec<bool> = fg.iter().map(|&f| f > f32::NEG_INFINITY).collect();
            let seeds = (0..n).filter(|&v| support[v] == label);
            let keep = components::keep_connected_to(&mask, seeds, dims);
            for (f, k) in fg.iter_mut().zip(keep) {
                if !k {
                    *f = f32::NEG_INFINITY;
                }
            }
        }
        class_fg.push(fg);
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
    let summary = SegmentSummary {
        axis,
        modality: vol.modality,
        classes,
        support_slices,
        slices_processed: processed,
        voxels_per_class,
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
        voxels * 4 >> 20
    ))
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
    fn fov_window_is_square_in_mm_and_inside_the_slice() {
        let vol = PreparedVolume {
            image: &[],
            normalizer: Normalizer::fit(&[0.0], &crate::model::config::InputNormalization::Official, Modality::Mri).unwrap(),
            dims: [200, 100, 1],
            axis: 2,
            rows: 100,
            cols: 200,
            pixel_spacing: [2.0, 1.0],
            modality: Modality::Mri,
        };
        // A 10x10 pixel structure (20 mm x 10 mm) at rows 5..=14, cols 190..=199.
        let w = vol.fov_window([5, 190, 14, 199], 1.0).unwrap();
        // Side: max(3 x 20 mm, 48 mm) = 60 mm = 30 rows of 2 mm, 60 columns of 1 mm; shifted inside.
        assert_eq!(w, [0.0, 140.0, 30.0, 60.0]);
        assert!(touches_border(w, [0, 150, 29, 199], 100, 200));
        assert!(!touches_border(w, [5, 150, 20, 199], 100, 200), "the slice edge is not a window border");
        // A structure as large as the slice needs no window.
        assert_eq!(vol.fov_window([0, 0, 99, 199], 1.0), None);
    }

    #[test]
    fn merge_picks_highest_score() {
        let ninf = f32::NEG_INFINITY;
        let fg = vec![vec![1.0, ninf, 5.0, ninf, 2.0], vec![3.0, ninf, 4.0, 0.5, 2.0]];
        assert_eq!(merge_classes(&[7, 9], &fg), vec![9, 0, 7, 9, 7]);
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
