//! CPU fast path for the backbone's convolutions.
//!
//! - Activations are channels-last ([`Nhwc`]); a batch of slices is just more pixels.
//! - Weights (BatchNorm already folded) are packed once at load time into panels of `NR` output channels
//!   by `kh·kw·cin` rows, tap-major ([`PackedConv`]).
//! - A convolution is an implicit GEMM: output pixels × output channels, summed over (tap, input channel).
//!   Each tile of `MR` output pixels reads its input rows straight from the activation through one
//!   pointer per pixel and tap (stride, dilation and the zero border are only different pointers), so
//!   there is no im2col buffer and no repacking of activations. Only convolutions with very few input
//!   channels (the stem) build patches explicitly.
//! - Bias, ReLU and the residual add are fused into the kernel's store; the residual is accumulated in
//!   place in the shortcut's buffer.
//! - Work is split over output pixels across rayon's pool (candle's thread count).
//!
//! Results equal candle's `conv2d` up to f32 summation order.

mod kernel;
mod winograd;

use rayon::prelude::*;

use crate::{DspnetError, Result};
pub(crate) use kernel::{has_simd_kernel, Epilogue, KernelFn};

/// The fast path's configuration in words, for reports.
pub(crate) fn describe() -> String {
    let kernel = if has_simd_kernel() { "avx2+fma" } else { "portable" };
    let m = winograd_m();
    let wg = if m == 0 { "direct".to_string() } else { format!("Winograd F({m},3)") };
    format!("{kernel} {MR}x{NR} micro-kernel; 1x1 and strided convolutions implicit GEMM; stride-1 3x3 {wg}")
}

/// The micro-kernel for this CPU (AVX2+FMA where available, portable otherwise).
pub(crate) fn kernel_for_this_cpu() -> KernelFn {
    kernel::select()
}

/// Output pixels per micro-tile.
pub(crate) const MR: usize = 6;
/// Output channels per micro-tile (and per packed weight panel).
pub(crate) const NR: usize = 16;
/// Input rows (channels of one tap) per k-block: the weight block (`KC × NR` floats, 16 KiB) stays in L1.
const KC: usize = 256;
/// Largest number of output pixels one task handles (a multiple of `MR`): its input rows for one k-block
/// (`NC_MAX × KC` floats) stay in L2.
const NC_MAX: usize = 264;

/// Output panels per group: a chunk's destination block for one group (`NC_MAX × MC_PANELS·NR` floats,
/// 270 KiB) stays in L2 while the k-blocks accumulate into it.
const MC_PANELS: usize = 16;

/// Zeros read for out-of-image taps and padding rows of partial tiles.
static ZEROS: [f32; KC] = [0.0; KC];

/// One row of a packed weight panel: `NR` output channels, cache-line aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct Row(pub [f32; NR]);

