//! DICOM series (one single-frame file per slice, uncompressed pixel data) into one volume.
//!
//! Parsing uses dicom-rs (`dicom-object`): its collector reads the attributes up to the pixel data and
//! then exactly the pixel data element, so data after it (e.g. zero padding at the end of a file) is
//! never parsed. Geometry: slices sorted by ImagePositionPatient projected on the slice normal
//! (ImageOrientationPatient row × column); spacing from PixelSpacing and the slice positions (not from
//! SliceThickness or SpacingBetweenSlices); origin = position of the first slice; direction columns =
//! row direction, column direction, normal. All in LPS, as DICOM stores them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_object::collector::DicomCollector;
use dicom_object::{InMemDicomObject, Tag};

use super::{error_chain, format_err, Decoded, Detected, Geometry, Samples, Volume};
use crate::{DspnetError, Result};

/// Largest relative deviation of one slice gap from the mean gap that is accepted. Positions are often
/// rounded (the shared brain series has gaps of 6.96–7.07 mm around 7.0); a missing slice doubles a gap.
const MAX_GAP_DEVIATION: f64 = 0.05;
/// Largest offset (as a fraction of the smallest pixel spacing) of a slice from the line through the
/// first slice along the normal: beyond it the stack is sheared (gantry tilt) and has no regular grid.
const MAX_SHEAR_VOXELS: f64 = 0.25;

const SERIES_UID: Tag = Tag(0x0020, 0x000E);
const SERIES_DESCRIPTION: Tag = Tag(0x0008, 0x103E);
const IMAGE_POSITION: Tag = Tag(0x0020, 0x0032);
const IMAGE_ORIENTATION: Tag = Tag(0x0020, 0x0037);
const PIXEL_SPACING: Tag = Tag(0x0028, 0x0030);
const SAMPLES_PER_PIXEL: Tag = Tag(0x0028, 0x0002);
const NUMBER_OF_FRAMES: Tag = Tag(0x0028, 0x0008);
const ROWS: Tag = Tag(0x0028, 0x0010);
const COLUMNS: Tag = Tag(0x0028, 0x0011);
const BITS_ALLOCATED: Tag = Tag(0x0028, 0x0100);
const BITS_STORED: Tag = Tag(0x0028, 0x0101);
const HIGH_BIT: Tag = Tag(0x0028, 0x0102);
const PIXEL_REPRESENTATION: Tag = Tag(0x0028, 0x0103);
const RESCALE_INTERCEPT: Tag = Tag(0x0028, 0x1052);
const RESCALE_SLOPE: Tag = Tag(0x0028, 0x1053);

/// Transfer syntaxes with native (uncompressed) pixel data.
const NATIVE_TS: [&str; 4] = [
    "1.2.840.10008.1.2",      // implicit VR little endian
    "1.2.840.10008.1.2.1",    // explicit VR little endian
    "1.2.840.10008.1.2.2",    // explicit VR big endian (retired)
    "1.2.840.10008.1.2.1.99", // deflated explicit VR little endian
];

#[derive(Clone, Debug)]
struct Slice {
    path: PathBuf,
    series_uid: String,
    series_description: String,
    position: [f64; 3],
    orientation: [f64; 6],
    pixel_spacing: [f64; 2],
    rows: usize,
    columns: usize,
    samples_per_pixel: u16,
    frames: i64,
    bits_allocated: u16,
    bits_stored: u16,
    high_bit: u16,
    signed: bool,
    slope: f64,
    intercept: f64,
    transfer_syntax: String,
}

/// Read one DICOM series from the folder `dir` as f32 (rescale applied). With `series_uid`, only that
/// series (SeriesInstanceUID) is read; without it the folder must hold exactly one image series (else
/// the error lists the series found). Files that are not DICOM Part-10 (no "DICM" marker) and DICOM
/// objects without image geometry (DICOMDIR, reports) are skipped. Compressed transfer syntaxes,
/// multi-frame objects and colour images are not supported.
pub fn read_dicom_series(dir: &Path, series_uid: Option<&str>) -> Result<Volume<f32>> {
    let (geometry, data) = read_series(dir, series_uid)?;
    Ok(Volume { data, geometry })
}

