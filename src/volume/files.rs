//! One study from files to file: read the image and its painted labels, segment, write the labels.
//!
//! The unit of work of `dspnet segment`, `dspnet batch`, the C ABI's `dspnet_segment_files` and the
//! Python package's Dask runner, so that all of them give the same result for the same study.

use std::path::Path;

use super::{segment, Progress, SegmentOptions, SegmentSummary, VolumeRef};
use crate::io::{check_label_output, read_image, read_labels, write_labels, Volume};
use crate::model::Model;
use crate::{DspnetError, Result};

/// Read an image and a label volume that must lie on its voxel grid.
pub fn read_study(image: &Path, labels: &Path) -> Result<(Volume<f32>, Volume<u16>)> {
    let img = read_image(image)?;
    let lab = read_labels(labels)?;
    if !img.geometry.same_grid(&lab.geometry, 1e-3) {
        return Err(DspnetError::InvalidArgument(format!(
            "{} is not on the grid of {}: dims {:?} vs {:?}, spacing {:?} vs {:?}, origin {:?} vs {:?}",
            labels.display(),
            image.display(),
            lab.geometry.dims,
            img.geometry.dims,
            lab.geometry.spacing,
            img.geometry.spacing,
            lab.geometry.origin,
            img.geometry.origin
        )));
    }
    Ok((img, lab))
}

/// Refuse volumes whose working set clearly exceeds what a workstation can hold, before allocating it:
/// the normalised copy (4 B/voxel), per-class scores (4 B/voxel/class) and the output (2 B/voxel).
/// The limit is `DSPNET_MEMORY_LIMIT_MB` (default 32 GiB).
pub fn check_memory_limit(dims: [usize; 3]) -> Result<()> {
    let voxels = super::voxel_count(dims)? as u64;
    let bytes = voxels.saturating_mul(14);
    // Saturating: a huge limit means no limit, it must not wrap around to a tiny one.
    let limit: u64 = std::env::var("DSPNET_MEMORY_LIMIT_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(32 * 1024)
        .saturating_mul(1024 * 1024);
    if bytes > limit {
        return Err(DspnetError::OutOfMemory(format!(
            "a {dims:?} volume needs about {} MB of working memory (limit {} MB; set DSPNET_MEMORY_LIMIT_MB to change it)",
            bytes >> 20,
            limit >> 20
        )));
    }
    Ok(())
}

/// Segment a study already read by [`read_study`] and write the labels to `output` (format from its
/// extension, geometry and header of `image_path`), atomically; the output's folder is created.
pub fn segment_study(
    model: &Model,
    img: &Volume<f32>,
    support: &Volume<u16>,
    image_path: &Path,
    output: &Path,
    opts: &SegmentOptions,
    progress: Progress<'_>,
) -> Result<(Volume<u16>, SegmentSummary)> {
    check_label_output(output)?; // before the work, not after it
    let view = VolumeRef { data: &img.data, dims: img.geometry.dims, spacing: img.geometry.spacing };
    let (labels, summary) = segment(model, view, &support.data, opts, progress)?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| DspnetError::io(dir, e))?;
        remove_stale_temporaries(dir, output);
    }
    let out = Volume::new(labels, img.geometry.clone())?;
    write_labels(output, &out, Some(image_path))?;
    Ok((out, summary))
}

/// [`read_study`], [`check_memory_limit`] and [`segment_study`]: one study, files in, file out.
pub fn segment_files(
    model: &Model,
    image: &Path,
    support: &Path,
    output: &Path,
    opts: &SegmentOptions,
    progress: Progress<'_>,
) -> Result<(Volume<u16>, SegmentSummary)> {
    let (img, lab) = read_study(image, support)?;
    check_memory_limit(img.geometry.dims)?;
    segment_study(model, &img, &lab, image, output, opts, progress)
}

/// A process killed while writing an output leaves its temporary file (`.NAME.tmp-…`, never the output
/// itself); the study's next attempt removes it.
fn remove_stale_temporaries(dir: &Path, output: &Path) {
    let Some(name) = output.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.tmp-");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
