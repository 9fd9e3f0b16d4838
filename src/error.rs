//! One error type for the whole crate. Every public fallible function returns [`Result`];
//! the C ABI maps each variant to a status code, the CLI prints its message.

use std::path::PathBuf;

/// Everything that can go wrong in libdspnet, with a message that names the problem.
#[derive(Debug, thiserror::Error)]
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
    /// The support mask has no foreground pixel, so there is nothing to segment.
    #[error("support slice has no labelled pixel{0}")]
    EmptySupport(String),
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
    /// Build an [`DspnetError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DspnetError::Io { path: path.into(), source }
    }
}
