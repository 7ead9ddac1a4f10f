//! Helpers shared by the zero-shot methods (CZHash, AgNet) on top of the deep trainer
//! ([`super::trainer`]: device, seeds, progress, checkpointed optimiser, atomic checkpoints,
//! resume) and the feature MLP ([`super::mlp`]): the training set as tensors with its class
//! attribute matrices, input standardisation, ridge least squares against the attributes, and the
//! fitted networks as plain matrices.
//!
//! Fitted models keep their weights as ndarray matrices (a `tch::Tensor` is not `Sync`) and encode
//! with a plain ndarray forward pass that mirrors what a Python user does with the exported `.npy`
//! files; a test checks it against the tch forward pass.

use super::tensors::{array_to_tensor, tensor_to_array};
use super::trainer::{Checkpoint, Optimizer, RunControl, Trainer};
use crate::method::{FitContext, TrainSet, View};
use crate::npy::{read_npy, write_npy, NpyData};
use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

pub use crate::numerics::Standardizer;

/// The input options of CZHash and AgNet ([`InputMap`]): `rbf_anchors`, `input_clip`,
/// `input_power`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InputSpec {
    /// c > 0: centred RBF features of c training anchors; 0 = the features themselves.
    pub rbf_anchors: usize,
    /// c > 0: standardised values clipped to [−c, c]; 0 = no clipping.
    pub clip: f64,
    /// p: each raw feature value v becomes sign(v)·|v|ᵖ before anything else; 1 = unchanged.
    pub power: f64,
}

impl Default for InputSpec {
    fn default() -> Self {
        Self { rbf_anchors: 0, clip: 0.0, power: 1.0 }
    }
}

/// How a modality's raw features become its network's input (`input_power`, `rbf_anchors` and
/// `input_clip` of CZHash and AgNet): optionally the signed power sign(v)·|v|ᵖ of every value (power
/// normalisation: p = ½ on non-negative histograms is the Hellinger map, Perronnin, Sánchez,
/// Mensink, ECCV 2010, §3.1), optionally the centred RBF-anchor features the shallow methods use
/// (SCH, CCA-ITQ: φ(x) = exp(−‖x − aⱼ‖² / 2σ²) − φ̄, c anchors aⱼ drawn from the training rows,
/// σ = mean training-row-to-anchor distance, φ̄ the training mean;
/// [`crate::numerics::rbf::RbfMap`]), then per-dimension standardisation ([`Standardizer`])
/// fitted on the training rows, optionally clipped.
#[derive(Clone, Debug)]
pub struct InputMap {
    pub rbf: Option<crate::numerics::rbf::RbfMap>,
    pub std: Standardizer,
    /// c > 0: standardised values are clipped to [−c, c] (the `input_clip` of CZHash and AgNet);
    /// 0 = no clipping.
    pub clip: f32,
    /// The signed power p applied to the raw features first (the `input_power`; 1 = none).
    pub power: f32,
}

/// sign(v)·|v|ᵖ of every value (`x` itself when p = 1).
fn signed_power<'a>(x: ArrayView2<'a, f32>, p: f32) -> ndarray::CowArray<'a, f32, ndarray::Ix2> {
    if p == 1.0 {
        x.into()
    } else {
        x.mapv(|v| v.signum() * v.abs().powf(p)).into()
    }
}

impl InputMap {
    /// Fits the map on the training features `x` (`spec.rbf_anchors` = 0: no RBF map; otherwise
    /// min(anchors, rows) RBF anchors drawn with `seed`); returns it with the mapped training rows.
    pub fn fit(x: ArrayView2<f32>, spec: &InputSpec, seed: u64) -> Result<(Self, Array2<f32>)> {
        let x = signed_power(x, spec.power as f32);
        let (rbf, z) = if spec.rbf_anchors == 0 {
            (None, x.to_owned())
        } else {
            let mut rng = crate::numerics::random::seeded_rng(seed, 0x5A5A);
            let (map, phi) = crate::numerics::rbf::RbfMap::fit(x.view(), spec.rbf_anchors.min(x.nrows()), 1.0, &mut rng)?;
            (Some(map), phi.mapv(|v| v as f32))
        };
        let std = Standardizer::fit(z.view());
        let map = Self { rbf, std, clip: spec.clip as f32, power: spec.power as f32 };
        let out = map.clipped(map.std.apply(z.view()));
        Ok((map, out))
    }

    fn clipped(&self, z: Array2<f32>) -> Array2<f32> {
        if self.clip > 0.0 {
            z.mapv(|v| v.clamp(-self.clip, self.clip))
        } else {
            z
        }
    }

    /// [`InputMap::fit`] on memory-mapped rows without holding them: the same anchors (same random
    /// draws), σ, centring mean and standardisation, accumulated over blocks of rows (equal to
    /// `fit`'s up to the order of floating-point sums).
    pub fn fit_mapped(x: &crate::mapped::MappedRows, spec: &InputSpec, seed: u64) -> Result<Self> {
        let n = x.len();
        let (anchors, power) = (spec.rbf_anchors, spec.power as f32);
        if anchors > 0 && power != 1.0 {
            bail!("input_power = {power} with rbf_anchors = {anchors} needs the features in memory; memory-mapped features take input_power = 1 with RBF anchors");
        }
        let rbf = if anchors == 0 {
            None
        } else {
            let mut rng = crate::numerics::random::seeded_rng(seed, 0x5A5A);
            let rows = x.all_file_rows();
            let map = crate::numerics::rbf::RbfMap::fit_streamed(x.array().features_view()?, Some(&rows), anchors.min(n), 1.0, &mut rng)?;
            x.array().release();
            Some(map)
        };
        // Mapped features were checked finite when the bundle was mapped (`Bundle::load_mapped`).
        let block = |idx: Vec<usize>| -> Result<Array2<f64>> {
            let f = x.features(&idx)?;
            let f = signed_power(f.view(), power);
            Ok(match &rbf {
                None => f.mapv(f64::from),
                Some(m) => m.features_of(f.view()).mapv(|v| v as f32 as f64),
            })
        };
        let d = rbf.as_ref().map_or(x.array().row_len(), |m| m.n_anchors());
        let (mut sum, mut sq) = (ndarray::Array1::<f64>::zeros(d), ndarray::Array1::<f64>::zeros(d));
        for idx in row_blocks(n) {
            sum += &block(idx)?.sum_axis(Axis(0));
        }
        let mean = sum / n.max(1) as f64;
        for idx in row_blocks(n) {
            sq += &(block(idx)? - &mean).mapv(|v| v * v).sum_axis(Axis(0));
        }
        let std = Standardizer::from_moments(&mean, &(sq / n.max(1) as f64));
        Ok(Self { rbf, std, clip: spec.clip as f32, power })
    }

