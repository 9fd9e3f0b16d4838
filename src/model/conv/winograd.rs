//! Winograd F(m×m, 3×3) for the stride-1 3×3 convolutions (dilated or not), on channels-last activations.
//!
//! A dilated convolution is an ordinary one on each of the d×d interleaved sub-grids of the image, so a
//! tile is m×m outputs `d` pixels apart and reads (m+2)×(m+2) inputs `d` apart. Per tile and channel the
//! input is transformed (`Bᵀ d B`), multiplied per transform position ξ by the transformed weights
//! (`U_ξ = G g Gᵀ`, computed in f64 and packed once at load time) — (m+2)² independent GEMMs on the same
//! micro-kernel as the direct path — and transformed back (`Aᵀ M A`) with bias and ReLU fused.
//! F(2,3) needs 2.25× and F(4,3) 4× fewer multiplications than the direct convolution.

use rayon::prelude::*;

use super::{row_index, Epilogue, KernelFn, Nhwc, Row, SendPtr, KC, MR, NR, ZEROS};
use crate::{DspnetError, Result};

/// Lanes of one channel block in the transforms.
const L: usize = NR;
type V = [f32; L];

/// The transform matrices of F(m, 3), α = m + 2 (Lavin & Gray 2016).
struct Matrices<const A: usize, const M: usize> {
    bt: [[f32; A]; A],
    at: [[f32; A]; M],
    g: [[f64; 3]; A],
}

const F2: Matrices<4, 2> = Matrices {
    bt: [[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, 1.0, 0.0, -1.0]],
    at: [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]],
    g: [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]],
};

const F4: Matrices<6, 4> = Matrices {
    bt: [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ],
    at: [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ],
    g: [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ],
};

/// Top-left output pixel of a tile: image, row, column (the tile's outputs are `dil` apart).
#[derive(Clone, Copy)]
struct Tile {
    b: usize,
    y: usize,
    x: usize,
}

/// A 3×3 stride-1 convolution (padding = dilation) packed for Winograd F(m, 3).
pub(crate) struct Winograd {
    m: usize,
    cin: usize,
    cout: usize,
    dil: usize,
    /// U_ξ, rows laid out by [`row_index`] with one segment per ξ.
    u: Vec<Row>,
    bias: Vec<Row>,
}

#[allow(clippy::needless_range_loop)]
fn weight_transform<const A: usize, const M: usize>(
    mt: &Matrices<A, M>,
    g: &[f32],
    cout: usize,
    cin: usize,
) -> Vec<Row> {
    let panels = cout / NR;
    let mut u: Vec<Row> = vec![Row([0.0; NR]); A * A * panels * cin];
    let up = SendPtr(u.as_mut_ptr() as *mut f32);
    // Each panel owns its rows: transform panels in parallel.
    (0..panels).into_par_iter().for_each(|p| {
        for co in p * NR..(p + 1) * NR {
            for ci in 0..cin {
                let k = &g[(co * cin + ci) * 9..][..9];
                // tmp = G g (A×3), U = tmp Gᵀ (A×A), in f64.
                let mut tmp = [[0f64; 3]; A];
                for (i, row) in tmp.iter_mut().enumerate() {
                    for (j, t) in row.iter_mut().enumerate() {
                        *t = mt.g[i][0] * k[j] as f64 + mt.g[i][1] * k[3 + j] as f64 + mt.g[i][2] * k[6 + j] as f64;
                    }
                }
                for i in 0..A {
                    for j in 0..A {
                        let v = tmp[i][0] * mt.g[j][0] + tmp[i][1] * mt.g[j][1] + tmp[i][2] * mt.g[j][2];
                        let r = row_index((i * A + j) * cin + ci, p, cin, panels);
                        unsafe { *up.get().add(r * NR + co % NR) = v as f32 };
                    }
                }
            }
        }
    });
    u
}

