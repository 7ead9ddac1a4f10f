//! SDCH training: the paper's three-phase schedule, B's ITQ initialisation and its eq.-10 update,
//! checkpoints and resume.

use super::*;

/// Which losses an epoch trains (the paper's schedule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// L_f, feature networks only.
    Features,
    /// γL_h, hash layer only.
    Hash,
    /// L_f + γL_h, everything.
    All,
}

impl SdchParams {
    pub fn phase(&self, epoch: usize) -> Phase {
        match (self.warmup_schedule, epoch) {
            (true, 1) => Phase::Features,
            (true, 2) => Phase::Hash,
            _ => Phase::All,
        }
    }

    /// The run configuration a checkpoint must match (everything but `epochs`).
    pub(super) fn config_json(&self, arch: &SdchArch) -> serde_json::Value {
        let mut p = serde_json::to_value(self).expect("serialisable");
        p.as_object_mut().unwrap().remove("epochs");
        serde_json::json!({ "arch": arch, "params": p })
    }

    /// The architecture for `data` at `bits`.
    pub fn arch(&self, data: &TrainSet, bits: usize) -> Result<SdchArch> {
        let image = match &data.views[IMAGE] {
            View::Features(x) => ImageInput::Features { dim: x.ncols() },
            View::Mapped(m) if !m.is_images() => ImageInput::Features { dim: m.array().row_len() },
            View::Images(_) | View::Mapped(_) => ImageInput::Images { size: self.image_size },
        };
        let text_dim = match &data.views[TEXT] {
            View::Features(x) => x.ncols(),
            View::Mapped(m) if !m.is_images() => m.array().row_len(),
            View::Images(_) | View::Mapped(_) => bail!("sdch: the text modality must hold feature vectors (bag of words), not images"),
        };
        Ok(SdchArch { image, text_dim, hidden: self.hidden.clone(), feature_dim: self.feature_dim, bits, dropout: self.dropout })
    }

    /// Fits with a [`RunControl`] (e.g. stop after an epoch, as a kill would).
    pub(crate) fn fit_with_control(&self, data: &TrainSet, ctx: &FitContext, control: &RunControl) -> Result<SdchModel> {
        let mut run = SdchRun::new(self, data, ctx, control)?;
        while let Some(epoch) = run.trainer.next_epoch() {
            run.epoch(epoch)?;
        }
        run.finish()
    }
}

/// One SDCH training run: networks, optimiser, B (n × r, ±1, one row per training item), the
/// inputs on the device, and the [`Trainer`]. [`SdchParams::fit`] is `new`, then [`SdchRun::epoch`]
/// for each epoch, then [`SdchRun::finish`]; benchmarks time [`SdchRun::train_batches`].
pub struct SdchRun<'a> {
    pub params: &'a SdchParams,
    pub trainer: Trainer,
    pub net: SdchNet,
    pub b: Option<Tensor>,
    pub(super) opt: Optimizer,
    pub(super) data: &'a TrainSet,
    pub(super) config: serde_json::Value,
    pub(super) img_in: Input<'a>,
    pub(super) txt_in: Input<'a>,
    /// Training rows labelled in both modalities (the only ones the losses see).
    pub(super) rows: Vec<usize>,
    pub(super) seed: u64,
    /// After a resume within an epoch: the sums of L_f and L_h of the epoch's trained batches.
    pub(super) resumed_sums: Option<(f64, f64)>,
}