    /// The network input of new rows.
    pub fn apply(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let x = signed_power(x, self.power);
        let z = match &self.rbf {
            None => self.std.apply(x.view()),
            Some(m) => self.std.apply(m.transform(x.view())?.mapv(|v| v as f32).view()),
        };
        Ok(self.clipped(z))
    }

    /// The raw feature dimension the map takes.
    pub fn raw_dim(&self) -> usize {
        self.rbf.as_ref().map(|m| m.dim()).unwrap_or(self.std.dim())
    }

    /// The network input dimension.
    pub fn dim(&self) -> usize {
        self.std.dim()
    }

    /// σ of the RBF map (None without one), for model.json.
    pub fn sigma(&self) -> Option<f64> {
        self.rbf.as_ref().map(|m| m.sigma)
    }

    /// Writes `{name}_mean.npy`, `{name}_std.npy` and, with an RBF map, `{name}_anchors.npy` and
    /// `{name}_phi_mean.npy` (σ goes into model.json).
    pub fn save(&self, dir: &Path, name: &str) -> Result<()> {
        write_npy(&dir.join(format!("{name}_mean.npy")), &self.std.mean)?;
        write_npy(&dir.join(format!("{name}_std.npy")), &self.std.std)?;
        if let Some(m) = &self.rbf {
            m.save(dir, name)?;
        }
        Ok(())
    }

    /// Reads what [`InputMap::save`] wrote; `sigma` = Some(σ) when the model has an RBF map.
    /// `dim` is the network's input dimension the standardisation must match.
    /// `clip` and `power` are the model's `input_clip` and `input_power` hyper-parameters.
    pub fn load(dir: &Path, name: &str, sigma: Option<f64>, dim: usize, clip: f64, power: f64) -> Result<Self> {
        let mean: Array1<f32> = read_f32(&dir.join(format!("{name}_mean.npy")), 1)?.into_dimensionality()?;
        let std: Array1<f32> = read_f32(&dir.join(format!("{name}_std.npy")), 1)?.into_dimensionality()?;
        if mean.len() != dim || std.len() != dim {
            bail!("{}/{name}_mean.npy and {name}_std.npy must have {dim} entries (the network's inputs)", dir.display());
        }
        let rbf = match sigma {
            None => None,
            Some(s) => {
                let m = crate::numerics::rbf::RbfMap::load(dir, name, s)?;
                if m.n_anchors() != dim {
                    bail!("{}/{name}_anchors.npy has {} anchors, but the network takes {dim} inputs", dir.display(), m.n_anchors());
                }
                Some(m)
            }
        };
        Ok(Self { rbf, std: Standardizer { mean, std }, clip: clip as f32, power: power as f32 })
    }
}

/// The network input of `modality`'s items under a fitted model's input maps (one per modality):
/// refuses a modality other than 0 / 1 and features of the wrong width.
pub fn network_input(method: &str, inputs: &[InputMap], modality: usize, view: &View) -> Result<Array2<f32>> {
    if modality > 1 {
        bail!("{method}: modality {modality} does not exist (0 = image, 1 = text)");
    }
    let read;
    let x = match view {
        View::Mapped(m) if !m.is_images() => {
            read = m.features(&(0..m.len()).collect::<Vec<_>>())?;
            &read
        }
        _ => view.features(method, modality)?,
    };
    let s = &inputs[modality];
    if x.ncols() != s.raw_dim() {
        bail!("{method}: {} items have {} features, the model was trained on {}", MODALITY_NAMES[modality], x.ncols(), s.raw_dim());
    }
    s.apply(x.view())
}

/// The per-modality RBF σ of a model.json (`rbf_sigma`, written by the zero-shot models' save):
/// two σ when the model was fitted with `rbf_anchors` > 0, none otherwise (a model written before
/// the field existed reads as none).
pub fn rbf_sigmas(dir: &Path, v: &serde_json::Value, rbf_anchors: usize) -> Result<Vec<Option<f64>>> {
    let sigmas: Vec<Option<f64>> = serde_json::from_value(v["rbf_sigma"].clone()).unwrap_or_else(|_| vec![None, None]);
    if sigmas.len() != 2 || sigmas.iter().any(|s| s.is_some() != (rbf_anchors > 0)) {
        bail!("{}: field rbf_sigma must give two σ when rbf_anchors > 0, none otherwise", dir.join("model.json").display());
    }
    Ok(sigmas)
}

/// An MLP's weights as plain matrices: layer k maps `h ↦ h Wₖᵀ + bₖ` (torch's Linear layout,
/// `W` is out × in), ReLU between layers.
#[derive(Clone, Debug, PartialEq)]
pub struct MlpWeights {
    pub layers: Vec<(Array2<f32>, Array1<f32>)>,
}

impl MlpWeights {
    /// Copies the weights of the [`super::mlp::Mlp`] named `name` at the root of `vs` (layers
    /// `{name}-fc1`, `{name}-fc2`, …).
    pub fn from_var_store(vs: &nn::VarStore, name: &str, n_layers: usize) -> Result<Self> {
        let vars = vs.variables();
        let mut layers = Vec::new();
        for k in 0..n_layers {
            let get = |what: &str| {
                let name = format!("{name}-fc{}.{what}", k + 1);
                vars.get(&name).ok_or_else(|| anyhow!("internal: variable {name} missing"))
            };
            let w = tensor_to_array(&get("weight")?.detach())?;
            let b = get("bias")?.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
            let b = Array1::from(Vec::<f32>::try_from(&b).map_err(|e| anyhow!("internal: {e}"))?);
            layers.push((w, b));
        }
        Ok(Self { layers })
    }

    /// Plain forward pass (evaluation mode: no dropout).
    pub fn forward(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let last = self.layers.len() - 1;
        let mut h = x.to_owned();
        for (k, (w, b)) in self.layers.iter().enumerate() {
            h = h.dot(&w.t()) + b;
            if k < last {
                h.mapv_inplace(|v| v.max(0.0));
            }
        }
        h
    }

    pub fn in_dim(&self) -> usize {
        self.layers[0].0.ncols()
    }