/// Activations of `n` images, `h × w` pixels of `c` channels, stored `[n][h][w][c]`.
pub(crate) struct Nhwc {
    pub data: Vec<f32>,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Nhwc {
    /// From `[n][c][h][w]`.
    pub fn from_nchw(src: &[f32], n: usize, c: usize, h: usize, w: usize) -> Nhwc {
        assert_eq!(src.len(), n * c * h * w);
        if c == 1 {
            return Nhwc { data: src.to_vec(), n, h, w, c };
        }
        let hw = h * w;
        let mut data = vec![0f32; src.len()];
        data.par_chunks_mut(w * c).enumerate().for_each(|(row, out)| {
            let (b, y) = (row / h, row % h);
            for ch in 0..c {
                let s = &src[(b * c + ch) * hw + y * w..][..w];
                for (x, v) in s.iter().enumerate() {
                    out[x * c + ch] = *v;
                }
            }
        });
        Nhwc { data, n, h, w, c }
    }

    /// To `[n][c][h][w]`.
    pub fn to_nchw(&self) -> Vec<f32> {
        let (c, h, w) = (self.c, self.h, self.w);
        let hw = h * w;
        let mut out = vec![0f32; self.data.len()];
        if c == 0 || hw == 0 {
            return out;
        }
        out.par_chunks_mut(hw).enumerate().for_each(|(plane, dst)| {
            let (b, ch) = (plane / c, plane % c);
            let src = &self.data[b * hw * c..][..hw * c];
            for (p, d) in dst.iter_mut().enumerate() {
                *d = src[p * c + ch];
            }
        });
        out
    }
}

/// Where the packed weight row of GEMM row `k` (= tap·`seg` + channel) and output panel `p` lives.
///
/// Rows are split into segments of `seg` (one tap's channels), segments into k-blocks of at most `KC`
/// rows, and a k-block stores all panels one after the other, in the order the driver reads them
/// (k-block, then panel, then rows): the weights stream through memory sequentially.
#[inline]
pub(crate) fn row_index(k: usize, p: usize, seg: usize, npanels: usize) -> usize {
    let (t, ci) = (k / seg, k % seg);
    let c0 = ci / KC * KC;
    let kc = KC.min(seg - c0);
    (t * seg + c0) * npanels + p * kc + (ci - c0)
}

/// A raw pointer that may cross into rayon tasks writing disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// (A method, so that closures capture the whole `SendPtr`, not its raw-pointer field.)
    #[inline(always)]
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A convolution packed for the fast path.
pub(crate) struct PackedConv {
    cout: usize,
    cin: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    /// Kernel taps `(ky, kx)` in packing order: the centre first (for stride-1 "same" convolutions it
    /// never leaves the image, so the first k-block initialises every tile).
    taps: Vec<(usize, usize)>,
    /// Few input channels (the stem): build `[pixel][tap·cin]` patches, then run as a 1×1 convolution.
    im2col: bool,
    /// Rows per panel: `taps · cin`.
    kdim: usize,
    /// `[cout / NR][kdim]` rows; output channels past `cout` are zero.
    w: Vec<Row>,
    /// `[cout / NR]`.
    bias: Vec<Row>,
    /// Stride-1 3×3: the Winograd form, used instead of the direct one.
    winograd: Option<winograd::Winograd>,
}

/// Winograd output tile size for stride-1 3×3 convolutions, read once: `DSPNET_WINOGRAD` = 0 (direct
/// convolution: least memory, 4× fewer 3×3 weights than F(4,3)), 2 (F(2,3): 1.8× the direct weights) or
/// 4 (F(4,3), the default: fastest, 4× the direct weights).
fn winograd_m() -> usize {
    static M: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *M.get_or_init(|| match std::env::var("DSPNET_WINOGRAD").as_deref() {
        Ok("0") => 0,
        Ok("2") => 2,
        Ok("4") => 4,
        _ => 4,
    })
}

impl PackedConv {
    /// Pack `weight` `[cout][cin][kh][kw]` (and `bias` `[cout]`, zero if absent).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        weight: &[f32],
        bias: Option<&[f32]>,
        cout: usize,
        cin: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        pad: usize,
        dil: usize,
    ) -> Result<Self> {
        Self::with_winograd(weight, bias, cout, cin, kh, kw, stride, pad, dil, winograd_m())
    }

