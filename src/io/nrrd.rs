//! NRRD ("nearly raw raster data", teem.sourceforge.net/nrrd/format.html): attached `.nrrd`, detached
//! `.nhdr` + data file, and 3D Slicer segmentations (`.seg.nrrd`). No maintained Rust crate exists, so
//! this is a small reader/writer of the parts medical images use:
//!
//! - types: every integer type up to 64 bits and float/double, with all their NRRD aliases;
//! - encodings: raw, gzip, ascii (text); endian little/big;
//! - `space` LPS, RAS and LAS (converted to LPS), `scanner-xyz`/`3D-right-handed` (taken as LPS),
//!   `space directions` (with `none` for non-spatial axes), `space origin`; or plain `spacings`;
//! - `data file` (single file, relative to the header), `line skip`, `byte skip` (-1 for raw);
//! - `key:=value` pairs (kept: Slicer's segment metadata).
//!
//! The writer writes gzip-compressed LPS files readable by ITK, Slicer and teem.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::{format_err, read_up_to, write_file, write_samples, DType, Decoded, Geometry, Raw, Samples, Volume};
use crate::{DspnetError, Result};

const MAX_LINE: u64 = 1 << 20;
const MAX_HEADER: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Raw,
    Gzip,
    Ascii,
}

#[derive(Default)]
struct Header {
    dimension: Option<usize>,
    dtype: Option<DType>,
    sizes: Option<Vec<usize>>,
    encoding: Option<Encoding>,
    big_endian: Option<bool>,
    /// Sign flips that turn the file's space into LPS; `None` when no `space` field.
    space_signs: Option<[f64; 3]>,
    space_dimension: Option<usize>,
    space_directions: Option<Vec<Option<Vec<f64>>>>,
    space_origin: Option<Vec<f64>>,
    spacings: Option<Vec<f64>>,
    kinds: Option<Vec<String>>,
    data_file: Option<String>,
    line_skip: usize,
    byte_skip: i64,
    key_values: Vec<(String, String)>,
}

fn parse_type(path: &Path, desc: &str) -> Result<DType> {
    let t = desc.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_lowercase();
    Ok(match t.as_str() {
        "signed char" | "int8" | "int8_t" => DType::I8,
        "uchar" | "unsigned char" | "uint8" | "uint8_t" => DType::U8,
        "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => DType::I16,
        "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => DType::U16,
        "int" | "signed int" | "int32" | "int32_t" => DType::I32,
        "uint" | "unsigned int" | "uint32" | "uint32_t" => DType::U32,
        "longlong"
        | "long long"
        | "long long int"
        | "signed long long"
        | "signed long long int"
        | "int64"
        | "int64_t" => DType::I64,
        "ulonglong" | "unsigned long long" | "unsigned long long int" | "uint64" | "uint64_t" => DType::U64,
        "float" => DType::F32,
        "double" => DType::F64,
        "block" => return Err(format_err(path, "NRRD type \"block\" is not supported")),
        _ => return Err(format_err(path, format!("unknown NRRD type \"{desc}\""))),
    })
}

/// Signs that map the named space to LPS.
fn parse_space(path: &Path, desc: &str) -> Result<([f64; 3], usize)> {
    let s = desc.trim().to_ascii_lowercase();
    Ok(match s.as_str() {
        "left-posterior-superior" | "lps" => ([1.0, 1.0, 1.0], 3),
        "right-anterior-superior" | "ras" => ([-1.0, -1.0, 1.0], 3),
        "left-anterior-superior" | "las" => ([1.0, -1.0, 1.0], 3),
        // No patient orientation given: taken as LPS, as ITK does.
        "scanner-xyz" | "3d-right-handed" => ([1.0, 1.0, 1.0], 3),
        "right-anterior-superior-time"
        | "rast"
        | "left-anterior-superior-time"
        | "last"
        | "left-posterior-superior-time"
        | "lpst"
        | "scanner-xyz-time"
        | "3d-right-handed-time"
        | "3d-left-handed-time" => {
            return Err(format_err(
                path,
                format!("NRRD space \"{desc}\" (space-time) is not supported; a 3D space is required"),
            ))
        }
        "3d-left-handed" => {
            return Err(format_err(
                path,
                "NRRD space \"3D-left-handed\" has no defined patient orientation; not supported",
            ))
        }
        _ => return Err(format_err(path, format!("unknown NRRD space \"{desc}\""))),
    })
}

