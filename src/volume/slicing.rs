//! 2D slices of a 3D volume, and the mapping between a slice's pixel grid and the model's square canvas.
//!
//! Memory layout everywhere: voxel (i, j, k) at `i + ni*(j + nj*k)` (i fastest: NIfTI, ITK, VTK and
//! Slicer's `arrayFromVolume` share it). A slice along axis `a` is a 2D image whose rows follow the
//! slower of the two remaining axes and whose columns follow the faster one; for axial slices
//! (a = k) that is `image[r][c] = vol[c][r][k]`, the on-disk order and the official DSPNet convention.

use crate::{DspnetError, Result};

/// The two in-plane axes of a slice along `axis`: (row axis, column axis).
pub fn in_plane_axes(axis: usize) -> (usize, usize) {
    match axis {
        0 => (2, 1),
        1 => (2, 0),
        _ => (1, 0),
    }
}

/// Strides (in elements) of the three index axes for `dims`.
fn strides(dims: [usize; 3]) -> [usize; 3] {
    [1, dims[0], dims[0] * dims[1]]
}

/// Rows and columns of a slice along `axis`.
pub fn slice_shape(dims: [usize; 3], axis: usize) -> (usize, usize) {
    let (ra, ca) = in_plane_axes(axis);
    (dims[ra], dims[ca])
}

/// Flat indices of the voxels of slice `index` along `axis`, in row-major slice order.
pub fn slice_indices(dims: [usize; 3], axis: usize, index: usize) -> impl Iterator<Item = usize> {
    let st = strides(dims);
    let (ra, ca) = in_plane_axes(axis);
    let (rows, cols) = (dims[ra], dims[ca]);
    let base = index * st[axis];
    (0..rows).flat_map(move |r| (0..cols).map(move |c| base + r * st[ra] + c * st[ca]))
}

/// Copy slice `index` along `axis` out of a volume.
pub fn extract_slice<T: Copy>(data: &[T], dims: [usize; 3], axis: usize, index: usize) -> Vec<T> {
    slice_indices(dims, axis, index).map(|i| data[i]).collect()
}

/// Write a slice back into a volume.
pub fn insert_slice<T: Copy>(data: &mut [T], dims: [usize; 3], axis: usize, index: usize, slice: &[T]) {
    for (i, v) in slice_indices(dims, axis, index).zip(slice) {
        data[i] = *v;
    }
}

/// Where a slice region sits on the model's square canvas, per axis: canvas = (pixel + 0.5)·scale + offset − 0.5,
/// with the same scale on both axes in physical units (pixels become square; no stretched anatomy).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CanvasFrame {
    /// Canvas side in pixels (256 for DSPNet).
    pub size: usize,
    /// Canvas pixels per slice pixel, for rows and columns (differ when the in-plane spacing does).
    pub scale: [f64; 2],
    /// Canvas position of the region's top-left edge, for rows and columns.
    pub offset: [f64; 2],
}

impl CanvasFrame {
    /// Fit the window `[r0, r0+h) x [c0, c0+w)` (slice pixels, may extend past the slice) with pixel
    /// spacing (row, col) into a `size x size` canvas, centred, preserving the physical aspect ratio.
    pub fn fit(window: [f64; 4], spacing: [f64; 2], size: usize) -> Result<Self> {
        let [r0, c0, h, w] = window;
        if !(h > 0.0 && w > 0.0 && spacing.iter().all(|s| s.is_finite() && *s > 0.0)) {
            return Err(DspnetError::InvalidArgument(format!("cannot fit window {window:?} with spacing {spacing:?}")));
        }
        let extent = (h * spacing[0]).max(w * spacing[1]); // mm covered by the canvas side
        let mm_per_canvas_px = extent / size as f64;
        let scale = [spacing[0] / mm_per_canvas_px, spacing[1] / mm_per_canvas_px];
        let used = [h * scale[0], w * scale[1]];
        let offset = [(size as f64 - used[0]) / 2.0 - r0 * scale[0], (size as f64 - used[1]) / 2.0 - c0 * scale[1]];
        Ok(CanvasFrame { size, scale, offset })
    }

