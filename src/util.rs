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
    // PID and a per-process sequence number: unique among the writers of this process (threads) and of
    // the other processes on this host; a rerun removes the leftovers of a killed one by the prefix.
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writers_of_one_path_use_distinct_temporaries() {
        let dir = std::env::temp_dir().join(format!("dspnet-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.nii");
        let seen = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in 0..4 {
                let (target, seen) = (&target, &seen);
                s.spawn(move || {
                    write_atomically(target, |tmp| {
                        seen.lock().unwrap().push(tmp.to_path_buf());
                        std::fs::write(tmp, format!("{t}")).map_err(|e| DspnetError::io(tmp, e))
                    })
                    .unwrap()
                });
            }
        });
        let mut names = seen.into_inner().unwrap();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 4, "two writers shared a temporary file");
        assert!(names.iter().all(|p| p.file_name().unwrap().to_string_lossy().starts_with(".out.nii.tmp-")));
        assert!(std::fs::read_to_string(&target).unwrap().len() == 1, "one whole write wins");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
