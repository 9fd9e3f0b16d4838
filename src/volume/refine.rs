//! Boundary refinement on the image intensities (memory propagation).
//!
//! The model sees a slice on a grid of 8×8 canvas pixels, so its boundaries are blurred by about half a
//! feature cell. The painted slice tells what the structure and its immediate surroundings look like: a
//! histogram of each gives a per-intensity log-likelihood ratio. In a thin band around the model's
//! boundary (inside and outside) every pixel is re-decided by that ratio; away from the boundary the
//! model's decision stands, so a look-alike intensity elsewhere cannot join.

/// Histogram bins over the painted region's intensity range.
const BINS: usize = 32;

/// Log-likelihood ratio (structure against its surroundings) of each intensity, from the painted slice.
pub struct IntensityModel {
    lo: f32,
    hi: f32,
    llr: [f32; BINS],
}

impl IntensityModel {
    /// From the painted slice's intensities and mask (`rows × cols`, row-major); the surroundings are the
    /// ring within `ring` pixels outside the mask. `None` when the mask or its ring is empty or flat.
    pub fn from_painted(image: &[f32], mask: &[bool], rows: usize, cols: usize, ring: usize) -> Option<Self> {
        let near = dilate(mask, rows, cols, ring);
        let inside: Vec<f32> = image.iter().zip(mask).filter(|(_, &m)| m).map(|(&v, _)| v).collect();
        let around: Vec<f32> =
            image.iter().zip(mask.iter().zip(&near)).filter(|(_, (&m, &n))| n && !m).map(|(&v, _)| v).collect();
        if inside.is_empty() || around.is_empty() {
            return None;
        }
        // The 1st–99th percentile of both together: outliers fall into the end bins.
        let mut all: Vec<f32> = inside.iter().chain(&around).copied().collect();
        all.sort_by(f32::total_cmp);
        let at = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
        let (lo, hi) = (at(0.01), at(0.99));
        // Not `hi <= lo`: a NaN bound must refuse too.
        if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
            return None;
        }
        let mut model = IntensityModel { lo, hi, llr: [0.0; BINS] };
        let hist = |vals: &[f32]| {
            let mut h = [0f64; BINS];
            for &v in vals {
                h[model.bin(v)] += 1.0;
            }
            // Smoothed over neighbouring bins (a 1-2-1 kernel twice, about a Gaussian of one bin) with a
            // pseudo-count, so an intensity seen on one side only does not decide with infinite weight.
            let h = smooth(&smooth(&h));
            let total: f64 = h.iter().map(|c| c + 0.5).sum();
            h.map(|c| ((c + 0.5) / total).ln())
        };
        let (fi, bi) = (hist(&inside), hist(&around));
        for k in 0..BINS {
            model.llr[k] = (fi[k] - bi[k]) as f32;
        }
        Some(model)
    }

    fn bin(&self, v: f32) -> usize {
        (((v - self.lo) / (self.hi - self.lo) * BINS as f32) as isize).clamp(0, BINS as isize - 1) as usize
    }

    /// Whether intensity `v` is more likely the structure's than its surroundings'.
    pub fn is_structure(&self, v: f32) -> bool {
        self.llr[self.bin(v)] > 0.0
    }

    /// `mask` with the pixels within `band` pixels of its boundary (either side) decided by intensity.
    pub fn refine(&self, image: &[f32], mask: &[bool], rows: usize, cols: usize, band: usize) -> Vec<bool> {
        if band == 0 || !mask.iter().any(|&m| m) {
            return mask.to_vec();
        }
        let grown = dilate(mask, rows, cols, band);
        let not: Vec<bool> = mask.iter().map(|m| !m).collect();
        let shrunk_not = dilate(&not, rows, cols, band);
        (0..mask.len())
            .map(|p| {
                // In the band: grown but not deep inside (deep inside = no background within `band`).
                let in_band = grown[p] && shrunk_not[p];
                if in_band {
                    self.is_structure(image[p])
                } else {
                    mask[p]
                }
            })
            .collect()
    }
}

