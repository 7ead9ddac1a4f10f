//! AgNet training: the networks, one epoch of mini-batch Adam on L = λ_attr L_attr + λ_sim L_sim +
//! λ_q L_q (+ λ_pair L_pair + λ_dec L_dec), the `pca_hash` layer refit, and the checks of a fit.

use super::{attribute_centre, attribute_targets, batch_losses, decorrelation_loss, AgnetModel, AgnetParams, METHOD};
use crate::deep::mlp::Mlp;
use crate::deep::tensors::{array_to_tensor, tensor_to_array};
use crate::deep::trainer::{groups_from_var_store, init_default, Optimizer, OptimizerConfig, OptimizerKind, RunControl, Trainer};
use crate::deep::zs_common::{self, index_tensor, MlpWeights, Prepared, ZsFitter, MODALITY_NAMES};
use crate::method::{ensure_fraction, ensure_nonneg, ensure_pos, Fit, FitContext, TrainSet};
use anyhow::{bail, Context, Result};
use ndarray::Array2;
use tch::nn::ModuleT;
use tch::{nn, Tensor};

/// One AgNet fit: the networks, the optimiser and the fixed training targets.
pub(super) struct Fitter<'a> {
    params: &'a AgnetParams,
    pub(super) prep: Prepared,
    pub(super) vs: nn::VarStore,
    /// Attribute networks gᵛ (`image-fc*`, `text-fc*`) and the hash network h (`hash-fc*`).
    g: Vec<Mlp>,
    h: Mlp,
    opt: Optimizer,
    pub(super) targets: Vec<Tensor>,
    /// μ: mean attribute vector of the training classes (1 × e).
    mu: Tensor,
    /// r: the code length.
    h_bits: usize,
    /// `ridge_blend`: (w, Rᵛ per modality), set after training.
    blend: Option<(f64, Vec<Tensor>)>,
}

impl<'a> Fitter<'a> {
    pub(super) fn new(params: &'a AgnetParams, prep: Prepared, bits: usize, seed: u64) -> Result<Self> {
        let dev = prep.device;
        // Network outputs: the e attribute coordinates, then `free_dims` free ones.
        let e = (prep.attr_dim() + params.free_dims) as i64;
        let vs = nn::VarStore::new(dev);
        let g: Vec<Mlp> = prep.attribute_nets(&vs, &params.hidden, params.dropout, params.free_dims);
        let hh: Vec<i64> = params.hash_hidden.iter().map(|&h| h as i64).collect();
        let h = Mlp::new(&vs.root(), "hash", e, &hh, bits as i64, 0.0);
        init_default(&vs, seed, &[])?;
        zs_common::scale_last_layers(&vs, &MODALITY_NAMES, params.hidden.len() + 1, params.output_init_scale)?;
        // With `pca_hash` the hashing layer is fitted in closed form, never by the optimiser.
        let groups = groups_from_var_store(
            &vs,
            |name| Some(usize::from(name.starts_with("hash-"))),
            &[("all", params.learning_rate), ("hash", params.learning_rate)],
        )?;
        let mut opt = Optimizer::new(OptimizerConfig { kind: OptimizerKind::Adam, weight_decay: params.weight_decay }, groups);
        opt.set_enabled("hash", !params.pca_hash)?;
        let a: Vec<Tensor> = prep.attributes.iter().map(|a| array_to_tensor(a.view(), dev)).collect();
        let targets = attribute_targets(&prep, &a);
        let mu = array_to_tensor(attribute_centre(&prep).view(), dev);
        Ok(Self { params, prep, vs, g, h, opt, targets, mu, h_bits: bits, blend: None })
    }
}

impl Fitter<'_> {
    /// The unweighted terms (L_attr, L_sim, L_q, L_pair, L_dec) of the batch of training rows `batch`
    /// (networks in training mode: dropout on).
    pub(super) fn batch_terms(&self, batch: &[usize]) -> Result<[Tensor; 5]> {
        let idx = index_tensor(batch, self.prep.device);
        // z: the network outputs (attribute coordinates, then the free ones); g: the attribute part,
        // the only one L_attr and the similarity guide see.
        let z: Vec<Tensor> = (0..2).map(|v| Ok(self.g[v].forward_t(&self.prep.batch_inputs(v, batch)?, true))).collect::<Result<_>>()?;
        let g: Vec<Tensor> = z.iter().map(|zv| zv.narrow(1, 0, self.prep.attr_dim() as i64)).collect();
        let h: Vec<Tensor> = z.iter().map(|zv| self.h.forward_t(zv, true).tanh()).collect();
        let t: Vec<Tensor> = self.targets.iter().map(|t| t.index_select(0, &idx)).collect();
        let m: Vec<Tensor> = self.prep.labelled.iter().map(|m| m.index_select(0, &idx)).collect();
        let (la, ls, lq, lp) =
            batch_losses([&g[0], &g[1]], [&h[0], &h[1]], [&t[0], &t[1]], [&m[0], &m[1]], &self.mu, self.params.guide_predicted);
        let ld = decorrelation_loss(&h[0]) + decorrelation_loss(&h[1]);
        Ok([la, ls, lq, lp, ld])
    }
}

