//! SCH — Semantics-reconstructing Cross-modal Hashing (Zhang et al.).
//!
//! Objective, for M modalities with RBF anchor features Φₜ = φ(Xₜ) (n × c, centred, see
//! [`RbfMap`]), labels Y (n × C), k bits:
//!
//!   J = α‖Y − FU‖² + β‖F − YV‖² + μ‖B − FR‖² + Σₜ λₜ‖F − ΦₜWₜ‖² + ρ(‖U‖² + ‖V‖² + Σₜ‖Wₜ‖²)
//!   s.t. B ∈ {−1, 1}ⁿˣᵏ, RRᵀ = I, Σₜ λₜ = 1,
//!
//! with F (n × k) the real-valued semantic embedding, U (k × C) reconstructing the labels from F,
//! V (C × k) embedding the labels, Wₜ (c × k) the hash projections and R (k × k) a rotation.
//! Every block has a closed-form minimiser given the others; the updates below are derived from J
//! (the derivation sits beside each one) and applied in the paper's order F (eq. 9), U (12),
//! V (15), Wₜ (18), R (20), B (24) until J stops decreasing (relative decrease ≤ `tol`, or
//! `max_iter` sweeps). Because each step minimises J exactly in its block, J never increases;
//! [`HashModel::history`] holds J after the initialisation and after every sweep.
//! New items: b = sgn(φ(x)WₜR) (eq. 26); M > 2 modalities just add terms to the sums (eq. 25).
//!
//! Deviation offered as an option (`refit_hash`, default off; not in the paper): eq. 26 hashes with
//! the Wₜ of eq. 18, which is fitted to the real-valued F, not to the codes B that form the
//! learned-B database. With `refit_hash = true`, after the alternation each modality's projection
//! is refitted directly to the learned codes, the usual out-of-sample step of two-step hashing
//! (SCRATCH and DCH fit their projections to B):
//!   W'ₜ = argmin_W ‖B − ΦₜW‖² + ρ'‖W‖² = (ΦₜᵀΦₜ + ρ'I)⁻¹ΦₜᵀB,  b = sgn(φₜ(x)W'ₜ),
//! with ρ' = `refit_rho` (default ρ), reusing the cached ΦₜᵀΦₜ ([`refit_w`]). The model keeps the
//! eq. 26 form: it stores Wₜ := W'ₜRᵀ, so Wₜ R = W'ₜ (R is orthogonal) and every consumer of
//! `m{t}_W.npy` and `R.npy` encodes with the refit unchanged. U, V, R, B, the objective history and
//! the learned training codes are those of the alternation. Known limitation: a bit that is constant
//! in B (on Wikipedia the Hadamard F₀ gives one) cannot be fitted by the centred Φ (Φᵀ1 = 0, no
//! intercept), so its refitted projection is rounding noise and the bit's sign is arbitrary for new
//! items (harmless against the learned-B database, noise in the encoded one). On the Wikipedia
//! validation split the refit lowered I→T and was not selected.
//!
//! Choices not fixed by the paper (each documented where it is made):
//! - F₀ = YG with G ∈ {−1, 1}ᶜˣᵏ a random code per class; a random F₀ leaves codes near chance
//!   at 64+ bits (the block descent is non-convex). By default G is c random distinct rows of a
//!   Hadamard matrix ([`ClassCodes::Hadamard`]: class codes k/2 bits apart; coin flips collide in
//!   many bits at 16 bits), chosen on the Wikipedia validation split.
//! - φ is centred with its training mean; σₜ = `sigma_scale[t]` (default 1) × the mean distance
//!   from the training rows to the anchors.
//! - SCH needs labels: it trains on the rows labelled in every modality
//!   ([`TrainSet::common_labelled`], labels = union over modalities). Training rows outside that
//!   set still get a learned code in [`SchModel::train_codes`]: b = sgn((Σₜ λₜ φₜ(xₜ)Wₜ)R), the
//!   minimiser over f of Σₜ λₜ‖f − φₜWₜ‖² (what J fixes for F without labels), rotated and signed.
//! - Anchors, σ and the centring mean come from those same labelled rows.
//!
//! Cost: φᵀφ is computed once per modality and its ridge system (ΦₜᵀΦₜ + (ρ/λₜ)I) factorised once;
//! a sweep then costs two n × c × k products per modality (ΦₜᵀF and ΦₜWₜ) plus O(nk(k + C)).
//! Nothing n × n is ever formed, so training is linear in n.

use super::common::{
    capped_anchors, fold_parts, fold_parts_mut, gram_add, hadamard_class_codes, mirror_upper, par_dot, par_gram, par_t_dot,
    procrustes_nearest, random_class_codes, row_block, seeded_rng, sgn, sign_codes, solve_right_cholesky, solve_right_spd, sum_in_order,
    RbfMap, SpdFactor,
};
use crate::codes::BinaryCodes;
use crate::method::{ensure_nonneg, ensure_pos, Fit, FitContext, HashModel, TrainSet, View};
use crate::npy::{write_npy, write_text_atomic};
use crate::params::{Dim, MethodParams, Range, SearchSpace};
use anyhow::{bail, Context, Result};
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use ndarray_linalg::{Cholesky, UPLO};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// SCH hyper-parameters. `Default` = the paper's weights α, β, λ and 1000 anchors with ρ, μ and
/// the bandwidths chosen on validation splits of the training items (docs/methods.md, "SCH");
/// [`SchParams::paper`] = the paper's printed settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SchParams {
    /// α: weight of the label reconstruction ‖Y − FU‖².
    pub alpha: f64,
    /// β: weight of the label embedding ‖F − YV‖².
    pub beta: f64,
    /// μ: weight of the quantisation ‖B − FR‖².
    pub mu: f64,
    /// λₜ: weight of modality t's hash-function fit ‖F − ΦₜWₜ‖²; one per modality, summing to 1
    /// (the paper's constraint). Paper: (0.3, 0.7) for (image, text).
    pub lambda: Vec<f64>,
    /// ρ: ridge on U, V and every Wₜ.
    pub rho: f64,
    /// Number of RBF anchors c per modality (drawn from the training rows; refused when larger
    /// than the number of training rows).
    pub anchors: usize,
    /// Per-modality anchor counts cₜ (one per modality), overriding `anchors`; empty = `anchors`
    /// for every modality. Not a paper setting.
    pub modality_anchors: Vec<usize>,
    /// Maximum number of sweeps.
    pub max_iter: usize,
    /// Stop when J decreases by at most `tol` · J in a sweep.
    pub tol: f64,
    /// Per-modality factor on the RBF bandwidth heuristic (σₜ = scale × mean row-to-anchor
    /// distance); empty = 1 for every modality. Not a paper setting.
    pub sigma_scale: Vec<f64>,
    /// The random class codes G of F₀ = YG: `hadamard` (distinct rows of a Hadamard matrix, so
    /// class codes are about k/2 bits apart) or `random` (fair coins).
    pub class_codes: ClassCodes,
    /// After the alternation, refit each modality's hash projection to the learned codes B
    /// (W'ₜ = (ΦₜᵀΦₜ + ρ'I)⁻¹ΦₜᵀB, see [`refit_w`]) instead of using eq. 18's Wₜ in eq. 26.
    /// Not a paper setting; default off.
    pub refit_hash: bool,
    /// ρ' of that refit; absent = `rho`. Not a paper setting.
    pub refit_rho: Option<f64>,
}

/// How the class codes G of the initial F₀ = YG are drawn.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClassCodes {
    #[default]
    Hadamard,
    Random,
}

impl Default for SchParams {
    fn default() -> Self {
        // ρ, μ and σ_text chosen on the Wikipedia validation split and confirmed on the UCI digits and emoji validation splits
        // (docs/methods.md); the rest as in the paper.
        Self {
            alpha: 4.5,
            beta: 0.01,
            mu: 1.0,
            lambda: vec![0.3, 0.7],
            rho: 0.002,
            anchors: 1000,
            modality_anchors: vec![],
            max_iter: 20,
            tol: 1e-4,
            sigma_scale: vec![1.0, 0.6],
            class_codes: ClassCodes::Hadamard,
            refit_hash: false,
            refit_rho: None,
        }
    }
}

impl SchParams {
    /// The paper's printed settings (α 4.5, β 0.01, μ 0.5, λ (0.3, 0.7), ρ 0.01, 1000 anchors, the
    /// bandwidth heuristic unscaled): `--preset paper`.
    pub fn paper() -> Self {
        Self { alpha: 4.5, beta: 0.01, mu: 0.5, lambda: vec![0.3, 0.7], rho: 0.01, anchors: 1000, sigma_scale: vec![], ..Self::default() }
    }

    fn lambda_sum(&self) -> f64 {
        self.lambda.iter().sum()
    }
    /// Number of anchors of modality t.
    fn anchors_of(&self, t: usize) -> usize {
        self.modality_anchors.get(t).copied().unwrap_or(self.anchors)
    }
    fn sigma_scale(&self, t: usize) -> f64 {
        self.sigma_scale.get(t).copied().unwrap_or(1.0)
    }
}

/// What `cmh tune` varies for SCH: the weights of J, the ridge and the RBF bandwidths.
pub const SEARCH_SPACE: SearchSpace = SearchSpace {
    dims: &[
        Dim { name: "alpha", range: Range::Float { lo: 0.5, hi: 20.0, log: true } },
        Dim { name: "beta", range: Range::Float { lo: 1e-3, hi: 1.0, log: true } },
        Dim { name: "mu", range: Range::Float { lo: 0.1, hi: 5.0, log: true } },
        Dim { name: "rho", range: Range::Float { lo: 1e-4, hi: 0.1, log: true } },
        Dim { name: "lambda", range: Range::Choice(&["[0.3, 0.7]", "[0.5, 0.5]", "[0.7, 0.3]"]) },
        Dim {
            name: "sigma_scale",
            range: Range::Choice(&["[1.0, 1.0]", "[1.0, 0.8]", "[1.0, 0.6]", "[0.8, 0.6]", "[1.2, 0.6]", "[1.0, 0.4]"]),
        },
        Dim { name: "anchors", range: Range::Choice(&["500", "1000"]) },
    ],
    fidelity: None,
};

impl MethodParams for SchParams {
    fn presets() -> Vec<(&'static str, Self)> {
        vec![("paper", Self::paper())]
    }
    fn search_space() -> SearchSpace {
        SEARCH_SPACE
    }
}

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

