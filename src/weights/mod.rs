//! Weight files: strict safetensors loading (official or own tensor names), writing with architecture
//! metadata, conversion from PyTorch checkpoints, and the deterministic synthetic generator.

pub mod convert;
pub mod import;
pub mod pth;
pub mod synthetic;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;

use crate::config::{
    blocks_per_layer, canonical_name, depth_with_layer3_blocks, official_name, FeatureSource, InputNormalization,
    ModelConfig,
};
use crate::{DspnetError, Result};

/// A tensor as plain data: own name, shape, f32 values (row-major).
pub type NamedValues = (String, Vec<usize>, Vec<f32>);

/// File name of the default model inside a weights folder.
pub const DEFAULT_MODEL_FILE: &str = "dspnet-default.safetensors";

/// Where the default model is looked for, in order: `$DSPNET_WEIGHTS` (a file, or a folder holding
/// the default file), `<dir>/../share/dspnet/weights/` and `<dir>/weights/` for the directory of the
/// shared library holding this code (so C/C++ hosts find the model installed beside libdspnet) and of the
/// executable, and the source tree's `weights/` folder (for `cargo run` and tests).
pub fn default_model_candidates() -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("DSPNET_WEIGHTS") {
        let p = std::path::PathBuf::from(p);
        if p.is_dir() {
            out.push(p.join(DEFAULT_MODEL_FILE));
        } else {
            out.push(p);
        }
    }
    let exe_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
    for dir in [code_dir(), exe_dir].into_iter().flatten() {
        for c in
            [dir.join("../share/dspnet/weights").join(DEFAULT_MODEL_FILE), dir.join("weights").join(DEFAULT_MODEL_FILE)]
        {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("weights").join(DEFAULT_MODEL_FILE));
    out
}

/// The directory of the file (shared library or executable) that holds this code, from the process's
/// memory map. Linux only; None elsewhere or when the map cannot be read.
fn code_dir() -> Option<std::path::PathBuf> {
    #[cfg(target_os = "linux")]
    {
        let here = code_dir as *const () as usize;
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        for line in maps.lines() {
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let path = fields.nth(4).map(str::trim_start).unwrap_or("");
            let (lo, hi) = range.split_once('-')?;
            let (lo, hi) = (usize::from_str_radix(lo, 16).ok()?, usize::from_str_radix(hi, 16).ok()?);
            if (lo..hi).contains(&here) {
                if !path.starts_with('/') || path.ends_with(" (deleted)") {
                    return None;
                }
                return Path::new(path).parent().map(Path::to_path_buf);
            }
        }
        None
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The default model's path, or an error that says exactly where it was looked for.
pub fn default_model_path() -> Result<std::path::PathBuf> {
    let candidates = default_model_candidates();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let list: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        DspnetError::io(
            "default model",
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "not found (looked for {}); pass a weight file explicitly or set DSPNET_WEIGHTS",
                    list.join(", ")
                ),
            ),
        )
    })
}

/// Name of the (normally ignored) BCMA calibration matrix in official checkpoints.
pub const CALIBRATION_NAME: &str = "cls_unit.cal";

/// A model's weights in memory: f32 CPU tensors under the crate's own names, validated against the
/// architecture they declare. Cloning shares the tensor storage.
#[derive(Clone)]
pub struct ModelWeights {
    pub config: ModelConfig,
    pub tensors: HashMap<String, Tensor>,
    /// The checkpoint's `cls_unit.cal`, if it had one. The official inference never uses it (its loader
    /// reads the checkpoint before the classifier exists); the head only uses it when asked to.
    pub calibration: Option<Tensor>,
    /// Everything found in the file's safetensors metadata.
    pub metadata: HashMap<String, String>,
}

impl ModelWeights {
    /// Total number of parameters (BatchNorm statistics included).
    pub fn parameter_count(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }
}

