//! `dspnet eval` protocols, and `dspnet segment` on the MRI demo and on a DICOM series folder.

mod common;

use common::*;
use dspnet::io::{read_image, read_labels, Volume};
use std::process::Command;

#[test]
fn eval_one_slice_and_alpnet_report_dice_per_class() {
    let case = ct_case("eval", 3);
    let png = case.dir.join("p.png");
    let o = dspnet(args![
        "eval",
        case.image,
        "--labels",
        case.gt,
        "--weights",
        weights(),
        "--extent",
        "all",
        "--json",
        "--preview",
        png
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["protocol"], "one-slice");
    let c = &j["classes"][0];
    assert_eq!(c["label"], 1);
    let d = c["dice"].as_f64().unwrap();
    assert!(d > 0.0 && d <= 1.0, "{d}");
    // The liver spans all 8 crop slices: the middle one (3) is the support, the 7 others are scored.
    assert_eq!(c["support_slices"], serde_json::json!([3]));
    assert_eq!(c["slices_processed"], 7);
    assert!(png.exists());

    let o = dspnet(args![
        "eval",
        case.image,
        "--labels",
        case.gt,
        "--weights",
        weights(),
        "--protocol",
        "alpnet",
        "--json"
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &j["classes"][0];
    // Supports at 1/6, 1/2, 5/6 of the 8 labelled slices: indices 1, 4, 6; all 8 slices scored.
    assert_eq!(c["support_slices"], serde_json::json!([1, 4, 6]));
    assert_eq!(c["slices_processed"], 8);
    assert_eq!(c["extent"], serde_json::json!([0, 7]));
}

#[test]
fn baselines_run_without_a_model() {
    let case = ct_case("baselines", 3);
    // No --weights and a default-model path that does not exist: the baselines must not look for one.
    let run = |args: Vec<std::ffi::OsString>| {
        Command::new(env!("CARGO_BIN_EXE_dspnet"))
            .args(args)
            .env("DSPNET_WEIGHTS", case.dir.join("absent.safetensors"))
            .output()
            .unwrap()
    };
    for method in ["copy", "threshold"] {
        let o = run(args!["eval", case.image, "--labels", case.gt, "--method", method, "--json"]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!((j["protocol"].as_str(), j["method"].as_str()), (Some("one-slice"), Some(method)));
        let c = &j["classes"][0];
        // Same support as dspnet; --extent auto means every slice for a baseline.
        assert_eq!((&c["support_slices"], &c["slices_processed"]), (&serde_json::json!([3]), &serde_json::json!(7)));
        let d = c["dice"].as_f64().unwrap();
        assert!(d > 0.3 && d <= 1.0 && c["seconds"].is_number(), "{method}: {d}");

        let o = run(args!["eval", case.image, "--labels", case.gt, "--method", method, "--protocol", "alpnet"]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let table = String::from_utf8_lossy(&o.stdout);
        assert!(table.contains(&format!("protocol alpnet, method {method}")), "{table}");
    }

    // A support volume on another in-plane grid cannot lend its pixels to the query.
    let narrow = case.dir.join("narrow.nrrd");
    let narrow_gt = case.dir.join("narrow-gt.nrrd");
    let (img, gt) = (read_image(&case.image).unwrap(), read_labels(&case.gt).unwrap());
    write_f32_nrrd(&narrow, &crop(&img, [0, 0, 0], [80, 96, 8]));
    dspnet::io::write_labels(&narrow_gt, &crop(&gt, [0, 0, 0], [80, 96, 8]), None).unwrap();
    let o = run(args![
        "eval",
        case.image,
        "--labels",
        case.gt,
        "--method",
        "copy",
        "--protocol",
        "alpnet",
        "--support-image",
        narrow,
        "--support-labels",
        narrow_gt
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("same in-plane grid"), "{}", stderr(&o));
    let o = run(args!["eval", case.image, "--labels", case.gt, "--method", "copy", "--extent", "2:9"]);
    assert!(!o.status.success() && stderr(&o).contains("extent 2:9 is outside slices 0..=7"), "{}", stderr(&o));
    let o = run(args!["eval", case.image, "--labels", case.gt, "--method", "median"]);
    assert!(!o.status.success() && stderr(&o).contains("possible values: dspnet, copy, threshold"), "{}", stderr(&o));
}

#[test]
fn mri_deep_grey_two_classes() {
    let dir = tempdir("mri");
    let img = crop(&read_image(&data("mri-brain-aal/image.nii.gz")).unwrap(), [0, 0, 48], [100, 120, 54]);
    let lab = crop(&read_labels(&data("mri-brain-aal/labels.nii.gz")).unwrap(), [0, 0, 48], [100, 120, 54]);
    let plane = 100 * 120;
    // Thalamus L (77) and R (78) painted on crop slice 2 only.
    let sup: Vec<u16> =
        lab.data.iter().enumerate().map(|(v, &l)| if v / plane == 2 && (l == 77 || l == 78) { l } else { 0 }).collect();
    assert!(sup.contains(&77) && sup.contains(&78));
    let (image, support, out) = (dir.join("t1.nrrd"), dir.join("sup.nii.gz"), dir.join("out.seg.nrrd"));
    write_f32_nrrd(&image, &img);
    dspnet::io::write_labels(&support, &Volume::new(sup.clone(), lab.geometry.clone()).unwrap(), None).unwrap();
    let o = dspnet(args![
        "segment",
        image,
        "--support",
        support,
        "-o",
        out,
        "--weights",
        weights(),
        "--extent",
        "all",
        "--modality",
        "mri"
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = stderr(&o);
    assert!(summary.contains("classes [77, 78]") && summary.contains("10 slices processed"), "{summary}");
    let res = read_labels(&out).unwrap();
    assert!(res.geometry.same_grid(&img.geometry, 1e-6));
    assert_eq!(&res.data[2 * plane..3 * plane], &sup[2 * plane..3 * plane]);
    assert!(res.data.iter().all(|&l| l == 0 || l == 77 || l == 78));
}

#[test]
fn dicom_series_folder_as_input() {
    let dir = tempdir("dicom");
    let series = data("mri-brain-dicom");
    let img = read_image(&series).unwrap();
    let [ni, nj, nk] = img.geometry.dims;
    // A disc painted on the middle slice.
    let k0 = nk / 2;
    let sup: Vec<u16> = (0..ni * nj * nk)
        .map(|v| {
            let (i, j, k) = (v % ni, (v / ni) % nj, v / (ni * nj));
            let (di, dj) = (i as f64 - ni as f64 / 2.0, j as f64 - nj as f64 / 2.0);
            u16::from(k == k0 && di * di + dj * dj < (ni as f64 / 8.0).powi(2))
        })
        .collect();
    let support = dir.join("sup.nrrd");
    dspnet::io::write_labels(&support, &Volume::new(sup, img.geometry.clone()).unwrap(), None).unwrap();
    let out = dir.join("out.nii.gz");
    let range = format!("{}:{}", k0 - 1, k0 + 1);
    let o = dspnet(args![
        "segment",
        series,
        "--support",
        support,
        "-o",
        out,
        "--weights",
        weights(),
        "--extent",
        range,
        "--quiet"
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let res = read_labels(&out).unwrap();
    // Oblique DICOM geometry survives NIfTI's float32 affine to ~1e-5 mm.
    assert!(res.geometry.same_grid(&img.geometry, 1e-3), "{:?} vs {:?}", res.geometry, img.geometry);
}

#[test]
fn eval_compare_reports_memory_independent_and_copy_side_by_side() {
    let case = ct_case("compare", 3);
    let o = dspnet(args![
        "eval",
        case.image,
        "--labels",
        case.gt,
        "--weights",
        weights(),
        "--extent",
        "all",
        "--compare",
        "--json"
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for method in ["memory", "independent", "copy"] {
        let m = &j["compare"][method];
        let c = &m["classes"][0];
        assert_eq!(c["label"], 1, "{method}");
        // Extent all: the 7 slices around the support are scored by every method, and the prediction's
        // ends are compared with the liver's (it spans the crop: 0..=7).
        assert_eq!(c["slices_processed"], 7, "{method}");
        assert_eq!(c["extent"], serde_json::json!([0, 7]));
        let pred = c["predicted_extent"].as_array().unwrap();
        let err = c["extent_error"].as_array().unwrap();
        assert_eq!(err[0].as_u64().unwrap(), pred[0].as_u64().unwrap(), "{method}: first end error");
        assert_eq!(err[1].as_u64().unwrap(), 7 - pred[1].as_u64().unwrap(), "{method}: last end error");
        let d = m["mean_dice"].as_f64().unwrap();
        assert!(d > 0.0 && d <= 1.0 && m["median_dice"].as_f64() == Some(d), "{method}: one class, mean = median");
    }
    // Copy is exact on its support slice and repeats it: its in-extent Dice is what `--method copy` gives.
    let o = dspnet(args!["eval", case.image, "--labels", case.gt, "--method", "copy", "--extent", "all", "--json"]);
    let single: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(single["classes"][0]["dice"], j["compare"]["copy"]["classes"][0]["dice"]);
    // The table form names the three methods; --compare is for one-slice only.
    let o =
        dspnet(args!["eval", case.image, "--labels", case.gt, "--weights", weights(), "--extent", "all", "--compare"]);
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        table.contains("memory")
            && table.contains("independent")
            && table.contains("copy")
            && table.contains("ends<=3"),
        "{table}"
    );
    let o = dspnet(args![
        "eval",
        case.image,
        "--labels",
        case.gt,
        "--weights",
        weights(),
        "--protocol",
        "alpnet",
        "--compare"
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("--compare applies to --protocol one-slice only"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn eval_sweep_rescores_each_head_value_as_a_direct_run_would() {
    let case = ct_case("sweep", 3);
    // No copy zone: on this 3-slice case it would cover every slice and hide what the head does.
    let o = dspnet(args![
        "eval",
        case.image,
        "--labels",
        case.gt,
        "--weights",
        weights(),
        "--extent",
        "all",
        "--json",
        "--copy-tolerance",
        "0",
        "--sweep",
        "bg_thresh=0.5,0.95",
        "--sweep",
        "w1_w2_w3=0:1:0"
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = j["sweep"].as_array().unwrap();
    let names: Vec<(String, String)> =
        rows.iter().map(|r| (r["key"].as_str().unwrap().into(), r["value"].as_str().unwrap().into())).collect();
    let expected: Vec<(String, String)> =
        [("as given", "defaults"), ("bg_thresh", "0.5"), ("bg_thresh", "0.95"), ("w1_w2_w3", "0:1:0")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    assert_eq!(names, expected);
    assert_eq!(j["head"]["avg_sp_area"], "100");
    assert_eq!(j["propagation"], "memory");
    // The default value re-scored in the sweep gives the first row's result.
    assert_eq!(rows[0]["classes"][0]["dice"], rows[2]["classes"][0]["dice"]);
    // Each swept row is what a direct run with --head gives (reusing encoded slices changes nothing).
    for (row, head) in [(&rows[1], "bg_thresh=0.5"), (&rows[3], "w1_w2_w3=0:1:0")] {
        let o = dspnet(args![
            "eval",
            case.image,
            "--labels",
            case.gt,
            "--weights",
            weights(),
            "--extent",
            "all",
            "--json",
            "--copy-tolerance",
            "0",
            "--head",
            head
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let direct: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(row["classes"][0]["dice"], direct["classes"][0]["dice"], "{head}");
    }
    assert_ne!(rows[0]["classes"][0]["dice"], rows[1]["classes"][0]["dice"], "bg_thresh 0.5 must change this result");
    // The copy baseline comes with it; the table names every row.
    assert!(j["copy"]["classes"][0]["dice"].as_f64().is_some());
    let o = dspnet(args![
        "eval",
        case.image,
        "--labels",
        case.gt,
        "--weights",
        weights(),
        "--extent",
        "all",
        "--sweep",
        "n_iter=1,10"
    ]);
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && table.contains("n_iter") && table.contains("as given") && table.contains("(baseline)"),
        "{table}"
    );
    // Bad keys and values fail at parse time, naming them, before any model is loaded.
    for (flag, bad, needle) in [
        ("--sweep", "max_seeds=1,2", "unknown head option 'max_seeds'"),
        ("--sweep", "val_wsize=2,3", "val_wsize=3"),
        ("--head", "fg_thresh=2", "fg_thresh=2: expected 0 to 1"),
    ] {
        let o = dspnet(args![
            "eval",
            case.image,
            "--labels",
            case.gt,
            "--weights",
            case.dir.join("absent.safetensors"),
            flag,
            bad
        ]);
        assert!(!o.status.success() && stderr(&o).contains(needle), "{bad}: {}", stderr(&o));
    }
}
