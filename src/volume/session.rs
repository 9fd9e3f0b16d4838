//! An interactive session: one image, its encoded slices kept between runs.
//!
//! Annotation is a loop (paint, look, correct, run again). The backbone costs ~20x the prototype head
//! per slice, so a session keeps every slice feature it encodes (under a byte budget, least recently
//! used dropped first) and a correction re-runs the head only, plus the slices it has not seen yet.
//! Results are those of [`segment`](super::segment) on the same inputs, voxel for voxel.

use super::cache::{CacheStats, FeatureCache};
use super::options::{Progress, SegmentOptions, SegmentSummary, VolumeRef};
use super::prepared::CANVAS;
use crate::model::{Model, OUTPUT_STRIDE};
use crate::{DspnetError, Result};

/// Feature memory a session may hold when the caller gives no budget: 1 GiB, about a thousand slices of
/// the default model (1 MiB each), whatever the in-plane size (slices are encoded on a fixed canvas).
pub const DEFAULT_FEATURE_BUDGET: usize = 1 << 30;

/// An image and the features of its slices. The image is copied in (as f32), so the caller's buffer may
/// change or go away; [`segment`](Session::segment) takes support labels on this image's grid.
pub struct Session {
    image: Vec<f32>,
    dims: [usize; 3],
    spacing: [f64; 3],
    budget: usize,
    cache: FeatureCache,
}

/// Bytes of one slice's features for `model`.
pub fn slice_feature_bytes(model: &Model) -> usize {
    let side = CANVAS / OUTPUT_STRIDE;
    model.config().feature_channels * side * side * std::mem::size_of::<f32>()
}

impl Session {
    /// Check the image (dims, spacing, finite voxels) and the budget (0 = [`DEFAULT_FEATURE_BUDGET`]; at
    /// least one slice of `model`'s features).
    pub fn new(
        model: &Model,
        image: Vec<f32>,
        dims: [usize; 3],
        spacing: [f64; 3],
        feature_budget: usize,
    ) -> Result<Self> {
        if dims.contains(&0) {
            return Err(DspnetError::Shape(format!("volume dimensions {dims:?} contain a zero")));
        }
        let n = super::voxel_count(dims)?;
        if image.len() != n {
            return Err(DspnetError::Shape(format!("image has {} voxels, dims {dims:?} need {n}", image.len())));
        }
        if let Some(s) = spacing.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(DspnetError::InvalidArgument(format!(
                "voxel spacing {spacing:?} must be finite and positive (found {s})"
            )));
        }
        if let Some(i) = image.iter().position(|v| !v.is_finite()) {
            return Err(DspnetError::NonFinite(format!("image voxel {i} is {}", image[i])));
        }
        let one = slice_feature_bytes(model);
        let budget = if feature_budget == 0 { DEFAULT_FEATURE_BUDGET } else { feature_budget };
        if budget < one {
            return Err(DspnetError::InvalidArgument(format!(
                "the session's feature budget ({budget} bytes) is smaller than one slice's features ({one} bytes); use 0 for the default ({DEFAULT_FEATURE_BUDGET} bytes)"
            )));
        }
        Ok(Session { image, dims, spacing, budget, cache: FeatureCache::with_budget(budget) })
    }

    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    pub fn spacing(&self) -> [f64; 3] {
        self.spacing
    }

    /// The feature budget in bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes of the session's image copy.
    pub fn image_bytes(&self) -> usize {
        self.image.len() * std::mem::size_of::<f32>()
    }

    /// Bytes the session holds: the image copy, the cached features and the recorded chains.
    pub fn held_bytes(&self) -> usize {
        let st = self.cache.stats();
        self.image_bytes() + st.bytes + st.chain_bytes
    }

    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// [`segment`](super::segment) on the session's image, reusing its encoded slices. `support` has the
    /// image's dims. Any model may be passed; features of another model are not reused (the cache is
    /// cleared when the model changes).
    pub fn segment(
        &mut self,
        model: &Model,
        support: &[u16],
        opts: &SegmentOptions,
        progress: Progress<'_>,
    ) -> Result<(Vec<u16>, SegmentSummary)> {
        if support.len() != self.image.len() {
            return Err(DspnetError::Shape(format!(
                "support labels have {} voxels; the session's image has dims {:?} ({} voxels)",
                support.len(),
                self.dims,
                self.image.len()
            )));
        }
        let image = VolumeRef { data: &self.image, dims: self.dims, spacing: self.spacing };
        super::segment_cached(model, image, support, opts, progress, &mut self.cache)
    }
}