    /// As [`new`](Self::new) with Winograd F(`m`, 3) for stride-1 3×3 convolutions (`m` = 0: direct).
    #[allow(clippy::too_many_arguments)]
    pub fn with_winograd(
        weight: &[f32],
        bias: Option<&[f32]>,
        cout: usize,
        cin: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        pad: usize,
        dil: usize,
        m: usize,
    ) -> Result<Self> {
        if weight.len() != cout * cin * kh * kw
            || bias.is_some_and(|b| b.len() != cout)
            || stride == 0
            || dil == 0
            || cout == 0
            || cin == 0
        {
            return Err(DspnetError::Shape(format!(
                "cannot pack a {cout}x{cin}x{kh}x{kw} convolution from {} weights",
                weight.len()
            )));
        }
        let (cy, cx) = (kh / 2, kw / 2);
        let mut taps = vec![(cy, cx)];
        for ky in 0..kh {
            for kx in 0..kw {
                if (ky, kx) != (cy, cx) {
                    taps.push((ky, kx));
                }
            }
        }
        let kdim = taps.len() * cin;
        let panels = cout.div_ceil(NR);
        let im2col = cin < 8 && kh * kw > 1;
        let seg = if im2col { kdim } else { cin };
        let mut b = vec![Row([0.0; NR]); panels];
        if let Some(bias) = bias {
            for (co, v) in bias.iter().enumerate() {
                b[co / NR].0[co % NR] = *v;
            }
        }
        let winograd = (m > 0 && winograd::Winograd::applies(cout, cin, kh, kw, stride, pad, dil))
            .then(|| winograd::Winograd::new(m, weight, &b, cout, cin, dil));
        // Winograd convolutions keep only their transformed weights.
        let mut w = vec![Row([0.0; NR]); if winograd.is_some() { 0 } else { panels * kdim }];
        for p in 0..if winograd.is_some() { 0 } else { panels } {
            for (t, &(ky, kx)) in taps.iter().enumerate() {
                for ci in 0..cin {
                    let row = &mut w[row_index(t * cin + ci, p, seg, panels)].0;
                    for (j, v) in row.iter_mut().enumerate() {
                        let co = p * NR + j;
                        if co < cout {
                            *v = weight[((co * cin + ci) * kh + ky) * kw + kx];
                        }
                    }
                }
            }
        }
        Ok(PackedConv { cout, cin, kh, kw, stride, pad, dil, taps, im2col, kdim, w, bias: b, winograd })
    }

    /// (cout, cin, kh, kw).
    pub fn dims(&self) -> (usize, usize, usize, usize) {
        (self.cout, self.cin, self.kh, self.kw)
    }

    /// The weights back in `[cout][cin][kh][kw]` order (exact, except for Winograd convolutions: see
    /// [`winograd::Winograd::weight`]).
    pub fn unpacked_weight(&self) -> Vec<f32> {
        if let Some(wg) = &self.winograd {
            return wg.weight();
        }
        let (cout, cin, kh, kw) = (self.cout, self.cin, self.kh, self.kw);
        let mut out = vec![0f32; cout * cin * kh * kw];
        for co in 0..cout {
            for (t, &(ky, kx)) in self.taps.iter().enumerate() {
                for ci in 0..cin {
                    let seg = if self.im2col { self.kdim } else { cin };
                    out[((co * cin + ci) * kh + ky) * kw + kx] =
                        self.w[row_index(t * cin + ci, co / NR, seg, cout.div_ceil(NR))].0[co % NR];
                }
            }
        }
        out
    }

    pub fn unpacked_bias(&self) -> Vec<f32> {
        (0..self.cout).map(|co| self.bias[co / NR].0[co % NR]).collect()
    }

