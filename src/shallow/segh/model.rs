//! The fitted SeGH model: projections, encoding of new items, save and load.

use super::*;
use crate::method::ModelDir;

/// A fitted SeGH model: hᵐ(x) = sign(P Wₘ (ψₘ(x) − x̄ₘ)), ψₘ = identity (raw features, the
/// paper) or the RBF anchor map φₘ (`anchors > 0`).
#[derive(Clone, Debug)]
pub struct SeghModel {
    pub(super) params: SeghParams,
    pub(super) bits: usize,
    /// φₘ per modality when the model works on RBF anchor features; empty for raw features.
    pub(super) rbf: Vec<RbfMap>,
    /// x̄ₘ: training means of each modality's input representation ψₘ(x) (dₘ, or c anchors).
    pub(super) means: Vec<Array1<f64>>,
    /// Wₘ (e × dₘ, or e × c with anchors), step 1.
    pub(super) w: Vec<Array2<f64>>,
    /// P (bits × e), step 2.
    pub(super) p: Array2<f64>,
    /// Pₘ Wₘ (bits × dₘ), cached for encoding.
    pub(super) proj: Vec<Array2<f64>>,
    pub(super) train_codes: BinaryCodes,
    pub(super) history: Vec<f64>,
    pub(super) info: FitInfo,
}

/// Facts about a fit, for logs and benchmarks.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FitInfo {
    /// r: the number of decorrelated code dimensions (min(bits, rank Z)).
    pub semantic_rank: usize,
    /// Conjugate-gradient iterations of each H-system solve.
    pub cg_iterations: Vec<usize>,
    /// Seconds spent in step 1, the graph (kNN + Laplacian) and step 2.
    pub seconds_step1: f64,
    pub seconds_graph: f64,
    pub seconds_step2: f64,
    /// Of which the ITQ rotation.
    pub seconds_itq: f64,
}

impl SeghModel {
    pub fn params(&self) -> &SeghParams {
        &self.params
    }
    /// Wₘ (e × dₘ) of modality m.
    pub fn w(&self, m: usize) -> &Array2<f64> {
        &self.w[m]
    }
    /// P (bits × e).
    pub fn p(&self) -> &Array2<f64> {
        &self.p
    }
    /// Training mean of modality m's input representation (raw features or RBF features).
    pub fn mean(&self, m: usize) -> &Array1<f64> {
        &self.means[m]
    }
    /// The RBF anchor map of modality m, when the model uses anchor features (`anchors > 0`).
    pub fn rbf(&self, m: usize) -> Option<&RbfMap> {
        self.rbf.get(m)
    }
    pub fn n_modalities(&self) -> usize {
        self.w.len()
    }
    pub fn info(&self) -> &FitInfo {
        &self.info
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        params: SeghParams,
        bits: usize,
        rbf: Vec<RbfMap>,
        means: Vec<Array1<f64>>,
        w: Vec<Array2<f64>>,
        p: Array2<f64>,
        train_codes: BinaryCodes,
        history: Vec<f64>,
        info: FitInfo,
    ) -> Self {
        let proj = w.iter().map(|wm| p.dot(wm)).collect();
        Self { params, bits, rbf, means, w, p, proj, train_codes, history, info }
    }

    /// The continuous projections P Wₘ (ψₘ(x) − x̄ₘ) of modality m's items (n × bits).
    pub fn project(&self, modality: usize, x: ArrayView2<f32>) -> Result<Array2<f64>> {
        if modality >= self.w.len() {
            bail!("segh: modality {modality} does not exist; the model has {} modalities", self.w.len());
        }
        let xc = match self.rbf.get(modality) {
            Some(map) => map.transform(x).with_context(|| format!("segh: RBF features of modality {modality}"))? - &self.means[modality],
            None => {
                let d = self.means[modality].len();
                if x.ncols() != d {
                    bail!("segh: modality {modality} was trained on {d}-dimensional features, got {} columns", x.ncols());
                }
                to_f64(x) - &self.means[modality]
            }
        };
        Ok(xc.dot(&self.proj[modality].t()))
    }

