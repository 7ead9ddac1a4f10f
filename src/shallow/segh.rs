//! SeGH — Semantic-Guided Hashing for cross-modal retrieval (two steps).
//!
//! Notation as in the paper: modality m has features Xₘ (dₘ × n, columns = items), class-level
//! semantics S (e × n), codes H (k × n). The code below stores items as rows (Xₘ is n × dₘ,
//! Zₘ is n × e, H is n × k), so every product appears transposed; each function states the
//! equation it implements in the paper's orientation.
//!
//! # Step 1 — semantic encoder–decoder (eqs. 1, 2, 7)
//! Column i of S is the embedding of item i's class (the mean of its classes' embeddings when it
//! has several) (eq. 1). Per modality, minᵂ ‖Xₘ − WₘᵀS‖² + λₘ‖WₘXₘ − S‖² (eq. 2; a semantic
//! auto-encoder) has the stationarity condition (eq. 7)
//!
//! ```text
//!     S Sᵀ Wₘ + λₘ Wₘ Xₘ Xₘᵀ = (1 + λₘ) S Xₘᵀ,
//! ```
//!
//! a Sylvester equation whose two coefficient matrices are symmetric PSD. With the eigen-
//! decompositions S Sᵀ = Pₐ diag(a) Pₐᵀ and λₘXₘXₘᵀ = P_b diag(b) P_bᵀ it is solved exactly by
//! Wₘ = Pₐ [(Pₐᵀ C P_b) ⊘ (aᵢ + b_j)] P_bᵀ ([`solve_sylvester_psd`]). Entries whose denominator
//! is (numerically) zero are directions where the equation says nothing; they are set to 0, which
//! gives the minimum-norm solution. Features are centred with their training means (kept in the
//! model). Only items with a visible label enter step 1 (S needs a label).
//!
//! # Step 2 — semantic representations to Hamming space (eqs. 3–6, 8–10)
//! Zₘ = WₘXₘ. Affinities (eqs. 3–5): A⁽ᵐ⁾ = symmetrised k-nearest-neighbour heat-kernel graph of
//! modality m, σₘ² = mean squared kNN distance. The neighbours are searched in the semantic space
//! Zₘ (a choice: its dimension is at most the number of classes, where the search is cheap; kNN
//! on the raw features gave the same validation mAP within 0.01 in a numpy study), exactly with a
//! kd-tree up to `knn_exact_up_to` items and approximately above (random-projection forest plus
//! neighbour exploring, near-linear; recall > 0.95 in the tests). The inter-modality label affinity Ŝ_ij = ⟨ỹ⁽¹⁾ᵢ, ỹ⁽²⁾ⱼ⟩ symmetrised over the modality pairs,
//! ỹ = L2-normalised label rows (cosine of the label sets; 1 for the same single label).
//! A = A⁽¹⁾ + A⁽²⁾ + Ŝ, L = D − A (eq. 6). Objective (eq. 8):
//!
//! ```text
//!     min_{P,H}  Σₘ μₘ ‖H − P Zₘ‖² + γ tr(H L Hᵀ) + η ‖P‖²
//! ```
//!
//! - P update (eq. 9, the true minimiser): P = (Σₘ μₘ H Zₘᵀ)(Σₘ μₘ Zₘ Zₘᵀ + ηI)⁻¹.
//! - H update (eq. 10): H = (Σₘ μₘ P Zₘ)((Σₘ μₘ) I + γL)⁻¹.
//!
//! The paper inverts the n × n matrix (Σμ)I + γL. Here it is never formed: it is fixed across
//! iterations, and equals a sparse kNN part plus a low-rank label part (Ŝ = Ỹ₁Ỹ₂ᵀ-like, rank ≤ C),
//! so it is solved by Jacobi-preconditioned conjugate gradient whose mat-vec costs
//! O(n(k + C)) per right-hand side ([`pcg`]); the dense solve is kept for the tests.
//!
//! ## The degeneracy of the printed step 2, and the fix used here
//! Eq. 8 is minimised by P = 0, H = 0; alternating (9) and (10) is a power iteration
//! (Hₜ₊₁ = Hₜ · Zᵀ G⁻¹ Z M⁻¹ up to constants), so every code bit drifts to the same dominant
//! direction and the scale shrinks to 0 (mAP is best after one iteration and then falls).
//! SeGH here constrains the codes, as spectral and discrete hashing methods do:
//!
//! ```text
//!     H = R V,   V Vᵀ = n I_r,   V 1 = 0,   RᵀR = I_r,   r = min(k, rank Z)
//! ```
//!
//! i.e. r balanced, mutually decorrelated continuous code dimensions V, and a rotation R (k × r)
//! to k bits. When k ≤ rank Z (= at most the number of classes), R is square and this is exactly
//! H Hᵀ = nI (balanced, decorrelated bits). Longer codes cannot have more than rank-Z informative
//! decorrelated bits — S, hence every Zₘ, lives in the span of the class embeddings — and forcing
//! H Hᵀ = nI there fills the extra bits with within-class noise (a numpy study on Wikipedia: mAP
//! with learned codes fell from 0.25 to 0.20 I→T between 16 and 128 bits), so beyond rank Z the
//! extra bits are rotations of the same r dimensions. Under the constraint:
//! - H step ([`update_v`]): the unconstrained minimiser of eq. 10, H̃ = ΣμPZ · M⁻¹, projected onto
//!   the constraint set: V = √n · polar(centred H̃ R) (orthogonal Procrustes: the nearest V with
//!   VVᵀ = nI to H̃'s coordinates in R).
//! - R: eq. 8 is invariant to R once P is re-fitted (‖RV − PZ‖ splits into ‖V − RᵀPZ‖ plus a part
//!   that P zeroes; tr(RVLVᵀRᵀ) = tr(VLVᵀ)), so R is chosen to minimise the quantisation loss
//!   ‖B − RV‖², B = sign(RV) (ITQ, Gong & Lazebnik).
//! - P step: eq. 9 unchanged.
//! - In the coordinates of R (Pᵥ = RᵀP) eq. 8, the V update and the P update do not involve R at
//!   all, so the iterations run with r-dimensional V and Pᵥ, and R is fitted once at the end.
//! - B = sign(H); out-of-sample hᵐ(x) = sign(P Wₘ (x − x̄ₘ)).
//!
//! S, the minimum-norm Wₘ and every Zₘ lie in the span of the training classes' embeddings
//! (dimension q ≤ C), so the fit works in an orthonormal basis Q of that span (W̃ₘ = QᵀWₘ,
//! Z̃ₘ = ZₘQ, P̃ = PQ; identical results, tested) and maps back at the end: e = 384 (MiniLM) costs
//! no more than one-hot class vectors.
//!
//! With r = rank Z the constrained iteration reaches its fixed subspace after one step (the row
//! space of Z M⁻¹), so mAP no longer depends on the iteration count; with r < rank Z it is a
//! subspace iteration that converges to the dominant r-dimensional subspace. The printed,
//! unconstrained alternation is kept as `constraint = "printed"` to reproduce the degeneracy.
//!
//! # Anchor features (an option, not in the paper)
//! With `anchors = c > 0`, Xₘ is replaced everywhere by the centred RBF features Φₘ = φₘ(Xₘ) to c
//! anchors drawn from the training rows — the representation SCH and the CCA-ITQ baseline use
//! ([`RbfMap`], shared code in `shallow/common.rs`): step 1 solves eq. 7 with Φₘ in place of Xₘ
//! (Wₘ is e × c), and hᵐ(x) = sign(P Wₘ (φₘ(x) − Φ̄ₘ)). The paper's hash functions are linear in the
//! raw features, which on Wikipedia (10-d LDA text) cannot separate the classes well enough for the
//! encoded database, so the default uses 1000 anchors (σ scale 1.0 / 0.7 for image / text), chosen
//! on validation splits of the training items (docs/methods.md); `SeghParams::paper()` is the raw form.
//!
//! # Semi-supervised and zero-shot
//! Items with no visible label in modality m are left out of modality m's step-1 fit and have a
//! zero row in the label affinity: they are tied to the rest by the kNN terms only. Zero-shot needs
//! nothing special: train on seen classes; unseen-class items are encoded through Wₘ into the
//! space of the class embeddings. Since step 1 is linear, Zₘ lies in the span of the *seen*
//! classes' embeddings: an unseen class is represented by its projection onto that span, so
//! transfer works to the extent that the embeddings relate unseen to seen classes.

// `!(x > 0.0)` is used on purpose: it is also true for NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use super::common::{capped_anchors, fold_parts, fold_parts_mut, seeded_rng, sum_in_order, RbfMap};
use crate::codes::BinaryCodes;
use crate::method::{ensure_nonneg, ensure_pos, to_f64, Fit, FitContext, HashModel, TrainSet, View};
use crate::npy::{read_npy, write_npy, write_text_atomic};
use crate::numerics::itq::itq_from;
use crate::numerics::linalg::{numerical_rank, polar, polar_tall, row_space_basis};
use crate::numerics::random::random_orthonormal;
use crate::params::{Dim, MethodParams, Range, SearchSpace};
use anyhow::{anyhow, bail, Context, Result};
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use ndarray_linalg::{Cholesky, Diag, Eigh, InverseC, SolveTriangular, UPLO};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BinaryHeap;
use std::path::Path;
use std::time::Instant;

const METHOD: &str = "segh";

/// How the codes are constrained in step 2 (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CodeConstraint {
    /// H = RV with VVᵀ = nI, V1 = 0, RᵀR = I (balanced, decorrelated; exactly HHᵀ = nI when
    /// bits ≤ the semantic rank). The default.
    #[default]
    Orthogonal,
    /// The paper's printed, unconstrained alternation of eqs. 9 and 10. Degenerate (collapses
    /// towards P = 0, H = 0 with every bit in one direction); kept to reproduce that.
    Printed,
}

