//! Interactive sessions: the same labels as one-shot runs, encoded slices reused across runs (corrections,
//! other axes), the feature budget, and bad input; through the Rust API and the C ABI.

mod common;

use std::ffi::CStr;
use std::sync::OnceLock;

use candle_core::Device;
use common::*;
use dspnet::capi::*;
use dspnet::io::{read_image, read_labels, Volume};
use dspnet::model::Model;
use dspnet::volume::session::slice_feature_bytes;
use dspnet::volume::{segment, AxisChoice, ExtentMode, Propagation, SegmentOptions, Session, VolumeRef};
use dspnet::DspnetError;

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(weights(), &Device::Cpu).unwrap())
}

/// CT crop: 40x56 in-plane, 10 slices along k, anisotropic; ground truth and a support on slice 5.
fn ct() -> (Volume<f32>, Volume<u16>, Vec<u16>) {
    let img = read_image(&data("ct-liver/image.nii.gz")).unwrap();
    let lab = read_labels(&data("ct-liver/labels.nii.gz")).unwrap();
    let (lo, hi) = ([40, 38, 59], [80, 94, 69]);
    let (mut img, mut gt) = (crop(&img, lo, hi), crop(&lab, lo, hi));
    for v in [&mut img.geometry, &mut gt.geometry] {
        v.spacing = [0.9, 0.9, 2.5];
    }
    let support = only_slices(&gt.data, gt.geometry.dims, &[5]);
    (img, gt, support)
}

/// The labels of `gt` on slices `zs` along k, 0 elsewhere.
fn only_slices(gt: &[u16], dims: [usize; 3], zs: &[usize]) -> Vec<u16> {
    let plane = dims[0] * dims[1];
    gt.iter().enumerate().map(|(v, &l)| if zs.contains(&(v / plane)) { l } else { 0 }).collect()
}

fn one_shot(img: &Volume<f32>, support: &[u16], opts: &SegmentOptions) -> (Vec<u16>, dspnet::volume::SegmentSummary) {
    let view = VolumeRef { data: &img.data, dims: img.geometry.dims, spacing: img.geometry.spacing };
    segment(model(), view, support, opts, &mut |_, _| true).unwrap()
}

fn session(img: &Volume<f32>, budget: usize) -> Session {
    Session::new(model(), img.data.clone(), img.geometry.dims, img.geometry.spacing, budget).unwrap()
}

#[test]
fn a_correction_reuses_every_encoded_slice_and_matches_a_fresh_run() {
    let (img, gt, support) = ct();
    let dims = img.geometry.dims;
    let mut s = session(&img, 0);
    for propagation in [Propagation::Memory, Propagation::Independent] {
        let opts = SegmentOptions { extent: ExtentMode::All, propagation, ..Default::default() };
        let before = s.stats().encoded;
        let (first, summary) = s.segment(model(), &support, &opts, &mut |_, _| true).unwrap();
        let (expected, expected_summary) = one_shot(&img, &support, &opts);
        assert!(first == expected, "{propagation:?}: the session's labels differ from a one-shot run");
        assert_eq!(summary.slice_confidence, expected_summary.slice_confidence);
        assert_eq!(summary.suggested_slices, expected_summary.suggested_slices);
        if propagation == Propagation::Memory {
            assert_eq!(s.stats().encoded - before, dims[2], "the first run encodes every slice once");
        } else {
            assert_eq!(s.stats().encoded, before, "the second propagation reuses the first one's slices");
        }

        // The user corrects slice 8: nothing new to encode, same labels as a fresh run on the new support.
        let corrected = only_slices(&gt.data, dims, &[5, 8]);
        let encoded = s.stats().encoded;
        let reused = s.stats().reused;
        let replayed = s.stats().chains_replayed;
        let (second, _) = s.segment(model(), &corrected, &opts, &mut |_, _| true).unwrap();
        assert_eq!(s.stats().encoded, encoded, "{propagation:?}: a correction must not encode any slice again");
        if propagation == Propagation::Memory {
            // Slice 5's chains walk the same slices as before (the upward one now stops at 6): replayed.
            assert_eq!(s.stats().chains_replayed - replayed, 2);
        }
        assert!(s.stats().reused > reused);
        assert!(
            second == one_shot(&img, &corrected, &opts).0,
            "{propagation:?}: corrected run differs from a fresh run"
        );
        assert!(second != first, "the correction changed nothing: the test would not see stale features");
    }
}