impl<'a> SdchRun<'a> {
    /// Builds the networks (seeded initialisation, input statistics, pretrained AlexNet layers),
    /// the optimiser's groups, and resumes from the checkpoint when `ctx.resume`.
    pub fn new(params: &'a SdchParams, data: &'a TrainSet, ctx: &FitContext, control: &RunControl) -> Result<Self> {
        let arch = params.arch(data, ctx.bits)?;
        let config = params.config_json(&arch);
        let mut trainer = Trainer::new(METHOD, ctx, params.epochs, control)?;
        let device = trainer.device;
        let net = SdchNet::new(&arch, device);
        init_default(&net.vs, ctx.seed, &[])?;
        if params.standardize {
            if let ImageInput::Features { .. } = arch.image {
                net.set_input_stats(IMAGE, &data.views[IMAGE])?;
            }
            net.set_input_stats(TEXT, &data.views[TEXT])?;
        }
        let pretrained: Vec<String> = match (&params.pretrained, &arch.image) {
            (Some(p), ImageInput::Images { .. }) => {
                crate::deep::pretrained::load_alexnet(&net.vs, "img.", p, &["classifier.6.weight", "classifier.6.bias"])?
            }
            _ => vec![],
        };
        // Parameter groups: 0 = feature networks, 1 = pretrained layers, 2 = hash layer.
        let groups = groups_from_var_store(
            &net.vs,
            |name| {
                if name.starts_with("fc4.") {
                    Some(2)
                } else if pretrained.iter().any(|p| p == name) {
                    Some(1)
                } else {
                    Some(0)
                }
            },
            &[("features", params.lr_features), ("pretrained", params.lr_features * params.pretrained_lr_factor), ("hash", params.lr_hash)],
        )?;
        let mut opt = Optimizer::new(OptimizerConfig { kind: params.optimizer, weight_decay: params.weight_decay }, groups);
        let n = data.len();
        let rows: Vec<usize> = (0..n).filter(|&i| data.labelled[IMAGE][i] && data.labelled[TEXT][i]).collect();
        if rows.len() < 2 {
            bail!("sdch needs at least 2 training items labelled in both modalities, found {}", rows.len());
        }
        let img_in = Input::new(IMAGE, &data.views[IMAGE], &arch, device)?;
        let txt_in = Input::new(TEXT, &data.views[TEXT], &arch, device)?;
        let mut b = None;
        let mut resumed_sums = None;
        if let Some(ck) = trainer.load_for_resume(&config)? {
            ck.restore_vars(&net.vs)?;
            opt.restore(&ck)?;
            b = restore_b(&ck, n, arch.bits, device)?;
            trainer.restore(&ck)?;
            if ck.meta.step > 0 {
                let sum = |k: &str| {
                    ck.meta
                        .extra
                        .get(k)
                        .and_then(|v| v.as_f64())
                        .ok_or_else(|| anyhow!("{}: corrupt checkpoint: {k} missing", ck.path.display()))
                };
                resumed_sums = Some((sum("sum_f")?, sum("sum_h")?));
            }
        }
        Ok(Self { params, trainer, net, b, opt, data, config, img_in, txt_in, rows, seed: ctx.seed, resumed_sums })
    }

    /// One epoch of the schedule: B's ITQ initialisation when first needed, the mini-batches,
    /// B's update (eq. 10), the log line and the checkpoint.
    pub fn epoch(&mut self, epoch: usize) -> Result<()> {
        let phase = self.params.phase(epoch);
        if phase != Phase::Features && self.b.is_none() {
            self.init_b()?;
        }
        let (sum_f, sum_h) = self.train_batches(phase)?;
        if phase != Phase::Features {
            self.update_b()?;
        }
        let loss = self.trainer.mean_batch_loss();
        self.trainer.end_epoch(loss, &format!("phase {phase:?} L_f {sum_f:.4} L_h {sum_h:.4}"))?;
        let b = self.b.as_ref().map(|b| b.shallow_clone());
        let state: Vec<(&str, &Tensor)> = b.as_ref().map(|b| vec![("B", b)]).unwrap_or_default();
        self.trainer.checkpoint(&self.net.vs, &self.opt, &self.config, &state, serde_json::json!({ "b_initialised": b.is_some() }))
    }

    /// One pass over shuffled mini-batches of the labelled rows, training what `phase` trains.
    /// Returns the sums of L_f and L_h over the batches.
    pub fn train_batches(&mut self, phase: Phase) -> Result<(f64, f64)> {
        self.opt.set_enabled("features", phase != Phase::Hash)?;
        self.opt.set_enabled("pretrained", phase != Phase::Hash)?;
        self.opt.set_enabled("hash", phase != Phase::Features)?;
        if phase != Phase::Features && self.b.is_none() {
            bail!("internal: B must be initialised before training the hash layer");
        }
        let device = self.trainer.device;
        let beta = [self.params.beta1, self.params.beta2, self.params.beta3];
        let (mut sum_f, mut sum_h) = self.resumed_sums.take().unwrap_or((0.0, 0.0));
        for batch in self.trainer.batches(self.rows.len(), self.params.batch_size) {
            let replay = self.trainer.replaying();
            let idx: Vec<usize> = batch.iter().map(|&i| self.rows[i]).collect();
            let it = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(device);
            // The batch's label rows (copied per batch, like its inputs).
            let lab = |m: usize| array_to_tensor(self.data.labels[m].select(Axis(0), &idx).mapv(|v| v as f32).view(), device);
            let (bx, by) = (lab(IMAGE), lab(TEXT));
            let x = self.img_in.batch(&idx, device)?;
            let y = self.txt_in.batch(&idx, device)?;
            if replay {
                // Trained before the checkpoint this run resumed from: only its random draws.
                tch::no_grad(|| self.batch_losses(phase, &x, &y, &bx, &by, &it, beta));
                continue;
            }
            let (lf, lh) = self.batch_losses(phase, &x, &y, &bx, &by, &it, beta);
            let loss = match (&lf, &lh) {
                (Some(f), Some(h)) => f + h * self.params.gamma,
                (Some(f), None) => f.shallow_clone(),
                (None, Some(h)) => h * self.params.gamma,
                (None, None) => unreachable!("every phase has a loss"),
            };
            self.opt.backward_step(&loss)?;
            let v = loss.double_value(&[]);
            if !v.is_finite() {
                bail!("sdch: the loss became {v} in epoch {}; lower the learning rates", self.trainer.epoch + 1);
            }
            sum_f += lf.map_or(0.0, |t| t.double_value(&[]));
            sum_h += lh.map_or(0.0, |t| t.double_value(&[]));
            self.trainer.batch_done(v);
            let b = self.b.as_ref().map(|b| b.shallow_clone());
            let state: Vec<(&str, &Tensor)> = b.as_ref().map(|b| vec![("B", b)]).unwrap_or_default();
            let extra = serde_json::json!({ "b_initialised": b.is_some(), "sum_f": sum_f, "sum_h": sum_h });
            self.trainer.step_end(&self.net.vs, &self.opt, &state, extra)?;
        }
        Ok((sum_f, sum_h))
    }

