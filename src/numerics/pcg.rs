//! Jacobi-preconditioned conjugate gradients for a symmetric positive definite operator, on many
//! right-hand sides at once.
// `!(a > b)` is also true for NaN, which these checks must catch.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use super::blocked::{fold_parts, BLOCK_ROWS};
use super::pages;
use anyhow::{bail, Result};
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;

/// Jacobi-preconditioned conjugate gradient for a symmetric positive definite operator, run on
/// all columns of B at once (independent scalars per column, one shared mat-vec per iteration).
/// Stops when every column has ‖r‖ ≤ tol ‖b‖. `op(v, out)` overwrites `out` with the operator
/// applied to `v`; the iterates are allocated once (on huge pages when large) and reused.
pub fn pcg(
    op: impl Fn(ArrayView2<f64>, &mut Array2<f64>),
    diag: &Array1<f64>,
    b: &Array2<f64>,
    tol: f64,
    max_iter: usize,
) -> Result<(Array2<f64>, usize)> {
    let (n, k) = b.dim();
    let dinv = diag.mapv(|d| if d > 0.0 { 1.0 / d } else { 1.0 });
    let bnorm: Vec<f64> = col_dots(b, b).iter().map(|v| v.sqrt()).collect();
    let mut x = pages::zeros((n, k));
    let mut r = pages::zeros((n, k));
    r.assign(b);
    let mut z = pages::zeros((n, k));
    ndarray::Zip::from(&mut z).and(&r).and_broadcast(&dinv.view().insert_axis(Axis(1))).for_each(|z, &r, &d| *z = r * d);
    let mut p = pages::zeros((n, k));
    p.assign(&z);
    let mut q = pages::zeros((n, k));
    let mut rz = col_dots(&r, &z);
    let mut rr = col_dots(&r, &r);
    let mut active: Vec<bool> = bnorm.iter().map(|&v| v > 0.0).collect();
    let mut alpha = vec![0.0; k];
    let mut beta = vec![0.0; k];
    for it in 0..=max_iter {
        for j in 0..k {
            if active[j] && rr[j].sqrt() <= tol * bnorm[j] {
                active[j] = false;
            }
        }
        if !active.iter().any(|&a| a) {
            return Ok((x, it));
        }
        if it == max_iter {
            break;
        }
        op(p.view(), &mut q);
        let pq = col_dots(&p, &q);
        for j in 0..k {
            alpha[j] = 0.0;
            if active[j] {
                if !(pq[j] > 0.0) {
                    bail!("conjugate gradient met a non-positive curvature ({}): the operator is not positive definite", pq[j]);
                }
                alpha[j] = rz[j] / pq[j];
            }
        }
        // One pass over the rows, in fixed blocks of rows (parallel; the partial sums are added
        // in block order, so the result does not depend on the thread count): x += αp, r −= αq,
        // z = D⁻¹r, and the new rᵀz, rᵀr.
        let block = BLOCK_ROWS * k;
        let partials: Vec<(Vec<f64>, Vec<f64>)> = x
            .as_slice_mut()
            .expect("row-major")
            .par_chunks_mut(block)
            .zip(r.as_slice_mut().expect("row-major").par_chunks_mut(block))
            .zip(z.as_slice_mut().expect("row-major").par_chunks_mut(block))
            .zip(p.as_slice().expect("row-major").par_chunks(block))
            .zip(q.as_slice().expect("row-major").par_chunks(block))
            .enumerate()
            .map(|(bi, ((((xb, rb), zb), pb), qb))| {
                let (mut rz_b, mut rr_b) = (vec![0.0; k], vec![0.0; k]);
                for (row, ((((xi, ri), zi), pi), qi)) in
                    xb.chunks_mut(k).zip(rb.chunks_mut(k)).zip(zb.chunks_mut(k)).zip(pb.chunks(k)).zip(qb.chunks(k)).enumerate()
                {
                    let d = dinv[bi * BLOCK_ROWS + row];
                    for j in 0..k {
                        xi[j] += alpha[j] * pi[j];
                        ri[j] -= alpha[j] * qi[j];
                        zi[j] = d * ri[j];
                        rz_b[j] += ri[j] * zi[j];
                        rr_b[j] += ri[j] * ri[j];
                    }
                }
                (rz_b, rr_b)
            })
            .collect();
        let mut rz_new = vec![0.0; k];
        rr.iter_mut().for_each(|v| *v = 0.0);
        for (rz_b, rr_b) in partials {
            for j in 0..k {
                rz_new[j] += rz_b[j];
                rr[j] += rr_b[j];
            }
        }
        for j in 0..k {
            beta[j] = if active[j] { rz_new[j] / rz[j] } else { 0.0 };
        }
        rz = rz_new;
        p.as_slice_mut().expect("row-major").par_chunks_mut(k).zip(z.as_slice().expect("row-major").par_chunks(k)).for_each(|(pi, zi)| {
            for j in 0..k {
                pi[j] = zi[j] + beta[j] * pi[j];
            }
        });
    }
    let worst = (0..k).filter(|&j| active[j]).map(|j| rr[j].sqrt() / bnorm[j]).fold(0.0f64, f64::max);
    bail!("conjugate gradient did not reach relative residual {tol} in {max_iter} iterations (worst {worst:.2e})")
}

