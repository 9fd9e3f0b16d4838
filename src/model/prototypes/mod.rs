//! The parameter-free DSPNet head (docs/model.md, 'Masks at feature resolution' to 'Output'): everything after the 1×1 projection.
//!
//! A [`SupportEpisode`] holds what depends on the support slice alone — feature-resolution masks,
//! superpixel seeds, the SpCenterIter cluster centres, the BCMA-mixed local prototypes (both paths)
//! and the fg mode — and then scores any number of query feature maps. Per query the head computes
//! RAN (support refined by the query), the FSPA global prototype p_g, and the two class scores.
//!
//! Stages, one file each: [`seeds`] (seed placement), [`masks`] (m_f, m_b, pools, fg mode), [`ran`],
//! [`bcma`], [`cluster`] (SpCenterIter), [`fspa`] (p_g), [`scoring`] (cosine prototype scores) and
//! [`resize`] (bilinear upsampling, argmax).
//!
//! Heavy linear algebra (RAN, BCMA, FSPA, scoring, upsampling) runs as candle ops on the features'
//! device; the discrete work (masks, seeds, selections) and the small clustering run on the CPU.

pub mod bcma;
pub mod cluster;
pub mod fspa;
pub mod masks;
pub mod options;
pub mod ran;
pub mod resize;
pub mod scoring;
pub mod seeds;

use candle_core::{DType, Device, Tensor};

use crate::error::{DspnetError, Result};

pub use masks::FeatureMasks;
pub use options::{HeadOptions, HEAD_KEYS};
pub use resize::{labels_from_logits, resize_bilinear, try_resize_bilinear, upsample_logits};
pub use seeds::{place_seeds, seed_placement, SeedPlacement};

/// Output stride of the backbone: the support mask is `FEATURE_STRIDE·h × FEATURE_STRIDE·w`.
pub const FEATURE_STRIDE: usize = 8;

/// Which foreground branch the support mask selects (docs/model.md, 'Scores').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForegroundMode {
    /// Some 4×4 window of m_f is ≥ fg_threshold: local fg prototypes + p_g, softmax-weighted score.
    GridConvPlus,
    /// Otherwise: s_fg = 20·cos(q, p_g).
    Mask,
}

impl ForegroundMode {
    /// The reference's name of the mode (`"gridconv+"` / `"mask"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ForegroundMode::GridConvPlus => "gridconv+",
            ForegroundMode::Mask => "mask",
        }
    }
}

/// Intermediates of one [`SupportEpisode::score_traced`] call. Tensors live on the features' device.
#[derive(Debug, Clone)]
pub struct HeadTrace {
    // --- per query ---
    /// RAN output F̂s [C, h, w].
    pub ran: Tensor,
    /// Global FSPA prototype p_g [C].
    pub p_g: Tensor,
    /// Class scores [h, w].
    pub s_bg: Tensor,
    pub s_fg: Tensor,
    // --- per episode (copies of the support-side state) ---
    /// m_f, m_b [h·w], pool_f, pool_b [(h/k)·(w/k)] for the k×k local pool (exact).
    pub m_f: Vec<f32>,
    pub m_b: Vec<f32>,
    pub pool_f: Vec<f32>,
    pub pool_b: Vec<f32>,
    /// BCMA output of the bg path (α = alpha_bg), [C, P], column p = (w/2)·row + col.
    pub bcma_protos: Tensor,
    /// BCMA output of the fg-local path (α = alpha_fg), [C, P] (the same tensor when the α agree).
    pub bcma_protos_fg: Tensor,
    /// Selected bg prototypes [N_b, C] (before normalisation); None when N_b = 0.
    pub bg_protos: Option<Tensor>,
    /// Selected fg-local prototypes [N_f, C] (mode `gridconv+` only, and N_f > 0).
    pub fg_local_protos: Option<Tensor>,
    /// Initial cluster centres [C + 2, K] and centres after SpCenterIter [C, K] (num_sp > 0 only).
    pub pc_init: Option<Tensor>,
    pub pc: Option<Tensor>,
}