    /// Writes `{stem}_l{k}_weight.npy` (out × in) and `{stem}_l{k}_bias.npy`.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<()> {
        for (k, (w, b)) in self.layers.iter().enumerate() {
            write_npy(&dir.join(format!("{stem}_l{k}_weight.npy")), w)?;
            write_npy(&dir.join(format!("{stem}_l{k}_bias.npy")), b)?;
        }
        Ok(())
    }

    /// Reads the layers written by [`MlpWeights::save`] and checks that they chain.
    pub fn load(dir: &Path, stem: &str, n_layers: usize) -> Result<Self> {
        let mut layers = Vec::new();
        for k in 0..n_layers {
            let wp = dir.join(format!("{stem}_l{k}_weight.npy"));
            let bp = dir.join(format!("{stem}_l{k}_bias.npy"));
            let w = read_f32(&wp, 2)?.into_dimensionality::<ndarray::Ix2>()?;
            let b = read_f32(&bp, 1)?.into_dimensionality::<ndarray::Ix1>()?;
            if b.len() != w.nrows() {
                bail!("{}: {} entries, expected {} (rows of {})", bp.display(), b.len(), w.nrows(), wp.display());
            }
            if let Some((pw, _)) = layers.last() {
                let pw: &Array2<f32> = pw;
                if w.ncols() != pw.nrows() {
                    bail!("{}: takes {} inputs, but the previous layer gives {}", wp.display(), w.ncols(), pw.nrows());
                }
            }
            layers.push((w, b));
        }
        Ok(Self { layers })
    }
}

/// A float array of `ndim` dimensions from `.npy`, refusing non-finite values.
pub fn read_f32(path: &Path, ndim: usize) -> Result<ndarray::ArrayD<f32>> {
    let a = match read_npy(path)? {
        NpyData::F32(a) => a.mapv(|v| v as f64),
        NpyData::F64(a) => a,
        other => bail!("{}: expected float32 values, found {}", path.display(), other.dtype_name()),
    };
    if a.ndim() != ndim {
        bail!("{}: expected a {ndim}-d array, found shape {:?}", path.display(), a.shape());
    }
    if a.iter().any(|v| !v.is_finite()) {
        bail!("{}: values must be finite", path.display());
    }
    Ok(a.mapv(|v| v as f32))
}

/// Index tensor for rows `idx`.
pub fn index_tensor(idx: &[usize], device: Device) -> Tensor {
    let v: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    Tensor::from_slice(&v).to_device(device)
}

/// Rows of `a` scaled to unit L2 norm (zero rows stay zero).
pub fn l2_normalise_rows(a: &Array2<f32>) -> Array2<f32> {
    let mut out = a.clone();
    for mut r in out.outer_iter_mut() {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            r.mapv_inplace(|v| v / n);
        }
    }
    out
}

/// `P = Aᵀ (A Aᵀ + λI)⁻¹` (e × K): the regularised least-squares map from a point f in attribute
/// space to its category representation c = argmin ‖f − cA‖² + λ‖c‖² = f P.
pub fn ridge_projector(a: &Array2<f32>, lambda: f64) -> Result<Array2<f32>> {
    use ndarray_linalg::Solve;
    let a64 = a.mapv(|v| v as f64);
    let k = a64.nrows();
    let mut g = a64.dot(&a64.t());
    for i in 0..k {
        g[[i, i]] += lambda;
    }
    // Solve G X = A for X (K × e); P = Xᵀ (G is symmetric).
    let mut x = Array2::<f64>::zeros((k, a64.ncols()));
    for j in 0..a64.ncols() {
        let col = g.solve(&a64.column(j).to_owned()).map_err(|e| anyhow!("least-squares against the class attributes failed: {e}"))?;
        x.column_mut(j).assign(&col);
    }
    Ok(x.t().mapv(|v| v as f32))
}

/// An orthonormal basis V (e × d) of the row space of `a` (K × e, d = its numerical rank ≤ K):
/// a ↦ aV is an isometry on that span, so inner products, cosines and distances between the
/// class attribute vectors (and any point of their span) are unchanged, while the attribute space
/// shrinks from e coordinates (384 for MiniLM) to d ≤ K. The networks of CZHash and AgNet are only
/// ever pulled towards points of that span (class attributes and their combinations: eq. 7's
/// CA, AgNet's targets), and CZHash's new-item step c = fAᵀ(AAᵀ + λI)⁻¹ ignores everything
/// outside it, so the e − d other output coordinates only carry initialisation noise.
pub fn span_basis(a: &Array2<f32>) -> Result<Array2<f32>> {
    use ndarray_linalg::SVD;
    let a64 = a.mapv(|v| v as f64);
    let (_, sv, vt) = a64.svd(false, true).map_err(|e| anyhow!("SVD of the class attributes failed: {e}"))?;
    let vt = vt.ok_or_else(|| anyhow!("internal: SVD without V"))?;
    let top = sv.iter().cloned().fold(0.0f64, f64::max);
    let d = sv.iter().filter(|&&s| s > 1e-6 * top.max(1e-300)).count();
    if d == 0 {
        bail!("the class attributes are all zero");
    }
    Ok(vt.slice(ndarray::s![..d, ..]).t().mapv(|v| v as f32))
}

/// A training set made ready for a zero-shot method: standardised feature tensors, labels and
/// masks as tensors, the class attribute matrix of each modality's classes.
pub struct Prepared {
    /// Training-set rows used (all of them, or the labelled ones for an ablation).
    pub rows: Vec<usize>,
    pub inputs: Vec<InputMap>,
    /// Network inputs (standardised features or RBF-anchor features), n × d_v; empty for a
    /// modality read from its memory-mapped file batch by batch (`mapped`).
    pub x: Vec<Tensor>,
    /// The training rows of a memory-mapped modality whose inputs are computed per batch.
    pub mapped: Vec<Option<crate::mapped::MappedRows>>,
    /// Labels in the global class space, n × K (float 0/1).
    pub labels: Vec<Tensor>,
    /// 1 where the row's label is visible in that modality, n (float).
    pub labelled: Vec<Tensor>,
    /// The classes each modality's labels may use (global indices).
    pub classes: Vec<Vec<usize>>,
    /// A⁽ᵛ⁾: the L2-normalised class embeddings of `classes[v]`, K_v × e.
    pub attributes: Vec<Array2<f32>>,
    pub device: Device,
}

/// Rows per block when a memory-mapped modality is read in full.
const STREAM_ROWS: usize = 4096;

/// Row positions 0..n in consecutive blocks of at most [`STREAM_ROWS`].
fn row_blocks(n: usize) -> impl Iterator<Item = Vec<usize>> {
    (0..n).step_by(STREAM_ROWS).map(move |s| (s..(s + STREAM_ROWS).min(n)).collect())
}

/// Variable-name prefixes of the two modalities' networks.
pub const MODALITY_NAMES: [&str; 2] = ["image", "text"];

