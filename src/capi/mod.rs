//! The stable C ABI of libdspnet (`include/dspnet.h`, generated from this module by cbindgen 0.29.4).
//!
//! Rules every export follows (see also the header's preamble in `cbindgen.toml`):
//! - the whole body runs inside [`ffi_boundary!`], so a Rust panic becomes `DSPNET_ERROR_PANIC`;
//! - every pointer is checked for NULL (and alignment) before use; sizes are multiplied with
//!   `checked_mul` before any slice is formed;
//! - enumerations coming *from* C (dtype, modality, ...) are plain `uint32_t` typedefs here and are
//!   validated by value; no arbitrary integer is ever turned into a Rust enum;
//! - no pointer the caller passed is kept once a call returns.
//!
//! Only items in `src/capi/` reach the header: cbindgen is run on this file, not on the crate.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

pub(crate) mod error;
mod input;
mod session;

pub use session::*;

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Arc, Mutex, OnceLock};

pub use error::dspnet_status_t;
use error::{ffi_boundary, Failure};

use crate::model::{device_from_name, Model};
use crate::volume;

/// Major version of the C ABI. Bumped only on a breaking change (a removed or changed function,
/// struct field or value); additions keep it. It is also the major number of the shared library's
/// SONAME (`libdspnet.so.1`). Compare with `dspnet_abi_version()` at run time.
pub const DSPNET_ABI_VERSION: u32 = 1;

/// Crate (release) version, major part; `dspnet_version()` returns the full string.
pub const DSPNET_VERSION_MAJOR: u32 = 0;
/// Crate (release) version, minor part.
pub const DSPNET_VERSION_MINOR: u32 = 4;
/// Crate (release) version, patch part.
pub const DSPNET_VERSION_PATCH: u32 = 0;
/// The release version as one comparable number: `(MAJOR << 16) | (MINOR << 8) | PATCH`.
pub const DSPNET_VERSION_NUMBER: u32 =
    (DSPNET_VERSION_MAJOR << 16) | (DSPNET_VERSION_MINOR << 8) | DSPNET_VERSION_PATCH;

/// Element type of a `dspnet_volume_t` buffer: one of the `DSPNET_DTYPE_*` values.
///
/// A plain `uint32_t` rather than a C enum so that its size is fixed and an unknown value from the
/// caller is reported as `DSPNET_ERROR_INVALID_ARGUMENT` instead of being undefined behaviour.
/// 0 is deliberately not a valid dtype (catches a zero-initialised struct).
pub type dspnet_dtype_t = u32;
/// `uint8_t` voxels.
pub const DSPNET_DTYPE_U8: dspnet_dtype_t = 1;
/// `int8_t` voxels.
pub const DSPNET_DTYPE_I8: dspnet_dtype_t = 2;
/// `uint16_t` voxels.
pub const DSPNET_DTYPE_U16: dspnet_dtype_t = 3;
/// `int16_t` voxels (e.g. CT in Hounsfield units).
pub const DSPNET_DTYPE_I16: dspnet_dtype_t = 4;
/// `uint32_t` voxels.
pub const DSPNET_DTYPE_U32: dspnet_dtype_t = 5;
/// `int32_t` voxels.
pub const DSPNET_DTYPE_I32: dspnet_dtype_t = 6;
/// `float` voxels (used without conversion).
pub const DSPNET_DTYPE_F32: dspnet_dtype_t = 7;
/// `double` voxels (converted to float; values outside float's range are rejected as non-finite).
pub const DSPNET_DTYPE_F64: dspnet_dtype_t = 8;

/// Intensity recipe: one of the `DSPNET_MODALITY_*` values (a `uint32_t`, validated by value).
pub type dspnet_modality_t = u32;
/// Guess from the intensities: CT if the 0.5th percentile is below -50 (HU), else MRI.
pub const DSPNET_MODALITY_AUTO: dspnet_modality_t = 0;
/// CT in Hounsfield units.
pub const DSPNET_MODALITY_CT: dspnet_modality_t = 1;
/// MRI (non-negative arbitrary units).
pub const DSPNET_MODALITY_MRI: dspnet_modality_t = 2;

/// Which slices are segmented: one of the `DSPNET_EXTENT_*` values (a `uint32_t`).
pub type dspnet_extent_mode_t = u32;
/// Propagate outward from the support slices and stop where the structure has vanished.
pub const DSPNET_EXTENT_AUTO: dspnet_extent_mode_t = 0;
/// Every slice along the slice axis.
pub const DSPNET_EXTENT_ALL: dspnet_extent_mode_t = 1;
/// Slices `extent_first ..= extent_last` (support slices are always kept).
pub const DSPNET_EXTENT_RANGE: dspnet_extent_mode_t = 2;

/// Field of view fed to the model: one of the `DSPNET_FOV_*` values (a `uint32_t`).
pub type dspnet_fov_t = u32;
/// The whole slice, fitted into the model input (the paper's setting).
pub const DSPNET_FOV_SLICE: dspnet_fov_t = 0;
/// A window around the structure, following it from slice to slice.
pub const DSPNET_FOV_AUTO: dspnet_fov_t = 1;

