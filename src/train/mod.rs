//! Self-supervised fine-tuning (docs/model.md, 'Training'; SSL-ALPNet's recipe as DSPNet trains): episodes are built from
//! superpixel pseudo-labels of unlabelled slices, support and query being two random augmentations of the
//! same slice and superpixel; the loss is the weighted cross-entropy of the query prediction plus the
//! prototype-alignment loss (roles swapped); SGD with momentum.
//!
//! Pipeline, one file per stage: [`data`] (normalised canvas slices + [`superpixels`]), [`augment`],
//! [`net`] (the trained suffix of the network), the head of [`crate::model::prototypes`] (differentiable
//! when gradients are tracked), [`loss`], [`optim`], [`checkpoint`].
//!
//! Deviations from the reference, all for CPU training without PyTorch:
//! - only the last K bottlenecks of the feature layer and the projection are trained; the rest of the
//!   backbone runs frozen through the fast inference path;
//! - BatchNorm is folded (eval statistics) and its folded weight and bias are trained (see [`net`]);
//! - the FSPA cluster centres are constants per episode, as in the reference (computed without gradient);
//! - the alignment loss is 0 when the query prediction has no foreground pixel (nothing to align).

pub mod augment;
pub mod checkpoint;
pub mod data;
pub mod loss;
pub mod net;
pub mod optim;
pub mod rng;
pub mod superpixels;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::model::backbone::Backbone;
use crate::model::prototypes::{labels_from_logits, upsample_logits, HeadOptions, SupportEpisode, FEATURE_STRIDE};
use crate::volume::CANVAS;
use crate::weights::{self, ModelWeights, CALIBRATION_NAME};
use crate::{DspnetError, Result};
use augment::{augment, AugmentOptions};
use data::TrainingSlice;
use net::TrainableNet;
use optim::Sgd;
use rng::Rng;

/// Hyper-parameters of a run; [`Default`] is the reference's recipe with K = 2 trained bottlenecks.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Bottlenecks of the feature layer trained (0 = projection only).
    pub trainable_blocks: usize,
    pub lr: f64,
    /// The learning rate is multiplied by `lr_decay` every `lr_decay_every` steps.
    pub lr_decay: f64,
    pub lr_decay_every: usize,
    pub momentum: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// The head in training: 4×4 local pooling (docs/model.md, 'Training').
    pub head: HeadOptions,
    pub augment: AugmentOptions,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            trainable_blocks: 2,
            lr: 1e-3,
            lr_decay: 0.95,
            lr_decay_every: 1000,
            momentum: 0.9,
            weight_decay: 5e-4,
            seed: 1234,
            head: HeadOptions { local_pool: 4, ..HeadOptions::default() },
            augment: AugmentOptions::default(),
        }
    }
}

/// One training episode on the canvas: support and query image with their binary masks.
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    pub support_image: Vec<f32>,
    pub support_mask: Vec<u8>,
    pub query_image: Vec<f32>,
    pub query_mask: Vec<u8>,
}

/// Loss values of one episode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Losses {
    pub loss: f32,
    pub l_seg: f32,
    pub l_reg: f32,
}

/// A fine-tuning run: frozen backbone prefix, trained suffix, optimiser state, random stream, step.
pub struct Trainer {
    init: ModelWeights,
    backbone: Backbone,
    net: TrainableNet,
    sgd: Sgd,
    rng: Rng,
    step: usize,
    opts: TrainOptions,
    device: Device,
    /// Identifies the initial trained tensors, so a checkpoint is not resumed on other weights.
    fingerprint: u64,
}

impl Trainer {
    pub fn new(init: ModelWeights, opts: TrainOptions, device: &Device) -> Result<Self> {
        let backbone = Backbone::new(&init.config, &init.tensors, device)?;
        let net = TrainableNet::new(&init.config, &init.tensors, opts.trainable_blocks, device)?;
        let vars: Vec<_> = net.vars().into_iter().map(|(_, v)| v).collect();
        let sgd = Sgd::new(&vars, opts.momentum, opts.weight_decay)?;
        let fingerprint = checkpoint::fingerprint(&net)?;
        Ok(Trainer {
            init,
            backbone,
            net,
            sgd,
            rng: Rng::new(opts.seed),
            step: 0,
            opts,
            device: device.clone(),
            fingerprint,
        })
    }

