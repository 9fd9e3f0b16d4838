//! Whole-slice features kept for reuse: across the classes of one run, and across runs on one image.

use std::collections::HashMap;

use candle_core::Tensor;

use super::options::{ModalityChoice, SegmentOptions, VolumeRef};
use crate::model::Model;
use crate::Result;

/// Backbone activation memory of one 256x256 slice: peak RSS grows by 9-11 MB per slice of a batch for
/// ResNet-50 with layer3 or layer4 features (`dspnet bench --batch 1|8`), rounded up.
const SLICE_ACTIVATION_BYTES: usize = 12 << 20;
/// What the activations of one batch may take.
const BATCH_BUDGET_BYTES: usize = 96 << 20;
const MAX_BATCH: usize = 8;

/// Slices per backbone call for known query slices.
pub(crate) fn batch_size(model: &Model, opts: &SegmentOptions) -> usize {
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
    /// A cache for one run only: query slices are dropped once no later class needs them.
    pub fn transient() -> Self {
        FeatureCache { transient: true, ..FeatureCache::default() }
    }

    pub(crate) fn is_transient(&self) -> bool {
        self.transient
    }

    pub(crate) fn bind(&mut self, model: &Model, image: &VolumeRef<'_>, axis: usize, modality: ModalityChoice) {
        let key = (model as *const Model as usize, image.data.as_ptr() as usize, image.data.len(), axis, modality);
        if self.key != Some(key) {
            self.features.clear();
            self.key = Some(key);
        }
    }
}

/// Whole-slice features during one class's pass: the cache, plus query slices encoded ahead in a batch.
pub(crate) struct SliceFeatures<'c> {
    cache: &'c mut FeatureCache,
    pub(crate) ahead: HashMap<usize, Tensor>,
    /// Store scored query slices in the cache.
    keep_queries: bool,
}

impl<'c> SliceFeatures<'c> {
    pub(crate) fn new(cache: &'c mut FeatureCache, keep_queries: bool) -> Self {
        SliceFeatures { cache, ahead: HashMap::new(), keep_queries }
    }

    pub(crate) fn has(&self, z: usize) -> bool {
        self.cache.features.contains_key(&z) || self.ahead.contains_key(&z)
    }

    /// Features of slice `z`; support slices stay cached (few, and shared by the classes).
    pub(crate) fn get(&mut self, z: usize, is_query: bool, encode: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
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
