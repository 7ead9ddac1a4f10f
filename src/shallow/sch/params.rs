//! SCH hyper-parameters: the defaults, the paper's settings and the search space.

use super::*;

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
    /// (W'ₜ = (ΦₜᵀΦₜ + ρ'I)⁻¹ΦₜᵀB, see `refit_w`) instead of using eq. 18's Wₜ in eq. 26.
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

    pub(super) fn lambda_sum(&self) -> f64 {
        self.lambda.iter().sum()
    }
    /// Number of anchors of modality t.
    pub(super) fn anchors_of(&self, t: usize) -> usize {
        self.modality_anchors.get(t).copied().unwrap_or(self.anchors)
    }
    pub(super) fn sigma_scale(&self, t: usize) -> f64 {
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

crate::params::impl_method_params!(SchParams, SEARCH_SPACE, ["paper" => SchParams::paper()]);
