//! Reading and writing 3D medical volumes: NIfTI-1/2 (`.nii`, `.nii.gz`), NRRD (`.nrrd`, `.nhdr` with
//! detached data, 3D Slicer `.seg.nrrd`) and DICOM series folders.
//!
//! Every reader returns a [`Volume`]: the voxels, i fastest (`data[i + dims[0]*(j + dims[1]*k)]`, the
//! layout of NIfTI, ITK, VTK and Slicer), and a [`Geometry`] in the DICOM/ITK/NRRD patient frame LPS
//! (x → patient left, y → posterior, z → superior), in millimetres. The same image stored in any of the
//! formats gives the same geometry: NIfTI's RAS affines are converted (first two rows negated), NRRD
//! files in RAS or LAS space are converted, DICOM slices are sorted along their normal.
//!
//! Files are recognised by their content (NIfTI header size, `NRRD000x` magic, gzip magic, DICOM
//! `DICM` preamble) before their name; a folder is read as a DICOM series. Malformed files give a
//! [`DspnetError::VolumeFormat`] that names the file and the problem. No reader allocates from a size
//! that a header declares before checking it against the data really present.
//!
//! Writers ([`write_labels`]) choose the format from the extension and always write through
//! [`crate::util::write_atomically`], so a failed write never clobbers an existing file.
//!
//! Precision: NIfTI-1 stores its affine as 32-bit floats, so a geometry from DICOM or NRRD written to
//! NIfTI comes back to about 1e-5 mm; NIfTI → NIfTI and anything → NRRD round trips are exact
//! (NRRD numbers are written with the shortest representation that reads back bit-identical).

#![allow(clippy::needless_range_loop)] // index loops read best for 3x3 geometry

mod dicom;
mod nifti;
mod nrrd;

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use crate::{DspnetError, Result};

pub use dicom::read_dicom_series;

/// A 3D scalar volume with its geometry. Voxel (i, j, k) is at `data[i + dims[0]*(j + dims[1]*k)]`
/// (i fastest; the layout of NIfTI, ITK, VTK, Slicer's `arrayFromVolume`).
#[derive(Clone, PartialEq)]
pub struct Volume<T> {
    pub data: Vec<T>,
    pub geometry: Geometry,
}

impl<T> std::fmt::Debug for Volume<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("data", &format_args!("[{} voxels]", self.data.len()))
            .field("geometry", &self.geometry)
            .finish()
    }
}

impl<T> Volume<T> {
    /// A volume after checking that `data` has exactly one value per voxel and that the geometry is
    /// valid ([`Geometry::validate`]).
    pub fn new(data: Vec<T>, geometry: Geometry) -> Result<Self> {
        geometry.validate()?;
        let n = geometry.voxel_count()?;
        if data.len() != n {
            return Err(DspnetError::Shape(format!(
                "volume data has {} values but dims {:?} need {n}",
                data.len(),
                geometry.dims
            )));
        }
        Ok(Volume { data, geometry })
    }

    /// The value at voxel (i, j, k), or `None` outside the grid.
    pub fn get(&self, i: usize, j: usize, k: usize) -> Option<&T> {
        let [ni, nj, nk] = self.geometry.dims;
        if i >= ni || j >= nj || k >= nk {
            return None;
        }
        self.data.get(i + ni * (j + nj * k))
    }
}

/// Where a voxel grid lies in the patient: sizes, voxel spacing, origin and axis directions, in LPS.
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    /// Number of voxels along i, j, k.
    pub dims: [usize; 3],
    /// Voxel spacing along i, j, k in mm; finite and positive.
    pub spacing: [f64; 3],
    /// Physical position (mm) of the centre of voxel (0, 0, 0), in LPS (DICOM/ITK/NRRD convention).
    pub origin: [f64; 3],
    /// `direction[r][c]`: column c is the unit direction of index axis c, in LPS.
    pub direction: [[f64; 3]; 3],
}

impl Geometry {
    /// Identity direction, unit spacing, origin at 0.
    pub fn identity(dims: [usize; 3]) -> Geometry {
        Geometry {
            dims,
            spacing: [1.0; 3],
            origin: [0.0; 3],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        }
    }

