//! Superpixel seed placement: `place_seed_points_d` (ASGNet, copied into DSPNet's `util/seed_init.py`)
//! plus the model's `num_sp` rule (docs/model.md, 'Seeds').
//!
//! Everything here is discrete and exact (integer squared distances), so the result is bit-identical
//! to the reference, including its quirks:
//! * nearest-neighbour downsampling samples pixel (stride·i, stride·j) (OpenCV `INTER_NEAREST`);
//! * the distance transform only sees zeros *inside the bounding-box crop* (the crop border is not
//!   background), and a crop without any zero gets scipy's D(i,j) = sqrt((i+1)² + j²);
//! * K = min(round_half_even(area / area_per_seed), max_seeds); K = 0 or 1 places no seed;
//! * `num_sp` = max(#non-zero row coordinates, #non-zero col coordinates), so a genuine seed at (0,0)
//!   is indistinguishable from padding and may truncate the list.

use crate::error::{DspnetError, Result};

/// Squared distance marker for "no zero cell reachable" in the 1-D passes.
const INF: u64 = u64::MAX;

/// Full result of the seed placement, for tests and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedPlacement {
    /// The nearest-neighbour downsampled mask (0/1), row-major `grid_height x grid_width`.
    pub grid: Vec<u8>,
    pub grid_height: usize,
    pub grid_width: usize,
    /// K = min(round_half_even(area / area_per_seed), max_seeds) (0 for an empty mask).
    pub k: usize,
    /// The seeds as placed, (row, col) on the grid: K entries when K >= 2, otherwise none.
    pub seeds: Vec<(usize, usize)>,
    /// How many of the (zero-padded, `max_seeds`-long) seed rows the model uses.
    pub num_sp: usize,
}

impl SeedPlacement {
    /// The seed rows the model actually uses: the first `num_sp` rows of the padded array.
    pub fn used_seeds(&self) -> &[(usize, usize)] {
        // num_sp <= seeds.len() always holds (it counts non-zero coordinates of placed seeds).
        &self.seeds[..self.num_sp.min(self.seeds.len())]
    }

    /// The seeds as the reference stores them: `max_seeds` rows, unused rows (0,0).
    pub fn padded(&self, max_seeds: usize) -> Vec<(usize, usize)> {
        let mut out = self.seeds.clone();
        out.resize(max_seeds.max(self.seeds.len()), (0, 0));
        out
    }
}

/// Seeds exactly as `place_seed_points_d` + the model's `num_sp` rule: returns (all K seeds (row,col)
/// as placed, num_sp used). The model uses the first `num_sp` of them.
///
/// `mask` is row-major `height x width`; any non-zero value is foreground (the model passes
/// `(s_y == 1).float()`, i.e. a binary mask).
pub fn place_seeds(
    mask: &[u8],
    height: usize,
    width: usize,
    stride: usize,
    max_seeds: usize,
    area_per_seed: usize,
) -> Result<(Vec<(usize, usize)>, usize)> {
    let p = seed_placement(mask, height, width, stride, max_seeds, area_per_seed)?;
    Ok((p.seeds, p.num_sp))
}