impl Prepared {
    /// One MLP per modality (named "image", "text"), inputs → `hidden` → the attribute space,
    /// followed by `extra_outputs` further outputs (AgNet's free embedding dimensions).
    pub fn attribute_nets(&self, vs: &nn::VarStore, hidden: &[usize], dropout: f64, extra_outputs: usize) -> Vec<super::mlp::Mlp> {
        let hidden: Vec<i64> = hidden.iter().map(|&h| h as i64).collect();
        let e = (self.attr_dim() + extra_outputs) as i64;
        self.dims()
            .into_iter()
            .zip(MODALITY_NAMES)
            .map(|(d, name)| super::mlp::Mlp::new(&vs.root(), name, d as i64, &hidden, e, dropout))
            .collect()
    }
    pub fn n(&self) -> usize {
        self.rows.len()
    }
    /// The network inputs of training rows `idx` of modality `v`.
    pub fn batch_inputs(&self, v: usize, idx: &[usize]) -> Result<Tensor> {
        match &self.mapped[v] {
            None => Ok(self.x[v].index_select(0, &index_tensor(idx, self.device))),
            Some(rows) => mapped_inputs(rows, &self.inputs[v], idx, self.device),
        }
    }
    /// `f` of the network inputs of every training row of modality `v` (mapped modalities in
    /// blocks of rows), rows in order.
    pub fn map_all_inputs(&self, v: usize, f: impl Fn(&Tensor) -> Tensor) -> Result<Tensor> {
        match &self.mapped[v] {
            None => Ok(f(&self.x[v])),
            Some(rows) => map_mapped_inputs(rows, &self.inputs[v], self.device, f),
        }
    }
    pub fn dims(&self) -> Vec<usize> {
        self.inputs.iter().map(|s| s.dim()).collect()
    }
    pub fn attr_dim(&self) -> usize {
        self.attributes[0].ncols()
    }
}

/// Checks what every zero-shot method needs: two modalities of feature vectors, class embeddings
/// with one finite row per class, at least one class and one labelled row per modality.
pub fn check_zero_shot_data(method: &str, data: &TrainSet) -> Result<()> {
    if data.n_modalities() != 2 {
        bail!("{method} needs exactly two modalities (image, text); the training set has {}", data.n_modalities());
    }
    for (m, v) in data.views.iter().enumerate() {
        if matches!(v, View::Images(_)) || matches!(v, View::Mapped(m) if m.is_images()) {
            bail!(
                "{method}: modality {m} holds raw images; {method} trains its networks on feature vectors \
                 (extract fc7 features into a new bundle with `cmh features` first, or run without --images)"
            );
        }
    }
    let emb = data.require_class_embeddings(method)?;
    if emb.nrows() != data.n_classes() {
        bail!("{method}: class embeddings have {} rows, but the data has {} classes", emb.nrows(), data.n_classes());
    }
    if emb.ncols() == 0 {
        bail!("{method}: class embeddings have no columns");
    }
    if emb.iter().any(|v| !v.is_finite()) {
        bail!("{method}: class embeddings hold a non-finite value");
    }
    if data.modality_classes.len() != 2 {
        bail!("{method}: the training set lists classes for {} modalities, expected 2", data.modality_classes.len());
    }
    for m in 0..2 {
        let cls = &data.modality_classes[m];
        if cls.is_empty() {
            bail!("{method}: modality {m} has no training classes");
        }
        if let Some(&c) = cls.iter().find(|&&c| c >= data.n_classes()) {
            bail!("{method}: modality {m} lists class {c}, but there are {} classes", data.n_classes());
        }
        if let Some(&c) = cls.iter().find(|&&c| emb.row(c).iter().all(|&v| v == 0.0)) {
            bail!("{method}: the class embedding of {:?} is all zeros", data.class_names[c]);
        }
        if !data.labelled[m].iter().any(|&b| b) {
            bail!("{method}: no training item has a visible label in modality {m}; a zero-shot method needs some labelled items");
        }
    }
    Ok(())
}

/// Rows labelled in at least one modality (what an ablation without unlabelled items trains on).
pub fn labelled_rows(data: &TrainSet) -> Vec<usize> {
    (0..data.len()).filter(|&i| data.labelled.iter().any(|l| l[i])).collect()
}

/// Tensors of the training rows `rows` on `device` (call after [`check_zero_shot_data`]).
/// `input` says how features become network inputs ([`InputMap`]).
/// Memory-mapped features stay in their file: the map is fitted over blocks of rows
/// ([`InputMap::fit_mapped`]) and the inputs are computed batch by batch
/// ([`Prepared::batch_inputs`], [`Prepared::map_all_inputs`]).
/// `attribute_span` expresses the attributes in [`span_basis`] coordinates.
pub fn prepare(
    data: &TrainSet,
    method: &str,
    rows: Vec<usize>,
    device: Device,
    input: &InputSpec,
    attribute_span: bool,
    seed: u64,
) -> Result<Prepared> {
    let emb = data.require_class_embeddings(method)?;
    let mut inputs = Vec::new();
    let mut x = Vec::new();
    let mut mapped = Vec::new();
    let mut labels = Vec::new();
    let mut labelled = Vec::new();
    for m in 0..2 {
        if let View::Mapped(f) = &data.views[m] {
            if !f.is_images() {
                let sel = f.select(&rows);
                let map = InputMap::fit_mapped(&sel, input, seed ^ m as u64)
                    .with_context(|| format!("{method}: input features of modality {m} ({})", f.array().path().display()))?;
                inputs.push(map);
                x.push(Tensor::zeros([0, inputs[m].dim() as i64], (tch::Kind::Float, device)));
                mapped.push(Some(sel));
                push_labels(data, m, &rows, device, &mut labels, &mut labelled);
                continue;
            }
        }
        let f = match &data.views[m] {
            View::Features(f) => f.select(Axis(0), &rows),
            View::Images(_) | View::Mapped(_) => bail!("{method}: modality {m} holds raw images"),
        };
        let (map, z) =
            InputMap::fit(f.view(), input, seed ^ m as u64).with_context(|| format!("{method}: input features of modality {m}"))?;
        x.push(array_to_tensor(z.view(), device));
        inputs.push(map);
        mapped.push(None);
        push_labels(data, m, &rows, device, &mut labels, &mut labelled);
    }
    let mut attributes: Vec<Array2<f32>> = data.modality_classes.iter().map(|cls| l2_normalise_rows(&emb.select(Axis(0), cls))).collect();
    if attribute_span {
        let mut union: Vec<usize> = data.modality_classes.concat();
        union.sort_unstable();
        union.dedup();
        let basis = span_basis(&l2_normalise_rows(&emb.select(Axis(0), &union)))?;
        attributes = attributes.iter().map(|a| a.dot(&basis)).collect();
    }
    Ok(Prepared { rows, inputs, x, mapped, labels, labelled, classes: data.modality_classes.clone(), attributes, device })
}

