//! Tests of SeGH against independent simple implementations and the paper's equations.

use super::*;
use crate::metrics::map;
use crate::npy::write_npy;
use crate::numerics::graph::knn::brute_knn;
use ndarray::{array, Array2};
use ndarray_linalg::{EigValsh, Solve};
use ndarray_linalg::{JobSvd, SVDDC};

fn randn(rng: &mut ChaCha8Rng, r: usize, c: usize) -> Array2<f64> {
    Array2::from_shape_simple_fn((r, c), || rng.sample(StandardNormal))
}

fn rel(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    let d = (a - b).iter().map(|v| v * v).sum::<f64>().sqrt();
    d / b.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300)
}

/// Rows `idx` of a training set.
fn subset(ts: &TrainSet, idx: &[usize]) -> TrainSet {
    TrainSet {
        views: ts.views.iter().map(|v| v.select(idx)).collect(),
        labels: ts.labels.iter().map(|l| l.select(Axis(0), idx)).collect(),
        labelled: ts.labelled.iter().map(|l| idx.iter().map(|&i| l[i]).collect()).collect(),
        class_names: ts.class_names.clone(),
        modality_classes: ts.modality_classes.clone(),
        class_embeddings: ts.class_embeddings.clone(),
    }
}

/// mAP of (I→T, T→I) for queries `q` against database `db`, with the learned training codes as
/// database (`learned = true`) or the database encoded by the hash functions.
fn maps(model: &SeghModel, q: &TrainSet, db: &TrainSet, learned: bool) -> (f64, f64) {
    let qi = model.encode(0, &q.views[0]).unwrap();
    let qt = model.encode(1, &q.views[1]).unwrap();
    let (di, dt) = if learned {
        (model.train_codes().unwrap().clone(), model.train_codes().unwrap().clone())
    } else {
        (model.encode(0, &db.views[0]).unwrap(), model.encode(1, &db.views[1]).unwrap())
    };
    let ql = &q.labels[0];
    let dl = &db.labels[0];
    (map(qi.view(), dt.view(), ql.view(), dl.view()).unwrap(), map(qt.view(), di.view(), ql.view(), dl.view()).unwrap())
}

#[test]
fn sylvester_matches_kronecker_solve() {
    // A W + W B = C  ⇔  (I_q ⊗ A + Bᵀ ⊗ I_p) vec(W) = vec(C), vec stacking columns.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (p, q) = (3, 4);
    let ga = randn(&mut rng, p, p);
    let a = ga.dot(&ga.t()) + Array2::<f64>::eye(p) * 0.1;
    let gb = randn(&mut rng, q, 2); // B rank 2: PSD, singular
    let b = gb.dot(&gb.t());
    let c = randn(&mut rng, p, q);
    let w = solve_sylvester_psd(&a, &b, &c).unwrap();
    let mut k = Array2::<f64>::zeros((p * q, p * q));
    for j in 0..q {
        for i in 0..p {
            let row = j * p + i;
            for l in 0..p {
                k[[row, j * p + l]] += a[[i, l]]; // (A W)_ij = Σ_l A_il W_lj
            }
            for m in 0..q {
                k[[row, m * p + i]] += b[[m, j]]; // (W B)_ij = Σ_m W_im B_mj
            }
        }
    }
    let vec_c = Array1::from_shape_fn(p * q, |t| c[[t % p, t / p]]);
    let vec_w = k.solve(&vec_c).unwrap();
    let w_kron = Array2::from_shape_fn((p, q), |(i, j)| vec_w[j * p + i]);
    assert!(rel(&w, &w_kron) < 1e-10, "eigen solve {w:?} vs Kronecker {w_kron:?}");
    let resid = a.dot(&w) + w.dot(&b) - &c;
    assert!(resid.iter().all(|v| v.abs() < 1e-10), "{resid:?}");
}

#[test]
fn semantic_matrix_is_mean_of_class_embeddings() {
    // Eq. 1: item 0 has classes {0, 2} -> mean of rows 0 and 2; item 2 has class 1.
    let labels = array![[1u8, 0, 1], [0, 0, 0], [0, 1, 0]];
    let emb = array![[1.0, 0.0], [0.0, 4.0], [3.0, 2.0]];
    let s = semantic_matrix(&labels, &[0, 2], &emb);
    assert_eq!(s, array![[2.0, 1.0], [0.0, 4.0]]);
}

#[test]
fn step1_satisfies_eq7_with_singular_coefficients() {
    // e = 16 > C = 5 classes: S Sᵀ is singular; d = 8 features of rank 6: X Xᵀ singular too.
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (n, c, e) = (60, 5, 16);
    let emb = randn(&mut rng, c, e);
    let classes: Vec<usize> = (0..n).map(|i| i % c).collect();
    let labels = crate::bundle::one_hot(&classes, c);
    let rows: Vec<usize> = (0..n).collect();
    let s = semantic_matrix(&labels, &rows, &emb);
    let x = randn(&mut rng, n, 6).dot(&randn(&mut rng, 6, 8));
    let lambda = 1e3;
    let w = update_w(&s, &x, lambda).unwrap();
    // Paper orientation: S Sᵀ W + λ W X Xᵀ = (1 + λ) S Xᵀ with S = sᵀ, X = xᵀ.
    let lhs = s.t().dot(&s).dot(&w) + w.dot(&x.t().dot(&x)) * lambda;
    let rhs = s.t().dot(&x) * (1.0 + lambda);
    assert!(rel(&lhs, &rhs) < 1e-9, "relative residual {}", rel(&lhs, &rhs));
    // Minimum-norm choice: W has no component outside the span of the class embeddings.
    let (ev, u) = emb.t().dot(&emb).eigh(UPLO::Lower).unwrap();
    let null: Vec<usize> = (0..e).filter(|&i| ev[i] < 1e-9).collect();
    assert_eq!(null.len(), e - c);
    let out = u.select(Axis(1), &null).t().dot(&w);
    assert!(out.iter().all(|v| v.abs() < 1e-8));
}

