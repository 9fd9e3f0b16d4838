//! Bilinear resizing with PyTorch `F.interpolate(mode='bilinear', align_corners=False)` semantics
//! (docs/model.md, 'Output'), for any input and output size, and the final argmax.
//!
//! Index and weight computations follow ATen's CPU kernel in float32: scale = in / out,
//! src = scale·(dst + 0.5) − 0.5 clamped at 0, i0 = min(floor(src), in − 1), i1 = i0 + (i0 < in − 1),
//! λ = clamp(src − i0, 0, 1); the 2-D value is interpolated along the width first, then the height:
//! wh0·(ww0·a + ww1·b) + wh1·(ww0·c + ww1·d).

use candle_core::{Device, Tensor};

use crate::error::{DspnetError, Result};

/// One output position: the two source indices and their weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tap {
    pub i0: usize,
    pub i1: usize,
    pub w0: f32,
    pub w1: f32,
}

/// Per-output-position taps along one axis of size `n_in` → `n_out` (empty if either is 0).
pub fn linear_taps(n_in: usize, n_out: usize) -> Vec<Tap> {
    if n_in == 0 || n_out == 0 {
        return Vec::new();
    }
    if n_in == n_out {
        // ATen copies the input unchanged in this case.
        return (0..n_out).map(|i| Tap { i0: i, i1: i, w0: 1.0, w1: 0.0 }).collect();
    }
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|dst| {
            let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n_in - 1);
            let lambda = (src - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
            Tap { i0, i1, w0: 1.0 - lambda, w1: lambda }
        })
        .collect()
}

/// Dense [n_out, n_in] interpolation matrix of one axis (two non-zeros per row).
fn interpolation_matrix(n_in: usize, n_out: usize, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; n_out * n_in];
    for (o, t) in linear_taps(n_in, n_out).into_iter().enumerate() {
        m[o * n_in + t.i0] += t.w0;
        m[o * n_in + t.i1] += t.w1;
    }
    Ok(Tensor::from_vec(m, (n_out, n_in), device)?)
}

/// One channel, row-major `h x w` → `out_h x out_w`, on CPU slices. Returns an error for a
/// size mismatch or a zero size instead of panicking.
pub fn try_resize_bilinear(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Result<Vec<f32>> {
    if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        return Err(DspnetError::Shape(format!("resize {h}x{w} -> {out_h}x{out_w}: sizes must be >= 1")));
    }
    if src.len() != h * w {
        return Err(DspnetError::Shape(format!("resize source has {} values, expected {h}x{w}", src.len())));
    }
    let th = linear_taps(h, out_h);
    let tw = linear_taps(w, out_w);
    let mut out = Vec::with_capacity(out_h * out_w);
    for y in &th {
        let (r0, r1) = (&src[y.i0 * w..(y.i0 + 1) * w], &src[y.i1 * w..(y.i1 + 1) * w]);
        for x in &tw {
            let top = x.w0 * r0[x.i0] + x.w1 * r0[x.i1];
            let bottom = x.w0 * r1[x.i0] + x.w1 * r1[x.i1];
            out.push(y.w0 * top + y.w1 * bottom);
        }
    }
    Ok(out)
}

/// One channel, row-major `h x w` → `out_h x out_w` (see the module doc for the exact semantics).
/// Never panics: returns an empty vector when `src.len() != h·w` or a size is 0 (use
/// [`try_resize_bilinear`] to get the reason).
pub fn resize_bilinear(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    try_resize_bilinear(src, h, w, out_h, out_w).unwrap_or_default()
}

