//! Dense linear algebra on small matrices: solves with a symmetric positive definite matrix,
//! the polar factor (nearest matrix with orthonormal columns) and orthogonal Procrustes, and
//! numerical rank.
// `!(a > b)` is also true for NaN, which these checks must catch.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::numerics::blocked::fold_parts_mut;
use anyhow::{bail, Context, Result};
use ndarray::{s, Array2, ArrayView2, Axis};
use ndarray_linalg::{AllocatedArray, Cholesky, Diag, Eigh, JobSvd, Lapack, SolveTriangular, SVD, SVDDC, UPLO};

/// Solves X · A = B for X, A symmetric positive definite (k × k, small), B (n × k): X = B A⁻¹.
pub fn solve_right_spd(b: ArrayView2<f64>, a: ArrayView2<f64>) -> Result<Array2<f64>> {
    // X A = B ⇔ A Xᵀ = Bᵀ (A symmetric).
    let l = a.cholesky(UPLO::Lower).context("Cholesky factorisation failed: the system matrix is not positive definite")?;
    solve_right_cholesky(b, &l)
}

/// X with X · (L Lᵀ) = B, for the lower Cholesky factor L of a small k × k matrix and B (n × k).
pub fn solve_right_cholesky(b: ArrayView2<f64>, l: &Array2<f64>) -> Result<Array2<f64>> {
    let z = l.solve_triangular(UPLO::Lower, Diag::NonUnit, &b.t().to_owned())?;
    let xt = l.t().to_owned().solve_triangular(UPLO::Upper, Diag::NonUnit, &z)?;
    Ok(xt.reversed_axes().as_standard_layout().into_owned())
}

/// A cached Cholesky factor L (A = LLᵀ) of a symmetric positive definite matrix.
#[derive(Clone, Debug)]
pub struct SpdFactor {
    l: Array2<f64>,
    lt: Array2<f64>,
}

impl SpdFactor {
    pub fn new(a: ArrayView2<f64>) -> Result<Self> {
        let l = a.cholesky(UPLO::Lower).context("Cholesky factorisation failed: the matrix is not positive definite")?;
        let lt = l.t().as_standard_layout().into_owned();
        Ok(Self { l, lt })
    }
    /// A⁻¹ b.
    pub fn solve(&self, b: ArrayView2<f64>) -> Result<Array2<f64>> {
        let z = self.l.solve_triangular(UPLO::Lower, Diag::NonUnit, &b.to_owned())?;
        Ok(self.lt.solve_triangular(UPLO::Upper, Diag::NonUnit, &z)?)
    }
}

/// Orthogonal Procrustes: the orthogonal R maximising tr(Rᵀ M), i.e. minimising ‖B − FR‖² when
/// M = FᵀB. With the SVD M = PΣQᵀ, R = PQᵀ.
/// That is the polar factor of M (`polar`).
pub fn procrustes(m: ArrayView2<f64>) -> Result<Array2<f64>> {
    polar(&m.to_owned(), false).context("orthogonal Procrustes rotation")
}

/// [`procrustes`] with a rule for the case where the maximiser is not unique. When M is rank
/// deficient (singular values below 1e-9 σ_max count as zero), tr(RᵀM) is the same for every
/// R = PᵣQᵣᵀ + P₀ZQ₀ᵀ, Z orthogonal (Pᵣ, Qᵣ: the singular vectors of the non-zero singular values;
/// P₀, Q₀: those of the zero ones), and the SVD would pick Z from rounding noise. This takes the Z
/// nearest `prev` (max tr((P₀ZQ₀ᵀ)ᵀ prev), itself a Procrustes problem: Z = polar(P₀ᵀ prev Q₀)),
/// which depends only on the subspaces, not on the bases the SVD returns for them.
pub fn procrustes_nearest(m: ArrayView2<f64>, prev: ArrayView2<f64>) -> Result<Array2<f64>> {
    let (p, s, qt) = m.svd(true, true).context("SVD failed in the Procrustes rotation")?;
    let (p, qt) = (p.expect("u requested"), qt.expect("vt requested"));
    let smax = s.iter().fold(0.0f64, |a, &v| a.max(v));
    let r = s.iter().filter(|&&v| v > 1e-9 * smax).count();
    let mut rot = p.slice(s![.., ..r]).dot(&qt.slice(s![..r, ..]));
    if r < s.len() {
        let (p0, q0t) = (p.slice(s![.., r..]), qt.slice(s![r.., ..]));
        let z = procrustes(p0.t().dot(&prev).dot(&q0t.t()).view())?;
        rot += &p0.dot(&z).dot(&q0t);
    }
    Ok(rot)
}