#[test]
fn fitted_w_solves_eq7_in_the_embedding_space() {
    // The fit solves step 1 in the q-dimensional span of the class embeddings; the stored
    // Wₘ (e × dₘ) must satisfy eq. 7 with the full e-dimensional S.
    let (train, _) = small_problem(22, 120, 40);
    let params = SeghParams { iterations: 1, ..SeghParams::paper() };
    let model = params.fit(&train, &FitContext::new(8, 0)).unwrap();
    let emb = to_f64(train.class_embeddings.as_ref().unwrap().view());
    let rows: Vec<usize> = (0..train.len()).collect();
    let s = semantic_matrix(&train.labels[0], &rows, &emb);
    for m in 0..2 {
        let x = to_f64(train.views[m].features("t", m).unwrap().view()) - model.mean(m);
        let w = model.w(m);
        assert_eq!(w.dim(), (40, x.ncols()));
        let lambda = params.lambda[m];
        let lhs = s.t().dot(&s).dot(w) + w.dot(&x.t().dot(&x)) * lambda;
        let rhs = s.t().dot(&x) * (1.0 + lambda);
        assert!(rel(&lhs, &rhs) < 1e-9, "modality {m}: relative residual {}", rel(&lhs, &rhs));
    }
}

/// A small two-modality graph with multi-label rows, per-modality label differences and
/// unlabelled rows, plus the independently built dense affinity.
fn small_graph(seed: u64) -> (Graph, Array2<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = 40;
    let k = 4;
    let coords = [randn(&mut rng, n, 3), randn(&mut rng, n, 2)];
    let mut labels = [Array2::<u8>::zeros((n, 4)), Array2::<u8>::zeros((n, 4))];
    let mut labelled = vec![vec![true; n]; 2];
    for i in 0..n {
        labels[0][[i, i % 4]] = 1;
        labels[1][[i, i % 4]] = 1;
        if i % 3 == 0 {
            labels[0][[i, (i + 1) % 4]] = 1; // multi-label on the image side only
        }
        if i % 7 == 0 {
            labelled[1][i] = false; // text label hidden
            labels[1].row_mut(i).fill(0);
        }
        if i % 11 == 0 {
            labelled[0][i] = false;
            labels[0].row_mut(i).fill(0);
        }
    }
    let parts = coords.iter().map(|c| knn_affinity(&knn(c, k))).collect();
    let g = Graph::new(n, parts, &labels, &labelled, None);
    // Independent dense construction (eqs. 3–5).
    let mut a = Array2::<f64>::zeros((n, n));
    for c in &coords {
        let nn = brute_knn(c, k);
        let sigma2 = nn.iter().flatten().map(|x| x.0).sum::<f64>() / (n * k) as f64;
        let mut w = Array2::<f64>::zeros((n, n));
        for (i, row) in nn.iter().enumerate() {
            for &(d2, j) in row {
                w[[i, j]] = (-d2 / sigma2).exp();
            }
        }
        a = a + (&w + &w.t()) * 0.5;
    }
    let unit = |l: &Array2<u8>, lab: &[bool], i: usize| -> Array1<f64> {
        let r = l.row(i).mapv(|v| v as f64);
        let nr = r.dot(&r).sqrt();
        if lab[i] && nr > 0.0 {
            r / nr
        } else {
            Array1::zeros(4)
        }
    };
    for i in 0..n {
        for j in 0..n {
            let s12 = unit(&labels[0], &labelled[0], i).dot(&unit(&labels[1], &labelled[1], j));
            let s21 = unit(&labels[1], &labelled[1], i).dot(&unit(&labels[0], &labelled[0], j));
            a[[i, j]] += 0.5 * (s12 + s21);
        }
    }
    (g, a)
}

#[test]
fn laplacian_matches_dense_definition() {
    let (g, a) = small_graph(4);
    let n = a.nrows();
    assert!(rel(&g.dense_affinity(), &a) < 1e-12);
    let l = Array2::from_diag(&a.sum_axis(Axis(1))) - &a;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let v = randn(&mut rng, n, 3);
    assert!(rel(&g.laplacian_mul(v.view()), &l.dot(&v)) < 1e-12);
    // M V = (cI + γL) V (eq. 10), written over whatever the output held.
    let sys = System { graph: &g, c: 0.7, gamma: 0.3 };
    let mut out = Array2::<f64>::from_elem((n, 3), f64::NAN);
    sys.mul_into(v.view(), &mut out);
    assert!(rel(&out, &(&l.dot(&v) * 0.3 + &v * 0.7)) < 1e-12);
    assert!(rel(&Array2::from_shape_vec((n, 1), g.laplacian_diag().to_vec()).unwrap(), &l.diag().to_owned().insert_axis(Axis(1))) < 1e-12);
    // L 1 = 0, L symmetric positive semi-definite (eq. 6).
    let l1 = g.laplacian_mul(Array2::<f64>::ones((n, 1)).view());
    assert!(l1.iter().all(|v| v.abs() < 1e-10));
    assert!(rel(&l, &l.t().to_owned()) < 1e-14);
    let ev = l.eigvalsh(UPLO::Lower).unwrap();
    assert!(ev[0] > -1e-10, "smallest eigenvalue {}", ev[0]);
    // Row 0 is unlabelled on both sides (0 % 7 == 0 % 11 == 0): only kNN affinities.
    let knn_only = g.knn.to_dense();
    assert!((0..n).all(|j| (a[[0, j]] - knn_only[[0, j]]).abs() < 1e-15));
}

