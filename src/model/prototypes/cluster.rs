//! SpCenterIter (`MultiProtoAsConv.sp_center_iter`, from ASGNet; docs/model.md, 'Clustering'): the inference-time
//! soft clustering of the support foreground features that yields the FSPA cluster centres Pc.
//!
//! Small (ROI ≤ h·w cells, K ≤ 5 centres, 10 iterations), so it runs on the CPU. Inputs and outputs
//! are f32; distances and weighted sums are accumulated in f64, which keeps the result within
//! ~1e-7 of the exact value (the reference's own float32 error is of the same order).

use crate::error::{DspnetError, Result};

/// Output of the clustering, both column-major-by-centre as the reference lays them out.
#[derive(Debug, Clone)]
pub struct Clusters {
    /// `pc_init` [(C+2), K] row-major: Fs at each seed cell, then the seed row and col as floats.
    pub init: Vec<f32>,
    /// `pc` [C, K] row-major: the first C rows of the centres after the iterations.
    pub centres: Vec<f32>,
    pub k: usize,
}

/// Runs `iterations` rounds of the association/update step.
///
/// * `support`: Fs as [C, h·w] row-major; `roi`: cells with m_f == 1 exactly; `seeds`: (row, col).
/// * Per ROI cell r, f_r = [Fs[:, r]; row; col] (C + 2 values); initial centre k = f at seed k (the
///   seed need not lie in the ROI).
/// * d(r,k) = Σ_{c<C}(f_r[c] − c_k[c])²/100 + ((Δrow)² + (Δcol)²)/100, a(r,k) = exp(−sqrt(d)),
///   normalised over r for each k; c_k = Σ_r a(r,k)·f_r (all C + 2 dimensions).
/// * Empty ROI: the reference sums over an empty set, so every centre becomes exactly 0 (not NaN).
///
/// One conscious deviation: the normalisation is evaluated as a max-shifted softmax over r. That is
/// the same quantity, but where the reference's float32 `exp` underflows to 0 for *every* ROI cell of
/// a cluster it produces 0/0 = NaN (docs/model.md, 'Clustering'); here the result stays finite.
pub fn sp_center_iter(
    support: &[f32],
    c: usize,
    w: usize,
    roi: &[usize],
    seeds: &[(usize, usize)],
    iterations: usize,
) -> Result<Clusters> {
    if c == 0 || w == 0 || support.len() % (c * w) != 0 {
        return Err(DspnetError::Shape(format!(
            "clustering input of {} values is not [C = {c}, h, w = {w}]",
            support.len()
        )));
    }
    let k = seeds.len();
    let dims = c + 2;
    let n = support.len() / c;
    let h = n / w;
    if let Some(s) = seeds.iter().find(|s| s.0 >= h || s.1 >= w) {
        return Err(DspnetError::InvalidArgument(format!("seed {s:?} outside the {h}x{w} grid")));
    }
    if let Some(r) = roi.iter().find(|&&r| r >= n) {
        return Err(DspnetError::InvalidArgument(format!("ROI cell {r} outside the {h}x{w} grid")));
    }
    // Extended feature of cell i: channel values then (row, col).
    let feature = |cell: usize, d: usize| -> f64 {
        if d < c {
            support[d * n + cell] as f64
        } else if d == c {
            (cell / w) as f64
        } else {
            (cell % w) as f64
        }
    };

    let mut init = vec![0f32; dims * k];
    for (j, &(r, col)) in seeds.iter().enumerate() {
        let cell = r * w + col;
        for d in 0..dims {
            init[d * k + j] = feature(cell, d) as f32;
        }
    }

    // ROI features, cell-major for cache-friendly distance loops.
    let roi_feat: Vec<f64> =
        roi.iter().flat_map(|&cell| (0..dims).map(move |d| (cell, d))).map(|(cell, d)| feature(cell, d)).collect();

    // Centres, centre-major [K][C+2]; iteration 0 starts from the initial centres.
    let mut centres: Vec<f64> =
        (0..k).flat_map(|j| (0..dims).map(move |d| (j, d))).map(|(j, d)| init[d * k + j] as f64).collect();
    if iterations == 0 || roi.is_empty() {
        // The reference starts from `sp_center = zeros_like(...)`: with no iteration, or an empty ROI
        // (sums over an empty set), the returned centres are exactly 0.
        centres.iter_mut().for_each(|v| *v = 0.0);
    }
    let mut logits = vec![0f64; roi.len()];
    for _ in 0..iterations {
        if roi.is_empty() {
            break;
        }
        let mut next = vec![0f64; k * dims];
        for j in 0..k {
            let cj = &centres[j * dims..(j + 1) * dims];
            for (ri, lg) in logits.iter_mut().enumerate() {
                let f = &roi_feat[ri * dims..(ri + 1) * dims];
                let mut feat = 0f64;
                for d in 0..c {
                    let diff = f[d] - cj[d];
                    feat += diff * diff;
                }
                let dr = f[c] - cj[c];
                let dc = f[c + 1] - cj[c + 1];
                let spat = dr * dr + dc * dc;
                *lg = -(feat / 100.0 + spat / 100.0).sqrt();
            }
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut total = 0f64;
            for lg in logits.iter_mut() {
                *lg = (*lg - max).exp();
                total += *lg;
            }
            let nj = &mut next[j * dims..(j + 1) * dims];
            for (ri, &a) in logits.iter().enumerate() {
                let a = a / total;
                let f = &roi_feat[ri * dims..(ri + 1) * dims];
                for d in 0..dims {
                    nj[d] += a * f[d];
                }
            }
        }
        centres = next;
    }

    let mut out = vec![0f32; c * k];
    for j in 0..k {
        for d in 0..c {
            out[d * k + j] = centres[j * dims + d] as f32;
        }
    }
    Ok(Clusters { init, centres: out, k })
}