/// SeGH hyper-parameters. Defaults: the paper's weights (λ = 10³, μ = 10⁻³, γ = η = 10⁻²) on centred
/// RBF features to 1000 anchors with σ = 1.0 (image) and 0.7 (text) × the mean row-to-anchor
/// distance, chosen on validation splits of the Wikipedia and UCI digits training items
/// and confirmed on the emoji one
/// (docs/methods.md); needs at least 1000 training rows (set `anchors` lower for less).
/// [`SeghParams::paper`] = the paper's raw-feature settings. `k`, `iterations` and
/// `itq_iterations` are not given by the paper (k = 10 chosen on a validation split carved from the
/// Wikipedia and UCI training items; results vary by < 0.01 mAP for k in 5..40).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SeghParams {
    /// λₘ per modality (eq. 2): weight of the encoder term ‖WₘXₘ − S‖².
    pub lambda: Vec<f64>,
    /// μₘ per modality (eq. 8): weight of ‖H − PZₘ‖².
    pub mu: Vec<f64>,
    /// γ (eq. 8): weight of the graph term tr(HLHᵀ).
    pub gamma: f64,
    /// η (eq. 8): ridge on P.
    pub eta: f64,
    /// Neighbours per item in the intra-modality kNN graphs (eqs. 3, 4).
    pub k: usize,
    /// Alternations of the H (10) and P (9) updates (at most; see `objective_tol`).
    pub iterations: usize,
    /// ITQ iterations for the rotation R in each H update.
    pub itq_iterations: usize,
    pub constraint: CodeConstraint,
    /// Relative residual at which conjugate gradient stops.
    pub cg_tol: f64,
    pub cg_max_iter: usize,
    /// The kNN search is exact (kd-tree) up to this many training items and approximate above
    /// (random-projection forest + neighbour exploring), where exact search in the ~C-dimensional
    /// semantic space is no longer near-linear.
    pub knn_exact_up_to: usize,
    /// Stop iterating when the objective (eq. 8) changes by less than this fraction.
    pub objective_tol: f64,
    /// Input representation Xₘ of the step-1 encoders and of the hash functions. 0 (the paper):
    /// the raw features, centred. c > 0: the centred RBF features φ(x) to c anchors drawn from the
    /// training rows, as SCH and CCA-ITQ use ([`RbfMap`]); step 1 (eq. 7) then learns Wₘ on φ, so
    /// hᵐ(x) = sign(P Wₘ φₘ(x)) is non-linear in x. Not in the paper: chosen on
    /// validation (docs/methods.md).
    pub anchors: usize,
    /// Per-modality factor on the RBF bandwidth heuristic (σₘ = scale × mean row-to-anchor
    /// distance; empty = 1 for every modality). Used only when `anchors > 0`.
    pub sigma_scale: Vec<f64>,
}

/// What `cmh tune` varies for SeGH: the weights of eqs. 2 and 8, the graph's neighbours and the
/// input representation (raw features or RBF anchors, with their bandwidths).
pub const SEARCH_SPACE: SearchSpace = SearchSpace {
    dims: &[
        Dim { name: "lambda", range: Range::Choice(&["[1e2, 1e2]", "[1e3, 1e3]", "[1e4, 1e4]"]) },
        Dim { name: "mu", range: Range::Choice(&["[1e-4, 1e-4]", "[1e-3, 1e-3]", "[1e-2, 1e-2]"]) },
        Dim { name: "gamma", range: Range::Float { lo: 1e-3, hi: 1.0, log: true } },
        Dim { name: "eta", range: Range::Float { lo: 1e-3, hi: 1.0, log: true } },
        Dim { name: "k", range: Range::Choice(&["5", "10", "20"]) },
        Dim { name: "anchors", range: Range::Choice(&["0", "500", "1000"]) },
        Dim { name: "sigma_scale", range: Range::Choice(&["[1.0, 1.0]", "[1.0, 0.7]", "[1.0, 0.5]", "[0.8, 0.7]"]) },
    ],
    fidelity: None,
};

impl MethodParams for SeghParams {
    fn presets() -> Vec<(&'static str, Self)> {
        vec![("paper", Self::paper())]
    }
    fn search_space() -> SearchSpace {
        SEARCH_SPACE
    }
}

impl Default for SeghParams {
    fn default() -> Self {
        Self {
            lambda: vec![1e3, 1e3],
            mu: vec![1e-3, 1e-3],
            gamma: 1e-2,
            eta: 1e-2,
            k: 10,
            iterations: 5,
            itq_iterations: 50,
            constraint: CodeConstraint::Orthogonal,
            cg_tol: 1e-8,
            cg_max_iter: 2000,
            knn_exact_up_to: 10_000,
            objective_tol: 1e-9,
            anchors: 1000,
            sigma_scale: vec![1.0, 0.7],
        }
    }
}

impl SeghParams {
    /// The paper's settings: λ 10³, μ 10⁻³, γ 10⁻², η 10⁻² on the raw (centred) features
    /// (`--preset paper`).
    pub fn paper() -> Self {
        Self { lambda: vec![1e3, 1e3], mu: vec![1e-3, 1e-3], gamma: 1e-2, eta: 1e-2, anchors: 0, sigma_scale: vec![], ..Self::default() }
    }

    /// Checks the hyper-parameters alone (for `n_modalities` modalities and `n` training items).
    fn check_params(&self, n_modalities: usize, n: usize, bits: usize) -> Result<()> {
        if bits == 0 {
            bail!("segh: bits must be at least 1");
        }
        for (name, v) in [("lambda", &self.lambda), ("mu", &self.mu)] {
            if v.len() != n_modalities {
                bail!(
                    "segh: `{name}` has {} value(s) but the data has {n_modalities} modalities; give one per modality, \
                     e.g. {name} = {:?}",
                    v.len(),
                    vec![if name == "lambda" { 1e3 } else { 1e-3 }; n_modalities]
                );
            }
            for (m, &x) in v.iter().enumerate() {
                ensure_nonneg(&format!("segh {name}[{m}]"), x)?;
            }
        }
        if !(self.mu.iter().sum::<f64>() > 0.0) {
            bail!("segh: the mu weights must not all be 0 (their sum is the identity weight of the H system, eq. 10)");
        }
        ensure_nonneg("segh gamma", self.gamma)?;
        ensure_pos("segh eta (the ridge on P, eq. 9)", self.eta)?;
        if self.k == 0 {
            bail!("segh: k (neighbours per item) must be at least 1");
        }
        if self.k >= n {
            bail!("segh: k = {} neighbours needs more than k training items, but there are {n}", self.k);
        }
        if self.iterations == 0 {
            bail!("segh: iterations must be at least 1");
        }
        if !(self.cg_tol > 0.0 && self.cg_tol < 1.0) {
            bail!("segh: cg_tol must lie in (0, 1), found {}", self.cg_tol);
        }
        ensure_nonneg("segh objective_tol", self.objective_tol)?;
        if self.cg_max_iter == 0 {
            bail!("segh: cg_max_iter must be at least 1");
        }
        if !self.sigma_scale.is_empty() && self.sigma_scale.len() != n_modalities {
            bail!(
                "segh: `sigma_scale` has {} value(s) but the data has {n_modalities} modalities; give one per modality or none",
                self.sigma_scale.len()
            );
        }
        for (m, &v) in self.sigma_scale.iter().enumerate() {
            ensure_pos(&format!("segh sigma_scale[{m}]"), v)?;
        }
        Ok(())
    }
}

/// A fitted SeGH model: hᵐ(x) = sign(P Wₘ (ψₘ(x) − x̄ₘ)), ψₘ = identity (raw features, the
/// paper) or the RBF anchor map φₘ (`anchors > 0`).
#[derive(Clone, Debug)]
pub struct SeghModel {
    params: SeghParams,
    bits: usize,
    /// φₘ per modality when the model works on RBF anchor features; empty for raw features.
    rbf: Vec<RbfMap>,
    /// x̄ₘ: training means of each modality's input representation ψₘ(x) (dₘ, or c anchors).
    means: Vec<Array1<f64>>,
    /// Wₘ (e × dₘ, or e × c with anchors), step 1.
    w: Vec<Array2<f64>>,
    /// P (bits × e), step 2.
    p: Array2<f64>,
    /// Pₘ Wₘ (bits × dₘ), cached for encoding.
    proj: Vec<Array2<f64>>,
    train_codes: BinaryCodes,
    history: Vec<f64>,
    info: FitInfo,
}

/// Facts about a fit, for logs and benchmarks.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FitInfo {
    /// r: the number of decorrelated code dimensions (min(bits, rank Z)).
    pub semantic_rank: usize,
    /// Conjugate-gradient iterations of each H-system solve.
    pub cg_iterations: Vec<usize>,
    /// Seconds spent in step 1, the graph (kNN + Laplacian) and step 2.
    pub seconds_step1: f64,
    pub seconds_graph: f64,
    pub seconds_step2: f64,
    /// Of which the ITQ rotation.
    pub seconds_itq: f64,
}

impl SeghModel {
    pub fn params(&self) -> &SeghParams {
        &self.params
    }
    /// Wₘ (e × dₘ) of modality m.
    pub fn w(&self, m: usize) -> &Array2<f64> {
        &self.w[m]
    }
    /// P (bits × e).
    pub fn p(&self) -> &Array2<f64> {
        &self.p
    }
    /// Training mean of modality m's input representation (raw features or RBF features).
    pub fn mean(&self, m: usize) -> &Array1<f64> {
        &self.means[m]
    }
    /// The RBF anchor map of modality m, when the model uses anchor features (`anchors > 0`).
    pub fn rbf(&self, m: usize) -> Option<&RbfMap> {
        self.rbf.get(m)
    }
    pub fn n_modalities(&self) -> usize {
        self.w.len()
    }
    pub fn info(&self) -> &FitInfo {
        &self.info
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        params: SeghParams,
        bits: usize,
        rbf: Vec<RbfMap>,
        means: Vec<Array1<f64>>,
        w: Vec<Array2<f64>>,
        p: Array2<f64>,
        train_codes: BinaryCodes,
        history: Vec<f64>,
        info: FitInfo,
    ) -> Self {
        let proj = w.iter().map(|wm| p.dot(wm)).collect();
        Self { params, bits, rbf, means, w, p, proj, train_codes, history, info }
    }

    /// The continuous projections P Wₘ (ψₘ(x) − x̄ₘ) of modality m's items (n × bits).
    pub fn project(&self, modality: usize, x: ArrayView2<f32>) -> Result<Array2<f64>> {
        if modality >= self.w.len() {
            bail!("segh: modality {modality} does not exist; the model has {} modalities", self.w.len());
        }
        let xc = match self.rbf.get(modality) {
            Some(map) => map.transform(x).with_context(|| format!("segh: RBF features of modality {modality}"))? - &self.means[modality],
            None => {
                let d = self.means[modality].len();
                if x.ncols() != d {
                    bail!("segh: modality {modality} was trained on {d}-dimensional features, got {} columns", x.ncols());
                }
                to_f64(x) - &self.means[modality]
            }
        };
        Ok(xc.dot(&self.proj[modality].t()))
    }

