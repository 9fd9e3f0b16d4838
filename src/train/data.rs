//! Training slices: unlabelled volumes normalised exactly as the segmentation pipeline does, cut along
//! the slice axis onto the 256×256 canvas, with their superpixel pseudo-labels.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::superpixels::{default_body_threshold, pseudo_labels, SuperpixelOptions};
use crate::config::InputNormalization;
use crate::volume::{ModalityChoice, PreparedVolume, VolumeRef, CANVAS};
use crate::{DspnetError, Result};

/// One canvas slice with at least one superpixel.
pub struct TrainingSlice {
    /// Network input (normalised), CANVAS × CANVAS row-major.
    pub image: Vec<f32>,
    /// 0 outside the body, 1..=count inside.
    pub superpixels: Vec<u16>,
    pub count: usize,
    /// Volume file and slice index, for messages.
    pub source: (PathBuf, usize),
}

/// Read `paths`, normalise with `norm`, and keep every slice along `axis` that has superpixels.
/// Superpixels are computed on the canvas rescaled so that the volume's range maps to [0, 255] (for
/// the official CT normalisation that is exactly the reference's windowed image).
pub fn load_slices(
    paths: &[PathBuf],
    axis: usize,
    modality: ModalityChoice,
    norm: &InputNormalization,
    sp: &SuperpixelOptions,
) -> Result<Vec<TrainingSlice>> {
    if paths.is_empty() {
        return Err(DspnetError::InvalidArgument("no training images given".into()));
    }
    if axis > 2 {
        return Err(DspnetError::InvalidArgument(format!("slice axis {axis} is not 0, 1 or 2")));
    }
    let mut out = Vec::new();
    for path in paths {
        let before = out.len();
        slices_of(path, axis, modality, norm, sp, &mut out)?;
        if out.len() == before {
            eprintln!(
                "warning: {}: no slice with superpixels inside the body (empty or constant slices?)",
                path.display()
            );
        }
    }
    if out.is_empty() {
        return Err(DspnetError::InvalidArgument(
            "no training slice has superpixels: the images are empty or constant, or the body threshold / min_size exclude everything".into(),
        ));
    }
    Ok(out)
}

fn slices_of(
    path: &Path,
    axis: usize,
    modality: ModalityChoice,
    norm: &InputNormalization,
    sp: &SuperpixelOptions,
    out: &mut Vec<TrainingSlice>,
) -> Result<()> {
    let vol = crate::io::read_image(path)?;
    let image = VolumeRef { data: &vol.data, dims: vol.geometry.dims, spacing: vol.geometry.spacing };
    let prepared = PreparedVolume::with_normalization(image, axis, modality, norm)?;
    let frame = prepared.frame(None)?;
    let (lo, hi) = prepared.value_range();
    let span = if hi > lo { hi - lo } else { 1.0 };
    let threshold = sp.body_threshold.unwrap_or_else(|| default_body_threshold(prepared.modality));
    let slices: Vec<Option<TrainingSlice>> = (0..prepared.slices())
        .into_par_iter()
        .map(|z| {
            let image = prepared.canvas(z, &frame);
            let img255: Vec<f32> = image.iter().map(|&v| (v - lo) / span * 255.0).collect();
            let (superpixels, count) = pseudo_labels(&img255, CANVAS, CANVAS, threshold, sp);
            (count > 0).then(|| TrainingSlice { image, superpixels, count, source: (path.to_path_buf(), z) })
        })
        .collect();
    out.extend(slices.into_iter().flatten());
    Ok(())
}
