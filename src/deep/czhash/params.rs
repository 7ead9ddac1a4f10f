//! CZHash's hyper-parameters: defaults, the paper preset and what `cmh tune` searches.

use crate::params::{impl_method_params, Dim, Range, SearchSpace};
use serde::{Deserialize, Serialize};

/// CZHash hyper-parameters; defaults follow the paper where it gives them (β = 1, batch 128,
/// dropout 0.5; α = 4 against the paper's 1, chosen on validation). The network sizes, Adam learning rate, epoch count, `distance_scale`, `centre`
/// and `attribute_span` are ours (feature mode on a CPU), checked or chosen on a validation split
/// of Wikipedia's training items, not on test queries.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CzhashParams {
    /// Weight of the attribute-space term (eq. 7): 4 by default (the paper: 1), chosen on
    /// zero-shot validation splits carved from the training classes.
    pub alpha: f64,
    /// Weight of the coding term (eq. 7).
    pub beta: f64,
    pub batch_size: usize,
    pub dropout: f64,
    /// Hidden widths of each modality's MLP (input → hidden… → attribute dimension).
    pub hidden: Vec<usize>,
    /// Alternation rounds (each = one pass of both networks + eqs. 10–12). Resuming a run with a
    /// larger value continues it.
    pub epochs: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// λ: ridge of the least-squares steps (eqs. 10, 11 and new-item encoding).
    pub ridge: f64,
    /// Divide feature distances by their median before ŝ = 1/(1 + d) (eqs. 2–3).
    pub normalise_distances: bool,
    /// σ multiplier: ŝ = 1/(1 + d / (distance_scale · median distance)) when `normalise_distances`
    /// (the paper leaves the feature scale open; < 1 spreads ŝ over (0, 1]).
    pub distance_scale: f64,
    /// Network input: 0 = the standardised features; c > 0 = the centred RBF features of c
    /// training anchors, as SCH and CCA-ITQ use (`InputMap`), then standardised.
    pub rbf_anchors: usize,
    /// Express the class attributes in an orthonormal basis of the span of the training classes'
    /// attributes (`span_basis`: an isometry on that span), so the networks output
    /// d ≤ K coordinates instead of e (384 for MiniLM).
    pub attribute_span: bool,
    /// Train on unlabelled items too (CZHash); `false` is the CZHash-nFS ablation.
    pub use_unlabelled: bool,
    /// Centre the category representations before the coding matrices (eqs. 10–12 and new
    /// items use C⁽ᵛ⁾ − c̄⁽ᵛ⁾, c̄⁽ᵛ⁾ the training mean of C⁽ᵛ⁾; see the module docs).
    pub centre: bool,
    /// Put the three terms of eq. 7 on a per-item scale: the similarity term averaged over the n
    /// items each row is compared with, the coding term over the r bits (see the module docs).
    /// `false` = the literal sums.
    pub normalise_terms: bool,
    /// Monotone alternation (backtracking): after each round from the second on, if eq. 7 rose
    /// above the previous round's value (or became non-finite), restore the previous round's
    /// state (network weights, Adam moments, F, C, W, B) and halve both networks' learning rate.
    /// Requires `refresh_f` (eq. 7 must be a function of the state). Off: not better on validation.
    pub backtrack: bool,
    /// Gradient-norm clipping of each network's mini-batch update (eqs. 8–9): the gradient of all
    /// of one network's weights together is rescaled to at most this Euclidean norm; 0 = off.
    pub grad_clip: f64,
    /// Per-round learning-rate decay: round t (1-based) uses learning_rate · lr_decay^(t−1);
    /// 1 = off.
    pub lr_decay: f64,
    /// After both networks' passes, replace the stored F by the networks' deterministic outputs
    /// (no dropout) before eqs. 10–12 and eq. 7, so that eq. 7 is a function of the state
    /// (θ, C, W, B) rather than of the passes' dropout draws; `false` keeps the outputs recorded
    /// batch by batch during the passes (with dropout), as DCMH does.
    pub refresh_f: bool,
    /// c > 0: the standardised network inputs are clipped to [−c, c] (bag-of-words dimensions of
    /// rare words otherwise reach z-scores of 30–40); 0 = no clipping.
    pub input_clip: f64,
    /// p: every raw feature value v enters as sign(v)·|v|ᵖ (power normalisation, before the RBF
    /// map and the standardisation); 1 = the features as they are.
    pub input_power: f64,
    /// Multiplier of the initial weights and bias of each network's last layer (1 = the default
    /// initialisation), so the networks start near F = 0 instead of far outside the attribute
    /// targets.
    pub output_init_scale: f64,
    /// The coding matrices act through the class attributes: W⁽ᵛ⁾ = A⁽ᵛ⁾M⁽ᵛ⁾, so the code
    /// projection c W = (c A) M of a category representation c is a function of its attribute
    /// vector c A (eqs. 11–12 fit M on C̃A), and attribute-space neighbours share bits.
    pub attribute_coding: bool,
    /// Eqs. 11–12 act on the category representation the networks give every training row,
    /// Ĉ⁽ᵛ⁾ = F⁽ᵛ⁾P⁽ᵛ⁾ (P the least-squares projector new items are encoded with) instead of the
    /// label rows; B starts, after the first round, from PCA + ITQ of those representations, and
    /// eq. 7's coding term also trains the networks (eqs. 8–9).
    pub predicted_coding: bool,
    /// w ∈ [0, 1): after training, each modality's network output becomes (1 − w)·f⁽ᵛ⁾(x) +
    /// w·xR⁽ᵛ⁾, R⁽ᵛ⁾ the ridge regression (λ = `blend_lambda` × the number of labelled rows) from the
    /// network inputs of the labelled training rows to their attribute targets CA (eq. 7's α term),
    /// and the code offsets c̄W follow the blend; 0 = the networks alone.
    pub ridge_blend: f64,
    /// λ of the `ridge_blend` regression, relative to the number of labelled rows.
    pub blend_lambda: f64,
}