#[test]
fn conjugate_gradient_matches_dense_solve() {
    let (g, _) = small_graph(6);
    let sys = System { graph: &g, c: 2e-3, gamma: 1e-2 };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut b = randn(&mut rng, g.len(), 5);
    b.column_mut(3).fill(0.0); // a zero right-hand side is solved by 0
    let (x_cg, iters) = solve_system(&sys, &b, Solver::Cg, 1e-12, 1000).unwrap();
    let (x_dense, _) = solve_system(&sys, &b, Solver::Dense, 1e-12, 1000).unwrap();
    assert!(iters > 0 && iters < 200, "{iters} iterations");
    assert!(rel(&x_cg, &x_dense) < 1e-9, "relative difference {}", rel(&x_cg, &x_dense));
    assert!(rel(&sys.dense().dot(&x_dense), &b) < 1e-10);
    assert!(x_cg.column(3).iter().all(|&v| v == 0.0));
    // Too few iterations is an error, not a silent wrong answer.
    let err = solve_system(&sys, &b, Solver::Cg, 1e-12, 2).unwrap_err().to_string();
    assert!(err.contains("did not reach"), "{err}");
}

fn small_problem(seed: u64, n: usize, embedding_dim: usize) -> (TrainSet, TrainSet) {
    let (ts, _) =
        synthetic(&SyntheticSpec { n: n + n / 3, n_classes: 10, image_dim: 20, text_dim: 10, embedding_dim, noise: (2.0, 1.0), seed });
    let train: Vec<usize> = (0..n).collect();
    let query: Vec<usize> = (n..n + n / 3).collect();
    (subset(&ts, &train), subset(&ts, &query))
}

#[test]
fn dense_and_scalable_solvers_give_the_same_model() {
    let (train, _) = small_problem(8, 150, 0);
    let params = SeghParams { cg_tol: 1e-13, iterations: 3, ..SeghParams::paper() };
    for bits in [6, 24] {
        let ctx = FitContext::new(bits, 5);
        params.check(&train, bits).unwrap();
        let cg = fit_impl(&params, &train, &ctx, Solver::Cg, false, Order::Locality).unwrap();
        let dense = fit_impl(&params, &train, &ctx, Solver::Dense, false, Order::Locality).unwrap();
        assert!(rel(cg.p(), dense.p()) < 1e-7, "bits {bits}: P differs by {}", rel(cg.p(), dense.p()));
        assert_eq!(cg.train_codes(), dense.train_codes());
        for (a, b) in cg.history().iter().zip(dense.history()) {
            assert!((a - b).abs() <= 1e-8 * b.abs());
        }
    }
}

#[test]
fn constrained_h_update_gives_balanced_decorrelated_codes() {
    let (train, _) = small_problem(9, 120, 0);
    let n = train.len();
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    // A graph on this data: kNN on random coordinates is enough to exercise the update.
    let parts = vec![knn_affinity(&knn(&randn(&mut rng, n, 3), 5))];
    let graph = Graph::new(n, parts, &train.labels[..1], &train.labelled[..1], None);
    let sys = System { graph: &graph, c: 2e-3, gamma: 1e-2 };
    let rz = randn(&mut rng, n, 10) - 0.3; // not centred: update_h centres
    for (bits, r) in [(6, 6), (10, 10), (32, 10)] {
        let p = randn(&mut rng, bits, 10);
        let rot = random_orthonormal(bits, r, &mut rng).unwrap();
        let solve = |b: &dyn Fn(usize, usize) -> Array2<f64>, cols: usize| Ok(solve_system(&sys, &b(0, cols), Solver::Dense, 0.0, 0)?.0);
        let rot_p = rot.clone();
        let v = update_v(&rz, &rot.t().dot(&p), solve, |a| polar(&a, true)).unwrap();
        let rot = itq_from(v.view(), rot.reversed_axes(), 20).unwrap().0.reversed_axes();
        let h = v.dot(&rot.t());
        // Hᵀ H = n R Rᵀ (exactly n I when bits ≤ r), columns sum to 0.
        let hth = h.t().dot(&h) / n as f64;
        assert!(rel(&hth, &rot.dot(&rot.t())) < 1e-10);
        if bits == r {
            assert!(rel(&hth, &Array2::eye(bits)) < 1e-10, "bits {bits}");
        }
        assert!(rel(&rot.t().dot(&rot), &Array2::eye(r)) < 1e-10);
        assert!(h.sum_axis(Axis(0)).iter().all(|v| v.abs() < 1e-8 * n as f64));
        // V is the Procrustes projection of the unconstrained eq.-10 minimiser (in R's coordinates,
        // T = M⁻¹ Rz Pᵥᵀ, centred) onto the constraint set: other feasible V' are farther from T.
        let b = rz.dot(&p.t()).dot(&rot_p);
        let mut t = solve(&|_, _| b.clone(), r).unwrap();
        let tmean = t.mean_axis(Axis(0)).unwrap();
        t -= &tmean;
        let dist = |w: &Array2<f64>| (w - &t).iter().map(|x| x * x).sum::<f64>();
        let v_r = update_v(&rz, &rot_p.t().dot(&p), solve, |a| polar(&a, true)).unwrap();
        for _ in 0..5 {
            let q = random_orthonormal(r, r, &mut rng).unwrap();
            let mut other = randn(&mut rng, n, r);
            let omean = other.mean_axis(Axis(0)).unwrap();
            other -= &omean;
            let other = polar(&other, true).unwrap() * (n as f64).sqrt();
            assert!(dist(&v_r) <= dist(&v_r.dot(&q)) + 1e-9 && dist(&v_r) <= dist(&other));
        }
        // The R-free formulation: with P = R Pᵥ from the P update (eq. 9) on H = V Rᵀ, RᵀP equals
        // the P update on V alone, for any R with orthonormal columns.
        let g_inv = (rz.t().dot(&rz) * 1e-3 + Array2::<f64>::eye(10) * 1e-2).invc().unwrap();
        let rot2 = random_orthonormal(bits, r, &mut rng).unwrap();
        let pv = update_p(&v, &rz, &g_inv);
        assert!(rel(&rot.t().dot(&update_p(&h, &rz, &g_inv)), &pv) < 1e-10);
        assert!(rel(&rot2.t().dot(&update_p(&v.dot(&rot2.t()), &rz, &g_inv)), &pv) < 1e-10);
    }
}