/// The `ridge_blend` map of modality `v`: R = argmin ‖XR − T‖² + λn‖R‖² over the n labelled
/// training rows (X their network inputs, T their rows of `targets`, λ = `lambda`), with XᵀX and
/// XᵀT accumulated over blocks of rows, so memory-mapped inputs are never held whole.
pub fn ridge_blend_map(prep: &Prepared, v: usize, targets: &Tensor, lambda: f64) -> Result<Array2<f32>> {
    let mask = crate::deep::tensors::tensor_to_array(&prep.labelled[v].unsqueeze(1))?;
    let rows: Vec<usize> = mask.column(0).iter().enumerate().filter(|(_, &m)| m > 0.0).map(|(i, _)| i).collect();
    if rows.is_empty() {
        bail!("ridge_blend: modality {v} has no labelled training rows");
    }
    let (d, e) = (prep.dims()[v], targets.size()[1] as usize);
    let mut g = Array2::<f64>::zeros((d, d));
    let mut xt = Array2::<f64>::zeros((d, e));
    for block in rows.chunks(STREAM_ROWS) {
        let x = crate::deep::tensors::tensor_to_array(&prep.batch_inputs(v, block)?)?.mapv(f64::from);
        let t = crate::deep::tensors::tensor_to_array(&targets.index_select(0, &index_tensor(block, prep.device)))?.mapv(f64::from);
        crate::numerics::blocked::gram_add(x.view(), &mut g);
        xt += &x.t().dot(&t);
    }
    crate::numerics::blocked::mirror_upper(&mut g);
    let lam = lambda * rows.len() as f64;
    for i in 0..d {
        g[[i, i]] += lam;
    }
    Ok(crate::numerics::linalg::SpdFactor::new(g.view())?.solve(xt.view())?.mapv(|r| r as f32))
}

/// `(1 − w)·z + w·xR` on the first `R.ncols()` columns of the network outputs `z` (the rest, e.g.
/// AgNet's free coordinates, stay the network's): the `ridge_blend` of CZHash and AgNet.
pub fn blend_outputs(mut z: Array2<f32>, x: ArrayView2<f32>, r: &Array2<f32>, w: f32) -> Array2<f32> {
    let d = r.ncols();
    let mixed = &z.slice(ndarray::s![.., ..d]) * (1.0 - w) + x.dot(r) * w;
    z.slice_mut(ndarray::s![.., ..d]).assign(&mixed);
    z
}

/// Reads `{name}_ridge.npy` of a model folder: the `ridge_blend` map of one modality, which must be
/// `inputs × outputs` (`outputs` named by `what` in the error).
pub fn read_ridge_map(dir: &Path, name: &str, inputs: usize, outputs: usize, what: &str) -> Result<Array2<f32>> {
    let path = dir.join(format!("{name}_ridge.npy"));
    let r = crate::npy::read_features(&path)?;
    if r.dim() != (inputs, outputs) {
        bail!(
            "{}: shape {}, expected ({inputs}, {outputs}) (the {name} network's inputs × {what}; model.json sets ridge_blend > 0)",
            path.display(),
            crate::npy::shape_str(&[r.nrows(), r.ncols()])
        );
    }
    Ok(r)
}

/// The network inputs of rows `idx` (positions in `rows`) of a memory-mapped modality.
pub fn mapped_inputs(rows: &crate::mapped::MappedRows, map: &InputMap, idx: &[usize], device: Device) -> Result<Tensor> {
    Ok(array_to_tensor(map.apply(rows.features(idx)?.view())?.view(), device))
}

/// `f` of the network inputs of every row of a memory-mapped modality, in blocks of rows,
/// concatenated in row order.
pub fn map_mapped_inputs(
    rows: &crate::mapped::MappedRows,
    map: &InputMap,
    device: Device,
    f: impl Fn(&Tensor) -> Tensor,
) -> Result<Tensor> {
    let parts = row_blocks(rows.len()).map(|idx| Ok(f(&mapped_inputs(rows, map, &idx, device)?))).collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0))
}

/// Modality `m`'s labels (n × K, float 0/1) and visibility mask (n) of training rows `rows`.
fn push_labels(data: &TrainSet, m: usize, rows: &[usize], device: Device, labels: &mut Vec<Tensor>, labelled: &mut Vec<Tensor>) {
    let l = data.labels[m].select(Axis(0), rows).mapv(|v| v as f32);
    labels.push(array_to_tensor(l.view(), device));
    let mask: Vec<f32> = rows.iter().map(|&i| if data.labelled[m][i] { 1.0 } else { 0.0 }).collect();
    labelled.push(Tensor::from_slice(&mask).to_device(device));
}

/// What a zero-shot method's fitter gives the shared training skeleton ([`train`]).
pub trait ZsFitter {
    /// The network variables and the optimiser (both saved in every checkpoint).
    fn parts(&mut self) -> (&nn::VarStore, &mut Optimizer);
    /// One epoch; returns the figure logged as the epoch's loss and a note for the log line.
    fn epoch(&mut self, tr: &mut Trainer) -> Result<(f64, String)>;
    /// Method state a checkpoint carries beside the variables and the optimiser.
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Restores [`ZsFitter::state`] from a checkpoint.
    fn restore_state(&mut self, _ck: &Checkpoint) -> Result<()> {
        Ok(())
    }
}

/// The checks every zero-shot method's `check` ends with: a code length, the data
/// ([`check_zero_shot_data`]), and two labelled rows when the unlabelled ones are left out (nFS).
pub fn check_fit(method: &str, data: &TrainSet, bits: usize, use_unlabelled: bool) -> Result<()> {
    if bits == 0 {
        bail!("bits must be at least 1");
    }
    check_zero_shot_data(method, data)?;
    // f32 inputs on the device and n × bits codes and relaxed outputs (the networks are small).
    let inputs: f64 = data
        .views
        .iter()
        .map(|v| match v {
            View::Features(x) => x.len() as f64,
            View::Images(x) => x.len() as f64,
            // Memory-mapped features stay in their file (read batch by batch).
            View::Mapped(_) => 0.0,
        })
        .sum();
    crate::method::ensure_memory(method, bits, 4.0 * (inputs + 4.0 * data.len() as f64 * bits as f64), "inputs and codes")?;
    if !use_unlabelled && labelled_rows(data).len() < 2 {
        bail!("{method} with use_unlabelled = false needs at least two labelled training items, found {}", labelled_rows(data).len());
    }
    Ok(())
}

/// What a resumed run must share with the run that wrote the checkpoint: every hyper-parameter
/// but `epochs`, the code length, the network sizes and the training data.
pub fn run_config<P: Serialize>(params: &P, prep: &Prepared, bits: usize, data: &TrainSet) -> serde_json::Value {
    let mut p = serde_json::to_value(params).unwrap_or_default();
    if let Some(o) = p.as_object_mut() {
        o.remove("epochs");
    }
    serde_json::json!({ "params": p, "bits": bits, "inputs": prep.dims(), "attributes": prep.attr_dim(), "rows": prep.n(), "data": fingerprint(data) })
}