/// Read a `.safetensors` weight file (memory-mapped), map official names to the crate's own, infer or
/// read the architecture, and check every tensor strictly.
pub fn load_safetensors(path: &Path) -> Result<ModelWeights> {
    let file = std::fs::File::open(path).map_err(|e| DspnetError::io(path, e))?;
    // SAFETY: the map is read-only and lives only during this call; a concurrent truncation of the file
    // by another process is the one hazard, as with every mmap reader.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| DspnetError::io(path, e))?;
    let bytes: &[u8] = &mmap;
    if bytes.starts_with(b"PK\x03\x04") {
        return Err(DspnetError::ModelFormat(format!(
            "{} is a PyTorch checkpoint, not safetensors: convert it with `dspnet convert {} -o model.safetensors`",
            path.display(),
            path.display()
        )));
    }
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| {
        DspnetError::ModelFormat(format!(
            "{} is not a valid safetensors file ({e}); is it truncated or of another format?",
            path.display()
        ))
    })?;
    let metadata: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| DspnetError::ModelFormat(format!("{}: invalid safetensors data: {e}", path.display())))?;
    let mut raw = Vec::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let t = tensor_from_view(&name, &view)?;
        raw.push((name, t));
    }
    from_named_tensors(raw, metadata).map_err(|e| match e {
        DspnetError::ModelFormat(m) => DspnetError::ModelFormat(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// The dtype each tensor is stored in, by the crate's own name (to keep it when rewriting a file).
pub fn stored_dtypes(path: &Path) -> Result<HashMap<String, DType>> {
    let file = std::fs::File::open(path).map_err(|e| DspnetError::io(path, e))?;
    // SAFETY: read-only map used only during this call (as in `load_safetensors`); only the header's
    // pages are touched, so a large model is not read again just for its dtypes.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| DspnetError::io(path, e))?;
    let st = SafeTensors::deserialize(&mmap)
        .map_err(|e| DspnetError::ModelFormat(format!("{}: invalid safetensors data: {e}", path.display())))?;
    Ok(st
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| {
            let dtype = match view.dtype() {
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                _ => DType::F32,
            };
            Some((canonical_name(&name)?, dtype))
        })
        .collect())
}

fn tensor_from_view(name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Tensor> {
    use safetensors::Dtype as S;
    let dtype = match view.dtype() {
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F64 => DType::F64,
        S::I64 => DType::I64,
        S::U8 => DType::U8,
        S::U32 => DType::U32,
        other => return Err(DspnetError::ModelFormat(format!("tensor '{name}' has unsupported dtype {other:?}"))),
    };
    let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)?;
    Ok(t)
}

/// Build validated weights from named tensors (official or own names) and the file's metadata.
pub fn from_named_tensors(raw: Vec<(String, Tensor)>, metadata: HashMap<String, String>) -> Result<ModelWeights> {
    if let Some(f) = metadata.get("format") {
        if f != "dspnet" {
            return Err(DspnetError::ModelFormat(format!("metadata declares format '{f}', not a DSPNet weight file")));
        }
    }
    if let Some(v) = metadata.get("format_version") {
        let v: u32 = v.parse().map_err(|_| DspnetError::ModelFormat(format!("bad format_version '{v}'")))?;
        if v > crate::config::FORMAT_VERSION {
            return Err(DspnetError::ModelFormat(format!(
                "format_version {v} is newer than this libdspnet understands ({}); upgrade libdspnet",
                crate::config::FORMAT_VERSION
            )));
        }
    }
    let n_in = raw.len();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut calibration = None;
    let mut first_names = Vec::new();
    for (name, t) in raw {
        if first_names.len() < 3 {
            first_names.push(name.clone());
        }
        if name == CALIBRATION_NAME {
            calibration = Some(t.to_dtype(DType::F32)?);
            continue;
        }
        let Some(own) = canonical_name(&name) else { continue };
        if t.dtype() == DType::I64 || t.dtype() == DType::U8 || t.dtype() == DType::U32 {
            return Err(DspnetError::ModelFormat(format!(
                "tensor '{name}' is an integer tensor; expected floating point"
            )));
        }
        if tensors.insert(own.clone(), t.to_dtype(DType::F32)?).is_some() {
            return Err(DspnetError::ModelFormat(format!(
                "tensor '{own}' appears twice (under an official and an own name)"
            )));
        }
    }
    if !tensors.keys().any(|k| k.starts_with("backbone.") || k.starts_with("projection.")) {
        return Err(DspnetError::ModelFormat(format!(
            "not a DSPNet weight file: none of its {n_in} tensors has a DSPNet name (first: {})",
            first_names.join(", ")
        )));
    }
    let config = config_from(&metadata, &tensors)?;
    check_strict(&config, &tensors)?;
    Ok(ModelWeights { config, tensors, calibration, metadata })
}

/// The architecture: from metadata where declared, otherwise inferred from the tensor names and shapes.
fn config_from(metadata: &HashMap<String, String>, tensors: &HashMap<String, Tensor>) -> Result<ModelConfig> {
    let bad = |k: &str, v: &str| DspnetError::ModelFormat(format!("metadata '{k}' has invalid value '{v}'"));
    let depth = match metadata.get("depth") {
        Some(v) => v.parse::<usize>().map_err(|_| bad("depth", v))?,
        None => {
            let layer3_blocks = tensors
                .keys()
                .filter_map(|k| k.strip_prefix("backbone.layer3.")?.split('.').next()?.parse::<usize>().ok())
                .max()
                .map_or(0, |m| m + 1);
            depth_with_layer3_blocks(layer3_blocks)?
        }
    };
    blocks_per_layer(depth)?;
    let feature_source = match metadata.get("feature_source").map(String::as_str) {
        Some("layer3") => FeatureSource::Layer3,
        Some("layer4") => FeatureSource::Layer4,
        Some(v) => return Err(bad("feature_source", v)),
        None if tensors.keys().any(|k| k.starts_with("backbone.layer4.")) => FeatureSource::Layer4,
        None => FeatureSource::Layer3,
    };
    let feature_channels = match metadata.get("feature_channels") {
        Some(v) => v.parse::<usize>().map_err(|_| bad("feature_channels", v))?,
        None => tensors.get("projection.weight").and_then(|t| t.dims().first().copied()).ok_or_else(|| {
            DspnetError::ModelFormat("missing tensor projection.weight (official name encoder.localconv.weight)".into())
        })?,
    };
    let projection_bias = match metadata.get("projection_bias").map(String::as_str) {
        Some("true") => true,
        Some("false") => false,
        Some(v) => return Err(bad("projection_bias", v)),
        None => tensors.contains_key("projection.bias"),
    };
    let input_normalization = match metadata.get("input_normalization") {
        Some(v) => InputNormalization::from_metadata(v)?,
        None => InputNormalization::Official,
    };
    let transpose_slices = match metadata.get("transpose_slices").map(String::as_str) {
        Some("true") => true,
        Some("false") | None => false,
        Some(v) => return Err(bad("transpose_slices", v)),
    };
    Ok(ModelConfig { depth, feature_source, feature_channels, projection_bias, input_normalization, transpose_slices })
}

/// Every expected tensor present with its shape, nothing else: list the offenders otherwise.
fn check_strict(config: &ModelConfig, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let expected = config.expected_tensors()?;
    let expected_names: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    for (name, shape) in &expected {
        match tensors.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.dims() != shape.as_slice() => {
                misshaped.push(format!("{name} is {:?}, expected {:?}", t.dims(), shape))
            }
            Some(_) => {}
        }
    }
    let mut unexpected: Vec<String> =
        tensors.keys().filter(|k| !expected_names.contains(k.as_str())).cloned().collect();
    unexpected.sort();
    if missing.is_empty() && misshaped.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    let list = |what: &str, v: &[String]| -> Option<String> {
        if v.is_empty() {
            return None;
        }
        let shown: Vec<&str> = v.iter().take(8).map(String::as_str).collect();
        let more = if v.len() > 8 { format!(" and {} more", v.len() - 8) } else { String::new() };
        Some(format!("{} {what}: {}{more}", v.len(), shown.join(", ")))
    };
    let parts: Vec<String> =
        [list("missing", &missing), list("unexpected", &unexpected), list("mis-shaped", &misshaped)]
            .into_iter()
            .flatten()
            .collect();
    Err(DspnetError::ModelFormat(format!(
        "tensors do not match a ResNet-{} DSPNet ({} features, {} projection bias): {}",
        config.depth,
        config.feature_source.as_str(),
        if config.projection_bias { "with" } else { "no" },
        parts.join("; ")
    )))
}

/// Write tensors (own names) with the configuration's metadata, atomically.
pub fn save_safetensors(
    path: &Path,
    config: &ModelConfig,
    tensors: &BTreeMap<String, Vec<f32>>,
    shapes: &HashMap<String, Vec<usize>>,
    extra_metadata: &HashMap<String, String>,
) -> Result<()> {
    let mut metadata = config.to_metadata();
    metadata.extend(extra_metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    save_safetensors_raw(path, tensors, shapes, metadata)
}

/// Write f32 tensors with exactly `metadata`, atomically.
pub fn save_safetensors_raw(
    path: &Path,
    tensors: &BTreeMap<String, Vec<f32>>,
    shapes: &HashMap<String, Vec<usize>>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, values) in tensors {
        let shape = shapes.get(name).cloned().unwrap_or_else(|| vec![values.len()]);
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, f32_bytes(values))
            .map_err(|e| DspnetError::ModelFormat(format!("tensor '{name}': {e}")))?;
        views.push((name.clone(), view));
    }
    crate::util::write_atomically(path, |tmp| {
        safetensors::serialize_to_file(views, Some(metadata), tmp)
            .map_err(|e| DspnetError::ModelFormat(format!("writing {}: {e}", path.display())))
    })
}

