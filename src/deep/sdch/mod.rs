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

use super::alexnet::{preprocess, AlexNet};
use super::mlp::Mlp;
use super::tensors::{array_to_tensor, copy_named, read_safetensors, tensor_to_array, write_safetensors};
use super::trainer::{groups_from_var_store, init_default, Checkpoint, Optimizer, OptimizerConfig, OptimizerKind, RunControl, Trainer};
use crate::codes::BinaryCodes;
use crate::mapped::MappedRows;
use crate::method::{ensure_fraction, ensure_nonneg, ensure_pos, Fit, FitContext, HashModel, TrainSet, View, IMAGE, TEXT};
use crate::numerics::itq::itq;
use crate::params::{Dim, MethodParams, Range, SearchSpace};
use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array1, Array2, ArrayView2, ArrayView4, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tch::nn::ModuleT;
use tch::{nn, Device, Kind, Tensor};

pub const METHOD: &str = "sdch";

/// Scale of the bit-decorrelation term of eq. 7 (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DecorrelationScale {
    /// ‖ZZᵀ/N − I‖², N = items in the batch: zero for balanced, uncorrelated ±1 bits.
    #[default]
    Items,
    /// ‖ZZᵀ/r − I‖², as printed.
    Bits,
}

/// SDCH hyper-parameters (TOML section `[sdch]`). Defaults: the paper's losses, learning rates,
/// schedule and batch, with two 512-wide hidden layers and 60 epochs chosen on validation splits
/// (docs/methods.md); [`SdchParams::paper`] = the paper's 4096-wide layers and 30 epochs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SdchParams {
    pub epochs: usize,
    pub batch_size: usize,
    /// k: width of the feature layer (img-fc3 / classifier.6 and txt-fc3).
    pub feature_dim: usize,
    /// Hidden widths of the text MLP and of the feature-mode image MLP.
    pub hidden: Vec<usize>,
    /// Dropout after each hidden ReLU of the MLPs (0 = none).
    pub dropout: f64,
    /// Standardise feature-mode inputs with the training mean and standard deviation.
    pub standardize: bool,
    pub lr_features: f64,
    pub lr_hash: f64,
    /// Learning-rate factor of layers initialised from pretrained weights.
    pub pretrained_lr_factor: f64,
    pub gamma: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub beta3: f64,
    pub decorrelation_scale: DecorrelationScale,
    pub optimizer: OptimizerKind,
    pub weight_decay: f64,
    /// Epoch 1 features only, epoch 2 hash layer only, then everything (the paper's schedule);
    /// false = everything from epoch 1.
    pub warmup_schedule: bool,
    pub itq_iterations: usize,
    /// Image side length fed to AlexNet (images are resized on the fly).
    pub image_size: usize,
    /// torchvision AlexNet weights (`.pth` or `.safetensors`) for the image network.
    pub pretrained: Option<PathBuf>,
    /// Items per forward pass when encoding.
    pub encode_batch: usize,
}

impl Default for SdchParams {
    fn default() -> Self {
        // Widths and epochs chosen on validation splits of the Wikipedia, UCI digits and emoji
        // training items (docs/methods.md); the rest as in the paper.
        Self {
            epochs: 60,
            batch_size: 64,
            feature_dim: 256,
            hidden: vec![512, 512],
            dropout: 0.0,
            standardize: true,
            lr_features: 1e-3,
            lr_hash: 1e-2,
            pretrained_lr_factor: 0.1,
            gamma: 0.01,
            beta1: 1.0,
            beta2: 1.0,
            beta3: 0.1,
            decorrelation_scale: DecorrelationScale::Items,
            optimizer: OptimizerKind::Adam,
            weight_decay: 0.0,
            warmup_schedule: true,
            itq_iterations: 50,
            image_size: 224,
            pretrained: None,
            encode_batch: 256,
        }
    }
}

impl SdchParams {
    /// The paper's settings: 4096-wide hidden layers (AlexNet's fc6/fc7 widths, also used for the
    /// text network), 30 epochs, learning rates 10⁻³ (features) and 10⁻² (hash layer), γ 0.01,
    /// β (1, 1, 0.1) (`--preset paper`).
    pub fn paper() -> Self {
        Self {
            epochs: 30,
            hidden: vec![4096, 4096],
            lr_features: 1e-3,
            lr_hash: 1e-2,
            gamma: 0.01,
            beta1: 1.0,
            beta2: 1.0,
            beta3: 0.1,
            ..Self::default()
        }
    }
}

/// What `cmh tune` varies for SDCH: widths, epochs (also the successive-halving budget), learning
/// rates, loss weights and dropout.
pub const SEARCH_SPACE: SearchSpace = SearchSpace {
    dims: &[
        Dim { name: "hidden", range: Range::Choice(&["[256]", "[512]", "[1024]", "[256, 256]", "[512, 512]"]) },
        Dim { name: "epochs", range: Range::Choice(&["20", "40", "60"]) },
        Dim { name: "lr_features", range: Range::Float { lo: 1e-4, hi: 3e-3, log: true } },
        Dim { name: "lr_hash", range: Range::Float { lo: 1e-3, hi: 3e-2, log: true } },
        Dim { name: "gamma", range: Range::Float { lo: 1e-3, hi: 0.1, log: true } },
        Dim { name: "beta3", range: Range::Float { lo: 0.01, hi: 1.0, log: true } },
        Dim { name: "dropout", range: Range::Choice(&["0.0", "0.2", "0.5"]) },
    ],
    fidelity: Some("epochs"),
};

impl MethodParams for SdchParams {
    fn presets() -> Vec<(&'static str, Self)> {
        vec![("paper", Self::paper())]
    }
    fn search_space() -> SearchSpace {
        SEARCH_SPACE
    }
}

/// What the image network reads.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ImageInput {
    /// Precomputed feature vectors of this dimension (feature mode: an MLP).
    Features { dim: usize },
    /// uint8 RGB images resized to `size`×`size` (AlexNet).
    Images { size: usize },
}

/// Everything that fixes the networks' shapes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SdchArch {
    pub image: ImageInput,
    pub text_dim: usize,
    pub hidden: Vec<usize>,
    pub feature_dim: usize,
    pub bits: usize,
    pub dropout: f64,
}

impl SdchArch {
    /// Weights and biases of the networks (AlexNet without its last layer: 57,003,840).
    pub fn parameter_count(&self) -> f64 {
        let mlp = |input: usize| -> f64 {
            let widths: Vec<f64> =
                std::iter::once(input).chain(self.hidden.iter().copied()).chain([self.feature_dim]).map(|w| w as f64).collect();
            widths.windows(2).map(|w| (w[0] + 1.0) * w[1]).sum()
        };
        let image = match self.image {
            ImageInput::Features { dim } => mlp(dim),
            ImageInput::Images { .. } => 57_003_840.0 + 4097.0 * self.feature_dim as f64,
        };
        image + mlp(self.text_dim) + (self.feature_dim as f64 + 1.0) * self.bits as f64
    }

    /// Refuses shapes no network can have (a width of 0, images smaller than AlexNet reads, a
    /// dropout outside [0, 1)), naming the field.
    pub fn check(&self) -> Result<()> {
        let widths = [("text_dim", self.text_dim), ("feature_dim", self.feature_dim), ("bits", self.bits)];
        if let Some((name, _)) = widths.iter().find(|(_, w)| *w == 0) {
            bail!("arch.{name} is 0; it must be at least 1");
        }
        if let Some(i) = self.hidden.iter().position(|&w| w == 0) {
            bail!("arch.hidden[{i}] is 0; layer widths must be at least 1");
        }
        match self.image {
            ImageInput::Features { dim: 0 } => bail!("arch.image.dim is 0; it must be at least 1"),
            ImageInput::Images { size } if !(63..=4096).contains(&size) => {
                bail!("arch.image.size is {size}; AlexNet reads images of 63 to 4096 pixels")
            }
            _ => {}
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("arch.dropout is {}; it must be in [0, 1)", self.dropout);
        }
        if self.bits > crate::method::MAX_BITS {
            bail!("arch.bits is {}; at most {} are supported", self.bits, crate::method::MAX_BITS);
        }
        Ok(())
    }
}