#[test]
fn p_update_is_the_minimiser_of_eq8() {
    // Eq. 9: ∂/∂P [Σ μₘ‖H − Zₘ Pᵀ‖² + η‖P‖²] = 2[Σ μₘ (P Zₘᵀ Zₘ − Hᵀ Zₘ) + η P] = 0.
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (n, e, bits) = (50, 7, 9);
    let zs = [randn(&mut rng, n, e), randn(&mut rng, n, e)];
    let mu = [1e-3, 3e-3];
    let eta = 1e-2;
    let h = randn(&mut rng, n, bits);
    let rz = &zs[0] * mu[0] + &zs[1] * mu[1];
    let g = zs[0].t().dot(&zs[0]) * mu[0] + zs[1].t().dot(&zs[1]) * mu[1] + Array2::<f64>::eye(e) * eta;
    let p = update_p(&h, &rz, &g.invc().unwrap());
    let mut grad = p.clone() * eta;
    for (z, m) in zs.iter().zip(mu) {
        grad = grad + (p.dot(&z.t().dot(z)) - h.t().dot(z)) * m;
    }
    assert!(grad.iter().all(|v| v.abs() < 1e-12), "{grad:?}");
}

#[test]
fn printed_h_update_is_stationary_for_eq10() {
    // Eq. 10 solves ∂/∂H [Σ μₘ‖H − Zₘ Pᵀ‖² + γ tr(Hᵀ L H)] = 2[Σ μₘ (H − Zₘ Pᵀ) + γ L H] = 0.
    let (g, _) = small_graph(13);
    let n = g.len();
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let zs = [randn(&mut rng, n, 4), randn(&mut rng, n, 4)];
    let mu = [1e-3, 1e-3];
    let sys = System { graph: &g, c: mu[0] + mu[1], gamma: 1e-2 };
    let p = randn(&mut rng, 5, 4);
    let rz = &zs[0] * mu[0] + &zs[1] * mu[1];
    let (h, _) = solve_system(&sys, &rz.dot(&p.t()), Solver::Cg, 1e-12, 1000).unwrap();
    let mut grad = g.laplacian_mul(h.view()) * sys.gamma;
    for (z, m) in zs.iter().zip(mu) {
        grad = grad + (&h - &z.dot(&p.t())) * m;
    }
    let scale = rz.dot(&p.t()).iter().fold(0.0f64, |a, v| a.max(v.abs()));
    assert!(grad.iter().all(|v| v.abs() < 1e-9 * scale), "max |grad| {}", grad.iter().fold(0.0f64, |a, v| a.max(v.abs())));
}

/// Largest ratio σ₂/σ₁ of the singular values of `a`: how far its rows are from one direction.
fn second_singular_ratio(a: &Array2<f64>) -> f64 {
    let (_, s, _) = a.svddc(JobSvd::None).unwrap();
    s[1] / s[0]
}

