//! NIfTI-1 and NIfTI-2 single-file images (`.nii`, `.nii.gz`, either byte order); NIfTI-1 writer.
//!
//! Geometry follows nifti1_io (the reference implementation used by ITK and nibabel): the sform when
//! `sform_code > 0`, else the qform (quaternion, qfac = sign of `pixdim[0]`, offsets) when
//! `qform_code > 0`, else `diag(pixdim[1..4])` at the origin. The resulting RAS affine is turned into
//! LPS by negating its first two rows. Spatial units in metres or microns are converted to mm.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::{
    format_err, geometry_from_affine, read_up_to, write_file, write_samples, DType, Decoded, Geometry, Raw, Samples,
    Volume,
};
use crate::{DspnetError, Result};

/// The header fields libdspnet uses, from either NIfTI version.
#[derive(Clone, Debug)]
pub(crate) struct Header {
    pub big_endian: bool,
    pub dim: [i64; 8],
    pub datatype: i16,
    pub pixdim: [f64; 8],
    pub vox_offset: f64,
    pub scl_slope: f64,
    pub scl_inter: f64,
    pub qform_code: i32,
    pub sform_code: i32,
    pub quatern: [f64; 3],
    pub qoffset: [f64; 3],
    pub srow: [[f64; 4]; 3],
    pub xyzt_units: i32,
    // Kept for writing labels "like" this image.
    pub dim_info: u8,
    pub slice_start: i64,
    pub slice_end: i64,
    pub slice_code: i32,
    pub slice_duration: f64,
    pub toffset: f64,
    pub descrip: [u8; 80],
    pub aux_file: [u8; 24],
}

const HDR1: usize = 348;
const HDR2: usize = 540;

/// True when the first bytes hold a NIfTI-1/2 `sizeof_hdr` in either byte order.
pub(crate) fn looks_like_nifti(head: &[u8]) -> bool {
    if head.len() < 4 {
        return false;
    }
    let a = [head[0], head[1], head[2], head[3]];
    let (le, be) = (i32::from_le_bytes(a), i32::from_be_bytes(a));
    [le, be].iter().any(|&s| s == HDR1 as i32 || s == HDR2 as i32)
}

struct Bytes<'a> {
    b: &'a [u8],
    be: bool,
}

impl Bytes<'_> {
    fn a<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[off..off + N]);
        a
    }
    fn i16(&self, off: usize) -> i16 {
        if self.be {
            i16::from_be_bytes(self.a(off))
        } else {
            i16::from_le_bytes(self.a(off))
        }
    }
    fn i32(&self, off: usize) -> i32 {
        if self.be {
            i32::from_be_bytes(self.a(off))
        } else {
            i32::from_le_bytes(self.a(off))
        }
    }
    fn i64(&self, off: usize) -> i64 {
        if self.be {
            i64::from_be_bytes(self.a(off))
        } else {
            i64::from_le_bytes(self.a(off))
        }
    }
    fn f32(&self, off: usize) -> f64 {
        (if self.be { f32::from_be_bytes(self.a(off)) } else { f32::from_le_bytes(self.a(off)) }) as f64
    }
    fn f64(&self, off: usize) -> f64 {
        if self.be {
            f64::from_be_bytes(self.a(off))
        } else {
            f64::from_le_bytes(self.a(off))
        }
    }
}