impl Fitter<'_> {
    /// `pca_hash`: sets the linear hashing layer to PCA + ITQ of the attribute networks'
    /// dropout-free outputs on every training row (both modalities stacked), each bit scaled to
    /// unit deviation: h(z) = ((z − μ) Pₖ[R G]) / s.
    fn fit_pca_hash(&mut self, seed: u64) -> Result<()> {
        let z: Vec<Array2<f64>> = (0..2)
            .map(|v| tensor_to_array(&tch::no_grad(|| self.prep.map_all_inputs(v, |x| self.predict(v, x)))?).map(|a| a.mapv(f64::from)))
            .collect::<Result<_>>()?;
        let stacked = ndarray::concatenate(ndarray::Axis(0), &[z[0].view(), z[1].view()])?;
        let bits = self.h_bits;
        let mut rng = crate::numerics::random::seeded_rng(seed, 0xA6);
        let (mean, basis, _) =
            crate::shallow::attr_ridge::pca_itq_basis(stacked.view(), bits, 50, &mut rng).context("agnet: PCA hashing layer")?;
        let proj = (&stacked - &mean).dot(&basis);
        let sd = proj.std_axis(ndarray::Axis(0), 0.0).mapv(|v| if v > 1e-12 { v } else { 1.0 });
        let w = (&basis / &sd).t().mapv(|v| v as f32); // r × e, torch's Linear layout
        let b = -(mean.dot(&basis) / &sd).mapv(|v| v as f32);
        let vars = self.vs.variables();
        let dev = self.prep.device;
        tch::no_grad(|| -> Result<()> {
            vars["hash-fc1.weight"].shallow_clone().f_copy_(&array_to_tensor(w.view(), dev))?;
            vars["hash-fc1.bias"].shallow_clone().f_copy_(&Tensor::from_slice(b.as_slice().expect("contiguous")).to_device(dev))?;
            Ok(())
        })
    }
}

impl Fitter<'_> {
    /// The attribute predictor of modality `v` on network inputs `x` (evaluation mode): gᵛ(x), or
    /// with `ridge_blend` w set, (1 − w)·gᵛ(x) + w·xRᵛ.
    fn predict(&self, v: usize, x: &Tensor) -> Tensor {
        let g = self.g[v].forward_t(x, false);
        match &self.blend {
            None => g,
            Some((w, r)) => {
                // Only the attribute coordinates are blended; `free_dims` outputs stay the network's.
                let d = r[v].size()[1];
                let mixed = g.narrow(1, 0, d) * (1.0 - w) + x.matmul(&r[v]) * *w;
                Tensor::cat(&[mixed, g.narrow(1, d, g.size()[1] - d)], 1)
            }
        }
    }

    /// `ridge_blend`: Rᵛ = argmin ‖XR − T‖² + λn‖R‖² over the n labelled training rows of each
    /// modality (X their network inputs, T their attribute targets).
    pub(super) fn fit_ridge_blend(&mut self) -> Result<Vec<Array2<f32>>> {
        let out: Vec<Array2<f32>> =
            (0..2).map(|v| zs_common::ridge_blend_map(&self.prep, v, &self.targets[v], self.params.blend_lambda)).collect::<Result<_>>()?;
        let w = self.params.ridge_blend;
        self.blend = Some((w, out.iter().map(|r| array_to_tensor(r.view(), self.prep.device)).collect()));
        Ok(out)
    }
}

impl ZsFitter for Fitter<'_> {
    fn parts(&mut self) -> (&nn::VarStore, &mut Optimizer) {
        (&self.vs, &mut self.opt)
    }

    /// One epoch over mini-batches of paired items; the logged figure is the mean batch loss.
    fn epoch(&mut self, tr: &mut Trainer) -> Result<(f64, String)> {
        let p = self.params;
        // Entered part-way after a resume, the epoch's hashing layer is the checkpoint's: refitting
        // it from the networks trained since the epoch began would change the rest of the epoch.
        if p.pca_hash && !tr.resuming_within_epoch() {
            self.fit_pca_hash(tr.seed ^ tr.epoch as u64)?;
        }
        for batch in tr.batches(self.prep.n(), p.batch_size) {
            if tr.replaying() {
                // Trained before the checkpoint this run resumed from: only its random draws.
                let _ = tch::no_grad(|| self.batch_terms(&batch))?;
                continue;
            }
            let [la, ls, lq, lp, ld] = self.batch_terms(&batch)?;
            let mut loss = la * p.attr_weight + ls * p.sim_weight + lq * p.quant_weight;
            if p.pair_weight > 0.0 {
                loss = loss + lp * p.pair_weight;
            }
            if p.decor_weight > 0.0 {
                loss = loss + ld * p.decor_weight;
            }
            self.opt.backward_step(&loss)?;
            tr.batch_done(loss.double_value(&[]));
            tr.step_end(&self.vs, &self.opt, &[], serde_json::Value::Null)?;
        }
        Ok((tr.mean_batch_loss(), String::new()))
    }
}