    /// Reads a model written by [`HashModel::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("model.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let file: ModelFile = serde_json::from_str(&text).map_err(|e| anyhow!("{}: not a SeGH model file ({e})", path.display()))?;
        if file.method != METHOD {
            bail!("{}: holds a `{}` model, not `{METHOD}`", path.display(), file.method);
        }
        let m = file.feature_dims.len();
        if !file.sigma.is_empty() && file.sigma.len() != m {
            bail!("{}: `sigma` has {} values but `feature_dims` lists {m} modalities", path.display(), file.sigma.len());
        }
        let rbf: Vec<RbfMap> =
            file.sigma.iter().enumerate().map(|(i, &s)| RbfMap::load(dir, &format!("m{i}"), s)).collect::<Result<_>>()?;
        for (i, map) in rbf.iter().enumerate() {
            if map.dim() != file.feature_dims[i] {
                bail!("{}: m{i}_anchors.npy has {} columns but feature_dims[{i}] = {}", dir.display(), map.dim(), file.feature_dims[i]);
            }
        }
        let read = |name: &str, shape: &[usize]| -> Result<ndarray::ArrayD<f64>> {
            let p = dir.join(name);
            let a = read_npy(&p)?;
            if a.shape() != shape {
                bail!("{}: expected shape {shape:?} (from model.json), found {:?}", p.display(), a.shape());
            }
            let a = a.to_f64();
            if a.iter().any(|v| !v.is_finite()) {
                bail!("{}: holds NaN or infinite values", p.display());
            }
            Ok(a)
        };
        let mut w = Vec::new();
        let mut means = Vec::new();
        for (i, &d) in file.feature_dims.iter().enumerate() {
            let d = rbf.get(i).map_or(d, |map| map.n_anchors());
            w.push(read(&format!("W_{i}.npy"), &[file.embedding_dim, d])?.into_dimensionality()?);
            means.push(read(&format!("mean_{i}.npy"), &[d])?.into_dimensionality()?);
        }
        let p = read("P.npy", &[file.bits, file.embedding_dim])?.into_dimensionality()?;
        let codes_path = dir.join("train_codes.npy");
        let train_codes = BinaryCodes::load_npy(&codes_path, Some(file.bits))?;
        if m == 0 {
            bail!("{}: no modalities listed in feature_dims", path.display());
        }
        Ok(Self::new(file.params, file.bits, rbf, means, w, p, train_codes, file.history, file.info))
    }
}

/// `model.json` of a saved SeGH model.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModelFile {
    pub(super) method: String,
    pub(super) bits: usize,
    pub(super) params: SeghParams,
    /// dₘ per modality (modality 0 = image, 1 = text): the raw feature dimension.
    pub(super) feature_dims: Vec<usize>,
    /// RBF bandwidth σₘ per modality when the model uses anchor features (`m{i}_anchors.npy`,
    /// `m{i}_phi_mean.npy`); empty for raw features.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) sigma: Vec<f64>,
    /// e, the class-embedding dimension.
    pub(super) embedding_dim: usize,
    pub(super) history: Vec<f64>,
    pub(super) info: FitInfo,
    /// How to encode new items in Python.
    pub(super) encode: String,
    pub(super) files: serde_json::Value,
}

impl HashModel for SeghModel {
    fn method(&self) -> &'static str {
        METHOD
    }
    fn bits(&self) -> usize {
        self.bits
    }
    fn encode(&self, modality: usize, view: &View) -> Result<BinaryCodes> {
        let x = view.features(METHOD, modality)?;
        Ok(BinaryCodes::from_signs(self.project(modality, x.view())?.view()))
    }
    fn train_codes(&self) -> Option<&BinaryCodes> {
        Some(&self.train_codes)
    }
    fn history(&self) -> &[f64] {
        &self.history
    }
    fn save(&self, dir: &Path) -> Result<()> {
        let out = ModelDir::create(dir)?;
        for (m, (w, mean)) in self.w.iter().zip(&self.means).enumerate() {
            out.npy(&format!("W_{m}"), w)?;
            out.npy(&format!("mean_{m}"), mean)?;
        }
        for (m, map) in self.rbf.iter().enumerate() {
            map.save(dir, &format!("m{m}"))?;
        }
        out.npy("P", &self.p)?;
        self.train_codes.save_npy(dir, "train_codes")?;
        let m = self.w.len();
        let file = ModelFile {
            method: METHOD.into(),
            bits: self.bits,
            params: self.params.clone(),
            feature_dims: if self.rbf.is_empty() {
                self.means.iter().map(|v| v.len()).collect()
            } else {
                self.rbf.iter().map(|m| m.dim()).collect()
            },
            sigma: self.rbf.iter().map(|m| m.sigma).collect(),
            embedding_dim: self.p.ncols(),
            history: self.history.clone(),
            info: self.info.clone(),
            encode: if self.rbf.is_empty() {
                "codes_m = np.where((x - mean_m) @ W_m.T @ P.T >= 0, 1, -1)  (modality m: 0 = image, 1 = text)".into()
            } else {
                "modality m (0 = image, 1 = text): phi = exp(-||x - m{m}_anchors||^2 / (2 sigma[m]^2)) - m{m}_phi_mean; \
                 codes_m = np.where((phi - mean_m) @ W_m.T @ P.T >= 0, 1, -1)"
                    .into()
            },
            files: serde_json::json!({
                "W": (0..m).map(|i| format!("W_{i}.npy")).collect::<Vec<_>>(),
                "mean": (0..m).map(|i| format!("mean_{i}.npy")).collect::<Vec<_>>(),
                "P": "P.npy",
                "anchors": (0..self.rbf.len()).map(|i| [format!("m{i}_anchors.npy"), format!("m{i}_phi_mean.npy")]).collect::<Vec<_>>(),
                "train_codes": ["train_codes.npy", "train_codes_packed.npy"],
            }),
        };
        out.finish(&file)
    }
}
