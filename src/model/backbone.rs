//! Dilated bottleneck ResNet (torchvision v1.5 blocks, DeepLabV3 style, output stride 8) and the 1x1
//! projection to the feature channels. The layout comes from [`crate::config`]'s architecture table.
//!
//! Eval-mode BatchNorm is folded into the preceding bias-free convolution at load time, so every stage is
//! one convolution plus bias: w' = w·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε).
//!
//! Two implementations of the same network:
//! - on the CPU, a fast path (`conv`, see `src/model/conv/`): channels-last activations, weights packed
//!   once at load time, implicit-GEMM convolutions (Winograd F(4,3) for the stride-1 3×3 ones) with
//!   bias, ReLU and the residual add fused into the stores;
//! - candle's `conv2d` (CUDA; CPUs without AVX2+FMA; and the reference on the CPU:
//!   [`ConvBackend::Candle`]). On a model packed for the fast path, candle's weights are rebuilt from the
//!   packed ones on first use (exactly, except the Winograd-packed 3×3 ones, recovered to ~1e-7), so
//!   they cost no memory otherwise.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};

use crate::config::{ConvSpec, FeatureSource, ModelConfig};
use crate::{DspnetError, Result};

/// torchvision's BatchNorm epsilon.
pub(crate) const BN_EPS: f64 = 1e-5;

use super::conv::{self, KernelFn, Nhwc, PackedConv};

/// Which convolution implementation runs the backbone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvBackend {
    /// The CPU fast path when the model packed its weights for it (loaded on the CPU of an x86-64 with
    /// AVX2+FMA; `DSPNET_CPU_CONV=candle` or `=fast` at load time overrides), candle otherwise.
    Auto,
    /// candle's `conv2d` (any device). On a model packed for the fast path, candle's weights are rebuilt
    /// from the packed ones on first use.
    Candle,
    /// The CPU fast path (model with packed weights, input on the CPU).
    Fast,
}

impl ConvBackend {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "auto" => Ok(ConvBackend::Auto),
            "candle" => Ok(ConvBackend::Candle),
            "fast" => Ok(ConvBackend::Fast),
            o => Err(DspnetError::InvalidArgument(format!(
                "unknown convolution backend '{o}' (expected auto, candle or fast)"
            ))),
        }
    }
}

/// Wall time per kind of work in one forward pass (see [`Backbone::forward_profiled`]).
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// (category, seconds), in first-seen order.
    pub entries: Vec<(&'static str, f64)>,
}

impl Profile {
    fn add(&mut self, name: &'static str, since: Instant) {
        let s = since.elapsed().as_secs_f64();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 += s,
            None => self.entries.push((name, s)),
        }
    }
    pub fn total(&self) -> f64 {
        self.entries.iter().map(|e| e.1).sum()
    }
}

/// Time `f` into `prof` under `name` (no clock read without a profile).
fn timed<T>(prof: &mut Option<&mut Profile>, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match prof {
        Some(p) => {
            let t = Instant::now();
            let r = f()?;
            p.add(name, t);
            Ok(r)
        }
        None => f(),
    }
}

/// Called with (bottleneck index, output) after each bottleneck.
type BlockHook<'a> = &'a mut dyn FnMut(usize, &Tensor);

/// candle's view of a convolution: weight [O, I, kh, kw] and bias [1, O, 1, 1].
struct CandleConv {
    weight: Tensor,
    bias: Option<Tensor>,
}

/// A convolution with its BatchNorm folded in (or a plain projection with optional bias).
struct FoldedConv {
    /// Set at load time off the CPU; on the CPU rebuilt from `packed` when candle is asked for.
    candle: OnceLock<CandleConv>,
    /// The CPU fast path's weights (CPU only).
    packed: Option<PackedConv>,
    has_bias: bool,
    stride: usize,
    padding: usize,
    dilation: usize,
    /// Profile category.
    kind: &'static str,
}

