//! The SDCH losses: the feature loss L_f (eq. 4) and the hash loss L_h (eq. 7).

use super::*;

/// s (m × m): 1 where image i and text j share a label (eq. 4's s_ij).
pub fn pair_similarity(lx: &Tensor, ly: &Tensor) -> Tensor {
    lx.matmul(&ly.tr()).gt(0.0).to_kind(Kind::Float)
}

/// S_h (N × N, N = rows of `l`): +1 where two items share a label, −1 otherwise (eq. 7).
pub fn hash_similarity(l: &Tensor) -> Tensor {
    l.matmul(&l.tr()).gt(0.0).to_kind(Kind::Float) * 2.0 - 1.0
}

/// Eq. 4: L_f = Σᵢⱼ log(1 + exp(θᵢⱼ)) − sᵢⱼθᵢⱼ with θᵢⱼ = f_xᵢᵀ f_yⱼ (softplus is the stable
/// log(1 + exp)).
pub fn loss_f(fx: &Tensor, fy: &Tensor, s: &Tensor) -> Tensor {
    let theta = fx.matmul(&fy.tr());
    (theta.softplus() - s * &theta).sum(Kind::Float)
}

/// Eq. 7 with one item per row of `z` (N × r) and `b` (N × r):
/// ‖Z Zᵀ/r − S_h‖² + β₁‖Z − B‖² + β₂‖ZᵀZ/c − I‖² + (β₃/r)‖Z‖², c = N (`Items`) or r (`Bits`).
pub fn loss_h(z: &Tensor, b: &Tensor, sh: &Tensor, beta: [f64; 3], scale: DecorrelationScale) -> Tensor {
    let (n, r) = (z.size()[0], z.size()[1]);
    let sim = (z.matmul(&z.tr()) / r as f64 - sh).square().sum(Kind::Float);
    let quant = (z - b).square().sum(Kind::Float);
    let c = match scale {
        DecorrelationScale::Items => n as f64,
        DecorrelationScale::Bits => r as f64,
    };
    let eye = Tensor::eye(r, (Kind::Float, z.device()));
    let decor = (z.tr().matmul(z) / c - eye).square().sum(Kind::Float);
    let norm = z.square().sum(Kind::Float);
    sim + quant * beta[0] + decor * beta[1] + norm * (beta[2] / r as f64)
}
