//! What each fuzz target does with its input, shared by the cargo-fuzz targets (fuzz/fuzz_targets) and the
//! stable corpus replay (tests/fuzz_corpus.rs). Every function must return, whatever the bytes: an error
//! is the expected answer to bad input; a panic, a hang, a crash or an outsized allocation is a bug.
#![allow(dead_code)]

use std::ffi::c_void;
use std::io::Write;
use std::os::raw::c_int;
use std::path::PathBuf;
use std::sync::OnceLock;

use dspnet::capi::*;

/// A per-process scratch folder: parsers read files, so the bytes are written there first.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dspnet-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

fn write(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, data).expect("scratch write");
    path
}

/// Both readers on one file: as an image (f32) and as labels (u16).
fn read_both(path: &std::path::Path) {
    let _ = dspnet::io::read_image(path);
    let _ = dspnet::io::read_labels(path);
}

pub fn nifti(data: &[u8]) {
    read_both(&write("in.nii", data));
}

/// The bytes gzip-compressed into a `.nii.gz`: the fuzzer works on the header and voxels, not on deflate.
pub fn nifti_gz(data: &[u8]) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("in-memory gzip");
    read_both(&write("in.nii.gz", &gz.finish().expect("in-memory gzip")));
}

pub fn nrrd(data: &[u8]) {
    read_both(&write("in.nrrd", data));
}

/// A detached header and its data file: the input up to the first NUL is `in.nhdr`, the rest is written
/// as `d.raw` and, compressed, `d.raw.gz` (seeds name either in their `data file:` line).
pub fn nrrd_detached(data: &[u8]) {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (header, rest) = data.split_at(split);
    let payload = rest.get(1..).unwrap_or(&[]);
    write("d.raw", payload);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(payload).expect("in-memory gzip");
    write("d.raw.gz", &gz.finish().expect("in-memory gzip"));
    read_both(&write("in.nhdr", header));
}

/// 3D Slicer's segmentation files: labels with segment layers and `Segment*_` keys.
pub fn seg_nrrd(data: &[u8]) {
    let _ = dspnet::io::read_labels(&write("in.seg.nrrd", data));
}

/// One file in a series folder: DICOM parsing, pixel decoding and the series geometry.
pub fn dicom(data: &[u8]) {
    let dir = scratch().join("series");
    std::fs::create_dir_all(&dir).expect("series folder");
    std::fs::write(dir.join("1.dcm"), data).expect("scratch write");
    let _ = dspnet::io::read_image(&dir);
    let _ = dspnet::io::read_labels(&dir);
}

/// Weight files: header, dtypes, shapes, names and metadata checks, then building the model from them.
pub fn safetensors(data: &[u8]) {
    let path = write("in.safetensors", data);
    let _ = dspnet::weights::stored_dtypes(&path);
    if let Ok(w) = dspnet::weights::load_safetensors(&path) {
        let cpu = dspnet::model::device_from_name(Some("cpu")).expect("the CPU device");
        let _ = dspnet::model::Model::from_weights(w, &cpu);
    }
}

/// Official PyTorch checkpoints: zip archive, unpickler and tensor storage checks.
pub fn pth(data: &[u8]) {
    let _ = dspnet::weights::pth::read_checkpoint_bytes(data);
}

// --------------------------------------------------------------------------------------------------
// C ABI
// --------------------------------------------------------------------------------------------------

/// A small synthetic model, loaded once per process (the checks need a live model to reach them).
fn model() -> *const dspnet_model_t {
    static MODEL: OnceLock<usize> = OnceLock::new();
    *MODEL.get_or_init(|| {
        let path = scratch().join("model.safetensors");
        let config = dspnet::model::config::ModelConfig { depth: 50, ..Default::default() };
        dspnet::weights::write_synthetic(&path, &config, 1).expect("synthetic weights");
        let c = std::ffi::CString::new(path.to_str().expect("utf-8 temp path")).expect("no NUL");
        let mut m = std::ptr::null_mut();
        let st = unsafe { dspnet_model_load(c.as_ptr(), c"cpu".as_ptr(), &mut m) };
        assert_eq!(st, dspnet_status_t::DSPNET_OK);
        m as usize
    }) as *const dspnet_model_t
}

/// Cancels at the first progress call, which comes after every input check and before any work: the
/// target exercises the checks without running the network.
unsafe extern "C" fn cancel_at_once(_: *mut c_void, _: usize, _: usize) -> c_int {
    1
}

/// Reads bytes from the input, then zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
}

