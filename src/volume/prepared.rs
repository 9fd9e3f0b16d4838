//! A volume prepared for the model: slices cut, normalised and fitted into the model's canvas, and model
//! output mapped back onto slice pixels.

use candle_core::Tensor;

use super::normalize::{Modality, Normalizer};
use super::options::{ModalityChoice, VolumeRef};
use super::slicing::{extract_slice, in_plane_axes, slice_indices, slice_shape, CanvasFrame};
use crate::config::InputNormalization;
use crate::model::prototypes::{upsample_logits, HeadOptions, SupportEpisode};
use crate::model::Model;
use crate::{DspnetError, Result};

/// Side of the square model input.
pub const CANVAS: usize = 256;

/// A volume prepared for the model and cut along the slice axis: everything needed to turn slice `z`
/// into model input and model output back into slice pixels. Slices are normalised as they are cut, so
/// no normalised copy of the volume is kept.
pub struct PreparedVolume<'a> {
    image: &'a [f32],
    normalizer: Normalizer,
    pub dims: [usize; 3],
    pub axis: usize,
    pub rows: usize,
    pub cols: usize,
    /// In-plane spacing (row, column) in mm.
    pub pixel_spacing: [f64; 2],
    /// Spacing along the slice axis in mm.
    pub slice_spacing: f64,
    pub modality: Modality,
}

/// Per-slice model output mapped back onto the slice grid: background and foreground logits.
pub struct SliceLogits {
    pub bg: Vec<f32>,
    pub fg: Vec<f32>,
}

impl SliceLogits {
    /// Pixels where the foreground wins (ties → background, as the argmax of the official code).
    pub fn foreground(&self) -> impl Iterator<Item = bool> + '_ {
        self.fg.iter().zip(&self.bg).map(|(f, b)| f > b)
    }
}

impl<'a> PreparedVolume<'a> {
    pub fn new(model: &Model, image: VolumeRef<'a>, axis: usize, modality: ModalityChoice) -> Result<Self> {
        Self::with_normalization(image, axis, modality, &model.config().input_normalization)
    }

    /// As [`new`](Self::new) for weights not loaded as a [`Model`] (training).
    pub fn with_normalization(
        image: VolumeRef<'a>,
        axis: usize,
        modality: ModalityChoice,
        norm: &InputNormalization,
    ) -> Result<Self> {
        let modality = match modality {
            ModalityChoice::Ct => Modality::Ct,
            ModalityChoice::Mri => Modality::Mri,
            ModalityChoice::Auto => Modality::guess(image.data),
        };
        let normalizer = Normalizer::fit(image.data, norm, modality)?;
        let (rows, cols) = slice_shape(image.dims, axis);
        let (ra, ca) = in_plane_axes(axis);
        Ok(PreparedVolume {
            image: image.data,
            normalizer,
            dims: image.dims,
            axis,
            rows,
            cols,
            pixel_spacing: [image.spacing[ra], image.spacing[ca]],
            slice_spacing: image.spacing[axis],
            modality,
        })
    }

    /// Smallest and largest normalised value of the volume.
    pub fn value_range(&self) -> (f32, f32) {
        // The mapping is monotone: the extremes are the images of the raw extremes.
        (self.normalizer.pad, self.normalizer.map(self.image.iter().copied().fold(f32::NEG_INFINITY, f32::max)))
    }

    pub fn slices(&self) -> usize {
        self.dims[self.axis]
    }

    /// The canvas frame of a window `[r0, c0, h, w]` (slice pixels), or of the whole slice.
    pub fn frame(&self, window: Option<[f64; 4]>) -> Result<CanvasFrame> {
        CanvasFrame::fit(window.unwrap_or([0.0, 0.0, self.rows as f64, self.cols as f64]), self.pixel_spacing, CANVAS)
    }

    /// The image's own intensities on slice `z`, row-major.
    pub fn intensities(&self, z: usize) -> Vec<f32> {
        slice_indices(self.dims, self.axis, z).map(|v| self.image[v]).collect()
    }

    /// Model input for slice `z` under `frame`.
    pub fn canvas(&self, z: usize, frame: &CanvasFrame) -> Vec<f32> {
        let img: Vec<f32> =
            slice_indices(self.dims, self.axis, z).map(|v| self.normalizer.map(self.image[v])).collect();
        frame.image_to_canvas(&img, self.rows, self.cols, self.normalizer.pad)
    }