/// An orthonormal basis (columns, e × q) of the row space of `a` (C × e): right singular vectors
/// with singular value above 1e-10 of the largest.
pub fn row_space_basis(a: &Array2<f64>) -> Result<Array2<f64>> {
    let (_, s, vt) = a.svddc(JobSvd::Some)?;
    let vt = vt.expect("Vᵀ requested");
    let smax = s.iter().fold(0.0f64, |m, &v| m.max(v));
    let keep: Vec<usize> = (0..s.len()).filter(|&i| smax > 0.0 && s[i] > 1e-10 * smax).collect();
    Ok(vt.select(Axis(0), &keep).reversed_axes())
}

/// Number of eigenvalues of the symmetric PSD `g` above 1e-10 of the largest.
pub fn numerical_rank(g: &Array2<f64>) -> Result<usize> {
    let (ev, _) = g.eigh(UPLO::Lower)?;
    let max = ev.iter().fold(0.0f64, |m, &v| m.max(v));
    Ok(if max > 0.0 { ev.iter().filter(|&&v| v > 1e-10 * max).count() } else { 0 })
}

/// The polar factor U Vᵀ of `a` (m × r) from its thin SVD A = U Σ Vᵀ: the nearest matrix to `a`
/// with orthonormal columns (m ≥ r) or rows (m ≤ r). With `require_full_rank`, a numerically
/// rank-deficient `a` (smallest singular value ≤ 1e-10 of the largest) is an error.
pub fn polar(a: &Array2<f64>, require_full_rank: bool) -> Result<Array2<f64>> {
    let (u, s, vt) = a.svddc(JobSvd::Some).context("SVD failed in the polar decomposition")?;
    let (u, vt) = (u.expect("U requested"), vt.expect("Vᵀ requested"));
    if require_full_rank {
        let smax = s.iter().fold(0.0f64, |m, &v| m.max(v));
        let smin = s.iter().fold(f64::INFINITY, |m, &v| m.min(v));
        if !(smin > 1e-10 * smax) {
            bail!("the matrix is numerically rank deficient (singular values {smin:.3e} .. {smax:.3e})");
        }
    }
    Ok(u.slice(s![.., ..s.len()]).dot(&vt.slice(s![..s.len(), ..])))
}

