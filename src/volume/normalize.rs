//! Intensity normalisation, as the model's weights declare it (docs/model.md, 'Input', for the official recipe).

use crate::config::InputNormalization;
use crate::{DspnetError, Result};

/// Imaging modality, for the official recipe (which normalises CT and MRI differently).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Modality {
    Ct,
    Mri,
}

impl Modality {
    /// CT volumes hold Hounsfield units (air −1000, fat about −100); MRI intensities are non-negative.
    /// A volume whose 0.5th percentile is below −50 is taken as CT, so that tight soft-tissue crops
    /// (no air, some fat) are still recognised.
    pub fn guess(voxels: &[f32]) -> Modality {
        if percentile(voxels, 0.5) < -50.0 {
            Modality::Ct
        } else {
            Modality::Mri
        }
    }
}

/// The `q`-th percentile (0..=100) with linear interpolation between order statistics (numpy's default).
pub fn percentile(values: &[f32], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v: Vec<f32> = values.to_vec();
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let (_, &mut a, upper) = v.select_nth_unstable_by(lo, |x, y| x.total_cmp(y));
    let b = if hi > lo { upper.iter().copied().min_by(|x, y| x.total_cmp(y)).unwrap_or(a) } else { a };
    a as f64 + (b as f64 - a as f64) * (pos - lo as f64)
}

/// The intensity mapping of one volume: parameters fitted on the whole volume, then applied voxel by
/// voxel, so that slices can be normalised as they are needed instead of keeping a normalised copy.
#[derive(Clone, Copy, Debug)]
pub struct Normalizer {
    kind: Mapping,
    /// The normalised volume minimum: padding outside the image takes it, as the official pipeline pads.
    pub pad: f32,
}

#[derive(Clone, Copy, Debug)]
enum Mapping {
    /// Clamp to `[low, high]`, scale to `[0, 1]`.
    Window { low: f64, high: f64 },
    /// The official recipe: CT window to [0, 255] or MRI clip at `top`, then z-score.
    Official { ct: bool, top: f32, mean: f64, std: f64 },
}

impl Normalizer {
    /// Fit the mapping on the whole volume, as the weights' recipe declares it.
    pub fn fit(voxels: &[f32], norm: &InputNormalization, modality: Modality) -> Result<Self> {
        if let Some(i) = voxels.iter().position(|v| !v.is_finite()) {
            return Err(DspnetError::NonFinite(format!("image voxel {i} is {}", voxels[i])));
        }
        if voxels.is_empty() {
            return Err(DspnetError::Shape("the image has no voxel".into()));
        }
        let kind = match *norm {
            InputNormalization::Window { low, high } => {
                // MRI has no absolute intensity scale: its own 0.5th–99.5th percentile range takes the place
                // of the window, so air/background lands near 0 and bright tissue near 1, as in the CT window.
                let (low, high) = match modality {
                    Modality::Ct => (low, high),
                    Modality::Mri => {
                        let (lo, hi) = (percentile(voxels, 0.5), percentile(voxels, 99.5));
                        if hi > lo {
                            (lo, hi)
                        } else {
                            (lo, lo + 1.0)
                        }
                    }
                };
                Mapping::Window { low, high }
            }
            InputNormalization::Official => {
                let ct = modality == Modality::Ct;
                // MRI is clipped above its 99.5th percentile.
                let top = if ct { f32::INFINITY } else { percentile(voxels, 99.5) as f32 };
                let pre = |v: f32| official_pre(v, ct, top);
                // z-score over the whole volume (population std), in f64.
                let n = voxels.len() as f64;
                let mean = voxels.iter().map(|&v| pre(v) as f64).sum::<f64>() / n;
                let var = voxels.iter().map(|&v| (pre(v) as f64 - mean).powi(2)).sum::<f64>() / n;
                let std = var.sqrt();
                let std = if std > 1e-12 { std } else { 1.0 }; // a constant volume stays finite (all zeros)
                Mapping::Official { ct, top, mean, std }
            }
        };
        let mut n = Normalizer { kind, pad: 0.0 };
        // The mapping is monotone, so the normalised minimum is the minimum's image.
        n.pad = n.map(voxels.iter().copied().fold(f32::INFINITY, f32::min));
        Ok(n)
    }