impl FoldedConv {
    /// From f32 weight [O, I, kh, kw] and bias [O] on the CPU: packed for the fast path when `pack`,
    /// candle tensors on `device` otherwise.
    fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
        dilation: usize,
        device: &Device,
        pack: bool,
    ) -> Result<Self> {
        let (o, i, kh, kw) = weight.dims4()?;
        let kind = match (kh, kw) {
            (1, 1) => "conv 1x1",
            (3, 3) => "conv 3x3",
            _ => "stem conv",
        };
        let has_bias = bias.is_some();
        let candle = OnceLock::new();
        let packed = if pack {
            let w = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let b = bias.as_ref().map(|b| b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()).transpose()?;
            Some(PackedConv::new(&w, b.as_deref(), o, i, kh, kw, stride, padding, dilation)?)
        } else {
            let bias = bias.map(|b| b.to_dtype(DType::F32)?.reshape((1, o, 1, 1))?.to_device(device)).transpose()?;
            let _ = candle.set(CandleConv { weight: weight.to_dtype(DType::F32)?.to_device(device)?, bias });
            None
        };
        Ok(FoldedConv { candle, packed, has_bias, stride, padding, dilation, kind })
    }

    fn with_kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    fn candle(&self) -> Result<&CandleConv> {
        if let Some(c) = self.candle.get() {
            return Ok(c);
        }
        let p = self.packed.as_ref().ok_or_else(|| DspnetError::Shape("convolution has no weights".into()))?;
        let (o, i, kh, kw) = p.dims();
        let weight = Tensor::from_vec(p.unpacked_weight(), (o, i, kh, kw), &Device::Cpu)?;
        let bias =
            if self.has_bias { Some(Tensor::from_vec(p.unpacked_bias(), (1, o, 1, 1), &Device::Cpu)?) } else { None };
        let _ = self.candle.set(CandleConv { weight, bias });
        Ok(self.candle.get().expect("just set"))
    }

    /// The weight as candle sees it (for derived convolutions).
    fn weight_tensor(&self) -> Result<Tensor> {
        Ok(self.candle()?.weight.clone())
    }

    fn bias_tensor(&self) -> Result<Option<Tensor>> {
        Ok(self.candle()?.bias.clone())
    }

    /// candle: conv2d + bias (profiled separately).
    fn forward(&self, x: &Tensor, prof: &mut Option<&mut Profile>) -> Result<Tensor> {
        let c = self.candle()?;
        let y = timed(prof, self.kind, || Ok(x.conv2d(&c.weight, self.padding, self.stride, self.dilation, 1)?))?;
        match &c.bias {
            Some(b) => timed(prof, "bias add", || Ok(y.broadcast_add(b)?)),
            None => Ok(y),
        }
    }

    /// Fast path: relu?(conv(x) + bias [+ residual]).
    fn forward_fast(
        &self,
        x: &Nhwc,
        residual: Option<Nhwc>,
        relu: bool,
        kern: KernelFn,
        prof: &mut Option<&mut Profile>,
    ) -> Result<Nhwc> {
        let p = self
            .packed
            .as_ref()
            .ok_or_else(|| DspnetError::InvalidArgument("the CPU fast path needs weights loaded on the CPU".into()))?;
        timed(prof, self.kind, || p.forward(x, residual, relu, kern))
    }
}

struct Bottleneck {
    conv1: FoldedConv,
    conv2: FoldedConv,
    conv3: FoldedConv,
    downsample: Option<FoldedConv>,
}

impl Bottleneck {
    fn forward(&self, x: &Tensor, prof: &mut Option<&mut Profile>) -> Result<Tensor> {
        let y = self.conv1.forward(x, prof)?;
        let y = timed(prof, "relu", || Ok(y.relu()?))?;
        let y = self.conv2.forward(&y, prof)?;
        let y = timed(prof, "relu", || Ok(y.relu()?))?;
        let y = self.conv3.forward(&y, prof)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, prof)?,
            None => x.clone(),
        };
        let y = timed(prof, "residual add", || Ok((y + shortcut)?))?;
        timed(prof, "relu", || Ok(y.relu()?))
    }

    /// Fast path; the input's buffer becomes the output when there is no downsample.
    fn forward_fast(&self, x: Nhwc, kern: KernelFn, prof: &mut Option<&mut Profile>) -> Result<Nhwc> {
        let y = self.conv1.forward_fast(&x, None, true, kern, prof)?;
        let y = self.conv2.forward_fast(&y, None, true, kern, prof)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward_fast(&x, None, false, kern, prof)?,
            None => x,
        };
        self.conv3.forward_fast(&y, Some(shortcut), true, kern, prof)
    }
}