enum ImageNet {
    Mlp(Mlp),
    AlexNet(Box<AlexNet>),
}

/// SDCH's networks in one variable store (names: `img-fc*` or `img.features.*`/`img.classifier.*`,
/// `txt-fc*`, `fc4`, and the input statistics `img-input.*`, `txt-input.*`).
pub struct SdchNet {
    pub vs: nn::VarStore,
    pub arch: SdchArch,
    img: ImageNet,
    txt: Mlp,
    fc4: nn::Linear,
    img_mean: Tensor,
    img_std: Tensor,
    txt_mean: Tensor,
    txt_std: Tensor,
}

impl SdchNet {
    pub fn new(arch: &SdchArch, device: Device) -> SdchNet {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let hidden: Vec<i64> = arch.hidden.iter().map(|&h| h as i64).collect();
        let k = arch.feature_dim as i64;
        let (img, img_dim) = match arch.image {
            ImageInput::Features { dim } => (ImageNet::Mlp(Mlp::new(&root, "img", dim as i64, &hidden, k, arch.dropout)), dim as i64),
            ImageInput::Images { .. } => (ImageNet::AlexNet(Box::new(AlexNet::new(&(&root / "img"), k))), 1),
        };
        let txt = Mlp::new(&root, "txt", arch.text_dim as i64, &hidden, k, arch.dropout);
        let fc4 = nn::linear(&root / "fc4", k, arch.bits as i64, Default::default());
        let (img_stats, txt_stats) = (&root / "img-input", &root / "txt-input");
        let img_mean = img_stats.zeros_no_train("mean", &[img_dim]);
        let img_std = img_stats.ones_no_train("std", &[img_dim]);
        let txt_mean = txt_stats.zeros_no_train("mean", &[arch.text_dim as i64]);
        let txt_std = txt_stats.ones_no_train("std", &[arch.text_dim as i64]);
        SdchNet { vs, arch: arch.clone(), img, txt, fc4, img_mean, img_std, txt_mean, txt_std }
    }

    /// f_x: the image network's k-d features of a batch (raw features, or preprocessed images).
    pub fn image_features(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.img {
            ImageNet::Mlp(m) => m.forward_t(&((x - &self.img_mean) / &self.img_std), train),
            ImageNet::AlexNet(a) => a.forward_t(x, train),
        }
    }

    /// f_y: the text network's k-d features of a batch of bag-of-words vectors.
    pub fn text_features(&self, y: &Tensor, train: bool) -> Tensor {
        self.txt.forward_t(&((y - &self.txt_mean) / &self.txt_std), train)
    }

    /// Z = fc4(f), one row per item.
    pub fn hash(&self, f: &Tensor) -> Tensor {
        f.apply(&self.fc4)
    }

    /// Sets the input standardisation from the training features (std 0 → 1): column means and
    /// standard deviations accumulated in f64 over blocks of rows (two passes), so a memory-mapped
    /// view gives the same statistics as the same rows in memory.
    fn set_input_stats(&self, modality: usize, view: &View) -> Result<()> {
        let n = view.len();
        let blocks = || (0..n).step_by(STATS_BLOCK).map(move |s| (s..(s + STATS_BLOCK).min(n)).collect::<Vec<usize>>());
        let d = view.feature_rows(METHOD, modality, &[])?.ncols();
        let mut sum = Array1::<f64>::zeros(d);
        for idx in blocks() {
            sum += &view.feature_rows(METHOD, modality, &idx)?.mapv(f64::from).sum_axis(Axis(0));
        }
        let mean = sum / n.max(1) as f64;
        let mut sq = Array1::<f64>::zeros(d);
        for idx in blocks() {
            let xc = view.feature_rows(METHOD, modality, &idx)?.mapv(f64::from) - &mean;
            sq += &(&xc * &xc).sum_axis(Axis(0));
        }
        let std = (sq / n.max(1) as f64).mapv(|v| {
            let s = v.sqrt() as f32;
            if s > 1e-12 {
                s
            } else {
                1.0
            }
        });
        let mean = mean.mapv(|v| v as f32);
        let (m, s) = if modality == IMAGE { (&self.img_mean, &self.img_std) } else { (&self.txt_mean, &self.txt_std) };
        tch::no_grad(|| {
            m.shallow_clone().copy_(&Tensor::from_slice(mean.as_slice().unwrap()));
            s.shallow_clone().copy_(&Tensor::from_slice(std.as_slice().unwrap()));
        });
        Ok(())
    }

