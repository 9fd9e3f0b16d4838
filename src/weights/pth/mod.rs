//! Reading official PyTorch checkpoints (`torch.save`, zip format of PyTorch ≥ 1.6) into plain
//! little-endian, C-contiguous tensors, without Python and without running any pickled code.
//!
//! A checkpoint is a zip archive (members stored uncompressed) with `<prefix>/data.pkl`, a pickle of
//! the saved object whose tensors refer to raw storages `<prefix>/data/<key>`, plus
//! `<prefix>/byteorder`, `<prefix>/version`, ... The prefix is whatever the file was called at save
//! time, so it is read from the archive. The archive is indexed by the `zip` crate, with a fallback
//! reader for layouts that crate rejects (see `archive.rs` for the `official_subset_zipedge.pth`
//! case); `data.pkl` is evaluated by a small, safe pickle interpreter (`unpickle.rs`).
//!
//! The state dict may be the saved object itself or sit under a `"model"`, `"state_dict"` or
//! `"model_state_dict"` key of a training checkpoint; other entries (optimizer state, epoch, meta,
//! ...) are skipped.

mod archive;
mod unpickle;

use crate::{DspnetError, Result};
use std::collections::HashMap;
use std::path::Path;
use unpickle::{Node, Pickle, StorageKind, TensorRef};

/// Element type of a checkpoint tensor (PyTorch's dtypes that have a storage class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PthDtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl PthDtype {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            PthDtype::F64 | PthDtype::I64 => 8,
            PthDtype::F32 | PthDtype::I32 => 4,
            PthDtype::F16 | PthDtype::BF16 | PthDtype::I16 => 2,
            PthDtype::I8 | PthDtype::U8 | PthDtype::Bool => 1,
        }
    }

    /// PyTorch's name without the `torch.` prefix (`"float32"`, `"int64"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PthDtype::F32 => "float32",
            PthDtype::F64 => "float64",
            PthDtype::F16 => "float16",
            PthDtype::BF16 => "bfloat16",
            PthDtype::I64 => "int64",
            PthDtype::I32 => "int32",
            PthDtype::I16 => "int16",
            PthDtype::I8 => "int8",
            PthDtype::U8 => "uint8",
            PthDtype::Bool => "bool",
        }
    }

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, PthDtype::F32 | PthDtype::F64 | PthDtype::F16 | PthDtype::BF16)
    }
}

impl std::fmt::Display for PthDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One named tensor of a checkpoint: `data` holds the elements little-endian, C-contiguous
/// (row-major), `shape.iter().product()` of them; a 0-d tensor has an empty shape and one element.
#[derive(Debug, Clone, PartialEq)]
pub struct PthTensor {
    pub name: String,
    pub dtype: PthDtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl PthTensor {
    /// The values as a CPU tensor of their own floating-point dtype; integer tensors are an error.
    pub fn to_float_tensor(&self) -> Result<candle_core::Tensor> {
        use candle_core::DType;
        let dtype = match self.dtype {
            PthDtype::F32 => DType::F32,
            PthDtype::F16 => DType::F16,
            PthDtype::BF16 => DType::BF16,
            PthDtype::F64 => DType::F64,
            other => {
                return Err(DspnetError::ModelFormat(format!(
                    "tensor '{}' has dtype {other:?}; expected floating point",
                    self.name
                )))
            }
        };
        Ok(candle_core::Tensor::from_raw_buffer(&self.data, dtype, &self.shape, &candle_core::Device::Cpu)?)
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    fn check_len(&self) -> Result<()> {
        let want = self.numel().checked_mul(self.dtype.size_in_bytes());
        if want != Some(self.data.len()) {
            return Err(DspnetError::Shape(format!(
                "tensor '{}' ({} {:?}) holds {} data bytes",
                self.name,
                self.dtype,
                self.shape,
                self.data.len()
            )));
        }
        Ok(())
    }

    /// The elements converted to f32 (exact for F32/F16/BF16, rounded for F64 and large integers;
    /// bool as 0/1).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        self.check_len()?;
        let d = &self.data;
        let v = match self.dtype {
            PthDtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            PthDtype::F64 => d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            PthDtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            PthDtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            PthDtype::I64 => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            PthDtype::I32 => d.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            PthDtype::I16 => d.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32).collect(),
            PthDtype::I8 => d.iter().map(|&b| b as i8 as f32).collect(),
            PthDtype::U8 => d.iter().map(|&b| b as f32).collect(),
            PthDtype::Bool => d.iter().map(|&b| (b != 0) as u8 as f32).collect(),
        };
        Ok(v)
    }

