//! The objective J and the block updates of SCH in the order of the paper (F, U, V, W, R, B; eqs.
//! 9–24), each the exact minimiser of J over its block with the others fixed, and the ridge
//! refit of the hash functions.

use super::*;

/// The objective J (see the module docs) at the given blocks; `phi_w[t]` = ΦₜWₜ.
#[allow(clippy::too_many_arguments)]
pub fn objective(
    p: &SchParams,
    y: ArrayView2<f64>,
    f: ArrayView2<f64>,
    u: ArrayView2<f64>,
    v: ArrayView2<f64>,
    b: ArrayView2<f64>,
    r: ArrayView2<f64>,
    w: &[Array2<f64>],
    phi_w: &[Array2<f64>],
) -> f64 {
    objective_rows(p, y, f, u, v, b, r, phi_w) + p.rho * ridge(u, v, w)
}

pub(super) fn sq(a: ArrayView2<f64>) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>()
}

/// ‖U‖² + ‖V‖² + Σₜ‖Wₜ‖², the ridge part of J.
pub(super) fn ridge(u: ArrayView2<f64>, v: ArrayView2<f64>, w: &[Array2<f64>]) -> f64 {
    sq(u) + sq(v) + w.iter().map(|wt| sq(wt.view())).sum::<f64>()
}

/// The terms of J that sum over rows (all but the ridge), for the rows given (all, or a block).
#[allow(clippy::too_many_arguments)]
pub(super) fn objective_rows(
    p: &SchParams,
    y: ArrayView2<f64>,
    f: ArrayView2<f64>,
    u: ArrayView2<f64>,
    v: ArrayView2<f64>,
    b: ArrayView2<f64>,
    r: ArrayView2<f64>,
    phi_w: &[Array2<f64>],
) -> f64 {
    let label = sq((&y - &f.dot(&u)).view());
    let embed = sq((&f - &y.dot(&v)).view());
    let quant = sq((&b - &f.dot(&r)).view());
    let hash: f64 = p.lambda.iter().zip(phi_w).map(|(&l, pw)| l * sq((&f - pw).view())).sum();
    p.alpha * label + p.beta * embed + p.mu * quant + hash
}

/// F update (eq. 9). ∂J/∂F = 0 with RRᵀ = I (so ‖B − FR‖² = ‖BRᵀ − F‖²):
///   F (αUUᵀ + (β + μ + Σₜλₜ) I) = αYUᵀ + βYV + μBRᵀ + Σₜ λₜ ΦₜWₜ.
/// Where the derivation has (β + Σₜλₜ)I (besides the μI of the quantisation term), the printed
/// eq. 9 has (β + 1)I: the two agree only because of the constraint Σλₜ = 1. This code keeps Σλₜ,
/// so the update is the exact minimiser for any λ (the unit test uses Σλₜ ≠ 1 and shows that the
/// printed form then leaves a non-zero gradient).
pub fn update_f(
    p: &SchParams,
    y: ArrayView2<f64>,
    u: ArrayView2<f64>,
    v: ArrayView2<f64>,
    b: ArrayView2<f64>,
    r: ArrayView2<f64>,
    phi_w: &[Array2<f64>],
) -> Result<Array2<f64>> {
    let rhs = f_rhs(p, y, u, v, b, r, phi_w);
    solve_right_spd(rhs.view(), f_system(p, u).view()).context("SCH update_f (eq. 9)")
}

/// The right-hand side αYUᵀ + βYV + μBRᵀ + Σₜ λₜ ΦₜWₜ of eq. 9 for the rows given.
pub(super) fn f_rhs(
    p: &SchParams,
    y: ArrayView2<f64>,
    u: ArrayView2<f64>,
    v: ArrayView2<f64>,
    b: ArrayView2<f64>,
    r: ArrayView2<f64>,
    phi_w: &[Array2<f64>],
) -> Array2<f64> {
    let mut rhs = y.dot(&u.t()) * p.alpha + y.dot(&v) * p.beta + b.dot(&r.t()) * p.mu;
    for (&l, pw) in p.lambda.iter().zip(phi_w) {
        rhs.scaled_add(l, pw);
    }
    rhs
}

/// The system matrix αUUᵀ + (β + μ + Σₜλₜ) I of eq. 9 (k × k).
pub(super) fn f_system(p: &SchParams, u: ArrayView2<f64>) -> Array2<f64> {
    let mut a = u.dot(&u.t()) * p.alpha;
    a.diag_mut().mapv_inplace(|d| d + p.beta + p.mu + p.lambda_sum());
    a
}

/// U update (eq. 12). ∂J/∂U = −2αFᵀ(Y − FU) + 2ρU = 0 ⇒ U = (αFᵀF + ρI)⁻¹ αFᵀY.
pub fn update_u(p: &SchParams, f: ArrayView2<f64>, y: ArrayView2<f64>) -> Result<Array2<f64>> {
    u_from_sums(p, par_gram(f), par_t_dot(f, y))
}

/// Eq. 12 from the sums FᵀF and FᵀY.
pub(super) fn u_from_sums(p: &SchParams, ftf: Array2<f64>, fty: Array2<f64>) -> Result<Array2<f64>> {
    let mut a = ftf * p.alpha;
    a.diag_mut().mapv_inplace(|d| d + p.rho);
    let rhs = fty * p.alpha;
    SpdFactor::new(a.view())?.solve(rhs.view()).context("SCH update_u (eq. 12)")
}