/// Parse "(a,b,c)" into numbers.
fn parse_vector(path: &Path, field: &str, s: &str) -> Result<Vec<f64>> {
    let t = s.trim();
    let inner = t
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format_err(path, format!("{field}: \"{s}\" is not a vector \"(x,y,z)\"")))?;
    inner
        .split(',')
        .map(|v| {
            let v = v.trim();
            v.parse::<f64>().map_err(|_| format_err(path, format!("{field}: \"{v}\" is not a number")))
        })
        .collect()
}

/// Split a `space directions` descriptor into per-axis vectors or `none`.
fn parse_directions(path: &Path, desc: &str) -> Result<Vec<Option<Vec<f64>>>> {
    let mut out = Vec::new();
    let mut rest = desc.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('(') {
            let end = r
                .find(')')
                .ok_or_else(|| format_err(path, format!("space directions: unclosed vector in \"{desc}\"")))?;
            out.push(Some(parse_vector(path, "space directions", &rest[..end + 2])?));
            rest = r[end + 1..].trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let tok = &rest[..end];
            if !tok.eq_ignore_ascii_case("none") {
                return Err(format_err(
                    path,
                    format!("space directions: unexpected \"{tok}\" (expected a vector or none)"),
                ));
            }
            out.push(None);
            rest = rest[end..].trim_start();
        }
    }
    Ok(out)
}

fn parse_usize(path: &Path, field: &str, s: &str) -> Result<usize> {
    s.trim()
        .parse::<usize>()
        .map_err(|_| format_err(path, format!("{field}: \"{}\" is not a non-negative integer", s.trim())))
}

/// Read one line (without the trailing "\n" / "\r\n"); `None` at end of stream.
fn read_line(path: &Path, r: &mut impl BufRead, total: &mut usize) -> Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf).map_err(|e| DspnetError::io(path, e))?;
    if n == 0 {
        return Ok(None);
    }
    *total += n;
    if *total > MAX_HEADER || (n as u64 == MAX_LINE && buf.last() != Some(&b'\n')) {
        return Err(format_err(path, "NRRD header is too long or not terminated by a blank line"));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    String::from_utf8(buf).map(Some).map_err(|_| format_err(path, "NRRD header line is not valid text"))
}