fn sq(a: ArrayView2<f64>) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>()
}

/// ‖U‖² + ‖V‖² + Σₜ‖Wₜ‖², the ridge part of J.
fn ridge(u: ArrayView2<f64>, v: ArrayView2<f64>, w: &[Array2<f64>]) -> f64 {
    sq(u) + sq(v) + w.iter().map(|wt| sq(wt.view())).sum::<f64>()
}

/// The terms of J that sum over rows (all but the ridge), for the rows given (all, or a block).
#[allow(clippy::too_many_arguments)]
fn objective_rows(
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
fn f_rhs(
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
fn f_system(p: &SchParams, u: ArrayView2<f64>) -> Array2<f64> {
    let mut a = u.dot(&u.t()) * p.alpha;
    a.diag_mut().mapv_inplace(|d| d + p.beta + p.mu + p.lambda_sum());
    a
}

/// U update (eq. 12). ∂J/∂U = −2αFᵀ(Y − FU) + 2ρU = 0 ⇒ U = (αFᵀF + ρI)⁻¹ αFᵀY.
pub fn update_u(p: &SchParams, f: ArrayView2<f64>, y: ArrayView2<f64>) -> Result<Array2<f64>> {
    u_from_sums(p, par_gram(f), par_t_dot(f, y))
}

/// Eq. 12 from the sums FᵀF and FᵀY.
fn u_from_sums(p: &SchParams, ftf: Array2<f64>, fty: Array2<f64>) -> Result<Array2<f64>> {
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
fn v_from_sums(p: &SchParams, yty: Array2<f64>, ytf: Array2<f64>) -> Result<Array2<f64>> {
    let mut a = yty * p.beta;
    a.diag_mut().mapv_inplace(|d| d + p.rho);
    let rhs = ytf * p.beta;
    SpdFactor::new(a.view())?.solve(rhs.view()).context("SCH update_v (eq. 15)")
}

/// The factor of the ridge system ΦₜᵀΦₜ + ridge · I (`gram_t` = the cached ΦₜᵀΦₜ).
fn ridge_factor(gram_t: ArrayView2<f64>, ridge: f64) -> Result<SpdFactor> {
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
pub fn refit_w(gram_t: ArrayView2<f64>, ridge: f64, phi_t: ArrayView2<f64>, b: ArrayView2<f64>, r: ArrayView2<f64>) -> Result<Array2<f64>> {
    // Φᵀ(BRᵀ) = (ΦᵀB)Rᵀ: solving with the rotated target gives W'Rᵀ directly.
    let target = par_dot(b, r.t());
    refit_w_from_sum(gram_t, ridge, par_t_dot(phi_t, target.view()).view())
}

/// [`refit_w`] from the sum Φᵀ(BRᵀ).
fn refit_w_from_sum(gram_t: ArrayView2<f64>, ridge: f64, phi_t_target: ArrayView2<f64>) -> Result<Array2<f64>> {
    let fac = ridge_factor(gram_t, ridge).context("SCH refit_hash: factorising ΦᵀΦ + ρ'I")?;
    fac.solve(phi_t_target).context("SCH refit_hash")
}

/// Wall-clock seconds of the phases of one fit (for the run log and the scale benchmark).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FitTimings {
    /// RBF features, φᵀφ and the factorisations of the Wₜ systems.
    pub features_s: f64,
    /// Initialisation and all sweeps.
    pub sweeps_s: f64,
    /// Unified codes of the training rows.
    pub codes_s: f64,
}

/// A fitted SCH model.
#[derive(Clone, Debug)]
pub struct SchModel {
    bits: usize,
    params: SchParams,
    rbf: Vec<RbfMap>,
    w: Vec<Array2<f64>>,
    r: Array2<f64>,
    /// Wₜ R per modality (c × k): codes = sgn(φₜ(x) · proj[t]).
    proj: Vec<Array2<f64>>,
    train_codes: BinaryCodes,
    history: Vec<f64>,
    /// Training rows SCH fitted on (rows labelled in every modality).
    fitted_rows: usize,
    timings: FitTimings,
}

impl SchModel {
    pub fn params(&self) -> &SchParams {
        &self.params
    }
    pub fn n_modalities(&self) -> usize {
        self.rbf.len()
    }
    /// RBF map of modality t.
    pub fn rbf(&self, t: usize) -> &RbfMap {
        &self.rbf[t]
    }
    /// Hash projection Wₜ (c × k); with `refit_hash` it is W'ₜRᵀ (see [`refit_w`]).
    pub fn w(&self, t: usize) -> &Array2<f64> {
        &self.w[t]
    }
    /// Rotation R (k × k).
    pub fn r(&self) -> &Array2<f64> {
        &self.r
    }
    /// Number of sweeps run.
    pub fn iterations(&self) -> usize {
        self.history.len().saturating_sub(1)
    }
    /// Phase timings of the fit (zeros for a loaded model).
    pub fn timings(&self) -> &FitTimings {
        &self.timings
    }
    /// How many training rows the model was fitted on (labelled in every modality).
    pub fn fitted_rows(&self) -> usize {
        self.fitted_rows
    }

    #[allow(clippy::too_many_arguments)]
    fn from_parts(
        bits: usize,
        params: SchParams,
        rbf: Vec<RbfMap>,
        w: Vec<Array2<f64>>,
        r: Array2<f64>,
        train_codes: BinaryCodes,
        history: Vec<f64>,
        fitted_rows: usize,
    ) -> Self {
        let proj = w.iter().map(|wt| wt.dot(&r)).collect();
        Self { bits, params, rbf, w, r, proj, train_codes, history, fitted_rows, timings: FitTimings::default() }
    }

    /// Reads a model written by [`HashModel::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("model.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let mf: SchModelFile = serde_json::from_str(&text).with_context(|| format!("{}: not an SCH model file", path.display()))?;
        if mf.method != "sch" {
            bail!("{}: method is {:?}, expected \"sch\"", path.display(), mf.method);
        }
        let k = mf.bits;
        if k == 0 || mf.sigma.len() != mf.n_modalities || mf.n_modalities == 0 {
            bail!("{}: inconsistent bits / n_modalities / sigma", path.display());
        }
        let mut rbf = Vec::new();
        let mut w = Vec::new();
        for t in 0..mf.n_modalities {
            let map = RbfMap::load(dir, &format!("m{t}"), mf.sigma[t])?;
            let wt = super::common::load_matrix(&dir.join(format!("m{t}_W.npy")))?;
            super::common::expect_shape(dir, &format!("m{t}_W.npy"), &wt, (map.n_anchors(), k))?;
            rbf.push(map);
            w.push(wt);
        }
        let r = super::common::load_matrix(&dir.join("R.npy"))?;
        super::common::expect_shape(dir, "R.npy", &r, (k, k))?;
        let train_codes = BinaryCodes::load_npy(&dir.join("B.npy"), Some(k))?;
        let history = super::common::load_vector(&dir.join("history.npy"))?.to_vec();
        Ok(Self::from_parts(k, mf.params, rbf, w, r, train_codes, history, mf.fitted_rows))
    }
}

/// model.json of an SCH model.
#[derive(Serialize, Deserialize)]
struct SchModelFile {
    method: String,
    bits: usize,
    params: SchParams,
    n_modalities: usize,
    sigma: Vec<f64>,
    fitted_rows: usize,
    iterations: usize,
    #[serde(default)]
    encode: String,
    #[serde(default)]
    files: serde_json::Value,
}

impl HashModel for SchModel {
    fn method(&self) -> &'static str {
        "sch"
    }
    fn bits(&self) -> usize {
        self.bits
    }
    /// b = sgn(φₜ(x) Wₜ R) (eq. 26); with `refit_hash`, Wₜ R = W'ₜ, the refit of [`refit_w`].
    fn encode(&self, modality: usize, view: &View) -> Result<BinaryCodes> {
        if modality >= self.rbf.len() {
            bail!("SCH model has {} modalities; modality {modality} requested", self.rbf.len());
        }
        let x = view.features("sch", modality)?;
        let phi = self.rbf[modality].transform(x.view()).with_context(|| format!("SCH encode, modality {modality}"))?;
        Ok(sign_codes(par_dot(phi.view(), self.proj[modality].view()).view()))
    }
    fn train_codes(&self) -> Option<&BinaryCodes> {
        Some(&self.train_codes)
    }
    fn history(&self) -> &[f64] {
        &self.history
    }
    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        for (t, (map, wt)) in self.rbf.iter().zip(&self.w).enumerate() {
            map.save(dir, &format!("m{t}"))?;
            write_npy(&dir.join(format!("m{t}_W.npy")), wt)?;
        }
        write_npy(&dir.join("R.npy"), &self.r)?;
        self.train_codes.save_npy(dir, "B")?;
        write_npy(&dir.join("history.npy"), &Array1::from(self.history.clone()))?;
        let mf = SchModelFile {
            method: "sch".into(),
            bits: self.bits,
            params: self.params.clone(),
            n_modalities: self.rbf.len(),
            sigma: self.rbf.iter().map(|m| m.sigma).collect(),
            fitted_rows: self.fitted_rows,
            iterations: self.iterations(),
            encode: "modality t (0 = image, 1 = text): phi = exp(-||x - m{t}_anchors||^2 / (2 sigma[t]^2)) - m{t}_phi_mean; \
                     codes = sign(phi @ m{t}_W @ R) with sign(0) = +1"
                .into(),
            files: serde_json::json!({
                "m{t}_anchors.npy": "RBF anchors of modality t (c x d, float64)",
                "m{t}_phi_mean.npy": "training mean of the RBF features of modality t (c)",
                "m{t}_W.npy": "hash projection W_t (c x bits); when params.refit_hash is true it is W'_t R^T, W'_t = the ridge fit of B on phi_t, so phi @ W @ R = phi @ W'_t",
                "R.npy": "rotation R (bits x bits)",
                "B.npy": "learned unified codes of the training rows (int8 +-1; B_packed.npy = numpy.packbits)",
                "history.npy": "objective J after the initialisation and after each sweep",
            }),
        };
        write_text_atomic(&dir.join("model.json"), &serde_json::to_string_pretty(&mf)?)
    }
}

impl Fit for SchParams {
    type Model = SchModel;

