//! The one trait every hashing method implements (in the style of linfa's `Fit` / scikit-learn's
//! estimators): hyper-parameters are a plain struct checked before fitting (`check`, linfa's
//! `ParamGuard`), fitting returns a separate fitted-model type, and methods know nothing about
//! files, bundles or the CLI beyond saving their own learned state into a folder.

use crate::codes::BinaryCodes;
use crate::mapped::MappedRows;
use anyhow::{bail, Context, Result};
use ndarray::{Array2, Array4, ArrayView2};
use std::path::{Path, PathBuf};

/// The largest code length any method trains (see [`Fit::fit`]): far beyond what cross-modal
/// hashing uses (16–128 bits), small enough that bits × bits matrices stay small (128 MiB in f64).
pub const MAX_BITS: usize = 4096;

/// Index of the image modality in every [`TrainSet`] and bundle.
pub const IMAGE: usize = 0;
/// Index of the text modality.
pub const TEXT: usize = 1;

/// One modality's input for a set of items.
#[derive(Clone, Debug)]
pub enum View {
    /// Feature vectors, one row per item (SIFT BoVW, LDA topics, bag of words, fc7 …).
    Features(Array2<f32>),
    /// Raw RGB images, N × H × W × 3, uint8.
    Images(Array4<u8>),
    /// Rows of a memory-mapped feature matrix or image stack, read when used (the deep methods
    /// stream their mini-batches from it; see `crate::mapped`).
    Mapped(MappedRows),
}

