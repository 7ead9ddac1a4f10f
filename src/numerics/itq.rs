//! Iterative quantisation, ITQ (Y. Gong and S. Lazebnik, "Iterative Quantization: A Procrustean
//! Approach to Learning Binary Codes", CVPR 2011): for centred, projected data V (n × r), the
//! rotation R minimising the quantisation loss
//!   Q(B, R) = ‖B − VR‖²_F over B ∈ {−1, 1}ⁿˣᵏ and orthogonal R            (eq. 2)
//! by alternating the two steps of Sec. 2.3, neither of which can increase Q:
//! - fix R, update B: B = sgn(VR);
//! - fix B, update R: the orthogonal Procrustes problem max tr(Rᵀ VᵀB), solved by the SVD
//!   BᵀV = SΩŜᵀ, R = ŜSᵀ, i.e. R = polar(VᵀB).
//!
//! R may also be r × k with orthonormal rows (r < k: fewer data dimensions than bits, as in
//! SeGH); the Procrustes step is then the polar factor of the r × k matrix VᵀB, which maximises
//! tr(Rᵀ VᵀB) over R Rᵀ = I by the same argument.

use super::blocked::{det_sum, par_dot_into, par_t_dot};
use super::linalg::polar;
use super::random::random_orthogonal;
use super::sign::sgn1;
use anyhow::{bail, Result};
use ndarray::{Array2, ArrayView2};
use rand::Rng;

/// Q(sgn(VR), R) = ‖sgn(VR) − VR‖²_F (eq. 2 at the optimal B for R).
#[cfg(test)]
fn quantisation_loss(v: ArrayView2<f64>, r: ArrayView2<f64>) -> f64 {
    let mut vr = Array2::<f64>::zeros((v.nrows(), r.ncols()));
    par_dot_into(v, r, &mut vr);
    loss_of(&vr)
}

fn loss_of(vr: &Array2<f64>) -> f64 {
    det_sum(vr.view(), |x| {
        let d = sgn1(x) - x;
        d * d
    })
}

/// ITQ of `v` (n × r) from a random orthogonal start (Q of the QR decomposition of an r × r
/// Gaussian matrix). Returns R and the loss Q at the start and after each iteration.
pub fn itq(v: ArrayView2<f64>, iterations: usize, rng: &mut impl Rng) -> Result<(Array2<f64>, Vec<f64>)> {
    if v.ncols() == 0 || v.nrows() == 0 {
        bail!("ITQ needs a non-empty matrix, found {:?}", v.dim());
    }
    itq_from(v, random_orthogonal(v.ncols(), rng)?, iterations)
}

