//! Tests of SCH against an independent loop-based objective, finite differences and hand-worked
//! cases.

use super::*;
use crate::metrics;
use crate::numerics::random::{randn, random_orthogonal, ShallowRng};
use ndarray::array;

// ---- an independent, loop-based objective (no BLAS, no shared code) ------------------------
#[allow(clippy::too_many_arguments)]
fn naive_objective(
    p: &SchParams,
    y: &Array2<f64>,
    f: &Array2<f64>,
    u: &Array2<f64>,
    v: &Array2<f64>,
    b: &Array2<f64>,
    r: &Array2<f64>,
    w: &[Array2<f64>],
    phi: &[Array2<f64>],
) -> f64 {
    let (n, c) = y.dim();
    let k = f.ncols();
    let mut j = 0.0;
    for i in 0..n {
        for l in 0..c {
            let fu: f64 = (0..k).map(|q| f[[i, q]] * u[[q, l]]).sum();
            j += p.alpha * (y[[i, l]] - fu).powi(2);
        }
        for q in 0..k {
            let yv: f64 = (0..c).map(|l| y[[i, l]] * v[[l, q]]).sum();
            j += p.beta * (f[[i, q]] - yv).powi(2);
            let fr: f64 = (0..k).map(|z| f[[i, z]] * r[[z, q]]).sum();
            j += p.mu * (b[[i, q]] - fr).powi(2);
            for t in 0..phi.len() {
                let pw: f64 = (0..phi[t].ncols()).map(|a| phi[t][[i, a]] * w[t][[a, q]]).sum();
                j += p.lambda[t] * (f[[i, q]] - pw).powi(2);
            }
        }
    }
    let sq = |a: &Array2<f64>| a.iter().map(|x| x * x).sum::<f64>();
    j + p.rho * (sq(u) + sq(v) + w.iter().map(sq).sum::<f64>())
}

#[derive(Clone)]
struct Toy {
    p: SchParams,
    y: Array2<f64>,
    phi: Vec<Array2<f64>>,
    f: Array2<f64>,
    u: Array2<f64>,
    v: Array2<f64>,
    b: Array2<f64>,
    r: Array2<f64>,
    w: Vec<Array2<f64>>,
}

impl Toy {
    fn new(seed: u64) -> Self {
        let mut rng = seeded_rng(seed, 7);
        let (n, c, k, dims) = (25, 3, 4, [6, 5]);
        let y = Array2::from_shape_fn((n, c), |(i, l)| if i % c == l || (i % 7 == 0 && l == 0) { 1.0 } else { 0.0 });
        let phi: Vec<_> = dims.iter().map(|&d| randn(n, d, &mut rng)).collect();
        // Weights off the paper's values (and λ not summing to 1) to exercise every term.
        let p = SchParams { alpha: 1.7, beta: 0.6, mu: 0.9, lambda: vec![0.4, 1.3], rho: 0.35, ..SchParams::paper() };
        Self {
            y,
            f: randn(n, k, &mut rng),
            u: randn(k, c, &mut rng),
            v: randn(c, k, &mut rng),
            b: sgn(randn(n, k, &mut rng).view()),
            r: random_orthogonal(k, &mut rng).unwrap(),
            w: dims.iter().map(|&d| randn(d, k, &mut rng)).collect(),
            phi,
            p,
        }
    }
    fn pw(&self) -> Vec<Array2<f64>> {
        self.phi.iter().zip(&self.w).map(|(ph, w)| ph.dot(w)).collect()
    }
    fn j(&self) -> f64 {
        naive_objective(&self.p, &self.y, &self.f, &self.u, &self.v, &self.b, &self.r, &self.w, &self.phi)
    }
}

/// Central finite-difference gradient of J in one block, with the naive objective.
type SetEntry<'a> = &'a dyn Fn(&mut Toy, (usize, usize), f64);

fn fd_grad(toy: &Toy, set: SetEntry, shape: (usize, usize)) -> Array2<f64> {
    let h = 1e-5;
    Array2::from_shape_fn(shape, |ij| {
        let mut a = toy.clone();
        set(&mut a, ij, h);
        let jp = a.j();
        set(&mut a, ij, -2.0 * h);
        let jm = a.j();
        (jp - jm) / (2.0 * h)
    })
}

fn assert_small(g: &Array2<f64>, scale: f64, what: &str) {
    let m = g.iter().fold(0.0f64, |a, &v| a.max(v.abs()));
    assert!(m < 1e-6 * scale.max(1.0), "{what}: gradient at the update is {m}, not 0");
}

fn perturbation_never_helps(toy: &Toy, apply: &dyn Fn(&mut Toy, &Array2<f64>), shape: (usize, usize), rng: &mut ShallowRng, what: &str) {
    let j0 = toy.j();
    for scale in [1e-3, 1e-1, 1.0] {
        for _ in 0..10 {
            let e = randn(shape.0, shape.1, rng) * scale;
            let mut a = toy.clone();
            apply(&mut a, &e);
            assert!(a.j() >= j0 - 1e-9 * j0.abs(), "{what}: perturbation {scale} lowered J from {j0} to {}", a.j());
        }
    }
}