/// Write tensors (own names) in their own dtype (f32, f16 or bf16) with the configuration's metadata,
/// atomically.
pub fn save_safetensors_mixed(
    path: &Path,
    config: &ModelConfig,
    tensors: &BTreeMap<String, Tensor>,
    extra_metadata: &HashMap<String, String>,
) -> Result<()> {
    let mut metadata = config.to_metadata();
    metadata.extend(extra_metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let flat = t.flatten_all()?;
        let (dtype, bytes): (safetensors::Dtype, Vec<u8>) = match t.dtype() {
            DType::F32 => (safetensors::Dtype::F32, f32_bytes(&flat.to_vec1::<f32>()?).to_vec()),
            DType::F16 => (
                safetensors::Dtype::F16,
                flat.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
            ),
            DType::BF16 => (
                safetensors::Dtype::BF16,
                flat.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
            ),
            other => return Err(DspnetError::ModelFormat(format!("tensor '{name}': cannot store dtype {other:?}"))),
        };
        buffers.push((name.clone(), dtype, t.dims().to_vec(), bytes));
    }
    let mut views = Vec::with_capacity(buffers.len());
    for (name, dtype, shape, bytes) in &buffers {
        let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| DspnetError::ModelFormat(format!("tensor '{name}': {e}")))?;
        views.push((name.clone(), view));
    }
    crate::util::write_atomically(path, |tmp| {
        safetensors::serialize_to_file(views, Some(metadata), tmp)
            .map_err(|e| DspnetError::ModelFormat(format!("writing {}: {e}", path.display())))
    })
}