    /// Reads a model written by [`HashModel::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("model.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let file: ModelFile = serde_json::from_str(&text).map_err(|e| anyhow!("{}: not a SeGH model file ({e})", path.display()))?;
        if file.method != METHOD {
            bail!("{}: holds a `{}` model, not `{METHOD}`", path.display(), file.method);
        }
        let m = file.feature_dims.len();
        if !file.sigma.is_empty() && file.sigma.len() != m {
            bail!("{}: `sigma` has {} values but `feature_dims` lists {m} modalities", path.display(), file.sigma.len());
        }
        let rbf: Vec<RbfMap> =
            file.sigma.iter().enumerate().map(|(i, &s)| RbfMap::load(dir, &format!("m{i}"), s)).collect::<Result<_>>()?;
        for (i, map) in rbf.iter().enumerate() {
            if map.dim() != file.feature_dims[i] {
                bail!("{}: m{i}_anchors.npy has {} columns but feature_dims[{i}] = {}", dir.display(), map.dim(), file.feature_dims[i]);
            }
        }
        let read = |name: &str, shape: &[usize]| -> Result<ndarray::ArrayD<f64>> {
            let p = dir.join(name);
            let a = read_npy(&p)?;
            if a.shape() != shape {
                bail!("{}: expected shape {shape:?} (from model.json), found {:?}", p.display(), a.shape());
            }
            let a = a.to_f64();
            if a.iter().any(|v| !v.is_finite()) {
                bail!("{}: holds NaN or infinite values", p.display());
            }
            Ok(a)
        };
        let mut w = Vec::new();
        let mut means = Vec::new();
        for (i, &d) in file.feature_dims.iter().enumerate() {
            let d = rbf.get(i).map_or(d, |map| map.n_anchors());
            w.push(read(&format!("W_{i}.npy"), &[file.embedding_dim, d])?.into_dimensionality()?);
            means.push(read(&format!("mean_{i}.npy"), &[d])?.into_dimensionality()?);
        }
        let p = read("P.npy", &[file.bits, file.embedding_dim])?.into_dimensionality()?;
        let codes_path = dir.join("train_codes.npy");
        let train_codes = BinaryCodes::load_npy(&codes_path, Some(file.bits))?;
        if m == 0 {
            bail!("{}: no modalities listed in feature_dims", path.display());
        }
        Ok(Self::new(file.params, file.bits, rbf, means, w, p, train_codes, file.history, file.info))
    }
}

/// `model.json` of a saved SeGH model.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    method: String,
    bits: usize,
    params: SeghParams,
    /// dₘ per modality (modality 0 = image, 1 = text): the raw feature dimension.
    feature_dims: Vec<usize>,
    /// RBF bandwidth σₘ per modality when the model uses anchor features (`m{i}_anchors.npy`,
    /// `m{i}_phi_mean.npy`); empty for raw features.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sigma: Vec<f64>,
    /// e, the class-embedding dimension.
    embedding_dim: usize,
    history: Vec<f64>,
    info: FitInfo,
    /// How to encode new items in Python.
    encode: String,
    files: serde_json::Value,
}

impl HashModel for SeghModel {
    fn method(&self) -> &'static str {
        METHOD
    }
    fn bits(&self) -> usize {
        self.bits
    }
    fn encode(&self, modality: usize, view: &View) -> Result<BinaryCodes> {
        let x = view.features(METHOD, modality)?;
        Ok(BinaryCodes::from_signs(self.project(modality, x.view())?.view()))
    }
    fn train_codes(&self) -> Option<&BinaryCodes> {
        Some(&self.train_codes)
    }
    fn history(&self) -> &[f64] {
        &self.history
    }
    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        for (m, (w, mean)) in self.w.iter().zip(&self.means).enumerate() {
            write_npy(&dir.join(format!("W_{m}.npy")), w)?;
            write_npy(&dir.join(format!("mean_{m}.npy")), mean)?;
        }
        for (m, map) in self.rbf.iter().enumerate() {
            map.save(dir, &format!("m{m}"))?;
        }
        write_npy(&dir.join("P.npy"), &self.p)?;
        self.train_codes.save_npy(dir, "train_codes")?;
        let m = self.w.len();
        let file = ModelFile {
            method: METHOD.into(),
            bits: self.bits,
            params: self.params.clone(),
            feature_dims: if self.rbf.is_empty() {
                self.means.iter().map(|v| v.len()).collect()
            } else {
                self.rbf.iter().map(|m| m.dim()).collect()
            },
            sigma: self.rbf.iter().map(|m| m.sigma).collect(),
            embedding_dim: self.p.ncols(),
            history: self.history.clone(),
            info: self.info.clone(),
            encode: if self.rbf.is_empty() {
                "codes_m = np.where((x - mean_m) @ W_m.T @ P.T >= 0, 1, -1)  (modality m: 0 = image, 1 = text)".into()
            } else {
                "modality m (0 = image, 1 = text): phi = exp(-||x - m{m}_anchors||^2 / (2 sigma[m]^2)) - m{m}_phi_mean; \
                 codes_m = np.where((phi - mean_m) @ W_m.T @ P.T >= 0, 1, -1)"
                    .into()
            },
            files: serde_json::json!({
                "W": (0..m).map(|i| format!("W_{i}.npy")).collect::<Vec<_>>(),
                "mean": (0..m).map(|i| format!("mean_{i}.npy")).collect::<Vec<_>>(),
                "P": "P.npy",
                "anchors": (0..self.rbf.len()).map(|i| [format!("m{i}_anchors.npy"), format!("m{i}_phi_mean.npy")]).collect::<Vec<_>>(),
                "train_codes": ["train_codes.npy", "train_codes_packed.npy"],
            }),
        };
        write_text_atomic(&dir.join("model.json"), &serde_json::to_string_pretty(&file)?)
    }
}

impl Fit for SeghParams {
    type Model = SeghModel;

    fn check(&self, data: &TrainSet, bits: usize) -> Result<()> {
        let n = data.len();
        let nm = data.n_modalities();
        if nm == 0 {
            bail!("segh: the training set has no modalities");
        }
        self.check_params(nm, n, bits)?;
        let emb = data.require_class_embeddings("SeGH")?;
        if emb.nrows() != data.n_classes() {
            bail!("segh: the class embeddings have {} rows but the data has {} classes", emb.nrows(), data.n_classes());
        }
        if emb.ncols() == 0 {
            bail!("segh: the class embeddings have 0 columns");
        }
        if let Some(((c, j), v)) = emb.indexed_iter().find(|(_, v)| !v.is_finite()) {
            bail!("segh: class embedding of class {} ({}) holds {v} at column {j}", c, data.class_names.get(c).map_or("?", |s| s));
        }
        for m in 0..nm {
            let x = data.views[m].features(METHOD, m)?;
            if let Some(((i, j), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
                bail!("segh: features of modality {m} hold {v} at row {i}, column {j}");
            }
            if labelled_rows(data, m).is_empty() {
                bail!("segh: modality {m} has no labelled training item; step 1 needs labelled items in every modality");
            }
        }
        // Largest f64 arrays per modality: the inputs ψ (n × p, p = anchors or the feature
        // dimension), pᵀp, the encoder (p × E and p × bits); for the codes: the kNN graph
        // (n × k, both directions) and n × bits iterates of the conjugate gradient.
        // The streamed fit holds ψ for one block of rows per parallel part (8) and Zₘ (n × q, q ≤
        // min(E, classes)) instead of ψ for every row.
        let streamed = self.in_memory_bytes(data) > STREAM_INPUTS_ABOVE_BYTES;
        let q = emb.ncols().min(data.n_classes()) as f64;
        let (n, k, e) = (n as f64, bits as f64, emb.ncols() as f64);
        let per_modality: f64 = (0..nm)
            .map(|m| if self.anchors > 0 { self.anchors } else { data.views[m].features(METHOD, m).map_or(0, |x| x.ncols()) } as f64)
            .map(|p| if streamed { 16.0 * super::common::BLOCK_ROWS as f64 * p + n * q } else { 2.0 * n * p } + 2.0 * p * p + p * (e + k))
            .sum();
        let bytes = 8.0 * (per_modality + 4.0 * n * self.k as f64 + 8.0 * n * k + 2.0 * k * k);
        crate::method::ensure_memory("segh", bits, bytes, "inputs, kNN graph and code iterates")?;
        Ok(())
    }

    /// In memory up to [`STREAM_INPUTS_ABOVE_BYTES`] of inputs, streamed above ([`SeghParams::fit_streamed`]).
    fn fit_checked(&self, data: &TrainSet, ctx: &FitContext) -> Result<SeghModel> {
        fit_impl(self, data, ctx, Solver::Cg, self.in_memory_bytes(data) > STREAM_INPUTS_ABOVE_BYTES)
    }
}

/// How the fixed n × n system ((Σμ)I + γL) X = B of the H update is solved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
enum Solver {
    /// Jacobi-preconditioned conjugate gradient with sparse + low-rank mat-vecs (near-linear in n).
    Cg,
    /// Dense Cholesky of the n × n matrix (O(n³); for tests on small n).
    Dense,
}

fn labelled_rows(data: &TrainSet, m: usize) -> Vec<usize> {
    (0..data.len()).filter(|&i| data.labelled[m][i] && data.labels[m].row(i).iter().any(|&v| v != 0)).collect()
}

/// Above this many bytes of step-1 inputs and projections (n × Σₘ(dₘ + e) × 8, dₘ = the raw
/// dimension or the anchor count), SeGH streams: it recomputes the inputs block by block instead of
/// keeping them ([`SeghParams::fit_streamed`]).
pub const STREAM_INPUTS_ABOVE_BYTES: usize = 2 << 30;

/// Right-hand sides per conjugate-gradient solve in the streamed fit (the solve's memory is a few
/// n × this arrays; each column's iterates do not depend on the other columns).
const CG_COLUMN_GROUP: usize = 8;

impl SeghParams {
    /// Fits SeGH with bounded memory: the inputs ψₘ(X) (raw or RBF features) are recomputed block by
    /// block for each pass of step 1 and never held n × dₘ; Zₘ is held for one modality at a time,
    /// turned in place into its kNN coordinates; step 2 keeps only Rz = Σₘ μₘZₘ and
    /// Gz = Σₘ μₘZₘᵀZₘ (eq. 8's data term is (Σμ)‖H‖² − 2⟨HᵀRz, P⟩ + ⟨P Gz, P⟩, and tr(HᵀLH) is
    /// summed row by row), solves the H system for [`CG_COLUMN_GROUP`] columns at a time, and takes
    /// the polar factor through a thin QR. The result equals the in-memory fit's up to the order of
    /// floating-point sums. `fit` chooses this path by itself above [`STREAM_INPUTS_ABOVE_BYTES`].
    pub fn fit_streamed(&self, data: &TrainSet, ctx: &FitContext) -> Result<SeghModel> {
        data.validate()?;
        self.check(data, ctx.bits)?;
        fit_impl(self, data, ctx, Solver::Cg, true)
    }

