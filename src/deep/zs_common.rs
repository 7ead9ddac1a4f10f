//! Training machinery shared by the zero-shot methods (CZHash, AgNet): device choice, the feature
//! MLP, input standardisation, a checkpointable Adam, atomic single-file checkpoints, per-epoch
//! seeding and progress bars.
//!
//! Determinism and resume: every random draw of epoch `e` (mini-batch order, dropout masks) comes
//! from generators seeded with `(seed, e)` at the start of that epoch, and a checkpoint written at
//! the end of epoch `e` holds every tensor the next epoch reads (weights, Adam moments and step
//! counts, the method's own matrices). A resumed run on the CPU therefore repeats exactly the
//! computation of an uninterrupted one.
//!
//! Fitted models keep their weights as ndarray matrices (a `tch::Tensor` is not `Sync`), and encode
//! with a plain ndarray forward pass that mirrors what a Python user does with the exported `.npy`
//! files; a test checks it against the tch forward pass.

use crate::method::{DeviceChoice, TrainSet, View};
use crate::npy::{read_npy, write_npy, NpyData};
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// The libtorch device for a [`DeviceChoice`]; `cuda` on a machine without CUDA is refused.
pub fn resolve_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cuda => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                bail!("--device cuda: libtorch finds no usable CUDA device on this machine; use --device cpu or auto")
            }
        }
    }
}

/// An f32 matrix as a tensor on `device`.
pub fn tensor_from(a: ArrayView2<f32>, device: Device) -> Tensor {
    let a = a.as_standard_layout();
    let (n, d) = a.dim();
    Tensor::from_slice(a.as_slice().expect("standard layout")).view([n as i64, d as i64]).to_device(device)
}

/// A 2-d tensor as an f32 matrix (copied to the CPU).
pub fn array_from(t: &Tensor) -> Result<Array2<f32>> {
    let size = t.size();
    if size.len() != 2 {
        bail!("internal: expected a 2-d tensor, found shape {size:?}");
    }
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1]);
    let v = Vec::<f32>::try_from(&t).map_err(|e| anyhow!("internal: tensor to array: {e}"))?;
    Ok(Array2::from_shape_vec((size[0] as usize, size[1] as usize), v)?)
}

/// Per-dimension standardisation learned on the training features (constant dimensions keep
/// scale 1).
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    pub mean: Array1<f32>,
    pub std: Array1<f32>,
}

impl Standardizer {
    pub fn fit(x: ArrayView2<f32>) -> Self {
        let n = x.nrows().max(1) as f64;
        let mean64 = x.mapv(|v| v as f64).sum_axis(Axis(0)) / n;
        let var = x
            .mapv(|v| v as f64)
            .outer_iter()
            .fold(Array1::<f64>::zeros(x.ncols()), |acc, r| acc + (&r - &mean64).mapv(|d| d * d))
            / n;
        let std = var.mapv(|v| if v.sqrt() > 1e-12 { v.sqrt() as f32 } else { 1.0 });
        Self { mean: mean64.mapv(|v| v as f32), std }
    }
    pub fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        (&x - &self.mean) / &self.std
    }
    pub fn dim(&self) -> usize {
        self.mean.len()
    }
}

/// A fully connected network: Linear → ReLU → Dropout for every layer but the last, which is
/// linear. Layers are named `l0`, `l1`, … under the var-store path.
///
/// Initialisation and dropout masks draw from a caller-owned ChaCha generator, not torch's global
/// one, so that fits running side by side in one process (tests, a parallel sweep) cannot disturb
/// each other's random streams. Weights and biases start uniform in ±1/√fan_in (torch's default
/// for `nn.Linear`).
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<nn::Linear>,
    dropout: f64,
}

/// A tensor of `shape` with entries uniform in [lo, hi) drawn from `rng`.
pub fn uniform_tensor(shape: &[i64], lo: f32, hi: f32, rng: &mut ChaCha8Rng, device: Device) -> Tensor {
    use rand::Rng;
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * rng.gen::<f32>()).collect();
    Tensor::from_slice(&v).view(shape).to_device(device)
}

