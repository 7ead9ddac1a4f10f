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
//! with ρ' = `refit_rho` (default ρ), reusing the cached ΦₜᵀΦₜ (`refit_w`). The model keeps the
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
//!   (`common_labelled`, labels = union over modalities). Training rows outside that
//!   set still get a learned code in [`SchModel::train_codes`]: b = sgn((Σₜ λₜ φₜ(xₜ)Wₜ)R), the
//!   minimiser over f of Σₜ λₜ‖f − φₜWₜ‖² (what J fixes for F without labels), rotated and signed.
//! - Anchors, σ and the centring mean come from those same labelled rows.
//!
//! Cost: φᵀφ is computed once per modality and its ridge system (ΦₜᵀΦₜ + (ρ/λₜ)I) factorised once;
//! a sweep then costs two n × c × k products per modality (ΦₜᵀF and ΦₜWₜ) plus O(nk(k + C)).
//! Nothing n × n is ever formed, so training is linear in n.

mod fit;
mod model;
mod params;
mod updates;

pub use fit::STREAM_FEATURES_ABOVE_BYTES;
pub use model::{FitTimings, SchModel};
pub use params::{ClassCodes, SchParams, SEARCH_SPACE};
pub(crate) use updates::refit_w;
pub use updates::{objective, update_b, update_f, update_r, update_u, update_v, update_w, w_factor};

#[allow(unused_imports)]
use {fit::*, model::*, params::*, updates::*};

use super::common::{hadamard_class_codes, random_class_codes};
use crate::codes::BinaryCodes;
use crate::method::{ensure_nonneg, ensure_pos, Fit, FitContext, HashModel, TrainSet, View};
use crate::npy::{write_npy, write_text_atomic};
use crate::numerics::blocked::{fold_parts, fold_parts_mut, gram_add, mirror_upper, par_dot, par_gram, par_t_dot, sum_in_order};
use crate::numerics::linalg::{procrustes_nearest, solve_right_cholesky, solve_right_spd, SpdFactor};
use crate::numerics::random::seeded_rng;
use crate::numerics::rbf::{capped_anchors, row_block, RbfMap};
use crate::numerics::sign::{sgn, sign_codes};
use crate::params::{Dim, Range, SearchSpace};
use anyhow::{bail, Context, Result};
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use ndarray_linalg::{Cholesky, UPLO};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[cfg(test)]
mod tests;
