//! FSPA: the global foreground prototype p_g (docs/model.md, 'FSPA'; same code in modes `gridconv+` and
//! `mask`).

use super::softmax_last_dim;
use candle_core::Tensor;

use crate::error::Result;

/// Masked average Σ_p x[:, p]·m[p] / (Σ_p m[p] + 1e-5) of x [C, N] with m [1, N]; returns [C].
/// `denom` is the f32 value Σ m + 1e-5 (computed once per episode, exactly as the reference does).
pub fn masked_average(x: &Tensor, m: &Tensor, denom: &Tensor) -> Result<Tensor> {
    let num = x.broadcast_mul(m)?.sum(1)?; // [C]
    Ok(num.broadcast_div(denom)?)
}

/// p_g [C] from raw support features `support` [C, N], RAN output `ran` [C, N] and m_f [1, N].
///
/// * With cluster centres Pc [C, K] (num_sp ≥ 1): S = Pcᵀ·F̂s (raw dot products, not cosines), Φ =
///   softmax over the N positions, F̄ = Pc·Φ, then the residual with the *raw* Fs (not F̂s):
///   F̄' = F̄ + Fs, p_g = masked average of F̄'.
/// * Without (num_sp = 0): the same with Pc replaced by the single vector p0 = masked average of F̂s.
pub fn global_prototype(
    support: &Tensor,
    ran: &Tensor,
    m_f: &Tensor,
    denom: &Tensor,
    centres: Option<&Tensor>,
) -> Result<Tensor> {
    let pc = match centres {
        Some(pc) => pc.clone(),
        None => masked_average(ran, m_f, denom)?.unsqueeze(1)?, // p0 as [C, 1]
    };
    let s = pc.t()?.matmul(ran)?; // [K, N]
    let phi = softmax_last_dim(&s)?;
    let fused = (pc.matmul(&phi)? + support)?; // channel-wise fusion + raw-Fs residual
    masked_average(&fused, m_f, denom)
}