#[test]
fn constrained_codes_do_not_degrade_with_iterations_but_printed_ones_collapse() {
    let (train, query) = small_problem(15, 300, 0);
    let bits = 32;
    let fit = |constraint, iterations, seed| {
        SeghParams { constraint, iterations, ..SeghParams::paper() }.fit(&train, &FitContext::new(bits, seed)).unwrap()
    };
    // Mean mAP over 3 seeds (the ITQ start is random): [I→T, T→I] × [learned B, encoded].
    let mean_maps = |constraint, iterations| -> [f64; 4] {
        let mut m = [0.0; 4];
        for seed in 0..3 {
            let model = fit(constraint, iterations, seed);
            let (a, b) = maps(&model, &query, &train, true);
            let (c, d) = maps(&model, &query, &train, false);
            for (acc, v) in m.iter_mut().zip([a, b, c, d]) {
                *acc += v / 3.0;
            }
        }
        m
    };
    let ours1 = mean_maps(CodeConstraint::Orthogonal, 1);
    let ours10 = mean_maps(CodeConstraint::Orthogonal, 10);
    let printed1 = mean_maps(CodeConstraint::Printed, 1);
    let printed10 = mean_maps(CodeConstraint::Printed, 10);
    eprintln!("ours {ours1:.3?} -> {ours10:.3?}; printed {printed1:.3?} -> {printed10:.3?}");
    for j in 0..4 {
        assert!(ours10[j] >= ours1[j] - 0.02, "constrained: 1 iteration {ours1:.3?}, 10 iterations {ours10:.3?}");
        assert!(printed10[j] < printed1[j] - 0.05, "printed: 1 iteration {printed1:.3?}, 10 iterations {printed10:.3?}");
        assert!(ours10[j] > printed10[j] + 0.1);
    }
    let (ours10, printed1, printed10) =
        (fit(CodeConstraint::Orthogonal, 10, 0), fit(CodeConstraint::Printed, 1, 0), fit(CodeConstraint::Printed, 10, 0));
    // The printed alternation is a power iteration: P's rows (one per bit) align.
    let (r1, r10) = (second_singular_ratio(printed1.p()), second_singular_ratio(printed10.p()));
    assert!(r10 < 0.2 * r1, "σ₂/σ₁ of P: {r1:.3} after 1 iteration, {r10:.3} after 10");
    let ours_ratio = second_singular_ratio(ours10.p());
    assert!(ours_ratio > 0.2, "σ₂/σ₁ of P with the constraint: {ours_ratio:.3}");
    // And its objective heads to the trivial minimum 0 (P = 0, H = 0) of the printed eq. 8.
    let h = printed10.history();
    assert!(h[9] < 0.5 * h[0], "printed objective {h:?}");
    let ho = ours10.history();
    assert!(ho.iter().all(|&v| v > 0.5 * ho[0]), "constrained objective {ho:?}");
}

#[test]
fn segh_beats_random_codes_on_synthetic_data() {
    let (train, query) = small_problem(16, 300, 0);
    let model = SeghParams::paper().fit(&train, &FitContext::new(16, 1)).unwrap();
    for learned in [true, false] {
        let (i2t, t2i) = maps(&model, &query, &train, learned);
        eprintln!("learned={learned} {i2t:.3} {t2i:.3}");
        // 10 balanced classes: random codes give mAP ≈ 0.1.
        assert!(i2t > 0.3 && t2i > 0.3, "learned={learned}: {i2t:.3} {t2i:.3}");
    }
}

#[test]
fn zero_shot_encodes_unseen_class_items_above_chance() {
    let (ts, class) =
        synthetic(&SyntheticSpec { n: 700, n_classes: 10, image_dim: 30, text_dim: 20, embedding_dim: 24, noise: (1.0, 0.5), seed: 17 });
    let seen: Vec<usize> = (0..ts.len()).filter(|&i| class[i] < 8).collect();
    let unseen: Vec<usize> = (0..ts.len()).filter(|&i| class[i] >= 8).collect();
    let train = subset(&ts, &seen);
    let test = subset(&ts, &unseen);
    let (q_idx, db_idx): (Vec<usize>, Vec<usize>) = (0..test.len()).partition(|i| i % 4 == 0);
    let (q, db) = (subset(&test, &q_idx), subset(&test, &db_idx));
    let (mut i2t, mut t2i) = (0.0, 0.0);
    for seed in 0..3 {
        let model = SeghParams::paper().fit(&train, &FitContext::new(32, seed)).unwrap();
        let (a, b) = maps(&model, &q, &db, false);
        (i2t, t2i) = (i2t + a / 3.0, t2i + b / 3.0);
    }
    // Two unseen classes: random ranking gives ≈ 0.5.
    assert!(i2t > 0.66 && t2i > 0.66, "zero-shot mAP (mean of 3 seeds) {i2t:.3} {t2i:.3}");
}

#[test]
fn streamed_fit_equals_the_in_memory_fit() {
    // Anchor and raw features, the orthogonal and the printed constraint (24 bits: three column
    // groups of the streamed H solve), the exact and the approximate kNN, multi-label and
    // partially labelled rows.
    let (mut train, _) = small_problem(31, 900, 32);
    for i in (0..train.len()).step_by(4) {
        train.labels[0][[i, (i / 4) % 10]] = 1;
    }
    for i in (0..train.len()).step_by(9) {
        train.labelled[1][i] = false;
        train.labels[1].row_mut(i).fill(0);
    }
    let cases = [
        (SeghParams { anchors: 120, sigma_scale: vec![1.0, 0.7], iterations: 3, objective_tol: 0.0, ..Default::default() }, 16),
        (SeghParams { constraint: CodeConstraint::Printed, iterations: 3, knn_exact_up_to: 100, ..Default::default() }, 24),
        (SeghParams { k: 6, ..Default::default() }, 8),
    ];
    for (params, bits) in cases {
        let ctx = FitContext::new(bits, 3);
        let in_memory = params.fit(&train, &ctx).unwrap();
        let streamed = params.fit_streamed(&train, &ctx).unwrap();
        let what = format!("{:?}, anchors {}, {bits} bits", params.constraint, params.anchors);
        assert_eq!(in_memory.train_codes(), streamed.train_codes(), "{what}: learned codes");
        assert_eq!(in_memory.history().len(), streamed.history().len(), "{what}");
        for (a, b) in in_memory.history().iter().zip(streamed.history()) {
            assert!((a - b).abs() <= 1e-9 * a.abs(), "{what}: objective {a} vs {b}");
        }
        assert!(rel(streamed.p(), in_memory.p()) < 1e-8, "{what}: P differs by {}", rel(streamed.p(), in_memory.p()));
        assert_eq!(in_memory.info().cg_iterations, streamed.info().cg_iterations, "{what}");
        for m in 0..2 {
            assert!(
                rel(streamed.w(m), in_memory.w(m)) < 1e-8,
                "{what}: W of modality {m} differs by {}",
                rel(streamed.w(m), in_memory.w(m))
            );
            let (a, b) = (streamed.mean(m), in_memory.mean(m));
            assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12), "{what}: mean of modality {m}");
            let v = train.views[m].clone();
            assert_eq!(streamed.encode(m, &v).unwrap(), in_memory.encode(m, &v).unwrap(), "{what}: encoded modality {m}");
        }
    }
}

