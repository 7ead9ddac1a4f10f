//! SeGH hyper-parameters: defaults, the paper's settings, the search space and validation.

use super::*;

pub(super) const METHOD: &str = "segh";

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

crate::params::impl_method_params!(SeghParams, SEARCH_SPACE, ["paper" => SeghParams::paper()]);

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
    pub(super) fn check_params(&self, n_modalities: usize, n: usize, bits: usize) -> Result<()> {
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
