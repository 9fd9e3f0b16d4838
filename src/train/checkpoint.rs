//! Resumable training state: trained parameters, momentum buffers, step and random-stream position in
//! one safetensors file, written atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use safetensors::SafeTensors;

use super::net::TrainableNet;
use super::rng::Rng;
use super::Trainer;
use crate::{DspnetError, Result};

const FORMAT: &str = "dspnet-train-checkpoint";

/// FNV-1a over the bits of the initial trained tensors.
pub fn fingerprint(net: &TrainableNet) -> Result<u64> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (_, shape, values) in net.export()? {
        for x in shape.iter().map(|&d| d as u32).chain(values.iter().map(|v| v.to_bits())) {
            for b in x.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    Ok(h)
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
}

impl Trainer {
    /// Save the training state after [`step`](Trainer::step) steps; `slices` is the data set size.
    pub fn save_checkpoint(&self, path: &Path, slices: usize) -> Result<()> {
        let mut tensors = BTreeMap::new();
        let mut shapes = HashMap::new();
        for ((name, var), buf) in self.net.vars().into_iter().zip(&self.sgd.buffers) {
            shapes.insert(name.clone(), var.dims().to_vec());
            shapes.insert(format!("momentum/{name}"), var.dims().to_vec());
            tensors.insert(name.clone(), values(var.as_tensor())?);
            tensors.insert(format!("momentum/{name}"), values(buf)?);
        }
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("rng_state".to_string(), self.rng.state().to_string()),
            ("seed".to_string(), self.opts.seed.to_string()),
            ("trainable_blocks".to_string(), self.opts.trainable_blocks.to_string()),
            ("init_fingerprint".to_string(), format!("{:016x}", self.fingerprint)),
            ("slices".to_string(), slices.to_string()),
        ]);
        crate::weights::save_safetensors_raw(path, &tensors, &shapes, metadata)
    }

    /// Continue from a checkpoint written by the same run (same initial weights, trained blocks, seed
    /// and data set size).
    pub fn load_checkpoint(&mut self, path: &Path, slices: usize) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| DspnetError::io(path, e))?;
        let bad = |m: String| DspnetError::ModelFormat(format!("{}: {m}", path.display()));
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a checkpoint ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad("not a dspnet training checkpoint".into()));
        }
        let get = |k: &str| meta.get(k).cloned().ok_or_else(|| bad(format!("metadata '{k}' missing")));
        let expect = |k: &str, want: String, what: &str| -> Result<()> {
            let have = get(k)?;
            if have != want {
                return Err(bad(format!(
                    "was written with {what} {have}, this run has {want}; resume with the same settings"
                )));
            }
            Ok(())
        };
        expect("init_fingerprint", format!("{:016x}", self.fingerprint), "initial weights")?;
        expect("trainable_blocks", self.opts.trainable_blocks.to_string(), "--trainable-blocks")?;
        expect("seed", self.opts.seed.to_string(), "--seed")?;
        expect("slices", slices.to_string(), "a training set of slices:")?;
        let step: usize = get("step")?.parse().map_err(|_| bad("bad step".into()))?;
        let rng: u64 = get("rng_state")?.parse().map_err(|_| bad("bad rng_state".into()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let load = |name: &str, like: &Tensor| -> Result<Tensor> {
            let view = st.tensor(name).map_err(|_| bad(format!("tensor '{name}' missing")))?;
            if view.dtype() != safetensors::Dtype::F32 || view.shape() != like.dims() {
                return Err(bad(format!(
                    "tensor '{name}' is {:?} {:?}, expected F32 {:?}",
                    view.dtype(),
                    view.shape(),
                    like.dims()
                )));
            }
            Ok(Tensor::from_raw_buffer(view.data(), candle_core::DType::F32, view.shape(), like.device())?)
        };
        let mut buffers = Vec::new();
        for (name, var) in self.net.vars() {
            var.set(&load(&name, var.as_tensor())?)?;
            buffers.push(load(&format!("momentum/{name}"), var.as_tensor())?);
        }
        self.sgd.buffers = buffers;
        self.step = step;
        self.rng = Rng::from_state(rng);
        Ok(())
    }
}
