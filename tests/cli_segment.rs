//! `dspnet segment` end to end on real (cropped) CT and MRI volumes with synthetic weights: geometry,
//! support preservation, extent modes, atomic writes and every user error. Synthetic weights make the
//! masks non-anatomical, so these tests check mechanics; Dice on anatomy needs the default model.

mod common;

use common::*;
use dspnet::io::{read_image, read_labels};

fn segment(case: &Case, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut a = args![
        "segment",
        case.image,
        "--support",
        case.support,
        "-o",
        out,
        "--weights",
        weights(),
        "--device",
        "cpu",
        "--quiet"
    ];
    a.extend(extra.iter().map(std::ffi::OsString::from));
    dspnet(a)
}

#[test]
fn output_has_input_geometry_and_keeps_support_slice() {
    let case = ct_case("geometry", 3);
    let out = case.dir.join("out.nii.gz");
    let o = segment(&case, &out, &["--extent", "all"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = read_image(&case.image).unwrap();
    let res = read_labels(&out).unwrap();
    assert!(res.geometry.same_grid(&img.geometry, 1e-4), "{:?} vs {:?}", res.geometry, img.geometry);
    let sup = read_labels(&case.support).unwrap();
    let [ni, nj, nk] = img.geometry.dims;
    let slice = |v: &[u16], k: usize| v[k * ni * nj..(k + 1) * ni * nj].to_vec();
    assert_eq!(slice(&res.data, 3), slice(&sup.data, 3), "support slice must be kept untouched");
    // Every other slice was processed and holds a prediction (synthetic weights lean to foreground).
    for k in (0..nk).filter(|&k| k != 3) {
        assert!(slice(&res.data, k).contains(&1), "slice {k} has no prediction");
        assert!(slice(&res.data, k).iter().all(|&l| l <= 1));
    }
}

#[test]
fn extent_range_leaves_other_slices_empty() {
    let case = ct_case("extent", 3);
    let out = case.dir.join("out.nrrd");
    let o = segment(&case, &out, &["--extent", "2:4", "--components", "all"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let res = read_labels(&out).unwrap();
    let [ni, nj, nk] = res.geometry.dims;
    for k in 0..nk {
        let any = res.data[k * ni * nj..(k + 1) * ni * nj].iter().any(|&l| l != 0);
        assert_eq!(any, (2..=4).contains(&k), "slice {k}");
    }
    let bad = segment(&case, &case.dir.join("x.nrrd"), &["--extent", "5:99"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("outside slices"), "{}", stderr(&bad));
}

#[test]
fn failed_run_leaves_existing_output_untouched() {
    let case = ct_case("atomic", 3);
    let out = case.dir.join("out.nrrd");
    std::fs::write(&out, b"precious").unwrap();
    // A support on another grid is refused before anything is written.
    let other = read_labels(&case.support).unwrap();
    let shifted = dspnet::io::Volume::new(
        other.data.clone(),
        dspnet::io::Geometry { origin: [0.0, 0.0, 0.0], ..other.geometry.clone() },
    )
    .unwrap();
    let wrong = case.dir.join("wrong-grid.nrrd");
    dspnet::io::write_labels(&wrong, &shifted, None).unwrap();
    let o = dspnet(args!["segment", case.image, "--support", wrong, "-o", out, "--weights", weights(), "--quiet"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not on the grid"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let leftovers: Vec<_> = std::fs::read_dir(&case.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn user_errors_are_named() {
    let case = ct_case("errors", 3);
    let out = case.dir.join("out.nrrd");
    let run = |support: &std::path::Path, extra: &[&str]| {
        let mut a = args!["segment", case.image, "--support", support, "-o", out, "--weights", weights(), "--quiet"];
        a.extend(extra.iter().map(std::ffi::OsString::from));
        let o = dspnet(a);
        assert!(!o.status.success(), "expected failure for {extra:?}");
        assert!(!out.exists(), "no output may be written on failure");
        stderr(&o)
    };
    // Unreadable / unsupported files.
    let junk = case.dir.join("junk.nii");
    std::fs::write(&junk, b"not an image").unwrap();
    assert!(run(&junk, &[]).contains("junk.nii"));
    // No labelled slice.
    let empty_lab = read_labels(&case.support).unwrap();
    let empty = dspnet::io::Volume::new(vec![0u16; empty_lab.data.len()], empty_lab.geometry.clone()).unwrap();
    let empty_path = case.dir.join("empty.nrrd");
    dspnet::io::write_labels(&empty_path, &empty, None).unwrap();
    assert!(run(&empty_path, &[]).contains("no labelled"), "{}", run(&empty_path, &[]));
    // A class absent from every support slice.
    assert!(run(&case.support, &["--classes", "7"]).contains("class 7"));
    // Labels painted on k, axis i requested.
    assert!(run(&case.support, &["--axis", "i"]).contains("painted along k"));
    // A missing weight file, and the CUDA backend in a CPU build.
    let o = dspnet(args![
        "segment",
        case.image,
        "--support",
        case.support,
        "-o",
        out,
        "--weights",
        case.dir.join("none.safetensors"),
        "--quiet"
    ]);
    assert!(stderr(&o).contains("none.safetensors"), "{}", stderr(&o));
    if !cfg!(feature = "cuda") {
        assert!(run(&case.support, &["--device", "cuda"]).contains("without CUDA"));
    }
    // NaN voxels.
    let mut img = read_image(&case.image).unwrap();
    img.data[100] = f32::NAN;
    let nan_path = case.dir.join("nan.nrrd");
    write_f32_nrrd(&nan_path, &img);
    let o = dspnet(args!["segment", nan_path, "--support", case.support, "-o", out, "--weights", weights(), "--quiet"]);
    assert!(stderr(&o).contains("NaN") || stderr(&o).contains("non-finite"), "{}", stderr(&o));
    // A volume too large for the memory budget is refused before the work starts.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dspnet"))
        .args([
            "segment".as_ref(),
            case.image.as_os_str(),
            "--support".as_ref(),
            case.support.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--quiet".as_ref(),
        ])
        .env("DSPNET_MEMORY_LIMIT_MB", "0")
        .output()
        .unwrap();
    assert!(stderr(&o).contains("out of memory"), "{}", stderr(&o));
}

#[test]
fn preview_png_is_written() {
    let case = ct_case("preview", 3);
    let out = case.dir.join("out.nii.gz");
    let png = case.dir.join("preview.png");
    let o = segment(&case, &out, &["--extent", "2:4", "--preview", png.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    assert!(info.width >= 256 && info.height >= 256);
}

/// A huge DSPNET_MEMORY_LIMIT_MB means no limit: 2^44 MB is 2^64 bytes, which must not wrap to 0.
#[test]
fn a_huge_memory_limit_does_not_wrap() {
    let case = ct_case("memory-limit", 3);
    let out = case.dir.join("out.nrrd");
    let a = args![
        "segment",
        case.image,
        "--support",
        case.support,
        "-o",
        out,
        "--weights",
        weights(),
        "--device",
        "cpu",
        "--quiet",
        "--extent",
        "3:3"
    ];
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dspnet"))
        .args(&a)
        .env("DSPNET_MEMORY_LIMIT_MB", "17592186044416")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dspnet"))
        .args(&a)
        .env("DSPNET_MEMORY_LIMIT_MB", "0")
        .output()
        .unwrap();
    assert!(!o.status.success() && stderr(&o).contains("DSPNET_MEMORY_LIMIT_MB"), "{}", stderr(&o));
}