/// Post-processing of each class: one of the `DSPNET_COMPONENTS_*` values (a `uint32_t`).
pub type dspnet_components_t = u32;
/// Keep only the 3D connected parts that touch the class's support voxels.
pub const DSPNET_COMPONENTS_SUPPORT: dspnet_components_t = 0;
/// Keep everything predicted.
pub const DSPNET_COMPONENTS_ALL: dspnet_components_t = 1;

/// How query slices are scored: one of the `DSPNET_PROPAGATION_*` values (a `uint32_t`).
pub type dspnet_propagation_t = u32;
/// Follow the structure slice by slice outward from each painted slice, scoring each slice against the
/// painted slice and the latest accepted predictions; with `DSPNET_EXTENT_AUTO` a presence score ends
/// the structure where it stops, and slices past its end are never computed. Close to the painted slice
/// the painted mask itself is written (the structure changes less there than the model resolves), further
/// out the model's mask with its boundary refined on the intensities; the memory settings are the
/// library's measured defaults (`dspnet segment --help`, model card). The default.
pub const DSPNET_PROPAGATION_MEMORY: dspnet_propagation_t = 0;
/// Score every slice on its own against the nearest painted slice (the paper's protocol, and what
/// libdspnet 0.1 did).
pub const DSPNET_PROPAGATION_INDEPENDENT: dspnet_propagation_t = 1;

/// A loaded DSPNet model (opaque).
///
/// Created by `dspnet_model_load()`, destroyed by `dspnet_model_free()`. Immutable after loading:
/// one model may be used by any number of threads at once (`dspnet_segment()` takes it as `const`),
/// and it may be freed from any thread; a call still running on it keeps it alive until it returns.
pub struct dspnet_model_t {
    /// Never read: the handle's address is the key of the live-model registry.
    _id: u64,
}

/// Library side of a model handle.
struct LoadedModel {
    model: Model,
    device_name: CString,
}

// The C ABI promises that a model can be shared between threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
};

/// Live handles (address of the boxed `dspnet_model_t` -> model). Looking a handle up here instead
/// of dereferencing it makes a double free a no-op and a use after free a reported error (unless the
/// address was reused by a later load), and lets a model be freed while another thread still uses it.
fn registry() -> std::sync::MutexGuard<'static, HashMap<usize, Arc<LoadedModel>>> {
    static MODELS: OnceLock<Mutex<HashMap<usize, Arc<LoadedModel>>>> = OnceLock::new();
    MODELS.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn live_model(handle: *const dspnet_model_t) -> Result<Arc<LoadedModel>, Failure> {
    if handle.is_null() {
        return Err(Failure::null("model"));
    }
    registry().get(&(handle as usize)).cloned().ok_or_else(|| {
        Failure::invalid("the model handle is not a live model (already freed, or not from dspnet_model_load)")
    })
}

/// An image volume in caller memory (borrowed for the duration of one call, never kept).
///
/// Memory layout: voxel (i, j, k) is element `i + dims[0] * (j + dims[1] * k)` of `data`, i.e. i is
/// the fastest-varying index (C order `[k][j][i]`, the layout of ITK, VTK and NIfTI buffers; numpy's
/// `arrayFromVolume` in Slicer gives the same bytes as a `[k, j, i]` array). `data` must be aligned
/// for its dtype and hold `dims[0] * dims[1] * dims[2]` elements.
#[repr(C)]
pub struct dspnet_volume_t {
    /// First voxel; element type given by `dtype`.
    pub data: *const c_void,
    /// A `DSPNET_DTYPE_*` value.
    pub dtype: dspnet_dtype_t,
    /// Voxel counts along i, j, k; each at least 1, and their product (in bytes) must fit `size_t`.
    pub dims: [usize; 3],
    /// Voxel size along i, j, k in millimetres; finite and positive.
    pub spacing: [f64; 3],
}

/// Progress callback: called on the thread that called `dspnet_segment()`, once before any work with
/// `done == 0` and after each processed slice, with `done <= total` (`total` may shrink when the automatic
/// extent stops early). Return 0 to continue and any other value to cancel: the call then returns
/// `DSPNET_ERROR_CANCELLED` without touching the output buffer. `user_data` is the options' `user_data`,
/// passed back untouched. The callback must not unwind (C++ exceptions, longjmp) into libdspnet and
/// must not free the model it is running on.
pub type dspnet_progress_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, done: usize, total: usize) -> c_int>;

