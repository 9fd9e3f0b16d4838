//! The DSPNet network: backbone + projection (learned) and the prototype head (parameter-free).

pub mod backbone;
mod conv;
pub mod projection;
pub mod prototypes;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::weights::{self, ModelWeights};
use crate::{DspnetError, Result};
use backbone::Backbone;

/// The configuration types live in [`crate::config`], below both the network and the weight loader;
/// re-exported here, where they were first published.
pub use crate::config;

/// The feature grid is the input divided by this (output stride of the dilated ResNet).
pub const OUTPUT_STRIDE: usize = 8;

/// Pick a compute device by name: "cpu", "cuda", "cuda:N", or `None`/"auto" for the best available.
pub fn device_from_name(name: Option<&str>) -> Result<Device> {
    let name = name.map(str::trim).unwrap_or("auto");
    match name {
        // The best available: the first GPU of a CUDA build when one opens, else the CPU (candle's
        // `cuda_if_available` only checks the build feature and fails without a working driver).
        "" | "auto" => Ok(Device::new_cuda(0).ok().filter(|_| cfg!(feature = "cuda")).unwrap_or(Device::Cpu)),
        "cpu" => Ok(Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal = match n.strip_prefix("cuda:") {
                None => 0,
                Some(i) => i
                    .parse::<usize>()
                    .map_err(|_| DspnetError::InvalidArgument(format!("bad device '{n}': expected cuda:N")))?,
            };
            if !cfg!(feature = "cuda") {
                return Err(DspnetError::BackendUnavailable(format!(
                    "device '{n}' requested, but this libdspnet was built without CUDA support (build with --features cuda)"
                )));
            }
            Device::new_cuda(ordinal)
                .map_err(|e| DspnetError::BackendUnavailable(format!("cannot open CUDA device {ordinal}: {e}")))
        }
        other => {
            Err(DspnetError::InvalidArgument(format!("unknown device '{other}' (expected cpu, cuda, cuda:N or auto)")))
        }
    }
}

/// A loaded DSPNet model on one device. Immutable after loading, so one model can serve many threads.
pub struct Model {
    config: ModelConfig,
    backbone: Backbone,
    device: Device,
    /// `cls_unit.cal` from the checkpoint, kept for the opt-in head option; never used by default.
    calibration: Option<Tensor>,
}

impl Model {
    /// Load a `.safetensors` weight file onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::from_weights(weights::load_safetensors(path)?, device)
    }

    pub fn from_weights(w: ModelWeights, device: &Device) -> Result<Self> {
        let backbone = Backbone::new(&w.config, &w.tensors, device)?;
        Ok(Model { config: w.config, backbone, device: device.clone(), calibration: w.calibration })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// The checkpoint's `cls_unit.cal`, if present (see [`prototypes::HeadOptions::calibration`]).
    pub fn checkpoint_calibration(&self) -> Option<&Tensor> {
        self.calibration.as_ref()
    }

    /// Encode a batch of normalised grey slices `[B, H, W]` (or `[B, 1, H, W]`) into features
    /// `[B, C, H/8, W/8]`. H and W must be multiples of 8; values must be finite.
    pub fn encode(&self, slices: &Tensor) -> Result<Tensor> {
        let x = check_slices(slices)?.to_device(&self.device)?;
        if self.config.transpose_slices {
            return Ok(self.backbone.forward(&x.transpose(2, 3)?.contiguous()?)?.transpose(2, 3)?.contiguous()?);
        }
        self.backbone.forward(&x)
    }

    /// Encode a batch of 2D slices given as a flat row-major buffer of `batch` slices of `height x width`.
    pub fn encode_slices(&self, data: &[f32], batch: usize, height: usize, width: usize) -> Result<Tensor> {
        let n = batch
            .checked_mul(height)
            .and_then(|v| v.checked_mul(width))
            .ok_or_else(|| DspnetError::Shape("slice batch size overflows".into()))?;
        if data.len() != n {
            return Err(DspnetError::Shape(format!(
                "{} values given for {batch} slices of {height}x{width}",
                data.len()
            )));
        }
        self.encode(&Tensor::from_slice(data, (batch, height, width), &Device::Cpu)?)
    }
}

/// Validate an input batch: rank, sizes multiple of the output stride, finite values. Returns [B,1,H,W] f32.
fn check_slices(slices: &Tensor) -> Result<Tensor> {
    let x = match slices.rank() {
        3 => slices.unsqueeze(1)?,
        4 if slices.dim(1)? == 1 || slices.dim(1)? == 3 => slices.clone(),
        _ => {
            return Err(DspnetError::Shape(format!(
                "slices must be [B, H, W] or [B, 1|3, H, W], got {:?}",
                slices.dims()
            )))
        }
    };
    let (b, _, h, w) = x.dims4()?;
    if b == 0 || h == 0 || w == 0 || h % OUTPUT_STRIDE != 0 || w % OUTPUT_STRIDE != 0 {
        return Err(DspnetError::Shape(format!(
            "slices are {b} x {h}x{w}; need at least one slice with height and width positive multiples of {OUTPUT_STRIDE}"
        )));
    }
    let x = x.to_dtype(DType::F32)?;
    if !x.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite()) {
        return Err(DspnetError::NonFinite("input slices contain NaN or infinite values".into()));
    }
    Ok(x)
}