/// Column-wise dot products Σᵢ a_ij b_ij of two n × k matrices, in one pass over the rows (the
/// fixed row parts of [`fold_parts`], added in order: the same result on any thread count).
pub fn col_dots(a: &Array2<f64>, b: &Array2<f64>) -> Vec<f64> {
    let k = a.ncols();
    let partials = fold_parts(
        a.nrows(),
        || vec![0.0; k],
        |s0, e0, out| {
            for (ra, rb) in a.slice(s![s0..e0, ..]).rows().into_iter().zip(b.slice(s![s0..e0, ..]).rows()) {
                for (o, (x, y)) in out.iter_mut().zip(ra.iter().zip(rb.iter())) {
                    *o += x * y;
                }
            }
        },
    );
    let mut out = vec![0.0; k];
    for part in partials {
        out.iter_mut().zip(part).for_each(|(o, v)| *o += v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::random::{randn, seeded_rng};
    use ndarray_linalg::Solve;

    #[test]
    fn pcg_solves_an_spd_system_column_by_column_like_a_dense_solve() {
        // A = GᵀG + I (SPD, unequal diagonal so the Jacobi preconditioner matters); three
        // right-hand sides, one of them zero (it is solved at iteration 0 with x = 0).
        let mut rng = seeded_rng(9, 0);
        let g = randn(40, 30, &mut rng);
        let mut a = g.t().dot(&g);
        for i in 0..30 {
            a[[i, i]] += 1.0 + i as f64;
        }
        let mut b = randn(30, 3, &mut rng);
        b.column_mut(2).fill(0.0);
        let (x, iters) = pcg(|v, out| out.assign(&a.dot(&v)), &a.diag().to_owned(), &b, 1e-12, 200).unwrap();
        assert!(iters > 0 && iters <= 200);
        for j in 0..2 {
            let xd = a.solve(&b.column(j).to_owned()).unwrap();
            let err = (&x.column(j) - &xd).mapv(f64::abs).fold(0.0f64, |m, &v| m.max(v));
            assert!(err < 1e-8, "column {j}: {err}");
        }
        assert!(x.column(2).iter().all(|&v| v == 0.0));
        // Too few iterations is an error naming the shortfall; an indefinite operator is refused.
        assert!(format!("{:#}", pcg(|v, out| out.assign(&a.dot(&v)), &a.diag().to_owned(), &b, 1e-12, 2).unwrap_err())
            .contains("did not reach"));
        let neg = -&a;
        assert!(pcg(|v, out| out.assign(&neg.dot(&v)), &a.diag().to_owned(), &b, 1e-12, 50).is_err());
        // col_dots is the column-wise Σᵢ aᵢⱼ bᵢⱼ.
        let d = col_dots(&b, &b);
        assert!((d[0] - b.column(0).dot(&b.column(0))).abs() < 1e-12 && d[2] == 0.0);
    }
}