    /// fc4 outputs (n × r) of every item of a view, in eval mode, `chunk` items at a time.
    pub fn hash_outputs(&self, modality: usize, view: &View, chunk: usize) -> Result<Array2<f32>> {
        let input = Input::new(modality, view, &self.arch, self.vs.device())?;
        let n = view.len();
        let mut out = Array2::<f32>::zeros((n, self.arch.bits));
        tch::no_grad(|| -> Result<()> {
            for start in (0..n).step_by(chunk.max(1)) {
                let idx: Vec<usize> = (start..(start + chunk).min(n)).collect();
                let x = input.batch(&idx, self.vs.device())?;
                let f = if modality == IMAGE { self.image_features(&x, false) } else { self.text_features(&x, false) };
                let z = tensor_to_array(&self.hash(&f))?;
                out.slice_mut(ndarray::s![start..start + idx.len(), ..]).assign(&z);
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// Rows per block of the input statistics.
const STATS_BLOCK: usize = 4096;

/// A modality's training or encoding input: each mini-batch's rows are copied into a tensor on
/// the device when the batch is built (features from memory or from a memory-mapped file; images
/// also resized and normalised), so the data are never copied into tensors as a whole.
enum Input<'a> {
    Features(ArrayView2<'a, f32>),
    Images(ArrayView4<'a, u8>, usize),
    MappedFeatures(&'a MappedRows),
    MappedImages(&'a MappedRows, usize),
}

impl<'a> Input<'a> {
    fn new(modality: usize, view: &'a View, arch: &SdchArch, device: Device) -> Result<Self> {
        let name = match modality {
            IMAGE => "image",
            TEXT => "text",
            _ => bail!("sdch: modality {modality} does not exist (0 = image, 1 = text)"),
        };
        let _ = device;
        let images = match view {
            View::Images(_) => true,
            View::Mapped(m) => m.is_images(),
            View::Features(_) => false,
        };
        if images {
            let size = match (modality, &arch.image) {
                (IMAGE, ImageInput::Images { size }) => *size,
                _ => bail!("sdch: the {name} input holds raw images, but the model's {name} network reads feature vectors"),
            };
            return Ok(match view {
                View::Mapped(m) => Input::MappedImages(m, size),
                View::Images(im) => Input::Images(im.view(), size),
                View::Features(_) => unreachable!("features are not images"),
            });
        }
        let want = match (modality, &arch.image) {
            (IMAGE, ImageInput::Features { dim }) => *dim,
            (IMAGE, ImageInput::Images { .. }) => {
                bail!("sdch: the image input holds feature vectors, but the model's image network is AlexNet, which reads images")
            }
            _ => arch.text_dim,
        };
        let (input, dim) = match view {
            View::Features(x) => (Input::Features(x.view()), x.ncols()),
            View::Mapped(m) => (Input::MappedFeatures(m), m.array().row_len()),
            View::Images(_) => unreachable!("images handled above"),
        };
        if dim != want {
            bail!("sdch: the {name} input has {dim}-d features, the model expects {want}-d");
        }
        Ok(input)
    }

    /// Rows `idx` on `device`: features as they are, images preprocessed (resized, normalised).
    fn batch(&self, idx: &[usize], device: Device) -> Result<Tensor> {
        match self {
            Input::Features(x) => Ok(array_to_tensor(x.select(Axis(0), idx).view(), device)),
            Input::Images(im, size) => preprocess(im.select(Axis(0), idx).view(), Some(*size), device),
            Input::MappedFeatures(m) => Ok(array_to_tensor(m.features(idx)?.view(), device)),
            Input::MappedImages(m, size) => preprocess(m.images(idx)?.view(), Some(*size), device),
        }
    }
}

// ---------------------------------------------------------------- losses

/// s (m × m): 1 where image i and text j share a label (eq. 4's s_ij).
pub fn pair_similarity(lx: &Tensor, ly: &Tensor) -> Tensor {
    lx.matmul(&ly.tr()).gt(0.0).to_kind(Kind::Float)
}

/// S_h (N × N, N = rows of `l`): +1 where two items share a label, −1 otherwise (eq. 7).
pub fn hash_similarity(l: &Tensor) -> Tensor {
    l.matmul(&l.tr()).gt(0.0).to_kind(Kind::Float) * 2.0 - 1.0
}

/// Eq. 4: L_f = Σᵢⱼ log(1 + exp(θᵢⱼ)) − sᵢⱼθᵢⱼ with θᵢⱼ = f_xᵢᵀ f_yⱼ (softplus is the stable
/// log(1 + exp)).
pub fn loss_f(fx: &Tensor, fy: &Tensor, s: &Tensor) -> Tensor {
    let theta = fx.matmul(&fy.tr());
    (theta.softplus() - s * &theta).sum(Kind::Float)
}

/// Eq. 7 with one item per row of `z` (N × r) and `b` (N × r):
/// ‖Z Zᵀ/r − S_h‖² + β₁‖Z − B‖² + β₂‖ZᵀZ/c − I‖² + (β₃/r)‖Z‖², c = N (`Items`) or r (`Bits`).
pub fn loss_h(z: &Tensor, b: &Tensor, sh: &Tensor, beta: [f64; 3], scale: DecorrelationScale) -> Tensor {
    let (n, r) = (z.size()[0], z.size()[1]);
    let sim = (z.matmul(&z.tr()) / r as f64 - sh).square().sum(Kind::Float);
    let quant = (z - b).square().sum(Kind::Float);
    let c = match scale {
        DecorrelationScale::Items => n as f64,
        DecorrelationScale::Bits => r as f64,
    };
    let eye = Tensor::eye(r, (Kind::Float, z.device()));
    let decor = (z.tr().matmul(z) / c - eye).square().sum(Kind::Float);
    let norm = z.square().sum(Kind::Float);
    sim + quant * beta[0] + decor * beta[1] + norm * (beta[2] / r as f64)
}

// ---------------------------------------------------------------- fitting

/// Which losses an epoch trains (the paper's schedule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// L_f, feature networks only.
    Features,
    /// γL_h, hash layer only.
    Hash,
    /// L_f + γL_h, everything.
    All,
}

impl SdchParams {
    pub fn phase(&self, epoch: usize) -> Phase {
        match (self.warmup_schedule, epoch) {
            (true, 1) => Phase::Features,
            (true, 2) => Phase::Hash,
            _ => Phase::All,
        }
    }

    /// The run configuration a checkpoint must match (everything but `epochs`).
    fn config_json(&self, arch: &SdchArch) -> serde_json::Value {
        let mut p = serde_json::to_value(self).expect("serialisable");
        p.as_object_mut().unwrap().remove("epochs");
        serde_json::json!({ "arch": arch, "params": p })
    }

    /// The architecture for `data` at `bits`.
    pub fn arch(&self, data: &TrainSet, bits: usize) -> Result<SdchArch> {
        let image = match &data.views[IMAGE] {
            View::Features(x) => ImageInput::Features { dim: x.ncols() },
            View::Mapped(m) if !m.is_images() => ImageInput::Features { dim: m.array().row_len() },
            View::Images(_) | View::Mapped(_) => ImageInput::Images { size: self.image_size },
        };
        let text_dim = match &data.views[TEXT] {
            View::Features(x) => x.ncols(),
            View::Mapped(m) if !m.is_images() => m.array().row_len(),
            View::Images(_) | View::Mapped(_) => bail!("sdch: the text modality must hold feature vectors (bag of words), not images"),
        };
        Ok(SdchArch { image, text_dim, hidden: self.hidden.clone(), feature_dim: self.feature_dim, bits, dropout: self.dropout })
    }

    /// Fits with a [`RunControl`] (e.g. stop after an epoch, as a kill would).
    pub fn fit_with_control(&self, data: &TrainSet, ctx: &FitContext, control: &RunControl) -> Result<SdchModel> {
        let mut run = SdchRun::new(self, data, ctx, control)?;
        while let Some(epoch) = run.trainer.next_epoch() {
            run.epoch(epoch)?;
        }
        run.finish()
    }
}

/// One SDCH training run: networks, optimiser, B (n × r, ±1, one row per training item), the
/// inputs on the device, and the [`Trainer`]. [`SdchParams::fit`] is `new`, then [`SdchRun::epoch`]
/// for each epoch, then [`SdchRun::finish`]; benchmarks time [`SdchRun::train_batches`].
pub struct SdchRun<'a> {
    pub params: &'a SdchParams,
    pub trainer: Trainer,
    pub net: SdchNet,
    pub b: Option<Tensor>,
    opt: Optimizer,
    data: &'a TrainSet,
    config: serde_json::Value,
    img_in: Input<'a>,
    txt_in: Input<'a>,
    /// Training rows labelled in both modalities (the only ones the losses see).
    rows: Vec<usize>,
    seed: u64,
    /// After a resume within an epoch: the sums of L_f and L_h of the epoch's trained batches.
    resumed_sums: Option<(f64, f64)>,
}

impl<'a> SdchRun<'a> {
    /// Builds the networks (seeded initialisation, input statistics, pretrained AlexNet layers),
    /// the optimiser's groups, and resumes from the checkpoint when `ctx.resume`.
    pub fn new(params: &'a SdchParams, data: &'a TrainSet, ctx: &FitContext, control: &RunControl) -> Result<Self> {
        let arch = params.arch(data, ctx.bits)?;
        let config = params.config_json(&arch);
        let mut trainer = Trainer::new(METHOD, ctx, params.epochs, control)?;
        let device = trainer.device;
        let net = SdchNet::new(&arch, device);
        init_default(&net.vs, ctx.seed, &[])?;
        if params.standardize {
            if let ImageInput::Features { .. } = arch.image {
                net.set_input_stats(IMAGE, &data.views[IMAGE])?;
            }
            net.set_input_stats(TEXT, &data.views[TEXT])?;
        }
        let pretrained: Vec<String> = match (&params.pretrained, &arch.image) {
            (Some(p), ImageInput::Images { .. }) => {
                super::pretrained::load_alexnet(&net.vs, "img.", p, &["classifier.6.weight", "classifier.6.bias"])?
            }
            _ => vec![],
        };
        // Parameter groups: 0 = feature networks, 1 = pretrained layers, 2 = hash layer.
        let groups = groups_from_var_store(
            &net.vs,
            |name| {
                if name.starts_with("fc4.") {
                    Some(2)
                } else if pretrained.iter().any(|p| p == name) {
                    Some(1)
                } else {
                    Some(0)
                }
            },
            &[("features", params.lr_features), ("pretrained", params.lr_features * params.pretrained_lr_factor), ("hash", params.lr_hash)],
        )?;
        let mut opt = Optimizer::new(OptimizerConfig { kind: params.optimizer, weight_decay: params.weight_decay }, groups);
        let n = data.len();
        let rows: Vec<usize> = (0..n).filter(|&i| data.labelled[IMAGE][i] && data.labelled[TEXT][i]).collect();
        if rows.len() < 2 {
            bail!("sdch needs at least 2 training items labelled in both modalities, found {}", rows.len());
        }
        let img_in = Input::new(IMAGE, &data.views[IMAGE], &arch, device)?;
        let txt_in = Input::new(TEXT, &data.views[TEXT], &arch, device)?;
        let mut b = None;
        let mut resumed_sums = None;
        if let Some(ck) = trainer.load_for_resume(&config)? {
            ck.restore_vars(&net.vs)?;
            opt.restore(&ck)?;
            b = restore_b(&ck, n, arch.bits, device)?;
            trainer.restore(&ck)?;
            if ck.meta.step > 0 {
                let sum = |k: &str| {
                    ck.meta
                        .extra
                        .get(k)
                        .and_then(|v| v.as_f64())
                        .ok_or_else(|| anyhow!("{}: corrupt checkpoint: {k} missing", ck.path.display()))
                };
                resumed_sums = Some((sum("sum_f")?, sum("sum_h")?));
            }
        }
        Ok(Self { params, trainer, net, b, opt, data, config, img_in, txt_in, rows, seed: ctx.seed, resumed_sums })
    }

    /// One epoch of the schedule: B's ITQ initialisation when first needed, the mini-batches,
    /// B's update (eq. 10), the log line and the checkpoint.
    pub fn epoch(&mut self, epoch: usize) -> Result<()> {
        let phase = self.params.phase(epoch);
        if phase != Phase::Features && self.b.is_none() {
            self.init_b()?;
        }
        let (sum_f, sum_h) = self.train_batches(phase)?;
        if phase != Phase::Features {
            self.update_b()?;
        }
        let loss = self.trainer.mean_batch_loss();
        self.trainer.end_epoch(loss, &format!("phase {phase:?} L_f {sum_f:.4} L_h {sum_h:.4}"))?;
        let b = self.b.as_ref().map(|b| b.shallow_clone());
        let state: Vec<(&str, &Tensor)> = b.as_ref().map(|b| vec![("B", b)]).unwrap_or_default();
        self.trainer.checkpoint(&self.net.vs, &self.opt, &self.config, &state, serde_json::json!({ "b_initialised": b.is_some() }))
    }

    /// One pass over shuffled mini-batches of the labelled rows, training what `phase` trains.
    /// Returns the sums of L_f and L_h over the batches.
    pub fn train_batches(&mut self, phase: Phase) -> Result<(f64, f64)> {
        self.opt.set_enabled("features", phase != Phase::Hash)?;
        self.opt.set_enabled("pretrained", phase != Phase::Hash)?;
        self.opt.set_enabled("hash", phase != Phase::Features)?;
        if phase != Phase::Features && self.b.is_none() {
            bail!("internal: B must be initialised before training the hash layer");
        }
        let device = self.trainer.device;
        let beta = [self.params.beta1, self.params.beta2, self.params.beta3];
        let (mut sum_f, mut sum_h) = self.resumed_sums.take().unwrap_or((0.0, 0.0));
        for batch in self.trainer.batches(self.rows.len(), self.params.batch_size) {
            let replay = self.trainer.replaying();
            let idx: Vec<usize> = batch.iter().map(|&i| self.rows[i]).collect();
            let it = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(device);
            // The batch's label rows (copied per batch, like its inputs).
            let lab = |m: usize| array_to_tensor(self.data.labels[m].select(Axis(0), &idx).mapv(|v| v as f32).view(), device);
            let (bx, by) = (lab(IMAGE), lab(TEXT));
            let x = self.img_in.batch(&idx, device)?;
            let y = self.txt_in.batch(&idx, device)?;
            if replay {
                // Trained before the checkpoint this run resumed from: only its random draws.
                tch::no_grad(|| self.batch_losses(phase, &x, &y, &bx, &by, &it, beta));
                continue;
            }
            let (lf, lh) = self.batch_losses(phase, &x, &y, &bx, &by, &it, beta);
            let loss = match (&lf, &lh) {
                (Some(f), Some(h)) => f + h * self.params.gamma,
                (Some(f), None) => f.shallow_clone(),
                (None, Some(h)) => h * self.params.gamma,
                (None, None) => unreachable!("every phase has a loss"),
            };
            self.opt.backward_step(&loss)?;
            let v = loss.double_value(&[]);
            if !v.is_finite() {
                bail!("sdch: the loss became {v} in epoch {}; lower the learning rates", self.trainer.epoch + 1);
            }
            sum_f += lf.map_or(0.0, |t| t.double_value(&[]));
            sum_h += lh.map_or(0.0, |t| t.double_value(&[]));
            self.trainer.batch_done(v);
            let b = self.b.as_ref().map(|b| b.shallow_clone());
            let state: Vec<(&str, &Tensor)> = b.as_ref().map(|b| vec![("B", b)]).unwrap_or_default();
            let extra = serde_json::json!({ "b_initialised": b.is_some(), "sum_f": sum_f, "sum_h": sum_h });
            self.trainer.step_end(&self.net.vs, &self.opt, &state, extra)?;
        }
        Ok((sum_f, sum_h))
    }

    /// The fitted model (B initialised by ITQ first if no epoch trained the hash layer).
    pub fn finish(mut self) -> Result<SdchModel> {
        if self.b.is_none() {
            self.init_b()?;
        }
        let b = tensor_to_array(self.b.as_ref().unwrap())?;
        let train_codes = BinaryCodes::from_signs(b.view());
        Ok(SdchModel { params: self.params.clone(), net: Mutex::new(self.net), train_codes, history: self.trainer.history.clone() })
    }

    /// L_f and L_h of one batch as the phase needs them (L_h unscaled by γ).
    #[allow(clippy::too_many_arguments)]
    fn batch_losses(
        &self,
        phase: Phase,
        x: &Tensor,
        y: &Tensor,
        lx: &Tensor,
        ly: &Tensor,
        idx: &Tensor,
        beta: [f64; 3],
    ) -> (Option<Tensor>, Option<Tensor>) {
        let feats = || (self.net.image_features(x, true), self.net.text_features(y, true));
        let (fx, fy) = if phase == Phase::Hash {
            tch::no_grad(|| (self.net.image_features(x, false), self.net.text_features(y, false)))
        } else {
            feats()
        };
        let lf = (phase != Phase::Hash).then(|| loss_f(&fx, &fy, &pair_similarity(lx, ly)));
        let lh = (phase != Phase::Features).then(|| {
            let z = self.net.hash(&Tensor::cat(&[&fx, &fy], 0));
            let bb = self.b.as_ref().expect("B initialised").index_select(0, idx);
            let b2 = Tensor::cat(&[&bb, &bb], 0);
            let sh = hash_similarity(&Tensor::cat(&[lx, ly], 0));
            loss_h(&z, &b2, &sh, beta, self.params.decorrelation_scale)
        });
        (lf, lh)
    }

    fn all_z(&self) -> Result<(Array2<f32>, Array2<f32>)> {
        let chunk = self.params.encode_batch;
        Ok((self.net.hash_outputs(IMAGE, &self.data.views[IMAGE], chunk)?, self.net.hash_outputs(TEXT, &self.data.views[TEXT], chunk)?))
    }

    /// B initialised by ITQ on Z: R, μ from ITQ on the centred fc4 outputs of every training
    /// image and text; fc4 becomes z ↦ (z − μ)R (weights Rᵀ W, bias (b − μ)R) so Z and B agree;
    /// B = sgn(z_x + z_y) of the rotated outputs.
    pub fn init_b(&mut self) -> Result<()> {
        let (zx, zy) = self.all_z()?;
        let n = self.data.len();
        let v = ndarray::concatenate(Axis(0), &[zx.view(), zy.view()])?.mapv(|x| x as f64);
        let mu = v.mean_axis(Axis(0)).unwrap();
        let vc = &v - &mu;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x5DC4);
        let (rot, _) = itq(vc.view(), self.params.itq_iterations, &mut rng)?;
        let vars = self.net.vs.variables();
        let (w, bias) = (&vars["fc4.weight"], &vars["fc4.bias"]);
        let dev = w.device();
        let r_t = array_to_tensor(rot.mapv(|x| x as f32).view(), dev);
        let mu_t = Tensor::from_slice(&mu.mapv(|x| x as f32).to_vec()).to_device(dev);
        tch::no_grad(|| {
            let new_w = r_t.tr().matmul(w);
            let new_b = (bias - &mu_t).unsqueeze(0).matmul(&r_t).squeeze_dim(0);
            w.shallow_clone().copy_(&new_w);
            bias.shallow_clone().copy_(&new_b);
        });
        let rotated = (&vc.slice(ndarray::s![..n, ..]) + &vc.slice(ndarray::s![n.., ..])).dot(&rot);
        self.b = Some(array_to_tensor(rotated.mapv(|x| if x >= 0.0 { 1.0f32 } else { -1.0 }).view(), dev));
        Ok(())
    }

    /// Eq. 10: B = sgn(Z), one code per item: sgn(z_x + z_y), the minimiser of ‖Z − B‖² when an
    /// item's image and text columns share a column of B.
    pub fn update_b(&mut self) -> Result<()> {
        let (zx, zy) = self.all_z()?;
        let s = (zx + zy).mapv(|x| if x >= 0.0 { 1.0f32 } else { -1.0 });
        self.b = Some(array_to_tensor(s.view(), self.net.vs.device()));
        Ok(())
    }
}

fn restore_b(ck: &Checkpoint, n: usize, bits: usize, device: Device) -> Result<Option<Tensor>> {
    let has_b = ck
        .meta
        .extra
        .get("b_initialised")
        .and_then(|v| v.as_bool())
        .ok_or_else(|| anyhow!("{}: corrupt checkpoint: b_initialised missing", ck.path.display()))?;
    if !has_b {
        return Ok(None);
    }
    let b = ck.state("B")?;
    if b.size() != [n as i64, bits as i64] {
        bail!("{}: state.B is {:?}, expected [{n}, {bits}] (another training set?)", ck.path.display(), b.size());
    }
    Ok(Some(b.to_kind(Kind::Float).to_device(device)))
}

impl Fit for SdchParams {
    type Model = SdchModel;

    fn check(&self, data: &TrainSet, bits: usize) -> Result<()> {
        if self.epochs == 0 {
            bail!("sdch: epochs must be at least 1");
        }
        if self.batch_size < 2 {
            bail!("sdch: batch_size must be at least 2 (the losses compare items of a batch), found {}", self.batch_size);
        }
        if self.feature_dim == 0 || self.hidden.contains(&0) {
            bail!("sdch: feature_dim and every hidden width must be at least 1");
        }
        if self.encode_batch == 0 || self.itq_iterations == 0 {
            bail!("sdch: encode_batch and itq_iterations must be at least 1");
        }
        ensure_pos("sdch.lr_features", self.lr_features)?;
        ensure_pos("sdch.lr_hash", self.lr_hash)?;
        for (n, v) in [
            ("gamma", self.gamma),
            ("beta1", self.beta1),
            ("beta2", self.beta2),
            ("beta3", self.beta3),
            ("pretrained_lr_factor", self.pretrained_lr_factor),
            ("weight_decay", self.weight_decay),
        ] {
            ensure_nonneg(&format!("sdch.{n}"), v)?;
        }
        ensure_fraction("sdch.dropout", self.dropout)?;
        if data.n_modalities() != 2 {
            bail!("sdch works on two modalities (image, text), found {}", data.n_modalities());
        }
        let _ = bits;
        let images = match &data.views[IMAGE] {
            View::Images(_) => true,
            View::Mapped(m) => m.is_images(),
            View::Features(_) => false,
        };
        match images {
            true => {
                if self.image_size < 63 {
                    bail!("sdch: AlexNet needs images of at least 63×63 pixels; image_size is {}", self.image_size);
                }
                if let Some(p) = &self.pretrained {
                    if !p.is_file() {
                        bail!("sdch.pretrained: {} does not exist (see pretrained/README.md)", p.display());
                    }
                }
            }
            false => {
                if let Some(p) = &self.pretrained {
                    bail!("sdch.pretrained ({}) is given, but the image modality holds feature vectors, not images", p.display());
                }
            }
        }
        let arch = self.arch(data, bits)?;
        // f32 parameters with their Adam moments and gradients (4 copies), the inputs on the
        // device, B and the encoded outputs (n × bits).
        let params = arch.parameter_count();
        let n = data.len() as f64;
        let inputs: f64 = data
            .views
            .iter()
            .map(|v| match v {
                View::Features(x) => x.len() as f64,
                // Images and mapped rows are read batch by batch.
                View::Images(_) | View::Mapped(_) => 0.0,
            })
            .sum();
        let bytes = 4.0 * (4.0 * params + inputs + 4.0 * n * bits as f64);
        crate::method::ensure_memory("sdch", bits, bytes, "network weights with their optimiser state, inputs and codes")?;
        Ok(())
    }

    fn fit_checked(&self, data: &TrainSet, ctx: &FitContext) -> Result<SdchModel> {
        self.fit_with_control(data, ctx, &RunControl::default())
    }
}

// ---------------------------------------------------------------- the fitted model

/// A trained SDCH model: the networks and the learned training codes B.
pub struct SdchModel {
    pub params: SdchParams,
    net: Mutex<SdchNet>,
    train_codes: BinaryCodes,
    history: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    method: String,
    bits: usize,
    params: SdchParams,
    arch: SdchArch,
    history: Vec<f64>,
}

impl SdchModel {
    pub fn arch(&self) -> SdchArch {
        self.net.lock().unwrap().arch.clone()
    }

    /// fc4 outputs (before the sign) of items of `modality`.
    pub fn hash_outputs(&self, modality: usize, view: &View) -> Result<Array2<f32>> {
        self.net.lock().map_err(|_| anyhow!("sdch: model lock poisoned"))?.hash_outputs(modality, view, self.params.encode_batch)
    }
}

impl HashModel for SdchModel {
    fn method(&self) -> &'static str {
        METHOD
    }
    fn bits(&self) -> usize {
        self.train_codes.bits()
    }
    fn encode(&self, modality: usize, view: &View) -> Result<BinaryCodes> {
        Ok(BinaryCodes::from_signs(self.hash_outputs(modality, view)?.view()))
    }
    fn train_codes(&self) -> Option<&BinaryCodes> {
        Some(&self.train_codes)
    }
    fn history(&self) -> &[f64] {
        &self.history
    }
    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        let net = self.net.lock().map_err(|_| anyhow!("sdch: model lock poisoned"))?;
        let mf = ModelFile {
            method: METHOD.into(),
            bits: self.bits(),
            params: self.params.clone(),
            arch: net.arch.clone(),
            history: self.history.clone(),
        };
        let mut vars: Vec<(String, Tensor)> = net.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        write_safetensors(&dir.join("weights.safetensors"), &vars, Default::default())?;
        self.train_codes.save_npy(dir, "train_codes")?;
        crate::npy::write_text_atomic(&dir.join("model.json"), &(serde_json::to_string_pretty(&mf)? + "\n"))
    }
}

/// Loads a model written by [`SdchModel::save`] (on the CPU).
pub fn load(dir: &Path) -> Result<SdchModel> {
    load_on(dir, Device::Cpu)
}

/// Loads a saved model onto `device`.
pub fn load_on(dir: &Path, device: Device) -> Result<SdchModel> {
    let mp = dir.join("model.json");
    let text = std::fs::read_to_string(&mp).with_context(|| format!("{}: cannot read", mp.display()))?;
    let mf: ModelFile = serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid SDCH model file: {e}", mp.display()))?;
    if mf.method != METHOD {
        bail!("{}: a {} model, not sdch", mp.display(), mf.method);
    }
    if mf.arch.bits != mf.bits {
        bail!("{}: bits {} but the architecture has {}", mp.display(), mf.bits, mf.arch.bits);
    }
    mf.arch.check().with_context(|| format!("{}: invalid architecture", mp.display()))?;
    let wp = dir.join("weights.safetensors");
    // The networks model.json describes must fit the weights file before they are built.
    let file_len = std::fs::metadata(&wp).with_context(|| format!("{}: cannot read", wp.display()))?.len() as f64;
    let needed = 4.0 * mf.arch.parameter_count();
    if needed > file_len {
        bail!(
            "{}: the architecture needs {needed:.0} bytes of float32 weights, but {} holds {file_len:.0}; model.json and the weights do not belong together",
            mp.display(),
            wp.display()
        );
    }
    let net = SdchNet::new(&mf.arch, device);
    let (tensors, _) = read_safetensors(&wp)?;
    let mut targets: Vec<(String, Tensor)> = net.vs.variables().into_iter().collect();
    targets.sort_by(|a, b| a.0.cmp(&b.0));
    copy_named(&targets, &tensors.into_iter().collect(), &format!("weights {}", wp.display()))?;
    let train_codes = BinaryCodes::load_npy(&dir.join("train_codes.npy"), Some(mf.bits))?;
    Ok(SdchModel { params: mf.params, net: Mutex::new(net), train_codes, history: mf.history })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deep::trainer::Interrupted;
    use ndarray::{array, Array2};
    use rand::Rng;
    use rand_distr::StandardNormal;

    fn t(a: &Array2<f64>) -> Tensor {
        array_to_tensor(a.mapv(|v| v as f32).view(), Device::Cpu)
    }

    /// Eq. 4 against a plain f64 double loop.
    #[test]
    fn loss_f_matches_plain_computation() {
        let fx = array![[0.5, -1.0], [2.0, 0.3], [-0.7, 0.1]];
        let fy = array![[1.0, 1.0], [-0.2, 0.4], [3.0, -2.0]];
        let lx = array![[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]];
        let ly = array![[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]];
        let mut want = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                let theta: f64 = (0..2).map(|k| fx[[i, k]] * fy[[j, k]]).sum();
                let s = if (0..2).any(|c| lx[[i, c]] > 0.0 && ly[[j, c]] > 0.0) { 1.0 } else { 0.0 };
                want += (1.0 + theta.exp()).ln() - s * theta;
            }
        }
        let s = pair_similarity(&t(&lx), &t(&ly));
        assert_eq!(Vec::<f32>::try_from(s.view([-1])).unwrap(), vec![0., 1., 0., 1., 0., 1., 1., 1., 1.]);
        let got = loss_f(&t(&fx), &t(&fy), &s).double_value(&[]);
        assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{got} vs {want}");
    }

    /// Eq. 7 against a plain computation in the paper's layout (codes as columns, Z ∈ ℝ^{r×N}).
    #[test]
    fn loss_h_matches_plain_computation_in_column_layout() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (n, r) = (6usize, 3usize);
        let zrows = Array2::from_shape_simple_fn((n, r), || rng.sample::<f64, _>(StandardNormal));
        let brows = zrows.mapv(|v| if v >= 0.0 { 1.0 } else { -1.0 });
        let labels = array![[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]];
        let zc = zrows.t().to_owned(); // r × N, the paper's Z
        let bc = brows.t().to_owned();
        let beta = [1.0, 0.7, 0.1];
        for scale in [DecorrelationScale::Items, DecorrelationScale::Bits] {
            let c = if scale == DecorrelationScale::Items { n as f64 } else { r as f64 };
            let mut want = 0.0;
            for i in 0..n {
                for j in 0..n {
                    let ztz: f64 = (0..r).map(|k| zc[[k, i]] * zc[[k, j]]).sum(); // (ZᵀZ)ᵢⱼ, N × N
                    let share = (0..2).any(|q| labels[[i, q]] > 0.0 && labels[[j, q]] > 0.0);
                    let sh = if share { 1.0 } else { -1.0 };
                    want += (ztz / r as f64 - sh).powi(2);
                }
            }
            for k in 0..r {
                for i in 0..n {
                    want += beta[0] * (zc[[k, i]] - bc[[k, i]]).powi(2) + beta[2] / r as f64 * zc[[k, i]].powi(2);
                }
                for l in 0..r {
                    let zzt: f64 = (0..n).map(|i| zc[[k, i]] * zc[[l, i]]).sum(); // (ZZᵀ)ₖₗ, r × r
                    let eye = if k == l { 1.0 } else { 0.0 };
                    want += beta[1] * (zzt / c - eye).powi(2);
                }
            }
            let sh = hash_similarity(&t(&labels));
            assert_eq!(sh.double_value(&[0, 1]), -1.0);
            assert_eq!(sh.double_value(&[0, 2]), 1.0);
            assert_eq!(sh.double_value(&[4, 4]), 1.0);
            let got = loss_h(&t(&zrows), &t(&brows), &sh, beta, scale).double_value(&[]);
            assert!((got - want).abs() < 1e-4 * want.abs(), "{scale:?}: {got} vs {want}");
        }
    }