/// Parse a header from its first bytes (at least 348, or 540 for NIfTI-2).
pub(crate) fn parse_header(path: &Path, b: &[u8]) -> Result<Header> {
    if b.len() < 4 {
        return Err(format_err(path, format!("truncated NIfTI header: {} bytes", b.len())));
    }
    let a = [b[0], b[1], b[2], b[3]];
    let (version, be, size) = match (i32::from_le_bytes(a), i32::from_be_bytes(a)) {
        (348, _) => (1u8, false, HDR1),
        (_, 348) => (1, true, HDR1),
        (540, _) => (2, false, HDR2),
        (_, 540) => (2, true, HDR2),
        (le, _) => {
            return Err(format_err(
                path,
                format!("not a NIfTI file: sizeof_hdr is {le} (expected 348 for NIfTI-1 or 540 for NIfTI-2)"),
            ))
        }
    };
    if b.len() < size {
        return Err(format_err(path, format!("truncated NIfTI-{version} header: {} of {size} bytes", b.len())));
    }
    let r = Bytes { b, be };
    let mut descrip = [0u8; 80];
    let mut aux_file = [0u8; 24];
    let h = if version == 1 {
        let magic = &b[344..348];
        if magic == b"ni1\0" {
            return Err(format_err(
                path,
                "NIfTI-1 header/image pair (.hdr/.img, magic \"ni1\") is not supported; convert to a single .nii",
            ));
        }
        if magic != b"n+1\0" {
            return Err(format_err(path, format!("bad NIfTI-1 magic {magic:?} (expected \"n+1\\0\")")));
        }
        descrip.copy_from_slice(&b[148..228]);
        aux_file.copy_from_slice(&b[228..252]);
        let mut dim = [0i64; 8];
        let mut pixdim = [0f64; 8];
        for i in 0..8 {
            dim[i] = r.i16(40 + 2 * i) as i64;
            pixdim[i] = r.f32(76 + 4 * i);
        }
        let mut srow = [[0f64; 4]; 3];
        for (row, s) in srow.iter_mut().enumerate() {
            for (c, v) in s.iter_mut().enumerate() {
                *v = r.f32(280 + 16 * row + 4 * c);
            }
        }
        Header {
            big_endian: be,
            dim,
            datatype: r.i16(70),
            pixdim,
            vox_offset: r.f32(108),
            scl_slope: r.f32(112),
            scl_inter: r.f32(116),
            qform_code: r.i16(252) as i32,
            sform_code: r.i16(254) as i32,
            quatern: [r.f32(256), r.f32(260), r.f32(264)],
            qoffset: [r.f32(268), r.f32(272), r.f32(276)],
            srow,
            xyzt_units: b[123] as i32,
            dim_info: b[39],
            slice_start: r.i16(74) as i64,
            slice_end: r.i16(120) as i64,
            slice_code: b[122] as i32,
            slice_duration: r.f32(132),
            toffset: r.f32(136),
            descrip,
            aux_file,
        }
    } else {
        let magic = &b[4..12];
        if &magic[..4] == b"ni2\0" {
            return Err(format_err(path, "NIfTI-2 header/image pair (magic \"ni2\") is not supported"));
        }
        if magic != b"n+2\0\r\n\x1a\n" {
            return Err(format_err(path, format!("bad NIfTI-2 magic {magic:?}")));
        }
        descrip.copy_from_slice(&b[240..320]);
        aux_file.copy_from_slice(&b[320..344]);
        let mut dim = [0i64; 8];
        let mut pixdim = [0f64; 8];
        for i in 0..8 {
            dim[i] = r.i64(16 + 8 * i);
            pixdim[i] = r.f64(104 + 8 * i);
        }
        let mut srow = [[0f64; 4]; 3];
        for (row, s) in srow.iter_mut().enumerate() {
            for (c, v) in s.iter_mut().enumerate() {
                *v = r.f64(400 + 32 * row + 8 * c);
            }
        }
        Header {
            big_endian: be,
            dim,
            datatype: r.i16(12),
            pixdim,
            vox_offset: r.i64(168) as f64,
            scl_slope: r.f64(176),
            scl_inter: r.f64(184),
            qform_code: r.i32(344),
            sform_code: r.i32(348),
            quatern: [r.f64(352), r.f64(360), r.f64(368)],
            qoffset: [r.f64(376), r.f64(384), r.f64(392)],
            srow,
            xyzt_units: r.i32(500),
            dim_info: b[524],
            slice_start: r.i64(224),
            slice_end: r.i64(232),
            slice_code: r.i32(496),
            slice_duration: r.f64(208),
            toffset: r.f64(216),
            descrip,
            aux_file,
        }
    };
    Ok(h)
}

fn dtype_of(path: &Path, code: i16) -> Result<DType> {
    Ok(match code {
        2 => DType::U8,
        4 => DType::I16,
        8 => DType::I32,
        16 => DType::F32,
        64 => DType::F64,
        256 => DType::I8,
        512 => DType::U16,
        768 => DType::U32,
        1024 => DType::I64,
        1280 => DType::U64,
        1 => return Err(format_err(path, "NIfTI datatype 1 (binary bits) is not supported")),
        32 | 1792 | 2048 => return Err(format_err(path, format!("NIfTI datatype {code} (complex) is not supported"))),
        128 | 2304 => return Err(format_err(path, format!("NIfTI datatype {code} (RGB colour) is not supported"))),
        1536 => return Err(format_err(path, "NIfTI datatype 1536 (float128) is not supported")),
        _ => return Err(format_err(path, format!("unknown NIfTI datatype code {code}"))),
    })
}