impl Mlp {
    /// `dims` = [input, hidden…, output].
    pub fn new(p: &nn::Path, dims: &[usize], dropout: f64, rng: &mut ChaCha8Rng) -> Self {
        let layers: Vec<nn::Linear> = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| nn::linear(p / format!("l{i}"), w[0] as i64, w[1] as i64, Default::default()))
            .collect();
        tch::no_grad(|| {
            for (l, w) in layers.iter().zip(dims.windows(2)) {
                let bound = 1.0 / (w[0] as f32).sqrt();
                let mut ws = l.ws.shallow_clone();
                ws.copy_(&uniform_tensor(&ws.size(), -bound, bound, rng, ws.device()));
                if let Some(b) = &l.bs {
                    let mut b = b.shallow_clone();
                    b.copy_(&uniform_tensor(&b.size(), -bound, bound, rng, b.device()));
                }
            }
        });
        Self { layers, dropout }
    }

    /// Forward pass; with `dropout_rng` (training), inverted dropout with masks from it.
    pub fn forward_t(&self, x: &Tensor, dropout_rng: Option<&mut ChaCha8Rng>) -> Tensor {
        let last = self.layers.len() - 1;
        let mut h = x.shallow_clone();
        let mut rng = dropout_rng;
        for (i, l) in self.layers.iter().enumerate() {
            h = h.apply(l);
            if i < last {
                h = h.relu();
                if let Some(r) = rng.as_deref_mut() {
                    if self.dropout > 0.0 {
                        let keep = 1.0 - self.dropout;
                        let u = uniform_tensor(&h.size(), 0.0, 1.0, r, h.device());
                        h = h * (u.lt(keep).to_kind(Kind::Float) / keep);
                    }
                }
            }
        }
        h
    }
}

/// An MLP's weights as plain matrices: layer k maps `h ↦ h Wₖᵀ + bₖ` (torch's Linear layout,
/// `W` is out × in), ReLU between layers.
#[derive(Clone, Debug, PartialEq)]
pub struct MlpWeights {
    pub layers: Vec<(Array2<f32>, Array1<f32>)>,
}

impl MlpWeights {
    /// Copies the weights of the MLP stored under `prefix` in `vs` (layers `prefix.l0`, …).
    pub fn from_var_store(vs: &nn::VarStore, prefix: &str, n_layers: usize) -> Result<Self> {
        let vars = vs.variables();
        let mut layers = Vec::new();
        for k in 0..n_layers {
            let get = |what: &str| {
                let name = format!("{prefix}.l{k}.{what}");
                vars.get(&name).ok_or_else(|| anyhow!("internal: variable {name} missing"))
            };
            let w = array_from(&get("weight")?.detach())?;
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

/// Adam (Kingma & Ba) whose moments can be checkpointed (tch's optimiser state cannot be saved).
/// Parameters are ordered by name, so the state lines up across runs.
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    names: Vec<String>,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: i64,
}

impl Adam {
    pub fn new(vs: &nn::VarStore, lr: f64, weight_decay: f64) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let m = vars.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = vars.iter().map(|(_, p)| p.zeros_like()).collect();
        let (names, params) = vars.into_iter().unzip();
        Self { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, names, params, m, v, step: 0 }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// One Adam step over the parameters that received a gradient.
    pub fn step(&mut self) {
        self.step += 1;
        let t = self.step as f64;
        let (b1, b2) = (self.beta1, self.beta2);
        let bc1 = 1.0 - b1.powf(t);
        let bc2 = 1.0 - b2.powf(t);
        tch::no_grad(|| {
            for ((p, m), v) in self.params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = if self.weight_decay > 0.0 { &g + &*p * self.weight_decay } else { g };
                *m *= b1;
                *m += &g * (1.0 - b1);
                *v *= b2;
                *v += g.square() * (1.0 - b2);
                let update = (&*m / bc1) / ((&*v / bc2).sqrt() + self.eps) * self.lr;
                *p -= update;
            }
        });
    }

    /// The optimiser state as named tensors (`{prefix}.m.{param}`, `{prefix}.v.{param}`,
    /// `{prefix}.step`).
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for ((n, m), v) in self.names.iter().zip(&self.m).zip(&self.v) {
            out.push((format!("{prefix}.m.{n}"), m.to_device(Device::Cpu)));
            out.push((format!("{prefix}.v.{n}"), v.to_device(Device::Cpu)));
        }
        out.push((format!("{prefix}.step"), Tensor::from_slice(&[self.step])));
        out
    }