    /// True when both grids have the same dims and their spacing, origin and direction agree to `tol`
    /// (absolute, mm for spacing and origin).
    pub fn same_grid(&self, other: &Geometry, tol: f64) -> bool {
        let close = |a: f64, b: f64| (a - b).abs() <= tol;
        self.dims == other.dims
            && (0..3).all(|c| close(self.spacing[c], other.spacing[c]) && close(self.origin[c], other.origin[c]))
            && (0..3).all(|r| (0..3).all(|c| close(self.direction[r][c], other.direction[r][c])))
    }

    /// `dims[0] * dims[1] * dims[2]`, or a `Shape` error when that overflows `usize` (the one check of
    /// the crate: [`crate::volume::voxel_count`]).
    pub fn voxel_count(&self) -> Result<usize> {
        crate::volume::voxel_count(self.dims)
    }

    /// Physical (LPS, mm) position of the continuous index `ijk`:
    /// `origin + direction * (spacing ⊙ ijk)`.
    pub fn index_to_physical(&self, ijk: [f64; 3]) -> [f64; 3] {
        let mut p = self.origin;
        for (r, pr) in p.iter_mut().enumerate() {
            for c in 0..3 {
                *pr += self.direction[r][c] * self.spacing[c] * ijk[c];
            }
        }
        p
    }

    /// The 3x4 LPS affine (rows x, y, z; last column the origin): `physical = A * [i, j, k, 1]`.
    pub fn affine_lps(&self) -> [[f64; 4]; 3] {
        let mut a = [[0.0; 4]; 3];
        for r in 0..3 {
            for c in 0..3 {
                a[r][c] = self.direction[r][c] * self.spacing[c];
            }
            a[r][3] = self.origin[r];
        }
        a
    }

    /// Check that the geometry describes a real grid: every dim at least 1 with a voxel count that
    /// fits in memory indexes, finite positive spacing, finite origin, unit-length direction columns
    /// (to 1e-3) spanning 3D space.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(DspnetError::InvalidArgument(format!("geometry: {what}")));
        if self.dims.contains(&0) {
            return bad(format!("dims {:?} contain 0", self.dims));
        }
        self.voxel_count()?;
        if !self.spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
            return bad(format!("spacing {:?} must be finite and positive", self.spacing));
        }
        if !self.origin.iter().all(|o| o.is_finite()) {
            return bad(format!("origin {:?} is not finite", self.origin));
        }
        if !self.direction.iter().flatten().all(|v| v.is_finite()) {
            return bad(format!("direction {:?} is not finite", self.direction));
        }
        for c in 0..3 {
            let norm = (0..3).map(|r| self.direction[r][c].powi(2)).sum::<f64>().sqrt();
            if (norm - 1.0).abs() > 1e-3 {
                return bad(format!("direction column {c} has length {norm}, expected a unit vector"));
            }
        }
        if det3(&self.direction).abs() < 1e-6 {
            return bad(format!("direction {:?} is singular (axes do not span 3D space)", self.direction));
        }
        Ok(())
    }
}

/// Read an image volume as f32 intensities, with rescaling applied (NIfTI `scl_slope`/`scl_inter`,
/// DICOM RescaleSlope/RescaleIntercept). `path` is a NIfTI file (`.nii`, `.nii.gz`), a NRRD file
/// (`.nrrd`, `.nhdr` + detached data, `.seg.nrrd`), a folder holding one DICOM series, or one file of
/// a DICOM series (the whole series of that file is read from its folder). Values are passed through
/// as stored: NaN voxels in a float file stay NaN.
pub fn read_image(path: &Path) -> Result<Volume<f32>> {
    let decoded = read_any(path)?;
    if decoded.layers != 1 {
        return Err(format_err(
            path,
            format!(
                "has {} components or layers per voxel (a 4D, vector or multi-layer segmentation file); a 3D scalar image is required",
                decoded.layers
            ),
        ));
    }
    let data = match decoded.samples {
        Samples::F32(v) => v,
        Samples::Raw(raw) => raw.convert(|_, v| Ok(v as f32))?,
    };
    Ok(Volume { data, geometry: decoded.geometry })
}