/// Parse the header; the reader is left at the first byte after the blank line. Returns whether a blank
/// line (attached data) was found.
fn parse_header(path: &Path, r: &mut impl BufRead) -> Result<(Header, bool)> {
    let mut total = 0usize;
    let magic = read_line(path, r, &mut total)?.unwrap_or_default();
    if !(magic.starts_with("NRRD000") && magic.len() == 8 && magic.as_bytes()[7].is_ascii_digit()) {
        return Err(format_err(
            path,
            format!("not a NRRD file: first line \"{}\" is not NRRD000x", magic.escape_debug()),
        ));
    }
    let mut h = Header::default();
    let mut blank = false;
    while let Some(line) = read_line(path, r, &mut total)? {
        if line.is_empty() {
            blank = true;
            break;
        }
        if line.starts_with('#') {
            continue;
        }
        let field_sep = line.find(": ");
        if let Some(p) = line.find(":=") {
            if field_sep.is_none_or(|f| p < f) {
                h.key_values.push((line[..p].to_string(), line[p + 2..].to_string()));
                continue;
            }
        }
        let Some(p) = field_sep else {
            return Err(format_err(path, format!("malformed NRRD header line \"{}\"", line.escape_debug())));
        };
        let field: String = line[..p].chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
        let desc = line[p + 2..].trim();
        let list = || desc.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        match field.as_str() {
            "type" => h.dtype = Some(parse_type(path, desc)?),
            "dimension" => h.dimension = Some(parse_usize(path, "dimension", desc)?),
            "sizes" => h.sizes = Some(list().iter().map(|s| parse_usize(path, "sizes", s)).collect::<Result<_>>()?),
            "encoding" => {
                h.encoding = Some(match desc.to_ascii_lowercase().as_str() {
                    "raw" => Encoding::Raw,
                    "gzip" | "gz" => Encoding::Gzip,
                    "ascii" | "text" | "txt" => Encoding::Ascii,
                    other => {
                        return Err(format_err(
                            path,
                            format!("NRRD encoding \"{other}\" is not supported (raw, gzip, ascii are)"),
                        ))
                    }
                })
            }
            "endian" => {
                h.big_endian = Some(match desc.to_ascii_lowercase().as_str() {
                    "little" => false,
                    "big" => true,
                    other => {
                        return Err(format_err(path, format!("NRRD endian \"{other}\" is neither little nor big")))
                    }
                })
            }
            "space" => {
                let (signs, dim) = parse_space(path, desc)?;
                h.space_signs = Some(signs);
                h.space_dimension = Some(dim);
            }
            "spacedimension" => {
                let d = parse_usize(path, "space dimension", desc)?;
                if d != 3 {
                    return Err(format_err(path, format!("space dimension {d}: a 3D space is required")));
                }
                h.space_dimension = Some(d);
            }
            "spacedirections" => h.space_directions = Some(parse_directions(path, desc)?),
            "spaceorigin" => h.space_origin = Some(parse_vector(path, "space origin", desc)?),
            "spacings" => {
                h.spacings = Some(
                    list()
                        .iter()
                        .map(|s| {
                            s.parse::<f64>().map_err(|_| format_err(path, format!("spacings: \"{s}\" is not a number")))
                        })
                        .collect::<Result<_>>()?,
                )
            }
            "kinds" => h.kinds = Some(list().iter().map(|k| k.to_ascii_lowercase()).collect()),
            "datafile" => h.data_file = Some(desc.to_string()),
            "lineskip" => h.line_skip = parse_usize(path, "line skip", desc)?,
            "byteskip" => {
                h.byte_skip = desc
                    .parse::<i64>()
                    .ok()
                    .filter(|&b| b >= -1)
                    .ok_or_else(|| format_err(path, format!("byte skip: \"{desc}\" is not an integer >= -1")))?
            }
            // Fields that do not change the voxel grid.
            _ => {}
        }
    }
    Ok((h, blank))
}

/// How the file's axes map onto the volume.
struct Layout {
    geometry: Geometry,
    /// File axis index of i, j, k.
    spatial: [usize; 3],
    /// The one non-spatial axis with more than one sample, if any.
    layer_axis: Option<usize>,
}

