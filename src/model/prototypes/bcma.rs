//! BCMA: channel-neighbourhood mixing of the 2×2-pooled local prototypes (docs/model.md, 'BCMA'), as inlined in
//! the reference's `gridconv` / `gridconv+` branches. No learned parameters besides the fixed `cal`.

use super::softmax_last_dim;
use candle_core::{Device, Tensor};

use crate::error::{DspnetError, Result};

/// The reference's tridiagonal pattern (`wts_near` / `get_wight`): the identity, then for rows
/// r = 1..C−2: [r, r−1] = lo, [r, r] = mid, [r, r+1] = hi. Rows 0 and C−1 keep only their diagonal 1.
pub fn tridiagonal(c: usize, lo: f32, mid: f32, hi: f32) -> Vec<f32> {
    let mut m = vec![0f32; c * c];
    for i in 0..c {
        m[i * c + i] = 1.0;
    }
    for r in 1..c.saturating_sub(1) {
        m[r * c + r - 1] = lo;
        m[r * c + r] = mid;
        m[r * c + r + 1] = hi;
    }
    m
}

/// The two fixed C×C matrices of BCMA, built once per episode on the features' device.
#[derive(Debug, Clone)]
pub struct BcmaMatrices {
    /// T: 1 on the three central diagonals (rows 1..C−2) and at (0,0), (C−1,C−1).
    pub t: Tensor,
    /// `cal`: (w1, w2, w3) on the same pattern (or a user-supplied C·C override).
    pub cal: Tensor,
}

impl BcmaMatrices {
    pub fn new(c: usize, weights: [f32; 3], calibration: Option<&[f32]>, device: &Device) -> Result<Self> {
        let t = Tensor::from_vec(tridiagonal(c, 1.0, 1.0, 1.0), (c, c), device)?;
        let cal = match calibration {
            None => tridiagonal(c, weights[0], weights[1], weights[2]),
            Some(cal) => {
                if cal.len() != c * c {
                    return Err(DspnetError::Shape(format!(
                        "calibration matrix has {} values, expected {c}x{c} = {}",
                        cal.len(),
                        c * c
                    )));
                }
                if cal.iter().any(|v| !v.is_finite()) {
                    return Err(DspnetError::NonFinite("calibration matrix".into()));
                }
                cal.to_vec()
            }
        };
        let cal = Tensor::from_vec(cal, (c, c), device)?;
        Ok(BcmaMatrices { t, cal })
    }
}

/// X' = W·X for X [C, P] (columns = local prototypes), with
/// G = X·Xᵀ (raw dot products, not cosines), S = row-softmax(G), A = 1 + α·(T ⊙ S), W = A ⊙ cal.
/// Entries of A outside the tridiagonal are exactly 1, so W there is `cal` itself.
/// G and S come from *all* P pooled prototypes (fg and bg alike), before any selection.
pub fn bcma(x: &Tensor, alpha: f32, m: &BcmaMatrices) -> Result<Tensor> {
    let gram = x.matmul(&x.t()?)?; // [C, C]
    let s = softmax_last_dim(&gram)?;
    // `1 + α·add_res_w2` as two float32 operations (α·x, then + 1), like the reference.
    let a = (&m.t * &s)?.affine(alpha as f64, 1.0)?;
    let w = (a * &m.cal)?;
    Ok(w.matmul(x)?)
}