    /// The fitted model (B initialised by ITQ first if no epoch trained the hash layer).
    pub fn finish(mut self) -> Result<SdchModel> {
        if self.b.is_none() {
            self.init_b()?;
        }
        let b = tensor_to_array(self.b.as_ref().unwrap())?;
        let train_codes = BinaryCodes::from_signs(b.view());
        Ok(SdchModel { params: self.params.clone(), net: Mutex::new(self.net), train_codes, history: self.trainer.history.clone() })
    }

    /// L_f and L_h of one batch as the phase needs them (L_h unscaled by γ).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn batch_losses(
        &self,
        phase: Phase,
        x: &Tensor,
        y: &Tensor,
        lx: &Tensor,
        ly: &Tensor,
        idx: &Tensor,
        beta: [f64; 3],
    ) -> (Option<Tensor>, Option<Tensor>) {
        let feats = || (self.net.image_features(x, true), self.net.text_features(y, true));
        let (fx, fy) = if phase == Phase::Hash {
            tch::no_grad(|| (self.net.image_features(x, false), self.net.text_features(y, false)))
        } else {
            feats()
        };
        let lf = (phase != Phase::Hash).then(|| loss_f(&fx, &fy, &pair_similarity(lx, ly)));
        let lh = (phase != Phase::Features).then(|| {
            let z = self.net.hash(&Tensor::cat(&[&fx, &fy], 0));
            let bb = self.b.as_ref().expect("B initialised").index_select(0, idx);
            let b2 = Tensor::cat(&[&bb, &bb], 0);
            let sh = hash_similarity(&Tensor::cat(&[lx, ly], 0));
            loss_h(&z, &b2, &sh, beta, self.params.decorrelation_scale)
        });
        (lf, lh)
    }

    pub(super) fn all_z(&self) -> Result<(Array2<f32>, Array2<f32>)> {
        let chunk = self.params.encode_batch;
        Ok((self.net.hash_outputs(IMAGE, &self.data.views[IMAGE], chunk)?, self.net.hash_outputs(TEXT, &self.data.views[TEXT], chunk)?))
    }

    /// B initialised by ITQ on Z: R, μ from ITQ on the centred fc4 outputs of every training
    /// image and text; fc4 becomes z ↦ (z − μ)R (weights Rᵀ W, bias (b − μ)R) so Z and B agree;
    /// B = sgn(z_x + z_y) of the rotated outputs.
    pub fn init_b(&mut self) -> Result<()> {
        let (zx, zy) = self.all_z()?;
        let n = self.data.len();
        let v = ndarray::concatenate(Axis(0), &[zx.view(), zy.view()])?.mapv(|x| x as f64);
        let mu = v.mean_axis(Axis(0)).unwrap();
        let vc = &v - &mu;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x5DC4);
        let (rot, _) = itq(vc.view(), self.params.itq_iterations, &mut rng)?;
        let vars = self.net.vs.variables();
        let (w, bias) = (&vars["fc4.weight"], &vars["fc4.bias"]);
        let dev = w.device();
        let r_t = array_to_tensor(rot.mapv(|x| x as f32).view(), dev);
        let mu_t = Tensor::from_slice(&mu.mapv(|x| x as f32).to_vec()).to_device(dev);
        tch::no_grad(|| {
            let new_w = r_t.tr().matmul(w);
            let new_b = (bias - &mu_t).unsqueeze(0).matmul(&r_t).squeeze_dim(0);
            w.shallow_clone().copy_(&new_w);
            bias.shallow_clone().copy_(&new_b);
        });
        let rotated = (&vc.slice(ndarray::s![..n, ..]) + &vc.slice(ndarray::s![n.., ..])).dot(&rot);
        self.b = Some(array_to_tensor(rotated.mapv(|x| if x >= 0.0 { 1.0f32 } else { -1.0 }).view(), dev));
        Ok(())
    }

    /// Eq. 10: B = sgn(Z), one code per item: sgn(z_x + z_y), the minimiser of ‖Z − B‖² when an
    /// item's image and text columns share a column of B.
    pub fn update_b(&mut self) -> Result<()> {
        let (zx, zy) = self.all_z()?;
        let s = (zx + zy).mapv(|x| if x >= 0.0 { 1.0f32 } else { -1.0 });
        self.b = Some(array_to_tensor(s.view(), self.net.vs.device()));
        Ok(())
    }
}

