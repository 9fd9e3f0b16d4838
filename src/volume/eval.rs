//! Evaluation protocols: what a user gets from one painted slice, and the paper's chunk protocol.

use std::time::Instant;

use super::components::keep_connected_to;
use super::slicing::{slice_indices, slice_shape, CanvasFrame};
use super::{AxisChoice, ComponentsMode, ExtentMode, ModalityChoice, PreparedVolume, SegmentOptions, VolumeRef};
use crate::model::Model;
use crate::{DspnetError, Result};

/// How each class is segmented from its support slice(s).
#[derive(Clone, Copy)]
pub enum Method<'m> {
    Dspnet(&'m Model),
    /// A rule that needs no model: what a learned model has to clearly beat.
    Naive(Baseline),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// The support slice's mask, repeated on every processed slice.
    Copy,
    /// The voxels of the processed slices within the support region's intensity range (its
    /// [`THRESHOLD_PERCENTILES`]), then the 3D components (6-connected, as `--components`) touching the support.
    Threshold,
}

/// Percentiles of the support voxels' intensities that bound the `Threshold` range: robust to the few
/// partial-volume and mislabelled voxels at a structure's edge, which min..max would let in.
pub const THRESHOLD_PERCENTILES: (f64, f64) = (0.02, 0.98);

impl Method<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Dspnet(_) => "dspnet",
            Method::Naive(Baseline::Copy) => "copy",
            Method::Naive(Baseline::Threshold) => "threshold",
        }
    }
}

/// A baseline fitted on one support slice: the class's mask there and, for `Threshold`, the intensity range.
struct NaiveRule {
    mask: Vec<bool>,
    range: Option<(f32, f32)>,
}

impl NaiveRule {
    fn fit(
        baseline: Baseline,
        image: VolumeRef<'_>,
        labels: &[u16],
        axis: usize,
        z: usize,
        label: u16,
    ) -> Result<Self> {
        let mask: Vec<bool> = slice_indices(image.dims, axis, z).map(|v| labels[v] == label).collect();
        let range = match baseline {
            Baseline::Copy => None,
            Baseline::Threshold => {
                let mut values: Vec<f32> = slice_indices(image.dims, axis, z)
                    .filter(|&v| labels[v] == label)
                    .map(|v| image.data[v])
                    .filter(|x| x.is_finite())
                    .collect();
                if values.is_empty() {
                    return Err(DspnetError::empty_support(Some(label), Some(z), "no finite intensity under its mask"));
                }
                values.sort_by(f32::total_cmp);
                let at = |p: f64| values[(p * (values.len() - 1) as f64).round() as usize];
                Some((at(THRESHOLD_PERCENTILES.0), at(THRESHOLD_PERCENTILES.1)))
            }
        };
        Ok(NaiveRule { mask, range })
    }

    /// Foreground of slice `z` of `image`, which has the support slice's in-plane grid.
    fn predict(&self, image: VolumeRef<'_>, axis: usize, z: usize) -> Vec<bool> {
        match self.range {
            None => self.mask.clone(),
            Some((lo, hi)) => slice_indices(image.dims, axis, z).map(|v| (lo..=hi).contains(&image.data[v])).collect(),
        }
    }
}

/// 3D Dice of two binary masks, given as an iterator of (prediction, truth) pairs. Both empty → 1.
pub fn dice(pairs: impl Iterator<Item = (bool, bool)>) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
    for (p, t) in pairs {
        match (p, t) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            _ => {}
        }
    }
    if tp + fp + fn_ == 0 {
        1.0
    } else {
        2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
    }
}