    fn check(&self, data: &TrainSet, bits: usize) -> Result<()> {
        if bits == 0 {
            bail!("bits must be at least 1");
        }
        ensure_nonneg("sch.alpha", self.alpha)?;
        ensure_nonneg("sch.beta", self.beta)?;
        ensure_nonneg("sch.mu", self.mu)?;
        ensure_pos("sch.rho", self.rho)?;
        ensure_nonneg("sch.tol", self.tol)?;
        let m = data.n_modalities();
        if self.lambda.len() != m {
            bail!("sch.lambda has {} weights but the data has {m} modalities; give one weight per modality", self.lambda.len());
        }
        for (t, &l) in self.lambda.iter().enumerate() {
            ensure_pos(&format!("sch.lambda[{t}]"), l)?;
        }
        let s = self.lambda_sum();
        if (s - 1.0).abs() > 1e-9 {
            let norm: Vec<String> = self.lambda.iter().map(|l| format!("{}", l / s)).collect();
            bail!("sch.lambda must sum to 1 (the paper's constraint Σλₜ = 1), found sum {s}; e.g. use [{}]", norm.join(", "));
        }
        if self.max_iter == 0 {
            bail!("sch.max_iter must be at least 1");
        }
        if self.anchors == 0 {
            bail!("sch.anchors must be at least 1");
        }
        if !self.modality_anchors.is_empty() && self.modality_anchors.len() != m {
            bail!(
                "sch.modality_anchors has {} values but the data has {m} modalities; give one per modality or none",
                self.modality_anchors.len()
            );
        }
        if let Some(t) = self.modality_anchors.iter().position(|&a| a == 0) {
            bail!("sch.modality_anchors[{t}] must be at least 1");
        }
        if !self.sigma_scale.is_empty() && self.sigma_scale.len() != m {
            bail!("sch.sigma_scale has {} values but the data has {m} modalities; give one per modality or none", self.sigma_scale.len());
        }
        for (t, &v) in self.sigma_scale.iter().enumerate() {
            ensure_pos(&format!("sch.sigma_scale[{t}]"), v)?;
        }
        if let Some(rr) = self.refit_rho {
            ensure_pos("sch.refit_rho", rr)?;
        }
        for (t, v) in data.views.iter().enumerate() {
            v.features("sch", t)?;
        }
        if data.n_classes() == 0 {
            bail!("SCH needs class labels, but the data has no classes");
        }
        let rows = fitted_rows(data);
        if rows.is_empty() {
            bail!("SCH needs labelled training rows, but no row is labelled in every modality");
        }
        if let Some(&i) = rows.iter().find(|&&i| data.labels.iter().all(|l| l.row(i).iter().all(|&v| v == 0))) {
            bail!("SCH: training row {i} is marked labelled but has no class");
        }
        // More anchors than labelled rows are capped at the rows when fitting (capped_anchors).
        // Largest f64 arrays: Φₜ (n × aₜ), ΦₜᵀΦₜ and its factor, Wₜ, B, F and their products
        // (n × bits), R and the Hadamard class codes (≥ bits × bits).
        let (n, c, k) = (data.len() as f64, data.n_classes() as f64, bits as f64);
        let big = ((data.n_classes() + 1).max(bits).next_power_of_two()) as f64;
        let per_modality: f64 = (0..m)
            .map(|t| if self.modality_anchors.is_empty() { self.anchors } else { self.modality_anchors[t] } as f64)
            .map(|a| n * a + 2.0 * a * a + a * k)
            .sum();
        let bytes = 8.0 * (per_modality + 4.0 * n * k + 2.0 * big * big + 2.0 * k * k + n * c);
        crate::method::ensure_memory("sch", bits, bytes, "RBF features, code and rotation matrices")?;
        Ok(())
    }

    /// Keeps the RBF features Φₜ in memory when they take at most [`STREAM_FEATURES_ABOVE_BYTES`];
    /// above, recomputes them block by block in every pass ([`SchParams::fit_streamed`]).
    fn fit_checked(&self, data: &TrainSet, ctx: &FitContext) -> Result<SchModel> {
        let rows = fitted_rows(data).len();
        let bytes: usize = (0..data.n_modalities()).map(|t| rows * self.anchors_of(t) * std::mem::size_of::<f64>()).sum();
        if bytes > STREAM_FEATURES_ABOVE_BYTES {
            self.fit_streamed_checked(data, ctx)
        } else {
            self.fit_in_memory(data, ctx)
        }
    }
}

/// Above this many bytes of RBF features (Σₜ n cₜ × 8, n = fitted rows, cₜ = anchors), SCH does
/// not keep Φₜ but recomputes it block by block in each pass ([`SchParams::fit_streamed`]).
pub const STREAM_FEATURES_ABOVE_BYTES: usize = 2 << 30;

/// The rows SCH fits on: labelled in every modality.
fn fitted_rows(data: &TrainSet) -> Vec<usize> {
    (0..data.len()).filter(|&i| data.labelled.iter().all(|l| l[i])).collect()
}

/// Rows s..e of Y (fitted rows, labels = union over modalities, as [`TrainSet::common_labelled`]).
fn label_block(data: &TrainSet, rows: Option<&[usize]>, s: usize, e: usize) -> Array2<f64> {
    let mut y = Array2::<f64>::zeros((e - s, data.n_classes()));
    for (mut out, i) in y.outer_iter_mut().zip(s..e) {
        let i = rows.map_or(i, |r| r[i]);
        for l in &data.labels {
            for (o, &v) in out.iter_mut().zip(l.row(i)) {
                if v != 0 {
                    *o = 1.0;
                }
            }
        }
    }
    y
}

/// Per-part sums of one streamed pass over the fitted rows.
struct Sums {
    /// Row terms of J (all but the ridge) at the state the pass started from.
    j: f64,
    /// Φₜᵀ F per modality (cₜ × k).
    phi_t_f: Vec<Array2<f64>>,
    ftf: Array2<f64>,
    fty: Array2<f64>,
    ytf: Array2<f64>,
    ftb: Array2<f64>,
    /// The first error met in this part.
    err: Option<anyhow::Error>,
}

impl Sums {
    fn zeros(anchors: &[usize], k: usize, c: usize) -> Self {
        let z = |r, q| Array2::<f64>::zeros((r, q));
        Self {
            j: 0.0,
            phi_t_f: anchors.iter().map(|&a| z(a, k)).collect(),
            ftf: z(k, k),
            fty: z(k, c),
            ytf: z(c, k),
            ftb: z(k, k),
            err: None,
        }
    }
    /// Adds F's block sums: FᵀF (upper triangle), FᵀY, YᵀF, FᵀB.
    fn add_f(&mut self, f: ArrayView2<f64>, y: ArrayView2<f64>, b: ArrayView2<f64>) {
        gram_add(f, &mut self.ftf);
        general_mat_mul(1.0, &f.t(), &y, 1.0, &mut self.fty);
        general_mat_mul(1.0, &y.t(), &f, 1.0, &mut self.ytf);
        general_mat_mul(1.0, &f.t(), &b, 1.0, &mut self.ftb);
    }
    /// The parts' sums added in part order (the first error wins).
    fn total(parts: Vec<Sums>) -> Result<Sums> {
        let mut it = parts.into_iter();
        let mut t = it.next().expect("at least one row");
        for p in it {
            if t.err.is_some() {
                break;
            }
            t.j += p.j;
            t.phi_t_f.iter_mut().zip(&p.phi_t_f).for_each(|(a, b)| *a += b);
            t.ftf += &p.ftf;
            t.fty += &p.fty;
            t.ytf += &p.ytf;
            t.ftb += &p.ftb;
            t.err = p.err;
        }
        if let Some(e) = t.err.take() {
            return Err(e);
        }
        mirror_upper(&mut t.ftf);
        Ok(t)
    }
}

impl SchParams {
    /// Fits SCH without keeping the n × cₜ RBF features: every pass over the rows recomputes
    /// φₜ for one block of rows at a time ([`RbfMap::fit_streamed`], [`fold_parts`] blocks), so
    /// memory is O(n(k + d) + c² + block × c) instead of O(n Σcₜ), and nothing n × C is formed
    /// either (Y is built per block from the labels). The updates are those of the in-memory fit,
    /// fused so that one pass per sweep suffices: the pass that computes ΦₜWₜ for J (and F's
    /// right-hand side) also solves the rows of the next F (eq. 9 is row-wise) and accumulates
    /// ΦₜᵀF, FᵀF, FᵀY, YᵀF and FᵀB for the next U, V, Wₜ and R; when J says stop, that next F is
    /// discarded. Results equal the in-memory fit's up to the order of floating-point sums.
    /// `fit` chooses this path by itself above [`STREAM_FEATURES_ABOVE_BYTES`].
    pub fn fit_streamed(&self, data: &TrainSet, ctx: &FitContext) -> Result<SchModel> {
        data.validate()?;
        self.check(data, ctx.bits)?;
        self.fit_streamed_checked(data, ctx)
    }

