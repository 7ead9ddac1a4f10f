//! The SeGH fit: step 1 per modality, the graph, then the alternating step-2 updates and ITQ.

use super::*;

impl Fit for SeghParams {
    type Model = SeghModel;

    fn check(&self, data: &TrainSet, bits: usize) -> Result<()> {
        let n = data.len();
        let nm = data.n_modalities();
        if nm == 0 {
            bail!("segh: the training set has no modalities");
        }
        self.check_params(nm, n, bits)?;
        let emb = data.require_class_embeddings("SeGH")?;
        if emb.nrows() != data.n_classes() {
            bail!("segh: the class embeddings have {} rows but the data has {} classes", emb.nrows(), data.n_classes());
        }
        if emb.ncols() == 0 {
            bail!("segh: the class embeddings have 0 columns");
        }
        if let Some(((c, j), v)) = emb.indexed_iter().find(|(_, v)| !v.is_finite()) {
            bail!("segh: class embedding of class {} ({}) holds {v} at column {j}", c, data.class_names.get(c).map_or("?", |s| s));
        }
        for m in 0..nm {
            let x = data.views[m].features(METHOD, m)?;
            if let Some(((i, j), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
                bail!("segh: features of modality {m} hold {v} at row {i}, column {j}");
            }
            if labelled_rows(data, m).is_empty() {
                bail!("segh: modality {m} has no labelled training item; step 1 needs labelled items in every modality");
            }
        }
        // Largest f64 arrays per modality: the inputs ψ (n × p, p = anchors or the feature
        // dimension), pᵀp, the encoder (p × E and p × bits); for the codes: the kNN graph
        // (n × k, both directions) and n × bits iterates of the conjugate gradient.
        // The streamed fit holds ψ for one block of rows per parallel part (8) and Zₘ (n × q, q ≤
        // min(E, classes)) instead of ψ for every row.
        let streamed = self.in_memory_bytes(data) > STREAM_INPUTS_ABOVE_BYTES;
        let q = emb.ncols().min(data.n_classes()) as f64;
        let (n, k, e) = (n as f64, bits as f64, emb.ncols() as f64);
        let per_modality: f64 = (0..nm)
            .map(|m| if self.anchors > 0 { self.anchors } else { data.views[m].features(METHOD, m).map_or(0, |x| x.ncols()) } as f64)
            .map(|p| if streamed { 16.0 * crate::numerics::blocked::BLOCK_ROWS as f64 * p + n * q } else { 2.0 * n * p } + 2.0 * p * p + p * (e + k))
            .sum();
        // Code iterates: in memory, the conjugate gradient's on all columns at once (8 n × bits);
        // streamed, V and the solution (n × bits each, the polar factor formed in place) and the
        // iterates of one group of columns.
        let iterates = if streamed { n * (3.0 * k + 8.0 * CG_COLUMN_GROUP as f64) } else { 8.0 * n * k };
        let bytes = 8.0 * (per_modality + 4.0 * n * self.k as f64 + iterates + 2.0 * k * k);
        crate::method::ensure_memory("segh", bits, bytes, "inputs, kNN graph and code iterates")?;
        Ok(())
    }

    /// In memory up to [`STREAM_INPUTS_ABOVE_BYTES`] of inputs, streamed above ([`SeghParams::fit_streamed`]).
    fn fit_checked(&self, data: &TrainSet, ctx: &FitContext) -> Result<SeghModel> {
        fit_impl(self, data, ctx, Solver::Cg, self.in_memory_bytes(data) > STREAM_INPUTS_ABOVE_BYTES, Order::Locality)
    }
}

/// How the fixed n × n system ((Σμ)I + γL) X = B of the H update is solved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(super) enum Solver {
    /// Jacobi-preconditioned conjugate gradient with sparse + low-rank mat-vecs (near-linear in n).
    Cg,
    /// Dense Cholesky of the n × n matrix (O(n³); for tests on small n).
    Dense,
}

/// The order in which step 2 holds the items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Order {
    /// With the approximate kNN graph, the leaf order of the first modality's random-projection
    /// tree ([`knn_approx_ordered`]): a product with the graph then reads the rows of its neighbours
    /// from nearby memory. The codes are put back in the input order at the end; the result
    /// differs from [`Order::Input`] only in the order of floating-point sums.
    Locality,
    /// The items in the order of the training set.
    #[cfg_attr(not(test), allow(dead_code))]
    Input,
}

