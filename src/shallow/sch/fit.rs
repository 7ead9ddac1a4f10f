//! The SCH fit: initialisation, the alternating block updates over all rows in memory, or over row
//! blocks from sufficient statistics when the features do not fit in memory.

use super::*;

impl Fit for SchParams {
    type Model = SchModel;

    fn check(&self, data: &TrainSet, bits: usize) -> Result<()> {
        if bits == 0 {
            bail!("bits must be at least 1");
        }
        ensure_nonneg("sch.alpha", self.alpha)?;
        ensure_nonneg("sch.beta", self.beta)?;
        ensure_nonneg("sch.mu", self.mu)?;
        ensure_pos("sch.rho", self.rho)?;
        ensure_nonneg("sch.tol", self.tol)?;
        let m = data.n_modalities();
        if self.lambda.len() != m {
            bail!("sch.lambda has {} weights but the data has {m} modalities; give one weight per modality", self.lambda.len());
        }
        for (t, &l) in self.lambda.iter().enumerate() {
            ensure_pos(&format!("sch.lambda[{t}]"), l)?;
        }
        let s = self.lambda_sum();
        if (s - 1.0).abs() > 1e-9 {
            let norm: Vec<String> = self.lambda.iter().map(|l| format!("{}", l / s)).collect();
            bail!("sch.lambda must sum to 1 (the paper's constraint Σλₜ = 1), found sum {s}; e.g. use [{}]", norm.join(", "));
        }
        if self.max_iter == 0 {
            bail!("sch.max_iter must be at least 1");
        }
        if self.anchors == 0 {
            bail!("sch.anchors must be at least 1");
        }
        if !self.modality_anchors.is_empty() && self.modality_anchors.len() != m {
            bail!(
                "sch.modality_anchors has {} values but the data has {m} modalities; give one per modality or none",
                self.modality_anchors.len()
            );
        }
        if let Some(t) = self.modality_anchors.iter().position(|&a| a == 0) {
            bail!("sch.modality_anchors[{t}] must be at least 1");
        }
        if !self.sigma_scale.is_empty() && self.sigma_scale.len() != m {
            bail!("sch.sigma_scale has {} values but the data has {m} modalities; give one per modality or none", self.sigma_scale.len());
        }
        for (t, &v) in self.sigma_scale.iter().enumerate() {
            ensure_pos(&format!("sch.sigma_scale[{t}]"), v)?;
        }
        if let Some(rr) = self.refit_rho {
            ensure_pos("sch.refit_rho", rr)?;
        }
        for (t, v) in data.views.iter().enumerate() {
            v.features("sch", t)?;
        }
        if data.n_classes() == 0 {
            bail!("SCH needs class labels, but the data has no classes");
        }
        let rows = fitted_rows(data);
        if rows.is_empty() {
            bail!("SCH needs labelled training rows, but no row is labelled in every modality");
        }
        if let Some(&i) = rows.iter().find(|&&i| data.labels.iter().all(|l| l.row(i).iter().all(|&v| v == 0))) {
            bail!("SCH: training row {i} is marked labelled but has no class");
        }
        // More anchors than labelled rows are capped at the rows when fitting (capped_anchors).
        // Largest f64 arrays: Φₜ (n × aₜ), ΦₜᵀΦₜ and its factor, Wₜ, B, F and their products
        // (n × bits), R and the Hadamard class codes (≥ bits × bits).
        let (n, c, k) = (data.len() as f64, data.n_classes() as f64, bits as f64);
        let big = ((data.n_classes() + 1).max(bits).next_power_of_two()) as f64;
        let per_modality: f64 = (0..m)
            .map(|t| if self.modality_anchors.is_empty() { self.anchors } else { self.modality_anchors[t] } as f64)
            .map(|a| n * a + 2.0 * a * a + a * k)
            .sum();
        let bytes = 8.0 * (per_modality + 4.0 * n * k + 2.0 * big * big + 2.0 * k * k + n * c);
        crate::method::ensure_memory("sch", bits, bytes, "RBF features, code and rotation matrices")?;
        Ok(())
    }