fn layout(path: &Path, h: &Header, sizes: &[usize]) -> Result<Layout> {
    let nd = sizes.len();
    let check_len = |field: &str, len: usize| {
        if len != nd {
            Err(format_err(path, format!("{field} has {len} entries but dimension is {nd}")))
        } else {
            Ok(())
        }
    };
    let spatial_flags: Vec<bool> = if let Some(dirs) = &h.space_directions {
        check_len("space directions", dirs.len())?;
        dirs.iter().map(Option::is_some).collect()
    } else if let Some(kinds) = &h.kinds {
        check_len("kinds", kinds.len())?;
        kinds.iter().map(|k| matches!(k.as_str(), "domain" | "space" | "???" | "none")).collect()
    } else {
        vec![true; nd]
    };
    if let Some(k) = &h.kinds {
        check_len("kinds", k.len())?;
    }
    let spatial: Vec<usize> = (0..nd).filter(|&a| spatial_flags[a]).collect();
    if spatial.len() != 3 {
        let shown: Vec<usize> = spatial.iter().map(|&a| sizes[a]).collect();
        return Err(format_err(
            path,
            format!("image has {} spatial axes (sizes {shown:?}); a 3D volume is required", spatial.len()),
        ));
    }
    let extra: Vec<usize> = (0..nd).filter(|&a| !spatial_flags[a] && sizes[a] > 1).collect();
    if extra.len() > 1 {
        return Err(format_err(
            path,
            format!(
                "image has {} non-spatial axes with more than one sample; at most one (segment layers) is supported",
                extra.len()
            ),
        ));
    }
    let dims = [sizes[spatial[0]], sizes[spatial[1]], sizes[spatial[2]]];
    let signs = h.space_signs.unwrap_or([1.0; 3]);
    let mut affine = [[0.0f64; 4]; 3];
    let what;
    if let Some(dirs) = &h.space_directions {
        what = "space directions";
        for (c, &a) in spatial.iter().enumerate() {
            let Some(v) = dirs[a].as_ref() else {
                return Err(format_err(path, format!("space directions: axis {a} has no direction")));
            };
            if v.len() != 3 {
                return Err(format_err(
                    path,
                    format!("space directions: axis {a} has {} components; 3 expected", v.len()),
                ));
            }
            for r in 0..3 {
                affine[r][c] = signs[r] * v[r];
            }
        }
    } else {
        what = "spacings";
        for (c, &a) in spatial.iter().enumerate() {
            let s = match &h.spacings {
                Some(sp) => {
                    check_len("spacings", sp.len())?;
                    sp[a]
                }
                None => 1.0,
            };
            if !(s.is_finite() && s > 0.0) {
                return Err(format_err(
                    path,
                    format!("spacings: axis {a} has spacing {s}; it must be finite and positive"),
                ));
            }
            affine[c][c] = s;
        }
    }
    if let Some(o) = &h.space_origin {
        if o.len() != 3 {
            return Err(format_err(path, format!("space origin has {} components; 3 expected", o.len())));
        }
        for r in 0..3 {
            affine[r][3] = signs[r] * o[r];
        }
    }
    let geometry = super::geometry_from_affine(path, dims, affine, what)?;
    Ok(Layout { geometry, spatial: [spatial[0], spatial[1], spatial[2]], layer_axis: extra.first().copied() })
}

pub(crate) fn read_key_values(path: &Path) -> Result<Vec<(String, String)>> {
    let file = File::open(path).map_err(|e| DspnetError::io(path, e))?;
    let (h, _) = parse_header(path, &mut BufReader::new(file))?;
    Ok(h.key_values)
}

