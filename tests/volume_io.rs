//! Volume I/O: NIfTI, NRRD (.nrrd, .nhdr, .seg.nrrd) and DICOM series, on the real data in
//! `tests/data/` (see each folder's README) and on files built byte by byte here.
//!
//! Expected values come from the READMEs and from parsing the file bytes independently in this file
//! (NIfTI header offsets from the NIfTI-1 standard; DICOM elements by their explicit-VR encoding), not
//! from the library under test.

#![allow(clippy::needless_range_loop)] // index loops read best for 3x3 geometry

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use dspnet::io::{read_dicom_series, read_image, read_labels, write_labels, Geometry, Volume};
use dspnet::DspnetError;

// ------------------------------------------------------------------------------------------------
// Helpers

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(rel)
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dspnet-volume-io-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn i16_at(b: &[u8], o: usize) -> i16 {
    i16::from_le_bytes([b[o], b[o + 1]])
}
fn f32_at(b: &[u8], o: usize) -> f64 {
    f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as f64
}

/// Independent reading of the NIfTI-1 fields the tests check (offsets from nifti1.h).
#[derive(Debug)]
struct RawNifti {
    dim: [i16; 8],
    datatype: i16,
    pixdim: [f64; 8],
    vox_offset: f64,
    qform_code: i16,
    sform_code: i16,
    srow: [[f64; 4]; 3],
    magic: [u8; 4],
}

fn raw_nifti(h: &[u8]) -> RawNifti {
    assert_eq!(i32::from_le_bytes([h[0], h[1], h[2], h[3]]), 348);
    let mut srow = [[0.0; 4]; 3];
    for (r, row) in srow.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = f32_at(h, 280 + 16 * r + 4 * c);
        }
    }
    RawNifti {
        dim: std::array::from_fn(|i| i16_at(h, 40 + 2 * i)),
        datatype: i16_at(h, 70),
        pixdim: std::array::from_fn(|i| f32_at(h, 76 + 4 * i)),
        vox_offset: f32_at(h, 108),
        qform_code: i16_at(h, 252),
        sform_code: i16_at(h, 254),
        srow,
        magic: [h[344], h[345], h[346], h[347]],
    }
}

/// A minimal little-endian NIfTI-1 file (uncompressed) built from raw fields.
fn nifti_bytes(
    dim: [i16; 8],
    datatype: i16,
    bitpix: i16,
    pixdim: [f32; 8],
    sform: Option<[[f32; 4]; 3]>,
    voxels: &[u8],
) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    for (i, d) in dim.iter().enumerate() {
        h[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    h[70..72].copy_from_slice(&datatype.to_le_bytes());
    h[72..74].copy_from_slice(&bitpix.to_le_bytes());
    for (i, p) in pixdim.iter().enumerate() {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&p.to_le_bytes());
    }
    h[108..112].copy_from_slice(&352f32.to_le_bytes());
    h[123] = 2;
    if let Some(s) = sform {
        h[254..256].copy_from_slice(&1i16.to_le_bytes());
        for r in 0..3 {
            for c in 0..4 {
                h[280 + 16 * r + 4 * c..284 + 16 * r + 4 * c].copy_from_slice(&s[r][c].to_le_bytes());
            }
        }
    }
    h[344..348].copy_from_slice(b"n+1\0");
    h.extend_from_slice(voxels);
    h
}

fn expect_err<T: std::fmt::Debug>(r: dspnet::Result<T>, file: &Path, words: &[&str]) -> String {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(msg.contains(name.as_ref()), "error does not name the file {name}: {msg}");
    for w in words {
        assert!(msg.to_lowercase().contains(&w.to_lowercase()), "error lacks \"{w}\": {msg}");
    }
    assert!(matches!(e, DspnetError::VolumeFormat(_) | DspnetError::Io { .. }), "unexpected variant: {e:?}");
    msg
}

fn assert_geometry_close(a: &Geometry, b: &Geometry, tol: f64) {
    assert!(a.same_grid(b, tol), "geometries differ beyond {tol}:\n{a:?}\n{b:?}");
}

fn stats(v: &[f32]) -> (f64, f64, f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let min = v.iter().fold(f64::INFINITY, |m, &x| m.min(x as f64));
    let max = v.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    (min, max, mean, var.sqrt())
}

/// LPS geometry implied by an independently parsed sform (RAS): negate rows 0 and 1.
fn lps_affine_of(raw: &RawNifti) -> [[f64; 4]; 3] {
    let mut a = raw.srow;
    for row in a.iter_mut().take(2) {
        for v in row.iter_mut() {
            *v = -*v;
        }
    }
    a
}