#[test]
fn objective_matches_the_naive_sum() {
    let toy = Toy::new(1);
    let fast = objective(&toy.p, toy.y.view(), toy.f.view(), toy.u.view(), toy.v.view(), toy.b.view(), toy.r.view(), &toy.w, &toy.pw());
    assert!((fast - toy.j()).abs() < 1e-9 * toy.j());
}

#[test]
fn update_f_is_the_block_minimiser() {
    let mut toy = Toy::new(2);
    toy.f = update_f(&toy.p, toy.y.view(), toy.u.view(), toy.v.view(), toy.b.view(), toy.r.view(), &toy.pw()).unwrap();
    let g = fd_grad(&toy, &|t, (i, j), h| t.f[[i, j]] += h, toy.f.dim());
    assert_small(&g, toy.j(), "F (eq. 9)");
    let mut rng = seeded_rng(20, 0);
    perturbation_never_helps(&toy, &|t, e| t.f += e, toy.f.dim(), &mut rng, "F");
    // With Σλ ≠ 1 the printed (β + 1)I would not be the minimiser: its F has a non-zero gradient.
    let mut printed_a = toy.u.dot(&toy.u.t()) * toy.p.alpha;
    printed_a.diag_mut().mapv_inplace(|d| d + toy.p.beta + toy.p.mu + 1.0);
    let mut rhs = toy.y.dot(&toy.u.t()) * toy.p.alpha + toy.y.dot(&toy.v) * toy.p.beta + toy.b.dot(&toy.r.t()) * toy.p.mu;
    for (l, pw) in toy.p.lambda.iter().zip(toy.pw()) {
        rhs.scaled_add(*l, &pw);
    }
    let mut printed = Toy { f: solve_right_spd(rhs.view(), printed_a.view()).unwrap(), ..Toy::new(2) };
    printed.u = toy.u.clone();
    let gp = fd_grad(&printed, &|t, (i, j), h| t.f[[i, j]] += h, printed.f.dim());
    assert!(gp.iter().any(|v| v.abs() > 1e-3), "Σλ = 1.7 ≠ 1 must make the printed F update inexact");
}

#[test]
fn update_u_is_the_block_minimiser() {
    let mut toy = Toy::new(3);
    toy.u = update_u(&toy.p, toy.f.view(), toy.y.view()).unwrap();
    let g = fd_grad(&toy, &|t, (i, j), h| t.u[[i, j]] += h, toy.u.dim());
    assert_small(&g, toy.j(), "U (eq. 12)");
    let mut rng = seeded_rng(21, 0);
    perturbation_never_helps(&toy, &|t, e| t.u += e, toy.u.dim(), &mut rng, "U");
}

#[test]
fn update_v_is_the_block_minimiser() {
    let mut toy = Toy::new(4);
    toy.v = update_v(&toy.p, toy.f.view(), toy.y.view()).unwrap();
    let g = fd_grad(&toy, &|t, (i, j), h| t.v[[i, j]] += h, toy.v.dim());
    assert_small(&g, toy.j(), "V (eq. 15)");
    let mut rng = seeded_rng(22, 0);
    perturbation_never_helps(&toy, &|t, e| t.v += e, toy.v.dim(), &mut rng, "V");
}

#[test]
fn update_w_is_the_block_minimiser_with_ridge_rho_over_lambda() {
    let mut toy = Toy::new(5);
    for t in 0..2 {
        let gram = toy.phi[t].t().dot(&toy.phi[t]);
        let fac = w_factor(&toy.p, gram.view(), toy.p.lambda[t]).unwrap();
        toy.w[t] = update_w(&fac, toy.phi[t].view(), toy.f.view()).unwrap();
        let shape = toy.w[t].dim();
        let g = fd_grad(&toy, &|a, (i, j), h| a.w[t][[i, j]] += h, shape);
        assert_small(&g, toy.j(), "W (eq. 18)");
        let mut rng = seeded_rng(23 + t as u64, 0);
        perturbation_never_helps(&toy, &|a, e| a.w[t] += e, shape, &mut rng, "W");
        // The printed ridge λₜ/γ (γ = ρ) in place of ρ/λₜ is not the minimiser.
        let mut wrong = gram.clone();
        wrong.diag_mut().mapv_inplace(|d| d + toy.p.lambda[t] / toy.p.rho);
        let mut other = Toy::new(5);
        other.w = toy.w.clone();
        other.w[t] = SpdFactor::new(wrong.view()).unwrap().solve(toy.phi[t].t().dot(&toy.f).view()).unwrap();
        assert!(other.j() > toy.j() + 1e-9);
    }
}