pub(crate) fn read(path: &Path) -> Result<Decoded> {
    let file = File::open(path).map_err(|e| DspnetError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let (h, blank) = parse_header(path, &mut reader)?;
    let dimension = h.dimension.ok_or_else(|| format_err(path, "NRRD header has no \"dimension\" field"))?;
    let dtype = h.dtype.ok_or_else(|| format_err(path, "NRRD header has no \"type\" field"))?;
    let encoding = h.encoding.ok_or_else(|| format_err(path, "NRRD header has no \"encoding\" field"))?;
    let sizes = h.sizes.clone().ok_or_else(|| format_err(path, "NRRD header has no \"sizes\" field"))?;
    if sizes.len() != dimension {
        return Err(format_err(path, format!("sizes has {} entries but dimension is {dimension}", sizes.len())));
    }
    if let Some(a) = sizes.iter().position(|&s| s == 0) {
        return Err(format_err(path, format!("sizes {sizes:?}: axis {a} has size 0")));
    }
    let total = sizes
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .ok_or_else(|| format_err(path, format!("sizes {sizes:?} overflow: the voxel count does not fit in memory")))?;
    let data_len = total
        .checked_mul(dtype.size())
        .ok_or_else(|| format_err(path, format!("sizes {sizes:?}: data size overflows")))?;
    if dimension < 3 {
        return Err(format_err(path, format!("image is {dimension}D (sizes {sizes:?}); a 3D volume is required")));
    }
    let lay = layout(path, &h, &sizes)?;
    // The spec requires "endian" for multi-byte raw/gzip data; without it, little-endian (as ITK).
    let big_endian = h.big_endian.unwrap_or(false);

    // The data stream: after the header, or in the detached data file.
    let (mut data, data_path): (BufReader<File>, PathBuf) = match &h.data_file {
        Some(name) => {
            let tokens: Vec<&str> = name.split_whitespace().collect();
            if name.eq_ignore_ascii_case("LIST") || (name.contains('%') && tokens.len() >= 4) {
                return Err(format_err(path, format!("multi-file NRRD data (data file: {name}) is not supported")));
            }
            let p = Path::new(name);
            let p = if p.is_absolute() { p.to_path_buf() } else { path.parent().unwrap_or(Path::new(".")).join(p) };
            let f = File::open(&p).map_err(|e| DspnetError::io(&p, e))?;
            (BufReader::new(f), p)
        }
        None => {
            if !blank {
                return Err(format_err(
                    path,
                    "NRRD header is not followed by a blank line and data (no \"data file\" field either)",
                ));
            }
            (reader, path.to_path_buf())
        }
    };
    let dp = data_path.as_path();
    let mut scratch = Vec::new();
    for _ in 0..h.line_skip {
        scratch.clear();
        let n = data.read_until(b'\n', &mut scratch).map_err(|e| DspnetError::io(dp, e))?;
        if n == 0 {
            return Err(format_err(dp, format!("truncated: the data ends within the {} lines to skip", h.line_skip)));
        }
    }
    let truncated = |got: usize| {
        format_err(
            dp,
            format!(
                "truncated or inconsistent: the header declares sizes {sizes:?} of {dtype:?} ({data_len} bytes) but only {got} bytes of data are present"
            ),
        )
    };
    let bytes = match encoding {
        Encoding::Raw => {
            let io = |e| DspnetError::io(dp, e);
            let len = data.get_ref().metadata().map_err(io)?.len();
            let pos = data.stream_position().map_err(io)?;
            let remaining = len.saturating_sub(pos);
            let skip = if h.byte_skip == -1 { remaining.saturating_sub(data_len as u64) } else { h.byte_skip as u64 };
            if remaining < skip.saturating_add(data_len as u64) {
                return Err(truncated(remaining.saturating_sub(skip) as usize));
            }
            data.seek_relative(skip as i64).map_err(io)?;
            let mut bytes = Vec::with_capacity(data_len); // checked against the real length above
            read_up_to(&mut data, data_len as u64, &mut bytes).map_err(io)?;
            if bytes.len() != data_len {
                return Err(truncated(bytes.len()));
            }
            bytes
        }
        Encoding::Gzip => {
            if h.byte_skip < 0 {
                return Err(format_err(path, "byte skip -1 is only allowed with raw encoding"));
            }
            let mut gz = MultiGzDecoder::new(data);
            let gz_err = |e: std::io::Error| format_err(dp, format!("corrupt or truncated gzip data: {e}"));
            let skip = h.byte_skip as u64;
            if std::io::copy(&mut (&mut gz).take(skip), &mut std::io::sink()).map_err(gz_err)? != skip {
                return Err(truncated(0));
            }
            let mut bytes = Vec::new();
            read_up_to(&mut gz, data_len as u64, &mut bytes).map_err(gz_err)?;
            if bytes.len() != data_len {
                return Err(truncated(bytes.len()));
            }
            bytes
        }
        Encoding::Ascii => read_ascii(dp, &mut data, dtype, total)?,
    };
    let (bytes, dtype, big_endian) =
        if encoding == Encoding::Ascii { (bytes, DType::F64, false) } else { (bytes, dtype, big_endian) };
    let bytes = reorder(bytes, dtype.size(), &sizes, lay.spatial, lay.layer_axis);
    let layers = lay.layer_axis.map_or(1, |a| sizes[a]);
    Ok(Decoded {
        geometry: lay.geometry,
        samples: Samples::Raw(Raw { bytes, dtype, big_endian, slope: 1.0, inter: 0.0 }),
        layers,
        key_values: h.key_values,
    })
}

/// ASCII samples → little-endian f64 bytes (range-checked against the declared integer type).
fn read_ascii(path: &Path, r: &mut impl Read, dtype: DType, total: usize) -> Result<Vec<u8>> {
    let mut text = String::new();
    r.read_to_string(&mut text).map_err(|_| format_err(path, "ascii NRRD data is not valid text"))?;
    let mut out = Vec::new();
    let mut count = 0usize;
    for tok in text.split(|c: char| c.is_whitespace() || c == ',').filter(|t| !t.is_empty()) {
        if count == total {
            break;
        }
        let v: f64 = tok.parse().map_err(|_| format_err(path, format!("ascii data: \"{tok}\" is not a number")))?;
        let ok = match dtype {
            DType::F32 | DType::F64 => true,
            DType::U8 => v.fract() == 0.0 && (0.0..=255.0).contains(&v),
            DType::I8 => v.fract() == 0.0 && (-128.0..=127.0).contains(&v),
            DType::U16 => v.fract() == 0.0 && (0.0..=65535.0).contains(&v),
            DType::I16 => v.fract() == 0.0 && (-32768.0..=32767.0).contains(&v),
            DType::U32 | DType::U64 => v.fract() == 0.0 && v >= 0.0,
            DType::I32 | DType::I64 => v.fract() == 0.0,
        };
        if !ok {
            return Err(format_err(path, format!("ascii data: {tok} does not fit the declared type {dtype:?}")));
        }
        out.extend_from_slice(&v.to_le_bytes());
        count += 1;
    }
    if count != total {
        return Err(format_err(path, format!("truncated: ascii data has {count} values, the header declares {total}")));
    }
    Ok(out)
}

/// Reorder file-order samples so that i, j, k are the three fastest axes and the layer axis (if any)
/// the slowest. A no-op when the file already has that order.
fn reorder(bytes: Vec<u8>, elem: usize, sizes: &[usize], spatial: [usize; 3], layer: Option<usize>) -> Vec<u8> {
    let mut order: Vec<usize> = spatial.to_vec();
    if let Some(l) = layer {
        order.push(l);
    }
    // File strides (in elements); axes of size 1 not in `order` do not matter.
    let mut strides = vec![0usize; sizes.len()];
    let mut s = 1;
    for (a, &n) in sizes.iter().enumerate() {
        strides[a] = s;
        s *= n;
    }
    let identity = order.iter().enumerate().all(|(pos, &a)| {
        // Same layout if each axis in `order` has the stride of the product of the previous ones.
        strides[a] == order[..pos].iter().map(|&b| sizes[b]).product::<usize>()
    });
    if identity {
        return bytes;
    }
    let n_out: usize = order.iter().map(|&a| sizes[a]).product();
    let mut out = vec![0u8; n_out * elem];
    let out_sizes: Vec<usize> = order.iter().map(|&a| sizes[a]).collect();
    let out_strides: Vec<usize> = order.iter().map(|&a| strides[a]).collect();
    let mut idx = vec![0usize; order.len()];
    for o in 0..n_out {
        let src: usize = idx.iter().zip(&out_strides).map(|(i, s)| i * s).sum();
        out[o * elem..(o + 1) * elem].copy_from_slice(&bytes[src * elem..(src + 1) * elem]);
        for (d, i) in idx.iter_mut().enumerate() {
            *i += 1;
            if *i < out_sizes[d] {
                break;
            }
            *i = 0;
        }
    }
    out
}

/// Slicer segment metadata: `SegmentN_<Field>` values.
fn segment_field<'a>(kv: &'a [(String, String)], n: usize, field: &str) -> Option<&'a str> {
    let key = format!("Segment{n}_{field}");
    kv.iter().find(|(k, _)| *k == key).map(|(_, v)| v.trim())
}

