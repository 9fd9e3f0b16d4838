//! A projection derived from data: the mean-centred principal components of backbone features.
//!
//! A backbone trained for another task (a CT foundation model) has no DSPNet projection. Projecting its
//! features onto their leading principal components keeps the directions in which slices differ, and the
//! bias `-W·mean` centres them, which cosine scoring needs: uncentred features all point roughly the same
//! way, so every cell looks like every prototype.

use candle_core::{DType, Device, Tensor};
use nalgebra::{DMatrix, SymmetricEigen};

use crate::{DspnetError, Result};

/// Running first and second moments of feature vectors (one per feature cell), in f64.
pub struct FeatureMoments {
    channels: usize,
    count: u64,
    /// Shift subtracted before accumulating (the first batch's mean), so the second moments do not
    /// cancel catastrophically when the mean is large against the spread.
    shift: Option<Vec<f64>>,
    sum: Vec<f64>,
    outer: Vec<f64>,
}

/// The fitted projection: `weight` is `[k, C]` row-major, `bias` is `[k]`.
pub struct PrincipalProjection {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub mean: Vec<f64>,
    /// Fraction of the total variance kept by the `k` components.
    pub explained: f64,
}

impl FeatureMoments {
    pub fn new(channels: usize) -> Self {
        FeatureMoments {
            channels,
            count: 0,
            shift: None,
            sum: vec![0.0; channels],
            outer: vec![0.0; channels * channels],
        }
    }

    /// Number of feature vectors seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Add every cell of `features` (`[C, h, w]` or `[B, C, h, w]`).
    pub fn add(&mut self, features: &Tensor) -> Result<()> {
        let f = features.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
        let f = match f.rank() {
            3 => f.unsqueeze(0)?,
            4 => f,
            r => return Err(DspnetError::Shape(format!("features must be [C, h, w] or [B, C, h, w], got rank {r}"))),
        };
        let (b, c, h, w) = f.dims4()?;
        if c != self.channels {
            return Err(DspnetError::Shape(format!("features have {c} channels, the statistics {}", self.channels)));
        }
        // [N, C] with one row per cell.
        let x = f.permute((0, 2, 3, 1))?.reshape((b * h * w, c))?;
        let shift = match &self.shift {
            Some(s) => s.clone(),
            None => {
                let s = x.mean(0)?.to_vec1::<f64>()?;
                self.shift = Some(s.clone());
                s
            }
        };
        let x = x.broadcast_sub(&Tensor::from_vec(shift, (1, c), &Device::Cpu)?)?;
        for (acc, v) in self.sum.iter_mut().zip(x.sum(0)?.to_vec1::<f64>()?) {
            *acc += v;
        }
        let xtx = x.t()?.matmul(&x)?.flatten_all()?.to_vec1::<f64>()?;
        for (acc, v) in self.outer.iter_mut().zip(xtx) {
            *acc += v;
        }
        self.count += (b * h * w) as u64;
        Ok(())
    }

    /// The `k` leading principal components as a projection with a centring bias.
    pub fn principal_projection(&self, k: usize) -> Result<PrincipalProjection> {
        let c = self.channels;
        if k == 0 || k > c {
            return Err(DspnetError::InvalidArgument(format!("cannot keep {k} components of {c} channels")));
        }
        if self.count < 2 {
            return Err(DspnetError::InvalidArgument("no feature statistics gathered (no slices encoded)".into()));
        }
        let n = self.count as f64;
        let shift = self.shift.as_ref().expect("set with the first batch");
        let centred_mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let cov = DMatrix::from_fn(c, c, |i, j| self.outer[i * c + j] / n - centred_mean[i] * centred_mean[j]);
        let eig = SymmetricEigen::new(cov);
        let mut order: Vec<usize> = (0..c).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        let total: f64 = eig.eigenvalues.iter().map(|v| v.max(0.0)).sum();
        let kept: f64 = order[..k].iter().map(|&i| eig.eigenvalues[i].max(0.0)).sum();
        let mean: Vec<f64> = centred_mean.iter().zip(shift).map(|(m, s)| m + s).collect();
        let mut weight = Vec::with_capacity(k * c);
        let mut bias = Vec::with_capacity(k);
        for &i in &order[..k] {
            let v = eig.eigenvectors.column(i);
            weight.extend(v.iter().map(|&x| x as f32));
            bias.push(-v.iter().zip(&mean).map(|(a, m)| a * m).sum::<f64>() as f32);
        }
        Ok(PrincipalProjection { weight, bias, mean, explained: if total > 0.0 { kept / total } else { 0.0 } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cells spread along one direction around an offset mean: the first component finds the direction
    /// and the bias cancels the mean.
    #[test]
    fn finds_the_direction_of_spread_and_centres() {
        let (c, cells) = (4, 64);
        let dir = [0.6f32, 0.8, 0.0, 0.0];
        let mean = [5.0f32, -3.0, 2.0, 7.0];
        let mut data = vec![0f32; c * cells];
        for j in 0..cells {
            let t = (j as f32 - 31.5) / 8.0;
            let wobble = if j % 2 == 0 { 0.01 } else { -0.01 };
            for i in 0..c {
                data[i * cells + j] = mean[i] + t * dir[i] + if i == 2 { wobble } else { 0.0 };
            }
        }
        let f = Tensor::from_vec(data, (c, 8, 8), &Device::Cpu).unwrap();
        let mut m = FeatureMoments::new(c);
        // Two halves of the batch: the shift from the first must not bias the result.
        m.add(&f.narrow(1, 0, 4).unwrap()).unwrap();
        m.add(&f.narrow(1, 4, 4).unwrap()).unwrap();
        assert_eq!(m.count(), 64);
        let p = m.principal_projection(1).unwrap();
        let dot: f32 = p.weight.iter().zip(dir).map(|(a, b)| a * b).sum();
        assert!(dot.abs() > 0.9999, "first component {:?}", p.weight);
        let projected_mean: f32 = p.weight.iter().zip(mean).map(|(a, b)| a * b).sum::<f32>() + p.bias[0];
        assert!(projected_mean.abs() < 1e-4, "{projected_mean}");
        assert!(p.explained > 0.99);
        assert!(m.principal_projection(5).is_err());
    }
}
