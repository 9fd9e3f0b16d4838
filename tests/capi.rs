//! Rust side of the C ABI tests (the C, C++ and ITK consumers live in `tests/capi/`, driven by
//! `tests/capi/run.sh`).
//!
//! - The raw volume the C and C++ consumers segment (`tests/capi/data/`) must be an exact crop of
//!   `tests/data/ct-liver`. Regenerate it with `DSPNET_WRITE_CAPI_DATA=1 cargo test --test capi`.
//! - The C ABI called from Rust on that volume: same result as `dspnet::volume::segment`, and
//!   several threads sharing one model.

use std::ffi::CStr;
use std::path::{Path, PathBuf};

use dspnet::capi::*;
use dspnet::io::{read_image, read_labels};

/// Crop size (i, j, k) of the C consumers' volume.
const CROP: [usize; 3] = [64, 64, 6];
/// Slice (global k) the crop is centred on; the consumers label crop slice 2 (= global k 64).
const CENTRE_K: usize = 64;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The crop origin: a 64x64 window centred on the liver's centroid on slice `CENTRE_K`, k from
/// `CENTRE_K - 2`.
fn crop_origin(labels: &[u16], dims: [usize; 3]) -> [usize; 3] {
    let (mut si, mut sj, mut n) = (0usize, 0usize, 0usize);
    for j in 0..dims[1] {
        for i in 0..dims[0] {
            if labels[i + dims[0] * (j + dims[1] * CENTRE_K)] != 0 {
                si += i;
                sj += j;
                n += 1;
            }
        }
    }
    assert!(n > 0, "no liver on slice {CENTRE_K}");
    let start = |c: usize, d: usize| c.saturating_sub(CROP[0] / 2).min(d - CROP[0]);
    [start(si / n, dims[0]), start(sj / n, dims[1]), CENTRE_K - 2]
}

fn crop<T: Copy>(data: &[T], dims: [usize; 3], origin: [usize; 3]) -> Vec<T> {
    let mut out = Vec::with_capacity(CROP.iter().product());
    for k in 0..CROP[2] {
        for j in 0..CROP[1] {
            for i in 0..CROP[0] {
                out.push(data[(origin[0] + i) + dims[0] * ((origin[1] + j) + dims[1] * (origin[2] + k))]);
            }
        }
    }
    out
}

fn capi_data(name: &str) -> PathBuf {
    root().join("tests/capi/data").join(name)
}

/// Image (int16 HU) and ground-truth labels (uint16) of the crop, from the NIfTI originals.
fn expected_crop() -> (Vec<i16>, Vec<u16>) {
    let image = read_image(&root().join("tests/data/ct-liver/image.nii.gz")).unwrap();
    let labels = read_labels(&root().join("tests/data/ct-liver/labels.nii.gz")).unwrap();
    let dims = image.geometry.dims;
    let origin = crop_origin(&labels.data, dims);
    let img: Vec<i16> = crop(&image.data, dims, origin).iter().map(|&v| v as i16).collect();
    (img, crop(&labels.data, dims, origin))
}

#[test]
fn capi_test_volume_is_a_crop_of_ct_liver() {
    let (img, lab) = expected_crop();
    let img_bytes: Vec<u8> = img.iter().flat_map(|v| v.to_le_bytes()).collect();
    let lab_bytes: Vec<u8> = lab.iter().flat_map(|v| v.to_le_bytes()).collect();
    if std::env::var_os("DSPNET_WRITE_CAPI_DATA").is_some() {
        std::fs::create_dir_all(capi_data("")).unwrap();
        std::fs::write(capi_data("ct-liver-64x64x6-i16.raw"), &img_bytes).unwrap();
        std::fs::write(capi_data("ct-liver-64x64x6-labels-u16.raw"), &lab_bytes).unwrap();
    }
    assert_eq!(std::fs::read(capi_data("ct-liver-64x64x6-i16.raw")).unwrap(), img_bytes);
    assert_eq!(std::fs::read(capi_data("ct-liver-64x64x6-labels-u16.raw")).unwrap(), lab_bytes);
    // The support slice the consumers use has liver, and so do its neighbours.
    for k in 1..4 {
        let area = lab[k * 64 * 64..(k + 1) * 64 * 64].iter().filter(|&&l| l == 1).count();
        assert!(area > 200, "slice {k}: {area} liver voxels");
    }
}

fn message() -> String {
    unsafe { CStr::from_ptr(dspnet_last_error_message()) }.to_string_lossy().into_owned()
}