#[test]
fn update_r_is_the_best_rotation() {
    let mut toy = Toy::new(6);
    toy.r = update_r(toy.f.view(), toy.b.view(), toy.r.view()).unwrap();
    let k = toy.r.nrows();
    let orth = toy.r.t().dot(&toy.r) - Array2::<f64>::eye(k);
    assert!(orth.iter().all(|v| v.abs() < 1e-10));
    let j0 = toy.j();
    let mut rng = seeded_rng(30, 0);
    for scale in [1e-3, 1e-1, 1.0] {
        for _ in 0..10 {
            // R·Q with Q a Cayley rotation (I − S)⁻¹(I + S) of a random skew S: stays orthogonal.
            let a = randn(k, k, &mut rng) * scale;
            let cay = cayley(&((&a - &a.t()) * 0.5));
            let mut other = Toy::new(6);
            other.r = toy.r.dot(&cay);
            assert!(other.j() >= j0 - 1e-9 * j0, "rotation {scale} lowered J");
        }
        for _ in 0..5 {
            let mut other = Toy::new(6);
            other.r = random_orthogonal(k, &mut rng).unwrap();
            assert!(other.j() >= j0 - 1e-9 * j0);
        }
    }
}

/// Cayley transform (I − S)⁻¹(I + S) of a skew-symmetric S (orthogonal), by Gaussian
/// elimination written out (independent of LAPACK).
fn cayley(s: &Array2<f64>) -> Array2<f64> {
    let eye = Array2::<f64>::eye(s.nrows());
    let b = naive_solve(&(&eye - s), &(&eye + s));
    let err = b.t().dot(&b) - &eye;
    assert!(err.iter().all(|v| v.abs() < 1e-9), "Cayley transform not orthogonal");
    b
}

#[test]
fn update_b_is_the_best_binary_matrix() {
    let mut toy = Toy::new(7);
    toy.b = update_b(toy.f.view(), toy.r.view());
    let j0 = toy.j();
    let (n, k) = toy.b.dim();
    // J is separable in the entries of B: no single flip, and no random multi-flip, helps.
    for i in 0..n {
        for q in 0..k {
            let mut other = Toy::new(7);
            other.b = toy.b.clone();
            other.b[[i, q]] *= -1.0;
            assert!(other.j() >= j0 - 1e-12 * j0);
        }
    }
    assert!(toy.b.iter().all(|&v| v == 1.0 || v == -1.0));
}

#[test]
fn hand_worked_tiny_case() {
    // n = 2, C = 2, k = 1, one modality; α = β = μ = λ = ρ = 1.
    let p = SchParams { alpha: 1.0, beta: 1.0, mu: 1.0, lambda: vec![1.0], rho: 1.0, ..SchParams::paper() };
    let y = array![[1.0, 0.0], [0.0, 1.0]];
    // eq. 9 with U = [1 0], V = [1 0]ᵀ, B = [1 1]ᵀ, R = [1], ΦW = [2 0]ᵀ:
    // rhs = YUᵀ + YV + BRᵀ + ΦW = [1+1+1+2, 0+0+1+0] = [5, 1]; UUᵀ + (1 + 1 + 1) = 4 ⇒ F = [1.25, 0.25].
    let f = update_f(
        &p,
        y.view(),
        array![[1.0, 0.0]].view(),
        array![[1.0], [0.0]].view(),
        array![[1.0], [1.0]].view(),
        array![[1.0]].view(),
        &[array![[2.0], [0.0]]],
    )
    .unwrap();
    assert!((f[[0, 0]] - 1.25).abs() < 1e-12 && (f[[1, 0]] - 0.25).abs() < 1e-12, "{f}");
    // eq. 12 with F = [1, −1]ᵀ: U = (FᵀF + 1)⁻¹FᵀY = [1, −1] / 3.
    let fm = array![[1.0], [-1.0]];
    let u = update_u(&p, fm.view(), y.view()).unwrap();
    assert!((u[[0, 0]] - 1.0 / 3.0).abs() < 1e-12 && (u[[0, 1]] + 1.0 / 3.0).abs() < 1e-12);
    // eq. 15: V = (YᵀY + I)⁻¹YᵀF = (2I)⁻¹[1, −1]ᵀ = [0.5, −0.5]ᵀ.
    let v = update_v(&p, fm.view(), y.view()).unwrap();
    assert!((v[[0, 0]] - 0.5).abs() < 1e-12 && (v[[1, 0]] + 0.5).abs() < 1e-12);
    // eq. 18 with Φ = [1, −1]ᵀ: W = (ΦᵀΦ + ρ/λ)⁻¹ΦᵀF = (2 + 1)⁻¹ · 2 = 2/3.
    let phi = array![[1.0], [-1.0]];
    let fac = w_factor(&p, phi.t().dot(&phi).view(), 1.0).unwrap();
    let w = update_w(&fac, phi.view(), fm.view()).unwrap();
    assert!((w[[0, 0]] - 2.0 / 3.0).abs() < 1e-12);
    // eq. 20 with k = 1: R = sign(FᵀB); FᵀB = −2 for B = [−1, 1]ᵀ ⇒ R = −1.
    let r = update_r(fm.view(), array![[-1.0], [1.0]].view(), array![[1.0]].view()).unwrap();
    assert!((r[[0, 0]] + 1.0).abs() < 1e-12);
    // eq. 24: B = sgn(FR) = [−1, 1]ᵀ.
    assert_eq!(update_b(fm.view(), r.view()), array![[-1.0], [1.0]]);
}