    fn fit_streamed_checked(&self, data: &TrainSet, ctx: &FitContext) -> Result<SchModel> {
        let k = ctx.bits;
        let rows = fitted_rows(data);
        let n = rows.len();
        let sel = if n == data.len() { None } else { Some(rows.as_slice()) };
        let m = data.n_modalities();
        let nc = data.n_classes();
        let xs: Vec<ArrayView2<f32>> = (0..m).map(|t| data.views[t].features("sch", t).map(|x| x.view())).collect::<Result<_>>()?;
        let mut rng = seeded_rng(ctx.seed, 0);
        let mut timings = FitTimings::default();
        let clock = std::time::Instant::now();

        // RBF maps: the same anchor draws as the in-memory fit, σ and mean by streaming.
        let rbf = (0..m)
            .map(|t| {
                {
                    let name =
                        if self.modality_anchors.is_empty() { "sch.anchors".to_string() } else { format!("sch.modality_anchors[{t}]") };
                    RbfMap::fit_streamed(xs[t], sel, capped_anchors(&name, self.anchors_of(t), n), self.sigma_scale(t), &mut rng)
                }
                .with_context(|| format!("SCH: RBF features of modality {t}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let anchors: Vec<usize> = rbf.iter().map(|r| r.n_anchors()).collect();
        let phi_block = |t: usize, s: usize, e: usize| rbf[t].features_of(row_block(xs[t], sel, s, e).view());

        // F₀ = YG and its sums (see the in-memory fit for the initialisation).
        let g = match self.class_codes {
            ClassCodes::Hadamard => hadamard_class_codes(nc, k, &mut rng),
            ClassCodes::Random => random_class_codes(nc, k, &mut rng),
        };
        let mut f = Array2::<f64>::zeros((n, k));
        let init = fold_parts_mut(
            &mut f,
            || (Sums::zeros(&[], k, nc), Array2::<f64>::zeros((nc, nc))),
            |s, e, mut fb, (sums, yty)| {
                let y = label_block(data, sel, s, e);
                general_mat_mul(1.0, &y, &g, 0.0, &mut fb);
                sums.add_f(fb.view(), y.view(), sgn(fb.view()).view());
                gram_add(y.view(), yty);
            },
        );
        let (init, yty): (Vec<Sums>, Vec<Array2<f64>>) = init.into_iter().unzip();
        let init = Sums::total(init)?;
        let mut yty = sum_in_order(yty, (nc, nc));
        mirror_upper(&mut yty);
        let mut u = u_from_sums(self, init.ftf, init.fty)?;
        let mut v = v_from_sums(self, yty.clone(), init.ytf)?;
        let mut r = procrustes_nearest(init.ftb.view(), Array2::<f64>::eye(k).view()).context("SCH update_r (eq. 20)")?;

        // ΦₜᵀΦₜ (cached, factorised for eq. 18) and ΦₜᵀF₀, one pass per modality.
        let mut wfac = Vec::with_capacity(m);
        let mut grams = Vec::new(); // kept only for the refit
        let mut w = Vec::with_capacity(m);
        for (t, &c) in anchors.iter().enumerate() {
            let parts = fold_parts(
                n,
                || (Array2::<f64>::zeros((c, c)), Array2::<f64>::zeros((c, k))),
                |s, e, (gram, ptf)| {
                    let ph = phi_block(t, s, e);
                    gram_add(ph.view(), gram);
                    general_mat_mul(1.0, &ph.t(), &f.slice(s![s..e, ..]), 1.0, ptf);
                },
            );
            let (gram, ptf): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
            let mut gram = sum_in_order(gram, (c, c));
            mirror_upper(&mut gram);
            wfac.push(w_factor(self, gram.view(), self.lambda[t])?);
            w.push(wfac[t].solve(sum_in_order(ptf, (c, k)).view()).context("SCH update_w (eq. 18)")?);
            if self.refit_hash {
                grams.push(gram);
            }
        }
        timings.features_s = clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();
        let mut b = Array2::<f64>::zeros((n, k));
        let set_b = |b: &mut Array2<f64>, f: &Array2<f64>, r: &Array2<f64>| {
            fold_parts_mut(b, || (), |s, e, mut bb, _| bb.assign(&sgn(f.slice(s![s..e, ..]).dot(r).view())));
        };
        set_b(&mut b, &f, &r);

        // Sweeps. Pass i computes J of the current state and, unless the sweeps are used up, the
        // rows of the next F with the sums of the rest of the sweep.
        let mut history = Vec::new();
        let mut sweeps = 0;
        loop {
            let update = sweeps < self.max_iter;
            let chol = f_system(self, u.view())
                .cholesky(UPLO::Lower)
                .context("SCH update_f (eq. 9): the system matrix is not positive definite")?;
            let parts = fold_parts_mut(
                &mut f,
                || Sums::zeros(&anchors, k, nc),
                |s, e, mut fb, sums| {
                    if sums.err.is_some() {
                        return;
                    }
                    let y = label_block(data, sel, s, e);
                    let bb = b.slice(s![s..e, ..]);
                    let phi: Vec<Array2<f64>> = (0..m).map(|t| phi_block(t, s, e)).collect();
                    let pw: Vec<Array2<f64>> = phi.iter().zip(&w).map(|(ph, wt)| ph.dot(wt)).collect();
                    sums.j += objective_rows(self, y.view(), fb.view(), u.view(), v.view(), bb, r.view(), &pw);
                    if !update {
                        return;
                    }
                    match solve_right_cholesky(f_rhs(self, y.view(), u.view(), v.view(), bb, r.view(), &pw).view(), &chol) {
                        Ok(next) => fb.assign(&next),
                        Err(e) => {
                            sums.err = Some(e.context("SCH update_f (eq. 9)"));
                            return;
                        }
                    }
                    for (ptf, ph) in sums.phi_t_f.iter_mut().zip(&phi) {
                        general_mat_mul(1.0, &ph.t(), &fb, 1.0, ptf);
                    }
                    sums.add_f(fb.view(), y.view(), bb);
                },
            );
            let sums = Sums::total(parts)?;
            let j = sums.j + self.rho * ridge(u.view(), v.view(), &w);
            let prev = history.last().copied();
            history.push(j);
            if prev.is_some_and(|p: f64| p - j <= self.tol * p.abs()) || !update {
                break;
            }
            u = u_from_sums(self, sums.ftf, sums.fty)?;
            v = v_from_sums(self, yty.clone(), sums.ytf)?;
            for (t, ptf) in sums.phi_t_f.iter().enumerate() {
                w[t] = wfac[t].solve(ptf.view()).context("SCH update_w (eq. 18)")?;
            }
            r = procrustes_nearest(sums.ftb.view(), r.view()).context("SCH update_r (eq. 20)")?;
            set_b(&mut b, &f, &r);
            sweeps += 1;
        }
        drop(f);
        timings.sweeps_s = clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();

        // Optional refit to the learned codes: one more pass for Φₜᵀ(BRᵀ).
        let refit = if self.refit_hash {
            let ridge_w = self.refit_rho.unwrap_or(self.rho);
            let mut ws = Vec::with_capacity(m);
            for (t, &c) in anchors.iter().enumerate() {
                let parts = fold_parts(
                    n,
                    || Array2::<f64>::zeros((c, k)),
                    |s, e, acc| {
                        let target = b.slice(s![s..e, ..]).dot(&r.t());
                        general_mat_mul(1.0, &phi_block(t, s, e).t(), &target, 1.0, acc);
                    },
                );
                ws.push(
                    refit_w_from_sum(grams[t].view(), ridge_w, sum_in_order(parts, (c, k)).view())
                        .with_context(|| format!("modality {t}"))?,
                );
            }
            Some(ws)
        } else {
            None
        };

        // Codes of every training row: B for the fitted rows, sgn((Σₜ λₜ φₜWₜ) R) for the others,
        // block by block.
        let mut codes = BinaryCodes::from_signs(b.view());
        if let Some(rows) = sel {
            let mut full = Array2::<f64>::zeros((data.len(), k));
            for (ri, &i) in rows.iter().enumerate() {
                full.row_mut(i).assign(&b.row(ri));
            }
            drop(b);
            let mut fitted = vec![false; data.len()];
            rows.iter().for_each(|&i| fitted[i] = true);
            let others: Vec<usize> = (0..data.len()).filter(|&i| !fitted[i]).collect();
            for chunk in others.chunks(super::common::BLOCK_ROWS) {
                let mut fo = Array2::<f64>::zeros((chunk.len(), k));
                for t in 0..m {
                    let ph = rbf[t].transform(xs[t].select(Axis(0), chunk).view())?;
                    fo.scaled_add(self.lambda[t], &par_dot(ph.view(), w[t].view()));
                }
                for (row, &i) in sgn(fo.dot(&r).view()).outer_iter().zip(chunk) {
                    full.row_mut(i).assign(&row);
                }
            }
            codes = sign_codes(full.view());
        }
        if let Some(ws) = refit {
            w = ws;
        }
        timings.codes_s = clock.elapsed().as_secs_f64();
        let mut model = SchModel::from_parts(k, self.clone(), rbf, w, r, codes, history, n);
        model.timings = timings;
        Ok(model)
    }

    fn fit_in_memory(&self, data: &TrainSet, ctx: &FitContext) -> Result<SchModel> {
        let k = ctx.bits;
        let (rows, y) = data.common_labelled();
        let all_rows = rows.len() == data.len();
        let m = data.n_modalities();
        let mut rng = seeded_rng(ctx.seed, 0);
        let mut timings = FitTimings::default();
        let clock = std::time::Instant::now();

        // RBF features of the fitted rows, their Gram matrices and the fixed W systems.
        let mut rbf = Vec::with_capacity(m);
        let mut phi = Vec::with_capacity(m);
        let mut wfac = Vec::with_capacity(m);
        let mut grams = Vec::new(); // kept only for the refit
        for t in 0..m {
            let x = data.views[t].features("sch", t)?;
            let name = if self.modality_anchors.is_empty() { "sch.anchors".to_string() } else { format!("sch.modality_anchors[{t}]") };
            let anchors = capped_anchors(&name, self.anchors_of(t), rows.len());
            let (map, ph) = if all_rows {
                RbfMap::fit(x.view(), anchors, self.sigma_scale(t), &mut rng)
            } else {
                RbfMap::fit(x.select(Axis(0), &rows).view(), anchors, self.sigma_scale(t), &mut rng)
            }
            .with_context(|| format!("SCH: RBF features of modality {t}"))?;
            let gram = par_gram(ph.view()); // cached φᵀφ
            wfac.push(w_factor(self, gram.view(), self.lambda[t])?);
            if self.refit_hash {
                grams.push(gram);
            }
            rbf.push(map);
            phi.push(ph);
        }

        timings.features_s = clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();

        // Initialisation: F₀ = YG (a random ±1 code per class, see `ClassCodes`) and B₀ = sgn(F₀);
        // then U, V, W from F₀ (eqs. 12, 15, 18), R from F₀ and B₀ (20) and B (24), so that every
        // block is consistent before the first sweep.
        let c = y.ncols();
        let g = match self.class_codes {
            ClassCodes::Hadamard => hadamard_class_codes(c, k, &mut rng),
            ClassCodes::Random => random_class_codes(c, k, &mut rng),
        };
        let mut f = y.dot(&g);
        let b0 = sgn(f.view());
        let mut u = update_u(self, f.view(), y.view())?;
        let mut v = update_v(self, f.view(), y.view())?;
        let mut w: Vec<Array2<f64>> = Vec::with_capacity(m);
        for t in 0..m {
            w.push(update_w(&wfac[t], phi[t].view(), f.view())?);
        }
        let mut pw: Vec<Array2<f64>> = (0..m).map(|t| par_dot(phi[t].view(), w[t].view())).collect();
        let mut r = update_r(f.view(), b0.view(), Array2::<f64>::eye(k).view())?;
        let mut b = update_b(f.view(), r.view());
        let mut history = vec![objective(self, y.view(), f.view(), u.view(), v.view(), b.view(), r.view(), &w, &pw)];

        for _ in 0..self.max_iter {
            f = update_f(self, y.view(), u.view(), v.view(), b.view(), r.view(), &pw)?;
            u = update_u(self, f.view(), y.view())?;
            v = update_v(self, f.view(), y.view())?;
            for t in 0..m {
                w[t] = update_w(&wfac[t], phi[t].view(), f.view())?;
                pw[t] = par_dot(phi[t].view(), w[t].view());
            }
            r = update_r(f.view(), b.view(), r.view())?;
            b = update_b(f.view(), r.view());
            let j = objective(self, y.view(), f.view(), u.view(), v.view(), b.view(), r.view(), &w, &pw);
            let prev = *history.last().expect("non-empty");
            history.push(j);
            if prev - j <= self.tol * prev.abs() {
                break;
            }
        }
        timings.sweeps_s = clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();
        // Optional out-of-sample refit to the learned codes; it replaces Wₜ only after the codes
        // of unfitted rows below, which use the alternation's Wₜ. Φ is freed before those codes.
        let refit = if self.refit_hash {
            let ridge = self.refit_rho.unwrap_or(self.rho);
            let ws = (0..m)
                .map(|t| refit_w(grams[t].view(), ridge, phi[t].view(), b.view(), r.view()).with_context(|| format!("modality {t}")))
                .collect::<Result<Vec<_>>>()?;
            Some(ws)
        } else {
            None
        };
        drop((phi, grams));

        // Unified codes of every training row: B for the fitted rows; for rows outside them
        // sgn((Σₜ λₜ φₜWₜ) R) (see the module docs).
        let train_codes = if all_rows {
            sign_codes(b.view())
        } else {
            let others: Vec<usize> = {
                let mut fitted = vec![false; data.len()];
                rows.iter().for_each(|&i| fitted[i] = true);
                (0..data.len()).filter(|&i| !fitted[i]).collect()
            };
            let mut full = Array2::<f64>::zeros((data.len(), k));
            for (ri, &i) in rows.iter().enumerate() {
                full.row_mut(i).assign(&b.row(ri));
            }
            if !others.is_empty() {
                let mut fo = Array2::<f64>::zeros((others.len(), k));
                for t in 0..m {
                    let x = data.views[t].features("sch", t)?.select(Axis(0), &others);
                    let ph = rbf[t].transform(x.view())?;
                    fo.scaled_add(self.lambda[t], &par_dot(ph.view(), w[t].view()));
                }
                let bo = sgn(fo.dot(&r).view());
                for (oi, &i) in others.iter().enumerate() {
                    full.row_mut(i).assign(&bo.row(oi));
                }
            }
            sign_codes(full.view())
        };
        if let Some(ws) = refit {
            w = ws;
        }
        timings.codes_s = clock.elapsed().as_secs_f64();
        let mut model = SchModel::from_parts(k, self.clone(), rbf, w, r, train_codes, history, rows.len());
        model.timings = timings;
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics;
    use crate::shallow::common::{randn, random_orthogonal, ShallowRng};
    use ndarray::array;

    // ---- an independent, loop-based objective (no BLAS, no shared code) ------------------------
    #[allow(clippy::too_many_arguments)]
    fn naive_objective(
        p: &SchParams,
        y: &Array2<f64>,
        f: &Array2<f64>,
        u: &Array2<f64>,
        v: &Array2<f64>,
        b: &Array2<f64>,
        r: &Array2<f64>,
        w: &[Array2<f64>],
        phi: &[Array2<f64>],
    ) -> f64 {
        let (n, c) = y.dim();
        let k = f.ncols();
        let mut j = 0.0;
        for i in 0..n {
            for l in 0..c {
                let fu: f64 = (0..k).map(|q| f[[i, q]] * u[[q, l]]).sum();
                j += p.alpha * (y[[i, l]] - fu).powi(2);
            }
            for q in 0..k {
                let yv: f64 = (0..c).map(|l| y[[i, l]] * v[[l, q]]).sum();
                j += p.beta * (f[[i, q]] - yv).powi(2);
                let fr: f64 = (0..k).map(|z| f[[i, z]] * r[[z, q]]).sum();
                j += p.mu * (b[[i, q]] - fr).powi(2);
                for t in 0..phi.len() {
                    let pw: f64 = (0..phi[t].ncols()).map(|a| phi[t][[i, a]] * w[t][[a, q]]).sum();
                    j += p.lambda[t] * (f[[i, q]] - pw).powi(2);
                }
            }
        }
        let sq = |a: &Array2<f64>| a.iter().map(|x| x * x).sum::<f64>();
        j + p.rho * (sq(u) + sq(v) + w.iter().map(sq).sum::<f64>())
    }

    #[derive(Clone)]
    struct Toy {
        p: SchParams,
        y: Array2<f64>,
        phi: Vec<Array2<f64>>,
        f: Array2<f64>,
        u: Array2<f64>,
        v: Array2<f64>,
        b: Array2<f64>,
        r: Array2<f64>,
        w: Vec<Array2<f64>>,
    }

    impl Toy {
        fn new(seed: u64) -> Self {
            let mut rng = seeded_rng(seed, 7);
            let (n, c, k, dims) = (25, 3, 4, [6, 5]);
            let y = Array2::from_shape_fn((n, c), |(i, l)| if i % c == l || (i % 7 == 0 && l == 0) { 1.0 } else { 0.0 });
            let phi: Vec<_> = dims.iter().map(|&d| randn(n, d, &mut rng)).collect();
            // Weights off the paper's values (and λ not summing to 1) to exercise every term.
            let p = SchParams { alpha: 1.7, beta: 0.6, mu: 0.9, lambda: vec![0.4, 1.3], rho: 0.35, ..SchParams::paper() };
            Self {
                y,
                f: randn(n, k, &mut rng),
                u: randn(k, c, &mut rng),
                v: randn(c, k, &mut rng),
                b: sgn(randn(n, k, &mut rng).view()),
                r: random_orthogonal(k, &mut rng).unwrap(),
                w: dims.iter().map(|&d| randn(d, k, &mut rng)).collect(),
                phi,
                p,
            }
        }
        fn pw(&self) -> Vec<Array2<f64>> {
            self.phi.iter().zip(&self.w).map(|(ph, w)| ph.dot(w)).collect()
        }
        fn j(&self) -> f64 {
            naive_objective(&self.p, &self.y, &self.f, &self.u, &self.v, &self.b, &self.r, &self.w, &self.phi)
        }
    }

    /// Central finite-difference gradient of J in one block, with the naive objective.
    type SetEntry<'a> = &'a dyn Fn(&mut Toy, (usize, usize), f64);

    fn fd_grad(toy: &Toy, set: SetEntry, shape: (usize, usize)) -> Array2<f64> {
        let h = 1e-5;
        Array2::from_shape_fn(shape, |ij| {
            let mut a = toy.clone();
            set(&mut a, ij, h);
            let jp = a.j();
            set(&mut a, ij, -2.0 * h);
            let jm = a.j();
            (jp - jm) / (2.0 * h)
        })
    }

    fn assert_small(g: &Array2<f64>, scale: f64, what: &str) {
        let m = g.iter().fold(0.0f64, |a, &v| a.max(v.abs()));
        assert!(m < 1e-6 * scale.max(1.0), "{what}: gradient at the update is {m}, not 0");
    }

    fn perturbation_never_helps(
        toy: &Toy,
        apply: &dyn Fn(&mut Toy, &Array2<f64>),
        shape: (usize, usize),
        rng: &mut ShallowRng,
        what: &str,
    ) {
        let j0 = toy.j();
        for scale in [1e-3, 1e-1, 1.0] {
            for _ in 0..10 {
                let e = randn(shape.0, shape.1, rng) * scale;
                let mut a = toy.clone();
                apply(&mut a, &e);
                assert!(a.j() >= j0 - 1e-9 * j0.abs(), "{what}: perturbation {scale} lowered J from {j0} to {}", a.j());
            }
        }
    }

    #[test]
    fn objective_matches_the_naive_sum() {
        let toy = Toy::new(1);
        let fast = objective(&toy.p, toy.y.view(), toy.f.view(), toy.u.view(), toy.v.view(), toy.b.view(), toy.r.view(), &toy.w, &toy.pw());
        assert!((fast - toy.j()).abs() < 1e-9 * toy.j());
    }

    #[test]
    fn update_f_is_the_block_minimiser() {
        let mut toy = Toy::new(2);
        toy.f = update_f(&toy.p, toy.y.view(), toy.u.view(), toy.v.view(), toy.b.view(), toy.r.view(), &toy.pw()).unwrap();
        let g = fd_grad(&toy, &|t, (i, j), h| t.f[[i, j]] += h, toy.f.dim());
        assert_small(&g, toy.j(), "F (eq. 9)");
        let mut rng = seeded_rng(20, 0);
        perturbation_never_helps(&toy, &|t, e| t.f += e, toy.f.dim(), &mut rng, "F");
        // With Σλ ≠ 1 the printed (β + 1)I would not be the minimiser: its F has a non-zero gradient.
        let mut printed_a = toy.u.dot(&toy.u.t()) * toy.p.alpha;
        printed_a.diag_mut().mapv_inplace(|d| d + toy.p.beta + toy.p.mu + 1.0);
        let mut rhs = toy.y.dot(&toy.u.t()) * toy.p.alpha + toy.y.dot(&toy.v) * toy.p.beta + toy.b.dot(&toy.r.t()) * toy.p.mu;
        for (l, pw) in toy.p.lambda.iter().zip(toy.pw()) {
            rhs.scaled_add(*l, &pw);
        }
        let mut printed = Toy { f: solve_right_spd(rhs.view(), printed_a.view()).unwrap(), ..Toy::new(2) };
        printed.u = toy.u.clone();
        let gp = fd_grad(&printed, &|t, (i, j), h| t.f[[i, j]] += h, printed.f.dim());
        assert!(gp.iter().any(|v| v.abs() > 1e-3), "Σλ = 1.7 ≠ 1 must make the printed F update inexact");
    }

    #[test]
    fn update_u_is_the_block_minimiser() {
        let mut toy = Toy::new(3);
        toy.u = update_u(&toy.p, toy.f.view(), toy.y.view()).unwrap();
        let g = fd_grad(&toy, &|t, (i, j), h| t.u[[i, j]] += h, toy.u.dim());
        assert_small(&g, toy.j(), "U (eq. 12)");
        let mut rng = seeded_rng(21, 0);
        perturbation_never_helps(&toy, &|t, e| t.u += e, toy.u.dim(), &mut rng, "U");
    }

    #[test]
    fn update_v_is_the_block_minimiser() {
        let mut toy = Toy::new(4);
        toy.v = update_v(&toy.p, toy.f.view(), toy.y.view()).unwrap();
        let g = fd_grad(&toy, &|t, (i, j), h| t.v[[i, j]] += h, toy.v.dim());
        assert_small(&g, toy.j(), "V (eq. 15)");
        let mut rng = seeded_rng(22, 0);
        perturbation_never_helps(&toy, &|t, e| t.v += e, toy.v.dim(), &mut rng, "V");
    }

    #[test]
    fn update_w_is_the_block_minimiser_with_ridge_rho_over_lambda() {
        let mut toy = Toy::new(5);
        for t in 0..2 {
            let gram = toy.phi[t].t().dot(&toy.phi[t]);
            let fac = w_factor(&toy.p, gram.view(), toy.p.lambda[t]).unwrap();
            toy.w[t] = update_w(&fac, toy.phi[t].view(), toy.f.view()).unwrap();
            let shape = toy.w[t].dim();
            let g = fd_grad(&toy, &|a, (i, j), h| a.w[t][[i, j]] += h, shape);
            assert_small(&g, toy.j(), "W (eq. 18)");
            let mut rng = seeded_rng(23 + t as u64, 0);
            perturbation_never_helps(&toy, &|a, e| a.w[t] += e, shape, &mut rng, "W");
            // The printed ridge λₜ/γ (γ = ρ) in place of ρ/λₜ is not the minimiser.
            let mut wrong = gram.clone();
            wrong.diag_mut().mapv_inplace(|d| d + toy.p.lambda[t] / toy.p.rho);
            let mut other = Toy::new(5);
            other.w = toy.w.clone();
            other.w[t] = SpdFactor::new(wrong.view()).unwrap().solve(toy.phi[t].t().dot(&toy.f).view()).unwrap();
            assert!(other.j() > toy.j() + 1e-9);
        }
    }

    #[test]
    fn update_r_is_the_best_rotation() {
        let mut toy = Toy::new(6);
        toy.r = update_r(toy.f.view(), toy.b.view(), toy.r.view()).unwrap();
        let k = toy.r.nrows();
        let orth = toy.r.t().dot(&toy.r) - Array2::<f64>::eye(k);
        assert!(orth.iter().all(|v| v.abs() < 1e-10));
        let j0 = toy.j();
        let mut rng = seeded_rng(30, 0);
        for scale in [1e-3, 1e-1, 1.0] {
            for _ in 0..10 {
                // R·Q with Q a Cayley rotation (I − S)⁻¹(I + S) of a random skew S: stays orthogonal.
                let a = randn(k, k, &mut rng) * scale;
                let cay = cayley(&((&a - &a.t()) * 0.5));
                let mut other = Toy::new(6);
                other.r = toy.r.dot(&cay);
                assert!(other.j() >= j0 - 1e-9 * j0, "rotation {scale} lowered J");
            }
            for _ in 0..5 {
                let mut other = Toy::new(6);
                other.r = random_orthogonal(k, &mut rng).unwrap();
                assert!(other.j() >= j0 - 1e-9 * j0);
            }
        }
    }

    /// Cayley transform (I − S)⁻¹(I + S) of a skew-symmetric S (orthogonal), by Gaussian
    /// elimination written out (independent of LAPACK).
    fn cayley(s: &Array2<f64>) -> Array2<f64> {
        let eye = Array2::<f64>::eye(s.nrows());
        let b = naive_solve(&(&eye - s), &(&eye + s));
        let err = b.t().dot(&b) - &eye;
        assert!(err.iter().all(|v| v.abs() < 1e-9), "Cayley transform not orthogonal");
        b
    }

    #[test]
    fn update_b_is_the_best_binary_matrix() {
        let mut toy = Toy::new(7);
        toy.b = update_b(toy.f.view(), toy.r.view());
        let j0 = toy.j();
        let (n, k) = toy.b.dim();
        // J is separable in the entries of B: no single flip, and no random multi-flip, helps.
        for i in 0..n {
            for q in 0..k {
                let mut other = Toy::new(7);
                other.b = toy.b.clone();
                other.b[[i, q]] *= -1.0;
                assert!(other.j() >= j0 - 1e-12 * j0);
            }
        }
        assert!(toy.b.iter().all(|&v| v == 1.0 || v == -1.0));
    }

    #[test]
    fn hand_worked_tiny_case() {
        // n = 2, C = 2, k = 1, one modality; α = β = μ = λ = ρ = 1.
        let p = SchParams { alpha: 1.0, beta: 1.0, mu: 1.0, lambda: vec![1.0], rho: 1.0, ..SchParams::paper() };
        let y = array![[1.0, 0.0], [0.0, 1.0]];
        // eq. 9 with U = [1 0], V = [1 0]ᵀ, B = [1 1]ᵀ, R = [1], ΦW = [2 0]ᵀ:
        // rhs = YUᵀ + YV + BRᵀ + ΦW = [1+1+1+2, 0+0+1+0] = [5, 1]; UUᵀ + (1 + 1 + 1) = 4 ⇒ F = [1.25, 0.25].
        let f = update_f(
            &p,
            y.view(),
            array![[1.0, 0.0]].view(),
            array![[1.0], [0.0]].view(),
            array![[1.0], [1.0]].view(),
            array![[1.0]].view(),
            &[array![[2.0], [0.0]]],
        )
        .unwrap();
        assert!((f[[0, 0]] - 1.25).abs() < 1e-12 && (f[[1, 0]] - 0.25).abs() < 1e-12, "{f}");
        // eq. 12 with F = [1, −1]ᵀ: U = (FᵀF + 1)⁻¹FᵀY = [1, −1] / 3.
        let fm = array![[1.0], [-1.0]];
        let u = update_u(&p, fm.view(), y.view()).unwrap();
        assert!((u[[0, 0]] - 1.0 / 3.0).abs() < 1e-12 && (u[[0, 1]] + 1.0 / 3.0).abs() < 1e-12);
        // eq. 15: V = (YᵀY + I)⁻¹YᵀF = (2I)⁻¹[1, −1]ᵀ = [0.5, −0.5]ᵀ.
        let v = update_v(&p, fm.view(), y.view()).unwrap();
        assert!((v[[0, 0]] - 0.5).abs() < 1e-12 && (v[[1, 0]] + 0.5).abs() < 1e-12);
        // eq. 18 with Φ = [1, −1]ᵀ: W = (ΦᵀΦ + ρ/λ)⁻¹ΦᵀF = (2 + 1)⁻¹ · 2 = 2/3.
        let phi = array![[1.0], [-1.0]];
        let fac = w_factor(&p, phi.t().dot(&phi).view(), 1.0).unwrap();
        let w = update_w(&fac, phi.view(), fm.view()).unwrap();
        assert!((w[[0, 0]] - 2.0 / 3.0).abs() < 1e-12);
        // eq. 20 with k = 1: R = sign(FᵀB); FᵀB = −2 for B = [−1, 1]ᵀ ⇒ R = −1.
        let r = update_r(fm.view(), array![[-1.0], [1.0]].view(), array![[1.0]].view()).unwrap();
        assert!((r[[0, 0]] + 1.0).abs() < 1e-12);
        // eq. 24: B = sgn(FR) = [−1, 1]ᵀ.
        assert_eq!(update_b(fm.view(), r.view()), array![[-1.0], [1.0]]);
    }

    /// Class-clustered two-modality data: modality t of class c is centre_{t,c} + noise.
    /// Centres come from `seed`, the noise from `seed` and `noise_stream`: the same seed with another
    /// stream gives fresh items of the same clusters.
    pub(crate) fn clustered_items(
        n: usize,
        classes: usize,
        dims: &[usize],
        noise: f64,
        seed: u64,
        noise_stream: u64,
    ) -> (Vec<Array2<f32>>, Array2<u8>) {
        let mut rng = seeded_rng(seed, 99);
        let mut nrng = seeded_rng(seed, 100 + noise_stream);
        let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
        // All centres first, so that the same seed gives the same clusters for any n.
        let centres: Vec<Array2<f64>> = dims.iter().map(|&d| randn(classes, d, &mut rng)).collect();
        let views = dims
            .iter()
            .zip(&centres)
            .map(|(&d, centres)| {
                let mut x = randn(n, d, &mut nrng) * noise;
                for (i, &l) in labels.iter().enumerate() {
                    let mut row = x.row_mut(i);
                    row += &centres.row(l);
                }
                x.mapv(|v| v as f32)
            })
            .collect();
        (views, crate::bundle::one_hot(&labels, classes))
    }

    pub(crate) fn clustered(n: usize, classes: usize, dims: &[usize], noise: f64, seed: u64) -> (Vec<Array2<f32>>, Array2<u8>) {
        clustered_items(n, classes, dims, noise, seed, 0)
    }

    fn train_set(views: Vec<Array2<f32>>, labels: Array2<u8>) -> TrainSet {
        let c = labels.ncols();
        TrainSet::supervised(views.into_iter().map(View::Features).collect(), labels, (0..c).map(|i| format!("c{i}")).collect())
    }

    #[test]
    fn fit_decreases_the_objective_monotonically_and_learns() {
        let (views, labels) = clustered(240, 4, &[12, 8], 0.5, 1);
        let data = train_set(views.clone(), labels.clone());
        let p = SchParams { anchors: 60, max_iter: 15, tol: 0.0, ..SchParams::paper() };
        let model = p.fit(&data, &FitContext::new(16, 3)).unwrap();
        let h = model.history();
        assert_eq!(h.len(), 16, "tol = 0 runs max_iter sweeps unless J stops changing");
        for w in h.windows(2) {
            assert!(w[1] <= w[0] * (1.0 + 1e-12), "objective rose: {w:?}");
        }
        assert!(h.last().unwrap() < &h[0]);
        // Cross-modal retrieval on fresh items of the same clusters works well in both conventions.
        let (tv, tl) = clustered_items(80, 4, &[12, 8], 0.5, 1, 1); // same clusters, fresh items
        let q_img = model.encode(0, &View::Features(tv[0].clone())).unwrap();
        let q_txt = model.encode(1, &View::Features(tv[1].clone())).unwrap();
        let db = model.train_codes().unwrap();
        let db_txt = model.encode(1, &View::Features(views[1].clone())).unwrap();
        let i2t = metrics::map(q_img.view(), db.view(), tl.view(), labels.view()).unwrap();
        let t2i = metrics::map(q_txt.view(), db.view(), tl.view(), labels.view()).unwrap();
        let i2t_enc = metrics::map(q_img.view(), db_txt.view(), tl.view(), labels.view()).unwrap();
        assert!(i2t > 0.9 && t2i > 0.9 && i2t_enc > 0.9, "{i2t} {t2i} {i2t_enc}");
    }

    /// Largest |a − b| relative to the largest |b|.
    fn rel_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
        let d = (a - b).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        d / b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300)
    }

    #[test]
    fn streamed_fit_equals_the_in_memory_fit() {
        // n = 40,000 gives parts of several blocks (the streamed passes' in-part accumulation).
        // Single-label data in 10 classes at 12 bits: then F₀ = YG has no zero entries and no two
        // bit columns of G are equal up to sign. (Multi-label rows, or fewer classes than that,
        // make entries of FR exactly 0 in exact arithmetic; their signs are then decided by
        // rounding, in either path.) B₀ has one distinct row per class, so F₀ᵀB₀ and F₁ᵀB₀ have
        // rank 10 < 12 and the first two R updates go through the tie-break of
        // `procrustes_nearest`. The sweeps amplify the rounding differences of the two summation
        // orders (R from a nearly rank-deficient FᵀB, W from an ill-conditioned RBF Gram matrix):
        // J agrees to 1e-8, R and W to 1e-6, the codes exactly. (Without the tie-break R differs
        // by a rotation of O(1) in the null space and J by about 1e-5.)
        let check = |n: usize, hide_text_labels: bool, p: SchParams| {
            let (views, labels) = clustered(n, 10, &[7, 5], 0.8, 21);
            let mut data = train_set(views.clone(), labels);
            if hide_text_labels {
                for i in (0..n).step_by(7) {
                    data.labelled[1][i] = false;
                    data.labels[1].row_mut(i).fill(0);
                }
            }
            let ctx = FitContext::new(12, 4);
            let dense = p.fit(&data, &ctx).unwrap();
            let streamed = p.fit_streamed(&data, &ctx).unwrap();
            assert_eq!(dense.history().len(), streamed.history().len(), "same number of sweeps");
            for (a, b) in dense.history().iter().zip(streamed.history()) {
                assert!((a - b).abs() <= 1e-8 * a.abs(), "J {a} vs {b}");
            }
            assert_eq!(dense.fitted_rows(), streamed.fitted_rows());
            assert_eq!(dense.train_codes(), streamed.train_codes(), "learned codes");
            assert!(rel_diff(streamed.r(), dense.r()) < 1e-6, "R: {}", rel_diff(streamed.r(), dense.r()));
            for t in 0..2 {
                assert!(rel_diff(streamed.w(t), dense.w(t)) < 1e-6, "W of modality {t}: {}", rel_diff(streamed.w(t), dense.w(t)));
                let (a, b) = (streamed.rbf(t), dense.rbf(t));
                assert_eq!(a.anchors, b.anchors, "same anchor draws");
                assert!((a.sigma - b.sigma).abs() <= 1e-12 * b.sigma);
                assert!((&a.mean - &b.mean).iter().all(|d| d.abs() < 1e-12));
                let v = View::Features(views[t].clone());
                assert_eq!(streamed.encode(t, &v).unwrap(), dense.encode(t, &v).unwrap());
            }
            dense.history().len()
        };
        let sweeps = check(40_000, false, SchParams { anchors: 40, max_iter: 3, tol: 0.0, refit_hash: true, ..SchParams::paper() });
        assert_eq!(sweeps, 4);
        // Partially labelled rows and the stopping rule (a loose tol stops before max_iter).
        let sweeps = check(3_000, true, SchParams { anchors: 30, max_iter: 30, tol: 1e-3, ..SchParams::paper() });
        assert!(sweeps < 31, "the stopping rule ended the sweeps");
        // The streamed Y blocks are the rows of the in-memory Y (union over modalities), also
        // for multi-label and partially labelled rows.
        let (views, mut labels) = clustered(50, 4, &[3, 3], 0.5, 2);
        for i in (0..50).step_by(3) {
            labels[[i, (i / 3) % 4]] = 1;
        }
        let mut data = train_set(views, labels);
        data.labels[1][[5, 3]] = 1;
        data.labelled[0][7] = false;
        data.labels[0].row_mut(7).fill(0);
        let (rows, y) = data.common_labelled();
        assert_eq!(rows, fitted_rows(&data));
        assert_eq!(label_block(&data, Some(&rows), 0, rows.len()), y);
        assert_eq!(label_block(&data, Some(&rows), 10, 20), y.slice(s![10..20, ..]));
        // A bad feature value is refused by the streamed path too, naming its position.
        let (mut views, labels) = clustered(50, 3, &[4, 4], 0.5, 2);
        views[1][[17, 2]] = f32::NAN;
        let e = format!(
            "{:#}",
            SchParams { anchors: 10, ..SchParams::default() }.fit_streamed(&train_set(views, labels), &FitContext::new(8, 0)).unwrap_err()
        );
        assert!(e.contains("row 17, column 2"), "{e}");
    }

    #[test]
    fn fit_stops_when_the_objective_stops_decreasing() {
        let (views, labels) = clustered(120, 3, &[6, 5], 0.5, 2);
        let data = train_set(views, labels);
        let p = SchParams { anchors: 40, max_iter: 200, tol: 1e-3, ..SchParams::paper() };
        let model = p.fit(&data, &FitContext::new(8, 1)).unwrap();
        let h = model.history();
        assert!(h.len() < 201, "did not stop early");
        let n = h.len();
        assert!(h[n - 2] - h[n - 1] <= 1e-3 * h[n - 2]);
        for w in h[..n - 1].windows(2) {
            assert!(w[0] - w[1] > 1e-3 * w[0], "stopped late: {w:?}");
        }
    }

    #[test]
    fn any_number_of_modalities_eq25() {
        let (views, labels) = clustered(90, 3, &[5, 4, 7], 0.5, 3);
        let data = train_set(views.clone(), labels);
        let p = SchParams { anchors: 30, lambda: vec![0.2, 0.3, 0.5], max_iter: 8, tol: 0.0, ..SchParams::paper() };
        let model = p.fit(&data, &FitContext::new(12, 0)).unwrap();
        assert_eq!(model.n_modalities(), 3);
        for w in model.history().windows(2) {
            assert!(w[1] <= w[0] * (1.0 + 1e-12));
        }
        let c = model.encode(2, &View::Features(views[2].clone())).unwrap();
        assert_eq!((c.len(), c.bits()), (90, 12));
        assert!(model.encode(3, &View::Features(views[2].clone())).is_err());
        assert!(model.encode(0, &View::Features(views[2].clone())).is_err(), "wrong feature dimension must be refused");
    }

    #[test]
    fn fits_are_bit_identical_across_runs_and_thread_counts() {
        // Large enough (n·c·k > 2²²) for the parallel blocked products to be used.
        let (views, labels) = clustered(3000, 5, &[10, 6], 0.7, 4);
        let data = train_set(views, labels);
        let p = SchParams { anchors: 200, max_iter: 3, tol: 0.0, ..SchParams::paper() };
        let fit = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| p.fit(&data, &FitContext::new(16, 5)).unwrap())
        };
        let a = fit(1);
        for t in [2, 3] {
            let b = fit(t);
            assert_eq!(a.train_codes(), b.train_codes());
            assert_eq!(a.history(), b.history());
            assert_eq!(a.w(0), b.w(0));
        }
        let c = p.fit(&data, &FitContext::new(16, 6)).unwrap();
        assert_ne!(a.train_codes(), c.train_codes(), "another seed gives other codes");
    }

    #[test]
    fn per_modality_anchor_counts() {
        let (views, labels) = clustered(90, 3, &[6, 4], 0.5, 9);
        let data = train_set(views.clone(), labels);
        let p = SchParams { anchors: 50, modality_anchors: vec![20, 35], max_iter: 4, ..SchParams::paper() };
        let model = p.fit(&data, &FitContext::new(8, 1)).unwrap();
        assert_eq!((model.rbf(0).n_anchors(), model.rbf(1).n_anchors()), (20, 35));
        assert_eq!((model.w(0).dim(), model.w(1).dim()), ((20, 8), (35, 8)));
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        let back = SchModel::load(dir.path()).unwrap();
        let v = View::Features(views[1].clone());
        assert_eq!(back.encode(1, &v).unwrap(), model.encode(1, &v).unwrap());
        // Empty = `anchors` for every modality; the same counts given both ways give the same model.
        let same = SchParams { anchors: 20, modality_anchors: vec![20, 20], ..p.clone() }.fit(&data, &FitContext::new(8, 1)).unwrap();
        let plain = SchParams { anchors: 20, modality_anchors: vec![], ..p.clone() }.fit(&data, &FitContext::new(8, 1)).unwrap();
        assert_eq!(same.train_codes(), plain.train_codes());
        assert_eq!(plain.rbf(1).n_anchors(), 20);
    }

    #[test]
    fn save_load_round_trip_gives_the_same_codes() {
        let (views, labels) = clustered(70, 3, &[6, 4], 0.6, 5);
        let data = train_set(views.clone(), labels);
        let p = SchParams { anchors: 25, max_iter: 6, ..SchParams::paper() };
        let model = p.fit(&data, &FitContext::new(10, 2)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        let back = SchModel::load(dir.path()).unwrap();
        assert_eq!(back.bits(), 10);
        assert_eq!(back.params(), model.params());
        assert_eq!(back.train_codes(), model.train_codes());
        assert_eq!(back.history(), model.history());
        for (t, x) in views.iter().enumerate() {
            let v = View::Features(x.clone());
            assert_eq!(back.encode(t, &v).unwrap(), model.encode(t, &v).unwrap());
        }
        // A damaged file is refused, naming it.
        std::fs::write(dir.path().join("R.npy"), b"garbage").unwrap();
        let e = format!("{:#}", SchModel::load(dir.path()).unwrap_err());
        assert!(e.contains("R.npy"), "{e}");
        std::fs::write(dir.path().join("model.json"), r#"{"method": "segh"}"#).unwrap();
        assert!(SchModel::load(dir.path()).is_err());
    }

    /// Independent dense solve of A X = B (Gauss–Jordan with partial pivoting, plain loops).
    fn naive_solve(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
        let n = a.nrows();
        let (mut a, mut x) = (a.clone(), b.clone());
        for col in 0..n {
            let piv = (col..n).max_by(|&i, &j| a[[i, col]].abs().partial_cmp(&a[[j, col]].abs()).unwrap()).unwrap();
            for j in 0..n {
                a.swap([col, j], [piv, j]);
            }
            for j in 0..x.ncols() {
                x.swap([col, j], [piv, j]);
            }
            let d = a[[col, col]];
            for i in 0..n {
                if i != col {
                    let f = a[[i, col]] / d;
                    for j in 0..n {
                        a[[i, j]] -= f * a[[col, j]];
                    }
                    for j in 0..x.ncols() {
                        x[[i, j]] -= f * x[[col, j]];
                    }
                }
            }
        }
        for i in 0..n {
            let d = a[[i, i]];
            x.row_mut(i).mapv_inplace(|v| v / d);
        }
        x
    }

    #[test]
    fn refit_hash_is_the_ridge_fit_of_the_learned_codes() {
        let (views, labels) = clustered(60, 3, &[5, 4], 0.6, 11);
        let data = train_set(views.clone(), labels);
        let ctx = FitContext::new(6, 3);
        let plain_p = SchParams { anchors: 12, max_iter: 5, ..SchParams::paper() };
        let p = SchParams { refit_hash: true, refit_rho: Some(0.05), ..plain_p.clone() };
        let plain = plain_p.fit(&data, &ctx).unwrap();
        let model = p.fit(&data, &ctx).unwrap();
        // The alternation is untouched: same codes B, rotation and objective history.
        assert_eq!(model.train_codes(), plain.train_codes());
        assert_eq!((model.r(), model.history()), (plain.r(), plain.history()));
        let b = model.train_codes().unwrap().to_pm1_f64();
        let (n, k) = b.dim();
        for (t, x) in views.iter().enumerate() {
            let phi = model.rbf(t).transform(x.view()).unwrap();
            let c = phi.ncols();
            // Normal equations (ΦᵀΦ + ρ'I) W' = ΦᵀB by loops, solved independently.
            let a = Array2::from_shape_fn((c, c), |(i, j)| {
                (0..n).map(|r| phi[[r, i]] * phi[[r, j]]).sum::<f64>() + if i == j { 0.05 } else { 0.0 }
            });
            let rhs = Array2::from_shape_fn((c, k), |(i, j)| (0..n).map(|r| phi[[r, i]] * b[[r, j]]).sum::<f64>());
            let w_ref = naive_solve(&a, &rhs);
            let used = model.w(t).dot(model.r());
            let err = (&used - &w_ref).iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let scale = w_ref.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(err < 1e-8 * scale.max(1.0), "modality {t}: refit differs from the normal-equation solve by {err}");
            // encode = sgn(φ W') (eq. 26 form with the refit), and the refit fits B at least as well
            // as eq. 18's W R in the refit's own objective.
            let h = phi.dot(&w_ref);
            let codes = model.encode(t, &View::Features(x.clone())).unwrap().to_pm1_f64();
            for (&hv, &cv) in h.iter().zip(codes.iter()) {
                assert!(hv.abs() < 1e-9 || (hv >= 0.0) == (cv > 0.0));
            }
            let cost =
                |wm: &Array2<f64>| (&b - &phi.dot(wm)).iter().map(|v| v * v).sum::<f64>() + 0.05 * wm.iter().map(|v| v * v).sum::<f64>();
            let plain_w = plain.w(t).dot(plain.r());
            assert!(cost(&w_ref) < cost(&plain_w), "refit must lower ‖B − ΦW‖² + ρ'‖W‖²");
            assert!((&plain_w - &used).iter().any(|v| v.abs() > 1e-6), "refit changed nothing");
        }
        // refit_rho absent = ρ.
        let by_rho = SchParams { refit_rho: None, rho: 0.05, ..p.clone() }.fit(&data, &ctx).unwrap();
        let explicit = SchParams { refit_rho: Some(0.05), rho: 0.05, ..p.clone() }.fit(&data, &ctx).unwrap();
        assert_eq!(by_rho.w(1), explicit.w(1));
        // Save / load: the saved m{t}_W.npy and R.npy are what encode uses (φ·W·R, as a Python user
        // computes it), and the loaded model encodes identically.
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        let back = SchModel::load(dir.path()).unwrap();
        assert!(back.params().refit_hash && back.params().refit_rho == Some(0.05));
        let r_saved = crate::shallow::common::load_matrix(&dir.path().join("R.npy")).unwrap();
        for (t, x) in views.iter().enumerate() {
            let v = View::Features(x.clone());
            let codes = model.encode(t, &v).unwrap();
            assert_eq!(back.encode(t, &v).unwrap(), codes);
            let w_saved = crate::shallow::common::load_matrix(&dir.path().join(format!("m{t}_W.npy"))).unwrap();
            assert_eq!(&w_saved, model.w(t));
            let phi = model.rbf(t).transform(x.view()).unwrap();
            // The Python order (φW)R rounds differently from φ(WR): signs may differ only at ties.
            let h = phi.dot(&w_saved).dot(&r_saved);
            for (&hv, &cv) in h.iter().zip(codes.to_pm1_f64().iter()) {
                assert!(hv.abs() < 1e-9 || (hv >= 0.0) == (cv > 0.0), "modality {t}: φ·W·R = {hv} but code {cv}");
            }
        }
        // TOML / --param spelling, and a bad ridge is refused.
        let q: SchParams = toml::from_str("refit_hash = true\nrefit_rho = 0.01").unwrap();
        assert_eq!((q.refit_hash, q.refit_rho), (true, Some(0.01)));
        assert_eq!(toml::from_str::<SchParams>("refit_hash = true").unwrap().refit_rho, None);
        let e = format!("{:#}", SchParams { refit_rho: Some(0.0), ..p }.fit(&data, &ctx).unwrap_err());
        assert!(e.contains("sch.refit_rho"), "{e}");
    }

    #[test]
    fn partially_labelled_rows_get_codes_from_the_hash_functions() {
        let (views, labels) = clustered(80, 4, &[6, 5], 0.4, 6);
        let mut data = train_set(views, labels);
        for i in (0..80).step_by(8) {
            data.labelled[1][i] = false;
            data.labels[1].row_mut(i).fill(0);
        }
        let p = SchParams { anchors: 30, max_iter: 6, ..SchParams::paper() };
        let model = p.fit(&data, &FitContext::new(8, 0)).unwrap();
        assert_eq!(model.fitted_rows(), 70);
        let b = model.train_codes().unwrap();
        assert_eq!(b.len(), 80);
        // A hidden row's code agrees on most bits with the learned B of a labelled row of its class
        // (row i + 4, same class i % 4).
        let pm = b.to_pm1_f64();
        let mut agree = 0.0;
        for i in (0..80).step_by(8) {
            agree += pm.row(i).iter().zip(pm.row(i + 4).iter()).filter(|(a, b)| a == b).count() as f64;
        }
        assert!(agree / (10.0 * 8.0) > 0.8, "agreement {}", agree / 80.0);
    }

    #[test]
    fn bad_settings_are_refused() {
        let (views, labels) = clustered(30, 3, &[4, 4], 0.5, 7);
        let data = train_set(views, labels);
        let ctx = FitContext::new(8, 0);
        let ok = SchParams { anchors: 10, ..SchParams::paper() };
        let msg = |p: SchParams, bits: usize| format!("{:#}", p.fit(&data, &FitContext { bits, ..ctx.clone() }).unwrap_err());
        assert!(msg(SchParams { alpha: -1.0, ..ok.clone() }, 8).contains("sch.alpha"));
        assert!(msg(SchParams { rho: 0.0, ..ok.clone() }, 8).contains("sch.rho"));
        assert!(msg(SchParams { beta: -0.5, ..ok.clone() }, 8).contains("sch.beta"));
        assert!(msg(SchParams { mu: -1.0, ..ok.clone() }, 8).contains("sch.mu"));
        assert!(msg(SchParams { anchors: 0, ..ok.clone() }, 8).contains("sch.anchors"));
        assert!(msg(ok.clone(), 0).contains("bits"));
        // More anchors than labelled rows are capped when fitting, not refused.
        assert!(SchParams { anchors: 31, ..ok.clone() }.check(&data, 8).is_ok());
        assert!(msg(SchParams { modality_anchors: vec![10], ..ok.clone() }, 8).contains("2 modalities"));
        assert!(msg(SchParams { modality_anchors: vec![0, 10], ..ok.clone() }, 8).contains("modality_anchors[0]"));
        assert!(msg(SchParams { lambda: vec![0.5, 0.6], ..ok.clone() }, 8).contains("sum to 1"));
        assert!(msg(SchParams { lambda: vec![1.0], ..ok.clone() }, 8).contains("2 modalities"));
        assert!(msg(SchParams { lambda: vec![1.2, -0.2], ..ok.clone() }, 8).contains("lambda[1]"));
        assert!(msg(SchParams { max_iter: 0, ..ok.clone() }, 8).contains("max_iter"));
        assert!(msg(SchParams { sigma_scale: vec![1.0], ..ok.clone() }, 8).contains("sigma_scale"));
        assert!(msg(SchParams { sigma_scale: vec![1.0, 0.0], ..ok.clone() }, 8).contains("sigma_scale[1]"));
        let mut unl = data.clone();
        unl.labelled[0] = vec![false; 30];
        assert!(format!("{:#}", ok.fit(&unl, &ctx).unwrap_err()).contains("labelled"));
        let mut empty_row = data.clone();
        empty_row.labels.iter_mut().for_each(|l| l.row_mut(4).fill(0));
        assert!(format!("{:#}", ok.fit(&empty_row, &ctx).unwrap_err()).contains("row 4"));
        let mut imgs = data.clone();
        imgs.views[0] = View::Images(ndarray::Array4::zeros((30, 2, 2, 3)));
        assert!(format!("{:#}", ok.fit(&imgs, &ctx).unwrap_err()).contains("feature vectors"));
        // TOML section with an unknown key is refused; a known subset fills the rest with defaults.
        assert!(toml::from_str::<SchParams>("alpha = 1.0\nbogus = 2").is_err());
        let p: SchParams = toml::from_str("rho = 0.001\nlambda = [0.5, 0.5]\nclass_codes = \"random\"").unwrap();
        assert_eq!((p.rho, p.alpha, p.lambda.clone(), p.class_codes), (0.001, 4.5, vec![0.5, 0.5], ClassCodes::Random));
    }
}