/// View f32 values as little-endian bytes (every supported target is little-endian; checked at compile time).
fn f32_bytes(values: &[f32]) -> &[u8] {
    const _: () = assert!(cfg!(target_endian = "little"), "libdspnet assumes a little-endian target");
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; the length is scaled exactly.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}

/// The synthetic model (docs/model.md, 'Parity tests') for `config`, in memory: named f32 values and shapes.
fn synthetic_values(config: &ModelConfig, seed: u64) -> Result<Vec<NamedValues>> {
    config
        .expected_tensors()?
        .into_iter()
        .map(|(name, shape)| {
            let values = synthetic::tensor_values(&official_name(&name), &shape, seed)
                .ok_or_else(|| DspnetError::InvalidArgument(format!("no generator values for {name}")))?;
            Ok((name, shape, values))
        })
        .collect()
}

/// A complete synthetic model for `config`, ready for [`crate::model::Model::from_weights`].
pub fn synthetic_weights(config: &ModelConfig, seed: u64) -> Result<ModelWeights> {
    let mut tensors = HashMap::new();
    for (name, shape, values) in synthetic_values(config, seed)? {
        tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    Ok(ModelWeights { config: config.clone(), tensors, calibration: None, metadata: config.to_metadata() })
}

/// Generate a complete synthetic model for `config` and write it to `path`.
pub fn write_synthetic(path: &Path, config: &ModelConfig, seed: u64) -> Result<()> {
    let mut tensors = BTreeMap::new();
    let mut shapes = HashMap::new();
    for (name, shape, values) in synthetic_values(config, seed)? {
        shapes.insert(name.clone(), shape);
        tensors.insert(name, values);
    }
    let extra = HashMap::from([
        ("description".to_string(), format!("synthetic weights (golden generator, seed {seed}); not a trained model")),
        ("synthetic_seed".to_string(), seed.to_string()),
    ]);
    save_safetensors(path, config, &tensors, &shapes, &extra)
}