fn segment_count(kv: &[(String, String)]) -> usize {
    (0..).take_while(|&n| segment_field(kv, n, "ID").is_some() || segment_field(kv, n, "LabelValue").is_some()).count()
}

/// Merge the layers of a multi-layer Slicer segmentation into one label map (see `read_labels`).
pub(crate) fn merge_segment_layers(
    path: &Path,
    values: Vec<u16>,
    dims: [usize; 3],
    layers: usize,
    kv: &[(String, String)],
) -> Result<Vec<u16>> {
    let n = dims[0] * dims[1] * dims[2];
    let nseg = segment_count(kv);
    if nseg == 0 {
        return Err(format_err(
            path,
            format!("has {layers} values per voxel but no Slicer segment metadata (SegmentN_* keys); a 3D scalar label map is required"),
        ));
    }
    let has_label_values = (0..nseg).any(|s| segment_field(kv, s, "LabelValue").is_some());
    let name_of = |layer: usize, value: u16| -> String {
        for s in 0..nseg {
            let l = segment_field(kv, s, "Layer").and_then(|v| v.parse::<usize>().ok()).unwrap_or(s);
            let v = segment_field(kv, s, "LabelValue").and_then(|v| v.parse::<u16>().ok()).unwrap_or(1);
            if l == layer && v == value {
                let name = segment_field(kv, s, "Name").or(segment_field(kv, s, "ID")).unwrap_or("?");
                return format!("segment \"{name}\" (layer {layer}, value {value})");
            }
        }
        format!("layer {layer} value {value}")
    };
    // Slicer 4.10-style files: one binary layer per segment, no label values: segment N → N + 1.
    let binary_layers = values.iter().all(|&v| v <= 1);
    let remap = !has_label_values && binary_layers;
    if remap && layers > u16::MAX as usize {
        return Err(format_err(path, format!("{layers} segment layers do not fit in 16-bit labels")));
    }
    if !remap {
        // A label value may be used in one layer only (memory: one entry per possible value).
        let mut first_layer = vec![usize::MAX; 65536];
        for l in 0..layers {
            for &v in &values[l * n..(l + 1) * n] {
                let f = &mut first_layer[v as usize];
                if v == 0 || *f == l {
                    continue;
                }
                if *f != usize::MAX {
                    return Err(format_err(
                        path,
                        format!(
                            "cannot merge the segmentation's {layers} layers into one label map: label value {v} is used by {} and {}; give the segments distinct label values (or export a labelmap from Slicer)",
                            name_of(*f, v),
                            name_of(l, v)
                        ),
                    ));
                }
                *f = l;
            }
        }
    }
    let mut out = vec![0u16; n];
    let mut owner = vec![0usize; n]; // layer + 1 that set the voxel
    for l in 0..layers {
        for (vox, &v) in values[l * n..(l + 1) * n].iter().enumerate() {
            if v == 0 {
                continue;
            }
            if owner[vox] != 0 {
                let other = owner[vox] - 1;
                let other_v = if remap { 1 } else { out[vox] };
                return Err(format_err(
                    path,
                    format!(
                        "cannot merge the segmentation's {layers} layers into one label map: {} and {} overlap at voxel ({}, {}, {}); remove the overlap (or export a labelmap from Slicer)",
                        name_of(other, other_v),
                        name_of(l, v),
                        vox % dims[0],
                        (vox / dims[0]) % dims[1],
                        vox / (dims[0] * dims[1])
                    ),
                ));
            }
            owner[vox] = l + 1;
            out[vox] = if remap { (l + 1) as u16 } else { v };
        }
    }
    Ok(out)
}