    /// Three well separated classes; image and text features are noisy class prototypes.
    fn toy(n: usize, seed: u64) -> TrainSet {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (dx, dy, c) = (6, 5, 3);
        let px = Array2::from_shape_simple_fn((c, dx), || 3.0 * rng.sample::<f64, _>(StandardNormal));
        let py = Array2::from_shape_simple_fn((c, dy), || 3.0 * rng.sample::<f64, _>(StandardNormal));
        let cls: Vec<usize> = (0..n).map(|i| i % c).collect();
        let x = Array2::from_shape_fn((n, dx), |(i, j)| (px[[cls[i], j]] + rng.sample::<f64, _>(StandardNormal)) as f32);
        let y = Array2::from_shape_fn((n, dy), |(i, j)| (py[[cls[i], j]] + rng.sample::<f64, _>(StandardNormal)) as f32);
        TrainSet::supervised(
            vec![View::Features(x), View::Features(y)],
            crate::bundle::one_hot(&cls, c),
            vec!["a".into(), "b".into(), "c".into()],
        )
    }

    fn small() -> SdchParams {
        SdchParams { epochs: 4, batch_size: 8, feature_dim: 8, hidden: vec![16], ..Default::default() }
    }

    #[test]
    fn memory_mapped_bundle_trains_like_the_loaded_one() {
        // The same bundle loaded and memory-mapped, the same split: identical losses, codes and
        // encodings (every batch holds the same values, only read from the file).
        let data = toy(90, 4);
        let dir = tempfile::tempdir().unwrap();
        let nm = |m: usize| crate::bundle::NewModality {
            name: ["image", "text"][m].into(),
            features: Some(data.views[m].features("t", m).unwrap().clone()),
            ..Default::default()
        };
        crate::bundle::BundleWriter {
            name: "toy".into(),
            source: "test".into(),
            classes: data.class_names.clone(),
            modalities: vec![nm(0), nm(1)],
            labels: vec![data.labels[0].clone()],
            ..Default::default()
        }
        .write(&dir.path().join("toy"), false)
        .unwrap();
        let loaded = crate::bundle::Bundle::load(&dir.path().join("toy")).unwrap();
        let mapped = crate::bundle::Bundle::load_mapped(&dir.path().join("toy")).unwrap();
        assert!(mapped.modalities.iter().all(|m| m.features.is_none() && m.mapped_features.is_some()));
        let train: Vec<usize> = (0..90).filter(|i| i % 5 != 0).collect();
        let set = |b: &crate::bundle::Bundle| {
            let views = crate::split::bundle_views(b, &train, false).unwrap();
            TrainSet::supervised(views, b.labels[0].select(Axis(0), &train), b.class_names().to_vec())
        };
        let (a, b) = (set(&loaded), set(&mapped));
        assert!(matches!(b.views[IMAGE], View::Mapped(_)) && matches!(a.views[IMAGE], View::Features(_)));
        let p = SdchParams { epochs: 6, ..small() };
        let ctx = FitContext::new(8, 3);
        let (ma, mb) = (p.fit(&a, &ctx).unwrap(), p.fit(&b, &ctx).unwrap());
        assert_eq!(ma.history(), mb.history());
        assert_eq!(ma.train_codes(), mb.train_codes());
        for m in [IMAGE, TEXT] {
            assert_eq!(ma.encode(m, &b.views[m]).unwrap(), ma.encode(m, &a.views[m]).unwrap());
            assert_eq!(mb.hash_outputs(m, &b.views[m]).unwrap(), ma.hash_outputs(m, &a.views[m]).unwrap());
        }
        // Shallow methods need the features in memory and say so.
        let e = format!("{:#}", crate::shallow::sch::SchParams { anchors: 5, ..Default::default() }.fit(&b, &ctx).unwrap_err());
        assert!(e.contains("memory-mapped") && e.contains("image_features.npy"), "{e}");
    }