/// Everything computed once from one support slice; then [`score`](Self::score) any number of
/// query feature maps of the same size.
#[derive(Debug, Clone)]
pub struct SupportEpisode {
    c: usize,
    h: usize,
    w: usize,
    /// Fs as [C, N] on the features' device.
    support: Tensor,
    masks: FeatureMasks,
    /// m_f as [1, N] and (Σ m_f + 1e-5) as [1] on the device, for the masked averages.
    m_f: Tensor,
    mf_denom: Tensor,
    fg_mode: ForegroundMode,
    seeds: Vec<(usize, usize)>,
    bcma_bg: Tensor,
    bcma_fg: Tensor,
    bg_protos: Option<Tensor>,
    /// Normalised bg prototypes [N_b, C].
    bg_protos_n: Option<Tensor>,
    fg_local: Option<Tensor>,
    n_fg_local: usize,
    pc_init: Option<Tensor>,
    pc: Option<Tensor>,
}

impl SupportEpisode {
    /// features: [C, h, w] (or [1, C, h, w]) f32 candle Tensor on any device; mask: row-major u8
    /// {0,1} (non-zero = fg) of size (8·h) × (8·w).
    ///
    /// Errors: wrong sizes (or h, w not multiples of 4, which the 4×4 fg-mode pool needs) → Shape;
    /// mask with no fg pixel → EmptySupport; non-finite features → NonFinite.
    pub fn new(
        features: &Tensor,
        mask: &[u8],
        mask_height: usize,
        mask_width: usize,
        opts: &HeadOptions,
    ) -> Result<Self> {
        let features = as_chw(features, "support features")?;
        let (c, h, w) = features.dims3()?;
        if c == 0 || h == 0 || w == 0 || h % 4 != 0 || w % 4 != 0 {
            return Err(DspnetError::Shape(format!(
                "support features must be [C, h, w] with C >= 1 and h, w positive multiples of 4, got [{c}, {h}, {w}]"
            )));
        }
        if mask_height != FEATURE_STRIDE * h || mask_width != FEATURE_STRIDE * w {
            return Err(DspnetError::Shape(format!(
                "support mask is {mask_height}x{mask_width}, expected {}x{} for {h}x{w} features",
                FEATURE_STRIDE * h,
                FEATURE_STRIDE * w
            )));
        }
        if mask.len() != mask_height * mask_width {
            return Err(DspnetError::Shape(format!(
                "support mask has {} values, expected {mask_height}x{mask_width} = {}",
                mask.len(),
                mask_height * mask_width
            )));
        }
        opts.check()?;
        // The model binarises with `s_y == 1`; the API treats any non-zero value as foreground.
        let fg: Vec<u8> = mask.iter().map(|&v| u8::from(v != 0)).collect();
        if !fg.contains(&1) {
            return Err(DspnetError::empty_support(
                None,
                None,
                format!("all {mask_height}x{mask_width} mask values are 0"),
            ));
        }

        let device = features.device().clone();
        let n = h * w;
        let support = features.reshape((c, n))?.contiguous()?;
        // The clustering needs Fs on the CPU anyway; check finiteness on that copy.
        let support_cpu = support.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        if support_cpu.iter().any(|v| !v.is_finite()) {
            return Err(DspnetError::NonFinite("support features contain NaN or infinity".into()));
        }

        // Masks at feature resolution, fg mode.
        let pool = opts.local_pool;
        if h % pool != 0 || w % pool != 0 {
            return Err(DspnetError::Shape(format!("{h}x{w} features cannot be pooled in {pool}x{pool} windows")));
        }
        let masks = FeatureMasks::new(&fg, h, w, FEATURE_STRIDE, pool);
        let fg_mode =
            if masks.max_pool4_f >= opts.fg_threshold { ForegroundMode::GridConvPlus } else { ForegroundMode::Mask };
        let m_f = Tensor::from_slice(&masks.m_f, (1, n), &device)?;
        // `sup_y.sum() + 1e-5` in float32 (Σ m_f is exact: multiples of 1/4).
        let mf_denom = Tensor::from_slice(&[masks.sum_f + 1e-5f32], 1, &device)?;

        // Seeds from the full-resolution mask; the model uses the first num_sp of them.
        let placement =
            seeds::seed_placement(&fg, mask_height, mask_width, FEATURE_STRIDE, opts.max_seeds, opts.area_per_seed)?;
        let used_seeds = placement.used_seeds().to_vec();

        // BCMA on the pooled raw support features, from all P prototypes before selection.
        let pooled =
            support.reshape((1, c, h, w))?.avg_pool2d(pool)?.reshape((c, (h / pool) * (w / pool)))?.contiguous()?;
        let mats = bcma::BcmaMatrices::new(c, opts.mixing_weights, opts.calibration.as_deref(), &device)?;
        // The bg path uses alpha_bg, the fg-local path alpha_fg (one matrix serves both when equal).
        let bcma_bg = bcma::bcma(&pooled, opts.alpha_bg, &mats)?;
        let bcma_fg =
            if opts.alpha_fg == opts.alpha_bg { bcma_bg.clone() } else { bcma::bcma(&pooled, opts.alpha_fg, &mats)? };

        // Prototype selection: pooled value strictly greater than the threshold.
        let bg_idx = FeatureMasks::select(&masks.pool_b, opts.bg_threshold);
        let bg_protos = select_columns(&bcma_bg, &bg_idx)?;
        let bg_protos_n = bg_protos.as_ref().map(|p| scoring::safe_norm(p, 1)).transpose()?;
        let (fg_local, n_fg_local) = match fg_mode {
            ForegroundMode::GridConvPlus => {
                let idx = FeatureMasks::select(&masks.pool_f, opts.fg_threshold);
                (select_columns(&bcma_fg, &idx)?, idx.len())
            }
            ForegroundMode::Mask => (None, 0),
        };

        // SpCenterIter on the raw support features, ROI = cells with m_f == 1 exactly.
        let (pc_init, pc) = if used_seeds.is_empty() {
            (None, None)
        } else {
            let clusters =
                cluster::sp_center_iter(&support_cpu, c, w, &masks.roi(), &used_seeds, opts.cluster_iterations)?;
            let k = clusters.k;
            (
                Some(Tensor::from_vec(clusters.init, (c + 2, k), &device)?),
                Some(Tensor::from_vec(clusters.centres, (c, k), &device)?),
            )
        };

        Ok(SupportEpisode {
            c,
            h,
            w,
            support,
            masks,
            m_f,
            mf_denom,
            fg_mode,
            seeds: used_seeds,
            bcma_bg,
            bcma_fg,
            bg_protos,
            bg_protos_n,
            fg_local,
            n_fg_local,
            pc_init,
            pc,
        })
    }