/// Options of `dspnet_segment()`. Always initialise with `dspnet_segment_options_init()` (which also
/// sets `struct_size`), then change fields: a zero-filled struct is *not* the default (slice_axis 0 is i).
///
/// ABI evolution: fields are only ever appended. The library reads the fields that the caller's
/// `struct_size` covers (fields beyond it keep their defaults) and rejects a `struct_size` smaller than
/// the first version's size (up to and including `user_data`).
#[repr(C)]
pub struct dspnet_segment_options_t {
    /// `sizeof(dspnet_segment_options_t)` as the caller was compiled; set by the init function.
    pub struct_size: usize,
    /// Slice axis: 0 = i, 1 = j, 2 = k, or -1 (default) to pick the only axis along which the support
    /// labels lie on few slices.
    pub slice_axis: c_int,
    /// Intensity recipe (default `DSPNET_MODALITY_AUTO`).
    pub modality: dspnet_modality_t,
    /// Which slices to segment (default `DSPNET_EXTENT_AUTO`).
    pub extent: dspnet_extent_mode_t,
    /// First slice index of `DSPNET_EXTENT_RANGE` (inclusive); ignored otherwise.
    pub extent_first: usize,
    /// Last slice index of `DSPNET_EXTENT_RANGE` (inclusive, below the slice count); ignored otherwise.
    pub extent_last: usize,
    /// Field of view (default `DSPNET_FOV_SLICE`).
    pub fov: dspnet_fov_t,
    /// Connected-component filter (default `DSPNET_COMPONENTS_SUPPORT`).
    pub components: dspnet_components_t,
    /// Label values to segment (`num_classes` of them); NULL or `num_classes == 0` = every non-zero
    /// value found in the support. Each must occur in the support. Read during the call only.
    pub classes: *const u16,
    /// Number of entries in `classes`.
    pub num_classes: usize,
    /// Optional progress/cancel callback (NULL = none); see `dspnet_progress_fn`.
    pub progress: dspnet_progress_fn,
    /// Passed to `progress` untouched; libdspnet never dereferences it.
    pub user_data: *mut c_void,
    /// How query slices are scored (default `DSPNET_PROPAGATION_MEMORY`). Appended in 0.2: a caller
    /// built against an older header gets the default.
    pub propagation: dspnet_propagation_t,
    /// The prototype head's parameters (default: the official code's). Appended in 0.4: a caller built
    /// against an older header gets the defaults.
    pub head: dspnet_head_options_t,
}

/// The prototype head's parameters, under the official DSPNet code's names (`dspnet --head KEY=VALUE`
/// takes the same names). `dspnet_segment_options_init()` sets the official defaults, shown in brackets;
/// a value outside its range makes the call fail with `DSPNET_ERROR_INVALID_ARGUMENT` naming the field.
/// The model card's study says which ones matter for which structure sizes.
#[repr(C)]
pub struct dspnet_head_options_t {
    /// At most this many FSPA cluster seeds, 0-64; 0 or 1 = no clustering [5].
    pub max_num_sp: u32,
    /// Support foreground feature cells (8x8 canvas pixels each) per seed, 1-1024 [100].
    pub avg_sp_area: u32,
    /// Pooled foreground above which a local fg prototype is kept; also the test (some 4x4 window at or
    /// above it) for using local fg prototypes at all; 0-1 [0.95].
    pub fg_thresh: f32,
    /// Pooled background above which a local bg prototype is kept, 0-1 [0.95].
    pub bg_thresh: f32,
    /// Side of the local-prototype pooling window in feature cells: 1, 2, 4, 8, 16 or 32 [2].
    pub val_wsize: u32,
    /// BCMA mixing strength of the fg-local prototypes (the official `self.a`), -10 to 10 [0.2].
    pub alpha: f32,
    /// BCMA mixing strength of the bg prototypes, -10 to 10 [0.2].
    pub alpha_bg: f32,
    /// BCMA channel-neighbour weights (w1, w2, w3), each -10 to 10 [0.3, 0.8, 0.3].
    pub w1_w2_w3: [f32; 3],
    /// SpCenterIter clustering iterations, 0-1000 [10].
    pub n_iter: u32,
}

/// At most this many slices are suggested in `dspnet_segment_summary_t.suggested_slices`.
pub const DSPNET_MAX_SUGGESTIONS: usize = 3;

/// What a `dspnet_segment_with_summary()` run did. Set `struct_size = sizeof(dspnet_segment_summary_t)`
/// (and, to receive per-slice confidences, `slice_confidence` and `slice_confidence_capacity`) before the
/// call; on success the library fills the fields it knows (fields are only ever appended) and sets
/// `struct_size` to the number of bytes it filled. Untouched on failure.
#[repr(C)]
pub struct dspnet_segment_summary_t {
    /// In: size of the caller's struct (at least this first version's size, 48 bytes). Out: bytes filled.
    pub struct_size: usize,
    /// The slice axis used (0 = i, 1 = j, 2 = k).
    pub slice_axis: c_int,
    /// The intensity recipe used: `DSPNET_MODALITY_CT` or `DSPNET_MODALITY_MRI` (never AUTO).
    pub modality: dspnet_modality_t,
    /// Number of classes (distinct label values) segmented.
    pub num_classes: usize,
    /// Query slices scored, over all classes (a slice scored for two classes counts twice).
    pub slices_processed: usize,
    /// Output voxels with a non-zero label.
    pub labelled_voxels: usize,
    /// Wall-clock seconds spent in the segmentation.
    pub seconds: f64,
    /// Out (appended in 0.2): slices along the slice axis, the number of entries `slice_confidence` needs.
    pub num_slices: usize,
    /// In: NULL, or a caller buffer of `slice_confidence_capacity` floats. Out (same pointer): entry z is
    /// the confidence in [0, 1] of slice z (the model's presence score: its mean foreground margin on the
    /// slice as a fraction of the painted slice's own, the lowest over the classes), or -1 for a slice
    /// that was not scored (painted, or outside the extent). Entries from `num_slices` on are not written;
    /// slices from `slice_confidence_capacity` on are not reported.
    pub slice_confidence: *mut f32,
    /// In: entries `slice_confidence` holds (ignored when it is NULL).
    pub slice_confidence_capacity: usize,
    /// Out: entries of `suggested_slices` set (0 when nothing was predicted).
    pub num_suggested: usize,
    /// Out: the slices to check or paint next, least confident first: scored slices inside the predicted
    /// extent, apart from the painted slices and from each other.
    pub suggested_slices: [usize; DSPNET_MAX_SUGGESTIONS],
}