/// Spatial dims after validation: 3D, or more dimensions that are all 1.
fn spatial_dims(path: &Path, h: &Header) -> Result<[usize; 3]> {
    let nd = h.dim[0];
    if !(1..=7).contains(&nd) {
        return Err(format_err(path, format!("dim[0] = {nd}: the number of dimensions must be 1..7")));
    }
    let nd = nd as usize;
    for a in 1..=nd {
        if h.dim[a] <= 0 {
            return Err(format_err(path, format!("dim[{a}] = {}: every dimension must be at least 1", h.dim[a])));
        }
    }
    h.dim[1..=nd].iter().try_fold(1usize, |acc, &d| acc.checked_mul(d as usize)).ok_or_else(|| {
        format_err(path, format!("dims {:?} overflow: the voxel count does not fit in memory", &h.dim[1..=nd]))
    })?;
    if nd < 3 {
        return Err(format_err(path, format!("image is {nd}D (dims {:?}); a 3D volume is required", &h.dim[1..=nd])));
    }
    for a in 4..=nd {
        if h.dim[a] != 1 {
            return Err(format_err(
                path,
                format!(
                    "image is {nd}D with dim[{a}] = {} (a time series or multi-component image); a single 3D volume is required",
                    h.dim[a]
                ),
            ));
        }
    }
    Ok([h.dim[1] as usize, h.dim[2] as usize, h.dim[3] as usize])
}

