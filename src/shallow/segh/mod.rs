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
//! Wₘ = Pₐ [(Pₐᵀ C P_b) ⊘ (aᵢ + b_j)] P_bᵀ (`solve_sylvester_psd`). Entries whose denominator
//! is (numerically) zero are directions where the equation says nothing; they are set to 0, which
//! gives the minimum-norm solution. Features are centred with their training means (kept in the
//! model). Only items with a visible label enter step 1 (S needs a label).
//!
//! # Step 2 — semantic representations to Hamming space (eqs. 3–6, 8–10)
//! Zₘ = WₘXₘ. Affinities (eqs. 3–5): A⁽ᵐ⁾ = symmetrised k-nearest-neighbour heat-kernel graph of
//! modality m, σₘ² = mean squared kNN distance. The neighbours are searched in the semantic space
//! Zₘ (a choice: its dimension is at most the number of classes, where the search is cheap; kNN
//! on the raw features gives the same validation mAP within 0.01), exactly with a
//! kd-tree up to `knn_exact_up_to` items and approximately above (random-projection forest plus
//! neighbour exploring, near-linear; recall > 0.95 in the tests; step 2 then holds the items
//! in the first tree's leaf order, for memory locality, and returns the codes in input order). The inter-modality label affinity Ŝ_ij = ⟨ỹ⁽¹⁾ᵢ, ỹ⁽²⁾ⱼ⟩ symmetrised over the modality pairs,
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
//! O(n(k + C)) per right-hand side (`pcg`); the dense solve is kept for the tests.
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
//! H Hᵀ = nI there fills the extra bits with within-class noise (on Wikipedia, mAP
//! with learned codes fell from 0.25 to 0.20 I→T between 16 and 128 bits), so beyond rank Z the
//! extra bits are rotations of the same r dimensions. Under the constraint:
//! - H step (`update_v`): the unconstrained minimiser of eq. 10, H̃ = ΣμPZ · M⁻¹, projected onto
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
//! ([`RbfMap`], shared in `crate::numerics::rbf`): step 1 solves eq. 7 with Φₘ in place of Xₘ
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

mod fit;
mod graph;
mod model;
mod params;
mod step1;
mod step2;
mod synthetic;

pub use fit::STREAM_INPUTS_ABOVE_BYTES;
pub use model::{FitInfo, SeghModel};
pub use params::{CodeConstraint, SeghParams, SEARCH_SPACE};
pub use synthetic::{synthetic, SyntheticSpec};

#[allow(unused_imports)]
use {fit::*, graph::*, model::*, params::*, step1::*, step2::*};

use crate::codes::BinaryCodes;
use crate::method::{ensure_nonneg, ensure_pos, to_f64, Fit, FitContext, HashModel, TrainSet, View};
use crate::npy::read_npy;
use crate::numerics::blocked::{fold_parts, fold_parts_mut, sum_in_order};
use crate::numerics::graph::{knn, knn_approx, knn_approx_ordered, permute_rows, Csr};
use crate::numerics::itq::itq_from;
use crate::numerics::linalg::{numerical_rank, polar, polar_tall, row_space_basis};
use crate::numerics::pcg::pcg;
use crate::numerics::random::random_orthonormal;
use crate::numerics::random::seeded_rng;
use crate::numerics::rbf::{capped_anchors, RbfMap};
use crate::params::{Dim, Range, SearchSpace};
use anyhow::{anyhow, bail, Context, Result};
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use ndarray_linalg::{Cholesky, Diag, Eigh, InverseC, SolveTriangular, UPLO};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

#[cfg(test)]
mod tests;