/// The ABI major version the library was built with; equals `DSPNET_ABI_VERSION` of a matching header.
/// A consumer should check `dspnet_abi_version() == DSPNET_ABI_VERSION` once at start-up.
#[no_mangle]
pub extern "C" fn dspnet_abi_version() -> u32 {
    ffi_boundary!("dspnet_abi_version", default = DSPNET_ABI_VERSION, { DSPNET_ABI_VERSION })
}

/// The library's release version, e.g. "0.2.0": a static NUL-terminated string (never NULL, never freed).
#[no_mangle]
pub extern "C" fn dspnet_version() -> *const c_char {
    static VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => c"",
    };
    ffi_boundary!("dspnet_version", default = c"".as_ptr(), { VERSION.as_ptr() })
}

/// The message of the last failed call on this thread, e.g. "dspnet_model_load: model format: ...".
///
/// Every function returning a `dspnet_status_t` sets it: to the failure's description, or to "" when
/// it returns `DSPNET_OK`. Never NULL; UTF-8 except for bytes of file names; owned by the library and
/// valid until the next libdspnet call on this thread. Thread-local: other threads' calls do not change it.
#[no_mangle]
pub extern "C" fn dspnet_last_error_message() -> *const c_char {
    ffi_boundary!("dspnet_last_error_message", default = c"".as_ptr(), { error::last_error_ptr() })
}

/// The name of a status code ("DSPNET_OK", "DSPNET_ERROR_IO", ...), or "DSPNET_ERROR_UNKNOWN" for a
/// value this library does not know. Takes a plain int so that any value is safe. Static, never NULL.
#[no_mangle]
pub extern "C" fn dspnet_status_name(status: c_int) -> *const c_char {
    ffi_boundary!("dspnet_status_name", default = c"DSPNET_ERROR_UNKNOWN".as_ptr(), {
        dspnet_status_t::ALL
            .iter()
            .find(|s| **s as c_int == status)
            .map_or(c"DSPNET_ERROR_UNKNOWN".as_ptr(), |s| s.name().as_ptr())
    })
}

/// Load a model from a `.safetensors` weight file.
///
/// - `weights_path`: file path (bytes as the OS takes them). NULL or "" = the default model, looked up
///   in this order: `$DSPNET_WEIGHTS` (a file, or a folder holding `dspnet-default.safetensors`);
///   next to the library (`<libdir>/../share/dspnet/weights/`, `<libdir>/weights/`); next to the
///   executable (same two places); the source tree's `weights/` folder.
/// - `device`: "cpu", "cuda", "cuda:N", or NULL / "" / "auto" for the best available (CUDA device 0
///   in a CUDA build when present, else the CPU). CUDA in a CPU-only build gives
///   `DSPNET_ERROR_BACKEND_UNAVAILABLE`.
/// - `out_model`: receives the new handle (owned by the caller; free it with `dspnet_model_free()`),
///   or NULL on failure.
///
/// Errors: NULL_ARGUMENT (`out_model`), IO (missing or unreadable file), MODEL_FORMAT (truncated,
/// foreign or incomplete weights), INVALID_ARGUMENT (unknown device name), BACKEND_UNAVAILABLE.
#[no_mangle]
pub unsafe extern "C" fn dspnet_model_load(
    weights_path: *const c_char,
    device: *const c_char,
    out_model: *mut *mut dspnet_model_t,
) -> dspnet_status_t {
    ffi_boundary!("dspnet_model_load", {
        if out_model.is_null() {
            return Err(Failure::null("out_model"));
        }
        // SAFETY: checked non-null; the caller provides a writable pointer-sized slot.
        unsafe { out_model.write(std::ptr::null_mut()) };
        let path = match unsafe { input::c_str(weights_path) } {
            Some(p) if !p.to_bytes().is_empty() => input::path_from_c(p, "the weights path")?,
            _ => input::default_weights()?,
        };
        let device_name = match unsafe { input::c_str(device) } {
            None => None,
            Some(d) => Some(d.to_str().map_err(|_| Failure::invalid("the device name is not UTF-8"))?),
        };
        let dev = device_from_name(device_name)?;
        let model = Model::load(&path, &dev)?;
        let device_name = CString::new(match model.device().location() {
            candle_core::DeviceLocation::Cpu => "cpu".to_string(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        })
        .unwrap_or_default();
        let handle = Box::into_raw(Box::new(dspnet_model_t { _id: 0 }));
        registry().insert(handle as usize, Arc::new(LoadedModel { model, device_name }));
        // SAFETY: as above.
        unsafe { out_model.write(handle) };
        Ok(())
    })
}

/// Free a model. NULL is a no-op; so is a handle that is not live (a second free of the same handle).
/// Calls already running on the model on other threads finish normally; the memory is released when
/// the last one returns. Does not change the last-error message.
#[no_mangle]
pub unsafe extern "C" fn dspnet_model_free(model: *mut dspnet_model_t) {
    ffi_boundary!("dspnet_model_free", default = (), {
        if model.is_null() {
            return;
        }
        let entry = {
            let mut live = registry();
            let entry = live.remove(&(model as usize));
            if live.is_empty() {
                // Release the table too, so a program that freed every model ends with nothing of ours.
                *live = HashMap::new();
            }
            entry
        };
        if entry.is_some() {
            // SAFETY: the address was in the registry, so it came from Box::into_raw in
            // dspnet_model_load and has not been freed (it is removed from the registry here, once).
            drop(unsafe { Box::from_raw(model) });
        }
        drop(entry);
    })
}

/// The device a model runs on: "cpu" or "cuda:N". Owned by the model: valid until it is freed.
/// Returns "" for NULL or a handle that is not live. Does not change the last-error message.
#[no_mangle]
pub unsafe extern "C" fn dspnet_model_device(model: *const dspnet_model_t) -> *const c_char {
    ffi_boundary!("dspnet_model_device", default = c"".as_ptr(), {
        match live_model(model) {
            // The CString lives in the LoadedModel, which the registry keeps until dspnet_model_free.
            Ok(m) => m.device_name.as_ptr(),
            Err(_) => c"".as_ptr(),
        }
    })
}

/// Fill `options` with the defaults and set `options->struct_size` to this version's size.
/// NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn dspnet_segment_options_init(options: *mut dspnet_segment_options_t) {
    ffi_boundary!("dspnet_segment_options_init", default = (), {
        if !options.is_null() {
            // SAFETY: the caller provides a writable struct of at least this version's size; written
            // unaligned so that a misaligned struct (a packed or hand-placed one) is still filled safely.
            unsafe { options.write_unaligned(input::default_options()) };
        }
    })
}