/// Spearman's rank correlation of the pairs (ties get their mean rank); None below 3 pairs or when
/// either side is constant.
pub fn spearman(pairs: &[(f64, f64)]) -> Option<f64> {
    if pairs.len() < 3 {
        return None;
    }
    let ranks = |values: Vec<f64>| {
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
        let mut r = vec![0f64; values.len()];
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
                j += 1;
            }
            for &k in &order[i..=j] {
                r[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    };
    let a = ranks(pairs.iter().map(|p| p.0).collect());
    let b = ranks(pairs.iter().map(|p| p.1).collect());
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(&b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let (va, vb): (f64, f64) = (a.iter().map(|x| (x - ma).powi(2)).sum(), b.iter().map(|y| (y - mb).powi(2)).sum());
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// Result for one class.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassScore {
    pub label: u16,
    /// Dice over the whole volume.
    pub dice: f64,
    /// Dice over the slices inside the class's ground-truth extent (what the paper scores).
    pub dice_in_extent: f64,
    /// Support slice indices used.
    pub support_slices: Vec<usize>,
    /// Ground-truth extent along the slice axis (first, last).
    pub extent: (usize, usize),
    pub slices_processed: usize,
    /// First and last slice along the axis where the prediction has this class (None: nowhere).
    pub predicted_extent: Option<(usize, usize)>,
    pub seconds: f64,
    /// The model under one-slice: (slice, confidence, 2D Dice) of every scored slice where the prediction
    /// or the truth is non-empty (both empty: nothing to rank).
    pub slice_scores: Vec<(usize, f32, f64)>,
}

impl ClassScore {
    /// How many slices each predicted end lies from the true end (first, last); None without prediction.
    pub fn extent_error(&self) -> Option<(usize, usize)> {
        self.predicted_extent.map(|(a, b)| (a.abs_diff(self.extent.0), b.abs_diff(self.extent.1)))
    }
}

/// First and last slice along `axis` containing `label`.
pub fn class_extent(labels: &[u16], dims: [usize; 3], axis: usize, label: u16) -> Option<(usize, usize)> {
    let zs: Vec<usize> =
        (0..dims[axis]).filter(|&z| slice_indices(dims, axis, z).any(|v| labels[v] == label)).collect();
    Some((*zs.first()?, *zs.last()?))
}

fn fixed_axis(axis: AxisChoice) -> Result<usize> {
    match axis {
        // Ground truth covers whole structures, so it cannot tell the painting axis; the acquisition axis
        // (k) is what volumes are labelled along.
        AxisChoice::Auto => Ok(2),
        AxisChoice::Fixed(a) if a < 3 => Ok(a),
        AxisChoice::Fixed(a) => Err(DspnetError::InvalidArgument(format!("slice axis {a} is not 0, 1 or 2"))),
    }
}

fn classes_of(gt: &[u16], wanted: &Option<Vec<u16>>) -> Result<Vec<u16>> {
    let present: std::collections::BTreeSet<u16> = gt.iter().copied().filter(|&l| l != 0).collect();
    let classes: Vec<u16> = match wanted {
        None => present.iter().copied().collect(),
        Some(w) => w.clone(),
    };
    if let Some(c) = classes.iter().find(|c| !present.contains(c)) {
        return Err(DspnetError::InvalidArgument(format!(
            "class {c} does not occur in the ground truth (present: {present:?})"
        )));
    }
    if classes.is_empty() {
        return Err(DspnetError::empty_support(None, None, "the ground truth has no labelled voxel"));
    }
    Ok(classes)
}

/// `one-slice`: for each class, the middle slice of its extent is the only support; the whole volume is
/// segmented with `method` and `opts` (as a user would) and scored. Also returns the predictions, classes
/// overlaid.
pub fn evaluate_one_slice(
    method: Method<'_>,
    image: VolumeRef<'_>,
    gt: &[u16],
    opts: &SegmentOptions,
) -> Result<(Vec<ClassScore>, Vec<u16>)> {
    evaluate_one_slice_cached(method, image, gt, opts, &mut super::FeatureCache::default())
}

/// [`evaluate_one_slice`] reusing (and filling) `cache`: whole-slice features do not depend on the
/// class or the propagation, so methods compared on one image encode each slice once.
pub fn evaluate_one_slice_cached(
    method: Method<'_>,
    image: VolumeRef<'_>,
    gt: &[u16],
    opts: &SegmentOptions,
    cache: &mut super::FeatureCache,
) -> Result<(Vec<ClassScore>, Vec<u16>)> {
    let dims = image.dims;
    let n = super::voxel_count(dims)?;
    if image.data.len() != n || gt.len() != n {
        return Err(DspnetError::Shape(format!("image and labels do not match dims {dims:?}")));
    }
    let axis = fixed_axis(opts.axis)?;
    let mut out = Vec::new();
    let mut overlay = vec![0u16; gt.len()];
    for label in classes_of(gt, &opts.classes)? {
        let t0 = Instant::now();
        let (lo, hi) = class_extent(gt, dims, axis, label).expect("class present");
        // The middle slice, or the labelled slice nearest to it for a structure with gaps.
        let mid = (lo + hi) / 2;
        let z = (lo..=hi)
            .filter(|&z| slice_indices(dims, axis, z).any(|v| gt[v] == label))
            .min_by_key(|&z| (z.abs_diff(mid), z))
            .unwrap_or(mid);
        let mut slice_confidence = Vec::new();
        let (pred, slices_processed) = match method {
            Method::Dspnet(model) => {
                let mut support = vec![0u16; gt.len()];
                for v in slice_indices(dims, axis, z) {
                    if gt[v] == label {
                        support[v] = label;
                    }
                }
                let o = SegmentOptions { axis: AxisChoice::Fixed(axis), classes: Some(vec![label]), ..opts.clone() };
                let (pred, summary) = super::segment_cached(model, image, &support, &o, &mut |_, _| true, cache)?;
                slice_confidence = summary.slice_confidence;
                (pred.iter().map(|&p| p == label).collect::<Vec<bool>>(), summary.slices_processed)
            }
            Method::Naive(b) => naive_one_slice(b, image, gt, axis, z, label, opts)?,
        };
        let whole = dice(pred.iter().zip(gt).map(|(&p, &t)| (p, t == label)));
        for (o, &p) in overlay.iter_mut().zip(&pred) {
            if p {
                *o = label;
            }
        }
        let inside = dice((lo..=hi).flat_map(|z| slice_indices(dims, axis, z)).map(|v| (pred[v], gt[v] == label)));
        let predicted: Vec<usize> =
            (0..dims[axis]).filter(|&q| slice_indices(dims, axis, q).any(|v| pred[v])).collect();
        let slice_scores = slice_confidence
            .iter()
            .enumerate()
            .filter_map(|(q, c)| c.map(|c| (q, c)))
            .filter(|&(q, _)| slice_indices(dims, axis, q).any(|v| pred[v] || gt[v] == label))
            .map(|(q, c)| (q, c, dice(slice_indices(dims, axis, q).map(|v| (pred[v], gt[v] == label)))))
            .collect();
        out.push(ClassScore {
            label,
            dice: whole,
            dice_in_extent: inside,
            support_slices: vec![z],
            extent: (lo, hi),
            slices_processed,
            predicted_extent: predicted.first().map(|&a| (a, *predicted.last().unwrap())),
            seconds: t0.elapsed().as_secs_f64(),
            slice_scores,
        });
    }
    Ok((out, overlay))
}

/// A baseline under `one-slice`: the support slice keeps its mask, the processed slices get the rule's
/// prediction, and `opts.components` applies as for the model. The processed slices follow
/// `opts.extent`, except that `Auto` (which follows a model's predictions) means every slice. Returns
/// the foreground and the number of processed slices.
fn naive_one_slice(
    b: Baseline,
    image: VolumeRef<'_>,
    gt: &[u16],
    axis: usize,
    z: usize,
    label: u16,
    opts: &SegmentOptions,
) -> Result<(Vec<bool>, usize)> {
    let dims = image.dims;
    let n_slices = dims[axis];
    let slices = match opts.extent {
        ExtentMode::Auto | ExtentMode::All => 0..=n_slices - 1,
        ExtentMode::Range(a, b) if a <= b && b < n_slices => a..=b,
        ExtentMode::Range(a, b) => {
            return Err(DspnetError::InvalidArgument(format!("extent {a}:{b} is outside slices 0..={}", n_slices - 1)))
        }
    };
    let rule = NaiveRule::fit(b, image, gt, axis, z, label)?;
    let mut pred = vec![false; gt.len()];
    for (v, &m) in slice_indices(dims, axis, z).zip(&rule.mask) {
        pred[v] = m;
    }
    let mut processed = 0;
    for q in slices.filter(|&q| q != z) {
        for (v, p) in slice_indices(dims, axis, q).zip(rule.predict(image, axis, q)) {
            pred[v] = p;
        }
        processed += 1;
    }
    if opts.components == ComponentsMode::Support {
        pred = keep_connected_to(&pred, slice_indices(dims, axis, z).filter(|&v| gt[v] == label), dims);
    }
    Ok((pred, processed))
}

/// `alpnet` (docs/model.md, 'Evaluation protocol'): the query's class extent is cut into 3 chunks; chunk k is segmented with the
/// support volume's slice at fraction (1/6, 1/2, 5/6) of that class's labelled slices; only slices
/// inside the query's extent are scored. `support` may be the query itself; the baselines need it on the
/// query's in-plane grid.
pub fn evaluate_alpnet(
    method: Method<'_>,
    support: (VolumeRef<'_>, &[u16]),
    query: (VolumeRef<'_>, &[u16]),
    opts: &SegmentOptions,
) -> Result<Vec<ClassScore>> {
    let axis = fixed_axis(opts.axis)?;
    let (s_img, s_gt) = support;
    let (q_img, q_gt) = query;
    for (what, img, gt) in [("support", &s_img, s_gt), ("query", &q_img, q_gt)] {
        let n = super::voxel_count(img.dims)?;
        if img.data.len() != n || gt.len() != n {
            return Err(DspnetError::Shape(format!("{what} image and labels do not match dims {:?}", img.dims)));
        }
    }
    let segmenter = match method {
        Method::Dspnet(model) => AlpnetSegmenter::Model(Box::new(AlpnetModel::new(model, s_img, q_img, axis, opts)?)),
        Method::Naive(b) => {
            let (s_shape, q_shape) = (slice_shape(s_img.dims, axis), slice_shape(q_img.dims, axis));
            if s_shape != q_shape {
                return Err(DspnetError::Shape(format!(
                    "the {} baseline copies support pixels onto query pixels, so both need the same in-plane grid along axis {}: support slices are {}x{}, query slices {}x{}",
                    method.name(),
                    ["i", "j", "k"][axis],
                    s_shape.0,
                    s_shape.1,
                    q_shape.0,
                    q_shape.1
                )));
            }
            AlpnetSegmenter::Naive(b)
        }
    };
    let mut out = Vec::new();
    for label in classes_of(q_gt, &opts.classes)? {
        let t0 = Instant::now();
        let support_list: Vec<usize> =
            (0..s_img.dims[axis]).filter(|&z| slice_indices(s_img.dims, axis, z).any(|v| s_gt[v] == label)).collect();
        if support_list.is_empty() {
            return Err(DspnetError::empty_support(Some(label), None, "it is absent from the support volume"));
        }
        let (lo, hi) = class_extent(q_gt, q_img.dims, axis, label).expect("class present");
        let l = support_list.len();
        let chunk_support: Vec<usize> =
            [1.0 / 6.0, 0.5, 5.0 / 6.0].iter().map(|p| support_list[((p * l as f64) as usize).min(l - 1)]).collect();
        let fg = match &segmenter {
            AlpnetSegmenter::Model(m) => m.predict(s_gt, label, &chunk_support, (lo, hi), opts)?,
            AlpnetSegmenter::Naive(b) => {
                naive_alpnet(*b, support, q_img, axis, label, &chunk_support, (lo, hi), opts.components)?
            }
        };
        let truth = (lo..=hi).flat_map(|z| slice_indices(q_img.dims, axis, z)).map(|v| q_gt[v] == label);
        let d = dice(fg.into_iter().zip(truth));
        out.push(ClassScore {
            label,
            dice: d,
            dice_in_extent: d,
            support_slices: chunk_support,
            extent: (lo, hi),
            slices_processed: hi - lo + 1,
            predicted_extent: None,
            seconds: t0.elapsed().as_secs_f64(),
            slice_scores: Vec::new(),
        });
    }
    Ok(out)
}

/// The chunk (0, 1, 2) of slice `z` in the extent `lo..=hi`.
fn chunk_of(z: usize, lo: usize, hi: usize) -> usize {
    let width = (hi - lo) as f64 / 3.0;
    if width > 0.0 {
        (((z - lo) as f64 / width).floor() as usize).min(2)
    } else {
        0
    }
}

enum AlpnetSegmenter<'m> {
    // Boxed: the prepared volumes make it far larger than a baseline.
    Model(Box<AlpnetModel<'m>>),
    Naive(Baseline),
}

/// The support and query volumes prepared for the model, with their whole-slice frames.
struct AlpnetModel<'m> {
    model: &'m Model,
    s_vol: PreparedVolume<'m>,
    /// None when the query is the support volume itself.
    q_vol: Option<PreparedVolume<'m>>,
    frame: CanvasFrame,
    q_frame: CanvasFrame,
    /// Query features do not depend on the class: each slice is encoded once for all classes.
    q_features: std::cell::RefCell<std::collections::HashMap<usize, candle_core::Tensor>>,
}

impl<'m> AlpnetModel<'m> {
    fn new(
        model: &'m Model,
        s_img: VolumeRef<'m>,
        q_img: VolumeRef<'m>,
        axis: usize,
        opts: &SegmentOptions,
    ) -> Result<Self> {
        let s_vol = PreparedVolume::new(model, s_img, axis, opts.modality)?;
        let q_vol = if std::ptr::eq(s_img.data, q_img.data) {
            None
        } else {
            Some(PreparedVolume::new(
                model,
                q_img,
                axis,
                if opts.modality == ModalityChoice::Auto { ModalityChoice::Auto } else { opts.modality },
            )?)
        };
        let frame = s_vol.frame(None)?;
        let q_frame = q_vol.as_ref().unwrap_or(&s_vol).frame(None)?;
        Ok(AlpnetModel { model, s_vol, q_vol, frame, q_frame, q_features: Default::default() })
    }

    /// Foreground of the query slices `lo..=hi`, slice after slice.
    fn predict(
        &self,
        s_gt: &[u16],
        label: u16,
        chunk_support: &[usize],
        (lo, hi): (usize, usize),
        opts: &SegmentOptions,
    ) -> Result<Vec<bool>> {
        let q_ref = self.q_vol.as_ref().unwrap_or(&self.s_vol);
        let mut episodes = Vec::new();
        for &z in chunk_support {
            let f = self.s_vol.encode(self.model, z, &self.frame)?;
            episodes.push(self.s_vol.episode(&f, s_gt, z, label, &self.frame, &opts.head)?);
        }
        let mut fg = Vec::new();
        for z in lo..=hi {
            let cached = self.q_features.borrow().get(&z).cloned();
            let f = match cached {
                Some(f) => f,
                None => {
                    let f = q_ref.encode(self.model, z, &self.q_frame)?;
                    self.q_features.borrow_mut().insert(z, f.clone());
                    f
                }
            };
            let logits = q_ref.score(&episodes[chunk_of(z, lo, hi)], &f, &self.q_frame)?;
            fg.extend(logits.foreground());
        }
        Ok(fg)
    }
}

/// A baseline under `alpnet`: each chunk's query slices get the rule fitted on that chunk's support
/// slice. With `ComponentsMode::Support`, a chunk keeps the 3D components (6-connected, within the chunk)
/// that overlap the support mask's in-plane footprint on any of its slices: the support slice may lie in
/// another volume, so its voxels cannot seed the query directly. Returns the foreground of the query
/// slices `lo..=hi`, slice after slice.
#[allow(clippy::too_many_arguments)]
fn naive_alpnet(
    b: Baseline,
    (s_img, s_gt): (VolumeRef<'_>, &[u16]),
    q_img: VolumeRef<'_>,
    axis: usize,
    label: u16,
    chunk_support: &[usize],
    (lo, hi): (usize, usize),
    components: ComponentsMode,
) -> Result<Vec<bool>> {
    let (rows, cols) = slice_shape(q_img.dims, axis);
    let plane = rows * cols;
    let mut fg = Vec::with_capacity((hi - lo + 1) * plane);
    for (k, &s) in chunk_support.iter().enumerate() {
        let rule = NaiveRule::fit(b, s_img, s_gt, axis, s, label)?;
        // Chunks are consecutive runs of slices, so appending them keeps slice order.
        let zs: Vec<usize> = (lo..=hi).filter(|&z| chunk_of(z, lo, hi) == k).collect();
        let mut chunk: Vec<bool> = zs.iter().flat_map(|&z| rule.predict(q_img, axis, z)).collect();
        if components == ComponentsMode::Support {
            let footprint: Vec<usize> = rule.mask.iter().enumerate().filter(|(_, &m)| m).map(|(p, _)| p).collect();
            let seeds = (0..zs.len()).flat_map(|i| footprint.iter().map(move |p| i * plane + p));
            // Slice pixels are row-major, so the chunk is a [cols, rows, slices] volume.
            chunk = keep_connected_to(&chunk, seeds, [cols, rows, zs.len()]);
        }
        fg.extend(chunk);
    }
    Ok(fg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_ranks_with_ties() {
        assert!((spearman(&[(1.0, 10.0), (2.0, 20.0), (3.0, 15.0), (4.0, 40.0)]).unwrap() - 0.8).abs() < 1e-12);
        assert!((spearman(&[(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&[(1.0, 1.0), (2.0, 1.0), (3.0, 1.0)]), None);
        assert_eq!(spearman(&[(1.0, 1.0), (2.0, 2.0)]), None);
        // Ties share their mean rank: ranks (0.5, 0.5, 2) against (0, 1, 2).
        let r = spearman(&[(1.0, 1.0), (1.0, 2.0), (2.0, 3.0)]).unwrap();
        assert!((r - 0.866_025_403_784_438_6).abs() < 1e-12, "{r}");
    }

    #[test]
    fn dice_counts() {
        let p = [true, true, false, false];
        let t = [true, false, true, false];
        assert!((dice(p.iter().copied().zip(t.iter().copied())) - 0.5).abs() < 1e-12);
        assert_eq!(dice([(false, false)].into_iter()), 1.0);
        assert_eq!(dice([(true, false)].into_iter()), 0.0);
    }

    /// A phantom on `dims`: voxels where `inside(di, dj, k)` (in-plane offsets from the centre) at intensity
    /// 100, label 1, the rest at 0, label 0; both with uniform noise in ±20 (deterministic).
    fn phantom(dims: [usize; 3], inside: impl Fn(f64, f64, usize) -> bool) -> (Vec<f32>, Vec<u16>) {
        let mut state = 12345u64;
        let (mut img, mut gt) = (Vec::new(), Vec::new());
        for v in 0..dims.iter().product::<usize>() {
            let (i, j, k) = (v % dims[0], (v / dims[0]) % dims[1], v / (dims[0] * dims[1]));
            let fg = inside(i as f64 - (dims[0] as f64 - 1.0) / 2.0, j as f64 - (dims[1] as f64 - 1.0) / 2.0, k);
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let noise = ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 40.0;
            img.push((if fg { 100.0 } else { 0.0 } + noise) as f32);
            gt.push(u16::from(fg));
        }
        (img, gt)
    }

    const DIMS: [usize; 3] = [24, 24, 20];

    fn one_slice(
        b: Baseline,
        (img, gt): &(Vec<f32>, Vec<u16>),
        extent: ExtentMode,
        components: ComponentsMode,
    ) -> Result<ClassScore> {
        let opts = SegmentOptions { axis: AxisChoice::Fixed(2), extent, components, ..SegmentOptions::default() };
        let image = VolumeRef { data: img, dims: DIMS, spacing: [1.0; 3] };
        Ok(evaluate_one_slice(Method::Naive(b), image, gt, &opts)?.0.remove(0))
    }

    #[test]
    fn copy_is_exact_on_a_cylinder_and_not_on_a_cone() {
        let cylinder = phantom(DIMS, |di, dj, k| (4..=15).contains(&k) && di * di + dj * dj < 36.0);
        let s = one_slice(Baseline::Copy, &cylinder, ExtentMode::Range(4, 15), ComponentsMode::Support).unwrap();
        assert_eq!((s.extent, s.support_slices.clone(), s.slices_processed), ((4, 15), vec![9], 11));
        assert_eq!((s.dice, s.dice_in_extent), (1.0, 1.0));
        // Every slice: 8 of 20 slices are false positives (2·12 / (20 + 12)); auto extent means the same.
        for extent in [ExtentMode::All, ExtentMode::Auto] {
            let s = one_slice(Baseline::Copy, &cylinder, extent, ComponentsMode::Support).unwrap();
            assert_eq!(s.slices_processed, 19);
            assert_eq!(s.dice_in_extent, 1.0);
            assert!((s.dice - 0.75).abs() < 1e-9, "{}", s.dice);
        }
        // A cone (radius 2 → 8.6 over the extent): the middle cross-section fits only the middle.
        let cone = phantom(DIMS, |di, dj, k| {
            (4..=15).contains(&k) && (di * di + dj * dj).sqrt() < 2.0 + 0.6 * (k as f64 - 4.0)
        });
        let s = one_slice(Baseline::Copy, &cone, ExtentMode::Range(4, 15), ComponentsMode::Support).unwrap();
        assert!(s.dice_in_extent < 0.8, "{}", s.dice_in_extent);
    }

    #[test]
    fn threshold_recovers_a_sphere_better_than_copy() {
        // A sphere, and a separate block of the same intensity in a corner: the distractor, not scored.
        let sphere = |di: f64, dj: f64, k: usize| di * di + dj * dj + (k as f64 - 10.0).powi(2) < 49.0;
        let (img, _) = phantom(DIMS, |di, dj, k| sphere(di, dj, k) || (di < -6.0 && dj < -6.0 && k < 5));
        let vol = (img, phantom(DIMS, sphere).1);
        let t = one_slice(Baseline::Threshold, &vol, ExtentMode::All, ComponentsMode::Support).unwrap();
        let c = one_slice(Baseline::Copy, &vol, ExtentMode::All, ComponentsMode::Support).unwrap();
        assert!(t.dice > 0.9, "threshold {}", t.dice);
        assert!(t.dice > c.dice + 0.2, "threshold {} vs copy {}", t.dice, c.dice);
        // The component step is what drops the block.
        let all = one_slice(Baseline::Threshold, &vol, ExtentMode::All, ComponentsMode::All).unwrap();
        assert!(all.dice < t.dice - 0.03, "{} vs {}", all.dice, t.dice);
    }

    #[test]
    fn alpnet_baselines_use_each_chunks_support() {
        let cylinder = phantom(DIMS, |di, dj, k| (4..=15).contains(&k) && di * di + dj * dj < 36.0);
        let v = VolumeRef { data: &cylinder.0, dims: DIMS, spacing: [1.0; 3] };
        let opts = SegmentOptions { axis: AxisChoice::Fixed(2), ..SegmentOptions::default() };
        let s = evaluate_alpnet(Method::Naive(Baseline::Copy), (v, &cylinder.1), (v, &cylinder.1), &opts).unwrap();
        // 12 labelled slices: supports at 4 + (2, 6, 10); all 12 scored, every one exactly.
        assert_eq!((s[0].support_slices.clone(), s[0].slices_processed, s[0].dice), (vec![6, 10, 14], 12, 1.0));

        // Separate support volume; the query has a second column of the same intensity in a corner, which
        // the support footprint does not overlap.
        let query =
            phantom(DIMS, |di, dj, k| (4..=15).contains(&k) && (di * di + dj * dj < 36.0 || (di < -9.0 && dj < -9.0)));
        let q_gt: Vec<u16> = cylinder.1.clone();
        let q = VolumeRef { data: &query.0, dims: DIMS, spacing: [1.0; 3] };
        let kept = evaluate_alpnet(Method::Naive(Baseline::Threshold), (v, &cylinder.1), (q, &q_gt), &opts).unwrap();
        assert!(kept[0].dice > 0.9, "{}", kept[0].dice);
        let all = SegmentOptions { components: ComponentsMode::All, ..opts.clone() };
        let both = evaluate_alpnet(Method::Naive(Baseline::Threshold), (v, &cylinder.1), (q, &q_gt), &all).unwrap();
        assert!(both[0].dice < kept[0].dice - 0.02, "{} vs {}", both[0].dice, kept[0].dice);

        // Pixels are copied, so the in-plane grids must agree.
        let small = phantom([20, 24, 20], |di, dj, k| (4..=15).contains(&k) && di * di + dj * dj < 36.0);
        let sv = VolumeRef { data: &small.0, dims: [20, 24, 20], spacing: [1.0; 3] };
        let e = evaluate_alpnet(Method::Naive(Baseline::Copy), (sv, &small.1), (v, &cylinder.1), &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("same in-plane grid") && e.contains("24x20") && e.contains("24x24"), "{e}");
    }

    #[test]
    fn baseline_extent_outside_the_volume_is_refused() {
        let cylinder = phantom(DIMS, |di, dj, k| (4..=15).contains(&k) && di * di + dj * dj < 36.0);
        let e = one_slice(Baseline::Threshold, &cylinder, ExtentMode::Range(5, 20), ComponentsMode::Support)
            .unwrap_err()
            .to_string();
        assert!(e.contains("extent 5:20 is outside slices 0..=19"), "{e}");
    }
}
