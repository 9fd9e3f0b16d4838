//! Whole-slice features kept for reuse: across the classes of one run, and across runs on one image
//! (an interactive session, an evaluation comparing methods).

use std::collections::HashMap;

use candle_core::Tensor;

use super::normalize::Modality;
use super::options::{SegmentOptions, VolumeRef};
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

/// The canvas a slice was encoded on: features of one slice differ by slice axis and by intensity recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Canvas {
    axis: usize,
    modality: Modality,
}

struct Entry {
    features: Tensor,
    bytes: usize,
    /// Logical clock of the last use (least recently used goes first).
    used: u64,
}

/// What a cache holds and has done, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Slices whose features are held now.
    pub slices: usize,
    /// Bytes those features take.
    pub bytes: usize,
    /// Slices encoded by the backbone since the cache was made (misses).
    pub encoded: usize,
    /// Slices served from the cache (hits).
    pub reused: usize,
    /// Entries dropped to stay within the budget.
    pub evicted: usize,
    /// Memory-propagation chains replayed from an earlier run instead of scored again.
    pub chains_replayed: usize,
    /// Bytes held by recorded chains (counted in the budget: see [`FeatureCache::with_budget`]).
    pub chain_bytes: usize,
}

/// Whole-slice features of one image, kept between [`segment_cached`](super::segment_cached) runs on that
/// same image. Entries are tied to the model, image buffer and voxel spacing they were computed for (any
/// other clears them) and keyed by slice axis and intensity recipe, so runs along different axes share the
/// cache. With a byte budget the least recently used slices are dropped once it is exceeded.
#[derive(Default)]
pub struct FeatureCache {
    /// Model, image buffer (address, length) and voxel spacing the entries were computed for: spacing
    /// changes how a slice is fitted into the canvas.
    key: Option<(usize, usize, usize, [u64; 3])>,
    entries: HashMap<(Canvas, usize), Entry>,
    clock: u64,
    /// None: unbounded.
    budget: Option<usize>,
    stats: CacheStats,
    /// Not reused after this run: query slices are kept only while a later class may still score them
    /// (1 MB per slice adds up to a second volume).
    transient: bool,
    /// The canvas of the current run.
    canvas: Option<Canvas>,
    /// Recorded memory-propagation chains, oldest first (kept only by caches that outlive a run).
    chains: Vec<(Canvas, std::sync::Arc<ChainRecord>)>,
}

/// What one memory-propagation chain did, so that a later run on the same image that walks the same
/// slices from the same painted slice with the same settings takes its outcome instead of scoring again
/// (each step depends only on the painted slice, the slices visited before it and their features).
pub(crate) struct ChainRecord {
    pub label: u16,
    pub anchor: usize,
    pub dir: i64,
    /// The class's painted mask on the anchor slice.
    pub mask: Vec<bool>,
    pub settings: ChainSettings,
    pub steps: Vec<ChainStep>,
    /// The chain ended by its stop rule after the last step (not at its territory's or the volume's end).
    pub stopped: bool,
}

/// The options a chain's outcome depends on.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ChainSettings {
    pub memory: super::options::MemoryOptions,
    pub head: crate::model::prototypes::HeadOptions,
    pub fov: super::options::FovMode,
    pub stops: bool,
}

/// One scored slice of a chain.
pub(crate) struct ChainStep {
    pub slice: usize,
    pub presence: f32,
    /// (pixel index in the slice, foreground score) written into the class's scores.
    pub written: Vec<(u32, f32)>,
}

impl ChainRecord {
    fn bytes(&self) -> usize {
        self.mask.len() + self.steps.iter().map(|s| 16 + s.written.len() * 8).sum::<usize>()
    }
}

impl FeatureCache {
    /// A cache for one run only: query slices are dropped once no later class needs them.
    pub fn transient() -> Self {
        FeatureCache { transient: true, ..FeatureCache::default() }
    }