fn smooth(h: &[f64; BINS]) -> [f64; BINS] {
    let mut out = [0.0; BINS];
    for k in 0..BINS {
        let l = h[k.saturating_sub(1)];
        let r = h[(k + 1).min(BINS - 1)];
        out[k] = 0.25 * l + 0.5 * h[k] + 0.25 * r;
    }
    out
}

/// `mask` grown by `r` pixels in the chessboard metric (a (2r+1)² square), as two 1-D passes.
pub fn dilate(mask: &[bool], rows: usize, cols: usize, r: usize) -> Vec<bool> {
    let pass = |src: &[bool], n: usize, stride: usize, lines: usize, line_stride: usize| -> Vec<bool> {
        let mut out = vec![false; src.len()];
        for l in 0..lines {
            let at = |i: usize| l * line_stride + i * stride;
            // Distance to the last set pixel seen, forwards then backwards.
            let mut last: Option<usize> = None;
            for i in 0..n {
                if src[at(i)] {
                    last = Some(i);
                }
                if last.is_some_and(|j| i - j <= r) {
                    out[at(i)] = true;
                }
            }
            last = None;
            for i in (0..n).rev() {
                if src[at(i)] {
                    last = Some(i);
                }
                if last.is_some_and(|j| j - i <= r) {
                    out[at(i)] = true;
                }
            }
        }
        out
    };
    let along_rows = pass(mask, cols, 1, rows, cols);
    pass(&along_rows, rows, cols, cols, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dilation_is_a_square_of_side_2r_plus_1() {
        let (rows, cols) = (7, 9);
        let mut m = vec![false; rows * cols];
        m[3 * cols + 4] = true;
        let d = dilate(&m, rows, cols, 2);
        let on: Vec<(usize, usize)> = (0..rows * cols).filter(|&p| d[p]).map(|p| (p / cols, p % cols)).collect();
        assert_eq!(on.len(), 25);
        assert!(on.iter().all(|&(r, c)| r.abs_diff(3) <= 2 && c.abs_diff(4) <= 2));
        assert_eq!(dilate(&m, rows, cols, 0), m);
    }

    #[test]
    fn the_band_follows_the_intensity_edge_and_nothing_far_away_changes() {
        // A bright square (rows 10-19, cols 10-19) on a dark slice with a bright look-alike far away.
        let (rows, cols) = (40, 40);
        let bright = |r: usize, c: usize| {
            (10..20).contains(&r) && (10..20).contains(&c) || (30..35).contains(&r) && (30..35).contains(&c)
        };
        let image: Vec<f32> =
            (0..rows * cols).map(|p| if bright(p / cols, p % cols) { 100.0 } else { 10.0 } + (p % 7) as f32).collect();
        let truth: Vec<bool> =
            (0..rows * cols).map(|p| (10..20).contains(&(p / cols)) && (10..20).contains(&(p % cols))).collect();
        let model = IntensityModel::from_painted(&image, &truth, rows, cols, 4).expect("a model");
        // The model's mask is the square shifted by one pixel: the band puts the boundary back.
        let shifted: Vec<bool> =
            (0..rows * cols).map(|p| (11..21).contains(&(p / cols)) && (9..19).contains(&(p % cols))).collect();
        assert_eq!(model.refine(&image, &shifted, rows, cols, 2), truth);
        // The look-alike is 10 pixels away from the mask: outside the band, it stays background.
        assert_eq!(model.refine(&image, &truth, rows, cols, 2), truth);
        assert_eq!(model.refine(&image, &shifted, rows, cols, 0), shifted);
    }

    #[test]
    fn a_flat_or_empty_painted_slice_gives_no_model() {
        let (rows, cols) = (8, 8);
        let mask: Vec<bool> = (0..64).map(|p| p % 8 < 4).collect();
        assert!(IntensityModel::from_painted(&[5.0; 64], &mask, rows, cols, 2).is_none());
        assert!(IntensityModel::from_painted(&[5.0; 64], &[false; 64], rows, cols, 2).is_none());
    }
}