#[test]
fn step_two_in_locality_order_equals_step_two_in_input_order() {
    // With the approximate kNN graph, step 2 runs on the items in the leaf order of the first
    // modality's forest and puts the codes back: same model as in the input order, up to the
    // order of floating-point sums. Both the in-memory and the streamed fit.
    let (train, _) = small_problem(37, 700, 0);
    let params = SeghParams { knn_exact_up_to: 100, iterations: 3, objective_tol: 0.0, ..SeghParams::paper() };
    let ctx = FitContext::new(16, 2);
    for streamed in [false, true] {
        let local = fit_impl(&params, &train, &ctx, Solver::Cg, streamed, Order::Locality).unwrap();
        let input = fit_impl(&params, &train, &ctx, Solver::Cg, streamed, Order::Input).unwrap();
        assert_eq!(local.train_codes(), input.train_codes(), "streamed={streamed}: learned codes");
        assert!(rel(local.p(), input.p()) < 1e-8, "streamed={streamed}: P differs by {}", rel(local.p(), input.p()));
        for (a, b) in local.history().iter().zip(input.history()) {
            assert!((a - b).abs() <= 1e-9 * a.abs(), "streamed={streamed}: objective {a} vs {b}");
        }
        assert_eq!(local.info().cg_iterations, input.info().cg_iterations);
    }
}

#[test]
fn quadratic_form_and_tall_polar_match_their_definitions() {
    let (g, a) = small_graph(6);
    let n = a.nrows();
    let l = Array2::from_diag(&a.sum_axis(Axis(1))) - &a;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let v = randn(&mut rng, n, 3);
    let direct = (&v * &l.dot(&v)).sum();
    assert!((g.quadratic_form(v.view()) - direct).abs() < 1e-10 * direct.abs());
    let t = randn(&mut rng, n, 4);
    assert!(rel(&polar_tall(t.clone(), true).unwrap(), &polar(&t, true).unwrap()) < 1e-12);
    assert!(polar_tall(Array2::zeros((n, 2)), true).is_err(), "rank-deficient input is refused");
}

#[test]
fn approximate_knn_path_gives_a_comparable_model() {
    let (train, query) = small_problem(23, 600, 0);
    let ctx = FitContext::new(32, 1);
    let exact = SeghParams::paper().fit(&train, &ctx).unwrap();
    let approx = SeghParams { knn_exact_up_to: 100, ..SeghParams::paper() }.fit(&train, &ctx).unwrap();
    for learned in [true, false] {
        let (a, b) = maps(&exact, &query, &train, learned);
        let (c, d) = maps(&approx, &query, &train, learned);
        assert!((a - c).abs() < 0.03 && (b - d).abs() < 0.03, "learned={learned}: exact {a:.3}/{b:.3}, approximate {c:.3}/{d:.3}");
    }
}

#[test]
fn semi_supervised_items_without_labels_are_used_through_knn_only() {
    let (full, query) = small_problem(18, 300, 0);
    let mut train = full.clone();
    let hidden: Vec<usize> = (0..train.len()).filter(|i| i % 10 < 7).collect();
    for m in 0..2 {
        for &i in &hidden {
            train.labelled[m][i] = false;
            train.labels[m].row_mut(i).fill(0);
        }
    }
    let ctx = FitContext::new(16, 1);
    let model = SeghParams::paper().fit(&train, &ctx).unwrap();
    // Relevance is judged on the true labels (`full`), also for the hidden rows.
    let (i2t, t2i) = maps(&model, &query, &full, false);
    assert!(i2t > 0.25 && t2i > 0.25, "encoded database: {i2t:.3} {t2i:.3}");
    eprintln!("semi-supervised encoded {i2t:.3} {t2i:.3}");
    // The learned codes of the hidden rows come from the kNN terms alone, yet carry their class.
    let b_hidden = model.train_codes().unwrap().select_rows(&hidden);
    let l_hidden = full.labels[0].select(Axis(0), &hidden);
    let qt = model.encode(1, &query.views[1]).unwrap();
    let t2i_hidden = map(qt.view(), b_hidden.view(), query.labels[0].view(), l_hidden.view()).unwrap();
    assert!(t2i_hidden > 0.3, "T→I against the hidden rows' learned codes: {t2i_hidden:.3}");
    eprintln!("hidden learned {t2i_hidden:.3}");
    // Hidden rows have no label affinity at all.
    let g = Graph::new(train.len(), vec![], &train.labels, &train.labelled, None);
    let a = g.dense_affinity();
    assert!(a.row(0).iter().all(|&v| v == 0.0) && a.column(0).iter().all(|&v| v == 0.0));
    assert!(a[[8, 8]] > 0.0);
}

