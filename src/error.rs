//! One error type for the whole crate. Every public fallible function returns [`Result`];
//! the C ABI maps each variant to a status code, the CLI prints its message.

use std::path::PathBuf;

/// Everything that can go wrong in libdspnet, with a message that names the problem. Non-exhaustive:
/// later versions may add kinds, so a `match` needs a catch-all arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DspnetError {
    /// A tensor or buffer does not have the shape the operation needs.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An argument is out of range or inconsistent (not a shape problem).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// NaN or infinity where finite numbers are required.
    #[error("non-finite input: {0}")]
    NonFinite(String),
    /// There is no labelled support to segment from: for one class (when `class` is set), on one slice
    /// (when `slice` is set), or at all; `detail` says what is missing, as a clause ("the support label
    /// volume has no non-zero voxel").
    #[error("empty support{}{}: {detail}", class.map_or(String::new(), |c| format!(" for class {c}")), slice.map_or(String::new(), |z| format!(" on slice {z}")))]
    EmptySupport { class: Option<u16>, slice: Option<usize>, detail: String },
    /// A weight file is not what libdspnet expects: missing, unexpected or mis-shaped tensors,
    /// foreign or truncated format, unsupported checkpoint kind.
    #[error("model format: {0}")]
    ModelFormat(String),
    /// An image or label file (NIfTI, NRRD, DICOM) is malformed, inconsistent or of an unsupported
    /// kind; the message names the file and the problem.
    #[error("image file: {0}")]
    VolumeFormat(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The requested compute device is not available in this build or on this machine.
    #[error("backend unavailable: {0}")]
    BackendUnavailable(String),
    /// The caller's progress callback asked to stop.
    #[error("cancelled")]
    Cancelled,
    /// The work would need more memory than is sensible to allocate.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// An error from the tensor library that does not fall in a category above.
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = DspnetError> = std::result::Result<T, E>;

impl DspnetError {
    /// An [`DspnetError::EmptySupport`] for `class` (and `slice`, when known).
    pub fn empty_support(class: Option<u16>, slice: Option<usize>, detail: impl Into<String>) -> Self {
        DspnetError::EmptySupport { class, slice, detail: detail.into() }
    }

    /// Build an [`DspnetError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DspnetError::Io { path: path.into(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_support_composes_one_sentence_from_its_fields() {
        let msg = |class, slice| DspnetError::empty_support(class, slice, "the labelled region vanishes").to_string();
        assert_eq!(msg(None, None), "empty support: the labelled region vanishes");
        assert_eq!(msg(Some(3), None), "empty support for class 3: the labelled region vanishes");
        assert_eq!(msg(Some(3), Some(12)), "empty support for class 3 on slice 12: the labelled region vanishes");
    }

    #[test]
    fn overflowing_dims_are_a_shape_error_everywhere() {
        let dims = [usize::MAX, 2, 1];
        assert!(matches!(crate::volume::voxel_count(dims), Err(DspnetError::Shape(_))));
        let g = crate::io::Geometry::identity(dims);
        assert!(matches!(g.voxel_count(), Err(DspnetError::Shape(_))));
    }
}