/// [`place_seeds`] with every intermediate (downsampled grid, K).
pub fn seed_placement(
    mask: &[u8],
    height: usize,
    width: usize,
    stride: usize,
    max_seeds: usize,
    area_per_seed: usize,
) -> Result<SeedPlacement> {
    if height == 0 || width == 0 {
        return Err(DspnetError::Shape(format!("seed mask must be non-empty, got {height}x{width}")));
    }
    if mask.len() != height * width {
        return Err(DspnetError::Shape(format!(
            "seed mask has {} values, expected {height}x{width} = {}",
            mask.len(),
            height * width
        )));
    }
    if stride == 0 {
        return Err(DspnetError::InvalidArgument("seed stride must be >= 1".into()));
    }
    if area_per_seed == 0 {
        return Err(DspnetError::InvalidArgument("area_per_seed must be >= 1".into()));
    }

    let (grid, gh, gw) = downsample_nearest(mask, height, width, stride);
    let none =
        |k| SeedPlacement { grid: grid.clone(), grid_height: gh, grid_width: gw, k, seeds: Vec::new(), num_sp: 0 };

    // Bounding box of the foreground cells.
    let Some((r0, r1, c0, c1)) = bounding_box(&grid, gh, gw) else {
        return Ok(none(0));
    };
    let (ch, cw) = (r1 - r0 + 1, c1 - c0 + 1);
    let mut crop: Vec<bool> = (0..ch * cw).map(|i| grid[(r0 + i / cw) * gw + c0 + i % cw] != 0).collect();

    // `(mask_area / avg_sp_area).round()` is numpy's round half to even, on a float64 quotient.
    let area = crop.iter().filter(|&&v| v).count();
    let k_float = (area as f64 / area_per_seed as f64).round_ties_even();
    let k = (k_float as usize).min(max_seeds);
    if k < 2 {
        // `if (num_sp != 0) and (num_sp != 1)`: K = 0 or 1 places nothing.
        return Ok(none(k));
    }

    let mut seeds = Vec::with_capacity(k);
    for _ in 0..k {
        let d2 = crop_distance_sq(&crop, ch, cw);
        // First cell in row-major order attaining the maximum (`np.nonzero(d == max)[0]`). The
        // Gaussian filter with sigma 0.1 that follows in the reference has radius 0: skipped.
        let mut best = 0usize;
        for (i, &v) in d2.iter().enumerate() {
            if v > d2[best] {
                best = i;
            }
        }
        crop[best] = false;
        seeds.push((best / cw + r0, best % cw + c0));
    }

    // num_sp = max(len(nonzero(seed[:, 0])), len(nonzero(seed[:, 1]))) over the padded array;
    // padding rows are (0,0) and never count.
    let nz_rows = seeds.iter().filter(|s| s.0 != 0).count();
    let nz_cols = seeds.iter().filter(|s| s.1 != 0).count();
    let num_sp = nz_rows.max(nz_cols);

    Ok(SeedPlacement { grid, grid_height: gh, grid_width: gw, k, seeds, num_sp })
}

/// OpenCV `INTER_NEAREST` to `int((n - 1) / stride + 1)` cells per axis: output cell x samples
/// input `min(floor(x * (1 / (out / in))), in - 1)`, which is `stride·x` when `in = stride·out`.
/// (The reference passes `dsize = (down_h, down_w)` where OpenCV expects (width, height); that only
/// matters for non-square masks, where the reference is inconsistent, so the axes are kept straight.)
pub(crate) fn downsample_nearest(mask: &[u8], height: usize, width: usize, stride: usize) -> (Vec<u8>, usize, usize) {
    let gh = (height - 1) / stride + 1;
    let gw = (width - 1) / stride + 1;
    let src_index = |dst: usize, n_in: usize, n_out: usize| -> usize {
        let inv_scale = 1.0 / (n_out as f64 / n_in as f64);
        ((dst as f64 * inv_scale).floor() as usize).min(n_in - 1)
    };
    let rows: Vec<usize> = (0..gh).map(|y| src_index(y, height, gh)).collect();
    let cols: Vec<usize> = (0..gw).map(|x| src_index(x, width, gw)).collect();
    let mut grid = Vec::with_capacity(gh * gw);
    for &sy in &rows {
        for &sx in &cols {
            grid.push(u8::from(mask[sy * width + sx] != 0));
        }
    }
    (grid, gh, gw)
}

/// Inclusive (r0, r1, c0, c1) of the non-zero cells, or None when there is none.
fn bounding_box(grid: &[u8], h: usize, w: usize) -> Option<(usize, usize, usize, usize)> {
    let mut bb: Option<(usize, usize, usize, usize)> = None;
    for r in 0..h {
        for c in 0..w {
            if grid[r * w + c] != 0 {
                bb = Some(match bb {
                    None => (r, r, c, c),
                    Some((r0, r1, c0, c1)) => (r0.min(r), r1.max(r), c0.min(c), c1.max(c)),
                });
            }
        }
    }
    bb
}

/// Squared Euclidean distance transform of the crop as scipy's `distance_transform_edt` computes
/// it: every cell gets the squared distance to the nearest zero cell *of the crop* (0 for zero
/// cells). If the crop has no zero at all, scipy returns D(i,j) = sqrt((i+1)² + j²) (distance to a
/// virtual zero at (-1, 0)); reproduced here because it decides the first seed of a rectangular mask.
pub(crate) fn crop_distance_sq(fg: &[bool], h: usize, w: usize) -> Vec<u64> {
    if fg.iter().all(|&v| v) {
        return (0..h * w)
            .map(|i| {
                let (r, c) = ((i / w) as u64, (i % w) as u64);
                (r + 1) * (r + 1) + c * c
            })
            .collect();
    }
    squared_edt(fg, h, w)
}