#[test]
fn check_refuses_bad_hyper_parameters_and_data() {
    let (train, _) = small_problem(19, 60, 0);
    let ok = SeghParams::paper();
    ok.check(&train, 16).unwrap();
    let cases: Vec<(SeghParams, usize, &str)> = vec![
        (SeghParams { gamma: -1.0, ..SeghParams::paper() }, 16, "gamma"),
        (SeghParams { lambda: vec![1e3, -2.0], ..SeghParams::paper() }, 16, "lambda[1]"),
        (SeghParams { mu: vec![1e-3], ..SeghParams::paper() }, 16, "one per modality"),
        (SeghParams { mu: vec![0.0, 0.0], ..SeghParams::paper() }, 16, "must not all be 0"),
        (SeghParams { eta: 0.0, ..SeghParams::paper() }, 16, "eta"),
        (SeghParams { k: 60, ..SeghParams::paper() }, 16, "k = 60"),
        (SeghParams { k: 0, ..SeghParams::paper() }, 16, "k (neighbours"),
        (SeghParams { iterations: 0, ..SeghParams::paper() }, 16, "iterations"),
        (SeghParams { cg_tol: 0.0, ..SeghParams::paper() }, 16, "cg_tol"),
        (SeghParams::paper(), 0, "bits"),
        (SeghParams { anchors: 10, sigma_scale: vec![1.0], ..SeghParams::paper() }, 16, "sigma_scale"),
        (SeghParams { anchors: 10, sigma_scale: vec![1.0, -0.5], ..SeghParams::paper() }, 16, "sigma_scale[1]"),
    ];
    for (p, bits, want) in cases {
        let err = format!("{:#}", p.check(&train, bits).unwrap_err());
        assert!(err.contains(want), "expected `{want}` in: {err}");
    }
    let err = format!("{:#}", ok.fit(&train, &FitContext::new(0, 0)).unwrap_err());
    assert!(err.contains("bits"), "{err}");
    // No class embeddings.
    let mut no_emb = train.clone();
    no_emb.class_embeddings = None;
    let err = format!("{:#}", ok.check(&no_emb, 16).unwrap_err());
    assert!(err.contains("class embeddings") && err.contains("embed-classes"), "{err}");
    // Embeddings of the wrong size, or not finite.
    let mut bad = train.clone();
    bad.class_embeddings = Some(Array2::zeros((3, 4)));
    assert!(format!("{:#}", ok.check(&bad, 16).unwrap_err()).contains("3 rows"));
    let mut nan = train.clone();
    nan.class_embeddings.as_mut().unwrap()[[2, 1]] = f32::NAN;
    assert!(format!("{:#}", ok.check(&nan, 16).unwrap_err()).contains("class 2"));
    // Raw images instead of features.
    let mut img = train.clone();
    img.views[0] = View::Images(ndarray::Array4::zeros((60, 2, 2, 3)));
    assert!(format!("{:#}", ok.check(&img, 16).unwrap_err()).contains("feature vectors"));
    // A modality with no labelled item.
    let mut unl = train.clone();
    unl.labelled[1] = vec![false; 60];
    assert!(format!("{:#}", ok.check(&unl, 16).unwrap_err()).contains("modality 1 has no labelled"));
    // TOML: unknown keys refused, missing keys take the paper's defaults.
    let p: SeghParams = toml::from_str("gamma = 0.5\nlambda = [10.0, 20.0]").unwrap();
    assert_eq!((p.gamma, p.lambda.clone(), p.mu.clone(), p.eta), (0.5, vec![10.0, 20.0], vec![1e-3, 1e-3], 1e-2));
    assert!(toml::from_str::<SeghParams>("gama = 0.5").unwrap_err().to_string().contains("gama"));
    let p: SeghParams = toml::from_str("constraint = \"printed\"").unwrap();
    assert_eq!(p.constraint, CodeConstraint::Printed);
}

