//! AgNet's hyper-parameters, their defaults, the paper preset and what `cmh tune` varies.

use crate::params::{impl_method_params, Dim, Range, SearchSpace};
use serde::{Deserialize, Serialize};

/// AgNet hyper-parameters (our choices; the paper gives no code).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgnetParams {
    /// Hidden widths of each modality's attribute network.
    pub hidden: Vec<usize>,
    /// Hidden widths of the shared hashing network (attribute space → r bits).
    pub hash_hidden: Vec<usize>,
    pub dropout: f64,
    pub batch_size: usize,
    /// Epochs; resuming with a larger value continues a run.
    pub epochs: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// λ_attr: attribute regression.
    pub attr_weight: f64,
    /// λ_sim: attribute-guided similarity preservation.
    pub sim_weight: f64,
    /// λ_q: quantisation.
    pub quant_weight: f64,
    /// λ_pair: cross-modal pair term, the image and text codes of one item agree (L_pair).
    pub pair_weight: f64,
    /// λ_dec: bit decorrelation + bit balance of each modality's relaxed codes per batch (L_dec),
    /// the whitening constraint under which L_pair has a non-constant minimiser. Default 1
    /// (chosen on validation); 0 drops the term.
    pub decor_weight: f64,
    /// m: free embedding dimensions. Each modality network outputs the d attribute coordinates
    /// (regressed by L_attr) plus m coordinates no attribute target touches; the hash network
    /// takes all d + m. 0 = the attribute coordinates only.
    pub free_dims: usize,
    /// Guide the code similarities by the predicted attributes gᵛ(x) of every item (true: what an
    /// item of an unseen class gets at encoding time) instead of the true class attributes of the
    /// labelled items (false).
    pub guide_predicted: bool,
    /// Network input: 0 = the standardised features; c > 0 = the centred RBF features of c
    /// training anchors, as SCH and CCA-ITQ use (`InputMap`), then standardised.
    pub rbf_anchors: usize,
    /// Express the class attributes in an orthonormal basis of the span of the training classes'
    /// attributes (`span_basis`: an isometry on that span), so the networks output
    /// d ≤ K coordinates instead of e (384 for MiniLM).
    pub attribute_span: bool,
    /// Train on unlabelled items too (through their predicted attributes).
    pub use_unlabelled: bool,
    /// c > 0: the standardised network inputs are clipped to [−c, c]; 0 = no clipping.
    pub input_clip: f64,
    /// p: every raw feature value v enters as sign(v)·|v|ᵖ (power normalisation, before the RBF
    /// map and the standardisation; ½ on histograms is the Hellinger map); 1 = the features as
    /// they are. Default ½, chosen on validation.
    pub input_power: f64,
    /// Multiplier of the initial last-layer weights of the attribute networks (1 = default).
    pub output_init_scale: f64,
    /// The hashing network is one linear layer fitted, at the start of every epoch and after the
    /// last, to PCA + ITQ of the attribute networks' (dropout-free) outputs on the training rows,
    /// scaled to unit deviation per bit, and held fixed within the epoch: the codes keep the
    /// attribute-space neighbourhoods of the predictions, and L_sim, L_q and L_dec train the
    /// attribute networks through it. Needs `hash_hidden = []` and `free_dims = 0`.
    pub pca_hash: bool,
    /// w ∈ [0, 1): after training, each modality's attribute predictor becomes
    /// (1 − w)·gᵛ(x) + w·xRᵛ, Rᵛ the ridge regression (λ = `blend_lambda` × the number of labelled
    /// rows) from the network inputs of the labelled training rows to their attribute targets, and
    /// the `pca_hash` layer is fitted to that blend; 0 = the networks alone.
    pub ridge_blend: f64,
    /// λ of the `ridge_blend` regression, relative to the number of labelled rows.
    pub blend_lambda: f64,
}

impl Default for AgnetParams {
    fn default() -> Self {
        Self {
            hidden: vec![256],
            hash_hidden: vec![],
            dropout: 0.5,
            batch_size: 128,
            epochs: 20,
            learning_rate: 1e-3,
            weight_decay: 0.0,
            attr_weight: 1.0,
            sim_weight: 1.0,
            quant_weight: 0.1,
            pair_weight: 0.0,
            decor_weight: 1.0,
            free_dims: 0,
            guide_predicted: false,
            rbf_anchors: 0,
            attribute_span: true,
            use_unlabelled: true,
            input_clip: 5.0,
            input_power: 0.5,
            output_init_scale: 0.1,
            pca_hash: true,
            ridge_blend: 0.6,
            blend_lambda: 1.0,
        }
    }
}

impl AgnetParams {
    /// The model as the paper describes it, without the additions: no bit-decorrelation term,
    /// attributes in their own coordinates (`--preset paper`).
    pub fn paper() -> Self {
        Self { decor_weight: 0.0, attribute_span: false, ridge_blend: 0.0, ..Self::default() }
    }
}

/// What `cmh tune` varies for AgNet: learning rate, epochs (also the successive-halving budget),
/// widths, dropout, the loss weights and the input power.
pub const SEARCH_SPACE: SearchSpace = SearchSpace {
    dims: &[
        Dim { name: "learning_rate", range: Range::Float { lo: 1e-4, hi: 1e-2, log: true } },
        Dim { name: "epochs", range: Range::Choice(&["10", "20", "40"]) },
        Dim { name: "hidden", range: Range::Choice(&["[256]", "[512]", "[1024]"]) },
        Dim { name: "hash_hidden", range: Range::Choice(&["[256]", "[512]"]) },
        Dim { name: "dropout", range: Range::Choice(&["0.0", "0.2", "0.5"]) },
        Dim { name: "quant_weight", range: Range::Float { lo: 0.01, hi: 1.0, log: true } },
        Dim { name: "decor_weight", range: Range::Float { lo: 0.1, hi: 10.0, log: true } },
        Dim { name: "input_power", range: Range::Choice(&["0.5", "1.0"]) },
    ],
    fidelity: Some("epochs"),
};

impl_method_params!(AgnetParams, SEARCH_SPACE, ["paper" => AgnetParams::paper()]);