/// RAS affine → LPS geometry, as described in the module docs.
pub(crate) fn geometry(path: &Path, h: &Header, dims: [usize; 3]) -> Result<Geometry> {
    let mut ras = [[0f64; 4]; 3];
    let what;
    if h.sform_code > 0 {
        what = "sform";
        ras = h.srow;
    } else {
        for a in 1..=3 {
            let p = h.pixdim[a];
            if !(p.is_finite() && p > 0.0) {
                return Err(format_err(path, format!("pixdim[{a}] = {p}: voxel spacing must be finite and positive")));
            }
        }
        if h.qform_code > 0 {
            what = "qform";
            let [mut b, mut c, mut d] = h.quatern;
            if !(b.is_finite() && c.is_finite() && d.is_finite()) {
                return Err(format_err(path, format!("qform quaternion {:?} is not finite", h.quatern)));
            }
            let mut a = 1.0 - (b * b + c * c + d * d);
            if a < 1e-7 {
                // 180-degree rotation: renormalise (b, c, d), as nifti1_io does.
                let n = (b * b + c * c + d * d).sqrt();
                if n == 0.0 {
                    return Err(format_err(path, "qform quaternion is degenerate"));
                }
                b /= n;
                c /= n;
                d /= n;
                a = 0.0;
            } else {
                a = a.sqrt();
            }
            let r = [
                [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
                [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
                [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
            ];
            let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
            let scale = [h.pixdim[1], h.pixdim[2], h.pixdim[3] * qfac];
            for row in 0..3 {
                for col in 0..3 {
                    ras[row][col] = r[row][col] * scale[col];
                }
                ras[row][3] = h.qoffset[row];
            }
        } else {
            what = "pixdim (no qform/sform)";
            for a in 0..3 {
                ras[a][a] = h.pixdim[a + 1];
            }
        }
    }
    // Spatial units: metres and microns to mm (0 = unknown and 2 = mm are taken as mm).
    let unit = match h.xyzt_units & 7 {
        1 => 1000.0,
        3 => 0.001,
        _ => 1.0,
    };
    let mut lps = ras;
    for (row, l) in lps.iter_mut().enumerate() {
        for v in l.iter_mut() {
            *v *= unit;
            if row < 2 {
                *v = -*v;
            }
        }
    }
    geometry_from_affine(path, dims, lps, what)
}

/// An open NIfTI stream (decompressed if gzip) positioned after the first bytes.
fn open(path: &Path) -> Result<(Box<dyn Read>, bool, Option<u64>)> {
    let file = File::open(path).map_err(|e| DspnetError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| DspnetError::io(path, e))?.len();
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match reader.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(DspnetError::io(path, e)),
        }
    }
    let gz = got == 2 && magic == [0x1f, 0x8b];
    let head = std::io::Cursor::new(magic[..got].to_vec());
    let stream = head.chain(reader);
    if gz {
        Ok((Box::new(MultiGzDecoder::new(stream)), true, None))
    } else {
        Ok((Box::new(stream), false, Some(file_len)))
    }
}

fn stream_err(path: &Path, gz: bool, e: std::io::Error) -> DspnetError {
    if gz {
        format_err(path, format!("corrupt or truncated gzip stream: {e}"))
    } else {
        DspnetError::io(path, e)
    }
}

fn read_header_stream(path: &Path, r: &mut dyn Read, gz: bool) -> Result<(Header, usize)> {
    let mut buf = Vec::with_capacity(HDR2);
    read_up_to(&mut *r, HDR1 as u64, &mut buf).map_err(|e| stream_err(path, gz, e))?;
    if buf.len() < 4 {
        return Err(format_err(path, format!("truncated: only {} bytes, too short for a NIfTI header", buf.len())));
    }
    let a = [buf[0], buf[1], buf[2], buf[3]];
    if i32::from_le_bytes(a) == HDR2 as i32 || i32::from_be_bytes(a) == HDR2 as i32 {
        read_up_to(&mut *r, (HDR2 - HDR1) as u64, &mut buf).map_err(|e| stream_err(path, gz, e))?;
    }
    let h = parse_header(path, &buf)?;
    Ok((h, buf.len()))
}

pub(crate) fn read_header_only(path: &Path) -> Result<Header> {
    let (mut r, gz, _) = open(path)?;
    Ok(read_header_stream(path, &mut r, gz)?.0)
}

pub(crate) fn read(path: &Path) -> Result<Decoded> {
    let (mut r, gz, file_len) = open(path)?;
    let (h, header_len) = read_header_stream(path, &mut r, gz)?;
    let dims = spatial_dims(path, &h)?;
    let dtype = dtype_of(path, h.datatype)?;
    let geometry = geometry(path, &h, dims)?;
    let n = dims[0] * dims[1] * dims[2]; // checked in spatial_dims (the full product did not overflow)
    let data_len =
        n.checked_mul(dtype.size()).ok_or_else(|| format_err(path, format!("dims {dims:?}: data size overflows")))?;
    let min_offset = header_len + 4; // header + extension flag
    let offset = h.vox_offset;
    if !offset.is_finite() || offset < 0.0 || offset.fract() != 0.0 || offset > 1e15 {
        return Err(format_err(path, format!("vox_offset = {offset} is not a valid byte offset")));
    }
    // As nibabel: a single-file header with vox_offset 0 means "right after the header".
    let offset = (offset as u64).max(if offset == 0.0 { min_offset as u64 } else { 0 });
    if offset < header_len as u64 {
        return Err(format_err(path, format!("vox_offset = {offset} points inside the {header_len}-byte header")));
    }
    if let Some(len) = file_len {
        let need = offset.checked_add(data_len as u64);
        if need.is_none_or(|need| need > len) {
            return Err(format_err(
                path,
                format!(
                    "truncated or inconsistent: the header declares {n} voxels of {dtype:?} ({data_len} bytes) at offset {offset}, but the file has only {len} bytes"
                ),
            ));
        }
    }
    // Skip extensions up to vox_offset.
    let skip = offset - header_len as u64;
    let skipped = std::io::copy(&mut (&mut r).take(skip), &mut std::io::sink()).map_err(|e| stream_err(path, gz, e))?;
    if skipped != skip {
        return Err(format_err(path, format!("truncated: the file ends before vox_offset = {offset}")));
    }
    let mut bytes = Vec::new();
    if file_len.is_some() {
        bytes.reserve_exact(data_len); // checked against the real file length above
    }
    read_up_to(&mut r, data_len as u64, &mut bytes).map_err(|e| stream_err(path, gz, e))?;
    if bytes.len() != data_len {
        return Err(format_err(
            path,
            format!(
                "truncated or inconsistent: the header declares {n} voxels of {dtype:?} ({data_len} bytes) but only {} bytes of voxel data follow",
                bytes.len()
            ),
        ));
    }
    // scl_slope 0 (or not finite) means "no scaling" (NIfTI-1 standard, as nibabel).
    let (slope, inter) = if h.scl_slope != 0.0 && h.scl_slope.is_finite() {
        (h.scl_slope, if h.scl_inter.is_finite() { h.scl_inter } else { 0.0 })
    } else {
        (1.0, 0.0)
    };
    Ok(Decoded {
        geometry,
        samples: Samples::Raw(Raw { bytes, dtype, big_endian: h.big_endian, slope, inter }),
        layers: 1,
        key_values: Vec::new(),
    })
}

/// Rotation (LPS direction, columns) → RAS quaternion (b, c, d) and qfac, following nifti1_io's
/// `nifti_mat44_to_quatern`. `None` when the direction is not orthonormal (then no qform is written).
fn quaternion(direction: &[[f64; 3]; 3]) -> Option<([f64; 3], f64)> {
    // RAS direction: negate rows 0 and 1.
    let mut r = *direction;
    for row in r.iter_mut().take(2) {
        for v in row.iter_mut() {
            *v = -*v;
        }
    }
    // Orthonormality check.
    for a in 0..3 {
        for b in 0..3 {
            let dot: f64 = (0..3).map(|k| r[k][a] * r[k][b]).sum();
            let want = if a == b { 1.0 } else { 0.0 };
            if (dot - want).abs() > 1e-4 {
                return None;
            }
        }
    }
    let qfac = if super::det3(&r) < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    } else {
        1.0
    };
    let (r11, r12, r13) = (r[0][0], r[0][1], r[0][2]);
    let (r21, r22, r23) = (r[1][0], r[1][1], r[1][2]);
    let (r31, r32, r33) = (r[2][0], r[2][1], r[2][2]);
    let mut a = r11 + r22 + r33 + 1.0;
    let (b, c, d);
    if a > 0.5 {
        a = 0.5 * a.sqrt();
        b = 0.25 * (r32 - r23) / a;
        c = 0.25 * (r13 - r31) / a;
        d = 0.25 * (r21 - r12) / a;
    } else {
        let xd = 1.0 + r11 - (r22 + r33);
        let yd = 1.0 + r22 - (r11 + r33);
        let zd = 1.0 + r33 - (r11 + r22);
        let (bb, cc, dd, aa);
        if xd > 1.0 {
            bb = 0.5 * xd.sqrt();
            cc = 0.25 * (r12 + r21) / bb;
            dd = 0.25 * (r13 + r31) / bb;
            aa = 0.25 * (r32 - r23) / bb;
        } else if yd > 1.0 {
            cc = 0.5 * yd.sqrt();
            bb = 0.25 * (r12 + r21) / cc;
            dd = 0.25 * (r23 + r32) / cc;
            aa = 0.25 * (r13 - r31) / cc;
        } else {
            dd = 0.5 * zd.sqrt();
            bb = 0.25 * (r13 + r31) / dd;
            cc = 0.25 * (r23 + r32) / dd;
            aa = 0.25 * (r21 - r12) / dd;
        }
        if aa < 0.0 {
            (b, c, d) = (-bb, -cc, -dd);
        } else {
            (b, c, d) = (bb, cc, dd);
        }
    }
    Some(([b, c, d], qfac))
}