    /// A candle tensor with the same dtype and shape (int8 is widened to i16, bool becomes u8,
    /// since candle has no such dtypes).
    pub fn to_candle(&self, device: &candle_core::Device) -> Result<candle_core::Tensor> {
        use candle_core::DType;
        self.check_len()?;
        let (dtype, widened);
        let data: &[u8] = match self.dtype {
            PthDtype::F32 => {
                dtype = DType::F32;
                &self.data
            }
            PthDtype::F64 => {
                dtype = DType::F64;
                &self.data
            }
            PthDtype::F16 => {
                dtype = DType::F16;
                &self.data
            }
            PthDtype::BF16 => {
                dtype = DType::BF16;
                &self.data
            }
            PthDtype::I64 => {
                dtype = DType::I64;
                &self.data
            }
            PthDtype::I32 => {
                dtype = DType::I32;
                &self.data
            }
            PthDtype::I16 => {
                dtype = DType::I16;
                &self.data
            }
            PthDtype::U8 => {
                dtype = DType::U8;
                &self.data
            }
            PthDtype::I8 => {
                dtype = DType::I16;
                widened = self.data.iter().flat_map(|&b| (b as i8 as i16).to_le_bytes()).collect::<Vec<u8>>();
                &widened
            }
            PthDtype::Bool => {
                dtype = DType::U8;
                widened = self.data.iter().map(|&b| (b != 0) as u8).collect::<Vec<u8>>();
                &widened
            }
        };
        Ok(candle_core::Tensor::from_raw_buffer(data, dtype, &self.shape, device)?)
    }
}

/// Keys of a training checkpoint under which the state dict is looked for, in this order.
pub const NESTED_STATE_DICT_KEYS: [&str; 3] = ["model", "state_dict", "model_state_dict"];