fn dicom_err(path: &Path, e: &dyn std::error::Error) -> DspnetError {
    format_err(path, format!("cannot parse DICOM: {}", error_chain(e)))
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    Some(s.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string())
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.get(tag)?.to_multi_float64().ok()
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.get(tag)?.to_int::<i64>().ok()
}

/// The "undefined length" (0xFFFFFFFF): the value is a sequence of items (or encapsulated fragments) closed
/// by a delimiter, and is walked element by element.
const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;
/// Explicit-VR value representations whose length field is 2 bytes. Every other VR, an unknown one
/// included, has 2 reserved bytes and a 4-byte length: dicom-rs reads an unknown VR as UN, and this check
/// must walk the file exactly as dicom-rs will.
const SHORT_VRS: [&[u8; 2]; 21] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS",
    b"ST", b"TM", b"UI", b"UL", b"US",
];

/// Walks every data element header of a Part-10 file and checks that each value is really there, before
/// dicom-rs reads the file: dicom-rs allocates (and fills) a value's declared length up front, so a few
/// bytes claiming a 4 GB element would otherwise take 4 GB (found by fuzzing). Values are skipped by
/// streaming, never buffered; a deflated data set is checked on its inflated stream.
fn check_element_lengths(path: &Path) -> Result<()> {
    use std::io::{BufReader, Read};
    let file = std::fs::File::open(path).map_err(|e| DspnetError::io(path, e))?;
    let mut r = BufReader::new(file);
    let bad = |what: String| format_err(path, what);
    let mut preamble = [0u8; 132];
    r.read_exact(&mut preamble).map_err(|_| bad("shorter than a DICOM preamble".into()))?;
    // File meta group, explicit VR little endian, walked as dicom-rs reads it: its first element is the
    // group length, then elements (of any group) until that many bytes are read. The transfer syntax
    // says how the rest is coded.
    let file_len = std::fs::metadata(path).map_err(|e| DspnetError::io(path, e))?.len();
    let mut tag = [0u8; 4];
    if read_or_eof(&mut r, &mut tag).map_err(|e| DspnetError::io(path, e))? {
        return Ok(());
    }
    let (len, _) = element_length(&mut r, true, false).map_err(|e| bad(format!("file meta group: {e}")))?;
    if tag != [2, 0, 0, 0] || len != 4 {
        return Ok(()); // not a group length: dicom-rs refuses the file itself, with its own message
    }
    let mut value = [0u8; 4];
    r.read_exact(&mut value).map_err(|_| bad("file meta group length truncated".into()))?;
    let group_length = u64::from(u32::from_le_bytes(value));
    if 144 + group_length > file_len {
        return Err(bad(format!(
            "file meta group length {group_length} is more than the file holds ({file_len} bytes)"
        )));
    }
    let mut ts = String::new();
    let mut consumed = 0u64;
    while consumed < group_length {
        r.read_exact(&mut tag).map_err(|_| bad("file meta group truncated".into()))?;
        let (len, header) = element_length(&mut r, true, false).map_err(|e| bad(format!("file meta element: {e}")))?;
        if len == UNDEFINED_LENGTH {
            return Ok(()); // dicom-rs refuses an undefined length here
        }
        if tag == [2, 0, 0x10, 0] && len <= 64 {
            let mut v = vec![0u8; len as usize];
            r.read_exact(&mut v).map_err(|_| bad("TransferSyntaxUID truncated".into()))?;
            ts = String::from_utf8_lossy(&v).trim_end_matches(['\0', ' ']).to_string();
        } else {
            skip(&mut r, len).map_err(|_| {
                bad(format!(
                    "file meta element ({:02x}{:02x},{:02x}{:02x}) claims {len} bytes, more than the file holds",
                    tag[1], tag[0], tag[3], tag[2]
                ))
            })?;
        }
        consumed += 4 + header as u64 + u64::from(len);
    }
    let explicit = ts != "1.2.840.10008.1.2";
    let big_endian = ts == "1.2.840.10008.1.2.2";
    let mut body = if ts == "1.2.840.10008.1.2.1.99" {
        DataSet::Deflated(Box::new(flate2::read::DeflateDecoder::new(r)))
    } else {
        DataSet::Plain(r)
    };
    let mut in_fragments = false;
    loop {
        if read_or_eof(&mut body, &mut tag).map_err(|e| bad(format!("data set unreadable: {e}")))? {
            return Ok(());
        }
        let group =
            if big_endian { u16::from_be_bytes([tag[0], tag[1]]) } else { u16::from_le_bytes([tag[0], tag[1]]) };
        let element =
            if big_endian { u16::from_be_bytes([tag[2], tag[3]]) } else { u16::from_le_bytes([tag[2], tag[3]]) };
        // Items and delimiters have no VR, in every transfer syntax.
        let (len, _) =
            element_length(&mut body, explicit && group != 0xFFFE, big_endian).map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => bad(format!("element ({group:04x},{element:04x}): {e}")),
                _ => bad(format!("element ({group:04x},{element:04x}) truncated")),
            })?;
        // An undefined length opens a sequence, an item or encapsulated pixel data: walk into it. An item
        // of defined length is walked too (its content is elements); everything else is skipped whole.
        if len != UNDEFINED_LENGTH && !(group == 0xFFFE && element == 0xE000) {
            body.skip(len, file_len).map_err(|_| {
                bad(format!("element ({group:04x},{element:04x}) claims {len} bytes, more than the file holds"))
            })?;
        }
        // Nothing after the pixel data is read (files may end in padding that is not elements).
        let pixel_data = (group, element) == (0x7FE0, 0x0010);
        if (pixel_data && len != UNDEFINED_LENGTH) || (in_fragments && (group, element) == (0xFFFE, 0xE0DD)) {
            return Ok(());
        }
        in_fragments |= pixel_data;
    }
}