/// Segment a volume from its labelled slices; same semantics as `dspnet segment` on the command line.
///
/// - `model`: a live model (shared: any number of threads may segment with it at once).
/// - `image`: the image; see `dspnet_volume_t` for the layout.
/// - `support_labels`: `uint16_t` labels with the image's dims and layout. The slices (along the slice
///   axis) that hold any non-zero label are support slices, where 0 means background; each distinct
///   non-zero value is a class.
/// - `out_labels`: caller-allocated `uint16_t` buffer with the image's dims; receives the label volume
///   (support slices copied unchanged). Written only on success, all at once at the end; it may be the
///   same buffer as `support_labels`.
/// - `options`: NULL for the defaults.
///
/// Errors: NULL_ARGUMENT, SHAPE (zero or overflowing dims), INVALID_ARGUMENT (bad dtype, option, spacing,
/// struct_size, misaligned buffer, model handle, ambiguous slice axis), NON_FINITE (NaN/inf voxels),
/// NO_SUPPORT, CANCELLED, OUT_OF_MEMORY, BACKEND. On any error `out_labels` is untouched.
#[no_mangle]
pub unsafe extern "C" fn dspnet_segment(
    model: *const dspnet_model_t,
    image: *const dspnet_volume_t,
    support_labels: *const u16,
    out_labels: *mut u16,
    options: *const dspnet_segment_options_t,
) -> dspnet_status_t {
    ffi_boundary!("dspnet_segment", {
        unsafe { segment_impl(model, image, support_labels, out_labels, options, std::ptr::null_mut()) }
    })
}

/// `dspnet_segment()` that also reports what the run did in `*summary` (which may be NULL).
/// Set `summary->struct_size` first; see `dspnet_segment_summary_t`.
#[no_mangle]
pub unsafe extern "C" fn dspnet_segment_with_summary(
    model: *const dspnet_model_t,
    image: *const dspnet_volume_t,
    support_labels: *const u16,
    out_labels: *mut u16,
    options: *const dspnet_segment_options_t,
    summary: *mut dspnet_segment_summary_t,
) -> dspnet_status_t {
    ffi_boundary!("dspnet_segment_with_summary", {
        unsafe { segment_impl(model, image, support_labels, out_labels, options, summary) }
    })
}

