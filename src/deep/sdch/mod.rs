//! SDCH — Semantic Deep Cross-modal Hashing.
//!
//! Networks: an image network (AlexNet with `classifier.6` replaced by a k-d layer, or in feature
//! mode an MLP `img-fc1 → img-fc2 → img-fc3` over precomputed image features), a text network
//! (bag-of-words MLP `txt-fc1 4096 → txt-fc2 4096 → txt-fc3 k`, ReLU on the first two), and one
//! hash layer `fc4` (k → r) shared by both modalities. Codes are sgn(fc4(f)).
//!
//! Loss L = L_f + γ L_h over each mini-batch of m items (m images and their m texts):
//! - eq. 4, feature part: L_f = Σᵢⱼ log(1 + exp(θᵢⱼ)) − sᵢⱼ θᵢⱼ, θᵢⱼ = f_xᵢᵀ f_yⱼ over all m² image–text
//!   pairs of the batch, sᵢⱼ = 1 when image i and text j share a label, else 0 ([`loss_f`]).
//! - eq. 7, hash part: L_h = ‖ZᵀZ/r − S_h‖² + β₁‖Z − B‖² + β₂‖ZZᵀ/r − I‖² + (β₃/r)‖Z‖² ([`loss_h`]).
//!
//! **Reading of eq. 7's shapes.** The paper stores codes as columns: Z ∈ ℝ^{r×N} holds the fc4
//! outputs of the N = 2m items of the batch (the m images, then the m texts), so ZᵀZ (N × N) is
//! the matrix of code inner products, which /r maps into [−1, 1] and compares with
//! S_h ∈ {−1, 1}^{N×N} (S_h = +1 when two of those items share a label, across and within
//! modalities, an item with itself included), while ZZᵀ (r × r) is the bits' correlation matrix,
//! pushed towards I (decorrelated, balanced bits). B ∈ {−1, 1}^{r×N} holds the unified code of
//! each item, the same column for an image and its text. (In the code, tensors keep one item per
//! row, so the code computes Z Zᵀ for the N × N term and ZᵀZ for the r × r term.)
//! As printed, the decorrelation term divides ZZᵀ by r, but for ±1 codes the diagonal of ZZᵀ is
//! N, so ZZᵀ/r = I is unreachable unless N = r and the term fights β₁‖Z − B‖² (it asks for
//! |z| = √(r/N)). `decorrelation_scale = "items"` (default) divides by N instead, the scale at
//! which balanced, uncorrelated ±1 bits give exactly I; `"bits"` keeps the printed /r.
//!
//! Optimisation (the paper's schedule): epoch 1 trains the feature networks with L_f only; B is
//! then initialised by ITQ on Z ([`SdchRun::init_b`], the ITQ rotation and centring are folded into
//! fc4 so Z and B agree); epoch 2 trains the hash layer only (γL_h); later epochs train
//! everything with L_f + γL_h. After every epoch that uses L_h, B = sgn(Z) (eq. 10): with one B
//! column shared by an item's image and text columns, the minimiser of β₁‖Z − B‖² is
//! B = sgn(z_x + z_y) ([`SdchRun::update_b`]). Learning rates 1e-3 (features) and 1e-2 (hash),
//! pretrained AlexNet layers at 0.1×, batch 64, β = (1, 1, 0.1), γ = 0.01, k = 256.
//!
//! Choices the paper leaves open (all in [`SdchParams`]): the optimiser (Adam), the number of
//! epochs, standardising feature-mode inputs with the training mean and deviation (kept in the
//! model), no dropout in the MLPs. Only rows labelled in both modalities enter the losses; B (the
//! training codes) covers every training row.
//!
//! Files: `save(dir)` writes `model.json`, `weights.safetensors` (every tensor by name) and
//! `train_codes.npy` / `train_codes_packed.npy` (B). In feature mode, Python encodes new items
//! with numpy alone: `scripts/sdch_encode.py MODEL_DIR X.npy --side img|txt --out codes.npy`
//! (standardise with `{side}-input.mean/std`, the MLP `{side}-fc1…` with ReLU between layers,
//! `fc4`, sign; tested against [`SdchModel::encode`]).

mod loss;
mod model;
mod net;
mod params;
mod train;

pub use loss::{hash_similarity, loss_f, loss_h, pair_similarity};
pub use model::{load, load_on, SdchModel};
pub use net::{ImageInput, SdchArch, SdchNet};
pub use params::{DecorrelationScale, SdchParams, METHOD, SEARCH_SPACE};
pub use train::{Phase, SdchRun};

#[allow(unused_imports)]
use {loss::*, model::*, net::*, params::*, train::*};

use super::alexnet::{preprocess, AlexNet};
use super::mlp::Mlp;
use super::tensors::{array_to_tensor, copy_named, read_safetensors, tensor_to_array, write_safetensors};
use super::trainer::{groups_from_var_store, init_default, Checkpoint, Optimizer, OptimizerConfig, OptimizerKind, RunControl, Trainer};
use crate::codes::BinaryCodes;
use crate::mapped::MappedRows;
use crate::method::{ensure_fraction, ensure_nonneg, ensure_pos, Fit, FitContext, HashModel, TrainSet, View, IMAGE, TEXT};
use crate::numerics::itq::itq;
use crate::params::{Dim, Range, SearchSpace};
use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array1, Array2, ArrayView2, ArrayView4, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tch::nn::ModuleT;
use tch::{nn, Device, Kind, Tensor};

#[cfg(test)]
mod tests;