    /// Features `[C, 32, 32]` of slice `z` under `frame`.
    pub fn encode(&self, model: &Model, z: usize, frame: &CanvasFrame) -> Result<Tensor> {
        Ok(model.encode_slices(&self.canvas(z, frame), 1, CANVAS, CANVAS)?.squeeze(0)?)
    }

    /// Features `[C, 32, 32]` of the whole slices `zs`, encoded in one backbone call.
    pub fn encode_batch(&self, model: &Model, zs: &[usize], frame: &CanvasFrame) -> Result<Vec<Tensor>> {
        let input: Vec<f32> = zs.iter().flat_map(|&z| self.canvas(z, frame)).collect();
        let f = model.encode_slices(&input, zs.len(), CANVAS, CANVAS)?;
        Ok((0..zs.len()).map(|i| f.get(i)).collect::<candle_core::Result<_>>()?)
    }

    /// The episode of class `label` painted on slice `z` of `labels` (a volume on this grid).
    pub fn episode(
        &self,
        features: &Tensor,
        labels: &[u16],
        z: usize,
        label: u16,
        frame: &CanvasFrame,
        head: &HeadOptions,
    ) -> Result<SupportEpisode> {
        let mask: Vec<u8> =
            extract_slice(labels, self.dims, self.axis, z).iter().map(|&l| u8::from(l == label)).collect();
        let canvas_mask = frame.mask_to_canvas(&mask, self.rows, self.cols);
        SupportEpisode::new(features, &canvas_mask, CANVAS, CANVAS, head).map_err(|e| match e {
            DspnetError::EmptySupport { .. } => DspnetError::empty_support(
                Some(label),
                Some(z),
                "the labelled region vanishes at the model's input resolution",
            ),
            other => other,
        })
    }

    /// Score query features and map the logits (bilinear ×8 on the canvas, then bilinear onto the slice
    /// pixels) back onto the slice grid, before any argmax.
    pub fn score(&self, episode: &SupportEpisode, features: &Tensor, frame: &CanvasFrame) -> Result<SliceLogits> {
        self.logits_to_slice(&episode.score(features)?, frame)
    }

    /// The weighted mean of several episodes' scores of one query, mapped back as [`score`](Self::score)
    /// does. The mapping is linear, so averaging before it equals averaging the mapped logits, at one
    /// mapping's cost.
    pub fn score_mean(
        &self,
        parts: &[(&SupportEpisode, f32)],
        features: &Tensor,
        frame: &CanvasFrame,
    ) -> Result<SliceLogits> {
        let mut sum: Option<Tensor> = None;
        let mut total = 0f32;
        for (episode, w) in parts {
            let s = (episode.score(features)? * *w as f64)?;
            total += w;
            sum = Some(match sum {
                None => s,
                Some(acc) => (acc + s)?,
            });
        }
        let sum = sum.ok_or_else(|| DspnetError::InvalidArgument("no episode to score against".into()))?;
        self.logits_to_slice(&(sum / total as f64)?, frame)
    }

    /// Canvas-resolution scores `[2, h, w]` onto the slice grid.
    fn logits_to_slice(&self, scores: &Tensor, frame: &CanvasFrame) -> Result<SliceLogits> {
        let logits = upsample_logits(scores, CANVAS, CANVAS)?.to_device(&candle_core::Device::Cpu)?;
        let window = [0, 0, self.rows, self.cols];
        let bg = frame.canvas_to_slice(&logits.get(0)?.flatten_all()?.to_vec1::<f32>()?, window);
        let fg = frame.canvas_to_slice(&logits.get(1)?.flatten_all()?.to_vec1::<f32>()?, window);
        Ok(SliceLogits { bg, fg })
    }

