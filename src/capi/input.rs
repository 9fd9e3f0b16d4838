//! Turning what C hands over (raw pointers, raw integers, C strings) into checked Rust values.
//! Nothing here keeps a caller pointer beyond the call that passed it.

use std::borrow::Cow;
use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;

use super::error::Failure;
use super::*;
use crate::model::prototypes::options::SetError;
use crate::model::prototypes::HeadOptions;
use crate::volume::{AxisChoice, ComponentsMode, ExtentMode, FovMode, ModalityChoice, Propagation, SegmentOptions};
use crate::weights;
use crate::DspnetError;

/// A C string argument, or None for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid for `'a`.
pub(crate) unsafe fn c_str<'a>(p: *const c_char) -> Option<&'a CStr> {
    if p.is_null() {
        None
    } else {
        // SAFETY: per the function contract.
        Some(unsafe { CStr::from_ptr(p) })
    }
}

/// A required, non-empty path argument named `what` in errors.
///
/// # Safety
/// As [`c_str`].
pub(crate) unsafe fn path_arg(p: *const c_char, what: &str) -> Result<PathBuf, Failure> {
    // SAFETY: per the function contract.
    match unsafe { c_str(p) } {
        None => Err(Failure::null(what)),
        Some(s) if s.is_empty() => Err(Failure::invalid(format!("{what} is empty"))),
        Some(s) => path_from_c(s, what),
    }
}

/// A file path from C (`what` names it in errors): the bytes as they are on Unix, UTF-8 elsewhere.
pub(crate) fn path_from_c(p: &CStr, what: &str) -> Result<PathBuf, Failure> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let _ = what; // every byte string is a path on Unix
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(p.to_bytes())))
    }
    #[cfg(not(unix))]
    {
        p.to_str().map(PathBuf::from).map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
    }
}

/// The default model for a NULL/empty weights path (see `weights::default_model_candidates`).
pub(crate) fn default_weights() -> Result<PathBuf, Failure> {
    Ok(weights::default_model_path()?)
}

/// What `dspnet_segment_options_init` writes.
pub(crate) fn default_options() -> dspnet_segment_options_t {
    dspnet_segment_options_t {
        struct_size: std::mem::size_of::<dspnet_segment_options_t>(),
        slice_axis: -1,
        modality: DSPNET_MODALITY_AUTO,
        extent: DSPNET_EXTENT_AUTO,
        extent_first: 0,
        extent_last: 0,
        fov: DSPNET_FOV_SLICE,
        components: DSPNET_COMPONENTS_SUPPORT,
        classes: std::ptr::null(),
        num_classes: 0,
        progress: None,
        user_data: std::ptr::null_mut(),
        propagation: DSPNET_PROPAGATION_MEMORY,
        head: default_head_options(),
    }
}

fn default_head_options() -> dspnet_head_options_t {
    let d = HeadOptions::default();
    dspnet_head_options_t {
        max_num_sp: d.max_seeds as u32,
        avg_sp_area: d.area_per_seed as u32,
        fg_thresh: d.fg_threshold,
        bg_thresh: d.bg_threshold,
        val_wsize: d.local_pool as u32,
        alpha: d.alpha_fg,
        alpha_bg: d.alpha_bg,
        w1_w2_w3: d.mixing_weights,
        n_iter: d.cluster_iterations as u32,
    }
}

/// The caller's head fields, checked with the same ranges and messages as `--head KEY=VALUE`.
fn head_options(h: &dspnet_head_options_t) -> Result<HeadOptions, Failure> {
    let mut o = HeadOptions::default();
    let w = h.w1_w2_w3;
    let items = [
        ("max_num_sp", h.max_num_sp.to_string()),
        ("avg_sp_area", h.avg_sp_area.to_string()),
        ("fg_thresh", h.fg_thresh.to_string()),
        ("bg_thresh", h.bg_thresh.to_string()),
        ("val_wsize", h.val_wsize.to_string()),
        ("alpha", h.alpha.to_string()),
        ("alpha_bg", h.alpha_bg.to_string()),
        ("w1_w2_w3", format!("{}:{}:{}", w[0], w[1], w[2])),
        ("n_iter", h.n_iter.to_string()),
    ];
    for (key, value) in &items {
        // Rust prints an f32 so that it parses back to the same value: the text round trip is exact.
        o.try_set(key, value).map_err(|why| {
            let why = match why {
                SetError::Value(why) => why,
                SetError::UnknownKey => "unknown parameter".into(),
            };
            Failure::invalid(format!("options->head.{key} is {value}: {why}"))
        })?;
    }
    Ok(o)
}

/// Options checked and converted.
pub(crate) struct Options {
    pub segment: SegmentOptions,
    pub progress: dspnet_progress_fn,
    pub user_data: *mut c_void,
}