/// Read an integer label map. Values must be integers in `0..=65535` (after any NIfTI scaling);
/// anything else is an error naming the first offending voxel. A 3D Slicer segmentation (`.seg.nrrd`)
/// that stores its segments in several overlapping layers (4D) is merged into one label map, keeping
/// the label values as stored, when no voxel belongs to two segments and no label value is used in
/// two layers; otherwise the error says which segments collide. (A Slicer 4.10-style file with one
/// binary layer per segment and no `SegmentN_LabelValue` keys gets label `N + 1` for segment `N`.)
///
/// The result is on the file's own grid: a Slicer segmentation saved cropped to its extent does not
/// cover the whole image; compare with [`Geometry::same_grid`].
pub fn read_labels(path: &Path) -> Result<Volume<u16>> {
    let decoded = read_any(path)?;
    let n = decoded.geometry.voxel_count()?;
    let dims = decoded.geometry.dims;
    let to_label = |idx: usize, v: f64| -> Result<u16> {
        if v.fract() == 0.0 && (0.0..=65535.0).contains(&v) {
            Ok(v as u16)
        } else {
            let voxel = idx % n;
            let (i, j, k) = (voxel % dims[0], (voxel / dims[0]) % dims[1], voxel / (dims[0] * dims[1]));
            let layer = if decoded.layers > 1 { format!(" of layer {}", idx / n) } else { String::new() };
            Err(format_err(
                path,
                format!("is not a label map: value {v} at voxel ({i}, {j}, {k}){layer} is not an integer in 0..=65535"),
            ))
        }
    };
    let values: Vec<u16> = match &decoded.samples {
        Samples::F32(v) => v.iter().enumerate().map(|(idx, &x)| to_label(idx, x as f64)).collect::<Result<_>>()?,
        Samples::Raw(raw) => raw.convert(to_label)?,
    };
    let data = if decoded.layers == 1 {
        values
    } else {
        nrrd::merge_segment_layers(path, values, dims, decoded.layers, &decoded.key_values)?
    };
    Ok(Volume { data, geometry: decoded.geometry })
}

/// Write a label map; the format follows the extension: `.nii`, `.nii.gz` (NIfTI-1, uint8 when every
/// label fits, else uint16), `.nrrd` (uint16, gzip) or `.seg.nrrd` (3D Slicer segmentation: one layer,
/// one segment per label value present, uint8 when every label fits, else uint16). The geometry is
/// written exactly as given (NIfTI: to float32 precision) and the file is written atomically.
///
/// `like`: the image the labels belong to. When it is a NIfTI file, its sform/qform codes, description,
/// units and slice-timing fields are kept (the affine always comes from `labels.geometry`); when it is a
/// `.seg.nrrd`, names, colours and ids of segments with the same label values are kept. Other formats
/// are ignored; a `like` path that cannot be read is an error.
pub fn write_labels(path: &Path, labels: &Volume<u16>, like: Option<&Path>) -> Result<()> {
    let n = labels.geometry.voxel_count()?;
    labels.geometry.validate()?;
    if labels.data.len() != n {
        return Err(DspnetError::Shape(format!(
            "label data has {} values but dims {:?} need {n}",
            labels.data.len(),
            labels.geometry.dims
        )));
    }
    let format = label_output_format(path)?;
    match format {
        OutFormat::Nifti { gz } => {
            let like_header = match like {
                Some(l) if detect(l)? == Detected::Nifti => Some(nifti::read_header_only(l)?),
                _ => None,
            };
            crate::util::write_atomically(path, |tmp| nifti::write(tmp, labels, like_header.as_ref(), gz))
        }
        OutFormat::Nrrd => crate::util::write_atomically(path, |tmp| nrrd::write(tmp, labels, None)),
        OutFormat::SegNrrd => {
            let like_kv = match like {
                Some(l) if detect(l)? == Detected::Nrrd => Some(nrrd::read_key_values(l)?),
                _ => None,
            };
            let seg = nrrd::SegmentTable::for_labels(labels, like_kv.as_deref());
            crate::util::write_atomically(path, |tmp| nrrd::write(tmp, labels, Some(&seg)))
        }
    }
}

/// The label format a path's extension asks for; an unsupported extension is an error, so that callers
/// can check an output path before the work that produces it.
pub fn check_label_output(path: &Path) -> Result<()> {
    label_output_format(path).map(|_| ())
}