/// Segment one study from files to a file: read `image_path` (NIfTI, NRRD or a DICOM folder) and
/// `support_path` (labels on the image's grid), segment as `dspnet_segment()` does with `options`, and
/// write the labels to `output_path` (`.nii`, `.nii.gz`, `.nrrd` or `.seg.nrrd`, with the image's
/// geometry), creating its folder. This is exactly what `dspnet segment` and `dspnet batch` do for a study.
///
/// The output is written to a temporary file in the same folder and renamed into place: a failed,
/// cancelled or killed run never leaves a partial output or clobbers an existing one (a temporary left
/// by a killed process is removed by the next run for that output). `summary` may be NULL.
///
/// Errors: NULL_ARGUMENT, IO (a file that cannot be read or written), VOLUME_FORMAT (a malformed file),
/// INVALID_ARGUMENT (support not on the image's grid, bad option, output extension), OUT_OF_MEMORY
/// (above `DSPNET_MEMORY_LIMIT_MB`), and those of `dspnet_segment()`.
#[no_mangle]
pub unsafe extern "C" fn dspnet_segment_files(
    model: *const dspnet_model_t,
    image_path: *const c_char,
    support_path: *const c_char,
    output_path: *const c_char,
    options: *const dspnet_segment_options_t,
    summary: *mut dspnet_segment_summary_t,
) -> dspnet_status_t {
    ffi_boundary!("dspnet_segment_files", {
        let model = live_model(model)?;
        // SAFETY: NULL or NUL-terminated strings, per the contract.
        let image = unsafe { input::path_arg(image_path, "image_path") }?;
        let support = unsafe { input::path_arg(support_path, "support_path") }?;
        let output = unsafe { input::path_arg(output_path, "output_path") }?;
        // SAFETY: per the function contract.
        let opts = unsafe { input::read_options(options) }?;
        let summary = unsafe { SummaryOut::read(summary) }?;
        // SAFETY: the caller's callback, per the options' contract.
        let mut callback = unsafe { opts.progress_callback() };
        let (labels, run) =
            volume::segment_files(&model.model, &image, &support, &output, &opts.segment, &mut callback)?;
        if let Some(out) = summary {
            // SAFETY: per SummaryOut::read's contract.
            unsafe { write_summary(&out, &run, &labels.data) };
        }
        Ok(())
    })
}

/// The body shared by both segment entry points.
unsafe fn segment_impl(
    model: *const dspnet_model_t,
    image: *const dspnet_volume_t,
    support_labels: *const u16,
    out_labels: *mut u16,
    options: *const dspnet_segment_options_t,
    summary: *mut dspnet_segment_summary_t,
) -> Result<(), Failure> {
    let model = live_model(model)?;
    if image.is_null() {
        return Err(Failure::null("image"));
    }
    input::check_aligned(image, "image")?;
    // SAFETY: non-null, aligned; every bit pattern is a valid dspnet_volume_t (integers, floats, pointers).
    let image = unsafe { image.read() };
    let n = input::checked_voxel_count(image.dims)?;
    // SAFETY: caller contract for every pointer; checked inside.
    let call = unsafe { SegmentCall::new(support_labels, out_labels, options, summary, n) }?;
    // SAFETY: pointer non-null (checked inside), n elements per the caller contract; alignment checked.
    let voxels = unsafe { input::image_as_f32(&image, n) }?;
    let volume_ref = volume::VolumeRef { data: &voxels, dims: image.dims, spacing: image.spacing };
    // SAFETY: as SegmentCall::new's contract.
    unsafe { call.run(|support, opts, progress| volume::segment(&model.model, volume_ref, support, opts, progress)) }
}

/// One segment call's caller buffers and options, checked before any work: support labels in, labels
/// out, the options and the optional summary.
pub(crate) struct SegmentCall {
    support: *const u16,
    out_labels: *mut u16,
    n: usize,
    opts: input::Options,
    summary: Option<SummaryOut>,
}

/// The caller's summary struct: its size, and the confidence buffer it offers.
struct SummaryOut {
    ptr: *mut dspnet_segment_summary_t,
    size: usize,
    confidence: *mut f32,
    capacity: usize,
}

impl SummaryOut {
    /// The caller's summary struct, checked: NULL (none wanted) or at least the first version's size.
    ///
    /// # Safety
    /// `summary` is NULL or a writable struct of its `struct_size` whose confidence buffer, when given,
    /// holds `slice_confidence_capacity` floats.
    unsafe fn read(summary: *mut dspnet_segment_summary_t) -> Result<Option<SummaryOut>, Failure> {
        if summary.is_null() {
            return Ok(None);
        }
        input::check_aligned(summary as *const dspnet_segment_summary_t, "summary")?;
        // SAFETY: non-null and aligned; struct_size is its first field.
        let size = unsafe { std::ptr::addr_of!((*summary).struct_size).read() };
        let v1 = std::mem::offset_of!(dspnet_segment_summary_t, num_slices);
        if size < v1 {
            return Err(Failure::invalid(format!(
                "summary->struct_size is {size}, smaller than {v1} (sizeof(dspnet_segment_summary_t) in ABI version 1); set it to sizeof(dspnet_segment_summary_t)"
            )));
        }
        let (mut confidence, mut capacity) = (std::ptr::null_mut(), 0);
        if size >= std::mem::offset_of!(dspnet_segment_summary_t, num_suggested) {
            // SAFETY: inside the caller's struct_size.
            confidence = unsafe { std::ptr::addr_of!((*summary).slice_confidence).read() };
            capacity = unsafe { std::ptr::addr_of!((*summary).slice_confidence_capacity).read() };
            if !confidence.is_null() {
                input::check_aligned(confidence as *const f32, "summary->slice_confidence")?;
            } else {
                capacity = 0;
            }
        }
        Ok(Some(SummaryOut { ptr: summary, size, confidence, capacity }))
    }
}