/// Class-clustered two-modality data: modality t of class c is centre_{t,c} + noise.
/// Centres come from `seed`, the noise from `seed` and `noise_stream`: the same seed with another
/// stream gives fresh items of the same clusters.
pub(crate) fn clustered_items(
    n: usize,
    classes: usize,
    dims: &[usize],
    noise: f64,
    seed: u64,
    noise_stream: u64,
) -> (Vec<Array2<f32>>, Array2<u8>) {
    let mut rng = seeded_rng(seed, 99);
    let mut nrng = seeded_rng(seed, 100 + noise_stream);
    let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
    // All centres first, so that the same seed gives the same clusters for any n.
    let centres: Vec<Array2<f64>> = dims.iter().map(|&d| randn(classes, d, &mut rng)).collect();
    let views = dims
        .iter()
        .zip(&centres)
        .map(|(&d, centres)| {
            let mut x = randn(n, d, &mut nrng) * noise;
            for (i, &l) in labels.iter().enumerate() {
                let mut row = x.row_mut(i);
                row += &centres.row(l);
            }
            x.mapv(|v| v as f32)
        })
        .collect();
    (views, crate::bundle::one_hot(&labels, classes))
}

pub(crate) fn clustered(n: usize, classes: usize, dims: &[usize], noise: f64, seed: u64) -> (Vec<Array2<f32>>, Array2<u8>) {
    clustered_items(n, classes, dims, noise, seed, 0)
}

fn train_set(views: Vec<Array2<f32>>, labels: Array2<u8>) -> TrainSet {
    let c = labels.ncols();
    TrainSet::supervised(views.into_iter().map(View::Features).collect(), labels, (0..c).map(|i| format!("c{i}")).collect())
}

#[test]
fn fit_decreases_the_objective_monotonically_and_learns() {
    let (views, labels) = clustered(240, 4, &[12, 8], 0.5, 1);
    let data = train_set(views.clone(), labels.clone());
    let p = SchParams { anchors: 60, max_iter: 15, tol: 0.0, ..SchParams::paper() };
    let model = p.fit(&data, &FitContext::new(16, 3)).unwrap();
    let h = model.history();
    assert_eq!(h.len(), 16, "tol = 0 runs max_iter sweeps unless J stops changing");
    for w in h.windows(2) {
        assert!(w[1] <= w[0] * (1.0 + 1e-12), "objective rose: {w:?}");
    }
    assert!(h.last().unwrap() < &h[0]);
    // Cross-modal retrieval on fresh items of the same clusters works well in both conventions.
    let (tv, tl) = clustered_items(80, 4, &[12, 8], 0.5, 1, 1); // same clusters, fresh items
    let q_img = model.encode(0, &View::Features(tv[0].clone())).unwrap();
    let q_txt = model.encode(1, &View::Features(tv[1].clone())).unwrap();
    let db = model.train_codes().unwrap();
    let db_txt = model.encode(1, &View::Features(views[1].clone())).unwrap();
    let i2t = metrics::map(q_img.view(), db.view(), tl.view(), labels.view()).unwrap();
    let t2i = metrics::map(q_txt.view(), db.view(), tl.view(), labels.view()).unwrap();
    let i2t_enc = metrics::map(q_img.view(), db_txt.view(), tl.view(), labels.view()).unwrap();
    assert!(i2t > 0.9 && t2i > 0.9 && i2t_enc > 0.9, "{i2t} {t2i} {i2t_enc}");
}

/// Largest |a − b| relative to the largest |b|.
fn rel_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    let d = (a - b).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    d / b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300)
}