fn label_output_format(path: &Path) -> Result<OutFormat> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    Ok(if name.ends_with(".seg.nrrd") {
        OutFormat::SegNrrd
    } else if name.ends_with(".nrrd") {
        OutFormat::Nrrd
    } else if name.ends_with(".nii.gz") {
        OutFormat::Nifti { gz: true }
    } else if name.ends_with(".nii") {
        OutFormat::Nifti { gz: false }
    } else {
        return Err(DspnetError::InvalidArgument(format!(
            "{}: unsupported output extension; use .nii, .nii.gz, .nrrd or .seg.nrrd",
            path.display()
        )));
    })
}

enum OutFormat {
    Nifti { gz: bool },
    Nrrd,
    SegNrrd,
}

// ---------------------------------------------------------------------------------------------------
// Shared internals.

/// The error for a malformed or unsupported file.
pub(crate) fn format_err(path: &Path, problem: impl std::fmt::Display) -> DspnetError {
    DspnetError::VolumeFormat(format!("{}: {problem}", path.display()))
}

/// Storage type of raw samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl DType {
    pub(crate) fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }
}

/// Raw samples as stored: `bytes` holds exactly `count * dtype.size()` bytes. Value = stored * slope +
/// inter.
pub(crate) struct Raw {
    pub bytes: Vec<u8>,
    pub dtype: DType,
    pub big_endian: bool,
    pub slope: f64,
    pub inter: f64,
}

impl Raw {
    /// Decode every sample to f64 (scaled), map it with `f(index, value)`.
    pub(crate) fn convert<T>(&self, mut f: impl FnMut(usize, f64) -> Result<T>) -> Result<Vec<T>> {
        let (slope, inter) = (self.slope, self.inter);
        let identity = slope == 1.0 && inter == 0.0;
        let mut out = Vec::with_capacity(self.bytes.len() / self.dtype.size());
        macro_rules! go {
            ($t:ty, $n:expr) => {{
                for (idx, c) in self.bytes.chunks_exact($n).enumerate() {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c);
                    let v = if self.big_endian { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) } as f64;
                    out.push(f(idx, if identity { v } else { v * slope + inter })?);
                }
            }};
        }
        match self.dtype {
            DType::U8 => go!(u8, 1),
            DType::I8 => go!(i8, 1),
            DType::U16 => go!(u16, 2),
            DType::I16 => go!(i16, 2),
            DType::U32 => go!(u32, 4),
            DType::I32 => go!(i32, 4),
            DType::U64 => go!(u64, 8),
            DType::I64 => go!(i64, 8),
            DType::F32 => go!(f32, 4),
            DType::F64 => go!(f64, 8),
        }
        Ok(out)
    }
}

pub(crate) enum Samples {
    Raw(Raw),
    F32(Vec<f32>),
}