    fn out_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let span_h = self.dil * (self.kh - 1) + 1;
        let span_w = self.dil * (self.kw - 1) + 1;
        if h + 2 * self.pad < span_h || w + 2 * self.pad < span_w {
            return Err(DspnetError::Shape(format!(
                "{h}x{w} input is smaller than the {}x{} kernel",
                self.kh, self.kw
            )));
        }
        Ok(((h + 2 * self.pad - span_h) / self.stride + 1, (w + 2 * self.pad - span_w) / self.stride + 1))
    }

    /// Input pixel feeding output pixel `(yo, xo)` through tap `(ky, kx)`, if inside the image.
    #[inline(always)]
    fn source(&self, yo: usize, xo: usize, ky: usize, kx: usize, h: usize, w: usize) -> Option<(usize, usize)> {
        let y = (yo * self.stride + ky * self.dil).wrapping_sub(self.pad);
        let x = (xo * self.stride + kx * self.dil).wrapping_sub(self.pad);
        (y < h && x < w).then_some((y, x))
    }

    /// `[pixel][tap·cin]` patches, zero outside the image.
    fn patches(&self, x: &Nhwc, ho: usize, wo: usize) -> Vec<f32> {
        let (cin, kdim) = (self.cin, self.kdim);
        let mut col = vec![0f32; x.n * ho * wo * kdim];
        col.par_chunks_mut(wo * kdim).enumerate().for_each(|(row, out)| {
            let (b, yo) = (row / ho, row % ho);
            for xo in 0..wo {
                for (t, &(ky, kx)) in self.taps.iter().enumerate() {
                    if let Some((y, xx)) = self.source(yo, xo, ky, kx, x.h, x.w) {
                        let s = ((b * x.h + y) * x.w + xx) * cin;
                        out[xo * kdim + t * cin..][..cin].copy_from_slice(&x.data[s..s + cin]);
                    }
                }
            }
        });
        col
    }

    /// `relu?(conv(x) + bias [+ residual])`. The residual, if any, must have the output's shape; its
    /// buffer becomes the output.
    pub fn forward(&self, x: &Nhwc, residual: Option<Nhwc>, relu: bool, kern: KernelFn) -> Result<Nhwc> {
        if x.c != self.cin {
            return Err(DspnetError::Shape(format!("convolution expects {} input channels, got {}", self.cin, x.c)));
        }
        if let Some(wg) = &self.winograd {
            return wg.forward(x, residual, relu, kern);
        }
        let (ho, wo) = self.out_size(x.h, x.w)?;
        let npix = x.n * ho * wo;
        let cout = self.cout;
        let has_residual = residual.is_some();
        let mut out = match residual {
            Some(r) => {
                if (r.n, r.h, r.w, r.c) != (x.n, ho, wo, cout) {
                    return Err(DspnetError::Shape("residual does not match the convolution output".into()));
                }
                r.data
            }
            None => Vec::with_capacity(npix * cout),
        };
        if npix == 0 {
            return Ok(Nhwc { data: out, n: x.n, h: ho, w: wo, c: cout });
        }
        let patches;
        // (source buffer, channels per tap row, number of taps)
        let (src, cin, ntaps): (&[f32], usize, usize) = if self.im2col {
            patches = self.patches(x, ho, wo);
            (&patches, self.kdim, 1)
        } else {
            (&x.data, self.cin, self.taps.len())
        };
        let threads = rayon::current_num_threads().max(1);
        let mut nchunks = npix.div_ceil(NC_MAX);
        if npix >= threads * MR * 8 {
            nchunks = nchunks.div_ceil(threads) * threads;
        }
        let nc = npix.div_ceil(nchunks).div_ceil(MR) * MR;
        let nchunks = npix.div_ceil(nc);
        let dst = SendPtr(out.as_mut_ptr());
        let npanels = cout.div_ceil(NR);
        let im2col = self.im2col;
        (0..nchunks).into_par_iter().for_each(|chunk| {
            let q0 = chunk * nc;
            let len = nc.min(npix - q0);
            // Row offsets (in floats) of the input pixel each output pixel reads per tap; -1 outside.
            let mut offs = vec![-1isize; ntaps * len];
            for i in 0..len {
                let q = q0 + i;
                if im2col {
                    offs[i] = (q * cin) as isize;
                    continue;
                }
                let (b, rem) = (q / (ho * wo), q % (ho * wo));
                let (yo, xo) = (rem / wo, rem % wo);
                for (t, &(ky, kx)) in self.taps.iter().enumerate() {
                    if let Some((y, xx)) = self.source(yo, xo, ky, kx, x.h, x.w) {
                        offs[t * len + i] = (((b * x.h + y) * x.w + xx) * cin) as isize;
                    }
                }
            }
            let kblocks: Vec<(usize, usize, usize)> =
                (0..ntaps).flat_map(|t| (0..cin).step_by(KC).map(move |c0| (t, c0, KC.min(cin - c0)))).collect();
            let nk = kblocks.len();
            // Panel groups keep the chunk's destination block (len × MC_PANELS·NR) in L2 across k-blocks.
            for pg in (0..npanels).step_by(MC_PANELS) {
                for (bi, &(t, c0, kc)) in kblocks.iter().enumerate() {
                    let (first, last) = (bi == 0, bi + 1 == nk);
                    let toffs = &offs[t * len..][..len];
                    for p in pg..npanels.min(pg + MC_PANELS) {
                        let wp = unsafe { self.w.as_ptr().add(row_index(t * cin + c0, p, cin, npanels)) };
                        let ep = Epilogue {
                            load_c: !first || has_residual,
                            bias: last.then(|| &self.bias[p]),
                            relu: last && relu,
                        };
                        let cols = NR.min(cout - p * NR);
                        for i0 in (0..len).step_by(MR) {
                            let rows = MR.min(len - i0);
                            let mut a = [ZEROS.as_ptr(); MR];
                            let mut any = false;
                            for (r, ar) in a.iter_mut().enumerate().take(rows) {
                                let o = toffs[i0 + r];
                                if o >= 0 {
                                    *ar = unsafe { src.as_ptr().add(o as usize + c0) };
                                    any = true;
                                }
                            }
                            if !any && !first && !last {
                                continue;
                            }
                            let kc = if any { kc } else { 0 };
                            unsafe { kern(kc, &a, wp, dst.get().add((q0 + i0) * cout + p * NR), cout, rows, cols, ep) };
                        }
                    }
                }
            }
        });
        // Every output value was written by the first k-block (or was the residual).
        unsafe { out.set_len(npix * cout) };
        Ok(Nhwc { data: out, n: x.n, h: ho, w: wo, c: cout })
    }
}