/// `dspnet_segment` and `dspnet_session_create` on caller structs built from the input: dims (small, zero
/// or overflowing), dtype, spacing, alignment, every options field but the pointers (which the harness
/// owns: a class list of its own, the cancelling callback) and the options' and summary's struct_size.
pub fn capi(data: &[u8]) {
    let mut b = Bytes(data);
    let mode = b.u8();
    let dims: [usize; 3] = match mode % 8 {
        // The library must refuse these before reading a voxel (the buffers below are tiny).
        0 => [usize::MAX, 2, 1],
        1 => [0, 4, 4],
        2 => [1 << 21, 1 << 21, 1 << 22],
        _ => [1 + b.u8() as usize % 12, 1 + b.u8() as usize % 12, 1 + b.u8() as usize % 6],
    };
    let n = if mode % 8 < 3 { 16 } else { dims.iter().product() };
    let dtype = u32::from_le_bytes(b.take::<4>()) % 10;
    let spacing = [0; 3].map(|_| {
        let raw = b.u8();
        match raw % 8 {
            0 => f64::NAN,
            1 => -1.0,
            2 => 0.0,
            3 => f64::INFINITY,
            _ => 0.25 + raw as f64 / 64.0,
        }
    });
    // Voxels: 8 bytes per element whatever the dtype, so that any dtype reads inside the buffer; one byte
    // of offset when asked (misaligned for every multi-byte dtype).
    let misalign = (mode >> 3) & 1 == 1;
    let mut voxels = vec![0u64; n + 1];
    let raw = b.take::<64>();
    for (i, v) in voxels.iter_mut().enumerate() {
        *v = u64::from(raw[i % 64]).wrapping_mul(0x0101_0101_0101_0101);
        if i % 7 == 3 && dtype >= 7 && (mode >> 4) & 1 == 1 {
            *v = f64::NAN.to_bits();
        }
    }
    let data_ptr = unsafe { (voxels.as_ptr() as *const u8).add(usize::from(misalign)) } as *const c_void;
    let mut support = vec![0u16; n];
    let painted = b.u8() as usize;
    let label = u16::from(b.u8() % 4);
    if n > 0 && dims[2] > 0 && mode % 8 >= 3 {
        let slice = dims[0] * dims[1];
        let z = painted % dims[2];
        for (i, s) in support[z * slice..(z + 1) * slice].iter_mut().enumerate() {
            *s = if (i + painted) % 3 == 0 { label } else { 0 };
        }
    }
    let mut out = vec![0u16; n];
    let volume = dspnet_volume_t { data: data_ptr, dtype, dims, spacing };

    // Options: every byte from the input, then the pointers replaced.
    let mut options = std::mem::MaybeUninit::<dspnet_segment_options_t>::uninit();
    unsafe { dspnet_segment_options_init(options.as_mut_ptr()) };
    let mut options = unsafe { options.assume_init() };
    let size = std::mem::size_of::<dspnet_segment_options_t>();
    let fields = b.take::<128>();
    if b.u8() & 1 == 1 {
        let bytes = unsafe { std::slice::from_raw_parts_mut(&mut options as *mut _ as *mut u8, size) };
        let m = size.min(fields.len());
        bytes[..m].copy_from_slice(&fields[..m]);
    }
    let classes = [1u16, 2, 3, 0];
    options.classes = if options.num_classes % 2 == 1 { classes.as_ptr() } else { std::ptr::null() };
    options.num_classes %= classes.len() + 1;
    options.progress = Some(cancel_at_once);
    options.user_data = std::ptr::null_mut();
    // struct_size: mostly this version's, sometimes a random one (smaller, between versions or larger).
    let size_pick = b.u8();
    options.struct_size = match size_pick % 4 {
        0 => size,
        1 => 88,
        2 => 80,
        _ => size_pick as usize,
    };
    let model = model();
    unsafe {
        let _ = dspnet_segment(model, &volume, support.as_ptr(), out.as_mut_ptr(), &options);
        let mut summary = std::mem::zeroed::<dspnet_segment_summary_t>();
        summary.struct_size = b.u8() as usize;
        let mut confidence = vec![0f32; 16];
        summary.slice_confidence = confidence.as_mut_ptr();
        summary.slice_confidence_capacity = confidence.len();
        let _ = dspnet_segment_with_summary(model, &volume, support.as_ptr(), out.as_mut_ptr(), &options, &mut summary);

        let mut session_options = std::mem::zeroed::<dspnet_session_options_t>();
        dspnet_session_options_init(&mut session_options);
        session_options.feature_budget_bytes = u64::from_le_bytes(b.take::<8>()) as usize;
        if b.u8() & 1 == 1 {
            session_options.struct_size = b.u8() as usize;
        }
        let mut session = std::ptr::null_mut();
        if dspnet_session_create(model, &volume, &session_options, &mut session) == dspnet_status_t::DSPNET_OK {
            let _ = dspnet_session_segment(session, support.as_ptr(), out.as_mut_ptr(), &options);
            let mut info = std::mem::zeroed::<dspnet_session_info_t>();
            info.struct_size = std::mem::size_of::<dspnet_session_info_t>();
            let _ = dspnet_session_info(session, &mut info);
            dspnet_session_free(session);
        }
    }
}