    /// Keeps the RBF features Φₜ in memory when they take at most [`STREAM_FEATURES_ABOVE_BYTES`];
    /// above, recomputes them block by block in every pass ([`SchParams::fit_streamed`]).
    fn fit_checked(&self, data: &TrainSet, ctx: &FitContext) -> Result<SchModel> {
        let rows = fitted_rows(data).len();
        let bytes: usize = (0..data.n_modalities()).map(|t| rows * self.anchors_of(t) * std::mem::size_of::<f64>()).sum();
        if bytes > STREAM_FEATURES_ABOVE_BYTES {
            self.fit_streamed_checked(data, ctx)
        } else {
            self.fit_in_memory(data, ctx)
        }
    }
}

/// Above this many bytes of RBF features (Σₜ n cₜ × 8, n = fitted rows, cₜ = anchors), SCH does
/// not keep Φₜ but recomputes it block by block in each pass ([`SchParams::fit_streamed`]).
pub const STREAM_FEATURES_ABOVE_BYTES: usize = 2 << 30;

/// The rows SCH fits on: labelled in every modality.
pub(super) fn fitted_rows(data: &TrainSet) -> Vec<usize> {
    (0..data.len()).filter(|&i| data.labelled.iter().all(|l| l[i])).collect()
}

/// Rows s..e of Y (fitted rows, labels = union over modalities, as [`TrainSet::common_labelled`]).
pub(super) fn label_block(data: &TrainSet, rows: Option<&[usize]>, s: usize, e: usize) -> Array2<f64> {
    let mut y = Array2::<f64>::zeros((e - s, data.n_classes()));
    for (mut out, i) in y.outer_iter_mut().zip(s..e) {
        let i = rows.map_or(i, |r| r[i]);
        for l in &data.labels {
            for (o, &v) in out.iter_mut().zip(l.row(i)) {
                if v != 0 {
                    *o = 1.0;
                }
            }
        }
    }
    y
}

/// Per-part sums of one streamed pass over the fitted rows.
pub(super) struct Sums {
    /// Row terms of J (all but the ridge) at the state the pass started from.
    pub(super) j: f64,
    /// Φₜᵀ F per modality (cₜ × k).
    pub(super) phi_t_f: Vec<Array2<f64>>,
    pub(super) ftf: Array2<f64>,
    pub(super) fty: Array2<f64>,
    pub(super) ytf: Array2<f64>,
    pub(super) ftb: Array2<f64>,
    /// The first error met in this part.
    pub(super) err: Option<anyhow::Error>,
}

impl Sums {
    pub(super) fn zeros(anchors: &[usize], k: usize, c: usize) -> Self {
        let z = |r, q| Array2::<f64>::zeros((r, q));
        Self {
            j: 0.0,
            phi_t_f: anchors.iter().map(|&a| z(a, k)).collect(),
            ftf: z(k, k),
            fty: z(k, c),
            ytf: z(c, k),
            ftb: z(k, k),
            err: None,
        }
    }
    /// Adds F's block sums: FᵀF (upper triangle), FᵀY, YᵀF, FᵀB.
    pub(super) fn add_f(&mut self, f: ArrayView2<f64>, y: ArrayView2<f64>, b: ArrayView2<f64>) {
        gram_add(f, &mut self.ftf);
        general_mat_mul(1.0, &f.t(), &y, 1.0, &mut self.fty);
        general_mat_mul(1.0, &y.t(), &f, 1.0, &mut self.ytf);
        general_mat_mul(1.0, &f.t(), &b, 1.0, &mut self.ftb);
    }
    /// The parts' sums added in part order (the first error wins).
    pub(super) fn total(parts: Vec<Sums>) -> Result<Sums> {
        let mut it = parts.into_iter();
        let mut t = it.next().expect("at least one row");
        for p in it {
            if t.err.is_some() {
                break;
            }
            t.j += p.j;
            t.phi_t_f.iter_mut().zip(&p.phi_t_f).for_each(|(a, b)| *a += b);
            t.ftf += &p.ftf;
            t.fty += &p.fty;
            t.ytf += &p.ytf;
            t.ftb += &p.ftb;
            t.err = p.err;
        }
        if let Some(e) = t.err.take() {
            return Err(e);
        }
        mirror_upper(&mut t.ftf);
        Ok(t)
    }
}

