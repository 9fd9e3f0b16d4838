//! Status codes, the thread-local last-error message, and the panic boundary every export goes through.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::DspnetError;

/// Result of every fallible libdspnet function.
///
/// `DSPNET_OK` (0) is success; any other value is a failure whose details are in
/// `dspnet_last_error_message()`. Values are stable: new codes are only ever appended, so a consumer
/// must treat an unknown non-zero value as a generic failure. `dspnet_status_name()` gives each
/// code's name as a string.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum dspnet_status_t {
    /// Success.
    DSPNET_OK = 0,
    /// A required pointer argument was NULL.
    DSPNET_ERROR_NULL_ARGUMENT = 1,
    /// An argument is out of range or inconsistent: unknown dtype or option value, struct_size too
    /// small, unknown device name, misaligned buffer, bad spacing, slice range outside the volume,
    /// a model handle that is not live, labels that do not lie on few slices along one axis, ...
    DSPNET_ERROR_INVALID_ARGUMENT = 2,
    /// Volume dimensions are zero, overflow `size_t`, or do not match.
    DSPNET_ERROR_SHAPE = 3,
    /// The image holds NaN or infinite voxels.
    DSPNET_ERROR_NON_FINITE = 4,
    /// The support labels hold no labelled (non-zero) voxel, or a requested class is absent from
    /// every support slice, or the labelled region vanishes at the model's resolution.
    DSPNET_ERROR_NO_SUPPORT = 5,
    /// A file could not be read (missing weights, permission denied, default model not found).
    DSPNET_ERROR_IO = 6,
    /// A weight file is truncated, foreign (not safetensors) or not a DSPNet model.
    DSPNET_ERROR_MODEL_FORMAT = 7,
    /// An image file is malformed (not produced by the C API, which takes memory buffers; kept so
    /// that every library error has a code).
    DSPNET_ERROR_VOLUME_FORMAT = 8,
    /// The requested device is not available: CUDA requested from a CPU-only build, or no such GPU.
    DSPNET_ERROR_BACKEND_UNAVAILABLE = 9,
    /// The work needs more memory than could be allocated.
    DSPNET_ERROR_OUT_OF_MEMORY = 10,
    /// The progress callback returned non-zero; the output buffer was not touched.
    DSPNET_ERROR_CANCELLED = 11,
    /// The tensor backend (candle) failed in a way not covered above.
    DSPNET_ERROR_BACKEND = 12,
    /// A bug in libdspnet: a Rust panic was caught at the API boundary. The host process is
    /// unaffected; the message says where it happened. Please report it.
    DSPNET_ERROR_PANIC = 13,
    /// The session is already segmenting (on another thread, or this call came from its own progress
    /// callback): a session runs one segmentation at a time. Nothing was done; try again when that
    /// call has returned, or use one session per thread. Appended in 0.2.
    DSPNET_ERROR_BUSY = 14,
}

use dspnet_status_t::*;

impl dspnet_status_t {
    /// Every code, in value order (for the name table and tests).
    pub(crate) const ALL: [dspnet_status_t; 15] = [
        DSPNET_OK,
        DSPNET_ERROR_NULL_ARGUMENT,
        DSPNET_ERROR_INVALID_ARGUMENT,
        DSPNET_ERROR_SHAPE,
        DSPNET_ERROR_NON_FINITE,
        DSPNET_ERROR_NO_SUPPORT,
        DSPNET_ERROR_IO,
        DSPNET_ERROR_MODEL_FORMAT,
        DSPNET_ERROR_VOLUME_FORMAT,
        DSPNET_ERROR_BACKEND_UNAVAILABLE,
        DSPNET_ERROR_OUT_OF_MEMORY,
        DSPNET_ERROR_CANCELLED,
        DSPNET_ERROR_BACKEND,
        DSPNET_ERROR_PANIC,
        DSPNET_ERROR_BUSY,
    ];

    /// The code's name as a NUL-terminated static string.
    pub(crate) fn name(self) -> &'static std::ffi::CStr {
        match self {
            DSPNET_OK => c"DSPNET_OK",
            DSPNET_ERROR_NULL_ARGUMENT => c"DSPNET_ERROR_NULL_ARGUMENT",
            DSPNET_ERROR_INVALID_ARGUMENT => c"DSPNET_ERROR_INVALID_ARGUMENT",
            DSPNET_ERROR_SHAPE => c"DSPNET_ERROR_SHAPE",
            DSPNET_ERROR_NON_FINITE => c"DSPNET_ERROR_NON_FINITE",
            DSPNET_ERROR_NO_SUPPORT => c"DSPNET_ERROR_NO_SUPPORT",
            DSPNET_ERROR_IO => c"DSPNET_ERROR_IO",
            DSPNET_ERROR_MODEL_FORMAT => c"DSPNET_ERROR_MODEL_FORMAT",
            DSPNET_ERROR_VOLUME_FORMAT => c"DSPNET_ERROR_VOLUME_FORMAT",
            DSPNET_ERROR_BACKEND_UNAVAILABLE => c"DSPNET_ERROR_BACKEND_UNAVAILABLE",
            DSPNET_ERROR_OUT_OF_MEMORY => c"DSPNET_ERROR_OUT_OF_MEMORY",
            DSPNET_ERROR_CANCELLED => c"DSPNET_ERROR_CANCELLED",
            DSPNET_ERROR_BACKEND => c"DSPNET_ERROR_BACKEND",
            DSPNET_ERROR_PANIC => c"DSPNET_ERROR_PANIC",
            DSPNET_ERROR_BUSY => c"DSPNET_ERROR_BUSY",
        }
    }
}