    #[test]
    fn learns_separable_toy_data_and_round_trips() {
        let data = toy(60, 1);
        let p = SdchParams { epochs: 30, ..small() };
        let model = p.fit(&data, &FitContext::new(8, 2)).unwrap();
        assert_eq!(model.history().len(), 30);
        let labels = &data.labels[0];
        let qi = model.encode(IMAGE, &data.views[IMAGE]).unwrap();
        let dt = model.encode(TEXT, &data.views[TEXT]).unwrap();
        let i2t = crate::metrics::map(qi.view(), dt.view(), labels.view(), labels.view()).unwrap();
        let b = model.train_codes().unwrap();
        let t2i = crate::metrics::map(dt.view(), b.view(), labels.view(), labels.view()).unwrap();
        assert!(i2t > 0.9 && t2i > 0.9, "I→T {i2t}, T→I (learned B) {t2i}, losses {:?}", model.history());
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.encode(TEXT, &data.views[TEXT]).unwrap(), dt);
        assert_eq!(loaded.train_codes().unwrap(), b);
        assert!(loaded.history().iter().zip(model.history()).all(|(a, b)| (a - b).abs() <= 1e-12 * b.abs()));
        // Python encodes with the saved weights alone (scripts/sdch_encode.py) and agrees.
        if let Some(py) = crate::deep::test_support::python_with(&["numpy"]) {
            for (side, m) in [("img", IMAGE), ("txt", TEXT)] {
                let x = dir.path().join(format!("{side}.npy"));
                crate::npy::write_npy(&x, data.views[m].features("test", m).unwrap()).unwrap();
                let out = dir.path().join(format!("{side}_codes.npy"));
                let (xs, os) = (x.to_str().unwrap(), out.to_str().unwrap());
                crate::deep::test_support::run_script(
                    &py,
                    "sdch_encode.py",
                    &[dir.path().to_str().unwrap(), xs, "--side", side, "--out", os],
                );
                let py_codes = BinaryCodes::load_npy(&out, Some(8)).unwrap();
                let z = model.hash_outputs(m, &data.views[m]).unwrap();
                let rust_codes = model.encode(m, &data.views[m]).unwrap();
                // Bits whose pre-sign value is within float rounding of 0 may differ (f64 in numpy).
                for i in 0..z.nrows() {
                    for j in 0..8 {
                        if z[[i, j]].abs() > 1e-4 {
                            assert_eq!(py_codes.bit(i, j), rust_codes.bit(i, j), "{side} item {i} bit {j}");
                        }
                    }
                }
            }
        }
        // Wrong inputs are refused clearly.
        let e = model.encode(TEXT, &data.views[IMAGE]).unwrap_err().to_string();
        assert!(e.contains("text input has 6-d features, the model expects 5-d"), "{e}");
        let e = model.encode(2, &data.views[TEXT]).unwrap_err().to_string();
        assert!(e.contains("modality 2 does not exist"), "{e}");
    }

    fn weights(m: &SdchModel) -> Vec<(String, Vec<f32>)> {
        let net = m.net.lock().unwrap();
        let mut v: Vec<(String, Vec<f32>)> =
            net.vs.variables().into_iter().map(|(n, t)| (n, Vec::<f32>::try_from(t.view([-1])).unwrap())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// A run stopped after epoch 1 (B not yet initialised) or 2 (after the hash-only epoch) and
    /// resumed ends with exactly the weights and codes of an uninterrupted run.
    #[test]
    fn runs_stopped_within_an_epoch_resume_to_the_uninterrupted_model() {
        let data = toy(30, 4);
        // Batches of 4: 7 per epoch; dropout draws from libtorch's generator in every batch.
        let p = SdchParams { dropout: 0.2, batch_size: 4, ..small() };
        let ctx = |dir: &Path, resume: bool| FitContext {
            checkpoint_dir: Some(dir.to_path_buf()),
            resume,
            device: crate::method::DeviceChoice::Cpu,
            ..FitContext::new(8, 11)
        };
        let d = tempfile::tempdir().unwrap();
        let full = p.fit(&data, &ctx(&d.path().join("full"), false)).unwrap();
        // Checkpoints every 2 batches change nothing.
        let every = RunControl { checkpoint_steps: Some(2), ..Default::default() };
        let checked = p.fit_with_control(&data, &ctx(&d.path().join("every"), false), &every).unwrap();
        assert_eq!(weights(&checked), weights(&full));
        // Stopped after 3 batches of epoch 1 (features only) and of epoch 3 (all layers, B set).
        for (epoch, step) in [(1, 3), (3, 5)] {
            let dir = d.path().join(format!("stop{epoch}"));
            let stop = RunControl { stop_after_step: Some((epoch, step)), ..Default::default() };
            let e = p.fit_with_control(&data, &ctx(&dir, false), &stop).err().expect("interrupted");
            let i = e.downcast_ref::<Interrupted>().expect("Interrupted");
            assert_eq!((i.epoch, i.step), (epoch - 1, step));
            let ck = Checkpoint::load(&dir.join(crate::deep::trainer::CHECKPOINT_FILE)).unwrap();
            assert_eq!((ck.meta.epoch, ck.meta.step), (epoch - 1, step));
            let resumed = p.fit(&data, &ctx(&dir, true)).unwrap();
            assert_eq!(resumed.history(), full.history(), "stopped in epoch {epoch}");
            assert_eq!(weights(&resumed), weights(&full), "stopped in epoch {epoch}");
            assert_eq!(resumed.train_codes(), full.train_codes());
        }
    }

    #[test]
    fn resumed_runs_equal_uninterrupted_runs() {
        let data = toy(30, 4);
        let p = SdchParams { dropout: 0.2, ..small() };
        let ctx = |dir: &Path, resume: bool| FitContext {
            checkpoint_dir: Some(dir.to_path_buf()),
            resume,
            device: crate::method::DeviceChoice::Cpu,
            ..FitContext::new(8, 11)
        };
        let d = tempfile::tempdir().unwrap();
        let full = p.fit(&data, &ctx(&d.path().join("full"), false)).unwrap();
        let log = std::fs::read_to_string(d.path().join("full").join(crate::deep::trainer::LOG_FILE)).unwrap();
        assert_eq!(log.lines().filter(|l| l.contains("epoch ")).count(), 4, "{log}");
        for stop in [1, 2] {
            let dir = d.path().join(format!("stop{stop}"));
            let e = p
                .fit_with_control(&data, &ctx(&dir, false), &RunControl { stop_after_epoch: Some(stop), ..Default::default() })
                .err()
                .expect("interrupted");
            assert_eq!(e.downcast_ref::<Interrupted>().map(|i| i.epoch), Some(stop));
            let resumed = p.fit(&data, &ctx(&dir, true)).unwrap();
            assert_eq!(resumed.history(), full.history(), "stop {stop}");
            assert_eq!(weights(&resumed), weights(&full), "stop {stop}");
            assert_eq!(resumed.train_codes(), full.train_codes());
            for m in [IMAGE, TEXT] {
                assert_eq!(resumed.encode(m, &data.views[m]).unwrap(), full.encode(m, &data.views[m]).unwrap());
            }
        }
        // Another architecture or other hyper-parameters: refused, naming what differs.
        let other = SdchParams { hidden: vec![12], ..small() };
        let e = format!("{:#}", other.fit(&data, &ctx(&d.path().join("stop1"), true)).err().unwrap());
        assert!(e.contains("another architecture") && e.contains("arch.hidden"), "{e}");
        let e = format!("{:#}", small().fit(&data, &FitContext { bits: 16, ..ctx(&d.path().join("stop1"), true) }).err().unwrap());
        assert!(e.contains("arch.bits: checkpoint 8 vs now 16"), "{e}");
        // Truncated, corrupt, missing checkpoints: clear errors naming the file.
        let ck = d.path().join("stop2").join(crate::deep::trainer::CHECKPOINT_FILE);
        let bytes = std::fs::read(&ck).unwrap();
        std::fs::write(&ck, &bytes[..bytes.len() / 2]).unwrap();
        let e = format!("{:#}", p.fit(&data, &ctx(&d.path().join("stop2"), true)).err().unwrap());
        assert!(e.contains("checkpoint.safetensors") && e.contains("truncated or corrupt"), "{e}");
        std::fs::write(&ck, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}        ").unwrap();
        let e = format!("{:#}", p.fit(&data, &ctx(&d.path().join("stop2"), true)).err().unwrap());
        assert!(e.contains("checkpoint.safetensors"), "{e}");
        let e = format!("{:#}", p.fit(&data, &ctx(&d.path().join("none"), true)).err().unwrap());
        assert!(e.contains("nothing to resume"), "{e}");
        // A checkpoint written by another method.
        let (tensors, mut meta) = read_safetensors(&d.path().join("stop1").join(crate::deep::trainer::CHECKPOINT_FILE)).unwrap();
        let json = meta["cmh"].replace("\"method\":\"sdch\"", "\"method\":\"agnet\"");
        assert_ne!(json, meta["cmh"]);
        meta.insert("cmh".into(), json);
        write_safetensors(&ck, &tensors, meta).unwrap();
        let e = format!("{:#}", p.fit(&data, &ctx(&d.path().join("stop2"), true)).err().unwrap());
        assert!(e.contains("written by method agnet"), "{e}");
    }

    #[test]
    fn bad_settings_are_refused() {
        let data = toy(12, 5);
        let ctx = FitContext::new(8, 0);
        for (p, msg) in [
            (SdchParams { batch_size: 1, ..small() }, "batch_size must be at least 2"),
            (SdchParams { lr_hash: -1.0, ..small() }, "sdch.lr_hash"),
            (SdchParams { dropout: 1.0, ..small() }, "dropout"),
            (SdchParams { pretrained: Some("w.pth".into()), ..small() }, "holds feature vectors"),
        ] {
            let e = format!("{:#}", p.fit(&data, &ctx).err().unwrap());
            assert!(e.contains(msg), "{e}");
        }
        let e =
            format!("{:#}", small().fit(&data, &FitContext { device: crate::method::DeviceChoice::Cuda, ..ctx.clone() }).err().unwrap());
        if !crate::deep::trainer::cuda_available() {
            assert!(e.contains("CUDA is not available"), "{e}");
        }
        let toml_err = toml::from_str::<SdchParams>("epochs = 3\nbogus = 1").unwrap_err().to_string();
        assert!(toml_err.contains("bogus"), "{toml_err}");
        let p: SdchParams = toml::from_str("epochs = 3\nbeta2 = 0.5").unwrap();
        assert_eq!((p.epochs, p.beta2, p.gamma, p.batch_size), (3, 0.5, 0.01, 64));
    }

    /// Image mode: AlexNet on 64×64 images with "pretrained" weights; with a learning-rate factor
    /// of 0 the pretrained layers stay put while the new k-d layer (classifier.6) learns.
    #[test]
    fn image_mode_with_pretrained_layers() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let n = 6;
        let images = ndarray::Array4::from_shape_simple_fn((n, 64, 64, 3), || rng.gen::<u8>());
        let cls: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let text = Array2::from_shape_fn((n, 4), |(i, j)| if j == cls[i] { 1.0f32 } else { 0.0 });
        let data = TrainSet::supervised(
            vec![View::Images(images), View::Features(text)],
            crate::bundle::one_hot(&cls, 2),
            vec!["a".into(), "b".into()],
        );
        let d = tempfile::tempdir().unwrap();
        let w = d.path().join("alexnet.safetensors");
        {
            let _lock = crate::deep::test_support::torch_rng_lock(); // not while training below
            let vs = nn::VarStore::new(Device::Cpu);
            let _a = AlexNet::new(&vs.root(), 1000);
            write_safetensors(&w, &vs.variables().into_iter().collect::<Vec<_>>(), Default::default()).unwrap();
        }
        let p = SdchParams {
            epochs: 1,
            batch_size: 3,
            feature_dim: 8,
            hidden: vec![8],
            image_size: 64,
            pretrained: Some(w.clone()),
            pretrained_lr_factor: 0.0,
            warmup_schedule: false,
            ..Default::default()
        };
        let model = p.fit(&data, &FitContext::new(4, 0)).unwrap();
        let codes = model.encode(IMAGE, &data.views[IMAGE]).unwrap();
        assert_eq!((codes.len(), codes.bits()), (n, 4));
        let (src, _) = read_safetensors(&w).unwrap();
        let src: std::collections::HashMap<String, Tensor> = src.into_iter().collect();
        let net = model.net.lock().unwrap();
        let vars = net.vs.variables();
        assert!(vars["img.features.0.weight"].equal(&src["features.0.weight"]), "pretrained layer frozen by factor 0");
        assert!(vars["img.classifier.4.bias"].equal(&src["classifier.4.bias"]));
        assert_eq!(vars["img.classifier.6.weight"].size(), [8, 4096]);
        drop(net);
        let e = model.encode(IMAGE, &data.views[TEXT]).unwrap_err().to_string();
        assert!(e.contains("AlexNet, which reads images"), "{e}");
    }
}