/// Read every tensor of a `torch.save` zip checkpoint, in the order of the state dict.
///
/// The state dict may be the top-level object or nested under a `"model"` / `"state_dict"` /
/// `"model_state_dict"` key; other entries such as `"meta"`, `"optimizer"`, numbers and strings are
/// skipped. Views are made contiguous, shared storages are copied per tensor.
///
/// Errors: [`DspnetError::Io`] if the file cannot be read; [`DspnetError::ModelFormat`] for a legacy
/// (pre-1.6) or otherwise foreign file, a truncated or corrupt archive, a missing `data.pkl`, a
/// pickled model object instead of a state dict, a big-endian checkpoint, a storage record
/// pointing outside its data file, or a checkpoint without tensors. Messages start with the path.
pub fn read_checkpoint(path: &Path) -> Result<Vec<PthTensor>> {
    let bytes = std::fs::read(path).map_err(|e| DspnetError::io(path, e))?;
    read_checkpoint_bytes(&bytes).map_err(|e| match e {
        DspnetError::ModelFormat(m) => DspnetError::ModelFormat(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// [`read_checkpoint`] on the bytes of a checkpoint file already in memory.
pub fn read_checkpoint_bytes(bytes: &[u8]) -> Result<Vec<PthTensor>> {
    read_impl(bytes).map_err(DspnetError::ModelFormat)
}

const RESAVE_STATE_DICT: &str = "torch.save(model.state_dict(), path)";

fn read_impl(bytes: &[u8]) -> std::result::Result<Vec<PthTensor>, String> {
    if !bytes.starts_with(b"PK") {
        return Err(describe_non_zip(bytes));
    }
    if archive::lacks_eocd(bytes) {
        return Err(format!(
            "truncated or incomplete zip archive: no end-of-central-directory record in the last bytes of \
             the file ({} bytes); the file was probably cut short while copying or saving",
            bytes.len()
        ));
    }
    let (entries, _reader) = archive::index(bytes).map_err(|e| format!("corrupt zip archive: {e}"))?;
    let by_name: HashMap<&str, &archive::Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();

    // `<prefix>/data.pkl` with a one-component prefix (torch.save's layout).
    let pkl: Vec<&archive::Entry> = entries
        .iter()
        .filter(|e| e.name.strip_suffix("/data.pkl").is_some_and(|p| !p.is_empty() && !p.contains('/')))
        .collect();
    let pkl = match pkl.as_slice() {
        [one] => *one,
        [] => {
            let some: Vec<&str> = entries.iter().take(8).map(|e| e.name.as_str()).collect();
            return Err(format!(
                "zip archive without <prefix>/data.pkl: not a torch.save checkpoint (members: {}{})",
                some.join(", "),
                if entries.len() > some.len() { ", ..." } else { "" }
            ));
        }
        many => {
            let names: Vec<&str> = many.iter().map(|e| e.name.as_str()).collect();
            return Err(format!(
                "zip archive with several data.pkl members ({}); cannot tell which to read",
                names.join(", ")
            ));
        }
    };
    let prefix = &pkl.name[..pkl.name.len() - "/data.pkl".len()];

    if let Some(bo) = by_name.get(format!("{prefix}/byteorder").as_str()) {
        let order = bo.bytes(bytes)?;
        match std::str::from_utf8(order).map(str::trim) {
            Ok("little") => {}
            Ok("big") => {
                return Err("big-endian checkpoint (byteorder = \"big\"): only little-endian checkpoints are \
                            supported; load and re-save it with torch.save on a little-endian machine"
                    .into())
            }
            _ => return Err(format!("unrecognised {prefix}/byteorder record {:?}", String::from_utf8_lossy(order))),
        }
    }

    let pk = unpickle::load(pkl.bytes(bytes)?).map_err(|e| format!("cannot evaluate {}: {e}", pkl.name))?;
    let found = match find_tensors(&pk, pk.root, "the checkpoint", 0)? {
        Found::Tensors(t) => t,
        Found::Nothing(why) => return Err(format!("checkpoint holds no tensors: {why}")),
    };

    // Python dict semantics for repeated keys: the last value wins, the first position is kept.
    let mut order: Vec<(&str, &TensorRef)> = Vec::with_capacity(found.len());
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (name, t) in found {
        match seen.get(name) {
            Some(&i) => order[i].1 = t,
            None => {
                seen.insert(name, order.len());
                order.push((name, t));
            }
        }
    }

    // Views may repeat or broadcast storage bytes; cap the total output by the file size.
    let mut budget = bytes.len().saturating_mul(4).saturating_add(64 << 20);
    let mut out = Vec::with_capacity(order.len());
    for (name, t) in order {
        out.push(materialize(name, t, prefix, &by_name, bytes, &mut budget)?);
    }
    Ok(out)
}

/// Explain what a file that is not a zip archive is.
fn describe_non_zip(bytes: &[u8]) -> String {
    // torch.save's legacy format starts with pickle(MAGIC_NUMBER = 0x1950a86a20f9469cfc6c).
    const LEGACY_MAGIC: [u8; 12] = [0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    const RESAVE: &str = "re-save it with torch.save(obj, path, _use_new_zipfile_serialization=True) \
                          (the default) on PyTorch >= 1.6";
    if bytes.is_empty() {
        return "empty file, not a PyTorch checkpoint".into();
    }
    if bytes.len() >= 14 && bytes[0] == 0x80 && bytes[2..].starts_with(&LEGACY_MAGIC) {
        return format!("legacy non-zip PyTorch checkpoint (the pre-1.6 torch.save format): {RESAVE}");
    }
    if bytes.len() >= 2 && bytes[0] == 0x80 && (1..=5).contains(&bytes[1]) {
        return format!(
            "plain pickle file, not a torch.save zip archive (possibly a legacy pre-1.6 PyTorch checkpoint): {RESAVE}"
        );
    }
    if bytes.len() >= 262 && &bytes[257..262] == b"ustar" {
        return format!("tar archive: a legacy (PyTorch < 0.4) tar-format checkpoint is not supported; {RESAVE}");
    }
    if bytes.len() >= 9 {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        if bytes[8] == b'{' && n.checked_add(8).is_some_and(|end| end <= bytes.len() as u64) {
            return "this is a safetensors file, not a PyTorch checkpoint: load it as safetensors".into();
        }
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!(
        "not a PyTorch checkpoint: neither a torch.save zip archive nor a legacy pickle (file starts with {})",
        head.join(" ")
    )
}

enum Found<'a> {
    Tensors(Vec<(&'a str, &'a TensorRef)>),
    Nothing(String),
}

/// Modules whose objects are plain data rather than a pickled model (`argparse.Namespace` in the
/// "args" entry of a training checkpoint, numpy scalars, ...).
fn is_data_module(module: &str) -> bool {
    const DATA: [&str; 12] = [
        "collections",
        "builtins",
        "__builtin__",
        "copyreg",
        "copy_reg",
        "argparse",
        "numpy",
        "datetime",
        "pathlib",
        "_codecs",
        "enum",
        "types",
    ];
    let root = module.split('.').next().unwrap_or(module);
    if root == "torch" {
        return !(module == "torch.nn" || module.starts_with("torch.nn."));
    }
    DATA.contains(&root)
}

fn model_object_error(module: &str, name: &str, place: &str) -> String {
    format!(
        "{place} is a pickled model object (class {module}.{name}), not a state dict: libdspnet only reads \
         tensors; in Python, load it and save the weights with {RESAVE_STATE_DICT}"
    )
}

fn find_tensors<'a>(
    pk: &'a Pickle,
    id: unpickle::Id,
    place: &str,
    depth: u32,
) -> std::result::Result<Found<'a>, String> {
    match pk.node(id) {
        Node::Dict(pairs) => {
            let mut tensors = Vec::new();
            for &(k, v) in pairs {
                let Some(key) = pk.as_str(k) else { continue };
                match pk.node(v) {
                    Node::Tensor(t) => tensors.push((key, t)),
                    Node::Object { .. } => {
                        if let Some((m, n)) = pk.object_class(v) {
                            if (m == "torch" || m.starts_with("torch.")) && n.starts_with("_rebuild") {
                                return Err(format!(
                                    "tensor '{key}' is stored with {m}.{n} (quantized, sparse, nested or \
                                     device-specific tensor), which is not supported"
                                ));
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !tensors.is_empty() {
                return Ok(Found::Tensors(tensors));
            }
            let mut reasons = Vec::new();
            if depth < 4 {
                for wanted in NESTED_STATE_DICT_KEYS {
                    let hit = pairs.iter().find(|&&(k, _)| pk.as_str(k) == Some(wanted));
                    if let Some(&(_, v)) = hit {
                        match find_tensors(pk, v, &format!("entry \"{wanted}\""), depth + 1)? {
                            Found::Tensors(t) => return Ok(Found::Tensors(t)),
                            Found::Nothing(why) => reasons.push(why),
                        }
                    }
                }
            }
            for &(k, v) in pairs {
                if let Some((m, n)) = pk.object_class(v) {
                    if !is_data_module(m) {
                        let key = pk.as_str(k).unwrap_or("?");
                        return Err(model_object_error(m, n, &format!("entry \"{key}\"")));
                    }
                }
            }
            let keys: Vec<&str> = pairs.iter().filter_map(|&(k, _)| pk.as_str(k)).take(10).collect();
            let mut why = format!("{place} is a dict with no tensor values (keys: [{}])", keys.join(", "));
            for r in reasons {
                why.push_str("; ");
                why.push_str(&r);
            }
            Ok(Found::Nothing(why))
        }
        Node::Object { .. } => match pk.object_class(id) {
            Some((m, n)) if !is_data_module(m) => Err(model_object_error(m, n, place)),
            Some((m, n)) => Ok(Found::Nothing(format!("{place} is a {m}.{n} object"))),
            None => Ok(Found::Nothing(format!("{place} is an opaque Python object"))),
        },
        Node::Tensor(_) => Err(format!(
            "{place} is a single tensor, not a state dict of named tensors; save a dict such as {{\"name\": tensor}}"
        )),
        Node::List(_) | Node::Tuple(_) => Ok(Found::Nothing(format!("{place} is a list/tuple, not a state dict"))),
        _ => Ok(Found::Nothing(format!("{place} is a plain value, not a state dict"))),
    }
}

/// Copy the elements of one tensor view out of its storage, row-major.
fn materialize(
    name: &str,
    t: &TensorRef,
    prefix: &str,
    by_name: &HashMap<&str, &archive::Entry>,
    bytes: &[u8],
    budget: &mut usize,
) -> std::result::Result<PthTensor, String> {
    // Names and shapes are copied per output tensor: charge them too, so that many names for
    // one huge-rank tensor cannot exhaust memory.
    let meta = name.len().saturating_add(t.shape.len().saturating_mul(16));
    *budget = budget
        .checked_sub(meta)
        .ok_or_else(|| "checkpoint expands to far more data than the file holds".to_string())?;
    let key = &t.storage.key;
    let member = format!("{prefix}/data/{key}");
    let entry = by_name.get(member.as_str()).ok_or_else(|| {
        format!("tensor '{name}': its storage record '{key}' has no data file {member} in the archive")
    })?;
    let data = entry.bytes(bytes)?;
    let elem = t.dtype.size_in_bytes();
    let too_big = || format!("tensor '{name}': shape {:?} / stride {:?} overflow", t.shape, t.stride);
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| too_big());
    let shape: Vec<usize> = t.shape.iter().map(|&v| to_usize(v)).collect::<std::result::Result<_, _>>()?;
    let stride: Vec<usize> = t.stride.iter().map(|&v| to_usize(v)).collect::<std::result::Result<_, _>>()?;
    let offset = to_usize(t.offset)?;
    let numel = shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s)).ok_or_else(too_big)?;

    // The declared storage must fit its data file.
    if let (StorageKind::Typed(sd), Some(n)) = (&t.storage.kind, t.storage.numel) {
        let declared = usize::try_from(n).ok().and_then(|n| n.checked_mul(sd.size_in_bytes()));
        if declared.is_none_or(|d| d > data.len()) {
            return Err(format!(
                "tensor '{name}': storage record '{key}' points outside its data file: it declares {n} \
                 {} elements but {member} holds {} bytes",
                sd,
                data.len()
            ));
        }
    }
    if numel == 0 {
        return Ok(PthTensor { name: name.to_string(), dtype: t.dtype, shape, data: Vec::new() });
    }
    let last = shape
        .iter()
        .zip(&stride)
        .try_fold(offset, |acc, (&s, &st)| (s - 1).checked_mul(st).and_then(|x| acc.checked_add(x)))
        .ok_or_else(too_big)?;
    let need = last.checked_add(1).and_then(|n| n.checked_mul(elem)).ok_or_else(too_big)?;
    if need > data.len() {
        return Err(format!(
            "tensor '{name}': storage record '{key}' points outside its data file: the view (offset {offset}, \
             shape {shape:?}, stride {stride:?}, {}) needs {need} bytes but {member} holds {}",
            t.dtype,
            data.len()
        ));
    }
    let out_bytes = numel.checked_mul(elem).ok_or_else(too_big)?;
    if out_bytes > *budget {
        return Err(format!(
            "tensor '{name}': the view expands to {out_bytes} bytes, far more than the file holds \
             (overlapping or broadcast strides); refusing to allocate"
        ));
    }
    *budget -= out_bytes;
    let out = gather(data, elem, offset, &shape, &stride, numel);
    Ok(PthTensor { name: name.to_string(), dtype: t.dtype, shape, data: out })
}

/// Row-major copy of a strided view. The caller has checked that every index is in bounds.
fn gather(src: &[u8], elem: usize, offset: usize, shape: &[usize], stride: &[usize], numel: usize) -> Vec<u8> {
    let mut expected = 1usize;
    let mut contiguous = true;
    for (&s, &st) in shape.iter().zip(stride).rev() {
        if s != 1 && st != expected {
            contiguous = false;
            break;
        }
        expected *= s;
    }
    if contiguous {
        return src[offset * elem..(offset + numel) * elem].to_vec();
    }
    let rank = shape.len();
    // Copy whole rows when the innermost dimension is dense.
    let (run, outer) = if rank > 0 && stride[rank - 1] == 1 { (shape[rank - 1], rank - 1) } else { (1, rank) };
    let mut out = Vec::with_capacity(numel * elem);
    let mut idx = vec![0usize; outer];
    loop {
        let base = offset + idx.iter().zip(stride).map(|(&i, &st)| i * st).sum::<usize>();
        out.extend_from_slice(&src[base * elem..(base + run) * elem]);
        let mut d = outer;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_elements_widen_exactly() {
        let halves: [u16; 8] = [0x3c00, 0xc000, 0x0001, 0x03ff, 0x7bff, 0x7c00, 0x7e00, 0x8000];
        let t = PthTensor {
            name: "h".into(),
            dtype: PthDtype::F16,
            shape: vec![8],
            data: halves.iter().flat_map(|h| h.to_le_bytes()).collect(),
        };
        let v = t.to_f32_vec().unwrap();
        assert_eq!(v[..6], [1.0, -2.0, 2f32.powi(-24), 1023.0 * 2f32.powi(-24), 65504.0, f32::INFINITY]);
        assert!(v[6].is_nan());
        assert_eq!(v[7].to_bits(), 0x8000_0000);
        let t =
            PthTensor { name: "b".into(), dtype: PthDtype::BF16, shape: vec![2], data: vec![0x80, 0x3f, 0x00, 0xc0] };
        assert_eq!(t.to_f32_vec().unwrap(), [1.0, -2.0]);
    }

    #[test]
    fn gather_transposed_and_broadcast() {
        // 2x3 storage [0..6), transposed view 3x2.
        let src: Vec<u8> = (0..6u8).collect();
        assert_eq!(gather(&src, 1, 0, &[3, 2], &[1, 3], 6), vec![0, 3, 1, 4, 2, 5]);
        // Broadcast row: shape [2,3], stride [0,1], offset 3.
        assert_eq!(gather(&src, 1, 3, &[2, 3], &[0, 1], 6), vec![3, 4, 5, 3, 4, 5]);
        // Every other element, 2-byte elements.
        let src: Vec<u8> = (0..12u8).collect();
        assert_eq!(gather(&src, 2, 1, &[2], &[2], 2), vec![2, 3, 6, 7]);
        // Scalar at an offset.
        assert_eq!(gather(&src, 4, 2, &[], &[], 1), vec![8, 9, 10, 11]);
    }
}
