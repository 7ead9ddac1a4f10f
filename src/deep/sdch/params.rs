//! SDCH hyper-parameters: the defaults, the paper's settings and the search space.

use super::*;

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

crate::params::impl_method_params!(SdchParams, SEARCH_SPACE, ["paper" => SdchParams::paper()]);