/// The start of a zero-shot fit (after the method's own `check`): the trainer (device, seed,
/// progress, checkpoint folder) and the training tensors of every row, or of the labelled rows
/// only when `use_unlabelled` is false (the nFS ablation).
pub fn start(
    method: &'static str,
    data: &TrainSet,
    ctx: &FitContext,
    control: &RunControl,
    opts: &InputOptions,
) -> Result<(Trainer, Prepared)> {
    let tr = Trainer::new(method, ctx, opts.epochs, control)?;
    let rows = if opts.use_unlabelled { (0..data.len()).collect() } else { labelled_rows(data) };
    let prep = prepare(data, method, rows, tr.device, &opts.input, opts.attribute_span, ctx.seed)?;
    Ok((tr, prep))
}

/// The input options every zero-shot method's parameters give [`fit_networks`].
#[derive(Clone, Debug, Default)]
pub struct InputOptions {
    pub epochs: usize,
    pub use_unlabelled: bool,
    pub attribute_span: bool,
    pub input: InputSpec,
}

/// The [`InputOptions`] of a parameter struct that has fields of the same names.
macro_rules! input_options {
    ($p:expr) => {
        $crate::deep::zs_common::InputOptions {
            epochs: $p.epochs,
            use_unlabelled: $p.use_unlabelled,
            attribute_span: $p.attribute_span,
            input: $crate::deep::zs_common::InputSpec { rbf_anchors: $p.rbf_anchors, clip: $p.input_clip, power: $p.input_power },
        }
    };
}
pub(crate) use input_options;

/// The fit shared by CZHash and AgNet (after the method's own `check`): [`start`], the method's
/// fitter built on the prepared tensors, then [`train`] (resuming when asked); returns the trainer
/// (its history) and the trained fitter.
pub fn fit_networks<P: Serialize, F: ZsFitter>(
    method: &'static str,
    params: &P,
    data: &TrainSet,
    ctx: &FitContext,
    control: &RunControl,
    opts: InputOptions,
    new_fitter: impl FnOnce(Prepared) -> Result<F>,
) -> Result<(Trainer, F)> {
    let (mut tr, prep) = start(method, data, ctx, control, &opts)?;
    let config = run_config(params, &prep, ctx.bits, data);
    let mut fit = new_fitter(prep)?;
    train(method, &mut tr, &mut fit, &config)?;
    Ok((tr, fit))
}

/// The shared training skeleton: resume from the run folder's checkpoint when asked (refused when
/// `config` differs), then for each remaining epoch run [`ZsFitter::epoch`], refuse a non-finite
/// loss, log the epoch and write a checkpoint (variables, optimiser, method state).
pub fn train<F: ZsFitter>(method: &str, tr: &mut Trainer, fit: &mut F, config: &serde_json::Value) -> Result<()> {
    if let Some(ck) = tr.load_for_resume(config)? {
        let (vs, opt) = fit.parts();
        ck.restore_vars(vs)?;
        opt.restore(&ck)?;
        fit.restore_state(&ck)?;
        tr.restore(&ck)?;
    }
    while tr.next_epoch().is_some() {
        let (loss, note) = fit.epoch(tr)?;
        if !loss.is_finite() {
            bail!("{method}: the loss became {loss} at epoch {}; lower learning_rate", tr.epoch + 1);
        }
        tr.end_epoch(loss, &note)?;
        let state = fit.state();
        let refs: Vec<(&str, &Tensor)> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let (vs, opt) = fit.parts();
        tr.checkpoint(vs, opt, config, &refs, serde_json::Value::Null)?;
    }
    Ok(())
}

/// Multiplies the last layer (`{name}-fc{layers}`, weight and bias) of each named network by
/// `scale` (the `output_init_scale` of CZHash and AgNet; 1 leaves the initialisation alone).
pub fn scale_last_layers(vs: &nn::VarStore, names: &[&str], layers: usize, scale: f64) -> Result<()> {
    if scale == 1.0 {
        return Ok(());
    }
    let vars = vs.variables();
    for name in names {
        for part in ["weight", "bias"] {
            let key = format!("{name}-fc{layers}.{part}");
            let t = vars.get(&key).ok_or_else(|| anyhow!("internal: no variable {key}"))?;
            tch::no_grad(|| {
                let _ = t.shallow_clone().g_mul_scalar_(scale);
            });
        }
    }
    Ok(())
}