/// Segment metadata lines for a written `.seg.nrrd`.
pub(crate) struct SegmentTable {
    lines: Vec<(String, String)>,
}

const PALETTE: [[f64; 3]; 8] = [
    [0.502, 0.682, 0.502],
    [0.945, 0.839, 0.569],
    [0.694, 0.478, 0.396],
    [0.435, 0.722, 0.824],
    [0.847, 0.396, 0.310],
    [0.867, 0.510, 0.396],
    [0.565, 0.933, 0.565],
    [0.863, 0.753, 0.957],
];

impl SegmentTable {
    /// One segment per label value present, named `Segment_<value>` unless `like` (the key/values of
    /// an existing `.seg.nrrd`) has a segment with that label value.
    pub(crate) fn for_labels(labels: &Volume<u16>, like: Option<&[(String, String)]>) -> SegmentTable {
        let [ni, nj, _] = labels.geometry.dims;
        // Extent per label: [imin, imax, jmin, jmax, kmin, kmax].
        let mut ext: Vec<Option<[usize; 6]>> = vec![None; 65536];
        for (idx, &v) in labels.data.iter().enumerate() {
            if v == 0 {
                continue;
            }
            let (i, j, k) = (idx % ni, (idx / ni) % nj, idx / (ni * nj));
            let e = ext[v as usize].get_or_insert([i, i, j, j, k, k]);
            e[0] = e[0].min(i);
            e[1] = e[1].max(i);
            e[2] = e[2].min(j);
            e[3] = e[3].max(j);
            e[4] = e[4].min(k);
            e[5] = e[5].max(k);
        }
        let like = like.unwrap_or(&[]);
        let like_n = segment_count(like);
        let like_seg = |value: u16| {
            (0..like_n)
                .find(|&s| segment_field(like, s, "LabelValue").and_then(|v| v.parse::<u16>().ok()) == Some(value))
        };
        let mut lines = vec![
            ("Segmentation_ContainedRepresentationNames".to_string(), "Binary labelmap|".to_string()),
            ("Segmentation_MasterRepresentation".to_string(), "Binary labelmap".to_string()),
            ("Segmentation_SourceRepresentation".to_string(), "Binary labelmap".to_string()),
            ("Segmentation_ReferenceImageExtentOffset".to_string(), "0 0 0".to_string()),
        ];
        for (seg, (value, e)) in ext.iter().enumerate().filter_map(|(v, e)| e.map(|e| (v as u16, e))).enumerate() {
            let from_like = like_seg(value);
            let get = |field: &str| from_like.and_then(|s| segment_field(like, s, field)).map(str::to_string);
            let default_name = format!("Segment_{value}");
            let c = PALETTE[(value as usize - 1) % PALETTE.len()];
            let mut push = |field: &str, v: String| lines.push((format!("Segment{seg}_{field}"), v));
            push("Color", get("Color").unwrap_or(format!("{} {} {}", c[0], c[1], c[2])));
            push("ColorAutoGenerated", get("ColorAutoGenerated").unwrap_or("1".into()));
            push("Extent", format!("{} {} {} {} {} {}", e[0], e[1], e[2], e[3], e[4], e[5]));
            push("ID", get("ID").unwrap_or(default_name.clone()));
            push("LabelValue", value.to_string());
            push("Layer", "0".into());
            push("Name", get("Name").unwrap_or(default_name));
            push("NameAutoGenerated", get("NameAutoGenerated").unwrap_or("1".into()));
            if let Some(tags) = get("Tags") {
                push("Tags", tags);
            }
        }
        SegmentTable { lines }
    }