/// V update (eq. 15). ∂J/∂V = −2βYᵀ(F − YV) + 2ρV = 0 ⇒ V = (βYᵀY + ρI)⁻¹ βYᵀF.
pub fn update_v(p: &SchParams, f: ArrayView2<f64>, y: ArrayView2<f64>) -> Result<Array2<f64>> {
    v_from_sums(p, par_gram(y), par_t_dot(y, f))
}

/// Eq. 15 from the sums YᵀY and YᵀF.
pub(super) fn v_from_sums(p: &SchParams, yty: Array2<f64>, ytf: Array2<f64>) -> Result<Array2<f64>> {
    let mut a = yty * p.beta;
    a.diag_mut().mapv_inplace(|d| d + p.rho);
    let rhs = ytf * p.beta;
    SpdFactor::new(a.view())?.solve(rhs.view()).context("SCH update_v (eq. 15)")
}

/// The factor of the ridge system ΦₜᵀΦₜ + ridge · I (`gram_t` = the cached ΦₜᵀΦₜ).
pub(super) fn ridge_factor(gram_t: ArrayView2<f64>, ridge: f64) -> Result<SpdFactor> {
    let mut a = gram_t.to_owned();
    a.diag_mut().mapv_inplace(|d| d + ridge);
    SpdFactor::new(a.view())
}

/// The fixed system matrix of the Wₜ update, factorised once: ΦₜᵀΦₜ + (ρ/λₜ) I.
pub fn w_factor(p: &SchParams, gram_t: ArrayView2<f64>, lambda_t: f64) -> Result<SpdFactor> {
    ridge_factor(gram_t, p.rho / lambda_t).context("SCH: factorising ΦᵀΦ + (ρ/λ)I for update_w (eq. 18)")
}

/// Wₜ update (eq. 18). ∂J/∂Wₜ = −2λₜΦₜᵀ(F − ΦₜWₜ) + 2ρWₜ = 0 ⇒
///   Wₜ = (ΦₜᵀΦₜ + (ρ/λₜ) I)⁻¹ ΦₜᵀF.
/// The paper prints the ridge as λₜ/γ; dividing the stationarity condition by λₜ gives ρ/λₜ, which
/// is what is used here (`factor` = [`w_factor`]).
pub fn update_w(factor: &SpdFactor, phi_t: ArrayView2<f64>, f: ArrayView2<f64>) -> Result<Array2<f64>> {
    factor.solve(par_t_dot(phi_t, f).view()).context("SCH update_w (eq. 18)")
}

/// R update (eq. 20). Only μ‖B − FR‖² depends on R; with RRᵀ = I it equals const − 2μ tr(RᵀFᵀB),
/// maximised by the orthogonal Procrustes solution: FᵀB = PΣQᵀ ⇒ R = PQᵀ. FᵀB is rank deficient
/// when B has fewer distinct rows than bits (B₀ = sgn(YG) has one row per class); the maximiser is
/// then not unique and the one nearest the previous R is taken ([`procrustes_nearest`]; `prev` = I
/// for the first R).
pub fn update_r(f: ArrayView2<f64>, b: ArrayView2<f64>, prev: ArrayView2<f64>) -> Result<Array2<f64>> {
    procrustes_nearest(par_t_dot(f, b).view(), prev).context("SCH update_r (eq. 20)")
}

/// B update (eq. 24). ‖B − FR‖² = const − 2 tr(BᵀFR) over B ∈ {−1, 1}: each entry independently
/// takes the sign of (FR)ᵢⱼ, B = sgn(FR) (ties → +1, which costs the same as −1).
pub fn update_b(f: ArrayView2<f64>, r: ArrayView2<f64>) -> Array2<f64> {
    sgn(par_dot(f, r).view())
}

/// Out-of-sample refit (option `refit_hash`, not in the paper; see the module docs): the ridge
/// regression of the learned codes on the RBF features, W' = argmin_W ‖B − ΦₜW‖² + ρ'‖W‖² =
/// (ΦₜᵀΦₜ + ρ'I)⁻¹ΦₜᵀB (∂/∂W = −2Φₜᵀ(B − ΦₜW) + 2ρ'W = 0), returned as W'Rᵀ so that the eq. 26
/// form sgn(φ(x)·W·R) encodes with W' (R orthogonal: W'RᵀR = W'). `gram_t` = the cached ΦₜᵀΦₜ.
pub(crate) fn refit_w(
    gram_t: ArrayView2<f64>,
    ridge: f64,
    phi_t: ArrayView2<f64>,
    b: ArrayView2<f64>,
    r: ArrayView2<f64>,
) -> Result<Array2<f64>> {
    // Φᵀ(BRᵀ) = (ΦᵀB)Rᵀ: solving with the rotated target gives W'Rᵀ directly.
    let target = par_dot(b, r.t());
    refit_w_from_sum(gram_t, ridge, par_t_dot(phi_t, target.view()).view())
}

/// [`refit_w`] from the sum Φᵀ(BRᵀ).
pub(super) fn refit_w_from_sum(gram_t: ArrayView2<f64>, ridge: f64, phi_t_target: ArrayView2<f64>) -> Result<Array2<f64>> {
    let fac = ridge_factor(gram_t, ridge).context("SCH refit_hash: factorising ΦᵀΦ + ρ'I")?;
    fac.solve(phi_t_target).context("SCH refit_hash")
}