/// Reads `dir/model.json` of a zero-shot model: checks the method and returns the code length,
/// the hyper-parameters, the training history and the whole description.
pub fn read_model_json<P: DeserializeOwned>(dir: &Path, method: &str) -> Result<(usize, P, Vec<f64>, serde_json::Value)> {
    let mp = dir.join("model.json");
    let text = std::fs::read_to_string(&mp).with_context(|| format!("{}: cannot read the model description", mp.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", mp.display()))?;
    if v["method"] != method {
        bail!("{}: method is {}, expected {method:?}", mp.display(), v["method"]);
    }
    let bits = v["bits"].as_u64().ok_or_else(|| anyhow!("{}: field bits is missing", mp.display()))?;
    if bits == 0 || bits > crate::method::MAX_BITS as u64 {
        bail!("{}: field bits is {bits}, expected a code length in 1..={}", mp.display(), crate::method::MAX_BITS);
    }
    let bits = bits as usize;
    let mut pv = v["params"].clone();
    // A model written before `input_power` existed used the features unpowered.
    if let Some(obj) = pv.as_object_mut() {
        obj.entry("input_power").or_insert(serde_json::json!(1.0));
    }
    let params: P = serde_json::from_value(pv).map_err(|e| anyhow!("{}: field params: {e}", mp.display()))?;
    let history: Vec<f64> = serde_json::from_value(v["history"].clone()).unwrap_or_default();
    Ok((bits, params, history, v))
}

/// A short SHA-256 of the training data (features, labels, masks, classes, embeddings), stored in
/// checkpoints so a resume on other data is refused.
pub fn fingerprint(data: &TrainSet) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for v in &data.views {
        match v {
            View::Features(f) => {
                h.update((f.nrows() as u64).to_le_bytes());
                h.update((f.ncols() as u64).to_le_bytes());
                for x in f.iter() {
                    h.update(x.to_le_bytes());
                }
            }
            View::Images(im) => {
                for s in im.shape() {
                    h.update((*s as u64).to_le_bytes());
                }
                h.update(im.as_standard_layout().as_slice().unwrap_or(&[]));
            }
            View::Mapped(m) => {
                // The same bytes as the rows in memory would give, read a block at a time.
                let shape = m.array().shape();
                let (n, d) = (m.len(), m.array().row_len());
                if m.is_images() {
                    h.update((n as u64).to_le_bytes());
                    shape[1..].iter().for_each(|s| h.update((*s as u64).to_le_bytes()));
                } else {
                    h.update((n as u64).to_le_bytes());
                    h.update((d as u64).to_le_bytes());
                }
                for start in (0..n).step_by(4096) {
                    let idx: Vec<usize> = (start..(start + 4096).min(n)).collect();
                    if m.is_images() {
                        m.images(&idx).into_iter().for_each(|im| h.update(im.as_slice().unwrap_or(&[])));
                    } else {
                        m.features(&idx).into_iter().for_each(|f| f.iter().for_each(|x| h.update(x.to_le_bytes())));
                    }
                }
            }
        }
    }
    for l in &data.labels {
        h.update(l.as_standard_layout().as_slice().unwrap_or(&[]));
    }
    for l in &data.labelled {
        h.update(l.iter().map(|&b| b as u8).collect::<Vec<_>>());
    }
    for c in &data.modality_classes {
        h.update((c.len() as u64).to_le_bytes());
        for &k in c {
            h.update((k as u64).to_le_bytes());
        }
    }
    if let Some(e) = &data.class_embeddings {
        for x in e.iter() {
            h.update(x.to_le_bytes());
        }
    }
    h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn a_model_without_input_power_reads_as_unpowered() {
        // AgNet's default is ½; a model.json written before the field existed used p = 1.
        let d = tempfile::tempdir().unwrap();
        let write = |params: serde_json::Value| {
            let j = serde_json::json!({ "method": "agnet", "bits": 8, "params": params, "history": [] });
            std::fs::write(d.path().join("model.json"), j.to_string()).unwrap();
        };
        write(serde_json::json!({ "ridge_blend": 0.6 }));
        let (_, p, _, _) = read_model_json::<crate::deep::agnet::AgnetParams>(d.path(), "agnet").unwrap();
        assert_eq!((p.input_power, p.ridge_blend), (1.0, 0.6));
        write(serde_json::json!({ "input_power": 0.5 }));
        let (_, p, _, _) = read_model_json::<crate::deep::agnet::AgnetParams>(d.path(), "agnet").unwrap();
        assert_eq!(p.input_power, 0.5);
        assert_eq!(crate::deep::agnet::AgnetParams::default().input_power, 0.5);
    }

    #[test]
    fn ndarray_forward_equals_the_tch_forward() {
        let _lock = crate::deep::test_support::torch_rng_lock(); // builds layers: libtorch's generator
        use tch::nn::ModuleT;
        let vs = nn::VarStore::new(Device::Cpu);
        let mlp = super::super::mlp::Mlp::new(&vs.root(), "net", 5, &[7], 3, 0.5);
        super::super::trainer::init_default(&vs, 1, &[]).unwrap();
        let x = Array2::from_shape_fn((4, 5), |(i, j)| (i as f32 - j as f32) * 0.3);
        let xt = array_to_tensor(x.view(), Device::Cpu);
        let y_t = tensor_to_array(&mlp.forward_t(&xt, false)).unwrap();
        let w = MlpWeights::from_var_store(&vs, "net", 2).unwrap();
        let y = w.forward(x.view());
        assert!((&y - &y_t).iter().all(|d| d.abs() < 1e-5));
        let d = tempfile::tempdir().unwrap();
        w.save(d.path(), "m").unwrap();
        assert_eq!(MlpWeights::load(d.path(), "m", 2).unwrap(), w);
        // A layer that does not chain is refused, naming the file.
        write_npy(&d.path().join("m_l1_weight.npy"), &Array2::<f32>::zeros((3, 6))).unwrap();
        let e = format!("{:#}", MlpWeights::load(d.path(), "m", 2).unwrap_err());
        assert!(e.contains("m_l1_weight.npy"), "{e}");
    }

    #[test]
    fn ridge_projector_solves_the_regularised_least_squares() {
        // c = f P minimises ‖f − cA‖² + λ‖c‖²: the gradient (cA − f)Aᵀ + λc vanishes.
        let a = array![[1.0f32, 0.0, 1.0], [0.0, 1.0, 1.0]];
        let p = ridge_projector(&a, 0.1).unwrap();
        let f = array![[0.3f32, -0.2, 0.9]];
        let c = f.dot(&p);
        let grad = (c.dot(&a) - &f).dot(&a.t()) + &(&c * 0.1);
        assert!(grad.iter().all(|g| g.abs() < 1e-5), "{grad:?}");
        // λ → 0 with orthonormal rows: c is the coordinates of f.
        let p = ridge_projector(&array![[1.0f32, 0.0], [0.0, 1.0]], 0.0).unwrap();
        assert_eq!(array![[2.0f32, -1.0]].dot(&p), array![[2.0f32, -1.0]]);
    }

    #[test]
    fn input_map_rbf_and_power_hand_worked() {
        let d0 = tempfile::tempdir().unwrap();
        // Three 1-d rows 0, 1, 2 and three anchors (all rows): distances [[0,1,2],[1,0,1],[2,1,0]],
        // σ = mean distance = 8/9, φᵢⱼ = exp(−dᵢⱼ² / 2σ²), centred by the column means, then
        // standardised per column.
        let x = array![[0.0f32], [1.0], [2.0]];
        let (map, z) = InputMap::fit(x.view(), &InputSpec { rbf_anchors: 3, ..Default::default() }, 7).unwrap();
        let sigma = 8.0f64 / 9.0;
        assert!((map.sigma().unwrap() - sigma).abs() < 1e-12);
        let k = |d: f64| (-d * d / (2.0 * sigma * sigma)).exp();
        let phi = Array2::from_shape_fn((3, 3), |(i, j)| k((i as f64 - j as f64).abs()));
        let mean = phi.mean_axis(Axis(0)).unwrap();
        let c = &phi - &mean;
        let sd = c.mapv(|v| v * v).mean_axis(Axis(0)).unwrap().mapv(f64::sqrt);
        let want = &c / &sd;
        assert!(z.iter().zip(want.iter()).all(|(a, b)| (*a as f64 - b).abs() < 1e-5), "{z:?} vs {want:?}");
        // New rows go through the same map; the training rows reproduce the fitted ones.
        assert!((&map.apply(x.view()).unwrap() - &z).iter().all(|d| d.abs() < 1e-6));
        let xn = array![[0.5f32]];
        let got = map.apply(xn.view()).unwrap();
        for j in 0..3 {
            let want = (k((0.5 - j as f64).abs()) - mean[j]) / sd[j];
            assert!((got[[0, j]] as f64 - want).abs() < 1e-5);
        }
        assert_eq!((map.raw_dim(), map.dim()), (1, 3));
        // Without anchors: standardisation only.
        let (plain, zp) = InputMap::fit(x.view(), &InputSpec::default(), 7).unwrap();
        assert!(plain.rbf.is_none() && plain.sigma().is_none());
        assert_eq!(zp, Standardizer::fit(x.view()).apply(x.view()));
        // input_power ½: sign(v)·|v|^½ first, so rows 0, 1, 4 and −9 become 0, 1, 2 and −3, then
        // standardised; new rows go through the same power; the clip acts after standardising.
        let xp = array![[0.0f32], [1.0], [4.0], [-9.0]];
        let half = InputSpec { power: 0.5, clip: 1.2, ..Default::default() };
        let (pm, zp) = InputMap::fit(xp.view(), &half, 7).unwrap();
        let roots = array![[0.0f32], [1.0], [2.0], [-3.0]];
        let want = Standardizer::fit(roots.view()).apply(roots.view()).mapv(|v| v.clamp(-1.2, 1.2));
        assert!((&zp - &want).iter().all(|d| d.abs() < 1e-6), "{zp:?} vs {want:?}");
        assert!((&pm.apply(array![[16.0f32]].view()).unwrap()
            - &Standardizer::fit(roots.view()).apply(array![[4.0f32]].view()).mapv(|v| v.clamp(-1.2, 1.2)))
            .iter()
            .all(|d| d.abs() < 1e-6));
        pm.save(d0.path(), "text").unwrap();
        let back = InputMap::load(d0.path(), "text", None, 1, 1.2, 0.5).unwrap();
        assert_eq!(back.apply(xp.view()).unwrap(), zp);
        // More anchors than rows: capped at the rows.
        assert_eq!(InputMap::fit(x.view(), &InputSpec { rbf_anchors: 50, ..Default::default() }, 7).unwrap().0.dim(), 3);
        // Save / load round trip; a wrong input size is refused, naming the file.
        let d = tempfile::tempdir().unwrap();
        map.save(d.path(), "image").unwrap();
        let back = InputMap::load(d.path(), "image", map.sigma(), 3, 0.0, 1.0).unwrap();
        assert_eq!(back.apply(xn.view()).unwrap(), got);
        let e = format!("{:#}", InputMap::load(d.path(), "image", map.sigma(), 4, 0.0, 1.0).unwrap_err());
        assert!(e.contains("image_mean.npy"), "{e}");
    }

    #[test]
    fn span_basis_is_an_isometry_on_the_attribute_span() {
        // Three attributes in 4-d spanning a 2-d subspace: d = 2, V orthonormal, and the Gram
        // matrix of the attributes (cosines) is unchanged.
        let a = array![[1.0f32, 0.0, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0]];
        let v = span_basis(&a).unwrap();
        assert_eq!(v.dim(), (4, 2));
        let vtv = v.t().dot(&v);
        assert!((&vtv - &Array2::<f32>::eye(2)).iter().all(|x| x.abs() < 1e-6));
        let av = a.dot(&v);
        let (g0, g1) = (a.dot(&a.t()), av.dot(&av.t()));
        assert!((&g0 - &g1).iter().all(|x| x.abs() < 1e-6), "{g0:?} vs {g1:?}");
        // One-hot attributes keep all K coordinates.
        assert_eq!(span_basis(&Array2::<f32>::eye(3)).unwrap().ncols(), 3);
        assert!(span_basis(&Array2::<f32>::zeros((2, 3))).is_err());
    }

    /// A 100-item, 5-class two-modality bundle with a fixed split, with or without class
    /// embeddings.
    fn bundle(dir: &Path, embeddings: bool) -> crate::bundle::Bundle {
        crate::bundle::test_bundle(dir, if embeddings { "emb" } else { "plain" }, true, embeddings)
    }

    /// Bad configurations of the zero-shot protocols and methods are refused with a
    /// message that says what is wrong, through the same path `cmh train` takes (split →
    /// training set → `pipeline::fit_method`).
    #[test]
    fn bad_zero_shot_configurations_are_refused_clearly() {
        use crate::method::{DeviceChoice, FitContext};
        use crate::split::{make_split, Protocol, SplitConfig};
        let d = tempfile::tempdir().unwrap();
        let (with, without) = (bundle(d.path(), true), bundle(d.path(), false));
        let ctx = FitContext { device: DeviceChoice::Cpu, ..FitContext::new(8, 0) };
        let fit = |method: &str, b: &crate::bundle::Bundle, protocol: Protocol| -> Result<()> {
            let split = make_split(b, &SplitConfig { protocol, seed: 1, ..Default::default() })?;
            let train = split.train_set(b, false)?;
            let table: toml::Table = toml::from_str("epochs = 1\nhidden = [4]").unwrap();
            crate::pipeline::fit_method(method, &table, &train, &ctx).map(|_| ())
        };
        for protocol in [Protocol::ZeroShot, Protocol::SemiSupervised, Protocol::LabelSpaces] {
            // No unseen class: refused by the split, before any training.
            let cfg = SplitConfig { protocol, unseen_fraction: 0.0, ..Default::default() };
            let e = make_split(&with, &cfg).unwrap_err().to_string();
            assert!(e.contains("no class would be unseen"), "{e}");
            // Every class unseen: nothing to train on.
            let cfg = SplitConfig { protocol, unseen_classes: (0..5).map(|k| format!("c{k}")).collect(), ..Default::default() };
            assert!(make_split(&with, &cfg).unwrap_err().to_string().contains("every class is unseen"));
            // A fully masked training set (mask_fraction must stay below 1).
            let cfg = SplitConfig { protocol, mask_fraction: 1.0, ..Default::default() };
            assert!(make_split(&with, &cfg).unwrap_err().to_string().contains("mask_fraction"));
            // No class embeddings: both zero-shot methods say so and say how to add them.
            for method in ["czhash", "agnet"] {
                let e = fit(method, &without, protocol).unwrap_err().to_string();
                assert!(e.contains(method) && e.contains("class embeddings") && e.contains("embed-classes"), "{e}");
            }
        }
        // The same data with embeddings trains (so the refusals above are about what they name).
        for method in ["czhash", "agnet"] {
            fit(method, &with, Protocol::LabelSpaces).unwrap();
        }
        // Label-space fraction 0 would leave a modality without classes.
        let cfg = SplitConfig { protocol: Protocol::LabelSpaces, modality_class_fraction: 0.0, ..Default::default() };
        assert!(make_split(&with, &cfg).unwrap_err().to_string().contains("modality_class_fraction"));
    }
}