#[test]
fn replayed_chains_under_the_automatic_extent_match_fresh_runs() {
    let (img, gt, support) = ct();
    let dims = img.geometry.dims;
    let mut s = session(&img, 0);
    // Permissive stop rules so that the synthetic model's chains stop somewhere inside the volume.
    let mut opts = SegmentOptions::default();
    opts.memory.presence_threshold = 0.2;
    let supports =
        [support.clone(), only_slices(&gt.data, dims, &[5, 1]), support.clone(), only_slices(&gt.data, dims, &[5, 9])];
    for (i, sup) in supports.iter().enumerate() {
        let (out, summary) = s.segment(model(), sup, &opts, &mut |_, _| true).unwrap();
        let (expected, expected_summary) = one_shot(&img, sup, &opts);
        assert!(out == expected, "run {i}: the session's labels differ from a one-shot run");
        assert_eq!(summary.presence, expected_summary.presence, "run {i}");
        assert_eq!(summary.slices_processed, expected_summary.slices_processed);
    }
    assert!(s.stats().chains_replayed >= 2, "{:?}", s.stats());
    // Other settings are not replayed from a record made under different ones.
    let before = s.stats().chains_replayed;
    let strict = SegmentOptions {
        memory: dspnet::volume::MemoryOptions { presence_threshold: 0.9, ..opts.memory.clone() },
        ..opts.clone()
    };
    let (out, _) = s.segment(model(), &support, &strict, &mut |_, _| true).unwrap();
    assert_eq!(s.stats().chains_replayed, before);
    assert!(out == one_shot(&img, &support, &strict).0);
}

/// A cache reused on the same buffer with corrected voxel spacing must not serve the old canvas's features.
#[test]
fn a_cache_does_not_reuse_features_across_spacings() {
    let (img, _, support) = ct();
    let opts = SegmentOptions { extent: ExtentMode::All, ..Default::default() };
    let mut cache = dspnet::volume::FeatureCache::default();
    let dims = img.geometry.dims;
    let first = VolumeRef { data: &img.data, dims, spacing: img.geometry.spacing };
    dspnet::volume::segment_cached(model(), first, &support, &opts, &mut |_, _| true, &mut cache).unwrap();
    let corrected = VolumeRef { data: &img.data, dims, spacing: [0.45, 0.9, 2.5] };
    let (out, _) =
        dspnet::volume::segment_cached(model(), corrected, &support, &opts, &mut |_, _| true, &mut cache).unwrap();
    let (fresh, _) = segment(model(), corrected, &support, &opts, &mut |_, _| true).unwrap();
    assert!(out == fresh, "stale features after a spacing change");
    assert_eq!(cache.stats().encoded, 2 * dims[2]);
}

#[test]
fn other_axes_and_modalities_get_their_own_slices() {
    let (img, gt, support) = ct();
    let dims = img.geometry.dims;
    let mut s = session(&img, 0);
    let opts = SegmentOptions { extent: ExtentMode::All, ..Default::default() };
    s.segment(model(), &support, &opts, &mut |_, _| true).unwrap();
    let after_k = s.stats().encoded;

    // Painted on one i-slice instead: slices along i are new, and the result is a fresh run's.
    let mut along_i = vec![0u16; gt.data.len()];
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            let v = 30 + dims[0] * (j + dims[1] * k);
            along_i[v] = gt.data[v];
        }
    }
    assert!(along_i.iter().any(|&l| l != 0));
    let opts_i = SegmentOptions { axis: AxisChoice::Fixed(0), ..opts.clone() };
    let (out_i, summary_i) = s.segment(model(), &along_i, &opts_i, &mut |_, _| true).unwrap();
    assert_eq!(summary_i.axis, 0);
    assert_eq!(s.stats().encoded - after_k, dims[0], "every i-slice is encoded once");
    assert!(out_i == one_shot(&img, &along_i, &opts_i).0);

    // MRI intensities are a different canvas too; back on k as CT, everything is reused.
    let mri = SegmentOptions { modality: dspnet::volume::ModalityChoice::Mri, ..opts.clone() };
    let (out_mri, _) = s.segment(model(), &support, &mri, &mut |_, _| true).unwrap();
    assert!(out_mri == one_shot(&img, &support, &mri).0);
    let encoded = s.stats().encoded;
    assert_eq!(encoded - after_k, dims[0] + dims[2]);
    s.segment(model(), &support, &opts, &mut |_, _| true).unwrap();
    assert_eq!(s.stats().encoded, encoded);
}