/// Reorders the rows of `a` so that new row p is old row `perm[p]`.
fn reorder_rows(a: &mut Array2<f64>, perm: &[usize]) {
    if !a.is_standard_layout() {
        *a = a.as_standard_layout().into_owned();
    }
    let dim = a.ncols();
    permute_rows(a.as_slice_mut().expect("standard layout"), dim, perm);
}

pub(super) fn labelled_rows(data: &TrainSet, m: usize) -> Vec<usize> {
    (0..data.len()).filter(|&i| data.labelled[m][i] && data.labels[m].row(i).iter().any(|&v| v != 0)).collect()
}

/// Above this many bytes of step-1 inputs and projections (n × Σₘ(dₘ + e) × 8, dₘ = the raw
/// dimension or the anchor count), SeGH streams: it recomputes the inputs block by block instead of
/// keeping them ([`SeghParams::fit_streamed`]).
pub const STREAM_INPUTS_ABOVE_BYTES: usize = 2 << 30;

/// Right-hand sides per conjugate-gradient solve in the streamed fit (the solve's memory is a few
/// n × this arrays; each column's iterates do not depend on the other columns).
pub(super) const CG_COLUMN_GROUP: usize = 8;

impl SeghParams {
    /// Fits SeGH with bounded memory: the inputs ψₘ(X) (raw or RBF features) are recomputed block by
    /// block for each pass of step 1 and never held n × dₘ; Zₘ is held for one modality at a time,
    /// turned in place into its kNN coordinates; step 2 keeps only Rz = Σₘ μₘZₘ and
    /// Gz = Σₘ μₘZₘᵀZₘ (eq. 8's data term is (Σμ)‖H‖² − 2⟨HᵀRz, P⟩ + ⟨P Gz, P⟩, and tr(HᵀLH) is
    /// summed row by row), solves the H system for `CG_COLUMN_GROUP` columns at a time, and takes
    /// the polar factor through a thin QR. The result equals the in-memory fit's up to the order of
    /// floating-point sums. `fit` chooses this path by itself above [`STREAM_INPUTS_ABOVE_BYTES`].
    pub fn fit_streamed(&self, data: &TrainSet, ctx: &FitContext) -> Result<SeghModel> {
        data.validate()?;
        self.check(data, ctx.bits)?;
        fit_impl(self, data, ctx, Solver::Cg, true, Order::Locality)
    }

    /// Bytes the in-memory fit holds for the step-1 inputs and projections.
    pub(super) fn in_memory_bytes(&self, data: &TrainSet) -> usize {
        let e = data.class_embeddings.as_ref().map_or(0, |c| c.ncols().min(data.n_classes()));
        let dims: usize = data
            .views
            .iter()
            .map(|v| if self.anchors > 0 { self.anchors } else { v.features(METHOD, 0).map_or(0, |x| x.ncols()) } + e)
            .sum();
        data.len() * dims * std::mem::size_of::<f64>()
    }
}