    /// Bytes the in-memory fit holds for the step-1 inputs and projections.
    fn in_memory_bytes(&self, data: &TrainSet) -> usize {
        let e = data.class_embeddings.as_ref().map_or(0, |c| c.ncols().min(data.n_classes()));
        let dims: usize = data
            .views
            .iter()
            .map(|v| if self.anchors > 0 { self.anchors } else { v.features(METHOD, 0).map_or(0, |x| x.ncols()) } + e)
            .sum();
        data.len() * dims * std::mem::size_of::<f64>()
    }
}

fn fit_impl(params: &SeghParams, data: &TrainSet, ctx: &FitContext, solver: Solver, streamed: bool) -> Result<SeghModel> {
    let bits = ctx.bits;
    let n = data.len();
    let nm = data.n_modalities();
    let emb = to_f64(data.require_class_embeddings("SeGH")?.view());
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
    let mut info = FitInfo::default();

    // Orthonormal basis Q (e × q) of the span of the embeddings of the classes that label training
    // items. S, hence the minimum-norm Wₘ of eq. 7 and every Zₘ, lies in that span (q ≤ C), so
    // step 1 is solved for W̃ₘ = QᵀWₘ and step 2 runs in the q coordinates Z̃ₘ = ZₘQ with
    // identical results: Wₘ = QW̃ₘ, P = P̃Qᵀ (Σμ ZᵀZ + ηI acts as ηI on the complement, where
    // Σμ ZᵀH has no component).
    let used: Vec<usize> =
        (0..data.n_classes()).filter(|&c| (0..nm).any(|m| (0..n).any(|i| data.labelled[m][i] && data.labels[m][[i, c]] != 0))).collect();
    let q_basis = row_space_basis(&emb.select(Axis(0), &used))?;
    if q_basis.ncols() == 0 {
        bail!("segh: the class embeddings of the training classes are all zero");
    }
    let emb_q = emb.dot(&q_basis);
    let e = q_basis.ncols();

    // ---- Step 1 (eqs. 1, 2, 7), and per modality its kNN graph (eqs. 3–5) ----
    let mut means = Vec::with_capacity(nm);
    let mut ws_q = Vec::with_capacity(nm);
    let mut rbf = Vec::new();
    // Σ μₘ Zₘ (rows), G = Σ μₘ Zₘ Zₘᵀ + ηI and Gz = Σ μₘ Zₘ Zₘᵀ; the Zₘ themselves only in memory mode.
    let mut rz = Array2::<f64>::zeros((n, e));
    let mut g = Array2::<f64>::eye(e) * params.eta;
    let mut gz = Array2::<f64>::zeros((e, e));
    let mut zs = Vec::new();
    let mut knn_parts = Vec::with_capacity(nm);
    for m in 0..nm {
        let t0 = Instant::now();
        let raw = data.views[m].features(METHOD, m)?;
        // With anchors, Xₘ := φₘ(Xₘ), centred RBF features to anchors drawn from the training rows
        // (their own random stream, so the raw-feature path is unchanged).
        let scale = params.sigma_scale.get(m).copied().unwrap_or(1.0);
        let mut arng = seeded_rng(ctx.seed, 0x5e6 + m as u64);
        let rows = labelled_rows(data, m);
        let (map, mean, w, z) = if streamed {
            step1_streamed(params, raw.view(), &data.labels[m], &rows, &emb_q, params.lambda[m], scale, &mut arng)
        } else {
            step1_in_memory(params, raw.view(), &data.labels[m], &rows, &emb_q, params.lambda[m], scale, &mut arng)
        }
        .with_context(|| format!("segh step 1 (eq. 7) for modality {m}"))?;
        rbf.extend(map);
        means.push(mean);
        ws_q.push(w);
        let ztz = z.t().dot(&z);
        rz.scaled_add(params.mu[m], &z);
        g.scaled_add(params.mu[m], &ztz);
        gz.scaled_add(params.mu[m], &ztz);
        info.seconds_step1 += t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let coords = if streamed {
            semantic_coordinates_in_place(z, &ztz)?
        } else {
            let c = semantic_coordinates(&z)?;
            zs.push(z);
            c
        };
        let nn = if n <= params.knn_exact_up_to {
            knn(&coords, params.k)
        } else {
            knn_approx(coords, params.k, ctx.seed.wrapping_add(m as u64))
        };
        knn_parts.push(knn_affinity(&nn));
        info.seconds_graph += t1.elapsed().as_secs_f64();
    }
    let t1 = Instant::now();
    let graph = Graph::new(n, knn_parts, &data.labels, &data.labelled);
    info.seconds_graph += t1.elapsed().as_secs_f64();

    // ---- Step 2 (eqs. 8–10) ----
    let t2 = Instant::now();
    let mu_sum: f64 = params.mu.iter().sum();
    let system = System { graph: &graph, c: mu_sum, gamma: params.gamma };
    let g_inv = g.invc().context("segh: Σμ Zₘ Zₘᵀ + ηI is not positive definite")?;
    let rank = numerical_rank(&rz.t().dot(&rz))?;
    if rank == 0 {
        bail!("segh: the step-1 semantic projections Zₘ are all zero (labels, embeddings or features carry no signal)");
    }
    let r = rank.min(bits);
    info.semantic_rank = r;

    let mut history = Vec::with_capacity(params.iterations);
    let group = if streamed { CG_COLUMN_GROUP } else { usize::MAX };
    // Solves M X = B for the columns of B that `rhs(j0, j1)` gives, `cols` in all.
    let solve = |rhs: &dyn Fn(usize, usize) -> Array2<f64>, cols: usize, info: &mut FitInfo| -> Result<Array2<f64>> {
        let (x, iters) = solve_columns(&system, rhs, cols, group, solver, params.cg_tol, params.cg_max_iter)?;
        info.cg_iterations.push(iters);
        Ok(x)
    };
    let project = |a: Array2<f64>| {
        (if streamed { polar_tall(a, true) } else { polar(&a, true) })
            .context("segh: the code dimensions collapsed; the data may carry less semantic rank than assumed")
    };
    let objective = |h: &Array2<f64>, p: &Array2<f64>| {
        if streamed {
            objective_from_sums(h, p, &rz, &gz, mu_sum, &system, params.eta)
        } else {
            objective(h, p, &zs, &params.mu, &system, params.eta)
        }
    };
    let converged = |history: &[f64]| -> bool {
        let k = history.len();
        k >= 2 && (history[k - 2] - history[k - 1]).abs() <= params.objective_tol * history[k - 2].abs()
    };
    let (h, p) = match params.constraint {
        CodeConstraint::Orthogonal => {
            // In the coordinates of the constraint, H = V Rᵀ and P = R Pᵥ (Pᵥ = RᵀP): for any R with
            // RᵀR = I, eq. 8 equals Σμ‖V − Zₘ Pᵥᵀ‖² + γ tr(VᵀLV) + η‖Pᵥ‖², the V update's right-hand
            // side is Rz Pᵀ R = Rz Pᵥᵀ, and the P update (eq. 9) gives Pᵥ = Vᵀ Rz G⁻¹. So the
            // iterations run in r dimensions, and R is fitted once at the end (ITQ), P = R Pᵥ.
            let mut pv: Array2<f64> = Array2::from_shape_simple_fn((r, e), || rng.sample(StandardNormal));
            let mut v = Array2::<f64>::zeros((0, r));
            for _ in 0..params.iterations {
                drop(v);
                v = update_v(&rz, &pv, |b, cols| solve(b, cols, &mut info), project)?;
                pv = update_p(&v, &rz, &g_inv);
                history.push(objective(&v, &pv));
                if converged(&history) {
                    break;
                }
            }
            let t = Instant::now();
            // ITQ with R (r × bits, orthonormal rows) started from a random orthonormal matrix.
            let (rot, _) = itq_from(v.view(), random_orthonormal(bits, r, &mut rng)?.reversed_axes(), params.itq_iterations)?;
            let rot = rot.reversed_axes();
            info.seconds_itq = t.elapsed().as_secs_f64();
            (v.dot(&rot.t()), rot.dot(&pv))
        }
        CodeConstraint::Printed => {
            let mut p: Array2<f64> = Array2::from_shape_simple_fn((bits, e), || rng.sample(StandardNormal));
            let mut h = Array2::<f64>::zeros((n, bits));
            for _ in 0..params.iterations {
                // Eq. 10 as printed: H = (Σ μₘ P Zₘ)((Σμ)I + γL)⁻¹ (rows: M⁻¹ Rz Pᵀ).
                h = solve(&|j0, j1| rz.dot(&p.slice(s![j0..j1, ..]).t()), bits, &mut info)?;
                p = update_p(&h, &rz, &g_inv);
                history.push(objective(&h, &p));
                if converged(&history) {
                    break;
                }
            }
            (h, p)
        }
    };
    info.seconds_step2 = t2.elapsed().as_secs_f64();
    let train_codes = BinaryCodes::from_signs(h.view());
    // Back to the embedding space: Wₘ = Q W̃ₘ (e × dₘ), P = P̃ Qᵀ (bits × e).
    let ws = ws_q.iter().map(|w| q_basis.dot(w)).collect();
    let p = p.dot(&q_basis.t());
    Ok(SeghModel::new(params.clone(), bits, rbf, means, ws, p, train_codes, history, info))
}

/// The result of step 1 for one modality: its RBF map (with anchors), the mean x̄ₘ of its inputs,
/// W̃ₘ (q × dₘ) and Zₘ = (ψₘ(Xₘ) − x̄ₘ) W̃ₘᵀ (n × q).
type Step1 = (Option<RbfMap>, Array1<f64>, Array2<f64>, Array2<f64>);

/// Step 1 with the inputs ψₘ(Xₘ) (raw or RBF features) in memory.
#[allow(clippy::too_many_arguments)]
fn step1_in_memory(
    params: &SeghParams,
    raw: ArrayView2<f32>,
    labels: &Array2<u8>,
    rows: &[usize],
    emb_q: &Array2<f64>,
    lambda: f64,
    scale: f64,
    arng: &mut ChaCha8Rng,
) -> Result<Step1> {
    let (map, x) = if params.anchors > 0 {
        let (map, phi) =
            RbfMap::fit(raw, capped_anchors("segh.anchors", params.anchors, raw.nrows()), scale, arng).context("RBF features")?;
        (Some(map), phi)
    } else {
        (None, to_f64(raw))
    };
    let mean = x.mean_axis(Axis(0)).expect("n > 0");
    let xc = x - &mean;
    let s = semantic_matrix(labels, rows, emb_q);
    let w = update_w(&s, &xc.select(Axis(0), rows), lambda)?;
    let z = xc.dot(&w.t());
    Ok((map, mean, w, z))
}

/// Step 1 without the n × dₘ inputs: ψₘ(X) is recomputed for one block of rows at a time in each
/// pass (the mean, then the sums SᵀS, XᵀX and SᵀX of eq. 7 over the labelled rows, then Zₘ).
#[allow(clippy::too_many_arguments)]
fn step1_streamed(
    params: &SeghParams,
    raw: ArrayView2<f32>,
    labels: &Array2<u8>,
    rows: &[usize],
    emb_q: &Array2<f64>,
    lambda: f64,
    scale: f64,
    arng: &mut ChaCha8Rng,
) -> Result<Step1> {
    let n = raw.nrows();
    let map = if params.anchors > 0 {
        Some(
            RbfMap::fit_streamed(raw, None, capped_anchors("segh.anchors", params.anchors, raw.nrows()), scale, arng)
                .context("RBF features")?,
        )
    } else {
        None
    };
    let psi = |s0: usize, e0: usize| match &map {
        Some(mp) => mp.features_of(raw.slice(s![s0..e0, ..])),
        None => to_f64(raw.slice(s![s0..e0, ..])),
    };
    let d = map.as_ref().map_or(raw.ncols(), |mp| mp.n_anchors());
    let q = emb_q.ncols();
    let sums = fold_parts(n, || Array2::<f64>::zeros((1, d)), |s0, e0, acc| *acc += &psi(s0, e0).sum_axis(Axis(0)));
    let mean = sum_in_order(sums, (1, d)).index_axis_move(Axis(0), 0) / n as f64;
    let mut labelled = vec![false; n];
    rows.iter().for_each(|&i| labelled[i] = true);
    let sums = fold_parts(
        n,
        || (Array2::<f64>::zeros((d, d)), Array2::<f64>::zeros((q, d)), Array2::<f64>::zeros((q, q))),
        |s0, e0, (xtx, stx, sts)| {
            let local: Vec<usize> = (s0..e0).filter(|&i| labelled[i]).collect();
            if local.is_empty() {
                return;
            }
            let xc = (psi(s0, e0) - &mean).select(Axis(0), &local.iter().map(|&i| i - s0).collect::<Vec<_>>());
            let sb = semantic_matrix(labels, &local, emb_q);
            general_mat_mul(1.0, &xc.t(), &xc, 1.0, xtx);
            general_mat_mul(1.0, &sb.t(), &xc, 1.0, stx);
            general_mat_mul(1.0, &sb.t(), &sb, 1.0, sts);
        },
    );
    let (mut xtx, mut stx, mut sts) = (Array2::<f64>::zeros((d, d)), Array2::<f64>::zeros((q, d)), Array2::<f64>::zeros((q, q)));
    for (a, b, c) in sums {
        xtx += &a;
        stx += &b;
        sts += &c;
    }
    let w = solve_sylvester_psd(&sts, &(xtx * lambda), &(stx * (1.0 + lambda)))?;
    let mut z = Array2::<f64>::zeros((n, q));
    fold_parts_mut(&mut z, || (), |s0, e0, mut zb, _| general_mat_mul(1.0, &(psi(s0, e0) - &mean), &w.t(), 0.0, &mut zb));
    Ok((map, mean, w, z))
}

// ---------------------------------------------------------------------------------------------
// Step 1
// ---------------------------------------------------------------------------------------------

/// Eq. 1: S (rows: labelled items × e), row i = mean of the embeddings of item i's classes.
fn semantic_matrix(labels: &Array2<u8>, rows: &[usize], emb: &Array2<f64>) -> Array2<f64> {
    let mut s = Array2::<f64>::zeros((rows.len(), emb.ncols()));
    for (r, &i) in rows.iter().enumerate() {
        let classes: Vec<usize> = labels.row(i).iter().enumerate().filter(|(_, &v)| v != 0).map(|(c, _)| c).collect();
        let mut out = s.row_mut(r);
        for &c in &classes {
            out.scaled_add(1.0 / classes.len() as f64, &emb.row(c));
        }
    }
    s
}

/// Eq. 7: Wₘ solving S Sᵀ Wₘ + λₘ Wₘ Xₘ Xₘᵀ = (1 + λₘ) S Xₘᵀ (rows: `s` is n × e, `x` n × dₘ;
/// returns Wₘ, e × dₘ).
fn update_w(s: &Array2<f64>, x: &Array2<f64>, lambda: f64) -> Result<Array2<f64>> {
    let a = s.t().dot(s);
    let b = x.t().dot(x) * lambda;
    let c = s.t().dot(x) * (1.0 + lambda);
    solve_sylvester_psd(&a, &b, &c)
}

/// Solves A W + W B = C for symmetric positive semi-definite A (p × p) and B (q × q) with two
/// symmetric eigendecompositions: W = Pₐ [(Pₐᵀ C P_b) ⊘ (aᵢ + b_j)] P_bᵀ. Entries whose
/// denominator is below 1e-12 of the largest are set to 0 (the minimum-norm solution).
fn solve_sylvester_psd(a: &Array2<f64>, b: &Array2<f64>, c: &Array2<f64>) -> Result<Array2<f64>> {
    let (ea, pa) = a.eigh(UPLO::Lower).context("eigendecomposition of S Sᵀ")?;
    let (eb, pb) = b.eigh(UPLO::Lower).context("eigendecomposition of λ X Xᵀ")?;
    let scale = ea.iter().chain(eb.iter()).fold(0.0f64, |m, v| m.max(v.abs()));
    let tol = 1e-12 * scale.max(f64::MIN_POSITIVE);
    let mut t = pa.t().dot(c).dot(&pb);
    for ((i, j), v) in t.indexed_iter_mut() {
        let den = ea[i] + eb[j];
        *v = if den > tol { *v / den } else { 0.0 };
    }
    Ok(pa.dot(&t).dot(&pb.t()))
}

// ---------------------------------------------------------------------------------------------
// Step 2: graph (eqs. 3–6), system, updates (eqs. 8–10)
// ---------------------------------------------------------------------------------------------

/// Coordinates of the rows of `z` (n × e) in an orthonormal basis of their span (dimension ≤ the
/// number of classes), so kNN distances are exact and the kd-tree works in few dimensions.
fn semantic_coordinates(z: &Array2<f64>) -> Result<Array2<f64>> {
    let (ev, u) = z.t().dot(z).eigh(UPLO::Lower).context("eigendecomposition of Zᵀ Z")?;
    let max = ev.iter().fold(0.0f64, |m, &v| m.max(v));
    let keep: Vec<usize> = (0..ev.len()).filter(|&i| ev[i] > 1e-12 * max && max > 0.0).collect();
    if keep.is_empty() {
        return Ok(Array2::zeros((z.nrows(), 1)));
    }
    Ok(z.dot(&u.select(Axis(1), &keep)))
}

/// [`semantic_coordinates`] written over z's own buffer (row block by row block; a row's
/// coordinates never reach past its own old values), given ZᵀZ.
fn semantic_coordinates_in_place(z: Array2<f64>, ztz: &Array2<f64>) -> Result<Array2<f64>> {
    let (n, e) = z.dim();
    let (ev, u) = ztz.eigh(UPLO::Lower).context("eigendecomposition of Zᵀ Z")?;
    let max = ev.iter().fold(0.0f64, |m, &v| m.max(v));
    let keep: Vec<usize> = (0..ev.len()).filter(|&i| ev[i] > 1e-12 * max && max > 0.0).collect();
    if keep.is_empty() {
        return Ok(Array2::zeros((n, 1)));
    }
    let u = u.select(Axis(1), &keep);
    let q = keep.len();
    let z = if z.is_standard_layout() { z } else { z.as_standard_layout().into_owned() };
    let (mut buf, offset) = z.into_raw_vec_and_offset();
    buf.drain(..offset.unwrap_or(0));
    for s0 in (0..n).step_by(super::common::BLOCK_ROWS) {
        let e0 = (s0 + super::common::BLOCK_ROWS).min(n);
        let c = ArrayView2::from_shape((e0 - s0, e), &buf[s0 * e..e0 * e]).expect("row-major block").dot(&u);
        buf[s0 * q..e0 * q].copy_from_slice(c.as_slice().expect("standard layout"));
    }
    buf.truncate(n * q);
    Ok(Array2::from_shape_vec((n, q), buf)?)
}

/// Eqs. 3–4: symmetrised kNN heat-kernel affinity, a_ij = ½(w_ij + w_ji) with
/// w_ij = exp(−‖zᵢ − z_j‖²/σ²) when j is one of i's k nearest neighbours `nn[i]` (squared
/// distance, index), σ² = mean squared kNN distance; as triplets (i, j, a_ij), duplicates summed
/// later.
fn knn_affinity(nn: &[Vec<(f64, usize)>]) -> Vec<(u32, u32, f64)> {
    let n = nn.len();
    let k = nn.first().map_or(0, |r| r.len());
    let total: f64 = nn.iter().flat_map(|row| row.iter().map(|&(d2, _)| d2)).sum();
    let count = nn.iter().map(|r| r.len()).sum::<usize>().max(1);
    let sigma2 = total / count as f64;
    let sigma2 = if sigma2 > 0.0 { sigma2 } else { 1.0 };
    let mut t = Vec::with_capacity(2 * n * k);
    for (i, row) in nn.iter().enumerate() {
        for &(d2, j) in row {
            let w = 0.5 * (-d2 / sigma2).exp();
            let (i, j) = (i as u32, j as u32);
            t.push((i, j, w));
            t.push((j, i, w));
        }
    }
    t
}

/// The rows of a sparse n × C matrix: the L2-normalised label rows Ỹₘ (classes ascending; a row
/// that is unlabelled or has no class is empty). Products go row by row over the non-zeros in a
/// fixed order, so every column of a product is computed the same way whatever the other columns.
struct LabelRows {
    indptr: Vec<usize>,
    class: Vec<u32>,
    value: Vec<f64>,
    classes: usize,
}

impl LabelRows {
    fn new(l: &Array2<u8>, labelled: &[bool]) -> Self {
        let mut t = Self { indptr: vec![0], class: Vec::new(), value: Vec::new(), classes: l.ncols() };
        for (i, row) in l.outer_iter().enumerate() {
            let norm = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
            if labelled[i] && norm > 0.0 {
                for (c, &v) in row.iter().enumerate().filter(|(_, &v)| v != 0) {
                    t.class.push(c as u32);
                    t.value.push(v as f64 / norm);
                }
            }
            t.indptr.push(t.class.len());
        }
        t
    }