/// The 3×3 kernels back from U (least squares in f64: g = P U Pᵀ with P = (GᵀG)⁻¹Gᵀ), `[cout][cin][3][3]`:
/// the original f32 weights up to the rounding of U (relative error ~1e-7).
fn weight_untransform<const A: usize, const M: usize>(
    mt: &Matrices<A, M>,
    u: &[Row],
    cout: usize,
    cin: usize,
) -> Vec<f32> {
    // GᵀG (3×3), its inverse by cofactors, then P = (GᵀG)⁻¹Gᵀ (3×A).
    let mut gtg = [[0f64; 3]; 3];
    for (r, row) in gtg.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = (0..A).map(|i| mt.g[i][r] * mt.g[i][c]).sum();
        }
    }
    let m = gtg;
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    let mut inv = [[0f64; 3]; 3];
    for (r, row) in inv.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            let (r1, r2, c1, c2) = ((c + 1) % 3, (c + 2) % 3, (r + 1) % 3, (r + 2) % 3);
            *v = (m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]) / det;
        }
    }
    let mut pm = [[0f64; A]; 3];
    for (r, row) in pm.iter_mut().enumerate() {
        for (i, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|c| inv[r][c] * mt.g[i][c]).sum();
        }
    }
    let panels = cout / NR;
    let mut out = vec![0f32; cout * cin * 9];
    for co in 0..cout {
        for ci in 0..cin {
            let mut uu = [[0f64; A]; A];
            for (i, row) in uu.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = u[row_index((i * A + j) * cin + ci, co / NR, cin, panels)].0[co % NR] as f64;
                }
            }
            for r in 0..3 {
                for c in 0..3 {
                    let mut s = 0f64;
                    for i in 0..A {
                        for j in 0..A {
                            s += pm[r][i] * uu[i][j] * pm[c][j];
                        }
                    }
                    out[(co * cin + ci) * 9 + r * 3 + c] = s as f32;
                }
            }
        }
    }
    out
}

impl Winograd {
    /// Whether a convolution can go through Winograd.
    pub fn applies(cout: usize, cin: usize, kh: usize, kw: usize, stride: usize, pad: usize, dil: usize) -> bool {
        kh == 3 && kw == 3 && stride == 1 && pad == dil && cin % L == 0 && cout % NR == 0
    }

    /// `weight` `[cout][cin][3][3]`, `bias` `[cout]`; `m` is 2 or 4.
    pub fn new(m: usize, weight: &[f32], bias: &[Row], cout: usize, cin: usize, dil: usize) -> Self {
        let u = match m {
            2 => weight_transform(&F2, weight, cout, cin),
            4 => weight_transform(&F4, weight, cout, cin),
            _ => panic!("Winograd F({m},3) is not implemented"),
        };
        Winograd { m, cin, cout, dil, u, bias: bias.to_vec() }
    }

    /// The weights `[cout][cin][3][3]`, recovered from U (see [`weight_untransform`]).
    pub fn weight(&self) -> Vec<f32> {
        match self.m {
            2 => weight_untransform(&F2, &self.u, self.cout, self.cin),
            _ => weight_untransform(&F4, &self.u, self.cout, self.cin),
        }
    }

    /// `relu?(conv(x) + bias [+ residual])`; the residual's buffer becomes the output.
    pub fn forward(&self, x: &Nhwc, residual: Option<Nhwc>, relu: bool, kern: KernelFn) -> Result<Nhwc> {
        if x.c != self.cin {
            return Err(DspnetError::Shape(format!("convolution expects {} input channels, got {}", self.cin, x.c)));
        }
        if let Some(r) = &residual {
            if (r.n, r.h, r.w, r.c) != (x.n, x.h, x.w, self.cout) {
                return Err(DspnetError::Shape("residual does not match the convolution output".into()));
            }
        }
        match self.m {
            2 => self.run(&F2, x, residual, relu, kern),
            _ => self.run(&F4, x, residual, relu, kern),
        }
    }

