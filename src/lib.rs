//! libdspnet: few-shot medical image segmentation with DSPNet (Tang et al., arXiv 2406.18074).
//!
//! The pipeline, one module per stage:
//! - [`config`]: what a weight file declares — the architecture table, tensor names, metadata;
//! - [`weights`]: safetensors loading (official or own tensor names), PyTorch checkpoint conversion,
//!   the deterministic synthetic-weight generator;
//! - [`model::backbone`]: dilated ResNet (output stride 8) with BatchNorm folded at load time, and the
//!   1x1 projection to 256 channels;
//! - [`model::prototypes`]: the parameter-free head (seeds, RAN, SpCenterIter clustering, FSPA, BCMA,
//!   cosine-prototype scoring), built once per support slice and applied to any number of queries;
//! - [`model::Model`]: ties them together on a candle device;
//! - [`train`]: self-supervised fine-tuning on unlabelled scans (superpixel episodes).

pub mod capi;
pub mod config;
pub mod error;
pub mod io;
pub mod model;
pub mod train;
pub mod util;
pub mod volume;
pub mod weights;

pub use error::{DspnetError, Result};