#[test]
fn the_budget_bounds_the_features_and_not_the_result() {
    let (img, _, support) = ct();
    let one = slice_feature_bytes(model());
    let mut s = session(&img, 3 * one);
    let opts = SegmentOptions { extent: ExtentMode::All, ..Default::default() };
    for _ in 0..2 {
        let (out, _) = s.segment(model(), &support, &opts, &mut |_, _| true).unwrap();
        assert!(out == one_shot(&img, &support, &opts).0);
        let st = s.stats();
        assert!(st.bytes + st.chain_bytes <= 3 * one && st.slices <= 3, "{st:?}");
        assert!(st.evicted > 0);
    }
    assert_eq!(s.budget(), 3 * one);
    assert_eq!(s.held_bytes(), img.data.len() * 4 + s.stats().bytes + s.stats().chain_bytes);
    assert!(s.stats().bytes + s.stats().chain_bytes <= 3 * one, "recorded chains count in the budget");
}

#[test]
fn bad_input_is_refused() {
    let (img, _, support) = ct();
    let dims = img.geometry.dims;
    let one = slice_feature_bytes(model());
    let e = Session::new(model(), img.data.clone(), dims, img.geometry.spacing, one - 1).err().unwrap();
    assert!(matches!(e, DspnetError::InvalidArgument(ref m) if m.contains("smaller than one slice")), "{e}");
    let mut nan = img.data.clone();
    nan[17] = f32::NAN;
    assert!(matches!(Session::new(model(), nan, dims, [1.0; 3], 0), Err(DspnetError::NonFinite(_))));
    assert!(matches!(
        Session::new(model(), img.data.clone(), [dims[0], dims[1], dims[2] + 1], [1.0; 3], 0),
        Err(DspnetError::Shape(_))
    ));
    assert!(matches!(
        Session::new(model(), img.data.clone(), dims, [1.0, 0.0, 1.0], 0),
        Err(DspnetError::InvalidArgument(_))
    ));
    let mut s = session(&img, 0);
    let e = s.segment(model(), &support[1..], &SegmentOptions::default(), &mut |_, _| true).err().unwrap();
    assert!(matches!(e, DspnetError::Shape(ref m) if m.contains("session")), "{e}");
    assert!(matches!(
        s.segment(model(), &vec![0u16; support.len()], &SegmentOptions::default(), &mut |_, _| true),
        Err(DspnetError::EmptySupport { class: None, .. })
    ));
}

// ---- C ABI ----

fn message() -> String {
    unsafe { CStr::from_ptr(dspnet_last_error_message()) }.to_string_lossy().into_owned()
}

fn c_model() -> *mut dspnet_model_t {
    let path = std::ffi::CString::new(weights().to_str().unwrap()).unwrap();
    let mut m = std::ptr::null_mut();
    assert_eq!(
        unsafe { dspnet_model_load(path.as_ptr(), c"cpu".as_ptr(), &mut m) },
        dspnet_status_t::DSPNET_OK,
        "{}",
        message()
    );
    m
}

fn c_options(extent: dspnet_extent_mode_t) -> dspnet_segment_options_t {
    let mut o = std::mem::MaybeUninit::uninit();
    unsafe { dspnet_segment_options_init(o.as_mut_ptr()) };
    let mut o = unsafe { o.assume_init() };
    o.extent = extent;
    o
}

fn c_volume(img: &Volume<f32>) -> dspnet_volume_t {
    dspnet_volume_t {
        data: img.data.as_ptr().cast(),
        dtype: DSPNET_DTYPE_F32,
        dims: img.geometry.dims,
        spacing: img.geometry.spacing,
    }
}