    fn row(&self, i: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        let r = self.indptr[i]..self.indptr[i + 1];
        self.class[r.clone()].iter().map(|&c| c as usize).zip(self.value[r].iter().copied())
    }

    /// Ỹᵀ V (C × r), rows summed in the fixed order of [`fold_parts`].
    fn t_dot(&self, v: ArrayView2<f64>) -> Array2<f64> {
        let n = self.indptr.len() - 1;
        let shape = (self.classes, v.ncols());
        let parts = fold_parts(
            n,
            || Array2::<f64>::zeros(shape),
            |s, e, acc| {
                for i in s..e {
                    for (c, y) in self.row(i) {
                        acc.row_mut(c).scaled_add(y, &v.row(i));
                    }
                }
            },
        );
        sum_in_order(parts, shape)
    }

    /// out += w · Ỹ T (T: C × r).
    fn mul_add(&self, w: f64, t: &Array2<f64>, out: &mut Array2<f64>) {
        out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(i, mut o)| {
            let mut acc = Array1::<f64>::zeros(t.ncols());
            for (c, y) in self.row(i) {
                acc.scaled_add(y, &t.row(c));
            }
            o.scaled_add(w, &acc);
        });
    }

    /// Σ_c Ỹᵢ꜀ Z̃ᵢ꜀ for each row i (both sparse rows with ascending classes).
    fn row_dots(&self, other: &LabelRows) -> Array1<f64> {
        Array1::from_shape_fn(self.indptr.len() - 1, |i| {
            let mut theirs = other.row(i).peekable();
            let mut sum = 0.0;
            for (c, y) in self.row(i) {
                while theirs.peek().is_some_and(|&(d, _)| d < c) {
                    theirs.next();
                }
                if let Some(&(d, z)) = theirs.peek() {
                    if d == c {
                        sum += y * z;
                    }
                }
            }
            sum
        })
    }