    /// Canvas coordinate (pixel-centre convention) of slice pixel coordinate `p` on axis `a`.
    pub fn to_canvas(&self, a: usize, p: f64) -> f64 {
        (p + 0.5) * self.scale[a] + self.offset[a] - 0.5
    }

    /// Slice pixel coordinate of canvas coordinate `q` on axis `a`.
    pub fn to_slice(&self, a: usize, q: f64) -> f64 {
        (q + 0.5 - self.offset[a]) / self.scale[a] - 0.5
    }

    /// Resample a slice (rows x cols) onto the canvas with bilinear interpolation; canvas pixels outside
    /// the slice get `pad`.
    pub fn image_to_canvas(&self, slice: &[f32], rows: usize, cols: usize, pad: f32) -> Vec<f32> {
        let n = self.size;
        let rs: Vec<Option<(usize, usize, f64)>> =
            (0..n).map(|q| linear_tap(self.to_slice(0, q as f64), rows)).collect();
        let cs: Vec<Option<(usize, usize, f64)>> =
            (0..n).map(|q| linear_tap(self.to_slice(1, q as f64), cols)).collect();
        let mut out = vec![pad; n * n];
        for (qr, r) in rs.iter().enumerate() {
            let Some((r0, r1, fr)) = *r else { continue };
            for (qc, c) in cs.iter().enumerate() {
                let Some((c0, c1, fc)) = *c else { continue };
                let top = slice[r0 * cols + c0] as f64 * (1.0 - fc) + slice[r0 * cols + c1] as f64 * fc;
                let bottom = slice[r1 * cols + c0] as f64 * (1.0 - fc) + slice[r1 * cols + c1] as f64 * fc;
                out[qr * n + qc] = (top * (1.0 - fr) + bottom * fr) as f32;
            }
        }
        out
    }

    /// Resample a binary mask onto the canvas (nearest slice pixel; outside → 0).
    pub fn mask_to_canvas(&self, mask: &[u8], rows: usize, cols: usize) -> Vec<u8> {
        let n = self.size;
        let nearest = |q: usize, a: usize, len: usize| -> Option<usize> {
            let p = self.to_slice(a, q as f64).round();
            (p >= 0.0 && p < len as f64).then_some(p as usize)
        };
        let rs: Vec<Option<usize>> = (0..n).map(|q| nearest(q, 0, rows)).collect();
        let cs: Vec<Option<usize>> = (0..n).map(|q| nearest(q, 1, cols)).collect();
        let mut out = vec![0u8; n * n];
        for (qr, r) in rs.iter().enumerate() {
            let Some(r) = *r else { continue };
            for (qc, c) in cs.iter().enumerate() {
                if let Some(c) = *c {
                    out[qr * n + qc] = u8::from(mask[r * cols + c] != 0);
                }
            }
        }
        out
    }

    /// Sample a canvas channel (size x size) at the centres of the slice pixels `[r0, r0+h) x [c0, c0+w)`
    /// with bilinear interpolation (edge-clamped), i.e. map logits back onto the slice grid.
    pub fn canvas_to_slice(&self, canvas: &[f32], window: [usize; 4]) -> Vec<f32> {
        let [r0, c0, h, w] = window;
        let n = self.size;
        let clamp_tap = |q: f64| -> (usize, usize, f64) {
            let q = q.clamp(0.0, (n - 1) as f64);
            let i0 = q.floor() as usize;
            let i1 = (i0 + 1).min(n - 1);
            (i0, i1, q - i0 as f64)
        };
        let rs: Vec<_> = (r0..r0 + h).map(|r| clamp_tap(self.to_canvas(0, r as f64))).collect();
        let cs: Vec<_> = (c0..c0 + w).map(|c| clamp_tap(self.to_canvas(1, c as f64))).collect();
        let mut out = Vec::with_capacity(h * w);
        for &(a0, a1, fr) in &rs {
            for &(b0, b1, fc) in &cs {
                let top = canvas[a0 * n + b0] as f64 * (1.0 - fc) + canvas[a0 * n + b1] as f64 * fc;
                let bottom = canvas[a1 * n + b0] as f64 * (1.0 - fc) + canvas[a1 * n + b1] as f64 * fc;
                out.push((top * (1.0 - fr) + bottom * fr) as f32);
            }
        }
        out
    }
}