#[test]
fn streamed_fit_equals_the_in_memory_fit() {
    // n = 40,000 gives parts of several blocks (the streamed passes' in-part accumulation).
    // Single-label data in 10 classes at 12 bits: then F₀ = YG has no zero entries and no two
    // bit columns of G are equal up to sign. (Multi-label rows, or fewer classes than that,
    // make entries of FR exactly 0 in exact arithmetic; their signs are then decided by
    // rounding, in either path.) B₀ has one distinct row per class, so F₀ᵀB₀ and F₁ᵀB₀ have
    // rank 10 < 12 and the first two R updates go through the tie-break of
    // `procrustes_nearest`. The sweeps amplify the rounding differences of the two summation
    // orders (R from a nearly rank-deficient FᵀB, W from an ill-conditioned RBF Gram matrix):
    // J agrees to 1e-8, R and W to 1e-6, the codes exactly. (Without the tie-break R differs
    // by a rotation of O(1) in the null space and J by about 1e-5.)
    let check = |n: usize, hide_text_labels: bool, p: SchParams| {
        let (views, labels) = clustered(n, 10, &[7, 5], 0.8, 21);
        let mut data = train_set(views.clone(), labels);
        if hide_text_labels {
            for i in (0..n).step_by(7) {
                data.labelled[1][i] = false;
                data.labels[1].row_mut(i).fill(0);
            }
        }
        let ctx = FitContext::new(12, 4);
        let dense = p.fit(&data, &ctx).unwrap();
        let streamed = p.fit_streamed(&data, &ctx).unwrap();
        assert_eq!(dense.history().len(), streamed.history().len(), "same number of sweeps");
        for (a, b) in dense.history().iter().zip(streamed.history()) {
            assert!((a - b).abs() <= 1e-8 * a.abs(), "J {a} vs {b}");
        }
        assert_eq!(dense.fitted_rows(), streamed.fitted_rows());
        assert_eq!(dense.train_codes(), streamed.train_codes(), "learned codes");
        assert!(rel_diff(streamed.r(), dense.r()) < 1e-6, "R: {}", rel_diff(streamed.r(), dense.r()));
        for (t, view) in views.iter().enumerate().take(2) {
            assert!(rel_diff(streamed.w(t), dense.w(t)) < 1e-6, "W of modality {t}: {}", rel_diff(streamed.w(t), dense.w(t)));
            let (a, b) = (streamed.rbf(t), dense.rbf(t));
            assert_eq!(a.anchors, b.anchors, "same anchor draws");
            assert!((a.sigma - b.sigma).abs() <= 1e-12 * b.sigma);
            assert!((&a.mean - &b.mean).iter().all(|d| d.abs() < 1e-12));
            let v = View::Features(view.clone());
            assert_eq!(streamed.encode(t, &v).unwrap(), dense.encode(t, &v).unwrap());
        }
        dense.history().len()
    };
    let sweeps = check(40_000, false, SchParams { anchors: 40, max_iter: 3, tol: 0.0, refit_hash: true, ..SchParams::paper() });
    assert_eq!(sweeps, 4);
    // Partially labelled rows and the stopping rule (a loose tol stops before max_iter).
    let sweeps = check(3_000, true, SchParams { anchors: 30, max_iter: 30, tol: 1e-3, ..SchParams::paper() });
    assert!(sweeps < 31, "the stopping rule ended the sweeps");
    // The streamed Y blocks are the rows of the in-memory Y (union over modalities), also
    // for multi-label and partially labelled rows.
    let (views, mut labels) = clustered(50, 4, &[3, 3], 0.5, 2);
    for i in (0..50).step_by(3) {
        labels[[i, (i / 3) % 4]] = 1;
    }
    let mut data = train_set(views, labels);
    data.labels[1][[5, 3]] = 1;
    data.labelled[0][7] = false;
    data.labels[0].row_mut(7).fill(0);
    let (rows, y) = data.common_labelled();
    assert_eq!(rows, fitted_rows(&data));
    assert_eq!(label_block(&data, Some(&rows), 0, rows.len()), y);
    assert_eq!(label_block(&data, Some(&rows), 10, 20), y.slice(s![10..20, ..]));
    // A bad feature value is refused by the streamed path too, naming its position.
    let (mut views, labels) = clustered(50, 3, &[4, 4], 0.5, 2);
    views[1][[17, 2]] = f32::NAN;
    let e = format!(
        "{:#}",
        SchParams { anchors: 10, ..SchParams::default() }.fit_streamed(&train_set(views, labels), &FitContext::new(8, 0)).unwrap_err()
    );
    assert!(e.contains("row 17, column 2"), "{e}");
}

#[test]
fn fit_stops_when_the_objective_stops_decreasing() {
    let (views, labels) = clustered(120, 3, &[6, 5], 0.5, 2);
    let data = train_set(views, labels);
    let p = SchParams { anchors: 40, max_iter: 200, tol: 1e-3, ..SchParams::paper() };
    let model = p.fit(&data, &FitContext::new(8, 1)).unwrap();
    let h = model.history();
    assert!(h.len() < 201, "did not stop early");
    let n = h.len();
    assert!(h[n - 2] - h[n - 1] <= 1e-3 * h[n - 2]);
    for w in h[..n - 1].windows(2) {
        assert!(w[0] - w[1] > 1e-3 * w[0], "stopped late: {w:?}");
    }
}