/// Outputs of the stages, for parity tests and debugging.
pub struct StageOutputs {
    pub stem: Tensor,
    /// layer1.. outputs (3 or 4 entries, depending on the feature source).
    pub layers: Vec<Tensor>,
    pub features: Tensor,
}

/// The learned encoder: ResNet stem, layers, projection.
pub struct Backbone {
    /// conv1 for 3-channel input, as stored.
    stem_rgb: FoldedConv,
    /// conv1 with its 3 input channels summed: DSPNet feeds the grey slice replicated to 3 identical
    /// channels, so a 1-channel convolution with summed kernels computes the same thing 3x cheaper.
    stem_grey: FoldedConv,
    layers: Vec<Vec<Bottleneck>>,
    projection: FoldedConv,
    feature_source: FeatureSource,
    /// Whether the weights are packed for the CPU fast path (see [`use_fast_path`]).
    packed: bool,
    kernel: KernelFn,
}

/// Take a named tensor out of the map (it was validated by the loader).
fn take(tensors: &HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    tensors.get(name).cloned().ok_or_else(|| DspnetError::ModelFormat(format!("missing tensor {name}")))
}

/// Fold `bn` (eval mode) into conv `weight`: (weight [O, I, kh, kw], bias [O]), computed in f64 on the CPU
/// and rounded once to f32.
pub(crate) fn fold_batchnorm(tensors: &HashMap<String, Tensor>, conv: &str, bn: &str) -> Result<(Tensor, Tensor)> {
    let w = take(tensors, &format!("{conv}.weight"))?.to_dtype(DType::F64)?;
    let gamma = take(tensors, &format!("{bn}.weight"))?.to_dtype(DType::F64)?;
    let beta = take(tensors, &format!("{bn}.bias"))?.to_dtype(DType::F64)?;
    let mean = take(tensors, &format!("{bn}.running_mean"))?.to_dtype(DType::F64)?;
    let var = take(tensors, &format!("{bn}.running_var"))?.to_dtype(DType::F64)?;
    let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
    let weight = w.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
    let bias = (beta - (mean * &scale)?)?;
    Ok((weight.to_dtype(DType::F32)?, bias.to_dtype(DType::F32)?))
}

/// A convolution of the architecture table with its BatchNorm folded in, on `device` (packed for the
/// fast path when `pack`).
fn fold(tensors: &HashMap<String, Tensor>, spec: &ConvSpec, device: &Device, pack: bool) -> Result<FoldedConv> {
    let (weight, bias) = fold_batchnorm(tensors, &spec.name, &spec.batchnorm)?;
    FoldedConv::new(weight, Some(bias), spec.stride, spec.padding, spec.dilation, device, pack)
}

/// Whether a model loaded on `device` packs its weights for the CPU fast path: on the CPU when this CPU
/// has the SIMD kernel (x86-64 with AVX2+FMA); `DSPNET_CPU_CONV=candle` or `=fast` overrides.
fn use_fast_path(device: &Device) -> bool {
    device.is_cpu()
        && match std::env::var("DSPNET_CPU_CONV").as_deref() {
            Ok("candle") => false,
            Ok("fast") => true,
            _ => conv::has_simd_kernel(),
        }
}

impl Backbone {
    /// Build from validated weights (crate's own names), folding BatchNorm.
    pub fn new(config: &ModelConfig, tensors: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let pack = use_fast_path(device);
        let stem_spec = config.stem();
        let stem = fold(tensors, &stem_spec, &Device::Cpu, false)?;
        let (stem_w, stem_b) = (stem.weight_tensor()?, stem.bias_tensor()?.map(|b| b.flatten_all()).transpose()?);
        let (s, p, d) = (stem_spec.stride, stem_spec.padding, stem_spec.dilation);
        let stem_grey = FoldedConv::new(stem_w.sum_keepdim(1)?, stem_b.clone(), s, p, d, device, pack)?;
        let stem_rgb = FoldedConv::new(stem_w, stem_b, s, p, d, device, pack)?;
        let mut layers: Vec<Vec<Bottleneck>> = Vec::new();
        for spec in config.bottlenecks()? {
            if spec.index == 0 {
                layers.push(Vec::new());
            }
            let downsample = match &spec.downsample {
                Some(d) => Some(fold(tensors, d, device, pack)?.with_kind("downsample 1x1")),
                None => None,
            };
            layers.last_mut().expect("every layer starts at index 0").push(Bottleneck {
                conv1: fold(tensors, &spec.conv1, device, pack)?,
                conv2: fold(tensors, &spec.conv2, device, pack)?,
                conv3: fold(tensors, &spec.conv3, device, pack)?,
                downsample,
            });
        }
        let proj_w = take(tensors, "projection.weight")?.to_dtype(DType::F32)?;
        let proj_b =
            if config.projection_bias { Some(take(tensors, "projection.bias")?.to_dtype(DType::F32)?) } else { None };
        let projection = FoldedConv::new(proj_w, proj_b, 1, 0, 1, device, pack)?.with_kind("projection 1x1");
        Ok(Backbone {
            stem_rgb: stem_rgb.with_kind("stem conv"),
            stem_grey: stem_grey.with_kind("stem conv"),
            layers,
            projection,
            feature_source: config.feature_source,
            packed: pack,
            kernel: conv::kernel_for_this_cpu(),
        })
    }