/// Bilinear taps for sampling position `p` in [0, len): None when outside the half-pixel-extended
/// support [-0.5, len - 0.5]; edge-clamped inside it.
fn linear_tap(p: f64, len: usize) -> Option<(usize, usize, f64)> {
    if !(p >= -0.5 && p <= len as f64 - 0.5) {
        return None;
    }
    let p = p.clamp(0.0, (len - 1) as f64);
    let i0 = p.floor() as usize;
    let i1 = (i0 + 1).min(len - 1);
    Some((i0, i1, p - i0 as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axial_slice_is_on_disk_order() {
        let dims = [3, 2, 2];
        let data: Vec<usize> = (0..12).collect();
        // k = 1: rows follow j, columns follow i.
        assert_eq!(extract_slice(&data, dims, 2, 1), vec![6, 7, 8, 9, 10, 11]);
        assert_eq!(slice_shape(dims, 2), (2, 3));
        // i = 2: rows follow k, columns follow j.
        assert_eq!(extract_slice(&data, dims, 0, 2), vec![2, 5, 8, 11]);
        let mut back = vec![0; 12];
        for i in 0..3 {
            insert_slice(&mut back, dims, 0, i, &extract_slice(&data, dims, 0, i));
        }
        assert_eq!(back, data);
    }

    #[test]
    fn fit_preserves_physical_aspect() {
        // 100 rows of 2 mm, 200 cols of 0.5 mm: 200 mm x 100 mm → rows fill the canvas.
        let f = CanvasFrame::fit([0.0, 0.0, 100.0, 200.0], [2.0, 0.5], 256).unwrap();
        assert!((f.scale[0] - 2.56).abs() < 1e-12 && (f.scale[1] - 0.64).abs() < 1e-12);
        assert!((f.offset[0]).abs() < 1e-12 && (f.offset[1] - 64.0).abs() < 1e-12);
        // Round trip of coordinates.
        for p in [0.0, 17.3, 99.0] {
            assert!((f.to_slice(0, f.to_canvas(0, p)) - p).abs() < 1e-9);
        }
    }

    #[test]
    fn exact_2x_upsampling_matches_half_pixel_bilinear() {
        // A 128x128 slice fitted to 256 is PyTorch's scale-2 bilinear upsampling (align_corners=false).
        let n = 128;
        let slice: Vec<f32> = (0..n * n).map(|i| ((i * 37) % 101) as f32).collect();
        let f = CanvasFrame::fit([0.0, 0.0, n as f64, n as f64], [1.0, 1.0], 256).unwrap();
        let up = f.image_to_canvas(&slice, n, n, -1.0);
        let x = |r: isize, c: isize| slice[(r.clamp(0, 127) as usize) * n + c.clamp(0, 127) as usize] as f64;
        for (qr, qc) in [(0usize, 0usize), (1, 1), (10, 37), (255, 254), (128, 3)] {
            let tap = |q: usize| -> [(isize, f64); 2] {
                let m = (q / 2) as isize;
                if q % 2 == 0 {
                    [(m - 1, 0.25), (m, 0.75)]
                } else {
                    [(m, 0.75), (m + 1, 0.25)]
                }
            };
            let mut want = 0.0;
            for (r, wr) in tap(qr) {
                for (c, wc) in tap(qc) {
                    want += wr * wc * x(r, c);
                }
            }
            assert!((up[qr * 256 + qc] as f64 - want).abs() < 1e-4, "({qr},{qc}) {} vs {want}", up[qr * 256 + qc]);
        }
        // Canvas → slice recovers a smooth (linear) field.
        let ramp: Vec<f32> = (0..256 * 256).map(|i| (i / 256) as f32 * 0.5).collect();
        let back = f.canvas_to_slice(&ramp, [0, 0, n, n]);
        assert!((back[5 * n + 9] - (2.0 * 5.0 + 0.5) * 0.5).abs() < 1e-5);
    }
}