impl Default for CzhashParams {
    fn default() -> Self {
        Self {
            alpha: 4.0,
            beta: 1.0,
            batch_size: 128,
            dropout: 0.5,
            hidden: vec![512],
            epochs: 20,
            learning_rate: 1e-3,
            weight_decay: 0.0,
            ridge: 1e-2,
            normalise_distances: true,
            distance_scale: 0.25,
            rbf_anchors: 0,
            attribute_span: true,
            use_unlabelled: true,
            centre: true,
            normalise_terms: true,
            backtrack: false,
            grad_clip: 0.0,
            lr_decay: 1.0,
            refresh_f: true,
            input_clip: 5.0,
            input_power: 1.0,
            output_init_scale: 0.1,
            attribute_coding: true,
            predicted_coding: true,
            ridge_blend: 0.3,
            blend_lambda: 1.0,
        }
    }
}

impl CzhashParams {
    /// The paper's model without the choices the paper leaves open: raw feature distances in
    /// ŝ = 1/(1 + d), the literal sums of eq. 7, uncentred category representations, attributes
    /// in their own coordinates, and the paper's α = 1 (`--preset paper`).
    pub fn paper() -> Self {
        Self {
            alpha: 1.0,
            normalise_distances: false,
            attribute_span: false,
            centre: false,
            normalise_terms: false,
            ridge_blend: 0.0,
            ..Self::default()
        }
    }
}

/// What `cmh tune` varies for CZHash: learning rate, rounds (also the successive-halving budget),
/// widths, dropout, the ridge, the feature-similarity scale and the input power.
pub const SEARCH_SPACE: SearchSpace = SearchSpace {
    dims: &[
        Dim { name: "learning_rate", range: Range::Float { lo: 1e-4, hi: 1e-2, log: true } },
        Dim { name: "epochs", range: Range::Choice(&["10", "20", "40"]) },
        Dim { name: "hidden", range: Range::Choice(&["[256]", "[512]", "[1024]"]) },
        Dim { name: "dropout", range: Range::Choice(&["0.0", "0.2", "0.5"]) },
        Dim { name: "ridge", range: Range::Float { lo: 1e-3, hi: 0.1, log: true } },
        Dim { name: "distance_scale", range: Range::Float { lo: 0.1, hi: 1.0, log: true } },
        Dim { name: "input_power", range: Range::Choice(&["0.5", "1.0"]) },
    ],
    fidelity: Some("epochs"),
};

impl_method_params!(CzhashParams, SEARCH_SPACE, ["paper" => CzhashParams::paper()]);