/// The C ABI gives what the Rust API gives, also when four threads share one model.
#[test]
fn c_abi_matches_rust_api_and_is_shareable() {
    let dir = std::env::temp_dir().join(format!("dspnet-capi-rs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let weights = dir.join("w.safetensors");
    let config = dspnet::model::config::ModelConfig {
        depth: 50,
        feature_source: dspnet::model::config::FeatureSource::Layer3,
        ..Default::default()
    };
    dspnet::weights::write_synthetic(&weights, &config, 1).unwrap();

    let (img, lab) = expected_crop();
    let slice = CROP[0] * CROP[1];
    let mut support = vec![0u16; lab.len()];
    support[2 * slice..3 * slice].copy_from_slice(&lab[2 * slice..3 * slice]);

    // Rust API.
    let model = dspnet::model::Model::load(&weights, &candle_core::Device::Cpu).unwrap();
    let voxels: Vec<f32> = img.iter().map(|&v| v as f32).collect();
    let opts = dspnet::volume::SegmentOptions { extent: dspnet::volume::ExtentMode::Range(1, 3), ..Default::default() };
    let vref = dspnet::volume::VolumeRef { data: &voxels, dims: CROP, spacing: [1.0; 3] };
    let (expected, _) = dspnet::volume::segment(&model, vref, &support, &opts, &mut |_, _| true).unwrap();

    // C ABI.
    let path = std::ffi::CString::new(weights.to_str().unwrap()).unwrap();
    let mut handle = std::ptr::null_mut();
    let st = unsafe { dspnet_model_load(path.as_ptr(), c"cpu".as_ptr(), &mut handle) };
    assert_eq!(st, dspnet_status_t::DSPNET_OK, "{}", message());
    assert_eq!(unsafe { CStr::from_ptr(dspnet_model_device(handle)) }, c"cpu");
    let handle_addr = handle as usize;
    let results: Vec<Vec<u16>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (img, support) = (&img, &support);
                s.spawn(move || {
                    let mut o = std::mem::MaybeUninit::uninit();
                    unsafe { dspnet_segment_options_init(o.as_mut_ptr()) };
                    let mut o = unsafe { o.assume_init() };
                    o.extent = DSPNET_EXTENT_RANGE;
                    (o.extent_first, o.extent_last) = (1, 3);
                    let volume = dspnet_volume_t {
                        data: img.as_ptr().cast(),
                        dtype: DSPNET_DTYPE_I16,
                        dims: CROP,
                        spacing: [1.0; 3],
                    };
                    let mut out = vec![0xffffu16; img.len()];
                    let st = unsafe {
                        dspnet_segment(
                            handle_addr as *const dspnet_model_t,
                            &volume,
                            support.as_ptr(),
                            out.as_mut_ptr(),
                            &o,
                        )
                    };
                    assert_eq!(st, dspnet_status_t::DSPNET_OK, "{}", message());
                    assert_eq!(message(), "");
                    out
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for r in &results {
        assert!(r == &expected, "a thread's labels differ from the Rust API's");
    }
    // The propagation field selects the protocol as the Rust option does.
    let independent =
        dspnet::volume::SegmentOptions { propagation: dspnet::volume::Propagation::Independent, ..opts.clone() };
    let (expected_independent, _) =
        dspnet::volume::segment(&model, vref, &support, &independent, &mut |_, _| true).unwrap();
    let mut o = std::mem::MaybeUninit::uninit();
    unsafe { dspnet_segment_options_init(o.as_mut_ptr()) };
    let mut o = unsafe { o.assume_init() };
    assert_eq!(o.propagation, DSPNET_PROPAGATION_MEMORY, "memory is the default");
    o.extent = DSPNET_EXTENT_RANGE;
    (o.extent_first, o.extent_last) = (1, 3);
    o.propagation = DSPNET_PROPAGATION_INDEPENDENT;
    let volume = dspnet_volume_t { data: img.as_ptr().cast(), dtype: DSPNET_DTYPE_I16, dims: CROP, spacing: [1.0; 3] };
    let mut out = vec![0xffffu16; img.len()];
    let st = unsafe { dspnet_segment(handle, &volume, support.as_ptr(), out.as_mut_ptr(), &o) };
    assert_eq!(st, dspnet_status_t::DSPNET_OK, "{}", message());
    assert!(out == expected_independent, "independent through the C ABI differs from the Rust API's");
    // The head parameters reach the head as the Rust options do, and change what it predicts.
    let mut head = dspnet::model::prototypes::HeadOptions::default();
    head.set_all(["bg_thresh=0.5", "alpha=1", "w1_w2_w3=0:1:0", "val_wsize=4"]).unwrap();
    let tuned = dspnet::volume::SegmentOptions { head, ..independent.clone() };
    let (expected_tuned, _) = dspnet::volume::segment(&model, vref, &support, &tuned, &mut |_, _| true).unwrap();
    assert!(expected_tuned != expected_independent, "the chosen head parameters must change this prediction");
    (o.head.bg_thresh, o.head.alpha, o.head.w1_w2_w3, o.head.val_wsize) = (0.5, 1.0, [0.0, 1.0, 0.0], 4);
    let st = unsafe { dspnet_segment(handle, &volume, support.as_ptr(), out.as_mut_ptr(), &o) };
    assert_eq!(st, dspnet_status_t::DSPNET_OK, "{}", message());
    assert!(out == expected_tuned, "head options through the C ABI differ from the Rust API's");
    // A caller built against the 0.2 header (88 bytes: propagation and padding) gets the default head,
    // whatever its struct's memory holds past propagation.
    o.head.max_num_sp = 1000;
    o.struct_size = 88;
    let st = unsafe { dspnet_segment(handle, &volume, support.as_ptr(), out.as_mut_ptr(), &o) };
    assert_eq!(st, dspnet_status_t::DSPNET_OK, "{}", message());
    assert!(out == expected_independent, "an 0.2-sized options struct must run with the default head");
    // Out of range: refused, naming the field, the output untouched.
    o.struct_size = std::mem::size_of::<dspnet_segment_options_t>();
    out.fill(0xffff);
    let st = unsafe { dspnet_segment(handle, &volume, support.as_ptr(), out.as_mut_ptr(), &o) };
    assert_eq!(st, dspnet_status_t::DSPNET_ERROR_INVALID_ARGUMENT);
    assert!(message().contains("options->head.max_num_sp is 1000: expected 0 to 64"), "{}", message());
    assert!(out.iter().all(|&v| v == 0xffff));
    // Misaligned struct pointers (options, summary, image) are refused, naming the argument; they are
    // never read. The init function fills a misaligned struct safely.
    let mut bytes = vec![0u8; 2 * std::mem::size_of::<dspnet_segment_options_t>() + 16];
    let base = bytes.as_mut_ptr();
    let misaligned = unsafe { base.add(8 - (base as usize) % 8 + 1) } as *mut dspnet_segment_options_t;
    unsafe { dspnet_segment_options_init(misaligned) };
    let copied = unsafe { misaligned.read_unaligned() };
    assert_eq!(
        (copied.struct_size, copied.slice_axis, copied.head.max_num_sp),
        (std::mem::size_of::<dspnet_segment_options_t>(), -1, 5)
    );
    let st = unsafe { dspnet_segment(handle, &volume, support.as_ptr(), out.as_mut_ptr(), misaligned) };
    assert_eq!(st, dspnet_status_t::DSPNET_ERROR_INVALID_ARGUMENT);
    assert!(message().contains("options") && message().contains("not aligned"), "{}", message());
    let mut sbytes = vec![0u8; 2 * std::mem::size_of::<dspnet_segment_summary_t>() + 16];
    let sbase = sbytes.as_mut_ptr();
    let summary = unsafe { sbase.add(8 - (sbase as usize) % 8 + 4) } as *mut dspnet_segment_summary_t;
    let st = unsafe {
        dspnet_segment_with_summary(handle, &volume, support.as_ptr(), out.as_mut_ptr(), std::ptr::null(), summary)
    };
    assert_eq!(st, dspnet_status_t::DSPNET_ERROR_INVALID_ARGUMENT);
    assert!(message().contains("summary") && message().contains("not aligned"), "{}", message());
    let mut vbytes = vec![0u8; 2 * std::mem::size_of::<dspnet_volume_t>() + 16];
    let vbase = vbytes.as_mut_ptr();
    let image = unsafe { vbase.add(8 - (vbase as usize) % 8 + 2) } as *mut dspnet_volume_t;
    unsafe {
        image.write_unaligned(dspnet_volume_t {
            data: img.as_ptr().cast(),
            dtype: DSPNET_DTYPE_I16,
            dims: CROP,
            spacing: [1.0; 3],
        })
    };
    let st = unsafe { dspnet_segment(handle, image, support.as_ptr(), out.as_mut_ptr(), std::ptr::null()) };
    assert_eq!(st, dspnet_status_t::DSPNET_ERROR_INVALID_ARGUMENT);
    assert!(message().contains("image") && message().contains("not aligned"), "{}", message());
    assert!(out.iter().all(|&v| v == 0xffff), "a refused call leaves the output untouched");
    unsafe { dspnet_model_free(handle) };
    unsafe { dspnet_model_free(handle) }; // a second free is a no-op
    let _ = std::fs::remove_dir_all(&dir);
}

/// `dspnet_segment_files`: the same labels as `dspnet::volume::segment` on the files' voxels, written with
/// the image's geometry; bad arguments and unreadable files give their status and leave no output.
#[test]
fn segment_files_reads_segments_and_writes_atomically() {
    use dspnet::io::{write_labels, Volume};
    let dir = std::env::temp_dir().join(format!("dspnet-capi-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let weights = dir.join("w.safetensors");
    dspnet::weights::write_synthetic(
        &weights,
        &dspnet::model::config::ModelConfig { depth: 50, ..Default::default() },
        1,
    )
    .unwrap();
    let image_path = root().join("tests/data/ct-liver/image.nii.gz");
    let image = read_image(&image_path).unwrap();
    let truth = read_labels(&root().join("tests/data/ct-liver/labels.nii.gz")).unwrap();
    let [ni, nj, _] = image.geometry.dims;
    let painted: Vec<u16> =
        truth.data.iter().enumerate().map(|(v, &l)| if v / (ni * nj) == 64 { l } else { 0 }).collect();
    let support_path = dir.join("support.nii.gz");
    write_labels(&support_path, &Volume::new(painted.clone(), truth.geometry.clone()).unwrap(), None).unwrap();

    let model = dspnet::model::Model::load(&weights, &candle_core::Device::Cpu).unwrap();
    let opts =
        dspnet::volume::SegmentOptions { extent: dspnet::volume::ExtentMode::Range(62, 66), ..Default::default() };
    let vref =
        dspnet::volume::VolumeRef { data: &image.data, dims: image.geometry.dims, spacing: image.geometry.spacing };
    let (expected, _) = dspnet::volume::segment(&model, vref, &painted, &opts, &mut |_, _| true).unwrap();

    let cpath = |p: &Path| std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let w = cpath(&weights);
    let mut handle = std::ptr::null_mut();
    assert_eq!(
        unsafe { dspnet_model_load(w.as_ptr(), c"cpu".as_ptr(), &mut handle) },
        dspnet_status_t::DSPNET_OK,
        "{}",
        message()
    );
    let mut o = std::mem::MaybeUninit::uninit();
    unsafe { dspnet_segment_options_init(o.as_mut_ptr()) };
    let mut o = unsafe { o.assume_init() };
    o.extent = DSPNET_EXTENT_RANGE;
    (o.extent_first, o.extent_last) = (62, 66);
    let output = dir.join("nested/out.nrrd");
    let (img_c, sup_c, out_c) = (cpath(&image_path), cpath(&support_path), cpath(&output));
    let mut summary: dspnet_segment_summary_t = unsafe { std::mem::zeroed() };
    summary.struct_size = std::mem::size_of::<dspnet_segment_summary_t>();
    let st = unsafe { dspnet_segment_files(handle, img_c.as_ptr(), sup_c.as_ptr(), out_c.as_ptr(), &o, &mut summary) };
    assert_eq!(st, dspnet_status_t::DSPNET_OK, "{}", message());
    let written = read_labels(&output).unwrap();
    assert!(written.data == expected, "labels differ from dspnet::volume::segment's");
    assert!(written.geometry.same_grid(&image.geometry, 1e-6), "the output must carry the image's geometry");
    assert_eq!(summary.labelled_voxels, expected.iter().filter(|&&l| l != 0).count());
    assert_eq!(summary.num_slices, image.geometry.dims[2]);

    // Errors: NULL and empty paths, a missing image, a bad output extension; nothing written.
    let missing = cpath(&dir.join("missing.nii.gz"));
    let other = dir.join("other.nii.gz");
    let other_c = cpath(&other);
    let bad_ext = cpath(&dir.join("out.png"));
    let st = unsafe {
        dspnet_segment_files(handle, std::ptr::null(), sup_c.as_ptr(), other_c.as_ptr(), &o, std::ptr::null_mut())
    };
    assert_eq!(st, dspnet_status_t::DSPNET_ERROR_NULL_ARGUMENT);
    assert!(message().contains("image_path"), "{}", message());
    let st = unsafe {
        dspnet_segment_files(handle, img_c.as_ptr(), c"".as_ptr(), other_c.as_ptr(), &o, std::ptr::null_mut())
    };
    assert_eq!(st, dspnet_status_t::DSPNET_ERROR_INVALID_ARGUMENT);
    assert!(message().contains("support_path is empty"), "{}", message());
    let st = unsafe {
        dspnet_segment_files(handle, missing.as_ptr(), sup_c.as_ptr(), other_c.as_ptr(), &o, std::ptr::null_mut())
    };
    assert_eq!(st, dspnet_status_t::DSPNET_ERROR_IO);
    assert!(message().contains("missing.nii.gz"), "{}", message());
    let st = unsafe {
        dspnet_segment_files(handle, img_c.as_ptr(), sup_c.as_ptr(), bad_ext.as_ptr(), &o, std::ptr::null_mut())
    };
    assert_eq!(st, dspnet_status_t::DSPNET_ERROR_INVALID_ARGUMENT, "{}", message());
    assert!(!other.exists() && !dir.join("out.png").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    unsafe { dspnet_model_free(handle) };
    let _ = std::fs::remove_dir_all(&dir);
}