    fn max_value_fits_u8(labels: &Volume<u16>) -> bool {
        labels.data.iter().all(|&v| v <= u8::MAX as u16)
    }
}

/// NRRD numbers: the shortest text that parses back to the same f64.
fn num(v: f64) -> String {
    let v = if v == 0.0 { 0.0 } else { v }; // no "-0"
    format!("{v}")
}

fn vec3(v: [f64; 3]) -> String {
    format!("({},{},{})", num(v[0]), num(v[1]), num(v[2]))
}

/// Write `labels` as a gzip NRRD at `tmp`; with `seg`, as a Slicer segmentation.
pub(crate) fn write(tmp: &Path, labels: &Volume<u16>, seg: Option<&SegmentTable>) -> Result<()> {
    let g = &labels.geometry;
    let as_u8 = seg.is_some() && SegmentTable::max_value_fits_u8(labels);
    let mut h = String::new();
    h.push_str(
        "NRRD0004\n# Complete NRRD file format specification at:\n# http://teem.sourceforge.net/nrrd/format.html\n",
    );
    h.push_str(if as_u8 { "type: unsigned char\n" } else { "type: unsigned short\n" });
    h.push_str("dimension: 3\nspace: left-posterior-superior\n");
    h.push_str(&format!("sizes: {} {} {}\n", g.dims[0], g.dims[1], g.dims[2]));
    let dirs: Vec<String> = (0..3).map(|c| vec3([0, 1, 2].map(|r| g.direction[r][c] * g.spacing[c]))).collect();
    h.push_str(&format!("space directions: {}\n", dirs.join(" ")));
    h.push_str("kinds: domain domain domain\nendian: little\nencoding: gzip\n");
    h.push_str(&format!("space origin: {}\n", vec3(g.origin)));
    if let Some(seg) = seg {
        for (k, v) in &seg.lines {
            // Keys and values are single lines.
            h.push_str(&format!("{}:={}\n", k.replace('\n', " "), v.replace('\n', " ")));
        }
    }
    h.push('\n');
    write_file(tmp, false, |out| {
        out.write_all(h.as_bytes())?;
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        write_samples(&mut gz, &labels.data, as_u8)?;
        gz.finish()?;
        Ok(())
    })
}