    /// The foreground branch chosen for this support mask.
    pub fn fg_mode(&self) -> ForegroundMode {
        self.fg_mode
    }

    /// The num_sp seeds used (row, col on the feature grid).
    pub fn seeds(&self) -> &[(usize, usize)] {
        &self.seeds
    }

    /// Number of bg local prototypes (pooled bg > bg_threshold).
    pub fn num_bg_prototypes(&self) -> usize {
        self.bg_protos.as_ref().map_or(0, |p| p.dims()[0])
    }

    /// Number of fg local prototypes (mode `gridconv+` only; 0 in mode `mask`).
    pub fn num_fg_local_prototypes(&self) -> usize {
        self.n_fg_local
    }

    /// Feature size (C, h, w) this episode expects from queries.
    pub fn feature_dims(&self) -> (usize, usize, usize) {
        (self.c, self.h, self.w)
    }

    /// The feature-resolution masks (m_f, m_b, pools).
    pub fn masks(&self) -> &FeatureMasks {
        &self.masks
    }

    /// Class scores at feature resolution: [2, h, w] (channel 0 = s_bg, 1 = s_fg), on the
    /// features' device.
    pub fn score(&self, query_features: &Tensor) -> Result<Tensor> {
        Ok(self.score_traced(query_features)?.0)
    }