/// Bilinear upsampling (or any resize) of [C, h, w] scores (C = 2: bg, fg) to [C, out_h, out_w], on
/// the scores' device, as two small matrix products (width first, then height). A leading batch
/// axis of 1 is accepted and dropped.
pub fn upsample_logits(scores: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let scores = match scores.rank() {
        3 => scores.clone(),
        4 if scores.dim(0)? == 1 => scores.squeeze(0)?,
        _ => {
            return Err(DspnetError::Shape(format!("scores must be [C, h, w], got {:?}", scores.dims())));
        }
    };
    let (c, h, w) = scores.dims3()?;
    if c == 0 || h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        return Err(DspnetError::Shape(format!("resize {:?} -> {out_h}x{out_w}: sizes must be >= 1", scores.dims())));
    }
    let scores = scores.to_dtype(candle_core::DType::F32)?.contiguous()?;
    let dev = scores.device();
    // Plain 2-D products only (no broadcast batch axis), so every backend takes the same path.
    let ww = interpolation_matrix(w, out_w, dev)?; // [out_w, w]
    let wh = interpolation_matrix(h, out_h, dev)?; // [out_h, h]
    let along_w = scores.reshape((c * h, w))?.matmul(&ww.t()?)?; // [c·h, out_w]
    let rows = along_w.reshape((c, h, out_w))?.transpose(0, 1)?.contiguous()?.reshape((h, c * out_w))?;
    let out = wh.matmul(&rows)?; // [out_h, c·out_w]
    Ok(out.reshape((out_h, c, out_w))?.transpose(0, 1)?.contiguous()?)
}

/// Labels from [2, H, W] logits (or [1, 2, H, W]): 1 where logit1 > logit0, else 0 — argmax with
/// ties going to background (channel 0), as `torch.argmax` picks the first maximum.
pub fn labels_from_logits(logits: &Tensor) -> Result<Vec<u8>> {
    let logits = match logits.rank() {
        3 => logits.clone(),
        4 if logits.dim(0)? == 1 => logits.squeeze(0)?,
        _ => return Err(DspnetError::Shape(format!("logits must be [2, H, W], got {:?}", logits.dims()))),
    };
    if logits.dim(0)? != 2 {
        return Err(DspnetError::Shape(format!("logits must have 2 channels, got {:?}", logits.dims())));
    }
    let fg = logits.get(1)?.gt(&logits.get(0)?)?;
    Ok(fg.flatten_all()?.to_vec1::<u8>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_match_pytorch_examples() {
        // x8, the model's case: weights are multiples of 1/16.
        let t = linear_taps(32, 256);
        assert_eq!(t[0], Tap { i0: 0, i1: 1, w0: 1.0, w1: 0.0 });
        assert_eq!(t[4], Tap { i0: 0, i1: 1, w0: 0.9375, w1: 0.0625 });
        assert_eq!(t[255], Tap { i0: 31, i1: 31, w0: 0.5625, w1: 0.4375 });
        // 2 -> 3: [x0, (x0 + x1)/2, x1] in PyTorch.
        let out = resize_bilinear(&[1.0, 3.0], 1, 2, 1, 3);
        assert_eq!(out, vec![1.0, 2.0, 3.0]);
        // Identity.
        let src: Vec<f32> = (0..12).map(|v| v as f32 * 0.37).collect();
        assert_eq!(resize_bilinear(&src, 3, 4, 3, 4), src);
        assert!(resize_bilinear(&src, 3, 5, 3, 4).is_empty());
    }

    #[test]
    fn tensor_and_slice_paths_agree() {
        let (h, w, oh, ow) = (5, 7, 13, 9);
        let src: Vec<f32> = (0..2 * h * w).map(|v| ((v * 37 % 11) as f32 - 5.0) * 0.731).collect();
        let t = Tensor::from_vec(src.clone(), (2, h, w), &Device::Cpu).unwrap();
        let up = upsample_logits(&t, oh, ow).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for ch in 0..2 {
            let want = resize_bilinear(&src[ch * h * w..(ch + 1) * h * w], h, w, oh, ow);
            for (a, b) in up[ch * oh * ow..(ch + 1) * oh * ow].iter().zip(&want) {
                assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn labels_ties_go_to_background() {
        let t = Tensor::from_vec(vec![1f32, 2.0, 3.0, 1.0, 2.0, 4.0], (2, 1, 3), &Device::Cpu).unwrap();
        assert_eq!(labels_from_logits(&t).unwrap(), vec![0, 0, 1]);
    }
}