fn empty_summary(confidence: &mut [f32]) -> dspnet_segment_summary_t {
    let mut s: dspnet_segment_summary_t = unsafe { std::mem::zeroed() };
    s.struct_size = std::mem::size_of::<dspnet_segment_summary_t>();
    s.slice_confidence = confidence.as_mut_ptr();
    s.slice_confidence_capacity = confidence.len();
    s
}

#[test]
fn c_sessions_match_dspnet_segment_and_survive_their_model() {
    let (img, gt, support) = ct();
    let dims = img.geometry.dims;
    let model = c_model();
    let volume = c_volume(&img);
    let o = c_options(DSPNET_EXTENT_AUTO);
    let mut expected = vec![0u16; support.len()];
    let mut conf_expected = vec![7.0f32; dims[2]];
    let mut sum_expected = empty_summary(&mut conf_expected);
    let st = unsafe {
        dspnet_segment_with_summary(model, &volume, support.as_ptr(), expected.as_mut_ptr(), &o, &mut sum_expected)
    };
    assert_eq!(st, dspnet_status_t::DSPNET_OK, "{}", message());
    assert_eq!(sum_expected.num_slices, dims[2]);
    assert_eq!(conf_expected[5], -1.0, "the painted slice is not scored");
    assert!(conf_expected.iter().all(|&c| c == -1.0 || (0.0..=1.0).contains(&c)), "{conf_expected:?}");

    let mut session = std::ptr::null_mut();
    let mut so = std::mem::MaybeUninit::uninit();
    unsafe { dspnet_session_options_init(so.as_mut_ptr()) };
    let so = unsafe { so.assume_init() };
    assert_eq!((so.struct_size, so.feature_budget_bytes), (std::mem::size_of::<dspnet_session_options_t>(), 0));
    assert_eq!(
        unsafe { dspnet_session_create(model, &volume, &so, &mut session) },
        dspnet_status_t::DSPNET_OK,
        "{}",
        message()
    );
    // The session owns its model (freed here) and a copy of the image (`image_bytes` below).
    unsafe { dspnet_model_free(model) };
    let mut out = vec![0xffffu16; support.len()];
    let mut conf = vec![7.0f32; dims[2]];
    let mut sum = empty_summary(&mut conf);
    let st = unsafe { dspnet_session_segment_with_summary(session, support.as_ptr(), out.as_mut_ptr(), &o, &mut sum) };
    assert_eq!(st, dspnet_status_t::DSPNET_OK, "{}", message());
    assert!(out == expected, "the session's labels differ from dspnet_segment's");
    assert_eq!(conf, conf_expected);
    assert_eq!(
        (sum.num_suggested, sum.suggested_slices, sum.slices_processed),
        (sum_expected.num_suggested, sum_expected.suggested_slices, sum_expected.slices_processed)
    );
    assert_eq!(sum.struct_size, std::mem::size_of::<dspnet_segment_summary_t>());

    // A correction in the same buffer (support and output may be the same buffer).
    let mut corrected = only_slices(&gt.data, dims, &[2, 5]);
    let mut info: dspnet_session_info_t = unsafe { std::mem::zeroed() };
    info.struct_size = std::mem::size_of::<dspnet_session_info_t>();
    assert_eq!(unsafe { dspnet_session_info(session, &mut info) }, dspnet_status_t::DSPNET_OK);
    assert_eq!(
        (info.dims, info.image_bytes, info.feature_budget_bytes),
        (dims, img.data.len() * 4, DSPNET_SESSION_DEFAULT_FEATURE_BUDGET)
    );
    assert!(info.cached_slices > 0 && info.cached_bytes == info.cached_slices * slice_feature_bytes(model_ref()));
    let view = VolumeRef { data: &img.data, dims, spacing: img.geometry.spacing };
    let (fresh, _) = segment(model_ref(), view, &corrected, &SegmentOptions::default(), &mut |_, _| true).unwrap();
    let p = corrected.as_mut_ptr();
    assert_eq!(
        unsafe { dspnet_session_segment(session, p, p, std::ptr::null()) },
        dspnet_status_t::DSPNET_OK,
        "{}",
        message()
    );
    assert!(corrected == fresh);
    let mut info2: dspnet_session_info_t = unsafe { std::mem::zeroed() };
    info2.struct_size = std::mem::size_of::<dspnet_session_info_t>();
    assert_eq!(unsafe { dspnet_session_info(session, &mut info2) }, dspnet_status_t::DSPNET_OK);
    assert!(info2.slices_reused > info.slices_reused);
    assert!(info2.chain_bytes > 0 && info2.chains_replayed >= 1, "{} {}", info2.chain_bytes, info2.chains_replayed);

    // Bad input: status, message, output untouched.
    let mut untouched = vec![0xabcdu16; support.len()];
    let st = unsafe { dspnet_session_segment(std::ptr::null_mut(), support.as_ptr(), untouched.as_mut_ptr(), &o) };
    assert_eq!(st, dspnet_status_t::DSPNET_ERROR_NULL_ARGUMENT);
    assert!(message().contains("session"), "{}", message());
    let empty = vec![0u16; support.len()];
    assert_eq!(
        unsafe { dspnet_session_segment(session, empty.as_ptr(), untouched.as_mut_ptr(), &o) },
        dspnet_status_t::DSPNET_ERROR_NO_SUPPORT
    );
    let mut bad = c_options(7);
    bad.struct_size = std::mem::size_of::<dspnet_segment_options_t>();
    assert_eq!(
        unsafe { dspnet_session_segment(session, support.as_ptr(), untouched.as_mut_ptr(), &bad) },
        dspnet_status_t::DSPNET_ERROR_INVALID_ARGUMENT
    );
    assert!(untouched.iter().all(|&l| l == 0xabcd));

    unsafe { dspnet_session_free(session) };
    unsafe { dspnet_session_free(session) }; // a second free is a no-op
    unsafe { dspnet_session_free(std::ptr::null_mut()) };
    let st = unsafe { dspnet_session_segment(session, support.as_ptr(), untouched.as_mut_ptr(), &o) };
    assert_eq!(st, dspnet_status_t::DSPNET_ERROR_INVALID_ARGUMENT, "a freed session is reported, not used");
    assert!(message().contains("not a live session"), "{}", message());
}