/// 3×3 max-pool, stride 2, padding 1 (padding never wins: every window holds a real value).
pub(crate) fn max_pool_3x3s2(x: &Nhwc) -> Nhwc {
    let (n, h, w, c) = (x.n, x.h, x.w, x.c);
    let ho = (h + 2 - 3) / 2 + 1;
    let wo = (w + 2 - 3) / 2 + 1;
    let mut out = vec![0f32; n * ho * wo * c];
    out.par_chunks_mut(wo * c).enumerate().for_each(|(row, dst)| {
        let (b, yo) = (row / ho, row % ho);
        for xo in 0..wo {
            let d = &mut dst[xo * c..][..c];
            d.fill(f32::NEG_INFINITY);
            for y in (2 * yo).saturating_sub(1)..(2 * yo + 2).min(h) {
                for xx in (2 * xo).saturating_sub(1)..(2 * xo + 2).min(w) {
                    let s = &x.data[((b * h + y) * w + xx) * c..][..c];
                    for (dv, sv) in d.iter_mut().zip(s) {
                        *dv = dv.max(*sv);
                    }
                }
            }
        }
    });
    Nhwc { data: out, n, h: ho, w: wo, c }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        n: usize,
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        dil: usize,
        residual: bool,
        relu: bool,
        kern: KernelFn,
    ) {
        let x = rand(n * cin * h * w, 1);
        let wt = rand(cout * cin * k * k, 2);
        let b = rand(cout, 3);
        let wg = WG.with(|c| c.get());
        let conv = PackedConv::with_winograd(&wt, Some(&b), cout, cin, k, k, stride, pad, dil, wg).unwrap();
        if wg > 0 && k == 3 && stride == 1 && pad == dil && cin % 16 == 0 && cout % 16 == 0 {
            assert!(conv.winograd.is_some());
        }
        let xt = Tensor::from_slice(&x, (n, cin, h, w), &Device::Cpu).unwrap();
        let wtt = Tensor::from_slice(&wt, (cout, cin, k, k), &Device::Cpu).unwrap();
        let mut want = xt
            .conv2d(&wtt, pad, stride, dil, 1)
            .unwrap()
            .broadcast_add(&Tensor::from_slice(&b, (1, cout, 1, 1), &Device::Cpu).unwrap())
            .unwrap();
        let (_, _, ho, wo) = want.dims4().unwrap();
        let res = rand(n * cout * ho * wo, 4);
        if residual {
            want = (want + Tensor::from_slice(&res, (n, cout, ho, wo), &Device::Cpu).unwrap()).unwrap();
        }
        if relu {
            want = want.relu().unwrap();
        }
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let r = residual.then(|| Nhwc::from_nchw(&res, n, cout, ho, wo));
        let got = conv.forward(&Nhwc::from_nchw(&x, n, cin, h, w), r, relu, kern).unwrap();
        assert_eq!((got.h, got.w, got.c), (ho, wo, cout));
        let got = got.to_nchw();
        let (mut num, mut den) = (0f64, 0f64);
        for (g, w) in got.iter().zip(&want) {
            num += ((g - w) as f64).powi(2);
            den += (*w as f64).powi(2);
        }
        let rel = (num / den).sqrt();
        println!(
            "wg{} n{n} cin{cin} {h}x{w} cout{cout} k{k} s{stride} p{pad} d{dil}: rel {rel:.2e}",
            WG.with(|c| c.get())
        );
        assert!(
            rel < if WG.with(|c| c.get()) == 4 { 1e-5 } else { 1e-6 },
            "n{n} cin{cin} {h}x{w} cout{cout} k{k} s{stride} p{pad} d{dil}: rel {rel}"
        );
        let back = conv.unpacked_weight();
        if conv.winograd.is_none() {
            assert_eq!(back, wt);
        } else {
            let err = back.iter().zip(&wt).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 1e-6, "Winograd weights recovered with error {err}");
        }
    }

    thread_local!(static WG: std::cell::Cell<usize> = const { std::cell::Cell::new(0) });

    #[test]
    fn matches_candle_conv2d() {
        for (kern, wg) in
            [(kernel::select(), 0), (kernel::portable as KernelFn, 0), (kernel::select(), 2), (kernel::select(), 4)]
        {
            WG.with(|c| c.set(wg));
            check(1, 32, 9, 11, 48, 1, 1, 0, 1, false, true, kern);
            check(2, 300, 7, 5, 40, 1, 1, 0, 1, true, true, kern);
            check(1, 24, 10, 13, 32, 1, 2, 0, 1, false, false, kern);
            check(2, 20, 12, 14, 16, 3, 1, 1, 1, false, true, kern);
            check(1, 270, 12, 14, 32, 3, 1, 2, 2, true, true, kern);
            check(1, 16, 16, 16, 32, 3, 1, 4, 4, false, true, kern);
            check(1, 16, 15, 13, 32, 3, 2, 1, 1, false, true, kern);
            check(2, 1, 30, 26, 64, 7, 2, 3, 1, false, true, kern);
            check(1, 3, 24, 20, 64, 7, 2, 3, 1, false, true, kern);
            check(1, 64, 3, 3, 24, 3, 1, 4, 4, false, false, kern);
            check(2, 64, 3, 3, 32, 3, 1, 4, 4, false, false, kern);
            check(1, 32, 19, 17, 48, 3, 1, 3, 3, false, true, kern);
            check(1, 256, 32, 32, 256, 3, 1, 2, 2, false, true, kern);
            check(1, 512, 32, 32, 512, 3, 1, 4, 4, false, true, kern);
            check(1, 64, 64, 64, 64, 3, 1, 1, 1, false, true, kern);
            check(2, 32, 9, 10, 32, 3, 1, 2, 2, true, true, kern);
        }
    }

    #[test]
    fn max_pool_matches_candle() {
        let (n, c, h, w) = (2, 5, 9, 12);
        let x: Vec<f32> = rand(n * c * h * w, 7).iter().map(|v| v.max(0.0)).collect();
        let t = Tensor::from_slice(&x, (n, c, h, w), &Device::Cpu).unwrap();
        let want =
            t.pad_with_zeros(2, 1, 1).unwrap().pad_with_zeros(3, 1, 1).unwrap().max_pool2d_with_stride(3, 2).unwrap();
        let got = max_pool_3x3s2(&Nhwc::from_nchw(&x, n, c, h, w));
        assert_eq!(got.to_nchw(), want.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}

/// Convolution throughput on the backbone's shapes (best of `CT_REPS` runs on `CT_THREADS` threads):
/// `cargo test --release --lib conv_throughput -- --ignored --nocapture`.
#[cfg(test)]
mod throughput {
    use super::*;
    use std::time::Instant;

    #[test]
    #[ignore]
    fn conv_throughput() {
        let threads: usize = std::env::var("CT_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
        let reps: usize = std::env::var("CT_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        // (name, cin, h, cout, k, dil, residual)
        let shapes = [
            ("l3 conv1 1x1 1024->256", 1024, 32, 256, 1, 1, false),
            ("l3 conv2 3x3 d2 256->256", 256, 32, 256, 3, 2, false),
            ("l3 conv3 1x1 256->1024 +res", 256, 32, 1024, 1, 1, true),
            ("l4 conv1 1x1 2048->512", 2048, 32, 512, 1, 1, false),
            ("l4 conv2 3x3 d4 512->512", 512, 32, 512, 3, 4, false),
            ("l4 conv3 1x1 512->2048 +res", 512, 32, 2048, 1, 1, true),
            ("l4 ds 1x1 1024->2048", 1024, 32, 2048, 1, 1, false),
        ];
        let kern = kernel::select();
        for (name, cin, h, cout, k, dil, residual) in shapes {
            let x = Nhwc { data: (0..h * h * cin).map(|i| (i % 13) as f32 * 0.01).collect(), n: 1, h, w: h, c: cin };
            let w: Vec<f32> = (0..cout * cin * k * k).map(|i| (i % 7) as f32 * 0.01).collect();
            // Several copies of the weights, cycled, so that they come from memory as in the network.
            let convs: Vec<PackedConv> =
                (0..4).map(|_| PackedConv::new(&w, None, cout, cin, k, k, 1, dil * (k / 2), dil).unwrap()).collect();
            let mut best = f64::MAX;
            pool.install(|| {
                for r in 0..reps {
                    let res = residual.then(|| Nhwc { data: vec![0.5; h * h * cout], n: 1, h, w: h, c: cout });
                    let t = Instant::now();
                    let y = convs[r % 4].forward(&x, res, true, kern).unwrap();
                    best = best.min(t.elapsed().as_secs_f64());
                    std::hint::black_box(&y);
                }
            });
            let flop = 2.0 * (h * h * cin * cout * k * k) as f64;
            println!("{name:<30} {:7.2} ms {:6.1} GFLOP/s (direct-convolution FLOPs)", best * 1e3, flop / best / 1e9);
        }
    }
}

/// Micro-kernel throughput with everything in L1: `cargo test --release --lib kernel_peak -- --ignored --nocapture`.
#[cfg(test)]
mod kernel_peak {
    use super::*;
    use std::time::Instant;

    #[test]
    #[ignore]
    fn kernel_peak() {
        let kern = kernel::select();
        for kc in [64usize, 128, 256] {
            let a: Vec<f32> = (0..MR * kc).map(|i| (i % 7) as f32 * 0.01).collect();
            let w = vec![Row([0.01; NR]); kc];
            let mut c = vec![0f32; MR * NR];
            let ptrs: [*const f32; MR] = std::array::from_fn(|i| unsafe { a.as_ptr().add(i * kc) });
            let ep = Epilogue { load_c: true, bias: None, relu: false };
            let reps = 200_000;
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..reps {
                    unsafe { kern(kc, &ptrs, w.as_ptr(), c.as_mut_ptr(), NR, MR, NR, ep) };
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("kc {kc}: {:.1} GFLOP/s", 2.0 * (MR * NR * kc * reps) as f64 / best / 1e9);
        }
    }
}