    pub fn feature_source(&self) -> FeatureSource {
        self.feature_source
    }

    /// The implementation `backend` resolves to for input on `device`.
    pub fn resolve_backend(&self, backend: ConvBackend, device: &Device) -> ConvBackend {
        match backend {
            ConvBackend::Auto if self.packed && device.is_cpu() => ConvBackend::Fast,
            ConvBackend::Auto => ConvBackend::Candle,
            b => b,
        }
    }

    /// The CPU fast path's configuration, for reports (None when the weights are not packed for it).
    pub fn fast_path_info(&self) -> Option<String> {
        self.packed.then(conv::describe)
    }

    fn stem_conv(&self, c: usize) -> Result<&FoldedConv> {
        match c {
            1 => Ok(&self.stem_grey),
            3 => Ok(&self.stem_rgb),
            c => Err(DspnetError::Shape(format!("backbone input has {c} channels; expected 1 (grey) or 3"))),
        }
    }

    /// conv1 → BN → ReLU → 3x3/2 max-pool (pad 1).
    fn stem(&self, x: &Tensor, prof: &mut Option<&mut Profile>) -> Result<Tensor> {
        let y = self.stem_conv(x.dim(1)?)?.forward(x, prof)?;
        timed(prof, "stem relu+pool", || {
            let y = y.relu()?;
            // Zero padding is exact here: after the ReLU every value is ≥ 0 and each window holds at least
            // one real value, so a 0 never wins the max unless a real 0 would.
            let y = y.pad_with_zeros(D::Minus2, 1, 1)?.pad_with_zeros(D::Minus1, 1, 1)?;
            Ok(y.max_pool2d_with_stride(3, 2)?)
        })
    }