    /// The normalised value of one voxel.
    pub fn map(&self, v: f32) -> f32 {
        match self.kind {
            Mapping::Window { low, high } => ((v as f64).clamp(low, high) - low) as f32 / (high - low) as f32,
            Mapping::Official { ct, top, mean, std } => ((official_pre(v, ct, top) as f64 - mean) / std) as f32,
        }
    }
}

/// The official recipe before its z-score: the HU window [-125, 275] scaled to [0, 255] for CT, the
/// clip at `top` for MRI.
fn official_pre(v: f32, ct: bool, top: f32) -> f32 {
    if ct {
        (((v as f64).clamp(-125.0, 275.0) + 125.0) * 255.0 / 400.0) as f32
    } else {
        v.min(top)
    }
}

/// Normalise a whole volume in place. Returns the value that padding outside the image should take.
pub fn normalize_volume(voxels: &mut [f32], norm: &InputNormalization, modality: Modality) -> Result<f32> {
    let n = Normalizer::fit(voxels, norm, modality)?;
    voxels.iter_mut().for_each(|v| *v = n.map(*v));
    Ok(n.pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy_linear() {
        let v: Vec<f32> = (0..11).map(|i| i as f32).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert!((percentile(&v, 99.5) - 9.95).abs() < 1e-9);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.0), 1.0);
    }

    #[test]
    fn ct_recipe_windows_then_zscores() {
        let mut v = vec![-1000.0, -125.0, 75.0, 275.0, 3000.0];
        let pad = normalize_volume(&mut v, &InputNormalization::Official, Modality::Ct).unwrap();
        // After windowing: 0, 0, 127.5, 255, 255 → mean 127.5
        assert!((v[2]).abs() < 1e-6);
        assert!(v[0] == v[1] && v[3] == v[4] && v[0] < 0.0 && pad == v[0]);
        let mean: f32 = v.iter().sum::<f32>() / 5.0;
        assert!(mean.abs() < 1e-6);
    }

    #[test]
    fn window_scales_ct_by_hounsfield_and_mri_by_percentiles() {
        let window = InputNormalization::Window { low: -1000.0, high: 1000.0 };
        let mut ct = vec![-2000.0, -1000.0, 0.0, 1000.0, 3000.0];
        normalize_volume(&mut ct, &window, Modality::Ct).unwrap();
        assert_eq!(ct, vec![0.0, 0.0, 0.5, 1.0, 1.0]);
        let mut mri: Vec<f32> = (0..=1000).map(|i| i as f32).collect();
        normalize_volume(&mut mri, &window, Modality::Mri).unwrap();
        assert_eq!((mri[0], mri[1000]), (0.0, 1.0));
        assert!((mri[500] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn nan_is_rejected_with_position() {
        let mut v = vec![0.0, f32::NAN];
        let e = normalize_volume(&mut v, &InputNormalization::Official, Modality::Mri).unwrap_err();
        assert!(e.to_string().contains("voxel 1"), "{e}");
    }

    #[test]
    fn guess_modality() {
        assert_eq!(
            Modality::guess(&[-1000.0; 50].iter().chain(&[40.0; 50]).copied().collect::<Vec<_>>()),
            Modality::Ct
        );
        assert_eq!(Modality::guess(&[0.0, 10.0, 200.0]), Modality::Mri);
        // A soft-tissue CT crop: fat (about -100 HU) but no air.
        let crop: Vec<f32> = (0..1000).map(|i| if i % 10 == 0 { -110.0 } else { 40.0 + (i % 7) as f32 }).collect();
        assert_eq!(Modality::guess(&crop), Modality::Ct);
    }
}