impl SegmentCall {
    /// # Safety
    /// `support` and `out_labels` are NULL (reported) or hold `n` elements; `options` is NULL or a
    /// readable struct of its `struct_size`; `summary` is NULL or a writable struct of its `struct_size`
    /// whose confidence buffer, when given, holds `slice_confidence_capacity` floats.
    pub(crate) unsafe fn new(
        support: *const u16,
        out_labels: *mut u16,
        options: *const dspnet_segment_options_t,
        summary: *mut dspnet_segment_summary_t,
        n: usize,
    ) -> Result<Self, Failure> {
        if support.is_null() {
            return Err(Failure::null("support_labels"));
        }
        if out_labels.is_null() {
            return Err(Failure::null("out_labels"));
        }
        input::check_aligned(support, "support_labels")?;
        input::check_aligned(out_labels, "out_labels")?;
        // SAFETY: per the function contract.
        let opts = unsafe { input::read_options(options) }?;
        // SAFETY: per the function contract.
        let summary = unsafe { SummaryOut::read(summary) }?;
        Ok(SegmentCall { support, out_labels, n, opts, summary })
    }

    /// Run `segment` on the caller's support with the caller's options and progress callback, then write
    /// the labels (all at once) and the summary. Nothing is written on failure.
    ///
    /// # Safety
    /// As [`new`](Self::new); the buffers are still valid.
    pub(crate) unsafe fn run(
        self,
        segment: impl FnOnce(
            &[u16],
            &volume::SegmentOptions,
            volume::Progress<'_>,
        ) -> crate::Result<(Vec<u16>, volume::SegmentSummary)>,
    ) -> Result<(), Failure> {
        let opts = &self.opts;
        // SAFETY: non-null and aligned (checked in new), n elements per the caller contract.
        let support = unsafe { input::u16_slice(self.support, self.n, "support_labels") }?;
        // SAFETY: the caller's callback, per the options' contract.
        let mut callback = unsafe { opts.progress_callback() };
        let (labels, run) = segment(support, &opts.segment, &mut callback)?;
        if labels.len() != self.n {
            return Err(Failure::new(
                dspnet_status_t::DSPNET_ERROR_PANIC,
                format!("internal error: {} labels for {} voxels", labels.len(), self.n),
            ));
        }
        // SAFETY: out_labels is non-null, aligned and holds n elements (caller contract). `labels` is our
        // own allocation, so the ranges never overlap; the borrowed support (which out_labels may alias)
        // is not used after this point.
        unsafe { std::ptr::copy_nonoverlapping(labels.as_ptr(), self.out_labels, self.n) };
        if let Some(out) = self.summary {
            // SAFETY: per the contract of new.
            unsafe { write_summary(&out, &run, &labels) };
        }
        Ok(())
    }
}

