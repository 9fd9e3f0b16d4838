//! Cosine-prototype scoring (ALPNet's classifier; docs/model.md, 'Scores').

use super::softmax_last_dim;
use candle_core::Tensor;

use crate::error::Result;

/// `safe_norm` and the `cosine_similarity` clamp: every norm below this is raised to it.
pub const NORM_EPS: f64 = 1e-4;
/// Cosines are scaled by 20 before the softmax (and in mode `mask`).
pub const SCALE: f64 = 20.0;

/// v / max(‖v‖₂, 1e-4) along `dim` (`safe_norm`; also what modern `F.cosine_similarity(eps=1e-4)`
/// does to each operand).
pub fn safe_norm(x: &Tensor, dim: usize) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(dim)?.sqrt()?.maximum(NORM_EPS)?;
    Ok(x.broadcast_div(&norm)?)
}

/// Softmax-weighted prototype score: D_k(x) = 20·⟨q̂(x), p̂_k⟩, s(x) = Σ_k softmax_k(D(x))·D_k(x).
///
/// `query_n` [C, N] and `protos_n` [K, C] are already normalised; returns [N]. With K = 0 the
/// reference's sum over an empty channel axis gives 0, reproduced here.
pub fn prototype_score(query_n: &Tensor, protos_n: Option<&Tensor>) -> Result<Tensor> {
    let n = query_n.dim(1)?;
    let Some(protos_n) = protos_n else {
        return Ok(Tensor::zeros(n, query_n.dtype(), query_n.device())?);
    };
    // Query-major [N, K] so that the softmax over prototypes runs along the last dimension.
    let d = (query_n.t()?.matmul(&protos_n.t()?)? * SCALE)?;
    let weights = softmax_last_dim(&d)?;
    Ok((weights * d)?.sum(1)?)
}

/// Mode `mask`: s(x) = 20·cos(q(x), p) with each norm clamped at 1e-4; `query_n` [C, N] normalised,
/// `proto_n` [1, C] normalised. Returns [N].
pub fn cosine_score(query_n: &Tensor, proto_n: &Tensor) -> Result<Tensor> {
    let d = (query_n.t()?.matmul(&proto_n.t()?)? * SCALE)?; // [N, 1]
    Ok(d.squeeze(1)?)
}