pub(super) fn fit_impl(
    params: &SeghParams,
    data: &TrainSet,
    ctx: &FitContext,
    solver: Solver,
    streamed: bool,
    order: Order,
) -> Result<SeghModel> {
    let bits = ctx.bits;
    let n = data.len();
    let nm = data.n_modalities();
    let emb = to_f64(data.require_class_embeddings("SeGH")?.view());
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
    let mut info = FitInfo::default();

    // Orthonormal basis Q (e × q) of the span of the embeddings of the classes that label training
    // items. S, hence the minimum-norm Wₘ of eq. 7 and every Zₘ, lies in that span (q ≤ C), so
    // step 1 is solved for W̃ₘ = QᵀWₘ and step 2 runs in the q coordinates Z̃ₘ = ZₘQ with
    // identical results: Wₘ = QW̃ₘ, P = P̃Qᵀ (Σμ ZᵀZ + ηI acts as ηI on the complement, where
    // Σμ ZᵀH has no component).
    let used: Vec<usize> =
        (0..data.n_classes()).filter(|&c| (0..nm).any(|m| (0..n).any(|i| data.labelled[m][i] && data.labels[m][[i, c]] != 0))).collect();
    let q_basis = row_space_basis(&emb.select(Axis(0), &used))?;
    if q_basis.ncols() == 0 {
        bail!("segh: the class embeddings of the training classes are all zero");
    }
    let emb_q = emb.dot(&q_basis);
    let e = q_basis.ncols();

    // ---- Step 1 (eqs. 1, 2, 7), and per modality its kNN graph (eqs. 3–5) ----
    let mut means = Vec::with_capacity(nm);
    let mut ws_q = Vec::with_capacity(nm);
    let mut rbf = Vec::new();
    // Σ μₘ Zₘ (rows), G = Σ μₘ Zₘ Zₘᵀ + ηI and Gz = Σ μₘ Zₘ Zₘᵀ; the Zₘ themselves only in memory mode.
    let mut rz = crate::numerics::pages::zeros((n, e));
    let mut g = Array2::<f64>::eye(e) * params.eta;
    let mut gz = Array2::<f64>::zeros((e, e));
    let mut zs = Vec::new();
    let mut knn_parts = Vec::with_capacity(nm);
    // Step 2's item order (position p holds item perm[p]), when not the input order.
    let mut perm: Option<Vec<usize>> = None;
    for m in 0..nm {
        let t0 = Instant::now();
        let raw = data.views[m].features(METHOD, m)?;
        // With anchors, Xₘ := φₘ(Xₘ), centred RBF features to anchors drawn from the training rows
        // (their own random stream, so the raw-feature path is unchanged).
        let scale = params.sigma_scale.get(m).copied().unwrap_or(1.0);
        let mut arng = seeded_rng(ctx.seed, 0x5e6 + m as u64);
        let rows = labelled_rows(data, m);
        let (map, mean, w, z) = if streamed {
            step1_streamed(params, raw.view(), &data.labels[m], &rows, &emb_q, params.lambda[m], scale, &mut arng)
        } else {
            step1_in_memory(params, raw.view(), &data.labels[m], &rows, &emb_q, params.lambda[m], scale, &mut arng)
        }
        .with_context(|| format!("segh step 1 (eq. 7) for modality {m}"))?;
        rbf.extend(map);
        means.push(mean);
        ws_q.push(w);
        let ztz = z.t().dot(&z);
        rz.scaled_add(params.mu[m], &z);
        g.scaled_add(params.mu[m], &ztz);
        gz.scaled_add(params.mu[m], &ztz);
        info.seconds_step1 += t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let coords = if streamed {
            semantic_coordinates_in_place(z, &ztz)?
        } else {
            let c = semantic_coordinates(&z)?;
            zs.push(z);
            c
        };
        let seed = ctx.seed.wrapping_add(m as u64);
        let nn = if n <= params.knn_exact_up_to {
            knn(&coords, params.k)
        } else if m == 0 && order == Order::Locality {
            let (nn, leaf_order) = knn_approx_ordered(coords, params.k, seed);
            perm = Some(leaf_order);
            nn
        } else {
            knn_approx(coords, params.k, seed)
        };
        knn_parts.push(knn_affinity(&nn));
        info.seconds_graph += t1.elapsed().as_secs_f64();
    }
    let t1 = Instant::now();
    // pos[i]: the position of item i in step 2's order.
    let pos: Option<Vec<usize>> = perm.as_ref().map(|perm| {
        let mut pos = vec![0; n];
        perm.iter().enumerate().for_each(|(p, &i)| pos[i] = p);
        pos
    });
    if let (Some(perm), Some(pos)) = (&perm, &pos) {
        knn_parts.par_iter_mut().flatten().for_each(|t| *t = (pos[t.0 as usize] as u32, pos[t.1 as usize] as u32, t.2));
        reorder_rows(&mut rz, perm);
        zs.iter_mut().for_each(|z| reorder_rows(z, perm));
    }
    let graph = Graph::new(n, knn_parts, &data.labels, &data.labelled, perm.as_deref());
    info.seconds_graph += t1.elapsed().as_secs_f64();

    // ---- Step 2 (eqs. 8–10) ----
    let t2 = Instant::now();
    let mu_sum: f64 = params.mu.iter().sum();
    let system = System { graph: &graph, c: mu_sum, gamma: params.gamma };
    let g_inv = g.invc().context("segh: Σμ Zₘ Zₘᵀ + ηI is not positive definite")?;
    let rank = numerical_rank(&rz.t().dot(&rz))?;
    if rank == 0 {
        bail!("segh: the step-1 semantic projections Zₘ are all zero (labels, embeddings or features carry no signal)");
    }
    let r = rank.min(bits);
    info.semantic_rank = r;

    let mut history = Vec::with_capacity(params.iterations);
    let group = if streamed { CG_COLUMN_GROUP } else { usize::MAX };
    // Solves M X = B for the columns of B that `rhs(j0, j1)` gives, `cols` in all.
    let solve = |rhs: &dyn Fn(usize, usize) -> Array2<f64>, cols: usize, info: &mut FitInfo| -> Result<Array2<f64>> {
        let (x, iters) = solve_columns(&system, rhs, cols, group, solver, params.cg_tol, params.cg_max_iter)?;
        info.cg_iterations.push(iters);
        Ok(x)
    };
    let project = |a: Array2<f64>| {
        (if streamed { polar_tall(a, true) } else { polar(&a, true) })
            .context("segh: the code dimensions collapsed; the data may carry less semantic rank than assumed")
    };
    let objective = |h: &Array2<f64>, p: &Array2<f64>| {
        if streamed {
            objective_from_sums(h, p, &rz, &gz, mu_sum, &system, params.eta)
        } else {
            objective(h, p, &zs, &params.mu, &system, params.eta)
        }
    };
    let converged = |history: &[f64]| -> bool {
        let k = history.len();
        k >= 2 && (history[k - 2] - history[k - 1]).abs() <= params.objective_tol * history[k - 2].abs()
    };
    let (h, p) = match params.constraint {
        CodeConstraint::Orthogonal => {
            // In the coordinates of the constraint, H = V Rᵀ and P = R Pᵥ (Pᵥ = RᵀP): for any R with
            // RᵀR = I, eq. 8 equals Σμ‖V − Zₘ Pᵥᵀ‖² + γ tr(VᵀLV) + η‖Pᵥ‖², the V update's right-hand
            // side is Rz Pᵀ R = Rz Pᵥᵀ, and the P update (eq. 9) gives Pᵥ = Vᵀ Rz G⁻¹. So the
            // iterations run in r dimensions, and R is fitted once at the end (ITQ), P = R Pᵥ.
            let mut pv: Array2<f64> = Array2::from_shape_simple_fn((r, e), || rng.sample(StandardNormal));
            let mut v = Array2::<f64>::zeros((0, r));
            for _ in 0..params.iterations {
                drop(v);
                v = update_v(&rz, &pv, |b, cols| solve(b, cols, &mut info), project)?;
                pv = update_p(&v, &rz, &g_inv);
                history.push(objective(&v, &pv));
                if converged(&history) {
                    break;
                }
            }
            let t = Instant::now();
            // ITQ with R (r × bits, orthonormal rows) started from a random orthonormal matrix.
            let (rot, _) = itq_from(v.view(), random_orthonormal(bits, r, &mut rng)?.reversed_axes(), params.itq_iterations)?;
            let rot = rot.reversed_axes();
            info.seconds_itq = t.elapsed().as_secs_f64();
            (v.dot(&rot.t()), rot.dot(&pv))
        }
        CodeConstraint::Printed => {
            let mut p: Array2<f64> = Array2::from_shape_simple_fn((bits, e), || rng.sample(StandardNormal));
            let mut h = Array2::<f64>::zeros((n, bits));
            for _ in 0..params.iterations {
                // Eq. 10 as printed: H = (Σ μₘ P Zₘ)((Σμ)I + γL)⁻¹ (rows: M⁻¹ Rz Pᵀ).
                h = solve(&|j0, j1| rz.dot(&p.slice(s![j0..j1, ..]).t()), bits, &mut info)?;
                p = update_p(&h, &rz, &g_inv);
                history.push(objective(&h, &p));
                if converged(&history) {
                    break;
                }
            }
            (h, p)
        }
    };
    info.seconds_step2 = t2.elapsed().as_secs_f64();
    let mut h = h;
    if let Some(pos) = &pos {
        reorder_rows(&mut h, pos);
    }
    let train_codes = BinaryCodes::from_signs(h.view());
    // Back to the embedding space: Wₘ = Q W̃ₘ (e × dₘ), P = P̃ Qᵀ (bits × e).
    let ws = ws_q.iter().map(|w| q_basis.dot(w)).collect();
    let p = p.dot(&q_basis.t());
    Ok(SeghModel::new(params.clone(), bits, rbf, means, ws, p, train_codes, history, info))
}