/// The 352-byte little-endian NIfTI-1 header (with the empty extension flag) for `labels`.
fn build_header(labels: &Volume<u16>, like: Option<&Header>, datatype: i16, bitpix: i16) -> Result<Vec<u8>> {
    let g = &labels.geometry;
    for (a, &d) in g.dims.iter().enumerate() {
        if d > i16::MAX as usize {
            return Err(DspnetError::InvalidArgument(format!(
                "dims {:?}: axis {a} has more than 32767 voxels, the NIfTI-1 limit",
                g.dims
            )));
        }
    }
    let mut h = vec![0u8; 352];
    let put = |h: &mut Vec<u8>, off: usize, b: &[u8]| h[off..off + b.len()].copy_from_slice(b);
    put(&mut h, 0, &348i32.to_le_bytes());
    h[38] = b'r'; // "regular", as nibabel and nifti1_io write it
    let dims = [3i16, g.dims[0] as i16, g.dims[1] as i16, g.dims[2] as i16, 1, 1, 1, 1];
    for (i, d) in dims.iter().enumerate() {
        put(&mut h, 40 + 2 * i, &d.to_le_bytes());
    }
    put(&mut h, 70, &datatype.to_le_bytes());
    put(&mut h, 72, &bitpix.to_le_bytes());

    // RAS affine from the LPS geometry.
    let lps = g.affine_lps();
    let mut ras = lps;
    for row in ras.iter_mut().take(2) {
        for v in row.iter_mut() {
            *v = -*v;
        }
    }
    let (quat, qfac) = match quaternion(&g.direction) {
        Some((q, f)) => (Some(q), f),
        None => (None, 1.0),
    };
    let mut pixdim = [qfac as f32, g.spacing[0] as f32, g.spacing[1] as f32, g.spacing[2] as f32, 1.0, 1.0, 1.0, 1.0];
    if let Some(l) = like {
        for i in 4..8 {
            if l.pixdim[i].is_finite() {
                pixdim[i] = l.pixdim[i] as f32;
            }
        }
    }
    for (i, p) in pixdim.iter().enumerate() {
        put(&mut h, 76 + 4 * i, &p.to_le_bytes());
    }
    put(&mut h, 108, &352f32.to_le_bytes()); // vox_offset
    put(&mut h, 112, &1f32.to_le_bytes()); // scl_slope
    put(&mut h, 116, &0f32.to_le_bytes()); // scl_inter
                                           // Codes: keep the like image's (e.g. 4 = MNI152) where set; 1 = scanner
                                           // otherwise.
    let (like_q, like_s) = like.map(|l| (l.qform_code, l.sform_code)).unwrap_or((0, 0));
    let valid = |c: i32| (1..=5).contains(&c);
    let sform_code = if valid(like_s) {
        like_s
    } else if valid(like_q) {
        like_q
    } else {
        1
    };
    let qform_code = if quat.is_none() {
        0
    } else if valid(like_q) {
        like_q
    } else {
        sform_code
    };
    let mut xyzt_units: u8 = 2 | 8; // mm, s
    if let Some(l) = like {
        h[39] = l.dim_info;
        put(&mut h, 74, &(l.slice_start.clamp(i16::MIN as i64, i16::MAX as i64) as i16).to_le_bytes());
        put(&mut h, 120, &(l.slice_end.clamp(i16::MIN as i64, i16::MAX as i64) as i16).to_le_bytes());
        h[122] = l.slice_code.clamp(0, 255) as u8;
        put(&mut h, 132, &(l.slice_duration as f32).to_le_bytes());
        put(&mut h, 136, &(l.toffset as f32).to_le_bytes());
        xyzt_units = 2 | ((l.xyzt_units & 0x38) as u8); // mm (the geometry is in mm), like's time unit
        put(&mut h, 148, &l.descrip);
        put(&mut h, 228, &l.aux_file);
    } else {
        put(&mut h, 148, b"libdspnet labels");
    }
    h[123] = xyzt_units;
    put(&mut h, 252, &(qform_code as i16).to_le_bytes());
    put(&mut h, 254, &(sform_code as i16).to_le_bytes());
    if let Some(q) = quat {
        for i in 0..3 {
            put(&mut h, 256 + 4 * i, &(q[i] as f32).to_le_bytes());
            put(&mut h, 268 + 4 * i, &(ras[i][3] as f32).to_le_bytes());
        }
    }
    for (row, r) in ras.iter().enumerate() {
        for (c, v) in r.iter().enumerate() {
            put(&mut h, 280 + 16 * row + 4 * c, &(*v as f32).to_le_bytes());
        }
    }
    put(&mut h, 344, b"n+1\0");
    Ok(h)
}

/// Write `labels` as a NIfTI-1 file at `tmp` (gzip-compressed when `gz`).
pub(crate) fn write(tmp: &Path, labels: &Volume<u16>, like: Option<&Header>, gz: bool) -> Result<()> {
    let max = labels.data.iter().copied().max().unwrap_or(0);
    let (datatype, bitpix) = if max <= u8::MAX as u16 { (2i16, 8i16) } else { (512, 16) };
    let header = build_header(labels, like, datatype, bitpix)?;
    write_file(tmp, gz, |out| {
        out.write_all(&header)?;
        write_samples(out, &labels.data, bitpix == 8)
    })
}
