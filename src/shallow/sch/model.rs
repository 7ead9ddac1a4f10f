//! The fitted SCH model: hash projections, encoding of new items (eq. 26), save and load.

use super::*;

/// Wall-clock seconds of the phases of one fit (for the run log and the scale benchmark).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FitTimings {
    /// RBF features, φᵀφ and the factorisations of the Wₜ systems.
    pub features_s: f64,
    /// Initialisation and all sweeps.
    pub sweeps_s: f64,
    /// Unified codes of the training rows.
    pub codes_s: f64,
}

/// A fitted SCH model.
#[derive(Clone, Debug)]
pub struct SchModel {
    pub(super) bits: usize,
    pub(super) params: SchParams,
    pub(super) rbf: Vec<RbfMap>,
    pub(super) w: Vec<Array2<f64>>,
    pub(super) r: Array2<f64>,
    /// Wₜ R per modality (c × k): codes = sgn(φₜ(x) · proj[t]).
    pub(super) proj: Vec<Array2<f64>>,
    pub(super) train_codes: BinaryCodes,
    pub(super) history: Vec<f64>,
    /// Training rows SCH fitted on (rows labelled in every modality).
    pub(super) fitted_rows: usize,
    pub(super) timings: FitTimings,
}

impl SchModel {
    pub fn params(&self) -> &SchParams {
        &self.params
    }
    pub fn n_modalities(&self) -> usize {
        self.rbf.len()
    }
    /// RBF map of modality t.
    pub fn rbf(&self, t: usize) -> &RbfMap {
        &self.rbf[t]
    }
    /// Hash projection Wₜ (c × k); with `refit_hash` it is W'ₜRᵀ (see `refit_w`).
    pub fn w(&self, t: usize) -> &Array2<f64> {
        &self.w[t]
    }
    /// Rotation R (k × k).
    pub fn r(&self) -> &Array2<f64> {
        &self.r
    }
    /// Number of sweeps run.
    pub fn iterations(&self) -> usize {
        self.history.len().saturating_sub(1)
    }
    /// Phase timings of the fit (zeros for a loaded model).
    pub fn timings(&self) -> &FitTimings {
        &self.timings
    }
    /// How many training rows the model was fitted on (labelled in every modality).
    pub fn fitted_rows(&self) -> usize {
        self.fitted_rows
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn from_parts(
        bits: usize,
        params: SchParams,
        rbf: Vec<RbfMap>,
        w: Vec<Array2<f64>>,
        r: Array2<f64>,
        train_codes: BinaryCodes,
        history: Vec<f64>,
        fitted_rows: usize,
    ) -> Self {
        let proj = w.iter().map(|wt| wt.dot(&r)).collect();
        Self { bits, params, rbf, w, r, proj, train_codes, history, fitted_rows, timings: FitTimings::default() }
    }

    /// Reads a model written by [`HashModel::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("model.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let mf: SchModelFile = serde_json::from_str(&text).with_context(|| format!("{}: not an SCH model file", path.display()))?;
        if mf.method != "sch" {
            bail!("{}: method is {:?}, expected \"sch\"", path.display(), mf.method);
        }
        let k = mf.bits;
        if k == 0 || mf.sigma.len() != mf.n_modalities || mf.n_modalities == 0 {
            bail!("{}: inconsistent bits / n_modalities / sigma", path.display());
        }
        let mut rbf = Vec::new();
        let mut w = Vec::new();
        for t in 0..mf.n_modalities {
            let map = RbfMap::load(dir, &format!("m{t}"), mf.sigma[t])?;
            let wt = crate::numerics::files::load_matrix(&dir.join(format!("m{t}_W.npy")))?;
            crate::numerics::files::expect_shape(dir, &format!("m{t}_W.npy"), &wt, (map.n_anchors(), k))?;
            rbf.push(map);
            w.push(wt);
        }
        let r = crate::numerics::files::load_matrix(&dir.join("R.npy"))?;
        crate::numerics::files::expect_shape(dir, "R.npy", &r, (k, k))?;
        let train_codes = BinaryCodes::load_npy(&dir.join("B.npy"), Some(k))?;
        let history = crate::numerics::files::load_vector(&dir.join("history.npy"))?.to_vec();
        Ok(Self::from_parts(k, mf.params, rbf, w, r, train_codes, history, mf.fitted_rows))
    }
}

/// model.json of an SCH model.
#[derive(Serialize, Deserialize)]
pub(super) struct SchModelFile {
    pub(super) method: String,
    pub(super) bits: usize,
    pub(super) params: SchParams,
    pub(super) n_modalities: usize,
    pub(super) sigma: Vec<f64>,
    pub(super) fitted_rows: usize,
    pub(super) iterations: usize,
    #[serde(default)]
    pub(super) encode: String,
    #[serde(default)]
    pub(super) files: serde_json::Value,
}

impl HashModel for SchModel {
    fn method(&self) -> &'static str {
        "sch"
    }
    fn bits(&self) -> usize {
        self.bits
    }
    /// b = sgn(φₜ(x) Wₜ R) (eq. 26); with `refit_hash`, Wₜ R = W'ₜ, the refit of `refit_w`.
    fn encode(&self, modality: usize, view: &View) -> Result<BinaryCodes> {
        if modality >= self.rbf.len() {
            bail!("SCH model has {} modalities; modality {modality} requested", self.rbf.len());
        }
        let x = view.features("sch", modality)?;
        let phi = self.rbf[modality].transform(x.view()).with_context(|| format!("SCH encode, modality {modality}"))?;
        Ok(sign_codes(par_dot(phi.view(), self.proj[modality].view()).view()))
    }
    fn train_codes(&self) -> Option<&BinaryCodes> {
        Some(&self.train_codes)
    }
    fn history(&self) -> &[f64] {
        &self.history
    }
    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        for (t, (map, wt)) in self.rbf.iter().zip(&self.w).enumerate() {
            map.save(dir, &format!("m{t}"))?;
            write_npy(&dir.join(format!("m{t}_W.npy")), wt)?;
        }
        write_npy(&dir.join("R.npy"), &self.r)?;
        self.train_codes.save_npy(dir, "B")?;
        write_npy(&dir.join("history.npy"), &Array1::from(self.history.clone()))?;
        let mf = SchModelFile {
            method: "sch".into(),
            bits: self.bits,
            params: self.params.clone(),
            n_modalities: self.rbf.len(),
            sigma: self.rbf.iter().map(|m| m.sigma).collect(),
            fitted_rows: self.fitted_rows,
            iterations: self.iterations(),
            encode: "modality t (0 = image, 1 = text): phi = exp(-||x - m{t}_anchors||^2 / (2 sigma[t]^2)) - m{t}_phi_mean; \
                     codes = sign(phi @ m{t}_W @ R) with sign(0) = +1"
                .into(),
            files: serde_json::json!({
                "m{t}_anchors.npy": "RBF anchors of modality t (c x d, float64)",
                "m{t}_phi_mean.npy": "training mean of the RBF features of modality t (c)",
                "m{t}_W.npy": "hash projection W_t (c x bits); when params.refit_hash is true it is W'_t R^T, W'_t = the ridge fit of B on phi_t, so phi @ W @ R = phi @ W'_t",
                "R.npy": "rotation R (bits x bits)",
                "B.npy": "learned unified codes of the training rows (int8 +-1; B_packed.npy = numpy.packbits)",
                "history.npy": "objective J after the initialisation and after each sweep",
            }),
        };
        write_text_atomic(&dir.join("model.json"), &serde_json::to_string_pretty(&mf)?)
    }
}