impl AgnetParams {
    /// Fits with a [`RunControl`] (e.g. stop after an epoch, as a kill would). `ridge_blend`
    /// applies only when the training set leaves classes unseen (the zero-shot protocols): with
    /// every class seen the networks alone retrieve better (docs/methods.md).
    pub(crate) fn fit_with_control(&self, data: &TrainSet, ctx: &FitContext, control: &RunControl) -> Result<AgnetModel> {
        if self.ridge_blend > 0.0 && !data.has_unseen_classes() {
            return Self { ridge_blend: 0.0, ..self.clone() }.fit_resolved(data, ctx, control);
        }
        self.fit_resolved(data, ctx, control)
    }

    fn fit_resolved(&self, data: &TrainSet, ctx: &FitContext, control: &RunControl) -> Result<AgnetModel> {
        data.validate()?;
        self.check(data, ctx.bits)?;
        let (tr, mut fit) = zs_common::fit_networks(METHOD, self, data, ctx, control, zs_common::input_options!(self), |prep| {
            Fitter::new(self, prep, ctx.bits, ctx.seed)
        })?;
        let ridge = if self.ridge_blend > 0.0 { Some(fit.fit_ridge_blend()?) } else { None };
        if self.pca_hash {
            // The final hashing layer follows the final attribute networks (and the blend).
            fit.fit_pca_hash(ctx.seed ^ self.epochs as u64)?;
        }
        let nl = self.hidden.len() + 1;
        Ok(AgnetModel {
            params: self.clone(),
            bits: ctx.bits,
            attr_nets: (0..2).map(|v| MlpWeights::from_var_store(&fit.vs, MODALITY_NAMES[v], nl)).collect::<Result<_>>()?,
            hash_net: MlpWeights::from_var_store(&fit.vs, "hash", self.hash_hidden.len() + 1)?,
            inputs: fit.prep.inputs.clone(),
            ridge,
            history: tr.history.clone(),
        })
    }
}

impl Fit for AgnetParams {
    type Model = AgnetModel;

    fn check(&self, data: &TrainSet, bits: usize) -> Result<()> {
        ensure_pos("agnet.learning_rate", self.learning_rate)?;
        ensure_nonneg("agnet.weight_decay", self.weight_decay)?;
        ensure_nonneg("agnet.attr_weight", self.attr_weight)?;
        ensure_nonneg("agnet.sim_weight", self.sim_weight)?;
        ensure_nonneg("agnet.quant_weight", self.quant_weight)?;
        ensure_nonneg("agnet.pair_weight", self.pair_weight)?;
        ensure_nonneg("agnet.decor_weight", self.decor_weight)?;
        if self.free_dims > 65536 {
            bail!("hyper-parameter agnet.free_dims = {} is implausibly large (at most 65536 free embedding dimensions)", self.free_dims);
        }
        if self.attr_weight == 0.0 && self.sim_weight == 0.0 {
            bail!("agnet: attr_weight and sim_weight are both 0; nothing would be learned");
        }
        ensure_fraction("agnet.dropout", self.dropout)?;
        ensure_nonneg("agnet.input_clip", self.input_clip)?;
        ensure_pos("agnet.input_power", self.input_power)?;
        ensure_nonneg("agnet.output_init_scale", self.output_init_scale)?;
        if self.batch_size < 2 || self.epochs == 0 {
            bail!("hyper-parameters agnet.batch_size (≥ 2) and agnet.epochs (≥ 1) are too small");
        }
        if self.pca_hash && (!self.hash_hidden.is_empty() || self.free_dims > 0) {
            bail!("agnet.pca_hash fits a linear hashing layer on the attribute coordinates: it needs agnet.hash_hidden = [] and agnet.free_dims = 0");
        }
        ensure_fraction("agnet.ridge_blend", self.ridge_blend)?;
        ensure_pos("agnet.blend_lambda", self.blend_lambda)?;
        if self.hidden.contains(&0) || self.hash_hidden.contains(&0) {
            bail!("hyper-parameters agnet.hidden / agnet.hash_hidden: every width must be at least 1");
        }
        zs_common::check_fit(METHOD, data, bits, self.use_unlabelled)
    }

    fn fit_checked(&self, data: &TrainSet, ctx: &FitContext) -> Result<AgnetModel> {
        self.fit_with_control(data, ctx, &RunControl::default())
    }
}
