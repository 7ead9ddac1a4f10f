//! The fitted SDCH model: encoding of new items, save and load.

use super::*;
use crate::method::ModelDir;

/// A trained SDCH model: the networks and the learned training codes B.
pub struct SdchModel {
    pub params: SdchParams,
    pub(super) net: Mutex<SdchNet>,
    pub(super) train_codes: BinaryCodes,
    pub(super) history: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModelFile {
    pub(super) method: String,
    pub(super) bits: usize,
    pub(super) params: SdchParams,
    pub(super) arch: SdchArch,
    pub(super) history: Vec<f64>,
}

impl SdchModel {
    pub fn arch(&self) -> SdchArch {
        self.net.lock().unwrap().arch.clone()
    }

    /// fc4 outputs (before the sign) of items of `modality`.
    pub(crate) fn hash_outputs(&self, modality: usize, view: &View) -> Result<Array2<f32>> {
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
        let out = ModelDir::create(dir)?;
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
        out.finish(&mf)
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