/// Values at least this long are seeked over in a plain file rather than read: the pixel data would
/// otherwise be read twice, once here and once by dicom-rs.
const SEEK_OVER_BYTES: u32 = 64 << 10;

/// The data set after the file meta group: the rest of the file, or its inflated stream.
enum DataSet {
    Plain(std::io::BufReader<std::fs::File>),
    Deflated(Box<flate2::read::DeflateDecoder<std::io::BufReader<std::fs::File>>>),
}

impl std::io::Read for DataSet {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            DataSet::Plain(r) => r.read(buf),
            DataSet::Deflated(r) => r.read(buf),
        }
    }
}

impl DataSet {
    /// Past a value of `len` bytes; an error if the data set ends first (`file_len`: the file's size).
    fn skip(&mut self, len: u32, file_len: u64) -> std::io::Result<()> {
        match self {
            DataSet::Plain(r) if len >= SEEK_OVER_BYTES => {
                use std::io::Seek;
                let end = r.seek(std::io::SeekFrom::Current(i64::from(len)))?;
                if end > file_len {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                Ok(())
            }
            _ => skip(self, len),
        }
    }
}

/// Fills `buf`; `Ok(true)` at a clean end of stream (no byte read).
fn read_or_eof(r: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(true),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// The value length after a tag and the header bytes read for it: explicit VR (2-byte VR, then a 2- or 4-byte length)
/// or implicit (4 bytes).
/// A binary VR whose length is not a whole number of its values is an error here: dicom-rs reads the
/// whole values only and would then parse the rest of the value as the next element header.
fn element_length(r: &mut dyn std::io::Read, explicit: bool, big_endian: bool) -> std::io::Result<(u32, usize)> {
    let u32_of = |b: [u8; 4]| if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) };
    if !explicit {
        let mut b = [0u8; 4];
        r.read_exact(&mut b)?;
        return Ok((u32_of(b), 4));
    }
    let mut vr = [0u8; 2];
    r.read_exact(&mut vr)?;
    let (len, header) = if SHORT_VRS.contains(&&vr) {
        let mut b = [0u8; 2];
        r.read_exact(&mut b)?;
        (u32::from(if big_endian { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) }), 4)
    } else {
        let mut b = [0u8; 6];
        r.read_exact(&mut b)?;
        (u32_of([b[2], b[3], b[4], b[5]]), 8)
    };
    let unit = match &vr {
        b"FD" | b"OD" | b"SV" | b"UV" | b"OV" => 8,
        b"FL" | b"OF" | b"OL" | b"SL" | b"UL" | b"AT" => 4,
        b"SS" | b"US" | b"OW" => 2,
        _ => 1,
    };
    if len != UNDEFINED_LENGTH && len % unit != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("VR {} has length {len}, not a multiple of {unit}", String::from_utf8_lossy(&vr)),
        ));
    }
    Ok((len, header))
}