/// ITQ of `v` (n × r) from the rotation `rot` (r × k, orthonormal rows). Returns R and the loss
/// Q(sgn(VR), R) at the start and after each of the `iterations` alternations (iterations + 1
/// values, non-increasing). Holds one n × k matrix besides `v`.
pub fn itq_from(v: ArrayView2<f64>, mut rot: Array2<f64>, iterations: usize) -> Result<(Array2<f64>, Vec<f64>)> {
    let (n, r) = v.dim();
    if rot.nrows() != r || rot.ncols() < r {
        bail!("ITQ: the rotation is {:?}, expected {r} × k with k ≥ {r} for data with {r} columns", rot.dim());
    }
    let mut b = super::pages::zeros((n, rot.ncols()));
    let mut losses = Vec::with_capacity(iterations + 1);
    for _ in 0..iterations {
        par_dot_into(v, rot.view(), &mut b);
        losses.push(loss_of(&b));
        // Fix R, update B = sgn(VR).
        b.par_mapv_inplace(sgn1);
        // Fix B, update R = polar(VᵀB) (the Procrustes step).
        rot = polar(&par_t_dot(v, b.view()), false)?;
    }
    par_dot_into(v, rot.view(), &mut b);
    losses.push(loss_of(&b));
    Ok((rot, losses))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::random::{randn, random_orthonormal, seeded_rng};
    use crate::numerics::sign::sgn;
    use ndarray::Axis;
    use ndarray_linalg::{QR, SVD};

    /// Independent reference: the B and R steps written directly from the paper (Sec. 2.3), with
    /// plain products and LAPACK's gesvd: B = sgn(VR); SVD BᵀV = SΩŜᵀ; R = ŜSᵀ.
    fn itq_reference(v: &Array2<f64>, mut r: Array2<f64>, iterations: usize) -> Array2<f64> {
        for _ in 0..iterations {
            let b = sgn(v.dot(&r).view());
            let (s, _, sht) = b.t().dot(v).svd(true, true).unwrap();
            r = sht.unwrap().t().dot(&s.unwrap().t());
        }
        r
    }

    fn max_abs(a: &Array2<f64>) -> f64 {
        a.iter().fold(0.0f64, |m, &v| m.max(v.abs()))
    }

    fn centred(rows: usize, cols: usize, seed: u64) -> Array2<f64> {
        let mut v = randn(rows, cols, &mut seeded_rng(seed, 0));
        let mean = v.mean_axis(Axis(0)).unwrap();
        v -= &mean;
        v
    }

    #[test]
    fn itq_matches_the_paper_steps_written_out() {
        let v = centred(300, 6, 3);
        let start = random_orthogonal(6, &mut seeded_rng(4, 0)).unwrap();
        let (r, losses) = itq_from(v.view(), start.clone(), 15).unwrap();
        let r_ref = itq_reference(&v, start, 15);
        assert!(max_abs(&(&r - &r_ref)) < 1e-9, "{r:?} vs {r_ref:?}");
        assert_eq!(losses.len(), 16);
        let direct = (&sgn(v.dot(&r).view()) - &v.dot(&r)).mapv(|x| x * x).sum();
        assert!((losses[15] - direct).abs() < 1e-9 * direct);
    }

    #[test]
    fn itq_loss_never_increases_and_rotation_is_orthogonal() {
        let v = centred(400, 8, 1);
        let (r, losses) = itq(v.view(), 30, &mut seeded_rng(2, 0)).unwrap();
        assert_eq!(losses.len(), 31);
        for w in losses.windows(2) {
            assert!(w[1] <= w[0] + 1e-9, "{losses:?}");
        }
        assert!(losses[30] < losses[0], "ITQ improves on its random start");
        assert!(max_abs(&(r.t().dot(&r) - Array2::<f64>::eye(8))) < 1e-9);
    }

    #[test]
    fn itq_recovers_a_rotated_hypercube_from_nearby() {
        // V = B₀Q for ±1 codes B₀ and a rotation Q: Qᵀ gives zero loss. Started from a perturbed
        // Qᵀ, the alternation reaches it (ITQ is a local method: from a random start it may stop
        // in a local minimum, so only descent is asserted there).
        let mut rng = seeded_rng(7, 0);
        let b0 = sgn(randn(300, 4, &mut rng).view());
        let q = random_orthogonal(4, &mut rng).unwrap();
        let v = b0.dot(&q);
        assert!(quantisation_loss(v.view(), q.t()) < 1e-12);
        let (start, _) = (&q.t() + &(randn(4, 4, &mut rng) * 0.15)).qr().unwrap();
        let start_loss = quantisation_loss(v.view(), start.view());
        let (r, losses) = itq_from(v.view(), start, 20).unwrap();
        assert!(start_loss > 1.0, "the start is not already optimal: {start_loss}");
        assert!((losses[0] - start_loss).abs() < 1e-12 * start_loss);
        assert!(*losses.last().unwrap() < 1e-9, "{losses:?}");
        assert!(quantisation_loss(v.view(), r.view()) < 1e-9);
    }

    #[test]
    fn itq_with_more_bits_than_dimensions_keeps_orthonormal_rows() {
        // r = 3 data dimensions, k = 8 bits: R (3 × 8) keeps R Rᵀ = I and the loss descends.
        let v = centred(200, 3, 5);
        let start = random_orthonormal(8, 3, &mut seeded_rng(6, 0)).unwrap().reversed_axes();
        let (r, losses) = itq_from(v.view(), start.clone(), 25).unwrap();
        assert_eq!(r.dim(), (3, 8));
        assert!(max_abs(&(r.dot(&r.t()) - Array2::<f64>::eye(3))) < 1e-10);
        for w in losses.windows(2) {
            assert!(w[1] <= w[0] + 1e-9, "{losses:?}");
        }
        // Each R step is the best rotation for its B: no random R with orthonormal rows does better.
        let b = sgn(v.dot(&r).view());
        let fit = |rr: &Array2<f64>| (&b - &v.dot(rr)).mapv(|x| x * x).sum();
        let (best, _) = itq_from(v.view(), r.clone(), 1).unwrap();
        for s in 0..5 {
            let other = random_orthonormal(8, 3, &mut seeded_rng(20 + s, 0)).unwrap().reversed_axes();
            assert!(fit(&best) <= fit(&other) + 1e-9);
        }
        assert!(itq_from(v.view(), Array2::eye(2), 1).is_err(), "a rotation of the wrong size is refused");
    }
}