#[test]
fn any_number_of_modalities_eq25() {
    let (views, labels) = clustered(90, 3, &[5, 4, 7], 0.5, 3);
    let data = train_set(views.clone(), labels);
    let p = SchParams { anchors: 30, lambda: vec![0.2, 0.3, 0.5], max_iter: 8, tol: 0.0, ..SchParams::paper() };
    let model = p.fit(&data, &FitContext::new(12, 0)).unwrap();
    assert_eq!(model.n_modalities(), 3);
    for w in model.history().windows(2) {
        assert!(w[1] <= w[0] * (1.0 + 1e-12));
    }
    let c = model.encode(2, &View::Features(views[2].clone())).unwrap();
    assert_eq!((c.len(), c.bits()), (90, 12));
    assert!(model.encode(3, &View::Features(views[2].clone())).is_err());
    assert!(model.encode(0, &View::Features(views[2].clone())).is_err(), "wrong feature dimension must be refused");
}

#[test]
fn fits_are_bit_identical_across_runs_and_thread_counts() {
    // Large enough (n·c·k > 2²²) for the parallel blocked products to be used.
    let (views, labels) = clustered(3000, 5, &[10, 6], 0.7, 4);
    let data = train_set(views, labels);
    let p = SchParams { anchors: 200, max_iter: 3, tol: 0.0, ..SchParams::paper() };
    let fit = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| p.fit(&data, &FitContext::new(16, 5)).unwrap())
    };
    let a = fit(1);
    for t in [2, 3] {
        let b = fit(t);
        assert_eq!(a.train_codes(), b.train_codes());
        assert_eq!(a.history(), b.history());
        assert_eq!(a.w(0), b.w(0));
    }
    let c = p.fit(&data, &FitContext::new(16, 6)).unwrap();
    assert_ne!(a.train_codes(), c.train_codes(), "another seed gives other codes");
}

#[test]
fn per_modality_anchor_counts() {
    let (views, labels) = clustered(90, 3, &[6, 4], 0.5, 9);
    let data = train_set(views.clone(), labels);
    let p = SchParams { anchors: 50, modality_anchors: vec![20, 35], max_iter: 4, ..SchParams::paper() };
    let model = p.fit(&data, &FitContext::new(8, 1)).unwrap();
    assert_eq!((model.rbf(0).n_anchors(), model.rbf(1).n_anchors()), (20, 35));
    assert_eq!((model.w(0).dim(), model.w(1).dim()), ((20, 8), (35, 8)));
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let back = SchModel::load(dir.path()).unwrap();
    let v = View::Features(views[1].clone());
    assert_eq!(back.encode(1, &v).unwrap(), model.encode(1, &v).unwrap());
    // Empty = `anchors` for every modality; the same counts given both ways give the same model.
    let same = SchParams { anchors: 20, modality_anchors: vec![20, 20], ..p.clone() }.fit(&data, &FitContext::new(8, 1)).unwrap();
    let plain = SchParams { anchors: 20, modality_anchors: vec![], ..p.clone() }.fit(&data, &FitContext::new(8, 1)).unwrap();
    assert_eq!(same.train_codes(), plain.train_codes());
    assert_eq!(plain.rbf(1).n_anchors(), 20);
}

#[test]
fn save_load_round_trip_gives_the_same_codes() {
    let (views, labels) = clustered(70, 3, &[6, 4], 0.6, 5);
    let data = train_set(views.clone(), labels);
    let p = SchParams { anchors: 25, max_iter: 6, ..SchParams::paper() };
    let model = p.fit(&data, &FitContext::new(10, 2)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let back = SchModel::load(dir.path()).unwrap();
    assert_eq!(back.bits(), 10);
    assert_eq!(back.params(), model.params());
    assert_eq!(back.train_codes(), model.train_codes());
    assert_eq!(back.history(), model.history());
    for (t, x) in views.iter().enumerate() {
        let v = View::Features(x.clone());
        assert_eq!(back.encode(t, &v).unwrap(), model.encode(t, &v).unwrap());
    }
    // A damaged file is refused, naming it.
    std::fs::write(dir.path().join("R.npy"), b"garbage").unwrap();
    let e = format!("{:#}", SchModel::load(dir.path()).unwrap_err());
    assert!(e.contains("R.npy"), "{e}");
    std::fs::write(dir.path().join("model.json"), r#"{"method": "segh"}"#).unwrap();
    assert!(SchModel::load(dir.path()).is_err());
}

/// Independent dense solve of A X = B (Gauss–Jordan with partial pivoting, plain loops).
fn naive_solve(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
    let n = a.nrows();
    let (mut a, mut x) = (a.clone(), b.clone());
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| a[[i, col]].abs().partial_cmp(&a[[j, col]].abs()).unwrap()).unwrap();
        for j in 0..n {
            a.swap([col, j], [piv, j]);
        }
        for j in 0..x.ncols() {
            x.swap([col, j], [piv, j]);
        }
        let d = a[[col, col]];
        for i in 0..n {
            if i != col {
                let f = a[[i, col]] / d;
                for j in 0..n {
                    a[[i, j]] -= f * a[[col, j]];
                }
                for j in 0..x.ncols() {
                    x[[i, j]] -= f * x[[col, j]];
                }
            }
        }
    }
    for i in 0..n {
        let d = a[[i, i]];
        x.row_mut(i).mapv_inplace(|v| v / d);
    }
    x
}

