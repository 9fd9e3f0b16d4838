//! Evaluation protocols: what a user gets from one painted slice, and the paper's chunk protocol.

use std::time::Instant;

use super::slicing::slice_indices;
use super::{AxisChoice, ModalityChoice, PreparedVolume, SegmentOptions, VolumeRef};
use crate::model::Model;
use crate::{DspnetError, Result};

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
    if tp + fp + fn_ == 0 { 1.0 } else { 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64 }
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
    pub seconds: f64,
}

/// First and last slice along `axis` containing `label`.
pub fn class_extent(labels: &[u16], dims: [usize; 3], axis: usize, label: u16) -> Option<(usize, usize)> {
    let zs: Vec<usize> = (0..dims[axis]).filter(|&z| slice_indices(dims, axis, z).any(|v| labels[v] == label)).collect();
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
        return Err(DspnetError::InvalidArgument(format!("class {c} does not occur in the ground truth (present: {present:?})")));
    }
    if classes.is_empty() {
        return Err(DspnetError::EmptySupport(": the ground truth has no labelled voxel".into()));
    }
    Ok(classes)
}

/// `one-slice`: for each class, the middle slice of its extent is the only support; the whole volume is
/// segmented with `opts` (as a user would) and scored. Also returns the predictions, classes overlaid.
pub fn evaluate_one_slice(model: &Model, image: VolumeRef<'_>, gt: &[u16], opts: &SegmentOptions) -> Result<(Vec<ClassScore>, Vec<u16>)> {
    let dims = image.dims;
    let axis = fixed_axis(opts.axis)?;
    let mut out = Vec::new();
    let mut overlay = vec![0u16; gt.len()];
    // Whole-slice features do not depend on the class: encode each slice once for all of them.
    let mut cache = super::FeatureCache::default();
    for label in classes_of(gt, &opts.classes)? {
        let t0 = Instant::now();
        let (lo, hi) = class_extent(gt, dims, axis, label).expect("class present");
        // The middle slice, or the labelled slice nearest to it for a structure with gaps.
        let mid = (lo + hi) / 2;
        let z = (lo..=hi)
            .filter(|&z| slice_indices(dims, axis, z).any(|v| gt[v] == label))
            .min_by_key(|&z| (z.abs_diff(mid), z))
            .unwrap_or(mid);
        let mut support = vec![0u16; gt.len()];
        for v in slice_indices(dims, axis, z) {
            if gt[v] == label {
                support[v] = label;
            }
        }
        let o = SegmentOptions { axis: AxisChoice::Fixed(axis), classes: Some(vec![label]), ..opts.clone() };
        let (pred, summary) = super::segment_cached(model, image, &support, &o, &mut |_, _| true, &mut cache)?;
        let whole = dice(pred.iter().zip(gt).map(|(&p, &t)| (p == label, t == label)));
        for (o, &p) in overlay.iter_mut().zip(&pred) {
            if p == label {
                *o = label;
            }
        }
        let inside = dice((lo..=hi).flat_map(|z| slice_indices(dims, axis, z)).map(|v| (pred[v] == label, gt[v] == label)));
        out.push(ClassScore {
            label,
            dice: whole,
            dice_in_extent: inside,
            support_slices: vec![z],
            extent: (lo, hi),
            slices_processed: summary.slices_processed,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    Ok((out, overlay))
}

/// `alpnet` (spec §3.2): the query's class extent is cut into 3 chunks; chunk k is segmented with the
/// support volume's slice at fraction (1/6, 1/2, 5/6) of that class's labelled slices; only slices
/// inside the query's extent are scored. `support` may be the query itself.
pub fn evaluate_alpnet(
    model: &Model,
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
    let s_vol = PreparedVolume::new(model, s_img, axis, opts.modality)?;
    let q_vol = if std::ptr::eq(s_img.data, q_img.data) {
        None
    } else {
        Some(PreparedVolume::new(model, q_img, axis, if opts.modality == ModalityChoice::Auto { ModalityChoice::Auto } else { opts.modality })?)
    };
    let q_ref = q_vol.as_ref().unwrap_or(&s_vol);
    let frame = s_vol.frame(None)?;
    let q_frame = q_ref.frame(None)?;
    let mut out = Vec::new();
    // Query features do not depend on the class: encode each slice once.
    let mut q_features: std::collections::HashMap<usize, candle_core::Tensor> = std::collections::HashMap::new();
    for label in classes_of(q_gt, &opts.classes)? {
        let t0 = Instant::now();
        let support_list: Vec<usize> = (0..s_img.dims[axis]).filter(|&z| slice_indices(s_img.dims, axis, z).any(|v| s_gt[v] == label)).collect();
        if support_list.is_empty() {
            return Err(DspnetError::EmptySupport(format!(" for class {label} in the support volume")));
        }
        let (lo, hi) = class_extent(q_gt, q_img.dims, axis, label).expect("class present");
        let l = support_list.len();
        let chunk_support: Vec<usize> = [1.0 / 6.0, 0.5, 5.0 / 6.0].iter().map(|p| support_list[((p * l as f64) as usize).min(l - 1)]).collect();
        let mut episodes = Vec::new();
        for &z in &chunk_support {
            let f = s_vol.encode(model, z, &frame)?;
            episodes.push(s_vol.episode(&f, s_gt, z, label, &frame, &opts.head)?);
        }
        let (mut pairs, mut processed) = (Vec::new(), 0);
        let width = (hi - lo) as f64 / 3.0;
        for z in lo..=hi {
            let chunk = if width > 0.0 { (((z - lo) as f64 / width).floor() as usize).min(2) } else { 0 };
            let f = match q_features.get(&z) {
                Some(f) => f.clone(),
                None => q_features.entry(z).or_insert(q_ref.encode(model, z, &q_frame)?).clone(),
            };
            let logits = q_ref.score(&episodes[chunk], &f, &q_frame)?;
            for (pred, v) in logits.foreground().zip(slice_indices(q_img.dims, axis, z)) {
                pairs.push((pred, q_gt[v] == label));
            }
            processed += 1;
        }
        let d = dice(pairs.into_iter());
        out.push(ClassScore {
            label,
            dice: d,
            dice_in_extent: d,
            support_slices: chunk_support,
            extent: (lo, hi),
            slices_processed: processed,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_counts() {
        let p = [true, true, false, false];
        let t = [true, false, true, false];
        assert!((dice(p.iter().copied().zip(t.iter().copied())) - 0.5).abs() < 1e-12);
        assert_eq!(dice([(false, false)].into_iter()), 1.0);
        assert_eq!(dice([(true, false)].into_iter()), 0.0);
    }
}
