//! Support masks at feature resolution (docs/model.md, 'Masks at feature resolution' and 'Scores').
//!
//! All values are multiples of 1/64, so they are computed exactly on the CPU and are bit-identical to
//! the reference's float32 bilinear resize and average pools.

/// The support mask seen at feature resolution, and every discrete decision derived from it.
#[derive(Debug, Clone)]
pub struct FeatureMasks {
    /// Feature grid size.
    pub h: usize,
    pub w: usize,
    /// `m_f` [h·w]: bilinear (align_corners = false) resize of the fg mask by 1/8. Cell (i,j) is the
    /// mean of pixels (8i+3 | 8i+4) × (8j+3 | 8j+4), so values lie in {0, .25, .5, .75, 1}.
    pub m_f: Vec<f32>,
    /// `m_b` [h·w]: the same for the bg mask 1 − fg (= 1 − m_f exactly).
    pub m_b: Vec<f32>,
    /// `pool_f`, `pool_b` [(h/k)·(w/k)]: k×k average pools (k = `HeadOptions::local_pool`: 2 at inference,
    /// 4 in training), index p = (w/k)·row + col.
    pub pool_f: Vec<f32>,
    pub pool_b: Vec<f32>,
    /// Max of the non-overlapping 4×4 average pool of `m_f` (the fg mode test always uses 4, not
    /// `val_wsize`).
    pub max_pool4_f: f32,
    /// Σ m_f (exact), the denominator of every masked average before the `+ 1e-5`.
    pub sum_f: f32,
}

impl FeatureMasks {
    /// `fg` is the binarised full-resolution mask (`stride·h` × `stride·w`, values 0/1).
    /// `pool` is the local-prototype window. Callers guarantee the sizes (checked in `SupportEpisode::new`).
    pub(crate) fn new(fg: &[u8], h: usize, w: usize, stride: usize, pool: usize) -> Self {
        let width = stride * w;
        // PyTorch bilinear, align_corners = false, exact integer ratio: source coordinate
        // (i + 0.5)·stride − 0.5 = stride·i + stride/2 − 0.5 → pixels stride·i + stride/2 − 1 and
        // stride·i + stride/2, weight 1/2 each (stride 8: pixels 8i+3 and 8i+4).
        let lo = stride / 2 - 1;
        let mut m_f = vec![0f32; h * w];
        for i in 0..h {
            for j in 0..w {
                let (r, c) = (stride * i + lo, stride * j + lo);
                let count = fg[r * width + c] as u32
                    + fg[r * width + c + 1] as u32
                    + fg[(r + 1) * width + c] as u32
                    + fg[(r + 1) * width + c + 1] as u32;
                m_f[i * w + j] = count as f32 / 4.0;
            }
        }
        let m_b: Vec<f32> = m_f.iter().map(|&v| 1.0 - v).collect();
        let pool_f = avg_pool(&m_f, h, w, pool);
        let pool_b = avg_pool(&m_b, h, w, pool);
        let max_pool4_f = avg_pool(&m_f, h, w, 4).into_iter().fold(f32::NEG_INFINITY, f32::max);
        let sum_f = m_f.iter().sum();
        FeatureMasks { h, w, m_f, m_b, pool_f, pool_b, max_pool4_f, sum_f }
    }

    /// Prototype indices p whose pooled value is strictly greater than `thresh`
    /// (`n_sup_x[sup_y_g > thresh, :]`), in ascending order.
    pub fn select(pool: &[f32], thresh: f32) -> Vec<u32> {
        pool.iter().enumerate().filter(|(_, &v)| v > thresh).map(|(i, _)| i as u32).collect()
    }

    /// Clustering ROI: the cells with m_f == 1 exactly (`supp_mask == 1`), row-major.
    pub fn roi(&self) -> Vec<usize> {
        self.m_f.iter().enumerate().filter(|(_, &v)| v == 1.0).map(|(i, _)| i).collect()
    }
}

/// Non-overlapping k×k average pool of an [h, w] map (sizes are multiples of k): sum, then divide.
pub(crate) fn avg_pool(x: &[f32], h: usize, w: usize, k: usize) -> Vec<f32> {
    let (ph, pw) = (h / k, w / k);
    let mut out = Vec::with_capacity(ph * pw);
    for pi in 0..ph {
        for pj in 0..pw {
            let mut s = 0f32;
            for di in 0..k {
                for dj in 0..k {
                    s += x[(pi * k + di) * w + pj * k + dj];
                }
            }
            out.push(s / (k * k) as f32);
        }
    }
    out
}