/// Exact squared EDT (Felzenszwalb & Huttenlocher, separable lower envelope of parabolas), with
/// zeros at the `false` cells. Requires at least one `false` cell for finite output.
pub(crate) fn squared_edt(fg: &[bool], h: usize, w: usize) -> Vec<u64> {
    // Pass 1: along each column (over rows).
    let mut cols = vec![INF; h * w];
    let mut f = vec![INF; h];
    let mut out = vec![INF; h.max(w)];
    for c in 0..w {
        for r in 0..h {
            f[r] = if fg[r * w + c] { INF } else { 0 };
        }
        edt_1d(&f, &mut out[..h]);
        for r in 0..h {
            cols[r * w + c] = out[r];
        }
    }
    // Pass 2: along each row, over the column results.
    let mut res = vec![INF; h * w];
    for r in 0..h {
        edt_1d(&cols[r * w..(r + 1) * w], &mut out[..w]);
        res[r * w..(r + 1) * w].copy_from_slice(&out[..w]);
    }
    res
}

/// 1-D squared distance transform: out[q] = min_p (q - p)² + f[p] over the finite f[p].
fn edt_1d(f: &[u64], out: &mut [u64]) {
    let n = f.len();
    // Apexes of the parabolas in the lower envelope and the left boundary of each one's range.
    let mut v: Vec<usize> = Vec::with_capacity(n);
    let mut z: Vec<f64> = Vec::with_capacity(n);
    for q in 0..n {
        if f[q] == INF {
            continue;
        }
        loop {
            match v.last() {
                None => {
                    v.push(q);
                    z.push(f64::NEG_INFINITY);
                    break;
                }
                Some(&p) => {
                    // Intersection of the parabolas rooted at p < q. Values are small integers,
                    // so the f64 quotient is exact enough: a tie at an integer q only chooses
                    // between two parabolas of equal value there.
                    let num = (f[q] + (q * q) as u64) as f64 - (f[p] + (p * p) as u64) as f64;
                    let s = num / (2.0 * (q - p) as f64);
                    if s <= *z.last().unwrap_or(&f64::NEG_INFINITY) {
                        v.pop();
                        z.pop();
                    } else {
                        v.push(q);
                        z.push(s);
                        break;
                    }
                }
            }
        }
    }
    if v.is_empty() {
        out.iter_mut().for_each(|o| *o = INF);
        return;
    }
    let mut k = 0;
    for (q, o) in out.iter_mut().enumerate() {
        while k + 1 < v.len() && z[k + 1] < q as f64 {
            k += 1;
        }
        let d = q.abs_diff(v[k]) as u64;
        *o = d * d + f[v[k]];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(fg: &[bool], h: usize, w: usize) -> Vec<u64> {
        let zeros: Vec<(usize, usize)> = (0..h * w).filter(|&i| !fg[i]).map(|i| (i / w, i % w)).collect();
        (0..h * w)
            .map(|i| {
                let (r, c) = (i / w, i % w);
                zeros
                    .iter()
                    .map(|&(zr, zc)| (r.abs_diff(zr) as u64).pow(2) + (c.abs_diff(zc) as u64).pow(2))
                    .min()
                    .unwrap_or(INF)
            })
            .collect()
    }

    #[test]
    fn edt_matches_brute_force() {
        // Deterministic pseudo-random masks of several densities and shapes.
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for trial in 0..300 {
            let h = 1 + (next() % 23) as usize;
            let w = 1 + (next() % 29) as usize;
            let density = 1 + trial % 20;
            let mut fg: Vec<bool> = (0..h * w).map(|_| next() % 21 < density as u64).collect();
            if fg.iter().all(|&v| v) {
                fg[(next() as usize) % (h * w)] = false;
            }
            assert_eq!(squared_edt(&fg, h, w), brute(&fg, h, w), "trial {trial} {h}x{w}");
        }
    }

    #[test]
    fn rectangle_edge_case_picks_bottom_right_first() {
        let (h, w) = (256, 256);
        let mut mask = vec![0u8; h * w];
        for r in 80..180 {
            for c in 60..200 {
                mask[r * w + c] = 1;
            }
        }
        let (seeds, num_sp) = place_seeds(&mask, h, w, 8, 5, 100).unwrap();
        assert_eq!(seeds, vec![(22, 24), (10, 8)]);
        assert_eq!(num_sp, 2);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(place_seeds(&[0; 10], 4, 4, 8, 5, 100), Err(DspnetError::Shape(_))));
        assert!(matches!(place_seeds(&[0; 16], 4, 4, 0, 5, 100), Err(DspnetError::InvalidArgument(_))));
        assert!(matches!(place_seeds(&[0; 16], 4, 4, 8, 5, 0), Err(DspnetError::InvalidArgument(_))));
        assert_eq!(place_seeds(&[0; 16], 4, 4, 8, 5, 100).unwrap(), (vec![], 0));
    }
}