/// Reads past `len` bytes without keeping them; an error if the stream ends first.
fn skip(r: &mut dyn std::io::Read, len: u32) -> std::io::Result<()> {
    let copied = std::io::copy(&mut std::io::Read::take(&mut *r, u64::from(len)), &mut std::io::sink())?;
    if copied < u64::from(len) {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Attributes of one file, reading up to (not including) the pixel data. `None` for DICOM objects
/// that are not image slices with geometry.
fn read_slice(path: &Path) -> Result<Option<Slice>> {
    check_element_lengths(path)?;
    let mut collector = DicomCollector::open_file(path).map_err(|e| dicom_err(path, &e))?;
    let ts = collector.read_file_meta().map_err(|e| dicom_err(path, &e))?.transfer_syntax().to_string();
    let mut obj = InMemDicomObject::new_empty();
    collector.read_dataset_up_to_pixeldata(&mut obj).map_err(|e| dicom_err(path, &e))?;
    let (Some(rows), Some(columns), Some(position), Some(orientation)) =
        (int(&obj, ROWS), int(&obj, COLUMNS), floats(&obj, IMAGE_POSITION), floats(&obj, IMAGE_ORIENTATION))
    else {
        return Ok(None);
    };
    let bad = |what: String| Err(format_err(path, what));
    if position.len() != 3 || !position.iter().all(|v| v.is_finite()) {
        return bad(format!("ImagePositionPatient {position:?} is not 3 finite numbers"));
    }
    if orientation.len() != 6 || !orientation.iter().all(|v| v.is_finite()) {
        return bad(format!("ImageOrientationPatient {orientation:?} is not 6 finite numbers"));
    }
    let spacing =
        floats(&obj, PIXEL_SPACING).ok_or_else(|| format_err(path, "image has no PixelSpacing (0028,0030)"))?;
    if spacing.len() != 2 || !spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
        return bad(format!("PixelSpacing {spacing:?} is not 2 finite positive numbers"));
    }
    if rows <= 0 || columns <= 0 || rows > u16::MAX as i64 || columns > u16::MAX as i64 {
        return bad(format!("Rows × Columns = {rows} × {columns} is not a valid image size"));
    }
    let slope = floats(&obj, RESCALE_SLOPE).and_then(|v| v.first().copied()).unwrap_or(1.0);
    let intercept = floats(&obj, RESCALE_INTERCEPT).and_then(|v| v.first().copied()).unwrap_or(0.0);
    if !(slope.is_finite() && intercept.is_finite()) {
        return bad(format!("RescaleSlope/Intercept {slope}/{intercept} are not finite"));
    }
    let u16_attr = |tag: Tag, default: Option<u16>| -> Result<u16> {
        match int(&obj, tag) {
            Some(v) if (0..=u16::MAX as i64).contains(&v) => Ok(v as u16),
            Some(v) => Err(format_err(path, format!("attribute {tag} = {v} is out of range"))),
            None => default.ok_or_else(|| format_err(path, format!("image has no attribute {tag}"))),
        }
    };
    let bits_allocated = u16_attr(BITS_ALLOCATED, None)?;
    let bits_stored = u16_attr(BITS_STORED, Some(bits_allocated))?;
    let high_bit = u16_attr(HIGH_BIT, Some(bits_stored.saturating_sub(1)))?;
    Ok(Some(Slice {
        path: path.to_path_buf(),
        series_uid: text(&obj, SERIES_UID).unwrap_or_default(),
        series_description: text(&obj, SERIES_DESCRIPTION).unwrap_or_default(),
        position: [position[0], position[1], position[2]],
        orientation: [orientation[0], orientation[1], orientation[2], orientation[3], orientation[4], orientation[5]],
        pixel_spacing: [spacing[0], spacing[1]],
        rows: rows as usize,
        columns: columns as usize,
        samples_per_pixel: u16_attr(SAMPLES_PER_PIXEL, Some(1))?,
        frames: int(&obj, NUMBER_OF_FRAMES).unwrap_or(1),
        bits_allocated,
        bits_stored,
        high_bit,
        signed: u16_attr(PIXEL_REPRESENTATION, Some(0))? == 1,
        slope,
        intercept,
        transfer_syntax: ts,
    }))
}

/// Decode the pixel data of one slice to f32 with its rescale applied, appending to `out`.
fn read_pixels(s: &Slice, out: &mut Vec<f32>) -> Result<()> {
    let path = s.path.as_path();
    let mut collector = DicomCollector::open_file(path).map_err(|e| dicom_err(path, &e))?;
    let mut bytes = Vec::new();
    let got = collector.read_next_fragment(&mut bytes).map_err(|e| dicom_err(path, &e))?;
    if got.is_none() {
        return Err(format_err(path, "image has no PixelData (7FE0,0010)"));
    }
    let bpp = (s.bits_allocated / 8) as usize;
    let n = s.rows * s.columns;
    let need = n * bpp;
    if bytes.len() < need {
        return Err(format_err(
            path,
            format!(
                "truncated pixel data: {} bytes for {} × {} pixels of {} bits ({need} bytes)",
                bytes.len(),
                s.rows,
                s.columns,
                s.bits_allocated
            ),
        ));
    }
    let big = s.transfer_syntax == "1.2.840.10008.1.2.2";
    let stored = s.bits_stored as u32;
    let shift = (s.high_bit as u32 + 1).saturating_sub(stored);
    let mask: u64 = if stored >= 64 { u64::MAX } else { (1u64 << stored) - 1 };
    out.reserve(n);
    for c in bytes[..need].chunks_exact(bpp) {
        let raw: u64 = match (bpp, big) {
            (1, _) => c[0] as u64,
            (2, false) => u16::from_le_bytes([c[0], c[1]]) as u64,
            (2, true) => u16::from_be_bytes([c[0], c[1]]) as u64,
            (_, false) => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64,
            (_, true) => u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64,
        };
        let u = (raw >> shift) & mask;
        let v =
            if s.signed && stored > 0 && (u >> (stored - 1)) & 1 == 1 { u as i64 - (1i64 << stored) } else { u as i64 };
        out.push((v as f64 * s.slope + s.intercept) as f32);
    }
    Ok(())
}

/// The DICOM Part-10 files of a folder (not recursive), by name.
fn dicom_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| DspnetError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DspnetError::io(dir, e))?;
        let p = entry.path();
        let dicomdir = p.file_name().is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"));
        if p.is_file() && !dicomdir && super::detect(&p).ok() == Some(Detected::DicomFile) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