#[test]
fn save_load_round_trip() {
    let (train, query) = small_problem(20, 120, 12);
    let model = SeghParams { iterations: 2, ..SeghParams::paper() }.fit(&train, &FitContext::new(24, 4)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let back = SeghModel::load(dir.path()).unwrap();
    assert_eq!(back.method(), "segh");
    assert_eq!(back.bits(), 24);
    assert_eq!(back.params(), model.params());
    assert_eq!(back.history(), model.history());
    assert_eq!(back.info(), model.info());
    assert_eq!(back.train_codes(), model.train_codes());
    assert_eq!(back.p(), model.p());
    for m in 0..2 {
        assert_eq!(back.w(m), model.w(m));
        assert_eq!(back.mean(m), model.mean(m));
        assert_eq!(back.encode(m, &query.views[m]).unwrap(), model.encode(m, &query.views[m]).unwrap());
    }
    // Python's recipe in model.json: sign((x − mean) Wᵀ Pᵀ), from the .npy files alone.
    let w0 = read_npy(&dir.path().join("W_0.npy")).unwrap().to_f64().into_dimensionality::<ndarray::Ix2>().unwrap();
    let p = read_npy(&dir.path().join("P.npy")).unwrap().to_f64().into_dimensionality::<ndarray::Ix2>().unwrap();
    let mean0 = read_npy(&dir.path().join("mean_0.npy")).unwrap().to_f64().into_dimensionality::<ndarray::Ix1>().unwrap();
    let x = to_f64(query.views[0].features("t", 0).unwrap().view());
    let by_hand = BinaryCodes::from_signs(((x - &mean0).dot(&w0.t()).dot(&p.t())).view());
    assert_eq!(by_hand, model.encode(0, &query.views[0]).unwrap());
    // A damaged file is refused, naming it.
    write_npy(&dir.path().join("P.npy"), &Array2::<f64>::zeros((3, 3))).unwrap();
    let err = format!("{:#}", SeghModel::load(dir.path()).unwrap_err());
    assert!(err.contains("P.npy") && err.contains("expected shape"), "{err}");
    std::fs::write(dir.path().join("model.json"), "{\"method\": \"sch\"}").unwrap();
    let err = format!("{:#}", SeghModel::load(dir.path()).unwrap_err());
    assert!(err.contains("model.json"), "{err}");
    // Encoding features of the wrong width is refused.
    let err = model.encode(1, &View::Features(Array2::zeros((2, 3)))).unwrap_err().to_string();
    assert!(err.contains("10-dimensional"), "{err}");
}

/// The anchor-feature option (`anchors > 0`): every hash function equals, computed by hand from
/// the saved .npy files with an independent loop, sign(P Wₘ (φₘ(x) − x̄ₘ)) with
/// φ(x)_a = exp(−‖x − anchor_a‖² / (2σ²)) − φ̄_a; step 1 satisfies eq. 7 with Xₘ = Φₘ; and the
/// model survives save / load.
#[test]
fn anchor_features_match_a_hand_computation_and_round_trip() {
    let (train, query) = small_problem(21, 120, 12);
    let params = SeghParams { anchors: 40, sigma_scale: vec![1.0, 0.7], iterations: 2, ..SeghParams::paper() };
    params.check(&train, 16).unwrap();
    let model = params.fit(&train, &FitContext::new(16, 3)).unwrap();
    assert_eq!(model.w(0).ncols(), 40, "W is learned on the 40 anchor features");
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("model.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let load = |name: &str| read_npy(&dir.path().join(name)).unwrap().to_f64();
    let p = load("P.npy").into_dimensionality::<ndarray::Ix2>().unwrap();
    for m in 0..2 {
        let anchors = load(&format!("m{m}_anchors.npy")).into_dimensionality::<ndarray::Ix2>().unwrap();
        let phi_mean = load(&format!("m{m}_phi_mean.npy")).into_dimensionality::<ndarray::Ix1>().unwrap();
        let w = load(&format!("W_{m}.npy")).into_dimensionality::<ndarray::Ix2>().unwrap();
        let mean = load(&format!("mean_{m}.npy")).into_dimensionality::<ndarray::Ix1>().unwrap();
        let sigma = json["sigma"][m].as_f64().unwrap();
        let x = query.views[m].features("t", m).unwrap();
        let (n, c) = (x.nrows(), anchors.nrows());
        let mut proj = Array2::<f64>::zeros((n, p.nrows()));
        for i in 0..n {
            let phi: Vec<f64> = (0..c)
                .map(|a| {
                    let d2: f64 = (0..x.ncols()).map(|j| (x[[i, j]] as f64 - anchors[[a, j]]).powi(2)).sum();
                    (-d2 / (2.0 * sigma * sigma)).exp() - phi_mean[a] - mean[a]
                })
                .collect();
            for b in 0..p.nrows() {
                proj[[i, b]] = (0..w.nrows()).map(|e| p[[b, e]] * (0..c).map(|a| w[[e, a]] * phi[a]).sum::<f64>()).sum();
            }
        }
        let fast = model.project(m, x.view()).unwrap();
        assert!(rel(&fast, &proj) < 1e-9, "modality {m}: projection differs by {}", rel(&fast, &proj));
        assert_eq!(BinaryCodes::from_signs(proj.view()), model.encode(m, &query.views[m]).unwrap());
    }
    // Text bandwidth is 0.7 × the image-style heuristic: both maps were fitted, σ's differ.
    assert!(json["sigma"][0].as_f64().unwrap() > 0.0 && json["sigma"][1].as_f64().unwrap() > 0.0);
    // Eq. 7 with Xₘ = Φₘ (the centred anchor features of the training rows), in the embedding space.
    let emb = to_f64(train.class_embeddings.as_ref().unwrap().view());
    let rows = labelled_rows(&train, 0);
    let s = semantic_matrix(&train.labels[0], &rows, &emb);
    let phi = model.rbf(0).unwrap().transform(train.views[0].features("t", 0).unwrap().view()).unwrap() - model.mean(0);
    let x = phi.select(Axis(0), &rows);
    let w = model.w(0);
    let lhs = s.t().dot(&s).dot(w) + w.dot(&x.t().dot(&x)) * params.lambda[0];
    let rhs = s.t().dot(&x) * (1.0 + params.lambda[0]);
    assert!(rel(&lhs, &rhs) < 1e-6, "eq. 7 residual {}", rel(&lhs, &rhs));
    // Save / load keeps the maps and the codes.
    let back = SeghModel::load(dir.path()).unwrap();
    assert_eq!(back.rbf(1), model.rbf(1));
    for m in 0..2 {
        assert_eq!(back.encode(m, &query.views[m]).unwrap(), model.encode(m, &query.views[m]).unwrap());
    }
    // A model without anchors writes no `sigma` and has no maps.
    let raw = SeghParams { iterations: 1, ..SeghParams::paper() }.fit(&train, &FitContext::new(8, 0)).unwrap();
    assert!(raw.rbf(0).is_none());
}