pub(super) fn restore_b(ck: &Checkpoint, n: usize, bits: usize, device: Device) -> Result<Option<Tensor>> {
    let has_b = ck
        .meta
        .extra
        .get("b_initialised")
        .and_then(|v| v.as_bool())
        .ok_or_else(|| anyhow!("{}: corrupt checkpoint: b_initialised missing", ck.path.display()))?;
    if !has_b {
        return Ok(None);
    }
    let b = ck.state("B")?;
    if b.size() != [n as i64, bits as i64] {
        bail!("{}: state.B is {:?}, expected [{n}, {bits}] (another training set?)", ck.path.display(), b.size());
    }
    Ok(Some(b.to_kind(Kind::Float).to_device(device)))
}

impl Fit for SdchParams {
    type Model = SdchModel;

    fn check(&self, data: &TrainSet, bits: usize) -> Result<()> {
        if self.epochs == 0 {
            bail!("sdch: epochs must be at least 1");
        }
        if self.batch_size < 2 {
            bail!("sdch: batch_size must be at least 2 (the losses compare items of a batch), found {}", self.batch_size);
        }
        if self.feature_dim == 0 || self.hidden.contains(&0) {
            bail!("sdch: feature_dim and every hidden width must be at least 1");
        }
        if self.encode_batch == 0 || self.itq_iterations == 0 {
            bail!("sdch: encode_batch and itq_iterations must be at least 1");
        }
        ensure_pos("sdch.lr_features", self.lr_features)?;
        ensure_pos("sdch.lr_hash", self.lr_hash)?;
        for (n, v) in [
            ("gamma", self.gamma),
            ("beta1", self.beta1),
            ("beta2", self.beta2),
            ("beta3", self.beta3),
            ("pretrained_lr_factor", self.pretrained_lr_factor),
            ("weight_decay", self.weight_decay),
        ] {
            ensure_nonneg(&format!("sdch.{n}"), v)?;
        }
        ensure_fraction("sdch.dropout", self.dropout)?;
        if data.n_modalities() != 2 {
            bail!("sdch works on two modalities (image, text), found {}", data.n_modalities());
        }
        let _ = bits;
        let images = match &data.views[IMAGE] {
            View::Images(_) => true,
            View::Mapped(m) => m.is_images(),
            View::Features(_) => false,
        };
        match images {
            true => {
                if self.image_size < 63 {
                    bail!("sdch: AlexNet needs images of at least 63×63 pixels; image_size is {}", self.image_size);
                }
                if let Some(p) = &self.pretrained {
                    if !p.is_file() {
                        bail!("sdch.pretrained: {} does not exist (see pretrained/README.md)", p.display());
                    }
                }
            }
            false => {
                if let Some(p) = &self.pretrained {
                    bail!("sdch.pretrained ({}) is given, but the image modality holds feature vectors, not images", p.display());
                }
            }
        }
        let arch = self.arch(data, bits)?;
        // f32 parameters with their Adam moments and gradients (4 copies), the inputs on the
        // device, B and the encoded outputs (n × bits).
        let params = arch.parameter_count();
        let n = data.len() as f64;
        let inputs: f64 = data
            .views
            .iter()
            .map(|v| match v {
                View::Features(x) => x.len() as f64,
                // Images and mapped rows are read batch by batch.
                View::Images(_) | View::Mapped(_) => 0.0,
            })
            .sum();
        let bytes = 4.0 * (4.0 * params + inputs + 4.0 * n * bits as f64);
        crate::method::ensure_memory("sdch", bits, bytes, "network weights with their optimiser state, inputs and codes")?;
        Ok(())
    }

    fn fit_checked(&self, data: &TrainSet, ctx: &FitContext) -> Result<SdchModel> {
        self.fit_with_control(data, ctx, &RunControl::default())
    }
}
