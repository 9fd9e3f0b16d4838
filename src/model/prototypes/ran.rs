//! RAN, resemblance attention (`MultiProtoAsConv.attention`, docs/model.md, 'RAN'). No parameters.

use super::softmax_last_dim;
use candle_core::Tensor;

use crate::error::Result;

/// F̂s from support and query features, both [C, N] (N = h·w, same grid), result [C, N].
///
/// R[i,j] = ⟨Fs[:,i], Fq[:,j]⟩ / (‖Fs[:,i]‖·‖Fq[:,j]‖ + 1e-5), A = softmax over j (query positions),
/// and then, literally as the reference's `bmm(proj_value, attention.permute(0, 2, 1))`:
/// F̂s = Fs·Aᵀ + Fs, i.e. F̂s[:, j] = Fs[:, j] + Σ_i Fs[:, i]·A[j, i]. The weights for support position j
/// come from support pixel j's similarity to *query* pixel i but multiply *support* feature i — the
/// transposed-index quirk, kept because it is what the trained model saw.
pub fn ran(support: &Tensor, query: &Tensor) -> Result<Tensor> {
    let ns = support.sqr()?.sum_keepdim(0)?.sqrt()?; // [1, N]
    let nq = query.sqr()?.sum_keepdim(0)?.sqrt()?; // [1, N]
                                                   // x_qs_norm = ‖s_i‖·‖q_j‖ as an outer product, then + 1e-5 (a
                                                   // float32 add, as in the reference).
    let denom = ns.t()?.broadcast_mul(&nq)?.affine(1.0, 1e-5)?; // [N, N]
    let dots = support.t()?.matmul(query)?; // [N, N], rows = support pixels
    let attention = softmax_last_dim(&(dots / denom)?)?;
    let mixed = support.matmul(&attention.t()?)?; // Fs·Aᵀ (the quirk)
    Ok((mixed + support)?)
}