#[test]
fn refit_hash_is_the_ridge_fit_of_the_learned_codes() {
    let (views, labels) = clustered(60, 3, &[5, 4], 0.6, 11);
    let data = train_set(views.clone(), labels);
    let ctx = FitContext::new(6, 3);
    let plain_p = SchParams { anchors: 12, max_iter: 5, ..SchParams::paper() };
    let p = SchParams { refit_hash: true, refit_rho: Some(0.05), ..plain_p.clone() };
    let plain = plain_p.fit(&data, &ctx).unwrap();
    let model = p.fit(&data, &ctx).unwrap();
    // The alternation is untouched: same codes B, rotation and objective history.
    assert_eq!(model.train_codes(), plain.train_codes());
    assert_eq!((model.r(), model.history()), (plain.r(), plain.history()));
    let b = model.train_codes().unwrap().to_pm1_f64();
    let (n, k) = b.dim();
    for (t, x) in views.iter().enumerate() {
        let phi = model.rbf(t).transform(x.view()).unwrap();
        let c = phi.ncols();
        // Normal equations (ΦᵀΦ + ρ'I) W' = ΦᵀB by loops, solved independently.
        let a = Array2::from_shape_fn((c, c), |(i, j)| {
            (0..n).map(|r| phi[[r, i]] * phi[[r, j]]).sum::<f64>() + if i == j { 0.05 } else { 0.0 }
        });
        let rhs = Array2::from_shape_fn((c, k), |(i, j)| (0..n).map(|r| phi[[r, i]] * b[[r, j]]).sum::<f64>());
        let w_ref = naive_solve(&a, &rhs);
        let used = model.w(t).dot(model.r());
        let err = (&used - &w_ref).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let scale = w_ref.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(err < 1e-8 * scale.max(1.0), "modality {t}: refit differs from the normal-equation solve by {err}");
        // encode = sgn(φ W') (eq. 26 form with the refit), and the refit fits B at least as well
        // as eq. 18's W R in the refit's own objective.
        let h = phi.dot(&w_ref);
        let codes = model.encode(t, &View::Features(x.clone())).unwrap().to_pm1_f64();
        for (&hv, &cv) in h.iter().zip(codes.iter()) {
            assert!(hv.abs() < 1e-9 || (hv >= 0.0) == (cv > 0.0));
        }
        let cost = |wm: &Array2<f64>| (&b - &phi.dot(wm)).iter().map(|v| v * v).sum::<f64>() + 0.05 * wm.iter().map(|v| v * v).sum::<f64>();
        let plain_w = plain.w(t).dot(plain.r());
        assert!(cost(&w_ref) < cost(&plain_w), "refit must lower ‖B − ΦW‖² + ρ'‖W‖²");
        assert!((&plain_w - &used).iter().any(|v| v.abs() > 1e-6), "refit changed nothing");
    }
    // refit_rho absent = ρ.
    let by_rho = SchParams { refit_rho: None, rho: 0.05, ..p.clone() }.fit(&data, &ctx).unwrap();
    let explicit = SchParams { refit_rho: Some(0.05), rho: 0.05, ..p.clone() }.fit(&data, &ctx).unwrap();
    assert_eq!(by_rho.w(1), explicit.w(1));
    // Save / load: the saved m{t}_W.npy and R.npy are what encode uses (φ·W·R, as a Python user
    // computes it), and the loaded model encodes identically.
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let back = SchModel::load(dir.path()).unwrap();
    assert!(back.params().refit_hash && back.params().refit_rho == Some(0.05));
    let r_saved = crate::numerics::files::load_matrix(&dir.path().join("R.npy")).unwrap();
    for (t, x) in views.iter().enumerate() {
        let v = View::Features(x.clone());
        let codes = model.encode(t, &v).unwrap();
        assert_eq!(back.encode(t, &v).unwrap(), codes);
        let w_saved = crate::numerics::files::load_matrix(&dir.path().join(format!("m{t}_W.npy"))).unwrap();
        assert_eq!(&w_saved, model.w(t));
        let phi = model.rbf(t).transform(x.view()).unwrap();
        // The Python order (φW)R rounds differently from φ(WR): signs may differ only at ties.
        let h = phi.dot(&w_saved).dot(&r_saved);
        for (&hv, &cv) in h.iter().zip(codes.to_pm1_f64().iter()) {
            assert!(hv.abs() < 1e-9 || (hv >= 0.0) == (cv > 0.0), "modality {t}: φ·W·R = {hv} but code {cv}");
        }
    }
    // TOML / --param spelling, and a bad ridge is refused.
    let q: SchParams = toml::from_str("refit_hash = true\nrefit_rho = 0.01").unwrap();
    assert_eq!((q.refit_hash, q.refit_rho), (true, Some(0.01)));
    assert_eq!(toml::from_str::<SchParams>("refit_hash = true").unwrap().refit_rho, None);
    let e = format!("{:#}", SchParams { refit_rho: Some(0.0), ..p }.fit(&data, &ctx).unwrap_err());
    assert!(e.contains("sch.refit_rho"), "{e}");
}