/// The result of step 1 for one modality: its RBF map (with anchors), the mean x̄ₘ of its inputs,
/// W̃ₘ (q × dₘ) and Zₘ = (ψₘ(Xₘ) − x̄ₘ) W̃ₘᵀ (n × q).
pub(super) type Step1 = (Option<RbfMap>, Array1<f64>, Array2<f64>, Array2<f64>);

/// Step 1 with the inputs ψₘ(Xₘ) (raw or RBF features) in memory.
#[allow(clippy::too_many_arguments)]
pub(super) fn step1_in_memory(
    params: &SeghParams,
    raw: ArrayView2<f32>,
    labels: &Array2<u8>,
    rows: &[usize],
    emb_q: &Array2<f64>,
    lambda: f64,
    scale: f64,
    arng: &mut ChaCha8Rng,
) -> Result<Step1> {
    let (map, x) = if params.anchors > 0 {
        let (map, phi) =
            RbfMap::fit(raw, capped_anchors("segh.anchors", params.anchors, raw.nrows()), scale, arng).context("RBF features")?;
        (Some(map), phi)
    } else {
        (None, to_f64(raw))
    };
    let mean = x.mean_axis(Axis(0)).expect("n > 0");
    let xc = x - &mean;
    let s = semantic_matrix(labels, rows, emb_q);
    let w = update_w(&s, &xc.select(Axis(0), rows), lambda)?;
    let z = xc.dot(&w.t());
    Ok((map, mean, w, z))
}