fn check_geometry_against_affine(g: &Geometry, lps: &[[f64; 4]; 3]) {
    // Every corner and an interior point map to the same physical place.
    for ijk in [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [17.0, 3.5, 99.0]] {
        let p = g.index_to_physical(ijk);
        for r in 0..3 {
            let want = lps[r][0] * ijk[0] + lps[r][1] * ijk[1] + lps[r][2] * ijk[2] + lps[r][3];
            assert!((p[r] - want).abs() < 1e-9, "index {ijk:?}: {p:?} vs affine {lps:?}");
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Geometry basics

#[test]
fn geometry_helpers() {
    let g = Geometry {
        dims: [4, 5, 6],
        spacing: [0.5, 2.0, 3.0],
        origin: [10.0, -20.0, 30.0],
        direction: [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
    };
    assert_eq!(g.voxel_count().unwrap(), 120);
    // i runs along +y, j along -x.
    assert_eq!(g.index_to_physical([2.0, 3.0, 1.0]), [10.0 - 6.0, -20.0 + 1.0, 33.0]);
    let mut h = g.clone();
    h.origin[0] += 1e-7;
    assert!(g.same_grid(&h, 1e-6));
    assert!(!g.same_grid(&h, 1e-8));
    h.dims = [4, 5, 7];
    assert!(!g.same_grid(&h, 1.0));
    let huge = Geometry { dims: [usize::MAX / 2, 3, 1], ..g.clone() };
    assert!(huge.voxel_count().is_err());
    assert!(Volume::new(vec![0u16; 119], g.clone()).is_err());
    assert!(Volume::new(vec![0u16; 120], g.clone()).is_ok());
    let nan = Geometry { spacing: [f64::NAN, 1.0, 1.0], ..g };
    assert!(nan.validate().is_err());
}

// ------------------------------------------------------------------------------------------------
// Real NIfTI data

#[test]
fn ct_liver_matches_readme_and_header_bytes() {
    let img_path = data("ct-liver/image.nii.gz");
    let img = read_image(&img_path).unwrap();
    let g = &img.geometry;
    // README: 128³, nominal 1 mm, affine diag(1,1,1) with origin (-63.5,-63.5,-63.5) in RAS.
    assert_eq!(g.dims, [128, 128, 128]);
    assert_eq!(g.spacing, [1.0, 1.0, 1.0]);
    assert_eq!(g.origin, [63.5, 63.5, -63.5]); // LPS
    assert_eq!(g.direction, [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]);
    // The volume centre sits at (0, 0, 0).
    assert_eq!(g.index_to_physical([63.5, 63.5, 63.5]), [0.0, 0.0, 0.0]);

    let raw = raw_nifti(&gunzip(&img_path)[..348]);
    assert_eq!(raw.dim[..4], [3, 128, 128, 128]);
    assert_eq!(raw.datatype, 4);
    assert_eq!((raw.qform_code, raw.sform_code), (1, 1));
    check_geometry_against_affine(g, &lps_affine_of(&raw));

    // README: HU −1063 … 1877, mean −21.3.
    let (min, max, mean, _) = stats(&img.data);
    assert_eq!((min, max), (-1063.0, 1877.0));
    assert!((mean - -21.3).abs() < 0.05, "mean {mean}");

    let labels = read_labels(&data("ct-liver/labels.nii.gz")).unwrap();
    assert_eq!(labels.geometry, img.geometry);
    let liver = labels.data.iter().filter(|&&v| v == 1).count();
    let bg = labels.data.iter().filter(|&&v| v == 0).count();
    assert_eq!((bg, liver), (1_481_801, 615_351));
    let liver_hu: f64 =
        img.data.iter().zip(&labels.data).filter(|(_, &l)| l == 1).map(|(&v, _)| v as f64).sum::<f64>() / liver as f64;
    assert!((liver_hu - 108.0).abs() < 0.5, "mean HU in liver {liver_hu}");
    // The liver appears on every axial slice.
    let per_slice = 128 * 128;
    assert!((0..128).all(|k| labels.data[k * per_slice..(k + 1) * per_slice].contains(&1)));
}

#[test]
fn mri_aal_matches_readme_and_header_bytes() {
    let img_path = data("mri-brain-aal/image.nii.gz");
    let img = read_image(&img_path).unwrap();
    let g = &img.geometry;
    assert_eq!(g.dims, [100, 120, 90]);
    assert_eq!(g.spacing, [1.0, 1.0, 1.0]);
    // README: RAS origin (−48, −66, −46) → LPS (48, 66, −46).
    assert_eq!(g.origin, [48.0, 66.0, -46.0]);
    let raw = raw_nifti(&gunzip(&img_path)[..348]);
    assert_eq!((raw.qform_code, raw.sform_code), (4, 4));
    check_geometry_against_affine(g, &lps_affine_of(&raw));

    // README: intensities 7 … 218, mean 87.54, std 27.78.
    let (min, max, mean, std) = stats(&img.data);
    assert_eq!((min, max), (7.0, 218.0));
    assert!((mean - 87.54).abs() < 0.005 && (std - 27.78).abs() < 0.005, "mean {mean} std {std}");

    let labels = read_labels(&data("mri-brain-aal/labels.nii.gz")).unwrap();
    assert_eq!(labels.geometry, img.geometry);
    let expected = [(71, 7682), (72, 7941), (73, 7942), (74, 8510), (75, 2285), (76, 2188), (77, 8700), (78, 8399)];
    for (v, n) in expected {
        assert_eq!(labels.data.iter().filter(|&&x| x == v).count(), n, "label {v}");
    }
    let names = std::fs::read_to_string(data("mri-brain-aal/labels.txt")).unwrap();
    let listed: Vec<u16> = names.lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    let mut present: Vec<u16> = labels.data.clone();
    present.sort_unstable();
    present.dedup();
    assert_eq!(present, listed);
}

#[test]
fn nifti_big_endian_and_nifti2_headers() {
    let dir = scratch("nifti-variants");
    // Big-endian NIfTI-1, int16, sform (offsets from nifti1.h).
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_be_bytes());
    for (i, d) in [3i16, 2, 2, 1, 1, 1, 1, 1].iter().enumerate() {
        h[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_be_bytes());
    }
    h[70..72].copy_from_slice(&4i16.to_be_bytes());
    h[72..74].copy_from_slice(&16i16.to_be_bytes());
    for i in 0..8 {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&1f32.to_be_bytes());
    }
    h[108..112].copy_from_slice(&352f32.to_be_bytes());
    h[254..256].copy_from_slice(&2i16.to_be_bytes());
    let srow = [[0.0f32, -2.0, 0.0, 5.0], [3.0, 0.0, 0.0, 6.0], [0.0, 0.0, 4.0, 7.0]];
    for r in 0..3 {
        for c in 0..4 {
            h[280 + 16 * r + 4 * c..284 + 16 * r + 4 * c].copy_from_slice(&srow[r][c].to_be_bytes());
        }
    }
    h[344..348].copy_from_slice(b"n+1\0");
    for v in [-300i16, 1, 2, 32767] {
        h.extend_from_slice(&v.to_be_bytes());
    }
    let p = dir.join("be.nii");
    std::fs::write(&p, &h).unwrap();
    let v = read_image(&p).unwrap();
    assert_eq!(v.data, vec![-300.0, 1.0, 2.0, 32767.0]);
    assert_eq!(v.geometry.spacing, [3.0, 2.0, 4.0]);
    assert_eq!(v.geometry.origin, [-5.0, -6.0, 7.0]);
    // i runs along RAS +y = LPS -y; j along RAS -x = LPS +x.
    assert_eq!(v.geometry.direction, [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]);

    // NIfTI-2 (540-byte header, offsets from nifti2.h), float64 data, qform with a 90° rotation
    // about z (quaternion d = sin 45°), qfac -1, spatial units in metres.
    let mut h = vec![0u8; 544];
    h[0..4].copy_from_slice(&540i32.to_le_bytes());
    h[4..12].copy_from_slice(b"n+2\0\r\n\x1a\n");
    h[12..14].copy_from_slice(&64i16.to_le_bytes());
    h[14..16].copy_from_slice(&64i16.to_le_bytes());
    for (i, d) in [3i64, 2, 1, 2, 1, 1, 1, 1].iter().enumerate() {
        h[16 + 8 * i..24 + 8 * i].copy_from_slice(&d.to_le_bytes());
    }
    for (i, p) in [-1.0f64, 0.001, 0.002, 0.003, 1.0, 1.0, 1.0, 1.0].iter().enumerate() {
        h[104 + 8 * i..112 + 8 * i].copy_from_slice(&p.to_le_bytes());
    }
    h[168..176].copy_from_slice(&544i64.to_le_bytes());
    h[344..348].copy_from_slice(&1i32.to_le_bytes()); // qform_code
    h[368..376].copy_from_slice(&std::f64::consts::FRAC_1_SQRT_2.to_le_bytes()); // quatern_d
    for (i, o) in [0.01f64, 0.02, 0.03].iter().enumerate() {
        h[376 + 8 * i..384 + 8 * i].copy_from_slice(&o.to_le_bytes());
    }
    h[500..504].copy_from_slice(&1i32.to_le_bytes()); // metres
    for v in [0.5f64, 1.5, 2.5, 3.5] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    let p = dir.join("v2.nii");
    std::fs::write(&p, &h).unwrap();
    let v = read_image(&p).unwrap();
    assert_eq!(v.data, vec![0.5, 1.5, 2.5, 3.5]);
    let g = &v.geometry;
    assert_eq!(g.dims, [2, 1, 2]);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(g.spacing.iter().zip([1.0, 2.0, 3.0]).all(|(&a, b)| close(a, b)), "{g:?}");
    assert!(g.origin.iter().zip([-10.0, -20.0, 30.0]).all(|(&a, b)| close(a, b)), "{g:?}");
    // RAS rotation z 90°: i → +y, j → -x, k → -z (qfac -1). In LPS: i → -y, j → +x, k → -z.
    let want = [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]];
    assert!((0..3).all(|r| (0..3).all(|c| close(g.direction[r][c], want[r][c]))), "{g:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------------------------------------
// Label round trips

#[test]
fn labels_round_trip_through_every_writer() {
    let dir = scratch("roundtrip");
    for src in ["ct-liver/labels.nii.gz", "mri-brain-aal/labels.nii.gz"] {
        let labels = read_labels(&data(src)).unwrap();
        for name in ["out.nii.gz", "out.nii", "out.nrrd", "out.seg.nrrd"] {
            let out = dir.join(name);
            write_labels(&out, &labels, None).unwrap();
            let back = read_labels(&out).unwrap();
            assert!(back.data == labels.data, "{src} → {name}: data differ");
            assert_geometry_close(&back.geometry, &labels.geometry, 1e-9);
            // And as an image.
            let img = read_image(&out).unwrap();
            assert!(img.data.iter().zip(&labels.data).all(|(&a, &b)| a == b as f32));
        }
    }
    // Labels above 255 use 16 bits everywhere.
    let mut labels = read_labels(&data("mri-brain-aal/labels.nii.gz")).unwrap();
    for v in labels.data.iter_mut().filter(|v| **v == 78) {
        *v = 65535;
    }
    for name in ["big.nii.gz", "big.nrrd", "big.seg.nrrd"] {
        let out = dir.join(name);
        write_labels(&out, &labels, None).unwrap();
        assert!(read_labels(&out).unwrap().data == labels.data, "{name}");
    }
    let raw = raw_nifti(&gunzip(&dir.join("big.nii.gz"))[..348]);
    assert_eq!(raw.datatype, 512);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nifti_written_like_keeps_codes_and_sets_both_transforms() {
    let dir = scratch("like");
    let like = data("mri-brain-aal/image.nii.gz");
    let labels = read_labels(&data("mri-brain-aal/labels.nii.gz")).unwrap();
    let out = dir.join("labels.nii.gz");
    write_labels(&out, &labels, Some(&like)).unwrap();
    let bytes = gunzip(&out);
    let raw = raw_nifti(&bytes[..348]);
    assert_eq!((raw.qform_code, raw.sform_code), (4, 4), "MNI codes of the like image kept");
    assert_eq!(&raw.magic, b"n+1\0");
    assert_eq!(raw.datatype, 2);
    assert_eq!(raw.vox_offset, 352.0);
    assert_eq!(raw.dim[..4], [3, 100, 120, 90]);
    assert_eq!(raw.srow, [[1.0, 0.0, 0.0, -48.0], [0.0, 1.0, 0.0, -66.0], [0.0, 0.0, 1.0, -46.0]]);
    // qform: identity rotation (b = c = d = 0), offsets = origin, qfac 1.
    assert_eq!([f32_at(&bytes, 256), f32_at(&bytes, 260), f32_at(&bytes, 264)], [0.0, 0.0, 0.0]);
    assert_eq!([f32_at(&bytes, 268), f32_at(&bytes, 272), f32_at(&bytes, 276)], [-48.0, -66.0, -46.0]);
    assert_eq!(raw.pixdim[..4], [1.0, 1.0, 1.0, 1.0]);
    // Voxels: uint8, i fastest, identical to the source file's voxel block.
    let src = gunzip(&data("mri-brain-aal/labels.nii.gz"));
    assert_eq!(&bytes[352..], &src[352..]);
    // Without like: scanner codes.
    let out2 = dir.join("plain.nii");
    write_labels(&out2, &labels, None).unwrap();
    let raw2 = raw_nifti(&std::fs::read(&out2).unwrap()[..348]);
    assert_eq!((raw2.qform_code, raw2.sform_code), (1, 1));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rotation about an arbitrary axis (Rodrigues), optionally with the k axis flipped (improper).
fn oblique(dims: [usize; 3], flip: bool) -> Geometry {
    let axis = {
        let a = [0.3f64, -0.5, 0.8];
        let n = (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt();
        [a[0] / n, a[1] / n, a[2] / n]
    };
    let t = 0.7f64;
    let (c, s) = (t.cos(), t.sin());
    let [x, y, z] = axis;
    let mut r = [
        [c + x * x * (1.0 - c), x * y * (1.0 - c) - z * s, x * z * (1.0 - c) + y * s],
        [y * x * (1.0 - c) + z * s, c + y * y * (1.0 - c), y * z * (1.0 - c) - x * s],
        [z * x * (1.0 - c) - y * s, z * y * (1.0 - c) + x * s, c + z * z * (1.0 - c)],
    ];
    if flip {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
    }
    Geometry { dims, spacing: [0.7, 1.3, 2.9], origin: [-12.25, 33.5, 101.125], direction: r }
}

#[test]
fn oblique_anisotropic_geometry_round_trips_nifti_nrrd_nifti() {
    let dir = scratch("oblique");
    for flip in [false, true] {
        let g0 = oblique([7, 5, 4], flip);
        let n = g0.voxel_count().unwrap();
        let labels = Volume::new((0..n).map(|v| (v * 7 % 300) as u16).collect(), g0.clone()).unwrap();

        let a = dir.join("a.nii");
        write_labels(&a, &labels, None).unwrap();
        let v1 = read_labels(&a).unwrap();
        assert!(v1.data == labels.data);
        // NIfTI-1 keeps float32 precision only.
        assert_geometry_close(&v1.geometry, &g0, 1e-5);
        // The written sform, parsed independently, is the RAS form of the geometry.
        let bytes = std::fs::read(&a).unwrap();
        let raw = raw_nifti(&bytes[..348]);
        check_geometry_against_affine(&v1.geometry, &lps_affine_of(&raw));
        assert_eq!(raw.pixdim[0], if flip { -1.0 } else { 1.0 }, "qfac");

        // The qform alone (sform_code patched to 0) gives the same geometry to float precision.
        let mut q = bytes.clone();
        q[254..256].copy_from_slice(&0i16.to_le_bytes());
        let qpath = dir.join("q.nii");
        std::fs::write(&qpath, &q).unwrap();
        assert_geometry_close(&read_labels(&qpath).unwrap().geometry, &v1.geometry, 2e-6);

        let b = dir.join("b.nrrd");
        write_labels(&b, &v1, None).unwrap();
        let v2 = read_labels(&b).unwrap();
        assert!(v2.data == labels.data);
        assert_geometry_close(&v2.geometry, &v1.geometry, 1e-9);

        let c = dir.join("c.nii.gz");
        write_labels(&c, &v2, None).unwrap();
        let v3 = read_labels(&c).unwrap();
        assert!(v3.data == labels.data);
        assert_geometry_close(&v3.geometry, &v1.geometry, 1e-9);

        // Straight from the f64 geometry, NRRD is exact.
        let d = dir.join("d.seg.nrrd");
        write_labels(&d, &labels, None).unwrap();
        assert_geometry_close(&read_labels(&d).unwrap().geometry, &g0, 1e-12);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------------------------------------
// NRRD variants built by hand

fn nrrd(header: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = header.as_bytes().to_vec();
    v.push(b'\n');
    v.extend_from_slice(payload);
    v
}

#[test]
fn nrrd_spaces_types_encodings_and_detached_data() {
    let dir = scratch("nrrd");
    // 3 × 2 × 2 int16 big-endian, RAS space, raw.
    let vals: Vec<i16> = vec![-5, 0, 7, 1000, -32768, 32767, 1, 2, 3, 4, 5, 6];
    let be: Vec<u8> = vals.iter().flat_map(|v| v.to_be_bytes()).collect();
    let le: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let ras = "NRRD0004\n# comment\ntype: short\ndimension: 3\nspace: right-anterior-superior\nsizes: 3 2 2\n\
               space directions: (0,2,0) (-1.5,0,0) (0,0,3)\nkinds: domain domain domain\nendian: big\nencoding: raw\n\
               space origin: (10,20,30)\n";
    let p = dir.join("ras.nrrd");
    std::fs::write(&p, nrrd(ras, &be)).unwrap();
    let v = read_image(&p).unwrap();
    assert_eq!(v.data, vals.iter().map(|&x| x as f32).collect::<Vec<_>>());
    let g = &v.geometry;
    assert_eq!(g.dims, [3, 2, 2]);
    assert_eq!(g.spacing, [2.0, 1.5, 3.0]);
    assert_eq!(g.origin, [-10.0, -20.0, 30.0]);
    // RAS (0,2,0) → LPS (0,-2,0); (-1.5,0,0) → (1.5,0,0).
    assert_eq!(g.direction, [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]);

    // Same data: LPS, little-endian, gzip, type alias "int16_t" → identical volume after conversion.
    let lps = "NRRD0005\ntype: int16_t\ndimension: 3\nspace: LPS\nsizes: 3 2 2\n\
               space directions: (0,-2,0) (1.5,0,0) (0,0,3)\nendian: little\nencoding: gz\nspace origin: (-10,-20,30)\n";
    let p2 = dir.join("lps.nrrd");
    std::fs::write(&p2, nrrd(lps, &gzip(&le))).unwrap();
    let v2 = read_image(&p2).unwrap();
    assert_eq!(v2, v);

    // Detached header, line skip + byte skip, raw; and byte skip -1.
    let mut datafile = b"junk line\nsecond junk line\n".to_vec();
    datafile.extend_from_slice(&[9, 9, 9]);
    datafile.extend_from_slice(&le);
    std::fs::write(dir.join("vol.raw"), &datafile).unwrap();
    let nhdr = "NRRD0004\ntype: signed short\ndimension: 3\nspace: left-posterior-superior\nsizes: 3 2 2\n\
                space directions: (0,-2,0) (1.5,0,0) (0,0,3)\nendian: little\nencoding: raw\nspace origin: (-10,-20,30)\n\
                data file: vol.raw\nline skip: 2\nbyte skip: 3\n";
    let p3 = dir.join("vol.nhdr");
    std::fs::write(&p3, nhdr).unwrap();
    assert_eq!(read_image(&p3).unwrap(), v);
    let p4 = dir.join("vol2.nhdr");
    std::fs::write(&p4, nhdr.replace("line skip: 2\nbyte skip: 3\n", "byte skip: -1\n")).unwrap();
    assert_eq!(read_image(&p4).unwrap(), v);

    // ASCII, float, spacings only (no space): identity direction, origin 0.
    let ascii = "NRRD0004\ntype: float\ndimension: 3\nsizes: 2 2 1\nspacings: 0.5 0.25 4\nencoding: ascii\n";
    let p5 = dir.join("ascii.nrrd");
    std::fs::write(&p5, nrrd(ascii, b"1.5 -2\n3e2 4\n")).unwrap();
    let v5 = read_image(&p5).unwrap();
    assert_eq!(v5.data, vec![1.5, -2.0, 300.0, 4.0]);
    assert_eq!(v5.geometry.spacing, [0.5, 0.25, 4.0]);
    assert_eq!(v5.geometry.origin, [0.0; 3]);

    // 4D with a singleton non-spatial axis first (as Slicer writes one-layer segmentations): accepted.
    let one = "NRRD0004\ntype: uint8\ndimension: 4\nspace: left-posterior-superior\nsizes: 1 3 2 2\n\
               space directions: none (1,0,0) (0,1,0) (0,0,1)\nkinds: list domain domain domain\nencoding: raw\n\
               space origin: (0,0,0)\n";
    let p6 = dir.join("one.seg.nrrd");
    std::fs::write(&p6, nrrd(one, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])).unwrap();
    let v6 = read_labels(&p6).unwrap();
    assert_eq!(v6.data, (0..12).collect::<Vec<u16>>());
    assert_eq!(v6.geometry.dims, [3, 2, 2]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 2-layer Slicer segmentation of a 2 × 2 × 1 grid (layer axis first, as Slicer writes it).
fn seg4d(layer0: [u8; 4], layer1: [u8; 4], label_values: Option<[u8; 2]>) -> Vec<u8> {
    let mut h = String::from(
        "NRRD0004\ntype: unsigned char\ndimension: 4\nspace: right-anterior-superior\nsizes: 2 2 2 1\n\
         space directions: none (2,0,0) (0,2,0) (0,0,2)\nkinds: list domain domain domain\nencoding: gzip\n\
         space origin: (1,2,3)\n",
    );
    for (s, name) in ["Liver", "Tumour"].iter().enumerate() {
        h.push_str(&format!("Segment{s}_ID:=Segment_{s}\nSegment{s}_Name:={name}\n"));
        if let Some(values) = label_values {
            h.push_str(&format!("Segment{s}_Layer:={s}\nSegment{s}_LabelValue:={}\n", values[s]));
        }
    }
    let mut data = Vec::new();
    for v in 0..4 {
        data.push(layer0[v]);
        data.push(layer1[v]);
    }
    nrrd(&h, &gzip(&data))
}

#[test]
fn slicer_multilayer_segmentations_merge_or_explain() {
    let dir = scratch("seg");
    let p = dir.join("two.seg.nrrd");
    // Disjoint segments with distinct values: merged as stored.
    std::fs::write(&p, seg4d([1, 0, 1, 0], [0, 2, 0, 0], Some([1, 2]))).unwrap();
    let v = read_labels(&p).unwrap();
    assert_eq!(v.data, vec![1, 2, 1, 0]);
    assert_eq!(v.geometry.spacing, [2.0, 2.0, 2.0]);
    assert_eq!(v.geometry.origin, [-1.0, -2.0, 3.0]);
    // Not an image.
    expect_err(read_image(&p), &p, &["layers"]);
    // Overlap: a voxel in both segments.
    std::fs::write(&p, seg4d([1, 0, 1, 0], [2, 2, 0, 0], Some([1, 2]))).unwrap();
    expect_err(read_labels(&p), &p, &["overlap at voxel (0, 0, 0)", "Liver", "Tumour"]);
    // Same label value in two layers.
    std::fs::write(&p, seg4d([1, 0, 0, 0], [0, 1, 0, 0], Some([1, 1]))).unwrap();
    expect_err(read_labels(&p), &p, &["label value 1", "Liver", "Tumour"]);
    // Slicer 4.10 style: binary layers, no label values → segment index + 1.
    std::fs::write(&p, seg4d([1, 0, 0, 1], [0, 1, 0, 0], None)).unwrap();
    assert_eq!(read_labels(&p).unwrap().data, vec![1, 2, 0, 1]);

    // Written segmentations carry Slicer's metadata, and names survive via `like`.
    let out = dir.join("out.seg.nrrd");
    let labels = Volume::new(vec![0, 1, 1, 2, 0, 0, 2, 0], Geometry::identity([2, 2, 2])).unwrap();
    write_labels(&out, &labels, Some(&p)).unwrap();
    let text = String::from_utf8_lossy(&std::fs::read(&out).unwrap()).to_string();
    let header = &text[..text.find("\n\n").unwrap()];
    for line in [
        "type: unsigned char",
        "space: left-posterior-superior",
        "kinds: domain domain domain",
        "encoding: gzip",
        "Segmentation_MasterRepresentation:=Binary labelmap",
        "Segment0_LabelValue:=1",
        "Segment0_Extent:=0 1 0 1 0 0",
        "Segment1_LabelValue:=2",
        "Segment1_Extent:=0 1 1 1 0 1",
    ] {
        assert!(header.lines().any(|l| l == line), "missing \"{line}\" in\n{header}");
    }
    // The like file (Slicer 4.10 style) has no label values, so default names are used.
    assert!(header.contains("Segment0_Name:=Segment_1"));
    // With a like file that has label values, its names are kept.
    std::fs::write(&p, seg4d([1, 0, 1, 0], [0, 2, 0, 0], Some([1, 2]))).unwrap();
    write_labels(&out, &labels, Some(&p)).unwrap();
    let text = String::from_utf8_lossy(&std::fs::read(&out).unwrap()).to_string();
    assert!(text.contains("Segment0_Name:=Liver\n") && text.contains("Segment1_Name:=Tumour\n"));
    assert_eq!(read_labels(&out).unwrap(), labels);
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------------------------------------
// DICOM

/// Independent decoding of one DICOM file of the shared series: explicit VR little endian.
struct RawDicom {
    position: [f64; 3],
    pixels: Vec<i16>,
}

fn raw_dicom(path: &Path) -> RawDicom {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[128..132], b"DICM");
    // Walk the explicit-VR elements after the preamble (no sequences in this series).
    let mut p = 132;
    let (mut position, mut pixels) = (None, None);
    while p + 8 <= b.len() {
        let (g, e) = (u16::from_le_bytes([b[p], b[p + 1]]), u16::from_le_bytes([b[p + 2], b[p + 3]]));
        let vr = &b[p + 4..p + 6];
        let (len, hdr) = if [&b"OB"[..], b"OW", b"OF", b"SQ", b"UT", b"UN"].contains(&vr) {
            (u32::from_le_bytes([b[p + 8], b[p + 9], b[p + 10], b[p + 11]]) as usize, 12)
        } else {
            (u16::from_le_bytes([b[p + 6], b[p + 7]]) as usize, 8)
        };
        let value = &b[p + hdr..p + hdr + len];
        match (g, e) {
            (0x0020, 0x0032) => {
                let s = std::str::from_utf8(value).unwrap();
                let v: Vec<f64> = s.trim().split('\\').map(|x| x.trim().parse().unwrap()).collect();
                position = Some([v[0], v[1], v[2]]);
            }
            (0x7FE0, 0x0010) => {
                pixels = Some(value.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect());
                break; // the data set ends here (brain_001 has zero padding after it)
            }
            _ => {}
        }
        p += hdr + len;
    }
    RawDicom { position: position.unwrap(), pixels: pixels.unwrap() }
}

#[test]
fn dicom_series_geometry_and_voxels() {
    let dir = data("mri-brain-dicom");
    let v = read_image(&dir).unwrap();
    let g = &v.geometry;
    assert_eq!(g.dims, [256, 256, 20]);
    assert_eq!(g.spacing[..2], [0.859375, 0.859375]);
    // README: positions about 7.0 mm apart along the normal (not SliceThickness 5 or the gap 2).
    assert!((g.spacing[2] - 7.0).abs() < 0.01, "slice spacing {}", g.spacing[2]);
    // IOP (1,0,0, 0,0.99096,0.134158): oblique.
    let (cy, cz) = (0.990960f64, 0.134158f64);
    let n = (cy * cy + cz * cz).sqrt();
    let want = [[1.0, 0.0, 0.0], [0.0, cy / n, -cz / n], [0.0, cz / n, cy / n]];
    for r in 0..3 {
        for c in 0..3 {
            assert!((g.direction[r][c] - want[r][c]).abs() < 1e-5, "direction {:?}", g.direction);
        }
    }
    let files: Vec<PathBuf> = (1..=20).map(|i| dir.join(format!("brain_{i:03}.dcm"))).collect();
    let raws: Vec<RawDicom> = files.iter().map(|f| raw_dicom(f)).collect();
    assert_eq!(g.origin, raws[0].position);
    assert_eq!(g.origin, [-110.5, -78.3063, -72.7575]);
    // Every slice lies where its own ImagePositionPatient says (positions are rounded to 0.1 mm).
    for (k, r) in raws.iter().enumerate() {
        let p = g.index_to_physical([0.0, 0.0, k as f64]);
        let d =
            ((p[0] - r.position[0]).powi(2) + (p[1] - r.position[1]).powi(2) + (p[2] - r.position[2]).powi(2)).sqrt();
        assert!(d < 0.1, "slice {k}: {p:?} vs {:?}", r.position);
    }
    // Voxels: slice k = file k+1 (InstanceNumber ascends inferior → superior); rows along j.
    let per = 256 * 256;
    for (k, r) in raws.iter().enumerate() {
        assert_eq!(r.pixels.len(), per);
        assert!(v.data[k * per..(k + 1) * per].iter().zip(&r.pixels).all(|(&a, &b)| a == b as f32), "slice {k}");
    }
    let (min, max, _, _) = stats(&v.data);
    assert_eq!((min, max), (0.0, 1059.0)); // README: values 0 … 1059

    // One file of the series reads the whole series, and so does the explicit-UID API.
    assert_eq!(read_image(&files[7]).unwrap(), v);
    let uid = "0.0.0.0.3.8811.2.20010413115754.12432";
    assert_eq!(read_dicom_series(&dir, Some(uid)).unwrap(), v);
    let e = read_dicom_series(&dir, Some("1.2.3")).unwrap_err().to_string();
    assert!(e.contains(uid), "{e}");
    // As labels: integer values, so they load.
    assert_eq!(read_labels(&dir).unwrap().data.iter().map(|&x| x as f32).collect::<Vec<_>>(), v.data);
}

fn copy_series(name: &str, skip: &[usize]) -> PathBuf {
    let dir = scratch(name);
    for i in 1..=20 {
        if !skip.contains(&i) {
            let f = format!("brain_{i:03}.dcm");
            std::fs::copy(data("mri-brain-dicom").join(&f), dir.join(&f)).unwrap();
        }
    }
    std::fs::write(dir.join("README.txt"), "not DICOM, skipped").unwrap();
    dir
}

#[test]
fn dicom_series_problems_are_reported() {
    // A missing slice makes one gap twice the others.
    let dir = copy_series("dcm-gap", &[10]);
    let e = expect_err(read_image(&dir), &dir, &["uneven"]);
    assert!(e.contains("missing"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);

    // A duplicated slice (same position twice).
    let dir = copy_series("dcm-dup", &[]);
    std::fs::copy(dir.join("brain_005.dcm"), dir.join("copy_of_5.dcm")).unwrap();
    expect_err(read_image(&dir), &dir, &["same position"]);
    let _ = std::fs::remove_dir_all(&dir);

    // Two series in one folder: the error lists them.
    let dir = copy_series("dcm-two", &[]);
    let b = std::fs::read(dir.join("brain_020.dcm")).unwrap();
    let uid = b"0.0.0.0.3.8811.2.20010413115754.12432";
    let at = b.windows(uid.len()).enumerate().filter(|(_, w)| *w == uid).map(|(i, _)| i).collect::<Vec<_>>();
    // The series UID is the element (0020,000E); patch its last digit.
    let series_at = at.iter().copied().find(|&i| b[i - 8..i - 4] == [0x20, 0x00, 0x0e, 0x00]).unwrap();
    let mut b2 = b.clone();
    b2[series_at + uid.len() - 1] = b'9';
    std::fs::write(dir.join("brain_020.dcm"), &b2).unwrap();
    let e = expect_err(read_image(&dir), &dir, &["2 DICOM series", "FSE PD AXIAL OBL", "(19 slices)", "(1 slices)"]);
    assert!(e.contains("12439"), "{e}");
    // The file of the odd series alone is a single slice.
    expect_err(read_image(&dir.join("brain_020.dcm")), &dir, &["single slice"]);
    let _ = std::fs::remove_dir_all(&dir);

    // A truncated file.
    let dir = copy_series("dcm-trunc", &[]);
    let f = dir.join("brain_003.dcm");
    let b = std::fs::read(&f).unwrap();
    std::fs::write(&f, &b[..b.len() - 1000]).unwrap();
    expect_err(read_image(&dir), &f, &[]);
    let _ = std::fs::remove_dir_all(&dir);

    // No DICOM at all.
    let dir = scratch("dcm-none");
    std::fs::write(dir.join("a.txt"), "x").unwrap();
    expect_err(read_image(&dir), &dir, &["no DICOM"]);
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------------------------------------
// Malformed files

#[test]
fn malformed_nifti_files_give_clear_errors() {
    let dir = scratch("bad-nifti");
    let pix = [1.0f32, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
    let good = nifti_bytes([3, 2, 2, 2, 1, 1, 1, 1], 2, 8, pix, None, &[0, 1, 2, 3, 4, 5, 6, 7]);
    let w = |name: &str, b: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let p = w("good.nii", &good);
    let v = read_labels(&p).unwrap();
    assert_eq!(v.data, (0..8).collect::<Vec<u16>>());
    // No qform/sform: pixdim only, RAS diag → LPS diag(-1,-1,1), origin 0.
    assert_eq!(v.geometry.direction, [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]);

    // Truncated (voxel data cut), also when gzip-compressed.
    let p = w("trunc.nii", &good[..good.len() - 3]);
    expect_err(read_image(&p), &p, &["truncated", "8 voxels"]);
    let p = w("trunc.nii.gz", &gzip(&good[..good.len() - 3]));
    expect_err(read_image(&p), &p, &["truncated"]);
    // A gzip stream cut in the middle.
    let gz = gzip(&good);
    let p = w("cutgz.nii.gz", &gz[..gz.len() - 12]);
    expect_err(read_image(&p), &p, &["gzip"]);
    // Header cut.
    let p = w("hdr.nii", &good[..200]);
    expect_err(read_image(&p), &p, &["truncated"]);
    // Wrong magic / not NIfTI at all.
    let mut bad = good.clone();
    bad[344..348].copy_from_slice(b"xyz\0");
    let p = w("magic.nii", &bad);
    expect_err(read_image(&p), &p, &["magic"]);
    let p = w("junk.nii", b"this is not an image at all, just text");
    expect_err(read_image(&p), &p, &["not a NIfTI"]);
    let p = w("empty.nii.gz", b"");
    expect_err(read_image(&p), &p, &["empty"]);
    // Header sizes inconsistent with the data: dims claim far more voxels than present (no allocation).
    let p = w("huge.nii", &nifti_bytes([3, 30000, 30000, 30000, 1, 1, 1, 1], 64, 64, pix, None, &[0; 64]));
    expect_err(read_image(&p), &p, &["truncated or inconsistent"]);
    let p = w("huge.nii.gz", &gzip(&nifti_bytes([3, 30000, 30000, 30000, 1, 1, 1, 1], 64, 64, pix, None, &[0; 64])));
    expect_err(read_image(&p), &p, &["truncated or inconsistent"]);
    // Dims whose product overflows.
    let p =
        w("overflow.nii", &nifti_bytes([7, 32767, 32767, 32767, 32767, 32767, 32767, 32767], 2, 8, pix, None, &[0; 8]));
    expect_err(read_image(&p), &p, &["overflow"]);
    // A zero and a negative dim.
    let p = w("zero.nii", &nifti_bytes([3, 2, 0, 2, 1, 1, 1, 1], 2, 8, pix, None, &[]));
    expect_err(read_image(&p), &p, &["dim[2] = 0"]);
    let p = w("neg.nii", &nifti_bytes([3, 2, -2, 2, 1, 1, 1, 1], 2, 8, pix, None, &[]));
    expect_err(read_image(&p), &p, &["dim[2] = -2"]);
    // 2D → error; 4D with a singleton 4th dim → accepted; 4D with 3 volumes → error.
    let p = w("2d.nii", &nifti_bytes([2, 2, 2, 1, 1, 1, 1, 1], 2, 8, pix, None, &[0; 4]));
    expect_err(read_image(&p), &p, &["2D", "3D volume is required"]);
    let p = w("4d1.nii", &nifti_bytes([4, 2, 2, 2, 1, 1, 1, 1], 2, 8, pix, None, &[0; 8]));
    assert_eq!(read_image(&p).unwrap().geometry.dims, [2, 2, 2]);
    let p = w("4d3.nii", &nifti_bytes([4, 2, 2, 2, 3, 1, 1, 1], 2, 8, pix, None, &[0; 24]));
    expect_err(read_image(&p), &p, &["dim[4] = 3", "time series"]);
    // NaN spacing (pixdim path) and NaN in the sform; zero spacing.
    let mut nan = pix;
    nan[2] = f32::NAN;
    let p = w("nanpix.nii", &nifti_bytes([3, 2, 2, 2, 1, 1, 1, 1], 2, 8, nan, None, &[0; 8]));
    expect_err(read_image(&p), &p, &["pixdim[2]", "finite"]);
    let s = [[1.0, 0.0, 0.0, 0.0], [0.0, f32::NAN, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]];
    let p = w("nansform.nii", &nifti_bytes([3, 2, 2, 2, 1, 1, 1, 1], 2, 8, pix, Some(s), &[0; 8]));
    expect_err(read_image(&p), &p, &["sform", "non-finite"]);
    let s = [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]];
    let p = w("zerosform.nii", &nifti_bytes([3, 2, 2, 2, 1, 1, 1, 1], 2, 8, pix, Some(s), &[0; 8]));
    expect_err(read_image(&p), &p, &["zero length"]);
    // Unsupported datatype (complex64).
    let p = w("complex.nii", &nifti_bytes([3, 1, 1, 1, 1, 1, 1, 1], 32, 64, pix, None, &[0; 8]));
    expect_err(read_image(&p), &p, &["complex"]);
    // Non-integer and out-of-range labels.
    let fl: Vec<u8> = [0.0f32, 1.0, 2.5, 3.0, 0.0, 0.0, 0.0, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let p = w("float.nii", &nifti_bytes([3, 2, 2, 2, 1, 1, 1, 1], 16, 32, pix, None, &fl));
    expect_err(read_labels(&p), &p, &["2.5", "(0, 1, 0)", "not an integer"]);
    assert_eq!(read_image(&p).unwrap().data[2], 2.5);
    let big: Vec<u8> = [0i32, 70000, 0, 0, 0, 0, 0, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let p = w("int32.nii", &nifti_bytes([3, 2, 2, 2, 1, 1, 1, 1], 8, 32, pix, None, &big));
    expect_err(read_labels(&p), &p, &["70000"]);
    // scl_slope is applied (int16 × 0.5 + 10).
    let mut scaled = nifti_bytes([3, 2, 1, 1, 1, 1, 1, 1], 4, 16, pix, None, &[4, 0, 0xFE, 0xFF]);
    scaled[112..116].copy_from_slice(&0.5f32.to_le_bytes());
    scaled[116..120].copy_from_slice(&10f32.to_le_bytes());
    let p = w("scaled.nii", &scaled);
    assert_eq!(read_image(&p).unwrap().data, vec![12.0, 9.0]);
    assert_eq!(read_labels(&p).unwrap().data, vec![12, 9]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_nrrd_files_give_clear_errors() {
    let dir = scratch("bad-nrrd");
    let w = |name: &str, b: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let head = |sizes: &str, dirs: &str, enc: &str| {
        format!(
            "NRRD0004\ntype: uint16\ndimension: {}\nspace: left-posterior-superior\nsizes: {sizes}\n\
             space directions: {dirs}\nendian: little\nencoding: {enc}\nspace origin: (0,0,0)\n",
            sizes.split_whitespace().count()
        )
    };
    let unit = "(1,0,0) (0,1,0) (0,0,1)";
    let p = w("ok.nrrd", &nrrd(&head("2 2 2", unit, "raw"), &[0u8; 16]));
    assert_eq!(read_labels(&p).unwrap().data, vec![0; 8]);
    // Wrong magic.
    let p = w("magic.nrrd", b"NRRX0004\ntype: uint16\n\n");
    expect_err(read_image(&p), &p, &["not a NRRD"]);
    // Truncated raw data and gzip data; gzip data shorter than declared.
    let p = w("trunc.nrrd", &nrrd(&head("2 2 2", unit, "raw"), &[0u8; 15]));
    expect_err(read_image(&p), &p, &["truncated", "16 bytes"]);
    let gz = gzip(&[0u8; 16]);
    let p = w("trunc.gz.nrrd", &nrrd(&head("2 2 2", unit, "gzip"), &gz[..gz.len() - 10]));
    expect_err(read_image(&p), &p, &["gzip"]);
    let p = w("short.gz.nrrd", &nrrd(&head("2 2 2", unit, "gzip"), &gzip(&[0u8; 10])));
    expect_err(read_image(&p), &p, &["truncated or inconsistent", "only 10 bytes"]);
    // Header sizes far beyond the data (no allocation) and sizes whose product overflows.
    let p = w("huge.nrrd", &nrrd(&head("100000 100000 100000", unit, "raw"), &[0u8; 16]));
    expect_err(read_image(&p), &p, &["truncated or inconsistent"]);
    let p = w("huge.gz.nrrd", &nrrd(&head("100000 100000 100000", unit, "gzip"), &gzip(&[0u8; 16])));
    expect_err(read_image(&p), &p, &["truncated or inconsistent"]);
    let p = w("overflow.nrrd", &nrrd(&head("4294967296 4294967296 4294967296", unit, "raw"), &[0u8; 16]));
    expect_err(read_image(&p), &p, &["overflow"]);
    // Zero size, NaN and zero-length directions, 2D, missing fields, bad type.
    let p = w("zero.nrrd", &nrrd(&head("2 0 2", unit, "raw"), &[]));
    expect_err(read_image(&p), &p, &["size 0"]);
    let p = w("nan.nrrd", &nrrd(&head("2 2 2", "(nan,0,0) (0,1,0) (0,0,1)", "raw"), &[0u8; 16]));
    expect_err(read_image(&p), &p, &["non-finite"]);
    let p = w("zerodir.nrrd", &nrrd(&head("2 2 2", "(0,0,0) (0,1,0) (0,0,1)", "raw"), &[0u8; 16]));
    expect_err(read_image(&p), &p, &["zero length"]);
    let p = w("2d.nrrd", &nrrd(&head("2 2", "(1,0,0) (0,1,0)", "raw"), &[0u8; 8]));
    expect_err(read_image(&p), &p, &["2D"]);
    let p = w("rgb.nrrd", &nrrd(&head("3 2 2", "none (1,0,0) (0,1,0)", "raw"), &[0u8; 24]));
    expect_err(read_image(&p), &p, &["2 spatial axes"]);
    let p = w("vec.nrrd", &nrrd(&head("3 2 2 2", "none (1,0,0) (0,1,0) (0,0,1)", "raw"), &[0u8; 48]));
    expect_err(read_image(&p), &p, &["3 components or layers"]);
    expect_err(read_labels(&p), &p, &["no Slicer segment metadata"]);
    let p = w("nodim.nrrd", b"NRRD0004\ntype: uint8\nsizes: 1 1 1\nencoding: raw\n\n\0");
    expect_err(read_image(&p), &p, &["dimension"]);
    let p = w("type.nrrd", b"NRRD0004\ntype: quaternion\ndimension: 3\nsizes: 1 1 1\nencoding: raw\n\n\0");
    expect_err(read_image(&p), &p, &["unknown NRRD type"]);
    let p = w("bz.nrrd", b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1 1 1\nencoding: bzip2\n\n\0");
    expect_err(read_image(&p), &p, &["bzip2", "not supported"]);
    let p = w("nodata.nrrd", b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1 1 1\nencoding: raw\n");
    expect_err(read_image(&p), &p, &["blank line"]);
    let p = w(
        "detached.nhdr",
        b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1 1 1\nencoding: raw\ndata file: missing.raw\n",
    );
    expect_err(read_image(&p), &dir.join("missing.raw"), &[]);
    let p = w("ascii.nrrd", &nrrd("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 1 1\nencoding: ascii\n", b"1 300\n"));
    expect_err(read_image(&p), &p, &["300"]);
    // Unknown extension / content.
    let p = w("image.png", b"\x89PNG....");
    expect_err(read_image(&p), &p, &["unrecognised"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn writes_are_atomic_and_validated() {
    let dir = scratch("atomic");
    let labels = Volume::new(vec![1u16; 8], Geometry::identity([2, 2, 2])).unwrap();
    for name in ["keep.nii.gz", "keep.nrrd", "keep.seg.nrrd"] {
        // Make the write fail after the temporary file was written: the final rename meets a non-empty
        // folder of that name. Nothing of it may change and no temporary file may stay behind.
        let blocked = dir.join(name);
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("old"), b"old content").unwrap();
        assert!(write_labels(&blocked, &labels, None).is_err());
        assert_eq!(std::fs::read(blocked.join("old")).unwrap(), b"old content");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        std::fs::remove_dir_all(&blocked).unwrap();
        let target = dir.join(name);
        std::fs::write(&target, b"old content").unwrap();
        // Invalid input fails before touching anything.
        let bad = Volume { data: vec![1u16; 7], geometry: Geometry::identity([2, 2, 2]) };
        assert!(matches!(write_labels(&target, &bad, None), Err(DspnetError::Shape(_))));
        let nan = Volume {
            data: vec![1u16; 8],
            geometry: Geometry { spacing: [1.0, f64::NAN, 1.0], ..Geometry::identity([2, 2, 2]) },
        };
        assert!(write_labels(&target, &nan, None).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"old content");
        // A good write replaces it, and leaves no temporary file behind.
        write_labels(&target, &labels, None).unwrap();
        assert_eq!(read_labels(&target).unwrap(), labels);
    }
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    assert!(write_labels(&dir.join("x.png"), &labels, None).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fuzzing found DICOM files of a few KB that made dicom-rs allocate and fill gigabytes (2.6 GB resident):
/// values (or a file meta group length) claiming more bytes than the file holds, and binary values of a length
/// dicom-rs reads only in
/// part (so that it parses the rest as a header with a huge length). Each is refused before parsing,
/// naming the element, and a real series still reads.
#[test]
fn dicom_elements_claiming_more_than_the_file_are_refused_before_allocating() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("dspnet-dicom-claims-{}", std::process::id()));
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("fuzz/regressions/dicom")).unwrap() {
        let path = entry.unwrap().path();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&path, dir.join("1.dcm")).unwrap();
        let err = dspnet::io::read_image(&dir).unwrap_err().to_string();
        let refused = err.contains("more than the file holds") || err.contains("not a multiple of");
        assert!(
            (err.contains("element (") || err.contains("meta group length")) && refused,
            "{}: {err}",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 5);
    // A valid file whose last element is cut short gives the same answer; the whole file reads.
    let good = std::fs::read(root.join("tests/data/mri-brain-dicom/brain_002.dcm")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("1.dcm"), &good[..good.len() - 100]).unwrap();
    let err = dspnet::io::read_image(&dir).unwrap_err().to_string();
    assert!(err.contains("(7fe0,0010) claims"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