    /// Restores the state written by [`Adam::state`].
    pub fn load_state(&mut self, ck: &Checkpoint, prefix: &str) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for ((n, m), v) in self.names.iter().zip(&mut self.m).zip(&mut self.v) {
                m.copy_(&ck.tensor(&format!("{prefix}.m.{n}"), &m.size())?);
                v.copy_(&ck.tensor(&format!("{prefix}.v.{n}"), &v.size())?);
            }
            Ok(())
        })?;
        let s = ck.tensor(&format!("{prefix}.step"), &[1])?;
        self.step = s.int64_value(&[0]);
        Ok(())
    }
}

/// Named tensors of a var store, copied to the CPU, names prefixed.
pub fn var_store_tensors(vs: &nn::VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter().map(|(n, t)| (format!("{prefix}.{n}"), t.detach().to_device(Device::Cpu))).collect()
}

/// Copies the tensors written by [`var_store_tensors`] back into `vs`.
pub fn load_var_store(vs: &mut nn::VarStore, ck: &Checkpoint, prefix: &str) -> Result<()> {
    let vars = vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (n, mut t) in vars {
            let src = ck.tensor(&format!("{prefix}.{n}"), &t.size())?;
            t.copy_(&src);
        }
        Ok(())
    })
}

/// A training checkpoint: one safetensors file holding every tensor plus a JSON description
/// (stored as the byte tensor `__meta__`), written to a temporary file and renamed into place, so
/// a checkpoint on disk is always complete.
pub struct Checkpoint {
    pub meta: serde_json::Value,
    tensors: BTreeMap<String, Tensor>,
    path: std::path::PathBuf,
}

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
const META: &str = "__meta__";