impl Options {
    /// The caller's progress callback as the engine's progress function (always "go on" without one).
    ///
    /// # Safety
    /// `progress`, when set, is a function that may be called with `user_data` for the whole run.
    pub(crate) unsafe fn progress_callback(&self) -> impl FnMut(usize, usize) -> bool + '_ {
        move |done, total| match self.progress {
            // SAFETY: the caller's function pointer and user_data, called as documented.
            Some(f) => (unsafe { f(self.user_data, done, total) }) == 0,
            None => true,
        }
    }
}

/// Read and validate the caller's options (NULL = defaults). Only the fields of this version are read.
///
/// # Safety
/// `p` is NULL or points to a struct of at least `p->struct_size` readable bytes; `classes`, when
/// non-NULL, points to `num_classes` values.
pub(crate) unsafe fn read_options(p: *const dspnet_segment_options_t) -> Result<Options, Failure> {
    let o = if p.is_null() {
        default_options()
    } else {
        check_aligned(p, "options")?;
        // SAFETY: non-null and aligned; struct_size is the first field of every version.
        let size = unsafe { std::ptr::addr_of!((*p).struct_size).read() };
        // Where each version ended: 0.1 with user_data, 0.2 with propagation, 0.4 with head.
        let v1 = std::mem::offset_of!(dspnet_segment_options_t, propagation);
        let v2 = std::mem::offset_of!(dspnet_segment_options_t, head);
        let v3 = std::mem::size_of::<dspnet_segment_options_t>();
        if size < v1 {
            return Err(Failure::invalid(format!(
                "options->struct_size is {size}, smaller than {v1} (sizeof(dspnet_segment_options_t) in ABI version 1); initialise the options with dspnet_segment_options_init()"
            )));
        }
        // Fields past the caller's struct_size keep their defaults; a size between two versions (an older
        // struct's tail padding) reads the older version's fields only, never part of a field.
        let mut o = default_options();
        let n = [v3, v2, v1].into_iter().find(|&end| end <= size).unwrap_or(v1);
        // SAFETY: the caller's struct has at least `n` readable bytes; every bit pattern is a valid value
        // of each field (integers, raw pointers, an optional function pointer), and `o` is a plain
        // repr(C) struct of at least `n` bytes.
        unsafe { std::ptr::copy_nonoverlapping(p as *const u8, std::ptr::addr_of_mut!(o) as *mut u8, n) };
        o
    };
    let axis = match o.slice_axis {
        -1 => AxisChoice::Auto,
        a @ 0..=2 => AxisChoice::Fixed(a as usize),
        a => {
            return Err(Failure::invalid(format!(
                "options->slice_axis is {a}; expected 0 (i), 1 (j), 2 (k) or -1 (auto)"
            )))
        }
    };
    let modality = match o.modality {
        DSPNET_MODALITY_AUTO => ModalityChoice::Auto,
        DSPNET_MODALITY_CT => ModalityChoice::Ct,
        DSPNET_MODALITY_MRI => ModalityChoice::Mri,
        m => return Err(Failure::invalid(format!("options->modality is {m}, not a DSPNET_MODALITY_* value"))),
    };
    let extent = match o.extent {
        DSPNET_EXTENT_AUTO => ExtentMode::Auto,
        DSPNET_EXTENT_ALL => ExtentMode::All,
        DSPNET_EXTENT_RANGE => ExtentMode::Range(o.extent_first, o.extent_last),
        e => return Err(Failure::invalid(format!("options->extent is {e}, not a DSPNET_EXTENT_* value"))),
    };
    let fov = match o.fov {
        DSPNET_FOV_SLICE => FovMode::Slice,
        DSPNET_FOV_AUTO => FovMode::Auto,
        f => return Err(Failure::invalid(format!("options->fov is {f}, not a DSPNET_FOV_* value"))),
    };
    let components = match o.components {
        DSPNET_COMPONENTS_SUPPORT => ComponentsMode::Support,
        DSPNET_COMPONENTS_ALL => ComponentsMode::All,
        c => return Err(Failure::invalid(format!("options->components is {c}, not a DSPNET_COMPONENTS_* value"))),
    };
    let propagation = match o.propagation {
        DSPNET_PROPAGATION_MEMORY => Propagation::Memory,
        DSPNET_PROPAGATION_INDEPENDENT => Propagation::Independent,
        v => return Err(Failure::invalid(format!("options->propagation is {v}, not a DSPNET_PROPAGATION_* value"))),
    };
    let head = head_options(&o.head)?;
    let classes = if o.classes.is_null() || o.num_classes == 0 {
        None
    } else {
        // SAFETY: non-null, num_classes values per the caller contract; alignment and size checked inside.
        Some(unsafe { u16_slice(o.classes, o.num_classes, "options->classes") }?.to_vec())
    };
    Ok(Options {
        segment: SegmentOptions {
            axis,
            modality,
            extent,
            fov,
            components,
            classes,
            propagation,
            head,
            ..SegmentOptions::default()
        },
        progress: o.progress,
        user_data: o.user_data,
    })
}