pub(crate) fn read_series_of_file(file: &Path) -> Result<Decoded> {
    let s = read_slice(file)?.ok_or_else(|| {
        format_err(file, "DICOM object is not an image slice with geometry (no Rows/Columns/ImagePositionPatient/ImageOrientationPatient)")
    })?;
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    read_series_decoded(dir, Some(&s.series_uid))
}

pub(crate) fn read_series_decoded(dir: &Path, series_uid: Option<&str>) -> Result<Decoded> {
    let (geometry, data) = read_series(dir, series_uid)?;
    Ok(Decoded { geometry, samples: Samples::F32(data), layers: 1, key_values: Vec::new() })
}

fn read_series(dir: &Path, series_uid: Option<&str>) -> Result<(Geometry, Vec<f32>)> {
    let files = dicom_files(dir)?;
    if files.is_empty() {
        return Err(format_err(dir, "folder holds no DICOM Part-10 files (none has the \"DICM\" marker)"));
    }
    let mut series: BTreeMap<String, Vec<Slice>> = BTreeMap::new();
    for f in &files {
        if let Some(s) = read_slice(f)? {
            series.entry(s.series_uid.clone()).or_default().push(s);
        }
    }
    if series.is_empty() {
        return Err(format_err(
            dir,
            "no DICOM image slice with geometry (ImagePositionPatient/ImageOrientationPatient) in the folder",
        ));
    }
    let slices = match series_uid {
        Some(uid) => series.remove(uid).ok_or_else(|| {
            format_err(dir, format!("no image series with SeriesInstanceUID {uid}; found: {}", list_series(&series)))
        })?,
        None if series.len() == 1 => series.into_values().next().unwrap_or_default(),
        None => {
            return Err(format_err(
                dir,
                format!(
                    "folder holds {} DICOM series; pick one (read_dicom_series with its SeriesInstanceUID, or read one of its files): {}",
                    series.len(),
                    list_series(&series)
                ),
            ))
        }
    };
    assemble(dir, slices)
}