    /// Square window (in slice pixels) around a structure's bounding box `[r0, c0, r1, c1]` (inclusive),
    /// enlarged so the structure spans about a third of the window side, at least `MIN_FOV_MM`, and
    /// shifted to stay inside the slice. `None` when the window would cover the whole slice anyway.
    pub fn fov_window(&self, bbox: [usize; 4], grow: f64) -> Option<[f64; 4]> {
        let [sr, sc] = self.pixel_spacing;
        let h_mm = (bbox[2] - bbox[0] + 1) as f64 * sr;
        let w_mm = (bbox[3] - bbox[1] + 1) as f64 * sc;
        let side_mm = (FOV_CONTEXT * h_mm.max(w_mm) * grow).max(MIN_FOV_MM);
        let (h, w) = (side_mm / sr, side_mm / sc);
        if h >= self.rows as f64 && w >= self.cols as f64 {
            return None;
        }
        let place = |centre: f64, size: f64, len: usize| -> (f64, f64) {
            if size >= len as f64 {
                (0.0, len as f64)
            } else {
                ((centre - size / 2.0).clamp(0.0, len as f64 - size), size)
            }
        };
        let (r0, hh) = place((bbox[0] + bbox[2] + 1) as f64 / 2.0, h, self.rows);
        let (c0, ww) = place((bbox[1] + bbox[3] + 1) as f64 / 2.0, w, self.cols);
        Some([r0, c0, hh, ww])
    }

    /// A window of the size of `window`, centred on the bounding box `bbox` and kept inside the slice.
    pub fn window_centred_on(&self, bbox: [usize; 4], window: [f64; 4]) -> [f64; 4] {
        let centre = [(bbox[0] + bbox[2] + 1) as f64 / 2.0, (bbox[1] + bbox[3] + 1) as f64 / 2.0];
        [
            (centre[0] - window[2] / 2.0).clamp(0.0, (self.rows as f64 - window[2]).max(0.0)),
            (centre[1] - window[3] / 2.0).clamp(0.0, (self.cols as f64 - window[3]).max(0.0)),
            window[2],
            window[3],
        ]
    }
}

/// Auto field of view: the window side is this many times the structure's larger side...
const FOV_CONTEXT: f64 = 3.0;
/// ...and at least this many millimetres.
const MIN_FOV_MM: f64 = 48.0;

/// Bounding box `[r0, c0, r1, c1]` (inclusive) of the true pixels of a rows x cols slice.
pub(crate) fn bounding_box(mask: impl Iterator<Item = bool>, cols: usize) -> Option<[usize; 4]> {
    let mut b: Option<[usize; 4]> = None;
    for (p, on) in mask.enumerate() {
        if on {
            let (r, c) = (p / cols, p % cols);
            b = Some(match b {
                None => [r, c, r, c],
                Some([r0, c0, r1, c1]) => [r0.min(r), c0.min(c), r1.max(r), c1.max(c)],
            });
        }
    }
    b
}

/// Does a window (not the whole slice) have foreground on its border, i.e. the structure may go on
/// outside it?
pub(crate) fn touches_border(window: [f64; 4], bbox: [usize; 4], rows: usize, cols: usize) -> bool {
    let [r0, c0, h, w] = window;
    let (r1, c1) = (r0 + h - 1.0, c0 + w - 1.0);
    (bbox[0] as f64 <= r0.ceil() && r0 > 0.0)
        || (bbox[1] as f64 <= c0.ceil() && c0 > 0.0)
        || (bbox[2] as f64 >= r1.floor() && r1 < rows as f64 - 1.0)
        || (bbox[3] as f64 >= c1.floor() && c1 < cols as f64 - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fov_window_is_square_in_mm_and_inside_the_slice() {
        let vol = PreparedVolume {
            image: &[],
            normalizer: Normalizer::fit(&[0.0], &crate::config::InputNormalization::Official, Modality::Mri).unwrap(),
            dims: [200, 100, 1],
            axis: 2,
            rows: 100,
            cols: 200,
            pixel_spacing: [2.0, 1.0],
            slice_spacing: 1.0,
            modality: Modality::Mri,
        };
        // A 10x10 pixel structure (20 mm x 10 mm) at rows 5..=14, cols 190..=199.
        let w = vol.fov_window([5, 190, 14, 199], 1.0).unwrap();
        // Side: max(3 x 20 mm, 48 mm) = 60 mm = 30 rows of 2 mm, 60 columns of 1 mm; shifted inside.
        assert_eq!(w, [0.0, 140.0, 30.0, 60.0]);
        assert!(touches_border(w, [0, 150, 29, 199], 100, 200));
        assert!(!touches_border(w, [5, 150, 20, 199], 100, 200), "the slice edge is not a window border");
        // A structure as large as the slice needs no window.
        assert_eq!(vol.fov_window([0, 0, 99, 199], 1.0), None);
    }
}