    fn to_dense(&self) -> Array2<f64> {
        let n = self.indptr.len() - 1;
        let mut y = Array2::<f64>::zeros((n, self.classes));
        for i in 0..n {
            for (c, v) in self.row(i) {
                y[[i, c]] = v;
            }
        }
        y
    }
}

/// The affinity A = Σₘ A⁽ᵐ⁾ + Ŝ and its Laplacian L = D − A (eq. 6), kept as a sparse kNN part
/// and low-rank label factors; Ŝ = mean over ordered modality pairs (a ≠ b) of Ỹₐ Ỹ_bᵀ (Ỹ = label
/// rows L2-normalised, zero for unlabelled items), so for shared labels Ŝ_ij = cos(yᵢ, y_j).
struct Graph {
    knn: Csr,
    /// Ỹₘ (n × C, sparse) per modality.
    y: Vec<LabelRows>,
    pairs: Vec<(usize, usize)>,
    degree: Array1<f64>,
    /// Diagonal of A (self-affinities of the label term).
    self_affinity: Array1<f64>,
}

impl Graph {
    fn new(n: usize, knn_parts: Vec<Vec<(u32, u32, f64)>>, labels: &[Array2<u8>], labelled: &[Vec<bool>]) -> Self {
        let knn = Csr::from_triplets(n, knn_parts.into_iter().flatten().collect());
        let y: Vec<LabelRows> = labels.iter().zip(labelled).map(|(l, lab)| LabelRows::new(l, lab)).collect();
        let nm = y.len();
        let pairs: Vec<(usize, usize)> =
            if nm == 1 { vec![(0, 0)] } else { (0..nm).flat_map(|a| (0..nm).filter(move |&b| b != a).map(move |b| (a, b))).collect() };
        let mut g = Self { knn, y, pairs, degree: Array1::zeros(n), self_affinity: Array1::zeros(n) };
        let ones = Array2::<f64>::ones((n, 1));
        g.degree = g.affinity_mul(ones.view()).column(0).to_owned();
        let w = 1.0 / g.pairs.len() as f64;
        let mut diag = g.knn.diagonal();
        for &(a, b) in &g.pairs {
            diag += &(g.y[a].row_dots(&g.y[b]) * w);
        }
        g.self_affinity = diag;
        g
    }

    fn len(&self) -> usize {
        self.degree.len()
    }

    /// A V.
    fn affinity_mul(&self, v: ArrayView2<f64>) -> Array2<f64> {
        let mut out = self.knn.mul_dense(v);
        let w = 1.0 / self.pairs.len() as f64;
        for &(a, b) in &self.pairs {
            let t = self.y[b].t_dot(v);
            self.y[a].mul_add(w, &t, &mut out);
        }
        out
    }

    /// tr(Vᵀ L V) = Σᵢ dᵢ‖vᵢ‖² − Σᵢⱼ Aᵢⱼ vᵢ·vⱼ, without forming L V: the kNN part row by row, the
    /// label part as Σ w ⟨Ỹₐᵀ V, Ỹ_bᵀ V⟩.
    fn quadratic_form(&self, v: ArrayView2<f64>) -> f64 {
        let parts = fold_parts(
            self.len(),
            || 0.0f64,
            |s, e, acc| {
                for i in s..e {
                    let vi = v.row(i);
                    let mut a = self.degree[i] * vi.dot(&vi);
                    for p in self.knn.indptr[i]..self.knn.indptr[i + 1] {
                        a -= self.knn.values[p] * vi.dot(&v.row(self.knn.indices[p] as usize));
                    }
                    *acc += a;
                }
            },
        );
        let w = 1.0 / self.pairs.len() as f64;
        let t: Vec<Array2<f64>> = self.y.iter().map(|y| y.t_dot(v)).collect();
        let label: f64 = self.pairs.iter().map(|&(a, b)| w * (&t[a] * &t[b]).sum()).sum();
        parts.into_iter().sum::<f64>() - label
    }

    /// L V = D V − A V (eq. 6).
    fn laplacian_mul(&self, v: ArrayView2<f64>) -> Array2<f64> {
        let av = self.affinity_mul(v);
        let mut out = &v * &self.degree.view().insert_axis(Axis(1));
        out -= &av;
        out
    }

    fn laplacian_diag(&self) -> Array1<f64> {
        &self.degree - &self.self_affinity
    }

    /// The dense n × n affinity (tests and the dense solver only).
    fn dense_affinity(&self) -> Array2<f64> {
        let mut a = self.knn.to_dense();
        let w = 1.0 / self.pairs.len() as f64;
        for &(p, q) in &self.pairs {
            a.scaled_add(w, &self.y[p].to_dense().dot(&self.y[q].to_dense().t()));
        }
        a
    }
}

/// M = c I + γ L, the fixed matrix of the H update (eq. 10), c = Σₘ μₘ.
struct System<'a> {
    graph: &'a Graph,
    c: f64,
    gamma: f64,
}

impl System<'_> {
    fn mul(&self, v: ArrayView2<f64>) -> Array2<f64> {
        let mut out = self.graph.laplacian_mul(v) * self.gamma;
        out.scaled_add(self.c, &v);
        out
    }
    fn diag(&self) -> Array1<f64> {
        self.graph.laplacian_diag() * self.gamma + self.c
    }
    fn dense(&self) -> Array2<f64> {
        let a = self.graph.dense_affinity();
        let mut m = -a * self.gamma;
        for i in 0..self.graph.len() {
            m[[i, i]] += self.c + self.gamma * self.graph.degree[i];
        }
        m
    }
}

/// Solves M X = B; returns X and the iteration count (0 for the dense solve).
fn solve_system(sys: &System, b: &Array2<f64>, solver: Solver, tol: f64, max_iter: usize) -> Result<(Array2<f64>, usize)> {
    match solver {
        Solver::Cg => pcg(|v| sys.mul(v), &sys.diag(), b, tol, max_iter),
        Solver::Dense => {
            let l = sys.dense().cholesky(UPLO::Lower).context("segh: the H-system matrix is not positive definite")?;
            let y = l.solve_triangular(UPLO::Lower, Diag::NonUnit, b)?;
            let x = l.t().to_owned().solve_triangular(UPLO::Upper, Diag::NonUnit, &y)?;
            Ok((x, 0))
        }
    }
}

/// Jacobi-preconditioned conjugate gradient for a symmetric positive definite operator, run on
/// all columns of B at once (independent scalars per column, one shared mat-vec per iteration).
/// Stops when every column has ‖r‖ ≤ tol ‖b‖.
fn pcg(
    op: impl Fn(ArrayView2<f64>) -> Array2<f64>,
    diag: &Array1<f64>,
    b: &Array2<f64>,
    tol: f64,
    max_iter: usize,
) -> Result<(Array2<f64>, usize)> {
    let (n, k) = b.dim();
    let dinv = diag.mapv(|d| if d > 0.0 { 1.0 / d } else { 1.0 });
    let b = b.as_standard_layout().into_owned();
    let bnorm: Vec<f64> = col_dots(&b, &b).iter().map(|v| v.sqrt()).collect();
    let mut x = Array2::<f64>::zeros((n, k));
    let mut r = b.clone();
    let mut z = &r * &dinv.view().insert_axis(Axis(1));
    let mut p = z.clone();
    let mut rz = col_dots(&r, &z);
    let mut rr = col_dots(&r, &r);
    let mut active: Vec<bool> = bnorm.iter().map(|&v| v > 0.0).collect();
    let mut alpha = vec![0.0; k];
    let mut beta = vec![0.0; k];
    for it in 0..=max_iter {
        for j in 0..k {
            if active[j] && rr[j].sqrt() <= tol * bnorm[j] {
                active[j] = false;
            }
        }
        if !active.iter().any(|&a| a) {
            return Ok((x, it));
        }
        if it == max_iter {
            break;
        }
        let q = op(p.view());
        let pq = col_dots(&p, &q);
        for j in 0..k {
            alpha[j] = 0.0;
            if active[j] {
                if !(pq[j] > 0.0) {
                    bail!(
                        "segh: conjugate gradient met a non-positive curvature ({}); the H-system matrix is not positive definite",
                        pq[j]
                    );
                }
                alpha[j] = rz[j] / pq[j];
            }
        }
        // One pass over the rows: x += αp, r −= αq, z = D⁻¹r, and the new rᵀz, rᵀr.
        let mut rz_new = vec![0.0; k];
        rr.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..n {
            let (xi, ri, zi) =
                (x.row_mut(i).into_slice().expect("row"), r.row_mut(i).into_slice().expect("row"), z.row_mut(i).into_slice().expect("row"));
            let (pi, qi) = (p.row(i).to_slice().expect("row"), q.row(i).to_slice().expect("row"));
            for j in 0..k {
                xi[j] += alpha[j] * pi[j];
                ri[j] -= alpha[j] * qi[j];
                zi[j] = dinv[i] * ri[j];
                rz_new[j] += ri[j] * zi[j];
                rr[j] += ri[j] * ri[j];
            }
        }
        for j in 0..k {
            beta[j] = if active[j] { rz_new[j] / rz[j] } else { 0.0 };
        }
        rz = rz_new;
        ndarray::Zip::from(p.rows_mut()).and(z.rows()).for_each(|mut pi, zi| {
            for j in 0..k {
                pi[j] = zi[j] + beta[j] * pi[j];
            }
        });
    }
    let worst = (0..k).filter(|&j| active[j]).map(|j| rr[j].sqrt() / bnorm[j]).fold(0.0f64, f64::max);
    bail!("segh: conjugate gradient did not reach relative residual {tol} in {max_iter} iterations (worst {worst:.2e}); raise cg_max_iter or cg_tol")
}

