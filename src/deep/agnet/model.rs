//! A fitted AgNet: encoding (code = sign(h(gᵛ(x)))), save and load.

use super::{AgnetParams, METHOD};
use crate::codes::BinaryCodes;
use crate::deep::zs_common::{self, InputMap, MlpWeights, MODALITY_NAMES};
use crate::method::{HashModel, View};
use anyhow::{bail, Context, Result};
use ndarray::Array2;
use std::path::Path;

/// A fitted AgNet: per modality, standardisation and the attribute network; the shared hash
/// network.
#[derive(Clone, Debug)]
pub struct AgnetModel {
    pub params: AgnetParams,
    pub(super) bits: usize,
    pub(super) attr_nets: Vec<MlpWeights>,
    pub(super) hash_net: MlpWeights,
    pub(super) inputs: Vec<InputMap>,
    /// `ridge_blend` > 0: per modality, the ridge map Rᵛ (network inputs × attribute coordinates).
    pub(super) ridge: Option<Vec<Array2<f32>>>,
    pub(super) history: Vec<f64>,
}

impl AgnetModel {
    /// Predicted class-attribute vectors gᵛ(x) of items of `modality` (the first d outputs of the
    /// modality network, without the `free_dims` free coordinates).
    pub fn attributes(&self, modality: usize, view: &View) -> Result<Array2<f32>> {
        let z = self.embedding(modality, view)?;
        let d = z.ncols() - self.params.free_dims;
        Ok(z.slice(ndarray::s![.., ..d]).to_owned())
    }

    /// The modality network's whole output (attribute coordinates, then the free ones): the hash
    /// network's input.
    /// With `ridge_blend` w > 0: (1 − w)·gᵛ(x) + w·xRᵛ.
    pub fn embedding(&self, modality: usize, view: &View) -> Result<Array2<f32>> {
        let x = zs_common::network_input(METHOD, &self.inputs, modality, view)?;
        let g = self.attr_nets[modality].forward(x.view());
        Ok(match &self.ridge {
            None => g,
            // Only the attribute coordinates are blended; `free_dims` outputs stay the network's.
            Some(r) => zs_common::blend_outputs(g, x.view(), &r[modality], self.params.ridge_blend as f32),
        })
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let (bits, params, history, v) = zs_common::read_model_json::<AgnetParams>(dir, METHOD)?;
        let sigmas = zs_common::rbf_sigmas(dir, &v, params.rbf_anchors)?;
        let hash_net = MlpWeights::load(dir, "hash", params.hash_hidden.len() + 1)?;
        if hash_net.in_dim() <= params.free_dims {
            bail!(
                "{}/hash_l0_weight.npy has {} columns; with free_dims = {} (model.json) it needs more (attribute coordinates + free ones)",
                dir.display(),
                hash_net.in_dim(),
                params.free_dims
            );
        }
        if hash_net.layers.last().map(|l| l.0.nrows()) != Some(bits) {
            bail!("{}/hash_l{}_weight.npy must have {bits} rows (the code length in model.json)", dir.display(), params.hash_hidden.len());
        }
        let mut attr_nets = Vec::new();
        let mut inputs = Vec::new();
        let mut ridges = Vec::new();
        for (m, name) in MODALITY_NAMES.iter().enumerate() {
            let net = MlpWeights::load(dir, name, params.hidden.len() + 1)?;
            if net.layers.last().map(|l| l.0.nrows()) != Some(hash_net.in_dim()) {
                bail!("{}: the {name} network's output does not match the hash network's input ({}); the weight files and model.json disagree", dir.display(), hash_net.in_dim());
            }
            let input = InputMap::load(dir, name, sigmas[m], net.in_dim(), params.input_clip, params.input_power)?;
            if params.ridge_blend > 0.0 {
                ridges.push(zs_common::read_ridge_map(
                    dir,
                    name,
                    net.in_dim(),
                    hash_net.in_dim() - params.free_dims,
                    "attribute coordinates",
                )?);
            }
            attr_nets.push(net);
            inputs.push(input);
        }
        let ridge = (params.ridge_blend > 0.0).then_some(ridges);
        Ok(Self { params, bits, attr_nets, hash_net, inputs, ridge, history })
    }
}

impl HashModel for AgnetModel {
    fn method(&self) -> &'static str {
        METHOD
    }
    fn bits(&self) -> usize {
        self.bits
    }
    fn encode(&self, modality: usize, view: &View) -> Result<BinaryCodes> {
        let z = self.embedding(modality, view)?;
        Ok(BinaryCodes::from_signs(self.hash_net.forward(z.view()).view()))
    }
    fn history(&self) -> &[f64] {
        &self.history
    }
    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the model folder", dir.display()))?;
        for (m, name) in MODALITY_NAMES.iter().enumerate() {
            self.attr_nets[m].save(dir, name)?;
            self.inputs[m].save(dir, name)?;
            if let Some(r) = &self.ridge {
                crate::npy::write_npy(&dir.join(format!("{name}_ridge.npy")), &r[m])?;
            }
        }
        self.hash_net.save(dir, "hash")?;
        let json = serde_json::json!({
            "method": METHOD,
            "bits": self.bits,
            "params": self.params,
            "history": self.history,
            "rbf_sigma": self.inputs.iter().map(|i| i.sigma()).collect::<Vec<_>>(),
            "encode": "code = sign(hash MLP(m MLP((phi(x) - m_mean) / m_std))), the hash MLP taking all outputs of the m MLP (params.free_dims of them free, after the attribute coordinates), MLPs = {name}_l*_weight/bias with ReLU between layers, m = image | text; with params.ridge_blend = w > 0 the m MLP's output is replaced by (1 - w) m MLP(z) + w z m_ridge (z its input); phi(x) = s(x), or with rbf_anchors > 0: exp(-||s(x) - m_anchors||^2 / (2 rbf_sigma[m]^2)) - m_phi_mean; s(x) = sign(x) |x|^params.input_power elementwise; the standardised input is clipped to [-params.input_clip, params.input_clip] when params.input_clip > 0",
        });
        crate::npy::write_text_atomic(&dir.join("model.json"), &(serde_json::to_string_pretty(&json)? + "\n"))
    }
}