fn model_ref() -> &'static Model {
    model()
}

#[test]
fn c_session_creation_errors() {
    let (img, _, _) = ct();
    let model = c_model();
    let volume = c_volume(&img);
    let mut session: *mut dspnet_session_t = std::ptr::dangling_mut();
    let mut so = std::mem::MaybeUninit::uninit();
    unsafe { dspnet_session_options_init(so.as_mut_ptr()) };
    let mut so = unsafe { so.assume_init() };
    so.feature_budget_bytes = 1000;
    assert_eq!(
        unsafe { dspnet_session_create(model, &volume, &so, &mut session) },
        dspnet_status_t::DSPNET_ERROR_INVALID_ARGUMENT
    );
    assert!(message().contains("smaller than one slice"), "{}", message());
    assert!(session.is_null(), "the out handle is NULL on failure");
    so.feature_budget_bytes = 0;
    so.struct_size = 8;
    assert_eq!(
        unsafe { dspnet_session_create(model, &volume, &so, &mut session) },
        dspnet_status_t::DSPNET_ERROR_INVALID_ARGUMENT
    );
    assert_eq!(
        unsafe { dspnet_session_create(model, std::ptr::null(), std::ptr::null(), &mut session) },
        dspnet_status_t::DSPNET_ERROR_NULL_ARGUMENT
    );
    assert_eq!(
        unsafe { dspnet_session_create(model, &volume, std::ptr::null(), std::ptr::null_mut()) },
        dspnet_status_t::DSPNET_ERROR_NULL_ARGUMENT
    );
    let mut nan = img.data.clone();
    nan[3] = f32::INFINITY;
    let nan_volume = dspnet_volume_t { data: nan.as_ptr().cast(), ..c_volume(&img) };
    assert_eq!(
        unsafe { dspnet_session_create(model, &nan_volume, std::ptr::null(), &mut session) },
        dspnet_status_t::DSPNET_ERROR_NON_FINITE
    );
    unsafe { dspnet_model_free(model) };
    assert_eq!(
        unsafe { dspnet_session_create(model, &volume, std::ptr::null(), &mut session) },
        dspnet_status_t::DSPNET_ERROR_INVALID_ARGUMENT,
        "a freed model"
    );
    assert!(message().contains("not a live model"), "{}", message());
}