/// What the format readers return: `layers` consecutive 3D volumes (layer slowest).
pub(crate) struct Decoded {
    pub geometry: Geometry,
    pub samples: Samples,
    pub layers: usize,
    /// NRRD `key:=value` pairs (Slicer segment metadata); empty for other formats.
    pub key_values: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Detected {
    Nifti,
    Nrrd,
    DicomFile,
    DicomFolder,
}

/// Recognise a path by content: folder → DICOM series; file by magic bytes; unknown magic → an error
/// worded after the extension.
pub(crate) fn detect(path: &Path) -> Result<Detected> {
    let meta = std::fs::metadata(path).map_err(|e| DspnetError::io(path, e))?;
    if meta.is_dir() {
        return Ok(Detected::DicomFolder);
    }
    let mut head = Vec::with_capacity(132);
    File::open(path).and_then(|f| f.take(132).read_to_end(&mut head)).map_err(|e| DspnetError::io(path, e))?;
    if head.starts_with(b"NRRD000") {
        return Ok(Detected::Nrrd);
    }
    if head.len() >= 132 && &head[128..132] == b"DICM" {
        return Ok(Detected::DicomFile);
    }
    if head.starts_with(&[0x1f, 0x8b]) || nifti::looks_like_nifti(&head) {
        // gzip: NIfTI is the only gzip-wrapped whole-file format read here; the NIfTI reader checks
        // the header inside.
        return Ok(Detected::Nifti);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let problem = if head.is_empty() {
        "file is empty".to_string()
    } else if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        "not a NIfTI file: header size field is neither 348 (NIfTI-1) nor 540 (NIfTI-2) and the file is not gzip-compressed".to_string()
    } else if name.ends_with(".nrrd") || name.ends_with(".nhdr") {
        "not a NRRD file: it does not start with the magic \"NRRD000x\"".to_string()
    } else if name.ends_with(".dcm") {
        "not a DICOM Part-10 file: no \"DICM\" marker after the 128-byte preamble".to_string()
    } else {
        "unrecognised image format (expected NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr/.seg.nrrd, or a DICOM series folder)"
            .to_string()
    };
    Err(format_err(path, problem))
}

fn read_any(path: &Path) -> Result<Decoded> {
    match detect(path)? {
        Detected::Nifti => nifti::read(path),
        Detected::Nrrd => nrrd::read(path),
        Detected::DicomFolder => dicom::read_series_decoded(path, None),
        Detected::DicomFile => dicom::read_series_of_file(path),
    }
}

/// Geometry from a 3x4 LPS affine (columns = index axes scaled by spacing). `what` names the source
/// in errors.
pub(crate) fn geometry_from_affine(
    path: &Path,
    dims: [usize; 3],
    affine: [[f64; 4]; 3],
    what: &str,
) -> Result<Geometry> {
    if !affine.iter().flatten().all(|v| v.is_finite()) {
        return Err(format_err(path, format!("{what} contains non-finite values: {affine:?}")));
    }
    let mut spacing = [0.0; 3];
    let mut direction = [[0.0; 3]; 3];
    for c in 0..3 {
        let norm = (0..3).map(|r| affine[r][c] * affine[r][c]).sum::<f64>().sqrt();
        if !(norm.is_finite() && norm > 0.0) {
            return Err(format_err(path, format!("{what}: index axis {c} has zero length (spacing 0)")));
        }
        spacing[c] = norm;
        for r in 0..3 {
            direction[r][c] = affine[r][c] / norm + 0.0; // + 0.0: no -0.0 from sign flips
        }
    }
    if det3(&direction).abs() < 1e-6 {
        return Err(format_err(path, format!("{what} is singular: its axes do not span 3D space")));
    }
    Ok(Geometry { dims, spacing, origin: [affine[0][3] + 0.0, affine[1][3] + 0.0, affine[2][3] + 0.0], direction })
}

pub(crate) fn det3(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

/// The message of an error and all its sources, joined with ": ".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let m = cause.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = cause.source();
    }
    s
}

/// Read from `r` until `limit` bytes or end of stream, growing the buffer only as data arrives (so a
/// size declared by a header is never allocated before the data exists). I/O and decompression
/// errors are mapped by the caller.
pub(crate) fn read_up_to<R: Read + ?Sized>(r: &mut R, limit: u64, out: &mut Vec<u8>) -> std::io::Result<usize> {
    r.take(limit).read_to_end(out)
}

/// Create `tmp`, let `body` write the (uncompressed) content, gzip-compressed when `gz`; finish the
/// gzip trailer, flush and sync so that every error surfaces here, before the atomic rename.
pub(crate) fn write_file(tmp: &Path, gz: bool, body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let io = |e| DspnetError::io(tmp, e);
    let file = File::create(tmp).map_err(io)?;
    let writer = if gz {
        let mut enc = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::default());
        body(&mut enc).map_err(io)?;
        enc.finish().map_err(io)?
    } else {
        let mut w = BufWriter::new(file);
        body(&mut w).map_err(io)?;
        w
    };
    let file = writer.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}

/// Little-endian samples, as u8 when `as_u8` (the caller checked every value fits).
pub(crate) fn write_samples(out: &mut dyn Write, data: &[u16], as_u8: bool) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1 << 16);
    for chunk in data.chunks(1 << 15) {
        buf.clear();
        if as_u8 {
            buf.extend(chunk.iter().map(|&v| v as u8));
        } else {
            for v in chunk {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.write_all(&buf)?;
    }
    Ok(())
}