    fn run<const A: usize, const M: usize>(
        &self,
        mt: &Matrices<A, M>,
        x: &Nhwc,
        residual: Option<Nhwc>,
        relu: bool,
        kern: KernelFn,
    ) -> Result<Nhwc> {
        let (n, h, w, d) = (x.n, x.h, x.w, self.dil);
        let (cin, cout) = (self.cin, self.cout);
        // Tiles: per image and residue class (ry, rx) of the d×d sub-grids, m×m blocks of that sub-grid.
        let mut tiles = Vec::new();
        for b in 0..n {
            for ry in 0..d.min(h) {
                for rx in 0..d.min(w) {
                    let (hs, ws) = ((h - ry).div_ceil(d), (w - rx).div_ceil(d));
                    for ty in 0..hs.div_ceil(M) {
                        for tx in 0..ws.div_ceil(M) {
                            tiles.push(Tile { b, y: ry + d * M * ty, x: rx + d * M * tx });
                        }
                    }
                }
            }
        }
        let nt = tiles.len();
        let xi = A * A;
        // 1. Input transform: V[ξ][tile][cin].
        let mut v: Vec<f32> = Vec::with_capacity(xi * nt * cin);
        let vp = SendPtr(v.as_mut_ptr());
        let simd = super::has_simd_kernel();
        tiles.par_chunks(8).enumerate().for_each(|(chunk, ts)| {
            for (k, tile) in ts.iter().enumerate() {
                let t = chunk * 8 + k;
                let dst = unsafe { vp.get().add(t * cin) };
                if simd {
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        if A == 6 {
                            f4_avx2::input_tile(x, *tile, d, dst, nt * cin)
                        } else {
                            input_tile_avx2(mt, x, *tile, d, dst, nt * cin)
                        }
                    };
                } else {
                    unsafe { input_tile(mt, x, *tile, d, dst, nt * cin) };
                }
            }
        });
        unsafe { v.set_len(xi * nt * cin) };
        // 2. Per ξ: M_ξ[tile][cout] = V_ξ[tile][cin] · U_ξ[cin][cout].
        let mut mm: Vec<f32> = Vec::with_capacity(xi * nt * cout);
        let mp = SendPtr(mm.as_mut_ptr());
        let panels = cout / NR;
        let rows_per_item = super::NC_MAX;
        let items_per_xi = nt.div_ceil(rows_per_item);
        (0..xi * items_per_xi).into_par_iter().for_each(|item| {
            let (e, r0) = (item / items_per_xi, (item % items_per_xi) * rows_per_item);
            let len = rows_per_item.min(nt - r0);
            let vx = &v[e * nt * cin..][..nt * cin];
            for c0 in (0..cin).step_by(KC) {
                let kc = KC.min(cin - c0);
                let ep = Epilogue { load_c: c0 > 0, bias: None, relu: false };
                for p in 0..panels {
                    let wp = unsafe { self.u.as_ptr().add(row_index(e * cin + c0, p, cin, panels)) };
                    for i0 in (0..len).step_by(MR) {
                        let rows = MR.min(len - i0);
                        let mut a = [ZEROS.as_ptr(); MR];
                        for (r, ar) in a.iter_mut().enumerate().take(rows) {
                            *ar = unsafe { vx.as_ptr().add((r0 + i0 + r) * cin + c0) };
                        }
                        unsafe {
                            kern(kc, &a, wp, mp.get().add((e * nt + r0 + i0) * cout + p * NR), cout, rows, NR, ep)
                        };
                    }
                }
            }
        });
        unsafe { mm.set_len(xi * nt * cout) };
        drop(v);
        // 3. Output transform with bias and ReLU: every output pixel belongs to exactly one tile.
        let has_residual = residual.is_some();
        let mut out: Vec<f32> = match residual {
            Some(r) => r.data,
            None => Vec::with_capacity(n * h * w * cout),
        };
        let op = SendPtr(out.as_mut_ptr());
        tiles.par_chunks(8).enumerate().for_each(|(chunk, ts)| {
            for (k, tile) in ts.iter().enumerate() {
                let t = chunk * 8 + k;
                let src = &mm[t * cout..];
                if simd {
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        if A == 6 {
                            f4_avx2::output_tile(
                                src.as_ptr(),
                                nt * cout,
                                *tile,
                                d,
                                &self.bias,
                                has_residual,
                                relu,
                                op.get(),
                                h,
                                w,
                                cout,
                            )
                        } else {
                            output_tile_avx2(
                                mt,
                                src,
                                nt * cout,
                                *tile,
                                d,
                                &self.bias,
                                has_residual,
                                relu,
                                op.get(),
                                h,
                                w,
                                cout,
                            )
                        }
                    };
                } else {
                    unsafe {
                        output_tile(mt, src, nt * cout, *tile, d, &self.bias, has_residual, relu, op.get(), h, w, cout)
                    };
                }
            }
        });
        unsafe { out.set_len(n * h * w * cout) };
        Ok(Nhwc { data: out, n, h, w, c: cout })
    }
}

