//! The fitted CZHash model: encoding new items, saving and loading.

use super::{CzhashParams, METHOD};
use crate::codes::BinaryCodes;
use crate::deep::zs_common::{self, InputMap, MlpWeights, MODALITY_NAMES};
use crate::method::{HashModel, View};
use crate::npy::write_npy;
use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array1, Array2};
use std::path::Path;

/// A fitted CZHash model: per modality, input standardisation, the network, the least-squares
/// projector P = Aᵀ(AAᵀ + λI)⁻¹ onto category representations, and W.
#[derive(Clone, Debug)]
pub struct CzhashModel {
    pub params: CzhashParams,
    pub(super) bits: usize,
    pub(super) nets: Vec<MlpWeights>,
    pub(super) inputs: Vec<InputMap>,
    pub(super) projectors: Vec<Array2<f32>>,
    pub(super) w: Vec<Array2<f32>>,
    /// c̄⁽ᵛ⁾W⁽ᵛ⁾ (r): subtracted before the sign (zero without `centre`).
    pub(super) offsets: Vec<Array1<f32>>,
    pub(super) classes: Vec<Vec<usize>>,
    pub(super) train_codes: Option<BinaryCodes>,
    pub(super) history: Vec<f64>,
    /// `ridge_blend` > 0: per modality, the ridge map R⁽ᵛ⁾ (network inputs × network outputs).
    pub(super) ridge: Option<Vec<Array2<f32>>>,
}

impl CzhashModel {
    /// Real-valued code projections c W for items of `modality` (before the sign).
    pub fn project(&self, modality: usize, view: &View) -> Result<Array2<f32>> {
        let x = zs_common::network_input(METHOD, &self.inputs, modality, view)?;
        let mut f = self.nets[modality].forward(x.view());
        if let Some(r) = &self.ridge {
            f = zs_common::blend_outputs(f, x.view(), &r[modality], self.params.ridge_blend as f32);
        }
        Ok(f.dot(&self.projectors[modality]).dot(&self.w[modality]) - &self.offsets[modality])
    }

    /// The classes whose attributes each modality's category representation spans.
    pub fn modality_classes(&self) -> &[Vec<usize>] {
        &self.classes
    }

    /// Loads a model folder written by [`HashModel::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let (bits, params, history, v) = zs_common::read_model_json::<CzhashParams>(dir, METHOD)?;
        let mp = dir.join("model.json");
        let classes: Vec<Vec<usize>> =
            serde_json::from_value(v["modality_classes"].clone()).map_err(|e| anyhow!("{}: field modality_classes: {e}", mp.display()))?;
        if classes.len() != 2 {
            bail!("{}: field modality_classes must list two modalities", mp.display());
        }
        let mut nets = Vec::new();
        let sigmas = zs_common::rbf_sigmas(dir, &v, params.rbf_anchors)?;
        let mut inputs = Vec::new();
        let mut projectors = Vec::new();
        let mut w = Vec::new();
        let mut offsets = Vec::new();
        let mut ridges = Vec::new();
        for (m, name) in MODALITY_NAMES.iter().enumerate() {
            let net = MlpWeights::load(dir, name, params.hidden.len() + 1)?;
            let input = InputMap::load(dir, name, sigmas[m], net.in_dim(), params.input_clip, params.input_power)?;
            let p = super::zs_common::read_f32(&dir.join(format!("{name}_projector.npy")), 2)?.into_dimensionality::<ndarray::Ix2>()?;
            let wm = super::zs_common::read_f32(&dir.join(format!("{name}_W.npy")), 2)?.into_dimensionality::<ndarray::Ix2>()?;
            let out = net.layers.last().map(|l| l.0.nrows()).unwrap_or(0);
            if p.nrows() != out || p.ncols() != classes[m].len() {
                bail!("{}/{name}_projector.npy is {:?}, expected ({out}, {})", dir.display(), p.dim(), classes[m].len());
            }
            if wm.dim() != (classes[m].len(), bits) {
                bail!("{}/{name}_W.npy is {:?}, expected ({}, {bits})", dir.display(), wm.dim(), classes[m].len());
            }
            if params.ridge_blend > 0.0 {
                ridges.push(zs_common::read_ridge_map(dir, name, net.in_dim(), out, "outputs")?);
            }
            nets.push(net);
            inputs.push(input);
            projectors.push(p);
            w.push(wm);
            offsets.push(if params.centre {
                let o: Array1<f32> = super::zs_common::read_f32(&dir.join(format!("{name}_offset.npy")), 1)?.into_dimensionality()?;
                if o.len() != bits {
                    bail!("{}/{name}_offset.npy has {} entries, expected {bits}", dir.display(), o.len());
                }
                o
            } else {
                Array1::zeros(bits)
            });
        }
        let tc = dir.join("train_codes_packed.npy");
        let train_codes = if tc.is_file() { Some(BinaryCodes::load_npy(&tc, Some(bits))?) } else { None };
        let ridge = (params.ridge_blend > 0.0).then_some(ridges);
        Ok(Self { params, bits, nets, inputs, projectors, w, offsets, classes, train_codes, history, ridge })
    }
}

impl HashModel for CzhashModel {
    fn method(&self) -> &'static str {
        METHOD
    }
    fn bits(&self) -> usize {
        self.bits
    }
    fn encode(&self, modality: usize, view: &View) -> Result<BinaryCodes> {
        Ok(BinaryCodes::from_signs(self.project(modality, view)?.view()))
    }
    fn train_codes(&self) -> Option<&BinaryCodes> {
        self.train_codes.as_ref()
    }
    fn history(&self) -> &[f64] {
        &self.history
    }
    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the model folder", dir.display()))?;
        for (m, name) in MODALITY_NAMES.iter().enumerate() {
            self.nets[m].save(dir, name)?;
            self.inputs[m].save(dir, name)?;
            write_npy(&dir.join(format!("{name}_projector.npy")), &self.projectors[m])?;
            write_npy(&dir.join(format!("{name}_W.npy")), &self.w[m])?;
            if self.params.centre {
                write_npy(&dir.join(format!("{name}_offset.npy")), &self.offsets[m])?;
            }
            if let Some(r) = &self.ridge {
                write_npy(&dir.join(format!("{name}_ridge.npy")), &r[m])?;
            }
        }
        if let Some(b) = &self.train_codes {
            b.save_npy(dir, "train_codes")?;
        }
        let json = serde_json::json!({
            "method": METHOD,
            "bits": self.bits,
            "params": self.params,
            "modality_classes": self.classes,
            "rbf_sigma": self.inputs.iter().map(|i| i.sigma()).collect::<Vec<_>>(),
            "history": self.history,
            "encode": "code = sign(((phi(x) - {m}_mean) / {m}_std → MLP {m}_l*_weight/bias, ReLU between layers; with params.ridge_blend = w > 0: (1 - w) MLP(z) + w z @ {m}_ridge, z the MLP's input) @ {m}_projector @ {m}_W - {m}_offset (centre only)), m = image | text; phi(x) = s(x), or with rbf_anchors > 0: exp(-||s(x) - {m}_anchors||^2 / (2 rbf_sigma[m]^2)) - {m}_phi_mean; s(x) = sign(x) |x|^params.input_power elementwise; the standardised input is clipped to [-params.input_clip, params.input_clip] when params.input_clip > 0",
        });
        crate::npy::write_text_atomic(&dir.join("model.json"), &(serde_json::to_string_pretty(&json)? + "\n"))
    }
}