impl View {
    pub fn len(&self) -> usize {
        match self {
            View::Features(x) => x.nrows(),
            View::Images(x) => x.shape()[0],
            View::Mapped(x) => x.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The feature matrix, or an error saying that `method` needs features for `modality`.
    pub fn features(&self, method: &str, modality: usize) -> Result<&Array2<f32>> {
        match self {
            View::Features(x) => Ok(x),
            View::Images(_) => bail!(
                "{method} needs feature vectors for modality {modality}, but the data holds raw images; \
                 extract features first (`cmh features`) or use a deep method"
            ),
            View::Mapped(x) => bail!(
                "{method} needs the features of modality {modality} in memory, but {} is memory-mapped; \
                 load the bundle without memory-mapping (only the deep methods stream from mapped files)",
                x.array().path().display()
            ),
        }
    }
    /// Rows `idx` of this view.
    pub fn select(&self, idx: &[usize]) -> View {
        match self {
            View::Features(x) => View::Features(x.select(ndarray::Axis(0), idx)),
            View::Images(x) => View::Images(x.select(ndarray::Axis(0), idx)),
            View::Mapped(x) => View::Mapped(x.select(idx)),
        }
    }
    /// Rows `idx` as feature vectors (copied; read from the file for a mapped view).
    pub(crate) fn feature_rows(&self, method: &str, modality: usize, idx: &[usize]) -> Result<Array2<f32>> {
        match self {
            View::Mapped(x) if !x.is_images() => x.features(idx),
            _ => Ok(self.features(method, modality)?.select(ndarray::Axis(0), idx)),
        }
    }
}

/// The training items of one split, paired across modalities (row i of every view is item i).
///
/// Labels live in one global class space of `class_names.len()` classes. When the label spaces
/// differ per modality, modality m's labels are non-zero only on `modality_classes[m]`. A row whose
/// label is hidden (semi-supervised protocol) has `labelled[m][i] == false` and an all-zero label row.
#[derive(Clone, Debug)]
pub struct TrainSet {
    pub views: Vec<View>,
    pub labels: Vec<Array2<u8>>,
    pub labelled: Vec<Vec<bool>>,
    pub class_names: Vec<String>,
    /// Per modality, the classes whose labels training may see.
    pub modality_classes: Vec<Vec<usize>>,
    /// Class embeddings (C × E), when the bundle has them.
    pub class_embeddings: Option<Array2<f32>>,
}

impl TrainSet {
    pub fn len(&self) -> usize {
        self.views.first().map_or(0, |v| v.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn n_modalities(&self) -> usize {
        self.views.len()
    }
    pub fn n_classes(&self) -> usize {
        self.class_names.len()
    }
    /// Whether some class of the bundle is outside a modality's training classes (the zero-shot
    /// protocols), i.e. retrieval will meet classes the fit never saw.
    pub fn has_unseen_classes(&self) -> bool {
        self.modality_classes.iter().any(|c| c.len() < self.n_classes())
    }

    /// A fully labelled training set with the same labels in every modality.
    pub fn supervised(views: Vec<View>, labels: Array2<u8>, class_names: Vec<String>) -> Self {
        let m = views.len();
        let n = labels.nrows();
        let c = labels.ncols();
        Self {
            views,
            labels: vec![labels; m],
            labelled: vec![vec![true; n]; m],
            class_names,
            modality_classes: vec![(0..c).collect(); m],
            class_embeddings: None,
        }
    }

    /// Rows labelled in every modality, with the union of their modality labels: what a method
    /// that needs one label matrix trains on.
    pub(crate) fn common_labelled(&self) -> (Vec<usize>, Array2<f64>) {
        let rows: Vec<usize> = (0..self.len()).filter(|&i| self.labelled.iter().all(|l| l[i])).collect();
        let mut y = Array2::<f64>::zeros((rows.len(), self.n_classes()));
        for (r, &i) in rows.iter().enumerate() {
            for l in &self.labels {
                for (c, &v) in l.row(i).iter().enumerate() {
                    if v != 0 {
                        y[[r, c]] = 1.0;
                    }
                }
            }
        }
        (rows, y)
    }

    /// Checks the shapes agree (rows of every view and label matrix).
    pub fn validate(&self) -> Result<()> {
        let n = self.len();
        if n == 0 {
            bail!("the training set is empty");
        }
        if self.labels.len() != self.views.len() || self.labelled.len() != self.views.len() {
            bail!("training set: one label matrix and one labelled mask per modality are needed");
        }
        for (m, v) in self.views.iter().enumerate() {
            if v.len() != n {
                bail!("training set: modality {m} has {} rows, modality 0 has {n}", v.len());
            }
            if self.labels[m].dim() != (n, self.n_classes()) {
                bail!("training set: labels of modality {m} are {:?}, expected ({n}, {})", self.labels[m].dim(), self.n_classes());
            }
        }
        Ok(())
    }

    /// Class embeddings, or an error naming the method that needs them.
    pub(crate) fn require_class_embeddings(&self, method: &str) -> Result<&Array2<f32>> {
        self.class_embeddings.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "{method} needs class embeddings, but the bundle has none; add them with \
                 `cmh data embed-classes BUNDLE --minilm` (or --glove FILE)"
            )
        })
    }
}

/// Where a deep method runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// Everything about a fit that is not a hyper-parameter.
#[derive(Clone, Debug)]
pub struct FitContext {
    pub bits: usize,
    pub seed: u64,
    pub device: DeviceChoice,
    /// Where a resumable method keeps its per-epoch checkpoints; `None` = no checkpoints.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from the checkpoint in `checkpoint_dir`.
    pub resume: bool,
    /// Show progress bars.
    pub progress: bool,
}

impl FitContext {
    pub fn new(bits: usize, seed: u64) -> Self {
        Self { bits, seed, device: DeviceChoice::Auto, checkpoint_dir: None, resume: false, progress: false }
    }
}

/// A fitted hashing model.
pub trait HashModel: Send + Sync {
    /// The method's CLI name (`sch`, `segh`, `cca-itq`, `sdch`, `czhash`, `agnet`).
    fn method(&self) -> &'static str;
    fn bits(&self) -> usize;
    /// Hash codes of items of `modality` (0 = image, 1 = text).
    fn encode(&self, modality: usize, view: &View) -> Result<BinaryCodes>;
    /// The unified codes B learned for the training items (row i = training item i), when the
    /// method learns them. Papers evaluate with B as the database when database = training set.
    fn train_codes(&self) -> Option<&BinaryCodes> {
        None
    }
    /// Per-iteration objective values (or per-epoch losses), for the run log.
    fn history(&self) -> &[f64] {
        &[]
    }
    /// Writes the learned state into `dir` (`model.json` + `.npy` matrices that Python can use).
    fn save(&self, dir: &Path) -> Result<()>;
}

/// A model folder as [`HashModel::save`] writes it: the folder is created first, the `.npy`
/// matrices go in one by one (each written atomically), and `model.json`, the file model loading
/// reads first, is written last.
pub(crate) struct ModelDir<'a> {
    dir: &'a Path,
}

impl<'a> ModelDir<'a> {
    /// Creates `dir` (and its parents) for a model.
    pub(crate) fn create(dir: &'a Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        Ok(Self { dir })
    }

    /// Writes `NAME.npy`.
    pub(crate) fn npy<T: crate::npy::NpyElem, D: ndarray::Dimension>(&self, name: &str, a: &ndarray::Array<T, D>) -> Result<()> {
        crate::npy::write_npy(&self.dir.join(format!("{name}.npy")), a)
    }

    /// Writes the objective history as `history.npy`.
    pub(crate) fn history(&self, history: &[f64]) -> Result<()> {
        self.npy("history", &ndarray::Array1::from(history.to_vec()))
    }

    /// Writes `model.json` (pretty-printed), completing the folder.
    pub(crate) fn finish<T: serde::Serialize>(self, model: &T) -> Result<()> {
        crate::report::write_json(&self.dir.join("model.json"), model)
    }
}