/// [`polar`] of a tall matrix (n × r, n ≥ r) through its thin QR (A = QR ⇒ polar(A) = Q polar(R),
/// same singular values), in `a`'s own buffer: LAPACK's Householder QR and its Q are formed in
/// place, and Q is multiplied by the r × r polar(R) one block of rows at a time, so besides `a`
/// only r × r matrices and one block of rows are held.
pub fn polar_tall(a: Array2<f64>, require_full_rank: bool) -> Result<Array2<f64>> {
    let (n, r) = a.dim();
    if n < r || r == 0 {
        return polar(&a, require_full_rank);
    }
    let mut a = if a.is_standard_layout() { a } else { a.as_standard_layout().into_owned() };
    let layout = a.layout().context("QR of a tall matrix")?;
    let buf = a.as_slice_mut().expect("standard layout");
    let tau = f64::householder(layout, buf).context("QR of a tall matrix")?;
    // R is the upper triangle of the first r rows (row-major: the factorisation is LAPACK's LQ of
    // the column-major Aᵀ, whose L = Rᵀ sits in the same places).
    let rm = Array2::from_shape_fn((r, r), |(i, j)| if j >= i { buf[i * r + j] } else { 0.0 });
    f64::q(layout, buf, &tau).context("QR of a tall matrix")?;
    let pr = polar(&rm, require_full_rank)?;
    fold_parts_mut(
        &mut a,
        || (),
        |_, _, mut block, _| {
            let t = block.dot(&pr);
            block.assign(&t);
        },
    );
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::random::{randn, random_orthogonal, seeded_rng};
    use ndarray::{array, ShapeBuilder};

    fn max_abs(a: &Array2<f64>) -> f64 {
        a.iter().fold(0.0f64, |m, &v| m.max(v.abs()))
    }

    #[test]
    fn tall_polar_in_place_equals_the_svd_polar_factor() {
        let mut rng = seeded_rng(11, 0);
        for (n, r) in [(50, 7), (8, 8), (3000, 64), (1, 1)] {
            let a = randn(n, r, &mut rng);
            let want = polar(&a, true).unwrap();
            let got = polar_tall(a.clone(), true).unwrap();
            assert!(max_abs(&(&got - &want)) < 1e-12, "{n} × {r}");
            // Column-major input: the same factor.
            let mut f = Array2::<f64>::zeros((n, r).f());
            f.assign(&a);
            assert!(!f.is_standard_layout() || r == 1 || n == 1);
            assert!(max_abs(&(&polar_tall(f, true).unwrap() - &want)) < 1e-12, "{n} × {r} column-major");
        }
        // Wide input falls back to the SVD; rank-deficient input is refused.
        let w = randn(3, 5, &mut rng);
        assert!(max_abs(&(&polar_tall(w.clone(), false).unwrap() - &polar(&w, false).unwrap())) < 1e-12);
        let mut d = randn(40, 3, &mut rng);
        let c0 = d.column(0).to_owned();
        d.column_mut(2).assign(&c0);
        assert!(polar_tall(d, true).is_err());
    }

    #[test]
    fn procrustes_hand_cases() {
        // M = diag(2, 1): R = I.
        let r = procrustes(array![[2.0, 0.0], [0.0, 1.0]].view()).unwrap();
        assert!(max_abs(&(&r - &Array2::<f64>::eye(2))) < 1e-12);
        // M orthogonal (a rotation by 90°) times a positive scale: R = M / scale.
        let m = array![[0.0, -3.0], [3.0, 0.0]];
        let r = procrustes(m.view()).unwrap();
        assert!(max_abs(&(&r - &(&m / 3.0))) < 1e-12);
        // Maximality against random orthogonal matrices.
        let mut rng = seeded_rng(3, 0);
        let m = randn(4, 4, &mut rng);
        let r = procrustes(m.view()).unwrap();
        let best = (r.t().dot(&m)).diag().sum();
        for _ in 0..50 {
            let q = random_orthogonal(4, &mut rng).unwrap();
            assert!(q.t().dot(&m).diag().sum() <= best + 1e-12);
        }
        assert!(max_abs(&(r.t().dot(&r) - Array2::<f64>::eye(4))) < 1e-12);
    }

    #[test]
    fn procrustes_nearest_breaks_ties_by_the_previous_rotation() {
        // Full rank: the unique maximiser, whatever `prev` is.
        let mut rng = seeded_rng(4, 0);
        let m = randn(4, 4, &mut rng);
        let prev = random_orthogonal(4, &mut rng).unwrap();
        assert!(max_abs(&(procrustes_nearest(m.view(), prev.view()).unwrap() - procrustes(m.view()).unwrap())) < 1e-12);
        // M = diag(2, 0): any R = diag(1, ±1) maximises tr(RᵀM) = 2; the one nearest prev is kept.
        let m = array![[2.0, 0.0], [0.0, 0.0]];
        let flip = array![[1.0, 0.0], [0.0, -1.0]];
        assert!(max_abs(&(procrustes_nearest(m.view(), flip.view()).unwrap() - &flip)) < 1e-12);
        assert!(max_abs(&(procrustes_nearest(m.view(), Array2::<f64>::eye(2).view()).unwrap() - Array2::<f64>::eye(2))) < 1e-12);
        // Rank 2 of 5, M = FᵀB with B of two distinct rows: a maximiser (tr(RᵀM) = Σσ, orthogonal),
        // and the same R when M carries rounding-sized noise, where the plain SVD's null-space
        // vectors are noise.
        let f = randn(40, 5, &mut rng);
        let rows = randn(2, 5, &mut rng).mapv(|v| if v < 0.0 { -1.0 } else { 1.0 });
        let b = Array2::from_shape_fn((40, 5), |(i, j)| rows[[i % 2, j]]);
        let m = f.t().dot(&b);
        let prev = random_orthogonal(5, &mut rng).unwrap();
        let r = procrustes_nearest(m.view(), prev.view()).unwrap();
        assert!(max_abs(&(r.t().dot(&r) - Array2::<f64>::eye(5))) < 1e-12);
        let (_, s, _) = m.svd(false, false).unwrap();
        assert!((r.t().dot(&m).diag().sum() - s.sum()).abs() < 1e-9 * s.sum());
        let noisy = &m + &(randn(5, 5, &mut rng) * 1e-13 * s[0]);
        let rn = procrustes_nearest(noisy.view(), prev.view()).unwrap();
        assert!(max_abs(&(&rn - &r)) < 1e-8, "{}", max_abs(&(&rn - &r)));
        // The tie-break matters: other maximisers are further from prev.
        let plain = procrustes(m.view()).unwrap();
        assert!((plain.t().dot(&m).diag().sum() - s.sum()).abs() < 1e-9 * s.sum());
        assert!(r.t().dot(&prev).diag().sum() >= plain.t().dot(&prev).diag().sum() - 1e-12);
    }

    #[test]
    fn spd_solves() {
        let a = array![[4.0, 1.0], [1.0, 3.0]];
        let b = array![[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]];
        let x = solve_right_spd(b.view(), a.view()).unwrap();
        assert!(max_abs(&(x.dot(&a) - &b)) < 1e-12);
        let f = SpdFactor::new(a.view()).unwrap();
        let y = f.solve(b.t()).unwrap();
        assert!(max_abs(&(a.dot(&y) - b.t())) < 1e-12);
        assert!(SpdFactor::new(array![[1.0, 2.0], [2.0, 1.0]].view()).is_err());
    }
}