    /// [`score`](Self::score) with every intermediate.
    pub fn score_traced(&self, query_features: &Tensor) -> Result<(Tensor, HeadTrace)> {
        let query = as_chw(query_features, "query features")?;
        if query.dims() != [self.c, self.h, self.w] {
            return Err(DspnetError::Shape(format!(
                "query features are {:?}, the support episode expects [{}, {}, {}]",
                query.dims(),
                self.c,
                self.h,
                self.w
            )));
        }
        let n = self.h * self.w;
        let query = query.to_device(self.support.device())?.reshape((self.c, n))?.contiguous()?;
        // x·0 is 0 for finite x and NaN otherwise: one scalar leaves the device.
        let probe = (&query * 0.0)?.sum_all()?.to_scalar::<f32>()?;
        if !probe.is_finite() {
            return Err(DspnetError::NonFinite("query features contain NaN or infinity".into()));
        }

        // RAN (needed by FSPA in both fg modes; unused by the bg branch).
        let ran = ran::ran(&self.support, &query)?;
        let p_g = fspa::global_prototype(&self.support, &ran, &self.m_f, &self.mf_denom, self.pc.as_ref())?;

        let query_n = scoring::safe_norm(&query, 0)?; // [C, N]
        let s_bg = scoring::prototype_score(&query_n, self.bg_protos_n.as_ref())?;
        let p_g_row = p_g.unsqueeze(0)?; // [1, C]
        let s_fg = match self.fg_mode {
            ForegroundMode::GridConvPlus => {
                // P = concat(fg-local prototypes, p_g), normalised row by row.
                let protos = match &self.fg_local {
                    Some(local) => Tensor::cat(&[local, &p_g_row], 0)?,
                    None => p_g_row.clone(),
                };
                scoring::prototype_score(&query_n, Some(&scoring::safe_norm(&protos, 1)?))?
            }
            ForegroundMode::Mask => scoring::cosine_score(&query_n, &scoring::safe_norm(&p_g_row, 1)?)?,
        };
        let s_bg = s_bg.reshape((self.h, self.w))?;
        let s_fg = s_fg.reshape((self.h, self.w))?;
        let scores = Tensor::stack(&[&s_bg, &s_fg], 0)?;

        let trace = HeadTrace {
            ran: ran.reshape((self.c, self.h, self.w))?,
            p_g,
            s_bg,
            s_fg,
            m_f: self.masks.m_f.clone(),
            m_b: self.masks.m_b.clone(),
            pool_f: self.masks.pool_f.clone(),
            pool_b: self.masks.pool_b.clone(),
            bcma_protos: self.bcma_bg.clone(),
            bcma_protos_fg: self.bcma_fg.clone(),
            bg_protos: self.bg_protos.clone(),
            fg_local_protos: self.fg_local.clone(),
            pc_init: self.pc_init.clone(),
            pc: self.pc.clone(),
        };
        Ok((scores, trace))
    }
}

/// Softmax over the last dimension. Inference keeps candle's fused kernel (bit-identical to before); when
/// gradients are tracked (training, see `crate::train`) it is built from elementary ops, because the fused
/// kernel has no backward pass. The max shift is detached: it does not change the value, only stability.
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(candle_nn::ops::softmax_last_dim(x)?);
    }
    let max = x.max_keepdim(candle_core::D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(candle_core::D::Minus1)?)?)
}

/// Accepts [C, h, w] or [1, C, h, w]; converts to f32.
fn as_chw(t: &Tensor, what: &str) -> Result<Tensor> {
    let t = match t.rank() {
        3 => t.clone(),
        4 if t.dim(0)? == 1 => t.squeeze(0)?,
        _ => return Err(DspnetError::Shape(format!("{what} must be [C, h, w], got {:?}", t.dims()))),
    };
    Ok(if t.dtype() == DType::F32 { t } else { t.to_dtype(DType::F32)? })
}

/// Columns `idx` of x [C, P], transposed to [len, C]; None when `idx` is empty.
fn select_columns(x: &Tensor, idx: &[u32]) -> Result<Option<Tensor>> {
    if idx.is_empty() {
        return Ok(None);
    }
    let ids = Tensor::from_slice(idx, idx.len(), x.device())?;
    Ok(Some(x.index_select(&ids, 1)?.t()?.contiguous()?))
}