/// Column-wise dot products Σᵢ a_ij b_ij of two n × k matrices, in one pass over the rows.
fn col_dots(a: &Array2<f64>, b: &Array2<f64>) -> Vec<f64> {
    let mut out = vec![0.0; a.ncols()];
    for (ra, rb) in a.rows().into_iter().zip(b.rows()) {
        for (o, (x, y)) in out.iter_mut().zip(ra.iter().zip(rb.iter())) {
            *o += x * y;
        }
    }
    out
}

/// H update (eq. 10) under the constraint H = V Rᵀ, VᵀV = nI, 1ᵀV = 0, RᵀR = I (rows), in the
/// coordinates of R (`pv` = RᵀP, r × e). The unconstrained minimiser H̃ = M⁻¹ (Σμ Zₘ) Pᵀ is
/// projected onto the constraint set: V = √n polar(centred H̃ R), the nearest V with VᵀV = nI
/// (orthogonal Procrustes), where H̃ R = M⁻¹ Rz Pᵥᵀ needs only r right-hand sides. Returns V.
fn update_v(
    rz: &Array2<f64>,
    pv: &Array2<f64>,
    mut solve: impl FnMut(&dyn Fn(usize, usize) -> Array2<f64>, usize) -> Result<Array2<f64>>,
    project: impl Fn(Array2<f64>) -> Result<Array2<f64>>,
) -> Result<Array2<f64>> {
    let n = rz.nrows();
    // Columns j0..j1 of Rz Pᵥᵀ.
    let mut vt = solve(&|j0, j1| rz.dot(&pv.slice(s![j0..j1, ..]).t()), pv.nrows())?;
    let mean = vt.mean_axis(Axis(0)).expect("n > 0");
    vt -= &mean;
    Ok(project(vt)? * (n as f64).sqrt())
}

/// P update (eq. 9): P = (Σₘ μₘ H Zₘᵀ)(Σₘ μₘ Zₘ Zₘᵀ + ηI)⁻¹ (rows: Hᵀ Rz G⁻¹, Rz = Σ μₘ Zₘ).
fn update_p(h: &Array2<f64>, rz: &Array2<f64>, g_inv: &Array2<f64>) -> Array2<f64> {
    h.t().dot(rz).dot(g_inv)
}

/// Eq. 8: Σₘ μₘ ‖H − P Zₘ‖² + γ tr(H L Hᵀ) + η ‖P‖².
fn objective(h: &Array2<f64>, p: &Array2<f64>, zs: &[Array2<f64>], mu: &[f64], sys: &System, eta: f64) -> f64 {
    let mut f = 0.0;
    for (z, &m) in zs.iter().zip(mu) {
        let d = h - &z.dot(&p.t());
        f += m * d.iter().map(|v| v * v).sum::<f64>();
    }
    let lh = sys.graph.laplacian_mul(h.view());
    f += sys.gamma * (h * &lh).sum();
    f + eta * p.iter().map(|v| v * v).sum::<f64>()
}

/// Eq. 8 from the sums the streamed fit keeps, Rz = Σₘ μₘZₘ and Gz = Σₘ μₘZₘᵀZₘ (rows):
/// Σₘ μₘ‖H − ZₘPᵀ‖² = (Σμ)‖H‖² − 2⟨HᵀRz, P⟩ + ⟨P Gz, P⟩, plus γ tr(HᵀLH) + η‖P‖².
fn objective_from_sums(h: &Array2<f64>, p: &Array2<f64>, rz: &Array2<f64>, gz: &Array2<f64>, mu_sum: f64, sys: &System, eta: f64) -> f64 {
    let sq = |a: &Array2<f64>| a.iter().map(|v| v * v).sum::<f64>();
    let data = mu_sum * sq(h) - 2.0 * (&h.t().dot(rz) * p).sum() + (&p.dot(gz) * p).sum();
    data + sys.gamma * sys.graph.quadratic_form(h.view()) + eta * sq(p)
}

/// Solves M X = B column group by column group: `rhs(j0, j1)` gives columns j0..j1 of B (`cols`
/// in all), `group` columns per solve. Returns X and the most iterations of any group (what one
/// solve of all columns needs: conjugate gradient treats every column on its own).
fn solve_columns(
    sys: &System,
    rhs: &dyn Fn(usize, usize) -> Array2<f64>,
    cols: usize,
    group: usize,
    solver: Solver,
    tol: f64,
    max_iter: usize,
) -> Result<(Array2<f64>, usize)> {
    if group >= cols {
        return solve_system(sys, &rhs(0, cols), solver, tol, max_iter);
    }
    let mut x = Array2::<f64>::zeros((sys.graph.len(), cols));
    let mut iters = 0;
    for j0 in (0..cols).step_by(group) {
        let j1 = (j0 + group).min(cols);
        let (xg, it) = solve_system(sys, &rhs(j0, j1), solver, tol, max_iter)?;
        x.slice_mut(s![.., j0..j1]).assign(&xg);
        iters = iters.max(it);
    }
    Ok((x, iters))
}

/// A square sparse matrix in compressed sparse row form.
struct Csr {
    n: usize,
    indptr: Vec<usize>,
    indices: Vec<u32>,
    values: Vec<f64>,
}

impl Csr {
    /// From (row, column, value) triplets; duplicates are summed.
    fn from_triplets(n: usize, mut t: Vec<(u32, u32, f64)>) -> Self {
        t.par_sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut indptr = vec![0usize; n + 1];
        let mut indices = Vec::with_capacity(t.len());
        let mut values: Vec<f64> = Vec::with_capacity(t.len());
        let mut last: Option<(u32, u32)> = None;
        for (i, j, v) in t {
            if last == Some((i, j)) {
                *values.last_mut().expect("entry") += v;
            } else {
                indices.push(j);
                values.push(v);
                indptr[i as usize + 1] += 1;
                last = Some((i, j));
            }
        }
        for i in 0..n {
            indptr[i + 1] += indptr[i];
        }
        Self { n, indptr, indices, values }
    }

    /// A V for a dense V (n × r), parallel over rows.
    fn mul_dense(&self, v: ArrayView2<f64>) -> Array2<f64> {
        let r = v.ncols();
        let mut out = Array2::<f64>::zeros((self.n, r));
        if r == 0 || self.n == 0 {
            return out;
        }
        let v = v.as_standard_layout();
        let vs = v.as_slice().expect("standard layout");
        out.as_slice_mut().expect("owned").par_chunks_mut(r).enumerate().for_each(|(i, row)| {
            for p in self.indptr[i]..self.indptr[i + 1] {
                let w = self.values[p];
                let j = self.indices[p] as usize;
                let src = &vs[j * r..(j + 1) * r];
                for (o, &s) in row.iter_mut().zip(src) {
                    *o += w * s;
                }
            }
        });
        out
    }

    fn diagonal(&self) -> Array1<f64> {
        Array1::from_shape_fn(self.n, |i| {
            (self.indptr[i]..self.indptr[i + 1]).filter(|&p| self.indices[p] as usize == i).map(|p| self.values[p]).sum()
        })
    }

    fn to_dense(&self) -> Array2<f64> {
        let mut a = Array2::zeros((self.n, self.n));
        for i in 0..self.n {
            for p in self.indptr[i]..self.indptr[i + 1] {
                a[[i, self.indices[p] as usize]] += self.values[p];
            }
        }
        a
    }
}

/// Exact k nearest neighbours (squared distance, index) of every row of `pts` among the other
/// rows, nearest first, ties by index; a kd-tree, queries in parallel.
fn knn(pts: &Array2<f64>, k: usize) -> Vec<Vec<(f64, usize)>> {
    let pts = pts.as_standard_layout();
    let tree = KdTree::build(pts.as_slice().expect("standard layout"), pts.ncols());
    (0..pts.nrows()).into_par_iter().map(|i| tree.query(i, k)).collect()
}

/// Approximate k nearest neighbours (same output as [`knn`]) for large n: candidates from 8
/// random-projection trees (split at the median projection on a random direction down to leaves
/// of ≤ max(2k + 2, 32) points), exact top k among them, then 2 rounds of neighbour exploring
/// (the current neighbours, their neighbours and up to 2k reverse neighbours are candidates, as
/// in NN-descent). O(n log n · dim + n (trees · leaf + k²) dim): near-linear. For memory
/// locality the work runs on the points reordered by the leaves of the first tree (in place: the
/// points are taken by value, so no second copy of them is made).
fn knn_approx(pts: Array2<f64>, k: usize, seed: u64) -> Vec<Vec<(f64, usize)>> {
    const TREES: u64 = 8;
    const ROUNDS: usize = 2;
    let n = pts.nrows();
    let dim = pts.ncols();
    let pts = if pts.is_standard_layout() { pts } else { pts.as_standard_layout().into_owned() };
    let leaf = (2 * k + 2).max(32);
    let forest: Vec<Vec<Vec<usize>>> = (0..TREES)
        .into_par_iter()
        .map(|t| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(t));
            let mut idx: Vec<usize> = (0..n).collect();
            let mut leaves = Vec::new();
            rp_split(&mut idx, pts.as_slice().expect("standard layout"), dim, leaf, &mut rng, &mut leaves);
            leaves
        })
        .collect();
    // Reorder: position p holds original point perm[p]; nearby positions are nearby points.
    let perm: Vec<usize> = forest[0].iter().flatten().copied().collect();
    let mut pos = vec![0u32; n];
    for (p, &i) in perm.iter().enumerate() {
        pos[i] = p as u32;
    }
    let (mut ps, offset) = pts.into_raw_vec_and_offset();
    ps.drain(..offset.unwrap_or(0));
    ps.truncate(n * dim);
    permute_rows(&mut ps, dim, &perm);
    // Per tree, the leaf of each position, and the leaves as position lists.
    let leaves: Vec<(Vec<Vec<u32>>, Vec<u32>)> = forest
        .into_par_iter()
        .map(|tree| {
            let mut leaf_of = vec![0u32; n];
            let lists: Vec<Vec<u32>> = tree
                .iter()
                .enumerate()
                .map(|(l, members)| {
                    members
                        .iter()
                        .map(|&i| {
                            leaf_of[pos[i] as usize] = l as u32;
                            pos[i]
                        })
                        .collect()
                })
                .collect();
            (lists, leaf_of)
        })
        .collect();
    // Exact top k of position p among `cands` (positions), ties by original index.
    let top_k = |p: usize, cands: &mut Vec<u32>, out: &mut [(f64, u32)]| {
        cands.sort_unstable();
        cands.dedup();
        let qp = &ps[p * dim..(p + 1) * dim];
        let mut d: Vec<Cand> = cands
            .iter()
            .filter(|&&j| j as usize != p)
            .map(|&j| {
                let j = j as usize;
                Cand(qp.iter().zip(&ps[j * dim..(j + 1) * dim]).map(|(a, b)| (a - b) * (a - b)).sum(), perm[j])
            })
            .collect();
        if d.len() > k {
            d.select_nth_unstable(k - 1);
            d.truncate(k);
        }
        d.sort_unstable();
        for (o, Cand(d2, i)) in out.iter_mut().zip(d) {
            *o = (d2, pos[i]);
        }
    };
    // nn[p * k .. (p + 1) * k]: the current neighbours of position p (squared distance, position).
    let mut nn = vec![(0.0f64, 0u32); n * k];
    nn.par_chunks_mut(k).enumerate().for_each_init(Vec::new, |cands, (p, out)| {
        cands.clear();
        for (lists, leaf_of) in &leaves {
            cands.extend_from_slice(&lists[leaf_of[p] as usize]);
        }
        top_k(p, cands, out);
    });
    for _ in 0..ROUNDS {
        let mut reverse: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (p, row) in nn.chunks(k).enumerate() {
            for &(_, q) in row {
                if reverse[q as usize].len() < 2 * k {
                    reverse[q as usize].push(p as u32);
                }
            }
        }
        let prev = &nn;
        let mut next = vec![(0.0f64, 0u32); n * k];
        next.par_chunks_mut(k).enumerate().for_each_init(Vec::new, |cands, (p, out)| {
            cands.clear();
            cands.extend_from_slice(&reverse[p]);
            for &(_, q) in &prev[p * k..(p + 1) * k] {
                cands.push(q);
                cands.extend(prev[q as usize * k..(q as usize + 1) * k].iter().map(|x| x.1));
            }
            top_k(p, cands, out);
        });
        nn = next;
    }
    let mut out = vec![Vec::new(); n];
    for (p, row) in nn.chunks(k).enumerate() {
        out[perm[p]] = row.iter().map(|&(d2, q)| (d2, perm[q as usize])).collect();
    }
    out
}