/// Voxel count of `dims`: each at least 1, product without overflow.
pub(crate) fn checked_voxel_count(dims: [usize; 3]) -> Result<usize, Failure> {
    if dims.contains(&0) {
        return Err(DspnetError::Shape(format!("volume dimensions {dims:?} contain a zero")).into());
    }
    Ok(crate::volume::voxel_count(dims)?)
}

pub(crate) fn check_aligned<T>(p: *const T, what: &str) -> Result<(), Failure> {
    if (p as usize) % std::mem::align_of::<T>() != 0 {
        return Err(Failure::invalid(format!("{what} ({p:p}) is not aligned to {} bytes", std::mem::align_of::<T>())));
    }
    Ok(())
}

/// `n` elements of `T` at `p` as a slice, after checking alignment and that the byte size fits `isize`.
///
/// # Safety
/// `p` is non-null and points to `n` initialised elements that stay valid and unmodified for `'a`.
unsafe fn slice_of<'a, T>(p: *const T, n: usize, what: &str) -> Result<&'a [T], Failure> {
    check_aligned(p, what)?;
    let bytes = n.checked_mul(std::mem::size_of::<T>()).filter(|&b| b <= isize::MAX as usize);
    if bytes.is_none() {
        return Err(DspnetError::Shape(format!(
            "{what}: {n} elements of {} bytes overflow the address space",
            std::mem::size_of::<T>()
        ))
        .into());
    }
    // SAFETY: non-null, aligned, size within isize::MAX; validity per the function contract.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// # Safety
/// As [`slice_of`], `p` may be NULL (reported as a null argument).
pub(crate) unsafe fn u16_slice<'a>(p: *const u16, n: usize, what: &str) -> Result<&'a [u16], Failure> {
    if p.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: per the function contract.
    unsafe { slice_of(p, n, what) }
}

/// Convert elements with `f` into a fresh vector, reporting allocation failure instead of aborting.
fn convert<T: Copy>(src: &[T], f: impl Fn(T) -> f32) -> Result<Vec<f32>, Failure> {
    let mut v = Vec::new();
    v.try_reserve_exact(src.len())
        .map_err(|_| Failure::from(DspnetError::OutOfMemory(format!("cannot allocate {} float voxels", src.len()))))?;
    v.extend(src.iter().map(|&x| f(x)));
    Ok(v)
}

/// The image's `n` voxels as f32: borrowed for `DSPNET_DTYPE_F32`, converted otherwise.
///
/// # Safety
/// `image.data` is NULL (reported) or points to `n` elements of the type `image.dtype` names, valid
/// for `'a`.
pub(crate) unsafe fn image_as_f32<'a>(image: &dspnet_volume_t, n: usize) -> Result<Cow<'a, [f32]>, Failure> {
    // Validate the dtype before looking at the pointer, so that a bad dtype is reported as such.
    if !(DSPNET_DTYPE_U8..=DSPNET_DTYPE_F64).contains(&image.dtype) {
        return Err(Failure::invalid(format!("image->dtype is {}, not a DSPNET_DTYPE_* value", image.dtype)));
    }
    if image.data.is_null() {
        return Err(Failure::null("image->data"));
    }
    let what = "image->data";
    // SAFETY (all arms): per the function contract; slice_of checks alignment and size.
    unsafe {
        Ok(match image.dtype {
            DSPNET_DTYPE_U8 => Cow::Owned(convert(slice_of(image.data as *const u8, n, what)?, f32::from)?),
            DSPNET_DTYPE_I8 => Cow::Owned(convert(slice_of(image.data as *const i8, n, what)?, f32::from)?),
            DSPNET_DTYPE_U16 => Cow::Owned(convert(slice_of(image.data as *const u16, n, what)?, f32::from)?),
            DSPNET_DTYPE_I16 => Cow::Owned(convert(slice_of(image.data as *const i16, n, what)?, f32::from)?),
            DSPNET_DTYPE_U32 => Cow::Owned(convert(slice_of(image.data as *const u32, n, what)?, |x| x as f32)?),
            DSPNET_DTYPE_I32 => Cow::Owned(convert(slice_of(image.data as *const i32, n, what)?, |x| x as f32)?),
            DSPNET_DTYPE_F32 => Cow::Borrowed(slice_of(image.data as *const f32, n, what)?),
            // Out-of-range doubles become ±inf and are rejected as non-finite by the segmentation.
            _ => Cow::Owned(convert(slice_of(image.data as *const f64, n, what)?, |x| x as f32)?),
        })
    }
}
