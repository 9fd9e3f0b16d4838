//! The GEMM micro-kernel: a tile of `MR` pixels × `NR` output channels, accumulated over `kc` input
//! channels from `MR` independent row pointers (so a 3×3 tap, a stride or a zero-padded border is only a
//! different pointer), with the epilogue (residual accumulate, bias, ReLU) fused into the store.
//!
//! Two implementations with identical results up to summation order: AVX2+FMA (x86-64, selected at run
//! time) and a portable one the compiler vectorises on its own.

use super::{Row, MR, NR};

/// What the kernel does with the destination tile.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    /// Add the tile's current contents (a partial sum or the residual) to the accumulators.
    pub load_c: bool,
    /// Add these per-channel biases (last k-block only).
    pub bias: Option<&'a Row>,
    /// Clamp at zero (last k-block only).
    pub relu: bool,
}

/// Signature shared by the implementations.
///
/// Safety: `a[i]` valid for `kc` reads for every `i`; `w` valid for `kc` rows; `c` valid for `rows` rows of
/// `cols` values with row stride `ldc`; `rows <= MR`, `cols <= NR`.
pub(crate) type KernelFn = unsafe fn(
    kc: usize,
    a: &[*const f32; MR],
    w: *const Row,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    ep: Epilogue,
);

/// The best kernel for this CPU.
pub(crate) fn select() -> KernelFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return avx2::kernel;
        }
    }
    portable
}

/// Whether [`select`] returns a hand-vectorised kernel (the fast path is only worth it there).
pub(crate) fn has_simd_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Store one accumulated row: `c = max(0, acc [+ c] [+ bias])` over `cols` values.
#[inline(always)]
unsafe fn store_row_scalar(acc: &[f32; NR], c: *mut f32, cols: usize, ep: Epilogue) {
    for (j, &a) in acc.iter().enumerate().take(cols) {
        let mut v = a;
        if ep.load_c {
            v += *c.add(j);
        }
        if let Some(b) = ep.bias {
            v += b.0[j];
        }
        if ep.relu {
            v = v.max(0.0);
        }
        *c.add(j) = v;
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn portable(
    kc: usize,
    a: &[*const f32; MR],
    w: *const Row,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    ep: Epilogue,
) {
    let mut acc = [[0f32; NR]; MR];
    for k in 0..kc {
        let wr = &(*w.add(k)).0;
        for i in 0..MR {
            let av = *a[i].add(k);
            for j in 0..NR {
                acc[i][j] += av * wr[j];
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(rows) {
        store_row_scalar(row, c.add(i * ldc), cols, ep);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{store_row_scalar, Epilogue, Row, MR, NR};
    use std::arch::x86_64::*;

    /// Weight rows prefetched ahead: a panel's rows are first read from memory (the weights of a whole
    /// network do not fit any cache), and the next panel follows in memory.
    const PREFETCH_ROWS: usize = 32;

    #[inline(always)]
    unsafe fn finish(mut lo: __m256, mut hi: __m256, c: *mut f32, cols: usize, ep: Epilogue) {
        if cols == NR {
            if ep.load_c {
                lo = _mm256_add_ps(lo, _mm256_loadu_ps(c));
                hi = _mm256_add_ps(hi, _mm256_loadu_ps(c.add(8)));
            }
            if let Some(b) = ep.bias {
                lo = _mm256_add_ps(lo, _mm256_load_ps(b.0.as_ptr()));
                hi = _mm256_add_ps(hi, _mm256_load_ps(b.0.as_ptr().add(8)));
            }
            if ep.relu {
                let z = _mm256_setzero_ps();
                lo = _mm256_max_ps(lo, z);
                hi = _mm256_max_ps(hi, z);
            }
            _mm256_storeu_ps(c, lo);
            _mm256_storeu_ps(c.add(8), hi);
        } else {
            let mut acc = [0f32; NR];
            _mm256_storeu_ps(acc.as_mut_ptr(), lo);
            _mm256_storeu_ps(acc.as_mut_ptr().add(8), hi);
            store_row_scalar(&acc, c, cols, ep);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn kernel(
        kc: usize,
        a: &[*const f32; MR],
        w: *const Row,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        ep: Epilogue,
    ) {
        // The destination rows are far apart (one pixel's channels each) and usually cold: start fetching
        // them now, they are needed after the k loop.
        for i in 0..rows {
            let p = c.add(i * ldc) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.add(NR * 4 - 1));
        }
        let [a0, a1, a2, a3, a4, a5] = *a;
        let mut c00 = _mm256_setzero_ps();
        let mut c01 = _mm256_setzero_ps();
        let mut c10 = _mm256_setzero_ps();
        let mut c11 = _mm256_setzero_ps();
        let mut c20 = _mm256_setzero_ps();
        let mut c21 = _mm256_setzero_ps();
        let mut c30 = _mm256_setzero_ps();
        let mut c31 = _mm256_setzero_ps();
        let mut c40 = _mm256_setzero_ps();
        let mut c41 = _mm256_setzero_ps();
        let mut c50 = _mm256_setzero_ps();
        let mut c51 = _mm256_setzero_ps();
        let mut wp = w as *const f32;
        macro_rules! step {
            ($k:expr) => {{
                _mm_prefetch::<_MM_HINT_T0>(wp.add(PREFETCH_ROWS * NR) as *const i8);
                let w0 = _mm256_load_ps(wp);
                let w1 = _mm256_load_ps(wp.add(8));
                let b = _mm256_broadcast_ss(&*a0.add($k));
                c00 = _mm256_fmadd_ps(b, w0, c00);
                c01 = _mm256_fmadd_ps(b, w1, c01);
                let b = _mm256_broadcast_ss(&*a1.add($k));
                c10 = _mm256_fmadd_ps(b, w0, c10);
                c11 = _mm256_fmadd_ps(b, w1, c11);
                let b = _mm256_broadcast_ss(&*a2.add($k));
                c20 = _mm256_fmadd_ps(b, w0, c20);
                c21 = _mm256_fmadd_ps(b, w1, c21);
                let b = _mm256_broadcast_ss(&*a3.add($k));
                c30 = _mm256_fmadd_ps(b, w0, c30);
                c31 = _mm256_fmadd_ps(b, w1, c31);
                let b = _mm256_broadcast_ss(&*a4.add($k));
                c40 = _mm256_fmadd_ps(b, w0, c40);
                c41 = _mm256_fmadd_ps(b, w1, c41);
                let b = _mm256_broadcast_ss(&*a5.add($k));
                c50 = _mm256_fmadd_ps(b, w0, c50);
                c51 = _mm256_fmadd_ps(b, w1, c51);
                wp = wp.add(NR);
            }};
        }
        let mut k = 0;
        while k + 4 <= kc {
            step!(k);
            step!(k + 1);
            step!(k + 2);
            step!(k + 3);
            k += 4;
        }
        while k < kc {
            step!(k);
            k += 1;
        }
        let acc = [(c00, c01), (c10, c11), (c20, c21), (c30, c31), (c40, c41), (c50, c51)];
        for (i, &(lo, hi)) in acc.iter().enumerate().take(rows) {
            finish(lo, hi, c.add(i * ldc), cols, ep);
        }
    }
}
