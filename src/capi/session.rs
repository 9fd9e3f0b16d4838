//! Interactive sessions in the C ABI: an image whose encoded slices are kept between segment calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};

use super::error::{ffi_boundary, Failure};
use super::{
    dspnet_model_t, dspnet_segment_options_t, dspnet_segment_summary_t, dspnet_status_t, dspnet_volume_t, input,
    live_model, LoadedModel, SegmentCall,
};
use crate::volume::{self, Session};

/// Feature memory of a session whose options say 0: 1 GiB (about a thousand slices of the default model).
pub const DSPNET_SESSION_DEFAULT_FEATURE_BUDGET: usize = 1073741824;
const _: () = assert!(DSPNET_SESSION_DEFAULT_FEATURE_BUDGET == volume::session::DEFAULT_FEATURE_BUDGET);

/// An interactive session (opaque): one image, and the encoded slices of it kept between segment calls,
/// so that a correction re-segments in seconds instead of re-encoding every slice.
///
/// Created by `dspnet_session_create()`, destroyed by `dspnet_session_free()`. The session holds its
/// model (the model stays usable by the session even after `dspnet_model_free()`) and its own copy of the
/// image (as float: 4 bytes per voxel), so the caller's image buffer may change or be freed right after
/// `dspnet_session_create()` returns. To segment a changed image, create a new session.
///
/// Threads: a session may be used from any thread, but runs one segmentation at a time. A segment call
/// made while another is running on the same session (from another thread, or from that call's own
/// progress callback) returns `DSPNET_ERROR_BUSY` at once and does nothing. Different sessions, and
/// sessions sharing one model, run in parallel. A session may be freed from any thread; a call still
/// running on it finishes first.
pub struct dspnet_session_t {
    /// Never read: the handle's address is the key of the live-session registry.
    _id: u64,
}

/// Options of `dspnet_session_create()`. Initialise with `dspnet_session_options_init()`; fields are only
/// ever appended (read up to the caller's `struct_size`).
#[repr(C)]
pub struct dspnet_session_options_t {
    /// `sizeof(dspnet_session_options_t)` as the caller was compiled; set by the init function.
    pub struct_size: usize,
    /// Bytes of slice features the session may keep (0 = `DSPNET_SESSION_DEFAULT_FEATURE_BUDGET`). Beyond
    /// it the least recently used slices are dropped and re-encoded when needed again. Must hold at least
    /// one slice (1 MiB for the default model). The image copy is not counted.
    pub feature_budget_bytes: usize,
}

/// What a session holds, from `dspnet_session_info()`. Set `struct_size` first; fields are only ever
/// appended, and the library fills those the caller's `struct_size` covers.
#[repr(C)]
pub struct dspnet_session_info_t {
    /// In: size of the caller's struct. Out: bytes filled.
    pub struct_size: usize,
    /// The image's voxel counts along i, j, k.
    pub dims: [usize; 3],
    /// The feature budget in effect, in bytes.
    pub feature_budget_bytes: usize,
    /// Slices whose features are held now (over every slice axis and intensity recipe used).
    pub cached_slices: usize,
    /// Bytes those features take.
    pub cached_bytes: usize,
    /// Bytes of the session's image copy.
    pub image_bytes: usize,
    /// Slices the backbone has encoded over the session's life.
    pub slices_encoded: usize,
    /// Slice features served from the session's memory instead of the backbone.
    pub slices_reused: usize,
    /// Bytes of recorded propagation chains (what made each slice's result; replayed when a later run
    /// walks the same slices from the same painted slice). Counted in the budget, at most a quarter of it.
    pub chain_bytes: usize,
    /// Propagation chains replayed instead of scored again, over the session's life.
    pub chains_replayed: usize,
}

/// Library side of a session handle.
struct LiveSession {
    model: Arc<LoadedModel>,
    state: Mutex<Session>,
}

fn sessions() -> MutexGuard<'static, HashMap<usize, Arc<LiveSession>>> {
    static SESSIONS: OnceLock<Mutex<HashMap<usize, Arc<LiveSession>>>> = OnceLock::new();
    SESSIONS.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn live_session(handle: *const dspnet_session_t) -> Result<Arc<LiveSession>, Failure> {
    if handle.is_null() {
        return Err(Failure::null("session"));
    }
    sessions().get(&(handle as usize)).cloned().ok_or_else(|| {
        Failure::invalid("the session handle is not a live session (already freed, or not from dspnet_session_create)")
    })
}