    /// Input [B, 1 or 3, H, W] → features [B, C, H/8, W/8].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, ConvBackend::Auto)
    }

    /// As [`forward`](Self::forward) with a chosen implementation.
    pub fn forward_with(&self, x: &Tensor, backend: ConvBackend) -> Result<Tensor> {
        Ok(self.run(x, backend, None, None)?.features)
    }

    /// As [`forward_with`](Self::forward_with), also returning the wall time per kind of work.
    pub fn forward_profiled(&self, x: &Tensor, backend: ConvBackend) -> Result<(Tensor, Profile)> {
        let mut prof = Profile::default();
        let out = self.run(x, backend, None, Some(&mut prof))?;
        Ok((out.features, prof))
    }

    /// As [`forward`](Self::forward), keeping every stage and calling `on_block(index, output)` after each
    /// bottleneck (index counts from 0 over all layers).
    pub fn forward_traced(&self, x: &Tensor, on_block: impl FnMut(usize, &Tensor)) -> Result<StageOutputs> {
        self.forward_traced_with(x, ConvBackend::Auto, on_block)
    }

    /// As [`forward_traced`](Self::forward_traced) with a chosen implementation.
    pub fn forward_traced_with(
        &self,
        x: &Tensor,
        backend: ConvBackend,
        mut on_block: impl FnMut(usize, &Tensor),
    ) -> Result<StageOutputs> {
        self.run(x, backend, Some(&mut on_block), None)
    }

    /// Bottlenecks over all built layers (layer1 first).
    pub fn num_blocks(&self) -> usize {
        self.layers.iter().map(Vec::len).sum()
    }

    /// The stem and the first `blocks` bottlenecks only: input [B, 1 or 3, H, W] → that bottleneck's
    /// output [B, channels, H/8, W/8] (for training, where the rest of the network is trained).
    pub fn forward_prefix(&self, x: &Tensor, blocks: usize) -> Result<Tensor> {
        if blocks > self.num_blocks() {
            return Err(DspnetError::InvalidArgument(format!(
                "the backbone has {} bottlenecks, not {blocks}",
                self.num_blocks()
            )));
        }
        let mut prof = None;
        match self.resolve_backend(ConvBackend::Auto, x.device()) {
            ConvBackend::Fast => {
                let (b, c, h, w) = x.dims4()?;
                let v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let y = self.stem_conv(c)?.forward_fast(
                    &Nhwc::from_nchw(&v, b, c, h, w),
                    None,
                    true,
                    self.kernel,
                    &mut prof,
                )?;
                let mut y = conv::max_pool_3x3s2(&y);
                for block in self.layers.iter().flatten().take(blocks) {
                    y = block.forward_fast(y, self.kernel, &mut prof)?;
                }
                Ok(Tensor::from_vec(y.to_nchw(), (y.n, y.c, y.h, y.w), &Device::Cpu)?)
            }
            _ => {
                let mut y = self.stem(x, &mut prof)?;
                for block in self.layers.iter().flatten().take(blocks) {
                    y = block.forward(&y, &mut prof)?;
                }
                Ok(y)
            }
        }
    }

    fn run(
        &self,
        x: &Tensor,
        backend: ConvBackend,
        trace: Option<BlockHook>,
        mut prof: Option<&mut Profile>,
    ) -> Result<StageOutputs> {
        match self.resolve_backend(backend, x.device()) {
            ConvBackend::Fast => self.run_fast(x, trace, prof),
            _ => {
                let traced = trace.is_some();
                let mut trace = trace;
                let stem = self.stem(x, &mut prof)?;
                let mut y = stem.clone();
                let mut layers = Vec::new();
                let mut index = 0;
                for layer in &self.layers {
                    for block in layer {
                        y = block.forward(&y, &mut prof)?;
                        if let Some(f) = trace.as_mut() {
                            f(index, &y);
                        }
                        index += 1;
                    }
                    if traced {
                        layers.push(y.clone());
                    }
                }
                let features = self.projection.forward(&y, &mut prof)?;
                Ok(StageOutputs { stem, layers, features })
            }
        }
    }

    fn run_fast(
        &self,
        x: &Tensor,
        mut trace: Option<BlockHook>,
        mut prof: Option<&mut Profile>,
    ) -> Result<StageOutputs> {
        if !x.device().is_cpu() || !self.packed {
            return Err(DspnetError::InvalidArgument(
                "the CPU fast path needs a model loaded on the CPU with packed weights (x86-64 with AVX2+FMA, or DSPNET_CPU_CONV=fast) and input on the CPU".into(),
            ));
        }
        let kern = self.kernel;
        let to_tensor =
            |a: &Nhwc| -> Result<Tensor> { Ok(Tensor::from_vec(a.to_nchw(), (a.n, a.c, a.h, a.w), &Device::Cpu)?) };
        let (b, c, h, w) = x.dims4()?;
        let stem_conv = self.stem_conv(c)?;
        let input = timed(&mut prof, "layout", || {
            let v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok(Nhwc::from_nchw(&v, b, c, h, w))
        })?;
        let y = stem_conv.forward_fast(&input, None, true, kern, &mut prof)?;
        drop(input);
        let mut y = timed(&mut prof, "stem relu+pool", || Ok(conv::max_pool_3x3s2(&y)))?;
        let traced = trace.is_some();
        let stem = if traced { to_tensor(&y)? } else { Tensor::zeros(0, DType::F32, &Device::Cpu)? };
        let mut layers = Vec::new();
        let mut index = 0;
        for layer in &self.layers {
            for block in layer {
                y = block.forward_fast(y, kern, &mut prof)?;
                if let Some(f) = trace.as_mut() {
                    f(index, &to_tensor(&y)?);
                }
                index += 1;
            }
            if traced {
                layers.push(to_tensor(&y)?);
            }
        }
        let f = self.projection.forward_fast(&y, None, false, kern, &mut prof)?;
        let features = timed(&mut prof, "layout", || to_tensor(&f))?;
        Ok(StageOutputs { stem, layers, features })
    }
}