/// A method's hyper-parameters: checked, then fitted.
///
/// Fit, encode, search and evaluate (`examples/train_sch_and_search.rs` does the same on a bundle):
///
/// ```
/// use cmh::method::{Fit, FitContext, HashModel, TrainSet, View, IMAGE, TEXT};
/// use cmh::metrics::{evaluate, EvalOptions};
/// use cmh::shallow::sch::SchParams;
/// use ndarray::Array2;
///
/// // 60 items of 3 classes; both modalities' features carry the class, plus noise.
/// let class: Vec<usize> = (0..60).map(|i| i % 3).collect();
/// let features = |d: usize| {
///     Array2::from_shape_fn((60, d), |(i, j)| (class[i] == j % 3) as u8 as f32 + 0.1 * ((i * 7 + j * 3) % 5) as f32)
/// };
/// let labels = cmh::bundle::one_hot(&class, 3);
/// let views = vec![View::Features(features(6)), View::Features(features(4))];
/// let train = TrainSet::supervised(views, labels.clone(), vec!["a".into(), "b".into(), "c".into()]);
///
/// let model = SchParams { anchors: 30, ..Default::default() }.fit(&train, &FitContext::new(16, 0))?;
/// let text_codes = model.encode(TEXT, &train.views[TEXT])?;
/// let image_codes = model.encode(IMAGE, &train.views[IMAGE])?;
///
/// // The 5 nearest images of every text, ranked by (Hamming distance, index).
/// let nearest = cmh::search::topk(text_codes.view(), image_codes.view(), 5)?;
/// assert_eq!(nearest.indices.dim(), (60, 5));
/// let m = evaluate(text_codes.view(), image_codes.view(), labels.view(), labels.view(), &EvalOptions::default())?;
/// assert!(m.map > 0.9, "text queries find the images of their class: mAP {}", m.map);
/// # Ok::<(), anyhow::Error>(())
/// ```
pub trait Fit {
    type Model: HashModel + 'static;
    /// Refuses bad hyper-parameters or data the method cannot use, with a clear message.
    fn check(&self, data: &TrainSet, bits: usize) -> Result<()>;
    /// Fits after `check`; `ctx.bits` is the code length.
    fn fit_checked(&self, data: &TrainSet, ctx: &FitContext) -> Result<Self::Model>;
    fn fit(&self, data: &TrainSet, ctx: &FitContext) -> Result<Self::Model> {
        data.validate()?;
        if ctx.bits == 0 {
            bail!("bits must be at least 1");
        }
        if ctx.bits > MAX_BITS {
            bail!("bits = {}: code lengths above {MAX_BITS} bits are not supported; use at most {MAX_BITS}", ctx.bits);
        }
        self.check(data, ctx.bits)?;
        self.fit_checked(data, ctx)
    }
}

/// Memory the machine can give a fit: `MemAvailable` plus free swap from `/proc/meminfo`
/// (`None` where that cannot be read).
pub(crate) fn available_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok()
    };
    Some((kib("MemAvailable:")? + kib("SwapFree:").unwrap_or(0.0)) * 1024.0)
}

/// Helper for `check`: refuses a fit whose estimated working memory (`bytes`, the largest arrays
/// the method allocates, described by `what`) exceeds the memory available, before anything is
/// allocated.
pub(crate) fn ensure_memory(method: &str, bits: usize, bytes: f64, what: &str) -> Result<()> {
    match available_memory() {
        Some(avail) => ensure_memory_within(method, bits, bytes, what, avail),
        None => Ok(()),
    }
}

/// `ensure_memory` against a given amount of available memory.
pub fn ensure_memory_within(method: &str, bits: usize, bytes: f64, what: &str, available: f64) -> Result<()> {
    if bytes > available {
        let gib = |b: f64| b / (1u64 << 30) as f64;
        bail!(
            "{method} at {bits} bits needs about {:.1} GiB of memory ({what}), but {:.1} GiB are available; use fewer bits, \
             fewer anchors or fewer training items",
            gib(bytes),
            gib(available)
        );
    }
    Ok(())
}

/// Helper for `check`: a hyper-parameter that must be positive / non-negative.
pub(crate) fn ensure_nonneg(name: &str, v: f64) -> Result<()> {
    if !v.is_finite() || v < 0.0 {
        bail!("hyper-parameter {name} must be a finite number >= 0, found {v}");
    }
    Ok(())
}
pub(crate) fn ensure_pos(name: &str, v: f64) -> Result<()> {
    if !v.is_finite() || v <= 0.0 {
        bail!("hyper-parameter {name} must be a finite number > 0, found {v}");
    }
    Ok(())
}

/// A probability-like hyper-parameter (dropout): in [0, 1).
pub(crate) fn ensure_fraction(name: &str, v: f64) -> Result<()> {
    if !(0.0..1.0).contains(&v) {
        bail!("hyper-parameter {name} must be in [0, 1), found {v}");
    }
    Ok(())
}

/// f32 features as an f64 matrix (the shallow methods compute in f64).
pub(crate) fn to_f64(x: ArrayView2<f32>) -> Array2<f64> {
    x.mapv(|v| v as f64)
}