impl Checkpoint {
    /// Writes `dir/checkpoint.safetensors` atomically.
    pub fn save(dir: &Path, meta: &serde_json::Value, tensors: &[(String, Tensor)]) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the checkpoint folder", dir.display()))?;
        let bytes = serde_json::to_vec(meta)?;
        let meta_t = Tensor::from_slice(&bytes);
        let mut all: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.to_device(Device::Cpu).contiguous())).collect();
        all.push((META.to_string(), meta_t));
        let tmp = tempfile::Builder::new()
            .prefix(".checkpoint-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .with_context(|| format!("{}: cannot create a temporary checkpoint", dir.display()))?;
        Tensor::write_safetensors(&all, tmp.path()).map_err(|e| anyhow!("{}: cannot write the checkpoint: {e}", tmp.path().display()))?;
        let path = dir.join(CHECKPOINT_FILE);
        tmp.persist(&path).map_err(|e| anyhow!("{}: cannot rename the checkpoint into place ({e})", path.display()))?;
        Ok(())
    }

    /// Reads `dir/checkpoint.safetensors`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(CHECKPOINT_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let list = Tensor::read_safetensors(&path)
            .map_err(|e| anyhow!("{}: corrupt or truncated checkpoint ({e}); delete it to start over", path.display()))?;
        let mut tensors: BTreeMap<String, Tensor> = list.into_iter().collect();
        let meta_t = tensors.remove(META).ok_or_else(|| anyhow!("{}: not a cmh checkpoint (no {META} entry)", path.display()))?;
        let bytes = Vec::<u8>::try_from(&meta_t).map_err(|e| anyhow!("{}: unreadable {META}: {e}", path.display()))?;
        let meta: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| anyhow!("{}: the checkpoint description is not valid JSON ({e})", path.display()))?;
        Ok(Some(Self { meta, tensors, path }))
    }

    /// The tensor `name`, checked to have shape `shape`.
    pub fn tensor(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| anyhow!("{}: tensor {name} is missing from the checkpoint", self.path.display()))?;
        if t.size() != shape {
            bail!("{}: tensor {name} has shape {:?}, expected {shape:?}", self.path.display(), t.size());
        }
        Ok(t.shallow_clone())
    }

    /// Refuses a checkpoint whose `key` differs from `expected` (another method, code length,
    /// hyper-parameters or data).
    pub fn expect(&self, key: &str, expected: &serde_json::Value) -> Result<()> {
        let found = self.meta.get(key).unwrap_or(&serde_json::Value::Null);
        if found != expected {
            bail!(
                "{}: checkpoint was written for {key} = {found}, but this run has {key} = {expected}; \
                 use another checkpoint folder or delete it to start over",
                self.path.display()
            );
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A generator for the draws of epoch `epoch` (mini-batch order, dropout masks); stream `s`
/// separates independent uses within an epoch (0 = batch order, 1 = dropout, …). Epoch
/// `usize::MAX` is used for initialisation.
pub fn epoch_rng(seed: u64, epoch: usize) -> ChaCha8Rng {
    stream_rng(seed, epoch, 0)
}

pub fn stream_rng(seed: u64, epoch: usize, stream: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(mix(seed, stream), 0x5eed_0000u64.wrapping_add(epoch as u64)))
}

fn mix(a: u64, b: u64) -> u64 {
    // SplitMix64 finaliser of a combination: distinct (seed, epoch) pairs give unrelated streams.
    let mut z = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `0..n` shuffled and cut into batches of `batch` (the last one may be shorter).
pub fn batches(n: usize, batch: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    idx.chunks(batch.max(1)).map(|c| c.to_vec()).collect()
}

/// Index tensor for rows `idx`.
pub fn index_tensor(idx: &[usize], device: Device) -> Tensor {
    let v: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    Tensor::from_slice(&v).to_device(device)
}

/// A progress bar over epochs, hidden unless `show`.
pub fn progress_bar(show: bool, epochs: usize, method: &str, start: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(epochs as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] epoch {pos}/{len} {msg} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(method.to_string());
    pb.set_position(start as u64);
    pb
}

/// Appends one line to `dir/train.log` (per-epoch log of a resumable run).
pub fn log_line(dir: Option<&Path>, line: &str) -> Result<()> {
    use std::io::Write;
    if let Some(d) = dir {
        std::fs::create_dir_all(d)?;
        let p = d.join("train.log");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("{}: cannot open the log", p.display()))?;
        writeln!(f, "{line}")?;
    }
    Ok(())
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


/// A training set made ready for a zero-shot method: standardised feature tensors, labels and
/// masks as tensors, the class attribute matrix of each modality's classes.
pub struct Prepared {
    /// Training-set rows used (all of them, or the labelled ones for an ablation).
    pub rows: Vec<usize>,
    pub standardizers: Vec<Standardizer>,
    /// Standardised features, n × d_v.
    pub x: Vec<Tensor>,
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

impl Prepared {
    pub fn n(&self) -> usize {
        self.rows.len()
    }
    pub fn dims(&self) -> Vec<usize> {
        self.standardizers.iter().map(|s| s.dim()).collect()
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
        if let View::Images(_) = v {
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
pub fn prepare(data: &TrainSet, method: &str, rows: Vec<usize>, device: Device) -> Result<Prepared> {
    let emb = data.require_class_embeddings(method)?;
    let mut standardizers = Vec::new();
    let mut x = Vec::new();
    let mut labels = Vec::new();
    let mut labelled = Vec::new();
    for m in 0..2 {
        let f = match &data.views[m] {
            View::Features(f) => f.select(Axis(0), &rows),
            View::Images(_) => bail!("{method}: modality {m} holds raw images"),
        };
        let s = Standardizer::fit(f.view());
        x.push(tensor_from(s.apply(f.view()).view(), device));
        standardizers.push(s);
        let l = data.labels[m].select(Axis(0), &rows).mapv(|v| v as f32);
        labels.push(tensor_from(l.view(), device));
        let mask: Vec<f32> = rows.iter().map(|&i| if data.labelled[m][i] { 1.0 } else { 0.0 }).collect();
        labelled.push(Tensor::from_slice(&mask).to_device(device));
    }
    let attributes = data.modality_classes.iter().map(|cls| l2_normalise_rows(&emb.select(Axis(0), cls))).collect();
    Ok(Prepared { rows, standardizers, x, labels, labelled, classes: data.modality_classes.clone(), attributes, device })
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

/// `x ≥ 0 → +1, x < 0 → −1` as a float tensor (the codes' sign convention).
pub fn sign_pm1(x: &Tensor) -> Tensor {
    x.ge(0.0).to_kind(Kind::Float) * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn adam_matches_the_textbook_update() {
        // One parameter, loss = (p - 3)^2, two steps, against a hand computation of Adam.
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var("p", &[1], nn::Init::Const(1.0));
        let mut opt = Adam::new(&vs, 0.1, 0.0);
        let (mut m, mut v, mut x) = (0.0f64, 0.0f64, 1.0f64);
        for t in 1..=2 {
            opt.zero_grad();
            let loss = (&p - 3.0).square().sum(Kind::Float);
            loss.backward();
            opt.step();
            let g = 2.0 * (x - 3.0);
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let mh = m / (1.0 - 0.9f64.powi(t));
            let vh = v / (1.0 - 0.999f64.powi(t));
            x -= 0.1 * mh / (vh.sqrt() + 1e-8);
            assert!((p.double_value(&[0]) - x).abs() < 1e-6, "step {t}: {} vs {x}", p.double_value(&[0]));
        }
    }

    #[test]
    fn checkpoint_round_trip_and_corruption() {
        let d = tempfile::tempdir().unwrap();
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let meta = serde_json::json!({"method": "x", "epoch": 3});
        Checkpoint::save(d.path(), &meta, &[("a".into(), t.shallow_clone())]).unwrap();
        let ck = Checkpoint::load(d.path()).unwrap().unwrap();
        assert_eq!(ck.meta["epoch"], 3);
        assert_eq!(array_from(&ck.tensor("a", &[2, 2]).unwrap()).unwrap(), array![[1.0f32, 2.0], [3.0, 4.0]]);
        let e = ck.tensor("a", &[4]).unwrap_err().to_string();
        assert!(e.contains("tensor a has shape [2, 2]"), "{e}");
        assert!(ck.expect("method", &serde_json::json!("y")).is_err());
        // Truncate the file: a clear error, no panic.
        let p = d.path().join(CHECKPOINT_FILE);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
        let e = format!("{:#}", Checkpoint::load(d.path()).err().unwrap());
        assert!(e.contains("corrupt or truncated"), "{e}");
        assert!(Checkpoint::load(&d.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn ndarray_forward_equals_the_tch_forward() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mlp = Mlp::new(&(vs.root() / "net"), &[5, 7, 3], 0.5, &mut epoch_rng(1, 0));
        let x = Array2::from_shape_fn((4, 5), |(i, j)| (i as f32 - j as f32) * 0.3);
        let xt = tensor_from(x.view(), Device::Cpu);
        let y_t = array_from(&mlp.forward_t(&xt, None)).unwrap();
        // Training mode: the same mask stream gives the same output; dropout changes it.
        let a = mlp.forward_t(&xt, Some(&mut stream_rng(1, 0, 1)));
        let b = mlp.forward_t(&xt, Some(&mut stream_rng(1, 0, 1)));
        assert!(a.equal(&b) && !a.equal(&mlp.forward_t(&xt, None)));
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
    fn standardizer_and_seeds() {
        let x = array![[1.0f32, 5.0], [3.0, 5.0]];
        let s = Standardizer::fit(x.view());
        assert_eq!(s.apply(x.view()), array![[-1.0f32, 0.0], [1.0, 0.0]]);
        let a = batches(10, 4, &mut epoch_rng(1, 0));
        assert_eq!(a.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(a, batches(10, 4, &mut epoch_rng(1, 0)));
        assert_ne!(a, batches(10, 4, &mut epoch_rng(1, 1)));
        assert!(resolve_device(DeviceChoice::Cpu).unwrap() == Device::Cpu);
        if !tch::Cuda::is_available() {
            assert!(resolve_device(DeviceChoice::Cuda).unwrap_err().to_string().contains("no usable CUDA"));
        }
    }
}