impl SchParams {
    /// Fits SCH without keeping the n × cₜ RBF features: every pass over the rows recomputes
    /// φₜ for one block of rows at a time (`fit_streamed`, `fold_parts` blocks), so
    /// memory is O(n(k + d) + c² + block × c) instead of O(n Σcₜ), and nothing n × C is formed
    /// either (Y is built per block from the labels). The updates are those of the in-memory fit,
    /// fused so that one pass per sweep suffices: the pass that computes ΦₜWₜ for J (and F's
    /// right-hand side) also solves the rows of the next F (eq. 9 is row-wise) and accumulates
    /// ΦₜᵀF, FᵀF, FᵀY, YᵀF and FᵀB for the next U, V, Wₜ and R; when J says stop, that next F is
    /// discarded. Results equal the in-memory fit's up to the order of floating-point sums.
    /// `fit` chooses this path by itself above [`STREAM_FEATURES_ABOVE_BYTES`].
    pub fn fit_streamed(&self, data: &TrainSet, ctx: &FitContext) -> Result<SchModel> {
        data.validate()?;
        self.check(data, ctx.bits)?;
        self.fit_streamed_checked(data, ctx)
    }

    pub(super) fn fit_streamed_checked(&self, data: &TrainSet, ctx: &FitContext) -> Result<SchModel> {
        let k = ctx.bits;
        let rows = fitted_rows(data);
        let n = rows.len();
        let sel = if n == data.len() { None } else { Some(rows.as_slice()) };
        let m = data.n_modalities();
        let nc = data.n_classes();
        let xs: Vec<ArrayView2<f32>> = (0..m).map(|t| data.views[t].features("sch", t).map(|x| x.view())).collect::<Result<_>>()?;
        let mut rng = seeded_rng(ctx.seed, 0);
        let mut timings = FitTimings::default();
        let clock = std::time::Instant::now();

        // RBF maps: the same anchor draws as the in-memory fit, σ and mean by streaming.
        let rbf = (0..m)
            .map(|t| {
                {
                    let name =
                        if self.modality_anchors.is_empty() { "sch.anchors".to_string() } else { format!("sch.modality_anchors[{t}]") };
                    RbfMap::fit_streamed(xs[t], sel, capped_anchors(&name, self.anchors_of(t), n), self.sigma_scale(t), &mut rng)
                }
                .with_context(|| format!("SCH: RBF features of modality {t}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let anchors: Vec<usize> = rbf.iter().map(|r| r.n_anchors()).collect();
        let phi_block = |t: usize, s: usize, e: usize| rbf[t].features_of(row_block(xs[t], sel, s, e).view());

        // F₀ = YG and its sums (see the in-memory fit for the initialisation).
        let g = match self.class_codes {
            ClassCodes::Hadamard => hadamard_class_codes(nc, k, &mut rng),
            ClassCodes::Random => random_class_codes(nc, k, &mut rng),
        };
        let mut f = Array2::<f64>::zeros((n, k));
        let init = fold_parts_mut(
            &mut f,
            || (Sums::zeros(&[], k, nc), Array2::<f64>::zeros((nc, nc))),
            |s, e, mut fb, (sums, yty)| {
                let y = label_block(data, sel, s, e);
                general_mat_mul(1.0, &y, &g, 0.0, &mut fb);
                sums.add_f(fb.view(), y.view(), sgn(fb.view()).view());
                gram_add(y.view(), yty);
            },
        );
        let (init, yty): (Vec<Sums>, Vec<Array2<f64>>) = init.into_iter().unzip();
        let init = Sums::total(init)?;
        let mut yty = sum_in_order(yty, (nc, nc));
        mirror_upper(&mut yty);
        let mut u = u_from_sums(self, init.ftf, init.fty)?;
        let mut v = v_from_sums(self, yty.clone(), init.ytf)?;
        let mut r = procrustes_nearest(init.ftb.view(), Array2::<f64>::eye(k).view()).context("SCH update_r (eq. 20)")?;

        // ΦₜᵀΦₜ (cached, factorised for eq. 18) and ΦₜᵀF₀, one pass per modality.
        let mut wfac = Vec::with_capacity(m);
        let mut grams = Vec::new(); // kept only for the refit
        let mut w = Vec::with_capacity(m);
        for (t, &c) in anchors.iter().enumerate() {
            let parts = fold_parts(
                n,
                || (Array2::<f64>::zeros((c, c)), Array2::<f64>::zeros((c, k))),
                |s, e, (gram, ptf)| {
                    let ph = phi_block(t, s, e);
                    gram_add(ph.view(), gram);
                    general_mat_mul(1.0, &ph.t(), &f.slice(s![s..e, ..]), 1.0, ptf);
                },
            );
            let (gram, ptf): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
            let mut gram = sum_in_order(gram, (c, c));
            mirror_upper(&mut gram);
            wfac.push(w_factor(self, gram.view(), self.lambda[t])?);
            w.push(wfac[t].solve(sum_in_order(ptf, (c, k)).view()).context("SCH update_w (eq. 18)")?);
            if self.refit_hash {
                grams.push(gram);
            }
        }
        timings.features_s = clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();
        let mut b = Array2::<f64>::zeros((n, k));
        let set_b = |b: &mut Array2<f64>, f: &Array2<f64>, r: &Array2<f64>| {
            fold_parts_mut(b, || (), |s, e, mut bb, _| bb.assign(&sgn(f.slice(s![s..e, ..]).dot(r).view())));
        };
        set_b(&mut b, &f, &r);

        // Sweeps. Pass i computes J of the current state and, unless the sweeps are used up, the
        // rows of the next F with the sums of the rest of the sweep.
        let mut history = Vec::new();
        let mut sweeps = 0;
        loop {
            let update = sweeps < self.max_iter;
            let chol = f_system(self, u.view())
                .cholesky(UPLO::Lower)
                .context("SCH update_f (eq. 9): the system matrix is not positive definite")?;
            let parts = fold_parts_mut(
                &mut f,
                || Sums::zeros(&anchors, k, nc),
                |s, e, mut fb, sums| {
                    if sums.err.is_some() {
                        return;
                    }
                    let y = label_block(data, sel, s, e);
                    let bb = b.slice(s![s..e, ..]);
                    let phi: Vec<Array2<f64>> = (0..m).map(|t| phi_block(t, s, e)).collect();
                    let pw: Vec<Array2<f64>> = phi.iter().zip(&w).map(|(ph, wt)| ph.dot(wt)).collect();
                    sums.j += objective_rows(self, y.view(), fb.view(), u.view(), v.view(), bb, r.view(), &pw);
                    if !update {
                        return;
                    }
                    match solve_right_cholesky(f_rhs(self, y.view(), u.view(), v.view(), bb, r.view(), &pw).view(), &chol) {
                        Ok(next) => fb.assign(&next),
                        Err(e) => {
                            sums.err = Some(e.context("SCH update_f (eq. 9)"));
                            return;
                        }
                    }
                    for (ptf, ph) in sums.phi_t_f.iter_mut().zip(&phi) {
                        general_mat_mul(1.0, &ph.t(), &fb, 1.0, ptf);
                    }
                    sums.add_f(fb.view(), y.view(), bb);
                },
            );
            let sums = Sums::total(parts)?;
            let j = sums.j + self.rho * ridge(u.view(), v.view(), &w);
            let prev = history.last().copied();
            history.push(j);
            if prev.is_some_and(|p: f64| p - j <= self.tol * p.abs()) || !update {
                break;
            }
            u = u_from_sums(self, sums.ftf, sums.fty)?;
            v = v_from_sums(self, yty.clone(), sums.ytf)?;
            for (t, ptf) in sums.phi_t_f.iter().enumerate() {
                w[t] = wfac[t].solve(ptf.view()).context("SCH update_w (eq. 18)")?;
            }
            r = procrustes_nearest(sums.ftb.view(), r.view()).context("SCH update_r (eq. 20)")?;
            set_b(&mut b, &f, &r);
            sweeps += 1;
        }
        drop(f);
        timings.sweeps_s = clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();

        // Optional refit to the learned codes: one more pass for Φₜᵀ(BRᵀ).
        let refit = if self.refit_hash {
            let ridge_w = self.refit_rho.unwrap_or(self.rho);
            let mut ws = Vec::with_capacity(m);
            for (t, &c) in anchors.iter().enumerate() {
                let parts = fold_parts(
                    n,
                    || Array2::<f64>::zeros((c, k)),
                    |s, e, acc| {
                        let target = b.slice(s![s..e, ..]).dot(&r.t());
                        general_mat_mul(1.0, &phi_block(t, s, e).t(), &target, 1.0, acc);
                    },
                );
                ws.push(
                    refit_w_from_sum(grams[t].view(), ridge_w, sum_in_order(parts, (c, k)).view())
                        .with_context(|| format!("modality {t}"))?,
                );
            }
            Some(ws)
        } else {
            None
        };

        // Codes of every training row: B for the fitted rows, sgn((Σₜ λₜ φₜWₜ) R) for the others,
        // block by block.
        let mut codes = BinaryCodes::from_signs(b.view());
        if let Some(rows) = sel {
            let mut full = Array2::<f64>::zeros((data.len(), k));
            for (ri, &i) in rows.iter().enumerate() {
                full.row_mut(i).assign(&b.row(ri));
            }
            drop(b);
            let mut fitted = vec![false; data.len()];
            rows.iter().for_each(|&i| fitted[i] = true);
            let others: Vec<usize> = (0..data.len()).filter(|&i| !fitted[i]).collect();
            for chunk in others.chunks(crate::numerics::blocked::BLOCK_ROWS) {
                let mut fo = Array2::<f64>::zeros((chunk.len(), k));
                for t in 0..m {
                    let ph = rbf[t].transform(xs[t].select(Axis(0), chunk).view())?;
                    fo.scaled_add(self.lambda[t], &par_dot(ph.view(), w[t].view()));
                }
                for (row, &i) in sgn(fo.dot(&r).view()).outer_iter().zip(chunk) {
                    full.row_mut(i).assign(&row);
                }
            }
            codes = sign_codes(full.view());
        }
        if let Some(ws) = refit {
            w = ws;
        }
        timings.codes_s = clock.elapsed().as_secs_f64();
        let mut model = SchModel::from_parts(k, self.clone(), rbf, w, r, codes, history, n);
        model.timings = timings;
        Ok(model)
    }

    pub(super) fn fit_in_memory(&self, data: &TrainSet, ctx: &FitContext) -> Result<SchModel> {
        let k = ctx.bits;
        let (rows, y) = data.common_labelled();
        let all_rows = rows.len() == data.len();
        let m = data.n_modalities();
        let mut rng = seeded_rng(ctx.seed, 0);
        let mut timings = FitTimings::default();
        let clock = std::time::Instant::now();

        // RBF features of the fitted rows, their Gram matrices and the fixed W systems.
        let mut rbf = Vec::with_capacity(m);
        let mut phi = Vec::with_capacity(m);
        let mut wfac = Vec::with_capacity(m);
        let mut grams = Vec::new(); // kept only for the refit
        for t in 0..m {
            let x = data.views[t].features("sch", t)?;
            let name = if self.modality_anchors.is_empty() { "sch.anchors".to_string() } else { format!("sch.modality_anchors[{t}]") };
            let anchors = capped_anchors(&name, self.anchors_of(t), rows.len());
            let (map, ph) = if all_rows {
                RbfMap::fit(x.view(), anchors, self.sigma_scale(t), &mut rng)
            } else {
                RbfMap::fit(x.select(Axis(0), &rows).view(), anchors, self.sigma_scale(t), &mut rng)
            }
            .with_context(|| format!("SCH: RBF features of modality {t}"))?;
            let gram = par_gram(ph.view()); // cached φᵀφ
            wfac.push(w_factor(self, gram.view(), self.lambda[t])?);
            if self.refit_hash {
                grams.push(gram);
            }
            rbf.push(map);
            phi.push(ph);
        }

        timings.features_s = clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();

        // Initialisation: F₀ = YG (a random ±1 code per class, see `ClassCodes`) and B₀ = sgn(F₀);
        // then U, V, W from F₀ (eqs. 12, 15, 18), R from F₀ and B₀ (20) and B (24), so that every
        // block is consistent before the first sweep.
        let c = y.ncols();
        let g = match self.class_codes {
            ClassCodes::Hadamard => hadamard_class_codes(c, k, &mut rng),
            ClassCodes::Random => random_class_codes(c, k, &mut rng),
        };
        let mut f = y.dot(&g);
        let b0 = sgn(f.view());
        let mut u = update_u(self, f.view(), y.view())?;
        let mut v = update_v(self, f.view(), y.view())?;
        let mut w: Vec<Array2<f64>> = Vec::with_capacity(m);
        for t in 0..m {
            w.push(update_w(&wfac[t], phi[t].view(), f.view())?);
        }
        let mut pw: Vec<Array2<f64>> = (0..m).map(|t| par_dot(phi[t].view(), w[t].view())).collect();
        let mut r = update_r(f.view(), b0.view(), Array2::<f64>::eye(k).view())?;
        let mut b = update_b(f.view(), r.view());
        let mut history = vec![objective(self, y.view(), f.view(), u.view(), v.view(), b.view(), r.view(), &w, &pw)];

        for _ in 0..self.max_iter {
            f = update_f(self, y.view(), u.view(), v.view(), b.view(), r.view(), &pw)?;
            u = update_u(self, f.view(), y.view())?;
            v = update_v(self, f.view(), y.view())?;
            for t in 0..m {
                w[t] = update_w(&wfac[t], phi[t].view(), f.view())?;
                pw[t] = par_dot(phi[t].view(), w[t].view());
            }
            r = update_r(f.view(), b.view(), r.view())?;
            b = update_b(f.view(), r.view());
            let j = objective(self, y.view(), f.view(), u.view(), v.view(), b.view(), r.view(), &w, &pw);
            let prev = *history.last().expect("non-empty");
            history.push(j);
            if prev - j <= self.tol * prev.abs() {
                break;
            }
        }
        timings.sweeps_s = clock.elapsed().as_secs_f64();
        let clock = std::time::Instant::now();
        // Optional out-of-sample refit to the learned codes; it replaces Wₜ only after the codes
        // of unfitted rows below, which use the alternation's Wₜ. Φ is freed before those codes.
        let refit = if self.refit_hash {
            let ridge = self.refit_rho.unwrap_or(self.rho);
            let ws = (0..m)
                .map(|t| refit_w(grams[t].view(), ridge, phi[t].view(), b.view(), r.view()).with_context(|| format!("modality {t}")))
                .collect::<Result<Vec<_>>>()?;
            Some(ws)
        } else {
            None
        };
        drop((phi, grams));

        // Unified codes of every training row: B for the fitted rows; for rows outside them
        // sgn((Σₜ λₜ φₜWₜ) R) (see the module docs).
        let train_codes = if all_rows {
            sign_codes(b.view())
        } else {
            let others: Vec<usize> = {
                let mut fitted = vec![false; data.len()];
                rows.iter().for_each(|&i| fitted[i] = true);
                (0..data.len()).filter(|&i| !fitted[i]).collect()
            };
            let mut full = Array2::<f64>::zeros((data.len(), k));
            for (ri, &i) in rows.iter().enumerate() {
                full.row_mut(i).assign(&b.row(ri));
            }
            if !others.is_empty() {
                let mut fo = Array2::<f64>::zeros((others.len(), k));
                for t in 0..m {
                    let x = data.views[t].features("sch", t)?.select(Axis(0), &others);
                    let ph = rbf[t].transform(x.view())?;
                    fo.scaled_add(self.lambda[t], &par_dot(ph.view(), w[t].view()));
                }
                let bo = sgn(fo.dot(&r).view());
                for (oi, &i) in others.iter().enumerate() {
                    full.row_mut(i).assign(&bo.row(oi));
                }
            }
            sign_codes(full.view())
        };
        if let Some(ws) = refit {
            w = ws;
        }
        timings.codes_s = clock.elapsed().as_secs_f64();
        let mut model = SchModel::from_parts(k, self.clone(), rbf, w, r, train_codes, history, rows.len());
        model.timings = timings;
        Ok(model)
    }
}