/// Transform one tile's inputs (all channels) into `dst + ξ·stride + channel`.
#[inline(always)]
unsafe fn input_tile<const A: usize, const M: usize>(
    mt: &Matrices<A, M>,
    x: &Nhwc,
    tile: Tile,
    d: usize,
    dst: *mut f32,
    stride: usize,
) {
    let (h, w, cin) = (x.h, x.w, x.c);
    // Row offsets of the α×α inputs, None outside the image.
    let mut src = [[None::<usize>; A]; A];
    for (u, row) in src.iter_mut().enumerate() {
        let y = (tile.y + d * u).wrapping_sub(d);
        for (vv, s) in row.iter_mut().enumerate() {
            let xx = (tile.x + d * vv).wrapping_sub(d);
            if y < h && xx < w {
                *s = Some(((tile.b * h + y) * w + xx) * cin);
            }
        }
    }
    for c0 in (0..cin).step_by(L) {
        let mut dt = [[[0f32; L]; A]; A];
        for u in 0..A {
            for vv in 0..A {
                if let Some(o) = src[u][vv] {
                    dt[u][vv].copy_from_slice(&x.data[o + c0..][..L]);
                }
            }
        }
        let out = input_transform(&mt.bt, &dt);
        for (e, val) in out.iter().flatten().enumerate() {
            std::ptr::copy_nonoverlapping(val.as_ptr(), dst.add(e * stride + c0), L);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_tile_avx2<const A: usize, const M: usize>(
    mt: &Matrices<A, M>,
    x: &Nhwc,
    tile: Tile,
    d: usize,
    dst: *mut f32,
    stride: usize,
) {
    input_tile(mt, x, tile, d, dst, stride)
}

/// Transform one tile back (all output channels) from `src[ξ·stride + channel]`, add the bias, clamp,
/// and store the outputs inside the image.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn output_tile<const A: usize, const M: usize>(
    mt: &Matrices<A, M>,
    src: &[f32],
    stride: usize,
    tile: Tile,
    d: usize,
    bias: &[Row],
    residual: bool,
    relu: bool,
    out: *mut f32,
    h: usize,
    w: usize,
    cout: usize,
) {
    for (p, b) in bias.iter().enumerate().take(cout / NR) {
        let mut mtile = [[[0f32; L]; A]; A];
        for (e, val) in mtile.iter_mut().flatten().enumerate() {
            val.copy_from_slice(&src[e * stride + p * NR..][..L]);
        }
        let y = output_transform(&mt.at, &mtile);
        for (i, row) in y.iter().enumerate() {
            let yy = tile.y + d * i;
            if yy >= h {
                break;
            }
            for (j, val) in row.iter().enumerate() {
                let xx = tile.x + d * j;
                if xx >= w {
                    break;
                }
                let o = std::slice::from_raw_parts_mut(out.add(((tile.b * h + yy) * w + xx) * cout + p * NR), L);
                for l in 0..L {
                    let mut s = val[l] + b.0[l];
                    if residual {
                        s += o[l];
                    }
                    o[l] = if relu { s.max(0.0) } else { s };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_tile_avx2<const A: usize, const M: usize>(
    mt: &Matrices<A, M>,
    src: &[f32],
    stride: usize,
    tile: Tile,
    d: usize,
    bias: &[Row],
    residual: bool,
    relu: bool,
    out: *mut f32,
    h: usize,
    w: usize,
    cout: usize,
) {
    output_tile(mt, src, stride, tile, d, bias, residual, relu, out, h, w, cout)
}

/// `Bᵀ d B`, lane-wise.
#[inline(always)]
fn input_transform<const A: usize>(bt: &[[f32; A]; A], dt: &[[V; A]; A]) -> [[V; A]; A] {
    let mut tmp = [[[0f32; L]; A]; A];
    for i in 0..A {
        for u in 0..A {
            let c = bt[i][u];
            if c != 0.0 {
                for vv in 0..A {
                    for l in 0..L {
                        tmp[i][vv][l] += c * dt[u][vv][l];
                    }
                }
            }
        }
    }
    let mut out = [[[0f32; L]; A]; A];
    for i in 0..A {
        for j in 0..A {
            for vv in 0..A {
                let c = bt[j][vv];
                if c != 0.0 {
                    for l in 0..L {
                        out[i][j][l] += c * tmp[i][vv][l];
                    }
                }
            }
        }
    }
    out
}

/// `Aᵀ m A`, lane-wise.
#[inline(always)]
fn output_transform<const A: usize, const M: usize>(at: &[[f32; A]; M], m: &[[V; A]; A]) -> [[V; M]; M] {
    let mut tmp = [[[0f32; L]; A]; M];
    for i in 0..M {
        for u in 0..A {
            let c = at[i][u];
            if c != 0.0 {
                for vv in 0..A {
                    for l in 0..L {
                        tmp[i][vv][l] += c * m[u][vv][l];
                    }
                }
            }
        }
    }
    let mut out = [[[0f32; L]; M]; M];
    for i in 0..M {
        for j in 0..M {
            for vv in 0..A {
                let c = at[j][vv];
                if c != 0.0 {
                    for l in 0..L {
                        out[i][j][l] += c * tmp[i][vv][l];
                    }
                }
            }
        }
    }
    out
}

/// F(4,3) transforms with AVX2, written out (the general code above is the reference and the fallback).
#[cfg(target_arch = "x86_64")]
mod f4_avx2 {
    use super::{Nhwc, Row, Tile, NR};
    use std::arch::x86_64::*;

    /// `Bᵀ d` for one column of 6 (F(4,3), points 0, ±1, ±2).
    #[inline(always)]
    unsafe fn bt(d: [__m256; 6]) -> [__m256; 6] {
        let four = _mm256_set1_ps(4.0);
        let five = _mm256_set1_ps(5.0);
        let two = _mm256_set1_ps(2.0);
        let [d0, d1, d2, d3, d4, d5] = d;
        // r0 = 4 d0 - 5 d2 + d4; r5 = 4 d1 - 5 d3 + d5
        let r0 = _mm256_fnmadd_ps(five, d2, _mm256_fmadd_ps(four, d0, d4));
        let r5 = _mm256_fnmadd_ps(five, d3, _mm256_fmadd_ps(four, d1, d5));
        // r1 = (d3 + d4) - 4 (d1 + d2); r2 = (d4 - d3) + 4 (d1 - d2)
        let r1 = _mm256_fnmadd_ps(four, _mm256_add_ps(d1, d2), _mm256_add_ps(d3, d4));
        let r2 = _mm256_fmadd_ps(four, _mm256_sub_ps(d1, d2), _mm256_sub_ps(d4, d3));
        // r3 = (d4 - d2) + 2 (d3 - d1); r4 = (d4 - d2) - 2 (d3 - d1)
        let a = _mm256_sub_ps(d4, d2);
        let b = _mm256_sub_ps(d3, d1);
        let r3 = _mm256_fmadd_ps(two, b, a);
        let r4 = _mm256_fnmadd_ps(two, b, a);
        [r0, r1, r2, r3, r4, r5]
    }

    /// `Aᵀ m` for one column of 6.
    #[inline(always)]
    unsafe fn at(m: [__m256; 6]) -> [__m256; 4] {
        let [m0, m1, m2, m3, m4, m5] = m;
        let s12 = _mm256_add_ps(m1, m2);
        let d12 = _mm256_sub_ps(m1, m2);
        let s34 = _mm256_add_ps(m3, m4);
        let d34 = _mm256_sub_ps(m3, m4);
        let o0 = _mm256_add_ps(_mm256_add_ps(m0, s12), s34);
        let o1 = _mm256_fmadd_ps(_mm256_set1_ps(2.0), d34, d12);
        let o2 = _mm256_fmadd_ps(_mm256_set1_ps(4.0), s34, s12);
        let o3 = _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.0), d34, d12), m5);
        [o0, o1, o2, o3]
    }

    /// Input transform of one tile, all channels, into `dst + ξ·stride + channel`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)]
    pub(super) unsafe fn input_tile(x: &Nhwc, tile: Tile, d: usize, dst: *mut f32, stride: usize) {
        let (h, w, cin) = (x.h, x.w, x.c);
        let zeros = [0f32; 8];
        // Pointers of the 6×6 inputs (channel 0), or to zeros (with a zero channel step) outside.
        let mut src = [[std::ptr::null::<f32>(); 6]; 6];
        let mut step = [[0usize; 6]; 6];
        for u in 0..6 {
            let y = (tile.y + d * u).wrapping_sub(d);
            for v in 0..6 {
                let xx = (tile.x + d * v).wrapping_sub(d);
                if y < h && xx < w {
                    src[u][v] = x.data.as_ptr().add(((tile.b * h + y) * w + xx) * cin);
                    step[u][v] = 1;
                } else {
                    src[u][v] = zeros.as_ptr();
                }
            }
        }
        for c0 in (0..cin).step_by(8) {
            // Columns first: t[i][v] = Σ_u Bᵀ[i][u] d[u][v].
            let mut t = [[_mm256_setzero_ps(); 6]; 6];
            for v in 0..6 {
                let col = std::array::from_fn(|u| _mm256_loadu_ps(src[u][v].add(c0 * step[u][v])));
                let r = bt(col);
                for i in 0..6 {
                    t[i][v] = r[i];
                }
            }
            // Then rows: V[i][j] = Σ_v t[i][v] Bᵀ[j][v].
            for (i, row) in t.iter().enumerate() {
                let r = bt(*row);
                for (j, val) in r.iter().enumerate() {
                    _mm256_storeu_ps(dst.add((i * 6 + j) * stride + c0), *val);
                }
            }
        }
    }

    /// Output transform of one tile, all output channels, from `src[ξ·stride + channel]`, with bias,
    /// residual and ReLU; stores the outputs inside the image.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    pub(super) unsafe fn output_tile(
        src: *const f32,
        stride: usize,
        tile: Tile,
        d: usize,
        bias: &[Row],
        residual: bool,
        relu: bool,
        out: *mut f32,
        h: usize,
        w: usize,
        cout: usize,
    ) {
        let zero = _mm256_setzero_ps();
        // Destination pointers (channel 0) of the 4×4 outputs, null outside the image.
        let mut dst = [[std::ptr::null_mut::<f32>(); 4]; 4];
        for (i, row) in dst.iter_mut().enumerate() {
            let y = tile.y + d * i;
            for (j, p) in row.iter_mut().enumerate() {
                let xx = tile.x + d * j;
                if y < h && xx < w {
                    *p = out.add(((tile.b * h + y) * w + xx) * cout);
                }
            }
        }
        for c0 in (0..cout).step_by(8) {
            let b = _mm256_loadu_ps(bias[c0 / NR].0.as_ptr().add(c0 % NR));
            // Columns: t[i][v] = Σ_u Aᵀ[i][u] m[u][v].
            let mut t = [[zero; 6]; 4];
            for v in 0..6 {
                let col = std::array::from_fn(|u| _mm256_loadu_ps(src.add((u * 6 + v) * stride + c0)));
                let r = at(col);
                for i in 0..4 {
                    t[i][v] = r[i];
                }
            }
            for (i, row) in t.iter().enumerate() {
                let r = at(*row);
                for (j, val) in r.iter().enumerate() {
                    let p = dst[i][j];
                    if p.is_null() {
                        continue;
                    }
                    let mut s = _mm256_add_ps(*val, b);
                    if residual {
                        s = _mm256_add_ps(s, _mm256_loadu_ps(p.add(c0)));
                    }
                    if relu {
                        s = _mm256_max_ps(s, zero);
                    }
                    _mm256_storeu_ps(p.add(c0), s);
                }
            }
        }
    }
}