fn list_series(series: &BTreeMap<String, Vec<Slice>>) -> String {
    series
        .iter()
        .map(|(uid, s)| {
            let desc = s.first().map(|s| s.series_description.as_str()).unwrap_or("");
            format!("{uid} \"{desc}\" ({} slices)", s.len())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

fn assemble(dir: &Path, mut slices: Vec<Slice>) -> Result<(Geometry, Vec<f32>)> {
    let first = slices[0].clone();
    let uid = &first.series_uid;
    let err = |what: String| Err(format_err(dir, format!("series {uid}: {what}")));
    if slices.len() < 2 {
        return err(format!("has a single slice ({}); a 3D volume needs at least 2", first.path.display()));
    }
    for s in &slices {
        let p = s.path.display();
        if s.frames != 1 {
            return err(format!("{p} is a multi-frame object ({} frames), which is not supported", s.frames));
        }
        if s.samples_per_pixel != 1 {
            return err(format!(
                "{p} has {} samples per pixel (colour); a scalar image is required",
                s.samples_per_pixel
            ));
        }
        if !NATIVE_TS.contains(&s.transfer_syntax.as_str()) {
            return err(format!(
                "{p} uses the compressed transfer syntax {}, which is not supported; decompress the series first (e.g. gdcmconv --raw, dcmdjpeg)",
                s.transfer_syntax
            ));
        }
        if !matches!(s.bits_allocated, 8 | 16 | 32)
            || s.bits_stored == 0
            || s.bits_stored > s.bits_allocated
            || s.high_bit >= s.bits_allocated
        {
            return err(format!(
                "{p}: BitsAllocated/BitsStored/HighBit = {}/{}/{} is not supported",
                s.bits_allocated, s.bits_stored, s.high_bit
            ));
        }
        if (s.rows, s.columns) != (first.rows, first.columns) {
            return err(format!(
                "slices differ in size: {} × {} in {p}, {} × {} in {}",
                s.rows,
                s.columns,
                first.rows,
                first.columns,
                first.path.display()
            ));
        }
        if s.orientation.iter().zip(&first.orientation).any(|(a, b)| (a - b).abs() > 1e-4) {
            return err(format!("slices differ in ImageOrientationPatient ({p} vs {})", first.path.display()));
        }
        if s.pixel_spacing.iter().zip(&first.pixel_spacing).any(|(a, b)| (a - b).abs() > 1e-4) {
            return err(format!("slices differ in PixelSpacing ({p} vs {})", first.path.display()));
        }
    }
    let o = first.orientation;
    let (row, col) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    let (nr, nc) = (norm(row), norm(col));
    if (nr - 1.0).abs() > 1e-2 || (nc - 1.0).abs() > 1e-2 || dot(row, col).abs() > 1e-2 {
        return err(format!("ImageOrientationPatient {o:?} is not two orthogonal unit vectors"));
    }
    let row = row.map(|v| v / nr);
    let col = col.map(|v| v / nc);
    let cross =
        [row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2], row[0] * col[1] - row[1] * col[0]];
    let nn = norm(cross);
    let normal = cross.map(|v| v / nn);

    slices.sort_by(|a, b| dot(a.position, normal).total_cmp(&dot(b.position, normal)));
    let pos: Vec<f64> = slices.iter().map(|s| dot(s.position, normal)).collect();
    let n = slices.len();
    for k in 1..n {
        if pos[k] - pos[k - 1] < 1e-3 {
            return err(format!(
                "{} and {} are at the same position along the slice normal (several volumes — echoes, time points — in one series?)",
                slices[k - 1].path.display(),
                slices[k].path.display()
            ));
        }
    }
    let dz = (pos[n - 1] - pos[0]) / (n - 1) as f64;
    let (mut gmin, mut gmax) = (f64::INFINITY, 0.0f64);
    for k in 1..n {
        let g = pos[k] - pos[k - 1];
        gmin = gmin.min(g);
        gmax = gmax.max(g);
    }
    if (gmax - dz).abs() > MAX_GAP_DEVIATION * dz || (dz - gmin).abs() > MAX_GAP_DEVIATION * dz {
        return err(format!(
            "slice spacing is uneven: gaps from {gmin:.4} to {gmax:.4} mm around a mean of {dz:.4} mm (missing slices?); more than {}% deviation is not accepted",
            MAX_GAP_DEVIATION * 100.0
        ));
    }
    let min_ps = first.pixel_spacing[0].min(first.pixel_spacing[1]);
    let p0 = slices[0].position;
    for (k, s) in slices.iter().enumerate() {
        let along = pos[k] - pos[0];
        let off: [f64; 3] = [0, 1, 2].map(|r| s.position[r] - p0[r] - along * normal[r]);
        let shear = norm(off);
        if shear > MAX_SHEAR_VOXELS * min_ps {
            return err(format!(
                "slices are not stacked along their normal: {} is {shear:.3} mm off (gantry tilt or sheared acquisition), not supported",
                s.path.display()
            ));
        }
    }
    let [rs, cs] = first.pixel_spacing; // row spacing (between rows, along j), column spacing (along i)
    let geometry = Geometry {
        dims: [first.columns, first.rows, n],
        spacing: [cs, rs, dz],
        origin: slices[0].position,
        direction: [[row[0], col[0], normal[0]], [row[1], col[1], normal[1]], [row[2], col[2], normal[2]]],
    };
    geometry.validate().map_err(|e| format_err(dir, format!("series {uid}: {e}")))?;
    let mut data = Vec::new();
    for s in &slices {
        read_pixels(s, &mut data)?;
    }
    Ok((geometry, data))
}