/// Reorders the rows (of `dim` values each) of a row-major buffer in place so that new row p is
/// old row `perm[p]` (perm a permutation), following its cycles with one row of scratch.
fn permute_rows(buf: &mut [f64], dim: usize, perm: &[usize]) {
    let mut done = vec![false; perm.len()];
    let mut first = vec![0.0; dim];
    for start in 0..perm.len() {
        if done[start] {
            continue;
        }
        first.copy_from_slice(&buf[start * dim..(start + 1) * dim]);
        let mut p = start;
        loop {
            done[p] = true;
            let src = perm[p];
            if src == start {
                buf[p * dim..(p + 1) * dim].copy_from_slice(&first);
                break;
            }
            buf.copy_within(src * dim..(src + 1) * dim, p * dim);
            p = src;
        }
    }
}

/// Splits `idx` recursively at the median projection on a random Gaussian direction until the
/// pieces have at most `leaf` points; appends the leaves.
fn rp_split(idx: &mut [usize], ps: &[f64], dim: usize, leaf: usize, rng: &mut ChaCha8Rng, leaves: &mut Vec<Vec<usize>>) {
    if idx.len() <= leaf {
        leaves.push(idx.to_vec());
        return;
    }
    let dir: Vec<f64> = (0..dim).map(|_| rng.sample(StandardNormal)).collect();
    let mut keyed: Vec<(f64, usize)> =
        idx.iter().map(|&i| (ps[i * dim..(i + 1) * dim].iter().zip(&dir).map(|(a, b)| a * b).sum(), i)).collect();
    let mid = idx.len() / 2;
    keyed.select_nth_unstable_by(mid, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (slot, &(_, i)) in idx.iter_mut().zip(&keyed) {
        *slot = i;
    }
    let (left, right) = idx.split_at_mut(mid);
    rp_split(left, ps, dim, leaf, rng, leaves);
    rp_split(right, ps, dim, leaf, rng, leaves);
}

/// A kd-tree over the rows of a row-major point matrix (split on the widest dimension at the
/// median; leaves of at most 16 points).
struct KdTree<'a> {
    pts: &'a [f64],
    dim: usize,
    idx: Vec<usize>,
    nodes: Vec<KdNode>,
}

enum KdNode {
    Leaf { start: usize, end: usize },
    Split { dim: usize, value: f64, left: usize, right: usize },
}

/// Max-heap entry ordered by (distance², index).
#[derive(PartialEq)]
struct Cand(f64, usize);
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

impl<'a> KdTree<'a> {
    const LEAF: usize = 16;

    fn build(pts: &'a [f64], dim: usize) -> Self {
        let n = pts.len().checked_div(dim).unwrap_or(0);
        let mut t = Self { pts, dim, idx: (0..n).collect(), nodes: Vec::new() };
        if n > 0 {
            t.build_node(0, n);
        }
        t
    }

    fn coord(&self, i: usize, d: usize) -> f64 {
        self.pts[i * self.dim + d]
    }

    fn build_node(&mut self, start: usize, end: usize) -> usize {
        let id = self.nodes.len();
        self.nodes.push(KdNode::Leaf { start, end });
        if end - start <= Self::LEAF {
            return id;
        }
        let (mut best_d, mut best_spread) = (0, 0.0);
        for d in 0..self.dim {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for &i in &self.idx[start..end] {
                let c = self.coord(i, d);
                lo = lo.min(c);
                hi = hi.max(c);
            }
            if hi - lo > best_spread {
                best_spread = hi - lo;
                best_d = d;
            }
        }
        if !(best_spread > 0.0) {
            return id; // all points identical: one leaf
        }
        let mid = start + (end - start) / 2;
        let (pts, dim) = (self.pts, self.dim);
        self.idx[start..end].select_nth_unstable_by(mid - start, |&a, &b| pts[a * dim + best_d].total_cmp(&pts[b * dim + best_d]));
        let value = self.coord(self.idx[mid], best_d);
        let left = self.build_node(start, mid);
        let right = self.build_node(mid, end);
        self.nodes[id] = KdNode::Split { dim: best_d, value, left, right };
        id
    }

    fn query(&self, q: usize, k: usize) -> Vec<(f64, usize)> {
        let mut heap = BinaryHeap::with_capacity(k + 1);
        if !self.nodes.is_empty() && k > 0 {
            self.search(0, q, k, &mut heap);
        }
        heap.into_sorted_vec().into_iter().map(|Cand(d, i)| (d, i)).collect()
    }

    fn search(&self, node: usize, q: usize, k: usize, heap: &mut BinaryHeap<Cand>) {
        match self.nodes[node] {
            KdNode::Leaf { start, end } => {
                let qp = &self.pts[q * self.dim..(q + 1) * self.dim];
                for &i in &self.idx[start..end] {
                    if i == q {
                        continue;
                    }
                    let p = &self.pts[i * self.dim..(i + 1) * self.dim];
                    let d2: f64 = qp.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum();
                    let c = Cand(d2, i);
                    if heap.len() < k {
                        heap.push(c);
                    } else if c < *heap.peek().expect("k > 0") {
                        heap.pop();
                        heap.push(c);
                    }
                }
            }
            KdNode::Split { dim, value, left, right } => {
                let diff = self.coord(q, dim) - value;
                let (near, far) = if diff < 0.0 { (left, right) } else { (right, left) };
                self.search(near, q, k, heap);
                // Points on the far side are at least |diff| away (ties at equal distance must be
                // visited too, for the index tie-break).
                if heap.len() < k || diff * diff <= heap.peek().expect("non-empty").0 {
                    self.search(far, q, k, heap);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic data (tests and benchmarks)
// ---------------------------------------------------------------------------------------------

/// Shape of a synthetic two-modality data set with Wikipedia-like structure.
#[derive(Clone, Debug)]
pub struct SyntheticSpec {
    pub n: usize,
    pub n_classes: usize,
    /// Image-like modality dimension (Wikipedia: 128-d SIFT bag of words).
    pub image_dim: usize,
    /// Text-like modality dimension (Wikipedia: 10-d LDA topics).
    pub text_dim: usize,
    /// Class-embedding dimension (e.g. 384 for MiniLM); 0 = one-hot class vectors.
    pub embedding_dim: usize,
    /// Per-item noise scale relative to the class signal (image, text); the image side is noisier
    /// on Wikipedia.
    pub noise: (f64, f64),
    pub seed: u64,
}

impl SyntheticSpec {
    /// Wikipedia-like: 10 classes, 128-d noisy image features, 10-d cleaner text features.
    pub fn wiki_like(n: usize, embedding_dim: usize, seed: u64) -> Self {
        Self { n, n_classes: 10, image_dim: 128, text_dim: 10, embedding_dim, noise: (3.0, 1.0), seed }
    }
}

/// A synthetic training set: each class has a random embedding; every modality's features are a
/// fixed random linear map of the item's class embedding plus Gaussian noise, so the class
/// embeddings genuinely carry the semantics (zero-shot transfer works on unseen classes).
/// Returns the training set (fully labelled, with class embeddings) and the class of each item.
pub fn synthetic(spec: &SyntheticSpec) -> (TrainSet, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let c = spec.n_classes;
    let e = if spec.embedding_dim == 0 { c } else { spec.embedding_dim };
    let emb: Array2<f64> = if spec.embedding_dim == 0 {
        Array2::eye(c)
    } else {
        Array2::from_shape_simple_fn((c, e), || rng.sample::<f64, _>(StandardNormal) / (e as f64).sqrt())
    };
    let class: Vec<usize> = (0..spec.n).map(|i| if i < c { i } else { rng.gen_range(0..c) }).collect();
    let mut views = Vec::new();
    for (d, noise) in [(spec.image_dim, spec.noise.0), (spec.text_dim, spec.noise.1)] {
        let map: Array2<f64> = Array2::from_shape_simple_fn((e, d), || rng.sample(StandardNormal));
        let proto = emb.dot(&map); // C × d
        let scale = (proto.iter().map(|v| v * v).sum::<f64>() / (c * d) as f64).sqrt();
        let x = Array2::from_shape_fn((spec.n, d), |(i, j)| {
            (proto[[class[i], j]] + noise * scale * rng.sample::<f64, _>(StandardNormal)) as f32
        });
        views.push(View::Features(x));
    }
    let labels = crate::bundle::one_hot(&class, c);
    let mut ts = TrainSet::supervised(views, labels, (0..c).map(|i| format!("class{i}")).collect());
    ts.class_embeddings = Some(emb.mapv(|v| v as f32));
    (ts, class)
}

#[cfg(test)]
#[path = "segh_tests.rs"]
mod tests;
