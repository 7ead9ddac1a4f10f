//! Regularised canonical correlation analysis (CCA) between two views.

use super::blocked::{par_gram, par_t_dot};
use super::linalg::SpdFactor;
use anyhow::{bail, Context, Result};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use ndarray_linalg::{Eigh, UPLO};

/// Regularised CCA between two views.
#[derive(Clone, Debug)]
pub struct Cca {
    /// dx × k and dy × k projections, normalised so that Wxᵀ(Cxx + rx I)Wx = I (same for y).
    pub wx: Array2<f64>,
    pub wy: Array2<f64>,
    /// Canonical correlations, descending (length k).
    pub corr: Array1<f64>,
    /// Column means the projections expect subtracted.
    pub mean_x: Array1<f64>,
    pub mean_y: Array1<f64>,
}

/// Regularised CCA of x (n × dx) and y (n × dy) to k dimensions: with the covariances C (of the
/// column-centred data, divided by n) and ridges rₓ = reg·tr(Cxx)/dx, r_y = reg·tr(Cyy)/dy,
/// solves the generalised symmetric eigenproblem
///   Cxy (Cyy + r_y I)⁻¹ Cyx wx = ρ² (Cxx + rₓ I) wx          (LAPACK dsygv)
/// for the k largest ρ², and wy = (Cyy + r_y I)⁻¹ Cyx wx / ρ.
pub fn cca(x: ArrayView2<f64>, y: ArrayView2<f64>, k: usize, reg: f64) -> Result<Cca> {
    let n = x.nrows();
    if y.nrows() != n {
        bail!("CCA: the two views have {} and {} rows", n, y.nrows());
    }
    let (dx, dy) = (x.ncols(), y.ncols());
    if k == 0 || k > dx.min(dy) {
        bail!("CCA yields at most min(dx, dy) = {} dimensions, {k} requested", dx.min(dy));
    }
    if n < 2 {
        bail!("CCA needs at least two rows");
    }
    if !(reg.is_finite() && reg > 0.0) {
        bail!("CCA regularisation must be > 0, found {reg}");
    }
    let mean_x = x.mean_axis(Axis(0)).expect("n >= 2");
    let mean_y = y.mean_axis(Axis(0)).expect("n >= 2");
    let nf = n as f64;
    // C = (XᵀX − n x̄x̄ᵀ)/n, without copying the centred data.
    let outer = |a: &Array1<f64>, b: &Array1<f64>| a.view().insert_axis(Axis(1)).dot(&b.view().insert_axis(Axis(0)));
    let mut cxx = (par_gram(x) - outer(&mean_x, &mean_x) * nf) / nf;
    let mut cyy = (par_gram(y) - outer(&mean_y, &mean_y) * nf) / nf;
    let cxy = (par_t_dot(x, y) - outer(&mean_x, &mean_y) * nf) / nf;
    let rx = reg * cxx.diag().sum() / dx as f64;
    let ry = reg * cyy.diag().sum() / dy as f64;
    if rx.is_nan() || ry.is_nan() || rx <= 0.0 || ry <= 0.0 {
        bail!("CCA: one view is constant (zero variance)");
    }
    cxx.diag_mut().mapv_inplace(|v| v + rx);
    cyy.diag_mut().mapv_inplace(|v| v + ry);
    let fy = SpdFactor::new(cyy.view()).context("CCA: covariance of the second view")?;
    let cyy_inv_cyx = fy.solve(cxy.t())?; // dy × dx
    let mut a = cxy.dot(&cyy_inv_cyx);
    // Symmetrise against rounding before the symmetric eigensolver.
    a = (&a + &a.t()) * 0.5;
    let (vals, (vecs, _)) = (a, cxx).eigh(UPLO::Lower).context("CCA: generalised eigenproblem (dsygv) failed")?;
    // dsygv returns ascending eigenvalues with eigenvectors normalised as wᵀ Cxx w = 1.
    let order: Vec<usize> = (0..dx).rev().take(k).collect();
    let wx = vecs.select(Axis(1), &order);
    let corr: Array1<f64> = order.iter().map(|&i| vals[i].max(0.0).sqrt()).collect();
    let mut wy = cyy_inv_cyx.dot(&wx);
    for (mut col, &c) in wy.axis_iter_mut(Axis(1)).zip(corr.iter()) {
        col /= c.max(1e-12);
    }
    Ok(Cca { wx, wy, corr, mean_x, mean_y })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::random::{randn, seeded_rng};
    use ndarray_linalg::{Cholesky, Diag, SolveTriangular, SVD};

    fn max_abs(a: &Array2<f64>) -> f64 {
        a.iter().fold(0.0f64, |m, &v| m.max(v.abs()))
    }

    #[test]
    fn cca_satisfies_its_constraints_and_matches_whitened_svd() {
        let mut rng = seeded_rng(11, 0);
        let n = 400;
        let z = randn(n, 2, &mut rng);
        let x = z.dot(&randn(2, 5, &mut rng)) + randn(n, 5, &mut rng) * 0.5 + 3.0;
        let y = z.dot(&randn(2, 4, &mut rng)) + randn(n, 4, &mut rng) * 0.5 - 1.0;
        let reg = 1e-3;
        let c = cca(x.view(), y.view(), 3, reg).unwrap();
        // Independent computation: covariances by explicit centring, whitening by Cholesky,
        // singular values of Lx⁻¹ Cxy Ly⁻ᵀ are the canonical correlations.
        let xc = &x - &x.mean_axis(Axis(0)).unwrap();
        let yc = &y - &y.mean_axis(Axis(0)).unwrap();
        let nf = n as f64;
        let mut cxx = xc.t().dot(&xc) / nf;
        let mut cyy = yc.t().dot(&yc) / nf;
        let cxy = xc.t().dot(&yc) / nf;
        let rx = reg * cxx.diag().sum() / 5.0;
        let ry = reg * cyy.diag().sum() / 4.0;
        cxx.diag_mut().mapv_inplace(|v| v + rx);
        cyy.diag_mut().mapv_inplace(|v| v + ry);
        let lx = cxx.cholesky(UPLO::Lower).unwrap();
        let ly = cyy.cholesky(UPLO::Lower).unwrap();
        let t1 = lx.solve_triangular(UPLO::Lower, Diag::NonUnit, &cxy).unwrap();
        let t = ly.solve_triangular(UPLO::Lower, Diag::NonUnit, &t1.t().to_owned()).unwrap().reversed_axes();
        let (_, sv, _) = t.svd(false, false).unwrap();
        for i in 0..3 {
            assert!((c.corr[i] - sv[i]).abs() < 1e-9, "corr {} vs sv {}", c.corr[i], sv[i]);
        }
        // Constraints: Wxᵀ Cxx Wx = I, Wyᵀ Cyy Wy = I, Wxᵀ Cxy Wy = diag(ρ).
        let eye = Array2::<f64>::eye(3);
        assert!(max_abs(&(c.wx.t().dot(&cxx).dot(&c.wx) - &eye)) < 1e-9);
        assert!(max_abs(&(c.wy.t().dot(&cyy).dot(&c.wy) - &eye)) < 1e-9);
        let cross = c.wx.t().dot(&cxy).dot(&c.wy);
        assert!(max_abs(&(cross - Array2::from_diag(&c.corr))) < 1e-9);
        assert!(c.corr[0] > 0.8 && c.corr[2] < c.corr[1]);
        assert!(cca(x.view(), y.view(), 5, reg).is_err());
        assert!(cca(x.view(), y.view(), 2, 0.0).is_err());
    }
}