/// Fill the caller's summary (the bytes its struct_size covers) and confidence buffer.
///
/// # Safety
/// `out.ptr` is a writable struct of `out.size` bytes; `out.confidence` is NULL or holds `out.capacity`
/// aligned floats.
unsafe fn write_summary(out: &SummaryOut, run: &volume::SegmentSummary, labels: &[u16]) {
    let mut suggested = [0usize; DSPNET_MAX_SUGGESTIONS];
    for (s, z) in suggested.iter_mut().zip(&run.suggested_slices) {
        *s = *z;
    }
    let filled_size = out.size.min(std::mem::size_of::<dspnet_segment_summary_t>());
    let filled = dspnet_segment_summary_t {
        struct_size: filled_size,
        slice_axis: run.axis as c_int,
        modality: match run.modality {
            volume::normalize::Modality::Ct => DSPNET_MODALITY_CT,
            volume::normalize::Modality::Mri => DSPNET_MODALITY_MRI,
        },
        num_classes: run.classes.len(),
        slices_processed: run.slices_processed,
        labelled_voxels: labels.iter().filter(|&&l| l != 0).count(),
        seconds: run.seconds,
        num_slices: run.slice_confidence.len(),
        slice_confidence: out.confidence,
        slice_confidence_capacity: out.capacity,
        num_suggested: run.suggested_slices.len().min(DSPNET_MAX_SUGGESTIONS),
        suggested_slices: suggested,
    };
    if !out.confidence.is_null() {
        for (z, c) in run.slice_confidence.iter().take(out.capacity).enumerate() {
            // SAFETY: z < capacity, the buffer's length per the contract.
            unsafe { out.confidence.add(z).write(c.unwrap_or(-1.0)) };
        }
    }
    // SAFETY: the caller's struct has `out.size >= filled_size` writable bytes; fields after them are
    // left alone.
    unsafe { std::ptr::copy_nonoverlapping(std::ptr::addr_of!(filled) as *const u8, out.ptr as *mut u8, filled_size) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    fn message() -> String {
        unsafe { CStr::from_ptr(dspnet_last_error_message()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn version_macros_match_the_crate() {
        assert_eq!(DSPNET_VERSION_MAJOR.to_string(), env!("CARGO_PKG_VERSION_MAJOR"));
        assert_eq!(DSPNET_VERSION_MINOR.to_string(), env!("CARGO_PKG_VERSION_MINOR"));
        assert_eq!(DSPNET_VERSION_PATCH.to_string(), env!("CARGO_PKG_VERSION_PATCH"));
        assert_eq!(unsafe { CStr::from_ptr(dspnet_version()) }.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
        assert_eq!(dspnet_abi_version(), DSPNET_ABI_VERSION);
    }

    /// The first version's layouts are frozen: a change here is an ABI break. Fields appended later
    /// start where the first version ended.
    #[test]
    fn abi_layout_is_frozen() {
        assert_eq!(size_of::<dspnet_status_t>(), 4);
        assert_eq!((size_of::<dspnet_volume_t>(), align_of::<dspnet_volume_t>()), (64, 8));
        assert_eq!(offset_of!(dspnet_volume_t, dims), 16);
        // Version 1 was 80 bytes, ending with user_data; 0.2 appended propagation (88 bytes with the
        // padding), 0.4 the head parameters (44 bytes from offset 84).
        assert_eq!(offset_of!(dspnet_segment_options_t, user_data), 72);
        assert_eq!(offset_of!(dspnet_segment_options_t, propagation), 80);
        assert_eq!(offset_of!(dspnet_segment_options_t, head), 84);
        assert_eq!((size_of::<dspnet_head_options_t>(), align_of::<dspnet_head_options_t>()), (44, 4));
        assert_eq!(offset_of!(dspnet_head_options_t, w1_w2_w3), 28);
        assert_eq!(size_of::<dspnet_segment_options_t>(), 128);
        assert_eq!(offset_of!(dspnet_segment_options_t, extent_first), 24);
        assert_eq!(offset_of!(dspnet_segment_options_t, progress), 64);
        // Version 1 of the summary was 48 bytes, ending with seconds; 0.2 appended confidences and suggestions.
        assert_eq!(offset_of!(dspnet_segment_summary_t, num_slices), 48);
        assert_eq!(offset_of!(dspnet_segment_summary_t, suggested_slices), 80);
        assert_eq!(size_of::<dspnet_segment_summary_t>(), 104);
    }

    #[test]
    fn every_status_has_a_distinct_name() {
        for (i, s) in dspnet_status_t::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
            let name = unsafe { CStr::from_ptr(dspnet_status_name(i as c_int)) };
            assert_eq!(name, s.name());
        }
        assert_eq!(unsafe { CStr::from_ptr(dspnet_status_name(-5)) }, c"DSPNET_ERROR_UNKNOWN");
    }

    #[test]
    fn panics_become_a_status_and_a_message() {
        let status = ffi_boundary!("test_fn", {
            if message().is_empty() {
                panic!("boom {}", 42);
            }
            Ok(())
        });
        assert_eq!(status, dspnet_status_t::DSPNET_ERROR_PANIC);
        assert!(message().contains("test_fn") && message().contains("boom 42"), "{}", message());
        let v: i32 = ffi_boundary!("test_value", default = -1, { panic!("no") });
        assert_eq!(v, -1);
        // A successful status call clears the message.
        assert_eq!(ffi_boundary!("test_ok", { Ok(()) }), dspnet_status_t::DSPNET_OK);
        assert_eq!(message(), "");
    }

    #[test]
    fn null_and_invalid_arguments_without_a_model() {
        unsafe {
            assert_eq!(
                dspnet_model_load(std::ptr::null(), std::ptr::null(), std::ptr::null_mut()),
                dspnet_status_t::DSPNET_ERROR_NULL_ARGUMENT
            );
            assert!(message().contains("out_model"), "{}", message());
            let mut m: *mut dspnet_model_t = std::ptr::dangling_mut();
            let st = dspnet_model_load(c"/nonexistent/w.safetensors".as_ptr(), c"cpu".as_ptr(), &mut m);
            assert_eq!(st, dspnet_status_t::DSPNET_ERROR_IO, "{}", message());
            assert!(m.is_null());
            let st = dspnet_model_load(c"/nonexistent/w.safetensors".as_ptr(), c"tpu".as_ptr(), &mut m);
            assert_eq!(st, dspnet_status_t::DSPNET_ERROR_INVALID_ARGUMENT, "{}", message());
            if !cfg!(feature = "cuda") {
                let st = dspnet_model_load(c"/nonexistent/w.safetensors".as_ptr(), c"cuda:1".as_ptr(), &mut m);
                assert_eq!(st, dspnet_status_t::DSPNET_ERROR_BACKEND_UNAVAILABLE, "{}", message());
            }
            dspnet_model_free(std::ptr::null_mut());
            // A pointer that never came from dspnet_model_load is not dereferenced.
            let mut fake = dspnet_model_t { _id: 7 };
            dspnet_model_free(&mut fake);
            assert_eq!(CStr::from_ptr(dspnet_model_device(&fake)), c"");
            let st = dspnet_segment(&fake, std::ptr::null(), std::ptr::null(), std::ptr::null_mut(), std::ptr::null());
            assert_eq!(st, dspnet_status_t::DSPNET_ERROR_INVALID_ARGUMENT);
            let mut o = std::mem::MaybeUninit::<dspnet_segment_options_t>::uninit();
            dspnet_segment_options_init(o.as_mut_ptr());
            let o = o.assume_init();
            assert_eq!(
                (o.struct_size, o.slice_axis, o.extent, o.propagation),
                (128, -1, DSPNET_EXTENT_AUTO, DSPNET_PROPAGATION_MEMORY)
            );
            assert_eq!(
                (o.head.max_num_sp, o.head.avg_sp_area, o.head.val_wsize, o.head.n_iter, o.head.w1_w2_w3),
                (5, 100, 2, 10, [0.3, 0.8, 0.3])
            );
        }
    }
}