/// Fill `options` with the defaults and set `options->struct_size`. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn dspnet_session_options_init(options: *mut dspnet_session_options_t) {
    ffi_boundary!("dspnet_session_options_init", default = (), {
        if !options.is_null() {
            // SAFETY: the caller provides a writable struct of at least this version's size (any alignment).
            unsafe {
                options.write_unaligned(dspnet_session_options_t {
                    struct_size: std::mem::size_of::<dspnet_session_options_t>(),
                    feature_budget_bytes: 0,
                })
            };
        }
    })
}

/// Start a session on `image` (copied: see `dspnet_session_t`) with `model` (kept alive by the session).
///
/// - `options`: NULL for the defaults.
/// - `out_session`: receives the new handle (free it with `dspnet_session_free()`), or NULL on failure.
///
/// No slice is encoded here: slices are encoded by the segment calls that need them.
///
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (model not live, bad dtype, spacing or struct_size, misaligned
/// buffer, a feature budget smaller than one slice), SHAPE, NON_FINITE (NaN/inf voxels), OUT_OF_MEMORY.
#[no_mangle]
pub unsafe extern "C" fn dspnet_session_create(
    model: *const dspnet_model_t,
    image: *const dspnet_volume_t,
    options: *const dspnet_session_options_t,
    out_session: *mut *mut dspnet_session_t,
) -> dspnet_status_t {
    ffi_boundary!("dspnet_session_create", {
        if out_session.is_null() {
            return Err(Failure::null("out_session"));
        }
        // SAFETY: checked non-null; the caller provides a writable pointer-sized slot.
        unsafe { out_session.write(std::ptr::null_mut()) };
        let model = live_model(model)?;
        if image.is_null() {
            return Err(Failure::null("image"));
        }
        input::check_aligned(image, "image")?;
        let budget = if options.is_null() {
            0
        } else {
            input::check_aligned(options, "options")?;
            // SAFETY: non-null and aligned; struct_size is the first field of every version.
            let size = unsafe { std::ptr::addr_of!((*options).struct_size).read() };
            let v1 = std::mem::size_of::<dspnet_session_options_t>();
            if size < v1 {
                return Err(Failure::invalid(format!(
                    "options->struct_size is {size}, smaller than {v1} (sizeof(dspnet_session_options_t)); initialise the options with dspnet_session_options_init()"
                )));
            }
            // SAFETY: within the caller's struct.
            unsafe { std::ptr::addr_of!((*options).feature_budget_bytes).read() }
        };
        // SAFETY: non-null; every bit pattern is a valid dspnet_volume_t.
        let image = unsafe { image.read() };
        let n = input::checked_voxel_count(image.dims)?;
        // SAFETY: pointer checked inside, n elements per the caller contract.
        let voxels = unsafe { input::image_as_f32(&image, n) }?.into_owned();
        let session = Session::new(&model.model, voxels, image.dims, image.spacing, budget)?;
        let handle = Box::into_raw(Box::new(dspnet_session_t { _id: 0 }));
        sessions().insert(handle as usize, Arc::new(LiveSession { model, state: Mutex::new(session) }));
        // SAFETY: as above.
        unsafe { out_session.write(handle) };
        Ok(())
    })
}

/// Segment the session's image from `support_labels`: the same contract, and the same result voxel for
/// voxel, as `dspnet_segment()` with the session's model and image, reusing every slice the session has
/// already encoded (and keeping those it encodes now, within the budget).
///
/// `support_labels` and `out_labels` must have the session image's dims (they may be the same buffer).
/// Errors: those of `dspnet_segment()`, and BUSY when the session is already segmenting.
#[no_mangle]
pub unsafe extern "C" fn dspnet_session_segment(
    session: *mut dspnet_session_t,
    support_labels: *const u16,
    out_labels: *mut u16,
    options: *const dspnet_segment_options_t,
) -> dspnet_status_t {
    ffi_boundary!("dspnet_session_segment", {
        unsafe { session_segment_impl(session, support_labels, out_labels, options, std::ptr::null_mut()) }
    })
}

/// `dspnet_session_segment()` that also reports what the run did in `*summary` (which may be NULL); see
/// `dspnet_segment_summary_t`.
#[no_mangle]
pub unsafe extern "C" fn dspnet_session_segment_with_summary(
    session: *mut dspnet_session_t,
    support_labels: *const u16,
    out_labels: *mut u16,
    options: *const dspnet_segment_options_t,
    summary: *mut dspnet_segment_summary_t,
) -> dspnet_status_t {
    ffi_boundary!("dspnet_session_segment_with_summary", {
        unsafe { session_segment_impl(session, support_labels, out_labels, options, summary) }
    })
}

unsafe fn session_segment_impl(
    session: *mut dspnet_session_t,
    support_labels: *const u16,
    out_labels: *mut u16,
    options: *const dspnet_segment_options_t,
    summary: *mut dspnet_segment_summary_t,
) -> Result<(), Failure> {
    let live = live_session(session)?;
    let mut state = match live.state.try_lock() {
        Ok(s) => s,
        // A run that panicked left the cache consistent (entries are inserted whole).
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => {
            return Err(Failure::new(
                dspnet_status_t::DSPNET_ERROR_BUSY,
                "the session is already segmenting (on another thread, or this call came from its progress callback); a session runs one segmentation at a time",
            ))
        }
    };
    let n = crate::volume::voxel_count(state.dims())?;
    // SAFETY: caller contract; checked inside.
    let call = unsafe { SegmentCall::new(support_labels, out_labels, options, summary, n) }?;
    let model = &live.model.model;
    // SAFETY: as SegmentCall::new's contract.
    unsafe { call.run(|support, opts, progress| state.segment(model, support, opts, progress)) }
}

/// Report what the session holds into `*info` (set `info->struct_size` first).
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (not a live session, struct_size too small), BUSY (the session is
/// segmenting right now).
#[no_mangle]
pub unsafe extern "C" fn dspnet_session_info(
    session: *const dspnet_session_t,
    info: *mut dspnet_session_info_t,
) -> dspnet_status_t {
    ffi_boundary!("dspnet_session_info", {
        let live = live_session(session)?;
        if info.is_null() {
            return Err(Failure::null("info"));
        }
        input::check_aligned(info as *const dspnet_session_info_t, "info")?;
        // SAFETY: non-null and aligned; struct_size is its first field.
        let size = unsafe { std::ptr::addr_of!((*info).struct_size).read() };
        let full = std::mem::size_of::<dspnet_session_info_t>();
        if size < full {
            return Err(Failure::invalid(format!(
                "info->struct_size is {size}, smaller than sizeof(dspnet_session_info_t) = {full}"
            )));
        }
        let state = match live.state.try_lock() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(Failure::new(dspnet_status_t::DSPNET_ERROR_BUSY, "the session is segmenting right now"))
            }
        };
        let stats = state.stats();
        let filled = dspnet_session_info_t {
            struct_size: full,
            dims: state.dims(),
            feature_budget_bytes: state.budget(),
            cached_slices: stats.slices,
            cached_bytes: stats.bytes,
            image_bytes: state.image_bytes(),
            slices_encoded: stats.encoded,
            slices_reused: stats.reused,
            chain_bytes: stats.chain_bytes,
            chains_replayed: stats.chains_replayed,
        };
        // SAFETY: non-null, at least `full` writable bytes.
        unsafe { info.write(filled) };
        Ok(())
    })
}

/// Free a session and the features it holds; its model is released too unless the caller still holds it.
/// NULL and a handle that is not live (a second free) are no-ops. A call still running on the session
/// on another thread finishes first. Does not change the last-error message.
#[no_mangle]
pub unsafe extern "C" fn dspnet_session_free(session: *mut dspnet_session_t) {
    ffi_boundary!("dspnet_session_free", default = (), {
        if session.is_null() {
            return;
        }
        let entry = {
            let mut live = sessions();
            let entry = live.remove(&(session as usize));
            if live.is_empty() {
                *live = HashMap::new();
            }
            entry
        };
        if entry.is_some() {
            // SAFETY: the address was in the registry, so it came from Box::into_raw in
            // dspnet_session_create and has not been freed (removed from the registry here, once).
            drop(unsafe { Box::from_raw(session) });
        }
        drop(entry);
    })
}
