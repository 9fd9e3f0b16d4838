//! Small helpers shared by the IO paths.

use std::path::{Path, PathBuf};

use crate::{DspnetError, Result};

/// Write `path` through a temporary file in the same folder, renamed into place only when `write`
/// succeeded: a failed or interrupted run never leaves a partial file or clobbers an existing one.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| DspnetError::InvalidArgument(format!("output path '{}' has no file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp: PathBuf = dir.join(tmp_name);
    let result = write(&tmp).and_then(|()| {
        readable_like_a_new_file(&tmp);
        std::fs::rename(&tmp, path).map_err(|e| DspnetError::io(path, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writers that go through `tempfile` (safetensors does) create owner-only files (0600); give the output
/// the usual 0644 so a model or label file written for a team is readable by it.
fn readable_like_a_new_file(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o777 == 0o600 {
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
            }
        }
    }
}