/// What the busy test's progress callback sees.
struct Reentry {
    session: *mut dspnet_session_t,
    support: *const u16,
    out: *mut u16,
    inner: Option<dspnet_status_t>,
    /// Cross-thread variant: tell the other thread we are inside the run, then wait for its attempt.
    entered: Option<std::sync::mpsc::Sender<()>>,
    attempted: Option<std::sync::mpsc::Receiver<()>>,
}

unsafe extern "C" fn reenter(user: *mut std::ffi::c_void, done: usize, _total: usize) -> std::ffi::c_int {
    let r = unsafe { &mut *(user as *mut Reentry) };
    if done == 1 && r.inner.is_none() && r.entered.is_none() {
        r.inner = Some(unsafe { dspnet_session_segment(r.session, r.support, r.out, std::ptr::null()) });
    }
    if done == 1 {
        if let (Some(tx), Some(rx)) = (r.entered.take(), r.attempted.take()) {
            tx.send(()).unwrap();
            rx.recv().unwrap();
        }
    }
    0
}

#[test]
fn one_segmentation_at_a_time_per_session() {
    let (img, _, support) = ct();
    let model = c_model();
    let volume = c_volume(&img);
    let mut session = std::ptr::null_mut();
    assert_eq!(
        unsafe { dspnet_session_create(model, &volume, std::ptr::null(), &mut session) },
        dspnet_status_t::DSPNET_OK
    );
    let mut out = vec![0u16; support.len()];
    let mut inner_out = vec![0x5555u16; support.len()];

    // From its own progress callback: refused at once, the outer run goes on.
    let mut r = Reentry {
        session,
        support: support.as_ptr(),
        out: inner_out.as_mut_ptr(),
        inner: None,
        entered: None,
        attempted: None,
    };
    let mut o = c_options(DSPNET_EXTENT_ALL);
    o.progress = Some(reenter);
    o.user_data = (&mut r as *mut Reentry).cast();
    assert_eq!(
        unsafe { dspnet_session_segment(session, support.as_ptr(), out.as_mut_ptr(), &o) },
        dspnet_status_t::DSPNET_OK,
        "{}",
        message()
    );
    assert_eq!(r.inner, Some(dspnet_status_t::DSPNET_ERROR_BUSY));
    assert!(inner_out.iter().all(|&l| l == 0x5555), "a refused call writes nothing");

    // From another thread while a run is inside its progress callback: BUSY, then fine once it returned.
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (attempted_tx, attempted_rx) = std::sync::mpsc::channel();
    let session_addr = session as usize;
    std::thread::scope(|s| {
        let support = &support;
        let runner = s.spawn(move || {
            let mut r = Reentry {
                session: std::ptr::null_mut(),
                support: std::ptr::null(),
                out: std::ptr::null_mut(),
                inner: None,
                entered: Some(entered_tx),
                attempted: Some(attempted_rx),
            };
            let mut o = c_options(DSPNET_EXTENT_ALL);
            o.progress = Some(reenter);
            o.user_data = (&mut r as *mut Reentry).cast();
            let mut out = vec![0u16; support.len()];
            unsafe {
                dspnet_session_segment(session_addr as *mut dspnet_session_t, support.as_ptr(), out.as_mut_ptr(), &o)
            }
        });
        entered_rx.recv().unwrap();
        let mut other = vec![0x7777u16; support.len()];
        let st = unsafe {
            dspnet_session_segment(
                session_addr as *mut dspnet_session_t,
                support.as_ptr(),
                other.as_mut_ptr(),
                std::ptr::null(),
            )
        };
        assert_eq!(st, dspnet_status_t::DSPNET_ERROR_BUSY);
        assert!(message().contains("one segmentation at a time"), "{}", message());
        assert!(other.iter().all(|&l| l == 0x7777));
        attempted_tx.send(()).unwrap();
        assert_eq!(runner.join().unwrap(), dspnet_status_t::DSPNET_OK);
    });
    let st = unsafe { dspnet_session_segment(session, support.as_ptr(), out.as_mut_ptr(), std::ptr::null()) };
    assert_eq!(st, dspnet_status_t::DSPNET_OK, "{}", message());
    unsafe { dspnet_session_free(session) };
    unsafe { dspnet_model_free(model) };
}