    /// Steps completed.
    pub fn step(&self) -> usize {
        self.step
    }

    pub fn options(&self) -> &TrainOptions {
        &self.opts
    }

    /// Number of trained parameters.
    pub fn trained_parameters(&self) -> usize {
        self.net.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The learning rate of the next step.
    pub fn learning_rate(&self) -> f64 {
        optim::learning_rate(self.opts.lr, self.opts.lr_decay, self.opts.lr_decay_every, self.step)
    }

    /// Draw an episode: a random slice, one of its superpixels, two augmentations. Draws whose support
    /// mask vanishes under the augmentation are redrawn.
    pub fn sample_episode(&mut self, slices: &[TrainingSlice]) -> Result<Episode> {
        if slices.is_empty() {
            return Err(DspnetError::InvalidArgument("no training slice".into()));
        }
        for _ in 0..100 {
            let s = &slices[self.rng.below(slices.len())];
            let id = 1 + self.rng.below(s.count) as u16;
            let mask: Vec<u8> = s.superpixels.iter().map(|&l| u8::from(l == id)).collect();
            let (support_image, support_mask) = augment(&s.image, &mask, CANVAS, &self.opts.augment, &mut self.rng);
            let (query_image, query_mask) = augment(&s.image, &mask, CANVAS, &self.opts.augment, &mut self.rng);
            if support_mask.contains(&1) {
                return Ok(Episode { support_image, support_mask, query_image, query_mask });
            }
        }
        Err(DspnetError::InvalidArgument(
            "100 episode draws in a row had an empty support mask; are the superpixels tiny?".into(),
        ))
    }

    /// (L_seg, L_reg) of an episode, differentiable with respect to the trained parameters.
    fn forward(&self, ep: &Episode) -> Result<(Tensor, Tensor)> {
        let n = CANVAS * CANVAS;
        for (what, len) in [
            ("support image", ep.support_image.len()),
            ("support mask", ep.support_mask.len()),
            ("query image", ep.query_image.len()),
            ("query mask", ep.query_mask.len()),
        ] {
            if len != n {
                return Err(DspnetError::Shape(format!("episode {what} has {len} values, expected {CANVAS}x{CANVAS}")));
            }
        }
        let x = Tensor::from_vec(
            [ep.support_image.as_slice(), &ep.query_image].concat(),
            (2, 1, CANVAS, CANVAS),
            &self.device,
        )?;
        // A backbone trained on transposed slices sees them transposed here too, as in Model::encode.
        let transpose = self.init.config.transpose_slices;
        let x = if transpose { x.transpose(2, 3)?.contiguous()? } else { x };
        let prefix = self.backbone.forward_prefix(&x, self.net.prefix_blocks())?.to_device(&self.device)?;
        let features = self.net.forward(&prefix)?; // [C, 2, h, w]
        let features = if transpose { features.transpose(2, 3)?.contiguous()? } else { features };
        let fs = features.narrow(1, 0, 1)?.squeeze(1)?;
        let fq = features.narrow(1, 1, 1)?.squeeze(1)?;

        let episode = SupportEpisode::new(&fs, &ep.support_mask, CANVAS, CANVAS, &self.opts.head)?;
        let scores = episode.score(&fq)?; // [2, h, w]
        let l_seg =
            loss::cross_entropy(&upsample_logits(&scores, CANVAS, CANVAS)?, &ep.query_mask, loss::SEG_CLASS_WEIGHTS)?;

        // Alignment: the query's predicted mask (argmax at feature resolution) as support, the support
        // scored; no superpixel seeds (the reference's `alignLoss` mode).
        let (_, h, w) = scores.dims3()?;
        let predicted = labels_from_logits(&scores)?;
        if !predicted.contains(&1) {
            return Ok((l_seg, Tensor::zeros((), candle_core::DType::F32, &self.device)?));
        }
        let canvas_mask: Vec<u8> = (0..h * FEATURE_STRIDE * w * FEATURE_STRIDE)
            .map(|p| {
                predicted[(p / (w * FEATURE_STRIDE) / FEATURE_STRIDE) * w + (p % (w * FEATURE_STRIDE)) / FEATURE_STRIDE]
            })
            .collect();
        let align_opts = HeadOptions { max_seeds: 0, ..self.opts.head.clone() };
        let align = SupportEpisode::new(&fq, &canvas_mask, h * FEATURE_STRIDE, w * FEATURE_STRIDE, &align_opts)?;
        let l_reg =
            loss::cross_entropy(&upsample_logits(&align.score(&fs)?, CANVAS, CANVAS)?, &ep.support_mask, [1.0, 1.0])?;
        Ok((l_seg, l_reg))
    }

    /// The losses of an episode under the current parameters, without training.
    pub fn evaluate(&self, ep: &Episode) -> Result<Losses> {
        let (l_seg, l_reg) = self.forward(ep)?;
        losses(&l_seg, &l_reg)
    }

    /// One SGD step on `ep`. An episode whose loss or gradient is not finite updates nothing (the
    /// reference skips faulty episodes) but still counts as a step; its loss is reported as NaN. A finite
    /// loss can have a non-finite gradient (a norm at exactly zero in the cosine scoring): applying it
    /// would turn every trained weight into NaN.
    pub fn train_step(&mut self, ep: &Episode) -> Result<Losses> {
        let (l_seg, l_reg) = self.forward(ep)?;
        let mut values = losses(&l_seg, &l_reg)?;
        if values.loss.is_finite() {
            let grads = (l_seg + l_reg)?.backward()?;
            let vars: Vec<_> = self.net.vars().into_iter().map(|(_, v)| v).collect();
            let mut finite = true;
            for v in &vars {
                if let Some(g) = grads.get(v.as_tensor()) {
                    finite &= g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?.is_finite();
                }
            }
            if finite {
                let lr = self.learning_rate();
                self.sgd.step(&vars, &grads, lr)?;
            } else {
                values.loss = f32::NAN;
            }
        }
        self.step += 1;
        Ok(values)
    }

    /// Write the model: the initial weights with the trained tensors replaced (every other tensor, the
    /// optional `cls_unit.cal` and the metadata kept), atomically. `stored` gives the dtype each tensor
    /// had in the initial file (see [`weights::stored_dtypes`]): a half-precision model stays one, and
    /// untouched tensors round-trip exactly; anything not listed is written as f32.
    pub fn save_model(
        &self,
        path: &Path,
        extra_metadata: &HashMap<String, String>,
        stored: &HashMap<String, candle_core::DType>,
    ) -> Result<()> {
        let dtype_of = |name: &str| stored.get(name).copied().unwrap_or(candle_core::DType::F32);
        let mut tensors = BTreeMap::new();
        for (name, t) in &self.init.tensors {
            tensors.insert(name.clone(), t.to_dtype(dtype_of(name))?);
        }
        if let Some(cal) = &self.init.calibration {
            tensors.insert(CALIBRATION_NAME.to_string(), cal.clone());
        }
        for (name, shape, values) in self.net.export()? {
            let t = Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype_of(&name))?;
            tensors.insert(name, t);
        }
        let mut metadata = self.init.metadata.clone();
        for k in self.init.config.to_metadata().keys() {
            metadata.remove(k);
        }
        metadata.extend(extra_metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        weights::save_safetensors_mixed(path, &self.init.config, &tensors, &metadata)
    }
}

fn losses(l_seg: &Tensor, l_reg: &Tensor) -> Result<Losses> {
    let l_seg = l_seg.to_device(&Device::Cpu)?.to_scalar::<f32>()?;
    let l_reg = l_reg.to_device(&Device::Cpu)?.to_scalar::<f32>()?;
    Ok(Losses { loss: l_seg + l_reg, l_seg, l_reg })
}
