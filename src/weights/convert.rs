//! `dspnet convert`: official PyTorch checkpoints → safetensors with the crate's own names.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::DType;

use super::pth::read_checkpoint;
use super::{from_named_tensors, save_safetensors, CALIBRATION_NAME};
use crate::config::{canonical_name, ModelConfig, FORMAT_VERSION};
use crate::{DspnetError, Result};

/// What a conversion kept, dropped and found missing.
#[derive(Debug)]
pub struct ConversionReport {
    /// Tensors in the checkpoint.
    pub read: usize,
    /// Tensors written (crate's own names), `cls_unit.cal` included when present.
    pub kept: usize,
    /// Dead official keys (ASPP, BatchNorm counters) that were left out.
    pub dropped: Vec<String>,
    /// Whether the checkpoint had `cls_unit.cal` (stored, but ignored at inference unless asked for).
    pub has_calibration: bool,
    /// The architecture, when the file holds a complete model; otherwise why not.
    pub config: std::result::Result<ModelConfig, String>,
}

/// Convert `input` (a `torch.save` zip checkpoint, possibly nested under "model"/"state_dict") to
/// `output`. Every inference tensor is kept exactly (as f32); dead keys are dropped. An incomplete
/// checkpoint still converts (the report says what is missing, and loading it as a model will fail
/// with the list), so partial or foreign checkpoints can be inspected.
pub fn convert_checkpoint(input: &Path, output: &Path) -> Result<ConversionReport> {
    let raw = read_checkpoint(input)?;
    let mut report = ConversionReport {
        read: raw.len(),
        kept: 0,
        dropped: Vec::new(),
        has_calibration: false,
        config: Err("not validated".into()),
    };
    let mut named = Vec::new();
    for t in &raw {
        match canonical_name(&t.name) {
            None => report.dropped.push(t.name.clone()),
            Some(own) => {
                if t.name == CALIBRATION_NAME {
                    report.has_calibration = true;
                }
                named.push((own, t.to_float_tensor()?.to_dtype(DType::F32)?));
            }
        }
    }
    if named.is_empty() {
        return Err(DspnetError::ModelFormat(format!("{}: no DSPNet tensor in this checkpoint", input.display())));
    }
    // Validate as a model: on success the metadata declares the architecture.
    report.config = from_named_tensors(named.clone(), HashMap::new()).map(|w| w.config).map_err(|e| e.to_string());
    let mut values = BTreeMap::new();
    let mut shapes = HashMap::new();
    for (name, t) in named {
        shapes.insert(name.clone(), t.dims().to_vec());
        values.insert(name, t.flatten_all()?.to_vec1::<f32>()?);
    }
    report.kept = values.len();
    let mut extra = HashMap::from([(
        "source".to_string(),
        format!("converted from {}", input.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()),
    )]);
    match &report.config {
        Ok(config) => save_safetensors(output, config, &values, &shapes, &extra)?,
        Err(_) => {
            // No architecture to declare: write the tensors with the format marker only.
            extra.insert("complete".into(), "false".into());
            let mut meta = HashMap::from([
                ("format".to_string(), "dspnet".to_string()),
                ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ]);
            meta.extend(extra);
            super::save_safetensors_raw(output, &values, &shapes, meta)?;
        }
    }
    Ok(report)
}