/// Step 1 without the n × dₘ inputs: ψₘ(X) is recomputed for one block of rows at a time in each
/// pass (the mean, then the sums SᵀS, XᵀX and SᵀX of eq. 7 over the labelled rows, then Zₘ).
#[allow(clippy::too_many_arguments)]
pub(super) fn step1_streamed(
    params: &SeghParams,
    raw: ArrayView2<f32>,
    labels: &Array2<u8>,
    rows: &[usize],
    emb_q: &Array2<f64>,
    lambda: f64,
    scale: f64,
    arng: &mut ChaCha8Rng,
) -> Result<Step1> {
    let n = raw.nrows();
    let map = if params.anchors > 0 {
        Some(
            RbfMap::fit_streamed(raw, None, capped_anchors("segh.anchors", params.anchors, raw.nrows()), scale, arng)
                .context("RBF features")?,
        )
    } else {
        None
    };
    let psi = |s0: usize, e0: usize| match &map {
        Some(mp) => mp.features_of(raw.slice(s![s0..e0, ..])),
        None => to_f64(raw.slice(s![s0..e0, ..])),
    };
    let d = map.as_ref().map_or(raw.ncols(), |mp| mp.n_anchors());
    let q = emb_q.ncols();
    let sums = fold_parts(n, || Array2::<f64>::zeros((1, d)), |s0, e0, acc| *acc += &psi(s0, e0).sum_axis(Axis(0)));
    let mean = sum_in_order(sums, (1, d)).index_axis_move(Axis(0), 0) / n as f64;
    let mut labelled = vec![false; n];
    rows.iter().for_each(|&i| labelled[i] = true);
    let sums = fold_parts(
        n,
        || (Array2::<f64>::zeros((d, d)), Array2::<f64>::zeros((q, d)), Array2::<f64>::zeros((q, q))),
        |s0, e0, (xtx, stx, sts)| {
            let local: Vec<usize> = (s0..e0).filter(|&i| labelled[i]).collect();
            if local.is_empty() {
                return;
            }
            let xc = (psi(s0, e0) - &mean).select(Axis(0), &local.iter().map(|&i| i - s0).collect::<Vec<_>>());
            let sb = semantic_matrix(labels, &local, emb_q);
            general_mat_mul(1.0, &xc.t(), &xc, 1.0, xtx);
            general_mat_mul(1.0, &sb.t(), &xc, 1.0, stx);
            general_mat_mul(1.0, &sb.t(), &sb, 1.0, sts);
        },
    );
    let (mut xtx, mut stx, mut sts) = (Array2::<f64>::zeros((d, d)), Array2::<f64>::zeros((q, d)), Array2::<f64>::zeros((q, q)));
    for (a, b, c) in sums {
        xtx += &a;
        stx += &b;
        sts += &c;
    }
    let w = solve_sylvester_psd(&sts, &(xtx * lambda), &(stx * (1.0 + lambda)))?;
    let mut z = crate::numerics::pages::zeros((n, q));
    fold_parts_mut(&mut z, || (), |s0, e0, mut zb, _| general_mat_mul(1.0, &(psi(s0, e0) - &mean), &w.t(), 0.0, &mut zb));
    Ok((map, mean, w, z))
}

// ---------------------------------------------------------------------------------------------