/// The status for each library error. Exhaustive on purpose: a new `DspnetError` variant must be given
/// a code here before the crate compiles.
pub(crate) fn status_of(e: &DspnetError) -> dspnet_status_t {
    match e {
        DspnetError::Shape(_) => DSPNET_ERROR_SHAPE,
        DspnetError::InvalidArgument(_) => DSPNET_ERROR_INVALID_ARGUMENT,
        DspnetError::NonFinite(_) => DSPNET_ERROR_NON_FINITE,
        DspnetError::EmptySupport { .. } => DSPNET_ERROR_NO_SUPPORT,
        DspnetError::ModelFormat(_) => DSPNET_ERROR_MODEL_FORMAT,
        DspnetError::VolumeFormat(_) => DSPNET_ERROR_VOLUME_FORMAT,
        DspnetError::Io { .. } => DSPNET_ERROR_IO,
        DspnetError::BackendUnavailable(_) => DSPNET_ERROR_BACKEND_UNAVAILABLE,
        DspnetError::Cancelled => DSPNET_ERROR_CANCELLED,
        DspnetError::OutOfMemory(_) => DSPNET_ERROR_OUT_OF_MEMORY,
        DspnetError::Candle(_) => DSPNET_ERROR_BACKEND,
    }
}

/// A failure on its way to the C caller: a status and the message for `dspnet_last_error_message`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: dspnet_status_t,
    pub message: String,
}

impl Failure {
    pub fn new(status: dspnet_status_t, message: impl Into<String>) -> Self {
        Failure { status, message: message.into() }
    }
    pub fn null(arg: &str) -> Self {
        Failure::new(DSPNET_ERROR_NULL_ARGUMENT, format!("argument '{arg}' is NULL"))
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::new(DSPNET_ERROR_INVALID_ARGUMENT, message)
    }
}

impl From<DspnetError> for Failure {
    fn from(e: DspnetError) -> Self {
        Failure { status: status_of(&e), message: e.to_string() }
    }
}

thread_local! {
    /// The message of the last status-returning call on this thread (None = success / no call yet).
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Replace this thread's message (None clears it). Never panics, also during thread teardown.
pub(crate) fn set_last_error(message: Option<String>) {
    let c = message.map(|m| {
        // An interior NUL would truncate the message; spell it out instead.
        CString::new(m.replace('\0', "\\0")).unwrap_or_default()
    });
    let _ = LAST_ERROR.try_with(|cell| {
        if let Ok(mut slot) = cell.try_borrow_mut() {
            *slot = c;
        }
    });
}

/// Pointer to this thread's message, or to a static empty string.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR
        .try_with(|cell| match cell.try_borrow() {
            Ok(slot) => slot.as_ref().map_or(c"".as_ptr(), |m| m.as_ptr()),
            Err(_) => c"".as_ptr(),
        })
        .unwrap_or(c"".as_ptr())
}

/// Text of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Run the body of a status-returning export: catch panics, record the message (or clear it on
/// success) and return the status. Used through [`ffi_boundary!`] only.
pub(crate) fn boundary_status(function: &str, body: impl FnOnce() -> Result<(), Failure>) -> dspnet_status_t {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error(None);
            DSPNET_OK
        }
        Ok(Err(f)) => {
            set_last_error(Some(format!("{function}: {}", f.message)));
            f.status
        }
        Err(payload) => {
            set_last_error(Some(format!(
                "{function}: internal error (Rust panic caught at the API boundary): {}",
                panic_text(&*payload)
            )));
            DSPNET_ERROR_PANIC
        }
    }
}

/// Run the body of an export that returns a value and cannot report a status: a panic returns
/// `fallback` and records the message. The last-error message is otherwise left alone.
pub(crate) fn boundary_value<T>(function: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            set_last_error(Some(format!(
                "{function}: internal error (Rust panic caught at the API boundary): {}",
                panic_text(&*payload)
            )));
            fallback
        }
    }
}

/// The one boundary every `extern "C"` function of libdspnet wraps its whole body in.
///
/// - `ffi_boundary!("name", { ... Ok(()) })`: the body returns `Result<(), Failure>`; the export
///   returns a `dspnet_status_t` and sets the thread's last-error message ("" on success);
/// - `ffi_boundary!("name", default = value, { ... })`: the body returns a value; on panic the export
///   returns `value` and records the panic message.
///
/// A panic never crosses into C (which would abort the host process since Rust 1.81).
macro_rules! ffi_boundary {
    ($name:literal, default = $fallback:expr, $body:block) => {
        $crate::capi::error::boundary_value($name, $fallback, move || $body)
    };
    ($name:literal, $body:block) => {
        $crate::capi::error::boundary_status(
            $name,
            move || -> ::std::result::Result<(), $crate::capi::error::Failure> { $body },
        )
    };
}
pub(crate) use ffi_boundary;