#[test]
fn partially_labelled_rows_get_codes_from_the_hash_functions() {
    let (views, labels) = clustered(80, 4, &[6, 5], 0.4, 6);
    let mut data = train_set(views, labels);
    for i in (0..80).step_by(8) {
        data.labelled[1][i] = false;
        data.labels[1].row_mut(i).fill(0);
    }
    let p = SchParams { anchors: 30, max_iter: 6, ..SchParams::paper() };
    let model = p.fit(&data, &FitContext::new(8, 0)).unwrap();
    assert_eq!(model.fitted_rows(), 70);
    let b = model.train_codes().unwrap();
    assert_eq!(b.len(), 80);
    // A hidden row's code agrees on most bits with the learned B of a labelled row of its class
    // (row i + 4, same class i % 4).
    let pm = b.to_pm1_f64();
    let mut agree = 0.0;
    for i in (0..80).step_by(8) {
        agree += pm.row(i).iter().zip(pm.row(i + 4).iter()).filter(|(a, b)| a == b).count() as f64;
    }
    assert!(agree / (10.0 * 8.0) > 0.8, "agreement {}", agree / 80.0);
}

#[test]
fn bad_settings_are_refused() {
    let (views, labels) = clustered(30, 3, &[4, 4], 0.5, 7);
    let data = train_set(views, labels);
    let ctx = FitContext::new(8, 0);
    let ok = SchParams { anchors: 10, ..SchParams::paper() };
    let msg = |p: SchParams, bits: usize| format!("{:#}", p.fit(&data, &FitContext { bits, ..ctx.clone() }).unwrap_err());
    assert!(msg(SchParams { alpha: -1.0, ..ok.clone() }, 8).contains("sch.alpha"));
    assert!(msg(SchParams { rho: 0.0, ..ok.clone() }, 8).contains("sch.rho"));
    assert!(msg(SchParams { beta: -0.5, ..ok.clone() }, 8).contains("sch.beta"));
    assert!(msg(SchParams { mu: -1.0, ..ok.clone() }, 8).contains("sch.mu"));
    assert!(msg(SchParams { anchors: 0, ..ok.clone() }, 8).contains("sch.anchors"));
    assert!(msg(ok.clone(), 0).contains("bits"));
    // More anchors than labelled rows are capped when fitting, not refused.
    assert!(SchParams { anchors: 31, ..ok.clone() }.check(&data, 8).is_ok());
    assert!(msg(SchParams { modality_anchors: vec![10], ..ok.clone() }, 8).contains("2 modalities"));
    assert!(msg(SchParams { modality_anchors: vec![0, 10], ..ok.clone() }, 8).contains("modality_anchors[0]"));
    assert!(msg(SchParams { lambda: vec![0.5, 0.6], ..ok.clone() }, 8).contains("sum to 1"));
    assert!(msg(SchParams { lambda: vec![1.0], ..ok.clone() }, 8).contains("2 modalities"));
    assert!(msg(SchParams { lambda: vec![1.2, -0.2], ..ok.clone() }, 8).contains("lambda[1]"));
    assert!(msg(SchParams { max_iter: 0, ..ok.clone() }, 8).contains("max_iter"));
    assert!(msg(SchParams { sigma_scale: vec![1.0], ..ok.clone() }, 8).contains("sigma_scale"));
    assert!(msg(SchParams { sigma_scale: vec![1.0, 0.0], ..ok.clone() }, 8).contains("sigma_scale[1]"));
    let mut unl = data.clone();
    unl.labelled[0] = vec![false; 30];
    assert!(format!("{:#}", ok.fit(&unl, &ctx).unwrap_err()).contains("labelled"));
    let mut empty_row = data.clone();
    empty_row.labels.iter_mut().for_each(|l| l.row_mut(4).fill(0));
    assert!(format!("{:#}", ok.fit(&empty_row, &ctx).unwrap_err()).contains("row 4"));
    let mut imgs = data.clone();
    imgs.views[0] = View::Images(ndarray::Array4::zeros((30, 2, 2, 3)));
    assert!(format!("{:#}", ok.fit(&imgs, &ctx).unwrap_err()).contains("feature vectors"));
    // TOML section with an unknown key is refused; a known subset fills the rest with defaults.
    assert!(toml::from_str::<SchParams>("alpha = 1.0\nbogus = 2").is_err());
    let p: SchParams = toml::from_str("rho = 0.001\nlambda = [0.5, 0.5]\nclass_codes = \"random\"").unwrap();
    assert_eq!((p.rho, p.alpha, p.lambda.clone(), p.class_codes), (0.001, 4.5, vec![0.5, 0.5], ClassCodes::Random));
}