    /// A cache that keeps every slice it encodes while their features (and the recorded chains, at most a
    /// quarter of it) fit in `bytes`, dropping the least recently used slices beyond (the slice in use is
    /// never dropped, so one slice may exceed the budget).
    pub fn with_budget(bytes: usize) -> Self {
        FeatureCache { budget: Some(bytes), ..FeatureCache::default() }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            slices: self.entries.len(),
            bytes: self.entries.values().map(|e| e.bytes).sum(),
            chain_bytes: self.chains.iter().map(|(_, c)| c.bytes()).sum(),
            ..self.stats
        }
    }

    /// The recorded chain from `anchor` in direction `dir` for `label`, if its painted mask and settings
    /// are these.
    pub(crate) fn chain(
        &self,
        label: u16,
        anchor: usize,
        dir: i64,
        mask: &[bool],
        settings: &ChainSettings,
    ) -> Option<std::sync::Arc<ChainRecord>> {
        let canvas = self.canvas?;
        self.chains
            .iter()
            .rev()
            .find(|(c, r)| {
                *c == canvas
                    && r.label == label
                    && r.anchor == anchor
                    && r.dir == dir
                    && r.mask == mask
                    && &r.settings == settings
            })
            .map(|(_, r)| r.clone())
    }

    pub(crate) fn replayed_chain(&mut self) {
        self.stats.chains_replayed += 1;
    }

    /// Keep a chain for later runs (not in a one-run cache). Recorded chains take at most a quarter of the
    /// budget (unbounded caches: the 64 latest).
    pub(crate) fn record_chain(&mut self, record: ChainRecord) {
        let Some(canvas) = self.canvas else { return };
        if self.transient {
            return;
        }
        self.chains.retain(|(c, r)| {
            !(*c == canvas && r.label == record.label && r.anchor == record.anchor && r.dir == record.dir)
        });
        self.chains.push((canvas, std::sync::Arc::new(record)));
        let limit = self.budget.map_or(usize::MAX, |b| b / 4);
        while self.chains.len() > 64
            || (self.chains.len() > 1 && self.chains.iter().map(|(_, c)| c.bytes()).sum::<usize>() > limit)
        {
            self.chains.remove(0);
        }
    }

    pub(crate) fn is_transient(&self) -> bool {
        self.transient
    }

    pub(crate) fn bind(&mut self, model: &Model, image: &VolumeRef<'_>, axis: usize, modality: Modality) {
        let key = (
            model as *const Model as usize,
            image.data.as_ptr() as usize,
            image.data.len(),
            image.spacing.map(f64::to_bits),
        );
        if self.key != Some(key) {
            self.entries.clear();
            self.chains.clear();
            self.key = Some(key);
        }
        self.canvas = Some(Canvas { axis, modality });
    }

    fn lookup(&mut self, z: usize) -> Option<Tensor> {
        let canvas = self.canvas?;
        self.clock += 1;
        let e = self.entries.get_mut(&(canvas, z))?;
        e.used = self.clock;
        self.stats.reused += 1;
        Some(e.features.clone())
    }

    fn contains(&self, z: usize) -> bool {
        self.canvas.is_some_and(|c| self.entries.contains_key(&(c, z)))
    }

    fn insert(&mut self, z: usize, features: Tensor) {
        let Some(canvas) = self.canvas else { return };
        self.clock += 1;
        let bytes = features.elem_count() * features.dtype().size_in_bytes();
        self.entries.insert((canvas, z), Entry { features, bytes, used: self.clock });
        if let Some(budget) = self.budget {
            // Recorded chains count too (they are at most a quarter of the budget).
            let mut held: usize = self.entries.values().map(|e| e.bytes).sum::<usize>()
                + self.chains.iter().map(|(_, c)| c.bytes()).sum::<usize>();
            while held > budget && self.entries.len() > 1 {
                let oldest = *self.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k).expect("non-empty");
                held -= self.entries.remove(&oldest).map_or(0, |e| e.bytes);
                self.stats.evicted += 1;
            }
        }
    }
}

/// Whole-slice features during one class's pass: the cache, plus query slices encoded ahead in a batch.
pub(crate) struct SliceFeatures<'c> {
    pub(crate) cache: &'c mut FeatureCache,
    pub(crate) ahead: HashMap<usize, Tensor>,
    /// Store scored query slices in the cache.
    keep_queries: bool,
}

impl<'c> SliceFeatures<'c> {
    pub(crate) fn new(cache: &'c mut FeatureCache, keep_queries: bool) -> Self {
        SliceFeatures { cache, ahead: HashMap::new(), keep_queries }
    }

    pub(crate) fn has(&self, z: usize) -> bool {
        self.cache.contains(z) || self.ahead.contains_key(&z)
    }

    /// Slices encoded ahead in a batch count as encoded.
    pub(crate) fn encoded_ahead(&mut self, n: usize) {
        self.cache.stats.encoded += n;
    }

    /// Features of slice `z`; support slices stay cached (few, and shared by the classes).
    pub(crate) fn get(&mut self, z: usize, is_query: bool, encode: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        if let Some(t) = self.cache.lookup(z) {
            return Ok(t);
        }
        let t = match self.ahead.remove(&z) {
            Some(t) => t,
            None => {
                self.cache.stats.encoded += 1;
                encode()?
            }
        };
        if !is_query || self.keep_queries {
            self.cache.insert(z, t.clone());
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn cache_on_canvas(budget: usize) -> FeatureCache {
        let mut c = FeatureCache::with_budget(budget);
        c.key = Some((1, 2, 3, [0; 3]));
        c.canvas = Some(Canvas { axis: 2, modality: Modality::Ct });
        c
    }

    fn slice() -> Tensor {
        Tensor::zeros((4, 8, 8), DType::F32, &Device::Cpu).unwrap() // 1 KiB
    }

    #[test]
    fn budget_drops_the_least_recently_used_slice() {
        let mut c = cache_on_canvas(3 << 10);
        for z in 0..3 {
            c.insert(z, slice());
        }
        assert!(c.lookup(0).is_some()); // 0 is now the most recent, 1 the least
        c.insert(3, slice());
        assert!(c.contains(0) && !c.contains(1) && c.contains(2) && c.contains(3));
        let s = c.stats();
        assert_eq!((s.slices, s.bytes, s.evicted, s.reused), (3, 3 << 10, 1, 1));
    }

    #[test]
    fn canvases_are_separate_and_one_slice_always_fits() {
        let mut c = cache_on_canvas(100);
        c.insert(5, slice());
        assert_eq!(c.stats().slices, 1, "the slice in use stays even above the budget");
        c.canvas = Some(Canvas { axis: 0, modality: Modality::Ct });
        assert!(!c.contains(5));
        c.canvas = Some(Canvas { axis: 2, modality: Modality::Mri });
        assert!(!c.contains(5));
        c.canvas = Some(Canvas { axis: 2, modality: Modality::Ct });
        assert!(c.contains(5));
    }
}
